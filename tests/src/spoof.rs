//! Spoofed in-dialog requests (issue #14 item 5): anyone who knows a call's Call-ID and tags
//! (a participant does, and so does anyone on the wire) can send a BYE from, or to, an address
//! that is not on the dialog's signalling path. A mirror port carries such a BYE even though no
//! party ever receives it; a recorder that matches on Call-ID and tags alone ends the
//! recording while the call goes on.
//!
//! `calltap-attack spoof-bye` learns each dialog from its 200 OK on the wire
//! ([`Dialog::from_frame`]) and then sends [`spoofed_bye`]s of both kinds ([`Spoof`]).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::frames::{self, Ipv4, IPPROTO_UDP};

/// An address on no dialog's path: the source of [`Spoof::UnknownSource`] BYEs.
pub const SPOOF_SOURCE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 66, 6), 5060);
/// An address no party has: where [`Spoof::UnknownDestination`] BYEs go.
pub const SPOOF_DESTINATION: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 250), 5060);

/// What a participant knows of a dialog, read from a 2xx answer to its INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    /// The whole From and To header values, tags included.
    pub from: String,
    pub to: String,
    /// Who sent the INVITE (the 2xx's destination) and who answered it (its source).
    pub caller: SocketAddrV4,
    pub callee: SocketAddrV4,
}

/// Where a spoofed BYE comes from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spoof {
    /// From [`SPOOF_SOURCE`] to the callee, as if the caller hung up.
    UnknownSource,
    /// From the caller's own address to [`SPOOF_DESTINATION`].
    UnknownDestination,
}

impl Spoof {
    /// The reason CallTap's CDR gives for rejecting it (`rejected_requests[].reason`).
    pub fn reason(self) -> &'static str {
        match self {
            Spoof::UnknownSource => "unknown_source",
            Spoof::UnknownDestination => "unknown_destination",
        }
    }
}

impl Dialog {
    /// The dialog a frame (Ethernet, IPv4, UDP) answers, when it is a 2xx to an INVITE.
    pub fn from_frame(frame: &[u8]) -> Option<Dialog> {
        if frame.get(12..14)? != [0x08, 0x00] || frame.get(23)? != &IPPROTO_UDP {
            return None;
        }
        let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
        let l4 = 14 + ihl;
        let ip = |o: usize| {
            Some(Ipv4Addr::new(
                frame[o],
                frame[o + 1],
                frame[o + 2],
                *frame.get(o + 3)?,
            ))
        };
        let (src, dst) = (ip(26)?, ip(30)?);
        let port = |o: usize| Some(u16::from_be_bytes([*frame.get(o)?, *frame.get(o + 1)?]));
        let (sport, dport) = (port(l4)?, port(l4 + 2)?);
        let text = std::str::from_utf8(frame.get(l4 + 8..)?).ok()?;
        let (head, _) = text
            .split_once("\r\n\r\n")
            .or_else(|| text.split_once("\n\n"))?;
        let mut lines = head.lines();
        if !lines.next()?.starts_with("SIP/2.0 2") {
            return None;
        }
        let (mut call_id, mut from, mut to, mut cseq) = (None, None, None, None);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_string();
            match name.trim().to_ascii_lowercase().as_str() {
                "call-id" | "i" => call_id = Some(value),
                "from" | "f" => from = Some(value),
                "to" | "t" => to = Some(value),
                "cseq" => cseq = Some(value),
                _ => {}
            }
        }
        if !cseq?.ends_with("INVITE") {
            return None;
        }
        Some(Dialog {
            call_id: call_id?,
            from: from?,
            to: to?,
            caller: SocketAddrV4::new(dst, dport),
            callee: SocketAddrV4::new(src, sport),
        })
    }
}

/// Writes a BYE for `dialog` sent the `how` way into `buf` (a whole frame).
pub fn spoofed_bye(
    dialog: &Dialog,
    how: Spoof,
    n: u32,
    macs: ([u8; 6], [u8; 6]),
    buf: &mut Vec<u8>,
) {
    let (from_addr, to_addr) = match how {
        Spoof::UnknownSource => (SPOOF_SOURCE, dialog.callee),
        Spoof::UnknownDestination => (dialog.caller, SPOOF_DESTINATION),
    };
    let mut text = String::with_capacity(512);
    let _ = write!(
        text,
        "BYE sip:callee@{to_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {from_addr};branch=z9hG4bKspoof{n}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 90{n} BYE\r\nContent-Length: 0\r\n\r\n",
        dialog.from, dialog.to, dialog.call_id
    );
    frames::begin(buf, macs.0, macs.1, 8);
    buf.extend_from_slice(text.as_bytes());
    let ip = Ipv4 {
        src: *from_addr.ip(),
        dst: *to_addr.ip(),
        proto: IPPROTO_UDP,
        tos: 0,
        id: n as u16,
        frag: 0,
    };
    frames::finish_ipv4_udp(buf, &ip, from_addr.port(), to_addr.port());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_frame() -> Vec<u8> {
        let mut buf = Vec::new();
        frames::begin(&mut buf, [2; 6], [3; 6], 8);
        buf.extend_from_slice(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.18.0.1:5061;branch=z9hG4bK1\r\nFrom: \"Lab Caller\" <sip:caller1@198.18.0.1:5061>;tag=77lab1\r\nTo: <sip:lab0@198.18.0.2:5060>;tag=78uas1\r\nCall-ID: 1-77@198.18.0.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        );
        let ip = Ipv4 {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 0, 1),
            proto: IPPROTO_UDP,
            tos: 0,
            id: 1,
            frag: 0,
        };
        frames::finish_ipv4_udp(&mut buf, &ip, 5060, 5061);
        buf
    }

    #[test]
    fn a_dialog_is_learned_from_its_answer_and_spoofed_both_ways() {
        let d = Dialog::from_frame(&ok_frame()).expect("a 200 OK to INVITE");
        assert_eq!(d.call_id, "1-77@198.18.0.1");
        assert_eq!(d.to, "<sip:lab0@198.18.0.2:5060>;tag=78uas1");
        assert_eq!(d.caller, "198.18.0.1:5061".parse().expect("addr"));
        assert_eq!(d.callee, "198.18.0.2:5060".parse().expect("addr"));

        let mut buf = Vec::new();
        spoofed_bye(&d, Spoof::UnknownSource, 1, ([2; 6], [2; 6]), &mut buf);
        assert_eq!(&buf[26..30], &[198, 19, 66, 6]);
        assert_eq!(&buf[30..34], &[198, 18, 0, 2]);
        let text = String::from_utf8_lossy(&buf[42..]).into_owned();
        assert!(text.starts_with("BYE "), "{text}");
        assert!(
            text.contains("\r\nFrom: \"Lab Caller\" <sip:caller1@198.18.0.1:5061>;tag=77lab1\r\n")
        );
        assert!(text.contains("\r\nCall-ID: 1-77@198.18.0.1\r\n"));
        // A BYE is not an answer: learning from it gives nothing.
        assert_eq!(Dialog::from_frame(&buf), None);

        spoofed_bye(&d, Spoof::UnknownDestination, 2, ([2; 6], [2; 6]), &mut buf);
        assert_eq!(&buf[26..30], &[198, 18, 0, 1]);
        assert_eq!(&buf[30..34], &[198, 18, 0, 250]);
    }
}
