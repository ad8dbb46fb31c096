//! How a runner and each of its listeners behave: batch sizes, polling,
//! leases, retries, and when a failing event is parked.

use std::time::Duration;

use dcb_core::{Backoff, MAX_DELAY};

/// How many attempts a permanent failure gets before its event is parked,
/// unless a listener says otherwise (a few, in case the failure was
/// misjudged).
pub const DEFAULT_PARK_PERMANENT_AFTER: u32 = 3;

/// Settings shared by every listener of a runner.
///
/// ```
/// use std::time::Duration;
/// use dcb_postgres::listener::RunnerConfig;
/// let config = RunnerConfig::default()
///     .batch_size(500)
///     .lease_ttl(Duration::from_secs(2))
///     .instance_id("web-1");
/// assert_eq!(config.batch_size, 500);
/// ```
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// At most this many events per batch (one transaction per batch in
    /// transactional mode). Default 100.
    pub batch_size: usize,
    /// How often an idle leader polls when no `NOTIFY` arrives (and how
    /// often a busy one looks for operators' requests). Default 1 s.
    pub poll_interval: Duration,
    /// Waits between attempts on a failing event.
    pub backoff: Backoff,
    /// How long a leader's lease lasts without renewal; a dead leader is
    /// replaced within about `lease_ttl * 4 / 3`. Renewed every third of it.
    /// Default 5 s.
    pub lease_ttl: Duration,
    /// The name this process leads under (default: a random UUID). Two live
    /// processes must never share one.
    pub instance_id: String,
    /// The server ends a batch transaction idle for longer than this (so a
    /// leader cut off mid-batch cannot hold its row lock forever). A
    /// transactional handler must not spend longer than this between two
    /// statements. Default 30 s.
    pub transaction_idle_timeout: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
            lease_ttl: Duration::from_secs(5),
            instance_id: uuid::Uuid::new_v4().to_string(),
            transaction_idle_timeout: Duration::from_secs(30),
        }
    }
}

impl RunnerConfig {
    /// Sets [`RunnerConfig::batch_size`] (at least 1).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets [`RunnerConfig::poll_interval`] (1 ms to a day).
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval =
            poll_interval.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        self
    }

    /// Sets [`RunnerConfig::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`RunnerConfig::lease_ttl`] (at least 300 ms, at most
    /// [`MAX_DELAY`]).
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl.clamp(Duration::from_millis(300), MAX_DELAY);
        self
    }

    /// Sets [`RunnerConfig::instance_id`].
    pub fn instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = instance_id.into();
        self
    }

    /// Sets [`RunnerConfig::transaction_idle_timeout`] (at least 1 s, at
    /// most a day).
    pub fn transaction_idle_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_idle_timeout =
            timeout.clamp(Duration::from_secs(1), Duration::from_secs(86_400));
        self
    }
}

/// Settings of one listener: when a failing event is parked (recorded with
/// its error, so the listener moves on) instead of retried.
///
/// A failure is *permanent* when no retry can help: the event does not
/// decode, the handler returned a [`Permanent`](super::Permanent) error or
/// panicked, or PostgreSQL refused the data itself (SQLSTATE classes 22,
/// data exception, and 23, integrity constraint violation). Any other
/// failure (an outage, a timeout, a plain error) is *transient*.
///
/// | options | transient failure | permanent failure |
/// |---|---|---|
/// | [`ListenerOptions::new`] (transactional default) | retried forever: blocks | parked after [`DEFAULT_PARK_PERMANENT_AFTER`] attempts |
/// | [`ListenerOptions::park_after`]`(n)` (at-least-once default, n = 10) | parked after `n` attempts | parked after `min(n, 3)` attempts |
/// | [`ListenerOptions::blocking`] | retried forever: blocks | retried forever: blocks |
///
/// A blocked listener shows it in its status (state `blocked`, the event's
/// position and the error), and an operator gets past the event with a
/// skip (see [`ListenerAdmin::request_skip`](super::ListenerAdmin::request_skip)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerOptions {
    /// After this many failed attempts on one event, for any reason, park it
    /// and move on; `None` retries transient failures forever (at the capped
    /// backoff), blocking the listener.
    pub park_after: Option<u32>,
    /// After this many attempts failing for a permanent reason, park the
    /// event; `None` blocks on it until the handler succeeds or an operator
    /// skips the event.
    pub park_permanent_after: Option<u32>,
    /// Overrides [`RunnerConfig::batch_size`] for this listener.
    pub batch_size: Option<usize>,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions::new()
    }
}

impl ListenerOptions {
    /// Retry transient failures forever (a read model must not miss an
    /// event because its database was away) and park an event after
    /// [`DEFAULT_PARK_PERMANENT_AFTER`] permanent failures. The default for
    /// transactional listeners.
    pub fn new() -> Self {
        ListenerOptions {
            park_after: None,
            park_permanent_after: Some(DEFAULT_PARK_PERMANENT_AFTER),
            batch_size: None,
        }
    }

    /// Never park: retry every failure forever, blocking the listener on a
    /// failing event until the handler succeeds or an operator skips it
    /// (for a listener that must never miss an event, such as a relay).
    pub fn blocking() -> Self {
        ListenerOptions {
            park_after: None,
            park_permanent_after: None,
            batch_size: None,
        }
    }

    /// Park a failing event after `attempts` attempts (at least 1), or
    /// sooner on a permanent failure, and carry on (the default for
    /// at-least-once listeners, with [`DEFAULT_PARK_AFTER`](super::DEFAULT_PARK_AFTER)).
    pub fn park_after(attempts: u32) -> Self {
        let attempts = attempts.max(1);
        ListenerOptions {
            park_after: Some(attempts),
            park_permanent_after: Some(attempts.min(DEFAULT_PARK_PERMANENT_AFTER)),
            batch_size: None,
        }
    }

    /// Sets [`ListenerOptions::park_permanent_after`] (at least 1).
    pub fn park_permanent_after(mut self, attempts: u32) -> Self {
        self.park_permanent_after = Some(attempts.max(1));
        self
    }

    /// Blocks on permanent failures instead of parking (the read model
    /// chooses to stop rather than to miss an event; its status says so).
    pub fn block_on_permanent(mut self) -> Self {
        self.park_permanent_after = None;
        self
    }

    /// Sets [`ListenerOptions::batch_size`] (at least 1).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size.max(1));
        self
    }

    /// Whether the event is parked after `attempts` failed attempts, the
    /// last `permanent` or not.
    pub(crate) fn parks(&self, attempts: u32, permanent: bool) -> bool {
        self.park_after.is_some_and(|n| attempts >= n)
            || (permanent && self.park_permanent_after.is_some_and(|n| attempts >= n))
    }

    /// Whether a failure like this one is ever parked (else it blocks).
    pub(crate) fn ever_parks(&self, permanent: bool) -> bool {
        self.park_after.is_some() || (permanent && self.park_permanent_after.is_some())
    }
}

/// How a listener receives its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// In the checkpoint's transaction: exactly once for Postgres writes.
    Transactional,
    /// After the batch, before the checkpoint: at least once.
    AtLeastOnce,
}

impl DeliveryMode {
    /// The stored name (`"transactional"`, `"at_least_once"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Transactional => "transactional",
            DeliveryMode::AtLeastOnce => "at_least_once",
        }
    }

    /// The mode a stored name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "transactional" => Some(DeliveryMode::Transactional),
            "at_least_once" => Some(DeliveryMode::AtLeastOnce),
            _ => None,
        }
    }
}
