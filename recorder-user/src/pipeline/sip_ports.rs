//! The SIP ports the signalling worker knows: configured ones, and TCP ports found carrying SIP
//! by content (learned), which the classifier then sends here whole so their streams can be
//! reassembled.
//!
//! What the network says is not to be trusted, so learning is bounded, learned ports expire
//! when no SIP message has crossed them for a while, and a well-known port (below 1024) is
//! learned only once its server side has answered in SIP as well: one crafted segment to 443
//! or 53 must not turn the web or DNS into signalling.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

/// Most SIP ports known at once, configured plus learned: hostile traffic that looks like SIP
/// must not turn every port into a signalling port.
pub const MAX_SIP_PORTS: usize = 64;
/// Ports below this are the system's services (443, 53, ...): never an SDP media port, and
/// never learned as SIP from one direction alone.
pub const WELL_KNOWN_PORTS: u16 = 1024;
/// A port learned from a segment that only began a message is dropped again this soon unless
/// a whole SIP message crosses it.
const PROVISIONAL_NS: u64 = 30_000_000_000;
/// Well-known server endpoints with SIP seen in one direction, waiting for the other: bounded
/// like the ports themselves.
const MAX_EVIDENCE: usize = MAX_SIP_PORTS;

/// A learned port.
#[derive(Clone, Copy, Debug)]
struct Learned {
    /// When a SIP message (or, while provisional, the segment that began one) last crossed it.
    last_sip_ns: u64,
    /// A whole SIP message has crossed it.
    confirmed: bool,
}

/// What a well-known server endpoint has shown so far: (a request reached it, it sent a
/// response, when).
type Evidence = (bool, bool, u64);

/// Configured and learned SIP ports; see the module docs.
#[derive(Debug)]
pub struct SipPorts {
    configured: HashSet<u16>,
    learned: HashMap<u16, Learned>,
    evidence: HashMap<SocketAddr, Evidence>,
    idle_ns: u64,
}

impl SipPorts {
    /// No ports yet; learned ones expire after `idle_ns` without SIP.
    pub fn new(idle_ns: u64) -> SipPorts {
        SipPorts {
            configured: HashSet::new(),
            learned: HashMap::new(),
            evidence: HashMap::new(),
            idle_ns,
        }
    }

    pub fn set_idle_ns(&mut self, idle_ns: u64) {
        self.idle_ns = idle_ns;
    }

    /// Adds configured ports (a learned one becomes configured and no longer expires).
    pub fn configure(&mut self, ports: &[u16]) {
        for &p in ports {
            self.learned.remove(&p);
            self.evidence.retain(|server, _| server.port() != p);
            self.configured.insert(p);
        }
    }

    pub fn is_sip(&self, port: u16) -> bool {
        self.configured.contains(&port) || self.learned.contains_key(&port)
    }

    /// Whether an SDP endpoint on `port` must stay out of the media map: a SIP port (its
    /// signalling would be steered into a media worker) or a system service's.
    pub fn refuses_media(&self, port: u16) -> bool {
        port < WELL_KNOWN_PORTS || self.is_sip(port)
    }

    pub fn learned(&self) -> usize {
        self.learned.len()
    }

    /// A TCP segment between `src` and `dst` that begins a SIP message (a response when
    /// `response`), on ports that are not SIP ports: the server's port when it is to be learned
    /// now, so the message's next segments (which do not begin with SIP) reach the worker too.
    /// A well-known port waits for [`SipPorts::message`]'s proof instead.
    pub fn sniffed(&mut self, src: u16, dst: u16, response: bool, now: u64) -> Option<u16> {
        if self.is_sip(src) || self.is_sip(dst) {
            return None;
        }
        let server = if response { src } else { dst };
        if server < WELL_KNOWN_PORTS {
            return None;
        }
        self.add(server, now, false)
    }

    /// A whole SIP message (a request when `request`) went from `src` to `dst` over TCP: the
    /// learned port it crossed stays alive, and a port that is not known yet is learned now
    /// (a well-known one once the same server has also answered: a request to it and a
    /// response from it, which a sender cannot fake from its own address).
    pub fn message(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        request: bool,
        now: u64,
    ) -> Option<u16> {
        if self.is_sip(src.port()) || self.is_sip(dst.port()) {
            for p in [src.port(), dst.port()] {
                if let Some(l) = self.learned.get_mut(&p) {
                    l.last_sip_ns = l.last_sip_ns.max(now);
                    l.confirmed = true;
                }
            }
            return None;
        }
        let server = if request { dst } else { src };
        if server.port() >= WELL_KNOWN_PORTS {
            return self.add(server.port(), now, true);
        }
        if !self.evidence.contains_key(&server) && self.evidence.len() >= MAX_EVIDENCE {
            return None;
        }
        let e = self.evidence.entry(server).or_insert((false, false, now));
        if request {
            e.0 = true;
        } else {
            e.1 = true;
        }
        e.2 = now;
        if !(e.0 && e.1) {
            return None;
        }
        self.evidence.remove(&server);
        self.add(server.port(), now, true)
    }

    fn add(&mut self, port: u16, now: u64, confirmed: bool) -> Option<u16> {
        if self.configured.len() + self.learned.len() >= MAX_SIP_PORTS {
            return None;
        }
        self.learned.insert(
            port,
            Learned {
                last_sip_ns: now,
                confirmed,
            },
        );
        Some(port)
    }

    /// Forgets the learned ports no SIP has crossed for their idle time (a port never
    /// confirmed by a whole message: [`PROVISIONAL_NS`] at most), and stale evidence; the
    /// forgotten ports are appended to `out`.
    pub fn expire(&mut self, now: u64, out: &mut Vec<u16>) {
        let (idle, provisional) = (self.idle_ns, PROVISIONAL_NS.min(self.idle_ns));
        self.learned.retain(|&port, l| {
            let limit = if l.confirmed { idle } else { provisional };
            let keep = now.saturating_sub(l.last_sip_ns) <= limit;
            if !keep {
                out.push(port);
            }
            keep
        });
        self.evidence
            .retain(|_, e| now.saturating_sub(e.2) <= provisional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn at(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, host], port))
    }

    fn ports() -> SipPorts {
        let mut p = SipPorts::new(600 * S);
        p.configure(&[5060, 5080]);
        p
    }

    #[test]
    fn one_sniffed_segment_never_makes_a_well_known_port_sip() {
        let mut p = ports();
        for port in [443, 53, 80, 22] {
            assert_eq!(p.sniffed(40_000, port, false, S), None, "{port}");
            // Even a whole message in that one segment, request or response.
            assert_eq!(
                p.message(at(1, 40_000), at(2, port), true, S),
                None,
                "{port}"
            );
            assert!(!p.is_sip(port), "{port}");
            assert!(p.refuses_media(port));
        }
        assert_eq!(p.learned(), 0);
        // A "response" from another host's 443 (the sender's own) proves nothing about 2:443.
        assert_eq!(p.message(at(3, 443), at(1, 40_000), false, 2 * S), None);
        assert!(!p.is_sip(443));
        // That server answering in SIP is what proves it: then it is learned.
        assert_eq!(
            p.message(at(2, 443), at(1, 40_000), false, 2 * S),
            Some(443)
        );
        assert!(p.is_sip(443));
    }

    #[test]
    fn an_unprivileged_port_is_learned_at_once_and_forgotten_when_idle() {
        let mut p = ports();
        assert_eq!(p.sniffed(40_000, 6060, false, S), Some(6060));
        assert!(p.is_sip(6060) && p.refuses_media(6060));
        // Known now: neither the next segment nor the client's port are learned.
        assert_eq!(p.sniffed(40_000, 6060, false, S), None);
        assert_eq!(p.message(at(2, 6060), at(1, 40_000), false, 2 * S), None);
        assert!(!p.is_sip(40_000));
        let mut gone = Vec::new();
        p.expire(2 * S + 600 * S, &mut gone);
        assert!(
            gone.is_empty(),
            "SIP 600 s ago is not idle for longer than 600 s"
        );
        p.expire(3 * S + 600 * S, &mut gone);
        assert_eq!(gone, [6060]);
        assert!(!p.is_sip(6060) && !p.refuses_media(6060));
        // Configured ports never expire.
        assert!(p.is_sip(5060));
    }

    #[test]
    fn a_port_no_whole_message_crossed_goes_soon() {
        let mut p = ports();
        assert_eq!(p.sniffed(7070, 40_000, true, S), Some(7070));
        let mut gone = Vec::new();
        p.expire(S + PROVISIONAL_NS + 1, &mut gone);
        assert_eq!(gone, [7070]);
        // Confirmed by a whole message, it keeps the full idle time.
        assert_eq!(p.sniffed(40_000, 7070, false, S), Some(7070));
        p.message(at(1, 40_000), at(2, 7070), true, S);
        gone.clear();
        p.expire(S + PROVISIONAL_NS + 1, &mut gone);
        assert!(gone.is_empty());
    }

    #[test]
    fn learning_is_bounded() {
        let mut p = ports();
        let learned = (10_000..20_000)
            .filter_map(|port| p.sniffed(40_000, port, false, S))
            .count();
        assert_eq!(learned, MAX_SIP_PORTS - 2);
        // Well-known ports waiting for their answer are bounded too.
        for port in 1..1024 {
            p.message(at(1, 40_000), at(2, port), true, S);
        }
        assert!(p.evidence.len() <= MAX_EVIDENCE);
    }

    #[test]
    fn a_learned_port_that_becomes_configured_stays() {
        let mut p = ports();
        p.sniffed(40_000, 6060, false, S);
        p.configure(&[6060]);
        let mut gone = Vec::new();
        p.expire(u64::MAX, &mut gone);
        assert!(gone.is_empty());
        assert!(p.is_sip(6060));
    }
}
