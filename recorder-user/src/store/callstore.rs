//! The active-call repository: what a restarted CallTap needs to go on recording the calls an
//! earlier run was recording when it died (crash, `kill -9`, reboot).
//!
//! Two small files per active call under `<data_dir>/active/`, `<uuid>.0.json` and
//! `<uuid>.1.json`, written in turn: each holds a header line (`CALLTAP-JOURNAL <seq> <length>
//! <sha256>`) and the call's state as JSON. The media worker owning the call hands the state on
//! from its flush tick (never from the packet path), at most once per flush interval: at once,
//! made durable (fsync), when something that placement or the CDR depends on changed (a
//! stream's SSRC, anchoring or codec, the dialog, answer, hold, DTMF, the call's end), and every
//! [`DURABLE_NS`] anyway; in between, every [`COUNTERS_NS`] while packets flow, without the
//! fsync, so counters and sequence numbers are at most that far behind after a process crash at
//! the cost of a write, not a disk flush. A write goes over the older of the two files, in
//! place, so a crash in the middle of it leaves the newer one intact (the torn one fails its
//! checksum and is ignored). Writing in place instead of a temporary file and a rename matters:
//! creating a file per write (ext4 allocating an inode among thousands just deleted) was a
//! quarter of the recorder's CPU at 1,500 calls. The files are removed once the call's CDR is
//! stored. Files of the earlier one-file format (`<uuid>.json`) still load.
//!
//! The file system work (an open, a write and sometimes an fsync; thousands of calls cannot
//! wait for that on a media worker) is done by one journal thread
//! ([`JournalWriter::start`]): workers hand it the state and go on. It coalesces what queued
//! up (the latest state per call wins, a removal cancels pending writes) and fsyncs the
//! directory once per round. A crash loses what was still queued: the journal is then that
//! much older, which resuming tolerates.
//!
//! On start `calltap run` loads every file ([`CallStore::load`]) before capture begins; files it
//! cannot read are logged, moved to `active/corrupt/` and counted, never fatal. A heartbeat file
//! rewritten on the signalling tick tells the restarted run when the previous one was last
//! alive: the start of each restored call's restart gap.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    thread::JoinHandle,
};

use calltap_media::{codec::CodecId, quality::JitterEstimator, stream::StreamTimeline};
use calltap_sip::{
    dialog::DialogState,
    sdp::{Direction, RtpMap},
    NameAddr,
};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{
    cdr::{Dtmf, RejectedRequest, RestartGap},
    spool,
};

/// Subdirectory of the data dir holding the journal.
pub const ACTIVE_DIR: &str = "active";
/// Where unreadable journal files are moved.
const CORRUPT_DIR: &str = "corrupt";
const HEARTBEAT: &str = "heartbeat";
/// Format of the files; a file of another version is set aside like a corrupt one.
pub const VERSION: u32 = 1;
/// A call whose state did not change materially is still journaled durably this often, so
/// sequence numbers (16 bits: they wrap after 21 minutes of 20 ms packets) stay recent even
/// after a power loss.
pub const DURABLE_NS: u64 = 10_000_000_000;
/// Packet counters are journaled (without fsync) this often while they change.
pub const COUNTERS_NS: u64 = 2_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CallStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: journal version {found}, this CallTap reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: file name does not match call uuid {uuid:?}")]
    Name { path: PathBuf, uuid: String },
    #[error("{path}: {what}")]
    Torn { path: PathBuf, what: String },
    /// The journal thread's queue is full (the disk is slow): the call is journaled at its
    /// next flush instead.
    #[error("the active-call journal's queue is full")]
    QueueFull,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> CallStoreError + '_ {
    move |source| CallStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where one side of the call receives media, as its SDP said (hold state included).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideJournal {
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    #[serde(default)]
    pub codecs: Vec<RtpMap>,
    pub direction: Option<Direction>,
}

/// One audio direction: the timeline (its RTP timestamp to sample position anchor, sequence
/// state, highest position written, loss counters) and the quality counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DirJournal {
    pub ssrc: Option<u32>,
    pub timeline: Option<StreamTimeline>,
    pub timeline_clock: u32,
    pub last_ns: Option<u64>,
    pub jitter: Option<JitterEstimator>,
    pub packets: u64,
    pub bytes: u64,
    pub codec: Option<String>,
    pub kind: Option<CodecId>,
    pub rtcp_packets: u64,
    pub rtcp_fraction_lost: Option<f64>,
    pub rtcp_jitter_ms: Option<f64>,
}

/// The call's recording file as last flushed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WavJournal {
    pub path: PathBuf,
    pub rate: u32,
    /// Byte offset of the sample data (the header's length).
    pub data_offset: u64,
    /// Frames written (data bytes / 4).
    pub frames: u64,
}

/// Everything needed to continue one active call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallJournal {
    pub version: u32,
    /// When this version was written (capture clock, ns since the epoch).
    pub saved_ns: u64,
    pub uuid: String,
    pub call_id: String,
    /// Interaction the call belongs to (the correlation header's value, else the Call-ID):
    /// legs restored and legs seen after the restart keep grouping by it.
    pub interaction: String,
    pub from: NameAddr,
    pub to: NameAddr,
    pub caller_ip: IpAddr,
    pub callee_ip: IpAddr,
    pub start_ns: u64,
    /// Media worker that owned the call.
    pub worker: u32,
    /// The SIP dialog, so the BYE (or re-INVITE) after the restart is recognised.
    pub dialog: Option<DialogState>,
    pub ringing_ns: Option<u64>,
    pub answer_ns: Option<u64>,
    /// Caller's and callee's media endpoints: the media map entries to re-install.
    pub sides: [SideJournal; 2],
    pub dirs: [DirJournal; 2],
    #[serde(default)]
    pub dtmf: Vec<Dtmf>,
    #[serde(default)]
    pub dtmf_omitted: u64,
    /// In-dialog requests not acted on so far, and those past the CDR's bound.
    #[serde(default)]
    pub rejected_requests: Vec<RejectedRequest>,
    #[serde(default)]
    pub rejected_requests_omitted: u64,
    /// Where the recording goes (also before it exists).
    pub wav_path: PathBuf,
    pub wav: Option<WavJournal>,
    /// The raw RTP pcap of unsupported codecs exists (it is appended to, not recreated).
    #[serde(default)]
    pub raw_pcap: bool,
    /// Its name (a taken name got a suffix); `None` in journals of older versions, where it is
    /// the recording's with `.rtp.pcap`.
    #[serde(default)]
    pub raw_path: Option<PathBuf>,
    #[serde(default)]
    pub unsupported: Vec<String>,
    #[serde(default)]
    pub ssrc_dirs: Vec<(u32, usize)>,
    /// Gaps of earlier restarts (a call may survive several).
    #[serde(default)]
    pub restart_gaps: Vec<RestartGap>,
    /// The recording decision made at call start (rules), so a restored call is recorded, or
    /// not, as before; journals of older versions mean "record".
    #[serde(default)]
    pub recording: crate::rules::RecordingMode,
    /// Operator recording control so far (start/stop/pause/resume), replayed into the restored
    /// call's gate so paused and stopped spans stay silent and on-demand calls stay as asked.
    #[serde(default)]
    pub recording_events: Vec<crate::store::cdr::RecordingEvent>,
    /// Signalling had ended the call (reason, time) when this was written.
    pub ending: Option<(String, u64)>,
    #[serde(default)]
    pub write_failed: bool,
    pub last_media_ns: u64,
}

/// What [`CallStore::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub calls: Vec<CallJournal>,
    /// Files that could not be used (moved to `active/corrupt/`).
    pub corrupt: u64,
    /// Last heartbeat of the previous run, if it left one.
    pub last_alive_ns: Option<u64>,
}

/// Handle on the journal directory; cheap to clone, one per worker.
#[derive(Clone, Debug)]
pub struct CallStore {
    dir: PathBuf,
    /// The sequence number of each call's newest version (which of its two files to write
    /// next), from [`CallStore::load`] for calls of an earlier run.
    seqs: std::sync::Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

/// What [`CallStore::load`] found of one call: (sequence number, journal) of the files that
/// read back, and the files that did not.
type Versions = (Vec<(u64, CallJournal)>, Vec<PathBuf>);

/// First bytes of a journal file of the two-file format.
const MAGIC: &str = "CALLTAP-JOURNAL";

/// Journal file names come from uuids CallTap makes (hex and '-'); anything else is refused so
/// a name can never leave the directory.
fn safe_name(uuid: &str) -> bool {
    !uuid.is_empty()
        && uuid.len() <= 128
        && uuid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl CallStore {
    /// Opens (creating) the journal directory `dir` (normally `<data_dir>/active`).
    pub fn open(dir: &Path) -> Result<CallStore, CallStoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(CallStore {
            dir: dir.to_path_buf(),
            seqs: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The earlier one-file format's file.
    fn legacy_file_of(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    fn slot_file_of(&self, uuid: &str, slot: u64) -> PathBuf {
        self.dir.join(format!("{uuid}.{slot}.json"))
    }

    fn seqs(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.seqs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `j` over the older of the call's two files (see the module docs), with an fsync
    /// when `durable`. A new file's directory entry is made durable by [`CallStore::sync`], once
    /// per batch of saves.
    pub fn save(&self, j: &CallJournal, durable: bool) -> Result<(), CallStoreError> {
        if !safe_name(&j.uuid) {
            return Err(CallStoreError::Name {
                path: self.legacy_file_of(&j.uuid),
                uuid: j.uuid.clone(),
            });
        }
        let seq = {
            let mut seqs = self.seqs();
            let seq = seqs.entry(j.uuid.clone()).or_insert(0);
            *seq += 1;
            *seq
        };
        let path = self.slot_file_of(&j.uuid, seq % 2);
        let body = serde_json::to_vec(j).map_err(|source| CallStoreError::Json {
            path: path.clone(),
            source,
        })?;
        let mut bytes = format!(
            "{MAGIC} {seq} {} {}\n",
            body.len(),
            hex::encode(Sha256::digest(&body))
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        let f = write_in_place(&path, &bytes)?;
        if durable {
            f.sync_data().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// fsyncs the directory, so renames and removals survive a power loss.
    pub fn sync(&self) -> Result<(), CallStoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Forgets a call (its CDR has been handed on). A missing file is fine: the call may have
    /// ended before its first journal write.
    pub fn remove(&self, uuid: &str) -> Result<(), CallStoreError> {
        if !safe_name(uuid) {
            return Ok(());
        }
        self.seqs().remove(uuid);
        for path in [
            self.slot_file_of(uuid, 0),
            self.slot_file_of(uuid, 1),
            self.legacy_file_of(uuid),
        ] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Notes that this run is alive at `now_ns` (no fsync: after a process crash the page
    /// cache has it; after a power loss it is at worst a little older). Written in place, a
    /// fixed-width line (one small write, never a new file).
    pub fn beat(&self, now_ns: u64) -> Result<(), CallStoreError> {
        write_in_place(
            &self.dir.join(HEARTBEAT),
            format!("{now_ns:020}\n").as_bytes(),
        )
        .map(drop)
    }

    /// Reads every journal file. Unreadable ones are logged, moved aside and counted; leftover
    /// temporary files of an interrupted write are removed (the previous version is intact).
    pub fn load(&self) -> Loaded {
        let mut out = Loaded {
            last_alive_ns: fs::read_to_string(self.dir.join(HEARTBEAT))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            ..Loaded::default()
        };
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                log::error!(
                    "{}: cannot list the active-call journal: {e}",
                    self.dir.display()
                );
                return out;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        // Every version found per call: (sequence number, journal) of those that read back,
        // and the files that did not.
        let mut found: std::collections::BTreeMap<String, Versions> = Default::default();
        for path in paths {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A temporary file of the earlier format's interrupted write.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            let (uuid, read) = match stem.strip_suffix(".0").or_else(|| stem.strip_suffix(".1")) {
                Some(uuid) => (uuid, read_slot(&path, uuid)),
                None => (stem, read_journal(&path).map(|j| (0, j))),
            };
            let entry = found.entry(uuid.to_string()).or_default();
            match read {
                Ok(v) => entry.0.push(v),
                Err(e) => {
                    log::warn!("active-call journal: {e}");
                    entry.1.push(path);
                }
            }
        }
        for (uuid, (mut versions, bad)) in found {
            versions.sort_by_key(|(seq, _)| *seq);
            match versions.pop() {
                Some((seq, j)) => {
                    // The other file is older or torn: the next save goes over it.
                    self.seqs().insert(uuid, seq);
                    out.calls.push(j);
                }
                None => {
                    out.corrupt += 1;
                    for path in bad {
                        let aside = self.set_aside(&path);
                        log::error!(
                            "active-call journal: {} unreadable; moved to {} (the call cannot be \
                             resumed)",
                            path.display(),
                            aside.display()
                        );
                    }
                }
            }
        }
        out
    }

    fn set_aside(&self, path: &Path) -> PathBuf {
        let dir = self.dir.join(CORRUPT_DIR);
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let mut to = dir.join(&name);
        let mut n = 1;
        while to.exists() && n < 1000 {
            to = dir.join(format!("{}.{n}", name.to_string_lossy()));
            n += 1;
        }
        let moved = fs::create_dir_all(&dir).and_then(|()| fs::rename(path, &to));
        if let Err(e) = moved {
            log::error!("{}: cannot move aside ({e}); removing it", path.display());
            let _ = fs::remove_file(path);
        }
        to
    }
}

/// What the workers ask of the journal.
enum Op {
    Save(Box<CallJournal>, bool),
    Remove(String),
    Beat(u64),
}

/// The workers' handle on the journal (cheap to clone): the journal thread's queue, or the
/// store itself for inline drivers (tests), which then wait for the file system.
#[derive(Clone, Debug)]
pub struct JournalWriter(Target);

#[derive(Clone, Debug)]
enum Target {
    Inline(CallStore),
    Thread(Sender<Op>),
}

/// The journal thread; [`JournalThread::finish`] waits until it has written everything.
pub struct JournalThread {
    handle: Option<JoinHandle<JournalTotals>>,
}

/// What the journal thread did.
#[derive(Clone, Copy, Debug, Default)]
pub struct JournalTotals {
    pub writes: u64,
    pub removals: u64,
    pub errors: u64,
}

impl JournalWriter {
    /// Does the file system work in the caller's thread.
    pub fn inline(store: CallStore) -> JournalWriter {
        JournalWriter(Target::Inline(store))
    }

    /// Starts the journal thread.
    pub fn start(store: CallStore) -> io::Result<(JournalWriter, JournalThread)> {
        let (tx, rx) = crossbeam_channel::bounded(crate::queues::JOURNAL);
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || journal_thread(&store, &rx))?;
        Ok((
            JournalWriter(Target::Thread(tx)),
            JournalThread {
                handle: Some(handle),
            },
        ))
    }

    /// Journals a call (durably: fsync'd, see the module docs).
    pub fn save(&self, j: CallJournal, durable: bool) -> Result<(), CallStoreError> {
        match &self.0 {
            Target::Inline(store) => {
                store.save(&j, durable)?;
                if durable {
                    store.sync()?;
                }
                Ok(())
            }
            Target::Thread(tx) => match tx.try_send(Op::Save(Box::new(j), durable)) {
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    crate::queues::overflow(crate::queues::Queue::Journal);
                    Err(CallStoreError::QueueFull)
                }
                _ => Ok(()),
            },
        }
    }

    /// Forgets a call (its CDR has been handed on).
    pub fn remove(&self, uuid: &str) -> Result<(), CallStoreError> {
        match &self.0 {
            Target::Inline(store) => store.remove(uuid),
            // Never dropped: a call left in the journal would be restored after a restart.
            // Only the CDR thread removes, and it may wait.
            Target::Thread(tx) => {
                let _ = tx.send(Op::Remove(uuid.to_string()));
                Ok(())
            }
        }
    }

    /// Notes that this run is alive at `now_ns`.
    pub fn beat(&self, now_ns: u64) -> Result<(), CallStoreError> {
        match &self.0 {
            Target::Inline(store) => store.beat(now_ns),
            // A beat that does not fit is as good as the next one.
            Target::Thread(tx) => {
                let _ = tx.try_send(Op::Beat(now_ns));
                Ok(())
            }
        }
    }
}

impl JournalThread {
    /// Waits for the thread to write what is queued; it ends once every [`JournalWriter`] is
    /// dropped (the workers have stopped).
    pub fn finish(mut self) -> JournalTotals {
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Most errors logged one by one; after that, every thousandth (the disk is full or gone, and
/// the log must not fill it further).
const LOGGED_ERRORS: u64 = 10;

fn journal_thread(store: &CallStore, rx: &Receiver<Op>) -> JournalTotals {
    let mut totals = JournalTotals::default();
    // Per call, in arrival order: the latest state to write (None: remove) and whether it must
    // be durable.
    let mut pending: HashMap<String, (Option<Box<CallJournal>>, bool)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut beat = None;
    let fail = |totals: &mut JournalTotals, e: CallStoreError| {
        totals.errors += 1;
        if totals.errors <= LOGGED_ERRORS || totals.errors.is_multiple_of(1000) {
            log::error!("active-call journal ({} errors so far): {e}", totals.errors);
        }
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(op) = next.take().or_else(|| rx.try_recv().ok()) {
            match op {
                Op::Save(j, durable) => {
                    let uuid = j.uuid.clone();
                    match pending.get_mut(&uuid) {
                        Some(slot) => *slot = (Some(j), durable || slot.1),
                        None => {
                            order.push(uuid.clone());
                            pending.insert(uuid, (Some(j), durable));
                        }
                    }
                }
                Op::Remove(uuid) => {
                    if pending.insert(uuid.clone(), (None, true)).is_none() {
                        order.push(uuid);
                    }
                }
                Op::Beat(ns) => beat = Some(ns),
            }
        }
        let mut sync = false;
        for uuid in order.drain(..) {
            let Some((op, durable)) = pending.remove(&uuid) else {
                continue;
            };
            sync |= durable;
            let done = match op {
                Some(j) => store.save(&j, durable).map(|()| totals.writes += 1),
                None => store.remove(&uuid).map(|()| totals.removals += 1),
            };
            if let Err(e) = done {
                fail(&mut totals, e);
            }
        }
        if sync {
            if let Err(e) = store.sync() {
                fail(&mut totals, e);
            }
        }
        if let Some(ns) = beat.take() {
            if let Err(e) = store.beat(ns) {
                fail(&mut totals, e);
            }
        }
    }
    totals
}

/// Makes `path` hold exactly `bytes`, written over what it held (the same blocks, no new
/// file: see the module docs); a longer old content is cut off after.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<File, CallStoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    let len = bytes.len() as u64;
    if f.metadata().map_err(io_err(path))?.len() > len {
        f.set_len(len).map_err(io_err(path))?;
    }
    Ok(f)
}

/// Reads a file of the two-file format: its sequence number and journal, if the header is
/// intact and the body is the one it describes (a torn write is not).
fn read_slot(path: &Path, uuid: &str) -> Result<(u64, CallJournal), CallStoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let bad = |what: &str| CallStoreError::Torn {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header line"))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| bad("header not text"))?;
    let mut parts = header.split(' ');
    let (Some(MAGIC), Some(seq), Some(len), Some(sha), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad("not a journal header"));
    };
    let seq: u64 = seq.parse().map_err(|_| bad("bad sequence number"))?;
    let len: usize = len.parse().map_err(|_| bad("bad length"))?;
    let body = &bytes[nl + 1..];
    if body.len() != len {
        return Err(bad("length differs from the header (torn write)"));
    }
    if hex::encode(Sha256::digest(body)) != sha {
        return Err(bad("checksum differs from the header (torn write)"));
    }
    Ok((seq, parse_journal(path, body, uuid)?))
}

/// Reads a file of the earlier one-file format (plain JSON, named `<uuid>.json`).
fn read_journal(path: &Path) -> Result<CallJournal, CallStoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    parse_journal(path, &bytes, stem)
}

/// A journal's JSON, version checked first so a newer format is reported as such, not as
/// garbage; it must be the journal of `uuid` (the file's name).
fn parse_journal(path: &Path, bytes: &[u8], uuid: &str) -> Result<CallJournal, CallStoreError> {
    #[derive(Deserialize)]
    struct Head {
        version: u32,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|source| CallStoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    if head.version != VERSION {
        return Err(CallStoreError::Version {
            path: path.to_path_buf(),
            found: head.version,
        });
    }
    let j: CallJournal = serde_json::from_slice(bytes).map_err(|source| CallStoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    if j.uuid != uuid || !safe_name(&j.uuid) {
        return Err(CallStoreError::Name {
            path: path.to_path_buf(),
            uuid: j.uuid,
        });
    }
    Ok(j)
}

/// Lays the audio a crashed run left buffered under `dir` into the recordings its journaled
/// calls name (see [`spool::recover`]); run before the workers map their own arenas and the
/// calls are restored. Logs what it did.
pub fn recover_journaled(dir: &std::path::Path, calls: &[CallJournal]) -> spool::Recovered {
    let files: std::collections::HashMap<&str, (Option<PathBuf>, Option<PathBuf>)> = calls
        .iter()
        .map(|j| {
            let wav = j.wav.as_ref().map(|w| w.path.clone());
            let raw = j
                .raw_path
                .clone()
                .or_else(|| Some(j.wav_path.with_extension("rtp.pcap")))
                .filter(|_| j.raw_pcap);
            (j.uuid.as_str(), (wav, raw))
        })
        .collect();
    let done = spool::recover(dir, &|uuid| files.get(uuid).cloned().unwrap_or_default());
    if done != spool::Recovered::default() {
        log::info!(
            "recovered {} buffer(s) of audio a crashed run had not written yet ({} of calls no \
             longer journaled dropped, {} failed)",
            done.buffers,
            done.orphans,
            done.errors
        );
    }
    done
}

#[cfg(test)]
mod tests {
    use calltap_sip::dialog::{DialogFork, DialogMedia};

    use super::*;

    pub(crate) fn sample(uuid: &str) -> CallJournal {
        let mut timeline = StreamTimeline::new(8000, 8000);
        for i in 0..50u16 {
            let _ = timeline.place(
                0xabcd,
                100 + i,
                16_000 + u32::from(i) * 160,
                8000 + u64::from(i) * 160,
            );
        }
        let rtp: SocketAddr = "198.18.0.1:6000".parse().expect("addr");
        CallJournal {
            version: VERSION,
            saved_ns: 1_700_000_010_000_000_000,
            uuid: uuid.into(),
            call_id: "abc@host".into(),
            interaction: "ix-1".into(),
            from: NameAddr {
                user: Some("1000".into()),
                uri: "sip:1000@a".into(),
                tag: Some("ta".into()),
                ..NameAddr::default()
            },
            to: NameAddr {
                user: Some("2000".into()),
                uri: "sip:2000@b".into(),
                ..NameAddr::default()
            },
            caller_ip: "198.18.0.1".parse().expect("ip"),
            callee_ip: "198.18.0.2".parse().expect("ip"),
            start_ns: 1_700_000_000_000_000_000,
            worker: 1,
            dialog: Some(DialogState {
                call_id: "abc@host".into(),
                caller_tag: "ta".into(),
                started_ns: 1_700_000_000_000_000_000,
                invite_cseq: 2,
                invite_ns: 1_700_000_000_100_000_000,
                ringing: true,
                answered: true,
                cancel_ns: None,
                forks: vec![DialogFork {
                    tag: "tb".into(),
                    failed: false,
                }],
                pending_failure: None,
                path: Default::default(),
                media: [
                    Some(DialogMedia {
                        rtp: Some(rtp),
                        rtcp: None,
                        codecs: vec![],
                        direction: Direction::SendRecv,
                    }),
                    None,
                ],
            }),
            ringing_ns: Some(1_700_000_000_200_000_000),
            answer_ns: Some(1_700_000_001_000_000_000),
            sides: [
                SideJournal {
                    rtp: Some(rtp),
                    rtcp: None,
                    codecs: vec![RtpMap {
                        pt: 0,
                        encoding: "PCMU".into(),
                        clock_rate: 8000,
                        channels: 1,
                        fmtp: None,
                    }],
                    direction: Some(Direction::SendRecv),
                },
                SideJournal::default(),
            ],
            dirs: [
                DirJournal {
                    ssrc: Some(0xabcd),
                    timeline: Some(timeline),
                    timeline_clock: 8000,
                    packets: 50,
                    bytes: 8000,
                    codec: Some("PCMU".into()),
                    kind: CodecId::named("PCMU"),
                    ..DirJournal::default()
                },
                DirJournal::default(),
            ],
            dtmf: vec![Dtmf {
                side: "caller".into(),
                digit: '5',
                at_ms: 1200,
                duration_ms: Some(100),
                source: "rfc4733".into(),
            }],
            dtmf_omitted: 2,
            rejected_requests: vec![crate::store::cdr::RejectedRequest {
                method: "BYE".into(),
                src: "198.18.0.66:5060".into(),
                dst: "198.18.0.2:5060".into(),
                at_ms: 900,
                reason: "unknown_source".into(),
            }],
            rejected_requests_omitted: 0,
            wav_path: "/tmp/x.wav".into(),
            wav: Some(WavJournal {
                path: "/tmp/x.wav".into(),
                rate: 8000,
                data_offset: 44,
                frames: 16_000,
            }),
            raw_pcap: false,
            raw_path: None,
            unsupported: vec![],
            ssrc_dirs: vec![(0xabcd, 0)],
            restart_gaps: vec![RestartGap::new(1, 2_000_000)],
            recording: crate::rules::RecordingMode {
                action: crate::rules::RuleAction::OnDemand,
                rule_id: Some(7),
            },
            recording_events: vec![crate::store::cdr::RecordingEvent {
                action: "start".into(),
                ts: "2023-11-14T22:13:21.500Z".into(),
                at_ms: 1500,
            }],
            ending: None,
            write_failed: false,
            last_media_ns: 1_700_000_009_000_000_000,
        }
    }

    #[test]
    fn journal_round_trips_and_the_timeline_goes_on_where_it_was() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = CallStore::open(&tmp.path().join("active")).expect("open");
        let j = sample("0001-0000-000000000001");
        store.save(&j, true).expect("save");
        store.sync().expect("sync");
        store.beat(1_700_000_011_000_000_000).expect("beat");
        let loaded = store.load();
        assert_eq!((loaded.calls.len(), loaded.corrupt), (1, 0));
        assert_eq!(loaded.last_alive_ns, Some(1_700_000_011_000_000_000));
        let back = &loaded.calls[0];
        assert_eq!(
            serde_json::to_value(back).expect("json"),
            serde_json::to_value(&j).expect("json"),
            "every field survives"
        );
        assert_eq!(back.dialog, j.dialog);
        // The restored timeline places the next packet exactly where the original would.
        let mut orig = j.dirs[0].timeline.clone().expect("timeline");
        let mut restored = back.dirs[0].timeline.clone().expect("timeline");
        restored.resume();
        // 3 s later (150 packets the recorder never saw).
        let (seq, ts, at) = (100 + 50 + 150, 16_000 + 200 * 160, 8000 + 200 * 160 + 7);
        let want = orig.place(0xabcd, seq, ts, at);
        assert_eq!(restored.place(0xabcd, seq, ts, at), want);
        assert_eq!(
            want,
            calltap_media::stream::Placement::Write {
                pos: 8000 + 200 * 160
            }
        );
        // Packets the recorder was down for are not network loss.
        assert_eq!(restored.lost(), 0);
        assert_eq!(orig.lost(), 150);

        store.remove(&j.uuid).expect("remove");
        store.remove(&j.uuid).expect("remove twice is fine");
        assert!(store.load().calls.is_empty());
    }

    /// The journal thread writes what workers hand it, latest state per call, removals last,
    /// and has written everything once `finish` returns.
    #[test]
    fn journal_thread_coalesces_and_drains() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = CallStore::open(&tmp.path().join("active")).expect("open");
        let (writer, thread) = JournalWriter::start(store.clone()).expect("thread");
        let mut j = sample("live-1");
        for n in 0..50 {
            j.dirs[0].packets = n;
            writer.save(j.clone(), n % 10 == 0).expect("queue");
        }
        writer.save(sample("gone-2"), true).expect("queue");
        writer.remove("gone-2").expect("queue");
        writer.beat(42).expect("queue");
        let other = writer.clone();
        drop(writer);
        other.save(sample("late-3"), false).expect("queue");
        drop(other);
        let totals = thread.finish();
        assert_eq!(totals.errors, 0);
        let loaded = store.load();
        let mut got: Vec<(String, u64)> = loaded
            .calls
            .iter()
            .map(|c| (c.uuid.clone(), c.dirs[0].packets))
            .collect();
        got.sort();
        assert_eq!(got, vec![("late-3".into(), 50), ("live-1".into(), 49)]);
        assert_eq!(loaded.last_alive_ns, Some(42));
        assert!(totals.writes >= 2 && totals.writes <= 52, "{totals:?}");
    }

    /// Each save goes over the older of a call's two files: a write torn by a crash leaves the
    /// version before it, which a restarted run loads and then writes after.
    #[test]
    fn a_torn_write_falls_back_to_the_version_before_and_the_next_run_goes_on_from_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("active");
        let store = CallStore::open(&dir).expect("open");
        let mut j = sample("call-1");
        for n in 1..=3 {
            j.dirs[0].packets = n;
            store.save(&j, false).expect("save");
        }
        // Versions 2 (in .0) and 3 (in .1); no other file was ever created.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["call-1.0.json", "call-1.1.json"]);
        let packets = |store: &CallStore| -> Vec<u64> {
            store
                .load()
                .calls
                .iter()
                .map(|c| c.dirs[0].packets)
                .collect()
        };
        assert_eq!(packets(&CallStore::open(&dir).expect("reopen")), [3]);

        // The newest file torn in the middle (a crash during its write).
        let newest = dir.join("call-1.1.json");
        let bytes = fs::read(&newest).expect("read");
        fs::write(&newest, &bytes[..bytes.len() / 2]).expect("tear");
        let restarted = CallStore::open(&dir).expect("reopen");
        assert_eq!(packets(&restarted), [2], "the version before the torn one");
        let again = CallStore::open(&dir).expect("reopen").load();
        assert_eq!(again.corrupt, 0, "the call is still resumable");
        // The restarted run's next save goes over the torn file, and wins from then on.
        j.dirs[0].packets = 10;
        restarted.save(&j, true).expect("save");
        assert_eq!(packets(&CallStore::open(&dir).expect("reopen")), [10]);
        // A flipped byte is caught by the checksum as well.
        let file = dir.join("call-1.1.json");
        let mut bytes = fs::read(&file).expect("read");
        let at = bytes.len() - 10;
        bytes[at] ^= 1;
        fs::write(&file, &bytes).expect("flip");
        assert_eq!(packets(&CallStore::open(&dir).expect("reopen")), [2]);

        // Both files bad: the call cannot be resumed, both are set aside and counted once.
        fs::write(dir.join("call-1.0.json"), b"CALLTAP-JOURNAL 1 5 00\nhello").expect("w");
        let loaded = CallStore::open(&dir).expect("reopen").load();
        assert_eq!((loaded.calls.len(), loaded.corrupt), (0, 1));
        assert!(dir.join(CORRUPT_DIR).join("call-1.0.json").is_file());
        assert!(dir.join(CORRUPT_DIR).join("call-1.1.json").is_file());
    }

    /// A journal of the earlier one-file format still loads, a newer two-file version of the
    /// same call wins over it, and removing the call removes every file.
    #[test]
    fn the_one_file_format_still_loads_and_is_removed_with_the_call() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("active");
        let store = CallStore::open(&dir).expect("open");
        let mut old = sample("call-2");
        old.dirs[0].packets = 5;
        fs::write(
            dir.join("call-2.json"),
            serde_json::to_vec(&old).expect("json"),
        )
        .expect("legacy");
        let loaded = store.load();
        assert_eq!(loaded.calls.len(), 1);
        assert_eq!(loaded.calls[0].dirs[0].packets, 5);
        old.dirs[0].packets = 6;
        store.save(&old, false).expect("save");
        let loaded = CallStore::open(&dir).expect("reopen").load();
        assert_eq!(
            loaded
                .calls
                .iter()
                .map(|c| c.dirs[0].packets)
                .collect::<Vec<_>>(),
            [6]
        );
        store.remove("call-2").expect("remove");
        assert_eq!(fs::read_dir(&dir).expect("dir").count(), 0);
    }

    #[test]
    fn corrupt_and_foreign_files_are_set_aside_and_counted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("active");
        let store = CallStore::open(&dir).expect("open");
        store.save(&sample("good-1"), false).expect("save");
        fs::write(dir.join("torn.json"), b"{\"version\": 1, \"uuid\": \"to").expect("write");
        fs::write(dir.join("empty.json"), b"").expect("write");
        let mut newer = serde_json::to_value(sample("newer")).expect("json");
        newer["version"] = 99.into();
        fs::write(dir.join("newer.json"), newer.to_string()).expect("write");
        // A valid journal under the wrong name.
        fs::write(
            dir.join("renamed.json"),
            serde_json::to_vec(&sample("other")).expect("json"),
        )
        .expect("write");
        fs::write(dir.join(".x.json.tmp"), b"half").expect("write");
        fs::write(dir.join("heartbeat"), b"garbage").expect("write");
        let loaded = store.load();
        assert_eq!(loaded.calls.len(), 1);
        assert_eq!(loaded.calls[0].uuid, "good-1");
        assert_eq!(loaded.corrupt, 4);
        assert_eq!(loaded.last_alive_ns, None);
        let aside: Vec<String> = fs::read_dir(dir.join(CORRUPT_DIR))
            .expect("corrupt dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(aside.len(), 4, "{aside:?}");
        assert!(!dir.join(".x.json.tmp").exists());
        // Loading again finds only the good one: nothing is counted twice.
        let again = store.load();
        assert_eq!((again.calls.len(), again.corrupt), (1, 0));
        // A uuid that could leave the directory is refused.
        let mut bad = sample("x");
        bad.uuid = "../evil".into();
        assert!(store.save(&bad, true).is_err());
    }
}
