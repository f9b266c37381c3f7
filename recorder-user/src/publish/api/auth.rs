//! Bearer tokens with roles. A token is `ct_` + 64 hex digits (32 random bytes); the database
//! keeps only its SHA-256, so the token is shown once, at creation, and cannot be read back.
//!
//! Roles are ordered: `viewer` reads (status, CDRs, recordings), `operator` may additionally
//! steer calls (recording control, when it exists), `admin` may additionally manage tokens and
//! configuration. Each route group names the least role it needs.

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{errors::ApiError, sql::Arg, ApiState};
use crate::store::db::{Db, DbError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no randomness for a token: {0}")]
    Random(getrandom::Error),
    #[error("storing the token: {0}")]
    Db(#[from] DbError),
}

/// Who a request was authenticated as; handlers can take it as an extension.
#[derive(Clone, Debug, Serialize)]
pub struct Caller {
    pub token_id: i64,
    pub name: String,
    pub role: Role,
}

/// A stored token, as `GET /api/v1/tokens` lists it (never the token itself).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_ns: i64,
    pub revoked_ns: Option<i64>,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token with `role`; returns its id and the token (the only time it exists in clear).
pub async fn create_token(db: &Db, role: Role, name: &str) -> Result<(i64, String), TokenError> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(TokenError::Random)?;
    let token = format!("ct_{}", hex::encode(raw));
    let sql = "INSERT INTO api_tokens (name, role, token_sha256, created_ns) \
               VALUES ($1, $2, $3, $4) RETURNING id";
    let args = [
        Arg::S(name.to_string()),
        Arg::S(role.as_str().to_string()),
        Arg::S(hash_token(&token)),
        Arg::I(crate::clock::unix_ns_i64()),
    ];
    let (id,) = fetch!(db, (i64,), sql, &args, fetch_one)?;
    Ok((id, token))
}

/// The live (not revoked) token whose hash matches `token`.
pub async fn lookup(db: &Db, token: &str) -> Result<Option<Caller>, DbError> {
    let sql =
        "SELECT id, name, role FROM api_tokens WHERE token_sha256 = $1 AND revoked_ns IS NULL";
    let args = [Arg::S(hash_token(token))];
    let row = fetch!(db, (i64, String, String), sql, &args, fetch_optional)?;
    Ok(row.and_then(|(token_id, name, role)| {
        Some(Caller {
            token_id,
            name,
            role: Role::parse(&role)?,
        })
    }))
}

pub async fn list(db: &Db) -> Result<Vec<TokenInfo>, DbError> {
    let sql = "SELECT id, name, role, created_ns, revoked_ns FROM api_tokens ORDER BY id";
    fetch!(db, TokenInfo, sql, std::iter::empty::<&Arg>(), fetch_all)
}

/// The bearer token of a request, if it carries a well-formed one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Longest token worth looking up: anything longer than ours cannot match, so the hash and the
/// query are spared.
const MAX_TOKEN: usize = 128;

/// Who `token` authenticates as (401 for an unknown, revoked or malformed one). The API's
/// middleware and the console's `login TOKEN` both go through here, so a token means the same
/// role wherever it is used.
pub async fn authenticate(state: &ApiState, token: &str) -> Result<Caller, ApiError> {
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(ApiError::Unauthorized);
    }
    lookup(state.db().await?, token)
        .await?
        .ok_or(ApiError::Unauthorized)
}

/// Middleware: 401 without a valid token, 403 when the token's role is below `need`.
pub async fn require(
    State((state, need)): State<(ApiState, Role)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&req).ok_or(ApiError::Unauthorized)?;
    let caller = authenticate(&state, token).await?;
    if caller.role < need {
        return Err(ApiError::Forbidden {
            have: caller.role.as_str(),
            need: need.as_str(),
        });
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
