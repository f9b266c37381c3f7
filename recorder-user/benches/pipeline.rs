//! `cargo xtask bench`: CallTap's figures (printed as a table and written to
//! `target/bench/results.json`). Not pass/fail: speed is measured here, never asserted in tests.
//!
//! 1. XDP program cost per packet by class, through `BPF_PROG_TEST_RUN` (needs root).
//! 2. Userspace pipeline throughput: a capture of N concurrent G.711 calls replayed through the
//!    same classifier, signalling and media code as live capture, on one core; recordings are
//!    verified afterwards (every call, every packet; a sample of WAVs sample for sample against
//!    the deterministic payloads of `calltap_lab::load`).
//! 3. Memory per active call: RSS while all N calls are open, over N.
//! 4. Live zero-loss capacity (root): `calltap-loadgen` (tests/src/bin/loadgen.rs) sends N
//!    concurrent calls in real time from the caller namespace into the SPAN lab (the switch
//!    mirrors them to CallTap on XDP), for growing N; the largest N (before the first lossy
//!    step) with no ring-full drop, every call's every packet recorded and a sample of WAVs
//!    sample-exact is reported; every step's figures are kept (`live_step_N_*`), with
//!    the generator's own CPU use and how late it fell behind its schedule (so a generator limit
//!    shows as one). tcpreplay of the same traffic is the fallback when the generator is not
//!    built. Steps: `CALLTAP_BENCH_LIVE_STEPS` (default "250,500,1000,2000"); empty skips.
//!
//! 5. Allocations per RTP packet: a counting global allocator around two replays of the same
//!    calls, one twice as long as the other; the difference over the extra RTP packets is what
//!    the steady-state RTP path allocates (setup, SIP and call end cancel out).
//! 6. The same capture through `tshark -z rtp,streams` (RTP stream analysis, no audio written)
//!    beside CallTap's replay (analysis and recording), as a ratio.
//! 7. CPU per 1,000 calls: calltap's own CPU (from /proc) during each live step.
//! 8. Calls/s of SIP processing: the SIP messages alone of `CALLTAP_BENCH_SIP_CALLS` (default
//!    10,000) calls replayed on one thread: dialog tracking, the recording decision, each
//!    answered call's (silent) WAV made, closed and sealed, and its CDR.
//!
//! 9. The kernel's share of CallTap's CPU (`kernel_cpu_share`): system over user + system time
//!    of the process during the one-worker replay of item 2 (the page-cache work of writing the
//!    recordings is most of the system time).
//!
//! 10. Most calls recorded at once (`max_concurrent_calls_recorded`): `CALLTAP_BENCH_MAX_CALLS`
//!     (default 100,000) short calls all up at the same time (several address pairs, merged in
//!     time order), replayed; every call must get its recording with every packet, a sample of
//!     WAVs sample-exact, and the resident memory per call while all are open is reported
//!     (`max_concurrent_bytes_per_call`).
//!
//! Sizes: `CALLTAP_BENCH_CALLS` (default 400) calls of `CALLTAP_BENCH_SECONDS` (default 20) s.
//! `CALLTAP_BENCH_ONLY=max,sip` runs only those steps (xdp, pipeline, alloc, sip, max, live).

#[path = "../tests/support/frames.rs"]
#[allow(dead_code, reason = "the tests' frame builders; the bench uses some")]
mod frames;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use calltap::{capture::xdp::XdpCapture, classify::MediaTable, config::Config};
use calltap_common::{MediaKey, MediaValue, XdpConfig, MAX_WORKERS, SIGNALLING_RING};
use calltap_lab::load::{check_recording, write_pcap, write_pcap_merged, LoadSpec};
use frames::{eth, ipv4, rtp, udp};

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

/// Resident KiB of process `pid` (memory and file pages it has mapped), without the BPF maps it
/// has mapped: the rings' pages count once written whatever the number of calls, which would
/// hide the part that grows with the calls.
fn rss_without_bpf_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut bpf = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            // A mapping's header: "start-end perms offset dev inode [name]".
            bpf = line.contains("bpf");
        } else if first == "Rss:" && !bpf {
            kib += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(kib)
}

/// Least-squares slope of `y` over `x`; None with fewer than two distinct `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
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
    if let Some(n) = x.verified_instructions() {
        eprintln!("xdp: the verifier went through {n} instructions (its budget: 1,000,000)");
        out.insert("xdp_verified_instructions".into(), f64::from(n));
    }
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
    // Best of 5 runs of 20k repeats, the rings drained after each; None if no run worked.
    let mut best_ns = |x: &XdpCapture, frame: &[u8]| -> Option<f64> {
        let mut best = None::<f64>;
        for _ in 0..5 {
            if let Ok((_, d)) = x.test_run(frame, 20_000) {
                best = Some(best.map_or(d.as_nanos() as f64, |b| b.min(d.as_nanos() as f64)));
            }
            for r in rings.iter_mut() {
                while r.next().is_some() {}
            }
        }
        best
    };
    for (name, frame) in &cases {
        if let Some(ns) = best_ns(&x, frame) {
            out.insert((*name).to_owned(), ns);
        }
    }
    // The same RTP and SIP frames with their rings taken out of the program's ring table: the
    // classifier alone (parse, port bitmaps, media lookup, verdict, counters), without the
    // timestamp, the ring reservation, the copy and the commit that delivery adds.
    if x.unplug_ring(1).is_ok() && x.unplug_ring(SIGNALLING_RING).is_ok() {
        for (name, frame) in [
            ("xdp_ns_classify_rtp", &cases[1].1),
            ("xdp_ns_classify_sip", &cases[0].1),
        ] {
            if let Some(ns) = best_ns(&x, frame) {
                out.insert(name.to_owned(), ns);
            }
        }
        for class in ["rtp", "sip"] {
            let (Some(all), Some(alone)) = (
                out.get(&format!("xdp_ns_per_packet_{class}")),
                out.get(&format!("xdp_ns_classify_{class}")),
            ) else {
                continue;
            };
            eprintln!(
                "xdp: {class}: {all} ns per packet = {alone} ns classifying + {} ns delivering (timestamp, ring reserve, copy, commit)",
                all - alone
            );
        }
    }
}

/// N concurrent calls, both directions 50 packets/s for `seconds`, written in time order by
/// the lab's call model (the same traffic `calltap-loadgen` sends live). Returns the RTP
/// packets written and the model, which the checks use to know what every recording must hold.
fn write_load(path: &Path, calls: u32, seconds: u32) -> (u64, LoadSpec) {
    let spec = LoadSpec::new(calls, seconds);
    let written = write_pcap(path, &spec, None).expect("write load pcap");
    assert_eq!(written.rtp, spec.rtp_packets(), "load pcap incomplete");
    (written.rtp, spec)
}

/// Calls/s of SIP processing (see the module docs): the load's SIP messages, without its RTP,
/// replayed on one thread.
fn sip_calls_per_second(out: &mut BTreeMap<String, f64>, dir: &Path) {
    use pcap_file::pcap::{PcapReader, PcapWriter};
    let calls = env_num("CALLTAP_BENCH_SIP_CALLS", 10_000) as u32;
    let full = dir.join("sip-full.pcap");
    let sip = dir.join("sip-only.pcap");
    let spec = LoadSpec::new(calls, 1);
    write_pcap(&full, &spec, None).expect("write load pcap");
    // The generator's frames: Ethernet, IPv4 without options, UDP; SIP is on spec.sip_port.
    let sip_port = spec.sip_port.to_be_bytes();
    let mut reader = PcapReader::new(std::fs::File::open(&full).expect("open")).expect("pcap");
    let mut writer = PcapWriter::with_header(
        std::io::BufWriter::new(std::fs::File::create(&sip).expect("create")),
        reader.header(),
    )
    .expect("pcap writer");
    let mut messages = 0u64;
    while let Some(p) = reader.next_packet() {
        let p = p.expect("packet");
        let ports = p.data.get(34..38).unwrap_or(&[]);
        if ports.len() == 4 && (ports[..2] == sip_port || ports[2..] == sip_port) {
            writer.write_packet(&p).expect("write");
            messages += 1;
        }
    }
    drop(writer);
    let _ = std::fs::remove_file(&full);
    // Recorded (a file made, closed, fsync'd and hashed per call: the disk's share shows), and
    // with `[recording] default = skip` (the signalling alone).
    use calltap::rules::RuleAction;
    for (mode, key) in [
        (RuleAction::Record, "sip_calls_per_second"),
        (RuleAction::Skip, "sip_calls_per_second_unrecorded"),
    ] {
        let mut cfg = Config::load_with_env(None, &[]).expect("config");
        cfg.storage.data_dir = dir.join("data-sip");
        let _ = std::fs::remove_dir_all(&cfg.storage.data_dir);
        cfg.capture.workers = 1;
        cfg.recording.default = mode;
        let mut cdrs = 0u64;
        let mut recorded = 0u64;
        let t = Instant::now();
        let summary = calltap::daemon::replay::replay(&cfg, std::slice::from_ref(&sip), |cdr| {
            cdrs += 1;
            recorded += u64::from(cdr.recording.as_ref().is_some_and(|r| !r.sha256.is_empty()));
        });
        let secs = t.elapsed().as_secs_f64();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        let want = if mode == RuleAction::Record { calls } else { 0 };
        assert_eq!(
            (cdrs, recorded),
            (u64::from(calls), u64::from(want)),
            "every call a CDR, and a sealed recording when recorded"
        );
        let rate = f64::from(calls) / secs;
        eprintln!(
            "sip: {calls} calls ({messages} SIP messages), recording {mode:?}: {secs:.2} s, {rate:.0} calls/s"
        );
        out.insert(key.into(), rate);
        let _ = std::fs::remove_dir_all(&cfg.storage.data_dir);
    }
    let _ = std::fs::remove_file(&sip);
}

/// Up to `n` CDRs spread over the run (first, last and between): WAV checks are a sample
/// because decoding every recording would dominate the bench.
fn sample<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    (0..n)
        .map(|i| items[i * (items.len() - 1) / (n - 1).max(1)].clone())
        .collect()
}

/// Checks recordings (Call-ID, WAV path) sample for sample against the audio the model sent:
/// caller left, callee right. Returns how many were checked; Err names the first bad one.
fn verify_wavs(spec: &LoadSpec, recordings: &[(String, PathBuf)]) -> Result<usize, String> {
    for (call_id, path) in recordings {
        let call = spec
            .call_index(call_id)
            .ok_or_else(|| format!("{call_id}: not a call of this run"))?;
        let mut wav =
            hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let samples: Vec<i16> = wav
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        check_recording(spec, call, &samples)
            .map_err(|e| format!("{} ({call_id}): {e:#}", path.display()))?;
    }
    Ok(recordings.len())
}

fn pipeline(out: &mut BTreeMap<String, f64>, dir: &Path, calls: u32, seconds: u32) {
    let pcap = dir.join("load.pcap");
    let t = Instant::now();
    let (rtp_packets, spec) = write_load(&pcap, calls, seconds);
    eprintln!(
        "pipeline: wrote {} calls x {seconds} s ({rtp_packets} RTP packets) in {:.1?}",
        calls,
        t.elapsed()
    );
    let tshark = tshark_secs(out, &pcap, rtp_packets);
    for workers in [1u32, 2] {
        let mut cfg = Config::load_with_env(None, &[]).expect("config");
        cfg.storage.data_dir = dir.join(format!("data-{workers}"));
        let _ = std::fs::remove_dir_all(&cfg.storage.data_dir);
        cfg.capture.workers = workers;
        let rss_before = rss_kib();
        let mut rss_open = 0;
        let mut cdrs = Vec::new();
        let mut recordings = Vec::new();
        let mut recorded_bytes = 0u64;
        let cpu_before = own_cpu();
        let t = Instant::now();
        let summary = calltap::daemon::replay::replay(&cfg, std::slice::from_ref(&pcap), |cdr| {
            if cdrs.is_empty() {
                // The first CDR comes when the first BYE is processed: all calls are still open.
                rss_open = rss_kib();
            }
            cdrs.push((cdr.packets.caller, cdr.packets.callee));
            if let Some(rec) = &cdr.recording {
                recordings.push((cdr.call_id.clone(), rec.path.clone()));
                recorded_bytes += rec.bytes;
            }
        });
        let secs = t.elapsed().as_secs_f64();
        let (user, system) = own_cpu();
        let (user, system) = (user - cpu_before.0, system - cpu_before.1);
        let complete = cdrs
            .iter()
            .filter(|(a, b)| *a == u64::from(seconds) * 50 && *b == u64::from(seconds) * 50)
            .count();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        let wavs = verify_wavs(&spec, &sample(&recordings, 5))
            .unwrap_or_else(|e| panic!("pipeline: a recording differs from what was sent: {e}"));
        eprintln!(
            "pipeline: {workers} worker(s) (inline, one core): {:.2} s, {:.0} RTP pkt/s, {} of {} calls complete, {wavs} WAVs sample-exact",
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
            let share = system / (user + system).max(1e-9);
            eprintln!(
                "pipeline: CPU {user:.2} s user + {system:.2} s system: the kernel's share {:.0}%, {:.3} CPU s per call-minute",
                share * 100.0,
                (user + system) / (f64::from(calls) * f64::from(seconds) / 60.0)
            );
            out.insert("kernel_cpu_share".into(), share);
            out.insert(
                "cpu_s_per_call_minute".into(),
                (user + system) / (f64::from(calls.max(1)) * f64::from(seconds.max(1)) / 60.0),
            );
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
            // What each call costs the disk while it runs (stereo 16-bit WAV, 8 kHz here).
            let per_call_second =
                recorded_bytes as f64 / (f64::from(calls.max(1)) * f64::from(seconds.max(1)));
            eprintln!("pipeline: {per_call_second:.0} bytes written per call per second");
            out.insert("disk_bytes_per_call_second".into(), per_call_second);
            out.insert(
                "bytes_per_active_call".into(),
                (rss_open.saturating_sub(rss_before) * 1024) as f64 / f64::from(calls.max(1)),
            );
        }
        let _ = std::fs::remove_dir_all(&cfg.storage.data_dir);
    }
    let _ = std::fs::remove_file(&pcap);
}

/// One worker's replay of `pcap` into `dir`: (seconds, allocations, calls complete).
fn replay_once(dir: &Path, pcap: &Path, want: u64) -> (f64, u64, usize) {
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.storage.data_dir = dir.to_path_buf();
    let _ = std::fs::remove_dir_all(dir);
    cfg.capture.workers = 1;
    let mut complete = 0;
    let a0 = allocations();
    let t = Instant::now();
    let summary = calltap::daemon::replay::replay(&cfg, &[pcap.to_path_buf()], |cdr| {
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
        let (rtp, _) = write_load(&pcap, calls, seconds);
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
                // Older tshark names the payload "ITU-T G.711 PCMU", newer "g711U".
                .filter(|l| l.contains("G.711 PCMU") || l.contains("g711U"))
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

/// This process's user and system CPU seconds so far (every thread).
fn own_cpu() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

/// Item 10 of the module docs: `n` calls of 1 s, all up at once, replayed on one worker.
fn max_concurrent(out: &mut BTreeMap<String, f64>, dir: &Path, n: u32) {
    if n == 0 {
        return;
    }
    // One address pair's media ports hold 20,000 calls; each pair is its own run.
    const PER_PAIR: u32 = 20_000;
    let specs: Vec<LoadSpec> = (0..n.div_ceil(PER_PAIR))
        .map(|k| {
            let mut s = LoadSpec::new(PER_PAIR.min(n - k * PER_PAIR), 1);
            // All started within 0.2 s, each talking for 1 s: all up at once from 0.2 s on.
            s.rate = f64::from(PER_PAIR) * 5.0;
            s.uac_ip = std::net::Ipv4Addr::new(198, 18, 100 + k as u8, 1);
            s.uas_ip = std::net::Ipv4Addr::new(198, 18, 100 + k as u8, 2);
            s.run = 1000 + k;
            s
        })
        .collect();
    let pcap = dir.join("max-concurrent.pcap");
    let t = Instant::now();
    let written = write_pcap_merged(&pcap, &specs, None).expect("write the capture");
    eprintln!(
        "max concurrent: {n} calls, {} RTP packets written in {:.1?}",
        written.rtp,
        t.elapsed()
    );
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.storage.data_dir = dir.join("data-max");
    let _ = std::fs::remove_dir_all(&cfg.storage.data_dir);
    cfg.capture.workers = 1;
    let rss_before = rss_kib();
    let mut rss_open = 0;
    let mut recorded = 0u32;
    let mut recordings = Vec::new();
    let want = 50u64;
    let t = Instant::now();
    let summary = calltap::daemon::replay::replay(&cfg, std::slice::from_ref(&pcap), |cdr| {
        if rss_open == 0 {
            // The first CDR comes at the first BYE, when every call is up.
            rss_open = rss_kib();
        }
        let complete = cdr.packets.caller == want && cdr.packets.callee == want;
        if let Some(rec) = cdr
            .recording
            .as_ref()
            .filter(|r| complete && r.error.is_none())
        {
            recorded += 1;
            if recordings.len() < 5 || recorded.is_multiple_of(20_000) {
                recordings.push((cdr.call_id.clone(), rec.path.clone()));
            }
        }
    });
    let secs = t.elapsed().as_secs_f64();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let by_run = |call_id: &str| {
        specs
            .iter()
            .find(|s| s.call_index(call_id).is_some())
            .cloned()
    };
    for (call_id, path) in &recordings {
        let spec = by_run(call_id).expect("a call of the run");
        verify_wavs(&spec, &[(call_id.to_string(), path.clone())])
            .unwrap_or_else(|e| panic!("max concurrent: {e}"));
    }
    let per_call = (rss_open.saturating_sub(rss_before) * 1024) as f64 / f64::from(n);
    eprintln!(
        "max concurrent: {recorded} of {n} calls recorded complete in {secs:.1} s; resident memory {:.1} KiB per call while all were up; {} WAVs sample-exact",
        per_call / 1024.0,
        recordings.len()
    );
    out.insert("max_concurrent_calls_recorded".into(), f64::from(recorded));
    out.insert("max_concurrent_calls_offered".into(), f64::from(n));
    out.insert("max_concurrent_bytes_per_call".into(), per_call);
    out.insert("max_concurrent_replay_secs".into(), secs);
    let _ = std::fs::remove_dir_all(&cfg.storage.data_dir);
    let _ = std::fs::remove_file(&pcap);
}

/// utime + stime of a /proc `stat` file, in seconds.
fn process_cpu_secs_at(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
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

/// CPU seconds (user + system) the threads of `pid` whose name starts with `prefix` have used.
fn threads_cpu_secs(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
        .map(|tid| process_cpu_secs_at(&format!("/proc/{pid}/task/{tid}/stat")))
        .sum()
}

/// CPU seconds (user + system) `pid` has used, from /proc.
fn process_cpu_secs(pid: u32) -> f64 {
    process_cpu_secs_at(&format!("/proc/{pid}/stat"))
}

fn cpu_children_secs() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// The generator binary (`cargo xtask bench` builds it in release and passes
/// `CALLTAP_LOADGEN_BIN`); None when it is not built.
fn loadgen_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("CALLTAP_LOADGEN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/calltap-loadgen"));
    bin.is_file().then_some(bin)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// What the generator of one live step did.
struct Sent {
    /// It sent every frame of the run (and exited cleanly).
    complete: bool,
    rtp: u64,
    /// Wall-clock seconds it took, against the schedule's own length.
    wall: f64,
    schedule: f64,
    cpu_pct: f64,
    late_max_ms: f64,
    late_p99_ms: f64,
}

/// Plays one step with `calltap-loadgen` in the caller namespace (real time, sendmmsg).
fn send_with_loadgen(bin: &Path, dir: &Path, spec: &LoadSpec) -> Sent {
    let stats_path = dir.join(format!("loadgen-{}.json", spec.run));
    let _ = std::fs::remove_file(&stats_path);
    let mut argv: Vec<String> = vec![bin.display().to_string()];
    for (k, v) in [
        ("--interface", "a0".to_owned()),
        ("--calls", spec.calls.to_string()),
        ("--seconds", spec.seconds.to_string()),
        ("--rate", spec.rate.to_string()),
        ("--run", spec.run.to_string()),
        ("--stats-json", stats_path.display().to_string()),
    ] {
        argv.push(k.to_owned());
        argv.push(v);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = calltap_lab::netns::ns_command(calltap_lab::netns::NS_UAC, &argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn();
    // The generator bounds itself (schedule + 30 s); this bounds the bench if it hangs anyway.
    let limit = spec.duration() + Duration::from_secs(60);
    let status = child
        .map_err(anyhow::Error::from)
        .and_then(|mut c| calltap_lab::sipp::wait_bounded(&mut c, limit));
    let stats: serde_json::Value = std::fs::read_to_string(&stats_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let num = |k: &str| stats[k].as_f64().unwrap_or(0.0);
    Sent {
        complete: matches!(status, Ok(Some(s)) if s.success())
            && stats["complete"].as_bool() == Some(true),
        rtp: stats["rtp"].as_u64().unwrap_or(0),
        wall: num("wall_secs"),
        schedule: num("schedule_secs"),
        cpu_pct: num("cpu_pct"),
        late_max_ms: num("late_max_ms"),
        late_p99_ms: num("late_p99_ms"),
    }
}

/// The fallback when the generator is not built: the same traffic as a pcap through
/// `tcpreplay` (which tops out near 40k packets/s here, so the figure is the player's).
fn send_with_tcpreplay(dir: &Path, spec: &LoadSpec) -> Sent {
    let pcap = dir.join(format!("live-{}.pcap", spec.calls));
    let rtp = write_pcap(&pcap, spec, None).map_or(0, |w| w.rtp);
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
    let wall = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&pcap);
    Sent {
        complete: status.is_ok_and(|s| s.success()),
        rtp,
        wall,
        schedule: spec.duration().as_secs_f64(),
        cpu_pct: 100.0 * (cpu_children_secs() - cpu0) / wall.max(1e-9),
        late_max_ms: f64::NAN,
        late_p99_ms: f64::NAN,
    }
}

/// Live capacity with each number of media workers in `CALLTAP_BENCH_LIVE_WORKERS` (default
/// 1 and 2): every figure gets a `_{n}w` suffix, and the run with the most workers (one per CPU
/// here, the default configuration) also writes the figures without a suffix.
fn live_capacity_by_workers(out: &mut BTreeMap<String, f64>, dir: &Path, seconds: u32) {
    let mut workers: Vec<u32> = std::env::var("CALLTAP_BENCH_LIVE_WORKERS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|w| (1..=8).contains(w))
        .collect();
    workers.sort_unstable();
    workers.dedup();
    let most = workers.last().copied();
    for w in workers {
        eprintln!("live: {w} media worker(s)");
        let mut figures = BTreeMap::new();
        live_capacity(&mut figures, dir, seconds, w);
        for (k, v) in figures {
            if CAPACITY.contains(&k.as_str()) {
                let best = out.entry(k.clone()).or_insert(v);
                *best = best.max(v);
            } else if Some(w) == most {
                out.insert(k.clone(), v);
            }
            out.insert(format!("{k}_{w}w"), v);
        }
    }
}

/// Capacity is the best configuration's: these unsuffixed keys take the largest figure of any
/// worker count (the other unsuffixed live keys are the most workers' figures).
const CAPACITY: [&str; 3] = [
    "zero_loss_calls",
    "live_zero_loss_pps",
    "live_rtp_pps_per_worker_core",
];

fn live_capacity(out: &mut BTreeMap<String, f64>, dir: &Path, seconds: u32, workers: u32) {
    let steps: Vec<u32> = std::env::var("CALLTAP_BENCH_LIVE_STEPS")
        .unwrap_or_else(|_| "250,500,1000,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let loadgen = loadgen_bin();
    let tcpreplay = std::process::Command::new("tcpreplay")
        .arg("--version")
        .output()
        .is_ok();
    // SAFETY: geteuid has no preconditions.
    if steps.is_empty() || unsafe { libc::geteuid() } != 0 || (loadgen.is_none() && !tcpreplay) {
        eprintln!(
            "live: skipped (needs root, calltap-loadgen or tcpreplay, and CALLTAP_BENCH_LIVE_STEPS)"
        );
        return;
    }
    match &loadgen {
        Some(bin) => eprintln!("live: generator {}", bin.display()),
        None => eprintln!(
            "live: calltap-loadgen not built (cargo build -p calltap-lab --release --bin calltap-loadgen): falling back to tcpreplay"
        ),
    }
    out.insert(
        "live_generator_tcpreplay".into(),
        f64::from(u8::from(loadgen.is_none())),
    );
    let Ok(_lab) = calltap_lab::Lab::acquire() else {
        eprintln!("live: lab unavailable");
        return;
    };
    let mut best = 0u32;
    // (calls, resident KiB with all of them open), for the memory slope.
    let mut memory = Vec::new();
    // Set at the first lossy step: zero_loss_calls counts only the steps before it.
    let mut lossy = false;
    for n in steps {
        let mut spec = LoadSpec::new(n, seconds);
        // Each step is its own run: Call-IDs, SSRCs and payloads differ from the last step's.
        spec.run = n;
        let data = dir.join(format!("live-{n}"));
        let workers_env = workers.to_string();
        let daemon = match calltap_lab::daemon::Daemon::start(
            &data,
            &["--source", "xdp"],
            &[("CALLTAP_CAPTURE_WORKERS", &workers_env)],
        ) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("live: calltap did not start: {e:#}");
                break;
            }
        };
        let pid = daemon.pid();
        let daemon_cpu0 = pid.map_or(0.0, process_cpu_secs);
        let media_cpu0 = pid.map_or(0.0, |p| threads_cpu_secs(p, "media-"));
        // Memory with every call of the step open: sampled halfway through the calls (they all
        // start within the first second).
        let sampler = pid.map(|pid| {
            let at = Duration::from_secs_f64(f64::from(seconds) / 2.0 + 0.5);
            std::thread::spawn(move || {
                std::thread::sleep(at);
                rss_without_bpf_kib(pid)
            })
        });
        let t = Instant::now();
        let sent = match &loadgen {
            Some(bin) => send_with_loadgen(bin, dir, &spec),
            None => send_with_tcpreplay(dir, &spec),
        };
        let wall = t.elapsed().as_secs_f64();
        let daemon_cpu = pid.map_or(0.0, process_cpu_secs) - daemon_cpu0;
        // The media workers' own CPU: what the RTP flood costs userspace (the classifier ran in
        // XDP, in the kernel's receive path, charged to whoever ran it).
        let media_cpu = pid.map_or(0.0, |p| threads_cpu_secs(p, "media-")) - media_cpu0;
        let resident = sampler.and_then(|s| s.join().ok().flatten());
        if let Some(kib) = resident {
            out.insert(format!("live_step_{n}_rss_bytes"), kib as f64 * 1024.0);
        }
        std::thread::sleep(Duration::from_secs(1));
        // Stopping waits for every call to be finished and its CDR written.
        let summary = daemon.stop().unwrap_or_default();
        let cdrs = calltap_lab::daemon::read_jsonl(&data.join("calls.jsonl")).unwrap_or_default();
        let want = u64::from(spec.packets_per_direction());
        let complete = cdrs
            .iter()
            .filter(|c| {
                c["packets"]["caller"].as_u64() == Some(want)
                    && c["packets"]["callee"].as_u64() == Some(want)
            })
            .count();
        // Packets the CDRs lack, per direction: where the loss is when there is some.
        let missing = |side: &str| {
            cdrs.iter()
                .map(|c| want.saturating_sub(c["packets"][side].as_u64().unwrap_or(0)))
                .sum::<u64>()
                + want * (u64::from(n).saturating_sub(cdrs.len() as u64))
        };
        let (missing_caller, missing_callee) = (missing("caller"), missing("callee"));
        let recordings: Vec<(String, PathBuf)> = cdrs
            .iter()
            .filter_map(|c| {
                Some((
                    c["call_id"].as_str()?.to_owned(),
                    PathBuf::from(c["recording"]["path"].as_str()?),
                ))
            })
            .collect();
        let wavs = verify_wavs(&spec, &sample(&recordings, 3));
        let ring_full = summary["counters"]["ring_full"]
            .as_u64()
            .unwrap_or(u64::MAX);
        let ok = sent.complete && ring_full == 0 && complete == n as usize && wavs.is_ok();
        // The slope is taken over the steps CallTap kept up with: a saturated step also holds
        // the backlog (calls prepared and not yet fed, late pages), which is not per call.
        if let (Some(kib), true) = (resident, ok) {
            memory.push((f64::from(n), kib as f64 * 1024.0));
        }
        // A generator that cannot keep its schedule stretches the calls: only the rate it
        // reached counts, as real-time calls (100 RTP packets/s each).
        let stretch = (sent.wall / sent.schedule.max(1e-9)).max(1.0);
        let realtime_calls = f64::from(n) / stretch;
        let pps = sent.rtp as f64 / sent.wall.max(1e-9);
        eprintln!(
            "live: {n} calls offered, {} RTP sent at {pps:.0} pkt/s in {:.2} s for a {:.2} s schedule (= {realtime_calls:.0} real-time calls{}), generator CPU {:.0}% of a core, late max {:.1} ms p99 {:.1} ms: {complete}/{n} calls complete, ring_full {ring_full}, WAVs {}{}",
            sent.rtp,
            sent.wall,
            sent.schedule,
            if realtime_calls < f64::from(n) * 0.9 { ", generator-limited" } else { "" },
            sent.cpu_pct,
            sent.late_max_ms,
            sent.late_p99_ms,
            match &wavs {
                Ok(k) => format!("{k} sample-exact"),
                Err(e) => format!("WRONG: {e}"),
            },
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
                "live: loss detail: generator complete {}, offered {} RTP, {} CDRs missing {missing_caller} caller and {missing_callee} callee packets, counters {}, signalling {}, workers {}, m0: {veth}",
                sent.complete,
                spec.rtp_packets(),
                cdrs.len(),
                summary["counters"],
                summary["signalling"],
                summary["workers"]
            );
        }
        let _ = std::fs::remove_dir_all(&data);
        // Each step starts from a settled file system: the last step's recordings written back
        // and its deletions done, not competing with the next step's call starts.
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        std::thread::sleep(Duration::from_secs(2));
        // Per step, so the table shows where loss starts and what each side spent on the way:
        // the steps go on after the first loss (they are bounded by the list), because the
        // generator's own figures at higher rates say whether it or CallTap is the limit.
        let daemon_pct = 100.0 * daemon_cpu / wall;
        for (key, value) in [
            ("complete_calls", complete as f64),
            ("generator_cpu_pct", sent.cpu_pct),
            ("generator_late_p99_ms", sent.late_p99_ms),
            ("generator_late_max_ms", sent.late_max_ms),
            ("generator_pps", pps),
            ("calltap_cpu_pct", daemon_pct),
            ("media_cpu_pct", 100.0 * media_cpu / wall),
        ] {
            out.insert(format!("live_step_{n}_{key}"), value);
        }
        if !ok || lossy {
            if !lossy {
                out.insert("live_first_lossy_calls".into(), f64::from(n));
                out.insert("live_first_lossy_generator_cpu_pct".into(), sent.cpu_pct);
                out.insert(
                    "live_first_lossy_generator_late_max_ms".into(),
                    sent.late_max_ms,
                );
            }
            lossy = true;
            continue;
        }
        best = best.max(realtime_calls as u32);
        out.insert(
            "live_zero_loss_pps".into(),
            out.get("live_zero_loss_pps")
                .copied()
                .unwrap_or(0.0)
                .max(pps),
        );
        // The generator's figures at the largest zero-loss step: how close it was to its own
        // limit when CallTap's was measured.
        out.insert("live_generator_cpu_pct".into(), sent.cpu_pct);
        out.insert("live_generator_late_max_ms".into(), sent.late_max_ms);
        out.insert("live_generator_late_p99_ms".into(), sent.late_p99_ms);
        out.insert("live_generator_pps".into(), pps);
        // Percent of one core per 1,000 real-time calls, all of calltap's threads together.
        let per_1000 = daemon_pct / (realtime_calls / 1000.0).max(1e-9);
        eprintln!(
            "live: calltap used {daemon_pct:.0}% of a core: {per_1000:.1}% of a core per 1,000 calls"
        );
        out.insert("live_cpu_pct_per_1000_calls".into(), per_1000);
        // RTP packets per second of media-worker CPU: the worker-core figure of the live path,
        // the rate one worker core would carry if this step's cost per packet held.
        if media_cpu > 0.0 {
            let per_core = sent.rtp as f64 / media_cpu;
            eprintln!(
                "live: the media worker(s) used {media_cpu:.2} CPU s for {} RTP packets: {per_core:.0} RTP pkt/s per worker core",
                sent.rtp
            );
            out.insert("live_rtp_pps_per_worker_core".into(), per_core);
        }
    }
    // Real-time-equivalent concurrent calls (100 RTP packets/s each) recorded with zero loss.
    out.insert("zero_loss_calls".into(), f64::from(best));
    // Memory per active call: how resident memory grows with the calls open (the fixed part,
    // rings aside, is the intercept).
    if let Some(per_call) = slope(&memory) {
        eprintln!(
            "live: resident memory grows {:.1} KiB per active call ({} zero-loss steps)",
            per_call / 1024.0,
            memory.len()
        );
        out.insert("bytes_per_active_call_slope".into(), per_call);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let calls = env_num("CALLTAP_BENCH_CALLS", 400) as u32;
    let seconds = env_num("CALLTAP_BENCH_SECONDS", 20) as u32;
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut out = BTreeMap::new();
    // `CALLTAP_BENCH_ONLY=max,sip` runs only those steps (xdp, pipeline, alloc, sip, max,
    // live); the figures are merged into the existing results.json.
    let only = std::env::var("CALLTAP_BENCH_ONLY").unwrap_or_default();
    let run = |step: &str| only.is_empty() || only.split(',').any(|s| s.trim() == step);
    if !only.is_empty() {
        if let Ok(old) = std::fs::read_to_string(dir.join("results.json")) {
            out = serde_json::from_str(&old).unwrap_or_default();
        }
    }
    if run("xdp") {
        xdp_costs(&mut out);
    }
    if run("pipeline") {
        pipeline(&mut out, &dir, calls, seconds);
    }
    if run("alloc") {
        rtp_path_allocations(&mut out, &dir);
    }
    if run("sip") {
        sip_calls_per_second(&mut out, &dir);
    }
    if run("max") {
        max_concurrent(
            &mut out,
            &dir,
            env_num("CALLTAP_BENCH_MAX_CALLS", 100_000) as u32,
        );
    }
    if run("live") {
        live_capacity_by_workers(
            &mut out,
            &dir,
            env_num("CALLTAP_BENCH_LIVE_SECONDS", 10) as u32,
        );
    }
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
