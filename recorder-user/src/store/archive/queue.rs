//! The archive queue: recordings handed over at call end and not yet archived (or archived with
//! the database row not yet pointed at the archive), and recordings retention deletes whose
//! database row does not say so yet, kept in `archive-queue.jsonl` in the data dir so a restart,
//! crash or reboot forgets none of them.
//!
//! The file is an append-only log of operations, each line fsync'd before the operation counts;
//! opening replays it (a torn last line from a crash is ignored) and rewrites it compacted
//! (temp file, fsync, rename, fsync of the directory), and so does a log that has grown well
//! past the live entries. Entries are keyed by the recording's path relative to the spool, so
//! adding the same file twice is a no-op.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The queue file's name in the data dir.
pub const QUEUE_FILE: &str = "archive-queue.jsonl";

/// One finished file to archive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    /// The call's uuid.
    pub uuid: String,
    /// The spool path exactly as the CDR (and so the database) holds it.
    pub path: String,
    /// Path relative to the spool root: also the path under the archive root / the object key
    /// under the prefix.
    pub rel: String,
    /// Size and sha256 the CDR states; None for the raw RTP pcap, which the CDR does not hash
    /// (it is read from the finished spool file).
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// The raw RTP pcap beside the WAV (its database column is `raw_rtp_pcap`).
    #[serde(default)]
    pub raw: bool,
}

/// A recording retention deletes: noted before the file goes, kept until its database row says
/// it was deleted (`recordings.deleted_ns`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deletion {
    /// The file deleted: a local path, or with `object` an object key in the S3 archive. The
    /// database is marked only once it is really gone (a crash may fall between the note and
    /// the deletion).
    pub file: String,
    #[serde(default)]
    pub object: bool,
    /// What the `recordings.path` of its row may hold: the archive location and, if the row
    /// was never pointed there, the spool path.
    pub stored: Vec<String>,
    /// When (nanoseconds since the epoch) and why (`retention`).
    pub at_ns: u64,
    pub reason: String,
}

/// A job and how far it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub job: Job,
    /// Set once the archive copy verified and the spool copy is gone: the location, and when
    /// (seconds since the epoch). The entry stays until the database row points there.
    pub archived: Option<(String, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Add(Job),
    Archived {
        rel: String,
        location: String,
        at_s: u64,
    },
    Done {
        rel: String,
    },
    /// How far `calls.jsonl` has been read for finished recordings (see `Archiver`).
    JsonlOffset(u64),
    Deletion(Deletion),
    DeletionDone {
        file: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("archive queue {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

pub struct Queue {
    path: PathBuf,
    file: File,
    /// By insertion order, so the oldest recording is archived first.
    entries: BTreeMap<u64, Entry>,
    by_rel: HashMap<String, u64>,
    next_seq: u64,
    jsonl_offset: u64,
    /// By file deleted.
    deletions: BTreeMap<String, Deletion>,
    /// Lines in the file, to decide when to compact.
    lines: u64,
}

impl Queue {
    /// Opens (creating) and compacts the queue at `path`.
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        let err = |source| QueueError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut q = Queue {
            path: path.to_path_buf(),
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(err)?,
            entries: BTreeMap::new(),
            by_rel: HashMap::new(),
            next_seq: 0,
            jsonl_offset: 0,
            deletions: BTreeMap::new(),
            lines: 0,
        };
        let reader = BufReader::new(File::open(path).map_err(err)?);
        for line in reader.split(b'\n') {
            let line = line.map_err(err)?;
            // A line torn by a crash is not valid JSON: the operation never counted.
            if let Ok(op) = serde_json::from_slice::<Op>(&line) {
                q.apply(op);
            }
        }
        q.compact()?;
        Ok(q)
    }

    fn apply(&mut self, op: Op) -> bool {
        match op {
            Op::Add(job) => {
                if self.by_rel.contains_key(&job.rel) {
                    return false;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.by_rel.insert(job.rel.clone(), seq);
                self.entries.insert(
                    seq,
                    Entry {
                        job,
                        archived: None,
                    },
                );
            }
            Op::Archived {
                rel,
                location,
                at_s,
            } => {
                let Some(e) = self.by_rel.get(&rel).and_then(|s| self.entries.get_mut(s)) else {
                    return false;
                };
                e.archived = Some((location, at_s));
            }
            Op::Done { rel } => {
                let Some(seq) = self.by_rel.remove(&rel) else {
                    return false;
                };
                self.entries.remove(&seq);
            }
            Op::JsonlOffset(n) => self.jsonl_offset = n,
            Op::Deletion(d) => {
                if self.deletions.contains_key(&d.file) {
                    return false;
                }
                self.deletions.insert(d.file.clone(), d);
            }
            Op::DeletionDone { file } => {
                if self.deletions.remove(&file).is_none() {
                    return false;
                }
            }
        }
        true
    }

    fn io_err(&self) -> impl Fn(io::Error) -> QueueError + '_ {
        |source| QueueError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `op` durably, then applies it. Nothing is written for a no-op.
    fn log(&mut self, op: Op) -> Result<bool, QueueError> {
        let noop = match &op {
            Op::Add(job) => self.by_rel.contains_key(&job.rel),
            Op::Archived { rel, .. } | Op::Done { rel } => !self.by_rel.contains_key(rel),
            Op::JsonlOffset(n) => *n == self.jsonl_offset,
            Op::Deletion(d) => self.deletions.contains_key(&d.file),
            Op::DeletionDone { file } => !self.deletions.contains_key(file),
        };
        if noop {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(&op).map_err(|e| QueueError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(self.io_err())?;
        self.file.sync_data().map_err(self.io_err())?;
        self.lines += 1;
        self.apply(op);
        if self.lines > 2 * (self.entries.len() + self.deletions.len()) as u64 + 256 {
            self.compact()?;
        }
        Ok(true)
    }

    /// Queues `job`; false when a job for the same file is already queued.
    pub fn add(&mut self, job: Job) -> Result<bool, QueueError> {
        self.log(Op::Add(job))
    }

    /// The spool copy of `rel` is gone; its archive copy is at `location`.
    pub fn mark_archived(
        &mut self,
        rel: &str,
        location: &str,
        at_s: u64,
    ) -> Result<(), QueueError> {
        self.log(Op::Archived {
            rel: rel.to_string(),
            location: location.to_string(),
            at_s,
        })
        .map(drop)
    }

    /// Nothing left to do for `rel`.
    pub fn done(&mut self, rel: &str) -> Result<(), QueueError> {
        self.log(Op::Done {
            rel: rel.to_string(),
        })
        .map(drop)
    }

    pub fn jsonl_offset(&self) -> u64 {
        self.jsonl_offset
    }

    pub fn set_jsonl_offset(&mut self, n: u64) -> Result<(), QueueError> {
        self.log(Op::JsonlOffset(n)).map(drop)
    }

    /// Notes that retention deletes `d.file`; false when it is already noted.
    pub fn add_deletion(&mut self, d: Deletion) -> Result<bool, QueueError> {
        self.log(Op::Deletion(d))
    }

    /// The database row of deleted `file` says so (or nothing more can be done).
    pub fn deletion_done(&mut self, file: &str) -> Result<(), QueueError> {
        self.log(Op::DeletionDone {
            file: file.to_string(),
        })
        .map(drop)
    }

    /// Deleted recordings whose database row does not say so yet.
    pub fn deletions(&self) -> impl Iterator<Item = &Deletion> {
        self.deletions.values()
    }

    /// Archive jobs queued (deletions not counted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, rel: &str) -> bool {
        self.by_rel.contains_key(rel)
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Rewrites the file with only the live state.
    pub fn compact(&mut self) -> Result<(), QueueError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut text = Vec::new();
        let mut lines = 0;
        let mut push = |op: &Op| -> Result<(), QueueError> {
            serde_json::to_writer(&mut text, op).map_err(|e| QueueError::Io {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?;
            text.push(b'\n');
            lines += 1;
            Ok(())
        };
        push(&Op::JsonlOffset(self.jsonl_offset))?;
        for e in self.entries.values() {
            push(&Op::Add(e.job.clone()))?;
            if let Some((location, at_s)) = &e.archived {
                push(&Op::Archived {
                    rel: e.job.rel.clone(),
                    location: location.clone(),
                    at_s: *at_s,
                })?;
            }
        }
        for d in self.deletions.values() {
            push(&Op::Deletion(d.clone()))?;
        }
        let write = || -> io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new().append(true).open(&self.path)
        };
        self.file = write().map_err(self.io_err())?;
        self.lines = lines;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u32) -> Job {
        Job {
            uuid: format!("u{n}"),
            path: format!("/spool/recordings/{n}.wav"),
            rel: format!("{n}.wav"),
            bytes: Some(u64::from(n)),
            sha256: Some("ab".repeat(32)),
            raw: false,
        }
    }

    #[test]
    fn queue_survives_reopen_and_ignores_a_torn_line() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join(QUEUE_FILE);
        {
            let mut q = Queue::open(&path).expect("open");
            for n in 0..5 {
                assert!(q.add(job(n)).expect("add"));
            }
            assert!(!q.add(job(2)).expect("again"), "a duplicate is a no-op");
            q.mark_archived("1.wav", "/nas/1.wav", 7).expect("archived");
            q.done("3.wav").expect("done");
            q.set_jsonl_offset(1234).expect("offset");
        }
        // A crash in the middle of an append.
        let mut f = OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(b"{\"add\":{\"uuid\":\"u9\",\"pa")
            .expect("torn");
        drop(f);
        let q = Queue::open(&path).expect("reopen");
        let rels: Vec<&str> = q.entries().map(|e| e.job.rel.as_str()).collect();
        assert_eq!(rels, ["0.wav", "1.wav", "2.wav", "4.wav"]);
        assert_eq!(q.jsonl_offset(), 1234);
        let archived: Vec<_> = q.entries().filter_map(|e| e.archived.clone()).collect();
        assert_eq!(archived, vec![("/nas/1.wav".to_string(), 7)]);
        // Reopening compacted the file: one line per live fact, no torn tail.
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 1 + 4 + 1, "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn retention_deletions_survive_reopen_until_done() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join(QUEUE_FILE);
        let deletion = |n: u32| Deletion {
            file: format!("/nas/{n}.wav"),
            object: false,
            stored: vec![
                format!("/nas/{n}.wav"),
                format!("/spool/recordings/{n}.wav"),
            ],
            at_ns: 1_800_000_000_000_000_000 + u64::from(n),
            reason: "retention".into(),
        };
        {
            let mut q = Queue::open(&path).expect("open");
            q.add(job(1)).expect("add");
            assert!(q.add_deletion(deletion(1)).expect("note"));
            assert!(!q.add_deletion(deletion(1)).expect("again"), "noted once");
            q.add_deletion(deletion(2)).expect("note");
            q.deletion_done("/nas/1.wav").expect("done");
            assert_eq!(q.len(), 1, "deletions are not archive jobs");
        }
        let q = Queue::open(&path).expect("reopen");
        let left: Vec<Deletion> = q.deletions().cloned().collect();
        assert_eq!(left, vec![deletion(2)]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn the_log_is_compacted_as_it_grows() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join(QUEUE_FILE);
        let mut q = Queue::open(&path).expect("open");
        for n in 0..1000 {
            q.add(job(n)).expect("add");
            q.done(&format!("{n}.wav")).expect("done");
        }
        q.add(job(5000)).expect("add");
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines < 300, "{lines} lines for one live entry");
        drop(q);
        let q = Queue::open(&path).expect("reopen");
        assert_eq!(q.len(), 1);
        assert!(q.contains("5000.wav"));
    }
}
