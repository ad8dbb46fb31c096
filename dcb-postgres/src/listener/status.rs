//! What the runner and the operators' API report: a listener's status, its
//! parked events, operators' requests and rebuild progress.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dcb_core::{EventType, ListenerState, Position};

use super::DeliveryMode;

/// A listener's status, as [`RunnerHandle::status`](super::RunnerHandle::status)
/// and [`ListenerAdmin::status`](super::ListenerAdmin::status) report it.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerStatus {
    /// The listener id.
    pub id: String,
    /// How it receives events (`None`: not recorded yet, for a listener no
    /// runner of this release has started).
    pub mode: Option<DeliveryMode>,
    /// Its checkpoint: every event up to here is handled (or parked).
    pub position: Option<Position>,
    /// The head of the log.
    pub head: Option<Position>,
    /// `head - position`, in positions.
    pub lag: u64,
    /// How long ago the first event past the checkpoint was recorded: how
    /// far behind the listener is in time (zero when caught up; `None` when
    /// it could not be read).
    pub lag_time: Option<Duration>,
    /// What it is doing: the leader's view (this instance's when it leads,
    /// else as the leader last recorded it). `Blocked` means it stays on a
    /// failing event until the handler succeeds or an operator skips it;
    /// `last_error` says why.
    pub state: ListenerState,
    /// The instance holding a live lease, if any.
    pub leader: Option<String>,
    /// Whether this instance is the leader (always false through
    /// [`ListenerAdmin`](super::ListenerAdmin)).
    pub leading_here: bool,
    /// Failed attempts on the event it is stuck on (0 when healthy).
    pub attempts: u32,
    /// The position of the event it is stuck on.
    pub failing_position: Option<Position>,
    /// The last handler error (kept after recovery, cleared by a reset).
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// How many parked events are unresolved.
    pub parked: u64,
    /// Events handled since the listener was created (all instances).
    pub handled: u64,
    /// Events handled by this instance since it started (0 through
    /// [`ListenerAdmin`](super::ListenerAdmin)).
    pub handled_here: u64,
    /// How many times it was reset.
    pub generation: u64,
}

/// An event a listener gave up on, with the error that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The listener id.
    pub listener_id: String,
    /// Where the event is in the log.
    pub position: Position,
    /// Its stored type.
    pub event_type: EventType,
    /// Its id.
    pub event_id: Option<uuid::Uuid>,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// The id of an operator's request.
pub type RequestId = i64;

/// What an operator asked a listener's leader to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Rewind to the start of the log, with the read model's own reset.
    Reset,
    /// A reset, then replay up to the head as it was: done when the
    /// checkpoint reaches it.
    Rebuild,
    /// Run the handler again on one parked event (or retry a failing event
    /// now instead of after its backoff).
    Retry,
    /// Resolve one parked event without handling it, or park-and-skip the
    /// event a listener is stuck on.
    Skip,
}

impl RequestKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Reset => "reset",
            RequestKind::Rebuild => "rebuild",
            RequestKind::Retry => "retry",
            RequestKind::Skip => "skip",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "reset" => RequestKind::Reset,
            "rebuild" => RequestKind::Rebuild,
            "retry" => RequestKind::Retry,
            "skip" => RequestKind::Skip,
            _ => return None,
        })
    }
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// Waiting for the listener's leader.
    Pending,
    /// A rebuild whose reset was carried out, replaying.
    Running,
    /// Carried out.
    Done,
    /// Refused or failed; the request's error says why.
    Failed,
}

impl RequestState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Running => "running",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => RequestState::Pending,
            "running" => RequestState::Running,
            "done" => RequestState::Done,
            "failed" => RequestState::Failed,
            _ => return None,
        })
    }

    /// Whether the request is over (done or failed).
    pub fn is_finished(self) -> bool {
        matches!(self, RequestState::Done | RequestState::Failed)
    }
}

/// An operator's request as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerRequest {
    /// Its id.
    pub id: RequestId,
    /// The listener.
    pub listener_id: String,
    /// What was asked.
    pub kind: RequestKind,
    /// The event it is about (retry, skip).
    pub position: Option<Position>,
    /// Where it is.
    pub state: RequestState,
    /// Who asked (free text).
    pub requested_by: Option<String>,
    /// When it was asked.
    pub requested_at: DateTime<Utc>,
    /// When the leader took it up.
    pub started_at: Option<DateTime<Utc>>,
    /// When it was done or failed.
    pub finished_at: Option<DateTime<Utc>>,
    /// The instance that carried it out.
    pub executed_by: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Progress of a rebuild, as [`ListenerAdmin::rebuild_progress`](super::ListenerAdmin::rebuild_progress)
/// reads it from the database (and [`RunnerHandle::rebuild`](super::RunnerHandle::rebuild)
/// passes to its callback).
#[derive(Clone, Debug, PartialEq)]
pub struct RebuildProgress {
    /// The rebuild request.
    pub request: RequestId,
    /// The listener id.
    pub listener_id: String,
    /// Its checkpoint now (once done: where it was when the rebuild ended).
    pub position: Position,
    /// The head when the reset was carried out: done when `position`
    /// reaches it.
    pub target: Position,
    /// Events handled since the reset.
    pub events_done: u64,
    /// `position / target` (1 when the log was empty).
    pub fraction: f64,
    /// Events per second so far.
    pub events_per_sec: f64,
    /// Time since the reset.
    pub elapsed: Duration,
    /// Whether the rebuild is over: the checkpoint reached the target in
    /// the generation the reset began (never before).
    pub done: bool,
}
