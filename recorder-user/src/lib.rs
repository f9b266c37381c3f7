//! CallTap: a passive call recorder. Data flows one way:
//!
//! `capture` (XDP rings, AF_PACKET, pcap replay) -> `classify` -> `pipeline` (signalling worker:
//! SIP dialogs; media workers: RTP -> decode -> the call's audio outputs) -> `store` (WAV
//! recordings, CDRs) -> `publish` (API, metrics, webhooks, console); `daemon` assembles the
//! parts and `cmd` runs them. Imports follow the same direction. Each area declares and reads
//! its own configuration section ([`settings`]); [`config::Config`] only composes them.
//!
//! Where to add a codec (`calltap_media::codec`), an audio output
//! ([`pipeline::media::outputs`]), an API route ([`publish::api`]), a configuration key
//! ([`config`]) or a part of the daemon ([`daemon`]): each of those modules says how, and the
//! README's Layout section lists them in one place.

pub mod capture;
pub mod classify;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod limits;
pub mod pipeline;
pub mod publish;
pub mod queues;
pub mod reload;
pub mod rules;
pub mod runtime;
pub mod settings;
pub mod store;
