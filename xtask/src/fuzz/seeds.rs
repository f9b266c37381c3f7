//! Seed inputs for the fuzz targets, written under `target/fuzz-seeds/<target>/` at run time:
//! what the public captures in `../shared/corpus` hold (frames, SIP messages and bodies, RTP,
//! fragments, SIP over TCP, file heads), read in place and never copied into the repository,
//! plus the small hand-written seeds under `fuzz/seeds/`.
//!
//! The captures' frames are sorted with the project's own classifier (`calltap-common`), so a
//! seed is what the pipeline would have handed that part of the code. The sequence targets
//! read op streams (see `fuzz/src/lib.rs`): a few bytes of settings, then raw records (tag 0,
//! two bytes of big-endian length, the bytes).

use std::{
    collections::{hash_map::DefaultHasher, HashMap, HashSet},
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use calltap_common::{
    classify::{classify, Tables, Verdict},
    flags, Class, MediaKey, MediaValue, XdpConfig,
};
use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

/// Most seeds a target gets from the captures: enough variety, few enough that a short run
/// gets through them and on to mutating.
const MAX_SEEDS: usize = 400;
/// Most frames of one kind (class and flags) taken from one capture.
const PER_KIND: usize = 6;
/// Bytes of a capture file's head used as a pcap_reader seed.
const FILE_HEAD: usize = 64 << 10;
/// Messages per dialog_tracker seed.
const MESSAGES_PER_SEED: usize = 120;

/// Settings bytes of the sequence targets' seeds: the defaults' order of magnitude, so a seed
/// replays as the capture would (see each target for what the bytes mean).
const TRACKER_SETTINGS: [u8; 6] = [0xff, 0x40, 0xff, 0x50, 0xff, 0xff];
const TCP_SETTINGS: [u8; 12] = [5, 11, 31, 13, 63, 255, 255, 255, 0, 0, 0, 0];
const FRAG_SETTINGS: [u8; 6] = [7, 6, 255, 11, 23, 0];

/// The seeds written, per target.
pub type Written = Vec<(String, usize)>;

/// Tables for sorting frames: the configured SIP ports, no calls (so media is found by its
/// header, `RtpHeuristic`).
struct SeedTables;

impl Tables for SeedTables {
    fn media(&self, _key: &MediaKey) -> Option<MediaValue> {
        None
    }
    fn is_sip_port(&self, port: u16) -> bool {
        port == 5060 || port == 5080
    }
    fn config(&self) -> XdpConfig {
        XdpConfig {
            heuristic_rtp: 1,
            ..XdpConfig::default()
        }
    }
}

#[derive(Default)]
struct Seeds {
    sets: HashMap<&'static str, Vec<Vec<u8>>>,
    seen: HashSet<u64>,
}

impl Seeds {
    fn add(&mut self, target: &'static str, seed: Vec<u8>) {
        let set = self.sets.entry(target).or_default();
        if set.len() >= MAX_SEEDS || seed.is_empty() {
            return;
        }
        if self.seen.insert(hash(&(target, &seed))) {
            set.push(seed);
        }
    }
}

fn hash(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Writes every target's seeds under `out` (emptied first); `corpus` may be absent.
pub fn write(fuzz_dir: &Path, corpus: &Path, out: &Path) -> Result<Written> {
    let mut seeds = Seeds::default();
    if corpus.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(corpus)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "pcap" | "pcapng" | "cap"))
            })
            .collect();
        files.sort();
        for f in &files {
            from_capture(f, &mut seeds).with_context(|| format!("seeds from {}", f.display()))?;
        }
    } else {
        println!(
            "xtask fuzz: {} not found: seeds only from fuzz/seeds",
            corpus.display()
        );
    }
    from_fuzz_dir(&fuzz_dir.join("seeds"), &mut seeds)?;
    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    let mut written = Vec::new();
    let mut targets: Vec<_> = seeds.sets.into_iter().collect();
    targets.sort();
    for (target, set) in targets {
        let dir = out.join(target);
        fs::create_dir_all(&dir)?;
        for s in &set {
            fs::write(dir.join(format!("{:016x}", hash(s))), s)?;
        }
        written.push((target.to_string(), set.len()));
    }
    Ok(written)
}

/// Hand-written seeds: `fuzz/seeds/<target>/*` as they are, and `fuzz/seeds/<name>.hex`, a
/// seed a line in hex (`#` starts a comment), where `frames` stands for both classifier targets.
fn from_fuzz_dir(dir: &Path, seeds: &mut Seeds) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        let targets: Vec<&'static str> = match name {
            "frames" => vec!["classifier", "classifier_xdp"],
            other => super::TARGETS
                .iter()
                .map(|t| t.name)
                .filter(|t| *t == other)
                .collect(),
        };
        if path.is_dir() {
            for f in fs::read_dir(&path)? {
                let bytes = fs::read(f?.path())?;
                for t in &targets {
                    seeds.add(t, bytes.clone());
                }
            }
        } else if path.extension().is_some_and(|e| e == "hex") {
            let text = fs::read_to_string(&path)?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let bytes = unhex(line).with_context(|| format!("{}: {line}", path.display()))?;
                for t in &targets {
                    seeds.add(t, bytes.clone());
                }
            }
        }
    }
    Ok(())
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .context("not hex")
        })
        .collect()
}

/// One captured frame, rewritten to start at an Ethernet header, with its capture time.
struct Frame {
    ts_ns: u64,
    bytes: Vec<u8>,
}

/// The frames of a pcap or pcapng file (those of link types the replay reads).
fn read_frames(path: &Path) -> Result<Vec<Frame>> {
    let file = fs::File::open(path)?;
    let mut out = Vec::new();
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut fs::File::open(path)?, &mut magic)?;
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(file)?;
        let mut links: Vec<u32> = Vec::new();
        while let Some(block) = r.next_block() {
            let Ok(block) = block else { break };
            match block {
                Block::InterfaceDescription(i) => links.push(u32::from(i.linktype)),
                Block::EnhancedPacket(p) => {
                    let link = links.get(p.interface_id as usize).copied().unwrap_or(1);
                    if let Some(bytes) = ethernet(link, &p.data) {
                        // Microseconds, the usual resolution; only order and gaps matter here.
                        let ts_ns = (p.timestamp.as_nanos() as u64).saturating_mul(1000);
                        out.push(Frame { ts_ns, bytes });
                    }
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(file)?;
        let link = u32::from(r.header().datalink);
        while let Some(p) = r.next_packet() {
            let Ok(p) = p else { break };
            if let Some(bytes) = ethernet(link, &p.data) {
                out.push(Frame {
                    ts_ns: p.timestamp.as_nanos() as u64,
                    bytes,
                });
            }
        }
    }
    Ok(out)
}

/// A frame of link type `link` as Ethernet: Linux cooked (SLL, SLL2), BSD loopback and raw IP
/// get a header made up, as the replay does.
fn ethernet(link: u32, data: &[u8]) -> Option<Vec<u8>> {
    let (ethertype, off) = match link {
        1 => return Some(data.to_vec()),
        113 => (u16::from_be_bytes([*data.get(14)?, *data.get(15)?]), 16),
        276 => (u16::from_be_bytes([*data.first()?, *data.get(1)?]), 20),
        0 | 108 => match data.get(..4)? {
            [2, 0, 0, 0] | [0, 0, 0, 2] => (0x0800, 4),
            _ => (0x86dd, 4),
        },
        12 | 14 | 101 | 228 | 229 => match data.first()? >> 4 {
            4 => (0x0800, 0),
            _ => (0x86dd, 0),
        },
        _ => return None,
    };
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(data.get(off..)?);
    Some(f)
}

/// Where the innermost IP packet ends by its length field (frames carry Ethernet padding).
fn ip_end(frame: &[u8], v: &Verdict) -> usize {
    let l3 = usize::from(v.l3_off);
    let field = |at: usize| {
        frame
            .get(l3 + at..l3 + at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let end = if v.flags & flags::IPV6 != 0 {
        field(4).map(|n| l3 + 40 + usize::from(n))
    } else {
        field(2).map(|n| l3 + usize::from(n))
    };
    end.map_or(frame.len(), |e| e.min(frame.len()))
}

fn slice(frame: &[u8], from: u16, to: usize) -> &[u8] {
    frame.get(usize::from(from)..to).unwrap_or_default()
}

/// An op stream's raw record.
fn record(out: &mut Vec<u8>, body: &[u8]) {
    let body = body.get(..usize::from(u16::MAX)).unwrap_or(body);
    out.push(0);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// Small indices for the addresses (or flows) of one capture, in order of appearance.
#[derive(Default)]
struct Index<K>(HashMap<K, u8>);

impl<K: Hash + Eq> Index<K> {
    fn of(&mut self, k: K) -> u8 {
        let n = self.0.len() as u8;
        *self.0.entry(k).or_insert(n)
    }
}

/// Milliseconds between two capture times, as one byte.
fn dt_ms(prev: &mut Option<u64>, ts: u64) -> u8 {
    let dt = prev.map_or(0, |p| ts.saturating_sub(p) / 1_000_000);
    *prev = Some(ts);
    dt.min(255) as u8
}

fn from_capture(path: &Path, seeds: &mut Seeds) -> Result<()> {
    let head = fs::read(path)?;
    seeds.add(
        "pcap_reader",
        head.get(..FILE_HEAD).unwrap_or(&head).to_vec(),
    );
    let Ok(frames) = read_frames(path) else {
        // A capture pcap-file cannot read still makes a pcap_reader seed.
        return Ok(());
    };
    let mut kinds: HashMap<(u8, u8), usize> = HashMap::new();
    let (mut tracker, mut tcp, mut frag) = (Vec::new(), Vec::new(), Vec::new());
    let mut tracker_msgs = 0;
    let (mut hosts, mut flows) = (Index::default(), Index::default());
    let (mut t_prev, mut tcp_prev, mut frag_prev) = (None, None, None);
    for Frame { ts_ns, bytes: f } in &frames {
        let v = classify(&f[..], &SeedTables);
        let n = kinds.entry((v.class, v.flags)).or_default();
        *n += 1;
        if *n <= PER_KIND {
            seeds.add("classifier", f.clone());
            seeds.add("classifier_xdp", f.clone());
        }
        let end = ip_end(f, &v);
        let l3 = usize::from(v.l3_off);
        let udp = v.flags & flags::UDP != 0;
        match v.class() {
            Class::Sip => {
                let payload = slice(f, v.payload_off, end);
                seeds.add("sip_message", payload.to_vec());
                sip_parts(payload, seeds);
                let addrs = endpoints(f, &v);
                if udp {
                    if let Some((src, dst)) = addrs {
                        let mut rec =
                            vec![hosts.of(src), hosts.of(dst), dt_ms(&mut t_prev, *ts_ns)];
                        rec.extend_from_slice(payload);
                        record(&mut tracker, &rec);
                        tracker_msgs += 1;
                        if tracker_msgs % MESSAGES_PER_SEED == 0 {
                            let seed = [&TRACKER_SETTINGS[..], &tracker].concat();
                            seeds.add("dialog_tracker", seed);
                            tracker.clear();
                        }
                    }
                } else if let Some(flow) = addrs {
                    let mut rec = vec![flows.of(flow) % 4, dt_ms(&mut tcp_prev, *ts_ns)];
                    rec.extend_from_slice(slice(f, v.l4_off, end));
                    record(&mut tcp, &rec);
                }
            }
            Class::Fragment => {
                let mut rec = vec![dt_ms(&mut frag_prev, *ts_ns)];
                rec.extend_from_slice(f.get(l3..end).unwrap_or_default());
                record(&mut frag, &rec);
            }
            Class::Rtp | Class::Rtcp | Class::RtpHeuristic => {
                seeds.add("rtp_rtcp", slice(f, v.payload_off, end).to_vec());
            }
            _ => {}
        }
    }
    if !tracker.is_empty() {
        seeds.add("dialog_tracker", [&TRACKER_SETTINGS[..], &tracker].concat());
    }
    if !tcp.is_empty() {
        seeds.add("tcp_reassembly", [&TCP_SETTINGS[..], &tcp].concat());
    }
    if !frag.is_empty() {
        seeds.add("ip_fragments", [&FRAG_SETTINGS[..], &frag].concat());
    }
    Ok(())
}

/// Source and destination (address bytes and port) of a classified frame.
type Endpoint = (Vec<u8>, u16);

fn endpoints(f: &[u8], v: &Verdict) -> Option<(Endpoint, Endpoint)> {
    let l3 = usize::from(v.l3_off);
    let l4 = usize::from(v.l4_off);
    let (src, dst) = if v.flags & flags::IPV6 != 0 {
        (f.get(l3 + 8..l3 + 24)?, f.get(l3 + 24..l3 + 40)?)
    } else {
        (f.get(l3 + 12..l3 + 16)?, f.get(l3 + 16..l3 + 20)?)
    };
    let port = |at: usize| Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]));
    Some(((src.to_vec(), port(l4)?), (dst.to_vec(), port(l4 + 2)?)))
}

/// The SDP body and the `Content-Type` value + body seed of a SIP message.
fn sip_parts(msg: &[u8], seeds: &mut Seeds) {
    let Some(split) = msg.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let (head, body) = (&msg[..split], &msg[split + 4..]);
    if body.is_empty() {
        return;
    }
    let head = String::from_utf8_lossy(head);
    let ct = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-type") || name.eq_ignore_ascii_case("c"))
            .then(|| value.trim().to_string())
    });
    if let Some(ct) = ct {
        seeds.add("sip_body", [ct.as_bytes(), b"\n", body].concat());
    }
    if body.starts_with(b"v=0") {
        seeds.add("sdp", body.to_vec());
    }
}
