//! Shared helpers for the integration tests: frame and call builders, the corpus (the root/CI
//! gate is `calltap_lab::root::require_root`).
#![allow(dead_code, reason = "shared by every test binary; each uses a part")]

pub mod calls;
pub mod frames;

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
