//! `dcb events`: the log, filtered, one line per event (or JSON Lines), and
//! `--follow` to keep printing events as they are appended.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dcb_console::events::{self, EventFilter, EventView, MAX_LIMIT};
use dcb_console::Ops;
use dcb_core::Tag;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::output::{emit, json_line};
use crate::table::cell;

#[derive(Args)]
pub struct EventsArgs {
    /// Only events of this type (repeat for any of several types).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only events with this tag, key:value (repeat: events with all of them).
    #[arg(long = "tag", value_name = "KEY:VALUE", value_parser = parse_tag)]
    tags: Vec<Tag>,
    /// Start after this position (with --backwards: before it).
    #[arg(long, value_name = "POSITION")]
    after: Option<u64>,
    /// Newest first, from the head (or from before --after / --before).
    #[arg(long, conflicts_with = "follow")]
    backwards: bool,
    /// Newest first, starting before this position (same as --backwards --after).
    #[arg(long, value_name = "POSITION", conflicts_with_all = ["after", "follow"])]
    before: Option<u64>,
    /// At most this many events (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keeps printing new events as they are appended (from --after, else from
    /// the head), until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only events with this correlation id (searches the latest 200,000 positions).
    #[arg(long, value_name = "UUID")]
    correlation: Option<Uuid>,
    /// Only events with this causation id (same bound).
    #[arg(long, value_name = "UUID")]
    causation: Option<Uuid>,
    /// One JSON object per event and line, with the whole record.
    #[arg(long)]
    json: bool,
}

fn parse_tag(text: &str) -> Result<Tag, String> {
    Tag::parse(text).map_err(|_| format!("{text:?} is not a tag: write key:value"))
}

impl EventsArgs {
    fn filter(&self) -> EventFilter {
        let mut filter = EventFilter::new().limit(self.limit.clamp(1, MAX_LIMIT));
        filter.types = self.types.clone();
        filter.tags = self.tags.clone();
        filter.after = self.after.or(self.before);
        filter.backwards = self.backwards || self.before.is_some();
        filter.correlation_id = self.correlation;
        filter.causation_id = self.causation;
        filter
    }
}

fn line(event: &EventView, json: bool) -> String {
    if json {
        return json_line(event);
    }
    format!(
        "{:>8}  {}  {}  {}  {}\n",
        event.position,
        event.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        event.event_type,
        event.tags.join(","),
        cell(&event.payload_line(400), 160),
    )
}

pub async fn run(ops: &Ops, args: EventsArgs) -> Result<ExitCode, dcb_console::Error> {
    let filter = args.filter();
    if !args.follow {
        let page = events::read(ops, &filter).await?;
        for event in &page.events {
            if !emit(&line(event, args.json)) {
                break;
            }
        }
        if let Some(from) = page.window_from {
            eprintln!("(searched positions {from} to the head only: event metadata has no index)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(ops, filter, args.json).await
}

/// Prints every matching event after the start, then waits for the store's
/// notification (or a second) and prints what came since, until Ctrl-C.
async fn follow(
    ops: &Ops,
    filter: EventFilter,
    json: bool,
) -> Result<ExitCode, dcb_console::Error> {
    let mut after = match filter.after {
        Some(p) => p,
        None => dcb_core::EventStore::head(ops.store())
            .await?
            .map_or(0, |p| p.0),
    };
    let mut listener = PgListener::connect_with(ops.pool()).await?;
    listener.listen(&ops.store().notify_channel()).await?;
    let page_size = MAX_LIMIT;
    loop {
        let page = events::read(ops, &filter.clone().after(after).limit(page_size)).await?;
        for event in &page.events {
            if !emit(&line(event, json)) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let full = page.events.len() >= page_size;
        after = match (page.events.last(), full) {
            (Some(last), true) => last.position,
            // A partial page saw everything up to the head it read.
            _ => page.head.unwrap_or(after).max(after),
        };
        if full {
            continue;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::timeout(Duration::from_secs(1), listener.recv()) => {}
        }
    }
}
