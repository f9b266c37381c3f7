//! Ethernet/IPv4/UDP/TCP frames built in place, for the generators: the payload is written
//! first and the headers filled in once its length is known, so nothing is allocated per frame.

use std::net::Ipv4Addr;

/// Bytes before an IPv4 frame's L4 header: Ethernet (14) and an option-less IPv4 header (20).
pub const L4_OFF: usize = 34;
/// Where a UDP frame's payload starts.
pub const UDP_PAYLOAD_OFF: usize = L4_OFF + 8;
/// Where a TCP frame's payload starts (no TCP options).
pub const TCP_PAYLOAD_OFF: usize = L4_OFF + 20;

/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP flags.
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// The IPv4 header of a frame.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// DSCP and ECN.
    pub tos: u8,
    pub id: u16,
    /// Flags (DF 0x4000, MF 0x2000) and the fragment offset in 8-byte units.
    pub frag: u16,
}

/// Clears `buf` and writes the Ethernet header and zeroed room for the IPv4 header and an L4
/// header of `l4_header` bytes; the caller appends the payload, then calls [`finish_ipv4`].
pub fn begin(buf: &mut Vec<u8>, src_mac: [u8; 6], dst_mac: [u8; 6], l4_header: usize) {
    buf.clear();
    buf.extend_from_slice(&dst_mac);
    buf.extend_from_slice(&src_mac);
    buf.extend_from_slice(&0x0800u16.to_be_bytes());
    buf.resize(L4_OFF + l4_header, 0);
}

/// Fills the IPv4 header (total length from the frame's length) and its checksum.
pub fn finish_ipv4(buf: &mut [u8], ip: &Ipv4) {
    let total = (buf.len() - 14) as u16;
    let h = &mut buf[14..L4_OFF];
    h[0] = 0x45;
    h[1] = ip.tos;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&ip.id.to_be_bytes());
    h[6..8].copy_from_slice(&ip.frag.to_be_bytes());
    h[8] = 64;
    h[9] = ip.proto;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&ip.src.octets());
    h[16..20].copy_from_slice(&ip.dst.octets());
    let sum = !fold(sum_be16(h, 0));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Fills the UDP header of a whole (unfragmented) datagram. Checksum 0: "not computed", legal
/// for UDP over IPv4, as many SBCs send RTP.
pub fn finish_udp(buf: &mut [u8], sport: u16, dport: u16) {
    let len = (buf.len() - L4_OFF) as u16;
    let u = &mut buf[L4_OFF..UDP_PAYLOAD_OFF];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&len.to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
}

/// A whole IPv4/UDP frame around the payload already appended after [`begin`].
pub fn finish_ipv4_udp(buf: &mut [u8], ip: &Ipv4, sport: u16, dport: u16) {
    finish_udp(buf, sport, dport);
    finish_ipv4(buf, ip);
}

/// Fills the TCP header (no options) and its checksum over the pseudo-header; call after
/// [`finish_ipv4`] has written the addresses.
pub fn finish_tcp(buf: &mut [u8], sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) {
    let len = buf.len() - L4_OFF;
    let t = &mut buf[L4_OFF..TCP_PAYLOAD_OFF];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    t[16..20].copy_from_slice(&[0, 0, 0, 0]);
    let mut sum = sum_be16(&buf[26..L4_OFF], 0);
    sum += u32::from(IPPROTO_TCP) + len as u32;
    sum = sum_be16(&buf[L4_OFF..], sum);
    let sum = !fold(sum);
    buf[L4_OFF + 16..L4_OFF + 18].copy_from_slice(&sum.to_be_bytes());
}

/// The RFC 1071 sum of `bytes` as big-endian 16-bit words (an odd last byte padded), unfolded.
fn sum_be16(bytes: &[u8], start: u32) -> u32 {
    bytes.chunks(2).fold(start, |s, c| {
        s + u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
    })
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of an IPv4 header (0 when the header's own checksum field is right).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    !fold(sum_be16(header, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(proto: u8) -> Ipv4 {
        Ipv4 {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            proto,
            tos: 0,
            id: 7,
            frag: 0x4000,
        }
    }

    #[test]
    fn udp_frames_have_right_lengths_and_checksum() {
        let mut buf = Vec::new();
        begin(&mut buf, [2; 6], [3; 6], 8);
        buf.extend_from_slice(b"hello");
        finish_ipv4_udp(&mut buf, &ip(IPPROTO_UDP), 5060, 5062);
        assert_eq!(buf.len(), 14 + 20 + 8 + 5);
        assert_eq!(ipv4_checksum(&buf[14..34]), 0);
        assert_eq!(u16::from_be_bytes([buf[16], buf[17]]), 33);
        assert_eq!(u16::from_be_bytes([buf[38], buf[39]]), 13);
        assert_eq!(&buf[42..], b"hello");
    }

    #[test]
    fn tcp_checksum_verifies() {
        let mut buf = Vec::new();
        begin(&mut buf, [2; 6], [3; 6], 20);
        buf.extend_from_slice(b"I");
        finish_ipv4(&mut buf, &ip(IPPROTO_TCP));
        finish_tcp(&mut buf, 40_000, 5060, 1000, 1, TCP_ACK | TCP_PSH);
        // Summing the segment with its pseudo-header, checksum included, gives 0xffff.
        let len = (buf.len() - L4_OFF) as u32;
        let sum = sum_be16(&buf[L4_OFF..], sum_be16(&buf[26..34], 6 + len));
        assert_eq!(fold(sum), 0xffff);
    }
}
