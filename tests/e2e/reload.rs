//! Configuration reload of a running `calltap run` (issue #5): a changed path template applies
//! to the next call without a restart, a changed worker count is reported as needing one, an
//! added SIP port is applied, an invalid file changes nothing (409 through the API, an error
//! line on SIGHUP) and the daemon keeps recording. Live sipp calls in the SPAN lab.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use calltap_lab::{
    api::{api, create_token},
    daemon::Daemon,
    files::work_dir,
    netns::NS_REC,
    root::{require_root, require_tool},
    sipp::{place_calls, CallPlan},
    Lab,
};
use serde_json::{json, Value};

const TEST: &str = "reload";
const LISTEN: &str = "127.0.0.1:18091";

/// Places one sipp call and returns its CDR (the first one beyond `before` CDRs).
fn one_call(daemon: &Daemon, dir: &Path, before: usize) -> Value {
    let plan = CallPlan {
        pairs: 1,
        calls_per_pair: 1,
        packets: 50,
    };
    let report = place_calls(dir, &plan).expect("sipp");
    assert_eq!(report.failed, 0, "sipp failed; see {}", dir.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cdrs = daemon.cdrs().unwrap_or_default();
        if cdrs.len() > before {
            return cdrs[before].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no CDR for call {}; stderr: {}",
            before + 1,
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn recording_path(cdr: &Value) -> String {
    cdr["recording"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording in {cdr}"))
        .to_string()
}

#[test]
fn reload_applies_live_keys_reports_restart_keys_and_refuses_a_broken_file() {
    if !require_root(TEST) || !require_tool(TEST, "sipp") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir("reload");
    let data = dir.join("data");
    let ini = dir.join("calltap.ini");
    std::fs::write(
        &ini,
        "[storage]\npath_template = before/{uuid}.wav\n[capture]\nworkers = 1\n",
    )
    .expect("ini");
    let daemon = Daemon::start(
        &data,
        &["--config", ini.to_str().expect("utf-8 path")],
        &[("CALLTAP_API_LISTEN", LISTEN)],
    )
    .expect("calltap");
    let admin = create_token(&data, "admin").expect("admin token");
    let viewer = create_token(&data, "viewer").expect("viewer token");
    let reload = |token: &str| api(NS_REC, LISTEN, "POST", "/reload", token, None).expect("API");

    let first = one_call(&daemon, &dir.join("sipp-1"), 0);
    assert!(
        recording_path(&first).contains("/before/"),
        "{}",
        recording_path(&first)
    );

    std::fs::write(
        &ini,
        "[storage]\npath_template = after/{uuid}.wav\n[capture]\nworkers = 2\n\
         sip_ports = 5060,5080,6060\n",
    )
    .expect("ini");
    assert_eq!(reload(&viewer).0, 403, "a viewer may not reload");
    let (status, report) = reload(&admin);
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        json!({
            "applied": ["capture.sip_ports", "storage.path_template"],
            "needs_restart": ["capture.workers"],
        })
    );
    let second = one_call(&daemon, &dir.join("sipp-2"), 1);
    assert!(
        recording_path(&second).contains("/after/"),
        "the new template applies to the next call: {}",
        recording_path(&second)
    );
    assert_eq!(second["packets"]["caller"], 50, "{second}");
    assert_eq!(second["packets"]["callee"], 50, "{second}");

    // A broken file: the API says why and nothing changes; SIGHUP logs the same.
    std::fs::write(&ini, "[calls]\nmedia_timeout_s = soon\n").expect("ini");
    let (status, err) = reload(&admin);
    assert_eq!(status, 409, "{err}");
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("nothing changed") && message.contains("media_timeout_s"),
        "{err}"
    );
    let pid = daemon.pid().expect("daemon running");
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .stderr()
        .contains("SIGHUP: configuration not reloaded")
    {
        assert!(
            Instant::now() < deadline,
            "no SIGHUP error line: {}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let third = one_call(&daemon, &dir.join("sipp-3"), 2);
    assert!(
        recording_path(&third).contains("/after/"),
        "{}",
        recording_path(&third)
    );
    let summary = daemon.stop().expect("clean stop");
    assert_eq!(summary["calls"].as_array().map(Vec::len), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}
