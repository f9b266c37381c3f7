//! `calltap-loadgen`: sends N concurrent G.711 calls ([`calltap_lab::load`]) in real time out
//! of one interface, or writes the same traffic to a pcap.
//!
//! Live, it is meant to run in the lab's caller namespace (`ip netns exec ct-uac
//! calltap-loadgen --interface a0 ...`): the switch mirrors what it sends to CallTap. It exists
//! because tcpreplay (one `send` per packet, timing every packet) tops out near 40k packets/s
//! on the lab machine, well below what CallTap records, so the capacity figure measured the
//! player. Here frames are built into a fixed pool of buffers and handed to an AF_PACKET socket
//! in `sendmmsg` batches, paced per tick (default 20 ms, the RTP packet interval; see
//! [`calltap_lab::tx`]): sleep until the tick, then send everything due by then. Every call's
//! packets stay exactly 20 ms apart (each call's packets fall in the same phase of every
//! tick), and the run reports how late it fell behind its schedule and the CPU it used, so a
//! bench can tell a generator limit from a recorder limit.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use calltap_lab::{
    load::{write_pcap, Generator, LoadSpec, Written},
    tx::{cpu_secs, parse_mac, send_paced, PacketSocket},
};
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
    /// Hostile answers: every 200 OK's SDP names IP:PORT (e.g. a proxy's SIP port) instead of
    /// the callee, and the caller's RTP goes there.
    #[arg(long)]
    answer_media: Option<SocketAddrV4>,
    /// Silence suppression: send one 20 ms slot in N (timestamps run on, sequence numbers
    /// stay consecutive).
    #[arg(long, default_value_t = 1)]
    send_every: u32,
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
    spec.answer_media = args.answer_media;
    spec.send_every = args.send_every;
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
        let cpu1 = cpu_secs();
        let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
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

/// Sends the run in real time; returns its figures.
fn send_live(args: &Args, interface: &str, spec: &mut LoadSpec) -> Result<serde_json::Value> {
    let sock = PacketSocket::open(interface)?;
    spec.src_mac = sock.mac();
    spec.dst_mac = match &args.dst_mac {
        Some(text) => parse_mac(text)?,
        None => sock.mac(),
    };
    let mut generator = Generator::new(spec.clone())?;
    let mut written = Written::default();
    // Bounded: the schedule plus setup and teardown, and a margin for a machine that cannot
    // keep up; past it the run stops and says so.
    let paced = send_paced(
        &sock,
        &mut generator,
        spec.end_ns(),
        args.tick_ms * 1_000_000,
        args.batch,
        Duration::from_secs(30),
        |frame, len| written.count(frame, len),
    )?;
    let expected = spec.rtp_packets() + spec.sip_packets();
    let mut stats = paced.to_json();
    if let Some(s) = stats.as_object_mut() {
        s.extend(
            json!({
                "mode": "live",
                "interface": interface,
                "rtp": written.rtp,
                "sip": written.sip,
                "complete": !paced.gave_up && written.frames == expected,
                "schedule_secs": spec.end_ns() as f64 / 1e9,
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
    }
    Ok(stats)
}
