//! Crash and restart: a child process appends batches in a loop and is
//! SIGKILLed at a random moment, restarted, killed again. Afterwards the log
//! has no gaps, the head equals the last position, every batch is complete
//! or absent, and every append the child reported as committed is there.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dcb_core::{Query, ReadOptions};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use dcb_tests::read::read_all;

struct Run {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

fn start(url: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_appender"))
        // The name lets the test wait for the killed child's server
        // processes: a COMMIT already sent completes after the kill.
        .env("DATABASE_URL", with_application_name(url))
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crash_appender");
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) => sink.lock().unwrap().push(line),
                Err(_) => break,
            }
        }
    });
    Run {
        child,
        lines,
        reader,
    }
}

fn with_application_name(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name=crash_appender")
}

/// Lets the child commit a little, then kills it at a random moment.
fn kill_at_random(mut run: Run) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while run
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("OK"))
        .count()
        < 20
    {
        assert!(
            Instant::now() < deadline,
            "the child committed nothing within 30 s"
        );
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "the child exited early"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..400)));
    run.child.kill().expect("SIGKILL the child"); // SIGKILL on Unix
    run.child.wait().unwrap();
    run.reader.join().unwrap();
    let lines = run.lines.lock().unwrap().clone();
    lines
}

struct Reported {
    batch: String,
    first: u64,
    last: u64,
    ids: Vec<String>,
}

fn parse(lines: &[String]) -> Vec<Reported> {
    lines
        .iter()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            if parts.next()? != "OK" {
                return None;
            }
            let batch = parts.next()?.to_string();
            let _size = parts.next()?;
            let first = parts.next()?.parse().ok()?;
            let last = parts.next()?.parse().ok()?;
            let ids = parts.next()?.split(',').map(str::to_string).collect();
            Some(Reported {
                batch,
                first,
                last,
                ids,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_appenders_leave_a_gapless_log_of_whole_batches() {
    let db = TestDatabase::create().await;
    let url = db.url().to_string();
    let mut lines = tokio::task::spawn_blocking(move || {
        let mut lines = kill_at_random(start(&url));
        lines.extend(kill_at_random(start(&url)));
        lines
    })
    .await
    .unwrap();
    lines.retain(|l| !l.is_empty());
    // The killed child's server processes finish what they were doing (a
    // COMMIT in flight completes) and exit; wait for that before checking.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'crash_appender' AND datname = current_database()",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed child's sessions linger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reported = parse(&lines);
    let conflicts = lines.iter().filter(|l| l.starts_with("CONFLICT")).count();

    let store = PgEventStore::connect(db.url()).await.unwrap();
    let (head, events) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    let head = head.expect("something was appended").0;
    // No gaps; the head is the last position.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position.0, i as u64 + 1, "gap in the log");
    }
    assert_eq!(events.len() as u64, head, "head equals the last position");
    let max: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM dcb.events")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(max, Some(head as i64));

    // Every batch complete (size tag) and contiguous, or absent.
    let mut batches: HashMap<String, (usize, Vec<u64>)> = HashMap::new();
    for e in &events {
        let tag = |key: &str| {
            e.tags()
                .iter()
                .find(|t| t.key() == key)
                .map(|t| t.value().to_string())
                .unwrap_or_else(|| panic!("event {} lacks a {key} tag", e.position))
        };
        let size: usize = tag("size").parse().unwrap();
        let entry = batches.entry(tag("batch")).or_insert((size, Vec::new()));
        entry.1.push(e.position.0);
    }
    for (batch, (size, positions)) in &batches {
        assert_eq!(
            positions.len(),
            *size,
            "batch {batch} is incomplete: {positions:?}"
        );
        assert!(
            positions.windows(2).all(|w| w[1] == w[0] + 1),
            "batch {batch} is not contiguous: {positions:?}"
        );
    }

    // Every reported append is there, where it was reported, with its ids.
    let by_position: HashMap<u64, &dcb_core::SequencedEvent> =
        events.iter().map(|e| (e.position.0, e)).collect();
    for r in &reported {
        for (offset, position) in (r.first..=r.last).enumerate() {
            let event = by_position
                .get(&position)
                .unwrap_or_else(|| panic!("reported batch {} lost at {position}", r.batch));
            assert_eq!(event.metadata().event_id.to_string(), r.ids[offset]);
            assert!(event
                .tags()
                .iter()
                .any(|t| t.key() == "batch" && t.value() == r.batch));
        }
    }
    eprintln!(
        "two killed runs: {} reported appends ({conflicts} conflicts), {} batches and {head} events \
         stored, {} committed but not reported before the kill",
        reported.len(),
        batches.len(),
        batches.len() - reported.len()
    );
    store.shutdown().await;
    db.cleanup().await;
}
