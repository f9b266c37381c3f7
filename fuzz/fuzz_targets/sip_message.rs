//! SIP framing and parsing, as a stream buffer (TCP) and as a datagram (UDP).
//!
//! Invariants: a framed message uses no more than the buffer and frames the same way from the
//! bytes it used alone; those bytes parse as a datagram to the same message; a parsed message
//! respects the header and size bounds, and written back out it parses to itself.
#![no_main]

use calltap_sip::{
    parse, parse_datagram, Message, ParseError, StartLine, MAX_HEADERS, MAX_MESSAGE_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok((msg, used)) => {
            assert!(
                used > 0 && used <= data.len(),
                "used {used} of {}",
                data.len()
            );
            check(&msg);
            let alone = &data[..used];
            assert_eq!(
                parse(alone),
                Ok((msg.clone(), used)),
                "framing looked past the message"
            );
            if used <= MAX_MESSAGE_LEN {
                assert_eq!(
                    parse_datagram(alone).as_ref(),
                    Ok(&msg),
                    "stream and datagram differ"
                );
            }
        }
        Err(ParseError::Incomplete | ParseError::TooLarge) => {}
        Err(_) => {}
    }
    if let Ok(msg) = parse_datagram(data) {
        check(&msg);
        let text = write(&msg);
        if text.len() <= MAX_MESSAGE_LEN {
            assert_eq!(
                parse_datagram(&text).as_ref(),
                Ok(&msg),
                "written out: {:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }
});

/// The bounds, and every accessor the tracker uses.
fn check(msg: &Message) {
    assert!(msg.headers.len() <= MAX_HEADERS);
    assert!(msg.body.len() <= MAX_MESSAGE_LEN);
    for h in &msg.headers {
        assert!(
            !h.name.is_empty() && !h.name.contains([':', ' ', '\r', '\n']),
            "{h:?}"
        );
        assert!(
            !h.value.contains('\n') && h.value.trim() == h.value,
            "{h:?}"
        );
    }
    match &msg.start {
        StartLine::Request { method, uri } => {
            assert!(!method.is_empty() && !uri.is_empty() && !uri.contains(' '));
        }
        StartLine::Response { code, .. } => assert!((100..=699).contains(code)),
    }
    let _ = (
        msg.call_id(),
        msg.cseq(),
        msg.from(),
        msg.to(),
        msg.contact(),
    );
    let _ = (msg.content_type(), msg.content_type_is("application/sdp"));
}

/// The message as a sender would write it: one header a line, full names, then the body.
fn write(msg: &Message) -> Vec<u8> {
    let mut out = match &msg.start {
        StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0\r\n"),
        StartLine::Response { code, reason } => format!("SIP/2.0 {code} {reason}\r\n"),
    };
    for h in &msg.headers {
        out.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&msg.body);
    out
}
