//! ITU-T G.726 ADPCM decoder at 16, 24, 32 and 40 kbit/s (2, 3, 4 or 5 bits per 8 kHz sample),
//! written from the Recommendation's computational details (section 4): the inverse adaptive
//! quantizer (RECONST, ADDA, ANTILOG), the quantizer scale-factor adaptation (FUNCTW, FILTD,
//! LIMB, FILTE, MIX), the adaptation speed control (FUNCTF, FILTA/B/C, SUBTA/B/C, LIMA), the
//! second-order pole and sixth-order zero adaptive predictor in the Recommendation's 11-bit
//! floating point (FLOATA/B, FMULT, ACCUM, UPA1/2, UPB, LIMC/D), and the tone and transition
//! detectors (TONE, TRANS, TRIGA/B). No external library; integer arithmetic only.
//!
//! Two packings of the codewords into octets exist, and SDP names them apart:
//! - `G726-16/24/32/40` (RFC 3551 section 4.5.4): the first codeword in the *least*
//!   significant bits of the first octet, a codeword crossing an octet boundary continuing in
//!   the least significant bits of the next ("little-endian");
//! - `AAL2-G726-16/24/32/40` (ITU-T I.366.2 Annex E, RFC 3551 section 4.5.4 too): the first
//!   codeword in the *most* significant bits ("big-endian").
//!
//! Checked sample-exact against the Sun Microsystems reference decoder (the public g72x code,
//! which sox runs for Sun .au files) at 24, 32 and 40 kbit/s. ffmpeg's `g726` decoder is *not*
//! a reference: its MIX rounds `(YL + (YU - YL/64)·AL) / 64` down where the Recommendation
//! truncates the product's magnitude, and it leaks the zero-predictor coefficients by 2^-8 at
//! 40 kbit/s where the Recommendation says 2^-9, so its audio drifts from the encoder's.
//!
//! Static payload type 2 is not mapped: it was G.721 / G726-32 in RFC 1890 and is ambiguous in
//! RFC 3551 (some endpoints send it with AAL2 packing), so a stream without an rtpmap there is
//! kept as raw RTP rather than decoded with a guess.

use super::{g711::NARROWBAND, Codec, Decoder, Format};

/// Bit order of the codewords in an octet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packing {
    /// RFC 3551 `G726-*`: first codeword in the least significant bits.
    Rfc3551,
    /// I.366.2 `AAL2-G726-*`: first codeword in the most significant bits.
    Aal2,
}

/// One registry entry per SDP name; the id is what the journal keeps.
macro_rules! g726 {
    ($const:ident, $id:literal, $name:literal, $bits:literal, $packing:ident, $ie:expr) => {
        #[doc = concat!("G.726 at ", $bits, " bits per sample, SDP `", $name, "`.")]
        pub const $const: Codec = Codec {
            id: $id,
            name: $name,
            static_pt: None,
            clock_rates: &[0, 8000],
            rtp_clock: 8000,
            impairment: ($ie, NARROWBAND.1),
            decoder: |_: &Format<'_>| Box::new(G726Decoder::new($bits, Packing::$packing)),
        };
    };
}

// Ie of G.726 (ITU-T G.113 Appendix I, table I.1): 40 kbit/s 2, 32 kbit/s 7, 24 kbit/s 25,
// 16 kbit/s 50; no concealment, so G.711's Bpl.
g726!(G726_16, "G726-16", "G726-16", 2, Rfc3551, 50.0);
g726!(G726_24, "G726-24", "G726-24", 3, Rfc3551, 25.0);
g726!(G726_32, "G726-32", "G726-32", 4, Rfc3551, 7.0);
g726!(G726_40, "G726-40", "G726-40", 5, Rfc3551, 2.0);
g726!(AAL2_G726_16, "AAL2-G726-16", "AAL2-G726-16", 2, Aal2, 50.0);
g726!(AAL2_G726_24, "AAL2-G726-24", "AAL2-G726-24", 3, Aal2, 25.0);
g726!(AAL2_G726_32, "AAL2-G726-32", "AAL2-G726-32", 4, Aal2, 7.0);
g726!(AAL2_G726_40, "AAL2-G726-40", "AAL2-G726-40", 5, Aal2, 2.0);

/// The rate-dependent tables of one bit rate, indexed by the codeword I.
struct Tables {
    /// RECONST: log2 of the normalised quantized difference (DQLN, 1/128 steps), -2048 for
    /// the codeword that stands for "minus infinity" (a zero difference).
    dqln: &'static [i32],
    /// FUNCTW: scale-factor multiplier (WI, 1/16 steps).
    wi: &'static [i32],
    /// FUNCTF: adaptation-speed input (FI).
    fi: &'static [i32],
    /// UPB: the zero-predictor leak is 2^-9 at 40 kbit/s, 2^-8 otherwise.
    b_leak: u32,
}

const TABLES_16: Tables = Tables {
    dqln: &[116, 365, 365, 116],
    wi: &[-22, 439, 439, -22],
    fi: &[0, 7, 7, 0],
    b_leak: 8,
};

const TABLES_24: Tables = Tables {
    dqln: &[-2048, 135, 273, 373, 373, 273, 135, -2048],
    wi: &[-4, 30, 137, 582, 582, 137, 30, -4],
    fi: &[0, 1, 2, 7, 7, 2, 1, 0],
    b_leak: 8,
};

const TABLES_32: Tables = Tables {
    dqln: &[
        -2048, 4, 135, 213, 273, 323, 373, 425, 425, 373, 323, 273, 213, 135, 4, -2048,
    ],
    wi: &[
        -12, 18, 41, 64, 112, 198, 355, 1122, 1122, 355, 198, 112, 64, 41, 18, -12,
    ],
    fi: &[0, 0, 0, 1, 1, 1, 3, 7, 7, 3, 1, 1, 1, 0, 0, 0],
    b_leak: 8,
};

const TABLES_40: Tables = Tables {
    dqln: &[
        -2048, -66, 28, 104, 169, 224, 274, 318, 358, 395, 429, 459, 488, 514, 539, 566, 566, 539,
        514, 488, 459, 429, 395, 358, 318, 274, 224, 169, 104, 28, -66, -2048,
    ],
    wi: &[
        14, 14, 24, 39, 40, 41, 58, 100, 141, 179, 219, 280, 358, 440, 529, 696, 696, 529, 440,
        358, 280, 219, 179, 141, 100, 58, 41, 40, 39, 24, 14, 14,
    ],
    fi: &[
        0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 0, 0, 0,
        0, 0,
    ],
    b_leak: 9,
};

/// A number in the Recommendation's 11-bit floating point: sign, 4-bit exponent, 6-bit
/// mantissa (FLOATA, FLOATB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Float {
    negative: bool,
    exp: i32,
    mant: i32,
}

impl Float {
    /// The reset value of the stored differences and reconstructed signals: +0, mantissa 32.
    const RESET: Float = Float {
        negative: false,
        exp: 0,
        mant: 32,
    };

    /// A magnitude of at most 15 bits, with its sign.
    fn new(negative: bool, mag: i32) -> Float {
        let exp = bit_length(mag);
        let mant = if mag == 0 { 32 } else { (mag << 6) >> exp };
        Float {
            negative,
            exp,
            mant,
        }
    }
}

/// Bits needed for a non-negative magnitude (0 for 0): the exponent of FLOATA/FLOATB/FMULT.
fn bit_length(mag: i32) -> i32 {
    (u32::BITS - mag.unsigned_abs().leading_zeros()) as i32
}

/// Wraps to 16-bit two's complement, as the Recommendation's 16-bit quantities do.
fn wrap16(v: i32) -> i32 {
    i32::from(v as i16)
}

/// FMULT: a 16-bit predictor coefficient times a floating-point signal, as a 16-bit
/// two's-complement partial estimate.
fn fmult(coef: i32, sig: Float) -> i32 {
    // AnMAG: the coefficient's magnitude to 13 bits (coefficients are 2^-14 units, >> 2).
    let mag = if coef < 0 {
        (-(coef >> 2)) & 8191
    } else {
        coef >> 2
    };
    let a = Float::new(coef < 0, mag);
    let exp = a.exp + sig.exp;
    let mant = (a.mant * sig.mant + 48) >> 4;
    let prod = if exp > 26 {
        ((mant << 7) << (exp - 26)) & 32767
    } else {
        (mant << 7) >> (26 - exp)
    };
    if a.negative != sig.negative {
        -prod
    } else {
        prod
    }
}

/// Stateful G.726 decoder of one RTP stream (the Recommendation's decoder, linear output).
pub struct G726Decoder {
    bits: u32,
    packing: Packing,
    tables: &'static Tables,
    /// Pole-predictor coefficients A1, A2 (2^-14 units).
    a: [i32; 2],
    /// Zero-predictor coefficients B1..B6 (2^-14 units).
    b: [i32; 6],
    /// Quantized differences DQ1..DQ6, newest first.
    dq: [Float; 6],
    /// Reconstructed signals SR1, SR2, newest first.
    sr: [Float; 2],
    /// Signs of the partial reconstructed signal PK1, PK2 (true: negative).
    pk: [bool; 2],
    /// Fast (YU, 13 bits) and slow (YL, 19 bits) quantizer scale factors.
    yu: i32,
    yl: i32,
    /// Short- and long-term averages of FI (DMS, DML).
    dms: i32,
    dml: i32,
    /// Adaptation speed control (AP, 10 bits).
    ap: i32,
    /// Tone detected (TD).
    td: bool,
}

impl G726Decoder {
    /// A decoder in the reset state of the Recommendation, for codewords of `bits` (2 to 5;
    /// anything else is taken as 4) packed as `packing`.
    fn new(bits: u32, packing: Packing) -> G726Decoder {
        let (bits, tables) = match bits {
            2 => (2, &TABLES_16),
            3 => (3, &TABLES_24),
            5 => (5, &TABLES_40),
            _ => (4, &TABLES_32),
        };
        G726Decoder {
            bits,
            packing,
            tables,
            a: [0; 2],
            b: [0; 6],
            dq: [Float::RESET; 6],
            sr: [Float::RESET; 2],
            pk: [false; 2],
            yu: 544,
            yl: 34816,
            dms: 0,
            dml: 0,
            ap: 0,
            td: false,
        }
    }

    /// MIX (with LIMA): the quantizer scale factor Y, from the fast and slow factors weighted
    /// by the adaptation speed.
    fn scale(&self) -> i32 {
        let al = if self.ap > 255 { 64 } else { self.ap >> 2 };
        let yls = self.yl >> 6;
        let dif = self.yu - yls;
        // The product's magnitude is truncated, then signed.
        let prod = (dif.abs() * al) >> 6;
        yls + if dif < 0 { -prod } else { prod }
    }

    /// FMULT and ACCUM: the signal estimate SE and its zero-predictor part SEZ (15 bits).
    fn estimate(&self) -> (i32, i32) {
        let mut sezi = 0;
        for (&b, &dq) in self.b.iter().zip(&self.dq) {
            sezi = wrap16(sezi + fmult(b, dq));
        }
        let sei = wrap16(sezi + fmult(self.a[0], self.sr[0]) + fmult(self.a[1], self.sr[1]));
        (sei >> 1, sezi >> 1)
    }

    /// Decodes one codeword `i` (its low `bits` bits) into a 16-bit linear sample.
    fn sample(&mut self, i: u32) -> i16 {
        let t = self.tables;
        let i = (i & ((1 << self.bits) - 1)) as usize;
        let y = self.scale();
        let (se, sez) = self.estimate();

        // RECONST, ADDA, ANTILOG: the quantized difference, sign and magnitude.
        let dqs = (i >> (self.bits - 1)) != 0;
        let dql = t.dqln.get(i).copied().unwrap_or(-2048) + (y >> 2);
        let dqmag = if dql < 0 {
            0
        } else {
            let dex = (dql >> 7) & 15;
            let dqt = 128 + (dql & 127);
            (dqt << dex) >> 7
        };
        let dq = if dqs { -dqmag } else { dqmag };

        // ADDB, ADDC: reconstructed signal and partial reconstructed signal (16 bits).
        let sr = wrap16(se + dq);
        let dqsez = wrap16(sez + dq);
        let pk0 = dqsez < 0;
        let sigpk = dqsez == 0;

        // TRANS: a transition from a tone (large difference while a tone was detected).
        let ylint = self.yl >> 15;
        let ylfrac = (self.yl >> 10) & 31;
        let thr2 = if ylint > 9 {
            31 << 10
        } else {
            (32 + ylfrac) << ylint
        };
        let dqthr = (thr2 + (thr2 >> 1)) >> 1;
        let tr = self.td && dqmag > dqthr;

        // UPA2, LIMC: second pole coefficient.
        let a1 = self.a[0];
        let a2 = self.a[1];
        let a2p = if sigpk {
            a2 - (a2 >> 7)
        } else {
            let fa1 = 4 * a1.clamp(-8191, 8191);
            let fa = if pk0 != self.pk[0] { fa1 } else { -fa1 };
            let uga2a = if pk0 != self.pk[1] { -16384 } else { 16384 };
            wrap16(a2 + ((uga2a + fa) >> 7) - (a2 >> 7))
        }
        .clamp(-12288, 12288);

        // UPA1, LIMD: first pole coefficient, bounded by the second for stability.
        let uga1 = match (sigpk, pk0 != self.pk[0]) {
            (true, _) => 0,
            (false, true) => -192,
            (false, false) => 192,
        };
        let a1p = wrap16(a1 + uga1 - (a1 >> 8)).clamp(a2p - 15360, 15360 - a2p);

        // UPB: zero-predictor coefficients.
        for (b, dqn) in self.b.iter_mut().zip(&self.dq) {
            let ugb = match (dqmag == 0, dqs != dqn.negative) {
                (true, _) => 0,
                (false, true) => -128,
                (false, false) => 128,
            };
            *b = wrap16(*b + ugb - (*b >> t.b_leak));
        }

        // TONE, TRIGB: a tone is a strongly negative A2; a transition resets the predictor.
        let tdp = a2p < -11776;
        if tr {
            self.a = [0; 2];
            self.b = [0; 6];
        } else {
            self.a = [a1p, a2p];
        }

        // FLOATA, FLOATB and the delay lines. SR is 16-bit two's complement; its magnitude
        // keeps 15 bits (the Recommendation's `(65536 - SR) & 32767`).
        self.dq.copy_within(..5, 1);
        self.dq[0] = Float::new(dqs, dqmag);
        self.sr[1] = self.sr[0];
        self.sr[0] = Float::new(sr < 0, sr.unsigned_abs() as i32 & 32767);
        self.pk = [pk0, self.pk[0]];

        // FUNCTW, FILTD, LIMB, FILTE: fast and slow scale factors.
        let wi = t.wi.get(i).copied().unwrap_or(0);
        self.yu = (y + (((wi << 5) - y) >> 5)).clamp(544, 5120);
        self.yl += self.yu + ((-self.yl) >> 6);

        // FUNCTF, FILTA, FILTB, SUBTA-C, FILTC, TRIGA: adaptation speed.
        let fi = t.fi.get(i).copied().unwrap_or(0);
        self.dms += ((fi << 9) - self.dms) >> 5;
        self.dml += ((fi << 11) - self.dml) >> 7;
        let ax = y < 1536 || tdp || ((self.dms << 2) - self.dml).abs() >= (self.dml >> 3);
        self.ap = if tr {
            256
        } else {
            self.ap + (((i32::from(ax) << 9) - self.ap) >> 4)
        };
        self.td = !tr && tdp;

        // Linear output: SR is 14-bit uniform PCM, scaled to 16 bits.
        (sr * 4).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
    }

    /// Decodes the codewords of `payload` into `out`, one sample each; returns the samples
    /// written. Bits left over after the last whole codeword are ignored, and what does not
    /// fit in `out` is left out.
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let mut n = 0;
        unpack(self.bits, self.packing, payload, out.len(), |code| {
            out[n] = self.sample(code);
            n += 1;
        });
        n
    }
}

/// Hands `f` the first `max` codewords of `bits` bits in `payload`, in order.
fn unpack(bits: u32, packing: Packing, payload: &[u8], max: usize, mut f: impl FnMut(u32)) {
    let mask = (1u32 << bits) - 1;
    // Bits not yet handed out: the next codeword's are the low ones (RFC 3551) or the high
    // ones (AAL2) of the `have` bits held.
    let mut acc = 0u32;
    let mut have = 0u32;
    let mut bytes = payload.iter();
    for _ in 0..max {
        if have < bits {
            let Some(&byte) = bytes.next() else { return };
            match packing {
                Packing::Rfc3551 => acc |= u32::from(byte) << have,
                Packing::Aal2 => acc = (acc << 8) | u32::from(byte),
            }
            have += 8;
        }
        have -= bits;
        match packing {
            Packing::Rfc3551 => {
                f(acc & mask);
                acc >>= bits;
            }
            Packing::Aal2 => {
                f((acc >> have) & mask);
                acc &= (1 << have) - 1;
            }
        }
    }
}

impl Decoder for G726Decoder {
    fn rate(&self) -> u32 {
        8000
    }

    fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        G726Decoder::decode(self, payload, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{CodecId, Payload};
    use proptest::prelude::*;

    const RATES: [(u32, &str); 4] = [(2, "16"), (3, "24"), (4, "32"), (5, "40")];

    /// Runs the unpacking of `payload` and returns the codewords it yields.
    fn codewords(bits: u32, packing: Packing, payload: &[u8]) -> Vec<u32> {
        let mut codes = Vec::new();
        unpack(bits, packing, payload, usize::MAX, |c| codes.push(c));
        codes
    }

    /// Packs codewords the way the packing says (the test's own, independent of `unpack`).
    fn pack(bits: u32, packing: Packing, codes: &[u32]) -> Vec<u8> {
        let mut stream = Vec::new();
        for &c in codes {
            for k in 0..bits {
                // Bit order within a codeword: LSB first for RFC 3551, MSB first for AAL2.
                let bit = match packing {
                    Packing::Rfc3551 => (c >> k) & 1,
                    Packing::Aal2 => (c >> (bits - 1 - k)) & 1,
                };
                stream.push(bit as u8);
            }
        }
        stream
            .chunks(8)
            .map(|octet| {
                octet.iter().enumerate().fold(0u8, |acc, (k, &bit)| match packing {
                    Packing::Rfc3551 => acc | (bit << k),
                    Packing::Aal2 => acc | (bit << (7 - k)),
                })
            })
            .collect()
    }

    #[test]
    fn rfc3551_packs_from_the_least_significant_bits() {
        // RFC 3551 4.5.4's figures: 32 kbit/s, the first codeword in bits 0-3.
        assert_eq!(codewords(4, Packing::Rfc3551, &[0x21, 0x43]), [1, 2, 3, 4]);
        // 16 kbit/s: four codewords an octet, the first in bits 0-1.
        assert_eq!(codewords(2, Packing::Rfc3551, &[0b11_10_01_00]), [0, 1, 2, 3]);
        // 24 kbit/s: eight codewords in three octets; the third straddles octets 0 and 1.
        let codes = [1, 2, 3, 4, 5, 6, 7, 0];
        let bytes = pack(3, Packing::Rfc3551, &codes);
        assert_eq!(bytes, [0xd1, 0x58, 0x1f], "0b11_010_001, 0b0_101_100_0, 0b000_111_11");
        assert_eq!(codewords(3, Packing::Rfc3551, &bytes), codes);
        // 40 kbit/s: eight codewords in five octets.
        let codes = [31, 0, 17, 8, 1, 30, 2, 16];
        let bytes = pack(5, Packing::Rfc3551, &codes);
        assert_eq!(bytes.len(), 5);
        assert_eq!(bytes[0] & 0x1f, 31, "the first codeword is in the low bits");
        assert_eq!(codewords(5, Packing::Rfc3551, &bytes), codes);
    }

    #[test]
    fn aal2_packs_from_the_most_significant_bits() {
        assert_eq!(codewords(4, Packing::Aal2, &[0x12, 0x34]), [1, 2, 3, 4]);
        assert_eq!(codewords(2, Packing::Aal2, &[0b00_01_10_11]), [0, 1, 2, 3]);
        let codes = [1, 2, 3, 4, 5, 6, 7, 0];
        let bytes = pack(3, Packing::Aal2, &codes);
        assert_eq!(bytes, [0x29, 0xcb, 0xb8]);
        assert_eq!(codewords(3, Packing::Aal2, &bytes), codes);
        let codes = [31, 0, 17, 8, 1, 30, 2, 16];
        let bytes = pack(5, Packing::Aal2, &codes);
        assert_eq!(bytes[0] >> 3, 31, "the first codeword is in the high bits");
        assert_eq!(codewords(5, Packing::Aal2, &bytes), codes);
    }

    proptest! {
        /// Both packings at every rate: whatever is packed comes out in order, and bits after
        /// the last whole codeword are ignored.
        #[test]
        fn unpacking_inverts_packing(codes in proptest::collection::vec(0u32..32, 0..200)) {
            for (bits, _) in RATES {
                let codes: Vec<u32> = codes.iter().map(|c| c & ((1 << bits) - 1)).collect();
                for packing in [Packing::Rfc3551, Packing::Aal2] {
                    let bytes = pack(bits, packing, &codes);
                    let got = codewords(bits, packing, &bytes);
                    let whole = bytes.len() * 8 / bits as usize;
                    prop_assert_eq!(got.len(), whole);
                    prop_assert_eq!(&got[..codes.len()], &codes[..]);
                }
            }
        }

        /// Any payload, any output room: no panic, never more samples than room or codewords.
        #[test]
        fn any_payload_decodes(payload in proptest::collection::vec(any::<u8>(), 0..400),
                               room in 0usize..1200) {
            for codec in ALL {
                let id = CodecId::named(codec.name).expect("registered");
                let mut d = id.decoder(&Format::default());
                let mut out = vec![0i16; room];
                for _ in 0..3 {
                    let n = d.decode(&payload, &mut out);
                    prop_assert!(n <= room);
                }
            }
        }
    }

    const ALL: [&Codec; 8] = [
        &G726_16,
        &G726_24,
        &G726_32,
        &G726_40,
        &AAL2_G726_16,
        &AAL2_G726_24,
        &AAL2_G726_32,
        &AAL2_G726_40,
    ];

    /// Long runs of extreme codewords (the largest differences of one sign, alternating signs,
    /// pseudo-random) drive every 16-bit wrap of the Recommendation without a panic.
    #[test]
    fn extreme_streams_do_not_panic() {
        let mut junk = vec![0u8; 80_000];
        let mut x = 0x1234_5678u32;
        for b in &mut junk {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let mut out = vec![0i16; 320_000];
        for codec in ALL {
            let id = CodecId::named(codec.name).expect("registered");
            for payload in [&junk[..], &[0x77; 20_000], &[0x88; 20_000], &[0x7f; 20_000], &[0xff; 20_000]] {
                let mut d = id.decoder(&Format::default());
                let n = d.decode(payload, &mut out);
                assert_eq!(n, (payload.len() * 8 / bits_of(codec)).min(out.len()));
            }
        }
    }

    fn bits_of(codec: &Codec) -> usize {
        match &codec.name[codec.name.len() - 2..] {
            "16" => 2,
            "24" => 3,
            "32" => 4,
            _ => 5,
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    // Known vectors: the first 200 codewords of the corpus's `G726-24/32/40` calls
    // (sip-rtp-g726.pcap, RFC 3551 packing) from the reset state, and the linear samples 64..200
    // the Sun Microsystems reference decoder (the public g72x code, as sox runs it for Sun .au
    // files of encoding 25, 23 and 26) makes of them; samples 0..64 are silence.
    const CODE_24: &str = "ffffffffffffffffffffffffffffffffffffffffffffffff7f1c33edebfb4fa227cf9fffff7fdfb66dff892429497edbad6bdbfe134992e4a4695ffbfe6ff9ffff2757ae3cbf5f9bb7fd3b";
    const PCM_24: [i16; 136] = [0, 0, 16, -16, 16, -16, -68, 40, -88, -96, 4, -104, -52, 0, -56, -4, -4, 40, 44, 44, 92, 0, 48, 44, -4, 44, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0, 0, -24, 0, -24, -24, -24, -28, -28, -28, -28, -8, -8, 20, 24, 52, 64, 84, 104, 128, 96, 96, 96, 96, 56, 36, -16, -40, -52, -116, -156, -136, -192, -172, -172, -176, -168, -164, -116, -84, -12, 32, 116, 188, 248, 320, 384, 460, 536, 280, 324, 328, 16, 132, -152, -356, -228, -460, -452, -444, -360, -368, -272, -196, -140, -164, 56, -44, -20, 8, -12, 4, 0, -8, -4, 52, 84, 60, 148, 160, 112, 196, 200, 140, 160, 108, 72, 12, -4, -100, -136, -152, -300, -240, -268, -308, -320, -260, -196, -200, -80];
    const CODE_32: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffefd1e229baaffe1d2121f3222ee1f1ff1f1eeedfeddcedfe214444242311dfcdbcbcdcddfe1f333545443db1c1eadceeded23efdd21fef213ff3232fe1eeccbbcddcee1f";
    const PCM_32: [i16; 136] = [0, -8, 8, -16, 16, -8, -68, 28, -84, -76, 4, -108, -20, -4, -48, 16, 16, 40, 20, 40, 60, 0, 44, 40, -20, 40, 20, -16, 16, 0, 0, 0, 0, 12, -12, 12, -12, -12, 0, -24, -24, -12, -44, -32, -32, -20, -20, -8, 8, 24, 56, 68, 84, 108, 128, 96, 120, 108, 80, 72, 40, -8, -36, -76, -100, -148, -156, -204, -208, -192, -192, -188, -156, -112, -80, -28, 48, 100, 200, 228, 340, 404, 464, 544, 304, 392, 316, 8, 80, -128, -356, -288, -436, -436, -372, -344, -300, -304, -132, -184, -164, 20, -92, -40, 60, -56, -12, 28, -12, -20, 20, 60, 36, 112, 160, 104, 172, 180, 116, 152, 132, 60, 28, -4, -76, -120, -188, -260, -260, -292, -320, -300, -260, -228, -168, -96];
    const CODE_40: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffbf0b3eba1d16ffcb3f17828c613e217d882efeff3ff8e0fbe7bcefdd7bff8294638c29858cf0fbd619e7acb5defdff510a3ae71cc48bb843df9e37e79d0fdecbfe84ffffbf18bf945fc61f81ffaeb7c65b6fdefd0f";
    const PCM_40: [i16; 136] = [0, -8, 8, -12, 12, -8, -80, 20, -100, -72, 4, -112, -24, -4, -36, 16, 16, 44, 28, 28, 76, 0, 48, 48, -16, 32, 20, -20, 20, 0, -4, 0, 0, 8, -8, 8, -8, -16, 0, -24, -24, -16, -36, -36, -24, -24, -20, -8, 8, 28, 48, 88, 88, 104, 112, 104, 108, 96, 80, 60, 36, 4, -36, -68, -108, -156, -172, -192, -192, -196, -200, -184, -156, -112, -84, -24, 44, 84, 192, 252, 308, 372, 428, 532, 336, 384, 312, -16, 72, -116, -348, -268, -432, -428, -380, -372, -312, -296, -160, -172, -152, 16, -84, -40, 60, -36, 4, 8, -16, 0, 24, 56, 40, 116, 164, 120, 184, 176, 128, 156, 120, 44, 36, -8, -84, -112, -168, -264, -272, -308, -320, -296, -264, -224, -164, -104];

    #[test]
    fn known_vectors_match_the_sun_reference() {
        for (bits, code, pcm) in [(3, CODE_24, &PCM_24), (4, CODE_32, &PCM_32), (5, CODE_40, &PCM_40)] {
            let payload = hex(code);
            for packing in [Packing::Rfc3551, Packing::Aal2] {
                // The same codewords in AAL2 packing decode the same.
                let payload = match packing {
                    Packing::Rfc3551 => payload.clone(),
                    Packing::Aal2 => pack(bits, packing, &codewords(bits, Packing::Rfc3551, &payload)),
                };
                let mut d = G726Decoder::new(bits, packing);
                let mut out = [0i16; 200];
                // In 40-codeword packets (whole octets at every rate): state carries across them.
                let mut at = 0;
                for chunk in payload.chunks(40 * bits as usize / 8) {
                    at += d.decode(chunk, &mut out[at..]);
                }
                assert_eq!(at, 200);
                assert_eq!(out[..64], [0; 64]);
                assert_eq!(out[64..], pcm[..], "{bits} bits, {packing:?}");
            }
        }
    }

    #[test]
    fn sdp_names_and_no_static_payload_type() {
        for (bits, rate) in RATES {
            for prefix in ["", "AAL2-"] {
                let name = format!("{prefix}G726-{rate}");
                let Payload::Audio(id) = Payload::from_rtpmap(&name.to_lowercase(), 8000) else {
                    panic!("{name} not decoded");
                };
                assert_eq!(id.codec().name, name);
                assert_eq!(id.codec().id, name, "journal id");
                assert_eq!(id.decoder(&Format::default()).rate(), 8000);
                let mut d = id.decoder(&Format::default());
                assert_eq!(d.decode(&[0; 10], &mut [0; 100]), 80 / bits as usize);
            }
        }
        assert_eq!(Payload::from_rtpmap("G726-32", 16000), Payload::Unsupported);
        assert_eq!(Payload::from_static_pt(2), Payload::Unsupported);
    }
}
