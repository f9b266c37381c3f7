//! The XDP program and the userspace classifier must make the same decision for every frame.
//! Each crafted frame is run through the loaded XDP program with BPF_PROG_TEST_RUN and through
//! `classify_frame`; the record the kernel puts in a ring (or the counter it bumps) must match,
//! and both must match what the frame actually is.

mod support;

use aya::maps::{MapData, RingBuf};
use calltap::{
    capture::{xdp::XdpCapture, Record},
    classify::{classify_frame, MediaTable, SharedMediaTable, UserTables},
};
use calltap_common::{
    classify::{counter_for, TARGET_NONE},
    counter, drop_mode, Class, MediaKey, MediaValue, XdpConfig, MAX_WORKERS, SIGNALLING_RING,
};
use support::frames::*;

const SIP_PORTS: &[u16] = &[5060, 5080];

struct Case {
    name: String,
    frame: Vec<u8>,
    /// None: only require kernel == userspace (e.g. truncations).
    expect: Option<(Class, u32)>,
}

fn case(name: &str, frame: Vec<u8>, class: Class, target: u32) -> Case {
    Case {
        name: name.into(),
        frame,
        expect: Some((class, target)),
    }
}

fn cases() -> Vec<Case> {
    let sip_udp = eth(0x0800, &ipv4(17, A, B, &udp(5060, 5060, INVITE)));
    let rtp_payload = rtp(8, 1, 160, 0x1234, &[0xd5; 160]);
    // A SIP message of every ring record size class the XDP program reserves (frames up to
    // 256, 640, 1536 bytes and beyond), each boundary and one past it.
    let sized_sip = |frame_len: usize| {
        let headers = 14 + 20 + 8;
        let mut msg = INVITE.to_vec();
        msg.resize(frame_len - headers, b'x');
        eth(0x0800, &ipv4(17, A, B, &udp(5060, 5060, &msg)))
    };
    let mut v: Vec<Case> = [256usize, 257, 640, 641, 1536, 1537, 3000]
        .into_iter()
        .map(|n| {
            let frame = sized_sip(n);
            assert_eq!(frame.len(), n);
            case(
                &format!("sip udp {n} bytes"),
                frame,
                Class::Sip,
                SIGNALLING_RING,
            )
        })
        .collect();
    v.extend([
        case("sip udp", sip_udp.clone(), Class::Sip, SIGNALLING_RING),
        case(
            "sip udp 5080",
            eth(
                0x0800,
                &ipv4(17, A, B, &udp(40000, 5080, b"SIP/2.0 200 OK\r\n\r\n")),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "sip tcp",
            eth(0x0800, &ipv4(6, A, B, &tcp(40001, 5060, 1, INVITE))),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "sip sniffed on odd port",
            eth(0x0800, &ipv4(17, A, B, &udp(7777, 7778, INVITE))),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "sip sniffed tcp 6060",
            eth(
                0x0800,
                &ipv4(6, A, B, &tcp(6060, 40002, 9, b"SIP/2.0 180 Ringing\r\n")),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        // An SDP may name any endpoint, a SIP proxy's included (`c=<proxy> m=audio 5060` in a
        // hostile 200 OK): SIP is decided before the media map, so B:5060, claimed below,
        // stays signalling both ways, and a SIP start on a claimed media port is SIP too.
        case(
            "sip to a sip port whose endpoint is in the media map",
            eth(0x0800, &ipv4(17, A, B, &udp(5060, 5060, INVITE))),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "sip from a sip port whose endpoint is in the media map",
            eth(
                0x0800,
                &ipv4(17, B, A, &udp(5060, 40010, b"SIP/2.0 200 OK\r\n\r\n")),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "rtp-shaped to a sip port whose endpoint is in the media map",
            eth(0x0800, &ipv4(17, A, B, &udp(30000, 5060, &rtp_payload))),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "sip sniffed on a claimed media endpoint",
            eth(0x0800, &ipv4(17, A, B, &udp(30000, 20000, INVITE))),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "rtp to known endpoint",
            eth(0x0800, &ipv4(17, A, B, &udp(30000, 20000, &rtp_payload))),
            Class::Rtp,
            1,
        ),
        case(
            "rtp to a shared endpoint goes by its source",
            eth(0x0800, &ipv4(17, A, B, &udp(34000, 24000, &rtp_payload))),
            Class::Rtp,
            2,
        ),
        case(
            "rtp to a shared endpoint from an unknown source",
            eth(0x0800, &ipv4(17, A, B, &udp(36000, 24000, &rtp_payload))),
            Class::Rtp,
            0,
        ),
        case(
            "rtp from known endpoint",
            eth(0x0800, &ipv4(17, B, A, &udp(20000, 30002, &rtp_payload))),
            Class::Rtp,
            1,
        ),
        case(
            "rtcp to known endpoint",
            eth(0x0800, &ipv4(17, A, B, &udp(30001, 20001, &rtcp_rr(5)))),
            Class::Rtcp,
            1,
        ),
        // RTP no SDP has claimed (yet) goes to the signalling worker, which hands it to the
        // owner if the call's SDP was just seen (the first packets can overtake the 200 OK).
        case(
            "rtp unknown endpoint",
            eth(0x0800, &ipv4(17, A, B, &udp(31000, 31002, &rtp_payload))),
            Class::RtpHeuristic,
            SIGNALLING_RING,
        ),
        case(
            "udp unknown, not rtp",
            eth(
                0x0800,
                &ipv4(17, A, B, &udp(31000, 31002, b"\x17hello there, no rtp")),
            ),
            Class::Unmatched,
            TARGET_NONE,
        ),
        case(
            "rtp-like on odd ports",
            eth(0x0800, &ipv4(17, A, B, &udp(31001, 31003, &rtp_payload))),
            Class::Unmatched,
            TARGET_NONE,
        ),
        case(
            "pppoe sip",
            pppoe(0x0021, &ipv4(17, A, B, &udp(5060, 5060, INVITE))),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "pppoe lcp (not ip)",
            pppoe(0xc021, &[1, 1, 0, 4]),
            Class::NotIp,
            TARGET_NONE,
        ),
        case(
            "vlan sip",
            eth_vlan(
                &[(0x8100, 100)],
                0x0800,
                &ipv4(17, A, B, &udp(5060, 5060, INVITE)),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "qinq sip",
            eth_vlan(
                &[(0x88a8, 10), (0x8100, 100)],
                0x0800,
                &ipv4(17, A, B, &udp(5060, 5060, INVITE)),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "qinq rtp",
            eth_vlan(
                &[(0x88a8, 10), (0x8100, 100)],
                0x0800,
                &ipv4(17, A, B, &udp(30000, 20000, &rtp_payload)),
            ),
            Class::Rtp,
            1,
        ),
        case(
            "ipv4 options sip",
            eth(
                0x0800,
                &ipv4_full(
                    17,
                    A,
                    B,
                    &[0x94, 0x04, 0, 0, 1, 1, 1, 0],
                    0,
                    3,
                    &udp(5060, 5060, INVITE),
                ),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "ipv6 sip",
            eth(0x86dd, &ipv6(17, v6(1), v6(2), &udp(5060, 5060, INVITE))),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "ipv6 rtp known",
            eth(
                0x86dd,
                &ipv6(17, v6(1), v6(2), &udp(30000, 22000, &rtp_payload)),
            ),
            Class::Rtp,
            0,
        ),
        case(
            "ipv6 hop-by-hop then sip",
            eth(
                0x86dd,
                &ipv6(
                    0,
                    v6(1),
                    v6(2),
                    &[&[17u8, 0, 1, 4, 0, 0, 0, 0][..], &udp(5060, 5060, INVITE)].concat(),
                ),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        // An extension header's length field runs past the headers the classifier reads (the
        // longest options header is 2,048 bytes): malformed on both sides. The program's
        // offset mask once wrapped it back onto the header itself, so XDP read the options as
        // a UDP header to port 5060 and delivered SIP that userspace called malformed.
        case(
            "ipv6 hop-by-hop header of length 255",
            eth(
                0x86dd,
                &ipv6(
                    0,
                    v6(1),
                    v6(2),
                    &[
                        &[17u8, 255, 0x13, 0xc4, 0, 16, 0, 0][..],
                        &udp(5060, 5060, INVITE),
                    ]
                    .concat(),
                ),
            ),
            Class::Malformed,
            TARGET_NONE,
        ),
        case(
            "ipv6 authentication header of length 255",
            eth(
                0x86dd,
                &ipv6(
                    51,
                    v6(1),
                    v6(2),
                    &[
                        &[17u8, 255, 0, 0, 0x13, 0xc4, 0x13, 0xc4][..],
                        &udp(5060, 5060, INVITE),
                    ]
                    .concat(),
                ),
            ),
            Class::Malformed,
            TARGET_NONE,
        ),
        case(
            "ipv4 first fragment",
            eth(
                0x0800,
                &ipv4_full(17, A, B, &[], 0x2000, 77, &udp(5060, 5060, &INVITE[..48])),
            ),
            Class::Fragment,
            SIGNALLING_RING,
        ),
        case(
            "ipv4 later fragment",
            eth(0x0800, &ipv4_full(17, A, B, &[], 7, 77, &INVITE[48..])),
            Class::Fragment,
            SIGNALLING_RING,
        ),
        case(
            "ipv6 fragment",
            eth(
                0x86dd,
                &ipv6(
                    44,
                    v6(1),
                    v6(2),
                    &[
                        &[17u8, 0, 0, 1, 0, 0, 0, 5][..],
                        &udp(5060, 5060, &INVITE[..40]),
                    ]
                    .concat(),
                ),
            ),
            Class::Fragment,
            SIGNALLING_RING,
        ),
        case(
            "erspan II sip",
            eth(
                0x0800,
                &ipv4(47, [10, 9, 9, 1], [10, 9, 9, 2], &erspan2(&sip_udp)),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "erspan III rtp",
            eth(
                0x0800,
                &ipv4(
                    47,
                    [10, 9, 9, 1],
                    [10, 9, 9, 2],
                    &erspan3(&eth(
                        0x0800,
                        &ipv4(17, A, B, &udp(30000, 20000, &rtp_payload)),
                    )),
                ),
            ),
            Class::Rtp,
            1,
        ),
        case(
            "gre teb sip",
            eth(
                0x0800,
                &ipv4(
                    47,
                    [10, 9, 9, 1],
                    [10, 9, 9, 2],
                    &gre(0x6558, None, &sip_udp),
                ),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "vxlan sip",
            eth(
                0x0800,
                &ipv4(
                    17,
                    [10, 9, 9, 1],
                    [10, 9, 9, 2],
                    &udp(50000, 4789, &vxlan(&sip_udp)),
                ),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "ip-in-ip sip",
            eth(
                0x0800,
                &ipv4(
                    4,
                    [10, 9, 9, 1],
                    [10, 9, 9, 2],
                    &ipv4(17, A, B, &udp(5060, 5060, INVITE)),
                ),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case("arp", eth(0x0806, &[0u8; 28]), Class::NotIp, TARGET_NONE),
        case(
            "icmp",
            eth(0x0800, &ipv4(1, A, B, &[8, 0, 0, 0, 0, 0, 0, 0])),
            Class::Unmatched,
            TARGET_NONE,
        ),
        case(
            "bad ip version",
            eth(0x0800, &[0x55; 40]),
            Class::Malformed,
            TARGET_NONE,
        ),
        // TCP options that run past the frame's end (found by fuzzing): malformed, not SIP with
        // a payload offset beyond the frame.
        case(
            "tcp options past the frame's end",
            eth(
                0x0800,
                &ipv4(6, A, B, &{
                    let mut t = tcp(40_000, 5060, 0, &[1, 1, 1, 1]);
                    t[12] = 0xa0;
                    t
                }),
            ),
            Class::Malformed,
            TARGET_NONE,
        ),
        case(
            "sip tcp with options",
            eth(
                0x0800,
                &ipv4(6, A, B, &{
                    let mut t = tcp(40_000, 5060, 0, &[&[1u8, 1, 1, 1][..], INVITE].concat());
                    t[12] = 0x60;
                    t
                }),
            ),
            Class::Sip,
            SIGNALLING_RING,
        ),
        case(
            "tcp bad data offset",
            eth(
                0x0800,
                &ipv4(6, A, B, &{
                    let mut t = tcp(1, 5060, 0, b"x");
                    t[12] = 0x10;
                    t
                }),
            ),
            Class::Malformed,
            TARGET_NONE,
        ),
    ]);
    // Truncated at every length from the Ethernet header on: the kernel test runner needs at
    // least an Ethernet header's worth of data.
    let full = eth_vlan(
        &[(0x8100, 5)],
        0x0800,
        &ipv4_full(
            17,
            A,
            B,
            &[1, 1, 1, 1],
            0,
            1,
            &udp(30000, 20000, &rtp_payload),
        ),
    );
    for len in 14..=full.len().min(14 + 4 + 24 + 8 + 14) {
        v.push(Case {
            name: format!("vlan/ipv4opts/udp/rtp cut at {len}"),
            frame: full[..len].to_vec(),
            expect: None,
        });
    }
    let v6full = eth(0x86dd, &ipv6(17, v6(1), v6(2), &udp(5060, 5060, INVITE)));
    for len in 14..=62 {
        v.push(Case {
            name: format!("ipv6/udp/sip cut at {len}"),
            frame: v6full[..len].to_vec(),
            expect: None,
        });
    }
    v
}

fn media_entries() -> Vec<(MediaKey, MediaValue)> {
    vec![
        (
            MediaKey::v4(B, 20000),
            MediaValue {
                worker: 1,
                flags: 0,
            },
        ),
        (
            MediaKey::v4(B, 20001),
            MediaValue {
                worker: 1,
                flags: 0,
            },
        ),
        (
            MediaKey::v6(v6(2), 22000),
            MediaValue {
                worker: 0,
                flags: 0,
            },
        ),
        // An endpoint shared by calls (last claimed by a call of worker 0), and the far end
        // of one of them (a call of worker 2).
        (
            MediaKey::v4(B, 24000),
            MediaValue {
                worker: 0,
                flags: calltap_common::media_flags::SHARED,
            },
        ),
        (
            MediaKey::v4(A, 34000),
            MediaValue {
                worker: 2,
                flags: 0,
            },
        ),
        // What a hostile SDP would have claimed: a SIP proxy's signalling endpoint. (The
        // signalling worker refuses such claims; the classifier must not depend on that.)
        (
            MediaKey::v4(B, 5060),
            MediaValue {
                worker: 3,
                flags: 0,
            },
        ),
    ]
}

/// The program loaded (through the verifier) with its rings taken: the media rings by worker,
/// then the signalling ring.
fn load(cfg: &XdpConfig) -> (XdpCapture, Vec<RingBuf<MapData>>) {
    let mut xdp = XdpCapture::load(cfg, SIP_PORTS).expect("load XDP program (verifier)");
    let mut rings: Vec<RingBuf<MapData>> = (0..MAX_WORKERS)
        .map(|i| xdp.take_media_ring(i).expect("media ring"))
        .collect();
    rings.push(xdp.take_signalling_ring().expect("signalling ring"));
    (xdp, rings)
}

fn drain(rings: &mut [RingBuf<MapData>]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, r) in rings.iter_mut().enumerate() {
        while let Some(item) = r.next() {
            out.push((i, item.to_vec()));
        }
    }
    out
}

#[test]
fn truncated_frames_never_panic_in_userspace() {
    let tables = UserTables::new(XdpConfig::default(), SIP_PORTS, SharedMediaTable::default());
    for c in cases() {
        for len in 0..c.frame.len() {
            let _ = classify_frame(&c.frame[..len], &tables, 0, len as u32, 0);
        }
    }
}

#[test]
fn xdp_and_userspace_make_identical_decisions() {
    if !calltap_lab::root::require_root("xdp_and_userspace_make_identical_decisions") {
        return;
    }
    let cfg = XdpConfig::default();
    let (mut xdp, mut rings) = load(&cfg);
    let mut kernel_table = xdp.take_media_table().expect("media table");
    let counters = xdp.take_counters().expect("counters");
    let mut user_table = SharedMediaTable::default();
    for (k, v) in media_entries() {
        kernel_table.insert(k, v).expect("kernel insert");
        user_table.insert(k, v).expect("user insert");
    }
    let tables = UserTables::new(cfg, SIP_PORTS, user_table);

    let mut checked = 0;
    for c in cases() {
        let (verdict, meta) = classify_frame(&c.frame, &tables, 0, c.frame.len() as u32, 0);
        if let Some((class, target)) = c.expect {
            assert_eq!(
                (verdict.class(), verdict.target),
                (class, target),
                "{}: userspace verdict",
                c.name
            );
        }
        let before = counters.totals();
        let (action, _) = xdp.test_run(&c.frame, 1).expect("test run");
        assert_eq!(action, 1, "{}: XDP_DROP on a dedicated mirror port", c.name);
        let after = counters.totals();
        let records = drain(&mut rings);
        let class_counter = counter_for(verdict.class) as usize;
        assert_eq!(
            after[counter::SEEN as usize] - before[counter::SEEN as usize],
            1,
            "{}",
            c.name
        );
        assert_eq!(
            after[class_counter] - before[class_counter],
            1,
            "{}: kernel counted a different class than userspace ({:?})",
            c.name,
            verdict.class()
        );
        assert_eq!(
            after[counter::RING_FULL as usize],
            before[counter::RING_FULL as usize],
            "{}",
            c.name
        );
        if verdict.target == TARGET_NONE {
            assert!(
                records.is_empty(),
                "{}: kernel delivered {records:?}",
                c.name
            );
        } else {
            assert_eq!(records.len(), 1, "{}: one record expected", c.name);
            let (ring, bytes) = &records[0];
            assert_eq!(
                *ring as u32, verdict.target,
                "{}: delivered to the wrong ring",
                c.name
            );
            let rec = Record::from_ring(bytes).expect("record parses");
            let k = rec.meta;
            assert_eq!(
                (
                    k.class,
                    k.target,
                    k.flags,
                    k.l3_off,
                    k.l4_off,
                    k.payload_off
                ),
                (
                    meta.class,
                    meta.target,
                    meta.flags,
                    meta.l3_off,
                    meta.l4_off,
                    meta.payload_off
                ),
                "{}: kernel and userspace headers differ",
                c.name
            );
            assert_eq!(rec.frame, &c.frame[..], "{}: frame bytes", c.name);
            assert_eq!(k.wire_len as usize, c.frame.len());
            assert!(k.ts_ns > 0, "{}: timestamp", c.name);
        }
        checked += 1;
    }
    assert!(checked > 60, "only {checked} cases ran");
}

/// The program skips the media map for UDP ports no endpoint has (a bitmap beside the map):
/// the bitmap must follow the endpoints exactly as they come and go, or RTP of a live call
/// would be missed (a bit cleared too early) or the lookups it spares would come back.
#[test]
fn media_port_bitmap_follows_the_endpoints() {
    if !calltap_lab::root::require_root("media_port_bitmap_follows_the_endpoints") {
        return;
    }
    let cfg = XdpConfig::default();
    let (mut xdp, mut rings) = load(&cfg);
    let mut table = xdp.take_media_table().expect("media table");
    let (b, c) = ([198, 18, 0, 2], [198, 18, 0, 3]);
    let owner = MediaValue {
        worker: 1,
        flags: 0,
    };
    // RTP from an odd port no endpoint has, to `dst`:31000: which ring got it, if any.
    let mut send = |dst: [u8; 4]| -> Option<usize> {
        let frame = eth(
            0x0800,
            &ipv4(
                17,
                A,
                dst,
                &udp(41_001, 31_000, &rtp(0, 1, 160, 9, &[0xff; 160])),
            ),
        );
        xdp.test_run(&frame, 1).expect("test run");
        let records = drain(&mut rings);
        assert!(records.len() <= 1, "{records:?}");
        records
            .first()
            .map(|(ring, _)| *ring)
            .filter(|&r| r != SIGNALLING_RING as usize)
    };
    let (kb, kc) = (MediaKey::v4(b, 31_000), MediaKey::v4(c, 31_000));
    assert_eq!(send(b), None, "no endpoint yet");
    assert!(!table.port_bit(31_000));
    table.insert(kb, owner).expect("insert");
    table.insert(kc, owner).expect("insert");
    // The same endpoint claimed again (a re-INVITE, another call): still one endpoint.
    table.insert(kc, owner).expect("insert again");
    assert_eq!((send(b), send(c)), (Some(1), Some(1)));
    assert!(table.port_bit(31_000));
    table.remove(&kb);
    assert_eq!(send(b), None, "removed endpoint");
    assert_eq!(
        send(c),
        Some(1),
        "another endpoint with the same port keeps its bit"
    );
    assert!(
        table.port_bit(31_000),
        "cleared while an endpoint still has the port"
    );
    table.remove(&kc);
    assert_eq!(send(c), None, "last endpoint of the port removed");
    // Cleared, so the program skips the map again for that port (a bit left set would only
    // cost lookups: no ring output shows it).
    assert!(
        !table.port_bit(31_000),
        "bit left set after the port's last endpoint went"
    );
    // Removing what is not there changes nothing; adding back works.
    table.remove(&kc);
    assert!(!table.port_bit(31_000));
    table.insert(kb, owner).expect("insert");
    assert_eq!((send(b), send(c)), (Some(1), None));
    assert!(table.port_bit(31_000));
}

/// A TCP port learned as SIP is in the program's SIP port bitmap (every segment of it goes to
/// the signalling ring, not only those that begin a message) until it is forgotten.
#[test]
fn learned_sip_ports_come_and_go_in_the_program() {
    if !calltap_lab::root::require_root("learned_sip_ports_come_and_go_in_the_program") {
        return;
    }
    let cfg = XdpConfig::default();
    let (mut xdp, mut rings) = load(&cfg);
    let mut table = xdp.take_media_table().expect("media table");
    // The middle of a SIP message on TCP port 6060: only the port can say it is SIP.
    let frame = eth(
        0x0800,
        &ipv4(
            6,
            A,
            B,
            &tcp(40_000, 6060, 77, b"Content-Length: 0\r\n\r\n"),
        ),
    );
    let mut send = || -> Option<usize> {
        xdp.test_run(&frame, 1).expect("test run");
        let records = drain(&mut rings);
        assert!(records.len() <= 1, "{records:?}");
        records.first().map(|(ring, _)| *ring)
    };
    assert_eq!(send(), None, "not a SIP port yet");
    table.learn_sip_port(6060).expect("learn");
    assert!(table.sip_port_bit(6060));
    assert_eq!(send(), Some(SIGNALLING_RING as usize), "learned");
    table.forget_sip_port(6060).expect("forget");
    assert!(!table.sip_port_bit(6060), "bit left set");
    assert_eq!(send(), None, "forgotten");
    assert!(
        table.sip_port_bit(5060) && table.sip_port_bit(5080),
        "configured ports stay"
    );
}

/// After capture a frame is dropped only where the program was told to: with the drop decided
/// per interface (`drop_after_capture` unset), on the interfaces marked as dedicated mirror
/// ports, and captured alike everywhere.
#[test]
fn frames_are_dropped_only_on_the_interfaces_marked_for_it() {
    if !calltap_lab::root::require_root("frames_are_dropped_only_on_the_interfaces_marked_for_it") {
        return;
    }
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    let cfg = XdpConfig {
        drop_after_capture: drop_mode::PER_INTERFACE,
        ..XdpConfig::default()
    };
    let (mut xdp, mut rings) = load(&cfg);
    // SAFETY: a NUL-terminated name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    assert_ne!(lo, 0, "no lo");
    let frames = [
        eth(0x0800, &ipv4(17, A, B, &udp(5060, 5060, INVITE))),
        eth(0x0806, &[0u8; 28]),
    ];
    let run = |xdp: &XdpCapture| -> Vec<u32> {
        frames
            .iter()
            .map(|f| xdp.test_run_on(f, lo).expect("test run"))
            .collect()
    };
    assert_eq!(
        run(&xdp),
        [XDP_PASS, XDP_PASS],
        "not marked: the host gets it"
    );
    assert_eq!(
        drain(&mut rings).len(),
        1,
        "the SIP frame is captured all the same"
    );
    xdp.drop_on("lo").expect("mark lo");
    assert_eq!(run(&xdp), [XDP_DROP, XDP_DROP], "marked as a mirror port");
    assert_eq!(drain(&mut rings).len(), 1, "captured, then dropped");
    // The operator's `true`/`false` (and the settled uniform modes) apply to every interface.
    for (mode, action) in [(drop_mode::NEVER, XDP_PASS), (drop_mode::ALWAYS, XDP_DROP)] {
        xdp.set_config(XdpConfig {
            drop_after_capture: mode,
            ..cfg
        })
        .expect("config");
        assert_eq!(run(&xdp), [action, action], "mode {mode}");
    }
}
