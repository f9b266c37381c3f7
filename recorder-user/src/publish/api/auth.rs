//! Bearer tokens with roles. A token is `ct_` + 64 hex digits (32 random bytes); the database
//! keeps only its SHA-256, so the token is shown once, at creation, and cannot be read back.
//!
//! A token may expire (`expires_ns`, set at creation from an `--expires-in` / `expires_in`
//! span, see [`parse_expires_in`]) and may be revoked (`revoked_ns`). Nothing about a token is
//! cached: [`authenticate`] reads the row on every request, so a revocation or an expiry takes
//! effect on the very next request (one indexed lookup by hash per request is cheap).
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

/// A stored token, as `GET /api/v1/tokens` and `calltap token list` show it (never the token
/// itself, which is not stored).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_ns: i64,
    /// When the token stops working; null: never.
    pub expires_ns: Option<i64>,
    pub revoked_ns: Option<i64>,
}

/// A bad token lifetime (`--expires-in`, `expires_in`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error("expiry {0:?}: expected a whole number and a unit, m (minutes), h, d or w (weeks), e.g. 30d")]
    Format(String),
    #[error("expiry {0:?}: must be more than zero")]
    Zero(String),
    #[error("expiry {0:?}: at most {MAX_EXPIRY_DAYS} days")]
    TooLong(String),
}

/// Longest lifetime accepted: ten years, far past any sane rotation, and well inside `i64` ns.
pub const MAX_EXPIRY_DAYS: u64 = 3650;

/// A token lifetime: a whole number and one unit, `m` (minutes), `h`, `d` or `w` (weeks), such
/// as `90m`, `12h`, `30d`. One relative form only, so the CLI and the API read the same thing
/// and no clock or time zone of the client is involved.
pub fn parse_expires_in(s: &str) -> Result<std::time::Duration, ExpiryError> {
    let format = || ExpiryError::Format(s.to_string());
    let t = s.trim();
    let unit = t.chars().last().ok_or_else(format)?;
    let secs: u64 = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return Err(format()),
    };
    let digits = &t[..t.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format());
    }
    // Too many digits to parse is also too long.
    let n: u64 = digits
        .parse()
        .map_err(|_| ExpiryError::TooLong(s.to_string()))?;
    if n == 0 {
        return Err(ExpiryError::Zero(s.to_string()));
    }
    let total = n
        .checked_mul(secs)
        .filter(|&t| t <= MAX_EXPIRY_DAYS * 86_400)
        .ok_or_else(|| ExpiryError::TooLong(s.to_string()))?;
    Ok(std::time::Duration::from_secs(total))
}

/// The expiry time (ns since the epoch) of a token made at `now_ns` living `span`.
pub fn expires_at(now_ns: i64, span: std::time::Duration) -> i64 {
    // Bounded by MAX_EXPIRY_DAYS, so this cannot overflow before the year 2250.
    now_ns.saturating_add(i64::try_from(span.as_nanos()).unwrap_or(i64::MAX))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token with `role`; returns its id and the token (the only time it exists in clear).
pub async fn create_token(db: &Db, role: Role, name: &str) -> Result<(i64, String), TokenError> {
    create_token_expiring(db, role, name, None).await
}

/// As [`create_token`], refused from `expires_ns` (ns since the epoch) on when given.
pub async fn create_token_expiring(
    db: &Db,
    role: Role,
    name: &str,
    expires_ns: Option<i64>,
) -> Result<(i64, String), TokenError> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(TokenError::Random)?;
    let token = format!("ct_{}", hex::encode(raw));
    let args = [
        Arg::S(name.to_string()),
        Arg::S(role.as_str().to_string()),
        Arg::S(hash_token(&token)),
        Arg::I(crate::clock::unix_ns_i64()),
    ];
    let (id,) = match expires_ns {
        Some(at) => {
            let sql = "INSERT INTO api_tokens (name, role, token_sha256, created_ns, expires_ns) \
                       VALUES ($1, $2, $3, $4, $5) RETURNING id";
            let args = args.into_iter().chain([Arg::I(at)]).collect::<Vec<_>>();
            fetch!(db, (i64,), sql, &args, fetch_one)?
        }
        None => {
            let sql = "INSERT INTO api_tokens (name, role, token_sha256, created_ns) \
                       VALUES ($1, $2, $3, $4) RETURNING id";
            fetch!(db, (i64,), sql, &args, fetch_one)?
        }
    };
    Ok((id, token))
}

/// Revokes token `id` now. `Some(true)`: revoked now; `Some(false)`: it was revoked already
/// (the first revocation time is kept); `None`: no such token.
pub async fn revoke(db: &Db, id: i64) -> Result<Option<bool>, DbError> {
    let sql = "UPDATE api_tokens SET revoked_ns = $1 WHERE id = $2 AND revoked_ns IS NULL \
               RETURNING id";
    let args = [Arg::I(crate::clock::unix_ns_i64()), Arg::I(id)];
    if fetch!(db, (i64,), sql, &args, fetch_optional)?.is_some() {
        return Ok(Some(true));
    }
    let args = [Arg::I(id)];
    let known = fetch!(
        db,
        (i64,),
        "SELECT id FROM api_tokens WHERE id = $1",
        &args,
        fetch_optional
    )?;
    Ok(known.map(|_| false))
}

/// The live token whose hash matches `token`: not revoked, not expired.
pub async fn lookup(db: &Db, token: &str) -> Result<Option<Caller>, DbError> {
    let sql = "SELECT id, name, role FROM api_tokens WHERE token_sha256 = $1 \
               AND revoked_ns IS NULL AND (expires_ns IS NULL OR expires_ns > $2)";
    let args = [
        Arg::S(hash_token(token)),
        Arg::I(crate::clock::unix_ns_i64()),
    ];
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
    let sql = "SELECT id, name, role, created_ns, expires_ns, revoked_ns FROM api_tokens \
               ORDER BY id";
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

/// Who `token` authenticates as (401 for an unknown, revoked, expired or malformed one). The API's
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn expires_in_takes_one_number_and_one_unit() {
        let d = |s| parse_expires_in(s);
        assert_eq!(d("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(d("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(d("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(d(" 2w "), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(d("3650d"), Ok(Duration::from_secs(3650 * 86_400)));
        for bad in [
            "", "d", "30", "30s", "1.5d", "-1d", "+1d", "30 d", "3d4h", "1D", "ä",
        ] {
            assert!(
                matches!(d(bad), Err(ExpiryError::Format(_))),
                "{bad:?}: {:?}",
                d(bad)
            );
        }
        assert_eq!(d("0h"), Err(ExpiryError::Zero("0h".into())));
        for long in [
            "3651d",
            "522w",
            "99999999999999999999999d",
            "18446744073709551615w",
        ] {
            assert!(matches!(d(long), Err(ExpiryError::TooLong(_))), "{long}");
        }
        assert_eq!(expires_at(1_000, Duration::from_secs(1)), 1_000_001_000);
    }

    /// A revoked token and an expired one are refused by the same lookup the API and the
    /// console use; revoking twice keeps the first time; an unknown id is told apart.
    #[tokio::test]
    async fn revoked_and_expired_tokens_are_not_found() {
        let tmp = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", tmp.path().join("cdr.db").display());
        let db = crate::store::db::prepare(&url, Duration::from_secs(5))
            .await
            .expect("db");
        let (id, token) = create_token(&db, Role::Operator, "op")
            .await
            .expect("token");
        assert_eq!(
            lookup(&db, &token)
                .await
                .expect("lookup")
                .map(|c| c.token_id),
            Some(id)
        );
        assert_eq!(revoke(&db, id).await.expect("revoke"), Some(true));
        assert!(lookup(&db, &token).await.expect("lookup").is_none());
        let first = list(&db).await.expect("list")[0].revoked_ns;
        assert!(first.is_some());
        assert_eq!(revoke(&db, id).await.expect("again"), Some(false));
        assert_eq!(list(&db).await.expect("list")[0].revoked_ns, first);
        assert_eq!(revoke(&db, id + 100).await.expect("unknown"), None);

        let now = crate::clock::unix_ns_i64();
        let (_, past) = create_token_expiring(&db, Role::Admin, "old", Some(now - 1))
            .await
            .expect("token");
        assert!(lookup(&db, &past).await.expect("lookup").is_none());
        let later = now + 3_600_000_000_000;
        let (fid, future) = create_token_expiring(&db, Role::Admin, "new", Some(later))
            .await
            .expect("token");
        assert_eq!(
            lookup(&db, &future)
                .await
                .expect("lookup")
                .map(|c| c.token_id),
            Some(fid)
        );
        let listed = list(&db).await.expect("list");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[2].expires_ns, Some(later));
        assert_eq!(listed[0].expires_ns, None);
        db.close().await;
    }
}
