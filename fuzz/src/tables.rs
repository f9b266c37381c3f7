//! The classifier's tables for the classifier targets: the SIP ports and media endpoints of
//! `recorder-user/tests/xdp_classifier.rs`, so frames built like its cases (and mutations of
//! them) reach every branch, the media map's included.

use calltap::classify::{MediaTable, SharedMediaTable, UserTables};
use calltap_common::{media_flags, MediaKey, MediaValue, XdpConfig};

pub const SIP_PORTS: &[u16] = &[5060, 5080];

const A: [u8; 4] = [198, 18, 0, 1];
const B: [u8; 4] = [198, 18, 0, 2];
const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Endpoints of calls on workers 0-3, one shared by calls, and one a hostile SDP claimed on
/// a SIP port.
pub fn media_entries() -> Vec<(MediaKey, MediaValue)> {
    let owner = |worker, flags| MediaValue { worker, flags };
    vec![
        (MediaKey::v4(B, 20000), owner(1, 0)),
        (MediaKey::v4(B, 20001), owner(1, 0)),
        (MediaKey::v6(V6_B, 22000), owner(0, 0)),
        (MediaKey::v4(B, 24000), owner(0, media_flags::SHARED)),
        (MediaKey::v4(A, 34000), owner(2, 0)),
        (MediaKey::v4(B, 5060), owner(3, 0)),
        // A worker index past the rings: the classifier must still name a ring.
        (MediaKey::v4(A, 36000), owner(200, 0)),
    ]
}

/// Puts [`media_entries`] into `table`.
pub fn fill(table: &mut impl MediaTable) -> Result<(), String> {
    for (k, v) in media_entries() {
        table.insert(k, v)?;
    }
    Ok(())
}

/// Userspace tables with the entries above.
pub fn user_tables(config: XdpConfig) -> UserTables {
    let mut table = SharedMediaTable::default();
    // A process-local map: inserting cannot fail.
    let _ = fill(&mut table);
    UserTables::new(config, SIP_PORTS, table)
}
