use dcb_core::Event;

#[derive(Event)]
#[stream(CartLifecycle, [Created, Closed])]
enum CartEvent {
    Created {
        #[id]
        cart_id: String,
    },
    ItemAdded {
        #[id]
        cart_id: String,
    },
    Cleared,
}

fn main() {}
