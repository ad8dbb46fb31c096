use dcb_core::{Event, StateMutate, StateQuery};

#[derive(Event, Debug, Clone)]
enum CartEvent {
    CartCreated {
        #[id]
        cart_id: String,
    },
}

/// `cart` is not a tag key of any cart event (they carry `cart_id`): this
/// state would read every cart's events.
#[derive(StateQuery)]
#[state_query(CartEvent)]
struct Cart {
    #[id]
    cart: String,
    created: bool,
}

impl StateMutate for Cart {
    fn mutate(&mut self, _: CartEvent) {
        self.created = true;
    }
}

fn main() {}
