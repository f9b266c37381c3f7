//! Traffic that tries to steer the classifier (issue #14, "never miss a call"), replayed from
//! synthetic captures through the same pipeline as live capture: an SDP naming a SIP proxy's
//! signalling endpoint, junk sent to an SDP endpoint, and crafted SIP segments to well-known
//! ports.

mod support;

use support::calls::{replay, Call};

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
