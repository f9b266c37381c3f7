//! `run-summary.json`: what a run did, written when it stops.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    capture::Attachment,
    pipeline::{media::WorkerStats, signalling::SignallingStats},
    store::{archive::ArchiveSnapshot, writer::WriterSnapshot},
};

/// Calls listed one by one in the run summary.
pub const SUMMARY_CALLS: usize = 100_000;

#[derive(Serialize)]
pub struct CallLine {
    pub call_id: String,
    pub worker: u32,
    pub caller: u64,
    pub callee: u64,
    pub rtcp: u64,
    pub end_reason: String,
}

#[derive(Serialize)]
pub struct RunSummary {
    pub source: String,
    /// Each capture interface: how it is attached, and whether its frames are dropped after
    /// capture (and why).
    pub attachments: Vec<Attachment>,
    pub counters: BTreeMap<&'static str, u64>,
    pub ring_full_per_cpu: Vec<u64>,
    pub signalling: SignallingStats,
    pub workers: Vec<WorkerStats>,
    /// The first [`SUMMARY_CALLS`] calls of the run (every CDR is in calls.jsonl and the store).
    pub calls: Vec<CallLine>,
    /// Calls after those, counted only: a daemon up for months must not grow a list per call.
    pub calls_not_listed: u64,
    /// The CDR database writer: rows stored, journaled, imported.
    pub cdr_store: WriterSnapshot,
    /// The recording archiver: files archived and queued, failures, spool disk alarm.
    pub archive: ArchiveSnapshot,
}

pub fn write_summary(path: &Path, summary: &RunSummary) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "calltap: {} calls; counters {}; summary in {}",
        summary.calls.len(),
        serde_json::to_string(&summary.counters)?,
        path.display()
    );
    Ok(())
}
