//! Fault 3: PostgreSQL restarted (fast shutdown) twice under HTTP load; the
//! cart servers (real processes) must reconnect without a restart of their
//! own, and every invariant must hold (see `faults/mod.rs`). Uses a private
//! cluster (`scripts/postgres.sh` with `DCB_PG_PORT` / `DCB_PG_DATA`), never
//! the shared one. Needs `DATABASE_URL` (PostgreSQL installed) and
//! `KAFKA_BROKERS` (tansu installed; a private broker is started).

mod faults;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use faults::*;

struct PrivatePostgres {
    envs: Vec<(&'static str, String)>,
    dir: PathBuf,
}

impl PrivatePostgres {
    fn start() -> (PrivatePostgres, String) {
        let dir = temp_dir("postgres");
        let pg = PrivatePostgres {
            envs: vec![
                ("DCB_PG_PORT", free_port().to_string()),
                ("DCB_PG_DATA", dir.join("data").display().to_string()),
            ],
            dir,
        };
        let url = pg.up();
        (pg, url)
    }

    fn up(&self) -> String {
        let out = script("postgres.sh", &["start"], &self.envs);
        out.lines().last().expect("a URL").to_owned()
    }

    fn stop(&self) {
        script("postgres.sh", &["stop"], &self.envs);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("stop")
            .envs(self.envs.clone())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    require_database();
    let (pg, url) = PrivatePostgres::start();
    let tansu = Tansu::start();
    tansu.create_topics().await;
    let mut servers = Servers::start(2, &url, Some(&tansu.brokers), &[]).await;
    let kafka = Kafka::new(&tansu.brokers).await;
    let load = Load::new(servers.bases.clone());
    let workers = load.run(3);

    let mut restarts = 0;
    let mut last_fault = Instant::now();
    for _ in 0..2 * soak(5) {
        for _ in 0..3 {
            assert!(kafka.inventory().await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        pg.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        pg.up();
        restarts += 1;
        last_fault = Instant::now();
        servers.assert_running();
    }
    // The servers answer again without a restart of their own.
    let deadline = Instant::now() + CONVERGE;
    let before = load.counts().1;
    while load.counts().1 < before + 20 {
        assert!(
            Instant::now() < deadline,
            "no commands accepted after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.stop(workers).await;
    servers.assert_running();

    let pool = pool(&url).await;
    let expect = Expect {
        load: &load,
        kafka: Some(&kafka),
        dead: 0,
    };
    let converged = converge(&pool, &expect, last_fault, CONVERGE).await;
    check(&pool, &expect, &converged.fold).await;
    servers.stop_all();
    Summary {
        test: "postgres (fast restart under load, private cluster)",
        load: &load,
        extra_sent: 0,
        faults: restarts,
        fold: &converged.fold,
        kafka: Some(&kafka),
        converged_after: converged.after,
    }
    .print();
    pool.close().await;
    drop(servers);
    drop(pg);
}
