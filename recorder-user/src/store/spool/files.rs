//! The spool threads' open files, within the process's open-file budget.
//!
//! A recording needs a descriptor only while the spool thread writes to it. The threads keep
//! descriptors open while the process-wide budget ([`FdBudget`]) allows, which is every call
//! once `RLIMIT_NOFILE` is raised (see [`crate::limits`]); past it, a thread closes its oldest
//! open file and the recording is reopened by path at its next write. Calls beyond the budget
//! then cost an `open` and a `close` per write, and are still recorded.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::RecId;

/// Descriptors kept free for everything else (sockets, the database, journal and CDR files,
/// the BPF maps) when the budget is taken from `RLIMIT_NOFILE`.
const RESERVE_MIN: usize = 128;

/// How many recording descriptors the process may hold open at once.
#[derive(Debug)]
pub struct FdBudget {
    open: AtomicUsize,
    limit: AtomicUsize,
}

impl FdBudget {
    const fn new() -> FdBudget {
        FdBudget {
            open: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
        }
    }

    /// The process's budget: from the soft `RLIMIT_NOFILE` as it is when first asked for
    /// (keep [`RESERVE_MIN`] or an eighth free), unless [`FdBudget::set_limit`] came first.
    pub fn get() -> &'static FdBudget {
        static BUDGET: FdBudget = FdBudget::new();
        if BUDGET.limit.load(Ordering::Relaxed) == 0 {
            let _ = BUDGET.limit.compare_exchange(
                0,
                Self::from_rlimit(crate::limits::nofile().0),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        &BUDGET
    }

    /// The share of `nofile` descriptors recordings may use.
    pub fn from_rlimit(nofile: u64) -> usize {
        let n = usize::try_from(nofile).unwrap_or(usize::MAX);
        n.saturating_sub(RESERVE_MIN.max(n / 8)).max(16)
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Recording descriptors open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn acquire(&self) -> bool {
        if self.open.fetch_add(1, Ordering::AcqRel) < self.limit() {
            return true;
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        false
    }

    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One file of a spool thread.
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub kind: super::FileKind,
    file: Option<File>,
    /// The first error writing it; later operations on it are skipped.
    pub error: Option<String>,
}

/// A spool thread's files by id, with the descriptors it holds.
pub struct Files {
    entries: foldhash::HashMap<RecId, Entry>,
    /// Ids whose descriptor is open, oldest first (an id may be listed after its descriptor
    /// was closed; such stale places are skipped).
    open_order: VecDeque<RecId>,
    /// A descriptor opened beyond the budget for the current operation only.
    transient: Option<RecId>,
    budget: &'static FdBudget,
}

impl Files {
    pub fn new(budget: &'static FdBudget) -> Files {
        Files {
            entries: foldhash::HashMap::default(),
            open_order: VecDeque::new(),
            transient: None,
            budget,
        }
    }

    /// Starts following `id`, open as `file` (kept if the budget allows).
    pub fn insert(&mut self, id: RecId, path: PathBuf, kind: super::FileKind, file: Option<File>) {
        let mut entry = Entry {
            path,
            kind,
            file: None,
            error: None,
        };
        if let Some(f) = file {
            if self.make_room() {
                entry.file = Some(f);
                self.open_order.push_back(id);
            }
        }
        if let Some(old) = self.entries.insert(id, entry) {
            if old.file.is_some() {
                self.budget.release();
            }
        }
    }

    /// A file that could not be made: operations on it are skipped, its close reports `error`.
    pub fn insert_failed(
        &mut self,
        id: RecId,
        path: PathBuf,
        kind: super::FileKind,
        error: String,
    ) {
        self.entries.insert(
            id,
            Entry {
                path,
                kind,
                file: None,
                error: Some(error),
            },
        );
    }

    pub fn get(&self, id: RecId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Marks `id` failed with `error` (its first error is kept) and closes its descriptor.
    /// Returns `true` the first time.
    pub fn fail(&mut self, id: RecId, error: String) -> bool {
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        if e.file.take().is_some() {
            self.budget.release();
        }
        if e.error.is_some() {
            return false;
        }
        e.error = Some(error);
        true
    }

    /// The open descriptor of `id` (reopened by path if the budget had closed it), `None` for
    /// an unknown or failed file. `reopened` is set when it had to be opened again.
    pub fn file(&mut self, id: RecId, reopened: &mut bool) -> Option<io::Result<&File>> {
        let e = self.entries.get(&id)?;
        if e.error.is_some() {
            return None;
        }
        if e.file.is_none() {
            let opened = open_existing(&e.path, e.kind);
            let f = match opened {
                Ok(f) => f,
                Err(err) => return Some(Err(err)),
            };
            *reopened = true;
            let keep = self.make_room();
            let e = self.entries.get_mut(&id)?;
            e.file = Some(f);
            if keep {
                self.open_order.push_back(id);
            } else {
                // No room even after closing ours: this descriptor lives for one operation
                // only (see `Files::done_with`), counted as open meanwhile.
                self.budget.open.fetch_add(1, Ordering::AcqRel);
                self.transient = Some(id);
            }
        }
        self.entries.get(&id).and_then(|e| e.file.as_ref()).map(Ok)
    }

    /// After an operation: a descriptor opened beyond the budget is closed again.
    pub fn done_with(&mut self, id: RecId) {
        if self.transient != Some(id) {
            return;
        }
        self.transient = None;
        if let Some(e) = self.entries.get_mut(&id) {
            if e.file.take().is_some() {
                self.budget.release();
            }
        }
    }

    /// Stops following `id`, closing its descriptor.
    pub fn remove(&mut self, id: RecId) -> Option<Entry> {
        let mut e = self.entries.remove(&id)?;
        if e.file.take().is_some() {
            self.budget.release();
        }
        Some(e)
    }

    /// Takes `id`'s descriptor out (to finish the file), leaving the entry closed.
    pub fn take_file(&mut self, id: RecId) -> Option<File> {
        let f = self.entries.get_mut(&id)?.file.take()?;
        self.budget.release();
        Some(f)
    }

    /// A place in the budget for one more descriptor: closes this thread's oldest open file
    /// when the budget is used up. `false` when there is no place even then (other threads
    /// hold the rest).
    fn make_room(&mut self) -> bool {
        loop {
            if self.budget.acquire() {
                return true;
            }
            let Some(old) = self.open_order.pop_front() else {
                return false;
            };
            if let Some(e) = self.entries.get_mut(&old) {
                if e.file.take().is_some() {
                    self.budget.release();
                }
            }
        }
    }

    /// Descriptors this thread holds.
    pub fn open_count(&self) -> usize {
        self.entries.values().filter(|e| e.file.is_some()).count()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for e in self.entries.values_mut() {
            if e.file.take().is_some() {
                self.budget.release();
            }
        }
    }
}

/// Opens a file of ours again for writing.
fn open_existing(path: &Path, kind: super::FileKind) -> io::Result<File> {
    let mut o = OpenOptions::new();
    match kind {
        // Read too: late audio is laid over what the file holds (see `Op::Patch`).
        super::FileKind::Wav { .. } => o.read(true).write(true),
        super::FileKind::RawPcap => o.append(true),
    };
    o.open(path)
}

/// Creates `path` exclusively; a taken name gets `-1`, `-2`, ... (see
/// [`crate::store::paths::with_suffix`]). Returns the file and the name it got.
pub fn create_new(path: &Path, kind: super::FileKind) -> io::Result<(File, PathBuf)> {
    let mut candidate = path.to_path_buf();
    for n in 1..=1000u32 {
        let mut o = OpenOptions::new();
        o.create_new(true);
        match kind {
            super::FileKind::Wav { .. } => o.read(true).write(true),
            super::FileKind::RawPcap => o.append(true),
        };
        match o.open(&candidate) {
            Ok(f) => return Ok((f, candidate)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                candidate = match kind {
                    super::FileKind::Wav { .. } => super::super::paths::with_suffix(path, n),
                    super::FileKind::RawPcap => raw_with_suffix(path, n),
                };
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "1,000 names with suffixes are all taken",
    ))
}

/// `<stem>-<n>.rtp.pcap` beside a taken raw RTP pcap name.
fn raw_with_suffix(path: &Path, n: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".rtp.pcap").unwrap_or(&name);
    path.with_file_name(format!("{stem}-{n}.rtp.pcap"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::spool::FileKind;

    const WAV: FileKind = FileKind::Wav { rate: 8000 };

    #[test]
    fn a_taken_name_gets_a_suffix_and_is_never_overwritten() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("a_u1.wav");
        std::fs::write(&p, b"someone else's").expect("write");
        let (_, got) = create_new(&p, WAV).expect("create");
        assert_eq!(got, tmp.path().join("a_u1-1.wav"));
        let (_, again) = create_new(&p, WAV).expect("create");
        assert_eq!(again, tmp.path().join("a_u1-2.wav"));
        assert_eq!(std::fs::read(&p).expect("read"), b"someone else's");
        let raw = tmp.path().join("a_u1.rtp.pcap");
        std::fs::write(&raw, b"x").expect("write");
        let (_, got) = create_new(&raw, FileKind::RawPcap).expect("create");
        assert_eq!(got, tmp.path().join("a_u1-1.rtp.pcap"));
    }

    #[test]
    fn beyond_the_budget_files_are_closed_and_reopened_by_path() {
        static BUDGET: FdBudget = FdBudget::new();
        BUDGET.set_limit(2);
        let tmp = tempfile::tempdir().expect("tmp");
        let mut files = Files::new(&BUDGET);
        for i in 0..3u64 {
            let (f, p) = create_new(&tmp.path().join(format!("{i}.wav")), WAV).expect("create");
            files.insert(RecId(i), p, WAV, Some(f));
        }
        assert_eq!(files.open_count(), 2, "the oldest was closed");
        assert!(BUDGET.open() <= 2);
        let mut reopened = false;
        assert!(files
            .file(RecId(0), &mut reopened)
            .is_some_and(|r| r.is_ok()));
        assert!(reopened);
        assert_eq!(files.open_count(), 2);
        files.fail(RecId(1), "boom".into());
        let mut r = false;
        assert!(
            files.file(RecId(1), &mut r).is_none(),
            "failed files are skipped"
        );
        drop(files);
        assert_eq!(BUDGET.open(), 0, "every descriptor given back");
    }
}
