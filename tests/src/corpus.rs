//! The public capture corpus (`../shared/corpus` beside the repository): captures nobody on the
//! project wrote, the oracle of the corpus tests. It is not part of the repository, so without
//! it a test skips with a message, except under CI, where a skip would pass a test that never
//! ran its checks: there a missing corpus fails, as a missing root or tool does.

use std::path::{Path, PathBuf};

use crate::root::under_ci;

/// Points the corpus tests at another folder than `../shared/corpus` (a copy elsewhere, or a
/// missing one to check that the gate fails under CI).
pub const CORPUS_ENV: &str = "CALLTAP_CORPUS";

/// Where the corpus should be: `$CALLTAP_CORPUS`, else `../shared/corpus` from the repository.
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os(CORPUS_ENV) {
        Some(dir) => PathBuf::from(dir),
        // This crate lives in `<repo>/tests`.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    }
}

/// The corpus folder, or None (after a SKIP message) when it is absent outside CI.
///
/// # Panics
/// Under CI (`CI` set) when the corpus is absent.
pub fn corpus(test: &str) -> Option<PathBuf> {
    let dir = corpus_dir();
    if dir.join("MANIFEST.md").is_file() {
        return Some(dir);
    }
    if under_ci() {
        panic!(
            "{test}: public capture corpus not found at {} and CI is set (put ../shared/corpus \
             beside the repository or set {CORPUS_ENV})",
            dir.display()
        );
    }
    eprintln!(
        "SKIP {test}: public capture corpus not found at {} (put ../shared/corpus beside the \
         repository or set {CORPUS_ENV})",
        dir.display()
    );
    None
}

/// The corpus and every tool in `tools`, or None (after a SKIP message) outside CI when one is
/// missing; under CI a missing one panics.
pub fn corpus_with_tools(test: &str, tools: &[&str]) -> Option<PathBuf> {
    let dir = corpus(test)?;
    tools
        .iter()
        .all(|tool| crate::root::require_tool(test, tool))
        .then_some(dir)
}
