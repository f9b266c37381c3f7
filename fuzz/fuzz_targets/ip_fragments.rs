//! IP fragment reassembly: raw packets (seeds: fragmented SIP over IPv4 and IPv6 from
//! captures) and built IPv4 and IPv6 fragments (extension headers before the Fragment header,
//! length fields that lie) of a few datagrams, overlapping with bytes that agree or disagree,
//! unequal ends, repeats; time passes; small bounds.
//!
//! Settings choose small bounds (to hit them) or bounds nothing reaches (so nothing is dropped
//! but for disagreeing fragments, and every datagram can be checked against all its fragments).
//! Invariants: a built fragment parses back to what was built (or is refused when its header
//! lies); after every op the held bytes equal what the datagrams hold and stay within the
//! bound, and the datagrams within theirs; a reassembled datagram is no larger than allowed and
//! every byte of it is one a fragment of that datagram carried at that offset; when nothing was
//! dropped since its first fragment, it holds exactly the bytes of all of them.
#![no_main]

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use arbitrary::Arbitrary;
use calltap_fuzz::{Ops, RAW};
use calltap_net::ipfrag::{fragment_of, FragKey, Fragment, Reassembler, ReassemblyConfig};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Built {
    v6: bool,
    datagram: u8,
    /// Offset in 8-byte units: near the start (`< 0x8000`: up to 312 bytes), or anywhere.
    units: u16,
    len: u16,
    more: bool,
    lie: Option<u8>,
    /// IPv6: lengths of hop-by-hop / routing / destination options headers before the
    /// Fragment header.
    ext: Vec<(u8, u8)>,
    /// Added to the IP length field (0: truthful).
    length_error: i8,
    dt_ms: u16,
}

fn truth(datagram: u8, off: usize) -> u8 {
    (off.wrapping_mul(13).wrapping_add(usize::from(datagram) * 5) % 253) as u8
}

fn addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        )
    }
}

/// The packet `b` describes, and the fragment it should parse to when its lengths are true
/// (none for an IPv4 packet at offset 0 without more fragments: that is a whole datagram).
fn build(b: &Built) -> (Vec<u8>, Option<Fragment>) {
    let offset = if b.units & 0x8000 == 0 {
        usize::from(b.units % 40) * 8
    } else {
        usize::from(b.units % 8192) * 8
    };
    let data: Vec<u8> = (0..usize::from(b.len % 600))
        .map(|j| b.lie.unwrap_or_else(|| truth(b.datagram, offset + j)))
        .collect();
    let id = u32::from(b.datagram % 4) + 7;
    let (src, dst) = addrs(b.v6);
    let mut p = Vec::new();
    if let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) {
        p.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 0, 64]);
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        let kinds = [0u8, 43, 60];
        let mut next_at = 6;
        for (kind, len) in b.ext.iter().take(3) {
            p[next_at] = kinds[usize::from(kind % 3)];
            next_at = p.len();
            let len = len % 4;
            p.extend_from_slice(&[0, len]);
            p.resize(p.len() + 6 + 8 * usize::from(len), 1);
        }
        p[next_at] = 44;
        p.extend_from_slice(&[17, 0]);
        let off = u16::try_from(offset).unwrap_or(0) | u16::from(b.more);
        p.extend_from_slice(&off.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&data);
        let payload = (p.len() - 40) as i64 + i64::from(b.length_error);
        p[4..6].copy_from_slice(&(payload.clamp(0, 65535) as u16).to_be_bytes());
    } else if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
        let fo = (offset / 8) as u16 | if b.more { 0x2000 } else { 0 };
        let total = (20 + data.len()) as i64 + i64::from(b.length_error);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total.clamp(0, 65535) as u16).to_be_bytes());
        p.extend_from_slice(&(id as u16).to_be_bytes());
        p.extend_from_slice(&fo.to_be_bytes());
        p.extend_from_slice(&[64, 17, 0, 0]);
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        p.extend_from_slice(&data);
    }
    let whole = !b.v6 && !b.more && offset == 0;
    let frag = Fragment {
        key: FragKey {
            src,
            dst,
            id,
            protocol: 17,
        },
        offset,
        more: b.more,
        data,
    };
    (p, (!whole).then_some(frag))
}

/// Fragments of one datagram pushed since it last completed, and whether anything was dropped
/// since the first of them.
#[derive(Default)]
struct Sent {
    frags: Vec<(usize, Vec<u8>)>,
    drops_at_first: Option<u64>,
}

fn drops(r: &Reassembler) -> u64 {
    let s = r.stats();
    s.timed_out + s.dropped_overlap + s.dropped_limit
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let s: [u8; 6] = ops.fixed();
    // Bounds mode (small limits, the bounds checked) or model mode (limits nothing reaches, so
    // every completed datagram is checked against all its fragments).
    let cfg = if s[0] & 0x80 != 0 {
        ReassemblyConfig {
            max_datagrams: 1 << 12,
            max_datagram_size: 65535,
            timeout_ns: u64::MAX,
            max_total_bytes: 1 << 28,
            max_fragments_per_datagram: 1 << 16,
        }
    } else {
        ReassemblyConfig {
            max_datagrams: usize::from(s[0] % 8),
            max_datagram_size: 1024 << (s[1] % 7),
            timeout_ns: u64::from(s[2]) * 20_000_000,
            max_total_bytes: 512 << (s[3] % 12),
            max_fragments_per_datagram: usize::from(s[4] % 24),
        }
    };
    let mut r = Reassembler::new(cfg);
    let mut sent: HashMap<FragKey, Sent> = HashMap::new();
    let mut now = 0u64;
    while let Some(tag) = ops.tag() {
        let frag = match tag % 3 {
            RAW => {
                // Seeds: milliseconds since the last, the IP packet.
                let rec = ops.raw();
                let [dt, ip @ ..] = rec else {
                    continue;
                };
                now += u64::from(*dt) * 1_000_000;
                match fragment_of(ip) {
                    Ok(Some(f)) => {
                        assert!(f.data.len() <= ip.len());
                        assert!(f.offset <= 65528 && f.offset % 8 == 0);
                        Some(f)
                    }
                    _ => None,
                }
            }
            1 => {
                let Some(b) = ops.arbitrary::<Built>() else {
                    break;
                };
                now += u64::from(b.dt_ms) * 1_000_000;
                let (packet, want) = build(&b);
                let got = fragment_of(&packet);
                if b.length_error == 0 {
                    assert_eq!(got.as_ref(), Ok(&want), "{b:?}");
                }
                got.ok().flatten()
            }
            _ => {
                let dt: u16 = ops.arbitrary().unwrap_or(0);
                now += u64::from(dt) * 1_000_000;
                r.expire(now);
                None
            }
        };
        if let Some(f) = frag {
            let key = f.key;
            let entry = sent.entry(key).or_default();
            entry.drops_at_first.get_or_insert(drops(&r));
            entry.frags.push((f.offset, f.data.clone()));
            match r.push(f, now) {
                Ok(Some(whole)) => {
                    assert_eq!(whole.key, key);
                    assert!(whole.data.len() <= cfg.max_datagram_size);
                    let entry = sent.remove(&key).unwrap_or_default();
                    let clean = entry.drops_at_first == Some(drops(&r));
                    let mut covered = vec![false; whole.data.len()];
                    for (i, &v) in whole.data.iter().enumerate() {
                        assert!(
                            entry
                                .frags
                                .iter()
                                .any(|(o, d)| i.checked_sub(*o).and_then(|j| d.get(j)) == Some(&v)),
                            "byte {i} ({v}) was in no fragment there"
                        );
                    }
                    if clean {
                        for (o, d) in &entry.frags {
                            let at = whole.data.get(*o..*o + d.len());
                            assert_eq!(
                                at,
                                Some(&d[..]),
                                "a fragment at {o} is not in the datagram"
                            );
                            covered[*o..*o + d.len()].iter_mut().for_each(|c| *c = true);
                        }
                        assert!(covered.iter().all(|c| *c), "bytes no fragment carried");
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    sent.remove(&key);
                }
            }
        }
        assert_eq!(r.recounted(), r.held_bytes(), "held bytes drifted");
        assert!(
            r.held_bytes() <= cfg.max_total_bytes,
            "{} held",
            r.held_bytes()
        );
        assert!(r.pending() <= cfg.max_datagrams);
    }
});
