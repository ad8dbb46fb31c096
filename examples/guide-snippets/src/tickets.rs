//! From a reservation to a mailed ticket: an automation that makes a
//! decision for each reservation (chapter "An automation"), and a work-queue
//! processor that mails each ticket and records it once (chapter "A
//! work-queue processor").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcb_core::{
    BoxError, DecisionMaker, Event, EventRecord, EventStore, MakeOptions, Query, Sequenced,
    TransactionalListener, async_trait,
};
use dcb_postgres::listener::PgTransaction;
use dcb_postgres::queue::{JobContext, JobError, NewJob, Processor, WorkQueue};
use serde::{Deserialize, Serialize};

use crate::domain::{ConcertEvent, ConcertEventType, IssueTicket};

/// The automation: every `SeatReserved` becomes an [`IssueTicket`]
/// decision. It runs at least once per event (after a crash it may see an
/// event again), which is harmless: `IssueTicket` appends nothing for a
/// seat whose ticket was issued.
pub struct IssueTickets<S: EventStore> {
    maker: DecisionMaker<S>,
}

impl<S: EventStore> IssueTickets<S> {
    /// The automation's id (its checkpoint's name).
    pub const ID: &'static str = "issue-tickets";

    /// Decides through `maker`.
    pub fn new(maker: DecisionMaker<S>) -> Self {
        IssueTickets { maker }
    }
}

#[async_trait]
impl<S: EventStore + 'static> dcb_core::Listener for IssueTickets<S> {
    type Event = ConcertEvent;

    fn id(&self) -> &str {
        Self::ID
    }

    fn query(&self) -> Query {
        Query::types([ConcertEventType::SeatReserved])
    }

    async fn handle(&self, event: Sequenced<ConcertEvent>) -> Result<(), BoxError> {
        let options = MakeOptions::caused_by(&event);
        if let ConcertEvent::SeatReserved {
            concert,
            seat,
            guest,
        } = event.event
        {
            let issue = IssueTicket {
                concert,
                seat,
                guest,
            };
            self.maker.make_with(&issue, options).await?;
        }
        Ok(())
    }
}

/// The job: mail one ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailTicket {
    /// The concert.
    pub concert: String,
    /// The seat.
    pub seat: u32,
    /// To whom.
    pub guest: String,
}

/// Enqueues a [`MailTicket`] job for every `TicketIssued`, in the
/// transaction that moves this listener's checkpoint: the job is enqueued
/// exactly once per event, and the dedupe key makes a second enqueue of it
/// (a rebuild) a no-op.
pub struct EnqueueMail {
    queue: WorkQueue,
}

impl EnqueueMail {
    /// The listener's id.
    pub const ID: &'static str = "enqueue-ticket-mail";

    /// Enqueues into `queue`.
    pub fn new(queue: WorkQueue) -> Self {
        EnqueueMail { queue }
    }
}

#[async_trait]
impl TransactionalListener<PgTransaction> for EnqueueMail {
    type Event = ConcertEvent;

    fn id(&self) -> &str {
        Self::ID
    }

    fn query(&self) -> Query {
        Query::types([ConcertEventType::TicketIssued])
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<ConcertEvent>,
    ) -> Result<(), BoxError> {
        let event_id = event.event_id();
        let position = event.position;
        if let ConcertEvent::TicketIssued {
            concert,
            seat,
            guest,
        } = event.event
        {
            let job = NewJob::for_processor::<MailTickets>(&MailTicket {
                concert,
                seat,
                guest,
            })?
            .dedupe_key(format!("mail-ticket:{event_id}"))
            .triggered_by_id(event_id, Some(position))
            .retry_for(Duration::from_secs(3600));
            self.queue.enqueue(&mut **tx, &job).await?;
        }
        Ok(())
    }
}

/// Where mails go. The example keeps them in memory; a service would call
/// its mail provider here.
#[derive(Clone, Debug, Default)]
pub struct Outbox(Arc<Mutex<Vec<MailTicket>>>);

impl Outbox {
    /// Everything mailed so far (a job run twice mails twice: `run` is at
    /// least once).
    pub fn sent(&self) -> Vec<MailTicket> {
        self.0.lock().expect("outbox lock").clone()
    }
}

/// The processor of [`MailTicket`] jobs: mails the ticket, then records
/// `TicketMailed` exactly once per job.
pub struct MailTickets {
    /// Where mails go.
    pub outbox: Outbox,
}

#[async_trait]
impl Processor for MailTickets {
    const KIND: &'static str = "mail_ticket";
    type Payload = MailTicket;

    async fn run(&self, mail: &MailTicket, _ctx: &JobContext) -> Result<(), JobError> {
        if mail.guest.is_empty() {
            return Err(JobError::permanent("no one to mail the ticket to"));
        }
        self.outbox
            .0
            .lock()
            .expect("outbox lock")
            .push(mail.clone());
        Ok(())
    }

    async fn on_success(
        &self,
        mail: &MailTicket,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        let mailed = ConcertEvent::TicketMailed {
            concert: mail.concert.clone(),
            seat: mail.seat,
        };
        Ok(vec![mailed.to_record().map_err(JobError::permanent)?])
    }
}
