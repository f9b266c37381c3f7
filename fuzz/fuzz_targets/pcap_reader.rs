//! The pcap/pcapng reader on whole files: headers, block structure, interfaces and their
//! link types and timestamp resolutions, truncation, then each frame through the classifier
//! as `calltap replay` does.
//!
//! Invariants: every packet counted is handed out or counted as skipped; a frame is the file's
//! bytes (Ethernet) or a rewritten copy at most 14 bytes longer than the file; an error names an
//! offset inside the file; the classifier's offsets lie within each frame.
#![no_main]

use calltap::capture::{pcap::read_bytes, CaptureError};
use calltap_common::XdpConfig;
use calltap_fuzz::{tables::user_tables, within};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tables = user_tables(XdpConfig::default());
    let mut handed = 0u64;
    let result = read_bytes(data, "fuzz", |p| {
        handed += 1;
        assert!(within(data, p.frame) || p.frame.len() <= data.len() + 14);
        let v = calltap_common::classify::classify(p.frame, &tables);
        for off in [v.l3_off, v.l4_off, v.payload_off] {
            assert!(usize::from(off) <= p.frame.len());
        }
    });
    match result {
        Ok(summary) => assert_eq!(summary.packets, handed + summary.skipped, "{summary:?}"),
        Err(CaptureError::BadFile { offset, .. }) => {
            assert!(
                offset <= data.len() as u64,
                "error at {offset} of {}",
                data.len()
            )
        }
        Err(e) => panic!("not a file error: {e}"),
    }
});
