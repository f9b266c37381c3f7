//! Recording rules CRUD: `GET /rules`, `GET /rules/{id}` (viewer), `POST /rules`,
//! `PUT /rules/{id}`, `DELETE /rules/{id}` (admin).
//!
//! The database is the source of truth; after every successful change the rule set in force
//! (`calltap run`'s [`LiveRules`]) is rebuilt from it, so the next call starting is decided by
//! the new rules. Calls already in progress keep the decision they started with.

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection},
        Path as UrlPath, State,
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};

use super::{errors::ApiError, ApiState};
use crate::{
    rules::{Conditions, Rule, RuleAction},
    store::rules::{self as store, RuleInput, RuleStoreError},
};

/// Priority of a rule created without one: after rules that name theirs lower.
pub const DEFAULT_PRIORITY: i64 = 100;

fn default_priority() -> i64 {
    DEFAULT_PRIORITY
}

fn yes() -> bool {
    true
}

/// A rule as a client sends it (POST creates, PUT replaces whole).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    name: String,
    #[serde(default = "default_priority")]
    priority: i64,
    #[serde(default = "yes")]
    enabled: bool,
    /// Parsed by hand so an unknown action is a 400 that names the field.
    action: String,
    #[serde(default, rename = "match")]
    conditions: Conditions,
}

impl RuleRequest {
    fn input(self) -> Result<RuleInput, ApiError> {
        let action = RuleAction::parse(&self.action).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "action: {:?}: expected record, skip or on_demand",
                self.action
            ))
        })?;
        Ok(RuleInput {
            name: self.name,
            priority: self.priority,
            enabled: self.enabled,
            action,
            conditions: self.conditions,
        })
    }
}

impl From<RuleStoreError> for ApiError {
    fn from(e: RuleStoreError) -> Self {
        match e {
            RuleStoreError::Invalid(e) => ApiError::BadRequest(e.to_string()),
            RuleStoreError::NameTaken(_) => ApiError::Conflict(format!("name: {e}")),
            RuleStoreError::Db(e) => ApiError::Database(e),
        }
    }
}

#[derive(Serialize)]
pub struct RuleList {
    /// In evaluation order: priority, then id.
    rules: Vec<Rule>,
    /// `[recording] default`: what happens to a call no enabled rule matches.
    default: RuleAction,
}

fn rule_id(id: Result<UrlPath<i64>, PathRejection>) -> Result<i64, ApiError> {
    let UrlPath(id) = id?;
    Ok(id)
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("no recording rule {id}"))
}

/// Rebuilds the rule set in force from the database after a change. A failure here leaves the
/// previous set in force until the next change or restart; the change itself is stored, so it
/// is logged rather than answered as an error.
async fn refresh(state: &ApiState) {
    let Some(live) = state.rules() else {
        return;
    };
    let ticket = live.ticket();
    let loaded = match state.db().await {
        Ok(db) => store::list(db).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match loaded {
        Ok(rules) => {
            // False when a later read (another change) is in force already: it has this one.
            live.replace_from(ticket, &rules);
        }
        Err(e) => log::warn!("recording rules changed but not reloaded: {e}"),
    }
}

/// `GET /api/v1/rules`
pub async fn list(State(state): State<ApiState>) -> Result<Json<RuleList>, ApiError> {
    let rules = store::list(state.db().await?).await?;
    let default = match state.rules() {
        Some(live) => live.get().default_action(),
        None => state.recording_default(),
    };
    Ok(Json(RuleList { rules, default }))
}

/// `GET /api/v1/rules/{id}`
pub async fn get(
    State(state): State<ApiState>,
    id: Result<UrlPath<i64>, PathRejection>,
) -> Result<Json<Rule>, ApiError> {
    let id = rule_id(id)?;
    store::get(state.db().await?, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// `POST /api/v1/rules` (admin): 201 with the stored rule.
pub async fn create(
    State(state): State<ApiState>,
    body: Result<Json<RuleRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let input = super::json_body(body)?.input()?;
    let rule = store::create(state.db().await?, &input).await?;
    log::info!(
        "recording rule {} ({:?}, {}) created by API",
        rule.id,
        rule.name,
        rule.action.as_str()
    );
    refresh(&state).await;
    Ok((StatusCode::CREATED, Json(rule)).into_response())
}

/// `PUT /api/v1/rules/{id}` (admin): replaces the rule whole.
pub async fn update(
    State(state): State<ApiState>,
    id: Result<UrlPath<i64>, PathRejection>,
    body: Result<Json<RuleRequest>, JsonRejection>,
) -> Result<Json<Rule>, ApiError> {
    let id = rule_id(id)?;
    let input = super::json_body(body)?.input()?;
    let rule = store::update(state.db().await?, id, &input)
        .await?
        .ok_or_else(|| not_found(id))?;
    log::info!(
        "recording rule {} ({:?}, {}) changed by API",
        rule.id,
        rule.name,
        rule.action.as_str()
    );
    refresh(&state).await;
    Ok(Json(rule))
}

/// `DELETE /api/v1/rules/{id}` (admin): 204.
pub async fn delete(
    State(state): State<ApiState>,
    id: Result<UrlPath<i64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = rule_id(id)?;
    if !store::delete(state.db().await?, id).await? {
        return Err(not_found(id));
    }
    log::info!("recording rule {id} deleted by API");
    refresh(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use axum::{
        body::Body,
        http::{header, Method, Request},
        Router,
    };
    use serde_json::{json, Value};
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        config::Config,
        publish::api::{auth, auth::Role, router},
        rules::{CallFacts, LiveRules, RuleSet},
        store::db,
    };

    struct Fixture {
        _tmp: tempfile::TempDir,
        app: Router,
        live: Arc<LiveRules>,
        admin: String,
        operator: String,
        viewer: String,
    }

    async fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut cfg = Config::load_with_env(None, &[]).expect("defaults");
        cfg.storage.data_dir = tmp.path().to_path_buf();
        cfg.recording.default = RuleAction::OnDemand;
        let db = db::prepare(&cfg.database_url(), Duration::from_secs(5))
            .await
            .expect("db");
        let mut tokens = Vec::new();
        for role in [Role::Admin, Role::Operator, Role::Viewer] {
            tokens.push(auth::create_token(&db, role, "t").await.expect("token").1);
        }
        let state = ApiState::new(db, &cfg.api_settings(), None);
        let live = LiveRules::new(RuleSet::default_only(cfg.recording.default));
        state.set_rules(live.clone());
        let [admin, operator, viewer] = <[String; 3]>::try_from(tokens).expect("three");
        Fixture {
            _tmp: tmp,
            app: router(state),
            live,
            admin,
            operator,
            viewer,
        }
    }

    /// (status, JSON body or Null when empty)
    async fn send(
        app: &Router,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let resp = app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, v)
    }

    fn decide(live: &LiveRules, from: &str) -> Option<i64> {
        let party = |u: &str| calltap_sip::NameAddr {
            user: Some(u.into()),
            host: Some("198.18.0.2".into()),
            ..Default::default()
        };
        live.decide(&CallFacts {
            from: &party(from),
            to: &party("2000"),
            caller_ip: "198.18.0.1".parse().expect("ip"),
            callee_ip: "198.18.0.2".parse().expect("ip"),
        })
        .rule_id
    }

    #[tokio::test]
    async fn crud_roles_validation_and_the_live_set() {
        let f = fixture().await;
        let app = &f.app;
        let (st, v) = send(app, Method::GET, "/api/v1/rules", Some(&f.viewer), None).await;
        assert_eq!(st, 200);
        assert_eq!(v, json!({"rules": [], "default": "on_demand"}));
        let rule = json!({"name": "no-hr", "priority": 5, "action": "skip",
            "match": {"caller": "100?", "ip": "198.18.0.0/15"}});
        let (st, _) = send(app, Method::POST, "/api/v1/rules", None, Some(rule.clone())).await;
        assert_eq!(st, 401);
        for t in [&f.viewer, &f.operator] {
            let (st, v) = send(
                app,
                Method::POST,
                "/api/v1/rules",
                Some(t),
                Some(rule.clone()),
            )
            .await;
            assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
        }
        assert_eq!(decide(&f.live, "1001"), None);

        let (st, created) = send(
            app,
            Method::POST,
            "/api/v1/rules",
            Some(&f.admin),
            Some(rule.clone()),
        )
        .await;
        assert_eq!(st, 201, "{created}");
        let id = created["id"].as_i64().expect("id");
        assert_eq!(created["action"], "skip");
        assert_eq!(created["enabled"], true);
        assert_eq!(created["match"]["caller"], "100?");
        assert_eq!(created["match"]["domain"], Value::Null);
        // The live set follows at once.
        assert_eq!(decide(&f.live, "1001"), Some(id));
        assert_eq!(decide(&f.live, "2001"), None);
        let (st, dup) = send(
            app,
            Method::POST,
            "/api/v1/rules",
            Some(&f.admin),
            Some(rule),
        )
        .await;
        assert_eq!((st, dup["error"]["code"].as_str()), (409, Some("conflict")));

        for (body, field) in [
            (
                json!({"name": "x", "action": "skip", "match": {"ip": "10.0.0.0/40"}}),
                "match.ip",
            ),
            (
                json!({"name": "x", "action": "skip", "match": {"caller_ip": "nope"}}),
                "match.caller_ip",
            ),
            (
                json!({"name": "x", "action": "skip", "match": {"caller": ""}}),
                "match.caller",
            ),
            (
                json!({"name": "x", "action": "skip", "match": {"domain": ""}}),
                "match.domain",
            ),
            (json!({"name": "x", "action": "sometimes"}), "action"),
            (json!({"name": " ", "action": "skip"}), "name"),
            (
                json!({"name": "x", "action": "skip", "priority": -3}),
                "priority",
            ),
            (
                json!({"name": "x", "action": "skip", "match": {"color": "red"}}),
                "color",
            ),
            (json!({"name": "x"}), "action"),
        ] {
            let (st, v) = send(
                app,
                Method::POST,
                "/api/v1/rules",
                Some(&f.admin),
                Some(body.clone()),
            )
            .await;
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert_eq!(st, 400, "{body}: {v}");
            assert!(msg.contains(field), "{body}: {msg:?} does not name {field}");
        }

        let one = format!("/api/v1/rules/{id}");
        let (st, v) = send(app, Method::GET, &one, Some(&f.viewer), None).await;
        assert_eq!((st, &v), (200, &created));
        let (st, _) = send(
            app,
            Method::GET,
            "/api/v1/rules/99999",
            Some(&f.viewer),
            None,
        )
        .await;
        assert_eq!(st, 404);
        let (st, _) = send(app, Method::GET, "/api/v1/rules/abc", Some(&f.viewer), None).await;
        assert_eq!(st, 400);

        let changed = json!({"name": "no-hr", "priority": 7, "enabled": false, "action": "on_demand",
            "match": {"party": "2000"}});
        let (st, _) = send(
            app,
            Method::PUT,
            &one,
            Some(&f.operator),
            Some(changed.clone()),
        )
        .await;
        assert_eq!(st, 403);
        let (st, v) = send(
            app,
            Method::PUT,
            &one,
            Some(&f.admin),
            Some(changed.clone()),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            (v["id"].as_i64(), &v["action"]),
            (Some(id), &json!("on_demand"))
        );
        assert_eq!(v["match"]["caller"], Value::Null);
        // Disabled: the default applies again.
        assert_eq!(decide(&f.live, "1001"), None);
        let (st, _) = send(
            app,
            Method::PUT,
            "/api/v1/rules/99999",
            Some(&f.admin),
            Some(changed),
        )
        .await;
        assert_eq!(st, 404);
        let (st, v) = send(app, Method::GET, "/api/v1/rules", Some(&f.viewer), None).await;
        assert_eq!(st, 200);
        assert_eq!(v["rules"].as_array().map(Vec::len), Some(1));

        let (st, _) = send(app, Method::DELETE, &one, Some(&f.operator), None).await;
        assert_eq!(st, 403);
        let (st, v) = send(app, Method::DELETE, &one, Some(&f.admin), None).await;
        assert_eq!((st, v), (204, Value::Null));
        let (st, _) = send(app, Method::DELETE, &one, Some(&f.admin), None).await;
        assert_eq!(st, 404);
        let (st, v) = send(app, Method::GET, "/api/v1/rules", Some(&f.viewer), None).await;
        assert_eq!((st, v["rules"].clone()), (200, json!([])));
    }
}
