//! Call detail records: what happened on a call, one JSON object per call.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::spool::Closing;

/// A SIP party as the CDR shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Party {
    pub user: Option<String>,
    pub display: Option<String>,
    pub host: String,
    pub uri: String,
}

/// Quality of one audio direction.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StreamQuality {
    /// "caller" (caller's audio, WAV channel 0) or "callee" (channel 1).
    pub direction: String,
    pub ssrc: Option<String>,
    pub codec: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub late: u64,
    pub jitter_ms: f64,
    pub mos: Option<f64>,
    pub rtcp_packets: u64,
    /// Loss the far end reported in RTCP receiver reports (fraction, 0..1), if any.
    pub rtcp_fraction_lost: Option<f64>,
    pub rtcp_jitter_ms: Option<f64>,
}

/// A DTMF digit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Dtmf {
    pub side: String,
    pub digit: char,
    /// Milliseconds from call start.
    pub at_ms: u64,
    pub duration_ms: Option<u32>,
    /// "rfc4733" (in RTP) or "sip_info".
    pub source: String,
}

/// An in-dialog request CallTap did not act on: it would have ended the call or changed its
/// media, but it came from, or went to, an address that is not on the dialog's signalling path
/// (a spoofed BYE only the mirror port saw, for instance).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RejectedRequest {
    /// SIP method, upper case.
    pub method: String,
    /// Sender and receiver, `ip:port`.
    pub src: String,
    pub dst: String,
    /// Milliseconds from call start.
    pub at_ms: u64,
    /// `unknown_source` or `unknown_destination`.
    pub reason: String,
}

/// The recording file of a call.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recording {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub duration_ms: u64,
    /// Raw RTP of payload types CallTap cannot decode, kept beside the WAV.
    pub raw_rtp_pcap: Option<PathBuf>,
    /// Why part or all of the call's audio is missing from the file (the disk filled up, the
    /// disk could not keep up), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The spool's answers for the WAV and the raw RTP pcap: each file is complete (and its
    /// final name known) once its answer came. Not data: never stored.
    #[serde(skip)]
    pub closing: [Closing; 2],
}

/// How long sealing waits for the spool to finish a file; beyond it the disk is stuck, and the
/// CDR goes on saying so rather than waiting for ever.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Recording {
    /// Waits for the spool to finish the files (their final names, sizes and errors), makes the
    /// WAV durable and fills in `sha256`. The media worker only asks for the file to be closed
    /// at call end: fsync and hashing a long call would stall its other calls, so whoever takes
    /// the CDR does this. A no-op once `sha256` is known; on an error it stays empty (unknown),
    /// and the archive hashes the file itself.
    pub fn seal(&mut self) -> io::Result<()> {
        let [wav, raw] = &mut self.closing;
        if wav.is_pending() {
            match wav.wait(CLOSE_WAIT) {
                Some(done) => {
                    self.path = done.path;
                    self.bytes = done.bytes;
                    if let Some(e) = done.error {
                        self.error.get_or_insert(e);
                    }
                }
                None => {
                    self.error
                        .get_or_insert_with(|| "the recording was not finished in time".into());
                }
            }
        }
        if raw.is_pending() {
            if let Some(done) = raw.wait(CLOSE_WAIT) {
                self.raw_rtp_pcap = Some(done.path);
            }
        }
        if self.sha256.is_empty() {
            self.sha256 = crate::store::wav::seal(&self.path)?;
        }
        Ok(())
    }
}

impl Cdr {
    /// [`Recording::seal`] of the call's recording, if it has one; errors are logged (the CDR
    /// itself is kept: it says where the file is).
    pub fn seal_recording(&mut self) {
        if let Some(r) = self.recording.as_mut() {
            let sealed = r.seal();
            if r.error.is_some() && !r.path.exists() {
                // The file could never be made (the spool said so after the call ended): no
                // recording, and why.
                self.recording_failed = self.recording.take().and_then(|r| r.error);
                return;
            }
            if let Err(e) = sealed {
                log::error!(
                    "{}: cannot make the recording durable: {e}",
                    r.path.display()
                );
            }
        }
    }
}

/// One call. Also what the CDR store reads back from the CSV journal (which carries it as
/// JSON): collections default to empty so journals of older versions still import.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cdr {
    pub uuid: String,
    pub call_id: String,
    pub interaction_id: String,
    pub from: Party,
    pub to: Party,
    pub src_ip: String,
    pub dst_ip: String,
    /// RFC 3339 UTC.
    pub start: String,
    pub answer: Option<String>,
    pub end: String,
    pub start_ns: u64,
    pub answer_ns: Option<u64>,
    pub end_ns: u64,
    pub duration_ms: u64,
    pub talk_ms: u64,
    pub end_reason: String,
    #[serde(default)]
    pub codecs: Vec<String>,
    #[serde(default)]
    pub unsupported_codecs: Vec<String>,
    /// Directions that carried no audio at all ("caller", "callee").
    #[serde(default)]
    pub missing_directions: Vec<String>,
    /// Packets per direction, the quick check.
    #[serde(default)]
    pub packets: PacketCounts,
    #[serde(default)]
    pub streams: Vec<StreamQuality>,
    #[serde(default)]
    pub dtmf: Vec<Dtmf>,
    /// Digits past the per-call bound (see `pipeline::media::MAX_DTMF_PER_CALL`), counted
    /// only.
    #[serde(default)]
    pub dtmf_omitted: u64,
    /// In-dialog requests not acted on (at most `pipeline::media::MAX_REJECTED_PER_CALL`).
    #[serde(default)]
    pub rejected_requests: Vec<RejectedRequest>,
    /// Rejected requests past that bound, counted only.
    #[serde(default)]
    pub rejected_requests_omitted: u64,
    #[serde(default)]
    pub recording: Option<Recording>,
    /// Spans the recorder was down (crash, kill, reboot) while the call went on: the recording
    /// is silence there. Empty for calls recorded by one run.
    #[serde(default)]
    pub restart_gaps: Vec<RestartGap>,
    #[serde(default)]
    pub worker: u32,
    /// Operator recording control during the call (pause, resume, stop, start), in order.
    #[serde(default)]
    pub recording_events: Vec<RecordingEvent>,
    /// What the recording rules decided at call start: `record`, `skip` (so `recording` is
    /// null by design, not by failure) or `on_demand`; `None` in CDRs of older versions.
    #[serde(default)]
    pub recording_mode: Option<String>,
    /// The rule that decided it; `None` when the default mode applied.
    #[serde(default)]
    pub rule_id: Option<i64>,
    /// Why a call that should have been recorded has no recording (its file could not be
    /// made); a recording that lost only part of its audio says so in `recording.error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_failed: Option<String>,
}

/// One recording control event of a call.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordingEvent {
    /// "start", "stop", "pause" or "resume".
    pub action: String,
    /// RFC 3339 UTC.
    pub ts: String,
    /// Milliseconds from call start.
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PacketCounts {
    pub caller: u64,
    pub callee: u64,
    pub rtcp: u64,
}

/// A span of a call during which the recorder was not running (see [`Cdr::restart_gaps`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestartGap {
    /// RFC 3339 UTC: last moment the earlier run is known to have been recording.
    pub from: String,
    /// RFC 3339 UTC: when the restarted recorder took the call over again.
    pub to: String,
    pub from_ns: u64,
    pub to_ns: u64,
    pub ms: u64,
}

impl RestartGap {
    pub fn new(from_ns: u64, to_ns: u64) -> RestartGap {
        let to_ns = to_ns.max(from_ns);
        RestartGap {
            from: rfc3339(from_ns),
            to: rfc3339(to_ns),
            from_ns,
            to_ns,
            ms: (to_ns - from_ns) / 1_000_000,
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let (y, mo, d, h, mi, s) = super::paths::civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// Appends CDRs to `calls.jsonl`, one line per call, fsync'd per call: the local record of every
/// call even when nothing else is configured.
pub struct JsonlSink {
    path: PathBuf,
    file: File,
}

impl JsonlSink {
    pub fn open(path: &Path) -> io::Result<JsonlSink> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonlSink {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, cdr: &Cdr) -> io::Result<()> {
        let mut line = serde_json::to_vec(cdr).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(
            rfc3339(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
