//! `cargo xtask deb`: the Debian package, `target/debian/calltap_<version>-1_amd64.deb`.
//!
//! cargo-deb does the packaging from `[package.metadata.deb]` in recorder-user/Cargo.toml; this
//! adds the checks cargo-deb cannot make: the changelog has an entry for the version being
//! built, the man page still documents every subcommand and option the binary's `--help`
//! shows, the dashboards are valid JSON, and lintian finds no error in the result.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::setup;

/// The Debian revision cargo-deb appends to the crate version (its default).
const REVISION: &str = "1";

pub fn run() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let version = format!("{}-{REVISION}", env!("CARGO_PKG_VERSION"));
    if setup::output("cargo-deb", &["--version"]).is_err() {
        bail!("cargo-deb is not installed: run `cargo xtask setup`");
    }
    check_changelog(&root, &version)?;
    let dashboards = dashboards(&root)?;

    println!("deb: building calltap (release)");
    cargo(
        &root,
        &["build", "--release", "--package", "calltap"],
        "cargo build --release -p calltap",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    check_man_page(&root, &target.join("release/calltap"))?;

    let deb = target
        .join("debian")
        .join(format!("calltap_{version}_amd64.deb"));
    let _ = std::fs::remove_file(&deb);
    // The release profile keeps debug info for development; the package ships a stripped binary.
    let mut args = vec![
        "deb",
        "--package",
        "calltap",
        "--no-build",
        "--strip",
        "--no-dbgsym",
        "--output",
    ];
    let out_dir = target.join("debian");
    let out_dir = out_dir.to_str().context("target dir is not UTF-8")?;
    args.push(out_dir);
    if dashboards.is_empty() {
        bail!("dashboards/ holds no dashboard JSON; the package ships them");
    }
    cargo(&root, &args, "cargo deb")?;
    if !deb.is_file() {
        bail!("cargo deb succeeded but {} is not there", deb.display());
    }
    lintian(&deb)?;
    println!("deb: {} ({} dashboards)", deb.display(), dashboards.len());
    Ok(deb)
}

/// lintian reads the newest changelog entry as the package's history: an entry for another
/// version means the changelog was forgotten when the version changed.
fn check_changelog(root: &Path, version: &str) -> Result<()> {
    let path = root.join("packaging/changelog");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or_default();
    if !first.starts_with(&format!("calltap ({version}) ")) {
        bail!(
            "{}: the newest entry is `{first}`, not calltap ({version}): add an entry for {version} \
             (dch -v {version} -c packaging/changelog, or by hand in the same format)",
            path.display()
        );
    }
    Ok(())
}

/// The dashboards the package will ship, each checked to be JSON so a broken one fails here
/// rather than in a user's Grafana import.
fn dashboards(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("dashboards");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(found);
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The hand-written man page must not drift from the CLI: every subcommand and long option that
/// `calltap --help` lists has to appear in packaging/calltap.1.
fn check_man_page(root: &Path, bin: &Path) -> Result<()> {
    let page_path = root.join("packaging/calltap.1");
    let page = std::fs::read_to_string(&page_path)
        .with_context(|| format!("reading {}", page_path.display()))?
        .replace("\\-", "-");
    let bin = bin.to_str().context("binary path is not UTF-8")?;
    let top = setup::output(bin, &["--help"])?;
    let mut missing = Vec::new();
    let mut helps = vec![top.clone()];
    for sub in subcommands(&top) {
        if !page.contains(&format!(".B {sub}")) {
            missing.push(sub.clone());
        }
        helps.push(setup::output(bin, &[&sub, "--help"])?);
    }
    for help in &helps {
        for option in long_options(help) {
            if !page.contains(&option) && !missing.contains(&option) {
                missing.push(option);
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} does not document {} that `calltap --help` shows: update the man page",
            page_path.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// Subcommand names from clap's `Commands:` section (`help` is clap's own).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// `--long` option names from the `Options:` lines of clap's help.
fn long_options(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ','))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| {
            word.split(['=', '<', '['])
                .next()
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

/// Errors fail the build; warnings and notes are printed for a person to judge (the overrides
/// in packaging/lintian-overrides say why the ones left are inapplicable).
fn lintian(deb: &Path) -> Result<()> {
    if which::which("lintian").is_err() {
        if std::env::var_os("CI").is_some() {
            bail!("lintian is not installed: run `cargo xtask setup`");
        }
        eprintln!("deb: lintian is not installed (`cargo xtask setup`): skipping the lint");
        return Ok(());
    }
    println!("deb: lintian --fail-on error {}", deb.display());
    let ok = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(deb)
        .status()
        .context("running lintian")?
        .success();
    if !ok {
        bail!("lintian reports errors in {}", deb.display());
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str], what: &str) -> Result<()> {
    let ok = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("running {what}"))?
        .success();
    if !ok {
        bail!("{what} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "Passive SIP/RTP call recorder\n\nUsage: calltap <COMMAND>\n\nCommands:\n  run           Capture live\n  check-config  Validate\n  help          Print this message\n\nOptions:\n  -h, --help     Print help\n  -V, --version  Print version\n";

    #[test]
    fn reads_subcommands_and_long_options_from_clap_help() {
        assert_eq!(subcommands(HELP), ["run", "check-config"]);
        assert_eq!(long_options(HELP), ["--help", "--version"]);
        assert_eq!(
            long_options("  -c, --config <CONFIG>  INI file\n      --data-dir <DATA_DIR>  Where\n"),
            ["--config", "--data-dir"]
        );
    }
}
