//! Which direction an SSRC belongs to, when endpoints alone cannot tell (one host relaying
//! both legs' media).

use super::call::ActiveCall;

/// Two SSRCs within this time of each other in one direction run concurrently.
pub(super) const CONCURRENT_NS: u64 = 100_000_000;
/// A moved SSRC is moved back if the stream it displaced does not send again within this.
pub(super) const CONFIRM_NS: u64 = 300_000_000;
pub(super) const MAX_SSRCS: usize = 8;

/// The SSRCs of a call and the direction each belongs to, kept inline (41 bytes among the
/// fields every packet touches) rather than in a `Vec` whose heap block would be one more
/// cache miss per packet.
#[derive(Clone, Copy, Default)]
pub(super) struct SsrcDirs {
    pub(super) ssrc: [u32; MAX_SSRCS],
    pub(super) dir: [u8; MAX_SSRCS],
    pub(super) len: u8,
}

impl SsrcDirs {
    pub(super) fn from_pairs(pairs: &[(u32, usize)]) -> SsrcDirs {
        let mut s = SsrcDirs::default();
        for &(ssrc, dir) in pairs {
            s.push(ssrc, dir);
        }
        s
    }

    pub(super) fn pairs(&self) -> Vec<(u32, usize)> {
        (0..usize::from(self.len))
            .map(|i| (self.ssrc[i], usize::from(self.dir[i])))
            .collect()
    }

    pub(super) fn index_of(&self, ssrc: u32) -> Option<usize> {
        self.ssrc[..usize::from(self.len)]
            .iter()
            .position(|&s| s == ssrc)
    }

    pub(super) fn get(&self, ssrc: u32) -> Option<usize> {
        self.index_of(ssrc).map(|i| usize::from(self.dir[i]))
    }

    pub(super) fn set(&mut self, ssrc: u32, dir: usize) {
        if let Some(i) = self.index_of(ssrc) {
            self.dir[i] = dir.min(1) as u8;
        }
    }

    /// Adds `ssrc` unless the table is full (later SSRCs then follow their endpoint).
    pub(super) fn push(&mut self, ssrc: u32, dir: usize) {
        let n = usize::from(self.len);
        if n < MAX_SSRCS {
            self.ssrc[n] = ssrc;
            self.dir[n] = dir.min(1) as u8;
            self.len += 1;
        }
    }
}

impl ActiveCall {
    /// The direction an RTP packet really travels. Endpoint matching says `by_endpoint`, which
    /// is wrong when one host (an SBC or PBX relaying media, captured on both legs) is named in
    /// both sides' SDP: then both streams match one side and would be mixed into one channel. A
    /// second SSRC that runs concurrently with the first in one direction while the other
    /// direction is silent is the other direction. If the first SSRC then stops instead (a phone
    /// that merely restarted its stream), the move is undone.
    pub(super) fn direction_of(&mut self, ssrc: u32, by_endpoint: usize, now: u64) -> usize {
        if let Some(dir) = self.ssrc_dirs.get(ssrc) {
            if let Some((moved, from, since)) = self.contender {
                if moved == ssrc && now.saturating_sub(since) > CONFIRM_NS {
                    // The displaced stream never spoke again: this was an SSRC change.
                    self.contender = None;
                    self.ssrc_dirs.set(ssrc, from);
                    return from;
                }
                if moved != ssrc && dir == from {
                    // The displaced stream goes on alongside: the move stands.
                    self.contender = None;
                }
            }
            return dir;
        }
        let d = &self.dirs[by_endpoint];
        let other = 1 - by_endpoint;
        let concurrent = d.ssrc.is_some_and(|cur| cur != ssrc)
            && d.last_ns
                .is_some_and(|t| now.saturating_sub(t) < CONCURRENT_NS);
        let dir = if concurrent && self.dirs[other].packets == 0 {
            self.contender = Some((ssrc, by_endpoint, now));
            other
        } else {
            by_endpoint
        };
        self.ssrc_dirs.push(ssrc, dir);
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::{SsrcDirs, MAX_SSRCS};

    #[test]
    fn ssrc_directions_are_kept_moved_and_bounded() {
        let mut s = SsrcDirs::default();
        assert_eq!(s.get(7), None);
        s.push(7, 0);
        s.push(9, 1);
        assert_eq!((s.get(7), s.get(9), s.get(8)), (Some(0), Some(1), None));
        s.set(7, 1);
        s.set(8, 0);
        assert_eq!(
            (s.get(7), s.get(8)),
            (Some(1), None),
            "only known SSRCs move"
        );
        for k in 0..20 {
            s.push(100 + k, (k % 2) as usize);
        }
        assert_eq!(usize::from(s.len), MAX_SSRCS, "bounded");
        assert_eq!(s.get(100 + MAX_SSRCS as u32 - 3), Some(1));
        assert_eq!(s.get(100 + MAX_SSRCS as u32 - 2), None, "past the bound");
        // The journal's form and back.
        let pairs = s.pairs();
        assert_eq!(pairs[..2], [(7, 1), (9, 1)]);
        assert_eq!(SsrcDirs::from_pairs(&pairs).pairs(), pairs);
    }
}
