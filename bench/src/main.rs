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
mod listener;
mod ping;
mod queue;
mod relay;
mod report;
mod runner;
mod scaling;
mod stats;

use std::process::ExitCode;

use cli::{Args, Command, Workload};
use report::Row;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(queue::WORKER_COMMAND) {
        return queue_worker(&raw[1..]);
    }
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
    if args.workload == Workload::Scaling {
        let _observed = observe();
        let Some(runtime) = runtime() else {
            return ExitCode::FAILURE;
        };
        return runtime.block_on(run_scaling(&args));
    }
    if args.workload == Workload::Relay && relay::brokers().is_none() {
        eprintln!("error: {}", relay::NO_BROKERS);
        return ExitCode::from(2);
    }
    let url = match db::database_url() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let _observed = observe();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(run(&args, &url))
}

/// The scaling workload: servers of its own, no `DATABASE_URL`.
async fn run_scaling(args: &Args) -> ExitCode {
    let mut rows: Vec<Row> = Vec::new();
    let outcome = tokio::select! {
        r = scaling::run(args, &mut rows) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    finish(args, &rows, outcome)
}

/// Prints the rows, writes the JSON, and turns the outcome into the exit
/// status.
fn finish(args: &Args, rows: &[Row], outcome: Result<(), String>) -> ExitCode {
    if !rows.is_empty() {
        println!("{}", report::table(rows));
    }
    if let Some(path) = &args.json {
        match report::write_json(path, rows) {
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

/// Logs to stderr; with `DCB_BENCH_OBSERVE` naming `metrics` and/or
/// `traces`, also what an observed service pays: the Prometheus recorder,
/// and every INFO span built as an OpenTelemetry span with the W3C
/// propagation on (exported nowhere, so the figures show the
/// instrumentation, not an exporter's I/O).
fn observe() -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let observe = std::env::var("DCB_BENCH_OBSERVE").unwrap_or_default();
    if observe.contains("metrics") {
        dcb_console::metrics::install();
    }
    let provider = observe
        .contains("traces")
        .then(|| opentelemetry_sdk::trace::SdkTracerProvider::builder().build());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error")),
        );
    let traces = provider.as_ref().map(|p| {
        dcb_console::telemetry::layer(p).with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if provider.is_some() {
        dcb_console::telemetry::install_propagator();
    }
    if !observe.is_empty() {
        eprintln!("[dcb-bench] observed: DCB_BENCH_OBSERVE={observe}");
    }
    provider
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            None
        }
    }
}

/// `dcb-bench __queue-worker <schema> <jobs-at-once>`: a worker process of
/// the queue workload (started by the bench itself).
fn queue_worker(args: &[String]) -> ExitCode {
    let url = match db::database_url() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(queue::worker_process(&url, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: queue worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workloads `workload` stands for, in run order.
fn expand(workload: Workload) -> Vec<Workload> {
    match workload {
        Workload::All => vec![
            Workload::Append,
            Workload::Listener,
            Workload::Queue,
            Workload::Relay,
        ],
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
    finish(args, &rows, outcome)
}

async fn run_workloads(db: &db::Db, args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    for workload in expand(args.workload) {
        eprintln!("[dcb-bench] workload {}", workload.name());
        match workload {
            Workload::Append => append::run(db, args, rows).await?,
            Workload::Listener => listener::run(db, args, rows).await?,
            Workload::Queue => queue::run(db, args, rows).await?,
            Workload::Relay if relay::brokers().is_none() => {
                eprintln!("warning: skipping relay: {}", relay::NO_BROKERS);
            }
            Workload::Relay => relay::run(db, args, rows).await?,
            Workload::Scaling => scaling::run(args, rows).await?,
            Workload::All => unreachable!("expand never yields all"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_to_every_workload() {
        assert_eq!(
            expand(Workload::All),
            vec![
                Workload::Append,
                Workload::Listener,
                Workload::Queue,
                Workload::Relay
            ]
        );
        assert_eq!(expand(Workload::Append), vec![Workload::Append]);
    }
}
