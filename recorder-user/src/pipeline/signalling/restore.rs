//! Taking over the calls an earlier run journaled (see [`crate::store::callstore`]): their
//! dialogs, media endpoints and workers.

use calltap_sip::dialog::{CallEvent, CallRef};

use super::{Route, SignallingWorker};
use crate::{
    classify::MediaTable,
    pipeline::{media_key, CallSetup, Control, ControlSink, Restored},
    store::{
        callstore::{CallJournal, Loaded},
        cdr::RestartGap,
    },
};

/// Announces a restored call the way a new one is announced (`Start`, then `Answered` if it
/// was), so whatever watches the control stream (the live-call registry) knows it too; the
/// `Restore` that follows gives the worker the rest.
pub(super) fn announce(j: &CallJournal, call: CallRef, worker: u32, sink: &mut dyn ControlSink) {
    sink.send(
        worker,
        Control::Start(Box::new(CallSetup::journaled(j, call))),
    );
    if let Some(ts_ns) = j.answer_ns {
        sink.send(
            worker,
            Control::Event(Box::new(CallEvent::Answered { call, ts_ns })),
        );
    }
}

impl<T: MediaTable> SignallingWorker<T> {
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
}
