//! Placement of RTP packets on a recording timeline.
//!
//! A passive recorder cannot trust either clock alone: RTP timestamps give exact relative timing
//! within a stream but jump on SSRC changes and sender restarts, while capture times are
//! distorted by network jitter. [`StreamTimeline`] anchors each stream's RTP timestamps at the
//! capture time of its first packet and then follows the timestamps, so jitter never shows up in
//! the recording, losses leave silence of exactly the right length, and the stream is
//! re-anchored on the capture clock only when the timestamps become implausible.
//!
//! Sequence numbers are tracked as in RFC 3550 Appendix A.1/A.3 to detect duplicates, packets
//! too late to place, and to count loss.

/// How far behind the highest sequence number a packet may arrive and still be placed.
pub const REORDER_WINDOW: u16 = 100;
/// Forward sequence jumps larger than this are treated as a possible sender restart.
const MAX_DROPOUT: i64 = 3000;
/// A placement further than this from the capture clock re-anchors the stream.
const RESYNC_SECONDS: u64 = 10;

/// Where a packet's audio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Write the decoded audio starting at output sample `pos`.
    Write { pos: u64 },
    /// A copy of a packet already placed: discard.
    Duplicate,
    /// Too late (or too far out of line) to place: discard.
    TooOld,
}

/// Counters describing what the timeline did with the packets it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimelineStats {
    /// Packets placed (duplicates and late packets excluded).
    pub received: u64,
    pub duplicates: u64,
    /// Packets discarded as too late or out of line.
    pub too_old: u64,
    pub ssrc_changes: u64,
    /// Re-anchorings on the capture clock: timestamp jumps and sequence restarts.
    pub resyncs: u64,
}

/// Sequence and timestamp state of the current source (one SSRC, one sequence run).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Source {
    ssrc: u32,
    /// Extended sequence numbers of the first and highest packet.
    base: i64,
    max: i64,
    /// Bit `i` set: sequence `max - i` has been placed.
    window: u128,
    /// Sequence number that would confirm a sequence restart (RFC 3550 `bad_seq`).
    probation: Option<u16>,
    /// RTP timestamp of the highest-sequence packet and its extended (unwrapped) value.
    ref_ts: u32,
    ref_ext_ts: i64,
    /// Packets placed from this source.
    received: u64,
}

impl Source {
    fn new(ssrc: u32, seq: u16, ts: u32) -> Source {
        Source {
            ssrc,
            base: i64::from(seq),
            max: i64::from(seq),
            window: 1,
            probation: None,
            ref_ts: ts,
            ref_ext_ts: i64::from(ts),
            received: 1,
        }
    }

    fn expected(&self) -> u64 {
        u64::try_from(self.max - self.base + 1).unwrap_or(0)
    }

    /// Unwraps a 32-bit timestamp relative to the newest packet's.
    fn extend_ts(&self, ts: u32) -> i64 {
        self.ref_ext_ts + i64::from(ts.wrapping_sub(self.ref_ts) as i32)
    }
}

/// Maps one direction's RTP packets to sample positions in the recording.
///
/// Serializable: the daemon journals it for active calls, so after a restart the stream's
/// packets land at the same sample positions they would have had (the anchor is kept).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StreamTimeline {
    clock_rate: u32,
    out_rate: u32,
    src: Option<Source>,
    /// Extended RTP timestamp that maps to output sample `pos_anchor`.
    ts_anchor: i64,
    pos_anchor: u64,
    /// Earliest position the current anchoring may write: the end of audio from before it.
    floor: u64,
    /// Estimated end of the latest audio placed.
    end_pos: u64,
    /// Observed packet duration in timestamp units, for estimating where audio ends.
    frame_ts: u32,
    /// Expected-packet count of earlier sources (RFC 3550 A.3 per source, summed).
    prev_expected: u64,
    stats: TimelineStats,
    /// Set by [`StreamTimeline::resume`]: the next packet ahead of the newest starts a new
    /// accounting run (packets of a recorder outage were sent, not lost on the network).
    #[serde(default)]
    resumed: bool,
}

impl StreamTimeline {
    /// A timeline for a stream with RTP clock `clock_rate` written at `out_rate` samples/s.
    pub fn new(clock_rate: u32, out_rate: u32) -> StreamTimeline {
        let clock_rate = clock_rate.max(1);
        StreamTimeline {
            clock_rate,
            out_rate: out_rate.max(1),
            src: None,
            ts_anchor: 0,
            pos_anchor: 0,
            floor: 0,
            end_pos: 0,
            // 20 ms until measured: the near-universal packetisation.
            frame_ts: (clock_rate / 50).max(1),
            prev_expected: 0,
            stats: TimelineStats::default(),
            resumed: false,
        }
    }

    /// Continues a timeline restored from a snapshot after the recorder was down: positions
    /// keep following the same anchor (so audio after the outage lands where its timestamps
    /// say), but the packets sent while nobody listened are not counted as network loss.
    pub fn resume(&mut self) {
        self.resumed = true;
    }

    /// Estimated end (output samples) of the latest audio placed.
    pub fn end_pos(&self) -> u64 {
        self.end_pos
    }

    pub fn stats(&self) -> TimelineStats {
        self.stats
    }

    /// Packets expected from the sequence numbers seen (RFC 3550 A.3), over all sources.
    pub fn expected(&self) -> u64 {
        self.prev_expected + self.src.as_ref().map_or(0, Source::expected)
    }

    /// Packets expected but not placed (never negative: duplicates are not counted).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.stats.received)
    }

    /// Decides where the packet `(ssrc, seq, ts)`, captured at output sample `arrival_pos`
    /// (samples at the output rate since the recording started), goes.
    pub fn place(&mut self, ssrc: u32, seq: u16, ts: u32, arrival_pos: u64) -> Placement {
        let Some(src) = self.src.as_mut() else {
            return self.start(ssrc, seq, ts, arrival_pos);
        };
        if src.ssrc != ssrc {
            self.stats.ssrc_changes += 1;
            return self.start(ssrc, seq, ts, arrival_pos);
        }
        let delta = i64::from(seq.wrapping_sub(src.max as u16) as i16);
        if delta > 0 && delta <= MAX_DROPOUT {
            self.newest(delta, ts, arrival_pos)
        } else if delta <= 0 && -delta <= i64::from(REORDER_WINDOW) {
            self.late(-delta, ts, arrival_pos)
        } else {
            self.out_of_line(delta, seq, ts, arrival_pos)
        }
    }

    /// Starts a new source (first packet, new SSRC, or confirmed sequence restart), anchored at
    /// its capture time but never overlapping audio already placed.
    fn start(&mut self, ssrc: u32, seq: u16, ts: u32, arrival_pos: u64) -> Placement {
        if let Some(old) = self.src.take() {
            self.prev_expected += old.expected();
        }
        let src = Source::new(ssrc, seq, ts);
        self.ts_anchor = src.ref_ext_ts;
        self.src = Some(src);
        self.floor = self.end_pos;
        self.pos_anchor = arrival_pos.max(self.end_pos);
        self.placed(self.pos_anchor)
    }

    /// Output position of an extended timestamp under the current anchoring (may be negative).
    fn position(&self, ext_ts: i64) -> i64 {
        let rel = i128::from(ext_ts - self.ts_anchor) * i128::from(self.out_rate);
        let scaled = rel.div_euclid(i128::from(self.clock_rate));
        let pos = i128::from(self.pos_anchor) + scaled;
        i64::try_from(pos).unwrap_or(if pos < 0 { i64::MIN } else { i64::MAX })
    }

    /// Whether `pos` is where the capture clock says audio could plausibly be.
    fn plausible(&self, pos: i64, arrival_pos: u64) -> bool {
        let limit = u64::from(self.out_rate) * RESYNC_SECONDS;
        let floor = i64::try_from(self.floor).unwrap_or(i64::MAX);
        pos >= floor
            && (i128::from(pos) - i128::from(arrival_pos)).unsigned_abs() <= u128::from(limit)
    }

    fn placed(&mut self, pos: u64) -> Placement {
        self.stats.received += 1;
        let frame_out =
            u64::from(self.frame_ts) * u64::from(self.out_rate) / u64::from(self.clock_rate);
        self.end_pos = self.end_pos.max(pos.saturating_add(frame_out));
        Placement::Write { pos }
    }

    /// A packet ahead of every earlier one.
    fn newest(&mut self, delta: i64, ts: u32, arrival_pos: u64) -> Placement {
        let Some(src) = self.src.as_mut() else {
            return Placement::TooOld;
        };
        let ts_step = i64::from(ts.wrapping_sub(src.ref_ts) as i32);
        let ext_ts = src.ref_ext_ts + ts_step;
        if self.resumed {
            // First packet after a recorder restart: what was sent meanwhile was not seen, so
            // it starts a new accounting run instead of being reported as lost.
            self.resumed = false;
            self.prev_expected += src.expected();
            src.base = src.max + delta;
        }
        if delta == 1 && ts_step > 0 && ts_step <= i64::from(self.clock_rate) {
            self.frame_ts = ts_step as u32;
        }
        src.window = if delta >= 128 { 0 } else { src.window << delta } | 1;
        src.max += delta;
        src.ref_ts = ts;
        src.ref_ext_ts = ext_ts;
        src.probation = None;
        src.received += 1;
        let pos = self.position(ext_ts);
        if ts_step < 0 || !self.plausible(pos, arrival_pos) {
            // Timestamps jumped (or ran backwards): follow the capture clock from here.
            self.stats.resyncs += 1;
            self.ts_anchor = ext_ts;
            self.floor = self.end_pos;
            self.pos_anchor = arrival_pos.max(self.end_pos);
            return self.placed(self.pos_anchor);
        }
        self.placed(u64::try_from(pos).unwrap_or(0))
    }

    /// A packet `back` sequence numbers behind the newest (within the reorder window).
    fn late(&mut self, back: i64, ts: u32, arrival_pos: u64) -> Placement {
        let Some(src) = self.src.as_ref() else {
            return Placement::TooOld;
        };
        let bit = if back < 128 { 1u128 << back } else { 0 };
        if src.window & bit != 0 {
            self.stats.duplicates += 1;
            return Placement::Duplicate;
        }
        let ext_ts = src.extend_ts(ts);
        let pos = self.position(ext_ts);
        // Late packets never re-anchor: a stray old packet must not move the whole stream.
        if ext_ts > src.ref_ext_ts || !self.plausible(pos, arrival_pos) {
            self.stats.too_old += 1;
            return Placement::TooOld;
        }
        let Some(src) = self.src.as_mut() else {
            return Placement::TooOld;
        };
        src.window |= bit;
        src.base = src.base.min(src.max - back);
        src.received += 1;
        self.placed(u64::try_from(pos).unwrap_or(0))
    }

    /// A sequence number far from the newest: a very late packet, a long outage, or a sender
    /// restart. Packets whose timestamps fit their sequence numbers are late (behind) or follow
    /// an outage (ahead); otherwise, as in RFC 3550 A.1, a restart is accepted once two
    /// consecutive packets confirm it.
    fn out_of_line(&mut self, delta: i64, seq: u16, ts: u32, arrival_pos: u64) -> Placement {
        let Some(src) = self.src.as_mut() else {
            return Placement::TooOld;
        };
        let ts_step = i64::from(ts.wrapping_sub(src.ref_ts) as i32);
        // Does the timestamp move by about as many frames as the sequence number?
        let consistent =
            (ts_step - delta * i64::from(self.frame_ts)).abs() <= i64::from(self.clock_rate);
        if delta > 0 && consistent {
            // A long outage or hold during which the sender's counters ran on: the timing is
            // intact, but the skipped packets were never sent, so they start a new accounting
            // run instead of being reported as lost.
            self.prev_expected += src.expected();
            let ext = src.max + delta;
            src.base = ext;
            src.max = ext - 1;
            src.window = 0;
            return self.newest(1, ts, arrival_pos);
        }
        if !(delta < 0 && ts_step <= 0 && consistent) {
            if src.probation == Some(seq) {
                self.stats.resyncs += 1;
                let ssrc = src.ssrc;
                return self.start(ssrc, seq, ts, arrival_pos);
            }
            src.probation = Some(seq.wrapping_add(1));
        }
        self.stats.too_old += 1;
        Placement::TooOld
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    fn w(pos: u64) -> Placement {
        Placement::Write { pos }
    }

    /// Feeds 20 ms packets `range` starting from (seq0, ts0) arriving on time after `start`.
    fn feed(
        t: &mut StreamTimeline,
        seq0: u16,
        ts0: u32,
        start: u64,
        range: std::ops::Range<u16>,
    ) -> Vec<Placement> {
        range
            .map(|i| {
                let seq = seq0.wrapping_add(i);
                let ts = ts0.wrapping_add(u32::from(i) * 160);
                // Up to 3 ms of network jitter.
                let jitter = u64::from(i % 4) * 8;
                t.place(SSRC, seq, ts, start + u64::from(i) * 160 + jitter)
            })
            .collect()
    }

    #[test]
    fn in_order() {
        let mut t = StreamTimeline::new(8000, 8000);
        let got = feed(&mut t, 100, 5000, 1000, 0..50);
        let want: Vec<_> = (0..50).map(|i| w(1000 + i * 160)).collect();
        assert_eq!(got, want);
        assert_eq!((t.expected(), t.lost()), (50, 0));
        assert_eq!(t.stats().received, 50);
    }

    #[test]
    fn upsampled_output() {
        // G.722: 8 kHz RTP clock, 16 kHz output.
        let mut t = StreamTimeline::new(8000, 16000);
        assert_eq!(t.place(SSRC, 1, 0, 500), w(500));
        assert_eq!(t.place(SSRC, 2, 160, 830), w(820));
    }

    #[test]
    fn reorder_and_duplicate() {
        let mut t = StreamTimeline::new(8000, 8000);
        assert_eq!(t.place(SSRC, 10, 0, 1000), w(1000));
        assert_eq!(t.place(SSRC, 12, 320, 1330), w(1320));
        assert_eq!(t.place(SSRC, 11, 160, 1340), w(1160));
        assert_eq!(t.place(SSRC, 11, 160, 1341), Placement::Duplicate);
        assert_eq!(t.place(SSRC, 12, 320, 1342), Placement::Duplicate);
        assert_eq!(t.place(SSRC, 13, 480, 1480), w(1480));
        // The stream's true first packet, overtaken by its successor.
        assert_eq!(t.place(SSRC, 9, 0u32.wrapping_sub(160), 1490), w(840));
        assert_eq!(
            t.place(SSRC, 9, 0u32.wrapping_sub(160), 1491),
            Placement::Duplicate
        );
        let s = t.stats();
        assert_eq!((s.received, s.duplicates, s.too_old), (5, 3, 0));
        assert_eq!((t.expected(), t.lost()), (5, 0));
    }

    #[test]
    fn sequence_wrap() {
        let mut t = StreamTimeline::new(8000, 8000);
        let got = feed(&mut t, 65530, 0, 0, 0..20);
        let want: Vec<_> = (0..20).map(|i| w(i * 160)).collect();
        assert_eq!(got, want);
        assert_eq!((t.expected(), t.lost()), (20, 0));
        // A late packet from before the wrap is still recognised as a duplicate.
        assert_eq!(t.place(SSRC, 65535, 5 * 160, 3300), Placement::Duplicate);
    }

    #[test]
    fn timestamp_wrap() {
        let mut t = StreamTimeline::new(8000, 8000);
        let got = feed(&mut t, 7, u32::MAX - 800, 2000, 0..20);
        let want: Vec<_> = (0..20).map(|i| w(2000 + i * 160)).collect();
        assert_eq!(got, want);
        assert_eq!(t.stats().resyncs, 0);
    }

    #[test]
    fn loss_leaves_gap() {
        let mut t = StreamTimeline::new(8000, 8000);
        assert_eq!(t.place(SSRC, 1, 0, 0), w(0));
        assert_eq!(t.place(SSRC, 2, 160, 160), w(160));
        // 3 and 4 lost: packet 5 starts 3 frames after 2, leaving 320 samples of silence.
        assert_eq!(t.place(SSRC, 5, 640, 645), w(640));
        assert_eq!((t.expected(), t.lost()), (5, 2));
        // One of them turns up late after all.
        assert_eq!(t.place(SSRC, 3, 320, 700), w(320));
        assert_eq!(t.lost(), 1);
    }

    #[test]
    fn too_old() {
        let mut t = StreamTimeline::new(8000, 8000);
        feed(&mut t, 0, 0, 0, 0..200);
        assert_eq!(t.place(SSRC, 50, 50 * 160, 200 * 160), Placement::TooOld);
        assert_eq!(t.place(SSRC, 51, 51 * 160, 200 * 160), Placement::TooOld);
        // Still in line afterwards: consistent late packets never trigger a restart.
        assert_eq!(t.place(SSRC, 200, 200 * 160, 200 * 160), w(200 * 160));
        assert_eq!(t.stats().too_old, 2);
        assert_eq!(t.stats().resyncs, 0);
        // Within the reorder window is fine.
        assert_eq!(
            t.place(SSRC, 150, 150 * 160, 200 * 160),
            Placement::Duplicate
        );
    }

    #[test]
    fn ssrc_change_never_overlaps() {
        let mut t = StreamTimeline::new(8000, 8000);
        feed(&mut t, 0, 0, 1000, 0..10); // audio up to 1000 + 1600
                                         // New SSRC whose first packet was captured slightly before the old audio's end.
        assert_eq!(t.place(0xbeef, 5000, 777_777, 2500), w(2600));
        assert_eq!(t.place(0xbeef, 5001, 777_937, 2760), w(2760));
        // And one captured well after: anchored at capture.
        assert_eq!(t.place(0xcafe, 1, 3, 9000), w(9000));
        let s = t.stats();
        assert_eq!(s.ssrc_changes, 2);
        assert_eq!(t.expected(), 13);
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn timestamp_jump_resyncs() {
        let mut t = StreamTimeline::new(8000, 8000);
        feed(&mut t, 0, 0, 0, 0..5);
        // Timestamp leaps a minute ahead while capture time moves on normally.
        assert_eq!(t.place(SSRC, 5, 800 + 480_000, 800), w(800));
        assert_eq!(t.place(SSRC, 6, 960 + 480_000, 960), w(960));
        // Timestamps running backwards also re-anchor, after the audio already written.
        assert_eq!(t.place(SSRC, 7, 100, 1100), w(1120));
        assert_eq!(t.stats().resyncs, 2);
        // Small drift (< 10 s) is followed, not corrected.
        assert_eq!(t.place(SSRC, 8, 100 + 160 + 8000, 1280), w(1280 + 8000));
        assert_eq!(t.stats().resyncs, 2);
    }

    #[test]
    fn long_outage_with_running_counters() {
        let mut t = StreamTimeline::new(8000, 8000);
        feed(&mut t, 0, 0, 8000, 0..250);
        // 60.1 s of hold during which sequence numbers and timestamps ran on (3005 packets).
        let got = feed(&mut t, 0, 0, 8000, 3255..3260);
        let want: Vec<_> = (3255..3260).map(|i| w(8000 + i * 160)).collect();
        assert_eq!(got, want);
        assert_eq!((t.expected(), t.lost()), (255, 0));
        let s = t.stats();
        assert_eq!((s.received, s.too_old, s.resyncs), (255, 0, 0));
        // Stragglers from before the hold are too old.
        assert_eq!(
            t.place(SSRC, 249, 249 * 160, 8000 + 3260 * 160),
            Placement::TooOld
        );
    }

    #[test]
    fn sequence_restart() {
        let mut t = StreamTimeline::new(8000, 8000);
        feed(&mut t, 40000, 0, 0, 0..10);
        // Sender restarts its sequence numbers (same SSRC) with unrelated timestamps.
        assert_eq!(t.place(SSRC, 3, 999_000, 1600), Placement::TooOld);
        assert_eq!(t.place(SSRC, 4, 999_160, 1760), w(1760));
        assert_eq!(t.place(SSRC, 5, 999_320, 1920), w(1920));
        assert_eq!(t.stats().resyncs, 1);
        assert_eq!(t.expected(), 12);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut t = StreamTimeline::new(0, 0);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = t.place((x & 3) as u32, (x >> 8) as u16, (x >> 24) as u32, x >> 4);
        }
        let _ = (t.lost(), t.expected());
    }
}

#[cfg(test)]
mod first_packet_late {
    use super::*;

    /// The stream's very first packet arrives after its second (it took a slower path): it
    /// still goes right before it.
    #[test]
    fn first_packet_arriving_second_is_placed() {
        let mut t = StreamTimeline::new(8000, 8000);
        assert_eq!(t.place(7, 101, 1160, 5000), Placement::Write { pos: 5000 });
        assert_eq!(t.place(7, 100, 1000, 5001), Placement::Write { pos: 4840 });
        assert_eq!(t.place(7, 102, 1320, 5160), Placement::Write { pos: 5160 });
    }
}
