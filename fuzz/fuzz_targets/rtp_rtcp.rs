//! One datagram read as RTP and as compound RTCP, its payload through every decoder.
//!
//! Invariants: the RTP payload is a slice of the datagram after the fixed header and CSRCs,
//! the header fields are the datagram's bytes; RTCP stops at its first error, yields no more
//! packets than the datagram has words, and an SR/RR has as many report blocks as its count
//! says; decoders write no more samples than they have room for.
#![no_main]

use calltap_fuzz::within;
use calltap_media::{
    codec::{dtmf::DtmfDetector, g711, g722::G722Decoder},
    rtcp::{parse_compound, RtcpPacket},
    rtp::{RtpPacket, FIXED_HEADER_LEN},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RtpPacket::parse(data) {
        assert!(within(data, p.payload));
        let header = FIXED_HEADER_LEN + 4 * usize::from(p.csrc_count);
        assert!(p.payload.len() + header <= data.len());
        assert!(p.csrc_count <= 15);
        assert_eq!(data[0] >> 6, 2);
        assert_eq!(p.payload_type, data[1] & 0x7f);
        assert_eq!(p.sequence, u16::from_be_bytes([data[2], data[3]]));
        assert_eq!(
            p.ssrc,
            u32::from_be_bytes([data[8], data[9], data[10], data[11]])
        );
        decode(p.timestamp, p.payload);
    }
    let mut packets = 0usize;
    let mut failed = false;
    for r in parse_compound(data) {
        assert!(!failed, "a packet after an error");
        packets += 1;
        match r {
            Ok(
                RtcpPacket::SenderReport { reports, .. }
                | RtcpPacket::ReceiverReport { reports, .. },
            ) => {
                assert!(reports.len() <= 31);
                assert_eq!(reports.iter().count(), reports.len());
            }
            Ok(RtcpPacket::Other { .. }) => {}
            Err(_) => failed = true,
        }
    }
    assert!(
        packets <= data.len() / 4 + 1,
        "{packets} packets in {} bytes",
        data.len()
    );
});

fn decode(ts: u32, payload: &[u8]) {
    let mut pcm = [0i16; 512];
    assert!(g711::decode_ulaw(payload, &mut pcm) <= pcm.len());
    assert!(g711::decode_alaw(payload, &mut pcm) <= pcm.len());
    assert!(G722Decoder::new().decode(payload, &mut pcm) <= pcm.len());
    let mut dtmf = DtmfDetector::default();
    for d in [dtmf.push(ts, payload), dtmf.flush()].into_iter().flatten() {
        assert!("0123456789*#ABCDF".contains(d.digit), "{d:?}");
    }
}
