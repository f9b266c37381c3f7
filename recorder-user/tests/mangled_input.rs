//! Bad input is counted and skipped, never a crash: real captures with their frames corrupted
//! (bytes flipped, frames cut short, headers zeroed) go through the whole pipeline, and files
//! that are not captures at all give an error naming the file and offset.

use std::path::Path;

use calltap::config::Config;
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn mangle(src: &Path, dst: &Path, rng: &mut Rng) -> usize {
    let mut reader = PcapReader::new(std::fs::File::open(src).expect("open")).expect("pcap");
    let header = reader.header();
    let mut writer = PcapWriter::with_header(std::fs::File::create(dst).expect("create"), header)
        .expect("writer");
    let mut n = 0;
    while let Some(pkt) = reader.next_packet() {
        let Ok(pkt) = pkt else { break };
        let mut data = pkt.data.to_vec();
        match rng.below(10) {
            // Flip a few bytes anywhere (headers included).
            0..=3 => {
                for _ in 0..=rng.below(4) {
                    if !data.is_empty() {
                        let i = rng.below(data.len() as u64) as usize;
                        data[i] ^= 1 << rng.below(8);
                    }
                }
            }
            // Cut the frame short at any point.
            4 | 5 => {
                let keep = rng.below(data.len() as u64 + 1) as usize;
                data.truncate(keep);
            }
            // Zero a run of bytes (lengths and offsets become nonsense).
            6 if !data.is_empty() => {
                let at = rng.below(data.len() as u64) as usize;
                let len = (rng.below(16) as usize).min(data.len() - at);
                data[at..at + len].fill(0);
            }
            _ => {}
        }
        let out = PcapPacket::new(pkt.timestamp, pkt.orig_len, &data);
        writer.write_packet(&out).expect("write");
        n += 1;
    }
    n
}

#[test]
fn corrupted_captures_are_counted_and_skipped() {
    let Some(corpus) = calltap_lab::corpus::corpus("corrupted_captures_are_counted_and_skipped")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("calltap-mangled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let files = [
        "sip-rtp-g711.pcap",
        "SIP_DTMF2.cap",
        "heplify-sip_ipv4_tcp.pcap",
        "heplify-rtp_rtcp_sip_ipv4_udp.pcap",
        "sngrep_ipv6frag.pcap",
        "sip-rtp-g722.pcap",
        "aaa.pcap",
    ];
    for round in 0..10 {
        for f in files {
            let out = dir.join(format!("{round}-{f}"));
            let frames = mangle(&corpus.join(f), &out, &mut rng);
            let mut cfg = Config::load_with_env(None, &[]).expect("config");
            cfg.storage.data_dir = dir.join("data");
            cfg.capture.workers = 2;
            let mut cdrs = 0;
            let summary =
                calltap::daemon::replay::replay(&cfg, std::slice::from_ref(&out), |_| cdrs += 1);
            assert!(summary.errors.is_empty(), "{f}: {:?}", summary.errors);
            assert_eq!(summary.packets, frames as u64, "{f}: every frame read");
            assert_eq!(
                summary.signalling.calls_started, summary.signalling.calls_ended,
                "{f}"
            );
            assert_eq!(
                cdrs as u64, summary.signalling.calls_ended,
                "{f}: a CDR per call"
            );
            let _ = std::fs::remove_file(out);
        }
    }
    eprintln!(
        "CHECKED {} mangled captures ({} corpus files x 10 rounds)",
        files.len() * 10,
        files.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_that_are_not_captures_fail_with_file_and_offset() {
    let dir = std::env::temp_dir().join(format!("calltap-notpcap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut rng = Rng(42);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.pcap", Vec::new()),
        ("garbage.pcap", garbage),
        // A valid pcap header followed by a record claiming 1 GB.
        ("huge-record.pcap", {
            let mut v = vec![
                0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0,
                0, 0,
            ];
            v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0x40]);
            v.extend_from_slice(&[0u8; 64]);
            v
        }),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let mut cfg = Config::load_with_env(None, &[]).expect("config");
        cfg.storage.data_dir = dir.join("data");
        let summary = calltap::daemon::replay::replay(&cfg, &[path], |_| {});
        assert_eq!(summary.errors.len(), 1, "{name}: {:?}", summary.errors);
        assert!(
            summary.errors[0].contains(name) && summary.errors[0].contains("offset"),
            "{name}: {}",
            summary.errors[0]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
