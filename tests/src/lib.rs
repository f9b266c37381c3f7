//! The CallTap lab: a SPAN port built from network namespaces, real SIP/RTP peers (sipp) and a
//! real packet counter (tshark), shared by `cargo xtask lab|demo` and the end-to-end tests.
//!
//! ```text
//! ns ct-uac (198.18.0.1)  a0 ══ a1 ┐
//!                                  ├─ br0 in ns ct-sw ; tc: a1,b1 ingress -> mirred mirror -> m1
//! ns ct-uas (198.18.0.2+) b0 ══ b1 ┘
//! ns ct-sw m1 ══ m0 in ns ct-rec   (CallTap attaches XDP to m0)
//! ```
//!
//! Everything here shells out to the real tools (`ip`, `tc`, `sipp`, `tshark`): the point of the
//! lab is to exercise CallTap against the same kernel paths and peers a site would have.

pub mod api;
pub mod attack;
pub mod codec_ref;
pub mod corpus;
pub mod daemon;
pub mod files;
pub mod frames;
pub mod load;
pub mod netns;
pub mod postgres;
pub mod root;
pub mod rtp_pcap;
pub mod sipp;
pub mod spoof;
pub mod tshark;
pub mod tx;

pub use netns::{Lab, LabGuard};

/// Polls `f` (every 100 ms) until it returns Some, for at most `limit`: tests wait for an
/// event, never a fixed time.
pub fn wait_for<T>(
    what: &str,
    limit: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
