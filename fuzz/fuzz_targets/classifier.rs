//! The userspace classifier (the code the XDP program runs, over userspace tables), and the
//! record a source builds from its verdict.
//!
//! Invariants, for each of two configurations: the verdict is a known class with the ring it
//! implies; its offsets lie within the frame and in order, at an IP header of the version its
//! flags say and a UDP/TCP header its flags say; SIP is on a SIP port or starts like SIP; media
//! is an endpoint of the table; the same frame classifies the same twice; the record's payload
//! and transport slices lie within the frame.
#![no_main]

use calltap::{
    capture::Record,
    classify::{classify_frame, UserTables},
};
use calltap_common::{
    classify::{Tables, Verdict, TARGET_NONE},
    flags, Class, MediaKey, PacketMeta, XdpConfig, MAX_WORKERS, SIGNALLING_RING,
};
use calltap_fuzz::{tables::user_tables, within};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static TABLES: [UserTables; 2] = [
        user_tables(XdpConfig::default()),
        user_tables(XdpConfig {
            sniff_sip: 0,
            heuristic_rtp: 1,
            heuristic_worker: 3,
            vxlan_port: 0,
            ..XdpConfig::default()
        }),
    ];
}

fuzz_target!(|frame: &[u8]| {
    TABLES.with(|tables| {
        for t in tables {
            let (v, meta) = classify_frame(frame, t, 1, frame.len() as u32, 1);
            check(frame, t, &v);
            assert_eq!(classify_frame(frame, t, 1, frame.len() as u32, 1).0, v);
            record(frame, &meta);
        }
    });
});

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn check(f: &[u8], t: &UserTables, v: &Verdict) {
    let class = v.class();
    assert_eq!(class as u8, v.class, "unknown class {}", v.class);
    let (l3, l4, pay) = (
        usize::from(v.l3_off),
        usize::from(v.l4_off),
        usize::from(v.payload_off),
    );
    match class {
        Class::NotIp | Class::Malformed => {
            assert_eq!(v.target, TARGET_NONE);
            assert_eq!((l3, l4, pay), (0, 0, 0));
            return;
        }
        Class::Unmatched => assert_eq!(v.target, TARGET_NONE),
        Class::Sip | Class::Fragment => assert_eq!(v.target, SIGNALLING_RING),
        Class::Rtp | Class::Rtcp => assert!(v.target < MAX_WORKERS),
        Class::RtpHeuristic => {
            let cfg = t.config();
            assert!(
                v.target == SIGNALLING_RING
                    || cfg.heuristic_rtp != 0 && v.target == cfg.heuristic_worker
            );
        }
    }
    // An IP header of the version the flags say, whole, at l3.
    assert!(l3 >= 14 && l3 < f.len(), "{v:?}");
    let v6 = v.flags & flags::IPV6 != 0;
    assert_eq!(f[l3] >> 4, if v6 { 6 } else { 4 }, "{v:?}");
    assert!(l3 + if v6 { 40 } else { 20 } <= f.len(), "{v:?}");
    let udp = v.flags & flags::UDP != 0;
    let tcp = v.flags & flags::TCP != 0;
    assert!(!(udp && tcp), "{v:?}");
    if class == Class::Unmatched && !udp && !tcp {
        return;
    }
    assert!(udp || tcp, "{v:?}");
    if class == Class::Fragment {
        assert_ne!(v.flags & flags::FRAGMENT, 0);
        assert!(l4 == 0 || l3 < l4 && l4 <= f.len(), "{v:?}");
        return;
    }
    // The transport header, whole, then the payload.
    assert!(l3 < l4 && l4 < pay && pay <= f.len(), "{v:?}");
    let hdr = if udp {
        8
    } else {
        usize::from(f[l4 + 12] >> 4) * 4
    };
    assert_eq!(pay - l4, hdr, "{v:?}");
    let (sport, dport) = (be16(f, l4), be16(f, l4 + 2));
    match class {
        Class::Sip => {
            let sniffed = t.config().sniff_sip != 0
                && f.get(pay..pay + 4)
                    .is_some_and(|w| w[0].is_ascii_uppercase());
            assert!(
                t.is_sip_port(sport) || t.is_sip_port(dport) || sniffed,
                "{v:?}"
            );
        }
        Class::Rtp | Class::Rtcp => {
            assert!(udp);
            let addr = |at: usize, n: usize| &f[l3 + at..l3 + at + n];
            let key = |dst: bool, port| {
                if v6 {
                    let a: [u8; 16] = addr(if dst { 24 } else { 8 }, 16)
                        .try_into()
                        .expect("16 bytes");
                    MediaKey::v6(a, port)
                } else {
                    let a: [u8; 4] = addr(if dst { 16 } else { 12 }, 4)
                        .try_into()
                        .expect("4 bytes");
                    MediaKey::v4(a, port)
                }
            };
            assert!(
                t.media(&key(true, dport)).is_some() || t.media(&key(false, sport)).is_some(),
                "{v:?}"
            );
        }
        _ => {}
    }
}

/// The record a capture source hands the workers: its slices stay within the frame.
fn record(frame: &[u8], meta: &PacketMeta) {
    let mut bytes = meta.as_bytes().to_vec();
    bytes.extend_from_slice(frame);
    let rec = Record::from_ring(&bytes).expect("a record of the frame");
    assert!(within(rec.frame, rec.payload()) && within(rec.frame, rec.transport()));
}
