//! The signalling worker: reassembles fragments and TCP streams, parses SIP, follows dialogs,
//! assigns each call to a media worker and publishes the call's media endpoints to the
//! classifier's table, so RTP reaches the owner directly from then on.

use std::{collections::HashMap, net::SocketAddr};

use calltap_common::{flags, Class, MediaKey};
use calltap_net::{
    ipfrag::{Reassembler, ReassemblyConfig},
    tcp::{TcpConfig, TcpReassembler},
};
use calltap_sip::{
    dialog::{CallEvent, CallRef, Tracker, TrackerConfig},
    Message,
};
use serde::Serialize;

use super::{
    bounds::BoundStats, media::END_GRACE_NS, sip_ports::SipPorts, Control, ControlSink,
    MediaTimeout, OwnedRecord,
};
use crate::{capture::Record, classify::MediaTable, store::callstore::JournalWriter};

mod endpoints;
mod restore;
mod route;
mod transport;

/// Counters of the signalling worker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SignallingStats {
    pub records: u64,
    pub sip_packets: u64,
    pub sip_messages: u64,
    pub malformed_sip: u64,
    pub fragments: u64,
    pub reassembled: u64,
    pub tcp_segments: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    pub media_table_errors: u64,
    /// RTP/RTCP that overtook its call's SDP and was handed to the owner by this worker.
    pub early_media_forwarded: u64,
    /// Unclaimed RTP/RTCP no call claimed within the grace period (streams whose SIP CallTap
    /// did not see).
    pub early_media_unclaimed: u64,
    /// TCP ports found carrying SIP by content and added to the classifier's SIP ports.
    pub learned_sip_ports: u64,
    /// Learned SIP ports taken out of the classifier again: no SIP crossed them for
    /// `[capture] learned_sip_port_idle_s`.
    pub expired_sip_ports: u64,
    /// SDP media endpoints kept out of the media map (and out of the media worker's endpoint
    /// table): their port is a SIP port or below 1024, when the SDP came or later, when their
    /// port became a SIP port. A call's SDP must never steer signalling or a system service.
    pub sdp_endpoints_refused: u64,
    /// Calls taken over from the active-call journal of an earlier run (still going, and
    /// already ended before it stopped).
    pub calls_restored: u64,
    pub calls_restored_ended: u64,
    /// Journal files that could not be read (set aside in `active/corrupt/`).
    pub journal_corrupt: u64,
    /// What the bounds on SIP-side state shed, and what they hold now (as of the last tick).
    pub bounds: BoundStats,
}

/// How long unclaimed RTP waits for SIP that describes it, and how much of it is kept.
const EARLY_GRACE_NS: u64 = 2_000_000_000;
const EARLY_MAX: usize = 2048;
/// How long a learned SIP port stays without SIP on it, unless configured otherwise.
pub const LEARNED_SIP_PORT_IDLE_NS: u64 = 600_000_000_000;
/// Bound on remembered endpoints of just-ended calls.
const MAX_RECENTLY_ENDED: usize = 65_536;
/// Call references for restored calls the tracker does not follow (they had ended): far above
/// any the tracker hands out, so the two never meet.
const UNTRACKED_CALLS: u64 = 1 << 62;

struct Route {
    worker: u32,
    /// Media keys per side (caller, callee).
    keys: [Vec<MediaKey>; 2],
    /// For the log line about a refused SDP endpoint (one per call).
    call_id: String,
    refused_logged: bool,
}

pub struct SignallingWorker<T: MediaTable> {
    tracker: Tracker,
    frags: Reassembler,
    tcp: TcpReassembler,
    table: T,
    workers: u32,
    load: Vec<u32>,
    routes: HashMap<CallRef, Route>,
    /// Which call currently owns a media key in the table (two calls may reuse an endpoint).
    owners: HashMap<MediaKey, CallRef>,
    /// Keys marked shared in the table (several live calls use the endpoint): a re-INVITE of
    /// the owner must not clear the mark, or the other calls' packets go to the owner's worker.
    shared: std::collections::HashSet<MediaKey>,
    events: Vec<CallEvent>,
    node: u32,
    /// Unclaimed media waiting (bounded, briefly) for the SIP that will claim it.
    pending: std::collections::VecDeque<OwnedRecord>,
    /// Configured and learned SIP ports: what is learned, and what an SDP may not claim.
    sip_ports: SipPorts,
    /// Endpoints of calls that ended less than the grace period ago: (call, worker, until).
    recently_ended: HashMap<MediaKey, (CallRef, u32, u64)>,
    /// The active-call journal: dialog changes are sent to the owning media worker (which
    /// journals the call), and a heartbeat is written on the tick.
    store: Option<JournalWriter>,
    touched: Vec<CallRef>,
    next_untracked: u64,
    /// Recording rules, consulted once per new call; `None` records every call.
    rules: Option<std::sync::Arc<crate::rules::LiveRules>>,
    pub stats: SignallingStats,
}

impl<T: MediaTable> SignallingWorker<T> {
    pub fn new(table: T, workers: u32, tracker: TrackerConfig, node: u32) -> Self {
        let workers = workers.max(1);
        SignallingWorker {
            tracker: Tracker::new(tracker),
            frags: Reassembler::new(ReassemblyConfig::default()),
            tcp: TcpReassembler::new(TcpConfig::default()),
            table,
            workers,
            load: vec![0; workers as usize],
            routes: HashMap::new(),
            owners: HashMap::new(),
            shared: std::collections::HashSet::new(),
            events: Vec::new(),
            node,
            pending: std::collections::VecDeque::new(),
            sip_ports: SipPorts::new(LEARNED_SIP_PORT_IDLE_NS),
            recently_ended: HashMap::new(),
            store: None,
            touched: Vec::new(),
            next_untracked: UNTRACKED_CALLS,
            rules: None,
            stats: SignallingStats::default(),
        }
    }

    /// Bounds TCP and IP fragment reassembly by `tcp` and `frags` (else their defaults).
    pub fn with_reassembly(mut self, tcp: TcpConfig, frags: ReassemblyConfig) -> Self {
        self.tcp = TcpReassembler::new(tcp);
        self.frags = Reassembler::new(frags);
        self
    }

    /// Decides each new call's recording by `rules` (see [`crate::rules`]).
    pub fn set_rules(&mut self, rules: std::sync::Arc<crate::rules::LiveRules>) {
        self.rules = Some(rules);
    }

    /// Turns the active-call journal on (see [`crate::store::callstore`]).
    pub fn with_store(mut self, store: JournalWriter) -> Self {
        self.tracker.track_touched();
        self.store = Some(store);
        self
    }

    fn least_loaded(&self) -> u32 {
        // Ties go to the lowest index.
        (0..self.workers)
            .min_by_key(|w| self.load[*w as usize])
            .unwrap_or(0)
    }

    /// Sends the dialog state of the calls SIP just touched to their media workers, which
    /// journal it with the call (only with the journal on).
    fn report_dialogs(&mut self, sink: &mut dyn ControlSink) {
        if self.store.is_none() {
            return;
        }
        self.tracker.take_touched(&mut self.touched);
        if self.touched.is_empty() {
            return;
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        for call in self.touched.drain(..) {
            let Some(route) = self.routes.get(&call) else {
                continue;
            };
            if let Some(state) = self.tracker.snapshot(call) {
                sink.send(
                    route.worker,
                    Control::Dialog {
                        call,
                        state: Box::new(state),
                    },
                );
            }
        }
    }

    /// Media workers calls are shared out to.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    pub fn active_calls(&self) -> usize {
        self.routes.len()
    }

    /// Handles one record from the signalling ring.
    pub fn handle(&mut self, rec: &Record<'_>, sink: &mut dyn ControlSink) {
        self.stats.records += 1;
        let m = &rec.meta;
        let now = m.ts_ns;
        match Class::from_u8(m.class) {
            Class::Fragment => self.fragment(rec, sink),
            Class::RtpHeuristic => self.unclaimed_media(rec, sink),
            Class::Sip => {
                self.stats.sip_packets += 1;
                let Some((src, dst)) = rec.endpoints() else {
                    self.stats.malformed_sip += 1;
                    return;
                };
                if m.flags & flags::TCP != 0 {
                    self.tcp_segment(rec.transport(), m, src, dst, sink);
                } else {
                    self.datagram(rec.payload(), src, dst, now, sink);
                }
            }
            _ => {}
        }
    }

    /// The configured SIP ports (learning skips them, SDP may not claim them).
    pub fn set_sip_ports(&mut self, ports: &[u16]) {
        self.sip_ports.configure(ports);
    }

    /// How long a learned SIP port stays without SIP on it (`[capture]
    /// learned_sip_port_idle_s`).
    pub fn set_learned_port_idle(&mut self, idle_ns: u64) {
        self.sip_ports.set_idle_ns(idle_ns);
    }

    /// A configuration reload: new call limits, and SIP ports to recognise from now on (the
    /// classifier's table learns them too).
    pub fn reconfigure(&mut self, tracker: TrackerConfig, added_sip_ports: &[u16]) {
        self.tracker.set_config(tracker);
        for &port in added_sip_ports {
            if let Err(e) = self.table.learn_sip_port(port) {
                log::error!("reload: SIP port {port} not added to the classifier: {e}");
                self.stats.media_table_errors += 1;
            }
        }
        self.set_sip_ports(added_sip_ports);
        for &port in added_sip_ports {
            self.release_port(port);
        }
    }

    fn message(
        &mut self,
        msg: &Message,
        src: SocketAddr,
        dst: SocketAddr,
        now: u64,
        sink: &mut dyn ControlSink,
    ) {
        self.stats.sip_messages += 1;
        let mut events = std::mem::take(&mut self.events);
        self.tracker.on_message(msg, src, dst, now, &mut events);
        self.route(&mut events, sink);
        self.events = events;
        self.report_dialogs(sink);
    }

    /// Periodic work: dialog timeouts, expiring half-reassembled data.
    pub fn tick(&mut self, now: u64, sink: &mut dyn ControlSink) {
        let mut events = std::mem::take(&mut self.events);
        self.tracker.on_tick(now, &mut events);
        self.route(&mut events, sink);
        self.events = events;
        self.frags.expire(now);
        self.tcp.expire(now);
        let before = self.stats.bounds.invites_shed_max_calls;
        self.stats.bounds = self.bound_stats();
        let shed = self.stats.bounds.invites_shed_max_calls
            - before.min(self.stats.bounds.invites_shed_max_calls);
        if shed > 0 {
            // Calls that get no recording at all: said once per tick, not per INVITE.
            log::warn!(
                "{shed} INVITE(s) not followed since the last tick: [calls] max_calls calls are \
                 up already (calltap_sip_invites_shed_total{{reason=\"max_calls\"}})"
            );
        }
        self.expire_recently_ended(now);
        self.expire_sip_ports(now);
        if !self.pending.is_empty() {
            self.retry_pending(now, sink);
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.beat(now) {
                log::debug!("active-call journal heartbeat: {e}");
            }
        }
    }

    /// A media worker saw no RTP for too long (or none at all since a restart).
    pub fn media_timeout(&mut self, t: MediaTimeout, sink: &mut dyn ControlSink) {
        let mut events = std::mem::take(&mut self.events);
        let reason = if t.restart {
            calltap_sip::dialog::EndReason::RecorderRestart
        } else {
            calltap_sip::dialog::EndReason::MediaTimeout
        };
        self.tracker.end_call(t.call, reason, t.ts_ns, &mut events);
        self.route(&mut events, sink);
        self.events = events;
    }

    /// The bounds' counters now (see [`BoundStats`]).
    pub fn bound_stats(&self) -> BoundStats {
        BoundStats::of(&self.tracker, &self.tcp, &self.frags)
    }

    /// Ends every call still open (end of a capture file, or shutdown) with `reason`.
    pub fn finish(&mut self, now: u64, reason: &str, sink: &mut dyn ControlSink) {
        self.stats.bounds = self.bound_stats();
        self.stats.early_media_unclaimed += self.pending.len() as u64;
        self.pending.clear();
        let calls: Vec<CallRef> = self.routes.keys().copied().collect();
        for call in calls {
            self.end(call, reason.to_string(), now, sink);
        }
    }

    fn end(&mut self, call: CallRef, reason: String, ts_ns: u64, sink: &mut dyn ControlSink) {
        let end = Control::End {
            call,
            reason,
            ts_ns,
        };
        self.close(call, end, ts_ns, sink);
    }

    /// Sends `call`'s last control message (`End` or `Evict`) and releases its route.
    fn close(&mut self, call: CallRef, last: Control, ts_ns: u64, sink: &mut dyn ControlSink) {
        let Some(route) = self.routes.remove(&call) else {
            return;
        };
        self.stats.calls_ended += 1;
        if let Some(l) = self.load.get_mut(route.worker as usize) {
            *l = l.saturating_sub(1);
        }
        sink.send(route.worker, last);
        // The far side's last packets are still in flight when the BYE is captured. The
        // classifier no longer steers them (a new call may reuse the endpoint at once, and must
        // get its own packets), so they come here as unclaimed media; for a short while they
        // still find the ended call, which its worker keeps open for as long.
        let until = ts_ns.saturating_add(END_GRACE_NS);
        for key in route.keys.iter().flatten() {
            self.release(key, call);
            if self.recently_ended.len() < MAX_RECENTLY_ENDED {
                self.recently_ended
                    .insert(*key, (call, route.worker, until));
            }
        }
    }
}
