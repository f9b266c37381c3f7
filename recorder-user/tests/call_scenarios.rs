//! Call scenarios other recorders get wrong, replayed from synthetic captures through the same
//! pipeline as live capture: one-way audio, no audio at all, a long hold, loss and MOS.

mod support;

use std::path::Path;

use calltap::{config::Config, daemon::replay::ReplaySummary};
use serde_json::Value;
use support::{
    calls::{constant, ip, sdp, Call, CALLEE, CALLER},
    frames::{eth, ipv4, udp},
};

/// Replays the calls and returns their CDRs as JSON (what `calltap replay --json` prints).
fn replay(name: &str, calls: &[&Call]) -> Vec<Value> {
    replay_with(name, calls, &[]).0
}

/// As [`replay`], with configuration from `env` (`CALLTAP_<SECTION>_<KEY>`), and the run's
/// summary.
fn replay_with(name: &str, calls: &[&Call], env: &[(&str, &str)]) -> (Vec<Value>, ReplaySummary) {
    let (summary, cdrs) = support::calls::replay(&format!("scenario-{name}"), calls, env);
    (cdrs, summary)
}

fn channels(cdr: &Value) -> (u32, Vec<i16>, Vec<i16>) {
    let path = cdr["recording"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording: {cdr}"));
    let mut wav = hound::WavReader::open(Path::new(path)).expect("open wav");
    let rate = wav.spec().sample_rate;
    assert_eq!(wav.spec().channels, 2);
    let s: Vec<i16> = wav
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("samples");
    (
        rate,
        s.iter().step_by(2).copied().collect(),
        s.iter().skip(1).step_by(2).copied().collect(),
    )
}

fn nonzero(ch: &[i16]) -> usize {
    ch.iter().filter(|s| **s != 0).count()
}

/// mu-law 0xA0 decodes to a loud constant; any non-zero sample in a channel comes from RTP.
const TONE: u8 = 0xA0;

#[test]
fn one_way_call_yields_a_full_length_wav_and_names_the_missing_direction() {
    let mut c = Call::new("one-way@test");
    c.invite(0, "sendrecv", false)
        .respond(100, 180, "Ringing", None)
        .respond(1000, 200, "OK", Some("sendrecv"))
        .ack(1010)
        .rtp(true, 1020, 0, 250, constant(TONE), |_| false)
        .bye(6500);
    let cdrs = replay("one-way", &[&c]);
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(
        cdr["missing_directions"],
        serde_json::json!(["callee"]),
        "{cdr}"
    );
    assert_eq!(cdr["packets"]["caller"], 250);
    assert_eq!(cdr["packets"]["callee"], 0);
    let (rate, left, right) = channels(cdr);
    assert_eq!(rate, 8000);
    // The file covers the whole call (6.5 s from the INVITE), silence where nothing came.
    assert!(
        (left.len() as i64 - 52_000).abs() <= 80,
        "{} frames",
        left.len()
    );
    assert_eq!(nonzero(&left), 250 * 160, "caller audio samples");
    assert_eq!(nonzero(&right), 0, "callee channel must be silent");
    // Audio sits where it was sent: 1.02 s into the call.
    let first = left.iter().position(|s| *s != 0).expect("audio");
    assert!(
        (first as i64 - 8160).abs() <= 16,
        "audio starts at frame {first}"
    );
}

#[test]
fn media_less_call_still_gets_a_silent_wav_of_its_length() {
    let mut c = Call::new("no-media@test");
    c.invite(0, "sendrecv", false)
        .respond(200, 200, "OK", Some("sendrecv"))
        .ack(210)
        .bye(3000);
    let cdrs = replay("no-media", &[&c]);
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(
        cdr["missing_directions"],
        serde_json::json!(["caller", "callee"]),
        "{cdr}"
    );
    let (_, left, right) = channels(cdr);
    assert!(
        (left.len() as i64 - 24_000).abs() <= 80,
        "{} frames",
        left.len()
    );
    assert_eq!(nonzero(&left) + nonzero(&right), 0);
}

#[test]
fn sixty_second_hold_and_resume_keeps_recording() {
    let mut c = Call::new("hold@test");
    c.invite(0, "sendrecv", false)
        .respond(500, 200, "OK", Some("sendrecv"))
        .ack(510)
        .rtp(true, 1000, 0, 250, constant(TONE), |_| false)
        .rtp(false, 1000, 0, 250, constant(TONE), |_| false)
        // Caller puts the callee on hold for 60 s: no RTP either way.
        .invite(6000, "sendonly", true)
        .respond(6010, 200, "OK", Some("recvonly"))
        .ack(6020)
        .invite(66_000, "sendrecv", true)
        .respond(66_010, 200, "OK", Some("sendrecv"))
        .ack(66_020)
        // The phones' RTP clocks ran on during the hold (60.1 s later = 3005 packets later).
        .rtp(true, 66_100, 250 + 3005, 250, constant(TONE), |_| false)
        .rtp(false, 66_100, 250 + 3005, 250, constant(TONE), |_| false)
        .bye(72_000);
    let cdrs = replay("hold", &[&c]);
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
    assert_eq!(cdr["packets"]["caller"], 500);
    assert_eq!(cdr["packets"]["callee"], 500);
    let (rate, left, right) = channels(cdr);
    let at = |s: f64| (s * f64::from(rate)) as usize;
    for (name, ch) in [("left", &left), ("right", &right)] {
        assert_eq!(
            nonzero(ch),
            500 * 160,
            "{name}: all audio before and after the hold"
        );
        assert_ne!(ch[at(3.0)], 0, "{name}: audio before the hold");
        assert_eq!(ch[at(30.0)], 0, "{name}: silence during the hold");
        assert_ne!(ch[at(68.0)], 0, "{name}: audio after resuming");
    }
}

#[test]
fn mos_drops_with_loss_and_lost_packets_become_silence() {
    let clean = {
        let mut c = Call::new("clean@test");
        c.invite(0, "sendrecv", false)
            .respond(100, 200, "OK", Some("sendrecv"))
            .ack(110)
            .rtp(true, 200, 0, 250, constant(TONE), |_| false)
            .rtp(false, 200, 0, 250, constant(TONE), |_| false)
            .bye(5500);
        c
    };
    let lossy = {
        let mut c = Call::new("lossy@test");
        // A different call on other endpoints would need other ports; run it later instead.
        c.invite(10_000, "sendrecv", false)
            .respond(10_100, 200, "OK", Some("sendrecv"))
            .ack(10_110)
            .rtp(true, 10_200, 0, 250, constant(TONE), |i| i % 20 == 10)
            .rtp(false, 10_200, 0, 250, constant(TONE), |_| false)
            .bye(15_500);
        c
    };
    let cdrs = replay("loss", &[&clean, &lossy]);
    assert_eq!(cdrs.len(), 2);
    let by_id = |id: &str| {
        cdrs.iter()
            .find(|c| c["call_id"] == id)
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    let caller_stream = |cdr: &Value| -> Value {
        cdr["streams"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["direction"] == "caller").cloned())
            .unwrap_or_else(|| panic!("{cdr}"))
    };
    let (clean_s, lossy_s) = (
        caller_stream(by_id("clean@test")),
        caller_stream(by_id("lossy@test")),
    );
    assert_eq!(clean_s["lost"], 0);
    assert_eq!(lossy_s["lost"], 12, "{lossy_s}");
    let (m0, m1) = (
        clean_s["mos"].as_f64().expect("mos"),
        lossy_s["mos"].as_f64().expect("mos"),
    );
    assert!(m0 >= 4.0, "clean call MOS {m0}");
    assert!(m1 < m0 - 0.3, "MOS with 4.8% loss {m1} vs clean {m0}");
    let (_, left, _) = channels(by_id("lossy@test"));
    assert_eq!(
        nonzero(&left),
        (250 - 12) * 160,
        "lost packets are silence, the rest is kept"
    );
}

/// An SBC or media server that uses one (ip, port) for several calls at once: each call must
/// still get exactly its own packets, told apart by the far end of the 5-tuple.
#[test]
fn concurrent_calls_sharing_one_endpoint_are_demultiplexed() {
    let mut calls = Vec::new();
    for (n, byte) in [(1u8, 0xA0u8), (2, 0xB0), (3, 0xC0)] {
        let mut c = Call::new(&format!("shared-{n}@test")).callee_at([198, 18, 2, n]);
        let t = u64::from(n) * 50;
        c.invite(t, "sendrecv", false)
            .respond(t + 100, 200, "OK", Some("sendrecv"))
            .ack(t + 110)
            .rtp(true, t + 200, 0, 150, constant(byte), |_| false)
            .rtp(false, t + 200, 0, 150, constant(byte + 1), |_| false)
            .bye(t + 3500);
        calls.push(c);
    }
    let cdrs = replay("shared-endpoint", &calls.iter().collect::<Vec<_>>());
    assert_eq!(cdrs.len(), 3);
    for (n, byte) in [(1u8, 0xA0u8), (2, 0xB0), (3, 0xC0)] {
        let cdr = cdrs
            .iter()
            .find(|c| c["call_id"] == format!("shared-{n}@test"))
            .expect("cdr");
        assert_eq!(cdr["packets"]["caller"], 150, "{cdr}");
        assert_eq!(cdr["packets"]["callee"], 150, "{cdr}");
        let (_, left, right) = channels(cdr);
        let want_l = calltap_media::codec::g711::ulaw_to_linear(byte);
        let want_r = calltap_media::codec::g711::ulaw_to_linear(byte + 1);
        assert!(
            left.iter().all(|s| *s == 0 || *s == want_l),
            "call {n}: foreign audio on the left"
        );
        assert!(
            right.iter().all(|s| *s == 0 || *s == want_r),
            "call {n}: foreign audio on the right"
        );
        assert_eq!(nonzero(&left), 150 * 160, "call {n}");
        assert_eq!(nonzero(&right), 150 * 160, "call {n}");
    }
}

/// Issue #14 item 5: a participant sends a BYE the other party never gets: from a third
/// address, and from its own address to an unused one only the mirror port sees. Neither ends
/// the recording; the real BYE does; the CDR lists both.
#[test]
fn spoofed_bye_does_not_end_the_recording() {
    const THIRD: [u8; 4] = [198, 18, 9, 9];
    const UNUSED: [u8; 4] = [198, 18, 9, 200];
    let mut c = Call::new("spoofed-bye@test");
    c.invite(0, "sendrecv", false)
        .respond(100, 180, "Ringing", None)
        .respond(500, 200, "OK", Some("sendrecv"))
        .ack(510)
        .rtp(true, 1000, 0, 450, constant(TONE), |_| false)
        .rtp(false, 1000, 0, 450, constant(TONE), |_| false)
        .request_from(4000, "BYE", THIRD, CALLEE)
        .request_from(5000, "BYE", CALLER, UNUSED)
        .bye(10_000);
    let cdrs = replay("spoofed-bye", &[&c]);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
    assert_eq!(cdr["duration_ms"], 10_000, "{cdr}");
    assert_eq!(cdr["packets"]["caller"], 450);
    assert_eq!(cdr["packets"]["callee"], 450);
    let rejected = cdr["rejected_requests"].as_array().expect("listed");
    assert_eq!(rejected.len(), 2, "{cdr}");
    let want = [
        (THIRD, CALLEE, 4000, "unknown_source"),
        (CALLER, UNUSED, 5000, "unknown_destination"),
    ];
    for (r, (src, dst, at_ms, reason)) in rejected.iter().zip(want) {
        assert_eq!(r["method"], "BYE");
        assert_eq!(r["src"], format!("{}:5060", ip(src)));
        assert_eq!(r["dst"], format!("{}:5060", ip(dst)));
        assert_eq!(r["at_ms"], at_ms);
        assert_eq!(r["reason"], reason);
    }
    // The audio after the spoofed BYEs is in the file, where it was sent (1 s to 10 s).
    let (_, left, right) = channels(cdr);
    assert_eq!(nonzero(&left), 450 * 160);
    assert_eq!(nonzero(&right), 450 * 160);
    assert!(left[8000 * 9..8000 * 10].iter().all(|s| *s != 0));
}

/// A call through a record-routing proxy, seen on both of its hops: the callee's BYE on the
/// far hop (callee to proxy) ends it, nothing is rejected.
#[test]
fn bye_through_a_proxy_ends_the_call() {
    const PROXY: [u8; 4] = [198, 18, 3, 1];
    let id = "proxied@test";
    // The caller's hop runs to the proxy, which also relays the media.
    let mut c = Call::new(id).callee_at(PROXY);
    let body = sdp(CALLER, 40_000, "sendrecv");
    let (a, p, b) = (ip(CALLER), ip(PROXY), ip(CALLEE));
    let far_invite = format!(
        "INVITE sip:2002@{b} SIP/2.0\r\nVia: SIP/2.0/UDP {p}:5060;branch=z9hG4bKp1\r\n\
         Via: SIP/2.0/UDP {a}:5060;branch=z9hG4bK1INVITE\r\nRecord-Route: <sip:{p};lr>\r\n\
         From: \"Alice\" <sip:1001@{a}>;tag=caller1\r\nTo: <sip:2002@{p}>\r\nCall-ID: {id}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:1001@{a}>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let far_ok = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {p}:5060;branch=z9hG4bKp1\r\n\
         Via: SIP/2.0/UDP {a}:5060;branch=z9hG4bK1INVITE\r\nRecord-Route: <sip:{p};lr>\r\n\
         From: \"Alice\" <sip:1001@{a}>;tag=caller1\r\nTo: <sip:2002@{p}>;tag=callee1\r\n\
         Call-ID: {id}\r\nCSeq: 1 INVITE\r\nContact: <sip:2002@{b}>\r\nContent-Length: 0\r\n\r\n"
    );
    let bye = |via: &str| {
        format!(
            "BYE sip:1001@{a} SIP/2.0\r\nVia: SIP/2.0/UDP {via}:5060;branch=z9hG4bKb{via}\r\n\
             From: <sip:2002@{p}>;tag=callee1\r\nTo: \"Alice\" <sip:1001@{a}>;tag=caller1\r\n\
             Call-ID: {id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    c.invite(0, "sendrecv", false)
        .sip_hop(2, PROXY, CALLEE, &far_invite)
        .sip_hop(400, CALLEE, PROXY, &far_ok)
        .respond(402, 200, "OK", Some("sendrecv"))
        .ack(410)
        .rtp(true, 500, 0, 200, constant(TONE), |_| false)
        .rtp(false, 500, 0, 200, constant(TONE), |_| false)
        .sip_hop(4600, CALLEE, PROXY, &bye(&b))
        .sip_hop(4602, PROXY, CALLER, &bye(&p));
    let cdrs = replay("proxy-bye", &[&c]);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["end_reason"], "bye_callee", "{cdr}");
    assert_eq!(cdr["duration_ms"], 4600, "{cdr}");
    assert_eq!(cdr["rejected_requests"], serde_json::json!([]), "{cdr}");
    assert_eq!(cdr["packets"]["caller"], 200);
}

/// Issue #14 attack (b), scaled: an INVITE flood (never answered, random Call-IDs) twelve
/// times `max_unanswered_calls`, with 20 ordinary calls interleaved. The flood's oldest
/// unanswered calls are evicted for newer ones (without CDRs), so every ordinary call starts,
/// rings, is answered and recorded in full.
#[test]
fn invite_flood_beyond_the_unanswered_bound_still_records_ordinary_calls() {
    const FLOODER: [u8; 4] = [198, 18, 7, 7];
    const PBX: [u8; 4] = [198, 18, 2, 200];
    const FLOOD: u64 = 12_000;
    let mut flood = Call::new("flood");
    let body = sdp(FLOODER, 30_000, "sendrecv");
    for n in 0..FLOOD {
        // 10,000 INVITEs a second for 1.2 s.
        let at_us = n * 100;
        let cid = format!("{:016x}@flood", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let text = format!(
            "INVITE sip:1{n}@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {f}:5060;branch=z9hG4bK{n}\r\n\
             From: <sip:x@{f}>;tag={n}\r\nTo: <sip:1{n}@{pbx}>\r\nCall-ID: {cid}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:x@{f}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len(),
            pbx = ip(PBX),
            f = ip(FLOODER),
        );
        let frame = eth(
            0x0800,
            &ipv4(17, FLOODER, PBX, &udp(5060, 5060, text.as_bytes())),
        );
        flood.packets.push(support::calls::Packet {
            at_ns: at_us * 1000,
            frame,
        });
    }
    let mut calls = vec![flood];
    for n in 0..20u8 {
        let mut c = Call::new(&format!("ordinary-{n}@test")).callee_at([198, 18, 2, n + 1]);
        let t = u64::from(n) * 55;
        c.invite(t, "sendrecv", false)
            .respond(t + 20, 180, "Ringing", None)
            .respond(t + 800, 200, "OK", Some("sendrecv"))
            .ack(t + 810)
            .rtp(true, t + 900, 0, 100, constant(TONE), |_| false)
            .rtp(false, t + 900, 0, 100, constant(TONE), |_| false)
            .bye(t + 3000);
        calls.push(c);
    }
    let (cdrs, summary) = replay_with(
        "invite-flood",
        &calls.iter().collect::<Vec<_>>(),
        &[
            ("CALLTAP_CALLS_MAX_CALLS", "2000"),
            ("CALLTAP_CALLS_MAX_UNANSWERED_CALLS", "1000"),
        ],
    );
    for n in 0..20u8 {
        let id = format!("ordinary-{n}@test");
        let cdr = cdrs
            .iter()
            .find(|c| c["call_id"] == id)
            .unwrap_or_else(|| panic!("{id}: no CDR"));
        assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
        assert!(cdr["answer"].is_string(), "{cdr}");
        assert_eq!(cdr["packets"]["caller"], 100, "{cdr}");
        assert_eq!(cdr["packets"]["callee"], 100, "{cdr}");
        let (_, left, right) = channels(cdr);
        assert_eq!((nonzero(&left), nonzero(&right)), (100 * 160, 100 * 160));
    }
    let b = &summary.signalling.bounds;
    // Only the flood's last (at most max_unanswered_calls) are still waiting at the end of
    // the capture; the rest were evicted, and evicted quietly: no CDR.
    let flood_cdrs = cdrs.len() - 20;
    assert!(flood_cdrs <= 1000, "{flood_cdrs} flood CDRs");
    assert_eq!(
        b.calls_evicted as usize + flood_cdrs,
        FLOOD as usize,
        "{b:?}"
    );
    assert_eq!(
        b.invites_shed_unanswered + b.invites_shed_max_calls,
        0,
        "{b:?}"
    );
    let quiet: u64 = summary.workers.iter().map(|w| w.calls_evicted).sum();
    assert_eq!(quiet, b.calls_evicted);
    assert!(cdrs
        .iter()
        .filter(|c| c["call_id"].as_str().is_some_and(|i| i.ends_with("@flood")))
        .all(|c| c["end_reason"] == "capture_end"));
}

/// Issue #14 attack (e), scaled: SIP over TCP in 1-byte segments. An ordinary call's
/// signalling arrives that way (in order) and is recorded; a second connection sends 1-byte
/// segments each after a hole, which the per-connection segment bound keeps skipping, so it
/// never holds more than its bound.
#[test]
fn sip_over_tcp_in_one_byte_segments_beside_a_connection_full_of_holes() {
    use support::{
        calls::{Packet, CALLEE_RTP, CALLER_RTP},
        frames::tcp,
    };
    const ATTACKER: [u8; 4] = [198, 18, 7, 8];
    let id = "tcp-bytes@test";
    let (a, b) = (ip(CALLER), ip(CALLEE));
    let head = |first: &str, cseq: &str, to_tag: &str| {
        format!(
            "{first}\r\nVia: SIP/2.0/TCP {a}:40001;branch=z9hG4bK{}\r\n\
             From: <sip:1001@{a}>;tag=caller1\r\nTo: <sip:2002@{b}>{to_tag}\r\nCall-ID: {id}\r\n\
             CSeq: {cseq}\r\nContact: <sip:1001@{a};transport=tcp>\r\n",
            cseq.replace(' ', "")
        )
    };
    let with_sdp = |h: String, body: String| {
        format!(
            "{h}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let no_body = |h: String| format!("{h}Content-Length: 0\r\n\r\n");
    let caller_stream = [
        with_sdp(
            head(&format!("INVITE sip:2002@{b} SIP/2.0"), "1 INVITE", ""),
            sdp(CALLER, CALLER_RTP, "sendrecv"),
        ),
        no_body(head(
            &format!("ACK sip:2002@{b} SIP/2.0"),
            "1 ACK",
            ";tag=callee1",
        )),
        no_body(head(
            &format!("BYE sip:2002@{b} SIP/2.0"),
            "2 BYE",
            ";tag=callee1",
        )),
    ];
    let ok = with_sdp(
        head("SIP/2.0 200 OK", "1 INVITE", ";tag=callee1"),
        sdp(CALLEE, CALLEE_RTP, "sendrecv"),
    );
    let mut c = Call::new(id);
    // One byte per segment, 20 us apart, from `at_ms`; returns the next sequence number.
    let bytes = |c: &mut Call, at_ms: u64, src, dst, ports: (u16, u16), seq: u32, s: &str| {
        for (i, byte) in s.bytes().enumerate() {
            let seg = tcp(ports.0, ports.1, seq + i as u32, &[byte]);
            c.packets.push(Packet {
                at_ns: at_ms * 1_000_000 + i as u64 * 20_000,
                frame: eth(0x0800, &ipv4(6, src, dst, &seg)),
            });
        }
        seq + s.len() as u32
    };
    let seq = bytes(
        &mut c,
        0,
        CALLER,
        CALLEE,
        (40001, 5060),
        1,
        &caller_stream[0],
    );
    bytes(&mut c, 100, CALLEE, CALLER, (5060, 40001), 1, &ok);
    let seq = bytes(
        &mut c,
        200,
        CALLER,
        CALLEE,
        (40001, 5060),
        seq,
        &caller_stream[1],
    );
    c.rtp(true, 300, 0, 150, constant(TONE), |_| false).rtp(
        false,
        300,
        0,
        150,
        constant(TONE),
        |_| false,
    );
    bytes(
        &mut c,
        3400,
        CALLER,
        CALLEE,
        (40001, 5060),
        seq,
        &caller_stream[2],
    );
    // The other connection: 20,000 one-byte segments over 3 s, a hole before each.
    let mut holes = Call::new("holes");
    for i in 0..20_000u32 {
        let seg = tcp(40002, 5060, 1 + 2 * i, b"I");
        holes.packets.push(Packet {
            at_ns: 50_000_000 + u64::from(i) * 150_000,
            frame: eth(0x0800, &ipv4(6, ATTACKER, CALLEE, &seg)),
        });
    }
    let (cdrs, summary) = replay_with("tcp-one-byte", &[&c, &holes], &[]);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
    assert_eq!(cdr["packets"]["caller"], 150, "{cdr}");
    assert_eq!(cdr["packets"]["callee"], 150, "{cdr}");
    let b = &summary.signalling.bounds;
    let per_flow = Config::load_with_env(None, &[])
        .expect("defaults")
        .reassembly
        .tcp
        .max_segments_per_flow;
    // The first segment starts the stream (no SYN seen); every later one past the bound made
    // the connection skip its oldest hole.
    assert!(b.tcp_gaps_skipped >= 20_000 - 1 - per_flow as u64, "{b:?}");
    assert!(b.tcp_held_segments <= per_flow as u64, "{b:?}");
}

/// The per-call lists a CDR carries are bounded: 300 SIP INFO digits and 40 spoofed BYEs keep
/// the first 256 digits and 32 requests, and count the rest.
#[test]
fn per_call_lists_are_bounded_and_count_the_rest() {
    const THIRD: [u8; 4] = [198, 18, 9, 9];
    let mut c = Call::new("lists@test");
    c.invite(0, "sendrecv", false)
        .respond(100, 200, "OK", Some("sendrecv"))
        .ack(110);
    for i in 0..300u64 {
        let digit = Some(("application/dtmf-relay", "Signal=5\r\nDuration=100\r\n"));
        c.request_with(200 + i * 10, "INFO", (CALLER, CALLEE), digit);
    }
    for i in 0..40u64 {
        c.request_from(4000 + i * 10, "BYE", THIRD, CALLEE);
    }
    c.bye(5000);
    let (cdrs, summary) = replay_with("lists", &[&c], &[]);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
    assert_eq!(cdr["dtmf"].as_array().map(Vec::len), Some(256));
    assert_eq!(cdr["dtmf_omitted"], 44);
    assert_eq!(cdr["rejected_requests"].as_array().map(Vec::len), Some(32));
    assert_eq!(cdr["rejected_requests_omitted"], 8);
    let omitted = |f: fn(&calltap::pipeline::media::WorkerStats) -> u64| -> u64 {
        summary.workers.iter().map(f).sum()
    };
    assert_eq!(omitted(|w| w.dtmf_omitted), 44);
    assert_eq!(omitted(|w| w.rejected_requests_omitted), 8);
    assert_eq!(summary.signalling.bounds.requests_rejected, 40);
}
