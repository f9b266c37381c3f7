//! Fault test (3) of issue #4 through the SPAN lab: `kill -9` of calltap in the middle of real
//! sipp calls, and a restart on the same data directory.
//!
//! Call A (20 s of known tone each way) goes on through the outage and ends with its BYE after
//! the restart: it must have one CDR (end reason from the BYE), the same WAV the first run
//! started, the tone before and after the outage sample-exact at the positions its RTP
//! timestamps give, silence over the outage, and a restart gap matching the downtime. Call B
//! hangs up while calltap is down: it must be closed with `recorder_restart`, its audio from
//! before the crash intact.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use calltap_lab::{
    daemon::{calltap_bin, read_jsonl},
    netns::{ns_command, MIRROR_IF, NS_REC, NS_UAC, NS_UAS, UAC_IP},
    root::{require_root, require_tool},
    rtp_pcap::{tone_packets, tone_payloads, ulaw_decode, write_rtp_pcap, ToneSpec},
    sipp::{callee_tone, caller_tone, pair_addrs, uac_xml, uas_xml, wait_bounded, Scenario},
    Lab,
};
use serde_json::Value;

const TEST: &str = "crash_resume";
/// Call A: 20 s of audio each way.
const A_PACKETS: usize = 1000;
/// Call B: 2.5 s, so it hangs up (about 3.2 s after it starts) while calltap is down.
const B_PACKETS: usize = 125;
/// calltap is killed this long after the calls start.
const KILL_AFTER: Duration = Duration::from_millis(2000);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A child process killed (SIGKILL) and reaped when dropped: nothing this test starts outlives
/// it, whatever assertion fails.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> i32 {
        self.0.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut()?;
        let status = wait_bounded(child, limit).ok().flatten();
        self.0 = None;
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `calltap run` on the mirror port with `data_dir` kept as it is (a restart must find the
/// previous run's files); returns once it is ready, with the times it was started and ready.
fn start_calltap(data_dir: &Path) -> (Proc, u64, u64) {
    // A killed run leaves its ready file behind.
    let ready = data_dir.join("calltap.ready");
    let _ = std::fs::remove_file(&ready);
    let bin = calltap_bin();
    assert!(
        bin.exists(),
        "{} not built: cargo build -p calltap",
        bin.display()
    );
    let bin = bin.to_string_lossy().into_owned();
    let data = data_dir.to_string_lossy().into_owned();
    let run = std::fs::read_dir(data_dir).map(|d| d.count()).unwrap_or(0);
    let log = |name: &str| {
        std::fs::File::create(data_dir.join(format!("{name}-{run}.log"))).expect("log file")
    };
    let child = ns_command(
        NS_REC,
        &[
            &bin,
            "run",
            "--interface",
            MIRROR_IF,
            "--data-dir",
            &data,
            "--source",
            "xdp",
            "--workers",
            "2",
        ],
    )
    .env("CALLTAP_CALLS_RESTORE_GRACE_S", "2")
    // sipp's X-CID groups legs into interactions; the grouping must survive the restart.
    .env("CALLTAP_CALLS_CORRELATION_HEADER", "X-CID")
    .env("CALLTAP_API_LISTEN", "")
    .env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    )
    .stdin(Stdio::null())
    .stdout(log("stdout"))
    .stderr(log("stderr"))
    .spawn()
    .expect("starting calltap");
    let spawned = now_ns();
    let mut proc = Proc(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if let Some(c) = proc.0.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "calltap exited early ({status}); logs in {}",
                    data_dir.display()
                );
            }
        }
        assert!(Instant::now() < deadline, "calltap not ready after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc, spawned, now_ns())
}

/// One sipp pair (`pair` selects addresses and ports) placing one Basic call with `packets` of
/// tone each way; returns (server, client).
fn start_call(dir: &Path, pair: u8, packets: usize) -> (Proc, Proc) {
    let dir = dir.join(format!("sipp{pair}"));
    std::fs::create_dir_all(&dir).expect("sipp dir");
    let audio_ms = packets as u64 * 20;
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    write_rtp_pcap(
        &dir.join("caller.pcap"),
        &tone_packets(&caller_tone(packets), 0),
    )
    .expect("caller pcap");
    write_rtp_pcap(
        &dir.join("callee.pcap"),
        &tone_packets(&callee_tone(packets), 0),
    )
    .expect("callee pcap");
    std::fs::write(dir.join("uas.xml"), uas_xml(Scenario::Basic, audio_ms)).expect("uas xml");
    std::fs::write(dir.join("uac.xml"), uac_xml(Scenario::Basic, audio_ms)).expect("uac xml");
    let a = pair_addrs(pair);
    let spawn = |ns: &str, argv: &[&str]| {
        Proc(Some(
            ns_command(ns, argv)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting sipp"),
        ))
    };
    let server = spawn(
        NS_UAS,
        &[
            "sipp",
            "-sf",
            &file("uas.xml"),
            "-i",
            &a.uas_ip,
            "-mi",
            &a.uas_ip,
            "-p",
            "5060",
            "-mp",
            &a.uas_media_port.to_string(),
            "-key",
            "callee_pcap",
            &file("callee.pcap"),
            "-m",
            "1",
            "-nostdin",
            "-trace_err",
            "-error_file",
            &file("uas.err"),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let target = format!("{}:5060", a.uas_ip);
    let client = spawn(
        NS_UAC,
        &[
            "sipp",
            &target,
            "-sf",
            &file("uac.xml"),
            "-i",
            UAC_IP,
            "-mi",
            UAC_IP,
            "-p",
            &a.uac_sip_port.to_string(),
            "-mp",
            &a.uac_media_port.to_string(),
            "-key",
            "caller_pcap",
            &file("caller.pcap"),
            "-s",
            &format!("crash{pair}"),
            "-l",
            "1",
            "-m",
            "1",
            "-nostdin",
            "-trace_err",
            "-error_file",
            &file("uac.err"),
        ],
    );
    (server, client)
}

fn pcm(spec: &ToneSpec) -> Vec<Vec<i16>> {
    tone_payloads(spec)
        .into_iter()
        .map(|p| p.into_iter().map(ulaw_decode).collect())
        .collect()
}

fn channels(path: &Path) -> [Vec<i16>; 2] {
    let mut wav =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(wav.spec().sample_rate, 8000);
    let s: Vec<i16> = wav
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("samples");
    [
        s.iter().step_by(2).copied().collect(),
        s.iter().skip(1).step_by(2).copied().collect(),
    ]
}

/// Where the tone's packets are in `channel`: the first packet is found sample-exact, then
/// every packet must be at its own 160-sample slot after it (the RTP timestamps say so): either
/// exactly the tone or silence (not recorded). Returns (first sample, slots that are silence).
fn tone_layout(channel: &[i16], tone: &[Vec<i16>], what: &str) -> (usize, Vec<usize>) {
    let first = &tone[0];
    let at = channel
        .windows(first.len())
        .position(|w| w == first.as_slice())
        .unwrap_or_else(|| panic!("{what}: first tone packet not in the WAV"));
    let mut silent = Vec::new();
    for (p, want) in tone.iter().enumerate() {
        let start = at + p * want.len();
        let Some(got) = channel.get(start..start + want.len()) else {
            // The recording may end before the tone's last packets (B: the call ended).
            silent.push(p);
            continue;
        };
        if got.iter().all(|&s| s == 0) {
            silent.push(p);
        } else {
            assert_eq!(
                got,
                want.as_slice(),
                "{what}: packet {p} not sample-exact at {start}"
            );
        }
    }
    (at, silent)
}

/// The silent packets form one run (the outage): returns its (first, len).
fn one_run(silent: &[usize], what: &str) -> (usize, usize) {
    let first = *silent
        .first()
        .unwrap_or_else(|| panic!("{what}: no gap at all"));
    for (k, p) in silent.iter().enumerate() {
        assert_eq!(
            *p,
            first + k,
            "{what}: silence outside the outage: {silent:?}"
        );
    }
    (first, silent.len())
}

/// The WAV of every journaled call. A call has up to two journal files (`<uuid>.0.json`,
/// `<uuid>.1.json`, written in turn), each a `CALLTAP-JOURNAL` header line and the JSON.
fn journal_wav_paths(active: &Path) -> Vec<String> {
    let paths: std::collections::BTreeSet<String> = std::fs::read_dir(active)
        .expect("active-call journal dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("journal");
            let body = match bytes.strip_prefix(b"CALLTAP-JOURNAL ") {
                Some(rest) => {
                    let nl = rest.iter().position(|&b| b == b'\n').expect("header line");
                    rest[nl + 1..].to_vec()
                }
                None => bytes,
            };
            let j: Value = serde_json::from_slice(&body).expect("json");
            j["wav"]["path"].as_str().unwrap_or("").to_string()
        })
        .collect();
    paths.into_iter().collect()
}

#[test]
fn kill_9_mid_call_and_restart_continues_the_same_wav() {
    if !require_root(TEST) || !require_tool(TEST, "sipp") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir: PathBuf = std::env::temp_dir().join("calltap-e2e-crash-resume");
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");

    let (mut first, _, _) = start_calltap(&data);
    let (mut a_server, mut a_client) = start_call(&dir, 0, A_PACKETS);
    let (mut b_server, mut b_client) = start_call(&dir, 1, B_PACKETS);
    std::thread::sleep(KILL_AFTER);

    // kill -9: no shutdown, no CDRs, the journal and the WAVs as they are.
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(first.pid(), libc::SIGKILL) }, 0);
    let killed = now_ns();
    first.wait(Duration::from_secs(10)).expect("calltap killed");
    let journaled = journal_wav_paths(&data.join("active"));
    assert_eq!(journaled.len(), 2, "both calls journaled: {journaled:?}");
    // A journal file the restart cannot read: set aside and counted, never fatal.
    std::fs::write(
        data.join("active/torn.json"),
        b"{\"version\": 1, \"uuid\": \"to",
    )
    .expect("torn journal file");

    // B hangs up while calltap is down; then calltap comes back on the same data dir.
    let b_status = b_client.wait(Duration::from_secs(30));
    assert!(
        b_status.is_some_and(|s| s.success()),
        "sipp call B failed ({b_status:?}); see {}",
        dir.display()
    );
    b_server.wait(Duration::from_secs(10));
    let (mut second, restarted, ready) = start_calltap(&data);
    // Down from the kill until the new process runs, or until it is ready.
    let down_ms = (
        (restarted - killed) / 1_000_000,
        (ready - killed) / 1_000_000,
    );
    assert!(down_ms.1 < 6000, "restart took {down_ms:?} ms");

    let a_status = a_client.wait(Duration::from_secs(60));
    assert!(
        a_status.is_some_and(|s| s.success()),
        "sipp call A failed ({a_status:?}); see {}",
        dir.display()
    );
    a_server.wait(Duration::from_secs(10));
    let jsonl = data.join("calls.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_jsonl(&jsonl).map(|c| c.len()).unwrap_or(0) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(second.pid(), libc::SIGTERM) };
    let stopped = second.wait(Duration::from_secs(30));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "calltap stop: {stopped:?}"
    );
    let cdrs = read_jsonl(&jsonl).expect("calls.jsonl");
    assert_eq!(cdrs.len(), 2, "one CDR per call: {cdrs:#?}");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("run-summary.json")).expect("run summary"),
    )
    .expect("summary json");
    assert_eq!(summary["signalling"]["calls_restored"], 2, "{summary}");
    assert_eq!(summary["signalling"]["journal_corrupt"], 1, "{summary}");
    assert!(
        data.join("active/corrupt/torn.json").is_file(),
        "torn file set aside"
    );
    assert!(
        journal_wav_paths(&data.join("active")).is_empty(),
        "journal emptied"
    );
    let of = |pair: u8| -> &Value {
        let ip = pair_addrs(pair).uas_ip;
        let mine: Vec<&Value> = cdrs.iter().filter(|c| c["dst_ip"] == ip.as_str()).collect();
        assert_eq!(mine.len(), 1, "one CDR for the call to {ip}: {cdrs:#?}");
        mine[0]
    };

    // A: ended by its BYE, in the WAV the first run started.
    let a = of(0);
    assert_eq!(a["end_reason"], "bye_caller", "{a}");
    let call_id = a["call_id"].as_str().expect("call_id");
    assert_eq!(a["interaction_id"], format!("lab-{call_id}"), "{a}");
    let a_path = a["recording"]["path"].as_str().expect("A recording");
    assert!(
        journaled.iter().any(|p| p == a_path),
        "A's WAV {a_path} is not the one journaled before the kill: {journaled:?}"
    );
    let gaps = a["restart_gaps"].as_array().expect("restart_gaps");
    assert_eq!(gaps.len(), 1, "{a}");
    let (from, to) = (
        gaps[0]["from_ns"].as_u64().expect("from_ns"),
        gaps[0]["to_ns"].as_u64().expect("to_ns"),
    );
    // From: the first run's last heartbeat (200 ms tick) before the kill; to: the restarted
    // run took the call over between its spawn and its ready file.
    assert!(
        from <= killed && killed - from < 700_000_000,
        "gap starts {} ms before the kill",
        (killed as i64 - from as i64) / 1_000_000
    );
    assert!(
        restarted <= to && to <= ready,
        "gap ends {} ms after the restart, ready after {} ms",
        (to as i64 - restarted as i64) / 1_000_000,
        (ready - restarted) / 1_000_000
    );
    let gap_ms = gaps[0]["ms"].as_u64().expect("ms");
    assert!(
        down_ms.0 <= gap_ms && gap_ms <= down_ms.1 + 700,
        "gap {gap_ms} ms vs downtime {down_ms:?} ms"
    );

    let [left, right] = channels(Path::new(a_path));
    let mut outage_ms = Vec::new();
    let mut outage_packets = 0;
    for (channel, tone, what) in [
        (&left, pcm(&caller_tone(A_PACKETS)), "A caller"),
        (&right, pcm(&callee_tone(A_PACKETS)), "A callee"),
    ] {
        let (_, silent) = tone_layout(channel, &tone, what);
        let (first_silent, n) = one_run(&silent, what);
        assert!(
            first_silent > 25,
            "{what}: audio before the kill recorded ({first_silent})"
        );
        assert!(
            first_silent + n < A_PACKETS - 100,
            "{what}: audio after the restart recorded"
        );
        outage_ms.push(n as u64 * 20);
        outage_packets = outage_packets.max(n as u64);
        // Nothing but the tone: the rest of the channel is silence.
        let nonzero = channel.iter().filter(|s| **s != 0).count();
        let tone_nonzero: usize = tone
            .iter()
            .enumerate()
            .filter(|(p, _)| !silent.contains(p))
            .map(|(_, t)| t.iter().filter(|s| **s != 0).count())
            .sum();
        assert_eq!(nonzero, tone_nonzero, "{what}: stray audio");
    }
    for ms in &outage_ms {
        assert!(
            ms + 1000 >= gap_ms && *ms <= gap_ms + 1000,
            "silence of {ms} ms in the WAV vs restart gap {gap_ms} ms"
        );
    }

    // Counters go on from the journal, which is at most a few seconds behind the kill.
    let caller_packets = a["packets"]["caller"].as_u64().expect("packets");
    assert!(
        caller_packets <= A_PACKETS as u64
            && caller_packets + outage_packets + 200 >= A_PACKETS as u64,
        "A caller packets {caller_packets}, {outage_packets} in the outage"
    );

    // B: hung up while calltap was down.
    let b = of(1);
    assert_eq!(b["end_reason"], "recorder_restart", "{b}");
    assert!(
        b["restart_gaps"].as_array().is_some_and(|g| g.len() == 1),
        "{b}"
    );
    let b_path = b["recording"]["path"].as_str().expect("B recording");
    assert!(
        journaled.iter().any(|p| p == b_path),
        "B's WAV is the journaled one"
    );
    let [left, right] = channels(Path::new(b_path));
    for (channel, tone, what) in [
        (&left, pcm(&caller_tone(B_PACKETS)), "B caller"),
        (&right, pcm(&callee_tone(B_PACKETS)), "B callee"),
    ] {
        let (_, silent) = tone_layout(channel, &tone, what);
        let recorded = B_PACKETS - silent.len();
        // The kill came 2.5 s after the call started; ringing and answer take some of it.
        assert!(
            recorded >= 40,
            "{what}: only {recorded} packets before the kill"
        );
        if let Some(first) = silent.first() {
            assert_eq!(
                silent.len(),
                B_PACKETS - first,
                "{what}: audio stops once, at the kill"
            );
        }
    }
    eprintln!(
        "{TEST}: downtime {down_ms:?} ms, restart gap {gap_ms} ms, silence in A {outage_ms:?} ms"
    );
}
