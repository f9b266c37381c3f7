//! `calltap import-csv FILE...`: stores CSV journals in the CDR database by hand (the daemon does
//! the same automatically when the database comes back). Idempotent: rows already stored (same
//! call uuid) are counted, not duplicated, so a file can be imported again after an interrupted
//! import.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{
    config::Config,
    store::{
        csv_journal::{import_file, ImportReport},
        db::{redact, StoredVia},
    },
};

/// Totals over every file.
#[derive(Debug, Default)]
pub struct ImportTotals {
    pub files: usize,
    pub rows: u64,
    pub imported: u64,
    pub already_present: u64,
    pub bad: u64,
}

/// Imports `files` in order, printing one line per file and one per bad row.
pub fn import_csv(cfg: &Config, files: &[PathBuf]) -> anyhow::Result<ImportTotals> {
    let rt = crate::runtime::current_thread().context("starting the async runtime")?;
    let url = cfg.database_url();
    let timeout = Duration::from_millis(cfg.database.write_timeout_ms);
    rt.block_on(async {
        let db = crate::store::db::prepare(&url, timeout)
            .await
            .with_context(|| format!("opening the CDR database {}", redact(&url)))?;
        let mut totals = ImportTotals::default();
        for file in files {
            let started = std::time::Instant::now();
            let report: ImportReport = import_file(&db, file, StoredVia::Import, timeout)
                .await
                .with_context(|| format!("importing {}", file.display()))?;
            println!(
                "{}: {} rows: {} imported, {} already present, {} bad ({:.1} s)",
                file.display(),
                report.rows,
                report.imported,
                report.already_present,
                report.bad.len(),
                started.elapsed().as_secs_f64()
            );
            for bad in &report.bad {
                println!("{}:{}: bad row: {}", file.display(), bad.line, bad.reason);
            }
            totals.files += 1;
            totals.rows += report.rows;
            totals.imported += report.imported;
            totals.already_present += report.already_present;
            totals.bad += report.bad.len() as u64;
        }
        db.close().await;
        Ok(totals)
    })
}
