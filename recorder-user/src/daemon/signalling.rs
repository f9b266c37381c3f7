//! The signalling part: one thread following SIP, telling the media workers about calls.

use std::{
    sync::{atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};

use super::{
    input::{monotonic_ns, Input, BATCH},
    shutdown::{Shutdown, SIGNALLED_MARGIN_NS},
};
use crate::{
    classify::MediaTable,
    pipeline::{
        signalling::{SignallingStats, SignallingWorker},
        Control, ControlSink, MediaTimeout,
    },
    publish::{live::LiveSink, metrics::LiveStats},
    queues::{self, Queue},
    store::callstore::Loaded,
};

/// Records between two moves of [`Shutdown::signalled_upto`] while the ring stays full: a
/// media worker waits for the mark, so it must not move a whole batch at a time.
const PROGRESS_EVERY: usize = 64;

/// The media workers' control queues, as signalling sends to them.
pub struct Senders(pub Vec<Sender<Control>>);

impl ControlSink for Senders {
    /// Waits for room (see [`queues`]): a media worker never waits on anything, so its queue
    /// is full only when it is overloaded, and SIP then backs up into its ring.
    fn send(&mut self, worker: u32, msg: Control) {
        if let Some(tx) = self.0.get(worker as usize) {
            if let Err(SendTimeoutError::Timeout(_)) = tx.send_timeout(msg, queues::CONTROL_WAIT) {
                queues::overflow(Queue::Control);
                log::error!("media worker {worker} took no control message for 1 s: one dropped");
            }
        }
    }
}

/// A reload's new call limits and added SIP ports, for the signalling thread.
pub type SignallingSettings = (calltap_sip::dialog::TrackerConfig, Vec<u16>);

/// What reaches the signalling thread besides captured records.
pub struct SignallingFeeds {
    /// Calls a media worker found silent for too long.
    pub timeouts: Receiver<MediaTimeout>,
    /// A reload's new call limits and added SIP ports.
    pub settings: Receiver<SignallingSettings>,
}

fn signalling_thread<T: MediaTable>(
    mut sig: SignallingWorker<T>,
    mut input: Input,
    mut sink: LiveSink<Senders>,
    from: SignallingFeeds,
    shutdown: Arc<Shutdown>,
    workers: u32,
    live: Arc<LiveStats>,
) -> SignallingStats {
    let SignallingFeeds { timeouts, settings } = from;
    let mut last_tick = Instant::now();
    let clock = input.clock_offset();
    loop {
        // Read before draining: everything captured before it (less the margin) is in the
        // ring by now, and handled once the drain has emptied it.
        let upto = clock.map(|o| {
            monotonic_ns()
                .wrapping_add(o)
                .saturating_sub(SIGNALLED_MARGIN_NS)
        });
        let mut handled = 0usize;
        let n = input.drain(BATCH, |rec| {
            sig.handle(rec, &mut sink);
            handled += 1;
            if clock.is_some() && handled.is_multiple_of(PROGRESS_EVERY) {
                // A SIP flood keeps every batch full, and the mark below then never moves:
                // the media workers would go on with calls as they were before the flood.
                // One ring, in stamping order within the margin: everything captured before
                // this record (less the margin) has been handled and its messages sent.
                let mark = rec.meta.ts_ns.saturating_sub(SIGNALLED_MARGIN_NS);
                shutdown.signalled_upto.fetch_max(mark, Ordering::AcqRel);
            }
        });
        while let Ok((tracker, ports)) = settings.try_recv() {
            sig.reconfigure(tracker, &ports);
        }
        while let Ok(t) = timeouts.try_recv() {
            sig.media_timeout(t, &mut sink);
        }
        if let Some(upto) = upto.filter(|_| n < BATCH) {
            shutdown.signalled_upto.fetch_max(upto, Ordering::AcqRel);
        }
        if last_tick.elapsed() >= Duration::from_millis(200) {
            last_tick = Instant::now();
            sig.tick(crate::clock::unix_ns(), &mut sink);
            live.active_calls
                .store(sig.active_calls() as u64, Ordering::Relaxed);
            live.calls_started
                .store(sig.stats.calls_started, Ordering::Relaxed);
            live.sdp_endpoints_refused
                .store(sig.stats.sdp_endpoints_refused, Ordering::Relaxed);
            live.sip_ports_learned
                .store(sig.stats.learned_sip_ports, Ordering::Relaxed);
            live.sip_ports_expired
                .store(sig.stats.expired_sip_ports, Ordering::Relaxed);
            live.bounds.store(&sig.stats.bounds);
        }
        if shutdown.stop.load(Ordering::Acquire) && n == 0 {
            // Let the media workers empty their rings first so no audio in flight is lost,
            // then close every call still open.
            let deadline = Instant::now() + Duration::from_secs(3);
            while shutdown.drained.load(Ordering::Acquire) < workers && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            input.drain(usize::MAX, |rec| sig.handle(rec, &mut sink));
            sig.finish(crate::clock::unix_ns(), "recorder_stop", &mut sink);
            return sig.stats.clone();
        }
        if n == 0 {
            // With stamped records the media workers follow `signalled_upto`: it must move
            // on while no SIP comes, so the wait is short.
            input.wait(Duration::from_millis(if clock.is_some() { 1 } else { 20 }));
        }
    }
}

/// The signalling thread.
pub struct Signalling {
    handle: thread::JoinHandle<SignallingStats>,
}

impl Signalling {
    /// Starts `sig` on `input`, taking over the calls an earlier run left (`resumed`) before
    /// the first record; control messages go to the media workers through `sink`.
    pub fn start(
        sig: SignallingWorker<Box<dyn MediaTable>>,
        input: Input,
        sink: LiveSink<Senders>,
        resumed: Loaded,
        feeds: SignallingFeeds,
        shutdown: &Arc<Shutdown>,
        live: &Arc<LiveStats>,
    ) -> std::io::Result<Signalling> {
        let (sd, live) = (shutdown.clone(), live.clone());
        let workers = sig.workers();
        let handle = thread::Builder::new()
            .name("signalling".into())
            .spawn(move || {
                let (mut sig, mut sink) = (sig, sink);
                sig.restore(resumed, crate::clock::unix_ns(), &mut sink);
                signalling_thread(sig, input, sink, feeds, sd, workers, live)
            })?;
        Ok(Signalling { handle })
    }

    /// Waits for the thread: it ends every call and returns once stopping.
    pub fn join(self) -> anyhow::Result<SignallingStats> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("signalling thread panicked"))
    }
}
