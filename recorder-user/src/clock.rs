//! The wall clock as the CDRs, the database and the API carry it: nanoseconds since the Unix
//! epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the epoch (0 for a clock set before 1970).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// [`unix_ns`] as the database stores it (a signed 64-bit column).
pub fn unix_ns_i64() -> i64 {
    i64::try_from(unix_ns()).unwrap_or(i64::MAX)
}
