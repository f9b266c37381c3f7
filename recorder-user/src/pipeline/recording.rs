//! Recording control of a live call: start, stop, pause, resume.
//!
//! CallTap records every call from its first packet, so "start" is on-demand only in the sense
//! that it resumes a recording that was stopped (or paused); there is no call that is not being
//! recorded until someone asks.
//!
//! The control plane (API, console) checks a transition against [`RecordingState`] and sends it
//! to the call's media worker, whose [`RecordingGate`] then keeps audio out of the file by
//! *position*: a span is the call time between two control events, turned into WAV sample
//! positions with the recording's rate, so a late or reordered packet whose RTP timestamp falls
//! inside a paused span is kept out as well, whatever order the packet and the control message
//! reach the worker in.

use serde::{Deserialize, Serialize};

use crate::store::spool::{Spool, WavWindow};

/// What an operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingAction {
    Start,
    Stop,
    Pause,
    Resume,
}

impl RecordingAction {
    pub fn parse(s: &str) -> Option<RecordingAction> {
        match s {
            "start" => Some(RecordingAction::Start),
            "stop" => Some(RecordingAction::Stop),
            "pause" => Some(RecordingAction::Pause),
            "resume" => Some(RecordingAction::Resume),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingAction::Start => "start",
            RecordingAction::Stop => "stop",
            RecordingAction::Pause => "pause",
            RecordingAction::Resume => "resume",
        }
    }
}

/// Whether a live call's audio goes into its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    #[default]
    Recording,
    Paused,
    /// Stopped for the rest of the call unless started again; the file ends where it stopped.
    Stopped,
}

impl RecordingState {
    /// The state after `action`, or None when the action makes no sense now (pausing a paused
    /// call, resuming one that was stopped rather than paused, starting one that records).
    pub fn apply(self, action: RecordingAction) -> Option<RecordingState> {
        use RecordingAction as A;
        use RecordingState as S;
        match (self, action) {
            (S::Recording, A::Pause) => Some(S::Paused),
            (S::Recording | S::Paused, A::Stop) => Some(S::Stopped),
            (S::Paused, A::Resume) | (S::Paused | S::Stopped, A::Start) => Some(S::Recording),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Recording => "recording",
            RecordingState::Paused => "paused",
            RecordingState::Stopped => "stopped",
        }
    }
}

/// Most gated spans one call keeps; the control plane refuses transitions beyond
/// [`MAX_TRANSITIONS`], so a worker never holds more than this.
pub const MAX_TRANSITIONS: usize = 256;

/// The media worker's side: which parts of the call's timeline stay out of the file.
#[derive(Debug, Default)]
pub struct RecordingGate {
    state: RecordingState,
    /// (from, to) in nanoseconds after the call's start; `to` is `u64::MAX` while open.
    spans: Vec<(u64, u64)>,
    /// The latest packets kept out while a span is open: a resume reaches the worker some
    /// milliseconds after it was asked for, and the audio of those milliseconds (after the
    /// resume time, but gated when it arrived) is written from here when the span closes.
    held: Vec<Held>,
    /// Next slot of `held` to overwrite once it is full.
    held_next: usize,
}

/// Packets of a paused call kept for [`RecordingGate::close_span`]: about 160 ms per direction.
const HOLD_PACKETS: usize = 16;
/// Samples kept per packet: 20 ms at 16 kHz; longer packets keep their end.
const HOLD_SAMPLES: usize = 320;

#[derive(Debug, Clone)]
struct Held {
    channel: usize,
    pos: u64,
    len: usize,
    samples: [i16; HOLD_SAMPLES],
}

impl RecordingGate {
    /// A gate stopped from the call's start (on-demand recording, see
    /// [`crate::rules::RuleAction::OnDemand`]): nothing is written until a `start`, and the
    /// span before it is silence.
    pub fn stopped() -> RecordingGate {
        RecordingGate {
            state: RecordingState::Stopped,
            spans: vec![(0, u64::MAX)],
            ..RecordingGate::default()
        }
    }

    /// Applies `action` at `at_ns` after the call's start; false (and no change) when the
    /// transition is not valid in the current state.
    pub fn apply(&mut self, action: RecordingAction, at_ns: u64) -> bool {
        let Some(next) = self.state.apply(action) else {
            return false;
        };
        match (self.state, next) {
            (RecordingState::Recording, _) => {
                if self.spans.len() >= MAX_TRANSITIONS {
                    return false;
                }
                self.spans.push((at_ns, u64::MAX));
            }
            (_, RecordingState::Recording) => {
                if let Some(last) = self.spans.last_mut() {
                    last.1 = at_ns.max(last.0);
                }
            }
            // Paused -> stopped: the open span simply stays open.
            _ => {}
        }
        self.state = next;
        true
    }

    pub fn state(&self) -> RecordingState {
        self.state
    }

    /// Nothing was ever gated: the per-packet fast path.
    pub fn is_clear(&self) -> bool {
        self.spans.is_empty()
    }

    /// Writes `samples` (channel `channel`, from frame `pos`) except the parts inside gated
    /// spans; while a span is open the packet is also held (see [`Held`]).
    pub fn write(
        &mut self,
        wav: &mut WavWindow,
        spool: &mut Spool,
        channel: usize,
        pos: u64,
        samples: &[i16],
    ) {
        if self.spans.is_empty() {
            return wav.write(spool, channel, pos, samples);
        }
        self.open_parts(wav.rate(), pos, samples.len(), |off, len| {
            wav.write(spool, channel, pos + off as u64, &samples[off..off + len]);
        });
        if self.spans.last().is_some_and(|s| s.1 == u64::MAX) {
            self.hold(channel, pos, samples);
        }
    }

    fn hold(&mut self, channel: usize, pos: u64, samples: &[i16]) {
        let skip = samples.len().saturating_sub(HOLD_SAMPLES);
        let kept = &samples[skip..];
        let mut h = Held {
            channel,
            pos: pos + skip as u64,
            len: kept.len(),
            samples: [0; HOLD_SAMPLES],
        };
        h.samples[..kept.len()].copy_from_slice(kept);
        if self.held.len() < HOLD_PACKETS * 2 {
            self.held.push(h);
        } else {
            self.held[self.held_next] = h;
            self.held_next = (self.held_next + 1) % self.held.len();
        }
    }

    /// After a resume or start: writes what was held that lies after the resume time.
    pub fn close_span(&mut self, wav: &mut WavWindow, spool: &mut Spool) {
        let held = std::mem::take(&mut self.held);
        self.held_next = 0;
        for h in &held {
            self.write(wav, spool, h.channel, h.pos, &h.samples[..h.len]);
        }
        // Keep the allocation for the next pause.
        self.held = held;
        self.held.clear();
    }

    /// Calls `write(offset, len)` for each part of the `n` samples that start at frame `pos`
    /// which lies outside every gated span, at `rate` frames per second.
    pub fn open_parts(&self, rate: u32, pos: u64, n: usize, mut write: impl FnMut(usize, usize)) {
        let end = pos + n as u64;
        let mut at = pos;
        // Spans are in time order and do not overlap (each opens after the previous closed).
        for &(from, to) in &self.spans {
            let (f, t) = (frame(from, rate), frame(to, rate));
            if t <= at {
                continue;
            }
            if f >= end {
                break;
            }
            if f > at {
                write((at - pos) as usize, (f - at) as usize);
            }
            at = t.min(end);
            if at >= end {
                return;
            }
        }
        if at < end {
            write((at - pos) as usize, (end - at) as usize);
        }
    }

    /// Length in frames a recording of `frames` should end with: where it was stopped, when it
    /// is stopped at the end of the call.
    pub fn final_frames(&self, rate: u32, frames: u64) -> u64 {
        match (self.state, self.spans.last()) {
            (RecordingState::Stopped, Some(&(from, _))) => frames.min(frame(from, rate)),
            _ => frames,
        }
    }
}

/// Silences what `wav` already holds from `from_ns` after the call's start on: audio the
/// worker wrote after a pause or stop was asked for but before the request reached it (at most
/// the worker's control latency, a few packets), so the silence starts where the request was
/// made rather than where it was applied.
pub fn blank_from(wav: &mut WavWindow, spool: &mut Spool, from_ns: u64) {
    wav.silence_from(spool, frame(from_ns, wav.rate()));
}

/// Frame position of `ns` after the call's start (`u64::MAX` stays open-ended).
fn frame(ns: u64, rate: u32) -> u64 {
    if ns == u64::MAX {
        return u64::MAX;
    }
    (ns as u128 * rate as u128 / 1_000_000_000).min(u64::MAX as u128 - 1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::spool::testing;

    const S: u64 = 1_000_000_000;

    fn parts(g: &RecordingGate, pos: u64, n: usize) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        g.open_parts(8000, pos, n, |o, l| v.push((o, l)));
        v
    }

    #[test]
    fn transitions() {
        use RecordingAction as A;
        use RecordingState as S;
        assert_eq!(S::Recording.apply(A::Pause), Some(S::Paused));
        assert_eq!(S::Recording.apply(A::Resume), None);
        assert_eq!(S::Recording.apply(A::Start), None);
        assert_eq!(S::Paused.apply(A::Pause), None);
        assert_eq!(S::Paused.apply(A::Resume), Some(S::Recording));
        assert_eq!(S::Paused.apply(A::Stop), Some(S::Stopped));
        assert_eq!(S::Stopped.apply(A::Resume), None);
        assert_eq!(S::Stopped.apply(A::Stop), None);
        assert_eq!(S::Stopped.apply(A::Start), Some(S::Recording));
        for a in ["start", "stop", "pause", "resume"] {
            assert_eq!(RecordingAction::parse(a).map(|x| x.as_str()), Some(a));
        }
        assert_eq!(RecordingAction::parse("Pause"), None);
    }

    #[test]
    fn paused_span_is_cut_out_of_packets_exactly() {
        let mut g = RecordingGate::default();
        assert!(g.is_clear());
        assert_eq!(parts(&g, 0, 160), vec![(0, 160)]);
        // Pause at 1.01 s (frame 8080), resume at 3.0 s (frame 24000).
        assert!(g.apply(RecordingAction::Pause, S + 10_000_000));
        assert!(!g.apply(RecordingAction::Pause, S + 20_000_000));
        assert_eq!(parts(&g, 8000, 160), vec![(0, 80)]);
        assert_eq!(parts(&g, 16000, 160), vec![]);
        assert!(g.apply(RecordingAction::Resume, 3 * S));
        assert_eq!(parts(&g, 16000, 160), vec![]);
        assert_eq!(parts(&g, 23920, 160), vec![(80, 80)]);
        assert_eq!(parts(&g, 24000, 160), vec![(0, 160)]);
        // A packet spanning the whole pause keeps both ends.
        assert_eq!(parts(&g, 8000, 16100), vec![(0, 80), (16000, 100)]);
        assert_eq!(g.final_frames(8000, 40000), 40000);
    }

    #[test]
    fn stop_ends_the_file_and_start_reopens() {
        let mut g = RecordingGate::default();
        assert!(g.apply(RecordingAction::Stop, 2 * S));
        assert_eq!(g.state(), RecordingState::Stopped);
        assert_eq!(parts(&g, 20000, 160), vec![]);
        assert_eq!(g.final_frames(8000, 80000), 16000);
        assert!(!g.apply(RecordingAction::Resume, 3 * S));
        assert!(g.apply(RecordingAction::Start, 4 * S));
        assert_eq!(parts(&g, 32000, 160), vec![(0, 160)]);
        assert_eq!(g.final_frames(8000, 80000), 80000);
        // Paused, then stopped: one span from the pause on.
        let mut g = RecordingGate::default();
        assert!(g.apply(RecordingAction::Pause, S));
        assert!(g.apply(RecordingAction::Stop, 2 * S));
        assert_eq!(g.final_frames(8000, 80000), 8000);
    }

    #[test]
    fn on_demand_gate_is_silent_until_started() {
        let mut g = RecordingGate::stopped();
        assert_eq!(g.state(), RecordingState::Stopped);
        assert!(!g.is_clear());
        assert_eq!(parts(&g, 0, 160), vec![]);
        assert_eq!(g.final_frames(8000, 80000), 0);
        assert!(!g.apply(RecordingAction::Resume, S));
        assert!(g.apply(RecordingAction::Start, 2 * S));
        assert_eq!(parts(&g, 15920, 160), vec![(80, 80)]);
        assert_eq!(g.final_frames(8000, 80000), 80000);
    }

    #[test]
    fn blank_from_silences_audio_written_after_the_request() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut spool, mut w) = testing::recording(tmp.path(), 8000);
        let tone = [1000i16; 400];
        for pos in (0..12_000).step_by(400) {
            w.write(&mut spool, 0, pos, &tone);
            w.write(&mut spool, 1, pos, &tone);
        }
        blank_from(&mut w, &mut spool, S + 2_500_000);
        let (_, samples) = testing::finish(&mut spool, w);
        assert_eq!(samples.len(), 24_000);
        // 1.0025 s = frame 8020: audio before, silence from there to the end (both on disk
        // and still in memory when the request came).
        assert!(samples[..8020 * 2].iter().all(|&s| s == 1000));
        assert!(samples[8020 * 2..].iter().all(|&s| s == 0));
    }

    #[test]
    fn audio_after_the_resume_time_that_arrived_before_the_resume_is_written() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut spool, mut w) = testing::recording(tmp.path(), 8000);
        let mut g = RecordingGate::default();
        let tone = [700i16; 160];
        g.write(&mut w, &mut spool, 0, 7840, &tone);
        assert!(g.apply(RecordingAction::Pause, S));
        // Arrive while paused: one inside the pause, one after the (not yet known) resume time,
        // straddling it.
        g.write(&mut w, &mut spool, 0, 12000, &tone);
        g.write(&mut w, &mut spool, 1, 15920, &tone);
        assert!(g.apply(RecordingAction::Resume, 2 * S));
        g.close_span(&mut w, &mut spool);
        g.write(&mut w, &mut spool, 0, 16080, &tone);
        let (_, s) = testing::finish(&mut spool, w);
        let left = |i: usize| s[2 * i];
        let right = |i: usize| s[2 * i + 1];
        assert_eq!(left(7900), 700);
        assert_eq!(left(12050), 0);
        assert_eq!((right(15999), right(16000), right(16079)), (0, 700, 700));
        assert_eq!(left(16100), 700);
    }

    #[test]
    fn spans_are_bounded() {
        let mut g = RecordingGate::default();
        for i in 0..MAX_TRANSITIONS as u64 {
            assert!(g.apply(RecordingAction::Pause, 2 * i));
            assert!(g.apply(RecordingAction::Resume, 2 * i + 1));
        }
        assert!(!g.apply(RecordingAction::Pause, u64::MAX / 2));
        assert_eq!(g.state(), RecordingState::Recording);
    }
}
