//! The event explorer: filter the log by type, tags, position, correlation
//! or causation id; an event's details with its payload, metadata and the
//! events related to it.

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Redirect, Response};
use dcb_core::Tag;
use maud::{html, Markup};
use serde::Deserialize;
use uuid::Uuid;

use super::page::{encode, when, Page, PageError, PageResult, Section};
use super::{Base, State};
use crate::events::{self, EventFilter, EventView};

/// The explorer's form, as sent (every field text: a bad value gets a
/// message, not a rejection).
#[derive(Deserialize, Default, Clone)]
pub(crate) struct Params {
    /// Event types, separated by commas or spaces.
    #[serde(rename = "type")]
    types: Option<String>,
    /// Tags `key:value`, separated by spaces (all must match).
    tag: Option<String>,
    after: Option<String>,
    order: Option<String>,
    limit: Option<String>,
    correlation: Option<String>,
    causation: Option<String>,
}

impl Params {
    fn filter(&self) -> Result<EventFilter, String> {
        fn text(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        let mut filter = EventFilter::new().limit(50);
        if let Some(types) = text(&self.types) {
            filter.types = types
                .split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(tags) = text(&self.tag) {
            for tag in tags.split_whitespace() {
                filter.tags.push(
                    Tag::parse(tag)
                        .map_err(|_| format!("{tag:?} is not a tag: write key:value"))?,
                );
            }
        }
        if let Some(after) = text(&self.after) {
            filter.after = Some(
                after
                    .parse()
                    .map_err(|_| format!("{after:?} is not a position"))?,
            );
        }
        if let Some(limit) = text(&self.limit) {
            filter.limit = limit
                .parse::<usize>()
                .map_err(|_| format!("{limit:?} is not a number"))?
                .clamp(1, events::MAX_LIMIT);
        }
        filter.backwards = text(&self.order) == Some("newest");
        let uuid = |v: &Option<String>, what: &str| {
            text(v)
                .map(|s| {
                    s.parse::<Uuid>()
                        .map_err(|_| format!("{s:?} is not a {what} id"))
                })
                .transpose()
        };
        filter.correlation_id = uuid(&self.correlation, "correlation")?;
        filter.causation_id = uuid(&self.causation, "causation")?;
        Ok(filter)
    }

    /// This query string with `after` set to `position`.
    fn with_after(&self, position: u64) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        let mut push = |key, value: &Option<String>| {
            if let Some(v) = value.as_deref().filter(|v| !v.trim().is_empty()) {
                pairs.push((key, v.to_owned()));
            }
        };
        push("type", &self.types);
        push("tag", &self.tag);
        push("order", &self.order);
        push("limit", &self.limit);
        push("correlation", &self.correlation);
        push("causation", &self.causation);
        pairs.push(("after", position.to_string()));
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// A link to the explorer filtered by one field.
pub(crate) fn filtered(base: &Base, key: &str, value: &str) -> String {
    base.at(&format!("/events?{key}={}", encode(value)))
}

/// A link to the event at `position`.
pub(crate) fn event_link(base: &Base, position: u64) -> String {
    base.at(&format!("/events/{position}"))
}

pub(crate) async fn list(
    axum::extract::State(shared): State,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult {
    let ops = &shared.ops;
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let (page, error) = match params.filter() {
        Ok(filter) => (Some((events::read(ops, &filter).await?, filter)), None),
        Err(message) => (None, Some(message)),
    };
    let body = html! {
        h1 { "Events" }
        form.filters method="get" action=(base.at("/events")) {
            label { "Types (any of)" input name="type" value=(value(&params.types)) placeholder="CartItemAdded, CartCreated" size="28"; }
            label { "Tags (all of)" input name="tag" value=(value(&params.tag)) placeholder="cart_id:…" size="40"; }
            label { "After position" input name="after" value=(value(&params.after)) size="8"; }
            label { "Order"
                select name="order" {
                    option value="oldest" selected[params.order.as_deref() != Some("newest")] { "oldest first" }
                    option value="newest" selected[params.order.as_deref() == Some("newest")] { "newest first" }
                }
            }
            label { "Limit" input name="limit" value=(value(&params.limit)) placeholder="50" size="4"; }
            label { "Correlation id" input name="correlation" value=(value(&params.correlation)) size="36"; }
            label { "Causation id" input name="causation" value=(value(&params.causation)) size="36"; }
            button.primary type="submit" { "Show" }
        }
        @if let Some(error) = &error {
            div.error { (error) }
        }
        @if let Some((page, filter)) = &page {
            p.muted {
                "Head of the log: " (page.head.unwrap_or(0)) ". "
                @if let Some(from) = page.window_from {
                    "Searched positions " (from) " to the head only (metadata has no index). "
                }
                (page.events.len()) " events shown."
            }
            (events_table(&base, &page.events))
            @if let Some(last) = page.events.last() {
                @if page.events.len() >= filter.limit.max(1) {
                    div.pager {
                        a href=(base.at(&format!("/events?{}", params.with_after(last.position)))) {
                            @if filter.backwards { "older →" } @else { "newer →" }
                        }
                    }
                }
            }
        }
    };
    Ok(Page {
        base: &base,
        title: "Events",
        section: Section::Events,
        schema: ops.schema(),
        refresh: None,
        flash: None,
    }
    .render(body))
}

fn events_table(base: &Base, events: &[EventView]) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No event matches." }
        } @else {
            table #events {
                tr { th.num { "position" } th { "recorded (UTC)" } th { "type" } th { "tags" } th { "payload" } }
                @for e in events {
                    tr data-position=(e.position) {
                        td.num { a href=(event_link(base, e.position)) { (e.position) } }
                        td.mono { (when(&e.recorded_at)) }
                        td { a href=(filtered(base, "type", &e.event_type)) { (e.event_type) } }
                        td.mono {
                            @for tag in &e.tags {
                                a href=(filtered(base, "tag", tag)) { (tag) } " "
                            }
                        }
                        td.mono.wrap { (e.payload_line(140)) }
                    }
                }
            }
        }
    }
}

pub(crate) async fn show(
    axum::extract::State(shared): State,
    base: Base,
    Path(position): Path<String>,
) -> PageResult {
    let ops = &shared.ops;
    let position: u64 = position
        .parse()
        .map_err(|_| PageError::bad_request(format!("{position:?} is not a position")))?;
    let event = events::at(ops, position)
        .await?
        .ok_or_else(|| PageError::not_found(format!("no event at position {position}")))?;
    let title = format!("Event {position}");
    let body = html! {
        h1 { "Event " (event.position) " · " (event.event_type) }
        div.pager {
            @if position > 1 { a href=(event_link(&base, position - 1)) { "← previous" } }
            a href=(event_link(&base, position + 1)) { "next →" }
        }
        dl.facts {
            dt { "position" } dd { (event.position) }
            dt { "recorded (UTC)" } dd { (when(&event.recorded_at)) }
            dt { "type" } dd { a href=(filtered(&base, "type", &event.event_type)) { (event.event_type) } }
            dt { "tags" } dd.mono {
                @for tag in &event.tags { a href=(filtered(&base, "tag", tag)) { (tag) } " " }
            }
            dt { "event id" } dd.mono { (event.event_id) }
            dt { "correlation id" } dd.mono {
                @if let Some(id) = event.correlation_id {
                    (id) " · " a href=(filtered(&base, "correlation", &id.to_string())) { "events with this correlation id" }
                } @else { span.muted { "none" } }
            }
            dt { "causation id" } dd.mono {
                @if let Some(id) = event.causation_id {
                    (id) " · " a href=(base.at(&format!("/events/id/{id}"))) { "the event that caused it" }
                    " · " a href=(filtered(&base, "causation", &id.to_string())) { "events with the same cause" }
                } @else { span.muted { "none" } }
            }
            dt { "caused" } dd {
                a href=(filtered(&base, "causation", &event.event_id.to_string())) { "events this one caused" }
            }
        }
        h2 { "Payload" }
        pre #payload { (event.payload_pretty()) }
        @if let Some(user) = &event.user_metadata {
            h2 { "Metadata" }
            pre #metadata { (serde_json::to_string_pretty(user).unwrap_or_default()) }
        }
    };
    Ok(Page {
        base: &base,
        title: &title,
        section: Section::Events,
        schema: ops.schema(),
        refresh: None,
        flash: None,
    }
    .render(body))
}

pub(crate) async fn by_id(
    axum::extract::State(shared): State,
    base: Base,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| PageError::bad_request(format!("{id:?} is not an event id")))?;
    let event = events::by_id(&shared.ops, id).await?.ok_or_else(|| {
        PageError::not_found(format!(
            "no event with id {id} (it may have come from outside the log, e.g. a Kafka message)"
        ))
    })?;
    Ok(Redirect::to(&event_link(&base, event.position)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_a_filter_or_a_message() {
        let params = Params {
            types: Some("A, B".into()),
            tag: Some("cart_id:1 item_id:2".into()),
            after: Some("10".into()),
            order: Some("newest".into()),
            limit: Some("5000".into()),
            ..Params::default()
        };
        let filter = params.filter().unwrap();
        assert_eq!(filter.types, ["A", "B"]);
        assert_eq!(filter.tags.len(), 2);
        assert_eq!(filter.after, Some(10));
        assert!(filter.backwards);
        assert_eq!(filter.limit, events::MAX_LIMIT);
        let bad = Params {
            tag: Some("nocolon".into()),
            ..Params::default()
        };
        assert!(bad.filter().unwrap_err().contains("key:value"));
        let bad = Params {
            correlation: Some("x".into()),
            ..Params::default()
        };
        assert!(bad.filter().is_err());
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let params = Params {
            tag: Some("cart_id:a b".into()),
            after: Some("3".into()),
            ..Params::default()
        };
        assert_eq!(params.with_after(9), "tag=cart_id%3Aa%20b&after=9");
    }
}
