//! Turn-taking on hot boundaries: when decisions of this process on one
//! boundary have just conflicted with each other, the next ones on it wait
//! their turn instead of racing. Each then decides on the state the one
//! before it left in the cache and appends at the first try, so a hot
//! boundary costs one round trip per decision instead of a storm of failed
//! appends, re-reads and backoffs. Boundaries that do not conflict never
//! wait.
//!
//! Turns only order this process's decisions; other processes still race,
//! and the store's condition check settles those as always.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::cache::CacheKey;

/// How long a boundary stays hot after its last conflict.
const HOT_FOR: Duration = Duration::from_secs(2);

/// Hot boundaries and their turns.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    hot: Mutex<HashMap<CacheKey, Hot>>,
}

#[derive(Debug)]
struct Hot {
    until: Instant,
    turn: Arc<AsyncMutex<()>>,
}

/// Holding a boundary's turn; dropping it passes the turn on.
pub(crate) struct Turn {
    _guard: OwnedMutexGuard<()>,
}

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Hot>> {
        self.hot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the turn on `key` when it is hot; `None` when it is not.
    pub(crate) async fn take(&self, key: &CacheKey) -> Option<Turn> {
        let turn = {
            let mut hot = self.lock();
            match hot.get(key) {
                Some(h) if h.until > Instant::now() => Some(h.turn.clone()),
                Some(_) => {
                    hot.remove(key);
                    None
                }
                None => None,
            }
        }?;
        Some(Turn {
            _guard: turn.lock_owned().await,
        })
    }

    /// Marks `key` hot after a conflict between this process's decisions.
    pub(crate) fn conflicted(&self, key: &CacheKey) {
        let now = Instant::now();
        let mut hot = self.lock();
        if hot.len() > 4096 {
            hot.retain(|_, h| h.until > now);
        }
        hot.entry(key.clone())
            .and_modify(|h| h.until = now + HOT_FOR)
            .or_insert_with(|| Hot {
                until: now + HOT_FOR,
                turn: Arc::new(AsyncMutex::new(())),
            });
    }
}
