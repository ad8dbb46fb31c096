//! The decision maker's cache of folded states: per state type and query,
//! the state folded up to a position, so that a decision on a boundary this
//! process has seen needs no read before its append.
//!
//! A cached entry is never trusted blindly: a decision on it appends with
//! the condition "nothing matching after the entry's position", which the
//! store checks like any other; if something did match, the decision reads
//! what came after the entry, folds it, and decides again. A decision that
//! appends nothing (a rejection, or no events) is confirmed against the
//! events after the entry before it is reported, so a stale entry can never
//! refuse a command that would succeed.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::query::Query;
use crate::tag::Position;

/// How many states a cache keeps unless told otherwise.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// Which state an entry holds: its type and its query (a state's query
/// names its boundary).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    state: TypeId,
    query: Query,
}

impl CacheKey {
    pub(crate) fn new<St: 'static>(query: Query) -> Self {
        CacheKey {
            state: TypeId::of::<St>(),
            query,
        }
    }

    /// Approximate heap bytes of the key.
    fn bytes(&self) -> usize {
        self.query
            .items()
            .iter()
            .map(|item| {
                item.types.iter().map(|t| t.as_str().len()).sum::<usize>()
                    + item
                        .tags
                        .iter()
                        .map(|t| t.as_str().len() + 24)
                        .sum::<usize>()
                    + 48
            })
            .sum()
    }
}

/// A folded state and the position it is complete up to.
pub(crate) struct Cached<St> {
    pub(crate) state: St,
    pub(crate) position: Option<Position>,
    /// Known to be behind: bring it up to date before deciding on it.
    pub(crate) stale: bool,
}

struct Entry {
    state: Box<dyn Any + Send + Sync>,
    position: Option<Position>,
    /// Known to be behind the log (see [`StateCache::mark_stale`]).
    stale: bool,
    /// The last use, for eviction.
    used: u64,
    /// Approximate memory of the entry.
    bytes: usize,
}

/// What a cache holds and how it served, for operators and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// States held.
    pub entries: usize,
    /// The most states it holds.
    pub capacity: usize,
    /// Approximate memory of the entries, in bytes (the states' own sizes
    /// plus their queries; heap data a state owns beyond its inline size is
    /// not counted).
    pub approx_bytes: usize,
    /// Decisions that found their state here.
    pub hits: u64,
    /// Decisions that read their state from the store.
    pub misses: u64,
    /// Entries brought up to date by reading the events after them (after
    /// a failed condition, or to confirm a decision that appended nothing).
    pub refreshes: u64,
    /// Decisions on a boundary not in the cache that were decided as if the
    /// boundary had no events yet (see
    /// [`DecisionMaker`](crate::DecisionMaker)), and of those, how many
    /// found events there after all.
    pub guesses: u64,
    /// Guesses that found events (each cost one failed append).
    pub wrong_guesses: u64,
}

/// The cache: a bounded map, least recently used entries evicted first.
pub(crate) struct StateCache {
    capacity: usize,
    map: Mutex<HashMap<CacheKey, Entry>>,
    clock: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    refreshes: AtomicU64,
    guesses: Guesses,
}

/// How often "a boundary not in the cache has no events" was right, per
/// state type: guessing stops for a state type while it is mostly wrong.
#[derive(Default)]
struct Guesses {
    made: AtomicU64,
    wrong: AtomicU64,
    /// Per state type: a score of recent guesses (right +1, wrong -2,
    /// within -20..=20); guessing goes on while it is not negative.
    score: Mutex<HashMap<TypeId, i32>>,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl StateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        StateCache {
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            guesses: Guesses::default(),
        }
    }

    /// Whether a decision over state type `St` missing the cache should be
    /// decided as if its boundary had no events yet.
    pub(crate) fn may_guess<St: 'static>(&self) -> bool {
        let mut score = self.guesses.score.lock().unwrap_or_else(|e| e.into_inner());
        match score.get_mut(&TypeId::of::<St>()) {
            Some(value) if *value < 0 => {
                // Mostly wrong lately: guess no more, but drift back so that
                // a workload that changes is noticed (about one point per 32
                // misses).
                if fastrand::u32(..32) == 0 {
                    *value += 1;
                }
                false
            }
            _ => true,
        }
    }

    /// Records whether such a guess was right.
    pub(crate) fn guessed<St: 'static>(&self, right: bool) {
        self.guesses.made.fetch_add(1, Ordering::Relaxed);
        if !right {
            self.guesses.wrong.fetch_add(1, Ordering::Relaxed);
        }
        let mut score = self.guesses.score.lock().unwrap_or_else(|e| e.into_inner());
        let entry = score.entry(TypeId::of::<St>()).or_insert(0);
        *entry = (*entry + if right { 1 } else { -2 }).clamp(-20, 20);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Entry>> {
        // Entries are replaced whole: a panic elsewhere cannot leave one
        // half-written.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the state under `key`, counting a hit or a miss.
    pub(crate) fn get<St: Clone + Send + Sync + 'static>(
        &self,
        key: &CacheKey,
    ) -> Option<Cached<St>> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        let found = map.get_mut(key).and_then(|entry| {
            entry.used = tick;
            entry.state.downcast_ref::<St>().map(|state| Cached {
                state: state.clone(),
                position: entry.position,
                stale: entry.stale,
            })
        });
        drop(map);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `state`, complete up to `position`, under `key`, unless the
    /// entry there is already further along.
    pub(crate) fn put<St: Send + Sync + 'static>(
        &self,
        key: CacheKey,
        state: St,
        position: Option<Position>,
    ) {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let bytes = std::mem::size_of::<Entry>() + std::mem::size_of::<St>() + key.bytes();
        let mut map = self.lock();
        if let Some(existing) = map.get(&key) {
            if existing.position > position {
                return;
            }
        }
        map.insert(
            key,
            Entry {
                state: Box::new(state),
                position,
                stale: false,
                used: tick,
                bytes,
            },
        );
        if map.len() > self.capacity {
            evict(&mut map, self.capacity);
        }
    }

    /// Marks the state under `key` as behind the log when it is still the
    /// one at `position` (a newer one stays as it is).
    pub(crate) fn mark_stale(&self, key: &CacheKey, position: Option<Position>) {
        if let Some(entry) = self.lock().get_mut(key) {
            if entry.position == position {
                entry.stale = true;
            }
        }
    }

    /// Forgets the state under `key`.
    pub(crate) fn remove(&self, key: &CacheKey) {
        self.lock().remove(key);
    }

    /// Counts an entry brought up to date.
    pub(crate) fn refreshed(&self) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let map = self.lock();
        CacheStats {
            entries: map.len(),
            capacity: self.capacity,
            approx_bytes: map.values().map(|e| e.bytes).sum(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            guesses: self.guesses.made.load(Ordering::Relaxed),
            wrong_guesses: self.guesses.wrong.load(Ordering::Relaxed),
        }
    }
}

/// Drops the least recently used eighth of the entries (at least enough to
/// get back to `capacity`), so eviction runs once per many inserts.
fn evict(map: &mut HashMap<CacheKey, Entry>, capacity: usize) {
    let target = (capacity - capacity / 8)
        .min(capacity.saturating_sub(1))
        .max(1);
    if map.len() <= target {
        return;
    }
    let mut ticks: Vec<u64> = map.values().map(|e| e.used).collect();
    let drop = map.len() - target;
    ticks.select_nth_unstable(drop - 1);
    let cutoff = ticks[drop - 1];
    let mut dropped = 0;
    map.retain(|_, e| {
        if dropped < drop && e.used <= cutoff {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::Tag;

    fn key(i: usize) -> CacheKey {
        CacheKey::new::<u64>(Query::tags([Tag::new("k", i)]))
    }

    #[test]
    fn keeps_at_most_its_capacity_dropping_the_least_recently_used() {
        let cache = StateCache::new(16);
        for i in 0..16 {
            cache.put(key(i), i as u64, Some(Position(i as u64)));
        }
        // Use the first half again, then overflow.
        for i in 0..8 {
            assert!(cache.get::<u64>(&key(i)).is_some());
        }
        for i in 16..40 {
            cache.put(key(i), i as u64, None);
            assert!(cache.stats().entries <= 16);
        }
        assert!(cache.get::<u64>(&key(39)).is_some());
        assert!(
            cache.get::<u64>(&key(8)).is_none(),
            "an unused old entry is evicted"
        );
        let stats = cache.stats();
        assert!(stats.approx_bytes > 0 && stats.approx_bytes < 16 * 1024);
    }

    #[test]
    fn never_moves_an_entry_back_and_checks_the_type() {
        let cache = StateCache::new(4);
        cache.put(key(1), 5u64, Some(Position(5)));
        cache.put(key(1), 3u64, Some(Position(3)));
        let hit = cache.get::<u64>(&key(1)).unwrap();
        assert_eq!((hit.state, hit.position), (5, Some(Position(5))));
        assert!(cache.get::<String>(&key(1)).is_none());
        cache.remove(&key(1));
        assert!(cache.get::<u64>(&key(1)).is_none());
        assert_eq!(cache.stats().hits, 1);
    }
}
