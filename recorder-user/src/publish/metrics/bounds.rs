//! The bounds on SIP-side state under floods (README, "Limits and bounds"): what each one shed
//! and what it holds now. The signalling thread stores [`BoundStats`] here on its tick and each
//! media worker its per-call bound counters; the scrape turns them into series.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::pipeline::{bounds::BoundStats, media::WorkerStats};

/// One series: its metric, its one label (if any), and the counter it reads.
struct Series {
    name: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    /// A gauge (held now) rather than a counter (shed so far).
    gauge: bool,
    read: fn(&BoundStats) -> u64,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    read: fn(&BoundStats) -> u64,
) -> Series {
    Series {
        name,
        help,
        label,
        gauge: false,
        read,
    }
}

const fn gauge(name: &'static str, help: &'static str, read: fn(&BoundStats) -> u64) -> Series {
    Series {
        name,
        help,
        label: None,
        gauge: true,
        read,
    }
}

const SHED: &str =
    "INVITEs not followed because a bound was reached: max_calls (or too many calls \
                    on one Call-ID), max_unanswered (every unanswered call had been answered in \
                    some way, none could be evicted).";
const FRAG_DROPPED: &str = "Fragmented datagrams dropped: limit (fragments per datagram, \
                            datagrams, bytes), timeout (never completed).";

const SERIES: &[Series] = &[
    counter(
        "calltap_sip_invites_shed_total",
        SHED,
        Some(("reason", "max_calls")),
        |s| s.invites_shed_max_calls,
    ),
    counter(
        "calltap_sip_invites_shed_total",
        SHED,
        Some(("reason", "max_unanswered")),
        |s| s.invites_shed_unanswered,
    ),
    counter(
        "calltap_sip_calls_evicted_total",
        "Unanswered calls nobody had answered, evicted for newer INVITEs at max_unanswered_calls.",
        None,
        |s| s.calls_evicted,
    ),
    gauge(
        "calltap_sip_unanswered_calls",
        "Calls followed that are not answered yet.",
        |s| s.unanswered_calls,
    ),
    counter(
        "calltap_sip_requests_rejected_total",
        "In-dialog requests not acted on: from or to an address off the dialog's signalling path.",
        None,
        |s| s.requests_rejected,
    ),
    counter(
        "calltap_tcp_segments_shed_total",
        "Out-of-order TCP segments dropped undelivered by the total bounds.",
        None,
        |s| s.tcp_segments_shed,
    ),
    counter(
        "calltap_tcp_bytes_dropped_total",
        "TCP bytes dropped: unframeable, before a skipped hole, or shed.",
        None,
        |s| s.tcp_bytes_dropped,
    ),
    counter(
        "calltap_tcp_gaps_skipped_total",
        "TCP holes given up on (timeout, or a per-direction bound).",
        None,
        |s| s.tcp_gaps_skipped,
    ),
    counter(
        "calltap_tcp_flows_evicted_total",
        "TCP directions forgotten early because tcp_max_flows were followed.",
        None,
        |s| s.tcp_flows_evicted,
    ),
    gauge(
        "calltap_tcp_held_bytes",
        "Bytes TCP reassembly holds, with per-segment overhead.",
        |s| s.tcp_held_bytes,
    ),
    gauge(
        "calltap_tcp_held_segments",
        "Out-of-order TCP segments held.",
        |s| s.tcp_held_segments,
    ),
    counter(
        "calltap_ipfrag_datagrams_dropped_total",
        FRAG_DROPPED,
        Some(("reason", "limit")),
        |s| s.frag_dropped_limit,
    ),
    counter(
        "calltap_ipfrag_datagrams_dropped_total",
        FRAG_DROPPED,
        Some(("reason", "timeout")),
        |s| s.frag_timed_out,
    ),
    gauge(
        "calltap_ipfrag_held_bytes",
        "Bytes fragment reassembly holds, with per-fragment overhead.",
        |s| s.frag_held_bytes,
    ),
];

/// What the capture threads publish for [`SERIES`] and the per-call bounds: relaxed stores on
/// their ticks, read by the scrape.
#[derive(Debug)]
pub struct BoundsLive {
    values: Vec<AtomicU64>,
    /// Per media worker: DTMF digits and rejected requests past their per-call bounds.
    omitted: Vec<[AtomicU64; 2]>,
}

impl BoundsLive {
    pub fn new(workers: u32) -> BoundsLive {
        BoundsLive {
            values: SERIES.iter().map(|_| AtomicU64::new(0)).collect(),
            omitted: (0..workers).map(|_| Default::default()).collect(),
        }
    }

    /// The signalling thread's tick.
    pub fn store(&self, s: &BoundStats) {
        for (v, series) in self.values.iter().zip(SERIES) {
            v.store((series.read)(s), Ordering::Relaxed);
        }
    }

    /// A media worker's tick.
    pub fn store_worker(&self, w: &WorkerStats) {
        if let Some([dtmf, rejected]) = self.omitted.get(w.id as usize) {
            dtmf.store(w.dtmf_omitted, Ordering::Relaxed);
            rejected.store(w.rejected_requests_omitted, Ordering::Relaxed);
        }
    }
}

enum Metric {
    Counter(IntCounter),
    Gauge(IntGauge),
}

/// The registered series, in [`SERIES`] order, and the per-call omission counters.
pub struct BoundMetrics {
    series: Vec<Metric>,
    omitted: [IntCounter; 2],
}

impl BoundMetrics {
    pub fn register(registry: &Registry) -> Result<BoundMetrics, prometheus::Error> {
        let mut counters: Vec<(&str, IntCounterVec)> = Vec::new();
        let mut gauges: Vec<(&str, IntGaugeVec)> = Vec::new();
        let mut series = Vec::new();
        for s in SERIES {
            let labels: Vec<&str> = s.label.iter().map(|(k, _)| *k).collect();
            let values: Vec<&str> = s.label.iter().map(|(_, v)| *v).collect();
            if s.gauge {
                if !gauges.iter().any(|(n, _)| *n == s.name) {
                    let g = IntGaugeVec::new(Opts::new(s.name, s.help), &labels)?;
                    registry.register(Box::new(g.clone()))?;
                    gauges.push((s.name, g));
                }
                if let Some((_, g)) = gauges.iter().find(|(n, _)| *n == s.name) {
                    series.push(Metric::Gauge(g.get_metric_with_label_values(&values)?));
                }
            } else {
                if !counters.iter().any(|(n, _)| *n == s.name) {
                    let c = IntCounterVec::new(Opts::new(s.name, s.help), &labels)?;
                    registry.register(Box::new(c.clone()))?;
                    counters.push((s.name, c));
                }
                if let Some((_, c)) = counters.iter().find(|(n, _)| *n == s.name) {
                    series.push(Metric::Counter(c.get_metric_with_label_values(&values)?));
                }
            }
        }
        let omitted = IntCounterVec::new(
            Opts::new(
                "calltap_call_events_omitted_total",
                "Per-call list entries past their bound, counted only: dtmf (256 digits a \
                 call), rejected_request (32 a call).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(omitted.clone()))?;
        Ok(BoundMetrics {
            series,
            omitted: [
                omitted.get_metric_with_label_values(&["dtmf"])?,
                omitted.get_metric_with_label_values(&["rejected_request"])?,
            ],
        })
    }

    /// Reads `live` into the series (at scrape time).
    pub fn refresh(&self, live: &BoundsLive) {
        for (m, v) in self.series.iter().zip(&live.values) {
            let v = v.load(Ordering::Relaxed);
            match m {
                Metric::Counter(c) => super::set_counter(c, v),
                Metric::Gauge(g) => g.set(i64::try_from(v).unwrap_or(i64::MAX)),
            }
        }
        for (i, c) in self.omitted.iter().enumerate() {
            let total = live
                .omitted
                .iter()
                .map(|w| w[i].load(Ordering::Relaxed))
                .sum();
            super::set_counter(c, total);
        }
    }
}
