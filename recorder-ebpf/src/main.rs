//! CallTap's XDP program: classify every frame on the mirror port and copy the interesting ones
//! (SIP, RTP/RTCP of known calls, fragments) into the ring of the worker that owns them.
//!
//! Steering happens here, in the kernel: a call's RTP is written straight into the ring of the
//! media worker that owns the call, whichever CPU the NIC queue interrupted. The alternative
//! (per-receiving-CPU rings plus a crossbeam hand-off between workers) costs one more copy and a
//! cross-core cache miss per packet in userspace; BPF ring buffers are multi-producer safe, so
//! writing to the owner's ring costs the same as writing to our own. `cargo xtask bench` measures
//! both sides of that trade.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, ArrayOfMaps, HashMap, PerCpuArray, RingBuf},
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use calltap_common::{
    classify::{classify, counter_for, Frame, Tables, MAX_HEADER_OFFSET, TARGET_NONE},
    counter, drop_mode, flags, MediaKey, MediaValue, PacketMeta, XdpConfig, COUNTERS,
    MAX_DROP_INTERFACES, MEDIA_MAP_ENTRIES, MEDIA_PORT_WORDS, RING_BYTES, RING_COUNT,
    SIP_PORT_WORDS, SNAP_MAX,
};

const RING: usize = RING_BYTES as usize;

type Ring = RingBuf<u8, RING>;

/// Ring `i` (`i < MAX_WORKERS`) feeds media worker `i`; ring `SIGNALLING_RING` the SIP worker.
/// Userspace puts the fds of the static rings below into this array at start.
#[btf_map]
static RINGS: ArrayOfMaps<Ring, { RING_COUNT as usize }> = ArrayOfMaps::new();

// The rings themselves. Map-in-map needs every inner map to match the template above exactly,
// so they are declared statically with the same size.
#[btf_map]
static RING_0: Ring = RingBuf::new();
#[btf_map]
static RING_1: Ring = RingBuf::new();
#[btf_map]
static RING_2: Ring = RingBuf::new();
#[btf_map]
static RING_3: Ring = RingBuf::new();
#[btf_map]
static RING_4: Ring = RingBuf::new();
#[btf_map]
static RING_5: Ring = RingBuf::new();
#[btf_map]
static RING_6: Ring = RingBuf::new();
#[btf_map]
static RING_7: Ring = RingBuf::new();
#[btf_map]
static RING_SIG: Ring = RingBuf::new();

/// RTP/RTCP endpoints of active calls -> owning worker. Filled by the SIP worker from SDP.
#[btf_map]
static MEDIA: HashMap<MediaKey, MediaValue, { MEDIA_MAP_ENTRIES as usize }> = HashMap::new();

/// Bitmap of configured SIP ports (bit `p` of the 65536).
#[btf_map]
static SIP_PORTS: Array<u64, { SIP_PORT_WORDS as usize }> = Array::new();

/// Bitmap of the UDP ports of the endpoints in `MEDIA` (bit `p` of the 65536), kept by
/// userspace beside the map: a set bit may be stale, a clear one never is.
#[btf_map]
static MEDIA_PORTS: Array<u64, { MEDIA_PORT_WORDS as usize }> = Array::new();

#[btf_map]
static CONFIG: Array<XdpConfig, 1> = Array::new();

/// Interfaces (by ifindex) that drop their frames after capture in
/// [`drop_mode::PER_INTERFACE`]: the dedicated mirror ports. Any other interface carries the
/// host's own traffic too, which must pass.
#[btf_map]
static DROP_ON: HashMap<u32, u32, { MAX_DROP_INTERFACES as usize }> = HashMap::new();

/// Per-CPU counters, indexed by `calltap_common::counter`.
#[btf_map]
static COUNTERS_MAP: PerCpuArray<u64, { COUNTERS as usize }> = PerCpuArray::new();

struct Packet<'a> {
    ctx: &'a XdpContext,
}

impl Frame for Packet<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_HEADER_OFFSET {
            return None;
        }
        let start = self.ctx.data();
        let end = self.ctx.data_end();
        if start + off + N > end {
            return None;
        }
        // SAFETY: [start + off, start + off + N) was just checked to lie inside the frame.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
    }

    #[inline(always)]
    fn widen(&self, off: usize) -> usize {
        // SAFETY: reading a local through a valid pointer. The volatile load makes the value
        // unknown to both the compiler and the verifier; the mask bounds it again.
        let v = unsafe { core::ptr::read_volatile(&off) };
        v & 0x3ff
    }
}

struct Maps;

impl Tables for Maps {
    #[inline(always)]
    fn media(&self, key: &MediaKey) -> Option<MediaValue> {
        // SAFETY: MediaValue is Copy and read at once; a concurrent update can at worst give us
        // the previous owner, which is what a lookup a moment earlier would have returned.
        unsafe { MEDIA.get(key) }.copied()
    }

    #[inline(always)]
    fn maybe_media_port(&self, port: u16) -> bool {
        match MEDIA_PORTS.get((port >> 6) as u32) {
            Some(word) => *word & (1u64 << (port & 63)) != 0,
            None => true,
        }
    }

    #[inline(always)]
    fn is_sip_port(&self, port: u16) -> bool {
        match SIP_PORTS.get((port >> 6) as u32) {
            Some(word) => *word & (1u64 << (port & 63)) != 0,
            None => false,
        }
    }

    #[inline(always)]
    fn config(&self) -> XdpConfig {
        match CONFIG.get(0) {
            Some(c) => *c,
            None => XdpConfig::default(),
        }
    }
}

#[inline(always)]
fn count(index: u32, by: u64) {
    if let Some(c) = COUNTERS_MAP.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += by };
    }
}

#[xdp]
pub fn calltap_xdp(ctx: XdpContext) -> u32 {
    let maps = Maps;
    let cfg = maps.config();
    let wire_len = (ctx.data_end() - ctx.data()) as u32;
    count(counter::SEEN, 1);
    count(counter::BYTES, wire_len as u64);

    let v = classify(&Packet { ctx: &ctx }, &maps);
    count(counter_for(v.class), 1);
    if v.flags & flags::ENCAP != 0 {
        count(counter::ENCAP, 1);
    }
    if v.target != TARGET_NONE {
        deliver(&ctx, &v, wire_len);
    }
    after_capture(&cfg, &ctx)
}

/// `XDP_DROP` on a dedicated mirror port (nothing else wants its frames), `XDP_PASS` anywhere
/// else: see [`drop_mode`].
#[inline(always)]
fn after_capture(cfg: &XdpConfig, ctx: &XdpContext) -> u32 {
    let drop = match cfg.drop_after_capture {
        drop_mode::ALWAYS => true,
        drop_mode::PER_INTERFACE => {
            let ifindex = ctx.ingress_ifindex() as u32;
            // SAFETY: the value is only tested for presence, never read.
            unsafe { DROP_ON.get(&ifindex) }.is_some()
        }
        _ => false,
    };
    if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn deliver(ctx: &XdpContext, v: &calltap_common::classify::Verdict, wire_len: u32) {
    let mut cap = wire_len;
    if cap > SNAP_MAX {
        cap = SNAP_MAX;
        count(counter::TRUNCATED, 1);
    }
    if cap == 0 {
        return;
    }
    let Some(ring) = RINGS.get(v.target) else {
        count(counter::RING_FULL, 1);
        return;
    };
    let meta = PacketMeta {
        // SAFETY: plain helpers without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ctx.ingress_ifindex() as u32,
        rx_queue: ctx.rx_queue_index(),
        wire_len,
        cap_len: cap,
        target: v.target,
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        l3_off: v.l3_off,
        l4_off: v.l4_off,
        payload_off: v.payload_off,
        class: v.class,
        flags: v.flags | if cap < wire_len { flags::TRUNCATED } else { 0 },
        _pad: [0; 2],
    };
    // The record is reserved in the ring and the frame copied straight into it: one copy.
    // A reservation's size must be a constant, so frames go in size classes; userspace reads
    // `cap_len` bytes and skips the rest of the class. A G.711 RTP frame (214 bytes) takes the
    // smallest class.
    let cap = u64::from(cap);
    if cap <= CLASS_0 as u64 {
        reserve_and_load::<{ words(CLASS_0) }>(ring, ctx, &meta, cap);
    } else if cap <= CLASS_1 as u64 {
        reserve_and_load::<{ words(CLASS_1) }>(ring, ctx, &meta, cap);
    } else if cap <= CLASS_2 as u64 {
        reserve_and_load::<{ words(CLASS_2) }>(ring, ctx, &meta, cap);
    } else {
        reserve_and_load::<{ words(SNAP_MAX as usize) }>(ring, ctx, &meta, cap);
    }
}

/// Frame size classes of ring records (bytes after the header).
const CLASS_0: usize = 256;
const CLASS_1: usize = 640;
const CLASS_2: usize = 1536;

/// 8-byte words of a record holding the header and `frame` bytes.
const fn words(frame: usize) -> usize {
    (PacketMeta::SIZE + frame).div_ceil(8)
}

#[inline(always)]
fn reserve_and_load<const WORDS: usize>(
    ring: &Ring,
    ctx: &XdpContext,
    meta: &PacketMeta,
    cap: u64,
) {
    let Some(mut entry) = ring.reserve_untyped::<[u64; WORDS]>(0) else {
        count(counter::RING_FULL, 1);
        return;
    };
    let buf = entry.as_mut_ptr().cast::<u8>();
    // The compiler knows the bound of `cap` from the caller's comparison and might not keep
    // one the verifier can see; reading it back through a volatile load hides that knowledge,
    // so the comparison below stays and bounds the length for the verifier.
    // SAFETY: reading a local through a valid pointer.
    let len = unsafe { core::ptr::read_volatile(&cap) };
    if len == 0 || len > (WORDS * 8 - PacketMeta::SIZE) as u64 {
        entry.discard(0);
        return;
    }
    // SAFETY: the entry is WORDS * 8 bytes: the header, then at least `len` frame bytes.
    unsafe {
        core::ptr::write_unaligned(buf.cast::<PacketMeta>(), *meta);
        if bpf_xdp_load_bytes(ctx.ctx, 0, buf.add(PacketMeta::SIZE).cast(), len as u32) != 0 {
            entry.discard(0);
            count(counter::PARSE_ERRORS, 1);
            return;
        }
    }
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
