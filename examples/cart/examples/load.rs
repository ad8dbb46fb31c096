//! A small load generator: `cargo run -p cart --release --example load --
//! [base_url] [clients] [seconds]` posts AddItem (each to a fresh cart, so
//! carts never fill) from N concurrent clients and prints p50/p99.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            let base = base.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < until {
                    let cart = uuid::Uuid::new_v4();
                    let body = serde_json::json!({
                        "item_id": uuid::Uuid::new_v4(), "product_id": uuid::Uuid::new_v4(),
                        "description": "load", "image": "load.png", "price": "1.00"
                    });
                    let start = Instant::now();
                    let response = client
                        .post(format!("{base}/additem/{cart}"))
                        .json(&body)
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().is_success() => latencies.push(start.elapsed()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("client task");
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{} requests in {seconds}s from {clients} clients ({:.0}/s), {errors} errors; p50 {:?}, p99 {:?}",
        all.len(),
        all.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99)
    );
}
