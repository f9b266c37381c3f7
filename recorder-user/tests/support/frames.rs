//! Hand-built frames: every header written out, so tests can also cut and corrupt them.

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet with VLAN tags (outermost first): (tpid, vid).
pub fn eth_vlan(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header (+ options, padded to 4 bytes) and payload; `frag` is the flags/offset field.
pub fn ipv4_full(
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    options: &[u8],
    frag: u16,
    id: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 5 + opts.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut h = vec![
        0x40 | ihl as u8,
        0,
        (total >> 8) as u8,
        total as u8,
        (id >> 8) as u8,
        id as u8,
        (frag >> 8) as u8,
        frag as u8,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&opts);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    ipv4_full(proto, src, dst, &[], 0, 1, payload)
}

pub fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u16;
    let mut h = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, next, 64];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut h = Vec::with_capacity(len as usize);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn tcp(sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An RTP packet: version 2, payload type `pt`.
pub fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x80, pt & 0x7f];
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&ts.to_be_bytes());
    h.extend_from_slice(&ssrc.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A minimal RTCP receiver report (PT 201) without report blocks.
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut h = vec![0x80, 201, 0, 1];
    h.extend_from_slice(&ssrc.to_be_bytes());
    h
}

/// GRE header with a sequence number (ERSPAN type II) around `inner`.
pub fn gre(proto: u16, seq: Option<u32>, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![if seq.is_some() { 0x10 } else { 0 }, 0];
    h.extend_from_slice(&proto.to_be_bytes());
    if let Some(s) = seq {
        h.extend_from_slice(&s.to_be_bytes());
    }
    h.extend_from_slice(inner);
    h
}

/// ERSPAN type II header (8 bytes) + the mirrored frame.
pub fn erspan2(inner_frame: &[u8]) -> Vec<u8> {
    let mut h = vec![0x10, 0x01, 0x00, 0x64, 0, 0, 0, 0];
    h.extend_from_slice(inner_frame);
    gre(0x88BE, Some(7), &h)
}

/// ERSPAN type III header (12 bytes, no optional subheader) + the mirrored frame.
pub fn erspan3(inner_frame: &[u8]) -> Vec<u8> {
    let mut h = vec![0x20, 0x01, 0x00, 0x64, 0, 0, 0, 1, 0, 0, 0, 0];
    h.extend_from_slice(inner_frame);
    gre(0x22EB, Some(9), &h)
}

/// VXLAN header (I flag set, VNI 42) + the inner frame, as a UDP payload.
pub fn vxlan(inner_frame: &[u8]) -> Vec<u8> {
    let mut h = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    h.extend_from_slice(inner_frame);
    h
}

pub fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub const INVITE: &[u8] = b"INVITE sip:bob@198.18.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.1:5060;branch=z9hG4bK1\r\nCall-ID: t1@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

pub const A: [u8; 4] = [198, 18, 0, 1];
pub const B: [u8; 4] = [198, 18, 0, 2];

pub fn v6(last: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
    ]
}

/// A PPPoE session frame carrying `ip` (PPP protocol 0x0021 IPv4 / 0x0057 IPv6).
pub fn pppoe(ppp_proto: u16, ip: &[u8]) -> Vec<u8> {
    let mut p = vec![0x11, 0x00, 0x12, 0x34];
    p.extend_from_slice(&((ip.len() + 2) as u16).to_be_bytes());
    p.extend_from_slice(&ppp_proto.to_be_bytes());
    p.extend_from_slice(ip);
    eth(0x8864, &p)
}
