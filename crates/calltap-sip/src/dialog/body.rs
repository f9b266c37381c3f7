//! Extracting the bodies the tracker cares about: SDP (plain or inside multipart/mixed, as
//! SIP-I gateways send it) and SIP INFO DTMF.

use crate::message::{media_type, param, Message};

/// The SDP carried by `msg`, if any: a slice of its body.
pub fn sdp_body(msg: &Message) -> Option<&[u8]> {
    if msg.body.is_empty() {
        return None;
    }
    let ct = msg.content_type()?;
    let mt = media_type(ct);
    if mt.eq_ignore_ascii_case("application/sdp") {
        return Some(&msg.body);
    }
    if mt.len() > 10 && mt.get(..10)?.eq_ignore_ascii_case("multipart/") {
        let boundary = param(ct, "boundary")?;
        return multipart_sdp(&msg.body, boundary.as_bytes());
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first `application/sdp` part of a multipart body.
fn multipart_sdp<'a>(body: &'a [u8], boundary: &[u8]) -> Option<&'a [u8]> {
    if boundary.is_empty() {
        return None;
    }
    let mut delim = Vec::with_capacity(boundary.len() + 2);
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary);
    let mut rest = body;
    // Skip the preamble up to the first delimiter.
    let first = find(rest, &delim)?;
    rest = rest.get(first + delim.len()..)?;
    loop {
        if rest.starts_with(b"--") {
            return None; // closing delimiter
        }
        let end = find(rest, &delim).unwrap_or(rest.len());
        let part = rest.get(..end)?;
        // Part headers end at the first blank line.
        let (head, content) = match find(part, b"\r\n\r\n") {
            Some(i) => (part.get(..i)?, part.get(i + 4..)?),
            None => {
                let i = find(part, b"\n\n")?;
                (part.get(..i)?, part.get(i + 2..)?)
            }
        };
        let head = String::from_utf8_lossy(head);
        let is_sdp = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("Content-Type")
                    && media_type(v).eq_ignore_ascii_case("application/sdp")
            })
        });
        if is_sdp {
            // The CRLF before the next delimiter belongs to the delimiter.
            let content = content
                .strip_suffix(b"\r\n")
                .or_else(|| content.strip_suffix(b"\n"))
                .unwrap_or(content);
            return Some(content);
        }
        rest = rest.get(end + delim.len()..)?;
    }
}

/// A digit from an INFO body: `application/dtmf-relay` (`Signal=5` / `Duration=160`) or
/// `application/dtmf` (just the digit, sometimes in the relay format too).
pub fn info_dtmf(msg: &Message) -> Option<(char, Option<u32>)> {
    if !(msg.content_type_is("application/dtmf-relay") || msg.content_type_is("application/dtmf")) {
        return None;
    }
    let text = std::str::from_utf8(&msg.body).ok()?;
    let mut signal = None;
    let mut duration = None;
    for line in text.lines() {
        let line = line.trim();
        match line.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("signal") => {
                signal = digit(v.trim());
            }
            Some((k, v)) if k.trim().eq_ignore_ascii_case("duration") => {
                duration = v.trim().parse().ok();
            }
            None if signal.is_none() && !line.is_empty() => signal = digit(line),
            _ => {}
        }
    }
    Some((signal?, duration))
}

/// A DTMF signal as a character; RFC 4733 event numbers 10-15 are `*`, `#`, `A`-`D`.
fn digit(s: &str) -> Option<char> {
    let mut chars = s.chars();
    let c = chars.next()?;
    if chars.next().is_none() {
        let c = c.to_ascii_uppercase();
        return matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c);
    }
    match s.parse::<u8>().ok()? {
        10 => Some('*'),
        11 => Some('#'),
        n @ 12..=15 => Some(char::from(b'A' + (n - 12))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_datagram;

    fn msg(ct: &str, body: &str) -> Message {
        let raw = format!("INFO sip:a@b SIP/2.0\r\nContent-Type: {ct}\r\n\r\n{body}");
        parse_datagram(raw.as_bytes()).expect("test message")
    }

    #[test]
    fn dtmf_bodies() {
        let m = msg("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n");
        assert_eq!(info_dtmf(&m), Some(('5', Some(160))));
        let m = msg("application/dtmf-relay", "Signal= 11\r\nDuration= 100\r\n");
        assert_eq!(info_dtmf(&m), Some(('#', Some(100))));
        let m = msg("application/dtmf", "*");
        assert_eq!(info_dtmf(&m), Some(('*', None)));
        let m = msg("application/dtmf-relay", "Signal=16\r\n");
        assert_eq!(info_dtmf(&m), None);
        let m = msg("text/plain", "5");
        assert_eq!(info_dtmf(&m), None);
    }

    #[test]
    fn multipart_sdp_part() {
        let body = "--xyz\r\nContent-Type: application/isup\r\n\r\nISUP\r\n\
            --xyz\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n--xyz--\r\n";
        let m = msg("multipart/mixed;boundary=xyz", body);
        assert_eq!(sdp_body(&m), Some(&b"v=0\r\n"[..]));
        let m = msg("multipart/mixed;boundary=\"xyz\"", "garbage");
        assert_eq!(sdp_body(&m), None);
        let m = msg("application/sdp", "v=0\r\n");
        assert_eq!(sdp_body(&m), Some(&b"v=0\r\n"[..]));
    }
}
