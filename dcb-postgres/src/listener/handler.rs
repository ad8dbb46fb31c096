//! Type erasure: the runner keeps listeners of different event types side by
//! side behind one object-safe trait per delivery mode.

use std::sync::Arc;

use async_trait::async_trait;
use dcb_core::{BoxError, Listener, Query, SequencedEvent, TransactionalListener};

use super::PgTransaction;

/// A transactional listener with its event type erased.
#[async_trait]
pub(crate) trait DynTransactional: Send + Sync {
    async fn handle(&self, tx: &mut PgTransaction, event: &SequencedEvent) -> Result<(), BoxError>;
    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError>;
}

/// An at-least-once listener with its event type erased.
#[async_trait]
pub(crate) trait DynAtLeastOnce: Send + Sync {
    async fn handle(&self, event: &SequencedEvent) -> Result<(), BoxError>;
}

struct Transactional<L>(L);
struct AtLeastOnce<L>(L);

#[async_trait]
impl<L> DynTransactional for Transactional<L>
where
    L: TransactionalListener<PgTransaction>,
{
    async fn handle(&self, tx: &mut PgTransaction, event: &SequencedEvent) -> Result<(), BoxError> {
        let decoded = event.decode::<L::Event>()?;
        self.0.handle(tx, decoded).await
    }

    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
        self.0.reset(tx).await
    }
}

#[async_trait]
impl<L> DynAtLeastOnce for AtLeastOnce<L>
where
    L: Listener,
{
    async fn handle(&self, event: &SequencedEvent) -> Result<(), BoxError> {
        let decoded = event.decode::<L::Event>()?;
        self.0.handle(decoded).await
    }
}

/// How a registered listener receives its events.
#[derive(Clone)]
pub(crate) enum Handler {
    Transactional(Arc<dyn DynTransactional>),
    AtLeastOnce(Arc<dyn DynAtLeastOnce>),
}

/// A registered listener: id, query and handler.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) id: String,
    pub(crate) query: Query,
    pub(crate) handler: Handler,
}

impl Registered {
    pub(crate) fn transactional<L>(listener: L) -> Self
    where
        L: TransactionalListener<PgTransaction> + 'static,
    {
        Registered {
            id: listener.id().to_owned(),
            query: listener.query(),
            handler: Handler::Transactional(Arc::new(Transactional(listener))),
        }
    }

    pub(crate) fn at_least_once<L>(listener: L) -> Self
    where
        L: Listener + 'static,
    {
        Registered {
            id: listener.id().to_owned(),
            query: listener.query(),
            handler: Handler::AtLeastOnce(Arc::new(AtLeastOnce(listener))),
        }
    }
}
