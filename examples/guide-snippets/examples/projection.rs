//! Reserves seats and reads them back from the projection; the automation
//! issues the tickets and the work queue mails them.
//!
//! `DATABASE_URL=postgres://.. cargo run -p guide-snippets --example projection`

use std::time::Duration;

use dcb_core::{BoxError, DecisionMaker, EventStore};
use dcb_postgres::PgEventStore;
use guide_snippets::domain::{Reserve, Schedule};
use guide_snippets::projection::{SeatsProjection, reserved_seats};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)")?;
    let store = PgEventStore::connect(&url).await?;
    let services = guide_snippets::app::start(&store).await?;

    let concert = format!("concert-{}", std::process::id());
    let maker = DecisionMaker::new(store.clone());
    maker
        .make(Schedule {
            concert: concert.clone(),
            seats: 10,
        })
        .await?;
    for (seat, guest) in [(7, "ann"), (8, "bob")] {
        let reserve = Reserve {
            concert: concert.clone(),
            seat,
            guest: guest.into(),
        };
        maker.make(reserve).await?;
    }

    let head = store.head().await?.expect("events were appended");
    services
        .listeners
        .wait_until_timeout(SeatsProjection::ID, head, Duration::from_secs(30))
        .await?;
    println!(
        "{concert}: {:?}",
        reserved_seats(store.pool(), &concert).await?
    );

    services.shutdown().await;
    store.shutdown().await;
    Ok(())
}
