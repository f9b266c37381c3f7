//! pcap and pcapng files as a capture source (`calltap replay`).
//!
//! The file is memory-mapped and parsed with `pcap-file`'s zero-copy parsers, so byte offsets
//! are known and a damaged file is reported as "file, offset, what". Non-Ethernet link types
//! (Linux cooked SLL/SLL2, BSD loopback, raw IP) get a synthetic Ethernet header so the one
//! classifier handles them all.

use std::{fs::File, path::Path, time::Duration};

use memmap2::{Advice, Mmap, UncheckedAdvice};
use pcap_file::{
    pcap::PcapParser,
    pcapng::{blocks::interface_description::InterfaceDescriptionOption, Block, PcapNgParser},
    PcapError,
};

use super::CaptureError;

/// One frame from a capture file, normalised to start at an Ethernet header.
pub struct FilePacket<'a> {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub wire_len: u32,
    pub frame: &'a [u8],
}

/// Reads every packet of `path`, calling `each` in file order. Packets of link types CallTap
/// cannot interpret are counted in the returned summary and skipped.
pub fn read_file(
    path: &Path,
    mut each: impl FnMut(FilePacket<'_>),
) -> Result<FileSummary, CaptureError> {
    let display = path.display().to_string();
    let file = File::open(path).map_err(|e| CaptureError::File {
        path: display.clone(),
        reason: e.to_string(),
    })?;
    // SAFETY: the mapping is read-only; a capture file truncated underneath us while replaying
    // would be the operator's doing, the same as with read(2) returning garbage.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| CaptureError::File {
        path: display.clone(),
        reason: e.to_string(),
    })?;
    // Read once, front to back: tell the kernel, and hand pages already parsed back (below), so
    // replaying a 50 GB capture does not grow RSS by 50 GB of page cache mapped into us.
    let _ = map.advise(Advice::Sequential);
    let mut released = 0usize;
    let release = |consumed: usize| {
        const STEP: usize = 256 << 10;
        if consumed - released >= 2 * STEP {
            let upto = consumed & !(STEP - 1);
            // SAFETY: a shared, read-only file mapping: MADV_DONTNEED drops our page table entries
            // and a later access would re-read the file. The parsers have moved past these bytes.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, released, upto - released)
            };
            released = upto;
        }
    };
    read_with(&map, &display, release, &mut each)
}

/// As [`read_file`], from a capture already in memory; `name` stands for the file in errors.
pub fn read_bytes(
    data: &[u8],
    name: &str,
    mut each: impl FnMut(FilePacket<'_>),
) -> Result<FileSummary, CaptureError> {
    read_with(data, name, |_| {}, &mut each)
}

/// Parses `data`, calling `release` with the bytes consumed so far as the parsers move on.
fn read_with(
    data: &[u8],
    display: &str,
    mut release: impl FnMut(usize),
    each: &mut impl FnMut(FilePacket<'_>),
) -> Result<FileSummary, CaptureError> {
    if data.len() < 4 {
        return Err(CaptureError::BadFile {
            path: display.to_string(),
            offset: 0,
            reason: "too short to be a pcap or pcapng file".into(),
        });
    }
    let mut summary = FileSummary::default();
    let mut scratch = Vec::with_capacity(65536);
    let magic = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let bad = |rest: &[u8], e: PcapError| CaptureError::BadFile {
        path: display.to_string(),
        offset: (data.len() - rest.len()) as u64,
        reason: e.to_string(),
    };
    if magic == 0x0A0D_0D0A {
        let (mut rest, mut parser) = PcapNgParser::new(data).map_err(|e| bad(data, e))?;
        // (linktype, nanoseconds per timestamp unit) per interface id.
        let mut ifaces: Vec<(u32, u64)> = parser
            .interfaces()
            .iter()
            .map(|i| (u32::from(i.linktype), ts_unit_ns(&i.options)))
            .collect();
        while !rest.is_empty() {
            let (next, block) = parser.next_block(rest).map_err(|e| bad(rest, e))?;
            release(data.len() - rest.len());
            rest = next;
            match block {
                Block::InterfaceDescription(i) => {
                    ifaces.push((u32::from(i.linktype), ts_unit_ns(&i.options)))
                }
                Block::SectionHeader(_) => ifaces.clear(),
                Block::EnhancedPacket(p) => {
                    let Some(&(linktype, unit)) = ifaces.get(p.interface_id as usize) else {
                        summary.packets += 1;
                        summary.skipped += 1;
                        continue;
                    };
                    // pcap-file hands back the raw timestamp as if it were nanoseconds.
                    let ts_ns = (p.timestamp.as_nanos() as u64).saturating_mul(unit);
                    emit(
                        linktype,
                        ts_ns,
                        p.original_len,
                        &p.data,
                        &mut scratch,
                        &mut summary,
                        each,
                    );
                }
                Block::SimplePacket(p) => {
                    let linktype = ifaces.first().map_or(1, |i| i.0);
                    emit(
                        linktype,
                        0,
                        p.original_len,
                        &p.data,
                        &mut scratch,
                        &mut summary,
                        each,
                    );
                }
                _ => {}
            }
        }
    } else {
        let (mut rest, parser) = PcapParser::new(data).map_err(|e| bad(data, e))?;
        let linktype = u32::from(parser.header().datalink);
        while !rest.is_empty() {
            let (next, p) = parser.next_packet(rest).map_err(|e| bad(rest, e))?;
            release(data.len() - rest.len());
            rest = next;
            let ts_ns = duration_ns(p.timestamp);
            emit(
                linktype,
                ts_ns,
                p.orig_len,
                &p.data,
                &mut scratch,
                &mut summary,
                each,
            );
        }
    }
    Ok(summary)
}

/// What a file held besides the frames handed out.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileSummary {
    /// Packets in the file, those skipped included.
    pub packets: u64,
    /// Frames of link types CallTap does not interpret.
    pub skipped: u64,
}

fn duration_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Nanoseconds per timestamp unit from an interface's `if_tsresol` (default microseconds).
fn ts_unit_ns(options: &[InterfaceDescriptionOption<'_>]) -> u64 {
    for o in options {
        if let InterfaceDescriptionOption::IfTsResol(r) = o {
            return if r & 0x80 == 0 {
                // 10^-r seconds.
                10u64
                    .checked_pow(9u32.saturating_sub(u32::from(*r)))
                    .unwrap_or(1)
            } else {
                // 2^-r seconds: approximate with nanoseconds; such files are rare.
                1
            };
        }
    }
    1_000
}

const LINKTYPE_NULL: u32 = 0;
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW_BSD: u32 = 12;
const LINKTYPE_RAW_BSD14: u32 = 14;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LOOP: u32 = 108;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;

fn emit(
    linktype: u32,
    ts_ns: u64,
    orig_len: u32,
    data: &[u8],
    scratch: &mut Vec<u8>,
    summary: &mut FileSummary,
    each: &mut impl FnMut(FilePacket<'_>),
) {
    summary.packets += 1;
    // (ethertype, offset of the network header) for link types that are not Ethernet.
    let rewrite = match linktype {
        LINKTYPE_ETHERNET => {
            each(FilePacket {
                ts_ns,
                wire_len: orig_len,
                frame: data,
            });
            return;
        }
        LINKTYPE_LINUX_SLL if data.len() >= 16 => {
            Some((u16::from_be_bytes([data[14], data[15]]), 16))
        }
        LINKTYPE_LINUX_SLL2 if data.len() >= 20 => {
            Some((u16::from_be_bytes([data[0], data[1]]), 20))
        }
        LINKTYPE_NULL | LINKTYPE_LOOP if data.len() >= 4 => {
            // The address family, in the byte order of the capturing host (or network order
            // for LOOP); 2 is IPv4 everywhere, 24/28/30 are IPv6 on the BSDs.
            let le = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            let be = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            match (le, be) {
                (2, _) | (_, 2) => Some((0x0800, 4)),
                (24 | 28 | 30, _) | (_, 24 | 28 | 30) => Some((0x86DD, 4)),
                _ => None,
            }
        }
        LINKTYPE_RAW | LINKTYPE_RAW_BSD | LINKTYPE_RAW_BSD14 | LINKTYPE_IPV4 | LINKTYPE_IPV6 => {
            match data.first().map(|b| b >> 4) {
                Some(4) => Some((0x0800, 0)),
                Some(6) => Some((0x86DD, 0)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((ethertype, off)) = rewrite else {
        summary.skipped += 1;
        return;
    };
    scratch.clear();
    scratch.extend_from_slice(&[0u8; 12]);
    scratch.extend_from_slice(&ethertype.to_be_bytes());
    scratch.extend_from_slice(&data[off..]);
    let wire_len = (orig_len as usize).saturating_sub(off) as u32 + 14;
    each(FilePacket {
        ts_ns,
        wire_len,
        frame: scratch,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcapng block: type, length, body (padded to 4 bytes), length.
    fn block(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut body = body.to_vec();
        body.resize(body.len().next_multiple_of(4), 0);
        let len = (12 + body.len()) as u32;
        [
            &kind.to_le_bytes()[..],
            &len.to_le_bytes(),
            &body,
            &len.to_le_bytes(),
        ]
        .concat()
    }

    fn section_header() -> Vec<u8> {
        let body = [
            &0x1A2B_3C4Du32.to_le_bytes()[..],
            &1u16.to_le_bytes(),
            &0u16.to_le_bytes(),
            &(-1i64).to_le_bytes(),
        ]
        .concat();
        block(0x0A0D_0D0A, &body)
    }

    fn enhanced_packet(interface: u32, frame: &[u8]) -> Vec<u8> {
        let len = (frame.len() as u32).to_le_bytes();
        let body = [
            &interface.to_le_bytes()[..],
            &0u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &len,
            &len,
            frame,
        ]
        .concat();
        block(6, &body)
    }

    /// Found by fuzzing (`pcap_reader`): a packet of an interface the file never described was
    /// counted as skipped but not as a packet, so `skipped` could exceed `packets`.
    #[test]
    fn a_packet_of_an_unknown_interface_is_counted_and_skipped() {
        let ethernet = block(1, &[1, 0, 0, 0, 0xff, 0xff, 0, 0]);
        let frame = [0u8; 60];
        let file = [
            section_header(),
            enhanced_packet(3, &frame),
            ethernet,
            enhanced_packet(0, &frame),
        ]
        .concat();
        let mut handed = 0;
        let summary = read_bytes(&file, "test", |p| {
            assert_eq!(p.frame, &frame[..]);
            handed += 1;
        })
        .expect("a valid file");
        assert_eq!((summary.packets, summary.skipped, handed), (2, 1, 1));
    }
}
