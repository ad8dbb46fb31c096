//! Broker-health heuristics of the translator runner: what it does when
//! every broker is away, when a partition's log ends before the group's
//! position, and when no member of the group seems to read a partition. Each
//! works around a behaviour of a broker or of librdkafka that the runner
//! cannot otherwise see; each says why where it is written.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset;
use tokio::sync::watch;

use super::runner::Counters;

/// whether a partition's log ended before the group's position.
pub(super) const RESET_CHECK_IDLE: Duration = Duration::from_secs(5);

/// How long each broker request of that check may take.
const RESET_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a metadata request may take when the brokers may be away.
const OUTAGE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long partitions paused during an outage wait for topics the brokers
/// do not know (yet) before they resume anyway.
const MISSING_TOPICS_WAIT: Duration = Duration::from_secs(30);

/// How many idle checks in a row must see the same unread backlog, with no
/// offset committed meanwhile, before an instance without partitions
/// rejoins the group.
const ORPHAN_STRIKES: u32 = 3;

/// The least time between two such rejoins of one instance.
const ORPHAN_REJOIN_EVERY: Duration = Duration::from_secs(60);

/// Partitions with records after the group's committed offset, as seen by
/// the idle checks of an instance that has no partition.
#[derive(Default)]
pub(super) struct OrphanWatch {
    /// (topic, partition, committed offset, log end) of the last check.
    last: Vec<(String, i32, i64, i64)>,
    strikes: u32,
    rejoined: Option<std::time::Instant>,
}

/// The subscribed partitions whose log has records after the group's
/// committed offset: (topic, partition, committed offset or the log start
/// when none, log end). Blocking.
fn unread_backlog(
    consumer: &StreamConsumer,
    topics: &[String],
) -> rdkafka::error::KafkaResult<Vec<(String, i32, i64, i64)>> {
    let mut partitions = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), RESET_CHECK_TIMEOUT)?;
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                partitions.add_partition(topic, p.id());
            }
        }
    }
    if partitions.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(partitions, RESET_CHECK_TIMEOUT)?;
    let mut backlog = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (start, end) = consumer.fetch_watermarks(topic, partition, RESET_CHECK_TIMEOUT)?;
        let read_to = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => start,
        };
        if end > read_to {
            backlog.push((topic.to_owned(), partition, read_to, end));
        }
    }
    Ok(backlog)
}

/// Whether a consumer error says every broker connection is down.
pub(super) fn is_all_brokers_down(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode;
    matches!(
        error,
        rdkafka::error::KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)
            | rdkafka::error::KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
    )
}

/// A partition whose log ended before the group's position.
struct Rewound {
    topic: String,
    partition: i32,
    position: i64,
    end: i64,
}

/// The assigned partitions whose position (or, before anything was
/// consumed, committed offset) lies past their log's end, each sought to
/// `to` if given. Blocking.
fn rewind_reset_partitions(
    consumer: &StreamConsumer,
    to: Option<Offset>,
) -> rdkafka::error::KafkaResult<Vec<Rewound>> {
    if consumer.assignment()?.count() == 0 {
        return Ok(Vec::new());
    }
    let positions = consumer.position()?;
    let mut committed = None;
    let mut rewound = Vec::new();
    for element in positions.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => {
                if committed.is_none() {
                    committed = Some(consumer.committed(RESET_CHECK_TIMEOUT)?);
                }
                match committed
                    .as_ref()
                    .and_then(|c| c.find_partition(topic, partition))
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => offset,
                    _ => continue,
                }
            }
        };
        let (_, end) = consumer.fetch_watermarks(topic, partition, RESET_CHECK_TIMEOUT)?;
        if position > end {
            if let Some(to) = to {
                consumer.seek(topic, partition, to, RESET_CHECK_TIMEOUT)?;
            }
            rewound.push(Rewound {
                topic: topic.to_owned(),
                partition,
                position,
                end,
            });
        }
    }
    Ok(rewound)
}

/// Logs consumer errors: the first of a burst at once, repeats at most every
/// few seconds with their count.
#[derive(Default)]
pub(super) struct ErrorLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(5);

    pub(super) fn seen(&mut self, error: &rdkafka::error::KafkaError) {
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return;
        }
        let not_logged_before = std::mem::take(&mut self.suppressed);
        tracing::warn!(
            %error,
            not_logged_before,
            "consumer error; the client reconnects by itself"
        );
        self.last = Some(std::time::Instant::now());
    }
}

/// The consumer's view of the brokers, and what the heuristics remember
/// between idle checks.
pub(super) struct BrokerHealth {
    pub(super) consumer: Arc<StreamConsumer>,
    /// The subscribed topics.
    pub(super) topics: Vec<String>,
    /// Where a partition whose log ended before the group's position starts
    /// again (`auto.offset.reset`; `None` for `error`).
    pub(super) on_reset: Option<Offset>,
    /// What the last idle checks saw of partitions nobody seems to read.
    pub(super) orphans: OrphanWatch,
    /// When an outage was last found over (see `wait_out_outage`).
    pub(super) outage_checked: Option<std::time::Instant>,
    pub(super) counters: Arc<Counters>,
}

impl BrokerHealth {
    /// Every broker connection is down: pauses the assigned partitions until
    /// the brokers answer for every subscribed topic again (at most
    /// [`MISSING_TOPICS_WAIT`] for topics they do not know), then resumes;
    /// false when shutdown came first.
    ///
    /// Why: when a broker comes back, the client fetches its partitions with
    /// the topic ids it knew before, while the metadata that tells it the
    /// current ids comes later. A broker that lost its topics (tansu with
    /// memory storage; the topics created again have new ids) answers such a
    /// fetch with an unknown-topic response that crashes librdkafka 2.12 (a
    /// null topic name in its leader-discovery handling). The probe below
    /// refreshes the client's topic metadata (fetches use the ids it holds),
    /// and the group's rebalances wait meanwhile, since they are applied
    /// only when the consumer is polled. Against a broker that kept its
    /// state, the partitions resume where they were, at most a probe
    /// interval after it is back.
    pub(super) async fn wait_out_outage(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        if self
            .outage_checked
            .is_some_and(|at| at.elapsed() < Duration::from_secs(2))
        {
            // One of the errors queued during an outage just handled.
            return true;
        }
        let paused = self.consumer.assignment().ok();
        if let Some(paused) = &paused {
            if let Err(error) = self.consumer.pause(paused) {
                tracing::debug!(%error, "cannot pause the assigned partitions");
            }
        }
        let started = std::time::Instant::now();
        let mut answering_since: Option<std::time::Instant> = None;
        let mut announced = false;
        loop {
            match self.subscribed_topics_known().await {
                Some(true) => break,
                Some(false) => {
                    let since = *answering_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > MISSING_TOPICS_WAIT {
                        tracing::warn!(
                            "the brokers answer, but not every subscribed topic exists: \
                             resuming anyway"
                        );
                        break;
                    }
                }
                None => answering_since = None,
            }
            if !announced {
                tracing::warn!(
                    "the brokers do not answer: partitions paused until they do, to resume \
                     with current topic metadata"
                );
                announced = true;
            }
            tokio::select! {
                _ = shutdown.changed() => return false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        // Resume whatever is assigned now (a rebalance may be pending, not
        // applied yet); the partitions paused above, if still assigned.
        let resume = self.consumer.assignment().ok().or(paused);
        if let Some(resume) = resume {
            if let Err(error) = self.consumer.resume(&resume) {
                tracing::debug!(%error, "cannot resume the assigned partitions");
            }
        }
        if announced {
            tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "the brokers answer again: partitions resumed with current topic metadata"
            );
        }
        self.outage_checked = Some(std::time::Instant::now());
        true
    }

    /// Asks the brokers for each subscribed topic's metadata (which also
    /// refreshes the client's cache of topic ids): `None` when no broker
    /// answers, else whether every topic exists.
    async fn subscribed_topics_known(&self) -> Option<bool> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let asked = tokio::task::spawn_blocking(move || {
            let mut all = true;
            for topic in &topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), OUTAGE_PROBE_TIMEOUT)
                    .ok()?;
                all &= metadata.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
            }
            Some(all)
        })
        .await;
        asked.ok().flatten()
    }

    /// Nothing came for a while: maybe a partition's log ended before the
    /// group's position (see [`TranslatorRunner`]). Where it did, seek to
    /// where `auto.offset.reset` says.
    pub(super) async fn check_reset_logs(&self) {
        let consumer = self.consumer.clone();
        let on_reset = self.on_reset;
        let checked =
            tokio::task::spawn_blocking(move || rewind_reset_partitions(&consumer, on_reset)).await;
        match checked {
            Ok(Ok(rewound)) => {
                for r in rewound {
                    if self.on_reset.is_some() {
                        tracing::warn!(
                            topic = %r.topic,
                            partition = r.partition,
                            position = r.position,
                            end = r.end,
                            "the partition's log ends before the group's position (the topic \
                             was created again, or the broker lost its log): reading it again \
                             from where auto.offset.reset says"
                        );
                        self.counters.rewinds.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tracing::error!(
                            topic = %r.topic,
                            partition = r.partition,
                            position = r.position,
                            end = r.end,
                            "the partition's log ends before the group's position, and \
                             auto.offset.reset=error: waiting there; reset the group's offsets"
                        );
                    }
                }
            }
            Ok(Err(error)) => tracing::debug!(%error, "cannot compare positions with log ends"),
            Err(error) => tracing::warn!(%error, "log end check failed"),
        }
    }

    /// Nothing came for a while and this instance has no partition: when the
    /// group's committed offsets stay behind the logs' ends over several
    /// checks, nobody may be reading those partitions, and this instance
    /// rejoins the group (which makes the whole group rebalance).
    ///
    /// Why: a group coordinator may complete a rebalance with no partition
    /// assigned to anyone. tansu 0.6 does when a member's session expires
    /// between a rebalance's JoinGroup and SyncGroup (it forgets the leader,
    /// and takes a follower's empty assignment for the group's); every
    /// instance then idles until the membership changes again. Against a
    /// Kafka cluster this does not happen, and the check costs a few
    /// requests per idle interval on instances without partitions.
    pub(super) async fn check_orphaned_partitions(&mut self) {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let checked = tokio::task::spawn_blocking(move || {
            if consumer.assignment()?.count() > 0 {
                return Ok(None);
            }
            unread_backlog(&consumer, &topics).map(Some)
        })
        .await;
        let backlog = match checked {
            Ok(Ok(Some(backlog))) if !backlog.is_empty() => backlog,
            Ok(Ok(_)) => {
                self.orphans.strikes = 0;
                self.orphans.last.clear();
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot compare committed offsets with log ends");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "backlog check failed");
                return;
            }
        };
        let unchanged = backlog == self.orphans.last;
        self.orphans.strikes = if unchanged {
            self.orphans.strikes + 1
        } else {
            1
        };
        self.orphans.last = backlog;
        let recently = self
            .orphans
            .rejoined
            .is_some_and(|at| at.elapsed() < ORPHAN_REJOIN_EVERY);
        if self.orphans.strikes < ORPHAN_STRIKES || recently {
            return;
        }
        tracing::warn!(
            backlog = ?self.orphans.last,
            "records wait after the group's committed offsets and this instance has no \
             partition: rejoining the group, in case no member has them"
        );
        self.consumer.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(error) = self.consumer.subscribe(&topics) {
            tracing::error!(%error, ?topics, "cannot subscribe again");
        }
        self.orphans.strikes = 0;
        self.orphans.rejoined = Some(std::time::Instant::now());
        self.counters.rejoins.fetch_add(1, Ordering::Relaxed);
    }
}
