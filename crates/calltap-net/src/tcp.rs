//! TCP stream reassembly for SIP over TCP, plus SIP message resynchronisation.
//!
//! A passive tap sees each direction of a connection as a sequence of segments that may be
//! reordered, duplicated (retransmissions, mirrored twice), or missing (capture drops the
//! endpoint never noticed, so no retransmission will ever fill the hole). SIP framing needs a
//! contiguous byte stream, so [`TcpReassembler`] rebuilds one per direction, bounded in memory
//! and time. When a hole cannot be filled it is skipped, and [`resync_sip`] lets the caller find
//! the next message start in the bytes after it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use thiserror::Error;

/// Why a TCP header could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TcpError {
    /// Fewer bytes than the header needs.
    #[error("TCP header truncated")]
    Truncated,
    /// The data offset is below the 20-byte minimum header.
    #[error("TCP data offset {0} words is below the minimum of 5")]
    BadDataOffset(u8),
}

/// The TCP control flags the reassembler cares about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    /// Connection start: the sequence number is the ISN, data starts at ISN + 1.
    pub syn: bool,
    /// Orderly end of this direction after the segment's data.
    pub fin: bool,
    /// Abortive close: no more data follows.
    pub rst: bool,
    /// Acknowledgement field is valid (informational).
    pub ack: bool,
    /// Push (informational).
    pub psh: bool,
}

/// One parsed TCP segment; the payload borrows the captured frame to avoid a copy for the
/// common in-order case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    /// Sequence number of the first byte (or of the SYN).
    pub seq: u32,
    /// Acknowledgement number (informational).
    pub ack: u32,
    /// Control flags.
    pub flags: TcpFlags,
    /// Segment payload.
    pub payload: &'a [u8],
}

/// Parses a TCP header: `(source port, destination port, segment)`.
///
/// `tcp` must start at the TCP header; everything after the header is taken as payload, so the
/// caller should cut the slice at the IP payload length when the frame may carry link-layer
/// padding (short Ethernet frames).
pub fn parse_tcp(tcp: &[u8]) -> Result<(u16, u16, TcpSegment<'_>), TcpError> {
    let hdr = tcp.get(..20).ok_or(TcpError::Truncated)?;
    let sport = u16::from_be_bytes([hdr[0], hdr[1]]);
    let dport = u16::from_be_bytes([hdr[2], hdr[3]]);
    let seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let ack = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let words = hdr[12] >> 4;
    if words < 5 {
        return Err(TcpError::BadDataOffset(words));
    }
    let payload = tcp
        .get(usize::from(words) * 4..)
        .ok_or(TcpError::Truncated)?;
    let f = hdr[13];
    let flags = TcpFlags {
        fin: f & 0x01 != 0,
        syn: f & 0x02 != 0,
        rst: f & 0x04 != 0,
        psh: f & 0x08 != 0,
        ack: f & 0x10 != 0,
    };
    Ok((
        sport,
        dport,
        TcpSegment {
            seq,
            ack,
            flags,
            payload,
        },
    ))
}

/// One direction of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Sender of the bytes.
    pub src: SocketAddr,
    /// Receiver of the bytes.
    pub dst: SocketAddr,
}

/// What one held out-of-order segment costs besides its payload: its share of a B-tree node
/// (an 8-byte key and a 24-byte `Vec` header, in nodes that are not always full) and the
/// allocator's header and rounding of its payload (a 1-byte payload takes a 32-byte chunk).
/// Counted so that a stream of 1-byte segments cannot hold 80 times what its payload says.
pub const SEGMENT_OVERHEAD: usize = 80;

/// What one tracked direction costs besides what it holds: its table entry and state.
pub const FLOW_OVERHEAD: usize = std::mem::size_of::<(FlowKey, Flow)>() + 16;

/// Bounds on the reassembler's memory and state lifetime. Bytes are counted as held: payload
/// plus [`SEGMENT_OVERHEAD`] per out-of-order segment (and [`FLOW_OVERHEAD`] per direction in
/// the total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpConfig {
    /// Directions tracked at once; beyond this the least recently active one is evicted.
    pub max_flows: usize,
    /// Bytes held per direction (unconsumed in-order plus out-of-order with their overhead).
    /// Exceeding it with out-of-order data skips the oldest hole; exceeding it with in-order
    /// data the consumer cannot frame discards that data.
    pub max_buffered_per_flow: usize,
    /// Out-of-order segments held per direction; one more skips the oldest hole, as the byte
    /// bound does.
    pub max_segments_per_flow: usize,
    /// Bytes held across all directions. Beyond it the direction holding the most loses what
    /// it holds (counted in [`TcpStats::segments_shed`] and [`TcpStats::bytes_dropped`]): an
    /// attacker's streams are the large ones, a SIP message in progress is small.
    pub max_total_bytes: usize,
    /// Out-of-order segments held across all directions; beyond, as for `max_total_bytes`.
    pub max_total_segments: usize,
    /// A direction with no segments for this long is forgotten.
    pub idle_timeout_ns: u64,
    /// A hole not filled within this time is skipped. In a passive capture a missing segment
    /// the receiver did get is never retransmitted, so waiting long gains nothing.
    pub gap_timeout_ns: u64,
    /// A closed direction is remembered this long so late retransmissions are not mistaken
    /// for a new mid-stream flow (which would deliver the same messages twice).
    pub close_linger_ns: u64,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            max_flows: 4096,
            max_buffered_per_flow: 256 * 1024,
            // A 256 KiB window of 1460-byte segments is 180 of them.
            max_segments_per_flow: 256,
            max_total_bytes: 64 * 1024 * 1024,
            max_total_segments: 16 * 1024,
            idle_timeout_ns: 300_000_000_000,
            gap_timeout_ns: 1_000_000_000,
            close_linger_ns: 5_000_000_000,
        }
    }
}

/// Counters for diagnosing capture loss and abuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Segments pushed.
    pub segments: u64,
    /// Segments whose payload was entirely or partly already received.
    pub retransmits: u64,
    /// Segments that arrived ahead of a hole and were buffered.
    pub out_of_order: u64,
    /// Holes given up on (timeout or buffer limit); the stream resumes after them.
    pub gaps_skipped: u64,
    /// Directions evicted to respect `max_flows`.
    pub flows_evicted: u64,
    /// Directions forgotten after idling or after their close linger.
    pub flows_expired: u64,
    /// Bytes discarded: unframeable data before a skipped hole or beyond the buffer limit.
    pub bytes_dropped: u64,
    /// Out-of-order segments discarded, never delivered, because the total bounds were hit.
    pub segments_shed: u64,
}

/// Unconsumed-byte buffers keep up to this much spare capacity between messages.
const RETAIN_CAPACITY: usize = 16 * 1024;

/// Absolute stream offsets start here, so a sequence number slightly before the current
/// position (a retransmission) still maps to a non-negative offset.
const ABS_BASE: u64 = 1 << 32;

#[derive(Debug)]
struct Flow {
    /// Sequence number of the next in-order byte.
    next_seq: u32,
    /// Absolute (wrap-free) offset of the next in-order byte.
    next_abs: u64,
    /// Absolute offset of the first data byte, when the SYN was seen.
    syn_abs: Option<u64>,
    /// In-order bytes not yet consumed.
    ready: Vec<u8>,
    /// Segments beyond a hole, by absolute offset.
    ooo: BTreeMap<u64, Vec<u8>>,
    ooo_bytes: usize,
    /// When the current hole was noticed.
    gap_since: Option<u64>,
    /// Absolute offset of the FIN, once seen.
    fin_at: Option<u64>,
    closed: bool,
    last_ns: u64,
}

impl Flow {
    fn new(seg: &TcpSegment<'_>, now_ns: u64) -> Self {
        let syn = seg.flags.syn;
        Self {
            next_seq: seg.seq.wrapping_add(u32::from(syn)),
            next_abs: ABS_BASE,
            syn_abs: syn.then_some(ABS_BASE),
            ready: Vec::new(),
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            gap_since: None,
            fin_at: None,
            closed: false,
            last_ns: now_ns,
        }
    }

    /// Bytes this direction holds, as the bounds count them (see [`SEGMENT_OVERHEAD`]).
    fn held(&self) -> usize {
        self.ready.len() + self.ooo_bytes + self.ooo.len() * SEGMENT_OVERHEAD
    }

    /// Drops everything held (the total bounds chose this direction).
    fn purge(&mut self, stats: &mut TcpStats) {
        stats.segments_shed += self.ooo.len() as u64;
        stats.bytes_dropped += (self.ready.len() + self.ooo_bytes) as u64;
        self.ready = Vec::new();
        self.ooo.clear();
        self.ooo_bytes = 0;
        self.gap_since = None;
    }

    /// Maps a sequence number to an absolute offset, treating it as within 2 GiB of the
    /// current position either way (the only sane reading given 32-bit wrap-around).
    fn abs_of(&self, seq: u32) -> Option<u64> {
        let rel = i64::from(seq.wrapping_sub(self.next_seq) as i32);
        self.next_abs.checked_add_signed(rel)
    }

    fn advance_to(&mut self, abs: u64) {
        let delta = abs.saturating_sub(self.next_abs);
        // Truncation is intended: sequence numbers are modulo 2^32.
        self.next_seq = self.next_seq.wrapping_add(delta as u32);
        self.next_abs = abs;
    }

    /// Moves buffered segments that are now contiguous into `ready`.
    fn drain_ooo(&mut self, now_ns: u64) {
        while let Some(entry) = self.ooo.first_entry() {
            if *entry.key() > self.next_abs {
                break;
            }
            let (start, data) = entry.remove_entry();
            self.ooo_bytes = self.ooo_bytes.saturating_sub(data.len());
            let end = start.saturating_add(data.len() as u64);
            if end > self.next_abs {
                let skip = usize::try_from(self.next_abs - start).unwrap_or(usize::MAX);
                if let Some(tail) = data.get(skip..) {
                    self.ready.extend_from_slice(tail);
                }
                self.advance_to(end);
            }
        }
        // Progress restarts the clock: a remaining hole is a new one.
        self.gap_since = (!self.ooo.is_empty()).then_some(now_ns);
    }

    /// Gives up on the hole before the first buffered segment.
    fn skip_gap(&mut self, now_ns: u64, stats: &mut TcpStats) {
        let Some(&first) = self.ooo.keys().next() else {
            self.gap_since = None;
            return;
        };
        stats.gaps_skipped += 1;
        // Whatever is unconsumed is an incomplete message whose continuation was in the hole;
        // gluing it to the bytes after the hole would fabricate a message.
        stats.bytes_dropped += self.ready.len() as u64;
        self.ready.clear();
        self.advance_to(first);
        self.drain_ooo(now_ns);
        self.check_fin();
    }

    fn check_fin(&mut self) {
        if self.fin_at.is_some_and(|f| self.next_abs >= f) {
            self.close();
        }
    }

    fn close(&mut self) {
        self.closed = true;
        self.ooo.clear();
        self.ooo_bytes = 0;
        self.gap_since = None;
    }

    fn gap_expired(&self, now_ns: u64, cfg: &TcpConfig) -> bool {
        self.gap_since
            .is_some_and(|t| now_ns.saturating_sub(t) > cfg.gap_timeout_ns)
    }

    fn on_segment(
        &mut self,
        seg: &TcpSegment<'_>,
        fresh: bool,
        now_ns: u64,
        cfg: &TcpConfig,
        stats: &mut TcpStats,
    ) {
        self.last_ns = now_ns;
        if self.ready.len() > cfg.max_buffered_per_flow {
            // The consumer already saw this data and could not frame it: it is not SIP, or a
            // message larger than any sane one. Drop it so memory stays bounded (at most about
            // twice the limit plus one segment); framing resyncs on what follows.
            stats.bytes_dropped += self.ready.len() as u64;
            self.ready.clear();
        }
        if seg.flags.syn && !fresh {
            let isn_abs = self.abs_of(seg.seq.wrapping_add(1));
            if self.syn_abs.is_none() || isn_abs != self.syn_abs {
                // A SYN for a different ISN is a new connection on the same 4-tuple.
                stats.bytes_dropped += (self.ready.len() + self.ooo_bytes) as u64;
                *self = Flow::new(seg, now_ns);
            } else if seg.payload.is_empty() {
                stats.retransmits += 1;
            }
        }
        if self.closed {
            if !seg.payload.is_empty() {
                stats.retransmits += 1;
            }
            return;
        }
        if seg.flags.rst {
            self.close();
            return;
        }
        if self.gap_expired(now_ns, cfg) {
            self.skip_gap(now_ns, stats);
            if self.closed {
                return;
            }
        }

        let data_seq = seg.seq.wrapping_add(u32::from(seg.flags.syn));
        let Some(start) = self.abs_of(data_seq) else {
            return;
        };
        let len = seg.payload.len() as u64;
        let end = start.saturating_add(len);
        if seg.flags.fin && self.fin_at.is_none() {
            self.fin_at = Some(end);
        }

        if len > 0 {
            if end <= self.next_abs {
                stats.retransmits += 1;
            } else if start <= self.next_abs {
                if start < self.next_abs {
                    stats.retransmits += 1;
                }
                let skip = usize::try_from(self.next_abs - start).unwrap_or(usize::MAX);
                if let Some(fresh) = seg.payload.get(skip..) {
                    self.ready.extend_from_slice(fresh);
                }
                self.advance_to(end);
                self.drain_ooo(now_ns);
            } else {
                stats.out_of_order += 1;
                match self.ooo.get(&start) {
                    Some(held) if held.len() >= seg.payload.len() => stats.retransmits += 1,
                    _ => {
                        let old = self.ooo.insert(start, seg.payload.to_vec());
                        self.ooo_bytes += seg.payload.len();
                        self.ooo_bytes = self.ooo_bytes.saturating_sub(old.map_or(0, |o| o.len()));
                        self.gap_since.get_or_insert(now_ns);
                    }
                }
                while (self.held() > cfg.max_buffered_per_flow
                    || self.ooo.len() > cfg.max_segments_per_flow)
                    && !self.ooo.is_empty()
                {
                    self.skip_gap(now_ns, stats);
                }
            }
        }

        self.check_fin();
    }
}

/// Per-direction TCP byte-stream reassembly with bounded memory.
#[derive(Debug)]
pub struct TcpReassembler {
    cfg: TcpConfig,
    flows: HashMap<FlowKey, Flow>,
    stats: TcpStats,
    /// Sum of [`Flow::held`] plus [`FLOW_OVERHEAD`] per direction.
    held: usize,
    /// Out-of-order segments held by all directions.
    segments: usize,
}

impl TcpReassembler {
    /// Creates an empty reassembler with the given limits.
    pub fn new(cfg: TcpConfig) -> Self {
        Self {
            cfg,
            flows: HashMap::new(),
            stats: TcpStats::default(),
            held: 0,
            segments: 0,
        }
    }

    /// Bytes held across all directions, as [`TcpConfig::max_total_bytes`] counts them.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Out-of-order segments held across all directions.
    pub fn held_segments(&self) -> usize {
        self.segments
    }

    /// Counters since creation.
    pub fn stats(&self) -> &TcpStats {
        &self.stats
    }

    /// Directions currently tracked (including recently closed ones).
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Adds a segment of `flow` and returns every contiguous, not yet consumed byte of that
    /// direction. Call [`consume`](Self::consume) with the number of bytes framed.
    ///
    /// The first segment seen without SYN sets the stream start (capture began mid-stream).
    /// After FIN or RST the remaining data is still returned until consumed, and the direction
    /// then ignores further data until it expires or a new SYN arrives.
    pub fn push(&mut self, flow: FlowKey, seg: TcpSegment<'_>, now_ns: u64) -> &[u8] {
        self.stats.segments += 1;
        let fresh = !self.flows.contains_key(&flow);
        if fresh {
            // A bare ACK, FIN or RST of an unknown flow says nothing about the stream start.
            if seg.flags.rst || (!seg.flags.syn && seg.payload.is_empty()) {
                return &[];
            }
            self.make_room(now_ns);
            self.flows.insert(flow, Flow::new(&seg, now_ns));
            self.held += FLOW_OVERHEAD;
        }
        let cfg = self.cfg;
        let change = self.flows.get_mut(&flow).map(|f| {
            let before = (f.held(), f.ooo.len());
            f.on_segment(&seg, fresh, now_ns, &cfg, &mut self.stats);
            (before, (f.held(), f.ooo.len()))
        });
        if let Some((before, after)) = change {
            self.account(before, after);
        }
        if self.held > cfg.max_total_bytes || self.segments > cfg.max_total_segments {
            self.shed();
        }
        self.flows.get(&flow).map_or(&[], |f| f.ready.as_slice())
    }

    /// Moves the totals from a direction's `(held, segments)` before a change to after it.
    fn account(&mut self, before: (usize, usize), after: (usize, usize)) {
        self.held = (self.held + after.0).saturating_sub(before.0);
        self.segments = (self.segments + after.1).saturating_sub(before.1);
    }

    /// Brings the totals back within their bounds: the direction holding the most loses what
    /// it holds, then the next, until they fit.
    fn shed(&mut self) {
        while self.held > self.cfg.max_total_bytes || self.segments > self.cfg.max_total_segments {
            let victim = self
                .flows
                .values_mut()
                .filter(|f| f.held() > 0)
                .max_by_key(|f| f.held());
            let Some(f) = victim else {
                break;
            };
            let before = (f.held(), f.ooo.len());
            f.purge(&mut self.stats);
            let after = (f.held(), f.ooo.len());
            self.account(before, after);
        }
    }

    /// Recomputes the totals from the directions (after changes to many of them).
    fn recount(&mut self) {
        (self.held, self.segments) = self.recounted();
    }

    /// `(held_bytes, held_segments)` added up from the directions: what the totals kept as
    /// segments come and go must equal, or the bounds would be judged on wrong figures.
    /// For tests and fuzzing; it walks every direction.
    pub fn recounted(&self) -> (usize, usize) {
        let held = self.flows.values().map(|f| f.held() + FLOW_OVERHEAD).sum();
        (held, self.flows.values().map(|f| f.ooo.len()).sum())
    }

    /// Marks the first `n` available bytes of `flow` as used (clamped to what is available).
    pub fn consume(&mut self, flow: &FlowKey, n: usize) {
        if let Some(f) = self.flows.get_mut(flow) {
            let before = f.held();
            let n = n.min(f.ready.len());
            f.ready.drain(..n);
            // What is held is counted by length: give back a buffer a large message left
            // behind, so its capacity does not stay allocated uncounted.
            if f.ready.capacity() > RETAIN_CAPACITY.max(2 * f.ready.len()) {
                f.ready.shrink_to(f.ready.len());
            }
            self.held = self.held.saturating_sub(before - f.held());
        }
    }

    /// Forgets idle and closed directions and skips holes that waited too long.
    ///
    /// Bytes made available by a skip are returned by the next [`push`](Self::push) of that
    /// direction.
    pub fn expire(&mut self, now_ns: u64) {
        let cfg = self.cfg;
        let before = self.flows.len();
        self.flows.retain(|_, f| {
            let idle = now_ns.saturating_sub(f.last_ns);
            idle <= cfg.idle_timeout_ns && !(f.closed && idle > cfg.close_linger_ns)
        });
        self.stats.flows_expired += (before - self.flows.len()) as u64;
        for f in self.flows.values_mut() {
            if f.gap_expired(now_ns, &cfg) {
                f.skip_gap(now_ns, &mut self.stats);
            }
        }
        self.recount();
    }

    /// Ensures there is room for one more flow.
    fn make_room(&mut self, now_ns: u64) {
        if self.flows.len() < self.cfg.max_flows {
            return;
        }
        self.expire(now_ns);
        while self.flows.len() >= self.cfg.max_flows.max(1) {
            // Closed directions go first, then the least recently active.
            let victim = self
                .flows
                .iter()
                .min_by_key(|(_, f)| (!f.closed, f.last_ns))
                .map(|(k, _)| *k);
            match victim {
                Some(k) => {
                    if let Some(f) = self.flows.remove(&k) {
                        self.account((f.held() + FLOW_OVERHEAD, f.ooo.len()), (0, 0));
                    }
                    self.stats.flows_evicted += 1;
                }
                None => break,
            }
        }
    }
}

/// SIP methods recognised at a request line start (RFC 3261 and common extensions).
const METHODS: [&[u8]; 14] = [
    b"INVITE",
    b"ACK",
    b"BYE",
    b"CANCEL",
    b"OPTIONS",
    b"REGISTER",
    b"PRACK",
    b"UPDATE",
    b"INFO",
    b"REFER",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"MESSAGE",
    b"PUBLISH",
];

const SCHEMES: [&[u8]; 3] = [b"sip:", b"sips:", b"tel:"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// A complete start-line prefix matched.
    Full,
    /// The buffer ended while still matching; the rest may arrive later.
    Partial,
    No,
}

fn prefix_fit(buf: &[u8], pat: &[u8], case_insensitive: bool) -> Fit {
    let n = buf.len().min(pat.len());
    let (b, p) = (
        buf.get(..n).unwrap_or_default(),
        pat.get(..n).unwrap_or_default(),
    );
    let same = if case_insensitive {
        b.eq_ignore_ascii_case(p)
    } else {
        b == p
    };
    match (same, n == pat.len()) {
        (false, _) => Fit::No,
        (true, true) => Fit::Full,
        (true, false) => Fit::Partial,
    }
}

/// Does a SIP start line begin at the start of `rest`?
fn start_line_fit(rest: &[u8]) -> Fit {
    match prefix_fit(rest, b"SIP/2.0 ", true) {
        Fit::Partial => return Fit::Partial,
        Fit::Full => {
            let code = rest.get(8..).unwrap_or_default();
            let digits = code
                .iter()
                .take(3)
                .take_while(|c| c.is_ascii_digit())
                .count();
            return match (digits, code.len()) {
                (3, _) => Fit::Full,
                (d, l) if d == l => Fit::Partial,
                _ => Fit::No,
            };
        }
        Fit::No => {}
    }
    let mut best = Fit::No;
    for m in METHODS {
        match prefix_fit(rest, m, false) {
            Fit::No => continue,
            Fit::Partial => best = Fit::Partial,
            Fit::Full => {
                let after = rest.get(m.len()..).unwrap_or_default();
                match after.first() {
                    None => best = Fit::Partial,
                    Some(b' ') => {
                        let uri = after.get(1..).unwrap_or_default();
                        for s in SCHEMES {
                            match prefix_fit(uri, s, true) {
                                Fit::Full => return Fit::Full,
                                Fit::Partial => best = Fit::Partial,
                                Fit::No => {}
                            }
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
    best
}

/// Offset of the first plausible SIP message start in `buf`, at the buffer start or right
/// after a CRLF: a status line (`SIP/2.0 NNN`) or a request line (`METHOD sip:`, `sips:` or
/// `tel:`).
///
/// A line that the buffer cuts off while it still matches (e.g. `...\r\nINVI`) also counts,
/// so a caller that discards everything before the returned offset never throws away the
/// start of a message whose first bytes just arrived; its parser will ask for more data.
pub fn resync_sip(buf: &[u8]) -> Option<usize> {
    let starts = std::iter::once(0).chain(
        buf.windows(2)
            .enumerate()
            .filter(|(_, w)| *w == b"\r\n")
            .map(|(i, _)| i + 2),
    );
    for pos in starts {
        let rest = buf.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            continue;
        }
        if start_line_fit(rest) != Fit::No {
            return Some(pos);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> FlowKey {
        FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:5060".parse().unwrap(),
        }
    }

    fn seg(seq: u32, payload: &[u8]) -> TcpSegment<'_> {
        TcpSegment {
            seq,
            ack: 0,
            flags: TcpFlags {
                ack: true,
                ..TcpFlags::default()
            },
            payload,
        }
    }

    fn syn(seq: u32) -> TcpSegment<'static> {
        TcpSegment {
            seq,
            ack: 0,
            flags: TcpFlags {
                syn: true,
                ..TcpFlags::default()
            },
            payload: &[],
        }
    }

    fn with_flags(mut s: TcpSegment<'_>, f: impl FnOnce(&mut TcpFlags)) -> TcpSegment<'_> {
        f(&mut s.flags);
        s
    }

    const MSG1: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n";
    const MSG2: &[u8] = b"SIP/2.0 200 OK\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n";

    /// Builds a raw TCP header + payload.
    fn raw(sport: u16, dport: u16, seq: u32, flags: u8, words: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; usize::from(words) * 4];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = words << 4;
        t[13] = flags;
        t.extend_from_slice(payload);
        t
    }

    #[test]
    fn parse_header() {
        let t = raw(40000, 5060, 1234, 0x18, 8, b"hello");
        let (s, d, sg) = parse_tcp(&t).unwrap();
        assert_eq!((s, d, sg.seq), (40000, 5060, 1234));
        assert!(sg.flags.ack && sg.flags.psh && !sg.flags.syn);
        assert_eq!(sg.payload, b"hello");
        let t = raw(1, 2, 3, 0x07, 5, b"");
        let (_, _, sg) = parse_tcp(&t).unwrap();
        assert!(sg.flags.fin && sg.flags.syn && sg.flags.rst);
        assert_eq!(parse_tcp(&t[..19]), Err(TcpError::Truncated));
        let mut t = raw(1, 2, 3, 0, 5, b"");
        t[12] = 4 << 4;
        assert_eq!(parse_tcp(&t), Err(TcpError::BadDataOffset(4)));
        let mut t = raw(1, 2, 3, 0, 5, b"");
        t[12] = 15 << 4;
        assert_eq!(parse_tcp(&t), Err(TcpError::Truncated));
    }

    #[test]
    fn in_order_with_syn() {
        let mut r = TcpReassembler::new(TcpConfig::default());
        assert!(r.push(key(), syn(999), 0).is_empty());
        assert_eq!(r.push(key(), seg(1000, b"abc"), 1), b"abc");
        assert_eq!(r.push(key(), seg(1003, b"def"), 2), b"abcdef");
        r.consume(&key(), 4);
        assert_eq!(r.push(key(), seg(1006, b"g"), 3), b"efg");
        assert_eq!(r.stats().segments, 4);
    }

    #[test]
    fn mid_stream_start_and_bare_ack() {
        let mut r = TcpReassembler::new(TcpConfig::default());
        assert!(r.push(key(), seg(5, b""), 0).is_empty());
        assert_eq!(r.flows(), 0);
        assert_eq!(r.push(key(), seg(77, b"xy"), 0), b"xy");
        assert_eq!(r.push(key(), seg(79, b"z"), 0), b"xyz");
    }

    #[test]
    fn out_of_order() {
        let mut r = TcpReassembler::new(TcpConfig::default());
        r.push(key(), syn(0), 0);
        assert_eq!(r.push(key(), seg(1, b"aa"), 0), b"aa");
        assert_eq!(r.push(key(), seg(5, b"cc"), 0), b"aa");
        assert_eq!(r.push(key(), seg(7, b"dd"), 0), b"aa");
        assert_eq!(r.push(key(), seg(3, b"bb"), 0), b"aabbccdd");
        assert_eq!(r.stats().out_of_order, 2);
    }

    #[test]
    fn retransmits_and_overlaps() {
        let mut r = TcpReassembler::new(TcpConfig::default());
        r.push(key(), syn(0), 0);
        r.push(key(), seg(1, b"abcd"), 0);
        assert_eq!(r.push(key(), seg(1, b"abcd"), 0), b"abcd");
        assert_eq!(r.push(key(), seg(3, b"cdef"), 0), b"abcdef");
        // Out-of-order duplicates and overlapping buffered segments.
        r.push(key(), seg(10, b"jk"), 0);
        r.push(key(), seg(10, b"jk"), 0);
        r.push(key(), seg(9, b"ijkl"), 0);
        assert_eq!(r.push(key(), seg(7, b"gh"), 0), b"abcdefghijkl");
        assert_eq!(r.push(key(), syn(0), 0), b"abcdefghijkl");
        assert_eq!(r.stats().retransmits, 4);
    }

    #[test]
    fn sequence_wrap() {
        let mut r = TcpReassembler::new(TcpConfig::default());
        let isn = u32::MAX - 3;
        r.push(key(), syn(isn), 0);
        // Data starts at u32::MAX - 2; "cdef" crosses the wrap, "gh" is after it.
        let base = isn.wrapping_add(1);
        assert_eq!(r.push(key(), seg(base.wrapping_add(6), b"gh"), 0), b"");
        assert_eq!(r.push(key(), seg(base, b"ab"), 0), b"ab");
        assert_eq!(
            r.push(key(), seg(base.wrapping_add(2), b"cdef"), 0),
            b"abcdefgh"
        );
        assert_eq!(r.push(key(), seg(base, b"ab"), 0), b"abcdefgh");
        assert_eq!(
            r.push(key(), seg(base.wrapping_add(8), b"ij"), 0),
            b"abcdefghij"
        );
    }

    #[test]
    fn two_sip_messages_in_one_segment() {
        let mut both = MSG1.to_vec();
        both.extend_from_slice(MSG2);
        let mut r = TcpReassembler::new(TcpConfig::default());
        let got = r.push(key(), seg(100, &both), 0).to_vec();
        assert_eq!(got, both);
        assert_eq!(resync_sip(&got[1..]).map(|o| o + 1), Some(MSG1.len()));
        r.consume(&key(), MSG1.len());
        assert_eq!(r.push(key(), seg(100, &both), 0), MSG2);
        r.consume(&key(), MSG2.len());
        assert!(r.push(key(), seg(100, &both), 0).is_empty());
    }

    #[test]
    fn message_split_over_three_segments() {
        let (a, rest) = MSG1.split_at(10);
        let (b, c) = rest.split_at(20);
        let mut r = TcpReassembler::new(TcpConfig::default());
        r.push(key(), syn(41), 0);
        // Arrives as c, a, b.
        assert!(r.push(key(), seg(42 + 30, c), 0).is_empty());
        assert_eq!(r.push(key(), seg(42, a), 0), a);
        assert_eq!(r.push(key(), seg(42 + 10, b), 0), MSG1);
    }

    #[test]
    fn gap_skip_by_timeout_then_resync() {
        let cfg = TcpConfig::default();
        let mut r = TcpReassembler::new(cfg);
        r.push(key(), syn(0), 0);
        // First half of a message arrives, the middle is lost, then the tail and MSG2.
        let (head, tail) = MSG1.split_at(20);
        assert_eq!(r.push(key(), seg(1, head), 0), head);
        let mut after = tail[10..].to_vec();
        after.extend_from_slice(MSG2);
        let after_seq: u32 = 1 + 30;
        assert_eq!(r.push(key(), seg(after_seq, &after), 1), head);
        r.expire(cfg.gap_timeout_ns + 2);
        assert_eq!(r.stats().gaps_skipped, 1);
        // The stale head was dropped; the stream resumes at the buffered segment.
        let got = r
            .push(key(), seg(after_seq, &after), cfg.gap_timeout_ns + 3)
            .to_vec();
        assert_eq!(got, after);
        let off = resync_sip(&got).unwrap();
        assert_eq!(&got[off..], MSG2);
        r.consume(&key(), got.len());
        assert_eq!(
            r.push(key(), seg(after_seq + after.len() as u32, b"x"), 0),
            b"x"
        );
    }

    #[test]
    fn gap_skip_by_buffer_limit() {
        // Room for 100 bytes and the overhead of two held segments.
        let cfg = TcpConfig {
            max_buffered_per_flow: 100 + 2 * SEGMENT_OVERHEAD,
            ..TcpConfig::default()
        };
        let mut r = TcpReassembler::new(cfg);
        r.push(key(), syn(0), 0);
        assert_eq!(r.push(key(), seg(1, b"lost-"), 0), b"lost-");
        assert!(r.push(key(), seg(100, &[b'a'; 60]), 0).len() == 5);
        // This pushes the held bytes over the limit: the hole at 6..100 is skipped.
        let got = r.push(key(), seg(160, &[b'b'; 60]), 0);
        assert_eq!(got.len(), 120);
        assert_eq!(r.stats().gaps_skipped, 1);
        assert_eq!(r.stats().bytes_dropped, 5);
    }

    #[test]
    fn unframeable_data_is_capped() {
        let cfg = TcpConfig {
            max_buffered_per_flow: 10,
            ..TcpConfig::default()
        };
        let mut r = TcpReassembler::new(cfg);
        assert_eq!(r.push(key(), seg(0, b"0123456789"), 0).len(), 10);
        // The consumer gets one more chance to frame data past the limit...
        assert_eq!(r.push(key(), seg(10, b"a"), 0).len(), 11);
        // ...then it is dropped.
        assert_eq!(r.stats().bytes_dropped, 0);
        assert_eq!(r.push(key(), seg(11, b"b"), 0), b"b");
        assert_eq!(r.stats().bytes_dropped, 11);
    }

    #[test]
    fn fin_delivers_then_closes() {
        let cfg = TcpConfig::default();
        let mut r = TcpReassembler::new(cfg);
        r.push(key(), syn(0), 0);
        // FIN arrives before the data preceding it.
        let fin = with_flags(seg(4, b"de"), |f| f.fin = true);
        assert!(r.push(key(), fin, 0).is_empty());
        assert_eq!(r.push(key(), seg(1, b"abc"), 0), b"abcde");
        r.consume(&key(), 5);
        // Late retransmissions are not delivered again.
        assert!(r.push(key(), seg(1, b"abc"), 1).is_empty());
        r.expire(cfg.close_linger_ns + 2);
        assert_eq!(r.flows(), 0);
        // A new connection on the same 4-tuple starts fresh.
        r.push(key(), syn(500), 0);
        assert_eq!(r.push(key(), seg(501, b"new"), 0), b"new");
    }

    #[test]
    fn rst_closes() {
        let mut r = TcpReassembler::new(TcpConfig::default());
        assert_eq!(r.push(key(), seg(10, b"abc"), 0), b"abc");
        let rst = with_flags(seg(13, b""), |f| f.rst = true);
        assert_eq!(r.push(key(), rst, 0), b"abc");
        assert!(r.push(key(), seg(13, b"zz"), 0).starts_with(b"abc"));
        assert_eq!(r.push(key(), seg(13, b"zz"), 0), b"abc");
        // RST of an unknown flow creates nothing.
        let other = FlowKey {
            src: key().dst,
            dst: key().src,
        };
        assert!(r.push(other, rst, 0).is_empty());
        assert_eq!(r.flows(), 1);
    }

    #[test]
    fn flow_limit_evicts_lru() {
        let cfg = TcpConfig {
            max_flows: 3,
            ..TcpConfig::default()
        };
        let mut r = TcpReassembler::new(cfg);
        for i in 0..5u16 {
            let k = FlowKey {
                src: SocketAddr::from(([10, 0, 0, 1], 1000 + i)),
                dst: SocketAddr::from(([10, 0, 0, 2], 5060)),
            };
            r.push(k, seg(0, b"x"), u64::from(i));
        }
        assert_eq!(r.flows(), 3);
        assert_eq!(r.stats().flows_evicted, 2);
        r.expire(cfg.idle_timeout_ns + 10);
        assert_eq!(r.flows(), 0);
        assert_eq!(r.stats().flows_expired, 3);
    }

    /// SIP over TCP in 1-byte segments with a gap before each: every segment is held out of
    /// order, so what bounds the direction is the segment count and the per-segment overhead,
    /// not the (tiny) payload.
    #[test]
    fn one_byte_segments_with_gaps_stay_within_the_bounds() {
        let cfg = TcpConfig::default();
        let mut r = TcpReassembler::new(cfg);
        r.push(key(), syn(0), 0);
        for i in 0..100_000u32 {
            r.push(key(), seg(2 + 2 * i, b"x"), u64::from(i));
            assert!(r.held_segments() <= cfg.max_segments_per_flow, "{i}");
            assert!(
                r.held_bytes() <= cfg.max_buffered_per_flow + FLOW_OVERHEAD,
                "{i}"
            );
        }
        let f = &r.flows[&key()];
        // Held bytes are counted with their overhead: 1-byte segments cost 81 bytes each.
        assert_eq!(
            f.held(),
            f.ready.len() + f.ooo.len() * (1 + SEGMENT_OVERHEAD)
        );
        assert_eq!((r.held_bytes(), r.held_segments()), r.recounted());
        assert!(r.stats().gaps_skipped > 90_000, "{:?}", r.stats());
        // The hole-skipping drops each 1-byte "message" before the next hole: nothing glued.
        assert!(f.ready.len() <= 1);
    }

    /// Many directions each holding out-of-order data up to its own bound would exceed the total:
    /// the largest holders lose what they hold, a direction delivering in order is untouched.
    #[test]
    fn total_bounds_shed_the_largest_holders() {
        let cfg = TcpConfig {
            max_total_bytes: 64 * 1024,
            max_total_segments: 500,
            ..TcpConfig::default()
        };
        let mut r = TcpReassembler::new(cfg);
        let flow = |i: u16| FlowKey {
            src: SocketAddr::from(([10, 0, 1, 1], 1000 + i)),
            dst: SocketAddr::from(([10, 0, 0, 2], 5060)),
        };
        let honest = flow(999);
        r.push(honest, syn(0), 0);
        let mut delivered = Vec::new();
        let mut seq = 1u32;
        for round in 0..200u32 {
            for i in 0..50u16 {
                // Each attacker direction leaves a hole at its start and sends 1-byte segments.
                r.push(flow(i), seg(0, b"a"), 0);
                r.push(flow(i), seg(2 + 2 * round, b"b"), u64::from(round));
                assert!(r.held_bytes() <= cfg.max_total_bytes, "{round}");
                assert!(r.held_segments() <= cfg.max_total_segments, "{round}");
                assert_eq!((r.held_bytes(), r.held_segments()), r.recounted());
            }
            let got = r.push(honest, seg(seq, MSG1), u64::from(round));
            assert_eq!(got, MSG1, "the in-order direction loses nothing");
            delivered.push(got.len());
            r.consume(&honest, MSG1.len());
            seq += MSG1.len() as u32;
        }
        assert!(r.stats().segments_shed > 0, "{:?}", r.stats());
        assert_eq!(delivered.len(), 200);
    }

    #[test]
    fn resync_finds_start_lines() {
        assert_eq!(resync_sip(b"INVITE sip:bob@x SIP/2.0\r\n"), Some(0));
        assert_eq!(resync_sip(b"garbage\r\nBYE sips:x SIP/2.0\r\n"), Some(9));
        assert_eq!(resync_sip(b"xx\r\nMESSAGE tel:+1 SIP/2.0"), Some(4));
        assert_eq!(resync_sip(b"xx\r\nSIP/2.0 180 Ringing\r\n"), Some(4));
        assert_eq!(resync_sip(b"xx\r\nsip/2.0 200 OK\r\n"), Some(4));
        // Not at a line start, wrong scheme, lowercase method, no status code.
        assert_eq!(resync_sip(b"xx INVITE sip:a\r\n"), None);
        assert_eq!(resync_sip(b"xx\r\nINVITE http://a\r\n"), None);
        assert_eq!(resync_sip(b"xx\r\ninvite sip:a\r\n"), None);
        assert_eq!(resync_sip(b"xx\r\nSIP/2.0 OK\r\n"), None);
        assert_eq!(resync_sip(b"xx\r\nINVITEX sip:a\r\n"), None);
        assert_eq!(resync_sip(b""), None);
        assert_eq!(resync_sip(b"abc\r\n"), None);
        // A start line cut off by the end of the buffer is kept.
        assert_eq!(resync_sip(b"xx\r\nINVI"), Some(4));
        assert_eq!(resync_sip(b"xx\r\nREGISTER si"), Some(4));
        assert_eq!(resync_sip(b"xx\r\nSIP/2.0 1"), Some(4));
        assert_eq!(resync_sip(b"xx\r\nSUBSCRIBE"), Some(4));
    }

    proptest! {
        /// Any segmentation, ordering and duplication of a stream reassembles to the stream.
        #[test]
        fn random_segmentation(
            stream in proptest::collection::vec(any::<u8>(), 1..3000),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
            isn in any::<u32>(),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            points.dedup();
            let mut segs: Vec<(u32, &[u8])> = points
                .windows(2)
                .map(|w| (isn.wrapping_add(1).wrapping_add(w[0] as u32), &stream[w[0]..w[1]]))
                .collect();
            let n = segs.len();
            for (i, idx) in order.iter().enumerate() {
                segs.swap(i % n, idx.index(n));
            }
            for idx in order.iter().take(8) {
                let dup = segs[idx.index(n)];
                segs.insert(idx.index(segs.len()), dup);
            }
            let mut r = TcpReassembler::new(TcpConfig::default());
            r.push(key(), syn(isn), 0);
            let mut out = Vec::new();
            for (seq, data) in segs {
                let got = r.push(key(), seg(seq, data), 0);
                out.extend_from_slice(got);
                let n = got.len();
                r.consume(&key(), n);
            }
            prop_assert_eq!(out, stream);
        }

        /// Whatever arrives, the running totals equal the directions' sum and stay in bounds.
        #[test]
        fn totals_track_the_directions(
            ops in proptest::collection::vec((0u16..6, any::<u16>(), 0usize..40, 0u8..8), 1..300),
        ) {
            let cfg = TcpConfig {
                max_flows: 4,
                max_buffered_per_flow: 2048,
                max_segments_per_flow: 12,
                max_total_bytes: 4096,
                max_total_segments: 30,
                ..TcpConfig::default()
            };
            let mut r = TcpReassembler::new(cfg);
            let data = [b'z'; 40];
            for (i, (port, seq, len, kind)) in ops.into_iter().enumerate() {
                let k = FlowKey {
                    src: SocketAddr::from(([10, 0, 0, 1], 1000 + port)),
                    dst: SocketAddr::from(([10, 0, 0, 2], 5060)),
                };
                let now = i as u64 * 100_000_000;
                match kind {
                    0 => { r.push(k, syn(u32::from(seq)), now); }
                    1 => r.consume(&k, len),
                    2 => r.expire(now),
                    _ => { r.push(k, seg(u32::from(seq), &data[..len]), now); }
                }
                prop_assert_eq!((r.held_bytes(), r.held_segments()), r.recounted());
                prop_assert!(r.held_segments() <= cfg.max_total_segments);
                prop_assert!(r.held_bytes() <= cfg.max_total_bytes);
            }
        }

        /// Arbitrary input never panics the parser, the reassembler or resync.
        #[test]
        fn garbage_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            now in any::<u64>(),
        ) {
            let _ = resync_sip(&bytes);
            let mut r = TcpReassembler::new(TcpConfig { max_buffered_per_flow: 64, ..TcpConfig::default() });
            if let Ok((_, _, s)) = parse_tcp(&bytes) {
                r.push(key(), s, now);
                r.push(key(), s, now.wrapping_add(u64::MAX / 2));
                r.expire(u64::MAX);
            }
        }
    }
}
