//! End to end through the SPAN lab: real sipp calls cross the lab switch, `tc mirred` copies them
//! to the mirror port, CallTap captures them with XDP. tshark, on the switch side of the mirror
//! link, is the independent witness: every SIP and RTP packet it saw must have reached the
//! worker that owns its call, nothing may be dropped for a full ring, and replaying tshark's
//! capture through `calltap replay` must give the same per-call counts as the live run.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Duration, Instant},
};

use calltap_lab::{
    daemon::u64_at,
    daemon::{replay, Daemon},
    files::{read_wav, work_dir},
    netns::{MIRROR_SWITCH_IF, NS_SW, UAC_IP},
    root::{require_root, require_tool},
    sipp::{check_tone_recording, pair_addrs, place_calls, CallPlan},
    tshark, Lab,
};
use serde_json::Value;

#[test]
fn xdp_sipp_calls_through_the_mirror_reach_their_owner_worker() {
    calls_through_the_mirror("xdp");
}

/// The fallback for hosts where XDP cannot attach: the same pipeline fed by TPACKET_V3.
#[test]
fn af_packet_sipp_calls_through_the_mirror_reach_their_owner_worker() {
    calls_through_the_mirror("af_packet");
}

fn calls_through_the_mirror(source: &str) {
    if !require_root("lab_capture")
        || !require_tool("lab_capture", "sipp")
        || !require_tool("lab_capture", "tshark")
    {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir(&format!("capture-{source}"));
    let plan = CallPlan {
        pairs: 5,
        calls_per_pair: 4,
        packets: 100,
    };

    let daemon = Daemon::start(
        &dir.join("live"),
        &["--source", source, "--workers", "2"],
        &[],
    )
    .expect("calltap run");
    let capture = tshark::Capture::start(NS_SW, MIRROR_SWITCH_IF, &dir.join("mirror.pcapng"))
        .expect("tshark");
    let report = place_calls(&dir.join("sipp"), &plan).expect("sipp calls");
    assert_eq!(
        report.failed,
        0,
        "sipp reported failed calls; see {}",
        dir.display()
    );

    // Every call ended with a BYE: wait (bounded) until CallTap has written all CDRs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.cdrs().map(|c| c.len()).unwrap_or(0) < plan.total_calls() as usize
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pcap = capture.stop().expect("stop tshark");
    let cdrs = daemon.cdrs().expect("calls.jsonl");
    let summary = daemon.stop().expect("calltap stopped cleanly");

    // 1. Every call found, each with both directions complete.
    assert_eq!(cdrs.len(), plan.total_calls() as usize, "CDRs: {cdrs:#?}");
    for cdr in &cdrs {
        assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
        assert_eq!(
            u64_at(cdr, &["packets", "caller"]),
            plan.packets as u64,
            "caller packets of {}",
            cdr["call_id"]
        );
        assert_eq!(
            u64_at(cdr, &["packets", "callee"]),
            plan.packets as u64,
            "callee packets of {}",
            cdr["call_id"]
        );
    }

    // 2. SIP (INVITE, 180, 200, ACK, BYE, 200 per call, plus any retransmissions): what tshark saw on the mirror link is what CallTap classified as SIP.
    let sip_seen = tshark::count(&pcap, "udp.port == 5060").expect("tshark sip");
    assert!(
        sip_seen >= u64::from(plan.total_calls()) * 6,
        "tshark saw only {sip_seen} SIP packets"
    );
    assert_eq!(
        u64_at(&summary, &["counters", "sip"]),
        sip_seen,
        "SIP packets: XDP counter vs tshark"
    );
    assert_eq!(
        u64_at(&summary, &["signalling", "sip_packets"]),
        sip_seen,
        "SIP packets reaching the signalling worker"
    );

    // 3. RTP: per sipp pair and direction, tshark's count equals what the CDRs of that pair's
    //    calls say CallTap recorded.
    let mut rtp_total = 0;
    for i in 0..plan.pairs {
        let a = pair_addrs(i);
        let from_caller = tshark::count(
            &pcap,
            &format!("ip.src == {UAC_IP} && udp.srcport == {}", a.uac_media_port),
        )
        .expect("tshark");
        let from_callee = tshark::count(
            &pcap,
            &format!(
                "ip.src == {} && udp.srcport == {}",
                a.uas_ip, a.uas_media_port
            ),
        )
        .expect("tshark");
        let calls: Vec<&Value> = cdrs
            .iter()
            .filter(|c| c["dst_ip"] == a.uas_ip.as_str())
            .collect();
        assert_eq!(calls.len() as u32, plan.calls_per_pair, "calls of pair {i}");
        let caller: u64 = calls
            .iter()
            .map(|c| u64_at(c, &["packets", "caller"]))
            .sum();
        let callee: u64 = calls
            .iter()
            .map(|c| u64_at(c, &["packets", "callee"]))
            .sum();
        assert_eq!(
            (caller, callee),
            (from_caller, from_callee),
            "pair {i}: CallTap (caller, callee) vs tshark"
        );
        rtp_total += from_caller + from_callee;
    }
    let rtp_seen = tshark::count(&pcap, "udp && !(udp.port == 5060)").expect("tshark rtp");
    assert_eq!(rtp_seen, rtp_total, "RTP outside the calls' endpoints");
    // A call's first packets may overtake its SDP through the signalling worker; those are
    // counted as unclaimed by the classifier and handed to the owner by signalling, all of them.
    let early = u64_at(&summary, &["counters", "rtp_heuristic"]);
    assert_eq!(
        u64_at(&summary, &["counters", "rtp"]) + early,
        rtp_seen,
        "RTP packets: classifier vs tshark"
    );
    assert_eq!(
        u64_at(&summary, &["signalling", "early_media_forwarded"]),
        early,
        "{summary}"
    );
    assert_eq!(
        u64_at(&summary, &["signalling", "early_media_unclaimed"]),
        0,
        "{summary}"
    );

    // 4. Each worker received exactly the RTP of the calls it owns, none of anyone else's.
    let mut owned: BTreeMap<u64, u64> = BTreeMap::new();
    for cdr in &cdrs {
        *owned.entry(u64_at(cdr, &["worker"])).or_default() +=
            u64_at(cdr, &["packets", "caller"]) + u64_at(cdr, &["packets", "callee"]);
    }
    let workers = summary["workers"].as_array().expect("workers");
    for w in workers {
        let id = u64_at(w, &["id"]);
        assert_eq!(
            u64_at(w, &["rtp"]),
            owned.get(&id).copied().unwrap_or(0),
            "worker {id}: {w}"
        );
        assert_eq!(
            u64_at(w, &["unknown_endpoint"]),
            0,
            "worker {id} got RTP of calls it does not own: {w}"
        );
    }
    assert!(
        owned.len() > 1,
        "calls should spread over both workers: {owned:?}"
    );

    // 5. Nothing dropped for a full ring.
    assert_eq!(u64_at(&summary, &["counters", "ring_full"]), 0, "{summary}");

    // 6. Replay of the witness capture gives the same per-call counts as live capture.
    let replayed = replay(&dir.join("replay"), &[pcap.as_path()]).expect("replay");
    let live: HashMap<String, (u64, u64)> = cdrs
        .iter()
        .map(|c| {
            (
                c["call_id"].as_str().unwrap_or_default().to_owned(),
                (
                    u64_at(c, &["packets", "caller"]),
                    u64_at(c, &["packets", "callee"]),
                ),
            )
        })
        .collect();
    let offline: HashMap<String, (u64, u64)> = replayed
        .iter()
        .map(|c| {
            (
                c["call_id"].as_str().unwrap_or_default().to_owned(),
                (
                    u64_at(c, &["packets", "caller"]),
                    u64_at(c, &["packets", "callee"]),
                ),
            )
        })
        .collect();
    assert_eq!(live, offline, "per-call packet counts: live vs replay");

    // 7. Every recording holds both parties' audio, sample for sample: the caller's tone on
    //    the left channel, the callee's on the right, each exactly the G.711 decode of what
    //    was sent (decoded here by an independent decoder).
    for cdr in &cdrs {
        let path = cdr["recording"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no recording in {cdr}"));
        let (_, samples) = read_wav(Path::new(path)).unwrap_or_else(|e| panic!("{e:#}"));
        let duration_frames = u64_at(cdr, &["duration_ms"]) * 8;
        assert!(
            samples.len() as u64 / 2 + 8 >= duration_frames,
            "{path}: {} frames for a {} ms call",
            samples.len() / 2,
            cdr["duration_ms"]
        );
        if let Err(e) = check_tone_recording(Path::new(path), plan.packets) {
            panic!("{e:#}");
        }
    }
}
