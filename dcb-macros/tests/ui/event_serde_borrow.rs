use dcb_core::Event;

#[derive(Event)]
enum NoteEvent {
    Written {
        #[serde(borrow)]
        text: String,
    },
}

fn main() {}
