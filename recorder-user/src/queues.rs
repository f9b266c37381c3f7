//! The bounded queues between the daemon's threads, and what happens when one is full.
//!
//! Every hand-off between threads has a bound, so a stalled consumer costs memory up to that
//! bound and no more. What a producer does at the bound depends on what it must never do:
//!
//! | queue | from -> to | at the bound |
//! |---|---|---|
//! | control | signalling, API -> media worker | the sender waits (at most [`CONTROL_WAIT`]): a media worker never waits on anything, so a full queue means it is overloaded and SIP backs up into its ring, where the kernel sheds and counts it |
//! | cdr | media worker -> CDR thread | the worker keeps the CDR and retries on its next loop (it never waits; calls are bounded by `[calls] max_calls`) |
//! | timeouts | media worker -> signalling | kept and retried on the next tick |
//! | journal | workers -> journal thread | a call's state is rewritten at the next flush; a removal waits |
//!
//! Each overflow is counted (`calltap_queue_overflow_total{queue}`).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Control messages queued per media worker.
pub const CONTROL: usize = 65_536;
/// Longest a control message waits for room before it is dropped (the worker is gone).
pub const CONTROL_WAIT: Duration = Duration::from_secs(1);
/// Finished calls queued for the CDR thread.
pub const CDR: usize = 16_384;
/// Media timeouts queued for the signalling thread.
pub const TIMEOUTS: usize = 65_536;
/// Journal operations queued for the journal thread.
pub const JOURNAL: usize = 65_536;

/// The queues whose overflows are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    Control,
    Cdr,
    Timeouts,
    Journal,
}

impl Queue {
    pub const ALL: [Queue; 4] = [Queue::Control, Queue::Cdr, Queue::Timeouts, Queue::Journal];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Control => "control",
            Queue::Cdr => "cdr",
            Queue::Timeouts => "timeouts",
            Queue::Journal => "journal",
        }
    }
}

static OVERFLOWS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Counts one overflow of `q`.
pub fn overflow(q: Queue) {
    OVERFLOWS[q as usize].fetch_add(1, Ordering::Relaxed);
}

/// Overflows of `q` so far.
pub fn overflows(q: Queue) -> u64 {
    OVERFLOWS[q as usize].load(Ordering::Relaxed)
}
