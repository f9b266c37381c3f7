//! RTCP compound-packet parsing (RFC 3550 §6.4).
//!
//! Only sender and receiver reports matter to the recorder (they carry the far end's view of
//! loss and jitter); every other packet type is surfaced as [`RtcpPacket::Other`] so callers
//! can count it. Report blocks are exposed as a borrowed view, so parsing never allocates.

use thiserror::Error;

/// RTCP packet type of a sender report.
pub const PT_SR: u8 = 200;
/// RTCP packet type of a receiver report.
pub const PT_RR: u8 = 201;

const HEADER_LEN: usize = 4;
const REPORT_BLOCK_LEN: usize = 24;
const SR_INFO_LEN: usize = 24; // SSRC + NTP + RTP timestamp + counts

/// Why (part of) a compound RTCP packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("RTCP packet truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported RTCP version {0}")]
    BadVersion(u8),
    #[error("RTCP padding length {0} invalid")]
    BadPadding(u8),
    #[error("{count} report blocks do not fit in a {len}-byte RTCP packet")]
    BadReportCount { count: u8, len: usize },
}

/// One reception report block: the sender's view of a stream it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

/// The report blocks of an SR or RR, validated at parse time and decoded lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlocks<'a> {
    data: &'a [u8],
}

impl<'a> ReportBlocks<'a> {
    /// Number of report blocks.
    pub fn len(&self) -> usize {
        self.data.len() / REPORT_BLOCK_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates over the report blocks in packet order.
    pub fn iter(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        self.data
            .chunks_exact(REPORT_BLOCK_LEN)
            .filter_map(parse_block)
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn parse_block(b: &[u8]) -> Option<ReportBlock> {
    let lost = be32(b, 4)?;
    // Sign-extend the 24-bit cumulative loss.
    let cumulative_lost = ((lost << 8) as i32) >> 8;
    Some(ReportBlock {
        ssrc: be32(b, 0)?,
        fraction_lost: (lost >> 24) as u8,
        cumulative_lost,
        highest_seq: be32(b, 8)?,
        jitter: be32(b, 12)?,
        lsr: be32(b, 16)?,
        dlsr: be32(b, 20)?,
    })
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    SenderReport {
        ssrc: u32,
        /// 64-bit NTP timestamp of the report.
        ntp: u64,
        rtp_ts: u32,
        packets: u32,
        octets: u32,
        reports: ReportBlocks<'a>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: ReportBlocks<'a>,
    },
    /// SDES, BYE, APP, feedback, XR, ...: recognised but not decoded.
    Other { pt: u8 },
}

/// Iterator over the packets of a compound RTCP packet; see [`parse_compound`].
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// Walks a compound RTCP packet by its length fields.
///
/// Iteration stops after the first error: once a length field is untrustworthy, nothing after
/// it can be located reliably.
pub fn parse_compound(buf: &[u8]) -> Compound<'_> {
    Compound {
        rest: buf,
        failed: false,
    }
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = self.next_packet();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

impl<'a> Compound<'a> {
    fn next_packet(&mut self) -> Result<RtcpPacket<'a>, RtcpError> {
        let buf = self.rest;
        let &[b0, pt, l0, l1, ..] = buf else {
            return Err(RtcpError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        };
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion(version));
        }
        let len = (usize::from(u16::from_be_bytes([l0, l1])) + 1) * 4;
        let Some(pkt) = buf.get(..len) else {
            return Err(RtcpError::Truncated {
                needed: len,
                available: buf.len(),
            });
        };
        self.rest = buf.get(len..).unwrap_or_default();
        let body = if b0 & 0x20 != 0 {
            let pad = pkt.last().copied().unwrap_or(0);
            let end = len
                .checked_sub(usize::from(pad))
                .filter(|&e| pad != 0 && e >= HEADER_LEN)
                .ok_or(RtcpError::BadPadding(pad))?;
            pkt.get(HEADER_LEN..end).unwrap_or_default()
        } else {
            pkt.get(HEADER_LEN..).unwrap_or_default()
        };
        let count = b0 & 0x1f;
        let fixed = match pt {
            PT_SR => SR_INFO_LEN,
            PT_RR => 4,
            _ => return Ok(RtcpPacket::Other { pt }),
        };
        if body.len() < fixed {
            return Err(RtcpError::Truncated {
                needed: HEADER_LEN + fixed,
                available: HEADER_LEN + body.len(),
            });
        }
        let blocks_len = usize::from(count) * REPORT_BLOCK_LEN;
        let reports = body
            .get(fixed..fixed + blocks_len)
            .map(|data| ReportBlocks { data })
            .ok_or(RtcpError::BadReportCount { count, len })?;
        let word = |at: usize| be32(body, at).unwrap_or(0);
        let ssrc = word(0);
        Ok(if pt == PT_SR {
            RtcpPacket::SenderReport {
                ssrc,
                ntp: (u64::from(word(4)) << 32) | u64::from(word(8)),
                rtp_ts: word(12),
                packets: word(16),
                octets: word(20),
                reports,
            }
        } else {
            RtcpPacket::ReceiverReport { ssrc, reports }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(ssrc: u32, fraction: u8, cum: i32, jitter: u32) -> Vec<u8> {
        let mut v = ssrc.to_be_bytes().to_vec();
        let lost = (u32::from(fraction) << 24) | (cum as u32 & 0x00ff_ffff);
        v.extend_from_slice(&lost.to_be_bytes());
        v.extend_from_slice(&0x0001_0203u32.to_be_bytes());
        v.extend_from_slice(&jitter.to_be_bytes());
        v.extend_from_slice(&0x1111_2222u32.to_be_bytes());
        v.extend_from_slice(&0x3333_4444u32.to_be_bytes());
        v
    }

    fn packet(count: u8, pt: u8, body: &[u8]) -> Vec<u8> {
        assert_eq!(body.len() % 4, 0);
        let words = (body.len() / 4) as u16;
        let mut v = vec![0x80 | count, pt];
        v.extend_from_slice(&words.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn sr_rr_sdes() -> Vec<u8> {
        let mut sr = 0xaaaa_aaaau32.to_be_bytes().to_vec();
        sr.extend_from_slice(&0x8000_0001u32.to_be_bytes());
        sr.extend_from_slice(&0x4000_0000u32.to_be_bytes());
        sr.extend_from_slice(&160u32.to_be_bytes());
        sr.extend_from_slice(&50u32.to_be_bytes());
        sr.extend_from_slice(&8000u32.to_be_bytes());
        sr.extend(block(0xbbbb_bbbb, 64, 12, 80));
        let mut out = packet(1, PT_SR, &sr);
        let mut rr = 0xcccc_ccccu32.to_be_bytes().to_vec();
        rr.extend(block(1, 0, -3, 1));
        rr.extend(block(2, 255, 0x7f_ffff, 2));
        out.extend(packet(2, PT_RR, &rr));
        out.extend(packet(1, 202, &[0, 0, 0, 1, 1, 2, b'a', b'b']));
        out
    }

    #[test]
    fn sr_rr_compound() {
        let buf = sr_rr_sdes();
        let pkts: Vec<_> = parse_compound(&buf).collect();
        assert_eq!(pkts.len(), 3);
        match pkts[0].unwrap() {
            RtcpPacket::SenderReport {
                ssrc,
                ntp,
                rtp_ts,
                packets,
                octets,
                reports,
            } => {
                assert_eq!(ssrc, 0xaaaa_aaaa);
                assert_eq!(ntp, 0x8000_0001_4000_0000);
                assert_eq!((rtp_ts, packets, octets), (160, 50, 8000));
                assert_eq!(reports.len(), 1);
                let b = reports.iter().next().unwrap();
                assert_eq!(b.ssrc, 0xbbbb_bbbb);
                assert_eq!(b.fraction_lost, 64);
                assert_eq!(b.cumulative_lost, 12);
                assert_eq!(b.highest_seq, 0x0001_0203);
                assert_eq!(b.jitter, 80);
                assert_eq!((b.lsr, b.dlsr), (0x1111_2222, 0x3333_4444));
            }
            other => panic!("{other:?}"),
        }
        match pkts[1].unwrap() {
            RtcpPacket::ReceiverReport { ssrc, reports } => {
                assert_eq!(ssrc, 0xcccc_cccc);
                let b: Vec<_> = reports.iter().collect();
                assert_eq!(b.len(), 2);
                assert_eq!(b[0].cumulative_lost, -3);
                assert_eq!(b[1].cumulative_lost, 0x7f_ffff);
                assert_eq!(b[1].fraction_lost, 255);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pkts[2], Ok(RtcpPacket::Other { pt: 202 }));
    }

    #[test]
    fn stops_after_error() {
        let mut buf = sr_rr_sdes();
        buf.truncate(buf.len() - 2);
        let pkts: Vec<_> = parse_compound(&buf).collect();
        assert_eq!(pkts.len(), 3);
        assert!(pkts[0].is_ok() && pkts[1].is_ok());
        assert!(matches!(pkts[2], Err(RtcpError::Truncated { .. })));

        let mut bad = packet(0, PT_RR, &[0, 0, 0, 1]);
        bad[0] = 0x40;
        bad.extend(packet(0, PT_RR, &[0, 0, 0, 1]));
        let pkts: Vec<_> = parse_compound(&bad).collect();
        assert_eq!(pkts, vec![Err(RtcpError::BadVersion(1))]);
    }

    #[test]
    fn report_count_overflow() {
        let buf = packet(2, PT_RR, &block(1, 0, 0, 0)[..4]);
        let pkts: Vec<_> = parse_compound(&buf).collect();
        assert!(matches!(
            pkts[0],
            Err(RtcpError::BadReportCount { count: 2, .. })
        ));
    }

    #[test]
    fn padding() {
        let mut body = 7u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 4]);
        let mut buf = packet(0, PT_RR, &body);
        buf[0] |= 0x20;
        let pkts: Vec<_> = parse_compound(&buf).collect();
        assert!(matches!(
            pkts[0],
            Ok(RtcpPacket::ReceiverReport { ssrc: 7, .. })
        ));
        let last = buf.len() - 1;
        buf[last] = 40;
        assert_eq!(
            parse_compound(&buf).next(),
            Some(Err(RtcpError::BadPadding(40)))
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            for p in parse_compound(&data) {
                if let Ok(RtcpPacket::SenderReport { reports, .. } | RtcpPacket::ReceiverReport { reports, .. }) = p {
                    prop_assert_eq!(reports.iter().count(), reports.len());
                }
            }
        }

        #[test]
        fn never_panics_v2(mut data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(b) = data.first_mut() {
                *b = (*b & 0x3f) | 0x80;
            }
            if let Some(b) = data.get_mut(1) {
                *b = 200 + (*b & 1);
            }
            let n = parse_compound(&data).count();
            prop_assert!(n <= data.len() / 4 + 1);
        }
    }
}
