//! One direction's RTP placed on the recording timeline, with SSRC changes, sequence and
//! timestamp wrap-around and jumps, duplicates, late packets and a recorder restart; and its
//! telephone-events through the DTMF detector.
//!
//! Invariants: counts add up (every packet is written, a duplicate or too old, and the stats
//! say so); loss never exceeds what was expected; the end of the audio never moves back; a
//! packet is written within ten seconds of its capture time or where a new anchoring starts
//! (its capture time, or the end of the audio before it): a hostile timestamp can never push
//! audio hours into the file.
#![no_main]

use arbitrary::Arbitrary;
use calltap_media::{
    codec::dtmf::DtmfDetector,
    stream::{Placement, StreamTimeline},
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Packet {
    ssrc: u8,
    seq_step: i16,
    ts_step: i32,
    /// Capture time since the previous packet, in output samples.
    arrival_step: u16,
    /// The recorder restarted before this packet (the timeline came back from its journal).
    resume: bool,
    event: [u8; 4],
}

#[derive(Arbitrary, Debug)]
struct Input {
    clock: u8,
    out: u8,
    seq0: u16,
    ts0: u32,
    packets: Vec<Packet>,
}

const RATES: [u32; 4] = [8000, 16000, 48000, 1];

fuzz_target!(|input: Input| {
    let clock = RATES[usize::from(input.clock % 4)];
    let out = RATES[usize::from(input.out % 3)];
    let mut t = StreamTimeline::new(clock, out);
    let mut dtmf = DtmfDetector::default();
    let (mut seq, mut ts, mut arrival) = (input.seq0, input.ts0, 0u64);
    let (mut written, mut duplicates, mut too_old) = (0u64, 0u64, 0u64);
    for p in &input.packets {
        seq = seq.wrapping_add_signed(p.seq_step);
        ts = ts.wrapping_add_signed(p.ts_step);
        arrival += u64::from(p.arrival_step);
        if p.resume {
            t.resume();
        }
        let end_before = t.end_pos();
        match t.place(u32::from(p.ssrc % 3), seq, ts, arrival) {
            Placement::Write { pos } => {
                written += 1;
                let anchored = pos == arrival.max(end_before);
                let near = pos.abs_diff(arrival) <= u64::from(out) * 10;
                assert!(
                    anchored || near,
                    "{p:?}: written at {pos}, captured at {arrival}"
                );
            }
            Placement::Duplicate => duplicates += 1,
            Placement::TooOld => too_old += 1,
        }
        assert!(t.end_pos() >= end_before, "the end of the audio moved back");
        let s = t.stats();
        assert_eq!(
            (s.received, s.duplicates, s.too_old),
            (written, duplicates, too_old)
        );
        assert!(t.lost() <= t.expected());
        if let Some(d) = dtmf.push(ts, &p.event) {
            assert!("0123456789*#ABCDF".contains(d.digit), "{d:?}");
        }
    }
    while let Some(d) = dtmf.flush() {
        assert!("0123456789*#ABCDF".contains(d.digit), "{d:?}");
    }
});
