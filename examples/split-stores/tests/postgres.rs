//! The two stores and their process managers against PostgreSQL
//! (`DATABASE_URL`; `scripts/postgres.sh start` runs a server): each test
//! gets a fresh database with the stores in schemas `ordering` and
//! `shipping`.

use std::collections::HashMap;

use dcb_core::{DecisionMaker, Event, EventStore, Query, ReadOptions};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use split_stores::ordering::{OrderEvent, PlaceOrder};
use split_stores::process::SHIP_PLACED_ORDERS;
use split_stores::shipping::{DispatchShipment, ShippingEvent, MAX_ITEMS_PER_SHIPMENT};
use split_stores::{ProcessManagers, Stores};
use uuid::Uuid;

const ORDERS: u32 = 40;

async fn stores(db: &TestDatabase) -> Stores {
    let open = |schema: &'static str| async move {
        PgEventStore::builder()
            .schema(schema)
            .build(db.pool().clone())
            .await
            .unwrap_or_else(|e| panic!("open the {schema} store: {e}"))
    };
    Stores {
        ordering: open("ordering").await,
        shipping: open("shipping").await,
    }
}

async fn events<E: Event>(store: &PgEventStore, types: &[&'static str]) -> Vec<E> {
    let (_, events) = store
        .read(
            &Query::types(types.iter().copied()),
            ReadOptions::forwards(),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    events
        .iter()
        .map(|e| e.decode::<E>().unwrap().event)
        .collect()
}

/// Per order: its shipments scheduled in shipping.
async fn shipments(stores: &Stores) -> HashMap<Uuid, Vec<Uuid>> {
    let mut by_order: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for event in events::<ShippingEvent>(&stores.shipping, &["ShipmentScheduled"]).await {
        if let ShippingEvent::ShipmentScheduled {
            shipment, order, ..
        } = event
        {
            by_order.entry(order).or_default().push(shipment);
        }
    }
    by_order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_cross_to_shipping_and_back_once_each() {
    let db = TestDatabase::create().await;
    let stores = stores(&db).await;
    let managers = ProcessManagers::start(&stores).await.unwrap();

    // 40 customers at once; every fifth order is too large for shipping,
    // which ordering cannot know when it accepts the order.
    let mut placing = Vec::new();
    for n in 0..ORDERS {
        let maker = DecisionMaker::new(stores.ordering.clone());
        placing.push(tokio::spawn(async move {
            let order = Uuid::new_v4();
            let items = if n % 5 == 0 {
                MAX_ITEMS_PER_SHIPMENT + 1
            } else {
                1 + n % MAX_ITEMS_PER_SHIPMENT
            };
            maker.make(PlaceOrder { order, items }).await.unwrap();
            (order, items)
        }));
    }
    let mut orders = HashMap::new();
    for task in placing {
        let (order, items) = task.await.unwrap();
        orders.insert(order, items);
    }
    managers.catch_up().await.unwrap();

    let scheduled = shipments(&stores).await;
    let rejected: Vec<Uuid> = events::<OrderEvent>(&stores.ordering, &["OrderRejected"])
        .await
        .into_iter()
        .filter_map(|e| match e {
            OrderEvent::OrderRejected { order, .. } => Some(order),
            _ => None,
        })
        .collect();
    for (order, items) in &orders {
        if *items > MAX_ITEMS_PER_SHIPMENT {
            assert!(
                !scheduled.contains_key(order),
                "{order} is too large to ship"
            );
            assert_eq!(
                rejected.iter().filter(|r| *r == order).count(),
                1,
                "a refused order is rejected once"
            );
        } else {
            assert_eq!(
                scheduled.get(order).map(Vec::len),
                Some(1),
                "one shipment per order"
            );
            assert!(!rejected.contains(order));
        }
    }

    // The warehouse dispatches; the orders are marked shipped, once.
    let shipping = DecisionMaker::new(stores.shipping.clone());
    for shipment in scheduled.values().flatten() {
        shipping
            .make(DispatchShipment {
                shipment: *shipment,
            })
            .await
            .unwrap();
    }
    managers.catch_up().await.unwrap();
    let mut shipped: HashMap<Uuid, u32> = HashMap::new();
    for event in events::<OrderEvent>(&stores.ordering, &["OrderShipped"]).await {
        if let OrderEvent::OrderShipped { order, shipment } = event {
            assert_eq!(scheduled[&order], vec![shipment]);
            *shipped.entry(order).or_default() += 1;
        }
    }
    assert_eq!(shipped.len(), scheduled.len());
    assert!(shipped.values().all(|n| *n == 1), "{shipped:?}");

    // Every OrderPlaced handed to the process manager again (a reset):
    // nothing new happens anywhere.
    let heads = (
        stores.ordering.head().await.unwrap(),
        stores.shipping.head().await.unwrap(),
    );
    managers
        .to_shipping
        .reset(SHIP_PLACED_ORDERS)
        .await
        .unwrap();
    managers.catch_up().await.unwrap();
    assert_eq!(
        (
            stores.ordering.head().await.unwrap(),
            stores.shipping.head().await.unwrap()
        ),
        heads,
        "a replay of the process manager appends nothing"
    );
    assert_eq!(shipments(&stores).await, scheduled);

    // Two logs: each store numbers its own events from 1, and neither
    // store's reads (so neither store's conditions) see the other's events.
    for store in [&stores.ordering, &stores.shipping] {
        let (_, first) = store
            .read(&Query::all(), ReadOptions::forwards().limit(1))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(first[0].position.0, 1);
    }
    assert!(
        events::<ShippingEvent>(&stores.ordering, &["ShipmentScheduled"])
            .await
            .is_empty()
    );
    assert!(events::<OrderEvent>(&stores.shipping, &["OrderPlaced"])
        .await
        .is_empty());

    println!(
        "{} orders: {} shipped, {} rejected by shipping; a replay appended nothing",
        orders.len(),
        shipped.len(),
        rejected.len()
    );
    managers.shutdown().await;
    stores.ordering.shutdown().await;
    stores.shipping.shutdown().await;
    db.cleanup().await;
}
