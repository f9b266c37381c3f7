//! Talking to a running daemon's management side from a test: HTTP/1.1 requests and tokens.
//! The daemon runs in the recorder namespace, so requests are made from a thread that joined
//! it (setns moves only the calling thread); no HTTP client needs to be installed.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::daemon::calltap_bin;

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| path.clone())?;
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// `GET /metrics` from a daemon's management server at `addr` inside namespace `ns` (the
/// Prometheus text).
pub fn metrics(ns: &str, addr: &str) -> Result<String> {
    let addr = addr.to_string();
    in_ns(ns, move || {
        let mut s =
            TcpStream::connect_timeout(&addr.parse().context("address")?, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
}

/// The sum of every sample of metric `name` whose labels include all of `labels` (none: every
/// series of the metric), in a Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let fits = series.is_empty()
                || series.starts_with('{')
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            (fits && (labels.is_empty() || !series.is_empty()))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `calltap token create --role ROLE` against a data dir; returns the token.
pub fn create_token(data_dir: &Path, role: &str) -> Result<String> {
    let out = std::process::Command::new(calltap_bin())
        .args(["token", "create", "--role", role, "--data-dir"])
        .arg(data_dir)
        .output()
        .context("running calltap token create")?;
    if !out.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One request to `http://{addr}/api/v1{path}` from inside `ns`: (status, JSON body or Null).
pub fn api(
    ns: &str,
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let addr = addr.to_string();
    let raw = in_ns(ns, move || {
        let mut c = TcpStream::connect(&addr).with_context(|| format!("connect {addr}"))?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        c.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        c.read_to_end(&mut raw)?;
        Ok(raw)
    })?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the answer")?;
    let json = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    Ok((status, json))
}
