//! Following INVITE dialogs from observed messages.
//!
//! The [`Tracker`] sees each SIP message once (as captured, in capture order) and emits
//! [`CallEvent`]s: a call starts, a side announces where it receives media, the call rings, is
//! answered, carries DTMF, ends. It never sends anything and must cope with missing,
//! duplicated and reordered messages, so every transition is idempotent.

mod body;
mod path;
mod tracker;

use std::net::{IpAddr, SocketAddr};

pub use body::{info_dtmf, sdp_body};
pub use path::{RejectReason, SignalPath, MAX_PATH_ADDRS};
use serde::Serialize;
pub use tracker::{DialogFork, DialogMedia, DialogState, Tracker};

use crate::{
    sdp::{Direction, RtpMap},
    NameAddr,
};

/// Identity of one call inside a tracker (unique for the tracker's lifetime, never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CallRef(pub u64);

/// A party of the call: the caller sent the initial INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    /// 0 for the caller, 1 for the callee: the recording's channel, the index of per-side
    /// state.
    pub fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Callee => 1,
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// BYE sent by that side.
    Bye(Side),
    /// The caller cancelled before an answer.
    Cancel,
    /// Final non-2xx response to the initial INVITE.
    Failure(u16),
    /// Longer than the configured maximum call duration.
    MaxDuration,
    /// No final response within the unanswered timeout.
    Unanswered,
    /// The media workers saw no RTP for too long (reported by the daemon).
    MediaTimeout,
    /// The recorder stopped while the call was up.
    RecorderRestart,
    /// Evicted unanswered, to admit a newer INVITE when `max_unanswered_calls` (or
    /// `max_calls`) were followed: nobody beyond the next hop had answered it in any way.
    Evicted,
}

impl EndReason {
    /// Stable name for CDRs, e.g. `bye_caller`, `failure_486`.
    pub fn as_str(&self) -> String {
        match self {
            EndReason::Bye(side) => format!("bye_{}", side.as_str()),
            EndReason::Cancel => "cancel".to_string(),
            EndReason::Failure(code) => format!("failure_{code}"),
            EndReason::MaxDuration => "max_duration".to_string(),
            EndReason::Unanswered => "unanswered".to_string(),
            EndReason::MediaTimeout => "media_timeout".to_string(),
            EndReason::RecorderRestart => "recorder_restart".to_string(),
            EndReason::Evicted => "evicted".to_string(),
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// What the tracker learned from a message or a tick.
///
/// `Started` is larger than the rest (two name-addrs), but events are transient, few (SIP
/// rate) and destructured by value by the daemon, so boxing would only add allocations.
#[expect(
    clippy::large_enum_variant,
    reason = "transient, few (SIP rate) and destructured by value: boxing would only allocate"
)]
#[derive(Clone, Debug, PartialEq)]
pub enum CallEvent {
    /// An initial INVITE was seen. Always the first event of a call.
    Started {
        call: CallRef,
        call_id: String,
        /// Value of the correlation header if configured and present, else the Call-ID.
        interaction: String,
        from: NameAddr,
        to: NameAddr,
        /// Source of the initial INVITE.
        caller_ip: IpAddr,
        /// Destination of the initial INVITE (the next hop, as seen on the wire).
        callee_ip: IpAddr,
        ts_ns: u64,
    },
    /// Where `side` receives media changed (from that side's own SDP). `rtp` is `None` when
    /// the stream is disabled or held with the unspecified address.
    Media {
        call: CallRef,
        side: Side,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
        codecs: Vec<RtpMap>,
        direction: Direction,
        ts_ns: u64,
    },
    /// First 180/183 for the initial INVITE.
    Ringing { call: CallRef, ts_ns: u64 },
    /// First 2xx for the initial INVITE.
    Answered { call: CallRef, ts_ns: u64 },
    /// A digit signalled with SIP INFO by `side`.
    Dtmf {
        call: CallRef,
        side: Side,
        digit: char,
        duration_ms: Option<u32>,
        ts_ns: u64,
    },
    /// An in-dialog request that would have ended the call or changed its media (BYE, CANCEL,
    /// re-INVITE, UPDATE, INFO, SDP in any request) was not acted on: it came from or went to
    /// an address that is not on the dialog's signalling path (see [`SignalPath`]).
    Rejected { call: CallRef, rejection: Rejection },
    /// The call is over; no further events follow for it.
    Ended {
        call: CallRef,
        reason: EndReason,
        ts_ns: u64,
    },
}

impl CallEvent {
    pub fn call(&self) -> CallRef {
        match self {
            CallEvent::Started { call, .. }
            | CallEvent::Media { call, .. }
            | CallEvent::Ringing { call, .. }
            | CallEvent::Answered { call, .. }
            | CallEvent::Dtmf { call, .. }
            | CallEvent::Rejected { call, .. }
            | CallEvent::Ended { call, .. } => *call,
        }
    }
}

/// An in-dialog request the tracker did not act on (see [`CallEvent::Rejected`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The method, upper case.
    pub method: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub reason: RejectReason,
    pub ts_ns: u64,
}

/// Tracker limits and timeouts. Zero durations disable the corresponding timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Header whose value identifies the interaction across legs (e.g. `X-CID`).
    pub correlation_header: Option<String>,
    /// Calls longer than this are ended with [`EndReason::MaxDuration`].
    pub max_call_duration_ns: u64,
    /// Calls without a final response after this long are ended with
    /// [`EndReason::Unanswered`] (or the failure a fork already reported).
    pub unanswered_timeout_ns: u64,
    /// Most calls followed at once; further INVITEs are counted and ignored.
    pub max_calls: usize,
    /// Most unanswered calls followed at once, so an INVITE flood cannot fill `max_calls`. At
    /// the bound a new INVITE evicts the oldest unanswered call that nobody beyond the next hop
    /// has answered in any way (no response but 100 Trying or an authentication challenge, no
    /// SDP from the callee) with [`EndReason::Evicted`]; if every unanswered call has had an
    /// answer of some kind (ringing, early media), the new INVITE is counted and ignored.
    pub max_unanswered_calls: usize,
    /// How long an ended call is remembered, so retransmitted BYEs, 200 OKs and ACKs do not
    /// look like new traffic. 32 s is SIP's transaction timeout (64*T1).
    pub linger_ns: u64,
    /// After a CANCEL, how long to wait for the 487 (or a racing 200) before ending the call
    /// as cancelled anyway.
    pub cancel_grace_ns: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            correlation_header: None,
            max_call_duration_ns: 4 * 3600 * 1_000_000_000,
            unanswered_timeout_ns: 180 * 1_000_000_000,
            max_calls: 100_000,
            max_unanswered_calls: 20_000,
            linger_ns: 32 * 1_000_000_000,
            cancel_grace_ns: 4 * 1_000_000_000,
        }
    }
}

/// Counters of a tracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    pub messages: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    /// Calls currently followed (not yet ended).
    pub active_calls: u64,
    /// Ended calls still remembered for retransmissions.
    pub lingering_calls: u64,
    /// INVITEs ignored because `max_calls` were already followed (and none could be
    /// evicted), or their Call-ID had too many calls already.
    pub calls_dropped: u64,
    /// INVITEs ignored because `max_unanswered_calls` were waiting and none could be evicted.
    pub calls_shed_unanswered: u64,
    /// Unanswered calls evicted for a newer INVITE ([`EndReason::Evicted`]).
    pub calls_evicted: u64,
    /// Calls currently followed that are not answered yet.
    pub unanswered_calls: u64,
    /// In-dialog requests not acted on ([`CallEvent::Rejected`]).
    pub requests_rejected: u64,
    /// Rejected BYEs that ended the call after all: the other party answered them 2xx from the
    /// dialog's path, so they were real (sent along a path the dialog had not shown).
    pub byes_confirmed: u64,
    /// INVITE retransmissions (and spirals) recognised as such.
    pub retransmissions: u64,
    /// Messages of dialogs the tracker does not know (started before capture, or not INVITE).
    pub orphans: u64,
    /// Messages without a usable Call-ID, CSeq or From.
    pub unusable: u64,
    /// SDP bodies that could not be parsed.
    pub bad_sdp: u64,
}

#[cfg(test)]
mod tests;
