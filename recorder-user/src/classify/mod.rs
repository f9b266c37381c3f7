//! The userspace side of classification: the same [`calltap_common::classify::classify`] the XDP
//! program runs, with tables that live in process memory instead of BPF maps.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, RwLock,
};

use calltap_common::{
    classify::{classify, Tables, Verdict},
    MediaKey, MediaValue, PacketMeta, XdpConfig,
};

use crate::pipeline::MediaTable;

/// Media endpoints and learned SIP ports, shared by the signalling worker (writer) and the
/// capture thread (reader).
#[derive(Clone)]
pub struct SharedMediaTable {
    /// foldhash (seeded per process): looked up for every captured UDP packet.
    inner: Arc<RwLock<foldhash::HashMap<MediaKey, MediaValue>>>,
    sip_ports: Arc<[AtomicU64]>,
}

impl Default for SharedMediaTable {
    fn default() -> Self {
        SharedMediaTable {
            inner: Arc::default(),
            sip_ports: (0..calltap_common::SIP_PORT_WORDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl SharedMediaTable {
    pub fn len(&self) -> usize {
        self.inner.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MediaTable for SharedMediaTable {
    fn insert(&mut self, key: MediaKey, owner: MediaValue) -> Result<(), String> {
        let mut map = self
            .inner
            .write()
            .map_err(|_| "media table poisoned".to_string())?;
        map.insert(key, owner);
        Ok(())
    }

    fn remove(&mut self, key: &MediaKey) {
        if let Ok(mut map) = self.inner.write() {
            map.remove(key);
        }
    }

    fn learn_sip_port(&mut self, port: u16) -> Result<(), String> {
        let word = self
            .sip_ports
            .get(usize::from(port >> 6))
            .ok_or("port bitmap too small")?;
        word.fetch_or(1 << (port & 63), Ordering::Relaxed);
        Ok(())
    }
}

/// The classifier's tables in userspace.
#[derive(Clone)]
pub struct UserTables {
    pub media: SharedMediaTable,
    pub config: XdpConfig,
}

impl UserTables {
    /// Tables over `media`, with the configured SIP ports added to its port bitmap.
    pub fn new(config: XdpConfig, sip_ports: &[u16], mut media: SharedMediaTable) -> UserTables {
        for &p in sip_ports {
            let _ = media.learn_sip_port(p);
        }
        UserTables { media, config }
    }
}

impl Tables for UserTables {
    fn media(&self, key: &MediaKey) -> Option<MediaValue> {
        self.media.inner.read().ok()?.get(key).copied()
    }

    fn is_sip_port(&self, port: u16) -> bool {
        self.media
            .sip_ports
            .get(usize::from(port >> 6))
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (port & 63)) != 0)
    }

    fn config(&self) -> XdpConfig {
        self.config
    }
}

/// Classifies a frame and builds the record header a ring would have carried.
pub fn classify_frame(
    frame: &[u8],
    tables: &UserTables,
    ts_ns: u64,
    wire_len: u32,
    ifindex: u32,
) -> (Verdict, PacketMeta) {
    let v = classify(frame, tables);
    let meta = PacketMeta {
        ts_ns,
        ifindex,
        rx_queue: 0,
        wire_len,
        cap_len: frame.len() as u32,
        target: v.target,
        cpu: 0,
        l3_off: v.l3_off,
        l4_off: v.l4_off,
        payload_off: v.payload_off,
        class: v.class,
        flags: v.flags,
        _pad: [0; 2],
    };
    (v, meta)
}
