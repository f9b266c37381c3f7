//! Public captures through `calltap replay`: every call tshark sees is recorded, and every G.711
//! RTP packet's audio, decoded independently (tshark extracts the payload, sox decodes it with
//! the standard tables), appears bit-exactly in the right channel of the call's WAV, at the
//! position its RTP timestamp gives. Each test names every RTP direction tshark finds in its
//! capture: the ones that must be verified (with their packet counts, from the corpus
//! MANIFEST's tshark counts), and the ones that carry no call's audio, with the reason. A
//! direction that is missing, unnamed or not verified fails the test, and each verified one
//! prints a `VERIFIED` line.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use calltap::{config::Config, daemon::replay::replay, store::cdr::Cdr};
use calltap_lab::corpus::corpus_with_tools;

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
    let out = Command::new("sox")
        .args(["-t", "raw", "-e", enc, "-r", "8000", "-b", "8", "-c", "1"])
        .arg(&inp)
        .args(["-t", "raw", "-e", "signed", "-b", "16", "-L"])
        .arg(&outp)
        .output()
        .expect("run sox");
    assert!(
        out.status.success(),
        "sox failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
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

/// One RTP direction of a capture, as tshark names it: `src:port -> dst:port`.
struct Direction {
    dir: &'static str,
    /// G.711 packets tshark finds in it.
    packets: usize,
}

/// A direction carrying no call's audio, and why.
struct NoCall {
    dir: &'static str,
    why: &'static str,
}

const fn dir(dir: &'static str, packets: usize) -> Direction {
    Direction { dir, packets }
}

/// Replays `name` and checks its calls, then every G.711 direction tshark finds: each in
/// `want` must appear sample-exact in a call's channel (every packet, at the position its RTP
/// timestamp gives), each in `no_call` must match no call's SDP, and there must be no other.
fn check_file(name: &str, want: &[Direction], no_call: &[NoCall]) {
    let Some(corpus) = corpus_with_tools(name, &["tshark", "sox"]) else {
        return;
    };
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
        assert_eq!(r.len(), 10, "{name}: tshark row {r:?}");
        let key = (
            format!("{}:{}", r[0], r[1]),
            format!("{}:{}", r[2], r[3]),
            r[4].clone(),
            r[5].parse().expect("rtp.p_type"),
        );
        let at_ns = (r[9].parse::<f64>().expect("frame.time_epoch") * 1e9) as u64;
        streams.entry(key).or_default().push(Packet {
            at_ns,
            seq: r[6].parse().expect("rtp.seq"),
            ts: r[7].parse().expect("rtp.timestamp"),
            payload: hex_bytes(&r[8]),
        });
    }
    // The directions tshark finds are exactly the ones the test names.
    let found: BTreeMap<String, usize> = streams.iter().fold(BTreeMap::new(), |mut m, (k, p)| {
        *m.entry(format!("{} -> {}", k.0, k.1)).or_default() += p.len();
        m
    });
    let named: BTreeMap<String, usize> = want
        .iter()
        .map(|w| (w.dir.to_owned(), w.packets))
        .chain(
            no_call
                .iter()
                .map(|n| (n.dir.to_owned(), found.get(n.dir).copied().unwrap_or(0))),
        )
        .collect();
    assert_eq!(
        found, named,
        "{name}: G.711 directions (packets) tshark finds vs the ones this test names"
    );
    let mut verified: Vec<String> = Vec::new();
    for ((src, dst, ssrc, pt), packets) in &streams {
        let direction = format!("{src} -> {dst}");
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
        if let Some(n) = no_call.iter().find(|n| n.dir == direction) {
            assert!(
                candidates.is_empty(),
                "{name}: {direction} is named as no call's audio ({}) but matches {candidates:?}",
                n.why
            );
            eprintln!(
                "{name}: {direction} ssrc {ssrc}: {} packets, no call's audio: {}",
                packets.len(),
                n.why
            );
            continue;
        }
        // One host named in both sides' SDP (a media relay captured on both legs), or one
        // endpoint claimed by two calls (a B2BUA's legs): SDP cannot say which channel is right,
        // so any candidate may hold the stream, but one must, sample-exact.
        let ambiguous = candidates.len() > 1;
        assert!(
            !candidates.is_empty(),
            "{name}: {direction} ssrc {ssrc} matches no call's SDP"
        );
        let decoded: Vec<Vec<i16>> = packets
            .iter()
            .map(|p| sox_decode(&p.payload, *pt == 8))
            .collect();
        // Anchor: the first packet whose audio is not constant, found in the channel.
        let anchor = decoded
            .iter()
            .position(|d| d.len() >= 80 && d.iter().any(|s| *s != d[0]))
            .unwrap_or_else(|| {
                panic!("{name}: {direction} ssrc {ssrc}: no packet with varying audio to anchor")
            });
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
                "{name}: {direction} ssrc {ssrc}: packet seq {} found in no candidate channel \
                 {candidates:?}",
                packets[anchor].seq
            );
        };
        let base_ts = packets[anchor].ts;
        let mut samples = 0;
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
            samples += d.len();
        }
        eprintln!(
            "VERIFIED {name}: {direction} ssrc {ssrc} PT {pt}: {} packets, {samples} samples \
             equal sox's decode in call {call_id} channel {channel}",
            packets.len()
        );
        verified.push(direction);
    }
    verified.sort();
    let mut expected: Vec<String> = want.iter().map(|w| w.dir.to_owned()).collect();
    expected.sort();
    assert_eq!(verified, expected, "{name}: directions verified vs named");
    let _ = std::fs::remove_dir_all(dir);
}

/// Two calls one after the other, one-way media each (sendonly): PCMU, then PCMA.
#[test]
fn g711_one_way_calls_pcmu_and_pcma() {
    check_file(
        "sip-rtp-g711.pcap",
        &[
            dir("10.0.2.15:27942 -> 10.0.2.20:6000", 425),
            dir("10.0.2.15:28102 -> 10.0.2.20:6000", 414),
        ],
        &[],
    );
}

/// PCMA both ways; RFC 2833 events (PT 96) inside the callee's stream are not audio.
#[test]
fn pcma_with_rfc2833_dtmf() {
    check_file(
        "SIP_DTMF2.cap",
        &[
            dir("192.168.105.110:4374 -> 192.168.105.172:4376", 665),
            dir("192.168.105.172:4376 -> 192.168.105.110:4376", 631),
        ],
        &[],
    );
}

/// 183 early media, PCMA both ways.
#[test]
fn early_media_183_both_ways() {
    check_file(
        "nb6-telephone.pcap",
        &[
            dir("10.251.23.139:35560 -> 109.3.79.137:44344", 248),
            dir("109.3.79.137:44344 -> 10.251.23.139:35560", 261),
        ],
        &[],
    );
}

/// Two INVITE dialogs and RTCP; the second call is never answered in the capture.
#[test]
fn rtcp_and_two_dialogs() {
    check_file(
        "heplify-rtp_rtcp_sip_ipv4_udp.pcap",
        &[
            dir("200.57.7.196:40376 -> 200.57.7.204:8000", 891),
            dir("200.57.7.204:8000 -> 200.57.7.196:40376", 548),
        ],
        &[NoCall {
            dir: "200.57.7.202:30000 -> 200.57.7.196:40362",
            why: "6 packets to a port no SDP names (the second call offers 40360), sent before \
                  that call's INVITE",
        }],
    );
}

/// PCMA with comfort noise (PT 13 is not audio) and RTCP.
#[test]
fn pcma_with_comfort_noise_and_rtcp() {
    check_file(
        "sipnab_rtp-protocol.pcap",
        &[
            dir("10.33.6.100:6020 -> 10.33.6.101:6040", 39),
            dir("10.33.6.101:6040 -> 10.33.6.100:6020", 196),
        ],
        &[],
    );
}

/// A B2BUA's two legs, re-INVITEd so media flows directly between the phones.
#[test]
fn b2bua_two_legs_with_reinvites() {
    check_file(
        "sipnab_b2bua-asterisk.pcapng",
        &[
            dir("172.16.98.1:8000 -> 172.16.98.145:8000", 1),
            dir("172.16.98.145:8000 -> 172.16.98.1:8000", 355),
        ],
        &[],
    );
}

/// SIP over TCP; PCMA with comfort noise both ways.
#[test]
fn sip_over_tcp_with_pcma() {
    check_file(
        "heplify-sip_ipv4_tcp.pcap",
        &[
            dir("10.33.6.100:6000 -> 10.33.6.101:6050", 20),
            dir("10.33.6.101:6050 -> 10.33.6.100:6000", 40),
        ],
        &[],
    );
}

/// G.722 (16 kHz wideband): the whole stream decoded by ffmpeg's G.722 decoder (independent of
/// CallTap's) must appear sample-exact in the caller's channel of a 16 kHz recording.
#[test]
fn g722_wideband_matches_ffmpeg() {
    let Some(corpus) = corpus_with_tools("g722_wideband_matches_ffmpeg", &["tshark", "ffmpeg"])
    else {
        return;
    };
    let file = corpus.join("sip-rtp-g722.pcap");
    let (cdrs, dir) = replay_file(&file, "g722");
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert!(cdr.codecs.iter().any(|c| c == "G722"), "{:?}", cdr.codecs);
    // One direction, the caller's (the call is one-way): 425 packets.
    let rows = tshark_fields(
        &file,
        "rtp && rtp.p_type == 9",
        &[
            "ip.src",
            "udp.srcport",
            "ip.dst",
            "udp.dstport",
            "rtp.payload",
        ],
    );
    let directions: BTreeMap<String, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(format!("{}:{} -> {}:{}", r[0], r[1], r[2], r[3]))
            .or_default() += 1;
        m
    });
    assert_eq!(
        directions,
        BTreeMap::from([("10.0.2.15:17472 -> 10.0.2.20:6000".to_owned(), 425)]),
        "G.722 directions tshark finds"
    );
    let mut payload = Vec::new();
    for r in &rows {
        payload.extend(hex_bytes(&r[4]));
    }
    let raw_in = dir.join("stream.g722");
    let raw_out = dir.join("stream.s16");
    std::fs::write(&raw_in, &payload).expect("write g722");
    run(Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "g722", "-i"])
        .arg(&raw_in)
        .args(["-f", "s16le", "-ac", "1", "-ar", "16000"])
        .arg(&raw_out));
    let reference = s16le(&std::fs::read(&raw_out).expect("ffmpeg output"));
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
    let found = channel_holding(&samples, &reference);
    let Some(channel) = found else {
        panic!("ffmpeg's decode of the G.722 stream is not in the recording sample-exact");
    };
    eprintln!(
        "VERIFIED sip-rtp-g722.pcap: 10.0.2.15:17472 -> 10.0.2.20:6000 PT 9: {} packets, {} \
         samples equal ffmpeg's decode in channel {channel}",
        rows.len(),
        reference.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// L16 calls at 8 kHz and 16 kHz stereo and 48 kHz mono are recorded sample-exact: ffmpeg
/// reads each stream's payload bytes (`s16be`, the channels the SDP names) and the recording
/// holds them, a stereo stream as the mean of its channels rounded down (the decoder's
/// documented mix-down). The 11,025 Hz call is no rate a recording has: raw RTP, and the CDR
/// names the codec as unsupported.
#[test]
fn l16_at_the_recording_rates_matches_ffmpeg() {
    let test = "l16_at_the_recording_rates_matches_ffmpeg";
    let Some(corpus) = corpus_with_tools(test, &["tshark", "ffmpeg"]) else {
        return;
    };
    let file = corpus.join("sip-rtp-l16.pcap");
    let (cdrs, dir) = replay_file(&file, "l16");
    assert_eq!(cdrs.len(), 4, "four L16 calls");
    // (caller's RTP source port, rate, channels, packets), from the SDP and tshark's counts.
    let streams = [
        (26628u16, 8000u32, 2usize, 425usize),
        (24082, 16000, 2, 425),
        (31026, 48000, 1, 425),
    ];
    for (port, rate, channels, packets) in streams {
        let rows = tshark_fields(
            &file,
            &format!("rtp && udp.srcport == {port} && rtp.p_type == 99"),
            &["rtp.payload"],
        );
        assert_eq!(rows.len(), packets, "L16/{rate}: packets tshark finds");
        let payload: Vec<u8> = rows.iter().flat_map(|r| hex_bytes(&r[0])).collect();
        let raw_in = dir.join(format!("l16-{port}.raw"));
        let raw_out = dir.join(format!("l16-{port}.s16"));
        std::fs::write(&raw_in, &payload).expect("write payload");
        run(Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "s16be", "-ar"])
            .arg(rate.to_string())
            .arg("-ac")
            .arg(channels.to_string())
            .arg("-i")
            .arg(&raw_in)
            .args(["-f", "s16le"])
            .arg(&raw_out));
        let decoded: Vec<i32> = s16le(&std::fs::read(&raw_out).expect("ffmpeg output"))
            .into_iter()
            .map(i32::from)
            .collect();
        let reference: Vec<i16> = decoded
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<i32>().div_euclid(channels as i32) as i16)
            .collect();
        assert_eq!(reference.len(), payload.len() / (2 * channels));
        let cdr = cdrs
            .iter()
            .find(|c| {
                c.recording.as_ref().is_some_and(|r| {
                    hound::WavReader::open(&r.path).is_ok_and(|w| w.spec().sample_rate == rate)
                })
            })
            .unwrap_or_else(|| panic!("no recording at {rate} Hz"));
        assert!(cdr.codecs.iter().any(|c| c == "L16"), "{:?}", cdr.codecs);
        let rec = cdr.recording.as_ref().expect("recording");
        let mut wav = hound::WavReader::open(&rec.path).expect("wav");
        let samples: Vec<i16> = wav.samples::<i16>().map(|s| s.expect("sample")).collect();
        let found = channel_holding(&samples, &reference);
        let Some(channel) = found else {
            panic!(
                "L16/{rate}: ffmpeg's reading of the stream is not in the recording sample-exact"
            );
        };
        eprintln!(
            "VERIFIED sip-rtp-l16.pcap: port {port} L16/{rate}/{channels}: {packets} packets, {} \
             samples equal ffmpeg's in channel {channel}",
            reference.len()
        );
    }
    let unsupported: Vec<&Cdr> = cdrs
        .iter()
        .filter(|c| c.unsupported_codecs.iter().any(|u| u.contains("L16")))
        .collect();
    assert_eq!(
        unsupported.len(),
        1,
        "the 11,025 Hz call keeps raw RTP: {:?}",
        cdrs.iter()
            .map(|c| &c.unsupported_codecs)
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// GSM 06.10 (static PT 3, one 33-byte frame per packet): the whole stream decoded by ffmpeg's
/// GSM decoder (independent of CallTap's) must appear sample-exact in the callee's channel of
/// the 8 kHz recording.
#[test]
fn gsm_full_rate_matches_ffmpeg() {
    let Some(corpus) = corpus_with_tools("gsm_full_rate_matches_ffmpeg", &["tshark", "ffmpeg"])
    else {
        return;
    };
    let file = corpus.join("sip-rtp-gsm.pcap");
    let (cdrs, dir) = replay_file(&file, "gsm");
    assert_eq!(cdrs.len(), 1);
    let cdr = &cdrs[0];
    assert!(cdr.codecs.iter().any(|c| c == "GSM"), "{:?}", cdr.codecs);
    assert!(
        cdr.unsupported_codecs.is_empty(),
        "{:?}",
        cdr.unsupported_codecs
    );
    // One direction, the callee's (10.0.2.20 sends the INVITE, 10.0.2.15 answers sendonly):
    // 425 packets.
    let rows = tshark_fields(
        &file,
        "rtp && rtp.p_type == 3",
        &[
            "ip.src",
            "udp.srcport",
            "ip.dst",
            "udp.dstport",
            "rtp.payload",
        ],
    );
    let directions: BTreeMap<String, usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(format!("{}:{} -> {}:{}", r[0], r[1], r[2], r[3]))
            .or_default() += 1;
        m
    });
    assert_eq!(
        directions,
        BTreeMap::from([("10.0.2.15:18924 -> 10.0.2.20:6000".to_owned(), 425)]),
        "GSM directions tshark finds"
    );
    let mut payload = Vec::new();
    for r in &rows {
        let p = hex_bytes(&r[4]);
        assert_eq!(p.len(), 33, "one GSM frame per packet");
        assert_eq!(p[0] >> 4, 0xd, "GSM signature");
        payload.extend(p);
    }
    let raw_in = dir.join("stream.gsm");
    let raw_out = dir.join("stream.s16");
    std::fs::write(&raw_in, &payload).expect("write gsm");
    run(Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "gsm", "-i"])
        .arg(&raw_in)
        .args(["-f", "s16le", "-ac", "1", "-ar", "8000"])
        .arg(&raw_out));
    let reference = s16le(&std::fs::read(&raw_out).expect("ffmpeg output"));
    assert_eq!(
        reference.len(),
        rows.len() * 160,
        "GSM: 160 samples per frame"
    );
    assert!(
        reference.iter().any(|&s| s.unsigned_abs() > 1000),
        "the stream carries audio, not silence"
    );
    let rec = cdr.recording.as_ref().expect("recording");
    let mut wav = hound::WavReader::open(&rec.path).expect("wav");
    assert_eq!(
        wav.spec().sample_rate,
        8000,
        "GSM calls are recorded at 8 kHz"
    );
    let samples: Vec<i16> = wav.samples::<i16>().map(|s| s.expect("sample")).collect();
    let channel = |ch: usize| -> Vec<i16> { samples.iter().skip(ch).step_by(2).copied().collect() };
    // The callee's audio is the right channel; the caller sent nothing: silence on the left.
    assert!(
        channel(1)
            .windows(reference.len())
            .any(|w| w == &reference[..]),
        "ffmpeg's decode of the GSM stream is not in the callee's channel sample-exact"
    );
    assert!(
        channel(0).iter().all(|&s| s == 0),
        "the caller sent no audio"
    );
    eprintln!(
        "VERIFIED sip-rtp-gsm.pcap: 10.0.2.15:18924 -> 10.0.2.20:6000 PT 3: {} packets, {} \
         samples equal ffmpeg's decode in the callee's channel",
        rows.len(),
        reference.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `cmd`, failing the test with its stderr when it fails; returns its stdout.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn s16le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// AAL2 packing (first codeword in the high bits) repacked as RFC 3551's (first codeword in
/// the low bits): the same codewords, bit by bit.
fn aal2_to_rfc3551(payload: &[u8], bits: usize) -> Vec<u8> {
    let msb_first = payload
        .iter()
        .flat_map(|b| (0..8).rev().map(move |k| (b >> k) & 1));
    let mut codes = Vec::new();
    let mut code = 0u32;
    for (i, bit) in msb_first.enumerate() {
        code = (code << 1) | u32::from(bit);
        if i % bits == bits - 1 {
            codes.push(code);
            code = 0;
        }
    }
    let lsb_first: Vec<u8> = codes
        .iter()
        .flat_map(|c| (0..bits).map(move |k| ((c >> k) & 1) as u8))
        .collect();
    lsb_first
        .chunks(8)
        .map(|o| o.iter().enumerate().fold(0, |a, (k, bit)| a | (bit << k)))
        .collect()
}

/// The Sun Microsystems reference G.721/G.723 decoder (public g72x code, ITU-T conformant at
/// 24, 32 and 40 kbit/s) as sox runs it for a Sun .au file: RFC 3551 packing in, 16-bit PCM
/// out.
fn sun_reference_decode(dir: &Path, name: &str, rfc3551: &[u8], bits: usize) -> Vec<i16> {
    let encoding: u32 = match bits {
        3 => 25,
        4 => 23,
        5 => 26,
        _ => panic!("the Sun reference has no {bits}-bit G.726"),
    };
    let mut au = Vec::new();
    for word in [0x2e73_6e64, 28, rfc3551.len() as u32, encoding, 8000, 1, 0] {
        au.extend(u32::to_be_bytes(word));
    }
    au.extend(rfc3551);
    let (au_path, out_path) = (
        dir.join(format!("{name}.au")),
        dir.join(format!("{name}.sun")),
    );
    std::fs::write(&au_path, au).expect("write .au");
    run(Command::new("sox")
        .arg(&au_path)
        .args(["-t", "raw", "-e", "signed", "-b", "16", "-L"])
        .arg(&out_path));
    s16le(&std::fs::read(out_path).expect("sox output"))
}

/// The channel of a stereo recording that holds `reference` sample-exact, if one does.
fn channel_holding(samples: &[i16], reference: &[i16]) -> Option<usize> {
    (0..2).find(|&ch| {
        let chan: Vec<i16> = samples.iter().skip(ch).step_by(2).copied().collect();
        chan.windows(reference.len()).any(|w| w == reference)
    })
}

/// G.726 at 16, 24, 32 and 40 kbit/s, each in RFC 3551 packing (`G726-N`, codewords from the
/// least significant bits) and in AAL2 packing (`AAL2-G726-N`, from the most significant):
/// eight one-way calls, dynamic PT 99, 425 packets each, one of them across an RTP sequence
/// wrap.
///
/// The reference is the Sun Microsystems g72x decoder that sox runs: the recording holds its
/// decode of each 24, 32 and 40 kbit/s direction sample-exact. ffmpeg is no reference for
/// G.726: its decoder rounds the scale-factor MIX down where ITU-T G.726 truncates toward zero
/// and leaks the 40 kbit/s zero predictor by 2^-8 instead of 2^-9, so its decode drifts from
/// the encoder's; it is used here for the packing only: its `g726le` reading of each `G726-N`
/// call and its `g726` reading of the `AAL2-G726-N` call are the same audio, so the two calls
/// carry the same codewords in the two bit orders, and the two recordings must agree. The
/// 16 kbit/s rate has no reference here (the Sun code predates it): its two directions are
/// checked for packing (both calls recorded alike) but not against an independent decoder.
#[test]
fn g726_both_packings_match_the_sun_reference() {
    let test = "g726_both_packings_match_the_sun_reference";
    let Some(corpus) = corpus_with_tools(test, &["tshark", "ffmpeg", "sox"]) else {
        return;
    };
    let file = corpus.join("sip-rtp-g726.pcap");
    let (cdrs, dir) = replay_file(&file, "g726");
    assert_eq!(cdrs.len(), 8, "eight G.726 calls");
    // (bits, the callee's RTP source port of the RFC 3551 call, of the AAL2 call), from
    // `tshark -Y sdp` and `-z rtp,streams`: 425 packets each, 10.0.2.15 -> 10.0.2.20:6000.
    let rates = [
        (2usize, 26326u16, 22606u16),
        (3, 28354, 23040),
        (4, 18180, 27442),
        (5, 31690, 16984),
    ];
    let mut verified = 0;
    for (bits, rfc_port, aal2_port) in rates {
        let kbits = bits * 8;
        let mut recorded: Vec<Vec<i16>> = Vec::new();
        let mut ffmpeg_decodes: Vec<Vec<i16>> = Vec::new();
        for (port, aal2) in [(rfc_port, false), (aal2_port, true)] {
            let name = format!("{}G726-{kbits}", if aal2 { "AAL2-" } else { "" });
            let rows = tshark_fields(
                &file,
                &format!("rtp && udp.srcport == {port} && rtp.p_type == 99"),
                &["ip.src", "ip.dst", "udp.dstport", "rtp.payload"],
            );
            assert_eq!(rows.len(), 425, "{name}: packets tshark finds");
            assert!(
                rows.iter()
                    .all(|r| r[0] == "10.0.2.15" && r[1] == "10.0.2.20" && r[2] == "6000"),
                "{name}: one direction"
            );
            let payload: Vec<u8> = rows.iter().flat_map(|r| hex_bytes(&r[3])).collect();
            let samples = payload.len() * 8 / bits;
            assert_eq!(samples, 425 * 160, "{name}: 20 ms packets");

            let raw = dir.join(format!("{name}.raw"));
            std::fs::write(&raw, &payload).expect("write payload");
            let decoded = run(Command::new("ffmpeg")
                .args(["-loglevel", "error", "-y", "-f"])
                .arg(if aal2 { "g726" } else { "g726le" })
                .args(["-code_size", &bits.to_string(), "-i"])
                .arg(&raw)
                .args(["-f", "s16le", "-"]));
            ffmpeg_decodes.push(s16le(&decoded));

            let cdr = cdrs
                .iter()
                .find(|c| c.codecs.iter().any(|n| n == &name))
                .unwrap_or_else(|| panic!("no call names {name}: {:?}", cdrs[0].codecs));
            let rec = cdr.recording.as_ref().expect("recording");
            let mut wav = hound::WavReader::open(&rec.path).expect("wav");
            assert_eq!(wav.spec().sample_rate, 8000, "{name}: narrowband");
            let wav: Vec<i16> = wav.samples::<i16>().map(|s| s.expect("sample")).collect();

            if bits == 2 {
                // No independent 16 kbit/s reference: the channel with audio, for the packing
                // check below.
                let chan = (0..2)
                    .map(|ch| wav.iter().skip(ch).step_by(2).copied().collect::<Vec<_>>())
                    .max_by_key(|c| c.iter().filter(|&&s| s != 0).count())
                    .expect("two channels");
                recorded.push(chan);
                continue;
            }
            let rfc3551 = if aal2 {
                aal2_to_rfc3551(&payload, bits)
            } else {
                payload.clone()
            };
            let reference = sun_reference_decode(&dir, &name, &rfc3551, bits);
            assert_eq!(
                reference.len(),
                samples,
                "{name}: the Sun reference's samples"
            );
            let Some(channel) = channel_holding(&wav, &reference) else {
                panic!("{name}: the Sun reference's decode is not in the recording sample-exact");
            };
            let ffmpeg_off = reference
                .iter()
                .zip(ffmpeg_decodes.last().expect("decoded"))
                .filter(|(a, b)| a != b)
                .count();
            eprintln!(
                "VERIFIED sip-rtp-g726.pcap: 10.0.2.15:{port} -> 10.0.2.20:6000 PT 99 {name}: \
                 425 packets, {samples} samples equal the Sun reference's decode in channel \
                 {channel} (ffmpeg's decode differs in {ffmpeg_off})"
            );
            verified += 1;
            recorded.push(reference);
        }
        assert_eq!(
            ffmpeg_decodes[0], ffmpeg_decodes[1],
            "G726-{kbits} and AAL2-G726-{kbits}: ffmpeg reads the same audio in the two bit orders"
        );
        if bits == 2 {
            let (a, b) = (&recorded[0], &recorded[1]);
            let start = |c: &[i16]| c.iter().position(|&s| s != 0).unwrap_or(0);
            let (a, b) = (&a[start(a)..], &b[start(b)..]);
            let n = a.len().min(b.len());
            assert!(n >= 60_000, "G726-16: audio recorded ({n} samples)");
            assert_eq!(
                a[..n],
                b[..n],
                "G726-16 and AAL2-G726-16 carry the same codewords: recorded alike"
            );
            eprintln!(
                "PACKING-ONLY sip-rtp-g726.pcap: 10.0.2.15:{rfc_port} G726-16 and \
                 10.0.2.15:{aal2_port} AAL2-G726-16 -> 10.0.2.20:6000: recorded alike ({n} \
                 samples); no independent 16 kbit/s reference to compare with"
            );
        }
    }
    assert_eq!(verified, 6, "every 24, 32 and 40 kbit/s direction verified");
    let _ = std::fs::remove_dir_all(dir);
}
