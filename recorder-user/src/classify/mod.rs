//! The userspace side of classification: the same [`calltap_common::classify::classify`] the XDP
//! program runs, with tables that live in process memory instead of BPF maps.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use calltap_common::{
    classify::{classify, Tables, Verdict},
    MediaKey, MediaValue, PacketMeta, XdpConfig,
};

use crate::pipeline::MediaTable;

/// Media endpoints, shared by the signalling worker (writer) and the capture thread (reader).
#[derive(Clone, Default)]
pub struct SharedMediaTable {
    inner: Arc<RwLock<HashMap<MediaKey, MediaValue>>>,
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
}

/// The classifier's tables in userspace.
#[derive(Clone)]
pub struct UserTables {
    pub media: SharedMediaTable,
    sip_ports: Box<[u64; 1024]>,
    pub config: XdpConfig,
}

impl UserTables {
    pub fn new(config: XdpConfig, sip_ports: &[u16], media: SharedMediaTable) -> UserTables {
        let mut bitmap = Box::new([0u64; 1024]);
        for &p in sip_ports {
            bitmap[(p >> 6) as usize] |= 1 << (p & 63);
        }
        UserTables {
            media,
            sip_ports: bitmap,
            config,
        }
    }
}

impl Tables for UserTables {
    fn media(&self, key: &MediaKey) -> Option<MediaValue> {
        self.media.inner.read().ok()?.get(key).copied()
    }

    fn is_sip_port(&self, port: u16) -> bool {
        self.sip_ports[(port >> 6) as usize] & (1 << (port & 63)) != 0
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
