//! RTP audio that sipp plays into calls (`play_pcap_audio`): a pcap of G.711 mu-law packets
//! carrying a known tone, so a test can check every sample CallTap wrote (other codecs'
//! payloads come from [`crate::codec_ref`]), optionally with loss and jitter ([`impair`]).

use std::{fs::File, path::Path, time::Duration};

use anyhow::Result;
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};

/// 20 ms of 8 kHz audio per packet, as every phone sends.
pub const SAMPLES_PER_PACKET: usize = 160;

/// What to put in the capture.
#[derive(Clone, Debug)]
pub struct ToneSpec {
    pub freq_hz: f64,
    pub amplitude: f64,
    pub packets: usize,
    pub ssrc: u32,
    pub first_seq: u16,
    pub first_ts: u32,
}

/// The mu-law bytes of the tone, in sending order (one `Vec` per packet).
pub fn tone_payloads(spec: &ToneSpec) -> Vec<Vec<u8>> {
    (0..spec.packets)
        .map(|p| {
            (0..SAMPLES_PER_PACKET)
                .map(|i| {
                    let n = (p * SAMPLES_PER_PACKET + i) as f64;
                    let x = spec.amplitude
                        * (2.0 * std::f64::consts::PI * spec.freq_hz * n / 8000.0).sin();
                    ulaw_encode(x.round() as i16)
                })
                .collect()
        })
        .collect()
}

/// One RTP packet to put in a capture for sipp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpOut {
    pub at_ms: u64,
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// The tone as RTP packets, 20 ms apart from `at_ms`.
pub fn tone_packets(spec: &ToneSpec, at_ms: u64) -> Vec<RtpOut> {
    tone_payloads(spec)
        .into_iter()
        .enumerate()
        .map(|(p, payload)| RtpOut {
            at_ms: at_ms + 20 * p as u64,
            pt: 0,
            marker: p == 0,
            seq: spec.first_seq.wrapping_add(p as u16),
            ts: spec.first_ts.wrapping_add((p * SAMPLES_PER_PACKET) as u32),
            ssrc: spec.ssrc,
            payload,
        })
        .collect()
}

/// A network's loss and jitter, made by the sender: drops about `loss_per_mille` of the
/// packets (never the first or the last, so the stream's extent, and with it the expected
/// count, stays that of the whole) and moves each send time by up to `jitter_ms` either way
/// (less than half the 20 ms spacing, so nothing is reordered). Deterministic for a `seed`:
/// the test knows exactly what it took away. Used where the kernel has no `sch_netem`.
pub fn impair(packets: &[RtpOut], loss_per_mille: u32, jitter_ms: u64, seed: u64) -> Vec<RtpOut> {
    // xorshift64*: any fixed sequence will do, it only has to be the same every run.
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let last = packets.len().saturating_sub(1);
    packets
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let r = next();
            let dropped = i != 0 && i != last && (r % 1000) < u64::from(loss_per_mille);
            let shift = (r >> 32) % (2 * jitter_ms + 1);
            let at_ms = (p.at_ms + shift).saturating_sub(jitter_ms);
            (!dropped).then(|| RtpOut { at_ms, ..p.clone() })
        })
        .collect()
}

/// RFC 4733 telephone-events (PT 101) for `digits`, each 200 ms long with the usual three
/// end packets, 100 ms apart, continuing the stream's sequence and timestamp.
pub fn dtmf_packets(
    digits: &str,
    ssrc: u32,
    at_ms: u64,
    first_seq: u16,
    first_ts: u32,
) -> Vec<RtpOut> {
    let mut out = Vec::new();
    let (mut t, mut seq, mut ts) = (at_ms, first_seq, first_ts);
    for d in digits.chars() {
        let event = match d {
            '0'..='9' => d as u8 - b'0',
            '*' => 10,
            '#' => 11,
            'A'..='D' => d as u8 - b'A' + 12,
            _ => continue,
        };
        for k in 0..13u16 {
            let end = k >= 10;
            let duration = 160 * (k.min(9) + 1);
            out.push(RtpOut {
                at_ms: t,
                pt: 101,
                marker: k == 0,
                seq,
                ts,
                ssrc,
                payload: vec![
                    event,
                    if end { 0x80 | 10 } else { 10 },
                    (duration >> 8) as u8,
                    duration as u8,
                ],
            });
            seq = seq.wrapping_add(1);
            t += if k < 10 { 20 } else { 5 };
        }
        t += 100;
        ts = ts.wrapping_add(160 * 10 + 800);
    }
    out
}

/// Writes the RTP pcap sipp replays (Ethernet/IPv4/UDP, port 6000 -> 6000; sipp rewrites
/// addresses and ports to the call's SDP, and keeps payload, timing and RTP header).
pub fn write_rtp_pcap(path: &Path, packets: &[RtpOut]) -> Result<()> {
    let file = File::create(path)?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(file, header)?;
    for p in packets {
        let mut rtp = Vec::with_capacity(12 + p.payload.len());
        rtp.extend_from_slice(&[0x80, p.pt | if p.marker { 0x80 } else { 0 }]);
        rtp.extend_from_slice(&p.seq.to_be_bytes());
        rtp.extend_from_slice(&p.ts.to_be_bytes());
        rtp.extend_from_slice(&p.ssrc.to_be_bytes());
        rtp.extend_from_slice(&p.payload);
        let frame = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 6000, 6000, &rtp);
        let ts = Duration::from_millis(p.at_ms);
        writer.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))?;
    }
    Ok(())
}

/// A capture of just the tone.
pub fn write_tone_pcap(path: &Path, spec: &ToneSpec) -> Result<()> {
    write_rtp_pcap(path, &tone_packets(spec, 0))
}

fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// ITU-T G.711 mu-law encoder (the classic Sun reference algorithm).
pub fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// ITU-T G.711 mu-law decoder, written independently of CallTap's so tests cross-check it.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impair_drops_and_shifts_as_asked_and_keeps_the_ends() {
        let spec = ToneSpec {
            freq_hz: 440.0,
            amplitude: 8000.0,
            packets: 1000,
            ssrc: 1,
            first_seq: 0,
            first_ts: 0,
        };
        let sent = tone_packets(&spec, 100);
        let got = impair(&sent, 20, 5, 7);
        assert_eq!(got, impair(&sent, 20, 5, 7), "deterministic");
        let lost = sent.len() - got.len();
        assert!((8..=35).contains(&lost), "{lost} of 1000 dropped at 2 %");
        assert_eq!(got[0].seq, 0);
        assert_eq!(got.last().map(|p| p.seq), Some(999));
        let mut moved = 0;
        for p in &got {
            let due = 100 + 20 * u64::from(p.seq);
            assert!(p.at_ms.abs_diff(due) <= 5, "seq {} at {}", p.seq, p.at_ms);
            moved += usize::from(p.at_ms != due);
        }
        assert!(moved > got.len() / 2, "only {moved} moved");
        assert!(got.windows(2).all(|w| w[0].at_ms < w[1].at_ms), "reordered");
        assert_eq!(impair(&sent, 0, 0, 7), sent);
    }

    #[test]
    fn ulaw_round_trip_is_close_and_known_values_hold() {
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        for x in (-32000i32..32000).step_by(97) {
            let y = i32::from(ulaw_decode(ulaw_encode(x as i16)));
            assert!((x - y).abs() <= (x.abs() / 16).max(8), "{x} -> {y}");
        }
    }
}
