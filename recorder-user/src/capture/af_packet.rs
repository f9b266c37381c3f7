//! AF_PACKET (TPACKET_V3) capture for hosts where XDP cannot attach. The kernel fills blocks of
//! a memory-mapped ring; one thread per interface walks them, runs the userspace classifier and
//! hands records to the owning worker over a channel.

use std::{
    ffi::CString,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
};

use calltap_common::{
    classify::{counter_for, TARGET_NONE},
    counter, flags, PacketMeta, COUNTERS, SIGNALLING_RING,
};
use crossbeam_channel::{bounded, Receiver, Sender};

use super::CaptureError;
use crate::classify::{classify_frame, UserTables};

const BLOCK_SIZE: u32 = 1 << 22;
const BLOCK_NR: u32 = 16;
const FRAME_SIZE: u32 = 2048;
/// Records queued per worker before the capture thread counts them as ring-full drops.
const QUEUE: usize = 1 << 16;
/// Spare record buffers kept for reuse (about 7 MB): enough to cover what is in flight between
/// the capture thread and the workers at full rate, bounded when the queues back up.
const POOL: usize = 4096;

const TPACKET_V3: libc::c_int = 2;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;

#[repr(C)]
struct TpacketReq3 {
    block_size: u32,
    block_nr: u32,
    frame_size: u32,
    frame_nr: u32,
    retire_blk_tov: u32,
    sizeof_priv: u32,
    feature_req_word: u32,
}

pub struct AfPacketCapture {
    threads: Vec<JoinHandle<()>>,
    counters: Arc<[AtomicU64; COUNTERS as usize]>,
}

struct Ring {
    fd: libc::c_int,
    map: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by exactly one capture thread.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: both were created by open_ring and are released once.
        unsafe {
            libc::munmap(self.map.cast(), self.len);
            libc::close(self.fd);
        }
    }
}

fn open_ring(interface: &str) -> Result<Ring, CaptureError> {
    let err = |what: &str| CaptureError::AfPacket {
        interface: interface.to_string(),
        reason: format!("{what}: {}", std::io::Error::last_os_error()),
    };
    let name = CString::new(interface).map_err(|_| CaptureError::AfPacket {
        interface: interface.to_string(),
        reason: "interface name contains NUL".into(),
    })?;
    // SAFETY: plain syscalls with valid arguments; results checked.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(err("no such interface"));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as libc::c_int);
        if fd < 0 {
            return Err(err("socket(AF_PACKET)"));
        }
        let v = TPACKET_V3;
        if libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            PACKET_VERSION,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        ) != 0
        {
            libc::close(fd);
            return Err(err("PACKET_VERSION"));
        }
        let req = TpacketReq3 {
            block_size: BLOCK_SIZE,
            block_nr: BLOCK_NR,
            frame_size: FRAME_SIZE,
            frame_nr: BLOCK_SIZE / FRAME_SIZE * BLOCK_NR,
            retire_blk_tov: 10,
            sizeof_priv: 0,
            feature_req_word: 0,
        };
        if libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            PACKET_RX_RING,
            (&req as *const TpacketReq3).cast(),
            std::mem::size_of::<TpacketReq3>() as u32,
        ) != 0
        {
            libc::close(fd);
            return Err(err("PACKET_RX_RING"));
        }
        let len = (BLOCK_SIZE * BLOCK_NR) as usize;
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if map == libc::MAP_FAILED {
            libc::close(fd);
            return Err(err("mmap"));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            libc::munmap(map, len);
            libc::close(fd);
            return Err(err("bind"));
        }
        Ok(Ring {
            fd,
            map: map.cast(),
            len,
        })
    }
}

fn read_u32(base: *const u8, off: usize) -> u32 {
    // SAFETY: callers pass offsets inside the mapped ring.
    unsafe { std::ptr::read_volatile(base.add(off).cast::<u32>()) }
}

#[expect(
    clippy::too_many_arguments,
    reason = "a thread's whole state, handed over once when it starts"
)]
fn capture_loop(
    ring: Ring,
    ifindex: u32,
    tables: UserTables,
    workers: Vec<Sender<Vec<u8>>>,
    signalling: Sender<Vec<u8>>,
    pool: Receiver<Vec<u8>>,
    counters: Arc<[AtomicU64; COUNTERS as usize]>,
    stop: Arc<AtomicBool>,
) {
    // Counted locally and published once per block: an atomic add per packet and counter
    // would cost more than classifying the packet.
    let mut local = [0u64; COUNTERS as usize];
    let mut block = 0u32;
    while !stop.load(Ordering::Acquire) {
        // SAFETY: block < BLOCK_NR, so the block lies inside the mapping.
        let base = unsafe { ring.map.add((block * BLOCK_SIZE) as usize) };
        if read_u32(base, 8) & TP_STATUS_USER == 0 {
            let mut pfd = libc::pollfd {
                fd: ring.fd,
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
            // Quiet: keep the media table replica current (see `UserTables::refresh`).
            tables.refresh();
            continue;
        }
        let num = read_u32(base, 12);
        let mut off = read_u32(base, 16) as usize;
        for _ in 0..num {
            if off + 28 > BLOCK_SIZE as usize {
                break;
            }
            // SAFETY: off is inside the block (checked above).
            let hdr = unsafe { base.add(off) };
            let next = read_u32(hdr, 0) as usize;
            let sec = read_u32(hdr, 4) as u64;
            let nsec = read_u32(hdr, 8) as u64;
            let snaplen = read_u32(hdr, 12) as usize;
            let wire = read_u32(hdr, 16);
            // SAFETY: tp_mac is a u16 at offset 24 of the header.
            let mac = unsafe { std::ptr::read_volatile(hdr.add(24).cast::<u16>()) } as usize;
            if off + mac + snaplen <= BLOCK_SIZE as usize {
                // SAFETY: bounds checked against the block just above.
                let frame = unsafe { std::slice::from_raw_parts(hdr.add(mac), snaplen) };
                let ts = sec * 1_000_000_000 + nsec;
                let (v, meta) = classify_frame(frame, &tables, ts, wire, ifindex);
                let mut count = |i: u32, by: u64| {
                    if let Some(c) = local.get_mut(i as usize) {
                        *c += by;
                    }
                };
                count(counter::SEEN, 1);
                count(counter::BYTES, wire as u64);
                count(counter_for(v.class), 1);
                if v.flags & flags::ENCAP != 0 {
                    count(counter::ENCAP, 1);
                }
                if v.target != TARGET_NONE {
                    // Buffers come back from the consumers: no allocation per packet once
                    // the pool is warm.
                    let mut rec = pool
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(PacketMeta::SIZE + 1600));
                    rec.clear();
                    rec.extend_from_slice(meta.as_bytes());
                    rec.extend_from_slice(frame);
                    let tx = if v.target == SIGNALLING_RING {
                        Some(&signalling)
                    } else {
                        workers.get(v.target as usize)
                    };
                    if tx.is_none_or(|tx| tx.try_send(rec).is_err()) {
                        local[counter::RING_FULL as usize] += 1;
                    }
                }
            }
            if next == 0 {
                break;
            }
            off += next;
        }
        for (shared, n) in counters.iter().zip(local.iter_mut()) {
            if *n != 0 {
                shared.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
        // Hand the block back to the kernel.
        // SAFETY: block_status is a u32 at offset 8 of the block descriptor.
        unsafe { std::ptr::write_volatile(base.add(8).cast::<u32>(), TP_STATUS_KERNEL) };
        block = (block + 1) % BLOCK_NR;
    }
}

/// One consumer's records from the AF_PACKET threads, and the way back for their buffers.
pub struct RecordQueue {
    pub rx: Receiver<Vec<u8>>,
    /// Return each record's buffer here after handling it; the capture threads reuse it.
    pub recycle: Sender<Vec<u8>>,
}

type Started = (AfPacketCapture, Vec<RecordQueue>, RecordQueue);

impl AfPacketCapture {
    /// Opens a TPACKET_V3 ring on every interface and starts one capture thread per interface.
    pub fn start(
        interfaces: &[String],
        tables: UserTables,
        workers: u32,
        stop: Arc<AtomicBool>,
    ) -> Result<Started, CaptureError> {
        let counters: Arc<[AtomicU64; COUNTERS as usize]> =
            Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(QUEUE)).unzip();
        let (sig_tx, sig_rx) = bounded(QUEUE);
        let (pool_tx, pool_rx) = bounded(POOL);
        let mut threads = Vec::new();
        for iface in interfaces {
            let ring = open_ring(iface)?;
            let name = CString::new(iface.as_str()).map_err(|_| CaptureError::AfPacket {
                interface: iface.clone(),
                reason: "bad name".into(),
            })?;
            // SAFETY: valid C string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            let (tables, txs, sig_tx, pool, counters, stop) = (
                tables.clone(),
                txs.clone(),
                sig_tx.clone(),
                pool_rx.clone(),
                counters.clone(),
                stop.clone(),
            );
            threads.push(
                thread::Builder::new()
                    .name(format!("afp-{iface}"))
                    .spawn(move || {
                        capture_loop(ring, ifindex, tables, txs, sig_tx, pool, counters, stop)
                    })
                    .map_err(|e| CaptureError::AfPacket {
                        interface: iface.clone(),
                        reason: e.to_string(),
                    })?,
            );
            log::info!("{iface}: capturing with AF_PACKET (TPACKET_V3)");
        }
        let queue = |rx| RecordQueue {
            rx,
            recycle: pool_tx.clone(),
        };
        let rxs = rxs.into_iter().map(queue).collect();
        Ok((AfPacketCapture { threads, counters }, rxs, queue(sig_rx)))
    }

    pub fn totals(&self) -> [u64; COUNTERS as usize] {
        std::array::from_fn(|i| self.counters[i].load(Ordering::Relaxed))
    }

    /// The live counters, for the metrics scrape (read without stopping capture).
    pub fn shared_counters(&self) -> Arc<[AtomicU64; COUNTERS as usize]> {
        self.counters.clone()
    }
}

impl Drop for AfPacketCapture {
    fn drop(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
