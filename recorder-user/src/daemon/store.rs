//! The store part: the active-call journal (and the calls an earlier run left in it), the CDR
//! writer (database, or the CSV journal while it is away) and the archiver.

use crate::{
    config::Config,
    publish::webhook::WebhookSender,
    store::{
        archive::{queue::Job, target::TargetSpec, ArchiveConfig, Archiver, OnArchived},
        callstore::{self, CallStore, JournalThread, JournalWriter, Loaded, ACTIVE_DIR},
        writer::{CdrWriter, WriterConfig},
    },
};

/// Where the media workers' audio buffers are kept across a crash (see
/// [`crate::store::spool::arena`]), under the data directory.
pub const SPOOL_DIR: &str = "spool";

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
