//! The operator console: `/console`, a page for admins in the browser over the operators'
//! views (lag, dead letters, alerts), the audit log's chains and the reports.
//!
//! The page holds no data and needs no token: it is a static shell and a script, both
//! compiled into the binary (nothing is loaded from elsewhere). The script signs in with the
//! auth service (`POST /api/v1/auth/login`), keeps the access token in the tab's session
//! storage, and calls the admin APIs with it, so every figure it shows passes the same
//! authorization as a script's call: a non-admin who signs in is answered 403 and sees
//! nothing. It writes what the APIs answer as text, never as markup, since dead letters
//! carry what clients sent; and the page forbids scripts other than its own
//! (Content-Security-Policy), so text that slips through could not run anyway.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What the console's answers allow: its own script and style, calls to its own origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // A new release's page and script arrive together.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

/// `/console` and its two assets.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
