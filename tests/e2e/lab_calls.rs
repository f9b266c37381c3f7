//! The call mix a contact centre produces, through the SPAN lab with XDP: plain calls, RFC 4733
//! DTMF, hold and resume by re-INVITE, a CANCELled call, a busy callee and a call that never
//! sends BYE. Every call must have a CDR with the right end reason, and every answered call a
//! WAV holding, sample for sample, what each side's sipp sent.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use calltap_lab::{
    daemon::Daemon,
    root::{require_root, require_tool},
    sipp::{
        after_hold, callee_tone, caller_tone, pair_addrs, place_pairs, tone_pcm, PairPlan,
        Scenario, DTMF_DIGITS, HOLD_MS,
    },
    Lab,
};
use serde_json::Value;

/// Where `needle` sits in `channel`, sample-exact.
fn find(channel: &[i16], needle: &[i16]) -> Option<usize> {
    channel.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn contact_centre_call_mix() {
    if !require_root("lab_calls") || !require_tool("lab_calls", "sipp") {
        return;
    }
    let _lab = Lab::acquire().expect("lab up");
    let dir = std::env::temp_dir().join("calltap-e2e-calls");
    let _ = std::fs::remove_dir_all(&dir);
    let packets = 50;
    let plan = [
        PairPlan {
            scenario: Scenario::Dtmf,
            calls: 10,
        },
        PairPlan {
            scenario: Scenario::Basic,
            calls: 10,
        },
        PairPlan {
            scenario: Scenario::Basic,
            calls: 10,
        },
        PairPlan {
            scenario: Scenario::Dtmf,
            calls: 10,
        },
        PairPlan {
            scenario: Scenario::Hold,
            calls: 4,
        },
        PairPlan {
            scenario: Scenario::Cancel,
            calls: 3,
        },
        PairPlan {
            scenario: Scenario::Busy,
            calls: 3,
        },
        PairPlan {
            scenario: Scenario::NoBye,
            calls: 1,
        },
    ];
    let total: u32 = plan.iter().map(|p| p.calls).sum();
    assert!(total >= 50);

    let daemon = Daemon::start(
        &dir.join("live"),
        &["--source", "xdp", "--workers", "2"],
        // A call without BYE ends when its media stops: 3 s here instead of 5 minutes.
        &[("CALLTAP_CALLS_MEDIA_TIMEOUT_S", "3")],
    )
    .expect("calltap run");
    let report = place_pairs(&dir.join("sipp"), &plan, packets).expect("sipp calls");
    assert_eq!(
        report.failed,
        0,
        "sipp reported failed calls; see {}",
        dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.cdrs().map(|c| c.len()).unwrap_or(0) < total as usize && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let cdrs = daemon.cdrs().expect("calls.jsonl");
    let summary = daemon.stop().expect("calltap stopped cleanly");
    assert_eq!(
        cdrs.len(),
        total as usize,
        "one CDR per call; summary {summary}"
    );
    assert_eq!(summary["counters"]["ring_full"], 0);

    let caller = tone_pcm(&caller_tone(packets));
    let callee = tone_pcm(&callee_tone(packets));
    let caller2 = tone_pcm(&after_hold(&caller_tone(packets), HOLD_MS));
    let callee2 = tone_pcm(&after_hold(&callee_tone(packets), HOLD_MS));
    let mut per_scenario: BTreeMap<String, usize> = BTreeMap::new();
    for (i, p) in plan.iter().enumerate() {
        let ip = pair_addrs(i as u8).uas_ip;
        let calls: Vec<&Value> = cdrs.iter().filter(|c| c["dst_ip"] == ip.as_str()).collect();
        assert_eq!(
            calls.len() as u32,
            p.calls,
            "{:?} calls to {ip}",
            p.scenario
        );
        *per_scenario.entry(format!("{:?}", p.scenario)).or_default() += calls.len();
        for cdr in calls {
            let id = cdr["call_id"].as_str().unwrap_or("?");
            assert_eq!(
                cdr["end_reason"],
                p.scenario.end_reason(),
                "{:?} {id}: {cdr}",
                p.scenario
            );
            if !p.scenario.answered() {
                assert!(cdr["answer"].is_null(), "{id}: never answered");
                let audio = cdr["packets"]["caller"].as_u64().unwrap_or(1)
                    + cdr["packets"]["callee"].as_u64().unwrap_or(1);
                assert_eq!(audio, 0, "{id}: no audio in an unanswered call");
                continue;
            }
            let path = PathBuf::from(
                cdr["recording"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{id}: no recording")),
            );
            let mut wav =
                hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let samples: Vec<i16> = wav
                .samples::<i16>()
                .collect::<Result<_, _>>()
                .expect("samples");
            let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
            let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
            let mut parts = vec![(&left, &caller, "caller"), (&right, &callee, "callee")];
            if p.scenario == Scenario::Hold {
                parts.push((&left, &caller2, "caller after hold"));
                parts.push((&right, &callee2, "callee after hold"));
            }
            let mut expected_nonzero = [0usize; 2];
            let mut spans: Vec<(usize, usize, &str)> = Vec::new();
            for (channel, want, what) in parts {
                let at = find(channel, want).unwrap_or_else(|| {
                    panic!(
                        "{:?} {id}: {what} audio not in the WAV sample-exact",
                        p.scenario
                    )
                });
                spans.push((at, at + want.len(), what));
                expected_nonzero[usize::from(std::ptr::eq(channel, &right))] +=
                    want.iter().filter(|s| **s != 0).count();
            }
            // Nothing else was sent, so nothing else may be heard (DTMF events are not audio).
            let nonzero = |c: &[i16]| c.iter().filter(|s| **s != 0).count();
            assert_eq!(
                nonzero(&left),
                expected_nonzero[0],
                "{:?} {id}: stray audio on the caller channel",
                p.scenario
            );
            assert_eq!(
                nonzero(&right),
                expected_nonzero[1],
                "{:?} {id}: stray audio on the callee channel",
                p.scenario
            );
            if p.scenario == Scenario::Hold {
                // The resumed audio comes after the hold, not glued to the first part.
                let first_end = spans[0].1;
                let resumed = spans[2].0;
                let gap_ms = (resumed.saturating_sub(first_end)) as u64 / 8;
                assert!(
                    gap_ms + 200 >= HOLD_MS,
                    "{id}: resumed audio {gap_ms} ms after the first part"
                );
            }
            if p.scenario == Scenario::Dtmf {
                let digits: String = cdr["dtmf"]
                    .as_array()
                    .expect("dtmf")
                    .iter()
                    .filter_map(|d| d["digit"].as_str())
                    .collect();
                assert_eq!(digits, DTMF_DIGITS, "{id}: {}", cdr["dtmf"]);
                assert!(cdr["dtmf"]
                    .as_array()
                    .expect("dtmf")
                    .iter()
                    .all(|d| d["side"] == "caller"));
            }
        }
    }
    eprintln!("lab call mix: {per_scenario:?}");
}
