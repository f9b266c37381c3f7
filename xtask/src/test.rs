//! `cargo xtask test`: the one command CI (`.ci/run`) and developers run.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

use crate::{fuzz, setup};

pub fn run(extra: &[String]) -> Result<()> {
    setup::run()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    cargo(
        &root,
        &["fmt", "--all", "--", "--check"],
        "formatting (run `cargo fmt`)",
    )?;
    cargo(
        &root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        "clippy",
    )?;
    if !setup::is_root() {
        eprintln!("xtask test: not root: XDP, lab and namespace tests will SKIP (run `sudo -E cargo xtask test` for all)");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // The end-to-end tests run the daemon binary itself: build it first, in the test profile's
    // target dir.
    cargo(
        &root,
        &["build", "-p", "calltap", "--bin", "calltap"],
        "building calltap",
    )?;
    // The attack lab's floods run against the release build (the package's; `cargo xtask deb`
    // builds the same one, so it costs nothing more there).
    cargo(
        &root,
        &["build", "--release", "-p", "calltap", "--bin", "calltap"],
        "building calltap (release)",
    )?;
    let mut args = vec!["test".to_owned(), "--workspace".to_owned()];
    args.extend(extra.iter().cloned());
    let status = Command::new("cargo")
        .current_dir(&root)
        .args(&args)
        .env("CALLTAP_BIN", target.join("debug/calltap"))
        .env("CALLTAP_RELEASE_BIN", target.join("release/calltap"))
        .status()?;
    if setup::is_root() {
        // The tests share one lab and leave it up for each other; the run ends clean.
        if let Err(e) = calltap_lab::Lab::down() {
            eprintln!("xtask test: lab down: {e:#}");
        }
    }
    if !status.success() {
        bail!("cargo test failed");
    }
    fuzz_briefly()?;
    println!("xtask test: all tests passed");
    Ok(())
}

/// Seconds each fuzz target runs in a test run: eleven targets, about two minutes in all.
const FUZZ_SECONDS: u64 = 11;

/// Every fuzz target briefly (a crash fails the run). Without cargo-fuzz or nightly: a failure
/// under CI, a skip elsewhere.
fn fuzz_briefly() -> Result<()> {
    if !fuzz::available() {
        if std::env::var_os("CI").is_some() {
            bail!("cargo-fuzz or nightly missing (CI is set): run `cargo xtask setup`");
        }
        eprintln!("xtask test: SKIP fuzzing: cargo-fuzz or nightly missing (`cargo xtask setup`)");
        return Ok(());
    }
    let outcomes = fuzz::fuzz(FUZZ_SECONDS, None)?;
    fuzz::report(&outcomes);
    Ok(())
}

fn cargo(root: &Path, args: &[&str], what: &str) -> Result<()> {
    println!("xtask test: cargo {}", args.join(" "));
    if !Command::new("cargo")
        .current_dir(root)
        .args(args)
        .status()?
        .success()
    {
        bail!("{what} failed");
    }
    Ok(())
}
