//! A media worker: owns a set of calls, turns their RTP into a stereo WAV (channel 0 = caller,
//! channel 1 = callee), their RTCP into quality figures, and each finished call into a CDR.
//!
//! The per-packet path does hash lookups, decoding into a preallocated buffer and stores into
//! the recording's open buffers: no locks, no allocation, no system calls. The files are the
//! worker's spool thread's ([`crate::store::spool`]).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use calltap_common::{flags, Class, MediaKey};
use calltap_media::{
    codec::{dtmf::DtmfDetector, CodecId, Decoder, Payload},
    quality::{mos_from_r, r_factor, JitterEstimator},
    rtcp::{parse_compound, RtcpPacket},
    rtp::RtpPacket,
    stream::{Placement, StreamTimeline},
};
use calltap_sip::{
    dialog::{CallRef, Side},
    sdp::{Direction, RtpMap},
    NameAddr,
};
use serde::Serialize;

use self::decode::{payload_of, Pcm};
use super::{
    media_key, recording::RecordingAction, rules::RuleAction, CallSetup, Control, MediaTimeout,
    Restored,
};
use crate::{
    capture::Record,
    store::{
        callstore::{
            CallJournal, DirJournal, JournalWriter, SideJournal, WavJournal, COUNTERS_NS,
            DURABLE_NS, VERSION,
        },
        cdr::{
            rfc3339, Cdr, Dtmf, PacketCounts, Party, Recording, RejectedRequest, RestartGap,
            StreamQuality,
        },
        paths::{expand, PathFields},
        spool::{
            window::RawPcap, Closing, FailReason, RecId, Reply, Spool, SpoolConfig, Tag, WavWindow,
        },
        wav::{self, DATA_OFFSET},
    },
};

mod decode;

/// Settings of a media worker.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    pub recordings_dir: PathBuf,
    /// See [`crate::store::paths::expand`].
    pub path_template: String,
    pub flush_interval_ns: u64,
    /// End a call after this long without RTP (unless it is on hold).
    pub media_timeout_ns: u64,
    pub max_call_secs: u64,
    /// A call restored after a restart that gets no RTP for this long ended while CallTap was
    /// down: it is closed with end reason `recorder_restart`.
    pub restore_grace_ns: u64,
    /// The worker's audio buffers (see [`crate::store::spool`]).
    pub spool: SpoolConfig,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            recordings_dir: PathBuf::from("recordings"),
            path_template: "{yyyy}/{mm}/{dd}/{hhmmss}_{from}_{to}_{uuid}.wav".into(),
            flush_interval_ns: 1_000_000_000,
            media_timeout_ns: 300_000_000_000,
            max_call_secs: 4 * 3600,
            restore_grace_ns: 5_000_000_000,
            spool: SpoolConfig::default(),
        }
    }
}

/// Counters of one media worker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerStats {
    pub id: u32,
    pub records: u64,
    pub rtp: u64,
    pub rtcp: u64,
    /// RTP/RTCP for an endpoint this worker does not (or no longer) know.
    pub unknown_endpoint: u64,
    pub bad_rtp: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    pub write_errors: u64,
    /// Active-call journal writes, and those that failed (logged once per flush round).
    pub journal_writes: u64,
    pub journal_errors: u64,
    /// Calls taken over from an earlier run's journal.
    pub calls_restored: u64,
    /// Flush rounds done (the driver times them for the flush latency histogram).
    pub flush_rounds: u64,
    /// Calls whose recording failed (see [`FailReason`]), and audio samples dropped because
    /// the disk could not keep up.
    pub recordings_failed: u64,
    pub samples_dropped: u64,
    /// Calls signalling evicted unanswered that had nothing to record: dropped without a CDR.
    pub calls_evicted: u64,
    /// DTMF digits and rejected requests past their per-call bounds, counted only.
    pub dtmf_omitted: u64,
    pub rejected_requests_omitted: u64,
}

/// Most DTMF digits a CDR lists; more are counted (`dtmf_omitted`). An IVR call has tens.
pub const MAX_DTMF_PER_CALL: usize = 256;
/// Most rejected in-dialog requests a CDR lists; more are counted (`rejected_requests_omitted`).
pub const MAX_REJECTED_PER_CALL: usize = 32;

/// Adds a digit to the call's CDR, within [`MAX_DTMF_PER_CALL`].
fn push_dtmf(c: &mut ActiveCall, d: Dtmf, stats: &mut WorkerStats) {
    let total = &mut stats.dtmf_omitted;
    push_bounded(
        &mut c.dtmf,
        d,
        MAX_DTMF_PER_CALL,
        &mut c.dtmf_omitted,
        total,
    );
}

/// Appends `item` to a per-call list bounded at `max`, or counts it in `omitted` (and the
/// worker's `total`) once the list is full.
fn push_bounded<T>(list: &mut Vec<T>, item: T, max: usize, omitted: &mut u64, total: &mut u64) {
    if list.len() < max {
        list.push(item);
    } else {
        *omitted += 1;
        *total += 1;
    }
}

#[derive(Default)]
struct SideMedia {
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
    codecs: Vec<RtpMap>,
    direction: Option<Direction>,
}

/// State of one audio direction (0 = from the caller, 1 = from the callee).
///
/// In declaration order (`repr(C)`): the fields every RTP packet touches come first, so they
/// share a few cache lines; with thousands of calls a call's state is never in cache when its
/// next packet comes, and each line touched is a miss (these were most of a worker's time).
#[derive(Default)]
#[repr(C)]
struct DirState {
    /// The last payload type's payload and RTP clock, so the per-packet path looks the SDP up
    /// (and builds a codec name) only when the payload type or the SDP changes.
    pt_cache: Option<(u8, Payload, u32)>,
    /// The codec of the latest audio, and its decoder (built when the codec changes; its state
    /// carries over DTMF and comfort noise). A stateless decoder (G.711) is a pointer to its
    /// code and nothing on the heap.
    kind: Option<CodecId>,
    decoder: Option<Box<dyn Decoder>>,
    timeline_clock: u32,
    ssrc: Option<u32>,
    /// Capture time of this direction's last RTP packet.
    last_ns: Option<u64>,
    packets: u64,
    bytes: u64,
    jitter: Option<JitterEstimator>,
    timeline: Option<StreamTimeline>,
    // Cold: per codec or SDP change, per DTMF or RTCP packet, at the CDR.
    codec: Option<String>,
    dtmf: DtmfDetector,
    rtcp_packets: u64,
    rtcp_fraction_lost: Option<f64>,
    rtcp_jitter_ms: Option<f64>,
}

/// One call of a worker. Declaration order is layout order (`repr(C)`): what every RTP packet
/// touches first (see [`DirState`]), the rest after.
#[repr(C)]
struct ActiveCall {
    last_media_ns: u64,
    timed_out: bool,
    /// No file may be created (yet): a `skip` call (never), an `on_demand` call until an
    /// operator starts it; the file is then created at the next audio packet.
    no_file: bool,
    /// The recording failed (logged once): no file is made for it any more.
    write_failed: bool,
    /// Restored and not yet heard from since (time of the restore); see [`JournalState`].
    awaiting_since: Option<u64>,
    /// An SSRC moved to the other direction, not yet confirmed: (ssrc, original direction,
    /// first seen).
    contender: Option<(u32, usize, u64)>,
    /// Which direction each SSRC seen so far belongs to (bounded; see `direction_of`).
    ssrc_dirs: SsrcDirs,
    wav: Option<WavWindow>,
    /// Operator pause/stop: spans kept out of the file, and the events for the CDR.
    gate: super::recording::RecordingGate,
    dirs: [DirState; 2],
    // Cold: per control message, flush tick or call end (`setup.start_ns` is read per packet,
    // but where it lies in `setup` made no difference to the misses measured).
    setup: CallSetup,
    ringing_ns: Option<u64>,
    answer_ns: Option<u64>,
    sides: [SideMedia; 2],
    wav_path: PathBuf,
    /// The spool thread confirmed `wav_path` as the file's name (a taken name gets a suffix):
    /// only then is it journaled.
    wav_confirmed: bool,
    raw: Option<RawPcap>,
    raw_path: PathBuf,
    /// Why the recording failed, for the CDR.
    failure: Option<String>,
    unsupported: BTreeSet<String>,
    dtmf: Vec<Dtmf>,
    dtmf_omitted: u64,
    /// In-dialog requests signalling did not act on, for the CDR.
    rejected: Vec<RejectedRequest>,
    rejected_omitted: u64,
    /// Active-call journal bookkeeping (see [`crate::store::callstore`]).
    journal: JournalState,
    /// Signalling ended the call (reason, time); it is finished after [`END_GRACE_NS`].
    ending: Option<(String, u64)>,
    recording_events: Vec<crate::store::cdr::RecordingEvent>,
}

impl ActiveCall {
    /// Prefetches the lines a packet from `sender` touches: the fields before `dirs`, the
    /// sender's [`DirState`] up to its cold part, and the call's start time.
    #[inline]
    fn warm(&self, sender: usize) {
        use std::mem::{offset_of, size_of};
        let dir = offset_of!(ActiveCall, dirs) + size_of::<DirState>() * sender.min(1);
        let base = std::ptr::from_ref(self).cast::<u8>();
        let mut at = 0;
        while at < offset_of!(ActiveCall, dirs) {
            prefetch(base.wrapping_add(at));
            at += 64;
        }
        let mut at = dir & !63;
        while at < dir + offset_of!(DirState, codec) {
            prefetch(base.wrapping_add(at));
            at += 64;
        }
        prefetch(std::ptr::from_ref(&self.setup.start_ns).cast());
    }

    /// Writes samples placed at `pos` of `channel`, making the recording at `rate` first if it
    /// may be made and is not yet; paused or stopped spans stay silence.
    fn write_audio(
        &mut self,
        spool: &mut Spool,
        max_secs: u64,
        channel: usize,
        pos: u64,
        samples: &[i16],
        rate: u32,
    ) {
        if self.wav.is_none() {
            if self.no_file || self.write_failed {
                return;
            }
            self.open_recording(spool, rate, max_secs);
        }
        if let Some(w) = self.wav.as_mut() {
            self.gate.write(w, spool, channel, pos, samples);
        }
    }

    /// The slow path of a packet whose payload type is not the direction's last: what it
    /// carries (from the SDP), the codec's name for the CDR, and a decoder when the codec
    /// changed. Returns the payload and its RTP clock.
    #[cold]
    fn payload_type_changed(&mut self, sender: usize, pt: u8) -> (Payload, u32) {
        let codecs = [
            &self.sides[1 - sender].codecs[..],
            &self.sides[sender].codecs[..],
        ];
        let (payload, name, clock, format) = payload_of(codecs, pt);
        let d = &mut self.dirs[sender];
        match payload {
            Payload::Unsupported => {
                self.unsupported.insert(name);
            }
            Payload::TelephoneEvent | Payload::ComfortNoise => {}
            Payload::Audio(codec) => {
                d.codec = Some(name);
                if d.kind != Some(codec) || d.decoder.is_none() {
                    d.decoder = Some(codec.decoder(&format));
                }
            }
        }
        d.pt_cache = Some((pt, payload, clock));
        (payload, clock)
    }

    /// Starts the call's recording at `rate` (the spool thread creates the file).
    fn open_recording(&mut self, spool: &mut Spool, rate: u32, max_secs: u64) {
        self.wav = Some(WavWindow::create(
            spool,
            RecId::wav(self.setup.call),
            Tag::new(&self.setup.uuid, false),
            self.wav_path.clone(),
            rate,
            max_secs,
        ));
    }
}

/// Per-call state of the active-call journal, touched from control messages and the flush
/// tick. (Whether a restored call was heard from since, which the packet path clears, is
/// `ActiveCall::awaiting_since`, among the fields every packet touches anyway.)
#[derive(Default)]
struct JournalState {
    /// The SIP dialog as the signalling worker last reported it.
    dialog: Option<Box<calltap_sip::dialog::DialogState>>,
    /// Gaps of restarts this call survived.
    restart_gaps: Vec<RestartGap>,
    /// A control message changed something worth journaling.
    dirty: bool,
    /// [`material`] of the call when it was last journaled, when that was (0: never), when it
    /// was last journaled durably, and its packet count then.
    material: u64,
    saved_ns: u64,
    durable_ns: u64,
    packets: u64,
    /// The raw RTP pcap already exists (a restored call appends to it).
    raw_exists: bool,
}

/// A hint to bring the line at `p` into the cache; never faults.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A cheap fingerprint of what a journal write must capture promptly: stream identities and
/// anchoring (SSRC, RTP clock, SSRC changes and re-anchorings), the codec in use, the
/// recording's existence, DTMF and unsupported codecs seen. Ordinary packets do not change it.
fn material(c: &ActiveCall) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |x: u64| h = (h ^ x).wrapping_mul(0x0100_0000_01b3);
    for d in &c.dirs {
        mix(d.ssrc.map_or(u64::MAX, u64::from));
        mix(u64::from(d.timeline_clock));
        if let Some(t) = &d.timeline {
            let st = t.stats();
            mix(st.ssrc_changes);
            mix(st.resyncs);
        }
        mix(d.pt_cache.map_or(u64::MAX, |(pt, _, _)| u64::from(pt)));
    }
    mix(u64::from(c.wav.is_some()));
    mix(u64::from(c.raw.is_some()));
    mix(u64::from(c.write_failed));
    mix(c.dtmf.len() as u64);
    mix(c.unsupported.len() as u64);
    mix(c.ssrc_dirs.len as u64);
    h
}

/// Audio still in flight when the BYE is captured (the far side's last packets) is kept: a call
/// is finished this long after signalling ended it.
pub const END_GRACE_NS: u64 = 500_000_000;

/// Two SSRCs within this time of each other in one direction run concurrently.
const CONCURRENT_NS: u64 = 100_000_000;
/// A moved SSRC is moved back if the stream it displaced does not send again within this.
const CONFIRM_NS: u64 = 300_000_000;
const MAX_SSRCS: usize = 8;

/// The SSRCs of a call and the direction each belongs to, kept inline (41 bytes among the
/// fields every packet touches) rather than in a `Vec` whose heap block would be one more
/// cache miss per packet.
#[derive(Clone, Copy, Default)]
struct SsrcDirs {
    ssrc: [u32; MAX_SSRCS],
    dir: [u8; MAX_SSRCS],
    len: u8,
}

impl SsrcDirs {
    fn from_pairs(pairs: &[(u32, usize)]) -> SsrcDirs {
        let mut s = SsrcDirs::default();
        for &(ssrc, dir) in pairs {
            s.push(ssrc, dir);
        }
        s
    }

    fn pairs(&self) -> Vec<(u32, usize)> {
        (0..usize::from(self.len))
            .map(|i| (self.ssrc[i], usize::from(self.dir[i])))
            .collect()
    }

    fn index_of(&self, ssrc: u32) -> Option<usize> {
        self.ssrc[..usize::from(self.len)]
            .iter()
            .position(|&s| s == ssrc)
    }

    fn get(&self, ssrc: u32) -> Option<usize> {
        self.index_of(ssrc).map(|i| usize::from(self.dir[i]))
    }

    fn set(&mut self, ssrc: u32, dir: usize) {
        if let Some(i) = self.index_of(ssrc) {
            self.dir[i] = dir.min(1) as u8;
        }
    }

    /// Adds `ssrc` unless the table is full (later SSRCs then follow their endpoint).
    fn push(&mut self, ssrc: u32, dir: usize) {
        let n = usize::from(self.len);
        if n < MAX_SSRCS {
            self.ssrc[n] = ssrc;
            self.dir[n] = dir.min(1) as u8;
            self.len += 1;
        }
    }
}

impl ActiveCall {
    /// The direction an RTP packet really travels. Endpoint matching says `by_endpoint`, which
    /// is wrong when one host (an SBC or PBX relaying media, captured on both legs) is named in
    /// both sides' SDP: then both streams match one side and would be mixed into one channel. A
    /// second SSRC that runs concurrently with the first in one direction while the other
    /// direction is silent is the other direction. If the first SSRC then stops instead (a phone
    /// that merely restarted its stream), the move is undone.
    fn direction_of(&mut self, ssrc: u32, by_endpoint: usize, now: u64) -> usize {
        if let Some(dir) = self.ssrc_dirs.get(ssrc) {
            if let Some((moved, from, since)) = self.contender {
                if moved == ssrc && now.saturating_sub(since) > CONFIRM_NS {
                    // The displaced stream never spoke again: this was an SSRC change.
                    self.contender = None;
                    self.ssrc_dirs.set(ssrc, from);
                    return from;
                }
                if moved != ssrc && dir == from {
                    // The displaced stream goes on alongside: the move stands.
                    self.contender = None;
                }
            }
            return dir;
        }
        let d = &self.dirs[by_endpoint];
        let other = 1 - by_endpoint;
        let concurrent = d.ssrc.is_some_and(|cur| cur != ssrc)
            && d.last_ns
                .is_some_and(|t| now.saturating_sub(t) < CONCURRENT_NS);
        let dir = if concurrent && self.dirs[other].packets == 0 {
            self.contender = Some((ssrc, by_endpoint, now));
            other
        } else {
            by_endpoint
        };
        self.ssrc_dirs.push(ssrc, dir);
        dir
    }
}

impl ActiveCall {
    /// RTP or RTCP of this call arrived at `now`: it is alive. Only packets that parse as such
    /// say so; anything else sent to its endpoints (an SDP can name any endpoint) must not
    /// keep a call open past its media timeout.
    fn heard(&mut self, now: u64) {
        self.last_media_ns = self.last_media_ns.max(now);
        self.timed_out = false;
        self.awaiting_since = None;
    }

    /// The media keys this call's endpoints occupy in the worker's maps.
    fn endpoint_keys(&self) -> impl Iterator<Item = MediaKey> + '_ {
        self.sides
            .iter()
            .flat_map(|s| s.rtp.iter().chain(s.rtcp.iter()))
            .map(|a| media_key(*a))
    }

    fn on_hold(&self) -> bool {
        self.sides.iter().any(|s| {
            matches!(
                s.direction,
                Some(Direction::SendOnly | Direction::RecvOnly | Direction::Inactive)
            ) || (s.direction.is_some() && s.rtp.is_none())
        })
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Caller => 0,
        Side::Callee => 1,
    }
}

fn side_name(i: usize) -> &'static str {
    if i == 0 {
        "caller"
    } else {
        "callee"
    }
}

fn party(n: &NameAddr) -> Party {
    Party {
        user: n.user.clone(),
        display: n.display.clone(),
        host: n.host.clone().unwrap_or_default(),
        uri: n.uri.clone(),
    }
}

/// Source and destination of the record's innermost IP/UDP headers.
fn endpoints(rec: &Record<'_>) -> Option<(SocketAddr, SocketAddr)> {
    let m = &rec.meta;
    let l3 = m.l3_off as usize;
    let (src, dst): (IpAddr, IpAddr) = if m.flags & flags::IPV6 != 0 {
        let h = rec.frame.get(l3..l3 + 40)?;
        let s: [u8; 16] = h[8..24].try_into().ok()?;
        let d: [u8; 16] = h[24..40].try_into().ok()?;
        (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into())
    } else {
        let h = rec.frame.get(l3..l3 + 20)?;
        let s: [u8; 4] = h[12..16].try_into().ok()?;
        let d: [u8; 4] = h[16..20].try_into().ok()?;
        (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into())
    };
    let l4 = m.l4_off as usize;
    let p = rec.frame.get(l4..l4 + 4)?;
    Some((
        SocketAddr::new(src, u16::from_be_bytes([p[0], p[1]])),
        SocketAddr::new(dst, u16::from_be_bytes([p[2], p[3]])),
    ))
}

/// The worker's per-packet maps: foldhash, seeded per process (keys come from SDP, i.e. from
/// the network, so the seed must not be guessable), at a fraction of SipHash's cost.
type FastMap<K, V> = foldhash::HashMap<K, V>;

pub struct MediaWorker {
    pub id: u32,
    cfg: MediaConfig,
    calls: FastMap<CallRef, Box<ActiveCall>>,
    endpoints: FastMap<MediaKey, (CallRef, Side)>,
    /// Endpoints of calls in their end grace period: consulted only when no live call claims a
    /// packet, so a new call reusing an endpoint at once gets its own packets.
    ending_endpoints: FastMap<MediaKey, (CallRef, Side)>,
    /// Endpoints several live calls of this worker use: packets sent to them are attributed by
    /// their source endpoint first.
    shared: foldhash::HashSet<MediaKey>,
    /// Calls signalling has ended, in end order: finished once their grace period is over.
    ending_queue: std::collections::VecDeque<(u64, CallRef)>,
    pcm: Pcm,
    last_flush_ns: u64,
    /// The active-call journal (`calltap run`; replay has none).
    store: Option<JournalWriter>,
    /// Where the recordings' audio goes to disk.
    spool: Spool,
    pub stats: WorkerStats,
}

impl MediaWorker {
    /// A worker and its spool thread.
    pub fn new(id: u32, cfg: MediaConfig) -> MediaWorker {
        let spool = Spool::start(id, cfg.spool.clone());
        MediaWorker {
            id,
            cfg,
            calls: FastMap::with_capacity_and_hasher(1024, Default::default()),
            endpoints: FastMap::with_capacity_and_hasher(4096, Default::default()),
            ending_endpoints: FastMap::default(),
            shared: foldhash::HashSet::default(),
            ending_queue: std::collections::VecDeque::new(),
            pcm: Pcm::new(),
            last_flush_ns: 0,
            store: None,
            spool,
            stats: WorkerStats {
                id,
                ..WorkerStats::default()
            },
        }
    }

    /// Journals this worker's active calls in `store` (see [`crate::store::callstore`]).
    pub fn with_store(mut self, store: JournalWriter) -> MediaWorker {
        self.store = Some(store);
        self
    }

    /// Applies the spool thread's answers: the names recordings got, and the ones that could
    /// not be made or written.
    fn spool_replies(&mut self) {
        let replies: Vec<Reply> = self.spool.replies().collect();
        for r in replies {
            let (id, call) = match &r {
                Reply::Opened { id, .. } | Reply::Failed { id, .. } => (*id, id.call()),
            };
            let Some(c) = self.calls.get_mut(&call) else {
                continue;
            };
            match r {
                Reply::Opened { path, .. } if id.is_raw() => c.raw_path = path,
                Reply::Opened { path, .. } => {
                    c.wav_path = path;
                    c.wav_confirmed = true;
                    c.journal.dirty = true;
                }
                Reply::Failed { reason, error, .. } => {
                    if c.failure.is_none() {
                        self.stats.recordings_failed += 1;
                    }
                    c.failure.get_or_insert(error);
                    c.write_failed = true;
                    c.journal.dirty = true;
                    if let Some(w) = c.wav.as_mut().filter(|_| !id.is_raw()) {
                        w.fail(&mut self.spool, reason);
                        // Logged by the spool thread, which knows the error.
                        let _ = w.take_unreported();
                    }
                }
            }
        }
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Applies a control message; a finished call's CDR is pushed to `done`.
    pub fn control(&mut self, msg: Control, done: &mut Vec<Cdr>) {
        match msg {
            Control::Packet(owned) => {
                if !self.packet(&owned.record()) {
                    self.unknown();
                }
            }
            Control::Settings(new) => {
                // Where recordings live and the restore grace belong to the process run.
                let MediaConfig {
                    path_template,
                    flush_interval_ns,
                    media_timeout_ns,
                    max_call_secs,
                    ..
                } = *new;
                self.cfg.path_template = path_template;
                self.cfg.flush_interval_ns = flush_interval_ns;
                self.cfg.media_timeout_ns = media_timeout_ns;
                self.cfg.max_call_secs = max_call_secs;
            }
            Control::Start(setup) => {
                self.stats.calls_started += 1;
                let start_secs = setup.start_ns / 1_000_000_000;
                let wav_path = expand(
                    &self.cfg.recordings_dir,
                    &self.cfg.path_template,
                    &PathFields {
                        start_secs,
                        call_id: &setup.call_id,
                        from_user: setup.from.user.as_deref().unwrap_or(""),
                        to_user: setup.to.user.as_deref().unwrap_or(""),
                        uuid: &setup.uuid,
                    },
                );
                let raw_path = wav_path.with_extension("rtp.pcap");
                let start = setup.start_ns;
                let mode = setup.recording.action;
                self.calls.insert(
                    setup.call,
                    Box::new(ActiveCall {
                        setup: *setup,
                        ringing_ns: None,
                        answer_ns: None,
                        sides: [SideMedia::default(), SideMedia::default()],
                        dirs: [DirState::default(), DirState::default()],
                        wav: None,
                        wav_path,
                        wav_confirmed: false,
                        raw: None,
                        raw_path,
                        failure: None,
                        unsupported: BTreeSet::new(),
                        dtmf: Vec::new(),
                        dtmf_omitted: 0,
                        rejected: Vec::new(),
                        rejected_omitted: 0,
                        last_media_ns: start,
                        timed_out: false,
                        awaiting_since: None,
                        ssrc_dirs: SsrcDirs::default(),
                        contender: None,
                        journal: JournalState {
                            dirty: true,
                            ..JournalState::default()
                        },
                        ending: None,
                        write_failed: false,
                        gate: match mode {
                            RuleAction::Record => Default::default(),
                            RuleAction::Skip | RuleAction::OnDemand => {
                                super::recording::RecordingGate::stopped()
                            }
                        },
                        recording_events: Vec::new(),
                        no_file: mode != RuleAction::Record,
                    }),
                );
            }
            Control::Media {
                call,
                side,
                rtp,
                rtcp,
                codecs,
                direction,
                ts_ns,
            } => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                let s = &mut c.sides[side_index(side)];
                for old in s.rtp.iter().chain(s.rtcp.iter()) {
                    let k = media_key(*old);
                    if self.endpoints.get(&k).map(|e| e.0) == Some(call) {
                        self.endpoints.remove(&k);
                    }
                }
                for new in rtp.iter().chain(rtcp.iter()) {
                    let k = media_key(*new);
                    // Entries of `endpoints` all belong to live calls (ending ones moved out).
                    if let Some((prev, _)) = self.endpoints.insert(k, (call, side)) {
                        if prev != call {
                            self.shared.insert(k);
                        }
                    }
                }
                s.rtp = rtp;
                s.rtcp = rtcp;
                if !codecs.is_empty() {
                    s.codecs = codecs;
                }
                s.direction = Some(direction);
                // The SDP may map payload types differently now.
                for d in c.dirs.iter_mut() {
                    d.pt_cache = None;
                }
                // Leaving hold restarts the inactivity clock.
                c.last_media_ns = c.last_media_ns.max(ts_ns);
                c.journal.dirty = true;
            }
            Control::Ringing { call, ts_ns } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.ringing_ns.get_or_insert(ts_ns);
                    c.journal.dirty = true;
                }
            }
            Control::Answered { call, ts_ns } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.answer_ns.get_or_insert(ts_ns);
                    c.last_media_ns = c.last_media_ns.max(ts_ns);
                    c.journal.dirty = true;
                }
            }
            Control::Dialog { call, state } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.journal.dialog = Some(state);
                    c.journal.dirty = true;
                }
            }
            Control::Restore(r) => self.restore(*r, done),
            Control::Dtmf {
                call,
                side,
                digit,
                duration_ms,
                ts_ns,
            } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let d = Dtmf {
                        side: side_name(side_index(side)).into(),
                        digit,
                        at_ms: ts_ns.saturating_sub(c.setup.start_ns) / 1_000_000,
                        duration_ms,
                        source: "sip_info".into(),
                    };
                    push_dtmf(c, d, &mut self.stats);
                    c.journal.dirty = true;
                }
            }
            Control::Rejected { call, rejection } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let r = RejectedRequest {
                        src: rejection.src.to_string(),
                        dst: rejection.dst.to_string(),
                        at_ms: rejection.ts_ns.saturating_sub(c.setup.start_ns) / 1_000_000,
                        reason: rejection.reason.as_str().into(),
                        method: rejection.method,
                    };
                    let (max, total) = (
                        MAX_REJECTED_PER_CALL,
                        &mut self.stats.rejected_requests_omitted,
                    );
                    push_bounded(&mut c.rejected, r, max, &mut c.rejected_omitted, total);
                    c.journal.dirty = true;
                }
            }
            Control::Evict { call, ts_ns } => self.evict(call, ts_ns, done),
            Control::Recording {
                call,
                action,
                ts_ns,
            } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let at = ts_ns.saturating_sub(c.setup.start_ns);
                    if c.gate.apply(action, at) {
                        if action == RecordingAction::Start
                            && c.setup.recording.action == RuleAction::OnDemand
                        {
                            c.no_file = false;
                        }
                        let closing = c.gate.state() != super::recording::RecordingState::Recording;
                        if let Some(w) = c.wav.as_mut() {
                            if closing {
                                super::recording::blank_from(w, &mut self.spool, at);
                            } else {
                                c.gate.close_span(w, &mut self.spool);
                            }
                        }
                        c.recording_events.push(crate::store::cdr::RecordingEvent {
                            action: action.as_str().into(),
                            ts: rfc3339(ts_ns),
                            at_ms: at / 1_000_000,
                        });
                        c.journal.dirty = true;
                    }
                }
            }
            Control::End {
                call,
                reason,
                ts_ns,
            } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    if c.ending.is_none() {
                        c.ending = Some((reason, ts_ns));
                        c.journal.dirty = true;
                        self.ending_queue.push_back((ts_ns, call));
                        // Only this call's own endpoints move; no scan of every call's.
                        for k in c.endpoint_keys() {
                            if let Some(e) = self.endpoints.remove(&k) {
                                if e.0 == call {
                                    self.ending_endpoints.insert(k, e);
                                } else {
                                    self.endpoints.insert(k, e);
                                }
                            }
                        }
                    }
                }
                self.reap(ts_ns, done);
            }
        }
    }

    /// Finishes calls whose end is older than [`END_GRACE_NS`] at `now` (`u64::MAX`: all that
    /// have ended). Ends arrive in time order, so the due ones are at the front of the queue.
    pub fn reap(&mut self, now: u64, done: &mut Vec<Cdr>) {
        if self
            .ending_queue
            .front()
            .is_some_and(|&(at, _)| now >= at.saturating_add(END_GRACE_NS))
        {
            // What the spool found about the files of the calls finishing now.
            self.spool_replies();
        }
        while let Some(&(at, call)) = self.ending_queue.front() {
            if now < at.saturating_add(END_GRACE_NS) {
                break;
            }
            self.ending_queue.pop_front();
            let Some(mut c) = self.calls.remove(&call) else {
                continue;
            };
            self.forget_endpoints(call, &c);
            self.stats.calls_ended += 1;
            let (reason, at) = c.ending.take().unwrap_or_default();
            let cdr = self.finish(c, reason, at);
            done.push(cdr);
        }
    }

    /// Removes a call's endpoints from the lookup tables (the call is already out of `calls`).
    fn forget_endpoints(&mut self, call: CallRef, c: &ActiveCall) {
        for k in c.endpoint_keys() {
            for map in [&mut self.endpoints, &mut self.ending_endpoints] {
                if map.get(&k).is_some_and(|e| e.0 == call) {
                    map.remove(&k);
                }
            }
            if !self.endpoints.contains_key(&k) {
                self.shared.remove(&k);
            }
        }
    }

    /// Signalling evicted an unanswered call ([`Control::Evict`]). One with nothing to show
    /// (no packet, file, answer, digit, operator action or rejected request) goes without a
    /// CDR, as an INVITE shed at the door would; any other ends with reason `evicted`.
    fn evict(&mut self, call: CallRef, ts_ns: u64, done: &mut Vec<Cdr>) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let empty = c.ending.is_none()
            && c.answer_ns.is_none()
            && c.wav.is_none()
            && c.raw.is_none()
            && c.dirs.iter().all(|d| d.packets == 0 && d.rtcp_packets == 0)
            && c.dtmf.is_empty()
            && c.recording_events.is_empty()
            && c.rejected.is_empty();
        if !empty {
            let reason = calltap_sip::dialog::EndReason::Evicted.as_str();
            self.control(
                Control::End {
                    call,
                    reason,
                    ts_ns,
                },
                done,
            );
            return;
        }
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        self.forget_endpoints(call, &c);
        self.stats.calls_evicted += 1;
        // A file made ahead goes with `c` (dropping it removes the file); a journal written
        // for the call goes too, or a restart would bring the call back.
        if let Some(store) = self.store.as_ref().filter(|_| c.journal.saved_ns != 0) {
            if let Err(e) = store.remove(&c.setup.uuid) {
                log::warn!("active-call journal: {e}");
            }
        }
    }

    /// Prefetches the state of `rec`'s call that [`MediaWorker::packet`] will touch (with
    /// `audio`, where in the recording its audio will go, which needs that state read), and
    /// changes nothing: called on a group of records before they are handled, so the cache
    /// misses of the group overlap (see [`crate::pipeline::group`]). The call may still change
    /// before the record is handled (a control message in between): a wrong guess only costs
    /// the prefetches.
    #[inline]
    pub fn warm(&self, rec: &Record<'_>, audio: bool) {
        let Some((c, sender)) = endpoints(rec)
            .and_then(|(src, dst)| self.locate(media_key(src), media_key(dst)))
            .and_then(|(call, sender)| Some((self.calls.get(&call)?, sender.min(1))))
        else {
            return;
        };
        if !audio {
            c.warm(sender);
        } else if let (Some(w), Some(t)) = (c.wav.as_ref(), c.dirs[sender].timeline.as_ref()) {
            // Where the packet's audio will most likely go: 20 ms from the direction's end.
            w.prefetch(t.end_pos(), u64::from(w.rate() / 50));
        }
    }

    /// Counts a record whose endpoint no call of this worker has.
    pub fn unknown(&mut self) {
        self.stats.unknown_endpoint += 1;
    }

    /// Handles one RTP/RTCP record from this worker's ring. Returns `false` (and does nothing)
    /// when no call of this worker has the record's endpoint: the driver then applies pending
    /// control messages and retries, or counts it with [`MediaWorker::unknown`].
    pub fn packet(&mut self, rec: &Record<'_>) -> bool {
        let Some((src, dst)) = endpoints(rec) else {
            self.stats.records += 1;
            self.stats.bad_rtp += 1;
            return true;
        };
        match self.locate(media_key(src), media_key(dst)) {
            Some((call, sender)) => self.record(call, sender, rec),
            None => false,
        }
    }

    /// The call a packet from `src` to `dst` belongs to, and which side (0 caller, 1 callee)
    /// sent it. Audio sent *to* a side's endpoint comes from the other side; audio *from* it,
    /// from that side. Live calls first, then calls in their end grace period.
    fn locate(&self, src: MediaKey, dst: MediaKey) -> Option<(CallRef, usize)> {
        let by_src_first = !self.shared.is_empty() && self.shared.contains(&dst);
        let lookup = |map: &FastMap<MediaKey, (CallRef, Side)>| {
            let by_dst = || {
                map.get(&dst)
                    .map(|&(call, side)| (call, 1 - side_index(side)))
            };
            let by_src = || map.get(&src).map(|&(call, side)| (call, side_index(side)));
            if by_src_first {
                by_src().or_else(by_dst)
            } else {
                by_dst().or_else(by_src)
            }
        };
        lookup(&self.endpoints).or_else(|| lookup(&self.ending_endpoints))
    }

    /// Handles `rec`, from `sender`, for `call`; `false` (nothing done) when the call is gone.
    fn record(&mut self, call: CallRef, sender: usize, rec: &Record<'_>) -> bool {
        let Some(c) = self.calls.get_mut(&call) else {
            return false;
        };
        self.stats.records += 1;
        let now = rec.meta.ts_ns;
        let payload = rec.payload();
        if Class::from_u8(rec.meta.class) == Class::Rtcp {
            self.stats.rtcp += 1;
            if rtcp(c, sender, payload) {
                c.heard(now);
            }
            return true;
        }
        self.stats.rtp += 1;
        let Ok(rtp) = RtpPacket::parse(payload) else {
            self.stats.bad_rtp += 1;
            return true;
        };
        c.heard(now);
        let sender = c.direction_of(rtp.ssrc, sender, now);
        let (payload, clock) = match c.dirs[sender].pt_cache {
            Some((pt, payload, clock)) if pt == rtp.payload_type => (payload, clock),
            _ => c.payload_type_changed(sender, rtp.payload_type),
        };
        let d = &mut c.dirs[sender];
        d.last_ns = Some(now);
        d.packets += 1;
        d.bytes += rtp.payload.len() as u64;
        d.ssrc = Some(rtp.ssrc);
        let kind = match payload {
            Payload::Audio(codec) => codec,
            Payload::TelephoneEvent => {
                if let Some(digit) = d.dtmf.push(rtp.timestamp, rtp.payload) {
                    let at_ms = now.saturating_sub(c.setup.start_ns) / 1_000_000;
                    let d = Dtmf {
                        side: side_name(sender).into(),
                        digit: digit.digit,
                        at_ms,
                        duration_ms: Some(digit.duration / (clock.max(1) / 1000).max(1)),
                        source: "rfc4733".into(),
                    };
                    push_dtmf(c, d, &mut self.stats);
                }
                return true;
            }
            Payload::ComfortNoise => return true,
            Payload::Unsupported => {
                raw_rtp(c, rec, &mut self.spool);
                return true;
            }
        };
        d.kind = Some(kind);
        let jitter = d.jitter.get_or_insert_with(|| JitterEstimator::new(clock));
        jitter.update(rtp.timestamp, now);
        let Some(codec_rate) = d.decoder.as_ref().map(|dec| dec.rate()) else {
            return true;
        };
        let wav_rate = match &c.wav {
            Some(w) => w.rate(),
            None => codec_rate,
        };
        if d.timeline.is_none() || d.timeline_clock != clock {
            d.timeline = Some(StreamTimeline::new(clock, wav_rate));
            d.timeline_clock = clock;
        }
        let arrival =
            now.saturating_sub(c.setup.start_ns) as u128 * wav_rate as u128 / 1_000_000_000;
        let Some(timeline) = d.timeline.as_mut() else {
            return true;
        };
        let (gap_from, lost_before) = (timeline.end_pos(), timeline.lost());
        let placement = timeline.place(rtp.ssrc, rtp.sequence, rtp.timestamp, arrival as u64);
        let lost = timeline.lost().saturating_sub(lost_before);
        let max_secs = self.cfg.max_call_secs;
        if let (Placement::Write { pos }, true) = (placement, lost > 0) {
            // Packets went missing right before this one: the decoder's concealment (if it
            // has one) goes in the gap they left.
            let room = pos.saturating_sub(gap_from);
            if let Some(dec) = c.dirs[sender].decoder.as_mut() {
                if let Some(s) = self.pcm.conceal(dec.as_mut(), lost, room, wav_rate) {
                    let from = pos - s.len() as u64;
                    c.write_audio(&mut self.spool, max_secs, sender, from, s, wav_rate);
                }
            }
        }
        // Every packet goes through the decoder, placed or not: a stateful codec's state must
        // follow the stream.
        let Some(decoder) = c.dirs[sender].decoder.as_mut() else {
            return true;
        };
        let n = self.pcm.decode(decoder.as_mut(), rtp.payload);
        let Placement::Write { pos } = placement else {
            log::debug!(
                "{}: {} packet seq {} ts {} at {} not placed: {placement:?}",
                c.setup.call_id,
                side_name(sender),
                rtp.sequence,
                rtp.timestamp,
                arrival
            );
            return true;
        };
        let samples = self.pcm.fit(n, codec_rate, wav_rate);
        c.write_audio(&mut self.spool, max_secs, sender, pos, samples, wav_rate);
        true
    }

    /// Periodic work: flush recordings, report calls that went quiet.
    pub fn tick(&mut self, now: u64, timeouts: &mut Vec<MediaTimeout>) {
        if now.saturating_sub(self.last_flush_ns) >= self.cfg.flush_interval_ns {
            self.last_flush_ns = now;
            self.stats.flush_rounds += 1;
            self.spool_replies();
            for c in self.calls.values_mut() {
                if let Some(w) = c.wav.as_mut() {
                    w.flush(&mut self.spool);
                    if let Some(reason) = w.take_unreported() {
                        self.stats.recordings_failed += 1;
                        c.failure.get_or_insert_with(|| backlog_message(reason));
                        log::error!("{}: {}", c.wav_path.display(), backlog_message(reason));
                    }
                    self.stats.samples_dropped += std::mem::take(&mut w.dropped_samples);
                }
                if let Some(r) = c.raw.as_mut() {
                    r.flush(&mut self.spool);
                }
            }
            self.spool.publish();
            // After the WAV flush: the journal then describes what the files hold.
            self.journal(now);
        }
        for (call, c) in self.calls.iter_mut() {
            if let Some(since) = c.awaiting_since {
                if c.ending.is_none() && now.saturating_sub(since) > self.cfg.restore_grace_ns {
                    // Restored, and nothing since: the call ended while CallTap was down. It
                    // ends where the earlier run last knew it alive.
                    c.awaiting_since = None;
                    c.timed_out = true;
                    let at = c.journal.restart_gaps.last().map_or(since, |g| g.from_ns);
                    timeouts.push(MediaTimeout {
                        call: *call,
                        ts_ns: at,
                        restart: true,
                    });
                    continue;
                }
            }
            if !c.timed_out
                && c.ending.is_none()
                && !c.on_hold()
                && now.saturating_sub(c.last_media_ns) > self.cfg.media_timeout_ns
            {
                c.timed_out = true;
                timeouts.push(MediaTimeout {
                    call: *call,
                    ts_ns: now,
                    restart: false,
                });
            }
        }
    }

    /// Journals the calls whose state changed materially since their last write (durably), the
    /// calls whose counters moved every [`COUNTERS_NS`], and every call durably at least every
    /// [`DURABLE_NS`]. Runs on the flush tick (so at most once per flush interval), never per
    /// packet.
    fn journal(&mut self, now: u64) {
        let Some(store) = &self.store else {
            return;
        };
        let mut failed = None;
        for c in self.calls.values_mut() {
            let m = material(c);
            let packets = c
                .dirs
                .iter()
                .map(|d| d.packets + d.rtcp_packets)
                .sum::<u64>();
            let durable = c.journal.dirty
                || m != c.journal.material
                || now.saturating_sub(c.journal.durable_ns) >= DURABLE_NS;
            let counters = packets != c.journal.packets
                && now.saturating_sub(c.journal.saved_ns) >= COUNTERS_NS;
            if !durable && !counters {
                continue;
            }
            match store.save(journal_of(c, self.id, now), durable) {
                Ok(()) => {
                    self.stats.journal_writes += 1;
                    c.journal.dirty = false;
                    c.journal.material = m;
                    c.journal.saved_ns = now;
                    c.journal.packets = packets;
                    if durable {
                        c.journal.durable_ns = now;
                    }
                }
                Err(e) => {
                    self.stats.journal_errors += 1;
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed {
            // Recording goes on; only resuming these calls after a crash is at risk.
            log::error!("active-call journal: {e}");
        }
    }

    /// Takes over a call an earlier run was recording (see [`Control::Restore`]): the same
    /// uuid, dialog, endpoints and WAV, the timelines where they were, and the restart gap.
    fn restore(&mut self, r: Restored, done: &mut Vec<Cdr>) {
        let Restored {
            call,
            journal: j,
            gap,
            now_ns,
        } = r;
        // Normally announced by a Start already; else the path of a new call first (every field
        // initialised). Then the journaled state.
        if !self.calls.contains_key(&call) {
            let setup = CallSetup::journaled(&j, call);
            self.control(Control::Start(Box::new(setup)), done);
        }
        self.stats.calls_restored += 1;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.wav_path = j.wav_path;
        c.raw_path = j
            .raw_path
            .clone()
            .unwrap_or_else(|| c.wav_path.with_extension("rtp.pcap"));
        c.ringing_ns = j.ringing_ns;
        c.answer_ns = j.answer_ns;
        for (side, sj) in c.sides.iter_mut().zip(j.sides) {
            *side = SideMedia {
                rtp: sj.rtp,
                rtcp: sj.rtcp,
                codecs: sj.codecs,
                direction: sj.direction,
            };
        }
        for (d, dj) in c.dirs.iter_mut().zip(j.dirs) {
            d.ssrc = dj.ssrc;
            d.timeline = dj.timeline.map(|mut t| {
                // Same anchor: audio after the outage lands where its timestamps say.
                t.resume();
                t
            });
            d.timeline_clock = dj.timeline_clock;
            d.last_ns = dj.last_ns;
            d.jitter = dj.jitter;
            d.packets = dj.packets;
            d.bytes = dj.bytes;
            d.codec = dj.codec;
            d.kind = dj.kind;
            d.rtcp_packets = dj.rtcp_packets;
            d.rtcp_fraction_lost = dj.rtcp_fraction_lost;
            d.rtcp_jitter_ms = dj.rtcp_jitter_ms;
        }
        c.dtmf = j.dtmf;
        c.dtmf_omitted = j.dtmf_omitted;
        c.rejected = j.rejected_requests;
        c.rejected_omitted = j.rejected_requests_omitted;
        // Operator control before the crash, replayed in order into the fresh gate (the call's
        // rule decision set its initial state in Start).
        for ev in &j.recording_events {
            if let Some(action) = RecordingAction::parse(&ev.action) {
                if c.gate.apply(action, ev.at_ms.saturating_mul(1_000_000))
                    && action == RecordingAction::Start
                    && c.setup.recording.action == RuleAction::OnDemand
                {
                    c.no_file = false;
                }
            }
        }
        c.recording_events = j.recording_events;
        c.unsupported = j.unsupported.into_iter().collect();
        c.ssrc_dirs = SsrcDirs::from_pairs(&j.ssrc_dirs);
        c.write_failed = j.write_failed;
        c.last_media_ns = now_ns;
        c.journal.dialog = j.dialog.map(Box::new);
        c.journal.restart_gaps = j.restart_gaps;
        c.journal.restart_gaps.extend(gap);
        c.journal.raw_exists = j.raw_pcap;
        c.journal.dirty = true;
        if let Some(w) = &j.wav {
            // Checked here, once per restored call before capture starts: the worker must
            // know what the file holds before it writes into it.
            match wav::probe(&w.path, w.rate) {
                Ok(probe) => {
                    c.wav = Some(WavWindow::reopen(
                        &mut self.spool,
                        RecId::wav(call),
                        Tag::new(&c.setup.uuid, false),
                        w.path.clone(),
                        w.rate,
                        self.cfg.max_call_secs,
                        probe,
                        w.frames,
                    ));
                    c.wav_path = w.path.clone();
                    c.wav_confirmed = true;
                }
                Err(e) => {
                    // Keep what is there for a person to look at; the call goes on in a new
                    // file (positions are absolute, so its audio still lines up with the
                    // call).
                    self.stats.write_errors += 1;
                    self.spool.counters().fail(FailReason::Restore);
                    let aside = w.path.with_extension("wav.unreadable");
                    let moved = w.path.exists() && std::fs::rename(&w.path, &aside).is_ok();
                    log::error!(
                        "{}: cannot continue the recording ({e}){}",
                        w.path.display(),
                        if moved {
                            format!("; moved to {}", aside.display())
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        match j.ending {
            // Signalling had ended it before the crash: it only needs its CDR.
            Some((reason, at)) => {
                c.ending = Some((reason, at));
                self.ending_queue.push_back((at, call));
            }
            None => {
                for (side, s) in [Side::Caller, Side::Callee].into_iter().zip(&c.sides) {
                    for a in s.rtp.iter().chain(s.rtcp.iter()) {
                        let k = media_key(*a);
                        if let Some((prev, _)) = self.endpoints.insert(k, (call, side)) {
                            if prev != call {
                                self.shared.insert(k);
                            }
                        }
                    }
                }
                // An answered call that is not on hold sends audio all the time: silence after
                // the restart means it ended while CallTap was down. Held and unanswered calls
                // end by their own timers.
                if c.answer_ns.is_some() && !c.on_hold() {
                    c.awaiting_since = Some(now_ns);
                }
            }
        }
    }

    fn finish(&mut self, mut c: Box<ActiveCall>, reason: String, end_ns: u64) -> Cdr {
        let start = c.setup.start_ns;
        let end_ns = end_ns.max(start);
        let any_audio = c.dirs.iter().any(|d| d.packets > 0);
        // Answered calls always get a recording of the call's full length, silence where no
        // audio came; unanswered attempts only when early media arrived.
        // A recording that failed during the call is not replaced by a silent file at its end:
        // the CDR says there is no recording rather than offering silence as the call's audio.
        if c.wav.is_none() && !c.no_file && !c.write_failed && (c.answer_ns.is_some() || any_audio)
        {
            c.open_recording(&mut self.spool, 8000, self.cfg.max_call_secs);
        }
        let raw_closing = c
            .raw
            .take()
            .map(|r| (c.raw_path.clone(), r.close(&mut self.spool)));
        let recording = match c.wav.take() {
            // The file could never be made: no recording, and the CDR says why.
            Some(w) if w.failure().is_some_and(|f| f == FailReason::Create) => None,
            None => None,
            Some(mut w) => {
                let frames = (end_ns - start) as u128 * w.rate() as u128 / 1_000_000_000;
                let frames = c.gate.final_frames(w.rate(), frames as u64);
                w.extend_to(frames);
                let (rate, frames) = (w.rate(), w.frames());
                if let Some(reason) = w.take_unreported() {
                    self.stats.recordings_failed += 1;
                    c.failure.get_or_insert_with(|| backlog_message(reason));
                }
                // Closed by the spool thread, sealed (fsync, sha256) by whoever takes the
                // CDR: see `Recording`.
                let closing = w.close(&mut self.spool);
                let (raw_rtp_pcap, raw_closing) = match &raw_closing {
                    Some((path, closing)) => (Some(path.clone()), closing.clone()),
                    None => (None, Closing::default()),
                };
                Some(Recording {
                    duration_ms: frames * 1000 / u64::from(rate.max(1)),
                    path: c.wav_path.clone(),
                    bytes: DATA_OFFSET + frames * 4,
                    // Filled in by `Recording::seal` (the CDR thread).
                    sha256: String::new(),
                    sample_rate: rate,
                    channels: 2,
                    raw_rtp_pcap,
                    error: c.failure.clone(),
                    closing: [closing, raw_closing],
                })
            }
        };
        let recording_missing = recording.is_none() && c.failure.is_some();
        let mut codecs: Vec<String> = Vec::new();
        for d in &c.dirs {
            if let Some(name) = &d.codec {
                if !codecs.contains(name) {
                    codecs.push(name.clone());
                }
            }
        }
        for name in &c.unsupported {
            if !codecs.contains(name) {
                codecs.push(name.clone());
            }
        }
        let streams: Vec<StreamQuality> = c
            .dirs
            .iter()
            .enumerate()
            .map(|(i, d)| quality(i, d))
            .collect();
        let missing_directions = c
            .dirs
            .iter()
            .enumerate()
            .filter(|(_, d)| d.packets == 0)
            .map(|(i, _)| side_name(i).to_owned())
            .collect();
        let s = &c.setup;
        Cdr {
            uuid: s.uuid.clone(),
            call_id: s.call_id.clone(),
            interaction_id: s.interaction.clone(),
            from: party(&s.from),
            to: party(&s.to),
            src_ip: s.caller_ip.to_string(),
            dst_ip: s.callee_ip.to_string(),
            start: rfc3339(start),
            answer: c.answer_ns.map(rfc3339),
            end: rfc3339(end_ns),
            start_ns: start,
            answer_ns: c.answer_ns,
            end_ns,
            duration_ms: (end_ns - start) / 1_000_000,
            talk_ms: c
                .answer_ns
                .map_or(0, |a| end_ns.saturating_sub(a) / 1_000_000),
            end_reason: reason,
            codecs,
            unsupported_codecs: c.unsupported.iter().cloned().collect(),
            missing_directions,
            packets: PacketCounts {
                caller: c.dirs[0].packets,
                callee: c.dirs[1].packets,
                rtcp: c.dirs[0].rtcp_packets + c.dirs[1].rtcp_packets,
            },
            streams,
            restart_gaps: std::mem::take(&mut c.journal.restart_gaps),
            dtmf: std::mem::take(&mut c.dtmf),
            dtmf_omitted: c.dtmf_omitted,
            rejected_requests: std::mem::take(&mut c.rejected),
            rejected_requests_omitted: c.rejected_omitted,
            recording,
            worker: self.id,
            recording_events: std::mem::take(&mut c.recording_events),
            recording_mode: Some(s.recording.action.as_str().into()),
            rule_id: s.recording.rule_id,
            recording_failed: if recording_missing {
                c.failure.clone()
            } else {
                None
            },
        }
    }
}

/// The journal record of a call (see [`crate::store::callstore::CallJournal`]).
fn journal_of(c: &ActiveCall, worker: u32, now: u64) -> CallJournal {
    let s = &c.setup;
    CallJournal {
        version: VERSION,
        saved_ns: now,
        uuid: s.uuid.clone(),
        call_id: s.call_id.clone(),
        interaction: s.interaction.clone(),
        from: s.from.clone(),
        to: s.to.clone(),
        caller_ip: s.caller_ip,
        callee_ip: s.callee_ip,
        start_ns: s.start_ns,
        worker,
        dialog: c.journal.dialog.as_deref().cloned(),
        ringing_ns: c.ringing_ns,
        answer_ns: c.answer_ns,
        sides: [0, 1].map(|i| {
            let m = &c.sides[i];
            SideJournal {
                rtp: m.rtp,
                rtcp: m.rtcp,
                codecs: m.codecs.clone(),
                direction: m.direction,
            }
        }),
        dirs: [0, 1].map(|i| {
            let d = &c.dirs[i];
            DirJournal {
                ssrc: d.ssrc,
                timeline: d.timeline.clone(),
                timeline_clock: d.timeline_clock,
                last_ns: d.last_ns,
                jitter: d.jitter.clone(),
                packets: d.packets,
                bytes: d.bytes,
                codec: d.codec.clone(),
                kind: d.kind,
                rtcp_packets: d.rtcp_packets,
                rtcp_fraction_lost: d.rtcp_fraction_lost,
                rtcp_jitter_ms: d.rtcp_jitter_ms,
            }
        }),
        dtmf: c.dtmf.clone(),
        dtmf_omitted: c.dtmf_omitted,
        rejected_requests: c.rejected.clone(),
        rejected_requests_omitted: c.rejected_omitted,
        wav_path: c.wav_path.clone(),
        // Only a file the spool thread confirmed: a restart must never continue another.
        wav: c
            .wav
            .as_ref()
            .filter(|_| c.wav_confirmed)
            .map(|w| WavJournal {
                path: c.wav_path.clone(),
                rate: w.rate(),
                data_offset: DATA_OFFSET,
                frames: w.frames(),
            }),
        raw_pcap: c.journal.raw_exists || c.raw.is_some(),
        raw_path: Some(c.raw_path.clone()),
        unsupported: c.unsupported.iter().cloned().collect(),
        ssrc_dirs: c.ssrc_dirs.pairs(),
        restart_gaps: c.journal.restart_gaps.clone(),
        recording: s.recording,
        recording_events: c.recording_events.clone(),
        ending: c.ending.clone(),
        write_failed: c.write_failed,
        last_media_ns: c.last_media_ns,
    }
}

/// Whether `payload` held RTCP at all: a packet that does not parse is not counted, and says
/// nothing about the call being alive.
fn rtcp(c: &mut ActiveCall, sender: usize, payload: &[u8]) -> bool {
    // A report from `sender` describes the audio it receives: the other direction's.
    let about = 1 - sender;
    let mut parsed = false;
    for pkt in parse_compound(payload).flatten() {
        parsed = true;
        let blocks = match &pkt {
            RtcpPacket::SenderReport { reports, .. } => reports,
            RtcpPacket::ReceiverReport { reports, .. } => reports,
            _ => continue,
        };
        if let Some(b) = blocks.iter().next() {
            let d = &mut c.dirs[about];
            d.rtcp_fraction_lost = Some(b.fraction_lost as f64 / 256.0);
            let clock = if d.timeline_clock == 0 {
                8000
            } else {
                d.timeline_clock
            };
            d.rtcp_jitter_ms = Some(b.jitter as f64 * 1000.0 / clock as f64);
        }
    }
    if parsed {
        c.dirs[sender].rtcp_packets += 1;
    }
    parsed
}

/// Keeps RTP CallTap cannot decode in a pcap beside the recording, so nothing is lost.
fn raw_rtp(c: &mut ActiveCall, rec: &Record<'_>, spool: &mut Spool) {
    if c.no_file {
        return;
    }
    let raw = c.raw.get_or_insert_with(|| {
        // A restored call goes on in the pcap the earlier run started.
        let append = std::mem::take(&mut c.journal.raw_exists);
        c.journal.dirty = true;
        RawPcap::open(
            spool,
            RecId::raw(c.setup.call),
            Tag::new(&c.setup.uuid, true),
            c.raw_path.clone(),
            append,
        )
    });
    raw.push(spool, rec.meta.ts_ns, rec.meta.wire_len, rec.frame);
}

/// What the log and the CDR say of a recording that lost audio to a full spool.
fn backlog_message(reason: FailReason) -> String {
    match reason {
        FailReason::Backlog => {
            "audio dropped: the disk could not keep up (spool buffers or queue full)".into()
        }
        other => format!("recording failed ({})", other.as_str()),
    }
}

fn quality(i: usize, d: &DirState) -> StreamQuality {
    let (lost, duplicates, late, expected) = match &d.timeline {
        Some(t) => {
            let s = t.stats();
            (t.lost(), s.duplicates, s.too_old, t.expected())
        }
        None => (0, 0, 0, 0),
    };
    let jitter_ms = d.jitter.as_ref().map_or(0.0, |j| j.jitter_ms());
    let mos = d.kind.filter(|_| d.packets > 0).map(|kind| {
        let loss_pct = if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        };
        let r = r_factor(kind, loss_pct, jitter_ms, 0.0);
        (mos_from_r(r) * 100.0).round() / 100.0
    });
    StreamQuality {
        direction: side_name(i).into(),
        ssrc: d.ssrc.map(|s| format!("0x{s:08x}")),
        codec: d.codec.clone(),
        packets: d.packets,
        bytes: d.bytes,
        lost,
        duplicates,
        late,
        jitter_ms: (jitter_ms * 100.0).round() / 100.0,
        mos,
        rtcp_packets: d.rtcp_packets,
        rtcp_fraction_lost: d.rtcp_fraction_lost,
        rtcp_jitter_ms: d.rtcp_jitter_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::{SsrcDirs, MAX_SSRCS};

    #[test]
    fn ssrc_directions_are_kept_moved_and_bounded() {
        let mut s = SsrcDirs::default();
        assert_eq!(s.get(7), None);
        s.push(7, 0);
        s.push(9, 1);
        assert_eq!((s.get(7), s.get(9), s.get(8)), (Some(0), Some(1), None));
        s.set(7, 1);
        s.set(8, 0);
        assert_eq!(
            (s.get(7), s.get(8)),
            (Some(1), None),
            "only known SSRCs move"
        );
        for k in 0..20 {
            s.push(100 + k, (k % 2) as usize);
        }
        assert_eq!(usize::from(s.len), MAX_SSRCS, "bounded");
        assert_eq!(s.get(100 + MAX_SSRCS as u32 - 3), Some(1));
        assert_eq!(s.get(100 + MAX_SSRCS as u32 - 2), None, "past the bound");
        // The journal's form and back.
        let pairs = s.pairs();
        assert_eq!(pairs[..2], [(7, 1), (9, 1)]);
        assert_eq!(SsrcDirs::from_pairs(&pairs).pairs(), pairs);
    }
}
