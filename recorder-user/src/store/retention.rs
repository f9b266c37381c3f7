//! Retention: deletes archived recordings older than N days and keeps a filesystem under a
//! usage watermark by deleting the oldest archived recordings first; watches the spool's
//! filesystem and raises an alarm when it is nearly full.
//!
//! Only archived files are ever candidates: in the archive directory, the files the archiver's
//! manifest lists (`archive::manifest`: the directory may be a share with other applications'
//! recordings in it), objects under the archive prefix, and,
//! when no archive is configured, spool files the archiver has marked finished (read-only, see
//! `archive`). Files of calls in progress, and finished files not archived yet, are writable
//! and never touched.
//!
//! Each file is announced to a `deleting` hook just before it is deleted: the archiver notes it
//! in its queue so the recording's database row is marked deleted (`recordings.deleted_ns`),
//! retried while the database is away.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt as _;
use object_store::{path::Path as ObjectPath, ObjectStore};

/// `[retention]` settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Delete archived recordings older than this many days; 0 keeps them forever.
    pub archive_days: u32,
    /// Keep the archive (or, without one, the spool) filesystem at most this full by deleting
    /// the oldest archived recordings; 0 disables the watermark.
    pub max_used_percent: u8,
    /// Raise the disk-full alarm when the spool filesystem is at least this full.
    pub spool_alarm_percent: u8,
}

/// What one sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub files: u64,
    pub bytes: u64,
}

/// Size and usage of the filesystem holding `path`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FsUsage {
    pub size: u64,
    pub used: u64,
    /// Available to unprivileged writers (what a non-root daemon can still use).
    pub avail: u64,
}

impl FsUsage {
    /// Used share, 0..1, as `df` computes it (used over used + available to unprivileged users).
    pub fn used_fraction(&self) -> f64 {
        let denom = self.used + self.avail;
        if denom == 0 {
            0.0
        } else {
            self.used as f64 / denom as f64
        }
    }
}

/// statvfs(2) of the filesystem holding `path` (the spool's alarm and watermark, the metrics).
pub fn fs_usage(path: &Path) -> std::io::Result<FsUsage> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = s.f_frsize as u64;
    let size = s.f_blocks as u64 * frsize;
    let free = s.f_bfree as u64 * frsize;
    Ok(FsUsage {
        size,
        used: size.saturating_sub(free),
        avail: s.f_bavail as u64 * frsize,
    })
}

/// True for a spool file the archiver marked finished (read-only) when there is no archive.
pub fn is_finished_spool_file(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o222 == 0
}

struct Candidate {
    mtime: SystemTime,
    path: PathBuf,
    bytes: u64,
}

fn walk(
    dir: &Path,
    eligible: &dyn Fn(&Path, &std::fs::Metadata) -> bool,
    out: &mut Vec<Candidate>,
) {
    super::paths::for_each_file(dir, &mut |path, name, meta| {
        if !name.starts_with('.') && eligible(path, meta) {
            out.push(Candidate {
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path: path.to_path_buf(),
                bytes: meta.len(),
            });
        }
    });
}

/// Deletes eligible files under `root` older than `cfg.archive_days`, then the oldest eligible
/// ones while the filesystem is fuller than `cfg.max_used_percent`. Hidden files (partial
/// copies) are never candidates. With `prune_dirs`, empty directories left behind are removed
/// (not in the spool, where a media worker may be about to create a file in one). `deleting` is
/// called with each file just before it is deleted.
pub fn sweep_dir(
    root: &Path,
    cfg: &RetentionConfig,
    now: SystemTime,
    prune_dirs: bool,
    eligible: &dyn Fn(&Path, &std::fs::Metadata) -> bool,
    deleting: &dyn Fn(&Path),
) -> Sweep {
    let mut files = Vec::new();
    walk(root, eligible, &mut files);
    sweep_candidates(root, files, cfg, now, prune_dirs, deleting).0
}

/// Like [`sweep_dir`] on a directory archive, but over the files `listed` (paths relative to
/// `root`, from the archive's manifest) instead of whatever is under `root`: the archive may
/// be a share where other applications keep files that look just like recordings. Returns
/// the sweep and the listed paths now gone (deleted here, or missing), for the manifest to drop.
pub fn sweep_listed(
    root: &Path,
    listed: &[String],
    cfg: &RetentionConfig,
    now: SystemTime,
    deleting: &dyn Fn(&Path),
) -> (Sweep, Vec<String>) {
    let mut files = Vec::new();
    let mut gone = Vec::new();
    for rel in listed {
        let path = root.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(Candidate {
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path,
                bytes: meta.len(),
            }),
            // Replaced by something else since: not a recording of ours any more.
            Ok(_) => gone.push(rel.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone.push(rel.clone()),
            // The share is away or unreadable: keep the entry for the next sweep.
            Err(e) => log::debug!("retention: {}: {e}", path.display()),
        }
    }
    let (sweep, deleted) = sweep_candidates(root, files, cfg, now, true, deleting);
    gone.extend(
        deleted
            .iter()
            .filter_map(|p| p.strip_prefix(root).ok()?.to_str().map(str::to_string)),
    );
    (sweep, gone)
}

/// Deletes `files` older than `cfg.archive_days`, then the oldest while the filesystem is over
/// the watermark; returns the sweep and the paths deleted.
fn sweep_candidates(
    root: &Path,
    mut files: Vec<Candidate>,
    cfg: &RetentionConfig,
    now: SystemTime,
    prune_dirs: bool,
    deleting: &dyn Fn(&Path),
) -> (Sweep, Vec<PathBuf>) {
    files.sort_by_key(|c| c.mtime);
    let deleted = std::cell::RefCell::new(Vec::new());
    let mut sweep = Sweep::default();
    let delete = |c: &Candidate, sweep: &mut Sweep| {
        deleting(&c.path);
        match std::fs::remove_file(&c.path) {
            Ok(()) => {
                deleted.borrow_mut().push(c.path.clone());
                sweep.files += 1;
                sweep.bytes += c.bytes;
                if let Some(dir) = c.path.parent().filter(|_| prune_dirs) {
                    remove_empty_dirs(root, dir);
                }
                true
            }
            Err(e) => {
                log::warn!("retention: deleting {}: {e}", c.path.display());
                false
            }
        }
    };
    let mut rest = files.as_slice();
    if cfg.archive_days > 0 {
        let cutoff = now
            .checked_sub(Duration::from_secs(u64::from(cfg.archive_days) * 86_400))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let old = rest.iter().take_while(|c| c.mtime < cutoff).count();
        for c in &rest[..old] {
            delete(c, &mut sweep);
        }
        rest = &rest[old..];
    }
    if cfg.max_used_percent > 0 {
        let Ok(mut usage) = fs_usage(root) else {
            return (sweep, deleted.into_inner());
        };
        let limit = f64::from(cfg.max_used_percent) / 100.0;
        for c in rest {
            if usage.used_fraction() <= limit {
                break;
            }
            if delete(c, &mut sweep) {
                // Re-read: block rounding and other writers make arithmetic a guess.
                usage = fs_usage(root).unwrap_or(FsUsage {
                    used: usage.used.saturating_sub(c.bytes),
                    avail: usage.avail + c.bytes,
                    ..usage
                });
            }
        }
    }
    (sweep, deleted.into_inner())
}

fn remove_empty_dirs(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        // Fails (and stops) on the first directory that is not empty.
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => return,
        }
    }
}

/// Deletes objects under `prefix` older than `days` days (an object store has no watermark).
/// `deleting` is called with each object's key just before it is deleted.
pub async fn sweep_objects(
    store: &dyn ObjectStore,
    prefix: &str,
    days: u32,
    now: SystemTime,
    deleting: &dyn Fn(&str),
) -> Result<Sweep, object_store::Error> {
    let mut sweep = Sweep::default();
    if days == 0 {
        return Ok(sweep);
    }
    let cutoff = now
        .checked_sub(Duration::from_secs(u64::from(days) * 86_400))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let mut list = store.list(prefix.as_ref());
    let mut old = Vec::new();
    while let Some(meta) = list.next().await {
        let meta = meta?;
        if SystemTime::from(meta.last_modified) < cutoff {
            old.push(meta);
        }
    }
    for meta in old {
        deleting(meta.location.as_ref());
        store.delete(&meta.location).await?;
        sweep.files += 1;
        sweep.bytes += meta.size;
    }
    Ok(sweep)
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    fn file(path: &Path, bytes: usize, age_days: u64, read_only: bool) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, vec![0u8; bytes]).expect("write");
        let f = File::options().write(true).open(path).expect("open");
        let t = SystemTime::now() - Duration::from_secs(age_days * 86_400);
        f.set_modified(t).expect("mtime");
        if read_only {
            let mut p = f.metadata().expect("meta").permissions();
            p.set_mode(0o444);
            std::fs::set_permissions(path, p).expect("chmod");
        }
    }

    #[test]
    fn old_archived_files_go_unarchived_ones_stay_whatever_their_age() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        file(&root.join("2020/01/old-finished.wav"), 10, 40, true);
        file(&root.join("2020/01/old-unarchived.wav"), 10, 40, false);
        file(&root.join("2026/01/new-finished.wav"), 10, 1, true);
        file(&root.join("2020/02/.old.wav.partial"), 10, 40, true);
        let cfg = RetentionConfig {
            archive_days: 30,
            ..RetentionConfig::default()
        };
        // The hook hears of each file while it still exists (the archiver notes it for the
        // database before it goes).
        let announced = std::sync::Mutex::new(Vec::new());
        let sweep = sweep_dir(
            root,
            &cfg,
            SystemTime::now(),
            false,
            &|_, m| is_finished_spool_file(m),
            &|p| {
                let present = p.exists();
                announced
                    .lock()
                    .expect("announced")
                    .push((p.to_path_buf(), present));
            },
        );
        assert_eq!(
            announced.into_inner().expect("announced"),
            vec![(root.join("2020/01/old-finished.wav"), true)]
        );
        assert_eq!(
            sweep,
            Sweep {
                files: 1,
                bytes: 10
            }
        );
        assert!(!root.join("2020/01/old-finished.wav").exists());
        assert!(root.join("2020/01/old-unarchived.wav").exists());
        assert!(root.join("2026/01/new-finished.wav").exists());
        assert!(root.join("2020/02/.old.wav.partial").exists());
    }

    #[test]
    fn the_watermark_deletes_oldest_archived_first_and_never_unarchived() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let usage = fs_usage(root).expect("statvfs");
        assert!(usage.size > 0 && usage.used_fraction() > 0.0);
        file(&root.join("a/oldest.wav"), 4096, 9, true);
        file(&root.join("a/older.wav"), 4096, 8, true);
        file(&root.join("a/unarchived.wav"), 4096, 10, false);
        // A watermark of 1% is below any real filesystem's usage: every eligible file goes,
        // oldest first, and the unarchived one (oldest of all) stays.
        let cfg = RetentionConfig {
            max_used_percent: 1,
            ..RetentionConfig::default()
        };
        let sweep = sweep_dir(
            root,
            &cfg,
            SystemTime::now(),
            false,
            &|_, m| is_finished_spool_file(m),
            &|_| {},
        );
        assert_eq!(sweep.files, 2);
        assert!(root.join("a/unarchived.wav").exists());
        // A watermark of 100% deletes nothing.
        file(&root.join("b/x.wav"), 10, 9, true);
        let cfg = RetentionConfig {
            max_used_percent: 100,
            ..RetentionConfig::default()
        };
        let sweep = sweep_dir(root, &cfg, SystemTime::now(), false, &|_, _| true, &|_| {});
        assert_eq!(sweep.files, 0);
    }
}
