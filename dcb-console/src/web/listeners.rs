//! Listeners: every listener's lag and state; one listener's parked events
//! (retry, skip), reset and rebuild; a request's outcome and a rebuild's
//! live progress (the page reloads itself until the request is over).

use axum::extract::{Form, Path, Query};
use axum::response::{IntoResponse, Response};
use dcb_core::Position;
use dcb_postgres::listener::{ListenerRequest, RequestKind, RequestState};
use maud::html;
use serde::Deserialize;

use super::explorer::event_link;
use super::overview::listeners_table;
use super::page::{badge, encode, opt_secs, secs, see, when, Page, PageError, PageResult, Section};
use super::{Base, State};
use crate::status::{ListenerInfo, Status};

#[derive(Deserialize, Default)]
pub(crate) struct Params {
    refresh: Option<u32>,
    flash: Option<String>,
}

fn listener_path(name: &str) -> String {
    format!("/listeners/{}", encode(name))
}

pub(crate) async fn list(
    axum::extract::State(shared): State,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult {
    let status = Status::read(&shared.ops).await?;
    let body = html! {
        h1 { "Listeners" }
        p.muted {
            "Head of the log: " (status.head.unwrap_or(0)) ". "
            @match params.refresh {
                Some(_) => { "Reloading every few seconds. " a href=(base.at("/listeners")) { "Stop" } }
                None => { a href=(base.at("/listeners?refresh=5")) { "Reload every 5 s" } }
            }
        }
        (listeners_table(&base, &status))
    };
    Ok(Page {
        base: &base,
        title: "Listeners",
        section: Section::Listeners,
        schema: shared.ops.schema(),
        refresh: params.refresh.map(|s| s.clamp(1, 3600)),
        flash: params.flash.as_deref(),
    }
    .render(body))
}

pub(crate) async fn show(
    axum::extract::State(shared): State,
    base: Base,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> PageResult {
    let admin = shared.ops.listeners();
    let status = ListenerInfo::of(&admin.status(&name).await?);
    let parked = admin.parked(&name).await?;
    let requests = admin.requests(&name, 20).await?;
    let path = listener_path(&name);
    let action = |what: &str| base.at(&format!("{path}/{what}"));
    let body = html! {
        h1 { "Listener " (name) }
        dl.facts {
            dt { "state" } dd { (badge(&status.state)) }
            dt { "mode" } dd { (status.mode.as_deref().unwrap_or("–")) }
            dt { "position" } dd { (status.position) }
            dt { "lag" } dd #lag { (status.lag_events) " events, " (opt_secs(status.lag_seconds)) }
            dt { "parked events" } dd { (status.parked) }
            dt { "events handled" } dd { (status.handled) }
            dt { "leader" } dd.mono { (status.leader.as_deref().unwrap_or("none: no runner of it is running")) }
            @if let Some(error) = &status.last_error {
                dt { "last error" } dd {
                    (error)
                    @if let Some(at) = &status.last_error_at { span.muted { " (" (when(at)) ")" } }
                }
            }
        }
        @if let Some(failing) = status.failing_position {
            h2 { "Stuck on an event" }
            p {
                "It keeps failing on " a href=(event_link(&base, failing)) { "position " (failing) } ". "
                "Retry it now, or skip it (it is parked as skipped and the listener moves on)."
            }
            (retry_skip(&action("retry"), &action("skip"), failing))
        }
        h2 { "Parked events" }
        @if parked.is_empty() {
            p.muted { "None." }
        } @else {
            table #parked {
                tr { th.num { "position" } th { "type" } th { "error" } th.num { "attempts" } th { "parked (UTC)" } th { "" } }
                @for p in &parked {
                    tr data-position=(p.position.0) {
                        td.num { a href=(event_link(&base, p.position.0)) { (p.position.0) } }
                        td { (p.event_type.as_str()) }
                        td { (p.error) }
                        td.num { (p.attempts) }
                        td.mono { (when(&p.parked_at)) }
                        td { (retry_skip(&action("retry"), &action("skip"), p.position.0)) }
                    }
                }
            }
        }
        h2 { "Rewind" }
        p.muted {
            "Reset rewinds it to the start of the log (a transactional listener also empties its read model) and it replays the log; "
            "rebuild does the same and follows the replay up to today's head. The listener's running leader carries it out."
        }
        div.pager {
            form.inline method="post" action=(action("rebuild")) {
                label { input type="checkbox" name="confirm" value="yes" required; " I mean it " }
                button.danger type="submit" { "Rebuild" }
            }
            form.inline method="post" action=(action("reset")) {
                label { input type="checkbox" name="confirm" value="yes" required; " I mean it " }
                button.danger type="submit" { "Reset" }
            }
        }
        h2 { "Recent requests" }
        @if requests.is_empty() {
            p.muted { "None." }
        } @else {
            table {
                tr { th.num { "id" } th { "kind" } th.num { "position" } th { "state" } th { "by" } th { "asked (UTC)" } th { "error" } }
                @for r in &requests {
                    tr {
                        td.num { a href=(base.at(&format!("{path}/requests/{}", r.id))) { (r.id) } }
                        td { (r.kind.as_str()) }
                        td.num { (r.position.map(|p| p.0.to_string()).unwrap_or_default()) }
                        td { (badge(r.state.as_str())) }
                        td { (r.requested_by.as_deref().unwrap_or("")) }
                        td.mono { (when(&r.requested_at)) }
                        td { (r.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    Ok(Page {
        base: &base,
        title: &format!("Listener {name}"),
        section: Section::Listeners,
        schema: shared.ops.schema(),
        refresh: params.refresh.map(|s| s.clamp(1, 3600)),
        flash: params.flash.as_deref(),
    }
    .render(body))
}

fn retry_skip(retry: &str, skip: &str, position: u64) -> maud::Markup {
    html! {
        form.inline method="post" action=(retry) {
            input type="hidden" name="position" value=(position);
            button type="submit" { "Retry" }
        }
        " "
        form.inline method="post" action=(skip) {
            input type="hidden" name="position" value=(position);
            button.danger type="submit" { "Skip" }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Confirm {
    confirm: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct AtPosition {
    position: String,
}

fn confirmed(form: &Confirm) -> Result<(), PageError> {
    match form.confirm.as_deref() {
        Some("yes") => Ok(()),
        _ => Err(PageError::bad_request(
            "tick \"I mean it\" to confirm: this rewinds the listener",
        )),
    }
}

/// Sends the browser to the page of request `request` of listener `name`.
fn to_request_page(base: &Base, name: &str, request: i64) -> Response {
    let page = base.at(&format!("{}/requests/{request}", listener_path(name)));
    axum::response::Redirect::to(&page).into_response()
}

pub(crate) async fn reset(
    axum::extract::State(shared): State,
    base: Base,
    Path(name): Path<String>,
    Form(form): Form<Confirm>,
) -> Result<Response, PageError> {
    confirmed(&form)?;
    let request = shared.ops.listeners().request_reset(&name).await?;
    Ok(to_request_page(&base, &name, request))
}

pub(crate) async fn rebuild(
    axum::extract::State(shared): State,
    base: Base,
    Path(name): Path<String>,
    Form(form): Form<Confirm>,
) -> Result<Response, PageError> {
    confirmed(&form)?;
    let request = shared.ops.listeners().request_rebuild(&name).await?;
    Ok(to_request_page(&base, &name, request))
}

fn position_of(form: &AtPosition) -> Result<Position, PageError> {
    form.position
        .trim()
        .parse()
        .map(Position)
        .map_err(|_| PageError::bad_request(format!("{:?} is not a position", form.position)))
}

pub(crate) async fn retry(
    axum::extract::State(shared): State,
    base: Base,
    Path(name): Path<String>,
    Form(form): Form<AtPosition>,
) -> Result<Response, PageError> {
    let position = position_of(&form)?;
    let request = shared
        .ops
        .listeners()
        .request_retry(&name, position)
        .await?;
    Ok(to_request_page(&base, &name, request))
}

pub(crate) async fn skip(
    axum::extract::State(shared): State,
    base: Base,
    Path(name): Path<String>,
    Form(form): Form<AtPosition>,
) -> Result<Response, PageError> {
    let position = position_of(&form)?;
    let request = shared.ops.listeners().request_skip(&name, position).await?;
    Ok(to_request_page(&base, &name, request))
}

pub(crate) async fn request(
    axum::extract::State(shared): State,
    base: Base,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let admin = shared.ops.listeners();
    let id: i64 = id
        .parse()
        .map_err(|_| PageError::bad_request(format!("{id:?} is not a request id")))?;
    let info: ListenerRequest = admin
        .request_info(id)
        .await?
        .filter(|r| r.listener_id == name)
        .ok_or_else(|| PageError::not_found(format!("no request {id} of listener {name:?}")))?;
    let rewinding = matches!(info.kind, RequestKind::Reset | RequestKind::Rebuild);
    // A failed request's progress is its error, shown below.
    let progress = if rewinding && info.state != RequestState::Failed {
        admin.rebuild_progress(id).await.ok()
    } else {
        None
    };
    let leader = admin.status(&name).await?.leader;
    let over = info.state.is_finished() && progress.as_ref().is_none_or(|p| p.done);
    if over && info.state == RequestState::Done && !rewinding {
        let flash = format!(
            "{} of position {} done",
            info.kind.as_str(),
            info.position.map_or(0, |p| p.0)
        );
        return Ok(see(&base, &listener_path(&name), &flash).into_response());
    }
    let body = html! {
        h1 { "Request " (info.id) ": " (info.kind.as_str()) " of " a href=(base.at(&listener_path(&name))) { (name) } }
        dl.facts {
            dt { "state" } dd #request-state { (badge(info.state.as_str())) }
            @if let Some(position) = info.position {
                dt { "position" } dd { a href=(event_link(&base, position.0)) { (position.0) } }
            }
            dt { "asked (UTC)" } dd { (when(&info.requested_at)) " by " (info.requested_by.as_deref().unwrap_or("?")) }
            @if let Some(by) = &info.executed_by { dt { "carried out by" } dd.mono { (by) } }
            @if let Some(error) = &info.error { dt { "error" } dd { div.error { (error) } } }
        }
        @if info.state == RequestState::Pending && leader.is_none() {
            div.error { "No runner of this listener is running: the request waits until one starts." }
        }
        @if let Some(p) = &progress {
            h2 { "Progress" }
            p {
                progress #progress max="1000" value=((p.fraction * 1000.0).round() as u64) {}
                " " (format!("{:.1}", p.fraction * 100.0)) "%"
            }
            dl.facts {
                dt { "position" } dd { (p.position.0) " of " (p.target.0) }
                dt { "events handled" } dd { (p.events_done) }
                dt { "rate" } dd { (format!("{:.0}", p.events_per_sec)) " events/s" }
                dt { "elapsed" } dd { (secs(p.elapsed.as_secs_f64())) }
                @if !p.done && p.events_per_sec > 0.0 && p.target.0 > p.position.0 {
                    dt { "time left" } dd {
                        // Positions per second so far stand in for the rate ahead.
                        (secs((p.target.0 - p.position.0) as f64
                            / (p.position.0 as f64 / p.elapsed.as_secs_f64().max(1e-3)).max(1e-3)))
                    }
                }
            }
        }
        @if !over { p.muted { "This page reloads itself until the request is over." } }
    };
    Ok(Page {
        base: &base,
        title: &format!("Request {id}"),
        section: Section::Listeners,
        schema: shared.ops.schema(),
        refresh: (!over).then_some(1),
        flash: None,
    }
    .render(body)
    .into_response())
}
