//! `cargo xtask bench`: runs the benchmark harness (recorder-user/benches/pipeline.rs) in
//! release mode. Figures, not pass/fail; see the harness for what each one means.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

use crate::setup;

pub fn run(calls: u32, seconds: u32) -> Result<()> {
    setup::run()?;
    if !setup::is_root() {
        eprintln!("xtask bench: not root: the XDP figures are skipped (run with sudo -E for all)");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    // The live capacity figure runs the release daemon in the lab.
    if !Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "-p", "calltap"])
        .status()?
        .success()
    {
        bail!("cargo build --release failed");
    }
    // The live figure's traffic generator; without it the bench falls back to tcpreplay.
    if !Command::new("cargo")
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "calltap-lab",
            "--bin",
            "calltap-loadgen",
        ])
        .status()?
        .success()
    {
        bail!("cargo build --release --bin calltap-loadgen failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let ok = Command::new("cargo")
        .current_dir(&root)
        .args(["bench", "-p", "calltap", "--bench", "pipeline"])
        .env("CALLTAP_BENCH_CALLS", calls.to_string())
        .env("CALLTAP_BENCH_SECONDS", seconds.to_string())
        .env("CALLTAP_BIN", target.join("release/calltap"))
        .env(
            "CALLTAP_LOADGEN_BIN",
            target.join("release/calltap-loadgen"),
        )
        .status()?
        .success();
    if !ok {
        bail!("benchmark failed");
    }
    // Call search over a large CDR store (CALLTAP_BENCH_DB_CALLS, default 1,000,000), merged
    // into the same results.json.
    if !Command::new("cargo")
        .current_dir(&root)
        .args(["bench", "-p", "calltap", "--bench", "store"])
        .status()?
        .success()
    {
        bail!("store benchmark failed");
    }
    Ok(())
}
