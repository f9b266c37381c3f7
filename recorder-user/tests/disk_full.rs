//! A full recordings disk: CallTap logs a clear error, keeps recording what fits, never crashes
//! (a memory-mapped file on a full disk would kill it with SIGBUS), every call still gets its
//! CDR, and the CDR of a call that lost audio says so.

mod support;

use std::process::Command;

use calltap::config::Config;
use support::calls::{constant, write_pcap, Call};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_recordings_disk_keeps_cdrs_and_does_not_crash() {
    if !calltap_lab::root::require_root("full_recordings_disk_keeps_cdrs_and_does_not_crash") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("calltap-diskfull-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let recordings = dir.join("data/recordings");
    std::fs::create_dir_all(&recordings).expect("dirs");
    // Room for two 10 s recordings (320 KB each), not four.
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=700k", "calltap-full"])
        .arg(&recordings)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount tmpfs");
    let _mount = Mount(recordings.clone());

    // One after another: the first two fit, the third fills the disk part way, the fourth
    // finds it full.
    let calls: Vec<Call> = (1..=4u8)
        .map(|n| {
            let mut c = Call::new(&format!("full-{n}@test")).callee_at([198, 18, 2, n]);
            let t = u64::from(n - 1) * 11_000;
            c.invite(t, "sendrecv", false)
                .respond(t + 100, 200, "OK", Some("sendrecv"))
                .ack(t + 110)
                .rtp(true, t + 200, 0, 500, constant(0xA0), |_| false)
                .bye(t + 10_200);
            c
        })
        .collect();
    // Different callers too, so the four calls share no endpoint.
    let pcap = dir.join("calls.pcap");
    write_pcap(&pcap, &calls.iter().collect::<Vec<_>>());
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.storage.data_dir = dir.join("data");
    cfg.capture.workers = 1;
    let mut cdrs = Vec::new();
    let summary = calltap::daemon::replay::replay(&cfg, &[pcap], |c| cdrs.push(c.clone()));
    assert_eq!(cdrs.len(), 4, "every call keeps its CDR");
    cdrs.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    for c in &cdrs[..2] {
        assert_eq!(c.packets.caller, 500);
        let rec = c.recording.as_ref().expect("recording");
        assert_eq!(rec.error, None, "{}", c.call_id);
        let mut wav =
            hound::WavReader::open(&rec.path).expect("the recordings that fit are valid WAVs");
        assert_eq!(wav.spec().channels, 2);
        let audio = wav
            .samples::<i16>()
            .step_by(2)
            .filter(|s| s.as_ref().is_ok_and(|v| *v != 0))
            .count();
        assert_eq!(audio, 500 * 160, "{}: all of the caller's audio", c.call_id);
    }
    // The third lost the end of its audio: the CDR says why, and what is there is a WAV.
    let third = cdrs[2].recording.as_ref().expect("a partial recording");
    assert!(
        third
            .error
            .as_deref()
            .is_some_and(|e| e.contains("No space left")),
        "{third:?}"
    );
    hound::WavReader::open(&third.path).expect("the partial recording is a valid WAV");
    // The fourth has no file at all: reported missing, not silent.
    assert!(cdrs[3].recording.is_none(), "{:?}", cdrs[3].recording);
    assert!(
        cdrs[3]
            .recording_failed
            .as_deref()
            .is_some_and(|e| e.contains("No space left")),
        "{:?}",
        cdrs[3].recording_failed
    );
    let failed: u64 = summary.workers.iter().map(|w| w.recordings_failed).sum();
    assert_eq!(failed, 2, "the third and the fourth call");
    drop(_mount);
    let _ = std::fs::remove_dir_all(&dir);
}
