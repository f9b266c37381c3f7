//! RTP audio that sipp plays into calls (`play_pcap_audio`): a pcap of G.711 mu-law packets
//! carrying a known tone, so a test can check every sample CallTap wrote.

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

/// Writes the RTP pcap sipp replays (Ethernet/IPv4/UDP, port 6000 -> 6000; sipp rewrites
/// addresses and ports to the call's SDP, and keeps payload, timing and RTP header).
pub fn write_tone_pcap(path: &Path, spec: &ToneSpec) -> Result<()> {
    let file = File::create(path)?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(file, header)?;
    for (p, payload) in tone_payloads(spec).iter().enumerate() {
        let mut rtp = Vec::with_capacity(12 + payload.len());
        rtp.extend_from_slice(&[0x80, if p == 0 { 0x80 } else { 0x00 }]);
        rtp.extend_from_slice(&spec.first_seq.wrapping_add(p as u16).to_be_bytes());
        rtp.extend_from_slice(
            &spec
                .first_ts
                .wrapping_add((p * SAMPLES_PER_PACKET) as u32)
                .to_be_bytes(),
        );
        rtp.extend_from_slice(&spec.ssrc.to_be_bytes());
        rtp.extend_from_slice(payload);
        let frame = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 6000, 6000, &rtp);
        let ts = Duration::from_millis(20 * p as u64);
        writer.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))?;
    }
    Ok(())
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
