//! Recording file names. Everything that comes from SIP (Call-ID, user parts) is untrusted: it
//! is reduced to a safe character set, bounded in length, and can never climb out of the
//! recordings directory.

use std::path::{Path, PathBuf};

/// Calls `f` with the path, name and metadata of every regular file below `root`, at any depth
/// (what cannot be read is skipped): the recordings tree's walk, for retention and for the
/// sweep of stale prepared files.
pub fn for_each_file(root: &Path, f: &mut dyn FnMut(&Path, &str, &std::fs::Metadata)) {
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let path = e.path();
            if meta.is_dir() {
                todo.push(path);
            } else if meta.is_file() {
                f(&path, &e.file_name().to_string_lossy(), &meta);
            }
        }
    }
}

/// Longest file name component we produce from SIP data.
const MAX_COMPONENT: usize = 64;

/// Keeps `[A-Za-z0-9._+@-]`, maps everything else (slashes, control characters, unicode) to
/// `_`, never starts with a dot, never empty, at most [`MAX_COMPONENT`] bytes.
pub fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '@' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_COMPONENT)
        .collect();
    while out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Fields a recording path template can use.
pub struct PathFields<'a> {
    /// Call start, seconds since the Unix epoch.
    pub start_secs: u64,
    pub call_id: &'a str,
    pub from_user: &'a str,
    pub to_user: &'a str,
    /// Unique per call in this recorder.
    pub uuid: &'a str,
}

/// Expands a template such as `{yyyy}/{mm}/{dd}/{hhmmss}_{from}_{to}_{uuid}.wav` under `root`.
/// Placeholders: `{yyyy} {mm} {dd} {hh} {hhmmss} {callid} {from} {to} {uuid}`. Slashes in the
/// template make directories; values never do.
pub fn expand(root: &Path, template: &str, f: &PathFields<'_>) -> PathBuf {
    let (y, mo, d, h, mi, s) = civil(f.start_secs);
    let mut path = root.to_path_buf();
    for part in template.split('/') {
        let part = part
            .replace("{yyyy}", &format!("{y:04}"))
            .replace("{mm}", &format!("{mo:02}"))
            .replace("{dd}", &format!("{d:02}"))
            .replace("{hh}", &format!("{h:02}"))
            .replace("{hhmmss}", &format!("{h:02}{mi:02}{s:02}"))
            .replace("{callid}", &sanitize(f.call_id))
            .replace("{from}", &sanitize(f.from_user))
            .replace("{to}", &sanitize(f.to_user))
            .replace("{uuid}", &sanitize(f.uuid));
        let part = sanitize(&part);
        if part == "_" && part.len() == 1 {
            continue;
        }
        path.push(part);
    }
    path
}

/// UTC calendar fields of a Unix time (Howard Hinnant's days-from-civil, inverted).
pub fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y as u64,
        m as u64,
        d as u64,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_sip_values_stay_inside_the_root() {
        let root = Path::new("/var/lib/calltap/recordings");
        let f = PathFields {
            start_secs: 1_700_000_000,
            call_id: "../../etc/passwd",
            from_user: "\u{1b}[31mevil\n",
            to_user: "..",
            uuid: "u1",
        };
        let p = expand(root, "{yyyy}/{mm}/{dd}/{callid}_{from}_{to}_{uuid}.wav", &f);
        assert!(p.starts_with(root));
        assert_eq!(p.components().count(), root.components().count() + 4);
        let name = p.file_name().and_then(|n| n.to_str()).expect("utf8");
        assert!(!name.contains('/') && !name.chars().any(|c| c.is_control()));
        assert_eq!(p.parent().map(|d| d.ends_with("2023/11/14")), Some(true));
    }

    #[test]
    fn long_values_are_bounded() {
        let s = sanitize(&"x".repeat(10_000));
        assert_eq!(s.len(), MAX_COMPONENT);
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize(".hidden"), "_hidden");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
    }
}
