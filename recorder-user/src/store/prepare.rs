//! Recording files made ahead of need, off the media workers' threads.
//!
//! Creating a recording (a new file, its first megabyte allocated, the mapping) costs a few
//! hundred microseconds, more when the file system is busy; a media worker that did it for a
//! burst of call starts (a thousand calls in a second) stalled its ring for that long. So a
//! worker asks for the file when signalling announces the call, and this thread creates it
//! under a hidden temporary name beside the final one. The worker keeps it with the call and
//! takes it (one rename) where it would otherwise have created the file: at the call's first
//! audio, or at its end for an answered call without audio. A file nobody takes is removed
//! when it is dropped.

use std::{
    io,
    path::{Path, PathBuf},
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use calltap_sip::dialog::CallRef;
use crossbeam_channel::{Receiver, Sender};

use super::wav::WavWriter;

/// A worker's request: a recording for `call`, to be created at `temp`.
pub struct Request {
    pub call: CallRef,
    pub temp: PathBuf,
    pub max_seconds: u64,
    pub reply: Sender<Prepared>,
}

/// The answer to a [`Request`].
pub struct Prepared {
    pub call: CallRef,
    pub result: io::Result<PreparedWav>,
}

/// A recording made ahead and not taken yet; dropping it removes the file.
pub struct PreparedWav(Option<WavWriter>);

impl PreparedWav {
    /// The recording under its final `path` (in the directory it was prepared in) at `rate`:
    /// nothing is written yet, so the rate is still free. On an error the file is removed.
    pub fn adopt(mut self, path: &Path, rate: u32) -> io::Result<WavWriter> {
        let Some(mut w) = self.0.take() else {
            return Err(io::Error::other("prepared recording already taken"));
        };
        if let Err(e) = w.rename_to(path) {
            self.0 = Some(w);
            return Err(e);
        }
        w.set_rate(rate);
        Ok(w)
    }
}

impl Drop for PreparedWav {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            let path = w.path().to_path_buf();
            drop(w);
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("{}: cannot remove unused recording: {e}", path.display());
            }
        }
    }
}

/// Where a prepared recording waits: `.<name>.prep` beside `path`. Hidden, and neither `.wav`
/// nor finished, so retention and the archive leave it alone.
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
    /// Starts the thread, and (on a thread of its own) removes what a killed earlier run had
    /// prepared under `recordings` and never took.
    pub fn start(recordings: &Path) -> io::Result<Preparer> {
        // File times are coarse (a clock tick): a margin keeps this run's files out of it.
        let before = SystemTime::now() - Duration::from_secs(2);
        let dir = recordings.to_path_buf();
        std::thread::Builder::new()
            .name("prep-sweep".into())
            .spawn(move || {
                let n = sweep_stale(&dir, before);
                if n > 0 {
                    log::info!(
                        "{}: removed {n} unused prepared recording(s) of an earlier run",
                        dir.display()
                    );
                }
            })?;
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
        // Prepared at 8 kHz: the codec, and so the rate, is known when the file is taken.
        let result =
            WavWriter::create(&req.temp, 8000, req.max_seconds).map(|w| PreparedWav(Some(w)));
        // A worker that is gone drops the reply, and with it the file.
        let _ = req.reply.send(Prepared {
            call: req.call,
            result,
        });
    }
}

/// Removes the prepared files under `dir` older than `before`: those an earlier run had made
/// when it was killed (never adopted, so nothing else removes them). Returns how many. Runs on a
/// thread of its own at start; a file of this run (newer) is never touched.
pub fn sweep_stale(dir: &Path, before: std::time::SystemTime) -> usize {
    let mut removed = 0;
    super::paths::for_each_file(dir, &mut |path, name, meta| {
        if name.ends_with(".prep")
            && meta.modified().is_ok_and(|t| t < before)
            && std::fs::remove_file(path).is_ok()
        {
            removed += 1;
        }
    });
    removed
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
    fn prepares_hidden_files_adopts_them_and_removes_those_nobody_takes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let final_path = tmp.path().join("2026/12/05/call.wav");
        let temp = temp_path(&final_path);
        assert_eq!(temp, tmp.path().join("2026/12/05/.call.wav.prep"));
        let preparer = Preparer::start(tmp.path()).expect("start");
        let tx = preparer.sender().expect("sender");
        let (reply, answers) = crossbeam_channel::unbounded();
        let ask = |call: u64, temp: &Path| {
            tx.send(Request {
                call: CallRef(call),
                temp: temp.to_path_buf(),
                max_seconds: 60,
                reply: reply.clone(),
            })
            .expect("send");
            answers
                .recv_timeout(Duration::from_secs(10))
                .expect("answer")
        };

        // Taken: under its final name, at the rate the audio needs.
        let got = ask(7, &temp);
        assert_eq!(got.call, CallRef(7));
        assert!(temp.is_file());
        let w = got
            .result
            .expect("created")
            .adopt(&final_path, 16_000)
            .expect("adopt");
        assert_eq!((w.path(), w.rate()), (final_path.as_path(), 16_000));
        assert!(!temp.exists() && final_path.is_file());

        // Not taken (the call ended first): dropping it removes the file.
        let other = tmp.path().join("2026/12/05/.other.wav.prep");
        let unused = ask(8, &other).result.expect("created");
        assert!(other.is_file());
        drop(unused);
        assert!(!other.exists());

        // A worker that went away: the file made for it is removed.
        let gone = tmp.path().join("2026/12/05/.gone.wav.prep");
        drop(answers);
        tx.send(Request {
            call: CallRef(9),
            temp: gone.clone(),
            max_seconds: 60,
            reply,
        })
        .expect("send");
        drop(tx);
        preparer.finish();
        assert!(!gone.exists(), "unadopted file removed");
    }
}
