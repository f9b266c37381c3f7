//! The worker and its packet path: which call a record belongs to, RTP to placed audio, RTCP
//! to quality figures, and the periodic flush.

use calltap_common::{Class, MediaKey};
use calltap_media::{
    codec::Payload,
    quality::JitterEstimator,
    rtcp::{parse_compound, RtcpPacket},
    rtp::RtpPacket,
    stream::{Placement, StreamTimeline},
};
use calltap_sip::dialog::{CallRef, Side};

use super::{
    call::{push_dtmf, side_name, ActiveCall},
    cdr::backlog_message,
    decode::Pcm,
    outputs::{AudioOutput, OutputCtx, Placed},
    MediaConfig, WorkerStats,
};
use crate::{
    capture::Record,
    pipeline::{media_key, MediaTimeout},
    store::{
        callstore::JournalWriter,
        cdr::Dtmf,
        spool::{window::RawPcap, RecId, Spool, Tag},
    },
};

/// The worker's per-packet maps: foldhash, seeded per process (keys come from SDP, i.e. from
/// the network, so the seed must not be guessable), at a fraction of SipHash's cost.
pub(super) type FastMap<K, V> = foldhash::HashMap<K, V>;

pub struct MediaWorker {
    pub id: u32,
    pub(super) cfg: MediaConfig,
    pub(super) calls: FastMap<CallRef, Box<ActiveCall>>,
    pub(super) endpoints: FastMap<MediaKey, (CallRef, Side)>,
    /// Endpoints of calls in their end grace period: consulted only when no live call claims a
    /// packet, so a new call reusing an endpoint at once gets its own packets.
    pub(super) ending_endpoints: FastMap<MediaKey, (CallRef, Side)>,
    /// Endpoints several live calls of this worker use: packets sent to them are attributed by
    /// their source endpoint first.
    pub(super) shared: foldhash::HashSet<MediaKey>,
    /// Calls signalling has ended, in end order: finished once their grace period is over.
    pub(super) ending_queue: std::collections::VecDeque<(u64, CallRef)>,
    pub(super) pcm: Pcm,
    pub(super) last_flush_ns: u64,
    /// The active-call journal (`calltap run`; replay has none).
    pub(super) store: Option<JournalWriter>,
    /// Where the recordings' audio goes to disk.
    pub(super) spool: Spool,
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
}

impl MediaWorker {
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }
}

impl MediaWorker {
    /// Prefetches the state of `rec`'s call that [`MediaWorker::packet`] will touch (with
    /// `audio`, where in the recording its audio will go, which needs that state read), and
    /// changes nothing: called on a group of records before they are handled, so the cache
    /// misses of the group overlap (see [`crate::pipeline::group`]). The call may still change
    /// before the record is handled (a control message in between): a wrong guess only costs
    /// the prefetches.
    #[inline]
    pub fn warm(&self, rec: &Record<'_>, audio: bool) {
        let Some((c, sender)) = rec
            .endpoints()
            .and_then(|(src, dst)| self.locate(media_key(src), media_key(dst)))
            .and_then(|(call, sender)| Some((self.calls.get(&call)?, sender.min(1))))
        else {
            return;
        };
        if !audio {
            c.warm(sender);
        } else if let (Some(rate), Some(t)) =
            (c.outputs.wav.rate(), c.dirs[sender].timeline.as_ref())
        {
            // Where the packet's audio will most likely go: 20 ms from the direction's end.
            c.outputs.wav.prefetch(t.end_pos(), u64::from(rate / 50));
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
        let Some((src, dst)) = rec.endpoints() else {
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
    pub(super) fn locate(&self, src: MediaKey, dst: MediaKey) -> Option<(CallRef, usize)> {
        let by_src_first = !self.shared.is_empty() && self.shared.contains(&dst);
        let lookup = |map: &FastMap<MediaKey, (CallRef, Side)>| {
            let by_dst = || map.get(&dst).map(|&(call, side)| (call, 1 - side.index()));
            let by_src = || map.get(&src).map(|&(call, side)| (call, side.index()));
            if by_src_first {
                by_src().or_else(by_dst)
            } else {
                by_dst().or_else(by_src)
            }
        };
        lookup(&self.endpoints).or_else(|| lookup(&self.ending_endpoints))
    }

    /// Handles `rec`, from `sender`, for `call`; `false` (nothing done) when the call is gone.
    pub(super) fn record(&mut self, call: CallRef, sender: usize, rec: &Record<'_>) -> bool {
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
        let wav_rate = c.outputs.wav.rate().unwrap_or(codec_rate);
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
                if let Some(samples) = self.pcm.conceal(dec.as_mut(), lost, room, wav_rate) {
                    let at = pos - samples.len() as u64;
                    let audio = Placed::new(sender, at, wav_rate, samples);
                    c.write_audio(&mut self.spool, max_secs, audio);
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
        let audio = Placed::new(sender, pos, wav_rate, samples);
        c.write_audio(&mut self.spool, max_secs, audio);
        true
    }

    /// Periodic work: flush recordings, report calls that went quiet.
    pub fn tick(&mut self, now: u64, timeouts: &mut Vec<MediaTimeout>) {
        if now.saturating_sub(self.last_flush_ns) >= self.cfg.flush_interval_ns {
            self.last_flush_ns = now;
            self.stats.flush_rounds += 1;
            self.spool_replies();
            for c in self.calls.values_mut() {
                let wav = &mut c.outputs.wav;
                wav.flush(&mut OutputCtx {
                    spool: &mut self.spool,
                });
                if let Some(reason) = wav.take_unreported() {
                    self.stats.recordings_failed += 1;
                    c.failure.get_or_insert_with(|| backlog_message(reason));
                    log::error!("{}: {}", c.wav_path.display(), backlog_message(reason));
                }
                self.stats.samples_dropped += wav.take_dropped();
                let at = now.saturating_sub(c.setup.start_ns);
                self.stats.attached_samples_dropped +=
                    c.outputs
                        .flush_attached(&mut self.spool, at, &c.setup.call_id);
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
}

/// Whether `payload` held RTCP at all: a packet that does not parse is not counted, and says
/// nothing about the call being alive.
pub(super) fn rtcp(c: &mut ActiveCall, sender: usize, payload: &[u8]) -> bool {
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
pub(super) fn raw_rtp(c: &mut ActiveCall, rec: &Record<'_>, spool: &mut Spool) {
    if c.outputs.wav.no_file() {
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
