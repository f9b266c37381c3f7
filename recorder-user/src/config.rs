//! Configuration: built-in defaults, then the INI file, then `CALLTAP_<SECTION>_<KEY>`
//! environment variables, then command-line flags.
//!
//! Each section is declared, parsed and checked by the part of CallTap that uses it (see
//! [`crate::settings`]); [`Config`] only composes them, in the order of
//! `packaging/calltap.ini`, which [`ini_template`] writes from the declarations. **Adding a
//! key**: one entry in its section's `Section` (name, kind, default, live, help) and one line
//! in its `from_values`; the shipped INI, the man page, `check-config --keys` and the reload's
//! live keys follow (tests hold them to the declarations).

pub use crate::settings::{ConfigError, Resolved};
use crate::{
    capture::config::{CaptureConfig, CAPTURE},
    pipeline::config::{CallsConfig, ReassemblyLimits, CALLS, REASSEMBLY},
    publish::{
        api::ApiSettings,
        config::{ApiConfig, ConsoleSettings, WebhooksConfig, API, CONSOLE, WEBHOOKS},
    },
    rules::{RecordingConfig, RECORDING},
    settings::{Key, Section, Values},
    store::{
        config::{
            ArchiveSettings, DatabaseConfig, StorageConfig, ARCHIVE, DATABASE, RETENTION, STORAGE,
        },
        retention::RetentionConfig,
    },
};

/// Every section, in the order `packaging/calltap.ini` lists them.
pub const SECTIONS: &[&Section] = &[
    &CAPTURE,
    &STORAGE,
    &CALLS,
    &REASSEMBLY,
    &RECORDING,
    &DATABASE,
    &ARCHIVE,
    &RETENTION,
    &API,
    &WEBHOOKS,
    &CONSOLE,
];

/// The comment at the top of `packaging/calltap.ini`.
const INI_HEADER: &str = "CallTap configuration. Installed as /etc/calltap/calltap.ini; `calltap --config FILE`\n\
                          otherwise. Every key can be overridden by an environment variable CALLTAP_<SECTION>_<KEY>,\n\
                          e.g. CALLTAP_CAPTURE_INTERFACES=ens5f1. `calltap check-config` validates without starting.";

/// Every key with its section, in INI order.
pub fn keys() -> impl Iterator<Item = (&'static Section, &'static Key)> {
    SECTIONS
        .iter()
        .flat_map(|s| s.keys.iter().map(move |k| (*s, k)))
}

/// The declaration of `[section] key`.
pub fn key(section: &str, key: &str) -> Option<&'static Key> {
    SECTIONS.iter().find(|s| s.name == section)?.key(key)
}

/// `packaging/calltap.ini` as the declarations make it: every key with its default and help.
pub fn ini_template() -> String {
    let comment = |out: &mut String, text: &str| {
        for line in text.lines() {
            out.push(';');
            if !line.is_empty() {
                out.push(' ');
                out.push_str(line);
            }
            out.push('\n');
        }
    };
    let mut out = String::new();
    comment(&mut out, INI_HEADER);
    for s in SECTIONS {
        out.push_str(&format!("\n[{}]\n", s.name));
        comment(&mut out, s.help);
        for k in s.keys {
            comment(&mut out, k.help);
            out.push_str(k.name);
            out.push_str(" =");
            if !k.default.is_empty() {
                out.push(' ');
                out.push_str(k.default);
            }
            out.push('\n');
        }
    }
    out
}

/// Where the man page's list of keys (written by [`man_keys`]) starts and ends.
pub const MAN_KEYS_BEGIN: &str =
    ".\\\" Keys: from the declarations (see config.rs), do not edit by hand.\n";
pub const MAN_KEYS_END: &str = ".\\\" End of keys.\n";

/// The man page's list of keys (roff): each key's section, type and default, and whether a
/// reload applies it.
pub fn man_keys() -> String {
    let roff = |s: &str| s.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::from(
        ".SS Keys\nEach key with its type and default;\n.I reload\nmarks the keys a reload \
         applies without a restart.\n",
    );
    for (s, k) in keys() {
        let default = if k.default.is_empty() {
            "empty".to_string()
        } else {
            format!("\\fB{}\\fR", roff(k.default))
        };
        out.push_str(&format!(
            ".TP\n.BR [{}] \" {}\"\n{}, default {default}{}\n",
            s.name,
            roff(k.name),
            roff(&k.kind.name()),
            if k.live { ", \\fIreload\\fR" } else { "" }
        ));
    }
    out
}

/// The whole configuration: one part per section, each owned by the layer that reads it.
#[derive(Clone, Debug)]
pub struct Config {
    pub capture: CaptureConfig,
    pub storage: StorageConfig,
    pub calls: CallsConfig,
    pub reassembly: ReassemblyLimits,
    pub recording: RecordingConfig,
    pub database: DatabaseConfig,
    pub archive: ArchiveSettings,
    pub retention: RetentionConfig,
    pub api: ApiConfig,
    pub webhooks: WebhooksConfig,
    pub console: ConsoleSettings,
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
        let mut values = Values::defaults(SECTIONS.iter().copied());
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
                    if !values.knows(&section, &key) {
                        return Err(ConfigError::UnknownKey {
                            origin,
                            section,
                            key,
                        });
                    }
                    values.set(&section, &key, value.to_string(), origin.clone());
                }
            }
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("CALLTAP_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            for (s, k) in keys() {
                if rest == format!("{}_{}", s.name, k.name) {
                    values.set(s.name, k.name, value.clone(), format!("environment {name}"));
                }
            }
        }
        let config = Self::from_values(&values)?;
        Ok((config, values.resolved()))
    }

    fn from_values(v: &Values) -> Result<Config, ConfigError> {
        Ok(Config {
            capture: CaptureConfig::from_values(v)?,
            storage: StorageConfig::from_values(v)?,
            database: DatabaseConfig::from_values(v)?,
            archive: ArchiveSettings::from_values(v)?,
            retention: RetentionConfig::from_values(v)?,
            api: ApiConfig::from_values(v)?,
            webhooks: WebhooksConfig::from_values(v)?,
            console: ConsoleSettings::from_values(v)?,
            calls: CallsConfig::from_values(v)?,
            reassembly: ReassemblyLimits::from_values(v)?,
            recording: RecordingConfig::from_values(v)?,
        })
    }

    /// What the API reads of the configuration.
    pub fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            storage: self.storage.clone(),
            database: self.database.clone(),
            archive: self.archive.clone(),
            recording_default: self.recording.default,
        }
    }

    /// The CDR database URL: the configured one, or SQLite `calltap.db` in the data dir
    /// (resolved late because `--data-dir` overrides the configured directory).
    pub fn database_url(&self) -> String {
        self.database.url_in(&self.storage.data_dir)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use calltap_common::drop_mode;
    use calltap_net::{ipfrag::ReassemblyConfig, tcp::TcpConfig};

    use super::*;
    use crate::{capture::config::SourceKind, publish::webhook::parse_http_url};

    #[test]
    fn defaults_load_without_a_file() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.capture.sip_ports, vec![5060, 5080]);
        assert_eq!(c.capture.source, SourceKind::Auto);
        assert_eq!(
            c.capture.drop_after_capture, None,
            "auto: decided per interface"
        );
        assert_eq!(c.capture.xdp().drop_after_capture, drop_mode::PER_INTERFACE);
    }

    #[test]
    fn drop_after_capture_is_true_false_or_auto() {
        let load = |v: &str| {
            let env = [(
                "CALLTAP_CAPTURE_DROP_AFTER_CAPTURE".to_string(),
                v.to_string(),
            )];
            Config::load_with_env(None, &env).map(|c| c.capture.drop_after_capture)
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
            (c.calls.max_calls, c.calls.max_unanswered_calls),
            (tracker.max_calls, tracker.max_unanswered_calls)
        );
        assert_eq!(c.reassembly.tcp, TcpConfig::default());
        assert_eq!(c.reassembly.ipfrag, ReassemblyConfig::default());
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::load_with_env(None, &env("CALLTAP_REASSEMBLY_TCP_MAX_SEGMENTS", "99"))
            .expect("set");
        assert_eq!(c.reassembly.tcp.max_total_segments, 99);
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
        let keys: Vec<(String, String, String)> = keys()
            .map(|(s, k)| {
                (
                    s.name.to_string(),
                    k.name.to_string(),
                    k.default.to_string(),
                )
            })
            .collect();
        assert_eq!(shipped, keys);
    }

    /// Rewrites `path` with `want` when `CALLTAP_BLESS` is set; else they must be equal.
    fn derived(path: &str, want: &str) {
        if std::env::var_os("CALLTAP_BLESS").is_some() {
            std::fs::write(path, want).expect("write");
        }
        let text = std::fs::read_to_string(path).expect("read");
        if text != want {
            let line = text
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(text.lines().count().min(want.lines().count()));
            panic!(
                "{path} differs from the key declarations from line {} (CALLTAP_BLESS=1 cargo \
                 test -p calltap --lib config rewrites it):\n{want}",
                line + 1
            );
        }
    }

    /// packaging/calltap.ini is what the declarations make: keys, defaults, comments.
    #[test]
    fn shipped_ini_is_written_from_the_declarations() {
        derived(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/calltap.ini"),
            &ini_template(),
        );
    }

    /// The man page's list of keys is what the declarations make.
    #[test]
    fn man_page_lists_the_declared_keys() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/calltap.1");
        let text = std::fs::read_to_string(path).expect("calltap.1");
        let (start, end) = (MAN_KEYS_BEGIN, MAN_KEYS_END);
        let (head, rest) = text.split_once(start).expect("the key list's start marker");
        let (_, tail) = rest.split_once(end).expect("the key list's end marker");
        derived(path, &format!("{head}{start}{}{end}{tail}", man_keys()));
    }

    /// A reload applies exactly the keys declared live.
    #[test]
    fn live_keys_are_the_declared_ones() {
        let live: Vec<String> = keys()
            .filter(|(_, k)| k.live)
            .map(|(s, k)| format!("{}.{}", s.name, k.name))
            .collect();
        assert_eq!(
            live,
            [
                "capture.sip_ports",
                "storage.path_template",
                "storage.flush_interval_ms",
                "calls.media_timeout_s",
                "calls.max_duration_s",
                "calls.unanswered_timeout_s",
                "calls.max_calls",
                "calls.max_unanswered_calls",
                "recording.default"
            ]
        );
        assert!(crate::reload::is_live("calls", "max_calls"));
        assert!(!crate::reload::is_live("capture", "workers"));
    }

    #[test]
    fn api_tls_takes_both_files_or_neither() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.api.tls, None);
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
            c.api.tls,
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
        assert_eq!(c.capture.sip_ports, vec![5060, 6060]);
        assert_eq!(c.storage.data_dir, PathBuf::from("/tmp/x"));
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
        assert_eq!(c.database.retry_interval_ms, 2000);
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
        use crate::rules::RuleAction;
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.recording.default, RuleAction::Record);
        let env = |v: &str| vec![("CALLTAP_RECORDING_DEFAULT".to_string(), v.to_string())];
        let c = Config::load_with_env(None, &env("on_demand")).expect("on_demand");
        assert_eq!(c.recording.default, RuleAction::OnDemand);
        let e = Config::load_with_env(None, &env("never")).expect_err("bad mode");
        assert!(e.to_string().contains("record, skip or on_demand"), "{e}");
    }

    #[test]
    fn webhook_and_console_keys_are_validated() {
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.webhooks.url, None);
        assert_eq!(
            (c.webhooks.timeout_ms, c.webhooks.max_backoff_ms),
            (5000, 60000)
        );
        assert_eq!(c.console.listen.as_deref(), Some("127.0.0.1:5023"));
        assert_eq!(c.console.password, None);
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
            c.webhooks.url.as_deref(),
            Some("http://127.0.0.1:9000/hooks")
        );
        assert_eq!(c.webhooks.secret, "s3cret");
        assert_eq!(c.console.listen, None);
        assert_eq!(c.console.password.as_deref(), Some("pw"));
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

    /// Without a password the console must stay on loopback: check-config names the key.
    #[test]
    fn a_console_off_loopback_needs_a_password() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for addr in ["0.0.0.0:5023", "192.0.2.7:5023", "[::]:5023"] {
            let err = Config::load_with_env(None, &env(&[("CALLTAP_CONSOLE_LISTEN", addr)]))
                .expect_err("refused");
            let text = err.to_string();
            assert!(
                matches!(&err, ConfigError::Value { section, key, .. } if section == "console" && key == "listen"),
                "{text}"
            );
            assert!(
                text.contains("[console] listen") && text.contains("password"),
                "{text}"
            );
        }
        for (addr, pw) in [
            ("0.0.0.0:5023", "pw"),
            ("[::1]:5023", ""),
            ("127.0.0.2:1", ""),
        ] {
            let c = Config::load_with_env(
                None,
                &env(&[
                    ("CALLTAP_CONSOLE_LISTEN", addr),
                    ("CALLTAP_CONSOLE_PASSWORD", pw),
                ]),
            )
            .expect("accepted");
            assert_eq!(c.console.listen.as_deref(), Some(addr));
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
        assert_eq!(c.webhooks.ca_file.as_deref(), Some(cert.as_path()));
        assert_eq!(c.webhooks.url.as_deref(), Some("https://h/"));
    }

    #[test]
    fn ini_file_unknown_key_is_an_error() {
        let path = std::env::temp_dir().join(format!("calltap-cfg-{}.ini", std::process::id()));
        std::fs::write(&path, "[capture]\nworkerz = 2\n").expect("write");
        let err = Config::load_with_env(Some(&path), &[]).expect_err("unknown");
        assert!(err.to_string().contains("workerz"));
        std::fs::write(&path, "[capture]\nworkers = 2\nsip_ports = 5060\n").expect("write");
        let c = Config::load_with_env(Some(&path), &[]).expect("ok");
        assert_eq!(
            (c.capture.workers, c.capture.sip_ports.clone()),
            (2, vec![5060])
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn archive_and_retention_keys_parse_and_reject_with_clear_errors() {
        use crate::store::archive::target::TargetSpec;
        let c = Config::load_with_env(None, &[]).expect("defaults");
        assert_eq!(c.archive.target, TargetSpec::Spool);
        assert_eq!(c.archive.retry_interval_ms, 5000);
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
            c.archive.target,
            TargetSpec::S3 {
                bucket: "calls".into(),
                prefix: "site-a".into()
            }
        );
        assert_eq!(
            c.archive.s3.endpoint.as_deref(),
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
