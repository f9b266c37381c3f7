//! What the plain lab calls do not cover, live through the SPAN lab with XDP: calls in PCMA and
//! G.722, SIP over TCP, INVITEs fragmented by the caller's kernel, and stream quality under
//! loss and jitter. Each test starts one daemon for its batch of calls. tshark on the switch
//! side of the mirror link is the witness for SIP and RTP; the audio is checked sample for sample against a reference decode (ffmpeg for
//! PCMA and G.722, decoding the very payload bytes sipp sent; see `calltap_lab::codec_ref`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use calltap_lab::{
    codec_ref::Codec,
    daemon::{u64_at, Daemon},
    files::work_dir,
    netns::{MIRROR_SWITCH_IF, NS_SW, UAC_IP},
    root::{require_root, require_tool},
    sipp::{
        check_coded_recording, impaired_packets, pair_addrs, place_variants, reference_tones,
        PairPlan, Scenario, Transport, Variant,
    },
    tshark, Lab,
};
use serde_json::Value;

/// What one batch left behind: CDRs, the run summary and tshark's capture of the mirror.
struct Run {
    dir: PathBuf,
    cdrs: Vec<Value>,
    summary: Value,
    pcap: PathBuf,
}

/// True when every tool the test needs is there (see `require_tool`: a skip outside CI, a
/// failure under CI).
fn have(test: &str, tools: &[&str]) -> bool {
    require_root(test) && tools.iter().all(|t| require_tool(test, t))
}

fn basic(calls: u32, v: Variant) -> (PairPlan, Variant) {
    (
        PairPlan {
            scenario: Scenario::Basic,
            calls,
        },
        v,
    )
}

/// One calltap daemon on the mirror port and tshark on the switch side for one batch of calls:
/// waits (bounded) for every call's CDR, then stops both.
fn run(name: &str, pairs: &[(PairPlan, Variant)], packets: usize) -> Run {
    let dir = work_dir(name);
    let total: u32 = pairs.iter().map(|(p, _)| p.calls).sum();
    let daemon = Daemon::start(
        &dir.join("live"),
        &["--source", "xdp", "--workers", "2"],
        &[],
    )
    .expect("calltap run");
    let capture = tshark::Capture::start(NS_SW, MIRROR_SWITCH_IF, &dir.join("mirror.pcapng"))
        .expect("tshark");
    let report = place_variants(&dir.join("sipp"), pairs, packets).expect("sipp calls");
    assert_eq!(
        report.failed,
        0,
        "sipp reported failed calls; see {}",
        dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.cdrs().map(|c| c.len()).unwrap_or(0) < total as usize && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pcap = capture.stop().expect("stop tshark");
    let cdrs = daemon.cdrs().expect("calls.jsonl");
    let summary = daemon.stop().expect("calltap stopped cleanly");
    assert_eq!(cdrs.len(), total as usize, "one CDR per call: {cdrs:#?}");
    assert_eq!(u64_at(&summary, &["counters", "ring_full"]), 0, "{summary}");
    Run {
        dir,
        cdrs,
        summary,
        pcap,
    }
}

/// The CDRs of pair `i` (its callee address is its own).
fn calls_of(run: &Run, i: u8) -> Vec<&Value> {
    let ip = pair_addrs(i).uas_ip;
    run.cdrs
        .iter()
        .filter(|c| c["dst_ip"] == ip.as_str())
        .collect()
}

/// Every RTP packet tshark saw on the mirror is in the packet counts of the CDRs: per pair and
/// direction, tshark's count equals the sum over that pair's calls; and no RTP went anywhere
/// else. With `lossless`, each call also has every packet sipp sent.
fn check_rtp_against_tshark(
    run: &Run,
    pairs: &[(PairPlan, Variant)],
    packets: usize,
    lossless: bool,
) {
    let mut total = 0;
    for (i, (plan, _)) in pairs.iter().enumerate() {
        let a = pair_addrs(i as u8);
        let seen = |ip: &str, port: u16| {
            tshark::count(
                &run.pcap,
                &format!("ip.src == {ip} && udp.srcport == {port}"),
            )
            .expect("tshark")
        };
        let from_caller = seen(UAC_IP, a.uac_media_port);
        let from_callee = seen(&a.uas_ip, a.uas_media_port);
        let calls = calls_of(run, i as u8);
        assert_eq!(calls.len() as u32, plan.calls, "calls of pair {i}");
        let sum = |dir: &str| -> u64 { calls.iter().map(|c| u64_at(c, &["packets", dir])).sum() };
        assert_eq!(
            (sum("caller"), sum("callee")),
            (from_caller, from_callee),
            "pair {i}: CallTap (caller, callee) vs tshark"
        );
        if lossless {
            for c in &calls {
                for dir in ["caller", "callee"] {
                    assert_eq!(u64_at(c, &["packets", dir]), packets as u64, "{dir}: {c}");
                }
            }
        }
        total += from_caller + from_callee;
    }
    let rtp_seen = tshark::count(
        &run.pcap,
        "udp && !(udp.port == 5060) && !(ip.flags.mf == 1 || ip.frag_offset > 0)",
    )
    .expect("tshark");
    assert_eq!(rtp_seen, total, "RTP outside the calls' endpoints");
}

/// The SIP tshark decoded on the mirror (after its own IP and TCP reassembly) against CallTap:
/// the same calls (Call-IDs) and the same number of SIP messages parsed. Returns tshark's
/// message count.
fn check_sip_against_tshark(run: &Run) -> u64 {
    // `occurrence=a` (tshark's default) joins several messages of one TCP segment with ','.
    let rows =
        tshark::fields(&run.pcap, "sip", &["sip.Call-ID", "sip.CSeq.method"]).expect("tshark sip");
    let mut call_ids = BTreeSet::new();
    let mut messages = 0u64;
    for r in &rows {
        for id in r[0].split(',').filter(|s| !s.is_empty()) {
            call_ids.insert(id.to_owned());
        }
        messages += r
            .get(1)
            .map_or(0, |m| m.split(',').filter(|s| !s.is_empty()).count() as u64);
    }
    let cdr_ids: BTreeSet<String> = run
        .cdrs
        .iter()
        .map(|c| c["call_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(cdr_ids, call_ids, "Call-IDs: CallTap's CDRs vs tshark");
    assert!(
        messages >= 6 * run.cdrs.len() as u64,
        "tshark saw only {messages} SIP messages"
    );
    assert_eq!(
        u64_at(&run.summary, &["signalling", "sip_messages"]),
        messages,
        "SIP messages: CallTap parsed vs tshark decoded; {}",
        run.summary["signalling"]
    );
    messages
}

/// Every answered call's WAV holds, sample for sample, the reference decode of what each side
/// sent in the pair's codec, at the codec's audio rate.
fn check_recordings(run: &Run, pairs: &[(PairPlan, Variant)], packets: usize) {
    for (i, (_, v)) in pairs.iter().enumerate() {
        let [caller, callee] = reference_tones(v.codec, packets, &run.dir.join("reference"))
            .expect("reference decode");
        for cdr in calls_of(run, i as u8) {
            assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
            let codecs: Vec<&str> = cdr["codecs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert_eq!(codecs, [v.codec.name()], "pair {i}: {cdr}");
            let path = cdr["recording"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("no recording in {cdr}"));
            if let Err(e) = check_coded_recording(
                Path::new(path),
                v.codec.audio_rate(),
                &caller.pcm,
                &callee.pcm,
            ) {
                panic!("pair {i} {:?}: {e:#}", v.codec);
            }
        }
    }
}

/// (a) PCMA and G.722 calls: the SDP offers PT 8 / PT 9, sipp plays ffmpeg's encoding of the
/// lab tones, and each recording must hold ffmpeg's decoding of those same bytes (G.722 at
/// 16 kHz, though its RTP clock is 8 kHz).
#[test]
fn pcma_and_g722_calls_match_ffmpeg_and_tshark() {
    if !have("lab_variants", &["sipp", "tshark", "ffmpeg"]) {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let packets = 100;
    let pcma = Variant {
        codec: Codec::Pcma,
        ..Variant::default()
    };
    let g722 = Variant {
        codec: Codec::G722,
        ..Variant::default()
    };
    let pairs = [
        basic(3, pcma),
        basic(3, g722),
        basic(3, pcma),
        basic(3, g722),
    ];
    let run = run("variants-codecs", &pairs, packets);
    check_rtp_against_tshark(&run, &pairs, packets, true);
    check_sip_against_tshark(&run);
    assert_eq!(
        u64_at(&run.summary, &["counters", "sip"]),
        tshark::count(&run.pcap, "udp.port == 5060").expect("tshark"),
        "SIP packets: XDP counter vs tshark"
    );
    // The wire carried what the SDP offered: tshark, following each call's SDP, decodes every
    // packet of a pair as RTP of the pair's payload type.
    for (i, (plan, v)) in pairs.iter().enumerate() {
        let a = pair_addrs(i as u8);
        let of_pair = format!("ip.addr == {} && !(udp.port == 5060)", a.uas_ip);
        let typed = tshark::count(
            &run.pcap,
            &format!("{of_pair} && rtp.p_type == {}", v.codec.pt()),
        )
        .expect("tshark");
        assert_eq!(
            typed,
            2 * u64::from(plan.calls) * packets as u64,
            "pair {i}: RTP of PT {} ({:?})",
            v.codec.pt(),
            v.codec
        );
    }
    check_recordings(&run, &pairs, packets);
}

/// (b) SIP over TCP: each sipp pair keeps one TCP connection for all its calls (PCMU and
/// G.722 media), so messages of several dialogs follow each other on one stream.
#[test]
fn sip_over_tcp_calls_match_tshark() {
    if !have("lab_variants", &["sipp", "tshark", "ffmpeg"]) {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let packets = 50;
    let tcp = Variant {
        transport: Transport::Tcp,
        ..Variant::default()
    };
    let tcp_g722 = Variant {
        codec: Codec::G722,
        ..tcp
    };
    let pairs = [basic(4, tcp), basic(4, tcp), basic(3, tcp_g722)];
    let run = run("variants-tcp", &pairs, packets);
    assert!(
        tshark::count(&run.pcap, "udp.port == 5060").expect("tshark") == 0,
        "SIP went over UDP"
    );
    check_sip_against_tshark(&run);
    let segments = tshark::count(&run.pcap, "tcp.port == 5060").expect("tshark");
    assert_eq!(
        u64_at(&run.summary, &["signalling", "tcp_segments"]),
        segments,
        "TCP segments on the SIP port: CallTap vs tshark; {}",
        run.summary
    );
    check_rtp_against_tshark(&run, &pairs, packets, true);
    check_recordings(&run, &pairs, packets);
}

/// (c) INVITEs of about 3.7 KB over UDP (3 KB of padding headers): the caller's kernel sends
/// each as three IP fragments (MTU 1500); CallTap must reassemble every one, as tshark does.
#[test]
fn fragmented_invites_are_reassembled() {
    if !have("lab_variants", &["sipp", "tshark"]) {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let packets = 50;
    let big = Variant {
        invite_padding: 3000,
        ..Variant::default()
    };
    let pairs = [basic(4, big), basic(4, big), basic(4, big)];
    let run = run("variants-frag", &pairs, packets);
    let invites = tshark::count(&run.pcap, "sip.Method == \"INVITE\"").expect("tshark");
    let reassembled_invites = tshark::count(
        &run.pcap,
        "sip.Method == \"INVITE\" && ip.frag_offset > 0 && ip.flags.mf == 0",
    )
    .expect("tshark");
    assert!(invites >= 12, "tshark saw {invites} INVITEs");
    assert_eq!(
        reassembled_invites, invites,
        "every INVITE crossed the mirror as IP fragments"
    );
    let fragments =
        tshark::count(&run.pcap, "ip.flags.mf == 1 || ip.frag_offset > 0").expect("tshark");
    let last_fragments =
        tshark::count(&run.pcap, "ip.flags.mf == 0 && ip.frag_offset > 0").expect("tshark");
    assert!(
        fragments >= 3 * invites,
        "{fragments} fragments for {invites} INVITEs"
    );
    let sig = &run.summary["signalling"];
    assert_eq!(
        u64_at(sig, &["fragments"]),
        fragments,
        "fragments: CallTap vs tshark"
    );
    assert_eq!(
        u64_at(sig, &["reassembled"]),
        last_fragments,
        "datagrams reassembled: CallTap vs tshark"
    );
    check_sip_against_tshark(&run);
    // The unfragmented SIP (everything but the INVITEs) is counted by the classifier.
    assert_eq!(
        u64_at(&run.summary, &["counters", "sip"]),
        tshark::count(
            &run.pcap,
            "udp.port == 5060 && !(ip.flags.mf == 1 || ip.frag_offset > 0)"
        )
        .expect("tshark"),
        "unfragmented SIP packets: XDP counter vs tshark"
    );
    check_rtp_against_tshark(&run, &pairs, packets, true);
    check_recordings(&run, &pairs, packets);
}

/// One row of `tshark -z rtp,streams`.
#[derive(Debug)]
struct TsharkStream {
    src: String,
    packets: u64,
    lost: i64,
    min_jitter: f64,
    mean_jitter: f64,
    max_jitter: f64,
}

/// `tshark -q -z rtp,streams` of a capture, rows keyed by `ip:port` of the sender.
fn rtp_streams(pcap: &Path) -> Vec<TsharkStream> {
    let out = std::process::Command::new("tshark")
        .args([
            "-n",
            "-q",
            "-o",
            "rtp.heuristic_rtp:TRUE",
            "-z",
            "rtp,streams",
            "-r",
        ])
        .arg(pcap)
        .output()
        .expect("tshark -z rtp,streams");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Start End SrcIP SrcPort DstIP DstPort SSRC Payload Pkts Lost (Lost%) MinDelta MeanDelta
    // MaxDelta MinJitter MeanJitter MaxJitter [Problems]
    text.lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let pct = t
                .iter()
                .position(|s| s.starts_with('(') && s.ends_with("%)"))?;
            let num = |i: usize| t.get(i)?.parse::<f64>().ok();
            Some(TsharkStream {
                src: format!("{}:{}", t.get(2)?, t.get(3)?),
                packets: t.get(pct.checked_sub(2)?)?.parse().ok()?,
                lost: t.get(pct - 1)?.parse().ok()?,
                min_jitter: num(pct + 4)?,
                mean_jitter: num(pct + 5)?,
                max_jitter: num(pct + 6)?,
            })
        })
        .collect()
}

/// The RFC 3550 interarrival jitter (A.8: J += (|D| - J) / 16, 8 kHz clock) of the RTP sent
/// from `ip:port`, recomputed from tshark's capture times and the packets' RTP timestamps: the
/// value a receiver at the mirror would hold after the last packet, in ms.
fn rfc3550_jitter_ms(pcap: &Path, ip: &str, port: u16) -> f64 {
    let rows = tshark::fields(
        pcap,
        &format!("ip.src == {ip} && udp.srcport == {port}"),
        &["frame.time_epoch", "udp.payload"],
    )
    .expect("tshark");
    let mut prev: Option<(f64, u32)> = None;
    let mut j = 0.0f64;
    for r in &rows {
        let arrival = r[0].parse::<f64>().expect("frame.time_epoch") * 8000.0;
        let hex: String = r[1].chars().filter(|c| *c != ':').collect();
        let ts = hex
            .get(8..16)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .expect("RTP timestamp");
        if let Some((a, t)) = prev {
            let d = (arrival - a) - f64::from(ts.wrapping_sub(t));
            j += (d.abs() - j) / 16.0;
        }
        prev = Some((arrival, ts));
    }
    j / 8.0
}

/// (d) Quality: both sides of every call send their tone with 2 % of the packets missing and
/// each packet up to 5 ms early or late (`impaired_packets`). Per direction, the CDR's loss
/// and jitter must agree with tshark's RTP stream analysis of the mirror capture (the jitter
/// also with the RFC 3550 estimate recomputed from tshark's packet times), and the loss with
/// what was taken away.
///
/// The impairment is made by the sender, not by `tc netem loss 2% delay 20ms 5ms` on a lab
/// link: the lab's kernel (and many a CI kernel) has no `sch_netem`, and a test that cannot
/// run there proves nothing. It is the same to CallTap and tshark: packets missing from the
/// sequence, arrival times that wander. (A constant delay, netem's 20 ms, changes neither.)
/// One call per pair: tshark keys streams by addresses and SSRC, which a pair's next call
/// would reuse.
#[test]
fn quality_under_loss_and_jitter_matches_tshark_rtp_streams() {
    if !have("lab_variants", &["sipp", "tshark"]) {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let packets = 200;
    let lossy = Variant {
        impaired: true,
        ..Variant::default()
    };
    let pairs = [
        basic(1, lossy),
        basic(1, lossy),
        basic(1, lossy),
        basic(1, lossy),
        basic(1, lossy),
    ];
    let run = run("variants-quality", &pairs, packets);
    let sent = impaired_packets(packets).map(|p| p.len() as u64);
    check_sip_against_tshark(&run);
    check_rtp_against_tshark(&run, &pairs, packets, false);
    let streams = rtp_streams(&run.pcap);
    let (mut lost_total, mut jitter_seen) = (0i64, 0.0f64);
    for (i, _) in pairs.iter().enumerate() {
        let a = pair_addrs(i as u8);
        let [cdr] = calls_of(&run, i as u8)[..] else {
            panic!("pair {i}: one call expected");
        };
        for (dir, src) in [
            ("caller", format!("{UAC_IP}:{}", a.uac_media_port)),
            ("callee", format!("{}:{}", a.uas_ip, a.uas_media_port)),
        ] {
            let seen = streams
                .iter()
                .find(|s| s.src == src)
                .unwrap_or_else(|| panic!("tshark has no stream from {src}: {streams:?}"));
            let ours = cdr["streams"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["direction"] == dir))
                .unwrap_or_else(|| panic!("no {dir} stream in {cdr}"));
            let what = format!("pair {i} {dir}: CDR {ours} vs tshark {seen:?}");
            // Both count the same packets of the same capture point and both take loss as
            // RFC 3550 expected minus received: equal to each other and to what the sender
            // left out, no tolerance.
            let sent = sent[usize::from(dir == "callee")];
            assert_eq!(u64_at(ours, &["packets"]), seen.packets, "{what}");
            assert_eq!(seen.packets, sent, "{what}");
            assert_eq!(u64_at(ours, &["lost"]) as i64, seen.lost, "{what}");
            assert_eq!(seen.lost, packets as i64 - sent as i64, "{what}");
            // Jitter: both run the RFC 3550 estimator (J += (|D| - J) / 16) on arrival times;
            // the CDR gives its last value, tshark its minimum, mean and maximum over the
            // stream, from timestamps taken on m1 rather than by XDP on m0 (a few hundred
            // microseconds apart at most on a loaded host). So the CDR's value must lie within
            // tshark's range, widened by 0.5 ms for the two clocks; and near tshark's mean:
            // with a gain of 1/16 the estimate's spread around its mean is about a fifth of
            // the spread of |D| (under 1 ms for +-5 ms of jitter), so half the mean plus 1 ms
            // is well beyond chance yet catches a wrong unit, clock rate or formula.
            let j = ours["jitter_ms"].as_f64().expect("jitter_ms");
            assert!(
                j >= seen.min_jitter - 0.5 && j <= seen.max_jitter + 0.5,
                "jitter outside tshark's range; {what}"
            );
            assert!(
                (j - seen.mean_jitter).abs() <= 0.5 * seen.mean_jitter + 1.0,
                "jitter far from tshark's mean; {what}"
            );
            // The same estimator recomputed from tshark's packet times: the CDR's final value
            // must match it closely. 0.25 ms covers the two capture points (tshark on m1,
            // XDP on m0); on this lab they agree within 0.01 ms.
            let (ip, port) = src.split_once(':').expect("ip:port");
            let recomputed = rfc3550_jitter_ms(&run.pcap, ip, port.parse().expect("port"));
            assert!(
                (j - recomputed).abs() <= 0.25,
                "jitter {j} ms vs {recomputed:.3} ms recomputed from tshark's capture; {what}"
            );
            lost_total += seen.lost;
            jitter_seen = jitter_seen.max(seen.mean_jitter);
        }
    }
    // The impairment did act: otherwise the comparison above proved little.
    assert!(lost_total > 0, "no packet lost: {streams:?}");
    assert!(jitter_seen > 1.0, "no jitter: {streams:?}");
}
