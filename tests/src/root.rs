//! The root/CI gate every privileged test goes through.

/// True under CI (`CI` set): there a test whose root, tool or oracle is missing fails instead
/// of skipping, since a skip would pass a test that checked nothing.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// True when running as root. Without root a test skips with a message, except under CI (`CI`
/// set), where a skip would hide a broken build: there it fails.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if under_ci() {
        panic!("{test}: needs root (BPF/XDP/netns) and CI is set: run the tests as root");
    }
    eprintln!("SKIP {test}: needs root (BPF/XDP/netns); run `sudo -E cargo xtask test`");
    false
}

/// True when a program is on PATH; under CI a missing tool is a failure, not a skip.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    if under_ci() {
        panic!("{test}: `{tool}` is not installed; `cargo xtask setup` installs it");
    }
    eprintln!("SKIP {test}: `{tool}` is not installed; run `cargo xtask setup`");
    false
}
