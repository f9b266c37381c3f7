//! Media-plane building blocks for CallTap: RTP/RTCP parsing, mapping RTP timing onto a
//! recording timeline, stream-quality estimation and audio decoding.
//!
//! Everything on the per-packet path parses borrowed buffers and writes into caller-provided
//! buffers, so the media worker never allocates per packet.

#![forbid(unsafe_code)]

pub mod codec;
pub mod quality;
pub mod rtcp;
pub mod rtp;
pub mod stream;
