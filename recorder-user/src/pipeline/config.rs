//! `[calls]` and `[reassembly]`: the signalling and media workers' settings.

use calltap_net::{ipfrag::ReassemblyConfig, tcp::TcpConfig};
use calltap_sip::dialog::TrackerConfig;

use crate::settings::{ConfigError, Key, Kind, Section, Values};

/// `[calls]`.
pub const CALLS: Section = Section {
    name: "calls",
    help: "",
    keys: &[
        Key {
            name: "media_timeout_s",
            kind: Kind::Number,
            default: "300",
            live: true,
            help: "End a call after this many seconds without RTP (calls on hold are exempt).",
        },
        Key {
            name: "restore_grace_s",
            kind: Kind::Number,
            default: "5",
            live: false,
            help: "After a restart (crash, kill, reboot), calls the previous run was recording are resumed from\n\
                  <data_dir>/active/; an answered call that sends no RTP for this many seconds ended while\n\
                  CallTap was down and is closed with end reason recorder_restart (its audio is kept).",
        },
        Key {
            name: "max_duration_s",
            kind: Kind::Number,
            default: "14400",
            live: true,
            help: "Longest call recorded; longer calls are closed with end reason max_duration.",
        },
        Key {
            name: "unanswered_timeout_s",
            kind: Kind::Number,
            default: "180",
            live: true,
            help: "An INVITE without a final answer is dropped after this many seconds.",
        },
        Key {
            name: "correlation_header",
            kind: Kind::Text,
            default: "",
            live: false,
            help: "SIP header whose value groups the legs of one interaction (e.g. X-CID); empty: Call-ID.",
        },
        Key {
            name: "max_calls",
            kind: Kind::Number,
            default: "100000",
            live: true,
            help: "Most calls followed at once; further INVITEs are not followed (no CDR), counted in\n\
                  calltap_sip_invites_shed_total{reason=\"max_calls\"}.",
        },
        Key {
            name: "max_unanswered_calls",
            kind: Kind::Number,
            default: "20000",
            live: true,
            help: "Most of those not answered yet, so an INVITE flood cannot take every place. At the bound a\n\
                  new INVITE evicts the oldest unanswered call nobody has answered in any way (no response but\n\
                  100 Trying or an authentication challenge, no SDP from the callee): it ends without a CDR\n\
                  (with one, end reason evicted, if it had packets or a recording), counted in\n\
                  calltap_sip_calls_evicted_total. Ringing and answered calls are never evicted; when every\n\
                  unanswered call is ringing, the new INVITE is not followed\n\
                  (calltap_sip_invites_shed_total{reason=\"max_unanswered\"}). At most max_calls.",
        },
    ],
};

/// `[reassembly]`.
pub const REASSEMBLY: Section = Section {
    name: "reassembly",
    help: "Bounds on SIP over TCP and on fragmented datagrams (changing them needs a restart). Bytes are\n\
          counted as held: payload plus 80 bytes per held out-of-order TCP segment and 32 per IP\n\
          fragment, so tiny segments or fragments cannot hold many times what their payload says.",
    keys: &[
        Key {
            name: "tcp_max_flows",
            kind: Kind::Number,
            default: "4096",
            live: false,
            help: "TCP connection directions followed at once; beyond, the least recently active is forgotten.",
        },
        Key {
            name: "tcp_max_bytes_per_flow",
            kind: Kind::Number,
            default: "262144",
            live: false,
            help: "Bytes one direction holds (unframed plus out of order); beyond, the oldest hole is skipped.",
        },
        Key {
            name: "tcp_max_segments_per_flow",
            kind: Kind::Number,
            default: "256",
            live: false,
            help: "Out-of-order segments one direction holds; beyond, the oldest hole is skipped.",
        },
        Key {
            name: "tcp_max_bytes",
            kind: Kind::Number,
            default: "67108864",
            live: false,
            help: "Bytes and out-of-order segments all directions hold; beyond, the direction holding the most\n\
                  loses what it holds (calltap_tcp_segments_shed_total).",
        },
        Key {
            name: "tcp_max_segments",
            kind: Kind::Number,
            default: "16384",
            live: false,
            help: "",
        },
        Key {
            name: "ip_max_datagrams",
            kind: Kind::Number,
            default: "256",
            live: false,
            help: "Fragmented datagrams reassembled at once; beyond, the oldest is dropped.",
        },
        Key {
            name: "ip_max_bytes",
            kind: Kind::Number,
            default: "8388608",
            live: false,
            help: "Bytes all pending datagrams hold; beyond, the oldest are dropped.",
        },
        Key {
            name: "ip_max_fragments_per_datagram",
            kind: Kind::Number,
            default: "128",
            live: false,
            help: "Fragments one datagram may have; a datagram with more is dropped.",
        },
        Key {
            name: "ip_timeout_ms",
            kind: Kind::Number,
            default: "5000",
            live: false,
            help: "A datagram still incomplete this long after its first fragment is dropped.",
        },
    ],
};

/// `[calls]`: when calls end, and how many are followed.
#[derive(Clone, Debug)]
pub struct CallsConfig {
    pub media_timeout_s: u64,
    /// After a restart, a restored call with no RTP for this long ended while CallTap was down.
    pub restore_grace_s: u64,
    pub max_duration_s: u64,
    pub unanswered_timeout_s: u64,
    pub correlation_header: Option<String>,
    /// Calls followed at once, and of those not answered yet (see [`TrackerConfig`]).
    pub max_calls: usize,
    pub max_unanswered_calls: usize,
}

impl CallsConfig {
    pub fn from_values(v: &Values) -> Result<CallsConfig, ConfigError> {
        const S: &str = "calls";
        let max_calls = v.positive(S, "max_calls")?;
        let max_unanswered_calls = v.positive(S, "max_unanswered_calls")?;
        // No more than max_calls, or an INVITE flood could fill every place before the
        // unanswered bound sheds anything.
        if max_unanswered_calls > max_calls {
            return Err(v.invalid(S, "max_unanswered_calls", "at most [calls] max_calls"));
        }
        Ok(CallsConfig {
            media_timeout_s: v.num(S, "media_timeout_s", "seconds")?,
            restore_grace_s: v.num(S, "restore_grace_s", "seconds")?,
            max_duration_s: v.num(S, "max_duration_s", "seconds")?,
            unanswered_timeout_s: v.num(S, "unanswered_timeout_s", "seconds")?,
            correlation_header: v.optional(S, "correlation_header"),
            max_calls,
            max_unanswered_calls,
        })
    }

    /// The dialog tracker's settings.
    pub fn tracker(&self) -> TrackerConfig {
        TrackerConfig {
            correlation_header: self.correlation_header.clone(),
            max_call_duration_ns: self.max_duration_s.saturating_mul(1_000_000_000),
            unanswered_timeout_ns: self.unanswered_timeout_s.saturating_mul(1_000_000_000),
            max_calls: self.max_calls,
            max_unanswered_calls: self.max_unanswered_calls,
            ..TrackerConfig::default()
        }
    }
}

/// `[reassembly]`: bounds of SIP over TCP and of fragmented datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    pub tcp: TcpConfig,
    pub ipfrag: ReassemblyConfig,
}

impl ReassemblyLimits {
    pub fn from_values(v: &Values) -> Result<ReassemblyLimits, ConfigError> {
        let get = |key: &str| v.positive("reassembly", key);
        let tcp = TcpConfig {
            max_flows: get("tcp_max_flows")?,
            max_buffered_per_flow: get("tcp_max_bytes_per_flow")?,
            max_segments_per_flow: get("tcp_max_segments_per_flow")?,
            max_total_bytes: get("tcp_max_bytes")?,
            max_total_segments: get("tcp_max_segments")?,
            ..TcpConfig::default()
        };
        let ipfrag = ReassemblyConfig {
            max_datagrams: get("ip_max_datagrams")?,
            max_total_bytes: get("ip_max_bytes")?,
            max_fragments_per_datagram: get("ip_max_fragments_per_datagram")?,
            timeout_ns: (get("ip_timeout_ms")? as u64).saturating_mul(1_000_000),
            ..ReassemblyConfig::default()
        };
        Ok(ReassemblyLimits { tcp, ipfrag })
    }
}
