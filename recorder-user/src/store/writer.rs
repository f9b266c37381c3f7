//! The CDR writer: takes finished calls off the pipeline and stores them in the database, or in
//! the CSV journal while the database is away, then imports the journal when it is back.
//!
//! It runs on its own thread with a current-thread tokio runtime (sqlx is async; nothing else in
//! the daemon is) behind a bounded channel. [`CdrWriter::send`] never waits: when the channel is
//! full the caller appends the CDR to the journal itself, so a slow or dead database can never
//! hold up the threads that record audio.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Serialize;

use super::{
    cdr::Cdr,
    config::{DatabaseConfig, StorageConfig},
    csv_journal::{self, CsvJournal, JournalError},
    db::{redact, stored_cdr, Db, StoredVia},
};

/// CDRs queued for the writer thread before callers spill to the journal themselves.
const QUEUE: usize = 1024;
/// CDRs stored per transaction when several are queued.
const BATCH: usize = 256;
/// Longest pause between reconnect attempts, in multiples of the retry interval.
const MAX_BACKOFF_FACTOR: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("starting the CDR writer thread: {0}")]
    Spawn(std::io::Error),
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub url: String,
    pub data_dir: PathBuf,
    /// First pause before reconnecting; doubled per failed attempt up to 8 times this.
    pub retry_interval: Duration,
    /// Bound on each database operation; beyond it the CDRs go to the journal.
    pub write_timeout: Duration,
}

impl WriterConfig {
    /// The writer's settings from `[database]` (its journal goes in the data directory).
    pub fn new(database: &DatabaseConfig, storage: &StorageConfig) -> WriterConfig {
        WriterConfig {
            url: database.url_in(&storage.data_dir),
            data_dir: storage.data_dir.clone(),
            retry_interval: Duration::from_millis(database.retry_interval_ms),
            write_timeout: Duration::from_millis(database.write_timeout_ms),
        }
    }
}

/// Where CDRs are going right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Not connected yet.
    Starting = 0,
    Database = 1,
    /// The database is away: CDRs go to the CSV journal.
    Csv = 2,
}

/// Live counters, shared with whoever reports them (run summary, later /metrics and the API).
#[derive(Debug, Default)]
pub struct WriterCounters {
    mode: AtomicU8,
    /// Calls stored in the database by the live path.
    pub rows_written: AtomicU64,
    /// Live writes whose uuid was already stored.
    pub rows_already_present: AtomicU64,
    /// Calls appended to the CSV journal (by the writer or by spilling callers).
    pub rows_journaled: AtomicU64,
    /// Of those, calls the caller journaled itself because the queue was full.
    pub rows_spilled: AtomicU64,
    /// Calls neither the database nor the journal took (still in calls.jsonl).
    pub journal_errors: AtomicU64,
    /// Failed database writes and reconnect attempts.
    pub db_failures: AtomicU64,
    /// Journals imported completely.
    pub imports: AtomicU64,
    /// Calls stored by those imports.
    pub rows_imported: AtomicU64,
    /// Journal rows that could not be imported (unreadable, or rejected by the database).
    pub rows_rejected: AtomicU64,
    /// Rows in the journal files not imported yet (a gauge: counted at start, +1 per append,
    /// minus each imported file's rows).
    pub rows_pending_import: AtomicU64,
}

/// A consistent-enough copy of [`WriterCounters`] for reports.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WriterSnapshot {
    pub mode: Mode,
    pub rows_written: u64,
    pub rows_already_present: u64,
    pub rows_journaled: u64,
    pub rows_spilled: u64,
    pub journal_errors: u64,
    pub db_failures: u64,
    pub imports: u64,
    pub rows_imported: u64,
    pub rows_rejected: u64,
    pub rows_pending_import: u64,
}

impl WriterCounters {
    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Database,
            2 => Mode::Csv,
            _ => Mode::Starting,
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Release);
    }

    pub fn snapshot(&self) -> WriterSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Acquire);
        WriterSnapshot {
            mode: self.mode(),
            rows_written: g(&self.rows_written),
            rows_already_present: g(&self.rows_already_present),
            rows_journaled: g(&self.rows_journaled),
            rows_spilled: g(&self.rows_spilled),
            journal_errors: g(&self.journal_errors),
            db_failures: g(&self.db_failures),
            imports: g(&self.imports),
            rows_imported: g(&self.rows_imported),
            rows_rejected: g(&self.rows_rejected),
            rows_pending_import: g(&self.rows_pending_import),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::AcqRel);
}

/// Handle to the writer thread. Dropping it (or [`CdrWriter::finish`]) stores what is queued,
/// makes a last attempt to reach the database and import the journal, and joins the thread.
pub struct CdrWriter {
    tx: Option<Sender<Cdr>>,
    journal: Arc<Mutex<CsvJournal>>,
    counters: Arc<WriterCounters>,
    handle: Option<thread::JoinHandle<()>>,
}

fn lock(journal: &Mutex<CsvJournal>) -> MutexGuard<'_, CsvJournal> {
    // A panic while appending leaves the journal usable: it reopens the file on the next append.
    journal.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends to the journal, counting the outcome.
fn journal_append(journal: &Mutex<CsvJournal>, counters: &WriterCounters, cdr: &Cdr) {
    match lock(journal).append(cdr) {
        Ok(()) => {
            add(&counters.rows_journaled, 1);
            add(&counters.rows_pending_import, 1);
        }
        Err(e) => {
            add(&counters.journal_errors, 1);
            log::error!(
                "call {} ({}): not in the database and not journaled: {e}; it is in calls.jsonl",
                cdr.uuid,
                cdr.call_id
            );
        }
    }
}

impl CdrWriter {
    pub fn start(cfg: WriterConfig) -> Result<CdrWriter, WriterError> {
        let (tx, rx) = bounded(QUEUE);
        let journal = Arc::new(Mutex::new(CsvJournal::new(&cfg.data_dir)));
        let counters = Arc::new(WriterCounters::default());
        // Rows a previous run left in the journal wait for the database like new ones.
        let left: u64 = csv_journal::pending_files(&cfg.data_dir)
            .iter()
            .chain(std::iter::once(&journal_path(&cfg.data_dir)))
            .map(|p| csv_journal::count_rows(p))
            .sum();
        add(&counters.rows_pending_import, left);
        let mut worker = Worker {
            journal: journal.clone(),
            counters: counters.clone(),
            db: None,
            backoff: cfg.retry_interval,
            next_attempt: Instant::now(),
            cfg,
        };
        let handle = thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || worker.run(rx))
            .map_err(WriterError::Spawn)?;
        Ok(CdrWriter {
            tx: Some(tx),
            journal,
            counters,
            handle: Some(handle),
        })
    }

    /// Queues a CDR; never blocks on the database. With the queue full the CDR is journaled here.
    pub fn send(&self, cdr: Cdr) {
        let Some(tx) = self.tx.as_ref() else { return };
        match tx.try_send(cdr) {
            Ok(()) => {}
            Err(TrySendError::Full(cdr) | TrySendError::Disconnected(cdr)) => {
                add(&self.counters.rows_spilled, 1);
                journal_append(&self.journal, &self.counters, &cdr);
            }
        }
    }

    pub fn counters(&self) -> Arc<WriterCounters> {
        self.counters.clone()
    }

    /// Stores everything queued, tries the database once more if it is away, and stops.
    pub fn finish(mut self) -> WriterSnapshot {
        self.stop();
        self.counters.snapshot()
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("the CDR writer thread panicked");
            }
        }
    }
}

impl Drop for CdrWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    cfg: WriterConfig,
    journal: Arc<Mutex<CsvJournal>>,
    counters: Arc<WriterCounters>,
    db: Option<Db>,
    backoff: Duration,
    next_attempt: Instant,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Cdr>) {
        let rt = match crate::runtime::current_thread() {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("CDR writer: no async runtime ({e}); every CDR goes to the journal");
                self.counters.set_mode(Mode::Csv);
                for cdr in rx.iter() {
                    journal_append(&self.journal, &self.counters, &cdr);
                }
                return;
            }
        };
        self.try_connect(&rt);
        loop {
            if self.db.is_none() && Instant::now() >= self.next_attempt {
                self.try_connect(&rt);
            }
            let wait = if self.db.is_none() {
                self.next_attempt
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            } else {
                self.cfg.retry_interval
            };
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    self.store(&rt, batch);
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Idle while connected: import what callers spilled in the meantime.
                    if self.db.is_some() && self.journal_waiting() {
                        self.catch_up(&rt);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Shutting down: one last chance for the journal to reach the database.
        if self.db.is_none() {
            self.try_connect(&rt);
        } else if self.journal_waiting() {
            self.catch_up(&rt);
        }
        if let Some(db) = self.db.take() {
            rt.block_on(db.close());
        }
    }

    fn journal_waiting(&self) -> bool {
        lock(&self.journal).has_rows() || !csv_journal::pending_files(&self.cfg.data_dir).is_empty()
    }

    /// Connects (and migrates); on success imports the journal, on failure schedules the next
    /// attempt with a doubled pause.
    fn try_connect(&mut self, rt: &tokio::runtime::Runtime) {
        let url = redact(&self.cfg.url);
        match rt.block_on(Db::connect(&self.cfg.url, self.cfg.write_timeout)) {
            Ok(db) => {
                log::info!("CDR store: connected to {} ({url})", db.backend());
                self.db = Some(db);
                self.counters.set_mode(Mode::Database);
                self.backoff = self.cfg.retry_interval;
                self.catch_up(rt);
            }
            Err(e) => {
                add(&self.counters.db_failures, 1);
                if self.counters.mode() != Mode::Csv {
                    log::warn!("CDR store: {e}; CDRs go to the CSV journal until it is back");
                } else {
                    log::debug!("CDR store: still unavailable: {e}");
                }
                self.enter_csv_mode();
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(self.cfg.retry_interval * MAX_BACKOFF_FACTOR);
            }
        }
    }

    fn enter_csv_mode(&mut self) {
        if let Some(db) = self.db.take() {
            // Closing a pool whose server died must not hold the writer up.
            drop(db);
        }
        self.counters.set_mode(Mode::Csv);
    }

    fn store(&mut self, rt: &tokio::runtime::Runtime, batch: Vec<Cdr>) {
        let Some(db) = self.db.clone() else {
            for cdr in &batch {
                journal_append(&self.journal, &self.counters, cdr);
            }
            return;
        };
        let mut rows = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        for cdr in batch {
            match stored_cdr(&cdr) {
                Ok(row) => {
                    rows.push(row);
                    sources.push(cdr);
                }
                Err(e) => {
                    log::error!("call {}: cannot store ({e}); journaled", cdr.uuid);
                    journal_append(&self.journal, &self.counters, &cdr);
                }
            }
        }
        if rows.is_empty() {
            return;
        }
        match rt.block_on(db.insert_batch(&rows, StoredVia::Direct, self.cfg.write_timeout)) {
            Ok(fresh) => {
                let new = fresh.iter().filter(|&&f| f).count() as u64;
                add(&self.counters.rows_written, new);
                add(
                    &self.counters.rows_already_present,
                    fresh.len() as u64 - new,
                );
            }
            Err(e) => {
                add(&self.counters.db_failures, 1);
                log::warn!(
                    "CDR store: writing {} calls failed ({e}); journaling them and reconnecting",
                    sources.len()
                );
                for cdr in &sources {
                    journal_append(&self.journal, &self.counters, cdr);
                }
                self.enter_csv_mode();
                self.backoff = self.cfg.retry_interval;
                self.next_attempt = Instant::now() + self.backoff;
            }
        }
    }

    /// Imports every pending journal and the live one (rotated first, so CDRs journaled during
    /// the import start a new file and are imported next time, never half).
    fn catch_up(&mut self, rt: &tokio::runtime::Runtime) {
        let Some(db) = self.db.clone() else { return };
        let rotated = lock(&self.journal).rotate_for_import();
        if let Err(e) = rotated {
            log::error!("CDR journal: cannot rotate for import: {e}");
        }
        for pending in csv_journal::pending_files(&self.cfg.data_dir) {
            let started = Instant::now();
            match rt.block_on(csv_journal::import_file(
                &db,
                &pending,
                StoredVia::Journal,
                self.cfg.write_timeout,
            )) {
                Ok(report) => {
                    let waiting = &self.counters.rows_pending_import;
                    let _ = waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                        Some(v.saturating_sub(report.rows))
                    });
                    add(&self.counters.rows_imported, report.imported);
                    add(&self.counters.rows_rejected, report.bad.len() as u64);
                    for bad in &report.bad {
                        log::error!(
                            "{} line {}: not imported: {}",
                            pending.display(),
                            bad.line,
                            bad.reason
                        );
                    }
                    match csv_journal::mark_imported(&pending) {
                        Ok(done) => {
                            add(&self.counters.imports, 1);
                            log::info!(
                                "CDR journal imported in {:?}: {} rows, {} new, {} already stored, \
                                 {} bad; kept as {}",
                                started.elapsed(),
                                report.rows,
                                report.imported,
                                report.already_present,
                                report.bad.len(),
                                done.display()
                            );
                        }
                        Err(e) => log::error!("CDR journal: {e}"),
                    }
                }
                Err(JournalError::Db { source, .. }) => {
                    add(&self.counters.db_failures, 1);
                    log::warn!(
                        "CDR journal import of {} interrupted ({source}); resumes on reconnect",
                        pending.display()
                    );
                    self.enter_csv_mode();
                    self.next_attempt = Instant::now() + self.backoff;
                    return;
                }
                Err(e) => {
                    // Unreadable file: leave it pending for a person; do not retry in a loop.
                    log::error!("CDR journal: {e}; import it with `calltap import-csv`");
                    let stuck = pending.with_extension("unreadable");
                    let _ = std::fs::rename(&pending, stuck);
                }
            }
        }
    }
}

/// The writer's data directory journal path (for reports and tests).
pub fn journal_path(data_dir: &Path) -> PathBuf {
    data_dir.join(csv_journal::JOURNAL_FILE)
}
