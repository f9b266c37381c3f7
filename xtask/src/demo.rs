//! `cargo xtask demo`: the main job end to end. Brings up the SPAN lab, runs the release
//! `calltap` with XDP on the mirror port, places real sipp calls with audio both ways, then
//! prints what CallTap recorded and where, and cleans up.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use calltap_lab::{
    daemon::Daemon,
    sipp::{place_calls, CallPlan},
    Lab,
};

use crate::setup;

pub fn run(pairs: u8, calls: u32, seconds: u32, keep_lab: bool) -> Result<()> {
    setup::require_root("the demo")?;
    setup::run()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    println!("demo: building calltap (release)");
    if !Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "-p", "calltap"])
        .status()?
        .success()
    {
        bail!("cargo build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    std::env::set_var("CALLTAP_BIN", target.join("release/calltap"));
    let pairs = pairs.clamp(1, calltap_lab::netns::UAS_ADDRS);

    let guard = Lab::acquire().context("bringing the lab up")?;
    println!("demo: lab up (ns ct-uac 198.18.0.1 -> switch ct-sw -> ns ct-uas 198.18.0.2..; mirror -> m0 in ct-rec)");
    let data = root.join("lab-data/demo");
    let result = (|| -> Result<()> {
        let daemon = Daemon::start(&data, &["--source", "xdp"], &[])?;
        println!(
            "demo: calltap running with XDP on m0, data dir {}",
            data.display()
        );
        let plan = CallPlan {
            pairs,
            calls_per_pair: calls,
            packets: seconds as usize * 50,
        };
        println!(
            "demo: placing {} sipp calls ({} at a time, {} s of audio each way)",
            plan.total_calls(),
            pairs,
            seconds
        );
        let report = place_calls(&data.join("sipp"), &plan)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while daemon.cdrs().map(|c| c.len()).unwrap_or(0) < report.successful as usize
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let cdrs = daemon.cdrs()?;
        let summary = daemon.stop()?;
        println!(
            "\ndemo: sipp placed {} calls ({} failed); CallTap recorded {}:\n",
            report.successful,
            report.failed,
            cdrs.len()
        );
        println!(
            "{:<36} {:<28} {:<28} {:>7} {:>7} {:>7} {:>6}  recording",
            "call-id", "from", "to", "dur ms", "pkts->", "<-pkts", "worker"
        );
        for c in &cdrs {
            println!(
                "{:<36} {:<28} {:<28} {:>7} {:>7} {:>7} {:>6}  {}",
                c["call_id"].as_str().unwrap_or("?"),
                c["from"]["uri"].as_str().unwrap_or("?"),
                c["to"]["uri"].as_str().unwrap_or("?"),
                c["duration_ms"].as_u64().unwrap_or(0),
                c["packets"]["caller"].as_u64().unwrap_or(0),
                c["packets"]["callee"].as_u64().unwrap_or(0),
                c["worker"].as_u64().unwrap_or(0),
                c["recording"]["path"].as_str().unwrap_or("-"),
            );
        }
        println!("\ndemo: XDP counters {}", summary["counters"]);
        println!(
            "demo: CDR database {} (sqlite3 it: select call_id, end_reason, duration_ms from calls)",
            data.join("calltap.db").display()
        );
        println!("demo: CDR journal {}", data.join("calls.jsonl").display());
        println!(
            "demo: run summary {}",
            data.join("run-summary.json").display()
        );
        println!(
            "demo: recordings under {}",
            data.join("recordings").display()
        );
        println!(
            "demo: query it: while `calltap run` runs, the API is on [api] listen (default 127.0.0.1:8080): \
             TOKEN=$(calltap token create --role viewer --data-dir {d}); \
             curl -H \"Authorization: Bearer $TOKEN\" 'http://127.0.0.1:8080/api/v1/calls?party=caller1'; \
             metrics at /metrics, OpenAPI at /api/v1/openapi.json",
            d = data.display()
        );
        if cdrs.len() < report.successful as usize {
            bail!(
                "CallTap recorded {} of {} calls",
                cdrs.len(),
                report.successful
            );
        }
        Ok(())
    })();
    drop(guard);
    if !keep_lab {
        Lab::down()?;
        println!("demo: lab down");
    }
    result
}
