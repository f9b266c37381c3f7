//! CallTap: a passive call recorder. Data flows one way:
//!
//! `capture` (XDP rings, AF_PACKET, pcap replay) -> `classify` -> `pipeline` (signalling worker:
//! SIP dialogs; media workers: RTP -> audio) -> `store` (WAV recordings, CDRs).

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
