//! A media worker: owns a set of calls, turns their RTP into placed audio for each call's
//! outputs (the stereo WAV first: channel 0 = caller, channel 1 = callee), their RTCP into
//! quality figures, and each finished call into a CDR.
//!
//! The per-packet path does hash lookups, decoding into a preallocated buffer and stores into
//! the recording's open buffers: no locks, no allocation, no system calls. The files are the
//! worker's spool thread's ([`crate::store::spool`]).
//!
//! | file | holds |
//! |------|-------|
//! | `worker.rs` | the worker and its packet path: record -> call -> RTP -> decode -> place -> outputs; RTCP; the flush tick |
//! | `call.rs` | one call's state, laid out for the packet path |
//! | `ssrc.rs` | which direction an SSRC belongs to when endpoints cannot tell |
//! | `decode.rs` | payload type -> codec (SDP), the stream's decoder, rate fitting, loss concealment |
//! | `outputs/` | the output seam: [`outputs::AudioOutput`], the WAV output, outputs attached at run time |
//! | `control.rs` | control messages: calls starting, changing, ending; outputs attached; spool answers |
//! | `journal.rs` | the active-call journal: what is written when; taking a call over after a restart |
//! | `cdr.rs` | a finished call's CDR |
//!
//! Where to add things: **a codec** is a file in `calltap_media::codec` and one line in its
//! registry (nothing here changes); **an output** (live listener, encoder) is a type
//! implementing [`outputs::AudioOutput`], attached to a live call with `LiveCalls::attach`
//! (the publish layer's `live` registry).

use std::path::PathBuf;

use serde::Serialize;

pub use self::worker::MediaWorker;
use super::config::CallsConfig;
use crate::store::{config::StorageConfig, spool::SpoolConfig};

mod call;
mod cdr;
mod control;
mod decode;
mod journal;
pub mod outputs;
mod ssrc;
mod worker;

/// Settings of a media worker.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    pub recordings_dir: PathBuf,
    /// See [`crate::store::paths::expand`].
    pub path_template: String,
    pub flush_interval_ns: u64,
    /// End a call after this long without RTP (unless it is on hold).
    pub media_timeout_ns: u64,
    pub max_call_secs: u64,
    /// A call restored after a restart that gets no RTP for this long ended while CallTap was
    /// down: it is closed with end reason `recorder_restart`.
    pub restore_grace_ns: u64,
    /// The worker's audio buffers (see [`crate::store::spool`]).
    pub spool: SpoolConfig,
}

impl MediaConfig {
    /// A worker's settings from `[storage]` and `[calls]`: the audio buffers are shared out
    /// among `workers`.
    pub fn new(storage: &StorageConfig, calls: &CallsConfig, workers: u32) -> MediaConfig {
        MediaConfig {
            recordings_dir: storage.recordings_dir(),
            path_template: storage.path_template.clone(),
            flush_interval_ns: storage.flush_interval_ms.saturating_mul(1_000_000),
            media_timeout_ns: calls.media_timeout_s.saturating_mul(1_000_000_000),
            max_call_secs: calls.max_duration_s.max(1),
            restore_grace_ns: calls.restore_grace_s.saturating_mul(1_000_000_000),
            spool: SpoolConfig {
                raw_pcap_max_bytes: storage.raw_pcap_max_mb.saturating_mul(1 << 20),
                ..SpoolConfig::with_memory_mb(storage.audio_buffer_mb / u64::from(workers.max(1)))
            },
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            recordings_dir: PathBuf::from("recordings"),
            path_template: "{yyyy}/{mm}/{dd}/{hhmmss}_{from}_{to}_{uuid}.wav".into(),
            flush_interval_ns: 1_000_000_000,
            media_timeout_ns: 300_000_000_000,
            max_call_secs: 4 * 3600,
            restore_grace_ns: 5_000_000_000,
            spool: SpoolConfig::default(),
        }
    }
}

/// Counters of one media worker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerStats {
    pub id: u32,
    pub records: u64,
    pub rtp: u64,
    pub rtcp: u64,
    /// RTP/RTCP for an endpoint this worker does not (or no longer) know.
    pub unknown_endpoint: u64,
    pub bad_rtp: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    pub write_errors: u64,
    /// Active-call journal writes, and those that failed (logged once per flush round).
    pub journal_writes: u64,
    pub journal_errors: u64,
    /// Calls taken over from an earlier run's journal.
    pub calls_restored: u64,
    /// Flush rounds done (the driver times them for the flush latency histogram).
    pub flush_rounds: u64,
    /// Calls whose recording failed (see [`crate::store::spool::FailReason`]), and audio samples dropped because
    /// the disk could not keep up.
    pub recordings_failed: u64,
    pub samples_dropped: u64,
    /// Outputs attached to live calls, and the samples they dropped (their hand-off was full).
    pub outputs_attached: u64,
    pub attached_samples_dropped: u64,
    /// Calls signalling evicted unanswered that had nothing to record: dropped without a CDR.
    pub calls_evicted: u64,
    /// DTMF digits and rejected requests past their per-call bounds, counted only.
    pub dtmf_omitted: u64,
    pub rejected_requests_omitted: u64,
}

/// Most DTMF digits a CDR lists; more are counted (`dtmf_omitted`). An IVR call has tens.
pub const MAX_DTMF_PER_CALL: usize = 256;
/// Most rejected in-dialog requests a CDR lists; more are counted (`rejected_requests_omitted`).
pub const MAX_REJECTED_PER_CALL: usize = 32;

/// Audio still in flight when the BYE is captured (the far side's last packets) is kept: a call
/// is finished this long after signalling ended it.
pub const END_GRACE_NS: u64 = 500_000_000;
