//! The frame classifier: Ethernet/VLAN -> (ERSPAN/GRE, VXLAN, IP-in-IP) -> IPv4/IPv6 -> UDP/TCP
//! -> SIP, RTP/RTCP, fragment or nothing, and which ring gets it.
//!
//! Written once, generic over how bytes are read ([`Frame`]) and where the lookup tables live
//! ([`Tables`]), so the XDP program and the userspace sources (pcap replay, AF_PACKET) share it.
//! Everything is `#[inline(always)]`, loops are bounded by constants and every read is bounds
//! checked through [`Frame::load`], which is what the BPF verifier needs to accept it.

use crate::{flags, Class, MediaKey, MediaValue, XdpConfig, MAX_WORKERS, SIGNALLING_RING};

/// Offsets beyond this are never read: it bounds every pointer the verifier has to track, and
/// no sane stack of headers (2 VLANs + GRE + ERSPAN + IPv6 with options) gets near it.
pub const MAX_HEADER_OFFSET: usize = 512;

/// `Verdict::target` when no ring gets the frame.
pub const TARGET_NONE: u32 = u32::MAX;

/// Bounds-checked access to a frame's bytes.
pub trait Frame {
    /// Reads `N` bytes at `off`, or `None` if they are not all inside the frame or `off` is past
    /// [`MAX_HEADER_OFFSET`].
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]>;

    /// Called on offsets where parse paths join (after VLAN tags, after IP options, ...).
    /// Userspace returns `off` unchanged. The XDP program makes it opaque but bounded, so every
    /// path reaches the join in the same verifier state and is pruned; without this the
    /// verifier walks VLANs x IP versions x encapsulations x transports and gives up at its
    /// one-million-instruction limit.
    #[inline(always)]
    fn widen(&self, off: usize) -> usize {
        off
    }
}

/// Userspace frames are plain byte slices.
impl Frame for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_HEADER_OFFSET {
            return None;
        }
        let end = off.checked_add(N)?;
        let bytes = self.get(off..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

/// The lookup tables the classifier consults: BPF maps in the kernel, plain tables in userspace.
pub trait Tables {
    /// The worker that owns the call this RTP/RTCP endpoint belongs to.
    fn media(&self, key: &MediaKey) -> Option<MediaValue>;
    /// Whether some endpoint in the media table may have UDP port `port`: a one-bit test that
    /// spares the hash lookups for the traffic of a mirror port that is not media of a call
    /// (most of it). `true` is always correct, only slower.
    #[inline(always)]
    fn maybe_media_port(&self, _port: u16) -> bool {
        true
    }
    /// Whether `port` is a configured SIP port.
    fn is_sip_port(&self, port: u16) -> bool;
    fn config(&self) -> XdpConfig;
}

/// The classifier's decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// [`Class`] as u8.
    pub class: u8,
    /// Ring index ([`SIGNALLING_RING`], a media worker) or [`TARGET_NONE`].
    pub target: u32,
    pub flags: u8,
    pub l3_off: u16,
    pub l4_off: u16,
    pub payload_off: u16,
}

impl Verdict {
    #[inline(always)]
    const fn new(class: Class) -> Verdict {
        Verdict {
            class: class as u8,
            target: TARGET_NONE,
            flags: 0,
            l3_off: 0,
            l4_off: 0,
            payload_off: 0,
        }
    }

    pub const fn class(&self) -> Class {
        Class::from_u8(self.class)
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ_OLD: u16 = 0x9100;
const ETH_P_TEB: u16 = 0x6558;
const ETH_P_ERSPAN2: u16 = 0x88BE;
const ETH_P_ERSPAN3: u16 = 0x22EB;
const ETH_P_PPP_SES: u16 = 0x8864;
const PPP_IP: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_GRE: u8 = 47;

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Ethernet plus up to two VLAN tags: returns (ethertype, offset of the next header).
#[inline(always)]
fn l2<F: Frame + ?Sized>(f: &F, off: usize) -> Option<(u16, usize)> {
    let eth: [u8; 14] = f.load(off)?;
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut off = off + 14;
    // Two tags: 802.1ad outer + 802.1Q inner is the deepest stack mirror ports carry.
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_OLD {
            let tag: [u8; 4] = f.load(off)?;
            ethertype = be16([tag[2], tag[3]]);
            off += 4;
        }
    }
    // PPPoE session frames (DSL access links, and mirrors taken on them): PPP carries the IP.
    if ethertype == ETH_P_PPP_SES {
        let h: [u8; 8] = f.load(off)?;
        ethertype = match be16([h[6], h[7]]) {
            PPP_IP => ETH_P_IPV4,
            PPP_IPV6 => ETH_P_IPV6,
            _ => 0,
        };
        off += 8;
    }
    Some((ethertype, f.widen(off)))
}

/// Result of parsing one IP header (and IPv6 extension headers).
#[derive(Clone, Copy)]
struct Ip {
    l3_off: usize,
    /// Transport protocol (for IPv6: the last next-header).
    proto: u8,
    /// Offset of the transport header (or of the fragment's data).
    l4_off: usize,
    v6: bool,
    fragment: bool,
    /// A fragment other than the first: no transport header in it.
    later_fragment: bool,
}

enum L3 {
    Ip(Ip),
    NotIp,
    Malformed,
}

impl Ip {
    /// The media map key of this packet's source or destination endpoint. Addresses are read
    /// from the frame here rather than carried around: the BPF stack is only 512 bytes.
    #[inline(always)]
    fn endpoint<F: Frame + ?Sized>(&self, f: &F, dst: bool, port: u16) -> Option<MediaKey> {
        if self.v6 {
            let a: [u8; 16] = f.load(self.l3_off + if dst { 24 } else { 8 })?;
            Some(MediaKey::v6(a, port))
        } else {
            let a: [u8; 4] = f.load(self.l3_off + if dst { 16 } else { 12 })?;
            Some(MediaKey::v4(a, port))
        }
    }
}

#[inline(always)]
fn ipv4<F: Frame + ?Sized>(f: &F, off: usize) -> L3 {
    let Some(h) = f.load::<20>(off) else {
        return L3::Malformed;
    };
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return L3::Malformed;
    }
    // The options must be present too.
    if f.load::<1>(off + ihl - 1).is_none() {
        return L3::Malformed;
    }
    let frag = be16([h[6], h[7]]);
    let more = frag & 0x2000 != 0;
    let frag_off = frag & 0x1fff;
    L3::Ip(Ip {
        l3_off: off,
        proto: h[9],
        l4_off: f.widen(off + ihl),
        v6: false,
        fragment: more || frag_off != 0,
        later_fragment: frag_off != 0,
    })
}

/// Where an IPv6 extension header of `len` bytes at `cur` ends, if that is within the headers
/// the classifier reads. Checked before [`Frame::widen`]: the XDP program's offset mask would
/// otherwise wrap a long header (up to 2,048 bytes) back onto the frame's start, and it would
/// read as a transport header what userspace, reading past the end, calls malformed.
#[inline(always)]
fn ext_end(cur: usize, len: usize) -> Option<usize> {
    let end = cur + len;
    if end > MAX_HEADER_OFFSET {
        return None;
    }
    Some(end)
}

#[inline(always)]
fn ipv6<F: Frame + ?Sized>(f: &F, off: usize) -> L3 {
    let Some(h) = f.load::<8>(off) else {
        return L3::Malformed;
    };
    // The addresses must be there too; they are read when needed.
    if h[0] >> 4 != 6 || f.load::<1>(off + 39).is_none() {
        return L3::Malformed;
    }
    let mut next = h[6];
    let mut cur = off + 40;
    let mut fragment = false;
    let mut later_fragment = false;
    // Extension headers: hop-by-hop, routing, destination options, AH, fragment. Four is more
    // than any SIP/RTP sender uses; more are treated as malformed rather than walked forever.
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                let Some(e) = f.load::<2>(cur) else {
                    return L3::Malformed;
                };
                next = e[0];
                let Some(end) = ext_end(cur, (e[1] as usize + 1) * 8) else {
                    return L3::Malformed;
                };
                cur = f.widen(end);
            }
            51 => {
                let Some(e) = f.load::<2>(cur) else {
                    return L3::Malformed;
                };
                next = e[0];
                let Some(end) = ext_end(cur, (e[1] as usize + 2) * 4) else {
                    return L3::Malformed;
                };
                cur = f.widen(end);
            }
            44 => {
                let Some(e) = f.load::<8>(cur) else {
                    return L3::Malformed;
                };
                next = e[0];
                let fo = be16([e[2], e[3]]);
                fragment = true;
                later_fragment = fo >> 3 != 0;
                cur += 8;
                break;
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 60 | 51) {
        return L3::Malformed;
    }
    L3::Ip(Ip {
        l3_off: off,
        proto: next,
        l4_off: cur,
        v6: true,
        fragment,
        later_fragment,
    })
}

#[inline(always)]
fn l3<F: Frame + ?Sized>(f: &F, ethertype: u16, off: usize) -> L3 {
    match ethertype {
        ETH_P_IPV4 => ipv4(f, off),
        ETH_P_IPV6 => ipv6(f, off),
        _ => L3::NotIp,
    }
}

/// Where an encapsulated frame starts.
enum Inner {
    /// An Ethernet frame at this offset.
    Ethernet(usize),
    /// An IP packet (ethertype, offset).
    Ip(u16, usize),
    None,
    Malformed,
}

/// Remote-SPAN and tunnel encapsulations: ERSPAN I/II/III and plain GRE, VXLAN, IP-in-IP.
#[inline(always)]
fn encapsulated<F: Frame + ?Sized>(f: &F, ip: &Ip, vxlan_port: u16) -> Inner {
    if ip.later_fragment {
        return Inner::None;
    }
    match ip.proto {
        IPPROTO_GRE => {
            let Some(g) = f.load::<4>(ip.l4_off) else {
                return Inner::Malformed;
            };
            if g[1] & 0x07 != 0 {
                // GRE version 1 is PPTP, not a mirror.
                return Inner::None;
            }
            let seq = g[0] & 0x10 != 0;
            let len = 4
                + if g[0] & 0x80 != 0 { 4 } else { 0 }
                + if g[0] & 0x20 != 0 { 4 } else { 0 }
                + if seq { 4 } else { 0 };
            let inner = ip.l4_off + len;
            match be16([g[2], g[3]]) {
                // ERSPAN type I has no ERSPAN header and no sequence number; type II has both.
                ETH_P_ERSPAN2 => Inner::Ethernet(inner + if seq { 8 } else { 0 }),
                ETH_P_ERSPAN3 => {
                    let Some(e) = f.load::<12>(inner) else {
                        return Inner::Malformed;
                    };
                    // O flag: an 8-byte platform-specific subheader follows.
                    Inner::Ethernet(inner + 12 + if e[11] & 0x01 != 0 { 8 } else { 0 })
                }
                ETH_P_TEB => Inner::Ethernet(inner),
                ETH_P_IPV4 => Inner::Ip(ETH_P_IPV4, inner),
                ETH_P_IPV6 => Inner::Ip(ETH_P_IPV6, inner),
                _ => Inner::None,
            }
        }
        IPPROTO_IPIP => Inner::Ip(ETH_P_IPV4, ip.l4_off),
        IPPROTO_IPV6 => Inner::Ip(ETH_P_IPV6, ip.l4_off),
        IPPROTO_UDP if vxlan_port != 0 && !ip.fragment => {
            let Some(u) = f.load::<8>(ip.l4_off) else {
                return Inner::Malformed;
            };
            if be16([u[2], u[3]]) != vxlan_port {
                return Inner::None;
            }
            let Some(vx) = f.load::<8>(ip.l4_off + 8) else {
                return Inner::Malformed;
            };
            // The I flag says the VNI is valid; without it this is not VXLAN.
            if vx[0] & 0x08 == 0 {
                return Inner::None;
            }
            Inner::Ethernet(ip.l4_off + 16)
        }
        _ => Inner::None,
    }
}

/// First payload bytes that start a SIP message (request methods and the response line).
const SIP_STARTS: [[u8; 4]; 15] = [
    *b"SIP/", *b"INVI", *b"ACK ", *b"BYE ", *b"CANC", *b"OPTI", *b"REGI", *b"INFO", *b"UPDA",
    *b"PRAC", *b"SUBS", *b"NOTI", *b"REFE", *b"MESS", *b"PUBL",
];

#[inline(always)]
fn looks_like_sip<F: Frame + ?Sized>(f: &F, payload_off: usize) -> bool {
    let Some(p) = f.load::<4>(payload_off) else {
        return false;
    };
    // Every start above begins with a capital from A to U; RTP's first byte is 0x80-0xbf, so
    // the media flood that reaches this test leaves here.
    if !(b'A'..=b'U').contains(&p[0]) {
        return false;
    }
    let word = u32::from_ne_bytes(p);
    let mut i = 0;
    while i < SIP_STARTS.len() {
        if word == u32::from_ne_bytes(SIP_STARTS[i]) {
            return true;
        }
        i += 1;
    }
    false
}

/// RTP version 2 with a payload type outside the RTCP range (RFC 5761 section 4).
#[inline(always)]
fn rtp_header<F: Frame + ?Sized>(f: &F, payload_off: usize) -> Option<bool> {
    let h = f.load::<2>(payload_off)?;
    if h[0] >> 6 != 2 {
        return None;
    }
    if (192..=223).contains(&h[1]) {
        // RTCP: a receiver report without blocks is only 8 bytes.
        return f.load::<8>(payload_off).map(|_| true);
    }
    f.load::<12>(payload_off).map(|_| false)
}

/// Classifies one frame.
#[inline(always)]
pub fn classify<F: Frame + ?Sized, T: Tables + ?Sized>(f: &F, t: &T) -> Verdict {
    let cfg = t.config();
    let Some((ethertype, off)) = l2(f, 0) else {
        return Verdict::new(Class::Malformed);
    };
    let mut vflags = 0u8;
    let mut ip = match l3(f, ethertype, off) {
        L3::Ip(ip) => ip,
        L3::NotIp => return Verdict::new(Class::NotIp),
        L3::Malformed => return Verdict::new(Class::Malformed),
    };
    // One level of decapsulation: a mirror wraps the original frame once.
    let inner = match encapsulated(f, &ip, cfg.vxlan_port) {
        Inner::None => None,
        Inner::Malformed => return Verdict::new(Class::Malformed),
        Inner::Ethernet(off) => match l2(f, f.widen(off)) {
            Some((et, off)) => Some(l3(f, et, off)),
            None => return Verdict::new(Class::Malformed),
        },
        Inner::Ip(et, off) => Some(l3(f, et, f.widen(off))),
    };
    if let Some(inner) = inner {
        vflags |= flags::ENCAP;
        ip = match inner {
            L3::Ip(ip) => ip,
            L3::NotIp => {
                let mut v = Verdict::new(Class::NotIp);
                v.flags = vflags;
                return v;
            }
            L3::Malformed => {
                let mut v = Verdict::new(Class::Malformed);
                v.flags = vflags;
                return v;
            }
        };
    }
    if ip.v6 {
        vflags |= flags::IPV6;
    }
    let mut v = Verdict::new(Class::Unmatched);
    v.l3_off = ip.l3_off as u16;
    match ip.proto {
        IPPROTO_UDP => vflags |= flags::UDP,
        IPPROTO_TCP => vflags |= flags::TCP,
        _ => {
            v.flags = vflags;
            return v;
        }
    }
    if ip.fragment {
        // Big SIP messages (INVITEs with long SDP) get fragmented; later fragments have no
        // ports, so all UDP/TCP fragments go to the signalling worker, which reassembles.
        v.flags = vflags | flags::FRAGMENT;
        v.class = Class::Fragment as u8;
        v.target = SIGNALLING_RING;
        if !ip.later_fragment {
            v.l4_off = ip.l4_off as u16;
        }
        return v;
    }
    let (sport, dport, payload_off) = if ip.proto == IPPROTO_UDP {
        let Some(u) = f.load::<8>(ip.l4_off) else {
            let mut m = Verdict::new(Class::Malformed);
            m.flags = vflags;
            return m;
        };
        (be16([u[0], u[1]]), be16([u[2], u[3]]), ip.l4_off + 8)
    } else {
        let Some(tcp) = f.load::<20>(ip.l4_off) else {
            let mut m = Verdict::new(Class::Malformed);
            m.flags = vflags;
            return m;
        };
        let doff = ((tcp[12] >> 4) as usize) * 4;
        // The options must be present too, or the payload would start past the frame's end.
        if doff < 20 || f.load::<1>(ip.l4_off + doff - 1).is_none() {
            let mut m = Verdict::new(Class::Malformed);
            m.flags = vflags;
            return m;
        }
        (
            be16([tcp[0], tcp[1]]),
            be16([tcp[2], tcp[3]]),
            ip.l4_off + doff,
        )
    };
    let payload_off = f.widen(payload_off);
    v.l4_off = ip.l4_off as u16;
    v.payload_off = payload_off as u16;

    // SIP before the media map: an SDP is written by whoever places a call, and an endpoint it
    // names must never turn a signalling port into media (one call's 200 OK saying
    // `c=<proxy> m=audio 5060` would hide every other call through that proxy). The port
    // bitmap is one load per port; the sniff rejects RTP on its first byte.
    if t.is_sip_port(sport)
        || t.is_sip_port(dport)
        || cfg.sniff_sip != 0 && looks_like_sip(f, payload_off)
    {
        v.class = Class::Sip as u8;
        v.target = SIGNALLING_RING;
        v.flags = vflags;
        return v;
    }
    if ip.proto == IPPROTO_UDP {
        let mut owner = match ip.endpoint(f, true, dport) {
            Some(k) if t.maybe_media_port(dport) => t.media(&k),
            _ => None,
        };
        if owner.is_some() {
            vflags |= flags::MATCH_DST;
            if owner.is_some_and(|o| o.flags & crate::media_flags::SHARED != 0) {
                // Many calls behind one endpoint: the far end says which call this is.
                if let Some(by_src) = ip.endpoint(f, false, sport).and_then(|k| t.media(&k)) {
                    owner = Some(by_src);
                    vflags &= !flags::MATCH_DST;
                }
            }
        } else if t.maybe_media_port(sport) {
            if let Some(k) = ip.endpoint(f, false, sport) {
                owner = t.media(&k);
            }
        }
        if let Some(owner) = owner {
            let rtcp = matches!(rtp_header(f, payload_off), Some(true));
            v.class = if rtcp { Class::Rtcp } else { Class::Rtp } as u8;
            v.target = if owner.worker < MAX_WORKERS {
                owner.worker
            } else {
                0
            };
            v.flags = vflags;
            return v;
        }
    }
    if ip.proto == IPPROTO_UDP && sport >= 1024 && dport >= 1024 {
        match rtp_header(f, payload_off) {
            // RTP (even port) or RTCP that no SDP has claimed (yet).
            Some(false) if sport & 1 == 0 || dport & 1 == 0 => {
                v.class = Class::RtpHeuristic as u8;
                v.target = if cfg.heuristic_rtp != 0 && cfg.heuristic_worker < MAX_WORKERS {
                    cfg.heuristic_worker
                } else {
                    // A call's first packets can overtake its SDP: the callee starts sending
                    // the moment it answers, while the 200 OK is still on its way through the
                    // signalling worker. That worker sees SIP and this packet in capture order,
                    // so it knows the owner by then and hands the packet on.
                    SIGNALLING_RING
                };
            }
            Some(true) if cfg.heuristic_rtp == 0 => {
                v.class = Class::RtpHeuristic as u8;
                v.target = SIGNALLING_RING;
            }
            _ => {}
        }
    }
    v.flags = vflags;
    v
}

/// The counter a verdict increments (besides `SEEN`/`BYTES`).
#[inline(always)]
pub fn counter_for(class: u8) -> u32 {
    use crate::counter;
    match Class::from_u8(class) {
        Class::Sip => counter::SIP,
        Class::Rtp => counter::RTP,
        Class::Rtcp => counter::RTCP,
        Class::Fragment => counter::FRAGMENTS,
        Class::RtpHeuristic => counter::RTP_HEURISTIC,
        Class::NotIp => counter::NOT_IP,
        Class::Malformed => counter::PARSE_ERRORS,
        Class::Unmatched => counter::UNMATCHED,
    }
}
