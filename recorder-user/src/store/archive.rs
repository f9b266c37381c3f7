//! Two-phase files: calls record into the spool (fast local disk); at call end the archiver
//! copies each finished file to the archive (a directory, typically a NAS mount, or an
//! S3-compatible object store), verifies the copy (size and sha256 read back from the archive),
//! and only then deletes the spool copy and points the database row at the archive.
//!
//! Nothing is lost while the archive is away: every file handed over is first written to a
//! persistent queue ([`queue`]) and stays in the spool until its copy verifies; the queue is
//! retried with exponential backoff and re-read on start. On start the archiver also reads the
//! part of `calls.jsonl` written since it last looked, so a file whose CDR was written just
//! before a crash (but never queued) is archived too. It never touches any other spool file:
//! those may belong to calls in progress (or calls a restarted recorder resumes).
//!
//! The archiver runs on its own thread (a current-thread tokio runtime for S3 and the database)
//! behind a bounded channel: [`Archiver::submit`] never waits for the archive; when the channel
//! is full the caller writes the jobs to the queue file itself and the thread picks them up on
//! its next pass. The same thread runs retention ([`super::retention`]) and the disk alarm.
//!
//! Retention's deletions reach the database the same way: each recording file is noted in the
//! queue before it is deleted, and once it is gone its `recordings` row is marked deleted
//! (`deleted_ns`, `deleted_reason = 'retention'`), retried with backoff while the database is
//! away, so the API can answer 410 Gone (deleted, and when) instead of 404.

pub mod manifest;
pub mod queue;
pub mod target;

use std::{
    io::{BufRead as _, Seek as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;

use self::{
    manifest::{Manifest, ManifestError, MANIFEST_FILE},
    queue::{Deletion, Job, Queue, QueueError, QUEUE_FILE},
    target::{is_safe_rel, ArchiveError, Expected, S3Options, Target, TargetSpec},
};
use super::{
    cdr::Cdr,
    config::{ArchiveSettings, DatabaseConfig, StorageConfig},
    db::Db,
    retention::{self, RetentionConfig},
    wav::sha256_file,
};

/// Jobs in flight between the CDR thread and the archiver before callers spill to the queue
/// file themselves.
const CHANNEL: usize = 256;
/// Longest pause between attempts, in multiples of the retry interval.
const MAX_BACKOFF_FACTOR: u32 = 32;
/// How often retention and the disk alarm run.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// A database row that still does not exist this long after its file was archived (its CDR
/// was never stored) is given up on; the file itself is safe in the archive.
const DB_UPDATE_GIVE_UP_S: u64 = 7 * 86_400;
/// On stop, how long the archiver keeps trying what is queued before leaving it to the next run.
const FINAL_PASS: Duration = Duration::from_secs(10);
/// `recordings.deleted_reason` of a recording retention deleted.
pub const RETENTION_REASON: &str = "retention";

#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("starting the archiver thread: {0}")]
    Spawn(std::io::Error),
    #[error("creating the archiver's runtime: {0}")]
    Runtime(std::io::Error),
    /// Archiving into the data dir (or the data dir into the archive) would delete the only
    /// copy of a recording, and retention would sweep the database and journals.
    #[error(
        "[archive] target {archive} overlaps the data dir {data}: the archive must be a \
         directory of its own, outside the data dir"
    )]
    Overlap { archive: String, data: String },
}

/// True when one of the two directories lies inside the other (or they are the same), also
/// through symlinks for the parts that exist.
fn overlaps(a: &Path, b: &Path) -> bool {
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (a, b) = (real(a), real(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Called once per file after its archive copy verified and the spool copy is gone, with the
/// file's job (call uuid, size, sha256, whether it is the raw RTP pcap) and the archive location
/// (a path or `s3://bucket/key`): the hook for `recording.archived` webhooks. Runs on the
/// archiver thread, so it must not block long.
pub type OnArchived = Box<dyn Fn(&queue::Job, &str) + Send>;

#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    pub target: TargetSpec,
    pub s3: S3Options,
    pub data_dir: PathBuf,
    /// The spool root: the recordings dir; relative paths under it are kept in the archive.
    pub spool: PathBuf,
    /// First pause after a failure; doubled per failure up to 32 times this.
    pub retry_interval: Duration,
    /// Where the archived location is recorded (best effort, retried).
    pub database_url: Option<String>,
    pub db_timeout: Duration,
    pub retention: RetentionConfig,
}

impl ArchiveConfig {
    /// The archiver's settings from its sections (`[archive]`, `[retention]`; the database
    /// and the data directory are the storage's).
    pub fn new(
        archive: &ArchiveSettings,
        retention: RetentionConfig,
        database: &DatabaseConfig,
        storage: &StorageConfig,
    ) -> ArchiveConfig {
        ArchiveConfig {
            target: archive.target.clone(),
            s3: archive.s3.clone(),
            data_dir: storage.data_dir.clone(),
            spool: storage.recordings_dir(),
            retry_interval: Duration::from_millis(archive.retry_interval_ms),
            database_url: Some(database.url_in(&storage.data_dir)),
            db_timeout: Duration::from_millis(database.write_timeout_ms),
            retention,
        }
    }
}

/// Live archiver counters, for the run summary and `/metrics` (the lead wires them).
#[derive(Debug, Default)]
pub struct ArchiveCounters {
    /// Files queued (not yet archived, or archived with the database row not updated yet).
    pub queue_len: AtomicU64,
    /// Of those, files still waiting in the spool for the archive.
    pub queue_unarchived: AtomicU64,
    /// Files archived and verified (spool copy removed).
    pub archived_total: AtomicU64,
    pub bytes_archived_total: AtomicU64,
    /// Failed archive attempts (archive unavailable, copy did not verify).
    pub failures_total: AtomicU64,
    /// Archive copies that did not verify (size or sha256).
    pub verify_failures_total: AtomicU64,
    /// Spool files that are not what their CDR says (kept, never archived or deleted).
    pub source_mismatches_total: AtomicU64,
    /// Jobs whose spool file was gone and not in the archive either.
    pub missing_total: AtomicU64,
    /// Retry passes after a failure.
    pub retries_total: AtomicU64,
    /// Database rows pointed at the archive.
    pub db_updates_total: AtomicU64,
    pub db_update_failures_total: AtomicU64,
    /// The spool (recordings) filesystem: size and used bytes, used share in millionths.
    pub spool_fs_size_bytes: AtomicU64,
    pub spool_fs_used_bytes: AtomicU64,
    pub spool_fs_used_ppm: AtomicU64,
    /// Set while the spool filesystem is at or above `[retention] spool_alarm_percent`.
    pub disk_full_alarm: AtomicBool,
    /// Set while the archive is reachable (last attempt succeeded).
    pub archive_up: AtomicBool,
    pub retention_deleted_total: AtomicU64,
    pub retention_deleted_bytes_total: AtomicU64,
    /// Recordings retention deleted whose database row does not say so yet (queued).
    pub retention_db_pending: AtomicU64,
    /// Database rows marked deleted by retention.
    pub retention_db_marked_total: AtomicU64,
}

/// A copy of [`ArchiveCounters`] for reports.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ArchiveSnapshot {
    pub target: String,
    pub queue_len: u64,
    pub queue_unarchived: u64,
    pub archived_total: u64,
    pub bytes_archived_total: u64,
    pub failures_total: u64,
    pub verify_failures_total: u64,
    pub source_mismatches_total: u64,
    pub missing_total: u64,
    pub retries_total: u64,
    pub db_updates_total: u64,
    pub db_update_failures_total: u64,
    pub spool_fs_size_bytes: u64,
    pub spool_fs_used_bytes: u64,
    /// 0..1.
    pub spool_fs_used_fraction: f64,
    pub disk_full_alarm: bool,
    pub archive_up: bool,
    pub retention_deleted_total: u64,
    pub retention_deleted_bytes_total: u64,
    pub retention_db_pending: u64,
    pub retention_db_marked_total: u64,
}

impl ArchiveCounters {
    pub fn snapshot(&self) -> ArchiveSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Acquire);
        ArchiveSnapshot {
            target: String::new(),
            queue_len: g(&self.queue_len),
            queue_unarchived: g(&self.queue_unarchived),
            archived_total: g(&self.archived_total),
            bytes_archived_total: g(&self.bytes_archived_total),
            failures_total: g(&self.failures_total),
            verify_failures_total: g(&self.verify_failures_total),
            source_mismatches_total: g(&self.source_mismatches_total),
            missing_total: g(&self.missing_total),
            retries_total: g(&self.retries_total),
            db_updates_total: g(&self.db_updates_total),
            db_update_failures_total: g(&self.db_update_failures_total),
            spool_fs_size_bytes: g(&self.spool_fs_size_bytes),
            spool_fs_used_bytes: g(&self.spool_fs_used_bytes),
            spool_fs_used_fraction: g(&self.spool_fs_used_ppm) as f64 / 1e6,
            disk_full_alarm: self.disk_full_alarm.load(Ordering::Acquire),
            archive_up: self.archive_up.load(Ordering::Acquire),
            retention_deleted_total: g(&self.retention_deleted_total),
            retention_deleted_bytes_total: g(&self.retention_deleted_bytes_total),
            retention_db_pending: g(&self.retention_db_pending),
            retention_db_marked_total: g(&self.retention_db_marked_total),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::AcqRel);
}

fn lock(q: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_s() -> u64 {
    crate::clock::unix_ns() / 1_000_000_000
}

/// The note for a file retention is about to delete from `target` (`file`: a path under the
/// spool or archive root, or an object key): the paths its `recordings` row may hold. None for
/// the raw RTP pcap beside a WAV, which no row names in `recordings.path`.
fn deletion_of(target: &Target, spool: &Path, file: &str, at_ns: u64) -> Option<Deletion> {
    if file.ends_with(".pcap") {
        return None;
    }
    let in_spool = |rel: &str| spool.join(rel).display().to_string();
    let (object, stored) = match target {
        // No archive: the row keeps the spool path.
        Target::Spool => (false, vec![file.to_string()]),
        Target::Dir(root) => {
            let mut stored = vec![file.to_string()];
            if let Some(rel) = Path::new(file)
                .strip_prefix(root)
                .ok()
                .and_then(|r| r.to_str())
            {
                stored.push(in_spool(rel));
            }
            (false, stored)
        }
        Target::S3 { bucket, prefix, .. } => {
            let rel = if prefix.is_empty() {
                Some(file)
            } else {
                file.strip_prefix(prefix.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            let mut stored = vec![format!("s3://{bucket}/{file}")];
            stored.extend(rel.map(in_spool));
            (true, stored)
        }
    };
    Some(Deletion {
        file: file.to_string(),
        object,
        stored,
        at_ns,
        reason: RETENTION_REASON.to_string(),
    })
}

/// The jobs for a CDR's files: the WAV and the raw RTP pcap beside it. Files outside the spool
/// root are refused (logged): the archiver deletes what it archives, and only the spool is its.
pub fn jobs_of(cdr: &Cdr, spool: &Path) -> Vec<Job> {
    let Some(rec) = &cdr.recording else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    let files =
        std::iter::once((&rec.path, false)).chain(rec.raw_rtp_pcap.iter().map(|p| (p, true)));
    for (path, raw) in files {
        let rel = path
            .strip_prefix(spool)
            .ok()
            .and_then(|r| r.to_str())
            .filter(|r| is_safe_rel(r));
        let Some(rel) = rel else {
            log::warn!(
                "call {}: {} is not under the spool {}; not archived",
                cdr.uuid,
                path.display(),
                spool.display()
            );
            continue;
        };
        jobs.push(Job {
            uuid: cdr.uuid.clone(),
            path: path.to_string_lossy().into_owned(),
            rel: rel.to_string(),
            bytes: (!raw).then_some(rec.bytes),
            // Empty when sealing the file failed: the archive copy is then checked against
            // the spool file as it is.
            sha256: (!raw && !rec.sha256.is_empty()).then(|| rec.sha256.clone()),
            raw,
        });
    }
    jobs
}

/// Handle to the archiver thread.
pub struct Archiver {
    tx: Option<Sender<Job>>,
    queue: Arc<Mutex<Queue>>,
    spool: PathBuf,
    counters: Arc<ArchiveCounters>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
    target: String,
}

impl Archiver {
    /// Opens the queue and starts the thread. `on_archived` is called per archived file.
    pub fn start(
        cfg: ArchiveConfig,
        on_archived: Option<OnArchived>,
    ) -> Result<Archiver, ArchiverError> {
        if let TargetSpec::Dir(root) = &cfg.target {
            if overlaps(root, &cfg.data_dir) {
                return Err(ArchiverError::Overlap {
                    archive: root.display().to_string(),
                    data: cfg.data_dir.display().to_string(),
                });
            }
        }
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| QueueError::Io {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let queue = Arc::new(Mutex::new(Queue::open(&cfg.data_dir.join(QUEUE_FILE))?));
        let manifest = Manifest::open(&cfg.data_dir.join(MANIFEST_FILE))?;
        let (tx, rx) = bounded(CHANNEL);
        let counters = Arc::new(ArchiveCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let rt = crate::runtime::current_thread().map_err(ArchiverError::Runtime)?;
        let target = match &cfg.target {
            TargetSpec::Spool => "spool".to_string(),
            TargetSpec::Dir(d) => d.display().to_string(),
            TargetSpec::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        };
        let worker = Worker {
            cfg: cfg.clone(),
            queue: queue.clone(),
            manifest,
            counters: counters.clone(),
            rx,
            stop: stop.clone(),
            on_archived,
            target: None,
            db: None,
            failures: 0,
            next_try: Instant::now(),
            db_failures: 0,
            next_db_try: Instant::now(),
            next_retention: Instant::now(),
            alarmed: false,
        };
        let handle = thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                rt.block_on(worker.run());
                // A copy blocked on a hung NAS must not hold up the daemon's exit: the queue
                // file still lists that file for the next run.
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(ArchiverError::Spawn)?;
        let spool = cfg.spool;
        Ok(Archiver {
            tx: Some(tx),
            queue,
            spool,
            counters,
            stop,
            handle: Some(handle),
            target,
        })
    }

    pub fn counters(&self) -> Arc<ArchiveCounters> {
        self.counters.clone()
    }

    /// A handle for the thread that sees calls end (the CDR thread).
    pub fn submitter(&self) -> ArchiveSubmitter {
        ArchiveSubmitter {
            tx: self.tx.clone(),
            queue: self.queue.clone(),
            spool: self.spool.clone(),
        }
    }

    /// See [`ArchiveSubmitter::submit`].
    pub fn submit(&self, cdr: &Cdr) {
        self.submitter().submit(cdr);
    }

    /// Stops the thread: what is queued is tried once more (bounded), the rest stays in the
    /// queue file for the next run.
    pub fn finish(mut self) -> ArchiveSnapshot {
        self.shutdown();
        let mut s = self.counters.snapshot();
        s.target = self.target.clone();
        s
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.tx = None;
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("archiver thread panicked; its queue file keeps every file");
            }
        }
    }
}

/// Hands finished calls' files to the archiver; cheap to clone.
#[derive(Clone)]
pub struct ArchiveSubmitter {
    tx: Option<Sender<Job>>,
    queue: Arc<Mutex<Queue>>,
    spool: PathBuf,
}

impl ArchiveSubmitter {
    /// Hands a finished call's files (WAV, raw RTP pcap) to the archiver. Call it after the
    /// CDR is in `calls.jsonl` (a crash in between is recovered from there). Never waits for
    /// the archive: when the channel is full the jobs go straight to the queue file (one fsync).
    pub fn submit(&self, cdr: &Cdr) {
        for job in jobs_of(cdr, &self.spool) {
            let job = match &self.tx {
                Some(tx) => match tx.try_send(job) {
                    Ok(()) => continue,
                    Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
                },
                None => job,
            };
            let rel = job.rel.clone();
            if let Err(e) = lock(&self.queue).add(job) {
                // Still safe: the file stays in the spool and calls.jsonl names it, which the
                // next start reads.
                log::error!("archive queue: {rel}: {e}");
            }
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    cfg: ArchiveConfig,
    queue: Arc<Mutex<Queue>>,
    /// What this recorder copied into a directory archive: all retention may delete there.
    manifest: Manifest,
    counters: Arc<ArchiveCounters>,
    rx: Receiver<Job>,
    stop: Arc<AtomicBool>,
    on_archived: Option<OnArchived>,
    target: Option<Target>,
    db: Option<Db>,
    failures: u32,
    next_try: Instant,
    db_failures: u32,
    next_db_try: Instant,
    next_retention: Instant,
    alarmed: bool,
}

/// What one attempt at a job came to.
enum Outcome {
    Archived(String),
    /// Try again later (the archive is away); stop this pass.
    Later,
    /// Drop the job: nothing more can be done for it (logged).
    Drop,
}

impl Worker {
    async fn run(mut self) {
        self.recover_from_jsonl();
        self.publish_queue_len();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            self.take_new(if stopping {
                Duration::ZERO
            } else {
                Duration::from_millis(200)
            });
            if stopping {
                break;
            }
            if Instant::now() >= self.next_try {
                self.pass().await;
            }
            if Instant::now() >= self.next_db_try {
                self.db_pass().await;
            }
            if Instant::now() >= self.next_retention {
                self.next_retention = Instant::now() + RETENTION_EVERY;
                self.retention().await;
            }
        }
        // Last round, bounded: what does not make it waits in the queue file.
        let deadline = Instant::now() + FINAL_PASS;
        let _ = tokio::time::timeout(FINAL_PASS, async {
            self.next_try = Instant::now();
            self.pass().await;
            if Instant::now() < deadline {
                self.next_db_try = Instant::now();
                self.db_pass().await;
            }
        })
        .await;
        self.publish_queue_len();
        if let Some(db) = self.db.take() {
            db.close().await;
        }
    }

    /// Moves jobs from the channel to the queue file, waiting up to `wait` for the first.
    fn take_new(&mut self, wait: Duration) {
        // Timeout or disconnected (stopping): nothing new.
        let first = self.rx.recv_timeout(wait).ok();
        let jobs: Vec<Job> = first.into_iter().chain(self.rx.try_iter()).collect();
        if jobs.is_empty() {
            return;
        }
        let mut q = lock(&self.queue);
        for job in jobs {
            let rel = job.rel.clone();
            if let Err(e) = q.add(job) {
                log::error!("archive queue: {rel}: {e}; the next start finds it in calls.jsonl");
            }
        }
        drop(q);
        // New work is worth an attempt even during backoff only when the archive is up.
        self.publish_queue_len();
    }

    fn publish_queue_len(&self) {
        let q = lock(&self.queue);
        let unarchived = q.entries().filter(|e| e.archived.is_none()).count();
        self.counters
            .retention_db_pending
            .store(q.deletions().count() as u64, Ordering::Release);
        self.counters
            .queue_len
            .store(q.len() as u64, Ordering::Release);
        self.counters
            .queue_unarchived
            .store(unarchived as u64, Ordering::Release);
    }

    /// Queues the recordings of CDRs written to `calls.jsonl` since the last look whose spool
    /// files are still there: the window between the CDR line and the queue entry.
    fn recover_from_jsonl(&mut self) {
        let path = self.cfg.data_dir.join("calls.jsonl");
        let Ok(mut file) = std::fs::File::open(&path) else {
            return;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let mut q = lock(&self.queue);
        let mut offset = q.jsonl_offset();
        if offset > len {
            // Replaced or truncated: read it again from the start (adding is idempotent).
            offset = 0;
        }
        if file.seek(std::io::SeekFrom::Start(offset)).is_err() {
            return;
        }
        let mut reader = std::io::BufReader::new(file);
        let mut line = Vec::new();
        let mut found = 0;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with(b"\n") => break, // a line still being written
                Ok(n) => offset += n as u64,
            }
            let Ok(cdr) = serde_json::from_slice::<Cdr>(&line) else {
                continue;
            };
            for job in jobs_of(&cdr, &self.cfg.spool) {
                if Path::new(&job.path).is_file() && !q.contains(&job.rel) {
                    let rel = job.rel.clone();
                    match q.add(job) {
                        Ok(_) => found += 1,
                        Err(e) => log::error!("archive queue: {rel}: {e}"),
                    }
                }
            }
        }
        if let Err(e) = q.set_jsonl_offset(offset) {
            log::error!("{e}");
        }
        if found > 0 {
            log::info!("archive: {found} finished recordings found in the spool via calls.jsonl");
        }
    }

    fn backoff(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32 << self.failures.saturating_sub(1).min(5);
        self.next_try = Instant::now() + self.cfg.retry_interval * factor.min(MAX_BACKOFF_FACTOR);
    }

    fn target(&mut self) -> Option<Target> {
        if self.target.is_none() {
            match Target::connect(&self.cfg.target, &self.cfg.s3) {
                Ok(t) => self.target = Some(t),
                Err(e) => {
                    log::error!("archive: {e}");
                    return None;
                }
            }
        }
        self.target.clone()
    }

    /// Archives every queued file not archived yet, oldest first; stops at the first sign
    /// that the archive is away.
    async fn pass(&mut self) {
        let pending: Vec<Job> = lock(&self.queue)
            .entries()
            .filter(|e| e.archived.is_none())
            .map(|e| e.job.clone())
            .collect();
        if pending.is_empty() {
            return;
        }
        let Some(target) = self.target() else {
            self.backoff();
            return;
        };
        if self.failures > 0 {
            add(&self.counters.retries_total, 1);
        }
        for job in pending {
            match self.archive_one(&target, &job).await {
                Outcome::Archived(location) => {
                    self.failures = 0;
                    self.counters.archive_up.store(true, Ordering::Release);
                    let mut q = lock(&self.queue);
                    let needs_db =
                        !matches!(target, Target::Spool) && self.cfg.database_url.is_some();
                    let r = if needs_db {
                        q.mark_archived(&job.rel, &location, now_s())
                    } else {
                        q.done(&job.rel)
                    };
                    drop(q);
                    if let Err(e) = r {
                        log::error!("{e}");
                    }
                    if let Some(hook) = &self.on_archived {
                        hook(&job, &location);
                    }
                }
                Outcome::Drop => {
                    if let Err(e) = lock(&self.queue).done(&job.rel) {
                        log::error!("{e}");
                    }
                }
                Outcome::Later => {
                    self.counters.archive_up.store(false, Ordering::Release);
                    self.backoff();
                    break;
                }
            }
            self.publish_queue_len();
        }
        self.publish_queue_len();
    }

    async fn archive_one(&mut self, target: &Target, job: &Job) -> Outcome {
        let spool = PathBuf::from(&job.path);
        let meta = match std::fs::metadata(&spool) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.spool_copy_gone(target, job).await;
            }
            Err(e) => {
                log::error!("archive: {}: {e}", spool.display());
                add(&self.counters.failures_total, 1);
                return Outcome::Later;
            }
        };
        // What the copy must be: the CDR's size and hash; for files the CDR does not hash, the
        // finished spool file's own.
        let source_check = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || sha256_file(&spool)).await
        };
        let actual = match source_check {
            Ok(Ok(sha)) => Expected {
                bytes: meta.len(),
                sha256: sha,
            },
            Ok(Err(e)) => {
                log::error!("archive: reading {}: {e}", spool.display());
                add(&self.counters.failures_total, 1);
                return Outcome::Later;
            }
            Err(e) => {
                log::error!("archive: hashing {}: {e}", spool.display());
                return Outcome::Later;
            }
        };
        if let (Some(bytes), Some(sha)) = (job.bytes, &job.sha256) {
            if actual.bytes != bytes || &actual.sha256 != sha {
                add(&self.counters.source_mismatches_total, 1);
                log::error!(
                    "archive: {}",
                    ArchiveError::Source {
                        path: job.path.clone(),
                        reason: format!(
                            "{} bytes sha256 {}, the CDR says {bytes} bytes sha256 {sha}; kept in the spool",
                            actual.bytes, actual.sha256
                        ),
                    }
                );
                return Outcome::Drop;
            }
        }
        if let Target::Spool = target {
            // No archive: the spool is the final store. Read-only marks the file finished for
            // retention, which deletes nothing else.
            let mut perm = meta.permissions();
            perm.set_mode(perm.mode() & !0o222);
            if let Err(e) = std::fs::set_permissions(&spool, perm) {
                log::warn!("archive: marking {} finished: {e}", spool.display());
            }
            return Outcome::Archived(job.path.clone());
        }
        if let Target::Dir(_) = target {
            // Recorded before the copy: a file of ours the manifest missed would never expire.
            if let Err(e) = self.manifest.add(&job.rel) {
                log::error!("archive: {e}; {} stays in the spool", spool.display());
                add(&self.counters.failures_total, 1);
                return Outcome::Later;
            }
        }
        match target.archive(&spool, &job.rel, &actual).await {
            Ok(()) => {
                let location = target.location(&spool, &job.rel);
                if let Err(e) = std::fs::remove_file(&spool) {
                    // Archived and verified; a leftover spool copy is harmless (archiving it
                    // again is a no-op) and retried.
                    log::warn!("archive: removing {} after archiving: {e}", spool.display());
                    add(&self.counters.failures_total, 1);
                    return Outcome::Later;
                }
                // Empty spool directories stay: a media worker may be about to create a file in
                // one, and removing it under the worker would lose that recording.
                add(&self.counters.archived_total, 1);
                add(&self.counters.bytes_archived_total, actual.bytes);
                log::debug!("archived {} as {location}", job.path);
                Outcome::Archived(location)
            }
            Err(e) => {
                add(&self.counters.failures_total, 1);
                if matches!(e, ArchiveError::Verify { .. }) {
                    add(&self.counters.verify_failures_total, 1);
                }
                if self.failures == 0 {
                    log::error!(
                        "archive: {e}; {} stays in the spool and is retried",
                        job.path
                    );
                } else {
                    log::debug!("archive: {e}");
                }
                Outcome::Later
            }
        }
    }

    /// The spool copy is gone: a previous run archived it and stopped before noting it, or it
    /// is really lost.
    async fn spool_copy_gone(&mut self, target: &Target, job: &Job) -> Outcome {
        if let (Some(bytes), Some(sha256)) = (job.bytes, job.sha256.clone()) {
            if target.holds(&job.rel, &Expected { bytes, sha256 }).await {
                return Outcome::Archived(target.location(Path::new(&job.path), &job.rel));
            }
        }
        add(&self.counters.missing_total, 1);
        log::error!(
            "archive: {} (call {}) is gone from the spool and not verified in the archive",
            job.path,
            job.uuid
        );
        Outcome::Drop
    }

    /// Points database rows at archived files; retried with backoff while the database is
    /// away or the CDR row does not exist yet (still in the CSV journal).
    async fn db_pass(&mut self) {
        let Some(url) = self.cfg.database_url.clone() else {
            return;
        };
        let (waiting, deletions): (Vec<(Job, String, u64)>, Vec<Deletion>) = {
            let q = lock(&self.queue);
            let waiting = q
                .entries()
                .filter_map(|e| {
                    e.archived
                        .as_ref()
                        .map(|(l, at)| (e.job.clone(), l.clone(), *at))
                })
                .collect();
            (waiting, q.deletions().cloned().collect())
        };
        if waiting.is_empty() && deletions.is_empty() {
            return;
        }
        if self.db.is_none() {
            match Db::connect(&url, self.cfg.db_timeout).await {
                Ok(db) => self.db = Some(db),
                Err(e) => {
                    log::debug!("archive: database: {e}");
                    self.db_backoff();
                    return;
                }
            }
        }
        let Some(db) = self.db.clone() else { return };
        let mut retry = false;
        let mut db_down = false;
        for (job, location, at_s) in waiting {
            match db
                .set_recording_location(
                    &job.uuid,
                    &job.path,
                    &location,
                    job.raw,
                    self.cfg.db_timeout,
                )
                .await
            {
                Ok(n) if n > 0 => {
                    add(&self.counters.db_updates_total, 1);
                    if let Err(e) = lock(&self.queue).done(&job.rel) {
                        log::error!("{e}");
                    }
                }
                Ok(_) if now_s().saturating_sub(at_s) > DB_UPDATE_GIVE_UP_S => {
                    log::warn!(
                        "archive: call {} has no database row a week after its file was archived \
                         at {location}; not updating it",
                        job.uuid
                    );
                    if let Err(e) = lock(&self.queue).done(&job.rel) {
                        log::error!("{e}");
                    }
                }
                // The CDR row is not stored yet (CSV journal): later.
                Ok(_) => retry = true,
                Err(e) => {
                    add(&self.counters.db_update_failures_total, 1);
                    log::debug!("archive: database: {e}");
                    self.db = None;
                    retry = true;
                    db_down = true;
                    break;
                }
            }
        }
        if !db_down {
            retry |= self.mark_deletions(&db, deletions).await;
        }
        self.publish_queue_len();
        if retry {
            self.db_backoff();
        } else {
            self.db_failures = 0;
        }
    }

    /// Marks the rows of recordings retention deleted; true when some must be tried again.
    async fn mark_deletions(&mut self, db: &Db, deletions: Vec<Deletion>) -> bool {
        let mut retry = false;
        for d in deletions {
            let stale = crate::clock::unix_ns().saturating_sub(d.at_ns) / 1_000_000_000
                > DB_UPDATE_GIVE_UP_S;
            match self.is_gone(&d).await {
                Some(true) => {}
                Some(false) => {
                    // Noted, then not deleted (the deletion failed, or the recorder stopped in
                    // between): the recording is still there; a later sweep notes it again.
                    log::warn!(
                        "retention: {} is still there; its recording is not marked deleted",
                        d.file
                    );
                    self.deletion_done(&d.file);
                    continue;
                }
                None if stale => {
                    log::warn!(
                        "retention: cannot tell whether {} was deleted; not marking its recording",
                        d.file
                    );
                    self.deletion_done(&d.file);
                    continue;
                }
                None => {
                    retry = true;
                    continue;
                }
            }
            match db
                .mark_recording_deleted(&d.stored, d.at_ns, &d.reason, self.cfg.db_timeout)
                .await
            {
                Ok(n) if n > 0 => {
                    add(&self.counters.retention_db_marked_total, 1);
                    self.deletion_done(&d.file);
                }
                Ok(_) if stale => {
                    log::warn!(
                        "retention: no database row names {} a week after it was deleted; \
                         not marking it",
                        d.file
                    );
                    self.deletion_done(&d.file);
                }
                // The CDR row is not stored yet (CSV journal), or the file is no recording.
                Ok(_) => retry = true,
                Err(e) => {
                    add(&self.counters.db_update_failures_total, 1);
                    log::debug!("retention: database: {e}");
                    self.db = None;
                    return true;
                }
            }
        }
        retry
    }

    /// Whether a noted file is really gone; None when that cannot be told now (the object
    /// store does not answer).
    async fn is_gone(&mut self, d: &Deletion) -> Option<bool> {
        if !d.object {
            return match std::fs::symlink_metadata(&d.file) {
                Ok(_) => Some(false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(true),
                Err(_) => None,
            };
        }
        let key = object_store::path::Path::parse(&d.file).ok();
        match (self.target(), key) {
            (Some(Target::S3 { store, .. }), Some(key)) => match store.head(&key).await {
                Ok(_) => Some(false),
                Err(object_store::Error::NotFound { .. }) => Some(true),
                Err(_) => None,
            },
            // The archive is no longer the object store the file was in: nothing to check.
            _ => Some(true),
        }
    }

    fn deletion_done(&self, file: &str) {
        if let Err(e) = lock(&self.queue).deletion_done(file) {
            log::error!("{e}");
        }
    }

    /// The hook retention calls just before it deletes a file: notes the deletion in the
    /// queue file (durably), so the recording's row is marked once the file is gone, however
    /// long the database is away.
    fn deletion_noter(&self, target: &Target) -> impl Fn(&str) + Send + Sync + 'static {
        let queue = self.queue.clone();
        let target = target.clone();
        let spool = self.cfg.spool.clone();
        let enabled = self.cfg.database_url.is_some();
        move |file: &str| {
            if !enabled {
                return;
            }
            let Some(d) = deletion_of(&target, &spool, file, crate::clock::unix_ns()) else {
                return;
            };
            if let Err(e) = lock(&queue).add_deletion(d) {
                log::error!("retention: {e}: the database will not show {file} as deleted");
            }
        }
    }

    fn db_backoff(&mut self) {
        self.db_failures = self.db_failures.saturating_add(1);
        let factor = 1u32 << self.db_failures.saturating_sub(1).min(5);
        self.next_db_try =
            Instant::now() + self.cfg.retry_interval * factor.min(MAX_BACKOFF_FACTOR);
    }

    async fn retention(&mut self) {
        let spool = self.cfg.spool.clone();
        let rcfg = self.cfg.retention;
        // The spool directory appears with the first recording; until then its filesystem is
        // the data dir's.
        match retention::fs_usage(&spool).or_else(|_| retention::fs_usage(&self.cfg.data_dir)) {
            Ok(u) => {
                let c = &self.counters;
                c.spool_fs_size_bytes.store(u.size, Ordering::Release);
                c.spool_fs_used_bytes.store(u.used, Ordering::Release);
                let frac = u.used_fraction();
                c.spool_fs_used_ppm
                    .store((frac * 1e6) as u64, Ordering::Release);
                let full = frac * 100.0 >= f64::from(rcfg.spool_alarm_percent);
                c.disk_full_alarm.store(full, Ordering::Release);
                if full && !self.alarmed {
                    log::error!(
                        "spool filesystem of {} is {:.1}% full ({} of {} bytes used; alarm at {}%): \
                         recordings will fail when it fills; CDRs are still kept",
                        spool.display(),
                        frac * 100.0,
                        u.used,
                        u.size,
                        rcfg.spool_alarm_percent
                    );
                } else if !full && self.alarmed {
                    log::info!(
                        "spool filesystem of {} below the alarm again",
                        spool.display()
                    );
                }
                self.alarmed = full;
            }
            Err(e) => log::debug!("statvfs {}: {e}", spool.display()),
        }
        if rcfg.archive_days == 0 && rcfg.max_used_percent == 0 {
            return;
        }
        let now = SystemTime::now();
        let Some(target) = self.target() else {
            return;
        };
        let note = self.deletion_noter(&target);
        let sweep = match target {
            Target::Spool => {
                let root = spool.clone();
                tokio::task::spawn_blocking(move || {
                    retention::sweep_dir(
                        &root,
                        &rcfg,
                        now,
                        false,
                        &|_, m| retention::is_finished_spool_file(m),
                        &|p| note(&p.to_string_lossy()),
                    )
                })
                .await
                .unwrap_or_default()
            }
            Target::Dir(root) => {
                // Only what the manifest lists: the archive root may be a share where other
                // applications keep `.wav` and `.pcap` files of their own.
                let listed: Vec<String> = self.manifest.rels().map(str::to_string).collect();
                let (sweep, gone) = tokio::task::spawn_blocking(move || {
                    retention::sweep_listed(&root, &listed, &rcfg, now, &|p| {
                        note(&p.to_string_lossy())
                    })
                })
                .await
                .unwrap_or_default();
                if let Err(e) = self.manifest.remove(&gone) {
                    log::error!("retention: {e}");
                }
                sweep
            }
            Target::S3 { store, prefix, .. } => {
                match retention::sweep_objects(
                    store.as_ref(),
                    &prefix,
                    rcfg.archive_days,
                    now,
                    &note,
                )
                .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("retention: {e}");
                        self.publish_queue_len();
                        return;
                    }
                }
            }
        };
        self.publish_queue_len();
        if sweep.files > 0 {
            log::info!(
                "retention: deleted {} archived recordings ({} bytes)",
                sweep.files,
                sweep.bytes
            );
            add(&self.counters.retention_deleted_total, sweep.files);
            add(&self.counters.retention_deleted_bytes_total, sweep.bytes);
        }
    }
}

/// Where the API finds a recording whose stored path is not (or no longer) in the spool.
pub enum Located {
    /// A file to serve once confined to `root`.
    File { root: PathBuf, path: PathBuf },
    Object {
        store: Arc<dyn object_store::ObjectStore>,
        key: object_store::path::Path,
    },
}

/// The archive copy of a recording stored as `stored` (a spool path, an archive path, or an
/// `s3://` location), if an archive is configured. The database may still hold the spool path
/// of a file that has since moved (its row is updated best effort), so a spool path is mapped
/// to the same relative path in the archive.
pub fn locate(archive: &ArchiveSettings, spool: &Path, stored: &str) -> Option<Located> {
    let spool_rel = Path::new(stored)
        .strip_prefix(spool)
        .ok()
        .and_then(|r| r.to_str());
    match &archive.target {
        TargetSpec::Spool => None,
        TargetSpec::Dir(root) => {
            let rel = spool_rel.or_else(|| Path::new(stored).strip_prefix(root).ok()?.to_str())?;
            is_safe_rel(rel).then(|| Located::File {
                root: root.clone(),
                path: root.join(rel),
            })
        }
        TargetSpec::S3 { bucket, prefix } => {
            let url_prefix = if prefix.is_empty() {
                format!("s3://{bucket}/")
            } else {
                format!("s3://{bucket}/{prefix}/")
            };
            let rel = spool_rel.or_else(|| stored.strip_prefix(&url_prefix))?;
            if !is_safe_rel(rel) {
                return None;
            }
            let store = target::s3_store(bucket, &archive.s3).ok()?;
            Some(Located::Object {
                store,
                key: target::object_key(prefix, rel),
            })
        }
    }
}

#[cfg(test)]
mod tests;
