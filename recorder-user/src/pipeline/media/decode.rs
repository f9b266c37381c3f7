//! Decoding on the packet path: what a payload type carries (from the SDP), the stream's
//! decoder, and fitting decoded audio to the call's recording rate.
//!
//! The codecs themselves are `calltap_media::codec` (one file per codec behind its `Decoder`
//! interface); nothing here names one. A stream's decoder is made when its codec first appears
//! (or changes) and asked for packet-loss concealment when packets went missing.

use calltap_media::codec::{Decoder, Format, Payload};
use calltap_sip::sdp::RtpMap;

/// Largest decoded packet handled: 120 ms at 48 kHz.
pub(super) const PCM_MAX: usize = 48_000 * 120 / 1000;
/// Largest packet fitted to the recording's rate (a narrowband packet in a wideband recording
/// is longer than it was).
const FIT_MAX: usize = PCM_MAX * 2;

/// What a payload type of one direction is: the payload, the codec's name for the CDR, the RTP
/// clock and the format to make a decoder from. The receiver's SDP defines what it expects
/// (dynamic types are the answerer's numbering), the sender's is the fallback, then the static
/// assignments.
pub(super) fn payload_of<'a>(
    codecs: [&'a [RtpMap]; 2],
    pt: u8,
) -> (Payload, String, u32, Format<'a>) {
    for side in codecs {
        if let Some(m) = side.iter().find(|m| m.pt == pt) {
            let payload = Payload::from_rtpmap(&m.encoding, m.clock_rate);
            let format = Format {
                clock_rate: m.clock_rate,
                channels: m.channels,
                fmtp: m.fmtp.as_deref().unwrap_or(""),
            };
            return (
                payload,
                m.encoding.to_ascii_uppercase(),
                m.clock_rate.max(1),
                format,
            );
        }
    }
    let payload = Payload::from_static_pt(pt);
    let name = match payload {
        Payload::Unsupported => format!("PT{pt}"),
        known => known.name().to_owned(),
    };
    let format = Format {
        clock_rate: payload.rtp_clock(),
        channels: 1,
        fmtp: "",
    };
    (payload, name, payload.rtp_clock().max(1), format)
}

/// A worker's PCM buffers: one packet decoded, and the same fitted to the recording's rate.
/// Allocated once per worker, so decoding never allocates.
pub(super) struct Pcm {
    decoded: Box<[i16; PCM_MAX]>,
    fitted: Box<[i16; FIT_MAX]>,
}

impl Pcm {
    pub fn new() -> Pcm {
        Pcm {
            decoded: Box::new([0; PCM_MAX]),
            fitted: Box::new([0; FIT_MAX]),
        }
    }

    /// Decodes `payload` with `decoder`; returns the samples, at the decoder's rate.
    #[inline]
    pub fn decode(&mut self, decoder: &mut dyn Decoder, payload: &[u8]) -> usize {
        decoder.decode(payload, &mut self.decoded[..])
    }

    /// The `n` samples decoded last, at `from` Hz, as `to` Hz: the same buffer when the rates
    /// agree, held (upsampling by a whole factor), averaged (downsampling by one), else the
    /// nearest sample.
    pub fn fit(&mut self, n: usize, from: u32, to: u32) -> &[i16] {
        let n = n.min(PCM_MAX);
        let (src, dst) = (&self.decoded[..n], &mut self.fitted[..]);
        if from == to || from == 0 || to == 0 {
            return src;
        }
        let len = if to.is_multiple_of(from) {
            // 8 kHz audio in a 16 kHz recording: sample-and-hold.
            let k = (to / from) as usize;
            let n = n.min(FIT_MAX / k);
            for (i, &s) in src[..n].iter().enumerate() {
                dst[k * i..k * (i + 1)].fill(s);
            }
            k * n
        } else if from.is_multiple_of(to) {
            // 16 kHz audio in an 8 kHz recording: the average of each run.
            let k = (from / to) as usize;
            for (o, run) in dst.iter_mut().zip(src.chunks_exact(k)) {
                *o = (run.iter().map(|&s| i32::from(s)).sum::<i32>() / k as i32) as i16;
            }
            n / k
        } else {
            let len = ((n as u64 * u64::from(to) / u64::from(from)) as usize).min(FIT_MAX);
            for (i, o) in dst[..len].iter_mut().enumerate() {
                *o = src[(i as u64 * u64::from(from) / u64::from(to)) as usize];
            }
            len
        };
        &self.fitted[..len]
    }

    /// Concealment for `lost` packets that ended where the next packet begins, fitted to `to`
    /// Hz and cut to the last `room` frames (the gap they leave); `None` when the decoder
    /// conceals nothing (losses then stay silence).
    pub fn conceal(
        &mut self,
        decoder: &mut dyn Decoder,
        lost: u64,
        room: u64,
        to: u32,
    ) -> Option<&[i16]> {
        let want = (lost as usize)
            .saturating_mul(decoder.frame_samples())
            .min(PCM_MAX);
        let n = decoder.conceal(&mut self.decoded[..want]);
        if n == 0 || room == 0 {
            return None;
        }
        let fitted = self.fit(n, decoder.rate(), to);
        let keep = fitted.len().min(room as usize);
        Some(&fitted[fitted.len() - keep..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ramp {
        rate: u32,
        next: i16,
    }

    impl Decoder for Ramp {
        fn rate(&self) -> u32 {
            self.rate
        }

        fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
            let n = payload.len().min(out.len());
            for o in &mut out[..n] {
                *o = self.next;
                self.next += 1;
            }
            n
        }

        fn conceal(&mut self, out: &mut [i16]) -> usize {
            out.fill(-1);
            out.len()
        }
    }

    #[test]
    fn rates_are_fitted_by_holding_averaging_or_nearest_sample() {
        let mut pcm = Pcm::new();
        let mut d = Ramp {
            rate: 8000,
            next: 0,
        };
        let n = pcm.decode(&mut d, &[0; 4]);
        assert_eq!(pcm.fit(n, 8000, 8000), [0, 1, 2, 3]);
        assert_eq!(pcm.fit(n, 8000, 16000), [0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(pcm.fit(n, 16000, 8000), [0, 2]);
        assert_eq!(pcm.fit(n, 48000, 16000), [1]);
        assert_eq!(pcm.fit(n, 16000, 24000).len(), 6);
    }

    #[test]
    fn concealment_fills_the_end_of_the_gap() {
        let mut pcm = Pcm::new();
        let mut d = Ramp {
            rate: 8000,
            next: 0,
        };
        // Two lost 20 ms packets, 200 frames of room at 16 kHz: the last 200 frames.
        let s = pcm.conceal(&mut d, 2, 200, 16000).expect("concealed");
        assert_eq!(s.len(), 200);
        assert!(s.iter().all(|&v| v == -1));
        let mut g711 = calltap_media::codec::CodecId::named("PCMU")
            .expect("PCMU")
            .decoder(&Format::default());
        assert_eq!(pcm.conceal(g711.as_mut(), 2, 200, 8000), None, "silence");
    }
}
