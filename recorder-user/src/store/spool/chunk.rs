//! A media worker's audio buffers: lent to its spool thread and given back.
//!
//! A buffer holds one page of a recording's data exactly as it lies in the file (stereo 16-bit
//! frames, little-endian), so the spool thread writes it with one `pwrite` and no copy. The
//! worker takes buffers from its [`ChunkPool`] on the packet path without allocating (a new
//! buffer is the next page of the arena, and the free list has room for all of them from the
//! start) and the spool thread sends each one back once written, so a worker's audio memory
//! is bounded by its arena ([`super::arena`]) and grows only with the calls it records at once.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::arena::Arena;
pub use super::arena::Chunk;

/// Bytes in a buffer: one page, the unit the page cache works in.
pub const CHUNK_BYTES: usize = 4096;
/// Stereo 16-bit frames in a buffer.
pub const CHUNK_FRAMES: u64 = (CHUNK_BYTES / 4) as u64;

/// The worker's side: free buffers, and the channel the spool thread returns used ones on.
pub struct ChunkPool {
    arena: Arc<Arena>,
    free: Vec<Chunk>,
    returns: Receiver<Chunk>,
    /// Buffers handed out of the arena so far (free, in use by calls, or on their way to disk
    /// and back).
    made: usize,
    /// Times a buffer was wanted while all of them were in use: audio dropped.
    pub exhausted: u64,
    /// Buffers handed out for the first time (a page of the arena first touched).
    pub fresh: u64,
    /// The arena could not grow (a full disk) and it was logged.
    disk_full_logged: bool,
}

/// Buffers on their way back from the spool thread at most (the rest wait there).
pub const RETURNS: usize = 16_384;

/// Buffers kept allocated beyond those handed out: what a burst of new calls takes between two
/// flush ticks.
const HEADROOM: usize = 4096;

impl ChunkPool {
    /// A pool over `arena`, and the sender the spool thread gives buffers back on.
    pub fn new(arena: Arc<Arena>) -> (ChunkPool, Sender<Chunk>) {
        // The spool thread never waits on it: what does not fit waits in the thread (see
        // `disk::Disk::give_back`).
        let (tx, rx) = crossbeam_channel::bounded(RETURNS);
        (
            ChunkPool {
                arena,
                free: Vec::with_capacity(RETURNS),
                returns: rx,
                made: 0,
                exhausted: 0,
                fresh: 0,
                disk_full_logged: false,
            },
            tx,
        )
    }

    /// A zeroed buffer, or `None` when every buffer is in use.
    pub fn take(&mut self) -> Option<Chunk> {
        if self.free.is_empty() {
            self.free.extend(self.returns.try_iter());
        }
        let mut c = match self.free.pop() {
            Some(c) => c,
            None => match self.fresh_chunk() {
                Some(c) => c,
                None => {
                    self.exhausted += 1;
                    return None;
                }
            },
        };
        c.bytes_mut().fill(0);
        Some(c)
    }

    /// A buffer never handed out before; its disk blocks are allocated first (normally done
    /// ahead, by [`ChunkPool::headroom`]). `None` when the arena is used up or the disk full.
    fn fresh_chunk(&mut self) -> Option<Chunk> {
        if self.made >= self.arena.backed() {
            if let Err(e) = self.arena.back(self.made + 1) {
                if !self.disk_full_logged {
                    self.disk_full_logged = true;
                    log::error!("audio buffers cannot grow: {e}");
                }
                return None;
            }
        }
        let c = self.arena.chunk(self.made)?;
        self.made += 1;
        self.fresh += 1;
        Some(c)
    }

    /// Allocates the arena's blocks ahead of the buffers the pool may hand out before its
    /// next call here (the flush tick): the packet path then never waits for the disk.
    pub fn headroom(&mut self) {
        if let Err(e) = self.arena.back(self.made + HEADROOM) {
            if !self.disk_full_logged {
                self.disk_full_logged = true;
                log::error!("audio buffers cannot grow: {e}");
            }
        }
    }

    /// A buffer that was not sent anywhere comes straight back.
    pub fn give(&mut self, mut c: Chunk) {
        c.release();
        self.free.push(c);
    }

    /// Buffers free now (those on their way back included).
    pub fn free_len(&mut self) -> usize {
        self.free.extend(self.returns.try_iter());
        self.free.len()
    }

    /// Buffers handed out of the arena so far, and how many it has.
    pub fn usage(&self) -> (usize, usize) {
        (self.made, self.arena.buffers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_bounded_reused_and_zeroed() {
        let arena = Arc::new(Arena::anonymous(2).expect("arena"));
        let (mut pool, back) = ChunkPool::new(arena);
        let mut a = pool.take().expect("first");
        a.bytes_mut()[7] = 9;
        let b = pool.take().expect("second");
        assert_eq!(pool.fresh, 2);
        assert!(pool.take().is_none(), "every buffer in use");
        assert_eq!(pool.exhausted, 1);
        back.send(a).expect("return");
        let a = pool.take().expect("returned buffer reused");
        assert!(a.bytes().iter().all(|&x| x == 0), "zeroed on reuse");
        pool.give(b);
        pool.give(a);
        assert_eq!(pool.usage(), (2, 2));
        assert_eq!(pool.free_len(), 2);
    }
}
