//! The telnet console: a line-oriented TCP console for troubleshooting (`[console] listen`,
//! 127.0.0.1:5023 by default), usable with the real `telnet` client.
//!
//! Telnet option negotiation is answered and stripped from the input: every option the client
//! offers or asks for is refused (DONT/WONT), except ECHO, which the console itself offers while
//! a password is typed so the client does not show it. Sub-negotiations and commands (NOP, AYT,
//! ...) are dropped. Lines are bounded ([`MAX_LINE`]), idle connections are closed after
//! [`IDLE`], and at most [`MAX_CONNECTIONS`] sessions run at once. The console only reads the
//! live-call registry and counters, and sends recording control like the API does; it never
//! touches the capture path.
//!
//! Access follows the API's roles ([`Role`]): each command needs the role of the matching API
//! route ([`needs`]). With a console password the session starts with a login (the password
//! grants admin, an API token its own role); without one it starts read-only (viewer) and
//! `login TOKEN` raises it, so a local process cannot steer recordings the API would refuse it.
//! Failed logins are logged with the peer, counted, and limited per connection and per peer
//! address ([`LoginLimits`]). SIP-derived text is printed through [`escape_control`]: callers
//! choose it, and raw control bytes would reach the operator's terminal.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use super::{
    api::{
        audit::{Actor, Entry as AuditEntry},
        auth::{Caller, Role},
        errors::ApiError,
    },
    live::LiveCalls,
};
use crate::pipeline::recording::RecordingAction;

/// Longest input line; longer lines are discarded with a message.
pub const MAX_LINE: usize = 512;
/// A session with no input for this long is closed.
pub const IDLE: Duration = Duration::from_secs(300);
/// Sessions at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 4;
/// Peers whose failed logins are remembered at once; past it, only the per-connection limit
/// holds for new peers (the table cannot be grown without bound by many source addresses).
const MAX_PEERS: usize = 1024;

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const OPT_ECHO: u8 = 1;

/// Checks an API bearer token against the API's token store ([`crate::publish::api::auth`]);
/// `ApiError::Unauthorized` for an unknown or revoked one.
pub type TokenCheck = Box<dyn Fn(&str) -> Result<Caller, ApiError> + Send + Sync>;

/// Writes a console recording action to the API's audit log ([`crate::publish::api::audit`]).
/// Must not block the session: the daemon's hook hands the row to the HTTP server's runtime,
/// which writes it bounded and logs and counts a failure.
pub type AuditHook = Box<dyn Fn(AuditEntry) + Send + Sync>;

/// What the console shows that only the daemon knows: each returns text to print.
pub struct ConsoleBackend {
    pub status: Box<dyn Fn() -> String + Send + Sync>,
    pub stats: Box<dyn Fn() -> String + Send + Sync>,
    pub reload: Box<dyn Fn() -> String + Send + Sync>,
    /// `login TOKEN`; None when the daemon serves no API (then only the password logs in).
    pub tokens: Option<TokenCheck>,
    /// The audit log of `record` commands; None when the daemon serves no API (the action is
    /// then only in the daemon's log).
    pub audit: Option<AuditHook>,
}

/// Console settings.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    pub listen: String,
    pub password: Option<String>,
    pub idle: Duration,
    pub limits: LoginLimits,
}

/// Bounds on password and token guessing.
#[derive(Clone, Debug)]
pub struct LoginLimits {
    /// Failed logins before the connection is closed.
    pub per_connection: u32,
    /// Failed logins of one peer address within `window` before it is refused for `block`.
    pub per_peer: u32,
    pub window: Duration,
    pub block: Duration,
    /// Pause after each failure, so guesses cannot be fired back to back.
    pub delay: Duration,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        LoginLimits {
            per_connection: 3,
            per_peer: 10,
            window: Duration::from_secs(60),
            block: Duration::from_secs(60),
            delay: Duration::from_millis(500),
        }
    }
}

/// What the console counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConsoleCounters {
    pub login_failures: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console: cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("console thread: {0}")]
    Thread(io::Error),
}

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("wrong password or token")]
    Wrong,
    /// The token store could not be asked (database down): not the caller's fault, not counted.
    #[error("cannot check API tokens now: {0}")]
    Unavailable(String),
}

struct Ctx {
    live: Arc<LiveCalls>,
    backend: ConsoleBackend,
    password_sha: Option<[u8; 32]>,
    idle: Duration,
    sessions: AtomicUsize,
    stop: Arc<AtomicBool>,
    limits: LoginLimits,
    peers: PeerFailures,
    counters: Arc<ConsoleCounters>,
}

/// The running console; stops (closing the listener) when dropped.
pub struct Console {
    pub addr: SocketAddr,
    counters: Arc<ConsoleCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Failed logins per peer address: who is refused for a while.
#[derive(Default)]
struct PeerFailures {
    peers: Mutex<HashMap<IpAddr, PeerRecord>>,
}

#[derive(Clone, Copy)]
struct PeerRecord {
    /// Start of the window the failures are counted in.
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

impl PeerFailures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, PeerRecord>> {
        // Records are replaced whole; a panic elsewhere cannot leave one half-written.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `ip` is refused at `now`.
    fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock()
            .get(&ip)
            .and_then(|r| r.blocked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a failure of `ip`; true when it is now refused.
    fn failed(&self, ip: IpAddr, now: Instant, limits: &LoginLimits) -> bool {
        let mut peers = self.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            peers.retain(|_, r| {
                r.blocked_until.is_some_and(|u| now < u)
                    || now.saturating_duration_since(r.since) <= limits.window
            });
            if peers.len() >= MAX_PEERS {
                return false;
            }
        }
        let r = peers.entry(ip).or_insert(PeerRecord {
            since: now,
            count: 0,
            blocked_until: None,
        });
        if now.saturating_duration_since(r.since) > limits.window {
            r.since = now;
            r.count = 0;
        }
        r.count += 1;
        if r.count >= limits.per_peer {
            r.blocked_until = Some(now + limits.block);
            r.since = now;
            r.count = 0;
            return true;
        }
        r.blocked_until.is_some_and(|u| now < u)
    }
}

impl Console {
    pub fn start(
        cfg: ConsoleConfig,
        live: Arc<LiveCalls>,
        backend: ConsoleBackend,
    ) -> Result<Console, ConsoleError> {
        let bind_err = |source| ConsoleError::Bind {
            addr: cfg.listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&cfg.listen).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ConsoleCounters::default());
        let ctx = Arc::new(Ctx {
            live,
            backend,
            password_sha: cfg
                .password
                .as_ref()
                .map(|p| Sha256::digest(p.as_bytes()).into()),
            idle: cfg.idle,
            sessions: AtomicUsize::new(0),
            stop: stop.clone(),
            limits: cfg.limits.clone(),
            peers: PeerFailures::default(),
            counters: counters.clone(),
        });
        let thread = thread::Builder::new()
            .name("console".into())
            .spawn(move || accept_loop(listener, ctx))
            .map_err(ConsoleError::Thread)?;
        Ok(Console {
            addr,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// Failed logins so far (for `/metrics`).
    pub fn counters(&self) -> Arc<ConsoleCounters> {
        self.counters.clone()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    while !ctx.stop.load(Ordering::Acquire) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                log::warn!("console: accept: {e}");
                thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        if ctx.peers.blocked(peer.ip(), Instant::now()) {
            let mut s = stream;
            let _ = s.write_all(b"too many failed logins from your address; try again later\r\n");
            continue;
        }
        if ctx.sessions.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            ctx.sessions.fetch_sub(1, Ordering::AcqRel);
            let mut s = stream;
            let _ = s.write_all(b"too many console sessions; try again later\r\n");
            continue;
        }
        let c = ctx.clone();
        let spawned = thread::Builder::new()
            .name("console-session".into())
            .spawn(move || {
                let mut session = Session::new(stream, peer, &c);
                if let Err(e) = session.run() {
                    log::debug!("console session ended: {e}");
                }
                c.sessions.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            ctx.sessions.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Telnet input decoding: IAC sequences are answered or dropped, the rest is line text.
#[derive(Default)]
struct Telnet {
    state: TState,
    /// We offered WILL ECHO (password entry): the client's DO ECHO is its consent.
    echo_offered: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum TState {
    #[default]
    Data,
    Iac,
    /// Got IAC + DO/DONT/WILL/WONT; the next byte is the option.
    Opt(u8),
    Sub,
    SubIac,
}

impl Telnet {
    /// Feeds one input byte: the data byte, if it is one; replies go to `reply`.
    fn feed(&mut self, b: u8, reply: &mut Vec<u8>) -> Option<u8> {
        match self.state {
            TState::Data => {
                if b == IAC {
                    self.state = TState::Iac;
                    None
                } else {
                    Some(b)
                }
            }
            TState::Iac => {
                self.state = TState::Data;
                match b {
                    IAC => Some(IAC),
                    DO | DONT | WILL | WONT => {
                        self.state = TState::Opt(b);
                        None
                    }
                    SB => {
                        self.state = TState::Sub;
                        None
                    }
                    // NOP, AYT, IP, GA, ...: nothing to do for a line console.
                    _ => None,
                }
            }
            TState::Opt(verb) => {
                self.state = TState::Data;
                match verb {
                    DO if b == OPT_ECHO && self.echo_offered => {}
                    DO => reply.extend_from_slice(&[IAC, WONT, b]),
                    WILL => reply.extend_from_slice(&[IAC, DONT, b]),
                    // DONT/WONT: already off; acknowledging would risk a loop.
                    _ => {}
                }
                None
            }
            TState::Sub => {
                if b == IAC {
                    self.state = TState::SubIac;
                }
                None
            }
            TState::SubIac => {
                self.state = if b == SE { TState::Data } else { TState::Sub };
                None
            }
        }
    }
}

struct Session<'a> {
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &'a Ctx,
    /// What this session may do: viewer until a login raises it.
    role: Role,
    /// Who it is, for `whoami` and the log: anonymous, the console password, or a token's name.
    who: String,
    /// Who it is for the audit log; None until a login.
    actor: Option<Actor>,
    /// Failed logins on this connection.
    failures: u32,
    telnet: Telnet,
    buf: Vec<u8>,
    /// Bytes read but not yet consumed.
    pending: Vec<u8>,
    at: usize,
}

/// How a login attempt ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempt {
    In,
    /// Not logged in; the session may try again.
    Retry,
    /// Failed too often (or the peer closed): the session ends.
    Close,
}

enum Line {
    Text(String),
    TooLong,
}

impl<'a> Session<'a> {
    fn new(stream: TcpStream, peer: SocketAddr, ctx: &'a Ctx) -> Session<'a> {
        Session {
            stream,
            peer,
            ctx,
            role: Role::Viewer,
            who: "anonymous".to_string(),
            actor: None,
            failures: 0,
            telnet: Telnet::default(),
            buf: Vec::with_capacity(MAX_LINE),
            pending: Vec::new(),
            at: 0,
        }
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        // Telnet wants CR LF line ends.
        let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
        self.stream.write_all(text.as_bytes())
    }

    /// The next input line (None: connection closed).
    fn read_line(&mut self) -> io::Result<Option<Line>> {
        let mut too_long = false;
        let mut reply = Vec::new();
        loop {
            while self.at < self.pending.len() {
                let b = self.pending[self.at];
                self.at += 1;
                let Some(b) = self.telnet.feed(b, &mut reply) else {
                    continue;
                };
                match b {
                    b'\n' | b'\r' => {
                        if !reply.is_empty() {
                            self.stream.write_all(&reply)?;
                        }
                        // CR LF and CR NUL arrive as two bytes: skip the second.
                        if b == b'\r' {
                            if let Some(&n) = self.pending.get(self.at) {
                                if n == b'\n' || n == 0 {
                                    self.at += 1;
                                }
                            }
                        }
                        let line = String::from_utf8_lossy(&self.buf).trim().to_string();
                        self.buf.clear();
                        return Ok(Some(if too_long {
                            Line::TooLong
                        } else {
                            Line::Text(line)
                        }));
                    }
                    0 => {}
                    // Backspace / DEL from a character-mode client.
                    8 | 127 => {
                        self.buf.pop();
                    }
                    b if b < 32 => {}
                    b => {
                        if self.buf.len() >= MAX_LINE {
                            too_long = true;
                        } else {
                            self.buf.push(b);
                        }
                    }
                }
            }
            if !reply.is_empty() {
                self.stream.write_all(&reply)?;
                reply.clear();
            }
            self.pending.resize(1024, 0);
            let n = match self.stream.read(&mut self.pending) {
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    let _ = self.write("\nidle timeout; bye\n");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            self.pending.truncate(n);
            self.at = 0;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        self.stream.set_read_timeout(Some(self.ctx.idle))?;
        self.stream
            .set_write_timeout(Some(Duration::from_secs(10)))?;
        self.write(&format!(
            "CallTap {} console. Type 'help' for commands.\n",
            env!("CARGO_PKG_VERSION")
        ))?;
        if self.ctx.password_sha.is_some() {
            loop {
                match self.password_prompt()? {
                    Attempt::In => break,
                    Attempt::Retry => {}
                    Attempt::Close => return Ok(()),
                }
            }
        } else {
            self.write("read-only until 'login TOKEN' (an API token)\n")?;
        }
        loop {
            if self.ctx.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            self.write("calltap> ")?;
            let line = match self.read_line()? {
                None => return Ok(()),
                Some(Line::TooLong) => {
                    self.write(&format!("line too long (at most {MAX_LINE} bytes)\n"))?;
                    continue;
                }
                Some(Line::Text(l)) => l,
            };
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let keep = match words.as_slice() {
                ["login"] if self.ctx.password_sha.is_some() => {
                    self.password_prompt()? != Attempt::Close
                }
                ["login"] => {
                    self.write("usage: login TOKEN (no console password is set)\n")?;
                    true
                }
                ["login", secret] => {
                    let secret = secret.to_string();
                    self.try_login(&secret)? != Attempt::Close
                }
                _ => match self.command(&words, &line) {
                    Some(out) => {
                        self.write(&out)?;
                        true
                    }
                    None => {
                        self.write("bye\n")?;
                        false
                    }
                },
            };
            if !keep {
                return Ok(());
            }
        }
    }

    /// Asks for the password or a token, hidden by offering ECHO: one attempt.
    fn password_prompt(&mut self) -> io::Result<Attempt> {
        self.telnet.echo_offered = true;
        self.stream.write_all(&[IAC, WILL, OPT_ECHO])?;
        self.write("Password: ")?;
        let line = self.read_line()?;
        self.stream.write_all(&[IAC, WONT, OPT_ECHO])?;
        self.telnet.echo_offered = false;
        self.write("\n")?;
        match line {
            None => Ok(Attempt::Close),
            Some(Line::Text(t)) => self.try_login(&t),
            // Longer than any password we would match: a failure like a wrong one.
            Some(Line::TooLong) => self.login_failed(),
        }
    }

    /// One login attempt with `secret` (the console password or an API token).
    fn try_login(&mut self, secret: &str) -> io::Result<Attempt> {
        match self.check(secret) {
            Ok((role, who, actor)) => {
                log::info!(
                    "console: {} logged in as {who} ({})",
                    self.peer,
                    role.as_str()
                );
                self.write(&format!("logged in as {who} ({})\n", role.as_str()))?;
                self.role = role;
                self.who = who;
                self.actor = Some(actor);
                Ok(Attempt::In)
            }
            Err(e @ LoginError::Unavailable(_)) => {
                self.write(&format!("login: {e}\n"))?;
                Ok(Attempt::Retry)
            }
            Err(LoginError::Wrong) => self.login_failed(),
        }
    }

    /// The role `secret` grants: the console password admin, an API token its own role.
    fn check(&self, secret: &str) -> Result<(Role, String, Actor), LoginError> {
        if let Some(want) = &self.ctx.password_sha {
            let got: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            // Digests compared whole: the time taken does not depend on where they differ.
            if got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
                return Ok((Role::Admin, "console password".to_string(), Actor::Console));
            }
        }
        let Some(tokens) = &self.ctx.backend.tokens else {
            return Err(LoginError::Wrong);
        };
        match tokens(secret) {
            Ok(c) => Ok((
                c.role,
                format!("token {}", escape_control(&c.name)),
                Actor::from(&c),
            )),
            Err(ApiError::Unauthorized) => Err(LoginError::Wrong),
            Err(e) => Err(LoginError::Unavailable(e.to_string())),
        }
    }

    /// Logs, counts and slows down a failed login; Close when the connection or its peer has
    /// failed too often.
    fn login_failed(&mut self) -> io::Result<Attempt> {
        let limits = &self.ctx.limits;
        log::warn!("console: failed login from {}", self.peer);
        self.ctx
            .counters
            .login_failures
            .fetch_add(1, Ordering::Relaxed);
        self.failures += 1;
        let peer_blocked = self
            .ctx
            .peers
            .failed(self.peer.ip(), Instant::now(), limits);
        thread::sleep(limits.delay);
        if peer_blocked {
            log::warn!(
                "console: {} refused for {} s after repeated failed logins",
                self.peer.ip(),
                limits.block.as_secs()
            );
            self.write("login failed; too many failed logins from your address, bye\n")?;
            return Ok(Attempt::Close);
        }
        if self.failures >= limits.per_connection {
            self.write("login failed; too many failed logins, bye\n")?;
            return Ok(Attempt::Close);
        }
        self.write("login failed\n")?;
        Ok(Attempt::Retry)
    }

    /// Runs one command; None means the session ends.
    fn command(&self, words: &[&str], line: &str) -> Option<String> {
        let ctx = self.ctx;
        if let Some(need) = needs(words) {
            if self.role < need {
                return Some(format!(
                    "refused: {:?} needs the {} role; you are {} ({}). \
                     Log in with 'login TOKEN' (or 'login' and the console password)\n",
                    words.join(" "),
                    need.as_str(),
                    self.who,
                    self.role.as_str()
                ));
            }
        }
        Some(match words {
            ["quit"] | ["exit"] => return None,
            ["help"] | ["?"] => HELP.to_string(),
            ["whoami"] => format!("{} ({})\n", self.who, self.role.as_str()),
            ["show", "status"] => (ctx.backend.status)(),
            ["show", "stats"] => (ctx.backend.stats)(),
            ["show", "calls"] => show_calls(&ctx.live),
            ["show", "call", id] => show_call(&ctx.live, id),
            ["record", action, id] => match RecordingAction::parse(action) {
                None => "usage: record start|stop|pause|resume ID\n".to_string(),
                Some(a) => {
                    let Some(uuid) = find_call(&ctx.live, id) else {
                        return Some(format!("no active call {id}\n"));
                    };
                    match ctx.live.control(&uuid, a) {
                        Ok(c) => {
                            log::info!(
                                "recording {} of call {} ({}) by console ({}, {})",
                                a.as_str(),
                                escape_control(&c.call_id),
                                c.uuid,
                                self.peer,
                                self.who
                            );
                            if let (Some(audit), Some(actor)) =
                                (&ctx.backend.audit, self.actor.clone())
                            {
                                audit(AuditEntry {
                                    actor,
                                    action: a.as_str(),
                                    call_uuid: c.uuid.clone(),
                                    call_id: Some(c.call_id.clone()),
                                    peer: Some(self.peer.to_string()),
                                });
                            }
                            format!("call {}: recording {}\n", c.uuid, c.recording.as_str())
                        }
                        Err(e) => format!("error: {e}\n"),
                    }
                }
            },
            ["reload"] => (ctx.backend.reload)(),
            ["log", "level", level] => match level.parse::<log::LevelFilter>() {
                Ok(l) => {
                    log::set_max_level(l);
                    format!("log level {l}\n")
                }
                Err(_) => "usage: log level off|error|warn|info|debug|trace\n".to_string(),
            },
            _ => format!("unknown command {line:?}; type 'help'\n"),
        })
    }
}

/// The least role a command needs: the role of the matching API route (`GET` routes viewer,
/// recording control operator, reload and the rest admin). None: no role (help, quit, whoami,
/// and unknown commands, which only get their usage).
fn needs(words: &[&str]) -> Option<Role> {
    match words {
        ["show", ..] => Some(Role::Viewer),
        ["record", ..] => Some(Role::Operator),
        ["reload", ..] | ["log", ..] => Some(Role::Admin),
        _ => None,
    }
}

const HELP: &str = "\
show status                      recorder status (capture, workers, stores)
show calls                       calls in progress
show call ID                     one call in progress (uuid or SIP Call-ID)
show stats                       counters (capture, calls, webhooks)
record start|stop|pause|resume ID  recording control of a call in progress
reload                           configuration reload (see its answer)
log level LEVEL                  off, error, warn, info, debug or trace
login TOKEN                      log in with an API token (its role)
login                            log in with the console password (admin)
whoami                           who this session is logged in as, and its role
help                             this list
quit                             close the session
Without a login the console is read-only (viewer); record needs operator, reload and
log level need admin, as in the REST API.
";

/// `s` with control characters escaped (ESC as `\x1b`, CR as `\r`, ...): SIP headers are chosen
/// by callers, and printed raw they could move the cursor or rewrite an operator's terminal.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The uuid of the live call `id` names: its uuid or its SIP Call-ID.
fn find_call(live: &LiveCalls, id: &str) -> Option<String> {
    if live.get(id).is_some() {
        return Some(id.to_string());
    }
    live.list()
        .into_iter()
        .find(|c| c.call_id == id)
        .map(|c| c.uuid)
}

fn show_calls(live: &LiveCalls) -> String {
    let calls = live.list();
    let mut out = format!("{} active call(s)\n", calls.len());
    if calls.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{:<33} {:<10} {:<10} {:<9} {:<10} {:>3}  {}\n",
        "UUID", "FROM", "TO", "STATE", "RECORDING", "WRK", "START"
    ));
    for c in &calls {
        out.push_str(&format!(
            "{:<33} {:<10} {:<10} {:<9} {:<10} {:>3}  {}\n",
            escape_control(&c.uuid),
            clip(&escape_control(c.from_display()), 10),
            clip(&escape_control(c.to_display()), 10),
            c.state.as_str(),
            c.recording.as_str(),
            c.worker,
            c.start
        ));
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn show_call(live: &LiveCalls, id: &str) -> String {
    let Some(c) = find_call(live, id).and_then(|u| live.get(&u)) else {
        return format!("no active call {id}\n");
    };
    format!(
        "uuid       {}\ncall-id    {}\nfrom       {}\nto         {}\nstart      {}\nanswered   {}\nstate      {}\nrecording  {}\nworker     {}\n",
        escape_control(&c.uuid),
        escape_control(&c.call_id),
        escape_control(&c.from_uri),
        escape_control(&c.to_uri),
        c.start,
        c.answered.as_deref().unwrap_or("-"),
        c.state.as_str(),
        c.recording.as_str(),
        c.worker
    )
}

#[cfg(test)]
mod tests;
