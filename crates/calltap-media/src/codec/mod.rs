//! Audio codecs: one file per codec, behind one interface.
//!
//! Each codec file defines a [`Codec`] (what SDP calls it, its RTP clock, how it rates on the
//! E-model) and the [`Decoder`] it makes for one stream; [`CODECS`] lists them all, and the
//! media worker picks one per stream from the SDP (`a=rtpmap`, `a=fmtp`) with
//! [`Payload::from_rtpmap`], or from the static payload type when there is no SDP.
//!
//! **Adding a codec** is one new file here (a `pub const NAME: Codec` and a type implementing
//! [`Decoder`]) and one line in the `registry!` list below. Nothing in the daemon changes: it
//! places whatever the decoder returns at the decoder's rate, and records in a pcap what no
//! codec here accepts.

use std::fmt;

/// Decodes one RTP stream (one direction of one call) into PCM.
///
/// Runs on the media worker's packet path: no allocation, no system call, no panic on any
/// payload (payloads come from the network). State (ADPCM predictors, a jitter-free PLC
/// history) lives in the decoder and carries over DTMF and comfort-noise packets of the same
/// stream; a change of codec starts a new decoder.
pub trait Decoder: Send {
    /// Sample rate of the decoded audio: 8000, 16000 or 48000 (the recording takes the rate of
    /// the first codec it hears and resamples the others to it).
    fn rate(&self) -> u32;

    /// Samples one packet carries at [`Decoder::rate`] when nothing says otherwise (20 ms): what
    /// [`Decoder::conceal`] is asked for per lost packet.
    fn frame_samples(&self) -> usize {
        (self.rate() / 50) as usize
    }

    /// Decodes one RTP payload into mono PCM at [`Decoder::rate`] in `out` (a stereo payload is
    /// mixed down); returns the samples written. What does not fit in `out` is left out.
    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize;

    /// Packet-loss concealment: fills `out` with audio for packets that never came and returns
    /// how many samples it wrote. The default writes none, so a loss stays silence, which is
    /// what a compliance recording of G.711 should hold; codecs with a PLC of their own (Opus,
    /// G.729, AMR, iLBC) override it.
    fn conceal(&mut self, out: &mut [i16]) -> usize {
        let _ = out;
        0
    }
}

/// What the SDP says about a stream's payload format, for making its decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Format<'a> {
    /// RTP clock rate from `a=rtpmap` (or the static assignment).
    pub clock_rate: u32,
    /// Channels from `a=rtpmap` (1 when it names none).
    pub channels: u8,
    /// The `a=fmtp` parameters as written, empty when there are none (`mode=20`,
    /// `octet-align=1`, `stereo=1; sprop-maxcapturerate=16000`).
    pub fmtp: &'a str,
}

impl Format<'_> {
    /// The value of `name` among the fmtp parameters (`a=b; c=d`), compared without case.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.fmtp.split(';').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// One codec CallTap decodes.
pub struct Codec {
    /// Stable name in the active-call journal: never change one, a journal written before an
    /// upgrade names its streams' codecs by it.
    pub id: &'static str,
    /// Canonical SDP encoding name (matched without case); CDRs name the codec by it.
    pub name: &'static str,
    /// RFC 3551 static payload type, for streams without an `a=rtpmap`.
    pub static_pt: Option<u8>,
    /// RTP clock rates the codec is accepted at; 0 stands for an rtpmap that gives none.
    /// Decoding at a clock the codec does not have would get every timestamp wrong.
    pub clock_rates: &'static [u32],
    /// RTP clock when the SDP gives none.
    pub rtp_clock: u32,
    /// E-model equipment impairment (Ie, Bpl; ITU-T G.113 Appendix I) for the MOS estimate.
    pub impairment: (f64, f64),
    /// A decoder for one stream of this format.
    pub decoder: fn(&Format<'_>) -> Box<dyn Decoder>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// One line per codec file: the module, then the codecs it defines.
macro_rules! registry {
    ($($module:ident: $($codec:ident),+;)+) => {
        $(pub mod $module;)+

        /// Every codec CallTap decodes, in lookup order.
        pub static CODECS: &[Codec] = &[$($($module::$codec),+),+];
    };
}

registry! {
    g711: PCMU, PCMA;
    g722: G722;
    g726: G726_16, G726_24, G726_32, G726_40, AAL2_G726_16, AAL2_G726_24, AAL2_G726_32, AAL2_G726_40;
    gsm: GSM;
    l16: L16;
}

pub mod dtmf;

/// A codec of [`CODECS`], small enough for the per-packet state (an index).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodecId(u8);

impl CodecId {
    pub fn codec(self) -> &'static Codec {
        &CODECS[usize::from(self.0)]
    }

    /// The codec SDP calls `name` (without case).
    pub fn named(name: &str) -> Option<CodecId> {
        Self::find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The codec the journal calls `id`.
    pub fn by_id(id: &str) -> Option<CodecId> {
        Self::find(|c| c.id == id)
    }

    fn find(f: impl Fn(&Codec) -> bool) -> Option<CodecId> {
        CODECS
            .iter()
            .position(f)
            .and_then(|i| u8::try_from(i).ok())
            .map(CodecId)
    }

    /// A decoder for one stream of this codec.
    pub fn decoder(self, format: &Format<'_>) -> Box<dyn Decoder> {
        (self.codec().decoder)(format)
    }
}

impl fmt::Debug for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.codec().name)
    }
}

/// Journaled by its [`Codec::id`].
impl serde::Serialize for CodecId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.codec().id)
    }
}

impl<'de> serde::Deserialize<'de> for CodecId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CodecId, D::Error> {
        let id = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        CodecId::by_id(&id).ok_or_else(|| serde::de::Error::custom(format!("unknown codec {id}")))
    }
}

/// What a payload type carries, as far as the recorder is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Payload {
    /// Audio of a codec CallTap decodes.
    Audio(CodecId),
    /// RFC 4733 named telephone events (DTMF).
    TelephoneEvent,
    /// RFC 3389 comfort noise.
    ComfortNoise,
    /// Anything else: kept as raw RTP rather than decoded.
    Unsupported,
}

impl Payload {
    /// Maps an SDP `a=rtpmap` encoding name and clock rate to a payload (see
    /// [`Codec::clock_rates`]).
    pub fn from_rtpmap(encoding: &str, clock_rate: u32) -> Payload {
        let is = |name: &str| encoding.eq_ignore_ascii_case(name);
        match CodecId::find(|c| is(c.name) && c.clock_rates.contains(&clock_rate)) {
            Some(id) => Payload::Audio(id),
            None if is("telephone-event") => Payload::TelephoneEvent,
            None if is("CN") => Payload::ComfortNoise,
            None => Payload::Unsupported,
        }
    }

    /// Payload of a static RTP payload type (RFC 3551 table 4) when no SDP mapping is known.
    pub fn from_static_pt(pt: u8) -> Payload {
        match CodecId::find(|c| c.static_pt == Some(pt)) {
            Some(id) => Payload::Audio(id),
            None if pt == 13 => Payload::ComfortNoise,
            None => Payload::Unsupported,
        }
    }

    /// RTP clock rate when the SDP gives none.
    pub fn rtp_clock(self) -> u32 {
        match self {
            Payload::Audio(id) => id.codec().rtp_clock,
            _ => 8_000,
        }
    }

    /// Canonical SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            Payload::Audio(id) => id.codec().name,
            Payload::TelephoneEvent => "telephone-event",
            Payload::ComfortNoise => "CN",
            Payload::Unsupported => "unsupported",
        }
    }

    /// The codec, when the payload is audio CallTap decodes.
    pub fn codec(self) -> Option<CodecId> {
        match self {
            Payload::Audio(id) => Some(id),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Cross-checks against ffmpeg, an independent implementation. Without ffmpeg a check skips
    //! with a message, except under CI (`CI` set), where it fails; a failing ffmpeg run always
    //! fails the test, with ffmpeg's stderr.
    use std::{
        io::Write,
        process::{Command, Stdio},
    };

    /// True when ffmpeg is installed; outside CI prints a SKIP message when it is not.
    ///
    /// # Panics
    /// Under CI when ffmpeg is not installed.
    pub fn require_ffmpeg(test: &str) -> bool {
        calltap_lab::root::require_tool(test, "ffmpeg")
    }

    /// Runs ffmpeg with `args`, `input` on its stdin, and returns its stdout.
    ///
    /// # Panics
    /// When ffmpeg cannot be started or fails (the message holds its stderr).
    pub fn ffmpeg(args: &[&str], input: Vec<u8>) -> Vec<u8> {
        let mut child = Command::new("ffmpeg")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting ffmpeg {args:?}: {e}"));
        let mut stdin = child.stdin.take().expect("ffmpeg stdin is piped");
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for ffmpeg {args:?}: {e}"));
        let written = writer.join().expect("stdin writer thread");
        assert!(
            out.status.success(),
            "ffmpeg {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        written.unwrap_or_else(|e| panic!("writing to ffmpeg {args:?}: {e}"));
        out.stdout
    }

    /// Decodes `data` (raw stream in ffmpeg input format `fmt`) to 16-bit mono PCM.
    pub fn ffmpeg_decode(fmt: &str, data: &[u8]) -> Vec<i16> {
        let mut args = vec!["-hide_banner", "-loglevel", "error", "-f", fmt];
        if fmt != "g722" {
            args.extend(["-ar", "8000", "-ac", "1"]);
        }
        args.extend(["-i", "pipe:0", "-f", "s16le", "-ac", "1", "pipe:1"]);
        ffmpeg(&args, data.to_vec())
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// Encodes 16 kHz mono PCM to G.722 with ffmpeg.
    pub fn ffmpeg_encode_g722(pcm: &[i16]) -> Vec<u8> {
        let args = [
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
        ];
        ffmpeg(&args, pcm.iter().flat_map(|s| s.to_le_bytes()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(name: &str) -> Payload {
        Payload::Audio(CodecId::named(name).expect("registered"))
    }

    #[test]
    fn rtpmap() {
        assert_eq!(Payload::from_rtpmap("pcmu", 8000), audio("PCMU"));
        assert_eq!(Payload::from_rtpmap("PCMA", 8000), audio("PCMA"));
        assert_eq!(Payload::from_rtpmap("PCMA", 16000), Payload::Unsupported);
        assert_eq!(Payload::from_rtpmap("g722", 8000), audio("G722"));
        assert_eq!(
            Payload::from_rtpmap("Telephone-Event", 8000),
            Payload::TelephoneEvent
        );
        assert_eq!(
            Payload::from_rtpmap("telephone-event", 48000),
            Payload::TelephoneEvent
        );
        assert_eq!(Payload::from_rtpmap("cn", 8000), Payload::ComfortNoise);
        assert_eq!(Payload::from_rtpmap("opus", 48000), Payload::Unsupported);
    }

    #[test]
    fn static_pt() {
        assert_eq!(Payload::from_static_pt(0), audio("PCMU"));
        assert_eq!(Payload::from_static_pt(8), audio("PCMA"));
        assert_eq!(Payload::from_static_pt(9), audio("G722"));
        assert_eq!(Payload::from_static_pt(13), Payload::ComfortNoise);
        assert_eq!(Payload::from_static_pt(18), Payload::Unsupported);
        assert_eq!(Payload::from_static_pt(101), Payload::Unsupported);
    }

    #[test]
    fn rates() {
        let rate = |name: &str| {
            let id = CodecId::named(name).expect("registered");
            id.decoder(&Format::default()).rate()
        };
        assert_eq!(rate("G722"), 16_000);
        assert_eq!(audio("G722").rtp_clock(), 8_000);
        assert_eq!(rate("PCMU"), 8_000);
        assert_eq!(audio("PCMA").name(), "PCMA");
    }

    /// Journals name codecs as they always have: a journal of an earlier version still loads.
    #[test]
    fn journal_ids_are_stable() {
        for (id, name) in [("Pcmu", "PCMU"), ("Pcma", "PCMA"), ("G722", "G722")] {
            let c = CodecId::named(name).expect("registered");
            assert_eq!(serde_json::to_string(&c).expect("ser"), format!("\"{id}\""));
            let back: CodecId = serde_json::from_str(&format!("\"{id}\"")).expect("de");
            assert_eq!(back, c);
        }
        assert!(serde_json::from_str::<CodecId>("\"Nope\"").is_err());
    }

    #[test]
    fn fmtp_parameters() {
        let f = Format {
            fmtp: "mode=20; Octet-Align = 1;stereo=1",
            ..Format::default()
        };
        assert_eq!(f.param("mode"), Some("20"));
        assert_eq!(f.param("octet-align"), Some("1"));
        assert_eq!(f.param("annexb"), None);
    }
}
