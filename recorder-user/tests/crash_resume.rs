//! Crash resume through the real pipeline, offline: synthetic calls are fed to the signalling
//! and media workers as `calltap run` drives them (with the active-call journal on), the
//! workers are dropped mid-call as if the process had been killed, and a new set of workers
//! (fewer of them) takes the journaled calls over: one call goes on, one hung up while the
//! recorder was down, one had hung up just before the kill. The result is compared with one
//! run over the same packets that never crashed.

mod support;

use std::path::{Path, PathBuf};

use calltap::{
    capture::Record,
    classify::{classify_frame, SharedMediaTable, UserTables},
    config::Config,
    daemon::{
        store::SPOOL_DIR,
        workers::{Durability, Workers},
    },
    pipeline::{
        media::MediaWorker, recording::RecordingAction, signalling::SignallingWorker, Control,
    },
    rules::{LiveRules, RuleSet},
    store::{
        callstore::{recover_journaled, CallStore, JournalWriter, ACTIVE_DIR},
        cdr::Cdr,
    },
};
use calltap_common::SIGNALLING_RING;
use support::calls::{Call, Packet};

const BASE: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("calltap-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The signalling and media workers of one `calltap run`, driven inline.
struct Run {
    tables: UserTables,
    sig: SignallingWorker<SharedMediaTable>,
    workers: Vec<MediaWorker>,
    queue: Vec<(u32, Control)>,
    done: Vec<Cdr>,
    cdrs: Vec<Cdr>,
    last_tick: u64,
    /// (worker, call) of every call started or taken over, in order.
    calls: Vec<(u32, calltap_sip::dialog::CallRef)>,
    /// The active-call journal, when on: a call leaves it once its CDR is taken.
    journal: Option<JournalWriter>,
}

impl Run {
    fn new(data: &Path, workers: u32, store: Option<&CallStore>) -> Run {
        let mut cfg = Config::load_with_env(None, &[]).expect("default config");
        cfg.storage.data_dir = data.to_path_buf();
        cfg.capture.workers = workers;
        let table = SharedMediaTable::default();
        let tables = UserTables::new(cfg.capture.xdp(), &cfg.capture.sip_ports, table.clone());
        // Inline: the file system work happens at once, so the kill below comes after it.
        let journal = store.map(|s| JournalWriter::inline(s.clone()));
        // As `calltap run`: buffered audio kept in the data directory across a crash.
        let durability = Durability {
            spool_dir: store.map(|_| data.join(SPOOL_DIR)),
            journal: journal.clone(),
            // Fed as fast as it reads: wait for the disk as a replay does, so nothing is shed.
            backpressure: true,
        };
        let rules = LiveRules::new(RuleSet::default_only(cfg.recording.default));
        let Workers {
            signalling: sig,
            media,
        } = Workers::new(&cfg, table, rules, durability);
        Run {
            tables,
            sig,
            workers: media,
            queue: Vec::new(),
            done: Vec::new(),
            cdrs: Vec::new(),
            last_tick: 0,
            calls: Vec::new(),
            journal,
        }
    }

    fn deliver(&mut self) {
        for (w, msg) in self.queue.drain(..) {
            match &msg {
                Control::Start(s) => self.calls.push((w, s.call)),
                Control::Restore(r) => self.calls.push((w, r.call)),
                _ => {}
            }
            if let Some(worker) = self.workers.get_mut(w as usize) {
                worker.control(msg, &mut self.done);
            }
        }
        self.take_cdrs();
    }

    /// The 200 ms tick of `calltap run` (capture clock).
    fn tick(&mut self, now: u64) {
        self.sig.tick(now, &mut self.queue);
        self.deliver();
        let mut timeouts = Vec::new();
        for w in self.workers.iter_mut() {
            w.tick(now, &mut timeouts);
            w.reap(now, &mut self.done);
        }
        for t in timeouts {
            self.sig.media_timeout(t, &mut self.queue);
        }
        self.deliver();
    }

    fn feed(&mut self, packets: &[&Packet]) {
        for p in packets {
            let ts = BASE + p.at_ns;
            while self.last_tick + 200 * MS <= ts {
                self.last_tick = if self.last_tick == 0 {
                    ts
                } else {
                    self.last_tick + 200 * MS
                };
                let now = self.last_tick;
                self.tick(now);
            }
            let (v, meta) = classify_frame(&p.frame, &self.tables, ts, p.frame.len() as u32, 0);
            let rec = Record {
                meta,
                frame: &p.frame,
            };
            if v.target == SIGNALLING_RING {
                self.sig.handle(&rec, &mut self.queue);
                self.deliver();
            } else if let Some(w) = self.workers.get_mut(v.target as usize) {
                if !w.packet(&rec) {
                    w.unknown();
                }
            }
        }
    }

    /// Ticks on (no packets) until `until`.
    fn idle(&mut self, until: u64) {
        while self.last_tick + 200 * MS <= until {
            self.last_tick += 200 * MS;
            let now = self.last_tick;
            self.tick(now);
        }
    }

    /// Takes the finished calls' CDRs as `calltap run`'s CDR thread does: sealed (fsync'd,
    /// sha256 filled in), then the call leaves the journal.
    fn take_cdrs(&mut self) {
        for mut cdr in self.done.drain(..) {
            cdr.seal_recording();
            if let Some(j) = &self.journal {
                j.remove(&cdr.uuid).expect("journal remove");
            }
            self.cdrs.push(cdr);
        }
    }

    /// Graceful end: close what is open.
    fn finish(mut self) -> Vec<Cdr> {
        self.sig
            .finish(self.last_tick, "capture_end", &mut self.queue);
        self.deliver();
        for w in self.workers.iter_mut() {
            w.reap(u64::MAX, &mut self.done);
        }
        self.take_cdrs();
        self.cdrs
    }
}

/// Packet i's payload: a mu-law ramp that never decodes to zero, so every sample tells where
/// it came from.
fn ramp(offset: u8) -> impl Fn(u32) -> Vec<u8> {
    move |i| {
        (0..160u32)
            .map(|k| 0x10 + ((i * 7 + k + u32::from(offset)) % 0x60) as u8)
            .collect()
    }
}

fn samples(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).expect("open wav");
    r.samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("samples")
}

fn cdr_of<'a>(cdrs: &'a [Cdr], call_id: &str) -> &'a Cdr {
    let mine: Vec<&Cdr> = cdrs.iter().filter(|c| c.call_id == call_id).collect();
    assert_eq!(mine.len(), 1, "one CDR for {call_id}: {mine:#?}");
    mine[0]
}

/// Calls with a journal (each has one or two files, `<uuid>.0.json` / `<uuid>.1.json`).
fn journal_calls(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .filter_map(|n| n.split('.').next().map(str::to_string))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        })
        .unwrap_or(0)
}

#[test]
fn killed_mid_call_resumes_the_same_wav_and_closes_calls_that_ended_meanwhile() {
    // A: talks 1.02-5 s, the recorder dies at 5.1 s and is back at 7.5 s, A talks on 8-15 s
    // (same SSRC, sequence and timestamps running on) and hangs up at 15 s.
    let mut a = Call::new("resume-a@test");
    a.invite(0, "sendrecv", false)
        .respond(100, 180, "Ringing", None)
        .respond(1000, 200, "OK", Some("sendrecv"))
        .ack(1010)
        .rtp(true, 1020, 0, 200, ramp(0), |_| false)
        .rtp(false, 1020, 0, 200, ramp(33), |_| false)
        .rtp(true, 8000, 349, 350, ramp(0), |_| false)
        .rtp(false, 8000, 349, 350, ramp(33), |_| false)
        .bye(15_000);
    // B: the same until the crash, then hangs up while the recorder is down.
    let mut b = Call::new("resume-b@test").callee_at([198, 18, 3, 1]);
    b.invite(10, "sendrecv", false)
        .respond(110, 180, "Ringing", None)
        .respond(1000, 200, "OK", Some("sendrecv"))
        .ack(1010)
        .rtp(true, 1020, 0, 200, ramp(5), |_| false)
        .rtp(false, 1020, 0, 200, ramp(77), |_| false)
        .bye(6000);
    // C: hangs up just before the crash; the journal written at the 5 s flush holds its end,
    // but the worker is killed before the end grace period is over and its CDR is written.
    let mut c = Call::new("resume-c@test").callee_at([198, 18, 4, 1]);
    c.invite(20, "sendrecv", false)
        .respond(120, 180, "Ringing", None)
        .respond(1000, 200, "OK", Some("sendrecv"))
        .ack(1010)
        .rtp(true, 1020, 0, 185, ramp(9), |_| false)
        .rtp(false, 1020, 0, 185, ramp(99), |_| false)
        .bye(4750);
    // D: put on hold at 3 s (re-INVITE sendonly, no audio since), still on hold through the
    // outage and after it: silence is expected, so it is not closed as recorder_restart; it
    // resumes after the restart and hangs up at 14 s.
    let mut d = Call::new("resume-d@test").callee_at([198, 18, 5, 1]);
    d.invite(30, "sendrecv", false)
        .respond(130, 180, "Ringing", None)
        .respond(1000, 200, "OK", Some("sendrecv"))
        .ack(1010)
        .rtp(true, 1020, 0, 99, ramp(3), |_| false)
        .invite(3000, "sendonly", true)
        .respond(3010, 200, "OK", Some("recvonly"))
        .ack(3020)
        .invite(12_000, "sendrecv", true)
        .respond(12_010, 200, "OK", Some("sendrecv"))
        .ack(12_020)
        .rtp(true, 12_040, 550, 90, ramp(3), |_| false)
        .bye(14_000);
    let mut all: Vec<&Packet> = a
        .packets
        .iter()
        .chain(b.packets.iter())
        .chain(c.packets.iter())
        .chain(d.packets.iter())
        .collect();
    all.sort_by_key(|p| p.at_ns);
    let crash_at = 5100 * MS;
    let back_at = BASE + 7500 * MS;
    let before: Vec<&Packet> = all.iter().copied().filter(|p| p.at_ns < crash_at).collect();
    // What the recorder sees after it is back (B's BYE was sent while it was down).
    let after: Vec<&Packet> = all
        .iter()
        .copied()
        .filter(|p| BASE + p.at_ns >= back_at)
        .collect();

    // The reference: a recorder that never went down, seeing the same packets.
    let ref_dir = scratch("reference");
    let mut reference = Run::new(&ref_dir, 2, None);
    let seen: Vec<&Packet> = before.iter().chain(after.iter()).copied().collect();
    reference.feed(&seen);
    let ref_cdrs = reference.finish();

    // The run that is killed.
    let dir = scratch("crash");
    let active = dir.join(ACTIVE_DIR);
    let store = CallStore::open(&active).expect("store");
    let mut first = Run::new(&dir, 2, Some(&store));
    first.feed(&before);
    first.idle(BASE + crash_at);
    assert!(first.cdrs.is_empty(), "no CDR written yet");
    assert_eq!(journal_calls(&active), 4, "every call journaled");
    let last_tick = first.last_tick;
    // kill -9: no finish, no CDR, the WAV maps just go away.
    drop(first);

    // The restarted run, with one media worker fewer.
    let loaded = store.load();
    assert_eq!((loaded.calls.len(), loaded.corrupt), (4, 0));
    assert_eq!(loaded.last_alive_ns, Some(last_tick));
    // As `calltap run`: the audio the killed run had buffered goes into its recordings first.
    let recovered = recover_journaled(&dir.join(SPOOL_DIR), &loaded.calls);
    assert!(
        recovered.buffers > 0 && recovered.errors == 0,
        "{recovered:?}"
    );
    let mut second = Run::new(&dir, 1, Some(&store));
    second.sig.restore(loaded, back_at, &mut second.queue);
    second.deliver();
    second.last_tick = back_at;
    assert_eq!(second.sig.stats.calls_restored, 3);
    assert_eq!(second.sig.stats.calls_restored_ended, 1);
    second.feed(&after);
    second.idle(BASE + 16_000 * MS);
    let cdrs = second.finish();
    assert_eq!(cdrs.len(), 4, "{cdrs:#?}");
    assert_eq!(
        journal_calls(&active),
        0,
        "journal emptied as CDRs are handed off"
    );

    // A: ended by its BYE, one restart gap, the same recording as the reference, byte for byte.
    let ca = cdr_of(&cdrs, "resume-a@test");
    let ra = cdr_of(&ref_cdrs, "resume-a@test");
    assert_eq!(ca.end_reason, "bye_caller");
    assert_eq!(ca.uuid, ra.uuid);
    assert_eq!(ca.end_ns, ra.end_ns);
    assert_eq!(ca.restart_gaps.len(), 1, "{:?}", ca.restart_gaps);
    let gap = &ca.restart_gaps[0];
    assert_eq!((gap.from_ns, gap.to_ns), (last_tick, back_at));
    assert_eq!(gap.ms, (back_at - last_tick) / MS);
    assert!(ra.restart_gaps.is_empty());
    let (wa, wr) = (
        ca.recording.as_ref().expect("A recording"),
        ra.recording.as_ref().expect("reference recording"),
    );
    assert!(wa.path.starts_with(&dir), "{}", wa.path.display());
    assert_eq!(
        wa.path.strip_prefix(&dir).ok(),
        wr.path.strip_prefix(&ref_dir).ok(),
        "same file name"
    );
    assert_eq!((wa.bytes, &wa.sha256), (wr.bytes, &wr.sha256));
    assert_eq!(
        std::fs::read(&wa.path).expect("A wav"),
        std::fs::read(&wr.path).expect("reference wav")
    );
    // ... which has the audio at the right places and silence over the outage.
    let s = samples(&wa.path);
    // Sample index (interleaved) of a time from call start (the INVITE, at 0).
    let at = |ms: u64| (ms * 8) as usize * 2;
    assert!(s[at(2000)..at(4900)].iter().all(|&x| x != 0));
    assert!(
        s[at(5200)..at(7900)].iter().all(|&x| x == 0),
        "silence over the gap"
    );
    assert!(s[at(8100)..at(14_900)].iter().all(|&x| x != 0));
    // Packets of the outage are the recorder's gap, not network loss.
    for st in &ca.streams {
        assert_eq!(st.lost, 0, "{st:?}");
    }

    // B: ended while the recorder was down: closed after the grace period as recorder_restart,
    // ending where the earlier run last knew it, with its audio from before the crash.
    let cb = cdr_of(&cdrs, "resume-b@test");
    let rb = cdr_of(&ref_cdrs, "resume-b@test");
    assert_eq!(cb.end_reason, "recorder_restart");
    assert_eq!(cb.uuid, rb.uuid);
    assert_eq!(cb.end_ns, last_tick);
    assert_eq!(cb.worker, 0, "moved to the remaining worker");
    let (sb, srb) = (
        samples(&cb.recording.as_ref().expect("B recording").path),
        samples(&rb.recording.as_ref().expect("reference B").path),
    );
    assert!(sb.len() > at(4900));
    assert_eq!(sb[..], srb[..sb.len()], "B's audio before the crash intact");
    assert!(sb[at(1100)..at(4900)].iter().all(|&x| x != 0));

    // C: its journaled end is honoured: the CDR is the one the reference wrote.
    let cc = cdr_of(&cdrs, "resume-c@test");
    let rc = cdr_of(&ref_cdrs, "resume-c@test");
    assert_eq!(cc.end_reason, "bye_caller");
    assert_eq!(
        (cc.end_ns, cc.uuid.as_str()),
        (BASE + 4750 * MS, rc.uuid.as_str())
    );
    assert!(cc.restart_gaps.is_empty(), "it had ended: no gap");
    let (wc, wrc) = (
        cc.recording.as_ref().expect("C recording"),
        rc.recording.as_ref().expect("reference C"),
    );
    assert_eq!((wc.bytes, &wc.sha256), (wrc.bytes, &wrc.sha256));

    // D: on hold through the outage, so not closed by the grace period; the resume re-INVITE
    // and the BYE match the restored dialog; same recording as the reference.
    let cd = cdr_of(&cdrs, "resume-d@test");
    let rd = cdr_of(&ref_cdrs, "resume-d@test");
    assert_eq!(cd.end_reason, "bye_caller", "{cd:#?}");
    assert_eq!(cd.end_ns, rd.end_ns);
    assert_eq!(cd.restart_gaps.len(), 1);
    let (wd, wrd) = (
        cd.recording.as_ref().expect("D recording"),
        rd.recording.as_ref().expect("reference D"),
    );
    assert_eq!((wd.bytes, &wd.sha256), (wrd.bytes, &wrd.sha256));

    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&ref_dir);
}

/// Operator recording control (as the API sends it) to the `n`th call this run saw.
fn control(run: &mut Run, n: usize, action: RecordingAction, at_ms: u64) {
    let (w, call) = run.calls[n];
    let msg = Control::Recording {
        call,
        action,
        ts_ns: BASE + at_ms * MS,
    };
    run.workers[w as usize].control(msg, &mut run.done);
}

/// A call paused by an operator before the crash stays paused after the restart (the journal
/// keeps the control events and replays them into the restored call), and a resume after the
/// restart brings its audio back: the file equals that of a recorder that never went down.
#[test]
fn a_paused_call_stays_paused_across_a_restart() {
    let mut a = Call::new("paused@test");
    a.invite(0, "sendrecv", false)
        .respond(100, 180, "Ringing", None)
        .respond(1000, 200, "OK", Some("sendrecv"))
        .ack(1010)
        .rtp(true, 1020, 0, 650, ramp(0), |_| false)
        .rtp(false, 1020, 0, 650, ramp(33), |_| false)
        .bye(15_000);
    let (pause_ms, crash_ms, back_ms, resume_ms) = (2000, 5100, 7500, 10_000);
    let part = |from: u64, to: u64| -> Vec<&Packet> {
        a.packets
            .iter()
            .filter(|p| p.at_ns >= from * MS && p.at_ns < to * MS)
            .collect()
    };

    // The reference never goes down but misses the same packets.
    let ref_dir = scratch("paused-reference");
    let mut reference = Run::new(&ref_dir, 1, None);
    reference.feed(&part(0, pause_ms));
    control(&mut reference, 0, RecordingAction::Pause, pause_ms);
    reference.feed(&part(pause_ms, crash_ms));
    reference.feed(&part(back_ms, resume_ms));
    control(&mut reference, 0, RecordingAction::Resume, resume_ms);
    reference.feed(&part(resume_ms, 20_000));
    let ref_cdrs = reference.finish();

    let dir = scratch("paused");
    let active = dir.join(ACTIVE_DIR);
    let store = CallStore::open(&active).expect("store");
    let mut first = Run::new(&dir, 1, Some(&store));
    first.feed(&part(0, pause_ms));
    control(&mut first, 0, RecordingAction::Pause, pause_ms);
    first.feed(&part(pause_ms, crash_ms));
    first.idle(BASE + crash_ms * MS);
    drop(first);

    let mut second = Run::new(&dir, 1, Some(&store));
    second
        .sig
        .restore(store.load(), BASE + back_ms * MS, &mut second.queue);
    second.deliver();
    second.last_tick = BASE + back_ms * MS;
    second.feed(&part(back_ms, resume_ms));
    control(&mut second, 0, RecordingAction::Resume, resume_ms);
    second.feed(&part(resume_ms, 20_000));
    let cdrs = second.finish();

    let (c, r) = (
        cdr_of(&cdrs, "paused@test"),
        cdr_of(&ref_cdrs, "paused@test"),
    );
    let actions = |c: &Cdr| -> Vec<String> {
        c.recording_events
            .iter()
            .map(|e| e.action.clone())
            .collect()
    };
    assert_eq!(actions(c), ["pause", "resume"], "{:?}", c.recording_events);
    assert_eq!(actions(c), actions(r));
    let s = samples(&c.recording.as_ref().expect("recording").path);
    let at = |ms: u64| (ms * 8) as usize * 2;
    assert!(
        s[at(1100)..at(1900)].iter().all(|&x| x != 0),
        "audio before the pause"
    );
    assert!(
        s[at(2100)..at(9900)].iter().all(|&x| x == 0),
        "paused before the crash, still paused after it"
    );
    // 650 packets from 1.02 s: the audio ends at 14.02 s.
    assert!(s[at(10_100)..at(13_900)].iter().all(|&x| x != 0), "resumed");
    assert_eq!(
        s,
        samples(&r.recording.as_ref().expect("reference").path),
        "the same file as the recorder that never went down"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&ref_dir);
}

/// Found by the test above: two calls behind one caller endpoint (a PBX or SBC sending all its
/// calls' media from one address), on different workers; a re-INVITE (hold) of the call that
/// claimed the endpoint last cleared its "shared" mark, so the other call's audio to that endpoint went
/// to the wrong worker and into the wrong recording. The mark now survives the re-INVITE.
#[test]
fn reinvite_keeps_a_shared_endpoint_shared() {
    let mut first = Call::new("shared-1@test");
    first
        .invite(0, "sendrecv", false)
        .respond(100, 200, "OK", Some("sendrecv"))
        .ack(110)
        .rtp(false, 200, 0, 250, ramp(40), |_| false)
        .bye(5300);
    let mut second = Call::new("shared-2@test").callee_at([198, 18, 6, 1]);
    second
        .invite(20, "sendrecv", false)
        .respond(120, 200, "OK", Some("sendrecv"))
        .ack(130)
        .invite(1000, "sendonly", true)
        .respond(1010, 200, "OK", Some("recvonly"))
        .ack(1020)
        .bye(5400);
    let dir = scratch("shared");
    let mut run = Run::new(&dir, 2, None);
    let mut all: Vec<&Packet> = first.packets.iter().chain(second.packets.iter()).collect();
    all.sort_by_key(|p| p.at_ns);
    run.feed(&all);
    let cdrs = run.finish();
    let one = cdr_of(&cdrs, "shared-1@test");
    let two = cdr_of(&cdrs, "shared-2@test");
    assert_ne!(one.worker, two.worker, "the calls are on different workers");
    assert_eq!(one.packets.callee, 250, "{one:#?}");
    assert_eq!(two.packets.callee + two.packets.caller, 0, "{two:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording's file is made by the spool thread at the call's first audio (or at the end
/// of an answered call that had none): a call rejected while it rang, with no audio, leaves
/// no file at all, and the one that talked has exactly one.
#[test]
fn only_calls_with_audio_or_an_answer_get_a_file() {
    let mut a = Call::new("prep-a@test").callee_at([198, 18, 6, 1]);
    a.invite(0, "sendrecv", false)
        .respond(100, 180, "Ringing", None)
        .respond(1000, 200, "OK", Some("sendrecv"))
        .ack(1010)
        .rtp(true, 1020, 0, 150, ramp(1), |_| false)
        .rtp(false, 1020, 0, 150, ramp(40), |_| false)
        .bye(4500);
    // Rejected after A's audio began (so its prepared file is adopted while it rings), never
    // answered, no audio: no recording, and no file left.
    let mut b = Call::new("prep-b@test").callee_at([198, 18, 7, 1]);
    b.invite(50, "sendrecv", false)
        .respond(150, 180, "Ringing", None)
        .respond(2500, 486, "Busy Here", None);
    let mut all: Vec<&Packet> = a.packets.iter().chain(b.packets.iter()).collect();
    all.sort_by_key(|p| p.at_ns);
    let dir = scratch("prep");
    let mut run = Run::new(&dir, 1, None);
    run.feed(&all);
    let cdrs = run.finish();
    assert_eq!(cdrs.len(), 2);
    let wa = cdr_of(&cdrs, "prep-a@test")
        .recording
        .as_ref()
        .expect("A recorded");
    assert_eq!(samples(&wa.path).len(), wa.duration_ms as usize * 16);
    assert!(cdr_of(&cdrs, "prep-b@test").recording.is_none());
    let files = calltap_lab::files::files_below(&dir);
    let wavs: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    assert_eq!(wavs, vec![&wa.path], "one recording, A's: {files:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
