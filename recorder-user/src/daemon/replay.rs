//! The daemon's parts run inline on one thread over capture files (`calltap replay`, the tests
//! and the pipeline bench): the same classifier and the same [`Workers`] as live capture, fed
//! in capture order, so results are deterministic.

use std::path::PathBuf;

use calltap_common::{classify::counter_for, counter, flags, COUNTERS, SIGNALLING_RING};
use serde::Serialize;

use super::workers::{Durability, Workers};
use crate::{
    capture::{pcap::read_file, CaptureError, Record},
    classify::{classify_frame, SharedMediaTable, UserTables},
    config::Config,
    pipeline::{
        group::Group,
        media::{MediaWorker, WorkerStats},
        signalling::SignallingStats,
        Control,
    },
    rules::{LiveRules, RuleSet},
    store::cdr::Cdr,
};

/// Totals of a replay.
#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    pub packets: u64,
    pub skipped_link_types: u64,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    pub signalling: SignallingStats,
    pub workers: Vec<WorkerStats>,
    pub calls: usize,
    /// Files that could not be read to the end, with the reason (file and byte offset).
    pub errors: Vec<String>,
}

/// Replays `files` in order; every finished call is passed to `on_cdr`.
pub fn replay(cfg: &Config, files: &[PathBuf], mut on_cdr: impl FnMut(&Cdr)) -> ReplaySummary {
    let table = SharedMediaTable::default();
    let tables = UserTables::new(cfg.capture.xdp(), &cfg.capture.sip_ports, table.clone());
    let n = cfg.capture.worker_count();
    // Offline: no rules database, but `[recording] default` applies as it does live.
    let rules = LiveRules::new(RuleSet::default_only(cfg.recording.default));
    let Workers {
        signalling: mut sig,
        media: mut workers,
    } = Workers::new(
        cfg,
        table,
        rules,
        Durability {
            backpressure: true,
            ..Durability::default()
        },
    );
    // Each worker's records wait in a group until it is full or something else must happen
    // first (a SIP record, a tick, the end): handled in capture order all the same.
    let mut groups: Vec<Group> = (0..n).map(|_| Group::default()).collect();
    let flush = |groups: &mut Vec<Group>, workers: &mut Vec<MediaWorker>| {
        for (g, w) in groups.iter_mut().zip(workers.iter_mut()) {
            if !g.is_empty() {
                g.feed(w);
            }
        }
    };
    let mut queue: Vec<(u32, Control)> = Vec::new();
    let mut done: Vec<Cdr> = Vec::new();
    let mut timeouts = Vec::new();
    let mut counters = [0u64; COUNTERS as usize];
    let mut calls = 0usize;
    let mut last_tick = 0u64;
    let mut last_ts = 0u64;
    let mut packets = 0u64;
    let mut skipped = 0u64;
    let mut errors = Vec::new();
    let mut sealer = Sealer::start();

    let deliver =
        |queue: &mut Vec<(u32, Control)>, workers: &mut Vec<MediaWorker>, done: &mut Vec<Cdr>| {
            for (w, msg) in queue.drain(..) {
                if let Some(worker) = workers.get_mut(w as usize) {
                    worker.control(msg, done);
                }
            }
        };

    for file in files {
        let result = read_file(file, |pkt| {
            let (v, meta) = classify_frame(pkt.frame, &tables, pkt.ts_ns, pkt.wire_len, 0);
            counters[counter::SEEN as usize] += 1;
            counters[counter::BYTES as usize] += pkt.wire_len as u64;
            counters[counter_for(v.class) as usize] += 1;
            if v.flags & flags::ENCAP != 0 {
                counters[counter::ENCAP as usize] += 1;
            }
            let ts = pkt.ts_ns;
            last_ts = last_ts.max(ts);
            let rec = Record {
                meta,
                frame: pkt.frame,
            };
            if v.target == SIGNALLING_RING {
                flush(&mut groups, &mut workers);
                sig.handle(&rec, &mut queue);
                deliver(&mut queue, &mut workers, &mut done);
            } else if let (Some(w), Some(g)) = (
                workers.get_mut(v.target as usize),
                groups.get_mut(v.target as usize),
            ) {
                g.push(&rec.meta, rec.frame);
                if g.is_full() {
                    g.feed(w);
                }
            }
            if last_ts.saturating_sub(last_tick) >= 1_000_000_000 {
                flush(&mut groups, &mut workers);
                last_tick = last_ts;
                sig.tick(last_ts, &mut queue);
                deliver(&mut queue, &mut workers, &mut done);
                for w in workers.iter_mut() {
                    w.tick(last_ts, &mut timeouts);
                    w.reap(last_ts, &mut done);
                }
                for t in timeouts.drain(..) {
                    sig.media_timeout(t, &mut queue);
                }
                deliver(&mut queue, &mut workers, &mut done);
            }
            for cdr in done.drain(..) {
                calls += 1;
                sealer.submit(cdr, &mut on_cdr);
            }
        });
        match result {
            Ok(s) => {
                packets += s.packets;
                skipped += s.skipped;
            }
            Err(e @ CaptureError::BadFile { .. }) | Err(e @ CaptureError::File { .. }) => {
                errors.push(e.to_string())
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    flush(&mut groups, &mut workers);
    sig.finish(last_ts, "capture_end", &mut queue);
    deliver(&mut queue, &mut workers, &mut done);
    for w in workers.iter_mut() {
        w.reap(u64::MAX, &mut done);
    }
    for cdr in done.drain(..) {
        calls += 1;
        sealer.submit(cdr, &mut on_cdr);
    }
    sealer.finish(&mut on_cdr);
    ReplaySummary {
        packets,
        skipped_link_types: skipped,
        counters: counter::NAMES
            .iter()
            .zip(counters.iter())
            .map(|(n, v)| (*n, *v))
            .collect(),
        signalling: sig.stats.clone(),
        workers: workers.iter().map(|w| w.stats.clone()).collect(),
        calls,
        errors,
    }
}

/// Seals finished recordings (fsync, sha256) on a thread of its own, as `calltap run`'s CDR
/// thread does: waiting for the disk once per call would otherwise pace the whole replay. One
/// thread, so CDRs still reach the caller in the order the calls finished.
struct Sealer {
    thread: Option<(
        crossbeam_channel::Sender<Cdr>,
        crossbeam_channel::Receiver<Cdr>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Sealer {
    fn start() -> Sealer {
        let (tx, rx) = crossbeam_channel::unbounded::<Cdr>();
        let (sealed_tx, sealed_rx) = crossbeam_channel::unbounded::<Cdr>();
        let spawned = std::thread::Builder::new()
            .name("seal".into())
            .spawn(move || {
                for mut cdr in rx {
                    cdr.seal_recording();
                    if sealed_tx.send(cdr).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(h) => Sealer {
                thread: Some((tx, sealed_rx, h)),
            },
            Err(e) => {
                log::warn!("no sealing thread ({e}): recordings are sealed inline");
                Sealer { thread: None }
            }
        }
    }

    /// Queues `cdr`, and passes on those sealed so far.
    fn submit(&mut self, mut cdr: Cdr, on_cdr: &mut impl FnMut(&Cdr)) {
        if let Some((tx, sealed, _)) = &self.thread {
            match tx.send(cdr) {
                Ok(()) => {
                    for c in sealed.try_iter() {
                        on_cdr(&c);
                    }
                    return;
                }
                // The thread is gone: in order, what it finished, then this one inline.
                Err(e) => {
                    cdr = e.into_inner();
                    for c in sealed.try_iter() {
                        on_cdr(&c);
                    }
                    self.thread = None;
                }
            }
        }
        cdr.seal_recording();
        on_cdr(&cdr);
    }

    /// Waits for the rest.
    fn finish(self, on_cdr: &mut impl FnMut(&Cdr)) {
        if let Some((tx, sealed, handle)) = self.thread {
            drop(tx);
            for c in sealed.iter() {
                on_cdr(&c);
            }
            let _ = handle.join();
        }
    }
}
