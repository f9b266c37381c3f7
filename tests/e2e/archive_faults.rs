//! Archive fault tests through the SPAN lab (issue #4, fault test 2): real sipp calls recorded by
//! `calltap run` while the archive fails underneath it.
//!
//! (a) The archive directory (a tmpfs mounted for the test) is remounted read-only for the
//!     middle of the run, then read-write again.
//! (b) The S3 archive (moto's server, in the recorder's namespace) is frozen with SIGSTOP for the
//!     middle of the run; calltap is restarted while its archive queue is not empty; then moto
//!     is thawed.
//!
//! Either way every call's recording must end up in the archive exactly once, byte-identical to
//! what its CDR states (size and sha256, under the same relative path), with the spool left
//! without finished files and the database rows pointing at the archive.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use calltap_lab::{
    api::{metric, metrics},
    daemon::Daemon,
    files::work_dir,
    netns::{ns_command, ns_run, run, NS_REC},
    root::{require_root, require_tool},
    sipp::{place_calls, wait_bounded, CallPlan},
    Lab,
};
use serde_json::Value;

/// The daemon's management server (its default address, on the recorder namespace's
/// loopback): recordings through the API, the archiver's counters on /metrics.
const API: &str = "127.0.0.1:8080";

const PLAN: CallPlan = CallPlan {
    pairs: 3,
    calls_per_pair: 2,
    packets: 50,
};

/// Polls `f` every 200 ms until it returns Some, for at most `secs` seconds.
fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One batch of lab calls; every call must succeed.
fn calls(dir: &Path, n: u32) {
    let report = place_calls(&dir.join(format!("sipp-{n}")), &PLAN).expect("sipp calls");
    assert_eq!(
        report.failed,
        0,
        "batch {n}: sipp failed; see {}",
        dir.display()
    );
    assert_eq!(report.successful, PLAN.total_calls(), "batch {n}");
}

/// The CDRs in calls.jsonl once there are at least `n`.
fn cdrs_at_least(daemon: &Daemon, n: usize) -> Vec<Value> {
    wait_until(
        &format!("{n} CDRs; stderr: {}", daemon.stderr()),
        30,
        || daemon.cdrs().ok().filter(|c| c.len() >= n),
    )
}

/// Relative path (under the spool) -> (bytes, sha256) of every recording the CDRs name.
fn recordings(cdrs: &[Value], spool: &Path) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    for c in cdrs {
        let r = &c["recording"];
        let path = r["path"].as_str().expect("every lab call is recorded");
        let rel = Path::new(path)
            .strip_prefix(spool)
            .expect("recording in the spool")
            .to_string_lossy()
            .into_owned();
        let bytes = r["bytes"].as_u64().expect("bytes");
        let sha = r["sha256"].as_str().expect("sha256").to_string();
        assert!(
            out.insert(rel, (bytes, sha)).is_none(),
            "two calls, one file"
        );
    }
    out
}

/// Relative path -> (bytes, sha256) of every file under `root` (hidden partial copies too).
fn files_under(root: &Path) -> BTreeMap<String, (u64, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => walk(&p, out),
                Ok(m) => out.push((p, m.len())),
                Err(_) => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    if files.is_empty() {
        return BTreeMap::new();
    }
    // One sha256sum for all of them: its output lines follow the argument order.
    let mut argv = vec!["sha256sum", "--"];
    argv.extend(files.iter().filter_map(|(p, _)| p.to_str()));
    let out = run(&argv).expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    files
        .iter()
        .zip(text.lines())
        .map(|((p, len), line)| {
            let rel = p.strip_prefix(root).expect("under root");
            let sha = line.split_whitespace().next().unwrap_or_default();
            (rel.to_string_lossy().into_owned(), (*len, sha.to_string()))
        })
        .collect()
}

/// Rows of the SQLite CDR store whose recording points at `prefix` and is marked archived.
fn archived_rows(data: &Path, prefix: &str) -> u64 {
    let script = "import sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1])\n\
        n = db.execute(\"SELECT COUNT(*) FROM recordings r JOIN calls c ON c.uuid = r.call_uuid \
        WHERE r.location = 'archive' AND r.path LIKE ? || '%' AND c.recording_path = r.path\", \
        (sys.argv[2],)).fetchone()[0]\n\
        print(n)\n";
    let db = data.join("calltap.db");
    run(&[
        "python3",
        "-c",
        script,
        db.to_str().expect("db path"),
        prefix,
    ])
    .ok()
    .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    .unwrap_or(0)
}

/// Downloads the recording of the first CDR through the API (curl inside the recorder
/// namespace, where the daemon serves [`API`]), whole and as one `Range`, and checks it
/// against the CDR: the archived recording is still served after it left the spool.
fn api_serves_archived_recording(data: &Path, cdr: &Value, dir: &Path) {
    let bin = calltap_lab::daemon::calltap_bin();
    let out = run(&[
        bin.to_str().expect("bin"),
        "token",
        "create",
        "--role",
        "viewer",
        "--data-dir",
        data.to_str().expect("data"),
    ])
    .expect("calltap token create");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let url = format!(
        "http://{API}/api/v1/calls/{}/recording",
        cdr["uuid"].as_str().expect("uuid")
    );
    let fetch = |range: Option<&str>, name: &str| -> (String, Vec<u8>) {
        let file = dir.join(name);
        let auth = format!("Authorization: Bearer {token}");
        let mut argv = vec![
            "curl",
            "-s",
            "-H",
            auth.as_str(),
            "-w",
            "%{http_code}",
            "-o",
        ];
        argv.push(file.to_str().expect("path"));
        if let Some(r) = range {
            argv.extend(["-H", r]);
        }
        argv.push(&url);
        let out = ns_run(NS_REC, &argv).expect("curl");
        let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (status, std::fs::read(&file).unwrap_or_default())
    };
    let (status, whole) = fetch(None, "download.wav");
    assert_eq!(status, "200", "{}", String::from_utf8_lossy(&whole));
    let want = &cdr["recording"];
    assert_eq!(whole.len() as u64, want["bytes"].as_u64().expect("bytes"));
    let sums = files_under(dir);
    assert_eq!(
        sums.get("download.wav").map(|(_, sha)| sha.as_str()),
        want["sha256"].as_str(),
        "the downloaded recording is not the CDR's"
    );
    let (status, part) = fetch(Some("Range: bytes=10-109"), "part.bin");
    assert_eq!(status, "206");
    assert_eq!(part, whole[10..110], "range of the archived recording");
}

/// Waits until all `n` database rows point under `prefix`, checks an API download, stops the
/// daemon and checks its archive queue is empty; returns the run summary's archive counters.
fn settle_and_stop(daemon: Daemon, dir: &Path, prefix: &str, n: usize) -> Value {
    let data = daemon.data_dir.clone();
    wait_until(&format!("database rows point at {prefix}"), 60, || {
        (archived_rows(&data, prefix) == n as u64).then_some(())
    });
    let dl = dir.join("download");
    std::fs::create_dir_all(&dl).expect("download dir");
    let cdrs = daemon.cdrs().expect("calls.jsonl");
    api_serves_archived_recording(&data, &cdrs[0], &dl);
    let summary = daemon.stop().expect("calltap stopped cleanly");
    let archive = summary["archive"].clone();
    assert_eq!(archive["queue_len"], 0, "{archive}");
    assert_eq!(archive["verify_failures_total"], 0, "{archive}");
    archive
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mountpoint");
        let at_s = at.to_str().expect("path");
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=64m",
            "calltap-nas",
            at_s,
        ])
        .expect("mount tmpfs");
        Tmpfs(at.to_path_buf())
    }

    fn remount(&self, mode: &str) {
        let at = self.0.to_str().expect("path");
        run(&["mount", "-o", &format!("remount,{mode}"), at]).expect("remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let at = self.0.to_string_lossy().into_owned();
        let _ = run(&["umount", "-l", &at]);
    }
}

#[test]
fn archive_dir_read_only_mid_run_every_recording_archived_once() {
    const TEST: &str = "archive_faults (directory)";
    if !require_root(TEST) || !require_tool(TEST, "sipp") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir("archive-dir");
    let nas = Tmpfs::mount(&dir.join("nas"));
    let root = nas.0.join("calls");
    let target = root.to_str().expect("path").to_string();
    let env = [
        ("CALLTAP_ARCHIVE_TARGET", target.as_str()),
        ("CALLTAP_ARCHIVE_RETRY_INTERVAL_MS", "200"),
    ];
    let daemon = Daemon::start(&dir.join("live"), &["--workers", "2"], &env).expect("calltap");
    let data = daemon.data_dir.clone();
    let spool = data.join("recordings");
    let per_batch = PLAN.total_calls() as usize;

    // Batch 1: the archive is there; every file moves.
    calls(&dir, 1);
    let first = recordings(&cdrs_at_least(&daemon, per_batch), &spool);
    wait_until("batch 1 archived", 30, || {
        (files_under(&root) == first).then_some(())
    });

    // Batch 2: the NAS is read-only while the calls are up. (Turned read-only just before they
    // start: a pause into the batch would race its first calls' end on a loaded machine.)
    nas.remount("ro");
    calls(&dir, 2);
    let two = recordings(&cdrs_at_least(&daemon, 2 * per_batch), &spool);
    let waiting: BTreeMap<_, _> = two
        .iter()
        .filter(|(rel, _)| !first.contains_key(*rel))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The archiver tries (and fails) with every one of them queued: its queue holds them all,
    // then its failure count rises past where it stood, a pass over them ran. The files stay
    // in the spool, verified intact.
    let archive_metric = |name: &str, labels: &[(&str, &str)]| {
        metrics(NS_REC, API)
            .ok()
            .map(|text| metric(&text, name, labels))
    };
    let failures_before = wait_until("the outage's recordings queued for the archive", 30, || {
        let unarchived = archive_metric("calltap_archive_queue_files", &[("state", "unarchived")])?;
        (unarchived == waiting.len() as f64)
            .then(|| archive_metric("calltap_archive_failures_total", &[]))
            .flatten()
    });
    wait_until("an archive attempt failing with them queued", 30, || {
        (archive_metric("calltap_archive_failures_total", &[])? > failures_before).then_some(())
    });
    let held = files_under(&spool);
    assert_eq!(held, waiting, "the outage's recordings wait in the spool");
    assert_eq!(
        files_under(&root),
        first,
        "nothing reached the read-only archive"
    );

    // Batch 3: the NAS is writable again.
    nas.remount("rw");
    calls(&dir, 3);
    let all = recordings(&cdrs_at_least(&daemon, 3 * per_batch), &spool);
    assert_eq!(all.len(), 3 * per_batch);
    wait_until(
        &format!("every recording archived; stderr: {}", daemon.stderr()),
        60,
        || (files_under(&root) == all && files_under(&spool).is_empty()).then_some(()),
    );
    let archive = &settle_and_stop(daemon, &dir, &target, all.len());
    assert_eq!(archive["archived_total"], all.len() as u64, "{archive}");
    assert!(
        archive["failures_total"].as_u64().unwrap_or(0) > 0,
        "{archive}"
    );
    assert_eq!(archive["verify_failures_total"], 0, "{archive}");
    eprintln!(
        "archive_faults (directory): {} recordings archived once each; {archive}",
        all.len()
    );
}

/// moto's S3 server inside the recorder's namespace (calltap's loopback is that namespace's).
struct Moto {
    child: Option<Child>,
    port: u16,
}

const BUCKET: &str = "calltap-archive";
const PREFIX: &str = "site-1";

impl Moto {
    fn start(dir: &Path) -> Moto {
        ns_run(NS_REC, &["ip", "link", "set", "lo", "up"]).expect("loopback up");
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let log = std::fs::File::create(dir.join("moto.log")).expect("moto log");
        let child = ns_command(
            NS_REC,
            &[
                "python3",
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("moto server");
        let moto = Moto {
            child: Some(child),
            port,
        };
        wait_until("moto answers and has the bucket", 30, || {
            moto.boto(&format!("s3.create_bucket(Bucket='{BUCKET}')\nprint('ok')"))
                .filter(|o| o.trim() == "ok")
        });
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a boto3 snippet (with `s3` a client of this server) in the namespace.
    fn boto(&self, body: &str) -> Option<String> {
        let script = format!(
            "import boto3, hashlib, json\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{body}\n",
            self.endpoint()
        );
        ns_run(NS_REC, &["python3", "-c", &script])
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Key (without the prefix) -> (bytes, sha256) of every object in the bucket, read back.
    fn objects(&self) -> Option<BTreeMap<String, (u64, String)>> {
        let out = self.boto(&format!(
            "out = {{}}\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}'):\n\
             \x20   for o in page.get('Contents', []):\n\
             \x20       b = s3.get_object(Bucket='{BUCKET}', Key=o['Key'])['Body'].read()\n\
             \x20       out[o['Key']] = [len(b), hashlib.sha256(b).hexdigest()]\n\
             print(json.dumps(out))"
        ))?;
        let v: BTreeMap<String, (u64, String)> = serde_json::from_str(out.trim()).ok()?;
        let prefix = format!("{PREFIX}/");
        Some(
            v.into_iter()
                .map(|(k, v)| (k.strip_prefix(&prefix).unwrap_or(&k).to_string(), v))
                .collect(),
        )
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child by pid (`ip netns exec` execs python in place).
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
        }
    }
}

#[test]
fn s3_frozen_mid_run_and_calltap_restarted_every_recording_archived_once() {
    const TEST: &str = "archive_faults (S3)";
    if !require_root(TEST) || !require_tool(TEST, "sipp") || !require_tool(TEST, "python3") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir("archive-s3");
    let moto = Moto::start(&dir);
    let target = format!("s3://{BUCKET}/{PREFIX}");
    let endpoint = moto.endpoint();
    let env = [
        ("CALLTAP_ARCHIVE_TARGET", target.as_str()),
        ("CALLTAP_ARCHIVE_S3_ENDPOINT", endpoint.as_str()),
        ("CALLTAP_ARCHIVE_S3_ALLOW_HTTP", "true"),
        ("CALLTAP_ARCHIVE_S3_ACCESS_KEY_ID", "testing"),
        ("CALLTAP_ARCHIVE_S3_SECRET_ACCESS_KEY", "testing"),
        ("CALLTAP_ARCHIVE_RETRY_INTERVAL_MS", "300"),
    ];
    let data = dir.join("live");
    let spool = data.join("recordings");
    let per_batch = PLAN.total_calls() as usize;
    let daemon = Daemon::start(&data, &["--workers", "2"], &env).expect("calltap");

    // Batch 1: S3 up.
    calls(&dir, 1);
    let first = recordings(&cdrs_at_least(&daemon, per_batch), &spool);
    wait_until("batch 1 in S3", 60, || {
        (moto.objects()? == first).then_some(())
    });

    // Batch 2: S3 frozen (connections hang) while the calls are up (frozen just before they
    // start, as above).
    moto.signal(libc::SIGSTOP);
    calls(&dir, 2);
    let two = recordings(&cdrs_at_least(&daemon, 2 * per_batch), &spool);
    let waiting = two.len() - first.len();
    // A restart while the queue holds the outage's files: nothing may be forgotten.
    let summary = daemon.stop().expect("calltap stopped cleanly");
    let archive = &summary["archive"];
    assert!(
        archive["queue_unarchived"].as_u64().unwrap_or(0) >= waiting as u64,
        "{archive}"
    );
    assert_eq!(
        files_under(&spool).len(),
        waiting,
        "the outage's files are in the spool"
    );
    let daemon = Daemon::restart(&data, &["--workers", "2"], &env).expect("calltap again");
    std::thread::sleep(Duration::from_secs(2));
    moto.signal(libc::SIGCONT);

    // Batch 3: S3 back.
    calls(&dir, 3);
    let all = recordings(&cdrs_at_least(&daemon, 3 * per_batch), &spool);
    assert_eq!(all.len(), 3 * per_batch);
    let mut last = BTreeMap::new();
    wait_until(
        &format!("every recording in S3; stderr: {}", daemon.stderr()),
        120,
        || {
            last = moto.objects()?;
            (last == all && files_under(&spool).is_empty()).then_some(())
        },
    );
    let archive = &settle_and_stop(daemon, &dir, &format!("{target}/"), all.len());
    eprintln!(
        "archive_faults (S3): {} recordings, each once in s3://{BUCKET}/{PREFIX}; {archive}",
        all.len()
    );
}
