//! The publish part: webhooks, `/metrics`, the REST API and the telnet console.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{capture::Capture, control::ControlPlane, store::Store};
use crate::{
    capture::InputFill,
    config::Config,
    publish::{
        api,
        console::{AuditHook, Console, ConsoleBackend, ConsoleConfig, LoginLimits, TokenCheck},
        http::{self, HttpServer},
        live::{LiveCalls, LiveEvent},
        metrics::{LiveStats, Metrics},
        tls,
        webhook::{WebhookConfig, Webhooks},
    },
    reload::Reloader,
    store::{spool::Capacity, writer::CdrWriter},
};

/// What the publish part reports on and acts through.
pub struct PublishParts<'a> {
    pub cfg: &'a Config,
    pub capture: &'a Capture,
    /// How full each worker's input is.
    pub fills: Vec<(String, InputFill)>,
    pub live: &'a Arc<LiveStats>,
    pub capacity: &'a Capacity,
    pub store: &'a Store,
    pub webhooks: &'a Option<Webhooks>,
    pub control: &'a ControlPlane,
    pub workers: u32,
}

/// `/metrics`, the REST API (one HTTP server) and the telnet console.
pub struct Publish {
    pub metrics: Arc<Metrics>,
    http: Option<HttpServer>,
    console: Option<Console>,
}

impl Publish {
    /// Started before the ready file, so a watcher can scrape at once.
    pub fn start(parts: PublishParts<'_>) -> anyhow::Result<Publish> {
        let PublishParts {
            cfg,
            capture,
            fills,
            live,
            capacity,
            store,
            webhooks,
            control,
            workers,
        } = parts;
        let writer = &store.writer;
        let metrics = Arc::new(Metrics::new(
            capture.metrics_counters(),
            live.clone(),
            Some(writer.counters()),
        )?);
        let source = &capture.source;
        for a in &capture.attachments {
            metrics.set_capture_info(source, a.mode);
            metrics.set_interface_info(&a.interface, a.mode, a.after.after_capture.as_str());
        }
        metrics.set_inputs(fills);
        metrics.set_spool(cfg.storage.recordings_dir());
        metrics.set_capacity(capacity);
        metrics.set_archive(store.archiver.counters());
        // Without webhooks configured the series stay at zero, so dashboards show "none" rather
        // than "no data".
        metrics.set_webhooks(
            webhooks
                .as_ref()
                .map(Webhooks::counters)
                .unwrap_or_default(),
        );
        let mut tokens = None;
        let mut audit = None;
        let http = match &cfg.api.listen {
            Some(addr) => {
                let api = api::ApiState::connecting(&cfg.api_settings(), Some(writer.counters()));
                api.set_capture(api::CaptureInfo {
                    source: source.clone(),
                    interfaces: cfg.capture.interfaces.clone(),
                });
                api.set_live(control.live_calls.clone());
                api.set_metrics(metrics.clone());
                api.set_rules(control.rules.clone());
                if let Some(r) = &control.reloader {
                    api.set_reloader(r.clone());
                }
                let app = http::track_requests(
                    http::router(metrics.clone()).merge(api::router(api.clone())),
                    metrics.clone(),
                );
                let tls = match &cfg.api.tls {
                    Some((cert, key)) => Some(tls::server_config(cert, key)?),
                    None => None,
                };
                let scheme = if tls.is_some() { "https" } else { "http" };
                let server = HttpServer::start_with(addr, app, tls)?;
                tokens = Some(token_check(api.clone(), server.handle().clone()));
                audit = Some(audit_hook(api, server.handle().clone()));
                log::info!(
                    "API at {scheme}://{0}/api/v1, metrics at {scheme}://{0}/metrics",
                    server.addr
                );
                Some(server)
            }
            None => None,
        };
        let console = start_console(ConsoleParts {
            cfg,
            live_calls: &control.live_calls,
            metrics: &metrics,
            writer,
            webhooks,
            source,
            workers,
            reloader: control.reloader.clone(),
            tokens,
            audit,
        });
        if let Some(c) = &console {
            metrics.set_console(c.counters());
        }
        Ok(Publish {
            metrics,
            http,
            console,
        })
    }

    /// The console first, then every `call.ended` handed over (a last bounded delivery, the
    /// rest stays queued on disk), then the HTTP server.
    pub fn stop(self, webhooks: Option<Webhooks>) {
        drop(self.console);
        if let Some(w) = webhooks {
            w.finish();
        }
        drop(self.http);
    }
}

/// Webhooks: `call.started`/`call.answered` from the live-call registry (signalling thread),
/// `call.ended` from the CDR thread, `recording.archived` from the archiver.
pub fn start_webhooks(cfg: &Config, live_calls: &LiveCalls) -> anyhow::Result<Option<Webhooks>> {
    let Some(wc) = WebhookConfig::new(&cfg.webhooks) else {
        return Ok(None);
    };
    let webhooks = Webhooks::start(wc, &cfg.storage.data_dir.join("webhooks.queue"))?;
    if let Some(hooks) = webhooks.sender() {
        live_calls.set_listener(move |e| match e {
            LiveEvent::Started(c) => hooks.call_started(c),
            LiveEvent::Answered(c) => hooks.call_answered(c),
            LiveEvent::Evicted(c, at_ns) => hooks.call_evicted(c, at_ns),
        });
    }
    Ok(Some(webhooks))
}

/// What the console reports on and acts through.
struct ConsoleParts<'a> {
    cfg: &'a Config,
    live_calls: &'a Arc<LiveCalls>,
    metrics: &'a Arc<Metrics>,
    writer: &'a CdrWriter,
    webhooks: &'a Option<Webhooks>,
    source: &'a str,
    workers: u32,
    reloader: Option<Arc<Reloader>>,
    tokens: Option<TokenCheck>,
    audit: Option<AuditHook>,
}

/// Bound on the console's wait for a token check (the database may be slow or away).
const TOKEN_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The console's `login TOKEN`: the API's own check ([`api::auth::authenticate`]) run on the
/// HTTP server's runtime, whose database connections it uses.
fn token_check(api: api::ApiState, rt: tokio::runtime::Handle) -> TokenCheck {
    Box::new(move |token| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (api, token) = (api.clone(), token.to_string());
        rt.spawn(async move {
            let _ = tx.send(api::auth::authenticate(&api, &token).await);
        });
        rx.recv_timeout(TOKEN_CHECK_TIMEOUT).unwrap_or_else(|_| {
            Err(api::errors::ApiError::Unavailable(
                "the token store did not answer in time".into(),
            ))
        })
    })
}

/// The console's audit rows, written on the HTTP server's runtime (whose database connections
/// they use) by [`api::audit::record`], bounded, a failure logged and counted there. The
/// console does not wait: its `record` command has taken effect already.
fn audit_hook(api: api::ApiState, rt: tokio::runtime::Handle) -> AuditHook {
    Box::new(move |entry| {
        let api = api.clone();
        rt.spawn(async move {
            api::audit::record(&api, entry).await;
        });
    })
}

/// The telnet console on `[console] listen`; the daemon runs on without it when the address is
/// taken (it is a troubleshooting aid, not worth refusing to record over).
fn start_console(parts: ConsoleParts<'_>) -> Option<Console> {
    let ConsoleParts {
        cfg,
        live_calls,
        metrics,
        writer,
        webhooks,
        source,
        workers,
        reloader,
        tokens,
        audit,
    } = parts;
    let listen = cfg.console.listen.clone()?;
    let started = Instant::now();
    let (live, store, ifs, data_dir) = (
        live_calls.clone(),
        writer.counters(),
        cfg.capture.interfaces.join(","),
        cfg.storage.data_dir.display().to_string(),
    );
    let source = source.to_string();
    let status = move || {
        format!(
            "calltap {}, up {} s\ncapture {source} on {ifs}, {workers} media workers\nactive calls {}\ndata dir {data_dir}\ncdr store {}\n",
            env!("CARGO_PKG_VERSION"),
            started.elapsed().as_secs(),
            live.len(),
            serde_json::to_string(&store.snapshot()).unwrap_or_default(),
        )
    };
    let (m, hooks) = (metrics.clone(), webhooks.as_ref().map(Webhooks::counters));
    let stats = move || {
        let mut out: String = m
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some(h) = &hooks {
            let s = h.snapshot();
            out.push_str(&format!(
                "webhooks queued {} delivered {} failures {} retries {} pending {} dropped {}\n",
                s.queued, s.delivered, s.failures, s.retries, s.pending, s.dropped
            ));
        }
        out
    };
    let backend = ConsoleBackend {
        status: Box::new(status),
        stats: Box::new(stats),
        reload: Box::new(move || match &reloader {
            Some(r) => match r.reload() {
                Ok(report) => {
                    log::info!("console: configuration reloaded: {report}");
                    format!("reload: {report}\n")
                }
                Err(e) => format!("reload: {e}\n"),
            },
            None => "reload: this run has no configuration source to reload\n".to_string(),
        }),
        tokens,
        audit,
    };
    let cfg = ConsoleConfig {
        listen,
        password: cfg.console.password.clone(),
        idle: crate::publish::console::IDLE,
        limits: LoginLimits::default(),
    };
    match Console::start(cfg, live_calls.clone(), backend) {
        Ok(c) => {
            log::info!("console at telnet://{}", c.addr);
            Some(c)
        }
        Err(e) => {
            log::warn!("{e}; running without the console");
            None
        }
    }
}
