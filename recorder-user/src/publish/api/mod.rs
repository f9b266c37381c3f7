//! The REST API, versioned under `/api/v1`: status, call search and CDR detail, recording
//! download, API tokens, the audit log ([`audit`]). [`router`] gives routes that the HTTP
//! server (`publish::http`) mounts beside `/metrics`; it reads only the database, the
//! recordings directory and atomics that the capture threads publish (and writes audit rows),
//! so nothing here can slow or stop capture.
//!
//! Every route but `/api/v1/openapi.json` needs a bearer token (see [`auth`]); errors all have
//! the shape of [`errors::ApiError`].
//!
//! **Adding a route**: its handler in a file of this folder (one per resource), its line in
//! [`router`] under the least role allowed, and its entry in [`openapi`] (`ROUTES` and the
//! document); a test holds the router and the document to each other.

#[macro_use]
mod sql;
pub mod active;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod errors;
pub mod openapi;
pub mod rules;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{rejection::JsonRejection, State},
    http::StatusCode,
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
    Extension, Json, Router,
};
use serde::{Deserialize, Serialize};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use self::{
    auth::Role,
    errors::{error_response, ApiError},
};
use crate::{
    publish::live::LiveCalls,
    rules::RuleAction,
    settings::ReloadReport,
    store::{
        config::{ArchiveSettings, DatabaseConfig, StorageConfig},
        db::{self, Db},
        writer::{WriterCounters, WriterSnapshot},
    },
};

/// What the API reads of the configuration (the daemon's `Config` hands it over).
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    /// Where archived recordings are served from.
    pub archive: ArchiveSettings,
    /// `[recording] default`, shown beside the rules.
    pub recording_default: RuleAction,
}

/// Re-reads the daemon's configuration for `POST /reload` (the daemon's reloader).
pub trait Reload: Send + Sync {
    /// What changed and was applied, or what is wrong with the new configuration.
    fn reload(&self) -> Result<ReloadReport, String>;
}

/// Largest request body accepted: the API takes small JSON documents only.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A request that has not produced its response head by then gets 408. A recording download
/// streams its body after that, so long files are not cut.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the status page's database check, so a dead database cannot stall it.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What `calltap run` captures on, once it knows (the source is picked after XDP tries to
/// attach).
#[derive(Clone, Debug, Serialize)]
pub struct CaptureInfo {
    pub source: String,
    pub interfaces: Vec<String>,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connected on first use inside the HTTP server's runtime (sqlx connections belong to the
    /// runtime that made them), and retried on later requests while the database is away: the
    /// API starts, and answers 503, whatever the database does.
    db: tokio::sync::OnceCell<Db>,
    /// What to connect to when `db` is empty.
    cfg: ApiSettings,
    data_dir: PathBuf,
    recordings_dir: PathBuf,
    started: Instant,
    capture: Mutex<Option<CaptureInfo>>,
    writer: Option<Arc<WriterCounters>>,
    /// The calls in progress, once `calltap run` has its workers.
    live: std::sync::OnceLock<Arc<LiveCalls>>,
    /// Configuration reload, once `calltap run` has its threads.
    reload: std::sync::OnceLock<Arc<dyn Reload>>,
    /// Workers, rings, archive and webhook state for the status page.
    metrics: std::sync::OnceLock<Arc<crate::publish::metrics::Metrics>>,
    /// The recording rules in force, once `calltap run` has them: replaced after each change
    /// through `/rules`.
    rules: std::sync::OnceLock<Arc<crate::rules::LiveRules>>,
    /// Audit rows that could not be written ([`audit::record`]).
    audit_failures: std::sync::atomic::AtomicU64,
}

impl ApiState {
    /// State over an open, migrated CDR database and the data directory of `cfg`; `writer`
    /// adds the CDR writer's live counters to the status page.
    pub fn new(db: Db, cfg: &ApiSettings, writer: Option<Arc<WriterCounters>>) -> ApiState {
        Self::with_db(tokio::sync::OnceCell::new_with(Some(db)), cfg, writer)
    }

    /// State that connects to `cfg`'s CDR database on first use (what `calltap run` uses: it
    /// builds the state before the HTTP server's runtime exists).
    pub fn connecting(cfg: &ApiSettings, writer: Option<Arc<WriterCounters>>) -> ApiState {
        Self::with_db(tokio::sync::OnceCell::new(), cfg, writer)
    }

    fn with_db(
        db: tokio::sync::OnceCell<Db>,
        cfg: &ApiSettings,
        writer: Option<Arc<WriterCounters>>,
    ) -> ApiState {
        ApiState {
            inner: Arc::new(Inner {
                db,
                cfg: cfg.clone(),
                data_dir: cfg.storage.data_dir.clone(),
                recordings_dir: cfg.storage.recordings_dir(),
                started: Instant::now(),
                capture: Mutex::new(None),
                writer,
                live: std::sync::OnceLock::new(),
                reload: std::sync::OnceLock::new(),
                metrics: std::sync::OnceLock::new(),
                rules: std::sync::OnceLock::new(),
                audit_failures: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Records the capture source once it is running.
    pub fn set_capture(&self, info: CaptureInfo) {
        *lock(&self.inner.capture) = Some(info);
    }

    /// Connects the live-call registry (active calls, recording control); set once.
    pub fn set_live(&self, live: Arc<LiveCalls>) {
        let _ = self.inner.live.set(live);
    }

    pub fn live(&self) -> Option<&Arc<LiveCalls>> {
        self.inner.live.get()
    }

    /// Connects the recording rules in force (see [`rules`]); set once.
    pub fn set_rules(&self, rules: Arc<crate::rules::LiveRules>) {
        let _ = self.inner.rules.set(rules);
    }

    pub fn rules(&self) -> Option<&Arc<crate::rules::LiveRules>> {
        self.inner.rules.get()
    }

    /// `[recording] default` of the configuration the state was built with.
    pub fn recording_default(&self) -> RuleAction {
        self.inner.cfg.recording_default
    }

    /// Adds workers, rings, archive and webhooks to `GET /status`.
    pub fn set_metrics(&self, metrics: Arc<crate::publish::metrics::Metrics>) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Audit rows not written so far (timeouts, database errors): each one was logged instead.
    pub fn audit_failures(&self) -> u64 {
        self.inner
            .audit_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_reloader(&self, reloader: Arc<dyn Reload>) {
        let _ = self.inner.reload.set(reloader);
    }

    /// The CDR database, connecting first if needed; 503 while it cannot be reached.
    pub async fn db(&self) -> Result<&Db, ApiError> {
        Ok(self
            .inner
            .db
            .get_or_try_init(|| {
                let cfg = &self.inner.cfg;
                let url = cfg.database.url_in(&cfg.storage.data_dir);
                // Only connects: the daemon (or the command serving the API) migrated it.
                let timeout = Duration::from_millis(cfg.database.write_timeout_ms.max(2000));
                async move { Db::connect(&url, timeout).await }
            })
            .await?)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is replaced whole; a panic elsewhere cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `POST /api/v1/reload`: re-reads the configuration; what changed is applied or listed as
/// needing a restart. An invalid file changes nothing (409 with the file, key and expectation).
async fn reload(State(state): State<ApiState>) -> Result<Json<ReloadReport>, ApiError> {
    let reloader =
        state.inner.reload.get().cloned().ok_or_else(|| {
            ApiError::Conflict("this server has no configuration to reload".into())
        })?;
    let report = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Conflict)?;
    log::info!("configuration reloaded through the API: {report}");
    Ok(Json(report))
}

/// The API routes, all under `/api/v1`, with their auth, body limit and timeout layers.
pub fn router(state: ApiState) -> Router {
    let viewer = Router::new()
        .route("/status", get(status))
        .route("/calls", get(calls::search))
        .route("/calls/active", get(active::list))
        .route("/calls/{uuid}", get(calls::detail))
        .route("/calls/{uuid}/recording", get(calls::recording))
        .route("/rules", get(rules::list))
        .route("/rules/{id}", get(rules::get))
        .route_layer(from_fn_with_state(
            (state.clone(), Role::Viewer),
            auth::require,
        ));
    let operator = Router::new()
        .route("/calls/{uuid}/recording", post(active::control))
        .route_layer(from_fn_with_state(
            (state.clone(), Role::Operator),
            auth::require,
        ));
    let admin = Router::new()
        .route("/tokens", get(tokens_list).post(tokens_create))
        .route("/tokens/{id}", delete(tokens_revoke))
        .route("/audit", get(audit::list))
        .route("/reload", post(reload))
        .route("/rules", post(rules::create))
        .route("/rules/{id}", put(rules::update).delete(rules::delete))
        .route_layer(from_fn_with_state(
            (state.clone(), Role::Admin),
            auth::require,
        ));
    let api = Router::new()
        .route("/openapi.json", get(openapi_json))
        .merge(viewer)
        .merge(operator)
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    Router::new()
        .nest("/api/v1", api)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such API route")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

#[derive(Serialize)]
struct DatabaseStatus {
    backend: String,
    reachable: bool,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    uptime_s: u64,
    data_dir: String,
    recordings_dir: String,
    capture: Option<CaptureInfo>,
    database: DatabaseStatus,
    cdr_store: Option<WriterSnapshot>,
    /// Audit rows that could not be written (each was logged instead).
    audit_write_failures: u64,
    /// Workers, rings, archive queue, webhooks (when `calltap run` serves the API).
    #[serde(flatten)]
    health: Option<crate::publish::metrics::Health>,
}

/// `GET /api/v1/status`
async fn status(State(state): State<ApiState>) -> Json<Status> {
    let s = &state.inner;
    // Cloned first: the guard must not live across the database ping below.
    let capture = lock(&s.capture).clone();
    let reachable = match state.db().await {
        Ok(db) => db.ping(PING_TIMEOUT).await.is_ok(),
        Err(_) => false,
    };
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: s.started.elapsed().as_secs(),
        data_dir: s.data_dir.display().to_string(),
        recordings_dir: s.recordings_dir.display().to_string(),
        capture,
        database: DatabaseStatus {
            backend: match db::Backend::of_url(&s.cfg.database.url_in(&s.cfg.storage.data_dir)) {
                Some(b) => b.to_string(),
                None => "unknown".to_string(),
            },
            reachable,
        },
        cdr_store: s.writer.as_ref().map(|w| w.snapshot()),
        audit_write_failures: state.audit_failures(),
        health: s.metrics.get().map(|m| m.health()),
    })
}

/// A JSON request body, or the API's error for a body that is too large (413) or not the
/// expected document (400).
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge { limit: BODY_LIMIT }
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })
}

/// RFC 3339 of a stored nanosecond time.
fn time_of(ns: i64) -> String {
    crate::store::cdr::rfc3339(u64::try_from(ns).unwrap_or(0))
}

/// A token as the API lists it: the stored row with its times also in RFC 3339.
#[derive(Serialize)]
struct TokenView {
    #[serde(flatten)]
    info: auth::TokenInfo,
    created: String,
    expires: Option<String>,
    revoked: Option<String>,
    /// Whether it authenticates now (neither revoked nor expired).
    active: bool,
}

#[derive(Serialize)]
struct TokenList {
    tokens: Vec<TokenView>,
}

/// `GET /api/v1/tokens` (admin)
async fn tokens_list(State(state): State<ApiState>) -> Result<Json<TokenList>, ApiError> {
    let now = crate::clock::unix_ns_i64();
    let tokens = auth::list(state.db().await?)
        .await?
        .into_iter()
        .map(|info| TokenView {
            created: time_of(info.created_ns),
            expires: info.expires_ns.map(time_of),
            revoked: info.revoked_ns.map(time_of),
            active: info.revoked_ns.is_none() && info.expires_ns.is_none_or(|e| e > now),
            info,
        })
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /api/v1/tokens/{id}` (admin): 204, also for a token revoked before (the first
/// revocation time is kept); 404 for an unknown id. The token is refused from its next request
/// on (nothing caches tokens, see [`auth`]).
async fn tokens_revoke(
    State(state): State<ApiState>,
    Extension(caller): Extension<auth::Caller>,
    id: Result<axum::extract::Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    let axum::extract::Path(id) = id?;
    match auth::revoke(state.db().await?, id).await? {
        None => Err(ApiError::NotFound(format!("no token {id}"))),
        Some(now) => {
            if now {
                log::info!(
                    "API token {id} revoked by API (token {} {:?})",
                    caller.token_id,
                    caller.name
                );
            }
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// The client's `ip:port`, when the server was started with connect info.
fn peer_of(
    info: Option<Extension<axum::extract::ConnectInfo<crate::publish::http::PeerAddr>>>,
) -> Option<String> {
    info.map(|Extension(axum::extract::ConnectInfo(p))| p.0.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    role: String,
    #[serde(default)]
    name: String,
    /// Lifetime, as `calltap token create --expires-in` takes it (`30d`); none: never expires.
    #[serde(default)]
    expires_in: Option<String>,
}

#[derive(Serialize)]
struct TokenCreated {
    id: i64,
    role: &'static str,
    name: String,
    token: String,
    /// RFC 3339; null: never expires.
    expires: Option<String>,
}

/// `POST /api/v1/tokens` (admin)
async fn tokens_create(
    State(state): State<ApiState>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "role {:?}: expected viewer, operator or admin",
            req.role
        ))
    })?;
    if req.name.len() > 200 {
        return Err(ApiError::BadRequest("name: at most 200 bytes".into()));
    }
    let expires_ns = match &req.expires_in {
        Some(span) => {
            let span =
                auth::parse_expires_in(span).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Some(auth::expires_at(crate::clock::unix_ns_i64(), span))
        }
        None => None,
    };
    let (id, token) = auth::create_token_expiring(state.db().await?, role, &req.name, expires_ns)
        .await
        .map_err(|e| match e {
            auth::TokenError::Db(e) => ApiError::Database(e),
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id,
            role: role.as_str(),
            name: req.name,
            token,
            expires: expires_ns.map(time_of),
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests;
