//! `calltap-loadgen`: sends N concurrent G.711 calls ([`calltap_lab::load`]) in real time out
//! of one interface, or writes the same traffic to a pcap.
//!
//! Live, it is meant to run in the lab's caller namespace (`ip netns exec ct-uac
//! calltap-loadgen --interface a0 ...`): the switch mirrors what it sends to CallTap. It exists
//! because tcpreplay (one `send` per packet, timing every packet) tops out near 40k packets/s
//! on the lab machine, well below what CallTap records, so the capacity figure measured the
//! player. Here frames are built into a fixed pool of buffers and handed to an AF_PACKET socket
//! in `sendmmsg` batches, paced per tick (default 20 ms, the RTP packet interval): sleep until
//! the tick, then send everything due by then. Every call's packets stay exactly 20 ms apart
//! (each call's packets fall in the same phase of every tick), and the run reports how late it
//! fell behind its schedule and the CPU it used, so a bench can tell a generator limit from a
//! recorder limit.

use std::{
    ffi::CString,
    mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use calltap_lab::load::{write_pcap, Generator, LoadSpec, Written, MAX_FRAME};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "calltap-loadgen",
    about = "Sends N concurrent G.711 SIP/RTP calls in real time through an AF_PACKET socket, or writes them to a pcap"
)]
struct Args {
    /// Calls in the run.
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// Seconds of audio per call (50 RTP packets/s each way).
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Calls started per second [default: all within the first second].
    #[arg(long)]
    rate: Option<f64>,
    /// Send live out of this interface (run inside the namespace that has it).
    #[arg(long, required_unless_present = "pcap", conflicts_with = "pcap")]
    interface: Option<String>,
    /// Write the traffic to this pcap instead of sending it.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Stop writing before the pcap would grow past this many bytes.
    #[arg(long, requires = "pcap")]
    max_bytes: Option<u64>,
    /// Write the run's figures here as JSON (they are also printed on stderr).
    #[arg(long)]
    stats_json: Option<PathBuf>,
    #[arg(long, default_value = "198.18.0.1")]
    uac_ip: Ipv4Addr,
    #[arg(long, default_value = "198.18.0.2")]
    uas_ip: Ipv4Addr,
    #[arg(long, default_value_t = 5060)]
    sip_port: u16,
    /// Call k uses media port BASE + 2k on both sides.
    #[arg(long, default_value_t = 20_000)]
    media_port: u16,
    /// Run number, part of every Call-ID, SSRC and payload.
    #[arg(long, default_value_t = 0)]
    run: u32,
    /// Pacing tick in milliseconds.
    #[arg(long, default_value_t = 20)]
    tick_ms: u64,
    /// Frames per sendmmsg call.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Destination MAC of every frame [default: the interface's own, so a switch mirrors the
    /// frame on ingress and then drops it instead of delivering it to a host that would answer
    /// each RTP packet with an ICMP port unreachable].
    #[arg(long)]
    dst_mac: Option<String>,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(stats) => {
            // A pcap cut at --max-bytes is what was asked for; a live run must send it all.
            let ok = stats["mode"] == "pcap" || stats["complete"].as_bool().unwrap_or(false);
            eprintln!("calltap-loadgen: {stats}");
            if let Some(path) = &args.stats_json {
                if let Err(e) = std::fs::write(path, stats.to_string()) {
                    eprintln!("calltap-loadgen: writing {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
            if !ok {
                std::process::exit(2);
            }
        }
        Err(e) => {
            eprintln!("calltap-loadgen: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<serde_json::Value> {
    let mut spec = LoadSpec::new(args.calls, args.seconds);
    if let Some(rate) = args.rate {
        spec.rate = rate;
    }
    spec.uac_ip = args.uac_ip;
    spec.uas_ip = args.uas_ip;
    spec.sip_port = args.sip_port;
    spec.media_port_base = args.media_port;
    spec.run = args.run;
    spec.validate()?;
    let base = json!({
        "calls": spec.calls,
        "seconds": spec.seconds,
        "rate": spec.rate,
        "expected_rtp": spec.rtp_packets(),
        "expected_sip": spec.sip_packets(),
    });
    let mut stats = if let Some(path) = &args.pcap {
        let cpu0 = cpu_secs();
        let w = write_pcap(path, &spec, args.max_bytes)?;
        let (user, sys) = cpu_secs_pair(cpu0);
        json!({
            "mode": "pcap",
            "pcap": path,
            "rtp": w.rtp,
            "sip": w.sip,
            "frames": w.frames,
            "bytes": w.bytes,
            "truncated": w.truncated,
            "complete": !w.truncated,
            "cpu_user_secs": user,
            "cpu_sys_secs": sys,
        })
    } else {
        let interface = args.interface.as_deref().context("--interface or --pcap")?;
        send_live(args, interface, &mut spec)?
    };
    if let (Some(s), Some(b)) = (stats.as_object_mut(), base.as_object()) {
        s.extend(b.clone());
    }
    Ok(stats)
}

/// Per-packet lateness (batch sent minus the tick it was due at) in 10 µs buckets up to 10 s:
/// a fixed array, so recording costs no allocation.
struct Lateness {
    buckets: Vec<u64>,
    max_ns: u64,
    packets: u64,
}

impl Lateness {
    const BUCKET_NS: u64 = 10_000;

    fn new() -> Self {
        Self {
            buckets: vec![0; 1_000_000],
            max_ns: 0,
            packets: 0,
        }
    }

    fn record(&mut self, late_ns: u64, packets: u64) {
        let i = ((late_ns / Self::BUCKET_NS) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += packets;
        self.max_ns = self.max_ns.max(late_ns);
        self.packets += packets;
    }

    fn quantile_ns(&self, q: f64) -> u64 {
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

/// Sends the run in real time; returns its figures.
fn send_live(args: &Args, interface: &str, spec: &mut LoadSpec) -> Result<serde_json::Value> {
    if args.tick_ms == 0 || args.batch == 0 {
        bail!("--tick-ms and --batch must be at least 1");
    }
    let (fd, own_mac) = open_socket(interface)?;
    spec.src_mac = own_mac;
    spec.dst_mac = match &args.dst_mac {
        Some(text) => parse_mac(text)?,
        None => own_mac,
    };
    let mut generator = Generator::new(spec.clone())?;
    let batch = args.batch.min(1024);
    // The pool: every frame of a batch is built in place here and sent from here.
    let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| Vec::with_capacity(MAX_FRAME)).collect();
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value.
    let mut iovs: Vec<libc::iovec> = (0..batch).map(|_| unsafe { mem::zeroed() }).collect();
    // SAFETY: as above.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { mem::zeroed() }).collect();
    let mut lateness = Lateness::new();
    let mut written = Written::default();
    let (mut batches, mut retries, mut ticks) = (0u64, 0u64, 0u64);
    let tick_ns = args.tick_ms * 1_000_000;
    // A short lead so the first tick is not already late when the loop first looks at it.
    let start = now_ns() + 50_000_000;
    // Bounded: the schedule plus setup and teardown, and a margin for a machine that cannot
    // keep up; past it the run stops and says so.
    let deadline = start + spec.end_ns() + 30_000_000_000;
    let cpu0 = cpu_secs();
    let mut gave_up = false;
    let mut tick = 0u64;
    'run: while let Some(next) = generator.peek_ns() {
        let tick_at = tick * tick_ns;
        if next > tick_at {
            // Skip ticks with nothing due (before the run starts, or a very slow call rate).
            tick = next.div_ceil(tick_ns);
            continue;
        }
        sleep_until(start + tick_at);
        ticks += 1;
        while generator.peek_ns().is_some_and(|t| t <= tick_at) {
            let mut n = 0;
            while n < batch && generator.peek_ns().is_some_and(|t| t <= tick_at) {
                let Some(frame) = generator.next_into(&mut bufs[n]) else {
                    break;
                };
                written.count(&frame, bufs[n].len());
                iovs[n].iov_base = bufs[n].as_mut_ptr().cast();
                iovs[n].iov_len = bufs[n].len();
                msgs[n].msg_hdr.msg_iov = &mut iovs[n];
                msgs[n].msg_hdr.msg_iovlen = 1;
                n += 1;
            }
            let mut off = 0;
            while off < n {
                // SAFETY: msgs[off..n] point at iovecs and buffers that live across the call.
                let sent = unsafe {
                    libc::sendmmsg(
                        fd.as_raw_fd(),
                        msgs.as_mut_ptr().add(off),
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
                            retries += 1;
                            std::thread::sleep(Duration::from_micros(50));
                            if now_ns() > deadline {
                                gave_up = true;
                                break 'run;
                            }
                        }
                        _ => return Err(err).context(format!("sendmmsg on {interface}")),
                    }
                } else {
                    off += sent as usize;
                }
            }
            batches += 1;
            lateness.record(now_ns().saturating_sub(start + tick_at), n as u64);
        }
        tick += 1;
        if now_ns() > deadline {
            gave_up = true;
            break;
        }
    }
    let wall = now_ns().saturating_sub(start) as f64 / 1e9;
    let (user, sys) = cpu_secs_pair(cpu0);
    let expected = spec.rtp_packets() + spec.sip_packets();
    Ok(json!({
        "mode": "live",
        "interface": interface,
        "rtp": written.rtp,
        "sip": written.sip,
        "frames": written.frames,
        "bytes": written.bytes,
        "complete": !gave_up && written.frames == expected,
        "gave_up": gave_up,
        "schedule_secs": spec.end_ns() as f64 / 1e9,
        "wall_secs": wall,
        "cpu_user_secs": user,
        "cpu_sys_secs": sys,
        "cpu_pct": 100.0 * (user + sys) / wall.max(1e-9),
        "late_max_ms": lateness.max_ns as f64 / 1e6,
        "late_p99_ms": lateness.quantile_ns(0.99) as f64 / 1e6,
        "late_p50_ms": lateness.quantile_ns(0.5) as f64 / 1e6,
        "ticks": ticks,
        "batches": batches,
        "send_retries": retries,
        "pps": written.frames as f64 / wall.max(1e-9),
    }))
}

/// An AF_PACKET raw socket bound to `interface` for sending only (protocol 0: the kernel hands
/// it no received frames), and the interface's MAC address.
fn open_socket(interface: &str) -> Result<(OwnedFd, [u8; 6])> {
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
    // Best effort: skip the qdisc layer (the lab's veths have none worth passing through) and
    // allow a deep socket buffer so a tick's burst is not refused.
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
    Ok((fd, mac))
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
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

fn now_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec we pass.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until the monotonic clock reads `at_ns` (returns at once if it already has).
fn sleep_until(at_ns: u64) {
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
fn cpu_secs() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn cpu_secs_pair(since: (f64, f64)) -> (f64, f64) {
    let now = cpu_secs();
    (now.0 - since.0, now.1 - since.1)
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
