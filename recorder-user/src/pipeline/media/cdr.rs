//! A finished call's CDR: its recording, streams and quality.

use calltap_media::quality::{mos_from_r, r_factor};
use calltap_sip::NameAddr;

use super::{
    call::{side_name, ActiveCall, DirState},
    outputs::Finished,
    worker::MediaWorker,
};
use crate::store::{
    cdr::{rfc3339, Cdr, PacketCounts, Party, Recording, StreamQuality},
    spool::{Closing, FailReason},
    wav::DATA_OFFSET,
};

impl MediaWorker {
    /// Closes the outputs attached to `c` (it ended, or was evicted, at `end_ns`).
    pub(super) fn close_attached(&mut self, c: &mut ActiveCall, end_ns: u64) {
        let at = end_ns.saturating_sub(c.setup.start_ns);
        self.stats.attached_samples_dropped +=
            c.outputs
                .close_attached(&mut self.spool, at, &c.setup.call_id);
    }

    pub(super) fn finish(&mut self, mut c: Box<ActiveCall>, reason: String, end_ns: u64) -> Cdr {
        let start = c.setup.start_ns;
        let end_ns = end_ns.max(start);
        let any_audio = c.dirs.iter().any(|d| d.packets > 0);
        // Answered calls always get a recording of the call's full length, silence where no
        // audio came; unanswered attempts only when early media arrived.
        // A recording that failed during the call is not replaced by a silent file at its end:
        // the CDR says there is no recording rather than offering silence as the call's audio.
        if c.outputs.wav.wants_file() && (c.answer_ns.is_some() || any_audio) {
            c.open_recording(&mut self.spool, 8000, self.cfg.max_call_secs);
        }
        let raw_closing = c
            .raw
            .take()
            .map(|r| (c.raw_path.clone(), r.close(&mut self.spool)));
        self.close_attached(&mut c, end_ns);
        // `None`: the file could never be made; the CDR says why.
        let recording = match c.outputs.wav.finish(&mut self.spool, end_ns - start) {
            None => None,
            Some(f) => {
                let Finished {
                    rate,
                    frames,
                    closing,
                    unreported,
                } = f;
                if let Some(reason) = unreported {
                    self.stats.recordings_failed += 1;
                    c.failure.get_or_insert_with(|| backlog_message(reason));
                }
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

pub(super) fn party(n: &NameAddr) -> Party {
    Party {
        user: n.user.clone(),
        display: n.display.clone(),
        host: n.host.clone().unwrap_or_default(),
        uri: n.uri.clone(),
    }
}

/// What the log and the CDR say of a recording that lost audio to a full spool.
pub(super) fn backlog_message(reason: FailReason) -> String {
    match reason {
        FailReason::Backlog => {
            "audio dropped: the disk could not keep up (spool buffers or queue full)".into()
        }
        other => format!("recording failed ({})", other.as_str()),
    }
}

pub(super) fn quality(i: usize, d: &DirState) -> StreamQuality {
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
