//! Command-line parsing: `dcb-bench <workload> [--seconds N] [--json PATH] [--preload N]
//! [--concurrency N[,N..]]`.

use std::path::PathBuf;

/// One workload of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Decisions through the Postgres event store against raw INSERTs.
    Append,
    /// Listeners following the log.
    Listener,
    /// The Postgres work queue.
    Queue,
    /// The Kafka relay (needs `KAFKA_BROKERS`).
    Relay,
    /// Standby reads and split stores: a primary and a standby of its own.
    Scaling,
    /// Every workload, one after the other (relay only with `KAFKA_BROKERS`).
    All,
}

impl Workload {
    /// Every workload name the CLI accepts, in the order `--help` lists them.
    pub const NAMES: [&'static str; 6] = ["append", "listener", "queue", "relay", "scaling", "all"];

    fn parse(name: &str) -> Option<Workload> {
        Some(match name {
            "append" => Workload::Append,
            "listener" => Workload::Listener,
            "queue" => Workload::Queue,
            "relay" => Workload::Relay,
            "scaling" => Workload::Scaling,
            "all" => Workload::All,
            _ => return None,
        })
    }

    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Append => "append",
            Workload::Listener => "listener",
            Workload::Queue => "queue",
            Workload::Relay => "relay",
            Workload::Scaling => "scaling",
            Workload::All => "all",
        }
    }
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    /// What to run.
    pub workload: Workload,
    /// How long each variant is measured, in seconds (after a warm-up).
    pub seconds: f64,
    /// Where to write the JSON rows, if anywhere.
    pub json: Option<PathBuf>,
    /// How many events the preloaded variants load (0 skips them); the
    /// listener catch-up, queue burn-down and relay drain sizes follow it.
    pub preload: u64,
    /// The concurrencies of the append workload's disjoint and raw rows
    /// (default: 1, 8, 32 and 64).
    pub concurrency: Option<Vec<usize>>,
}

/// The default measuring time per variant, in seconds.
pub const DEFAULT_SECONDS: f64 = 10.0;
/// The default size of the preloaded log.
pub const DEFAULT_PRELOAD: u64 = 1_000_000;

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Run a workload.
    Run(Args),
    /// Print the usage text.
    Help,
}

/// The usage text.
pub fn usage() -> String {
    format!(
        "usage: dcb-bench <workload> [--seconds N] [--json PATH] [--preload N] [--concurrency N[,N..]]\n\
         \n\
         workloads: {}\n\
         \n\
         options:\n\
         \x20 --seconds N   measure each variant for N seconds after a ~1 s warm-up (default {})\n\
         \x20 --json PATH   also write the rows as a JSON array to PATH\n\
         \x20 --preload N   events preloaded for append/preloaded and listener catch-up (default {});\n\
         \x20               also caps the listener projection (200k), queue burn-down (100k jobs)\n\
         \x20               and relay drain (100k); 0 skips the preloaded rows\n\
         \x20 --concurrency N[,N..]  append only: the callers of the disjoint and raw rows\n\
         \x20               (default 1,8,32,64)\n\
         \n\
         The database comes from DATABASE_URL (PostgreSQL 15+). Every run works in fresh\n\
         schemas named bench_<random>... and drops them when it ends. The relay workload\n\
         needs KAFKA_BROKERS (`all` skips it without). The scaling workload starts a primary\n\
         and a standby of its own from the installed PostgreSQL binaries (no DATABASE_URL;\n\
         `all` does not run it).",
        Workload::NAMES.join(", "),
        DEFAULT_SECONDS,
        DEFAULT_PRELOAD
    )
}

/// Parses the arguments after the program name.
///
/// # Errors
/// A message for the user when the arguments do not fit the usage.
pub fn parse<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut workload = None;
    let mut seconds = DEFAULT_SECONDS;
    let mut json = None;
    let mut preload = DEFAULT_PRELOAD;
    let mut concurrency = None;
    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--seconds" => {
                let v = value("--seconds")?;
                seconds = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("--seconds wants a positive number, got {v:?}"))?;
            }
            "--json" => json = Some(PathBuf::from(value("--json")?)),
            "--preload" => {
                let v = value("--preload")?;
                preload = v
                    .parse::<u64>()
                    .map_err(|_| format!("--preload wants a whole number of events, got {v:?}"))?;
            }
            "--concurrency" => {
                let v = value("--concurrency")?;
                let list: Result<Vec<usize>, _> = v
                    .split(',')
                    .map(|c| c.trim().parse::<usize>().ok().filter(|c| *c > 0).ok_or(()))
                    .collect();
                concurrency = Some(list.map_err(|_| {
                    format!("--concurrency wants positive numbers separated by commas (e.g. 1,8,32), got {v:?}")
                })?);
            }
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            name => {
                if workload.is_some() {
                    return Err(format!("unexpected argument {name:?}: give one workload"));
                }
                workload = Some(Workload::parse(name).ok_or_else(|| {
                    format!(
                        "unknown workload {name:?}: expected one of {}",
                        Workload::NAMES.join(", ")
                    )
                })?);
            }
        }
    }
    let workload = workload.ok_or_else(|| "no workload given".to_string())?;
    Ok(Command::Run(Args {
        workload,
        seconds,
        json,
        preload,
        concurrency,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Args {
        match parse(args.iter().copied()).unwrap() {
            Command::Run(a) => a,
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults() {
        let a = run(&["append"]);
        assert_eq!(a.workload, Workload::Append);
        assert_eq!(a.seconds, DEFAULT_SECONDS);
        assert_eq!(a.json, None);
        assert_eq!(a.preload, DEFAULT_PRELOAD);
    }

    #[test]
    fn options_in_both_spellings() {
        let a = run(&["--seconds", "3", "all", "--json=out.json", "--preload=0"]);
        assert_eq!(a.workload, Workload::All);
        assert_eq!(a.seconds, 3.0);
        assert_eq!(a.json, Some(PathBuf::from("out.json")));
        assert_eq!(a.preload, 0);
        assert_eq!(a.concurrency, None);
        assert_eq!(
            run(&["append", "--concurrency", "32"]).concurrency,
            Some(vec![32])
        );
        assert_eq!(
            run(&["append", "--concurrency", "1,8,32"]).concurrency,
            Some(vec![1, 8, 32])
        );
    }

    #[test]
    fn errors() {
        assert!(parse(["nope"]).unwrap_err().contains("unknown workload"));
        assert!(parse(Vec::<String>::new())
            .unwrap_err()
            .contains("no workload"));
        assert!(parse(["append", "--seconds"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(["append", "--seconds", "0"]).is_err());
        assert!(parse(["append", "--bogus"])
            .unwrap_err()
            .contains("unknown option"));
        assert!(parse(["append", "queue"]).is_err());
        assert_eq!(parse(["--help"]).unwrap(), Command::Help);
    }
}
