//! The audio of lab calls in each codec the lab offers, with the PCM a reference decoder makes
//! of it: PCMU by the lab's own G.711 code ([`crate::rtp_pcap`]), PCMA and G.722 by ffmpeg,
//! which encodes the tone and then decodes the very payload bytes sipp sends. Neither shares
//! code with CallTap's decoders, so a recording equal to this PCM is checked independently.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::rtp_pcap::{tone_payloads, ulaw_decode, RtpOut, ToneSpec, SAMPLES_PER_PACKET};

/// The codecs lab calls can offer (one per call, both directions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    /// G.711 mu-law, PT 0.
    #[default]
    Pcmu,
    /// G.711 A-law, PT 8.
    Pcma,
    /// G.722, PT 9: 16 kHz audio on an 8 kHz RTP clock (RFC 3551 4.5.2).
    G722,
}

impl Codec {
    /// RFC 3551 static payload type.
    pub fn pt(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        }
    }

    /// The encoding name as SDP and CallTap's CDR `codecs` write it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// The audio sample rate (what the recording is written at); the RTP clock is 8 kHz for
    /// all three.
    pub fn audio_rate(self) -> u32 {
        match self {
            Codec::G722 => 16_000,
            _ => 8000,
        }
    }

    /// ffmpeg's raw format and encoder for the codec (None for PCMU, done in-house).
    fn ffmpeg(self) -> Option<(&'static str, &'static str)> {
        match self {
            Codec::Pcmu => None,
            Codec::Pcma => Some(("alaw", "pcm_alaw")),
            Codec::G722 => Some(("g722", "g722")),
        }
    }
}

/// One direction's audio: the RTP payloads sipp plays and the PCM they decode to.
#[derive(Clone, Debug)]
pub struct CodedTone {
    pub codec: Codec,
    /// One per 20 ms packet (160 bytes for all three codecs).
    pub payloads: Vec<Vec<u8>>,
    /// The reference decode of all payloads in order, at [`Codec::audio_rate`].
    pub pcm: Vec<i16>,
}

impl CodedTone {
    /// The payloads as RTP packets 20 ms apart (timestamps step 160: every codec here runs an
    /// 8 kHz RTP clock, G.722 included).
    pub fn packets(&self, spec: &ToneSpec, at_ms: u64) -> Vec<RtpOut> {
        self.payloads
            .iter()
            .enumerate()
            .map(|(p, payload)| RtpOut {
                at_ms: at_ms + 20 * p as u64,
                pt: self.codec.pt(),
                marker: p == 0,
                seq: spec.first_seq.wrapping_add(p as u16),
                ts: spec.first_ts.wrapping_add((p * SAMPLES_PER_PACKET) as u32),
                ssrc: spec.ssrc,
                payload: payload.clone(),
            })
            .collect()
    }
}

/// The linear tone of `spec` at `rate` (20 ms a packet).
pub fn tone_linear(spec: &ToneSpec, rate: u32) -> Vec<i16> {
    let n = spec.packets * rate as usize / 50;
    (0..n)
        .map(|i| {
            let x = spec.amplitude
                * (2.0 * std::f64::consts::PI * spec.freq_hz * i as f64 / f64::from(rate)).sin();
            x.round() as i16
        })
        .collect()
}

/// Encodes `spec`'s tone with `codec` and decodes it back with the reference decoder.
/// `scratch` holds ffmpeg's files (named after `tag`).
pub fn coded_tone(codec: Codec, spec: &ToneSpec, scratch: &Path, tag: &str) -> Result<CodedTone> {
    let Some((format, encoder)) = codec.ffmpeg() else {
        let payloads = tone_payloads(spec);
        let pcm = payloads.concat().into_iter().map(ulaw_decode).collect();
        return Ok(CodedTone {
            codec,
            payloads,
            pcm,
        });
    };
    std::fs::create_dir_all(scratch)?;
    let rate = codec.audio_rate().to_string();
    let linear = scratch.join(format!("{tag}.s16"));
    let coded = scratch.join(format!("{tag}.{format}"));
    let decoded = scratch.join(format!("{tag}.decoded.s16"));
    let pcm: Vec<u8> = tone_linear(spec, codec.audio_rate())
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    std::fs::write(&linear, pcm)?;
    ffmpeg(&[
        "-f",
        "s16le",
        "-ar",
        &rate,
        "-ac",
        "1",
        "-i",
        path(&linear)?,
        "-c:a",
        encoder,
        "-f",
        format,
        path(&coded)?,
    ])?;
    let bytes = std::fs::read(&coded)?;
    if bytes.len() != spec.packets * SAMPLES_PER_PACKET {
        bail!(
            "ffmpeg's {format} of {} packets is {} bytes, not {}",
            spec.packets,
            bytes.len(),
            spec.packets * SAMPLES_PER_PACKET
        );
    }
    // Raw A-law carries no header: its rate and channels are given (else ffmpeg takes it for
    // 44.1 kHz and resamples); the G.722 demuxer knows its rate and takes no such option.
    let mut args = vec!["-f", format];
    if codec == Codec::Pcma {
        args.extend(["-ar", "8000", "-ac", "1"]);
    }
    args.extend(["-i", path(&coded)?]);
    args.extend(["-f", "s16le", "-ac", "1", "-ar", &rate, path(&decoded)?]);
    ffmpeg(&args)?;
    let pcm: Vec<i16> = std::fs::read(&decoded)?
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    let want = spec.packets * codec.audio_rate() as usize / 50;
    if pcm.len() != want {
        bail!(
            "ffmpeg decoded {} samples of {format}, {want} sent",
            pcm.len()
        );
    }
    Ok(CodedTone {
        codec,
        payloads: bytes
            .chunks(SAMPLES_PER_PACKET)
            .map(<[u8]>::to_vec)
            .collect(),
        pcm,
    })
}

fn ffmpeg(args: &[&str]) -> Result<()> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ffmpeg (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "ffmpeg {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ToneSpec {
        ToneSpec {
            freq_hz: 440.0,
            amplitude: 8000.0,
            packets: 5,
            ssrc: 1,
            first_seq: 65_534,
            first_ts: 4_294_967_000,
        }
    }

    #[test]
    fn pcmu_needs_no_ffmpeg_and_packets_wrap() {
        let t = coded_tone(Codec::Pcmu, &spec(), Path::new("/nonexistent"), "x").expect("pcmu");
        assert_eq!(t.pcm.len(), 800);
        let p = t.packets(&spec(), 0);
        assert_eq!(p.len(), 5);
        assert_eq!((p[2].seq, p[2].pt, p[4].at_ms), (0, 0, 80));
        assert_eq!(p[1].ts, 4_294_967_160);
        assert_eq!(p[2].ts, 24);
    }

    /// ffmpeg's round trip is close to the tone (it is a codec, not noise), when installed.
    #[test]
    fn ffmpeg_round_trip_resembles_the_tone() {
        if Command::new("ffmpeg").arg("-version").output().is_err() {
            eprintln!("SKIP: ffmpeg not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("calltap-codec-ref-{}", std::process::id()));
        for codec in [Codec::Pcma, Codec::G722] {
            let t = coded_tone(codec, &spec(), &dir, codec.name()).expect("ffmpeg");
            assert_eq!(t.payloads.len(), 5);
            assert!(t.payloads.iter().all(|p| p.len() == 160));
            let linear = tone_linear(&spec(), codec.audio_rate());
            // G.722's ADPCM takes a few ms to converge and delays the signal slightly: compare
            // energy, not samples; PCMA is within its quantisation step.
            let energy = |s: &[i16]| s.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
            let ratio = energy(&t.pcm) / energy(&linear);
            assert!(
                (0.7..1.3).contains(&ratio),
                "{codec:?}: energy ratio {ratio}"
            );
            if codec == Codec::Pcma {
                for (a, b) in t.pcm.iter().zip(&linear) {
                    assert!((i32::from(*a) - i32::from(*b)).abs() <= 256, "{a} vs {b}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
