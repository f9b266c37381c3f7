//! Types and logic shared by the XDP program (`recorder-ebpf`) and the daemon (`calltap`).
//!
//! Everything here is `no_std` and allocation-free so that the kernel side can use it. The
//! classifier in [`classify`] is the single implementation of "what is this frame and who gets
//! it": the XDP program runs it on live frames, and userspace runs the very same code on frames
//! from pcap replay or AF_PACKET, so both sources make identical decisions by construction (and a
//! test suite checks it through `BPF_PROG_TEST_RUN`).
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod classify;
pub mod wire;

pub use wire::*;
