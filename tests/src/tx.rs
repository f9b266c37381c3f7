//! Sending frames fast and on time out of one interface: an AF_PACKET socket fed in `sendmmsg`
//! batches from a fixed pool of buffers, paced per tick. Shared by `calltap-loadgen` (calls)
//! and `calltap-attack` (hostile traffic), because tcpreplay (one `send` per packet, timing
//! every packet) tops out near 40k packets/s on the lab machine, below what the tests need.
//!
//! A [`Schedule`] says when each frame is due and writes it; [`send_paced`] sleeps until each
//! tick, sends everything due by then, and reports how late it fell behind and the CPU it used,
//! so a test can tell a generator limit from a recorder limit.

use std::{
    ffi::CString,
    mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

/// The largest frame a schedule writes; buffers of this capacity never grow.
pub const MAX_FRAME: usize = 1514;

/// A frame source with a timetable.
pub trait Schedule {
    /// What the caller learns about each frame (for its own counts).
    type Frame;
    /// When the next frame is due, in ns from the start of the run (None: the run is over).
    fn peek_ns(&self) -> Option<u64>;
    /// Writes the next frame into `buf` (replacing what it held) and says what it is.
    fn next_into(&mut self, buf: &mut Vec<u8>) -> Option<Self::Frame>;
}

/// An AF_PACKET raw socket bound to one interface, for sending only (protocol 0: the kernel
/// hands it no received frames).
pub struct PacketSocket {
    fd: OwnedFd,
    mac: [u8; 6],
    interface: String,
}

impl PacketSocket {
    /// Opens the socket on `interface` of the calling thread's network namespace.
    pub fn open(interface: &str) -> Result<Self> {
        let name = CString::new(interface).context("interface name")?;
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!(
                "no interface {interface} here ({}); run inside its namespace",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .context("AF_PACKET socket (needs CAP_NET_RAW)");
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is a plain C struct; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind with a sockaddr_ll of the size we pass.
        if unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error()).context(format!("binding to {interface}"));
        }
        // Best effort: skip the qdisc layer (the lab's veths have none worth passing through)
        // and allow a deep socket buffer so a tick's burst is not refused.
        let one: libc::c_int = 1;
        let sndbuf: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with an int option value of the size we pass.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&sndbuf as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: ifreq is a plain C struct; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills the ifreq we pass.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("reading {interface}'s MAC address"));
        }
        // SAFETY: SIOCGIFHWADDR set the hwaddr member of the union.
        let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(hw.iter()) {
            *m = *b as u8;
        }
        Ok(Self {
            fd,
            mac,
            interface: interface.to_string(),
        })
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// An AF_PACKET socket that receives every frame crossing one interface, in either direction
/// (a participant's view of the wire, for `calltap-attack spoof-bye`).
pub struct Sniffer {
    fd: OwnedFd,
}

impl Sniffer {
    /// Opens it on `interface` of the calling thread's namespace; `recv` waits at most
    /// `timeout` for a frame.
    pub fn open(interface: &str, timeout: Duration) -> Result<Self> {
        let name = CString::new(interface).context("interface name")?;
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {interface} here");
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is a plain C struct; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex as i32;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: bind with a sockaddr_ll of the size we pass; setsockopt with a timeval.
        unsafe {
            if libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) != 0
            {
                return Err(std::io::Error::last_os_error())
                    .context(format!("binding to {interface}"));
            }
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Self { fd })
    }

    /// The next frame into `buf` (its length), or None when the timeout passed first.
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: receiving into a live buffer of the length given.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        usize::try_from(n).ok()
    }
}

/// A pool of frame buffers handed to the kernel in `sendmmsg` batches; nothing is allocated
/// per frame once the buffers have grown to frame size.
pub struct Batch {
    bufs: Vec<Vec<u8>>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    len: usize,
    /// Times the device queue was full and a batch was offered again.
    pub retries: u64,
    pub batches: u64,
}

impl Batch {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 1024);
        Self {
            bufs: (0..capacity)
                .map(|_| Vec::with_capacity(MAX_FRAME))
                .collect(),
            // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
            iovs: (0..capacity).map(|_| unsafe { mem::zeroed() }).collect(),
            // SAFETY: as above.
            msgs: (0..capacity).map(|_| unsafe { mem::zeroed() }).collect(),
            len: 0,
            retries: 0,
            batches: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lets `fill` write the next frame into a free buffer; it is queued when `fill` returns
    /// `Some`. None when the batch is full or `fill` wrote nothing.
    pub fn push_with<T>(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> Option<T>) -> Option<T> {
        let buf = self.bufs.get_mut(self.len)?;
        let out = fill(buf)?;
        self.len += 1;
        Some(out)
    }

    /// Sends every queued frame; a full device queue is waited out until `deadline_ns`
    /// (monotonic), after which it gives up and returns false.
    pub fn flush(&mut self, sock: &PacketSocket, deadline_ns: u64) -> Result<bool> {
        let n = self.len;
        self.len = 0;
        if n == 0 {
            return Ok(true);
        }
        for i in 0..n {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = self.bufs[i].len();
            self.msgs[i].msg_hdr.msg_iov = &mut self.iovs[i];
            self.msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut off = 0;
        while off < n {
            // SAFETY: msgs[off..n] point at iovecs and buffers that live across the call.
            let sent = unsafe {
                libc::sendmmsg(
                    sock.fd.as_raw_fd(),
                    self.msgs.as_mut_ptr().add(off),
                    (n - off) as libc::c_uint,
                    0,
                )
            };
            if sent < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The device queue is full: wait a little and offer the rest again.
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        self.retries += 1;
                        std::thread::sleep(Duration::from_micros(50));
                        if now_ns() > deadline_ns {
                            return Ok(false);
                        }
                    }
                    _ => return Err(err).context(format!("sendmmsg on {}", sock.interface)),
                }
            } else {
                off += sent as usize;
            }
        }
        self.batches += 1;
        Ok(true)
    }
}

/// Per-packet lateness (batch sent minus the tick it was due at) in 10 µs buckets up to 10 s:
/// a fixed array, so recording costs no allocation.
pub struct Lateness {
    buckets: Vec<u64>,
    pub max_ns: u64,
    packets: u64,
}

impl Default for Lateness {
    fn default() -> Self {
        Self::new()
    }
}

impl Lateness {
    const BUCKET_NS: u64 = 10_000;

    pub fn new() -> Self {
        Self {
            buckets: vec![0; 1_000_000],
            max_ns: 0,
            packets: 0,
        }
    }

    pub fn record(&mut self, late_ns: u64, packets: u64) {
        let i = ((late_ns / Self::BUCKET_NS) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += packets;
        self.max_ns = self.max_ns.max(late_ns);
        self.packets += packets;
    }

    pub fn quantile_ns(&self, q: f64) -> u64 {
        let want = (self.packets as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want && *n > 0 {
                return (i as u64 + 1) * Self::BUCKET_NS;
            }
        }
        self.max_ns
    }
}

/// How a paced run went.
pub struct Paced {
    pub frames: u64,
    pub bytes: u64,
    /// True when the deadline stopped the run before the schedule was over.
    pub gave_up: bool,
    pub wall_secs: f64,
    pub cpu_user_secs: f64,
    pub cpu_sys_secs: f64,
    pub ticks: u64,
    pub batches: u64,
    pub retries: u64,
    pub lateness: Lateness,
}

impl Paced {
    /// The figures as JSON (`pps` is frames over wall time, the rate actually held).
    pub fn to_json(&self) -> Value {
        json!({
            "frames": self.frames,
            "bytes": self.bytes,
            "gave_up": self.gave_up,
            "wall_secs": self.wall_secs,
            "cpu_user_secs": self.cpu_user_secs,
            "cpu_sys_secs": self.cpu_sys_secs,
            "cpu_pct": 100.0 * (self.cpu_user_secs + self.cpu_sys_secs) / self.wall_secs.max(1e-9),
            "late_max_ms": self.lateness.max_ns as f64 / 1e6,
            "late_p99_ms": self.lateness.quantile_ns(0.99) as f64 / 1e6,
            "late_p50_ms": self.lateness.quantile_ns(0.5) as f64 / 1e6,
            "ticks": self.ticks,
            "batches": self.batches,
            "send_retries": self.retries,
            "pps": self.frames as f64 / self.wall_secs.max(1e-9),
        })
    }
}

/// Sends `schedule` in real time: every `tick_ns`, everything due by then, in batches of
/// `batch`. Bounded: it stops `margin` after the schedule's `end_ns` whatever is left, and
/// says so (`gave_up`). `on_frame` sees each frame and its length as it is queued.
pub fn send_paced<S: Schedule>(
    sock: &PacketSocket,
    schedule: &mut S,
    end_ns: u64,
    tick_ns: u64,
    batch: usize,
    margin: Duration,
    mut on_frame: impl FnMut(&S::Frame, usize),
) -> Result<Paced> {
    if tick_ns == 0 || batch == 0 {
        bail!("the tick and the batch must be at least 1");
    }
    let mut pool = Batch::new(batch);
    let mut lateness = Lateness::new();
    let (mut frames, mut bytes, mut ticks) = (0u64, 0u64, 0u64);
    // A short lead so the first tick is not already late when the loop first looks at it.
    let start = now_ns() + 50_000_000;
    let deadline = start + end_ns + margin.as_nanos() as u64;
    let cpu0 = cpu_secs();
    let mut gave_up = false;
    let mut tick = 0u64;
    'run: while let Some(next) = schedule.peek_ns() {
        let tick_at = tick * tick_ns;
        if next > tick_at {
            // Skip ticks with nothing due (before the run starts, or a very slow rate).
            tick = next.div_ceil(tick_ns);
            continue;
        }
        sleep_until(start + tick_at);
        ticks += 1;
        while schedule.peek_ns().is_some_and(|t| t <= tick_at) {
            while !pool.is_full() && schedule.peek_ns().is_some_and(|t| t <= tick_at) {
                let queued = pool.push_with(|buf| {
                    let frame = schedule.next_into(buf)?;
                    on_frame(&frame, buf.len());
                    bytes += buf.len() as u64;
                    Some(())
                });
                if queued.is_none() {
                    break;
                }
                frames += 1;
            }
            let n = pool.len() as u64;
            if !pool.flush(sock, deadline)? {
                gave_up = true;
                break 'run;
            }
            lateness.record(now_ns().saturating_sub(start + tick_at), n);
        }
        tick += 1;
        if now_ns() > deadline {
            gave_up = true;
            break;
        }
    }
    let wall_secs = now_ns().saturating_sub(start) as f64 / 1e9;
    let (user, sys) = cpu_secs();
    Ok(Paced {
        frames,
        bytes,
        gave_up,
        wall_secs,
        cpu_user_secs: user - cpu0.0,
        cpu_sys_secs: sys - cpu0.1,
        ticks,
        batches: pool.batches,
        retries: pool.retries,
        lateness,
    })
}

/// Parses `02:00:0a:ff:10:01`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address {text:?}: want six hex bytes separated by ':'");
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("MAC address {text:?}"))?;
    }
    Ok(mac)
}

/// The monotonic clock in ns.
pub fn now_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec we pass.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until the monotonic clock reads `at_ns` (returns at once if it already has).
pub fn sleep_until(at_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: an absolute sleep on a valid timespec; interrupted sleeps are retried.
    while unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    } == libc::EINTR
    {}
}

/// (user, system) CPU seconds this process has used.
pub fn cpu_secs() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01").expect("valid"),
            [2, 0, 0x0a, 0xff, 0x10, 1]
        );
        assert!(parse_mac("02:00:0a:ff:10").is_err());
        assert!(parse_mac("02:00:0a:ff:10:zz").is_err());
    }

    #[test]
    fn lateness_quantiles() {
        let mut l = Lateness::new();
        l.record(5_000, 98);
        l.record(2_000_000, 1);
        l.record(30_000_000, 1);
        assert_eq!(l.quantile_ns(0.5), 10_000);
        assert_eq!(l.quantile_ns(0.99), 2_010_000);
        assert_eq!(l.max_ns, 30_000_000);
    }
}
