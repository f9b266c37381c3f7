//! Stopping the daemon (SIGINT, SIGTERM; SIGHUP reloads), and the order between the signalling
//! thread and the media workers while it runs.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::reload::Reloader;

/// How far behind "now" the signalling thread publishes [`Shutdown::signalled_upto`]: a frame
/// is stamped before it is copied into its ring, so one stamped just before the signalling
/// thread read the clock may still be on its way in.
pub const SIGNALLED_MARGIN_NS: u64 = 200_000;

/// The longest a media worker holds a record back for the signalling thread (see
/// [`Shutdown::signalled_upto`]); past it, or once its ring is half full, the worker goes on
/// as if it had caught up. A SIP flood on a busy machine puts signalling tens of
/// milliseconds behind at times; while the ring has room, waiting costs latency, never audio.
pub const SIGNALLED_WAIT: Duration = Duration::from_secs(1);

/// State the capture threads share: shutdown, and the order between signalling and media.
pub struct Shutdown {
    pub stop: Arc<AtomicBool>,
    /// Media workers that have emptied their input after `stop`.
    pub drained: AtomicU32,
    /// Capture time (ring timestamps with their offset) before which the signalling thread
    /// has handled every SIP record and sent the control messages they caused; 0 until known.
    ///
    /// Signalling and media come through different rings and threads, so a media worker can
    /// see a call's first RTP before the signalling thread has even read the BYE of the call
    /// that had the same endpoints a moment before (sipp's back-to-back calls, a trunk reusing
    /// ports): the packets then went to the ended call. A worker holds a record captured after
    /// this mark back (at most [`SIGNALLED_WAIT`]) until the mark passes it, then applies the
    /// control messages, so each record meets the calls as they were when it was captured.
    pub signalled_upto: AtomicU64,
}

impl Shutdown {
    /// The daemon's shutdown state, with SIGINT/SIGTERM (stop) and SIGHUP (reload) handled.
    pub fn install() -> anyhow::Result<Arc<Shutdown>> {
        let shutdown = Arc::new(Shutdown {
            stop: Arc::new(AtomicBool::new(false)),
            drained: AtomicU32::new(0),
            signalled_upto: AtomicU64::new(0),
        });
        install_signal_handlers(&shutdown)?;
        Ok(shutdown)
    }

    /// Runs until SIGINT or SIGTERM; reloads the configuration with `reloader` on each SIGHUP.
    pub fn wait(&self, reloader: Option<&Reloader>) {
        while !self.stop.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(100));
            if RELOAD_REQUESTED.swap(false, Ordering::AcqRel) {
                match reloader {
                    Some(r) => match r.reload() {
                        Ok(report) => log::info!("SIGHUP: configuration reloaded: {report}"),
                        Err(e) => log::error!("SIGHUP: {e}"),
                    },
                    None => log::warn!("SIGHUP: this run has no configuration source to reload"),
                }
            }
        }
    }

    /// Waits (bounded) until signalling has handled everything captured before `ts`; returns
    /// the capture time up to which records need not wait again. `between` runs between looks:
    /// the worker applies the control messages that came meanwhile (signalling may be waiting
    /// for room in its queue) and says whether its input can hold more (false ends the wait).
    pub fn wait_signalled(
        &self,
        ts: u64,
        now: impl Fn() -> u64,
        mut between: impl FnMut() -> bool,
    ) -> u64 {
        let started = Instant::now();
        loop {
            let upto = self.signalled_upto.load(Ordering::Acquire);
            if upto >= ts {
                return upto;
            }
            if started.elapsed() >= SIGNALLED_WAIT || !between() {
                // Signalling is behind (a SIP storm) or stuck: do not stall the audio on it;
                // what was captured until now goes on without waiting.
                return now();
            }
            thread::sleep(Duration::from_micros(100));
        }
    }
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static RELOAD_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD_REQUESTED.store(true, Ordering::Release);
    } else {
        STOP_REQUESTED.store(true, Ordering::Release);
    }
}

fn install_signal_handlers(shutdown: &Arc<Shutdown>) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let prev = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            bail!("cannot install handler for signal {sig}");
        }
    }
    let s = shutdown.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while !STOP_REQUESTED.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(50));
            }
            s.stop.store(true, Ordering::Release);
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shutdown> {
        Arc::new(Shutdown {
            stop: Arc::new(AtomicBool::new(false)),
            drained: AtomicU32::new(0),
            signalled_upto: AtomicU64::new(0),
        })
    }

    /// A media record captured after the signalling thread's mark waits until the mark passes
    /// it (the BYE of the call that had its endpoints may be in the signalling ring still).
    #[test]
    fn a_record_waits_until_signalling_has_caught_up_with_it() {
        let s = shared();
        s.signalled_upto.store(1_000, Ordering::Release);
        assert_eq!(s.wait_signalled(900, || unreachable!(), || true), 1_000);
        let moved = {
            let s = s.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(1));
                s.signalled_upto.fetch_max(2_000, Ordering::AcqRel);
            })
        };
        assert_eq!(s.wait_signalled(1_500, || 0, || true), 2_000);
        moved.join().unwrap();
    }

    /// A signalling thread that does not move (stuck, or drowning in SIP) holds the audio
    /// back only so long: the worker goes on, and records captured until then do not wait.
    #[test]
    fn a_stuck_signalling_thread_does_not_stall_the_audio() {
        let s = shared();
        let started = Instant::now();
        assert_eq!(s.wait_signalled(5_000, || 7_000, || true), 7_000);
        assert!(started.elapsed() >= SIGNALLED_WAIT);
        assert!(started.elapsed() < SIGNALLED_WAIT * 20);
    }

    /// Nor past the point where the worker's ring could overflow: audio is never dropped to
    /// keep the order.
    #[test]
    fn a_filling_ring_ends_the_wait() {
        let s = shared();
        let room = std::sync::atomic::AtomicU32::new(3);
        let left = || room.fetch_sub(1, Ordering::AcqRel) > 1;
        assert_eq!(s.wait_signalled(5_000, || 7_000, left), 7_000);
        assert_eq!(room.load(Ordering::Acquire), 0);
    }
}
