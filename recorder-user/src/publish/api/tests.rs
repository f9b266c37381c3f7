//! The router in-process over a SQLite store seeded through the real insert path, with real
//! recording files in a temp data dir.

use std::{future::IntoFuture as _, path::Path, time::Duration};

use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
    Router,
};
use serde_json::Value;
use tower::ServiceExt as _;

use super::*;
use crate::{
    config::Config,
    store::db::{stored_cdr, tests::sample_cdr, StoredVia},
};

const T: Duration = Duration::from_secs(5);
const CALLS: u32 = 12;

struct Fixture {
    _tmp: tempfile::TempDir,
    app: Router,
    admin: String,
    operator: String,
    viewer: String,
    /// The WAV bytes of call 3.
    wav3: Vec<u8>,
    outside: std::path::PathBuf,
    /// The store behind `app`, and where call n's recording is (`2026/{n}.wav` for n < 9).
    db: Db,
    rec_dir: std::path::PathBuf,
    _pg: Option<calltap_lab::postgres::Postgres>,
    /// One live call, `uuid-1`, on worker 0, whose control channel is `worker0`.
    live: Arc<LiveCalls>,
    worker0: crossbeam_channel::Receiver<crate::pipeline::Control>,
}

fn uuid(n: u32) -> String {
    sample_cdr(n).uuid
}

async fn fixture() -> Fixture {
    fixture_on(None).await
}

/// The fixture over SQLite in the data dir, or over `pg` (a throwaway cluster).
async fn fixture_on(pg: Option<calltap_lab::postgres::Postgres>) -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = Config::load_with_env(None, &[]).expect("defaults");
    cfg.storage.data_dir = tmp.path().join("data");
    if let Some(pg) = &pg {
        pg.create_database("api").expect("createdb");
        cfg.database.url = Some(pg.url("api"));
    }
    let rec_dir = cfg.storage.recordings_dir();
    std::fs::create_dir_all(rec_dir.join("2026")).expect("recordings dir");
    let outside = tmp.path().join("secret.wav");
    std::fs::write(&outside, b"RIFF-not-yours").expect("outside file");
    std::os::unix::fs::symlink(&outside, rec_dir.join("link.wav")).expect("symlink");
    let db = crate::store::db::prepare(&cfg.database_url(), T)
        .await
        .expect("db");
    let mut wav3 = Vec::new();
    let mut rows = Vec::new();
    for n in 0..CALLS {
        let mut c = sample_cdr(n);
        c.duration_ms = 1000 * u64::from(n);
        c.end_reason = if n % 3 == 0 { "cancel" } else { "bye_caller" }.into();
        if let Some(r) = c.recording.as_mut() {
            r.path = match n {
                // Stored paths that must never be served.
                9 => outside.clone(),
                10 => rec_dir.join("2026/../../../secret.wav"),
                11 => rec_dir.join("link.wav"),
                _ => {
                    let p = rec_dir.join(format!("2026/{n}.wav"));
                    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 + n) as u8).collect();
                    std::fs::write(&p, &bytes).expect("wav");
                    if n == 3 {
                        wav3 = bytes;
                    }
                    p
                }
            };
        }
        rows.push(stored_cdr(&c).expect("stored"));
    }
    db.insert_batch(&rows, StoredVia::Direct, T)
        .await
        .expect("seed");
    let token = |role| {
        let db = db.clone();
        async move {
            auth::create_token(&db, role, "test")
                .await
                .expect("token")
                .1
        }
    };
    let (admin, operator, viewer) = (
        token(Role::Admin).await,
        token(Role::Operator).await,
        token(Role::Viewer).await,
    );
    let state = ApiState::new(db.clone(), &cfg.api_settings(), None);
    let (tx, worker0) = crossbeam_channel::unbounded();
    let live = LiveCalls::new(vec![tx]);
    crate::publish::live::tests::start_call(&live, 1);
    state.set_live(live.clone());
    // A reloader over a real (empty) file: POST /reload answers with what changed (nothing).
    let ini = tmp.path().join("calltap.ini");
    std::fs::write(&ini, "").expect("ini");
    let (_, running) = Config::resolve(Some(&ini), &[]).expect("resolve");
    state.set_reloader(std::sync::Arc::new(crate::reload::Reloader::new(
        Some(ini),
        running,
        &[],
        |_| {},
        |_| {},
    )));
    let app = router(state);
    Fixture {
        _tmp: tmp,
        app,
        admin,
        operator,
        viewer,
        wav3,
        outside,
        db,
        rec_dir,
        _pg: pg,
        live,
        worker0,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer with `status` and the stable shape; returns its code.
    fn error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"]["code"].as_str().expect("code").to_string()
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: Body,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body")
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str, token: &str) -> Answer {
    call(app, Method::GET, uri, Some(token), &[], Body::empty()).await
}

fn uuids(v: &Value) -> Vec<String> {
    v["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["uuid"].as_str().expect("uuid").to_string())
        .collect()
}

#[tokio::test]
async fn search_filters_and_pagination() {
    search_case(fixture().await).await;
}

/// The same queries on PostgreSQL: one SQL text, both dialects' column types decode.
#[tokio::test]
async fn search_detail_download_and_tokens_on_postgres() {
    if !calltap_lab::postgres::require_postgres("api_postgres") {
        return;
    }
    let pg = calltap_lab::postgres::Postgres::start().expect("postgres");
    let f = fixture_on(Some(pg)).await;
    audit_case(&f).await;
    let d = get(&f.app, &format!("/api/v1/calls/{}", uuid(3)), &f.viewer).await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.json()["streams"].as_array().map(Vec::len), Some(2));
    let wav = get(
        &f.app,
        &format!("/api/v1/calls/{}/recording", uuid(3)),
        &f.viewer,
    )
    .await;
    assert_eq!(wav.body, f.wav3);
    let status = get(&f.app, "/api/v1/status", &f.viewer).await.json();
    assert_eq!(status["database"]["backend"], "PostgreSQL");
    assert_eq!(
        get(&f.app, "/api/v1/tokens", &f.viewer).await.status,
        StatusCode::FORBIDDEN
    );
    let tokens = get(&f.app, "/api/v1/tokens", &f.admin).await.json();
    assert_eq!(tokens["tokens"].as_array().map(Vec::len), Some(3));
    deleted_case(&f).await;
    search_case(f).await;
}

/// A recording retention deleted is gone (410, saying when and why), not missing (404); the
/// detail still lists it, with the deletion time and reason.
#[tokio::test]
async fn a_recording_deleted_by_retention_answers_410_and_the_detail_says_when() {
    deleted_case(&fixture().await).await;
}

async fn deleted_case(f: &Fixture) {
    // Retention deletes call 5's file and marks its row (2027-01-15T08:00:00.250Z).
    let file5 = f.rec_dir.join("2026/5.wav");
    std::fs::remove_file(&file5).expect("delete");
    let stored = vec![file5.display().to_string()];
    let at = 1_800_000_000_250_000_000;
    let marked =
        f.db.mark_recording_deleted(&stored, at, "retention", T)
            .await
            .expect("mark");
    assert_eq!(marked, 1);
    let when = "2027-01-15T08:00:00.250Z";

    let uri = format!("/api/v1/calls/{}/recording", uuid(5));
    for range in [None, Some("bytes=0-99")] {
        let extra: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
        let a = call(
            &f.app,
            Method::GET,
            &uri,
            Some(&f.viewer),
            &extra,
            Body::empty(),
        )
        .await;
        assert_eq!(a.error(StatusCode::GONE), "gone", "range {range:?}");
        assert_eq!(a.headers[header::CONTENT_TYPE], "application/json");
        let message = a.json()["error"]["message"]
            .as_str()
            .expect("message")
            .to_string();
        assert!(
            message.contains("deleted by retention") && message.contains(when),
            "{message}"
        );
    }
    let d = get(&f.app, &format!("/api/v1/calls/{}", uuid(5)), &f.viewer).await;
    assert_eq!(d.status, StatusCode::OK);
    let d = d.json();
    assert_eq!(d["recording"]["deleted"], when, "{d}");
    assert_eq!(d["recording"]["deleted_reason"], "retention", "{d}");
    assert_eq!(d["recording"]["sample_rate"], 8000, "{d}");

    // A recording that is there: served, and its detail says not deleted (null, not absent).
    let a = get(
        &f.app,
        &format!("/api/v1/calls/{}/recording", uuid(3)),
        &f.viewer,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, f.wav3);
    let d = get(&f.app, &format!("/api/v1/calls/{}", uuid(3)), &f.viewer)
        .await
        .json();
    let rec = d["recording"].as_object().expect("recording");
    assert_eq!(rec.get("deleted"), Some(&Value::Null), "{d}");
    assert_eq!(rec.get("deleted_reason"), Some(&Value::Null), "{d}");

    // A file that vanished without retention saying so is still just not found.
    std::fs::remove_file(f.rec_dir.join("2026/4.wav")).expect("delete");
    let a = get(
        &f.app,
        &format!("/api/v1/calls/{}/recording", uuid(4)),
        &f.viewer,
    )
    .await;
    assert_eq!(a.error(StatusCode::NOT_FOUND), "not_found");

    // The document promises the 410 and the new fields.
    let doc = openapi::document();
    let gone = &doc["paths"]["/calls/{uuid}/recording"]["get"]["responses"]["410"];
    assert_eq!(
        gone["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    let props = &doc["components"]["schemas"]["Recording"]["properties"];
    assert_eq!(props["deleted"]["format"], "date-time");
    assert_eq!(props["deleted_reason"]["nullable"], true);
}

async fn search_case(f: Fixture) {
    let all = get(&f.app, "/api/v1/calls", &f.viewer).await;
    assert_eq!(all.status, StatusCode::OK);
    let want: Vec<String> = (0..CALLS).rev().map(uuid).collect();
    assert_eq!(uuids(&all.json()), want, "newest first");
    assert!(all.json()["next_cursor"].is_null());

    // Pages of 5: 5 + 5 + 2, no duplicates, same order, cursor absent on the last.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/calls?limit=5".to_string();
    let mut pages = 0;
    loop {
        let page = get(&f.app, &uri, &f.viewer).await.json();
        pages += 1;
        seen.extend(uuids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/calls?limit=5&cursor={c}"),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, want));

    let q = |query: &str| {
        let app = f.app.clone();
        let token = f.viewer.clone();
        let uri = format!("/api/v1/calls?{query}");
        async move {
            let a = get(&app, &uri, &token).await;
            assert_eq!(a.status, StatusCode::OK, "{uri}");
            let mut u = uuids(&a.json());
            u.sort();
            u
        }
    };
    assert_eq!(q("party=103").await, vec![uuid(3)]);
    assert_eq!(q("party=2000").await.len(), CALLS as usize);
    assert_eq!(q("party=nobody").await, Vec::<String>::new());
    assert_eq!(q("call_id=call-4%40uac").await, vec![uuid(4)]);
    assert_eq!(
        q("end_reason=cancel").await,
        vec![uuid(0), uuid(3), uuid(6), uuid(9)]
    );
    assert_eq!(
        q("min_duration_ms=2000&max_duration_ms=4000").await,
        vec![uuid(2), uuid(3), uuid(4)]
    );
    // sample_cdr(n) starts at 1_700_000_000 + n seconds = 2023-11-14T22:13:20Z + n s.
    assert_eq!(
        q("from=2023-11-14T22:13:25Z&to=2023-11-14T23:13:27%2B01:00").await,
        vec![uuid(5), uuid(6)]
    );
    assert_eq!(
        q("party=2000&end_reason=cancel&limit=2").await,
        vec![uuid(6), uuid(9)]
    );

    for bad in [
        "limit=0",
        "limit=501",
        "limit=many",
        "from=yesterday",
        "to=2023-11-14",
        "cursor=zz",
        "cursor=00",
        "min_duration_ms=-1",
        "colour=blue",
    ] {
        let a = get(&f.app, &format!("/api/v1/calls?{bad}"), &f.viewer).await;
        assert_eq!(a.error(StatusCode::BAD_REQUEST), "bad_request", "{bad}");
    }
}

#[tokio::test]
async fn detail_has_streams_dtmf_and_recording() {
    let f = fixture().await;
    let d = get(&f.app, &format!("/api/v1/calls/{}", uuid(3)), &f.viewer)
        .await
        .json();
    assert_eq!(d["uuid"], uuid(3));
    assert_eq!(d["from_user"], "103");
    assert_eq!(d["end_reason"], "cancel");
    assert_eq!(d["streams"].as_array().expect("streams").len(), 2);
    assert_eq!(d["streams"][0]["direction"], "caller");
    assert_eq!(d["dtmf"][0]["digit"], "5");
    assert_eq!(d["recording_events"][0]["action"], "pause");
    assert_eq!(d["recording_events"][0]["at_ms"], 1500);
    assert_eq!(d["recording_events"][0]["ts"], "2023-11-14T22:13:24.500Z");
    assert_eq!(d["restart_gaps"][0]["ms"], 2500, "{d}");
    assert_eq!(d["recording_mode"], "record", "{d}");
    assert_eq!(d["restart_gaps"][0]["from"], "2023-11-14T22:13:22.000Z");
    // Requests CallTap did not act on survive the database (issue #14 item 5).
    assert_eq!(d["rejected_requests"][0]["method"], "BYE", "{d}");
    assert_eq!(d["rejected_requests"][0]["src"], "198.18.0.66:5060");
    assert_eq!(d["rejected_requests"][0]["dst"], "198.18.0.2:5060");
    assert_eq!(d["rejected_requests"][0]["at_ms"], 1700);
    assert_eq!(d["rejected_requests"][0]["reason"], "unknown_source");
    assert_eq!(d["rejected_requests_omitted"], 3);
    assert_eq!(d["dtmf_omitted"], 0);
    let doc = openapi::document();
    let detail = &doc["components"]["schemas"]["CallDetail"]["allOf"][1];
    for field in [
        "rejected_requests",
        "rejected_requests_omitted",
        "dtmf_omitted",
    ] {
        let required = detail["required"].as_array().expect("required");
        assert!(
            required.iter().any(|r| r == field),
            "{field} not in the document"
        );
        assert!(d.get(field).is_some(), "{field} not in the answer");
    }
    assert_eq!(d["recording"]["sample_rate"], 8000);
    assert!(d.get("recording_path").is_none(), "no server paths: {d}");
    let missing = get(&f.app, "/api/v1/calls/no-such-call", &f.viewer).await;
    assert_eq!(missing.error(StatusCode::NOT_FOUND), "not_found");
}

#[tokio::test]
async fn recording_download_whole_and_ranges() {
    let f = fixture().await;
    let uri = format!("/api/v1/calls/{}/recording", uuid(3));
    let len = f.wav3.len();
    let whole = get(&f.app, &uri, &f.viewer).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.headers[header::CONTENT_TYPE], "audio/wav");
    assert_eq!(whole.headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(whole.body, f.wav3);
    let range = |r: &'static str| {
        let app = f.app.clone();
        let (uri, token) = (uri.clone(), f.viewer.clone());
        async move {
            call(
                &app,
                Method::GET,
                &uri,
                Some(&token),
                &[("range", r)],
                Body::empty(),
            )
            .await
        }
    };
    let part = range("bytes=100-1099").await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers[header::CONTENT_RANGE],
        format!("bytes 100-1099/{len}").as_str()
    );
    assert_eq!(part.body, f.wav3[100..1100]);
    let tail = range("bytes=-44").await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.body, f.wav3[len - 44..]);
    let open = range("bytes=4990-").await;
    assert_eq!(open.body, f.wav3[4990..]);
    let beyond = range("bytes=5000-").await;
    assert_eq!(
        beyond.error(StatusCode::RANGE_NOT_SATISFIABLE),
        "range_not_satisfiable"
    );
    assert_eq!(
        beyond.headers[header::CONTENT_RANGE],
        format!("bytes */{len}").as_str()
    );
    // Several ranges: the whole file is a valid answer.
    let multi = range("bytes=0-1,5-6").await;
    assert_eq!((multi.status, multi.body.len()), (StatusCode::OK, len));
}

#[tokio::test]
async fn recording_paths_outside_the_recordings_dir_are_refused() {
    let f = fixture().await;
    // 9: absolute path outside, 10: `..` climbing out, 11: symlink inside pointing outside.
    for n in [9, 10, 11] {
        let a = get(
            &f.app,
            &format!("/api/v1/calls/{}/recording", uuid(n)),
            &f.viewer,
        )
        .await;
        assert_eq!(a.error(StatusCode::NOT_FOUND), "not_found", "call {n}");
        assert!(!a.body.windows(4).any(|w| w == b"RIFF"), "call {n}");
    }
    assert!(f.outside.exists());
    // Traversal in the URL never reaches the file system: it is a uuid looked up in the DB.
    for uri in [
        "/api/v1/calls/..%2F..%2Fsecret.wav/recording",
        "/api/v1/calls/%2e%2e/recording",
        "/api/v1/calls/../../secret.wav/recording",
    ] {
        let a = get(&f.app, uri, &f.viewer).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
    }
}

#[tokio::test]
async fn tokens_and_roles() {
    let f = fixture().await;
    let no = call(
        &f.app,
        Method::GET,
        "/api/v1/status",
        None,
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(no.error(StatusCode::UNAUTHORIZED), "unauthorized");
    assert!(no.headers.contains_key(header::WWW_AUTHENTICATE));
    for bad in [
        "ct_0000000000000000000000000000000000000000000000000000000000000000",
        "",
        &"x".repeat(4000),
    ] {
        let a = get(&f.app, "/api/v1/calls", bad).await;
        assert_eq!(a.error(StatusCode::UNAUTHORIZED), "unauthorized");
    }
    let basic = call(
        &f.app,
        Method::GET,
        "/api/v1/calls",
        None,
        &[("authorization", &format!("Basic {}", f.viewer))],
        Body::empty(),
    )
    .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    let status = get(&f.app, "/api/v1/status", &f.viewer).await.json();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["database"]["backend"], "SQLite");
    assert_eq!(status["database"]["reachable"], true);

    for t in [&f.viewer, &f.operator] {
        let a = get(&f.app, "/api/v1/tokens", t).await;
        assert_eq!(a.error(StatusCode::FORBIDDEN), "forbidden");
    }
    let list = get(&f.app, "/api/v1/tokens", &f.admin).await.json();
    let tokens = list["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 3);
    assert!(
        !list.to_string().contains(&f.viewer),
        "token leaked: {list}"
    );

    let post = |token: String, body: &'static str| {
        let app = f.app.clone();
        async move {
            call(
                &app,
                Method::POST,
                "/api/v1/tokens",
                Some(&token),
                &[("content-type", "application/json")],
                Body::from(body),
            )
            .await
        }
    };
    let forbidden = post(f.viewer.clone(), r#"{"role":"admin"}"#).await;
    assert_eq!(forbidden.error(StatusCode::FORBIDDEN), "forbidden");
    let made = post(f.admin.clone(), r#"{"role":"viewer","name":"portal"}"#).await;
    assert_eq!(made.status, StatusCode::CREATED);
    let new = made.json()["token"].as_str().expect("token").to_string();
    assert_eq!(
        get(&f.app, "/api/v1/calls?limit=1", &new).await.status,
        StatusCode::OK
    );
    for bad in [
        r#"{"role":"root"}"#,
        r#"{"role":1}"#,
        "{",
        r#"{"role":"viewer","x":1}"#,
    ] {
        let a = post(f.admin.clone(), bad).await;
        let code = a.status;
        assert!(
            code == StatusCode::BAD_REQUEST || code == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {code}"
        );
        assert!(a.json()["error"]["code"].is_string(), "{bad}");
    }
    let big = call(
        &f.app,
        Method::POST,
        "/api/v1/tokens",
        Some(&f.admin),
        &[("content-type", "application/json")],
        Body::from(format!(
            r#"{{"role":"viewer","name":"{}"}}"#,
            "n".repeat(BODY_LIMIT)
        )),
    )
    .await;
    assert_eq!(
        big.error(StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );
}

/// Every route in the OpenAPI document is served (401 without a token, not 404/405), every
/// served route is documented, and other paths get the JSON 404.
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let f = fixture().await;
    let doc = call(
        &f.app,
        Method::GET,
        "/api/v1/openapi.json",
        None,
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.json();
    assert_eq!(doc, openapi::document());
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = openapi::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    for (method, path, role) in openapi::ROUTES {
        let uri = format!("/api/v1{}", path.replace("{uuid}", &uuid(1)));
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let a = call(&f.app, m, &uri, None, &[], Body::empty()).await;
        let want = if *role == "public" {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(a.status, want, "{method} {uri}");
        let op = &doc["paths"][path][method];
        if *role != "public" {
            assert!(
                op["description"].as_str().is_some_and(|d| d.contains(role)),
                "{method} {path}: role not documented"
            );
        }
    }
    let nowhere = get(&f.app, "/api/v1/nowhere", &f.admin).await;
    assert_eq!(nowhere.error(StatusCode::NOT_FOUND), "not_found");
    let wrong = call(
        &f.app,
        Method::DELETE,
        "/api/v1/calls",
        Some(&f.admin),
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(
        wrong.error(StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
}

#[test]
fn confine_accepts_only_regular_files_under_the_root() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("rec");
    std::fs::create_dir_all(root.join("a")).expect("dirs");
    std::fs::write(root.join("a/x.wav"), b"x").expect("file");
    std::fs::write(tmp.path().join("y.wav"), b"y").expect("file");
    let s = |p: &Path| p.display().to_string();
    assert!(calls::confine(&root, &s(&root.join("a/x.wav"))).is_some());
    assert!(calls::confine(&root, &s(&root.join("a/../a/x.wav"))).is_some());
    assert!(calls::confine(&root, &s(&root.join("../y.wav"))).is_none());
    assert!(calls::confine(&root, &s(&root.join("a"))).is_none());
    assert!(calls::confine(&root, &s(&root)).is_none());
    assert!(calls::confine(&root, "").is_none());
    assert!(calls::confine(&root, "a/x.wav\0").is_none());
    assert!(calls::confine(&root.join("missing"), &s(&root.join("a/x.wav"))).is_none());
}

/// schemathesis (PyPI) generates requests from the OpenAPI document against the router on a
/// real socket: no answer may be a 5xx or disagree with the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let Ok(bin) = which::which("schemathesis") else {
        // `cargo xtask setup` installs it; under CI a skip would hide the check.
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed (cargo xtask setup installs it)"
        );
        eprintln!("SKIP schemathesis: not installed (pip install schemathesis)");
        return;
    };
    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(axum::serve(listener, f.app.clone()).into_future());
    let admin = f.admin.clone();
    // schemathesis keeps a .schemathesis/ cache in its working directory.
    let cwd = tempfile::tempdir().expect("cwd");
    let cwd_path = cwd.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .current_dir(cwd_path)
            .args(["run", &format!("http://{addr}/api/v1/openapi.json")])
            .args(["--url", &format!("http://{addr}/api/v1")])
            .args(["-H", &format!("Authorization: Bearer {admin}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--max-examples", "40", "--seed", "5", "--no-color"])
            .output()
            .expect("running schemathesis")
    })
    .await
    .expect("join");
    server.abort();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    eprintln!("{text}");
}

/// With `calltap run`'s metrics attached, the status page reports workers (ring fill, lag),
/// active calls and the archive queue from the same sources as the scrape.
#[tokio::test]
async fn status_reports_workers_rings_and_archive() {
    use std::sync::atomic::Ordering;

    use crate::publish::metrics::{CaptureCounters, LiveStats, Metrics};
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = Config::load_with_env(None, &[]).expect("defaults");
    cfg.storage.data_dir = tmp.path().to_path_buf();
    let db = crate::store::db::prepare(&cfg.database_url(), T)
        .await
        .expect("db");
    let (_, viewer) = auth::create_token(&db, Role::Viewer, "v")
        .await
        .expect("token");
    let live = std::sync::Arc::new(LiveStats::new(2));
    live.workers[1].active_calls.store(7, Ordering::Relaxed);
    live.workers[1].lag_ns.store(3_000_000, Ordering::Relaxed);
    live.active_calls.store(7, Ordering::Relaxed);
    let m = std::sync::Arc::new(Metrics::new(CaptureCounters::None, live, None).expect("m"));
    let archive = std::sync::Arc::new(crate::store::archive::ArchiveCounters::default());
    archive.queue_len.store(4, Ordering::Relaxed);
    m.set_archive(archive);
    let state = ApiState::new(db, &cfg.api_settings(), None);
    state.set_metrics(m);
    let a = get(&router(state), "/api/v1/status", &viewer).await;
    assert_eq!(a.status, StatusCode::OK);
    let j = a.json();
    assert_eq!(j["workers"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(j["workers"][1]["active_calls"], 7);
    assert_eq!(j["workers"][1]["lag_ms"], 3.0);
    assert_eq!(j["active_calls"], 7);
    assert_eq!(j["archive"]["queued"], 4);
    assert_eq!(j["archive"]["up"], false);
}

/// `calltap run`'s state connects on first use: it works once the database is there, and
/// answers 503 in the error shape while it is not (the API never holds up the daemon's start).
#[tokio::test]
async fn lazily_connected_state_serves_and_reports_an_absent_database() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = Config::load_with_env(None, &[]).expect("defaults");
    cfg.storage.data_dir = tmp.path().to_path_buf();
    let db = crate::store::db::prepare(&cfg.database_url(), T)
        .await
        .expect("db");
    let (_, viewer) = auth::create_token(&db, Role::Viewer, "v")
        .await
        .expect("token");
    db.close().await;
    let app = router(ApiState::connecting(&cfg.api_settings(), None));
    let a = get(&app, "/api/v1/status", &viewer).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["database"]["reachable"], true);

    cfg.database.url = Some("postgres://calltap@127.0.0.1:1/none".into());
    cfg.database.write_timeout_ms = 1;
    let app = router(ApiState::connecting(&cfg.api_settings(), None));
    let a = get(&app, "/api/v1/calls", &viewer).await;
    assert_eq!(
        a.error(StatusCode::SERVICE_UNAVAILABLE),
        "database_unavailable"
    );
}

/// Active calls from the live registry; recording control checked by role and state, and
/// sent to the call's worker only when it is accepted.
#[tokio::test]
async fn active_calls_and_recording_control() {
    let f = fixture().await;
    let a = get(&f.app, "/api/v1/calls/active", &f.viewer).await;
    assert_eq!(a.status, StatusCode::OK);
    let calls = a.json()["calls"].as_array().cloned().expect("calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["uuid"], "uuid-1");
    assert_eq!(calls[0]["from_user"], "1000");
    assert_eq!(calls[0]["state"], "setup");
    assert_eq!(calls[0]["recording"], "recording");
    assert_eq!(calls[0]["start"], "2023-11-14T22:13:20.000Z");

    let post = |token: String, uuid: &str, body: &str| {
        let app = f.app.clone();
        let uri = format!("/api/v1/calls/{uuid}/recording");
        let body = body.to_string();
        async move {
            call(
                &app,
                Method::POST,
                &uri,
                Some(&token),
                &[("content-type", "application/json")],
                Body::from(body),
            )
            .await
        }
    };
    let pause = r#"{"action":"pause"}"#;
    let a = post(f.viewer.clone(), "uuid-1", pause).await;
    assert_eq!(a.error(StatusCode::FORBIDDEN), "forbidden");
    let a = post(f.operator.clone(), "uuid-1", pause).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["recording"], "paused");
    assert!(matches!(
        f.worker0.try_recv(),
        Ok(crate::pipeline::Control::Recording {
            action: crate::pipeline::recording::RecordingAction::Pause,
            ..
        })
    ));
    let a = post(f.operator.clone(), "uuid-1", pause).await;
    assert_eq!(a.error(StatusCode::CONFLICT), "conflict");
    let a = post(f.admin.clone(), "uuid-1", r#"{"action":"resume"}"#).await;
    assert_eq!(a.json()["recording"], "recording");
    let a = post(f.operator.clone(), "uuid-1", r#"{"action":"stop"}"#).await;
    assert_eq!(a.json()["recording"], "stopped");
    let a = post(f.operator.clone(), "uuid-1", r#"{"action":"resume"}"#).await;
    assert_eq!(a.error(StatusCode::CONFLICT), "conflict");
    let a = post(f.operator.clone(), "uuid-1", r#"{"action":"start"}"#).await;
    assert_eq!(a.json()["recording"], "recording");
    assert_eq!(f.worker0.try_iter().count(), 3);
    let a = post(f.operator.clone(), "nope", pause).await;
    assert_eq!(a.error(StatusCode::NOT_FOUND), "not_found");
    let a = post(f.operator.clone(), "uuid-1", r#"{"action":"rewind"}"#).await;
    assert_eq!(a.error(StatusCode::BAD_REQUEST), "bad_request");
    let a = post(f.operator.clone(), "uuid-1", "not json").await;
    assert_eq!(a.error(StatusCode::BAD_REQUEST), "bad_request");
    assert!(f.worker0.try_recv().is_err());

    // The call's CDR arrived: it is no longer active.
    f.live.remove("uuid-1");
    let a = get(&f.app, "/api/v1/calls/active", &f.viewer).await;
    assert_eq!(a.json()["calls"], serde_json::json!([]));
    // Recording download of a stored call is still a GET on the same path.
    let a = get(
        &f.app,
        &format!("/api/v1/calls/{}/recording", uuid(3)),
        &f.viewer,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

async fn send(app: &Router, method: Method, uri: &str, token: &str, body: &str) -> Answer {
    call(
        app,
        method,
        uri,
        Some(token),
        &[("content-type", "application/json")],
        Body::from(body.to_string()),
    )
    .await
}

/// Only admins list and revoke tokens; a revoked token and an expired one are refused (401)
/// on their very next request, since nothing caches tokens.
#[tokio::test]
async fn revoked_and_expired_tokens_are_refused_at_once() {
    let f = fixture().await;
    for t in [&f.viewer, &f.operator] {
        let a = get(&f.app, "/api/v1/tokens", t).await;
        assert_eq!(a.error(StatusCode::FORBIDDEN), "forbidden");
        let a = send(&f.app, Method::DELETE, "/api/v1/tokens/1", t, "").await;
        assert_eq!(a.error(StatusCode::FORBIDDEN), "forbidden");
    }
    let bad = send(
        &f.app,
        Method::POST,
        "/api/v1/tokens",
        &f.admin,
        r#"{"role":"viewer","expires_in":"soon"}"#,
    )
    .await;
    assert_eq!(bad.error(StatusCode::BAD_REQUEST), "bad_request");
    assert!(bad.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("\"soon\"")));
    let made = send(
        &f.app,
        Method::POST,
        "/api/v1/tokens",
        &f.admin,
        r#"{"role":"viewer","name":"temp","expires_in":"1h"}"#,
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED);
    let made = made.json();
    let (id, temp) = (
        made["id"].as_i64().expect("id"),
        made["token"].as_str().expect("token").to_string(),
    );
    assert!(made["expires"].as_str().is_some_and(|e| e.ends_with('Z')));
    assert_eq!(
        get(&f.app, "/api/v1/status", &temp).await.status,
        StatusCode::OK
    );
    let listed = |list: Value| {
        list["tokens"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["id"] == id).cloned())
            .expect("listed")
    };
    let list = get(&f.app, "/api/v1/tokens", &f.admin).await.json();
    assert!(!list.to_string().contains(&temp), "token leaked: {list}");
    let t = listed(list);
    assert_eq!(
        (&t["name"], &t["active"]),
        (&Value::from("temp"), &Value::from(true))
    );
    assert!(t["expires"].is_string() && t["revoked"].is_null(), "{t}");

    let uri = format!("/api/v1/tokens/{id}");
    assert_eq!(
        send(&f.app, Method::DELETE, &uri, &f.admin, "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let a = get(&f.app, "/api/v1/status", &temp).await;
    assert_eq!(a.error(StatusCode::UNAUTHORIZED), "unauthorized");
    let t = listed(get(&f.app, "/api/v1/tokens", &f.admin).await.json());
    assert_eq!(t["active"], false);
    assert!(t["revoked"].is_string(), "{t}");
    // Again: still 204 (idempotent); unknown: 404; not a number: 400.
    assert_eq!(
        send(&f.app, Method::DELETE, &uri, &f.admin, "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let a = send(&f.app, Method::DELETE, "/api/v1/tokens/99999", &f.admin, "").await;
    assert_eq!(a.error(StatusCode::NOT_FOUND), "not_found");
    let a = send(&f.app, Method::DELETE, "/api/v1/tokens/abc", &f.admin, "").await;
    assert_eq!(a.error(StatusCode::BAD_REQUEST), "bad_request");

    // Expiry: the operator's token works, then its expiry passes in the database (as time
    // would), and the next request is refused.
    let a = send(
        &f.app,
        Method::POST,
        "/api/v1/calls/uuid-1/recording",
        &f.operator,
        r#"{"action":"pause"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let caller = auth::lookup(&f.db, &f.operator)
        .await
        .expect("lookup")
        .expect("live");
    let args = [
        sql::Arg::I(crate::clock::unix_ns_i64() - 1),
        sql::Arg::I(caller.token_id),
    ];
    fetch!(
        &f.db,
        (i64,),
        "UPDATE api_tokens SET expires_ns = $1 WHERE id = $2 RETURNING id",
        &args,
        fetch_one
    )
    .expect("expire");
    let a = send(
        &f.app,
        Method::POST,
        "/api/v1/calls/uuid-1/recording",
        &f.operator,
        r#"{"action":"resume"}"#,
    )
    .await;
    assert_eq!(a.error(StatusCode::UNAUTHORIZED), "unauthorized");
    let t = listed_by(&f, caller.token_id).await;
    assert_eq!(t["active"], false);
    assert!(t["expires"].is_string() && t["revoked"].is_null(), "{t}");
    // A token created already past its expiry never works.
    let (_, old) =
        auth::create_token_expiring(&f.db, Role::Admin, "old", Some(crate::clock::unix_ns_i64()))
            .await
            .expect("token");
    let a = get(&f.app, "/api/v1/tokens", &old).await;
    assert_eq!(a.error(StatusCode::UNAUTHORIZED), "unauthorized");
}

async fn listed_by(f: &Fixture, id: i64) -> Value {
    let list = get(&f.app, "/api/v1/tokens", &f.admin).await.json();
    list["tokens"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["id"] == id).cloned())
        .expect("listed")
}

/// A served download and an accepted pause each leave one audit row (who, what, which call);
/// a refused download leaves none. Newest first, bounded paging, admin only.
#[tokio::test]
async fn downloads_and_recording_control_are_audited() {
    let f = fixture().await;
    audit_case(&f).await;
}

async fn audit_case(f: &Fixture) {
    let wav = get(
        &f.app,
        &format!("/api/v1/calls/{}/recording", uuid(3)),
        &f.viewer,
    )
    .await;
    assert_eq!(wav.body, f.wav3);
    let a = send(
        &f.app,
        Method::POST,
        "/api/v1/calls/uuid-1/recording",
        &f.operator,
        r#"{"action":"pause"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    // Refused: outside the recordings dir (404), and a second pause (409).
    let a = get(
        &f.app,
        &format!("/api/v1/calls/{}/recording", uuid(9)),
        &f.viewer,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(
        &f.app,
        Method::POST,
        "/api/v1/calls/uuid-1/recording",
        &f.operator,
        r#"{"action":"pause"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    for t in [&f.viewer, &f.operator] {
        let a = get(&f.app, "/api/v1/audit", t).await;
        assert_eq!(a.error(StatusCode::FORBIDDEN), "forbidden");
    }
    let a = get(&f.app, "/api/v1/audit", &f.admin).await;
    assert_eq!(a.status, StatusCode::OK);
    let entries = a.json()["entries"].as_array().cloned().expect("entries");
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (pause, download) = (&entries[0], &entries[1]);
    let viewer = auth::lookup(&f.db, &f.viewer)
        .await
        .expect("db")
        .expect("v");
    let operator = auth::lookup(&f.db, &f.operator)
        .await
        .expect("db")
        .expect("o");
    assert_eq!(download["action"], "download");
    assert_eq!(download["token_id"], viewer.token_id);
    assert_eq!(download["actor"], "test");
    assert_eq!(download["call_uuid"], uuid(3));
    assert_eq!(download["call_id"], sample_cdr(3).call_id);
    assert!(download["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    // Driven without a socket: no peer (the real server's is tested beside).
    assert!(download["peer"].is_null());
    assert_eq!(pause["action"], "pause");
    assert_eq!(pause["token_id"], operator.token_id);
    assert_eq!(pause["call_uuid"], "uuid-1");
    assert!(pause["id"].as_i64() > download["id"].as_i64());

    let page = |q: &str| {
        let (app, admin, uri) = (f.app.clone(), f.admin.clone(), format!("/api/v1/audit?{q}"));
        async move { get(&app, &uri, &admin).await }
    };
    let one = page("limit=1").await.json();
    assert_eq!(one["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["entries"][0]["action"], "pause");
    let next = page("limit=1&offset=1").await.json();
    assert_eq!(next["entries"][0]["action"], "download");
    let later = page("since=2200-01-01T00:00:00Z").await.json();
    assert_eq!(later["entries"], serde_json::json!([]));
    let all = page("since=2000-01-01T00:00:00Z").await.json();
    assert_eq!(all["entries"].as_array().map(Vec::len), Some(2));
    for bad in [
        "limit=0",
        "limit=1001",
        "offset=100001",
        "since=yesterday",
        "x=1",
        "limit=-1",
    ] {
        let a = page(bad).await;
        assert_eq!(a.error(StatusCode::BAD_REQUEST), "bad_request", "{bad}");
    }
}

/// The audit row carries the client's address when the router is served with connect info,
/// as the HTTP server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_row_has_the_peer_address() {
    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = f
        .app
        .clone()
        .into_make_service_with_connect_info::<crate::publish::http::PeerAddr>();
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    // A plain HTTP/1.1 exchange over a real socket.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /api/v1/calls/{}/recording HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Connection: close\r\n\r\n",
        uuid(3),
        f.viewer
    );
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut resp = Vec::new();
    tokio::time::timeout(T, conn.read_to_end(&mut resp))
        .await
        .expect("in time")
        .expect("read");
    server.abort();
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&resp[..resp.len().min(200)])
    );
    assert!(resp.ends_with(&f.wav3));
    let a = get(&f.app, "/api/v1/audit", &f.admin).await.json();
    let peer = a["entries"][0]["peer"].as_str().expect("peer").to_string();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_ne!(
        peer,
        addr.to_string(),
        "the server's address, not the client's"
    );
}

/// A download whose audit row cannot be written is still served; the failure is counted on
/// the status page (and logged).
#[tokio::test]
async fn a_download_is_served_when_the_audit_row_cannot_be_written() {
    let f = fixture().await;
    match &f.db {
        Db::Sqlite(p) => sqlx::query("DROP TABLE audit").execute(p).await.map(|_| ()),
        Db::Postgres(p) => sqlx::query("DROP TABLE audit").execute(p).await.map(|_| ()),
    }
    .expect("drop audit");
    let status = get(&f.app, "/api/v1/status", &f.viewer).await.json();
    assert_eq!(status["audit_write_failures"], 0);
    let wav = get(
        &f.app,
        &format!("/api/v1/calls/{}/recording", uuid(3)),
        &f.viewer,
    )
    .await;
    assert_eq!(wav.status, StatusCode::OK);
    assert_eq!(wav.body, f.wav3);
    let status = get(&f.app, "/api/v1/status", &f.viewer).await.json();
    assert_eq!(status["audit_write_failures"], 1);
}
