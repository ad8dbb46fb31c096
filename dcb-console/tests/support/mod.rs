//! Shared set-up: the cart example running in-process on a fresh database,
//! with a publisher the test can make fail, and the `dcb` binary run
//! against that database.
//!
//! Needs PostgreSQL: set DATABASE_URL (e.g.
//! postgres://postgres@127.0.0.1:54329/postgres) or run
//! `scripts/postgres.sh start`.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cart::app::{App, Config};
use cart::slices::publish_cart::{CartPublisher, PublishCartJob};
use dcb_core::{Backoff, BoxError, EventStore};
use dcb_postgres::queue::{JobFilter, JobInfo, JobState};
use dcb_postgres::testing::TestDatabase;
use serde_json::{json, Value};
use tokio::process::Command;
use uuid::Uuid;

/// How long a state may take to show (generous: the machine may be busy).
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// The cart's listeners.
pub const CART_LISTENERS: [&str; 5] = [
    "archive-items-on-price-change",
    "cart-items-db",
    "cart-publication-enqueuer",
    "carts-with-products",
    "inventories",
];

/// A publisher that records what it publishes, or fails while told to.
#[derive(Default)]
pub struct Switch {
    failing: AtomicBool,
    published: Mutex<Vec<PublishCartJob>>,
}

impl Switch {
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn published(&self) -> Vec<PublishCartJob> {
        self.published.lock().unwrap().clone()
    }
}

#[async_trait]
impl CartPublisher for Switch {
    async fn publish(&self, job: &PublishCartJob) -> Result<(), BoxError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("the broker is down (the test says so)".into());
        }
        self.published.lock().unwrap().push(job.clone());
        Ok(())
    }
}

/// The cart, running.
pub struct Cart {
    pub app: App,
    pub db: TestDatabase,
    pub publisher: Arc<Switch>,
    pub base: String,
    pub client: reqwest::Client,
}

/// Starts the cart on a fresh database; its publications are retried for
/// `deadline`, every 50-200 ms.
pub async fn start_cart(deadline: Duration) -> Cart {
    start_cart_with(deadline, |_| {}).await
}

/// [`start_cart`], with `configure` changing the configuration first.
pub async fn start_cart_with(deadline: Duration, configure: impl FnOnce(&mut Config)) -> Cart {
    let db = TestDatabase::create().await;
    let publisher = Arc::new(Switch::default());
    let mut config = Config::new(db.url());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.publisher = Some(publisher.clone());
    config.publish_deadline = deadline;
    config.publish_backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    configure(&mut config);
    let app = App::start(config).await.expect("the cart starts");
    let base = format!("http://{}", app.addr());
    Cart {
        app,
        db,
        publisher,
        base,
        client: reqwest::Client::new(),
    }
}

impl Cart {
    pub async fn stop(self) {
        self.app.shutdown().await;
        self.db.cleanup().await;
    }

    /// Adds an item described as `description` to `cart`; the position of
    /// the last event appended.
    pub async fn add_item(&self, cart: Uuid, description: &str) -> u64 {
        let body = json!({
            "item_id": Uuid::new_v4(), "product_id": Uuid::new_v4(),
            "description": description, "image": "thing.png", "price": "2.50"
        });
        let answer = self.post(&format!("/additem/{cart}"), body).await;
        answer["position"].as_u64().expect("a position")
    }

    /// Submits `cart`.
    pub async fn submit(&self, cart: Uuid) -> u64 {
        let answer = self.post(&format!("/submitcart/{cart}"), json!({})).await;
        answer["position"].as_u64().expect("a position")
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("the cart answers");
        let status = response.status();
        let value: Value = response.json().await.expect("a JSON answer");
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    /// A page (or any GET): status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the cart answers");
        (
            response.status().as_u16(),
            response.text().await.expect("a body"),
        )
    }

    pub async fn head(&self) -> u64 {
        self.app
            .store()
            .head()
            .await
            .expect("head")
            .map_or(0, |p| p.0)
    }

    /// The publication jobs (any state).
    pub async fn publish_jobs(&self) -> Vec<JobInfo> {
        self.app
            .store()
            .queue_admin()
            .jobs(&JobFilter::new().kind("publish_cart"))
            .await
            .expect("the jobs")
    }

    /// Waits until a publication job is in `state`; returns it.
    pub async fn wait_for_job(&self, state: JobState) -> JobInfo {
        eventually(&format!("a publication job {state}"), || async {
            let jobs = self.publish_jobs().await;
            jobs.iter()
                .find(|j| j.state == state)
                .cloned()
                .ok_or_else(|| format!("{:?}", jobs.iter().map(|j| j.state).collect::<Vec<_>>()))
        })
        .await
    }

    /// Waits until every listener of the cart has handled the head.
    pub async fn settle(&self) {
        let head = self.head().await;
        for id in CART_LISTENERS {
            self.app
                .listeners()
                .wait_until_timeout(id, dcb_core::Position(head), EVENTUALLY)
                .await
                .expect("the listener catches up");
        }
    }

    /// Runs `dcb ARGS` against the cart's database.
    pub async fn dcb(&self, args: &[&str]) -> Output {
        dcb_with(args, &[("DATABASE_URL", self.db.url())]).await
    }

    /// Runs `dcb ARGS` and parses its standard output as JSON, asserting
    /// success.
    pub async fn dcb_json(&self, args: &[&str]) -> Value {
        let output = self.dcb(args).await;
        assert_success(&output, args);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "dcb {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

/// Runs `dcb ARGS` with only `env` as its dcb-related environment.
pub async fn dcb_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcb"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DCB_SCHEMA")
        .env_remove("KAFKA_BROKERS");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the dcb binary runs")
}

pub fn assert_success(output: &Output, args: &[&str]) {
    assert!(
        output.status.success(),
        "dcb {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `probe` until it returns `Ok`, at most [`EVENTUALLY`]; panics
/// naming `what` and the last `Err` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {EVENTUALLY:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
