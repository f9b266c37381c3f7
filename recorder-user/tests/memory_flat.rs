//! Memory must not grow with the number of calls processed: state of ended calls is freed.
//! Its own test binary, so no other test's allocations blur the RSS readings.

mod support;

use calltap::config::Config;
use support::calls::{constant, write_pcap, Call};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn memory_stays_flat_over_a_long_replay() {
    let dir = std::env::temp_dir().join(format!("calltap-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // 600 calls one after another, each 1 s of audio both ways.
    let calls: Vec<Call> = (0..600u64)
        .map(|n| {
            let t = n * 1500;
            let mut c = Call::new(&format!("mem-{n}@test"));
            c.invite(t, "sendrecv", false)
                .respond(t + 10, 200, "OK", Some("sendrecv"))
                .ack(t + 20)
                .rtp(true, t + 30, 0, 50, constant(0xA0), |_| false)
                .rtp(false, t + 30, 0, 50, constant(0xA0), |_| false)
                .bye(t + 1100);
            c
        })
        .collect();
    let pcap = dir.join("many.pcap");
    write_pcap(&pcap, &calls.iter().collect::<Vec<_>>());
    drop(calls);
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.storage.data_dir = dir.join("data");
    cfg.capture.workers = 2;
    let mut readings = Vec::new();
    let mut n = 0;
    let summary = calltap::daemon::replay::replay(&cfg, &[pcap], |_| {
        n += 1;
        if n % 100 == 0 {
            readings.push(rss_kib());
        }
    });
    assert_eq!(summary.calls, 600);
    assert_eq!(readings.len(), 6, "{readings:?}");
    // After warm-up (first 100 calls), 500 more calls may not grow RSS by more than 2 MiB.
    let growth = readings[5] as i64 - readings[1] as i64;
    eprintln!(
        "RSS readings every 100 calls (KiB): {readings:?}; growth after warm-up {growth} KiB"
    );
    assert!(
        growth < 2048,
        "RSS grew {growth} KiB over 400 calls: {readings:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
