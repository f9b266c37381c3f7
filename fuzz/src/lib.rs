//! What the fuzz targets share: the op stream their inputs are read as, slice checks, and the
//! classifier's tables.
//!
//! Targets that replay sequences (the dialog tracker, TCP and IP fragment reassembly) read
//! their input as a few bytes of settings, then ops: a tag byte, then either a raw record (two bytes of big-endian length
//! and that many bytes, clamped to what is left) or a structured op that `arbitrary` builds
//! from the bytes that follow. Raw records are what `cargo xtask fuzz` writes as seeds from
//! captures (real messages, segments and fragments); structured ops let the fuzzer build what
//! captures rarely hold (overlaps that disagree, wrapping sequence numbers, forks).

use arbitrary::{Arbitrary, Unstructured};

pub mod tables;

/// Tag of a raw record in an op stream; seeds are made of these.
pub const RAW: u8 = 0;

/// An input read as ops (see the [crate docs](crate)).
pub struct Ops<'a> {
    u: Unstructured<'a>,
}

impl<'a> Ops<'a> {
    pub fn new(data: &'a [u8]) -> Ops<'a> {
        Ops {
            u: Unstructured::new(data),
        }
    }

    /// `N` bytes (zeros past the end of the input): settings read before the ops.
    pub fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let take = N.min(self.u.len());
        if let Ok(b) = self.u.bytes(take) {
            out[..take].copy_from_slice(b);
        }
        out
    }

    /// The next op's tag, `None` when the input is used up.
    pub fn tag(&mut self) -> Option<u8> {
        if self.u.is_empty() {
            return None;
        }
        self.u.bytes(1).ok().and_then(|b| b.first().copied())
    }

    /// A raw record: its length, then its bytes.
    pub fn raw(&mut self) -> &'a [u8] {
        let len = match self.u.bytes(2) {
            Ok(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => 0,
        };
        let len = len.min(self.u.len());
        self.u.bytes(len).unwrap_or_default()
    }

    /// A structured op (or whatever `arbitrary` makes of too few bytes).
    pub fn arbitrary<T: Arbitrary<'a>>(&mut self) -> Option<T> {
        T::arbitrary(&mut self.u).ok()
    }
}

/// Whether `inner` lies within `outer`: a parser's slice of its input must. An empty slice
/// may point anywhere (`&[]` is static), so it always does.
pub fn within(outer: &[u8], inner: &[u8]) -> bool {
    if inner.is_empty() {
        return true;
    }
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}
