//! Real SIP peers: sipp (Debian `sip-tester`) calling sipp through the lab switch, each side
//! playing its own tone as RTP so both directions of every call carry known audio.
//!
//! sipp 3.6 sends every call of one instance from the same media port, so calls of one
//! instance run one after another; concurrency comes from several instance pairs at once, each
//! with its own addresses and ports and its own scenario (plain call, DTMF, hold/resume,
//! CANCEL, busy, no BYE). A pair may also differ by [`Variant`]: codec (PCMU, PCMA, G.722),
//! SIP over TCP, an INVITE padded past the MTU, or audio sent with loss and jitter.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    codec_ref::{coded_tone, Codec, CodedTone},
    files::read_wav,
    load::check_channel,
    netns::{ns_command, uas_ip, NS_UAC, NS_UAS, UAC_IP},
    rtp_pcap::{
        dtmf_packets, impair, tone_packets, tone_payloads, ulaw_decode, write_rtp_pcap, RtpOut,
        ToneSpec, SAMPLES_PER_PACKET,
    },
};

/// What the calls of one sipp pair do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Answer, audio both ways, caller hangs up.
    Basic,
    /// As Basic, then the caller sends RFC 4733 digits [`DTMF_DIGITS`].
    Dtmf,
    /// Audio, caller holds (re-INVITE sendonly) for [`HOLD_MS`], resumes (re-INVITE sendrecv),
    /// audio again, BYE.
    Hold,
    /// The caller cancels while it rings.
    Cancel,
    /// The callee answers 486 Busy Here.
    Busy,
    /// Answered, audio, and then nobody sends BYE.
    NoBye,
}

/// Digits the DTMF scenario sends after its audio.
pub const DTMF_DIGITS: &str = "15#";
/// How long the Hold scenario stays on hold.
pub const HOLD_MS: u64 = 1500;

impl Scenario {
    /// The end reason CallTap must report.
    pub fn end_reason(self) -> &'static str {
        match self {
            Scenario::Basic | Scenario::Dtmf | Scenario::Hold => "bye_caller",
            Scenario::Cancel => "cancel",
            Scenario::Busy => "failure_486",
            Scenario::NoBye => "media_timeout",
        }
    }

    /// True when the call is answered and carries audio.
    pub fn answered(self) -> bool {
        !matches!(self, Scenario::Cancel | Scenario::Busy)
    }
}

/// How a pair's SIP travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// One UDP socket per sipp instance (`-t u1`).
    #[default]
    Udp,
    /// One TCP connection per sipp pair, carrying all its calls one after another (`-t t1`).
    Tcp,
}

impl Transport {
    /// sipp's `-t` mode.
    fn sipp(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
}

/// What sets one pair's calls apart besides their [`Scenario`]: codec, transport and the size
/// of the INVITE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Variant {
    pub codec: Codec,
    pub transport: Transport,
    /// Bytes of `X-Pad-N` headers added to the initial INVITE: over the link MTU (1500) a UDP
    /// INVITE leaves the caller's kernel as IP fragments.
    pub invite_padding: usize,
    /// PCMU only: both sides play [`impaired_packets`] (2 % loss, +-5 ms jitter) instead of
    /// the whole tone.
    pub impaired: bool,
}

/// What the impaired variant takes away: per mille of packets lost, and the send-time jitter.
pub const IMPAIRED_LOSS_PER_MILLE: u32 = 20;
pub const IMPAIRED_JITTER_MS: u64 = 5;

/// The caller's and the callee's tone as the impaired variant sends them (see
/// [`crate::rtp_pcap::impair`]; a different loss pattern each way).
pub fn impaired_packets(packets: usize) -> [Vec<RtpOut>; 2] {
    [(caller_tone(packets), 15), (callee_tone(packets), 16)].map(|(spec, seed)| {
        impair(
            &tone_packets(&spec, 0),
            IMPAIRED_LOSS_PER_MILLE,
            IMPAIRED_JITTER_MS,
            seed,
        )
    })
}

fn sdp(direction: &str, codec: Codec) -> String {
    let (pt, name) = (codec.pt(), codec.name());
    format!(
        "v=0\no=lab 53655765 2353687637 IN IP[local_ip_type] [local_ip]\ns=-\nc=IN IP[media_ip_type] [media_ip]\nt=0 0\nm=audio [media_port] RTP/AVP {pt} 101\na=rtpmap:{pt} {name}/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na={direction}\n"
    )
}

/// `X-Pad-N` header lines of about `bytes` in all (200-byte values, as long Record-Route or
/// P-headers of carriers are).
fn padding_headers(bytes: usize) -> String {
    (0..bytes.div_ceil(212))
        .map(|i| format!("X-Pad-{i:02}: {}\n", "p".repeat(200)))
        .collect()
}

/// A request from the caller inside the dialog (or the initial INVITE when `cseq == 1`).
fn uac_request(method: &str, cseq: u32, body: Option<&str>, retrans: bool) -> String {
    uac_request_padded(method, cseq, body, retrans, "")
}

/// [`uac_request`] with `extra` header lines (each ending in a newline) before the body.
fn uac_request_padded(
    method: &str,
    cseq: u32,
    body: Option<&str>,
    retrans: bool,
    extra: &str,
) -> String {
    let to_tag = if method == "INVITE" && cseq == 1 || method == "CANCEL" {
        ""
    } else {
        "[peer_tag_param]"
    };
    // INVITE and its CANCEL share a branch (RFC 3261 9.1); other requests get their own.
    let branch = if method == "CANCEL" || (method == "INVITE" && cseq == 1) {
        "z9hG4bK[pid]x[call_number]i".to_owned()
    } else {
        format!("z9hG4bK[pid]x[call_number]c{cseq}")
    };
    let (ctype, body) = match body {
        Some(b) => ("Content-Type: application/sdp\n", b.to_owned()),
        None => ("", String::new()),
    };
    format!(
        r#"  <send{retrans}><![CDATA[
{method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
From: "Lab Caller" <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]lab[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
X-CID: lab-[call_id]
{extra}{ctype}Content-Length: [len]

{body}
]]></send>
"#,
        retrans = if retrans { r#" retrans="500""# } else { "" },
    )
}

/// A response from the callee to the last request.
fn uas_response(
    code: u16,
    reason: &str,
    add_tag: bool,
    cseq: Option<&str>,
    body: Option<&str>,
) -> String {
    let tag = if add_tag {
        ";tag=[pid]uas[call_number]"
    } else {
        ""
    };
    let retrans = if code == 200 && body.is_some() {
        r#" retrans="500""#
    } else {
        ""
    };
    let cseq = cseq.map_or("[last_CSeq:]".to_owned(), |c| format!("CSeq: {c}"));
    let (ctype, body) = match body {
        Some(b) => ("Content-Type: application/sdp\n", b.to_owned()),
        None => ("", String::new()),
    };
    format!(
        r#"  <send{retrans}><![CDATA[
SIP/2.0 {code} {reason}
[last_Via:]
[last_From:]
[last_To:]{tag}
[last_Call-ID:]
{cseq}
Contact: <sip:callee@[local_ip]:[local_port]>
{ctype}Content-Length: [len]

{body}
]]></send>
"#,
    )
}

fn play(key: &str) -> String {
    format!("  <nop><action><exec play_pcap_audio=\"[{key}]\"/></action></nop>\n")
}

fn pause(ms: u64) -> String {
    format!("  <pause milliseconds=\"{ms}\"/>\n")
}

fn wrap(name: &str, body: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"{name}\">\n{body}</scenario>\n")
}

/// The caller's scenario; `audio_ms` is how long its audio file plays.
pub fn uac_xml(s: Scenario, audio_ms: u64) -> String {
    uac_xml_with(s, audio_ms, &Variant::default())
}

/// [`uac_xml`] offering `v.codec`, its INVITE padded by `v.invite_padding` bytes.
pub fn uac_xml_with(s: Scenario, audio_ms: u64, v: &Variant) -> String {
    let sdp = |direction: &str| sdp(direction, v.codec);
    let mut x = uac_request_padded(
        "INVITE",
        1,
        Some(&sdp("sendrecv")),
        true,
        &padding_headers(v.invite_padding),
    );
    x += "  <recv response=\"100\" optional=\"true\"/>\n";
    match s {
        Scenario::Cancel => {
            x += "  <recv response=\"180\"/>\n";
            x += &pause(300);
            x += &uac_request("CANCEL", 1, None, true);
            x += "  <recv response=\"200\"/>\n  <recv response=\"487\"/>\n";
            x += &uac_request("ACK", 1, None, false);
            return wrap("lab-uac-cancel", &x);
        }
        Scenario::Busy => {
            x += "  <recv response=\"486\"/>\n";
            x += &uac_request("ACK", 1, None, false);
            return wrap("lab-uac-busy", &x);
        }
        _ => {}
    }
    x += "  <recv response=\"180\" optional=\"true\"/>\n  <recv response=\"200\" rtd=\"true\"/>\n";
    x += &uac_request("ACK", 1, None, false);
    x += &play("caller_pcap");
    let mut cseq = 2;
    match s {
        Scenario::Hold => {
            x += &pause(audio_ms + 200);
            x += &uac_request("INVITE", 2, Some(&sdp("sendonly")), true);
            x += "  <recv response=\"200\"/>\n";
            x += &uac_request("ACK", 2, None, false);
            x += &pause(HOLD_MS);
            x += &uac_request("INVITE", 3, Some(&sdp("sendrecv")), true);
            x += "  <recv response=\"200\"/>\n";
            x += &uac_request("ACK", 3, None, false);
            x += &play("caller_pcap2");
            x += &pause(audio_ms + 600);
            cseq = 4;
        }
        Scenario::Dtmf => x += &pause(audio_ms + dtmf_ms() + 600),
        Scenario::NoBye => {
            x += &pause(audio_ms + 300);
            return wrap("lab-uac-nobye", &x);
        }
        _ => x += &pause(audio_ms + 600),
    }
    x += &uac_request("BYE", cseq, None, true);
    x += "  <recv response=\"200\" crlf=\"true\"/>\n";
    // Over TCP the callee's sipp closes the connection once its last call is done: a caller
    // still pausing then would count its last call as failed.
    if v.transport == Transport::Udp {
        x += &pause(200);
    }
    wrap("lab-uac", &x)
}

/// The callee's scenario.
pub fn uas_xml(s: Scenario, audio_ms: u64) -> String {
    uas_xml_with(s, audio_ms, &Variant::default())
}

/// [`uas_xml`] answering with `v.codec`.
pub fn uas_xml_with(s: Scenario, audio_ms: u64, v: &Variant) -> String {
    let sdp = |direction: &str| sdp(direction, v.codec);
    let mut x = "  <recv request=\"INVITE\" crlf=\"true\"/>\n".to_owned();
    match s {
        Scenario::Busy => {
            x += &uas_response(486, "Busy Here", true, None, None);
            x += "  <recv request=\"ACK\"/>\n";
            return wrap("lab-uas-busy", &x);
        }
        Scenario::Cancel => {
            x += &uas_response(180, "Ringing", true, None, None);
            x += "  <recv request=\"CANCEL\"/>\n";
            x += &uas_response(200, "OK", true, None, None);
            x += &uas_response(487, "Request Terminated", true, Some("1 INVITE"), None);
            x += "  <recv request=\"ACK\"/>\n";
            return wrap("lab-uas-cancel", &x);
        }
        _ => {}
    }
    x += &uas_response(180, "Ringing", true, None, None);
    x += &uas_response(200, "OK", true, None, Some(&sdp("sendrecv")));
    x += "  <recv request=\"ACK\" rtd=\"true\" crlf=\"true\"/>\n";
    x += &play("callee_pcap");
    match s {
        Scenario::Hold => {
            x += "  <recv request=\"INVITE\"/>\n";
            x += &uas_response(200, "OK", false, None, Some(&sdp("recvonly")));
            x += "  <recv request=\"ACK\"/>\n  <recv request=\"INVITE\"/>\n";
            x += &uas_response(200, "OK", false, None, Some(&sdp("sendrecv")));
            x += "  <recv request=\"ACK\"/>\n";
            x += &play("callee_pcap2");
        }
        Scenario::NoBye => {
            x += &pause(audio_ms + 300);
            return wrap("lab-uas-nobye", &x);
        }
        _ => {}
    }
    x += "  <recv request=\"BYE\"/>\n";
    x += &uas_response(200, "OK", false, None, None);
    wrap("lab-uas", &x)
}

fn dtmf_ms() -> u64 {
    DTMF_DIGITS.len() as u64 * 360
}

/// The caller's tone (left channel of the recording).
pub fn caller_tone(packets: usize) -> ToneSpec {
    ToneSpec {
        freq_hz: 440.0,
        amplitude: 8000.0,
        packets,
        ssrc: 0x1111_0001,
        first_seq: 65_500,
        first_ts: 4_294_960_000,
    }
}

/// The callee's tone (right channel).
pub fn callee_tone(packets: usize) -> ToneSpec {
    ToneSpec {
        freq_hz: 1000.0,
        amplitude: 6000.0,
        packets,
        ssrc: 0x2222_0002,
        first_seq: 100,
        first_ts: 1_000,
    }
}

/// The same tones after a hold: the stream goes on (sequence and RTP clock continue as if the
/// phone's clock ran through the hold), with other audio so the parts can be told apart.
pub fn after_hold(spec: &ToneSpec, hold_ms: u64) -> ToneSpec {
    let skipped = spec.packets as u64 + hold_ms / 20;
    ToneSpec {
        freq_hz: spec.freq_hz * 1.5,
        first_seq: spec.first_seq.wrapping_add(skipped as u16),
        first_ts: spec
            .first_ts
            .wrapping_add((skipped * SAMPLES_PER_PACKET as u64) as u32),
        ..spec.clone()
    }
}

/// The audio one side of a plain call sends, decoded (by the lab's own decoder).
pub fn tone_pcm(spec: &ToneSpec) -> Vec<i16> {
    tone_payloads(spec)
        .concat()
        .into_iter()
        .map(ulaw_decode)
        .collect()
}

/// Checks the recording of a plain call of `packets` packets a side: a stereo 8 kHz 16-bit WAV
/// holding, sample for sample, the caller's tone on the left channel and the callee's on the
/// right, each as one contiguous run with nothing but silence around it.
pub fn check_tone_recording(path: &Path, packets: usize) -> Result<()> {
    check_coded_recording(
        path,
        8000,
        &tone_pcm(&caller_tone(packets)),
        &tone_pcm(&callee_tone(packets)),
    )
}

/// Checks a recording against what each side sent, as decoded by a reference decoder: a
/// stereo 16-bit WAV at `rate` holding `caller` on the left channel and `callee` on the right,
/// sample for sample, each as one contiguous run with nothing but silence around it.
pub fn check_coded_recording(path: &Path, rate: u32, caller: &[i16], callee: &[i16]) -> Result<()> {
    let (spec, samples) = read_wav(path)?;
    let format = (spec.channels, spec.sample_rate, spec.bits_per_sample);
    if format != (2, rate, 16) {
        bail!("{}: (channels, rate, bits) {format:?}", path.display());
    }
    for (first, pcm, what) in [(0, caller, "caller/left"), (1, callee, "callee/right")] {
        let channel: Vec<i16> = samples.iter().skip(first).step_by(2).copied().collect();
        check_channel(&channel, pcm).with_context(|| format!("{}: {what}", path.display()))?;
    }
    Ok(())
}

/// The audio both sides of a plain call in `codec` send ([`caller_tone`], [`callee_tone`]),
/// with its reference decode (see [`crate::codec_ref`]); ffmpeg's files go to `scratch`.
pub fn reference_tones(codec: Codec, packets: usize, scratch: &Path) -> Result<[CodedTone; 2]> {
    Ok([
        coded_tone(
            codec,
            &caller_tone(packets),
            scratch,
            &format!("caller-{}", codec.name()),
        )?,
        coded_tone(
            codec,
            &callee_tone(packets),
            scratch,
            &format!("callee-{}", codec.name()),
        )?,
    ])
}

/// A batch of plain lab calls.
#[derive(Clone, Debug)]
pub struct CallPlan {
    /// Concurrent sipp pairs (at most `UAS_ADDRS`).
    pub pairs: u8,
    /// Calls each pair places one after another.
    pub calls_per_pair: u32,
    /// RTP packets (20 ms each) per direction per call.
    pub packets: usize,
}

impl CallPlan {
    pub fn total_calls(&self) -> u32 {
        u32::from(self.pairs) * self.calls_per_pair
    }
}

/// One sipp pair's share of a mixed batch.
#[derive(Clone, Copy, Debug)]
pub struct PairPlan {
    pub scenario: Scenario,
    pub calls: u32,
}

/// Where each sipp pair sends from and to.
#[derive(Clone, Debug)]
pub struct PairAddrs {
    pub uac_sip_port: u16,
    pub uac_media_port: u16,
    pub uas_ip: String,
    pub uas_media_port: u16,
}

/// Address plan of pair `i`.
pub fn pair_addrs(i: u8) -> PairAddrs {
    PairAddrs {
        uac_sip_port: 5061 + 2 * u16::from(i),
        uac_media_port: 16_000 + 10 * u16::from(i),
        uas_ip: uas_ip(i),
        uas_media_port: 20_000 + 10 * u16::from(i),
    }
}

/// Outcome of a finished batch.
#[derive(Debug)]
pub struct CallReport {
    pub successful: u32,
    pub failed: u32,
}

/// Plain calls: every pair runs [`Scenario::Basic`].
pub fn place_calls(dir: &Path, plan: &CallPlan) -> Result<CallReport> {
    let pairs: Vec<PairPlan> = (0..plan.pairs)
        .map(|_| PairPlan {
            scenario: Scenario::Basic,
            calls: plan.calls_per_pair,
        })
        .collect();
    place_pairs(dir, &pairs, plan.packets)
}

/// Runs every pair at once (pair `i` uses [`pair_addrs`]`(i)`) and waits for all to finish.
/// `packets` is the audio length per direction (20 ms packets).
pub fn place_pairs(dir: &Path, pairs: &[PairPlan], packets: usize) -> Result<CallReport> {
    let pairs: Vec<(PairPlan, Variant)> = pairs.iter().map(|p| (*p, Variant::default())).collect();
    place_variants(dir, &pairs, packets)
}

/// [`place_pairs`] where each pair has its own [`Variant`]. A pair in another codec than PCMU
/// plays [`reference_tones`] and runs [`Scenario::Basic`] or [`Scenario::NoBye`] only.
pub fn place_variants(
    dir: &Path,
    pairs: &[(PairPlan, Variant)],
    packets: usize,
) -> Result<CallReport> {
    std::fs::create_dir_all(dir)?;
    for (plan, v) in pairs {
        if v.codec != Codec::Pcmu && !matches!(plan.scenario, Scenario::Basic | Scenario::NoBye) {
            bail!("{:?} calls are PCMU only, not {:?}", plan.scenario, v.codec);
        }
        if v.impaired && (v.codec != Codec::Pcmu || plan.scenario != Scenario::Basic) {
            bail!("impaired calls are plain PCMU calls");
        }
    }
    let mut codecs: Vec<Codec> = pairs
        .iter()
        .map(|(_, v)| v.codec)
        .filter(|c| *c != Codec::Pcmu)
        .collect();
    codecs.sort();
    codecs.dedup();
    let [caller_lossy, callee_lossy] = impaired_packets(packets);
    write_rtp_pcap(&dir.join("caller-impaired.pcap"), &caller_lossy)?;
    write_rtp_pcap(&dir.join("callee-impaired.pcap"), &callee_lossy)?;
    for codec in codecs {
        let [caller, callee] = reference_tones(codec, packets, &dir.join("ffmpeg"))?;
        write_rtp_pcap(
            &dir.join(format!("caller-{}.pcap", codec.name())),
            &caller.packets(&caller_tone(packets), 0),
        )?;
        write_rtp_pcap(
            &dir.join(format!("callee-{}.pcap", codec.name())),
            &callee.packets(&callee_tone(packets), 0),
        )?;
    }
    let audio_ms = packets as u64 * 20;
    let callee = callee_tone(packets);
    let caller = caller_tone(packets);
    write_rtp_pcap(&dir.join("callee.pcap"), &tone_packets(&callee, 0))?;
    write_rtp_pcap(
        &dir.join("callee2.pcap"),
        &tone_packets(&after_hold(&callee, HOLD_MS), 0),
    )?;
    write_rtp_pcap(&dir.join("caller.pcap"), &tone_packets(&caller, 0))?;
    write_rtp_pcap(
        &dir.join("caller2.pcap"),
        &tone_packets(&after_hold(&caller, HOLD_MS), 0),
    )?;
    let mut with_dtmf = tone_packets(&caller, 0);
    let next_seq = caller.first_seq.wrapping_add(packets as u16);
    let next_ts = caller
        .first_ts
        .wrapping_add((packets * SAMPLES_PER_PACKET) as u32);
    with_dtmf.extend(dtmf_packets(
        DTMF_DIGITS,
        caller.ssrc,
        audio_ms + 200,
        next_seq,
        next_ts.wrapping_add(1600),
    ));
    write_rtp_pcap(&dir.join("caller-dtmf.pcap"), &with_dtmf)?;

    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for (i, (plan, v)) in pairs.iter().enumerate() {
        let i = i as u8;
        let a = pair_addrs(i);
        let uas = dir.join(format!("uas{i}.xml"));
        std::fs::write(&uas, uas_xml_with(plan.scenario, audio_ms, v))?;
        let callee_pcap = match v.codec {
            Codec::Pcmu if v.impaired => "callee-impaired.pcap".to_owned(),
            Codec::Pcmu => "callee.pcap".to_owned(),
            c => format!("callee-{}.pcap", c.name()),
        };
        let child = ns_command(
            NS_UAS,
            &[
                "sipp",
                "-t",
                v.transport.sipp(),
                "-sf",
                path_str(&uas)?,
                "-i",
                &a.uas_ip,
                "-mi",
                &a.uas_ip,
                "-p",
                "5060",
                "-mp",
                &a.uas_media_port.to_string(),
                "-key",
                "callee_pcap",
                path_str(&dir.join(&callee_pcap))?,
                "-key",
                "callee_pcap2",
                path_str(&dir.join("callee2.pcap"))?,
                "-m",
                &plan.calls.to_string(),
                "-nostdin",
                "-trace_err",
                "-error_file",
                path_str(&dir.join(format!("uas{i}.err")))?,
            ],
        )
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sipp UAS (is sip-tester installed?)")?;
        servers.push(Reaped(child));
    }
    std::thread::sleep(Duration::from_millis(300));
    for (i, (plan, v)) in pairs.iter().enumerate() {
        let i = i as u8;
        let a = pair_addrs(i);
        let uac = dir.join(format!("uac{i}.xml"));
        std::fs::write(&uac, uac_xml_with(plan.scenario, audio_ms, v))?;
        let caller_pcap = match (v.codec, plan.scenario) {
            (Codec::Pcmu, _) if v.impaired => "caller-impaired.pcap".to_owned(),
            (Codec::Pcmu, Scenario::Dtmf) => "caller-dtmf.pcap".to_owned(),
            (Codec::Pcmu, _) => "caller.pcap".to_owned(),
            (c, _) => format!("caller-{}.pcap", c.name()),
        };
        let target = format!("{}:5060", a.uas_ip);
        let child = ns_command(
            NS_UAC,
            &[
                "sipp",
                &target,
                "-t",
                v.transport.sipp(),
                "-sf",
                path_str(&uac)?,
                "-i",
                UAC_IP,
                "-mi",
                UAC_IP,
                "-p",
                &a.uac_sip_port.to_string(),
                "-mp",
                &a.uac_media_port.to_string(),
                "-key",
                "caller_pcap",
                path_str(&dir.join(&caller_pcap))?,
                "-key",
                "caller_pcap2",
                path_str(&dir.join("caller2.pcap"))?,
                "-s",
                &format!("lab{i}"),
                "-l",
                "1",
                "-m",
                &plan.calls.to_string(),
                "-r",
                "10",
                "-nostdin",
                "-trace_err",
                "-error_file",
                path_str(&dir.join(format!("uac{i}.err")))?,
            ],
        )
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sipp UAC")?;
        clients.push((Reaped(child), plan.calls));
    }

    // Bounded: the longest pair's calls plus generous slack, then give up.
    let longest = pairs
        .iter()
        .map(|(p, _)| u64::from(p.calls) * (2 * audio_ms + HOLD_MS + 3000))
        .max()
        .unwrap_or(0);
    let budget = Duration::from_millis(longest + 30_000);
    let started = Instant::now();
    let mut report = CallReport {
        successful: 0,
        failed: 0,
    };
    for (i, (client, calls)) in clients.iter_mut().enumerate() {
        let status = wait_bounded(&mut client.0, budget.saturating_sub(started.elapsed()))?;
        match status.and_then(|s| s.code()) {
            Some(0) => report.successful += *calls,
            other => {
                let err =
                    std::fs::read_to_string(dir.join(format!("uac{i}.err"))).unwrap_or_default();
                eprintln!(
                    "sipp pair {i}: UAC exit {other:?}; errors: {}",
                    err.lines().take(5).collect::<Vec<_>>().join(" | ")
                );
                report.failed += *calls;
            }
        }
    }
    for server in servers.iter_mut() {
        let _ = wait_bounded(&mut server.0, Duration::from_secs(10));
    }
    if report.successful == 0 {
        bail!("no sipp call succeeded; see {}", dir.display());
    }
    Ok(report)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// Waits for a child up to `limit`; kills it when the limit passes.
pub fn wait_bounded(
    child: &mut Child,
    limit: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child that is killed and reaped if dropped early (a failed assertion must not leave sipp
/// running in the lab).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_change_the_sdp_and_the_invite_only() {
        let plain = uac_xml(Scenario::Basic, 1000);
        assert!(plain.contains("RTP/AVP 0 101\na=rtpmap:0 PCMU/8000"));
        assert!(!plain.contains("X-Pad"));
        let v = Variant {
            codec: Codec::G722,
            transport: Transport::Tcp,
            invite_padding: 4000,
            impaired: false,
        };
        let uac = uac_xml_with(Scenario::Basic, 1000, &v);
        let uas = uas_xml_with(Scenario::Basic, 1000, &v);
        for x in [&uac, &uas] {
            assert!(x.contains("RTP/AVP 9 101\na=rtpmap:9 G722/8000"), "{x}");
            assert!(!x.contains("PCMU"));
        }
        // The padding goes into the first INVITE, nowhere else, and pushes it past the MTU.
        let invite = uac.split("]]></send>").next().expect("INVITE");
        assert!(invite.starts_with("<?xml") && invite.contains("INVITE sip:"));
        let pads = invite.matches("X-Pad-").count();
        assert!(
            invite.len() > 4000 && pads >= 19,
            "{pads} pads, {} bytes",
            invite.len()
        );
        assert_eq!(uac.matches("X-Pad-").count(), pads);
        assert!(!uas.contains("X-Pad"));
        assert_eq!(Transport::Tcp.sipp(), "t1");
    }
}
