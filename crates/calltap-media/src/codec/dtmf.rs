//! RFC 4733 telephone-event (DTMF) detection from RTP payloads.
//!
//! Senders repeat every event packet while the key is held and send the final "end" packet
//! three times for robustness, all with the same RTP timestamp (the event's start). The
//! detector reports each event once, when its first end packet arrives, and also recovers
//! events whose end packets were all lost once the next event begins.

/// One detected key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtmf {
    /// '0'-'9', '*', '#', 'A'-'D', or 'F' for hook flash.
    pub digit: char,
    /// Duration in RTP timestamp units, as reported by the sender.
    pub duration: u32,
    /// Power level in -dBm0 (0 is loudest).
    pub volume: u8,
    /// RTP timestamp of the event's start.
    pub timestamp: u32,
}

/// Event codes 0-16 (RFC 4733 §3.2) as characters.
fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        16 => Some('F'),
        _ => None,
    }
}

/// Per-stream RFC 4733 state.
#[derive(Debug, Clone, Default)]
pub struct DtmfDetector {
    /// Event in progress (no end packet seen yet).
    current: Option<Dtmf>,
    /// Start timestamp of the last reported event: its redundant end packets are ignored.
    reported: Option<u32>,
    /// Completed events not yet returned: one packet can complete two events (a recovered
    /// unfinished one plus its successor), but `push` returns one at a time.
    pending: [Option<Dtmf>; 2],
}

impl DtmfDetector {
    /// Feeds one telephone-event payload with its RTP timestamp; returns a digit when one
    /// completes. Malformed payloads and non-DTMF events are ignored.
    pub fn push(&mut self, rtp_ts: u32, payload: &[u8]) -> Option<Dtmf> {
        let (first, second) = self.accept(rtp_ts, payload);
        for d in [first, second].into_iter().flatten() {
            self.enqueue(d);
        }
        self.dequeue()
    }

    /// Reports a completed event not yet returned, or else the event still in progress (for
    /// call teardown before its end packet arrived).
    pub fn flush(&mut self) -> Option<Dtmf> {
        if let Some(d) = self.dequeue() {
            return Some(d);
        }
        let cur = self.current.take()?;
        self.reported = Some(cur.timestamp);
        Some(cur)
    }

    fn enqueue(&mut self, d: Dtmf) {
        match &mut self.pending {
            [slot @ None, _] | [Some(_), slot @ None] => *slot = Some(d),
            // Three events completing within one packet interval cannot come from a keypad;
            // dropping the newest keeps the queue bounded.
            [Some(_), Some(_)] => {}
        }
    }

    fn dequeue(&mut self) -> Option<Dtmf> {
        let [a, b] = &mut self.pending;
        let d = a.take();
        *a = b.take();
        d
    }

    /// Applies one payload; returns events completed by it, oldest first.
    fn accept(&mut self, rtp_ts: u32, payload: &[u8]) -> (Option<Dtmf>, Option<Dtmf>) {
        let &[event, flags, d0, d1, ..] = payload else {
            return (None, None);
        };
        let Some(digit) = digit_of(event) else {
            return (None, None);
        };
        if self.reported == Some(rtp_ts) {
            return (None, None);
        }
        let end = flags & 0x80 != 0;
        let this = Dtmf {
            digit,
            duration: u32::from(u16::from_be_bytes([d0, d1])),
            volume: flags & 0x3f,
            timestamp: rtp_ts,
        };
        // A different event started without the previous one ever ending: report the old one.
        let abandoned = match self.current {
            Some(cur) if cur.timestamp != rtp_ts => self.current.take(),
            _ => None,
        };
        let finished = if end {
            self.current = None;
            self.reported = Some(rtp_ts);
            Some(this)
        } else {
            let duration = self.current.map_or(0, |c| c.duration).max(this.duration);
            self.current = Some(Dtmf { duration, ..this });
            None
        };
        match abandoned {
            Some(a) => (Some(a), finished),
            None => (finished, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [event, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]
    }

    #[test]
    fn digits_with_redundant_end_packets() {
        let mut det = DtmfDetector::default();
        let mut got = Vec::new();
        for (ts, event) in [
            (1000u32, 1u8),
            (3000, 11),
            (5000, 10),
            (7000, 15),
            (9000, 16),
        ] {
            for d in [160u16, 320, 480] {
                got.extend(det.push(ts, &ev(event, false, d)));
            }
            for _ in 0..3 {
                got.extend(det.push(ts, &ev(event, true, 640)));
            }
        }
        let digits: String = got.iter().map(|d| d.digit).collect();
        assert_eq!(digits, "1#*DF");
        assert!(got.iter().all(|d| d.duration == 640 && d.volume == 10));
        assert_eq!(got[1].timestamp, 3000);
    }

    #[test]
    fn same_digit_twice() {
        let mut det = DtmfDetector::default();
        assert_eq!(det.push(100, &ev(5, false, 160)), None);
        assert_eq!(det.push(100, &ev(5, true, 400)).map(|d| d.digit), Some('5'));
        assert_eq!(det.push(100, &ev(5, true, 400)), None);
        assert_eq!(det.push(900, &ev(5, true, 400)).map(|d| d.digit), Some('5'));
    }

    #[test]
    fn lost_end_packets() {
        let mut det = DtmfDetector::default();
        assert_eq!(det.push(100, &ev(2, false, 160)), None);
        assert_eq!(det.push(100, &ev(2, false, 320)), None);
        // Next event begins: the unfinished '2' is reported with its last known duration.
        let d = det.push(2000, &ev(3, false, 160)).unwrap();
        assert_eq!((d.digit, d.duration), ('2', 320));
        assert_eq!(
            det.push(2000, &ev(3, true, 480)).map(|d| d.digit),
            Some('3')
        );
        // Unfinished followed directly by a single end packet: both are reported, in order.
        assert_eq!(det.push(4000, &ev(7, false, 160)), None);
        assert_eq!(
            det.push(6000, &ev(8, true, 160)).map(|d| d.digit),
            Some('7')
        );
        assert_eq!(
            det.push(6000, &ev(8, true, 160)).map(|d| d.digit),
            Some('8')
        );
        assert_eq!(det.push(6000, &ev(8, true, 160)), None);
        assert_eq!(det.push(8000, &ev(9, false, 160)), None);
        assert_eq!(det.flush().map(|d| d.digit), Some('9'));
        assert_eq!(det.flush(), None);
    }

    #[test]
    fn malformed_ignored() {
        let mut det = DtmfDetector::default();
        assert_eq!(det.push(1, &[1, 0x80, 0]), None);
        assert_eq!(det.push(1, &ev(40, true, 100)), None);
        assert_eq!(det.push(1, &[]), None);
    }
}
