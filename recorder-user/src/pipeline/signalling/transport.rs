//! SIP off the wire: fragments reassembled, TCP streams framed into messages, and TCP ports
//! learned as SIP (or forgotten again) by what crosses them.

use std::net::SocketAddr;

use calltap_common::PacketMeta;
use calltap_net::{
    ipfrag::{fragment_of, udp_ports},
    tcp::{parse_tcp, resync_sip, FlowKey},
};
use calltap_sip::{parse, parse_datagram, ParseError};

use super::SignallingWorker;
use crate::{capture::Record, classify::MediaTable, pipeline::ControlSink};

impl<T: MediaTable> SignallingWorker<T> {
    pub(super) fn fragment(&mut self, rec: &Record<'_>, sink: &mut dyn ControlSink) {
        self.stats.fragments += 1;
        let now = rec.meta.ts_ns;
        let Some(ip) = rec.frame.get(rec.meta.l3_off as usize..) else {
            return;
        };
        let Ok(Some(frag)) = fragment_of(ip) else {
            return;
        };
        let Ok(Some(whole)) = self.frags.push(frag, now) else {
            return;
        };
        self.stats.reassembled += 1;
        if whole.key.protocol != 17 {
            // SIP over TCP is segmented by TCP, not fragmented by IP; nothing to do.
            return;
        }
        let Some((sport, dport, payload)) = udp_ports(&whole.data) else {
            return;
        };
        let src = SocketAddr::new(whole.key.src, sport);
        let dst = SocketAddr::new(whole.key.dst, dport);
        // Reassembled datagrams may be RTP of a known call too, but RTP is never fragmented in
        // practice; only SIP is looked for here.
        let payload = payload.to_vec();
        self.datagram(&payload, src, dst, now, sink);
    }

    pub(super) fn datagram(
        &mut self,
        payload: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        now: u64,
        sink: &mut dyn ControlSink,
    ) {
        match parse_datagram(payload) {
            Ok(msg) => self.message(&msg, src, dst, now, sink),
            Err(_) => self.stats.malformed_sip += 1,
        }
    }

    pub(super) fn tcp_segment(
        &mut self,
        tcp: &[u8],
        m: &PacketMeta,
        src: SocketAddr,
        dst: SocketAddr,
        sink: &mut dyn ControlSink,
    ) {
        self.stats.tcp_segments += 1;
        let Ok((_, _, seg)) = parse_tcp(tcp) else {
            self.stats.malformed_sip += 1;
            return;
        };
        // Only content sniffing brings TCP on other ports here, so such a segment starts a SIP
        // message. The server side of the connection (where requests go, where responses come
        // from) is learned now, since the message's next segment will not start with SIP; a
        // well-known port only once it has answered in SIP (see `sip_ports`).
        let response = seg.payload.starts_with(b"SIP/2.0");
        if let Some(port) = self
            .sip_ports
            .sniffed(src.port(), dst.port(), response, m.ts_ns)
        {
            self.capture_as_sip(port);
        }
        let flow = FlowKey { src, dst };
        let data = self.tcp.push(flow, seg, m.ts_ns);
        // Frame as many messages as the stream holds; keep the rest for the next segment.
        let mut used = 0usize;
        let mut messages = Vec::new();
        let mut malformed = 0u64;
        while used < data.len() {
            match parse(&data[used..]) {
                Ok((msg, n)) => {
                    messages.push(msg);
                    used += n.max(1);
                }
                Err(ParseError::Incomplete) => break,
                Err(_) => {
                    malformed += 1;
                    // Skip to the next thing that looks like a SIP start line.
                    match resync_sip(&data[used + 1..]) {
                        Some(skip) => used += 1 + skip,
                        None => used = data.len(),
                    }
                }
            }
        }
        self.stats.malformed_sip += malformed;
        self.tcp.consume(&flow, used);
        for msg in messages {
            let request = msg.is_request();
            if let Some(port) = self.sip_ports.message(src, dst, request, m.ts_ns) {
                self.capture_as_sip(port);
            }
            self.message(&msg, src, dst, m.ts_ns, sink);
        }
    }

    /// SIP found on a TCP port that is not configured: have the classifier send every segment
    /// of that port here, or the segments that do not begin a message would never arrive and no
    /// stream could be reassembled.
    pub(super) fn capture_as_sip(&mut self, port: u16) {
        match self.table.learn_sip_port(port) {
            Ok(()) => {
                self.stats.learned_sip_ports += 1;
                log::info!("SIP found on TCP port {port}: capturing that port as SIP from now on");
                self.release_port(port);
            }
            Err(e) => {
                self.stats.media_table_errors += 1;
                log::warn!("cannot add SIP port {port} to the classifier: {e}");
            }
        }
    }

    /// Takes the learned SIP ports nothing has used for their idle time out of the classifier.
    pub(super) fn expire_sip_ports(&mut self, now: u64) {
        let mut gone = Vec::new();
        self.sip_ports.expire(now, &mut gone);
        for port in gone {
            self.stats.expired_sip_ports += 1;
            match self.table.forget_sip_port(port) {
                Ok(()) => log::info!("TCP port {port}: no SIP on it lately; no longer SIP"),
                Err(e) => {
                    self.stats.media_table_errors += 1;
                    log::warn!("cannot take SIP port {port} out of the classifier: {e}");
                }
            }
        }
    }
}
