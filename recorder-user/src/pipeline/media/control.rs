//! Control messages from signalling and the control plane: calls starting, changing and
//! ending, and the spool thread's answers.

use std::collections::BTreeSet;

use calltap_sip::dialog::{CallEvent, CallRef};

use super::{
    call::{push_bounded, push_dtmf, side_name, ActiveCall, DirState, SideMedia},
    journal::JournalState,
    outputs::{self, CallOutputs, WavOutput},
    ssrc::SsrcDirs,
    worker::MediaWorker,
    MediaConfig, END_GRACE_NS, MAX_REJECTED_PER_CALL,
};
use crate::{
    pipeline::{media_key, recording::RecordingAction, Control},
    rules::RuleAction,
    store::{
        cdr::{rfc3339, Cdr, Dtmf, RejectedRequest},
        paths::{expand, PathFields},
        spool::Reply,
    },
};

impl MediaWorker {
    /// Applies the spool thread's answers: the names recordings got, and the ones that could
    /// not be made or written.
    pub(super) fn spool_replies(&mut self) {
        let replies: Vec<Reply> = self.spool.replies().collect();
        for r in replies {
            let (id, call) = match &r {
                Reply::Opened { id, .. } | Reply::Failed { id, .. } => (*id, id.call()),
            };
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            match r {
                Reply::Opened { path, .. } if id.is_raw() => c.raw_path = path,
                Reply::Opened { path, .. } => {
                    c.wav_path = path;
                    c.wav_confirmed = true;
                    c.journal.dirty = true;
                }
                Reply::Failed { reason, error, .. } => {
                    if c.failure.is_none() {
                        self.stats.recordings_failed += 1;
                    }
                    c.failure.get_or_insert(error);
                    c.journal.dirty = true;
                    let wav_reason = Some(reason).filter(|_| !id.is_raw());
                    c.outputs.wav.fail(&mut self.spool, wav_reason);
                }
            }
        }
    }
}

impl MediaWorker {
    /// Applies a control message; a finished call's CDR is pushed to `done`.
    pub fn control(&mut self, msg: Control, done: &mut Vec<Cdr>) {
        match msg {
            Control::Packet(owned) => {
                if !self.packet(&owned.record()) {
                    self.unknown();
                }
            }
            Control::Settings(new) => {
                // Where recordings live and the restore grace belong to the process run.
                let MediaConfig {
                    path_template,
                    flush_interval_ns,
                    media_timeout_ns,
                    max_call_secs,
                    ..
                } = *new;
                self.cfg.path_template = path_template;
                self.cfg.flush_interval_ns = flush_interval_ns;
                self.cfg.media_timeout_ns = media_timeout_ns;
                self.cfg.max_call_secs = max_call_secs;
            }
            Control::Start(setup) => {
                self.stats.calls_started += 1;
                let start_secs = setup.start_ns / 1_000_000_000;
                let wav_path = expand(
                    &self.cfg.recordings_dir,
                    &self.cfg.path_template,
                    &PathFields {
                        start_secs,
                        call_id: &setup.call_id,
                        from_user: setup.from.user.as_deref().unwrap_or(""),
                        to_user: setup.to.user.as_deref().unwrap_or(""),
                        uuid: &setup.uuid,
                    },
                );
                let raw_path = wav_path.with_extension("rtp.pcap");
                let start = setup.start_ns;
                let mode = setup.recording.action;
                self.calls.insert(
                    setup.call,
                    Box::new(ActiveCall {
                        setup: *setup,
                        ringing_ns: None,
                        answer_ns: None,
                        sides: [SideMedia::default(), SideMedia::default()],
                        dirs: [DirState::default(), DirState::default()],
                        outputs: CallOutputs::new(WavOutput::new(mode)),
                        wav_path,
                        wav_confirmed: false,
                        raw: None,
                        raw_path,
                        failure: None,
                        unsupported: BTreeSet::new(),
                        dtmf: Vec::new(),
                        dtmf_omitted: 0,
                        rejected: Vec::new(),
                        rejected_omitted: 0,
                        last_media_ns: start,
                        timed_out: false,
                        awaiting_since: None,
                        ssrc_dirs: SsrcDirs::default(),
                        contender: None,
                        journal: JournalState {
                            dirty: true,
                            ..JournalState::default()
                        },
                        ending: None,
                        recording_events: Vec::new(),
                    }),
                );
            }
            Control::Event(ev) => self.event(*ev),
            Control::Dialog { call, state } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.journal.dialog = Some(state);
                    c.journal.dirty = true;
                }
            }
            Control::Restore(r) => self.restore(*r, done),
            Control::Evict { call, ts_ns } => self.evict(call, ts_ns, done),
            Control::Attach { call, output } => match self.calls.get_mut(&call) {
                Some(c) => match c.outputs.attach(output) {
                    Ok(()) => self.stats.outputs_attached += 1,
                    // Dropped: its receiving end sees it closed.
                    Err(output) => log::warn!(
                        "call {}: {output:?} not attached: the call has {} outputs already",
                        c.setup.call_id,
                        outputs::MAX_ATTACHED
                    ),
                },
                // Ended meanwhile: the output is dropped, and its receiving end sees it.
                None => log::debug!("{output:?} not attached: the call is gone"),
            },
            Control::Detach { call, id, ts_ns } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let at = ts_ns.saturating_sub(c.setup.start_ns);
                    self.stats.attached_samples_dropped +=
                        c.outputs.detach(&mut self.spool, id, at, &c.setup.call_id);
                }
            }
            Control::Recording {
                call,
                action,
                ts_ns,
            } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let at = ts_ns.saturating_sub(c.setup.start_ns);
                    if c.outputs.recording(&mut self.spool, action, at) {
                        if action == RecordingAction::Start
                            && c.setup.recording.action == RuleAction::OnDemand
                        {
                            c.outputs.wav.allow_file();
                        }
                        c.recording_events.push(crate::store::cdr::RecordingEvent {
                            action: action.as_str().into(),
                            ts: rfc3339(ts_ns),
                            at_ms: at / 1_000_000,
                        });
                        c.journal.dirty = true;
                    }
                }
            }
            Control::End {
                call,
                reason,
                ts_ns,
            } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    if c.ending.is_none() {
                        c.ending = Some((reason, ts_ns));
                        c.journal.dirty = true;
                        self.ending_queue.push_back((ts_ns, call));
                        // Only this call's own endpoints move; no scan of every call's.
                        for k in c.endpoint_keys() {
                            if let Some(e) = self.endpoints.remove(&k) {
                                if e.0 == call {
                                    self.ending_endpoints.insert(k, e);
                                } else {
                                    self.endpoints.insert(k, e);
                                }
                            }
                        }
                    }
                }
                self.reap(ts_ns, done);
            }
        }
    }

    /// What SIP said about a call ([`Control::Event`]).
    fn event(&mut self, ev: CallEvent) {
        match ev {
            CallEvent::Media {
                call,
                side,
                rtp,
                rtcp,
                codecs,
                direction,
                ts_ns,
            } => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                let s = &mut c.sides[side.index()];
                for old in s.rtp.iter().chain(s.rtcp.iter()) {
                    let k = media_key(*old);
                    if self.endpoints.get(&k).map(|e| e.0) == Some(call) {
                        self.endpoints.remove(&k);
                    }
                }
                for new in rtp.iter().chain(rtcp.iter()) {
                    let k = media_key(*new);
                    // Entries of `endpoints` all belong to live calls (ending ones moved out).
                    if let Some((prev, _)) = self.endpoints.insert(k, (call, side)) {
                        if prev != call {
                            self.shared.insert(k);
                        }
                    }
                }
                s.rtp = rtp;
                s.rtcp = rtcp;
                if !codecs.is_empty() {
                    s.codecs = codecs;
                }
                s.direction = Some(direction);
                // The SDP may map payload types differently now.
                for d in c.dirs.iter_mut() {
                    d.pt_cache = None;
                }
                // Leaving hold restarts the inactivity clock.
                c.last_media_ns = c.last_media_ns.max(ts_ns);
                c.journal.dirty = true;
            }
            CallEvent::Ringing { call, ts_ns } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.ringing_ns.get_or_insert(ts_ns);
                    c.journal.dirty = true;
                }
            }
            CallEvent::Answered { call, ts_ns } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.answer_ns.get_or_insert(ts_ns);
                    c.last_media_ns = c.last_media_ns.max(ts_ns);
                    c.journal.dirty = true;
                }
            }
            CallEvent::Dtmf {
                call,
                side,
                digit,
                duration_ms,
                ts_ns,
            } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let d = Dtmf {
                        side: side_name(side.index()).into(),
                        digit,
                        at_ms: ts_ns.saturating_sub(c.setup.start_ns) / 1_000_000,
                        duration_ms,
                        source: "sip_info".into(),
                    };
                    push_dtmf(c, d, &mut self.stats);
                    c.journal.dirty = true;
                }
            }
            CallEvent::Rejected { call, rejection } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let r = RejectedRequest {
                        src: rejection.src.to_string(),
                        dst: rejection.dst.to_string(),
                        at_ms: rejection.ts_ns.saturating_sub(c.setup.start_ns) / 1_000_000,
                        reason: rejection.reason.as_str().into(),
                        method: rejection.method,
                    };
                    let (max, total) = (
                        MAX_REJECTED_PER_CALL,
                        &mut self.stats.rejected_requests_omitted,
                    );
                    push_bounded(&mut c.rejected, r, max, &mut c.rejected_omitted, total);
                    c.journal.dirty = true;
                }
            }
            // Announced as `Start` and `End` instead.
            CallEvent::Started { .. } | CallEvent::Ended { .. } => {}
        }
    }

    /// Finishes calls whose end is older than [`END_GRACE_NS`] at `now` (`u64::MAX`: all that
    /// have ended). Ends arrive in time order, so the due ones are at the front of the queue.
    pub fn reap(&mut self, now: u64, done: &mut Vec<Cdr>) {
        if self
            .ending_queue
            .front()
            .is_some_and(|&(at, _)| now >= at.saturating_add(END_GRACE_NS))
        {
            // What the spool found about the files of the calls finishing now.
            self.spool_replies();
        }
        while let Some(&(at, call)) = self.ending_queue.front() {
            if now < at.saturating_add(END_GRACE_NS) {
                break;
            }
            self.ending_queue.pop_front();
            let Some(mut c) = self.calls.remove(&call) else {
                continue;
            };
            self.forget_endpoints(call, &c);
            self.stats.calls_ended += 1;
            let (reason, at) = c.ending.take().unwrap_or_default();
            let cdr = self.finish(c, reason, at);
            done.push(cdr);
        }
    }

    /// Removes a call's endpoints from the lookup tables (the call is already out of `calls`).
    pub(super) fn forget_endpoints(&mut self, call: CallRef, c: &ActiveCall) {
        for k in c.endpoint_keys() {
            for map in [&mut self.endpoints, &mut self.ending_endpoints] {
                if map.get(&k).is_some_and(|e| e.0 == call) {
                    map.remove(&k);
                }
            }
            if !self.endpoints.contains_key(&k) {
                self.shared.remove(&k);
            }
        }
    }

    /// Signalling evicted an unanswered call ([`Control::Evict`]). One with nothing to show
    /// (no packet, file, answer, digit, operator action or rejected request) goes without a
    /// CDR, as an INVITE shed at the door would; any other ends with reason `evicted`.
    pub(super) fn evict(&mut self, call: CallRef, ts_ns: u64, done: &mut Vec<Cdr>) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let empty = c.ending.is_none()
            && c.answer_ns.is_none()
            && c.outputs.wav.window().is_none()
            && c.raw.is_none()
            && c.dirs.iter().all(|d| d.packets == 0 && d.rtcp_packets == 0)
            && c.dtmf.is_empty()
            && c.recording_events.is_empty()
            && c.rejected.is_empty();
        if !empty {
            let reason = calltap_sip::dialog::EndReason::Evicted.as_str();
            self.control(
                Control::End {
                    call,
                    reason,
                    ts_ns,
                },
                done,
            );
            return;
        }
        let Some(mut c) = self.calls.remove(&call) else {
            return;
        };
        self.forget_endpoints(call, &c);
        self.stats.calls_evicted += 1;
        self.close_attached(&mut c, ts_ns);
        // A file made ahead goes with `c` (dropping it removes the file); a journal written
        // for the call goes too, or a restart would bring the call back.
        if let Some(store) = self.store.as_ref().filter(|_| c.journal.saved_ns != 0) {
            if let Err(e) = store.remove(&c.setup.uuid) {
                log::warn!("active-call journal: {e}");
            }
        }
    }
}
