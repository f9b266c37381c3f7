//! The async runtime of the threads that talk to the network or a database (the CDR writer,
//! the archiver, webhooks, the HTTP server, the rules loader, the one-shot commands): each runs
//! a current-thread tokio runtime of its own, so none of them shares a scheduler with another
//! and a slow database never holds up an HTTP answer.

/// A current-thread runtime with I/O and timers, for the calling thread.
pub fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
