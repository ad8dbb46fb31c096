use dcb_core::Event;

#[derive(Event)]
#[event(codek = dcb_core::JsonCodec)]
enum CartEvent {
    #[event(name = "Created")]
    Created {
        #[id]
        cart_id: String,
    },
}

fn main() {}
