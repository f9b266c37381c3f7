//! Stream-quality metrics: RFC 3550 interarrival jitter and a simplified ITU-T G.107 E-model.

use crate::codec::CodecId;

/// Running RFC 3550 §6.4.1 / A.8 interarrival-jitter estimate for one stream.
/// Serializable so a restarted recorder continues the estimate (see the daemon's call store).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JitterEstimator {
    clock_rate: u32,
    /// Previous packet: (RTP timestamp, arrival time in ns).
    last: Option<(u32, u64)>,
    /// Jitter in timestamp units (kept as f64 to avoid the integer estimator's bias).
    jitter: f64,
}

impl Default for JitterEstimator {
    /// An estimator for the 8 kHz clock that all narrowband codecs (and G.722) use.
    fn default() -> Self {
        JitterEstimator::new(8000)
    }
}

impl JitterEstimator {
    pub fn new(clock_rate: u32) -> JitterEstimator {
        JitterEstimator {
            clock_rate: clock_rate.max(1),
            last: None,
            jitter: 0.0,
        }
    }

    /// Accounts for one packet: `J += (|D| - J) / 16`, with D the difference in transit time
    /// between this packet and the previous one, in timestamp units.
    ///
    /// Transit differences beyond 10 s are timestamp discontinuities (SSRC change, sender
    /// restart), not network jitter, and are skipped so one event cannot dominate the estimate.
    pub fn update(&mut self, rtp_ts: u32, arrival_ns: u64) {
        if let Some((ts, ns)) = self.last {
            let arrival_diff_ns = arrival_ns as i128 - ns as i128;
            let arrival_units = arrival_diff_ns as f64 * f64::from(self.clock_rate) / 1e9;
            let ts_diff = f64::from(rtp_ts.wrapping_sub(ts) as i32);
            let d = (arrival_units - ts_diff).abs();
            if d <= f64::from(self.clock_rate) * 10.0 {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.last = Some((rtp_ts, arrival_ns));
    }

    /// Current jitter in timestamp units (what RTCP reports carry).
    pub fn jitter_ts(&self) -> f64 {
        self.jitter
    }

    /// Current jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(self.clock_rate)
    }
}

/// Simplified E-model transmission rating (ITU-T G.107) for random loss.
///
/// One-way delay is estimated as half the round trip plus twice the jitter (a typical adaptive
/// jitter buffer) plus 10 ms of codec/packetisation delay.
pub fn r_factor(codec: CodecId, loss_pct: f64, jitter_ms: f64, rtt_ms: f64) -> f64 {
    let ppl = if loss_pct.is_finite() {
        loss_pct.clamp(0.0, 100.0)
    } else {
        100.0
    };
    let jitter = if jitter_ms.is_finite() {
        jitter_ms.max(0.0)
    } else {
        0.0
    };
    let rtt = if rtt_ms.is_finite() {
        rtt_ms.max(0.0)
    } else {
        0.0
    };
    let d = rtt / 2.0 + jitter * 2.0 + 10.0;
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let (ie, bpl) = codec.codec().impairment;
    let ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl);
    93.2 - id - ie_eff
}

/// Mean opinion score (1.0-4.5) from an R factor (ITU-T G.107 Annex B).
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(name: &str) -> CodecId {
        CodecId::named(name).expect("registered")
    }

    #[test]
    fn constant_delay_has_no_jitter() {
        let mut j = JitterEstimator::new(8000);
        for i in 0..100u64 {
            j.update((i * 160) as u32, 5_000_000 + i * 20_000_000);
        }
        assert_eq!(j.jitter_ms(), 0.0);
    }

    #[test]
    fn timestamp_wrap_is_not_jitter() {
        let mut j = JitterEstimator::default();
        let start = u32::MAX - 400;
        for i in 0..10u32 {
            j.update(start.wrapping_add(i * 160), u64::from(i) * 20_000_000);
        }
        assert_eq!(j.jitter_ms(), 0.0);
    }

    #[test]
    fn alternating_delay() {
        let mut j = JitterEstimator::new(8000);
        // Every other packet arrives 10 ms late: |D| = 80 units each step.
        for i in 0..2000u64 {
            let late = if i % 2 == 1 { 10_000_000 } else { 0 };
            j.update((i * 160) as u32, i * 20_000_000 + late);
        }
        assert!((j.jitter_ms() - 10.0).abs() < 0.01, "{}", j.jitter_ms());
        assert!((j.jitter_ts() - 80.0).abs() < 0.1);
    }

    #[test]
    fn discontinuity_skipped() {
        let mut j = JitterEstimator::new(8000);
        j.update(0, 0);
        j.update(160, 20_000_000);
        j.update(1_000_000_000, 40_000_000);
        assert_eq!(j.jitter_ms(), 0.0);
    }

    #[test]
    fn mos_values() {
        let clean = mos_from_r(r_factor(codec("PCMU"), 0.0, 0.0, 0.0));
        assert!((clean - 4.4).abs() < 0.05, "{clean}");
        let lossy = mos_from_r(r_factor(codec("PCMA"), 5.0, 0.0, 0.0));
        assert!(lossy < 3.8, "{lossy}");
        let mut prev = f64::INFINITY;
        for tenth in 0..=200 {
            let m = mos_from_r(r_factor(codec("G722"), f64::from(tenth) / 10.0, 5.0, 40.0));
            assert!(m <= prev && m >= 1.0, "loss {tenth}/10: {m}");
            prev = m;
        }
        assert!(mos_from_r(r_factor(codec("PCMU"), 0.0, 0.0, 1000.0)) < clean);
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        assert!(r_factor(codec("PCMU"), f64::NAN, f64::NAN, f64::INFINITY).is_finite());
    }
}
