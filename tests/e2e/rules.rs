//! Recording rules against a running `calltap run` with live sipp calls in the SPAN lab
//! (issue #5): a `skip` rule matching the sipp caller (From user `callerN`) leaves a CDR without
//! a recording and no WAV file at all; changed to `on_demand`, a call has no audio until an
//! operator starts it mid-call (the WAV is silence before the start and the tones after);
//! with the rule deleted the next call is recorded as usual.

use std::{
    path::{Path, PathBuf},
    thread,
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

const TEST: &str = "rules";
const LISTEN: &str = "127.0.0.1:18093";
/// WAV rate of the lab's G.711 calls.
const RATE: u64 = 8000;
/// Slack around the start position, in frames: one 20 ms packet (the timeline anchors on the
/// first packet) plus the worker's control latency, which a start (unlike a resume) does not
/// make up for: audio of the milliseconds before the request reached the worker is not kept.
const TOLERANCE: u64 = 3 * 160;

fn wait_for<T>(
    what: &str,
    daemon: &Daemon,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; stderr: {}",
            daemon.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `n`th CDR (0-based), once written.
fn cdr(daemon: &Daemon, n: usize) -> Value {
    wait_for(
        &format!("CDR {}", n + 1),
        daemon,
        Duration::from_secs(20),
        || daemon.cdrs().unwrap_or_default().get(n).cloned(),
    )
}

/// Calls placed in the background: (failed calls) when joined.
fn calls_in_background(dir: PathBuf, packets: usize) -> thread::JoinHandle<u32> {
    thread::spawn(move || {
        let plan = CallPlan {
            pairs: 1,
            calls_per_pair: 1,
            packets,
        };
        place_calls(&dir, &plan).map_or(u32::MAX, |r| r.failed)
    })
}

fn one_call(dir: &Path, packets: usize) {
    let failed = calls_in_background(dir.to_path_buf(), packets)
        .join()
        .expect("sipp thread");
    assert_eq!(failed, 0, "sipp failed; see {}", dir.display());
}

/// Every file under `dir` whose name ends in `.wav`.
fn wav_files(dir: &Path) -> Vec<PathBuf> {
    calltap_lab::files::files_below(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect()
}

/// Both channels' samples, interleaved.
fn samples(path: &str) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(u64::from(r.spec().sample_rate), RATE, "{path}");
    r.samples::<i16>().map(|s| s.expect("sample")).collect()
}

/// RMS of one channel over frames [from, to).
fn rms(s: &[i16], channel: usize, from: u64, to: u64) -> f64 {
    let v: Vec<f64> = (from..to)
        .filter_map(|f| s.get(f as usize * 2 + channel))
        .map(|&x| f64::from(x))
        .collect();
    assert!(!v.is_empty(), "no frames in [{from}, {to})");
    (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn skip_on_demand_and_deleted_rules_on_live_calls() {
    if !require_root(TEST) || !require_tool(TEST, "sipp") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir(TEST);
    let data = dir.join("data");
    let daemon = Daemon::start(&data, &[], &[("CALLTAP_API_LISTEN", LISTEN)]).expect("calltap");
    let admin = create_token(&data, "admin").expect("admin token");
    let operator = create_token(&data, "operator").expect("operator token");
    let call_api = |method: &str, path: &str, token: &str, body: Option<Value>| {
        api(NS_REC, LISTEN, method, path, token, body.as_ref()).expect("API")
    };

    // 1. skip: no file at all, the CDR says why.
    let rule = json!({"name": "lab-caller", "priority": 10, "action": "skip",
        "match": {"caller": "caller*", "ip": "198.18.0.0/15"}});
    let (status, created) = call_api("POST", "/rules", &admin, Some(rule));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("rule id");
    one_call(&dir.join("sipp-skip"), 50);
    let skipped = cdr(&daemon, 0);
    assert_eq!(skipped["recording"], Value::Null, "{skipped}");
    assert_eq!(skipped["recording_mode"], "skip", "{skipped}");
    assert_eq!(skipped["rule_id"], id, "{skipped}");
    assert_eq!(
        skipped["packets"]["caller"], 50,
        "the call itself was followed: {skipped}"
    );
    let recordings = data.join("recordings");
    assert_eq!(
        wav_files(&recordings),
        Vec::<PathBuf>::new(),
        "a skipped call left a file"
    );

    // 2. on_demand: silence until an operator starts the recording mid-call.
    let changed = json!({"name": "lab-caller", "priority": 10, "action": "on_demand",
        "match": {"caller": "caller*"}});
    let (status, v) = call_api("PUT", &format!("/rules/{id}"), &admin, Some(changed));
    assert_eq!(status, 200, "{v}");
    // 6 s of audio each way.
    let calls = calls_in_background(dir.join("sipp-on-demand"), 300);
    let live = wait_for(
        "the on-demand call answered",
        &daemon,
        Duration::from_secs(20),
        || {
            let (status, v) = call_api("GET", "/calls/active", &operator, None);
            assert_eq!(status, 200, "{v}");
            v["calls"]
                .as_array()
                .and_then(|c| c.first().cloned())
                .filter(|c| c["state"] == "answered")
        },
    );
    assert_eq!(live["recording_mode"], "on_demand", "{live}");
    assert_eq!(live["rule_id"], id, "{live}");
    assert_eq!(live["recording"], "stopped", "{live}");
    thread::sleep(Duration::from_millis(2000));
    let uuid = live["uuid"].as_str().expect("uuid").to_string();
    let (status, v) = call_api(
        "POST",
        &format!("/calls/{uuid}/recording"),
        &operator,
        Some(json!({"action": "start"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["recording"], "recording", "{v}");
    assert_eq!(
        calls.join().expect("sipp thread"),
        0,
        "on-demand call failed"
    );
    let on_demand = cdr(&daemon, 1);
    assert_eq!(on_demand["recording_mode"], "on_demand", "{on_demand}");
    assert_eq!(on_demand["rule_id"], id, "{on_demand}");
    let events = on_demand["recording_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 1, "{on_demand}");
    assert_eq!(events[0]["action"], "start", "{on_demand}");
    let start = events[0]["at_ms"].as_u64().expect("at_ms") * RATE / 1000;
    let answer_ms = on_demand["answer_ns"]
        .as_u64()
        .zip(on_demand["start_ns"].as_u64())
        .map(|(a, s)| (a - s) / 1_000_000)
        .expect("answered");
    // The start came about 2 s into the audio.
    assert!(
        start > (answer_ms + 1000) * RATE / 1000,
        "start at frame {start}, answer {answer_ms} ms"
    );
    let path = on_demand["recording"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording after start: {on_demand}"))
        .to_string();
    let s = samples(&path);
    let frames = s.len() as u64 / 2;
    assert!(
        frames > start + RATE,
        "file of {frames} frames, start at {start}"
    );
    // Silence (both channels) over the whole call before the start, though audio flowed.
    let before = start.saturating_sub(TOLERANCE) as usize * 2;
    assert!(
        s[..before].iter().all(|&x| x == 0),
        "audio before the start (frame {start}) in {path}"
    );
    // Both tones after it.
    let after = (start + TOLERANCE, (start + TOLERANCE + RATE).min(frames));
    for channel in 0..2 {
        let level = rms(&s, channel, after.0, after.1);
        assert!(
            level > 1000.0,
            "channel {channel} after the start: rms {level}"
        );
    }
    assert_eq!(
        wav_files(&recordings).len(),
        1,
        "only the started call has a file"
    );

    // 3. Rule deleted: recorded from the first packet again.
    let (status, v) = call_api("DELETE", &format!("/rules/{id}"), &admin, None);
    assert_eq!((status, v), (204, Value::Null));
    one_call(&dir.join("sipp-record"), 50);
    let recorded = cdr(&daemon, 2);
    assert_eq!(recorded["recording_mode"], "record", "{recorded}");
    assert_eq!(recorded["rule_id"], Value::Null, "{recorded}");
    let path = recorded["recording"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording: {recorded}"))
        .to_string();
    let s = samples(&path);
    assert!(
        s.iter().any(|&x| x != 0),
        "the recorded call has audio: {path}"
    );
    let summary = daemon.stop().expect("clean stop");
    assert_eq!(
        summary["calls"].as_array().map(Vec::len),
        Some(3),
        "{summary}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
