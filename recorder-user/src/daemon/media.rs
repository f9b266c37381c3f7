//! The media workers' part: one pinned thread per worker, fed by its input and its control
//! queue, handing finished calls to the CDR thread and quiet calls back to signalling.

use std::{
    sync::{atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};

use super::{
    input::{monotonic_ns, Input, BATCH},
    shutdown::Shutdown,
};
use crate::{
    pipeline::{
        group::{Group, Step},
        media::{MediaWorker, WorkerStats},
        Control, MediaTimeout,
    },
    publish::metrics::LiveStats,
    queues::{self, Queue},
    store::cdr::Cdr,
};

/// A media worker that has emptied its ring sleeps this long before it looks again, instead of
/// asking the kernel to wake it at the next record: under load that wake-up came for nearly
/// every packet (a context switch each, most of a worker's time in the live profile); now it
/// takes whatever arrived in the meantime as one batch. The ring holds far more than this.
const COALESCE: Duration = Duration::from_millis(1);
/// Empty looks in a row after which the worker blocks on the ring instead (an idle recorder
/// does not tick 1,000 times a second).
const IDLE_AFTER: u32 = 100;

/// How full a worker's ring may get while it waits for signalling (see
/// [`Shutdown::wait_signalled`]).
const WAIT_UNTIL_FILL: f64 = 0.5;

fn media_thread(
    mut worker: MediaWorker,
    mut input: Input,
    ctl: Receiver<Control>,
    cdrs: Sender<Cdr>,
    timeouts: Sender<MediaTimeout>,
    shutdown: Arc<Shutdown>,
    live: Arc<LiveStats>,
) -> WorkerStats {
    let mut done = Vec::new();
    let mut expired = Vec::new();
    let mut last_tick = Instant::now();
    let mut drained_reported = false;
    let apply = |worker: &mut MediaWorker, done: &mut Vec<Cdr>| -> bool {
        loop {
            match ctl.try_recv() {
                Ok(msg) => worker.control(msg, done),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    };
    let mut lag_ns = 0u64;
    let mut empty = 0u32;
    let mut group = Group::default();
    // Records captured before this need not wait for signalling (see `signalled_upto`).
    let mut signalled = 0u64;
    // The newest capture time handled.
    let mut read_upto = 0u64;
    let clock = input.clock_offset();
    // How full the ring is, so waiting for signalling never makes it overflow.
    let fill = clock.and_then(|_| input.fill().ok());
    loop {
        let open = apply(&mut worker, &mut done);
        let mut newest_ts = 0u64;
        let n = input.drain_grouped(BATCH, &mut group, |step, rec| {
            if step != Step::Handle {
                worker.warm(rec, step == Step::WarmAudio);
                return;
            }
            newest_ts = rec.meta.ts_ns;
            if let Some(offset) = clock.filter(|_| rec.meta.ts_ns > signalled) {
                signalled = shutdown.wait_signalled(
                    rec.meta.ts_ns,
                    || monotonic_ns().wrapping_add(offset),
                    || {
                        apply(&mut worker, &mut done);
                        fill.as_ref().is_none_or(|f| f.ratio() < WAIT_UNTIL_FILL)
                    },
                );
                apply(&mut worker, &mut done);
            }
            if !worker.packet(rec) {
                // The control message for a new endpoint may still be in flight.
                apply(&mut worker, &mut done);
                if !worker.packet(rec) {
                    worker.unknown();
                }
            }
        });
        if n > 0 {
            // One clock read per batch, not per packet.
            lag_ns = lag_ns.max(crate::clock::unix_ns().saturating_sub(newest_ts));
            read_upto = read_upto.max(newest_ts);
        }
        // A full batch: more is waiting in the ring.
        let behind = n >= BATCH;
        hand_over(&mut done, &cdrs, Queue::Cdr);
        if last_tick.elapsed() >= Duration::from_millis(200) {
            last_tick = Instant::now();
            // Calls end, and go quiet, in capture time: a worker that is behind its ring
            // must not close a call whose last packets it has not read yet.
            let wall = crate::clock::unix_ns();
            let now = if behind { read_upto.min(wall) } else { wall };
            let rounds = worker.stats.flush_rounds;
            let started = Instant::now();
            worker.tick(now, &mut expired);
            if worker.stats.flush_rounds != rounds {
                live.flush_seconds.observe(started.elapsed().as_secs_f64());
            }
            worker.reap(now, &mut done);
            // For the metrics scrape: relaxed stores per tick, nothing on the packet path.
            if let Some(l) = live.workers.get(worker.id as usize) {
                l.records.store(worker.stats.records, Ordering::Relaxed);
                l.active_calls
                    .store(worker.active_calls() as u64, Ordering::Relaxed);
                l.lag_ns.store(lag_ns, Ordering::Relaxed);
            }
            live.bounds.store_worker(&worker.stats);
            lag_ns = 0;
            hand_over(&mut expired, &timeouts, Queue::Timeouts);
        }
        if shutdown.stop.load(Ordering::Acquire) {
            if n == 0 && !drained_reported {
                drained_reported = true;
                shutdown.drained.fetch_add(1, Ordering::AcqRel);
            }
            if !open {
                // Signalling has ended every call and hung up.
                apply(&mut worker, &mut done);
                worker.reap(u64::MAX, &mut done);
                // Stopping: the CDR thread is draining, waiting for it is right now.
                for cdr in done.drain(..) {
                    let _ = cdrs.send(cdr);
                }
                return worker.stats;
            }
        }
        if n == 0 {
            empty = empty.saturating_add(1);
            if empty > IDLE_AFTER {
                input.wait(Duration::from_millis(20));
            } else {
                thread::sleep(COALESCE);
            }
        } else {
            empty = 0;
        }
    }
}

/// Sends what `items` holds without waiting; what does not fit stays for the next call (see
/// [`queues`]), and each hand-over that found the queue full is counted.
fn hand_over<T>(items: &mut Vec<T>, tx: &Sender<T>, queue: Queue) {
    let mut rest = items.drain(..);
    while let Some(item) = rest.next() {
        match tx.try_send(item) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(item)) => {
                let left: Vec<T> = std::iter::once(item).chain(rest).collect();
                *items = left;
                queues::overflow(queue);
                return;
            }
        }
    }
}

/// The media worker threads, one pinned to each core in turn.
pub struct Media {
    /// Each worker's control queue (signalling, the API, the reloader send on it); a worker
    /// stops once every sender of its queue is gone.
    pub control: Vec<Sender<Control>>,
    handles: Vec<thread::JoinHandle<WorkerStats>>,
}

impl Media {
    /// Starts `workers`, each on its input; finished calls go to `cdrs`, calls that went quiet
    /// to `timeouts`.
    pub fn start(
        workers: Vec<MediaWorker>,
        inputs: Vec<Input>,
        cdrs: Sender<Cdr>,
        timeouts: Sender<MediaTimeout>,
        shutdown: &Arc<Shutdown>,
        live: &Arc<LiveStats>,
    ) -> std::io::Result<Media> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut control = Vec::new();
        let mut handles = Vec::new();
        for (i, (worker, input)) in workers.into_iter().zip(inputs).enumerate() {
            let (tx, rx) = bounded::<Control>(queues::CONTROL);
            control.push(tx);
            let (cdrs, timeouts, sd, lv) = (
                cdrs.clone(),
                timeouts.clone(),
                shutdown.clone(),
                live.clone(),
            );
            let core = cores.get(i % cores.len().max(1)).copied();
            handles.push(
                thread::Builder::new()
                    .name(format!("media-{i}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            if !core_affinity::set_for_current(core) {
                                log::warn!("media worker {i}: could not pin to core {core:?}");
                            }
                        }
                        media_thread(worker, input, rx, cdrs, timeouts, sd, lv)
                    })?,
            );
        }
        Ok(Media { control, handles })
    }

    /// Waits for every worker to finish (they do once signalling has ended every call and
    /// every control sender is gone); their counters.
    pub fn join(self) -> anyhow::Result<Vec<WorkerStats>> {
        drop(self.control);
        self.handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("media thread panicked"))
            })
            .collect()
    }
}
