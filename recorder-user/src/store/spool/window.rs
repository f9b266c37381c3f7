//! A call's recording as its media worker holds it: the newest few hundred milliseconds of
//! audio in page-sized buffers laid out as in the file, the rest on disk.
//!
//! Audio is placed at absolute frame positions (the RTP timestamp says where). A buffer stays
//! open while a late or reordered packet may still land in it: until both directions' audio
//! is [`WINDOW_MS`] past its end (a direction [`STALE_MS`] behind the other is not waited
//! for), or [`OPEN`] newer buffers are open. Then it goes to the spool thread whole, one
//! `pwrite`. Audio for a part already sent goes as a patch of that channel alone; a part never
//! written stays a hole in the file, which reads as silence.
//!
//! Every buffer below `first` is on disk or was never written; every open buffer holds all the
//! audio of its part (it was fresh when opened), so writing it, whole or in part, is always
//! right. On the flush tick the open buffers' new audio is written too (copied, the buffers
//! stay open) with the header, so a crash of the process loses at most one flush interval.

use super::{
    arena::{Meaning, State, Tag},
    chunk::{Chunk, CHUNK_BYTES},
    Closing, FailReason, FileKind, Op, RecId, Spool,
};
use crate::store::wav::{Probe, DATA_OFFSET};

/// Most buffers one recording keeps open: 1 s of 8 kHz audio, 512 ms of 16 kHz (32 KiB).
pub const OPEN: usize = 8;
/// Buffers a call holds at 8 kHz in steady state: 300 ms behind the newest audio, the page
/// being filled, one on its way to disk (the figure the capacity estimate uses).
pub const BUFFERS_PER_CALL: usize = 4;
/// How far behind the newest audio a packet may land and still be a plain store in memory.
pub const WINDOW_MS: u64 = 300;
/// A direction this far behind the other is not waited for: its late audio goes as patches.
pub const STALE_MS: u64 = 2000;

const FRAME_BYTES: u64 = 4;
/// An empty dirty range.
const CLEAN: (u16, u16) = (CHUNK_BYTES as u16, 0);
const PAGE: u64 = CHUNK_BYTES as u64;

// A buffer is one page of the file, header included: buffer `p` holds file bytes
// `p * PAGE..(p + 1) * PAGE`, so every write is a whole, aligned page of the page cache (no
// partial page to look up or fill). Frames are 4 bytes from byte 44, so none straddles a page;
// buffer 0 starts with the header's 44 bytes, which only the header write touches.

/// File byte where frame `f` starts.
fn byte_of(f: u64) -> u64 {
    DATA_OFFSET + f * FRAME_BYTES
}

/// The buffer (file page) frame `f` lies in.
fn page_of(f: u64) -> u64 {
    byte_of(f) / PAGE
}

/// The first frame of buffer `p`.
fn first_frame(p: u64) -> u64 {
    (p * PAGE).saturating_sub(DATA_OFFSET) / FRAME_BYTES
}

/// One open buffer and the bytes of it not yet written to the file.
struct Slot {
    chunk: Option<Chunk>,
    lo: u16,
    hi: u16,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            chunk: None,
            lo: CLEAN.0,
            hi: CLEAN.1,
        }
    }
}

impl Slot {
    fn dirty(&self) -> bool {
        self.hi > self.lo
    }

    fn clean(&mut self) {
        (self.lo, self.hi) = CLEAN;
    }

    fn touch(&mut self, from: usize, to: usize) {
        self.lo = self.lo.min(from as u16);
        self.hi = self.hi.max(to as u16);
    }
}

/// A recording of a live call (see the [module docs](self)).
pub struct WavWindow {
    id: RecId,
    /// The call's identity in the buffers' headers (see [`super::arena`]).
    tag: Tag,
    rate: u32,
    /// Frames the recording is long: the end of the latest audio, or as extended.
    frames: u64,
    /// Longest recording accepted, in frames; samples beyond are dropped (and counted).
    max_frames: u64,
    /// End of the latest audio of each channel.
    heads: [u64; 2],
    /// Buffer index of the oldest open slot.
    first: u64,
    /// Slot of buffer `first`; buffer `first + k` is in slot `(start + k) % OPEN`.
    start: usize,
    slots: [Slot; OPEN],
    /// Frames the last header sent says.
    header_frames: u64,
    pub dropped_samples: u64,
    /// The first failure of this recording: nothing more is sent after a disk failure, audio
    /// is dropped after a backlog.
    failure: Option<FailReason>,
    /// A failure the worker has not logged yet.
    unreported: bool,
}

impl WavWindow {
    /// A new recording at `path` (or a free name beside it), created by the spool thread.
    pub fn create(
        spool: &mut Spool,
        id: RecId,
        tag: Tag,
        path: std::path::PathBuf,
        rate: u32,
        max_seconds: u64,
    ) -> WavWindow {
        let mut w = WavWindow::empty(id, tag, rate, max_seconds);
        if !spool.send(Op::Create {
            id,
            path,
            kind: FileKind::Wav { rate },
        }) {
            w.fail(spool, FailReason::Backlog);
        }
        w
    }

    /// Continues a recording an earlier run made (`probe` of it checked it is ours): audio goes
    /// on at its absolute positions, and whatever the file holds is only ever patched, never
    /// overwritten by a fresh buffer. `frames_hint` is what the journal last knew was written.
    #[expect(
        clippy::too_many_arguments,
        reason = "a recording's identity and its state"
    )]
    pub fn reopen(
        spool: &mut Spool,
        id: RecId,
        tag: Tag,
        path: std::path::PathBuf,
        rate: u32,
        max_seconds: u64,
        probe: Probe,
        frames_hint: u64,
    ) -> WavWindow {
        let mut w = WavWindow::empty(id, tag, rate, max_seconds);
        w.frames = probe.frames.max(frames_hint.min(probe.extent));
        w.header_frames = probe.frames;
        w.first = byte_of(probe.extent).div_ceil(PAGE);
        if !spool.send(Op::Reopen {
            id,
            path,
            kind: FileKind::Wav { rate },
        }) {
            w.fail(spool, FailReason::Backlog);
        }
        w
    }

    fn empty(id: RecId, tag: Tag, rate: u32, max_seconds: u64) -> WavWindow {
        WavWindow {
            id,
            tag,
            rate,
            frames: 0,
            max_frames: max_seconds.saturating_mul(u64::from(rate)),
            heads: [0; 2],
            first: 0,
            start: 0,
            slots: Default::default(),
            header_frames: 0,
            dropped_samples: 0,
            failure: None,
            unreported: false,
        }
    }

    pub fn id(&self) -> RecId {
        self.id
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The first failure of this recording, if any.
    pub fn failure(&self) -> Option<FailReason> {
        self.failure
    }

    /// A failure not yet logged by the worker (the worker knows the call to name).
    pub fn take_unreported(&mut self) -> Option<FailReason> {
        std::mem::take(&mut self.unreported)
            .then_some(self.failure)
            .flatten()
    }

    /// Records the recording's first failure (counted once per call) and, for a disk failure,
    /// gives its buffers back: nothing more reaches that file.
    pub fn fail(&mut self, spool: &mut Spool, reason: FailReason) {
        if self.failure.is_none() {
            self.failure = Some(reason);
            self.unreported = true;
            // Disk failures are counted by the spool thread, which saw them.
            if reason == FailReason::Backlog {
                spool.counters().fail(reason);
            }
        }
        if reason != FailReason::Backlog {
            for s in &mut self.slots {
                if let Some(c) = s.chunk.take() {
                    spool.pool.give(c);
                }
                s.clean();
            }
        }
    }

    fn disk_failed(&self) -> bool {
        self.failure.is_some_and(|f| f != FailReason::Backlog)
    }

    /// Changes the rate of a recording nothing has been written to yet (its first audio is
    /// 16 kHz G.722, say); a no-op once it has audio.
    pub fn set_rate(&mut self, rate: u32) {
        if self.frames != 0 || rate == 0 || rate == self.rate {
            return;
        }
        let max_seconds = self.max_frames / u64::from(self.rate.max(1));
        self.rate = rate;
        self.max_frames = max_seconds.saturating_mul(u64::from(rate));
    }

    /// Writes `samples` into `channel` (0 or 1) from frame `pos`. Never blocks: without a free
    /// buffer or room in the spool's queue the audio is dropped and the recording marked
    /// ([`FailReason::Backlog`]).
    pub fn write(&mut self, spool: &mut Spool, channel: usize, pos: u64, samples: &[i16]) {
        let channel = channel.min(1);
        let mut n = samples.len() as u64;
        if n == 0 || self.disk_failed() {
            return;
        }
        if pos >= self.max_frames {
            self.dropped_samples += n;
            return;
        }
        if pos + n > self.max_frames {
            self.dropped_samples += pos + n - self.max_frames;
            n = self.max_frames - pos;
        }
        let end = pos + n;
        self.heads[channel] = self.heads[channel].max(end);
        self.frames = self.frames.max(end);
        let mut at = pos;
        let mut done = 0usize;
        while at < end {
            let idx = page_of(at);
            let take = (end.min(first_frame(idx + 1)) - at) as usize;
            let part = &samples[done..done + take];
            if idx < self.first {
                self.patch(spool, channel, at, part);
            } else {
                if idx >= self.first + OPEN as u64 {
                    self.advance(spool, idx + 1 - OPEN as u64);
                }
                self.store(spool, idx, channel, at, part);
            }
            at += take as u64;
            done += take;
        }
        self.settle(spool);
    }

    /// Stores samples of buffer `idx` (open, or opened now) in memory.
    fn store(&mut self, spool: &mut Spool, idx: u64, channel: usize, pos: u64, samples: &[i16]) {
        let slot = &mut self.slots[(self.start + (idx - self.first) as usize) % OPEN];
        if slot.chunk.is_none() {
            match spool.pool.take() {
                Some(mut c) => {
                    c.mark(
                        &self.tag,
                        Meaning {
                            // What a crash recovery writes: never the header's bytes.
                            lo: (byte_of(first_frame(idx)) % PAGE) as u16,
                            hi: CHUNK_BYTES as u16,
                            offset: idx * PAGE,
                            ..Meaning::of(State::Open)
                        },
                    );
                    slot.chunk = Some(c);
                }
                None => {
                    self.fail(spool, FailReason::Backlog);
                    self.dropped_samples += samples.len() as u64;
                    return;
                }
            }
        }
        let Some(chunk) = slot.chunk.as_mut() else {
            return;
        };
        let from = (byte_of(pos) % PAGE) as usize;
        let to = from + samples.len() * FRAME_BYTES as usize;
        let frames = chunk.bytes_mut()[from..to].chunks_exact_mut(FRAME_BYTES as usize);
        // One loop per channel so the offset is a constant.
        if channel == 0 {
            for (f, s) in frames.zip(samples) {
                f[0..2].copy_from_slice(&s.to_le_bytes());
            }
        } else {
            for (f, s) in frames.zip(samples) {
                f[2..4].copy_from_slice(&s.to_le_bytes());
            }
        }
        slot.touch(from, to);
    }

    /// Audio for a part already handed to the spool thread: laid over the file there.
    fn patch(&mut self, spool: &mut Spool, channel: usize, pos: u64, samples: &[i16]) {
        let Some(mut chunk) = spool.pool.take() else {
            self.fail(spool, FailReason::Backlog);
            self.dropped_samples += samples.len() as u64;
            return;
        };
        for (b, s) in chunk.bytes_mut().chunks_exact_mut(2).zip(samples) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        chunk.mark(
            &self.tag,
            Meaning {
                channel: channel as u8,
                n: samples.len() as u16,
                seq: spool.seq(),
                offset: pos,
                ..Meaning::of(State::Patch)
            },
        );
        let op = Op::Patch {
            id: self.id,
            channel: channel as u8,
            pos,
            chunk,
            n: samples.len() as u16,
        };
        if !spool.send(op) {
            self.fail(spool, FailReason::Backlog);
        }
    }

    /// Hands the buffers every direction has moved past to the spool thread.
    fn settle(&mut self, spool: &mut Spool) {
        let newest = self.heads[0].max(self.heads[1]);
        let stale = STALE_MS * u64::from(self.rate) / 1000;
        let slowest = self
            .heads
            .iter()
            .filter(|&&h| h > 0 && h + stale >= newest)
            .min()
            .copied()
            .unwrap_or(newest);
        let settled = slowest.saturating_sub(WINDOW_MS * u64::from(self.rate) / 1000);
        while first_frame(self.first + 1) <= settled {
            self.seal_first(spool);
        }
    }

    /// Seals buffers until `first` is `new_first`.
    fn advance(&mut self, spool: &mut Spool, new_first: u64) {
        let n = new_first.saturating_sub(self.first);
        for _ in 0..n.min(OPEN as u64) {
            self.seal_first(spool);
        }
        // A jump far ahead: every slot is sealed and empty, the ring starts anew.
        self.first = self.first.max(new_first);
    }

    /// Sends the oldest open buffer's unwritten bytes to disk and frees its slot.
    fn seal_first(&mut self, spool: &mut Spool) {
        let slot = &mut self.slots[self.start];
        let (lo, hi) = (slot.lo, slot.hi);
        let dirty = slot.dirty();
        slot.clean();
        if let Some(chunk) = slot.chunk.take() {
            if dirty {
                if !self.write_out(spool, chunk, self.first, lo, hi) {
                    self.fail(spool, FailReason::Backlog);
                }
            } else {
                spool.pool.give(chunk);
            }
        }
        self.first += 1;
        self.start = (self.start + 1) % OPEN;
    }

    /// Sends bytes `lo..hi` of `chunk`, buffer `idx` of the file, to be written; its header
    /// says so first (see [`super::arena`]). `false`: the queue was full, the buffer is back in
    /// the pool.
    fn write_out(&self, spool: &mut Spool, mut chunk: Chunk, idx: u64, lo: u16, hi: u16) -> bool {
        let offset = idx * PAGE;
        chunk.mark(
            &self.tag,
            Meaning {
                lo,
                hi,
                seq: spool.seq(),
                offset,
                ..Meaning::of(State::Write)
            },
        );
        spool.send(Op::Write {
            id: self.id,
            offset,
            chunk,
            from: lo,
            len: hi - lo,
        })
    }

    /// Makes the recording at least `frames` long (silence after the last audio).
    pub fn extend_to(&mut self, frames: u64) {
        self.frames = self.frames.max(frames.min(self.max_frames));
    }

    /// Silences both channels from frame `from` to the end of what is written (a pause or stop
    /// asked for before the audio that followed it reached the worker).
    pub fn silence_from(&mut self, spool: &mut Spool, from: u64) {
        if self.disk_failed() || from >= self.frames {
            return;
        }
        for k in 0..OPEN {
            let idx = self.first + k as u64;
            let slot = &mut self.slots[(self.start + k) % OPEN];
            let (start, end) = (first_frame(idx), first_frame(idx + 1));
            let Some(chunk) = slot.chunk.as_mut() else {
                continue;
            };
            if end <= from {
                continue;
            }
            let at = (byte_of(from.max(start)) % PAGE) as usize;
            chunk.bytes_mut()[at..].fill(0);
            slot.touch(at, CHUNK_BYTES);
        }
        let on_disk = first_frame(self.first).min(self.frames);
        if from >= on_disk {
            return;
        }
        // The request rides in a buffer's header, so a crash cannot lose it.
        let Some(mut chunk) = spool.pool.take() else {
            self.fail(spool, FailReason::Backlog);
            return;
        };
        chunk.mark(
            &self.tag,
            Meaning {
                seq: spool.seq(),
                offset: from,
                to: on_disk,
                ..Meaning::of(State::Zero)
            },
        );
        let op = Op::Zero {
            id: self.id,
            from,
            to: on_disk,
            chunk,
        };
        if !spool.send(op) {
            self.fail(spool, FailReason::Backlog);
        }
    }

    /// The flush tick: the open buffers' unwritten audio (copied; they stay open) and the
    /// header go to disk, so the file is a valid WAV holding everything up to now.
    pub fn flush(&mut self, spool: &mut Spool) {
        if self.disk_failed() {
            return;
        }
        for k in 0..OPEN {
            let slot = &mut self.slots[(self.start + k) % OPEN];
            let Some(chunk) = slot.chunk.as_ref().filter(|_| slot.dirty()) else {
                continue;
            };
            // No spare buffer: the audio stays open and is written when it settles.
            let Some(mut copy) = spool.pool.take() else {
                continue;
            };
            let (lo, hi) = (slot.lo, slot.hi);
            let bytes = usize::from(lo)..usize::from(hi);
            copy.bytes_mut()[bytes.clone()].copy_from_slice(&chunk.bytes()[bytes]);
            // Not written (queue full): the audio stays dirty and goes when it settles.
            if self.write_out(spool, copy, self.first + k as u64, lo, hi) {
                self.slots[(self.start + k) % OPEN].clean();
            }
        }
        if self.frames != self.header_frames
            && spool.send(Op::Header {
                id: self.id,
                rate: self.rate,
                frames: self.frames,
            })
        {
            self.header_frames = self.frames;
        }
    }

    /// Asks the CPU to start fetching, for writing, the lines frames `pos..pos + frames` live
    /// in (the media worker's group warming). A hint only: nothing happens outside the open
    /// buffers.
    #[inline]
    pub fn prefetch(&self, pos: u64, frames: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            let idx = page_of(pos);
            if idx < self.first || idx >= self.first + OPEN as u64 {
                return;
            }
            let slot = &self.slots[(self.start + (idx - self.first) as usize) % OPEN];
            let Some(chunk) = slot.chunk.as_ref() else {
                return;
            };
            let base = chunk.bytes().as_ptr();
            let start = (byte_of(pos) % PAGE) as usize;
            let end = (start + (frames * FRAME_BYTES) as usize).min(CHUNK_BYTES);
            let mut at = start & !63;
            while at < end {
                // SAFETY: a prefetch is a hint that never faults; `at` is inside the buffer.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(base.add(at).cast()) };
                at += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (pos, frames);
    }

    /// Ends the recording: every open buffer to disk, then the final header and length. The
    /// returned [`Closing`] answers once the file is complete.
    pub fn close(mut self, spool: &mut Spool) -> Closing {
        if !self.disk_failed() {
            for _ in 0..OPEN {
                self.seal_first(spool);
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = spool.send(Op::Close {
            id: self.id,
            rate: self.rate,
            frames: self.frames,
            reply: tx,
        });
        if !sent {
            self.fail(spool, FailReason::Backlog);
        }
        for s in &mut self.slots {
            if let Some(c) = s.chunk.take() {
                spool.pool.give(c);
            }
        }
        Closing::new(rx)
    }
}

/// A call's raw RTP pcap (payload types CallTap cannot decode), written through the spool in
/// page-sized appends.
pub struct RawPcap {
    id: RecId,
    tag: Tag,
    chunk: Option<Chunk>,
    len: usize,
    /// Bytes of packets taken so far, against the spool's per-call bound.
    taken: u64,
    /// Packets dropped (no buffer, the queue was full, or past the per-call bound).
    pub dropped: u64,
}

/// Bytes of a pcap record header.
const RECORD_HEADER: usize = 16;

impl RawPcap {
    /// A new pcap at `path`, or (`append`) the one an earlier run of this call started.
    pub fn open(
        spool: &mut Spool,
        id: RecId,
        tag: Tag,
        path: std::path::PathBuf,
        append: bool,
    ) -> RawPcap {
        let op = if append {
            Op::Reopen {
                id,
                path,
                kind: FileKind::RawPcap,
            }
        } else {
            Op::Create {
                id,
                path,
                kind: FileKind::RawPcap,
            }
        };
        let mut raw = RawPcap {
            id,
            tag,
            chunk: None,
            len: 0,
            taken: 0,
            dropped: 0,
        };
        if !spool.send(op) {
            raw.dropped += 1;
        }
        raw
    }

    /// Appends one packet (cut to what fits a buffer); past the spool's per-call bound
    /// ([`super::SpoolConfig::raw_pcap_max_bytes`]) packets are counted, not kept.
    pub fn push(&mut self, spool: &mut Spool, ts_ns: u64, wire_len: u32, frame: &[u8]) {
        let cap = frame.len().min(CHUNK_BYTES - RECORD_HEADER);
        self.taken += (RECORD_HEADER + cap) as u64;
        if self.taken > spool.raw_pcap_max_bytes() {
            if self.dropped == 0 {
                spool
                    .counters()
                    .raw_over_limit
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.dropped += 1;
            return;
        }
        if self.len + RECORD_HEADER + cap > CHUNK_BYTES {
            self.flush(spool);
        }
        if self.chunk.is_none() {
            self.chunk = spool.pool.take();
            if let Some(c) = self.chunk.as_mut() {
                c.mark(&self.tag, Meaning::of(State::AppendOpen));
            }
            self.len = 0;
        }
        let Some(chunk) = self.chunk.as_mut() else {
            self.dropped += 1;
            return;
        };
        let b = &mut chunk.bytes_mut()[self.len..];
        let secs = (ts_ns / 1_000_000_000) as u32;
        let micros = ((ts_ns % 1_000_000_000) / 1000) as u32;
        b[0..4].copy_from_slice(&secs.to_le_bytes());
        b[4..8].copy_from_slice(&micros.to_le_bytes());
        b[8..12].copy_from_slice(&(cap as u32).to_le_bytes());
        b[12..16].copy_from_slice(&wire_len.max(cap as u32).to_le_bytes());
        b[16..16 + cap].copy_from_slice(&frame[..cap]);
        self.len += RECORD_HEADER + cap;
        chunk.set_n(self.len as u16);
    }

    /// Hands what is buffered to the spool thread.
    pub fn flush(&mut self, spool: &mut Spool) {
        if let Some(mut chunk) = self.chunk.take() {
            if self.len == 0 {
                spool.pool.give(chunk);
                return;
            }
            chunk.mark(
                &self.tag,
                Meaning {
                    n: self.len as u16,
                    seq: spool.seq(),
                    ..Meaning::of(State::Append)
                },
            );
            if !spool.send(Op::Append {
                id: self.id,
                chunk,
                len: self.len as u16,
            }) {
                self.dropped += 1;
            }
        }
        self.len = 0;
    }

    /// Ends the pcap; the [`Closing`] answers once it is complete.
    pub fn close(mut self, spool: &mut Spool) -> Closing {
        self.flush(spool);
        let (tx, rx) = crossbeam_channel::bounded(1);
        spool.send(Op::Close {
            id: self.id,
            rate: 0,
            frames: 0,
            reply: tx,
        });
        Closing::new(rx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{
        spool::{testing, Reply, SpoolConfig},
        wav,
    };

    const WAIT: Duration = Duration::from_secs(10);

    fn tag() -> Tag {
        Tag::new("call-1", false)
    }

    #[test]
    fn samples_land_at_their_positions_and_gaps_are_silence() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut spool, mut w) = testing::recording(tmp.path(), 8000);
        w.write(&mut spool, 0, 10, &[1, 2, 3]);
        w.write(&mut spool, 1, 0, &[-5; 4]);
        // Far ahead: everything before is sealed, the gap is a hole.
        w.write(&mut spool, 1, 300_000, &[7]);
        w.flush(&mut spool);
        assert!(spool.sync(WAIT));
        // A valid WAV at every flush, holding everything so far.
        assert_eq!(
            testing::read(&tmp.path().join("rec.wav")).len(),
            300_001 * 2
        );
        let (closed, s) = testing::finish(&mut spool, w);
        assert_eq!(closed.bytes, 44 + 300_001 * 4);
        assert_eq!(closed.error, None);
        assert_eq!(&s[0..8], &[0, -5, 0, -5, 0, -5, 0, -5]);
        assert_eq!(&s[20..26], &[1, 0, 2, 0, 3, 0]);
        assert_eq!(s[300_000 * 2 + 1], 7);
        assert!(s[30..300_000 * 2].iter().all(|&x| x == 0));
    }

    /// 20 ms packets on both channels for 6 s with flushes between, a jump far ahead, then
    /// packets arriving late behind it (patched into what is on disk) and one reordered
    /// within the window: every sample lands where it was written, whatever path it took.
    #[test]
    fn late_and_reordered_audio_lands_where_it_belongs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut spool, mut w) = testing::recording(tmp.path(), 8000);
        let value = |ch: usize, frame: u64| ((frame * 7 + ch as u64 * 3) % 30_000) as i16 + 1;
        let packet =
            |ch: usize, pos: u64| -> Vec<i16> { (pos..pos + 160).map(|f| value(ch, f)).collect() };
        let mut written = Vec::new();
        for k in 0..300u64 {
            // Packet k - 2 overtakes k - 1 now and then (a plain reorder in memory).
            let pos = k * 160;
            w.write(&mut spool, 0, pos, &packet(0, pos));
            w.write(&mut spool, 1, pos, &packet(1, pos));
            written.push(pos);
            if k % 50 == 49 {
                w.flush(&mut spool);
            }
        }
        let far = 160 * 1000;
        w.write(&mut spool, 0, far, &packet(0, far));
        w.write(&mut spool, 1, far, &packet(1, far));
        // Late: one on the channel written, one into the hole, one just before the jump.
        for late in [160 * 100, 160 * 301, 160 * 999] {
            w.write(&mut spool, 0, late, &packet(0, late));
            w.write(&mut spool, 1, late, &packet(1, late));
            if !written.contains(&late) {
                written.push(late);
            }
        }
        written.push(far);
        let (_, s) = testing::finish(&mut spool, w);
        assert_eq!(s.len() as u64, (far + 160) * 2);
        for f in 0..far + 160 {
            let audio = written.iter().any(|&p| (p..p + 160).contains(&f));
            for ch in 0..2 {
                let want = if audio { value(ch, f) } else { 0 };
                assert_eq!(s[(f * 2) as usize + ch], want, "frame {f} channel {ch}");
            }
        }
        assert!(
            spool
                .counters()
                .patches
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 2
        );
    }

    #[test]
    fn a_long_call_holds_a_few_buffers_however_long_it_runs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut spool, mut w) = testing::recording(tmp.path(), 8000);
        // 60 s of audio in 20 ms packets, one direction silent (one-way audio).
        for p in 0..3000u64 {
            w.write(&mut spool, 0, p * 160, &[(p % 1000) as i16 + 1; 160]);
            if p % 50 == 49 {
                w.flush(&mut spool);
            }
            let open = w.slots.iter().filter(|s| s.chunk.is_some()).count();
            assert!(open <= 4, "{open} buffers open at packet {p}");
        }
        let (_, s) = testing::finish(&mut spool, w);
        assert!(spool.sync(WAIT));
        let (made, _) = spool.pool.usage();
        assert_eq!(spool.pool.free_len(), made, "every buffer came back");
        for p in 0..3000usize {
            assert_eq!(s[p * 160 * 2], (p % 1000) as i16 + 1, "packet {p}");
        }
    }

    #[test]
    fn the_rate_is_free_until_audio_and_the_length_is_capped() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut spool = Spool::start(0, SpoolConfig::with_memory_mb(16));
        let mut w = WavWindow::create(
            &mut spool,
            RecId(1),
            tag(),
            tmp.path().join("r.wav"),
            8000,
            1,
        );
        w.set_rate(16_000);
        w.write(&mut spool, 1, 15_990, &[9; 20]);
        assert_eq!(w.dropped_samples, 10, "1 s at 16 kHz");
        w.set_rate(8000);
        assert_eq!(w.rate(), 16_000, "not once audio is in");
        w.write(&mut spool, 0, 0, &[]);
        w.write(&mut spool, 1, 1 << 40, &[]);
        let (closed, s) = testing::finish(&mut spool, w);
        let r = hound::WavReader::open(&closed.path).expect("wav");
        assert_eq!((r.spec().sample_rate, r.duration()), (16_000, 16_000));
        assert_eq!(s[15_999 * 2 + 1], 9);
    }

    /// A recording continued by a new run (the first one died without closing it) ends byte
    /// for byte like one written in one go, the gap between being silence.
    #[test]
    fn reopen_continues_byte_exact() {
        let tmp = tempfile::tempdir().expect("tmp");
        let before: Vec<i16> = (0..8000).map(|i| (i % 300) as i16 - 150).collect();
        let after: Vec<i16> = (0..4000).map(|i| (i % 77) as i16 * 3).collect();
        let (mut spool, mut one) = testing::recording(tmp.path(), 8000);
        one.write(&mut spool, 0, 0, &before);
        one.write(&mut spool, 1, 100, &before);
        one.write(&mut spool, 0, 300_000, &after);
        let (a, _) = testing::finish(&mut spool, one);

        let b = tmp.path().join("b.wav");
        let mut first = WavWindow::create(&mut spool, RecId(2), tag(), b.clone(), 8000, 3600);
        first.write(&mut spool, 0, 0, &before);
        first.write(&mut spool, 1, 100, &before);
        first.flush(&mut spool);
        assert!(spool.sync(WAIT));
        // The process dies here: what the flush wrote is on disk, nothing is closed (the
        // window's open buffers go with it).
        let _dead = first;
        let probe = wav::probe(&b, 8000).expect("probe");
        assert_eq!(probe.frames, 8100);
        let mut second =
            WavWindow::reopen(&mut spool, RecId(3), tag(), b.clone(), 8000, 3600, probe, 0);
        assert_eq!(second.frames(), 8100, "length from the header");
        // Late audio for the part the first run wrote goes over it, not a fresh page.
        second.write(&mut spool, 1, 50, &before[..10]);
        second.write(&mut spool, 0, 300_000, &after);
        let (two, _) = testing::finish(&mut spool, second);
        assert_eq!(two.bytes, a.bytes);
        let (a, b) = (
            std::fs::read(&a.path).expect("a"),
            std::fs::read(&b).expect("b"),
        );
        let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        // Only the 10 late samples of channel 1 at frame 50 differ.
        assert_eq!(differ.len(), 20, "{:?}", &differ[..differ.len().min(8)]);
        assert!(differ
            .iter()
            .all(|&i| (44 + 50 * 4..44 + 60 * 4).contains(&i) && (i - 44) % 4 >= 2));
    }

    #[test]
    fn a_taken_name_is_never_overwritten() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("rec.wav");
        std::fs::write(&path, b"an earlier file").expect("write");
        let (mut spool, mut w) = testing::recording(tmp.path(), 8000);
        w.write(&mut spool, 0, 0, &[3; 160]);
        let (closed, s) = testing::finish(&mut spool, w);
        assert_eq!(closed.path, tmp.path().join("rec-1.wav"));
        assert_eq!(s[0], 3);
        assert_eq!(std::fs::read(&path).expect("read"), b"an earlier file");
        let replies: Vec<Reply> = spool.replies().collect();
        assert!(
            matches!(&replies[..], [Reply::Opened { path, .. }] if path == &closed.path),
            "{replies:?}"
        );
    }

    #[test]
    fn a_file_that_cannot_be_made_fails_the_recording_alone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let blocker = tmp.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").expect("write");
        let mut spool = Spool::start(0, SpoolConfig::with_memory_mb(16));
        let mut bad =
            WavWindow::create(&mut spool, RecId(1), tag(), blocker.join("a.wav"), 8000, 60);
        let mut good = WavWindow::create(
            &mut spool,
            RecId(2),
            tag(),
            tmp.path().join("b.wav"),
            8000,
            60,
        );
        bad.write(&mut spool, 0, 0, &[1; 160]);
        good.write(&mut spool, 0, 0, &[2; 160]);
        assert!(spool.sync(WAIT));
        for r in spool.replies().collect::<Vec<_>>() {
            if let Reply::Failed { id, reason, .. } = r {
                assert_eq!((id, reason), (RecId(1), FailReason::Create));
                bad.fail(&mut spool, reason);
            }
        }
        assert_eq!(bad.take_unreported(), Some(FailReason::Create));
        let closed = bad.close(&mut spool).wait(WAIT).expect("closed");
        assert!(closed.error.is_some_and(|e| e.contains("cannot create")));
        let (_, s) = testing::finish(&mut spool, good);
        assert_eq!(s[0], 2);
    }

    #[test]
    fn without_buffers_audio_is_dropped_and_counted_never_waited_for() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut spool = Spool::start(
            0,
            SpoolConfig {
                max_buffers: 2,
                ..SpoolConfig::default()
            },
        );
        let mut w = WavWindow::create(
            &mut spool,
            RecId(1),
            tag(),
            tmp.path().join("r.wav"),
            8000,
            60,
        );
        // Three buffers' worth at once, all within the window: the third has no buffer.
        let n = 3 * crate::store::spool::CHUNK_FRAMES;
        w.write(&mut spool, 0, 0, &vec![5; n as usize]);
        assert_eq!(w.failure(), Some(FailReason::Backlog));
        assert_eq!(w.dropped_samples, n - first_frame(2));
        assert_eq!(w.take_unreported(), Some(FailReason::Backlog));
        assert_eq!(w.take_unreported(), None, "reported once");
        let (_, s) = testing::finish(&mut spool, w);
        assert_eq!(s[0], 5);
    }

    #[test]
    fn a_calls_raw_rtp_is_bounded() {
        let tmp = tempfile::tempdir().expect("tmp");
        let record = (16 + 214) as u64;
        let mut spool = Spool::start(
            0,
            SpoolConfig {
                raw_pcap_max_bytes: 10 * record,
                ..SpoolConfig::with_memory_mb(16)
            },
        );
        let path = tmp.path().join("big.rtp.pcap");
        let mut raw = RawPcap::open(
            &mut spool,
            RecId(9),
            Tag::new("u", true),
            path.clone(),
            false,
        );
        for i in 0..50u64 {
            raw.push(&mut spool, i * 20_000_000, 214, &[7u8; 214]);
        }
        assert_eq!(raw.dropped, 40);
        let closed = raw.close(&mut spool).wait(WAIT).expect("closed");
        assert_eq!(closed.bytes, 24 + 10 * record, "ten packets kept");
    }

    #[test]
    fn raw_rtp_goes_to_a_pcap_in_page_sized_appends() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut spool = Spool::start(0, SpoolConfig::with_memory_mb(16));
        let path = tmp.path().join("c.rtp.pcap");
        let mut raw = RawPcap::open(
            &mut spool,
            RecId(7),
            Tag::new("u", true),
            path.clone(),
            false,
        );
        let frame = [0xabu8; 214];
        for i in 0..50u64 {
            raw.push(
                &mut spool,
                1_700_000_000_000_000_000 + i * 20_000_000,
                214,
                &frame,
            );
        }
        let closed = raw.close(&mut spool).wait(WAIT).expect("closed");
        assert_eq!(closed.path, path);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 24 + 50 * (16 + 214));
        assert_eq!(closed.bytes, bytes.len() as u64);
        let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).expect("pcap");
        let mut n = 0;
        while let Some(p) = r.next_packet() {
            let p = p.expect("packet");
            assert_eq!(&p.data[..], &frame[..]);
            n += 1;
        }
        assert_eq!(n, 50);
    }
}
