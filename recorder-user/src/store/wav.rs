//! The recording file format: stereo 16-bit PCM WAV (caller left, callee right), the layout
//! CallTap writes, checks before continuing a file after a restart, and seals when a call ends.
//!
//! The samples are written by the spool ([`super::spool`]) at absolute positions (the
//! RTP timestamp says where), so a file is random access: late packets land where they belong
//! and gaps stay zero, i.e. silence.

use std::{
    fs::File,
    io::{self, Read as _},
    path::Path,
};

use sha2::{Digest as _, Sha256};

const HEADER: u64 = 44;
/// Byte offset of the sample data in the files this module writes.
pub const DATA_OFFSET: u64 = HEADER;
const CHANNELS: u64 = 2;
const BYTES_PER_FRAME: u64 = 2 * CHANNELS;

/// The header of a recording of `frames` stereo frames at `rate`.
pub fn header(rate: u32, frames: u64) -> [u8; HEADER as usize] {
    let data = frames.saturating_mul(BYTES_PER_FRAME);
    let riff = (36 + data).min(u64::from(u32::MAX)) as u32;
    let data = data.min(u64::from(u32::MAX) - 36) as u32;
    let byte_rate = rate.saturating_mul(BYTES_PER_FRAME as u32);
    let mut h = [0u8; HEADER as usize];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&riff.to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&(CHANNELS as u16).to_le_bytes());
    h[24..28].copy_from_slice(&rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&(BYTES_PER_FRAME as u16).to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    h
}

/// The global header of the raw RTP pcaps (microsecond timestamps, Ethernet, little-endian).
pub const PCAP_HEADER: [u8; 24] = [
    0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
];

/// What a recording an earlier run started holds (see [`probe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Frames its header claims.
    pub frames: u64,
    /// Frames of data the file's length covers (audio may have been written past the header
    /// between two flushes; a partial last frame counts).
    pub extent: u64,
}

/// Checks that `path` is a recording CallTap writes (PCM, stereo, 16-bit, `rate`) holding the
/// data its header claims, before a restarted run continues it.
pub fn probe(path: &Path, rate: u32) -> io::Result<Probe> {
    let invalid = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut file = File::open(path)?;
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
    Ok(Probe {
        frames: data / BYTES_PER_FRAME,
        extent: (len - HEADER).div_ceil(BYTES_PER_FRAME),
    })
}

/// Makes a closed recording durable (fsync) and returns its sha256.
pub fn seal(path: &Path) -> io::Result<String> {
    File::open(path)?.sync_all()?;
    sha256_file(path)
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
    fn the_header_is_what_wav_readers_expect() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("h.wav");
        let mut bytes = header(16_000, 3).to_vec();
        bytes.extend((0..6i16).flat_map(|s| s.to_le_bytes()));
        std::fs::write(&path, &bytes).expect("write");
        let r = hound::WavReader::open(&path).expect("valid WAV");
        let spec = r.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (2, 16_000, 16)
        );
        let s: Vec<i16> = r.into_samples().map(|s| s.expect("sample")).collect();
        assert_eq!(s, (0..6).collect::<Vec<i16>>());
        assert_eq!(
            probe(&path, 16_000).expect("probe"),
            Probe {
                frames: 3,
                extent: 3
            }
        );
    }

    #[test]
    fn probe_refuses_what_it_cannot_continue() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("p.wav");
        let mut bytes = header(8000, 2).to_vec();
        bytes.extend([0u8; 8 + 4000 + 2]);
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(
            probe(&path, 8000).expect("probe"),
            Probe {
                frames: 2,
                extent: 1003
            },
            "audio past the header counts, a partial frame too"
        );
        assert!(probe(&path, 16_000).is_err(), "another rate");
        std::fs::write(&path, &bytes[..40]).expect("truncate");
        assert!(probe(&path, 8000).is_err(), "shorter than a header");
        let mut short = header(8000, 100).to_vec();
        short.extend([0u8; 8]);
        std::fs::write(&path, &short).expect("write");
        assert!(probe(&path, 8000).is_err(), "less data than claimed");
        std::fs::write(
            &path,
            b"not a wav at all, not even close to one, really not",
        )
        .expect("write");
        assert!(probe(&path, 8000).is_err());
        assert!(probe(&tmp.path().join("missing.wav"), 8000).is_err());
    }

    #[test]
    fn seal_hashes_the_whole_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("s.wav");
        // Past the hash's 64 KiB read buffer: the streamed hash must cover every block.
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(
            seal(&path).expect("seal"),
            hex::encode(Sha256::digest(&bytes))
        );
    }
}
