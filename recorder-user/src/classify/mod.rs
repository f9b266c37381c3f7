//! The userspace side of classification: the same [`calltap_common::classify::classify`] the XDP
//! program runs, with tables that live in process memory instead of BPF maps.

use std::{
    cell::RefCell,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, PoisonError, RwLock,
    },
};

use calltap_common::{
    classify::{classify, Tables, Verdict},
    MediaKey, MediaValue, PacketMeta, XdpConfig,
};
use crossbeam_channel::{Receiver, Sender};

/// The table the classifier consults to steer RTP: a BPF map for XDP, a shared hash map for
/// userspace sources. Only the signalling worker writes it; capture sources implement it
/// for their own tables (the XDP program's BPF map).
pub trait MediaTable: Send {
    fn insert(&mut self, key: MediaKey, owner: MediaValue) -> Result<(), String>;
    fn remove(&mut self, key: &MediaKey);
    /// Treat `port` as a SIP port from now on (SIP found by content sniffing on a port that is
    /// not configured: on TCP, only segments that start a message can be sniffed, the others
    /// need the port).
    fn learn_sip_port(&mut self, port: u16) -> Result<(), String>;
    /// Stop treating a learned `port` as a SIP port (no SIP crossed it for a while). Never
    /// called for a configured port.
    fn forget_sip_port(&mut self, port: u16) -> Result<(), String>;
}

/// Lets the driver pick the table (BPF map or userspace map) at run time.
impl<T: MediaTable + ?Sized> MediaTable for Box<T> {
    fn insert(&mut self, key: MediaKey, owner: MediaValue) -> Result<(), String> {
        (**self).insert(key, owner)
    }

    fn remove(&mut self, key: &MediaKey) {
        (**self).remove(key)
    }

    fn learn_sip_port(&mut self, port: u16) -> Result<(), String> {
        (**self).learn_sip_port(port)
    }

    fn forget_sip_port(&mut self, port: u16) -> Result<(), String> {
        (**self).forget_sip_port(port)
    }
}

/// foldhash, seeded per process: keys come from SDP, i.e. from the network.
type Map = foldhash::HashMap<MediaKey, MediaValue>;

/// One change to the media table: made to the table, then sent to every reader's replica.
#[derive(Clone, Copy)]
enum Change {
    Insert(MediaKey, MediaValue),
    Remove(MediaKey),
}

impl Change {
    fn apply(self, map: &mut Map) {
        match self {
            Change::Insert(k, v) => {
                map.insert(k, v);
            }
            Change::Remove(k) => {
                map.remove(&k);
            }
        }
    }
}

/// Changes queued per reader; past it the reader is told to copy the table anew.
const REPLICA_QUEUE: usize = 65_536;

/// Where one reader's replica gets the changes, and the flag that tells it it missed some.
struct Reader {
    changes: Sender<Change>,
    stale: Arc<AtomicBool>,
}

/// The table itself, and where each reader's replica gets the changes.
#[derive(Default)]
struct Authority {
    map: Map,
    readers: Vec<Reader>,
}

/// Media endpoints and learned SIP ports, shared by the signalling worker (writer) and the
/// capture threads (readers).
///
/// A reader looks up every captured UDP packet, a writer changes the table a few times per
/// call: so readers do not share the table, each keeps a replica ([`UserTables`]) that the
/// writer's changes reach through a channel. A lookup is then a local hash probe plus a check
/// that the channel is empty (plain loads); a shared lock's atomic read-modify-write per packet
/// cost more than the rest of classification.
#[derive(Clone)]
pub struct SharedMediaTable {
    inner: Arc<RwLock<Authority>>,
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
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new reader's replica: the table as it is now, then every later change.
    fn replica(&self) -> Replica {
        let mut a = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let (tx, rx) = crossbeam_channel::bounded(REPLICA_QUEUE);
        let stale = Arc::new(AtomicBool::new(false));
        a.readers.push(Reader {
            changes: tx,
            stale: stale.clone(),
        });
        Replica {
            map: a.map.clone(),
            changes: rx,
            stale,
            authority: self.inner.clone(),
        }
    }

    /// The word of the SIP port bitmap that holds `port`'s bit.
    fn port_word(&self, port: u16) -> Result<&AtomicU64, String> {
        self.sip_ports
            .get(usize::from(port >> 6))
            .ok_or_else(|| "port bitmap too small".to_string())
    }

    fn change(&self, change: Change) {
        let mut a = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        change.apply(&mut a.map);
        // A reader that is gone (its capture thread ended) is forgotten; one that has not kept
        // up copies the table anew (bounded queues: a stalled reader costs no memory).
        a.readers.retain(|r| match r.changes.try_send(change) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                r.stale.store(true, Ordering::Release);
                true
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        });
    }
}

impl MediaTable for SharedMediaTable {
    fn insert(&mut self, key: MediaKey, owner: MediaValue) -> Result<(), String> {
        self.change(Change::Insert(key, owner));
        Ok(())
    }

    fn remove(&mut self, key: &MediaKey) {
        self.change(Change::Remove(*key));
    }

    fn learn_sip_port(&mut self, port: u16) -> Result<(), String> {
        self.port_word(port)?
            .fetch_or(1 << (port & 63), Ordering::Relaxed);
        Ok(())
    }

    fn forget_sip_port(&mut self, port: u16) -> Result<(), String> {
        self.port_word(port)?
            .fetch_and(!(1 << (port & 63)), Ordering::Relaxed);
        Ok(())
    }
}

/// One reader's copy of the media table.
struct Replica {
    map: Map,
    changes: Receiver<Change>,
    /// Set when a change did not fit the queue: the copy is out of date.
    stale: Arc<AtomicBool>,
    authority: Arc<RwLock<Authority>>,
}

impl Replica {
    fn behind(&self) -> bool {
        !self.changes.is_empty() || self.stale.load(Ordering::Relaxed)
    }

    fn catch_up(&mut self) {
        if self.stale.swap(false, Ordering::Acquire) {
            // What is queued is in the table already (changes are applied before they are
            // sent); what comes after the copy is applied again, which changes nothing.
            for _ in self.changes.try_iter() {}
            self.map = self
                .authority
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .map
                .clone();
        }
        for c in self.changes.try_iter() {
            c.apply(&mut self.map);
        }
    }
}

/// The classifier's tables in userspace, for one capture thread (a clone gets its own
/// replica of the media table).
pub struct UserTables {
    pub media: SharedMediaTable,
    replica: RefCell<Replica>,
    pub config: XdpConfig,
}

impl Clone for UserTables {
    fn clone(&self) -> Self {
        UserTables {
            media: self.media.clone(),
            replica: RefCell::new(self.media.replica()),
            config: self.config,
        }
    }
}

impl UserTables {
    /// Tables over `media`, with the configured SIP ports added to its port bitmap.
    pub fn new(config: XdpConfig, sip_ports: &[u16], mut media: SharedMediaTable) -> UserTables {
        for &p in sip_ports {
            let _ = media.learn_sip_port(p);
        }
        UserTables {
            replica: RefCell::new(media.replica()),
            media,
            config,
        }
    }

    /// Applies pending changes to the replica. Lookups do it as needed; a capture thread
    /// calls this when it is idle too, so the changes of a quiet interface do not pile up.
    pub fn refresh(&self) {
        self.replica.borrow_mut().catch_up();
    }
}

impl Tables for UserTables {
    fn media(&self, key: &MediaKey) -> Option<MediaValue> {
        let mut r = self.replica.borrow_mut();
        if r.behind() {
            r.catch_up();
        }
        r.map.get(key).copied()
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

#[cfg(test)]
mod tests {
    use calltap_common::{classify::TARGET_NONE, Class};

    use super::*;

    fn owner(worker: u32) -> MediaValue {
        MediaValue { worker, flags: 0 }
    }

    #[test]
    fn replicas_see_every_change_and_new_readers_start_from_the_current_table() {
        let mut table = SharedMediaTable::default();
        let a = MediaKey::v4([198, 18, 0, 1], 20_000);
        let b = MediaKey::v4([198, 18, 0, 2], 20_002);
        table.insert(a, owner(1)).expect("insert");
        let reader = UserTables::new(XdpConfig::default(), &[5060], table.clone());
        assert_eq!(reader.media(&a), Some(owner(1)));
        assert_eq!(reader.media(&b), None);

        table.insert(b, owner(0)).expect("insert");
        table.insert(a, owner(0)).expect("move");
        assert_eq!(reader.media(&b), Some(owner(0)));
        assert_eq!(reader.media(&a), Some(owner(0)), "a moved owner is seen");

        let second = reader.clone();
        table.remove(&a);
        assert_eq!(reader.media(&a), None);
        assert_eq!(second.media(&a), None);
        assert_eq!(second.media(&b), Some(owner(0)), "snapshot taken at clone");
        assert!(reader.is_sip_port(5060) && second.is_sip_port(5060));
        assert_eq!(table.len(), 1);
    }

    /// Ethernet + IPv4 + UDP around `payload`, checksums left zero (the classifier does not
    /// check them).
    fn udp_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&dst.0);
        let total = (20 + 8 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn sip_ports_are_decided_before_the_media_map() {
        let (a, proxy) = ([198, 18, 1, 1], [198, 18, 3, 1]);
        let mut table = SharedMediaTable::default();
        // What a hostile 200 OK (`c=<proxy>`, `m=audio 5060`) would claim.
        table
            .insert(MediaKey::v4(proxy, 5060), owner(1))
            .expect("insert");
        table
            .insert(MediaKey::v4(proxy, 20_000), owner(1))
            .expect("insert");
        let tables = UserTables::new(XdpConfig::default(), &[5060], table);
        let classify = |f: &[u8]| classify_frame(f, &tables, 0, f.len() as u32, 0).0.class();
        let invite = b"INVITE sip:b@198.18.3.1 SIP/2.0\r\n\r\n";
        let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        rtp.extend_from_slice(&[0xff; 160]);
        assert_eq!(
            classify(&udp_frame((a, 5060), (proxy, 5060), invite)),
            Class::Sip
        );
        assert_eq!(
            classify(&udp_frame(
                (proxy, 5060),
                (a, 5060),
                b"SIP/2.0 200 OK\r\n\r\n"
            )),
            Class::Sip
        );
        assert_eq!(
            classify(&udp_frame((a, 9000), (proxy, 5060), &rtp)),
            Class::Sip
        );
        assert_eq!(
            classify(&udp_frame((a, 9000), (proxy, 20_000), &rtp)),
            Class::Rtp
        );
        assert_eq!(
            classify(&udp_frame((a, 9000), (proxy, 20_000), invite)),
            Class::Sip,
            "a SIP start is SIP even on a claimed media endpoint"
        );
    }

    /// Found by fuzzing (`classifier`): a TCP header whose data offset (40 bytes) runs past
    /// the frame's end gave a payload offset beyond the frame. Such a header is malformed.
    #[test]
    fn tcp_options_past_the_frame_end_are_malformed() {
        let frame = hex::decode(
            "0000000000000000000000000800450000282d30400080064950c0a801fcc0a80103ce3601838383\
             83bbaa51aa48aa619ab55010110bb0d60000000000000000",
        )
        .expect("hex");
        let tables = UserTables::new(XdpConfig::default(), &[5060], SharedMediaTable::default());
        let (v, meta) = classify_frame(&frame, &tables, 0, frame.len() as u32, 0);
        assert_eq!((v.class(), v.target), (Class::Malformed, TARGET_NONE));
        assert!(usize::from(meta.payload_off) <= frame.len());
    }

    #[test]
    fn a_forgotten_sip_port_leaves_the_bitmap_and_its_neighbours_stay() {
        let mut table = SharedMediaTable::default();
        let reader = UserTables::new(XdpConfig::default(), &[5060], table.clone());
        table.learn_sip_port(5061).expect("learn");
        assert!(reader.is_sip_port(5061));
        table.forget_sip_port(5061).expect("forget");
        assert!(!reader.is_sip_port(5061));
        assert!(reader.is_sip_port(5060), "same bitmap word, configured");
    }

    #[test]
    fn a_reader_that_fell_behind_the_queue_copies_the_table_anew() {
        let mut table = SharedMediaTable::default();
        let reader = UserTables::new(XdpConfig::default(), &[], table.clone());
        let key = |i: u32| MediaKey::v4([198, 18, (i >> 16) as u8, 9], i as u16);
        let n = REPLICA_QUEUE as u32 + 10;
        for i in 0..n {
            table.insert(key(i), owner(1)).expect("insert");
        }
        table.remove(&key(0));
        assert!(reader.replica.borrow().stale.load(Ordering::Relaxed));
        assert_eq!(reader.media(&key(n - 1)), Some(owner(1)));
        assert_eq!(reader.media(&key(0)), None);
        assert_eq!(reader.replica.borrow().map.len(), n as usize - 1);
        assert!(!reader.replica.borrow().behind());
    }

    #[test]
    fn a_dropped_reader_is_forgotten_and_an_idle_one_catches_up_on_refresh() {
        let mut table = SharedMediaTable::default();
        let reader = UserTables::new(XdpConfig::default(), &[], table.clone());
        let gone = reader.clone();
        drop(gone);
        for port in 0..100 {
            table
                .insert(MediaKey::v4([198, 18, 0, 1], port), owner(0))
                .expect("insert");
        }
        assert_eq!(table.inner.read().expect("lock").readers.len(), 1);
        assert_eq!(reader.replica.borrow().changes.len(), 100);
        reader.refresh();
        assert!(reader.replica.borrow().changes.is_empty());
        assert_eq!(reader.replica.borrow().map.len(), 100);
    }
}
