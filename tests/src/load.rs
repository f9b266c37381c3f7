//! Call-traffic model for load runs (issue #7): N concurrent G.711 calls, each a real SIP dialog
//! (INVITE with SDP, 200 OK with SDP, ACK, RTP both ways, BYE, 200 OK), built frame by frame in
//! time order.
//!
//! One model feeds every load consumer: `calltap-loadgen` sends it live into the lab, the bench
//! writes it to a pcap for offline replay, and the tests verify recordings against it. Because
//! every payload byte is a pure function of (run, call, direction, packet index), a recording
//! can be checked sample for sample after the run without keeping anything from the run.
//!
//! The [`Generator`] never materialises the run: it keeps one heap entry per call that has
//! started and not finished, and writes each frame into a buffer the caller owns (no allocation
//! per packet once the buffers have grown to frame size), so a 10,000-call run costs a few
//! hundred KiB, not gigabytes.
//!
//! Schedule of call `k` (times from its start `k / rate` seconds into the run):
//!
//! ```text
//! 0 ms INVITE (uac -> uas, SDP)   1 ms 200 OK (SDP)   2 ms ACK
//! 20 ms + 20 ms * n * i    caller RTP packet i   (i < seconds * 50 / n)
//! 30 ms + 20 ms * n * i    callee RTP packet i
//! 20 ms * (S + 1) + 40 ms  BYE (uac -> uas), 1 ms later its 200 OK
//! ```
//!
//! (`S = seconds * 50` slots of 20 ms; `n` = [`LoadSpec::send_every`], 1 unless the calls
//! suppress silence.)
//!
//! All calls go between the same two addresses (the lab's `ct-uac` and `ct-uas`), told apart by
//! Call-ID and media ports (`media_port_base + 2 k` on both sides), the way a trunk between two
//! SBCs looks on a mirror port.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fs::File,
    io::{BufWriter, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};

use crate::{frames, rtp_pcap::ulaw_decode, tx::Schedule};

/// RTP packets per second and direction (20 ms of G.711 each).
pub const PACKETS_PER_SECOND: u32 = 50;
/// Spacing of one direction's packets.
pub const PACKET_INTERVAL_NS: u64 = 20_000_000;
/// G.711 bytes per packet: 20 ms at 8 kHz.
pub const PAYLOAD_BYTES: usize = 160;
/// The largest frame the model builds (a SIP message with SDP is about 700 bytes); buffers of
/// this capacity never grow.
pub use crate::tx::MAX_FRAME;
/// Where `write_pcap` puts time zero, so captures have plausible timestamps.
pub const PCAP_EPOCH_NS: u64 = 1_700_000_000 * 1_000_000_000;

const MS: u64 = 1_000_000;
/// Events of a call besides its RTP: INVITE, 200, ACK, BYE, 200.
const SIP_EVENTS: u32 = 5;

/// Which party sent an RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the calling side (`uac_ip`), the left channel of CallTap's WAV.
    Caller,
    /// From the called side (`uas_ip`), the right channel.
    Callee,
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Invite,
    InviteOk,
    Ack,
    Rtp { dir: Direction, index: u32 },
    Bye,
    ByeOk,
}

/// One frame the generator wrote: when it is due and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Nanoseconds from the start of the run.
    pub at_ns: u64,
    pub call: u32,
    pub kind: Kind,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Calls in the run; with `rate` >= calls / `seconds` they are all up at once.
    pub calls: u32,
    /// Seconds of audio per call and direction (`seconds * 50` packets each way).
    pub seconds: u32,
    /// Calls started per second (call k starts at k / rate s).
    pub rate: f64,
    pub uac_ip: Ipv4Addr,
    pub uas_ip: Ipv4Addr,
    /// Ethernet addresses of every frame (on a mirror port they are whatever the switch saw).
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub sip_port: u16,
    /// Call k's media port on both sides is `media_port_base + 2 k` (RTCP's odd port left free).
    pub media_port_base: u16,
    /// Distinguishes runs: part of every Call-ID, SSRC and payload, so two runs into the same
    /// recorder never look like the same calls.
    pub run: u32,
    /// A hostile answer (issue #14 item 2): every 200 OK's SDP names this endpoint instead of
    /// the callee's own (`c=IN IP4 <proxy> m=audio 5060`), and the caller sends its RTP there,
    /// as a phone believing the SDP would.
    pub answer_media: Option<SocketAddrV4>,
    /// Silence suppression: of each direction's 20 ms slots only one in `send_every` carries
    /// a packet (1: every slot). Timestamps run on through the silent slots while sequence
    /// numbers stay consecutive, as a phone with VAD sends; the recording has silence there.
    /// Many calls at a packet rate a debug build can record.
    pub send_every: u32,
}

impl LoadSpec {
    /// `calls` calls of `seconds` s between the lab's caller and first callee address, all
    /// started within the first second.
    pub fn new(calls: u32, seconds: u32) -> Self {
        Self {
            calls,
            seconds,
            rate: f64::from(calls.max(1)),
            uac_ip: Ipv4Addr::new(198, 18, 0, 1),
            uas_ip: Ipv4Addr::new(198, 18, 0, 2),
            src_mac: [0x02, 0, 0, 0, 0, 0x0a],
            dst_mac: [0x02, 0, 0, 0, 0, 0x0b],
            sip_port: 5060,
            media_port_base: 20_000,
            run: 0,
            answer_media: None,
            send_every: 1,
        }
    }

    /// Rejects what would make a run that cannot mean what it says (port overflow, no time).
    pub fn validate(&self) -> Result<()> {
        if self.seconds == 0 {
            bail!("seconds must be at least 1");
        }
        if self.send_every == 0 {
            bail!("send_every must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!("rate must be a positive number of calls per second");
        }
        let last_port = u64::from(self.media_port_base) + 2 * u64::from(self.calls) + 1;
        if last_port > 65_535 {
            bail!(
                "{} calls from media port {} would need ports up to {last_port}: at most {} calls",
                self.calls,
                self.media_port_base,
                (65_535 - u64::from(self.media_port_base)) / 2
            );
        }
        if self.media_port_base <= self.sip_port && last_port >= u64::from(self.sip_port) {
            bail!(
                "the media port range overlaps the SIP port {}",
                self.sip_port
            );
        }
        if self.uac_ip == self.uas_ip {
            bail!("caller and callee need different addresses");
        }
        Ok(())
    }

    /// 20 ms slots per call and direction (`seconds * 50`).
    pub fn slots_per_direction(&self) -> u32 {
        self.seconds.saturating_mul(PACKETS_PER_SECOND)
    }

    /// RTP packets per call and direction (one per slot, or per `send_every` slots).
    pub fn packets_per_direction(&self) -> u32 {
        self.slots_per_direction().div_ceil(self.send_every.max(1))
    }

    /// Frames per call (RTP both ways plus the five SIP messages).
    fn events_per_call(&self) -> u32 {
        2 * self.packets_per_direction() + SIP_EVENTS
    }

    /// RTP packets the whole run sends.
    pub fn rtp_packets(&self) -> u64 {
        2 * u64::from(self.calls) * u64::from(self.packets_per_direction())
    }

    /// SIP messages the whole run sends.
    pub fn sip_packets(&self) -> u64 {
        u64::from(SIP_EVENTS) * u64::from(self.calls)
    }

    /// When call `call` sends its INVITE, in ns from the start of the run.
    pub fn call_start_ns(&self, call: u32) -> u64 {
        (f64::from(call) * 1e9 / self.rate) as u64
    }

    /// When the last frame of the run is due.
    pub fn end_ns(&self) -> u64 {
        match self.calls.checked_sub(1) {
            Some(last) => self.call_start_ns(last) + self.offset_ns(self.events_per_call() - 1),
            None => 0,
        }
    }

    /// How long the whole run takes.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns())
    }

    /// The Call-ID of call `call`; [`LoadSpec::call_index`] reads it back.
    pub fn call_id(&self, call: u32) -> String {
        format!("lg{}-{call}@{}", self.run, self.uac_ip)
    }

    /// The call number in one of this run's Call-IDs (None: not a call of this run).
    pub fn call_index(&self, call_id: &str) -> Option<u32> {
        let rest = call_id.strip_prefix(&format!("lg{}-", self.run))?;
        let (num, host) = rest.split_once('@')?;
        if host != self.uac_ip.to_string() {
            return None;
        }
        num.parse().ok().filter(|k| *k < self.calls)
    }

    /// Media port of call `call` (the same number on both sides).
    pub fn media_port(&self, call: u32) -> u16 {
        // validate() keeps this in range; saturating keeps an unvalidated spec from panicking.
        u16::try_from(u64::from(self.media_port_base) + 2 * u64::from(call)).unwrap_or(u16::MAX)
    }

    /// SSRC of one direction of a call.
    pub fn ssrc(&self, call: u32, dir: Direction) -> u32 {
        mix(self.seed(call, dir)) as u32 | 1
    }

    /// RTP sequence number of packet `index` of one direction (starts anywhere, wraps).
    pub fn seq(&self, call: u32, dir: Direction, index: u32) -> u16 {
        ((mix(self.seed(call, dir)) >> 32) as u16).wrapping_add(index as u16)
    }

    /// RTP timestamp of packet `index` (starts anywhere, 160 per slot, wraps).
    pub fn rtp_ts(&self, call: u32, dir: Direction, index: u32) -> u32 {
        ((mix(self.seed(call, dir)) >> 16) as u32).wrapping_add(
            index
                .wrapping_mul(self.send_every.max(1))
                .wrapping_mul(PAYLOAD_BYTES as u32),
        )
    }

    /// The G.711 mu-law payload of packet `index` of one direction: a pure function of (run,
    /// call, direction, index), noise-like so that no two packets of a run are alike and a
    /// misplaced or swapped packet shows in the recording.
    pub fn payload(&self, call: u32, dir: Direction, index: u32, out: &mut [u8; PAYLOAD_BYTES]) {
        let mut state = mix(self.seed(call, dir) ^ (u64::from(index) << 1 | 1));
        for chunk in out.chunks_exact_mut(8) {
            state = mix(state);
            chunk.copy_from_slice(&state.to_le_bytes());
        }
    }

    /// The audio one direction of a call must leave in the recording: every payload of the
    /// direction decoded (by the lab's own decoder, independent of CallTap's), in order, with
    /// the silent slots of [`LoadSpec::send_every`] as silence between them.
    pub fn expected_pcm(&self, call: u32, dir: Direction) -> Vec<i16> {
        let mut payload = [0u8; PAYLOAD_BYTES];
        let every = self.send_every.max(1) as usize;
        let packets = self.packets_per_direction() as usize;
        let mut pcm = Vec::with_capacity(((packets - 1) * every + 1) * PAYLOAD_BYTES);
        for i in 0..packets {
            if i > 0 {
                pcm.resize(pcm.len() + (every - 1) * PAYLOAD_BYTES, 0);
            }
            self.payload(call, dir, i as u32, &mut payload);
            pcm.extend(payload.iter().map(|b| ulaw_decode(*b)));
        }
        pcm
    }

    fn seed(&self, call: u32, dir: Direction) -> u64 {
        let d = match dir {
            Direction::Caller => 0,
            Direction::Callee => 1,
        };
        mix(u64::from(self.run) << 33 | u64::from(call) << 1 | d)
    }

    /// Offset of event `e` of a call from the call's start (see the module's schedule).
    fn offset_ns(&self, e: u32) -> u64 {
        let packets = self.packets_per_direction();
        match e {
            0 => 0,
            1 => MS,
            2 => 2 * MS,
            _ if e < 3 + 2 * packets => {
                let m = u64::from(e - 3);
                let slot = (m / 2) * u64::from(self.send_every.max(1));
                20 * MS + slot * PACKET_INTERVAL_NS + (m % 2) * 10 * MS
            }
            _ => {
                let slots = u64::from(self.slots_per_direction());
                let bye = PACKET_INTERVAL_NS * (slots + 1) + 40 * MS;
                bye + u64::from(e - (3 + 2 * packets)) * MS
            }
        }
    }

    fn kind(&self, e: u32) -> Kind {
        let packets = self.packets_per_direction();
        match e {
            0 => Kind::Invite,
            1 => Kind::InviteOk,
            2 => Kind::Ack,
            _ if e < 3 + 2 * packets => {
                let m = e - 3;
                Kind::Rtp {
                    dir: if m.is_multiple_of(2) {
                        Direction::Caller
                    } else {
                        Direction::Callee
                    },
                    index: m / 2,
                }
            }
            _ if e == 3 + 2 * packets => Kind::Bye,
            _ => Kind::ByeOk,
        }
    }
}

/// splitmix64's finaliser: cheap, and good enough that payloads look like noise.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Merges the calls' schedules into one time-ordered stream of frames.
pub struct Generator {
    spec: LoadSpec,
    /// (due, call, event) of the next event of every call that has started and not finished.
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Calls not yet started; their start times grow with the number, so they join the heap
    /// only when due and the heap stays as small as the number of concurrent calls.
    next_call: u32,
    ip_id: u16,
    /// The SDP body is written here first, because the headers before it carry its length.
    body: Vec<u8>,
}

impl Generator {
    pub fn new(spec: LoadSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self {
            spec,
            heap: BinaryHeap::new(),
            next_call: 0,
            ip_id: 0,
            body: Vec::with_capacity(512),
        })
    }

    pub fn spec(&self) -> &LoadSpec {
        &self.spec
    }

    /// When the next frame is due (None: the run is over).
    pub fn peek_ns(&self) -> Option<u64> {
        let queued = self.heap.peek().map(|Reverse((t, _, _))| *t);
        let starting =
            (self.next_call < self.spec.calls).then(|| self.spec.call_start_ns(self.next_call));
        match (queued, starting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes the next frame into `buf` (replacing what it held) and says what it is.
    pub fn next_into(&mut self, buf: &mut Vec<u8>) -> Option<Frame> {
        let starting =
            (self.next_call < self.spec.calls).then(|| self.spec.call_start_ns(self.next_call));
        let take_new = match (self.heap.peek(), starting) {
            (Some(Reverse((t, _, _))), Some(s)) => s < *t,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let (at_ns, call, event) = if take_new {
            let call = self.next_call;
            self.next_call += 1;
            (starting?, call, 0)
        } else {
            self.heap.pop()?.0
        };
        if event + 1 < self.spec.events_per_call() {
            let start = self.spec.call_start_ns(call);
            self.heap.push(Reverse((
                start + self.spec.offset_ns(event + 1),
                call,
                event + 1,
            )));
        }
        let kind = self.spec.kind(event);
        self.write_frame(call, kind, buf);
        Some(Frame { at_ns, call, kind })
    }

    fn write_frame(&mut self, call: u32, kind: Kind, buf: &mut Vec<u8>) {
        let s = &self.spec;
        let port = s.media_port(call);
        let (src, dst, sport, dport) = match kind {
            Kind::Rtp {
                dir: Direction::Caller,
                ..
            } => match s.answer_media {
                Some(to) => (s.uac_ip, *to.ip(), port, to.port()),
                None => (s.uac_ip, s.uas_ip, port, port),
            },
            Kind::Rtp {
                dir: Direction::Callee,
                ..
            } => (s.uas_ip, s.uac_ip, port, port),
            Kind::Invite | Kind::Ack | Kind::Bye => (s.uac_ip, s.uas_ip, s.sip_port, s.sip_port),
            Kind::InviteOk | Kind::ByeOk => (s.uas_ip, s.uac_ip, s.sip_port, s.sip_port),
        };
        // IPv4 and UDP headers are filled in once the payload's length is known.
        frames::begin(buf, s.src_mac, s.dst_mac, 8);
        match kind {
            Kind::Rtp { dir, index } => {
                buf.extend_from_slice(&[0x80, 0]);
                buf.extend_from_slice(&s.seq(call, dir, index).to_be_bytes());
                buf.extend_from_slice(&s.rtp_ts(call, dir, index).to_be_bytes());
                buf.extend_from_slice(&s.ssrc(call, dir).to_be_bytes());
                let mut payload = [0u8; PAYLOAD_BYTES];
                s.payload(call, dir, index, &mut payload);
                buf.extend_from_slice(&payload);
            }
            _ => self.write_sip(call, kind, buf),
        }
        self.ip_id = self.ip_id.wrapping_add(1);
        let ip = frames::Ipv4 {
            src,
            dst,
            proto: frames::IPPROTO_UDP,
            // DSCP EF, as phones mark voice.
            tos: 0xb8,
            id: self.ip_id,
            // Don't fragment.
            frag: 0x4000,
        };
        frames::finish_ipv4_udp(buf, &ip, sport, dport);
    }

    /// Appends one SIP message of call `call`. `write!` into a Vec with room does not allocate.
    fn write_sip(&mut self, call: u32, kind: Kind, buf: &mut Vec<u8>) {
        let s = &self.spec;
        let (uac, uas, sip) = (s.uac_ip, s.uas_ip, s.sip_port);
        let run = s.run;
        let port = s.media_port(call);
        self.body.clear();
        let with_sdp = match (kind, s.answer_media) {
            (Kind::Invite, _) => Some((uac, port)),
            (Kind::InviteOk, None) => Some((uas, port)),
            (Kind::InviteOk, Some(to)) => Some((*to.ip(), to.port())),
            _ => None,
        };
        if let Some((ip, port)) = with_sdp {
            let _ = write!(
                self.body,
                "v=0\r\no=- {call} 1 IN IP4 {ip}\r\ns=calltap-loadgen\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
            );
        }
        let (cseq, method) = match kind {
            Kind::Invite | Kind::InviteOk => (1, "INVITE"),
            Kind::Ack => (1, "ACK"),
            _ => (2, "BYE"),
        };
        let to_tag = if kind == Kind::Invite { "" } else { ";tag=b" };
        let _ = match kind {
            Kind::InviteOk | Kind::ByeOk => write!(buf, "SIP/2.0 200 OK\r\n"),
            _ => write!(buf, "{method} sip:{call}@{uas}:{sip} SIP/2.0\r\n"),
        };
        // ACK of a 2xx is its own transaction (new branch); the 200s echo their request's Via.
        let branch = match kind {
            Kind::Invite | Kind::InviteOk => "i",
            Kind::Ack => "a",
            _ => "b",
        };
        // Max-Forwards belongs to requests only.
        let forwards = match kind {
            Kind::InviteOk | Kind::ByeOk => "",
            _ => "Max-Forwards: 70\r\n",
        };
        let _ = write!(
            buf,
            "Via: SIP/2.0/UDP {uac}:{sip};branch=z9hG4bK{run}x{call}{branch}\r\n{forwards}From: <sip:agent{call}@{uac}>;tag=a{call}\r\nTo: <sip:{call}@{uas}>{to_tag}\r\nCall-ID: lg{run}-{call}@{uac}\r\nCSeq: {cseq} {method}\r\n"
        );
        match kind {
            Kind::Invite => {
                let _ = write!(buf, "Contact: <sip:agent{call}@{uac}:{sip}>\r\n");
            }
            Kind::InviteOk => {
                let _ = write!(buf, "Contact: <sip:{call}@{uas}:{sip}>\r\n");
            }
            _ => {}
        }
        if !self.body.is_empty() {
            let _ = write!(buf, "Content-Type: application/sdp\r\n");
        }
        let _ = write!(buf, "Content-Length: {}\r\n\r\n", self.body.len());
        buf.extend_from_slice(&self.body);
    }
}

impl Schedule for Generator {
    type Frame = Frame;

    fn peek_ns(&self) -> Option<u64> {
        Generator::peek_ns(self)
    }

    fn next_into(&mut self, buf: &mut Vec<u8>) -> Option<Frame> {
        Generator::next_into(self, buf)
    }
}

/// What a run (or the part of it written) contained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub frames: u64,
    pub rtp: u64,
    pub sip: u64,
    /// Bytes of frames (a pcap file adds 24 + 16 per frame).
    pub bytes: u64,
    /// True when `max_bytes` cut the run short (calls left without BYE).
    pub truncated: bool,
}

impl Written {
    pub fn count(&mut self, frame: &Frame, len: usize) {
        self.frames += 1;
        self.bytes += len as u64;
        match frame.kind {
            Kind::Rtp { .. } => self.rtp += 1,
            _ => self.sip += 1,
        }
    }
}

/// Writes the run to a pcap (Ethernet, ns timestamps from [`PCAP_EPOCH_NS`]); with `max_bytes`
/// it stops before the frame that would make the file larger, for captures of a given size.
pub fn write_pcap(path: &Path, spec: &LoadSpec, max_bytes: Option<u64>) -> Result<Written> {
    write_pcap_merged(path, std::slice::from_ref(spec), max_bytes)
}

/// Writes several runs as one pcap, their frames merged in time order: more concurrent calls
/// than one address pair's ports allow (each spec with its own addresses and `run`).
pub fn write_pcap_merged(
    path: &Path,
    specs: &[LoadSpec],
    max_bytes: Option<u64>,
) -> Result<Written> {
    let mut generators = specs
        .iter()
        .map(|s| Generator::new(s.clone()))
        .collect::<Result<Vec<_>>>()?;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = PcapWriter::with_header(
        BufWriter::with_capacity(1 << 20, file),
        PcapHeader {
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        },
    )
    .context("pcap header")?;
    let mut file_bytes = 24u64;
    let mut written = Written::default();
    let mut buf = Vec::with_capacity(MAX_FRAME);
    loop {
        let next = generators
            .iter_mut()
            .filter_map(|g| g.peek_ns().map(|t| (t, g)))
            .min_by_key(|(t, _)| *t);
        let Some(frame) = next.and_then(|(_, g)| g.next_into(&mut buf)) else {
            break;
        };
        file_bytes += 16 + buf.len() as u64;
        if max_bytes.is_some_and(|max| file_bytes > max) {
            written.truncated = true;
            break;
        }
        writer
            .write_packet(&PcapPacket::new(
                Duration::from_nanos(PCAP_EPOCH_NS + frame.at_ns),
                buf.len() as u32,
                &buf,
            ))
            .with_context(|| format!("writing {}", path.display()))?;
        written.count(&frame, buf.len());
    }
    writer
        .into_writer()
        .flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(written)
}

/// Checks one channel of a recording against the audio that was sent: `expected` must appear
/// as one contiguous run, sample for sample, with nothing but silence around it. Returns where
/// it starts (in samples).
pub fn check_channel(channel: &[i16], expected: &[i16]) -> Result<usize> {
    let head = &expected[..expected.len().min(PAYLOAD_BYTES)];
    let Some(at) = channel.windows(head.len()).position(|w| w == head) else {
        bail!("the first packet's audio is not in the channel");
    };
    let Some(got) = channel.get(at..at + expected.len()) else {
        bail!(
            "the channel ends {} samples into the audio, {} sent",
            channel.len() - at,
            expected.len()
        );
    };
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        bail!(
            "sample {i} of the sent audio differs (packet {}): {} recorded, {} sent",
            i / PAYLOAD_BYTES,
            got[i],
            expected[i]
        );
    }
    let noisy = channel[..at]
        .iter()
        .chain(&channel[at + expected.len()..])
        .filter(|s| **s != 0)
        .count();
    if noisy != 0 {
        bail!("{noisy} non-silent samples outside the call's audio");
    }
    Ok(at)
}

/// Checks a recording of call `call` (interleaved stereo samples as CallTap writes them:
/// caller left, callee right) against what the model sent, with [`check_channel`] per side.
pub fn check_recording(spec: &LoadSpec, call: u32, interleaved: &[i16]) -> Result<()> {
    for (dir, first) in [(Direction::Caller, 0), (Direction::Callee, 1)] {
        let channel: Vec<i16> = interleaved.iter().skip(first).step_by(2).copied().collect();
        check_channel(&channel, &spec.expected_pcm(call, dir))
            .with_context(|| format!("call {call}, {dir:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(spec: &LoadSpec) -> Vec<(Frame, Vec<u8>)> {
        let mut g = Generator::new(spec.clone()).expect("valid spec");
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(f) = g.next_into(&mut buf) {
            out.push((f, buf.clone()));
        }
        out
    }

    #[test]
    fn every_call_is_complete_and_the_stream_is_in_time_order() {
        let mut spec = LoadSpec::new(7, 2);
        spec.rate = 3.0;
        let all = frames(&spec);
        assert_eq!(all.len() as u64, spec.rtp_packets() + spec.sip_packets());
        assert!(all.windows(2).all(|w| w[0].0.at_ns <= w[1].0.at_ns));
        assert_eq!(all.last().map(|f| f.0.at_ns), Some(spec.end_ns()));
        for call in 0..7 {
            let mine: Vec<Kind> = all
                .iter()
                .filter(|f| f.0.call == call)
                .map(|f| f.0.kind)
                .collect();
            assert_eq!(mine.len(), 205, "call {call}");
            assert_eq!(
                &mine[..3],
                &[Kind::Invite, Kind::InviteOk, Kind::Ack],
                "call {call}"
            );
            assert_eq!(&mine[203..], &[Kind::Bye, Kind::ByeOk], "call {call}");
            for dir in [Direction::Caller, Direction::Callee] {
                let idx: Vec<u32> = mine
                    .iter()
                    .filter_map(|k| match k {
                        Kind::Rtp { dir: d, index } if *d == dir => Some(*index),
                        _ => None,
                    })
                    .collect();
                assert_eq!(idx, (0..100).collect::<Vec<_>>(), "call {call} {dir:?}");
            }
        }
        // Calls overlap: call 6 starts at 2 s, before call 0's BYE at 2.06 s.
        assert!(spec.call_start_ns(6) < spec.call_start_ns(0) + spec.offset_ns(203));
    }

    #[test]
    fn frames_are_well_formed_ipv4_udp_with_sip_and_rtp() {
        let spec = LoadSpec::new(3, 1);
        for (f, buf) in frames(&spec) {
            assert!(buf.len() <= MAX_FRAME, "{f:?}");
            assert_eq!(&buf[12..14], &[8, 0]);
            assert_eq!(frames::ipv4_checksum(&buf[14..34]), 0, "{f:?}");
            assert_eq!(
                usize::from(u16::from_be_bytes([buf[16], buf[17]])),
                buf.len() - 14
            );
            assert_eq!(
                usize::from(u16::from_be_bytes([buf[38], buf[39]])),
                buf.len() - 34
            );
            let payload = &buf[42..];
            match f.kind {
                Kind::Rtp { dir, index } => {
                    assert_eq!(payload.len(), 12 + PAYLOAD_BYTES);
                    assert_eq!(payload[0], 0x80);
                    assert_eq!(
                        u16::from_be_bytes([payload[2], payload[3]]),
                        spec.seq(f.call, dir, index)
                    );
                    let mut want = [0u8; PAYLOAD_BYTES];
                    spec.payload(f.call, dir, index, &mut want);
                    assert_eq!(&payload[12..], &want);
                }
                _ => {
                    let text = std::str::from_utf8(payload).expect("SIP is text");
                    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.parse().ok())
                        .expect("Content-Length");
                    assert_eq!(len, body.len(), "{text}");
                    assert!(head.contains(&format!("Call-ID: {}\r\n", spec.call_id(f.call))));
                    let sdp = matches!(f.kind, Kind::Invite | Kind::InviteOk);
                    assert_eq!(
                        body.contains(&format!("m=audio {} RTP/AVP 0", spec.media_port(f.call))),
                        sdp,
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_hostile_answer_names_the_endpoint_and_draws_the_callers_rtp() {
        let mut spec = LoadSpec::new(1, 1);
        let proxy = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 5060);
        spec.answer_media = Some(proxy);
        for (f, buf) in frames(&spec) {
            let dst = Ipv4Addr::new(buf[30], buf[31], buf[32], buf[33]);
            let dport = u16::from_be_bytes([buf[36], buf[37]]);
            match f.kind {
                Kind::InviteOk => {
                    let text = String::from_utf8_lossy(&buf[42..]);
                    assert!(text.contains("c=IN IP4 198.18.0.2\r\n"), "{text}");
                    assert!(text.contains("m=audio 5060 RTP/AVP 0"), "{text}");
                }
                Kind::Rtp {
                    dir: Direction::Caller,
                    ..
                } => assert_eq!((dst, dport), (*proxy.ip(), 5060)),
                Kind::Rtp {
                    dir: Direction::Callee,
                    ..
                } => assert_eq!((dst, dport), (spec.uac_ip, spec.media_port(0))),
                _ => {}
            }
        }
    }

    #[test]
    fn silence_suppression_sends_one_slot_in_n_and_leaves_silence_between() {
        let mut spec = LoadSpec::new(1, 1);
        spec.send_every = 4;
        assert_eq!(spec.packets_per_direction(), 13);
        let all = frames(&spec);
        assert_eq!(all.len() as u64, spec.rtp_packets() + spec.sip_packets());
        let caller: Vec<(u64, &Vec<u8>)> = all
            .iter()
            .filter(|(f, _)| {
                matches!(
                    f.kind,
                    Kind::Rtp {
                        dir: Direction::Caller,
                        ..
                    }
                )
            })
            .map(|(f, b)| (f.at_ns, b))
            .collect();
        for w in caller.windows(2) {
            // 80 ms apart on the wire and in RTP time, one sequence number apart.
            assert_eq!(w[1].0 - w[0].0, 4 * PACKET_INTERVAL_NS);
            let seq = |b: &[u8]| u16::from_be_bytes([b[44], b[45]]);
            let ts = |b: &[u8]| u32::from_be_bytes([b[46], b[47], b[48], b[49]]);
            assert_eq!(seq(w[1].1).wrapping_sub(seq(w[0].1)), 1);
            assert_eq!(ts(w[1].1).wrapping_sub(ts(w[0].1)), 640);
        }
        // The BYE still comes after the whole second.
        assert_eq!(all.last().map(|f| f.0.at_ns), Some(spec.end_ns()));
        assert!(spec.end_ns() > 1_000_000_000);
        let pcm = spec.expected_pcm(0, Direction::Caller);
        assert_eq!(pcm.len(), (12 * 4 + 1) * PAYLOAD_BYTES);
        assert!(pcm[PAYLOAD_BYTES..4 * PAYLOAD_BYTES]
            .iter()
            .all(|s| *s == 0));
        let channel: Vec<i16> = [vec![0; 80], pcm.clone(), vec![0; 500]].concat();
        assert_eq!(check_channel(&channel, &pcm).expect("matches"), 80);
    }

    #[test]
    fn payloads_are_deterministic_and_differ_between_packets_calls_and_runs() {
        let spec = LoadSpec::new(2, 1);
        let mut other_run = spec.clone();
        other_run.run = 1;
        let p = |s: &LoadSpec, call, dir, i| {
            let mut out = [0u8; PAYLOAD_BYTES];
            s.payload(call, dir, i, &mut out);
            out
        };
        let a = p(&spec, 0, Direction::Caller, 5);
        assert_eq!(a, p(&spec, 0, Direction::Caller, 5));
        assert_ne!(a, p(&spec, 0, Direction::Caller, 6));
        assert_ne!(a, p(&spec, 1, Direction::Caller, 5));
        assert_ne!(a, p(&spec, 0, Direction::Callee, 5));
        assert_ne!(a, p(&other_run, 0, Direction::Caller, 5));
        assert_eq!(spec.call_index(&spec.call_id(1)), Some(1));
        assert_eq!(other_run.call_index(&spec.call_id(1)), None);
    }

    #[test]
    fn check_channel_finds_the_audio_and_rejects_changes() {
        let spec = LoadSpec::new(1, 1);
        let sent = spec.expected_pcm(0, Direction::Caller);
        let mut channel = vec![0i16; 480];
        channel.extend_from_slice(&sent);
        channel.extend_from_slice(&[0; 100]);
        assert_eq!(check_channel(&channel, &sent).expect("matches"), 480);
        let mut changed = channel.clone();
        changed[480 + 4000] = changed[480 + 4000].wrapping_add(1);
        assert!(check_channel(&changed, &sent).is_err());
        let mut noisy = channel.clone();
        noisy[10] = 5;
        assert!(check_channel(&noisy, &sent).is_err());
        assert!(check_channel(&channel[..2000], &sent).is_err());

        // Stereo: caller left, callee right; swapped channels are refused.
        let callee = spec.expected_pcm(0, Direction::Callee);
        let stereo: Vec<i16> = sent
            .iter()
            .zip(&callee)
            .flat_map(|(l, r)| [*l, *r])
            .collect();
        check_recording(&spec, 0, &stereo).expect("stereo matches");
        let swapped: Vec<i16> = sent
            .iter()
            .zip(&callee)
            .flat_map(|(l, r)| [*r, *l])
            .collect();
        assert!(check_recording(&spec, 0, &swapped).is_err());
    }

    #[test]
    fn pcap_stops_at_the_size_asked_for() {
        let dir = std::env::temp_dir().join(format!("calltap-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let spec = LoadSpec::new(10, 2);
        let whole = write_pcap(&dir.join("all.pcap"), &spec, None).expect("pcap");
        assert_eq!(whole.rtp, spec.rtp_packets());
        assert!(!whole.truncated);
        let cut = write_pcap(&dir.join("cut.pcap"), &spec, Some(100_000)).expect("pcap");
        let size = std::fs::metadata(dir.join("cut.pcap")).expect("size").len();
        assert!(cut.truncated && size <= 100_000 && size > 99_000, "{size}");
        assert_eq!(size, 24 + 16 * cut.frames + cut.bytes);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut spec = LoadSpec::new(30_000, 1);
        assert!(spec.validate().is_err(), "ports overflow");
        spec.calls = 10;
        spec.rate = 0.0;
        assert!(spec.validate().is_err());
        spec.rate = 1.0;
        spec.seconds = 0;
        assert!(spec.validate().is_err());
    }
}
