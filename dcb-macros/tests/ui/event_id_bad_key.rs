use dcb_core::Event;

#[derive(Event)]
enum TransferEvent {
    Sent {
        #[id(key = "account:from")]
        from: String,
        #[id(key = "")]
        to: String,
        #[id(key = "Account")]
        by: String,
        #[id(name = "x")]
        reference: String,
        #[id = "x"]
        note: String,
    },
}

fn main() {}
