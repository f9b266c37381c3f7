//! `cargo xtask bench`: CallTap's figures (printed as a table and written to
//! `target/bench/results.json`). Not pass/fail: speed is measured here, never asserted in tests.
//!
//! 1. XDP program cost per packet by class, through `BPF_PROG_TEST_RUN` (needs root).
//! 2. Userspace pipeline throughput: a capture of N concurrent G.711 calls replayed through the
//!    same classifier, signalling and media code as live capture, on one core; recordings are
//!    verified afterwards (every call, every packet).
//! 3. Memory per active call: RSS while all N calls are open, over N.
//! 4. Live zero-loss capacity (root, tcpreplay): the same kind of capture played at its real
//!    rate into the SPAN lab (from the caller namespace, so the switch mirrors it to CallTap on
//!    XDP), for growing numbers of concurrent calls; the largest with no ring-full drop and
//!    every call's every packet recorded is reported, with the generator's own CPU use.
//!    Steps: `CALLTAP_BENCH_LIVE_STEPS` (default "250,500,1000,2000"); empty skips.
//!
//! 5. Allocations per RTP packet: a counting global allocator around two replays of the same
//!    calls, one twice as long as the other; the difference over the extra RTP packets is what
//!    the steady-state RTP path allocates (setup, SIP and call end cancel out).
//! 6. The same capture through `tshark -z rtp,streams` (RTP stream analysis, no audio written)
//!    beside CallTap's replay (analysis and recording), as a ratio.
//! 7. CPU per 1,000 calls: calltap's own CPU (from /proc) during each live step.
//!
//! Sizes: `CALLTAP_BENCH_CALLS` (default 400) calls of `CALLTAP_BENCH_SECONDS` (default 20) s.

#[path = "../tests/support/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::{
    collections::BTreeMap,
    fs::File,
    io::BufWriter,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use calltap::{capture::xdp::XdpCapture, config::Config, pipeline::MediaTable};
use calltap_common::{MediaKey, MediaValue, XdpConfig, MAX_WORKERS};
use frames::{eth, ipv4, rtp, udp};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};

/// Counts heap allocations so the bench can show the RTP path does none.
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

const INVITE: &[u8] = b"INVITE sip:bob@198.18.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.1:5060;branch=z9hG4bKb\r\nFrom: <sip:alice@198.18.0.1>;tag=a\r\nTo: <sip:bob@198.18.0.2>\r\nCall-ID: bench@198.18.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

/// XDP cost per class in ns/packet (best of 5 runs of 20k repeats; rings drained in between).
fn xdp_costs(out: &mut BTreeMap<String, f64>) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xdp: skipped (needs root)");
        return;
    }
    let cfg = XdpConfig::default();
    let mut x = match XdpCapture::load(&cfg, &[5060, 5080]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xdp: cannot load: {e}");
            return;
        }
    };
    let mut rings: Vec<_> = (0..MAX_WORKERS)
        .filter_map(|i| x.take_media_ring(i))
        .collect();
    rings.extend(x.take_signalling_ring());
    let Ok(mut table) = x.take_media_table() else {
        return;
    };
    let (a, b) = ([198, 18, 0, 1], [198, 18, 0, 2]);
    let _ = table.insert(
        MediaKey::v4(b, 20_000),
        MediaValue {
            worker: 1,
            flags: 0,
        },
    );
    let rtp_frame = eth(
        0x0800,
        &ipv4(
            17,
            a,
            b,
            &udp(16_000, 20_000, &rtp(0, 1, 160, 7, &[0xd5; 160])),
        ),
    );
    let cases = [
        (
            "xdp_ns_per_packet_sip",
            eth(0x0800, &ipv4(17, a, b, &udp(5060, 5060, INVITE))),
        ),
        ("xdp_ns_per_packet_rtp", rtp_frame),
        (
            "xdp_ns_per_packet_other",
            eth(0x0800, &ipv4(17, a, b, &udp(40_001, 53, &[0x12; 80]))),
        ),
        ("xdp_ns_per_packet_not_ip", eth(0x0806, &[0u8; 28])),
    ];
    for (name, frame) in cases {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let Ok((_, d)) = x.test_run(&frame, 20_000) else {
                continue;
            };
            best = best.min(d.as_nanos() as f64);
            for r in rings.iter_mut() {
                while r.next().is_some() {}
            }
        }
        out.insert(name.to_owned(), best);
    }
}

/// N concurrent calls, both directions 50 packets/s for `seconds`, written in time order.
fn write_load(path: &Path, calls: u32, seconds: u32) -> u64 {
    let file = BufWriter::new(File::create(path).expect("create pcap"));
    let mut w = PcapWriter::with_header(
        file,
        PcapHeader {
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        },
    )
    .expect("pcap header");
    let base = 1_700_000_000u64 * 1_000_000_000;
    let ip = |side: u8, k: u32| [10, side, (k / 250) as u8, (k % 250) as u8 + 1];
    let mut put = |at_ns: u64, frame: &[u8]| {
        w.write_packet(&PcapPacket::new(
            Duration::from_nanos(base + at_ns),
            frame.len() as u32,
            frame,
        ))
        .expect("write");
    };
    let sip = |k: u32, text: String| {
        eth(
            0x0800,
            &ipv4(17, ip(1, k), ip(2, k), &udp(5060, 5060, text.as_bytes())),
        )
    };
    let sip_back = |k: u32, text: String| {
        eth(
            0x0800,
            &ipv4(17, ip(2, k), ip(1, k), &udp(5060, 5060, text.as_bytes())),
        )
    };
    let hdr = |k: u32, method: &str, cseq: u32, tag: bool| {
        format!(
            "Via: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK{k}{cseq}\r\nFrom: <sip:agent{k}@pbx>;tag=f{k}\r\nTo: <sip:cust{k}@carrier>{}\r\nCall-ID: load-{k}@bench\r\nCSeq: {cseq} {method}\r\n",
            if tag { ";tag=t" } else { "" }
        )
    };
    let sdp = |a: [u8; 4]| {
        format!("v=0\r\no=- 1 1 IN IP4 {0}.{1}.{2}.{3}\r\ns=-\r\nc=IN IP4 {0}.{1}.{2}.{3}\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", a[0], a[1], a[2], a[3])
    };
    let mut rtp_packets = 0u64;
    let stagger = 1_000_000_000u64 / u64::from(calls.max(1));
    for k in 0..calls {
        let t = u64::from(k) * stagger;
        let body = sdp(ip(1, k));
        put(t, &sip(k, format!("INVITE sip:cust{k}@carrier SIP/2.0\r\n{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}", hdr(k, "INVITE", 1, false), body.len())));
        let body = sdp(ip(2, k));
        put(t + 1_000_000, &sip_back(k, format!("SIP/2.0 200 OK\r\n{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}", hdr(k, "INVITE", 1, true), body.len())));
        put(
            t + 2_000_000,
            &sip(
                k,
                format!(
                    "ACK sip:cust{k}@carrier SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
                    hdr(k, "ACK", 1, true)
                ),
            ),
        );
    }
    let packets = seconds * 50;
    for p in 0..packets {
        for k in 0..calls {
            let t = 1_000_000_000 + u64::from(p) * 20_000_000 + u64::from(k) * stagger / 50;
            let payload = [(0x80 + (p + k) % 100) as u8; 160];
            put(
                t,
                &eth(
                    0x0800,
                    &ipv4(
                        17,
                        ip(1, k),
                        ip(2, k),
                        &udp(30000, 30000, &rtp(0, p as u16, p * 160, k, &payload)),
                    ),
                ),
            );
            put(
                t + 100_000,
                &eth(
                    0x0800,
                    &ipv4(
                        17,
                        ip(2, k),
                        ip(1, k),
                        &udp(
                            30000,
                            30000,
                            &rtp(0, p as u16, p * 160, k | 1 << 31, &payload),
                        ),
                    ),
                ),
            );
            rtp_packets += 2;
        }
    }
    let end = 1_000_000_000 + u64::from(packets) * 20_000_000 + 100_000_000;
    for k in 0..calls {
        put(
            end + u64::from(k) * stagger,
            &sip(
                k,
                format!(
                    "BYE sip:cust{k}@carrier SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
                    hdr(k, "BYE", 2, true)
                ),
            ),
        );
    }
    rtp_packets
}

fn pipeline(out: &mut BTreeMap<String, f64>, dir: &Path, calls: u32, seconds: u32) {
    let pcap = dir.join("load.pcap");
    let t = Instant::now();
    let rtp_packets = write_load(&pcap, calls, seconds);
    eprintln!(
        "pipeline: wrote {} calls x {seconds} s ({rtp_packets} RTP packets) in {:.1?}",
        calls,
        t.elapsed()
    );
    let tshark = tshark_secs(out, &pcap, rtp_packets);
    for workers in [1u32, 2] {
        let mut cfg = Config::load_with_env(None, &[]).expect("config");
        cfg.data_dir = dir.join(format!("data-{workers}"));
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
        cfg.workers = workers;
        let rss_before = rss_kib();
        let mut rss_open = 0;
        let mut cdrs = Vec::new();
        let t = Instant::now();
        let summary = calltap::cmd::replay::replay(&cfg, std::slice::from_ref(&pcap), |cdr| {
            if cdrs.is_empty() {
                // The first CDR comes when the first BYE is processed: all calls are still open.
                rss_open = rss_kib();
            }
            cdrs.push((cdr.packets.caller, cdr.packets.callee));
        });
        let secs = t.elapsed().as_secs_f64();
        let complete = cdrs
            .iter()
            .filter(|(a, b)| *a == u64::from(seconds) * 50 && *b == u64::from(seconds) * 50)
            .count();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        eprintln!(
            "pipeline: {workers} worker(s) (inline, one core): {:.2} s, {:.0} RTP pkt/s, {} of {} calls complete",
            secs,
            rtp_packets as f64 / secs,
            complete,
            calls
        );
        out.insert(
            format!("pipeline_rtp_pps_per_core_{workers}w"),
            rtp_packets as f64 / secs,
        );
        if workers == 1 {
            out.insert(
                "pipeline_rtp_pps_per_core".into(),
                rtp_packets as f64 / secs,
            );
            out.insert("pipeline_calls_verified".into(), complete as f64);
            if let Some(tshark) = tshark {
                // tshark only analyses the streams; CallTap also decodes and writes every WAV.
                eprintln!("pipeline: {:.1}x tshark's speed", tshark / secs);
                out.insert("calltap_vs_tshark_speed_ratio".into(), tshark / secs);
            }
            out.insert(
                "bytes_per_active_call".into(),
                (rss_open.saturating_sub(rss_before) * 1024) as f64 / f64::from(calls.max(1)),
            );
        }
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }
    let _ = std::fs::remove_file(&pcap);
}

/// One worker's replay of `pcap` into `dir`: (seconds, allocations, calls complete).
fn replay_once(dir: &Path, pcap: &Path, want: u64) -> (f64, u64, usize) {
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.data_dir = dir.to_path_buf();
    let _ = std::fs::remove_dir_all(dir);
    cfg.workers = 1;
    let mut complete = 0;
    let a0 = allocations();
    let t = Instant::now();
    let summary = calltap::cmd::replay::replay(&cfg, &[pcap.to_path_buf()], |cdr| {
        complete += usize::from(cdr.packets.caller == want && cdr.packets.callee == want);
    });
    let secs = t.elapsed().as_secs_f64();
    let allocs = allocations() - a0;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let _ = std::fs::remove_dir_all(dir);
    (secs, allocs, complete)
}

/// Allocations per RTP packet in steady state: the same 100 calls for S and 2S seconds.
fn rtp_path_allocations(out: &mut BTreeMap<String, f64>, dir: &Path) {
    let calls = 100;
    let mut runs = Vec::new();
    for seconds in [4u32, 8] {
        let pcap = dir.join(format!("alloc-{seconds}.pcap"));
        let rtp = write_load(&pcap, calls, seconds);
        let (_, allocs, complete) =
            replay_once(&dir.join("alloc-data"), &pcap, u64::from(seconds) * 50);
        let _ = std::fs::remove_file(&pcap);
        assert_eq!(complete, calls as usize, "allocation run lost audio");
        eprintln!(
            "allocations: {calls} calls x {seconds} s: {rtp} RTP packets, {allocs} allocations"
        );
        runs.push((rtp, allocs));
    }
    let extra_packets = runs[1].0 - runs[0].0;
    let extra_allocs = runs[1].1.saturating_sub(runs[0].1);
    let per_packet = extra_allocs as f64 / extra_packets as f64;
    eprintln!(
        "allocations: {extra_allocs} more for {extra_packets} more RTP packets: {per_packet:.4} per RTP packet"
    );
    out.insert("rtp_path_allocations_per_packet".into(), per_packet);
}

/// Seconds tshark's RTP stream analysis takes over the capture (None: tshark did not run).
fn tshark_secs(out: &mut BTreeMap<String, f64>, pcap: &Path, rtp_packets: u64) -> Option<f64> {
    let t = Instant::now();
    let run = std::process::Command::new("tshark")
        .args(["-n", "-q", "-r"])
        .arg(pcap)
        .args(["-z", "rtp,streams"])
        .output();
    let tshark = t.elapsed().as_secs_f64();
    match run {
        Ok(o) if o.status.success() => {
            let streams = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("ITU-T G.711 PCMU"))
                .count();
            eprintln!(
                "tshark -z rtp,streams: {tshark:.2} s ({:.0} RTP pkt/s, {streams} G.711 streams found)",
                rtp_packets as f64 / tshark,
            );
            out.insert("tshark_rtp_streams_pps".into(), rtp_packets as f64 / tshark);
            Some(tshark)
        }
        _ => {
            eprintln!("tshark comparison skipped: tshark did not run");
            None
        }
    }
}

/// CPU seconds (user + system) `pid` has used, from /proc.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<u64>() as f64 / hz
}

fn cpu_children_secs() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn live_capacity(out: &mut BTreeMap<String, f64>, dir: &Path, seconds: u32) {
    let steps: Vec<u32> = std::env::var("CALLTAP_BENCH_LIVE_STEPS")
        .unwrap_or_else(|_| "250,500,1000,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // SAFETY: geteuid has no preconditions.
    if steps.is_empty()
        || unsafe { libc::geteuid() } != 0
        || std::process::Command::new("tcpreplay")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("live: skipped (needs root, tcpreplay and CALLTAP_BENCH_LIVE_STEPS)");
        return;
    }
    let Ok(_lab) = calltap_lab::Lab::acquire() else {
        eprintln!("live: lab unavailable");
        return;
    };
    let mut best = 0u32;
    for n in steps {
        let pcap = dir.join(format!("live-{n}.pcap"));
        let rtp = write_load(&pcap, n, seconds);
        let data = dir.join(format!("live-{n}"));
        let daemon = match calltap_lab::daemon::Daemon::start(&data, &["--source", "xdp"], &[]) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("live: calltap did not start: {e:#}");
                break;
            }
        };
        let cpu0 = cpu_children_secs();
        let pid = daemon.pid();
        let daemon_cpu0 = pid.map_or(0.0, process_cpu_secs);
        let t = Instant::now();
        let status = calltap_lab::netns::ns_command(
            calltap_lab::netns::NS_UAC,
            &[
                "tcpreplay",
                "-q",
                "--preload-pcap",
                "-i",
                "a0",
                pcap.to_str().unwrap_or_default(),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
        let gen_cpu = cpu_children_secs() - cpu0;
        let wall = t.elapsed().as_secs_f64();
        let daemon_cpu = pid.map_or(0.0, process_cpu_secs) - daemon_cpu0;
        std::thread::sleep(Duration::from_secs(1));
        // Stopping waits for every call to be finished and its CDR written.
        let summary = daemon.stop().unwrap_or_default();
        let cdrs = calltap_lab::daemon::read_jsonl(&data.join("calls.jsonl")).unwrap_or_default();
        let _ = std::fs::remove_file(&pcap);
        let want = u64::from(seconds) * 50;
        let complete = cdrs
            .iter()
            .filter(|c| {
                c["packets"]["caller"].as_u64() == Some(want)
                    && c["packets"]["callee"].as_u64() == Some(want)
            })
            .count();
        let ring_full = summary["counters"]["ring_full"]
            .as_u64()
            .unwrap_or(u64::MAX);
        let ok = status.is_ok_and(|s| s.success()) && ring_full == 0 && complete == n as usize;
        // The generator shares this 2-core machine: when it cannot send at the capture's own
        // pace, the calls arrive stretched, and only the rate it reached counts.
        let pps = rtp as f64 / wall;
        let realtime_calls = (pps / 100.0).min(f64::from(n));
        eprintln!(
            "live: {n} calls offered, sent at {pps:.0} pkt/s (= {realtime_calls:.0} real-time calls{}): {complete}/{n} calls complete, ring_full {ring_full}, generator CPU {:.0}% of a core{}",
            if realtime_calls < f64::from(n) * 0.9 { ", generator-limited" } else { "" },
            100.0 * gen_cpu / wall,
            if ok { "" } else { "  <- loss" }
        );
        if !ok {
            // Where the loss happened: before XDP (the veth's own drops), in the classifier, or
            // in userspace.
            let veth = calltap_lab::netns::ns_run(
                calltap_lab::netns::NS_REC,
                &["ip", "-s", "link", "show", "m0"],
            )
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
            eprintln!(
                "live: loss detail: offered {} RTP, counters {}, signalling {}, workers {}, m0: {veth}",
                rtp, summary["counters"], summary["signalling"], summary["workers"]
            );
        }
        let _ = std::fs::remove_dir_all(&data);
        if !ok {
            out.insert("live_first_lossy_calls".into(), f64::from(n));
            break;
        }
        best = best.max(realtime_calls as u32);
        out.insert(
            "live_zero_loss_pps".into(),
            out.get("live_zero_loss_pps")
                .copied()
                .unwrap_or(0.0)
                .max(pps),
        );
        out.insert("live_generator_cpu_pct".into(), 100.0 * gen_cpu / wall);
        // Percent of one core per 1,000 real-time calls, all of calltap's threads together.
        let per_1000 = 100.0 * daemon_cpu / wall / (realtime_calls / 1000.0).max(1e-9);
        eprintln!(
            "live: calltap used {:.0}% of a core: {per_1000:.1}% of a core per 1,000 calls",
            100.0 * daemon_cpu / wall
        );
        out.insert("live_cpu_pct_per_1000_calls".into(), per_1000);
    }
    // Real-time-equivalent concurrent calls (100 RTP packets/s each) recorded with zero loss.
    out.insert("zero_loss_calls".into(), f64::from(best));
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let calls = env_num("CALLTAP_BENCH_CALLS", 400) as u32;
    let seconds = env_num("CALLTAP_BENCH_SECONDS", 20) as u32;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut out = BTreeMap::new();
    xdp_costs(&mut out);
    pipeline(&mut out, &dir, calls, seconds);
    rtp_path_allocations(&mut out, &dir);
    live_capacity(
        &mut out,
        &dir,
        env_num("CALLTAP_BENCH_LIVE_SECONDS", 10) as u32,
    );
    out.insert("bench_calls".into(), f64::from(calls));
    out.insert("bench_seconds".into(), f64::from(seconds));
    println!("\n{:<40} {:>16}", "figure", "value");
    for (k, v) in &out {
        println!("{k:<40} {v:>16.1}");
    }
    let json = serde_json::to_string_pretty(&out).expect("json");
    std::fs::write(dir.join("results.json"), json).expect("results.json");
    println!("\nwritten to {}", dir.join("results.json").display());
}
