//! Live calls and recording control: `GET /calls/active` (viewer) and
//! `POST /calls/{uuid}/recording` (operator). Both read the in-memory registry
//! ([`crate::publish::live::LiveCalls`]), never the database; without a running capture (the
//! registry is not set) the list is empty and every call is unknown.

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection},
        Path as UrlPath, State,
    },
    http::StatusCode,
    Extension, Json,
};
use serde::{Deserialize, Serialize};

use super::{audit, auth::Caller, errors::ApiError, ApiState};
use crate::{
    pipeline::recording::RecordingAction,
    publish::live::{ControlError, LiveCall},
};

#[derive(Serialize)]
pub struct ActiveCalls {
    pub calls: Vec<LiveCall>,
}

/// `GET /api/v1/calls/active`
pub async fn list(State(state): State<ApiState>) -> Json<ActiveCalls> {
    Json(ActiveCalls {
        calls: state.live().map(|l| l.list()).unwrap_or_default(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    action: String,
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ControlError::InvalidTransition { .. }
            | ControlError::Ending
            | ControlError::TooMany => ApiError::Conflict(e.to_string()),
            ControlError::WorkerGone => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// `POST /api/v1/calls/{uuid}/recording` with `{"action": "start|stop|pause|resume"}`: the
/// call as it is afterwards. CallTap records every call, so `start` resumes a recording that was
/// stopped or paused. An accepted action is written to the audit log ([`audit`]).
pub async fn control(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<axum::extract::ConnectInfo<crate::publish::http::PeerAddr>>>,
    uuid: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<ControlRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<LiveCall>), ApiError> {
    let UrlPath(uuid) = uuid?;
    let req = super::json_body(body)?;
    let action = RecordingAction::parse(&req.action).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "action {:?}: expected start, stop, pause or resume",
            req.action
        ))
    })?;
    let live = state
        .live()
        .ok_or_else(|| ApiError::NotFound(format!("no active call {uuid}")))?;
    let call = live.control(&uuid, action)?;
    let peer = super::peer_of(peer);
    log::info!(
        "recording {} of call {} ({}) by API (token {} from {})",
        action.as_str(),
        call.call_id,
        call.uuid,
        caller.token_id,
        peer.as_deref().unwrap_or("-")
    );
    audit::record(
        &state,
        audit::Entry {
            actor: audit::Actor::from(&caller),
            action: action.as_str(),
            call_uuid: call.uuid.clone(),
            call_id: Some(call.call_id.clone()),
            peer,
        },
    )
    .await;
    Ok((StatusCode::OK, Json(call)))
}
