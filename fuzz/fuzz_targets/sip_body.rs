//! The bodies the tracker reads: SDP, plain or in a multipart body (SIP-I gateways), and SIP
//! INFO DTMF. The input is a Content-Type value, a line feed, then the body.
//!
//! Invariants: the SDP found is a slice of the body (never bytes from elsewhere), the whole
//! body for `application/sdp`, never holding the multipart delimiter it was cut at; a DTMF
//! digit is one of the sixteen keys.
#![no_main]

use calltap_fuzz::within;
use calltap_sip::{
    dialog::{info_dtmf, sdp_body},
    Header, Message, StartLine,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(ct) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or_default();
    let msg = Message {
        start: StartLine::Request {
            method: "INFO".into(),
            uri: "sip:a@b".into(),
        },
        headers: vec![Header {
            name: "Content-Type".into(),
            value: ct.trim().into(),
        }],
        body: body.to_vec(),
    };
    if let Some(sdp) = sdp_body(&msg) {
        assert!(within(&msg.body, sdp), "SDP outside the body");
        if msg.content_type_is("application/sdp") {
            assert_eq!(sdp, &msg.body[..]);
        } else if let Some(boundary) = boundary(ct) {
            let delim = [b"--", boundary.as_bytes()].concat();
            assert!(
                !sdp.windows(delim.len()).any(|w| w == delim),
                "delimiter in the part"
            );
        }
        let _ = calltap_sip::sdp::parse(sdp);
    }
    if let Some((digit, _)) = info_dtmf(&msg) {
        assert!("0123456789*#ABCD".contains(digit), "{digit:?}");
    }
});

/// The `boundary` parameter as RFC 2046 writes it (quotes removed).
fn boundary(ct: &str) -> Option<&str> {
    ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"'))
            .filter(|b| !b.is_empty())
    })
}
