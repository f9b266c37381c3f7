//! The stages after capture: the signalling worker follows SIP and tells media workers about
//! calls; media workers turn each call's RTP into a recording and a CDR.
//!
//! Threading is the driver's business (`cmd/run.rs` pins one thread per worker, `cmd/replay.rs`
//! runs them inline for deterministic offline results); the workers themselves are plain
//! structs fed one record at a time.

pub mod bounds;
pub mod config;
pub mod group;
pub mod media;
pub mod recording;
pub mod signalling;
pub mod sip_ports;

use std::net::SocketAddr;

use calltap_common::MediaKey;
use calltap_sip::{
    dialog::{CallEvent, CallRef},
    NameAddr,
};

/// What a media worker needs to know to start recording a call.
#[derive(Clone, Debug)]
pub struct CallSetup {
    pub call: CallRef,
    pub uuid: String,
    pub call_id: String,
    pub interaction: String,
    pub from: NameAddr,
    pub to: NameAddr,
    pub caller_ip: std::net::IpAddr,
    pub callee_ip: std::net::IpAddr,
    pub start_ns: u64,
    /// Whether (and why) the call is recorded: decided once, at call start, by the recording
    /// rules ([`crate::rules::LiveRules`]).
    pub recording: crate::rules::RecordingMode,
}

impl CallSetup {
    /// The setup of a call journaled by an earlier run, under its new reference `call`.
    pub fn journaled(j: &crate::store::callstore::CallJournal, call: CallRef) -> CallSetup {
        CallSetup {
            call,
            uuid: j.uuid.clone(),
            call_id: j.call_id.clone(),
            interaction: j.interaction.clone(),
            from: j.from.clone(),
            to: j.to.clone(),
            caller_ip: j.caller_ip,
            callee_ip: j.callee_ip,
            start_ns: j.start_ns,
            recording: j.recording,
        }
    }
}

/// Signalling and the control plane -> media worker.
#[derive(Debug)]
pub enum Control {
    Start(Box<CallSetup>),
    /// What SIP said about a call since it started, as the dialog tracker said it: where a
    /// side receives media (`Media`, its endpoints already admitted by signalling), ringing,
    /// the answer, SIP INFO digits, in-dialog requests not acted on (`Rejected`: listed in
    /// the CDR's `rejected_requests`). `Started` and `Ended` come as `Start` and `End`.
    /// Boxed: a started call's event is large, and every queued message is as large as the
    /// largest.
    Event(Box<CallEvent>),
    End {
        call: CallRef,
        reason: String,
        ts_ns: u64,
    },
    /// Signalling stopped following an unanswered call nobody had answered, to admit a newer
    /// INVITE under a flood (`[calls] max_unanswered_calls`). A call that has nothing (no
    /// packet, recording or operator action) is dropped without a CDR, as if it had never been
    /// followed; otherwise it ends like `End` with reason `evicted`.
    Evict {
        call: CallRef,
        ts_ns: u64,
    },
    /// An operator's recording control (API, console), checked against the call's state by
    /// `publish::live` before it is sent; `ts_ns` is when it was asked for.
    Recording {
        call: CallRef,
        action: recording::RecordingAction,
        ts_ns: u64,
    },
    /// The call's dialog state changed (only sent when the active-call journal is on): the
    /// media worker keeps it to journal with the call.
    Dialog {
        call: CallRef,
        state: Box<calltap_sip::dialog::DialogState>,
    },
    /// A call an earlier run was recording, from the active-call journal: the worker takes it
    /// over (same uuid, same WAV) under the new `call` reference.
    Restore(Box<Restored>),
    /// RTP/RTCP that reached the signalling worker before its call's endpoints were in the
    /// classifier's table; the signalling worker hands it to the owner (rare: a call's first
    /// packets only, so the copy does not matter).
    Packet(Box<OwnedRecord>),
    /// Attach an output to a live call (a listener, an encoder): from now on it gets the call's
    /// placed audio (see [`media::outputs`]). Dropped when the call is gone.
    Attach {
        call: CallRef,
        output: media::outputs::NewOutput,
    },
    /// Detach an output attached before: it is closed, and gets nothing more.
    Detach {
        call: CallRef,
        id: media::outputs::OutputId,
        ts_ns: u64,
    },
    /// A configuration reload changed the worker's settings (path template, flush interval,
    /// timeouts): calls already open keep their files; new values apply from now on.
    Settings(Box<media::MediaConfig>),
}

/// A journaled call handed to its (possibly new) media worker on start.
#[derive(Clone, Debug)]
pub struct Restored {
    pub call: CallRef,
    pub journal: crate::store::callstore::CallJournal,
    /// The span this restart left unrecorded; `None` for a call that had already ended.
    pub gap: Option<crate::store::cdr::RestartGap>,
    /// When the restarted run took the call over.
    pub now_ns: u64,
}

/// A captured record that owns its bytes.
#[derive(Clone, Debug)]
pub struct OwnedRecord {
    pub meta: calltap_common::PacketMeta,
    pub frame: Vec<u8>,
}

impl OwnedRecord {
    pub fn record(&self) -> crate::capture::Record<'_> {
        crate::capture::Record {
            meta: self.meta,
            frame: &self.frame,
        }
    }
}

/// Where the signalling worker sends control messages.
pub trait ControlSink {
    fn send(&mut self, worker: u32, msg: Control);
}

/// Queue used by inline drivers: the driver drains it into the workers after each record.
impl ControlSink for Vec<(u32, Control)> {
    fn send(&mut self, worker: u32, msg: Control) {
        self.push((worker, msg));
    }
}

/// Media worker -> signalling: a call went quiet for longer than the media timeout.
#[derive(Clone, Copy, Debug)]
pub struct MediaTimeout {
    pub call: CallRef,
    pub ts_ns: u64,
    /// A call restored after a restart that stayed silent: it ended while CallTap was down
    /// (end reason `recorder_restart`, at `ts_ns`, the last moment it was known alive).
    pub restart: bool,
}

/// The media map key of a socket address (IPv4 stored IPv4-mapped, as the classifier does).
pub fn media_key(addr: SocketAddr) -> MediaKey {
    match addr {
        SocketAddr::V4(a) => MediaKey::v4(a.ip().octets(), a.port()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => MediaKey::v4(v4.octets(), a.port()),
            None => MediaKey::v6(a.ip().octets(), a.port()),
        },
    }
}

/// Counter-based unique ids for calls: time-ordered, unique per recorder process run.
pub fn call_uuid(start_ns: u64, call: CallRef, node: u32) -> String {
    format!("{start_ns:016x}-{node:04x}-{:012x}", call.0)
}

#[cfg(test)]
mod tests {
    /// Every slot of a worker's control queue is as large as the largest message: they stay
    /// small, the large ones boxed.
    #[test]
    fn control_messages_stay_small() {
        let size = std::mem::size_of::<super::Control>();
        eprintln!("Control: {size} bytes");
        assert!(size <= 64, "{size}");
    }
}
