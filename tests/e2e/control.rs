//! Live calls, recording control, webhooks and the console of a running `calltap run` with
//! live sipp calls in the SPAN lab (issue #5).
//!
//! Phase 1, receiver up: three concurrent calls are listed as active; one is paused for about
//! 2 s and resumed through the API (its WAV is silence exactly over the paused span, the
//! tones elsewhere), one is stopped from the telnet console (its WAV ends there), the CDRs list
//! the events, and the webhook receiver gets started/answered/ended once per call, signed; the
//! audit log has the API's and the console's accepted actions, with the client's address.
//! Phase 2: the receiver refuses connections while two more calls run, calltap is stopped with
//! SIGTERM and started again on the same data directory, the receiver comes back, one more call
//! runs: every call's three events arrive exactly once.
//!
//! The daemon, the receiver and the clients all live in the recorder namespace (its own
//! loopback); every process started here is stopped before the test returns.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use calltap_lab::{
    daemon::{calltap_bin, read_jsonl, Daemon},
    files::work_dir,
    netns::{ns_command, MIRROR_IF, NS_REC},
    root::{require_root, require_tool},
    sipp::{place_calls, wait_bounded, CallPlan},
    Lab,
};
use hmac::{Hmac, Mac as _};
use serde_json::{json, Value};
use sha2::Sha256;

const TEST: &str = "control";
const API: &str = "127.0.0.1:18081";
const HOOKS: &str = "127.0.0.1:18090";
const CONSOLE: &str = "127.0.0.1:15023";
const SECRET: &str = "e2e-webhook-secret";
/// WAV sample rate of G.711 calls.
const RATE: u64 = 8000;
/// How far the silence of a pause may sit from the positions its control timestamps name:
/// one RTP packet (20 ms, the timeline's anchor on the first packet) and the 80-sample blocks
/// the silence is measured in. The worker blanks audio written after a pause was asked for and
/// writes held audio from after a resume, so the latency of the request does not count.
const TOLERANCE: u64 = 160 + 80;
/// How much longer than the stop position a stopped file may be: the packets already written
/// past the stop when it arrived stay in the file (as silence).
const STOP_TOLERANCE: u64 = 2 * 160 + 80;

/// Runs `f` on a thread inside the recorder namespace (setns moves the calling thread only).
fn in_rec<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{NS_REC}")).expect("ns file");
        // SAFETY: a valid namespace fd; only this thread moves.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in ct-rec")
}

/// The daemon's settings: API, webhooks (short backoff so the test sees retries), console.
fn env() -> Vec<(String, String)> {
    vec![
        ("CALLTAP_API_LISTEN".into(), API.into()),
        (
            "CALLTAP_WEBHOOKS_URL".into(),
            format!("http://{HOOKS}/hooks"),
        ),
        ("CALLTAP_WEBHOOKS_SECRET".into(), SECRET.into()),
        ("CALLTAP_WEBHOOKS_MAX_BACKOFF_MS".into(), "500".into()),
        ("CALLTAP_CONSOLE_LISTEN".into(), CONSOLE.into()),
    ]
}

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
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One HTTP/1.1 exchange with the API: (status, JSON body).
fn api(method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nHost: {API}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = in_rec(move || {
        let mut c = TcpStream::connect(API).expect("connect API");
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        c.write_all(req.as_bytes()).expect("send");
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).expect("read");
        raw
    });
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let json = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    (status, json)
}

/// What the webhook receiver got: (event, signature valid).
type Received = Arc<Mutex<Vec<(Value, bool)>>>;

/// A webhook receiver listening on [`HOOKS`] in the recorder namespace until stopped; while
/// it is stopped the port refuses connections.
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(got: Received) -> Receiver {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{NS_REC}")).expect("ns file");
            assert_eq!(
                // SAFETY: a valid namespace fd; only this thread moves.
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let listener = TcpListener::bind(HOOKS).expect("bind receiver");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !st.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, _)) => serve(s, &got),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver up");
        Receiver {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, got: &Received) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(stream);
    let Some((body, sig)) = calltap_lab::files::read_signed_request(&mut r) else {
        return;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(&body);
    let ok = sig == format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        got.lock().expect("received").push((v, ok));
    }
    let _ = r
        .get_mut()
        .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
}

/// Returns once the receiver has served every connection made before this call: it serves
/// them one at a time in accept order and records an event before answering, so the answer to
/// a marker event posted now proves every earlier one recorded. The marker is taken out of
/// `got` again.
fn flush_receiver(got: &Received) {
    const MARKER: &str = "flush-marker";
    let body = json!({"id": MARKER, "type": "test.marker", "data": {}}).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("hmac key");
    mac.update(body.as_bytes());
    let req = format!(
        "POST /hooks HTTP/1.1\r\nHost: {HOOKS}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-CallTap-Signature: sha256={}\r\n\r\n{body}",
        body.len(),
        hex::encode(mac.finalize().into_bytes())
    );
    let answer = in_rec(move || {
        let mut c = TcpStream::connect(HOOKS).expect("connect receiver");
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        c.write_all(req.as_bytes()).expect("post marker");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("marker answered");
        answer
    });
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let mut got = got.lock().expect("got");
    let before = got.len();
    got.retain(|(e, _)| e["id"] != MARKER);
    assert_eq!(before - got.len(), 1, "the marker recorded once");
}

/// A telnet-style session with the console: raw TCP, telnet option bytes included.
fn console(inputs: Vec<Vec<u8>>) -> String {
    in_rec(move || {
        let mut c = TcpStream::connect(CONSOLE).expect("connect console");
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let prompt = b"calltap> ";
        let mut prompts = 0;
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if seen.windows(prompt.len()).filter(|w| w == prompt).count() > prompts {
                prompts += 1;
                match inputs.get(sent) {
                    Some(i) => c.write_all(i).expect("send"),
                    None => break,
                }
                sent += 1;
            }
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        seen.iter().map(|&b| b as char).collect()
    })
}

/// The calls sipp places, in the background: joined before the test looks at the results.
fn calls_in_background(dir: PathBuf, plan: CallPlan) -> thread::JoinHandle<u32> {
    thread::spawn(move || place_calls(&dir, &plan).map_or(u32::MAX, |r| r.failed))
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Per 80-sample block of both channels: true when every sample is zero.
fn silent_blocks(path: &str) -> (Vec<bool>, u64) {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(r.spec().sample_rate as u64, RATE, "{path}");
    let samples: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    let frames = samples.len() as u64 / 2;
    let blocks = samples
        .chunks(160)
        .map(|b| b.iter().all(|&s| s == 0))
        .collect();
    (blocks, frames)
}

/// RMS of one channel over frames [from, to).
fn rms(path: &str, channel: usize, from: u64, to: u64) -> f64 {
    let mut r = hound::WavReader::open(path).expect("wav");
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    let v: Vec<f64> = (from..to)
        .filter_map(|f| s.get(f as usize * 2 + channel))
        .map(|&x| f64::from(x))
        .collect();
    (v.iter().map(|x| x * x).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Starts `calltap run` on the existing data dir (the lab helper starts from an empty one).
fn restart(data: &Path) -> Child {
    let ready = data.join("calltap.ready");
    let _ = std::fs::remove_file(&ready);
    let argv = [
        calltap_bin().to_str().expect("bin").to_string(),
        "run".into(),
        "--interface".into(),
        MIRROR_IF.into(),
        "--data-dir".into(),
        data.to_str().expect("data").to_string(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = ns_command(NS_REC, &argv);
    for (k, v) in env() {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(data.join("stdout2.log")).expect("log"))
        .stderr(std::fs::File::create(data.join("stderr2.log")).expect("log"))
        .spawn()
        .expect("restarting calltap");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "calltap exited at restart ({s}): {}",
                std::fs::read_to_string(data.join("stderr2.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("calltap not ready after restart");
        }
        thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Kills the restarted daemon if an assertion fails first.
struct Reaped(Option<Child>);

impl Reaped {
    fn stop(mut self) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("running");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        wait_bounded(&mut c, Duration::from_secs(30))
            .expect("wait")
            .expect("calltap did not stop within 30 s")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = wait_bounded(c, Duration::from_secs(10));
        }
    }
}

fn recording_events(cdr: &Value) -> Vec<(String, u64)> {
    cdr["recording_events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["at_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn live_calls_recording_control_webhooks_and_console() {
    if !require_root(TEST) || !require_tool(TEST, "sipp") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir(TEST);
    let data = dir.join("data");
    let got: Received = Arc::default();
    let receiver = Receiver::start(got.clone());
    let vars = env();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = Daemon::start(&data, &[], &vars).expect("calltap");
    let operator = create_token(&data, "operator");
    let viewer = create_token(&data, "viewer");
    let admin = create_token(&data, "admin");

    // Phase 1: three concurrent calls of 8 s of audio each way.
    let calls = calls_in_background(
        dir.join("sipp1"),
        CallPlan {
            pairs: 3,
            calls_per_pair: 1,
            packets: 400,
        },
    );
    let active = wait_for(
        "three answered active calls",
        Duration::from_secs(20),
        || {
            let (status, v) = api("GET", "/calls/active", &viewer, None);
            assert_eq!(status, 200, "{v}");
            let calls = v["calls"].as_array().cloned().unwrap_or_default();
            (calls.len() == 3 && calls.iter().all(|c| c["state"] == "answered")).then_some(calls)
        },
    );
    for c in &active {
        assert_eq!(c["recording"], "recording", "{c}");
        assert!(c["call_id"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
    }
    let paused = active[0]["uuid"].as_str().expect("uuid").to_string();
    let stopped = active[1]["uuid"].as_str().expect("uuid").to_string();
    let untouched = active[2]["uuid"].as_str().expect("uuid").to_string();
    let control = |uuid: &str, token: &str, action: &str| {
        api(
            "POST",
            &format!("/calls/{uuid}/recording"),
            token,
            Some(json!({ "action": action })),
        )
    };
    thread::sleep(Duration::from_millis(1500));
    let (s, v) = control(&paused, &viewer, "pause");
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = control(&paused, &operator, "pause");
    assert_eq!((s, v["recording"].as_str()), (200, Some("paused")), "{v}");
    let (s, v) = control(&paused, &operator, "pause");
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, _) = control("no-such-call", &operator, "pause");
    assert_eq!(s, 404);
    // The console lists the calls and stops one (telnet option bytes mixed in, as a client
    // in character mode sends them). Without a login it is read-only: the viewer token does
    // not let it stop a recording, the operator token does.
    let out = console(vec![
        [&[255u8, 253, 3, 255, 251, 24][..], b"show calls\r\n"].concat(),
        format!("login {viewer}\r\n").into_bytes(),
        format!("record stop {stopped}\r\n").into_bytes(),
        format!("login {operator}\r\n").into_bytes(),
        format!("record stop {stopped}\r\n").into_bytes(),
        b"quit\r\n".to_vec(),
    ]);
    assert!(out.contains("needs the operator role"), "{out}");
    assert!(out.contains("(operator)"), "{out}");
    assert!(out.contains("3 active call(s)"), "{out}");
    assert!(out.contains(&paused) && out.contains("paused"), "{out}");
    assert!(out.contains(
        &[255 as char, 252 as char, 3 as char]
            .iter()
            .collect::<String>()
    ));
    assert!(
        out.contains(&format!("call {stopped}: recording stopped")),
        "{out}"
    );
    thread::sleep(Duration::from_millis(2000));
    let (s, v) = control(&paused, &operator, "resume");
    assert_eq!(
        (s, v["recording"].as_str()),
        (200, Some("recording")),
        "{v}"
    );
    assert_eq!(calls.join().expect("sipp thread"), 0, "sipp failed calls");

    // The audit log: the API's pause and resume, and the console's stop (written on the
    // daemon's HTTP runtime after the console answered, so waited for), each with the operator
    // token and the client's address; the refused attempts left nothing.
    let audit = wait_for("three audit rows", Duration::from_secs(10), || {
        let (s, v) = api("GET", "/audit", &admin, None);
        assert_eq!(s, 200, "{v}");
        let e = v["entries"].as_array().cloned().unwrap_or_default();
        (e.len() >= 3).then_some(e)
    });
    let rows: BTreeSet<(String, String)> = audit
        .iter()
        .map(|e| {
            assert_eq!(e["actor"], "e2e", "{e}");
            assert!(
                e["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:")),
                "{e}"
            );
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["call_uuid"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> =
        [("pause", &paused), ("stop", &stopped), ("resume", &paused)]
            .iter()
            .map(|(a, u)| (a.to_string(), u.to_string()))
            .collect();
    assert_eq!((rows, audit.len()), (want, 3), "{audit:?}");

    let cdrs = wait_for("three CDRs", Duration::from_secs(30), || {
        let c = daemon.cdrs().unwrap_or_default();
        (c.len() >= 3).then_some(c)
    });
    let cdr = |uuid: &str| {
        cdrs.iter()
            .find(|c| c["uuid"] == uuid)
            .unwrap_or_else(|| panic!("no CDR for {uuid}"))
            .clone()
    };

    // Paused call: silence exactly over the paused span, both tones around it.
    let c = cdr(&paused);
    let ev = recording_events(&c);
    assert_eq!(
        ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["pause", "resume"],
        "{c}"
    );
    let (p, r) = (ev[0].1 * RATE / 1000, ev[1].1 * RATE / 1000);
    assert!(r - p > RATE, "paused for more than a second: {p}..{r}");
    let path = c["recording"]["path"]
        .as_str()
        .expect("recording")
        .to_string();
    let (silent, _) = silent_blocks(&path);
    let mid = ((p + r) / 2 / 80) as usize;
    assert!(silent[mid], "middle of the pause is not silent");
    let first = (0..=mid)
        .rev()
        .take_while(|&b| silent[b])
        .last()
        .unwrap_or(mid) as u64
        * 80;
    let end = (mid..silent.len())
        .take_while(|&b| silent[b])
        .last()
        .unwrap_or(mid) as u64
        * 80
        + 80;
    eprintln!("paused {p}..{r}, silent {first}..{end} (samples)");
    assert!(
        first.abs_diff(p) <= TOLERANCE && end.abs_diff(r) <= TOLERANCE,
        "silent {first}..{end}, paused {p}..{r} (samples)"
    );
    for ch in 0..2 {
        let before = rms(&path, ch, p - 1600, p - TOLERANCE);
        let after = rms(&path, ch, r + TOLERANCE, r + 1600);
        assert!(
            before > 1000.0 && after > 1000.0,
            "channel {ch}: tone {before:.0} before the pause, {after:.0} after"
        );
    }
    // Stopped call: the file ends at the stop, with the tones up to it.
    let c = cdr(&stopped);
    let ev = recording_events(&c);
    assert_eq!(ev.len(), 1, "{c}");
    assert_eq!(ev[0].0, "stop");
    let s_pos = ev[0].1 * RATE / 1000;
    let path = c["recording"]["path"]
        .as_str()
        .expect("recording")
        .to_string();
    let (_, frames) = silent_blocks(&path);
    eprintln!("stopped at {s_pos}, recording ends at {frames} (samples)");
    assert!(
        frames.abs_diff(s_pos) <= STOP_TOLERANCE,
        "recording ends at {frames}, stopped at {s_pos}"
    );
    assert!(
        c["duration_ms"].as_u64().unwrap_or(0) > ev[0].1 + 2000,
        "{c}"
    );
    for ch in 0..2 {
        assert!(rms(&path, ch, s_pos - 1600, s_pos - STOP_TOLERANCE) > 1000.0);
    }
    assert!(recording_events(&cdr(&untouched)).is_empty());
    // The CDR store keeps them: the API's call detail lists them from the database.
    let detail = wait_for(
        "the paused call in the database",
        Duration::from_secs(20),
        || {
            let (status, v) = api("GET", &format!("/calls/{paused}"), &viewer, None);
            (status == 200).then_some(v)
        },
    );
    let actions: Vec<&str> = detail["recording_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["pause", "resume"], "{detail}");

    // Webhooks of phase 1: three per call, delivered already.
    let uuids1: BTreeSet<String> = [&paused, &stopped, &untouched]
        .iter()
        .map(|s| s.to_string())
        .collect();
    wait_for("nine webhook events", Duration::from_secs(20), || {
        (got.lock().expect("got").len() >= 9).then_some(())
    });
    let phase1_ended: Vec<Value> = got
        .lock()
        .expect("got")
        .iter()
        .filter(|(e, _)| e["type"] == "call.ended" && e["data"]["uuid"] == paused.as_str())
        .map(|(e, _)| e.clone())
        .collect();
    assert_eq!(phase1_ended.len(), 1);
    assert_eq!(phase1_ended[0]["data"]["end_reason"], "bye_caller");
    assert_eq!(
        phase1_ended[0]["data"]["recording_events"][0]["action"],
        "pause"
    );
    assert!(phase1_ended[0]["data"]["recording"]["path"].is_string());

    // Phase 2: the receiver is gone (connections refused) while two calls run.
    drop(receiver);
    assert_eq!(
        calls_in_background(
            dir.join("sipp2"),
            CallPlan {
                pairs: 2,
                calls_per_pair: 1,
                packets: 50,
            },
        )
        .join()
        .expect("sipp"),
        0
    );
    wait_for("five CDRs", Duration::from_secs(30), || {
        (daemon.cdrs().unwrap_or_default().len() >= 5).then_some(())
    });
    let stats = wait_for("failed deliveries", Duration::from_secs(20), || {
        let out = console(vec![b"show stats\r\n".to_vec(), b"quit\r\n".to_vec()]);
        let line = out
            .lines()
            .find(|l| l.starts_with("webhooks "))?
            .to_string();
        let failures: u64 = line.split_whitespace().nth(6)?.parse().ok()?;
        (failures > 0).then_some(line)
    });
    eprintln!("{stats}");
    let events_before_restart = got.lock().expect("got").len();
    assert_eq!(events_before_restart, 9, "nothing delivered while down");
    daemon.stop().expect("clean stop");
    let queued = std::fs::read_to_string(data.join("webhooks.queue")).unwrap_or_default();
    assert!(queued.lines().count() >= 6, "queue file: {queued}");

    // Restarted on the same data dir; the receiver is back; one more call.
    let daemon2 = Reaped(Some(restart(&data)));
    let receiver = Receiver::start(got.clone());
    assert_eq!(
        calls_in_background(
            dir.join("sipp3"),
            CallPlan {
                pairs: 1,
                calls_per_pair: 1,
                packets: 50,
            },
        )
        .join()
        .expect("sipp"),
        0
    );
    let all = wait_for("six CDRs", Duration::from_secs(30), || {
        let c = read_jsonl(&data.join("calls.jsonl")).unwrap_or_default();
        (c.len() >= 6).then_some(c)
    });
    let uuids: BTreeSet<String> = all
        .iter()
        .filter_map(|c| c["uuid"].as_str().map(str::to_string))
        .collect();
    assert_eq!(uuids.len(), 6);
    assert!(uuids1.is_subset(&uuids));
    wait_for("18 webhook events", Duration::from_secs(30), || {
        (got.lock().expect("got").len() >= 18).then_some(())
    });
    // Every event the restarted daemon holds is delivered (its queue is empty, replayed ones
    // included): a duplicate would have been one of them.
    let hooks = wait_for(
        "the restarted daemon's webhook queue empty",
        Duration::from_secs(30),
        || {
            let (status, v) = api("GET", "/status", &viewer, None);
            assert_eq!(status, 200, "{v}");
            (v["webhooks"]["pending"] == 0).then(|| v["webhooks"].clone())
        },
    );
    eprintln!("webhooks after the restart: {hooks}");
    // Stopped, it sends nothing more (its stop drains the queue while the receiver listens);
    // the marker then proves the receiver has served everything it sent.
    let status = daemon2.stop();
    assert!(status.success(), "restarted calltap exit {status}");
    flush_receiver(&got);
    drop(receiver);

    let got = got.lock().expect("got").clone();
    assert!(got.iter().all(|(_, ok)| *ok), "a bad signature");
    let mut per_call: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (e, _) in &got {
        assert!(
            ids.insert(e["id"].to_string()),
            "event delivered twice: {e}"
        );
        per_call
            .entry(e["data"]["uuid"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(e["type"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(per_call.keys().cloned().collect::<BTreeSet<_>>(), uuids);
    for (uuid, types) in &per_call {
        assert_eq!(
            types,
            &["call.started", "call.answered", "call.ended"],
            "events of {uuid}"
        );
    }
}
