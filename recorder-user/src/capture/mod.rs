//! Capture sources. Each produces records of the same shape (a [`PacketMeta`] header followed by
//! the frame) so the rest of the pipeline cannot tell XDP, AF_PACKET and pcap replay apart.

pub mod af_packet;
pub mod config;
pub mod mirror_port;
pub mod pcap;
pub mod xdp;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use calltap_common::PacketMeta;
use crossbeam_channel::Receiver;
use serde::Serialize;

/// Capture running on an interface, as the run summary and the metrics report it.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub interface: String,
    /// "driver" (native XDP), "skb" (generic XDP) or "af_packet".
    pub mode: &'static str,
    /// What happens to a frame after capture, and why.
    #[serde(flatten)]
    pub after: mirror_port::DropDecision,
}

/// How full one consumer's input is, read at scrape time from the metrics thread.
pub enum InputFill {
    /// A BPF ring: bytes pending out of its size.
    Ring(xdp::RingPositions),
    /// An AF_PACKET queue: records pending out of its capacity.
    Queue(Receiver<Vec<u8>>),
}

impl InputFill {
    /// Fraction of the input in use, 0.0 to 1.0.
    pub fn ratio(&self) -> f64 {
        let (used, size) = match self {
            InputFill::Ring(r) => r.used(),
            InputFill::Queue(q) => (q.len() as u64, q.capacity().unwrap_or(0) as u64),
        };
        if size == 0 {
            0.0
        } else {
            used as f64 / size as f64
        }
    }
}

/// One captured frame with the classifier's verdict.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub meta: PacketMeta,
    /// The captured bytes (`meta.cap_len` of them), starting at the Ethernet header.
    pub frame: &'a [u8],
}

impl<'a> Record<'a> {
    /// Splits a ring record (header + frame). `None` for a record shorter than its header says.
    #[inline]
    pub fn from_ring(bytes: &'a [u8]) -> Option<Record<'a>> {
        let meta = PacketMeta::read(bytes)?;
        let frame = bytes.get(PacketMeta::SIZE..PacketMeta::SIZE + meta.cap_len as usize)?;
        Some(Record { meta, frame })
    }

    /// The UDP/TCP payload (empty when the offsets say there is none), without any Ethernet
    /// padding after the IP packet.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let off = self.meta.payload_off as usize;
        if off == 0 {
            return &[];
        }
        self.frame.get(off..self.ip_end()).unwrap_or(&[])
    }

    /// The transport header and payload (from `l4_off` to the end of the IP packet).
    #[inline]
    pub fn transport(&self) -> &'a [u8] {
        let off = self.meta.l4_off as usize;
        if off == 0 {
            return &[];
        }
        self.frame.get(off..self.ip_end()).unwrap_or(&[])
    }

    /// Source and destination of the innermost IP/UDP (or TCP) headers, read where the
    /// classifier found them; `None` for a record too short to hold them.
    pub fn endpoints(&self) -> Option<(SocketAddr, SocketAddr)> {
        let m = &self.meta;
        let l3 = m.l3_off as usize;
        let (src, dst): (IpAddr, IpAddr) = if m.flags & calltap_common::flags::IPV6 != 0 {
            let h = self.frame.get(l3..l3 + 40)?;
            let s: [u8; 16] = h[8..24].try_into().ok()?;
            let d: [u8; 16] = h[24..40].try_into().ok()?;
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into())
        } else {
            let h = self.frame.get(l3..l3 + 20)?;
            let s: [u8; 4] = h[12..16].try_into().ok()?;
            let d: [u8; 4] = h[16..20].try_into().ok()?;
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into())
        };
        let l4 = m.l4_off as usize;
        let p = self.frame.get(l4..l4 + 4)?;
        Some((
            SocketAddr::new(src, u16::from_be_bytes([p[0], p[1]])),
            SocketAddr::new(dst, u16::from_be_bytes([p[2], p[3]])),
        ))
    }

    /// Where the innermost IP packet ends: its length field says so, not the frame, because
    /// frames shorter than 60 bytes carry Ethernet padding that is not data (a TCP ACK's padding
    /// taken as stream bytes would corrupt the SIP stream behind it).
    fn ip_end(&self) -> usize {
        let l3 = self.meta.l3_off as usize;
        let v6 = self.meta.flags & calltap_common::flags::IPV6 != 0;
        let declared = if v6 {
            self.frame
                .get(l3 + 4..l3 + 6)
                .map(|b| l3 + 40 + usize::from(u16::from_be_bytes([b[0], b[1]])))
        } else {
            self.frame
                .get(l3 + 2..l3 + 4)
                .map(|b| l3 + usize::from(u16::from_be_bytes([b[0], b[1]])))
        };
        declared.map_or(self.frame.len(), |end| end.min(self.frame.len()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this calltap was built without the XDP program (CALLTAP_SKIP_EBPF); use --source af_packet")]
    NoXdpObject,
    #[error("loading the XDP program: {0}")]
    Load(String),
    #[error("the kernel's verifier rejected the XDP program: {0}")]
    Verifier(String),
    #[error("attaching XDP to {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: at byte offset {offset}: {reason}")]
    BadFile {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("AF_PACKET on {interface}: {reason}")]
    AfPacket { interface: String, reason: String },
}
