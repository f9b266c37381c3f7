//! `calltap replay`: records the calls of capture files through the daemon's parts, run inline
//! ([`crate::daemon::replay`]); CDRs go to `calls.jsonl` and the database as they do live.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    config::Config,
    daemon::replay,
    store::{
        cdr::JsonlSink,
        writer::{CdrWriter, WriterConfig},
    },
};

/// Replays `files` in order, printing each CDR as a JSON line with `json`. False when a file
/// could not be read to the end (the reasons are printed).
pub fn replay(cfg: &Config, files: &[PathBuf], json: bool) -> anyhow::Result<bool> {
    let data = &cfg.storage.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("creating data dir {}", data.display()))?;
    let mut journal =
        JsonlSink::open(&data.join("calls.jsonl")).context("opening the CDR journal")?;
    // The writer only connects; the schema is made here, once.
    crate::daemon::store::prepare_database(cfg, None)?;
    let writer = CdrWriter::start(WriterConfig::new(&cfg.database, &cfg.storage))?;
    let mut failed = None;
    let summary = replay::replay(cfg, files, |cdr| {
        if json {
            match serde_json::to_string(cdr) {
                Ok(line) => println!("{line}"),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if let Err(e) = journal.write(cdr) {
            failed = Some(e.to_string());
        }
        writer.send(cdr.clone());
    });
    let store = writer.finish();
    eprintln!(
        "calltap replay: CDR store {}",
        serde_json::to_string(&store)?
    );
    if let Some(e) = failed {
        anyhow::bail!("writing CDRs: {e}");
    }
    eprintln!(
        "calltap replay: {} packets, {} calls; counters {}",
        summary.packets,
        summary.calls,
        serde_json::to_string(&summary.counters)?
    );
    for e in &summary.errors {
        eprintln!("calltap replay: error: {e}");
    }
    Ok(summary.errors.is_empty())
}
