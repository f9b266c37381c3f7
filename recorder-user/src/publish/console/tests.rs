//! The console over real TCP: telnet negotiation bytes, commands, logins and roles, limits,
//! escaping of SIP-derived text.

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
    (
        console_over(live, password, idle, LoginLimits::default()),
        rx,
    )
}

/// The token store the tests log in against: `ct_viewer`, `ct_operator`, `ct_admin`;
/// `ct_down` stands for a database that does not answer.
fn tokens(token: &str) -> Result<Caller, ApiError> {
    let role = match token {
        "ct_viewer" => Role::Viewer,
        "ct_operator" => Role::Operator,
        "ct_admin" => Role::Admin,
        "ct_down" => return Err(ApiError::Unavailable("database away".into())),
        _ => return Err(ApiError::Unauthorized),
    };
    Ok(Caller {
        token_id: 1,
        name: format!("{}-bot", role.as_str()),
        role,
    })
}

fn console_over(
    live: Arc<LiveCalls>,
    password: Option<&str>,
    idle: Duration,
    limits: LoginLimits,
) -> Console {
    console_with(live, password, idle, limits, None)
}

fn console_with(
    live: Arc<LiveCalls>,
    password: Option<&str>,
    idle: Duration,
    limits: LoginLimits,
    audit: Option<AuditHook>,
) -> Console {
    let backend = ConsoleBackend {
        status: Box::new(|| "status: fine\n".into()),
        stats: Box::new(|| "stats: 42 packets\n".into()),
        reload: Box::new(|| "reload: not implemented\n".into()),
        tokens: Some(Box::new(tokens)),
        audit,
    };
    Console::start(
        ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            password: password.map(str::to_string),
            idle,
            limits,
        },
        live,
        backend,
    )
    .expect("console")
}

/// Limits that let a test reach them quickly.
fn quick_limits() -> LoginLimits {
    LoginLimits {
        per_peer: 4,
        delay: Duration::ZERO,
        ..LoginLimits::default()
    }
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
    // Read-only without a login: control is refused, naming the role it needs.
    c.send(b"record pause uuid-9\r\n");
    let out = c.until("calltap> ");
    assert!(out.contains("needs the operator role"), "{out}");
    assert!(worker.try_recv().is_err());
    c.send(b"login ct_operator\r\n");
    assert!(c
        .until("calltap> ")
        .contains("logged in as token operator-bot (operator)"));
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
    assert!(c.until("calltap> ").contains("needs the admin role"));
    c.send(b"login ct_admin\r\nwhoami\r\n");
    c.until("calltap> ");
    assert!(c.until("calltap> ").contains("token admin-bot (admin)"));
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

    c.send(b"whoami\r\n");
    assert!(c.until("calltap> ").contains("console password (admin)"));

    let mut c = Client::connect(con.addr);
    for _ in 0..3 {
        c.until("Password: ");
        c.send(b"nope\r\n");
    }
    let out = c.closed();
    assert!(!out.contains("calltap> "), "{out}");
    assert!(out.contains("too many failed logins, bye"), "{out}");
    assert_eq!(con.counters().login_failures.load(Ordering::Relaxed), 3);
}

/// With a password, an API token typed at the prompt logs in with the token's role; a token
/// store that cannot answer is said so and not counted as a failure.
#[test]
fn a_token_at_the_password_prompt_gets_its_role() {
    let (con, worker) = console(Some("pw"), IDLE);
    let mut c = Client::connect(con.addr);
    c.until("Password: ");
    c.send(b"ct_down\r\n");
    assert!(c
        .until("Password: ")
        .contains("cannot check API tokens now"));
    c.send(b"ct_viewer\r\n");
    assert!(c.until("calltap> ").contains("(viewer)"));
    c.send(b"show calls\r\n");
    assert!(c.until("calltap> ").contains("uuid-9"));
    c.send(b"record stop uuid-9\r\n");
    assert!(c.until("calltap> ").contains("needs the operator role"));
    // `login` asks for the password again, hidden; the password grants admin.
    c.send(b"login\r\n");
    c.until("Password: ");
    c.send(b"pw\r\n");
    assert!(c.until("calltap> ").contains("console password (admin)"));
    c.send(b"record stop uuid-9\r\n");
    assert!(c.until("calltap> ").contains("recording stopped"));
    assert!(matches!(worker.try_recv(), Ok(Control::Recording { .. })));
    assert_eq!(con.counters().login_failures.load(Ordering::Relaxed), 0);
}

/// Without a password nothing changes state before a login, and wrong tokens count against the
/// connection (closed at the third) and the peer address (refused at the limit, even on a new
/// connection).
#[test]
fn failed_logins_close_the_connection_then_refuse_the_peer() {
    let (live, worker) = live_with_call();
    let con = console_over(live, None, IDLE, quick_limits());
    let mut c = Client::connect(con.addr);
    assert!(c
        .until("calltap> ")
        .contains("read-only until 'login TOKEN'"));
    c.send(b"login\r\n");
    assert!(c.until("calltap> ").contains("usage: login TOKEN"));
    for cmd in ["record stop uuid-9", "reload", "log level trace"] {
        c.send(format!("{cmd}\r\n").as_bytes());
        let out = c.until("calltap> ");
        assert!(
            out.contains("refused") && out.contains("anonymous (viewer)"),
            "{out}"
        );
    }
    assert!(worker.try_recv().is_err());
    for _ in 0..2 {
        c.send(b"login ct_wrong\r\n");
        assert!(c.until("calltap> ").contains("login failed"));
    }
    c.send(b"login ct_wrong\r\n");
    assert!(c.closed().contains("too many failed logins, bye"));
    // The fourth failure from this address (per_peer 4) refuses it.
    let mut c = Client::connect(con.addr);
    c.until("calltap> ");
    c.send(b"login ct_wrong\r\n");
    assert!(c.closed().contains("from your address"));
    let mut c = Client::connect(con.addr);
    let out = c.closed();
    assert!(
        out.contains("too many failed logins from your address"),
        "{out}"
    );
    assert!(!out.contains("calltap> "), "{out}");
    assert_eq!(con.counters().login_failures.load(Ordering::Relaxed), 4);
}

#[test]
fn peer_failures_block_for_a_while_and_expire() {
    let limits = LoginLimits {
        per_peer: 3,
        ..LoginLimits::default()
    };
    let peers = PeerFailures::default();
    let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().expect("ip"), "::1".parse().expect("ip"));
    let t0 = Instant::now();
    assert!(!peers.failed(a, t0, &limits));
    assert!(!peers.failed(a, t0 + Duration::from_secs(1), &limits));
    // A failure after the window starts the count again.
    assert!(!peers.failed(a, t0 + Duration::from_secs(62), &limits));
    assert!(!peers.failed(a, t0 + Duration::from_secs(63), &limits));
    assert!(!peers.blocked(a, t0 + Duration::from_secs(63)));
    assert!(peers.failed(a, t0 + Duration::from_secs(64), &limits));
    assert!(peers.blocked(a, t0 + Duration::from_secs(65)));
    assert!(!peers.blocked(b, t0 + Duration::from_secs(65)));
    assert!(!peers.blocked(a, t0 + Duration::from_secs(125)));
}

#[test]
fn commands_need_the_roles_of_their_api_routes() {
    let need = |l: &str| needs(&l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(need("show calls"), Some(Role::Viewer));
    assert_eq!(need("show call x"), Some(Role::Viewer));
    assert_eq!(need("record pause x"), Some(Role::Operator));
    assert_eq!(need("reload"), Some(Role::Admin));
    assert_eq!(need("log level debug"), Some(Role::Admin));
    for free in ["help", "quit", "whoami", "frobnicate"] {
        assert_eq!(need(free), None, "{free}");
    }
}

#[test]
fn control_characters_are_escaped() {
    assert!(matches!(
        escape_control("Alice <sip:1000@h>"),
        Cow::Borrowed(_)
    ));
    assert_eq!(escape_control("a\x1b[2Jb"), "a\\x1b[2Jb");
    assert_eq!(escape_control("x\r\ny\tz"), "x\\r\\ny\\tz");
    assert_eq!(escape_control("\0\x7f\u{9b}"), "\\x00\\x7f\\x9b");
    assert_eq!(escape_control("é\u{2028}"), "é\u{2028}");
}

/// A caller's From, To and Call-ID reach the operator's terminal escaped.
#[test]
fn sip_text_is_printed_escaped() {
    let (live, _rx) = live_with_call();
    let mut s = crate::publish::live::tests::setup(7);
    s.uuid = "uuid-7".into();
    s.call_id = "cid-7\x1b[2J".into();
    s.from.user = Some("ev\x1b]0;x\x07".into());
    s.to.uri = "sip:2000\r\nX: y@h".into();
    let mut sink = crate::publish::live::LiveSink::new(Vec::<(u32, Control)>::new(), live.clone());
    crate::pipeline::ControlSink::send(&mut sink, 0, Control::Start(Box::new(s)));
    let con = console_over(live, None, IDLE, LoginLimits::default());
    let mut c = Client::connect(con.addr);
    c.until("calltap> ");
    c.send(b"show calls\r\nshow call uuid-7\r\n");
    let list = c.until("calltap> ");
    let detail = c.until("calltap> ");
    for out in [&list, &detail] {
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
    }
    assert!(list.contains("ev\\x1b]0;x"), "{list}");
    assert!(detail.contains("cid-7\\x1b[2J"), "{detail}");
    assert!(detail.contains("sip:2000\\r\\nX: y@h"), "{detail}");
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

/// Each accepted `record` command is handed to the audit hook with who did it (the token's id
/// and name, or the console password), the call and the peer; a refused one is not.
#[test]
fn record_commands_are_audited_with_who_and_peer() {
    let (live, worker) = live_with_call();
    let (tx, audited) = unbounded();
    let hook: AuditHook = Box::new(move |e| {
        let _ = tx.send(e);
    });
    let con = console_with(live, Some("pw"), IDLE, LoginLimits::default(), Some(hook));
    let mut c = Client::connect(con.addr);
    c.until("Password: ");
    c.send(b"ct_operator\r\n");
    assert!(c.until("calltap> ").contains("(operator)"));
    c.send(b"record pause uuid-9\r\n");
    assert!(c.until("calltap> ").contains("recording paused"));
    let e = audited
        .recv_timeout(Duration::from_secs(5))
        .expect("audited");
    assert_eq!(
        e.actor,
        Actor::Token {
            id: 1,
            name: "operator-bot".into()
        }
    );
    assert_eq!((e.action, e.call_uuid.as_str()), ("pause", "uuid-9"));
    assert_eq!(e.call_id.as_deref(), Some("cid-9"));
    let peer = e.peer.expect("peer");
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    // Refused (already paused): nothing to audit.
    c.send(b"record pause uuid-9\r\n");
    assert!(c.until("calltap> ").contains("error:"));
    c.send(b"login\r\n");
    c.until("Password: ");
    c.send(b"pw\r\n");
    assert!(c.until("calltap> ").contains("console password (admin)"));
    c.send(b"record resume uuid-9\r\n");
    assert!(c.until("calltap> ").contains("recording recording"));
    let e = audited
        .recv_timeout(Duration::from_secs(5))
        .expect("audited");
    assert_eq!((e.actor, e.action), (Actor::Console, "resume"));
    // Exactly the two accepted actions, both sent to the worker.
    assert!(audited.try_recv().is_err());
    assert_eq!(worker.try_iter().count(), 2);
}
