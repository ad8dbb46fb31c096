use dcb_core::{Event, StateQuery};

#[derive(Event)]
enum CartEvent {
    Created {
        #[id]
        cart_id: String,
    },
}

struct CartId(u64);

#[derive(StateQuery)]
#[state_query(CartEvent)]
struct Cart {
    #[id]
    cart_id: CartId,
}

fn main() {}
