//! The web console: server-rendered pages over one store, as an
//! [`axum::Router`] an application nests where it likes.
//!
//! Pages: the overview, the event explorer and event details, listeners
//! (with parked events, requests and a rebuild's live progress), the work
//! queue, and Kafka (dead records, relays). Every value shown is escaped
//! (the templates are `maud`'s, which escape unless told otherwise); links
//! are made relative to wherever the router is mounted. Actions are POST
//! forms, answered by a redirect (303) to the page that shows the outcome.

mod auth;
mod explorer;
mod kafka;
mod listeners;
mod overview;
mod page;
mod queue;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{OriginalUri, Request};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{middleware, Router};
use dcb_kafka::{KafkaConfig, Publisher};
use dcb_postgres::PgEventStore;

use crate::ops::Ops;

/// The web console of one store: build it, then mount
/// [`router`](Console::router) in an application.
///
/// ```no_run
/// # async fn example(store: dcb_postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddr;
/// use dcb_console::Console;
/// let listen = SocketAddr::from(([127, 0, 0, 1], 3000));
/// let app = axum::Router::new()
///     // ... the application's routes ...
///     .nest("/console", Console::new(store).router(listen)?);
/// let listener = tokio::net::TcpListener::bind(listen).await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
///
/// **Access.** On a loopback address the console is open to whoever can
/// reach it. On any other address it needs a [`token`](Console::token)
/// (or [`router`](Console::router) refuses): every page and every action
/// then requires it, as `Authorization: Bearer <token>` or as the cookie its
/// login form sets. Whatever the address, an action (a POST) sent from
/// another site's page is refused (`Origin` and `Sec-Fetch-Site` are
/// checked), so a page elsewhere cannot make an operator's browser act.
/// Serve it over TLS (e.g. behind a proxy) when it leaves the machine.
#[derive(Clone, Debug)]
pub struct Console {
    ops: Ops,
    token: Option<String>,
    kafka: Option<KafkaConfig>,
}

/// Why a console cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The console would listen on an address other machines reach, with no
    /// token.
    #[error(
        "the console would be served on {0}, which is not a loopback address, without a token: \
         configure one (`--token` or DCB_CONSOLE_TOKEN for the command and the cart, Console::token in code), or listen on \
         127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    /// The token is too short to resist guessing.
    #[error("the console's token must be at least {MIN_TOKEN_BYTES} bytes long")]
    WeakToken,
    /// The Kafka producer for redrives could not be made.
    #[error("the console's Kafka producer: {0}")]
    Kafka(#[from] dcb_kafka::KafkaError),
}

/// The shortest token [`Console::token`] accepts.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Console {
    /// A console over `store` (its pool and schema).
    pub fn new(store: PgEventStore) -> Console {
        Console::with_ops(Ops::new(store))
    }

    /// A console over `ops`.
    pub fn with_ops(ops: Ops) -> Console {
        Console {
            ops: ops.operator("console"),
            token: None,
            kafka: None,
        }
    }

    /// Requires `token` for every page and action (at least
    /// [`MIN_TOKEN_BYTES`] bytes; [`router`](Console::router) refuses a
    /// shorter one).
    pub fn token(mut self, token: impl Into<String>) -> Console {
        self.token = Some(token.into());
        self
    }

    /// Kafka, for redriving dead records from the console (without it, the
    /// Kafka page only lists them).
    pub fn kafka(mut self, config: KafkaConfig) -> Console {
        self.kafka = Some(config);
        self
    }

    /// The router, for an application that listens on `listening_on`.
    ///
    /// # Errors
    /// [`ConsoleError::TokenRequired`] when `listening_on` is not a loopback
    /// address and no token is configured; [`ConsoleError::WeakToken`];
    /// [`ConsoleError::Kafka`] when the producer cannot be created.
    pub fn router(self, listening_on: SocketAddr) -> Result<Router, ConsoleError> {
        let loopback = listening_on.ip().to_canonical().is_loopback();
        match &self.token {
            None if !loopback => return Err(ConsoleError::TokenRequired(listening_on)),
            Some(t) if t.len() < MIN_TOKEN_BYTES => return Err(ConsoleError::WeakToken),
            _ => {}
        }
        let publisher = match &self.kafka {
            Some(config) => Some(Publisher::new(config)?),
            None => None,
        };
        let shared = Arc::new(Shared {
            ops: self.ops,
            token: self.token,
            publisher,
        });
        Ok(Router::new()
            .route("/", get(overview::show))
            .route("/events", get(explorer::list))
            .route("/events/{position}", get(explorer::show))
            .route("/events/id/{id}", get(explorer::by_id))
            .route("/listeners", get(listeners::list))
            .route("/listeners/{name}", get(listeners::show))
            .route("/listeners/{name}/reset", post(listeners::reset))
            .route("/listeners/{name}/rebuild", post(listeners::rebuild))
            .route("/listeners/{name}/retry", post(listeners::retry))
            .route("/listeners/{name}/skip", post(listeners::skip))
            .route("/listeners/{name}/requests/{id}", get(listeners::request))
            .route("/queue", get(queue::list))
            .route("/queue/jobs/{id}", get(queue::show))
            .route("/queue/jobs/{id}/redrive", post(queue::redrive))
            .route("/queue/jobs/{id}/cancel", post(queue::cancel))
            .route("/queue/redrive-dead", post(queue::redrive_all))
            .route("/kafka", get(kafka::show))
            .route("/kafka/redrive", post(kafka::redrive))
            .route("/login", get(auth::login_form).post(auth::login))
            .route("/logout", post(auth::logout))
            .fallback(page::not_found)
            .layer(middleware::from_fn_with_state(shared.clone(), auth::guard))
            .with_state(shared))
    }
}

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) ops: Ops,
    pub(crate) token: Option<String>,
    pub(crate) publisher: Option<Publisher>,
}

pub(crate) type State = axum::extract::State<Arc<Shared>>;

/// Where the console is mounted: the prefix of every link it renders
/// (`""` at the root, `"/console"` when nested there).
#[derive(Clone, Debug)]
pub(crate) struct Base(pub(crate) String);

impl Base {
    fn of(original: &str, inner: &str) -> Base {
        let prefix = if inner == "/" {
            original.trim_end_matches('/')
        } else {
            original.strip_suffix(inner).unwrap_or("")
        };
        Base(prefix.to_owned())
    }

    fn from_request(request: &Request) -> Base {
        let inner = request.uri().path();
        match request.extensions().get::<OriginalUri>() {
            Some(original) => Base::of(original.path(), inner),
            None => Base(String::new()),
        }
    }

    /// The link to `path` (which starts with `/`).
    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let inner = parts.uri.path();
        Ok(match parts.extensions.get::<OriginalUri>() {
            Some(original) => Base::of(original.path(), inner),
            None => Base(String::new()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_is_the_mount_point() {
        assert_eq!(Base::of("/console", "/").0, "/console");
        assert_eq!(Base::of("/console/", "/").0, "/console");
        assert_eq!(Base::of("/console/events/4", "/events/4").0, "/console");
        assert_eq!(Base::of("/events/4", "/events/4").0, "");
        assert_eq!(Base::of("/", "/").0, "");
    }
}
