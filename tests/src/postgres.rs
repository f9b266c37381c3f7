//! A real, throwaway PostgreSQL cluster for the store tests and the storage fault tests: the
//! Debian `postgresql` package's `initdb` and `pg_ctl`, a data directory in /tmp, trust
//! authentication, listening on 127.0.0.1 (a free port) and on a Unix socket. The socket is
//! what a `calltap run` inside the lab's recorder namespace uses: a network namespace has its
//! own loopback, but the filesystem is shared.
//!
//! PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user
//! (`runuser -u postgres --`); other users run it as themselves.

use std::{
    ffi::CString,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The newest installed server's bin directory, e.g. /usr/lib/postgresql/15/bin.
pub fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

/// True when PostgreSQL is installed; under CI a missing server is a failure, not a skip.
pub fn require_postgres(test: &str) -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: PostgreSQL is not installed; `cargo xtask setup` installs it");
    }
    eprintln!("SKIP {test}: PostgreSQL is not installed; run `cargo xtask setup`");
    false
}

/// uid and gid of the `postgres` account, when running as root (None: run as ourselves).
fn run_as() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").context("user name")?;
    // SAFETY: getpwnam takes a NUL-terminated name and returns NULL or a pointer to static data
    // that we read before any other getpw* call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root and there is no `postgres` user (install the postgresql package)");
    }
    // SAFETY: non-null pointer from getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

/// A running throwaway cluster; stopped and deleted on drop.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl Postgres {
    /// initdb + start, waiting until it accepts connections.
    pub fn start() -> Result<Postgres> {
        let bin = bin_dir().context("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")?;
        let owner = run_as()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("calltap-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("socket"))?;
        if let Some((uid, gid)) = owner {
            for d in [dir.clone(), dir.join("socket")] {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", d.display()))?;
            }
        }
        let mut pg = Postgres {
            bin,
            dir,
            port,
            as_postgres: owner.is_some(),
            running: false,
        };
        let data = pg.data_dir();
        let data = data.to_str().context("data dir path")?;
        pg.tool(
            "initdb",
            &[
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        pg.start_again()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("socket")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn tool(&self, name: &str, args: &[&str]) -> Result<Output> {
        let program = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        // Run from a directory the postgres user can read (it may not enter the caller's cwd).
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{name} {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<()> {
        let data = self.data_dir();
        let log = self.dir.join("server.log");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.socket_dir().display()
        );
        self.tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().context("data dir")?,
                "-l",
                log.to_str().context("log path")?,
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )?;
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.tool(
                "pg_isready",
                &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"],
            );
            if ready.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL not ready after 30 s; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server now (`-m fast`: connected clients are disconnected, as in an outage).
    pub fn stop(&mut self) -> Result<()> {
        let data = self.data_dir();
        self.tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().context("data dir")?,
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )?;
        self.running = false;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Runs a client tool (createdb, psql) against the server over TCP as `postgres`.
    fn client(&self, name: &str, args: &[&str]) -> Result<Output> {
        let port = self.port.to_string();
        let mut argv = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
        argv.extend_from_slice(args);
        self.tool(name, &argv)
    }

    /// Creates a database (each test gets its own).
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.client("createdb", &[name]).map(drop)
    }

    /// Runs SQL with psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = self.client(
            "psql",
            &["-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// URL over TCP on 127.0.0.1.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// URL over the Unix socket: reachable from any network namespace on this host.
    pub fn socket_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?host={}",
            self.port,
            self.socket_dir().display()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data_dir();
            if let Some(d) = data.to_str() {
                let _ = self.tool("pg_ctl", &["-D", d, "-m", "immediate", "-w", "stop"]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
