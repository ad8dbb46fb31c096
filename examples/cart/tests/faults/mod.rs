//! Support of the fault-injection tests (`tests/faults_*.rs`): the cart
//! server as real processes (`env!("CARGO_BIN_EXE_cart")`), a load driver over
//! HTTP and Kafka, a private tansu broker per test, and the invariants checked
//! from the event log, the read models and the topics.
//!
//! Kafka isolation: the binary uses fixed topic names and the fixed consumer
//! group `cart`, so every test that uses Kafka starts its own tansu on a free
//! port (`scripts/tansu.sh` with `DCB_TANSU_PORT` / `DCB_TANSU_DIR`). The
//! shared `KAFKA_BROKERS` must still be set: it says tansu is installed.
//!
//! Soak variants: `DCB_SOAK=1` multiplies the load phases (see [`soak`]).
//! Server logs are kept (and their folder printed) when a test fails, or
//! always with `DCB_FAULTS_KEEP_LOGS=1`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cart::events::CartEvent;
use dcb_core::Event;
use dcb_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use dcb_kafka::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use dcb_kafka::{KafkaConfig, OutgoingMessage, Publisher};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// How long anything may take to converge after the last fault.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// The repository root (two levels above this package).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `factor` when `DCB_SOAK=1`, else 1.
pub fn soak(factor: u32) -> u32 {
    if std::env::var("DCB_SOAK").is_ok_and(|v| v == "1") {
        factor
    } else {
        1
    }
}

/// `DATABASE_URL`, or a panic saying how to start PostgreSQL.
pub fn require_database() -> String {
    dcb_postgres::testing::database_url()
}

/// `KAFKA_BROKERS`, or a panic saying how to start tansu.
pub fn require_kafka() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "these tests need tansu: KAFKA_BROKERS is not set; run \
             export KAFKA_BROKERS=\"$(scripts/tansu.sh start)\""
        ),
    }
}

/// A random number below `n` (no extra dependency: a v4 UUID's bits).
pub fn below(n: usize) -> usize {
    (Uuid::new_v4().as_u128() % n.max(1) as u128) as usize
}

/// A free TCP port on localhost.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A fresh temporary directory.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cart-faults-{what}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// Runs `script` (under `scripts/`) with `args` and `envs`; its stdout.
pub fn script(script: &str, args: &[&str], envs: &[(&str, String)]) -> String {
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = command.output().expect("the script runs");
    assert!(
        output.status.success(),
        "scripts/{script} {args:?} failed: {}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A private tansu (memory storage) on its own port.
pub struct Tansu {
    pub port: u16,
    pub dir: PathBuf,
    pub brokers: String,
}

impl Tansu {
    pub fn start() -> Tansu {
        require_kafka();
        let port = free_port();
        let dir = temp_dir("tansu");
        let tansu = Tansu {
            port,
            dir,
            brokers: format!("127.0.0.1:{port}"),
        };
        tansu.up();
        tansu
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DCB_TANSU_PORT", self.port.to_string()),
            ("DCB_TANSU_DIR", self.dir.display().to_string()),
        ]
    }

    /// Starts the broker and creates the cart's topics.
    pub fn up(&self) {
        let url = script("tansu.sh", &["start"], &self.envs());
        assert_eq!(url.lines().last(), Some(self.brokers.as_str()));
    }

    pub fn stop(&self) {
        script("tansu.sh", &["stop"], &self.envs());
    }

    pub async fn create_topics(&self) {
        use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use dcb_kafka::rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("an admin client");
        let topics: Vec<NewTopic<'_>> = ["inventories", "price-changes", "published-carts"]
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match admin.create_topics(&topics, &AdminOptions::new()).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("cannot create topics: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/tansu.sh"))
            .arg("stop")
            .envs(self.envs())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One cart server process.
pub struct Server {
    child: Child,
    pub base: String,
}

/// Three (or any number of) cart servers on one database.
pub struct Servers {
    dir: PathBuf,
    database_url: String,
    kafka: Option<String>,
    env: Vec<(String, String)>,
    slots: Vec<Option<Server>>,
    /// The base URLs the load client spreads requests over.
    pub bases: Arc<RwLock<Vec<String>>>,
    logs: Vec<PathBuf>,
    pub kills: u32,
}

impl Servers {
    /// Starts `n` servers and waits until each answers its health check.
    pub async fn start(
        n: usize,
        database_url: &str,
        kafka: Option<&str>,
        env: &[(&str, &str)],
    ) -> Servers {
        let mut servers = Servers {
            dir: temp_dir("servers"),
            database_url: database_url.to_owned(),
            kafka: kafka.map(str::to_owned),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            slots: (0..n).map(|_| None).collect(),
            bases: Arc::new(RwLock::new(Vec::new())),
            logs: Vec::new(),
            kills: 0,
        };
        for i in 0..n {
            servers.spawn(i).await;
        }
        servers
    }

    /// Sets (or with `None` removes) an environment variable for the next
    /// starts.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    async fn spawn(&mut self, i: usize) {
        let port = free_port();
        let log = self.dir.join(format!("server-{i}-{}.log", self.logs.len()));
        let out = File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cart"));
        command
            .args(["serve", "--port", &port.to_string()])
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "warn,cart=info")
            .env("CART_PUBLISH_DEADLINE_SECS", "3600")
            .env_remove("KAFKA_BROKERS")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(k) = &self.kafka {
            command.env("KAFKA_BROKERS", k);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the cart binary starts");
        self.logs.push(log.clone());
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server {i} exited ({status}) while starting:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let ok = client
                .get(format!("{base}/healthcheck"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server {i} not healthy within 60 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.bases.write().unwrap().push(base.clone());
        self.slots[i] = Some(Server { child, base });
    }

    fn forget(&mut self, i: usize) -> Option<Server> {
        let server = self.slots[i].take()?;
        self.bases.write().unwrap().retain(|b| *b != server.base);
        Some(server)
    }

    /// SIGKILLs server `i` (no graceful anything).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut server) = self.forget(i) {
            server.child.kill().expect("SIGKILL");
            let _ = server.child.wait();
            self.kills += 1;
        }
    }

    /// SIGTERMs server `i` and waits (at most 30 s) until it has stopped.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut server) = self.forget(i) {
            let _ = Command::new("kill")
                .args(["-TERM", &server.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = server.child.kill();
                    let _ = server.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`...) to every
    /// running server.
    fn signal_all(&self, signal: &str) {
        for server in self.slots.iter().flatten() {
            let status = Command::new("kill")
                .args([format!("-{signal}"), server.child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill -{signal} failed: {status}");
        }
    }

    /// Freezes every server (SIGSTOP): nothing they do advances until
    /// [`resume_all`](Self::resume_all).
    pub fn pause_all(&self) {
        self.signal_all("STOP");
    }

    /// Lets frozen servers go on (SIGCONT).
    pub fn resume_all(&self) {
        self.signal_all("CONT");
    }

    /// Every server process is still running (none exited on its own).
    pub fn assert_running(&mut self) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(server) = slot.as_mut() {
                let status = server.child.try_wait().expect("try_wait");
                assert!(status.is_none(), "server {i} exited: {status:?}");
            }
        }
    }

    /// Starts server `i` again (on a fresh port).
    pub async fn restart(&mut self, i: usize) {
        assert!(self.slots[i].is_none(), "server {i} is running");
        self.spawn(i).await;
    }

    /// SIGTERMs every server and waits (at most 30 s each) for it to stop;
    /// then checks that no server log shows a panic.
    pub fn stop_all(&mut self) {
        self.assert_running();
        for i in 0..self.slots.len() {
            self.terminate(i);
        }
        self.assert_no_panic();
    }

    /// No process's output shows a panic.
    pub fn assert_no_panic(&self) {
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                !text.contains("panicked"),
                "a server panicked ({}):\n{text}",
                log.display()
            );
        }
    }

    /// Every log line containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.logs
            .iter()
            .flat_map(|l| {
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .lines()
                    .filter(|line| line.contains(needle))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(server) = slot.as_mut() {
                let _ = server.child.kill();
                let _ = server.child.wait();
            }
        }
        let keep = std::env::var("DCB_FAULTS_KEEP_LOGS").is_ok_and(|v| v == "1");
        if !std::thread::panicking() && !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("server logs kept in {}", self.dir.display());
        }
    }
}

/// What a command was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Add,
    Remove,
    Clear,
    Submit,
    ChangePrice,
}

/// One command sent and its answer (status 0: no answer).
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: Kind,
    pub cart: Uuid,
    pub item: Option<Uuid>,
    pub status: u16,
    pub body: Value,
    /// The highest position of an accepted command on this cart whose
    /// answer came before this command was sent (0: none): the decision
    /// must have seen at least the log up to there.
    pub seen_from: i64,
    /// When it was sent and when its answer came.
    pub sent: Instant,
    pub answered: Instant,
}

/// The load's shared state.
pub struct Load {
    bases: Arc<RwLock<Vec<String>>>,
    client: reqwest::Client,
    carts: Mutex<Vec<Uuid>>,
    items: Mutex<HashMap<Uuid, Vec<Uuid>>>,
    pub products: Vec<Uuid>,
    pub records: Mutex<Vec<Record>>,
    /// Cart → the highest position of an accepted command on it.
    accepted: Mutex<HashMap<Uuid, i64>>,
    stop: AtomicBool,
    price_seq: AtomicU64,
}

impl Load {
    pub fn new(bases: Arc<RwLock<Vec<String>>>) -> Arc<Load> {
        Arc::new(Load {
            bases,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            carts: Mutex::new((0..8).map(|_| Uuid::new_v4()).collect()),
            items: Mutex::new(HashMap::new()),
            products: (0..4).map(|_| Uuid::new_v4()).collect(),
            records: Mutex::new(Vec::new()),
            accepted: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            price_seq: AtomicU64::new(0),
        })
    }

    /// Starts `workers` tasks sending commands until [`stop`](Self::stop).
    pub fn run(self: &Arc<Self>, workers: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..workers)
            .map(|_| {
                let load = self.clone();
                tokio::spawn(async move {
                    while !load.stop.load(Ordering::Relaxed) {
                        load.step().await;
                    }
                })
            })
            .collect()
    }

    pub async fn stop(&self, workers: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.expect("a load worker");
        }
    }

    fn base(&self) -> Option<String> {
        let bases = self.bases.read().unwrap();
        if bases.is_empty() {
            None
        } else {
            Some(bases[below(bases.len())].clone())
        }
    }

    /// Sends `body` to `path` on any live server; (status, answer), status 0
    /// when no answer came.
    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let Some(base) = self.base() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return (0, Value::Null);
        };
        let mut request = self.client.post(format!("{base}{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Sends raw bytes; the status (0: no answer).
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> u16 {
        let Some(base) = self.base() else {
            return 0;
        };
        match self
            .client
            .post(format!("{base}{path}"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Sends a command on `cart` and records it with its answer.
    async fn command(
        &self,
        kind: Kind,
        cart: Uuid,
        item: Option<Uuid>,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let seen_from = self
            .accepted
            .lock()
            .unwrap()
            .get(&cart)
            .copied()
            .unwrap_or(0);
        let sent = Instant::now();
        let answer = self.post(path, body).await;
        let answered = Instant::now();
        assert!(
            answer.0 < 500 || answer.0 == 503,
            "{kind:?} on {cart} answered {}: {}",
            answer.0,
            answer.1
        );
        if answer.0 == 200 {
            if let Some(position) = answer.1["position"].as_i64() {
                let mut accepted = self.accepted.lock().unwrap();
                let highest = accepted.entry(cart).or_default();
                *highest = (*highest).max(position);
            }
        }
        self.records.lock().unwrap().push(Record {
            kind,
            cart,
            item,
            status: answer.0,
            body: answer.1.clone(),
            seen_from,
            sent,
            answered,
        });
        answer
    }

    /// One random command.
    pub async fn step(&self) {
        let slot = below(8);
        let cart = self.carts.lock().unwrap()[slot];
        let roll = below(100);
        if roll < 60 {
            let item = Uuid::new_v4();
            let product = self.products[below(self.products.len())];
            let body = json!({
                "item_id": item, "product_id": product,
                "description": "a thing", "image": "thing.png", "price": "1.00"
            });
            let path = format!("/additem/{cart}");
            let answer = self
                .command(Kind::Add, cart, Some(item), &path, Some(body))
                .await;
            if answer.0 == 200 {
                self.items
                    .lock()
                    .unwrap()
                    .entry(cart)
                    .or_default()
                    .push(item);
            }
        } else if roll < 78 {
            let item = {
                let mut items = self.items.lock().unwrap();
                let list = items.entry(cart).or_default();
                if list.is_empty() {
                    Uuid::new_v4()
                } else {
                    list.swap_remove(below(list.len()))
                }
            };
            let path = format!("/removeitem/{cart}");
            let body = json!({ "item_id": item });
            self.command(Kind::Remove, cart, Some(item), &path, Some(body))
                .await;
        } else if roll < 83 {
            let path = format!("/clearcart/{cart}");
            self.command(Kind::Clear, cart, None, &path, None).await;
        } else if roll < 95 {
            let path = format!("/submitcart/{cart}");
            let answer = self.command(Kind::Submit, cart, None, &path, None).await;
            if answer.0 == 200 || answer.0 == 409 {
                let mut carts = self.carts.lock().unwrap();
                if carts[slot] == cart {
                    carts[slot] = Uuid::new_v4();
                }
            }
        } else {
            let product = self.products[below(self.products.len())];
            let n = self.price_seq.fetch_add(1, Ordering::Relaxed);
            let path = format!("/changeprice/{product}");
            let body = json!({"old_price": "1.00", "new_price": format!("2.{n:04}")});
            self.command(Kind::ChangePrice, product, None, &path, Some(body))
                .await;
        }
    }

    /// (sent, accepted, rejected by rule (409), other answers/no answer).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let records = self.records.lock().unwrap();
        let accepted = records.iter().filter(|r| r.status == 200).count();
        let rejected = records.iter().filter(|r| r.status == 409).count();
        (
            records.len(),
            accepted,
            rejected,
            records.len() - accepted - rejected,
        )
    }
}

/// Kafka traffic: what was produced, and what `published-carts` carried.
pub struct Kafka {
    pub brokers: String,
    publisher: Publisher,
    /// (product, inventory) of every `inventories` message produced.
    pub inventories: Mutex<Vec<(Uuid, i64)>>,
    /// (product, new price) of every `price-changes` message produced.
    pub prices: Mutex<Vec<(Uuid, String)>>,
    /// Malformed messages produced.
    pub malformed: AtomicU64,
    /// Cart id → times seen on `published-carts` (over every broker
    /// lifetime: see [`reread`](Self::reread)).
    pub published: Arc<Mutex<HashMap<Uuid, u32>>>,
    seq: AtomicU64,
    reader: Mutex<Option<Reader>>,
}

/// What follows `published-carts` from its beginning.
struct Reader {
    consumer: Arc<StreamConsumer>,
    /// The offset after the last message read (0: none read yet).
    next: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(brokers: &str, seen: Arc<Mutex<HashMap<Uuid, u32>>>) -> Reader {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("faults-check-{}", Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("published-carts", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).expect("assign published-carts");
        let consumer = Arc::new(consumer);
        let next = Arc::new(AtomicI64::new(0));
        let task = {
            let consumer = consumer.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(message) = consumer.recv().await {
                        if let Some(cart) = message
                            .key()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .and_then(|k| Uuid::parse_str(k).ok())
                        {
                            *seen.lock().unwrap().entry(cart).or_default() += 1;
                        }
                        next.store(message.offset() + 1, Ordering::SeqCst);
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        };
        Reader {
            consumer,
            next,
            task,
        }
    }

    /// Stops reading; the client is closed off the async threads (closing
    /// talks to the broker, which may be gone).
    fn stop(self) {
        self.task.abort();
        let consumer = self.consumer;
        std::thread::spawn(move || drop(consumer));
    }
}

impl Kafka {
    pub async fn new(brokers: &str) -> Kafka {
        // A short delivery timeout: after a broker restart the first send
        // times out (see `dcb_kafka::Publisher`), and a caller retries.
        let config = KafkaConfig::new(brokers).option("message.timeout.ms", "5000");
        let publisher = Publisher::new(&config).expect("a publisher");
        let published: Arc<Mutex<HashMap<Uuid, u32>>> = Arc::default();
        let reader = Reader::start(brokers, published.clone());
        Kafka {
            brokers: brokers.to_owned(),
            publisher,
            inventories: Mutex::default(),
            prices: Mutex::default(),
            malformed: AtomicU64::new(0),
            published,
            seq: AtomicU64::new(0),
            reader: Mutex::new(Some(reader)),
        }
    }

    /// Whether the reader has read everything `published-carts` holds now
    /// (false when the broker does not answer).
    pub async fn read_all(&self) -> bool {
        let Some((consumer, next)) = self
            .reader
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| (r.consumer.clone(), r.next.clone()))
        else {
            return false;
        };
        let high = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks("published-carts", 0, Duration::from_secs(5))
        })
        .await
        .expect("the watermark task");
        matches!(high, Ok((_, high)) if next.load(Ordering::SeqCst) >= high)
    }

    /// Stops reading `published-carts` (before the broker that holds it
    /// goes away, so that nothing of its next lifetime is read by this
    /// reader).
    pub fn stop_reading(&self) {
        if let Some(reader) = self.reader.lock().unwrap().take() {
            reader.stop();
        }
    }

    /// Reads `published-carts` again from its beginning with a fresh
    /// consumer: for a broker that lost its log, whose offsets start at 0
    /// again. What was seen before is kept, so [`published`](Self::published)
    /// is the union over the broker's lifetimes.
    pub fn reread(&self) {
        self.stop_reading();
        let reader = Reader::start(&self.brokers, self.published.clone());
        *self.reader.lock().unwrap() = Some(reader);
    }

    /// Produces `payload` on `topic`; true when the broker took it.
    pub async fn send_raw(&self, topic: &str, payload: Vec<u8>) -> bool {
        self.send(topic, payload).await
    }

    async fn send(&self, topic: &str, payload: Vec<u8>) -> bool {
        let message = OutgoingMessage::new(topic).payload(payload);
        match self.publisher.send(message).await {
            Ok(_) => true,
            Err(error) => {
                eprintln!("producing to {topic} failed: {error}");
                false
            }
        }
    }

    /// Produces one stock report (a fresh product); true when the broker
    /// took it.
    pub async fn inventory(&self) -> bool {
        let product = Uuid::new_v4();
        let n = self.seq.fetch_add(1, Ordering::Relaxed) as i64;
        let payload = json!({"product_uuid": product, "inventory": n}).to_string();
        let ok = self.send("inventories", payload.into_bytes()).await;
        if ok {
            self.inventories.lock().unwrap().push((product, n));
        }
        ok
    }

    /// Produces one price change of `product`.
    pub async fn price(&self, product: Uuid) -> bool {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let new_price = format!("3.{n:04}");
        let payload =
            json!({"product_id": product, "old_price": "1.00", "new_price": new_price}).to_string();
        let ok = self.send("price-changes", payload.into_bytes()).await;
        if ok {
            self.prices.lock().unwrap().push((product, new_price));
        }
        ok
    }

    /// Produces one malformed message on either input topic.
    pub async fn malformed(&self) -> bool {
        let bad: &[&[u8]] = &[
            b"nope",
            b"{}",
            br#"{"product_uuid":"not-a-uuid","inventory":1}"#,
            br#"{"product_id":"00000000-0000-4000-8000-000000000001","old_price":"-1","new_price":"1"}"#,
            b"\xff\xfe\x00",
            // Well-formed, outside the cart's limits.
            br#"{"product_uuid":"00000000-0000-4000-8000-000000000001","inventory":-5}"#,
            br#"{"product_id":"00000000-0000-4000-8000-000000000001","old_price":"1","new_price":"50000000000000000000000000000"}"#,
        ];
        let topic = if below(2) == 0 {
            "inventories"
        } else {
            "price-changes"
        };
        let ok = self.send(topic, bad[below(bad.len())].to_vec()).await;
        if ok {
            self.malformed.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Messages seen more than once on `published-carts`.
    pub fn duplicates(&self) -> u32 {
        self.published
            .lock()
            .unwrap()
            .values()
            .map(|n| n.saturating_sub(1))
            .sum()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop_reading();
    }
}

/// How many produced `inventories` / `price-changes` messages are not in the
/// log yet.
pub async fn kafka_input_pending(pool: &PgPool, kafka: &Kafka) -> Result<usize, sqlx::Error> {
    let f = fold(&read_log(pool).await?);
    let changed: BTreeSet<(Uuid, String)> = f.price_changes.iter().cloned().collect();
    let inventories = kafka
        .inventories
        .lock()
        .unwrap()
        .iter()
        .filter(|(product, inventory)| f.inventories.get(product) != Some(inventory))
        .count();
    let prices = kafka
        .prices
        .lock()
        .unwrap()
        .iter()
        .filter(|p| !changed.contains(p))
        .count();
    Ok(inventories + prices)
}

/// Waits (at most `limit`) until every produced `inventories` /
/// `price-changes` message is in the log.
pub async fn wait_kafka_input_decided(pool: &PgPool, kafka: &Kafka, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let pending = kafka_input_pending(pool, kafka).await;
        if matches!(pending, Ok(0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka input not decided within {limit:?}: {pending:?} pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A log event.
pub struct Logged {
    pub position: i64,
    pub event_id: Uuid,
    pub event: CartEvent,
}

/// Reads the whole log.
pub async fn read_log(pool: &PgPool) -> Result<Vec<Logged>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT position, event_id, event_type, payload FROM dcb.events ORDER BY position",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let event_type: String = row.get("event_type");
            let payload: Vec<u8> = row.get("payload");
            Logged {
                position: row.get("position"),
                event_id: row.get("event_id"),
                event: CartEvent::decode(&event_type, &payload)
                    .unwrap_or_else(|e| panic!("event {event_type} does not decode: {e}")),
            }
        })
        .collect())
}

/// A fresh fold of the log: the read models, and the rule violations seen.
#[derive(Default, Debug)]
pub struct Fold {
    pub carts: BTreeSet<Uuid>,
    /// cart → item → (product, price, position)
    pub items: BTreeMap<Uuid, BTreeMap<Uuid, (Uuid, String, i64)>>,
    pub carts_with_products: BTreeSet<(Uuid, Uuid, Uuid)>,
    pub inventories: BTreeMap<Uuid, i64>,
    pub submitted: BTreeSet<Uuid>,
    pub published: BTreeMap<Uuid, u32>,
    pub publication_failed: BTreeSet<Uuid>,
    pub violations: Vec<String>,
    pub events: usize,
    /// (product, new price) of every `PriceChanged`.
    pub price_changes: Vec<(Uuid, String)>,
    /// Event id of every `PriceChanged` → (product, position).
    pub price_change_ids: HashMap<Uuid, (Uuid, i64)>,
}

/// What the cart's rules see of one cart (the oracle of the checks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CartState {
    pub exists: bool,
    pub submitted: bool,
    /// Its items in the order they were added.
    pub items: Vec<Uuid>,
}

impl CartState {
    /// The answer the cart's rules give to `kind` on `item`: `None` when
    /// the command is accepted, else the error code (in the order the spec
    /// checks the rules).
    pub fn rule(&self, kind: Kind, item: Option<Uuid>) -> Option<&'static str> {
        let has = |item: Option<Uuid>| item.is_some_and(|i| self.items.contains(&i));
        match kind {
            Kind::Add if self.submitted => Some("CartCannotBeAltered"),
            Kind::Add if self.items.len() >= 3 => Some("CartFull"),
            Kind::Add if has(item) => Some("ItemAlreadyInCart"),
            Kind::Remove if !self.exists => Some("CartDoesNotExist"),
            Kind::Remove if self.submitted => Some("CartCannotBeAltered"),
            Kind::Remove if !has(item) => Some("ItemNotInCart"),
            Kind::Clear if self.submitted => Some("CartCannotBeAltered"),
            Kind::Clear if !self.exists => Some("CartDoesNotExist"),
            Kind::Submit if !self.exists => Some("CartDoesNotExist"),
            Kind::Submit if self.items.is_empty() => Some("CannotSubmitEmptyCart"),
            Kind::Submit if self.submitted => Some("CannotSubmitCartTwice"),
            _ => None,
        }
    }
}

/// The cart an event belongs to, if it is a cart event.
fn cart_of(event: &CartEvent) -> Option<Uuid> {
    match event {
        CartEvent::CartCreated { cart_id }
        | CartEvent::CartItemAdded { cart_id, .. }
        | CartEvent::CartItemRemoved { cart_id, .. }
        | CartEvent::CartCleared { cart_id }
        | CartEvent::ItemArchived { cart_id, .. }
        | CartEvent::CartSubmitted { cart_id, .. } => Some(*cart_id),
        _ => None,
    }
}

/// Folds the log, checking every rule of the cart at every position: an
/// event must be one the rules allow on the state before it.
pub fn fold(log: &[Logged]) -> Fold {
    let mut f = Fold {
        events: log.len(),
        ..Fold::default()
    };
    let mut states: HashMap<Uuid, CartState> = HashMap::new();
    for Logged {
        position,
        event_id,
        event,
    } in log
    {
        let position = *position;
        let mut violation = |why: String| {
            f.violations
                .push(format!("position {position}: {why}: {event:?}"))
        };
        if let Some(cart) = cart_of(event) {
            let state = states.entry(cart).or_default();
            if state.submitted {
                violation(format!("an event after CartSubmitted of {cart}"));
            }
            match event {
                CartEvent::CartCreated { .. } if state.exists => {
                    violation("a second CartCreated".to_owned())
                }
                CartEvent::CartCreated { .. } => {}
                _ if !state.exists => violation("an event of a cart never created".to_owned()),
                CartEvent::CartItemAdded { item_id, .. } => {
                    if state.items.contains(item_id) {
                        violation("an item added twice".to_owned());
                    }
                    if state.items.len() >= 3 {
                        violation(format!("a fourth item ({} before)", state.items.len()));
                    }
                }
                CartEvent::CartItemRemoved { item_id, .. } if !state.items.contains(item_id) => {
                    violation("the removal of an item not in the cart".to_owned())
                }
                CartEvent::ItemArchived {
                    item_id,
                    product_id,
                    price_changed_event,
                    ..
                } => {
                    if !state.items.contains(item_id) {
                        violation("the archiving of an item not in the cart".to_owned());
                    }
                    match f.price_change_ids.get(price_changed_event) {
                        None => violation("archived for an unknown price change".to_owned()),
                        Some((product, _)) if product != product_id => {
                            violation("archived for another product's price change".to_owned())
                        }
                        Some((_, changed_at)) => {
                            let added_at = f
                                .items
                                .get(&cart)
                                .and_then(|items| items.get(item_id))
                                .map(|(_, _, at)| *at);
                            if added_at.is_some_and(|at| at > *changed_at) {
                                violation(
                                    "an item added after the price change archived".to_owned(),
                                );
                            }
                        }
                    }
                }
                CartEvent::CartSubmitted {
                    ordered_products,
                    total_price,
                    ..
                } => {
                    if state.items.is_empty() {
                        violation("an empty cart submitted".to_owned());
                    }
                    let expected: Vec<(Uuid, Uuid, String)> = state
                        .items
                        .iter()
                        .map(|item| {
                            let (product, price, _) = &f.items[&cart][item];
                            (*item, *product, price.clone())
                        })
                        .collect();
                    let ordered: Vec<(Uuid, Uuid, String)> = ordered_products
                        .iter()
                        .map(|p| (p.item_id, p.product_id, p.price.to_string()))
                        .collect();
                    if ordered != expected {
                        violation(format!(
                            "ordered products differ from the cart's items {expected:?}"
                        ));
                    }
                    let sum = ordered_products
                        .iter()
                        .try_fold(rust_decimal::Decimal::ZERO, |sum, p| {
                            sum.checked_add(p.price)
                        });
                    if sum != Some(*total_price) {
                        violation(format!("a total that is not the sum ({sum:?})"));
                    }
                }
                _ => {}
            }
            // The state after the event.
            match event {
                CartEvent::CartCreated { .. } => state.exists = true,
                CartEvent::CartItemAdded { item_id, .. } => state.items.push(*item_id),
                CartEvent::CartItemRemoved { item_id, .. }
                | CartEvent::ItemArchived { item_id, .. } => state.items.retain(|i| i != item_id),
                CartEvent::CartCleared { .. } => state.items.clear(),
                CartEvent::CartSubmitted { .. } => state.submitted = true,
                _ => {}
            }
        }
        match event {
            CartEvent::CartCreated { cart_id } => {
                f.carts.insert(*cart_id);
            }
            CartEvent::CartItemAdded {
                cart_id,
                item_id,
                product_id,
                price,
                ..
            } => {
                f.items
                    .entry(*cart_id)
                    .or_default()
                    .insert(*item_id, (*product_id, price.to_string(), position));
                f.carts_with_products
                    .insert((*cart_id, *item_id, *product_id));
            }
            CartEvent::CartItemRemoved { cart_id, item_id }
            | CartEvent::ItemArchived {
                cart_id, item_id, ..
            } => {
                if let Some(items) = f.items.get_mut(cart_id) {
                    items.remove(item_id);
                }
                f.carts_with_products
                    .retain(|(c, i, _)| !(c == cart_id && i == item_id));
            }
            CartEvent::CartCleared { cart_id } => {
                if let Some(items) = f.items.get_mut(cart_id) {
                    items.clear();
                }
                f.carts_with_products.retain(|(c, _, _)| c != cart_id);
            }
            CartEvent::CartSubmitted { cart_id, .. } => {
                f.submitted.insert(*cart_id);
                f.carts_with_products.retain(|(c, _, _)| c != cart_id);
            }
            CartEvent::CartPublished { cart_id } => {
                if !f.submitted.contains(cart_id) {
                    f.violations.push(format!(
                        "position {position}: CartPublished of {cart_id}, never submitted"
                    ));
                }
                *f.published.entry(*cart_id).or_default() += 1;
            }
            CartEvent::CartPublicationFailed { cart_id, .. } => {
                if !f.submitted.contains(cart_id) {
                    f.violations.push(format!(
                        "position {position}: CartPublicationFailed of {cart_id}, never submitted"
                    ));
                }
                f.publication_failed.insert(*cart_id);
            }
            CartEvent::InventoryChanged {
                product_id,
                inventory,
            } => {
                f.inventories.insert(*product_id, *inventory);
            }
            CartEvent::PriceChanged {
                product_id,
                new_price,
                ..
            } => {
                f.price_changes.push((*product_id, new_price.to_string()));
                f.price_change_ids
                    .insert(*event_id, (*product_id, position));
            }
        }
    }
    f
}

/// Every cart's states through the log: (position, state after the event at
/// that position), in order.
pub fn cart_histories(log: &[Logged]) -> HashMap<Uuid, Vec<(i64, CartState)>> {
    let mut histories: HashMap<Uuid, Vec<(i64, CartState)>> = HashMap::new();
    for Logged {
        position, event, ..
    } in log
    {
        let Some(cart) = cart_of(event) else {
            continue;
        };
        let history = histories.entry(cart).or_default();
        let mut state = history.last().map(|(_, s)| s.clone()).unwrap_or_default();
        match event {
            CartEvent::CartCreated { .. } => state.exists = true,
            CartEvent::CartItemAdded { item_id, .. } => state.items.push(*item_id),
            CartEvent::CartItemRemoved { item_id, .. }
            | CartEvent::ItemArchived { item_id, .. } => state.items.retain(|i| i != item_id),
            CartEvent::CartCleared { .. } => state.items.clear(),
            CartEvent::CartSubmitted { .. } => state.submitted = true,
            _ => {}
        }
        history.push((*position, state));
    }
    histories
}

/// The rejected commands (404 and 409 answers) that the log does not
/// justify, and the commands answered 503 `DatabaseUnavailable` ("nothing
/// was appended") whose item is in the log all the same. A rejection is justified when the rules give its code on a state
/// the decision could have read: the cart after some position `p` with
/// `seen_from <= p < first`, where `seen_from` is the last accepted command
/// on the cart answered before it was sent, and `first` the position of the
/// first command anywhere accepted after being sent once its answer came
/// (it could not have been seen). An Add or Remove that was rejected must
/// also have left no event of its item (the load never sends two Adds or two
/// Removes of one item).
pub fn unjustified_rejections(log: &[Logged], records: &[Record]) -> Vec<String> {
    let histories = cart_histories(log);
    let mut accepted: Vec<(Instant, i64)> = records
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| Some((r.sent, r.body["position"].as_i64()?)))
        .collect();
    accepted.sort();
    // After each send time, the lowest position accepted from there on.
    let mut lowest_after = vec![i64::MAX; accepted.len() + 1];
    for i in (0..accepted.len()).rev() {
        lowest_after[i] = lowest_after[i + 1].min(accepted[i].1);
    }
    let mut added: HashSet<(Uuid, Uuid)> = HashSet::new();
    let mut removed: HashSet<(Uuid, Uuid)> = HashSet::new();
    for Logged { event, .. } in log {
        match event {
            CartEvent::CartItemAdded {
                cart_id, item_id, ..
            } => {
                added.insert((*cart_id, *item_id));
            }
            CartEvent::CartItemRemoved { cart_id, item_id } => {
                removed.insert((*cart_id, *item_id));
            }
            _ => {}
        }
    }
    let empty = Vec::new();
    let mut unjustified = Vec::new();
    for r in records.iter().filter(|r| {
        r.status == 404
            || r.status == 409
            || (r.status == 503 && r.body["error"] == "DatabaseUnavailable")
    }) {
        let code = r.body["error"].as_str().unwrap_or_default();
        let left_a_trace = match (r.kind, r.item) {
            (Kind::Add, Some(item)) => added.contains(&(r.cart, item)),
            (Kind::Remove, Some(item)) => removed.contains(&(r.cart, item)),
            _ => false,
        };
        if left_a_trace {
            unjustified.push(format!("answered {code} but in the log: {r:?}"));
            continue;
        }
        if r.status == 503 || code == "ConcurrentModification" {
            // "Nothing was appended" (true, as checked above), or gave up
            // after its retries: no rule to justify.
            continue;
        }
        let first_unseen = lowest_after[accepted.partition_point(|(sent, _)| *sent <= r.answered)];
        let history = histories.get(&r.cart).unwrap_or(&empty);
        // The state at `seen_from`, then every state up to `first_unseen`.
        let start = history.partition_point(|(p, _)| *p <= r.seen_from);
        let at_seen_from = start
            .checked_sub(1)
            .map(|i| history[i].1.clone())
            .unwrap_or_default();
        let candidates = std::iter::once(&at_seen_from).chain(
            history[start..]
                .iter()
                .take_while(|(p, _)| *p < first_unseen)
                .map(|(_, s)| s),
        );
        let mut justified = false;
        for state in candidates {
            if state.rule(r.kind, r.item) == Some(code) {
                justified = true;
                break;
            }
        }
        if !justified {
            unjustified.push(format!(
                "rejected ({code}) though no state it could have read says so \
                 (seen from {}, before {first_unseen}): {r:?}",
                r.seen_from
            ));
        }
    }
    unjustified
}

/// What the read-model tables hold.
async fn read_models(pool: &PgPool) -> Result<Fold, sqlx::Error> {
    let mut f = Fold::default();
    for row in sqlx::query("SELECT cart_id FROM cart.carts")
        .fetch_all(pool)
        .await?
    {
        f.carts.insert(row.get("cart_id"));
    }
    for row in
        sqlx::query("SELECT cart_id, item_id, product_id, price, position FROM cart.cart_items")
            .fetch_all(pool)
            .await?
    {
        f.items.entry(row.get("cart_id")).or_default().insert(
            row.get("item_id"),
            (row.get("product_id"), row.get("price"), row.get("position")),
        );
    }
    for row in sqlx::query("SELECT cart_id, item_id, product_id FROM cart.carts_with_products")
        .fetch_all(pool)
        .await?
    {
        f.carts_with_products.insert((
            row.get("cart_id"),
            row.get("item_id"),
            row.get("product_id"),
        ));
    }
    for row in sqlx::query("SELECT product_id, inventory FROM cart.inventories")
        .fetch_all(pool)
        .await?
    {
        f.inventories
            .insert(row.get("product_id"), row.get("inventory"));
    }
    Ok(f)
}

/// Dead-letter records of the cart's consumer group.
pub async fn dead_messages(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dcb.kafka_dead_messages WHERE group_id = 'cart'")
        .fetch_one(pool)
        .await
}

/// A pool on the test's database (retrying while the server comes back).
pub async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(url)
        .expect("a pool")
}

/// What a run checks besides the log.
pub struct Expect<'a> {
    pub load: &'a Load,
    pub kafka: Option<&'a Kafka>,
    /// Malformed Kafka messages expected as dead records.
    pub dead: i64,
}

/// The outcome of [`converge`].
pub struct Converged {
    pub fold: Fold,
    pub after: Duration,
}

/// Why the state has not converged yet (empty: converged).
fn not_converged(f: &Fold, models: &Fold, expect: &Expect<'_>, dead: i64) -> Vec<String> {
    let mut why = Vec::new();
    let open_items: BTreeMap<_, _> = f
        .items
        .iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(c, i)| (*c, i.clone()))
        .collect();
    let model_items: BTreeMap<_, _> = models
        .items
        .iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(c, i)| (*c, i.clone()))
        .collect();
    if f.carts != models.carts {
        why.push(format!(
            "cart.carts differs from the fold ({} vs {})",
            models.carts.len(),
            f.carts.len()
        ));
    }
    if open_items != model_items {
        why.push("cart.cart_items differs from the fold".to_owned());
    }
    if f.carts_with_products != models.carts_with_products {
        why.push("cart.carts_with_products differs from the fold".to_owned());
    }
    if f.inventories != models.inventories {
        why.push(format!(
            "cart.inventories differs from the fold ({} vs {})",
            models.inventories.len(),
            f.inventories.len()
        ));
    }
    if let Some(kafka) = expect.kafka {
        let published = kafka.published.lock().unwrap().clone();
        for cart in &f.submitted {
            if !f.published.contains_key(cart) && !f.publication_failed.contains(cart) {
                why.push(format!("cart {cart} has no CartPublished yet"));
            }
            if !published.contains_key(cart) {
                why.push(format!("cart {cart} is not on published-carts yet"));
            }
        }
        for (product, inventory) in kafka.inventories.lock().unwrap().iter() {
            if f.inventories.get(product) != Some(inventory) {
                why.push(format!("inventory of {product} is not in the log yet"));
            }
        }
        let changed: BTreeSet<(Uuid, String)> = f.price_changes.iter().cloned().collect();
        for (product, price) in kafka.prices.lock().unwrap().iter() {
            if !changed.contains(&(*product, price.clone())) {
                why.push(format!("price change of {product} is not in the log yet"));
            }
        }
        if dead < expect.dead {
            why.push(format!("{dead} of {} dead records", expect.dead));
        }
    }
    why
}

/// Polls the log, the read models, the topic and the dead records until
/// they agree (at most [`CONVERGE`]); the fold and how long it took.
pub async fn converge(
    pool: &PgPool,
    expect: &Expect<'_>,
    since: Instant,
    limit: Duration,
) -> Converged {
    let deadline = Instant::now() + limit;
    let mut last_report = Instant::now();
    loop {
        let attempt = async {
            let log = read_log(pool).await?;
            let models = read_models(pool).await?;
            let dead = if expect.kafka.is_some() {
                dead_messages(pool).await?
            } else {
                0
            };
            Ok::<_, sqlx::Error>((fold(&log), models, dead))
        }
        .await;
        let why = match &attempt {
            Ok((f, models, dead)) => not_converged(f, models, expect, *dead),
            Err(e) => vec![format!("database: {e}")],
        };
        if why.is_empty() {
            let (fold, _, _) = attempt.unwrap();
            return Converged {
                fold,
                after: since.elapsed(),
            };
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "converging ({:.0}s after the last fault): {} reasons, e.g. {:?}",
                since.elapsed().as_secs_f64(),
                why.len(),
                &why[..why.len().min(3)]
            );
        }
        assert!(
            Instant::now() < deadline,
            "not converged within {limit:?} ({} reasons): {:?}",
            why.len(),
            &why[..why.len().min(8)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every invariant; panics on the first broken one.
pub async fn check(pool: &PgPool, expect: &Expect<'_>, fold: &Fold) {
    assert!(
        fold.violations.is_empty(),
        "rules broken in the log: {:#?}",
        fold.violations
    );
    let log = read_log(pool).await.expect("the log");
    let mut adds: HashMap<(Uuid, Uuid), Vec<i64>> = HashMap::new();
    let mut removes: HashMap<(Uuid, Uuid), Vec<i64>> = HashMap::new();
    let mut submits: HashMap<Uuid, Vec<i64>> = HashMap::new();
    let mut by_position: HashMap<i64, &CartEvent> = HashMap::new();
    let mut price_changes: HashMap<(Uuid, String), u32> = HashMap::new();
    let mut inventories: HashMap<(Uuid, i64), u32> = HashMap::new();
    for Logged {
        position, event, ..
    } in &log
    {
        by_position.insert(*position, event);
        match event {
            CartEvent::CartItemAdded {
                cart_id, item_id, ..
            } => adds
                .entry((*cart_id, *item_id))
                .or_default()
                .push(*position),
            CartEvent::CartItemRemoved { cart_id, item_id } => removes
                .entry((*cart_id, *item_id))
                .or_default()
                .push(*position),
            CartEvent::CartSubmitted { cart_id, .. } => {
                submits.entry(*cart_id).or_default().push(*position)
            }
            CartEvent::PriceChanged {
                product_id,
                new_price,
                ..
            } => {
                *price_changes
                    .entry((*product_id, new_price.to_string()))
                    .or_default() += 1
            }
            CartEvent::InventoryChanged {
                product_id,
                inventory,
            } => *inventories.entry((*product_id, *inventory)).or_default() += 1,
            _ => {}
        }
    }
    let records = expect.load.records.lock().unwrap().clone();
    for r in records.iter().filter(|r| r.status == 200) {
        let position = r.body["position"].as_i64().unwrap_or_else(|| {
            panic!("a 200 without position: {r:?}");
        });
        let once = |positions: Option<&Vec<i64>>| positions.is_some_and(|p| p == &vec![position]);
        let ok = match r.kind {
            Kind::Add => once(adds.get(&(r.cart, r.item.unwrap()))),
            Kind::Remove => once(removes.get(&(r.cart, r.item.unwrap()))),
            Kind::Submit => once(submits.get(&r.cart)),
            Kind::Clear => matches!(
                by_position.get(&position),
                Some(CartEvent::CartCleared { cart_id }) if *cart_id == r.cart
            ),
            Kind::ChangePrice => matches!(
                by_position.get(&position),
                Some(CartEvent::PriceChanged { product_id, .. }) if *product_id == r.cart
            ),
        };
        assert!(ok, "a 200 command is not in the log exactly once: {r:?}");
    }
    let unjustified = unjustified_rejections(&log, &records);
    assert!(
        unjustified.is_empty(),
        "{} of {} rejections and 503s are not justified by the log: {:#?}",
        unjustified.len(),
        records
            .iter()
            .filter(|r| r.status == 404 || r.status == 409 || r.status == 503)
            .count(),
        &unjustified[..unjustified.len().min(8)]
    );
    for (cart, n) in &fold.published {
        assert_eq!(*n, 1, "CartPublished of {cart} is recorded {n} times");
    }
    if let Some(kafka) = expect.kafka {
        assert!(
            fold.publication_failed.is_empty(),
            "CartPublicationFailed within the one-hour deadline: {:?}",
            fold.publication_failed
        );
        for cart in &fold.submitted {
            assert!(
                kafka.published.lock().unwrap().contains_key(cart),
                "submitted cart {cart} is not on published-carts"
            );
            assert!(
                fold.published.contains_key(cart),
                "submitted cart {cart} has no CartPublished"
            );
        }
        for (product, inventory) in kafka.inventories.lock().unwrap().iter() {
            let n = inventories
                .get(&(*product, *inventory))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                n, 1,
                "inventories message {product}={inventory} reflected {n} times"
            );
        }
        for (product, price) in kafka.prices.lock().unwrap().iter() {
            let n = price_changes
                .get(&(*product, price.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                n, 1,
                "price-changes message {product}→{price} reflected {n} times"
            );
        }
        let dead = dead_messages(pool).await.expect("dead records");
        assert_eq!(dead, expect.dead, "dead records of malformed messages");
    }
}

/// The summary every test prints.
pub struct Summary<'a> {
    pub test: &'a str,
    pub load: &'a Load,
    pub extra_sent: usize,
    pub faults: u32,
    pub fold: &'a Fold,
    pub kafka: Option<&'a Kafka>,
    pub converged_after: Duration,
}

impl Summary<'_> {
    pub fn print(&self) {
        let (sent, accepted, rejected, other) = self.load.counts();
        let (inventories, prices, malformed) = self.kafka.map_or((0, 0, 0), |k| {
            (
                k.inventories.lock().unwrap().len(),
                k.prices.lock().unwrap().len(),
                k.malformed.load(Ordering::Relaxed),
            )
        });
        let checked = self
            .load
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == 404 || r.status == 409)
            .count();
        let unavailable = |code: &str| {
            self.load
                .records
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.status == 503 && r.body["error"] == code)
                .count()
        };
        let (not_appended, unknown) = (
            unavailable("DatabaseUnavailable"),
            unavailable("OutcomeUnknown"),
        );
        println!(
            "SUMMARY {}: requests sent {} (+{} malformed), accepted {accepted}, rejected by rule \
             {rejected}, other/no answer {other} (503: {not_appended} not appended, checked \
             against the log; {unknown} outcome unknown); {checked} rejections (404/409) \
             justified by the log; kafka produced {inventories} inventories, \
             {prices} price-changes, {malformed} malformed; faults injected {}; events {}; \
             carts submitted {}; duplicates seen on published-carts {}; converged {:.1}s after \
             the last fault",
            self.test,
            sent,
            self.extra_sent,
            self.faults,
            self.fold.events,
            self.fold.submitted.len(),
            self.kafka.map_or(0, Kafka::duplicates),
            self.converged_after.as_secs_f64()
        );
    }
}
