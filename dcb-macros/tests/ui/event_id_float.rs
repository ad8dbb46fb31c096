use dcb_core::Event;

#[derive(Event)]
enum PriceEvent {
    Changed {
        #[id]
        price: f64,
    },
}

fn main() {}
