use dcb_core::Event;

#[derive(Event)]
enum Wrapped<T> {
    Happened { value: T },
}

fn main() {}
