use dcb_core::{Event, StateQuery};

#[derive(Event)]
enum CartEvent {
    Created {
        #[id]
        cart_id: String,
    },
}

#[derive(StateQuery)]
#[state_query(CartEvent)]
enum Cart {
    Open,
    Closed,
}

fn main() {}
