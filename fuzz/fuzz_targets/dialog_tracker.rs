//! The dialog tracker fed message sequences: raw SIP messages (seeds from captures) and
//! messages built from a template (calls, forks, re-INVITEs, CANCELs, BYEs from on and off
//! the signalling path, SDP plain and in multipart bodies), between a few addresses, with
//! ticks, calls ended from outside and journal snapshots restored.
//!
//! Invariants, after every op: active calls within `max_calls`, unanswered within
//! `max_unanswered_calls`, lingering within `max(max_calls, 1)`; started minus ended is
//! active; every call's events start with `Started`, nothing follows its `Ended`, it rings
//! and is answered at most once; a snapshot restored into another tracker snapshots the same.
//! At the end, `end_all` ends every call and a tick past the linger forgets them all.
#![no_main]

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use arbitrary::Arbitrary;
use calltap_fuzz::{Ops, RAW};
use calltap_sip::{
    dialog::{CallEvent, CallRef, EndReason, Tracker, TrackerConfig},
    parse_datagram,
};
use libfuzzer_sys::fuzz_target;

const MS: u64 = 1_000_000;

/// Parties, proxies and an outsider; ports vary as they do (TCP, another socket).
fn addr(i: u8) -> SocketAddr {
    let ip = match i % 6 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        1 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        2 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
        3 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
        _ => IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0002)),
    };
    SocketAddr::new(ip, if i & 0x40 != 0 { 40000 } else { 5060 })
}

#[derive(Arbitrary, Debug)]
enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Info,
    Update,
    Prack,
    Options,
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Options => "OPTIONS",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Start {
    Request(Method),
    /// Status code, from a list that matters to the tracker or any 100-699.
    Response(u8, u16),
}

#[derive(Arbitrary, Debug)]
struct Sdp {
    /// An address of [`addr`], or the hold address.
    host: u8,
    port: u16,
    direction: u8,
    rtcp_mux: bool,
}

#[derive(Arbitrary, Debug)]
enum Body {
    None,
    Sdp(Sdp),
    Multipart(Sdp),
    Dtmf(u8, u16),
}

/// A SIP message of one of a few dialogs.
#[derive(Arbitrary, Debug)]
struct Template {
    src: u8,
    dst: u8,
    dt_ms: u16,
    start: Start,
    call_id: u8,
    from_tag: u8,
    to_tag: Option<u8>,
    cseq: u8,
    cseq_method: Method,
    contact: Option<u8>,
    record_route: Option<u8>,
    via_received: Option<u8>,
    body: Body,
}

const CODES: [u16; 16] = [
    100, 180, 183, 200, 202, 401, 407, 422, 480, 486, 487, 488, 500, 503, 603, 302,
];

fn host(i: u8) -> String {
    match addr(i).ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

impl Sdp {
    fn text(&self) -> String {
        let (ip4, ip) = match self.host % 8 {
            7 => (true, "0.0.0.0".to_string()),
            h => match addr(h).ip() {
                IpAddr::V4(a) => (true, a.to_string()),
                IpAddr::V6(a) => (false, a.to_string()),
            },
        };
        let family = if ip4 { "IP4" } else { "IP6" };
        let direction =
            ["sendrecv", "sendonly", "recvonly", "inactive"][usize::from(self.direction % 4)];
        let mux = if self.rtcp_mux { "a=rtcp-mux\r\n" } else { "" };
        format!(
            "v=0\r\no=- 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n{mux}",
            self.port
        )
    }
}

impl Template {
    fn text(&self) -> String {
        let start = match &self.start {
            Start::Request(m) => format!("{} sip:bob@b.example SIP/2.0", m.name()),
            Start::Response(pick, any) => {
                let code = match CODES.get(usize::from(*pick)) {
                    Some(c) => *c,
                    None => 100 + any % 600,
                };
                format!("SIP/2.0 {code} Reason")
            }
        };
        let to_tag = self
            .to_tag
            .map(|t| format!(";tag=b{}", t % 4))
            .unwrap_or_default();
        let mut headers = format!(
            "Via: SIP/2.0/UDP {};branch=z9hG4bK{}{}\r\n\
             From: \"Alice\" <sip:alice@a.example>;tag=a{}\r\nTo: <sip:bob@b.example>{to_tag}\r\n\
             Call-ID: call-{}@a.example\r\nCSeq: {} {}\r\n",
            host(self.src),
            self.cseq,
            self.via_received
                .map(|r| format!(";received={}", addr(r).ip()))
                .unwrap_or_default(),
            self.from_tag % 4,
            self.call_id % 4,
            self.cseq % 8,
            self.cseq_method.name(),
        );
        if let Some(c) = self.contact {
            headers.push_str(&format!("Contact: <sip:x@{}>\r\n", host(c)));
        }
        if let Some(r) = self.record_route {
            headers.push_str(&format!("Record-Route: <sip:{};lr>\r\n", host(r)));
        }
        let (ct, body) = match &self.body {
            Body::None => (None, String::new()),
            Body::Sdp(s) => (Some("application/sdp".to_string()), s.text()),
            Body::Multipart(s) => (
                Some("multipart/mixed;boundary=\"b-1\"".to_string()),
                format!(
                    "--b-1\r\nContent-Type: application/isup\r\n\r\nISUP\r\n\
                     --b-1\r\nContent-Type: application/sdp\r\n\r\n{}\r\n--b-1--\r\n",
                    s.text()
                ),
            ),
            Body::Dtmf(signal, duration) => (
                Some("application/dtmf-relay".to_string()),
                format!("Signal={}\r\nDuration={duration}\r\n", signal % 18),
            ),
        };
        if let Some(ct) = ct {
            headers.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        format!(
            "{start}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

/// What the events said of one call so far.
#[derive(Default)]
struct Seen {
    rang: bool,
    answered: bool,
    ended: bool,
}

struct Run {
    tracker: Tracker,
    cfg: TrackerConfig,
    now: u64,
    calls: HashMap<CallRef, Seen>,
    order: Vec<CallRef>,
    out: Vec<CallEvent>,
}

impl Run {
    fn message(&mut self, text: &[u8], src: SocketAddr, dst: SocketAddr) {
        if let Ok(msg) = parse_datagram(text) {
            self.tracker
                .on_message(&msg, src, dst, self.now, &mut self.out);
        }
    }

    /// Checks the events since the last call and the bounds.
    fn check(&mut self) {
        for e in self.out.drain(..) {
            let call = e.call();
            if let CallEvent::Started { .. } = e {
                assert!(
                    self.calls.insert(call, Seen::default()).is_none(),
                    "{call:?} started twice"
                );
                self.order.push(call);
                continue;
            }
            let seen = self
                .calls
                .get_mut(&call)
                .unwrap_or_else(|| panic!("{e:?} before Started"));
            assert!(!seen.ended, "{e:?} after Ended");
            match e {
                CallEvent::Ringing { .. } => {
                    assert!(!seen.rang, "rang twice");
                    seen.rang = true;
                }
                CallEvent::Answered { .. } => {
                    assert!(!seen.answered, "answered twice");
                    seen.answered = true;
                }
                CallEvent::Ended { .. } => seen.ended = true,
                _ => {}
            }
        }
        let s = self.tracker.stats();
        assert!(s.active_calls as usize <= self.cfg.max_calls, "{s:?}");
        assert!(
            s.unanswered_calls as usize <= self.cfg.max_unanswered_calls,
            "{s:?}"
        );
        assert!(
            s.lingering_calls as usize <= self.cfg.max_calls.max(1),
            "{s:?}"
        );
        assert_eq!(s.calls_started - s.calls_ended, s.active_calls, "{s:?}");
        assert_eq!(s.calls_started, self.calls.len() as u64);
        let open = self.calls.values().filter(|c| !c.ended).count();
        assert_eq!(open as u64, s.active_calls);
        assert!(s.unanswered_calls <= s.active_calls);
    }

    /// A journaled call comes back the same in a restarted tracker.
    fn journal(&mut self, pick: u8) {
        let Some(&call) = self
            .order
            .iter()
            .rev()
            .filter(|c| self.calls.get(c).is_some_and(|s| !s.ended))
            .nth(usize::from(pick % 4))
        else {
            return;
        };
        let Some(state) = self.tracker.snapshot(call) else {
            panic!("no snapshot of active {call:?}");
        };
        let mut restarted = Tracker::new(self.cfg.clone());
        let back = restarted
            .restore(&state, self.now)
            .expect("an empty tracker restores");
        assert_eq!(restarted.snapshot(back).as_ref(), Some(&state));
    }
}

fn bound(b: u8, default: usize) -> usize {
    if b & 0x40 != 0 {
        default
    } else {
        usize::from(b % 12)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let limits: [u8; 6] = ops.fixed();
    let ms = |b: u8| u64::from(b) * 50 * MS;
    let cfg = TrackerConfig {
        correlation_header: (limits[0] & 1 != 0).then(|| "X-CID".to_string()),
        // Small bounds to hit them; the top bit for the defaults (seeds from captures).
        max_calls: bound(limits[0] >> 1, 100_000),
        max_unanswered_calls: bound(limits[1], 20_000),
        linger_ns: ms(limits[2]),
        cancel_grace_ns: ms(limits[3]),
        unanswered_timeout_ns: ms(limits[4]),
        max_call_duration_ns: ms(limits[5]) * 8,
    };
    let mut run = Run {
        tracker: Tracker::new(cfg.clone()),
        cfg,
        now: 0,
        calls: HashMap::new(),
        order: Vec::new(),
        out: Vec::new(),
    };
    run.tracker.track_touched();
    let mut touched = Vec::new();
    while let Some(tag) = ops.tag() {
        match tag % 6 {
            RAW => {
                // Seeds: source, destination, milliseconds since the last, the message.
                let rec = ops.raw();
                let [src, dst, dt, text @ ..] = rec else {
                    continue;
                };
                run.now += u64::from(*dt) * MS;
                run.message(text, addr(*src), addr(*dst));
            }
            1 | 2 => {
                let Some(t) = ops.arbitrary::<Template>() else {
                    break;
                };
                run.now += u64::from(t.dt_ms) * MS;
                let text = t.text();
                assert!(parse_datagram(text.as_bytes()).is_ok(), "{text}");
                run.message(text.as_bytes(), addr(t.src), addr(t.dst));
            }
            3 => {
                let dt: u16 = ops.arbitrary().unwrap_or(0);
                run.now += u64::from(dt) * 10 * MS;
                run.tracker.on_tick(run.now, &mut run.out);
            }
            4 => {
                let pick: u8 = ops.arbitrary().unwrap_or(0);
                if let Some(&call) = run.order.get(usize::from(pick)) {
                    run.tracker
                        .end_call(call, EndReason::MediaTimeout, run.now, &mut run.out);
                }
            }
            _ => {
                let pick: u8 = ops.arbitrary().unwrap_or(0);
                run.journal(pick);
            }
        }
        run.check();
        run.tracker.take_touched(&mut touched);
        touched.clear();
    }
    run.tracker
        .end_all(EndReason::RecorderRestart, run.now, &mut run.out);
    run.check();
    assert_eq!(run.tracker.active_calls(), 0);
    assert!(
        run.calls.values().all(|c| c.ended),
        "a call was never ended"
    );
    run.now += run.cfg.linger_ns + 1;
    run.tracker.on_tick(run.now, &mut run.out);
    run.check();
    assert_eq!(run.tracker.stats().lingering_calls, 0);
});
