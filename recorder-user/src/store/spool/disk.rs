//! A spool thread: carries out one worker's [`Op`]s on the files, in order.
//!
//! It is the only place recording files are created, written and closed. A failure is the
//! recording's, not the thread's: logged once, counted once ([`FailReason`]), reported at the
//! recording's close, and later operations on that file are skipped while the other calls go
//! on.

use std::{
    fs::File,
    io::{self, Write as _},
    os::unix::fs::FileExt as _,
    path::Path,
    sync::{atomic::Ordering, Arc},
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{
    files::{create_new, FdBudget, Files},
    Chunk, Closed, FailReason, FileKind, Op, RecId, Reply, SpoolCounters,
};
use crate::store::wav;

/// Zeros for silencing parts already written.
static ZEROS: [u8; 4096] = [0; 4096];

/// The thread's loop: ends when the worker's side of the queue is gone and it is empty.
pub fn run(ops: &Receiver<Op>, mut disk: Disk) {
    for op in ops {
        disk.apply(op);
    }
}

/// What carries out a spool's operations: its files, and where buffers and answers go back.
pub struct Disk {
    files: Files,
    back: Sender<Chunk>,
    replies: Sender<Reply>,
    c: Arc<SpoolCounters>,
    /// The directory the last file was created in, known to exist.
    last_dir: Option<std::path::PathBuf>,
    /// Buffers done with that did not fit the way back yet.
    waiting: Vec<Chunk>,
}

impl Disk {
    pub fn new(back: Sender<Chunk>, replies: Sender<Reply>, c: Arc<SpoolCounters>) -> Disk {
        Disk {
            files: Files::new(FdBudget::get()),
            back,
            replies,
            c,
            last_dir: None,
            waiting: Vec::new(),
        }
    }

    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Create { id, path, kind } => self.create(id, &path, kind),
            Op::Reopen { id, path, kind } => {
                // Opened lazily at its first write, like a file the budget closed.
                self.files.insert(id, path.clone(), kind, None);
                let _ = self.replies.send(Reply::Opened { id, path });
            }
            Op::Write {
                id,
                offset,
                chunk,
                from,
                len,
            } => {
                let (from, len) = (usize::from(from), usize::from(len));
                let bytes = &chunk.bytes()[from.min(super::CHUNK_BYTES)..]
                    [..len.min(super::CHUNK_BYTES - from.min(super::CHUNK_BYTES))];
                self.with_file(id, |f| f.write_all_at(bytes, offset + from as u64));
                self.c.writes.fetch_add(1, Ordering::Relaxed);
                self.c
                    .bytes_written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.give_back(chunk);
            }
            Op::Patch {
                id,
                channel,
                pos,
                chunk,
                n,
            } => {
                self.patch(id, channel, pos, &chunk, usize::from(n));
                self.c.patches.fetch_add(1, Ordering::Relaxed);
                self.give_back(chunk);
            }
            Op::Zero {
                id,
                from,
                to,
                chunk,
            } => {
                let mut at = wav::DATA_OFFSET + from.saturating_mul(4);
                let end = wav::DATA_OFFSET + to.saturating_mul(4);
                self.with_file(id, |f| {
                    while at < end {
                        let n = (end - at).min(ZEROS.len() as u64) as usize;
                        f.write_all_at(&ZEROS[..n], at)?;
                        at += n as u64;
                    }
                    Ok(())
                });
                self.give_back(chunk);
            }
            Op::Header { id, rate, frames } => {
                let h = wav::header(rate, frames);
                self.with_file(id, |f| f.write_all_at(&h, 0));
            }
            Op::Append { id, chunk, len } => {
                let bytes = &chunk.bytes()[..usize::from(len).min(super::CHUNK_BYTES)];
                self.with_file(id, |mut f| f.write_all(bytes));
                self.c
                    .bytes_written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.give_back(chunk);
            }
            Op::Close {
                id,
                rate,
                frames,
                reply,
            } => {
                let closed = self.close(id, rate, frames);
                let _ = reply.send(closed);
            }
            Op::Sync(done) => {
                let _ = done.send(());
            }
        }
    }

    /// A buffer whose operation is done: free in the arena, back to the worker. Never waits:
    /// when the way back is full (the worker has not taken any for a while) the buffer waits
    /// here, and goes with the next one.
    fn give_back(&mut self, mut chunk: Chunk) {
        chunk.release();
        while let Some(c) = self.waiting.pop() {
            if let Err(TrySendError::Full(c)) = self.back.try_send(c) {
                self.waiting.push(c);
                break;
            }
        }
        match self.back.try_send(chunk) {
            Err(TrySendError::Full(c)) => self.waiting.push(c),
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn create(&mut self, id: RecId, path: &Path, kind: FileKind) {
        let made = (|| {
            if let Some(dir) = path.parent() {
                if self.last_dir.as_deref() != Some(dir) {
                    std::fs::create_dir_all(dir)?;
                    self.last_dir = Some(dir.to_path_buf());
                }
            }
            let (mut f, got) = create_new(path, kind)?;
            match kind {
                FileKind::Wav { rate } => f.write_all_at(&wav::header(rate, 0), 0)?,
                FileKind::RawPcap => f.write_all(&wav::PCAP_HEADER)?,
            }
            Ok::<_, io::Error>((f, got))
        })();
        match made {
            Ok((f, got)) => {
                self.c.files_created.fetch_add(1, Ordering::Relaxed);
                if got != path {
                    self.c.names_taken.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{} exists: recording to {} instead",
                        path.display(),
                        got.display()
                    );
                }
                self.files.insert(id, got.clone(), kind, Some(f));
                let _ = self.replies.send(Reply::Opened { id, path: got });
            }
            Err(e) => {
                // The next creation checks the directory again.
                self.last_dir = None;
                let error = format!("cannot create {}: {e}", path.display());
                log::error!("{error}");
                self.c.fail(FailReason::Create);
                self.files
                    .insert_failed(id, path.to_path_buf(), kind, error.clone());
                let _ = self.replies.send(Reply::Failed {
                    id,
                    reason: FailReason::Create,
                    error,
                });
            }
        }
    }

    /// Runs `f` on `id`'s descriptor; an error fails the recording (logged and counted once).
    fn with_file(&mut self, id: RecId, f: impl FnOnce(&File) -> io::Result<()>) {
        let mut reopened = false;
        let result = match self.files.file(id, &mut reopened) {
            None => return,
            Some(Ok(file)) => f(file),
            Some(Err(e)) => Err(e),
        };
        if reopened {
            self.c.reopens.fetch_add(1, Ordering::Relaxed);
        }
        self.files.done_with(id);
        if let Err(e) = result {
            self.failed(id, &e);
        }
    }

    fn failed(&mut self, id: RecId, e: &io::Error) {
        let path = self
            .files
            .get(id)
            .map(|e| e.path.display().to_string())
            .unwrap_or_default();
        let error = format!("write failed: {e}");
        if self.files.fail(id, error.clone()) {
            log::error!("{path}: recording write failed: {e}; the call's audio stops here");
            self.c.fail(FailReason::Write);
            let _ = self.replies.send(Reply::Failed {
                id,
                reason: FailReason::Write,
                error,
            });
        }
    }

    /// Lays `n` samples of `chunk` on `channel` from frame `pos`: read what the file holds
    /// there (nothing past its end reads as silence), replace one channel, write it back.
    fn patch(&mut self, id: RecId, channel: u8, pos: u64, chunk: &Chunk, n: usize) {
        let n = n.min(super::CHUNK_BYTES / 2);
        let at = wav::DATA_OFFSET + pos.saturating_mul(4);
        let mut frames = [0u8; super::CHUNK_BYTES * 2];
        let frames = &mut frames[..n * 4];
        let samples = chunk.bytes();
        let ch = usize::from(channel.min(1)) * 2;
        self.with_file(id, |f| {
            let mut got = 0;
            while got < frames.len() {
                match f.read_at(&mut frames[got..], at + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            for (i, frame) in frames.chunks_exact_mut(4).enumerate() {
                frame[ch..ch + 2].copy_from_slice(&samples[i * 2..i * 2 + 2]);
            }
            f.write_all_at(frames, at)
        });
    }

    /// Finishes `id`: for a WAV, the header for `frames` at `rate` (the rate may have changed
    /// since it was created, before any audio) and the exact length.
    fn close(&mut self, id: RecId, rate: u32, frames: u64) -> Closed {
        let (path, kind) = match self.files.get(id) {
            Some(e) => (e.path.clone(), e.kind),
            None => {
                return Closed {
                    path: Default::default(),
                    bytes: 0,
                    error: Some("no such recording".into()),
                }
            }
        };
        let mut bytes = 0;
        if let FileKind::Wav { .. } = kind {
            bytes = wav::DATA_OFFSET + frames.saturating_mul(4);
            let h = wav::header(rate, frames);
            self.with_file(id, |f| {
                f.write_all_at(&h, 0)?;
                f.set_len(bytes)
            });
        }
        let entry = self.files.remove(id);
        let error = entry.and_then(|e| e.error);
        if matches!(kind, FileKind::RawPcap) {
            bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        }
        Closed { path, bytes, error }
    }
}
