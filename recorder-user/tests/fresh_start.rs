//! The first start of `calltap run` on a fresh data directory, 20 times: the CDR database is
//! created and migrated once, before the CDR writer, the rules loader and the API connect, so
//! the log never shows a migration collision ("table calls already exists") and the schema is
//! whole. The real binary, capturing with AF_PACKET on loopback (no XDP, no lab namespace); it
//! needs CAP_NET_RAW, so it is skipped when not run as root (and fails under CI).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use calltap::store::db::Db;

const ROUNDS: usize = 20;
/// How long one start may take to be ready; generous for a loaded 2-core machine.
const READY: Duration = Duration::from_secs(60);

/// A free loopback port for the API (bound and released: a race with another process taking it
/// in between is possible but harmless, the start then fails loudly).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The status line of `GET /api/v1/status` with a token the database does not know: answering
/// it means the API reached the (migrated) database; 503 would mean it could not.
fn api_status(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = "GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\
               Authorization: Bearer ct_unknown\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.lines().next().map(str::to_string)
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Stops `child` with SIGTERM and waits (bounded) for it to exit.
fn stop(child: &mut Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("calltap run did not stop within 30 s of SIGTERM");
}

#[test]
fn first_start_migrates_once_without_a_collision() {
    // AF_PACKET capture needs CAP_NET_RAW; under CI a missing root fails.
    if !calltap_lab::root::require_root("first_start_migrates_once_without_a_collision") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    for round in 0..ROUNDS {
        let data = tmp.path().join(format!("data-{round}"));
        let log_path = tmp.path().join(format!("run-{round}.log"));
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_calltap"))
            .args(["run", "--interface", "lo", "--source", "af_packet"])
            .args(["--workers", "1", "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "info")
            .env("CALLTAP_API_LISTEN", format!("127.0.0.1:{port}"))
            .env("CALLTAP_CONSOLE_LISTEN", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("start calltap run");
        // Ready: the CDR writer and the rules loader have connected, the API has answered.
        let deadline = Instant::now() + READY;
        let mut status = None;
        loop {
            let log = log_of(&log_path);
            let parts = log.contains("CDR store: connected") && log.contains("recording rules:");
            if parts && status.is_none() {
                status = api_status(port);
            }
            if parts && status.is_some() {
                break;
            }
            if let Ok(Some(code)) = child.try_wait() {
                panic!("round {round}: calltap run exited ({code}) before ready:\n{log}");
            }
            if Instant::now() > deadline {
                stop(&mut child);
                panic!("round {round}: not ready within {READY:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop(&mut child);
        let log = log_of(&log_path);
        let status = status.unwrap_or_default();
        assert!(
            status.contains(" 401 ") || status.contains(" 403 "),
            "round {round}: API answered {status:?}, not a refusal after a database lookup"
        );
        for bad in [
            "already exists",
            "migrating the",
            "schema not migrated",
            "CSV journal",
        ] {
            assert!(
                !log.contains(bad),
                "round {round}: {bad:?} in the log:\n{log}"
            );
        }
        let url = format!("sqlite://{}", data.join("calltap.db").display());
        let rt = calltap::runtime::current_thread().expect("rt");
        rt.block_on(async {
            // Connect (not prepare) checks every migration of this build is applied.
            let db = Db::connect(&url, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("round {round}: schema: {e}"));
            db.close().await;
        });
    }
}
