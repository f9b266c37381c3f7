//! Where a call's audio goes: a set of outputs behind one interface, [`AudioOutput`].
//!
//! The worker decodes each packet, places it on the call's timeline (RTP timestamps say where)
//! and hands the placed samples ([`Placed`]) to the call's outputs. The recording is the first
//! output, [`WavOutput`] (the operator's pause/stop gate and the WAV window of
//! [`crate::store::spool`]); every call has it, so it sits inline in the call's state and is
//! called directly. Others (live listeners, encoders) are attached to a running call with
//! [`Control::Attach`](crate::pipeline::Control::Attach) and detached with `Detach`, or go by
//! themselves when their receiving end is gone ([`AudioOutput::is_closed`]); a call without them
//! pays one branch per packet.
//!
//! Outputs run on the worker's thread, on the packet path: an output never blocks, allocates per
//! packet or makes a system call there. Anything slow (a socket, an encoder, a file) belongs on
//! a thread of the output's own, behind a bounded hand-off such as [`Handoff`]; what does not
//! fit is dropped and counted per output ([`AudioOutput::take_dropped`]), so a slow output can
//! never stall the worker or the other outputs. The WAV output's hand-off is the worker's spool
//! (its drops are the recording's `backlog` failure and `samples_dropped`).
//!
//! Paused and stopped spans of the recording (the WAV output's gate) reach no output: attached
//! outputs get only the audio outside them, and hear of each operator action
//! ([`AudioOutput::recording`]).
//!
//! **Adding an output**: a type implementing [`AudioOutput`] (with a [`Handoff`] to its own
//! thread), attached to a live call by the control plane (`LiveCalls::attach` in the publish
//! layer's `live` registry). Nothing in the worker changes.

mod wav;

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

pub use self::wav::{Finished, WavOutput};
use crate::{pipeline::recording::RecordingAction, store::spool::Spool};

/// Samples of one direction placed on the call's timeline.
#[derive(Clone, Copy, Debug)]
pub struct Placed<'a> {
    /// 0: the caller's audio (the recording's left channel), 1: the callee's (right).
    pub channel: usize,
    /// Where the first sample goes, in frames since the call started at `rate`: where the RTP
    /// timestamps put it. Packets come in arrival order, so a late or reordered one lands
    /// before audio already handed over.
    pub pos: u64,
    /// Frames per second: the recording's rate, the same for every output and the whole call.
    pub rate: u32,
    pub samples: &'a [i16],
}

impl<'a> Placed<'a> {
    pub fn new(channel: usize, pos: u64, rate: u32, samples: &'a [i16]) -> Placed<'a> {
        Placed {
            channel,
            pos,
            rate,
            samples,
        }
    }
}

/// What the worker lends its outputs while they handle audio: its spool (the page buffers and
/// the thread that owns the files), which the WAV output hands its pages to.
pub struct OutputCtx<'a> {
    pub spool: &'a mut Spool,
}

/// One destination of a call's audio (see the [module docs](self)).
pub trait AudioOutput: Send {
    /// What the output is, for logs and metrics: `wav`, `listener`, `opus`.
    fn kind(&self) -> &'static str;

    /// Placed audio, on the packet path: never blocks.
    fn write(&mut self, ctx: &mut OutputCtx<'_>, audio: Placed<'_>);

    /// An operator's recording action (`pause`, `resume`, `stop`, `start`), `at_ns` after the
    /// call started; the audio of paused and stopped spans never reaches the output.
    fn recording(&mut self, ctx: &mut OutputCtx<'_>, action: RecordingAction, at_ns: u64) {
        let _ = (ctx, action, at_ns);
    }

    /// The flush tick (`[storage] flush_interval_ms`): hand on what is buffered.
    fn flush(&mut self, ctx: &mut OutputCtx<'_>) {
        let _ = ctx;
    }

    /// The call ended `end_ns` after it started, or the output is detached: the last hand-off.
    fn close(&mut self, ctx: &mut OutputCtx<'_>, end_ns: u64) {
        let _ = (ctx, end_ns);
    }

    /// Samples dropped since the last call because the output's hand-off was full.
    fn take_dropped(&mut self) -> u64 {
        0
    }

    /// The receiving end is gone (a listener hung up): the worker detaches the output.
    fn is_closed(&self) -> bool {
        false
    }
}

/// Names an attached output, so the control plane can detach it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutputId(pub u64);

impl OutputId {
    /// An id no other output of this process has.
    pub fn next() -> OutputId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        OutputId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// An output on its way to a call's worker ([`Control::Attach`](crate::pipeline::Control)).
pub struct NewOutput {
    pub id: OutputId,
    pub output: Box<dyn AudioOutput>,
}

impl NewOutput {
    pub fn new(output: Box<dyn AudioOutput>) -> NewOutput {
        NewOutput {
            id: OutputId::next(),
            output,
        }
    }
}

impl fmt::Debug for NewOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} output {}", self.output.kind(), self.id.0)
    }
}

/// A bounded hand-off from the worker to an output's own thread: [`Handoff::offer`] never
/// waits; what does not fit is dropped and counted.
pub struct Handoff<T> {
    tx: Sender<T>,
    dropped: u64,
    closed: bool,
}

impl<T> Handoff<T> {
    /// A hand-off holding at most `capacity` items, and its receiving end.
    pub fn bounded(capacity: usize) -> (Handoff<T>, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let handoff = Handoff {
            tx,
            dropped: 0,
            closed: false,
        };
        (handoff, rx)
    }

    /// Hands `item` (holding `samples` samples) on; when the queue is full it is dropped and
    /// its samples counted. False when it was not handed on.
    pub fn offer(&mut self, item: T, samples: u64) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += samples;
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.closed = true;
                false
            }
        }
    }

    /// Samples dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The receiving end is gone.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Most outputs one call has attached besides its recording (listeners, encoders): each costs
/// the worker a copy of every packet's audio.
pub const MAX_ATTACHED: usize = 16;

/// An attached output and what it has dropped so far.
struct Attached {
    id: OutputId,
    output: Box<dyn AudioOutput>,
    dropped: u64,
}

/// A call's outputs: the recording, and those attached at run time.
#[repr(C)]
pub(in crate::pipeline::media) struct CallOutputs {
    pub wav: WavOutput,
    /// `None` for most calls: one branch per packet.
    #[expect(
        clippy::box_collection,
        reason = "one pointer among the fields every packet touches, not a Vec's three words"
    )]
    attached: Option<Box<Vec<Attached>>>,
}

impl CallOutputs {
    pub fn new(wav: WavOutput) -> CallOutputs {
        CallOutputs {
            wav,
            attached: None,
        }
    }

    /// Hands placed audio to every output.
    #[inline]
    pub fn write(&mut self, spool: &mut Spool, audio: Placed<'_>) {
        let ctx = &mut OutputCtx { spool };
        self.wav.write(ctx, audio);
        if let Some(attached) = self.attached.as_deref_mut() {
            write_gated(attached, &self.wav, ctx, audio);
        }
    }

    /// An operator's action `at_ns` into the call: false (nothing changed) when the
    /// recording's state does not allow it; else every output hears of it.
    pub fn recording(&mut self, spool: &mut Spool, action: RecordingAction, at_ns: u64) -> bool {
        if !self.wav.apply(spool, action, at_ns) {
            return false;
        }
        let ctx = &mut OutputCtx { spool };
        for a in self.attached.iter_mut().flat_map(|v| v.iter_mut()) {
            a.output.recording(ctx, action, at_ns);
        }
        true
    }

    /// Attaches `new`; gives it back when the call has [`MAX_ATTACHED`] outputs already.
    pub fn attach(&mut self, new: NewOutput) -> Result<(), NewOutput> {
        let list = self.attached.get_or_insert_with(Default::default);
        if list.len() >= MAX_ATTACHED {
            return Err(new);
        }
        list.push(Attached {
            id: new.id,
            output: new.output,
            dropped: 0,
        });
        Ok(())
    }

    /// Closes and removes output `id` of call `call` (`now_ns` into it), if it has one.
    /// Returns the samples the output dropped since last counted.
    pub fn detach(&mut self, spool: &mut Spool, id: OutputId, now_ns: u64, call: &str) -> u64 {
        let Some(list) = self.attached.as_deref_mut() else {
            return 0;
        };
        let Some(i) = list.iter().position(|a| a.id == id) else {
            return 0;
        };
        let a = list.swap_remove(i);
        if list.is_empty() {
            self.attached = None;
        }
        finish(a, &mut OutputCtx { spool }, now_ns, call)
    }

    /// The flush tick for the attached outputs of call `call` (`now_ns` into it); those whose
    /// receiving end is gone are detached. Returns the samples they dropped since last
    /// counted. The WAV output's flush is the worker's.
    pub fn flush_attached(&mut self, spool: &mut Spool, now_ns: u64, call: &str) -> u64 {
        let Some(list) = self.attached.as_deref_mut() else {
            return 0;
        };
        let ctx = &mut OutputCtx { spool };
        let mut dropped = 0;
        for a in list.iter_mut() {
            a.output.flush(ctx);
            let n = a.output.take_dropped();
            a.dropped += n;
            dropped += n;
        }
        while let Some(i) = list.iter().position(|a| a.output.is_closed()) {
            dropped += finish(list.swap_remove(i), ctx, now_ns, call);
        }
        if list.is_empty() {
            self.attached = None;
        }
        dropped
    }

    /// Closes every attached output: call `call` ended `end_ns` after it started. Returns the
    /// samples they dropped since last counted.
    pub fn close_attached(&mut self, spool: &mut Spool, end_ns: u64, call: &str) -> u64 {
        let ctx = &mut OutputCtx { spool };
        let list = self.attached.take().into_iter().flat_map(|v| v.into_iter());
        list.map(|a| finish(a, ctx, end_ns, call)).sum()
    }
}

/// The parts of `audio` outside the recording's paused and stopped spans, to each attached
/// output.
#[cold]
fn write_gated(list: &mut [Attached], wav: &WavOutput, ctx: &mut OutputCtx<'_>, audio: Placed<'_>) {
    let gate = wav.gate();
    if gate.is_clear() {
        for a in list.iter_mut() {
            a.output.write(ctx, audio);
        }
        return;
    }
    gate.open_parts(audio.rate, audio.pos, audio.samples.len(), |off, len| {
        let part = Placed {
            pos: audio.pos + off as u64,
            samples: &audio.samples[off..off + len],
            ..audio
        };
        for a in list.iter_mut() {
            a.output.write(ctx, part);
        }
    });
}

/// Closes a detached output of call `call` and says what it dropped, if anything; returns
/// its drops since last counted.
fn finish(mut a: Attached, ctx: &mut OutputCtx<'_>, end_ns: u64, call: &str) -> u64 {
    a.output.close(ctx, end_ns);
    let n = a.output.take_dropped();
    a.dropped += n;
    if a.dropped > 0 {
        log::warn!(
            "call {call}: {} output {} dropped {} samples (its hand-off was full)",
            a.output.kind(),
            a.id.0,
            a.dropped
        );
    }
    n
}

#[cfg(test)]
mod tests;
