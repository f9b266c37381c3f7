//! The recording pipeline `calltap run` and `calltap replay` share: a signalling worker and the
//! media workers, built the same way from the configuration. Only who drives them differs:
//! threads fed by capture rings ([`super::media`], [`super::signalling`]), or one thread reading
//! capture files ([`super::replay`]).

use std::{path::PathBuf, sync::Arc};

use crate::{
    classify::MediaTable,
    config::Config,
    pipeline::{
        media::{MediaConfig, MediaWorker},
        signalling::SignallingWorker,
    },
    rules::LiveRules,
    store::callstore::JournalWriter,
};

/// The workers of one run.
pub struct Workers<T: MediaTable> {
    pub signalling: SignallingWorker<T>,
    pub media: Vec<MediaWorker>,
}

/// What a run that outlives a crash adds (a replay has neither).
#[derive(Default)]
pub struct Durability {
    /// Where the media workers keep their audio buffers, so a crash loses none
    /// (`<data_dir>/spool`).
    pub spool_dir: Option<PathBuf>,
    /// The active-call journal, so a restart takes the calls over.
    pub journal: Option<JournalWriter>,
    /// Offline (a replay): the capture waits for the disk rather than lose audio.
    pub backpressure: bool,
}

impl<T: MediaTable> Workers<T> {
    /// The signalling worker (writing `table`, deciding recordings by `rules`) and
    /// `[capture] workers` media workers, each with its spool thread.
    pub fn new(cfg: &Config, table: T, rules: Arc<LiveRules>, durability: Durability) -> Self {
        let n = cfg.capture.worker_count();
        let reassembly = &cfg.reassembly;
        let mut signalling = SignallingWorker::new(table, n, cfg.calls.tracker(), 0)
            .with_reassembly(reassembly.tcp, reassembly.ipfrag);
        signalling.set_sip_ports(&cfg.capture.sip_ports);
        let idle_s = cfg.capture.learned_sip_port_idle_s;
        signalling.set_learned_port_idle(idle_s.saturating_mul(1_000_000_000));
        signalling.set_rules(rules);
        let mut mcfg = MediaConfig::new(&cfg.storage, &cfg.calls, n);
        mcfg.spool.dir = durability.spool_dir;
        mcfg.spool.backpressure = durability.backpressure;
        let mut media: Vec<MediaWorker> =
            (0..n).map(|i| MediaWorker::new(i, mcfg.clone())).collect();
        if let Some(journal) = durability.journal {
            signalling = signalling.with_store(journal.clone());
            media = media
                .into_iter()
                .map(|w| w.with_store(journal.clone()))
                .collect();
        }
        Workers { signalling, media }
    }
}
