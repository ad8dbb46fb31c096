//! The `dcb` command.

fn main() {}
