//! The web console over HTTP: the cart serves it at `/console`; values are
//! escaped; actions are POSTs that other sites' pages cannot send; a
//! console on a non-loopback address needs a token, and then nothing is
//! served or done without it.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use dcb_console::{Console, ConsoleError};
use dcb_postgres::queue::JobState;
use support::*;
use uuid::Uuid;

const HOUR: Duration = Duration::from_secs(3600);
const TOKEN: &str = "a-token-long-enough-for-the-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cart_answers_console_with_the_overview_and_every_page() {
    let cart = start_cart(HOUR).await;
    let id = Uuid::new_v4();
    let position = cart.add_item(id, "a lamp").await;
    cart.settle().await;

    let (status, page) = cart.get("/console").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<h1>Overview</h1>"), "{page}");
    for name in CART_LISTENERS {
        assert!(
            page.contains(&format!("data-listener=\"{name}\"")),
            "{page}"
        );
    }
    for path in [
        "/console/events",
        "/console/listeners",
        "/console/listeners/cart-items-db",
        "/console/queue",
        "/console/queue?state=dead",
        "/console/kafka",
        &format!("/console/events/{position}"),
        &format!("/console/events?tag=cart_id:{id}"),
    ] {
        let (status, page) = cart.get(path).await;
        assert_eq!(status, 200, "{path}: {page}");
        assert!(page.contains("dcb console"), "{path}");
    }
    // Links are made under the mount point.
    let (_, page) = cart.get("/console/listeners").await;
    assert!(page.contains("href=\"/console/listeners/cart-items-db\""));
    for (path, code) in [
        ("/console/events/999999", 404),
        ("/console/events/x", 400),
        ("/console/listeners/nope", 404),
        ("/console/queue/jobs/nope", 400),
        ("/console/nope", 404),
        ("/console/events?tag=nocolon", 200),
    ] {
        assert_eq!(cart.get(path).await.0, code, "{path}");
    }
    // The rest of the cart is untouched.
    assert_eq!(cart.get("/healthcheck").await.0, 200);
    assert_eq!(cart.get("/metrics").await.0, 200);
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_value_is_escaped() {
    let cart = start_cart(HOUR).await;
    let id = Uuid::new_v4();
    let hostile = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"q\"";
    let position = cart.add_item(id, hostile).await;
    for path in [
        format!("/console/events?tag=cart_id:{id}"),
        format!("/console/events/{position}"),
        // Echoed form values, too.
        "/console/events?type=%3Cscript%3Ealert(1)%3C/script%3E".to_owned(),
        "/console/queue?queue=%3Cscript%3E".to_owned(),
        "/console/?flash=%3Cscript%3Ealert(1)%3C/script%3E".to_owned(),
    ] {
        let (status, page) = cart.get(&path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!page.contains("<script"), "{path} renders a script: {page}");
        assert!(!page.contains("<img"), "{path}");
    }
    let (_, page) = cart.get(&format!("/console/events/{position}")).await;
    assert!(
        page.contains("&lt;script&gt;alert('x')&lt;/script&gt;"),
        "{page}"
    );
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_action_is_a_post_that_another_sites_page_cannot_send() {
    let cart = start_cart(Duration::from_millis(300)).await;
    cart.publisher.fail(true);
    let id = Uuid::new_v4();
    cart.add_item(id, "x").await;
    cart.submit(id).await;
    let job = cart.wait_for_job(JobState::Dead).await;
    cart.publisher.fail(false);
    let redrive = format!("{}/console/queue/jobs/{}/redrive", cart.base, job.id);

    // Not with GET.
    assert_eq!(
        cart.get(&format!("/console/queue/jobs/{}/redrive", job.id))
            .await
            .0,
        405
    );
    // Not from another site's page.
    for (name, value) in [
        ("origin", "http://elsewhere.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let response = cart
            .client
            .post(&redrive)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{name}");
    }
    assert_eq!(cart.publish_jobs().await[0].state, JobState::Dead);
    // From the console's own page: done, then back to the job's page.
    let response = cart
        .client
        .post(&redrive)
        .header("origin", &cart.base)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert!(response
        .url()
        .path()
        .ends_with(&format!("/queue/jobs/{}", job.id)));
    cart.wait_for_job(JobState::Succeeded).await;
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_loopback_the_console_needs_its_token_for_every_page_and_action() {
    let cart = start_cart(Duration::from_millis(300)).await;
    let store = cart.app.store().clone();
    let public = SocketAddr::from(([0, 0, 0, 0], 8080));
    assert!(matches!(
        Console::new(store.clone()).router(public),
        Err(ConsoleError::TokenRequired(_))
    ));
    assert!(matches!(
        Console::new(store.clone()).token("short").router(public),
        Err(ConsoleError::WeakToken)
    ));
    // Served here on loopback, as configured for a public address.
    let router = Console::new(store).token(TOKEN).router(public).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    cart.publisher.fail(true);
    let id = Uuid::new_v4();
    cart.add_item(id, "x").await;
    cart.submit(id).await;
    let job = cart.wait_for_job(JobState::Dead).await;
    cart.publisher.fail(false);

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Pages: a login form instead.
    for path in ["/", "/events", "/listeners", "/queue", "/kafka"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        let page = response.text().await.unwrap();
        assert!(
            page.contains("<h1>Log in</h1>") && !page.contains("<h1>Overview</h1>"),
            "{path}"
        );
    }
    // Actions: refused, and nothing done.
    let redrive = format!("{base}/queue/jobs/{}/redrive", job.id);
    for auth in [None, Some("Bearer wrong-token-of-some-length")] {
        let mut request = client.post(&redrive);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cart.publish_jobs().await[0].state, JobState::Dead);

    // The bearer token opens everything.
    let bearer = format!("Bearer {TOKEN}");
    let response = client
        .get(format!("{base}/"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.text().await.unwrap().contains("<h1>Overview</h1>"));
    // The login form sets a cookie that does the same.
    let wrong = client
        .post(format!("{base}/login"))
        .form(&[("token", "not-the-token-at-all")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let login = client
        .post(format!("{base}/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let response = client
        .post(&redrive)
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    cart.wait_for_job(JobState::Succeeded).await;
    server.abort();
    cart.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listener_actions_from_the_console_rebuild_and_skip_with_their_outcome() {
    use dcb_core::{EventMetadata, EventRecord, EventStore, Tag};
    let cart = start_cart(HOUR).await;
    cart.add_item(Uuid::new_v4(), "x").await;
    cart.settle().await;
    let page = format!("{}/console/listeners/cart-items-db", cart.base);

    // A rewind needs its box ticked.
    let response = cart
        .client
        .post(format!("{page}/rebuild"))
        .form(&[("confirm", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("I mean it"));
    // Then the request's page follows it until it is done.
    let response = cart
        .client
        .post(format!("{page}/rebuild"))
        .form(&[("confirm", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let request_page = response.url().clone();
    assert!(request_page
        .path()
        .contains("/console/listeners/cart-items-db/requests/"));
    let text = response.text().await.unwrap();
    assert!(text.contains("rebuild of"), "{text}");
    eventually("the rebuild's page says done", || async {
        let text = cart
            .client
            .get(request_page.clone())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        match text.contains(">done<") && text.contains("100.0%") {
            true => Ok(()),
            false => Err(text),
        }
    })
    .await;

    // An event the read model cannot decode is parked; Skip resolves it.
    let bad = cart
        .app
        .store()
        .append(
            vec![EventRecord {
                event_type: "CartItemAdded".into(),
                tags: vec![Tag::new("cart_id", Uuid::new_v4())],
                payload: b"not json".to_vec(),
                metadata: EventMetadata::new(),
            }],
            None,
        )
        .await
        .unwrap()
        .last
        .0;
    let row = format!("data-position=\"{bad}\"");
    eventually("the parked event listed with its buttons", || async {
        let (_, text) = cart.get("/console/listeners/cart-items-db").await;
        match text.contains(&row) && text.contains(">Skip<") && text.contains(">Retry<") {
            true => Ok(()),
            false => Err(text),
        }
    })
    .await;
    let response = cart
        .client
        .post(format!("{page}/skip"))
        .form(&[("position", bad.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    eventually("the skip done and the event no longer parked", || async {
        let (_, text) = cart.get("/console/listeners/cart-items-db").await;
        match !text.contains(&row) {
            true => Ok(()),
            false => Err(text),
        }
    })
    .await;
    let parked = cart
        .app
        .store()
        .listener_admin()
        .parked("cart-items-db")
        .await
        .unwrap();
    assert!(parked.is_empty(), "{parked:?}");
    cart.stop().await;
}
