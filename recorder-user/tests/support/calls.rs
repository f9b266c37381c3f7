//! Synthetic calls written as pcap files: SIP with SDP and G.711 RTP at chosen times, so
//! scenario tests control exactly what the recorder sees (one-way audio, holds, loss, ...).

use std::{path::Path, time::Duration};

use calltap::{config::Config, daemon::replay::ReplaySummary};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};

use super::frames::{eth, ipv4, rtp, udp};

pub const CALLER: [u8; 4] = [198, 18, 1, 1];
pub const CALLEE: [u8; 4] = [198, 18, 2, 1];
pub const CALLER_RTP: u16 = 40_000;
pub const CALLEE_RTP: u16 = 50_000;

/// One packet of a scenario: capture time and the Ethernet frame.
pub struct Packet {
    pub at_ns: u64,
    pub frame: Vec<u8>,
}

/// Builds one call's packets.
pub struct Call {
    pub call_id: String,
    pub packets: Vec<Packet>,
    cseq: u32,
    /// The called side's address (SIP and RTP); `CALLEE` unless changed with `callee_at`.
    callee: [u8; 4],
    /// The user parts of From and To (`1001`, `2002` unless changed with `users`).
    from_user: String,
    to_user: String,
    /// The calling side's address (SIP and RTP); `CALLER` unless changed with `caller_at`.
    caller: [u8; 4],
    /// The endpoint the callee's SDP names (and its RTP comes from), when not its own address
    /// and `CALLEE_RTP`: see `callee_media`.
    callee_media: Option<([u8; 4], u16)>,
}

pub fn ip(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

pub fn sdp(addr: [u8; 4], port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {a}\r\ns=-\r\nc=IN IP4 {a}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n",
        a = ip(addr)
    )
}

impl Call {
    pub fn new(call_id: &str) -> Self {
        Self {
            call_id: call_id.to_owned(),
            packets: Vec::new(),
            cseq: 1,
            callee: CALLEE,
            from_user: "1001".into(),
            to_user: "2002".into(),
            caller: CALLER,
            callee_media: None,
        }
    }

    /// The caller and callee user parts (as they appear in From, To and the request URIs).
    pub fn users(mut self, from: &str, to: &str) -> Self {
        self.from_user = from.to_owned();
        self.to_user = to.to_owned();
        self
    }

    /// The calling side lives at `addr` (its RTP port stays `CALLER_RTP`).
    pub fn caller_at(mut self, addr: [u8; 4]) -> Self {
        self.caller = addr;
        self
    }

    /// The callee's SDP names `addr`:`port` as its media endpoint (any endpoint at all: an SDP
    /// is written by whoever answers), and its RTP is sent from there.
    pub fn callee_media(mut self, addr: [u8; 4], port: u16) -> Self {
        self.callee_media = Some((addr, port));
        self
    }

    fn callee_endpoint(&self) -> ([u8; 4], u16) {
        self.callee_media.unwrap_or((self.callee, CALLEE_RTP))
    }

    /// One UDP datagram at `at_ms` (traffic that is not the call's own, for the scenario
    /// around it).
    pub fn datagram(
        &mut self,
        at_ms: u64,
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        payload: &[u8],
    ) -> &mut Self {
        let frame = eth(0x0800, &ipv4(17, src.0, dst.0, &udp(src.1, dst.1, payload)));
        self.packets.push(Packet {
            at_ns: at_ms * 1_000_000,
            frame,
        });
        self
    }

    /// The called side lives at `addr` (its RTP port stays `CALLEE_RTP`).
    pub fn callee_at(mut self, addr: [u8; 4]) -> Self {
        self.callee = addr;
        self
    }

    fn sip(&mut self, at_ms: u64, from_caller: bool, text: String) {
        let (src, dst) = if from_caller {
            (self.caller, self.callee)
        } else {
            (self.callee, self.caller)
        };
        self.sip_hop(at_ms, src, dst, &text);
    }

    /// A SIP message sent from `src` to `dst` on any hop (a proxy's far side, a third
    /// party), both on port 5060.
    pub fn sip_hop(&mut self, at_ms: u64, src: [u8; 4], dst: [u8; 4], text: &str) -> &mut Self {
        let frame = eth(
            0x0800,
            &ipv4(17, src, dst, &udp(5060, 5060, text.as_bytes())),
        );
        self.packets.push(Packet {
            at_ns: at_ms * 1_000_000,
            frame,
        });
        self
    }

    /// The caller's in-dialog `method` request (next CSeq, no body) as the dialog's own would
    /// read, but sent from `src` to `dst`: a spoofed request when those are not the dialog's.
    pub fn request_from(
        &mut self,
        at_ms: u64,
        method: &str,
        src: [u8; 4],
        dst: [u8; 4],
    ) -> &mut Self {
        self.request_with(at_ms, method, (src, dst), None)
    }

    /// The caller's in-dialog `method` request (next CSeq) sent from `hop.0` to `hop.1`, with
    /// a body of the given content type.
    pub fn request_with(
        &mut self,
        at_ms: u64,
        method: &str,
        (src, dst): ([u8; 4], [u8; 4]),
        body: Option<(&str, &str)>,
    ) -> &mut Self {
        let cseq = self.cseq;
        self.cseq += 1;
        let (ctype, body) = match body {
            Some((t, b)) => (format!("Content-Type: {t}\r\n"), b),
            None => (String::new(), ""),
        };
        let text = format!(
            "{method} sip:2002@{} SIP/2.0\r\n{}{ctype}Content-Length: {}\r\n\r\n{body}",
            ip(self.callee),
            self.headers(method, cseq, true),
            body.len()
        );
        self.sip_hop(at_ms, src, dst, &text)
    }

    fn headers(&self, method: &str, cseq: u32, to_tag: bool) -> String {
        format!(
            "Via: SIP/2.0/UDP {c}:5060;branch=z9hG4bK{cseq}{method}\r\nFrom: \"Alice\" <sip:{fu}@{c}>;tag=caller1\r\nTo: <sip:{tu}@{d}>{tt}\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n",
            c = ip(self.caller),
            d = ip(self.callee),
            fu = self.from_user,
            tu = self.to_user,
            tt = if to_tag { ";tag=callee1" } else { "" },
            id = self.call_id,
        )
    }

    /// Caller's (re-)INVITE with SDP in the given direction.
    pub fn invite(&mut self, at_ms: u64, direction: &str, reinvite: bool) -> &mut Self {
        let cseq = self.cseq;
        self.cseq += 1;
        let body = sdp(self.caller, CALLER_RTP, direction);
        let text = format!(
            "INVITE sip:{tu}@{d} SIP/2.0\r\n{h}Contact: <sip:{fu}@{c}>\r\nContent-Type: application/sdp\r\nContent-Length: {l}\r\n\r\n{body}",
            d = ip(self.callee),
            c = ip(self.caller),
            tu = self.to_user,
            fu = self.from_user,
            h = self.headers("INVITE", cseq, reinvite),
            l = body.len()
        );
        self.sip(at_ms, true, text);
        self
    }

    /// Callee's response to the last INVITE, with SDP when `direction` is given.
    pub fn respond(
        &mut self,
        at_ms: u64,
        code: u16,
        reason: &str,
        direction: Option<&str>,
    ) -> &mut Self {
        let cseq = self.cseq - 1;
        let (media, media_port) = self.callee_endpoint();
        let body = direction
            .map(|d| sdp(media, media_port, d))
            .unwrap_or_default();
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let text = format!(
            "SIP/2.0 {code} {reason}\r\n{h}Contact: <sip:{tu}@{d}>\r\n{ctype}Content-Length: {l}\r\n\r\n{body}",
            h = self.headers("INVITE", cseq, code != 100),
            tu = self.to_user,
            d = ip(self.callee),
            l = body.len()
        );
        self.sip(at_ms, false, text);
        self
    }

    pub fn ack(&mut self, at_ms: u64) -> &mut Self {
        let cseq = self.cseq - 1;
        let text = format!(
            "ACK sip:{}@{} SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
            self.to_user,
            ip(self.callee),
            self.headers("ACK", cseq, true)
        );
        self.sip(at_ms, true, text);
        self
    }

    /// BYE from the caller and the callee's 200.
    pub fn bye(&mut self, at_ms: u64) -> &mut Self {
        let cseq = self.cseq;
        self.cseq += 1;
        let text = format!(
            "BYE sip:{}@{} SIP/2.0\r\n{}Content-Length: 0\r\n\r\n",
            self.to_user,
            ip(self.callee),
            self.headers("BYE", cseq, true)
        );
        self.sip(at_ms, true, text);
        let ok = format!(
            "SIP/2.0 200 OK\r\n{}Content-Length: 0\r\n\r\n",
            self.headers("BYE", cseq, true)
        );
        self.sip(at_ms + 5, false, ok);
        self
    }

    /// RTP from one side: `count` packets of 20 ms starting at `at_ms`, RTP timestamps and
    /// sequence numbers continuing from `first_index` (so a resumed stream keeps its clock).
    /// `payload(i)` gives packet i's 160 mu-law bytes; `skip(i)` drops packet i (loss).
    pub fn rtp(
        &mut self,
        from_caller: bool,
        at_ms: u64,
        first_index: u32,
        count: u32,
        payload: impl Fn(u32) -> Vec<u8>,
        skip: impl Fn(u32) -> bool,
    ) -> &mut Self {
        let (media, media_port) = self.callee_endpoint();
        let (src, dst, sport, dport, ssrc) = if from_caller {
            (self.caller, media, CALLER_RTP, media_port, 0xA1A1_0000)
        } else {
            (media, self.caller, media_port, CALLER_RTP, 0xB2B2_0000)
        };
        // One SSRC per call and direction.
        let ssrc = ssrc | u32::from(self.callee[3]) | u32::from(self.caller[3] ^ CALLER[3]) << 8;
        for k in 0..count {
            let i = first_index + k;
            if skip(i) {
                continue;
            }
            let body = rtp(0, i as u16, i.wrapping_mul(160), ssrc, &payload(i));
            let frame = eth(0x0800, &ipv4(17, src, dst, &udp(sport, dport, &body)));
            self.packets.push(Packet {
                at_ns: (at_ms + u64::from(k) * 20) * 1_000_000,
                frame,
            });
        }
        self
    }
}

/// Writes the packets of several calls, merged in time order, as one pcap.
pub fn write_pcap(path: &Path, calls: &[&Call]) {
    let mut all: Vec<&Packet> = calls.iter().flat_map(|c| c.packets.iter()).collect();
    all.sort_by_key(|p| p.at_ns);
    let file = std::fs::File::create(path).expect("create pcap");
    let mut w = PcapWriter::with_header(
        file,
        PcapHeader {
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        },
    )
    .expect("pcap header");
    let base = 1_700_000_000_000_000_000u64;
    for p in all {
        let ts = Duration::from_nanos(base + p.at_ns);
        w.write_packet(&PcapPacket::new(ts, p.frame.len() as u32, &p.frame))
            .expect("write packet");
    }
}

/// Writes `calls` as one pcap in a fresh scratch directory named for `test` and replays it
/// through the pipeline (two workers) configured by `env` (`CALLTAP_*` variables, as `calltap`
/// reads them): the summary, and each CDR as JSON (what `calltap replay --json` prints).
pub fn replay(
    test: &str,
    calls: &[&Call],
    env: &[(&str, &str)],
) -> (ReplaySummary, Vec<serde_json::Value>) {
    let dir = std::env::temp_dir().join(format!("calltap-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let pcap = dir.join("calls.pcap");
    write_pcap(&pcap, calls);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut cfg = Config::load_with_env(None, &env).expect("config");
    cfg.storage.data_dir = dir.join("data");
    cfg.capture.workers = 2;
    let mut cdrs = Vec::new();
    let summary = calltap::daemon::replay::replay(&cfg, &[pcap], |cdr| {
        cdrs.push(serde_json::to_value(cdr).expect("cdr json"))
    });
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    (summary, cdrs)
}

/// A packet's worth of a constant mu-law byte: easy to find in the decoded WAV.
pub fn constant(byte: u8) -> impl Fn(u32) -> Vec<u8> {
    move |_| vec![byte; 160]
}
