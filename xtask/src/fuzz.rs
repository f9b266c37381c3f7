//! `cargo xtask fuzz [--seconds N] [TARGET]`: coverage-guided fuzzing of the parsers,
//! reassemblers, the dialog tracker and the classifier (cargo-fuzz, libFuzzer, nightly), and
//! the differential target that runs each frame through the XDP program and userspace.
//!
//! Seeds come from the public captures at run time (see [`seeds`]); what libFuzzer finds
//! worth keeping goes to `target/fuzz-corpus/<target>/`, crashes to
//! `target/fuzz-artifacts/<target>/`, all under `target/` (never committed). A crash fails the
//! run with the input's path and the command that replays it.

mod seeds;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::setup;

/// One fuzz target and how it is run.
pub struct Target {
    pub name: &'static str,
    /// libFuzzer's `-max_len`: inputs longer than what the code under test meets are wasted.
    max_len: usize,
    /// Loads the XDP program: root (or CAP_BPF) needed.
    needs_root: bool,
}

const fn target(name: &'static str, max_len: usize) -> Target {
    Target {
        name,
        max_len,
        needs_root: false,
    }
}

pub const TARGETS: &[Target] = &[
    target("sip_message", 16 << 10),
    target("sdp", 8 << 10),
    target("sip_body", 8 << 10),
    target("dialog_tracker", 32 << 10),
    target("rtp_rtcp", 2 << 10),
    target("rtp_stream", 8 << 10),
    target("tcp_reassembly", 32 << 10),
    target("ip_fragments", 32 << 10),
    target("pcap_reader", 64 << 10),
    target("classifier", 4 << 10),
    Target {
        name: "classifier_xdp",
        max_len: 3000,
        needs_root: true,
    },
];

/// What one target's run came to, from libFuzzer's last status line and final stats.
#[derive(Debug, Default)]
pub struct Outcome {
    pub target: String,
    pub seconds: u64,
    pub execs: u64,
    pub execs_per_sec: u64,
    /// Coverage counters (edges) and features libFuzzer reports.
    pub cov: u64,
    pub ft: u64,
    pub corpus: u64,
    pub skipped: Option<&'static str>,
}

/// Paths of a run.
struct Dirs {
    root: PathBuf,
    fuzz: PathBuf,
    build: PathBuf,
}

impl Dirs {
    fn new() -> Result<Dirs> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()?;
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        Ok(Dirs {
            fuzz: root.join("fuzz"),
            build: target.join("fuzz"),
            root,
        })
    }

    fn target_dir(&self) -> PathBuf {
        self.build
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.build
            .join("x86_64-unknown-linux-gnu/release")
            .join(name)
    }
}

/// Whether cargo-fuzz and the nightly it builds with are here.
pub fn available() -> bool {
    setup::output("cargo", &["fuzz", "--version"]).is_ok()
        && setup::output("rustc", &[&format!("+{}", setup::EBPF_TOOLCHAIN), "-V"]).is_ok()
}

/// `cargo xtask fuzz`: sets up, runs, prints the figures.
pub fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    if !available() {
        bail!("cargo-fuzz or the nightly toolchain is missing: run `cargo xtask setup`");
    }
    let outcomes = fuzz(seconds, only)?;
    report(&outcomes);
    Ok(())
}

/// Extracts the seeds, builds the targets, runs each (or `only`) for `seconds`; fails on the
/// first crash or disagreement.
pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<Vec<Outcome>> {
    let dirs = Dirs::new()?;
    let chosen: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| only.is_none_or(|o| o == t.name))
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        bail!(
            "no fuzz target {:?}; targets: {}",
            only.unwrap_or(""),
            names.join(" ")
        );
    }
    let seed_dir = dirs.target_dir().join("fuzz-seeds");
    let started = Instant::now();
    let written = seeds::write(&dirs.fuzz, &dirs.root.join("../shared/corpus"), &seed_dir)?;
    let total: usize = written.iter().map(|(_, n)| n).sum();
    println!(
        "xtask fuzz: {total} seeds for {} targets in {:.1} s ({})",
        written.len(),
        started.elapsed().as_secs_f64(),
        seed_dir.display()
    );
    build(&dirs)?;
    let mut outcomes = Vec::new();
    for t in chosen {
        if t.needs_root && !setup::is_root() {
            if std::env::var_os("CI").is_some() {
                bail!("fuzz target {} needs root (CI is set)", t.name);
            }
            println!(
                "xtask fuzz: {}: SKIP (needs root to load the XDP program)",
                t.name
            );
            outcomes.push(Outcome {
                target: t.name.into(),
                skipped: Some("needs root"),
                ..Outcome::default()
            });
            continue;
        }
        outcomes.push(run_target(&dirs, t, seconds, &seed_dir)?);
    }
    Ok(outcomes)
}

fn build(dirs: &Dirs) -> Result<()> {
    println!("xtask fuzz: building the fuzz targets (cargo fuzz build, nightly)");
    let ok = Command::new("nice")
        .args(["-n", "19", "cargo", &format!("+{}", setup::EBPF_TOOLCHAIN)])
        .args(["fuzz", "build", "--sanitizer", "none", "--target-dir"])
        .arg(&dirs.build)
        .current_dir(&dirs.root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo fuzz build")?
        .success();
    if !ok {
        bail!("cargo fuzz build failed");
    }
    Ok(())
}

fn run_target(dirs: &Dirs, t: &Target, seconds: u64, seed_dir: &Path) -> Result<Outcome> {
    let tdir = dirs.target_dir();
    let corpus = tdir.join("fuzz-corpus").join(t.name);
    let artifacts = tdir.join("fuzz-artifacts").join(t.name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = seed_dir.join(t.name);
    let binary = dirs.binary(t.name);
    println!("xtask fuzz: {} for {seconds} s", t.name);
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19"])
        .arg(&binary)
        .arg(&corpus)
        .args(seeds.is_dir().then_some(&seeds))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", t.max_len))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // A single input running this long is a hang.
        .arg("-timeout=20")
        .arg("-print_final_stats=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let outcome = parse_log(t.name, seconds, &log);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let artifact = log
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .unwrap_or("(no artifact written)");
        bail!(
            "fuzz target {} failed ({}):\n{}\n\ninput: {artifact}\nreplay: {} {artifact}",
            t.name,
            out.status,
            tail.join("\n"),
            binary.display()
        );
    }
    println!(
        "xtask fuzz: {}: {} runs ({}/s), cov {}, ft {}, corpus {}",
        t.name, outcome.execs, outcome.execs_per_sec, outcome.cov, outcome.ft, outcome.corpus
    );
    Ok(outcome)
}

/// Reads the figures out of libFuzzer's output: the last `cov:`/`ft:`/`corp:` status line
/// and the `stat::` lines of `-print_final_stats`.
fn parse_log(target: &str, seconds: u64, log: &str) -> Outcome {
    let mut o = Outcome {
        target: target.into(),
        seconds,
        ..Outcome::default()
    };
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    for line in log.lines() {
        if line.starts_with('#') && line.contains(" cov: ") {
            o.cov = field(line, " cov: ").unwrap_or(o.cov);
            o.ft = field(line, " ft: ").unwrap_or(o.ft);
            o.corpus = field(line, " corp: ").unwrap_or(o.corpus);
        }
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units: ") {
            o.execs = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("stat::average_exec_per_sec: ") {
            o.execs_per_sec = v.trim().parse().unwrap_or(0);
        }
    }
    o
}

/// The figures as a table (the README's Fuzzing section is written from it).
pub fn report(outcomes: &[Outcome]) {
    println!("\n| target | seconds | runs | runs/s | coverage (edges) | features | corpus |");
    println!("|---|---|---|---|---|---|---|");
    for o in outcomes {
        match o.skipped {
            Some(why) => println!("| {} | skipped: {why} | | | | | |", o.target),
            None => println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                o.target, o.seconds, o.execs, o.execs_per_sec, o.cov, o.ft, o.corpus
            ),
        }
    }
}
