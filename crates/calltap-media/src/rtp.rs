//! RTP fixed-header parsing (RFC 3550 §5.1).
//!
//! The recorder only needs the header fields and the audio payload, so CSRC lists and header
//! extensions are validated and skipped rather than exposed.

use thiserror::Error;

/// Length of the fixed RTP header.
pub const FIXED_HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("RTP packet too short: {0} bytes")]
    TooShort(usize),
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    #[error("CSRC list runs past the end of the packet")]
    TruncatedCsrc,
    #[error("header extension runs past the end of the packet")]
    TruncatedExtension,
    #[error("padding length {pad} invalid for {available} bytes after the header")]
    BadPadding { pad: u8, available: usize },
}

/// A parsed RTP packet borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Number of CSRC identifiers that were skipped (mixers only).
    pub csrc_count: u8,
    /// Profile-defined identifier of the header extension, if one was present and skipped.
    pub extension_profile: Option<u16>,
    /// Payload with any padding removed.
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl<'a> RtpPacket<'a> {
    /// Parses `buf` as an RTP version 2 packet.
    ///
    /// Padding is validated (it must fit between the header and the end of the packet) so a
    /// corrupt padding count can never shift the payload slice out of range.
    pub fn parse(buf: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        let [b0, b1, ..] = *buf else {
            return Err(RtpError::TooShort(buf.len()));
        };
        let version = b0 >> 6;
        if buf.len() < FIXED_HEADER_LEN {
            // Report a wrong version in preference to length: it is the better diagnosis for
            // non-RTP traffic.
            if version != 2 {
                return Err(RtpError::BadVersion(version));
            }
            return Err(RtpError::TooShort(buf.len()));
        }
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = b0 & 0x20 != 0;
        let extension = b0 & 0x10 != 0;
        let csrc_count = b0 & 0x0f;
        let marker = b1 & 0x80 != 0;
        let payload_type = b1 & 0x7f;
        let too_short = RtpError::TooShort(buf.len());
        let sequence = be16(buf, 2).ok_or(too_short)?;
        let timestamp = be32(buf, 4).ok_or(too_short)?;
        let ssrc = be32(buf, 8).ok_or(too_short)?;

        let mut at = FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
        if at > buf.len() {
            return Err(RtpError::TruncatedCsrc);
        }
        let mut extension_profile = None;
        if extension {
            let profile = be16(buf, at).ok_or(RtpError::TruncatedExtension)?;
            let words = be16(buf, at + 2).ok_or(RtpError::TruncatedExtension)?;
            at += 4 + 4 * usize::from(words);
            if at > buf.len() {
                return Err(RtpError::TruncatedExtension);
            }
            extension_profile = Some(profile);
        }
        let rest = buf.get(at..).ok_or(RtpError::TruncatedExtension)?;
        let payload = if padding {
            let pad = rest.last().copied().unwrap_or(0);
            let available = rest.len();
            if pad == 0 || usize::from(pad) > available {
                return Err(RtpError::BadPadding { pad, available });
            }
            rest.get(..available - usize::from(pad))
                .ok_or(RtpError::BadPadding { pad, available })?
        } else {
            rest
        };
        Ok(RtpPacket {
            marker,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrc_count,
            extension_profile,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(b0: u8, b1: u8) -> Vec<u8> {
        vec![
            b0, b1, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04,
        ]
    }

    #[test]
    fn plain_packet() {
        let mut p = header(0x80, 0x80 | 8);
        p.extend_from_slice(&[1, 2, 3]);
        let r = RtpPacket::parse(&p).unwrap();
        assert!(r.marker);
        assert_eq!(r.payload_type, 8);
        assert_eq!(r.sequence, 0x1234);
        assert_eq!(r.timestamp, 0xdead_beef);
        assert_eq!(r.ssrc, 0x0102_0304);
        assert_eq!(r.payload, &[1, 2, 3]);
        assert_eq!(r.csrc_count, 0);
        assert_eq!(r.extension_profile, None);
    }

    #[test]
    fn csrc_extension_and_padding() {
        // V=2, P=1, X=1, CC=2
        let mut p = header(0x80 | 0x20 | 0x10 | 2, 0);
        p.extend_from_slice(&[0xaa; 8]); // two CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01]); // extension header, one word
        p.extend_from_slice(&[0x10, 0x20, 0x30, 0x40]);
        p.extend_from_slice(&[7, 8, 9]); // payload
        p.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(r.csrc_count, 2);
        assert_eq!(r.extension_profile, Some(0xbede));
        assert_eq!(r.payload, &[7, 8, 9]);
    }

    #[test]
    fn bad_padding() {
        let mut p = header(0xa0, 0);
        p.extend_from_slice(&[1, 2, 5]);
        assert_eq!(
            RtpPacket::parse(&p),
            Err(RtpError::BadPadding {
                pad: 5,
                available: 3
            })
        );
        let mut p = header(0xa0, 0);
        p.extend_from_slice(&[1, 2, 0]);
        assert!(matches!(
            RtpPacket::parse(&p),
            Err(RtpError::BadPadding { pad: 0, .. })
        ));
        // Padding with no payload byte at all.
        let p = header(0xa0, 0);
        assert!(matches!(
            RtpPacket::parse(&p),
            Err(RtpError::BadPadding { .. })
        ));
        // Padding consuming the whole payload is legal.
        let mut p = header(0xa0, 0);
        p.extend_from_slice(&[0, 2]);
        assert_eq!(RtpPacket::parse(&p).unwrap().payload, &[] as &[u8]);
    }

    #[test]
    fn bad_version() {
        let p = header(0x40, 0);
        assert_eq!(RtpPacket::parse(&p), Err(RtpError::BadVersion(1)));
    }

    #[test]
    fn truncated_at_every_length() {
        let mut p = header(0x80 | 0x10 | 1, 0);
        p.extend_from_slice(&[0xaa; 4]);
        p.extend_from_slice(&[0x10, 0x00, 0x00, 0x02]);
        p.extend_from_slice(&[0; 8]);
        let full = p.len();
        p.extend_from_slice(&[1, 2]);
        assert_eq!(RtpPacket::parse(&p).unwrap().payload, &[1, 2]);
        assert_eq!(RtpPacket::parse(&p[..full]).unwrap().payload, &[] as &[u8]);
        for n in 0..full {
            let e = RtpPacket::parse(&p[..n]).unwrap_err();
            let expect = match n {
                0..=11 => RtpError::TooShort(n),
                12..=15 => RtpError::TruncatedCsrc,
                _ => RtpError::TruncatedExtension,
            };
            assert_eq!(e, expect, "length {n}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = RtpPacket::parse(&data) {
                prop_assert!(p.payload.len() + FIXED_HEADER_LEN <= data.len());
            }
        }

        #[test]
        fn never_panics_v2(mut data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(b) = data.first_mut() {
                *b = (*b & 0x3f) | 0x80;
            }
            let _ = RtpPacket::parse(&data);
        }
    }
}
