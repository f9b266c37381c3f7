//! Webhooks: `call.started`, `call.answered`, `call.ended` and `recording.archived` POSTed as
//! JSON to one configured URL, signed with HMAC-SHA256.
//!
//! Capture never waits for a receiver: producers (the signalling thread through the live-call
//! registry, the `cdr` thread, the archiver) hand an event to a bounded channel and go on; when
//! the channel is full the event is appended to the disk queue directly. The delivery thread
//! writes every event to that queue (`webhooks.queue` in the data directory, fsync'd) before it
//! tries to deliver it, and an acknowledgement line after the receiver answered 2xx, so an event
//! is delivered after a restart or while the receiver is down for hours. Retries back off
//! exponentially from [`FIRST_BACKOFF`] up to `[webhooks] max_backoff_ms`, for ever: nothing is
//! dropped unless the queue passes [`MAX_PENDING`] events.
//!
//! Delivery is at least once: an event whose 2xx answer is lost (receiver timeout, power cut
//! between answer and acknowledgement) is sent again with the same `id`, which receivers use to
//! drop duplicates. Events are delivered one at a time, in the order they were produced.
//!
//! Request: `POST` with `Content-Type: application/json`, `X-CallTap-Event: <type>`,
//! `X-CallTap-Delivery: <id>` and `X-CallTap-Signature: sha256=<hex HMAC-SHA256 of the body
//! with [webhooks] secret>`; body `{"id","type","created","data"}`.

use std::{
    collections::{HashSet, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{config::WebhooksConfig, live::LiveCall};
use crate::store::cdr::Cdr;

/// Events waiting in memory between producers and the delivery thread.
const CHANNEL: usize = 1024;
/// First pause after a failed delivery; doubled per failure up to the configured maximum.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Undelivered events kept at most (about 1 KB each on disk and in memory); beyond, new events
/// are counted in `dropped` and logged, so a receiver gone for months cannot fill the disk.
pub const MAX_PENDING: usize = 500_000;
/// Acknowledged lines after which the queue file is rewritten with only pending events.
const COMPACT_AFTER: usize = 1024;
/// How long the delivery thread keeps trying when the recorder stops; what is left stays
/// queued for the next start.
const DRAIN_ON_STOP: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("[webhooks] url {0:?}: expected http[s]://HOST[:PORT][/PATH]")]
    Url(String),
    #[error("[webhooks] TLS: {0}")]
    Tls(String),
    #[error("webhook queue {path}: {source}")]
    Queue { path: PathBuf, source: io::Error },
    #[error("webhook delivery thread: {0}")]
    Thread(io::Error),
}

/// Delivery settings, from `[webhooks]`.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// Trusted besides the system's CAs for an https URL.
    pub ca_file: Option<PathBuf>,
}

impl WebhookConfig {
    /// None when no URL is configured.
    pub fn new(section: &WebhooksConfig) -> Option<WebhookConfig> {
        Some(WebhookConfig {
            url: section.url.clone()?,
            secret: section.secret.clone(),
            timeout: Duration::from_millis(section.timeout_ms),
            max_backoff: Duration::from_millis(section.max_backoff_ms),
            ca_file: section.ca_file.clone(),
        })
    }
}

/// A webhook receiver's address: `http://` or `https://`, host, port, path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub tls: bool,
    /// As written (an IPv6 address keeps its brackets).
    pub host: String,
    pub port: u16,
    /// With the query, if any; `/` when the URL has none.
    pub path: String,
}

/// Splits an `http[s]://HOST[:PORT][/PATH]` URL (ports default to 80 and 443).
pub fn parse_http_url(url: &str) -> Option<HttpUrl> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains(char::is_whitespace) {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        (&authority[..end], &authority[end..])
    } else {
        match authority.split_once(':') {
            Some((h, _)) => (h, &authority[h.len()..]),
            None => (authority, ""),
        }
    };
    let port = match port.strip_prefix(':') {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
        None if port.is_empty() => {
            if tls {
                443
            } else {
                80
            }
        }
        None => return None,
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    Some(HttpUrl {
        tls,
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// One event as delivered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Stable and unique: the call's uuid and the event type, the same on every retry.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339 UTC, when the event was produced.
    pub created: String,
    pub data: Value,
}

impl Event {
    fn new(kind: &str, subject: &str, data: Value) -> Event {
        Event {
            id: format!("{subject}.{kind}"),
            kind: kind.to_string(),
            created: crate::store::cdr::rfc3339(crate::clock::unix_ns()),
            data,
        }
    }
}

/// Delivery counters, for `/metrics` and the console.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    queued: AtomicU64,
    delivered: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
    pending: AtomicU64,
}

/// A reading of [`WebhookCounters`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WebhookSnapshot {
    /// Events accepted since start.
    pub queued: u64,
    /// Events the receiver acknowledged with 2xx.
    pub delivered: u64,
    /// Delivery attempts that failed (connection refused, timeout, non-2xx).
    pub failures: u64,
    /// Attempts that were retries of an earlier failure.
    pub retries: u64,
    /// Events refused because [`MAX_PENDING`] were waiting.
    pub dropped: u64,
    /// Events waiting for delivery now (including those restored from disk).
    pub pending: u64,
}

impl WebhookCounters {
    pub fn snapshot(&self) -> WebhookSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WebhookSnapshot {
            queued: r(&self.queued),
            delivered: r(&self.delivered),
            failures: r(&self.failures),
            retries: r(&self.retries),
            dropped: r(&self.dropped),
            pending: r(&self.pending),
        }
    }
}

/// The disk queue: every event line, then an ack line when it is delivered.
struct Queue {
    path: PathBuf,
    file: File,
    pending: VecDeque<Event>,
    /// Acknowledged lines in the file (compaction trigger).
    acked: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    Event { event: Event },
    Ack { id: String },
}

impl Queue {
    fn open(path: &Path) -> io::Result<Queue> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut pending: VecDeque<Event> = VecDeque::new();
        let mut acked = 0;
        if let Ok(f) = File::open(path) {
            let mut acks = HashSet::new();
            let mut events = Vec::new();
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line (crash mid-append) is skipped; the event was never
                // acknowledged to its producer as stored, so nothing is lost by it.
                match serde_json::from_str::<Line>(&line) {
                    Ok(Line::Event { event }) => events.push(event),
                    Ok(Line::Ack { id }) => {
                        acks.insert(id);
                    }
                    Err(_) => log::warn!("{}: skipping unreadable line", path.display()),
                }
            }
            acked = acks.len();
            pending = events
                .into_iter()
                .filter(|e| !acks.contains(&e.id))
                .collect();
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut q = Queue {
            path: path.to_path_buf(),
            file,
            pending,
            acked,
        };
        if q.acked > 0 {
            q.compact()?;
        }
        Ok(q)
    }

    /// One line in one write (O_APPEND): in the page cache at once, so a process crash keeps
    /// it; [`Shared::sync`] makes it survive a power cut, outside the lock.
    fn append(&mut self, line: &Line) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.file.write_all(&bytes)
    }

    fn push(&mut self, event: Event) -> io::Result<()> {
        self.append(&Line::Event {
            event: event.clone(),
        })?;
        self.pending.push_back(event);
        Ok(())
    }

    /// The front event was delivered.
    fn ack(&mut self) -> io::Result<()> {
        let Some(e) = self.pending.pop_front() else {
            return Ok(());
        };
        self.append(&Line::Ack { id: e.id })?;
        self.acked += 1;
        if self.acked >= COMPACT_AFTER && self.acked >= self.pending.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file with the pending events only: written beside it, fsync'd, renamed over
    /// it, directory fsync'd, so a crash leaves either the old or the new file whole.
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("queue.tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for e in &self.pending {
                serde_json::to_writer(&mut buf, &Line::Event { event: e.clone() })
                    .map_err(io::Error::other)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.acked = 0;
        Ok(())
    }
}

struct Shared {
    queue: Mutex<Queue>,
    counters: Arc<WebhookCounters>,
    /// [`Webhooks::finish`] was called: the delivery thread drains and stops even while
    /// producers (the live-call registry's listener) still hold senders.
    stopping: std::sync::atomic::AtomicBool,
    /// Lines were appended since the last fsync.
    dirty: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is consistent between calls (each append is one write).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// fsyncs the queue file if anything was appended, on a duplicate of its descriptor so
    /// producers overflowing into the queue never wait for the disk.
    fn sync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let (file, path) = {
            let q = self.lock();
            (q.file.try_clone(), q.path.clone())
        };
        if let Err(e) = file.and_then(|f| f.sync_data()) {
            log::error!("webhooks: fsync {}: {e}", path.display());
        }
    }

    /// Stores `event` in the disk queue (or counts it dropped when the queue is full); a
    /// write, no fsync (see [`Shared::sync`]).
    fn store(&self, event: Event) {
        let mut q = self.lock();
        if q.pending.len() >= MAX_PENDING {
            if self.counters.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                log::error!(
                    "webhooks: {MAX_PENDING} events undelivered; dropping new ones (receiver down?)"
                );
            }
            return;
        }
        let id = event.id.clone();
        self.dirty.store(true, Ordering::Release);
        match q.push(event) {
            Ok(()) => {
                self.counters
                    .pending
                    .store(q.pending.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                log::error!("webhooks: {}: {e}; event {id} not stored", q.path.display());
            }
        }
    }
}

/// Where producers hand events. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct WebhookSender {
    tx: Sender<Event>,
    shared: Arc<Shared>,
}

impl WebhookSender {
    pub fn send(&self, event: Event) {
        self.shared.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.shared.stopping.load(Ordering::Acquire) {
            // The delivery thread may already have drained its channel for the last time.
            self.shared.store(event);
            self.shared.sync();
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            // The delivery thread is behind: straight to the disk queue.
            Err(TrySendError::Full(e)) => self.shared.store(e),
            Err(TrySendError::Disconnected(e)) => self.shared.store(e),
        }
    }

    pub fn call_started(&self, c: &LiveCall) {
        self.send(Event::new("call.started", &c.uuid, live_data(c)));
    }

    pub fn call_answered(&self, c: &LiveCall) {
        self.send(Event::new("call.answered", &c.uuid, live_data(c)));
    }

    pub fn call_ended(&self, cdr: &Cdr) {
        let recording = cdr.recording.as_ref().map(|r| {
            json!({
                "path": r.path, "bytes": r.bytes, "sha256": r.sha256,
                "duration_ms": r.duration_ms, "sample_rate": r.sample_rate,
            })
        });
        let data = json!({
            "uuid": cdr.uuid, "call_id": cdr.call_id,
            "from_user": cdr.from.user, "from_uri": cdr.from.uri,
            "to_user": cdr.to.user, "to_uri": cdr.to.uri,
            "start": cdr.start, "answer": cdr.answer, "end": cdr.end,
            "duration_ms": cdr.duration_ms, "talk_ms": cdr.talk_ms,
            "end_reason": cdr.end_reason,
            "recording": recording,
            "recording_events": cdr.recording_events,
        });
        self.send(Event::new("call.ended", &cdr.uuid, data));
    }

    /// A call signalling evicted unanswered at `at_ns` (see [`super::live::LiveEvent::Evicted`]):
    /// its `call.ended`, so every `call.started` has one.
    pub fn call_evicted(&self, c: &LiveCall, at_ns: u64) {
        let start_ms = c.start_ns / 1_000_000;
        let data = json!({
            "uuid": c.uuid, "call_id": c.call_id,
            "from_user": c.from_user, "from_uri": c.from_uri,
            "to_user": c.to_user, "to_uri": c.to_uri,
            "start": c.start, "answer": null, "end": crate::store::cdr::rfc3339(at_ns),
            "duration_ms": (at_ns / 1_000_000).saturating_sub(start_ms), "talk_ms": 0,
            "end_reason": calltap_sip::dialog::EndReason::Evicted.as_str(),
            "recording": null, "recording_events": [],
        });
        self.send(Event::new("call.ended", &c.uuid, data));
    }

    /// For the archiver: the call's recording now lives at `location` (a path or an object
    /// URL in long-term storage).
    pub fn recording_archived(&self, uuid: &str, location: &str, bytes: u64, sha256: &str) {
        let data = json!({"uuid": uuid, "location": location, "bytes": bytes, "sha256": sha256});
        self.send(Event::new("recording.archived", uuid, data));
    }
}

fn live_data(c: &LiveCall) -> Value {
    json!({
        "uuid": c.uuid, "call_id": c.call_id,
        "from_user": c.from_user, "from_uri": c.from_uri,
        "to_user": c.to_user, "to_uri": c.to_uri,
        "start": c.start, "answer": c.answered, "worker": c.worker,
    })
}

/// `sha256=<hex>` of `body` under `secret`: the `X-CallTap-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How an https receiver is checked: the system's CA certificates (Debian's ca-certificates)
/// and those of `ca_file`.
fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, WebhookError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (system, _unparsable) = roots.add_parsable_certificates(native.certs);
    if let Some(f) = ca_file {
        let certs = super::tls::read_certs(f)
            .map_err(|e| WebhookError::Tls(format!("ca_file = {}: {e}", f.display())))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| WebhookError::Tls(format!("ca_file = {}: {e}", f.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(WebhookError::Tls(
            "no CA certificate to check the receiver with: install ca-certificates or set \
             [webhooks] ca_file"
                .into(),
        ));
    }
    log::debug!(
        "webhooks: {system} system CA certificates, {} in all",
        roots.len()
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS side of an https receiver: the connector and the name its certificate must carry.
type TlsTarget = (
    tokio_rustls::TlsConnector,
    rustls_pki_types::ServerName<'static>,
);

fn tls_target(url: &HttpUrl, ca_file: Option<&Path>) -> Result<Option<TlsTarget>, WebhookError> {
    if !url.tls {
        return Ok(None);
    }
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| WebhookError::Tls(format!("host {host:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_file)?);
    Ok(Some((connector, name)))
}

/// One HTTP/1.1 exchange over `io` (plain TCP or TLS): the answer's status.
async fn exchange<I>(
    io: I,
    req: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<hyper::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let status = match resp {
        Ok(resp) => {
            let status = resp.status();
            // Read (and discard) the answer so the exchange completes cleanly.
            let _ = resp.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    status
}

/// The running delivery: its thread and the producers' handle.
pub struct Webhooks {
    sender: Option<WebhookSender>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<WebhookCounters>,
}

impl Webhooks {
    /// Opens (and replays) the queue at `queue_path` and starts the delivery thread.
    pub fn start(cfg: WebhookConfig, queue_path: &Path) -> Result<Webhooks, WebhookError> {
        let target = parse_http_url(&cfg.url).ok_or_else(|| WebhookError::Url(cfg.url.clone()))?;
        let tls = tls_target(&target, cfg.ca_file.as_deref())?;
        let queue = Queue::open(queue_path).map_err(|source| WebhookError::Queue {
            path: queue_path.to_path_buf(),
            source,
        })?;
        let counters = Arc::new(WebhookCounters::default());
        counters
            .pending
            .store(queue.pending.len() as u64, Ordering::Relaxed);
        if !queue.pending.is_empty() {
            log::info!(
                "webhooks: {} undelivered events from the last run",
                queue.pending.len()
            );
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            counters: counters.clone(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            dirty: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = bounded(CHANNEL);
        let delivery = Delivery {
            cfg,
            target,
            tls,
            shared: shared.clone(),
            rx,
        };
        let thread = thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || delivery.run())
            .map_err(WebhookError::Thread)?;
        Ok(Webhooks {
            sender: Some(WebhookSender { tx, shared }),
            thread: Some(thread),
            counters,
        })
    }

    /// The producers' handle. Every clone must be dropped before [`Webhooks::finish`] returns
    /// early; clones still alive only delay the drain until [`DRAIN_ON_STOP`] has passed.
    pub fn sender(&self) -> Option<WebhookSender> {
        self.sender.clone()
    }

    pub fn counters(&self) -> Arc<WebhookCounters> {
        self.counters.clone()
    }

    /// Stops delivery: events already handed over are stored, delivery goes on for at most
    /// [`DRAIN_ON_STOP`], the rest stays queued on disk for the next start.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(s) = self.sender.take() else {
            return;
        };
        s.shared.stopping.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        s.shared.sync();
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Delivery {
    cfg: WebhookConfig,
    target: HttpUrl,
    tls: Option<TlsTarget>,
    shared: Arc<Shared>,
    rx: Receiver<Event>,
}

impl Delivery {
    fn run(self) {
        let rt = match crate::runtime::current_thread() {
            Ok(rt) => rt,
            Err(e) => {
                // Events still reach the disk queue (the channel fills, then overflows to it).
                log::error!("webhooks: no runtime for delivery: {e}; events are only queued");
                return;
            }
        };
        let counters = self.shared.counters.clone();
        let mut backoff = Duration::ZERO;
        let mut next_try = Instant::now();
        let mut failed_before = false;
        let mut stop_by: Option<Instant> = None;
        loop {
            let has_pending = !self.shared.lock().pending.is_empty();
            let wait = if has_pending {
                next_try.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(500)
            };
            match self.rx.recv_timeout(wait) {
                Ok(e) => self.shared.store(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    stop_by.get_or_insert_with(|| Instant::now() + DRAIN_ON_STOP);
                }
            }
            while let Ok(e) = self.rx.try_recv() {
                self.shared.store(e);
            }
            // Every event is on disk for good before its first delivery attempt.
            self.shared.sync();
            if self.shared.stopping.load(Ordering::Acquire) {
                stop_by.get_or_insert_with(|| Instant::now() + DRAIN_ON_STOP);
            }
            if let Some(t) = stop_by {
                if Instant::now() >= t || self.shared.lock().pending.is_empty() {
                    return;
                }
            }
            if Instant::now() < next_try {
                continue;
            }
            let Some(event) = self.shared.lock().pending.front().cloned() else {
                continue;
            };
            if failed_before {
                counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            match rt.block_on(self.post(&event)) {
                Ok(()) => {
                    let mut q = self.shared.lock();
                    // Only this thread removes events, so the front is still `event`. The ack
                    // is fsync'd on the next round: lost only by a power cut, when the event is
                    // delivered once more (same id).
                    self.shared.dirty.store(true, Ordering::Release);
                    if let Err(e) = q.ack() {
                        log::error!("webhooks: {}: {e}", q.path.display());
                    }
                    counters
                        .pending
                        .store(q.pending.len() as u64, Ordering::Relaxed);
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::ZERO;
                    failed_before = false;
                    next_try = Instant::now();
                }
                Err(why) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    backoff = (backoff * 2).clamp(FIRST_BACKOFF, self.cfg.max_backoff);
                    if !failed_before {
                        log::warn!(
                            "webhooks: {} to {}: {why}; retrying with backoff",
                            event.id,
                            self.cfg.url
                        );
                    }
                    failed_before = true;
                    next_try = Instant::now() + backoff;
                    if let Some(t) = stop_by {
                        // Stopping: no point waiting past the drain deadline.
                        next_try = next_try.min(t);
                    }
                }
            }
        }
    }

    /// One attempt: connect (and TLS for https), POST, read the status; everything bounded by
    /// the timeout.
    async fn post(&self, event: &Event) -> Result<(), String> {
        use http_body_util::Full;
        use hyper::{header, Request};

        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let sig = signature(self.cfg.secret.as_bytes(), &body);
        let HttpUrl {
            tls,
            host,
            port,
            path,
        } = &self.target;
        let authority = if *port == if *tls { 443 } else { 80 } {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let req = Request::post(path.as_str())
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("calltap/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-CallTap-Event", event.kind.as_str())
            .header("X-CallTap-Delivery", event.id.as_str())
            .header("X-CallTap-Signature", sig)
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let attempt = async {
            let addr = format!(
                "{}:{port}",
                host.trim_start_matches('[').trim_end_matches(']')
            );
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let status = match &self.tls {
                Some((connector, name)) => {
                    let stream = connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|e| format!("TLS with {addr}: {e}"))?;
                    exchange(hyper_util::rt::TokioIo::new(stream), req).await?
                }
                None => exchange(hyper_util::rt::TokioIo::new(stream), req).await?,
            };
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        match tokio::time::timeout(self.cfg.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.cfg.timeout)),
        }
    }
}

#[cfg(test)]
mod tests;
