//! Runs the example: two stores (ordering and shipping), the process
//! managers between them, a few orders from placed to shipped.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:54329/postgres cargo run -p split-stores
//! ```
//!
//! `ORDERING_URL` and `SHIPPING_URL` put the two stores in two databases
//! (or on two servers); both default to `DATABASE_URL`, where the stores
//! take the schemas `ordering` and `shipping`.

use dcb_core::{DecisionMaker, EventStore, Query, ReadOptions};
use dcb_postgres::PgEventStore;
use split_stores::ordering::{OrderStatus, PlaceOrder};
use split_stores::shipping::{DispatchShipment, ShippingEvent};
use split_stores::{ProcessManagers, Stores};
use uuid::Uuid;

fn url(name: &str) -> Result<String, String> {
    std::env::var(name)
        .or_else(|_| std::env::var("DATABASE_URL"))
        .map_err(|_| {
            "set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:54329/postgres; \
             scripts/postgres.sh start prints one)"
                .to_string()
        })
}

async fn open(url: &str, schema: &str) -> Result<PgEventStore, String> {
    PgEventStore::builder()
        .schema(schema)
        .connect(url)
        .await
        .map_err(|e| format!("open the {schema} store: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let stores = Stores {
        ordering: open(&url("ORDERING_URL")?, "ordering").await?,
        shipping: open(&url("SHIPPING_URL")?, "shipping").await?,
    };
    let managers = ProcessManagers::start(&stores)
        .await
        .map_err(|e| e.to_string())?;

    // Customers place orders in the ordering store; one is too large for
    // a shipment, which only shipping knows.
    let ordering = DecisionMaker::new(stores.ordering.clone());
    let mut orders = Vec::new();
    for items in [1, 3, 12, 2] {
        let order = Uuid::new_v4();
        ordering
            .make(PlaceOrder { order, items })
            .await
            .map_err(|e| e.to_string())?;
        println!("placed order {order} with {items} items");
        orders.push(order);
    }
    managers.catch_up().await.map_err(|e| e.to_string())?;

    // The warehouse dispatches what shipping scheduled.
    let shipping = DecisionMaker::new(stores.shipping.clone());
    let (_, scheduled) = stores
        .shipping
        .read(
            &Query::types(["ShipmentScheduled"]),
            ReadOptions::forwards(),
        )
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    for event in scheduled {
        let event = event.decode::<ShippingEvent>().map_err(|e| e.to_string())?;
        if let ShippingEvent::ShipmentScheduled {
            shipment, order, ..
        } = event.event
        {
            if orders.contains(&order) {
                shipping
                    .make(DispatchShipment { shipment })
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    managers.catch_up().await.map_err(|e| e.to_string())?;

    for order in orders {
        let status = OrderStatus::load(&stores.ordering, order)
            .await
            .map_err(|e| e.to_string())?;
        println!("order {order}: {status:?}");
    }
    managers.shutdown().await;
    stores.ordering.shutdown().await;
    stores.shipping.shutdown().await;
    Ok(())
}
