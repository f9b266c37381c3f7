//! The archiver against real directories and a real SQLite CDR store.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::*;
use crate::store::db::{self, tests::sample_cdr, StoredVia};

struct Spool {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    spool: PathBuf,
    archive: PathBuf,
}

fn spool() -> Spool {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let spool = data.join("recordings");
    let archive = tmp.path().join("nas");
    std::fs::create_dir_all(&spool).expect("spool");
    Spool {
        _tmp: tmp,
        data,
        spool,
        archive,
    }
}

fn config(s: &Spool, target: TargetSpec) -> ArchiveConfig {
    ArchiveConfig {
        target,
        s3: S3Options::default(),
        data_dir: s.data.clone(),
        spool: s.spool.clone(),
        retry_interval: Duration::from_millis(20),
        database_url: Some(format!("sqlite://{}", s.data.join("calltap.db").display())),
        db_timeout: Duration::from_secs(5),
        retention: RetentionConfig {
            spool_alarm_percent: 100,
            ..RetentionConfig::default()
        },
    }
}

/// A CDR whose recording is a real file of `len` bytes in the spool.
fn call(s: &Spool, n: u32, len: usize) -> Cdr {
    let mut cdr = sample_cdr(n);
    let path = s.spool.join(format!("2026/01/02/call-{n}.wav"));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    let bytes: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + n) as u8).collect();
    std::fs::write(&path, &bytes).expect("write");
    if let Some(r) = cdr.recording.as_mut() {
        r.path = path.clone();
        r.bytes = len as u64;
        r.sha256 = sha256_file(&path).expect("sha");
    }
    cdr
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rt() -> tokio::runtime::Runtime {
    crate::runtime::current_thread().expect("rt")
}

fn store_cdrs(s: &Spool, cdrs: &[Cdr]) {
    let url = format!("sqlite://{}", s.data.join("calltap.db").display());
    rt().block_on(async {
        let db = db::prepare(&url, Duration::from_secs(5)).await.expect("db");
        db.insert_batch(cdrs, StoredVia::Direct, Duration::from_secs(5))
            .await
            .expect("insert");
        db.close().await;
    });
}

fn db_rows(s: &Spool) -> Vec<(String, String, String)> {
    let url = format!("sqlite://{}", s.data.join("calltap.db").display());
    rt().block_on(async {
        let db = db::prepare(&url, Duration::from_secs(5)).await.expect("db");
        let Db::Sqlite(pool) = &db else {
            panic!("sqlite")
        };
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT r.location, r.path, c.recording_path FROM recordings r \
             JOIN calls c ON c.uuid = r.call_uuid ORDER BY c.uuid",
        )
        .fetch_all(pool)
        .await
        .expect("rows");
        db.close().await;
        rows
    })
}

fn rel_of(s: &Spool, cdr: &Cdr) -> PathBuf {
    let r = cdr.recording.as_ref().expect("recording");
    r.path.strip_prefix(&s.spool).expect("rel").to_path_buf()
}

#[test]
fn dir_backend_archives_verifies_removes_spool_and_updates_the_row() {
    let s = spool();
    let cdrs: Vec<Cdr> = (0..3).map(|n| call(&s, n, 10_000 + n as usize)).collect();
    store_cdrs(&s, &cdrs);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let archiver = Archiver::start(
        config(&s, TargetSpec::Dir(s.archive.clone())),
        Some(Box::new(move |job: &super::queue::Job, loc: &str| {
            lock_vec(&hook_seen).push((job.uuid.clone(), loc.to_string()));
        })),
    )
    .expect("start");
    let counters = archiver.counters();
    for c in &cdrs {
        archiver.submit(c);
    }
    wait_for("3 archived, rows updated", || {
        let snap = counters.snapshot();
        snap.archived_total == 3 && snap.db_updates_total == 3 && snap.queue_len == 0
    });
    let snap = archiver.finish();
    assert_eq!(snap.failures_total, 0, "{snap:?}");
    for c in &cdrs {
        let r = c.recording.as_ref().expect("rec");
        let archived = s.archive.join(rel_of(&s, c));
        assert!(!r.path.exists(), "spool copy of {} left", r.path.display());
        assert_eq!(sha256_file(&archived).expect("archived"), r.sha256);
    }
    let rows = db_rows(&s);
    assert_eq!(rows.len(), 3);
    for (loc, path, call_path) in rows {
        assert_eq!(loc, "archive");
        assert!(path.starts_with(&*s.archive.to_string_lossy()), "{path}");
        assert_eq!(path, call_path);
    }
    assert_eq!(lock_vec(&seen).len(), 3);
    // No partial copies left behind.
    let hidden = walk_names(&s.archive)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .count();
    assert_eq!(hidden, 0);
}

fn lock_vec<T>(m: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk_names(&e.path()));
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn unavailable_archive_keeps_spool_copies_queued_across_restart_until_it_is_back() {
    let s = spool();
    // The archive root's parent is a plain file: every copy fails like an unmounted NAS.
    std::fs::create_dir_all(s.archive.parent().expect("p")).expect("dir");
    std::fs::write(&s.archive, b"not a directory").expect("block");
    let target = TargetSpec::Dir(s.archive.join("calls"));
    let cdrs: Vec<Cdr> = (0..4).map(|n| call(&s, n, 5_000)).collect();
    let archiver = Archiver::start(config(&s, target.clone()), None).expect("start");
    let counters = archiver.counters();
    for c in &cdrs {
        archiver.submit(c);
    }
    wait_for("failures", || counters.snapshot().failures_total >= 2);
    let snap = archiver.finish();
    assert_eq!(snap.archived_total, 0);
    assert_eq!(snap.queue_len, 4, "{snap:?}");
    assert!(snap.retries_total >= 1, "{snap:?}");
    for c in &cdrs {
        assert!(c.recording.as_ref().expect("rec").path.exists());
    }
    // Restart with the archive still away: the queue file remembers all four.
    let q = Queue::open(&s.data.join(QUEUE_FILE)).expect("queue");
    assert_eq!(q.len(), 4);
    drop(q);
    // The archive comes back; a new run archives what the old one queued.
    std::fs::remove_file(&s.archive).expect("unblock");
    let archiver = Archiver::start(config(&s, target), None).expect("restart");
    let counters = archiver.counters();
    wait_for("archived after restart", || {
        counters.snapshot().archived_total == 4
    });
    archiver.finish();
    for c in &cdrs {
        let r = c.recording.as_ref().expect("rec");
        assert!(!r.path.exists());
        let copy = s.archive.join("calls").join(rel_of(&s, c));
        assert_eq!(sha256_file(&copy).expect("copy"), r.sha256);
    }
}

#[test]
fn a_spool_file_that_does_not_verify_is_kept_and_never_archived() {
    let s = spool();
    let mut cdr = call(&s, 1, 4_000);
    if let Some(r) = cdr.recording.as_mut() {
        r.sha256 = "00".repeat(32);
    }
    let archiver =
        Archiver::start(config(&s, TargetSpec::Dir(s.archive.clone())), None).expect("start");
    let counters = archiver.counters();
    archiver.submit(&cdr);
    wait_for("mismatch", || {
        counters.snapshot().source_mismatches_total == 1
    });
    let snap = archiver.finish();
    assert_eq!(snap.archived_total, 0);
    assert!(cdr.recording.as_ref().expect("rec").path.exists());
    assert!(walk_names(&s.archive).is_empty());
}

#[test]
fn archiving_an_identical_copy_again_is_a_no_op() {
    let s = spool();
    let cdr = call(&s, 2, 3_000);
    let r = cdr.recording.as_ref().expect("rec");
    let copy = s.archive.join(rel_of(&s, &cdr));
    std::fs::create_dir_all(copy.parent().expect("p")).expect("dir");
    std::fs::copy(&r.path, &copy).expect("pre-archived");
    let before = std::fs::metadata(&copy)
        .expect("meta")
        .modified()
        .expect("mtime");
    std::thread::sleep(Duration::from_millis(20));
    let archiver =
        Archiver::start(config(&s, TargetSpec::Dir(s.archive.clone())), None).expect("start");
    let counters = archiver.counters();
    archiver.submit(&cdr);
    archiver.submit(&cdr);
    wait_for("archived", || counters.snapshot().archived_total == 1);
    let snap = archiver.finish();
    assert_eq!(snap.archived_total, 1, "{snap:?}");
    assert!(!r.path.exists());
    let after = std::fs::metadata(&copy)
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(before, after, "the identical copy was rewritten");
    assert_eq!(walk_names(&s.archive).len(), 1);
}

#[test]
fn restart_finds_finished_files_through_calls_jsonl_and_leaves_active_ones_alone() {
    let s = spool();
    let finished = call(&s, 3, 2_000);
    // A file of a call still in progress: in the spool, named by no CDR.
    let active = s.spool.join("2026/01/02/active.wav");
    std::fs::write(&active, b"still recording").expect("active");
    let mut sink = crate::store::cdr::JsonlSink::open(&s.data.join("calls.jsonl")).expect("jsonl");
    sink.write(&finished).expect("cdr line");
    let archiver =
        Archiver::start(config(&s, TargetSpec::Dir(s.archive.clone())), None).expect("start");
    let counters = archiver.counters();
    wait_for("recovered", || counters.snapshot().archived_total == 1);
    archiver.finish();
    assert!(!finished.recording.as_ref().expect("rec").path.exists());
    assert!(active.exists(), "an active call's file was touched");
    assert_eq!(walk_names(&s.archive), vec!["call-3.wav".to_string()]);
    // The offset was saved: a second start does not read the old line again.
    let q = Queue::open(&s.data.join(QUEUE_FILE)).expect("queue");
    assert!(q.jsonl_offset() > 0);
}

#[test]
fn without_an_archive_finished_files_are_marked_read_only_for_retention() {
    let s = spool();
    let cdr = call(&s, 4, 1_000);
    let archiver = Archiver::start(config(&s, TargetSpec::Spool), None).expect("start");
    let counters = archiver.counters();
    archiver.submit(&cdr);
    wait_for("finished", || {
        counters.snapshot().queue_len == 0 && {
            let p = &cdr.recording.as_ref().expect("rec").path;
            std::fs::metadata(p).is_ok_and(|m| retention::is_finished_spool_file(&m))
        }
    });
    let snap = archiver.finish();
    assert_eq!(snap.failures_total, 0);
    assert!(cdr.recording.as_ref().expect("rec").path.exists());
}

#[test]
fn files_outside_the_spool_are_refused() {
    let s = spool();
    let mut cdr = sample_cdr(9);
    if let Some(r) = cdr.recording.as_mut() {
        r.path = PathBuf::from("/etc/passwd");
    }
    assert!(jobs_of(&cdr, &s.spool).is_empty());
    let mut cdr = call(&s, 5, 100);
    if let Some(r) = cdr.recording.as_mut() {
        r.raw_rtp_pcap = Some(r.path.with_extension("pcap"));
    }
    let jobs = jobs_of(&cdr, &s.spool);
    assert_eq!(jobs.len(), 2);
    assert!(jobs[1].raw && jobs[1].sha256.is_none());
    assert_eq!(jobs[1].rel, "2026/01/02/call-5.pcap");
}

#[test]
fn jobs_that_find_the_channel_full_go_to_the_queue_file_and_are_archived() {
    let s = spool();
    let cdrs: Vec<Cdr> = (0..20).map(|i| call(&s, i, 64 + i as usize)).collect();
    let archiver =
        Archiver::start(config(&s, TargetSpec::Dir(s.archive.clone())), None).expect("start");
    let counters = archiver.counters();
    // A submitter whose channel is always full: every job takes the overflow path.
    let (full, _keep) = bounded(1);
    full.try_send(jobs_of(&cdrs[0], &s.spool).remove(0))
        .expect("fill");
    let submitter = ArchiveSubmitter {
        tx: Some(full),
        queue: archiver.queue.clone(),
        spool: s.spool.clone(),
    };
    for c in &cdrs {
        submitter.submit(c);
    }
    wait_for("every file archived", || {
        counters.snapshot().archived_total == 20
    });
    archiver.finish();
    assert_eq!(walk_names(&s.archive).len(), 20);
    assert!(walk_names(&s.spool).is_empty());
}

#[test]
fn a_nearly_full_spool_raises_the_alarm() {
    let s = spool();
    let mut cfg = config(&s, TargetSpec::Spool);
    // Any real filesystem is at least 1% used.
    cfg.retention.spool_alarm_percent = 1;
    let archiver = Archiver::start(cfg, None).expect("start");
    let counters = archiver.counters();
    wait_for("alarm", || counters.snapshot().disk_full_alarm);
    let snap = archiver.finish();
    assert!(snap.spool_fs_size_bytes > 0 && snap.spool_fs_used_fraction > 0.0);
}

#[test]
fn an_archive_dir_overlapping_the_data_dir_is_refused() {
    let s = spool();
    for root in [
        s.data.clone(),
        s.spool.join("archive"),
        s.data.parent().expect("p").to_path_buf(),
    ] {
        let err = Archiver::start(config(&s, TargetSpec::Dir(root.clone())), None)
            .err()
            .unwrap_or_else(|| panic!("{} accepted", root.display()));
        assert!(matches!(err, ArchiverError::Overlap { .. }), "{err}");
    }
    Archiver::start(config(&s, TargetSpec::Dir(s.archive.clone())), None)
        .expect("a separate directory")
        .finish();
}

/// `recordings` rows by call: (uuid, deleted_ns, deleted_reason).
fn deletion_marks(s: &Spool) -> Vec<(String, Option<i64>, Option<String>)> {
    let url = format!("sqlite://{}", s.data.join("calltap.db").display());
    rt().block_on(async {
        let db = db::prepare(&url, Duration::from_secs(5)).await.expect("db");
        let Db::Sqlite(pool) = &db else {
            panic!("sqlite")
        };
        let rows = sqlx::query_as(
            "SELECT call_uuid, deleted_ns, deleted_reason FROM recordings ORDER BY call_uuid",
        )
        .fetch_all(pool)
        .await
        .expect("rows");
        db.close().await;
        rows
    })
}

/// Moves a call's finished recording from the spool into the archive (as an earlier run did)
/// and backdates it `age_days`; returns its archive path.
/// `cdr`'s recording moved into the archive `age_days` ago, and listed in the manifest as
/// the archiver lists what it copies.
fn archived(s: &Spool, cdr: &Cdr, age_days: u64) -> PathBuf {
    let r = cdr.recording.as_ref().expect("rec");
    let rel = rel_of(s, cdr);
    let dest = s.archive.join(&rel);
    in_manifest(s, &rel.to_string_lossy());
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("dir");
    std::fs::rename(&r.path, &dest).expect("archive");
    let f = std::fs::File::options()
        .write(true)
        .open(&dest)
        .expect("open");
    f.set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400))
        .expect("mtime");
    dest
}

fn in_manifest(s: &Spool, rel: &str) {
    Manifest::open(&s.data.join(MANIFEST_FILE))
        .and_then(|mut m| m.add(rel))
        .expect("manifest");
}

/// Writes `bytes` at `path` with a modification time `age_days` ago.
fn aged(path: &Path, bytes: &[u8], age_days: u64) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(path, bytes).expect("write");
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400))
        .expect("mtime");
}

/// On a shared archive directory, retention deletes only what CallTap archived (its
/// manifest): another application's `.wav` and `.pcap`, however old, stay.
#[test]
fn retention_on_a_shared_directory_deletes_only_what_calltap_archived() {
    let s = spool();
    let cdrs: Vec<Cdr> = (0..2).map(|n| call(&s, n, 3_000)).collect();
    store_cdrs(&s, &cdrs);
    let mut cfg = config(&s, TargetSpec::Dir(s.archive.clone()));
    // Archived through the archiver itself: that is what fills the manifest.
    let archiver = Archiver::start(cfg.clone(), None).expect("start");
    let counters = archiver.counters();
    for c in &cdrs {
        archiver.submit(c);
    }
    wait_for("2 archived", || counters.snapshot().archived_total == 2);
    archiver.finish();
    let ours: Vec<PathBuf> = cdrs.iter().map(|c| s.archive.join(rel_of(&s, c))).collect();
    for p in &ours {
        let bytes = std::fs::read(p).expect("archived copy");
        aged(p, &bytes, 40);
    }
    // Foreign files: at the root, beside ours (same directory, same extensions), and one
    // named like a CallTap recording that CallTap never wrote.
    let dir = ours[0].parent().expect("dir").to_path_buf();
    let foreign = [
        s.archive.join("other-app/voicemail.wav"),
        s.archive.join("capture.pcap"),
        dir.join("someone-else.wav"),
        dir.join("call-1.rtp.pcap"),
    ];
    for f in &foreign {
        aged(f, b"not calltap's", 400);
    }
    cfg.retention.archive_days = 30;
    let archiver = Archiver::start(cfg, None).expect("restart");
    let counters = archiver.counters();
    wait_for("our 2 deleted", || {
        counters.snapshot().retention_deleted_total == 2
    });
    let snap = archiver.finish();
    assert_eq!(snap.retention_deleted_total, 2, "{snap:?}");
    for p in &ours {
        assert!(!p.exists(), "{} kept", p.display());
    }
    for f in &foreign {
        assert!(
            f.exists(),
            "retention deleted a foreign file {}",
            f.display()
        );
    }
    let left = Manifest::open(&s.data.join(MANIFEST_FILE)).expect("manifest");
    assert!(left.is_empty(), "deleted files stay listed");
}

#[test]
fn retention_marks_deleted_recordings_in_the_database_even_after_it_was_away() {
    let s = spool();
    let cdrs: Vec<Cdr> = (0..3).map(|n| call(&s, n, 2_000)).collect();
    store_cdrs(&s, &cdrs);
    // Calls 0 and 1 were archived 40 days ago; call 0's row still names the spool copy (its
    // archive update never ran), call 1's the archive copy. Call 2 is a day old.
    let old0 = archived(&s, &cdrs[0], 40);
    let old1 = archived(&s, &cdrs[1], 40);
    let young = archived(&s, &cdrs[2], 1);
    let pcap0 = old0.with_extension("rtp.pcap");
    in_manifest(
        &s,
        &rel_of(&s, &cdrs[0])
            .with_extension("rtp.pcap")
            .to_string_lossy(),
    );
    aged(&pcap0, b"raw rtp", 40);
    let spool1 = cdrs[1].recording.as_ref().expect("rec").path.clone();
    rt().block_on(async {
        let url = format!("sqlite://{}", s.data.join("calltap.db").display());
        let db = db::prepare(&url, Duration::from_secs(5)).await.expect("db");
        let n = db
            .set_recording_location(
                &cdrs[1].uuid,
                &spool1.to_string_lossy(),
                &old1.to_string_lossy(),
                false,
                Duration::from_secs(5),
            )
            .await
            .expect("location");
        assert_eq!(n, 1);
        db.close().await;
    });
    let mut cfg = config(&s, TargetSpec::Dir(s.archive.clone()));
    cfg.retention.archive_days = 30;

    // Run 1: the database cannot be reached. Retention deletes anyway; the deletions wait in
    // the queue file.
    let before = crate::clock::unix_ns_i64();
    let mut away = cfg.clone();
    away.database_url = Some("sqlite:///proc/calltap-no-such-dir/calltap.db".into());
    let archiver = Archiver::start(away, None).expect("start");
    let counters = archiver.counters();
    wait_for("retention with the database away", || {
        let snap = counters.snapshot();
        snap.retention_deleted_total == 3 && snap.retention_db_pending == 2
    });
    let snap = archiver.finish();
    assert_eq!(snap.retention_db_marked_total, 0, "{snap:?}");
    let after = crate::clock::unix_ns_i64();
    assert!(!old0.exists() && !old1.exists() && !pcap0.exists());
    assert!(young.exists());
    assert!(
        deletion_marks(&s).iter().all(|(_, ns, _)| ns.is_none()),
        "marked without a database"
    );
    let q = Queue::open(&s.data.join(QUEUE_FILE)).expect("queue");
    let mut files: Vec<String> = q.deletions().map(|d| d.file.clone()).collect();
    files.sort();
    let want: Vec<String> = [&old0, &old1]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(files, want, "the raw RTP pcap is no recording row");
    // A note for a file that is still there (the recorder stopped between note and delete).
    let mut q = q;
    q.add_deletion(Deletion {
        file: young.display().to_string(),
        object: false,
        stored: vec![young.display().to_string()],
        at_ns: crate::clock::unix_ns(),
        reason: RETENTION_REASON.into(),
    })
    .expect("note");
    drop(q);

    // Run 2: the database is back; the next start marks both rows, and not the one whose
    // file still exists.
    let archiver = Archiver::start(cfg, None).expect("restart");
    let counters = archiver.counters();
    wait_for("rows marked", || {
        let snap = counters.snapshot();
        snap.retention_db_marked_total == 2 && snap.retention_db_pending == 0
    });
    archiver.finish();
    assert!(young.exists());
    let marks = deletion_marks(&s);
    assert_eq!(marks.len(), 3);
    for (uuid, ns, reason) in &marks[..2] {
        let ns = ns.unwrap_or_else(|| panic!("{uuid} not marked deleted"));
        assert!((before..=after).contains(&ns), "{uuid}: deleted_ns {ns}");
        assert_eq!(reason.as_deref(), Some("retention"), "{uuid}");
    }
    assert_eq!(marks[2], (cdrs[2].uuid.clone(), None, None));
    assert_eq!(
        Queue::open(&s.data.join(QUEUE_FILE))
            .expect("queue")
            .deletions()
            .count(),
        0
    );
}
