//! Which call owns which media endpoint: SDP endpoints admitted and claimed in the classifier's
//! table, released, shared by several calls; and media that came before its call claimed it.

use std::net::SocketAddr;

use calltap_common::{flags, Class, MediaKey, MediaValue};
use calltap_sip::dialog::CallRef;

use super::{SignallingWorker, EARLY_GRACE_NS, EARLY_MAX};
use crate::{
    capture::Record,
    classify::MediaTable,
    pipeline::{media_key, Control, ControlSink, OwnedRecord},
};

impl<T: MediaTable> SignallingWorker<T> {
    /// Media no table entry claimed when it was captured. If a call has claimed its endpoints
    /// since (SIP is handled in capture order, so it has if the SDP came first), the packet goes
    /// to that call's worker; otherwise it waits briefly for SIP that may still come.
    pub(super) fn unclaimed_media(&mut self, rec: &Record<'_>, sink: &mut dyn ControlSink) {
        let owned = OwnedRecord {
            meta: rec.meta,
            frame: rec.frame.to_vec(),
        };
        if let Some(owned) = self.forward(owned, sink) {
            if self.pending.len() >= EARLY_MAX {
                self.pending.pop_front();
                self.stats.early_media_unclaimed += 1;
            }
            self.pending.push_back(owned);
        }
    }

    /// Hands an unclaimed packet to its owner; gives it back if no call owns its endpoints.
    pub(super) fn forward(
        &mut self,
        mut owned: OwnedRecord,
        sink: &mut dyn ControlSink,
    ) -> Option<OwnedRecord> {
        let rec = owned.record();
        let m = &rec.meta;
        let Some((src, dst)) = rec.endpoints() else {
            self.stats.early_media_unclaimed += 1;
            return None;
        };
        let rtcp = rec
            .payload()
            .get(1)
            .is_some_and(|b| (192..=223).contains(b));
        let (dst_key, src_key) = (media_key(dst), media_key(src));
        let owner = match self.owners.get(&dst_key) {
            Some(c) => Some((*c, true)),
            None => self.owners.get(&src_key).map(|c| (*c, false)),
        };
        let worker = match owner {
            Some((call, _)) => match self.routes.get(&call) {
                Some(route) => route.worker,
                None => return Some(owned),
            },
            // The tail of a call that just ended.
            None => {
                let ts = m.ts_ns;
                let ended = |k: &MediaKey| {
                    self.recently_ended
                        .get(k)
                        .filter(|(_, _, until)| ts <= *until)
                        .map(|(_, w, _)| *w)
                };
                match ended(&dst_key).or_else(|| ended(&src_key)) {
                    Some(w) => w,
                    None => return Some(owned),
                }
            }
        };
        let matched_dst = owner.is_some_and(|(_, d)| d);
        owned.meta.class = if rtcp { Class::Rtcp } else { Class::Rtp } as u8;
        owned.meta.target = worker;
        if matched_dst {
            owned.meta.flags |= flags::MATCH_DST;
        }
        self.stats.early_media_forwarded += 1;
        sink.send(worker, Control::Packet(Box::new(owned)));
        None
    }

    /// Retries waiting media after new endpoints were claimed, and gives up on old entries.
    pub(super) fn retry_pending(&mut self, now: u64, sink: &mut dyn ControlSink) {
        for _ in 0..self.pending.len() {
            let Some(owned) = self.pending.pop_front() else {
                break;
            };
            if let Some(back) = self.forward(owned, sink) {
                if now.saturating_sub(back.meta.ts_ns) > EARLY_GRACE_NS {
                    self.stats.early_media_unclaimed += 1;
                } else {
                    self.pending.push_back(back);
                }
            }
        }
    }

    /// A port became a SIP port: SDP endpoints on it lose their claim (the classifier decides
    /// SIP first anyway; the claim must not outlive the port's change of role either).
    pub(super) fn release_port(&mut self, port: u16) {
        let claimed: Vec<(MediaKey, CallRef)> = self
            .owners
            .iter()
            .filter(|(k, _)| k.port == port)
            .map(|(k, c)| (*k, *c))
            .collect();
        for (key, call) in claimed {
            self.release(&key, call);
            self.refused(call, format_args!("released (port {port} now carries SIP)"));
        }
    }

    /// Counts an SDP endpoint of `call` kept out of the media map, and says so once per call.
    pub(super) fn refused(&mut self, call: CallRef, what: std::fmt::Arguments<'_>) {
        self.stats.sdp_endpoints_refused += 1;
        if let Some(route) = self.routes.get_mut(&call) {
            if !route.refused_logged {
                route.refused_logged = true;
                log::warn!(
                    "call {}: SDP media endpoint {what}: no traffic is steered to the call by it",
                    route.call_id
                );
            }
        }
    }

    /// Forgets ended calls' endpoints once their grace period is over.
    pub(super) fn expire_recently_ended(&mut self, now: u64) {
        if !self.recently_ended.is_empty() {
            self.recently_ended.retain(|_, (_, _, until)| *until >= now);
        }
    }

    /// The SDP endpoints of `call` that may be claimed: none when either is on a SIP port or
    /// below 1024 (an SDP naming a proxy's signalling port, or a system service, is hostile or
    /// broken; its media is not worth steering any traffic for).
    pub(super) fn admit_media(
        &mut self,
        call: CallRef,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let Some(refused) = rtp
            .iter()
            .chain(rtcp.iter())
            .find(|a| self.sip_ports.refuses_media(a.port()))
        else {
            return (rtp, rtcp);
        };
        let why = if self.sip_ports.is_sip(refused.port()) {
            "a SIP port"
        } else {
            "a port below 1024"
        };
        self.refused(call, format_args!("{refused} refused ({why})"));
        (None, None)
    }

    /// Steers `key` to `worker` for `call`. Another live call on the same endpoint marks it
    /// shared, so packets sent to it are told apart by their source.
    pub(super) fn claim(&mut self, key: MediaKey, call: CallRef, worker: u32) {
        let shared = match self.owners.insert(key, call) {
            Some(prev) if prev != call => self.routes.contains_key(&prev),
            // The owner claims again (re-INVITE): shared as before.
            Some(_) => self.shared.contains(&key),
            None => false,
        };
        if shared {
            self.shared.insert(key);
        } else {
            self.shared.remove(&key);
        }
        let flags = if shared {
            calltap_common::media_flags::SHARED
        } else {
            0
        };
        if self
            .table
            .insert(key, MediaValue { worker, flags })
            .is_err()
        {
            self.stats.media_table_errors += 1;
        }
    }

    pub(super) fn release(&mut self, key: &MediaKey, call: CallRef) {
        if self.owners.get(key) == Some(&call) {
            self.owners.remove(key);
            self.shared.remove(key);
            self.table.remove(key);
        }
    }
}
