//! `dcb jobs`: list, show, redrive and cancel work-queue jobs.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use dcb_console::Ops;
use dcb_postgres::queue::{JobFilter, JobId, JobInfo, JobState};
use serde::Serialize;

use crate::output::{emit, json_pretty};
use crate::table::{cell, Table};

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Jobs, most recently changed first.
    List(ListArgs),
    /// One job with its payload and last error.
    Show {
        /// The job id.
        id: JobId,
        /// Prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Puts a dead job (or every dead job) back as due now, with a fresh set of
    /// attempts.
    Redrive(RedriveArgs),
    /// Cancels a ready, running or dead job (a running job's result is refused).
    Cancel {
        /// The job id.
        id: JobId,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum State {
    Ready,
    Running,
    Succeeded,
    Dead,
    Cancelled,
}

impl From<State> for JobState {
    fn from(state: State) -> JobState {
        match state {
            State::Ready => JobState::Ready,
            State::Running => JobState::Running,
            State::Succeeded => JobState::Succeeded,
            State::Dead => JobState::Dead,
            State::Cancelled => JobState::Cancelled,
        }
    }
}

#[derive(Args)]
pub struct ListArgs {
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    state: Option<State>,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Prints JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct RedriveArgs {
    /// The dead job to redrive.
    id: Option<JobId>,
    /// Every dead job (of --queue only, when given).
    #[arg(long)]
    all_dead: bool,
    /// With --all-dead: only this queue's.
    #[arg(long, requires = "all_dead")]
    queue: Option<String>,
}

/// A job as the command prints it in JSON.
#[derive(Serialize)]
struct JobView {
    id: JobId,
    queue: String,
    kind: String,
    state: JobState,
    attempt: u32,
    max_attempts: Option<u32>,
    priority: i32,
    run_at: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    dedupe_key: Option<String>,
    triggered_by_event: Option<uuid::Uuid>,
    last_error: Option<String>,
    locked_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    payload: serde_json::Value,
}

impl From<JobInfo> for JobView {
    fn from(j: JobInfo) -> JobView {
        JobView {
            id: j.id,
            queue: j.queue,
            kind: j.kind,
            state: j.state,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            priority: j.priority,
            run_at: j.run_at,
            deadline: j.deadline,
            dedupe_key: j.dedupe_key,
            triggered_by_event: j.triggered_by_event,
            last_error: j.last_error,
            locked_by: j.locked_by,
            created_at: j.created_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
            payload: j.payload,
        }
    }
}

pub async fn run(ops: &Ops, command: JobsCommand) -> Result<ExitCode, dcb_console::Error> {
    if !ops.components().await?.queue {
        return Err(dcb_console::Error::NotFound(format!(
            "schema {} has no work queue (no worker set or queue migration has run on it)",
            ops.schema()
        )));
    }
    let admin = ops.queue();
    match command {
        JobsCommand::List(args) => {
            let mut filter = JobFilter::new().limit(args.limit.max(1));
            if let Some(state) = args.state {
                filter = filter.state(state.into());
            }
            if let Some(queue) = args.queue {
                filter = filter.queue(queue);
            }
            if let Some(kind) = args.kind {
                filter = filter.kind(kind);
            }
            let jobs = admin.jobs(&filter).await?;
            if args.json {
                let jobs: Vec<JobView> = jobs.into_iter().map(JobView::from).collect();
                emit(&json_pretty(&jobs));
            } else if jobs.is_empty() {
                emit("No job matches.\n");
            } else {
                let mut table = Table::new(&[
                    "id",
                    "queue",
                    "kind",
                    "state",
                    ">attempt",
                    "changed",
                    "last error",
                ]);
                for j in &jobs {
                    table.row(vec![
                        j.id.to_string(),
                        j.queue.clone(),
                        j.kind.clone(),
                        j.state.to_string(),
                        match j.max_attempts {
                            Some(max) => format!("{}/{max}", j.attempt),
                            None => j.attempt.to_string(),
                        },
                        j.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        cell(j.last_error.as_deref().unwrap_or(""), 70),
                    ]);
                }
                emit(&table.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, json } => {
            let job = admin
                .job(id)
                .await?
                .ok_or_else(|| dcb_console::Error::NotFound(format!("no job {id}")))?;
            let view = JobView::from(job);
            if json {
                emit(&json_pretty(&view));
            } else {
                let mut text = format!(
                    "job {}\n  queue {}, kind {}, state {}, attempt {}{}\n  enqueued {}, changed {}\n",
                    view.id,
                    view.queue,
                    view.kind,
                    view.state,
                    view.attempt,
                    view.max_attempts.map(|m| format!(" of {m}")).unwrap_or_default(),
                    view.created_at.format("%Y-%m-%d %H:%M:%S"),
                    view.updated_at.format("%Y-%m-%d %H:%M:%S"),
                );
                if let Some(error) = &view.last_error {
                    text.push_str(&format!("  last error: {error}\n"));
                }
                text.push_str(&format!(
                    "  payload: {}\n",
                    serde_json::to_string_pretty(&view.payload).unwrap_or_default()
                ));
                emit(&text);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Redrive(args) => {
            if args.all_dead {
                let n = admin.redrive_all_dead(args.queue.as_deref()).await?;
                emit(&format!("{n} dead jobs redriven\n"));
                return Ok(ExitCode::SUCCESS);
            }
            let Some(id) = args.id else {
                return Err(dcb_console::Error::Invalid(
                    "name a job id, or pass --all-dead".into(),
                ));
            };
            if admin.redrive(id).await? {
                emit(&format!("job {id} redriven: it is due now\n"));
                Ok(ExitCode::SUCCESS)
            } else {
                Err(not_done(admin, id, "redrive", "only a dead job can be redriven").await)
            }
        }
        JobsCommand::Cancel { id } => {
            if admin.cancel(id).await? {
                emit(&format!("job {id} cancelled\n"));
                Ok(ExitCode::SUCCESS)
            } else {
                Err(not_done(admin, id, "cancel", "it is already finished").await)
            }
        }
    }
}

/// Why an action changed nothing: an unknown job, or its state.
async fn not_done(
    admin: &dcb_postgres::queue::QueueAdmin,
    id: JobId,
    action: &str,
    rule: &str,
) -> dcb_console::Error {
    match admin.job(id).await {
        Ok(Some(job)) => dcb_console::Error::Invalid(format!(
            "cannot {action} job {id}: it is {} ({rule})",
            job.state
        )),
        Ok(None) => dcb_console::Error::NotFound(format!("no job {id}")),
        Err(e) => e.into(),
    }
}
