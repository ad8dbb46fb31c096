//! `dcb listeners`: list, parked events, reset and rebuild with a progress
//! bar, retry and skip. Requests go through `ListenerAdmin`: the
//! listener's running leader, in the service's process, carries them out.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use dcb_console::status::ListenerInfo;
use dcb_console::Ops;
use dcb_core::Position;
use dcb_postgres::listener::{ListenerError, RequestId, RequestState};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::output::{emit, json_pretty};
use crate::table::{cell, secs, Table};

#[derive(Subcommand)]
pub enum ListenersCommand {
    /// Every listener with its state and lag.
    List {
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// The events listener NAME parked (gave up on), oldest first.
    Parked {
        /// The listener.
        name: String,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rewinds listener NAME to the start of the log (a transactional listener
    /// also resets its read model) and follows its replay to the head.
    Reset(Rewind),
    /// Like reset, followed by the replay up to the head as it was when the reset
    /// was carried out.
    Rebuild(Rewind),
    /// Runs listener NAME's handler again on the parked event at POSITION (or,
    /// for the event it is stuck on, now instead of after its backoff).
    Retry(OneEvent),
    /// Resolves the parked event at POSITION without handling it (or parks and
    /// skips the event listener NAME is stuck on).
    Skip(OneEvent),
}

#[derive(Args)]
pub struct Rewind {
    /// The listener.
    name: String,
    /// Records the request and returns without waiting.
    #[arg(long)]
    detach: bool,
    /// Gives up waiting after this many seconds (the request goes on).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
}

#[derive(Args)]
pub struct OneEvent {
    /// The listener.
    name: String,
    /// The event's position.
    position: u64,
    /// Gives up waiting after this many seconds (the request goes on).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

pub async fn run(ops: &Ops, command: ListenersCommand) -> Result<ExitCode, dcb_console::Error> {
    match command {
        ListenersCommand::List { json } => list(ops, json).await,
        ListenersCommand::Parked { name, json } => parked(ops, &name, json).await,
        ListenersCommand::Reset(args) => rewind(ops, args, false).await,
        ListenersCommand::Rebuild(args) => rewind(ops, args, true).await,
        ListenersCommand::Retry(args) => one_event(ops, args, false).await,
        ListenersCommand::Skip(args) => one_event(ops, args, true).await,
    }
}

async fn list(ops: &Ops, json: bool) -> Result<ExitCode, dcb_console::Error> {
    let listeners: Vec<ListenerInfo> = if ops.components().await?.listeners {
        ops.listeners()
            .statuses()
            .await?
            .iter()
            .map(ListenerInfo::of)
            .collect()
    } else {
        Vec::new()
    };
    if json {
        emit(&json_pretty(&listeners));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "listener",
        "mode",
        "state",
        ">position",
        ">lag",
        ">lag time",
        ">parked",
        ">handled",
        "leader",
    ]);
    for l in &listeners {
        table.row(vec![
            l.name.clone(),
            l.mode.clone().unwrap_or_else(|| "-".into()),
            l.state.clone(),
            l.position.to_string(),
            l.lag_events.to_string(),
            secs(l.lag_seconds),
            l.parked.to_string(),
            l.handled.to_string(),
            l.leader.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    emit(&table.render());
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct ParkedView {
    position: u64,
    event_type: String,
    event_id: Option<uuid::Uuid>,
    error: String,
    attempts: u32,
    parked_at: chrono::DateTime<chrono::Utc>,
}

async fn parked(ops: &Ops, name: &str, json: bool) -> Result<ExitCode, dcb_console::Error> {
    // An unknown listener is an error, not an empty list.
    ops.listeners().status(name).await?;
    let parked: Vec<ParkedView> = ops
        .listeners()
        .parked(name)
        .await?
        .into_iter()
        .map(|p| ParkedView {
            position: p.position.0,
            event_type: p.event_type.as_str().to_owned(),
            event_id: p.event_id,
            error: p.error,
            attempts: p.attempts,
            parked_at: p.parked_at,
        })
        .collect();
    if json {
        emit(&json_pretty(&parked));
        return Ok(ExitCode::SUCCESS);
    }
    if parked.is_empty() {
        emit(&format!("{name} has no parked event.\n"));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[">position", "type", ">attempts", "parked at", "error"]);
    for p in &parked {
        table.row(vec![
            p.position.to_string(),
            p.event_type.clone(),
            p.attempts.to_string(),
            p.parked_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            cell(&p.error, 100),
        ]);
    }
    emit(&table.render());
    emit(&format!(
        "\nRetry one with `dcb listeners retry {name} POSITION`, or skip it with `dcb listeners skip {name} POSITION`.\n"
    ));
    Ok(ExitCode::SUCCESS)
}

/// Says so when no instance leads `name` (its requests wait until one
/// does); the events it handled so far.
async fn warn_without_leader(ops: &Ops, name: &str) -> Result<u64, dcb_console::Error> {
    let status = ops.listeners().status(name).await?;
    if status.leader.is_none() {
        eprintln!(
            "note: no runner of {name} is running; the request waits until one starts \
             (Ctrl-C stops waiting, not the request)"
        );
    }
    Ok(status.handled)
}

async fn rewind(ops: &Ops, args: Rewind, rebuild: bool) -> Result<ExitCode, dcb_console::Error> {
    let admin = ops.listeners();
    let name = &args.name;
    // The handled count survives resets: what it gains from here is the
    // replay's work.
    let handled_before = warn_without_leader(ops, name).await?;
    let request = if rebuild {
        admin.request_rebuild(name).await?
    } else {
        admin.request_reset(name).await?
    };
    let kind = if rebuild { "rebuild" } else { "reset" };
    eprintln!("{kind} of {name} requested (request {request})");
    if args.detach {
        emit(&format!("{request}\n"));
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    let follow = async {
        let target = wait_for_rewind(ops, request, deadline).await?;
        follow_replay(ops, name, request, (handled_before, target), deadline).await
    };
    tokio::select! {
        result = follow => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("stopped waiting; request {request} goes on (see `dcb listeners list`)");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn timed_out(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Waits until the leader carried out the reset; the position the replay
/// runs to.
async fn wait_for_rewind(
    ops: &Ops,
    request: RequestId,
    deadline: Option<Instant>,
) -> Result<u64, dcb_console::Error> {
    let admin = ops.listeners();
    loop {
        let info = admin
            .request_info(request)
            .await?
            .ok_or_else(|| dcb_console::Error::NotFound(format!("request {request} vanished")))?;
        match info.state {
            RequestState::Failed => {
                return Err(ListenerError::RequestFailed {
                    listener: info.listener_id,
                    request,
                    kind: info.kind,
                    error: info.error.unwrap_or_default(),
                }
                .into())
            }
            RequestState::Pending => {}
            RequestState::Running | RequestState::Done => {
                let progress = admin.rebuild_progress(request).await?;
                let target = if progress.target.0 > 0 {
                    progress.target.0
                } else {
                    // A reset targets nothing: replay to today's head.
                    dcb_core::EventStore::head(ops.store())
                        .await?
                        .map_or(0, |p| p.0)
                };
                return Ok(target);
            }
        }
        if timed_out(deadline) {
            return Err(ListenerError::RequestTimeout {
                listener: info.listener_id,
                request,
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows the listener's checkpoint up to `target` with a progress bar
/// (a line every few seconds when standard error is not a terminal).
async fn follow_replay(
    ops: &Ops,
    name: &str,
    request: RequestId,
    (handled_at_start, target): (u64, u64),
    deadline: Option<Instant>,
) -> Result<ExitCode, dcb_console::Error> {
    let admin = ops.listeners();
    let started = Instant::now();
    let bar = ProgressBar::new(target.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:40}] {pos}/{len} positions  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    loop {
        if let Some(info) = admin.request_info(request).await? {
            if info.state == RequestState::Failed {
                bar.abandon();
                return Err(ListenerError::RequestFailed {
                    listener: info.listener_id,
                    request,
                    kind: info.kind,
                    error: info.error.unwrap_or_default(),
                }
                .into());
            }
        }
        let status = admin.status(name).await?;
        let position = status.position.map_or(0, |p| p.0);
        let handled = status.handled.saturating_sub(handled_at_start);
        let rate = handled as f64 / started.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(position.min(target));
        bar.set_message(format!("{handled} events handled, {rate:.0} events/s"));
        let done = position >= target;
        if !terminal && (done || last_line.elapsed() >= Duration::from_secs(2)) {
            eprintln!("{name}: position {position} of {target}, {handled} events handled, {rate:.0} events/s");
            last_line = Instant::now();
        }
        if done {
            bar.finish_and_clear();
            emit(&format!(
                "{name} replayed to position {target}: {handled} events handled in {:.1} s\n",
                started.elapsed().as_secs_f64()
            ));
            return Ok(ExitCode::SUCCESS);
        }
        if timed_out(deadline) {
            bar.abandon();
            return Err(ListenerError::RequestTimeout {
                listener: name.to_owned(),
                request,
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn one_event(ops: &Ops, args: OneEvent, skip: bool) -> Result<ExitCode, dcb_console::Error> {
    let admin = ops.listeners();
    warn_without_leader(ops, &args.name).await?;
    let position = Position(args.position);
    let request = if skip {
        admin.request_skip(&args.name, position).await?
    } else {
        admin.request_retry(&args.name, position).await?
    };
    let done = admin
        .wait_for(request, Duration::from_secs(args.timeout))
        .await?;
    let what = if skip { "skipped" } else { "handled" };
    emit(&format!(
        "{}: the event at position {} was {what} (request {}, carried out by {})\n",
        args.name,
        args.position,
        done.id,
        done.executed_by.as_deref().unwrap_or("?")
    ));
    Ok(ExitCode::SUCCESS)
}
