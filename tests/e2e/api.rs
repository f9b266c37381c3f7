//! The REST API of a running `calltap run` with live sipp calls in the SPAN lab (issue #5):
//! search by party finds the calls, a recording downloads with a Range request (the bytes are
//! the file's), a wrong token gets 401 and a viewer token on an admin route gets 403; the
//! downloads are in the audit log with the client's address, and `calltap token revoke` beside
//! the running daemon refuses the token on its next request.
//!
//! The daemon runs in the recorder namespace; the test talks to it from inside that namespace.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use calltap_lab::{
    daemon::{calltap_bin, Daemon},
    files::work_dir,
    netns::NS_REC,
    root::{require_root, require_tool},
    sipp::{place_calls, CallPlan},
    Lab,
};
use serde_json::Value;

const TEST: &str = "api";
/// Where the daemon serves the API inside ct-rec (its own loopback: no clash with the host).
const LISTEN: &str = "127.0.0.1:18080";

/// `calltap token create` against the daemon's data dir; returns the token.
fn create_token(data_dir: &Path, role: &str) -> String {
    let out = std::process::Command::new(calltap_bin())
        .args([
            "token",
            "create",
            "--role",
            role,
            "--name",
            "e2e",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .expect("calltap token create");
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("ct_"), "{token}");
    token
}

/// `calltap token ARGS --data-dir DIR`; returns stdout.
fn token_cmd(data_dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(calltap_bin())
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("calltap token");
    assert!(
        out.status.success(),
        "token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    headers: String,
}

/// GET `path` (under /api/v1) from inside the recorder namespace: a thread joins ct-rec's
/// network namespace (setns applies to the calling thread only) and speaks plain HTTP/1.1, so
/// the test needs no HTTP client installed.
fn get(path: &str, token: &str, range: Option<&str>) -> Answer {
    let mut req = format!(
        "GET /api/v1{path} HTTP/1.1\r\nHost: {LISTEN}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n"
    );
    if let Some(r) = range {
        req.push_str(&format!("Range: bytes={r}\r\n"));
    }
    req.push_str("\r\n");
    let raw = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let ns = std::fs::File::open(format!("/run/netns/{NS_REC}"))?;
        // SAFETY: a valid namespace fd; only this thread moves.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut conn = TcpStream::connect(LISTEN)?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        conn.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)?;
        Ok(raw)
    })
    .join()
    .expect("client thread")
    .expect("HTTP request in ct-rec");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut body = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Answer {
        status,
        body,
        headers,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[test]
fn search_download_and_auth_against_a_running_daemon() {
    if !require_root(TEST) || !require_tool(TEST, "sipp") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir("api");
    let data = dir.join("data");
    let daemon = Daemon::start(&data, &[], &[("CALLTAP_API_LISTEN", LISTEN)]).expect("calltap");
    let admin = create_token(&data, "admin");
    let viewer = create_token(&data, "viewer");

    let plan = CallPlan {
        pairs: 2,
        calls_per_pair: 2,
        packets: 50,
    };
    let report = place_calls(&dir.join("sipp"), &plan).expect("sipp");
    assert_eq!(report.failed, 0, "sipp failed calls; see {}", dir.display());
    let n = plan.total_calls() as usize;

    // Every call's CDR in calls.jsonl first (bounded), then the database through the API.
    let deadline = Instant::now() + Duration::from_secs(30);
    let cdrs = loop {
        let cdrs = daemon.cdrs().unwrap_or_default();
        if cdrs.len() >= n || Instant::now() > deadline {
            break cdrs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        cdrs.len(),
        n,
        "CDRs in calls.jsonl; stderr: {}",
        daemon.stderr()
    );
    // Each sipp pair calls its own callee user: search by one of them.
    let party = cdrs[0]["to"]["user"]
        .as_str()
        .expect("callee user in the CDR")
        .to_string();
    let mut want: Vec<&str> = cdrs
        .iter()
        .filter(|c| c["to"]["user"] == party.as_str() || c["from"]["user"] == party.as_str())
        .filter_map(|c| c["uuid"].as_str())
        .collect();
    want.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let a = get(&format!("/calls?party={party}&limit=500"), &viewer, None);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let calls = a.json()["calls"].as_array().cloned().unwrap_or_default();
        if calls.len() >= want.len() || Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut got: Vec<&str> = found.iter().filter_map(|c| c["uuid"].as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, want, "search by party {party:?}");
    let none = get("/calls?party=nobody-at-all", &viewer, None).json();
    assert_eq!(none["calls"].as_array().map(Vec::len), Some(0));

    // A recording, one byte range of it, compared with the file the CDR names.
    let uuid = found[0]["uuid"].as_str().expect("uuid").to_string();
    let cdr = cdrs
        .iter()
        .find(|c| c["uuid"] == uuid.as_str())
        .expect("CDR of the found call");
    let file = std::fs::read(cdr["recording"]["path"].as_str().expect("recording path"))
        .expect("recording file");
    let part = get(
        &format!("/calls/{uuid}/recording"),
        &viewer,
        Some("100-1123"),
    );
    assert_eq!(part.status, 206, "{}", String::from_utf8_lossy(&part.body));
    assert_eq!(part.body, file[100..1124]);
    assert!(
        part.headers.contains("content-type: audio/wav"),
        "{}",
        part.headers
    );
    assert!(
        part.headers
            .contains(&format!("content-range: bytes 100-1123/{}", file.len())),
        "{}",
        part.headers
    );
    let head = get(&format!("/calls/{uuid}/recording"), &viewer, Some("0-3"));
    assert_eq!((head.status, head.body.as_slice()), (206, &b"RIFF"[..]));
    let beyond = get(
        &format!("/calls/{uuid}/recording"),
        &viewer,
        Some(&format!("{}-", file.len())),
    );
    assert_eq!(beyond.status, 416);

    let detail = get(&format!("/calls/{uuid}"), &viewer, None).json();
    assert_eq!(
        detail["streams"].as_array().map(Vec::len),
        Some(2),
        "{detail}"
    );

    // Auth: a wrong token is 401, a viewer on an admin route 403, the admin gets through.
    let wrong = get("/calls", "ct_not-a-token", None);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "unauthorized");
    let forbidden = get("/tokens", &viewer, None);
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["code"], "forbidden");
    let tokens = get("/tokens", &admin, None);
    assert_eq!(tokens.status, 200);
    assert_eq!(tokens.json()["tokens"].as_array().map(Vec::len), Some(2));

    let status = get("/status", &viewer, None).json();
    assert_eq!(status["database"]["reachable"], true, "{status}");
    assert_eq!(status["audit_write_failures"], 0, "{status}");

    // The audit log has the two served ranges of the call (not the 416), with the client's address
    // as the daemon's HTTP server saw it.
    let audit = get("/audit", &admin, None);
    assert_eq!(
        audit.status,
        200,
        "{}",
        String::from_utf8_lossy(&audit.body)
    );
    let entries = audit.json()["entries"]
        .as_array()
        .cloned()
        .expect("entries");
    let downloads: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "download" && e["call_uuid"] == uuid.as_str())
        .collect();
    assert_eq!(downloads.len(), 2, "{entries:?}");
    for e in &downloads {
        assert_eq!(e["actor"], "e2e");
        assert!(
            e["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{e}"
        );
    }

    // `calltap token list` beside the running daemon, then `token revoke`: the viewer is
    // refused on its very next request.
    let list = token_cmd(&data, &["list"]);
    let viewer_id = list
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&"viewer"))
        .map(|f| f[0].to_string())
        .unwrap_or_else(|| panic!("no viewer in:\n{list}"));
    assert!(!list.contains(&viewer) && !list.contains(&admin), "{list}");
    assert_eq!(get("/status", &viewer, None).status, 200);
    token_cmd(&data, &["revoke", &viewer_id]);
    assert_eq!(get("/status", &viewer, None).status, 401);
    assert!(token_cmd(&data, &["list"]).contains("\trevoked\t"));
    daemon.stop().expect("clean stop");
}
