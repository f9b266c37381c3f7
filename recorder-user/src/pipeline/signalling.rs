//! The signalling worker: reassembles fragments and TCP streams, parses SIP, follows dialogs,
//! assigns each call to a media worker and publishes the call's media endpoints to the
//! classifier's table, so RTP reaches the owner directly from then on.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use calltap_common::{flags, Class, MediaKey, MediaValue, PacketMeta};
use calltap_net::{
    ipfrag::{fragment_of, udp_ports, Reassembler, ReassemblyConfig},
    tcp::{parse_tcp, resync_sip, FlowKey, TcpConfig, TcpReassembler},
};
use calltap_sip::{
    dialog::{CallEvent, CallRef, EndReason, Side, Tracker, TrackerConfig},
    parse, parse_datagram, Message, ParseError,
};
use serde::Serialize;

use super::{
    bounds::BoundStats, call_uuid, media::END_GRACE_NS, media_key, sip_ports::SipPorts, CallSetup,
    Control, ControlSink, MediaTable, MediaTimeout, OwnedRecord, Restored,
};
use crate::{
    capture::Record,
    store::{
        callstore::{CallJournal, JournalWriter, Loaded},
        cdr::RestartGap,
    },
};

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
    rules: Option<std::sync::Arc<super::rules::LiveRules>>,
    pub stats: SignallingStats,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Caller => 0,
        Side::Callee => 1,
    }
}

/// Announces a restored call the way a new one is announced (`Start`, then `Answered` if it
/// was), so whatever watches the control stream (the live-call registry) knows it too; the
/// `Restore` that follows gives the worker the rest.
fn announce(j: &CallJournal, call: CallRef, worker: u32, sink: &mut dyn ControlSink) {
    sink.send(
        worker,
        Control::Start(Box::new(CallSetup::journaled(j, call))),
    );
    if let Some(ts_ns) = j.answer_ns {
        sink.send(worker, Control::Answered { call, ts_ns });
    }
}

/// Source and destination addresses of the (innermost) IP header at `l3_off`.
fn ip_addrs(frame: &[u8], l3_off: usize, v6: bool) -> Option<(IpAddr, IpAddr)> {
    if v6 {
        let h = frame.get(l3_off..l3_off + 40)?;
        let src: [u8; 16] = h[8..24].try_into().ok()?;
        let dst: [u8; 16] = h[24..40].try_into().ok()?;
        Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
    } else {
        let h = frame.get(l3_off..l3_off + 20)?;
        let src: [u8; 4] = h[12..16].try_into().ok()?;
        let dst: [u8; 4] = h[16..20].try_into().ok()?;
        Some((Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into()))
    }
}

fn ports(frame: &[u8], l4_off: usize) -> Option<(u16, u16)> {
    let h = frame.get(l4_off..l4_off + 4)?;
    Some((
        u16::from_be_bytes([h[0], h[1]]),
        u16::from_be_bytes([h[2], h[3]]),
    ))
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

    /// Decides each new call's recording by `rules` (see [`super::rules`]).
    pub fn set_rules(&mut self, rules: std::sync::Arc<super::rules::LiveRules>) {
        self.rules = Some(rules);
    }

    /// Turns the active-call journal on (see [`crate::store::callstore`]).
    pub fn with_store(mut self, store: JournalWriter) -> Self {
        self.tracker.track_touched();
        self.store = Some(store);
        self
    }

    /// Takes over the calls an earlier run journaled; call before capture starts. Calls still
    /// going get their dialog back (so the BYE ends them normally), their media map entries
    /// and their media worker (the same one, or the least loaded if there are fewer workers
    /// now); the time since `last_alive_ns` (the earlier run's heartbeat, else each journal's
    /// write time) up to `now` is each call's restart gap. Calls that had already ended only
    /// get their CDR written.
    pub fn restore(&mut self, loaded: Loaded, now: u64, sink: &mut dyn ControlSink) {
        let Loaded {
            calls,
            corrupt,
            last_alive_ns,
        } = loaded;
        self.stats.journal_corrupt += corrupt;
        for mut j in calls {
            let worker = if j.worker < self.workers {
                j.worker
            } else {
                self.least_loaded()
            };
            if worker != j.worker {
                log::info!(
                    "call {} moves from media worker {} (no longer there) to {worker}",
                    j.call_id,
                    j.worker
                );
                j.worker = worker;
            }
            let tracked = match (&j.ending, &j.dialog) {
                (None, Some(d)) => self.tracker.restore(d, now),
                _ => None,
            };
            let call = match tracked {
                Some(call) => call,
                None => {
                    if j.ending.is_none() {
                        // No dialog to follow (or no room): it cannot be ended by SIP, so it
                        // ends now, keeping what was recorded.
                        let at = last_alive_ns.unwrap_or(j.saved_ns).max(j.saved_ns);
                        j.ending = Some(("recorder_restart".into(), at.min(now)));
                    }
                    self.stats.calls_restored_ended += 1;
                    let call = CallRef(self.next_untracked);
                    self.next_untracked += 1;
                    announce(&j, call, worker, sink);
                    sink.send(
                        worker,
                        Control::Restore(Box::new(Restored {
                            call,
                            journal: j,
                            gap: None,
                            now_ns: now,
                        })),
                    );
                    continue;
                }
            };
            self.stats.calls_restored += 1;
            self.load[worker as usize] += 1;
            // Journaled by a run that may have had other SIP ports: the same rule as for SDP.
            let ports = &self.sip_ports;
            let keys = [0, 1].map(|i| {
                let s = &j.sides[i];
                s.rtp
                    .iter()
                    .chain(s.rtcp.iter())
                    .map(|a| media_key(*a))
                    .filter(|k| !ports.refuses_media(k.port))
                    .collect::<Vec<_>>()
            });
            let call_id = j.call_id.clone();
            let from = last_alive_ns.unwrap_or(j.saved_ns).max(j.saved_ns).min(now);
            let gap = RestartGap::new(from, now);
            log::info!(
                "resuming call {} ({}) on media worker {worker} after {} ms down",
                j.call_id,
                j.uuid,
                gap.ms
            );
            // The worker knows the endpoints before the classifier steers them to it.
            announce(&j, call, worker, sink);
            sink.send(
                worker,
                Control::Restore(Box::new(Restored {
                    call,
                    journal: j,
                    gap: Some(gap),
                    now_ns: now,
                })),
            );
            for key in keys.iter().flatten() {
                self.claim(*key, call, worker);
            }
            self.routes.insert(
                call,
                Route {
                    worker,
                    keys,
                    call_id,
                    refused_logged: false,
                },
            );
        }
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
                let v6 = m.flags & flags::IPV6 != 0;
                let Some((src_ip, dst_ip)) = ip_addrs(rec.frame, m.l3_off as usize, v6) else {
                    self.stats.malformed_sip += 1;
                    return;
                };
                let Some((sport, dport)) = ports(rec.frame, m.l4_off as usize) else {
                    self.stats.malformed_sip += 1;
                    return;
                };
                let src = SocketAddr::new(src_ip, sport);
                let dst = SocketAddr::new(dst_ip, dport);
                if m.flags & flags::TCP != 0 {
                    self.tcp_segment(rec.transport(), m, src, dst, sink);
                } else {
                    self.datagram(rec.payload(), src, dst, now, sink);
                }
            }
            _ => {}
        }
    }

    /// Media no table entry claimed when it was captured. If a call has claimed its endpoints
    /// since (SIP is handled in capture order, so it has if the SDP came first), the packet goes
    /// to that call's worker; otherwise it waits briefly for SIP that may still come.
    fn unclaimed_media(&mut self, rec: &Record<'_>, sink: &mut dyn ControlSink) {
        let owned = OwnedRecord {
            meta: rec.meta,
            frame: rec.frame.to_vec(),
        };
        if let Some(owned) = self.forward(owned, sink) {
            if self.pending.len() >= EARLY_MAX {
                self.pending.pop_front();
                self.stats.early_media_unclaimed += 1;
            }
            self.pending.push_back(owned);
        }
    }

    /// Hands an unclaimed packet to its owner; gives it back if no call owns its endpoints.
    fn forward(
        &mut self,
        mut owned: OwnedRecord,
        sink: &mut dyn ControlSink,
    ) -> Option<OwnedRecord> {
        let rec = owned.record();
        let m = &rec.meta;
        let v6 = m.flags & flags::IPV6 != 0;
        let (Some((src_ip, dst_ip)), Some((sport, dport))) = (
            ip_addrs(rec.frame, m.l3_off as usize, v6),
            ports(rec.frame, m.l4_off as usize),
        ) else {
            self.stats.early_media_unclaimed += 1;
            return None;
        };
        let rtcp = rec
            .payload()
            .get(1)
            .is_some_and(|b| (192..=223).contains(b));
        let (dst_key, src_key) = (
            media_key(SocketAddr::new(dst_ip, dport)),
            media_key(SocketAddr::new(src_ip, sport)),
        );
        let owner = match self.owners.get(&dst_key) {
            Some(c) => Some((*c, true)),
            None => self.owners.get(&src_key).map(|c| (*c, false)),
        };
        let worker = match owner {
            Some((call, _)) => match self.routes.get(&call) {
                Some(route) => route.worker,
                None => return Some(owned),
            },
            // The tail of a call that just ended.
            None => {
                let ts = m.ts_ns;
                let ended = |k: &MediaKey| {
                    self.recently_ended
                        .get(k)
                        .filter(|(_, _, until)| ts <= *until)
                        .map(|(_, w, _)| *w)
                };
                match ended(&dst_key).or_else(|| ended(&src_key)) {
                    Some(w) => w,
                    None => return Some(owned),
                }
            }
        };
        let matched_dst = owner.is_some_and(|(_, d)| d);
        owned.meta.class = if rtcp { Class::Rtcp } else { Class::Rtp } as u8;
        owned.meta.target = worker;
        if matched_dst {
            owned.meta.flags |= flags::MATCH_DST;
        }
        self.stats.early_media_forwarded += 1;
        sink.send(worker, Control::Packet(Box::new(owned)));
        None
    }

    /// Retries waiting media after new endpoints were claimed, and gives up on old entries.
    fn retry_pending(&mut self, now: u64, sink: &mut dyn ControlSink) {
        for _ in 0..self.pending.len() {
            let Some(owned) = self.pending.pop_front() else {
                break;
            };
            if let Some(back) = self.forward(owned, sink) {
                if now.saturating_sub(back.meta.ts_ns) > EARLY_GRACE_NS {
                    self.stats.early_media_unclaimed += 1;
                } else {
                    self.pending.push_back(back);
                }
            }
        }
    }

    fn fragment(&mut self, rec: &Record<'_>, sink: &mut dyn ControlSink) {
        self.stats.fragments += 1;
        let now = rec.meta.ts_ns;
        let Some(ip) = rec.frame.get(rec.meta.l3_off as usize..) else {
            return;
        };
        let Ok(Some(frag)) = fragment_of(ip) else {
            return;
        };
        let Ok(Some(whole)) = self.frags.push(frag, now) else {
            return;
        };
        self.stats.reassembled += 1;
        if whole.key.protocol != 17 {
            // SIP over TCP is segmented by TCP, not fragmented by IP; nothing to do.
            return;
        }
        let Some((sport, dport, payload)) = udp_ports(&whole.data) else {
            return;
        };
        let src = SocketAddr::new(whole.key.src, sport);
        let dst = SocketAddr::new(whole.key.dst, dport);
        // Reassembled datagrams may be RTP of a known call too, but RTP is never fragmented in
        // practice; only SIP is looked for here.
        let payload = payload.to_vec();
        self.datagram(&payload, src, dst, now, sink);
    }

    fn datagram(
        &mut self,
        payload: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        now: u64,
        sink: &mut dyn ControlSink,
    ) {
        match parse_datagram(payload) {
            Ok(msg) => self.message(&msg, src, dst, now, sink),
            Err(_) => self.stats.malformed_sip += 1,
        }
    }

    fn tcp_segment(
        &mut self,
        tcp: &[u8],
        m: &PacketMeta,
        src: SocketAddr,
        dst: SocketAddr,
        sink: &mut dyn ControlSink,
    ) {
        self.stats.tcp_segments += 1;
        let Ok((_, _, seg)) = parse_tcp(tcp) else {
            self.stats.malformed_sip += 1;
            return;
        };
        // Only content sniffing brings TCP on other ports here, so such a segment starts a SIP
        // message. The server side of the connection (where requests go, where responses come
        // from) is learned now, since the message's next segment will not start with SIP; a
        // well-known port only once it has answered in SIP (see `sip_ports`).
        let response = seg.payload.starts_with(b"SIP/2.0");
        if let Some(port) = self
            .sip_ports
            .sniffed(src.port(), dst.port(), response, m.ts_ns)
        {
            self.capture_as_sip(port);
        }
        let flow = FlowKey { src, dst };
        let data = self.tcp.push(flow, seg, m.ts_ns);
        // Frame as many messages as the stream holds; keep the rest for the next segment.
        let mut used = 0usize;
        let mut messages = Vec::new();
        let mut malformed = 0u64;
        while used < data.len() {
            match parse(&data[used..]) {
                Ok((msg, n)) => {
                    messages.push(msg);
                    used += n.max(1);
                }
                Err(ParseError::Incomplete) => break,
                Err(_) => {
                    malformed += 1;
                    // Skip to the next thing that looks like a SIP start line.
                    match resync_sip(&data[used + 1..]) {
                        Some(skip) => used += 1 + skip,
                        None => used = data.len(),
                    }
                }
            }
        }
        self.stats.malformed_sip += malformed;
        self.tcp.consume(&flow, used);
        for msg in messages {
            let request = msg.is_request();
            if let Some(port) = self.sip_ports.message(src, dst, request, m.ts_ns) {
                self.capture_as_sip(port);
            }
            self.message(&msg, src, dst, m.ts_ns, sink);
        }
    }

    /// SIP found on a TCP port that is not configured: have the classifier send every segment
    /// of that port here, or the segments that do not begin a message would never arrive and no
    /// stream could be reassembled.
    fn capture_as_sip(&mut self, port: u16) {
        match self.table.learn_sip_port(port) {
            Ok(()) => {
                self.stats.learned_sip_ports += 1;
                log::info!("SIP found on TCP port {port}: capturing that port as SIP from now on");
                self.release_port(port);
            }
            Err(e) => {
                self.stats.media_table_errors += 1;
                log::warn!("cannot add SIP port {port} to the classifier: {e}");
            }
        }
    }

    /// A port became a SIP port: SDP endpoints on it lose their claim (the classifier decides
    /// SIP first anyway; the claim must not outlive the port's change of role either).
    fn release_port(&mut self, port: u16) {
        let claimed: Vec<(MediaKey, CallRef)> = self
            .owners
            .iter()
            .filter(|(k, _)| k.port == port)
            .map(|(k, c)| (*k, *c))
            .collect();
        for (key, call) in claimed {
            self.release(&key, call);
            self.refused(call, format_args!("released (port {port} now carries SIP)"));
        }
    }

    /// Counts an SDP endpoint of `call` kept out of the media map, and says so once per call.
    fn refused(&mut self, call: CallRef, what: std::fmt::Arguments<'_>) {
        self.stats.sdp_endpoints_refused += 1;
        if let Some(route) = self.routes.get_mut(&call) {
            if !route.refused_logged {
                route.refused_logged = true;
                log::warn!(
                    "call {}: SDP media endpoint {what}: no traffic is steered to the call by it",
                    route.call_id
                );
            }
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

    /// Takes the learned SIP ports nothing has used for their idle time out of the classifier.
    fn expire_sip_ports(&mut self, now: u64) {
        let mut gone = Vec::new();
        self.sip_ports.expire(now, &mut gone);
        for port in gone {
            self.stats.expired_sip_ports += 1;
            match self.table.forget_sip_port(port) {
                Ok(()) => log::info!("TCP port {port}: no SIP on it lately; no longer SIP"),
                Err(e) => {
                    self.stats.media_table_errors += 1;
                    log::warn!("cannot take SIP port {port} out of the classifier: {e}");
                }
            }
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

    /// Forgets ended calls' endpoints once their grace period is over.
    fn expire_recently_ended(&mut self, now: u64) {
        if !self.recently_ended.is_empty() {
            self.recently_ended.retain(|_, (_, _, until)| *until >= now);
        }
    }

    /// The SDP endpoints of `call` that may be claimed: none when either is on a SIP port or
    /// below 1024 (an SDP naming a proxy's signalling port, or a system service, is hostile or
    /// broken; its media is not worth steering any traffic for).
    fn admit_media(
        &mut self,
        call: CallRef,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let Some(refused) = rtp
            .iter()
            .chain(rtcp.iter())
            .find(|a| self.sip_ports.refuses_media(a.port()))
        else {
            return (rtp, rtcp);
        };
        let why = if self.sip_ports.is_sip(refused.port()) {
            "a SIP port"
        } else {
            "a port below 1024"
        };
        self.refused(call, format_args!("{refused} refused ({why})"));
        (None, None)
    }

    /// Steers `key` to `worker` for `call`. Another live call on the same endpoint marks it
    /// shared, so packets sent to it are told apart by their source.
    fn claim(&mut self, key: MediaKey, call: CallRef, worker: u32) {
        let shared = match self.owners.insert(key, call) {
            Some(prev) if prev != call => self.routes.contains_key(&prev),
            // The owner claims again (re-INVITE): shared as before.
            Some(_) => self.shared.contains(&key),
            None => false,
        };
        if shared {
            self.shared.insert(key);
        } else {
            self.shared.remove(&key);
        }
        let flags = if shared {
            calltap_common::media_flags::SHARED
        } else {
            0
        };
        if self
            .table
            .insert(key, MediaValue { worker, flags })
            .is_err()
        {
            self.stats.media_table_errors += 1;
        }
    }

    fn release(&mut self, key: &MediaKey, call: CallRef) {
        if self.owners.get(key) == Some(&call) {
            self.owners.remove(key);
            self.shared.remove(key);
            self.table.remove(key);
        }
    }

    fn route(&mut self, events: &mut Vec<CallEvent>, sink: &mut dyn ControlSink) {
        let mut claimed_at = None;
        for ev in events.drain(..) {
            if let CallEvent::Media { ts_ns, .. } = &ev {
                claimed_at = Some(*ts_ns);
            }
            match ev {
                CallEvent::Started {
                    call,
                    call_id,
                    interaction,
                    from,
                    to,
                    caller_ip,
                    callee_ip,
                    ts_ns,
                } => {
                    let worker = self.least_loaded();
                    self.load[worker as usize] += 1;
                    self.stats.calls_started += 1;
                    self.routes.insert(
                        call,
                        Route {
                            worker,
                            keys: [Vec::new(), Vec::new()],
                            call_id: call_id.clone(),
                            refused_logged: false,
                        },
                    );
                    let uuid = call_uuid(ts_ns, call, self.node);
                    let recording = self.rules.as_ref().map_or_else(Default::default, |r| {
                        r.decide(&super::rules::CallFacts {
                            from: &from,
                            to: &to,
                            caller_ip,
                            callee_ip,
                        })
                    });
                    sink.send(
                        worker,
                        Control::Start(Box::new(CallSetup {
                            call,
                            uuid,
                            call_id,
                            interaction,
                            from,
                            to,
                            caller_ip,
                            callee_ip,
                            start_ns: ts_ns,
                            recording,
                        })),
                    );
                }
                CallEvent::Media {
                    call,
                    side,
                    rtp,
                    rtcp,
                    codecs,
                    direction,
                    ts_ns,
                } => {
                    let (rtp, rtcp) = self.admit_media(call, rtp, rtcp);
                    let Some(route) = self.routes.get_mut(&call) else {
                        continue;
                    };
                    let worker = route.worker;
                    let new_keys: Vec<MediaKey> = rtp
                        .iter()
                        .chain(rtcp.iter())
                        .map(|a| media_key(*a))
                        .collect();
                    let old =
                        std::mem::replace(&mut route.keys[side_index(side)], new_keys.clone());
                    // The worker learns the endpoints before the kernel starts steering them to
                    // it, so no packet arrives for an endpoint it does not know.
                    sink.send(
                        worker,
                        Control::Media {
                            call,
                            side,
                            rtp,
                            rtcp,
                            codecs,
                            direction,
                            ts_ns,
                        },
                    );
                    for key in old.iter().filter(|k| !new_keys.contains(k)) {
                        self.release(key, call);
                    }
                    for key in new_keys {
                        self.claim(key, call, worker);
                    }
                }
                CallEvent::Ringing { call, ts_ns } => {
                    if let Some(r) = self.routes.get(&call) {
                        sink.send(r.worker, Control::Ringing { call, ts_ns });
                    }
                }
                CallEvent::Answered { call, ts_ns } => {
                    if let Some(r) = self.routes.get(&call) {
                        sink.send(r.worker, Control::Answered { call, ts_ns });
                    }
                }
                CallEvent::Dtmf {
                    call,
                    side,
                    digit,
                    duration_ms,
                    ts_ns,
                } => {
                    if let Some(r) = self.routes.get(&call) {
                        sink.send(
                            r.worker,
                            Control::Dtmf {
                                call,
                                side,
                                digit,
                                duration_ms,
                                ts_ns,
                            },
                        );
                    }
                }
                CallEvent::Rejected { call, rejection } => {
                    if let Some(r) = self.routes.get(&call) {
                        sink.send(r.worker, Control::Rejected { call, rejection });
                    }
                }
                CallEvent::Ended {
                    call,
                    reason: EndReason::Evicted,
                    ts_ns,
                } => self.close(call, Control::Evict { call, ts_ns }, ts_ns, sink),
                CallEvent::Ended {
                    call,
                    reason,
                    ts_ns,
                } => self.end(call, reason.as_str(), ts_ns, sink),
            }
        }
        if let Some(ts) = claimed_at {
            if !self.pending.is_empty() {
                self.retry_pending(ts, sink);
            }
        }
    }
}
