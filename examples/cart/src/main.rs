//! `cart`: the cart example's server.
//!
//! ```text
//! cart serve [--port 3000] [--host 127.0.0.1]   # the HTTP server
//! cart                                          # the same, options from the environment
//! cart reset-cart-items                         # rebuild CartItems from DB
//! ```
//!
//! Every option of `serve` also reads an environment variable (`PORT`,
//! `HOST`, `CART_PUBLISH_*`, `DCB_CONSOLE_TOKEN`), with or without the
//! subcommand.
//!
//! The server also answers `/console` (the operators' console of
//! `dcb-console`; on an address other than loopback only with
//! `DCB_CONSOLE_TOKEN`) and `/metrics`.
//!
//! Environment: `DATABASE_URL` (without it, a private PostgreSQL is started
//! with `scripts/postgres.sh start`, data in `.dcb/postgres`), `KAFKA_BROKERS`
//! (without it, Kafka is off), `RUST_LOG`; the publication's retries:
//! `CART_PUBLISH_DEADLINE_SECS`, `CART_PUBLISH_TIMEOUT_MS`,
//! `CART_PUBLISH_RETRY_MIN_MS`, `CART_PUBLISH_RETRY_MAX_MS` (see `--help`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use cart::app::{self, App, Config};
use cart::slices::cart_items_db::CartItemsDbListener;
use clap::{Parser, Subcommand};
use dcb_core::Backoff;
use dcb_core::BoxError;
use dcb_kafka::KafkaConfig;

#[derive(Parser)]
#[command(name = "cart", version, about = "The cart example of dcb")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// `serve`'s options alone: `cart` without a subcommand reads them (from the
/// environment, or their defaults) exactly as `cart serve` does.
#[derive(Parser)]
#[command(name = "cart")]
struct DefaultServe {
    #[command(flatten)]
    args: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the HTTP server (the default).
    Serve(ServeArgs),
    /// Empties the CartItems-from-DB tables and rebuilds them from the log,
    /// showing progress.
    ResetCartItems,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
    /// The address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// How long (seconds) a cart's publication is retried before
    /// `CartPublicationFailed` is recorded.
    #[arg(long, env = "CART_PUBLISH_DEADLINE_SECS", default_value_t = 3600)]
    publish_deadline_secs: u64,
    /// How long (milliseconds) one attempt at publishing a cart to Kafka
    /// waits for the broker's acknowledgement before it is retried.
    #[arg(long, env = "CART_PUBLISH_TIMEOUT_MS", default_value_t = 30_000)]
    publish_timeout_ms: u64,
    /// The first wait (milliseconds) before a failed publication is
    /// retried; it doubles up to `--publish-retry-max-ms`, half jittered.
    #[arg(long, env = "CART_PUBLISH_RETRY_MIN_MS", default_value_t = 1_000)]
    publish_retry_min_ms: u64,
    /// The longest wait (milliseconds) between publication attempts.
    #[arg(long, env = "CART_PUBLISH_RETRY_MAX_MS", default_value_t = 300_000)]
    publish_retry_max_ms: u64,
    /// The token the operators' console at /console requires (at least 16
    /// bytes). Without it the console is served only on a loopback address.
    #[arg(long, env = "DCB_CONSOLE_TOKEN", hide_env_values = true)]
    console_token: Option<String>,
}

fn main() -> ExitCode {
    let started = Instant::now();
    // Logs, and with the `otlp` feature and OTEL_EXPORTER_OTLP_ENDPOINT set,
    // traces exported over OTLP.
    let _telemetry = match dcb_console::telemetry::init("cart", "info,sqlx=warn,tower_http=info") {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("cannot set up logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = Cli::parse().command.unwrap_or_else(|| {
        let serve = DefaultServe::try_parse_from(["cart"]).unwrap_or_else(|e| e.exit());
        Command::Serve(serve.args)
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve(args, started).await,
            Command::ResetCartItems => reset_cart_items().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cart failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `DATABASE_URL`, or the URL of a private PostgreSQL started by the
/// repository's `scripts/postgres.sh`.
async fn database_url() -> Result<String, BoxError> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            tracing::info!("using the PostgreSQL of DATABASE_URL");
            return Ok(url);
        }
    }
    let candidates = [
        PathBuf::from("scripts/postgres.sh"),
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/postgres.sh"
        )),
    ];
    let Some(script) = candidates.iter().find(|p| p.is_file()) else {
        return Err(
            "DATABASE_URL is not set and scripts/postgres.sh was not found; \
                    set DATABASE_URL=postgres://user@host:port/db"
                .into(),
        );
    };
    tracing::info!(
        script = %script.display(),
        "DATABASE_URL is not set: starting (or reusing) a private PostgreSQL from this machine's \
         binaries, data in .dcb/postgres"
    );
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .arg("start")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !output.status.success() {
        return Err(format!("{} start failed ({})", script.display(), output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let url = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("postgres"))
        .ok_or("scripts/postgres.sh printed no URL")?
        .to_owned();
    tracing::info!(%url, "private PostgreSQL is up");
    Ok(url)
}

async fn serve(args: ServeArgs, started: Instant) -> Result<(), BoxError> {
    let database_url = database_url().await?;
    let mut config = Config::new(database_url);
    config.listen = SocketAddr::new(args.host, args.port);
    config.publish_deadline = Duration::from_secs(args.publish_deadline_secs);
    config.publish_timeout = Duration::from_millis(args.publish_timeout_ms.max(1));
    config.console_token = args.console_token.filter(|t| !t.is_empty());
    config.publish_backoff = Backoff::new(
        Duration::from_millis(args.publish_retry_min_ms),
        Duration::from_millis(args.publish_retry_max_ms.max(args.publish_retry_min_ms)),
    );
    config.kafka = match std::env::var("KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => {
            tracing::info!(%brokers, "Kafka is on: translating `inventories` and `price-changes`, publishing to `published-carts`");
            Some(KafkaConfig::new(brokers))
        }
        _ => {
            tracing::info!(
                "KAFKA_BROKERS is not set: Kafka is off (no translators for `inventories` and \
                 `price-changes`, no publishing to `published-carts`)"
            );
            None
        }
    };
    tracing::info!(
        publish_deadline_secs = args.publish_deadline_secs,
        publish_timeout_ms = args.publish_timeout_ms,
        publish_retry_min_ms = args.publish_retry_min_ms,
        publish_retry_max_ms = args.publish_retry_max_ms,
        "publication settings"
    );
    let app = App::start(config).await?;
    tracing::info!(
        addr = %app.addr(),
        ready_after_ms = started.elapsed().as_millis() as u64,
        "ready: try curl http://{}/healthcheck",
        app.addr()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    app.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

async fn reset_cart_items() -> Result<(), BoxError> {
    let database_url = database_url().await?;
    let (store, _queue) = app::connect(&database_url).await?;
    let runner = store
        .listeners()
        .transactional(CartItemsDbListener)
        .start()
        .await?;
    println!("rebuilding CartItems from DB ({})", CartItemsDbListener::ID);
    let done = runner
        .rebuild(CartItemsDbListener::ID, |p| {
            println!(
                "  {:>5.1}%  position {} of {}  ({} events, {:.0} events/s)",
                p.fraction * 100.0,
                p.position.0,
                p.target.0,
                p.events_done,
                p.events_per_sec
            );
        })
        .await;
    runner.shutdown().await;
    store.shutdown().await;
    let done = done?;
    println!(
        "done: {} events in {:.2}s",
        done.events_done,
        done.elapsed.as_secs_f64()
    );
    Ok(())
}
