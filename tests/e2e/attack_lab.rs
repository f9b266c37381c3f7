//! The attack lab of issue #14 ("Never miss a call"): hostile traffic on the mirror port while
//! ordinary calls go on. Each scenario starts its own `calltap run` (XDP on the lab's mirror
//! port, one media worker, the bounds of [`daemon_env`]), sends one kind of attack from the
//! caller namespace (`calltap-attack`, or `calltap-loadgen` for calls) and, meanwhile, 20
//! ordinary sipp calls with two-way audio (5 pairs of 4 calls, 2 s of tone each way). Each
//! asserts what a user would check:
//!
//! - every ordinary call has exactly one CDR (`bye_caller`, 100 packets each way) and a WAV
//!   holding both parties' audio sample for sample;
//! - calltap's resident memory (VmRSS, sampled every 100 ms) stayed under [`rss_bound_mib`],
//!   which follows from the configured bounds;
//! - calltap's counters show the attack was seen and shed, not silently ignored;
//!
//! and prints the rate the generator held (its own report) beside calltap's counters, the
//! figures of the README's "Reliability under attack". The scenarios: (a) hostile SDP answers
//! naming the proxy's SIP port (item 2), (b) an INVITE flood, (c) RTP to random ports and
//! SSRCs, (d) IP fragments that never complete, (e) SIP over TCP in 1-byte segments with gaps,
//! (f) spoofed BYEs (item 5), (g) 1,500 calls under an open-file limit of 1024 (item 3).

use std::{
    cell::RefCell,
    collections::BTreeMap,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use calltap_lab::{
    api::{metric, metrics},
    daemon::{read_jsonl, Daemon, RssPeak, RssWatch},
    files::{read_wav, work_dir},
    load::{check_recording, LoadSpec},
    netns::{ns_command, uas_ip, MIRROR_SWITCH_IF, NS_REC, NS_SW, NS_UAC},
    root::{require_root, require_tool},
    sipp::{check_tone_recording, place_calls, wait_bounded, CallPlan},
    spoof::{Spoof, SPOOF_DESTINATION, SPOOF_SOURCE},
    wait_for, Lab,
};
use serde_json::Value;

/// The ordinary calls every scenario places beside its attack: 20 calls, 2 s of audio a side.
const ORDINARY: CallPlan = CallPlan {
    pairs: 5,
    calls_per_pair: 4,
    packets: 100,
};

/// calltap's management server in the recorder namespace.
const API: &str = "127.0.0.1:8080";

// The bounds every scenario runs calltap under, set explicitly (the packaged defaults are
// larger) so that the memory bound follows from them.
/// `[storage] audio_buffer_mb`.
const AUDIO_BUFFER_MB: u64 = 64;
/// `[calls] max_unanswered_calls`.
const MAX_UNANSWERED_CALLS: u64 = 5_000;
/// `[reassembly] tcp_max_bytes`, `tcp_max_segments`.
const TCP_MAX_BYTES: u64 = 16 << 20;
const TCP_MAX_SEGMENTS: u64 = 16_384;
/// `[reassembly] ip_max_datagrams`, `ip_max_bytes`.
const IP_MAX_DATAGRAMS: u64 = 256;
const IP_MAX_BYTES: u64 = 8 << 20;

/// The BPF rings calltap maps (one per addressable media worker and one for signalling,
/// whatever `workers` says), in MiB of VmRSS: the kernel maps every page of a ring when it is
/// mapped, and the data pages twice (so a record can wrap around), so they count in full from
/// the start although no process memory is behind them.
const RINGS_MIB: u64 =
    calltap_common::RING_COUNT as u64 * 2 * (calltap_common::RING_BYTES as u64 >> 20);
/// The rest of what calltap holds whatever the traffic: the debug build's mapped code, its heap
/// and threads (about 40 MiB and 12 MiB idle).
const FLOOR_MIB: u64 = 96;
/// Per call followed at once (signalling and media worker state, journal, prepared recording).
const CALL_KIB: u64 = 64;

/// calltap's configuration in every scenario (`CALLTAP_<SECTION>_<KEY>`).
fn daemon_env() -> Vec<(String, String)> {
    [
        ("STORAGE_AUDIO_BUFFER_MB", AUDIO_BUFFER_MB),
        ("CALLS_MAX_UNANSWERED_CALLS", MAX_UNANSWERED_CALLS),
        ("REASSEMBLY_TCP_MAX_BYTES", TCP_MAX_BYTES),
        ("REASSEMBLY_TCP_MAX_SEGMENTS", TCP_MAX_SEGMENTS),
        ("REASSEMBLY_IP_MAX_DATAGRAMS", IP_MAX_DATAGRAMS),
        ("REASSEMBLY_IP_MAX_BYTES", IP_MAX_BYTES),
    ]
    .into_iter()
    .map(|(k, v)| (format!("CALLTAP_{k}"), v.to_string()))
    .collect()
}

/// The VmRSS no scenario may reach, in MiB: the rings, [`FLOOR_MIB`], the audio buffers, the
/// reassembly bounds, and [`CALL_KIB`] for each of `calls` calls open at once and each
/// unanswered call the bound allows.
fn rss_bound_mib(calls: u64) -> u64 {
    RINGS_MIB
        + FLOOR_MIB
        + AUDIO_BUFFER_MB
        + (TCP_MAX_BYTES + IP_MAX_BYTES) / (1 << 20)
        + (calls + MAX_UNANSWERED_CALLS) * CALL_KIB / 1024
}

/// What a scenario sends besides the ordinary calls: a generator run in the caller namespace.
struct Attack {
    /// Where it runs: a host on the switch (the caller namespace), or the switch itself.
    ns: &'static str,
    /// The generator and its arguments (`--stats-json` is added).
    argv: Vec<String>,
    /// Start the ordinary calls once calltap has seen this many more packets (the attack is
    /// on); 0: start them at once (the attack needs them, as spoofed BYEs do).
    lead_packets: u64,
    /// How long the generator may run before it is stopped and the scenario fails.
    limit: Duration,
}

impl Attack {
    /// `calltap-attack ARGS` from a host on the switch (the caller namespace, `a0`).
    fn calltap_attack(args: &[&str], lead_packets: u64, limit: Duration) -> Self {
        let mut argv = vec![env!("CARGO_BIN_EXE_calltap-attack").to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Self {
            ns: NS_UAC,
            argv,
            lead_packets,
            limit,
        }
    }

    /// `calltap-attack send`: `rate` frames/s of `kind` for `seconds`, sent into the mirror
    /// link on the switch (`m1` in `ct-sw`), as a hardware switch would deliver them: through
    /// the lab's software switch, its bridge and mirror took a core of this 2-core machine at
    /// 100k frames/s, the core calltap needs. The ordinary calls start after the first second
    /// of it.
    fn send(kind: &str, rate: u64, seconds: u64, extra: &[&str]) -> Self {
        let (rate_s, seconds_s) = (rate.to_string(), seconds.to_string());
        let mut args = vec![
            "--interface",
            MIRROR_SWITCH_IF,
            "send",
            "--kind",
            kind,
            "--rate",
            &rate_s,
            "--seconds",
            &seconds_s,
        ];
        args.extend_from_slice(extra);
        Self {
            ns: NS_SW,
            ..Self::calltap_attack(&args, rate, Duration::from_secs(seconds + 60))
        }
    }

    /// `calltap-loadgen` placing `spec`'s calls.
    fn loadgen(spec: &LoadSpec, lead_packets: u64) -> Self {
        let mut argv: Vec<String> = [
            env!("CARGO_BIN_EXE_calltap-loadgen"),
            "--interface",
            "a0",
            "--calls",
            &spec.calls.to_string(),
            "--seconds",
            &spec.seconds.to_string(),
            "--rate",
            &spec.rate.to_string(),
            "--uas-ip",
            &spec.uas_ip.to_string(),
            "--media-port",
            &spec.media_port_base.to_string(),
            "--run",
            &spec.run.to_string(),
            "--send-every",
            &spec.send_every.to_string(),
        ]
        .map(String::from)
        .to_vec();
        if let Some(to) = spec.answer_media {
            argv.extend(["--answer-media".to_string(), to.to_string()]);
        }
        Self {
            ns: NS_UAC,
            argv,
            lead_packets,
            limit: spec.duration() + Duration::from_secs(60),
        }
    }
}

/// What a scenario left: the generator's report and calltap's, and what was found wrong so
/// far (a scenario checks everything, then fails listing all of it).
struct Outcome {
    name: &'static str,
    /// The generator's figures (`pps`: frames over its wall time, the rate it held).
    attack: Value,
    cdrs: Vec<Value>,
    summary: Value,
    /// `/metrics` before the attack and at its end.
    before: String,
    after: String,
    rss: RssPeak,
    /// The VmRSS bound for this scenario, in MiB.
    rss_bound: u64,
    log: String,
    /// The open-file limit calltap ran under (/proc/PID/limits).
    nofile: Option<String>,
    started: Instant,
    problems: RefCell<Vec<String>>,
}

impl Outcome {
    /// Notes a problem unless `ok`.
    fn expect(&self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.borrow_mut().push(problem());
        }
    }

    /// How much a counter (summed over the series with `labels`) grew during the scenario.
    fn delta(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        (metric(&self.after, name, labels) - metric(&self.before, name, labels)).max(0.0) as u64
    }

    fn gauge(&self, name: &str) -> u64 {
        metric(&self.after, name, &[]) as u64
    }

    /// Whether `/metrics` has the metric at all (some come with later work on issue #14).
    fn has(&self, name: &str) -> bool {
        self.after
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} ")))
    }

    /// Frames the generator sent.
    fn sent(&self) -> u64 {
        self.attack["frames"].as_u64().unwrap_or(0)
    }

    fn pps(&self) -> f64 {
        self.attack["pps"].as_f64().unwrap_or(0.0)
    }

    fn wall(&self) -> f64 {
        self.attack["wall_secs"].as_f64().unwrap_or(0.0)
    }

    fn counter(&self, name: &str) -> u64 {
        self.summary["counters"][name].as_u64().unwrap_or(0)
    }

    fn signalling(&self, name: &str) -> u64 {
        self.summary["signalling"][name].as_u64().unwrap_or(0)
    }

    /// The generator sent its whole schedule at (at least) `rate` frames/s over its wall
    /// time (which includes the send of the last tick: a schedule of N frames at R/s is held
    /// at a little under R).
    fn expect_rate(&self, rate: f64) {
        self.expect(self.attack["complete"] == true, || {
            format!(
                "the generator did not send its whole schedule: {}",
                self.attack
            )
        });
        self.expect(self.pps() >= rate, || {
            format!(
                "the generator held {:.0} frames/s, not {rate}: {}",
                self.pps(),
                self.attack
            )
        });
    }

    /// Prints the scenario's figures (for the README's "Reliability under attack"), then
    /// fails listing every problem found.
    fn finish(self, held: &str, shed: &str) {
        eprintln!(
            "attack_lab {}: {held}; {shed}; calltap VmRSS peak {} MiB (anon {}, file {} MiB; {} samples), bound {} MiB; scenario {:.0} s",
            self.name,
            self.rss.max_kib / 1024,
            self.rss.anon_kib / 1024,
            self.rss.file_kib / 1024,
            self.rss.samples,
            self.rss_bound,
            self.started.elapsed().as_secs_f64(),
        );
        let problems = self.problems.into_inner();
        if !problems.is_empty() {
            panic!(
                "{}: {} problem(s):\n- {}",
                self.name,
                problems.len(),
                problems.join("\n- ")
            );
        }
    }
}
/// Runs one scenario: calltap up (under an open-file limit of `nofile` if given), `attack`
/// started, the ordinary calls placed once calltap sees the attack, then waits (bounded) for
/// the generator to finish, for the ordinary calls' CDRs and for `settled` to say calltap has
/// caught up with what was sent (it gets the generator's report, and the metrics before the
/// attack and now). Checks what every scenario must hold: the ordinary calls, and calltap's
/// memory under the bound for `calls` calls of the attack's own at once.
/// None when the lab cannot run here (not root, no sipp): the test skips.
fn run_scenario(
    name: &'static str,
    nofile: Option<u64>,
    calls: u64,
    attack: Attack,
    settled: impl Fn(&Value, &str, &str) -> bool,
) -> Option<Outcome> {
    if !require_root(name) || !require_tool(name, "sipp") {
        return None;
    }
    let started = Instant::now();
    let _lab = Lab::acquire().expect("lab up");
    let dir = work_dir(&format!("attack-{name}"));
    let env = daemon_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = ["--source", "xdp", "--workers", "1"];
    let data = dir.join("live");
    // The rates below only mean something against the build that ships.
    let daemon = Daemon::start_release(&data, &args, &env, nofile).expect("calltap run");
    let pid = daemon.pid().expect("calltap's pid");
    let nofile = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(str::to_string)
        });
    let watch = RssWatch::start(pid, Duration::from_millis(100));
    let scrape = || metrics(NS_REC, API);
    let before = scrape().expect("GET /metrics");
    let mut problems = Vec::new();

    let stats_path = dir.join("attack.json");
    let mut argv: Vec<&str> = attack.argv.iter().map(String::as_str).collect();
    argv.extend(["--stats-json", stats_path.to_str().expect("utf-8 path")]);
    let log = std::fs::File::create(dir.join("attack.log")).expect("attack log");
    let mut child = ns_command(attack.ns, &argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting the attack");
    if attack.lead_packets > 0 {
        if let Err(e) = wait_for("calltap to see the attack", Duration::from_secs(20), || {
            scrape()
                .ok()
                .filter(|m| seen_all(&before, m, attack.lead_packets))
        }) {
            problems.push(format!("{e:#}"));
        }
    }
    let calls_placed = place_calls(&dir.join("sipp"), &ORDINARY);
    let status = wait_bounded(&mut child, attack.limit).expect("waiting for the attack");
    match calls_placed {
        Ok(r) if r.failed == 0 => {}
        other => problems.push(format!(
            "sipp: {other:?}; see {}",
            dir.join("sipp").display()
        )),
    }
    let attack_log = std::fs::read_to_string(dir.join("attack.log")).unwrap_or_default();
    let stats: Value = std::fs::read_to_string(&stats_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if !status.is_some_and(|s| s.success()) {
        problems.push(format!(
            "the generator failed or overran ({status:?}): {attack_log}"
        ));
    }

    // Bounded generously: a debug build writing 1,500 CDRs (fsync and hash of each recording)
    // takes a while to reach the ordinary calls' ones.
    if let Err(e) = wait_for("the ordinary calls' CDRs", Duration::from_secs(60), || {
        let n = daemon.cdrs().map(|c| ordinary(&c).len()).unwrap_or(0);
        (n >= ORDINARY.total_calls() as usize).then_some(())
    }) {
        problems.push(format!("{e:#}"));
    }
    let after = match wait_for(
        "calltap to catch up with the attack",
        Duration::from_secs(45),
        || scrape().ok().filter(|m| settled(&stats, &before, m)),
    ) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("{e:#}"));
            scrape().unwrap_or_default()
        }
    };
    let rss_peak = watch.stop();
    let log = daemon.stderr();
    let summary = daemon.stop().unwrap_or_else(|e| {
        problems.push(
            format!("{e:#}")
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | "),
        );
        Value::Null
    });
    let cdrs = read_jsonl(&data.join("calls.jsonl")).expect("calls.jsonl");
    let o = Outcome {
        name,
        attack: stats,
        cdrs,
        summary,
        before,
        after,
        rss: rss_peak,
        rss_bound: rss_bound_mib(calls + u64::from(ORDINARY.total_calls())),
        log,
        nofile,
        started,
        problems: RefCell::new(problems),
    };
    check_ordinary_calls(&o);
    o.expect(o.rss.samples >= 10, || {
        format!("only {} RSS samples", o.rss.samples)
    });
    o.expect(o.rss.max_kib < o.rss_bound * 1024, || {
        format!(
            "calltap's VmRSS reached {} MiB (anon {} MiB), over the {} MiB its bounds allow",
            o.rss.max_kib / 1024,
            o.rss.anon_kib / 1024,
            o.rss_bound
        )
    });
    Some(o)
}

/// True for a CDR of one of the ordinary sipp calls: sipp's Call-IDs are `N-PID@198.18.0.1`.
fn is_ordinary(cdr: &Value) -> bool {
    let id = cdr["call_id"].as_str().unwrap_or_default();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    id.strip_suffix("@198.18.0.1")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(n, pid)| digits(n) && digits(pid))
}

fn ordinary(cdrs: &[Value]) -> Vec<&Value> {
    cdrs.iter().filter(|c| is_ordinary(c)).collect()
}

/// Every ordinary call has exactly one CDR, ended by the caller's BYE with all 100 packets a
/// side, and a WAV holding both parties' audio sample for sample.
fn check_ordinary_calls(o: &Outcome) {
    let calls = ordinary(&o.cdrs);
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &calls {
        *per_id
            .entry(c["call_id"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    o.expect(per_id.values().all(|n| *n == 1), || {
        format!("ordinary calls with more than one CDR: {per_id:?}")
    });
    o.expect(per_id.len() == ORDINARY.total_calls() as usize, || {
        format!(
            "{} of the {} ordinary calls have a CDR",
            per_id.len(),
            ORDINARY.total_calls()
        )
    });
    for pair in 0..ORDINARY.pairs {
        let ip = uas_ip(pair);
        let n = calls.iter().filter(|c| c["dst_ip"] == ip.as_str()).count();
        o.expect(n == ORDINARY.calls_per_pair as usize, || {
            format!(
                "{n} CDRs of calls to {ip}, {} placed",
                ORDINARY.calls_per_pair
            )
        });
    }
    let mut bad = Vec::new();
    for cdr in &calls {
        let id = cdr["call_id"].as_str().unwrap_or("?");
        let packets = (
            cdr["packets"]["caller"].as_u64(),
            cdr["packets"]["callee"].as_u64(),
        );
        let want = Some(ORDINARY.packets as u64);
        if cdr["end_reason"] != "bye_caller" || packets != (want, want) {
            bad.push(format!(
                "{id}: end {}, packets {packets:?}",
                cdr["end_reason"]
            ));
            continue;
        }
        match cdr["recording"]["path"].as_str() {
            None => bad.push(format!("{id}: no recording")),
            Some(path) => {
                if let Err(e) = check_tone_recording(Path::new(path), ORDINARY.packets) {
                    bad.push(format!("{id}: {e:#}"));
                }
            }
        }
    }
    o.expect(bad.is_empty(), || {
        format!(
            "{} of {} ordinary calls not recorded whole: {}",
            bad.len(),
            calls.len(),
            bad.iter().take(4).cloned().collect::<Vec<_>>().join("; ")
        )
    });
}

/// calltap's capture program has seen at least `frames` more packets than before the attack.
fn seen_all(before: &str, now: &str, frames: u64) -> bool {
    let seen = |t: &str| metric(t, "calltap_capture_packets_total", &[]) as u64;
    seen(now) >= seen(before) + frames
}

/// `settled` for generators whose every frame crosses the mirror: calltap has seen them all.
fn saw_every_frame(stats: &Value, before: &str, now: &str) -> bool {
    stats["frames"]
        .as_u64()
        .is_some_and(|frames| seen_all(before, now, frames))
}

/// (a) Hostile SDP (item 2): 200 calls whose 200 OK says `c=IN IP4 198.18.0.2` and
/// `m=audio 5060`, the address and SIP port of the proxy the ordinary calls go through, while
/// each of those calls' callers sends its RTP there (10,000 packets/s at the peak). Every
/// hostile answer is refused, the RTP sent to the SIP port is never steered as media, and the
/// ordinary calls through the proxy all get their CDR.
#[test]
fn a_hostile_sdp_answers_do_not_hide_the_proxy() {
    let mut spec = LoadSpec::new(200, 10);
    spec.rate = 20.0;
    spec.uas_ip = "198.18.0.10".parse().expect("address");
    spec.media_port_base = 30_000;
    spec.run = 14;
    spec.answer_media = Some("198.18.0.2:5060".parse().expect("address"));
    let hostile = spec.clone();
    let attack = Attack::loadgen(&spec, 1000);
    let Some(o) = run_scenario("a_hostile_sdp", None, 200, attack, |stats, before, m| {
        let refused = |t: &str| metric(t, "calltap_sdp_endpoints_refused_total", &[]) as u64;
        saw_every_frame(stats, before, m)
            && refused(m) >= refused(before) + u64::from(hostile.calls)
    }) else {
        return;
    };
    o.expect(o.attack["complete"] == true, || format!("{}", o.attack));
    let refused = o.delta("calltap_sdp_endpoints_refused_total", &[]);
    o.expect(refused == u64::from(hostile.calls), || {
        format!("{refused} SDP endpoints refused, one per hostile answer expected")
    });
    let calls: Vec<&Value> = o
        .cdrs
        .iter()
        .filter(|c| {
            c["call_id"]
                .as_str()
                .and_then(|id| hostile.call_index(id))
                .is_some()
        })
        .collect();
    o.expect(calls.len() == hostile.calls as usize, || {
        format!(
            "{} hostile calls have a CDR of {}",
            calls.len(),
            hostile.calls
        )
    });
    // The callee's RTP went to the caller's offer: recorded. The caller's went to the proxy's
    // SIP port: never steered as media.
    let per_side = Some(u64::from(hostile.packets_per_direction()));
    let wrong: Vec<&&Value> = calls
        .iter()
        .filter(|c| {
            (
                c["packets"]["caller"].as_u64(),
                c["packets"]["callee"].as_u64(),
            ) != (Some(0), per_side)
        })
        .collect();
    o.expect(wrong.is_empty(), || {
        format!(
            "{} hostile calls with other packet counts, e.g. {:?}",
            wrong.len(),
            wrong.first()
        )
    });
    let to_sip_port = o.attack["rtp"].as_u64().unwrap_or(0) / 2;
    let held = format!(
        "{refused} hostile answers at {} calls/s, their callers' RTP to the proxy's SIP port ({to_sip_port} packets; {:.0} frames/s in all at the peak)",
        hostile.rate,
        o.pps()
    );
    let shed = format!(
        "sdp_endpoints_refused {refused}, malformed_sip {}",
        o.signalling("malformed_sip")
    );
    o.finish(&held, &shed);
}

/// (b) An INVITE flood: 10,500 INVITEs a second for 20 s (210,000), each with its own random
/// Call-ID, tags, source and SDP offer, none ever answered. Unanswered calls are bounded
/// (`max_unanswered_calls`): the flood turns them over, evicting the oldest nobody answered;
/// the ordinary calls ring at once and are never evicted.
#[test]
fn b_invite_flood() {
    let attack = Attack::send("invite-flood", 10_500, 20, &[]);
    // Settled once calltap has seen every INVITE and published its shedding of them.
    let settled = |stats: &Value, before: &str, m: &str| {
        let gone = |t: &str| {
            metric(t, "calltap_sip_calls_evicted_total", &[])
                + metric(t, "calltap_sip_invites_shed_total", &[])
        };
        let sent = stats["frames"].as_u64().unwrap_or(u64::MAX);
        saw_every_frame(stats, before, m)
            && (gone(m) - gone(before)) as u64 >= sent.saturating_sub(MAX_UNANSWERED_CALLS)
    };
    let Some(o) = run_scenario("b_invite_flood", None, 0, attack, settled) else {
        return;
    };
    o.expect_rate(10_000.0);
    let sent = o.sent();
    let sip = o.delta(
        "calltap_capture_classified_packets_total",
        &[("class", "sip")],
    );
    o.expect(sip >= sent, || {
        format!("{sip} SIP packets classified, {sent} INVITEs sent")
    });
    let ring_full = o.delta("calltap_capture_ring_full_drops_total", &[]);
    o.expect(ring_full == 0, || {
        format!("{ring_full} packets dropped for a full ring")
    });
    let parsed = o.signalling("sip_messages");
    o.expect(parsed >= sent, || {
        format!("{parsed} SIP messages parsed of {sent} INVITEs")
    });
    // Shed: each INVITE beyond the bound evicted an older unanswered call or was not followed.
    let evicted = o.delta("calltap_sip_calls_evicted_total", &[]);
    let shed = o.delta("calltap_sip_invites_shed_total", &[]);
    o.expect(evicted + shed >= sent.saturating_sub(MAX_UNANSWERED_CALLS), || {
        format!("{evicted} unanswered calls evicted and {shed} INVITEs shed for {sent} INVITEs (calltap_sip_calls_evicted_total {})",
            if o.has("calltap_sip_calls_evicted_total") { "exported" } else { "missing" })
    });
    let unanswered = o.gauge("calltap_sip_unanswered_calls");
    o.expect(unanswered <= MAX_UNANSWERED_CALLS, || {
        format!("{unanswered} unanswered calls held")
    });
    let held = format!("{sent} INVITEs in {:.1} s ({:.0}/s)", o.wall(), o.pps());
    let shed = format!(
        "classified SIP {sip}, unanswered calls evicted {evicted}, INVITEs shed {shed}, held at the end {unanswered} (bound {MAX_UNANSWERED_CALLS}), ring-full drops {ring_full}"
    );
    o.finish(&held, &shed);
}

/// (c) RTP to random ports with random SSRCs, 110,000 packets a second for 12 s, from
/// 198.19.0.0/16 to the lab's hosts (never to a port an ordinary call uses). None of it
/// belongs to a call: it is counted as unclaimed media (an RTP header on an even port, held
/// briefly for an SDP that never comes) or unmatched, and never reaches a media worker.
#[test]
fn c_random_rtp() {
    let attack = Attack::send("random-rtp", 110_000, 12, &[]);
    let Some(o) = run_scenario("c_random_rtp", None, 0, attack, saw_every_frame) else {
        return;
    };
    o.expect_rate(100_000.0);
    let sent = o.sent();
    let (heuristic, unmatched) = (o.counter("rtp_heuristic"), o.counter("unmatched"));
    let ordinary_rtp = 2 * u64::from(ORDINARY.total_calls()) * ORDINARY.packets as u64;
    o.expect(
        heuristic + unmatched >= sent && heuristic + unmatched <= sent + ordinary_rtp,
        || format!("{heuristic} unclaimed + {unmatched} unmatched for {sent} sent"),
    );
    let unmatched_metric = o.delta("calltap_capture_unmatched_packets_total", &[]);
    o.expect(unmatched_metric == unmatched && unmatched > 0, || {
        format!("calltap_capture_unmatched_packets_total grew {unmatched_metric}, the summary says {unmatched}")
    });
    let (forwarded, unclaimed) = (
        o.signalling("early_media_forwarded"),
        o.signalling("early_media_unclaimed"),
    );
    o.expect(forwarded + unclaimed == heuristic, || {
        format!(
            "unclaimed media not all accounted for: {}",
            o.summary["signalling"]
        )
    });
    o.expect(forwarded <= ordinary_rtp, || {
        format!("{forwarded} packets forwarded to calls")
    });
    let strays: u64 = o.summary["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["unknown_endpoint"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    o.expect(strays == 0, || {
        format!("{strays} packets reached a worker no call of which owns them")
    });
    let ring_full = o.counter("ring_full");
    o.expect(ring_full == 0, || {
        format!("{ring_full} packets dropped for a full ring")
    });
    let held = format!(
        "{sent} RTP packets to random ports in {:.1} s ({:.0}/s)",
        o.wall(),
        o.pps()
    );
    let shed = format!(
        "given up as unclaimed {unclaimed} (of {heuristic} held for an SDP), unmatched {unmatched}, forwarded to the ordinary calls {forwarded}, ring-full drops {ring_full}"
    );
    o.finish(&held, &shed);
}

/// (d) IPv4 fragments that never complete: 20,000 fragments a second for 12 s, three per
/// datagram (offsets 0, 1000, 2000, "more fragments" always set), each datagram from its own
/// source and ID to the proxy's SIP port. Reassembly holds at most `ip_max_datagrams` and
/// `ip_max_bytes`; the rest is dropped and counted.
#[test]
fn d_fragments() {
    let attack = Attack::send("fragments", 20_000, 12, &[]);
    let Some(o) = run_scenario("d_fragments", None, 0, attack, saw_every_frame) else {
        return;
    };
    o.expect_rate(19_800.0);
    let sent = o.sent();
    let datagrams = o.attack["datagrams"].as_u64().unwrap_or(0);
    let (captured, handled) = (o.counter("fragments"), o.signalling("fragments"));
    o.expect(captured >= sent && handled >= sent, || {
        format!("{captured} fragments captured, {handled} handled, {sent} sent")
    });
    let reassembled = o.signalling("reassembled");
    o.expect(reassembled == 0, || {
        format!("{reassembled} datagrams reassembled")
    });
    let dropped = o.delta("calltap_ipfrag_datagrams_dropped_total", &[]);
    o.expect(
        dropped >= datagrams.saturating_sub(IP_MAX_DATAGRAMS),
        || format!("{dropped} datagrams dropped of {datagrams} never completed"),
    );
    let held_bytes = o.gauge("calltap_ipfrag_held_bytes");
    o.expect(held_bytes <= IP_MAX_BYTES, || {
        format!("{held_bytes} bytes held in reassembly")
    });
    let held = format!(
        "{sent} fragments ({datagrams} datagrams) in {:.1} s ({:.0}/s)",
        o.wall(),
        o.pps()
    );
    let shed = format!(
        "datagrams dropped {dropped} (limit {}, timeout {}), held at the end {held_bytes} bytes (bound {IP_MAX_BYTES})",
        o.delta("calltap_ipfrag_datagrams_dropped_total", &[("reason", "limit")]),
        o.delta("calltap_ipfrag_datagrams_dropped_total", &[("reason", "timeout")]),
    );
    o.finish(&held, &shed);
}

/// (e) SIP over TCP in 1-byte segments with gaps: 50,000 segments a second for 12 s over
/// 2,000 connections to the proxy's SIP port, one byte in 50 never sent, so everything after
/// each gap waits out of order. Reassembly holds at most `tcp_max_segments` and
/// `tcp_max_bytes`; what is over is shed and counted, and no message is made up from it.
#[test]
fn e_tcp_dribble() {
    let attack = Attack::send("tcp-dribble", 50_000, 12, &["--flows", "2000"]);
    let Some(o) = run_scenario("e_tcp_dribble", None, 0, attack, saw_every_frame) else {
        return;
    };
    o.expect_rate(49_500.0);
    let sent = o.sent();
    let segments = o.signalling("tcp_segments");
    o.expect(segments >= sent, || {
        format!("{segments} TCP segments handled of {sent} sent")
    });
    o.expect(
        !o.cdrs.iter().any(|c| c["call_id"] == "dribble@198.19.0.1"),
        || "a call was made up from a stream with holes".to_string(),
    );
    let shed = o.delta("calltap_tcp_segments_shed_total", &[]);
    let gaps = o.delta("calltap_tcp_gaps_skipped_total", &[]);
    let dropped = o.delta("calltap_tcp_bytes_dropped_total", &[]);
    o.expect(shed + gaps > 0, || {
        format!("nothing shed or skipped of {sent} segments behind gaps")
    });
    let held_bytes = o.gauge("calltap_tcp_held_bytes");
    let held_segments = o.gauge("calltap_tcp_held_segments");
    o.expect(
        held_bytes <= TCP_MAX_BYTES && held_segments <= TCP_MAX_SEGMENTS,
        || format!("{held_bytes} bytes, {held_segments} segments held"),
    );
    let held = format!(
        "{sent} 1-byte segments over 2,000 connections in {:.1} s ({:.0}/s)",
        o.wall(),
        o.pps()
    );
    let shed = format!(
        "segments shed {shed}, gaps skipped {gaps}, bytes dropped {dropped}, held at the end {held_bytes} bytes / {held_segments} segments (bounds {TCP_MAX_BYTES} / {TCP_MAX_SEGMENTS})"
    );
    o.finish(&held, &shed);
}

/// (f) Spoofed BYEs (item 5): for each ordinary call, 500 ms after its 200 OK crossed the
/// wire, a BYE with its Call-ID and tags from 198.19.66.6 (off the dialog's path) and one
/// from the caller's address to 198.18.0.250 (no party has it). Neither ends the call: each
/// records to its real BYE, and its CDR lists both as rejected.
#[test]
fn f_spoofed_bye() {
    let calls = ORDINARY.total_calls().to_string();
    let attack = Attack::calltap_attack(
        &[
            "spoof-bye",
            "--calls",
            &calls,
            "--delay-ms",
            "500",
            "--seconds",
            "90",
        ],
        0,
        Duration::from_secs(100),
    );
    let Some(o) = run_scenario("f_spoofed_bye", None, 0, attack, |stats, before, m| {
        let rejected = |t: &str| metric(t, "calltap_sip_requests_rejected_total", &[]) as u64;
        stats["frames"]
            .as_u64()
            .is_some_and(|sent| rejected(m) >= rejected(before) + sent)
    }) else {
        return;
    };
    o.expect(o.attack["complete"] == true, || format!("{}", o.attack));
    let sent = o.sent();
    let rejected = o.delta("calltap_sip_requests_rejected_total", &[]);
    o.expect(rejected == sent, || {
        format!("{rejected} requests rejected of {sent} spoofed BYEs")
    });
    let mut unlisted = Vec::new();
    for cdr in ordinary(&o.cdrs) {
        let listed: Vec<&Value> = cdr["rejected_requests"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        for how in [Spoof::UnknownSource, Spoof::UnknownDestination] {
            let (field, addr) = match how {
                Spoof::UnknownSource => ("src", SPOOF_SOURCE.ip().to_string()),
                Spoof::UnknownDestination => ("dst", SPOOF_DESTINATION.ip().to_string()),
            };
            let found = listed.iter().any(|r| {
                r["method"] == "BYE"
                    && r["reason"] == how.reason()
                    && r[field].as_str().is_some_and(|a| a.starts_with(&addr))
            });
            if !found {
                unlisted.push(format!("{} {}", cdr["call_id"], how.reason()));
            }
        }
    }
    o.expect(unlisted.is_empty(), || {
        format!(
            "{} spoofed BYEs not in their call's rejected_requests, e.g. {:?}",
            unlisted.len(),
            unlisted.first()
        )
    });
    let held = format!("{sent} spoofed BYEs (2 per call, 500 ms after its answer)");
    let shed = format!("requests rejected {rejected}, ordinary calls ended by them 0 expected");
    o.finish(&held, &shed);
}

/// (g) 1,500 calls under an open-file limit of 1024 (item 3), as systemd's default
/// `LimitNOFILE` runs the packaged service: `calltap-loadgen` starts them within 3 s, each
/// 8 s long, so all are up at once for 5 s, while the ordinary calls go on. They suppress
/// silence, one 20 ms packet in 4 each way (30,000 packets/s for the 1,500: one debug-build
/// media worker records that; 150,000 without suppression is a release build's load), so the
/// recordings are written in parallel all along. Every call has its CDR and a recording
/// holding, sample for sample, the audio sent with silence between; no recording failed.
#[test]
fn g_calls_beyond_the_open_file_limit() {
    let mut spec = LoadSpec::new(1500, 8);
    spec.rate = 500.0;
    spec.uas_ip = "198.18.0.10".parse().expect("address");
    spec.media_port_base = 30_000;
    spec.run = 15;
    spec.send_every = 4;
    let load = spec.clone();
    let attack = Attack::loadgen(&spec, 10_000);
    let Some(o) = run_scenario(
        "g_open_files",
        Some(1024),
        u64::from(load.calls),
        attack,
        |stats, before, m| {
            let ended = |t: &str| metric(t, "calltap_calls_ended_total", &[]) as u64;
            stats["calls"]
                .as_u64()
                .is_some_and(|calls| ended(m) >= ended(before) + calls)
        },
    ) else {
        return;
    };
    o.expect(
        o.nofile
            .as_deref()
            .is_some_and(|l| l.split_whitespace().filter(|w| *w == "1024").count() == 2),
        || format!("calltap's open-file limit: {:?}", o.nofile),
    );
    o.expect(o.attack["complete"] == true, || format!("{}", o.attack));
    let failed = o.gauge("calltap_recordings_failed_total");
    o.expect(failed == 0, || format!("{failed} recordings failed"));
    let per_side = Some(u64::from(load.packets_per_direction()));
    let mut seen = vec![0u32; load.calls as usize];
    let mut bad = Vec::new();
    for cdr in &o.cdrs {
        let Some(k) = cdr["call_id"].as_str().and_then(|id| load.call_index(id)) else {
            continue;
        };
        seen[k as usize] += 1;
        let packets = (
            cdr["packets"]["caller"].as_u64(),
            cdr["packets"]["callee"].as_u64(),
        );
        if cdr["end_reason"] != "bye_caller" || packets != (per_side, per_side) {
            bad.push(format!(
                "call {k}: end {}, packets {packets:?}",
                cdr["end_reason"]
            ));
            continue;
        }
        let checked = cdr["recording"]["path"]
            .as_str()
            .context("no recording")
            .and_then(|path| read_wav(Path::new(path)))
            .and_then(|(_, samples)| check_recording(&load, k, &samples));
        if let Err(e) = checked {
            bad.push(format!("call {k}: {e:#}"));
        }
    }
    let recorded = seen.iter().filter(|n| **n == 1).count();
    o.expect(recorded == load.calls as usize, || {
        format!("{recorded} of {} calls have exactly one CDR", load.calls)
    });
    o.expect(bad.is_empty(), || {
        format!(
            "{} calls not recorded whole: {}",
            bad.len(),
            bad.iter().take(4).cloned().collect::<Vec<_>>().join("; ")
        )
    });
    let reopen = o
        .log
        .lines()
        .find(|l| l.contains("open files: the limit (1024)"))
        .unwrap_or("no open-file warning")
        .to_string();
    let held = format!(
        "{} calls ({} RTP packets, {:.0} frames/s at the peak) with calltap's open-file limit at 1024",
        load.calls,
        o.attack["rtp"].as_u64().unwrap_or(0),
        o.pps()
    );
    let shed = format!("recordings failed {failed}; calltap: {reopen}");
    o.finish(&held, &shed);
}
