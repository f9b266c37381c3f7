//! Recording files made ahead of need, off the media workers' threads.
//!
//! Creating a recording (a new file, its first megabyte allocated, the mapping) costs a few
//! hundred microseconds, more when the file system is busy; a media worker that did it for a
//! burst of call starts (a thousand calls in a second) stalled its ring for that long. So a
//! worker asks for the file when signalling announces the call, and this thread creates it
//! under a hidden temporary name beside the final one; the worker adopts it (one rename) when it
//! arrives, normally long before the call's first audio. A call whose audio comes first creates
//! its file itself as before and the prepared one is deleted.

use std::{
    io,
    path::{Path, PathBuf},
    thread::JoinHandle,
};

use calltap_sip::dialog::CallRef;
use crossbeam_channel::{Receiver, Sender};

use super::wav::WavWriter;

/// A worker's request: a recording for `call`, to be created at `temp`.
pub struct Request {
    pub call: CallRef,
    /// Tells a reply for the current request from a stale one.
    pub token: u64,
    pub temp: PathBuf,
    pub rate: u32,
    pub max_seconds: u64,
    pub reply: Sender<Prepared>,
}

/// The answer to a [`Request`].
pub struct Prepared {
    pub call: CallRef,
    pub token: u64,
    pub temp: PathBuf,
    pub result: io::Result<WavWriter>,
}

/// Where a prepared recording waits for adoption: `.<name>.prep` beside `path`. Hidden, and
/// neither `.wav` nor finished, so retention and the archive leave it alone.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.prep"))
}

/// The preparing thread; it ends when every [`Request`] sender is gone.
pub struct Preparer {
    tx: Option<Sender<Request>>,
    handle: Option<JoinHandle<()>>,
}

impl Preparer {
    pub fn start() -> io::Result<Preparer> {
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let handle = std::thread::Builder::new()
            .name("prepare".into())
            .spawn(move || run(&rx))?;
        Ok(Preparer {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// The handle workers send requests on.
    pub fn sender(&self) -> Option<Sender<Request>> {
        self.tx.clone()
    }

    /// Waits for the thread once the workers (the other senders) are gone.
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Preparer {
    /// Without [`Preparer::finish`] (an error path) the thread is left to end on its own when
    /// the workers' senders go: waiting here could wait for workers that never stop.
    fn drop(&mut self) {
        self.tx = None;
    }
}

fn run(rx: &Receiver<Request>) {
    for req in rx {
        let result = WavWriter::create(&req.temp, req.rate, req.max_seconds);
        let made = result.is_ok();
        let reply = Prepared {
            call: req.call,
            token: req.token,
            temp: req.temp,
            result,
        };
        if let Err(e) = req.reply.send(reply) {
            // The worker is gone: nobody will adopt the file.
            if made {
                discard(&e.into_inner().temp);
            }
        }
    }
}

/// Removes the prepared files under `dir` older than `before`: those an earlier run had made
/// when it was killed (never adopted, so nothing else removes them). Returns how many. Runs on a
/// thread of its own at start; a file of this run (newer) is never touched.
pub fn sweep_stale(dir: &Path, before: std::time::SystemTime) -> usize {
    let mut removed = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let path = e.path();
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file()
                && e.file_name().to_string_lossy().ends_with(".prep")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < before)
                && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// Removes a prepared file nobody adopted.
pub fn discard(temp: &Path) {
    if let Err(e) = std::fs::remove_file(temp) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("{}: cannot remove unused recording: {e}", temp.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_prepared_files_of_an_earlier_run_are_swept_and_nothing_else() {
        let tmp = tempfile::tempdir().expect("tmp");
        let day = tmp.path().join("2026/12/05");
        std::fs::create_dir_all(&day).expect("dirs");
        let start = std::time::SystemTime::now();
        let old = day.join(".a.wav.prep");
        let f = std::fs::File::create(&old).expect("old");
        f.set_modified(start - std::time::Duration::from_secs(3600))
            .expect("mtime");
        let new = day.join(".b.wav.prep");
        let f = std::fs::File::create(&new).expect("new");
        f.set_modified(start + std::time::Duration::from_secs(1))
            .expect("mtime");
        let wav = day.join("c.wav");
        let f = std::fs::File::create(&wav).expect("wav");
        f.set_modified(start - std::time::Duration::from_secs(3600))
            .expect("mtime");
        assert_eq!(sweep_stale(tmp.path(), start), 1);
        assert!(!old.exists() && new.exists() && wav.exists());
    }

    #[test]
    fn prepares_hidden_files_and_removes_those_nobody_takes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let final_path = tmp.path().join("2026/12/05/call.wav");
        let temp = temp_path(&final_path);
        assert_eq!(temp, tmp.path().join("2026/12/05/.call.wav.prep"));
        let preparer = Preparer::start().expect("start");
        let tx = preparer.sender().expect("sender");
        let (reply, answers) = crossbeam_channel::unbounded();
        tx.send(Request {
            call: CallRef(7),
            token: 3,
            temp: temp.clone(),
            rate: 8000,
            max_seconds: 60,
            reply: reply.clone(),
        })
        .expect("send");
        let got = answers
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("answer");
        assert_eq!((got.call, got.token), (CallRef(7), 3));
        let w = got.result.expect("created");
        assert_eq!(w.path(), temp.as_path());
        assert!(temp.is_file());
        drop(w);

        // A worker that went away: the file made for it is removed.
        let other = tmp.path().join(".other.wav.prep");
        drop(answers);
        tx.send(Request {
            call: CallRef(8),
            token: 4,
            temp: other.clone(),
            rate: 8000,
            max_seconds: 60,
            reply,
        })
        .expect("send");
        drop(tx);
        preparer.finish();
        assert!(!other.exists(), "unadopted file removed");
    }
}
