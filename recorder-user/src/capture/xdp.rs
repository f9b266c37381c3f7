//! Loads the XDP program, wires its rings and tables, and attaches it to the capture interfaces.

use std::{os::fd::AsFd as _, time::Duration};

use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use calltap_common::{
    drop_mode, MediaKey, MediaValue, XdpConfig, COUNTERS, MAX_WORKERS, RING_COUNT, SIGNALLING_RING,
    SIP_PORT_WORDS,
};

use super::{
    mirror_port::{AfterCapture, DropDecision},
    Attachment, CaptureError,
};
use crate::classify::MediaTable;

/// The XDP object built by build.rs (empty when built with `CALLTAP_SKIP_EBPF=1`).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/calltap-xdp.o"));

const PROGRAM: &str = "calltap_xdp";

/// A loaded XDP program with its rings taken out for the workers.
pub struct XdpCapture {
    ebpf: Ebpf,
    /// `rings[i]` feeds media worker `i`; `None` once handed to the worker.
    rings: Vec<Option<RingBuf<MapData>>>,
    signalling: Option<RingBuf<MapData>>,
    /// The configuration the program was loaded with.
    config: XdpConfig,
    pub attachments: Vec<Attachment>,
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps against it (pre-5.11).
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("setrlimit(RLIMIT_MEMLOCK) failed; fine on kernels with memcg accounting");
    }
}

/// Whether this binary carries an XDP program.
pub fn available() -> bool {
    !OBJECT.is_empty()
}

impl XdpCapture {
    /// Loads the program and configures it; nothing is attached yet.
    pub fn load(cfg: &XdpConfig, sip_ports: &[u16]) -> Result<XdpCapture, CaptureError> {
        if OBJECT.is_empty() {
            return Err(CaptureError::NoXdpObject);
        }
        raise_memlock();
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| CaptureError::Load(e.to_string()))?;

        let mut ring_maps = Vec::with_capacity(RING_COUNT as usize);
        for i in 0..RING_COUNT {
            let name = if i == SIGNALLING_RING {
                "RING_SIG".to_string()
            } else {
                format!("RING_{i}")
            };
            let map = ebpf
                .take_map(&name)
                .ok_or_else(|| CaptureError::Load(format!("map {name} missing")))?;
            let ring = RingBuf::try_from(map).map_err(|e| CaptureError::Load(e.to_string()))?;
            ring_maps.push(ring);
        }
        {
            let outer = ebpf
                .map_mut("RINGS")
                .ok_or_else(|| CaptureError::Load("map RINGS missing".into()))?;
            let mut outer: ArrayOfMaps<&mut MapData, RingBuf<MapData>> =
                ArrayOfMaps::try_from(outer).map_err(|e| CaptureError::Load(e.to_string()))?;
            for (i, ring) in ring_maps.iter().enumerate() {
                outer
                    .set(i as u32, ring, 0)
                    .map_err(|e| CaptureError::Load(format!("RINGS[{i}]: {e}")))?;
            }
        }
        {
            let map = ebpf
                .map_mut("SIP_PORTS")
                .ok_or_else(|| CaptureError::Load("map SIP_PORTS missing".into()))?;
            let mut bitmap: Array<&mut MapData, u64> =
                Array::try_from(map).map_err(|e| CaptureError::Load(e.to_string()))?;
            let mut words = vec![0u64; SIP_PORT_WORDS as usize];
            for &p in sip_ports {
                words[(p >> 6) as usize] |= 1 << (p & 63);
            }
            for (i, w) in words.iter().enumerate() {
                if *w != 0 {
                    bitmap
                        .set(i as u32, *w, 0)
                        .map_err(|e| CaptureError::Load(e.to_string()))?;
                }
            }
        }
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| CaptureError::Load(format!("program {PROGRAM} missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| CaptureError::Load(e.to_string()))?;
        program
            .load()
            .map_err(|e| CaptureError::Verifier(format!("{e:#}")))?;

        let signalling = ring_maps.pop();
        let mut capture = XdpCapture {
            ebpf,
            rings: ring_maps.into_iter().map(Some).collect(),
            signalling,
            config: *cfg,
            attachments: Vec::new(),
        };
        capture.set_config(*cfg)?;
        Ok(capture)
    }

    /// Attaches to `interface` in native (driver) mode, falling back to generic (SKB) mode.
    /// `after` says whether its frames are dropped after capture (see
    /// [`super::mirror_port`]); it counts when the program was loaded with
    /// [`drop_mode::PER_INTERFACE`].
    pub fn attach(
        &mut self,
        interface: &str,
        after: DropDecision,
    ) -> Result<&Attachment, CaptureError> {
        if after.after_capture == AfterCapture::Drop {
            self.drop_on(interface)?;
        }
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| CaptureError::Load(format!("program {PROGRAM} missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| CaptureError::Load(e.to_string()))?;
        let mode = match program.attach(interface, XdpMode::Driver) {
            Ok(_) => "driver",
            Err(native) => {
                log::warn!(
                    "{interface}: native XDP unavailable ({native}); falling back to SKB (generic) mode"
                );
                program
                    .attach(interface, XdpMode::Skb)
                    .map_err(|e| CaptureError::Attach {
                        interface: interface.to_string(),
                        reason: format!("native: {native}; skb: {e}"),
                    })?;
                "skb"
            }
        };
        log::info!("{interface}: XDP attached in {mode} mode");
        after.log(interface);
        self.attachments.push(Attachment {
            interface: interface.to_string(),
            mode,
            after,
        });
        Ok(self.attachments.last().expect("just pushed"))
    }

    /// Has the program drop `interface`'s frames after capture (per-interface mode).
    pub fn drop_on(&mut self, interface: &str) -> Result<(), CaptureError> {
        let fail = |reason: String| CaptureError::Attach {
            interface: interface.to_string(),
            reason,
        };
        let name = std::ffi::CString::new(interface).map_err(|e| fail(e.to_string()))?;
        // SAFETY: a NUL-terminated name; the call only reads it.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(fail(format!(
                "no such interface: {}",
                std::io::Error::last_os_error()
            )));
        }
        let map = self
            .ebpf
            .map_mut("DROP_ON")
            .ok_or_else(|| CaptureError::Load("map DROP_ON missing".into()))?;
        let mut drop_on: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(map).map_err(|e| CaptureError::Load(e.to_string()))?;
        drop_on
            .insert(ifindex, 1, 0)
            .map_err(|e| fail(format!("DROP_ON: {e}")))
    }

    /// Once every interface is attached: when they all decided alike, the program is told so
    /// and skips the per-interface lookup on every frame.
    pub fn settle_drop_mode(&mut self) -> Result<(), CaptureError> {
        if self.config.drop_after_capture != drop_mode::PER_INTERFACE || self.attachments.is_empty()
        {
            return Ok(());
        }
        let drops = |a: &Attachment| a.after.after_capture == AfterCapture::Drop;
        let mode = if self.attachments.iter().all(drops) {
            drop_mode::ALWAYS
        } else if !self.attachments.iter().any(drops) {
            drop_mode::NEVER
        } else {
            return Ok(());
        };
        self.set_config(XdpConfig {
            drop_after_capture: mode,
            ..self.config
        })
    }

    /// Replaces the program's configuration (slot 0 of its CONFIG map).
    pub fn set_config(&mut self, cfg: XdpConfig) -> Result<(), CaptureError> {
        let map = self
            .ebpf
            .map_mut("CONFIG")
            .ok_or_else(|| CaptureError::Load("map CONFIG missing".into()))?;
        let mut config: Array<&mut MapData, XdpConfig> =
            Array::try_from(map).map_err(|e| CaptureError::Load(e.to_string()))?;
        config
            .set(0, cfg, 0)
            .map_err(|e| CaptureError::Load(e.to_string()))?;
        self.config = cfg;
        Ok(())
    }

    /// Runs the loaded program once on `frame` through `BPF_PROG_TEST_RUN` (nothing needs to be
    /// attached) and returns the XDP action. Records it produces land in the rings as usual.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), CaptureError> {
        self.test_run_with(frame, repeat, None)
    }

    /// As [`XdpCapture::test_run`], the frame received on the interface with index `ifindex`
    /// (in this network namespace): what the per-interface drop decision is made on.
    pub fn test_run_on(&self, frame: &[u8], ifindex: u32) -> Result<u32, CaptureError> {
        self.test_run_with(frame, 1, Some(ifindex))
            .map(|(action, _)| action)
    }

    fn test_run_with(
        &self,
        frame: &[u8],
        repeat: u32,
        ifindex: Option<u32>,
    ) -> Result<(u32, Duration), CaptureError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM)
            .ok_or_else(|| CaptureError::Load(format!("program {PROGRAM} missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| CaptureError::Load(e.to_string()))?;
        // `struct xdp_md` as the kernel reads it: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: Option<Vec<u8>> = ifindex.map(|i| {
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            [0, len, 0, i, 0, 0]
                .iter()
                .flat_map(|w: &u32| w.to_ne_bytes())
                .collect()
        });
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx.as_deref(),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        };
        let r = program
            .test_run(opts)
            .map_err(|e| CaptureError::Load(format!("BPF_PROG_TEST_RUN: {e}")))?;
        Ok((r.return_value, r.duration))
    }

    /// Instructions the kernel's verifier went through to accept the program (all paths it
    /// explored, not the program's length): how close the classifier is to the verifier's
    /// budget of one million. None when the kernel does not tell (before 5.16).
    pub fn verified_instructions(&self) -> Option<u32> {
        let program: &Xdp = self.ebpf.program(PROGRAM)?.try_into().ok()?;
        program.info().ok()?.verified_instruction_count()
    }

    /// Takes ring `index` out of the program's ring table: frames for it are then classified
    /// and counted as `ring_full`, but nothing is reserved, copied or stamped. The bench uses it
    /// to time the classifier apart from the delivery into the ring; a running capture never
    /// does (the records would be lost).
    pub fn unplug_ring(&mut self, index: u32) -> Result<(), CaptureError> {
        use std::os::fd::AsRawFd as _;
        let Some(aya::maps::Map::ArrayOfMaps(outer)) = self.ebpf.map("RINGS") else {
            return Err(CaptureError::Load("map RINGS missing".into()));
        };
        // `union bpf_attr` as BPF_MAP_DELETE_ELEM reads it (aya's ArrayOfMaps has no delete).
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
        let attr = ElemAttr {
            map_fd: outer.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: std::ptr::from_ref(&index) as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid bpf_attr for this command and `key` points at a live u32
        // for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_ELEM,
                std::ptr::from_ref(&attr),
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if r != 0 {
            return Err(CaptureError::Load(format!(
                "RINGS[{index}]: delete: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// The ring of media worker `worker`; each can be taken once.
    pub fn take_media_ring(&mut self, worker: u32) -> Option<RingBuf<MapData>> {
        if worker >= MAX_WORKERS {
            return None;
        }
        self.rings.get_mut(worker as usize)?.take()
    }

    pub fn take_signalling_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.signalling.take()
    }

    /// The kernel's media endpoint table, for the signalling worker.
    pub fn take_media_table(&mut self) -> Result<BpfMediaTable, CaptureError> {
        let map = self
            .ebpf
            .take_map("MEDIA")
            .ok_or_else(|| CaptureError::Load("map MEDIA missing".into()))?;
        let map = HashMap::try_from(map).map_err(|e| CaptureError::Load(e.to_string()))?;
        let ports = self
            .ebpf
            .take_map("SIP_PORTS")
            .ok_or_else(|| CaptureError::Load("map SIP_PORTS missing".into()))?;
        let sip_ports = Array::try_from(ports).map_err(|e| CaptureError::Load(e.to_string()))?;
        let ports = self
            .ebpf
            .take_map("MEDIA_PORTS")
            .ok_or_else(|| CaptureError::Load("map MEDIA_PORTS missing".into()))?;
        let media_ports = Array::try_from(ports).map_err(|e| CaptureError::Load(e.to_string()))?;
        Ok(BpfMediaTable {
            map,
            sip_ports,
            media_ports,
            keys: std::collections::HashSet::new(),
            port_keys: std::collections::HashMap::new(),
        })
    }

    /// The per-CPU counters, for stats and metrics.
    pub fn take_counters(&mut self) -> Result<XdpCounters, CaptureError> {
        let map = self
            .ebpf
            .take_map("COUNTERS_MAP")
            .ok_or_else(|| CaptureError::Load("map COUNTERS_MAP missing".into()))?;
        let map = PerCpuArray::try_from(map).map_err(|e| CaptureError::Load(e.to_string()))?;
        Ok(XdpCounters { map })
    }
}

/// The media map in the kernel, with the bitmap of the ports its endpoints have.
pub struct BpfMediaTable {
    map: HashMap<MapData, MediaKey, MediaValue>,
    sip_ports: Array<MapData, u64>,
    media_ports: Array<MapData, u64>,
    /// The keys in `map` (only this table writes it), and how many of them have each port:
    /// a port's bit is cleared when its last endpoint goes.
    keys: std::collections::HashSet<MediaKey>,
    port_keys: std::collections::HashMap<u16, u32>,
}

impl BpfMediaTable {
    /// Whether the program's port bitmap has `port` set: what it reads before it looks the
    /// media map up for a packet with that port.
    pub fn port_bit(&self, port: u16) -> bool {
        bit(&self.media_ports, port)
    }

    /// Whether the program's SIP port bitmap has `port` set (configured or learned).
    pub fn sip_port_bit(&self, port: u16) -> bool {
        bit(&self.sip_ports, port)
    }
}

fn bit(bitmap: &Array<MapData, u64>, port: u16) -> bool {
    bitmap
        .get(&u32::from(port >> 6), 0)
        .is_ok_and(|bits| bits & (1u64 << (port & 63)) != 0)
}

/// Sets or clears bit `port` of a port bitmap map (only this process writes them).
fn set_bit(bitmap: &mut Array<MapData, u64>, port: u16, on: bool) -> Result<(), String> {
    let word = u32::from(port >> 6);
    let bits = bitmap.get(&word, 0).map_err(|e| e.to_string())?;
    let bit = 1u64 << (port & 63);
    let bits = if on { bits | bit } else { bits & !bit };
    bitmap.set(word, bits, 0).map_err(|e| e.to_string())
}

impl MediaTable for BpfMediaTable {
    fn insert(&mut self, key: MediaKey, owner: MediaValue) -> Result<(), String> {
        let new = !self.keys.contains(&key);
        // The bit first: the program may then look up a port with no endpoint (a miss, as
        // before), never miss an endpoint whose bit is not set yet.
        if new && !self.port_keys.contains_key(&key.port) {
            set_bit(&mut self.media_ports, key.port, true)?;
        }
        self.map.insert(key, owner, 0).map_err(|e| e.to_string())?;
        if new {
            self.keys.insert(key);
            *self.port_keys.entry(key.port).or_default() += 1;
        }
        Ok(())
    }

    fn remove(&mut self, key: &MediaKey) {
        // Already gone is fine: two calls may have advertised the same endpoint.
        let _ = self.map.remove(key);
        if !self.keys.remove(key) {
            return;
        }
        let port = key.port;
        if let Some(n) = self.port_keys.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.port_keys.remove(&port);
                // A bit left set only costs the lookups it would have spared.
                if let Err(e) = set_bit(&mut self.media_ports, port, false) {
                    log::debug!("media port bitmap: {e}");
                }
            }
        }
    }

    fn learn_sip_port(&mut self, port: u16) -> Result<(), String> {
        set_bit(&mut self.sip_ports, port, true)
    }

    fn forget_sip_port(&mut self, port: u16) -> Result<(), String> {
        set_bit(&mut self.sip_ports, port, false)
    }
}

/// Reads the XDP program's per-CPU counters.
pub struct XdpCounters {
    map: PerCpuArray<MapData, u64>,
}

impl XdpCounters {
    /// Totals over all CPUs, indexed by `calltap_common::counter`.
    pub fn totals(&self) -> [u64; COUNTERS as usize] {
        let mut out = [0u64; COUNTERS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.map.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Per CPU values of one counter.
    pub fn per_cpu(&self, index: u32) -> Vec<u64> {
        self.map
            .get(&index, 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// A read-only view of a BPF ring's consumer and producer positions, so the metrics scrape can
/// tell how full a worker's ring is without touching the worker: two loads from pages the
/// kernel shares (the same ones the consumer reads), no system call per scrape.
pub struct RingPositions {
    base: *mut libc::c_void,
    page: usize,
    bytes: u64,
}

// SAFETY: the mapping is read-only and only read through atomic loads.
unsafe impl Send for RingPositions {}
// SAFETY: as above; concurrent readers only ever load.
unsafe impl Sync for RingPositions {}

impl RingPositions {
    /// Maps the consumer and producer position pages of `ring` (`bytes` of data) read-only.
    pub fn new(ring: &RingBuf<MapData>, bytes: u64) -> std::io::Result<RingPositions> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("page size"))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ring.as_fd());
        // SAFETY: a fresh read-only shared mapping of the ring's first two pages (consumer,
        // producer); the kernel permits read-only maps of a BPF ring at any page offset.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingPositions { base, page, bytes })
    }

    /// Bytes written by the program and not yet consumed, and the ring's size.
    pub fn used(&self) -> (u64, u64) {
        let load = |off: usize| {
            // SAFETY: `off` is 0 or one page into our two-page mapping; the position words are
            // 8-byte aligned at the start of each page and updated atomically by their owners.
            let p =
                unsafe { self.base.cast::<u8>().add(off) }.cast::<std::sync::atomic::AtomicU64>();
            // SAFETY: as above: inside the mapping, aligned, an atomic the kernel updates.
            unsafe { &*p }.load(std::sync::atomic::Ordering::Acquire)
        };
        let consumer = load(0);
        let producer = load(self.page);
        (
            producer.saturating_sub(consumer).min(self.bytes),
            self.bytes,
        )
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base, 2 * self.page) };
    }
}

/// Waits until `ring` has data or `timeout` passes. Workers block here instead of spinning.
pub fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let fd = ring.as_fd();
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}
