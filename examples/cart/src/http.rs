//! The HTTP API (the book's routes). Every failure answers JSON
//! `{"error": code, "message": text}`: 400 for malformed ids and bodies, a
//! body id that differs from the path id, or a value outside the cart's
//! [`limits`](crate::limits) (then `"field"` names it too), 404 for unknown
//! carts, 409 for a broken rule, 413 for an oversized body, 503 when the
//! database is unreachable (`DatabaseUnavailable`: nothing was applied) or
//! when a command's outcome is unknown (`OutcomeUnknown`: its reply from the
//! database was lost, so it may or may not have been applied). Bad input
//! never causes a 5xx or a panic.

use std::any::Any;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dcb_core::{Decided, Decision, DecisionError, DecisionMaker, EventStore, StoreError};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::error::CartError;
use crate::events::CartEvent;
use crate::limits::InvalidValue;
use crate::slices::add_item::AddItem;
use crate::slices::cart_items::{CartItem, CartItemsView};
use crate::slices::change_price::ChangePrice;
use crate::slices::clear_cart::ClearCart;
use crate::slices::remove_item::RemoveItem;
use crate::slices::submit_cart::SubmitCart;
use crate::slices::{cart_items, cart_items_db, carts_with_products, inventories};

/// The largest request body accepted (bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Runs the commands.
    pub maker: DecisionMaker<Arc<dyn EventStore>>,
    /// The event store (live read model, health check).
    pub store: Arc<dyn EventStore>,
    /// The read models' database.
    pub pool: PgPool,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    with_operations(state, Router::new())
}

/// The routes, with `operations` beside them (the operators' routes: the
/// console under `/console`, `/metrics`), behind the same panic and trace
/// layers.
pub fn with_operations(state: AppState, operations: Router) -> Router {
    Router::new()
        .route("/additem/{cart_id}", post(add_item))
        .route("/removeitem/{cart_id}", post(remove_item))
        .route("/clearcart/{cart_id}", post(clear_cart))
        .route("/submitcart/{cart_id}", post(submit_cart))
        .route("/changeprice/{product_id}", post(change_price))
        .route("/{cart_id}/cartitems", get(get_cart_items))
        .route("/{cart_id}/cartitemsfromdb", get(get_cart_items_from_db))
        .route(
            "/cartswithproducts/{product_id}",
            get(get_carts_with_products),
        )
        .route("/inventories/{product_id}", get(get_inventory))
        .route("/healthcheck", get(healthcheck))
        .with_state(state)
        .merge(operations)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "this route does not take this method",
            )
        })
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(dcb_console::telemetry::http_span)
                .on_response(dcb_console::telemetry::http_response),
        )
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    /// An answer with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer's code (its `error` field).
    pub fn code(&self) -> &'static str {
        self.code
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "database unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DatabaseUnavailable",
            "the database cannot be reached; try again later",
        )
    }

    fn outcome_unknown(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "outcome of a command unknown");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OutcomeUnknown",
            "the database's reply was lost: the command may or may not have been applied; \
             read the cart (or the product) before sending it again",
        )
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "an internal error occurred",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(field) => json!({ "error": self.code, "message": self.message, "field": field }),
            None => json!({ "error": self.code, "message": self.message }),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<InvalidValue> for ApiError {
    fn from(e: InvalidValue) -> Self {
        ApiError {
            field: Some(e.field()),
            ..ApiError::bad_request(e.code(), e.to_string())
        }
    }
}

impl From<CartError> for ApiError {
    fn from(e: CartError) -> Self {
        let status = match e {
            CartError::InvalidValue(invalid) => return invalid.into(),
            CartError::CartDoesNotExist => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } | StoreError::ShutDown => ApiError::unavailable(e),
            StoreError::OutcomeUnknown { .. } => ApiError::outcome_unknown(e),
            StoreError::InvalidRequest(message) => ApiError::bad_request(
                "InvalidRequest",
                format!("the event store refused the request: {message}"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => ApiError::unavailable(e),
            other => ApiError::internal(other),
        }
    }
}

fn decision_error<E: Into<ApiError> + std::error::Error>(e: DecisionError<E>) -> ApiError {
    match e {
        DecisionError::Rejected(rule) => rule.into(),
        DecisionError::Conflict { attempts } => ApiError::new(
            StatusCode::CONFLICT,
            "ConcurrentModification",
            format!("the cart kept changing during {attempts} attempts; try again"),
        ),
        DecisionError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}

impl From<std::convert::Infallible> for ApiError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

type ApiResult = Result<Response, ApiError>;

/// Parses a path id.
fn path_id(path: Result<Path<String>, PathRejection>, what: &str) -> Result<Uuid, ApiError> {
    let Path(raw) =
        path.map_err(|e| ApiError::bad_request("InvalidId", format!("bad {what}: {e}")))?;
    Uuid::parse_str(&raw).map_err(|e| {
        ApiError::bad_request("InvalidId", format!("{what} {raw:?} is not a UUID: {e}"))
    })
}

/// Reads the body, at most [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("the body must be at most {MAX_BODY_BYTES} bytes ({e})"),
            )
        })
}

/// Parses a JSON body.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("MalformedBody", format!("the body is not valid: {e}")))
}

/// Checks that an id repeated in the body matches the path.
fn same_id(path: Uuid, body: Option<Uuid>, what: &str) -> Result<(), ApiError> {
    match body {
        Some(id) if id != path => Err(ApiError::bad_request(
            "IdMismatch",
            format!("{what} {id} in the body differs from {path} in the path"),
        )),
        _ => Ok(()),
    }
}

/// The answer of a command: the position of its last event.
fn decided(decided: &Decided<CartEvent>) -> Response {
    let events: Vec<String> = decided
        .events
        .iter()
        .map(|e| dcb_core::Event::event_type(&e.event).to_string())
        .collect();
    Json(json!({
        "position": decided.last_position().map(|p| p.0),
        "events": events,
    }))
    .into_response()
}

async fn make<D>(state: &AppState, decision: D) -> ApiResult
where
    D: Decision<Event = CartEvent>,
    D::Error: Into<ApiError>,
{
    let outcome = state.maker.make(decision).await.map_err(decision_error)?;
    Ok(decided(&outcome))
}

/// The client's fingerprint (ch. 28): a stable hash of its user agent.
pub fn fingerprint(headers: &HeaderMap) -> String {
    let agent = headers
        .get(axum::http::header::USER_AGENT)
        .map(|v| v.as_bytes())
        .unwrap_or(b"unknown");
    // Stable across Rust versions and processes, unlike `DefaultHasher`.
    let mut hash = dcb_core::fnv::Fnv1a::new();
    hash.write(agent);
    format!("fp-{:016x}", hash.finish())
}

#[derive(Deserialize)]
struct AddItemBody {
    cart_id: Option<Uuid>,
    item_id: Uuid,
    product_id: Uuid,
    description: String,
    image: String,
    price: Decimal,
}

async fn add_item(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let cart_id = path_id(path, "cart id")?;
    let body: AddItemBody = parse(&read_body(body).await?)?;
    same_id(cart_id, body.cart_id, "cart_id")?;
    let command = AddItem {
        cart_id,
        item_id: body.item_id,
        product_id: body.product_id,
        description: body.description,
        image: body.image,
        price: body.price,
        fingerprint: fingerprint(&headers),
    };
    command.validate()?;
    make(&state, command).await
}

#[derive(Deserialize)]
struct RemoveItemBody {
    cart_id: Option<Uuid>,
    item_id: Uuid,
}

async fn remove_item(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult {
    let cart_id = path_id(path, "cart id")?;
    let body: RemoveItemBody = parse(&read_body(body).await?)?;
    same_id(cart_id, body.cart_id, "cart_id")?;
    make(
        &state,
        RemoveItem {
            cart_id,
            item_id: body.item_id,
        },
    )
    .await
}

#[derive(Deserialize)]
struct CartIdBody {
    cart_id: Option<Uuid>,
}

/// A body that may be absent (empty) or `{"cart_id": ...}`.
async fn optional_cart_body(cart_id: Uuid, body: Body) -> Result<(), ApiError> {
    let bytes = read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let body: CartIdBody = parse(&bytes)?;
    same_id(cart_id, body.cart_id, "cart_id")
}

async fn clear_cart(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult {
    let cart_id = path_id(path, "cart id")?;
    optional_cart_body(cart_id, body).await?;
    make(&state, ClearCart { cart_id }).await
}

async fn submit_cart(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult {
    let cart_id = path_id(path, "cart id")?;
    optional_cart_body(cart_id, body).await?;
    make(&state, SubmitCart { cart_id }).await
}

#[derive(Deserialize)]
struct ChangePriceBody {
    product_id: Option<Uuid>,
    old_price: Decimal,
    new_price: Decimal,
}

async fn change_price(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult {
    let product_id = path_id(path, "product id")?;
    let body: ChangePriceBody = parse(&read_body(body).await?)?;
    same_id(product_id, body.product_id, "product_id")?;
    let command = ChangePrice {
        product_id,
        old_price: body.old_price,
        new_price: body.new_price,
        idempotency_key: None,
    };
    command.validate()?;
    make(&state, command).await
}

/// The answer of a cart read model: the cart totalled (checked: a history
/// whose prices overflow answers 409 `TotalOverflow`), or 404.
fn cart_view(cart_id: Uuid, items: Option<Vec<CartItem>>) -> ApiResult {
    let Some(items) = items else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            CartError::CartDoesNotExist.code(),
            format!("cart {cart_id} does not exist"),
        ));
    };
    Ok(Json(CartItemsView::new(cart_id, items)?).into_response())
}

async fn get_cart_items(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let cart_id = path_id(path, "cart id")?;
    cart_view(cart_id, cart_items::load(&*state.store, cart_id).await?)
}

async fn get_cart_items_from_db(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let cart_id = path_id(path, "cart id")?;
    let items = cart_items_db::load(&state.pool, cart_id)
        .await
        .map_err(|e| match e.downcast::<sqlx::Error>() {
            Ok(e) => ApiError::from(*e),
            Err(e) => ApiError::internal(e),
        })?;
    cart_view(cart_id, items)
}

async fn get_carts_with_products(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let product_id = path_id(path, "product id")?;
    let rows = carts_with_products::for_product(&state.pool, product_id).await?;
    Ok(Json(rows).into_response())
}

async fn get_inventory(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let product_id = path_id(path, "product id")?;
    match inventories::load(&state.pool, product_id).await? {
        Some(inventory) => Ok(Json(inventory).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "InventoryNotFound",
            format!("no inventory was reported for product {product_id}"),
        )),
    }
}

async fn healthcheck(State(state): State<AppState>) -> ApiResult {
    let head = state.store.head().await?;
    Ok(Json(json!({ "status": "ok", "head": head.map(|p| p.0) })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 4096))
            .expect("a body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    #[test]
    fn an_unknown_outcome_is_a_503_of_its_own_saying_it_may_have_been_applied() {
        let (status, body) = answer(
            StoreError::OutcomeUnknown {
                source: "connection reset after the commit was sent".into(),
            }
            .into(),
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "OutcomeUnknown");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("may or may not have been applied"),
            "{body}"
        );
        let (status, body) = answer(
            StoreError::Unavailable {
                source: "refused".into(),
            }
            .into(),
        );
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("DatabaseUnavailable"))
        );
    }

    /// The in-memory store, except that every append's reply is lost.
    struct LostReplies {
        inner: dcb_core::InMemoryEventStore,
        appends: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl EventStore for LostReplies {
        async fn read(
            &self,
            query: &dcb_core::Query,
            options: dcb_core::ReadOptions,
        ) -> Result<dcb_core::ReadResult, StoreError> {
            self.inner.read(query, options).await
        }

        async fn append(
            &self,
            _events: Vec<dcb_core::EventRecord>,
            _condition: Option<dcb_core::AppendCondition>,
        ) -> Result<dcb_core::AppendResult, StoreError> {
            self.appends
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(StoreError::OutcomeUnknown {
                source: "the connection broke after the commit was sent".into(),
            })
        }
    }

    #[tokio::test]
    async fn a_command_whose_reply_was_lost_answers_503_outcome_unknown_and_is_not_retried() {
        use tower::ServiceExt;
        let lost = Arc::new(LostReplies {
            inner: dcb_core::InMemoryEventStore::new(),
            appends: Default::default(),
        });
        let store: Arc<dyn EventStore> = lost.clone();
        let state = AppState {
            maker: DecisionMaker::new(store.clone()).with_retry(crate::app::retry_policy()),
            store,
            pool: sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://nobody@127.0.0.1:1/unused")
                .expect("a lazy pool"),
        };
        let body = json!({"item_id": Uuid::from_u128(1), "product_id": Uuid::from_u128(2),
                          "description": "d", "image": "i", "price": "1.00"});
        let request = axum::http::Request::post(format!("/additem/{}", Uuid::from_u128(3)))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["error"], "OutcomeUnknown", "{answer}");
        assert_eq!(
            lost.appends.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a command without an idempotency key is not retried blindly"
        );
    }

    #[test]
    fn a_request_the_store_refuses_is_a_400() {
        let (status, body) = answer(StoreError::InvalidRequest("tag too long".into()).into());
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("InvalidRequest"))
        );
    }

    #[test]
    fn an_invalid_value_is_a_400_naming_the_field() {
        let (status, body) = answer(CartError::from(InvalidValue::Nul { field: "image" }).into());
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "InvalidText");
        assert_eq!(body["field"], "image");
        let (status, body) = answer(CartError::TotalOverflow.into());
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("TotalOverflow"))
        );
        assert!(body.get("field").is_none());
    }
}
