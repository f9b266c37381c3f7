//! Issue #14 item 1, reproduced: real-world SIP users made recording names that lost their
//! `.wav` (an E.164 callee) or their uuid (four calls to a 72-character user in one second
//! left one file for four CDRs). Every call must get a file of its own, named `*.wav`, holding
//! its own audio, and a file already at a recording's name must be left alone.

mod support;

use std::path::{Path, PathBuf};

use calltap::{
    config::Config,
    pipeline::call_uuid,
    store::paths::{expand, PathFields},
};
use calltap_sip::dialog::CallRef;
use support::calls::{constant, write_pcap, Call};

const LONG_USER: &str = "agent.queue.sales.emea.inbound.priority.customers.escalation.line";

fn samples(path: &Path) -> Vec<i16> {
    hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("{}: not a WAV: {e}", path.display()))
        .into_samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect()
}

#[test]
fn long_and_hostile_users_in_the_same_second_each_get_their_own_wav() {
    let dir = std::env::temp_dir().join(format!("calltap-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // (from, to) of each call; all start within 600 ms of each other.
    let users: Vec<(String, String)> = vec![
        ("alice1".into(), format!("{LONG_USER}1")),
        ("alice1".into(), format!("{LONG_USER}2")),
        ("alice1".into(), format!("{LONG_USER}3")),
        ("alice1".into(), format!("{LONG_USER}4")),
        ("alice1".into(), "+49151123456781".into()),
        (
            "+4930123456".into(),
            "+4915112345678;phone-context=+49.example.com".into(),
        ),
        ("..%2F..%2Fetc".into(), "x".repeat(300)),
    ];
    let calls: Vec<Call> = users
        .iter()
        .enumerate()
        .map(|(i, (from, to))| {
            let n = i as u8 + 1;
            let mut c = Call::new(&format!("names-{n}@test"))
                .callee_at([198, 18, 20, n])
                .users(from, to);
            let t = u64::from(n) * 80;
            c.invite(t, "sendrecv", false)
                .respond(t + 20, 200, "OK", Some("sendrecv"))
                .ack(t + 30)
                .rtp(true, t + 40, 0, 50, constant(0x80 + n), |_| false)
                .bye(t + 1100);
            c
        })
        .collect();
    let pcap = dir.join("calls.pcap");
    write_pcap(&pcap, &calls.iter().collect::<Vec<_>>());
    let mut cfg = Config::load_with_env(None, &[]).expect("default config");
    cfg.storage.data_dir = dir.join("data");
    cfg.capture.workers = 2;

    // Someone else's file already where the first call's recording goes (replay numbers calls
    // from 1 and stamps them with their INVITE's capture time).
    let first_start = 1_700_000_000_000_000_000u64 + 80 * 1_000_000;
    let taken = expand(
        &cfg.storage.recordings_dir(),
        &cfg.storage.path_template,
        &PathFields {
            start_secs: first_start / 1_000_000_000,
            call_id: "names-1@test",
            from_user: "alice1",
            to_user: &users[0].1,
            uuid: &call_uuid(first_start, CallRef(1), 0),
        },
    );
    std::fs::create_dir_all(taken.parent().expect("dir")).expect("dirs");
    std::fs::write(&taken, b"not ours").expect("write");

    let mut cdrs = Vec::new();
    let summary = calltap::daemon::replay::replay(&cfg, &[pcap], |c| cdrs.push(c.clone()));
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(cdrs.len(), users.len());
    let mut paths: Vec<PathBuf> = Vec::new();
    for cdr in &cdrs {
        let n: u8 = cdr.call_id["names-".len()..cdr.call_id.len() - "@test".len()]
            .parse()
            .expect("call number");
        let rec = cdr
            .recording
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no recording {:?}", cdr.call_id, cdr.recording_failed));
        let name = rec.path.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.ends_with(".wav"), "{name}");
        assert!(name.len() <= 255, "{name}");
        assert!(
            name.contains(&cdr.uuid),
            "{name}: the uuid {} is in the name",
            cdr.uuid
        );
        assert!(
            rec.path.starts_with(cfg.storage.recordings_dir()),
            "{}",
            rec.path.display()
        );
        // Its own audio: the constant of call n on the caller's channel, 50 packets of it.
        let left: Vec<i16> = samples(&rec.path).into_iter().step_by(2).collect();
        let want = calltap_media::codec::g711::ulaw_to_linear(0x80 + n);
        assert_eq!(
            left.iter().filter(|&&s| s == want).count(),
            50 * 160,
            "{}: its own audio",
            cdr.call_id
        );
        paths.push(rec.path.clone());
    }
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), users.len(), "one file per call: {paths:?}");
    assert_eq!(std::fs::read(&taken).expect("read"), b"not ours");
    let first = cdrs
        .iter()
        .find(|c| c.call_id == "names-1@test")
        .and_then(|c| c.recording.as_ref())
        .expect("first call recorded");
    assert_eq!(
        first.path,
        taken.with_file_name(format!(
            "{}-1.wav",
            taken.file_stem().and_then(|s| s.to_str()).expect("stem")
        )),
        "a taken name gets a suffix"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
