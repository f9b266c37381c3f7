//! The CSV journal: where CDRs go while the database is unreachable or slow, so that recording
//! never waits for it. `DATA_DIR/cdr-journal.csv`, append-only, one row per call, fsync'd per row.
//!
//! Columns (header row first):
//!
//! | column        | content                                                        |
//! |---------------|----------------------------------------------------------------|
//! | `uuid`        | the call's uuid: the import key, a call is stored once          |
//! | `call_id`     | SIP Call-ID                                                     |
//! | `start`       | call start, RFC 3339 UTC                                        |
//! | `end`         | call end, RFC 3339 UTC                                          |
//! | `from_user`   | caller user part (number)                                       |
//! | `to_user`     | callee user part (number)                                       |
//! | `duration_ms` | call duration                                                   |
//! | `end_reason`  | why the call ended                                              |
//! | `cdr_json`    | the whole CDR as JSON (the same object as `calls.jsonl`)        |
//!
//! Only `cdr_json` is read back on import: it is the lossless carrier; the other columns are for
//! people reading the file with a spreadsheet or `grep`.
//!
//! Rotation: before an import the journal is renamed to `cdr-journal.csv.<stamp>.pending` (new
//! rows start a fresh journal, so nothing that arrives during the import is lost or imported
//! half), and after a complete import to `cdr-journal.csv.<stamp>.imported`, which is kept.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use super::{
    cdr::Cdr,
    db::{cdr_from_json, Db, DbError, StoredVia},
};

pub const JOURNAL_FILE: &str = "cdr-journal.csv";

/// The journal's columns, in order.
pub const COLUMNS: [&str; 9] = [
    "uuid",
    "call_id",
    "start",
    "end",
    "from_user",
    "to_user",
    "duration_ms",
    "end_reason",
    "cdr_json",
];

const PENDING: &str = "pending";
const IMPORTED: &str = "imported";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path}: not a CallTap CDR journal (no cdr_json column in the header)")]
    NotAJournal { path: PathBuf },
    #[error("serialising a CDR: {0}")]
    Json(#[from] serde_json::Error),
    #[error("importing {path}: {source}")]
    Db { path: PathBuf, source: DbError },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The append side of the journal. Opened lazily: a site whose database never fails never has a
/// journal file.
pub struct CsvJournal {
    path: PathBuf,
    file: Option<File>,
    /// Rows appended since the journal was opened or last rotated.
    rows: u64,
}

impl CsvJournal {
    pub fn new(data_dir: &Path) -> CsvJournal {
        CsvJournal {
            path: data_dir.join(JOURNAL_FILE),
            file: None,
            rows: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows appended since this process opened or rotated the journal.
    pub fn rows_appended(&self) -> u64 {
        self.rows
    }

    fn open(&mut self) -> Result<&mut File, JournalError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(io_err(&self.path))?;
            let len = file.metadata().map_err(io_err(&self.path))?.len();
            if len == 0 {
                file.write_all(&header_line())
                    .and_then(|()| file.sync_data())
                    .map_err(io_err(&self.path))?;
            } else {
                set_aside_torn_tail(&self.path, &mut file, len)?;
            }
            self.file = Some(file);
        }
        // Just set above when it was None.
        self.file.as_mut().ok_or_else(|| JournalError::Io {
            path: self.path.clone(),
            source: io::Error::other("journal not open"),
        })
    }

    /// Appends one call and fsyncs it: when this returns Ok the row survives a power cut.
    pub fn append(&mut self, cdr: &Cdr) -> Result<(), JournalError> {
        let row = row_bytes(cdr)?;
        let path = self.path.clone();
        let file = self.open()?;
        let written = file.write_all(&row).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Reopen next time: the torn tail (if any) is set aside then.
            self.file = None;
            return Err(io_err(&path)(e));
        }
        self.rows += 1;
        Ok(())
    }

    /// True when the journal file holds at least one row (from this process or an earlier one).
    pub fn has_rows(&self) -> bool {
        std::fs::metadata(&self.path)
            .map(|m| m.len() > header_line().len() as u64)
            .unwrap_or(false)
    }

    /// Renames the journal to `<journal>.<stamp>.pending` if it holds rows, so an import can read
    /// a file nobody appends to; the next append starts a fresh journal.
    pub fn rotate_for_import(&mut self) -> Result<Option<PathBuf>, JournalError> {
        if !self.has_rows() {
            return Ok(None);
        }
        self.file = None;
        let target = unique_sibling(&self.path, PENDING);
        std::fs::rename(&self.path, &target).map_err(io_err(&self.path))?;
        sync_dir(&self.path);
        self.rows = 0;
        Ok(Some(target))
    }
}

fn header_line() -> Vec<u8> {
    let mut line = COLUMNS.join(",").into_bytes();
    line.push(b'\n');
    line
}

fn row_bytes(cdr: &Cdr) -> Result<Vec<u8>, JournalError> {
    let json = serde_json::to_string(cdr)?;
    let duration = cdr.duration_ms.to_string();
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::with_capacity(json.len() + 256));
    let record = [
        cdr.uuid.as_str(),
        &cdr.call_id,
        &cdr.start,
        &cdr.end,
        cdr.from.user.as_deref().unwrap_or(""),
        cdr.to.user.as_deref().unwrap_or(""),
        &duration,
        &cdr.end_reason,
        &json,
    ];
    let path = PathBuf::from(JOURNAL_FILE);
    w.write_record(record).map_err(|source| JournalError::Csv {
        path: path.clone(),
        source,
    })?;
    w.into_inner().map_err(|e| JournalError::Io {
        path,
        source: io::Error::other(e.to_string()),
    })
}

/// A crash in the middle of an append leaves a row without its newline, which would swallow the
/// next rows into an unterminated quoted field. That tail was never acknowledged (not fsync'd as
/// a whole row); it is moved to `<journal>.<stamp>.torn` for inspection and cut off.
fn set_aside_torn_tail(path: &Path, file: &mut File, len: u64) -> Result<(), JournalError> {
    let mut content = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut content))
        .map_err(io_err(path))?;
    if content.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = content
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let torn = unique_sibling(path, "torn");
    std::fs::write(&torn, &content[keep..]).map_err(io_err(&torn))?;
    file.set_len(keep as u64)
        .and_then(|()| file.sync_data())
        .map_err(io_err(path))?;
    log::warn!(
        "{}: last row was torn by a crash ({} of {len} bytes); set aside in {}",
        path.display(),
        content.len() - keep,
        torn.display()
    );
    if keep == 0 {
        file.write_all(&header_line())
            .and_then(|()| file.sync_data())
            .map_err(io_err(path))?;
    }
    Ok(())
}

/// `<path>.<UTC stamp>.<suffix>`, not yet taken.
fn unique_sibling(path: &Path, suffix: &str) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, s) = super::paths::civil(now.as_secs());
    let stamp = format!(
        "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{:03}Z",
        now.subsec_millis()
    );
    let name = path
        .file_name()
        .map_or_else(|| JOURNAL_FILE.into(), |n| n.to_string_lossy().into_owned());
    let mut n = 0;
    loop {
        let extra = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let candidate = path.with_file_name(format!("{name}.{stamp}{extra}.{suffix}"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// Makes a rename durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Journals left pending by an import the database interrupted, oldest first.
/// Data rows in a journal file (0 when it is missing or unreadable), for the pending gauge.
pub fn count_rows(path: &Path) -> u64 {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_or(0, |mut r| r.records().filter(Result::is_ok).count() as u64)
}

pub fn pending_files(data_dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("{JOURNAL_FILE}.");
    let suffix = format!(".{PENDING}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Renames a fully imported `.pending` journal to `.imported` (kept: the rows the database
/// rejected, if any, are still in it at the line numbers logged).
pub fn mark_imported(pending: &Path) -> Result<PathBuf, JournalError> {
    let name = pending
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = name.strip_suffix(&format!(".{PENDING}")).unwrap_or(&name);
    let target = pending.with_file_name(format!("{base}.{IMPORTED}"));
    std::fs::rename(pending, &target).map_err(io_err(pending))?;
    sync_dir(pending);
    Ok(target)
}

/// A row that could not be imported.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

/// What one import did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    /// Data rows read.
    pub rows: u64,
    /// Calls newly stored.
    pub imported: u64,
    /// Calls whose uuid was already stored (an earlier import, or the live write had succeeded).
    pub already_present: u64,
    pub bad: Vec<BadRow>,
}

/// Rows per transaction: large enough to amortise the commit, small enough that an interrupted
/// import repeats little.
pub const IMPORT_BATCH: usize = 500;

/// Imports every row of a journal into `db`, idempotently (keyed by uuid): running it again, or
/// after an import that stopped half way, stores each call exactly once.
///
/// Returns Err when the database stops answering (the caller keeps the file and retries); rows
/// that are unreadable or that the database rejects while it is otherwise healthy are reported
/// in [`ImportReport::bad`] with their line numbers and skipped.
pub async fn import_file(
    db: &Db,
    path: &Path,
    via: StoredVia,
    timeout: Duration,
) -> Result<ImportReport, JournalError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(io::BufReader::new(file));
    let csv_err = |source| JournalError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let column = reader
        .headers()
        .map_err(csv_err)?
        .iter()
        .position(|h| h.trim() == "cdr_json")
        .ok_or_else(|| JournalError::NotAJournal {
            path: path.to_path_buf(),
        })?;
    let mut report = ImportReport::default();
    let mut batch: Vec<(u64, Cdr)> = Vec::with_capacity(IMPORT_BATCH);
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line() + 1;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                report.rows += 1;
                let line = record.position().map_or(line, |p| p.line());
                match record.get(column).map(cdr_from_json) {
                    Some(Ok(cdr)) => batch.push((line, cdr)),
                    Some(Err(e)) => report.bad.push(BadRow {
                        line,
                        reason: e.to_string(),
                    }),
                    None => report.bad.push(BadRow {
                        line,
                        reason: format!("only {} columns", record.len()),
                    }),
                }
            }
            Err(e) => {
                report.rows += 1;
                let line = e.position().map_or(line, |p| p.line());
                report.bad.push(BadRow {
                    line,
                    reason: e.to_string(),
                });
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(csv_err(e));
                }
            }
        }
        if batch.len() >= IMPORT_BATCH {
            store_batch(db, path, via, timeout, &mut batch, &mut report).await?;
        }
    }
    store_batch(db, path, via, timeout, &mut batch, &mut report).await?;
    report.bad.sort_by_key(|b| b.line);
    Ok(report)
}

async fn store_batch(
    db: &Db,
    path: &Path,
    via: StoredVia,
    timeout: Duration,
    batch: &mut Vec<(u64, Cdr)>,
    report: &mut ImportReport,
) -> Result<(), JournalError> {
    if batch.is_empty() {
        return Ok(());
    }
    let db_err = |source| JournalError::Db {
        path: path.to_path_buf(),
        source,
    };
    let cdrs: Vec<Cdr> = batch.iter().map(|(_, c)| c.clone()).collect();
    match db.insert_batch(&cdrs, via, timeout).await {
        Ok(fresh) => count(&fresh, report),
        // Slow is as good as down: give up for now, the caller retries the whole file later.
        Err(e @ DbError::Timeout { .. }) => return Err(db_err(e)),
        Err(e) => {
            // Down, or one row it will not take? A healthy database gets the rows one by one so
            // one bad row does not hold the others back.
            db.ping(timeout).await.map_err(db_err)?;
            log::warn!(
                "{}: batch rejected ({e}); retrying row by row",
                path.display()
            );
            for (line, cdr) in batch.iter() {
                match db
                    .insert_batch(std::slice::from_ref(cdr), via, timeout)
                    .await
                {
                    Ok(fresh) => count(&fresh, report),
                    Err(e @ DbError::Timeout { .. }) => return Err(db_err(e)),
                    Err(e) => {
                        db.ping(timeout).await.map_err(db_err)?;
                        report.bad.push(BadRow {
                            line: *line,
                            reason: format!("database rejected it: {e}"),
                        });
                    }
                }
            }
        }
    }
    batch.clear();
    Ok(())
}

fn count(fresh: &[bool], report: &mut ImportReport) {
    for &f in fresh {
        if f {
            report.imported += 1;
        } else {
            report.already_present += 1;
        }
    }
}
