//! Delivery against a real HTTP receiver on loopback (a small server on its own thread that
//! checks each signature), with the receiver down, answering errors, and across restarts.

use std::{
    io::{BufReader, Write as _},
    net::{SocketAddr, TcpListener},
    sync::atomic::AtomicBool,
};

use super::*;

const SECRET: &str = "test-secret";

/// A webhook receiver: every request's event, with its signature checked; `fail` makes it
/// answer 500 (after reading the request) instead of 200.
struct Receiver {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    bad_signatures: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: &str) -> Receiver {
        Receiver::start_with(addr, None, false)
    }

    /// A receiver that answers 500 from its first request on (until `fail` is cleared).
    fn start_failing(addr: &str) -> Receiver {
        Receiver::start_with(addr, None, true)
    }

    /// With `tls`, the receiver speaks only HTTPS with that certificate.
    fn start_with(addr: &str, tls: Option<Arc<rustls::ServerConfig>>, failing: bool) -> Receiver {
        let listener = TcpListener::bind(addr).expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let events = Arc::new(Mutex::new(Vec::new()));
        let bad_signatures = Arc::new(AtomicU64::new(0));
        let fail = Arc::new(AtomicBool::new(failing));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, bad, fl, st) = (
            events.clone(),
            bad_signatures.clone(),
            fail.clone(),
            stop.clone(),
        );
        let thread = thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                let Ok((stream, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                match &tls {
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                            continue;
                        };
                        let mut s = rustls::StreamOwned::new(conn, stream);
                        answer(&mut s, &ev, &bad, &fl);
                        s.conn.send_close_notify();
                        let _ = s.flush();
                    }
                    None => {
                        let mut s = stream;
                        answer(&mut s, &ev, &bad, &fl);
                    }
                }
            }
        });
        Receiver {
            addr,
            events,
            bad_signatures,
            fail,
            stop,
            thread: Some(thread),
        }
    }

    fn ids(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// Returns once the receiver has served every connection made before this call: it
    /// serves them one at a time in accept order, and records an event before answering, so
    /// the answer to a marker posted now proves the earlier ones recorded. The marker itself is
    /// taken out of [`Receiver::ids`] again.
    fn flush(&self) {
        let marker = Event::new("test.marker", "flush", json!({}));
        let body = serde_json::to_vec(&marker).expect("marker body");
        let mut s = std::net::TcpStream::connect(self.addr).expect("connect receiver");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "POST /hooks HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nx-calltap-signature: {}\r\n\r\n",
            self.addr,
            body.len(),
            signature(SECRET.as_bytes(), &body)
        )
        .and_then(|()| s.write_all(&body))
        .expect("post marker");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).expect("marker answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut events = self.events.lock().expect("events");
        let at = events
            .iter()
            .position(|e| e.id == marker.id)
            .expect("marker recorded");
        events.remove(at);
    }

    fn shut(mut self) -> SocketAddr {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.addr
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request from `stream`, records its event (checking the signature) and answers.
fn answer(
    stream: &mut (impl std::io::Read + std::io::Write),
    ev: &Mutex<Vec<Event>>,
    bad: &AtomicU64,
    fl: &AtomicBool,
) {
    let mut r = BufReader::new(stream);
    let Some((body, sig)) = calltap_lab::files::read_signed_request(&mut r) else {
        return;
    };
    let failing = fl.load(Ordering::Acquire);
    if !failing {
        if signature(SECRET.as_bytes(), &body) != sig {
            bad.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(e) = serde_json::from_slice::<Event>(&body) {
            ev.lock().expect("events").push(e);
        }
    }
    let status = if failing { "500 Oops" } else { "200 OK" };
    let _ = write!(
        r.get_mut(),
        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

fn config(addr: SocketAddr) -> WebhookConfig {
    WebhookConfig {
        url: format!("http://{addr}/hooks"),
        secret: SECRET.into(),
        timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(400),
        ca_file: None,
    }
}

fn event(n: u32) -> Event {
    Event::new("call.started", &format!("uuid-{n}"), json!({"n": n}))
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn signature_is_hmac_sha256_hex() {
    // RFC 4231 test case 2.
    assert_eq!(
        signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn delivers_each_event_once_signed_in_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rx = Receiver::start("127.0.0.1:0");
    let hooks =
        Webhooks::start(config(rx.addr), &tmp.path().join("webhooks.queue")).expect("start");
    let tx = hooks.sender().expect("sender");
    for n in 0..20 {
        tx.send(event(n));
    }
    let c = hooks.counters();
    wait_for("20 deliveries", || c.snapshot().delivered >= 20);
    let want: Vec<String> = (0..20).map(|n| format!("uuid-{n}.call.started")).collect();
    assert_eq!(rx.ids(), want);
    assert_eq!(rx.bad_signatures.load(Ordering::Relaxed), 0);
    let s = hooks.counters().snapshot();
    assert_eq!(
        (s.queued, s.delivered, s.failures, s.pending),
        (20, 20, 0, 0)
    );
    drop(tx);
    hooks.finish();
    // Everything acknowledged: a new start has nothing to send.
    let q = Queue::open(&tmp.path().join("webhooks.queue")).expect("reopen");
    assert!(q.pending.is_empty());
}

#[test]
fn receiver_down_or_failing_then_back_gets_everything_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    // A port nobody listens on (connections refused) that the receiver takes later.
    let addr = Receiver::start("127.0.0.1:0").shut();
    let hooks = Webhooks::start(config(addr), &tmp.path().join("webhooks.queue")).expect("start");
    let tx = hooks.sender().expect("sender");
    for n in 0..5 {
        tx.send(event(n));
    }
    let c = hooks.counters();
    wait_for("failures with retries", || {
        let s = c.snapshot();
        s.failures >= 3 && s.retries >= 2
    });
    assert_eq!(c.snapshot().delivered, 0);
    // Up but failing: 500s are retried too.
    let rx = Receiver::start_failing(&addr.to_string());
    let before = c.snapshot().failures;
    wait_for("500 answers counted", || {
        c.snapshot().failures >= before + 2
    });
    assert!(rx.ids().is_empty());
    rx.fail.store(false, Ordering::Release);
    for n in 5..8 {
        tx.send(event(n));
    }
    wait_for("8 deliveries", || c.snapshot().delivered >= 8);
    let want: Vec<String> = (0..8).map(|n| format!("uuid-{n}.call.started")).collect();
    assert_eq!(rx.ids(), want);
    assert_eq!(rx.bad_signatures.load(Ordering::Relaxed), 0);
    // Backoff is bounded: with max 400 ms the receiver's return is noticed quickly, which the
    // wait above (20 s) would not show for an unbounded doubling; check the counter instead.
    let s = c.snapshot();
    assert_eq!((s.delivered, s.pending), (8, 0));
    drop(tx);
    hooks.finish();
}

#[test]
fn events_survive_a_restart_while_the_receiver_is_down() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("webhooks.queue");
    let addr = Receiver::start("127.0.0.1:0").shut();
    let hooks = Webhooks::start(config(addr), &path).expect("start");
    let tx = hooks.sender().expect("sender");
    for n in 0..6 {
        tx.send(event(n));
    }
    // A producer still holds its sender (the live-call registry does in `calltap run`):
    // finish must not wait for it, and what it sends afterwards is kept on disk.
    hooks.finish();
    tx.send(event(6));
    let q = Queue::open(&path).expect("reopen");
    assert_eq!(q.pending.len(), 7, "undelivered events are on disk");
    drop(q);
    let hooks = Webhooks::start(config(addr), &path).expect("restart");
    // Restored from disk; the receiver is not up yet, so none is delivered before this look.
    assert_eq!(hooks.counters().snapshot().pending, 7);
    let rx = Receiver::start(&addr.to_string());
    let tx = hooks.sender().expect("sender");
    tx.send(event(7));
    let c = hooks.counters();
    wait_for("8 deliveries", || c.snapshot().delivered >= 8);
    let want: Vec<String> = (0..8).map(|n| format!("uuid-{n}.call.started")).collect();
    assert_eq!(rx.ids(), want);
    drop(tx);
    hooks.finish();
    // The delivery thread is joined: it sends nothing more, and its count of successful
    // posts is final.
    assert_eq!(c.snapshot().delivered, 8, "nothing delivered twice");
    // A post it made may still wait in the receiver's accept queue; the marker, answered
    // only once recorded, comes after all of them.
    rx.flush();
    assert_eq!(rx.ids(), want, "nothing delivered twice");
}

#[test]
fn queue_skips_a_torn_line_and_compacts_to_pending_events() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("webhooks.queue");
    let mut q = Queue::open(&path).expect("open");
    for n in 0..(COMPACT_AFTER as u32 + 10) {
        q.push(event(n)).expect("push");
    }
    for _ in 0..COMPACT_AFTER {
        q.ack().expect("ack");
    }
    // Compacted: only the 10 pending events remain in the file.
    let text = fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), 10, "{text}");
    drop(q);
    let mut f = OpenOptions::new().append(true).open(&path).expect("append");
    f.write_all(b"{\"op\":\"event\",\"event\":{\"id\":\"torn")
        .expect("torn");
    drop(f);
    let q = Queue::open(&path).expect("reopen");
    let ids: Vec<String> = q.pending.iter().map(|e| e.id.clone()).collect();
    let want: Vec<String> = (COMPACT_AFTER as u32..COMPACT_AFTER as u32 + 10)
        .map(|n| format!("uuid-{n}.call.started"))
        .collect();
    assert_eq!(ids, want);
}

#[test]
fn a_full_channel_overflows_to_the_disk_queue() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("webhooks.queue");
    let addr = Receiver::start("127.0.0.1:0").shut();
    // Built by hand so nothing drains the channel: every event past its capacity must reach
    // the disk queue through the producer's overflow path.
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::open(&path).expect("open")),
        counters: Arc::default(),
        stopping: AtomicBool::new(false),
        dirty: AtomicBool::new(false),
    });
    let (tx, rx) = bounded(2);
    let sender = WebhookSender {
        tx,
        shared: shared.clone(),
    };
    for n in 0..5 {
        sender.send(event(n));
    }
    assert_eq!(rx.len(), 2);
    assert_eq!(shared.lock().pending.len(), 3);
    let _ = addr;
}

#[test]
fn https_receivers_get_events_when_their_certificate_is_trusted_and_never_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = crate::publish::tls::self_signed_for_tests(dir.path());
    let server = crate::publish::tls::server_config(&cert, &key).expect("server config");
    let rx = Receiver::start_with("127.0.0.1:0", Some(server.clone()), false);
    let https = |addr: SocketAddr, ca_file: Option<PathBuf>| WebhookConfig {
        url: format!("https://{addr}/hooks"),
        ca_file,
        ..config(addr)
    };

    // The receiver's self-signed certificate is in ca_file: delivered, signed, once each.
    let hooks = Webhooks::start(
        https(rx.addr, Some(cert.clone())),
        &dir.path().join("trusted.queue"),
    )
    .expect("start");
    let sender = hooks.sender().expect("sender");
    for n in 0..3 {
        sender.send(event(n));
    }
    // The receiver records an event before it answers, and the sender counts it only once the
    // answer is in: wait for both sides.
    let c = hooks.counters();
    wait_for("3 events over https, answered", || {
        rx.ids().len() >= 3 && c.snapshot().delivered >= 3
    });
    drop(sender);
    let counters = c.snapshot();
    hooks.finish();
    assert_eq!(
        rx.ids(),
        [
            "uuid-0.call.started",
            "uuid-1.call.started",
            "uuid-2.call.started"
        ]
    );
    assert_eq!(rx.bad_signatures.load(Ordering::Relaxed), 0);
    assert_eq!(counters.delivered, 3);

    // Trusting only the system's CAs, the same receiver is refused: nothing is sent to it, the
    // event stays queued and the failures are counted.
    let queue = dir.path().join("untrusted.queue");
    let hooks = Webhooks::start(https(rx.addr, None), &queue).expect("start");
    let sender = hooks.sender().expect("sender");
    sender.send(event(9));
    let c = hooks.counters();
    wait_for("a refused attempt", || c.snapshot().failures >= 2);
    drop(sender);
    let after = c.snapshot();
    hooks.finish();
    assert_eq!(after.delivered, 0);
    assert_eq!(after.pending, 1);
    assert_eq!(rx.ids().len(), 3, "the untrusted receiver got nothing");

    // A ca_file without a certificate stops the start with a clear error.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "nothing\n").expect("write");
    let err = Webhooks::start(https(rx.addr, Some(junk)), &dir.path().join("j.queue"))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("ca_file") && err.contains("no PEM certificate"),
        "{err}"
    );
    rx.shut();
}
