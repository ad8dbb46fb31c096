//! `dcb-bench`: runs dcb's workloads against the PostgreSQL named by
//! `DATABASE_URL` for a fixed time, prints a table and writes JSON.
//!
//! ```text
//! dcb-bench <workload> [--seconds N] [--json PATH] [--preload N]
//! ```
//!
//! See `bench/README.md` for what each row means.

mod append;
mod baseline;
mod cart;
mod cli;
mod db;
mod report;
mod runner;
mod stats;

use std::process::ExitCode;

use cli::{Args, Command, Workload};
use report::Row;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            println!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::usage());
            return ExitCode::from(2);
        }
    };
    if !args.workload.implemented() {
        eprintln!(
            "workload `{}` is not implemented yet (it arrives with its component); \
             implemented: append, all",
            args.workload.name()
        );
        return ExitCode::from(2);
    }
    let url = match db::database_url() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(&args, &url))
}

/// The workloads `workload` stands for, in run order.
fn expand(workload: Workload) -> Vec<Workload> {
    match workload {
        Workload::All => [Workload::Append]
            .into_iter()
            .filter(|w| w.implemented())
            .collect(),
        w => vec![w],
    }
}

async fn run(args: &Args, url: &str) -> ExitCode {
    let db = match db::Db::connect(url).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "[dcb-bench] run {}: {} s per variant after a {} s warm-up",
        db.run_id(),
        args.seconds,
        runner::WARMUP.as_secs_f64()
    );
    let mut rows: Vec<Row> = Vec::new();
    let outcome = tokio::select! {
        r = run_workloads(&db, args, &mut rows) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    let leftovers = db.cleanup().await;
    for schema in &leftovers {
        eprintln!("warning: could not drop schema {schema}; drop it by hand");
    }
    if !rows.is_empty() {
        println!("{}", report::table(&rows));
    }
    if let Some(path) = &args.json {
        match report::write_json(path, &rows) {
            Ok(()) => eprintln!("[dcb-bench] wrote {}", path.display()),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_workloads(db: &db::Db, args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    for workload in expand(args.workload) {
        match workload {
            Workload::Append => append::run(db, args, rows).await?,
            other => {
                return Err(format!(
                    "workload `{}` is not implemented yet",
                    other.name()
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_to_the_implemented_workloads() {
        assert_eq!(expand(Workload::All), vec![Workload::Append]);
        assert_eq!(expand(Workload::Append), vec![Workload::Append]);
    }
}
