//! Shared helpers for the integration tests: frame builders and the root/CI gate.
#![allow(dead_code)]

pub mod calls;
pub mod frames;

/// Tests that need root (BPF, namespaces) call this first. Without root they skip with a
/// message, except under CI (`CI` set), where skipping would hide a broken build: they fail.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (BPF/XDP/netns) and CI is set: run the tests as root");
    }
    eprintln!("SKIP {test}: needs root (BPF/XDP/netns); run `sudo -E cargo xtask test`");
    false
}

/// The public captures, or None (with a message) when ../shared/corpus is absent.
pub fn corpus() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if dir.join("MANIFEST.md").exists() {
        Some(dir)
    } else {
        // The corpus is not part of the repository: without it these tests skip, CI or not.
        eprintln!(
            "SKIP: public capture corpus not found at {} (put ../shared/corpus beside the repo)",
            dir.display()
        );
        None
    }
}
