//! Every public capture in the corpus through `calltap replay`: no crash, a clear error for
//! formats CallTap does not read, and the calls tshark finds (distinct Call-IDs of INVITEs) are
//! the calls CallTap records. Calls in codecs CallTap does not decode are still recorded, with
//! their RTP kept in a pcap beside the recording and the codec named in the CDR.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use calltap_lab::corpus::{corpus, corpus_with_tools};

use calltap::{
    config::Config,
    daemon::replay::{replay, ReplaySummary},
    store::cdr::Cdr,
};

/// tshark's distinct Call-IDs of INVITEs in `file` (with extra decode-as rules).
fn tshark_calls(file: &Path, decode_as: &[&str]) -> BTreeSet<String> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(file);
    for d in decode_as {
        cmd.args(["-d", d]);
    }
    let out = cmd
        .args([
            "-Y",
            "sip.Method == \"INVITE\"",
            "-T",
            "fields",
            "-e",
            "sip.Call-ID",
        ])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn run(file: &Path) -> (Vec<Cdr>, ReplaySummary, PathBuf) {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    let dir = std::env::temp_dir().join(format!(
        "calltap-corpus-calls-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::load_with_env(None, &[]).expect("config");
    cfg.storage.data_dir = dir.clone();
    cfg.capture.workers = 2;
    let mut cdrs = Vec::new();
    let summary = replay(&cfg, &[file.to_path_buf()], |c| cdrs.push(c.clone()));
    (cdrs, summary, dir)
}

struct Expect {
    file: &'static str,
    /// tshark `-d` rules so tshark sees SIP where CallTap finds it by content.
    decode_as: &'static [&'static str],
    /// Codecs the CDRs must name as unsupported (raw RTP kept).
    unsupported: &'static [&'static str],
}

const fn e(file: &'static str) -> Expect {
    Expect {
        file,
        decode_as: &[],
        unsupported: &[],
    }
}

const fn u(file: &'static str, unsupported: &'static [&'static str]) -> Expect {
    Expect {
        file,
        decode_as: &[],
        unsupported,
    }
}

const EXPECT: &[Expect] = &[
    e("Asterisk_ZFONE_XLITE.pcap"),
    // SIP INFO DTMF on a PPPoE access link.
    e("DTMFsipinfo.pcap"),
    e("SIP_DTMF2.cap"),
    e("aaa.pcap"),
    u("h263-over-rtp.pcap", &[]),
    u("heplify-FAX-Call-t38-CA-TDM-SIP-FB-1.pcap", &[]),
    // Remote SPAN: every frame inside ERSPAN/GRE.
    e("heplify-erspan_sip_ipv4_udp.pcapng"),
    e("heplify-ipv6_udp_fragmented.pcap"),
    e("heplify-rtp_rtcp_sip_ipv4_udp.pcap"),
    e("heplify-sip_ipv4_tcp.pcap"),
    // SIP on TCP port 6060: found by content, then the port is followed.
    Expect {
        file: "heplify-sip_ipv4_tcp_fragmented.pcap",
        decode_as: &["tcp.port==6060,sip"],
        unsupported: &[],
    },
    e("heplify-sip_ipv4_tcp_retrans.pcap"),
    e("heplify-sip_ipv6_udp.pcap"),
    e("heplify-sip_tcp_websocket.pcap"),
    e("marseillaise-srtp.pcap"),
    e("metasploit-sip-invite-spoof.pcap"),
    e("nb6-telephone.pcap"),
    u("ndpi-FAX-Call-t38-CA-TDM-SIP-FB-1.pcap", &[]),
    e("ndpi_rtcp_multiple_pkts.pcap"),
    e("sip-rtp-g711.pcap"),
    e("sip-rtp-g722.pcap"),
    e("sip-rtp-g726.pcap"),
    u("sip-rtp-g729a.pcap", &["G729"]),
    e("sip-rtp-gsm.pcap"),
    u("sip-rtp-ilbc.pcap", &["ILBC"]),
    u("sip-rtp-l16.pcap", &["L16"]),
    u("sip-rtp-lpc.pcap", &["LPC"]),
    u("sip-rtp-opus-hybrid.pcap", &["OPUS"]),
    u("sip-rtp-opus.pcap", &["OPUS"]),
    u("sip-rtp-speex.pcap", &["SPEEX"]),
    e("sipnab_b2bua-asterisk.pcapng"),
    e("sipnab_codec-negotiation.pcap"),
    e("sipnab_g722_rtponly.pcap"),
    u("sipnab_invite-opus-bye.pcap", &["OPUS"]),
    u("sipnab_register-invite-reinvite-bye.pcap", &["OPUS"]),
    e("sipnab_rtp-protocol.pcap"),
    e("sipp-dtmf2833-digit1-rtp-only.pcap"),
    e("sipp-g711a-rtp-only.pcap"),
    e("sngrep_ipip.pcap"),
    e("sngrep_ipv6frag.pcap"),
];

#[test]
fn every_call_tshark_finds_is_recorded() {
    let Some(corpus) = corpus_with_tools("every_call_tshark_finds_is_recorded", &["tshark"]) else {
        return;
    };
    for ex in EXPECT {
        let file = corpus.join(ex.file);
        let (cdrs, summary, dir) = run(&file);
        assert!(
            summary.errors.is_empty(),
            "{}: {:?}",
            ex.file,
            summary.errors
        );
        let want = tshark_calls(&file, ex.decode_as);
        let got: BTreeSet<String> = cdrs.iter().map(|c| c.call_id.clone()).collect();
        assert_eq!(
            got, want,
            "{}: Call-IDs CallTap recorded vs tshark",
            ex.file
        );
        for cdr in &cdrs {
            // Every BYE and CANCEL in these captures travels its dialog's signalling path
            // (proxies and B2BUAs included): none is taken for a spoofed one.
            assert!(
                cdr.rejected_requests
                    .iter()
                    .all(|r| r.method != "BYE" && r.method != "CANCEL"),
                "{}: {}: {:?}",
                ex.file,
                cdr.call_id,
                cdr.rejected_requests
            );
            assert!(
                cdr.start_ns <= cdr.end_ns,
                "{}: {} ends before it starts",
                ex.file,
                cdr.call_id
            );
            if let Some(rec) = &cdr.recording {
                assert!(
                    rec.path.starts_with(&dir),
                    "{}: recording outside the data dir: {}",
                    ex.file,
                    rec.path.display()
                );
                let wav = hound::WavReader::open(&rec.path)
                    .unwrap_or_else(|e| panic!("{}: {e}", rec.path.display()));
                assert_eq!(wav.spec().channels, 2);
            }
        }
        for codec in ex.unsupported {
            let cdr = cdrs
                .iter()
                .find(|c| {
                    c.unsupported_codecs
                        .iter()
                        .any(|u| u.eq_ignore_ascii_case(codec))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no CDR names {codec} unsupported: {:?}",
                        ex.file,
                        cdrs.iter()
                            .map(|c| &c.unsupported_codecs)
                            .collect::<Vec<_>>()
                    )
                });
            let rec = cdr
                .recording
                .as_ref()
                .unwrap_or_else(|| panic!("{}: {codec} call has no recording entry", ex.file));
            let raw = rec
                .raw_rtp_pcap
                .as_ref()
                .unwrap_or_else(|| panic!("{}: {codec} RTP not kept", ex.file));
            let kept = std::fs::metadata(raw).map(|m| m.len()).unwrap_or(0);
            assert!(
                kept > 24,
                "{}: raw RTP pcap {} is empty",
                ex.file,
                raw.display()
            );
        }
        eprintln!(
            "CHECKED {}: {} calls, the Call-IDs tshark finds; {} unsupported codecs kept raw",
            ex.file,
            got.len(),
            ex.unsupported.len()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn erspan_frames_are_unwrapped() {
    let Some(corpus) = corpus("erspan_frames_are_unwrapped") else {
        return;
    };
    let (cdrs, summary, dir) = run(&corpus.join("heplify-erspan_sip_ipv4_udp.pcapng"));
    assert!(
        summary.counters.get("encap").copied().unwrap_or(0) > 0,
        "{:?}",
        summary.counters
    );
    assert!(cdrs.len() >= 3, "{} calls", cdrs.len());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sip_only_calls_at_volume_become_no_audio() {
    let Some(corpus) = corpus("sip_only_calls_at_volume_become_no_audio") else {
        return;
    };
    let (cdrs, summary, dir) = run(&corpus.join("sipnab_sipp-branch-scenario.pcapng"));
    assert_eq!(cdrs.len(), 1334);
    assert_eq!(
        summary.signalling.calls_started,
        summary.signalling.calls_ended
    );
    for c in &cdrs {
        assert_eq!(
            c.packets.caller + c.packets.callee,
            0,
            "{}: audio from nowhere",
            c.call_id
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreadable_formats_fail_with_file_and_offset() {
    let Some(corpus) = corpus("unreadable_formats_fail_with_file_and_offset") else {
        return;
    };
    // A Microsoft NetMon capture: not pcap, not pcapng.
    let (cdrs, summary, dir) = run(&corpus.join("c07-sip-r2.cap"));
    assert!(cdrs.is_empty());
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    assert!(
        summary.errors[0].contains("c07-sip-r2.cap") && summary.errors[0].contains("offset 0"),
        "{}",
        summary.errors[0]
    );
    let _ = std::fs::remove_dir_all(dir);
}
