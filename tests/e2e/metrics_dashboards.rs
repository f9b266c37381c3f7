//! Metrics and dashboards end to end: `calltap run` captures sipp calls in the SPAN lab while a
//! real Prometheus (the Debian package) scrapes it every second, both inside the recorder's
//! namespace. Then `/metrics` must show non-zero capture, call and storage series, and every
//! panel query of every dashboard in `dashboards/` must parse and return data through
//! Prometheus' HTTP API: a dashboard that names a metric CallTap does not export fails here.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use calltap_lab::{
    api::metric,
    daemon::Daemon,
    files::work_dir,
    netns::{ns_command, ns_run, NS_REC},
    root::{require_root, require_tool},
    sipp::{place_calls, wait_bounded, CallPlan},
    Lab,
};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// What the panels' `$__rate_interval` becomes: long enough to span the whole run.
const RATE_INTERVAL: &str = "1m";

/// A TCP port nobody listens on inside the recorder namespace.
fn free_port(base: u16) -> u16 {
    let start = base + (std::process::id() % 1000) as u16;
    (start..start + 200)
        .find(|p| {
            ns_run(NS_REC, &["ss", "-Hltn", &format!("sport = :{p}")])
                .map(|o| o.stdout.is_empty())
                .unwrap_or(false)
        })
        .expect("a free port in the recorder namespace")
}

/// GET inside the recorder namespace; None on any failure.
fn get(url: &str, query: Option<&str>) -> Option<String> {
    let mut argv = vec!["curl", "-sf", "--max-time", "5", "-G", url];
    let q;
    if let Some(query) = query {
        q = format!("query={query}");
        argv.extend_from_slice(&["--data-urlencode", &q]);
    }
    let out = ns_command(NS_REC, &argv)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Prometheus server in the recorder namespace; killed on drop.
struct Prometheus {
    child: Option<Child>,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = free_port(29000);
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: calltap\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let listen = format!("127.0.0.1:{port}");
        let child = ns_command(
            NS_REC,
            &[
                PROMETHEUS,
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                &format!("--web.listen-address={listen}"),
            ],
        )
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("prometheus.out")).expect("log"))
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("starting prometheus");
        let p = Prometheus {
            child: Some(child),
            url: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(&format!("{}/-/ready", p.url), None).is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 60 s: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query; panics when Prometheus rejects it (a parse error, an unknown function).
    fn query(&self, expr: &str) -> Vec<Value> {
        let body = get(&format!("{}/api/v1/query", self.url), Some(expr))
            .unwrap_or_else(|| panic!("prometheus rejected {expr:?}"));
        let v: Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = wait_bounded(child, Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sum of every sample of `name` (any labels) in a text exposition.
fn sum_of(text: &str, name: &str) -> f64 {
    metric(text, name, &[])
}

/// Every (dashboard, panel title, expr) in dashboards/, with Grafana's variables made concrete.
fn panel_queries() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected four dashboards in {}",
        dir.display()
    );
    for f in files {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("JSON");
        let name = f
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name}: no Prometheus datasource variable"
        );
        let panels = d["panels"].as_array().cloned().unwrap_or_default();
        assert!(!panels.is_empty(), "{name}: no panels");
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{name}/{title}");
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{name}/{title}: no targets");
            for t in targets {
                let expr = t["expr"].as_str().expect("targets[].expr").to_string();
                let expr = expr
                    .replace("$__rate_interval", RATE_INTERVAL)
                    .replace("$__interval", "15s");
                assert!(
                    !expr.contains('$'),
                    "{name}/{title}: unresolved variable in {expr}"
                );
                out.push((name.clone(), title.clone(), expr));
            }
        }
    }
    out
}

#[test]
fn prometheus_scrapes_calltap_and_every_dashboard_query_returns_data() {
    if !require_root("metrics_dashboards")
        || !require_tool("metrics_dashboards", "sipp")
        || !require_tool("metrics_dashboards", "prometheus")
        || !require_tool("metrics_dashboards", "curl")
    {
        return;
    }
    let queries = panel_queries();
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir("metrics");
    let port = free_port(28000);
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &dir.join("live"),
        &["--workers", "2"],
        &[("CALLTAP_API_LISTEN", &listen)],
    )
    .expect("calltap run");
    let prom = Prometheus::start(&dir, &listen);

    let plan = CallPlan {
        pairs: 2,
        calls_per_pair: 3,
        packets: 100,
    };
    let report = place_calls(&dir.join("sipp"), &plan).expect("sipp calls");
    assert_eq!(report.failed, 0, "sipp failed calls; see {}", dir.display());

    // The CDRs land within a tick or two; then give Prometheus a few scrapes of the final state.
    let metrics_url = format!("http://{listen}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = get(&metrics_url, None).expect("GET /metrics");
        if sum_of(&text, "calltap_calls_ended_total") >= 6.0
            && sum_of(&text, "calltap_cdr_rows_written_total") >= 6.0
        {
            break text;
        }
        assert!(Instant::now() < deadline, "calls never ended:\n{text}");
        std::thread::sleep(Duration::from_millis(250));
    };
    for name in [
        "calltap_capture_packets_total",
        "calltap_capture_bytes_total",
        "calltap_capture_classified_packets_total",
        "calltap_worker_records_total",
        "calltap_calls_started_total",
        "calltap_calls_answered_total",
        "calltap_calls_ended_total",
        "calltap_stream_loss_ratio_count",
        "calltap_stream_jitter_seconds_count",
        "calltap_recording_bytes_total",
        "calltap_cdr_rows_written_total",
        "calltap_capture_info",
        "calltap_cdr_store_mode",
    ] {
        assert!(
            sum_of(&text, name) > 0.0,
            "{name} is zero or missing:\n{text}"
        );
    }
    check_against_cdrs(&text, &daemon.cdrs().expect("calls.jsonl"), 6);
    assert!(
        text.contains("calltap_capture_info{mode=\"") && text.contains("source=\"xdp\"}"),
        "no XDP capture info:\n{text}"
    );
    assert!(text.contains("calltap_capture_packets_total{cpu=\"0\"}"));
    assert!(
        text.contains("calltap_calls_ended_total{reason=\"bye_caller\"}")
            && !text.contains("reason=\"other\""),
        "sipp's calls end with a caller BYE, a known reason:\n{text}"
    );

    // Scrape cost, as seen by a client: a handful of sequential GETs.
    let t = Instant::now();
    for _ in 0..10 {
        get(&metrics_url, None).expect("GET /metrics");
    }
    eprintln!(
        "metrics_dashboards: /metrics {} bytes, {:?} per scrape including curl start-up",
        text.len(),
        t.elapsed() / 10
    );

    // Prometheus scrapes on its own clock (every second here) and a rate() panel needs two
    // scrapes of each series: ask again until every panel has data or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut up = Vec::new();
    let mut empty = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        up = prom.query("up{job=\"calltap\"}");
        empty = queries
            .iter()
            .filter(|(_, _, expr)| prom.query(expr).is_empty())
            .map(|(dash, title, expr)| format!("{dash} / {title}: {expr}"))
            .collect();
        if up.len() == 1 && up[0]["value"][1] == "1" && empty.is_empty() {
            break;
        }
    }
    assert_eq!(up.len(), 1, "target missing: {up:?}");
    assert_eq!(up[0]["value"][1], "1", "calltap target down: {up:?}");
    assert!(
        empty.is_empty(),
        "panel queries without data:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "metrics_dashboards: {} panel queries returned data",
        queries.len()
    );

    drop(prom);
    daemon.stop().expect("calltap stops cleanly");
}

/// The call metrics hold what the CDRs hold: one call each, their end reasons, answers,
/// recording bytes, per-direction stream observations and packets; the capture saw at least
/// every packet the calls counted.
fn check_against_cdrs(text: &str, cdrs: &[Value], calls: usize) {
    assert_eq!(cdrs.len(), calls, "CDRs in calls.jsonl");
    let n = calls as f64;
    let mut problems = Vec::new();
    let mut same = |what: &str, metric: f64, cdr: f64| {
        if metric != cdr {
            problems.push(format!("{what}: metrics {metric}, CDRs {cdr}"));
        }
    };
    same(
        "calls started",
        sum_of(text, "calltap_calls_started_total"),
        n,
    );
    same("calls ended", sum_of(text, "calltap_calls_ended_total"), n);
    same(
        "CDR rows written",
        sum_of(text, "calltap_cdr_rows_written_total"),
        n,
    );
    let answered = cdrs.iter().filter(|c| !c["answer_ns"].is_null()).count();
    same(
        "calls answered",
        sum_of(text, "calltap_calls_answered_total"),
        answered as f64,
    );
    let bye_caller = cdrs
        .iter()
        .filter(|c| c["end_reason"] == "bye_caller")
        .count();
    same(
        "ended by the caller's BYE",
        metric(
            text,
            "calltap_calls_ended_total",
            &[("reason", "bye_caller")],
        ),
        bye_caller as f64,
    );
    let bytes: u64 = cdrs
        .iter()
        .map(|c| c["recording"]["bytes"].as_u64().unwrap_or(0))
        .sum();
    same(
        "recording bytes",
        sum_of(text, "calltap_recording_bytes_total"),
        bytes as f64,
    );
    let streams = |pred: &dyn Fn(&Value) -> bool| -> f64 {
        cdrs.iter()
            .flat_map(|c| c["streams"].as_array().cloned().unwrap_or_default())
            .filter(|s| pred(s))
            .count() as f64
    };
    let heard = |s: &Value| s["packets"].as_u64().unwrap_or(0) > 0;
    same(
        "directions with jitter observed",
        sum_of(text, "calltap_stream_jitter_seconds_count"),
        streams(&heard),
    );
    same(
        "directions with loss observed",
        sum_of(text, "calltap_stream_loss_ratio_count"),
        streams(&|s| s["packets"].as_u64().unwrap_or(0) + s["lost"].as_u64().unwrap_or(0) > 0),
    );
    same(
        "directions that lost nothing (loss histogram's 0 bucket)",
        metric(text, "calltap_stream_loss_ratio_bucket", &[("le", "0")]),
        streams(&|s| s["lost"].as_u64() == Some(0) && s["packets"].as_u64().unwrap_or(0) > 0),
    );
    let rtp: u64 = cdrs
        .iter()
        .map(|c| {
            c["packets"]["caller"].as_u64().unwrap_or(0)
                + c["packets"]["callee"].as_u64().unwrap_or(0)
        })
        .sum();
    let name = "calltap_capture_classified_packets_total";
    let all_cpus = metric(text, name, &[("class", "rtp"), ("cpu", "all")]);
    let classified = if all_cpus > 0.0 {
        all_cpus
    } else {
        metric(text, name, &[("class", "rtp")])
    };
    if classified < rtp as f64 {
        problems.push(format!(
            "the capture classified {classified} RTP packets, the CDRs count {rtp}"
        ));
    }
    assert!(
        problems.is_empty(),
        "metrics and CDRs disagree:\n{}\n{text}",
        problems.join("\n")
    );
    eprintln!(
        "metrics_dashboards: {calls} calls, {answered} answered, {bytes} recording bytes, {rtp} RTP \
         packets: metrics equal the CDRs"
    );
}
