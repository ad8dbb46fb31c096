//! `dcb dead-messages`: the Kafka records translators recorded as dead;
//! redrive sends them to their topic again (see `dcb_console::kafka`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use dcb_console::kafka::{self, DeadFilter};
use dcb_console::Ops;
use dcb_kafka::{KafkaConfig, Publisher};

use crate::output::{emit, json_pretty};
use crate::table::{cell, Table};

#[derive(Subcommand)]
pub enum DeadCommand {
    /// Dead records, newest first.
    List {
        #[command(flatten)]
        filter: Which,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Prints JSON (with each record's key and payload).
        #[arg(long)]
        json: bool,
    },
    /// Sends dead records to their topic again (a new record, with the same key
    /// and payload), and forgets each once the broker acknowledged it.
    Redrive(RedriveArgs),
}

#[derive(Args)]
pub struct Which {
    /// Only this consumer group's.
    #[arg(long)]
    group: Option<String>,
    /// Only this topic's.
    #[arg(long)]
    topic: Option<String>,
}

#[derive(Args)]
pub struct RedriveArgs {
    /// The record key of the dead record (the `record_key` that `list --json`
    /// prints); needs --group.
    #[arg(long, requires = "group", conflicts_with = "all")]
    record_key: Option<String>,
    /// Every dead record (of --group and --topic, when given).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filter: Which,
    /// The Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
}

pub async fn run(ops: &Ops, command: DeadCommand) -> Result<ExitCode, dcb_console::Error> {
    if !ops.components().await?.kafka {
        return Err(dcb_console::Error::NotFound(format!(
            "schema {} has no Kafka tables (no translator or relay of dcb-kafka has run on it)",
            ops.schema()
        )));
    }
    match command {
        DeadCommand::List {
            filter,
            limit,
            json,
        } => {
            let records = kafka::dead_records(
                ops,
                &DeadFilter {
                    group: filter.group,
                    topic: filter.topic,
                    limit: limit.max(1),
                },
            )
            .await?;
            if json {
                emit(&json_pretty(&records));
            } else if records.is_empty() {
                emit("No dead record.\n");
            } else {
                let mut table = Table::new(&[
                    "group",
                    "topic",
                    ">partition",
                    ">offset",
                    "kind",
                    "recorded",
                    "reason",
                    "key",
                ]);
                for r in &records {
                    table.row(vec![
                        r.group.clone(),
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.offset.to_string(),
                        r.kind.clone(),
                        r.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        cell(&r.reason, 60),
                        cell(r.key.as_deref().unwrap_or(""), 40),
                    ]);
                }
                emit(&table.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadCommand::Redrive(args) => redrive(ops, args).await,
    }
}

async fn redrive(ops: &Ops, args: RedriveArgs) -> Result<ExitCode, dcb_console::Error> {
    let brokers = args
        .brokers
        .filter(|b| !b.trim().is_empty())
        .ok_or_else(|| {
            dcb_console::Error::Invalid(
                "redrive sends records to Kafka: set KAFKA_BROKERS or pass --brokers".into(),
            )
        })?;
    let targets: Vec<(String, String)> = match (&args.record_key, args.all) {
        (Some(key), _) => vec![(args.filter.group.clone().unwrap_or_default(), key.clone())],
        (None, true) => kafka::dead_records(
            ops,
            &DeadFilter {
                group: args.filter.group.clone(),
                topic: args.filter.topic.clone(),
                limit: 100_000,
            },
        )
        .await?
        .into_iter()
        .map(|r| (r.group, r.record_key))
        .collect(),
        (None, false) => {
            return Err(dcb_console::Error::Invalid(
                "name a record with --group G --record-key K, or pass --all".into(),
            ))
        }
    };
    let publisher = Publisher::new(&KafkaConfig::new(brokers))?;
    let mut sent = 0;
    for (group, key) in &targets {
        let done = kafka::redrive(ops, &publisher, group, key).await?;
        sent += 1;
        emit(&format!(
            "{key} ({group}): sent to {} again, partition {}, offset {}\n",
            done.topic, done.partition, done.offset
        ));
    }
    emit(&format!("{sent} dead records redriven\n"));
    Ok(ExitCode::SUCCESS)
}
