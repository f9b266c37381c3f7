//! The capture part: XDP on the mirror interfaces (or AF_PACKET when XDP cannot attach), one
//! input per media worker and one for signalling, and the table signalling steers RTP with.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use anyhow::Context as _;

use super::input::{monotonic_to_realtime, Input};
use crate::{
    capture::{
        af_packet::AfPacketCapture,
        config::SourceKind,
        mirror_port::{self, InterfaceFacts},
        xdp::{XdpCapture, XdpCounters},
        Attachment, CaptureError, InputFill,
    },
    classify::{MediaTable, SharedMediaTable, UserTables},
    config::Config,
    publish::metrics::CaptureCounters,
};

/// The running capture source.
pub struct Capture {
    /// `xdp` or `af_packet`.
    pub source: String,
    /// Each interface: how it is attached, and what happens to a frame after capture.
    pub attachments: Vec<Attachment>,
    xdp: Option<XdpCapture>,
    af: Option<AfPacketCapture>,
    counters: Option<Arc<XdpCounters>>,
}

/// What capture hands the workers.
pub struct Inputs {
    pub media: Vec<Input>,
    pub signalling: Input,
    /// The kernel's media map when XDP captures, the shared userspace map otherwise.
    pub table: Box<dyn MediaTable>,
    /// How full each input is, for the metrics scrape: worker index or `signalling`.
    pub fills: Vec<(String, InputFill)>,
}

impl Capture {
    /// Attaches to `[capture] interfaces` for `workers` media workers; AF_PACKET capture
    /// threads stop when `stop` is set.
    pub fn start(
        cfg: &Config,
        workers: u32,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<(Capture, Inputs)> {
        let mut xdp = None;
        if matches!(cfg.capture.source, SourceKind::Auto | SourceKind::Xdp) {
            match attach_xdp(cfg) {
                Ok(x) => xdp = Some(x),
                Err(e) if cfg.capture.source == SourceKind::Auto => {
                    log::warn!("XDP capture unavailable ({e}); falling back to AF_PACKET");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (capture, media, signalling, table) = match xdp {
            Some(mut x) => {
                let offset = monotonic_to_realtime();
                let mut media = Vec::new();
                for i in 0..workers {
                    let ring = x
                        .take_media_ring(i)
                        .with_context(|| format!("ring of worker {i}"))?;
                    media.push(Input::Ring(ring, offset));
                }
                let ring = x.take_signalling_ring().context("signalling ring")?;
                let counters = Some(Arc::new(x.take_counters()?));
                let table: Box<dyn MediaTable> = Box::new(x.take_media_table()?);
                let capture = Capture {
                    source: "xdp".into(),
                    attachments: x.attachments.clone(),
                    xdp: Some(x),
                    af: None,
                    counters,
                };
                (capture, media, Input::Ring(ring, offset), table)
            }
            None => {
                let table = SharedMediaTable::default();
                let tables =
                    UserTables::new(cfg.capture.xdp(), &cfg.capture.sip_ports, table.clone());
                let interfaces = &cfg.capture.interfaces;
                let (af, worker_rx, sig_rx) =
                    AfPacketCapture::start(interfaces, tables, workers, stop)?;
                // A packet socket only ever copies: the host's stack gets every frame.
                let attachments = interfaces
                    .iter()
                    .map(|i| Attachment {
                        interface: i.clone(),
                        mode: "af_packet",
                        after: mirror_port::copy_only(&InterfaceFacts::read(i)),
                    })
                    .collect();
                let capture = Capture {
                    source: "af_packet".into(),
                    attachments,
                    xdp: None,
                    af: Some(af),
                    counters: None,
                };
                let media = worker_rx.into_iter().map(Input::Channel).collect();
                (capture, media, Input::Channel(sig_rx), Box::new(table) as _)
            }
        };
        let mut fills = Vec::new();
        for (label, input) in (0..workers)
            .map(|i| i.to_string())
            .zip(&media)
            .chain(std::iter::once(("signalling".to_string(), &signalling)))
        {
            match input.fill() {
                Ok(f) => fills.push((label, f)),
                Err(e) => log::warn!("worker {label}: no ring fill gauge: {e}"),
            }
        }
        let inputs = Inputs {
            media,
            signalling,
            table,
            fills,
        };
        Ok((capture, inputs))
    }

    /// The capture counters for `/metrics`.
    pub fn metrics_counters(&self) -> CaptureCounters {
        match (&self.counters, &self.af) {
            (Some(c), _) => CaptureCounters::Xdp(c.clone()),
            (None, Some(a)) => {
                let shared = a.shared_counters();
                CaptureCounters::Totals(Arc::new(move || {
                    std::array::from_fn(|i| shared[i].load(Ordering::Relaxed))
                }))
            }
            _ => CaptureCounters::None,
        }
    }

    /// The capture counters' totals, for the run summary.
    pub fn totals(&self) -> [u64; calltap_common::COUNTERS as usize] {
        match (&self.counters, &self.af) {
            (Some(c), _) => c.totals(),
            (None, Some(a)) => a.totals(),
            _ => [0; calltap_common::COUNTERS as usize],
        }
    }

    /// Records XDP could not put in a full ring, per CPU.
    pub fn ring_full_per_cpu(&self) -> Vec<u64> {
        self.counters
            .as_ref()
            .map(|c| c.per_cpu(calltap_common::counter::RING_FULL))
            .unwrap_or_default()
    }

    /// Detaches from the interfaces: XDP programs unloaded, AF_PACKET sockets closed.
    pub fn stop(self) {
        drop(self.xdp);
        drop(self.af);
    }
}

/// Loads the XDP program and attaches it to every configured interface, each in the drop mode
/// its kind calls for.
fn attach_xdp(cfg: &Config) -> Result<XdpCapture, CaptureError> {
    let mut x = XdpCapture::load(&cfg.capture.xdp(), &cfg.capture.sip_ports)?;
    for iface in &cfg.capture.interfaces {
        let facts = InterfaceFacts::read(iface);
        let mode = mirror_port::decide(cfg.capture.drop_after_capture, &facts);
        x.attach(iface, mode)?;
    }
    x.settle_drop_mode()?;
    Ok(x)
}
