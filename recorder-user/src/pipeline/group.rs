//! Media records handled in small groups, the cache warmed for a whole group before any of it
//! is handled.
//!
//! With thousands of calls a call's state is never in cache when its next packet comes: each
//! record's first touch of its call, and of the page its audio goes to, is a miss (they were
//! most of a worker's time). Taken one record at a time those misses come one after another;
//! a group's prefetches are all in flight together. Live capture and replay both feed their
//! media workers this way.

use calltap_common::PacketMeta;

use super::media::MediaWorker;
use crate::capture::Record;

/// Records per group: enough cache misses in flight to keep the memory system busy, few
/// enough that the group's own records stay in the L1 cache.
pub const GROUP: usize = 16;

/// What [`Group::run`] asks of its callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Prefetch the record's call state; change nothing.
    Warm,
    /// Prefetch where the record's audio goes (read from the state warmed before).
    WarmAudio,
    Handle,
}

/// The records of one group, copied end to end in ring layout (header, then frame) into a
/// buffer reused from group to group: no allocation once it has grown to a group's size.
#[derive(Default)]
pub struct Group {
    bytes: Vec<u8>,
    records: Vec<(usize, usize)>,
}

impl Group {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.records.len() >= GROUP
    }

    /// Appends a record in ring layout.
    pub fn push_record(&mut self, record: &[u8]) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(record);
        self.records.push((at, self.bytes.len()));
    }

    /// Appends a record made of `meta` and `frame`.
    pub fn push(&mut self, meta: &PacketMeta, frame: &[u8]) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(meta.as_bytes());
        self.bytes.extend_from_slice(frame);
        self.records.push((at, self.bytes.len()));
    }

    /// `f` on every record with [`Step::Warm`], then with [`Step::WarmAudio`], then with
    /// [`Step::Handle`]. `offset` is added to every timestamp (live: CLOCK_MONOTONIC to the
    /// epoch).
    pub fn run(&self, offset: u64, f: &mut impl FnMut(Step, &Record<'_>)) {
        for step in [Step::Warm, Step::WarmAudio, Step::Handle] {
            for &(from, to) in &self.records {
                if let Some(mut rec) = self.bytes.get(from..to).and_then(Record::from_ring) {
                    rec.meta.ts_ns = rec.meta.ts_ns.wrapping_add(offset);
                    f(step, &rec);
                }
            }
        }
    }

    /// Hands the group to `worker` and empties it. A record no call of the worker has is
    /// counted as unknown: offline, every control message before it has been applied.
    pub fn feed(&mut self, worker: &mut MediaWorker) {
        self.run(0, &mut |step, rec| match step {
            Step::Handle => {
                if !worker.packet(rec) {
                    worker.unknown();
                }
            }
            _ => worker.warm(rec, step == Step::WarmAudio),
        });
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_warmed_twice_then_handled_in_order() {
        let mut g = Group::default();
        for i in 0..3u64 {
            let frame = vec![i as u8; 10 + i as usize];
            let meta = PacketMeta {
                ts_ns: i,
                cap_len: frame.len() as u32,
                ..PacketMeta::default()
            };
            g.push(&meta, &frame);
        }
        let mut seen = Vec::new();
        g.run(100, &mut |step, rec| {
            assert_eq!(rec.frame.len(), 10 + (rec.meta.ts_ns - 100) as usize);
            seen.push((step, rec.meta.ts_ns));
        });
        let want: Vec<_> = [Step::Warm, Step::WarmAudio, Step::Handle]
            .into_iter()
            .flat_map(|s| (100..103).map(move |t| (s, t)))
            .collect();
        assert_eq!(seen, want);
    }
}
