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

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use sha2::{Digest as _, Sha256};

use super::live::LiveCalls;
use crate::pipeline::recording::RecordingAction;

/// Longest input line; longer lines are discarded with a message.
pub const MAX_LINE: usize = 512;
/// A session with no input for this long is closed.
pub const IDLE: Duration = Duration::from_secs(300);
/// Sessions at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 4;
/// Wrong passwords before the connection is closed.
const PASSWORD_TRIES: u32 = 3;

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const OPT_ECHO: u8 = 1;

/// What the console shows that only the daemon knows: each returns text to print.
pub struct ConsoleBackend {
    pub status: Box<dyn Fn() -> String + Send + Sync>,
    pub stats: Box<dyn Fn() -> String + Send + Sync>,
    pub reload: Box<dyn Fn() -> String + Send + Sync>,
}

/// Console settings.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    pub listen: String,
    pub password: Option<String>,
    pub idle: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console: cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("console thread: {0}")]
    Thread(io::Error),
}

struct Ctx {
    live: Arc<LiveCalls>,
    backend: ConsoleBackend,
    password_sha: Option<[u8; 32]>,
    idle: Duration,
    sessions: AtomicUsize,
    stop: Arc<AtomicBool>,
}

/// The running console; stops (closing the listener) when dropped.
pub struct Console {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
        });
        let thread = thread::Builder::new()
            .name("console".into())
            .spawn(move || accept_loop(listener, ctx))
            .map_err(ConsoleError::Thread)?;
        Ok(Console {
            addr,
            stop,
            thread: Some(thread),
        })
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
        let stream = match listener.accept() {
            Ok((s, _)) => s,
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
                let mut session = Session::new(stream, &c);
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
    ctx: &'a Ctx,
    telnet: Telnet,
    buf: Vec<u8>,
    /// Bytes read but not yet consumed.
    pending: Vec<u8>,
    at: usize,
}

enum Line {
    Text(String),
    TooLong,
}

impl<'a> Session<'a> {
    fn new(stream: TcpStream, ctx: &'a Ctx) -> Session<'a> {
        Session {
            stream,
            ctx,
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
        if let Some(want) = self.ctx.password_sha {
            if !self.login(&want)? {
                return Ok(());
            }
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
            match self.command(&line) {
                Some(out) => self.write(&out)?,
                None => {
                    self.write("bye\n")?;
                    return Ok(());
                }
            }
        }
    }

    /// Asks for the password (hidden by offering ECHO); false: wrong too often or closed.
    fn login(&mut self, want: &[u8; 32]) -> io::Result<bool> {
        for _ in 0..PASSWORD_TRIES {
            self.telnet.echo_offered = true;
            self.stream.write_all(&[IAC, WILL, OPT_ECHO])?;
            self.write("Password: ")?;
            let line = self.read_line()?;
            self.stream.write_all(&[IAC, WONT, OPT_ECHO])?;
            self.telnet.echo_offered = false;
            self.write("\n")?;
            let Some(line) = line else {
                return Ok(false);
            };
            let got: [u8; 32] = match &line {
                Line::Text(t) => Sha256::digest(t.as_bytes()).into(),
                Line::TooLong => [0; 32],
            };
            // Digests compared whole: the time taken does not depend on where they differ.
            if got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
                return Ok(true);
            }
            thread::sleep(Duration::from_millis(500));
            self.write("wrong password\n")?;
        }
        Ok(false)
    }

    /// Runs one command; None means the session ends.
    fn command(&self, line: &str) -> Option<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ctx = self.ctx;
        Some(match words.as_slice() {
            ["quit"] | ["exit"] => return None,
            ["help"] | ["?"] => HELP.to_string(),
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
                                "recording {} of call {} ({}) by console",
                                a.as_str(),
                                c.call_id,
                                c.uuid
                            );
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

const HELP: &str = "\
show status                      recorder status (capture, workers, stores)
show calls                       calls in progress
show call ID                     one call in progress (uuid or SIP Call-ID)
show stats                       counters (capture, calls, webhooks)
record start|stop|pause|resume ID  recording control of a call in progress
reload                           configuration reload (see its answer)
log level LEVEL                  off, error, warn, info, debug or trace
help                             this list
quit                             close the session
";

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
            c.uuid,
            clip(c.from_display(), 10),
            clip(c.to_display(), 10),
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
        c.uuid,
        c.call_id,
        c.from_uri,
        c.to_uri,
        c.start,
        c.answered.as_deref().unwrap_or("-"),
        c.state.as_str(),
        c.recording.as_str(),
        c.worker
    )
}

#[cfg(test)]
mod tests;
