//! Tracker scenarios built from literal SIP text, as a capture would deliver them.

use std::net::SocketAddr;

use super::*;
use crate::parse_datagram;

const A: &str = "10.0.0.1:5060";
const B: &str = "10.0.0.2:5060";
const SEC: u64 = 1_000_000_000;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn sdp(ip: &str, port: u16, extra: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{extra}"
    )
}

/// A message of dialog `cid` with the given From/To tags.
struct Msg<'a> {
    start: String,
    cid: &'a str,
    from_tag: &'a str,
    to_tag: Option<&'a str>,
    cseq: &'a str,
    extra: &'a str,
    body: Option<(&'a str, String)>,
}

impl<'a> Msg<'a> {
    fn new(start: &str, cseq: &'a str) -> Self {
        Msg {
            start: start.to_string(),
            cid: "call-1@a",
            from_tag: "ta",
            to_tag: None,
            cseq,
            extra: "",
            body: None,
        }
    }
    fn to(mut self, tag: &'a str) -> Self {
        self.to_tag = Some(tag);
        self
    }
    fn from(mut self, tag: &'a str) -> Self {
        self.from_tag = tag;
        self
    }
    fn sdp(mut self, body: String) -> Self {
        self.body = Some(("application/sdp", body));
        self
    }
    fn body(mut self, ct: &'a str, body: &str) -> Self {
        self.body = Some((ct, body.to_string()));
        self
    }
    fn extra(mut self, extra: &'a str) -> Self {
        self.extra = extra;
        self
    }
    fn build(&self) -> crate::Message {
        let to_tag = self.to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let (ct, body) = match &self.body {
            Some((ct, b)) => (format!("Content-Type: {ct}\r\n"), b.clone()),
            None => (String::new(), String::new()),
        };
        let raw = format!(
            "{}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: \"Alice\" <sip:alice@a.example>;tag={}\r\nTo: <sip:bob@b.example>{to_tag}\r\n\
             Call-ID: {}\r\nCSeq: {}\r\n{}{ct}Content-Length: {}\r\n\r\n{body}",
            self.start,
            self.from_tag,
            self.cid,
            self.cseq,
            self.extra,
            body.len()
        );
        parse_datagram(raw.as_bytes()).expect("test message parses")
    }
}

fn invite() -> Msg<'static> {
    Msg::new("INVITE sip:bob@b.example SIP/2.0", "1 INVITE").sdp(sdp("10.0.0.1", 4000, ""))
}

fn resp(code: u16, cseq: &'static str) -> Msg<'static> {
    Msg::new(&format!("SIP/2.0 {code} X"), cseq)
}

struct Harness {
    t: Tracker,
    out: Vec<CallEvent>,
}

impl Harness {
    fn new(cfg: TrackerConfig) -> Self {
        Harness {
            t: Tracker::new(cfg),
            out: Vec::new(),
        }
    }
    /// Message from the caller (A) to the callee (B) at `s` seconds.
    fn ab(&mut self, m: Msg<'_>, s: u64) -> Vec<CallEvent> {
        self.t
            .on_message(&m.build(), sa(A), sa(B), s * SEC, &mut self.out);
        std::mem::take(&mut self.out)
    }
    fn ba(&mut self, m: Msg<'_>, s: u64) -> Vec<CallEvent> {
        self.t
            .on_message(&m.build(), sa(B), sa(A), s * SEC, &mut self.out);
        std::mem::take(&mut self.out)
    }
    fn tick(&mut self, s: u64) -> Vec<CallEvent> {
        self.t.on_tick(s * SEC, &mut self.out);
        std::mem::take(&mut self.out)
    }
}

fn kinds(evs: &[CallEvent]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            CallEvent::Started { .. } => "started".to_string(),
            CallEvent::Media {
                side, direction, ..
            } => format!("media_{}_{}", side.as_str(), direction.as_str()),
            CallEvent::Ringing { .. } => "ringing".to_string(),
            CallEvent::Answered { .. } => "answered".to_string(),
            CallEvent::Dtmf { digit, .. } => format!("dtmf_{digit}"),
            CallEvent::Rejected { rejection: r, .. } => format!(
                "rejected_{}_{}",
                r.method.to_ascii_lowercase(),
                r.reason.as_str()
            ),
            CallEvent::Ended { reason, .. } => format!("ended_{}", reason.as_str()),
        })
        .collect()
}

#[test]
fn basic_call_in_order() {
    let mut h = Harness::new(TrackerConfig::default());
    let ev = h.ab(invite(), 0);
    assert_eq!(kinds(&ev), ["started", "media_caller_sendrecv"]);
    let CallEvent::Started {
        call,
        call_id,
        interaction,
        from,
        to,
        caller_ip,
        callee_ip,
        ts_ns,
    } = &ev[0]
    else {
        panic!("not started: {ev:?}");
    };
    assert_eq!(call_id, "call-1@a");
    assert_eq!(interaction, "call-1@a");
    assert_eq!(from.user.as_deref(), Some("alice"));
    assert_eq!(from.display.as_deref(), Some("Alice"));
    assert_eq!(to.user.as_deref(), Some("bob"));
    assert_eq!((*caller_ip, *callee_ip), (sa(A).ip(), sa(B).ip()));
    assert_eq!(*ts_ns, 0);
    let call = *call;
    match &ev[1] {
        CallEvent::Media {
            rtp, rtcp, codecs, ..
        } => {
            assert_eq!(*rtp, Some(sa("10.0.0.1:4000")));
            assert_eq!(*rtcp, Some(sa("10.0.0.1:4001")));
            assert_eq!(codecs.len(), 2);
        }
        other => panic!("not media: {other:?}"),
    }
    assert!(h.ba(resp(100, "1 INVITE"), 0).is_empty());
    assert_eq!(kinds(&h.ba(resp(180, "1 INVITE").to("tb"), 1)), ["ringing"]);
    let ev = h.ba(
        resp(200, "1 INVITE")
            .to("tb")
            .sdp(sdp("10.0.0.2", 6000, "")),
        3,
    );
    assert_eq!(kinds(&ev), ["answered", "media_callee_sendrecv"]);
    assert!(matches!(ev[1], CallEvent::Media { rtp: Some(a), .. } if a == sa("10.0.0.2:6000")));
    assert!(h
        .ab(
            Msg::new("ACK sip:bob@10.0.0.2 SIP/2.0", "1 ACK").to("tb"),
            3
        )
        .is_empty());
    let ev = h.ab(
        Msg::new("BYE sip:bob@10.0.0.2 SIP/2.0", "2 BYE").to("tb"),
        10,
    );
    assert_eq!(
        ev,
        [CallEvent::Ended {
            call,
            reason: EndReason::Bye(Side::Caller),
            ts_ns: 10 * SEC
        }]
    );
    // Retransmitted BYE and its 200 are absorbed while the call lingers.
    assert!(h
        .ab(
            Msg::new("BYE sip:bob@10.0.0.2 SIP/2.0", "2 BYE").to("tb"),
            10
        )
        .is_empty());
    assert!(h.ba(resp(200, "2 BYE").to("tb"), 10).is_empty());
    let s = h.t.stats();
    assert_eq!((s.calls_started, s.calls_ended, s.active_calls), (1, 1, 0));
    assert_eq!(s.lingering_calls, 1);
    assert!(h.tick(100).is_empty());
    assert_eq!(h.t.stats().lingering_calls, 0);
}

#[test]
fn bye_by_callee() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(resp(200, "1 INVITE").to("tb"), 1);
    let bye = Msg::new("BYE sip:alice@10.0.0.1 SIP/2.0", "7 BYE")
        .from("tb")
        .to("ta");
    assert_eq!(kinds(&h.ba(bye, 5)), ["ended_bye_callee"]);
}

#[test]
fn auth_retry_is_the_same_call() {
    let mut h = Harness::new(TrackerConfig::default());
    assert_eq!(
        kinds(&h.ab(invite(), 0)),
        ["started", "media_caller_sendrecv"]
    );
    assert!(h.ba(resp(407, "1 INVITE").to("px"), 0).is_empty());
    assert!(h
        .ab(
            Msg::new("ACK sip:bob@b.example SIP/2.0", "1 ACK").to("px"),
            0
        )
        .is_empty());
    let retry = Msg::new("INVITE sip:bob@b.example SIP/2.0", "2 INVITE")
        .sdp(sdp("10.0.0.1", 4000, ""))
        .extra("Proxy-Authorization: Digest username=\"alice\"\r\n");
    assert!(h.ab(retry, 1).is_empty(), "same SDP, same call");
    assert_eq!(
        kinds(&h.ba(resp(200, "2 INVITE").to("tb"), 2)),
        ["answered"]
    );
    assert_eq!(h.t.stats().calls_started, 1);
}

#[test]
fn busy_failure() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(resp(180, "1 INVITE").to("tb"), 1);
    assert_eq!(
        kinds(&h.ba(resp(486, "1 INVITE").to("tb"), 2)),
        ["ended_failure_486"]
    );
    assert!(h.ba(resp(486, "1 INVITE").to("tb"), 2).is_empty());
    assert!(h
        .ab(
            Msg::new("ACK sip:bob@b.example SIP/2.0", "1 ACK").to("tb"),
            2
        )
        .is_empty());
}

#[test]
fn cancel_then_487() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(resp(180, "1 INVITE").to("tb"), 1);
    assert!(h
        .ab(Msg::new("CANCEL sip:bob@b.example SIP/2.0", "1 CANCEL"), 4)
        .is_empty());
    assert!(h.ba(resp(200, "1 CANCEL"), 4).is_empty());
    assert_eq!(
        kinds(&h.ba(resp(487, "1 INVITE").to("tb"), 4)),
        ["ended_cancel"]
    );
    assert!(h.tick(20).is_empty());
}

#[test]
fn cancel_without_487_ends_after_grace() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ab(Msg::new("CANCEL sip:bob@b.example SIP/2.0", "1 CANCEL"), 2);
    assert!(h.tick(3).is_empty());
    let ev = h.tick(10);
    assert_eq!(kinds(&ev), ["ended_cancel"]);
    assert!(matches!(ev[0], CallEvent::Ended { ts_ns, .. } if ts_ns == 2 * SEC));
}

#[test]
fn reinvite_hold_and_resume() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(
        resp(200, "1 INVITE")
            .to("tb")
            .sdp(sdp("10.0.0.2", 6000, "")),
        1,
    );
    let hold = Msg::new("INVITE sip:bob@10.0.0.2 SIP/2.0", "2 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.1", 4000, "a=sendonly\r\n"));
    assert_eq!(kinds(&h.ab(hold, 10)), ["media_caller_sendonly"]);
    let held = resp(200, "2 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.2", 6000, "a=recvonly\r\n"));
    assert_eq!(kinds(&h.ba(held, 10)), ["media_callee_recvonly"]);
    let resume = Msg::new("INVITE sip:bob@10.0.0.2 SIP/2.0", "3 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.1", 4000, ""));
    assert_eq!(kinds(&h.ab(resume, 20)), ["media_caller_sendrecv"]);
    // A failed re-INVITE does not end the call.
    assert!(h.ba(resp(488, "3 INVITE").to("tb"), 20).is_empty());
    // Callee-initiated re-INVITE with old-style 0.0.0.0 hold.
    let hold = Msg::new("INVITE sip:alice@10.0.0.1 SIP/2.0", "1 INVITE")
        .from("tb")
        .to("ta")
        .sdp(sdp("0.0.0.0", 6000, ""));
    let ev = h.ba(hold, 30);
    assert_eq!(kinds(&ev), ["media_callee_sendonly"]);
    assert!(matches!(ev[0], CallEvent::Media { rtp: None, .. }));
    // Its 200 is the caller's SDP, even though CSeq 1 INVITE equals the initial one.
    let ok = resp(200, "1 INVITE")
        .from("tb")
        .to("ta")
        .sdp(sdp("10.0.0.1", 4002, "a=recvonly\r\n"));
    assert_eq!(kinds(&h.ab(ok, 30)), ["media_caller_recvonly"]);
}

#[test]
fn forked_early_dialogs() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    let ev = h.ba(
        resp(183, "1 INVITE")
            .to("fork1")
            .sdp(sdp("10.0.0.3", 7000, "")),
        1,
    );
    assert_eq!(kinds(&ev), ["ringing", "media_callee_sendrecv"]);
    let ev = h.ba(resp(180, "1 INVITE").to("fork2"), 1);
    assert!(ev.is_empty(), "ringing once: {ev:?}");
    // Fork 1 is busy, fork 2 still rings: not the end.
    assert!(h.ba(resp(486, "1 INVITE").to("fork1"), 2).is_empty());
    let ev = h.ba(
        resp(200, "1 INVITE")
            .to("fork2")
            .sdp(sdp("10.0.0.4", 8000, "")),
        3,
    );
    assert_eq!(kinds(&ev), ["answered", "media_callee_sendrecv"]);
    assert!(h.tick(60).is_empty());
    // Both forks failing ends the call with the first real failure.
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(resp(180, "1 INVITE").to("f1"), 1);
    h.ba(resp(180, "1 INVITE").to("f2"), 1);
    assert!(h.ba(resp(486, "1 INVITE").to("f1"), 2).is_empty());
    assert_eq!(
        kinds(&h.ba(resp(480, "1 INVITE").to("f2"), 3)),
        ["ended_failure_486"]
    );
    // A fork that never finishes: the pending failure is reported after the grace period.
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(resp(180, "1 INVITE").to("f1"), 1);
    h.ba(resp(180, "1 INVITE").to("f2"), 1);
    h.ba(resp(603, "1 INVITE").to("f1"), 2);
    let ev = h.tick(10);
    assert_eq!(kinds(&ev), ["ended_failure_603"]);
}

#[test]
fn invite_retransmission_starts_once() {
    let mut h = Harness::new(TrackerConfig::default());
    assert_eq!(h.ab(invite(), 0).len(), 2);
    assert!(h.ab(invite(), 0).is_empty());
    // The same INVITE forwarded by a proxy (other addresses) is not a new call either.
    let mut out = Vec::new();
    h.t.on_message(&invite().build(), sa(B), sa("10.0.0.9:5060"), SEC, &mut out);
    assert!(out.is_empty());
    assert_eq!(h.t.stats().calls_started, 1);
    assert_eq!(h.t.stats().retransmissions, 2);
    // Another Call-ID is another call.
    let mut other = invite();
    other.cid = "call-2@a";
    assert_eq!(kinds(&h.ab(other, 2))[0], "started");
    assert_eq!(h.t.active_calls(), 2);
}

#[test]
fn info_dtmf() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(resp(200, "1 INVITE").to("tb"), 1);
    let info = Msg::new("INFO sip:bob@10.0.0.2 SIP/2.0", "2 INFO")
        .to("tb")
        .body("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n");
    let ev = h.ab(info, 5);
    assert!(matches!(
        ev.as_slice(),
        [CallEvent::Dtmf {
            side: Side::Caller,
            digit: '5',
            duration_ms: Some(160),
            ..
        }]
    ));
    let info = Msg::new("INFO sip:alice@10.0.0.1 SIP/2.0", "5 INFO")
        .from("tb")
        .to("ta")
        .body("application/dtmf", "#");
    let ev = h.ba(info, 6);
    assert!(matches!(
        ev.as_slice(),
        [CallEvent::Dtmf {
            side: Side::Callee,
            digit: '#',
            duration_ms: None,
            ..
        }]
    ));
}

#[test]
fn ticks_max_duration_and_unanswered() {
    let cfg = TrackerConfig {
        max_call_duration_ns: 100 * SEC,
        unanswered_timeout_ns: 30 * SEC,
        ..TrackerConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.ab(invite(), 0);
    h.ba(resp(200, "1 INVITE").to("tb"), 1);
    let mut other = invite();
    other.cid = "call-2@a";
    h.ab(other, 5);
    assert!(h.tick(30).is_empty());
    let ev = h.tick(35);
    assert_eq!(kinds(&ev), ["ended_unanswered"]);
    assert_eq!(ev[0].call(), CallRef(2));
    assert!(h.tick(99).is_empty());
    let ev = h.tick(100);
    assert_eq!(kinds(&ev), ["ended_max_duration"]);
    assert_eq!(ev[0].call(), CallRef(1));
    assert!(h.tick(101).is_empty());
}

#[test]
fn late_offer_in_ack_and_external_end() {
    let mut h = Harness::new(TrackerConfig::default());
    let no_sdp = Msg::new("INVITE sip:bob@b.example SIP/2.0", "1 INVITE");
    let ev = h.ab(no_sdp, 0);
    assert_eq!(kinds(&ev), ["started"]);
    let call = ev[0].call();
    let ev = h.ba(
        resp(200, "1 INVITE")
            .to("tb")
            .sdp(sdp("10.0.0.2", 6000, "")),
        1,
    );
    assert_eq!(kinds(&ev), ["answered", "media_callee_sendrecv"]);
    let ack = Msg::new("ACK sip:bob@10.0.0.2 SIP/2.0", "1 ACK")
        .to("tb")
        .sdp(sdp("10.0.0.1", 4000, "a=rtcp-mux\r\n"));
    let ev = h.ab(ack, 1);
    assert!(matches!(
        ev.as_slice(),
        [CallEvent::Media { side: Side::Caller, rtp: Some(r), rtcp: Some(c), .. }] if r == c
    ));
    let mut out = Vec::new();
    h.t.end_call(call, EndReason::MediaTimeout, 9 * SEC, &mut out);
    assert_eq!(kinds(&out), ["ended_media_timeout"]);
    out.clear();
    h.t.end_call(call, EndReason::MediaTimeout, 9 * SEC, &mut out);
    assert!(out.is_empty());
}

#[test]
fn correlation_header_and_limits() {
    let cfg = TrackerConfig {
        correlation_header: Some("X-CID".into()),
        max_calls: 1,
        ..TrackerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let ev = h.ab(invite().extra("x-cid:  interaction-42 \r\n"), 0);
    assert!(
        matches!(&ev[0], CallEvent::Started { interaction, .. } if interaction == "interaction-42")
    );
    let mut other = invite();
    other.cid = "call-2@a";
    assert!(h.ab(other, 1).is_empty(), "over max_calls");
    assert_eq!(h.t.stats().calls_dropped, 1);
    // Orphans: in-dialog traffic of unknown calls.
    let mut bye = Msg::new("BYE sip:x@y SIP/2.0", "9 BYE").to("zz");
    bye.cid = "unknown";
    assert!(h.ab(bye, 2).is_empty());
    assert_eq!(h.t.stats().orphans, 1);
}

#[test]
fn end_reason_names() {
    assert_eq!(EndReason::Bye(Side::Caller).as_str(), "bye_caller");
    assert_eq!(EndReason::Bye(Side::Callee).as_str(), "bye_callee");
    assert_eq!(EndReason::Failure(486).as_str(), "failure_486");
    assert_eq!(EndReason::RecorderRestart.to_string(), "recorder_restart");
}

/// A dialog snapshotted by one tracker and restored into a fresh one (a recorder restart)
/// matches the later re-INVITE and BYE in both directions; a repeated SDP is not a change.
#[test]
fn restored_dialog_goes_on() {
    let mut h = Harness::new(TrackerConfig::default());
    h.t.track_touched();
    let started = h.ab(invite(), 0);
    let CallEvent::Started { call, .. } = started[0] else {
        panic!("no start: {started:?}");
    };
    h.ba(
        resp(200, "1 INVITE")
            .to("tb")
            .sdp(sdp("10.0.0.2", 6000, "")),
        1,
    );
    let mut touched = Vec::new();
    h.t.take_touched(&mut touched);
    assert!(touched.contains(&call));
    let state = h.t.snapshot(call).expect("active call");
    assert!(state.answered);
    assert_eq!(state.caller_tag, "ta");
    assert_eq!(
        state.media[1].as_ref().and_then(|m| m.rtp),
        Some(sa("10.0.0.2:6000"))
    );

    let mut h2 = Harness::new(TrackerConfig::default());
    let restored = h2.t.restore(&state, 30 * SEC).expect("restored");
    assert_eq!(h2.t.active_calls(), 1);
    assert_eq!(h2.t.snapshot(restored).as_ref(), Some(&state));
    // The same SDP again (a session refresh) changes nothing; a hold does.
    let refresh = Msg::new("INVITE sip:bob@10.0.0.2 SIP/2.0", "2 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.1", 4000, ""));
    assert!(h2.ab(refresh, 31).is_empty());
    let hold = Msg::new("INVITE sip:bob@10.0.0.2 SIP/2.0", "3 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.1", 4000, "a=sendonly\r\n"));
    assert_eq!(kinds(&h2.ab(hold, 32)), ["media_caller_sendonly"]);
    let bye = Msg::new("BYE sip:alice@10.0.0.1 SIP/2.0", "7 BYE")
        .from("tb")
        .to("ta");
    let ev = h2.ba(bye, 40);
    assert_eq!(kinds(&ev), ["ended_bye_callee"]);
    assert_eq!(ev[0].call(), restored);
    assert!(h2.t.snapshot(restored).is_none());
}

/// Sends `m` from `src` to `dst` at `s` seconds.
fn hop(h: &mut Harness, m: Msg<'_>, src: &str, dst: &str, s: u64) -> Vec<CallEvent> {
    h.t.on_message(&m.build(), sa(src), sa(dst), s * SEC, &mut h.out);
    std::mem::take(&mut h.out)
}

/// An answered call between A and B.
fn answered_call() -> Harness {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    let ok = resp(200, "1 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.2", 6000, ""))
        .extra("Contact: <sip:bob@10.0.0.2:5060>\r\n");
    assert_eq!(kinds(&h.ba(ok, 1)), ["answered", "media_callee_sendrecv"]);
    h
}

/// Issue #14 item 5: in-dialog requests from a third address, or sent to an address that is
/// not on the dialog's path (only the mirror sees them), neither end the call nor move its
/// media; each is reported once; the real BYE still ends the call.
#[test]
fn spoofed_in_dialog_requests_are_rejected() {
    let mut h = answered_call();
    let third = "10.0.0.66:5060";
    let unused = "10.0.0.77:5060";
    let bye = || Msg::new("BYE sip:bob@10.0.0.2 SIP/2.0", "2 BYE").to("tb");
    assert_eq!(
        kinds(&hop(&mut h, bye(), third, B, 5)),
        ["rejected_bye_unknown_source"]
    );
    // From the caller's own address, but to an address no message of the dialog showed.
    let ev = hop(&mut h, bye(), A, unused, 6);
    let want = Rejection {
        method: "BYE".into(),
        src: sa(A),
        dst: sa(unused),
        reason: RejectReason::UnknownDestination,
        ts_ns: 6 * SEC,
    };
    assert!(
        matches!(&ev[..], [CallEvent::Rejected { rejection, .. }] if *rejection == want),
        "{ev:?}"
    );
    // The callee's tags from a third address, to the caller.
    let callee_bye = Msg::new("BYE sip:alice@10.0.0.1 SIP/2.0", "9 BYE")
        .from("tb")
        .to("ta");
    assert_eq!(
        kinds(&hop(&mut h, callee_bye, third, A, 7)),
        ["rejected_bye_unknown_source"]
    );
    // A re-INVITE moving the caller's media, an UPDATE, SIP INFO DTMF and a late CANCEL.
    let reinvite = Msg::new("INVITE sip:bob@10.0.0.2 SIP/2.0", "3 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.66", 9000, ""));
    assert_eq!(
        kinds(&hop(&mut h, reinvite, third, B, 8)),
        ["rejected_invite_unknown_source"]
    );
    let update = Msg::new("UPDATE sip:bob@10.0.0.2 SIP/2.0", "4 UPDATE")
        .to("tb")
        .sdp(sdp("10.0.0.66", 9002, "a=sendonly\r\n"));
    assert_eq!(
        kinds(&hop(&mut h, update, A, unused, 8)),
        ["rejected_update_unknown_destination"]
    );
    let info = Msg::new("INFO sip:bob@10.0.0.2 SIP/2.0", "5 INFO")
        .to("tb")
        .body("application/dtmf-relay", "Signal=7\r\nDuration=160\r\n");
    assert_eq!(
        kinds(&hop(&mut h, info, third, B, 9)),
        ["rejected_info_unknown_source"]
    );
    // A bare ACK changes nothing: not checked, not reported.
    let ack = Msg::new("ACK sip:bob@10.0.0.2 SIP/2.0", "1 ACK").to("tb");
    assert!(hop(&mut h, ack, third, B, 9).is_empty());
    assert_eq!(h.t.stats().requests_rejected, 6);
    assert_eq!(h.t.active_calls(), 1);
    // The call is as it was: the same SDP from the caller is still no change.
    let refresh = Msg::new("INVITE sip:bob@10.0.0.2 SIP/2.0", "6 INVITE")
        .to("tb")
        .sdp(sdp("10.0.0.1", 4000, ""));
    assert!(h.ab(refresh, 10).is_empty());
    assert_eq!(kinds(&h.ab(bye(), 20)), ["ended_bye_caller"]);
}

/// A CANCEL from a third address does not cancel a ringing call.
#[test]
fn spoofed_cancel_is_rejected() {
    let mut h = Harness::new(TrackerConfig::default());
    h.ab(invite(), 0);
    h.ba(resp(180, "1 INVITE").to("tb"), 1);
    let cancel = Msg::new("CANCEL sip:bob@b.example SIP/2.0", "1 CANCEL");
    assert_eq!(
        kinds(&hop(&mut h, cancel, "10.0.0.66:5060", B, 2)),
        ["rejected_cancel_unknown_source"]
    );
    assert!(h.tick(30).is_empty(), "no cancel pending");
    let ok = resp(200, "1 INVITE").to("tb");
    assert_eq!(kinds(&h.ba(ok, 31)), ["answered"]);
}

/// Through a record-routing proxy P: the mirror sees both hops of the INVITE and of its
/// answer; BYEs from either side, on either hop, end the call, and so does a BYE the callee
/// sends straight to the caller when the proxy does not stay in the path.
#[test]
fn in_dialog_requests_through_a_proxy_are_accepted() {
    const P: &str = "10.0.0.5:5060";
    let proxied = |h: &mut Harness| {
        let ev = hop(h, invite(), A, P, 0);
        assert_eq!(kinds(&ev)[0], "started");
        // The proxy forwards it (its Via on top) to the callee: a copy, not a new call.
        let fwd = invite().extra("Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKp1\r\n");
        assert!(hop(h, fwd, P, B, 0).is_empty());
        let ok = || {
            resp(200, "1 INVITE")
                .to("tb")
                .extra("Record-Route: <sip:10.0.0.5;lr>\r\nContact: <sip:bob@10.0.0.2>\r\n")
        };
        assert_eq!(kinds(&hop(h, ok(), B, P, 1)), ["answered"]);
        assert!(hop(h, ok(), P, A, 1).is_empty());
    };
    let callee_bye = || {
        Msg::new("BYE sip:alice@10.0.0.1 SIP/2.0", "7 BYE")
            .from("tb")
            .to("ta")
    };
    let caller_bye = || Msg::new("BYE sip:bob@10.0.0.2 SIP/2.0", "2 BYE").to("tb");
    for (bye, src, dst, end) in [
        (callee_bye(), B, P, "ended_bye_callee"),
        (callee_bye(), P, A, "ended_bye_callee"),
        (caller_bye(), A, P, "ended_bye_caller"),
        (caller_bye(), P, B, "ended_bye_caller"),
    ] {
        let mut h = Harness::new(TrackerConfig::default());
        proxied(&mut h);
        assert_eq!(
            kinds(&hop(&mut h, bye, src, dst, 10)),
            [end],
            "{src} -> {dst}"
        );
    }

    // The mirror sees only the caller's hop, and the proxy does not record-route: the callee's
    // BYE goes straight to the caller, from the address its Contact gave.
    let mut h = Harness::new(TrackerConfig::default());
    hop(&mut h, invite(), A, P, 0);
    let ok = resp(200, "1 INVITE")
        .to("tb")
        .extra("Contact: <sip:bob@10.0.0.2>\r\n");
    assert_eq!(kinds(&hop(&mut h, ok, P, A, 1)), ["answered"]);
    assert_eq!(
        kinds(&hop(&mut h, callee_bye(), B, A, 10)),
        ["ended_bye_callee"]
    );
    assert_eq!(h.t.stats().requests_rejected, 0);
}

/// A BYE along a path the dialog never showed (a proxy failing over to its twin) is rejected
/// at first, but the other party's 2xx from the dialog's path shows it was real: the call ends
/// at the BYE. A 2xx from elsewhere, or to elsewhere, does not.
#[test]
fn a_rejected_bye_the_other_party_accepts_ends_the_call() {
    const TWIN: &str = "10.0.0.6:5060";
    let mut h = answered_call();
    let bye = Msg::new("BYE sip:alice@10.0.0.1 SIP/2.0", "7 BYE")
        .from("tb")
        .to("ta");
    assert_eq!(
        kinds(&hop(&mut h, bye, TWIN, A, 10)),
        ["rejected_bye_unknown_source"]
    );
    let ok = || resp(200, "7 BYE").from("tb").to("ta");
    assert!(hop(&mut h, ok(), "10.0.0.66:5060", TWIN, 10).is_empty());
    assert!(hop(&mut h, ok(), A, "10.0.0.66:5060", 10).is_empty());
    let ev = hop(&mut h, ok(), A, TWIN, 11);
    assert!(
        matches!(&ev[..], [CallEvent::Ended { reason: EndReason::Bye(Side::Callee), ts_ns, .. }] if *ts_ns == 10 * SEC),
        "{ev:?}"
    );
    assert_eq!(h.t.stats().byes_confirmed, 1);
}

/// The path survives a restart (journal), and a journal without one checks nothing.
#[test]
fn restored_dialog_keeps_its_path() {
    let h = answered_call();
    let state = h.t.snapshot(CallRef(1)).expect("active");
    assert!(state.path.knows(sa(A).ip()) && state.path.knows(sa(B).ip()));
    let mut h2 = Harness::new(TrackerConfig::default());
    h2.t.restore(&state, 30 * SEC).expect("restored");
    let bye = || Msg::new("BYE sip:bob@10.0.0.2 SIP/2.0", "2 BYE").to("tb");
    assert_eq!(
        kinds(&hop(&mut h2, bye(), "10.0.0.66:5060", B, 31)),
        ["rejected_bye_unknown_source"]
    );
    let old = DialogState {
        path: SignalPath::default(),
        ..state
    };
    let mut h3 = Harness::new(TrackerConfig::default());
    h3.t.restore(&old, 30 * SEC).expect("restored");
    assert_eq!(
        kinds(&hop(&mut h3, bye(), "10.0.0.66:5060", B, 31)),
        ["ended_bye_caller"]
    );
}

fn flood_invite(n: u32) -> crate::Message {
    let cid = format!("flood-{n}@x");
    let mut m = invite();
    m.cid = &cid;
    m.build()
}

/// An INVITE flood larger than `max_unanswered_calls`: the oldest unanswered calls nobody
/// answered are evicted for newer ones, so calls interleaved with the flood still start, ring,
/// get answered; answered and ringing calls are never evicted; memory is bounded.
#[test]
fn invite_flood_evicts_only_unanswered_calls_nobody_answered() {
    let cfg = TrackerConfig {
        max_unanswered_calls: 100,
        ..TrackerConfig::default()
    };
    let mut h = Harness::new(cfg.clone());
    let mut ordinary = Vec::new();
    let mut evicted = 0;
    let flooder = sa("10.9.0.1:5060");
    for n in 0..5000u32 {
        let ts = u64::from(n) * 1_000_000;
        h.t.on_message(&flood_invite(n), flooder, sa(B), ts, &mut h.out);
        if n % 250 == 0 {
            // An ordinary call: INVITE, 180, 200 (the 200 only much later for every other one).
            let cid = format!("ordinary-{n}@a");
            let mut inv = invite();
            inv.cid = &cid;
            h.t.on_message(&inv.build(), sa(A), sa(B), ts, &mut h.out);
            let mut ring = resp(180, "1 INVITE").to("tb");
            ring.cid = &cid;
            h.t.on_message(&ring.build(), sa(B), sa(A), ts + 1000, &mut h.out);
            ordinary.push(cid);
        }
        for ev in h.out.drain(..) {
            if let CallEvent::Ended { reason, .. } = ev {
                assert_eq!(reason, EndReason::Evicted);
                evicted += 1;
            }
        }
        let s = h.t.stats();
        assert!(s.unanswered_calls <= 100, "{s:?}");
        assert!(s.active_calls <= 100, "{s:?}");
    }
    // Every ordinary call is still followed (ringing: not evictable) and can be answered.
    for cid in &ordinary {
        let mut ok = resp(200, "1 INVITE").to("tb");
        ok.cid = cid;
        assert_eq!(kinds(&h.ba(ok, 10)), ["answered"], "{cid}");
    }
    let s = h.t.stats();
    assert_eq!(s.calls_evicted, evicted);
    assert_eq!(s.calls_started, 5000 + ordinary.len() as u64);
    assert_eq!(s.calls_shed_unanswered, 0);
    assert_eq!(s.unanswered_calls, 100 - ordinary.len() as u64);
    // Lingering evicted calls absorb retransmissions instead of starting again.
    let mut out = Vec::new();
    h.t.on_message(&flood_invite(0), flooder, sa(B), 11 * SEC, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.t.stats().retransmissions, 1);

    // When every unanswered call has been answered in some way, a new INVITE is shed.
    let mut h = Harness::new(TrackerConfig {
        max_unanswered_calls: 3,
        ..cfg
    });
    for n in 0..3u32 {
        let cid = format!("ringing-{n}@a");
        let mut inv = invite();
        inv.cid = &cid;
        h.ab(inv, 0);
        let mut ring = resp(183, "1 INVITE").to("tb");
        ring.cid = &cid;
        h.ba(ring, 0);
    }
    let mut out = Vec::new();
    h.t.on_message(&flood_invite(1), flooder, sa(B), SEC, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        (h.t.stats().calls_shed_unanswered, h.t.stats().calls_evicted),
        (1, 0)
    );
}

/// Forged messages cannot widen the path: a "retransmitted" 200 OK from a third address to the
/// caller after the answer, or an INVITE copy sent from it, teach the dialog nothing, so its
/// BYE is still rejected.
#[test]
fn forged_messages_do_not_widen_the_path() {
    let third = "10.0.0.66:5060";
    let mut h = answered_call();
    let ok = resp(200, "1 INVITE")
        .to("tb")
        .extra("Contact: <sip:bob@10.0.0.66>\r\n");
    assert!(hop(&mut h, ok, third, A, 2).is_empty());
    assert!(hop(&mut h, invite(), third, "10.0.0.77:5060", 3).is_empty());
    let bye = Msg::new("BYE sip:bob@10.0.0.2 SIP/2.0", "2 BYE").to("tb");
    assert_eq!(
        kinds(&hop(&mut h, bye, third, B, 5)),
        ["rejected_bye_unknown_source"]
    );
}
