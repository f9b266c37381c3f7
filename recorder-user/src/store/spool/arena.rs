//! Where a worker's audio buffers live: one memory mapping per worker, backed by a file in
//! the data directory when the daemon runs, so audio not yet on disk survives a crash of the
//! process.
//!
//! The file holds, for every buffer, a page of audio and a small header saying what the page
//! is for (a call's open buffer, or a write, patch, silence or append waiting for the spool
//! thread, in queue order). A page written through the mapping is in the page cache the moment
//! it is written, so `kill -9`, a panic or the OOM killer lose none of it: the next run
//! [`recover`]s every page that was not yet in its recording. A buffer's header is written by
//! whoever holds the buffer ([`Chunk`] is a unique token), so nothing here takes a lock.
//!
//! Without a data directory (replay, tests) the mapping is anonymous memory.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapMut, MmapOptions};

use super::chunk::CHUNK_BYTES;

const MAGIC: &[u8; 8] = b"CTSPOOL1";
/// Bytes of a buffer's header.
const HEAD: usize = 128;
/// Longest call identity a header keeps.
pub const TAG_BYTES: usize = 88;

/// What a buffer is for, as its header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Free = 0,
    /// A call's open buffer: the whole truth of its part of the WAV, bytes `lo..hi` of it
    /// at `offset + lo` (buffer 0 leaves the header's bytes out).
    Open = 1,
    /// Waiting to be written: bytes `lo..hi` at `offset`.
    Write = 2,
    /// Waiting to be laid over channel `channel` from frame `offset`: `n` samples.
    Patch = 3,
    /// Waiting to silence frames `offset..to`.
    Zero = 4,
    /// Waiting to be appended to a raw RTP pcap: `n` bytes.
    Append = 5,
    /// A raw RTP pcap's buffer being filled: `n` bytes so far.
    AppendOpen = 6,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::Write,
            3 => State::Patch,
            4 => State::Zero,
            5 => State::Append,
            6 => State::AppendOpen,
            _ => State::Free,
        }
    }
}

/// A buffer's header, as laid out in the mapping.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Head {
    state: u8,
    channel: u8,
    /// The call's identity is its uuid; `raw` says the file is its raw RTP pcap.
    raw: u8,
    tag_len: u8,
    lo: u16,
    hi: u16,
    n: u16,
    _pad: [u8; 6],
    /// Queue order of a waiting operation.
    seq: u64,
    offset: u64,
    to: u64,
    tag: [u8; TAG_BYTES],
}

const _: () = assert!(std::mem::size_of::<Head>() == HEAD);

/// What a header describes, written by the buffer's holder.
#[derive(Clone, Copy, Debug)]
pub struct Meaning {
    pub state: State,
    pub channel: u8,
    pub lo: u16,
    pub hi: u16,
    pub n: u16,
    pub seq: u64,
    pub offset: u64,
    pub to: u64,
}

impl Meaning {
    pub fn of(state: State) -> Meaning {
        Meaning {
            state,
            channel: 0,
            lo: 0,
            hi: 0,
            n: 0,
            seq: 0,
            offset: 0,
            to: 0,
        }
    }
}

/// A call's identity in headers: its uuid and which of its files.
#[derive(Clone, Copy)]
pub struct Tag {
    bytes: [u8; TAG_BYTES],
    len: u8,
    raw: bool,
}

impl Tag {
    pub fn new(uuid: &str, raw: bool) -> Tag {
        let mut bytes = [0; TAG_BYTES];
        let n = uuid.len().min(TAG_BYTES);
        bytes[..n].copy_from_slice(&uuid.as_bytes()[..n]);
        Tag {
            bytes,
            len: n as u8,
            raw,
        }
    }

    pub fn uuid(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.uuid(), if self.raw { ".raw" } else { "" })
    }
}

/// Buffers whose disk blocks are allocated at a time (16 MiB), as the pool grows.
const STEP: usize = 4096;

/// The mapping of one worker's buffers.
pub struct Arena {
    map: MmapMut,
    buffers: usize,
    /// The file behind it, if any, and its path.
    file: Option<File>,
    path: Option<PathBuf>,
    /// Buffers below this have their disk blocks allocated (all of them when anonymous): only
    /// those are handed out, so a write to a buffer never has to allocate a block (a full
    /// disk would make that a SIGBUS).
    backed: AtomicUsize,
}

// SAFETY: the mapping is plain memory; every buffer in it is reached only through its unique
// `Chunk` token (see `Chunk`), and the arena outlives the tokens (held by `Arc` in the pool and
// the spool thread).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

/// Byte offset of the first page: the arena header page, then every buffer's header, rounded
/// up to a page.
fn pages_at(buffers: usize) -> usize {
    (4096 + buffers * HEAD).next_multiple_of(4096)
}

impl Arena {
    /// `buffers` buffers in anonymous memory: lost with the process.
    pub fn anonymous(buffers: usize) -> io::Result<Arena> {
        let len = pages_at(buffers) + buffers * CHUNK_BYTES;
        let map = MmapOptions::new().len(len).map_anon()?;
        Ok(Arena {
            map,
            buffers,
            file: None,
            path: None,
            backed: AtomicUsize::new(buffers),
        })
    }

    /// `buffers` buffers in the file `path`, made anew (run [`recover`] on the old one first).
    /// The file is sparse; its blocks are allocated [`STEP`] buffers at a time as the pool
    /// grows ([`Arena::back`]), so the disk it takes follows the calls recorded at once.
    pub fn file(path: &Path, buffers: usize) -> io::Result<Arena> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let len = pages_at(buffers) + buffers * CHUNK_BYTES;
        file.set_len(len as u64)?;
        allocate(&file, 0, 4096)?;
        let mut head = [0u8; 24];
        head[..8].copy_from_slice(MAGIC);
        head[8..16].copy_from_slice(&(buffers as u64).to_le_bytes());
        head[16..24].copy_from_slice(&(CHUNK_BYTES as u64).to_le_bytes());
        file.write_all_at(&head, 0)?;
        // SAFETY: the file is ours (made anew above, in CallTap's data directory); nobody
        // truncates it while it is mapped.
        let map = unsafe { MmapOptions::new().len(len).map_mut(&file)? };
        let arena = Arena {
            map,
            buffers,
            file: Some(file),
            path: Some(path.to_path_buf()),
            backed: AtomicUsize::new(0),
        };
        arena.back(STEP.min(buffers))?;
        Ok(arena)
    }

    /// Buffers whose blocks are allocated.
    pub fn backed(&self) -> usize {
        self.backed.load(Ordering::Acquire)
    }

    /// Allocates the blocks of at least the first `upto` buffers (their headers and pages),
    /// [`STEP`] at a time; a no-op for what is allocated already, and for anonymous memory.
    /// Called by the pool before it hands out a buffer past the allocated ones.
    pub fn back(&self, upto: usize) -> io::Result<()> {
        let have = self.backed();
        let Some(file) = self.file.as_ref().filter(|_| upto > have) else {
            return Ok(());
        };
        let want = upto.max(have + STEP).min(self.buffers);
        let heads = (4096 + have * HEAD) as u64..(4096 + want * HEAD) as u64;
        let at = pages_at(self.buffers);
        let pages = (at + have * CHUNK_BYTES) as u64..(at + want * CHUNK_BYTES) as u64;
        for r in [heads, pages] {
            allocate(file, r.start, r.end - r.start)?;
        }
        self.backed.store(want, Ordering::Release);
        Ok(())
    }

    pub fn buffers(&self) -> usize {
        self.buffers
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The token of buffer `idx`; the pool makes each one once.
    pub(super) fn chunk(&self, idx: usize) -> Option<Chunk> {
        if idx >= self.buffers {
            return None;
        }
        let base = self.map.as_ptr().cast_mut();
        // SAFETY: both offsets lie inside the mapping (idx < buffers).
        let (page, head) = unsafe {
            (
                base.add(pages_at(self.buffers) + idx * CHUNK_BYTES),
                base.add(4096 + idx * HEAD),
            )
        };
        Some(Chunk {
            page: page.cast(),
            head: head.cast(),
        })
    }
}

/// One buffer: its page and its header in the arena. Not `Clone`: the one token is the one
/// right to touch that memory. Dropping it touches nothing.
pub struct Chunk {
    page: *mut [u8; CHUNK_BYTES],
    head: *mut Head,
}

// SAFETY: a token moves between the worker and its spool thread; whoever holds it is the only
// one to touch its page and header.
unsafe impl Send for Chunk {}

impl Chunk {
    pub fn bytes(&self) -> &[u8; CHUNK_BYTES] {
        // SAFETY: the page is inside the arena, which outlives the token, and only this token
        // reaches it.
        unsafe { &*self.page }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8; CHUNK_BYTES] {
        // SAFETY: as in `bytes`; `&mut self` makes the access unique.
        unsafe { &mut *self.page }
    }

    /// Says what the buffer is for (see [`recover`]).
    pub fn mark(&mut self, tag: &Tag, m: Meaning) {
        // SAFETY: the header is inside the arena and only this token reaches it.
        let h = unsafe { &mut *self.head };
        h.channel = m.channel;
        h.raw = u8::from(tag.raw);
        h.tag_len = tag.len;
        h.lo = m.lo;
        h.hi = m.hi;
        h.n = m.n;
        h.seq = m.seq;
        h.offset = m.offset;
        h.to = m.to;
        h.tag = tag.bytes;
        // Last: a crash between the fields and this sees the old state.
        h.state = m.state as u8;
    }

    /// Updates the byte count of a raw pcap buffer being filled.
    pub fn set_n(&mut self, n: u16) {
        // SAFETY: as in `mark`.
        unsafe { (*self.head).n = n };
    }

    /// The buffer is free again (its operation is done).
    pub fn release(&mut self) {
        // SAFETY: as in `mark`.
        unsafe { (*self.head).state = State::Free as u8 };
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunk")
    }
}

/// Allocates the blocks of `len` bytes of `file` from `offset` (see [`Arena::back`]); on file
/// systems without fallocate the bytes are written instead (zeros), which allocates them too.
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fallocate on a descriptor we own.
    let rc = unsafe {
        libc::posix_fallocate(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t)
    };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {
            let zeros = [0u8; 1 << 16];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The files a crashed run's buffers belong to, by call uuid: the WAV and the raw RTP pcap
/// (from the active-call journal).
pub type Lookup<'a> = dyn Fn(&str) -> (Option<PathBuf>, Option<PathBuf>) + 'a;

/// What [`recover`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Buffers laid into their recordings.
    pub buffers: u64,
    /// Buffers whose call is not in the journal any more (or has no file yet): dropped.
    pub orphans: u64,
    /// Buffers that could not be written (the error is logged).
    pub errors: u64,
}

/// Lays the buffers a crashed run left in the arena files under `dir` into their recordings
/// (operations in the order they were queued, then the calls' open buffers, which hold the
/// whole truth of their parts), then removes the arena files. Run before a new run maps its
/// own, and before calls are restored.
pub fn recover(dir: &Path, lookup: &Lookup<'_>) -> Recovered {
    let mut done = Recovered::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return done;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "buf") {
            continue;
        }
        match recover_file(&path, lookup, &mut done) {
            Ok(()) => {}
            Err(err) => log::error!("{}: cannot recover buffered audio: {err}", path.display()),
        }
        if let Err(err) = std::fs::remove_file(&path) {
            log::warn!("{}: {err}", path.display());
        }
    }
    done
}

fn recover_file(path: &Path, lookup: &Lookup<'_>, done: &mut Recovered) -> io::Result<()> {
    let file = File::open(path)?;
    let len = file.metadata()?.len() as usize;
    let mut head = [0u8; 24];
    file.read_exact_at(&mut head, 0)?;
    if &head[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a spool arena",
        ));
    }
    let buffers = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default()) as usize;
    let page = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default()) as usize;
    if page != CHUNK_BYTES || pages_at(buffers) + buffers * CHUNK_BYTES > len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "arena of another layout",
        ));
    }
    let mut heads = vec![0u8; buffers * HEAD];
    file.read_exact_at(&mut heads, 4096)?;
    let mut work: Vec<(usize, Head)> = heads
        .chunks_exact(HEAD)
        .enumerate()
        .filter_map(|(i, b)| {
            // SAFETY: `b` is HEAD bytes and Head is plain data of that size.
            let h: Head = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
            (State::from_u8(h.state) != State::Free).then_some((i, h))
        })
        .collect();
    // Waiting operations in queue order, then the open buffers.
    work.sort_by_key(|(_, h)| {
        let open = matches!(State::from_u8(h.state), State::Open | State::AppendOpen);
        (open, h.seq)
    });
    let mut files: std::collections::HashMap<PathBuf, File> = Default::default();
    for (i, h) in work {
        let uuid =
            std::str::from_utf8(&h.tag[..usize::from(h.tag_len).min(TAG_BYTES)]).unwrap_or("");
        let (wav, raw) = lookup(uuid);
        let Some(target) = (if h.raw != 0 { raw } else { wav }) else {
            done.orphans += 1;
            continue;
        };
        let mut data = vec![0u8; CHUNK_BYTES];
        file.read_exact_at(&mut data, (pages_at(buffers) + i * CHUNK_BYTES) as u64)?;
        let out = match files.entry(target.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut o = OpenOptions::new();
                if h.raw != 0 {
                    o.append(true);
                } else {
                    o.read(true).write(true);
                }
                match o.open(&target) {
                    Ok(f) => v.insert(f),
                    Err(err) => {
                        log::error!("{}: cannot recover buffered audio: {err}", target.display());
                        done.errors += 1;
                        continue;
                    }
                }
            }
        };
        match apply(out, &h, &data) {
            Ok(()) => done.buffers += 1,
            Err(err) => {
                log::error!("{}: cannot recover buffered audio: {err}", target.display());
                done.errors += 1;
            }
        }
    }
    for (_, f) in files {
        f.sync_all()?;
    }
    Ok(())
}

/// One buffer's operation on its file, as the spool thread would have done it.
fn apply(out: &mut File, h: &Head, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let data_at = super::super::wav::DATA_OFFSET;
    match State::from_u8(h.state) {
        State::Free => Ok(()),
        State::Open | State::Write => {
            let (lo, hi) = (usize::from(h.lo), usize::from(h.hi).min(CHUNK_BYTES));
            match data.get(lo..hi) {
                Some(bytes) => out.write_all_at(bytes, h.offset + lo as u64),
                None => Ok(()),
            }
        }
        State::Patch => {
            let n = usize::from(h.n).min(CHUNK_BYTES / 2);
            let at = data_at + h.offset * 4;
            let mut frames = vec![0u8; n * 4];
            let mut got = 0;
            while got < frames.len() {
                match out.read_at(&mut frames[got..], at + got as u64)? {
                    0 => break,
                    k => got += k,
                }
            }
            let ch = usize::from(h.channel.min(1)) * 2;
            for (i, f) in frames.chunks_exact_mut(4).enumerate() {
                f[ch..ch + 2].copy_from_slice(&data[i * 2..i * 2 + 2]);
            }
            out.write_all_at(&frames, at)
        }
        State::Zero => {
            let zeros = [0u8; 1 << 16];
            let (mut at, end) = (data_at + h.offset * 4, data_at + h.to * 4);
            while at < end {
                let n = (end - at).min(zeros.len() as u64) as usize;
                out.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        State::Append | State::AppendOpen => {
            out.write_all(&data[..usize::from(h.n).min(CHUNK_BYTES)])
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn the_file_takes_disk_as_buffers_are_handed_out() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("media-0.buf");
        let a = Arena::file(&path, 100_000).expect("arena");
        let allocated = || std::fs::metadata(&path).expect("meta").blocks() * 512;
        assert!(allocated() < 20 << 20, "{} bytes at first", allocated());
        assert_eq!(a.backed(), STEP);
        a.back(10_000).expect("grow");
        assert!(a.backed() >= 10_000);
        assert!(allocated() >= 10_000 * CHUNK_BYTES as u64);
        assert!(allocated() < 60 << 20, "{} bytes", allocated());
    }

    /// A crashed run's buffers, laid into their files in queue order, the open buffers last:
    /// a write, then a patch over it, a silence, and an open buffer holding a later page.
    #[test]
    fn recovery_replays_what_was_queued_then_what_was_open() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("spool");
        let wav = tmp.path().join("a.wav");
        std::fs::write(&wav, vec![0u8; 44]).expect("wav");
        let tag = Tag::new("call-a", false);
        {
            let a = Arena::file(&dir.join("media-0.buf"), 64).expect("arena");
            let data = 44u64;
            let mut w = a.chunk(0).expect("chunk");
            w.bytes_mut().fill(1);
            w.mark(
                &tag,
                Meaning {
                    lo: 0,
                    hi: 4096,
                    seq: 1,
                    offset: data,
                    ..Meaning::of(State::Write)
                },
            );
            // Channel 1 of frames 10..20 over the page just written.
            let mut p = a.chunk(1).expect("chunk");
            for (i, b) in p.bytes_mut().chunks_exact_mut(2).take(10).enumerate() {
                b.copy_from_slice(&(i as i16 + 100).to_le_bytes());
            }
            p.mark(
                &tag,
                Meaning {
                    channel: 1,
                    n: 10,
                    seq: 2,
                    offset: 10,
                    ..Meaning::of(State::Patch)
                },
            );
            let mut z = a.chunk(2).expect("chunk");
            z.mark(
                &tag,
                Meaning {
                    seq: 3,
                    offset: 1000,
                    to: 1024,
                    ..Meaning::of(State::Zero)
                },
            );
            let mut o = a.chunk(3).expect("chunk");
            o.bytes_mut().fill(7);
            o.mark(
                &tag,
                Meaning {
                    lo: 0,
                    hi: 4096,
                    offset: data + 4096,
                    ..Meaning::of(State::Open)
                },
            );
            // Done and given back before the crash: not replayed.
            let mut done = a.chunk(4).expect("chunk");
            done.bytes_mut().fill(9);
            done.mark(
                &tag,
                Meaning {
                    lo: 0,
                    hi: 4096,
                    seq: 4,
                    offset: data + 8192,
                    ..Meaning::of(State::Write)
                },
            );
            done.release();
        }
        let got = recover(&dir, &|uuid| {
            (uuid == "call-a")
                .then(|| wav.clone())
                .map_or((None, None), |w| (Some(w), None))
        });
        assert_eq!(
            got,
            Recovered {
                buffers: 4,
                orphans: 0,
                errors: 0
            }
        );
        assert!(
            !dir.join("media-0.buf").exists(),
            "the arena is gone once replayed"
        );
        let bytes = std::fs::read(&wav).expect("read");
        assert_eq!(bytes.len(), 44 + 8192, "nothing of the released buffer");
        let frame = |f: usize| &bytes[44 + f * 4..44 + f * 4 + 4];
        assert_eq!(frame(0), &[1, 1, 1, 1]);
        assert_eq!(
            frame(12),
            &[1, 1, 102, 0],
            "channel 0 kept, channel 1 patched"
        );
        assert_eq!(frame(1010), &[0, 0, 0, 0], "silenced");
        assert_eq!(frame(1024), &[7, 7, 7, 7], "the open buffer's page");
    }
}
