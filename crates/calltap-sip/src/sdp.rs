//! The parts of SDP (RFC 4566 / RFC 3264) a recorder needs: where each stream is received, on
//! which codecs, and whether it is on hold.
//!
//! Parsing is lenient: an unknown or malformed attribute line is skipped rather than losing the
//! call's media. Only an `m=` line whose port cannot be read is an error, because the stream it
//! describes cannot be located at all.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most media sections kept; more is hostile (real offers carry a handful).
pub const MAX_MEDIA: usize = 16;
/// Most codecs kept per media section.
pub const MAX_CODECS: usize = 64;
/// Longest `a=fmtp` parameter list kept (SDP is written by whoever places a call); longer ones
/// are dropped, and the codec decodes with its defaults.
pub const MAX_FMTP: usize = 256;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is not UTF-8")]
    NotUtf8,
    #[error("bad m= line: {0}")]
    BadMedia(String),
}

/// Media direction attribute (RFC 3264 section 5.1), from the point of view of the SDP's author.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attr(a: &str) -> Option<Direction> {
        match a {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// Whether the author wants to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The direction with receiving switched off (what a hold address implies).
    fn without_receive(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
            Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
        }
    }
}

/// A payload type binding (`a=rtpmap`, or the static RFC 3551 assignment).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RtpMap {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: u8,
    /// The format's `a=fmtp` parameters as written (`mode=20`, `octet-align=1`), which some
    /// codecs decode by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmtp: Option<Box<str>>,
}

impl RtpMap {
    /// The RFC 3551 static assignment of `pt`, used when an offer lists it without an rtpmap.
    pub fn static_pt(pt: u8) -> Option<RtpMap> {
        let (enc, rate, ch) = match pt {
            0 => ("PCMU", 8000, 1),
            3 => ("GSM", 8000, 1),
            4 => ("G723", 8000, 1),
            5 => ("DVI4", 8000, 1),
            6 => ("DVI4", 16000, 1),
            7 => ("LPC", 8000, 1),
            8 => ("PCMA", 8000, 1),
            9 => ("G722", 8000, 1),
            10 => ("L16", 44100, 2),
            11 => ("L16", 44100, 1),
            12 => ("QCELP", 8000, 1),
            13 => ("CN", 8000, 1),
            14 => ("MPA", 90000, 1),
            15 => ("G728", 8000, 1),
            16 => ("DVI4", 11025, 1),
            17 => ("DVI4", 22050, 1),
            18 => ("G729", 8000, 1),
            _ => return None,
        };
        Some(RtpMap {
            pt,
            encoding: enc.to_string(),
            clock_rate: rate,
            channels: ch,
            fmtp: None,
        })
    }

    /// Parses the value of `a=rtpmap:` (`PT ENC/RATE[/CH]`).
    fn parse(v: &str) -> Option<RtpMap> {
        let (pt, rest) = v.trim().split_once([' ', '\t'])?;
        let pt: u8 = pt.parse().ok()?;
        let mut parts = rest.trim().split('/');
        let encoding = parts.next()?.trim();
        if encoding.is_empty() {
            return None;
        }
        let clock_rate = parts.next()?.trim().parse().ok()?;
        let channels = match parts.next() {
            Some(c) => c.trim().parse().ok()?,
            None => 1,
        };
        Some(RtpMap {
            pt,
            encoding: encoding.to_string(),
            clock_rate,
            channels,
            fmtp: None,
        })
    }
}

/// Parses the value of `a=fmtp:` (`PT PARAMS`); `None` when it is malformed or too long.
fn parse_fmtp(v: &str) -> Option<(u8, Box<str>)> {
    let (pt, params) = v.trim().split_once([' ', '\t'])?;
    let params = params.trim();
    if params.len() > MAX_FMTP {
        return None;
    }
    Some((pt.parse().ok()?, params.into()))
}

/// One `m=` section with session-level defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `image`...
    pub media: String,
    /// Port of the m= line; 0 means the stream is disabled.
    pub port: u16,
    pub proto: String,
    /// Connection address in effect (media `c=` over session `c=`).
    pub connection: Option<IpAddr>,
    /// Where the author receives RTP; `None` when disabled, without address, or on hold via
    /// the unspecified address (`c=IN IP4 0.0.0.0`).
    pub rtp: Option<SocketAddr>,
    /// Where the author receives RTCP: `a=rtcp`, the RTP address with `a=rtcp-mux`, else
    /// port + 1.
    pub rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// Codecs in m= line order; dynamic types without an rtpmap are left out.
    pub codecs: Vec<RtpMap>,
    /// Effective direction (media attribute over session attribute; a hold address removes
    /// receiving).
    pub direction: Direction,
}

impl MediaDescription {
    pub fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionDescription {
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute (default sendrecv).
    pub direction: Direction,
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// The audio stream a recorder follows: the first enabled `m=audio`, else the first
    /// (disabled) one.
    pub fn audio(&self) -> Option<&MediaDescription> {
        self.media
            .iter()
            .find(|m| m.is_audio() && m.port != 0)
            .or_else(|| self.media.iter().find(|m| m.is_audio()))
    }
}

/// A media section as read; resolved against the session defaults only at the end, because a
/// section's own `c=` and attributes may come in any order.
struct RawMedia {
    media: String,
    port: u16,
    proto: String,
    fmts: Vec<u8>,
    connection: Option<IpAddr>,
    direction: Option<Direction>,
    rtpmaps: Vec<RtpMap>,
    fmtps: Vec<(u8, Box<str>)>,
    rtcp: Option<(u16, Option<IpAddr>)>,
    rtcp_mux: bool,
}

/// Parses an SDP body.
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    let mut session_conn: Option<IpAddr> = None;
    let mut session_dir: Option<Direction> = None;
    let mut raw: Vec<RawMedia> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        match kind {
            "m" => {
                if raw.len() >= MAX_MEDIA {
                    // Stop reading sections; later a= lines would land on the wrong one.
                    break;
                }
                raw.push(parse_m(value)?);
            }
            "c" => {
                let Some(addr) = parse_c(value) else {
                    continue;
                };
                match raw.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => session_conn = Some(addr),
                }
            }
            "a" => {
                let (name, val) = match value.split_once(':') {
                    Some((n, v)) => (n, Some(v)),
                    None => (value, None),
                };
                let dir = Direction::from_attr(name);
                match raw.last_mut() {
                    None => {
                        if dir.is_some() {
                            session_dir = dir;
                        }
                    }
                    Some(m) => {
                        if dir.is_some() {
                            m.direction = dir;
                        }
                        match (name, val) {
                            ("rtpmap", Some(v)) => {
                                if let Some(r) = RtpMap::parse(v) {
                                    if m.rtpmaps.len() < MAX_CODECS {
                                        m.rtpmaps.push(r);
                                    }
                                }
                            }
                            ("fmtp", Some(v)) => {
                                if let Some(f) = parse_fmtp(v) {
                                    if m.fmtps.len() < MAX_CODECS {
                                        m.fmtps.push(f);
                                    }
                                }
                            }
                            ("rtcp", Some(v)) => m.rtcp = parse_rtcp(v).or(m.rtcp),
                            ("rtcp-mux", _) => m.rtcp_mux = true,
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let direction = session_dir.unwrap_or_default();
    let media = raw
        .into_iter()
        .map(|m| resolve(m, session_conn, direction))
        .collect();
    Ok(SessionDescription {
        connection: session_conn,
        direction,
        media,
    })
}

fn resolve(m: RawMedia, session_conn: Option<IpAddr>, session_dir: Direction) -> MediaDescription {
    let connection = m.connection.or(session_conn);
    let mut direction = m.direction.unwrap_or(session_dir);
    let hold_address = connection.is_some_and(|a| a.is_unspecified());
    if hold_address {
        // RFC 2543 hold: "do not send to me", whatever the attributes say.
        direction = direction.without_receive();
    }
    let rtp = match connection {
        Some(ip) if m.port != 0 && !hold_address => Some(SocketAddr::new(ip, m.port)),
        _ => None,
    };
    let rtcp = rtp.and_then(|rtp| {
        if m.rtcp_mux {
            Some(rtp)
        } else if let Some((port, addr)) = m.rtcp {
            Some(SocketAddr::new(addr.unwrap_or(rtp.ip()), port))
        } else {
            m.port.checked_add(1).map(|p| SocketAddr::new(rtp.ip(), p))
        }
    });
    let codecs = m
        .fmts
        .iter()
        .filter_map(|&pt| {
            m.rtpmaps
                .iter()
                .find(|r| r.pt == pt)
                .cloned()
                .or_else(|| RtpMap::static_pt(pt))
        })
        .map(|mut r| {
            // Attached at the end: an fmtp line may come before its rtpmap.
            r.fmtp = m.fmtps.iter().find(|f| f.0 == r.pt).map(|f| f.1.clone());
            r
        })
        .collect();
    MediaDescription {
        media: m.media,
        port: m.port,
        proto: m.proto,
        connection,
        rtp,
        rtcp,
        rtcp_mux: m.rtcp_mux,
        codecs,
        direction,
    }
}

/// `audio 49170[/2] RTP/AVP 0 8 101`
fn parse_m(value: &str) -> Result<RawMedia, SdpError> {
    let bad = || SdpError::BadMedia(value.chars().take(80).collect());
    let mut it = value.split_ascii_whitespace();
    let media = it.next().ok_or_else(bad)?;
    let port = it.next().ok_or_else(bad)?;
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port.parse().map_err(|_| bad())?;
    let proto = it.next().ok_or_else(bad)?;
    // Non-RTP formats (t38, MRCP) are not numbers; they carry no codec to decode.
    let fmts = it
        .filter_map(|f| f.parse::<u8>().ok())
        .take(MAX_CODECS)
        .collect();
    Ok(RawMedia {
        media: media.to_string(),
        port,
        proto: proto.to_string(),
        fmts,
        connection: None,
        direction: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        rtcp: None,
        rtcp_mux: false,
    })
}

/// `IN IP4 192.0.2.1[/ttl]` (multicast suffixes dropped); `None` for anything unusable.
fn parse_c(value: &str) -> Option<IpAddr> {
    let mut it = value.split_ascii_whitespace();
    let (net, _ty, addr) = (it.next()?, it.next()?, it.next()?);
    if net != "IN" {
        return None;
    }
    let addr = addr.split('/').next()?;
    addr.parse().ok()
}

/// `a=rtcp:53020 [IN IP4 126.16.64.4]` (RFC 3605).
fn parse_rtcp(v: &str) -> Option<(u16, Option<IpAddr>)> {
    let mut it = v.split_ascii_whitespace();
    let port: u16 = it.next()?.parse().ok()?;
    let rest: Vec<&str> = it.collect();
    let addr = if rest.is_empty() {
        None
    } else {
        parse_c(&rest.join(" "))
    };
    Some((port, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn session_and_media_connection() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n\
            m=video 5000 RTP/AVP 96\r\nc=IN IP6 2001:db8::5\r\na=rtpmap:96 H264/90000\r\n";
        let s = parse(sdp.as_bytes()).expect("parses");
        assert_eq!(s.media.len(), 2);
        let a = s.audio().expect("audio");
        assert_eq!(a.rtp, Some(sa("10.0.0.1:4000")));
        assert_eq!(a.rtcp, Some(sa("10.0.0.1:4001")));
        assert_eq!(
            a.codecs
                .iter()
                .map(|c| c.encoding.as_str())
                .collect::<Vec<_>>(),
            ["PCMU", "PCMA", "telephone-event"]
        );
        assert_eq!(a.direction, Direction::SendRecv);
        let v = &s.media[1];
        assert_eq!(v.rtp, Some(sa("[2001:db8::5]:5000")));
        assert_eq!(v.codecs[0].clock_rate, 90000);
    }

    #[test]
    fn rtcp_mux_and_rtcp_attribute() {
        let sdp = "v=0\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 9\na=rtcp-mux\na=rtcp:4001\n\
            m=audio 6000 RTP/AVP 18\na=rtcp:7000 IN IP4 10.9.9.9\n";
        let s = parse(sdp.as_bytes()).expect("parses");
        assert_eq!(s.media[0].rtcp, Some(sa("10.0.0.1:4000")));
        assert_eq!(s.media[0].codecs[0].encoding, "G722");
        assert_eq!(s.media[1].rtcp, Some(sa("10.9.9.9:7000")));
        assert_eq!(s.media[1].codecs[0].encoding, "G729");
    }

    #[test]
    fn hold_sendonly_and_zero_address() {
        let sdp = "v=0\nc=IN IP4 10.0.0.1\na=sendonly\nm=audio 4000 RTP/AVP 0\n";
        let a = parse(sdp.as_bytes()).expect("parses").media.remove(0);
        assert_eq!(a.direction, Direction::SendOnly);
        assert_eq!(a.rtp, Some(sa("10.0.0.1:4000")));
        let sdp = "v=0\nc=IN IP4 10.0.0.1\na=sendonly\nm=audio 4000 RTP/AVP 0\na=inactive\n";
        let a = parse(sdp.as_bytes()).expect("parses").media.remove(0);
        assert_eq!(a.direction, Direction::Inactive);
        let sdp = "v=0\nc=IN IP4 0.0.0.0\nm=audio 4000 RTP/AVP 0\n";
        let a = parse(sdp.as_bytes()).expect("parses").media.remove(0);
        assert_eq!(a.direction, Direction::SendOnly);
        assert_eq!((a.rtp, a.rtcp), (None, None));
    }

    #[test]
    fn static_pts_and_disabled_streams() {
        let sdp = "v=0\nc=IN IP4 10.0.0.1\nm=audio 0 RTP/AVP 0\nm=audio 4002 RTP/AVP 3 13 97\n\
            a=rtpmap:97 opus/48000/2\n";
        let s = parse(sdp.as_bytes()).expect("parses");
        assert_eq!(s.media[0].rtp, None);
        let a = s.audio().expect("enabled audio");
        assert_eq!(a.port, 4002);
        assert_eq!(
            a.codecs,
            vec![
                RtpMap::static_pt(3).expect("gsm"),
                RtpMap::static_pt(13).expect("cn"),
                RtpMap {
                    pt: 97,
                    encoding: "opus".into(),
                    clock_rate: 48000,
                    channels: 2,
                    fmtp: None,
                }
            ]
        );
        // Dynamic PT without rtpmap: dropped rather than guessed.
        let s = parse(b"v=0\nc=IN IP4 1.1.1.1\nm=audio 1 RTP/AVP 100 0\n").expect("parses");
        assert_eq!(s.media[0].codecs.len(), 1);
    }

    #[test]
    fn fmtp_goes_with_its_payload_type_wherever_it_is() {
        let sdp = "v=0\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 18 97 101\na=fmtp:18 annexb=no\n\
            a=fmtp:97 mode-set=0,2; octet-align=1\na=rtpmap:97 AMR/8000\n\
            a=rtpmap:101 telephone-event/8000\n";
        let a = parse(sdp.as_bytes()).expect("parses").media.remove(0);
        let fmtp: Vec<Option<&str>> = a.codecs.iter().map(|c| c.fmtp.as_deref()).collect();
        assert_eq!(
            fmtp,
            [Some("annexb=no"), Some("mode-set=0,2; octet-align=1"), None]
        );
        let long = format!(
            "v=0\nm=audio 4000 RTP/AVP 0\na=fmtp:0 {}\n",
            "x".repeat(300)
        );
        assert_eq!(
            parse(long.as_bytes()).expect("parses").media[0].codecs[0].fmtp,
            None
        );
    }

    #[test]
    fn bad_input() {
        assert_eq!(parse(b"\xff"), Err(SdpError::NotUtf8));
        assert!(matches!(
            parse(b"v=0\nm=audio x RTP/AVP 0\n"),
            Err(SdpError::BadMedia(_))
        ));
        let s = parse(b"v=0\nc=IN IP4 nope\nm=audio 5 RTP/AVP 0\na=rtpmap:zz\n").expect("lenient");
        assert_eq!(s.media[0].rtp, None);
        assert_eq!(parse(b"").expect("empty").media.len(), 0);
    }
}
