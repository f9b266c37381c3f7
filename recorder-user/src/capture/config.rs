//! `[capture]`: where and how frames are captured and classified.

use calltap_common::{drop_mode, XdpConfig, MAX_WORKERS};

use crate::settings::{ConfigError, Key, Kind, Section, Values};

/// `[capture]`.
pub const CAPTURE: Section = Section {
    name: "capture",
    help: "",
    keys: &[
        Key {
            name: "interfaces",
            kind: Kind::List,
            default: "",
            live: false,
            help: "Mirror (SPAN) interfaces to capture on, comma-separated. Required for `calltap run`\n\
                  (or give --interface).",
        },
        Key {
            name: "source",
            kind: Kind::Choice(&["auto", "xdp", "af_packet"]),
            default: "auto",
            live: false,
            help: "auto: XDP, falling back to AF_PACKET when XDP cannot load or attach. xdp | af_packet force one.",
        },
        Key {
            name: "workers",
            kind: Kind::Number,
            default: "0",
            live: false,
            help: "Media workers, each pinned to a core. 0 = one per CPU (at most 8).",
        },
        Key {
            name: "sip_ports",
            kind: Kind::List,
            default: "5060,5080",
            live: true,
            help: "UDP/TCP ports that carry SIP.",
        },
        Key {
            name: "sniff_sip",
            kind: Kind::Bool,
            default: "true",
            live: false,
            help: "Also recognise SIP on other ports by its first payload bytes (\"INVITE \", \"SIP/2.0\", ...).\n\
                  A TCP port found this way is captured as SIP from then on (at most 64 SIP ports in all); a\n\
                  port below 1024 only once its server has answered in SIP too.",
        },
        Key {
            name: "learned_sip_port_idle_s",
            kind: Kind::Number,
            default: "600",
            live: false,
            help: "A TCP port learned as SIP by sniffing is forgotten after this many seconds without SIP on it.",
        },
        Key {
            name: "heuristic_rtp",
            kind: Kind::Bool,
            default: "false",
            live: false,
            help: "Capture RTP whose signalling was missed (RTP v2 header on even ports >= 1024).",
        },
        Key {
            name: "heuristic_worker",
            kind: Kind::Number,
            default: "0",
            live: false,
            help: "Worker that receives heuristic RTP.",
        },
        Key {
            name: "drop_after_capture",
            kind: Kind::AutoBool,
            default: "auto",
            live: false,
            help: "What XDP does with a frame once captured. auto: drop it only on a dedicated mirror port (not\n\
                  loopback, no IP address; an IPv6 link-local fe80:: address does not count), pass it into the\n\
                  host's network stack on any other interface (lo, or one with an address, carries the host's\n\
                  own traffic too). true: drop on every interface. false: pass on every interface. The mode\n\
                  chosen for each interface, and why, is logged at start and listed in run-summary.json.",
        },
        Key {
            name: "vxlan_port",
            kind: Kind::Number,
            default: "4789",
            live: false,
            help: "UDP port of VXLAN-encapsulated mirror traffic; 0 disables unwrapping.",
        },
    ],
};

/// Which capture source `calltap run` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// XDP, falling back to AF_PACKET when the program cannot load or attach.
    Auto,
    Xdp,
    AfPacket,
}

#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub interfaces: Vec<String>,
    pub source: SourceKind,
    /// Media workers (0: one per CPU, at most MAX_WORKERS).
    pub workers: u32,
    pub sip_ports: Vec<u16>,
    pub sniff_sip: bool,
    /// A TCP port learned as SIP by sniffing is forgotten after this long without SIP on it.
    pub learned_sip_port_idle_s: u64,
    pub heuristic_rtp: bool,
    pub heuristic_worker: u32,
    /// XDP drops frames after capture: `Some(true)` on every interface, `Some(false)` on none,
    /// `None` (auto) only on dedicated mirror ports (see [`super::mirror_port`]).
    pub drop_after_capture: Option<bool>,
    pub vxlan_port: u16,
}

impl CaptureConfig {
    pub fn from_values(v: &Values) -> Result<CaptureConfig, ConfigError> {
        const S: &str = "capture";
        let interfaces = v
            .get(S, "interfaces")
            .0
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let (src, _) = v.get(S, "source");
        let source = match src.trim() {
            "auto" => SourceKind::Auto,
            "xdp" => SourceKind::Xdp,
            "af_packet" => SourceKind::AfPacket,
            _ => return Err(v.bad(S, "source", src, "auto, xdp or af_packet")),
        };
        let workers: u32 = v.num(S, "workers", "a number of workers (0 = one per CPU)")?;
        if workers > MAX_WORKERS {
            return Err(v.invalid(S, "workers", "at most 8 workers"));
        }
        let (ports, _) = v.get(S, "sip_ports");
        let mut sip_ports = Vec::new();
        for p in ports.split([',', ' ']).filter(|s| !s.is_empty()) {
            match p.parse::<u16>() {
                Ok(p) if p != 0 => sip_ports.push(p),
                _ => return Err(v.bad(S, "sip_ports", ports, "comma-separated ports 1-65535")),
            }
        }
        let learned_sip_port_idle_s: u64 = v.num(S, "learned_sip_port_idle_s", "seconds")?;
        if learned_sip_port_idle_s == 0 {
            return Err(v.invalid(S, "learned_sip_port_idle_s", "at least 1 s"));
        }
        let heuristic_worker: u32 = v.num(S, "heuristic_worker", "a worker index")?;
        if heuristic_worker >= MAX_WORKERS {
            return Err(v.invalid(S, "heuristic_worker", "a worker index below 8"));
        }
        Ok(CaptureConfig {
            interfaces,
            source,
            workers,
            sip_ports,
            sniff_sip: v.bool(S, "sniff_sip")?,
            learned_sip_port_idle_s,
            heuristic_rtp: v.bool(S, "heuristic_rtp")?,
            heuristic_worker,
            drop_after_capture: v.auto_bool(S, "drop_after_capture")?,
            vxlan_port: v.num(S, "vxlan_port", "a UDP port (0 disables)")?,
        })
    }

    /// Media workers to run: the configured number, or one per online CPU.
    pub fn worker_count(&self) -> u32 {
        if self.workers > 0 {
            return self.workers;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        cpus.clamp(1, MAX_WORKERS)
    }

    /// The classifier's settings (the XDP program's, and the userspace classifier's).
    pub fn xdp(&self) -> XdpConfig {
        XdpConfig {
            drop_after_capture: match self.drop_after_capture {
                Some(true) => drop_mode::ALWAYS,
                Some(false) => drop_mode::NEVER,
                None => drop_mode::PER_INTERFACE,
            },
            sniff_sip: self.sniff_sip as u32,
            heuristic_rtp: self.heuristic_rtp as u32,
            heuristic_worker: self.heuristic_worker,
            vxlan_port: self.vxlan_port,
            _pad: 0,
        }
    }
}
