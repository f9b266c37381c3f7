//! `calltap run`: live capture. One pinned thread per media worker, one signalling thread, one
//! thread writing CDRs; the main thread waits for SIGINT/SIGTERM.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::maps::{MapData, RingBuf};
use calltap_common::counter;
use calltap_sip::dialog::EndReason;
use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TryRecvError, TrySendError};
use serde::Serialize;

use crate::{
    capture::{
        af_packet::{AfPacketCapture, RecordQueue},
        config::SourceKind,
        mirror_port::{self, InterfaceFacts},
        xdp::{wait_readable, RingPositions, XdpCapture, XdpCounters},
        Attachment, InputFill, Record,
    },
    classify::{MediaTable, SharedMediaTable, UserTables},
    config::Config,
    pipeline::{
        group::{Group, Step},
        media::{MediaConfig, MediaWorker, WorkerStats},
        signalling::{SignallingStats, SignallingWorker},
        Control, ControlSink, MediaTimeout,
    },
    publish::{
        api,
        console::{Console, ConsoleBackend, ConsoleConfig},
        http::{self, HttpServer},
        live::{LiveCalls, LiveEvent, LiveSink},
        metrics::{CaptureCounters, LiveStats, Metrics},
        tls,
        webhook::{WebhookConfig, Webhooks},
    },
    queues::{self, Queue},
    reload::{Change, Reloader},
    rules::{LiveRules, RuleSet},
    store::{
        archive::{
            queue::Job, target::TargetSpec, ArchiveConfig, ArchiveSnapshot, Archiver, OnArchived,
        },
        callstore::{CallStore, JournalWriter, ACTIVE_DIR},
        cdr::{Cdr, JsonlSink},
        spool::{files::FdBudget, Capacity},
        writer::{CdrWriter, WriterConfig, WriterSnapshot},
    },
};

/// Records a worker takes from its input before it looks at control messages again.
const BATCH: usize = 4096;
/// A media worker that has emptied its ring sleeps this long before it looks again, instead of
/// asking the kernel to wake it at the next record: under load that wake-up came for nearly
/// every packet (a context switch each, most of a worker's time in the live profile); now it
/// takes whatever arrived in the meantime as one batch. The ring holds far more than this.
const COALESCE: Duration = Duration::from_millis(1);
/// Empty looks in a row after which the worker blocks on the ring instead (an idle recorder
/// does not tick 1,000 times a second).
const IDLE_AFTER: u32 = 100;

/// CLOCK_MONOTONIC in nanoseconds: the clock XDP stamps records with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Offset that turns CLOCK_MONOTONIC (what XDP stamps) into nanoseconds since the epoch.
fn monotonic_to_realtime() -> u64 {
    crate::clock::unix_ns().saturating_sub(monotonic_ns())
}

/// How far behind "now" the signalling thread publishes [`Shutdown::signalled_upto`]: a frame
/// is stamped before it is copied into its ring, so one stamped just before the signalling
/// thread read the clock may still be on its way in.
const SIGNALLED_MARGIN_NS: u64 = 200_000;

/// The longest a media worker holds a record back for the signalling thread (see
/// [`Shutdown::signalled_upto`]); past it the worker goes on as if it had caught up.
const SIGNALLED_WAIT: Duration = Duration::from_millis(5);

/// Where a worker's records come from.
enum Input {
    /// A BPF ring filled by the XDP program; timestamps are CLOCK_MONOTONIC.
    Ring(RingBuf<MapData>, u64),
    /// Records built by the AF_PACKET thread.
    Channel(RecordQueue),
}

impl Input {
    /// Feeds up to `max` records to `f`; returns how many there were.
    fn drain(&mut self, max: usize, mut f: impl FnMut(&Record<'_>)) -> usize {
        let mut n = 0;
        match self {
            Input::Ring(ring, offset) => {
                while n < max {
                    let Some(item) = ring.next() else { break };
                    if let Some(mut rec) = Record::from_ring(&item) {
                        rec.meta.ts_ns = rec.meta.ts_ns.wrapping_add(*offset);
                        f(&rec);
                    }
                    n += 1;
                }
            }
            Input::Channel(q) => {
                while n < max {
                    let Ok(bytes) = q.rx.try_recv() else { break };
                    if let Some(rec) = Record::from_ring(&bytes) {
                        f(&rec);
                    }
                    // Back to the capture thread for the next packet (dropped if the pool is
                    // full).
                    let _ = q.recycle.try_send(bytes);
                    n += 1;
                }
            }
        }
        n
    }

    /// Like [`Input::drain`], a [`Group`] at a time: `f` sees each record of a group in each
    /// [`Step`] in turn (see [`crate::pipeline::group`]). Ring records are copied out of the
    /// ring for that, about 250 bytes for a G.711 packet.
    fn drain_grouped(
        &mut self,
        max: usize,
        group: &mut Group,
        mut f: impl FnMut(Step, &Record<'_>),
    ) -> usize {
        let mut n = 0;
        match self {
            Input::Ring(ring, offset) => {
                while n < max {
                    group.clear();
                    while n < max && !group.is_full() {
                        let Some(item) = ring.next() else { break };
                        n += 1;
                        // Whole: the size-class padding after the frame is a few dozen
                        // bytes, and `Group::run` reads the header (and skips a bad record).
                        group.push_record(&item);
                    }
                    if group.is_empty() {
                        break;
                    }
                    group.run(*offset, &mut f);
                }
            }
            Input::Channel(q) => {
                while n < max {
                    group.clear();
                    while n < max && !group.is_full() {
                        let Ok(bytes) = q.rx.try_recv() else { break };
                        n += 1;
                        group.push_record(&bytes);
                        // Back to the capture thread for the next packet (dropped if the pool
                        // is full).
                        let _ = q.recycle.try_send(bytes);
                    }
                    if group.is_empty() {
                        break;
                    }
                    group.run(0, &mut f);
                }
            }
        }
        n
    }

    /// What turns CLOCK_MONOTONIC into this input's record timestamps (they have the offset
    /// added), when records are stamped at capture (XDP); `None` for the AF_PACKET channel.
    fn clock_offset(&self) -> Option<u64> {
        match self {
            Input::Ring(_, offset) => Some(*offset),
            Input::Channel(_) => None,
        }
    }

    /// A read-only handle on how full this input is, for the metrics scrape.
    fn fill(&self) -> std::io::Result<InputFill> {
        Ok(match self {
            Input::Ring(ring, _) => InputFill::Ring(RingPositions::new(
                ring,
                u64::from(calltap_common::RING_BYTES),
            )?),
            Input::Channel(q) => InputFill::Queue(q.rx.clone()),
        })
    }

    fn wait(&self, timeout: Duration) {
        match self {
            Input::Ring(ring, _) => wait_readable(ring, timeout),
            Input::Channel(RecordQueue { rx, .. }) => {
                // Peek without consuming: block until something arrives or time passes.
                let deadline = Instant::now() + timeout;
                while rx.is_empty() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

struct Senders(Vec<Sender<Control>>);

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
type SignallingSettings = (calltap_sip::dialog::TrackerConfig, Vec<u16>);

/// What reaches the signalling thread besides captured records.
struct SignallingFeeds {
    /// Calls a media worker found silent for too long.
    timeouts: Receiver<MediaTimeout>,
    settings: Receiver<SignallingSettings>,
}

/// How `calltap run` re-reads its configuration on SIGHUP, `POST /api/v1/reload` and the
/// console's `reload`.
pub struct ReloadSource {
    pub file: Option<std::path::PathBuf>,
    /// Every key's value at start ([`Config::resolve`]).
    pub running: crate::config::Resolved,
    /// (section, key) set on the command line, which a file change cannot override.
    pub cli_keys: Vec<(&'static str, &'static str)>,
    /// Re-applies the command line to a freshly loaded configuration.
    pub overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
}

/// Calls listed one by one in the run summary.
const SUMMARY_CALLS: usize = 100_000;

/// State the capture threads share: shutdown, and the order between signalling and media.
struct Shutdown {
    stop: Arc<AtomicBool>,
    /// Media workers that have emptied their input after `stop`.
    drained: AtomicU32,
    /// Capture time (ring timestamps with their offset) before which the signalling thread
    /// has handled every SIP record and sent the control messages they caused; 0 until known.
    ///
    /// Signalling and media come through different rings and threads, so a media worker can
    /// see a call's first RTP before the signalling thread has even read the BYE of the call
    /// that had the same endpoints a moment before (sipp's back-to-back calls, a trunk reusing
    /// ports): the packets then went to the ended call. A worker holds a record captured after
    /// this mark back (at most [`SIGNALLED_WAIT`]) until the mark passes it, then applies the
    /// control messages, so each record meets the calls as they were when it was captured.
    signalled_upto: AtomicU64,
}

impl Shutdown {
    /// Waits (bounded) until signalling has handled everything captured before `ts`; returns
    /// the capture time up to which records need not wait again.
    fn wait_signalled(&self, ts: u64, now: impl Fn() -> u64) -> u64 {
        let started = Instant::now();
        loop {
            let upto = self.signalled_upto.load(Ordering::Acquire);
            if upto >= ts {
                return upto;
            }
            if started.elapsed() >= SIGNALLED_WAIT {
                // Signalling is behind (a SIP storm) or stuck: do not stall the audio on it;
                // what was captured until now goes on without waiting.
                return now();
            }
            thread::sleep(Duration::from_micros(100));
        }
    }
}

#[derive(Serialize)]
struct CallLine {
    call_id: String,
    worker: u32,
    caller: u64,
    callee: u64,
    rtcp: u64,
    end_reason: String,
}

#[derive(Serialize)]
struct RunSummary {
    source: String,
    /// Each capture interface: how it is attached, and whether its frames are dropped after
    /// capture (and why).
    attachments: Vec<Attachment>,
    counters: BTreeMap<&'static str, u64>,
    ring_full_per_cpu: Vec<u64>,
    signalling: SignallingStats,
    workers: Vec<WorkerStats>,
    /// The first [`SUMMARY_CALLS`] calls of the run (every CDR is in calls.jsonl and the store).
    calls: Vec<CallLine>,
    /// Calls after those, counted only: a daemon up for months must not grow a list per call.
    calls_not_listed: u64,
    /// The CDR database writer: rows stored, journaled, imported.
    cdr_store: WriterSnapshot,
    /// The recording archiver: files archived and queued, failures, spool disk alarm.
    archive: ArchiveSnapshot,
}

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
    let clock = input.clock_offset();
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
                signalled =
                    shutdown.wait_signalled(rec.meta.ts_ns, || monotonic_ns().wrapping_add(offset));
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
        }
        hand_over(&mut done, &cdrs, Queue::Cdr);
        if last_tick.elapsed() >= Duration::from_millis(200) {
            last_tick = Instant::now();
            let now = crate::clock::unix_ns();
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
        let n = input.drain(BATCH, |rec| sig.handle(rec, &mut sink));
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

/// Runs until SIGINT or SIGTERM; SIGHUP reloads the configuration (`reload`).
/// Where the media workers' audio buffers are kept across a crash (see
/// [`crate::store::spool::arena`]), under the data directory.
pub const SPOOL_DIR: &str = "spool";

pub fn run(cfg: Config, reload: Option<ReloadSource>) -> anyhow::Result<()> {
    if cfg.capture.interfaces.is_empty() {
        bail!("no capture interface: give --interface IF or set [capture] interfaces");
    }
    fs::create_dir_all(&cfg.storage.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.storage.data_dir.display()))?;
    let n = cfg.capture.worker_count();
    let shutdown = Arc::new(Shutdown {
        stop: Arc::new(AtomicBool::new(false)),
        drained: AtomicU32::new(0),
        signalled_upto: AtomicU64::new(0),
    });
    install_signal_handlers(&shutdown)?;
    let capacity = assess_limits(&cfg, n);

    // Pick and start the capture source.
    let mut xdp = None;
    let mut af = None;
    let mut source = String::new();
    if matches!(cfg.capture.source, SourceKind::Auto | SourceKind::Xdp) {
        let attempt = (|| {
            let mut x = XdpCapture::load(&cfg.capture.xdp(), &cfg.capture.sip_ports)?;
            for iface in &cfg.capture.interfaces {
                let facts = InterfaceFacts::read(iface);
                x.attach(
                    iface,
                    mirror_port::decide(cfg.capture.drop_after_capture, &facts),
                )?;
            }
            x.settle_drop_mode()?;
            Ok::<_, crate::capture::CaptureError>(x)
        })();
        match attempt {
            Ok(x) => {
                source = "xdp".into();
                xdp = Some(x);
            }
            Err(e) if cfg.capture.source == SourceKind::Auto => {
                log::warn!("XDP capture unavailable ({e}); falling back to AF_PACKET");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let table = SharedMediaTable::default();
    let mut inputs: Vec<Input> = Vec::new();
    let sig_input;
    let mut counters: Option<Arc<XdpCounters>> = None;
    let mut bpf_table = None;
    let attachments: Vec<Attachment>;
    if let Some(x) = xdp.as_mut() {
        let offset = monotonic_to_realtime();
        for i in 0..n {
            let ring = x
                .take_media_ring(i)
                .with_context(|| format!("ring of worker {i}"))?;
            inputs.push(Input::Ring(ring, offset));
        }
        sig_input = Input::Ring(x.take_signalling_ring().context("signalling ring")?, offset);
        counters = Some(Arc::new(x.take_counters()?));
        bpf_table = Some(x.take_media_table()?);
        attachments = x.attachments.clone();
    } else {
        source = "af_packet".into();
        let tables = UserTables::new(cfg.capture.xdp(), &cfg.capture.sip_ports, table.clone());
        let (capture, worker_rx, sig_rx) =
            AfPacketCapture::start(&cfg.capture.interfaces, tables, n, shutdown.stop.clone())?;
        inputs = worker_rx.into_iter().map(Input::Channel).collect();
        sig_input = Input::Channel(sig_rx);
        // A packet socket only ever copies: the host's stack gets every frame.
        attachments = cfg
            .capture
            .interfaces
            .iter()
            .map(|i| Attachment {
                interface: i.clone(),
                mode: "af_packet",
                after: mirror_port::copy_only(&InterfaceFacts::read(i)),
            })
            .collect();
        af = Some(capture);
    }

    let mut fills = Vec::new();
    for (label, input) in (0..n)
        .map(|i| i.to_string())
        .zip(&inputs)
        .chain(std::iter::once(("signalling".to_string(), &sig_input)))
    {
        match input.fill() {
            Ok(f) => fills.push((label, f)),
            Err(e) => log::warn!("worker {label}: no ring fill gauge: {e}"),
        }
    }

    // Channels and threads.
    let live = Arc::new(LiveStats::new(n));
    let (cdr_tx, cdr_rx) = bounded::<Cdr>(queues::CDR);
    let (to_tx, to_rx) = bounded::<MediaTimeout>(queues::TIMEOUTS);
    let mut ctl_txs = Vec::new();
    let mut media_handles = Vec::new();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut mcfg = MediaConfig::new(&cfg.storage, &cfg.calls, n);
    mcfg.spool.dir = Some(cfg.storage.data_dir.join(SPOOL_DIR));
    // Calls an earlier run was recording when it died; resumed before records are handled.
    let callstore = CallStore::open(&cfg.storage.data_dir.join(ACTIVE_DIR))?;
    let resumed = callstore.load();
    if resumed.corrupt > 0 {
        log::error!(
            "{} unreadable active-call journal file(s) set aside in {}",
            resumed.corrupt,
            callstore.dir().display()
        );
    }
    if !resumed.calls.is_empty() {
        log::info!(
            "resuming {} call(s) from the active-call journal",
            resumed.calls.len()
        );
    }
    // Audio the crashed run had buffered goes into its recordings before any worker maps its
    // own buffers or a call goes on.
    let spool_dir = cfg.storage.data_dir.join(SPOOL_DIR);
    crate::store::callstore::recover_journaled(&spool_dir, &resumed.calls);
    let (journal, journal_thread) = JournalWriter::start(callstore)?;
    // Finished calls leave the journal when their CDR is in calls.jsonl (the CDR thread).
    let cdr_journal = journal.clone();
    for (i, input) in inputs.into_iter().enumerate() {
        let (tx, rx) = bounded::<Control>(queues::CONTROL);
        ctl_txs.push(tx);
        let worker = MediaWorker::new(i as u32, mcfg.clone()).with_store(journal.clone());
        let (cdrs, timeouts, sd, lv) = (
            cdr_tx.clone(),
            to_tx.clone(),
            shutdown.clone(),
            live.clone(),
        );
        let core = cores.get(i % cores.len().max(1)).copied();
        media_handles.push(
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
    drop((cdr_tx, to_tx));
    // Active calls for the API and console, fed by the signalling worker's control messages.
    let live_calls = LiveCalls::new(ctl_txs.clone());
    // Recording rules: the default mode until the database hands over the rules (see below).
    let rules = LiveRules::new(RuleSet::default_only(cfg.recording.default));
    let (settings_tx, settings_rx) = bounded::<SignallingSettings>(16);
    // The reloader's way to the workers; emptied at shutdown, since the workers stop only when
    // every sender of their control channel is gone.
    let reload_targets = Arc::new(Mutex::new(ctl_txs.clone()));
    let reloader = reload.map(|r| {
        let workers_ctl = reload_targets.clone();
        let reload_rules = rules.clone();
        let overrides = r.overrides;
        Arc::new(Reloader::new(
            r.file,
            r.running,
            &r.cli_keys,
            move |c| overrides(c),
            move |change: &Change<'_>| {
                let c = change.config;
                let media = MediaConfig::new(&c.storage, &c.calls, c.capture.worker_count());
                for tx in workers_ctl.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    let _ = tx.send(Control::Settings(Box::new(media.clone())));
                }
                let _ = settings_tx.send((
                    change.config.calls.tracker(),
                    change.added_sip_ports.to_vec(),
                ));
                reload_rules.set_default(change.config.recording.default);
            },
        ))
    });
    let sink = LiveSink::new(Senders(ctl_txs), live_calls.clone());
    // Webhooks: started/answered from the registry (signalling thread), ended from the cdr
    // thread; `webhooks.sender()` is also the handle for `recording_archived`.
    let webhooks = match WebhookConfig::new(&cfg.webhooks) {
        Some(wc) => Some(Webhooks::start(
            wc,
            &cfg.storage.data_dir.join("webhooks.queue"),
        )?),
        None => None,
    };
    if let Some(hooks) = webhooks.as_ref().and_then(Webhooks::sender) {
        live_calls.set_listener(move |e| match e {
            LiveEvent::Started(c) => hooks.call_started(c),
            LiveEvent::Answered(c) => hooks.call_answered(c),
            LiveEvent::Evicted(c, at_ns) => hooks.call_evicted(c, at_ns),
        });
    }
    let tcfg = cfg.calls.tracker();
    let reassembly = (cfg.reassembly.tcp, cfg.reassembly.ipfrag);
    let sip_ports = cfg.capture.sip_ports.clone();
    let learned_port_idle_ns = cfg
        .capture
        .learned_sip_port_idle_s
        .saturating_mul(1_000_000_000);
    let sd = shutdown.clone();
    let sig_live = live.clone();
    // The kernel's map when XDP captures, the shared userspace map otherwise.
    let sig_table: Box<dyn MediaTable> = match bpf_table {
        Some(t) => Box::new(t),
        None => Box::new(table.clone()),
    };
    // Recording rules: the default mode until the database hands over the rules (retried in the
    // background); the API replaces them after each change.
    crate::store::rules::spawn_loader(
        &cfg.database,
        &cfg.storage.data_dir,
        rules.clone(),
        shutdown.stop.clone(),
    )?;
    let sig_rules = rules.clone();
    let sig_handle = thread::Builder::new()
        .name("signalling".into())
        .spawn(move || {
            let mut sig = SignallingWorker::new(sig_table, n, tcfg, 0)
                .with_reassembly(reassembly.0, reassembly.1)
                .with_store(journal);
            sig.set_sip_ports(&sip_ports);
            sig.set_learned_port_idle(learned_port_idle_ns);
            sig.set_rules(sig_rules);
            let mut sink = sink;
            sig.restore(resumed, crate::clock::unix_ns(), &mut sink);
            let feeds = SignallingFeeds {
                timeouts: to_rx,
                settings: settings_rx,
            };
            signalling_thread(sig, sig_input, sink, feeds, sd, n, sig_live)
        })?;
    let jsonl = cfg.storage.data_dir.join("calls.jsonl");
    // Database, or CSV journal while the database is away; never blocks this thread.
    let writer = CdrWriter::start(WriterConfig::new(&cfg.database, &cfg.storage))?;
    // Finished recordings: spool -> archive, retention, disk alarm. Its own thread; handing a
    // file over never waits for the archive. `archiver.counters()` is the metrics handle.
    // With an archive configured, each archived WAV is a recording.archived webhook (the raw
    // RTP pcap beside it is not; without an archive, recordings stay where call.ended says).
    let archiving = !matches!(cfg.archive.target, TargetSpec::Spool);
    let hooks = webhooks
        .as_ref()
        .and_then(Webhooks::sender)
        .filter(|_| archiving);
    let on_archived = hooks.map(|hooks| {
        Box::new(move |job: &Job, location: &str| {
            if !job.raw {
                hooks.recording_archived(
                    &job.uuid,
                    location,
                    job.bytes.unwrap_or(0),
                    job.sha256.as_deref().unwrap_or(""),
                );
            }
        }) as OnArchived
    });
    let archive = ArchiveConfig::new(&cfg.archive, cfg.retention, &cfg.database, &cfg.storage);
    let archiver = Archiver::start(archive, on_archived)?;
    let archive_submit = archiver.submitter();
    let capture_counters = match (&counters, &af) {
        (Some(c), _) => CaptureCounters::Xdp(c.clone()),
        (None, Some(a)) => {
            let shared = a.shared_counters();
            CaptureCounters::Totals(Arc::new(move || {
                std::array::from_fn(|i| shared[i].load(Ordering::Relaxed))
            }))
        }
        _ => CaptureCounters::None,
    };
    let metrics = Arc::new(Metrics::new(
        capture_counters,
        live.clone(),
        Some(writer.counters()),
    )?);
    for a in &attachments {
        metrics.set_capture_info(&source, a.mode);
        metrics.set_interface_info(&a.interface, a.mode, a.after.after_capture.as_str());
    }
    metrics.set_inputs(fills);
    metrics.set_spool(cfg.storage.recordings_dir());
    metrics.set_capacity(&capacity);
    metrics.set_archive(archiver.counters());
    // Without webhooks configured the series stay at zero, so dashboards show "none" rather
    // than "no data".
    metrics.set_webhooks(
        webhooks
            .as_ref()
            .map(Webhooks::counters)
            .unwrap_or_default(),
    );
    // The management server; started before the ready file so a watcher can scrape at once.
    let http_server = match &cfg.api.listen {
        Some(addr) => {
            let api = api::ApiState::connecting(&cfg.api_settings(), Some(writer.counters()));
            api.set_capture(api::CaptureInfo {
                source: source.clone(),
                interfaces: cfg.capture.interfaces.clone(),
            });
            api.set_live(live_calls.clone());
            api.set_metrics(metrics.clone());
            api.set_rules(rules.clone());
            if let Some(r) = &reloader {
                api.set_reloader(r.clone());
            }
            let app = http::track_requests(
                http::router(metrics.clone()).merge(api::router(api)),
                metrics.clone(),
            );
            let tls = match &cfg.api.tls {
                Some((cert, key)) => Some(tls::server_config(cert, key)?),
                None => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let server = HttpServer::start_with(addr, app, tls)?;
            log::info!(
                "API at {scheme}://{0}/api/v1, metrics at {scheme}://{0}/metrics",
                server.addr
            );
            Some(server)
        }
        None => None,
    };
    let console = start_console(ConsoleParts {
        cfg: &cfg,
        live_calls: &live_calls,
        metrics: &metrics,
        writer: &writer,
        webhooks: &webhooks,
        source: &source,
        workers: n,
        reloader: reloader.clone(),
    });
    let cdr_metrics = metrics.clone();
    let cdr_live = live_calls.clone();
    let cdr_hooks = webhooks.as_ref().and_then(Webhooks::sender);
    let cdr_handle = thread::Builder::new().name("cdr".into()).spawn(move || {
        let mut sink = match JsonlSink::open(&jsonl) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("{}: {e}; CDRs are only logged", jsonl.display());
                None
            }
        };
        let mut lines = Vec::new();
        let mut unlisted = 0u64;
        for mut cdr in cdr_rx.iter() {
            // fsync and sha256 of the recording: here, not on the media worker's thread.
            cdr.seal_recording();
            cdr_metrics.observe_call(&cdr);
            cdr_live.remove(&cdr.uuid);
            // An evicted call's call.ended went out when it was evicted (most have no CDR).
            let evicted = cdr.end_reason == EndReason::Evicted.as_str();
            if let Some(h) = cdr_hooks.as_ref().filter(|_| !evicted) {
                h.call_ended(&cdr);
            }
            log::info!(
                "call {} ended ({}): {} ms, packets caller {} callee {}, recording {}",
                cdr.call_id,
                cdr.end_reason,
                cdr.duration_ms,
                cdr.packets.caller,
                cdr.packets.callee,
                cdr.recording
                    .as_ref()
                    .map_or("none".to_string(), |r| r.path.display().to_string())
            );
            if let Some(s) = sink.as_mut() {
                if let Err(e) = s.write(&cdr) {
                    log::error!("{}: {e}", s.path().display());
                }
            }
            // The CDR is stored: a crash from now on must not restore the call.
            if let Err(e) = cdr_journal.remove(&cdr.uuid) {
                log::warn!("active-call journal: {e}");
            }
            // After calls.jsonl: a crash between the two is recovered from that line.
            archive_submit.submit(&cdr);
            if lines.len() >= SUMMARY_CALLS {
                unlisted += 1;
            } else {
                lines.push(CallLine {
                    call_id: cdr.call_id.clone(),
                    worker: cdr.worker,
                    caller: cdr.packets.caller,
                    callee: cdr.packets.callee,
                    rtcp: cdr.packets.rtcp,
                    end_reason: cdr.end_reason.clone(),
                });
            }
            writer.send(cdr);
        }
        (lines, unlisted, writer.finish())
    })?;

    let ready = cfg.storage.data_dir.join("calltap.ready");
    fs::write(&ready, format!("{source}\n"))?;
    log::info!(
        "capturing on {} ({source}), {n} media workers, data in {}",
        cfg.capture.interfaces.join(","),
        cfg.storage.data_dir.display()
    );
    while !shutdown.stop.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(100));
        if RELOAD_REQUESTED.swap(false, Ordering::AcqRel) {
            match &reloader {
                Some(r) => match r.reload() {
                    Ok(report) => log::info!("SIGHUP: configuration reloaded: {report}"),
                    Err(e) => log::error!("SIGHUP: {e}"),
                },
                None => log::warn!("SIGHUP: this run has no configuration source to reload"),
            }
        }
    }
    log::info!("stopping: draining rings and closing open calls");
    // The workers stop once every sender of their control channel is gone.
    live_calls.close();
    reload_targets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let signalling = sig_handle
        .join()
        .map_err(|_| anyhow::anyhow!("signalling thread panicked"))?;
    let mut workers = Vec::new();
    for h in media_handles {
        workers.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("media thread panicked"))?,
        );
    }
    let (calls, calls_not_listed, cdr_store) = cdr_handle
        .join()
        .map_err(|_| anyhow::anyhow!("cdr thread panicked"))?;
    // The workers and the CDR thread are gone: the journal thread writes what they queued (the
    // calls they closed are removed) and ends.
    let journal = journal_thread.finish();
    log::info!(
        "active-call journal: {} writes, {} removals, {} errors",
        journal.writes,
        journal.removals,
        journal.errors
    );
    // Every CDR is handed over: a last bounded attempt, the rest waits in the queue file.
    let archive = archiver.finish();
    let totals = match (&counters, &af) {
        (Some(c), _) => c.totals(),
        (None, Some(a)) => a.totals(),
        _ => [0; calltap_common::COUNTERS as usize],
    };
    let summary = RunSummary {
        source,
        attachments,
        counters: counter::NAMES.iter().copied().zip(totals).collect(),
        ring_full_per_cpu: counters
            .as_ref()
            .map(|c| c.per_cpu(counter::RING_FULL))
            .unwrap_or_default(),
        signalling,
        workers,
        calls,
        calls_not_listed,
        cdr_store,
        archive,
    };
    drop(console);
    // Every call.ended is handed over: a last bounded delivery, the rest stays queued on disk.
    if let Some(w) = webhooks {
        w.finish();
    }
    drop(http_server);
    write_summary(&cfg.storage.data_dir.join("run-summary.json"), &summary)?;
    let _ = fs::remove_file(&ready);
    drop(xdp);
    drop(af);
    Ok(())
}

/// Raises the open-file limit as far as the process may, sizes the recordings' descriptor
/// budget from it, and logs how many calls the limits allow at once and what bounds them.
fn assess_limits(cfg: &Config, workers: u32) -> Capacity {
    match crate::limits::raise_nofile() {
        Ok((before, after)) if before < after => {
            log::info!(
                "open files: raised the soft limit from {before} to {after} (the hard limit)"
            )
        }
        Ok(_) => {}
        Err(e) => log::warn!("open files: cannot raise the soft limit: {e}"),
    }
    let (nofile, _) = crate::limits::nofile();
    let budget = FdBudget::get();
    budget.set_limit(FdBudget::from_rlimit(nofile));
    let max_calls = cfg.calls.max_calls as u64;
    let c = Capacity::assess(max_calls, cfg.storage.audio_buffer_mb);
    let bound = if c.concurrent_calls == c.max_calls {
        "[calls] max_calls"
    } else {
        "[storage] audio_buffer_mb"
    };
    log::info!(
        "capacity: {} concurrent calls ({bound}; max_calls {}, audio buffers {} MiB for {} calls \
         over {workers} worker(s)); {} recording files kept open (open-file limit {nofile}), \
         calls beyond that reopen their file per write",
        c.concurrent_calls,
        c.max_calls,
        cfg.storage.audio_buffer_mb,
        c.buffer_calls,
        c.open_files,
    );
    if c.open_files < c.concurrent_calls {
        log::warn!(
            "open files: the limit ({nofile}) keeps {} recordings open of the {} calls the \
             other limits allow; raise LimitNOFILE for fewer reopens",
            c.open_files,
            c.concurrent_calls
        );
    }
    c
}

/// What the console reports on and acts through.
struct ConsoleParts<'a> {
    cfg: &'a Config,
    live_calls: &'a Arc<LiveCalls>,
    metrics: &'a Arc<Metrics>,
    writer: &'a CdrWriter,
    webhooks: &'a Option<Webhooks>,
    source: &'a str,
    workers: u32,
    reloader: Option<Arc<Reloader>>,
}

/// The telnet console on `[console] listen`; the daemon runs on without it when the address is
/// taken (it is a troubleshooting aid, not worth refusing to record over).
fn start_console(parts: ConsoleParts<'_>) -> Option<Console> {
    let ConsoleParts {
        cfg,
        live_calls,
        metrics,
        writer,
        webhooks,
        source,
        workers,
        reloader,
    } = parts;
    let listen = cfg.console.listen.clone()?;
    let started = Instant::now();
    let (live, store, ifs, data_dir) = (
        live_calls.clone(),
        writer.counters(),
        cfg.capture.interfaces.join(","),
        cfg.storage.data_dir.display().to_string(),
    );
    let source = source.to_string();
    let status = move || {
        format!(
            "calltap {}, up {} s\ncapture {source} on {ifs}, {workers} media workers\nactive calls {}\ndata dir {data_dir}\ncdr store {}\n",
            env!("CARGO_PKG_VERSION"),
            started.elapsed().as_secs(),
            live.len(),
            serde_json::to_string(&store.snapshot()).unwrap_or_default(),
        )
    };
    let (m, hooks) = (metrics.clone(), webhooks.as_ref().map(Webhooks::counters));
    let stats = move || {
        let mut out: String = m
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some(h) = &hooks {
            let s = h.snapshot();
            out.push_str(&format!(
                "webhooks queued {} delivered {} failures {} retries {} pending {} dropped {}\n",
                s.queued, s.delivered, s.failures, s.retries, s.pending, s.dropped
            ));
        }
        out
    };
    let backend = ConsoleBackend {
        status: Box::new(status),
        stats: Box::new(stats),
        reload: Box::new(move || match &reloader {
            Some(r) => match r.reload() {
                Ok(report) => {
                    log::info!("console: configuration reloaded: {report}");
                    format!("reload: {report}\n")
                }
                Err(e) => format!("reload: {e}\n"),
            },
            None => "reload: this run has no configuration source to reload\n".to_string(),
        }),
    };
    let cfg = ConsoleConfig {
        listen,
        password: cfg.console.password.clone(),
        idle: crate::publish::console::IDLE,
    };
    match Console::start(cfg, live_calls.clone(), backend) {
        Ok(c) => {
            log::info!("console at telnet://{}", c.addr);
            Some(c)
        }
        Err(e) => {
            log::warn!("{e}; running without the console");
            None
        }
    }
}

fn write_summary(path: &Path, summary: &RunSummary) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "calltap: {} calls; counters {}; summary in {}",
        summary.calls.len(),
        serde_json::to_string(&summary.counters)?,
        path.display()
    );
    Ok(())
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static RELOAD_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD_REQUESTED.store(true, Ordering::Release);
    } else {
        STOP_REQUESTED.store(true, Ordering::Release);
    }
}

fn install_signal_handlers(shutdown: &Arc<Shutdown>) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let prev = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            bail!("cannot install handler for signal {sig}");
        }
    }
    let s = shutdown.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while !STOP_REQUESTED.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(50));
            }
            s.stop.store(true, Ordering::Release);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use calltap_common::PacketMeta;
    use crossbeam_channel::unbounded;

    use super::*;
    use crate::pipeline::group::GROUP;

    fn record(ts_ns: u64, frame: &[u8]) -> Vec<u8> {
        let meta = PacketMeta {
            ts_ns,
            cap_len: frame.len() as u32,
            wire_len: frame.len() as u32,
            ..PacketMeta::default()
        };
        let mut bytes = meta.as_bytes().to_vec();
        bytes.extend_from_slice(frame);
        bytes
    }

    fn shared() -> Arc<Shutdown> {
        Arc::new(Shutdown {
            stop: Arc::new(AtomicBool::new(false)),
            drained: AtomicU32::new(0),
            signalled_upto: AtomicU64::new(0),
        })
    }

    /// A media record captured after the signalling thread's mark waits until the mark passes
    /// it (the BYE of the call that had its endpoints may be in the signalling ring still).
    #[test]
    fn a_record_waits_until_signalling_has_caught_up_with_it() {
        let s = shared();
        s.signalled_upto.store(1_000, Ordering::Release);
        assert_eq!(s.wait_signalled(900, || unreachable!()), 1_000);
        let moved = {
            let s = s.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(1));
                s.signalled_upto.fetch_max(2_000, Ordering::AcqRel);
            })
        };
        assert_eq!(s.wait_signalled(1_500, || 0), 2_000);
        moved.join().unwrap();
    }

    /// A signalling thread that does not move (stuck, or drowning in SIP) holds the audio
    /// back only so long: the worker goes on, and records captured until then do not wait.
    #[test]
    fn a_stuck_signalling_thread_does_not_stall_the_audio() {
        let s = shared();
        let started = Instant::now();
        assert_eq!(s.wait_signalled(5_000, || 7_000), 7_000);
        assert!(started.elapsed() >= SIGNALLED_WAIT);
        assert!(started.elapsed() < SIGNALLED_WAIT * 20);
    }

    /// Every record is seen once per step, a whole group warmed before any of it is handled,
    /// records intact and in order, buffers returned to the capture thread, `max` respected.
    #[test]
    fn grouped_drain_warms_each_group_before_handling_it() {
        let (tx, rx) = unbounded();
        let (recycle, recycled) = unbounded();
        let total = GROUP + 5;
        for i in 0..total {
            tx.send(record(i as u64, &vec![i as u8; 20 + i])).unwrap();
        }
        let mut input = Input::Channel(RecordQueue { rx, recycle });
        let mut group = Group::default();
        let mut seen = Vec::new();
        let n = input.drain_grouped(total - 1, &mut group, |step, rec| {
            assert_eq!(
                rec.frame,
                vec![rec.meta.ts_ns as u8; 20 + rec.meta.ts_ns as usize]
            );
            seen.push((step, rec.meta.ts_ns));
        });
        assert_eq!(n, total - 1);
        let mut want = Vec::new();
        for ids in [0..GROUP as u64, GROUP as u64..total as u64 - 1] {
            for step in [Step::Warm, Step::WarmAudio, Step::Handle] {
                want.extend(ids.clone().map(|i| (step, i)));
            }
        }
        assert_eq!(seen, want);
        assert_eq!(recycled.len(), total - 1);
        // The last record is still there for the next drain.
        let mut rest = Vec::new();
        input.drain_grouped(usize::MAX, &mut group, |step, rec| {
            rest.push((step, rec.meta.ts_ns))
        });
        let last = total as u64 - 1;
        assert_eq!(
            rest,
            [
                (Step::Warm, last),
                (Step::WarmAudio, last),
                (Step::Handle, last)
            ]
        );
    }
}
