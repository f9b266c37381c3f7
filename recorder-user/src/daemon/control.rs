//! The control plane's part: the registry of calls in progress (API, console, webhooks), the
//! recording rules in force, and the configuration reload that reaches the workers.

use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::signalling::SignallingSettings;
use crate::{
    config::{Config, Resolved},
    pipeline::{media::MediaConfig, Control},
    publish::live::LiveCalls,
    reload::{Change, Reloader},
    rules::LiveRules,
};

/// How `calltap run` re-reads its configuration on SIGHUP, `POST /api/v1/reload` and the
/// console's `reload`.
pub struct ReloadSource {
    pub file: Option<std::path::PathBuf>,
    /// Every key's value at start ([`Config::resolve`]).
    pub running: Resolved,
    /// (section, key) set on the command line, which a file change cannot override.
    pub cli_keys: Vec<(&'static str, &'static str)>,
    /// Re-applies the command line to a freshly loaded configuration.
    pub overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
}

pub struct ControlPlane {
    /// Active calls, fed by the signalling worker's control messages.
    pub live_calls: Arc<LiveCalls>,
    /// The default mode until the database hands over the rules; the API replaces them after
    /// each change.
    pub rules: Arc<LiveRules>,
    pub reloader: Option<Arc<Reloader>>,
    /// The reloader's way to the workers; emptied at shutdown, since the workers stop only
    /// when every sender of their control queue is gone.
    reload_targets: Arc<Mutex<Vec<Sender<Control>>>>,
}

impl ControlPlane {
    /// Over the media workers' control queues `control`; a reload (from `reload`) re-reads
    /// the configuration and hands what changed to the workers, and to signalling through the
    /// returned receiver.
    pub fn new(
        control: &[Sender<Control>],
        rules: Arc<LiveRules>,
        reload: Option<ReloadSource>,
    ) -> (ControlPlane, Receiver<SignallingSettings>) {
        let live_calls = LiveCalls::new(control.to_vec());
        let (settings_tx, settings_rx) = bounded::<SignallingSettings>(16);
        let reload_targets = Arc::new(Mutex::new(control.to_vec()));
        let reloader = reload.map(|r| {
            let workers_ctl = reload_targets.clone();
            let reload_rules = rules.clone();
            let overrides = r.overrides;
            Arc::new(Reloader::new(
                r.file,
                r.running,
                &r.cli_keys,
                move |c| overrides(c),
                move |change: &Change<'_>| {
                    let c: &Config = change.config;
                    let media = MediaConfig::new(&c.storage, &c.calls, c.capture.worker_count());
                    for tx in workers_ctl.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                        let _ = tx.send(Control::Settings(Box::new(media.clone())));
                    }
                    let _ = settings_tx.send((c.calls.tracker(), change.added_sip_ports.to_vec()));
                    reload_rules.set_default(c.recording.default);
                },
            ))
        });
        let plane = ControlPlane {
            live_calls,
            rules,
            reloader,
            reload_targets,
        };
        (plane, settings_rx)
    }

    /// Stopping: the API and console take no more control, and the reloader lets go of the
    /// workers' queues.
    pub fn close(&self) {
        self.live_calls.close();
        self.reload_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
