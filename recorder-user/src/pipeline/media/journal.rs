//! The active-call journal side of a worker: what of a call is journaled and when, and taking
//! a journaled call over after a restart.

use calltap_sip::dialog::Side;

use super::{
    call::{ActiveCall, SideMedia},
    ssrc::SsrcDirs,
    worker::MediaWorker,
};
use crate::{
    pipeline::{media_key, recording::RecordingAction, CallSetup, Control, Restored},
    rules::RuleAction,
    store::{
        callstore::{
            CallJournal, DirJournal, SideJournal, WavJournal, COUNTERS_NS, DURABLE_NS, VERSION,
        },
        cdr::{Cdr, RestartGap},
        spool::{FailReason, RecId, Tag, WavWindow},
        wav::{self, DATA_OFFSET},
    },
};

/// Per-call state of the active-call journal, touched from control messages and the flush
/// tick. (Whether a restored call was heard from since, which the packet path clears, is
/// `ActiveCall::awaiting_since`, among the fields every packet touches anyway.)
#[derive(Default)]
pub(super) struct JournalState {
    /// The SIP dialog as the signalling worker last reported it.
    pub(super) dialog: Option<Box<calltap_sip::dialog::DialogState>>,
    /// Gaps of restarts this call survived.
    pub(super) restart_gaps: Vec<RestartGap>,
    /// A control message changed something worth journaling.
    pub(super) dirty: bool,
    /// [`material`] of the call when it was last journaled, when that was (0: never), when it
    /// was last journaled durably, and its packet count then.
    pub(super) material: u64,
    pub(super) saved_ns: u64,
    pub(super) durable_ns: u64,
    pub(super) packets: u64,
    /// The raw RTP pcap already exists (a restored call appends to it).
    pub(super) raw_exists: bool,
}

/// A cheap fingerprint of what a journal write must capture promptly: stream identities and
/// anchoring (SSRC, RTP clock, SSRC changes and re-anchorings), the codec in use, the
/// recording's existence, DTMF and unsupported codecs seen. Ordinary packets do not change it.
pub(super) fn material(c: &ActiveCall) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |x: u64| h = (h ^ x).wrapping_mul(0x0100_0000_01b3);
    for d in &c.dirs {
        mix(d.ssrc.map_or(u64::MAX, u64::from));
        mix(u64::from(d.timeline_clock));
        if let Some(t) = &d.timeline {
            let st = t.stats();
            mix(st.ssrc_changes);
            mix(st.resyncs);
        }
        mix(d.pt_cache.map_or(u64::MAX, |(pt, _, _)| u64::from(pt)));
    }
    mix(u64::from(c.outputs.wav.window().is_some()));
    mix(u64::from(c.raw.is_some()));
    mix(u64::from(c.outputs.wav.failed()));
    mix(c.dtmf.len() as u64);
    mix(c.unsupported.len() as u64);
    mix(c.ssrc_dirs.len as u64);
    h
}

impl MediaWorker {
    /// Journals the calls whose state changed materially since their last write (durably), the
    /// calls whose counters moved every [`COUNTERS_NS`], and every call durably at least every
    /// [`DURABLE_NS`]. Runs on the flush tick (so at most once per flush interval), never per
    /// packet.
    pub(super) fn journal(&mut self, now: u64) {
        let Some(store) = &self.store else {
            return;
        };
        let mut failed = None;
        for c in self.calls.values_mut() {
            let m = material(c);
            let packets = c
                .dirs
                .iter()
                .map(|d| d.packets + d.rtcp_packets)
                .sum::<u64>();
            let durable = c.journal.dirty
                || m != c.journal.material
                || now.saturating_sub(c.journal.durable_ns) >= DURABLE_NS;
            let counters = packets != c.journal.packets
                && now.saturating_sub(c.journal.saved_ns) >= COUNTERS_NS;
            if !durable && !counters {
                continue;
            }
            match store.save(journal_of(c, self.id, now), durable) {
                Ok(()) => {
                    self.stats.journal_writes += 1;
                    c.journal.dirty = false;
                    c.journal.material = m;
                    c.journal.saved_ns = now;
                    c.journal.packets = packets;
                    if durable {
                        c.journal.durable_ns = now;
                    }
                }
                Err(e) => {
                    self.stats.journal_errors += 1;
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed {
            // Recording goes on; only resuming these calls after a crash is at risk.
            log::error!("active-call journal: {e}");
        }
    }

    /// Takes over a call an earlier run was recording (see [`Control::Restore`]): the same
    /// uuid, dialog, endpoints and WAV, the timelines where they were, and the restart gap.
    pub(super) fn restore(&mut self, r: Restored, done: &mut Vec<Cdr>) {
        let Restored {
            call,
            journal: j,
            gap,
            now_ns,
        } = r;
        // Normally announced by a Start already; else the path of a new call first (every field
        // initialised). Then the journaled state.
        if !self.calls.contains_key(&call) {
            let setup = CallSetup::journaled(&j, call);
            self.control(Control::Start(Box::new(setup)), done);
        }
        self.stats.calls_restored += 1;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.wav_path = j.wav_path;
        c.raw_path = j
            .raw_path
            .clone()
            .unwrap_or_else(|| c.wav_path.with_extension("rtp.pcap"));
        c.ringing_ns = j.ringing_ns;
        c.answer_ns = j.answer_ns;
        for (side, sj) in c.sides.iter_mut().zip(j.sides) {
            *side = SideMedia {
                rtp: sj.rtp,
                rtcp: sj.rtcp,
                codecs: sj.codecs,
                direction: sj.direction,
            };
        }
        for (d, dj) in c.dirs.iter_mut().zip(j.dirs) {
            d.ssrc = dj.ssrc;
            d.timeline = dj.timeline.map(|mut t| {
                // Same anchor: audio after the outage lands where its timestamps say.
                t.resume();
                t
            });
            d.timeline_clock = dj.timeline_clock;
            d.last_ns = dj.last_ns;
            d.jitter = dj.jitter;
            d.packets = dj.packets;
            d.bytes = dj.bytes;
            d.codec = dj.codec;
            d.kind = dj.kind;
            d.rtcp_packets = dj.rtcp_packets;
            d.rtcp_fraction_lost = dj.rtcp_fraction_lost;
            d.rtcp_jitter_ms = dj.rtcp_jitter_ms;
        }
        c.dtmf = j.dtmf;
        c.dtmf_omitted = j.dtmf_omitted;
        c.rejected = j.rejected_requests;
        c.rejected_omitted = j.rejected_requests_omitted;
        // Operator control before the crash, replayed in order into the fresh gate (the call's
        // rule decision set its initial state in Start).
        for ev in &j.recording_events {
            if let Some(action) = RecordingAction::parse(&ev.action) {
                if c.outputs
                    .wav
                    .gate_mut()
                    .apply(action, ev.at_ms.saturating_mul(1_000_000))
                    && action == RecordingAction::Start
                    && c.setup.recording.action == RuleAction::OnDemand
                {
                    c.outputs.wav.allow_file();
                }
            }
        }
        c.recording_events = j.recording_events;
        c.unsupported = j.unsupported.into_iter().collect();
        c.ssrc_dirs = SsrcDirs::from_pairs(&j.ssrc_dirs);
        if j.write_failed {
            c.outputs.wav.fail(&mut self.spool, None);
        }
        c.last_media_ns = now_ns;
        c.journal.dialog = j.dialog.map(Box::new);
        c.journal.restart_gaps = j.restart_gaps;
        c.journal.restart_gaps.extend(gap);
        c.journal.raw_exists = j.raw_pcap;
        c.journal.dirty = true;
        if let Some(w) = &j.wav {
            // Checked here, once per restored call before capture starts: the worker must
            // know what the file holds before it writes into it.
            match wav::probe(&w.path, w.rate) {
                Ok(probe) => {
                    c.outputs.wav.open(WavWindow::reopen(
                        &mut self.spool,
                        RecId::wav(call),
                        Tag::new(&c.setup.uuid, false),
                        w.path.clone(),
                        w.rate,
                        self.cfg.max_call_secs,
                        probe,
                        w.frames,
                    ));
                    c.wav_path = w.path.clone();
                    c.wav_confirmed = true;
                }
                Err(e) => {
                    // Keep what is there for a person to look at; the call goes on in a new
                    // file (positions are absolute, so its audio still lines up with the
                    // call).
                    self.stats.write_errors += 1;
                    self.spool.counters().fail(FailReason::Restore);
                    let aside = w.path.with_extension("wav.unreadable");
                    let moved = w.path.exists() && std::fs::rename(&w.path, &aside).is_ok();
                    log::error!(
                        "{}: cannot continue the recording ({e}){}",
                        w.path.display(),
                        if moved {
                            format!("; moved to {}", aside.display())
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        match j.ending {
            // Signalling had ended it before the crash: it only needs its CDR.
            Some((reason, at)) => {
                c.ending = Some((reason, at));
                self.ending_queue.push_back((at, call));
            }
            None => {
                for (side, s) in [Side::Caller, Side::Callee].into_iter().zip(&c.sides) {
                    for a in s.rtp.iter().chain(s.rtcp.iter()) {
                        let k = media_key(*a);
                        if let Some((prev, _)) = self.endpoints.insert(k, (call, side)) {
                            if prev != call {
                                self.shared.insert(k);
                            }
                        }
                    }
                }
                // An answered call that is not on hold sends audio all the time: silence after
                // the restart means it ended while CallTap was down. Held and unanswered calls
                // end by their own timers.
                if c.answer_ns.is_some() && !c.on_hold() {
                    c.awaiting_since = Some(now_ns);
                }
            }
        }
    }
}

/// The journal record of a call (see [`crate::store::callstore::CallJournal`]).
pub(super) fn journal_of(c: &ActiveCall, worker: u32, now: u64) -> CallJournal {
    let s = &c.setup;
    CallJournal {
        version: VERSION,
        saved_ns: now,
        uuid: s.uuid.clone(),
        call_id: s.call_id.clone(),
        interaction: s.interaction.clone(),
        from: s.from.clone(),
        to: s.to.clone(),
        caller_ip: s.caller_ip,
        callee_ip: s.callee_ip,
        start_ns: s.start_ns,
        worker,
        dialog: c.journal.dialog.as_deref().cloned(),
        ringing_ns: c.ringing_ns,
        answer_ns: c.answer_ns,
        sides: [0, 1].map(|i| {
            let m = &c.sides[i];
            SideJournal {
                rtp: m.rtp,
                rtcp: m.rtcp,
                codecs: m.codecs.clone(),
                direction: m.direction,
            }
        }),
        dirs: [0, 1].map(|i| {
            let d = &c.dirs[i];
            DirJournal {
                ssrc: d.ssrc,
                timeline: d.timeline.clone(),
                timeline_clock: d.timeline_clock,
                last_ns: d.last_ns,
                jitter: d.jitter.clone(),
                packets: d.packets,
                bytes: d.bytes,
                codec: d.codec.clone(),
                kind: d.kind,
                rtcp_packets: d.rtcp_packets,
                rtcp_fraction_lost: d.rtcp_fraction_lost,
                rtcp_jitter_ms: d.rtcp_jitter_ms,
            }
        }),
        dtmf: c.dtmf.clone(),
        dtmf_omitted: c.dtmf_omitted,
        rejected_requests: c.rejected.clone(),
        rejected_requests_omitted: c.rejected_omitted,
        wav_path: c.wav_path.clone(),
        // Only a file the spool thread confirmed: a restart must never continue another.
        wav: c
            .outputs
            .wav
            .window()
            .filter(|_| c.wav_confirmed)
            .map(|w| WavJournal {
                path: c.wav_path.clone(),
                rate: w.rate(),
                data_offset: DATA_OFFSET,
                frames: w.frames(),
            }),
        raw_pcap: c.journal.raw_exists || c.raw.is_some(),
        raw_path: Some(c.raw_path.clone()),
        unsupported: c.unsupported.iter().cloned().collect(),
        ssrc_dirs: c.ssrc_dirs.pairs(),
        restart_gaps: c.journal.restart_gaps.clone(),
        recording: s.recording,
        recording_events: c.recording_events.clone(),
        ending: c.ending.clone(),
        write_failed: c.outputs.wav.failed(),
        last_media_ns: c.last_media_ns,
    }
}
