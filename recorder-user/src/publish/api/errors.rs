//! The one error shape every API answer uses: `{"error":{"code":"...","message":"..."}}`.
//!
//! Integrations branch on `code` (stable, snake_case); `message` is for people and may change.
//! Database and I/O failures are logged with their detail and answered with a generic message,
//! so internals (paths, SQL, URLs) never reach a client.

use axum::{
    extract::rejection::{PathRejection, QueryRejection},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::store::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token's role ({have}) may not do this; needs {need}")]
    Forbidden {
        have: &'static str,
        need: &'static str,
    },
    #[error("{0}")]
    NotFound(String),
    /// It existed and was deleted on purpose (a recording retention deleted); the message says
    /// when and why.
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The request is valid but the resource's state does not allow it now.
    #[error("{0}")]
    Conflict(String),
    /// A part of the recorder the request needs is not running.
    #[error("{0}")]
    Unavailable(String),
    #[error("range not satisfiable: the file has {len} bytes")]
    RangeNotSatisfiable { len: u64 },
    #[error("the CDR database is not answering")]
    Database(#[from] DbError),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Gone(_) => "gone",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            ApiError::Database(_) => "database_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A JSON error body with `status`, for answers produced outside a handler (fallbacks, layers).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Database(e) => log::warn!("API: {e}"),
            ApiError::Internal(detail) => log::error!("API: {detail}"),
            _ => {}
        }
        let mut resp = error_response(self.status(), self.code(), &self.to_string());
        match self {
            ApiError::Unauthorized => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"calltap\""),
                );
            }
            ApiError::RangeNotSatisfiable { len } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}
