//! `[api]`, `[webhooks]` and `[console]`: what CallTap serves and where it tells of calls.

use std::path::PathBuf;

use super::{tls::read_certs, webhook::parse_http_url};
use crate::settings::{ConfigError, Key, Kind, Section, Values};

/// `[api]`.
pub const API: Section = Section {
    name: "api",
    help: "",
    keys: &[
        Key {
            name: "listen",
            kind: Kind::Address,
            default: "127.0.0.1:8080",
            live: false,
            help: "Management HTTP server: Prometheus metrics at /metrics (and the REST API). IP:PORT; empty\n\
                  disables it. Keep it on loopback or a management network: /metrics needs no token.",
        },
        Key {
            name: "tls_cert",
            kind: Kind::Path,
            default: "",
            live: false,
            help: "HTTPS: a PEM certificate chain and its private key (PKCS#8, PKCS#1 or SEC1), both or neither.\n\
                  With them the server speaks only TLS (1.2 and 1.3, rustls); check-config reads both files.",
        },
        Key {
            name: "tls_key",
            kind: Kind::Path,
            default: "",
            live: false,
            help: "",
        },
    ],
};

/// `[webhooks]`.
pub const WEBHOOKS: Section = Section {
    name: "webhooks",
    help: "",
    keys: &[
        Key {
            name: "url",
            kind: Kind::Url,
            default: "",
            live: false,
            help: "Call events POSTed as JSON to this URL: call.started, call.answered, call.ended (with end\n\
                  reason, duration, recording path and recording control events) and recording.archived.\n\
                  http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH] (TLS 1.2/1.3, the receiver's\n\
                  certificate checked against the system's CAs and ca_file). Empty: no webhooks.\n\
                  Body {\"id\",\"type\",\"created\",\"data\"}; \"id\" is stable across retries (drop duplicates by it:\n\
                  delivery is at least once). Events wait in <data_dir>/webhooks.queue\n\
                  (fsync'd) until the receiver answers 2xx, also across restarts; capture never waits for them.",
        },
        Key {
            name: "secret",
            kind: Kind::Secret,
            default: "",
            live: false,
            help: "Key of the X-CallTap-Signature header: sha256=<hex HMAC-SHA256 of the body>. Required with url.",
        },
        Key {
            name: "timeout_ms",
            kind: Kind::Number,
            default: "5000",
            live: false,
            help: "Bound on one delivery attempt (connect, send, answer).",
        },
        Key {
            name: "max_backoff_ms",
            kind: Kind::Number,
            default: "60000",
            live: false,
            help: "Failed deliveries are retried after 200 ms, doubling per failure up to this pause.",
        },
        Key {
            name: "ca_file",
            kind: Kind::Path,
            default: "",
            live: false,
            help: "PEM file of CA certificates trusted for an https url besides the system's (a private CA,\n\
                  or the receiver's own self-signed certificate). check-config reads it.",
        },
    ],
};

/// `[console]`.
pub const CONSOLE: Section = Section {
    name: "console",
    help: "",
    keys: &[
        Key {
            name: "listen",
            kind: Kind::Address,
            default: "127.0.0.1:5023",
            live: false,
            help: "Telnet console for troubleshooting (`telnet 127.0.0.1 5023`): show status|calls|call ID|stats,\n\
                  record start|stop|pause|resume ID, reload, log level LEVEL, login [TOKEN], whoami, help,\n\
                  quit. IP:PORT; empty disables it. At most 4 sessions; idle sessions close after 5 minutes.\n\
                  Commands need the API's roles: show viewer, record operator, reload and log level admin.\n\
                  Without a password the console is read-only until `login TOKEN` (an API token, its role),\n\
                  and check-config refuses a listen address other than loopback.",
        },
        Key {
            name: "password",
            kind: Kind::Secret,
            default: "",
            live: false,
            help: "Password asked when a session starts (it grants admin; an API token may be typed instead).\n\
                  Three failed logins close a connection; 10 from one address in a minute refuse it for a\n\
                  minute; each failure is logged and counted in calltap_console_login_failures_total.\n\
                  Empty: no prompt, and the console is read-only until `login TOKEN`.",
        },
    ],
};

/// `[api]`.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Address of the management HTTP server (`/metrics`, REST API); None: no server.
    pub listen: Option<String>,
    /// PEM certificate chain and private key: the management server speaks only HTTPS then.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl ApiConfig {
    pub fn from_values(v: &Values) -> Result<ApiConfig, ConfigError> {
        let listen = v.listen(
            "api",
            "IP:PORT, e.g. 127.0.0.1:8080 (empty: no HTTP server)",
        )?;
        let (cert, _) = v.get("api", "tls_cert");
        let (key, _) = v.get("api", "tls_key");
        // Both (HTTPS) or neither (plain HTTP).
        let tls = match (cert.trim(), key.trim()) {
            ("", "") => None,
            ("", k) => {
                return Err(v.bad("api", "tls_key", k, "tls_cert as well (both or neither)"))
            }
            (c, "") => {
                return Err(v.bad("api", "tls_cert", c, "tls_key as well (both or neither)"))
            }
            (c, k) => Some((PathBuf::from(c), PathBuf::from(k))),
        };
        Ok(ApiConfig { listen, tls })
    }
}

/// `[webhooks]`.
#[derive(Clone, Debug)]
pub struct WebhooksConfig {
    /// Where call events are POSTed (`http[s]://HOST[:PORT]/PATH`); None: no webhooks.
    pub url: Option<String>,
    /// HMAC-SHA256 key of the `X-CallTap-Signature` header (required with a URL).
    pub secret: String,
    /// Bound on one delivery attempt (connect, send, answer).
    pub timeout_ms: u64,
    /// Longest pause between retries of an undelivered event (the backoff doubles up to it).
    pub max_backoff_ms: u64,
    /// PEM certificates trusted for an https URL besides the system's CAs (a private CA, or
    /// the receiver's own self-signed certificate).
    pub ca_file: Option<PathBuf>,
}

impl WebhooksConfig {
    pub fn from_values(v: &Values) -> Result<WebhooksConfig, ConfigError> {
        const S: &str = "webhooks";
        let (hook, _) = v.get(S, "url");
        let hook = hook.trim();
        if !hook.is_empty() && parse_http_url(hook).is_none() {
            return Err(v.bad(
                S,
                "url",
                hook,
                "http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH] (empty: no webhooks)",
            ));
        }
        let (secret, _) = v.get(S, "secret");
        if !hook.is_empty() && secret.is_empty() {
            return Err(v.bad(
                S,
                "secret",
                secret,
                "a secret to sign webhook bodies with (required when [webhooks] url is set)",
            ));
        }
        let (ca_file, _) = v.get(S, "ca_file");
        let ca_file = match ca_file.trim() {
            "" => None,
            f => {
                let path = PathBuf::from(f);
                if let Err(why) = read_certs(&path) {
                    let reason = format!("expected a readable PEM file of CA certificates: {why}");
                    return Err(v.unusable(S, "ca_file", f, reason));
                }
                Some(path)
            }
        };
        let timeout_ms: u64 = v.num(S, "timeout_ms", "milliseconds")?;
        let max_backoff_ms: u64 = v.num(S, "max_backoff_ms", "milliseconds")?;
        for (key, n, min, expected) in [
            ("timeout_ms", timeout_ms, 1, "at least 1 ms"),
            ("max_backoff_ms", max_backoff_ms, 100, "at least 100 ms"),
        ] {
            if n < min {
                return Err(v.invalid(S, key, expected));
            }
        }
        Ok(WebhooksConfig {
            url: Some(hook.to_string()).filter(|s| !s.is_empty()),
            secret: secret.to_string(),
            timeout_ms,
            max_backoff_ms,
            ca_file,
        })
    }
}

/// `[console]`.
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// Address of the telnet console; None: no console.
    pub listen: Option<String>,
    /// Password the console asks for; None: no prompt (keep it on loopback then).
    pub password: Option<String>,
}

impl ConsoleSettings {
    pub fn from_values(v: &Values) -> Result<ConsoleSettings, ConfigError> {
        let listen = v.listen(
            "console",
            "IP:PORT, e.g. 127.0.0.1:5023 (empty: no console)",
        )?;
        let (password, _) = v.get("console", "password");
        let password = Some(password.to_string()).filter(|s| !s.is_empty());
        // Without a password anyone who reaches the port gets a (read-only) session: only local
        // processes may.
        if let Some(addr) = &listen {
            let loopback = addr
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !loopback && password.is_none() {
                return Err(v.bad(
                    "console",
                    "listen",
                    addr,
                    "a loopback address (127.0.0.1:PORT or [::1]:PORT) while [console] password \
                     is empty; set a password to listen elsewhere",
                ));
            }
        }
        Ok(ConsoleSettings { listen, password })
    }
}
