//! `cargo xtask test`: the one command CI (`.ci/run`) and developers run.

mod summary;

use std::{
    io::{BufRead as _, BufReader, Write},
    path::Path,
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context as _, Result};

use crate::{fuzz, setup};

/// Suites allowed to run nothing under CI, with the reason, by the name the table shows
/// (`<binary> (<source>)` or `doc-tests <crate>`). Binaries that hold no tests at all (a main.rs
/// tested through its library, a crate without doc examples) need no entry: libtest reports
/// them as 0 tests, 0 filtered out, and only an integration test target is expected to have
/// some. Everything else must run at least one test that does its work.
const ALLOWED_EMPTY: &[(&str, &str)] = &[];

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
    // Every suite runs even after one fails: the table below then shows all of them.
    let mut args = vec![
        "test".to_owned(),
        "--workspace".to_owned(),
        "--no-fail-fast".to_owned(),
    ];
    args.extend(extra.iter().cloned());
    // Passing tests' output (their SKIP lines) comes after each binary's run, under the test's
    // name, for the summary to count.
    if !args.iter().any(|a| a == "--") {
        args.push("--".to_owned());
    }
    args.push("--show-output".to_owned());
    let mut command = Command::new("cargo");
    command
        .current_dir(&root)
        .args(&args)
        .env("CALLTAP_BIN", target.join("debug/calltap"))
        .env("CALLTAP_RELEASE_BIN", target.join("release/calltap"));
    println!("xtask test: cargo {}", args.join(" "));
    let (status, suites) = tee_and_count(command, &mut std::io::stdout())?;
    if setup::is_root() {
        // The tests share one lab and leave it up for each other; the run ends clean.
        if let Err(e) = calltap_lab::Lab::down() {
            eprintln!("xtask test: lab down: {e:#}");
        }
    }
    println!("\nxtask test: tests per suite (SKIP: passed after printing a SKIP message)");
    print!("{}", summary::table(&suites, ALLOWED_EMPTY));
    if !status.success() {
        bail!("cargo test failed");
    }
    let empty: Vec<&str> = suites
        .iter()
        .filter(|s| s.verdict(ALLOWED_EMPTY).is_empty_failure())
        .map(|s| s.name.as_str())
        .collect();
    if !empty.is_empty() {
        if std::env::var_os("CI").is_some() {
            bail!(
                "suites that must run ran nothing (CI is set): {} \
                 (no tests, or every test ignored or skipped; see the SKIP lines above)",
                empty.join(", ")
            );
        }
        eprintln!(
            "xtask test: these suites ran nothing (a failure under CI): {}",
            empty.join(", ")
        );
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

/// Runs `cargo test`, its stdout and stderr through one pipe (so cargo's `Running` lines and the
/// binaries' results stay in order), each line echoed to the terminal as it comes and counted.
fn tee_and_count(
    mut command: Command,
    out: &mut impl Write,
) -> Result<(ExitStatus, Vec<summary::Suite>)> {
    let (reader, writer) = std::io::pipe().context("pipe for cargo test's output")?;
    command
        .stdout(writer.try_clone().context("pipe for cargo test's output")?)
        .stderr(writer);
    let mut child = command.spawn().context("running cargo test")?;
    // The command still holds the pipe's write ends: drop them so the read ends at cargo's exit.
    drop(command);
    let mut parser = summary::Parser::new();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .context("reading cargo test's output")?
            == 0
        {
            break;
        }
        // A closed terminal must not stop the run: the counts still decide.
        let _ = out.write_all(&line).and_then(|()| out.flush());
        let text = String::from_utf8_lossy(&line);
        parser.line(text.trim_end_matches(['\n', '\r']));
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status, parser.finish()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// cargo prints `Running` on stderr and the binaries print their results on stdout: through
    /// the one pipe each result lands in its own suite, and the exit status comes through.
    #[test]
    fn tee_keeps_stderr_and_stdout_in_order() {
        let result = "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out";
        let script = format!(
            "for s in a b c; do \
               echo \"     Running e2e/$s.rs (target/debug/deps/$s-0f)\" >&2; \
               echo '{result}'; \
             done; exit 3"
        );
        let mut sh = Command::new("sh");
        sh.args(["-c", &script]);
        let mut echoed = Vec::new();
        let (status, suites) = tee_and_count(sh, &mut echoed).expect("sh");
        assert_eq!(String::from_utf8_lossy(&echoed).lines().count(), 6);
        assert_eq!(status.code(), Some(3));
        let seen: Vec<_> = suites.iter().map(|s| (s.name.as_str(), s.passed)).collect();
        assert_eq!(
            seen,
            [
                ("a (e2e/a.rs)", 1),
                ("b (e2e/b.rs)", 1),
                ("c (e2e/c.rs)", 1)
            ]
        );
    }
}
