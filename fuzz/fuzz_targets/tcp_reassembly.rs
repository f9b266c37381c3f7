//! TCP stream reassembly: raw segments (seeds: SIP over TCP from captures) and built ones on a
//! few connections, each direction's stream starting near a 32-bit sequence wrap, segments
//! overlapping with data that agrees or disagrees, out of order, with FIN and RST; the
//! consumer frames part of what it is given; time passes and holes expire; small bounds.
//!
//! Settings choose small bounds (to hit them) or bounds nothing reaches (so nothing is lost
//! and every byte can be checked against the model). Invariants, after every op: the held totals equal what the directions hold and stay within
//! their bounds, the directions within `max_flows`, what a push returns within twice the
//! per-direction bound plus the segment. While nothing was dropped, skipped, shed or evicted,
//! for built directions: every byte delivered is a byte some segment carried at that stream
//! offset (overlaps that disagree may give either copy, never anything else), and without
//! FIN or RST the whole covered prefix of the stream has been delivered.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use arbitrary::Arbitrary;
use calltap_fuzz::{Ops, RAW};
use calltap_net::tcp::{
    parse_tcp, FlowKey, TcpConfig, TcpFlags, TcpReassembler, TcpSegment, FLOW_OVERHEAD,
};
use libfuzzer_sys::fuzz_target;

const FLOWS: usize = 4;
/// Stream offsets the model follows (segments reach 64 KiB past the start).
const SPAN: usize = 70_000;

fn key(i: usize) -> FlowKey {
    let a = SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 0, 1),
        40000 + i as u16,
    ));
    let b = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5060));
    if i.is_multiple_of(2) {
        FlowKey { src: a, dst: b }
    } else {
        FlowKey { src: b, dst: a }
    }
}

/// The byte a truthful sender puts at stream offset `off` of direction `flow`.
fn truth(flow: usize, off: usize) -> u8 {
    (off.wrapping_mul(31).wrapping_add(flow * 7) % 251) as u8
}

#[derive(Arbitrary, Debug)]
struct Segment {
    flow: u8,
    /// Stream offset of the first byte: near the start (`< 0x8000`: 100 bytes before it to 3
    /// KiB after), or anywhere in the first 31 KiB.
    off: u16,
    len: u16,
    /// `None`: the truthful bytes; else this byte (an overlap that disagrees).
    lie: Option<u8>,
    fin: bool,
    rst: bool,
    dt_ms: u16,
}

/// What the model knows of one built direction.
struct Model {
    isn: u32,
    /// Handshake pushed (again after an eviction).
    open: bool,
    /// Raw segments touched it: its stream start is not the model's.
    tainted: bool,
    ended: bool,
    consumed: usize,
    /// Bit `v` of `seen[off]` set: some segment carried byte `v` at offset `off`.
    seen: Vec<[u64; 4]>,
}

impl Model {
    fn saw(&self, off: usize, v: u8) -> bool {
        self.seen
            .get(off)
            .is_some_and(|s| s[usize::from(v >> 6)] & (1 << (v & 63)) != 0)
    }

    fn covered(&self) -> usize {
        self.seen
            .iter()
            .take_while(|s| s.iter().any(|w| *w != 0))
            .count()
    }
}

fn losses(r: &TcpReassembler) -> [u64; 5] {
    let s = r.stats();
    [
        s.gaps_skipped,
        s.bytes_dropped,
        s.segments_shed,
        s.flows_evicted,
        s.flows_expired,
    ]
}

fn check(r: &TcpReassembler, cfg: &TcpConfig) {
    assert_eq!(
        r.recounted(),
        (r.held_bytes(), r.held_segments()),
        "totals drifted"
    );
    assert!(r.flows() <= cfg.max_flows.max(1));
    assert!(
        r.held_bytes() <= cfg.max_total_bytes.max(r.flows() * FLOW_OVERHEAD),
        "{} held",
        r.held_bytes()
    );
    assert!(
        r.held_segments() <= cfg.max_total_segments,
        "{} segments",
        r.held_segments()
    );
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let s: [u8; 12] = ops.fixed();
    // Bounds mode (small limits, the bounds checked) or model mode (limits nothing reaches,
    // so every delivered byte is checked against the model).
    let cfg = if s[0] & 0x80 != 0 {
        TcpConfig {
            max_buffered_per_flow: 1 << 24,
            max_segments_per_flow: 1 << 16,
            max_total_bytes: 1 << 26,
            max_total_segments: 1 << 18,
            idle_timeout_ns: u64::MAX,
            gap_timeout_ns: u64::MAX,
            close_linger_ns: u64::MAX,
            ..TcpConfig::default()
        }
    } else {
        TcpConfig {
        max_flows: usize::from(s[0] % 6),
        max_buffered_per_flow: 64 << (s[1] % 12),
        max_segments_per_flow: usize::from(s[2] % 32),
        max_total_bytes: 256 << (s[3] % 14),
        max_total_segments: usize::from(s[4] % 64),
        idle_timeout_ns: u64::from(s[5]) * 100_000_000,
        gap_timeout_ns: u64::from(s[6]) * 10_000_000,
        close_linger_ns: u64::from(s[7]) * 100_000_000,
        }
    };
    let base = u32::from_be_bytes([s[8], s[9], s[10], s[11]]);
    let mut r = TcpReassembler::new(cfg);
    let mut models: Vec<Model> = (0..FLOWS)
        .map(|i| Model {
            isn: base
                .wrapping_add((i as u32).wrapping_mul(0x4000_0000))
                .wrapping_sub(i as u32 * 977),
            open: false,
            tainted: false,
            ended: false,
            consumed: 0,
            seen: Vec::new(),
        })
        .collect();
    let mut now = 0u64;
    while let Some(tag) = ops.tag() {
        match tag % 4 {
            RAW => {
                // Seeds: direction, milliseconds since the last, the TCP header and payload.
                let rec = ops.raw();
                let [flow, dt, tcp @ ..] = rec else {
                    continue;
                };
                now += u64::from(*dt) * 1_000_000;
                let i = usize::from(*flow) % FLOWS;
                models[i].tainted = true;
                if let Ok((_, _, seg)) = parse_tcp(tcp) {
                    let got = r.push(key(i), seg, now).len();
                    assert!(got <= 2 * cfg.max_buffered_per_flow + seg.payload.len());
                    let n = usize::from(*dt) % (got + 1);
                    r.consume(&key(i), n);
                }
            }
            1 => {
                let Some(seg) = ops.arbitrary::<Segment>() else {
                    break;
                };
                now += u64::from(seg.dt_ms) * 1_000_000;
                let i = usize::from(seg.flow) % FLOWS;
                let clean_before = losses(&r) == [0; 5];
                let m = &mut models[i];
                if !m.open {
                    let syn = TcpSegment {
                        seq: m.isn,
                        ack: 0,
                        flags: TcpFlags {
                            syn: true,
                            ..TcpFlags::default()
                        },
                        payload: &[],
                    };
                    r.push(key(i), syn, now);
                    m.open = true;
                }
                let start = if seg.off & 0x8000 == 0 {
                    i64::from(seg.off % 3000) - 100
                } else {
                    i64::from(seg.off & 0x7fff) - 1024
                };
                let len = usize::from(seg.len % 1600);
                let payload: Vec<u8> = (0..len)
                    .map(|j| {
                        let off = start + j as i64;
                        match seg.lie {
                            Some(b) => b,
                            None => truth(i, usize::try_from(off).unwrap_or(0)),
                        }
                    })
                    .collect();
                for (j, &v) in payload.iter().enumerate() {
                    if let Ok(off) = usize::try_from(start + j as i64) {
                        if off < SPAN {
                            if m.seen.len() <= off {
                                m.seen.resize(off + 1, [0; 4]);
                            }
                            m.seen[off][usize::from(v >> 6)] |= 1 << (v & 63);
                        }
                    }
                }
                m.ended |= seg.fin || seg.rst;
                let tcp = TcpSegment {
                    seq: m.isn.wrapping_add(1).wrapping_add(start as u32),
                    ack: 0,
                    flags: TcpFlags {
                        fin: seg.fin,
                        rst: seg.rst,
                        ack: true,
                        ..TcpFlags::default()
                    },
                    payload: &payload,
                };
                let got = r.push(key(i), tcp, now).to_vec();
                assert!(got.len() <= 2 * cfg.max_buffered_per_flow + payload.len());
                let m = &mut models[i];
                if clean_before && losses(&r) == [0; 5] && !m.tainted {
                    for (j, &v) in got.iter().enumerate() {
                        let off = m.consumed + j;
                        assert!(
                            m.saw(off, v),
                            "flow {i}: byte {v} at offset {off} was never sent there"
                        );
                    }
                    if !m.ended {
                        assert_eq!(
                            m.consumed + got.len(),
                            m.covered(),
                            "flow {i}: covered prefix not delivered"
                        );
                    }
                }
                let n = usize::from(seg.dt_ms) % (got.len() + 1);
                r.consume(&key(i), n);
                m.consumed += n;
            }
            2 => {
                let dt: u16 = ops.arbitrary().unwrap_or(0);
                now += u64::from(dt) * 1_000_000;
                r.expire(now);
            }
            _ => {
                // Forgotten (evicted, expired) directions start again with a handshake.
                if losses(&r)[3..] != [0, 0] {
                    for m in &mut models {
                        m.open = false;
                    }
                }
            }
        }
        check(&r, &cfg);
    }
});
