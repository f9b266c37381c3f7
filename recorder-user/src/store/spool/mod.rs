//! The recordings spool: how a media worker's audio reaches the disk without the worker ever
//! touching a file.
//!
//! Each media worker has a [`Spool`]: a pool of page-sized buffers ([`chunk`]) and a thread
//! of its own that owns every file descriptor ([`disk`]). A call's recording is a
//! [`window::WavWindow`] on the worker: the last few hundred milliseconds of its audio in
//! buffers laid out as in the file, where late and reordered packets still land. A buffer the
//! audio has moved past is handed to the spool thread, which writes it with one `pwrite` and
//! gives it back; audio later than that is sent as a small patch. So:
//!
//! - the worker makes no system call for audio and never waits for the disk: a full queue or
//!   an empty pool drops audio and counts it, it never blocks;
//! - no call holds a descriptor or a memory mapping the OS caps: the spool thread keeps files
//!   open while the process's open-file budget allows ([`files`]) and reopens them per write
//!   beyond it, so the number of calls recorded at once is bounded by memory, not by
//!   `RLIMIT_NOFILE` or `vm.max_map_count`;
//! - files are created with `create_new` semantics: a taken name gets a suffix, nothing is
//!   ever overwritten ([`crate::store::paths::with_suffix`]).

pub mod arena;
pub mod chunk;
pub mod disk;
pub mod files;
pub mod window;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

pub use arena::{recover, Recovered, Tag};
pub use chunk::{Chunk, ChunkPool, CHUNK_BYTES, CHUNK_FRAMES};
use crossbeam_channel::{Receiver, Sender, TrySendError};
pub use window::WavWindow;

/// A recording (or a raw RTP pcap) of one worker's spool: the call's reference, and which of
/// its two files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecId(pub u64);

impl RecId {
    /// The WAV of call `call`.
    pub fn wav(call: calltap_sip::dialog::CallRef) -> RecId {
        RecId(call.0 << 1)
    }

    /// The raw RTP pcap of call `call`.
    pub fn raw(call: calltap_sip::dialog::CallRef) -> RecId {
        RecId(call.0 << 1 | 1)
    }

    pub fn call(self) -> calltap_sip::dialog::CallRef {
        calltap_sip::dialog::CallRef(self.0 >> 1)
    }

    pub fn is_raw(self) -> bool {
        self.0 & 1 == 1
    }
}

/// What a file holds, for creating and finishing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A stereo 16-bit WAV at this rate.
    Wav { rate: u32 },
    /// A pcap of raw RTP (codecs CallTap cannot decode), appended to.
    RawPcap,
}

/// Worker -> spool thread.
#[derive(Debug)]
pub enum Op {
    /// Create `path` (a taken name gets a suffix) and answer with [`Reply`].
    Create {
        id: RecId,
        path: PathBuf,
        kind: FileKind,
    },
    /// Go on writing a file an earlier run made (after a restart).
    Reopen {
        id: RecId,
        path: PathBuf,
        kind: FileKind,
    },
    /// Write bytes `from..from + len` of `chunk` at file offset `offset + from`.
    Write {
        id: RecId,
        offset: u64,
        chunk: Chunk,
        from: u16,
        len: u16,
    },
    /// Lay `n` samples (little-endian in `chunk`) on `channel` from frame `pos`, keeping the
    /// other channel: audio for a part of the file already written.
    Patch {
        id: RecId,
        channel: u8,
        pos: u64,
        chunk: Chunk,
        n: u16,
    },
    /// Silence frames `from..to` of both channels (`chunk` only carries the request in the
    /// arena, for a crash).
    Zero {
        id: RecId,
        from: u64,
        to: u64,
        chunk: Chunk,
    },
    /// The WAV header for `frames` frames at `rate`: the file is a valid WAV at every flush.
    Header { id: RecId, rate: u32, frames: u64 },
    /// Append `len` bytes of `chunk` (raw RTP pcap records).
    Append { id: RecId, chunk: Chunk, len: u16 },
    /// Finish the file: final header and exact length for a WAV; the descriptor is closed and
    /// the outcome sent on `reply`.
    Close {
        id: RecId,
        rate: u32,
        frames: u64,
        reply: Sender<Closed>,
    },
    /// Answered once everything queued before it is done.
    Sync(Sender<()>),
}

/// Spool thread -> worker: where a file was created or reopened, or why it could not be.
#[derive(Debug)]
pub enum Reply {
    Opened {
        id: RecId,
        path: PathBuf,
    },
    Failed {
        id: RecId,
        reason: FailReason,
        error: String,
    },
}

/// A finished file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    pub path: PathBuf,
    pub bytes: u64,
    /// Why part of the audio (or all of it) is missing, if it is.
    pub error: Option<String>,
}

/// The outcome of a recording's [`Op::Close`], for whoever finishes the CDR: the recording is
/// complete on disk once this has answered.
#[derive(Clone, Debug, Default)]
pub struct Closing(Option<Receiver<Closed>>);

impl Closing {
    pub fn new(rx: Receiver<Closed>) -> Closing {
        Closing(Some(rx))
    }

    /// Waits (at most `limit`) for the spool thread to finish the file; `None` when it did not
    /// answer (gone, or slower than `limit`) or there was nothing to wait for.
    pub fn wait(&mut self, limit: Duration) -> Option<Closed> {
        let rx = self.0.take()?;
        rx.recv_timeout(limit).ok()
    }

    pub fn is_pending(&self) -> bool {
        self.0.is_some()
    }
}

/// Every `Closing` is alike to a CDR comparison: it is a handle, not data.
impl PartialEq for Closing {
    fn eq(&self, _: &Closing) -> bool {
        true
    }
}

/// Why a call got no recording or lost part of it (`calltap_recordings_failed_total{reason}`);
/// counted once per call, at its first failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The file could not be created (permissions, disk full, a bad directory).
    Create,
    /// Writing failed part way (disk full, I/O error): the file has the audio before it.
    Write,
    /// The worker's audio buffers or the spool thread's queue were full (the disk cannot keep
    /// up): audio was dropped rather than stall the worker.
    Backlog,
    /// A recording of an earlier run could not be continued after a restart.
    Restore,
}

impl FailReason {
    pub const ALL: [FailReason; 4] = [
        FailReason::Create,
        FailReason::Write,
        FailReason::Backlog,
        FailReason::Restore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Create => "create",
            FailReason::Write => "write",
            FailReason::Backlog => "backlog",
            FailReason::Restore => "restore",
        }
    }
}

/// Counters of every spool of the process, for /metrics and the run summary.
#[derive(Debug, Default)]
pub struct SpoolCounters {
    pub files_created: AtomicU64,
    /// Names that were taken and got a suffix.
    pub names_taken: AtomicU64,
    pub bytes_written: AtomicU64,
    pub writes: AtomicU64,
    /// Late audio laid over a part already written.
    pub patches: AtomicU64,
    /// Descriptors opened again because the open-file budget had closed them.
    pub reopens: AtomicU64,
    /// Operations refused because a spool thread's queue was full.
    pub queue_full: AtomicU64,
    /// Audio buffers wanted while all of a worker's were in use.
    pub buffers_exhausted: AtomicU64,
    /// Calls whose raw RTP pcap reached its bound (later packets counted, not kept).
    pub raw_over_limit: AtomicU64,
    failed: [AtomicU64; 4],
}

impl SpoolCounters {
    /// Counts one call's recording failure.
    pub fn fail(&self, reason: FailReason) {
        self.failed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, reason: FailReason) -> u64 {
        self.failed[reason as usize].load(Ordering::Relaxed)
    }
}

/// The process's spool counters (one set: every worker's spool adds to it).
pub fn counters() -> &'static Arc<SpoolCounters> {
    static COUNTERS: std::sync::OnceLock<Arc<SpoolCounters>> = std::sync::OnceLock::new();
    COUNTERS.get_or_init(Arc::default)
}

/// Sizes of a spool, and where its buffers live.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    /// Most audio buffers the worker may have (in calls, in flight, free).
    pub max_buffers: usize,
    /// The directory of the arena files that keep buffered audio across a crash of the
    /// process (see [`arena`]); `None`: anonymous memory.
    pub dir: Option<PathBuf>,
    /// Most bytes one call's raw RTP pcap (codecs CallTap cannot decode) keeps.
    pub raw_pcap_max_bytes: u64,
    /// The worker waits for room in the spool thread's queue instead of dropping audio: for
    /// replay, where the capture waits as well, and never for live capture.
    pub backpressure: bool,
}

impl SpoolConfig {
    /// `max_mb` MiB of buffers in anonymous memory.
    pub fn with_memory_mb(max_mb: u64) -> SpoolConfig {
        SpoolConfig {
            max_buffers: (max_mb.saturating_mul(1 << 20) / CHUNK_BYTES as u64).max(64) as usize,
            dir: None,
            raw_pcap_max_bytes: 128 << 20,
            backpressure: false,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig::with_memory_mb(512)
    }
}

/// A worker's spool: its buffers, its queue to the spool thread, and the thread.
pub struct Spool {
    backend: Backend,
    pub pool: ChunkPool,
    replies: Receiver<Reply>,
    counters: Arc<SpoolCounters>,
    seq: u64,
    raw_pcap_max_bytes: u64,
    backpressure: bool,
}

/// Operations queued for a spool thread (writes of buffers the disk has not taken yet: 256
/// MiB of audio when full); past it a live worker drops audio.
const QUEUE: usize = 65_536;
/// The same with backpressure (replay): the worker waits, so a short queue is enough.
const QUEUE_WAITED: usize = 4096;

/// The arena file of worker `worker` under `dir`.
pub fn arena_path(dir: &std::path::Path, worker: u32) -> PathBuf {
    dir.join(format!("media-{worker}.buf"))
}

/// Worker `worker`'s arena: in its file when `cfg` names a directory (anonymous memory, with
/// the reason logged, when the file cannot be made).
fn arena_for(worker: u32, cfg: &SpoolConfig) -> arena::Arena {
    let buffers = cfg.max_buffers.max(1);
    if let Some(dir) = &cfg.dir {
        let path = arena_path(dir, worker);
        match arena::Arena::file(&path, buffers) {
            Ok(a) => return a,
            Err(e) => log::error!(
                "{}: {e}: worker {worker}'s buffered audio is in memory only (a crash of the \
                 process loses up to a flush interval of it)",
                path.display()
            ),
        }
    }
    match arena::Arena::anonymous(buffers) {
        Ok(a) => a,
        Err(e) => {
            // Smaller still works: recording with fewer buffers beats not recording.
            log::error!("worker {worker}: {buffers} audio buffers: {e}; trying 1024");
            arena::Arena::anonymous(1024)
                .unwrap_or_else(|e| panic!("worker {worker}: no memory for any audio buffer: {e}"))
        }
    }
}

/// Where a spool's operations are carried out.
enum Backend {
    Thread {
        ops: Option<Sender<Op>>,
        thread: Option<JoinHandle<()>>,
    },
    /// No thread could be started: the worker does the writes itself (slower, never lost).
    Inline(Box<disk::Disk>),
}

impl Spool {
    /// Starts worker `worker`'s spool thread.
    pub fn start(worker: u32, cfg: SpoolConfig) -> Spool {
        let arena = Arc::new(arena_for(worker, &cfg));
        let buffers = arena.buffers();
        let (pool, back) = ChunkPool::new(arena);
        // Every buffer can be in the queue at once, plus the operations that carry none (a
        // header per call per flush, creations, closes).
        let queue = if cfg.backpressure {
            QUEUE_WAITED
        } else {
            QUEUE
        };
        let (tx, rx) = crossbeam_channel::bounded(queue.min(buffers.saturating_mul(2) + 1024));
        // An answer per creation and per failure: bounded by the calls (`[calls] max_calls`),
        // never waited for by the spool thread.
        let (reply_tx, replies) = crossbeam_channel::unbounded();
        let counters = counters().clone();
        let disk = disk::Disk::new(back.clone(), reply_tx.clone(), counters.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("spool-{worker}"))
            .spawn(move || disk::run(&rx, disk));
        let backend = match spawned {
            Ok(thread) => Backend::Thread {
                ops: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                log::warn!("worker {worker}: no spool thread ({e}): recordings are written inline");
                Backend::Inline(Box::new(disk::Disk::new(back, reply_tx, counters.clone())))
            }
        };
        Spool {
            backend,
            pool,
            replies,
            counters,
            seq: 0,
            raw_pcap_max_bytes: cfg.raw_pcap_max_bytes,
            backpressure: cfg.backpressure,
        }
    }

    /// Most bytes one call's raw RTP pcap keeps (see [`SpoolConfig`]).
    pub fn raw_pcap_max_bytes(&self) -> u64 {
        self.raw_pcap_max_bytes
    }

    /// The next queue position, for the headers of buffers sent (see [`arena::recover`]).
    pub fn seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Queues `op`; when the queue is full (the disk cannot keep up) the op's buffer goes back
    /// to the pool and `false` says its audio was dropped.
    pub fn send(&mut self, op: Op) -> bool {
        let tx = match &mut self.backend {
            Backend::Inline(disk) => {
                disk.apply(op);
                return true;
            }
            Backend::Thread { ops: Some(tx), .. } => tx,
            Backend::Thread { ops: None, .. } => return false,
        };
        if self.backpressure {
            return tx.send(op).is_ok();
        }
        match tx.try_send(op) {
            Ok(()) => true,
            Err(TrySendError::Full(op) | TrySendError::Disconnected(op)) => {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                match op {
                    Op::Write { chunk, .. }
                    | Op::Patch { chunk, .. }
                    | Op::Append { chunk, .. }
                    | Op::Zero { chunk, .. } => self.pool.give(chunk),
                    _ => {}
                }
                false
            }
        }
    }

    /// Answers to creations and reopens that have arrived.
    pub fn replies(&self) -> crossbeam_channel::TryIter<'_, Reply> {
        self.replies.try_iter()
    }

    pub fn counters(&self) -> &SpoolCounters {
        &self.counters
    }

    /// The flush tick's housekeeping: the arena grows ahead of the buffers the next calls
    /// will take, and the pool's exhaustion count is published (the pool itself is the
    /// worker's, unshared).
    pub fn publish(&mut self) {
        self.pool.headroom();
        let n = std::mem::take(&mut self.pool.exhausted);
        if n > 0 {
            self.counters
                .buffers_exhausted
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Waits (at most `limit`) until the spool thread has done everything queued so far.
    pub fn sync(&mut self, limit: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Op::Sync(tx)) && rx.recv_timeout(limit).is_ok()
    }

    /// Waits until the spool thread has done everything queued, and ends it.
    pub fn finish(&mut self) {
        if let Backend::Thread { ops, thread } = &mut self.backend {
            *ops = None;
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.finish();
    }
}

/// How many calls the process can record at once, and what bounds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The smallest of the bounds below.
    pub concurrent_calls: u64,
    /// `[calls] max_calls`: calls followed at once.
    pub max_calls: u64,
    /// Calls the audio buffers hold in steady state ([`window::BUFFERS_PER_CALL`] each).
    pub buffer_calls: u64,
    /// Recording files kept open; calls beyond it reopen their file per write (slower, still
    /// recorded), so it does not bound the calls.
    pub open_files: u64,
}

impl Capacity {
    /// The capacity `max_calls` and `buffer_mb` of audio buffers allow, with the open-file
    /// budget as it is now.
    pub fn assess(max_calls: u64, buffer_mb: u64) -> Capacity {
        let buffers = buffer_mb.saturating_mul(1 << 20) / CHUNK_BYTES as u64;
        let buffer_calls = buffers / window::BUFFERS_PER_CALL as u64;
        Capacity {
            concurrent_calls: max_calls.min(buffer_calls),
            max_calls,
            buffer_calls,
            open_files: files::FdBudget::get().limit() as u64,
        }
    }
}

/// Recordings made and read back in tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::{path::Path, time::Duration};

    use super::{Closed, RecId, Spool, SpoolConfig, WavWindow};

    /// A spool with a new recording `rec.wav` in `dir` at `rate`.
    pub fn recording(dir: &Path, rate: u32) -> (Spool, WavWindow) {
        let mut spool = Spool::start(0, SpoolConfig::with_memory_mb(16));
        let tag = super::Tag::new("call-1", false);
        let w = WavWindow::create(&mut spool, RecId(1), tag, dir.join("rec.wav"), rate, 3600);
        (spool, w)
    }

    /// Closes `w`, waits for the file and reads its interleaved samples back.
    pub fn finish(spool: &mut Spool, w: WavWindow) -> (Closed, Vec<i16>) {
        let closed = w
            .close(spool)
            .wait(Duration::from_secs(10))
            .expect("closed in time");
        (closed.clone(), read(&closed.path))
    }

    /// The interleaved samples of a WAV.
    pub fn read(path: &Path) -> Vec<i16> {
        hound::WavReader::open(path)
            .expect("a valid WAV")
            .into_samples::<i16>()
            .map(|s| s.expect("sample"))
            .collect()
    }
}
