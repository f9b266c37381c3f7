//! `cargo xtask`: the project's own automation (toolchain bootstrap, the SPAN lab, the demo,
//! the full test run), so a fresh machine needs two commands and no hand-done steps.

mod bench;
mod deb;
mod demo;
mod fuzz;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "CallTap project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make this machine ready: nightly rust-src, bpf-linker against the nightly's LLVM, Debian
    /// packages the tests and the demo use. Idempotent and quick when everything is there.
    Setup,
    /// The SPAN-port lab (network namespaces, bridge, tc mirror to m0).
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// The main job: record real sipp calls through the lab's mirror port with XDP, print what
    /// was captured and where the files are, then clean up.
    Demo {
        /// Concurrent caller/callee pairs.
        #[arg(long, default_value_t = 3)]
        pairs: u8,
        /// Calls each pair places one after another.
        #[arg(long, default_value_t = 2)]
        calls: u32,
        /// Seconds of audio per call and direction.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Keep the lab up afterwards (for poking around with `ip netns exec ct-rec ...`).
        #[arg(long)]
        keep_lab: bool,
    },
    /// Build the Debian package target/debian/calltap_<version>-1_amd64.deb (cargo-deb), check
    /// its man page against `--help` and lint it with lintian.
    Deb,
    /// Benchmarks: XDP cost per packet class, pipeline throughput per core, memory per call.
    /// Prints a table and writes target/bench/results.json. Sizes: --calls, --seconds.
    Bench {
        /// Concurrent calls in the generated capture.
        #[arg(long, default_value_t = 400)]
        calls: u32,
        /// Seconds of two-way audio per call.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
    },
    /// Coverage-guided fuzzing (cargo-fuzz, libFuzzer): each target, or TARGET, for --seconds.
    /// Seeds come from ../shared/corpus; corpora and crashes stay under target/. A crash or an
    /// XDP/userspace disagreement fails the run with the input that caused it.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// One target (sip_message, sdp, sip_body, dialog_tracker, rtp_rtcp, rtp_stream,
        /// tcp_reassembly, ip_fragments, pcap_reader, classifier, classifier_xdp); all if absent.
        target: Option<String>,
    },
    /// Every test: setup, format and lint checks, then `cargo test --workspace` (root tests
    /// included; they fail instead of skipping when CI is set).
    Test {
        /// Extra arguments passed to `cargo test` (after `--workspace`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LabAction {
    Up,
    Down,
    Status,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Lab { action } => {
            match action {
                LabAction::Up => {
                    setup::require_root("lab up")?;
                    calltap_lab::Lab::up()?;
                    println!("lab is up: capture interface m0 in netns ct-rec (ip netns exec ct-rec ...)");
                    Ok(())
                }
                LabAction::Down => {
                    setup::require_root("lab down")?;
                    calltap_lab::Lab::down()?;
                    println!("lab is down");
                    Ok(())
                }
                LabAction::Status => {
                    println!(
                        "lab is {}",
                        if calltap_lab::Lab::is_up() {
                            "up"
                        } else {
                            "down"
                        }
                    );
                    Ok(())
                }
            }
        }
        Command::Demo {
            pairs,
            calls,
            seconds,
            keep_lab,
        } => demo::run(pairs, calls, seconds, keep_lab),
        Command::Deb => deb::run().map(drop),
        Command::Bench { calls, seconds } => bench::run(calls, seconds),
        Command::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
        Command::Test { args } => test::run(&args),
    }
}
