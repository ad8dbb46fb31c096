//! The page shell (navigation, inline style), error pages, and the small
//! formatting helpers every page uses.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::Base;

/// The console's whole style sheet, inline: nothing is fetched from
/// anywhere.
const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5f6b7a; --line:#dde2e8; --bg:#f6f7f9; --accent:#2456c7;
        --bad:#b42318; --warn:#9a6700; --good:#1a7f37; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:0 20px; display:flex; align-items:center; gap:18px; }
header .brand { font-weight:700; padding:12px 0; margin-right:8px; }
header nav a { color:#c8d1dc; text-decoration:none; padding:12px 6px; display:inline-block; }
header nav a.on, header nav a:hover { color:#fff; border-bottom:2px solid #8fb0ff; }
header .schema { margin-left:auto; color:#9aa7b6; font-size:12px; }
main { padding:18px 20px 40px; max-width:1400px; }
h1 { font-size:20px; margin:4px 0 14px; }
h2 { font-size:16px; margin:22px 0 8px; }
a { color:var(--accent); }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line); width:100%; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef1f5; font-weight:600; font-size:12px; color:var(--muted); white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.mono, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
td.wrap { word-break:break-all; }
pre { background:#fff; border:1px solid var(--line); padding:10px; overflow:auto;
      font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; white-space:pre-wrap; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:8px; }
.card { background:#fff; border:1px solid var(--line); padding:10px 14px; min-width:160px; }
.card .label { color:var(--muted); font-size:12px; }
.card .value { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.badge { display:inline-block; padding:0 7px; border-radius:9px; font-size:12px; background:#e8ebef; }
.badge.good { background:#dafbe1; color:var(--good); }
.badge.warn { background:#fff8c5; color:var(--warn); }
.badge.bad { background:#ffebe9; color:var(--bad); }
.flash { background:#ddf4ff; border:1px solid #54aeff; padding:8px 12px; margin-bottom:12px; }
.error { background:#ffebe9; border:1px solid #ff8182; padding:8px 12px; margin-bottom:12px; }
.muted { color:var(--muted); }
form.inline { display:inline; margin:0; }
form.filters { background:#fff; border:1px solid var(--line); padding:10px; margin-bottom:12px;
               display:flex; flex-wrap:wrap; gap:10px; align-items:flex-end; }
form.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); }
input, select { font:inherit; padding:3px 6px; border:1px solid #c4ccd6; border-radius:3px; }
button { font:inherit; padding:3px 10px; border:1px solid #c4ccd6; border-radius:3px;
         background:#fff; cursor:pointer; }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
button.danger { border-color:var(--bad); color:var(--bad); }
progress { width:320px; height:14px; }
.pager { margin:10px 0; display:flex; gap:14px; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:4px 14px; background:#fff;
           border:1px solid var(--line); padding:10px 14px; margin:0; }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; word-break:break-all; }
"#;

/// Which section a page belongs to (highlighted in the navigation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Events,
    Listeners,
    Queue,
    Kafka,
    None,
}

/// What a page is besides its body.
pub(crate) struct Page<'a> {
    pub(crate) base: &'a Base,
    pub(crate) title: &'a str,
    pub(crate) section: Section,
    pub(crate) schema: &'a str,
    /// Reload every this many seconds.
    pub(crate) refresh: Option<u32>,
    /// A message about the action just taken.
    pub(crate) flash: Option<&'a str>,
}

impl Page<'_> {
    /// The whole HTML document around `body`.
    pub(crate) fn render(&self, body: Markup) -> Html<String> {
        let base = self.base;
        let nav = [
            (Section::Overview, "/", "Overview"),
            (Section::Events, "/events", "Events"),
            (Section::Listeners, "/listeners", "Listeners"),
            (Section::Queue, "/queue", "Queue"),
            (Section::Kafka, "/kafka", "Kafka"),
        ];
        Html(
            html! {
                (DOCTYPE)
                html lang="en" {
                    head {
                        meta charset="utf-8";
                        meta name="viewport" content="width=device-width, initial-scale=1";
                        @if let Some(seconds) = self.refresh {
                            meta http-equiv="refresh" content=(seconds);
                        }
                        title { (self.title) " · dcb console" }
                        style { (PreEscaped(STYLE)) }
                    }
                    body {
                        header {
                            span.brand { "dcb console" }
                            nav {
                                @for (section, path, label) in nav {
                                    a.on[section == self.section] href=(base.at(path)) { (label) }
                                }
                            }
                            span.schema { "schema " (self.schema) }
                        }
                        main {
                            @if let Some(flash) = self.flash {
                                div.flash role="status" { (flash) }
                            }
                            (body)
                        }
                    }
                }
            }
            .into_string(),
        )
    }
}

/// A page that failed: its status and a message (escaped like everything
/// else).
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<crate::Error> for PageError {
    fn from(error: crate::Error) -> Self {
        use dcb_postgres::listener::ListenerError;
        let status = match &error {
            crate::Error::NotFound(_)
            | crate::Error::Listener(ListenerError::UnknownListener(_)) => StatusCode::NOT_FOUND,
            crate::Error::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => {
                tracing::warn!(%error, "console page failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        PageError::new(status, error.to_string())
    }
}

macro_rules! from_error {
    ($($t:ty),*) => {$(
        impl From<$t> for PageError {
            fn from(error: $t) -> Self {
                PageError::from(crate::Error::from(error))
            }
        }
    )*};
}
from_error!(
    sqlx::Error,
    dcb_core::StoreError,
    dcb_postgres::listener::ListenerError,
    dcb_postgres::queue::QueueError,
    dcb_kafka::KafkaError
);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "Error · dcb console" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    main {
                        h1 { (self.status.as_u16()) " " (self.status.canonical_reason().unwrap_or("")) }
                        div.error { (self.message) }
                    }
                }
            }
        };
        (self.status, Html(body.into_string())).into_response()
    }
}

/// The answer to an unknown path.
pub(crate) async fn not_found() -> PageError {
    PageError::not_found("no such page in the console")
}

/// What a handler answers.
pub(crate) type PageResult = Result<Html<String>, PageError>;

/// After an action: back to `path` (under `base`), with `flash` shown.
pub(crate) fn see(base: &Base, path: &str, flash: &str) -> Redirect {
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{}{path}{sep}flash={}", base.0, encode(flash)))
}

/// `text` percent-encoded for a path segment or a query value: everything
/// but unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A duration in seconds, as people read it.
pub(crate) fn secs(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".to_owned();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    match whole {
        0..=119 => format!("{whole} s"),
        120..=7199 => format!("{} min {} s", whole / 60, whole % 60),
        7200..=172_799 => format!("{} h {} min", whole / 3600, (whole % 3600) / 60),
        _ => format!("{} d {} h", whole / 86_400, (whole % 86_400) / 3600),
    }
}

/// An optional duration in seconds.
pub(crate) fn opt_secs(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "–".to_owned(), secs)
}

/// The CSS class of a listener or job state's badge.
pub(crate) fn state_class(state: &str) -> &'static str {
    match state {
        "idle" | "succeeded" | "done" => "good",
        "running" | "standby" | "starting" | "ready" | "pending" | "scheduled" => "",
        "retrying" | "cancelled" | "stopped" => "warn",
        _ => "bad",
    }
}

/// A state as a badge.
pub(crate) fn badge(state: &str) -> Markup {
    html! { span class={"badge " (state_class(state))} { (state) } }
}

/// An instant, to the second, in UTC.
pub(crate) fn when(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("a b/c?d&e=<f>"), "a%20b%2Fc%3Fd%26e%3D%3Cf%3E");
        assert_eq!(encode("cart-items_db.1~"), "cart-items_db.1~");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(secs(0.3), "0.3 s");
        assert_eq!(secs(42.0), "42 s");
        assert_eq!(secs(125.0), "2 min 5 s");
        assert_eq!(secs(7300.0), "2 h 1 min");
        assert_eq!(secs(-1.0), "?");
    }
}
