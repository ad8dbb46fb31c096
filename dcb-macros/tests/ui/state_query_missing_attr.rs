use dcb_core::{Event, StateQuery};

#[derive(Event)]
enum CartEvent {
    Created {
        #[id]
        cart_id: String,
    },
}

#[derive(StateQuery)]
struct Cart {
    #[id]
    cart_id: String,
}

fn main() {}
