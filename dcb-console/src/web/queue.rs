//! The work queue: jobs by queue and state, the job list with its filters,
//! one job's details, and redrive and cancel.

use axum::extract::{Form, Path, Query};
use axum::response::{IntoResponse, Response};
use dcb_postgres::queue::{JobFilter, JobId, JobInfo, JobState};
use maud::{html, Markup};
use serde::Deserialize;

use super::overview::queues_table;
use super::page::{badge, encode, see, when, Page, PageError, PageResult, Section};
use super::{Base, State};
use crate::status::Status;

/// The states a job list can be narrowed to.
const STATES: [JobState; 5] = [
    JobState::Ready,
    JobState::Running,
    JobState::Succeeded,
    JobState::Dead,
    JobState::Cancelled,
];

pub(crate) fn parse_state(text: &str) -> Option<JobState> {
    STATES.into_iter().find(|s| s.as_str() == text)
}

#[derive(Deserialize, Default)]
pub(crate) struct Params {
    state: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    page: Option<usize>,
    refresh: Option<u32>,
    flash: Option<String>,
}

const PAGE_SIZE: usize = 50;

pub(crate) async fn list(
    axum::extract::State(shared): State,
    base: Base,
    Query(params): Query<Params>,
) -> PageResult {
    let ops = &shared.ops;
    let text = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let state = match text(&params.state) {
        Some(s) => Some(
            parse_state(&s)
                .ok_or_else(|| PageError::bad_request(format!("{s:?} is not a job state")))?,
        ),
        None => None,
    };
    let status = Status::read(ops).await?;
    let page = params.page.unwrap_or(0);
    let mut filter = JobFilter::new().limit(PAGE_SIZE).offset(page * PAGE_SIZE);
    if let Some(state) = state {
        filter = filter.state(state);
    }
    if let Some(queue) = text(&params.queue) {
        filter = filter.queue(queue);
    }
    if let Some(kind) = text(&params.kind) {
        filter = filter.kind(kind);
    }
    let components = ops.components().await?;
    let (jobs, unserved) = if components.queue {
        (
            ops.queue().jobs(&filter).await?,
            ops.queue().unserved().await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let queue = text(&params.queue).unwrap_or_default();
    let next = format!(
        "/queue?state={}&queue={}&kind={}&page={}",
        state.map_or("", |s| s.as_str()),
        encode(&queue),
        encode(&text(&params.kind).unwrap_or_default()),
        page + 1
    );
    let body = html! {
        h1 { "Queue" }
        (queues_table(&base, &status))
        @for u in &unserved {
            div.error {
                (u.ready) " ready " (u.kind) " jobs on queue " (u.queue) " wait for a worker: no running worker set serves that kind."
            }
        }
        h2 { "Jobs" }
        form.filters method="get" action=(base.at("/queue")) {
            label { "State"
                select name="state" {
                    option value="" selected[state.is_none()] { "any" }
                    @for s in STATES {
                        option value=(s.as_str()) selected[state == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Queue" input name="queue" value=(queue); }
            label { "Kind" input name="kind" value=(text(&params.kind).unwrap_or_default()); }
            button.primary type="submit" { "Show" }
        }
        @if status.dead_jobs() > 0 {
            form.inline method="post" action=(base.at("/queue/redrive-dead")) {
                input type="hidden" name="queue" value=(queue);
                button type="submit" {
                    "Redrive every dead job" @if !queue.is_empty() { " of " (queue) }
                }
            }
        }
        (jobs_table(&base, &jobs))
        @if jobs.len() == PAGE_SIZE {
            div.pager { a href=(base.at(&next)) { "more →" } }
        }
    };
    Ok(Page {
        base: &base,
        title: "Queue",
        section: Section::Queue,
        schema: ops.schema(),
        refresh: params.refresh.map(|s| s.clamp(1, 3600)),
        flash: params.flash.as_deref(),
    }
    .render(body))
}

/// The buttons for what an operator can do to `job` now.
fn actions(base: &Base, job: &JobInfo) -> Markup {
    let path = |what: &str| base.at(&format!("/queue/jobs/{}/{what}", job.id));
    html! {
        @if job.state == JobState::Dead {
            form.inline method="post" action=(path("redrive")) {
                button.primary type="submit" name="redrive" value=(job.id) { "Redrive" }
            }
            " "
        }
        @if matches!(job.state, JobState::Ready | JobState::Running | JobState::Dead) {
            form.inline method="post" action=(path("cancel")) {
                button.danger type="submit" name="cancel" value=(job.id) { "Cancel" }
            }
        }
    }
}

fn jobs_table(base: &Base, jobs: &[JobInfo]) -> Markup {
    html! {
        @if jobs.is_empty() {
            p.muted { "No job matches." }
        } @else {
            table #jobs {
                tr {
                    th { "job" } th { "queue" } th { "kind" } th { "state" } th.num { "attempt" }
                    th { "due / finished (UTC)" } th { "last error" } th { "" }
                }
                @for job in jobs {
                    tr data-job=(job.id) data-state=(job.state.as_str()) {
                        td.mono { a href=(base.at(&format!("/queue/jobs/{}", job.id))) { (job.id) } }
                        td { (job.queue) }
                        td { (job.kind) }
                        td { (badge(job.state.as_str())) }
                        td.num { (job.attempt) @if let Some(max) = job.max_attempts { " / " (max) } }
                        td.mono { (when(job.finished_at.as_ref().unwrap_or(&job.run_at))) }
                        td { (crate::events::cut(job.last_error.as_deref().unwrap_or(""), 160)) }
                        td { (actions(base, job)) }
                    }
                }
            }
        }
    }
}

fn job_id(id: &str) -> Result<JobId, PageError> {
    id.parse()
        .map_err(|_| PageError::bad_request(format!("{id:?} is not a job id")))
}

pub(crate) async fn show(
    axum::extract::State(shared): State,
    base: Base,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> PageResult {
    let id = job_id(&id)?;
    let job = shared
        .ops
        .queue()
        .job(id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("no job {id}")))?;
    let body = html! {
        h1 { "Job " (job.id) }
        div.pager { (actions(&base, &job)) }
        dl.facts {
            dt { "state" } dd #job-state { (badge(job.state.as_str())) }
            dt { "queue" } dd { (job.queue) }
            dt { "kind" } dd { (job.kind) }
            dt { "attempt" } dd { (job.attempt) @if let Some(max) = job.max_attempts { " of " (max) } }
            dt { "priority" } dd { (job.priority) }
            dt { "due (UTC)" } dd { (when(&job.run_at)) }
            @if let Some(deadline) = &job.deadline { dt { "retried until (UTC)" } dd { (when(deadline)) } }
            dt { "enqueued (UTC)" } dd { (when(&job.created_at)) }
            dt { "changed (UTC)" } dd { (when(&job.updated_at)) }
            @if let Some(at) = &job.finished_at { dt { "finished (UTC)" } dd { (when(at)) } }
            @if let Some(key) = &job.dedupe_key { dt { "dedupe key" } dd.mono { (key) } }
            @if let Some(event) = job.triggered_by_event {
                dt { "caused by" } dd.mono { a href=(base.at(&format!("/events/id/{event}"))) { (event) } }
            }
            @if let Some(by) = &job.locked_by { dt { "worker" } dd.mono { (by) } }
        }
        @if let Some(error) = &job.last_error {
            h2 { "Last error" }
            pre { (error) }
        }
        h2 { "Payload" }
        pre { (serde_json::to_string_pretty(&job.payload).unwrap_or_default()) }
    };
    Ok(Page {
        base: &base,
        title: &format!("Job {id}"),
        section: Section::Queue,
        schema: shared.ops.schema(),
        refresh: None,
        flash: params.flash.as_deref(),
    }
    .render(body))
}

pub(crate) async fn redrive(
    axum::extract::State(shared): State,
    base: Base,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = job_id(&id)?;
    let flash = if shared.ops.queue().redrive(id).await? {
        format!("job {id} redriven: it is due now")
    } else {
        format!("job {id} is not dead: nothing to redrive")
    };
    Ok(see(&base, &format!("/queue/jobs/{id}"), &flash).into_response())
}

pub(crate) async fn cancel(
    axum::extract::State(shared): State,
    base: Base,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = job_id(&id)?;
    let flash = if shared.ops.queue().cancel(id).await? {
        format!("job {id} cancelled")
    } else {
        format!("job {id} is already finished: nothing to cancel")
    };
    Ok(see(&base, &format!("/queue/jobs/{id}"), &flash).into_response())
}

#[derive(Deserialize)]
pub(crate) struct QueueForm {
    queue: Option<String>,
}

pub(crate) async fn redrive_all(
    axum::extract::State(shared): State,
    base: Base,
    Form(form): Form<QueueForm>,
) -> Result<Response, PageError> {
    let queue = form.queue.filter(|q| !q.trim().is_empty());
    let n = shared
        .ops
        .queue()
        .redrive_all_dead(queue.as_deref())
        .await?;
    Ok(see(&base, "/queue", &format!("{n} dead jobs redriven")).into_response())
}
