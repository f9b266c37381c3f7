//! Framing and parsing of SIP messages from TCP streams and UDP datagrams.
//!
//! Traffic is mirrored, not terminated: a buffer may start mid-garbage, stop mid-message, or be
//! an attacker's. The parser therefore bounds everything (message size, header count), rejects
//! a bad start line as soon as the first line is complete (so the caller can resync without
//! waiting for 64 KiB of junk), and never indexes without checking.

use thiserror::Error;

use crate::message::{Header, Message, StartLine};

/// Largest message accepted (headers plus body). UDP datagrams cannot exceed it; TCP streams
/// announcing more are treated as hostile or desynchronised.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 256;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The buffer ends before the message does; call again with more bytes.
    #[error("incomplete message")]
    Incomplete,
    /// Nothing but CRLF keep-alives.
    #[error("keep-alive only")]
    KeepAlive,
    #[error("bad start line")]
    BadStartLine,
    #[error("bad header line")]
    BadHeader,
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("message larger than {MAX_MESSAGE_LEN} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("header section is not UTF-8")]
    NotUtf8,
}

/// Parses one message from the start of a stream buffer, framed by Content-Length (absent
/// means no body). Leading CRLF keep-alives are skipped. Returns the message and the bytes it
/// used (keep-alives included); [`ParseError::Incomplete`] when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<(Message, usize), ParseError> {
    let skip = keepalive_len(buf);
    let data = buf.get(skip..).unwrap_or_default();
    if data.is_empty() {
        return Err(ParseError::Incomplete);
    }
    let Some((head_len, body_start)) = header_end(data) else {
        // Fail early on junk so the stream can be resynchronised.
        if let Some(eol) = data.iter().position(|&b| b == b'\n') {
            let line = data.get(..eol).unwrap_or_default();
            let line = std::str::from_utf8(line).map_err(|_| ParseError::BadStartLine)?;
            parse_start_line(line.trim_end_matches('\r'))?;
        } else if !plausible_start(data) {
            return Err(ParseError::BadStartLine);
        }
        return Err(if data.len() >= MAX_MESSAGE_LEN {
            ParseError::TooLarge
        } else {
            ParseError::Incomplete
        });
    };
    if body_start > MAX_MESSAGE_LEN {
        return Err(ParseError::TooLarge);
    }
    let (start, headers) = parse_head(data.get(..head_len).unwrap_or_default())?;
    let body_len = content_length(&headers)?.unwrap_or(0);
    let end = body_start
        .checked_add(body_len)
        .ok_or(ParseError::BadContentLength)?;
    if end > MAX_MESSAGE_LEN {
        return Err(ParseError::TooLarge);
    }
    let body = data.get(body_start..end).ok_or(ParseError::Incomplete)?;
    let msg = Message {
        start,
        headers,
        body: body.to_vec(),
    };
    Ok((msg, skip + end))
}

/// Parses a whole UDP datagram as one message. The body is the rest of the datagram, cut to
/// Content-Length when that is smaller (a larger Content-Length is bounded by the datagram,
/// since a recorder would rather keep a truncated SDP than lose the call). A datagram without
/// the blank line is taken as headers only.
pub fn parse_datagram(buf: &[u8]) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(ParseError::TooLarge);
    }
    let skip = keepalive_len(buf);
    let data = buf.get(skip..).unwrap_or_default();
    if data.is_empty() {
        return Err(ParseError::KeepAlive);
    }
    let (head_len, body_start) = header_end(data).unwrap_or((data.len(), data.len()));
    let (start, headers) = parse_head(data.get(..head_len).unwrap_or_default())?;
    let rest = data.get(body_start..).unwrap_or_default();
    let body = match content_length(&headers)? {
        Some(n) => rest.get(..n).unwrap_or(rest),
        None => rest,
    };
    Ok(Message {
        start,
        headers,
        body: body.to_vec(),
    })
}

/// Length of the leading CR/LF run.
fn keepalive_len(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Whether a buffer with no complete line yet could still become a start line: its first word
/// must be a short method token or (a prefix of) `SIP/2.0`, and the line must stay bounded.
fn plausible_start(data: &[u8]) -> bool {
    const MAX_START_LINE: usize = 8 * 1024;
    if data.len() > MAX_START_LINE {
        return false;
    }
    let word_len = data.iter().position(|&b| b == b' ').unwrap_or(data.len());
    let word = data.get(..word_len).unwrap_or_default();
    word.len() <= 32
        && (word.iter().all(|&b| is_token_byte(b))
            || b"SIP/2.0".starts_with(&word.to_ascii_uppercase()))
}

/// End of the header section: (length of the header lines, offset of the body). Accepts bare
/// LF line ends, which some stacks send.
fn header_end(data: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = data.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match data.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if data.get(nl + 2) == Some(&b'\n') => return Some((nl, nl + 3)),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Result<(StartLine, Vec<Header>), ParseError> {
    let text = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = parse_start_line(lines.next().unwrap_or(""))?;
    let mut headers: Vec<Header> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // Folded continuation (RFC 3261 7.3.1): joins the previous value with one space.
            let prev = headers.last_mut().ok_or(ParseError::BadHeader)?;
            let more = line.trim();
            if !more.is_empty() {
                if !prev.value.is_empty() {
                    prev.value.push(' ');
                }
                prev.value.push_str(more);
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
        let name = name.trim_end();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::BadHeader);
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        headers.push(Header {
            name: expand_compact(name).to_string(),
            value: value.trim().to_string(),
        });
    }
    Ok((start, headers))
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if let Some(rest) = strip_prefix_ci(line, "SIP/2.0 ") {
        let rest = rest.trim_start();
        let code = rest.get(..3).ok_or(ParseError::BadStartLine)?;
        if !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadStartLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStartLine);
        }
        let reason = rest.get(3..).ok_or(ParseError::BadStartLine)?;
        if !(reason.is_empty() || reason.starts_with(' ')) {
            return Err(ParseError::BadStartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.trim().to_string(),
        });
    }
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if !method.bytes().all(is_token_byte) || !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(ParseError::BadStartLine);
    }
    Ok(StartLine::Request {
        method: method.to_string(),
        uri: uri.to_string(),
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// RFC 3261 `token` characters (methods and header names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Full name of a compact header form (RFC 3261 7.3.3 and later RFCs); other names unchanged.
fn expand_compact(name: &str) -> &str {
    let [c] = name.as_bytes() else {
        return name;
    };
    match c.to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'f' => "From",
        b't' => "To",
        b'm' => "Contact",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'v' => "Via",
        b'k' => "Supported",
        b's' => "Subject",
        b'e' => "Content-Encoding",
        b'o' => "Event",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'u' => "Allow-Events",
        b'x' => "Session-Expires",
        b'a' => "Accept-Contact",
        b'j' => "Reject-Contact",
        b'd' => "Request-Disposition",
        b'y' => "Identity",
        _ => name,
    }
}

/// Content-Length, if present. Repeated headers must agree: two different lengths mean the
/// framing cannot be trusted.
fn content_length(headers: &[Header]) -> Result<Option<usize>, ParseError> {
    let mut found: Option<usize> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Content-Length"))
    {
        let v = h.value.trim();
        if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadContentLength);
        }
        let n: usize = v.parse().map_err(|_| ParseError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseError::BadContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        v: SIP/2.0/UDP [2001:db8::10]:5060;branch=z9hG4bK776asdhds\r\n\
        Max-Forwards: 70\r\n\
        t: Bob <sip:bob@example.com>\r\n\
        f: \"Alice\" <sip:alice@[2001:db8::10]>;tag=1928301774\r\n\
        i: a84b4c76e66710@pc33\r\n\
        CSeq: 314159 INVITE\r\n\
        m: <sip:alice@[2001:db8::10]:5060>\r\n\
        c: application/sdp\r\n\
        Subject: hello\r\n  world\r\n\
        l: 4\r\n\
        \r\n\
        v=0\n";

    #[test]
    fn compact_and_folded_headers() {
        let (m, n) = parse(INVITE.as_bytes()).expect("parses");
        assert_eq!(n, INVITE.len());
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.request_uri(), Some("sip:bob@example.com"));
        assert_eq!(m.call_id(), Some("a84b4c76e66710@pc33"));
        assert_eq!(m.header("call-id"), Some("a84b4c76e66710@pc33"));
        assert_eq!(m.cseq(), Some((314159, "INVITE".to_string())));
        assert_eq!(m.header("Subject"), Some("hello world"));
        assert!(m.content_type_is("application/sdp"));
        assert_eq!(m.body, b"v=0\n");
        let from = m.from().expect("from");
        assert_eq!(from.tag.as_deref(), Some("1928301774"));
        assert_eq!(from.host.as_deref(), Some("2001:db8::10"));
        assert_eq!(m.to().expect("to").tag, None);
        assert_eq!(
            m.contact().expect("contact").host.as_deref(),
            Some("2001:db8::10")
        );
        assert!(m
            .header("Via")
            .expect("via")
            .contains("[2001:db8::10]:5060"));
    }

    #[test]
    fn two_messages_in_one_buffer_with_keepalives() {
        let resp = "SIP/2.0 180 Ringing\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n";
        let buf = format!("\r\n\r\n{INVITE}{resp}");
        let (m1, n1) = parse(buf.as_bytes()).expect("first");
        assert_eq!(n1, 4 + INVITE.len());
        assert!(m1.is_request());
        let (m2, n2) = parse(&buf.as_bytes()[n1..]).expect("second");
        assert_eq!(n1 + n2, buf.len());
        assert_eq!(m2.status(), Some(180));
        assert_eq!(m2.reason(), Some("Ringing"));
        assert_eq!(parse(b"\r\n\r\n"), Err(ParseError::Incomplete));
    }

    #[test]
    fn split_message_is_incomplete() {
        for cut in [1, 10, 40, INVITE.len() - 5, INVITE.len() - 1] {
            assert_eq!(
                parse(&INVITE.as_bytes()[..cut]),
                Err(ParseError::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn content_length_larger_than_buffer() {
        let msg = "MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 100\r\n\r\nhello";
        assert_eq!(parse(msg.as_bytes()), Err(ParseError::Incomplete));
        // A datagram cannot grow: the body is what arrived.
        let m = parse_datagram(msg.as_bytes()).expect("datagram");
        assert_eq!(m.body, b"hello");
        let huge = "MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 99999999\r\n\r\n";
        assert_eq!(parse(huge.as_bytes()), Err(ParseError::TooLarge));
    }

    #[test]
    fn datagram_without_content_length() {
        let msg = "SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\nv=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n";
        let m = parse_datagram(msg.as_bytes()).expect("datagram");
        assert_eq!(m.body, b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n");
        let short = "SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nv=0\r\nextra";
        assert_eq!(parse_datagram(short.as_bytes()).expect("dg").body, b"v=0");
        let headers_only = "OPTIONS sip:a@b SIP/2.0\r\nCall-ID: y";
        let m = parse_datagram(headers_only.as_bytes()).expect("headers only");
        assert_eq!(m.call_id(), Some("y"));
        assert_eq!(parse_datagram(b"\r\n\r\n"), Err(ParseError::KeepAlive));
    }

    #[test]
    fn bare_lf_line_ends() {
        let msg = "BYE sip:a@b SIP/2.0\nCall-ID: z\nContent-Length: 0\n\n";
        let (m, n) = parse(msg.as_bytes()).expect("parses");
        assert_eq!(n, msg.len());
        assert_eq!(m.call_id(), Some("z"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            parse(b"\x16\x03\x01junk\r\n"),
            Err(ParseError::BadStartLine)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(ParseError::BadStartLine)
        );
        assert_eq!(
            parse_datagram(b"SIP/2.0 99 Nope\r\n\r\n"),
            Err(ParseError::BadStartLine)
        );
        assert_eq!(
            parse_datagram(b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n"),
            Err(ParseError::BadHeader)
        );
        assert_eq!(
            parse_datagram(b"INVITE sip:a@b SIP/2.0\r\n continuation first\r\n\r\n"),
            Err(ParseError::BadHeader)
        );
        assert_eq!(
            parse_datagram(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n"),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            parse_datagram(b"INVITE sip:a@b SIP/2.0\r\nX: \xff\r\n\r\n"),
            Err(ParseError::NotUtf8)
        );
        assert_eq!(parse(&[b'A'; 2000]), Err(ParseError::BadStartLine));
    }

    #[test]
    fn header_limits() {
        let mut msg = String::from("OPTIONS sip:a@b SIP/2.0\r\n");
        for i in 0..=MAX_HEADERS {
            msg.push_str(&format!("X-{i}: y\r\n"));
        }
        msg.push_str("\r\n");
        assert_eq!(
            parse_datagram(msg.as_bytes()),
            Err(ParseError::TooManyHeaders)
        );
        let mut big = String::from("OPTIONS sip:a@b SIP/2.0\r\nX: ");
        big.push_str(&"a".repeat(MAX_MESSAGE_LEN));
        assert_eq!(parse(big.as_bytes()), Err(ParseError::TooLarge));
    }

    #[test]
    fn multiple_same_name_headers_kept() {
        let msg = "SIP/2.0 200 OK\r\nVia: a\r\nv: b\r\nVIA: c\r\n\r\n";
        let m = parse_datagram(msg.as_bytes()).expect("parses");
        assert_eq!(m.headers_named("via").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(m.header("Via"), Some("a"));
    }
}
