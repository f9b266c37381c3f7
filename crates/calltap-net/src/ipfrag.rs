//! IPv4 / IPv6 fragment reassembly.
//!
//! SIP over UDP regularly exceeds the path MTU (large SDP offers, many `Via`/`Record-Route`
//! headers), so the INVITE that starts a call often arrives as IP fragments. A passive
//! recorder cannot ask for a retransmission, so it must put those fragments back together
//! itself — while never trusting the sender: every length and offset comes from the wire and is
//! bounds-checked, memory is capped, and incomplete datagrams are expired.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// Why a packet could not be parsed as a fragment or a fragment could not be reassembled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FragError {
    /// The packet ends before a header or a length field says it should.
    #[error("packet truncated")]
    Truncated,
    /// The first nibble is neither 4 nor 6.
    #[error("unsupported IP version {0}")]
    BadVersion(u8),
    /// A header field has an impossible value.
    #[error("malformed header: {0}")]
    BadHeader(&'static str),
    /// The fragment would extend the datagram past the configured maximum size.
    #[error("fragment ends at byte {end}, beyond the maximum datagram size")]
    TooLarge {
        /// Offset one past the fragment's last byte.
        end: usize,
    },
    /// Two fragments cover the same bytes with different contents (an evasion attempt or a
    /// corrupt capture); the whole datagram is dropped because there is no way to know which
    /// copy the receiver used.
    #[error("overlapping fragments disagree; datagram dropped")]
    Overlap,
    /// Fragments disagree on where the datagram ends; the datagram is dropped.
    #[error("fragments disagree on the datagram length; datagram dropped")]
    Inconsistent,
    /// A fragment with no data: no sender makes one, and its offset (possibly past the
    /// datagram's end) would go unchecked; the datagram is dropped, as Linux does.
    #[error("fragment without data; datagram dropped")]
    Empty,
    /// Accepting the fragment would exceed the memory budget even after evicting others.
    #[error("reassembly memory limit exceeded")]
    LimitExceeded,
}

/// Identifies one datagram being reassembled (RFC 791 / RFC 8200: source, destination,
/// identification and protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address of the datagram.
    pub src: IpAddr,
    /// Destination address of the datagram.
    pub dst: IpAddr,
    /// IP identification (IPv4: 16 bits widened; IPv6: the Fragment header's 32 bits).
    pub id: u32,
    /// Upper-layer protocol (IPv4 `protocol`; IPv6 `next header` of the Fragment header).
    pub protocol: u8,
}

/// One fragment, copied out of the packet so the capture buffer can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Datagram this fragment belongs to.
    pub key: FragKey,
    /// Byte offset of `data` within the reassembled payload.
    pub offset: usize,
    /// "More fragments" flag: false only for the fragment that ends the datagram.
    pub more: bool,
    /// The fragment's share of the payload (after the IP header / Fragment header).
    pub data: Vec<u8>,
}

/// A completely reassembled datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// Datagram identity; `key.protocol` says how to read `data` (17 = UDP).
    pub key: FragKey,
    /// The IP payload, i.e. the transport header followed by its payload (for UDP, feed it to
    /// [`udp_ports`]).
    pub data: Vec<u8>,
}

/// What one held fragment costs besides its bytes: its entry in the datagram's list of
/// received ranges (rebuilt, and searched, on every fragment).
pub const FRAGMENT_OVERHEAD: usize = 32;

/// What one pending datagram costs besides its bytes and fragments: its table entry and state.
pub const DATAGRAM_OVERHEAD: usize = std::mem::size_of::<(FragKey, Pending)>() + 16;

/// Limits that keep a fragment flood from exhausting memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Datagrams reassembled concurrently; beyond this the oldest one is evicted.
    pub max_datagrams: usize,
    /// Largest reassembled payload accepted (IPv4 cannot exceed 65535 anyway).
    pub max_datagram_size: usize,
    /// A datagram still incomplete this long after its first fragment is discarded.
    pub timeout_ns: u64,
    /// Bytes held across all pending datagrams: each one's buffer (up to its highest
    /// fragment end, so a lone fragment far into a datagram holds everything before it) plus
    /// [`FRAGMENT_OVERHEAD`] per fragment and [`DATAGRAM_OVERHEAD`] per datagram.
    pub max_total_bytes: usize,
    /// Distinct fragments one datagram may have; a datagram with more is dropped. Real ones
    /// have a handful (64 KiB in 576-byte fragments is 117); tiny fragments only cost time,
    /// since every fragment is checked against those held.
    pub max_fragments_per_datagram: usize,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_datagrams: 256,
            max_datagram_size: 65535,
            // Linux uses 30 s (ipfrag_time), but SIP retransmits after 500 ms anyway, so a
            // short timeout keeps memory low without losing anything useful.
            timeout_ns: 5_000_000_000,
            max_total_bytes: 8 * 1024 * 1024,
            max_fragments_per_datagram: 128,
        }
    }
}

/// Counters, so operators can tell a lossy capture from an attack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragStats {
    /// Datagrams fully reassembled.
    pub completed: u64,
    /// Datagrams discarded because they stayed incomplete past the timeout.
    pub timed_out: u64,
    /// Datagrams discarded because overlapping fragments disagreed (or ends disagreed).
    pub dropped_overlap: u64,
    /// Datagrams or fragments discarded by the count / size / memory limits.
    pub dropped_limit: u64,
    /// Fragments that only repeated bytes already held.
    pub duplicates: u64,
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

fn be16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Extracts the fragment carried by `ip`, a packet starting at its IPv4 or IPv6 header.
///
/// Returns `Ok(None)` for a packet that is not fragmented. Trailing bytes beyond the IP length
/// fields (Ethernet padding) are ignored.
pub fn fragment_of(ip: &[u8]) -> Result<Option<Fragment>, FragError> {
    let first = *ip.first().ok_or(FragError::Truncated)?;
    match first >> 4 {
        4 => fragment_of_v4(ip),
        6 => fragment_of_v6(ip),
        v => Err(FragError::BadVersion(v)),
    }
}

fn fragment_of_v4(ip: &[u8]) -> Result<Option<Fragment>, FragError> {
    let ihl = usize::from(ip.first().ok_or(FragError::Truncated)? & 0x0f) * 4;
    if ihl < 20 {
        return Err(FragError::BadHeader("IPv4 IHL below 5"));
    }
    let total = usize::from(be16(ip, 2).ok_or(FragError::Truncated)?);
    if total < ihl {
        return Err(FragError::BadHeader(
            "IPv4 total length below header length",
        ));
    }
    let flags_off = be16(ip, 6).ok_or(FragError::Truncated)?;
    let more = flags_off & 0x2000 != 0;
    let offset = usize::from(flags_off & 0x1fff) * 8;
    if !more && offset == 0 {
        return Ok(None);
    }
    let id = u32::from(be16(ip, 4).ok_or(FragError::Truncated)?);
    let protocol = *ip.get(9).ok_or(FragError::Truncated)?;
    let src = Ipv4Addr::from(array::<4>(ip, 12).ok_or(FragError::Truncated)?);
    let dst = Ipv4Addr::from(array::<4>(ip, 16).ok_or(FragError::Truncated)?);
    let data = ip.get(ihl..total).ok_or(FragError::Truncated)?;
    Ok(Some(Fragment {
        key: FragKey {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            id,
            protocol,
        },
        offset,
        more,
        data: data.to_vec(),
    }))
}

fn fragment_of_v6(ip: &[u8]) -> Result<Option<Fragment>, FragError> {
    let payload_len = usize::from(be16(ip, 4).ok_or(FragError::Truncated)?);
    if payload_len == 0 {
        // Jumbograms (RFC 2675) cannot be fragmented, and a zero-length payload has nothing
        // to carry.
        return Ok(None);
    }
    let end = 40usize
        .checked_add(payload_len)
        .ok_or(FragError::Truncated)?;
    let packet = ip.get(..end).ok_or(FragError::Truncated)?;
    let src = Ipv6Addr::from(array::<16>(packet, 8).ok_or(FragError::Truncated)?);
    let dst = Ipv6Addr::from(array::<16>(packet, 24).ok_or(FragError::Truncated)?);
    let mut next = *packet.get(6).ok_or(FragError::Truncated)?;
    let mut pos = 40usize;
    // Each extension header is at least 8 bytes, so this walk is bounded by the packet length.
    loop {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let nh = *packet.get(pos).ok_or(FragError::Truncated)?;
                let len = (usize::from(*packet.get(pos + 1).ok_or(FragError::Truncated)?) + 1) * 8;
                pos = pos.checked_add(len).ok_or(FragError::Truncated)?;
                if pos > packet.len() {
                    return Err(FragError::Truncated);
                }
                next = nh;
            }
            IPV6_FRAGMENT => {
                let protocol = *packet.get(pos).ok_or(FragError::Truncated)?;
                let off_flags = be16(packet, pos + 2).ok_or(FragError::Truncated)?;
                let id = be32(packet, pos + 4).ok_or(FragError::Truncated)?;
                let data = packet.get(pos + 8..).ok_or(FragError::Truncated)?;
                return Ok(Some(Fragment {
                    key: FragKey {
                        src: IpAddr::V6(src),
                        dst: IpAddr::V6(dst),
                        id,
                        protocol,
                    },
                    offset: usize::from(off_flags & 0xfff8),
                    more: off_flags & 1 != 0,
                    data: data.to_vec(),
                }));
            }
            _ => return Ok(None),
        }
    }
}

/// Parses a UDP header: `(source port, destination port, payload)`.
///
/// The payload is bounded by the UDP length field, so padding after the datagram is never
/// mistaken for data. Returns `None` when the header is short or the length is impossible.
pub fn udp_ports(udp: &[u8]) -> Option<(u16, u16, &[u8])> {
    let sport = be16(udp, 0)?;
    let dport = be16(udp, 2)?;
    let len = usize::from(be16(udp, 4)?);
    if len < 8 {
        return None;
    }
    let payload = udp.get(8..len)?;
    Some((sport, dport, payload))
}

/// A datagram still missing fragments.
#[derive(Debug)]
struct Pending {
    first_ns: u64,
    /// Distinct (not fully duplicate) fragments received.
    fragments: usize,
    /// Payload length, known once the fragment without "more fragments" arrives.
    total: Option<usize>,
    buf: Vec<u8>,
    /// Sorted, non-overlapping, non-adjacent `[start, end)` ranges of `buf` already received.
    have: Vec<(usize, usize)>,
}

enum Insert {
    Duplicate,
    Added,
}

impl Pending {
    fn new(now_ns: u64) -> Self {
        Self {
            first_ns: now_ns,
            fragments: 0,
            total: None,
            buf: Vec::new(),
            have: Vec::new(),
        }
    }

    /// Bytes held, as [`ReassemblyConfig::max_total_bytes`] counts them.
    fn held(&self) -> usize {
        self.buf.len() + self.fragments * FRAGMENT_OVERHEAD + DATAGRAM_OVERHEAD
    }

    fn complete(&self) -> bool {
        match (self.total, self.have.as_slice()) {
            (Some(t), [(0, end)]) => *end == t,
            (Some(0), []) => true,
            _ => false,
        }
    }

    /// Records `data` at `start`. Overlaps are allowed only when the bytes agree.
    fn insert(&mut self, start: usize, data: &[u8]) -> Result<Insert, FragError> {
        let end = start + data.len();
        let mut covered = 0usize;
        for &(a, b) in &self.have {
            let (lo, hi) = (a.max(start), b.min(end));
            if lo < hi {
                let old = self.buf.get(lo..hi).ok_or(FragError::Overlap)?;
                let new = data.get(lo - start..hi - start).ok_or(FragError::Overlap)?;
                if old != new {
                    return Err(FragError::Overlap);
                }
                covered += hi - lo;
            }
        }
        if covered == data.len() {
            return Ok(Insert::Duplicate);
        }
        if self.buf.len() < end {
            // Exactly: the buffer's length is what the memory bound counts.
            self.buf.reserve_exact(end - self.buf.len());
            self.buf.resize(end, 0);
        }
        self.fragments += 1;
        if let Some(dst) = self.buf.get_mut(start..end) {
            dst.copy_from_slice(data);
        }
        // Merge the new range into the sorted range list.
        let mut merged = Vec::with_capacity(self.have.len() + 1);
        let (mut s, mut e) = (start, end);
        let mut placed = false;
        for &(a, b) in &self.have {
            if b < s {
                merged.push((a, b));
            } else if a > e {
                if !placed {
                    merged.push((s, e));
                    placed = true;
                }
                merged.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if !placed {
            merged.push((s, e));
        }
        self.have = merged;
        Ok(Insert::Added)
    }
}

/// Reassembles fragmented IP datagrams within fixed memory and time bounds.
#[derive(Debug)]
pub struct Reassembler {
    cfg: ReassemblyConfig,
    pending: HashMap<FragKey, Pending>,
    /// Sum of [`Pending::held`] over `pending`, kept so the memory limit check is O(1).
    bytes: usize,
    stats: FragStats,
}

impl Reassembler {
    /// Creates an empty reassembler with the given limits.
    pub fn new(cfg: ReassemblyConfig) -> Self {
        Self {
            cfg,
            pending: HashMap::new(),
            bytes: 0,
            stats: FragStats::default(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> &FragStats {
        &self.stats
    }

    /// Datagrams currently waiting for more fragments.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held by the pending datagrams, as [`ReassemblyConfig::max_total_bytes`] counts
    /// them.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a fragment; returns the whole datagram once every byte has arrived.
    ///
    /// Fragments may arrive in any order and may repeat. A fragment that contradicts bytes
    /// already held drops the datagram and returns [`FragError::Overlap`].
    pub fn push(&mut self, frag: Fragment, now_ns: u64) -> Result<Option<Reassembled>, FragError> {
        if frag.data.is_empty() {
            if self.pending.contains_key(&frag.key) {
                self.drop_key(&frag.key);
            }
            self.stats.dropped_overlap += 1;
            return Err(FragError::Empty);
        }
        let end = frag
            .offset
            .checked_add(frag.data.len())
            .ok_or(FragError::TooLarge { end: usize::MAX })?;
        if end > self.cfg.max_datagram_size {
            self.drop_key(&frag.key);
            self.stats.dropped_limit += 1;
            return Err(FragError::TooLarge { end });
        }

        // A stale entry with the same key belongs to an earlier datagram (IDs wrap quickly).
        if let Some(p) = self.pending.get(&frag.key) {
            if now_ns.saturating_sub(p.first_ns) > self.cfg.timeout_ns {
                self.drop_key(&frag.key);
                self.stats.timed_out += 1;
            }
        }

        if !self.pending.contains_key(&frag.key) {
            if self.pending.len() >= self.cfg.max_datagrams {
                self.expire(now_ns);
            }
            while self.pending.len() >= self.cfg.max_datagrams {
                if !self.evict_oldest(None) {
                    break;
                }
            }
            if self.pending.len() >= self.cfg.max_datagrams {
                self.stats.dropped_limit += 1;
                return Err(FragError::LimitExceeded);
            }
            self.pending.insert(frag.key, Pending::new(now_ns));
            self.bytes += DATAGRAM_OVERHEAD;
        }

        // Make room for the bytes this fragment may add, evicting other datagrams first.
        let current = self.pending.get(&frag.key).map_or(0, |p| p.buf.len());
        let growth = end.saturating_sub(current) + FRAGMENT_OVERHEAD;
        while self.bytes.saturating_add(growth) > self.cfg.max_total_bytes {
            if !self.evict_oldest(Some(&frag.key)) {
                self.drop_key(&frag.key);
                self.stats.dropped_limit += 1;
                return Err(FragError::LimitExceeded);
            }
        }

        let Some(p) = self.pending.get_mut(&frag.key) else {
            return Err(FragError::LimitExceeded);
        };
        if !frag.more {
            if p.total.is_some_and(|t| t != end) || p.buf.len() > end {
                self.drop_key(&frag.key);
                self.stats.dropped_overlap += 1;
                return Err(FragError::Inconsistent);
            }
            p.total = Some(end);
        } else if p.total.is_some_and(|t| end > t) {
            self.drop_key(&frag.key);
            self.stats.dropped_overlap += 1;
            return Err(FragError::Inconsistent);
        }

        let before = p.held();
        match p.insert(frag.offset, &frag.data) {
            Err(e) => {
                self.drop_key(&frag.key);
                self.stats.dropped_overlap += 1;
                return Err(e);
            }
            Ok(Insert::Duplicate) => self.stats.duplicates += 1,
            Ok(Insert::Added) => {}
        }
        self.bytes += p.held() - before;
        if p.fragments > self.cfg.max_fragments_per_datagram {
            self.drop_key(&frag.key);
            self.stats.dropped_limit += 1;
            return Err(FragError::LimitExceeded);
        }

        if p.complete() {
            if let Some(done) = self.pending.remove(&frag.key) {
                self.bytes = self.bytes.saturating_sub(done.held());
                self.stats.completed += 1;
                return Ok(Some(Reassembled {
                    key: frag.key,
                    data: done.buf,
                }));
            }
        }
        Ok(None)
    }

    /// [`held_bytes`](Self::held_bytes) added up from the pending datagrams: what the running
    /// total must equal, or the memory bound would be judged on a wrong figure. For tests and
    /// fuzzing; it walks every datagram.
    pub fn recounted(&self) -> usize {
        self.pending.values().map(Pending::held).sum()
    }

    /// Discards datagrams that stayed incomplete longer than the timeout.
    pub fn expire(&mut self, now_ns: u64) {
        let timeout = self.cfg.timeout_ns;
        let before = self.pending.len();
        let mut freed = 0usize;
        self.pending.retain(|_, p| {
            let keep = now_ns.saturating_sub(p.first_ns) <= timeout;
            if !keep {
                freed += p.held();
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
        self.stats.timed_out += (before - self.pending.len()) as u64;
    }

    fn drop_key(&mut self, key: &FragKey) {
        if let Some(p) = self.pending.remove(key) {
            self.bytes = self.bytes.saturating_sub(p.held());
        }
    }

    /// Evicts the datagram that started first (other than `keep`); false if none is left.
    fn evict_oldest(&mut self, keep: Option<&FragKey>) -> bool {
        let victim = self
            .pending
            .iter()
            .filter(|(k, _)| Some(*k) != keep)
            .min_by_key(|(_, p)| p.first_ns)
            .map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.drop_key(&k);
                self.stats.dropped_limit += 1;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: [u8; 4] = [10, 0, 0, 1];
    const DST: [u8; 4] = [10, 0, 0, 2];

    /// Builds an IPv4 fragment packet (no checksum; the parser does not verify it).
    fn v4_frag(id: u16, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
        let total = 20 + data.len();
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        let fo = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&fo.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&SRC);
        p[16..20].copy_from_slice(&DST);
        p.extend_from_slice(data);
        p
    }

    fn udp_datagram(payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&5060u16.to_be_bytes());
        u.extend_from_slice(&5080u16.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// Splits `whole` into IPv4 fragment packets of `chunk` bytes (a multiple of 8).
    fn split_v4(id: u16, whole: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < whole.len() {
            let end = (off + chunk).min(whole.len());
            out.push(v4_frag(id, off, end < whole.len(), &whole[off..end]));
            off = end;
        }
        out
    }

    fn feed(r: &mut Reassembler, pkts: &[Vec<u8>]) -> Vec<Reassembled> {
        let mut done = Vec::new();
        for p in pkts {
            let f = fragment_of(p).unwrap().unwrap();
            if let Some(d) = r.push(f, 0).unwrap() {
                done.push(d);
            }
        }
        done
    }

    fn sip_payload(n: usize) -> Vec<u8> {
        let mut v = b"INVITE sip:bob@example.com SIP/2.0\r\n".to_vec();
        while v.len() < n {
            v.push(b'a' + (v.len() % 26) as u8);
        }
        v
    }

    #[test]
    fn unfragmented_is_none() {
        let mut p = v4_frag(1, 0, false, &udp_datagram(b"hi"));
        assert_eq!(fragment_of(&p).unwrap(), None);
        p[6] = 0x40; // DF set, still not a fragment
        assert_eq!(fragment_of(&p).unwrap(), None);
    }

    #[test]
    fn v4_in_order() {
        let whole = udp_datagram(&sip_payload(3000));
        let pkts = split_v4(7, &whole, 1480);
        assert_eq!(pkts.len(), 3);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let done = feed(&mut r, &pkts);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].data, whole);
        assert_eq!(done[0].key.protocol, 17);
        assert_eq!(done[0].key.id, 7);
        assert_eq!(done[0].key.src, IpAddr::V4(Ipv4Addr::from(SRC)));
        let (sp, dp, payload) = udp_ports(&done[0].data).unwrap();
        assert_eq!((sp, dp), (5060, 5080));
        assert_eq!(payload, &sip_payload(3000)[..]);
        assert_eq!(r.stats().completed, 1);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn v4_reverse_order() {
        let whole = udp_datagram(&sip_payload(5000));
        let mut pkts = split_v4(9, &whole, 1000);
        pkts.reverse();
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let done = feed(&mut r, &pkts);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].data, whole);
    }

    #[test]
    fn v4_duplicates_ignored() {
        let whole = udp_datagram(&sip_payload(2500));
        let pkts = split_v4(3, &whole, 800);
        let dup = vec![
            pkts[0].clone(),
            pkts[1].clone(),
            pkts[0].clone(),
            pkts[1].clone(),
            pkts[2].clone(),
            pkts[3].clone(),
        ];
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let done = feed(&mut r, &dup);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].data, whole);
        assert_eq!(r.stats().duplicates, 2);
    }

    #[test]
    fn v4_consistent_overlap_accepted() {
        let whole = udp_datagram(&sip_payload(2000));
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let a = v4_frag(4, 0, true, &whole[..1200]);
        let b = v4_frag(4, 800, false, &whole[800..]);
        assert!(feed(&mut r, &[a]).is_empty());
        let done = feed(&mut r, &[b]);
        assert_eq!(done[0].data, whole);
    }

    #[test]
    fn v4_conflicting_overlap_drops() {
        let whole = udp_datagram(&sip_payload(2000));
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let a = fragment_of(&v4_frag(5, 0, true, &whole[..1200]))
            .unwrap()
            .unwrap();
        let mut evil = whole[800..].to_vec();
        evil[10] ^= 0xff;
        let b = fragment_of(&v4_frag(5, 800, false, &evil))
            .unwrap()
            .unwrap();
        assert_eq!(r.push(a, 0), Ok(None));
        assert_eq!(r.push(b, 0), Err(FragError::Overlap));
        assert_eq!(r.pending(), 0);
        assert_eq!(r.stats().dropped_overlap, 1);
    }

    /// Found by fuzzing: an empty fragment past where the last fragment later said the
    /// datagram ends was kept, and the datagram completed without it.
    #[test]
    fn v4_empty_fragment_drops_the_datagram() {
        let whole = udp_datagram(&sip_payload(2000));
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let a = fragment_of(&v4_frag(8, 0, true, &whole[..1200]))
            .unwrap()
            .unwrap();
        let empty = fragment_of(&v4_frag(8, 35976, true, &[])).unwrap().unwrap();
        let b = fragment_of(&v4_frag(8, 1200, false, &whole[1200..]))
            .unwrap()
            .unwrap();
        assert_eq!(r.push(a, 0), Ok(None));
        assert_eq!(r.push(empty, 0), Err(FragError::Empty));
        assert_eq!(r.pending(), 0);
        assert_eq!(
            r.push(b, 0),
            Ok(None),
            "the datagram was dropped with its first part"
        );
        assert_eq!(r.stats().completed, 0);
    }

    #[test]
    fn v4_inconsistent_end_drops() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let a = fragment_of(&v4_frag(6, 8, false, &[1; 16]))
            .unwrap()
            .unwrap();
        let b = fragment_of(&v4_frag(6, 16, false, &[1; 16]))
            .unwrap()
            .unwrap();
        assert_eq!(r.push(a, 0), Ok(None));
        assert_eq!(r.push(b, 0), Err(FragError::Inconsistent));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn v4_padding_ignored() {
        let mut p = v4_frag(8, 8, false, &[7; 8]);
        p.extend_from_slice(&[0xee; 6]);
        let f = fragment_of(&p).unwrap().unwrap();
        assert_eq!(f.data, vec![7; 8]);
        assert_eq!(f.offset, 8);
        assert!(!f.more);
    }

    #[test]
    fn malformed_headers_rejected() {
        assert_eq!(fragment_of(&[]), Err(FragError::Truncated));
        assert_eq!(fragment_of(&[0x55]), Err(FragError::BadVersion(5)));
        let mut p = v4_frag(1, 8, true, &[0; 8]);
        p[0] = 0x44;
        assert!(matches!(fragment_of(&p), Err(FragError::BadHeader(_))));
        let mut p = v4_frag(1, 8, true, &[0; 8]);
        p[2..4].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(fragment_of(&p), Err(FragError::Truncated));
        assert_eq!(fragment_of(&p[..10]), Err(FragError::Truncated));
    }

    fn v6_frag(ext: &[(u8, usize)], id: u32, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
        // `ext`: extension headers before the Fragment header, as (type, total length).
        let mut body = Vec::new();
        let types: Vec<u8> = ext.iter().map(|e| e.0).chain([IPV6_FRAGMENT]).collect();
        for (i, &(_, len)) in ext.iter().enumerate() {
            let mut h = vec![0u8; len];
            h[0] = types[i + 1];
            h[1] = (len / 8 - 1) as u8;
            body.extend_from_slice(&h);
        }
        body.push(17);
        body.push(0);
        body.extend_from_slice(&((offset as u16 & 0xfff8) | more as u16).to_be_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(data);
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        p[6] = types[0];
        p[7] = 64;
        p[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p[24..40].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn v6_fragment_header() {
        let whole = udp_datagram(&sip_payload(3000));
        let ext = [
            (IPV6_HOP_BY_HOP, 8),
            (IPV6_DEST_OPTS, 16),
            (IPV6_ROUTING, 24),
        ];
        let a = v6_frag(&ext, 0xdead_beef, 0, true, &whole[..1448]);
        let b = v6_frag(&[], 0xdead_beef, 1448, false, &whole[1448..]);
        let fa = fragment_of(&a).unwrap().unwrap();
        assert_eq!(fa.key.id, 0xdead_beef);
        assert_eq!(fa.key.protocol, 17);
        assert!(fa.more);
        let fb = fragment_of(&b).unwrap().unwrap();
        assert_eq!(fb.offset, 1448);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        assert_eq!(r.push(fb, 1), Ok(None));
        let done = r.push(fa, 2).unwrap().unwrap();
        assert_eq!(done.data, whole);
        assert_eq!(done.key.dst, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn v6_without_fragment_header_is_none() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 17;
        assert_eq!(fragment_of(&p), Ok(None));
        // Truncated extension header chain.
        p[6] = IPV6_HOP_BY_HOP;
        p[41] = 4;
        assert_eq!(fragment_of(&p), Err(FragError::Truncated));
    }

    #[test]
    fn timeout_expiry() {
        let whole = udp_datagram(&sip_payload(2000));
        let pkts = split_v4(11, &whole, 1000);
        let cfg = ReassemblyConfig::default();
        let mut r = Reassembler::new(cfg);
        let f0 = fragment_of(&pkts[0]).unwrap().unwrap();
        assert_eq!(r.push(f0, 1_000), Ok(None));
        r.expire(1_000 + cfg.timeout_ns);
        assert_eq!(r.pending(), 1);
        r.expire(1_001 + cfg.timeout_ns);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.stats().timed_out, 1);
        // The late rest cannot complete the expired datagram.
        let f1 = fragment_of(&pkts[1]).unwrap().unwrap();
        assert_eq!(r.push(f1, 2 * cfg.timeout_ns), Ok(None));
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn stale_key_restarts() {
        let cfg = ReassemblyConfig::default();
        let mut r = Reassembler::new(cfg);
        let a = fragment_of(&v4_frag(12, 0, true, &[1; 8]))
            .unwrap()
            .unwrap();
        let b = fragment_of(&v4_frag(12, 8, false, &[2; 8]))
            .unwrap()
            .unwrap();
        assert_eq!(r.push(a, 0), Ok(None));
        assert_eq!(r.push(b, cfg.timeout_ns + 1), Ok(None));
        assert_eq!(r.stats().timed_out, 1);
    }

    #[test]
    fn datagram_count_limit_evicts_oldest() {
        let cfg = ReassemblyConfig {
            max_datagrams: 4,
            ..ReassemblyConfig::default()
        };
        let mut r = Reassembler::new(cfg);
        for id in 0..10u16 {
            let f = fragment_of(&v4_frag(id, 0, true, &[0; 8]))
                .unwrap()
                .unwrap();
            assert_eq!(r.push(f, u64::from(id)), Ok(None));
            assert!(r.pending() <= 4);
        }
        assert_eq!(r.stats().dropped_limit, 6);
        // The newest datagram survived and can complete.
        let f = fragment_of(&v4_frag(9, 8, false, &[0; 8]))
            .unwrap()
            .unwrap();
        assert!(r.push(f, 20).unwrap().is_some());
    }

    #[test]
    fn size_and_memory_limits() {
        let cfg = ReassemblyConfig {
            max_total_bytes: 3000,
            ..ReassemblyConfig::default()
        };
        let mut r = Reassembler::new(cfg);
        let big = fragment_of(&v4_frag(1, 65528, true, &[0; 16]))
            .unwrap()
            .unwrap();
        assert!(matches!(r.push(big, 0), Err(FragError::TooLarge { .. })));
        let a = fragment_of(&v4_frag(2, 0, true, &[0; 2000]))
            .unwrap()
            .unwrap();
        assert_eq!(r.push(a, 0), Ok(None));
        // A second datagram needing 2000 bytes evicts the first.
        let b = fragment_of(&v4_frag(3, 0, true, &[0; 2000]))
            .unwrap()
            .unwrap();
        assert_eq!(r.push(b, 1), Ok(None));
        assert_eq!(r.pending(), 1);
        // One datagram alone above the budget is refused.
        let c = fragment_of(&v4_frag(3, 2000, true, &[0; 1200]))
            .unwrap()
            .unwrap();
        assert_eq!(r.push(c, 2), Err(FragError::LimitExceeded));
        assert_eq!(r.pending(), 0);
        assert_eq!(r.stats().dropped_limit, 3);
    }

    /// A flood of datagrams that never complete, in tiny fragments that never touch (so each
    /// is a range of its own): bounded in datagrams, fragments and bytes at every step, and
    /// gone once the timeout passes.
    #[test]
    fn fragments_that_never_complete_are_bounded_and_expire() {
        let cfg = ReassemblyConfig::default();
        let mut r = Reassembler::new(cfg);
        let mut now = 0u64;
        for id in 0..2000u16 {
            // 200 one-byte fragments 16 bytes apart, and never the last one.
            for k in 0..200usize {
                let f = Fragment {
                    key: FragKey {
                        src: IpAddr::V4(Ipv4Addr::from(SRC)),
                        dst: IpAddr::V4(Ipv4Addr::from(DST)),
                        id: u32::from(id),
                        protocol: 17,
                    },
                    offset: k * 16,
                    more: true,
                    data: vec![0x55],
                };
                now += 1_000;
                let _ = r.push(f, now);
                assert!(r.pending() <= cfg.max_datagrams);
                assert!(r.held_bytes() <= cfg.max_total_bytes);
                assert!(r
                    .pending
                    .values()
                    .all(|p| p.fragments <= cfg.max_fragments_per_datagram));
            }
        }
        assert_eq!(r.held_bytes(), r.recounted());
        // Every one of those datagrams passed the fragment bound and was dropped (and what
        // came after, a datagram of its own, was evicted by the datagram bound or waits).
        assert!(r.stats().dropped_limit >= 2000, "{:?}", r.stats());

        // Datagrams within the fragment bound wait for their timeout, then go.
        for id in 0..1000u16 {
            let f = fragment_of(&v4_frag(id, 8, true, &[7; 8]))
                .unwrap()
                .unwrap();
            now += 1_000;
            let _ = r.push(f, now);
            assert!(r.pending() <= cfg.max_datagrams);
            assert!(r.held_bytes() <= cfg.max_total_bytes);
        }
        assert_eq!(r.pending(), cfg.max_datagrams);
        assert_eq!(r.held_bytes(), r.recounted());
        r.expire(now + cfg.timeout_ns + 1);
        assert_eq!((r.pending(), r.held_bytes()), (0, 0));
        assert_eq!(r.stats().timed_out, cfg.max_datagrams as u64);
        assert_eq!(r.stats().completed, 0);
    }

    /// The memory bound counts each fragment's overhead, not only its bytes.
    #[test]
    fn held_bytes_count_fragment_overhead() {
        let cfg = ReassemblyConfig {
            max_total_bytes: 2 * DATAGRAM_OVERHEAD + 40 * (FRAGMENT_OVERHEAD + 16),
            ..ReassemblyConfig::default()
        };
        let mut r = Reassembler::new(cfg);
        let mut refused = 0;
        for k in 0..100usize {
            let f = fragment_of(&v4_frag(1, k * 16, true, &[1]))
                .unwrap()
                .unwrap();
            if r.push(f, 0).is_err() {
                refused += 1;
            }
            assert!(r.held_bytes() <= cfg.max_total_bytes);
        }
        // 100 bytes of payload, but far more held: the datagram outgrew the budget.
        assert!(refused > 0, "{:?}", r.stats());
        assert_eq!(r.held_bytes(), r.recounted());
    }

    #[test]
    fn udp_ports_bounds() {
        assert_eq!(udp_ports(&[0; 7]), None);
        let mut u = udp_datagram(b"abc");
        u.extend_from_slice(b"pad");
        assert_eq!(udp_ports(&u), Some((5060, 5080, &b"abc"[..])));
        u[4..6].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(udp_ports(&u), None);
        u[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(udp_ports(&u), None);
    }

    proptest! {
        /// Any ordering of any multiset of fragments covering the datagram reassembles to it.
        #[test]
        fn random_orderings_reassemble(
            payload in proptest::collection::vec(any::<u8>(), 1..4000),
            chunk8 in 1usize..200,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
            v6 in any::<bool>(),
        ) {
            let whole = udp_datagram(&payload);
            // At least two fragments: an IPv4 packet with offset 0 and no MF is not a fragment.
            let chunk = (chunk8 * 8).min((whole.len() - 1) / 8 * 8);
            let mut pkts = Vec::new();
            let mut off = 0;
            while off < whole.len() {
                let end = (off + chunk).min(whole.len());
                let more = end < whole.len();
                pkts.push(if v6 {
                    v6_frag(&[(IPV6_HOP_BY_HOP, 8)], 77, off, more, &whole[off..end])
                } else {
                    v4_frag(77, off, more, &whole[off..end])
                });
                off = end;
            }
            // Shuffle by swapping, then append random duplicates.
            let n = pkts.len();
            let mut seq: Vec<Vec<u8>> = pkts.clone();
            for (i, idx) in order.iter().enumerate() {
                seq.swap(i % n, idx.index(n));
            }
            for idx in order.iter().take(5) {
                seq.insert(idx.index(seq.len()), pkts[idx.index(n)].clone());
            }
            // Up to 500 fragments of 8 bytes: far more than the default bound lets a datagram
            // have, which is not what this property is about.
            let mut r = Reassembler::new(ReassemblyConfig {
                max_fragments_per_datagram: 1024,
                ..ReassemblyConfig::default()
            });
            let mut done = Vec::new();
            for p in &seq {
                let f = fragment_of(p).unwrap().unwrap();
                if let Some(d) = r.push(f, 0).unwrap() {
                    done.push(d);
                }
            }
            // Duplicates arriving after completion start a new datagram, which may complete
            // again; every completed datagram must be the original.
            prop_assert!(!done.is_empty());
            for d in &done {
                prop_assert_eq!(&d.data, &whole);
            }
        }

        /// Arbitrary bytes never panic the parser or the reassembler.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = Reassembler::new(ReassemblyConfig::default());
            if let Ok(Some(f)) = fragment_of(&bytes) {
                let _ = r.push(f, 0);
            }
            let _ = udp_ports(&bytes);
        }
    }
}
