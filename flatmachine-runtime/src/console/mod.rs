//! The console: a local web UI over a checkpoint store (feature `console`; `flatmachine ui`,
//! and `ui` on app binaries built on [`cli::main`](crate::cli::main)). See `docs/console.md`.
//!
//! An axum server, bound to `127.0.0.1` unless told otherwise, serves one page (HTML, CSS
//! and JavaScript embedded in the binary: no CDN, no build step) and a JSON API over the
//! store: runs a page at a time ([`data::list_runs`]), one run with its graph, timeline,
//! agent calls, errors, children and parent ([`data::run_detail`]), the graph as SVG
//! ([`graph::render`]), and server-sent events when a run's store entries change (the store
//! is polled, so runs of other processes update too).
//!
//! The only endpoint that writes is `POST /api/runs/{id}/signal`: it sends a signal on the
//! channel a waiting run waits on, through the console's signal backend (nothing is sent
//! without one). Every request must name the console's own host (`Host`, against DNS
//! rebinding); the POST must also carry the per-session token the page holds (header
//! `x-flatmachine-token`), a same-origin `Origin` when the browser sends one, and a JSON body
//! of at most [`MAX_BODY`] bytes. No CORS headers are ever sent, and every response forbids
//! framing and inline scripts (`Content-Security-Policy`).

pub mod data;
pub mod graph;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::Value;
use crate::persistence::{CheckpointStore, checkpoint_event, validate_execution_id};
use crate::signals::{MAX_SIGNAL_DATA_LEN, SendOptions, SignalBackend};
use data::{RunQuery, Status};

/// Largest request body accepted (a signal's JSON data and its envelope).
pub const MAX_BODY: usize = MAX_SIGNAL_DATA_LEN + 4096;
/// Default port.
pub const DEFAULT_PORT: u16 = 8765;
/// The header carrying the per-session token on writes.
pub const TOKEN_HEADER: &str = "x-flatmachine-token";
/// How often the live endpoint looks at the store.
const POLL: Duration = Duration::from_millis(300);
/// How long one live connection lasts (the page reconnects).
const LIVE_FOR: Duration = Duration::from_secs(600);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// How to start a console.
#[derive(Clone)]
pub struct ConsoleOptions {
    /// The checkpoint store shown.
    pub store: CheckpointStore,
    /// Where signals from the page go (`None`: the page cannot send signals).
    pub signals: Option<Arc<dyn SignalBackend>>,
    /// The address to listen on (default `127.0.0.1:8765`).
    pub addr: SocketAddr,
    /// Accept an address that is not a loopback one (the console has no login: anyone who
    /// can reach it reads every run and can signal waiting ones).
    pub allow_remote: bool,
    /// What the page says the store is (`.checkpoints`, `sqlite:…`).
    pub store_name: String,
}

impl std::fmt::Debug for ConsoleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOptions")
            .field("addr", &self.addr)
            .field("allow_remote", &self.allow_remote)
            .field("store_name", &self.store_name)
            .field("signals", &self.signals.is_some())
            .finish_non_exhaustive()
    }
}

impl ConsoleOptions {
    /// A console over `store` on `127.0.0.1:8765`, without signals.
    pub fn new(store: CheckpointStore) -> Self {
        Self {
            store,
            signals: None,
            addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            allow_remote: false,
            store_name: String::new(),
        }
    }
}

/// Why a console did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// A non-loopback address without [`ConsoleOptions::allow_remote`].
    #[error(
        "refusing to listen on {0}: it is not a loopback address and the console has no login (pass --allow-remote to listen there anyway)"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A console bound to its address, ready to [`serve`](Console::serve).
pub struct Console {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: Router,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("addr", &self.addr).finish()
    }
}

struct AppState {
    store: CheckpointStore,
    signals: Option<Arc<dyn SignalBackend>>,
    token: String,
    /// `Host` values accepted (`None`: any, with `allow_remote`).
    hosts: Option<Vec<String>>,
    store_name: String,
    paths: data::PathCache,
}

impl Console {
    /// Binds `options.addr` (port 0: any free port).
    pub async fn bind(options: ConsoleOptions) -> Result<Self, ConsoleError> {
        if !options.addr.ip().is_loopback() && !options.allow_remote {
            return Err(ConsoleError::NotLoopback(options.addr));
        }
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|source| ConsoleError::Bind {
                addr: options.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ConsoleError::Bind {
            addr: options.addr,
            source,
        })?;
        let hosts = (!options.allow_remote).then(|| allowed_hosts(addr));
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let state = Arc::new(AppState {
            store: options.store,
            signals: options.signals,
            token,
            hosts,
            store_name: options.store_name,
            paths: data::PathCache::default(),
        });
        let app = Router::new()
            .route("/", get(index))
            .route("/runs/{id}", get(index))
            .route("/assets/app.js", get(app_js))
            .route("/assets/app.css", get(app_css))
            .route("/api/info", get(info))
            .route("/api/runs", get(list_runs))
            .route("/api/runs/{id}", get(run_detail))
            .route("/api/runs/{id}/timeline", get(timeline))
            .route("/api/runs/{id}/graph.svg", get(graph_svg))
            .route("/api/runs/{id}/events", get(live))
            .route("/api/runs/{id}/signal", post(signal))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::from_fn_with_state(state.clone(), guard))
            .with_state(state);
        Ok(Self {
            listener,
            addr,
            app,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The `Host` header values a loopback console answers to.
fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![format!("localhost:{port}")];
    match addr.ip() {
        IpAddr::V4(ip) => hosts.push(format!("{ip}:{port}")),
        IpAddr::V6(ip) => hosts.push(format!("[{ip}]:{port}")),
    }
    hosts
}

/// Every request: the `Host` check, then security headers on the response.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(hosts) = &state.hosts {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return error(StatusCode::MISDIRECTED_REQUEST, "unknown host");
        }
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    // The token is hex: nothing in it needs escaping.
    let page = INDEX_HTML.replace("{{TOKEN}}", &state.token);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

async fn info(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "store": state.store_name,
        "signals": state.signals.is_some(),
    }))
    .into_response()
}

/// Query of `GET /api/runs`.
#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Longest search text.
const MAX_SEARCH: usize = 200;

async fn list_runs(
    State(state): State<Arc<AppState>>,
    Query(params): Query<ListParams>,
) -> Response {
    let status = match params.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(s) => Some(s),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "status must be running, waiting, finished, failed or unreadable",
                );
            }
        },
    };
    let search = params.q.filter(|q| !q.trim().is_empty());
    if search.as_ref().is_some_and(|q| q.len() > MAX_SEARCH) {
        return error(StatusCode::BAD_REQUEST, "the search text is too long");
    }
    let cursor = params.cursor.filter(|c| !c.is_empty());
    if let Some(c) = &cursor
        && validate_execution_id(c).is_err()
    {
        return error(StatusCode::BAD_REQUEST, "the cursor is not an execution id");
    }
    let query = RunQuery {
        status,
        search: search.map(|s| s.trim().to_owned()),
        cursor,
        limit: params.limit.unwrap_or(50).clamp(1, data::MAX_PAGE),
    };
    match data::list_runs(&state.store, &query).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn checked_id(id: &str) -> Result<(), Response> {
    validate_execution_id(id)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "not a valid execution id"))
}

/// Query of `GET /api/runs/{id}`.
#[derive(Debug, Deserialize)]
struct DetailParams {
    timeline: Option<usize>,
}

async fn run_detail(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(params): Query<DetailParams>,
) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    let limit = params.timeline.unwrap_or(200).clamp(1, data::MAX_TIMELINE);
    match data::run_detail(&state.store, &state.paths, &id, limit).await {
        Ok(Some(detail)) => {
            let mut body = match serde_json::to_value(&detail) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            body["signals"] = Value::Bool(state.signals.is_some());
            axum::Json(body).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such execution in this store"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Query of `GET /api/runs/{id}/timeline`.
#[derive(Debug, Deserialize)]
struct TimelineParams {
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn timeline(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    Query(params): Query<TimelineParams>,
) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    let limit = params.limit.unwrap_or(200).clamp(1, data::MAX_TIMELINE);
    match data::timeline_window(&state.store, &id, params.offset.unwrap_or(0), limit).await {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn graph_svg(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    let traces = match crate::trace::load_trace(&state.store, &id).await {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let Some(graph) = traces.graph else {
        return error(
            StatusCode::NOT_FOUND,
            "this run wrote no graph (it ran without trace records)",
        );
    };
    let keys = match data::ordered_keys(&state.store, &id).await {
        Ok(keys) => keys,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let path = state.paths.path(&state.store, &id, &keys).await;
    let run = data::summary(&state.store, &id).await;
    let current = match run.status {
        // A finished run's newest checkpoint names `end`: its last state is the final one.
        Status::Finished => path.steps.last().map(|(_, s)| s.as_str()),
        _ => run.state.as_deref(),
    };
    let svg = graph::render(&graph, &path, current, run.status);
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

/// Server-sent events: `update` whenever the run's newest checkpoint or trace records change.
async fn live(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    let started = tokio::time::Instant::now();
    let stream = futures::stream::unfold(
        (state, id, None::<String>, started),
        |(state, id, seen, started)| async move {
            loop {
                if started.elapsed() > LIVE_FOR {
                    return None;
                }
                let version = data::version(&state.store, &id).await.unwrap_or_default();
                if seen.as_deref() != Some(version.as_str()) {
                    let event = Event::default()
                        .event("update")
                        .data(json!({ "version": version, "first": seen.is_none() }).to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (state, id, Some(version), started),
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Body of `POST /api/runs/{id}/signal`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    /// The channel the page believes the run waits on (must match).
    channel: String,
    /// The signal's data.
    data: Value,
}

async fn signal(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = checked_id(&id) {
        return r;
    }
    if let Err(message) = same_site(&state, &headers) {
        return error(StatusCode::FORBIDDEN, message);
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next() == Some("application/json"));
    if !is_json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        );
    }
    let Some(signals) = &state.signals else {
        return error(
            StatusCode::CONFLICT,
            "this console has no signal store to send to (start it with --signals)",
        );
    };
    let body: SignalBody =
        match crate::agents::output::parse_bounded(std::str::from_utf8(&body).unwrap_or_default())
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
        };
    let latest = match state.store.load_latest(&id).await {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such execution in this store"),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let waiting = latest.event.as_deref() == Some(checkpoint_event::WAITING);
    let Some(channel) = latest.waiting_channel.filter(|_| waiting) else {
        return error(StatusCode::CONFLICT, "this run is not waiting for a signal");
    };
    if channel != body.channel {
        return error(
            StatusCode::CONFLICT,
            "the run waits on another channel now: reload the page",
        );
    }
    match signals
        .send(&channel, body.data, SendOptions::default())
        .await
    {
        Ok(sent) => axum::Json(json!({
            "id": sent.id,
            "channel": sent.channel,
            "created_at": sent.created_at,
        }))
        .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

/// The checks of a write: the session token, and a same-origin request.
fn same_site(state: &AppState, headers: &HeaderMap) -> Result<(), &'static str> {
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !constant_time_eq(token.as_bytes(), state.token.as_bytes()) {
        return Err("missing or wrong session token: reload the page");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if origin != format!("http://{host}") {
            return Err("cross-origin request refused");
        }
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.to_str(), Ok("same-origin" | "none"))
    {
        return Err("cross-site request refused");
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn loopback_hosts() {
        let hosts = allowed_hosts(SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert_eq!(hosts, ["localhost:8000", "127.0.0.1:8000"]);
    }
}
