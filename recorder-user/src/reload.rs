//! Live configuration reload: SIGHUP, `POST /api/v1/reload` and the console's `reload` all come
//! here. The file and the environment are read again and validated in full first, so a broken
//! file changes nothing. Each key whose value changed is then either applied to the running
//! daemon or reported as needing a restart. Active calls are never dropped: new values apply to
//! what comes next (a new path template to calls that start after the reload, new timeouts at
//! the next check).

use std::{
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

pub use crate::settings::ReloadReport;
use crate::{
    config::{self, Config, ConfigError, Resolved},
    publish::api::Reload,
};

/// Whether a running daemon takes a change of `[section] key` without a restart: the key's
/// declaration says so (`live`). Call limits apply from the next INVITE (calls already
/// followed stay); SIP ports can be added live (the classifier learns them), removing one needs
/// a restart; calls that start after the reload get the new `[recording] default` (rules
/// themselves change live through the API).
pub fn is_live(section: &str, key: &str) -> bool {
    config::key(section, key).is_some_and(|k| k.live)
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid; nothing was changed.
    #[error("configuration not reloaded, nothing changed: {0}")]
    Config(#[from] ConfigError),
}

/// The changes a reload hands to the running daemon.
pub struct Change<'a> {
    /// The whole new configuration (command-line overrides re-applied).
    pub config: &'a Config,
    /// The live keys whose value changed.
    pub keys: &'a [(String, String)],
    /// SIP ports to start recognising.
    pub added_sip_ports: &'a [u16],
}

type Apply = Box<dyn Fn(&Change<'_>) + Send + Sync>;
type Overrides = Box<dyn Fn(&mut Config) + Send + Sync>;

/// Re-reads the configuration on demand and applies what can change live.
pub struct Reloader {
    file: Option<PathBuf>,
    /// Keys set on the command line: they win over the file, so changing them there changes
    /// nothing, now or after a restart.
    cli_keys: Vec<(String, String)>,
    overrides: Overrides,
    apply: Apply,
    /// The effective values the daemon runs with (restart-only keys keep their old value).
    running: Mutex<Resolved>,
}

fn key_name((s, k): &(String, String)) -> String {
    format!("{s}.{k}")
}

fn ports(v: Option<&String>) -> Vec<u16> {
    v.map(|v| {
        v.split([',', ' '])
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

impl Reloader {
    /// `running` is what [`Config::resolve`] returned at start; `overrides` re-applies the
    /// command line to a freshly loaded configuration; `apply` hands live changes to the
    /// daemon's threads and must not block.
    pub fn new(
        file: Option<PathBuf>,
        running: Resolved,
        cli_keys: &[(&str, &str)],
        overrides: impl Fn(&mut Config) + Send + Sync + 'static,
        apply: impl Fn(&Change<'_>) + Send + Sync + 'static,
    ) -> Reloader {
        Reloader {
            file,
            cli_keys: cli_keys
                .iter()
                .map(|(s, k)| (s.to_string(), k.to_string()))
                .collect(),
            overrides: Box::new(overrides),
            apply: Box::new(apply),
            running: Mutex::new(running),
        }
    }

    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let (mut config, new) = Config::resolve(self.file.as_deref(), &env)?;
        (self.overrides)(&mut config);
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report = ReloadReport::default();
        let mut live = Vec::new();
        let mut added_sip_ports = Vec::new();
        for (key, value) in &new {
            if running.get(key) == Some(value) || self.cli_keys.contains(key) {
                continue;
            }
            let is_live = is_live(&key.0, &key.1);
            if key.0 == "capture" && key.1 == "sip_ports" {
                let old = ports(running.get(key));
                let now = ports(Some(value));
                added_sip_ports = now.iter().copied().filter(|p| !old.contains(p)).collect();
                if old.iter().any(|p| !now.contains(p)) {
                    // Additions apply now; the removals wait for a restart.
                    report.needs_restart.push(key_name(key));
                    if !added_sip_ports.is_empty() {
                        report
                            .applied
                            .push(format!("{} (added ports)", key_name(key)));
                        let mut kept = old;
                        kept.extend(&added_sip_ports);
                        let kept = kept.iter().map(u16::to_string).collect::<Vec<_>>();
                        running.insert(key.clone(), kept.join(","));
                    }
                    continue;
                }
            }
            if is_live {
                report.applied.push(key_name(key));
                live.push(key.clone());
                running.insert(key.clone(), value.clone());
            } else {
                report.needs_restart.push(key_name(key));
            }
        }
        if !live.is_empty() || !added_sip_ports.is_empty() {
            (self.apply)(&Change {
                config: &config,
                keys: &live,
                added_sip_ports: &added_sip_ports,
            });
        }
        Ok(report)
    }
}

/// `POST /api/v1/reload`.
impl Reload for Reloader {
    fn reload(&self) -> Result<ReloadReport, String> {
        Reloader::reload(self).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// What the daemon side saw: (media timeout, path template, added ports) per apply.
    type Seen = Arc<Mutex<Vec<(u64, String, Vec<u16>)>>>;

    fn reloader(file: &std::path::Path, seen: &Seen) -> Reloader {
        let (_, running) = Config::resolve(Some(file), &[]).expect("valid start file");
        let seen = seen.clone();
        Reloader::new(
            Some(file.to_path_buf()),
            running,
            &[("capture", "interfaces")],
            |c| c.capture.workers = c.capture.workers.max(1),
            move |ch| {
                seen.lock().expect("seen").push((
                    ch.config.calls.media_timeout_s,
                    ch.config.storage.path_template.clone(),
                    ch.added_sip_ports.to_vec(),
                ))
            },
        )
    }

    #[test]
    fn live_keys_apply_and_the_rest_is_reported_until_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("calltap.ini");
        std::fs::write(
            &file,
            "[capture]\ninterfaces = eth1\nworkers = 2\n[calls]\nmedia_timeout_s = 300\n",
        )
        .expect("write");
        let seen: Seen = Arc::default();
        let r = reloader(&file, &seen);
        assert_eq!(r.reload().expect("same file"), ReloadReport::default());
        assert!(seen.lock().expect("seen").is_empty(), "nothing changed");

        std::fs::write(
            &file,
            "[capture]\ninterfaces = eth2\nworkers = 4\n[calls]\nmedia_timeout_s = 60\n\
             [storage]\npath_template = {uuid}.wav\n",
        )
        .expect("write");
        let report = r.reload().expect("valid file");
        assert_eq!(
            report.applied,
            vec!["calls.media_timeout_s", "storage.path_template"]
        );
        // interfaces is set on the command line: a file change there is not a pending restart.
        assert_eq!(report.needs_restart, vec!["capture.workers"]);
        assert_eq!(
            seen.lock().expect("seen").as_slice(),
            &[(60, "{uuid}.wav".to_string(), vec![])]
        );

        // Still pending on the next reload; the applied keys are not applied twice.
        let report = r.reload().expect("again");
        assert!(report.applied.is_empty(), "{report}");
        assert_eq!(report.needs_restart, vec!["capture.workers"]);
        assert_eq!(seen.lock().expect("seen").len(), 1);
    }

    #[test]
    fn sip_ports_can_be_added_live_and_removals_wait_for_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("calltap.ini");
        std::fs::write(&file, "[capture]\nsip_ports = 5060,5080\n").expect("write");
        let seen: Seen = Arc::default();
        let r = reloader(&file, &seen);
        std::fs::write(&file, "[capture]\nsip_ports = 5060,5080,6060\n").expect("write");
        let report = r.reload().expect("added");
        assert_eq!(report.applied, vec!["capture.sip_ports"]);
        assert_eq!(seen.lock().expect("seen")[0].2, vec![6060]);
        std::fs::write(&file, "[capture]\nsip_ports = 5060,7070\n").expect("write");
        let report = r.reload().expect("removed and added");
        assert_eq!(report.applied, vec!["capture.sip_ports (added ports)"]);
        assert_eq!(report.needs_restart, vec!["capture.sip_ports"]);
        assert_eq!(seen.lock().expect("seen")[1].2, vec![7070]);
    }

    #[test]
    fn an_invalid_file_changes_nothing_and_says_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("calltap.ini");
        std::fs::write(&file, "[calls]\nmedia_timeout_s = 300\n").expect("write");
        let seen: Seen = Arc::default();
        let r = reloader(&file, &seen);
        std::fs::write(&file, "[calls]\nmedia_timeout_s = soon\n").expect("write");
        let err = r.reload().expect_err("invalid").to_string();
        assert!(
            err.contains("nothing changed") && err.contains("media_timeout_s"),
            "{err}"
        );
        assert!(seen.lock().expect("seen").is_empty());
        // Fixing the file afterwards applies normally.
        std::fs::write(&file, "[calls]\nmedia_timeout_s = 120\n").expect("write");
        assert_eq!(
            r.reload().expect("fixed").applied,
            vec!["calls.media_timeout_s"]
        );
    }
}
