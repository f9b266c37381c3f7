//! Recording file names. Everything that comes from SIP (Call-ID, user parts) is untrusted: it
//! is reduced to a safe character set, each value is capped on its own, and it can never climb
//! out of the recordings directory, cut the call's uuid or lose the file's extension.
//!
//! Two calls never share a name by construction when the template has `{uuid}`; the file
//! itself is created with `create_new` semantics all the same (see
//! [`super::spool`]), so a name that is taken gets a suffix instead of an overwrite.

use std::path::{Path, PathBuf};

/// Calls `f` with the path, name and metadata of every regular file below `root`, at any depth
/// (what cannot be read is skipped): the recordings tree's walk, for retention.
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

/// Most bytes one SIP-derived value (`{from}`, `{to}`, `{callid}`) puts into a name: an E.164
/// number with a `;phone-context=` or a long display-style user still fits, a hostile
/// 10,000-character user does not push the uuid and the extension out.
pub const MAX_FIELD: usize = 40;

/// Longest file name component Linux file systems take (`NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// The extension every recording ends with.
pub const EXTENSION: &str = ".wav";

/// Placeholders a template may use, and the most bytes each expands to.
const PLACEHOLDERS: [(&str, usize); 9] = [
    ("yyyy", 4),
    ("mm", 2),
    ("dd", 2),
    ("hh", 2),
    ("hhmmss", 6),
    ("callid", MAX_FIELD),
    ("from", MAX_FIELD),
    ("to", MAX_FIELD),
    // `call_uuid`: 16 + 1 + 4 + 1 + 12 hex digits and dashes, more for huge counters.
    ("uuid", 40),
];

/// Why a path template is refused (`check-config`, reload).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("empty template")]
    Empty,
    #[error("unknown placeholder {{{0}}} (known: yyyy mm dd hh hhmmss callid from to uuid)")]
    UnknownPlaceholder(String),
    #[error("unbalanced '{{' or '}}'")]
    Unbalanced,
    #[error("the file name needs {{uuid}} or {{callid}} so every call gets its own file")]
    NoIdentity,
    #[error("a name can reach {0} bytes, more than the {MAX_NAME} a file system takes")]
    TooLong(usize),
    #[error("'..' or a component that starts with '.' is not allowed")]
    Hidden,
}

/// One piece of a template component.
enum Piece<'a> {
    Literal(&'a str),
    Field(&'a str),
}

/// Splits a template component into literals and `{placeholder}`s.
fn pieces(part: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = part;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                out.push(Piece::Literal(rest));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => return Err(TemplateError::Unbalanced),
            Some(i) => {
                if i > 0 {
                    out.push(Piece::Literal(&rest[..i]));
                }
                let close = rest[i..].find('}').ok_or(TemplateError::Unbalanced)? + i;
                let name = &rest[i + 1..close];
                if name.contains('{') {
                    return Err(TemplateError::Unbalanced);
                }
                if !PLACEHOLDERS.iter().any(|(p, _)| *p == name) {
                    return Err(TemplateError::UnknownPlaceholder(name.to_owned()));
                }
                out.push(Piece::Field(name));
                rest = &rest[close + 1..];
            }
        }
    }
    Ok(out)
}

/// Checks a template once (configuration load and reload), so [`expand`] never has to
/// shorten an operator's text: every placeholder is known, the file name has the call's
/// identity, and no name can exceed [`MAX_NAME`] even with every SIP value at [`MAX_FIELD`].
pub fn validate_template(template: &str) -> Result<(), TemplateError> {
    let parts: Vec<&str> = template.split('/').filter(|p| !p.is_empty()).collect();
    let Some(last) = parts.last() else {
        return Err(TemplateError::Empty);
    };
    for part in &parts {
        if part.starts_with('.') {
            return Err(TemplateError::Hidden);
        }
        let mut worst = 0;
        for piece in pieces(part)? {
            worst += match piece {
                Piece::Literal(s) => s.len(),
                Piece::Field(name) => PLACEHOLDERS
                    .iter()
                    .find(|(p, _)| *p == name)
                    .map_or(0, |(_, n)| *n),
            };
        }
        if !part.ends_with(EXTENSION) && part == last {
            worst += EXTENSION.len();
        }
        if worst > MAX_NAME {
            return Err(TemplateError::TooLong(worst));
        }
    }
    if !last.contains("{uuid}") && !last.contains("{callid}") {
        return Err(TemplateError::NoIdentity);
    }
    Ok(())
}

/// Keeps `[A-Za-z0-9._+@-]`, maps everything else (slashes, control characters, unicode) to
/// `_`, never starts with a dot, never empty, at most `max` bytes.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s.chars().map(safe_char).take(max.max(1)).collect();
    while out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// `c` if it is safe in a file name, else `_`.
fn safe_char(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '@' | '-') {
        c
    } else {
        '_'
    }
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
/// template make directories; values never do. SIP values are capped at [`MAX_FIELD`] each,
/// `{uuid}` is never cut, and the name always ends with [`EXTENSION`]. A template that
/// [`validate_template`] refuses still gives a safe path (its text is sanitised), falling back
/// to `<uuid>.wav` where a name would be too long.
pub fn expand(root: &Path, template: &str, f: &PathFields<'_>) -> PathBuf {
    let (y, mo, d, h, mi, s) = civil(f.start_secs);
    let mut names: Vec<String> = Vec::new();
    for part in template.split('/').filter(|p| !p.is_empty()) {
        let mut name = String::new();
        match pieces(part) {
            Ok(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Literal(text) => name.extend(text.chars().map(safe_char)),
                        Piece::Field(field) => name.push_str(&match field {
                            "yyyy" => format!("{y:04}"),
                            "mm" => format!("{mo:02}"),
                            "dd" => format!("{d:02}"),
                            "hh" => format!("{h:02}"),
                            "hhmmss" => format!("{h:02}{mi:02}{s:02}"),
                            "callid" => sanitize(f.call_id, MAX_FIELD),
                            "from" => sanitize(f.from_user, MAX_FIELD),
                            "to" => sanitize(f.to_user, MAX_FIELD),
                            _ => sanitize(f.uuid, MAX_NAME),
                        }),
                    }
                }
            }
            Err(_) => name = sanitize(part, MAX_NAME),
        }
        // Never hidden, never `..`.
        while name.starts_with('.') {
            name.replace_range(0..1, "_");
        }
        names.push(name);
    }
    let uuid_name = || {
        format!(
            "{}{EXTENSION}",
            sanitize(f.uuid, MAX_NAME - EXTENSION.len())
        )
    };
    let mut file = names.pop().unwrap_or_else(uuid_name);
    if !file.ends_with(EXTENSION) {
        file.push_str(EXTENSION);
    }
    if file.len() > MAX_NAME {
        file = uuid_name();
    }
    let mut path = root.to_path_buf();
    for dir in names {
        path.push(&dir[..dir.len().min(MAX_NAME)]);
    }
    path.push(file);
    path
}

/// The name to try after `path` was taken: `<stem>-<n>.wav` beside it.
pub fn with_suffix(path: &Path, n: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(EXTENSION).unwrap_or(&name);
    let suffix = format!("-{n}{EXTENSION}");
    let keep = stem.len().min(MAX_NAME.saturating_sub(suffix.len()));
    // Sanitised names are ASCII: any byte index is a char boundary.
    path.with_file_name(format!("{}{suffix}", &stem[..keep]))
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

    const DEFAULT: &str = "{yyyy}/{mm}/{dd}/{hhmmss}_{from}_{to}_{uuid}.wav";

    fn fields<'a>(from: &'a str, to: &'a str, uuid: &'a str) -> PathFields<'a> {
        PathFields {
            start_secs: 1_700_000_000,
            call_id: "abc@host",
            from_user: from,
            to_user: to,
            uuid,
        }
    }

    fn name(p: &Path) -> &str {
        p.file_name().and_then(|n| n.to_str()).expect("utf8 name")
    }

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
        let name = name(&p);
        assert!(!name.contains('/') && !name.chars().any(|c| c.is_control()));
        assert_eq!(p.parent().map(|d| d.ends_with("2023/11/14")), Some(true));
        // A value can never make a directory or a hidden name of its own.
        let p = expand(root, "{to}/{uuid}", &fields("a", "..", "u2"));
        assert!(p.starts_with(root) && p.ends_with("_./u2.wav"), "{p:?}");
    }

    /// The reproduction of issue #14 item 1: an E.164 callee lost the `.wav`, and four calls
    /// to a 72-character user in one second shared one file (the uuid was cut).
    #[test]
    fn e164_and_long_users_keep_the_uuid_and_the_extension() {
        let root = Path::new("/r");
        let p = expand(
            root,
            DEFAULT,
            &fields(
                "alice1",
                "+49151123456781",
                "18ef06ecb180848b-0000-000000000001",
            ),
        );
        assert_eq!(
            name(&p),
            "221320_alice1_+49151123456781_18ef06ecb180848b-0000-000000000001.wav"
        );
        let long_user = "agent.queue.sales.emea.inbound.priority.customers.escalation.line1234";
        let phone = "+4915112345678;phone-context=+49.example.com;user=phone";
        let mut seen = std::collections::HashSet::new();
        for k in 1..=4u32 {
            let uuid = format!("18ef06ecb180848b-0000-00000000000{k}");
            let to = format!("{long_user}{k}");
            for (from, to) in [(phone, to.as_str()), (to.as_str(), &"x".repeat(10_000)[..])] {
                let p = expand(root, DEFAULT, &fields(from, to, &uuid));
                let n = name(&p);
                assert!(n.ends_with(&format!("_{uuid}.wav")), "{n}");
                assert!(n.len() <= MAX_NAME);
                assert!(seen.insert(p.clone()), "two calls share {p:?}");
            }
        }
    }

    #[test]
    fn each_sip_value_is_capped_on_its_own() {
        let s = sanitize(&"x".repeat(10_000), MAX_FIELD);
        assert_eq!(s.len(), MAX_FIELD);
        assert_eq!(sanitize("", MAX_FIELD), "_");
        assert_eq!(sanitize(".hidden", MAX_FIELD), "_hidden");
        let p = expand(
            Path::new("/r"),
            "{from}-{to}-{callid}-{uuid}",
            &PathFields {
                start_secs: 0,
                call_id: &"c".repeat(500),
                from_user: &"f".repeat(500),
                to_user: "+4930",
                uuid: "u",
            },
        );
        let want = format!(
            "{}-+4930-{}-u.wav",
            "f".repeat(MAX_FIELD),
            "c".repeat(MAX_FIELD)
        );
        assert_eq!(name(&p), want);
    }

    #[test]
    fn templates_are_checked_once() {
        assert_eq!(validate_template(DEFAULT), Ok(()));
        assert_eq!(validate_template("{callid}"), Ok(()));
        assert_eq!(validate_template(""), Err(TemplateError::Empty));
        assert_eq!(
            validate_template("{yyyy}/{nope}_{uuid}.wav"),
            Err(TemplateError::UnknownPlaceholder("nope".into()))
        );
        assert_eq!(validate_template("{uuid"), Err(TemplateError::Unbalanced));
        assert_eq!(
            validate_template("a}{uuid}"),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(
            validate_template("{uuid}/{from}.wav"),
            Err(TemplateError::NoIdentity)
        );
        assert_eq!(validate_template("../{uuid}"), Err(TemplateError::Hidden));
        let long = format!("{}_{{from}}_{{uuid}}.wav", "x".repeat(200));
        assert!(matches!(
            validate_template(&long),
            Err(TemplateError::TooLong(_))
        ));
    }

    #[test]
    fn taken_names_get_a_suffix_that_keeps_the_extension() {
        let p = Path::new("/r/2026/a_b_u1.wav");
        assert_eq!(with_suffix(p, 1), Path::new("/r/2026/a_b_u1-1.wav"));
        let long = format!("/r/{}.wav", "n".repeat(MAX_NAME - 4));
        let s = with_suffix(Path::new(&long), 12);
        assert!(name(&s).ends_with("-12.wav") && name(&s).len() <= MAX_NAME);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
    }
}
