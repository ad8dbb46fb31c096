use dcb_core::Event;

#[derive(serde::Serialize, serde::Deserialize)]
struct CartId(u64);

#[derive(Event)]
enum CartEvent {
    Created {
        #[id]
        cart_id: CartId,
    },
}

fn main() {}
