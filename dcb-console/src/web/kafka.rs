//! Kafka: the relays' lag and the records translators recorded as dead,
//! with redrive when the console has a Kafka producer.

use axum::extract::{Form, Query};
use axum::response::{IntoResponse, Response};
use dcb_core::EventStore;
use maud::html;
use serde::Deserialize;

use super::page::{see, when, Page, PageError, PageResult, Section};
use super::{Base, State};
use crate::kafka::{self, DeadFilter};

#[derive(Deserialize, Default)]
pub(crate) struct Params {
    group: Option<String>,
    topic: Option<String>,
    flash: Option<String>,
}

pub(crate) async fn show(
    axum::extract::State(shared): State,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult {
    let ops = &shared.ops;
    let page = Page {
        base: &base,
        title: "Kafka",
        section: Section::Kafka,
        schema: ops.schema(),
        refresh: None,
        flash: params.flash.as_deref(),
    };
    if !ops.components().await?.kafka {
        return Ok(page.render(html! {
            h1 { "Kafka" }
            p.muted { "This schema has no Kafka tables: no translator or relay of dcb-kafka has run on it." }
        }));
    }
    let head = ops.store().head().await?.map_or(0, |p| p.0);
    let relays = kafka::relays(ops, head).await?;
    let counts = kafka::dead_record_counts(ops).await?;
    let text = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let filter = DeadFilter {
        group: text(&params.group),
        topic: text(&params.topic),
        limit: 200,
    };
    let dead = kafka::dead_records(ops, &filter).await?;
    let can_redrive = shared.publisher.is_some();
    Ok(page.render(html! {
        h1 { "Kafka" }
        h2 { "Relays" }
        @if relays.is_empty() {
            p.muted { "No relay has run on this schema." }
        } @else {
            table #relays {
                tr { th { "relay" } th.num { "position" } th.num { "lag (events)" } th { "publishing" } th { "last error" } th { "changed (UTC)" } }
                @for r in &relays {
                    tr {
                        td { (r.name) }
                        td.num { (r.position) }
                        td.num { (r.lag_events) }
                        td.mono { @if r.live { (r.owner.as_deref().unwrap_or("")) } @else { span.muted { "no live instance" } } }
                        td { (r.last_error.as_deref().unwrap_or("")) }
                        td.mono { (when(&r.updated_at)) }
                    }
                }
            }
        }
        h2 { "Dead records" }
        @if counts.is_empty() {
            p.muted { "None." }
        } @else {
            table {
                tr { th { "group" } th { "topic" } th.num { "dead records" } }
                @for c in &counts {
                    tr {
                        td { (c.group) } td { (c.topic) }
                        td.num { a href=(base.at(&format!("/kafka?group={}&topic={}",
                            super::page::encode(&c.group), super::page::encode(&c.topic)))) { (c.count) } }
                    }
                }
            }
            @if !can_redrive {
                p.muted { "Redrive needs a Kafka producer: this console was started without Kafka." }
            }
            h2 { "Records" @if let Some(g) = &filter.group { " of group " (g) } @if let Some(t) = &filter.topic { " on " (t) } }
            table #dead-records {
                tr { th { "group" } th { "topic" } th.num { "partition" } th.num { "offset" } th { "kind" } th { "reason" } th { "key" } th { "payload" } th { "recorded (UTC)" } th { "" } }
                @for d in &dead {
                    tr {
                        td { (d.group) }
                        td { (d.topic) }
                        td.num { (d.partition) }
                        td.num { (d.offset) }
                        td { (d.kind) }
                        td { (d.reason) }
                        td.mono.wrap { (d.key.as_deref().unwrap_or("")) }
                        td.mono.wrap { (crate::events::cut(d.payload.as_deref().unwrap_or(""), 200)) }
                        td.mono { (when(&d.recorded_at)) }
                        td {
                            @if can_redrive {
                                form.inline method="post" action=(base.at("/kafka/redrive")) {
                                    input type="hidden" name="group" value=(d.group);
                                    input type="hidden" name="record_key" value=(d.record_key);
                                    button.primary type="submit" { "Redrive" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }))
}

#[derive(Deserialize)]
pub(crate) struct RedriveForm {
    group: String,
    record_key: String,
}

pub(crate) async fn redrive(
    axum::extract::State(shared): State,
    base: Base,
    Form(form): Form<RedriveForm>,
) -> Result<Response, PageError> {
    let publisher = shared.publisher.as_ref().ok_or_else(|| {
        PageError::bad_request("this console has no Kafka producer: it cannot redrive")
    })?;
    let done = kafka::redrive(&shared.ops, publisher, &form.group, &form.record_key).await?;
    let flash = format!(
        "sent to {} again (partition {}, offset {})",
        done.topic, done.partition, done.offset
    );
    Ok(see(&base, "/kafka", &flash).into_response())
}
