//! The load generator end to end in the SPAN lab: `calltap-loadgen` sends 20 concurrent calls
//! of 4 s from the caller namespace while CallTap captures the mirror with XDP. tshark on the
//! switch side of the mirror link checks what the generator put on the wire (every SIP message,
//! exactly 200 RTP packets per call and direction, nothing else), and CallTap's CDRs and WAVs
//! check that the traffic is the model's: every call recorded with 200 packets each way and both
//! channels equal, sample for sample, to the deterministic payloads decoded. A generator that
//! miscounts, mistimes or corrupts anything fails here before it can skew a capacity figure.

use std::{
    collections::{BTreeSet, HashMap},
    process::Stdio,
    time::{Duration, Instant},
};

use calltap_lab::{
    daemon::u64_at,
    daemon::Daemon,
    files::work_dir,
    load::{check_recording, LoadSpec},
    netns::{ns_command, MIRROR_SWITCH_IF, NS_SW, NS_UAC},
    root::{require_root, require_tool},
    sipp::wait_bounded,
    tshark, Lab,
};
use serde_json::Value;

const CALLS: u32 = 20;
const SECONDS: u32 = 4;

#[test]
fn loadgen_calls_are_recorded_packet_and_sample_exact() {
    if !require_root("loadgen") || !require_tool("loadgen", "tshark") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir("loadgen");
    let mut spec = LoadSpec::new(CALLS, SECONDS);
    spec.run = 7;
    let per_direction = u64::from(spec.packets_per_direction());
    assert_eq!(per_direction, 200);

    let daemon = Daemon::start(
        &dir.join("live"),
        &["--source", "xdp", "--workers", "2"],
        &[],
    )
    .expect("calltap run");
    let capture = tshark::Capture::start(NS_SW, MIRROR_SWITCH_IF, &dir.join("mirror.pcapng"))
        .expect("tshark");

    let stats_path = dir.join("loadgen.json");
    let mut child = ns_command(
        NS_UAC,
        &[
            env!("CARGO_BIN_EXE_calltap-loadgen"),
            "--interface",
            "a0",
            "--calls",
            &CALLS.to_string(),
            "--seconds",
            &SECONDS.to_string(),
            "--run",
            &spec.run.to_string(),
            "--stats-json",
            stats_path.to_str().expect("utf-8 path"),
        ],
    )
    .stdin(Stdio::null())
    .spawn()
    .expect("starting calltap-loadgen");
    // Killed and reaped by wait_bounded if it overruns its schedule by far.
    let status = wait_bounded(&mut child, spec.duration() + Duration::from_secs(30))
        .expect("waiting for calltap-loadgen");
    assert!(
        status.is_some_and(|s| s.success()),
        "calltap-loadgen failed or overran: {status:?}"
    );
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).expect("loadgen stats written"))
            .expect("loadgen stats are JSON");
    assert_eq!(stats["complete"], true, "{stats}");
    assert_eq!(u64_at(&stats, &["rtp"]), spec.rtp_packets(), "{stats}");
    assert_eq!(u64_at(&stats, &["sip"]), spec.sip_packets(), "{stats}");
    // Real time: the run took its schedule, not much more (a 2-core box shared with builds
    // gets a generous margin), and it was never a second behind.
    let wall = stats["wall_secs"].as_f64().expect("wall_secs");
    let schedule = spec.duration().as_secs_f64();
    assert!(
        wall >= schedule && wall < schedule + 2.0,
        "took {wall:.2} s for a {schedule:.2} s schedule: {stats}"
    );
    assert!(
        stats["late_max_ms"].as_f64().expect("late_max_ms") < 1000.0,
        "{stats}"
    );

    // Every call ends with a BYE: wait (bounded) until CallTap has written all CDRs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.cdrs().map(|c| c.len()).unwrap_or(0) < CALLS as usize && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pcap = capture.stop().expect("stop tshark");
    let cdrs = daemon.cdrs().expect("calls.jsonl");
    let summary = daemon.stop().expect("calltap stopped cleanly");

    // 1. The wire, as tshark saw it on the mirror: five SIP messages per call, and per call and
    //    direction (source address and port) exactly 200 RTP packets, nothing else.
    let sip = tshark::count(&pcap, "udp.port == 5060").expect("tshark sip");
    assert_eq!(sip, spec.sip_packets(), "SIP messages on the mirror");
    let rtp = tshark::fields(
        &pcap,
        "udp && !(udp.port == 5060)",
        &["ip.src", "udp.srcport"],
    )
    .expect("tshark rtp");
    let mut per_stream: HashMap<(String, String), u64> = HashMap::new();
    for row in &rtp {
        let key = (
            row.first().cloned().unwrap_or_default(),
            row.get(1).cloned().unwrap_or_default(),
        );
        *per_stream.entry(key).or_default() += 1;
    }
    let mut want: HashMap<(String, String), u64> = HashMap::new();
    for call in 0..CALLS {
        let port = spec.media_port(call).to_string();
        want.insert((spec.uac_ip.to_string(), port.clone()), per_direction);
        want.insert((spec.uas_ip.to_string(), port), per_direction);
    }
    assert_eq!(per_stream, want, "RTP packets per stream on the mirror");

    // 2. CallTap recorded every call, each direction complete, nothing dropped.
    assert_eq!(cdrs.len(), CALLS as usize, "CDRs: {cdrs:#?}");
    assert_eq!(u64_at(&summary, &["counters", "ring_full"]), 0, "{summary}");
    let mut seen = BTreeSet::new();
    for cdr in &cdrs {
        let call_id = cdr["call_id"].as_str().expect("call_id");
        let call = spec
            .call_index(call_id)
            .unwrap_or_else(|| panic!("{call_id} is not a call of this run"));
        assert!(seen.insert(call), "call {call} recorded twice");
        assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
        assert_eq!(u64_at(cdr, &["packets", "caller"]), per_direction, "{cdr}");
        assert_eq!(u64_at(cdr, &["packets", "callee"]), per_direction, "{cdr}");

        // 3. The recording is the model's audio: caller left, callee right, sample-exact.
        let path = cdr["recording"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no recording in {cdr}"));
        let mut wav = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let wav_spec = wav.spec();
        assert_eq!(
            (
                wav_spec.channels,
                wav_spec.sample_rate,
                wav_spec.bits_per_sample
            ),
            (2, 8000, 16),
            "{path}"
        );
        let samples: Vec<i16> = wav
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .expect("wav samples");
        if let Err(e) = check_recording(&spec, call, &samples) {
            panic!("{path}: {e:#}");
        }
    }
    assert_eq!(seen.len(), CALLS as usize);
}
