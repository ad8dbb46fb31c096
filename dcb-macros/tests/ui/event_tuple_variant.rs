use dcb_core::Event;

#[derive(Event)]
enum CartEvent {
    Created(String),
}

fn main() {}
