//! What bounds the calls recorded at once, assessed at start.

use crate::{
    config::Config,
    store::spool::{files::FdBudget, Capacity},
};

/// Raises the open-file limit as far as the process may, sizes the recordings' descriptor
/// budget from it, and logs how many calls the limits allow at once and what bounds them.
pub fn assess_limits(cfg: &Config, workers: u32) -> Capacity {
    match crate::limits::raise_nofile() {
        Ok((before, after)) if before < after => {
            log::info!(
                "open files: raised the soft limit from {before} to {after} (the hard limit)"
            )
        }
        Ok(_) => {}
        Err(e) => log::warn!("open files: cannot raise the soft limit: {e}"),
    }
    let (nofile, _) = crate::limits::nofile();
    let budget = FdBudget::get();
    budget.set_limit(FdBudget::from_rlimit(nofile));
    let max_calls = cfg.calls.max_calls as u64;
    let c = Capacity::assess(max_calls, cfg.storage.audio_buffer_mb);
    let bound = if c.concurrent_calls == c.max_calls {
        "[calls] max_calls"
    } else {
        "[storage] audio_buffer_mb"
    };
    log::info!(
        "capacity: {} concurrent calls ({bound}; max_calls {}, audio buffers {} MiB for {} calls \
         over {workers} worker(s)); {} recording files kept open (open-file limit {nofile}), \
         calls beyond that reopen their file per write",
        c.concurrent_calls,
        c.max_calls,
        cfg.storage.audio_buffer_mb,
        c.buffer_calls,
        c.open_files,
    );
    if c.open_files < c.concurrent_calls {
        log::warn!(
            "open files: the limit ({nofile}) keeps {} recordings open of the {} calls the \
             other limits allow; raise LimitNOFILE for fewer reopens",
            c.open_files,
            c.concurrent_calls
        );
    }
    c
}
