use dcb_core::Event;

#[derive(Event)]
struct CartCreated {
    #[id]
    cart_id: String,
}

fn main() {}
