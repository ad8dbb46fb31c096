//! `dcb console`: the web console on its own, with `/metrics`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use axum::Router;
use clap::Args;
use dcb_console::{Console, Ops};
use dcb_kafka::KafkaConfig;

#[derive(Args)]
pub struct ConsoleArgs {
    /// The port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The address to listen on; anything but a loopback address needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The token every page and action then requires (at least 16 bytes).
    #[arg(long, env = "DCB_CONSOLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Kafka's bootstrap servers, to redrive dead records from the console.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
}

pub async fn run(ops: &Ops, args: ConsoleArgs) -> Result<ExitCode, dcb_console::Error> {
    let addr = SocketAddr::new(args.host, args.port);
    let mut console = Console::with_ops(ops.clone());
    if let Some(token) = args.token.filter(|t| !t.is_empty()) {
        console = console.token(token);
    }
    if let Some(brokers) = args.brokers.filter(|b| !b.trim().is_empty()) {
        console = console.kafka(KafkaConfig::new(brokers));
    }
    let router = console
        .router(addr)
        .map_err(|e| dcb_console::Error::Invalid(e.to_string()))?;
    let app = Router::new()
        .merge(dcb_console::metrics::router(ops.store().clone()))
        .merge(router);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| dcb_console::Error::Invalid(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener.local_addr().unwrap_or(addr);
    eprintln!(
        "dcb console on http://{addr}/ (schema {}); Ctrl-C stops it",
        ops.schema()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| dcb_console::Error::Invalid(format!("the console's server failed: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
