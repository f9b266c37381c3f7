//! `calltap token create`: a REST API bearer token, stored hashed in the CDR database (the one
//! the daemon uses, so a token works at once, also against a running daemon).

use crate::{
    config::Config,
    publish::api::auth::{self, Role, TokenError},
    store::db::DbError,
};

#[derive(Debug, thiserror::Error)]
pub enum TokenCmdError {
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A token just created: shown once, never stored in clear.
pub struct Created {
    pub id: i64,
    pub token: String,
}

/// Opens (and migrates) the configured database and stores a new token with `role`.
pub fn create(cfg: &Config, role: Role, name: &str) -> Result<Created, TokenCmdError> {
    let rt = crate::runtime::current_thread().map_err(TokenCmdError::Runtime)?;
    rt.block_on(async {
        // `prepare` is safe beside a daemon migrating the same fresh database at once.
        let timeout = std::time::Duration::from_millis(cfg.database.write_timeout_ms);
        let db = crate::store::db::prepare(&cfg.database_url(), timeout).await?;
        let made = auth::create_token(&db, role, name).await;
        db.close().await;
        let (id, token) = made?;
        Ok(Created { id, token })
    })
}
