//! The CDR thread: where every finished call goes, in order. The recording is sealed (fsync,
//! sha256) here, not on a media worker; then the call leaves the live registry, `call.ended`
//! goes out, the CDR is appended to `calls.jsonl`, the call leaves the active-call journal,
//! its files go to the archiver and the CDR to the database writer.

use std::{path::PathBuf, sync::Arc, thread};

use calltap_sip::dialog::EndReason;
use crossbeam_channel::Receiver;

use super::summary::{CallLine, SUMMARY_CALLS};
use crate::{
    publish::{live::LiveCalls, metrics::Metrics, webhook::WebhookSender},
    store::{
        archive::ArchiveSubmitter,
        callstore::JournalWriter,
        cdr::{Cdr, JsonlSink},
        writer::{CdrWriter, WriterSnapshot},
    },
};

/// Who the CDR thread hands each finished call to.
pub struct CdrSinks {
    /// `<data_dir>/calls.jsonl`.
    pub jsonl: PathBuf,
    pub metrics: Arc<Metrics>,
    pub live_calls: Arc<LiveCalls>,
    pub hooks: Option<WebhookSender>,
    pub journal: JournalWriter,
    pub archive: ArchiveSubmitter,
    pub writer: CdrWriter,
}

/// What the CDR thread saw: the first calls of the run (for its summary), how many more, and
/// what the database writer did.
pub type CdrTotals = (Vec<CallLine>, u64, WriterSnapshot);

pub struct CdrThread(thread::JoinHandle<CdrTotals>);

impl CdrThread {
    /// Takes finished calls from `cdrs` until every media worker has hung up.
    pub fn start(cdrs: Receiver<Cdr>, sinks: CdrSinks) -> std::io::Result<CdrThread> {
        let handle = thread::Builder::new()
            .name("cdr".into())
            .spawn(move || run(cdrs, sinks))?;
        Ok(CdrThread(handle))
    }

    pub fn join(self) -> anyhow::Result<CdrTotals> {
        self.0
            .join()
            .map_err(|_| anyhow::anyhow!("cdr thread panicked"))
    }
}

fn run(cdrs: Receiver<Cdr>, s: CdrSinks) -> CdrTotals {
    let CdrSinks {
        jsonl,
        metrics,
        live_calls,
        hooks,
        journal,
        archive,
        writer,
    } = s;
    let mut sink = match JsonlSink::open(&jsonl) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("{}: {e}; CDRs are only logged", jsonl.display());
            None
        }
    };
    let mut lines = Vec::new();
    let mut unlisted = 0u64;
    for mut cdr in cdrs.iter() {
        // fsync and sha256 of the recording: here, not on the media worker's thread.
        cdr.seal_recording();
        metrics.observe_call(&cdr);
        live_calls.remove(&cdr.uuid);
        // An evicted call's call.ended went out when it was evicted (most have no CDR).
        let evicted = cdr.end_reason == EndReason::Evicted.as_str();
        if let Some(h) = hooks.as_ref().filter(|_| !evicted) {
            h.call_ended(&cdr);
        }
        log::info!(
            "call {} ended ({}): {} ms, packets caller {} callee {}, recording {}",
            cdr.call_id,
            cdr.end_reason,
            cdr.duration_ms,
            cdr.packets.caller,
            cdr.packets.callee,
            cdr.recording
                .as_ref()
                .map_or("none".to_string(), |r| r.path.display().to_string())
        );
        if let Some(s) = sink.as_mut() {
            if let Err(e) = s.write(&cdr) {
                log::error!("{}: {e}", s.path().display());
            }
        }
        // The CDR is stored: a crash from now on must not restore the call.
        if let Err(e) = journal.remove(&cdr.uuid) {
            log::warn!("active-call journal: {e}");
        }
        // After calls.jsonl: a crash between the two is recovered from that line.
        archive.submit(&cdr);
        if lines.len() >= SUMMARY_CALLS {
            unlisted += 1;
        } else {
            lines.push(CallLine {
                call_id: cdr.call_id.clone(),
                worker: cdr.worker,
                caller: cdr.packets.caller,
                callee: cdr.packets.callee,
                rtcp: cdr.packets.rtcp,
                end_reason: cdr.end_reason.clone(),
            });
        }
        writer.send(cdr);
    }
    (lines, unlisted, writer.finish())
}
