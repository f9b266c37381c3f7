//! Where a dialog's signalling legitimately comes from and goes to.
//!
//! A mirror port carries requests no party ever receives: anyone who knows a dialog's Call-ID
//! and tags (a participant does) can send a BYE to an unused address the mirror sees, and a
//! tracker matching on Call-ID and tags alone would end the recording while the call goes on.
//! So each dialog keeps the addresses its own messages showed to be on its signalling path: the
//! source and destination of every hop of its INVITE and of the responses the mirror saw, and
//! the hosts its Via, Contact and Record-Route headers name (the parties and the proxies that
//! stay in the path). An in-dialog request that would change the call must come from one of
//! them and go to one of them; requests through proxies and B2BUAs qualify, since those are
//! hops the INVITE and its answer took too. Addresses are compared without ports: a party may
//! send from another port than it listens on (TCP, or a new connection).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::message::{list_items, name_addr_host, param};
use crate::Message;

/// Most addresses remembered per dialog. The first learned are the INVITE's own hops and Via
/// hosts, the ones that matter; more only come from long proxy chains or hostile headers.
pub const MAX_PATH_ADDRS: usize = 16;

/// Why an in-dialog request was not acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Sent from an address that is not on the dialog's signalling path.
    UnknownSource,
    /// Sent to an address that is not on the dialog's signalling path (e.g. an unused address
    /// only the mirror port sees).
    UnknownDestination,
}

impl RejectReason {
    /// Stable name for CDRs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnknownSource => "unknown_source",
            RejectReason::UnknownDestination => "unknown_destination",
        }
    }
}

/// The addresses on one dialog's signalling path (see the [module docs](self)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalPath {
    addrs: Vec<IpAddr>,
    /// A Contact or Record-Route named a host by DNS name: in-dialog requests may then go to an
    /// address none of the dialog's messages showed, so where they go is not checked.
    #[serde(default)]
    named_hops: bool,
}

impl SignalPath {
    /// Whether `ip` is on the path.
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip.to_canonical())
    }

    /// Whether nothing is known (a dialog journaled by a version that did not keep its path):
    /// then nothing is checked.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Checks an in-dialog request sent from `src` to `dst`.
    pub fn check(&self, src: SocketAddr, dst: SocketAddr) -> Result<(), RejectReason> {
        if self.is_empty() {
            return Ok(());
        }
        if !self.knows(src.ip()) {
            return Err(RejectReason::UnknownSource);
        }
        if !self.named_hops && !self.knows(dst.ip()) {
            return Err(RejectReason::UnknownDestination);
        }
        Ok(())
    }

    /// Learns the hop `src` -> `dst` of a message of the dialog and the hosts its Via, Contact
    /// and Record-Route headers name. Call only for messages already known to belong to the
    /// path (see the tracker), or a forged message would widen it.
    pub fn learn(&mut self, msg: &Message, src: SocketAddr, dst: SocketAddr) {
        self.add(src.ip());
        self.add(dst.ip());
        for via in msg.headers_named("Via").flat_map(list_items) {
            let (host, received) = via_hosts(via);
            for ip in [host, received].into_iter().flatten() {
                self.add(ip);
            }
        }
        for value in msg
            .headers_named("Contact")
            .chain(msg.headers_named("Record-Route"))
        {
            // `Contact: *` (REGISTER only) or an item without a URI has nothing to learn.
            for host in list_items(value).filter_map(name_addr_host) {
                match host.parse::<IpAddr>() {
                    Ok(ip) => self.add(ip),
                    Err(_) => self.named_hops = true,
                }
            }
        }
    }

    fn add(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if !ip.is_unspecified() && !self.addrs.contains(&ip) && self.addrs.len() < MAX_PATH_ADDRS {
            self.addrs.push(ip);
        }
    }
}

/// The sent-by host of one Via value (`SIP/2.0/UDP host:port;branch=...;received=ip`) and its
/// `received` parameter, when they are IP addresses.
fn via_hosts(via: &str) -> (Option<IpAddr>, Option<IpAddr>) {
    let (head, params) = via.split_once(';').unwrap_or((via, ""));
    // "SIP/2.0/UDP host:port", with optional blanks around the slashes: the host is last.
    let host = head.split_whitespace().last().and_then(|sent_by| {
        let host = match sent_by.strip_prefix('[') {
            Some(v6) => v6.split(']').next(),
            None => sent_by.split(':').next(),
        };
        host?.parse().ok()
    });
    let received = param(params, "received")
        .map(|r| r.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|r| r.parse().ok());
    (host, received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_datagram;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn msg(headers: &str) -> Message {
        let raw = format!(
            "INVITE sip:b@example.com SIP/2.0\r\n{headers}From: <sip:a@x>;tag=1\r\n\
             To: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        parse_datagram(raw.as_bytes()).expect("test message parses")
    }

    #[test]
    fn learns_hops_via_contact_and_record_route() {
        let m = msg(
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKp;received=198.51.100.7, \
             SIP / 2.0 / TCP [2001:db8::5]:5061;branch=z9hG4bKa\r\n\
             Via: SIP/2.0/UDP phone.example.com;branch=z9hG4bKb\r\n\
             Record-Route: <sip:10.9.9.9;lr>, \"p, 2\" <sip:10.9.9.8;lr>\r\n\
             Contact: <sip:a@[::ffff:10.1.1.1]:5060>\r\n",
        );
        let mut p = SignalPath::default();
        p.learn(&m, sa("10.0.0.1:5060"), sa("10.0.0.2:5060"));
        for ip in [
            "10.0.0.1",
            "10.0.0.2",
            "192.0.2.10",
            "198.51.100.7",
            "2001:db8::5",
            "10.9.9.9",
            "10.9.9.8",
            "10.1.1.1",
        ] {
            assert!(p.knows(ip.parse().expect("ip")), "{ip}: {p:?}");
        }
        // Via names a host by name: that says nothing about where requests go.
        assert!(!p.named_hops);
        assert_eq!(p.check(sa("10.9.9.9:1234"), sa("10.1.1.1:5060")), Ok(()));
        assert_eq!(
            p.check(sa("10.0.0.66:5060"), sa("10.0.0.2:5060")),
            Err(RejectReason::UnknownSource)
        );
        assert_eq!(
            p.check(sa("10.0.0.1:5060"), sa("10.0.0.77:5060")),
            Err(RejectReason::UnknownDestination)
        );
    }

    #[test]
    fn a_named_route_leaves_destinations_unchecked() {
        let m = msg("Record-Route: <sip:proxy.example.com;lr>\r\n");
        let mut p = SignalPath::default();
        p.learn(&m, sa("10.0.0.1:5060"), sa("10.0.0.2:5060"));
        assert_eq!(p.check(sa("10.0.0.1:5060"), sa("10.0.0.77:5060")), Ok(()));
        assert_eq!(
            p.check(sa("10.0.0.66:5060"), sa("10.0.0.2:5060")),
            Err(RejectReason::UnknownSource)
        );
    }

    #[test]
    fn bounded_and_empty_checks_nothing() {
        let p = SignalPath::default();
        assert_eq!(p.check(sa("1.1.1.1:1"), sa("2.2.2.2:2")), Ok(()));
        let vias: String = (0..100)
            .map(|i| format!("Via: SIP/2.0/UDP 10.0.{i}.1;branch=z9hG4bK{i}\r\n"))
            .collect();
        let mut p = SignalPath::default();
        p.learn(&msg(&vias), sa("10.0.0.1:5060"), sa("10.0.0.2:5060"));
        assert_eq!(p.addrs.len(), MAX_PATH_ADDRS);
    }
}
