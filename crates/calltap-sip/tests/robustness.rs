//! Hostile input never panics: arbitrary bytes, and valid messages with bytes flipped, cut,
//! or spliced, through the parsers, the SDP parser and the tracker.

use std::net::SocketAddr;

use calltap_sip::{
    dialog::{Tracker, TrackerConfig},
    parse, parse_datagram, sdp, ParseError,
};
use proptest::prelude::*;

/// Header sections and bodies of valid messages; Content-Length is computed.
const PARTS: &[(&str, &str)] = &[
    (
        "INVITE sip:bob@[2001:db8::2] SIP/2.0\r\n\
         v: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1\r\n\
         f: \"Alice\" <sip:alice@[2001:db8::1]>;tag=a1\r\nt: <sip:bob@[2001:db8::2]>\r\n\
         i: c1@x\r\nCSeq: 1 INVITE\r\nc: application/sdp\r\n",
        "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 0\r\n",
    ),
    (
        "SIP/2.0 200 OK\r\nFrom: <sip:alice@a>;tag=a1\r\nTo: <sip:bob@b>;tag=b1\r\n\
         Call-ID: c1@x\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n",
        "v=0\r\nc=IN IP4 10.0.0.2\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 te/8000\r\n",
    ),
    (
        "INFO sip:bob@b SIP/2.0\r\nFrom: <sip:alice@a>;tag=a1\r\nTo: <sip:bob@b>;tag=b1\r\n\
         Call-ID: c1@x\r\nCSeq: 2 INFO\r\nContent-Type: application/dtmf-relay\r\n",
        "Signal=5\r\nDuration=160\r\n",
    ),
    (
        "BYE sip:bob@b SIP/2.0\r\nFrom: <sip:alice@a>;tag=a1\r\nTo: <sip:bob@b>;tag=b1\r\n\
         Call-ID: c1@x\r\nCSeq: 3 BYE\r\n",
        "",
    ),
];

fn seed(i: usize) -> Vec<u8> {
    let (head, body) = PARTS[i % PARTS.len()];
    format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// Runs everything over `buf`; only panics matter.
fn exercise(buf: &[u8], tracker: &mut Tracker) {
    let mut out = Vec::new();
    let mut used = 0usize;
    // Stream framing: consumption always advances and stays in bounds.
    for _ in 0..64 {
        let Some(rest) = buf.get(used..) else { break };
        match parse(rest) {
            Ok((msg, n)) => {
                assert!(n > 0 && n <= rest.len());
                used += n;
                let _ = sdp::parse(&msg.body);
                let _ = (msg.from(), msg.to(), msg.contact(), msg.cseq());
                tracker.on_message(&msg, sa("10.0.0.1:5060"), sa("10.0.0.2:5060"), 1, &mut out);
            }
            Err(ParseError::Incomplete) => break,
            Err(_) => used += 1,
        }
    }
    if let Ok(msg) = parse_datagram(buf) {
        let _ = sdp::parse(&msg.body);
        tracker.on_message(&msg, sa("10.0.0.2:5060"), sa("10.0.0.1:5060"), 2, &mut out);
    }
    let _ = sdp::parse(buf);
    tracker.on_tick(u64::MAX / 2, &mut out);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut t = Tracker::new(TrackerConfig::default());
        exercise(&buf, &mut t);
    }

    #[test]
    fn mutated_valid_messages(
        which in 0..PARTS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..8),
        cut in any::<usize>(),
    ) {
        let mut t = Tracker::new(TrackerConfig::default());
        // Start the call cleanly so mutated in-dialog messages reach the tracker's logic.
        exercise(&seed(0), &mut t);
        let mut buf: Vec<u8> = seed(which);
        for (pos, byte, op) in edits {
            if buf.is_empty() {
                break;
            }
            let i = pos % buf.len();
            match op {
                0 => buf[i] = byte,
                1 => { buf.remove(i); }
                2 => buf.insert(i, byte),
                _ => {
                    // Splice in a significant character.
                    let specials = b"\r\n:;<>\"@[]=/ 0";
                    buf.insert(i, specials[byte as usize % specials.len()]);
                }
            }
        }
        let end = if buf.is_empty() { 0 } else { cut % (buf.len() + 1) };
        exercise(&buf[..end], &mut t);
        // Two messages back to back, the second mutated.
        let mut two = seed(1);
        two.extend_from_slice(&buf);
        exercise(&two, &mut t);
    }
}

#[test]
fn seeds_are_valid() {
    for i in 0..PARTS.len() {
        let v = seed(i);
        let (m, n) = parse(&v).expect("seed parses");
        assert_eq!(n, v.len());
        if m.content_type_is("application/sdp") {
            let s = sdp::parse(&m.body).expect("seed SDP");
            assert!(s.audio().and_then(|a| a.rtp).is_some());
        }
    }
}
