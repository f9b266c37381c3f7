//! Hostile traffic for the attack lab (issue #14, "Never miss a call"): what a mirror port
//! carries besides the calls a recorder must not miss. Each kind is a constant-rate
//! [`Schedule`] that `calltap-attack` sends into the lab with [`crate::tx::send_paced`]:
//!
//! - [`Kind::InviteFlood`]: INVITEs that nobody answers, each with a random Call-ID, tags,
//!   branch, source and SDP offer (a scanner or a toll-fraud dialer);
//! - [`Kind::RandomRtp`]: RTP (version 2, PCMU) to random ports with random SSRCs;
//! - [`Kind::Fragments`]: IPv4 fragments of UDP datagrams to the SIP port that never complete
//!   (the last fragment is never sent);
//! - [`Kind::TcpDribble`]: SIP over TCP to the SIP port in 1-byte segments, with bytes left
//!   out that are never sent, so everything after each gap waits out of order.
//!
//! Sources are drawn from 198.19.0.0/16, the half of the lab's 198.18.0.0/15 no namespace
//! has. Destinations are the ordinary calls' proxy ([`AttackSpec::target`], a lab address);
//! random RTP ports avoid the port ranges the ordinary calls use ([`RESERVED_PORTS`]), so
//! the attack hits the classifier and the workers, not the audio of a call a test checks.
//! Every frame is a pure function of (seed, index), so a run can be repeated exactly.

use std::{fmt::Write as _, net::Ipv4Addr};

use anyhow::{bail, Result};

use crate::{
    frames::{self, Ipv4, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_PSH},
    load::mix,
    tx::Schedule,
};

/// Port ranges random RTP never goes to: SIP (5060, 5080 and sipp's 5061..), and the media
/// ports of the lab's sipp pairs (16000.., 20000..) and of `calltap-loadgen` (30000..).
pub const RESERVED_PORTS: &[(u16, u16)] = &[
    (5000, 5999),
    (16_000, 16_999),
    (20_000, 20_999),
    (30_000, 39_999),
];

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    InviteFlood,
    RandomRtp,
    Fragments,
    TcpDribble,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::InviteFlood => "invite-flood",
            Kind::RandomRtp => "random-rtp",
            Kind::Fragments => "fragments",
            Kind::TcpDribble => "tcp-dribble",
        }
    }
}

/// Fragments each datagram of [`Kind::Fragments`] gets: offsets 0, 1000, 2000 .. bytes, all
/// with "more fragments" set, so none ever completes.
pub const FRAGMENTS_PER_DATAGRAM: u64 = 3;
/// IP payload bytes per fragment (a multiple of 8, as every fragment but the last must be).
pub const FRAGMENT_BYTES: usize = 1000;
/// In each TCP direction of [`Kind::TcpDribble`], one byte in this many is never sent.
pub const TCP_GAP_EVERY: u64 = 50;

/// One run of hostile traffic.
#[derive(Clone, Debug)]
pub struct AttackSpec {
    pub kind: Kind,
    /// Frames per second.
    pub rate: f64,
    pub seconds: f64,
    /// The proxy the ordinary calls go through (INVITEs, fragments and TCP go to its SIP port).
    pub target: Ipv4Addr,
    pub sip_port: u16,
    /// TCP directions dribbled in parallel (round robin), for [`Kind::TcpDribble`].
    pub flows: u32,
    pub seed: u64,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl AttackSpec {
    pub fn new(kind: Kind, rate: f64, seconds: f64) -> Self {
        Self {
            kind,
            rate,
            seconds,
            target: Ipv4Addr::new(198, 18, 0, 2),
            sip_port: 5060,
            flows: 1000,
            seed: 1,
            src_mac: [0x02, 0, 0, 0, 0x66, 0x0a],
            dst_mac: [0x02, 0, 0, 0, 0x66, 0x0b],
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!("rate must be a positive number of frames per second");
        }
        if !(self.seconds.is_finite() && self.seconds > 0.0 && self.seconds <= 600.0) {
            bail!("seconds must be in (0, 600]");
        }
        if self.flows == 0 {
            bail!("flows must be at least 1");
        }
        Ok(())
    }

    /// Frames the run sends.
    pub fn frames(&self) -> u64 {
        (self.rate * self.seconds).round() as u64
    }

    /// When frame `i` is due, ns from the start.
    pub fn due_ns(&self, i: u64) -> u64 {
        (i as f64 * 1e9 / self.rate) as u64
    }

    /// When the last frame is due.
    pub fn end_ns(&self) -> u64 {
        self.due_ns(self.frames().saturating_sub(1))
    }

    /// Fragmented datagrams the run starts (none completes).
    pub fn datagrams(&self) -> u64 {
        match self.kind {
            Kind::Fragments => self.frames().div_ceil(FRAGMENTS_PER_DATAGRAM),
            _ => 0,
        }
    }
}

/// The frames of an [`AttackSpec`], in order.
pub struct Attack {
    spec: AttackSpec,
    frames: u64,
    next: u64,
    body: String,
    text: String,
}

impl Attack {
    pub fn new(spec: AttackSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            frames: spec.frames(),
            spec,
            next: 0,
            body: String::with_capacity(512),
            text: String::with_capacity(1024),
        })
    }

    pub fn spec(&self) -> &AttackSpec {
        &self.spec
    }

    /// A random value for frame `i`, stream `k` (independent per k).
    fn rand(&self, i: u64, k: u64) -> u64 {
        mix(mix(self.spec.seed ^ k.wrapping_mul(0x9e37_79b9)) ^ i)
    }

    /// A source address in 198.19.0.0/16 (never .0 or .255 in the last byte).
    fn source(r: u64) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, (r >> 8) as u8, 1 + (r as u8) % 254)
    }

    fn write(&mut self, i: u64, buf: &mut Vec<u8>) {
        match self.spec.kind {
            Kind::InviteFlood => self.invite(i, buf),
            Kind::RandomRtp => self.rtp(i, buf),
            Kind::Fragments => self.fragment(i, buf),
            Kind::TcpDribble => self.tcp(i, buf),
        }
    }

    fn invite(&mut self, i: u64, buf: &mut Vec<u8>) {
        let s = &self.spec;
        let (r1, r2, r3) = (self.rand(i, 1), self.rand(i, 2), self.rand(i, 3));
        let src = Self::source(r1);
        let sport = 1024 + (r1 >> 24) as u16 % 60_000;
        let media = 1024 + ((r2 >> 48) as u16 % 30_000) * 2;
        let (target, port) = (s.target, s.sip_port);
        let user = r3 % 10_000_000_000;
        self.body.clear();
        let _ = write!(
            self.body,
            "v=0\r\no=- {r2} 1 IN IP4 {src}\r\ns=-\r\nc=IN IP4 {src}\r\nt=0 0\r\nm=audio {media} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        self.text.clear();
        let _ = write!(
            self.text,
            "INVITE sip:{user}@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {src}:{sport};branch=z9hG4bK{r1:x}\r\nMax-Forwards: 70\r\nFrom: <sip:{r2:x}@{src}>;tag={r3:x}\r\nTo: <sip:{user}@{target}>\r\nCall-ID: {:x}{:x}@{src}\r\nCSeq: 1 INVITE\r\nContact: <sip:{r2:x}@{src}:{sport}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}",
            self.rand(i, 4),
            self.rand(i, 5),
            self.body.len(),
            self.body,
        );
        frames::begin(buf, s.src_mac, s.dst_mac, 8);
        buf.extend_from_slice(self.text.as_bytes());
        let ip = Ipv4 {
            src,
            dst: target,
            proto: IPPROTO_UDP,
            tos: 0,
            id: r2 as u16,
            frag: 0,
        };
        frames::finish_ipv4_udp(buf, &ip, sport, port);
    }

    fn rtp(&mut self, i: u64, buf: &mut Vec<u8>) {
        let s = &self.spec;
        let (r1, r2) = (self.rand(i, 1), self.rand(i, 2));
        let src = Self::source(r1);
        // To a lab host (198.18.0.1 ..9), at a random port outside the calls' ranges.
        let dst = Ipv4Addr::new(198, 18, 0, 1 + (r2 % 9) as u8);
        let port = |r: u64| {
            let mut p = 1024 + (r % 64_512) as u16;
            while RESERVED_PORTS.iter().any(|(a, b)| (*a..=*b).contains(&p)) {
                p = p.wrapping_add(10_007).max(1024);
            }
            p
        };
        let (sport, dport) = (port(r1 >> 20), port(r2 >> 20));
        frames::begin(buf, s.src_mac, s.dst_mac, 8);
        buf.extend_from_slice(&[0x80, 0]);
        buf.extend_from_slice(&(r2 as u16).to_be_bytes());
        buf.extend_from_slice(&((r2 >> 16) as u32).to_be_bytes());
        // A random SSRC.
        buf.extend_from_slice(&((r1 >> 8) as u32).to_be_bytes());
        let fill = mix(r1 ^ r2).to_le_bytes();
        for _ in 0..20 {
            buf.extend_from_slice(&fill);
        }
        let ip = Ipv4 {
            src,
            dst,
            proto: IPPROTO_UDP,
            tos: 0xb8,
            id: r1 as u16,
            frag: 0,
        };
        frames::finish_ipv4_udp(buf, &ip, sport, dport);
    }

    fn fragment(&mut self, i: u64, buf: &mut Vec<u8>) {
        let s = &self.spec;
        let datagram = i / FRAGMENTS_PER_DATAGRAM;
        let part = i % FRAGMENTS_PER_DATAGRAM;
        let r = self.rand(datagram, 1);
        let src = Self::source(r);
        frames::begin(buf, s.src_mac, s.dst_mac, 0);
        if part == 0 {
            // The first fragment: a UDP header to the SIP port claiming a datagram longer than
            // what is ever sent, and the start of an INVITE.
            let sport = 1024 + (r >> 24) as u16 % 60_000;
            let claimed = (8 + FRAGMENT_BYTES * (FRAGMENTS_PER_DATAGRAM as usize + 1)) as u16;
            buf.extend_from_slice(&sport.to_be_bytes());
            buf.extend_from_slice(&s.sip_port.to_be_bytes());
            buf.extend_from_slice(&claimed.to_be_bytes());
            buf.extend_from_slice(&[0, 0]);
            self.text.clear();
            let _ = write!(
                self.text,
                "INVITE sip:frag@{} SIP/2.0\r\nVia: SIP/2.0/UDP {src}:{sport};branch=z9hG4bK{r:x}\r\nCall-ID: frag{r:x}@{src}\r\nCSeq: 1 INVITE\r\nX-Padding: ",
                s.target
            );
            buf.extend_from_slice(self.text.as_bytes());
        }
        buf.resize(frames::L4_OFF + FRAGMENT_BYTES, b'x');
        let offset_units = (part as usize * FRAGMENT_BYTES / 8) as u16;
        let ip = Ipv4 {
            src,
            dst: s.target,
            proto: IPPROTO_UDP,
            tos: 0,
            id: (r >> 32) as u16,
            // More fragments, always.
            frag: 0x2000 | offset_units,
        };
        frames::finish_ipv4(buf, &ip);
    }

    fn tcp(&mut self, i: u64, buf: &mut Vec<u8>) {
        let s = &self.spec;
        let flows = u64::from(s.flows);
        let flow = i % flows;
        let round = i / flows;
        // The round-th byte this flow sends is stream byte `pos`: the last of every
        // TCP_GAP_EVERY bytes is skipped (never sent).
        let pos = round + round / (TCP_GAP_EVERY - 1);
        let r = self.rand(flow, 1);
        let src = Self::source(r);
        let sport = 1024 + (r >> 24) as u16 % 60_000;
        let isn = (r >> 32) as u32;
        const MESSAGE: &[u8] = b"INVITE sip:dribble@198.18.0.2 SIP/2.0\r\nVia: SIP/2.0/TCP 198.19.0.1:5060;branch=z9hG4bKdribble\r\nMax-Forwards: 70\r\nFrom: <sip:a@198.19.0.1>;tag=1\r\nTo: <sip:dribble@198.18.0.2>\r\nCall-ID: dribble@198.19.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let byte = MESSAGE[(pos % MESSAGE.len() as u64) as usize];
        frames::begin(buf, s.src_mac, s.dst_mac, 20);
        buf.push(byte);
        let ip = Ipv4 {
            src,
            dst: s.target,
            proto: IPPROTO_TCP,
            tos: 0,
            id: i as u16,
            frag: 0x4000,
        };
        frames::finish_ipv4(buf, &ip);
        frames::finish_tcp(
            buf,
            sport,
            s.sip_port,
            isn.wrapping_add(pos as u32),
            1,
            TCP_ACK | TCP_PSH,
        );
    }
}

impl Schedule for Attack {
    type Frame = ();

    fn peek_ns(&self) -> Option<u64> {
        (self.next < self.frames).then(|| self.spec.due_ns(self.next))
    }

    fn next_into(&mut self, buf: &mut Vec<u8>) -> Option<()> {
        if self.next >= self.frames {
            return None;
        }
        let i = self.next;
        self.next += 1;
        self.write(i, buf);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    fn all(spec: AttackSpec) -> Vec<Vec<u8>> {
        let mut a = Attack::new(spec).expect("valid");
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while a.next_into(&mut buf).is_some() {
            out.push(buf.clone());
        }
        out
    }

    fn udp_payload(f: &[u8]) -> &[u8] {
        &f[frames::UDP_PAYLOAD_OFF..]
    }

    #[test]
    fn invites_are_well_formed_and_never_repeat_a_call_id() {
        let frames = all(AttackSpec::new(Kind::InviteFlood, 1000.0, 1.0));
        assert_eq!(frames.len(), 1000);
        let mut ids = HashSet::new();
        for f in &frames {
            assert!(f.len() <= crate::tx::MAX_FRAME);
            assert_eq!(frames::ipv4_checksum(&f[14..34]), 0);
            assert_eq!(&f[36..38], &5060u16.to_be_bytes());
            let text = std::str::from_utf8(udp_payload(f)).expect("text");
            let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
            assert!(head.starts_with("INVITE sip:"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .expect("Content-Length");
            assert_eq!(len, body.len());
            let id = head
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .expect("Call-ID");
            assert!(ids.insert(id.to_string()), "{id} twice");
        }
    }

    #[test]
    fn random_rtp_avoids_the_reserved_ports() {
        let frames = all(AttackSpec::new(Kind::RandomRtp, 20_000.0, 1.0));
        let mut ssrcs = HashSet::new();
        for f in &frames {
            let dport = u16::from_be_bytes([f[36], f[37]]);
            let sport = u16::from_be_bytes([f[34], f[35]]);
            for p in [sport, dport] {
                assert!(p >= 1024);
                assert!(
                    !RESERVED_PORTS.iter().any(|(a, b)| (*a..=*b).contains(&p)),
                    "{p}"
                );
            }
            let rtp = udp_payload(f);
            assert_eq!((rtp.len(), rtp[0]), (172, 0x80));
            ssrcs.insert(u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]));
        }
        assert!(ssrcs.len() > 19_900, "{} SSRCs", ssrcs.len());
    }

    #[test]
    fn fragments_never_complete_a_datagram() {
        let frames = all(AttackSpec::new(Kind::Fragments, 300.0, 1.0));
        let mut per: BTreeMap<(Vec<u8>, u16), Vec<u16>> = BTreeMap::new();
        for f in &frames {
            let frag = u16::from_be_bytes([f[20], f[21]]);
            assert_ne!(frag & 0x2000, 0, "every fragment says more follow");
            assert_eq!(f.len(), frames::L4_OFF + FRAGMENT_BYTES);
            let id = u16::from_be_bytes([f[18], f[19]]);
            per.entry((f[26..30].to_vec(), id))
                .or_default()
                .push(frag & 0x1fff);
        }
        assert_eq!(per.len(), 100);
        assert!(per.values().all(|o| o == &[0, 125, 250]));
    }

    #[test]
    fn tcp_flows_carry_one_byte_each_with_gaps() {
        let mut spec = AttackSpec::new(Kind::TcpDribble, 1000.0, 1.0);
        spec.flows = 4;
        let frames = all(spec);
        let mut seqs: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for f in &frames {
            assert_eq!(f.len(), frames::TCP_PAYLOAD_OFF + 1);
            let sport = u16::from_be_bytes([f[34], f[35]]);
            let seq = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
            seqs.entry(sport).or_default().push(seq);
        }
        assert_eq!(seqs.len(), 4);
        for s in seqs.values() {
            let steps: Vec<u32> = s.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
            assert_eq!(s.len(), 250);
            // In order, one byte at a time, with a byte left out now and then.
            assert!(steps.iter().all(|d| *d == 1 || *d == 2), "{steps:?}");
            let gaps = steps.iter().filter(|d| **d == 2).count();
            assert_eq!(gaps, 249 / (TCP_GAP_EVERY as usize - 1));
        }
    }
}
