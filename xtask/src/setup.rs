//! Toolchain and package bootstrap. Each step checks first and only acts when something is
//! missing, so `cargo xtask setup` is quick on a ready machine and safe to run every time.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The toolchain the eBPF crate builds with (recorder-ebpf/rust-toolchain.toml names the same).
pub const EBPF_TOOLCHAIN: &str = "nightly";

/// Debian packages: sipp (calls), tshark (the witness), tcpreplay and sox (media tools),
/// iproute2/ethtool (the lab), iputils-ping (ARP priming), lintian (checks the .deb) and
/// debootstrap (the fresh Debian root the .deb install test installs into).
const PACKAGES: &[&str] = &[
    "sip-tester",
    "tshark",
    "tcpreplay",
    "sox",
    "iproute2",
    "ethtool",
    "iputils-ping",
    "lintian",
    "debootstrap",
    "postgresql",
    // The real Prometheus the dashboard test scrapes calltap with; curl talks to both.
    "prometheus",
    "curl",
    // The independent G.722 decoder the corpus audio test compares against.
    "ffmpeg",
    // Makes the certificates the management server's TLS tests use.
    "openssl",
    // The real client the console test logs in with.
    "telnet",
];

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    cargo_fuzz()?;
    packages()?;
    python_tools()?;
    println!("setup: ready");
    Ok(())
}

/// Fails with a clear message when not root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, XDP): run it with sudo -E");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn nightly_rust_src() -> Result<()> {
    let installed = output("rustup", &["toolchain", "list"])?;
    if !installed.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        println!("setup: installing the {EBPF_TOOLCHAIN} toolchain");
        status(
            "rustup",
            &[
                "toolchain",
                "install",
                EBPF_TOOLCHAIN,
                "--profile",
                "minimal",
            ],
        )?;
    }
    let components = output(
        "rustup",
        &[
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ],
    )?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!(
            "setup: adding rust-src to {EBPF_TOOLCHAIN} (the eBPF crate builds core from source)"
        );
        status(
            "rustup",
            &[
                "component",
                "add",
                "rust-src",
                "--toolchain",
                EBPF_TOOLCHAIN,
            ],
        )?;
    }
    Ok(())
}

/// bpf-linker must link with the same LLVM the nightly rustc emits bitcode for, so it is built
/// against that toolchain's own libLLVM rather than a system LLVM.
fn bpf_linker() -> Result<()> {
    let llvm_major = nightly_llvm_major()?;
    // bpf-linker links the nightly's libLLVM dynamically; rustup puts it on the library path.
    if let Ok(version) = output(
        "rustup",
        &["run", EBPF_TOOLCHAIN, "bpf-linker", "--version"],
    ) {
        let marker = cargo_home().join(".calltap-bpf-linker-llvm");
        let built_for = std::fs::read_to_string(&marker).unwrap_or_default();
        if built_for.trim() == llvm_major.to_string() || built_for.is_empty() {
            println!("setup: {} present", version.trim());
            return Ok(());
        }
        println!(
            "setup: bpf-linker was built for LLVM {}, nightly uses {llvm_major}: rebuilding",
            built_for.trim()
        );
    }
    let sysroot = PathBuf::from(
        output(
            "rustc",
            &[&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"],
        )?
        .trim(),
    );
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| {
            format!(
                "no libLLVM in {}/lib (is the nightly complete?)",
                sysroot.display()
            )
        })?;
    let prefix = std::env::temp_dir().join("calltap-llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    println!(
        "setup: building bpf-linker against {} (about a minute)",
        lib.display()
    );
    let ok = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo install bpf-linker")?
        .success();
    if !ok {
        bail!("cargo install bpf-linker failed");
    }
    std::fs::write(
        cargo_home().join(".calltap-bpf-linker-llvm"),
        llvm_major.to_string(),
    )?;
    Ok(())
}

/// cargo-deb builds the Debian package (`cargo xtask deb`); `--locked` so a new release of one of
/// its dependencies cannot break setup.
fn cargo_deb() -> Result<()> {
    if let Ok(version) = output("cargo-deb", &["--version"]) {
        println!("setup: {} present", version.trim());
        return Ok(());
    }
    println!("setup: installing cargo-deb (a few minutes)");
    status("cargo", &["install", "cargo-deb", "--locked"])
}

/// cargo-fuzz builds and runs the fuzz targets (`cargo xtask fuzz`) with the nightly above.
fn cargo_fuzz() -> Result<()> {
    if let Ok(version) = output("cargo", &["fuzz", "--version"]) {
        println!("setup: {} present", version.trim());
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (a few minutes)");
    status("cargo", &["install", "cargo-fuzz", "--locked"])
}

fn nightly_llvm_major() -> Result<u32> {
    let vv = output("rustc", &[&format!("+{EBPF_TOOLCHAIN}"), "-vV"])?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("could not read the nightly's LLVM version from rustc -vV")
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// PyPI tools the tests drive: schemathesis generates API requests from the OpenAPI document;
/// moto's server is the S3 emulator of the archive fault test (boto3 checks what it holds).
fn python_tools() -> Result<()> {
    let tools: [(&str, &[&str], &str); 2] = [
        ("schemathesis", &["--version"], "schemathesis"),
        (
            "python3",
            &["-c", "import moto.server, flask_cors, boto3"],
            "moto[server]",
        ),
    ];
    for (probe, args, package) in tools {
        if output(probe, args).is_ok() {
            println!("setup: {package} present");
            continue;
        }
        println!("setup: installing {package} (pip)");
        let pip_ok = Command::new("python3")
            .args(["-m", "pip", "install", "-q", package])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !pip_ok {
            bail!("pip install {package} failed");
        }
    }
    Ok(())
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .map(|s| !s.contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", PACKAGES.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo -E cargo xtask setup`",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    status("apt-get", &["update", "-q"])?;
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get install")?
        .success();
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

pub fn output(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn status(prog: &str, args: &[&str]) -> Result<()> {
    let ok = Command::new(prog)
        .args(args)
        .status()
        .with_context(|| format!("running {prog}"))?
        .success();
    if !ok {
        bail!("{prog} {} failed", args.join(" "));
    }
    Ok(())
}
