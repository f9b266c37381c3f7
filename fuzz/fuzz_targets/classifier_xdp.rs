//! Differential: each frame through the loaded XDP program (BPF_PROG_TEST_RUN) and through the
//! userspace classifier, with the same media endpoints and SIP ports in both.
//!
//! Invariant: the kernel counts the class userspace decided (and the frame, and nothing as a
//! ring overflow), delivers nothing when userspace names no ring, and otherwise exactly one
//! record, to that ring, with the same class, ring, flags and offsets and the frame's bytes.
//! A disagreement panics with the frame in hex, so libFuzzer keeps it.
//!
//! Needs root (or CAP_BPF) and a kernel with BPF_PROG_TEST_RUN for XDP; `cargo xtask fuzz`
//! skips it otherwise.
#![no_main]

use std::cell::RefCell;

use aya::maps::{MapData, RingBuf};
use calltap::{
    capture::{
        xdp::{XdpCapture, XdpCounters},
        Record,
    },
    classify::{classify_frame, UserTables},
};
use calltap_common::{
    classify::{counter_for, TARGET_NONE},
    counter, XdpConfig, COUNTERS, MAX_WORKERS,
};
use calltap_fuzz::tables::{fill, user_tables, SIP_PORTS};
use libfuzzer_sys::fuzz_target;

/// Longest frame BPF_PROG_TEST_RUN takes for XDP: a page less the headroom and the shared
/// info the kernel keeps around it.
const MAX_FRAME: usize = 3000;
/// The test runner needs an Ethernet header's worth.
const MIN_FRAME: usize = 14;

struct Sides {
    xdp: XdpCapture,
    rings: Vec<RingBuf<MapData>>,
    counters: XdpCounters,
    tables: UserTables,
}

impl Sides {
    fn load() -> Sides {
        let cfg = XdpConfig::default();
        let mut xdp = XdpCapture::load(&cfg, SIP_PORTS)
            .unwrap_or_else(|e| panic!("loading the XDP program (root needed): {e}"));
        if let Some(n) = xdp.verified_instructions() {
            eprintln!("classifier_xdp: the verifier explored {n} instructions");
        }
        let mut rings: Vec<RingBuf<MapData>> = (0..MAX_WORKERS)
            .map(|i| xdp.take_media_ring(i).expect("media ring"))
            .collect();
        rings.push(xdp.take_signalling_ring().expect("signalling ring"));
        let mut kernel = xdp.take_media_table().expect("media table");
        fill(&mut kernel).expect("media entries into the kernel's table");
        let counters = xdp.take_counters().expect("counters");
        Sides {
            xdp,
            rings,
            counters,
            tables: user_tables(cfg),
        }
    }

    fn compare(&mut self, frame: &[u8]) {
        let (verdict, meta) = classify_frame(frame, &self.tables, 0, frame.len() as u32, 0);
        let before = self.counters.totals();
        self.xdp.test_run(frame, 1).expect("BPF_PROG_TEST_RUN");
        let after = self.counters.totals();
        let mut records = Vec::new();
        for (i, r) in self.rings.iter_mut().enumerate() {
            while let Some(item) = r.next() {
                records.push((i, item.to_vec()));
            }
        }
        let delta: Vec<u64> = (0..COUNTERS as usize)
            .map(|i| after[i] - before[i])
            .collect();
        let fail = |what: &str| -> ! {
            panic!(
                "XDP and userspace disagree: {what}\nuserspace: {verdict:?}\nkernel counters: {delta:?}\nkernel records: {}\nframe: {}",
                records.len(),
                hex(frame)
            )
        };
        if delta[counter::SEEN as usize] != 1 || delta[counter::RING_FULL as usize] != 0 {
            fail("the frame was not seen once, or a ring overflowed");
        }
        if delta[counter_for(verdict.class) as usize] != 1 {
            fail("the kernel counted another class");
        }
        if verdict.target == TARGET_NONE {
            if !records.is_empty() {
                fail("the kernel delivered a frame userspace sends nowhere");
            }
            return;
        }
        let [(ring, bytes)] = &records[..] else {
            fail("not exactly one record");
        };
        if *ring as u32 != verdict.target {
            fail("delivered to another ring");
        }
        let Some(rec) = Record::from_ring(bytes) else {
            fail("a record that does not parse");
        };
        let k = rec.meta;
        let fields = |m: &calltap_common::PacketMeta| {
            (
                m.class,
                m.target,
                m.flags,
                m.l3_off,
                m.l4_off,
                m.payload_off,
            )
        };
        if fields(&k) != fields(&meta) || rec.frame != frame {
            fail(&format!("records differ: kernel {:?}", fields(&k)));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

thread_local! {
    static SIDES: RefCell<Option<Sides>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    if data.len() < MIN_FRAME {
        return;
    }
    let frame = &data[..data.len().min(MAX_FRAME)];
    SIDES.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(Sides::load)
            .compare(frame);
    });
});
