//! Audio codecs the recorder understands, and how SDP/RTP names map onto them.

pub mod dtmf;
pub mod g711;
pub mod g722;

/// The payload formats the recorder distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CodecKind {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722 64 kbit/s wideband.
    G722,
    /// RFC 4733 named telephone events (DTMF).
    TelephoneEvent,
    /// RFC 3389 comfort noise.
    ComfortNoise,
    /// Anything else: kept as raw RTP rather than decoded.
    Unsupported,
}

impl CodecKind {
    /// Maps an SDP `a=rtpmap` encoding name and clock rate to a codec.
    ///
    /// G.711 is only accepted at its one defined clock rate (or 0, meaning the SDP omitted
    /// it): decoding it at another rate would produce garbage timing. G.722 is accepted at 8000
    /// (RFC 3551) and at 16000, which some endpoints wrongly advertise for the same stream.
    pub fn from_rtpmap(encoding: &str, clock_rate: u32) -> CodecKind {
        let is = |name: &str| encoding.eq_ignore_ascii_case(name);
        if is("PCMU") && matches!(clock_rate, 0 | 8000) {
            CodecKind::Pcmu
        } else if is("PCMA") && matches!(clock_rate, 0 | 8000) {
            CodecKind::Pcma
        } else if is("G722") && matches!(clock_rate, 0 | 8000 | 16000) {
            CodecKind::G722
        } else if is("telephone-event") {
            CodecKind::TelephoneEvent
        } else if is("CN") {
            CodecKind::ComfortNoise
        } else {
            CodecKind::Unsupported
        }
    }

    /// Codec of a static RTP payload type (RFC 3551 table 4) when no SDP mapping is known.
    pub fn from_static_pt(pt: u8) -> CodecKind {
        match pt {
            0 => CodecKind::Pcmu,
            8 => CodecKind::Pcma,
            9 => CodecKind::G722,
            13 => CodecKind::ComfortNoise,
            _ => CodecKind::Unsupported,
        }
    }

    /// Sample rate of the decoded audio.
    pub fn output_rate(self) -> u32 {
        match self {
            CodecKind::G722 => 16_000,
            _ => 8_000,
        }
    }

    /// Default RTP timestamp clock rate. G.722 is 8000 even though it samples at 16 kHz: an
    /// error in RFC 1890 that RFC 3551 kept for compatibility.
    pub fn rtp_clock(self) -> u32 {
        8_000
    }

    /// Canonical SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
            CodecKind::G722 => "G722",
            CodecKind::TelephoneEvent => "telephone-event",
            CodecKind::ComfortNoise => "CN",
            CodecKind::Unsupported => "unsupported",
        }
    }

    /// Whether this codec carries audio the recorder decodes.
    pub fn is_audio(self) -> bool {
        matches!(self, CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Cross-checks against an installed ffmpeg; tests skip them when it is absent.
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Decodes `data` (raw stream in ffmpeg input format `fmt`) to 16-bit mono PCM.
    pub fn ffmpeg_decode(fmt: &str, data: &[u8]) -> Option<Vec<i16>> {
        let mut args = vec!["-hide_banner", "-loglevel", "error", "-f", fmt];
        if fmt != "g722" {
            args.extend(["-ar", "8000", "-ac", "1"]);
        }
        args.extend(["-i", "pipe:0", "-f", "s16le", "-ac", "1", "pipe:1"]);
        let mut child = Command::new("ffmpeg")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let input = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        if !out.status.success() {
            return None;
        }
        Some(
            out.stdout
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
    }

    /// Encodes 16 kHz mono PCM to G.722 with ffmpeg.
    pub fn ffmpeg_encode_g722(pcm: &[i16]) -> Option<Vec<u8>> {
        let mut child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "s16le",
                "-ar",
                "16000",
                "-ac",
                "1",
                "-i",
                "pipe:0",
                "-c:a",
                "g722",
                "-f",
                "g722",
                "pipe:1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let input: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        out.status.success().then_some(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpmap() {
        assert_eq!(CodecKind::from_rtpmap("pcmu", 8000), CodecKind::Pcmu);
        assert_eq!(CodecKind::from_rtpmap("PCMA", 8000), CodecKind::Pcma);
        assert_eq!(
            CodecKind::from_rtpmap("PCMA", 16000),
            CodecKind::Unsupported
        );
        assert_eq!(CodecKind::from_rtpmap("g722", 8000), CodecKind::G722);
        assert_eq!(
            CodecKind::from_rtpmap("Telephone-Event", 8000),
            CodecKind::TelephoneEvent
        );
        assert_eq!(
            CodecKind::from_rtpmap("telephone-event", 48000),
            CodecKind::TelephoneEvent
        );
        assert_eq!(CodecKind::from_rtpmap("cn", 8000), CodecKind::ComfortNoise);
        assert_eq!(
            CodecKind::from_rtpmap("opus", 48000),
            CodecKind::Unsupported
        );
    }

    #[test]
    fn static_pt() {
        assert_eq!(CodecKind::from_static_pt(0), CodecKind::Pcmu);
        assert_eq!(CodecKind::from_static_pt(8), CodecKind::Pcma);
        assert_eq!(CodecKind::from_static_pt(9), CodecKind::G722);
        assert_eq!(CodecKind::from_static_pt(13), CodecKind::ComfortNoise);
        assert_eq!(CodecKind::from_static_pt(18), CodecKind::Unsupported);
        assert_eq!(CodecKind::from_static_pt(101), CodecKind::Unsupported);
    }

    #[test]
    fn rates() {
        assert_eq!(CodecKind::G722.output_rate(), 16_000);
        assert_eq!(CodecKind::G722.rtp_clock(), 8_000);
        assert_eq!(CodecKind::Pcmu.output_rate(), 8_000);
        assert_eq!(CodecKind::Pcma.name(), "PCMA");
    }
}
