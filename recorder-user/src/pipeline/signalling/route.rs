//! Dialog events to control messages: each call gets a media worker, and the worker learns of
//! everything SIP says about its call.

use calltap_common::MediaKey;
use calltap_sip::dialog::{CallEvent, EndReason};

use super::{Route, SignallingWorker};
use crate::{
    classify::MediaTable,
    pipeline::{call_uuid, media_key, CallSetup, Control, ControlSink},
};

impl<T: MediaTable> SignallingWorker<T> {
    pub(super) fn route(&mut self, events: &mut Vec<CallEvent>, sink: &mut dyn ControlSink) {
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
                        r.decide(&crate::rules::CallFacts {
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
                mut media @ CallEvent::Media { .. } => {
                    let CallEvent::Media {
                        call,
                        side,
                        rtp,
                        rtcp,
                        ..
                    } = &mut media
                    else {
                        continue;
                    };
                    let (call, side) = (*call, *side);
                    (*rtp, *rtcp) = self.admit_media(call, *rtp, *rtcp);
                    let new_keys: Vec<MediaKey> = rtp
                        .iter()
                        .chain(rtcp.iter())
                        .map(|a| media_key(*a))
                        .collect();
                    let Some(route) = self.routes.get_mut(&call) else {
                        continue;
                    };
                    let worker = route.worker;
                    let old = std::mem::replace(&mut route.keys[side.index()], new_keys.clone());
                    // The worker learns the endpoints before the kernel starts steering them to
                    // it, so no packet arrives for an endpoint it does not know.
                    sink.send(worker, Control::Event(Box::new(media)));
                    for key in old.iter().filter(|k| !new_keys.contains(k)) {
                        self.release(key, call);
                    }
                    for key in new_keys {
                        self.claim(key, call, worker);
                    }
                }
                // The rest goes to the call's worker as it is.
                ev @ (CallEvent::Ringing { .. }
                | CallEvent::Answered { .. }
                | CallEvent::Dtmf { .. }
                | CallEvent::Rejected { .. }) => {
                    if let Some(r) = self.routes.get(&ev.call()) {
                        sink.send(r.worker, Control::Event(Box::new(ev)));
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
