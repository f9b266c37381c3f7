//! G.711 µ-law and A-law expansion (ITU-T G.711), bit-exact with the classic Sun `g711.c`
//! that sox and ffmpeg also follow.
//!
//! Both laws are expanded through 256-entry tables built at compile time, so decoding is one
//! load per sample.

use super::{Codec, Decoder, Format};

/// G.711 µ-law (RFC 3551 `PCMU`, static payload type 0).
pub const PCMU: Codec = Codec {
    id: "Pcmu",
    name: "PCMU",
    static_pt: Some(0),
    clock_rates: &[0, 8000],
    rtp_clock: 8000,
    impairment: NARROWBAND,
    decoder: |_: &Format<'_>| Box::new(Ulaw),
};

/// G.711 A-law (RFC 3551 `PCMA`, static payload type 8).
pub const PCMA: Codec = Codec {
    id: "Pcma",
    name: "PCMA",
    static_pt: Some(8),
    clock_rates: &[0, 8000],
    rtp_clock: 8000,
    impairment: NARROWBAND,
    decoder: |_: &Format<'_>| Box::new(Alaw),
};

/// Ie 0 and Bpl 4.3: G.711 *without* packet-loss concealment (ITU-T G.113 Appendix I),
/// deliberately: CallTap's recording fills lost packets with silence, so what is rated is the
/// audio as recorded.
pub const NARROWBAND: (f64, f64) = (0.0, 4.3);

/// µ-law expansion: stateless, one table load per sample.
struct Ulaw;

impl Decoder for Ulaw {
    fn rate(&self) -> u32 {
        8000
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        decode_ulaw(payload, out)
    }
}

/// A-law expansion: stateless, one table load per sample.
struct Alaw;

impl Decoder for Alaw {
    fn rate(&self) -> u32 {
        8000
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        decode_alaw(payload, out)
    }
}

const ULAW_BIAS: i32 = 0x84;

const fn ulaw_expand(code: u8) -> i16 {
    let u = !code;
    let mut t = (((u & 0x0f) as i32) << 3) + ULAW_BIAS;
    t <<= (u & 0x70) >> 4;
    if u & 0x80 != 0 {
        (ULAW_BIAS - t) as i16
    } else {
        (t - ULAW_BIAS) as i16
    }
}

const fn alaw_expand(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

const fn build_ulaw() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_expand(i as u8);
        i += 1;
    }
    table
}

const fn build_alaw() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_expand(i as u8);
        i += 1;
    }
    table
}

static ULAW: [i16; 256] = build_ulaw();
static ALAW: [i16; 256] = build_alaw();

/// Expands one µ-law code to 16-bit linear PCM.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW[usize::from(code)]
}

/// Expands one A-law code to 16-bit linear PCM.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW[usize::from(code)]
}

/// Expands µ-law `src` into `dst`; returns the number of samples written
/// (`min(src.len(), dst.len())`).
pub fn decode_ulaw(src: &[u8], dst: &mut [i16]) -> usize {
    let n = src.len().min(dst.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = ulaw_to_linear(s);
    }
    n
}

/// Expands A-law `src` into `dst`; returns the number of samples written
/// (`min(src.len(), dst.len())`).
pub fn decode_alaw(src: &[u8], dst: &mut [i16]) -> usize {
    let n = src.len().min(dst.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = alaw_to_linear(s);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0xfe), 8);
        assert_eq!(ulaw_to_linear(0x7e), -8);
        assert_eq!(ulaw_to_linear(0xef), 132);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0xd4), 24);
        assert_eq!(alaw_to_linear(0xc5), 264);
    }

    #[test]
    fn symmetric_and_monotonic() {
        // Codes 0x80..=0xff are the positive half (µ-law: descending magnitude with code).
        for c in 0u8..0x80 {
            assert_eq!(ulaw_to_linear(c), -ulaw_to_linear(c | 0x80));
            assert_eq!(alaw_to_linear(c), -alaw_to_linear(c | 0x80));
        }
        for c in 0x80u8..0xff {
            assert!(ulaw_to_linear(c) > ulaw_to_linear(c + 1));
        }
    }

    #[test]
    fn slices() {
        let mut out = [0i16; 3];
        assert_eq!(decode_ulaw(&[0x00, 0xff], &mut out), 2);
        assert_eq!(out, [-32124, 0, 0]);
        assert_eq!(decode_alaw(&[0xd5, 0x55, 0xd5, 0xd5], &mut out), 3);
        assert_eq!(out, [8, -8, 8]);
    }

    /// Compares all 256 codes with ffmpeg's expansion (ffmpeg is the independent reference:
    /// missing under CI, or failing, fails the test).
    #[test]
    fn matches_ffmpeg() {
        if !crate::codec::test_util::require_ffmpeg("g711::matches_ffmpeg") {
            return;
        }
        for (fmt, f) in [
            ("mulaw", ulaw_to_linear as fn(u8) -> i16),
            ("alaw", alaw_to_linear),
        ] {
            let pcm = crate::codec::test_util::ffmpeg_decode(fmt, &(0..=255u8).collect::<Vec<_>>());
            assert_eq!(pcm.len(), 256, "{fmt}: one sample per code");
            for (code, &v) in pcm.iter().enumerate() {
                assert_eq!(f(code as u8), v, "{fmt} code {code:#04x}");
            }
            eprintln!("G.711 {fmt}: all 256 codes equal ffmpeg's");
        }
    }
}
