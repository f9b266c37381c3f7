//! `#[repr(C)]` records and map types exchanged between kernel and userspace.

/// Media workers addressable by the kernel. Ring `i < MAX_WORKERS` belongs to media worker `i`.
pub const MAX_WORKERS: u32 = 8;
/// Ring index of the signalling (SIP) worker.
pub const SIGNALLING_RING: u32 = MAX_WORKERS;
/// Number of rings in the ring array (media workers + signalling).
pub const RING_COUNT: u32 = MAX_WORKERS + 1;
/// Bytes of each ring buffer (a power of two multiple of the page size). 32 MiB holds about
/// 110,000 G.711 RTP records, over a second of a worker's share at 3,000 calls: room for a
/// worker that stalls (a burst of call starts creating files, a slow disk) without a drop. 8 MiB
/// overflowed in the lab when 2,000 calls started within one second.
pub const RING_BYTES: u32 = 32 << 20;
/// Largest number of frame bytes copied into a record. Frames longer than this are truncated
/// (the record keeps the wire length). 4095 keeps the verifier's bound a simple mask.
pub const SNAP_MAX: u32 = 4095;
/// Entries in the media endpoint map.
pub const MEDIA_MAP_ENTRIES: u32 = 1 << 20;
/// u64 words in the SIP port bitmap (65536 bits).
pub const SIP_PORT_WORDS: u32 = 1024;
/// u64 words in the bitmap of the UDP ports media endpoints have (65536 bits).
pub const MEDIA_PORT_WORDS: u32 = 1024;
/// Interfaces the program can be told to drop frames on (see [`drop_mode::PER_INTERFACE`]).
pub const MAX_DROP_INTERFACES: u32 = 64;

/// What a frame is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Parsed, but nobody wants it.
    Unmatched = 0,
    Sip = 1,
    Rtp = 2,
    Rtcp = 3,
    /// An IP fragment of a UDP/TCP datagram; the signalling worker reassembles it.
    Fragment = 4,
    /// RTP found only by the header heuristic (no SDP told us about it).
    RtpHeuristic = 5,
    /// Not IPv4/IPv6.
    NotIp = 6,
    /// A header was cut short or inconsistent.
    Malformed = 7,
}

impl Class {
    pub const fn from_u8(v: u8) -> Class {
        match v {
            1 => Class::Sip,
            2 => Class::Rtp,
            3 => Class::Rtcp,
            4 => Class::Fragment,
            5 => Class::RtpHeuristic,
            6 => Class::NotIp,
            7 => Class::Malformed,
            _ => Class::Unmatched,
        }
    }
}

/// Flags in [`PacketMeta::flags`] and [`Verdict::flags`].
pub mod flags {
    pub const IPV6: u8 = 1;
    pub const TCP: u8 = 2;
    pub const UDP: u8 = 4;
    /// The classified frame was inside ERSPAN/GRE, VXLAN or IP-in-IP.
    pub const ENCAP: u8 = 8;
    /// The IP datagram is a fragment.
    pub const FRAGMENT: u8 = 16;
    /// Media matched on the destination endpoint (else on the source).
    pub const MATCH_DST: u8 = 32;
    /// `cap_len < wire_len`.
    pub const TRUNCATED: u8 = 64;
}

/// Header of every record in a ring, followed by `cap_len` bytes of the frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// Capture time. XDP: `bpf_ktime_get_ns` (CLOCK_MONOTONIC); userspace adds the offset to the
    /// wall clock. Replay: nanoseconds since the Unix epoch, from the capture file.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub rx_queue: u32,
    pub wire_len: u32,
    pub cap_len: u32,
    /// Ring / worker the classifier sent the frame to.
    pub target: u32,
    /// CPU that received the frame.
    pub cpu: u16,
    /// Offset of the (innermost) IP header.
    pub l3_off: u16,
    /// Offset of the UDP/TCP header (0 when there is none, e.g. a non-first fragment).
    pub l4_off: u16,
    /// Offset of the UDP/TCP payload.
    pub payload_off: u16,
    /// [`Class`] as u8.
    pub class: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl PacketMeta {
    pub const SIZE: usize = core::mem::size_of::<PacketMeta>();

    /// Reads a header from the front of a ring record. `None` if the record is too short.
    #[inline]
    pub fn read(record: &[u8]) -> Option<PacketMeta> {
        if record.len() < Self::SIZE {
            return None;
        }
        // SAFETY: length checked; PacketMeta is plain old data, any bit pattern is valid, and
        // read_unaligned has no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(record.as_ptr().cast::<PacketMeta>()) })
    }

    /// The header as bytes, for building records in userspace sources.
    #[inline]
    pub fn as_bytes(&self) -> &[u8; Self::SIZE] {
        // SAFETY: repr(C) POD without padding holes (explicit _pad), size is SIZE.
        unsafe { &*(self as *const PacketMeta).cast::<[u8; Self::SIZE]>() }
    }
}

const _: () = assert!(PacketMeta::SIZE == 40);

/// Key of the media map: one RTP/RTCP endpoint. IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`) so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MediaKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

impl MediaKey {
    pub const fn v4(addr: [u8; 4], port: u16) -> MediaKey {
        MediaKey {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
            ],
            port,
            _pad: 0,
        }
    }

    pub const fn v6(addr: [u8; 16], port: u16) -> MediaKey {
        MediaKey {
            addr,
            port,
            _pad: 0,
        }
    }
}

/// Value of the media map: who owns the call this endpoint belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaValue {
    pub worker: u32,
    /// [`media_flags`].
    pub flags: u32,
}

/// Bits of [`MediaValue::flags`].
pub mod media_flags {
    /// Several live calls use this endpoint (an SBC or media server port shared by calls): a
    /// packet sent to it belongs to the call of its *source* endpoint, when that is known.
    pub const SHARED: u32 = 1;
}

/// XDP program configuration, slot 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// What happens to a frame after capture: one of [`drop_mode`].
    pub drop_after_capture: u32,
    /// 1: look at the first payload bytes for SIP on ports that are not configured.
    pub sniff_sip: u32,
    /// 1: RTP v2 header on even UDP ports is captured even without SDP.
    pub heuristic_rtp: u32,
    /// Worker that gets heuristic RTP.
    pub heuristic_worker: u32,
    /// UDP port carrying VXLAN (4789); 0 disables VXLAN unwrapping.
    pub vxlan_port: u16,
    pub _pad: u16,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            drop_after_capture: drop_mode::ALWAYS,
            sniff_sip: 1,
            heuristic_rtp: 0,
            heuristic_worker: 0,
            vxlan_port: 4789,
            _pad: 0,
        }
    }
}

/// Values of [`XdpConfig::drop_after_capture`].
pub mod drop_mode {
    /// `XDP_PASS` every frame: the host's stack gets it after capture.
    pub const NEVER: u32 = 0;
    /// `XDP_DROP` every frame after capture, on every interface the program is attached to.
    pub const ALWAYS: u32 = 1;
    /// `XDP_DROP` only on the interfaces (by ifindex) in the program's `DROP_ON` map: the
    /// dedicated mirror ports; every other interface passes its frames.
    pub const PER_INTERFACE: u32 = 2;
}

/// Indices of the per-CPU counters array.
pub mod counter {
    pub const SEEN: u32 = 0;
    pub const BYTES: u32 = 1;
    pub const SIP: u32 = 2;
    pub const RTP: u32 = 3;
    pub const RTCP: u32 = 4;
    pub const UNMATCHED: u32 = 5;
    pub const PARSE_ERRORS: u32 = 6;
    pub const RING_FULL: u32 = 7;
    pub const FRAGMENTS: u32 = 8;
    pub const NOT_IP: u32 = 9;
    pub const ENCAP: u32 = 10;
    pub const RTP_HEURISTIC: u32 = 11;
    pub const TRUNCATED: u32 = 12;
    pub const COUNT: u32 = 13;

    /// Names, in index order, as exported in stats and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "bytes",
        "sip",
        "rtp",
        "rtcp",
        "unmatched",
        "parse_errors",
        "ring_full",
        "fragments",
        "not_ip",
        "encap",
        "rtp_heuristic",
        "truncated",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are repr(C) plain old data without implicit padding.
    unsafe impl aya::Pod for super::MediaKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MediaValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::XdpConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketMeta {}
}

/// Number of per-CPU counters.
pub const COUNTERS: u32 = counter::COUNT;
