//! `calltap-attack`: the hostile traffic of the attack lab (issue #14), sent in real time out
//! of one interface with the same AF_PACKET `sendmmsg` sender as `calltap-loadgen`.
//!
//! ```text
//! calltap-attack send --kind invite-flood|random-rtp|fragments|tcp-dribble --rate PPS --seconds S --interface a0
//! calltap-attack spoof-bye --interface a0 --calls N --delay-ms 500 --seconds 60
//! ```
//!
//! Meant to run in the lab's caller namespace: the switch mirrors what it sends to CallTap and
//! then drops it (every frame is addressed to the sender's own MAC), so no host answers. Each
//! run is bounded in frames and time and writes its figures (frames, the rate actually held,
//! lateness, CPU) as JSON, so a test can report the rate a scenario held.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use calltap_lab::{
    attack::{Attack, AttackSpec, Kind},
    spoof::{spoofed_bye, Dialog, Spoof},
    tx::{parse_mac, send_paced, Batch, PacketSocket, Sniffer, MAX_FRAME},
};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "calltap-attack",
    about = "Sends the hostile traffic of CallTap's attack lab through an AF_PACKET socket"
)]
struct Args {
    /// Send out of (and, for spoof-bye, listen on) this interface.
    #[arg(long, global = true, default_value = "a0")]
    interface: String,
    /// Write the run's figures here as JSON (they are also printed on stderr).
    #[arg(long, global = true)]
    stats_json: Option<PathBuf>,
    /// Destination MAC of every frame [default: the interface's own, so the switch mirrors it
    /// and then drops it].
    #[arg(long, global = true)]
    dst_mac: Option<String>,
    #[command(subcommand)]
    what: What,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KindArg {
    InviteFlood,
    RandomRtp,
    Fragments,
    TcpDribble,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Constant-rate hostile traffic.
    Send {
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Frames per second.
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        seconds: f64,
        /// The proxy the ordinary calls go through.
        #[arg(long, default_value = "198.18.0.2")]
        target: std::net::Ipv4Addr,
        /// TCP directions dribbled in parallel (tcp-dribble).
        #[arg(long, default_value_t = 1000)]
        flows: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Pacing tick in milliseconds.
        #[arg(long, default_value_t = 5)]
        tick_ms: u64,
    },
    /// Learns dialogs from the 200 OKs to INVITEs crossing the interface and, `delay-ms`
    /// later, sends a BYE for each from an address off its path and one to such an address.
    SpoofBye {
        /// Dialogs to spoof; the run ends when all have been.
        #[arg(long)]
        calls: u32,
        #[arg(long, default_value_t = 500)]
        delay_ms: u64,
        /// The run ends after this long whatever it has done.
        #[arg(long)]
        seconds: u64,
    },
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(stats) => {
            eprintln!("calltap-attack: {stats}");
            if let Some(path) = &args.stats_json {
                if let Err(e) = std::fs::write(path, stats.to_string()) {
                    eprintln!("calltap-attack: writing {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
            if !stats["complete"].as_bool().unwrap_or(false) {
                std::process::exit(2);
            }
        }
        Err(e) => {
            eprintln!("calltap-attack: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<Value> {
    let sock = PacketSocket::open(&args.interface)?;
    let macs = (
        sock.mac(),
        match &args.dst_mac {
            Some(text) => parse_mac(text)?,
            None => sock.mac(),
        },
    );
    match &args.what {
        What::Send {
            kind,
            rate,
            seconds,
            target,
            flows,
            seed,
            tick_ms,
        } => {
            let kind = match kind {
                KindArg::InviteFlood => Kind::InviteFlood,
                KindArg::RandomRtp => Kind::RandomRtp,
                KindArg::Fragments => Kind::Fragments,
                KindArg::TcpDribble => Kind::TcpDribble,
            };
            let mut spec = AttackSpec::new(kind, *rate, *seconds);
            spec.target = *target;
            spec.flows = *flows;
            spec.seed = *seed;
            (spec.src_mac, spec.dst_mac) = macs;
            let mut attack = Attack::new(spec.clone())?;
            let paced = send_paced(
                &sock,
                &mut attack,
                spec.end_ns(),
                tick_ms * 1_000_000,
                256,
                Duration::from_secs(30),
                |_, _| {},
            )?;
            let mut stats = paced.to_json();
            merge(
                &mut stats,
                json!({
                    "kind": kind.name(),
                    "rate": spec.rate,
                    "seconds": spec.seconds,
                    "expected_frames": spec.frames(),
                    "datagrams": spec.datagrams(),
                    "flows": spec.flows,
                    "complete": !paced.gave_up && paced.frames == spec.frames(),
                }),
            );
            Ok(stats)
        }
        What::SpoofBye {
            calls,
            delay_ms,
            seconds,
        } => spoof_byes(args, &sock, macs, *calls, *delay_ms, *seconds),
    }
}

/// Watches the wire for answered dialogs and spoofs a BYE of each kind for each, `delay_ms`
/// after its answer; bounded by `calls` dialogs and `seconds`.
fn spoof_byes(
    args: &Args,
    sock: &PacketSocket,
    macs: ([u8; 6], [u8; 6]),
    calls: u32,
    delay_ms: u64,
    seconds: u64,
) -> Result<Value> {
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    let sniffer = Sniffer::open(&args.interface, Duration::from_millis(20))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let delay = Duration::from_millis(delay_ms);
    let mut seen: HashSet<String> = HashSet::new();
    let mut due: Vec<(Instant, Dialog)> = Vec::new();
    let mut batch = Batch::new(2);
    let mut frame = vec![0u8; 65_536];
    let (mut sent, mut spoofed, mut n) = (0u64, 0u32, 0u32);
    while spoofed < calls && Instant::now() < deadline {
        if let Some(len) = sniffer.recv(&mut frame) {
            if let Some(d) = Dialog::from_frame(&frame[..len]) {
                if seen.len() < calls as usize && seen.insert(d.call_id.clone()) {
                    due.push((Instant::now() + delay, d));
                }
            }
        }
        let now = Instant::now();
        while let Some(i) = due.iter().position(|(at, _)| *at <= now) {
            let (_, d) = due.swap_remove(i);
            for how in [Spoof::UnknownSource, Spoof::UnknownDestination] {
                n += 1;
                batch.push_with(|buf| {
                    spoofed_bye(&d, how, n, macs, buf);
                    (buf.len() <= MAX_FRAME).then_some(())
                });
            }
            let queued = batch.len() as u64;
            if !batch.flush(sock, calltap_lab::tx::now_ns() + 1_000_000_000)? {
                bail!("the interface did not take the spoofed BYEs within 1 s");
            }
            sent += queued;
            spoofed += 1;
        }
    }
    Ok(json!({
        "kind": "spoof-bye",
        "dialogs_seen": seen.len(),
        "dialogs_spoofed": spoofed,
        "frames": sent,
        "wall_secs": started.elapsed().as_secs_f64(),
        "complete": spoofed == calls,
    }))
}

/// Adds `extra`'s fields to the object `into`.
fn merge(into: &mut Value, extra: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), extra) {
        a.extend(b);
    }
}
