//! The console over real TCP: telnet negotiation bytes, commands, password, limits.

use std::{io::Read as _, time::Instant};

use crossbeam_channel::unbounded;

use super::*;
use crate::pipeline::Control;

fn live_with_call() -> (Arc<LiveCalls>, crossbeam_channel::Receiver<Control>) {
    let (tx, rx) = unbounded();
    let live = LiveCalls::new(vec![tx]);
    crate::publish::live::tests::start_call(&live, 9);
    (live, rx)
}

fn console(
    password: Option<&str>,
    idle: Duration,
) -> (Console, crossbeam_channel::Receiver<Control>) {
    let (live, rx) = live_with_call();
    let backend = ConsoleBackend {
        status: Box::new(|| "status: fine\n".into()),
        stats: Box::new(|| "stats: 42 packets\n".into()),
        reload: Box::new(|| "reload: not implemented\n".into()),
    };
    let c = Console::start(
        ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            password: password.map(str::to_string),
            idle,
        },
        live,
        backend,
    )
    .expect("console");
    (c, rx)
}

/// A raw client: reads until `want` appears (bounded in time) and returns everything read.
struct Client {
    s: TcpStream,
    seen: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Client {
            s,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    fn until(&mut self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = find(&self.seen, want.as_bytes()) {
                let end = i + want.len();
                let out: Vec<u8> = self.seen.drain(..end).collect();
                return latin1(&out);
            }
            assert!(
                Instant::now() < deadline,
                "no {want:?} in {:?}",
                String::from_utf8_lossy(&self.seen)
            );
            match self.s.read(&mut buf) {
                Ok(0) => panic!(
                    "closed before {want:?}: {:?}",
                    String::from_utf8_lossy(&self.seen)
                ),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// Reads until the server closes (bounded).
    fn closed(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => return latin1(&self.seen),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return latin1(&self.seen),
                Err(_) => {}
            }
        }
        panic!("not closed: {:?}", String::from_utf8_lossy(&self.seen));
    }
}

/// Bytes as chars one to one, so telnet command bytes survive in the returned text.
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&b| b as char).collect()
}

fn raw(s: &str) -> Vec<u8> {
    s.chars().map(|c| c as u8).collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn telnet_negotiation_is_refused_and_stripped_and_commands_work() {
    let (con, worker) = console(None, IDLE);
    let mut c = Client::connect(con.addr);
    c.until("calltap> ");
    // What a telnet client in character mode sends first, then a command with an IAC NOP and
    // a sub-negotiation in the middle of it.
    c.send(&[IAC, DO, 3, IAC, WILL, 24, IAC, WILL, 31, IAC, DONT, 1]);
    c.send(b"sho");
    c.send(&[IAC, 241, IAC, SB, 24, 0, b'x', b't', IAC, SE]);
    c.send(b"w calls\r\n");
    let out = c.until("calltap> ");
    let bytes = raw(&out);
    assert!(find(&bytes, &[IAC, WONT, 3]).is_some(), "{bytes:?}");
    assert!(find(&bytes, &[IAC, DONT, 24]).is_some(), "{bytes:?}");
    assert!(find(&bytes, &[IAC, DONT, 31]).is_some(), "{bytes:?}");
    // DONT ECHO needs no answer; nothing else was sent back.
    assert_eq!(bytes.iter().filter(|&&b| b == IAC).count(), 3, "{bytes:?}");
    assert!(out.contains("1 active call(s)"), "{out}");
    assert!(out.contains("uuid-9") && out.contains("recording"), "{out}");

    c.send(b"show call cid-9\r\n");
    let out = c.until("calltap> ");
    assert!(
        out.contains("uuid       uuid-9") && out.contains("sip:2000@198.18.0.2"),
        "{out}"
    );
    c.send(b"show status\r\nshow stats\r\n");
    assert!(c.until("calltap> ").contains("status: fine"));
    assert!(c.until("calltap> ").contains("stats: 42 packets"));
    c.send(b"record pause uuid-9\r\n");
    assert!(c.until("calltap> ").contains("recording paused"));
    assert!(matches!(worker.try_recv(), Ok(Control::Recording { .. })));
    c.send(b"record pause uuid-9\n");
    assert!(c
        .until("calltap> ")
        .contains("error: cannot pause a recording that is paused"));
    c.send(b"record resume nope\r\n");
    assert!(c.until("calltap> ").contains("no active call nope"));
    c.send(b"reload\r\n");
    assert!(c.until("calltap> ").contains("reload: not implemented"));
    let before = log::max_level();
    c.send(b"log level debug\r\n");
    assert!(c.until("calltap> ").contains("log level DEBUG"));
    assert_eq!(log::max_level(), log::LevelFilter::Debug);
    log::set_max_level(before);
    c.send(b"log level loud\r\nfrobnicate\r\nhelp\r\n");
    assert!(c.until("calltap> ").contains("usage: log level"));
    assert!(c.until("calltap> ").contains("unknown command"));
    assert!(c
        .until("calltap> ")
        .contains("record start|stop|pause|resume ID"));
    let long = vec![b'a'; MAX_LINE + 10];
    c.send(&long);
    c.send(b"\r\n");
    assert!(c.until("calltap> ").contains("line too long"));
    c.send(b"quit\r\n");
    assert!(c.closed().contains("bye"));
}

#[test]
fn password_is_asked_with_echo_offered_and_wrong_ones_close() {
    let (con, _w) = console(Some("pw"), IDLE);
    let mut c = Client::connect(con.addr);
    let out = c.until("Password: ");
    assert!(find(&raw(&out), &[IAC, WILL, OPT_ECHO]).is_some());
    // The client's consent to our echo gets no answer (no WONT ECHO back).
    c.send(&[IAC, DO, OPT_ECHO]);
    c.send(b"pw\r\n");
    let out = c.until("calltap> ");
    let bytes = raw(&out);
    // Echo handed back after the password, and no refusal of the client's DO ECHO before it.
    assert!(find(&bytes, &[IAC, WONT, OPT_ECHO]).is_some(), "{bytes:?}");
    assert_eq!(bytes.iter().filter(|&&b| b == IAC).count(), 1, "{bytes:?}");
    c.send(b"show calls\r\n");
    assert!(c.until("calltap> ").contains("uuid-9"));

    let mut c = Client::connect(con.addr);
    for _ in 0..3 {
        c.until("Password: ");
        c.send(b"nope\r\n");
    }
    let out = c.closed();
    assert!(!out.contains("calltap> "), "{out}");
}

#[test]
fn idle_sessions_close_and_sessions_are_bounded() {
    let (con, _w) = console(None, Duration::from_millis(400));
    let mut c = Client::connect(con.addr);
    c.until("calltap> ");
    assert!(c.closed().contains("idle timeout"));

    let (con, _w) = console(None, IDLE);
    let mut held: Vec<Client> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut c = Client::connect(con.addr);
            c.until("calltap> ");
            c
        })
        .collect();
    let mut extra = Client::connect(con.addr);
    assert!(extra.closed().contains("too many console sessions"));
    // One leaves: a new session is let in.
    held.pop().map(|mut c| {
        c.send(b"quit\r\n");
        c.closed()
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect(con.addr);
        let first = c.until("\n");
        if first.contains("CallTap") {
            break;
        }
        assert!(Instant::now() < deadline, "no session freed: {first}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The real `telnet` client (Debian's telnet, installed by `cargo xtask setup`) logs in with the
/// password, runs commands and quits: option negotiation with a real client works end to end.
#[test]
fn the_real_telnet_client_logs_in_and_runs_commands() {
    use std::process::{Command, Stdio};
    let Ok(bin) = which::which("telnet") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "telnet is not installed (cargo xtask setup installs it)"
        );
        eprintln!("SKIP: telnet not installed (apt install telnet)");
        return;
    };
    let (con, rx) = console(Some("pw"), IDLE);
    let mut child = Command::new(bin)
        .arg(con.addr.ip().to_string())
        .arg(con.addr.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("telnet runs");
    let mut stdin = child.stdin.take().expect("stdin");
    // telnet reads its terminal line by line; pauses let each answer come back first.
    for line in [
        "pw",
        "show status",
        "show calls",
        "record pause uuid-9",
        "quit",
    ] {
        std::thread::sleep(Duration::from_millis(300));
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("to telnet");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("telnet output");
    assert!(out.contains("Password: "), "{out}");
    assert!(out.contains("status: fine"), "{out}");
    assert!(out.contains("uuid-9"), "{out}");
    assert!(out.contains("bye"), "{out}");
    assert!(!out.contains("pw\r\n"), "the password was echoed: {out}");
    // The pause reached the call's worker.
    assert!(
        rx.try_iter().any(|m| matches!(
            m,
            Control::Recording {
                action: crate::pipeline::recording::RecordingAction::Pause,
                ..
            }
        )),
        "no pause sent"
    );
}
