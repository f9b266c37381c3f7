//! Call scenarios other recorders get wrong, replayed from synthetic captures through the same
//! pipeline as live capture: one-way audio, no audio at all, a long hold, loss and MOS.

mod support;

use std::path::Path;

use serde_json::Value;
use support::calls::{constant, Call};

/// Replays the calls and returns their CDRs as JSON (what `calltap replay --json` prints).
fn replay(name: &str, calls: &[&Call]) -> Vec<Value> {
    support::calls::replay(&format!("scenario-{name}"), calls, &[]).1
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
