use dcb_core::{Event, Query};

#[derive(Event)]
enum CartEvent {
    CartCreated {
        #[id]
        cart_id: String,
    },
    PriceChanged {
        #[id]
        product_id: String,
    },
}

fn main() {
    // A typo in an event type is a compile error, not a query that
    // silently matches nothing.
    let _ = Query::types([CartEventType::PriceChange]);
}
