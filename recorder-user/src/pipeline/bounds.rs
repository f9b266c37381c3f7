//! What the bounds on the signalling worker's state shed and hold (README, "Limits and
//! bounds"), gathered from the dialog tracker and the reassemblers for the run summary and the
//! metrics.

use calltap_net::{ipfrag::Reassembler, tcp::TcpReassembler};
use calltap_sip::dialog::Tracker;
use serde::Serialize;

/// The bounds on the signalling worker's state under floods (see README, "Limits and
/// bounds"): calls followed, in-dialog requests not acted on, TCP and IP fragment reassembly.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BoundStats {
    /// INVITEs not followed: `max_calls` reached (or too many calls on one Call-ID).
    pub invites_shed_max_calls: u64,
    /// INVITEs not followed: `max_unanswered_calls` waiting, none evictable.
    pub invites_shed_unanswered: u64,
    /// Unanswered calls evicted for newer INVITEs.
    pub calls_evicted: u64,
    /// Calls waiting for an answer now.
    pub unanswered_calls: u64,
    /// In-dialog requests off the dialog's signalling path, not acted on.
    pub requests_rejected: u64,
    /// TCP out-of-order segments shed by the total bounds, and bytes dropped (unframeable,
    /// before a skipped hole, or shed).
    pub tcp_segments_shed: u64,
    pub tcp_bytes_dropped: u64,
    pub tcp_gaps_skipped: u64,
    pub tcp_flows_evicted: u64,
    /// TCP bytes (with per-segment overhead) and out-of-order segments held now.
    pub tcp_held_bytes: u64,
    pub tcp_held_segments: u64,
    /// Fragmented datagrams dropped by the fragment, datagram or memory bounds, and those that
    /// never completed in time.
    pub frag_dropped_limit: u64,
    pub frag_timed_out: u64,
    /// Fragment bytes (with per-fragment overhead) held now.
    pub frag_held_bytes: u64,
}

impl BoundStats {
    /// The counters of `tracker`, `tcp` and `frags` now.
    pub fn of(tracker: &Tracker, tcp: &TcpReassembler, frags: &Reassembler) -> BoundStats {
        let t = tracker.stats();
        let (ts, fs) = (tcp.stats(), frags.stats());
        BoundStats {
            invites_shed_max_calls: t.calls_dropped,
            invites_shed_unanswered: t.calls_shed_unanswered,
            calls_evicted: t.calls_evicted,
            unanswered_calls: t.unanswered_calls,
            requests_rejected: t.requests_rejected,
            tcp_segments_shed: ts.segments_shed,
            tcp_bytes_dropped: ts.bytes_dropped,
            tcp_gaps_skipped: ts.gaps_skipped,
            tcp_flows_evicted: ts.flows_evicted,
            tcp_held_bytes: tcp.held_bytes() as u64,
            tcp_held_segments: tcp.held_segments() as u64,
            frag_dropped_limit: fs.dropped_limit,
            frag_timed_out: fs.timed_out,
            frag_held_bytes: frags.held_bytes() as u64,
        }
    }
}
