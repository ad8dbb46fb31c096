//! Who may use the console: the token check (a bearer header, or the
//! cookie the login form sets), the refusal of actions sent from other
//! sites' pages, and the headers every answer carries.

use axum::extract::{Form, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::page::{Page, PageError, Section};
use super::{Base, State};

/// The cookie that carries the token (base64url of it) after a login.
pub(crate) const COOKIE: &str = "dcb_console_token";

/// Pages carry user data: never cached, never framed, and no script runs
/// on them (they have none; this keeps it so should escaping ever fail).
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Checks every request: actions from other sites are refused, and with a
/// token configured nothing but the login form is served without it.
pub(crate) async fn guard(
    axum::extract::State(shared): State,
    request: Request,
    next: Next,
) -> Response {
    let base = Base::from_request(&request);
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    let mut response = if !reading && cross_site(request.headers()) {
        PageError::new(
            StatusCode::FORBIDDEN,
            "refused: this action was sent from another site's page",
        )
        .into_response()
    } else {
        match &shared.token {
            Some(token)
                if request.uri().path() != "/login" && !authorized(request.headers(), token) =>
            {
                if reading {
                    let page = login_page(&base, shared.ops.schema(), None);
                    (StatusCode::UNAUTHORIZED, page).into_response()
                } else {
                    PageError::new(
                        StatusCode::UNAUTHORIZED,
                        "refused: this console's actions need its token \
                         (Authorization: Bearer <token>, or log in)",
                    )
                    .into_response()
                }
            }
            _ => next.run(request).await,
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether a browser sent this request from another site's page.
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return !matches!(site, "same-origin" | "none");
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (None, _) => false,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_none_or(|(_, authority)| authority != host),
        (Some(_), None) => true,
    }
}

/// Whether the request carries `token`.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let same = |given: &[u8]| given.ct_eq(token.as_bytes()).into();
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "))
        .any(|given| same(given.trim().as_bytes()));
    bearer
        || headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .filter_map(|(_, value)| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value)
                    .ok()
            })
            .any(|given| same(&given))
}

fn login_page(base: &Base, schema: &str, error: Option<&str>) -> axum::response::Html<String> {
    Page {
        base,
        title: "Log in",
        section: Section::None,
        schema,
        refresh: None,
        flash: None,
    }
    .render(html! {
        h1 { "Log in" }
        @if let Some(error) = error {
            div.error { (error) }
        }
        p { "This console needs its token." }
        form.filters method="post" action=(base.at("/login")) {
            label { "Token" input type="password" name="token" autocomplete="current-password" autofocus; }
            button.primary type="submit" { "Log in" }
        }
    })
}

/// The login form.
pub(crate) async fn login_form(
    axum::extract::State(shared): State,
    base: Base,
) -> axum::response::Html<String> {
    login_page(&base, shared.ops.schema(), None)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// Checks the token and sets the cookie.
pub(crate) async fn login(
    axum::extract::State(shared): State,
    base: Base,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(token) = &shared.token else {
        return Redirect::to(&base.at("/")).into_response();
    };
    if !bool::from(form.token.as_bytes().ct_eq(token.as_bytes())) {
        let page = login_page(&base, shared.ops.schema(), Some("wrong token"));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    }
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let cookie = format!(
        "{COOKIE}={value}; Path={}; HttpOnly; SameSite=Strict",
        cookie_path(&base)
    );
    let mut response = Redirect::to(&base.at("/")).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Forgets the cookie.
pub(crate) async fn logout(base: Base) -> Response {
    let cookie = format!(
        "{COOKIE}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0",
        cookie_path(&base)
    );
    let mut response = Redirect::to(&base.at("/login")).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn cookie_path(base: &Base) -> &str {
    if base.0.is_empty() {
        "/"
    } else {
        &base.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn other_sites_pages_are_told_apart() {
        assert!(!cross_site(&headers(&[])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://127.0.0.1:3000"),
            ("host", "127.0.0.1:3000")
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:3000")
        ])));
        assert!(cross_site(&headers(&[("origin", "null"), ("host", "h")])));
    }

    #[test]
    fn the_token_comes_as_a_bearer_or_as_the_cookie() {
        let token = "0123456789abcdef-token";
        assert!(!authorized(&headers(&[]), token));
        assert!(authorized(
            &headers(&[("authorization", "Bearer 0123456789abcdef-token")]),
            token
        ));
        assert!(!authorized(
            &headers(&[("authorization", "Bearer 0123456789abcdef-toke")]),
            token
        ));
        let cookie = format!(
            "a=b; {COOKIE}={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
        );
        assert!(authorized(&headers(&[("cookie", &cookie)]), token));
        assert!(!authorized(
            &headers(&[("cookie", "dcb_console_token=x")]),
            token
        ));
    }
}
