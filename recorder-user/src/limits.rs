//! The operating system's limits that bound how many calls CallTap records at once, raised
//! where a process may raise them, and reported where it may not.

use std::io;

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (1024, 1024);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what any process may do; systemd's
/// default soft limit is 1024 while the hard one is far higher). Returns (before, after).
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile();
    if soft >= hard {
        return Ok((soft, soft));
    }
    let r = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let (_, hard) = nofile();
        let (_, after) = raise_nofile().expect("raise");
        assert_eq!(after, hard);
        assert_eq!(nofile().0, hard);
    }
}
