use dcb_core::Event;

#[derive(Event)]
enum CartEvent {
    Created {
        #[id]
        cart_id: String,
    },
    #[event(rename = "Created")]
    Recreated {
        #[id]
        cart_id: String,
    },
}

fn main() {}
