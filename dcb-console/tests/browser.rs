//! The console in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver` packages), driven over WebDriver, opens the console
//! of a running cart; it finds an event it appended in the explorer, sees a
//! listener's lag rise and fall back to 0, and redrives a dead job with the
//! button. Each step leaves a screenshot in `target/console-screenshots/`.
//!
//! Needs PostgreSQL (DATABASE_URL, or `scripts/postgres.sh start`) and
//! `/usr/bin/chromium` with `/usr/bin/chromedriver` (`apt-get install -y
//! chromium chromium-driver`; `scripts/test.sh` installs them).

mod support;

use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dcb_postgres::queue::JobState;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt as _;
use serde_json::json;
use support::*;
use uuid::Uuid;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium under chromedriver, with a fresh profile; both go when it is
/// dropped.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    profile: PathBuf,
    shots: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "the browser test needs {binary}: install Debian's packages with \
                 `apt-get install -y chromium chromium-driver` (scripts/test.sh does it)"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let webdriver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("chromedriver ready", || async {
            match http.get(format!("{webdriver}/status")).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let profile = std::env::temp_dir().join(format!(
            "dcb-console-chromium-{}-{:x}",
            std::process::id(),
            fastrand_u64()
        ));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,900",
                ]
            }
        });
        let capabilities = match capabilities {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .expect("a Chromium session");
        // target/console-screenshots, beside the binaries of this build.
        let shots = Path::new(env!("CARGO_BIN_EXE_dcb"))
            .ancestors()
            .nth(2)
            .expect("the target directory")
            .join("console-screenshots");
        std::fs::create_dir_all(&shots).expect("the screenshot directory");
        Browser {
            client,
            _driver: driver,
            profile,
            shots,
        }
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.url().await),
        }
    }

    /// Waits until the browser is on a page whose address contains `part`
    /// (a click that navigates returns before the new page is there).
    async fn wait_for_url(&self, part: &str) {
        eventually(&format!("a page at …{part}…"), || async {
            let url = self.url().await;
            match url.contains(part) {
                true => Ok(()),
                false => Err(url),
            }
        })
        .await;
    }

    async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Reloads the page until `probe` finds what it wants on it.
    async fn reload_until<T>(&self, what: &str, probe: impl AsyncProbe<T>) -> T {
        let deadline = Instant::now() + EVENTUALLY;
        loop {
            match probe.check(self).await {
                Ok(value) => return value,
                Err(last) if Instant::now() >= deadline => {
                    self.shot(&format!("failed-{}", what.replace(' ', "-")))
                        .await;
                    panic!("{what}: not within {EVENTUALLY:?}; last seen: {last}")
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    self.client.refresh().await.expect("reload");
                }
            }
        }
    }

    async fn shot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn fastrand_u64() -> u64 {
    Uuid::new_v4().as_u128() as u64
}

/// A check of the page in hand.
trait AsyncProbe<T> {
    async fn check(&self, browser: &Browser) -> Result<T, String>;
}

/// The text of the first element matching a selector, checked by a
/// predicate.
struct TextOf<'a, F: Fn(&str) -> bool>(&'a str, F);

impl<F: Fn(&str) -> bool> AsyncProbe<String> for TextOf<'_, F> {
    async fn check(&self, browser: &Browser) -> Result<String, String> {
        let element = browser
            .client
            .find(Locator::Css(self.0))
            .await
            .map_err(|e| format!("no {}: {e}", self.0))?;
        let text = element.text().await.map_err(|e| e.to_string())?;
        if (self.1)(&text) {
            Ok(text)
        } else {
            Err(format!("{}: {text:?}", self.0))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_finds_an_event_sees_a_lag_fall_and_redrives_a_dead_job() {
    let browser = Browser::start().await;
    // Chromium quits with its session, also when the scenario fails.
    let outcome = AssertUnwindSafe(operator_scenario(&browser))
        .catch_unwind()
        .await;
    browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn operator_scenario(browser: &Browser) {
    let cart = start_cart(Duration::from_millis(500)).await;
    let console = format!("{}/console", cart.base);

    // The overview.
    browser.goto(&console).await;
    let title = browser.find("h1").await.text().await.unwrap();
    assert_eq!(title, "Overview");
    browser
        .reload_until(
            "the overview lists cart-items-db",
            TextOf("tr[data-listener='cart-items-db']", |t| t.contains("idle")),
        )
        .await;
    browser.shot("01-overview").await;

    // The explorer finds the event the cart appended, and shows its
    // payload as text, however hostile.
    cart.add_item(Uuid::new_v4(), "someone else's cart").await;
    let id = Uuid::new_v4();
    let description = "<script>window.pwned = 1</script> a lamp";
    let position = cart.add_item(id, description).await;
    browser.goto(&format!("{console}/events")).await;
    browser
        .find("form.filters input[name='tag']")
        .await
        .send_keys(&format!("cart_id:{id}"))
        .await
        .unwrap();
    browser
        .find("form.filters button[type='submit']")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_for_url("tag=cart_id").await;
    let row = browser
        .find(&format!("#events tr[data-position='{position}']"))
        .await;
    let cells = row.find_all(Locator::Css("td")).await.unwrap();
    assert_eq!(cells[2].text().await.unwrap(), "CartItemAdded");
    let rows = browser
        .client
        .find_all(Locator::Css("#events tr[data-position]"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "CartCreated and CartItemAdded of this cart");
    browser.shot("02-explorer").await;
    row.find(Locator::Css("td a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_url(&format!("/events/{position}")).await;
    let payload = browser.find("#payload").await.text().await.unwrap();
    assert!(
        payload.contains(&format!("\"description\": \"{description}\"")),
        "{payload}"
    );
    let page = browser
        .client
        .execute(
            "return [document.querySelectorAll('script').length, typeof window.pwned];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(page, json!([0, "undefined"]), "the payload ran as a script");
    browser.shot("03-event").await;

    // A listener falls behind (its read model's tables are locked by the
    // test) and the listeners page shows by how much; then it catches up.
    cart.settle().await;
    let mut lock = cart.db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE cart.carts, cart.cart_items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let settled = cart.head().await;
    let other = Uuid::new_v4();
    cart.add_item(other, "one").await;
    let head = cart.add_item(other, "two").await;
    let behind = (head - settled).to_string();
    browser.goto(&format!("{console}/listeners")).await;
    let lag_cell = "tr[data-listener='cart-items-db'] td.lag";
    browser
        .reload_until(
            "cart-items-db shows its lag",
            TextOf(lag_cell, |t| t == behind),
        )
        .await;
    browser.shot("04-listener-behind").await;
    lock.rollback().await.unwrap();
    browser
        .reload_until(
            "cart-items-db's lag falls to 0",
            TextOf(lag_cell, |t| t == "0"),
        )
        .await;
    browser.shot("05-listener-caught-up").await;

    // A publication that keeps failing dies; the operator redrives it with
    // the button once the broker is back.
    cart.publisher.fail(true);
    cart.submit(id).await;
    let job = cart.wait_for_job(JobState::Dead).await;
    cart.publisher.fail(false);
    browser.goto(&format!("{console}/queue?state=dead")).await;
    let row = browser
        .find(&format!("#jobs tr[data-job='{}']", job.id))
        .await;
    browser.shot("06-dead-job").await;
    row.find(Locator::Css("button[name='redrive']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_url(&format!("/queue/jobs/{}?flash=", job.id))
        .await;
    assert!(browser
        .find(".flash")
        .await
        .text()
        .await
        .unwrap()
        .contains("redriven"));
    browser
        .reload_until(
            "the redriven job succeeds",
            TextOf("#job-state", |t| t == "succeeded"),
        )
        .await;
    browser.shot("07-job-redriven").await;
    let published = cart.publisher.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].cart.cart_id, id);
    assert_eq!(
        cart.publish_jobs().await[0].state,
        JobState::Succeeded,
        "the job the button redrove"
    );

    cart.stop().await;
}
