//! One call of a media worker: its state per direction (laid out for the packet path), its
//! media endpoints, and what happens to a placed packet's audio.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf};

use calltap_common::MediaKey;
use calltap_media::{
    codec::{dtmf::DtmfDetector, CodecId, Decoder, Payload},
    quality::JitterEstimator,
    stream::StreamTimeline,
};
use calltap_sip::sdp::{Direction, RtpMap};

use super::{
    decode::payload_of,
    journal::JournalState,
    outputs::{CallOutputs, Placed},
    ssrc::SsrcDirs,
    WorkerStats, MAX_DTMF_PER_CALL,
};
use crate::{
    pipeline::{media_key, CallSetup},
    store::{
        cdr::{Dtmf, RejectedRequest},
        spool::{window::RawPcap, RecId, Spool, Tag, WavWindow},
    },
};

/// Adds a digit to the call's CDR, within [`MAX_DTMF_PER_CALL`].
pub(super) fn push_dtmf(c: &mut ActiveCall, d: Dtmf, stats: &mut WorkerStats) {
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
pub(super) fn push_bounded<T>(
    list: &mut Vec<T>,
    item: T,
    max: usize,
    omitted: &mut u64,
    total: &mut u64,
) {
    if list.len() < max {
        list.push(item);
    } else {
        *omitted += 1;
        *total += 1;
    }
}

#[derive(Default)]
pub(super) struct SideMedia {
    pub(super) rtp: Option<SocketAddr>,
    pub(super) rtcp: Option<SocketAddr>,
    pub(super) codecs: Vec<RtpMap>,
    pub(super) direction: Option<Direction>,
}

/// State of one audio direction (0 = from the caller, 1 = from the callee).
///
/// In declaration order (`repr(C)`): the fields every RTP packet touches come first, so they
/// share a few cache lines; with thousands of calls a call's state is never in cache when its
/// next packet comes, and each line touched is a miss (these were most of a worker's time).
#[derive(Default)]
#[repr(C)]
pub(super) struct DirState {
    /// The last payload type's payload and RTP clock, so the per-packet path looks the SDP up
    /// (and builds a codec name) only when the payload type or the SDP changes.
    pub(super) pt_cache: Option<(u8, Payload, u32)>,
    /// The codec of the latest audio, and its decoder (built when the codec changes; its state
    /// carries over DTMF and comfort noise). A stateless decoder (G.711) is a pointer to its
    /// code and nothing on the heap.
    pub(super) kind: Option<CodecId>,
    pub(super) decoder: Option<Box<dyn Decoder>>,
    pub(super) timeline_clock: u32,
    pub(super) ssrc: Option<u32>,
    /// Capture time of this direction's last RTP packet.
    pub(super) last_ns: Option<u64>,
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) jitter: Option<JitterEstimator>,
    pub(super) timeline: Option<StreamTimeline>,
    // Cold: per codec or SDP change, per DTMF or RTCP packet, at the CDR.
    pub(super) codec: Option<String>,
    pub(super) dtmf: DtmfDetector,
    pub(super) rtcp_packets: u64,
    pub(super) rtcp_fraction_lost: Option<f64>,
    pub(super) rtcp_jitter_ms: Option<f64>,
}

/// One call of a worker. Declaration order is layout order (`repr(C)`): what every RTP packet
/// touches first (see [`DirState`]), the rest after.
#[repr(C)]
pub(super) struct ActiveCall {
    pub(super) last_media_ns: u64,
    pub(super) timed_out: bool,
    /// Restored and not yet heard from since (time of the restore); see [`JournalState`].
    pub(super) awaiting_since: Option<u64>,
    /// An SSRC moved to the other direction, not yet confirmed: (ssrc, original direction,
    /// first seen).
    pub(super) contender: Option<(u32, usize, u64)>,
    /// Which direction each SSRC seen so far belongs to (bounded; see `direction_of`).
    pub(super) ssrc_dirs: SsrcDirs,
    /// Where the call's placed audio goes: the recording first.
    pub(super) outputs: CallOutputs,
    pub(super) dirs: [DirState; 2],
    // Cold: per control message, flush tick or call end (`setup.start_ns` is read per packet,
    // but where it lies in `setup` made no difference to the misses measured).
    pub(super) setup: CallSetup,
    pub(super) ringing_ns: Option<u64>,
    pub(super) answer_ns: Option<u64>,
    pub(super) sides: [SideMedia; 2],
    pub(super) wav_path: PathBuf,
    /// The spool thread confirmed `wav_path` as the file's name (a taken name gets a suffix):
    /// only then is it journaled.
    pub(super) wav_confirmed: bool,
    pub(super) raw: Option<RawPcap>,
    pub(super) raw_path: PathBuf,
    /// Why the recording failed, for the CDR.
    pub(super) failure: Option<String>,
    pub(super) unsupported: BTreeSet<String>,
    pub(super) dtmf: Vec<Dtmf>,
    pub(super) dtmf_omitted: u64,
    /// In-dialog requests signalling did not act on, for the CDR.
    pub(super) rejected: Vec<RejectedRequest>,
    pub(super) rejected_omitted: u64,
    /// Active-call journal bookkeeping (see [`crate::store::callstore`]).
    pub(super) journal: JournalState,
    /// Signalling ended the call (reason, time); it is finished after [`END_GRACE_NS`].
    pub(super) ending: Option<(String, u64)>,
    pub(super) recording_events: Vec<crate::store::cdr::RecordingEvent>,
}

impl ActiveCall {
    /// Prefetches the lines a packet from `sender` touches: the fields before `dirs`, the
    /// sender's [`DirState`] up to its cold part, and the call's start time.
    #[inline]
    pub(super) fn warm(&self, sender: usize) {
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

    /// Hands placed audio to the call's outputs, making the recording at the audio's rate
    /// first if it may be made and is not yet.
    #[inline]
    pub(super) fn write_audio(&mut self, spool: &mut Spool, max_secs: u64, audio: Placed<'_>) {
        if self.outputs.wav.wants_file() {
            self.open_recording(spool, audio.rate, max_secs);
        }
        self.outputs.write(spool, audio);
    }

    /// The slow path of a packet whose payload type is not the direction's last: what it
    /// carries (from the SDP), the codec's name for the CDR, and a decoder when the codec
    /// changed. Returns the payload and its RTP clock.
    #[cold]
    pub(super) fn payload_type_changed(&mut self, sender: usize, pt: u8) -> (Payload, u32) {
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
    pub(super) fn open_recording(&mut self, spool: &mut Spool, rate: u32, max_secs: u64) {
        self.outputs.wav.open(WavWindow::create(
            spool,
            RecId::wav(self.setup.call),
            Tag::new(&self.setup.uuid, false),
            self.wav_path.clone(),
            rate,
            max_secs,
        ));
    }
}

/// A hint to bring the line at `p` into the cache; never faults.
#[inline(always)]
pub(super) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl ActiveCall {
    /// RTP or RTCP of this call arrived at `now`: it is alive. Only packets that parse as such
    /// say so; anything else sent to its endpoints (an SDP can name any endpoint) must not
    /// keep a call open past its media timeout.
    pub(super) fn heard(&mut self, now: u64) {
        self.last_media_ns = self.last_media_ns.max(now);
        self.timed_out = false;
        self.awaiting_since = None;
    }

    /// The media keys this call's endpoints occupy in the worker's maps.
    pub(super) fn endpoint_keys(&self) -> impl Iterator<Item = MediaKey> + '_ {
        self.sides
            .iter()
            .flat_map(|s| s.rtp.iter().chain(s.rtcp.iter()))
            .map(|a| media_key(*a))
    }

    pub(super) fn on_hold(&self) -> bool {
        self.sides.iter().any(|s| {
            matches!(
                s.direction,
                Some(Direction::SendOnly | Direction::RecvOnly | Direction::Inactive)
            ) || (s.direction.is_some() && s.rtp.is_none())
        })
    }
}

pub(super) fn side_name(i: usize) -> &'static str {
    if i == 0 {
        "caller"
    } else {
        "callee"
    }
}
