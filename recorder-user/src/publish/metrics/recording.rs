//! Metrics of the recordings' way to disk: calls that got no (or only part of a) recording and
//! why, the spool threads' work, the queues between threads, and how many calls the limits
//! allow at once.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::{
    queues::{self, Queue},
    store::spool::{self, files::FdBudget, FailReason},
};

/// The series, read at scrape time from the spool's process-wide counters.
pub struct RecordingMetrics {
    failed: IntCounterVec,
    overflows: IntCounterVec,
    events: IntCounterVec,
    bytes: IntCounter,
    open_files: IntGauge,
    limits: IntGaugeVec,
}

impl RecordingMetrics {
    pub fn new(registry: &Registry) -> Result<RecordingMetrics, prometheus::Error> {
        let failed = IntCounterVec::new(
            Opts::new(
                "calltap_recordings_failed_total",
                "Calls whose recording failed, by the first reason: create (no file could be \
                 made), write (disk full or I/O error part way), backlog (the disk could not \
                 keep up: audio dropped), restore (a recording could not be continued after a \
                 restart).",
            ),
            &["reason"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "calltap_spool_events_total",
                "Spool work worth watching: patch (late audio laid over a part already \
                 written), reopen (a file opened again beyond the open-file budget), \
                 name_taken (a recording name existed: suffixed), queue_full and \
                 buffers_exhausted (audio dropped rather than stall a worker), \
                 raw_rtp_over_limit (a call's raw RTP pcap reached [storage] \
                 raw_pcap_max_mb).",
            ),
            &["event"],
        )?;
        let bytes = IntCounter::new(
            "calltap_spool_written_bytes_total",
            "Bytes the spool threads wrote into recordings.",
        )?;
        let open_files = IntGauge::new(
            "calltap_recording_open_files",
            "Recording files the spool threads hold open now.",
        )?;
        let limits = IntGaugeVec::new(
            Opts::new(
                "calltap_capacity",
                "What bounds the calls recorded at once: concurrent_calls (the smallest of the \
                 limits below), max_calls (configured), audio_buffer_calls (calls the audio \
                 buffers hold), open_files (recording descriptors kept open; calls beyond it \
                 reopen their file per write).",
            ),
            &["limit"],
        )?;
        let overflows = IntCounterVec::new(
            Opts::new(
                "calltap_queue_overflow_total",
                "Times a queue between threads was full: control (a media worker overloaded; \
                 the sender waited), cdr and timeouts (kept and retried), journal (a call's \
                 state written at its next flush instead).",
            ),
            &["queue"],
        )?;
        for c in [
            Box::new(failed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(overflows.clone()),
            Box::new(events.clone()),
            Box::new(bytes.clone()),
            Box::new(open_files.clone()),
            Box::new(limits.clone()),
        ] {
            registry.register(c)?;
        }
        for r in FailReason::ALL {
            failed.with_label_values(&[r.as_str()]);
        }
        for q in Queue::ALL {
            overflows.with_label_values(&[q.as_str()]);
        }
        Ok(RecordingMetrics {
            failed,
            overflows,
            events,
            bytes,
            open_files,
            limits,
        })
    }

    /// The capacity figures, set once at start.
    pub fn set_capacity(&self, c: &spool::Capacity) {
        for (k, v) in [
            ("concurrent_calls", c.concurrent_calls),
            ("max_calls", c.max_calls),
            ("audio_buffer_calls", c.buffer_calls),
            ("open_files", c.open_files),
        ] {
            self.limits
                .with_label_values(&[k])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    pub fn refresh(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = spool::counters();
        for r in FailReason::ALL {
            super::set_counter(&self.failed.with_label_values(&[r.as_str()]), c.failed(r));
        }
        for (event, v) in [
            ("patch", &c.patches),
            ("reopen", &c.reopens),
            ("name_taken", &c.names_taken),
            ("queue_full", &c.queue_full),
            ("buffers_exhausted", &c.buffers_exhausted),
            ("raw_rtp_over_limit", &c.raw_over_limit),
        ] {
            super::set_counter(&self.events.with_label_values(&[event]), v.load(Relaxed));
        }
        super::set_counter(&self.bytes, c.bytes_written.load(Relaxed));
        for q in Queue::ALL {
            super::set_counter(
                &self.overflows.with_label_values(&[q.as_str()]),
                queues::overflows(q),
            );
        }
        self.open_files
            .set(i64::try_from(FdBudget::get().open()).unwrap_or(i64::MAX));
    }
}
