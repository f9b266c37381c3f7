//! SIP signalling for a passive call recorder.
//!
//! The recorder only *watches* mirrored traffic, so everything here is built to survive what a
//! real network delivers: retransmissions, forked responses, messages from dialogs whose start
//! was never seen, truncated or hostile bytes. Nothing panics on input; every structure is
//! bounded.
//!
//! * [`parse`] / [`parse_datagram`] frame and parse one SIP message (stream or UDP datagram).
//! * [`Message`] and [`NameAddr`] give owned, case-insensitive access to what was parsed.
//! * [`sdp`] extracts the media endpoints and codecs from an SDP body.
//! * [`dialog`] follows INVITE dialogs and turns messages into [`dialog::CallEvent`]s.

#![forbid(unsafe_code)]

pub mod dialog;
mod message;
mod parse;
pub mod sdp;

pub use message::{Header, Message, NameAddr, StartLine};
pub use parse::{parse, parse_datagram, ParseError, MAX_HEADERS, MAX_MESSAGE_LEN};
