//! Concerts with numbered seats: the events, two states and the decisions
//! (chapter "A first decision").

use std::collections::{BTreeMap, BTreeSet};

use dcb_core::{Decision, Event, StateMutate, StateQuery};

/// Everything that happens to a concert. Each `#[id]` field becomes a tag
/// (`concert:<name>`), and the tags draw the consistency boundaries.
#[derive(Event, Debug, Clone, PartialEq)]
#[stream(Hall, [ConcertScheduled, SeatReserved])]
#[stream(Tickets, [TicketIssued])]
pub enum ConcertEvent {
    /// A concert with seats `1..=seats`.
    ConcertScheduled {
        /// The concert.
        #[id]
        concert: String,
        /// How many seats it has.
        seats: u32,
    },
    /// A guest reserved a seat.
    SeatReserved {
        /// The concert.
        #[id]
        concert: String,
        /// The seat.
        seat: u32,
        /// Who.
        guest: String,
    },
    /// A ticket was issued for a reserved seat (by the automation).
    TicketIssued {
        /// The concert.
        #[id]
        concert: String,
        /// The seat.
        seat: u32,
        /// Who.
        guest: String,
    },
    /// The ticket was mailed (recorded once by the work queue).
    TicketMailed {
        /// The concert.
        #[id]
        concert: String,
        /// The seat.
        seat: u32,
    },
}

/// What the booking decisions know about one concert's hall: whether it is
/// scheduled, its size, and who holds which seat.
#[derive(StateQuery, Clone, Debug, Default)]
#[state_query(Hall)]
pub struct HallState {
    #[id]
    concert: String,
    seats: Option<u32>,
    taken: BTreeMap<u32, String>,
}

impl HallState {
    /// The hall of `concert` before any event.
    pub fn new(concert: &str) -> Self {
        HallState {
            concert: concert.to_owned(),
            ..HallState::default()
        }
    }
}

impl StateMutate for HallState {
    fn mutate(&mut self, event: Hall) {
        match event {
            Hall::ConcertScheduled { seats, .. } => self.seats = Some(seats),
            Hall::SeatReserved { seat, guest, .. } => {
                self.taken.insert(seat, guest);
            }
        }
    }
}

/// Why a booking command is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConcertError {
    /// No such concert.
    #[error("concert {0} is not scheduled")]
    NotScheduled(String),
    /// Scheduled once only.
    #[error("concert {0} is already scheduled")]
    AlreadyScheduled(String),
    /// The hall has no such seat.
    #[error("seat {0} does not exist")]
    NoSuchSeat(u32),
    /// Someone has it.
    #[error("seat {0} is taken")]
    SeatTaken(u32),
}

/// Schedules a concert (from Kafka, see [`crate::translator`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The concert.
    pub concert: String,
    /// Its number of seats.
    pub seats: u32,
}

impl Decision for Schedule {
    type Event = ConcertEvent;
    type StateQuery = HallState;
    type Error = ConcertError;

    fn state_query(&self) -> HallState {
        HallState::new(&self.concert)
    }

    fn process(&self, hall: &HallState) -> Result<Vec<ConcertEvent>, ConcertError> {
        if hall.seats.is_some() {
            return Err(ConcertError::AlreadyScheduled(self.concert.clone()));
        }
        Ok(vec![ConcertEvent::ConcertScheduled {
            concert: self.concert.clone(),
            seats: self.seats,
        }])
    }
}

/// Reserves one seat. Its boundary is the concert's hall: two guests racing
/// for seat 7 read the same state, only one append passes its condition,
/// and the other is decided again and refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserve {
    /// The concert.
    pub concert: String,
    /// The seat.
    pub seat: u32,
    /// Who.
    pub guest: String,
}

impl Decision for Reserve {
    type Event = ConcertEvent;
    type StateQuery = HallState;
    type Error = ConcertError;

    fn state_query(&self) -> HallState {
        HallState::new(&self.concert)
    }

    fn process(&self, hall: &HallState) -> Result<Vec<ConcertEvent>, ConcertError> {
        let Some(seats) = hall.seats else {
            return Err(ConcertError::NotScheduled(self.concert.clone()));
        };
        if self.seat == 0 || self.seat > seats {
            return Err(ConcertError::NoSuchSeat(self.seat));
        }
        if hall.taken.contains_key(&self.seat) {
            return Err(ConcertError::SeatTaken(self.seat));
        }
        Ok(vec![ConcertEvent::SeatReserved {
            concert: self.concert.clone(),
            seat: self.seat,
            guest: self.guest.clone(),
        }])
    }
}

/// The tickets issued for one concert.
#[derive(StateQuery, Clone, Debug, Default)]
#[state_query(Tickets)]
pub struct IssuedTickets {
    #[id]
    concert: String,
    seats: BTreeSet<u32>,
}

impl StateMutate for IssuedTickets {
    fn mutate(&mut self, event: Tickets) {
        let Tickets::TicketIssued { seat, .. } = event;
        self.seats.insert(seat);
    }
}

/// Issues the ticket of a reserved seat, once: a second call for the same
/// seat appends nothing (the automation may see an event twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueTicket {
    /// The concert.
    pub concert: String,
    /// The seat.
    pub seat: u32,
    /// Who.
    pub guest: String,
}

impl Decision for IssueTicket {
    type Event = ConcertEvent;
    type StateQuery = IssuedTickets;
    type Error = std::convert::Infallible;

    fn state_query(&self) -> IssuedTickets {
        IssuedTickets {
            concert: self.concert.clone(),
            ..IssuedTickets::default()
        }
    }

    fn process(&self, issued: &IssuedTickets) -> Result<Vec<ConcertEvent>, Self::Error> {
        if issued.seats.contains(&self.seat) {
            return Ok(vec![]);
        }
        Ok(vec![ConcertEvent::TicketIssued {
            concert: self.concert.clone(),
            seat: self.seat,
            guest: self.guest.clone(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::testing::TestHarness;

    fn scheduled(seats: u32) -> ConcertEvent {
        ConcertEvent::ConcertScheduled {
            concert: "c1".into(),
            seats,
        }
    }

    fn reserved(seat: u32, guest: &str) -> ConcertEvent {
        ConcertEvent::SeatReserved {
            concert: "c1".into(),
            seat,
            guest: guest.into(),
        }
    }

    fn reserve(seat: u32, guest: &str) -> Reserve {
        Reserve {
            concert: "c1".into(),
            seat,
            guest: guest.into(),
        }
    }

    #[test]
    fn a_free_seat_is_reserved() {
        TestHarness::given([scheduled(10)])
            .when(reserve(7, "ann"))
            .then([reserved(7, "ann")]);
    }

    #[test]
    fn a_taken_seat_is_refused() {
        TestHarness::given([scheduled(10), reserved(7, "ann")])
            .when(reserve(7, "bob"))
            .then_err(ConcertError::SeatTaken(7));
    }

    #[test]
    fn another_concert_does_not_count() {
        TestHarness::given([
            scheduled(10),
            ConcertEvent::SeatReserved {
                concert: "c2".into(),
                seat: 7,
                guest: "eve".into(),
            },
        ])
        .when(reserve(7, "bob"))
        .then([reserved(7, "bob")]);
    }

    #[test]
    fn a_ticket_is_issued_once() {
        let issue = || IssueTicket {
            concert: "c1".into(),
            seat: 7,
            guest: "ann".into(),
        };
        let issued = ConcertEvent::TicketIssued {
            concert: "c1".into(),
            seat: 7,
            guest: "ann".into(),
        };
        TestHarness::given([reserved(7, "ann")])
            .when(issue())
            .then([issued.clone()]);
        TestHarness::given([issued]).when(issue()).then([]);
    }
}
