//! XDP drops frames after capture only on a dedicated mirror port (issue #14 item 4:
//! `calltap run --interface lo` took the host's loopback down, the API's own connections
//! included). `calltap run` is attached to three interfaces of a namespace this test builds:
//! `x4h0`, which has an IP address (the host's own traffic crosses it), `x4m0`, which has none
//! (a mirror port), and the namespace's `lo`, which carries calltap's own API. Traffic to
//! x4h0's address and to the API must still work while calltap captures on both; frames on
//! x4m0 are captured and dropped.
//!
//! ```text
//! ns ct-x4-peer                         ns ct-x4-host (calltap)
//!   x4p0 198.19.4.1/24  ==============  x4h0 198.19.4.2/24
//!   x4m1 (no address)   ==============  x4m0 (no address: a mirror port)
//!                                       lo   127.0.0.1 (calltap's API)
//! ```

use std::{
    net::UdpSocket,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Result};
use calltap_lab::{
    api::{self, in_ns},
    daemon::Daemon,
    netns::{ns_run, run},
    root::require_root,
    wait_for,
};

const HOST_NS: &str = "ct-x4-host";
const PEER_NS: &str = "ct-x4-peer";
const HOST_IP: &str = "198.19.4.2";
const PEER_IP: &str = "198.19.4.1";
/// Probe frames sent on each of the two links.
const PROBES: usize = 5;
/// In every probe frame's payload, to tell them from other traffic a witness sees.
const MARK: &[u8] = b"Call-ID: x4-probe";

/// The two namespaces, removed when the test ends however it ends.
struct Topology;

impl Topology {
    fn up() -> Result<Topology> {
        Self::remove();
        // From here on, whatever fails, the drop removes what was made.
        let t = Topology;
        for ns in [HOST_NS, PEER_NS] {
            run(&["ip", "netns", "add", ns])?;
            ns_run(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        for (host, peer) in [("x4h0", "x4p0"), ("x4m0", "x4m1")] {
            run(&[
                "ip", "link", "add", host, "netns", HOST_NS, "type", "veth", "peer", "name", peer,
                "netns", PEER_NS,
            ])?;
            ns_run(HOST_NS, &["ip", "link", "set", host, "up"])?;
            ns_run(PEER_NS, &["ip", "link", "set", peer, "up"])?;
        }
        ns_run(
            HOST_NS,
            &["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", "x4h0"],
        )?;
        ns_run(
            PEER_NS,
            &["ip", "addr", "add", &format!("{PEER_IP}/24"), "dev", "x4p0"],
        )?;
        Ok(t)
    }

    fn remove() {
        for ns in [HOST_NS, PEER_NS] {
            if std::path::Path::new("/run/netns").join(ns).exists() {
                let _ = run(&["ip", "netns", "del", ns]);
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// A packet socket on `interface` of `ns` (every frame it sends or receives, before the IP
/// stack), non-blocking.
fn packet_socket(ns: &str, interface: &str) -> Result<OwnedFd> {
    let interface = interface.to_string();
    in_ns(ns, move || {
        let name = std::ffi::CString::new(interface.clone())?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no {interface}: {}", std::io::Error::last_os_error());
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        };
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: binding our socket to a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            bail!("bind to {interface}: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    })
}

fn send_frame(socket: &OwnedFd, frame: &[u8]) -> Result<()> {
    // SAFETY: sending from a live buffer of the length given on our own socket.
    let n = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if n < 0 || n as usize != frame.len() {
        bail!("send: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The frames a witness has received so far that carry [`MARK`] (without waiting).
fn marked_frames(socket: &OwnedFd) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    loop {
        // SAFETY: receiving into a live buffer of the length given, without blocking.
        let len = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let Ok(len) = usize::try_from(len) else {
            return n;
        };
        if buf[..len].windows(MARK.len()).any(|w| w == MARK) {
            n += 1;
        }
    }
}

/// An Ethernet frame with a UDP SIP INVITE between two addresses no interface here has.
fn probe_frame(i: usize) -> Vec<u8> {
    let sip = format!(
        "INVITE sip:probe@198.19.200.2 SIP/2.0\r\nVia: SIP/2.0/UDP 198.19.200.1:5060;branch=z9hG4bK{i}\r\n{}\r\nCSeq: {i} INVITE\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(MARK)
    );
    let udp_len = 8 + sip.len();
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0x04, 0x01]);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, i as u8, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&[198, 19, 200, 1, 198, 19, 200, 2]);
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&5060u16.to_be_bytes());
    f.extend_from_slice(&5060u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(sip.as_bytes());
    f
}

/// `GET /metrics` from calltap's API, over the namespace's loopback: it answers only while lo
/// passes frames.
fn metrics() -> Result<String> {
    api::metrics(HOST_NS, "127.0.0.1:8080")
}

/// The SIP packets calltap's XDP program has classified, all CPUs.
fn sip_captured(metrics: &str) -> u64 {
    api::metric(
        metrics,
        "calltap_capture_classified_packets_total",
        &[("class", "sip")],
    ) as u64
}

/// XDP drops veth counts on `interface` (`ethtool -S`; None when the driver has no such
/// counter, as in generic mode).
fn xdp_drops(interface: &str) -> Option<u64> {
    let out = ns_run(HOST_NS, &["ethtool", "-S", interface]).ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("xdp_drops"))
        .filter_map(|l| l.rsplit(':').next()?.trim().parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[test]
fn xdp_passes_the_hosts_own_traffic_and_drops_only_on_a_mirror_port() {
    if !require_root("xdp_drop_mode") {
        return;
    }
    let _net = Topology::up().expect("namespaces");
    let dir = std::env::temp_dir().join("calltap-e2e-x4-drop-mode");
    let daemon = Daemon::start_in(
        HOST_NS,
        &["x4h0", "x4m0", "lo"],
        &dir.join("run"),
        &["--source", "xdp", "--workers", "1"],
        &[],
    )
    .expect("calltap run");
    let log = daemon.stderr();
    for line in [
        "x4h0: passing frames (it has IP address 198.19.4.2); set drop_after_capture = true to drop",
        "x4m0: dropping captured frames after capture (dedicated mirror port: no IP address)",
        "lo: passing frames (loopback); set drop_after_capture = true to drop",
    ] {
        assert!(log.contains(line), "no `{line}` in the log:\n{log}");
    }

    // 1. The host's own traffic on x4h0: a SIP request to its address is answered, while
    //    calltap captures it.
    let server = in_ns(HOST_NS, || Ok(UdpSocket::bind((HOST_IP, 5060))?)).expect("server");
    let client = in_ns(PEER_NS, || Ok(UdpSocket::bind((PEER_IP, 5060))?)).expect("client");
    for s in [&server, &client] {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    let invite = probe_frame(0);
    let invite = &invite[14 + 20 + 8..];
    client
        .send_to(invite, (HOST_IP, 5060))
        .expect("send INVITE");
    let mut buf = [0u8; 2048];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the INVITE reached the host through x4h0 (XDP passed it)");
    assert_eq!(&buf[..n], invite);
    server
        .send_to(b"SIP/2.0 100 Trying\r\nContent-Length: 0\r\n\r\n", from)
        .expect("answer");
    client.recv_from(&mut buf).expect("the answer came back");

    // 2. Probe frames on both links, each link with a witness that sees what reaches the
    //    host's stack past XDP: the mirror port's first (its frames must be gone by the time
    //    calltap has counted the later ones).
    let witness_m = packet_socket(HOST_NS, "x4m0").expect("witness x4m0");
    let witness_h = packet_socket(HOST_NS, "x4h0").expect("witness x4h0");
    let sender_m = packet_socket(PEER_NS, "x4m1").expect("sender x4m1");
    let sender_h = packet_socket(PEER_NS, "x4p0").expect("sender x4p0");
    let drops_before = xdp_drops("x4m0");
    for i in 0..PROBES {
        send_frame(&sender_m, &probe_frame(i + 1)).expect("probe x4m1");
    }
    for i in 0..PROBES {
        send_frame(&sender_h, &probe_frame(i + 1)).expect("probe x4p0");
    }
    // The host's stack got every probe on x4h0 ...
    let mut seen_h = 0;
    wait_for(
        "the probes on x4h0 past XDP",
        Duration::from_secs(10),
        || {
            seen_h += marked_frames(&witness_h);
            (seen_h >= PROBES).then_some(())
        },
    )
    .expect("x4h0 passes frames");
    // ... and calltap captured all of them, over an API reached through lo.
    let want = 1 + 2 * PROBES as u64;
    let captured = wait_for(
        "calltap to count the SIP frames",
        Duration::from_secs(10),
        || {
            metrics()
                .ok()
                .map(|m| sip_captured(&m))
                .filter(|&n| n >= want)
        },
    )
    .expect("the API answers over lo, and calltap captured on both links");
    assert_eq!(captured, want, "SIP frames captured");
    if let (Some(before), Some(_)) = (drops_before, xdp_drops("x4m0")) {
        wait_for("x4m0's XDP drop counter", Duration::from_secs(10), || {
            xdp_drops("x4m0").filter(|&d| d >= before + PROBES as u64)
        })
        .expect("x4m0 dropped the probes");
    } else {
        eprintln!("x4m0 has no XDP drop counter (generic XDP): the witness alone decides");
    }
    assert_eq!(
        marked_frames(&witness_m),
        0,
        "frames on the mirror port reached the host's stack after capture"
    );

    let metrics = metrics().expect("metrics");
    for (interface, after) in [("x4h0", "pass"), ("x4m0", "drop"), ("lo", "pass")] {
        let label = format!("after_capture=\"{after}\",interface=\"{interface}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("calltap_capture_interface_info{") && l.contains(&label)),
            "no calltap_capture_interface_info with {label}"
        );
    }
    let summary = daemon.stop().expect("calltap stopped cleanly");
    let attachments: Vec<(String, String)> = summary["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| {
            (
                a["interface"].as_str().unwrap_or_default().to_string(),
                a["after_capture"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        attachments,
        [("x4h0", "pass"), ("x4m0", "drop"), ("lo", "pass")]
            .map(|(i, a)| (i.to_string(), a.to_string())),
        "{summary}"
    );
}
