//! The calls in progress, for the API, the console and webhooks.
//!
//! Fed by [`LiveSink`], which wraps the signalling worker's control sink: it sees the messages
//! that start, answer, hold and end calls (SIP rate), never RTP, so the lock here is never taken
//! on the packet path. A call leaves the registry when its CDR reaches the `cdr` thread
//! ([`LiveCalls::remove`]), which also covers calls the media workers end by media timeout, or
//! when signalling evicts it unanswered ([`Control::Evict`]), since that may have no CDR.
//!
//! Recording control goes the other way: [`LiveCalls::control`] checks the transition against
//! the call's recording state and sends [`Control::Recording`] to the call's media worker.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use calltap_sip::{
    dialog::{CallEvent, CallRef},
    sdp::Direction,
};
use crossbeam_channel::Sender;
use serde::Serialize;

use crate::{
    pipeline::{
        media::outputs::{AudioOutput, NewOutput, OutputId},
        recording::{RecordingAction, RecordingState, MAX_TRANSITIONS},
        CallSetup, Control, ControlSink,
    },
    rules::RuleAction,
    store::cdr::rfc3339,
};

/// Bound on calls tracked at once; far above what one box records, it only stops a runaway
/// (calls whose CDR never comes) from growing the registry without end.
const MAX_CALLS: usize = 200_000;

/// Where a live call is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// INVITE seen, no provisional answer yet.
    Setup,
    Ringing,
    Answered,
    /// One side put the call on hold (sendonly, recvonly, inactive or no media address).
    Held,
    /// Signalling ended the call; its CDR follows shortly.
    Ending,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Setup => "setup",
            CallState::Ringing => "ringing",
            CallState::Answered => "answered",
            CallState::Held => "held",
            CallState::Ending => "ending",
        }
    }
}

/// One call in progress, as the API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct LiveCall {
    pub uuid: String,
    pub call_id: String,
    pub from_user: Option<String>,
    pub from_uri: String,
    pub to_user: Option<String>,
    pub to_uri: String,
    /// RFC 3339 UTC.
    pub start: String,
    pub answered: Option<String>,
    pub state: CallState,
    pub worker: u32,
    pub recording: RecordingState,
    /// What the recording rules decided at call start (`record`, `skip`, `on_demand`) and the
    /// rule that did (`null`: the default mode).
    pub recording_mode: RuleAction,
    pub rule_id: Option<i64>,
    #[serde(skip)]
    pub start_ns: u64,
    #[serde(skip)]
    call: CallRef,
    #[serde(skip)]
    ringing: bool,
    #[serde(skip)]
    held: [bool; 2],
    #[serde(skip)]
    transitions: usize,
}

impl LiveCall {
    fn from_setup(worker: u32, s: &CallSetup) -> LiveCall {
        LiveCall {
            uuid: s.uuid.clone(),
            call_id: s.call_id.clone(),
            from_user: s.from.user.clone(),
            from_uri: s.from.uri.clone(),
            to_user: s.to.user.clone(),
            to_uri: s.to.uri.clone(),
            start: rfc3339(s.start_ns),
            answered: None,
            state: CallState::Setup,
            worker,
            // A skipped or on-demand call has no audio until (for on-demand) someone starts it.
            recording: match s.recording.action {
                RuleAction::Record => RecordingState::Recording,
                RuleAction::Skip | RuleAction::OnDemand => RecordingState::Stopped,
            },
            recording_mode: s.recording.action,
            rule_id: s.recording.rule_id,
            start_ns: s.start_ns,
            call: s.call,
            ringing: false,
            held: [false; 2],
            transitions: 0,
        }
    }

    fn refresh_state(&mut self) {
        if self.state == CallState::Ending {
            return;
        }
        self.state = if self.held.iter().any(|h| *h) {
            CallState::Held
        } else if self.answered.is_some() {
            CallState::Answered
        } else if self.ringing {
            CallState::Ringing
        } else {
            CallState::Setup
        };
    }

    /// Who the caller is, for people: the user part, else the URI.
    pub fn from_display(&self) -> &str {
        self.from_user.as_deref().unwrap_or(&self.from_uri)
    }

    pub fn to_display(&self) -> &str {
        self.to_user.as_deref().unwrap_or(&self.to_uri)
    }
}

/// What happened to a call, for listeners (webhooks).
#[derive(Clone, Copy, Debug)]
pub enum LiveEvent<'a> {
    Started(&'a LiveCall),
    Answered(&'a LiveCall),
    /// Evicted unanswered under an INVITE flood, at the time given: the call's end for
    /// listeners (a quiet evicted call has no CDR; one with something to show gets a CDR with
    /// end reason `evicted`, which the `cdr` thread does not announce again).
    Evicted(&'a LiveCall, u64),
}

type Listener = Box<dyn Fn(LiveEvent<'_>) + Send + Sync>;

/// Why a recording control request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no active call {0}")]
    NotFound(String),
    #[error("cannot {action} a recording that is {state}")]
    InvalidTransition {
        action: &'static str,
        state: &'static str,
    },
    #[error("the call is ending")]
    Ending,
    #[error("too many recording changes on this call (at most {MAX_TRANSITIONS})")]
    TooMany,
    #[error("the call's media worker is gone (recorder stopping)")]
    WorkerGone,
}

#[derive(Default)]
struct Registry {
    by_uuid: HashMap<String, LiveCall>,
    by_ref: HashMap<CallRef, String>,
    overflowed: bool,
}

/// The registry of calls in progress. Shared as `Arc<LiveCalls>`.
pub struct LiveCalls {
    reg: Mutex<Registry>,
    /// Control channels of the media workers, by worker index; emptied by [`LiveCalls::close`]
    /// because a media worker stops only once every sender of its channel is gone.
    workers: Mutex<Vec<Sender<Control>>>,
    listener: OnceLock<Listener>,
    /// When this registry (this run) began: a call that started or was answered before it is
    /// one the crash-resume journal handed over, whose events the earlier run already produced
    /// (they wait in the webhook queue), so the listener does not hear them again.
    since_ns: u64,
}

/// The few fields [`LiveSink`] takes from a control message before passing it on.
enum Note {
    Start(Box<LiveCall>),
    Ringing(CallRef),
    Answered(CallRef, u64),
    Media(CallRef, usize, bool),
    End(CallRef),
    Evict(CallRef, u64),
}

impl LiveCalls {
    /// A registry whose recording control reaches the media workers through `workers`.
    pub fn new(workers: Vec<Sender<Control>>) -> Arc<LiveCalls> {
        Arc::new(LiveCalls {
            reg: Mutex::new(Registry::default()),
            workers: Mutex::new(workers),
            listener: OnceLock::new(),
            since_ns: crate::clock::unix_ns(),
        })
    }

    /// Called (on the signalling thread) when a call starts or is answered; set once.
    pub fn set_listener(&self, f: impl Fn(LiveEvent<'_>) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(f));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Every update leaves the maps consistent before it can panic; keep serving.
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets go of the media workers' control channels (the recorder is stopping); recording
    /// control answers [`ControlError::WorkerGone`] from now on.
    pub fn close(&self) {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The calls in progress, oldest first.
    pub fn list(&self) -> Vec<LiveCall> {
        let mut v: Vec<LiveCall> = self.lock().by_uuid.values().cloned().collect();
        v.sort_by(|a, b| (a.start_ns, &a.uuid).cmp(&(b.start_ns, &b.uuid)));
        v
    }

    pub fn get(&self, uuid: &str) -> Option<LiveCall> {
        self.lock().by_uuid.get(uuid).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().by_uuid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The call's CDR was written: it is over.
    pub fn remove(&self, uuid: &str) {
        let mut reg = self.lock();
        if let Some(c) = reg.by_uuid.remove(uuid) {
            reg.by_ref.remove(&c.call);
        }
    }

    /// Checks `action` against the call's recording state and sends it to the call's worker,
    /// stamped now. Returns the call as it is afterwards.
    pub fn control(&self, uuid: &str, action: RecordingAction) -> Result<LiveCall, ControlError> {
        self.control_at(uuid, action, crate::clock::unix_ns())
    }

    /// Attaches `output` to the call's audio (a listener, an encoder; see
    /// [`crate::pipeline::media::outputs`]): it gets the call's placed audio from now until the
    /// call ends or it is detached. Returns its id, for [`LiveCalls::detach`].
    pub fn attach(
        &self,
        uuid: &str,
        output: Box<dyn AudioOutput>,
    ) -> Result<OutputId, ControlError> {
        let new = NewOutput::new(output);
        let id = new.id;
        self.send_to_call(uuid, |call| Control::Attach { call, output: new })?;
        Ok(id)
    }

    /// Detaches an output [`LiveCalls::attach`] attached: it is closed and gets nothing more.
    pub fn detach(&self, uuid: &str, id: OutputId) -> Result<(), ControlError> {
        let ts_ns = crate::clock::unix_ns();
        self.send_to_call(uuid, |call| Control::Detach { call, id, ts_ns })
    }

    /// Sends the message `msg` makes for the live call `uuid` to its worker.
    fn send_to_call(
        &self,
        uuid: &str,
        msg: impl FnOnce(CallRef) -> Control,
    ) -> Result<(), ControlError> {
        let reg = self.lock();
        let c = reg
            .by_uuid
            .get(uuid)
            .ok_or_else(|| ControlError::NotFound(uuid.to_string()))?;
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(c.worker as usize)
            .ok_or(ControlError::WorkerGone)?
            .send_timeout(msg(c.call), crate::queues::CONTROL_WAIT)
            .map_err(|_| ControlError::WorkerGone)
    }

    fn control_at(
        &self,
        uuid: &str,
        action: RecordingAction,
        ts_ns: u64,
    ) -> Result<LiveCall, ControlError> {
        let mut reg = self.lock();
        let c = reg
            .by_uuid
            .get_mut(uuid)
            .ok_or_else(|| ControlError::NotFound(uuid.to_string()))?;
        if c.state == CallState::Ending {
            return Err(ControlError::Ending);
        }
        // A rule excluded the call from recording (privacy, compliance): nothing may record it.
        if c.recording_mode == RuleAction::Skip {
            return Err(ControlError::InvalidTransition {
                action: action.as_str(),
                state: "excluded by a skip recording rule",
            });
        }
        let next = c
            .recording
            .apply(action)
            .ok_or(ControlError::InvalidTransition {
                action: action.as_str(),
                state: c.recording.as_str(),
            })?;
        // The worker's gate opens a span per pause/stop; keep well inside its bound.
        if c.transitions + 1 >= MAX_TRANSITIONS {
            return Err(ControlError::TooMany);
        }
        // Sent under the lock so two requests on one call reach the worker in the order they
        // were checked in; the wait for room is bounded (see `crate::queues`).
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(c.worker as usize)
            .ok_or(ControlError::WorkerGone)?
            .send_timeout(
                Control::Recording {
                    call: c.call,
                    action,
                    ts_ns,
                },
                crate::queues::CONTROL_WAIT,
            )
            .map_err(|_| ControlError::WorkerGone)?;
        c.recording = next;
        c.transitions += 1;
        Ok(c.clone())
    }

    fn note(worker: u32, msg: &Control) -> Option<Note> {
        Some(match msg {
            Control::Start(s) => Note::Start(Box::new(LiveCall::from_setup(worker, s))),
            Control::Event(ev) => match &**ev {
                CallEvent::Ringing { call, .. } => Note::Ringing(*call),
                CallEvent::Answered { call, ts_ns } => Note::Answered(*call, *ts_ns),
                CallEvent::Media {
                    call,
                    side,
                    rtp,
                    direction,
                    ..
                } => {
                    let held = rtp.is_none() || *direction != Direction::SendRecv;
                    Note::Media(*call, side.index(), held)
                }
                _ => return None,
            },
            Control::End { call, .. } => Note::End(*call),
            Control::Evict { call, ts_ns } => Note::Evict(*call, *ts_ns),
            _ => return None,
        })
    }

    fn apply(&self, note: Note) {
        let mut reg = self.lock();
        let reg = &mut *reg;
        let call = match note {
            Note::Start(c) => {
                if reg.by_uuid.len() >= MAX_CALLS {
                    if !reg.overflowed {
                        reg.overflowed = true;
                        log::warn!("live calls: more than {MAX_CALLS} open; not listing more");
                    }
                    return;
                }
                reg.by_ref.insert(c.call, c.uuid.clone());
                let uuid = c.uuid.clone();
                reg.by_uuid.insert(uuid.clone(), *c);
                if let (Some(f), Some(c)) = (self.listener.get(), reg.by_uuid.get(&uuid)) {
                    if c.start_ns >= self.since_ns {
                        f(LiveEvent::Started(c));
                    }
                }
                return;
            }
            Note::Evict(call, ts_ns) => {
                let evicted = reg
                    .by_ref
                    .remove(&call)
                    .and_then(|u| reg.by_uuid.remove(&u));
                if let (Some(f), Some(c)) = (self.listener.get(), evicted) {
                    if c.start_ns >= self.since_ns {
                        f(LiveEvent::Evicted(&c, ts_ns));
                    }
                }
                return;
            }
            Note::Ringing(call)
            | Note::Answered(call, _)
            | Note::Media(call, _, _)
            | Note::End(call) => call,
        };
        let Some(c) = reg
            .by_ref
            .get(&call)
            .and_then(|uuid| reg.by_uuid.get_mut(uuid))
        else {
            return;
        };
        let mut answered_now = false;
        match note {
            Note::Ringing(_) => c.ringing = true,
            Note::Answered(_, ts) => {
                if c.answered.is_none() {
                    c.answered = Some(rfc3339(ts));
                    answered_now = ts >= self.since_ns;
                }
            }
            Note::Media(_, side, held) => c.held[side] = held,
            Note::End(_) => c.state = CallState::Ending,
            Note::Start(_) | Note::Evict(..) => {}
        }
        c.refresh_state();
        if answered_now {
            if let Some(f) = self.listener.get() {
                f(LiveEvent::Answered(c));
            }
        }
    }
}

/// A control sink that keeps [`LiveCalls`] up to date with what passes through it.
pub struct LiveSink<S> {
    inner: S,
    live: Arc<LiveCalls>,
}

impl<S> LiveSink<S> {
    pub fn new(inner: S, live: Arc<LiveCalls>) -> LiveSink<S> {
        LiveSink { inner, live }
    }
}

impl<S: ControlSink> ControlSink for LiveSink<S> {
    fn send(&mut self, worker: u32, msg: Control) {
        let note = LiveCalls::note(worker, &msg);
        // The worker gets the message first: a recording control for a call listed here can
        // then never reach the worker before the call's Start.
        self.inner.send(worker, msg);
        if let Some(n) = note {
            self.live.apply(n);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use calltap_sip::{dialog::Side, NameAddr};
    use crossbeam_channel::unbounded;

    use super::*;

    /// Call `n` as the signalling worker would set it up: uuid `uuid-N`, Call-ID `cid-N`,
    /// 1000 calling 2000.
    pub(crate) fn setup(n: u64) -> CallSetup {
        let party = |u: &str| NameAddr {
            display: None,
            user: Some(u.to_string()),
            host: Some("198.18.0.2".into()),
            uri: format!("sip:{u}@198.18.0.2"),
            tag: None,
        };
        CallSetup {
            call: CallRef(n),
            uuid: format!("uuid-{n}"),
            call_id: format!("cid-{n}"),
            interaction: format!("cid-{n}"),
            from: party("1000"),
            to: party("2000"),
            caller_ip: "198.18.0.1".parse().expect("ip"),
            callee_ip: "198.18.0.2".parse().expect("ip"),
            start_ns: 1_700_000_000_000_000_000 + n,
            recording: Default::default(),
        }
    }

    /// Announces call `n` to `live` through a [`LiveSink`], as `calltap run` does.
    pub(crate) fn start_call(live: &Arc<LiveCalls>, n: u64) {
        let mut sink = LiveSink::new(Vec::<(u32, Control)>::new(), live.clone());
        sink.send(0, Control::Start(Box::new(setup(n))));
    }

    #[test]
    fn follows_calls_through_the_sink_and_controls_recording() {
        let (tx, rx) = unbounded();
        let live = LiveCalls::new(vec![tx]);
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        live.set_listener(move |e| {
            let s = match e {
                LiveEvent::Started(c) => format!("started {}", c.uuid),
                LiveEvent::Answered(c) => format!("answered {}", c.uuid),
                LiveEvent::Evicted(c, _) => format!("evicted {}", c.uuid),
            };
            ev.lock().expect("events").push(s);
        });
        let mut sink = LiveSink::new(Vec::<(u32, Control)>::new(), live.clone());
        // Calls of this run (see the restored-call test for calls of an earlier one).
        let t0 = crate::clock::unix_ns();
        for n in [1, 2] {
            let mut s = setup(n);
            s.start_ns = t0 + n;
            sink.send(0, Control::Start(Box::new(s)));
        }
        sink.send(
            0,
            Control::Event(Box::new(CallEvent::Ringing {
                call: CallRef(1),
                ts_ns: t0 + 5,
            })),
        );
        assert_eq!(
            live.get("uuid-1").map(|c| c.state),
            Some(CallState::Ringing)
        );
        for ts_ns in [t0 + 1_000_000_000, t0 + 2_000_000_000] {
            sink.send(
                0,
                Control::Event(Box::new(CallEvent::Answered {
                    call: CallRef(1),
                    ts_ns,
                })),
            );
        }
        let c = live.get("uuid-1").expect("listed");
        assert_eq!(c.state, CallState::Answered);
        assert_eq!(
            c.answered,
            Some(rfc3339(t0 + 1_000_000_000)),
            "first answer"
        );
        sink.send(
            0,
            Control::Event(Box::new(CallEvent::Media {
                call: CallRef(1),
                side: Side::Callee,
                rtp: None,
                rtcp: None,
                codecs: vec![],
                direction: Direction::SendRecv,
                ts_ns: 0,
            })),
        );
        assert_eq!(live.get("uuid-1").map(|c| c.state), Some(CallState::Held));
        // Every message went on to the inner sink.
        assert_eq!(sink.inner.len(), 6);
        assert_eq!(
            live.list()
                .iter()
                .map(|c| c.uuid.as_str())
                .collect::<Vec<_>>(),
            ["uuid-1", "uuid-2"]
        );

        // Recording control: checked, then sent to the worker.
        let c = live
            .control_at("uuid-1", RecordingAction::Pause, 42)
            .expect("pause");
        assert_eq!(c.recording, RecordingState::Paused);
        match rx.try_recv() {
            Ok(Control::Recording {
                call,
                action,
                ts_ns,
            }) => assert_eq!(
                (call, action, ts_ns),
                (CallRef(1), RecordingAction::Pause, 42)
            ),
            other => panic!("expected a Recording control, got {other:?}"),
        }
        assert!(matches!(
            live.control("uuid-1", RecordingAction::Pause),
            Err(ControlError::InvalidTransition { .. })
        ));
        assert!(matches!(
            live.control("nope", RecordingAction::Pause),
            Err(ControlError::NotFound(_))
        ));
        assert!(rx.try_recv().is_err(), "refused requests send nothing");

        sink.send(
            0,
            Control::End {
                call: CallRef(1),
                reason: "bye_caller".into(),
                ts_ns: 0,
            },
        );
        assert_eq!(live.get("uuid-1").map(|c| c.state), Some(CallState::Ending));
        assert!(matches!(
            live.control("uuid-1", RecordingAction::Resume),
            Err(ControlError::Ending)
        ));
        live.remove("uuid-1");
        assert!(live.get("uuid-1").is_none());
        assert_eq!(live.len(), 1);
        assert_eq!(
            *events.lock().expect("events"),
            ["started uuid-1", "started uuid-2", "answered uuid-1"]
        );
    }

    #[test]
    fn calls_restored_from_an_earlier_run_are_listed_but_not_announced_again() {
        let (tx, _rx) = unbounded();
        let live = LiveCalls::new(vec![tx]);
        let heard = Arc::new(Mutex::new(0));
        let h = heard.clone();
        live.set_listener(move |_| *h.lock().expect("heard") += 1);
        let mut sink = LiveSink::new(Vec::<(u32, Control)>::new(), live.clone());
        // What signalling announces for a journaled call: its original start and answer.
        sink.send(0, Control::Start(Box::new(setup(3))));
        sink.send(
            0,
            Control::Event(Box::new(CallEvent::Answered {
                call: CallRef(3),
                ts_ns: 1_700_000_001_000_000_000,
            })),
        );
        let c = live.get("uuid-3").expect("listed");
        assert_eq!(c.state, CallState::Answered);
        assert_eq!(*heard.lock().expect("heard"), 0);
        // A call of this run is announced.
        let mut fresh = setup(4);
        fresh.start_ns = crate::clock::unix_ns();
        sink.send(0, Control::Start(Box::new(fresh)));
        sink.send(
            0,
            Control::Event(Box::new(CallEvent::Answered {
                call: CallRef(4),
                ts_ns: crate::clock::unix_ns(),
            })),
        );
        assert_eq!(*heard.lock().expect("heard"), 2);
    }

    #[test]
    fn control_fails_cleanly_when_the_worker_is_gone() {
        let (tx, rx) = unbounded();
        let live = LiveCalls::new(vec![tx]);
        start_call(&live, 7);
        drop(rx);
        assert!(matches!(
            live.control("uuid-7", RecordingAction::Stop),
            Err(ControlError::WorkerGone)
        ));
        let (tx, _rx) = unbounded();
        let live = LiveCalls::new(vec![tx]);
        start_call(&live, 7);
        live.close();
        assert!(matches!(
            live.control("uuid-7", RecordingAction::Stop),
            Err(ControlError::WorkerGone)
        ));
        assert_eq!(
            live.get("uuid-7").map(|c| c.recording),
            Some(RecordingState::Recording)
        );
    }

    #[test]
    fn rule_modes_are_listed_on_demand_starts_stopped_and_skip_refuses_control() {
        use crate::rules::RecordingMode;
        let (tx, rx) = unbounded();
        let live = LiveCalls::new(vec![tx]);
        let mut sink = LiveSink::new(Vec::<(u32, Control)>::new(), live.clone());
        for (n, action) in [(1, RuleAction::OnDemand), (2, RuleAction::Skip)] {
            let mut s = setup(n);
            s.recording = RecordingMode {
                action,
                rule_id: Some(40 + n as i64),
            };
            sink.send(0, Control::Start(Box::new(s)));
        }
        let od = live.get("uuid-1").expect("on demand");
        assert_eq!(
            (od.recording, od.recording_mode, od.rule_id),
            (RecordingState::Stopped, RuleAction::OnDemand, Some(41))
        );
        let c = live
            .control("uuid-1", RecordingAction::Start)
            .expect("start on demand");
        assert_eq!(c.recording, RecordingState::Recording);
        assert!(matches!(
            rx.try_recv(),
            Ok(Control::Recording {
                action: RecordingAction::Start,
                ..
            })
        ));
        assert!(matches!(
            live.control("uuid-2", RecordingAction::Start),
            Err(ControlError::InvalidTransition { .. })
        ));
        assert!(rx.try_recv().is_err(), "nothing sent for a skipped call");
        let json = serde_json::to_value(live.get("uuid-2").expect("skip")).expect("json");
        assert_eq!(json["recording_mode"], "skip");
        assert_eq!(json["rule_id"], 42);
        assert_eq!(json["recording"], "stopped");
    }

    /// An output attached through the registry reaches the call's worker, and so does its
    /// detachment; an unknown call is refused.
    #[test]
    fn outputs_are_attached_to_and_detached_from_a_live_call_on_its_worker() {
        struct Silent;
        impl crate::pipeline::media::outputs::AudioOutput for Silent {
            fn kind(&self) -> &'static str {
                "silent"
            }
            fn write(
                &mut self,
                _: &mut crate::pipeline::media::outputs::OutputCtx<'_>,
                _: crate::pipeline::media::outputs::Placed<'_>,
            ) {
            }
        }
        let (tx, rx) = unbounded();
        let live = LiveCalls::new(vec![tx]);
        start_call(&live, 5);
        let id = live.attach("uuid-5", Box::new(Silent)).expect("attached");
        match rx.try_recv() {
            Ok(Control::Attach { call, output }) => {
                assert_eq!(
                    (call, output.id, output.output.kind()),
                    (CallRef(5), id, "silent")
                )
            }
            other => panic!("expected an Attach, got {other:?}"),
        }
        live.detach("uuid-5", id).expect("detached");
        assert!(matches!(
            rx.try_recv(),
            Ok(Control::Detach { call: CallRef(5), id: d, .. }) if d == id
        ));
        assert!(matches!(
            live.attach("nope", Box::new(Silent)),
            Err(ControlError::NotFound(_))
        ));
    }
}
