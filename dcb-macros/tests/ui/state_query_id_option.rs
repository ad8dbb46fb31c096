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
struct Cart {
    #[id]
    cart_id: Option<String>,
}

fn main() {}
