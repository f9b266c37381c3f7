//! The store part: the active-call journal (and the calls an earlier run left in it), the CDR
//! writer (database, or the CSV journal while it is away) and the archiver; before them, the
//! CDR database's schema ([`prepare_database`]).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    publish::webhook::WebhookSender,
    store::{
        archive::{queue::Job, target::TargetSpec, ArchiveConfig, Archiver, OnArchived},
        callstore::{self, CallStore, JournalThread, JournalWriter, Loaded, ACTIVE_DIR},
        db::{self, redact},
        writer::{CdrWriter, WriterConfig},
    },
};

/// Where the media workers' audio buffers are kept across a crash (see
/// [`crate::store::spool::arena`]), under the data directory.
pub const SPOOL_DIR: &str = "spool";

/// Creates and migrates the CDR database before any part connects to it: the CDR writer, the
/// archiver, the rules loader and the API only connect, so the migrations run once, here (two
/// migrators at once on a fresh SQLite file fail: "table calls already exists"). With `retry`
/// (the daemon's stop flag), a database that does not answer now is migrated by a background
/// thread once it does; the parts meanwhile see it as away (CSV journal, default rules, 503).
/// Without it (one-shot commands), one attempt. True when the schema is in place.
pub fn prepare_database(cfg: &Config, retry: Option<Arc<AtomicBool>>) -> anyhow::Result<bool> {
    let url = cfg.database_url();
    let timeout = Duration::from_millis(cfg.database.write_timeout_ms.max(2000));
    let rt = crate::runtime::current_thread()?;
    let attempt = move |rt: &tokio::runtime::Runtime, url: &str| {
        rt.block_on(async {
            let db = db::prepare(url, timeout).await?;
            db.close().await;
            Ok::<_, db::DbError>(())
        })
    };
    match attempt(&rt, &url) {
        Ok(()) => {
            log::info!("CDR database ready ({})", redact(&url));
            return Ok(true);
        }
        Err(e) => log::warn!("CDR database: {e}; CDRs go to the CSV journal until it is ready"),
    }
    let Some(stop) = retry else {
        return Ok(false);
    };
    let first = Duration::from_millis(cfg.database.retry_interval_ms.max(100));
    std::thread::Builder::new()
        .name("db-schema".into())
        .spawn(move || {
            let mut pause = first;
            let mut next = Instant::now() + pause;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                match attempt(&rt, &url) {
                    Ok(()) => {
                        log::info!("CDR database ready ({})", redact(&url));
                        return;
                    }
                    Err(e) => log::debug!("CDR database: still not ready: {e}"),
                }
                pause = (pause * 2).min(Duration::from_secs(60));
                next = Instant::now() + pause;
            }
        })?;
    Ok(false)
}

/// The active-call journal of a run.
pub struct Journal {
    pub writer: JournalWriter,
    pub thread: JournalThread,
    /// Calls an earlier run was recording when it died: resumed before records are handled.
    pub resumed: Loaded,
}

impl Journal {
    /// Opens `<data_dir>/active`, loads what an earlier run left, and lays the audio that run
    /// had buffered into its recordings before any worker maps its own buffers or a call goes
    /// on.
    pub fn open(cfg: &Config) -> anyhow::Result<Journal> {
        let data = &cfg.storage.data_dir;
        let store = CallStore::open(&data.join(ACTIVE_DIR))?;
        let resumed = store.load();
        if resumed.corrupt > 0 {
            log::error!(
                "{} unreadable active-call journal file(s) set aside in {}",
                resumed.corrupt,
                store.dir().display()
            );
        }
        if !resumed.calls.is_empty() {
            log::info!(
                "resuming {} call(s) from the active-call journal",
                resumed.calls.len()
            );
        }
        callstore::recover_journaled(&data.join(SPOOL_DIR), &resumed.calls);
        let (writer, thread) = JournalWriter::start(store)?;
        Ok(Journal {
            writer,
            thread,
            resumed,
        })
    }
}

/// Where finished calls go: the CDR writer and the archiver.
pub struct Store {
    /// Database, or CSV journal while the database is away; never blocks its caller.
    pub writer: CdrWriter,
    /// Finished recordings: spool -> archive, retention, disk alarm. Its own thread; handing a
    /// file over never waits for the archive.
    pub archiver: Archiver,
}

impl Store {
    /// With an archive configured, each archived WAV is a `recording.archived` webhook through
    /// `hooks` (the raw RTP pcap beside it is not; without an archive, recordings stay where
    /// `call.ended` says).
    pub fn start(cfg: &Config, hooks: Option<WebhookSender>) -> anyhow::Result<Store> {
        let writer = CdrWriter::start(WriterConfig::new(&cfg.database, &cfg.storage))?;
        let archiving = !matches!(cfg.archive.target, TargetSpec::Spool);
        let on_archived = hooks.filter(|_| archiving).map(|hooks| {
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
        Ok(Store { writer, archiver })
    }
}
