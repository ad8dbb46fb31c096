use dcb_core::Event;

#[derive(Event)]
#[stream(CartLifecycle, Created, Cleared)]
#[stream(Empty, [])]
#[stream]
enum CartEvent {
    Created {
        #[id]
        cart_id: String,
    },
    Cleared,
}

fn main() {}
