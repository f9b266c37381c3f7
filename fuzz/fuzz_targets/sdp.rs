//! SDP parsing: what the tracker turns into media endpoints.
//!
//! Invariants: the section and codec bounds hold; an endpoint is only given for an enabled,
//! addressed stream not on hold, on the m= line's port and the address in effect; RTCP only
//! beside RTP; a hold address never receives; the audio stream is one of the sections.
#![no_main]

use calltap_sip::sdp::{parse, MAX_CODECS, MAX_MEDIA};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sd) = parse(data) else {
        return;
    };
    assert!(sd.media.len() <= MAX_MEDIA);
    for m in &sd.media {
        assert!(m.codecs.len() <= MAX_CODECS);
        let hold = m.connection.is_some_and(|a| a.is_unspecified());
        match m.rtp {
            Some(rtp) => {
                assert_eq!(rtp.port(), m.port);
                assert_ne!(m.port, 0);
                assert_eq!(Some(rtp.ip()), m.connection);
                assert!(!hold);
            }
            None => assert!(m.port == 0 || m.connection.is_none() || hold, "{m:?}"),
        }
        assert!(m.rtp.is_some() || m.rtcp.is_none(), "{m:?}");
        if m.rtcp_mux {
            assert_eq!(m.rtcp, m.rtp);
        }
        if hold {
            assert!(!m.direction.receives(), "{m:?}");
        }
    }
    if let Some(audio) = sd.audio() {
        assert!(audio.is_audio());
        assert!(sd.media.iter().any(|m| std::ptr::eq(m, audio)));
    }
});
