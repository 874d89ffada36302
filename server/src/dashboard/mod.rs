//! The web dashboard: one page that follows the cluster live, and the endpoints behind it.
//!
//! - `/`: the page (its HTML, script and style are compiled into the binary; no CDN);
//! - `/api/status`: the cluster as JSON, the same value as `blitzen-server status --json`;
//! - `/api/events`: the same JSON pushed as server-sent events, one per second;
//! - `/metrics`: Prometheus text ([`metrics`]);
//! - `/health`: `ok`, for probes.
//!
//! The dashboard never touches the core: the core publishes a [`Snapshot`] once a second on a
//! `watch` channel, and every request reads the latest one. With a token (on any address but
//! loopback one is required), every endpoint but `/health` and the page itself wants it, as
//! `Authorization: Bearer TOKEN` or `?token=TOKEN`; the page asks for it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blitzen_net::Secret;
use blitzen_protocol::status::ClusterStatus;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub(crate) mod metrics;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The cluster at one moment, with its JSON made once for every reader.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub status: ClusterStatus,
    pub json: String,
}

impl Snapshot {
    pub(crate) fn new(status: ClusterStatus) -> Self {
        let json = serde_json::to_string(&status).unwrap_or_else(|e| {
            serde_json::json!({ "error": format!("cannot encode the status: {e}") }).to_string()
        });
        Self { status, json }
    }
}

/// What every request handler shares.
#[derive(Clone)]
struct Shared {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    token: Option<Arc<Secret>>,
}

/// `?token=…` on a request.
#[derive(Deserialize)]
struct Auth {
    token: Option<String>,
}

impl Shared {
    /// Whether the request carries the token (or none is needed).
    fn allows(&self, headers: &HeaderMap, auth: &Auth) -> bool {
        let Some(token) = &self.token else { return true };
        let bearer = (headers.get(header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or(auth.token.as_deref());
        given.is_some_and(|given| token.matches(given.trim().as_bytes()))
    }
}

fn unauthorized() -> Response {
    let body = serde_json::json!({ "error": "this dashboard needs its token (?token= or an Authorization: Bearer header)" });
    (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")], body.to_string())
        .into_response()
}

/// Serves the dashboard on `listener` until `shutdown` is cancelled (or the core stops
/// publishing, which ends the event streams).
pub(crate) async fn serve(
    listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    token: Option<Secret>,
    shutdown: CancellationToken,
) {
    let shared = Shared { snapshots, token: token.map(Arc::new) };
    let app = Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }))
        .route(
            "/dashboard.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let stopping = shutdown.clone();
    if let Err(e) =
        axum::serve(listener, app).with_graceful_shutdown(stopping.cancelled_owned()).await
    {
        warn!(error = %e, "the dashboard stopped serving");
    }
}

async fn status(State(s): State<Shared>, headers: HeaderMap, Query(auth): Query<Auth>) -> Response {
    if !s.allows(&headers, &auth) {
        return unauthorized();
    }
    let json = s.snapshots.borrow().json.clone();
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// The latest snapshot at once, then each new one, until the server stops.
async fn events(State(s): State<Shared>, headers: HeaderMap, Query(auth): Query<Auth>) -> Response {
    if !s.allows(&headers, &auth) {
        return unauthorized();
    }
    let mut rx = s.snapshots.clone();
    let first = rx.borrow_and_update().json.clone();
    let stream = futures_util::stream::unfold((rx, Some(first)), |(mut rx, first)| async move {
        let json = match first {
            Some(json) => json,
            None => {
                // The sender is gone once the core stops: the stream ends with it.
                rx.changed().await.ok()?;
                rx.borrow_and_update().json.clone()
            }
        };
        Some((Ok::<_, Infallible>(Event::default().event("status").data(json)), (rx, None)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn metrics(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(auth): Query<Auth>,
) -> Response {
    if !s.allows(&headers, &auth) {
        return unauthorized();
    }
    let snapshot = s.snapshots.borrow().clone();
    match metrics::render(&snapshot.status) {
        Ok(text) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}\n"))
            .into_response(),
    }
}
