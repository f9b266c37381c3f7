//! Where a worker's records come from: the XDP program's BPF ring, or the AF_PACKET capture
//! thread's channel; a group at a time for the media workers (see [`crate::pipeline::group`]).

use std::{
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use crate::{
    capture::{
        af_packet::RecordQueue,
        xdp::{wait_readable, RingPositions},
        InputFill, Record,
    },
    pipeline::group::{Group, Step},
};

/// Records a worker takes from its input before it looks at control messages again.
pub const BATCH: usize = 4096;

/// CLOCK_MONOTONIC in nanoseconds: the clock XDP stamps records with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Offset that turns CLOCK_MONOTONIC (what XDP stamps) into nanoseconds since the epoch.
pub fn monotonic_to_realtime() -> u64 {
    crate::clock::unix_ns().saturating_sub(monotonic_ns())
}

/// Where a worker's records come from.
pub enum Input {
    /// A BPF ring filled by the XDP program; timestamps are CLOCK_MONOTONIC.
    Ring(RingBuf<MapData>, u64),
    /// Records built by the AF_PACKET thread.
    Channel(RecordQueue),
}

impl Input {
    /// Feeds up to `max` records to `f`; returns how many there were.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&Record<'_>)) -> usize {
        let mut n = 0;
        match self {
            Input::Ring(ring, offset) => {
                while n < max {
                    let Some(item) = ring.next() else { break };
                    if let Some(mut rec) = Record::from_ring(&item) {
                        rec.meta.ts_ns = rec.meta.ts_ns.wrapping_add(*offset);
                        f(&rec);
                    }
                    n += 1;
                }
            }
            Input::Channel(q) => {
                while n < max {
                    let Ok(bytes) = q.rx.try_recv() else { break };
                    if let Some(rec) = Record::from_ring(&bytes) {
                        f(&rec);
                    }
                    // Back to the capture thread for the next packet (dropped if the pool is
                    // full).
                    let _ = q.recycle.try_send(bytes);
                    n += 1;
                }
            }
        }
        n
    }

    /// Like [`Input::drain`], a [`Group`] at a time: `f` sees each record of a group in each
    /// [`Step`] in turn (see [`crate::pipeline::group`]). Ring records are copied out of the
    /// ring for that, about 250 bytes for a G.711 packet.
    pub fn drain_grouped(
        &mut self,
        max: usize,
        group: &mut Group,
        mut f: impl FnMut(Step, &Record<'_>),
    ) -> usize {
        let mut n = 0;
        match self {
            Input::Ring(ring, offset) => {
                while n < max {
                    group.clear();
                    while n < max && !group.is_full() {
                        let Some(item) = ring.next() else { break };
                        n += 1;
                        // Whole: the size-class padding after the frame is a few dozen
                        // bytes, and `Group::run` reads the header (and skips a bad record).
                        group.push_record(&item);
                    }
                    if group.is_empty() {
                        break;
                    }
                    group.run(*offset, &mut f);
                }
            }
            Input::Channel(q) => {
                while n < max {
                    group.clear();
                    while n < max && !group.is_full() {
                        let Ok(bytes) = q.rx.try_recv() else { break };
                        n += 1;
                        group.push_record(&bytes);
                        // Back to the capture thread for the next packet (dropped if the pool
                        // is full).
                        let _ = q.recycle.try_send(bytes);
                    }
                    if group.is_empty() {
                        break;
                    }
                    group.run(0, &mut f);
                }
            }
        }
        n
    }

    /// What turns CLOCK_MONOTONIC into this input's record timestamps (they have the offset
    /// added), when records are stamped at capture (XDP); `None` for the AF_PACKET channel.
    pub fn clock_offset(&self) -> Option<u64> {
        match self {
            Input::Ring(_, offset) => Some(*offset),
            Input::Channel(_) => None,
        }
    }

    /// A read-only handle on how full this input is, for the metrics scrape.
    pub fn fill(&self) -> std::io::Result<InputFill> {
        Ok(match self {
            Input::Ring(ring, _) => InputFill::Ring(RingPositions::new(
                ring,
                u64::from(calltap_common::RING_BYTES),
            )?),
            Input::Channel(q) => InputFill::Queue(q.rx.clone()),
        })
    }

    pub fn wait(&self, timeout: Duration) {
        match self {
            Input::Ring(ring, _) => wait_readable(ring, timeout),
            Input::Channel(RecordQueue { rx, .. }) => {
                // Peek without consuming: block until something arrives or time passes.
                let deadline = Instant::now() + timeout;
                while rx.is_empty() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use calltap_common::PacketMeta;
    use crossbeam_channel::unbounded;

    use super::*;
    use crate::pipeline::group::GROUP;

    fn record(ts_ns: u64, frame: &[u8]) -> Vec<u8> {
        let meta = PacketMeta {
            ts_ns,
            cap_len: frame.len() as u32,
            wire_len: frame.len() as u32,
            ..PacketMeta::default()
        };
        let mut bytes = meta.as_bytes().to_vec();
        bytes.extend_from_slice(frame);
        bytes
    }

    /// Every record is seen once per step, a whole group warmed before any of it is handled,
    /// records intact and in order, buffers returned to the capture thread, `max` respected.
    #[test]
    fn grouped_drain_warms_each_group_before_handling_it() {
        let (tx, rx) = unbounded();
        let (recycle, recycled) = unbounded();
        let total = GROUP + 5;
        for i in 0..total {
            tx.send(record(i as u64, &vec![i as u8; 20 + i])).unwrap();
        }
        let mut input = Input::Channel(RecordQueue { rx, recycle });
        let mut group = Group::default();
        let mut seen = Vec::new();
        let n = input.drain_grouped(total - 1, &mut group, |step, rec| {
            assert_eq!(
                rec.frame,
                vec![rec.meta.ts_ns as u8; 20 + rec.meta.ts_ns as usize]
            );
            seen.push((step, rec.meta.ts_ns));
        });
        assert_eq!(n, total - 1);
        let mut want = Vec::new();
        for ids in [0..GROUP as u64, GROUP as u64..total as u64 - 1] {
            for step in [Step::Warm, Step::WarmAudio, Step::Handle] {
                want.extend(ids.clone().map(|i| (step, i)));
            }
        }
        assert_eq!(seen, want);
        assert_eq!(recycled.len(), total - 1);
        // The last record is still there for the next drain.
        let mut rest = Vec::new();
        input.drain_grouped(usize::MAX, &mut group, |step, rec| {
            rest.push((step, rec.meta.ts_ns))
        });
        let last = total as u64 - 1;
        assert_eq!(
            rest,
            [
                (Step::Warm, last),
                (Step::WarmAudio, last),
                (Step::Handle, last)
            ]
        );
    }
}
