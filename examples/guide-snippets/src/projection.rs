//! A read model in PostgreSQL: who holds which seat, kept by a
//! transactional listener (chapter "A projection").

use dcb_core::{BoxError, Query, Sequenced, TransactionalListener, async_trait};
use dcb_postgres::listener::PgTransaction;
use dcb_postgres::migrations::{self, MigrationError};
use dcb_postgres::sqlx::{self, PgPool};

use crate::domain::{ConcertEvent, ConcertEventType};

/// The schema of the read model's tables.
pub const SCHEMA: &str = "concerts";

/// The migration component of the read model (recorded in
/// `concerts.dcb_migrations`).
pub const COMPONENT: &str = "concert_read_models";

/// The migration steps, in order. A released step is never edited (its
/// checksum is recorded): change the table with a new step.
pub const STEPS: &[&str] = &["
CREATE TABLE {schema}.seats (
    concert  text   NOT NULL,
    seat     int    NOT NULL,
    guest    text   NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (concert, seat)
);
"];

/// Creates or updates the read model's tables (safe to run at every start,
/// from several processes at once).
///
/// # Errors
/// The database refused a step, or a released step was edited.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrationError> {
    migrations::run(pool, SCHEMA, COMPONENT, STEPS).await
}

/// The listener that keeps `concerts.seats`. Its writes commit in the
/// transaction that moves its checkpoint: each event is applied exactly
/// once, with no "already seen?" check in the SQL.
pub struct SeatsProjection;

impl SeatsProjection {
    /// Its id: the runner keeps its checkpoint under it.
    pub const ID: &'static str = "concert-seats";
}

#[async_trait]
impl TransactionalListener<PgTransaction> for SeatsProjection {
    type Event = ConcertEvent;

    fn id(&self) -> &str {
        Self::ID
    }

    fn query(&self) -> Query {
        Query::types([ConcertEventType::SeatReserved])
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<ConcertEvent>,
    ) -> Result<(), BoxError> {
        if let ConcertEvent::SeatReserved {
            concert,
            seat,
            guest,
        } = event.event
        {
            sqlx::query(
                "INSERT INTO concerts.seats (concert, seat, guest, position) VALUES ($1, $2, $3, $4)",
            )
            .bind(concert)
            .bind(i32::try_from(seat)?)
            .bind(guest)
            .bind(i64::try_from(event.position.get())?)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
        sqlx::query("TRUNCATE concerts.seats")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The reserved seats of `concert` and their guests, by seat.
///
/// # Errors
/// Database errors.
pub async fn reserved_seats(pool: &PgPool, concert: &str) -> Result<Vec<(u32, String)>, BoxError> {
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT seat, guest FROM concerts.seats WHERE concert = $1 ORDER BY seat")
            .bind(concert)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(seat, guest)| Ok((u32::try_from(seat)?, guest)))
        .collect()
}
