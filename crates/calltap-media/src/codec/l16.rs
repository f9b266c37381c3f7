//! L16 (RFC 3551 section 4.5.11): uncompressed 16-bit linear PCM, network byte order, channels
//! interleaved.
//!
//! The sample rate is the RTP clock the SDP gives; CallTap records the rates its recordings
//! take (8, 16 and 48 kHz), and a stream at another rate (11,025 Hz, 44.1 kHz) is kept as raw
//! RTP. Several channels are mixed down to the one a side of the recording has: their mean,
//! rounded toward negative infinity.

use super::{Codec, Decoder, Format};

/// L16, dynamic payload types only: the static ones (10, 11) are 44.1 kHz.
pub const L16: Codec = Codec {
    id: "L16",
    name: "L16",
    static_pt: None,
    clock_rates: &[8000, 16000, 48000],
    rtp_clock: 8000,
    // Lossless: no equipment impairment; no concealment either, so G.711's Bpl.
    impairment: (0.0, 4.3),
    decoder: |f: &Format<'_>| {
        Box::new(Linear {
            rate: f.clock_rate,
            channels: usize::from(f.channels.max(1)),
        })
    },
};

/// One stream's layout: stateless otherwise.
struct Linear {
    rate: u32,
    channels: usize,
}

impl Decoder for Linear {
    fn rate(&self) -> u32 {
        self.rate
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        decode_l16(payload, self.channels, out)
    }
}

/// Big-endian samples of `channels` interleaved channels into mono `out`; a trailing partial
/// frame (a payload cut short) is left out. Returns the samples written.
pub fn decode_l16(payload: &[u8], channels: usize, out: &mut [i16]) -> usize {
    let frame = 2 * channels.max(1);
    let mut n = 0;
    for (o, f) in out.iter_mut().zip(payload.chunks_exact(frame)) {
        let sum: i32 = f
            .chunks_exact(2)
            .map(|s| i32::from(i16::from_be_bytes([s[0], s[1]])))
            .sum();
        // The mean of i16 values is an i16.
        *o = sum.div_euclid(channels.max(1) as i32) as i16;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Format, Payload};

    #[test]
    fn mono_is_big_endian_samples() {
        let mut out = [0i16; 4];
        let n = decode_l16(&[0x00, 0x01, 0xff, 0xff, 0x80, 0x00, 0x7f], 1, &mut out);
        assert_eq!(n, 3, "the odd byte at the end is no sample");
        assert_eq!(out[..3], [1, -1, i16::MIN]);
    }

    #[test]
    fn stereo_is_mixed_to_the_mean_of_both_channels() {
        let mut out = [0i16; 3];
        let payload = [
            0x7f, 0xff, 0x7f, 0xff, // both full scale
            0x80, 0x00, 0x80, 0x00, // both most negative
            0x00, 0x03, 0x00, 0x00, // 3 and 0: 1.5 rounds down
        ];
        assert_eq!(decode_l16(&payload, 2, &mut out), 3);
        assert_eq!(out, [i16::MAX, i16::MIN, 1]);
    }

    #[test]
    fn output_room_bounds_the_samples() {
        let mut out = [0i16; 2];
        assert_eq!(decode_l16(&[0; 40], 1, &mut out), 2);
    }

    #[test]
    fn taken_at_the_rates_recordings_have_only() {
        for rate in [8000, 16000, 48000] {
            let Payload::Audio(id) = Payload::from_rtpmap("l16", rate) else {
                panic!("L16/{rate} not decoded");
            };
            let format = Format {
                clock_rate: rate,
                channels: 2,
                fmtp: "",
            };
            assert_eq!(id.decoder(&format).rate(), rate);
        }
        assert_eq!(Payload::from_rtpmap("L16", 11025), Payload::Unsupported);
        assert_eq!(Payload::from_rtpmap("L16", 44100), Payload::Unsupported);
        assert_eq!(Payload::from_static_pt(11), Payload::Unsupported);
    }
}
