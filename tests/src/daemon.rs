//! Runs the real `calltap` binary in the recorder namespace and reads what it wrote.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::netns::{ns_command, MIRROR_IF, NS_REC};

/// The calltap binary under test: `CALLTAP_BIN`, else the workspace's debug build.
pub fn calltap_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CALLTAP_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/calltap")
}

/// The release build of calltap, for tests whose traffic rates only mean something against
/// what ships (the attack lab's floods): `CALLTAP_RELEASE_BIN`, else the workspace's release
/// build (`cargo xtask test` builds it).
pub fn calltap_release_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CALLTAP_RELEASE_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/calltap")
}

/// A `calltap run` process capturing on the lab mirror port.
pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
}

impl Daemon {
    /// Starts `calltap run` on `m0` with `extra` arguments in an empty `data_dir` and waits
    /// until it reports ready.
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_in(NS_REC, &[MIRROR_IF], data_dir, extra, env)
    }

    /// Like [`Daemon::start`], but keeps what an earlier run left in `data_dir` (spool, queues,
    /// database): a restart.
    pub fn restart(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn(
            calltap_bin(),
            NS_REC,
            &[MIRROR_IF],
            data_dir,
            extra,
            env,
            None,
        )
    }

    /// Like [`Daemon::start`], running the release build ([`calltap_release_bin`]), under an
    /// open-file limit of `nofile` (soft and hard) if given, as systemd's default
    /// `LimitNOFILE=1024` would run the packaged service.
    pub fn start_release(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<Self> {
        let _ = std::fs::remove_dir_all(data_dir);
        let bin = calltap_release_bin();
        Self::spawn(bin, NS_REC, &[MIRROR_IF], data_dir, extra, env, nofile)
    }

    /// Like [`Daemon::start`], capturing on `interfaces` of network namespace `ns` (a test's
    /// own topology instead of the lab's mirror port).
    pub fn start_in(
        ns: &str,
        interfaces: &[&str],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let _ = std::fs::remove_dir_all(data_dir);
        Self::spawn(calltap_bin(), ns, interfaces, data_dir, extra, env, None)
    }

    fn spawn(
        bin: PathBuf,
        ns: &str,
        interfaces: &[&str],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<Self> {
        if !bin.exists() {
            bail!(
                "{} not built: run `cargo build -p calltap` (or `--release`; cargo xtask test \
                 builds both)",
                bin.display()
            );
        }
        std::fs::create_dir_all(data_dir)?;
        let mut argv = vec![bin.to_str().context("bin path")?, "run"];
        for interface in interfaces {
            argv.extend(["--interface", interface]);
        }
        argv.extend(["--data-dir", data_dir.to_str().context("data dir")?]);
        argv.extend_from_slice(extra);
        let mut cmd = ns_command(ns, &argv);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; it runs in the forked child before exec,
            // and `ip netns exec` passes the limit on to calltap.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(data_dir.join("stdout.log"))?)
            .stderr(std::fs::File::create(data_dir.join("stderr.log"))?)
            .spawn()
            .context("starting calltap")?;
        let mut daemon = Self {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
        };
        let ready = data_dir.join("calltap.ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(child) = daemon.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("calltap exited early ({status}): {}", daemon.stderr());
                }
            }
            if Instant::now() > deadline {
                bail!("calltap not ready after 30 s: {}", daemon.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// The daemon's process id while it runs (for CPU figures from /proc). `ip netns exec`
    /// execs calltap in place, so this is calltap's own.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What calltap logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGTERM, wait for a clean exit, then return the run summary.
    pub fn stop(mut self) -> Result<Value> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = crate::sipp::wait_bounded(&mut child, Duration::from_secs(30))?;
        match status {
            Some(s) if s.success() => {}
            other => bail!(
                "calltap did not exit cleanly ({other:?}): {}",
                self.stderr()
            ),
        }
        let text = std::fs::read_to_string(self.data_dir.join("run-summary.json"))
            .context("run-summary.json")?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The CDRs written so far (calls.jsonl), one JSON value per call.
    pub fn cdrs(&self) -> Result<Vec<Value>> {
        read_jsonl(&self.data_dir.join("calls.jsonl"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = crate::sipp::wait_bounded(child, Duration::from_secs(10));
        }
    }
}

/// A process's resident memory, sampled on a thread until stopped: a memory bound is about the
/// peak, which one reading at the end would miss.
pub struct RssWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<RssPeak>,
}

/// What an [`RssWatch`] saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct RssPeak {
    /// The highest VmRSS, in KiB, and its parts at that moment (anonymous, file, shared).
    pub max_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub shmem_kib: u64,
    pub samples: u64,
}

impl RssWatch {
    /// Samples `/proc/PID/status` every `every` until [`RssWatch::stop`] or the process ends.
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = RssPeak::default();
            while !flag.load(Ordering::Relaxed) {
                let Some(now) = rss(pid) else {
                    break;
                };
                peak.samples += 1;
                if now.max_kib > peak.max_kib {
                    peak = RssPeak {
                        samples: peak.samples,
                        ..now
                    };
                }
                std::thread::sleep(every);
            }
            peak
        });
        Self { stop, thread }
    }

    pub fn stop(self) -> RssPeak {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// VmRSS and its parts of a live process (None once it is gone).
pub fn rss(pid: u32) -> Option<RssPeak> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some(RssPeak {
        max_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:").unwrap_or(0),
        file_kib: field("RssFile:").unwrap_or(0),
        shmem_kib: field("RssShmem:").unwrap_or(0),
        samples: 1,
    })
}

/// The number at `path` (object keys) in a CDR or run summary; panics naming what is missing.
pub fn u64_at(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing or not a number in {v}"))
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// `calltap replay --json FILES` into `data_dir`; returns the CDR lines it printed.
pub fn replay(data_dir: &Path, files: &[&Path]) -> Result<Vec<Value>> {
    let _ = std::fs::remove_dir_all(data_dir);
    std::fs::create_dir_all(data_dir)?;
    let out = std::process::Command::new(calltap_bin())
        .args(["replay", "--json", "--data-dir"])
        .arg(data_dir)
        .args(files)
        .stdin(Stdio::null())
        .output()
        .context("running calltap replay")?;
    if !out.status.success() {
        bail!(
            "calltap replay failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}
