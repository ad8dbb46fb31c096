//! `dcb status`.

use std::process::ExitCode;

use clap::Args;
use dcb_console::status::Status;
use dcb_console::Ops;

use crate::output::{emit, json_pretty};
use crate::table::{cell, secs, Table};

#[derive(Args)]
pub struct StatusArgs {
    /// Prints the status as JSON (for scripts and alerts).
    #[arg(long)]
    json: bool,
}

pub async fn run(ops: &Ops, args: StatusArgs) -> Result<ExitCode, dcb_console::Error> {
    let status = Status::read(ops).await?;
    if args.json {
        emit(&json_pretty(&status));
    } else {
        emit(&render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(status: &Status) -> String {
    let mut out = format!(
        "schema {}, head of the log at position {}\n\n",
        status.schema,
        status.head.unwrap_or(0)
    );
    if status.listeners.is_empty() {
        out.push_str("No listener runner has run on this schema.\n");
    } else {
        let mut table = Table::new(&[
            "listener",
            "state",
            ">position",
            ">lag",
            ">lag time",
            ">parked",
            "leader",
            "last error",
        ]);
        for l in &status.listeners {
            table.row(vec![
                l.name.clone(),
                l.state.clone(),
                l.position.to_string(),
                l.lag_events.to_string(),
                secs(l.lag_seconds),
                l.parked.to_string(),
                l.leader.clone().unwrap_or_else(|| "-".to_owned()),
                cell(l.last_error.as_deref().unwrap_or(""), 60),
            ]);
        }
        out.push_str(&table.render());
    }
    out.push('\n');
    if status.queues.is_empty() {
        out.push_str("No jobs.\n");
    } else {
        let mut table = Table::new(&[
            "queue",
            ">ready",
            ">scheduled",
            ">running",
            ">succeeded",
            ">dead",
            ">cancelled",
            ">oldest ready",
        ]);
        for q in &status.queues {
            let c = &q.counts;
            table.row(vec![
                q.name.clone(),
                c.ready.to_string(),
                c.scheduled.to_string(),
                c.running.to_string(),
                c.succeeded.to_string(),
                c.dead.to_string(),
                c.cancelled.to_string(),
                secs(q.oldest_ready_age_seconds),
            ]);
        }
        out.push_str(&table.render());
    }
    if let Some(kafka) = &status.kafka {
        out.push('\n');
        out.push_str(&format!("Kafka: {} dead records", kafka.dead_records));
        let by_topic: Vec<String> = kafka
            .dead_by_topic
            .iter()
            .map(|c| format!("{} on {}: {}", c.group, c.topic, c.count))
            .collect();
        if !by_topic.is_empty() {
            out.push_str(&format!(" ({})", by_topic.join(", ")));
        }
        out.push('\n');
        if !kafka.relays.is_empty() {
            let mut table = Table::new(&["relay", ">position", ">lag", "publishing", "last error"]);
            for r in &kafka.relays {
                table.row(vec![
                    r.name.clone(),
                    r.position.to_string(),
                    r.lag_events.to_string(),
                    if r.live {
                        r.owner.clone().unwrap_or_default()
                    } else {
                        "no live instance".to_owned()
                    },
                    cell(r.last_error.as_deref().unwrap_or(""), 60),
                ]);
            }
            out.push_str(&table.render());
        }
    }
    out
}
