//! The SPAN-port topology: four namespaces, a bridge as the switch, `tc mirred` copying both
//! switch ports to the mirror link whose far end (`m0` in `ct-rec`) CallTap listens on.

use std::{
    fs::{File, OpenOptions},
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
};

use anyhow::{bail, Context as _, Result};

/// Namespace of the calling side (sipp UAC).
pub const NS_UAC: &str = "ct-uac";
/// Namespace of the called side (sipp UAS).
pub const NS_UAS: &str = "ct-uas";
/// Namespace of the switch (bridge + mirror).
pub const NS_SW: &str = "ct-sw";
/// Namespace of the recorder.
pub const NS_REC: &str = "ct-rec";
/// The recorder's capture interface (in `NS_REC`).
pub const MIRROR_IF: &str = "m0";
/// The switch side of the mirror link (in `NS_SW`): where tshark counts what was sent to CallTap.
pub const MIRROR_SWITCH_IF: &str = "m1";
/// Caller-side address.
pub const UAC_IP: &str = "198.18.0.1";
/// How many addresses the called side has (198.18.0.2 ..): one per concurrent sipp UAS.
pub const UAS_ADDRS: u8 = 8;

/// The i-th called-side address (0-based).
pub fn uas_ip(i: u8) -> String {
    format!("198.18.0.{}", 2 + i)
}

/// Serialises lab users inside one process; the file lock does it across processes.
static IN_PROCESS: Mutex<()> = Mutex::new(());
const LOCK_PATH: &str = "/run/lock/calltap-lab.lock";

/// The lab topology.
pub struct Lab;

/// Exclusive use of the lab: at most one capture daemon may own `m0` at a time.
pub struct LabGuard {
    _process: MutexGuard<'static, ()>,
    _file: File,
}

impl Lab {
    /// Takes the lab for exclusive use and makes sure it is up.
    pub fn acquire() -> Result<LabGuard> {
        let process = IN_PROCESS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .with_context(|| format!("opening {LOCK_PATH}"))?;
        // SAFETY: flock on an open descriptor we own; blocks until the other user releases it.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock {LOCK_PATH}: {}", std::io::Error::last_os_error());
        }
        Self::up()?;
        Ok(LabGuard {
            _process: process,
            _file: file,
        })
    }

    /// True when every namespace and the mirror link exist.
    pub fn is_up() -> bool {
        [NS_UAC, NS_UAS, NS_SW, NS_REC]
            .iter()
            .all(|ns| std::path::Path::new("/run/netns").join(ns).exists())
            && ns_run(NS_REC, &["ip", "link", "show", MIRROR_IF]).is_ok()
            && ns_run(NS_SW, &["tc", "filter", "show", "dev", "b1", "ingress"])
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("mirred"))
                .unwrap_or(false)
            && ns_run(NS_SW, &["tc", "qdisc", "show", "dev", MIRROR_SWITCH_IF])
                .map(|out| String::from_utf8_lossy(&out.stdout).contains("pfifo"))
                .unwrap_or(false)
    }

    /// Builds the topology; idempotent (a half-built lab is torn down and rebuilt).
    pub fn up() -> Result<()> {
        if Self::is_up() {
            return Ok(());
        }
        Self::down()?;
        for ns in [NS_UAC, NS_UAS, NS_SW, NS_REC] {
            run(&["ip", "netns", "add", ns])?;
            ns_run(ns, &["ip", "link", "set", "lo", "up"])?;
            // IPv6 autoconfiguration chatter is not what the tests count.
            ns_run(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            ns_run(
                ns,
                &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
            )?;
        }
        run(&[
            "ip", "link", "add", "a0", "netns", NS_UAC, "type", "veth", "peer", "name", "a1",
            "netns", NS_SW,
        ])?;
        run(&[
            "ip", "link", "add", "b0", "netns", NS_UAS, "type", "veth", "peer", "name", "b1",
            "netns", NS_SW,
        ])?;
        run(&[
            "ip", "link", "add", "m1", "netns", NS_SW, "type", "veth", "peer", "name", MIRROR_IF,
            "netns", NS_REC,
        ])?;
        ns_run(NS_SW, &["ip", "link", "add", "br0", "type", "bridge"])?;
        for dev in ["a1", "b1"] {
            ns_run(NS_SW, &["ip", "link", "set", dev, "master", "br0"])?;
        }
        for (ns, dev) in [
            (NS_UAC, "a0"),
            (NS_UAS, "b0"),
            (NS_SW, "a1"),
            (NS_SW, "b1"),
            (NS_SW, "m1"),
            (NS_SW, "br0"),
            (NS_REC, MIRROR_IF),
        ] {
            ns_run(ns, &["ip", "link", "set", dev, "up"])?;
            // Real NICs hand the recorder MTU-sized frames with real checksums; veth offloads
            // would hand it 64 KiB super-packets and partial checksums instead.
            let _ = ns_run(
                ns,
                &[
                    "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off",
                ],
            );
        }
        ns_run(
            NS_UAC,
            &["ip", "addr", "add", &format!("{UAC_IP}/24"), "dev", "a0"],
        )?;
        for i in 0..UAS_ADDRS {
            ns_run(
                NS_UAS,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", uas_ip(i)),
                    "dev",
                    "b0",
                ],
            )?;
        }
        for dev in ["a1", "b1"] {
            ns_run(NS_SW, &["tc", "qdisc", "add", "dev", dev, "ingress"])?;
            ns_run(
                NS_SW,
                &[
                    "tc", "filter", "add", "dev", dev, "ingress", "protocol", "all", "u32",
                    "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "m1",
                ],
            )?;
        }
        // A veth whose peer runs an XDP program hands frames over through a ring of 256; with
        // no queue in front (veth's default) a frame that finds it full is dropped before the
        // recorder sees it (`ip -s link` counts it), as a mirror port's NIC never does at
        // these rates. A queue lets the kernel hold the mirror's frames back instead.
        ns_run(
            NS_SW,
            &[
                "tc",
                "qdisc",
                "replace",
                "dev",
                MIRROR_SWITCH_IF,
                "root",
                "pfifo",
                "limit",
                "50000",
            ],
        )?;
        // Prime ARP so the first INVITE is not preceded by a resolution delay.
        let _ = ns_run(NS_UAC, &["ping", "-c1", "-W1", &uas_ip(0)]);
        Ok(())
    }

    /// Removes the topology (deleting the namespaces deletes their interfaces).
    pub fn down() -> Result<()> {
        for ns in [NS_UAC, NS_UAS, NS_SW, NS_REC] {
            if std::path::Path::new("/run/netns").join(ns).exists() {
                run(&["ip", "netns", "del", ns])?;
            }
        }
        Ok(())
    }
}

/// `ip netns exec NS PROG ARGS..` as a Command, for callers that spawn.
pub fn ns_command(ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(argv);
    cmd
}

/// Runs a command inside a namespace and fails with its stderr if it fails.
pub fn ns_run(ns: &str, argv: &[&str]) -> Result<Output> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full)
}

/// Runs a command to completion; an error carries the command line and its stderr.
pub fn run(argv: &[&str]) -> Result<Output> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
