//! `calltap token create|list|revoke`: REST API bearer tokens, stored hashed in the CDR
//! database (the one the daemon uses, so a change applies at once, also to a running daemon:
//! nothing caches tokens).

use std::fmt::Write as _;

use crate::{
    config::Config,
    publish::api::auth::{self, Role, TokenError, TokenInfo},
    store::{
        cdr::rfc3339,
        db::{Db, DbError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum TokenCmdError {
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("no token {0}")]
    NotFound(i64),
}

/// A token just created: shown once, never stored in clear.
pub struct Created {
    pub id: i64,
    pub token: String,
    pub expires_ns: Option<i64>,
}

/// Opens (and migrates) the configured database and runs `f` on it.
fn with_db<T>(
    cfg: &Config,
    f: impl AsyncFnOnce(&Db) -> Result<T, TokenCmdError>,
) -> Result<T, TokenCmdError> {
    let rt = crate::runtime::current_thread().map_err(TokenCmdError::Runtime)?;
    rt.block_on(async {
        // `prepare` is safe beside a daemon migrating the same fresh database at once.
        let timeout = std::time::Duration::from_millis(cfg.database.write_timeout_ms);
        let db = crate::store::db::prepare(&cfg.database_url(), timeout).await?;
        let done = f(&db).await;
        db.close().await;
        done
    })
}

/// Stores a new token with `role`, refused after `expires_in` when given.
pub fn create(
    cfg: &Config,
    role: Role,
    name: &str,
    expires_in: Option<std::time::Duration>,
) -> Result<Created, TokenCmdError> {
    with_db(cfg, async |db| {
        let expires_ns = expires_in.map(|s| auth::expires_at(crate::clock::unix_ns_i64(), s));
        let (id, token) = auth::create_token_expiring(db, role, name, expires_ns).await?;
        Ok(Created {
            id,
            token,
            expires_ns,
        })
    })
}

/// Every token (never the secret: it is not stored).
pub fn list(cfg: &Config) -> Result<Vec<TokenInfo>, TokenCmdError> {
    with_db(cfg, async |db| Ok(auth::list(db).await?))
}

/// Revokes token `id`; Ok(false) when it was revoked already.
pub fn revoke(cfg: &Config, id: i64) -> Result<bool, TokenCmdError> {
    with_db(cfg, async |db| {
        auth::revoke(db, id)
            .await?
            .ok_or(TokenCmdError::NotFound(id))
    })
}

fn time_of(ns: i64) -> String {
    rfc3339(u64::try_from(ns).unwrap_or(0))
}

/// `calltap token list` output: a header and one tab-separated line per token (id, role,
/// created, expires, revoked, name; `-` for never), name last since it may hold spaces.
pub fn render_list(tokens: &[TokenInfo], now_ns: i64) -> String {
    let mut out = String::from("ID\tROLE\tCREATED\tEXPIRES\tREVOKED\tSTATE\tNAME\n");
    for t in tokens {
        let state = if t.revoked_ns.is_some() {
            "revoked"
        } else if t.expires_ns.is_some_and(|e| e <= now_ns) {
            "expired"
        } else {
            "active"
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{state}\t{}",
            t.id,
            t.role,
            time_of(t.created_ns),
            t.expires_ns.map_or("-".to_string(), time_of),
            t.revoked_ns.map_or("-".to_string(), time_of),
            crate::publish::console::escape_control(&t.name),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Create, list and revoke through the command functions over a real SQLite database; the
    /// list never shows a secret.
    #[test]
    fn create_list_revoke() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut cfg = Config::load_with_env(None, &[]).expect("defaults");
        cfg.storage.data_dir = tmp.path().to_path_buf();
        let a = create(&cfg, Role::Viewer, "portal", None).expect("create");
        let b = create(
            &cfg,
            Role::Admin,
            "ops\tteam",
            Some(std::time::Duration::from_secs(86_400)),
        )
        .expect("create");
        assert!(b.expires_ns.is_some());
        assert!(revoke(&cfg, a.id).expect("revoke"));
        assert!(!revoke(&cfg, a.id).expect("again"));
        assert!(matches!(
            revoke(&cfg, 999),
            Err(TokenCmdError::NotFound(999))
        ));
        let tokens = list(&cfg).expect("list");
        assert_eq!(tokens.len(), 2);
        let now = crate::clock::unix_ns_i64();
        let text = render_list(&tokens, now);
        assert!(
            !text.contains(&a.token) && !text.contains(&b.token),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let first: Vec<&str> = lines[1].split('\t').collect();
        assert_eq!(first[0], a.id.to_string());
        assert_eq!(
            (first[1], first[3], first[5], first[6]),
            ("viewer", "-", "revoked", "portal")
        );
        assert!(first[4].ends_with('Z'), "{text}");
        let second: Vec<&str> = lines[2].split('\t').collect();
        assert_eq!(
            (second[4], second[5], second[6]),
            ("-", "active", "ops\\tteam")
        );
        // A day later, b is past its expiry.
        let later = render_list(&tokens, now + 2 * 86_400 * 1_000_000_000);
        assert!(
            later
                .lines()
                .nth(2)
                .is_some_and(|l| l.contains("\texpired\t")),
            "{later}"
        );
    }
}
