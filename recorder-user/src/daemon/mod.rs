//! The daemon, assembled from parts. Each part starts its threads and hands back what the
//! others need; each stops in its turn. `calltap run` (`cmd/run.rs`) is the list of
//! them; `calltap replay`, the tests and the benches drive the same [`workers::Workers`] inline
//! ([`replay`]).
//!
//! | part | what | file |
//! |------|------|------|
//! | capture | XDP (or AF_PACKET) on the mirror interfaces; one input per worker | `capture.rs`, `input.rs` |
//! | store: journal | the active-call journal, the calls an earlier run left | `store.rs` |
//! | media workers | one pinned thread per worker: RTP -> decode -> outputs | `media.rs` |
//! | control plane | live calls, recording rules, configuration reload | `control.rs` |
//! | signalling | one thread: SIP -> calls -> control messages | `signalling.rs` |
//! | store: CDRs and files | CDR writer (database or CSV), archiver | `store.rs` |
//! | publish | webhooks, `/metrics`, REST API, console | `publish.rs` |
//! | CDR thread | each finished call to its sinks, in order | `cdrs.rs` |
//!
//! Shutdown (SIGINT/SIGTERM; SIGHUP reloads) and the order between signalling and the media
//! workers are [`shutdown`]'s; what bounds the calls recorded at once is [`limits`]'s; the run
//! summary [`summary`]'s.

pub mod capture;
pub mod cdrs;
pub mod control;
pub mod input;
pub mod limits;
pub mod media;
pub mod publish;
pub mod replay;
pub mod shutdown;
pub mod signalling;
pub mod store;
pub mod summary;
pub mod workers;
