//! `GET /metrics` against a real store with listeners, a work queue and the
//! Kafka tables: every metric name, with values that follow the state (a
//! held-back listener's lag is the whole log, and falls to 0 once it
//! catches up; a dead job counts; a decision conflict counts; appends fill
//! the histograms).
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_console::metrics;
use dcb_core::{
    BoxError, Decision, DecisionMaker, Event, EventStore, Listener, Sequenced, StateMutate,
    StateQuery,
};
use dcb_postgres::queue::{JobContext, JobError, JobState, NewJob, Processor};
use dcb_postgres::testing::TestDatabase;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Event, Debug, Clone, PartialEq)]
enum BankEvent {
    Opened {
        #[id]
        account: String,
    },
    Deposited {
        #[id]
        account: String,
        amount: u64,
    },
}

#[derive(StateQuery, Clone, Debug)]
#[state_query(BankEvent)]
struct Account {
    #[id]
    account: String,
    deposits: u64,
}

impl StateMutate for Account {
    fn mutate(&mut self, event: BankEvent) {
        if let BankEvent::Deposited { .. } = event {
            self.deposits += 1;
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("too many deposits")]
struct TooMany;

struct Deposit {
    account: String,
}

impl Decision for Deposit {
    type Event = BankEvent;
    type StateQuery = Account;
    type Error = TooMany;

    fn state_query(&self) -> Account {
        Account {
            account: self.account.clone(),
            deposits: 0,
        }
    }

    fn process(&self, state: &Account) -> Result<Vec<BankEvent>, TooMany> {
        if state.deposits >= 100 {
            return Err(TooMany);
        }
        Ok(vec![BankEvent::Deposited {
            account: self.account.clone(),
            amount: 1,
        }])
    }
}

/// Handles nothing until its gate opens.
struct Gated {
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Listener for Gated {
    type Event = BankEvent;

    fn id(&self) -> &str {
        "gated"
    }

    async fn handle(&self, _event: Sequenced<BankEvent>) -> Result<(), BoxError> {
        let mut open = self.open.clone();
        open.wait_for(|o| *o).await?;
        Ok(())
    }
}

/// Fails every job for good.
struct Broken;

#[async_trait]
impl Processor for Broken {
    const KIND: &'static str = "broken";
    type Payload = serde_json::Value;

    async fn run(&self, _: &serde_json::Value, _: &JobContext) -> Result<(), JobError> {
        Err(JobError::permanent("this job cannot be done"))
    }
}

/// `name{labels} value` lines of a Prometheus text page.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(client: &reqwest::Client, url: &str) -> (String, HashMap<String, f64>) {
    let response = client.get(url).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let parsed = samples(&text);
    (text, parsed)
}

/// Scrapes until `done` holds (at most [`WAIT`]).
async fn scrape_until(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let until = Instant::now() + WAIT;
    loop {
        let (text, samples) = scrape(client, url).await;
        if done(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < until,
            "{what}: not within {WAIT:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_store_its_listeners_and_its_queue() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let router = metrics::router(store.clone());
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", server.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(server, router).await });
    let client = reqwest::Client::new();

    // An account opened behind the decision maker's back: the maker guesses
    // the boundary is new, the append fails its condition (a conflict),
    // and the maker reads and decides again.
    store
        .append(
            vec![BankEvent::Opened {
                account: "a1".into(),
            }
            .to_record()
            .unwrap()],
            None,
        )
        .await
        .unwrap();
    let maker = DecisionMaker::new(store.clone());
    let decided = maker
        .make(Deposit {
            account: "a1".into(),
        })
        .await
        .unwrap();
    assert_eq!(decided.attempts, 2, "the first attempt conflicted");
    for _ in 0..3 {
        maker
            .make(Deposit {
                account: "a1".into(),
            })
            .await
            .unwrap();
    }
    let head = store.head().await.unwrap().unwrap().0;
    assert_eq!(head, 5);

    // A listener held at its first event: its lag is the whole log.
    let (gate, open) = watch::channel(false);
    let listeners = store
        .listeners()
        .at_least_once(Gated { open })
        .start()
        .await
        .unwrap();
    // A job that dies.
    let queue = store.queue();
    queue.migrate().await.unwrap();
    let job = NewJob::for_processor::<Broken>(&serde_json::json!({}))
        .unwrap()
        .queue("work")
        .max_attempts(1);
    let job_id = job.id();
    queue.enqueue(store.pool(), &job).await.unwrap();
    let workers = store
        .workers()
        .queues(["work"])
        .register(Broken)
        .start()
        .await
        .unwrap();
    // The Kafka tables, with one dead record and one relay's checkpoint.
    dcb_postgres::migrations::run(
        store.pool(),
        "dcb",
        dcb_kafka::sql::COMPONENT,
        dcb_kafka::sql::STEPS,
    )
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO dcb.kafka_dead_messages (group_id, topic, partition, \"offset\", kind, \
         reason, record_key) VALUES ('g', 'payments', 0, 7, 'undecodable', 'not JSON', 'k')",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO dcb.kafka_relays (relay_id, position) VALUES ('to-kafka', 2)")
        .execute(store.pool())
        .await
        .unwrap();

    let admin = store.queue_admin();
    let until = Instant::now() + WAIT;
    while admin.job(job_id).await.unwrap().unwrap().state != JobState::Dead {
        assert!(Instant::now() < until, "the job never died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = scrape_until(&client, &url, "the held listener's lag", |s| {
        s.get("dcb_listener_lag_events{listener=\"gated\"}") == Some(&5.0)
            && s.get("dcb_listener_lag_seconds{listener=\"gated\"}")
                .is_some_and(|secs| *secs > 0.0)
    })
    .await;
    let get = |name: &str| {
        *held
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from {held:#?}"))
    };
    assert_eq!(get("dcb_head_position"), 5.0);
    assert_eq!(get("dcb_listener_parked_events{listener=\"gated\"}"), 0.0);
    assert_eq!(get("dcb_queue_jobs{queue=\"work\",state=\"dead\"}"), 1.0);
    assert_eq!(get("dcb_queue_jobs{queue=\"work\",state=\"ready\"}"), 0.0);
    assert_eq!(
        get("dcb_queue_oldest_ready_age_seconds{queue=\"work\"}"),
        0.0
    );
    assert_eq!(
        get("dcb_kafka_dead_messages_total{topic=\"payments\"}"),
        1.0
    );
    assert_eq!(get("dcb_relay_lag_events{relay=\"to-kafka\"}"), 3.0);
    // Other tests of this binary may add to the process-wide metrics.
    assert!(get("dcb_decision_conflicts_total") >= 1.0);
    assert!(get("dcb_decisions_total{outcome=\"appended\"}") >= 4.0);
    assert!(get("dcb_append_duration_seconds_count") >= 5.0);
    assert!(get("dcb_append_duration_seconds_sum") > 0.0);
    assert!(get("dcb_append_duration_seconds_bucket{le=\"+Inf\"}") >= 5.0);
    assert!(get("dcb_append_batch_size_count") >= 1.0);
    assert!(get("dcb_append_batch_size_sum") >= get("dcb_append_batch_size_count"));
    assert!(get("dcb_append_requests_total") >= 5.0);
    assert!(get("dcb_append_batches_total") >= 1.0);
    assert_eq!(get("dcb_append_refused_total"), 0.0);
    for name in metrics::NAMES {
        assert!(
            held.keys().any(|k| k.starts_with(name)),
            "{name} missing from {held:#?}"
        );
    }

    // Once the gate opens, the listener catches up and its lag falls to 0.
    gate.send_replace(true);
    scrape_until(&client, &url, "the listener catching up", |s| {
        s.get("dcb_listener_lag_events{listener=\"gated\"}") == Some(&0.0)
            && s.get("dcb_listener_lag_seconds{listener=\"gated\"}") == Some(&0.0)
    })
    .await;

    workers.shutdown(Duration::from_secs(5)).await;
    listeners.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_listeners_queue_or_kafka_shows_what_it_has() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let text = metrics::render(&store).await.unwrap();
    let samples = samples(&text);
    assert_eq!(samples.get("dcb_head_position"), Some(&0.0), "{text}");
    assert!(!text.contains("dcb_queue_jobs"), "{text}");
    assert!(!text.contains("dcb_listener_lag_events"), "{text}");
    // A database that is gone fails the scrape instead of showing stale
    // numbers.
    store.pool().close().await;
    let error = metrics::render(&store).await.unwrap_err().to_string();
    assert!(error.contains("cannot read"), "{error}");
    db.cleanup().await;
}
