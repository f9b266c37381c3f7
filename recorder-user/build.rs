//! Builds the XDP program (`recorder-ebpf`) for `bpfel-unknown-none` with the pinned nightly and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//!
//! This is what `aya_build::build_ebpf` does, written out because aya-build runs
//! `cargo build --package` inside this workspace, and the eBPF crate deliberately lives outside it
//! (a host `cargo test --workspace` must never try to compile it for x86_64).
//! `CALLTAP_SKIP_EBPF=1` embeds an empty object instead (for hosts without the toolchain:
//! everything but XDP capture still works, and `calltap run` says why XDP is unavailable).

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("calltap-xdp.o");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest_dir.join("../recorder-ebpf");
    let common_dir = manifest_dir.join("../recorder-common");
    for dir in [ebpf_dir.join("src"), common_dir.join("src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for file in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=CALLTAP_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=CALLTAP_EBPF_TOOLCHAIN");

    if env::var("CALLTAP_SKIP_EBPF").is_ok_and(|v| v == "1" || v == "true") {
        println!("cargo:warning=CALLTAP_SKIP_EBPF set: embedding no XDP program");
        fs::write(&object, b"").expect("write empty object");
        return;
    }
    let toolchain = env::var("CALLTAP_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // The outer (stable) cargo's settings must not leak into the nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let output = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run rustup to build the XDP program ({e}); run `cargo xtask setup`")
    });
    if !output.status.success() {
        panic!(
            "building the XDP program failed; run `cargo xtask setup` (nightly + rust-src + \
             bpf-linker), or set CALLTAP_SKIP_EBPF=1 to build without it.\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/calltap-xdp");
    fs::copy(&built, &object)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", built.display(), object.display()));
}
