//! Configuration: built-in defaults, then the INI file, then `CALLTAP_<SECTION>_<KEY>`
//! environment variables, then command-line flags. Every key is documented in
//! `packaging/calltap.ini`.

use std::{collections::BTreeMap, path::PathBuf};

use calltap_common::{drop_mode, XdpConfig, MAX_WORKERS};
use calltap_net::{ipfrag::ReassemblyConfig, tcp::TcpConfig};

/// Every key CallTap understands, with its default, by section.
pub const KEYS: &[(&str, &str, &str)] = &[
    ("capture", "interfaces", ""),
    ("capture", "source", "auto"),
    ("capture", "workers", "0"),
    ("capture", "sip_ports", "5060,5080"),
    ("capture", "sniff_sip", "true"),
    ("capture", "learned_sip_port_idle_s", "600"),
    ("capture", "heuristic_rtp", "false"),
    ("capture", "heuristic_worker", "0"),
    ("capture", "drop_after_capture", "auto"),
    ("capture", "vxlan_port", "4789"),
    ("storage", "data_dir", "/var/lib/calltap"),
    (
        "storage",
        "path_template",
        "{yyyy}/{mm}/{dd}/{hhmmss}_{from}_{to}_{uuid}.wav",
    ),
    ("storage", "flush_interval_ms", "1000"),
    ("storage", "audio_buffer_mb", "2048"),
    ("storage", "raw_pcap_max_mb", "128"),
    ("calls", "media_timeout_s", "300"),
    ("calls", "restore_grace_s", "5"),
    ("calls", "max_duration_s", "14400"),
    ("calls", "unanswered_timeout_s", "180"),
    ("calls", "correlation_header", ""),
    ("calls", "max_calls", "100000"),
    ("calls", "max_unanswered_calls", "20000"),
    ("reassembly", "tcp_max_flows", "4096"),
    ("reassembly", "tcp_max_bytes_per_flow", "262144"),
    ("reassembly", "tcp_max_segments_per_flow", "256"),
    ("reassembly", "tcp_max_bytes", "67108864"),
    ("reassembly", "tcp_max_segments", "16384"),
    ("reassembly", "ip_max_datagrams", "256"),
    ("reassembly", "ip_max_bytes", "8388608"),
    ("reassembly", "ip_max_fragments_per_datagram", "128"),
    ("reassembly", "ip_timeout_ms", "5000"),
    ("recording", "default", "record"),
    ("database", "url", ""),
    ("database", "retry_interval_ms", "2000"),
    ("database", "write_timeout_ms", "2000"),
    ("archive", "target", ""),
    ("archive", "s3_endpoint", ""),
    ("archive", "s3_region", "us-east-1"),
    ("archive", "s3_access_key_id", ""),
    ("archive", "s3_secret_access_key", ""),
    ("archive", "s3_allow_http", "false"),
    ("archive", "retry_interval_ms", "5000"),
    ("retention", "archive_days", "0"),
    ("retention", "max_used_percent", "0"),
    ("retention", "spool_alarm_percent", "95"),
    ("api", "listen", "127.0.0.1:8080"),
    ("api", "tls_cert", ""),
    ("api", "tls_key", ""),
    ("webhooks", "url", ""),
    ("webhooks", "secret", ""),
    ("webhooks", "timeout_ms", "5000"),
    ("webhooks", "max_backoff_ms", "60000"),
    ("webhooks", "ca_file", ""),
    ("console", "listen", "127.0.0.1:5023"),
    ("console", "password", ""),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("{origin}: [{section}] {key} = {value:?}: expected {expected}")]
    Value {
        origin: String,
        section: String,
        key: String,
        value: String,
        expected: &'static str,
    },
    /// A value of the right form naming something that cannot be used (a file that does not
    /// exist or does not hold what it should).
    #[error("{origin}: [{section}] {key} = {value:?}: {reason}")]
    Unusable {
        origin: String,
        section: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{origin}: [storage] path_template = {template:?}: {reason}")]
    Template {
        origin: String,
        template: String,
        reason: crate::store::paths::TemplateError,
    },
    #[error("{origin}: unknown key [{section}] {key} (known keys: see packaging/calltap.ini)")]
    UnknownKey {
        origin: String,
        section: String,
        key: String,
    },
}

/// Which capture source `calltap run` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// XDP, falling back to AF_PACKET when the program cannot load or attach.
    Auto,
    Xdp,
    AfPacket,
}

#[derive(Clone, Debug)]
pub struct Config {
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
    /// `None` (auto) only on dedicated mirror ports (see `capture::mirror_port`).
    pub drop_after_capture: Option<bool>,
    pub vxlan_port: u16,
    pub data_dir: PathBuf,
    pub path_template: String,
    pub flush_interval_ms: u64,
    /// Most memory for recordings' audio buffers, all media workers together.
    pub audio_buffer_mb: u64,
    /// Most raw RTP (codecs not decoded) kept per call, in MiB.
    pub raw_pcap_max_mb: u64,
    pub media_timeout_s: u64,
    /// After a restart, a restored call with no RTP for this long ended while CallTap was down.
    pub restore_grace_s: u64,
    pub max_duration_s: u64,
    pub unanswered_timeout_s: u64,
    pub correlation_header: Option<String>,
    /// Calls followed at once (`[calls] max_calls`), and of those not answered yet
    /// (`max_unanswered_calls`; see `calltap_sip::dialog::TrackerConfig`).
    pub max_calls: usize,
    pub max_unanswered_calls: usize,
    /// `[reassembly]`: bounds of SIP over TCP and of fragmented datagrams.
    pub tcp: TcpConfig,
    pub ipfrag: ReassemblyConfig,
    /// `[recording] default`: what happens to a call no recording rule matches.
    pub recording_default: crate::pipeline::rules::RuleAction,
    /// CDR database URL; None: SQLite `calltap.db` in the data dir.
    pub database_url: Option<String>,
    /// First pause before reconnecting to the database (doubled per failure, up to 8x).
    pub db_retry_interval_ms: u64,
    /// Bound on each database write; slower writes go to the CSV journal.
    pub db_write_timeout_ms: u64,
    /// Where finished recordings go (`[archive] target`): stay in the spool, a directory or
    /// an S3-compatible bucket.
    pub archive_target: crate::store::archive::target::TargetSpec,
    /// How to reach the S3-compatible store (`[archive] s3_*`).
    pub archive_s3: crate::store::archive::target::S3Options,
    /// First pause after the archive failed (doubled per failure, up to 32x).
    pub archive_retry_interval_ms: u64,
    /// `[retention]`: age limit and disk watermark for archived recordings, spool disk alarm.
    pub retention: crate::store::retention::RetentionConfig,
    /// Address of the management HTTP server (`/metrics`, REST API); None: no server.
    pub api_listen: Option<String>,
    /// PEM certificate chain and private key: the management server speaks only HTTPS then.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// Where call events are POSTed (`http[s]://HOST[:PORT]/PATH`); None: no webhooks.
    pub webhook_url: Option<String>,
    /// PEM certificates trusted for an https webhook URL besides the system's CAs (a private
    /// CA, or the receiver's own self-signed certificate).
    pub webhook_ca_file: Option<PathBuf>,
    /// HMAC-SHA256 key of the `X-CallTap-Signature` header (required with a URL).
    pub webhook_secret: String,
    /// Bound on one delivery attempt (connect, send, answer).
    pub webhook_timeout_ms: u64,
    /// Longest pause between retries of an undelivered event (the backoff doubles up to it).
    pub webhook_max_backoff_ms: u64,
    /// Address of the telnet console; None: no console.
    pub console_listen: Option<String>,
    /// Password the console asks for; None: no prompt (keep it on loopback then).
    pub console_password: Option<String>,
}

/// A webhook receiver's address: `http://` or `https://`, host, port, path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub tls: bool,
    /// As written (an IPv6 address keeps its brackets).
    pub host: String,
    pub port: u16,
    /// With the query, if any; `/` when the URL has none.
    pub path: String,
}

/// Splits an `http[s]://HOST[:PORT][/PATH]` URL (ports default to 80 and 443).
pub fn parse_http_url(url: &str) -> Option<HttpUrl> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains(char::is_whitespace) {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        (&authority[..end], &authority[end..])
    } else {
        match authority.split_once(':') {
            Some((h, _)) => (h, &authority[h.len()..]),
            None => (authority, ""),
        }
    };
    let port = match port.strip_prefix(':') {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
        None if port.is_empty() => {
            if tls {
                443
            } else {
                80
            }
        }
        None => return None,
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    Some(HttpUrl {
        tls,
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// Every key's effective value by (section, key), after file and environment.
pub type Resolved = BTreeMap<(String, String), String>;

/// Raw values with where each came from, for error messages.
struct Raw {
    values: BTreeMap<(String, String), (String, String)>,
}

impl Raw {
    fn get(&self, section: &str, key: &str) -> (&str, &str) {
        match self.values.get(&(section.to_string(), key.to_string())) {
            Some((v, origin)) => (v.as_str(), origin.as_str()),
            None => ("", "default"),
        }
    }
}

fn bad(origin: &str, section: &str, key: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::Value {
        origin: origin.to_string(),
        section: section.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

fn parse_bool(raw: &Raw, section: &str, key: &str) -> Result<bool, ConfigError> {
    let (v, o) = raw.get(section, key);
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(o, section, key, v, "true or false")),
    }
}

/// A boolean that may also be left to CallTap: `auto` or empty is `None`.
fn parse_auto_bool(raw: &Raw, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
    let (v, o) = raw.get(section, key);
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(None),
        _ => parse_bool(raw, section, key)
            .map(Some)
            .map_err(|_| bad(o, section, key, v, "true, false or auto")),
    }
}

fn parse_num<T: std::str::FromStr>(
    raw: &Raw,
    section: &str,
    key: &str,
    expected: &'static str,
) -> Result<T, ConfigError> {
    let (v, o) = raw.get(section, key);
    v.trim()
        .parse()
        .map_err(|_| bad(o, section, key, v, expected))
}

/// `[section] listen`: an IP:PORT to bind, or empty for none.
fn parse_listen(
    raw: &Raw,
    section: &str,
    expected: &'static str,
) -> Result<Option<String>, ConfigError> {
    let (v, o) = raw.get(section, "listen");
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<std::net::SocketAddr>() {
        Ok(_) => Ok(Some(v.to_string())),
        Err(_) => Err(bad(o, section, "listen", v, expected)),
    }
}

impl Config {
    /// Defaults, overlaid by `file` (if any) and the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(file, &env)
    }

    pub fn load_with_env(
        file: Option<&std::path::Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        Self::resolve(file, env).map(|(c, _)| c)
    }

    /// As [`Config::load_with_env`], also returning every key's effective value, so a reload
    /// can tell exactly which keys changed.
    pub fn resolve(
        file: Option<&std::path::Path>,
        env: &[(String, String)],
    ) -> Result<(Config, Resolved), ConfigError> {
        let mut raw = Raw {
            values: BTreeMap::new(),
        };
        for (s, k, v) in KEYS {
            raw.values.insert(
                (s.to_string(), k.to_string()),
                (v.to_string(), "default".to_string()),
            );
        }
        if let Some(path) = file {
            let origin = path.display().to_string();
            let ini = ini::Ini::load_from_file(path).map_err(|e| ConfigError::File {
                file: origin.clone(),
                reason: e.to_string(),
            })?;
            for (section, props) in ini.iter() {
                let section = section.unwrap_or("").to_ascii_lowercase();
                for (key, value) in props.iter() {
                    let key = key.to_ascii_lowercase();
                    if !KEYS.iter().any(|(s, k, _)| *s == section && *k == key) {
                        return Err(ConfigError::UnknownKey {
                            origin,
                            section,
                            key,
                        });
                    }
                    raw.values
                        .insert((section.clone(), key), (value.to_string(), origin.clone()));
                }
            }
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("CALLTAP_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            for (s, k, _) in KEYS {
                if rest == format!("{s}_{k}") {
                    raw.values.insert(
                        (s.to_string(), k.to_string()),
                        (value.clone(), format!("environment {name}")),
                    );
                }
            }
        }
        let config = Self::from_raw(&raw)?;
        let resolved = raw
            .values
            .into_iter()
            .map(|(k, (v, _origin))| (k, v))
            .collect();
        Ok((config, resolved))
    }

    fn from_raw(raw: &Raw) -> Result<Config, ConfigError> {
        let (ifs, _) = raw.get("capture", "interfaces");
        let interfaces = ifs
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let (src, o) = raw.get("capture", "source");
        let source = match src.trim() {
            "auto" => SourceKind::Auto,
            "xdp" => SourceKind::Xdp,
            "af_packet" => SourceKind::AfPacket,
            _ => return Err(bad(o, "capture", "source", src, "auto, xdp or af_packet")),
        };
        let workers: u32 = parse_num(
            raw,
            "capture",
            "workers",
            "a number of workers (0 = one per CPU)",
        )?;
        if workers > MAX_WORKERS {
            let (v, o) = raw.get("capture", "workers");
            return Err(bad(o, "capture", "workers", v, "at most 8 workers"));
        }
        let (ports, o) = raw.get("capture", "sip_ports");
        let mut sip_ports = Vec::new();
        for p in ports.split([',', ' ']).filter(|s| !s.is_empty()) {
            match p.parse::<u16>() {
                Ok(p) if p != 0 => sip_ports.push(p),
                _ => {
                    return Err(bad(
                        o,
                        "capture",
                        "sip_ports",
                        ports,
                        "comma-separated ports 1-65535",
                    ))
                }
            }
        }
        let learned_sip_port_idle_s: u64 =
            parse_num(raw, "capture", "learned_sip_port_idle_s", "seconds")?;
        if learned_sip_port_idle_s == 0 {
            let (v, o) = raw.get("capture", "learned_sip_port_idle_s");
            return Err(bad(
                o,
                "capture",
                "learned_sip_port_idle_s",
                v,
                "at least 1 s",
            ));
        }
        let heuristic_worker: u32 =
            parse_num(raw, "capture", "heuristic_worker", "a worker index")?;
        if heuristic_worker >= MAX_WORKERS {
            let (v, o) = raw.get("capture", "heuristic_worker");
            return Err(bad(
                o,
                "capture",
                "heuristic_worker",
                v,
                "a worker index below 8",
            ));
        }
        let (dd, _) = raw.get("storage", "data_dir");
        let (tpl, o) = raw.get("storage", "path_template");
        if let Err(e) = crate::store::paths::validate_template(tpl.trim()) {
            return Err(ConfigError::Template {
                origin: o.to_string(),
                template: tpl.to_string(),
                reason: e,
            });
        }
        let flush_interval_ms: u64 =
            parse_num(raw, "storage", "flush_interval_ms", "milliseconds")?;
        if flush_interval_ms == 0 {
            return Err(bad(o, "storage", "flush_interval_ms", "0", "at least 1 ms"));
        }
        let audio_buffer_mb: u64 = parse_num(raw, "storage", "audio_buffer_mb", "MiB")?;
        if audio_buffer_mb < 16 {
            let (v, o) = raw.get("storage", "audio_buffer_mb");
            return Err(bad(o, "storage", "audio_buffer_mb", v, "at least 16 (MiB)"));
        }
        let (corr, _) = raw.get("calls", "correlation_header");
        let (mode, o) = raw.get("recording", "default");
        let recording_default = crate::pipeline::rules::RuleAction::parse(mode.trim())
            .ok_or_else(|| bad(o, "recording", "default", mode, "record, skip or on_demand"))?;
        let (url, o) = raw.get("database", "url");
        let url = url.trim();
        if !url.is_empty() && crate::store::db::Backend::of_url(url).is_none() {
            return Err(bad(
                o,
                "database",
                "url",
                url,
                "sqlite://PATH or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DB (empty: SQLite in the data dir)",
            ));
        }
        let db_retry_interval_ms: u64 =
            parse_num(raw, "database", "retry_interval_ms", "milliseconds")?;
        let db_write_timeout_ms: u64 =
            parse_num(raw, "database", "write_timeout_ms", "milliseconds")?;
        for (key, v) in [
            ("retry_interval_ms", db_retry_interval_ms),
            ("write_timeout_ms", db_write_timeout_ms),
        ] {
            if v == 0 {
                let (raw_v, o) = raw.get("database", key);
                return Err(bad(o, "database", key, raw_v, "at least 1 ms"));
            }
        }
        let (archive, s3, archive_retry_interval_ms, retention) = archive_from_raw(raw)?;
        let api_listen = parse_listen(
            raw,
            "api",
            "IP:PORT, e.g. 127.0.0.1:8080 (empty: no HTTP server)",
        )?;
        let api_tls = api_tls_from_raw(raw)?;
        let (hook, o) = raw.get("webhooks", "url");
        let hook = hook.trim();
        if !hook.is_empty() && parse_http_url(hook).is_none() {
            return Err(bad(
                o,
                "webhooks",
                "url",
                hook,
                "http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH] (empty: no webhooks)",
            ));
        }
        let (secret, o) = raw.get("webhooks", "secret");
        if !hook.is_empty() && secret.is_empty() {
            return Err(bad(
                o,
                "webhooks",
                "secret",
                secret,
                "a secret to sign webhook bodies with (required when [webhooks] url is set)",
            ));
        }
        let (ca_file, o) = raw.get("webhooks", "ca_file");
        let webhook_ca_file = match ca_file.trim() {
            "" => None,
            f => {
                let path = PathBuf::from(f);
                if let Err(why) = crate::publish::tls::read_certs(&path) {
                    return Err(ConfigError::Unusable {
                        origin: o.to_string(),
                        section: "webhooks".into(),
                        key: "ca_file".into(),
                        value: f.to_string(),
                        reason: format!("expected a readable PEM file of CA certificates: {why}"),
                    });
                }
                Some(path)
            }
        };
        let webhook_timeout_ms: u64 = parse_num(raw, "webhooks", "timeout_ms", "milliseconds")?;
        let webhook_max_backoff_ms: u64 =
            parse_num(raw, "webhooks", "max_backoff_ms", "milliseconds")?;
        for (key, v, min, expected) in [
            ("timeout_ms", webhook_timeout_ms, 1, "at least 1 ms"),
            (
                "max_backoff_ms",
                webhook_max_backoff_ms,
                100,
                "at least 100 ms",
            ),
        ] {
            if v < min {
                let (raw_v, o) = raw.get("webhooks", key);
                return Err(bad(o, "webhooks", key, raw_v, expected));
            }
        }
        let console_listen = parse_listen(
            raw,
            "console",
            "IP:PORT, e.g. 127.0.0.1:5023 (empty: no console)",
        )?;
        let (password, _) = raw.get("console", "password");
        let (max_calls, max_unanswered_calls) = call_limits_from_raw(raw)?;
        let (tcp, ipfrag) = reassembly_from_raw(raw)?;
        Ok(Config {
            interfaces,
            source,
            workers,
            sip_ports,
            sniff_sip: parse_bool(raw, "capture", "sniff_sip")?,
            learned_sip_port_idle_s,
            heuristic_rtp: parse_bool(raw, "capture", "heuristic_rtp")?,
            heuristic_worker,
            drop_after_capture: parse_auto_bool(raw, "capture", "drop_after_capture")?,
            vxlan_port: parse_num(raw, "capture", "vxlan_port", "a UDP port (0 disables)")?,
            data_dir: PathBuf::from(dd),
            path_template: tpl.trim().to_string(),
            flush_interval_ms,
            audio_buffer_mb,
            raw_pcap_max_mb: parse_num(raw, "storage", "raw_pcap_max_mb", "MiB")?,
            media_timeout_s: parse_num(raw, "calls", "media_timeout_s", "seconds")?,
            restore_grace_s: parse_num(raw, "calls", "restore_grace_s", "seconds")?,
            max_duration_s: parse_num(raw, "calls", "max_duration_s", "seconds")?,
            unanswered_timeout_s: parse_num(raw, "calls", "unanswered_timeout_s", "seconds")?,
            correlation_header: Some(corr.trim().to_string()).filter(|s| !s.is_empty()),
            max_calls,
            max_unanswered_calls,
            tcp,
            ipfrag,
            recording_default,
            database_url: Some(url.to_string()).filter(|s| !s.is_empty()),
            db_retry_interval_ms,
            db_write_timeout_ms,
            archive_target: archive,
            archive_s3: s3,
            archive_retry_interval_ms,
            retention,
            api_listen,
            api_tls,
            webhook_url: Some(hook.to_string()).filter(|s| !s.is_empty()),
            webhook_ca_file,
            webhook_secret: secret.to_string(),
            webhook_timeout_ms,
            webhook_max_backoff_ms,
            console_listen,
            console_password: Some(password.to_string()).filter(|s| !s.is_empty()),
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

    /// The CDR database URL: the configured one, or SQLite `calltap.db` in the data dir
    /// (resolved late because `--data-dir` overrides the configured directory).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("calltap.db").display()),
        }
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.data_dir.join("recordings")
    }
}

/// `[archive]` and `[retention]`, validated.
#[allow(clippy::type_complexity)]
fn archive_from_raw(
    raw: &Raw,
) -> Result<
    (
        crate::store::archive::target::TargetSpec,
        crate::store::archive::target::S3Options,
        u64,
        crate::store::retention::RetentionConfig,
    ),
    ConfigError,
> {
    use crate::store::archive::target::{S3Options, TargetSpec};
    let (t, o) = raw.get("archive", "target");
    let target =
        TargetSpec::parse(t).map_err(|expected| bad(o, "archive", "target", t, expected))?;
    if let TargetSpec::Dir(root) = &target {
        let data = std::path::Path::new(raw.get("storage", "data_dir").0.trim());
        if root.starts_with(data) || data.starts_with(root) {
            return Err(bad(
                o,
                "archive",
                "target",
                t,
                "a directory outside [storage] data_dir (archiving into it would delete the only copy)",
            ));
        }
    }
    let opt =
        |key: &str| Some(raw.get("archive", key).0.trim().to_string()).filter(|s| !s.is_empty());
    let endpoint = opt("s3_endpoint");
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            let (v, o) = raw.get("archive", "s3_endpoint");
            return Err(bad(
                o,
                "archive",
                "s3_endpoint",
                v,
                "http://HOST[:PORT] or https://HOST[:PORT] (empty: AWS)",
            ));
        }
    }
    let allow_http = parse_bool(raw, "archive", "s3_allow_http")?;
    if endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
        && !allow_http
    {
        let (v, o) = raw.get("archive", "s3_endpoint");
        return Err(bad(
            o,
            "archive",
            "s3_endpoint",
            v,
            "an https:// endpoint, or s3_allow_http = true for plain HTTP",
        ));
    }
    let s3 = S3Options {
        endpoint,
        region: opt("s3_region").unwrap_or_else(|| "us-east-1".to_string()),
        access_key_id: opt("s3_access_key_id"),
        secret_access_key: opt("s3_secret_access_key"),
        allow_http,
    };
    if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
        let (v, o) = raw.get("archive", "s3_access_key_id");
        return Err(bad(o, "archive", "s3_access_key_id", v, "both s3_access_key_id and s3_secret_access_key, or neither (then the AWS_* environment is used)"));
    }
    let retry: u64 = parse_num(raw, "archive", "retry_interval_ms", "milliseconds")?;
    if retry == 0 {
        let (v, o) = raw.get("archive", "retry_interval_ms");
        return Err(bad(o, "archive", "retry_interval_ms", v, "at least 1 ms"));
    }
    let archive_days: u32 = parse_num(raw, "retention", "archive_days", "days (0 = keep forever)")?;
    let percent = |key: &str, expected: &'static str| -> Result<u8, ConfigError> {
        let n: u8 = parse_num(raw, "retention", key, expected)?;
        if n > 100 {
            let (v, o) = raw.get("retention", key);
            return Err(bad(o, "retention", key, v, expected));
        }
        Ok(n)
    };
    let max_used_percent = percent("max_used_percent", "a percentage 0-100 (0 = no watermark)")?;
    let spool_alarm_percent = percent("spool_alarm_percent", "a percentage 1-100")?;
    if spool_alarm_percent == 0 {
        let (v, o) = raw.get("retention", "spool_alarm_percent");
        return Err(bad(
            o,
            "retention",
            "spool_alarm_percent",
            v,
            "a percentage 1-100",
        ));
    }
    Ok((
        target,
        s3,
        retry,
        crate::store::retention::RetentionConfig {
            archive_days,
            max_used_percent,
            spool_alarm_percent,
        },
    ))
}

/// A count or size that must be at least 1.
fn positive(raw: &Raw, section: &str, key: &str) -> Result<usize, ConfigError> {
    let n: usize = parse_num(raw, section, key, "a whole number, at least 1")?;
    if n == 0 {
        let (v, o) = raw.get(section, key);
        return Err(bad(o, section, key, v, "a whole number, at least 1"));
    }
    Ok(n)
}

/// `[calls] max_calls` and `max_unanswered_calls` (no more than `max_calls`, or an INVITE
/// flood could fill every place before the unanswered bound sheds anything).
fn call_limits_from_raw(raw: &Raw) -> Result<(usize, usize), ConfigError> {
    let max_calls = positive(raw, "calls", "max_calls")?;
    let unanswered = positive(raw, "calls", "max_unanswered_calls")?;
    if unanswered > max_calls {
        let (v, o) = raw.get("calls", "max_unanswered_calls");
        return Err(bad(
            o,
            "calls",
            "max_unanswered_calls",
            v,
            "at most [calls] max_calls",
        ));
    }
    Ok((max_calls, unanswered))
}

/// `[reassembly]`: the TCP and IP fragment bounds.
fn reassembly_from_raw(raw: &Raw) -> Result<(TcpConfig, ReassemblyConfig), ConfigError> {
    let get = |key: &str| positive(raw, "reassembly", key);
    let tcp = TcpConfig {
        max_flows: get("tcp_max_flows")?,
        max_buffered_per_flow: get("tcp_max_bytes_per_flow")?,
        max_segments_per_flow: get("tcp_max_segments_per_flow")?,
        max_total_bytes: get("tcp_max_bytes")?,
        max_total_segments: get("tcp_max_segments")?,
        ..TcpConfig::default()
    };
    let ip = ReassemblyConfig {
        max_datagrams: get("ip_max_datagrams")?,
        max_total_bytes: get("ip_max_bytes")?,
        max_fragments_per_datagram: get("ip_max_fragments_per_datagram")?,
        timeout_ns: (get("ip_timeout_ms")? as u64).saturating_mul(1_000_000),
        ..ReassemblyConfig::default()
    };
    Ok((tcp, ip))
}

/// `[api] tls_cert` and `tls_key`: both (HTTPS) or neither (plain HTTP).
fn api_tls_from_raw(raw: &Raw) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let (cert, o_cert) = raw.get("api", "tls_cert");
    let (key, o_key) = raw.get("api", "tls_key");
    match (cert.trim(), key.trim()) {
        ("", "") => Ok(None),
        ("", k) => Err(bad(
            o_key,
            "api",
            "tls_key",
            k,
            "tls_cert as well (both or neither)",
        )),
        (c, "") => Err(bad(
            o_cert,
            "api",
            "tls_cert",
            c,
            "tls_key as well (both or neither)",
        )),
        (c, k) => Ok(Some((PathBuf::from(c), PathBuf::from(k)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_without_a_file() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.sip_ports, vec![5060, 5080]);
        assert_eq!(c.source, SourceKind::Auto);
        assert_eq!(c.drop_after_capture, None, "auto: decided per interface");
        assert_eq!(c.xdp().drop_after_capture, drop_mode::PER_INTERFACE);
    }

    #[test]
    fn drop_after_capture_is_true_false_or_auto() {
        let load = |v: &str| {
            let env = [(
                "CALLTAP_CAPTURE_DROP_AFTER_CAPTURE".to_string(),
                v.to_string(),
            )];
            Config::load_with_env(None, &env).map(|c| c.drop_after_capture)
        };
        assert_eq!(load("auto").expect("auto"), None);
        assert_eq!(load("").expect("empty"), None);
        assert_eq!(load("true").expect("true"), Some(true));
        assert_eq!(load("off").expect("off"), Some(false));
        let e = load("sometimes").expect_err("not a mode");
        assert!(e.to_string().contains("true, false or auto"), "{e}");
    }

    /// The bounds' keys default to the bounds the code has, and are validated.
    #[test]
    fn limits_default_to_the_code_and_are_validated() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        let tracker = calltap_sip::dialog::TrackerConfig::default();
        assert_eq!(
            (c.max_calls, c.max_unanswered_calls),
            (tracker.max_calls, tracker.max_unanswered_calls)
        );
        assert_eq!(c.tcp, TcpConfig::default());
        assert_eq!(c.ipfrag, ReassemblyConfig::default());
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::load_with_env(None, &env("CALLTAP_REASSEMBLY_TCP_MAX_SEGMENTS", "99"))
            .expect("set");
        assert_eq!(c.tcp.max_total_segments, 99);
        for (k, v) in [
            ("CALLTAP_CALLS_MAX_CALLS", "0"),
            ("CALLTAP_CALLS_MAX_UNANSWERED_CALLS", "100001"),
            ("CALLTAP_REASSEMBLY_IP_MAX_BYTES", "-1"),
            ("CALLTAP_REASSEMBLY_IP_TIMEOUT_MS", "0"),
        ] {
            let err = Config::load_with_env(None, &env(k, v)).expect_err(k);
            assert!(err.to_string().contains(k), "{err}");
        }
    }

    /// packaging/calltap.ini lists every key with its default, and nothing else.
    #[test]
    fn shipped_ini_lists_every_key_with_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/calltap.ini");
        let text = std::fs::read_to_string(path).expect("packaging/calltap.ini");
        let mut section = String::new();
        let mut shipped = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                shipped.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
            }
        }
        let keys: Vec<(String, String, String)> = KEYS
            .iter()
            .map(|(s, k, v)| (s.to_string(), k.to_string(), v.to_string()))
            .collect();
        assert_eq!(shipped, keys);
    }

    #[test]
    fn api_tls_takes_both_files_or_neither() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.api_tls, None);
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let both = env(&[
            ("CALLTAP_API_TLS_CERT", "/etc/calltap/api.crt"),
            ("CALLTAP_API_TLS_KEY", "/etc/calltap/api.key"),
        ]);
        let c = Config::load_with_env(None, &both).expect("both");
        assert_eq!(
            c.api_tls,
            Some(("/etc/calltap/api.crt".into(), "/etc/calltap/api.key".into()))
        );
        let err = Config::load_with_env(None, &env(&[("CALLTAP_API_TLS_CERT", "/x.crt")]))
            .expect_err("cert alone")
            .to_string();
        assert!(
            err.contains("CALLTAP_API_TLS_CERT") && err.contains("tls_key"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_and_errors_name_the_origin() {
        let env = vec![
            (
                "CALLTAP_CAPTURE_SIP_PORTS".to_string(),
                "5060,6060".to_string(),
            ),
            ("CALLTAP_STORAGE_DATA_DIR".to_string(), "/tmp/x".to_string()),
        ];
        let c = Config::load_with_env(None, &env).expect("env");
        assert_eq!(c.sip_ports, vec![5060, 6060]);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let env = vec![("CALLTAP_CAPTURE_WORKERS".to_string(), "many".to_string())];
        let err = Config::load_with_env(None, &env)
            .expect_err("bad value")
            .to_string();
        assert!(
            err.contains("CALLTAP_CAPTURE_WORKERS") && err.contains("workers"),
            "{err}"
        );
    }

    #[test]
    fn database_url_defaults_to_sqlite_in_the_data_dir_and_rejects_other_schemes() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.database_url(), "sqlite:///var/lib/calltap/calltap.db");
        assert_eq!(c.db_retry_interval_ms, 2000);
        let env = vec![(
            "CALLTAP_DATABASE_URL".to_string(),
            "postgres://calltap@db.example/calltap".to_string(),
        )];
        let c = Config::load_with_env(None, &env).expect("postgres url");
        assert_eq!(c.database_url(), "postgres://calltap@db.example/calltap");
        let env = vec![(
            "CALLTAP_DATABASE_URL".to_string(),
            "mysql://db/calltap".to_string(),
        )];
        let err = Config::load_with_env(None, &env)
            .expect_err("bad scheme")
            .to_string();
        assert!(
            err.contains("CALLTAP_DATABASE_URL") && err.contains("url"),
            "{err}"
        );
        let env = vec![(
            "CALLTAP_DATABASE_RETRY_INTERVAL_MS".to_string(),
            "0".to_string(),
        )];
        assert!(Config::load_with_env(None, &env).is_err());
    }

    #[test]
    fn recording_default_is_validated() {
        use crate::pipeline::rules::RuleAction;
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.recording_default, RuleAction::Record);
        let env = |v: &str| vec![("CALLTAP_RECORDING_DEFAULT".to_string(), v.to_string())];
        let c = Config::load_with_env(None, &env("on_demand")).expect("on_demand");
        assert_eq!(c.recording_default, RuleAction::OnDemand);
        let e = Config::load_with_env(None, &env("never")).expect_err("bad mode");
        assert!(e.to_string().contains("record, skip or on_demand"), "{e}");
    }

    #[test]
    fn webhook_and_console_keys_are_validated() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.webhook_url, None);
        assert_eq!(
            (c.webhook_timeout_ms, c.webhook_max_backoff_ms),
            (5000, 60000)
        );
        assert_eq!(c.console_listen.as_deref(), Some("127.0.0.1:5023"));
        assert_eq!(c.console_password, None);
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = Config::load_with_env(
            None,
            &env(&[
                ("CALLTAP_WEBHOOKS_URL", "http://127.0.0.1:9000/hooks"),
                ("CALLTAP_WEBHOOKS_SECRET", "s3cret"),
                ("CALLTAP_CONSOLE_LISTEN", ""),
                ("CALLTAP_CONSOLE_PASSWORD", "pw"),
            ]),
        )
        .expect("webhooks");
        assert_eq!(
            c.webhook_url.as_deref(),
            Some("http://127.0.0.1:9000/hooks")
        );
        assert_eq!(c.webhook_secret, "s3cret");
        assert_eq!(c.console_listen, None);
        assert_eq!(c.console_password.as_deref(), Some("pw"));
        for (bad_env, key) in [
            (vec![("CALLTAP_WEBHOOKS_URL", "http://x/")], "secret"),
            (
                vec![
                    ("CALLTAP_WEBHOOKS_URL", "ftp://x/"),
                    ("CALLTAP_WEBHOOKS_SECRET", "s"),
                ],
                "url",
            ),
            (vec![("CALLTAP_WEBHOOKS_TIMEOUT_MS", "0")], "timeout_ms"),
            (
                vec![("CALLTAP_WEBHOOKS_MAX_BACKOFF_MS", "5")],
                "max_backoff_ms",
            ),
            (vec![("CALLTAP_CONSOLE_LISTEN", "localhost")], "listen"),
        ] {
            let err = Config::load_with_env(None, &env(&bad_env))
                .expect_err("invalid")
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn http_urls_split_into_scheme_host_port_and_path() {
        let p = |u: &str| parse_http_url(u).map(|u| (u.tls, u.host, u.port, u.path));
        assert_eq!(
            p("http://h/x?y=1"),
            Some((false, "h".into(), 80, "/x?y=1".into()))
        );
        assert_eq!(
            p("http://10.0.0.1:8081"),
            Some((false, "10.0.0.1".into(), 8081, "/".into()))
        );
        assert_eq!(
            p("http://[::1]:9/a"),
            Some((false, "[::1]".into(), 9, "/a".into()))
        );
        assert_eq!(
            p("https://hooks.example.com/calltap"),
            Some((true, "hooks.example.com".into(), 443, "/calltap".into()))
        );
        assert_eq!(
            p("https://[::1]:8443"),
            Some((true, "[::1]".into(), 8443, "/".into()))
        );
        for bad in [
            "http://",
            "https://",
            "http://h:0/",
            "https://h:x/",
            "http://u@h/",
            "ftp://h",
            "HTTP://h/",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn webhook_ca_file_must_hold_pem_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = |file: &std::path::Path| {
            vec![
                ("CALLTAP_WEBHOOKS_URL".to_string(), "https://h/".to_string()),
                ("CALLTAP_WEBHOOKS_SECRET".to_string(), "s".to_string()),
                (
                    "CALLTAP_WEBHOOKS_CA_FILE".to_string(),
                    file.display().to_string(),
                ),
            ]
        };
        let missing = dir.path().join("missing.pem");
        let e = Config::load_with_env(None, &env(&missing)).expect_err("missing file");
        assert!(e.to_string().contains("ca_file"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = Config::load_with_env(None, &env(&junk)).expect_err("no certificate");
        assert!(
            e.to_string().contains("ca_file") && e.to_string().contains("no PEM certificate"),
            "{e}"
        );
        let (cert, _key) = crate::publish::tls::self_signed_for_tests(dir.path());
        let c = Config::load_with_env(None, &env(&cert)).expect("a real certificate");
        assert_eq!(c.webhook_ca_file.as_deref(), Some(cert.as_path()));
        assert_eq!(c.webhook_url.as_deref(), Some("https://h/"));
    }

    #[test]
    fn ini_file_unknown_key_is_an_error() {
        let path = std::env::temp_dir().join(format!("calltap-cfg-{}.ini", std::process::id()));
        std::fs::write(&path, "[capture]\nworkerz = 2\n").expect("write");
        let err = Config::load_with_env(Some(&path), &[]).expect_err("unknown");
        assert!(err.to_string().contains("workerz"));
        std::fs::write(&path, "[capture]\nworkers = 2\nsip_ports = 5060\n").expect("write");
        let c = Config::load_with_env(Some(&path), &[]).expect("ok");
        assert_eq!((c.workers, c.sip_ports.clone()), (2, vec![5060]));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn archive_and_retention_keys_parse_and_reject_with_clear_errors() {
        use crate::store::archive::target::TargetSpec;
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.archive_target, TargetSpec::Spool);
        assert_eq!(c.archive_retry_interval_ms, 5000);
        assert_eq!(c.retention.archive_days, 0);
        assert_eq!(c.retention.spool_alarm_percent, 95);
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = Config::load_with_env(
            None,
            &env(&[
                ("CALLTAP_ARCHIVE_TARGET", "s3://calls/site-a"),
                ("CALLTAP_ARCHIVE_S3_ENDPOINT", "http://127.0.0.1:9000"),
                ("CALLTAP_ARCHIVE_S3_ALLOW_HTTP", "true"),
                ("CALLTAP_ARCHIVE_S3_ACCESS_KEY_ID", "k"),
                ("CALLTAP_ARCHIVE_S3_SECRET_ACCESS_KEY", "s"),
                ("CALLTAP_RETENTION_ARCHIVE_DAYS", "90"),
                ("CALLTAP_RETENTION_MAX_USED_PERCENT", "80"),
            ]),
        )
        .expect("s3 archive");
        assert_eq!(
            c.archive_target,
            TargetSpec::S3 {
                bucket: "calls".into(),
                prefix: "site-a".into()
            }
        );
        assert_eq!(
            c.archive_s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            (c.retention.archive_days, c.retention.max_used_percent),
            (90, 80)
        );
        for (pairs, key) in [
            (vec![("CALLTAP_ARCHIVE_TARGET", "relative/dir")], "target"),
            (
                vec![("CALLTAP_ARCHIVE_TARGET", "/var/lib/calltap/archive")],
                "target",
            ),
            (
                vec![
                    ("CALLTAP_ARCHIVE_TARGET", "s3://calls"),
                    ("CALLTAP_ARCHIVE_S3_ENDPOINT", "http://127.0.0.1:9000"),
                ],
                "s3_endpoint",
            ),
            (
                vec![("CALLTAP_ARCHIVE_S3_ACCESS_KEY_ID", "only-the-id")],
                "s3_access_key_id",
            ),
            (
                vec![("CALLTAP_ARCHIVE_RETRY_INTERVAL_MS", "0")],
                "retry_interval_ms",
            ),
            (
                vec![("CALLTAP_RETENTION_MAX_USED_PERCENT", "150")],
                "max_used_percent",
            ),
            (
                vec![("CALLTAP_RETENTION_ARCHIVE_DAYS", "-1")],
                "archive_days",
            ),
            (
                vec![("CALLTAP_RETENTION_SPOOL_ALARM_PERCENT", "0")],
                "spool_alarm_percent",
            ),
        ] {
            let err = Config::load_with_env(None, &env(&pairs))
                .expect_err(key)
                .to_string();
            assert!(err.contains(key) && err.contains("CALLTAP_"), "{err}");
        }
    }
}
