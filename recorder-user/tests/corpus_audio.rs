//! Public captures through `calltap replay`: every call tshark sees is recorded, and every G.711
//! RTP packet's audio, decoded independently (tshark extracts the payload, sox decodes it with
//! the standard tables), appears bit-exactly in the right channel of the call's WAV, at the
//! position its RTP timestamp gives.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use calltap::{config::Config, daemon::replay::replay, store::cdr::Cdr};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn tshark_fields(file: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-Y", filter, "-T", "fields", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// sox decodes G.711 with the standard tables: the independent reference.
fn sox_decode(payload: &[u8], alaw: bool) -> Vec<i16> {
    // Unique per call: tests run in parallel threads of one process.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let id = format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (inp, outp) = (
        dir.join(format!("ct-in-{id}.raw")),
        dir.join(format!("ct-out-{id}.raw")),
    );
    std::fs::write(&inp, payload).expect("write");
    let enc = if alaw { "a-law" } else { "u-law" };
    let st = Command::new("sox")
        .args(["-t", "raw", "-e", enc, "-r", "8000", "-b", "8", "-c", "1"])
        .arg(&inp)
        .args(["-t", "raw", "-e", "signed", "-b", "16", "-L"])
        .arg(&outp)
        .status()
        .expect("run sox");
    assert!(st.success());
    let bytes = std::fs::read(&outp).expect("read");
    let _ = (std::fs::remove_file(inp), std::fs::remove_file(outp));
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// tshark prints payloads as `aa:bb:..` or `aabb..` depending on the dissector.
fn hex_bytes(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks_exact(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

fn replay_file(file: &Path, name: &str) -> (Vec<Cdr>, PathBuf) {
    let dir = std::env::temp_dir().join(format!("calltap-corpus-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.storage.data_dir = dir.clone();
    cfg.capture.workers = 2;
    let mut cdrs = Vec::new();
    let summary = replay(&cfg, &[file.to_path_buf()], |c| cdrs.push(c.clone()));
    assert!(summary.errors.is_empty(), "{name}: {:?}", summary.errors);
    (cdrs, dir)
}

/// (call-id) -> (caller media endpoints, callee media endpoints) from the SDP tshark sees.
fn sdp_endpoints(file: &Path) -> HashMap<String, (Vec<String>, Vec<String>)> {
    let mut map: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    let rows = tshark_fields(
        file,
        "sdp && sip",
        &[
            "sip.Call-ID",
            "sip.Request-Line",
            "sdp.connection_info.address",
            "sdp.media.port",
            "ip.src",
            "sip.from.tag",
            "sip.CSeq.method",
        ],
    );
    // The caller is whoever sent the first INVITE of the Call-ID; later SDP from that address
    // is the caller's, from anywhere else the callee's.
    let invites = tshark_fields(file, "sip.Method==\"INVITE\"", &["sip.Call-ID", "ip.src"]);
    let mut caller_ip: HashMap<String, String> = HashMap::new();
    for r in invites {
        if r.len() >= 2 {
            caller_ip.entry(r[0].clone()).or_insert(r[1].clone());
        }
    }
    for r in rows {
        if r.len() < 5 || r[2].is_empty() || r[3].is_empty() {
            continue;
        }
        let ep = format!("{}:{}", r[2], r[3]);
        let e = map.entry(r[0].clone()).or_default();
        if caller_ip.get(&r[0]) == Some(&r[4]) {
            e.0.push(ep);
        } else {
            e.1.push(ep);
        }
    }
    map
}

struct Packet {
    at_ns: u64,
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
}

fn check_file(name: &str) -> usize {
    let Some(corpus) = support::corpus() else {
        return 0;
    };
    if !have("tshark") || !have("sox") {
        if std::env::var_os("CI").is_some() {
            panic!("tshark and sox are needed (cargo xtask setup installs them)");
        }
        eprintln!("SKIP: tshark/sox missing");
        return 0;
    }
    let file = corpus.join(name);
    let (cdrs, dir) = replay_file(&file, name);

    // Every call tshark sees (an INVITE without To-tag) has a CDR with the same parties.
    let invites = tshark_fields(
        &file,
        "sip.Method==\"INVITE\" && !sip.to.tag",
        &["sip.Call-ID", "sip.from.user", "sip.to.user"],
    );
    let mut calls: BTreeMap<String, (String, String)> = BTreeMap::new();
    for r in invites {
        calls.entry(r[0].clone()).or_insert((
            r.get(1).cloned().unwrap_or_default(),
            r.get(2).cloned().unwrap_or_default(),
        ));
    }
    assert!(!calls.is_empty(), "{name}: tshark found no call");
    for (id, (from, to)) in &calls {
        let cdr = cdrs.iter().find(|c| &c.call_id == id).unwrap_or_else(|| {
            panic!(
                "{name}: no CDR for call {id}; CDRs: {:?}",
                cdrs.iter().map(|c| &c.call_id).collect::<Vec<_>>()
            )
        });
        assert_eq!(
            cdr.from.user.clone().unwrap_or_default(),
            *from,
            "{name} {id}: from"
        );
        assert_eq!(
            cdr.to.user.clone().unwrap_or_default(),
            *to,
            "{name} {id}: to"
        );
    }

    // Audio.
    let endpoints = sdp_endpoints(&file);
    let rows = tshark_fields(
        &file,
        "rtp && (rtp.p_type==0 || rtp.p_type==8)",
        &[
            "ip.src",
            "udp.srcport",
            "ip.dst",
            "udp.dstport",
            "rtp.ssrc",
            "rtp.p_type",
            "rtp.seq",
            "rtp.timestamp",
            "rtp.payload",
            "frame.time_epoch",
        ],
    );
    let mut streams: BTreeMap<(String, String, String, u8), Vec<Packet>> = BTreeMap::new();
    for r in rows {
        if r.len() < 10 {
            continue;
        }
        let key = (
            format!("{}:{}", r[0], r[1]),
            format!("{}:{}", r[2], r[3]),
            r[4].clone(),
            r[5].parse().unwrap_or(0),
        );
        let at_ns = (r[9].parse::<f64>().unwrap_or(0.0) * 1e9) as u64;
        streams.entry(key).or_default().push(Packet {
            at_ns,
            seq: r[6].parse().unwrap_or(0),
            ts: r[7].parse().unwrap_or(0),
            payload: hex_bytes(&r[8]),
        });
    }
    let mut verified = 0;
    for ((src, dst, ssrc, pt), packets) in &streams {
        // Which call and which channel: by the SDP endpoints of each call; calls that reuse
        // an endpoint one after another are told apart by time (the call that was up when the
        // stream started).
        let first_ns = packets.first().map_or(0, |p| p.at_ns);
        let mut candidates: Vec<(String, usize)> = Vec::new();
        for (id, (caller, callee)) in &endpoints {
            let up = cdrs.iter().any(|c| {
                &c.call_id == id && c.start_ns <= first_ns + 1_000_000 && first_ns <= c.end_ns
            });
            if !up {
                continue;
            }
            if caller.contains(dst) || callee.contains(src) {
                candidates.push((id.clone(), 1));
            }
            if callee.contains(dst) || caller.contains(src) {
                candidates.push((id.clone(), 0));
            }
        }
        // One host named in both sides' SDP (a media relay captured on both legs), or one
        // endpoint claimed by two calls (a B2BUA's legs): SDP cannot say which channel is right,
        // so any candidate may hold the stream, but one must, sample-exact.
        let ambiguous = candidates.len() > 1;
        if candidates.is_empty() {
            eprintln!("{name}: stream {src}->{dst} {ssrc} matches no SDP; not checked");
            continue;
        }
        let decoded: Vec<Vec<i16>> = packets
            .iter()
            .map(|p| sox_decode(&p.payload, *pt == 8))
            .collect();
        // Anchor: the first packet whose audio is not constant, found in the channel.
        let Some(anchor) = decoded
            .iter()
            .position(|d| d.len() >= 80 && d.iter().any(|s| *s != d[0]))
        else {
            continue;
        };
        let needle = &decoded[anchor];
        let mut placed = None;
        for (call_id, channel) in &candidates {
            let cdr = cdrs
                .iter()
                .find(|c| &c.call_id == call_id)
                .expect("cdr for stream");
            let codec = if *pt == 8 { "PCMA" } else { "PCMU" };
            if !ambiguous {
                assert!(
                    cdr.codecs.iter().any(|c| c == codec),
                    "{name} {call_id}: codecs {:?} lack {codec}",
                    cdr.codecs
                );
            }
            let Some(rec) = cdr.recording.as_ref() else {
                continue;
            };
            let mut wav = hound::WavReader::open(&rec.path).expect("open wav");
            assert_eq!(wav.spec().channels, 2);
            assert_eq!(wav.spec().sample_rate, 8000, "{name}: G.711-only call");
            let samples: Vec<i16> = wav.samples::<i16>().map(|s| s.expect("sample")).collect();
            let chan: Vec<i16> = samples.iter().skip(*channel).step_by(2).copied().collect();
            if let Some(at) = chan.windows(needle.len()).position(|w| w == &needle[..]) {
                placed = Some((call_id.clone(), *channel, chan, at));
                break;
            }
        }
        let Some((call_id, channel, chan, at)) = placed else {
            panic!(
                "{name} {ssrc}: packet seq {} found in no candidate channel {candidates:?}",
                packets[anchor].seq
            );
        };
        let base_ts = packets[anchor].ts;
        for (p, d) in packets.iter().zip(&decoded) {
            let off = p.ts.wrapping_sub(base_ts) as i32 as i64;
            let pos = at as i64 + off;
            assert!(
                pos >= 0 && pos as usize + d.len() <= chan.len(),
                "{name} {call_id}: seq {} outside the recording",
                p.seq
            );
            let got = &chan[pos as usize..pos as usize + d.len()];
            assert_eq!(
                got,
                &d[..],
                "{name} {call_id} {ssrc}: seq {} ts {} differs in channel {channel}",
                p.seq,
                p.ts
            );
        }
        verified += packets.len();
    }
    assert!(
        streams.is_empty() || verified > 0,
        "{name}: {} G.711 streams, none verified",
        streams.len()
    );
    let _ = std::fs::remove_dir_all(dir);
    verified
}

#[test]
fn g711_one_way_calls_pcmu_and_pcma() {
    let n = check_file("sip-rtp-g711.pcap");
    assert!(n == 0 || n >= 839, "verified {n} packets");
}

#[test]
fn pcma_with_rfc2833_dtmf() {
    check_file("SIP_DTMF2.cap");
}

#[test]
fn early_media_183_both_ways() {
    check_file("nb6-telephone.pcap");
}

#[test]
fn rtcp_and_two_dialogs() {
    check_file("heplify-rtp_rtcp_sip_ipv4_udp.pcap");
}

#[test]
fn pcma_with_comfort_noise_and_rtcp() {
    check_file("sipnab_rtp-protocol.pcap");
}

#[test]
fn b2bua_two_legs_with_reinvites() {
    check_file("sipnab_b2bua-asterisk.pcapng");
}

#[test]
fn sip_over_tcp_with_pcma() {
    check_file("heplify-sip_ipv4_tcp.pcap");
}

/// G.722 (16 kHz wideband): the whole stream decoded by ffmpeg's G.722 decoder (independent of
/// CallTap's) must appear sample-exact in the caller's channel of a 16 kHz recording.
#[test]
fn g722_wideband_matches_ffmpeg() {
    let Some(corpus) = support::corpus() else {
        return;
    };
    if !have("tshark") || Command::new("ffmpeg").arg("-version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tshark and ffmpeg are needed (cargo xtask setup installs them)"
        );
        eprintln!("SKIP: tshark/ffmpeg missing");
        return;
    }
    let file = corpus.join("sip-rtp-g722.pcap");
    let (cdrs, dir) = replay_file(&file, "g722");
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert!(cdr.codecs.iter().any(|c| c == "G722"), "{:?}", cdr.codecs);
    let rows = tshark_fields(&file, "rtp && rtp.p_type == 9", &["rtp.seq", "rtp.payload"]);
    let mut payload = Vec::new();
    for r in &rows {
        payload.extend(hex_bytes(&r[1]));
    }
    assert_eq!(rows.len(), 425);
    let raw_in = dir.join("stream.g722");
    let raw_out = dir.join("stream.s16");
    std::fs::write(&raw_in, &payload).expect("write g722");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "g722", "-i"])
        .arg(&raw_in)
        .args(["-f", "s16le", "-ac", "1", "-ar", "16000"])
        .arg(&raw_out)
        .status()
        .expect("run ffmpeg");
    assert!(st.success());
    let reference: Vec<i16> = std::fs::read(&raw_out)
        .expect("ffmpeg output")
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(
        reference.len(),
        payload.len() * 2,
        "G.722: two samples per byte"
    );
    let rec = cdr.recording.as_ref().expect("recording");
    let mut wav = hound::WavReader::open(&rec.path).expect("wav");
    assert_eq!(
        wav.spec().sample_rate,
        16_000,
        "G.722 calls are recorded wideband"
    );
    let samples: Vec<i16> = wav.samples::<i16>().map(|s| s.expect("sample")).collect();
    // The stream goes 10.0.2.15 -> 10.0.2.20: find which channel carries it.
    let found = (0..2).any(|ch| {
        let chan: Vec<i16> = samples.iter().skip(ch).step_by(2).copied().collect();
        chan.windows(reference.len()).any(|w| w == &reference[..])
    });
    assert!(
        found,
        "ffmpeg's decode of the G.722 stream is not in the recording sample-exact"
    );
    let _ = std::fs::remove_dir_all(dir);
}
