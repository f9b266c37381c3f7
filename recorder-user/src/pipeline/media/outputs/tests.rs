//! The output seam with a small test output ([`Tap`]): attached to a running call it gets the
//! call's placed audio exactly as the WAV does, nothing of a paused span, and the operator's
//! actions; a full hand-off drops (counted) without holding up the worker or the recording;
//! detaching, a hung-up receiver and the call's end close it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use calltap_common::{Class, PacketMeta};
use calltap_media::codec::g711::ulaw_to_linear;
use calltap_sip::{
    dialog::{CallEvent, CallRef, Side},
    sdp::{Direction, RtpMap},
    NameAddr,
};
use crossbeam_channel::Receiver;

use super::{AudioOutput, Handoff, NewOutput, OutputCtx, Placed};
use crate::{
    capture::Record,
    pipeline::{
        media::{MediaConfig, MediaWorker},
        recording::RecordingAction,
        CallSetup, Control,
    },
    store::{cdr::Cdr, spool::SpoolConfig},
};

/// What a [`Tap`] saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Audio {
        channel: usize,
        pos: u64,
        rate: u32,
        samples: Vec<i16>,
    },
    Recording(RecordingAction, u64),
    Closed(u64),
}

/// A test output: everything it is given goes through a bounded hand-off to the test.
struct Tap(Handoff<Seen>);

impl Tap {
    fn new(capacity: usize) -> (Box<Tap>, Receiver<Seen>) {
        let (handoff, rx) = Handoff::bounded(capacity);
        (Box::new(Tap(handoff)), rx)
    }
}

impl AudioOutput for Tap {
    fn kind(&self) -> &'static str {
        "tap"
    }

    fn write(&mut self, _: &mut OutputCtx<'_>, a: Placed<'_>) {
        let seen = Seen::Audio {
            channel: a.channel,
            pos: a.pos,
            rate: a.rate,
            samples: a.samples.to_vec(),
        };
        self.0.offer(seen, a.samples.len() as u64);
    }

    fn recording(&mut self, _: &mut OutputCtx<'_>, action: RecordingAction, at_ns: u64) {
        self.0.offer(Seen::Recording(action, at_ns), 0);
    }

    fn close(&mut self, _: &mut OutputCtx<'_>, end_ns: u64) {
        self.0.offer(Seen::Closed(end_ns), 0);
    }

    fn take_dropped(&mut self) -> u64 {
        self.0.take_dropped()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

const START: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const CALL: CallRef = CallRef(7);

fn caller() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 4000)
}

fn callee() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 5000)
}

/// An Ethernet/IPv4/UDP frame of 20 ms of µ-law, every byte `byte`, as the classifier marks
/// it (ring record layout: header, then frame).
fn rtp(src: SocketAddrV4, dst: SocketAddrV4, i: u16, byte: u8) -> Vec<u8> {
    // One SSRC per direction (the sender's port).
    let ssrc = u32::from(src.port());
    let payload = [byte; 160];
    let ip_len = (20 + 8 + 12 + payload.len()) as u16;
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x80, 0]);
    f.extend_from_slice(&i.to_be_bytes());
    f.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
    f.extend_from_slice(&ssrc.to_be_bytes());
    f.extend_from_slice(&payload);
    let meta = PacketMeta {
        ts_ns: START + u64::from(i) * 20 * MS,
        cap_len: f.len() as u32,
        wire_len: f.len() as u32,
        l3_off: 14,
        l4_off: 34,
        payload_off: 42,
        class: Class::Rtp as u8,
        ..PacketMeta::default()
    };
    let mut rec = meta.as_bytes().to_vec();
    rec.extend_from_slice(&f);
    rec
}

/// The caller's and the callee's byte in packet `i`.
fn bytes(i: u16) -> [u8; 2] {
    [0x80 + (i % 60) as u8, (i % 60) as u8]
}

/// A worker with call [`CALL`] answered, both sides' endpoints known, G.711 µ-law.
fn worker(dir: &std::path::Path) -> MediaWorker {
    let cfg = MediaConfig {
        recordings_dir: dir.to_path_buf(),
        path_template: "{uuid}.wav".into(),
        spool: SpoolConfig::with_memory_mb(16),
        ..MediaConfig::default()
    };
    let mut w = MediaWorker::new(0, cfg);
    let party = |user: &str| NameAddr {
        display: None,
        user: Some(user.into()),
        host: Some("198.18.0.2".into()),
        uri: format!("sip:{user}@198.18.0.2"),
        tag: None,
    };
    let setup = CallSetup {
        call: CALL,
        uuid: "uuid-7".into(),
        call_id: "cid-7".into(),
        interaction: "cid-7".into(),
        from: party("1000"),
        to: party("2000"),
        caller_ip: (*caller().ip()).into(),
        callee_ip: (*callee().ip()).into(),
        start_ns: START,
        recording: Default::default(),
    };
    let mut done = Vec::new();
    w.control(Control::Start(Box::new(setup)), &mut done);
    for (side, addr) in [(Side::Caller, caller()), (Side::Callee, callee())] {
        let media = Control::Event(Box::new(CallEvent::Media {
            call: CALL,
            side,
            rtp: Some(SocketAddr::V4(addr)),
            rtcp: None,
            codecs: RtpMap::static_pt(0).into_iter().collect(),
            direction: Direction::SendRecv,
            ts_ns: START,
        }));
        w.control(media, &mut done);
    }
    w.control(
        Control::Event(Box::new(CallEvent::Answered {
            call: CALL,
            ts_ns: START,
        })),
        &mut done,
    );
    w
}

/// Both directions' packet `i`.
fn packets(w: &mut MediaWorker, i: u16) {
    let [a, b] = bytes(i);
    for rec in [rtp(caller(), callee(), i, a), rtp(callee(), caller(), i, b)] {
        let rec = Record::from_ring(&rec).expect("record");
        assert!(w.packet(&rec), "packet {i} has its call");
    }
}

fn end(w: &mut MediaWorker, at: u64) -> Cdr {
    let mut done = Vec::new();
    let end = Control::End {
        call: CALL,
        reason: "bye".into(),
        ts_ns: at,
    };
    w.control(end, &mut done);
    w.reap(u64::MAX, &mut done);
    let mut cdr = done.pop().expect("a CDR");
    cdr.seal_recording();
    cdr
}

#[test]
fn an_attached_output_gets_the_placed_audio_the_wav_gets_outside_paused_spans() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut w = worker(tmp.path());
    let mut done = Vec::new();
    let (tap, seen) = Tap::new(10_000);
    let mut tap = Some(tap);
    for i in 0..50u16 {
        if let Some(tap) = tap.take_if(|_| i == 10) {
            let output = NewOutput::new(tap);
            w.control(Control::Attach { call: CALL, output }, &mut done);
        }
        for (at, action) in [(20, RecordingAction::Pause), (25, RecordingAction::Resume)] {
            if i == at {
                let ts_ns = START + u64::from(i) * 20 * MS;
                let msg = Control::Recording {
                    call: CALL,
                    action,
                    ts_ns,
                };
                w.control(msg, &mut done);
            }
        }
        packets(&mut w, i);
    }
    let cdr = end(&mut w, START + 1000 * MS);
    let wav = crate::store::spool::testing::read(&cdr.recording.expect("recording").path);
    assert_eq!(wav.len(), 8000 * 2, "1 s of stereo");
    let seen: Vec<Seen> = seen.try_iter().collect();
    let mut audio = 0;
    for s in &seen {
        if let Seen::Audio {
            channel,
            pos,
            rate,
            samples,
        } = s
        {
            assert_eq!(*rate, 8000);
            assert!(!(3200..4000).contains(pos), "nothing of the pause: {pos}");
            let i = (*pos / 160) as u16;
            assert!(i >= 10, "only after it was attached");
            let want = ulaw_to_linear(bytes(i)[*channel]);
            assert!(samples.iter().all(|&s| s == want), "packet {i}");
            for (k, &s) in samples.iter().enumerate() {
                assert_eq!(wav[2 * (*pos as usize + k) + channel], s, "as in the WAV");
            }
            audio += 1;
        }
    }
    assert_eq!(
        audio,
        2 * (50 - 10 - 5),
        "every packet after the attach but the paused"
    );
    assert_eq!(
        seen.iter()
            .filter(|s| matches!(s, Seen::Recording(..)))
            .collect::<Vec<_>>(),
        [
            &Seen::Recording(RecordingAction::Pause, 400 * MS),
            &Seen::Recording(RecordingAction::Resume, 500 * MS)
        ]
    );
    assert_eq!(
        seen.last(),
        Some(&Seen::Closed(1000 * MS)),
        "closed at the end"
    );
    assert_eq!(w.stats.outputs_attached, 1);
    assert_eq!(w.stats.attached_samples_dropped, 0);
}

#[test]
fn a_full_output_drops_and_counts_without_holding_up_the_worker_or_the_recording() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut w = worker(tmp.path());
    let mut done = Vec::new();
    // Never read until the end: room for one item.
    let (slow, slow_rx) = Tap::new(1);
    let slow = NewOutput::new(slow);
    let slow_id = slow.id;
    w.control(
        Control::Attach {
            call: CALL,
            output: slow,
        },
        &mut done,
    );
    // A listener that hangs up is detached at the next flush.
    let (gone, gone_rx) = Tap::new(100);
    w.control(
        Control::Attach {
            call: CALL,
            output: NewOutput::new(gone),
        },
        &mut done,
    );
    drop(gone_rx);
    let mut timeouts = Vec::new();
    for i in 0..50u16 {
        packets(&mut w, i);
        if i == 30 {
            w.tick(START + 600 * MS, &mut timeouts);
            let ts_ns = START + 600 * MS;
            let detach = Control::Detach {
                call: CALL,
                id: slow_id,
                ts_ns,
            };
            w.control(detach, &mut done);
        }
    }
    // The slow output held one packet's audio and dropped the other 61 packets' it was given.
    assert_eq!(w.stats.attached_samples_dropped, 61 * 160);
    assert_eq!(slow_rx.try_iter().count(), 1);
    let cdr = end(&mut w, START + 1000 * MS);
    let recording = cdr.recording.expect("recording");
    assert_eq!(recording.error, None, "the recording lost nothing");
    let wav = crate::store::spool::testing::read(&recording.path);
    for i in 0..50u16 {
        let at = 2 * 160 * usize::from(i);
        let [a, b] = bytes(i);
        assert_eq!(
            (wav[at], wav[at + 1]),
            (ulaw_to_linear(a), ulaw_to_linear(b))
        );
    }
    assert_eq!(w.stats.samples_dropped, 0);
}

#[test]
fn a_call_takes_a_bounded_number_of_outputs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut w = worker(tmp.path());
    let mut done = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..super::MAX_ATTACHED + 1 {
        let (tap, rx) = Tap::new(4);
        receivers.push(rx);
        let output = NewOutput::new(tap);
        w.control(Control::Attach { call: CALL, output }, &mut done);
    }
    assert_eq!(w.stats.outputs_attached, super::MAX_ATTACHED as u64);
    let refused = receivers.pop().expect("the last");
    assert!(refused.recv().is_err(), "the one too many is dropped");
}

#[test]
fn an_output_for_a_call_that_is_gone_is_dropped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut w = worker(tmp.path());
    let (tap, rx) = Tap::new(4);
    let mut done = Vec::new();
    let attach = Control::Attach {
        call: CallRef(99),
        output: NewOutput::new(tap),
    };
    w.control(attach, &mut done);
    assert!(rx.recv().is_err(), "its hand-off is closed");
    assert_eq!(w.stats.outputs_attached, 0);
}

#[test]
fn a_handoff_counts_what_did_not_fit_and_sees_its_receiver_go() {
    let (mut h, rx) = Handoff::<u32>::bounded(2);
    assert!(h.offer(1, 160) && h.offer(2, 160));
    assert!(!h.offer(3, 160));
    assert_eq!((h.take_dropped(), h.take_dropped()), (160, 0));
    assert!(!h.is_closed());
    drop(rx);
    assert!(!h.offer(4, 160));
    assert!(h.is_closed());
    assert_eq!(h.take_dropped(), 0, "a closed hand-off drops nothing more");
}
