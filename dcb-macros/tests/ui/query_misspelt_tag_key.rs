use dcb_core::{Event, QueryItem};

#[derive(Event)]
enum CartEvent {
    CartCreated {
        #[id]
        cart_id: String,
    },
}

fn main() {
    // A typo in a tag key is a compile error, not a query that silently
    // matches nothing.
    let _ = QueryItem::of::<CartEvent>().tags([CartEventTag::CartID.of("c1")]);
}
