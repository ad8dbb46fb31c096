//! The `dcb` command: operate a service built on dcb from a terminal.
//! `dcb --help` says how; each subcommand lives in its own module.

mod console;
mod dead_messages;
mod events;
mod jobs;
mod listeners;
mod output;
mod status;
mod table;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dcb_console::Ops;

const ABOUT: &str =
    "Operate a service built on dcb: its event log, listeners, work queue and Kafka side.";

const LONG_ABOUT: &str = "\
Operate a service built on dcb: its event log, listeners, work queue and Kafka side.

dcb works on the PostgreSQL database of DATABASE_URL (or --database-url) and on the
store in schema \"dcb\" (or --schema / DCB_SCHEMA). It needs none of the service's
code: everything it shows and does goes through the database, and the service's own
processes carry out what it asks of listeners.

First steps:
  dcb status                          what runs, how far behind it is, what failed
  dcb events --backwards --limit 20   the latest events
  dcb events --tag cart_id:42         one cart's events
  dcb listeners parked NAME           the events a listener gave up on
  dcb jobs list --state dead          jobs that failed for good
  dcb console                         the same in a browser, on http://127.0.0.1:8080

Every listing takes --json for scripts.";

#[derive(Parser)]
#[command(name = "dcb", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Command,
}

/// Where the store is.
#[derive(Args, Clone)]
struct Target {
    /// The PostgreSQL URL, e.g. postgres://user:password@host:5432/database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The schema of the event store.
    #[arg(
        long,
        env = "DCB_SCHEMA",
        global = true,
        default_value = "dcb",
        hide_env_values = true
    )]
    schema: String,
}

impl Target {
    async fn open(&self) -> Result<Ops, dcb_console::Error> {
        let ops = Ops::connect(self.database_url.as_deref(), &self.schema).await?;
        Ok(ops.operator(operator()))
    }
}

/// Who the listener requests made from here are recorded as made by.
fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "?".to_owned());
    format!("dcb command, {user}@{host}")
}

#[derive(Subcommand)]
enum Command {
    /// The head of the log, every listener's lag and state, every queue's jobs by
    /// state, Kafka's dead records and relay lag.
    Status(status::StatusArgs),
    /// Reads the log: filter by type and tags, start after a position, follow new
    /// events as they are appended.
    Events(events::EventsArgs),
    /// Listeners: list them, see their parked events, reset or rebuild them, retry
    /// or skip a parked event.
    #[command(subcommand)]
    Listeners(listeners::ListenersCommand),
    /// The work queue: list jobs, redrive dead ones, cancel.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Kafka records that translators recorded as dead: list them, send them to
    /// their topic again.
    #[command(subcommand, name = "dead-messages")]
    DeadMessages(dead_messages::DeadCommand),
    /// Creates or updates the tables of every dcb component (event store,
    /// listeners, work queue, snapshots, Kafka) in the schema.
    Migrate,
    /// Serves the web console (and /metrics).
    Console(console::ConsoleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DCB_LOG")
                .unwrap_or_else(|_| "warn,sqlx=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, dcb_console::Error> {
    let target = cli.target;
    if let Command::Migrate = cli.command {
        let applied = dcb_console::migrate(target.database_url.as_deref(), &target.schema).await?;
        println!(
            "schema {} is up to date: {}",
            target.schema,
            applied.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ops = target.open().await?;
    let result = match cli.command {
        Command::Status(args) => status::run(&ops, args).await,
        Command::Events(args) => events::run(&ops, args).await,
        Command::Listeners(command) => listeners::run(&ops, command).await,
        Command::Jobs(command) => jobs::run(&ops, command).await,
        Command::DeadMessages(command) => dead_messages::run(&ops, command).await,
        Command::Console(args) => console::run(&ops, args).await,
        Command::Migrate => unreachable!("handled above"),
    };
    ops.close().await;
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
