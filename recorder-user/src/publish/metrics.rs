//! Prometheus metrics. Capture threads never touch this registry: workers copy their counters into
//! plain atomics ([`LiveStats`]) on their 200 ms tick, the XDP counters are read from the BPF
//! per-CPU map, and the scrape turns those into metric values. Only the CDR thread (off the
//! packet path) observes histograms directly, once per finished call.
//!
//! Labels are bounded: CPU and worker indexes, stream direction, a fixed set of end reasons
//! (anything else is `other`), capture source and mode. Never a call id or a phone number.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
};

use calltap_common::counter;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod bounds;
mod recording;

pub use bounds::BoundsLive;

use super::{console::ConsoleCounters, webhook::WebhookCounters};
use crate::{
    capture::{xdp::XdpCounters, InputFill},
    store::{
        archive::{ArchiveCounters, ArchiveSnapshot},
        cdr::Cdr,
        writer::{Mode, WriterCounters},
    },
};

/// End reasons exported as they are (`calltap_sip::dialog::EndReason` names plus the daemon's
/// `recorder_stop`); failures are grouped by class (`failure_4xx`) and any other string becomes
/// `other`, so a new or malformed reason cannot grow the label set.
pub const END_REASONS: &[&str] = &[
    "bye_caller",
    "bye_callee",
    "cancel",
    "max_duration",
    "unanswered",
    "media_timeout",
    "recorder_restart",
    "recorder_stop",
    "evicted",
];

/// The bounded `reason` label for a CDR end reason.
pub fn reason_label(reason: &str) -> &'static str {
    if let Some(known) = END_REASONS.iter().find(|r| **r == reason) {
        return known;
    }
    match reason.strip_prefix("failure_").map(str::as_bytes) {
        Some([b'4', _, _]) => "failure_4xx",
        Some([b'5', _, _]) => "failure_5xx",
        Some([b'6', _, _]) => "failure_6xx",
        Some(_) => "failure_other",
        None => "other",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("prometheus registry: {0}")]
    Registry(#[from] prometheus::Error),
}

/// What one media worker publishes on its tick.
#[derive(Debug, Default)]
pub struct WorkerLive {
    pub records: AtomicU64,
    pub active_calls: AtomicU64,
    /// Processing lag: the age of the newest record the worker had just handled, the largest
    /// seen over the last tick (nanoseconds).
    pub lag_ns: AtomicU64,
}

/// Counters the capture threads publish for the scrape: plain relaxed stores, no locks.
#[derive(Debug)]
pub struct LiveStats {
    pub workers: Vec<WorkerLive>,
    pub active_calls: AtomicU64,
    pub calls_started: AtomicU64,
    /// The signalling worker's guards against traffic that would steer the classifier.
    pub sdp_endpoints_refused: AtomicU64,
    pub sip_ports_learned: AtomicU64,
    pub sip_ports_expired: AtomicU64,
    /// Duration of each media worker's flush round (every open WAV's header and dirty pages
    /// handed to the kernel); observed by the worker once per flush interval, lock-free.
    pub flush_seconds: Histogram,
    /// What the bounds on calls, requests and reassembly shed and hold.
    pub bounds: BoundsLive,
}

/// Flush round buckets: a round is microseconds when idle, milliseconds with thousands of calls.
const FLUSH_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl LiveStats {
    pub fn new(workers: u32) -> LiveStats {
        let opts = HistogramOpts::new(
            "calltap_recording_flush_seconds",
            "Duration of a media worker's flush round over its open recordings.",
        )
        .buckets(FLUSH_BUCKETS.to_vec());
        LiveStats {
            workers: (0..workers).map(|_| WorkerLive::default()).collect(),
            active_calls: AtomicU64::new(0),
            calls_started: AtomicU64::new(0),
            sdp_endpoints_refused: AtomicU64::new(0),
            sip_ports_learned: AtomicU64::new(0),
            sip_ports_expired: AtomicU64::new(0),
            flush_seconds: Histogram::with_opts(opts)
                .expect("constant histogram options are valid"),
            bounds: BoundsLive::new(workers),
        }
    }
}

/// Where the capture counters come from.
pub enum CaptureCounters {
    /// The XDP program's per-CPU map, read at scrape time.
    Xdp(Arc<XdpCounters>),
    /// Totals over all AF_PACKET threads (exported as `cpu="all"`).
    Totals(Arc<dyn Fn() -> [u64; calltap_common::COUNTERS as usize] + Send + Sync>),
    None,
}

/// The XDP counters exported per CPU, with their metric names.
const CAPTURE: &[(u32, &str, &str)] = &[
    (
        counter::SEEN,
        "calltap_capture_packets_total",
        "Packets the capture program saw.",
    ),
    (
        counter::BYTES,
        "calltap_capture_bytes_total",
        "Bytes the capture program saw.",
    ),
    (
        counter::UNMATCHED,
        "calltap_capture_unmatched_packets_total",
        "Packets neither SIP nor media of a known call.",
    ),
    (
        counter::PARSE_ERRORS,
        "calltap_capture_parse_errors_total",
        "Packets whose headers could not be parsed.",
    ),
    (
        counter::RING_FULL,
        "calltap_capture_ring_full_drops_total",
        "Packets dropped because the worker's ring was full.",
    ),
];

const CLASSES: &[(u32, &str)] = &[
    (counter::SIP, "sip"),
    (counter::RTP, "rtp"),
    (counter::RTCP, "rtcp"),
];

/// Reads one counter out of an archive snapshot.
type ArchiveField = fn(&ArchiveSnapshot) -> u64;

/// Reads one of the signalling worker's counters.
type LiveField = fn(&LiveStats) -> &AtomicU64;

/// The registry and every metric CallTap exports.
pub struct Metrics {
    registry: Registry,
    capture: Vec<(u32, IntCounterVec)>,
    classified: IntCounterVec,
    capture_info: IntGaugeVec,
    interface_info: IntGaugeVec,
    worker_records: IntCounterVec,
    worker_active_calls: IntGaugeVec,
    active_calls: IntGauge,
    calls_started: IntCounter,
    /// Signalling counters with the field each one reads.
    signalling: Vec<(IntCounter, LiveField)>,
    calls_answered: IntCounter,
    calls_ended: IntCounterVec,
    stream_loss: HistogramVec,
    stream_jitter: HistogramVec,
    stream_mos: HistogramVec,
    unsupported_codec_calls: IntCounter,
    recording_bytes: IntCounter,
    cdr_store_mode: IntGaugeVec,
    cdr_rows: Vec<(&'static str, IntCounter)>,
    cdr_rows_pending_import: IntGauge,
    ring_fill: GaugeVec,
    worker_lag: GaugeVec,
    spool_fs: IntGaugeVec,
    api_requests: IntCounterVec,
    /// Archive and webhook series, from their threads' counters at scrape time.
    archive_queue: IntGaugeVec,
    archive_up: IntGauge,
    spool_alarm: IntGauge,
    archive_failures: IntCounterVec,
    /// Plain archive/retention counters with the snapshot field each one reads.
    archive_counters: Vec<(IntCounter, ArchiveField)>,
    webhook_queue: IntGauge,
    webhook_events: IntCounterVec,
    webhook_failures: IntCounter,
    webhook_retries: IntCounter,
    console_login_failures: IntCounter,
    recording: recording::RecordingMetrics,
    bounds: bounds::BoundMetrics,
    sources: Sources,
}

struct Sources {
    capture: CaptureCounters,
    live: Arc<LiveStats>,
    writer: Option<Arc<WriterCounters>>,
    /// Each consumer's input (`worker` label: index or `signalling`), set once capture runs.
    inputs: OnceLock<Vec<(String, InputFill)>>,
    /// The recordings spool, for the filesystem gauges.
    spool: OnceLock<PathBuf>,
    archive: OnceLock<Arc<ArchiveCounters>>,
    webhooks: OnceLock<Arc<WebhookCounters>>,
    console: OnceLock<Arc<ConsoleCounters>>,
}

/// Sets a counter to a value read from a monotonic source.
fn set_counter(c: &IntCounter, v: u64) {
    let now = c.get();
    if v > now {
        c.inc_by(v - now);
    }
}

impl Metrics {
    pub fn new(
        capture: CaptureCounters,
        live: Arc<LiveStats>,
        writer: Option<Arc<WriterCounters>>,
    ) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &["direction"],
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let capture_metrics = CAPTURE
            .iter()
            .map(|(i, name, help)| Ok((*i, counter_vec(name, help, &["cpu"])?)))
            .collect::<Result<Vec<_>, prometheus::Error>>()?;
        let active_calls = IntGauge::new("calltap_active_calls", "Calls in progress.")?;
        registry.register(Box::new(active_calls.clone()))?;
        let cdr_rows_pending_import = IntGauge::new(
            "calltap_cdr_rows_pending_import",
            "CDRs in the CSV journal waiting for the database.",
        )?;
        registry.register(Box::new(cdr_rows_pending_import.clone()))?;
        let float_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        registry.register(Box::new(live.flush_seconds.clone()))?;
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let archive_up = gauge(
            "calltap_archive_up",
            "1 while the archive is reachable (last attempt succeeded), 0 after a failure.",
        )?;
        let spool_alarm = gauge(
            "calltap_spool_disk_full_alarm",
            "1 while the spool filesystem is above [retention] spool_alarm_percent.",
        )?;
        let webhook_queue = gauge(
            "calltap_webhook_queue_events",
            "Webhook events waiting for delivery (including those restored from disk).",
        )?;
        let archive_fields: [(&str, &str, ArchiveField); 8] = [
            (
                "calltap_archive_failures_total",
                "Archive attempts that failed (archive unavailable, copy did not verify).",
                |s| s.failures_total,
            ),
            (
                "calltap_archive_files_total",
                "Recordings archived and verified (spool copy removed).",
                |s| s.archived_total,
            ),
            (
                "calltap_archive_bytes_total",
                "Bytes of recordings archived and verified.",
                |s| s.bytes_archived_total,
            ),
            (
                "calltap_archive_retries_total",
                "Archive attempts that retried an earlier failure.",
                |s| s.retries_total,
            ),
            (
                "calltap_archive_db_updates_total",
                "Database rows moved to their archive location.",
                |s| s.db_updates_total,
            ),
            (
                "calltap_retention_deleted_files_total",
                "Archived recordings deleted by retention.",
                |s| s.retention_deleted_total,
            ),
            (
                "calltap_retention_deleted_bytes_total",
                "Bytes of archived recordings deleted by retention.",
                |s| s.retention_deleted_bytes_total,
            ),
            (
                "calltap_retention_db_marked_total",
                "Database rows of recordings marked deleted by retention (the API answers 410).",
                |s| s.retention_db_marked_total,
            ),
        ];
        let archive_counters = archive_fields
            .into_iter()
            .map(|(name, help, f)| Ok((counter(name, help)?, f)))
            .collect::<Result<Vec<_>, prometheus::Error>>()?;
        let cdr_rows = [
            (
                "written",
                "calltap_cdr_rows_written_total",
                "CDRs stored in the database.",
            ),
            (
                "journaled",
                "calltap_cdr_rows_journaled_total",
                "CDRs written to the CSV journal while the database was away.",
            ),
            (
                "imported",
                "calltap_cdr_rows_imported_total",
                "Journaled CDRs imported into the database.",
            ),
            (
                "db_failures",
                "calltap_cdr_db_write_failures_total",
                "Failed database writes.",
            ),
        ]
        .into_iter()
        .map(|(k, name, help)| Ok((k, counter(name, help)?)))
        .collect::<Result<Vec<_>, prometheus::Error>>()?;
        Ok(Metrics {
            capture: capture_metrics,
            classified: counter_vec(
                "calltap_capture_classified_packets_total",
                "Packets the capture program classified, by class.",
                &["cpu", "class"],
            )?,
            capture_info: gauge_vec(
                "calltap_capture_info",
                "The capture source and mode in use (value 1).",
                &["source", "mode"],
            )?,
            interface_info: gauge_vec(
                "calltap_capture_interface_info",
                "Each capture interface, how it is attached, and whether its frames are dropped after capture (value 1).",
                &["interface", "mode", "after_capture"],
            )?,
            worker_records: counter_vec(
                "calltap_worker_records_total",
                "Records a media worker took from its ring.",
                &["worker"],
            )?,
            worker_active_calls: gauge_vec(
                "calltap_worker_active_calls",
                "Calls a media worker owns.",
                &["worker"],
            )?,
            active_calls,
            calls_started: counter(
                "calltap_calls_started_total",
                "Calls seen starting (INVITE).",
            )?,
            signalling: vec![
                (
                    counter(
                        "calltap_sdp_endpoints_refused_total",
                        "SDP media endpoints kept out of the media map: a SIP port or a port below 1024.",
                    )?,
                    |l| &l.sdp_endpoints_refused,
                ),
                (
                    counter(
                        "calltap_sip_ports_learned_total",
                        "TCP ports found carrying SIP by content and captured as SIP.",
                    )?,
                    |l| &l.sip_ports_learned,
                ),
                (
                    counter(
                        "calltap_sip_ports_expired_total",
                        "Learned SIP ports forgotten after learned_sip_port_idle_s without SIP.",
                    )?,
                    |l| &l.sip_ports_expired,
                ),
            ],
            calls_answered: counter(
                "calltap_calls_answered_total",
                "Ended calls that had been answered.",
            )?,
            calls_ended: counter_vec(
                "calltap_calls_ended_total",
                "Calls ended, by end reason.",
                &["reason"],
            )?,
            stream_loss: histogram(
                "calltap_stream_loss_ratio",
                "Fraction of RTP packets lost per call direction, observed at call end.",
                vec![0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
            )?,
            stream_jitter: histogram(
                "calltap_stream_jitter_seconds",
                "Interarrival jitter per call direction, observed at call end.",
                vec![0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5],
            )?,
            stream_mos: histogram(
                "calltap_stream_mos",
                "Estimated MOS per call direction, observed at call end.",
                vec![1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.5],
            )?,
            unsupported_codec_calls: counter(
                "calltap_unsupported_codec_calls_total",
                "Calls recorded as raw RTP because a codec is not decoded.",
            )?,
            recording_bytes: counter(
                "calltap_recording_bytes_total",
                "Bytes of recordings written (counted at call end).",
            )?,
            cdr_store_mode: gauge_vec(
                "calltap_cdr_store_mode",
                "Where CDRs go now: 1 for the mode in use (db, csv, starting).",
                &["mode"],
            )?,
            cdr_rows,
            cdr_rows_pending_import,
            ring_fill: float_gauge_vec(
                "calltap_worker_ring_fill_ratio",
                "How full a worker's input ring (XDP) or queue (AF_PACKET) is, 0 to 1.",
                &["worker"],
            )?,
            worker_lag: float_gauge_vec(
                "calltap_worker_lag_seconds",
                "Age of the newest record a worker handled, the largest over its last tick.",
                &["worker"],
            )?,
            spool_fs: gauge_vec(
                "calltap_spool_filesystem_bytes",
                "The recordings spool's filesystem: size, used and available bytes.",
                &["state"],
            )?,
            api_requests: counter_vec(
                "calltap_api_requests_total",
                "Management HTTP requests by route template and status code.",
                &["route", "status"],
            )?,
            archive_queue: gauge_vec(
                "calltap_archive_queue_files",
                "Files in the archive queue (queued) and, of those, not yet copied (unarchived); \
                 recordings retention deleted whose database row is not marked yet (deleted_unmarked).",
                &["state"],
            )?,
            archive_up,
            spool_alarm,
            archive_failures: counter_vec(
                "calltap_archive_problems_total",
                "Archive problems by kind: verify (copy did not match), source_mismatch (spool \
                 file differs from its CDR; kept), missing (file gone), db_update (row not moved).",
                &["kind"],
            )?,
            archive_counters,
            webhook_queue,
            webhook_events: counter_vec(
                "calltap_webhook_events_total",
                "Webhook events by outcome: queued, delivered, dropped (queue full).",
                &["outcome"],
            )?,
            webhook_failures: counter(
                "calltap_webhook_delivery_failures_total",
                "Webhook delivery attempts that failed (refused, timeout, non-2xx).",
            )?,
            webhook_retries: counter(
                "calltap_webhook_retries_total",
                "Webhook delivery attempts that retried an earlier failure.",
            )?,
            console_login_failures: counter(
                "calltap_console_login_failures_total",
                "Failed console logins (wrong password or token); each is also logged with its peer.",
            )?,
            recording: recording::RecordingMetrics::new(&registry)?,
            bounds: bounds::BoundMetrics::register(&registry)?,
            registry,
            sources: Sources {
                capture,
                live,
                writer,
                inputs: OnceLock::new(),
                spool: OnceLock::new(),
                archive: OnceLock::new(),
                webhooks: OnceLock::new(),
                console: OnceLock::new(),
            },
        })
    }

    /// Lets the scrape read each consumer's input fill (call once, when capture has started).
    pub fn set_inputs(&self, inputs: Vec<(String, InputFill)>) {
        let _ = self.sources.inputs.set(inputs);
    }

    /// The recordings spool whose filesystem the scrape reports.
    pub fn set_spool(&self, dir: PathBuf) {
        let _ = self.sources.spool.set(dir);
    }

    /// The archiver's counters, read at each scrape.
    pub fn set_archive(&self, c: Arc<ArchiveCounters>) {
        let _ = self.sources.archive.set(c);
    }

    /// The webhook deliverer's counters, read at each scrape.
    pub fn set_webhooks(&self, c: Arc<WebhookCounters>) {
        let _ = self.sources.webhooks.set(c);
    }

    /// The telnet console's counters, read at each scrape.
    pub fn set_console(&self, c: Arc<ConsoleCounters>) {
        let _ = self.sources.console.set(c);
    }

    /// Counts one management HTTP request (`route` is the matched template, never a raw path).
    pub fn observe_request(&self, route: &str, status: u16) {
        self.api_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
    }

    /// Records the capture source in use (`xdp` with `driver`/`skb`, or `af_packet`).
    /// One capture interface: `mode` as in [`Metrics::set_capture_info`], `after_capture`
    /// `drop` (a dedicated mirror port) or `pass`.
    pub fn set_interface_info(&self, interface: &str, mode: &str, after_capture: &str) {
        self.interface_info
            .with_label_values(&[interface, mode, after_capture])
            .set(1);
    }

    pub fn set_capture_info(&self, source: &str, mode: &str) {
        self.capture_info.with_label_values(&[source, mode]).set(1);
    }

    /// Observes a finished call; called by the CDR thread, never by a capture thread.
    pub fn observe_call(&self, cdr: &Cdr) {
        self.calls_ended
            .with_label_values(&[reason_label(&cdr.end_reason)])
            .inc();
        if cdr.answer_ns.is_some() {
            self.calls_answered.inc();
        }
        if !cdr.unsupported_codecs.is_empty() {
            self.unsupported_codec_calls.inc();
        }
        if let Some(r) = &cdr.recording {
            self.recording_bytes.inc_by(r.bytes);
        }
        for s in &cdr.streams {
            let dir = match s.direction.as_str() {
                d @ ("caller" | "callee") => d,
                _ => "other",
            };
            let expected = s.packets + s.lost;
            if expected > 0 {
                self.stream_loss
                    .with_label_values(&[dir])
                    .observe(s.lost as f64 / expected as f64);
            }
            if s.packets > 0 {
                self.stream_jitter
                    .with_label_values(&[dir])
                    .observe(s.jitter_ms / 1000.0);
            }
            if let Some(mos) = s.mos {
                self.stream_mos.with_label_values(&[dir]).observe(mos);
            }
        }
    }

    /// The limits on calls recorded at once, as the daemon found them at start.
    pub fn set_capacity(&self, c: &crate::store::spool::Capacity) {
        self.recording.set_capacity(c);
    }

    /// Reads the shared counters into the metrics.
    fn refresh(&self) {
        self.recording.refresh();
        match &self.sources.capture {
            CaptureCounters::Xdp(c) => {
                for (i, metric) in &self.capture {
                    for (cpu, v) in c.per_cpu(*i).into_iter().enumerate() {
                        set_counter(&metric.with_label_values(&[&cpu.to_string()]), v);
                    }
                }
                for (i, class) in CLASSES {
                    for (cpu, v) in c.per_cpu(*i).into_iter().enumerate() {
                        set_counter(
                            &self
                                .classified
                                .with_label_values(&[cpu.to_string().as_str(), class]),
                            v,
                        );
                    }
                }
            }
            CaptureCounters::Totals(f) => {
                let t = f();
                for (i, metric) in &self.capture {
                    set_counter(&metric.with_label_values(&["all"]), t[*i as usize]);
                }
                for (i, class) in CLASSES {
                    set_counter(
                        &self.classified.with_label_values(&["all", class]),
                        t[*i as usize],
                    );
                }
            }
            CaptureCounters::None => {}
        }
        let live = &self.sources.live;
        self.bounds.refresh(&live.bounds);
        for (i, w) in live.workers.iter().enumerate() {
            let id = i.to_string();
            set_counter(
                &self.worker_records.with_label_values(&[&id]),
                w.records.load(Ordering::Relaxed),
            );
            self.worker_active_calls
                .with_label_values(&[&id])
                .set(w.active_calls.load(Ordering::Relaxed) as i64);
            self.worker_lag
                .with_label_values(&[&id])
                .set(w.lag_ns.load(Ordering::Relaxed) as f64 / 1e9);
        }
        if let Some(inputs) = self.sources.inputs.get() {
            for (label, fill) in inputs {
                self.ring_fill.with_label_values(&[label]).set(fill.ratio());
            }
        }
        if let Some(a) = self.sources.archive.get() {
            let s = a.snapshot();
            for (state, v) in [
                ("queued", s.queue_len),
                ("unarchived", s.queue_unarchived),
                ("deleted_unmarked", s.retention_db_pending),
            ] {
                self.archive_queue
                    .with_label_values(&[state])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            self.archive_up.set(i64::from(s.archive_up));
            self.spool_alarm.set(i64::from(s.disk_full_alarm));
            for (kind, v) in [
                ("verify", s.verify_failures_total),
                ("source_mismatch", s.source_mismatches_total),
                ("missing", s.missing_total),
                ("db_update", s.db_update_failures_total),
            ] {
                set_counter(&self.archive_failures.with_label_values(&[kind]), v);
            }
            for (c, f) in &self.archive_counters {
                set_counter(c, f(&s));
            }
        }
        if let Some(w) = self.sources.webhooks.get() {
            let s = w.snapshot();
            self.webhook_queue
                .set(i64::try_from(s.pending).unwrap_or(i64::MAX));
            for (outcome, v) in [
                ("queued", s.queued),
                ("delivered", s.delivered),
                ("dropped", s.dropped),
            ] {
                set_counter(&self.webhook_events.with_label_values(&[outcome]), v);
            }
            set_counter(&self.webhook_failures, s.failures);
            set_counter(&self.webhook_retries, s.retries);
        }
        if let Some(c) = self.sources.console.get() {
            set_counter(
                &self.console_login_failures,
                c.login_failures.load(Ordering::Relaxed),
            );
        }
        if let Some(dir) = self.sources.spool.get() {
            match crate::store::retention::fs_usage(dir) {
                Ok(fs) => {
                    for (state, v) in [("size", fs.size), ("used", fs.used), ("avail", fs.avail)] {
                        self.spool_fs
                            .with_label_values(&[state])
                            .set(i64::try_from(v).unwrap_or(i64::MAX));
                    }
                }
                Err(e) => log::debug!("statvfs {}: {e}", dir.display()),
            }
        }
        self.active_calls
            .set(live.active_calls.load(Ordering::Relaxed) as i64);
        set_counter(
            &self.calls_started,
            live.calls_started.load(Ordering::Relaxed),
        );
        for (c, field) in &self.signalling {
            set_counter(c, field(live).load(Ordering::Relaxed));
        }
        if let Some(w) = &self.sources.writer {
            let s = w.snapshot();
            for (mode, name) in [
                (Mode::Database, "db"),
                (Mode::Csv, "csv"),
                (Mode::Starting, "starting"),
            ] {
                self.cdr_store_mode
                    .with_label_values(&[name])
                    .set(i64::from(s.mode == mode));
            }
            for (k, c) in &self.cdr_rows {
                let v = match *k {
                    "written" => s.rows_written,
                    "journaled" => s.rows_journaled,
                    "imported" => s.rows_imported,
                    _ => s.db_failures,
                };
                set_counter(c, v);
            }
            self.cdr_rows_pending_import
                .set(i64::try_from(s.rows_pending_import).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition for one scrape.
    pub fn render(&self) -> String {
        self.refresh();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The recorder's health for `GET /api/v1/status`: the same sources as the scrape, as JSON.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Health {
    pub workers: Vec<WorkerHealth>,
    /// How full the signalling ring/queue is (0-1).
    pub signalling_ring_fill: Option<f64>,
    pub active_calls: u64,
    pub archive: Option<ArchiveHealth>,
    pub webhooks: Option<super::webhook::WebhookSnapshot>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerHealth {
    pub worker: u32,
    pub records: u64,
    pub active_calls: u64,
    /// 0-1; None before capture starts.
    pub ring_fill: Option<f64>,
    pub lag_ms: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ArchiveHealth {
    pub queued: u64,
    pub unarchived: u64,
    pub up: bool,
    pub disk_full_alarm: bool,
    pub failures_total: u64,
    pub spool_used_fraction: f64,
}

impl Metrics {
    pub fn health(&self) -> Health {
        let live = &self.sources.live;
        let fill = |label: &str| {
            self.sources
                .inputs
                .get()
                .and_then(|v| v.iter().find(|(l, _)| l == label))
                .map(|(_, f)| f.ratio())
        };
        Health {
            workers: live
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| WorkerHealth {
                    worker: i as u32,
                    records: w.records.load(Ordering::Relaxed),
                    active_calls: w.active_calls.load(Ordering::Relaxed),
                    ring_fill: fill(&i.to_string()),
                    lag_ms: w.lag_ns.load(Ordering::Relaxed) as f64 / 1e6,
                })
                .collect(),
            signalling_ring_fill: fill("signalling"),
            active_calls: live.active_calls.load(Ordering::Relaxed),
            archive: self.sources.archive.get().map(|a| {
                let s = a.snapshot();
                ArchiveHealth {
                    queued: s.queue_len,
                    unarchived: s.queue_unarchived,
                    up: s.archive_up,
                    disk_full_alarm: s.disk_full_alarm,
                    failures_total: s.failures_total,
                    spool_used_fraction: s.spool_fs_used_fraction,
                }
            }),
            webhooks: self.sources.webhooks.get().map(|w| w.snapshot()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cdr::StreamQuality;

    fn cdr(reason: &str) -> Cdr {
        let mut c = crate::store::db::tests::sample_cdr(1);
        c.end_reason = reason.to_string();
        c.answer_ns = Some(1);
        c.unsupported_codecs.clear();
        c.recording = None;
        c.streams = vec![StreamQuality {
            direction: "caller".into(),
            packets: 99,
            lost: 1,
            jitter_ms: 4.0,
            mos: Some(4.3),
            ..StreamQuality::default()
        }];
        c
    }

    #[test]
    fn exposition_names_and_bounded_labels() {
        let live = Arc::new(LiveStats::new(2));
        live.active_calls.store(3, Ordering::Relaxed);
        live.calls_started.store(7, Ordering::Relaxed);
        live.sdp_endpoints_refused.store(2, Ordering::Relaxed);
        live.workers[1].records.store(42, Ordering::Relaxed);
        let totals: [u64; calltap_common::COUNTERS as usize] =
            std::array::from_fn(|i| i as u64 + 10);
        let writer = Arc::new(WriterCounters::default());
        let m = Metrics::new(
            CaptureCounters::Totals(Arc::new(move || totals)),
            live,
            Some(writer),
        )
        .expect("registry");
        m.set_capture_info("af_packet", "af_packet");
        m.set_interface_info("eth1", "af_packet", "pass");
        m.observe_call(&cdr("bye_caller"));
        m.observe_call(&cdr("sip:+15551234@evil"));
        m.observe_call(&cdr("failure_486"));
        let (tx, rx) = crossbeam_channel::bounded(4);
        tx.send(vec![0u8]).expect("queue");
        m.set_inputs(vec![("signalling".to_string(), InputFill::Queue(rx))]);
        m.set_spool(std::env::temp_dir());
        m.observe_request("/api/v1/calls/{uuid}", 404);
        m.sources.live.workers[0]
            .lag_ns
            .store(1_500_000, Ordering::Relaxed);
        m.sources.live.flush_seconds.observe(0.002);
        m.sources
            .live
            .bounds
            .store(&crate::pipeline::bounds::BoundStats {
                invites_shed_unanswered: 4,
                calls_evicted: 5,
                unanswered_calls: 6,
                requests_rejected: 2,
                tcp_segments_shed: 9,
                tcp_held_bytes: 1000,
                frag_timed_out: 3,
                ..Default::default()
            });
        m.sources
            .live
            .bounds
            .store_worker(&crate::pipeline::media::WorkerStats {
                id: 1,
                dtmf_omitted: 8,
                ..Default::default()
            });
        let archive = Arc::new(ArchiveCounters::default());
        archive.archived_total.store(5, Ordering::Relaxed);
        archive.failures_total.store(2, Ordering::Relaxed);
        archive.verify_failures_total.store(1, Ordering::Relaxed);
        archive.queue_len.store(3, Ordering::Relaxed);
        archive
            .disk_full_alarm
            .store(true, std::sync::atomic::Ordering::Relaxed);
        m.set_archive(archive);
        m.set_webhooks(Arc::new(WebhookCounters::default()));
        let text = m.render();
        for line in [
            "calltap_capture_packets_total{cpu=\"all\"} 10",
            "calltap_capture_bytes_total{cpu=\"all\"} 11",
            "calltap_capture_classified_packets_total{class=\"rtp\",cpu=\"all\"} 13",
            "calltap_capture_ring_full_drops_total{cpu=\"all\"} 17",
            "calltap_capture_info{mode=\"af_packet\",source=\"af_packet\"} 1",
            "calltap_capture_interface_info{after_capture=\"pass\",interface=\"eth1\",mode=\"af_packet\"} 1",
            "calltap_worker_records_total{worker=\"1\"} 42",
            "calltap_active_calls 3",
            "calltap_calls_started_total 7",
            "calltap_sdp_endpoints_refused_total 2",
            "calltap_sip_ports_expired_total 0",
            "calltap_calls_answered_total 3",
            "calltap_calls_ended_total{reason=\"bye_caller\"} 1",
            "calltap_calls_ended_total{reason=\"failure_4xx\"} 1",
            "calltap_calls_ended_total{reason=\"other\"} 1",
            "calltap_stream_loss_ratio_count{direction=\"caller\"} 3",
            "calltap_stream_jitter_seconds_bucket{direction=\"caller\",le=\"0.005\"} 3",
            "calltap_stream_mos_count{direction=\"caller\"} 3",
            "calltap_cdr_store_mode{mode=\"starting\"} 1",
            "calltap_cdr_rows_journaled_total 0",
            "calltap_cdr_rows_pending_import 0",
            "calltap_archive_files_total 5",
            "calltap_archive_failures_total 2",
            "calltap_archive_problems_total{kind=\"verify\"} 1",
            "calltap_archive_queue_files{state=\"queued\"} 3",
            "calltap_archive_up 0",
            "calltap_spool_disk_full_alarm 1",
            "calltap_webhook_queue_events 0",
            "calltap_webhook_events_total{outcome=\"delivered\"} 0",
            "calltap_webhook_delivery_failures_total 0",
            "calltap_worker_ring_fill_ratio{worker=\"signalling\"} 0.25",
            "calltap_worker_lag_seconds{worker=\"0\"} 0.0015",
            "calltap_recording_flush_seconds_bucket{le=\"0.0025\"} 1",
            "calltap_api_requests_total{route=\"/api/v1/calls/{uuid}\",status=\"404\"} 1",
            "calltap_sip_invites_shed_total{reason=\"max_unanswered\"} 4",
            "calltap_sip_calls_evicted_total 5",
            "calltap_sip_unanswered_calls 6",
            "calltap_sip_requests_rejected_total 2",
            "calltap_tcp_segments_shed_total 9",
            "calltap_tcp_held_bytes 1000",
            "calltap_ipfrag_datagrams_dropped_total{reason=\"timeout\"} 3",
            "calltap_call_events_omitted_total{kind=\"dtmf\"} 8",
            "calltap_call_events_omitted_total{kind=\"rejected_request\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("evil"), "an end reason leaked into a label");
        let fs_line = |state: &str| {
            let prefix = format!("calltap_spool_filesystem_bytes{{state=\"{state}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no spool {state} in\n{text}"))
        };
        let (size, used, avail) = (fs_line("size"), fs_line("used"), fs_line("avail"));
        assert!(
            size > 0 && used <= size && avail <= size,
            "{size} {used} {avail}"
        );
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("calltap_"), "unprefixed series {l}");
        }
    }
}
