//! The binary's command line: `cart` without a subcommand serves with the
//! options `serve` reads from the environment (`PORT`, `HOST`,
//! `CART_PUBLISH_*`), not with built-in defaults.

use std::fs::File;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcb_postgres::testing::TestDatabase;

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// `cart` with no argument, no Kafka, `env` set.
fn plain_cart(env: &[(&str, String)], log: &std::path::Path) -> Running {
    let out = File::create(log).expect("a log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cart"));
    command
        .env_remove("KAFKA_BROKERS")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("a log file"))
        .stderr(out);
    for (key, value) in env {
        command.env(key, value);
    }
    Running(command.spawn().expect("the cart binary starts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_without_a_subcommand_serves_with_the_environments_options() {
    let db = TestDatabase::create().await;
    let port = free_port();
    let log = std::env::temp_dir().join(format!("cart-cli-{port}.log"));
    let mut server = plain_cart(
        &[
            ("DATABASE_URL", db.url().to_owned()),
            ("PORT", port.to_string()),
            ("HOST", "127.0.0.1".to_owned()),
            ("CART_PUBLISH_DEADLINE_SECS", "1234".to_owned()),
            ("CART_PUBLISH_TIMEOUT_MS", "2345".to_owned()),
            ("CART_PUBLISH_RETRY_MIN_MS", "345".to_owned()),
            ("CART_PUBLISH_RETRY_MAX_MS", "4567".to_owned()),
        ],
        &log,
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let healthy = client
            .get(format!("http://127.0.0.1:{port}/healthcheck"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy {
            break;
        }
        let exited = server.0.try_wait().expect("try_wait");
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(exited.is_none(), "cart exited ({exited:?}):\n{output}");
        assert!(
            Instant::now() < deadline,
            "cart does not answer on PORT={port} within 60 s:\n{output}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = without_colours(&std::fs::read_to_string(&log).unwrap_or_default());
    let settings = output
        .lines()
        .find(|l| l.contains("publication settings"))
        .unwrap_or_else(|| panic!("no publication settings in the log:\n{output}"));
    for expected in [
        "publish_deadline_secs=1234",
        "publish_timeout_ms=2345",
        "publish_retry_min_ms=345",
        "publish_retry_max_ms=4567",
    ] {
        assert!(settings.contains(expected), "{expected} in {settings}");
    }
    drop(server);
    let _ = std::fs::remove_file(&log);
    db.cleanup().await;
}

#[test]
fn cart_without_a_subcommand_refuses_a_bad_value_in_the_environment() {
    let log = std::env::temp_dir().join(format!("cart-cli-bad-{}.log", free_port()));
    let mut cart = plain_cart(
        &[
            ("CART_PUBLISH_DEADLINE_SECS", "soon".to_owned()),
            // Never reached: the value is refused before anything starts.
            (
                "DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none".to_owned(),
            ),
        ],
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = cart.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "cart did not refuse CART_PUBLISH_DEADLINE_SECS=soon within 30 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("invalid value 'soon' for '--publish-deadline-secs"),
        "{output}"
    );
    let _ = std::fs::remove_file(&log);
}
