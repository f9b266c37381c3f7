//! The audit log (`audit` table, migration 0009): who downloaded a call's recording and who
//! started, stopped, paused or resumed one, through the API or the telnet console, with the
//! caller's token (id and name) or `console` for the console password, the call, the time and
//! the peer address. Read through `GET /api/v1/audit` (admin).
//!
//! **A download is served even when its audit row cannot be written.** The write is bounded
//! ([`WRITE_TIMEOUT`]); a failure or timeout is logged (with who, what and which call, so the
//! journal keeps the record) and counted (`audit_write_failures` on `GET /status`), and the
//! request goes on. Refusing instead would make every recording unreachable whenever the
//! database is slow, while the log line still says who fetched what; the recording route needs
//! the database to find the file anyway, so a dead database refuses the download before any
//! audit is due. Recording control is audited after it took effect, for the same reason: the
//! operator's pause must not depend on the audit table.

use std::{sync::atomic::Ordering, time::Duration};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    Json,
};
use serde::{Deserialize, Serialize};

use super::{auth::Caller, calls::parse_rfc3339, errors::ApiError, sql::Arg, ApiState};
use crate::store::{
    cdr::rfc3339,
    db::{Db, DbError},
};

/// Longest wait for one audit row: past it the request goes on and the failure is counted.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// `GET /audit` page size when not given, and its bound.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// Deepest `offset` accepted: further back, narrow with `since` instead (a large OFFSET makes
/// the database walk every skipped row).
pub const MAX_OFFSET: u32 = 100_000;

/// Who acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// An API token (its id and its name at the time), through the API or `login TOKEN` on the
    /// console.
    Token { id: i64, name: String },
    /// The console password.
    Console,
}

impl From<&Caller> for Actor {
    fn from(c: &Caller) -> Self {
        Actor::Token {
            id: c.token_id,
            name: c.name.clone(),
        }
    }
}

/// One audited action.
#[derive(Clone, Debug)]
pub struct Entry {
    pub actor: Actor,
    /// `download`, or a recording action (`start`, `stop`, `pause`, `resume`).
    pub action: &'static str,
    pub call_uuid: String,
    /// The SIP Call-ID, when the handler knows it.
    pub call_id: Option<String>,
    /// `ip:port` of the client, when known.
    pub peer: Option<String>,
}

/// Stores `e` as happened at `at_ns`.
pub async fn write(db: &Db, e: &Entry, at_ns: i64) -> Result<(), DbError> {
    let (token_id, actor) = match &e.actor {
        Actor::Token { id, name } => (Some(*id), name.clone()),
        Actor::Console => (None, "console".to_string()),
    };
    let args = [
        Arg::I(at_ns),
        Arg::OI(token_id),
        Arg::S(actor),
        Arg::S(e.action.to_string()),
        Arg::S(e.call_uuid.clone()),
        Arg::OS(e.call_id.clone()),
        Arg::OS(e.peer.clone()),
    ];
    let sql = "INSERT INTO audit (at_ns, token_id, actor, action, call_uuid, call_id, peer) \
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";
    fetch!(db, (i64,), sql, &args, fetch_one)?;
    Ok(())
}

/// Writes `e` within [`WRITE_TIMEOUT`]; false (logged and counted) when it could not be. Never
/// fails the caller's request: see the module documentation.
pub async fn record(state: &ApiState, e: Entry) -> bool {
    let at_ns = crate::clock::unix_ns_i64();
    let attempt = async {
        let db = state.db().await.map_err(|e| e.to_string())?;
        write(db, &e, at_ns).await.map_err(|e| e.to_string())
    };
    let why = match tokio::time::timeout(WRITE_TIMEOUT, attempt).await {
        Ok(Ok(())) => return true,
        Ok(Err(why)) => why,
        Err(_) => format!("no answer within {} s", WRITE_TIMEOUT.as_secs()),
    };
    state.inner.audit_failures.fetch_add(1, Ordering::Relaxed);
    let who = match &e.actor {
        Actor::Token { id, name } => format!("token {id} ({name})"),
        Actor::Console => "console".to_string(),
    };
    log::error!(
        "audit row not written ({why}): {} of call {} by {who} from {}",
        e.action,
        e.call_uuid,
        e.peer.as_deref().unwrap_or("-")
    );
    false
}

/// One row of `GET /audit`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    #[serde(skip)]
    pub at_ns: i64,
    /// RFC 3339.
    #[sqlx(skip)]
    pub at: String,
    /// The API token; null for the console password.
    pub token_id: Option<i64>,
    /// The token's name at the time, or `console`.
    pub actor: String,
    pub action: String,
    pub call_uuid: String,
    pub call_id: Option<String>,
    pub peer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    /// Only entries at or after this time (RFC 3339).
    pub since: Option<String>,
}

#[derive(Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditRow>,
}

/// `GET /api/v1/audit` (admin): newest first, `limit` (1 to [`MAX_LIMIT`]) from `offset` (at
/// most [`MAX_OFFSET`]), optionally only from `since` on.
pub async fn list(
    State(state): State<ApiState>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(p) = params?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let offset = p.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::BadRequest(format!(
            "offset must be at most {MAX_OFFSET}; narrow with since"
        )));
    }
    let since = match &p.since {
        Some(s) => parse_rfc3339(s).ok_or_else(|| {
            ApiError::BadRequest(format!("since {s:?}: expected an RFC 3339 time"))
        })?,
        None => i64::MIN,
    };
    let args = [
        Arg::I(since),
        Arg::I(i64::from(limit)),
        Arg::I(i64::from(offset)),
    ];
    let sql = "SELECT id, at_ns, token_id, actor, action, call_uuid, call_id, peer FROM audit \
               WHERE at_ns >= $1 ORDER BY at_ns DESC, id DESC LIMIT $2 OFFSET $3";
    let mut entries = fetch!(state.db().await?, AuditRow, sql, &args, fetch_all)?;
    for e in &mut entries {
        e.at = rfc3339(u64::try_from(e.at_ns).unwrap_or(0));
    }
    Ok(Json(AuditPage { entries }))
}
