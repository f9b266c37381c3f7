//! The recording, every call's first output: the operator's gate (paused and stopped spans stay
//! silence) in front of the call's WAV window, whose bounded hand-off is the worker's spool
//! ([`crate::store::spool`]).

use super::{AudioOutput, OutputCtx, Placed};
use crate::{
    pipeline::recording::{blank_from, RecordingAction, RecordingGate, RecordingState},
    rules::RuleAction,
    store::spool::{Closing, FailReason, Spool, WavWindow},
};

/// The recording of one call. Declaration order is layout order: it sits among the fields of
/// a call every packet touches.
#[repr(C)]
pub struct WavOutput {
    /// No file may be made (yet): a `skip` call (never), an `on_demand` call until an operator
    /// starts it; the file is then made at the next audio packet.
    no_file: bool,
    /// The recording failed (logged once): no file is made for it any more.
    failed: bool,
    window: Option<WavWindow>,
    /// Operator pause/stop: spans kept out of the file (and out of every other output).
    gate: RecordingGate,
}

/// A finished recording, for the CDR.
pub struct Finished {
    pub rate: u32,
    pub frames: u64,
    /// Answers once the spool thread has closed the file.
    pub closing: Closing,
    /// A failure during the call not yet counted and logged.
    pub unreported: Option<FailReason>,
}

impl WavOutput {
    /// A call's recording under the rule decision `mode`: `record` from the first packet;
    /// `skip` and `on_demand` stopped from the start.
    pub fn new(mode: RuleAction) -> WavOutput {
        let (gate, no_file) = match mode {
            RuleAction::Record => (RecordingGate::default(), false),
            RuleAction::Skip | RuleAction::OnDemand => (RecordingGate::stopped(), true),
        };
        WavOutput {
            no_file,
            failed: false,
            window: None,
            gate,
        }
    }

    pub fn gate(&self) -> &RecordingGate {
        &self.gate
    }

    /// For replaying journaled operator actions into a restored call's fresh gate.
    pub fn gate_mut(&mut self) -> &mut RecordingGate {
        &mut self.gate
    }

    pub fn window(&self) -> Option<&WavWindow> {
        self.window.as_ref()
    }

    /// The recording's rate, once it has a file.
    pub fn rate(&self) -> Option<u32> {
        self.window.as_ref().map(WavWindow::rate)
    }

    /// A file may be made now: none yet, and none refused or failed.
    pub fn wants_file(&self) -> bool {
        self.window.is_none() && !self.no_file && !self.failed
    }

    pub fn no_file(&self) -> bool {
        self.no_file
    }

    /// An `on_demand` call was started: its file may be made.
    pub fn allow_file(&mut self) {
        self.no_file = false;
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// No file is made for this call any more; `reason`, for the window it has, if any.
    pub fn fail(&mut self, spool: &mut Spool, reason: Option<FailReason>) {
        self.failed = true;
        if let (Some(w), Some(reason)) = (self.window.as_mut(), reason) {
            w.fail(spool, reason);
            // Logged by the spool thread, which knows the error.
            let _ = w.take_unreported();
        }
    }

    pub fn open(&mut self, window: WavWindow) {
        self.window = Some(window);
    }

    /// Prefetches where audio `frames` long from `pos` will go.
    #[inline]
    pub fn prefetch(&self, pos: u64, frames: u64) {
        if let Some(w) = &self.window {
            w.prefetch(pos, frames);
        }
    }

    /// Applies an operator action `at_ns` after the call's start; false (nothing changed) when
    /// the gate's state does not allow it. Audio already written after the moment of a pause
    /// or stop is silenced; packets held while paused are written after a resume.
    pub fn apply(&mut self, spool: &mut Spool, action: RecordingAction, at_ns: u64) -> bool {
        if !self.gate.apply(action, at_ns) {
            return false;
        }
        if let Some(w) = self.window.as_mut() {
            if self.gate.state() != RecordingState::Recording {
                blank_from(w, spool, at_ns);
            } else {
                self.gate.close_span(w, spool);
            }
        }
        true
    }

    /// A failure since the last call, not yet counted and logged.
    pub fn take_unreported(&mut self) -> Option<FailReason> {
        self.window.as_mut().and_then(WavWindow::take_unreported)
    }

    /// Ends the recording `len_ns` into the call (where it was stopped, if it was): the whole
    /// length, silence where no audio came. `None` when the call has no file, or it could never
    /// be made.
    pub fn finish(&mut self, spool: &mut Spool, len_ns: u64) -> Option<Finished> {
        let mut w = match self.window.take() {
            // Dropped: the name made ahead goes with it.
            Some(w) if w.failure() == Some(FailReason::Create) => return None,
            None => return None,
            Some(w) => w,
        };
        let frames = len_ns as u128 * w.rate() as u128 / 1_000_000_000;
        w.extend_to(self.gate.final_frames(w.rate(), frames as u64));
        let (rate, frames) = (w.rate(), w.frames());
        let unreported = w.take_unreported();
        Some(Finished {
            rate,
            frames,
            // Closed by the spool thread, sealed (fsync, sha256) by whoever takes the CDR.
            closing: w.close(spool),
            unreported,
        })
    }
}

impl AudioOutput for WavOutput {
    fn kind(&self) -> &'static str {
        "wav"
    }

    /// Into the window, outside the gate's spans.
    #[inline]
    fn write(&mut self, ctx: &mut OutputCtx<'_>, audio: Placed<'_>) {
        if let Some(w) = self.window.as_mut() {
            self.gate
                .write(w, ctx.spool, audio.channel, audio.pos, audio.samples);
        }
    }

    fn recording(&mut self, ctx: &mut OutputCtx<'_>, action: RecordingAction, at_ns: u64) {
        self.apply(ctx.spool, action, at_ns);
    }

    /// The audio of the open buffers and the header go to disk (the buffers stay open).
    fn flush(&mut self, ctx: &mut OutputCtx<'_>) {
        if let Some(w) = self.window.as_mut() {
            w.flush(ctx.spool);
        }
    }

    fn close(&mut self, ctx: &mut OutputCtx<'_>, end_ns: u64) {
        let _ = self.finish(ctx.spool, end_ns);
    }

    /// Samples the spool had no room for.
    fn take_dropped(&mut self) -> u64 {
        self.window
            .as_mut()
            .map_or(0, |w| std::mem::take(&mut w.dropped_samples))
    }
}
