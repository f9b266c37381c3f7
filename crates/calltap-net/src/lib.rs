//! Network-layer reassembly for CallTap.
//!
//! A passive recorder sees packets exactly as they crossed the wire: SIP over UDP may be split
//! into IP fragments, and SIP over TCP may be split, merged, reordered or retransmitted at will.
//! The SIP parser wants whole messages, so this crate rebuilds them:
//!
//! - [`ipfrag`] reassembles IPv4/IPv6 fragments into whole datagrams;
//! - [`tcp`] turns TCP segments into per-direction byte streams and can find the next SIP
//!   message start after data was lost ([`tcp::resync_sip`]).
//!
//! Everything here treats packet contents as hostile: lengths are checked, memory is bounded,
//! and state expires.

#![forbid(unsafe_code)]

pub mod ipfrag;
pub mod tcp;
