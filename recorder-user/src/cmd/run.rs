//! `calltap run`: live capture, the daemon assembled from its parts ([`crate::daemon`]): one
//! pinned thread per media worker, one signalling thread, one thread writing CDRs; the main
//! thread waits for SIGINT/SIGTERM and reloads on SIGHUP.

use std::{fs, sync::Arc};

use anyhow::{bail, Context as _};
use calltap_common::counter;
use crossbeam_channel::bounded;

use crate::{
    config::Config,
    daemon::{
        capture::Capture,
        cdrs::{CdrSinks, CdrThread},
        control::{ControlPlane, ReloadSource},
        limits::assess_limits,
        media::Media,
        publish::{start_webhooks, Publish, PublishParts},
        shutdown::Shutdown,
        signalling::{Senders, Signalling, SignallingFeeds},
        store::{prepare_database, Journal, Store, SPOOL_DIR},
        summary::{write_summary, RunSummary},
        workers::{Durability, Workers},
    },
    pipeline::MediaTimeout,
    publish::{live::LiveSink, metrics::LiveStats},
    queues,
    rules::{LiveRules, RuleSet},
    store::cdr::Cdr,
};

/// Runs until SIGINT or SIGTERM; SIGHUP reloads the configuration (`reload`).
pub fn run(cfg: Config, reload: Option<ReloadSource>) -> anyhow::Result<()> {
    if cfg.capture.interfaces.is_empty() {
        bail!("no capture interface: give --interface IF or set [capture] interfaces");
    }
    let data = cfg.storage.data_dir.clone();
    fs::create_dir_all(&data).with_context(|| format!("creating data dir {}", data.display()))?;
    let n = cfg.capture.worker_count();
    let shutdown = Shutdown::install()?;
    // Before any part connects to the database: they only connect, the schema is made here.
    prepare_database(&cfg, Some(shutdown.stop.clone()))?;
    let capacity = assess_limits(&cfg, n);
    let (capture, inputs) = Capture::start(&cfg, n, shutdown.stop.clone())?;
    let journal = Journal::open(&cfg)?;
    let rules = LiveRules::new(RuleSet::default_only(cfg.recording.default));
    let durability = Durability {
        spool_dir: Some(data.join(SPOOL_DIR)),
        journal: Some(journal.writer.clone()),
        // Live capture never waits for the disk: a full spool drops audio and counts it.
        backpressure: false,
    };
    let workers = Workers::new(&cfg, inputs.table, rules.clone(), durability);
    let live = Arc::new(LiveStats::new(n));
    let (cdr_tx, cdr_rx) = bounded::<Cdr>(queues::CDR);
    let (timeout_tx, timeouts) = bounded::<MediaTimeout>(queues::TIMEOUTS);
    let media = Media::start(
        workers.media,
        inputs.media,
        cdr_tx,
        timeout_tx,
        &shutdown,
        &live,
    )?;
    let (control, settings) = ControlPlane::new(&media.control, rules, reload);
    let webhooks = start_webhooks(&cfg, &control.live_calls)?;
    let sink = LiveSink::new(Senders(media.control.clone()), control.live_calls.clone());
    let feeds = SignallingFeeds { timeouts, settings };
    let signalling = Signalling::start(
        workers.signalling,
        inputs.signalling,
        sink,
        journal.resumed,
        feeds,
        &shutdown,
        &live,
    )?;
    // Recording rules: the default mode until the database hands over the rules (retried in
    // the background); the API replaces them after each change.
    let stop = shutdown.stop.clone();
    crate::store::rules::spawn_loader(&cfg.database, &data, control.rules.clone(), stop)?;
    let hooks = webhooks.as_ref().and_then(|w| w.sender());
    let store = Store::start(&cfg, hooks.clone())?;
    let publish = Publish::start(PublishParts {
        cfg: &cfg,
        capture: &capture,
        fills: inputs.fills,
        live: &live,
        capacity: &capacity,
        store: &store,
        webhooks: &webhooks,
        control: &control,
        workers: n,
    })?;
    let Store { writer, archiver } = store;
    let cdrs = CdrThread::start(
        cdr_rx,
        CdrSinks {
            jsonl: data.join("calls.jsonl"),
            metrics: publish.metrics.clone(),
            live_calls: control.live_calls.clone(),
            hooks,
            journal: journal.writer,
            archive: archiver.submitter(),
            writer,
        },
    )?;

    let ready = data.join("calltap.ready");
    fs::write(&ready, format!("{}\n", capture.source))?;
    log::info!(
        "capturing on {} ({}), {n} media workers, data in {}",
        cfg.capture.interfaces.join(","),
        capture.source,
        data.display()
    );
    shutdown.wait(control.reloader.as_deref());

    log::info!("stopping: draining rings and closing open calls");
    // The workers stop once every sender of their control queue is gone.
    control.close();
    let signalling = signalling.join()?;
    let workers = media.join()?;
    let (calls, calls_not_listed, cdr_store) = cdrs.join()?;
    // The workers and the CDR thread are gone: the journal thread writes what they queued (the
    // calls they closed are removed) and ends.
    let totals = journal.thread.finish();
    log::info!(
        "active-call journal: {} writes, {} removals, {} errors",
        totals.writes,
        totals.removals,
        totals.errors
    );
    // Every CDR is handed over: a last bounded attempt, the rest waits in the queue file.
    let archive = archiver.finish();
    let summary = RunSummary {
        source: capture.source.clone(),
        attachments: capture.attachments.clone(),
        counters: counter::NAMES
            .iter()
            .copied()
            .zip(capture.totals())
            .collect(),
        ring_full_per_cpu: capture.ring_full_per_cpu(),
        signalling,
        workers,
        calls,
        calls_not_listed,
        cdr_store,
        archive,
    };
    publish.stop(webhooks);
    write_summary(&data.join("run-summary.json"), &summary)?;
    let _ = fs::remove_file(&ready);
    capture.stop();
    Ok(())
}
