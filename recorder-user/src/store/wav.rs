//! Stereo 16-bit PCM WAV files written through a memory map.
//!
//! Audio is placed at absolute sample positions (the RTP timestamp says where), so the file is
//! random access: late packets land where they belong and gaps stay zero, i.e. silence. The file
//! grows in preallocated chunks (remapped as it grows), the header is rewritten on every flush so
//! the file is a valid WAV at every moment, and a crash loses at most one flush interval.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use memmap2::MmapMut;
use sha2::{Digest as _, Sha256};

const HEADER: u64 = 44;
/// Byte offset of the sample data in the files this module writes.
pub const DATA_OFFSET: u64 = HEADER;
/// Bytes added to the file each time it runs out (about 16 s of 16 kHz stereo).
const GROW: u64 = 1 << 20;
const CHANNELS: u64 = 2;
const BYTES_PER_FRAME: u64 = 2 * CHANNELS;

/// An open recording.
pub struct WavWriter {
    path: PathBuf,
    file: File,
    map: MmapMut,
    rate: u32,
    /// Frames the mapping can hold.
    capacity: u64,
    /// Frames written so far (highest written frame + 1, or as extended).
    frames: u64,
    /// Longest recording we accept, in frames; beyond it samples are dropped (and counted).
    max_frames: u64,
    pub dropped_samples: u64,
    /// Bytes at the start of the mapping already handed back to the page cache (see `flush`).
    released: usize,
    /// The file's pages below this offset are in the page cache already (see [`PREFILL`]);
    /// nothing at or beyond it has been written through the mapping.
    prefilled: u64,
}

/// How far ahead of the audio the file's pages are put into the page cache with `pwrite` of
/// zeros (half a second of 8 kHz stereo), before the mapping first writes them.
///
/// A page of a fresh (fallocated) file first written through a shared mapping costs a full
/// page fault: a page-cache page allocated and zeroed for the unwritten extent, then
/// `page_mkwrite`, 3-4 us each here, and a call writes 8 pages a second (a fifth of the
/// replay's time went there). Writing the zeros with one `pwrite` first costs about 1 us a
/// page, and the mapping's later writes find the pages dirty and up to date (the kernel maps
/// the whole folio at the first one): about 0.2 us a page. The zeros reach the disk once, with
/// the audio: the pages stay dirty far less than the kernel's writeback age. The price is
/// memory: up to this much more of the file is mapped ahead of the audio (smaps showed 48-68
/// KiB mapped per recording with 32 KiB here and 500 ms of [`RESIDENT_MS`]; 16 KiB and 300 ms
/// took a fifth off calltap's resident memory at 2,000 live calls). The syscalls this doubles
/// cost nothing measurable: the work is per page, not per call. Gaps are never filled (a jump
/// ahead prefills from where the audio lands), so a long silence costs no zeros written.
const PREFILL: u64 = 16 * 1024;

/// Zeros for [`PREFILL`]ing (in .bss: costs no space in the binary).
static ZEROS: [u8; PREFILL as usize] = [0; PREFILL as usize];

/// Audio older than this (behind the newest written frame) is rarely written again: its pages
/// leave our address space at the next flush, so a call holds 0.3-1.3 s of audio (10-42 KiB at
/// 8 kHz, with the default 1 s flush) however long it runs. Jitter buffers of phones and
/// gateways hold well under that, so a packet that late is rare; one reordered
/// further back (the timeline accepts up to 100 packets, 2 s at 20 ms) faults its page back
/// in from the page cache, where it still is: a minor fault, and the write is as correct as
/// ever.
const RESIDENT_MS: u64 = 300;
const PAGE: usize = 4096;

impl WavWriter {
    /// Creates (or truncates) `path`, creating parent directories.
    pub fn create(path: &Path, rate: u32, max_seconds: u64) -> io::Result<WavWriter> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        allocate(&file, HEADER + GROW)?;
        // SAFETY: we own the file; nobody else maps or truncates it while we write.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let mut w = WavWriter {
            path: path.to_path_buf(),
            file,
            map,
            rate,
            capacity: GROW / BYTES_PER_FRAME,
            frames: 0,
            max_frames: max_seconds.saturating_mul(rate as u64),
            dropped_samples: 0,
            released: PAGE,
            prefilled: 0,
        };
        // Before the header's write: the header page is the first one prefilled.
        w.prefill(0, PREFILL)?;
        w.write_header();
        Ok(w)
    }

    /// Maps an existing recording again to continue it (after a recorder restart): the header
    /// must be one [`WavWriter::create`] writes (PCM, stereo, 16-bit, `rate`), and the file must
    /// hold the data the header claims. Nothing is truncated: audio already in the file stays,
    /// and the preallocated space after it is still zero, so a gap stays silence.
    ///
    /// `frames_hint` is what the caller last knew was written (its journal); the writer goes on
    /// from the larger of it and the header's length, bounded by the file.
    pub fn reopen(
        path: &Path,
        rate: u32,
        max_seconds: u64,
        frames_hint: u64,
    ) -> io::Result<WavWriter> {
        let invalid = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len < HEADER {
            return Err(invalid(format!("{len} bytes, shorter than a WAV header")));
        }
        let mut h = [0u8; HEADER as usize];
        file.read_exact(&mut h)?;
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if &h[0..4] != b"RIFF" || &h[8..12] != b"WAVE" || &h[12..16] != b"fmt " {
            return Err(invalid("not a RIFF/WAVE file".into()));
        }
        if &h[36..40] != b"data" || u32_at(16) != 16 {
            return Err(invalid("not the layout CallTap writes".into()));
        }
        let (format, channels, file_rate, bits) = (u16_at(20), u16_at(22), u32_at(24), u16_at(34));
        if (format, u64::from(channels), file_rate, bits) != (1, CHANNELS, rate, 16) {
            return Err(invalid(format!(
                "format {format}, {channels} channels, {file_rate} Hz, {bits} bits; \
                 expected PCM stereo {rate} Hz 16-bit"
            )));
        }
        let data = u64::from(u32_at(40));
        if data % BYTES_PER_FRAME != 0 || HEADER + data > len {
            return Err(invalid(format!(
                "header claims {data} data bytes, the file holds {}",
                len - HEADER
            )));
        }
        // Whole frames of preallocated space.
        let capacity = (len - HEADER) / BYTES_PER_FRAME;
        let frames = (data / BYTES_PER_FRAME).max(frames_hint.min(capacity));
        // SAFETY: as in create.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let mut w = WavWriter {
            path: path.to_path_buf(),
            file,
            map,
            rate,
            capacity,
            frames,
            max_frames: max_seconds.saturating_mul(rate as u64),
            dropped_samples: 0,
            released: PAGE,
            // The earlier run may have written audio anywhere in the file, past what its
            // header and journal say: never overwrite it with zeros.
            prefilled: len,
        };
        w.write_header();
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the (open) recording to `path` in the same directory: a file prepared under a
    /// temporary name (see [`crate::store::prepare`]) takes its final one.
    pub fn rename_to(&mut self, path: &Path) -> io::Result<()> {
        fs::rename(&self.path, path)?;
        self.path = path.to_path_buf();
        Ok(())
    }

    /// Changes the sample rate of a recording nothing has been written to yet (a file
    /// prepared at 8 kHz for a call whose first audio is 16 kHz G.722); a no-op once it has
    /// audio.
    pub fn set_rate(&mut self, rate: u32) {
        if self.frames != 0 || rate == 0 || rate == self.rate {
            return;
        }
        let max_seconds = self.max_frames / u64::from(self.rate.max(1));
        self.rate = rate;
        self.max_frames = max_seconds.saturating_mul(u64::from(rate));
        self.write_header();
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    fn ensure(&mut self, frames: u64) -> io::Result<()> {
        if frames <= self.capacity {
            return Ok(());
        }
        let want = frames.div_ceil(GROW / BYTES_PER_FRAME) * GROW;
        allocate(&self.file, HEADER + want)?;
        // SAFETY: as in create; the old mapping is dropped by the assignment.
        self.map = unsafe { MmapMut::map_mut(&self.file)? };
        self.capacity = want / BYTES_PER_FRAME;
        // A fresh mapping: nothing of it is resident yet, but the range below `released` may
        // still be written by a late packet; that is fine, it faults in and out again.
        Ok(())
    }

    /// Writes `samples` into `channel` (0 or 1) starting at frame `pos`.
    pub fn write(&mut self, channel: usize, pos: u64, samples: &[i16]) -> io::Result<()> {
        let channel = (channel as u64).min(CHANNELS - 1);
        let mut n = samples.len() as u64;
        if n == 0 {
            // An RTP packet with an empty payload: nothing to write.
            return Ok(());
        }
        if pos >= self.max_frames {
            self.dropped_samples += n;
            return Ok(());
        }
        if pos + n > self.max_frames {
            self.dropped_samples += pos + n - self.max_frames;
            n = self.max_frames - pos;
        }
        let end = pos + n;
        self.ensure(end)?;
        let start = (HEADER + pos * BYTES_PER_FRAME) as usize;
        let end_byte = HEADER + end * BYTES_PER_FRAME;
        if end_byte > self.prefilled {
            let from = (start / PAGE * PAGE) as u64;
            self.prefill(from, end_byte + PREFILL)?;
        }
        // Whole frames, each sample stored into its channel's half: one loop per channel so
        // the offset is a constant (this loop is most of the per-packet work otherwise).
        let frames = &mut self.map[start..end_byte as usize];
        let frames = frames.chunks_exact_mut(BYTES_PER_FRAME as usize);
        let samples = &samples[..n as usize];
        if channel == 0 {
            for (f, s) in frames.zip(samples) {
                f[0..2].copy_from_slice(&s.to_le_bytes());
            }
        } else {
            for (f, s) in frames.zip(samples) {
                f[2..4].copy_from_slice(&s.to_le_bytes());
            }
        }
        self.frames = self.frames.max(end);
        Ok(())
    }

    /// Puts the file's pages from `from` (or `prefilled`, if further) up to `upto` (within
    /// the mapping) into the page cache by writing zeros: see [`PREFILL`]. Only ever past
    /// everything written so far: pages between `prefilled` and `from` were never written, and
    /// stay as they are (unwritten extents read as zeros).
    fn prefill(&mut self, from: u64, upto: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let upto = upto
            .next_multiple_of(PAGE as u64)
            .min(self.map.len() as u64);
        let mut at = from.max(self.prefilled);
        while at < upto {
            let n = (upto - at).min(PREFILL) as usize;
            self.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
            self.prefilled = at;
        }
        Ok(())
    }

    /// Asks the CPU to start fetching the cache lines that frames `pos..pos + frames` live
    /// in, for writing: called for each record of a group, with where its audio will most
    /// likely go, before any of the group is handled (see [`crate::pipeline::group`]); with
    /// thousands of calls a recording's lines are never in cache, and the stereo frames of a
    /// 20 ms packet span ten. A hint only: nothing happens outside the mapping.
    #[inline]
    pub fn prefetch(&self, pos: u64, frames: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            let len = self.map.len() as u64;
            let start = (HEADER + pos.saturating_mul(BYTES_PER_FRAME)).min(len);
            let end = (start + frames.saturating_mul(BYTES_PER_FRAME)).min(len);
            let base = self.map.as_ptr();
            let mut at = start & !63;
            while at < end {
                // SAFETY: a prefetch is a hint that never faults; `at` is inside the mapping.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(base.add(at as usize).cast()) };
                at += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (pos, frames);
    }

    /// Makes the recording at least `frames` long (silence after the last audio).
    pub fn extend_to(&mut self, frames: u64) -> io::Result<()> {
        let frames = frames.min(self.max_frames);
        self.ensure(frames)?;
        self.frames = self.frames.max(frames);
        Ok(())
    }

    fn write_header(&mut self) {
        let data = self.frames * BYTES_PER_FRAME;
        let riff = (36 + data).min(u32::MAX as u64) as u32;
        let data = data.min(u32::MAX as u64 - 36) as u32;
        let byte_rate = self.rate * BYTES_PER_FRAME as u32;
        let h = &mut self.map[..HEADER as usize];
        h[0..4].copy_from_slice(b"RIFF");
        h[4..8].copy_from_slice(&riff.to_le_bytes());
        h[8..12].copy_from_slice(b"WAVE");
        h[12..16].copy_from_slice(b"fmt ");
        h[16..20].copy_from_slice(&16u32.to_le_bytes());
        h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
        h[22..24].copy_from_slice(&(CHANNELS as u16).to_le_bytes());
        h[24..28].copy_from_slice(&self.rate.to_le_bytes());
        h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
        h[32..34].copy_from_slice(&(BYTES_PER_FRAME as u16).to_le_bytes());
        h[34..36].copy_from_slice(&16u16.to_le_bytes());
        h[36..40].copy_from_slice(b"data");
        h[40..44].copy_from_slice(&data.to_le_bytes());
    }

    /// Rewrites the header and starts writeback of dirty pages. After this returns, a crash of
    /// the process loses nothing and a crash of the machine loses at most what the kernel had
    /// not yet written.
    ///
    /// It also keeps memory per call flat however long the call: the mapping covers the whole
    /// file, so without this every page written would stay resident until the call ends (an
    /// hour-long call would hold 57 MB). Pages well behind the write position are dropped from
    /// our mapping; being a shared file mapping, their contents stay in the page cache and
    /// reach the file as usual.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_header();
        self.map.flush_async()?;
        let settled = self
            .frames
            .saturating_sub(RESIDENT_MS * u64::from(self.rate) / 1000);
        let upto = ((HEADER + settled * BYTES_PER_FRAME) as usize / PAGE) * PAGE;
        let upto = upto.min(self.map.len());
        if upto > self.released {
            // SAFETY: a shared file mapping: MADV_DONTNEED only drops our page table entries;
            // dirty data is in the page cache and is written back, later access re-reads it.
            unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.released,
                    upto - self.released,
                )?;
            }
            self.released = upto;
        }
        Ok(())
    }

    /// Final header and exact file length; the mapping is gone. Cheap (no waiting for the
    /// disk), so the media worker does it at call end; the file's data reaches the disk with
    /// [`seal`], which the CDR thread runs: fsync and hashing a long call take long enough
    /// (an hour of audio is 115 MB) to stall every other call of the worker.
    pub fn close(mut self) -> io::Result<ClosedWav> {
        self.write_header();
        let bytes = HEADER + self.frames * BYTES_PER_FRAME;
        let WavWriter {
            path,
            file,
            map,
            frames,
            rate,
            ..
        } = self;
        // Unmapping keeps the written pages: they are dirty in the page cache and reach the
        // file as any write does; `seal` waits for that.
        drop(map);
        file.set_len(bytes)?;
        Ok(ClosedWav {
            path,
            bytes,
            frames,
            rate,
        })
    }
}

/// A recording whose writing is over, not yet known to be on disk (see [`WavWriter::close`]).
#[derive(Clone, Debug)]
pub struct ClosedWav {
    pub path: PathBuf,
    pub bytes: u64,
    pub frames: u64,
    pub rate: u32,
}

/// Makes a closed recording durable (fsync: the data written through the mapping included)
/// and returns its sha256.
pub fn seal(path: &Path) -> io::Result<String> {
    File::open(path)?.sync_all()?;
    sha256_file(path)
}

/// Makes `file` `len` bytes long with its blocks really allocated. A sparse file (plain
/// `set_len`) would fail only when a page of the mapping is first written on a full disk, and
/// that failure is a SIGBUS that kills the recorder; allocating up front turns it into an
/// ordinary `ENOSPC` error here, which the caller counts and logs while recording goes on.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let current = file.metadata()?.len();
    if len <= current {
        return Ok(());
    }
    let offset = current as libc::off_t;
    let add = (len - current) as libc::off_t;
    // SAFETY: fallocate on a descriptor we own; the range is within off_t.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, add) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_at_their_positions_and_gaps_are_silence() {
        let dir = std::env::temp_dir().join(format!("calltap-wav-{}", std::process::id()));
        let path = dir.join("a/b/test.wav");
        let mut w = WavWriter::create(&path, 8000, 3600).expect("create");
        w.write(0, 10, &[1, 2, 3]).expect("write");
        w.write(1, 0, &[-5; 4]).expect("write");
        // Beyond the first preallocated chunk: forces a remap.
        w.write(1, 300_000, &[7]).expect("write");
        w.flush().expect("flush");
        // Valid at a flush point.
        let r = hound::WavReader::open(&path).expect("valid after flush");
        assert_eq!(r.len(), 300_001 * 2);
        let done = w.close().expect("close");
        assert_eq!(done.bytes, 44 + 300_001 * 4);
        let mut r = hound::WavReader::open(&path).expect("open");
        let spec = r.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (2, 8000, 16)
        );
        let s: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
        assert_eq!(&s[0..8], &[0, -5, 0, -5, 0, -5, 0, -5]);
        assert_eq!(&s[20..26], &[1, 0, 2, 0, 3, 0]);
        assert_eq!(s[300_000 * 2 + 1], 7);
        assert!(s[30..300_000 * 2].iter().all(|&x| x == 0));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn zeros_put_ahead_of_the_audio_never_overwrite_it() {
        // Packets of 20 ms on both channels for 6 s (well past several prefilled stretches),
        // a jump ahead beyond the prefilled pages, then late packets behind it: every sample
        // lands where it was written, whatever the order the pages were prefilled in.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prefill.wav");
        let mut w = WavWriter::create(&path, 8000, 3600).expect("create");
        let value = |ch: usize, frame: u64| ((frame * 7 + ch as u64 * 3) % 30_000) as i16 + 1;
        let packet =
            |ch: usize, pos: u64| -> Vec<i16> { (pos..pos + 160).map(|f| value(ch, f)).collect() };
        let mut written = Vec::new();
        for k in 0..300u64 {
            let pos = k * 160;
            w.write(0, pos, &packet(0, pos)).expect("write");
            w.write(1, pos, &packet(1, pos)).expect("write");
            written.push(pos);
            if k % 50 == 49 {
                w.flush().expect("flush");
            }
        }
        let far = 160 * 1000;
        w.write(0, far, &packet(0, far)).expect("write");
        w.write(1, far, &packet(1, far)).expect("write");
        for late in [160 * 300, 160 * 301, 160 * 999] {
            w.write(0, late, &packet(0, late)).expect("write");
            w.write(1, late, &packet(1, late)).expect("write");
            written.push(late);
        }
        written.push(far);
        w.close().expect("close");
        let mut r = hound::WavReader::open(&path).expect("open");
        let s: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
        assert_eq!(s.len() as u64, (far + 160) * 2);
        for f in 0..far + 160 {
            let audio = written.iter().any(|&p| (p..p + 160).contains(&f));
            for ch in 0..2 {
                let want = if audio { value(ch, f) } else { 0 };
                assert_eq!(s[(f * 2) as usize + ch], want, "frame {f} channel {ch}");
            }
        }
    }

    #[test]
    fn close_then_seal_gives_the_finished_file_and_its_hash() {
        let dir = std::env::temp_dir().join(format!("calltap-wav-seal-{}", std::process::id()));
        let path = dir.join("s.wav");
        let mut w = WavWriter::create(&path, 8000, 60).expect("create");
        w.write(0, 0, &[11; 160]).expect("write");
        w.write(1, 8000, &[-3; 160]).expect("write");
        // Past the hash's 64 KiB read buffer: the streamed hash must cover every block.
        w.write(0, 20_000, &[4; 160]).expect("write");
        let closed = w.close().expect("close");
        assert_eq!(closed.frames, 20_160);
        // Closed: the exact length and a valid header already, before any fsync.
        assert_eq!(fs::metadata(&path).expect("meta").len(), closed.bytes);
        assert_eq!(closed.bytes, HEADER + 20_160 * BYTES_PER_FRAME);
        let r = hound::WavReader::open(&path).expect("valid WAV once closed");
        let s: Vec<i16> = r
            .into_samples::<i16>()
            .map(|s| s.expect("sample"))
            .collect();
        assert_eq!(&s[..4], &[11, 0, 11, 0]);
        assert_eq!(&s[16_000..16_004], &[0, -3, 0, -3]);
        let sha = seal(&path).expect("seal");
        let whole = hex::encode(Sha256::digest(fs::read(&path).expect("read")));
        assert_eq!(sha, whole, "the hash of the whole file, in one piece");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_prepared_file_takes_its_final_name_and_rate_before_audio() {
        let dir = std::env::temp_dir().join(format!("calltap-wav-prep-{}", std::process::id()));
        let temp = dir.join(".p.wav.prep");
        let mut w = WavWriter::create(&temp, 8000, 10).expect("create");
        w.set_rate(16_000);
        let path = dir.join("p.wav");
        w.rename_to(&path).expect("rename");
        assert!(!temp.exists());
        w.write(1, 16_000, &[9; 10]).expect("write");
        w.set_rate(8000);
        assert_eq!(
            (w.rate(), w.max_frames),
            (16_000, 160_000),
            "not once audio is in"
        );
        let done = w.close().expect("close");
        assert_eq!(done.path, path);
        let r = hound::WavReader::open(&path).expect("wav");
        assert_eq!(r.spec().sample_rate, 16_000);
        assert_eq!(r.duration(), 16_010);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn empty_writes_are_harmless() {
        let dir = std::env::temp_dir().join(format!("calltap-wav-empty-{}", std::process::id()));
        let mut w = WavWriter::create(&dir.join("e.wav"), 8000, 10).expect("create");
        w.write(0, 0, &[]).expect("empty write");
        w.write(1, 1 << 40, &[]).expect("empty write far away");
        assert_eq!(w.close().expect("close").frames, 0);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn pages_handed_back_after_flush_keep_their_audio_and_take_late_writes() {
        let dir = std::env::temp_dir().join(format!("calltap-wav-rss-{}", std::process::id()));
        let path = dir.join("long.wav");
        let mut w = WavWriter::create(&path, 8000, 3600).expect("create");
        // 30 s of audio written in 20 ms packets, flushed every second as the worker does.
        for p in 0..1500u64 {
            let v = (p % 1000) as i16 + 1;
            w.write(0, p * 160, &[v; 160]).expect("write");
            if p % 50 == 49 {
                w.flush().expect("flush");
            }
        }
        assert!(
            w.released > 20 * 8000 * 4,
            "old pages handed back: {}",
            w.released
        );
        // A very late packet for second 1: its page was dropped and comes back.
        w.write(1, 8000, &[-9; 160]).expect("late write");
        let done = w.close().expect("close");
        let mut r = hound::WavReader::open(&done.path).expect("open");
        let s: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
        for p in 0..1500usize {
            assert_eq!(s[p * 160 * 2], (p % 1000) as i16 + 1, "packet {p}");
        }
        assert_eq!(&s[8000 * 2 + 1..8000 * 2 + 4], &[-9, 51, -9]);
        let _ = fs::remove_dir_all(dir);
    }

    /// A recording continued by a new process (reopened after a crash without `close`) ends
    /// byte for byte like one written by a single writer, the gap between being silence.
    #[test]
    fn reopen_continues_byte_exact() {
        let dir = std::env::temp_dir().join(format!("calltap-wav-reopen-{}", std::process::id()));
        let (a, b) = (dir.join("a.wav"), dir.join("b.wav"));
        let before: Vec<i16> = (0..8000).map(|i| (i % 300) as i16 - 150).collect();
        let after: Vec<i16> = (0..4000).map(|i| (i % 77) as i16 * 3).collect();
        let mut one = WavWriter::create(&a, 8000, 3600).expect("create");
        one.write(0, 0, &before).expect("write");
        one.write(1, 100, &before).expect("write");
        one.write(0, 300_000, &after).expect("write");
        let one = one.close().expect("close");

        let mut first = WavWriter::create(&b, 8000, 3600).expect("create");
        first.write(0, 0, &before).expect("write");
        first.write(1, 100, &before).expect("write");
        first.flush().expect("flush");
        // The process dies here: no close, the file keeps its preallocated length.
        drop(first);
        let mut second = WavWriter::reopen(&b, 8000, 3600, 0).expect("reopen");
        assert_eq!(second.frames(), 8100, "length from the header");
        second
            .write(0, 300_000, &after)
            .expect("write after the gap");
        let two = second.close().expect("close");
        assert_eq!(two.bytes, one.bytes);
        assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));

        // A wrong rate, a truncated file and garbage are refused, not mapped.
        assert!(WavWriter::reopen(&b, 16000, 3600, 0).is_err());
        let f = OpenOptions::new().write(true).open(&b).expect("open");
        f.set_len(1000).expect("truncate");
        assert!(WavWriter::reopen(&b, 8000, 3600, 0).is_err());
        fs::write(&b, b"not a wav at all, not even close to one, really not").expect("write");
        assert!(WavWriter::reopen(&b, 8000, 3600, 0).is_err());
        assert!(WavWriter::reopen(&dir.join("missing.wav"), 8000, 3600, 0).is_err());
        let _ = fs::remove_dir_all(dir);
    }

    /// The journal may know of audio written after the last header update (a crash between
    /// flushes): the reopened writer goes on from there, within the file.
    #[test]
    fn reopen_takes_the_journals_length_within_the_file() {
        let dir = std::env::temp_dir().join(format!("calltap-wav-hint-{}", std::process::id()));
        let path = dir.join("h.wav");
        let mut w = WavWriter::create(&path, 8000, 3600).expect("create");
        w.write(0, 0, &[5; 160]).expect("write");
        w.flush().expect("flush");
        w.write(0, 160, &[6; 160]).expect("write");
        drop(w);
        let w = WavWriter::reopen(&path, 8000, 3600, 320).expect("reopen");
        assert_eq!(w.frames(), 320);
        drop(w);
        let w = WavWriter::reopen(&path, 8000, 3600, u64::MAX).expect("reopen");
        assert_eq!(w.frames(), GROW / BYTES_PER_FRAME, "bounded by the file");
        let done = w.close().expect("close");
        let mut r = hound::WavReader::open(&done.path).expect("open");
        let s: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
        assert_eq!((s[0], s[320], s[640]), (5, 6, 0));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn max_length_caps_the_file() {
        let path = std::env::temp_dir().join(format!("calltap-wav-cap-{}.wav", std::process::id()));
        let mut w = WavWriter::create(&path, 8000, 1).expect("create");
        w.write(0, 7990, &[1; 20]).expect("write");
        assert_eq!(w.dropped_samples, 10);
        let done = w.close().expect("close");
        assert_eq!(done.frames, 8000);
        let _ = fs::remove_file(path);
    }
}
