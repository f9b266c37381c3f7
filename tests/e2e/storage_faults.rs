//! Storage fault tests through the SPAN lab (issue #4): real sipp calls recorded by `calltap run`
//! while the CDR database fails underneath it.
//!
//! (1) PostgreSQL stopped for the middle of a run, then started: every call still ends up with
//! exactly one row in `calls` (the CDRs of the outage went through the CSV journal and were
//! imported on reconnect).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use calltap_lab::{
    daemon::Daemon,
    files::work_dir,
    postgres::{require_postgres, Postgres},
    root::{require_root, require_tool},
    sipp::{place_calls, CallPlan, CallReport},
    Lab,
};
use serde_json::Value;

/// Waits (bounded) until calls.jsonl holds `n` CDRs.
fn wait_for_cdrs(daemon: &Daemon, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = daemon.cdrs().map(|c| c.len()).unwrap_or(0);
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {have} of {n} CDRs after 30 s; stderr: {}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

fn batch(dir: &Path, n: u32, plan: &CallPlan) -> CallReport {
    let report = place_calls(&dir.join(format!("sipp-{n}")), plan).expect("sipp calls");
    assert_eq!(
        report.failed,
        0,
        "batch {n}: sipp failed calls; see {}",
        dir.display()
    );
    report
}

#[test]
fn postgres_stopped_mid_run_every_call_has_exactly_one_row() {
    const TEST: &str = "storage_faults";
    if !require_root(TEST) || !require_tool(TEST, "sipp") || !require_postgres(TEST) {
        return;
    }
    let mut pg = Postgres::start().expect("throwaway PostgreSQL");
    pg.create_database("calltap").expect("createdb");
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir("storage-pg-outage");
    let plan = CallPlan {
        pairs: 3,
        calls_per_pair: 2,
        packets: 50,
    };
    let per_batch = plan.total_calls() as usize;
    // calltap runs in the recorder namespace, whose loopback is its own: reach the server over
    // its Unix socket.
    let url = pg.socket_url("calltap");
    let daemon = Daemon::start(
        &dir.join("live"),
        &["--workers", "2"],
        &[
            ("CALLTAP_DATABASE_URL", url.as_str()),
            ("CALLTAP_DATABASE_RETRY_INTERVAL_MS", "500"),
        ],
    )
    .expect("calltap run");
    let data = daemon.data_dir.clone();

    // Batch 1: database up.
    let mut successful = batch(&dir, 1, &plan).successful;
    wait_for_cdrs(&daemon, per_batch, "batch 1");

    // Batch 2: PostgreSQL stops while the calls are up.
    let (sipp_dir, plan2) = (dir.clone(), plan.clone());
    let calls = std::thread::spawn(move || batch(&sipp_dir, 2, &plan2));
    std::thread::sleep(Duration::from_millis(300));
    pg.stop().expect("stop PostgreSQL");
    successful += calls.join().expect("batch 2").successful;
    wait_for_cdrs(&daemon, 2 * per_batch, "batch 2");
    // calls.jsonl comes first; the CDR writer journals a row once its database attempt fails.
    let journaled = || {
        files_ending(&data, "cdr-journal.csv")
            .first()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() > 100)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !journaled() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        journaled(),
        "the outage's CDRs were not journaled; stderr: {}",
        daemon.stderr()
    );

    // Batch 3: PostgreSQL back.
    pg.start_again().expect("start PostgreSQL");
    successful += batch(&dir, 3, &plan).successful;
    wait_for_cdrs(&daemon, 3 * per_batch, "batch 3");
    let cdrs = daemon.cdrs().expect("calls.jsonl");
    let summary = daemon.stop().expect("calltap stopped cleanly");

    // Every call sipp completed has one CDR, and one row in `calls`.
    assert_eq!(successful as usize, 3 * per_batch, "sipp calls");
    assert_eq!(cdrs.len(), successful as usize, "calls.jsonl");
    let want: BTreeSet<String> = cdrs
        .iter()
        .map(|c| c["uuid"].as_str().expect("uuid").to_string())
        .collect();
    assert_eq!(want.len(), cdrs.len(), "uuids in calls.jsonl are unique");
    let rows = pg
        .psql("calltap", "SELECT uuid FROM calls ORDER BY uuid")
        .expect("query calls");
    let have: Vec<String> = rows.lines().map(str::to_string).collect();
    let have_set: BTreeSet<String> = have.iter().cloned().collect();
    assert_eq!(have.len(), have_set.len(), "duplicate rows in calls");
    assert_eq!(have_set, want, "rows in calls vs calls.jsonl");
    let streams = pg
        .psql("calltap", "SELECT COUNT(DISTINCT call_uuid) FROM streams")
        .expect("streams");
    assert_eq!(
        streams,
        want.len().to_string(),
        "every call has its streams"
    );

    // The outage went through the journal, which was imported and rotated.
    let journaled: u64 = pg
        .psql(
            "calltap",
            "SELECT COUNT(*) FROM calls WHERE stored_via = 'journal'",
        )
        .expect("journal rows")
        .parse()
        .expect("count");
    assert!(
        journaled >= per_batch as u64,
        "only {journaled} rows came through the journal"
    );
    let store: &Value = &summary["cdr_store"];
    assert!(store["imports"].as_u64().unwrap_or(0) >= 1, "{store}");
    assert_eq!(store["rows_rejected"], 0, "{store}");
    assert_eq!(store["journal_errors"], 0, "{store}");
    assert_eq!(
        store["rows_written"].as_u64().unwrap_or(0) + store["rows_imported"].as_u64().unwrap_or(0),
        want.len() as u64,
        "{store}"
    );
    assert!(
        !files_ending(&data, ".imported").is_empty(),
        "no rotated journal"
    );
    assert!(
        files_ending(&data, ".pending").is_empty(),
        "journal left pending"
    );
    eprintln!(
        "storage_faults: {} calls, {journaled} via the journal; writer {store}",
        want.len()
    );
}
