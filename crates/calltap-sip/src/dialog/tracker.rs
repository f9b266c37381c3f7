//! The dialog state machine.
//!
//! A call is identified by Call-ID plus the caller's From tag: that pair is the same in every
//! message of the INVITE dialog (and of its forks), in either direction, whereas the callee's
//! tag is only known once it answers and may differ per fork. A request whose From tag is the
//! caller's was sent by the caller; one whose To tag is the caller's was sent by the callee;
//! responses come from the other side than their request.
//!
//! In-dialog requests are acted on only when they travel the dialog's signalling path (see
//! [`super::path`]); and under an INVITE flood, unanswered calls are bounded apart from the
//! rest, so the flood can never push out or block answered calls (see
//! [`TrackerConfig::max_unanswered_calls`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::body::{info_dtmf, sdp_body};
use serde::{Deserialize, Serialize};

use super::{
    CallEvent, CallRef, EndReason, Rejection, Side, SignalPath, TrackerConfig, TrackerStats,
};
use crate::sdp::{self, Direction, RtpMap};
use crate::{Message, NameAddr, StartLine};

/// Most forks (distinct callee tags) remembered per call.
const MAX_FORKS: usize = 16;
/// Most calls sharing one Call-ID (redirect and auth retries reuse it; more is hostile).
const MAX_CALLS_PER_CALL_ID: usize = 16;

struct Call {
    id: CallRef,
    call_id: String,
    caller_tag: String,
    started_ns: u64,
    /// CSeq of the latest initial INVITE (an auth retry raises it).
    invite_cseq: u32,
    /// When the latest initial INVITE was first seen (unanswered timer start).
    invite_ns: u64,
    /// Last message of any kind for this call.
    activity_ns: u64,
    ringing: bool,
    answered: bool,
    ended: bool,
    cancel_ns: Option<u64>,
    forks: Vec<DialogFork>,
    /// A fork failed while another was still alive; reported if nobody answers.
    pending_failure: Option<u16>,
    /// What each side last announced, to emit [`CallEvent::Media`] only on change.
    media: [Option<DialogMedia>; 2],
    /// Addresses in-dialog requests may come from and go to.
    path: SignalPath,
    /// The latest BYE rejected for its path, ending the call after all if the other party
    /// answers it 2xx from the path.
    unconfirmed_bye: Option<UnconfirmedBye>,
}

/// A rejected BYE that a 2xx from the dialog's path would confirm.
#[derive(Clone, Copy)]
struct UnconfirmedBye {
    cseq: u32,
    sender: Side,
    /// Where it came from: the 2xx goes back there.
    src: IpAddr,
    ts_ns: u64,
}

/// What a restarted recorder needs to go on following a dialog it followed before: its
/// identity (Call-ID and caller tag match the later BYE, re-INVITEs and responses in both
/// directions), the initial INVITE's CSeq (tells its responses from a re-INVITE's), how far the
/// call got, and what each side last announced (so a repeated SDP is not a change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogState {
    pub call_id: String,
    pub caller_tag: String,
    pub started_ns: u64,
    pub invite_cseq: u32,
    pub invite_ns: u64,
    pub ringing: bool,
    pub answered: bool,
    #[serde(default)]
    pub cancel_ns: Option<u64>,
    #[serde(default)]
    pub forks: Vec<DialogFork>,
    #[serde(default)]
    pub pending_failure: Option<u16>,
    /// Caller's, then callee's last media announcement.
    #[serde(default)]
    pub media: [Option<DialogMedia>; 2],
    /// Where the dialog's signalling goes (empty in journals of older versions: nothing is
    /// checked then).
    #[serde(default)]
    pub path: SignalPath,
}

/// A callee tag of a dialog (see [`DialogState`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogFork {
    pub tag: String,
    pub failed: bool,
}

/// What a side of a dialog last announced in SDP (see [`DialogState`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogMedia {
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    pub codecs: Vec<RtpMap>,
    pub direction: Direction,
}

/// How a message relates to a known call.
struct Match {
    call: CallRef,
    /// The message's From tag is the caller's (requests from the caller, responses to it).
    from_caller: bool,
}

/// Follows INVITE dialogs; see the [module docs](super).
pub struct Tracker {
    cfg: TrackerConfig,
    next_id: u64,
    /// Latest timestamp seen (messages and ticks), for linger bookkeeping.
    clock: u64,
    calls: BTreeMap<CallRef, Call>,
    by_call_id: HashMap<String, Vec<CallRef>>,
    /// Ended calls in end order, with the clock at their end, for reaping.
    ended: VecDeque<(u64, CallRef)>,
    active: usize,
    /// Active calls not answered yet (bounded by `max_unanswered_calls`).
    waiting: BTreeSet<CallRef>,
    /// Those of `waiting` that may be evicted (see [`evictable`]), oldest first.
    fresh: BTreeSet<CallRef>,
    stats: TrackerStats,
    /// Calls a message changed or matched since the last [`Tracker::take_touched`], when
    /// enabled (the daemon journals their state; offline replay does not need it).
    touched: Option<Vec<CallRef>>,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Caller => 0,
        Side::Callee => 1,
    }
}

impl Tracker {
    /// Takes new limits (a configuration reload); calls in progress are judged by them from
    /// the next check on.
    pub fn set_config(&mut self, cfg: TrackerConfig) {
        self.cfg = cfg;
    }

    pub fn new(cfg: TrackerConfig) -> Tracker {
        Tracker {
            cfg,
            next_id: 1,
            clock: 0,
            calls: BTreeMap::new(),
            by_call_id: HashMap::new(),
            ended: VecDeque::new(),
            active: 0,
            waiting: BTreeSet::new(),
            fresh: BTreeSet::new(),
            stats: TrackerStats::default(),
            touched: None,
        }
    }

    /// Starts collecting the calls messages touch (see [`Tracker::take_touched`]).
    pub fn track_touched(&mut self) {
        self.touched.get_or_insert_with(Vec::new);
    }

    /// Moves the calls touched since the last call into `out` (possibly with repeats). Empty
    /// unless [`Tracker::track_touched`] was called.
    pub fn take_touched(&mut self, out: &mut Vec<CallRef>) {
        if let Some(t) = self.touched.as_mut() {
            out.append(t);
        }
    }

    fn touch(&mut self, call: CallRef) {
        if let Some(t) = self.touched.as_mut() {
            t.push(call);
        }
    }

    /// The state of an active (not ended) call, to journal it.
    pub fn snapshot(&self, call: CallRef) -> Option<DialogState> {
        let c = self.calls.get(&call).filter(|c| !c.ended)?;
        Some(DialogState {
            call_id: c.call_id.clone(),
            caller_tag: c.caller_tag.clone(),
            started_ns: c.started_ns,
            invite_cseq: c.invite_cseq,
            invite_ns: c.invite_ns,
            ringing: c.ringing,
            answered: c.answered,
            cancel_ns: c.cancel_ns,
            forks: c.forks.clone(),
            pending_failure: c.pending_failure,
            media: c.media.clone(),
            path: c.path.clone(),
        })
    }

    /// Follows again a call journaled by an earlier run (see [`DialogState`]); later messages
    /// of the dialog (BYE, re-INVITE, responses) match it as if it had never been away. Emits
    /// no events: the caller knows the call. Its timers (cancel grace, unanswered) count from
    /// `now_ns`. `None` when the tracker is full.
    pub fn restore(&mut self, state: &DialogState, now_ns: u64) -> Option<CallRef> {
        if self.active >= self.cfg.max_calls
            || self
                .by_call_id
                .get(&state.call_id)
                .is_some_and(|v| v.len() >= MAX_CALLS_PER_CALL_ID)
        {
            self.stats.calls_dropped += 1;
            return None;
        }
        self.clock = self.clock.max(now_ns);
        let id = CallRef(self.next_id);
        self.next_id += 1;
        let call = Call {
            id,
            call_id: state.call_id.clone(),
            caller_tag: state.caller_tag.clone(),
            started_ns: state.started_ns,
            invite_cseq: state.invite_cseq,
            invite_ns: state.invite_ns,
            activity_ns: now_ns,
            ringing: state.ringing,
            answered: state.answered,
            ended: false,
            cancel_ns: state.cancel_ns,
            forks: state.forks.iter().take(MAX_FORKS).cloned().collect(),
            pending_failure: state.pending_failure,
            media: state.media.clone(),
            path: state.path.clone(),
            unconfirmed_bye: None,
        };
        self.calls.insert(id, call);
        self.by_call_id
            .entry(state.call_id.clone())
            .or_default()
            .push(id);
        self.active += 1;
        self.waiting.insert(id);
        self.fresh.insert(id);
        self.review(id);
        Some(id)
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            active_calls: self.active as u64,
            lingering_calls: self.ended.len() as u64,
            unanswered_calls: self.waiting.len() as u64,
            ..self.stats
        }
    }

    /// Number of calls currently followed (not ended).
    pub fn active_calls(&self) -> usize {
        self.active
    }

    /// Feeds one observed message sent from `src` to `dst` at `ts_ns`.
    pub fn on_message(
        &mut self,
        msg: &Message,
        src: SocketAddr,
        dst: SocketAddr,
        ts_ns: u64,
        out: &mut Vec<CallEvent>,
    ) {
        self.stats.messages += 1;
        self.clock = self.clock.max(ts_ns);
        let (Some(call_id), Some((cseq, cseq_method)), Some(from)) =
            (msg.call_id(), msg.cseq(), msg.from())
        else {
            self.stats.unusable += 1;
            return;
        };
        let to = msg.to();
        let from_tag = from.tag.as_deref().unwrap_or("");
        let to_tag = to.as_ref().and_then(|t| t.tag.as_deref());
        if let StartLine::Request { method, .. } = &msg.start {
            if method.eq_ignore_ascii_case("INVITE") && to_tag.is_none() {
                self.initial_invite(msg, call_id, cseq, from, to, (src, dst), ts_ns, out);
                return;
            }
        }
        let Some(m) = self.find(call_id, from_tag, to_tag) else {
            self.stats.orphans += 1;
            return;
        };
        self.touch(m.call);
        let hop = (src, dst);
        match &msg.start {
            StartLine::Request { method, .. } => self.request(msg, method, &m, hop, ts_ns, out),
            StartLine::Response { code, .. } => {
                let cseq = (cseq, cseq_method.as_str());
                self.response(msg, *code, &m, cseq, to_tag, hop, ts_ns, out);
            }
        }
        self.review(m.call);
    }

    /// Periodic timeouts: maximum duration, unanswered calls, CANCELs and fork failures that
    /// never got their final response; and forgetting calls that ended long enough ago.
    pub fn on_tick(&mut self, now_ns: u64, out: &mut Vec<CallEvent>) {
        self.clock = self.clock.max(now_ns);
        let cfg = &self.cfg;
        let mut ends: Vec<(CallRef, EndReason, u64)> = Vec::new();
        for call in self.calls.values().filter(|c| !c.ended) {
            let since = |t: u64| now_ns.saturating_sub(t);
            if cfg.max_call_duration_ns > 0 && since(call.started_ns) >= cfg.max_call_duration_ns {
                ends.push((call.id, EndReason::MaxDuration, now_ns));
            } else if call.answered {
                continue;
            } else if let Some(c) = call
                .cancel_ns
                .filter(|_| since(call.activity_ns) >= cfg.cancel_grace_ns)
            {
                ends.push((call.id, EndReason::Cancel, c.max(call.activity_ns)));
            } else if let Some(code) = call
                .pending_failure
                .filter(|_| since(call.activity_ns) >= cfg.cancel_grace_ns)
            {
                ends.push((call.id, EndReason::Failure(code), call.activity_ns));
            } else if cfg.unanswered_timeout_ns > 0
                && since(call.invite_ns) >= cfg.unanswered_timeout_ns
            {
                ends.push((call.id, EndReason::Unanswered, now_ns));
            }
        }
        for (call, reason, ts) in ends {
            self.end(call, reason, ts, out);
        }
        while let Some(&(at, call)) = self.ended.front() {
            if now_ns.saturating_sub(at) < self.cfg.linger_ns {
                break;
            }
            self.ended.pop_front();
            self.forget(call);
        }
    }

    /// Ends `call` from outside (media timeout, shutdown). No-op for unknown or ended calls.
    pub fn end_call(
        &mut self,
        call: CallRef,
        reason: EndReason,
        ts_ns: u64,
        out: &mut Vec<CallEvent>,
    ) {
        self.clock = self.clock.max(ts_ns);
        self.end(call, reason, ts_ns, out);
    }

    /// Ends every active call with `reason` (shutdown, end of a capture).
    pub fn end_all(&mut self, reason: EndReason, ts_ns: u64, out: &mut Vec<CallEvent>) {
        let active: Vec<CallRef> = self
            .calls
            .values()
            .filter(|c| !c.ended)
            .map(|c| c.id)
            .collect();
        for call in active {
            self.end_call(call, reason, ts_ns, out);
        }
    }

    /// The call a message belongs to: the latest with this Call-ID whose caller tag is the
    /// message's From tag (caller's requests and their responses), else its To tag.
    fn find(&self, call_id: &str, from_tag: &str, to_tag: Option<&str>) -> Option<Match> {
        let refs = self.by_call_id.get(call_id)?;
        let tag_of = |r: &CallRef| self.calls.get(r).map(|c| c.caller_tag.as_str());
        if let Some(r) = refs.iter().rev().find(|r| tag_of(r) == Some(from_tag)) {
            return Some(Match {
                call: *r,
                from_caller: true,
            });
        }
        let to_tag = to_tag?;
        refs.iter()
            .rev()
            .find(|r| tag_of(r) == Some(to_tag))
            .map(|r| Match {
                call: *r,
                from_caller: false,
            })
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of the message on_message already took apart"
    )]
    fn initial_invite(
        &mut self,
        msg: &Message,
        call_id: &str,
        cseq: u32,
        from: NameAddr,
        to: Option<NameAddr>,
        (src, dst): (SocketAddr, SocketAddr),
        ts_ns: u64,
        out: &mut Vec<CallEvent>,
    ) {
        let from_tag = from.tag.as_deref().unwrap_or("");
        if let Some(m) = self.find(call_id, from_tag, None) {
            self.touch(m.call);
            if let Some(call) = self.calls.get_mut(&m.call) {
                // The same INVITE on the proxy's far side (or the caller's retry) shows the
                // next hop; only a copy sent from the path can add to it.
                if !call.ended && call.path.knows(src.ip()) {
                    call.path.learn(msg, src, dst);
                }
                if cseq <= call.invite_cseq {
                    // Retransmission, or the same INVITE seen again on the proxy's far side.
                    self.stats.retransmissions += 1;
                    return;
                }
                if !call.ended {
                    // Retry after 401/407/422: same call, new transaction.
                    call.invite_cseq = cseq;
                    call.invite_ns = ts_ns;
                    call.activity_ns = ts_ns;
                    apply_sdp(call, Side::Caller, msg, ts_ns, out, &mut self.stats);
                    return;
                }
                // A new INVITE after the attempt ended (e.g. following a redirect): a new
                // call that happens to share Call-ID and tag.
            }
        }
        if !self.admit(call_id, ts_ns, out) {
            return;
        }
        let id = CallRef(self.next_id);
        self.next_id += 1;
        let interaction = self
            .cfg
            .correlation_header
            .as_deref()
            .and_then(|h| msg.header(h))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or(call_id)
            .to_string();
        let mut call = Call {
            id,
            call_id: call_id.to_string(),
            caller_tag: from_tag.to_string(),
            started_ns: ts_ns,
            invite_cseq: cseq,
            invite_ns: ts_ns,
            activity_ns: ts_ns,
            ringing: false,
            answered: false,
            ended: false,
            cancel_ns: None,
            forks: Vec::new(),
            pending_failure: None,
            media: [None, None],
            path: SignalPath::default(),
            unconfirmed_bye: None,
        };
        call.path.learn(msg, src, dst);
        out.push(CallEvent::Started {
            call: id,
            call_id: call.call_id.clone(),
            interaction,
            from,
            to: to.unwrap_or_default(),
            caller_ip: src.ip(),
            callee_ip: dst.ip(),
            ts_ns,
        });
        apply_sdp(&mut call, Side::Caller, msg, ts_ns, out, &mut self.stats);
        self.calls.insert(id, call);
        self.by_call_id
            .entry(call_id.to_string())
            .or_default()
            .push(id);
        self.active += 1;
        self.waiting.insert(id);
        self.fresh.insert(id);
        self.stats.calls_started += 1;
        self.touch(id);
    }

    /// Whether a new call may be followed: below `max_calls`, and below
    /// `max_unanswered_calls` once the oldest evictable unanswered call is evicted if needed.
    fn admit(&mut self, call_id: &str, ts_ns: u64, out: &mut Vec<CallEvent>) -> bool {
        if self.active >= self.cfg.max_calls
            || self
                .by_call_id
                .get(call_id)
                .is_some_and(|v| v.len() >= MAX_CALLS_PER_CALL_ID)
        {
            self.stats.calls_dropped += 1;
            return false;
        }
        while self.waiting.len() >= self.cfg.max_unanswered_calls {
            let Some(victim) = self.fresh.pop_first() else {
                self.stats.calls_shed_unanswered += 1;
                return false;
            };
            self.stats.calls_evicted += 1;
            self.end(victim, EndReason::Evicted, ts_ns, out);
        }
        true
    }

    /// Keeps `waiting` and `fresh` in step with what the call's last message changed.
    fn review(&mut self, id: CallRef) {
        match self.calls.get(&id) {
            Some(c) if !c.ended && !c.answered => {
                if !evictable(c) {
                    self.fresh.remove(&id);
                }
            }
            _ => {
                self.waiting.remove(&id);
                self.fresh.remove(&id);
            }
        }
    }

    fn request(
        &mut self,
        msg: &Message,
        method: &str,
        m: &Match,
        (src, dst): (SocketAddr, SocketAddr),
        ts_ns: u64,
        out: &mut Vec<CallEvent>,
    ) {
        let Some(call) = self.calls.get_mut(&m.call) else {
            return;
        };
        if call.ended {
            // Retransmitted BYE, ACK of a failure...: absorbed.
            return;
        }
        let sender = if m.from_caller {
            Side::Caller
        } else {
            Side::Callee
        };
        let is = |name: &str| method.eq_ignore_ascii_case(name);
        // Requests that would end the call or change what is recorded must travel its path.
        let consequential = ["BYE", "CANCEL", "INVITE", "UPDATE", "INFO"]
            .iter()
            .any(|name| is(name))
            || sdp_body(msg).is_some();
        if consequential {
            if let Err(reason) = call.path.check(src, dst) {
                if is("BYE") {
                    if let Some((cseq, _)) = msg.cseq() {
                        call.unconfirmed_bye = Some(UnconfirmedBye {
                            cseq,
                            sender,
                            src: src.ip().to_canonical(),
                            ts_ns,
                        });
                    }
                }
                self.stats.requests_rejected += 1;
                let rejection = Rejection {
                    method: method.to_ascii_uppercase(),
                    src,
                    dst,
                    reason,
                    ts_ns,
                };
                out.push(CallEvent::Rejected {
                    call: call.id,
                    rejection,
                });
                return;
            }
            call.path.learn(msg, src, dst);
        }
        call.activity_ns = ts_ns;
        if is("BYE") {
            let id = call.id;
            self.end(id, EndReason::Bye(sender), ts_ns, out);
            return;
        }
        if is("CANCEL") {
            if sender == Side::Caller && !call.answered {
                call.cancel_ns.get_or_insert(ts_ns);
            }
            return;
        }
        if is("INFO") {
            if let Some((digit, duration_ms)) = info_dtmf(msg) {
                out.push(CallEvent::Dtmf {
                    call: call.id,
                    side: sender,
                    digit,
                    duration_ms,
                    ts_ns,
                });
            }
            return;
        }
        // Re-INVITE, ACK (late offer's answer), PRACK, UPDATE: the sender's SDP.
        apply_sdp(call, sender, msg, ts_ns, out, &mut self.stats);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of the message on_message already took apart"
    )]
    fn response(
        &mut self,
        msg: &Message,
        code: u16,
        m: &Match,
        (cseq, cseq_method): (u32, &str),
        to_tag: Option<&str>,
        (src, dst): (SocketAddr, SocketAddr),
        ts_ns: u64,
        out: &mut Vec<CallEvent>,
    ) {
        let Some(call) = self.calls.get_mut(&m.call) else {
            return;
        };
        if call.ended {
            return;
        }
        call.activity_ns = ts_ns;
        let responder = if m.from_caller {
            Side::Callee
        } else {
            Side::Caller
        };
        let is_invite = cseq_method.eq_ignore_ascii_case("INVITE");
        let initial = m.from_caller && is_invite && cseq == call.invite_cseq;
        // Responses travel back along the request's hops: one from the path shows the
        // responder's side; so does one sent to the path answering the initial INVITE before
        // the call is answered (a fork's first answer, its address not seen before).
        let first_answer = initial && !call.answered && call.path.knows(dst.ip());
        if call.path.knows(src.ip()) || first_answer {
            call.path.learn(msg, src, dst);
        }
        if let Some(bye) = call.unconfirmed_bye.filter(|b| {
            (200..300).contains(&code)
                && cseq_method.eq_ignore_ascii_case("BYE")
                && cseq == b.cseq
                && dst.ip().to_canonical() == b.src
                && call.path.knows(src.ip())
        }) {
            // The other party accepted the BYE: it was real, only its path was new.
            let id = call.id;
            self.stats.byes_confirmed += 1;
            self.end(id, EndReason::Bye(bye.sender), bye.ts_ns, out);
            return;
        }
        if initial {
            let tag = to_tag.unwrap_or("");
            match code {
                100 => {}
                101..=299 => {
                    if !tag.is_empty() {
                        note_fork(call, tag, false);
                    }
                    if (code == 180 || code == 183) && !call.ringing {
                        call.ringing = true;
                        out.push(CallEvent::Ringing {
                            call: call.id,
                            ts_ns,
                        });
                    }
                    if code >= 200 && !call.answered {
                        call.answered = true;
                        call.cancel_ns = None;
                        out.push(CallEvent::Answered {
                            call: call.id,
                            ts_ns,
                        });
                    }
                }
                // Challenges and "session interval too small": the caller retries the same
                // call with a new CSeq.
                401 | 407 | 422 => return,
                _ => {
                    if call.answered {
                        // Another fork losing after one answered.
                        return;
                    }
                    let id = call.id;
                    if code == 487 && call.cancel_ns.is_some() {
                        self.end(id, EndReason::Cancel, ts_ns, out);
                        return;
                    }
                    note_fork(call, tag, true);
                    let reported = match call.pending_failure {
                        Some(p) if p != 487 => p,
                        _ => code,
                    };
                    if call.forks.iter().any(|f| !f.failed) {
                        // Another fork may still answer; wait (see `on_tick`).
                        call.pending_failure = Some(reported);
                    } else {
                        self.end(id, EndReason::Failure(reported), ts_ns, out);
                    }
                    return;
                }
            }
        }
        if code < 300 {
            apply_sdp(call, responder, msg, ts_ns, out, &mut self.stats);
        }
    }

    fn end(&mut self, id: CallRef, reason: EndReason, ts_ns: u64, out: &mut Vec<CallEvent>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.ended {
            return;
        }
        call.ended = true;
        // A lingering call only absorbs retransmissions: its media and path are not needed.
        call.media = [None, None];
        call.forks = Vec::new();
        call.path = SignalPath::default();
        call.unconfirmed_bye = None;
        self.waiting.remove(&id);
        self.fresh.remove(&id);
        self.active = self.active.saturating_sub(1);
        self.stats.calls_ended += 1;
        self.ended.push_back((self.clock, id));
        out.push(CallEvent::Ended {
            call: id,
            reason,
            ts_ns,
        });
        // Lingering state is bounded too: under a flood, forget the oldest ended calls early.
        while self.ended.len() > self.cfg.max_calls.max(1) {
            if let Some((_, old)) = self.ended.pop_front() {
                self.forget(old);
            }
        }
    }

    fn forget(&mut self, id: CallRef) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        if let Some(refs) = self.by_call_id.get_mut(&call.call_id) {
            refs.retain(|r| *r != id);
            if refs.is_empty() {
                self.by_call_id.remove(&call.call_id);
            }
        }
    }
}

/// Whether an unanswered call may be evicted for a newer INVITE: nobody beyond the next hop
/// has answered it in any way. 100 Trying comes from the next proxy and authentication
/// challenges from a proxy too; ringing, a fork's tag, a failure or SDP from the callee side
/// mean the call reached someone.
fn evictable(c: &Call) -> bool {
    !c.answered && !c.ringing && c.forks.is_empty() && c.media[1].is_none()
}

/// Records a callee tag seen in a response to the initial INVITE.
fn note_fork(call: &mut Call, tag: &str, failed: bool) {
    if let Some(f) = call.forks.iter_mut().find(|f| f.tag == tag) {
        f.failed |= failed;
    } else if call.forks.len() < MAX_FORKS {
        call.forks.push(DialogFork {
            tag: tag.to_string(),
            failed,
        });
    }
}

/// Emits [`CallEvent::Media`] for `side` if the message carries SDP that changes what the side
/// announced before.
fn apply_sdp(
    call: &mut Call,
    side: Side,
    msg: &Message,
    ts_ns: u64,
    out: &mut Vec<CallEvent>,
    stats: &mut TrackerStats,
) {
    let Some(body) = sdp_body(msg) else {
        return;
    };
    let sd = match sdp::parse(body) {
        Ok(sd) => sd,
        Err(_) => {
            stats.bad_sdp += 1;
            return;
        }
    };
    let Some(audio) = sd.audio() else {
        return;
    };
    let state = DialogMedia {
        rtp: audio.rtp,
        rtcp: audio.rtcp,
        codecs: audio.codecs.clone(),
        direction: audio.direction,
    };
    let Some(slot) = call.media.get_mut(side_index(side)) else {
        return;
    };
    if slot.as_ref() == Some(&state) {
        return;
    }
    out.push(CallEvent::Media {
        call: call.id,
        side,
        rtp: state.rtp,
        rtcp: state.rtcp,
        codecs: state.codecs.clone(),
        direction: state.direction,
        ts_ns,
    });
    *slot = Some(state);
}
