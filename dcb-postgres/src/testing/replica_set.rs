//! [`ReplicaSet`]: a private primary and streaming standbys, started from
//! the installed PostgreSQL server binaries for one test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

const NEED_BINARIES: &str = "these tests start PostgreSQL servers of their own and need its \
     server binaries (initdb, pg_ctl, pg_basebackup): install the postgresql package \
     (scripts/test.sh does), or put its bin directory first on PATH";

/// How long a server may take to start, stop or be promoted.
const SERVER_WAIT: Duration = Duration::from_secs(60);

/// How the primary waits for its standbys when a transaction commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// Asynchronous standbys: a commit returns once the primary has it (the
    /// default).
    Off,
    /// `synchronous_commit = on`: a commit returns once a standby has
    /// flushed it to disk (survives a failover; a read on the standby may
    /// not see it yet).
    Flush,
    /// `synchronous_commit = remote_apply`: a commit returns once a standby
    /// has applied it (survives a failover, and a read on the standby sees
    /// it).
    RemoteApply,
}

/// Configures a [`ReplicaSet`].
#[derive(Clone, Debug)]
pub struct ReplicaSetBuilder {
    standbys: usize,
    synchronous: Synchronous,
    fsync: bool,
    settings: Vec<(String, String)>,
}

impl Default for ReplicaSetBuilder {
    fn default() -> Self {
        ReplicaSetBuilder {
            standbys: 1,
            synchronous: Synchronous::Off,
            fsync: true,
            settings: Vec::new(),
        }
    }
}

impl ReplicaSetBuilder {
    /// How many streaming standbys (default 1).
    pub fn standbys(mut self, standbys: usize) -> Self {
        self.standbys = standbys;
        self
    }

    /// How commits wait for the standbys (default [`Synchronous::Off`]).
    /// Set on the primary only, once every standby streams: a promoted
    /// standby runs without a synchronous standby of its own.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Whether the servers flush to disk (default true). Killing a server
    /// loses nothing either way (the operating system keeps what was
    /// written); turn it off only for speed.
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Sets a server setting on every server (written to `postgresql.conf`
    /// after the defaults of the set: 64MB of shared buffers, 200
    /// connections), e.g. `setting("shared_buffers", "256MB")`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Creates the clusters in a fresh temporary directory and starts them:
    /// `initdb` and `pg_ctl start` for the primary, `pg_basebackup -R` (with
    /// a replication slot) and `pg_ctl start` for each standby, on free
    /// ports of 127.0.0.1. Returns once every standby streams.
    ///
    /// # Panics
    /// When the binaries are missing or a server does not start, with the
    /// end of its log.
    pub async fn start(self) -> ReplicaSet {
        tokio::task::spawn_blocking(move || ReplicaSet::start_blocking(self))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// A primary and its streaming standbys, private to one test: a temporary
/// directory, free ports on 127.0.0.1, trust authentication for the
/// `postgres` user. As root the servers run as the unprivileged `postgres`
/// user (PostgreSQL refuses to run as root), through `runuser`. Dropping the
/// set stops the servers (immediate shutdown) and removes the directory.
///
/// ```no_run
/// # async fn example() {
/// use dcb_postgres::testing::{ReplicaSet, Synchronous};
/// let set = ReplicaSet::builder().synchronous(Synchronous::RemoteApply).start().await;
/// let store = dcb_postgres::PgEventStore::builder()
///     .standby(set.standby_url(0))
///     .connect(&set.primary_url())
///     .await
///     .unwrap();
/// // ... append, kill the primary, promote the standby ...
/// set.kill_primary().await;
/// set.promote(0).await;
/// set.stop().await;
/// # }
/// ```
#[derive(Debug)]
pub struct ReplicaSet {
    dir: PathBuf,
    bindir: PathBuf,
    primary: Node,
    standbys: Vec<Node>,
    stopped: bool,
}

#[derive(Debug)]
struct Node {
    name: String,
    data: PathBuf,
    port: u16,
}

impl Node {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn log(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.log", self.name))
    }
}

impl ReplicaSet {
    /// A builder: one asynchronous standby unless told otherwise.
    pub fn builder() -> ReplicaSetBuilder {
        ReplicaSetBuilder::default()
    }

    /// A primary and one asynchronous standby (see
    /// [`ReplicaSetBuilder::start`]).
    ///
    /// # Panics
    /// See [`ReplicaSetBuilder::start`].
    pub async fn start() -> ReplicaSet {
        Self::builder().start().await
    }

    /// The primary's URL (database `postgres`, user `postgres`).
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// Standby `index`'s URL.
    ///
    /// # Panics
    /// When there is no such standby.
    pub fn standby_url(&self, index: usize) -> String {
        self.standbys[index].url()
    }

    /// Every standby's URL.
    pub fn standby_urls(&self) -> Vec<String> {
        self.standbys.iter().map(Node::url).collect()
    }

    /// Waits (up to a minute) until every standby has replayed the primary's
    /// WAL as it is now.
    ///
    /// # Panics
    /// When a server cannot be reached or a standby does not catch up.
    pub async fn wait_for_standbys(&self) {
        let mut primary = connect(&self.primary.url()).await;
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut primary)
            .await
            .expect("read the primary's WAL position");
        let _ = primary.close().await;
        for standby in &self.standbys {
            let mut conn = connect(&standby.url()).await;
            let deadline = Instant::now() + SERVER_WAIT;
            loop {
                let caught_up: Option<bool> =
                    sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
                        .bind(&lsn)
                        .fetch_one(&mut conn)
                        .await
                        .expect("read a standby's replay position");
                if caught_up == Some(true) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "standby {} did not replay up to {lsn} within {SERVER_WAIT:?}",
                    standby.name
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = conn.close().await;
        }
    }

    /// Kills the primary as a crash would: every process of it at once with
    /// SIGKILL (the postmaster is stopped first so it starts nothing new),
    /// without a shutdown checkpoint or a goodbye to its clients. Returns
    /// once the postmaster is gone.
    ///
    /// # Panics
    /// When the primary is not running.
    pub async fn kill_primary(&self) {
        let data = self.primary.data.clone();
        tokio::task::spawn_blocking(move || kill_server(&data))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }

    /// Promotes standby `index` to primary (`pg_ctl promote`, waiting until
    /// it accepts writes). The other standbys keep following the old
    /// primary: this set does not repoint them.
    ///
    /// # Panics
    /// When there is no such standby or the promotion fails.
    pub async fn promote(&self, index: usize) {
        let standby = &self.standbys[index];
        let args = pg_ctl_args(&standby.data, &["promote", "-w", "-t", "60"]);
        let bindir = self.bindir.clone();
        let name = standby.name.clone();
        let log = standby.log(&self.dir);
        tokio::task::spawn_blocking(move || {
            let output = run_as_owner(&bindir.join("pg_ctl"), &args);
            if !output.status.success() {
                panic!(
                    "promoting {name} failed: {}\n{}",
                    String::from_utf8_lossy(&output.stderr),
                    tail(&log)
                );
            }
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }

    /// Stops every server and removes the directory.
    pub async fn stop(mut self) {
        let _ = tokio::task::spawn_blocking(move || self.teardown()).await;
    }

    fn teardown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for node in self.standbys.iter().chain(std::iter::once(&self.primary)) {
            if postmaster(&node.data).is_some_and(alive) {
                let args = pg_ctl_args(&node.data, &["-m", "immediate", "-w", "stop"]);
                let _ = run_as_owner(&self.bindir.join("pg_ctl"), &args);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn start_blocking(builder: ReplicaSetBuilder) -> ReplicaSet {
        let bindir = bindir();
        let dir = std::env::temp_dir().join(format!("dcb-replicas-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // The servers may run as another user (as root: `postgres`); they
        // create their data directories (mode 0700) and logs in here.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        let mut set = ReplicaSet {
            primary: Node {
                name: "primary".into(),
                data: dir.join("primary"),
                port: free_port(),
            },
            standbys: Vec::new(),
            dir,
            bindir,
            stopped: false,
        };
        set.init_primary(builder.fsync, &builder.settings);
        set.start_node(0);
        for i in 0..builder.standbys {
            let node = Node {
                name: format!("standby{}", i + 1),
                data: set.dir.join(format!("standby{}", i + 1)),
                port: free_port(),
            };
            set.base_backup(&node);
            set.standbys.push(node);
            set.start_node(i + 1);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to configure the replica set");
        runtime.block_on(set.configure(builder.standbys, builder.synchronous));
        set
    }

    fn node(&self, index: usize) -> &Node {
        if index == 0 {
            &self.primary
        } else {
            &self.standbys[index - 1]
        }
    }

    fn init_primary(&self, fsync: bool, extra: &[(String, String)]) {
        let data = self.primary.data.to_string_lossy().into_owned();
        let output = run_as_owner(
            &self.bindir.join("initdb"),
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        if !output.status.success() {
            panic!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        // Appended settings win over initdb's; the standbys copy them with
        // the base backup and override the port.
        let settings = format!(
            "\n# dcb replica set\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             max_connections = 200\n\
             shared_buffers = 64MB\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             fsync = {fsync}\n",
            port = self.primary.port,
            dir = self.dir.display(),
            fsync = if fsync { "on" } else { "off" },
        );
        let mut settings = settings;
        for (name, value) in extra {
            settings.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        append_config(&self.primary.data, &settings);
    }

    fn base_backup(&self, node: &Node) {
        let data = node.data.to_string_lossy().into_owned();
        let port = self.primary.port.to_string();
        let output = run_as_owner(
            &self.bindir.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-C",
                "-S",
                &node.name,
                "--no-sync",
            ],
        );
        if !output.status.success() {
            panic!(
                "pg_basebackup for {} failed: {}",
                node.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        append_config(
            &node.data,
            &format!(
                "\n# {}\nport = {}\ncluster_name = '{}'\n",
                node.name, node.port, node.name
            ),
        );
    }

    fn start_node(&self, index: usize) {
        let node = self.node(index);
        let log = node.log(&self.dir);
        let log_arg = log.to_string_lossy().into_owned();
        let args = pg_ctl_args(&node.data, &["-l", &log_arg, "-w", "-t", "60", "start"]);
        let output = run_as_owner(&self.bindir.join("pg_ctl"), &args);
        if !output.status.success() {
            panic!(
                "{} did not start: {}\n{}",
                node.name,
                String::from_utf8_lossy(&output.stderr),
                tail(&log)
            );
        }
    }

    /// Waits until every standby streams, then makes commits wait for them
    /// as asked (on the primary only).
    async fn configure(&self, standbys: usize, synchronous: Synchronous) {
        let mut primary = connect(&self.primary.url()).await;
        let deadline = Instant::now() + SERVER_WAIT;
        loop {
            let streaming: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .fetch_one(&mut primary)
            .await
            .expect("read pg_stat_replication");
            if streaming as usize >= standbys {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standbys did not start streaming within {SERVER_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let level = match synchronous {
            Synchronous::Off => None,
            Synchronous::Flush => Some("on"),
            Synchronous::RemoteApply => Some("remote_apply"),
        };
        if let Some(level) = level {
            for statement in [
                "ALTER SYSTEM SET synchronous_standby_names = '*'".to_string(),
                format!("ALTER SYSTEM SET synchronous_commit = '{level}'"),
                "SELECT pg_reload_conf()".to_string(),
            ] {
                sqlx::query(&statement)
                    .execute(&mut primary)
                    .await
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
            // A reload is asynchronous: wait until new sessions see it.
            loop {
                let mut check = connect(&self.primary.url()).await;
                let names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
                    .fetch_one(&mut check)
                    .await
                    .expect("read synchronous_standby_names");
                let _ = check.close().await;
                if names == "*" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the primary did not take its synchronous settings"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = primary.close().await;
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        self.teardown();
    }
}

async fn connect(url: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("cannot connect to {url}: {e}"),
        Err(_) => panic!("connecting to {url} timed out"),
    }
}

/// The directory of `initdb`, `pg_ctl` and `pg_basebackup`: `pg_config
/// --bindir`, else the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
fn bindir() -> PathBuf {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "pg_basebackup"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && complete(&dir) {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let dir = entry.path().join("bin");
            complete(&dir).then_some((version, dir))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return dir;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if complete(&dir) {
                return dir;
            }
        }
    }
    panic!("{NEED_BINARIES}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `program` as the servers' owner: as root, the `postgres` user.
fn run_as_owner<S: AsRef<std::ffi::OsStr>>(program: &Path, args: &[S]) -> Output {
    let result = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(args)
            .output()
    } else {
        Command::new(program).args(args).output()
    };
    result.unwrap_or_else(|e| panic!("cannot run {}: {e}; {NEED_BINARIES}", program.display()))
}

fn pg_ctl_args(data: &Path, rest: &[&str]) -> Vec<String> {
    let mut args = vec!["-D".to_string(), data.to_string_lossy().into_owned()];
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

fn append_config(data: &Path, settings: &str) {
    // The file belongs to the servers' owner; as root we may write it anyway.
    use std::io::Write;
    let path = data.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.write_all(settings.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!("{}:\n{}", log.display(), lines[start..].join("\n"))
}

/// SIGSTOPs the postmaster of `data` (so it forks nothing more), then
/// SIGKILLs its children and itself, and waits until it is gone.
fn kill_server(data: &Path) {
    let pid = postmaster(data)
        .filter(|pid| alive(*pid))
        .unwrap_or_else(|| panic!("no running server in {}", data.display()));
    signal("STOP", &[pid]);
    let mut victims = children(pid);
    victims.push(pid);
    signal("KILL", &victims);
    let deadline = Instant::now() + SERVER_WAIT;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the killed postmaster {pid} did not go away"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The postmaster's pid of the cluster in `data`, if it has one.
fn postmaster(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()))
}

/// Whether `pid` runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the command may hold spaces and parens.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn signal(name: &str, pids: &[u32]) {
    let mut command = Command::new("kill");
    command.arg(format!("-{name}")).arg("--");
    for pid in pids {
        command.arg(pid.to_string());
    }
    let _ = command.output();
}
