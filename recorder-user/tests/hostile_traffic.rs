//! Traffic that tries to steer the classifier (issue #14, "never miss a call"), replayed from
//! synthetic captures through the same pipeline as live capture: an SDP naming a SIP proxy's
//! signalling endpoint, junk sent to an SDP endpoint, and crafted SIP segments to well-known
//! ports.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{
    calls::{constant, replay, Call, Packet},
    frames::{eth, ipv4, tcp},
};

/// A SIP proxy every ordinary call goes through.
const PROXY: [u8; 4] = [198, 18, 3, 1];
/// mu-law 0xA0 decodes to a loud constant; any non-zero sample in a channel comes from RTP.
const TONE: u8 = 0xA0;

/// Non-zero samples in the (left, right) channels of a CDR's recording.
fn audio(cdr: &Value) -> (usize, usize) {
    let path = cdr["recording"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no recording: {cdr}"));
    let mut wav = hound::WavReader::open(Path::new(path)).expect("open wav");
    let s: Vec<i16> = wav
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("samples");
    let nonzero = |skip: usize| s.iter().skip(skip).step_by(2).filter(|v| **v != 0).count();
    (nonzero(0), nonzero(1))
}

/// The reproduction: a call whose 200 OK says `c=IN IP4 <proxy>`, `m=audio 5060` used
/// to put the proxy's SIP endpoint into the media map, and every later SIP message to or from
/// it went to a media worker: three ordinary calls through the proxy during the hostile one got
/// no CDR and no recording.
#[test]
fn an_sdp_naming_the_proxys_sip_port_hides_no_other_call() {
    let mut hostile = Call::new("hostile@test")
        .caller_at([198, 18, 1, 9])
        .callee_at([198, 18, 2, 9])
        .callee_media(PROXY, 5060);
    hostile
        .invite(0, "sendrecv", false)
        .respond(200, 200, "OK", Some("sendrecv"))
        .ack(210)
        .bye(20_000);
    let mut ordinary = Vec::new();
    for n in 1..=3u8 {
        let start = 1_000 * u64::from(n);
        let mut c = Call::new(&format!("via-proxy-{n}@test"))
            .caller_at([198, 18, 1, n])
            .callee_at(PROXY)
            .callee_media(PROXY, 50_000 + 2 * u16::from(n));
        c.invite(start, "sendrecv", false)
            .respond(start + 100, 180, "Ringing", None)
            .respond(start + 500, 200, "OK", Some("sendrecv"))
            .ack(start + 510)
            .rtp(true, start + 600, 0, 100, constant(TONE), |_| false)
            .rtp(false, start + 600, 0, 100, constant(TONE), |_| false)
            .bye(start + 3_000);
        ordinary.push(c);
    }
    let mut all: Vec<&Call> = ordinary.iter().collect();
    all.push(&hostile);
    let (summary, cdrs) = replay("hostile-proxy", &all, &[]);

    for n in 1..=3 {
        let id = format!("via-proxy-{n}@test");
        let cdr = cdrs
            .iter()
            .find(|c| c["call_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no CDR for {id}: {cdrs:#?}"));
        assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
        assert_eq!(cdr["packets"]["caller"], 100, "{cdr}");
        assert_eq!(cdr["packets"]["callee"], 100, "{cdr}");
        assert_eq!(audio(cdr), (100 * 160, 100 * 160), "{id}: recording");
    }
    let cdr = cdrs
        .iter()
        .find(|c| c["call_id"] == "hostile@test")
        .unwrap_or_else(|| panic!("no CDR for the hostile call: {cdrs:#?}"));
    assert_eq!(cdr["end_reason"], "bye_caller", "{cdr}");
    assert_eq!(
        summary.signalling.sdp_endpoints_refused, 1,
        "the 200 OK's endpoint is refused, nothing else"
    );
    // Every SIP message of the four calls reached the signalling worker.
    assert_eq!(
        summary.signalling.sip_messages, summary.counters["sip"],
        "{summary:?}"
    );
}

/// An SDP endpoint can name any host's port; what arrives there and is not RTP of the call
/// must not keep the call open past its media timeout.
#[test]
fn junk_sent_to_an_sdp_endpoint_does_not_keep_a_call_alive() {
    let server = [198, 18, 4, 1];
    let mut c = Call::new("junk@test").callee_media(server, 8444);
    c.invite(0, "sendrecv", false)
        .respond(500, 200, "OK", Some("sendrecv"))
        .ack(510);
    for i in 0..60 {
        // TLS-looking datagrams to the endpoint the 200 OK named, from someone else.
        c.datagram(
            1_000 + 500 * i,
            ([198, 18, 9, 9], 40_000),
            (server, 8444),
            b"\x17\x03\x03\x00\x10 not RTP at all",
        );
        // And RTCP-shaped junk (version 2, RTCP type, length past the end) to its RTCP port.
        c.datagram(
            1_000 + 500 * i,
            ([198, 18, 9, 9], 40_001),
            (server, 8445),
            b"\x80\xc8\xff\xff\x00\x00\x00\x01",
        );
    }
    let (summary, cdrs) = replay(
        "hostile-junk",
        &[&c],
        &[("CALLTAP_CALLS_MEDIA_TIMEOUT_S", "5")],
    );
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert_eq!(cdr["end_reason"], "media_timeout", "{cdr}");
    assert_eq!(cdr["packets"]["rtcp"], 0, "junk counted as RTCP: {cdr}");
    let bad: u64 = summary.workers.iter().map(|w| w.bad_rtp).sum();
    assert!(bad > 0, "the junk reached the call's worker: {summary:?}");
}

/// A TCP segment from `src` to `dst` at `at_ms`.
fn segment(at_ms: u64, src: ([u8; 4], u16), dst: ([u8; 4], u16), seq: u32, data: &[u8]) -> Packet {
    Packet {
        at_ns: at_ms * 1_000_000,
        frame: eth(
            0x0800,
            &ipv4(6, src.0, dst.0, &tcp(src.1, dst.1, seq, data)),
        ),
    }
}

const INVITE: &[u8] = b"INVITE sip:2002@198.18.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 198.18.1.1:40000;branch=z9hG4bKt1\r\nFrom: <sip:1001@198.18.1.1>;tag=a\r\nTo: <sip:2002@198.18.2.1>\r\nCall-ID: tcp@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

/// Learned SIP ports: a TCP port found carrying SIP is captured whole, and forgotten once no
/// SIP has crossed it for `learned_sip_port_idle_s`; one crafted segment to 443 (even a whole
/// SIP message) does not make 443 a SIP port, so the web traffic after it stays out of the
/// signalling worker.
#[test]
fn learned_sip_ports_expire_and_one_segment_does_not_make_443_sip() {
    let (a, b) = ([198, 18, 1, 1], [198, 18, 2, 1]);
    let mut c = Call::new("ports@test");
    // SIP over TCP on 6060 (not configured), the INVITE in two segments: the second does not
    // begin a message, so only the learned port brings it.
    let (head, tail) = INVITE.split_at(40);
    c.packets.push(segment(0, (a, 40_000), (b, 6060), 1, head));
    c.packets.push(segment(
        10,
        (a, 40_000),
        (b, 6060),
        1 + head.len() as u32,
        tail,
    ));
    // One segment to 443 holding a whole SIP request, then what 443 really carries.
    c.packets
        .push(segment(500, (a, 40_002), (b, 443), 1, INVITE));
    c.packets.push(segment(
        600,
        (a, 40_002),
        (b, 443),
        1 + INVITE.len() as u32,
        b"GET / HTTP/1.1\r\n\r\n",
    ));
    c.datagram(700, (a, 40_004), (b, 443), b"\x40quic-ish");
    // Time passes without SIP on 6060 (other traffic moves the replay's clock on).
    for i in 0..20 {
        c.datagram(1_000 + 500 * i, (a, 41_000), (b, 41_002), b"\x17 nothing");
    }
    // 6060 is no SIP port any more: a segment that does not begin a message stays out.
    let seq = 1 + INVITE.len() as u32;
    c.packets.push(segment(
        11_000,
        (a, 40_000),
        (b, 6060),
        seq,
        b"not the start of a SIP message",
    ));
    let (summary, _) = replay(
        "hostile-ports",
        &[&c],
        &[("CALLTAP_CAPTURE_LEARNED_SIP_PORT_IDLE_S", "5")],
    );
    let s = &summary.signalling;
    assert_eq!(s.learned_sip_ports, 1, "6060 only: {s:?}");
    assert_eq!(s.expired_sip_ports, 1, "{s:?}");
    assert_eq!(
        s.sip_messages, 2,
        "the INVITE on 6060 and the one to 443: {s:?}"
    );
    // SIP: the two segments of 6060's INVITE and the crafted segment to 443; nothing after.
    assert_eq!(summary.counters["sip"], 3, "{summary:?}");
}

/// A port that becomes a SIP port is taken back from the SDP that claimed it for media.
#[test]
fn a_port_learned_as_sip_is_released_by_the_sdp_that_claimed_it() {
    let server = [198, 18, 4, 1];
    let mut c = Call::new("claim@test").callee_media(server, 6060);
    c.invite(0, "sendrecv", false)
        .respond(500, 200, "OK", Some("sendrecv"))
        .ack(510)
        .bye(3_000);
    c.packets.push(segment(
        1_000,
        ([198, 18, 9, 9], 40_000),
        (server, 6060),
        1,
        INVITE,
    ));
    let (summary, _) = replay("hostile-claim", &[&c], &[]);
    let s = &summary.signalling;
    assert_eq!(s.learned_sip_ports, 1, "{s:?}");
    assert_eq!(
        s.sdp_endpoints_refused, 1,
        "released when 6060 became SIP: {s:?}"
    );
}
