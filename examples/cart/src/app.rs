//! Wiring: the store, the read models' listeners, the archive automation,
//! the publication queue and the HTTP server, started and stopped together.
//! The binary and the integration tests both start the server this way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcb_console::Console;
use dcb_core::Backoff;
use dcb_core::{BoxError, DecisionMaker, EventStore, RetryPolicy};
use dcb_kafka::{KafkaConfig, Publisher, TranslatorHandle, TranslatorRunner};
use dcb_postgres::listener::RunnerHandle;
use dcb_postgres::queue::{WorkQueue, Workers, WorkersHandle, DEFAULT_BACKOFF};
use dcb_postgres::PgEventStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kafka::{InventoriesTranslator, KafkaCartPublisher, PriceChangesTranslator, GROUP_ID};
use crate::slices::archive_item::ArchiveOnPriceChange;
use crate::slices::cart_items_db::CartItemsDbListener;
use crate::slices::carts_with_products::CartsWithProductsListener;
use crate::slices::inventories::InventoriesListener;
use crate::slices::publish_cart::{
    CartPublisher, EnqueuePublication, PublishCartJob, PublishCartProcessor,
    DEFAULT_PUBLISH_DEADLINE,
};

/// A shared publisher (Kafka in the server, a recorder in tests).
pub type SharedPublisher = Arc<dyn CartPublisher>;

#[async_trait]
impl CartPublisher for SharedPublisher {
    async fn publish(&self, job: &PublishCartJob) -> Result<(), BoxError> {
        (**self).publish(job).await
    }
}

/// How to start the app.
pub struct Config {
    /// The PostgreSQL URL.
    pub database_url: String,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Where submitted carts are published; `None` turns publishing off (the
    /// enqueueing listener does not run, so carts submitted meanwhile are
    /// published when it runs again).
    pub publisher: Option<SharedPublisher>,
    /// How long a publication is retried before `CartPublicationFailed`.
    pub publish_deadline: Duration,
    /// The wait between attempts at a publication (the work queue's
    /// default: 1 s doubling up to 5 minutes, half jitter). After a broker
    /// outage, a pending publication is attempted again at most the longest
    /// wait reached after the broker is back.
    pub publish_backoff: Backoff,
    /// How long one attempt at publishing to Kafka waits for the broker's
    /// acknowledgement before it fails and is retried (librdkafka's
    /// `message.timeout.ms` of the cart's producer; default 30 s). Used
    /// when the publisher is built from [`kafka`](Self::kafka).
    pub publish_timeout: Duration,
    /// Kafka: with it, the translators of `inventories` and `price-changes`
    /// run, and (unless `publisher` is set) carts are published to
    /// `published-carts`.
    pub kafka: Option<KafkaConfig>,
    /// The translators' consumer group (default [`GROUP_ID`]).
    pub kafka_group: String,
    /// The token the operators' console at `/console` requires (at least
    /// 16 bytes). Without one the console is served only when the server
    /// listens on a loopback address; elsewhere it is off (with a warning).
    pub console_token: Option<String>,
}

impl Config {
    /// Defaults: port 3000 on localhost, no publisher, one-hour deadline.
    pub fn new(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            publisher: None,
            publish_deadline: DEFAULT_PUBLISH_DEADLINE,
            publish_backoff: DEFAULT_BACKOFF,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            kafka: None,
            kafka_group: GROUP_ID.to_owned(),
            console_token: None,
        }
    }
}

/// How long one publication attempt waits for the broker by default.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The translators' Kafka session timeout, unless the [`KafkaConfig`] sets
/// `session.timeout.ms`. librdkafka's default is 45 s, and that is how long
/// a crashed instance keeps its partitions (nothing of `inventories` or
/// `price-changes` is decided meanwhile): the group waits for the dead
/// member's session to expire before it hands its partitions to another
/// instance. 6 s is the shortest session a Kafka broker accepts by default
/// (`group.min.session.timeout.ms`); heartbeats come from librdkafka's own
/// thread, so a busy async runtime does not make the session expire.
pub const KAFKA_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// The translators' heartbeat interval (a third of the session, so two
/// heartbeats may be lost before the session expires), unless the
/// [`KafkaConfig`] sets `heartbeat.interval.ms`.
pub const KAFKA_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// The translators' consumer options: `kafka` with the cart's session
/// timeout and heartbeat where it sets none of its own.
pub fn translator_config(kafka: &KafkaConfig) -> KafkaConfig {
    let mut config = kafka.clone();
    for (key, value) in [
        ("session.timeout.ms", KAFKA_SESSION_TIMEOUT),
        ("heartbeat.interval.ms", KAFKA_HEARTBEAT_INTERVAL),
    ] {
        if config.get(key).is_none() {
            config = config.option(key, value.as_millis().to_string());
        }
    }
    config
}

/// The producer options of the cart's publisher: `kafka` with
/// `message.timeout.ms` from `timeout` where it sets none of its own.
pub fn publisher_config(kafka: &KafkaConfig, timeout: Duration) -> KafkaConfig {
    match kafka.get("message.timeout.ms") {
        Some(_) => kafka.clone(),
        None => kafka
            .clone()
            .option("message.timeout.ms", timeout.as_millis().to_string()),
    }
}

/// The decision maker's retries: generous enough that twenty racers on one
/// cart all get a real answer instead of a conflict.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 64,
        backoff: Backoff::new(Duration::from_millis(2), Duration::from_millis(100)),
        retry_unavailable: false,
    }
}

/// Connects the store and migrates the store, queue and read-model tables.
///
/// # Errors
/// The database cannot be reached or migrated.
pub async fn connect(database_url: &str) -> Result<(PgEventStore, WorkQueue), BoxError> {
    let store = PgEventStore::connect(database_url).await?;
    crate::db::migrate(store.pool()).await?;
    let queue = store.queue();
    queue.migrate().await?;
    Ok((store, queue))
}

/// The read models' listeners and the automation, on one runner.
///
/// # Errors
/// The runner does not start.
pub async fn start_listeners(
    store: &PgEventStore,
    queue: &WorkQueue,
    config: &Config,
) -> Result<RunnerHandle, BoxError> {
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let maker = DecisionMaker::new(shared).with_retry(retry_policy());
    let mut runner = store
        .listeners()
        .transactional(CartItemsDbListener)
        .transactional(CartsWithProductsListener)
        .transactional(InventoriesListener)
        .at_least_once(ArchiveOnPriceChange::new(maker));
    if config.publisher.is_some() {
        runner = runner.transactional(EnqueuePublication::new(
            queue.clone(),
            config.publish_deadline,
        ));
    }
    Ok(runner.start().await?)
}

/// The operators' routes: the console of `dcb-console` under `/console`
/// (off, with a warning, on an address other machines reach when no token
/// is configured) and the metrics at `/metrics`.
fn operations(store: &PgEventStore, config: &Config, addr: SocketAddr) -> axum::Router {
    let mut console = Console::new(store.clone());
    if let Some(token) = &config.console_token {
        console = console.token(token.clone());
    }
    if let Some(kafka) = &config.kafka {
        console = console.kafka(kafka.clone());
    }
    let routes = dcb_console::metrics::router(store.clone());
    match console.router(addr) {
        Ok(console) => routes.nest("/console", console).route(
            "/console/",
            axum::routing::get(|| async { axum::response::Redirect::permanent("/console") }),
        ),
        Err(error) => {
            tracing::warn!(%error, "the operators' console at /console is off");
            routes
        }
    }
}

/// The running app.
pub struct App {
    addr: SocketAddr,
    store: PgEventStore,
    listeners: RunnerHandle,
    workers: Option<WorkersHandle>,
    translators: Option<TranslatorHandle>,
    stop_http: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// Connects, migrates, starts the listeners, the publication workers (with
    /// a publisher) and the HTTP server.
    ///
    /// # Errors
    /// The database is unreachable, or the address is taken.
    pub async fn start(mut config: Config) -> Result<App, BoxError> {
        if let (Some(kafka), None) = (&config.kafka, &config.publisher) {
            let producer = Publisher::new(&publisher_config(kafka, config.publish_timeout))?;
            let publisher = KafkaCartPublisher::new(producer);
            config.publisher = Some(Arc::new(publisher));
        }
        let (store, queue) = connect(&config.database_url).await?;
        let listeners = start_listeners(&store, &queue, &config).await?;
        let workers = match &config.publisher {
            Some(publisher) => Some(
                Workers::new(queue.clone(), store.clone())
                    .backoff(config.publish_backoff)
                    .register(PublishCartProcessor::new(publisher.clone()))
                    .start()
                    .await?,
            ),
            None => None,
        };
        let translators = match &config.kafka {
            Some(kafka) => Some(
                TranslatorRunner::new(
                    translator_config(kafka),
                    config.kafka_group.clone(),
                    store.clone(),
                )
                .add(InventoriesTranslator)
                .add(PriceChangesTranslator)
                .start()
                .await?,
            ),
            None => None,
        };
        let shared: Arc<dyn EventStore> = Arc::new(store.clone());
        let state = crate::http::AppState {
            maker: DecisionMaker::new(shared.clone()).with_retry(retry_policy()),
            store: shared,
            pool: store.pool().clone(),
        };
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (stop_http, mut stopped) = watch::channel(false);
        let router = crate::http::with_operations(state, operations(&store, &config, addr));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        tracing::info!(%addr, "cart server listening");
        Ok(App {
            addr,
            store,
            listeners,
            workers,
            translators,
            stop_http,
            server,
        })
    }

    /// The Kafka translators, when Kafka is on.
    pub fn translators(&self) -> Option<&TranslatorHandle> {
        self.translators.as_ref()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    /// The listeners (for `wait_until`, status and rebuilds).
    pub fn listeners(&self) -> &RunnerHandle {
        &self.listeners
    }

    /// Stops gracefully: HTTP first (requests in flight finish), then Kafka
    /// consumers, workers (running jobs get ten seconds) and listeners.
    pub async fn shutdown(self) {
        self.stop_http.send_replace(true);
        match self.server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
            Ok(Ok(())) => {}
        }
        if let Some(translators) = self.translators {
            translators.shutdown().await;
        }
        if let Some(workers) = self.workers {
            workers.shutdown(Duration::from_secs(10)).await;
        }
        self.listeners.shutdown().await;
        self.store.shutdown().await;
        tracing::info!("cart server stopped");
    }
}
