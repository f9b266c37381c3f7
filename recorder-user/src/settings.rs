//! Configuration keys: how a key is declared, read and checked.
//!
//! Each part of CallTap declares the INI sections it reads next to the code that uses them
//! (`capture::config`, `pipeline::config`, `rules::config`, `store::config`, `publish::config`):
//! every key once, with its type, default, whether a reload applies it, and its help text.
//! the daemon's `Config` only composes those sections; `packaging/calltap.ini`, the man
//! page, `calltap check-config --keys` and the reload's list of live keys all come from (or are
//! tested against) the declarations. This module knows no section: it is below all of them.

use std::collections::BTreeMap;

use serde::Serialize;

/// What a key holds, as `check-config --keys` and the man page name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// `true`, `false` or `auto`.
    AutoBool,
    Number,
    Text,
    /// Comma-separated values.
    List,
    /// `IP:PORT`, empty for none.
    Address,
    Path,
    Url,
    /// A password or key: never printed.
    Secret,
    /// One of the words listed.
    Choice(&'static [&'static str]),
}

impl Kind {
    pub fn name(self) -> String {
        match self {
            Kind::Bool => "bool".into(),
            Kind::AutoBool => "true|false|auto".into(),
            Kind::Number => "number".into(),
            Kind::Text => "text".into(),
            Kind::List => "list".into(),
            Kind::Address => "IP:PORT".into(),
            Kind::Path => "path".into(),
            Kind::Url => "URL".into(),
            Kind::Secret => "secret".into(),
            Kind::Choice(words) => words.join("|"),
        }
    }
}

/// One configuration key.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    /// A reload applies a change of it without a restart.
    pub live: bool,
    /// What it does: the comment above it in `packaging/calltap.ini`, line by line (empty:
    /// the comment of the key before covers it too).
    pub help: &'static str,
}

/// One INI section, declared by the part of CallTap that reads it.
#[derive(Debug)]
pub struct Section {
    pub name: &'static str,
    /// The comment under the section's header in `packaging/calltap.ini` (may be empty).
    pub help: &'static str,
    pub keys: &'static [Key],
}

impl Section {
    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

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
    /// exist or does not hold what it should, a path template that would lose the uuid).
    #[error("{origin}: [{section}] {key} = {value:?}: {reason}")]
    Unusable {
        origin: String,
        section: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{origin}: unknown key [{section}] {key} (known keys: see packaging/calltap.ini)")]
    UnknownKey {
        origin: String,
        section: String,
        key: String,
    },
}

/// Every key's effective value by (section, key), after file and environment.
pub type Resolved = BTreeMap<(String, String), String>;

/// Every key's value as written, and where it came from (for error messages): the defaults,
/// overlaid by the file, then the environment.
pub struct Values {
    values: BTreeMap<(String, String), (String, String)>,
}

impl Values {
    /// The defaults of every key of `sections`.
    pub fn defaults<'a>(sections: impl IntoIterator<Item = &'a Section>) -> Values {
        let mut values = BTreeMap::new();
        for s in sections {
            for k in s.keys {
                let v = (k.default.to_string(), "default".to_string());
                values.insert((s.name.to_string(), k.name.to_string()), v);
            }
        }
        Values { values }
    }

    /// Whether `[section] key` is declared.
    pub fn knows(&self, section: &str, key: &str) -> bool {
        self.values
            .contains_key(&(section.to_string(), key.to_string()))
    }

    pub fn set(&mut self, section: &str, key: &str, value: String, origin: String) {
        self.values
            .insert((section.to_string(), key.to_string()), (value, origin));
    }

    /// The value as written and its origin (a file, an environment variable, `default`).
    pub fn get(&self, section: &str, key: &str) -> (&str, &str) {
        match self.values.get(&(section.to_string(), key.to_string())) {
            Some((v, origin)) => (v.as_str(), origin.as_str()),
            None => ("", "default"),
        }
    }

    /// The value trimmed, `None` when empty.
    pub fn optional(&self, section: &str, key: &str) -> Option<String> {
        Some(self.get(section, key).0.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// `value` of `[section] key` is not what it should be.
    pub fn bad(
        &self,
        section: &str,
        key: &str,
        value: &str,
        expected: &'static str,
    ) -> ConfigError {
        ConfigError::Value {
            origin: self.get(section, key).1.to_string(),
            section: section.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            expected,
        }
    }

    /// As [`Values::bad`], with the value as written.
    pub fn invalid(&self, section: &str, key: &str, expected: &'static str) -> ConfigError {
        self.bad(section, key, self.get(section, key).0, expected)
    }

    /// `value` of `[section] key` has the right form but cannot be used, for `reason`.
    pub fn unusable(&self, section: &str, key: &str, value: &str, reason: String) -> ConfigError {
        ConfigError::Unusable {
            origin: self.get(section, key).1.to_string(),
            section: section.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            reason,
        }
    }

    pub fn bool(&self, section: &str, key: &str) -> Result<bool, ConfigError> {
        let (v, _) = self.get(section, key);
        match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(self.bad(section, key, v, "true or false")),
        }
    }

    /// A boolean that may also be left to CallTap: `auto` or empty is `None`.
    pub fn auto_bool(&self, section: &str, key: &str) -> Result<Option<bool>, ConfigError> {
        let (v, _) = self.get(section, key);
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            _ => self
                .bool(section, key)
                .map(Some)
                .map_err(|_| self.bad(section, key, v, "true, false or auto")),
        }
    }

    pub fn num<T: std::str::FromStr>(
        &self,
        section: &str,
        key: &str,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let (v, _) = self.get(section, key);
        v.trim()
            .parse()
            .map_err(|_| self.bad(section, key, v, expected))
    }

    /// A count or size that must be at least 1.
    pub fn positive(&self, section: &str, key: &str) -> Result<usize, ConfigError> {
        let n: usize = self.num(section, key, "a whole number, at least 1")?;
        if n == 0 {
            return Err(self.invalid(section, key, "a whole number, at least 1"));
        }
        Ok(n)
    }

    /// `[section] listen`: an IP:PORT to bind, or empty for none.
    pub fn listen(
        &self,
        section: &str,
        expected: &'static str,
    ) -> Result<Option<String>, ConfigError> {
        let (v, _) = self.get(section, "listen");
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        match v.parse::<std::net::SocketAddr>() {
            Ok(_) => Ok(Some(v.to_string())),
            Err(_) => Err(self.bad(section, "listen", v, expected)),
        }
    }

    /// The values without their origins.
    pub fn resolved(self) -> Resolved {
        self.values
            .into_iter()
            .map(|(k, (v, _origin))| (k, v))
            .collect()
    }
}

/// What a reload did, by `section.key`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Changed keys now in effect.
    pub applied: Vec<String>,
    /// Changed keys that take effect only after a restart (reported again on every reload
    /// until then).
    pub needs_restart: Vec<String>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "applied: {}; needs a restart: {}",
            list(&self.applied),
            list(&self.needs_restart)
        )
    }
}
