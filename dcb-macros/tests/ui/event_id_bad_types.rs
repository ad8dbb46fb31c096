use dcb_core::Event;

#[derive(Event)]
enum OrderEvent {
    Placed {
        #[id]
        key: (String, u32),
        #[id]
        paid: bool,
        #[id]
        lines: [u32; 3],
        #[id]
        coupon: Option<Option<String>>,
        #[id]
        groups: Vec<Vec<String>>,
    },
}

fn main() {}
