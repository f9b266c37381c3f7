//! GSM 06.10 full-rate speech decoder (RPE-LTP, ETSI EN 300 961 / GSM 06.10), written from
//! the fixed-point description of the Recommendation's decoder (section 4.3): every quantity
//! is a 16-bit word and every addition and multiplication goes through the saturating
//! helpers of section 4.1 ([`add`], [`sub`], [`mult_r`], [`asl`], [`asr`]), so the output is
//! bit-exact with any conforming decoder (libgsm, ffmpeg's `gsm`).
//!
//! One 20 ms frame is 33 bytes (RFC 3551 section 4.5.8): the signature nibble `0xD`, then the
//! 76 parameters most significant bit first: eight log-area ratios (6, 6, 5, 5, 4, 4, 3, 3
//! bits), and for each of four 5 ms sub-frames the LTP lag (7), LTP gain (2), RPE grid
//! position (2), block maximum (6) and 13 RPE pulses (3 each). It decodes to 160 samples at
//! 8 kHz: RPE decoding, long-term synthesis, short-term synthesis through the lattice filter
//! whose reflection coefficients are interpolated from the log-area ratios, then de-emphasis
//! and upscaling.

use super::{Codec, Decoder, Format};

/// GSM 06.10 full rate (RFC 3551 `GSM`, static payload type 3, 8 kHz). Ie 20 (ITU-T G.113
/// Appendix I, GSM 06.10 full rate); Bpl 4.3 as for G.711 without concealment, since a lost
/// packet stays silence in the recording (see [`super::g711::NARROWBAND`]).
pub const GSM: Codec = Codec {
    id: "Gsm",
    name: "GSM",
    static_pt: Some(3),
    clock_rates: &[0, 8000],
    rtp_clock: 8000,
    impairment: (20.0, 4.3),
    decoder: |_: &Format<'_>| Box::new(GsmDecoder::new()),
};

/// Bytes of one frame.
pub const FRAME_BYTES: usize = 33;
/// Samples of one frame (20 ms at 8 kHz).
pub const FRAME_SAMPLES: usize = 160;
/// The nibble every frame starts with.
const SIGNATURE: u8 = 0xD;

impl Decoder for GsmDecoder {
    fn rate(&self) -> u32 {
        8000
    }

    /// Each whole 33-byte frame in turn, up to the first one without the signature (the
    /// payload is no GSM from there); a trailing partial frame is left out. A frame that does
    /// not fit in `out` is still decoded, so the filter state follows the stream, and written
    /// as far as it fits.
    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let mut written = 0;
        for bytes in payload.chunks_exact(FRAME_BYTES) {
            let Some(frame) = Frame::unpack(bytes) else {
                break;
            };
            let mut pcm = [0i16; FRAME_SAMPLES];
            self.decode_frame(&frame, &mut pcm);
            let room = &mut out[written..];
            let n = room.len().min(FRAME_SAMPLES);
            room[..n].copy_from_slice(&pcm[..n]);
            written += n;
        }
        written
    }
}

// ---- Section 4.1: the 16-bit arithmetic of the Recommendation ----

/// Saturating 16-bit addition (`add`).
#[inline]
pub(crate) fn add(a: i16, b: i16) -> i16 {
    a.saturating_add(b)
}

/// Saturating 16-bit subtraction (`sub`).
#[inline]
pub(crate) fn sub(a: i16, b: i16) -> i16 {
    a.saturating_sub(b)
}

/// Rounded fractional multiplication (`mult_r`): `(a * b + 2^14) >> 15`, where
/// `-32768 * -32768` gives 32767.
#[inline]
pub(crate) fn mult_r(a: i16, b: i16) -> i16 {
    if a == i16::MIN && b == i16::MIN {
        i16::MAX
    } else {
        // |a * b| <= 2^15 * (2^15 - 1): the rounded quotient is within the 16-bit range.
        ((i32::from(a) * i32::from(b) + 16384) >> 15) as i16
    }
}

/// Arithmetic shift left by `n` (`asl`), right for a negative `n`; the result is the low 16
/// bits, as the Recommendation's words keep.
#[inline]
pub(crate) fn asl(a: i16, n: i16) -> i16 {
    if n >= 16 {
        0
    } else if n <= -16 {
        -i16::from(a < 0)
    } else if n < 0 {
        asr(a, -n)
    } else {
        (i32::from(a) << n) as i16
    }
}

/// Arithmetic shift right by `n` (`asr`), left for a negative `n`.
#[inline]
pub(crate) fn asr(a: i16, n: i16) -> i16 {
    if n >= 16 {
        -i16::from(a < 0)
    } else if n <= -16 {
        0
    } else if n < 0 {
        (i32::from(a) << -n) as i16
    } else {
        a >> n
    }
}

// ---- Tables (section 5.1) ----

/// Decoding of the coded log-area ratios (table 5.1, equation 4.2.15): `B` offsets,
/// `MIC` (smallest code, restores the sign) and `INVA` (`32768 * 8 / A`), per coefficient.
const LAR_B: [i16; 8] = [0, 0, 2048, -2560, 94, -1792, -341, -1144];
const LAR_MIC: [i16; 8] = [-32, -32, -16, -16, -8, -8, -4, -4];
const LAR_INVA: [i16; 8] = [13107, 13107, 13107, 13107, 19223, 17476, 31454, 29708];
/// Bits of each coded log-area ratio.
const LAR_BITS: [u32; 8] = [6, 6, 5, 5, 4, 4, 3, 3];
/// Quantisation levels of the LTP gain (`QLB`, table 5.3b).
const QLB: [i16; 4] = [3277, 11469, 21299, 32767];
/// Normalised inverse mantissa of the RPE block maximum (`FAC`, table 5.5).
const FAC: [i16; 8] = [18431, 20479, 22527, 24575, 26623, 28671, 30719, 32767];

// ---- Section 1.7 / RFC 3551 4.5.8: the frame ----

/// The 76 parameters of one frame, as coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Frame {
    /// Coded log-area ratios `LARc[1..8]`.
    pub larc: [i16; 8],
    /// Per sub-frame: LTP lag `Nc`, LTP gain `bc`, RPE grid position `Mc`, block maximum
    /// `xmaxc` and the 13 RPE pulses `xMc`.
    pub nc: [i16; 4],
    pub bc: [u8; 4],
    pub mc: [u8; 4],
    pub xmaxc: [i16; 4],
    pub xmc: [[i16; 13]; 4],
}

/// Reads a frame's bits most significant first.
struct Bits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    /// The next `n` (at most 8) bits; zeros past the end (never reached on 33 bytes).
    fn take(&mut self, n: u32) -> u8 {
        let mut v = 0u8;
        for _ in 0..n {
            let byte = self.bytes.get(self.at / 8).copied().unwrap_or(0);
            let bit = (byte >> (7 - self.at % 8)) & 1;
            v = (v << 1) | bit;
            self.at += 1;
        }
        v
    }
}

impl Frame {
    /// The parameters of a 33-byte frame, or `None` when it is not one (wrong length or no
    /// `0xD` signature).
    pub fn unpack(bytes: &[u8]) -> Option<Frame> {
        if bytes.len() != FRAME_BYTES || bytes[0] >> 4 != SIGNATURE {
            return None;
        }
        let mut b = Bits { bytes, at: 4 };
        let mut f = Frame::default();
        for (larc, bits) in f.larc.iter_mut().zip(LAR_BITS) {
            *larc = i16::from(b.take(bits));
        }
        for j in 0..4 {
            f.nc[j] = i16::from(b.take(7));
            f.bc[j] = b.take(2);
            f.mc[j] = b.take(2);
            f.xmaxc[j] = i16::from(b.take(6));
            for x in &mut f.xmc[j] {
                *x = i16::from(b.take(3));
            }
        }
        Some(f)
    }
}

// ---- Section 4.3: the decoder ----

/// One stream's decoder state (the Recommendation's `gsm_state`, decoder half).
#[derive(Debug, Clone)]
pub(crate) struct GsmDecoder {
    /// Reconstructed short-term residual `drp`: 120 samples of history, then the 160 of the
    /// frame being decoded.
    drp: [i16; 120 + FRAME_SAMPLES],
    /// The last valid LTP lag (`nrp`), used for a coded lag outside 40..=120.
    nrp: i16,
    /// Decoded log-area ratios `LARpp` of this frame and the previous one, alternating.
    larpp: [[i16; 8]; 2],
    /// Which of `larpp` the next frame writes.
    j: usize,
    /// Short-term synthesis filter state `v[0..8]`.
    v: [i16; 9],
    /// De-emphasis filter state `msr`.
    msr: i16,
}

impl Default for GsmDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl GsmDecoder {
    pub fn new() -> GsmDecoder {
        GsmDecoder {
            drp: [0; 120 + FRAME_SAMPLES],
            nrp: 40,
            larpp: [[0; 8]; 2],
            j: 0,
            v: [0; 9],
            msr: 0,
        }
    }

    /// Decodes one frame's parameters into 160 samples.
    pub fn decode_frame(&mut self, f: &Frame, out: &mut [i16; FRAME_SAMPLES]) {
        for j in 0..4 {
            let erp = rpe_decoding(f.xmaxc[j], f.mc[j], &f.xmc[j]);
            self.long_term_synthesis(120 + 40 * j, f.nc[j], f.bc[j], &erp);
        }
        let mut wt = [0i16; FRAME_SAMPLES];
        wt.copy_from_slice(&self.drp[120..]);
        // Keep the last 120 reconstructed residual samples for the next frame's lags.
        self.drp.copy_within(FRAME_SAMPLES.., 0);
        self.short_term_synthesis(&f.larc, &wt, out);
        self.postprocessing(out);
    }

    /// Long-term synthesis filtering (4.3.2) of the sub-frame at `drp[base..base + 40]`.
    fn long_term_synthesis(&mut self, base: usize, ncr: i16, bcr: u8, erp: &[i16; 40]) {
        let nr = if (40..=120).contains(&ncr) {
            ncr
        } else {
            self.nrp
        };
        self.nrp = nr;
        let brp = QLB[usize::from(bcr & 3)];
        // 40 <= nr <= 120 and base >= 120: the lagged sample is history, never out of range.
        let lag = nr.unsigned_abs() as usize;
        for (k, &e) in erp.iter().enumerate() {
            let drpp = mult_r(brp, self.drp[base + k - lag]);
            self.drp[base + k] = add(e, drpp);
        }
    }

    /// Short-term synthesis filtering (4.3.3 to 4.3.5): the log-area ratios decoded and
    /// interpolated with the previous frame's over the first 40 samples, turned into
    /// reflection coefficients and run through the lattice filter.
    fn short_term_synthesis(
        &mut self,
        larc: &[i16; 8],
        wt: &[i16; FRAME_SAMPLES],
        s: &mut [i16; FRAME_SAMPLES],
    ) {
        let cur = self.j;
        self.j ^= 1;
        self.larpp[cur] = decode_lar(larc);
        let (now, prev) = (self.larpp[cur], self.larpp[cur ^ 1]);
        let mut larp = [0i16; 8];
        // Samples 0..12: 3/4 of the previous frame's, 1/4 of this frame's.
        for i in 0..8 {
            larp[i] = add(add(prev[i] >> 2, now[i] >> 2), prev[i] >> 1);
        }
        self.synthesis_filter(&larp_to_rp(larp), &wt[..13], &mut s[..13]);
        // Samples 13..26: half of each.
        for i in 0..8 {
            larp[i] = add(prev[i] >> 1, now[i] >> 1);
        }
        self.synthesis_filter(&larp_to_rp(larp), &wt[13..27], &mut s[13..27]);
        // Samples 27..39: 1/4 of the previous frame's, 3/4 of this frame's.
        for i in 0..8 {
            larp[i] = add(add(prev[i] >> 2, now[i] >> 2), now[i] >> 1);
        }
        self.synthesis_filter(&larp_to_rp(larp), &wt[27..40], &mut s[27..40]);
        // Samples 40..159: this frame's.
        self.synthesis_filter(&larp_to_rp(now), &wt[40..], &mut s[40..]);
    }

    /// The lattice filter (4.3.4) with reflection coefficients `rrp` over `wt` into `sr`.
    fn synthesis_filter(&mut self, rrp: &[i16; 8], wt: &[i16], sr: &mut [i16]) {
        let v = &mut self.v;
        for (o, &w) in sr.iter_mut().zip(wt) {
            let mut sri = w;
            for i in (0..8).rev() {
                sri = sub(sri, mult_r(rrp[i], v[i]));
                v[i + 1] = add(v[i], mult_r(rrp[i], sri));
            }
            v[0] = sri;
            *o = sri;
        }
    }

    /// De-emphasis, then truncation to 13 bits and upscaling (4.3.6 and 4.3.7).
    fn postprocessing(&mut self, s: &mut [i16; FRAME_SAMPLES]) {
        let mut msr = self.msr;
        for x in s.iter_mut() {
            msr = add(*x, mult_r(msr, 28180));
            *x = add(msr, msr) & !7;
        }
        self.msr = msr;
    }
}

/// RPE decoding (4.3.1 with 4.2.15 to 4.2.17): the block maximum to exponent and mantissa,
/// inverse APCM quantisation of the 13 pulses, and their placement on the grid `mc`.
fn rpe_decoding(xmaxc: i16, mc: u8, xmc: &[i16; 13]) -> [i16; 40] {
    let (exp, mant) = xmaxc_to_exp_mant(xmaxc);
    let temp1 = FAC[usize::from(mant.unsigned_abs() & 7)];
    let temp2 = sub(6, exp);
    let temp3 = asl(1, sub(temp2, 1));
    let mut erp = [0i16; 40];
    let start = usize::from(mc & 3);
    for (i, &x) in xmc.iter().enumerate() {
        // Restore the sign of the 3-bit code: -7, -5, .. 7 in units of 2^12.
        let temp = ((x & 7) * 2 - 7) << 12;
        let temp = add(mult_r(temp1, temp), temp3);
        erp[start + 3 * i] = asr(temp, temp2);
    }
    erp
}

/// Exponent and mantissa of the decoded block maximum (4.2.15): `exp` in -4..=6, `mant` in
/// 0..=7.
fn xmaxc_to_exp_mant(xmaxc: i16) -> (i16, i16) {
    let xmaxc = xmaxc & 63;
    let mut exp = 0;
    if xmaxc > 15 {
        exp = (xmaxc >> 3) - 1;
    }
    let mut mant = xmaxc - (exp << 3);
    if mant == 0 {
        (-4, 7)
    } else {
        while mant <= 7 {
            mant = (mant << 1) | 1;
            exp -= 1;
        }
        (exp, mant - 8)
    }
}

/// Decoding of the coded log-area ratios (4.2.15 inverse, 4.3.3): `LARpp`.
fn decode_lar(larc: &[i16; 8]) -> [i16; 8] {
    let mut larpp = [0i16; 8];
    for i in 0..8 {
        // The coded value plus MIC is within -32..=31: shifted by 10 it is still a word.
        let temp = add(larc[i] & 63, LAR_MIC[i]) << 10;
        let temp = sub(temp, LAR_B[i] * 2);
        let temp = mult_r(LAR_INVA[i], temp);
        larpp[i] = add(temp, temp);
    }
    larpp
}

/// Interpolated log-area ratios to reflection coefficients (4.2.8 inverse, 4.3.5: `rp`).
fn larp_to_rp(larp: [i16; 8]) -> [i16; 8] {
    larp.map(|l| {
        let mag = |t: i16| -> i16 {
            if t < 11059 {
                t << 1
            } else if t < 20070 {
                t + 11059
            } else {
                add(t >> 2, 26112)
            }
        };
        if l < 0 {
            -mag(if l == i16::MIN { i16::MAX } else { -l })
        } else {
            mag(l)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{test_util::ffmpeg, CodecId, Payload};

    /// Packs parameters into a frame, most significant bit first: the inverse of
    /// [`Frame::unpack`], written independently of it.
    fn pack(f: &Frame) -> [u8; FRAME_BYTES] {
        let mut fields: Vec<(u32, u32)> = vec![(u32::from(SIGNATURE), 4)];
        for (l, bits) in f.larc.iter().zip(LAR_BITS) {
            fields.push((*l as u32, bits));
        }
        for j in 0..4 {
            fields.push((f.nc[j] as u32, 7));
            fields.push((u32::from(f.bc[j]), 2));
            fields.push((u32::from(f.mc[j]), 2));
            fields.push((f.xmaxc[j] as u32, 6));
            for &x in &f.xmc[j] {
                fields.push((x as u32, 3));
            }
        }
        let mut acc: u128 = 0;
        let mut out = [0u8; FRAME_BYTES];
        let mut nbits = 0;
        let mut at = 0;
        for (v, bits) in fields {
            assert!(v < 1 << bits, "{v} does not fit in {bits} bits");
            acc = (acc << bits) | u128::from(v);
            nbits += bits;
            while nbits >= 8 {
                out[at] = (acc >> (nbits - 8)) as u8;
                at += 1;
                nbits -= 8;
            }
        }
        assert_eq!((at, nbits), (FRAME_BYTES, 0), "264 bits");
        out
    }

    /// A pseudo-random generator (xorshift), so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> i16 {
            (self.next() % n) as i16
        }
    }

    /// A frame of random parameters; `valid_lags` keeps every lag within 40..=120, the only
    /// lags an encoder sends.
    fn random_frame(rng: &mut Rng, valid_lags: bool) -> Frame {
        let mut f = Frame::default();
        for (l, bits) in f.larc.iter_mut().zip(LAR_BITS) {
            *l = rng.below(1 << bits);
        }
        for j in 0..4 {
            f.nc[j] = if valid_lags {
                40 + rng.below(81)
            } else {
                rng.below(128)
            };
            f.bc[j] = rng.below(4) as u8;
            f.mc[j] = rng.below(4) as u8;
            f.xmaxc[j] = rng.below(64);
            for x in &mut f.xmc[j] {
                *x = rng.below(8);
            }
        }
        f
    }

    #[test]
    fn unpacks_the_76_parameters_in_order() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let f = random_frame(&mut rng, false);
            assert_eq!(Frame::unpack(&pack(&f)), Some(f));
        }
        // Hand-checked layout: all ones but the signature sets every field to its maximum.
        let mut ones = [0xffu8; FRAME_BYTES];
        ones[0] = 0xdf;
        let f = Frame::unpack(&ones).expect("signature");
        assert_eq!(f.larc, [63, 63, 31, 31, 15, 15, 7, 7]);
        assert_eq!((f.nc, f.bc, f.mc, f.xmaxc), ([127; 4], [3; 4], [3; 4], [63; 4]));
        assert_eq!(f.xmc, [[7; 13]; 4]);
        // One bit at a time: LARc[1]'s most significant bit is the frame's fifth bit, the
        // last pulse's least significant bit is its last.
        let mut one = [0u8; FRAME_BYTES];
        one[0] = 0xd8;
        assert_eq!(Frame::unpack(&one).expect("signature").larc[0], 32);
        one[0] = 0xd0;
        one[32] = 0x01;
        let f = Frame::unpack(&one).expect("signature");
        assert_eq!(f.xmc[3][12], 1);
        assert_eq!(f.xmc[3][..12], [0; 12]);
        // Sub-frame 0 starts at bit 40 (4 + 36): its lag is the first 7 bits of byte 5.
        let mut lag = [0u8; FRAME_BYTES];
        lag[0] = 0xd0;
        lag[5] = 0x50 << 1;
        assert_eq!(Frame::unpack(&lag).expect("signature").nc, [0x50, 0, 0, 0]);
    }

    #[test]
    fn a_frame_without_the_signature_is_no_frame() {
        let mut rng = Rng(7);
        let good = pack(&random_frame(&mut rng, true));
        for nibble in 0..16u8 {
            let mut bad = good;
            bad[0] = (nibble << 4) | (bad[0] & 0x0f);
            assert_eq!(Frame::unpack(&bad).is_some(), nibble == 0xd, "nibble {nibble:x}");
        }
        assert_eq!(Frame::unpack(&good[..32]), None, "short");
        // In a packet: the frames before the bad one are decoded, nothing from it on.
        let mut bad = good;
        bad[0] = 0x20;
        let packet: Vec<u8> = [good, bad, good].concat();
        let mut out = [0i16; 3 * FRAME_SAMPLES];
        assert_eq!(GsmDecoder::new().decode(&packet, &mut out), FRAME_SAMPLES);
        assert_eq!(GsmDecoder::new().decode(&bad, &mut out), 0);
    }

    #[test]
    fn saturating_arithmetic() {
        assert_eq!(add(32767, 1), 32767);
        assert_eq!(add(-32768, -1), -32768);
        assert_eq!(add(1000, -3000), -2000);
        assert_eq!(sub(-32768, 1), -32768);
        assert_eq!(sub(32767, -1), 32767);
        assert_eq!(sub(0, -32768), 32767);
        assert_eq!(mult_r(-32768, -32768), 32767);
        assert_eq!(mult_r(32767, 32767), 32766);
        assert_eq!(mult_r(-32768, 32767), -32767);
        assert_eq!(mult_r(16384, 16384), 8192);
        // Rounds half up: 1 * 16384 / 32768 = 0.5 -> 1; -0.5 -> 0.
        assert_eq!(mult_r(1, 16384), 1);
        assert_eq!(mult_r(-1, 16384), 0);
        assert_eq!(mult_r(28180, 0), 0);
        assert_eq!(asl(1, 5), 32);
        assert_eq!(asl(1, -1), 0);
        assert_eq!(asl(-4, -1), -2);
        assert_eq!(asl(0x4000, 1), i16::MIN, "keeps the low 16 bits");
        assert_eq!(asl(5, 16), 0);
        assert_eq!(asl(-5, -16), -1);
        assert_eq!(asl(5, -16), 0);
        assert_eq!(asr(-7, 1), -4, "arithmetic: toward negative infinity");
        assert_eq!(asr(7, 1), 3);
        assert_eq!(asr(3, -2), 12);
        assert_eq!(asr(-1, 16), -1);
        assert_eq!(asr(1, 16), 0);
        assert_eq!(asr(1, -16), 0);
        // Exhaustively against the 32-bit definitions.
        for a in (i16::MIN..=i16::MAX).step_by(97) {
            for b in (i16::MIN..=i16::MAX).step_by(89) {
                let (wa, wb) = (i32::from(a), i32::from(b));
                assert_eq!(i32::from(add(a, b)), (wa + wb).clamp(-32768, 32767));
                assert_eq!(i32::from(sub(a, b)), (wa - wb).clamp(-32768, 32767));
                let m = ((wa * wb + 16384) >> 15).clamp(-32768, 32767);
                assert_eq!(i32::from(mult_r(a, b)), m);
            }
        }
    }

    #[test]
    fn block_maximum_exponent_and_mantissa() {
        // Table 4.2.15: the decoded maximum is (mant + 8) * 2^exp / 8 ~ the coded level.
        assert_eq!(xmaxc_to_exp_mant(0), (-4, 7));
        assert_eq!(xmaxc_to_exp_mant(1), (-3, 7));
        assert_eq!(xmaxc_to_exp_mant(2), (-2, 3));
        assert_eq!(xmaxc_to_exp_mant(7), (-1, 7));
        assert_eq!(xmaxc_to_exp_mant(8), (0, 0));
        assert_eq!(xmaxc_to_exp_mant(15), (0, 7));
        assert_eq!(xmaxc_to_exp_mant(16), (1, 0));
        assert_eq!(xmaxc_to_exp_mant(63), (6, 7));
        for x in 0..64 {
            let (exp, mant) = xmaxc_to_exp_mant(x);
            assert!((-4..=6).contains(&exp) && (0..=7).contains(&mant), "{x}");
        }
    }

    #[test]
    fn the_smallest_pulses_decode_to_near_silence() {
        // Smallest block maximum (xmaxc 0: exp -4, mant 7), pulses alternating between the two
        // codes nearest zero (3 and 4: -1 and +1, each +-4 after the inverse quantisation), the
        // smallest LTP gain (0.1) and the middle log-area-ratio codes: a faint buzz.
        let f = Frame {
            larc: LAR_MIC.map(|m| -m),
            nc: [40; 4],
            xmc: [std::array::from_fn(|i| 3 + (i % 2) as i16); 4],
            ..Frame::default()
        };
        assert_eq!(rpe_decoding(0, 0, &f.xmc[0])[..6], [-4, 0, 0, 4, 0, 0]);
        let bytes = pack(&f);
        let mut dec = GsmDecoder::new();
        let mut out = [0i16; 10 * FRAME_SAMPLES];
        let packet: Vec<u8> = (0..10).flat_map(|_| bytes).collect();
        assert_eq!(dec.decode(&packet, &mut out), 10 * FRAME_SAMPLES);
        let peak = out.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(peak > 0 && peak < 256, "peak {peak}");
        assert!(out.iter().all(|s| s % 8 == 0), "13-bit samples upscaled");
    }

    #[test]
    fn robust_on_random_bytes() {
        let mut rng = Rng(12345);
        let mut dec = GsmDecoder::new();
        let mut out = [0i16; 4 * FRAME_SAMPLES];
        for len in 0..400 {
            let mut payload: Vec<u8> = (0..len % 140).map(|_| rng.next() as u8).collect();
            // Half the time with signatures, so the frames get decoded.
            if len % 2 == 0 {
                for f in payload.chunks_mut(FRAME_BYTES) {
                    f[0] = 0xd0 | (f[0] & 0x0f);
                }
            }
            let n = dec.decode(&payload, &mut out);
            assert!(n <= out.len());
            if len % 2 == 0 {
                let whole = (len % 140) / FRAME_BYTES;
                assert_eq!(n, whole * FRAME_SAMPLES, "{len} bytes");
            }
        }
        // Extreme parameters, many frames in a row: saturation everywhere, no panic.
        for byte in [0x00u8, 0xff, 0x55, 0xaa] {
            let mut frame = [byte; FRAME_BYTES];
            frame[0] = 0xd0 | (byte & 0x0f);
            let packet: Vec<u8> = (0..4).flat_map(|_| frame).collect();
            for _ in 0..50 {
                assert_eq!(dec.decode(&packet, &mut out), 4 * FRAME_SAMPLES);
            }
        }
        // Out of room: the frame is decoded, written as far as it fits.
        let frame = pack(&random_frame(&mut rng, true));
        let mut small = [0i16; 100];
        assert_eq!(dec.decode(&frame, &mut small), 100);
        assert_eq!(dec.decode(&[frame, frame].concat(), &mut out[..200]), 200);
        // A trailing partial frame is left out.
        assert_eq!(
            dec.decode(&[&frame[..], &frame[..20]].concat(), &mut out),
            FRAME_SAMPLES
        );
    }

    /// An invalid lag keeps the previous valid one (4.3.2): with a lag of 0 the frame decodes
    /// exactly as with the last valid lag the stream sent.
    #[test]
    fn an_invalid_lag_keeps_the_previous_one() {
        let mut rng = Rng(99);
        let first = random_frame(&mut rng, true);
        let mut second = random_frame(&mut rng, true);
        second.nc = [77, 0, 127, 39];
        let mut expected = second;
        expected.nc = [77, 77, 77, 77];
        let (mut a, mut b) = (GsmDecoder::new(), GsmDecoder::new());
        let (mut oa, mut ob) = ([0i16; FRAME_SAMPLES], [0i16; FRAME_SAMPLES]);
        for (f, g) in [(first, first), (second, expected)] {
            a.decode_frame(&f, &mut oa);
            b.decode_frame(&g, &mut ob);
            assert_eq!(oa, ob);
        }
    }

    #[test]
    fn registered_as_static_payload_type_3() {
        let id = CodecId::named("gsm").expect("registered");
        assert_eq!(Payload::from_static_pt(3), Payload::Audio(id));
        assert_eq!(Payload::from_rtpmap("GSM", 8000), Payload::Audio(id));
        assert_eq!(Payload::from_rtpmap("GSM", 16000), Payload::Unsupported);
        let dec = id.decoder(&Format::default());
        assert_eq!((dec.rate(), dec.frame_samples()), (8000, FRAME_SAMPLES));
        assert_eq!(serde_json::to_string(&id).expect("ser"), "\"Gsm\"");
    }

    fn decode_all(data: &[u8]) -> Vec<i16> {
        let mut dec = GsmDecoder::new();
        let mut out = vec![0i16; data.len() / FRAME_BYTES * FRAME_SAMPLES];
        let mut at = 0;
        // Three frames per packet, to exercise state carried across calls.
        for chunk in data.chunks(3 * FRAME_BYTES) {
            at += dec.decode(chunk, &mut out[at..]);
        }
        assert_eq!(at, out.len());
        out
    }

    /// Encodes 8 kHz mono PCM to GSM 06.10 frames with ffmpeg's libgsm encoder.
    fn libgsm_encode(pcm: &[i16]) -> Vec<u8> {
        let args = [
            "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", "8000", "-ac", "1", "-i",
            "pipe:0", "-c:a", "libgsm", "-f", "gsm", "pipe:1",
        ];
        ffmpeg(&args, pcm.iter().flat_map(|s| s.to_le_bytes()).collect())
    }

    /// Decodes GSM frames with ffmpeg's decoder `codec` (`gsm`, its own; `libgsm`, the
    /// classic reference through ffmpeg).
    fn ffmpeg_decode_with(codec: &str, coded: &[u8]) -> Vec<i16> {
        let args = [
            "-hide_banner", "-loglevel", "error", "-c:a", codec, "-f", "gsm", "-i", "pipe:0",
            "-f", "s16le", "pipe:1",
        ];
        ffmpeg(&args, coded.to_vec())
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// The first sample where `ours` and `reference` differ, and the largest difference.
    fn compare(ours: &[i16], reference: &[i16]) -> (Option<usize>, i32) {
        assert_eq!(ours.len(), reference.len(), "sample count");
        let max = ours
            .iter()
            .zip(reference)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap_or(0);
        (ours.iter().zip(reference).position(|(a, b)| a != b), max)
    }

    /// Cross-checks against the two GSM 06.10 decoders ffmpeg has: its own (libavcodec
    /// `gsmdec.c`) and libgsm (Degener and Bormann, the classic reference). ffmpeg missing under
    /// CI, or failing, fails the test; so does a Debian-like ffmpeg without libgsm under CI.
    ///
    /// Audio coded by libgsm (a tone with a sweep and noise, and a full-scale square wave) must
    /// decode sample-exact like both. Frames of random parameters drive the filters into
    /// saturation, and some have lags outside 40..=120: there the reference is libgsm, which
    /// saturates every addition and keeps the previous lag as the Recommendation does (ffmpeg
    /// clamps the lag instead). ffmpeg's own decoder adds the RPE pulses to the long-term
    /// prediction in wrapping 16-bit arithmetic (`dst[3*i] += tab[..]` in `apcm_dequant_add`,
    /// where 4.3.2 has `GSM_ADD(erp, drpp)`), so it differs from both on such frames, which no
    /// encoder produces; this test prints by how much.
    #[test]
    fn matches_ffmpeg() {
        use crate::codec::test_util::require_ffmpeg;
        if !require_ffmpeg("gsm::matches_ffmpeg") {
            return;
        }
        let decoders = String::from_utf8_lossy(&ffmpeg(&["-hide_banner", "-decoders"], vec![]))
            .into_owned();
        if !decoders.contains(" libgsm ") {
            assert!(
                !calltap_lab::root::under_ci(),
                "ffmpeg has no libgsm decoder (Debian's has)"
            );
            eprintln!("SKIP gsm::matches_ffmpeg: this ffmpeg has no libgsm");
            return;
        }
        let mut seed = 1u32;
        let pcm: Vec<i16> = (0..16000)
            .map(|i| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let t = f64::from(i) / 8000.0;
                let noise = f64::from((seed >> 16) as i16) / 32768.0 * 600.0;
                let tone = 9000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin();
                let sweep = 6000.0 * (2.0 * std::f64::consts::PI * (100.0 + 1500.0 * t) * t).sin();
                (tone + sweep + noise) as i16
            })
            .collect();
        let square: Vec<i16> = (0..8000)
            .map(|i| if (i / 20) % 2 == 0 { 32767 } else { -32768 })
            .collect();
        let mut rng = Rng(0x1234_5678);
        let random: Vec<u8> = (0..200)
            .flat_map(|_| pack(&random_frame(&mut rng, true)))
            .collect();
        let any_lag: Vec<u8> = (0..200)
            .flat_map(|_| pack(&random_frame(&mut rng, false)))
            .collect();
        let inputs = [
            ("libgsm-coded tone+sweep+noise", libgsm_encode(&pcm), true),
            ("libgsm-coded full-scale square", libgsm_encode(&square), true),
            ("random parameters", random, false),
            ("random parameters, lags 0..=127", any_lag, false),
        ];
        for (what, coded, ffmpeg_too) in &inputs {
            assert!(!coded.is_empty() && coded.len() % FRAME_BYTES == 0, "{what}");
            let ours = decode_all(coded);
            for codec in ["libgsm", "gsm"] {
                let (first, max) = compare(&ours, &ffmpeg_decode_with(codec, coded));
                eprintln!(
                    "GSM {what}: {} samples, max |ours - ffmpeg -c:a {codec}| = {max}",
                    ours.len()
                );
                if codec == "libgsm" || *ffmpeg_too {
                    assert_eq!(first, None, "{what}: differs from {codec} (max {max})");
                }
            }
        }
    }
}
