//! The overview: the head, throughput, every listener's lag, every queue's
//! depth, Kafka's dead records and relays.

use axum::extract::Query;
use maud::{html, Markup};
use serde::Deserialize;

use super::page::{badge, encode, opt_secs, Page, PageResult, Section};
use super::{Base, State};
use crate::status::Status;

#[derive(Deserialize, Default)]
pub(crate) struct Params {
    refresh: Option<u32>,
    flash: Option<String>,
}

pub(crate) async fn show(
    axum::extract::State(shared): State,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult {
    let ops = &shared.ops;
    let status = Status::read(ops).await?;
    let head = status.head.unwrap_or(0);
    let (last_minute, last_five) = crate::events::throughput(ops, head).await?;
    let max_lag = status.listeners.iter().map(|l| l.lag_events).max();
    let troubled = status
        .listeners
        .iter()
        .filter(|l| matches!(l.state.as_str(), "blocked" | "retrying"))
        .count();
    let parked: u64 = status.listeners.iter().map(|l| l.parked).sum();
    let ready: u64 = status.queues.iter().map(|q| q.counts.ready).sum();
    let oldest = status
        .queues
        .iter()
        .filter_map(|q| q.oldest_ready_age_seconds)
        .fold(None, |max: Option<f64>, s| {
            Some(max.map_or(s, |m| m.max(s)))
        });
    let body = html! {
        h1 { "Overview" }
        div.cards {
            (card("Head position", &head.to_string(), None))
            (card("Events, last minute", &last_minute.to_string(),
                Some(&format!("{last_five} in the last 5 minutes"))))
            (card("Largest listener lag", &max_lag.map_or("–".to_owned(), |l| format!("{l} events")),
                Some(&format!("{} listeners, {troubled} failing, {parked} parked events", status.listeners.len()))))
            (card("Jobs ready", &ready.to_string(),
                Some(&format!("oldest waits {}", opt_secs(oldest)))))
            (card("Dead jobs", &status.dead_jobs().to_string(), None))
            @if let Some(kafka) = &status.kafka {
                (card("Kafka dead records", &kafka.dead_records.to_string(), None))
            }
        }
        p.muted {
            @match params.refresh {
                Some(_) => { "Reloading every few seconds. " a href=(base.at("/")) { "Stop" } }
                None => { a href=(base.at("/?refresh=5")) { "Reload every 5 s" } }
            }
        }
        h2 { "Listeners" }
        (listeners_table(&base, &status))
        h2 { "Queues" }
        (queues_table(&base, &status))
        @if let Some(kafka) = &status.kafka {
            h2 { "Kafka relays" }
            @if kafka.relays.is_empty() {
                p.muted { "No relay has run on this schema." }
            } @else {
                table {
                    tr { th { "relay" } th.num { "position" } th.num { "lag (events)" } th { "publishing" } th { "last error" } }
                    @for relay in &kafka.relays {
                        tr {
                            td { (relay.name) }
                            td.num { (relay.position) }
                            td.num { (relay.lag_events) }
                            td { @if relay.live { (relay.owner.as_deref().unwrap_or("")) } @else { span.muted { "no live instance" } } }
                            td { (relay.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(Page {
        base: &base,
        title: "Overview",
        section: Section::Overview,
        schema: ops.schema(),
        refresh: params.refresh.map(|s| s.clamp(2, 3600)),
        flash: params.flash.as_deref(),
    }
    .render(body))
}

fn card(label: &str, value: &str, note: Option<&str>) -> Markup {
    html! {
        div.card {
            div.label { (label) }
            div.value { (value) }
            @if let Some(note) = note { div.muted { (note) } }
        }
    }
}

/// Every listener with its lag (the overview's and the listeners page's
/// table).
pub(crate) fn listeners_table(base: &Base, status: &Status) -> Markup {
    html! {
        @if status.listeners.is_empty() {
            p.muted { "No listener runner has run on this schema." }
        } @else {
            table #listeners {
                tr {
                    th { "listener" } th { "state" } th.num { "position" } th.num { "lag (events)" }
                    th.num { "lag (time)" } th.num { "parked" } th { "leader" } th { "last error" }
                }
                @for l in &status.listeners {
                    tr data-listener=(l.name) {
                        td { a href=(base.at(&format!("/listeners/{}", encode(&l.name)))) { (l.name) } }
                        td { (badge(&l.state)) }
                        td.num { (l.position) }
                        td.num.lag { (l.lag_events) }
                        td.num { (opt_secs(l.lag_seconds)) }
                        td.num { (l.parked) }
                        td.mono { (l.leader.as_deref().unwrap_or("–")) }
                        td { (crate::events::cut(l.last_error.as_deref().unwrap_or(""), 120)) }
                    }
                }
            }
        }
    }
}

/// Every queue's jobs by state.
pub(crate) fn queues_table(base: &Base, status: &Status) -> Markup {
    let link = |queue: &str, state: &str, n: u64| {
        html! { a href=(base.at(&format!("/queue?queue={}&state={state}", encode(queue)))) { (n) } }
    };
    html! {
        @if status.queues.is_empty() {
            p.muted { "No jobs." }
        } @else {
            table #queues {
                tr {
                    th { "queue" } th.num { "ready" } th.num { "scheduled" } th.num { "running" }
                    th.num { "succeeded" } th.num { "dead" } th.num { "cancelled" } th.num { "oldest ready job" }
                }
                @for q in &status.queues {
                    tr data-queue=(q.name) {
                        td { a href=(base.at(&format!("/queue?queue={}", encode(&q.name)))) { (q.name) } }
                        td.num { (link(&q.name, "ready", q.counts.ready)) }
                        td.num { (q.counts.scheduled) }
                        td.num { (link(&q.name, "running", q.counts.running)) }
                        td.num { (link(&q.name, "succeeded", q.counts.succeeded)) }
                        td.num.dead { (link(&q.name, "dead", q.counts.dead)) }
                        td.num { (link(&q.name, "cancelled", q.counts.cancelled)) }
                        td.num { (opt_secs(q.oldest_ready_age_seconds)) }
                    }
                }
            }
        }
    }
}
