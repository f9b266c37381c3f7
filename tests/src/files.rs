//! Small file-system and HTTP helpers the tests share.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

/// A fresh scratch directory for one test (`$TMPDIR/calltap-e2e-NAME`, emptied first).
pub fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("calltap-e2e-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// A WAV file's format and its samples (interleaved, as written).
pub fn read_wav(path: &Path) -> anyhow::Result<(hound::WavSpec, Vec<i16>)> {
    use anyhow::Context as _;
    let mut wav =
        hound::WavReader::open(path).with_context(|| format!("opening {}", path.display()))?;
    let samples = wav
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((wav.spec(), samples))
}

/// Every file below `dir`, at any depth (directories that cannot be read are skipped).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// One HTTP/1.1 request of a webhook receiver: its body and its `X-CallTap-Signature` header
/// (empty when absent). None when the request is cut short.
pub fn read_signed_request(r: &mut impl BufRead) -> Option<(Vec<u8>, String)> {
    let (mut len, mut sig) = (0usize, String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "x-calltap-signature" => sig = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((body, sig))
}
