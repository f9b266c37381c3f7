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
            out.insert(
                "bytes_per_active_call".into(),
                (rss_open.saturating_sub(rss_before) * 1024) as f64 / f64::from(calls.max(1)),
            );
        }
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }
    let _ = std::fs::remove_file(&pcap);
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
