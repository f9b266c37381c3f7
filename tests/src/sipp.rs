//! Real SIP peers: sipp (Debian `sip-tester`) calling sipp through the lab switch, each side
//! playing its own tone as RTP so both directions of every call carry known audio.
//!
//! sipp 3.6 sends every call of one instance from the same media port, so calls of one
//! instance run one after another; concurrency comes from several instance pairs at once, each
//! with its own addresses and ports.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    netns::{ns_command, uas_ip, NS_UAC, NS_UAS, UAC_IP},
    rtp_pcap::{write_tone_pcap, ToneSpec},
};

/// The calling scenario: INVITE with SDP, wait for 200, ACK, play audio, BYE.
pub const UAC_XML: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="calltap-lab-uac">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Lab Caller" <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]lab[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Subject: CallTap lab call
X-CID: lab-[call_id]
Content-Type: application/sdp
Content-Length: [len]

v=0
o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendrecv

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Lab Caller" <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]lab[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <nop><action><exec play_pcap_audio="[caller_pcap]"/></action></nop>
  <pause/>
  <send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Lab Caller" <sip:caller[call_number]@[local_ip]:[local_port]>;tag=[pid]lab[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" crlf="true"/>
  <pause milliseconds="300"/>
</scenario>
"#;

/// The called scenario: ring, answer with SDP, play audio, wait for BYE.
pub const UAS_XML: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="calltap-lab-uas">
  <recv request="INVITE" crlf="true"/>
  <send><![CDATA[
SIP/2.0 180 Ringing
[last_Via:]
[last_From:]
[last_To:];tag=[pid]uas[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:callee@[local_ip]:[local_port]>
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]uas[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:callee@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=callee 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
a=sendrecv

]]></send>
  <recv request="ACK" rtd="true" crlf="true"/>
  <nop><action><exec play_pcap_audio="[callee_pcap]"/></action></nop>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"#;

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

/// A batch of lab calls.
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

/// Writes scenarios and tone pcaps into `dir`, runs the plan and waits for every sipp to exit.
pub fn place_calls(dir: &Path, plan: &CallPlan) -> Result<CallReport> {
    std::fs::create_dir_all(dir)?;
    let uac = dir.join("uac.xml");
    let uas = dir.join("uas.xml");
    std::fs::write(&uac, UAC_XML)?;
    std::fs::write(&uas, UAS_XML)?;
    let caller_pcap = dir.join("caller.pcap");
    let callee_pcap = dir.join("callee.pcap");
    write_tone_pcap(&caller_pcap, &caller_tone(plan.packets))?;
    write_tone_pcap(&callee_pcap, &callee_tone(plan.packets))?;
    // The caller hangs up 600 ms after its audio ends; the callee's audio is the same length.
    let talk_ms = plan.packets as u64 * 20 + 600;

    let mut servers = Vec::new();
    for i in 0..plan.pairs {
        let a = pair_addrs(i);
        let child = ns_command(
            NS_UAS,
            &[
                "sipp",
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
                path_str(&callee_pcap)?,
                "-m",
                &plan.calls_per_pair.to_string(),
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
    let mut clients = Vec::new();
    for i in 0..plan.pairs {
        let a = pair_addrs(i);
        let target = format!("{}:5060", a.uas_ip);
        let child = ns_command(
            NS_UAC,
            &[
                "sipp",
                &target,
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
                path_str(&caller_pcap)?,
                "-s",
                &format!("lab{i}"),
                "-d",
                &talk_ms.to_string(),
                "-l",
                "1",
                "-m",
                &plan.calls_per_pair.to_string(),
                "-r",
                "10",
                "-nostdin",
                "-trace_stat",
                "-stf",
                path_str(&dir.join(format!("uac{i}.csv")))?,
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
        clients.push(Reaped(child));
    }

    // Bounded: every call lasts talk_ms plus set-up; allow generous slack, then give up.
    let budget = Duration::from_millis(talk_ms * u64::from(plan.calls_per_pair) + 30_000);
    let started = Instant::now();
    let mut report = CallReport {
        successful: 0,
        failed: 0,
    };
    for (i, client) in clients.iter_mut().enumerate() {
        let status = wait_bounded(&mut client.0, budget.saturating_sub(started.elapsed()))?;
        match status.and_then(|s| s.code()) {
            Some(0) => report.successful += plan.calls_per_pair,
            Some(_) | None => {
                let err =
                    std::fs::read_to_string(dir.join(format!("uac{i}.err"))).unwrap_or_default();
                eprintln!(
                    "sipp pair {i}: UAC exit {status:?}; errors: {}",
                    err.lines().take(5).collect::<Vec<_>>().join(" | ")
                );
                report.failed += plan.calls_per_pair;
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

/// The scenario files as written for a run (useful in failure messages).
pub fn scenario_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("uac.xml"), dir.join("uas.xml"))
}
