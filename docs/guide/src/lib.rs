//! The user guide's code. Each chapter of the book (`docs/src`) is the
//! documentation of one module below, so `cargo test -p dcb-guide` compiles
//! every Rust block of the guide and runs those that need no service (the
//! ones marked `no_run` need PostgreSQL or Kafka: their code runs for real
//! in `examples/guide-snippets`, whose tests start it against both).
//!
//! The book itself is built with `mdbook build docs`.

macro_rules! chapters {
    ($($module:ident => $file:literal),* $(,)?) => {
        $(
            #[doc = include_str!(concat!("../../src/", $file))]
            pub mod $module {}
        )*
    };
}

chapters! {
    introduction => "introduction.md",
    install => "install.md",
    first_decision => "first-decision.md",
    postgres => "postgres.md",
    projection => "projection.md",
    automation => "automation.md",
    work_queue => "work-queue.md",
    relay => "relay.md",
    translator => "translator.md",
    snapshots => "snapshots.md",
    upgrading_events => "upgrading-events.md",
    testing => "testing.md",
    operating => "operating.md",
    guarantees => "guarantees/README.md",
    guarantees_positions => "guarantees/positions.md",
    guarantees_conditional_appends => "guarantees/conditional-appends.md",
    guarantees_append_outcomes => "guarantees/append-outcomes.md",
    guarantees_listeners => "guarantees/listeners.md",
    guarantees_queue => "guarantees/queue.md",
    guarantees_relay => "guarantees/relay.md",
    guarantees_translator => "guarantees/translator.md",
    publishing => "publishing.md",
}

/// Every chapter of `SUMMARY.md` is included above (a chapter added to the
/// book but not here would go untested).
#[cfg(test)]
mod tests {
    #[test]
    fn every_chapter_is_tested() {
        let summary = include_str!("../../src/SUMMARY.md");
        let lib = include_str!("lib.rs");
        for line in summary.lines() {
            if let Some(start) = line.find("](") {
                let file = &line[start + 2..line.len() - 1];
                assert!(
                    lib.contains(&format!("\"{file}\"")),
                    "chapter {file} is in SUMMARY.md but not in docs/guide/src/lib.rs"
                );
            }
        }
    }
}
