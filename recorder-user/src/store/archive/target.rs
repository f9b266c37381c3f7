//! Where finished recordings go: a directory (a NAS mount) or an S3-compatible object store, and
//! the copy-then-verify step for each. A copy counts as archived only once it has been read back
//! and its size and sha256 match what the recorder wrote; only then may the spool copy go.

use std::{
    io::{Read as _, Write as _},
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt as _;
use object_store::{
    aws::AmazonS3Builder, path::Path as ObjectPath, BackoffConfig, ClientOptions, ObjectStore,
    PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest as _, Sha256};

use crate::store::wav::sha256_file;

/// Files up to this size are uploaded in one PUT; larger ones in parts of this size (a 4-hour
/// call is ~450 MB and must not sit in memory whole).
const PART: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive could not be reached or refused the write: retry later, keep the spool copy.
    #[error("archive unavailable: {0}")]
    Unavailable(String),
    /// The archived copy is not the file that was sent (size or sha256 differ).
    #[error("archived copy of {rel} does not verify: {reason}")]
    Verify { rel: String, reason: String },
    /// The spool copy is not the file the CDR describes: never archive or delete it.
    #[error("spool file {path} is not the recording the CDR names: {reason}")]
    Source { path: String, reason: String },
    #[error("spool file {path}: {source}")]
    Spool {
        path: String,
        source: std::io::Error,
    },
}

/// `[archive] target` parsed: where finished recordings end up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// No archive: finished recordings stay in the spool (and are marked read-only there).
    Spool,
    Dir(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl TargetSpec {
    /// `""`, `/abs/path`, `file:///abs/path` or `s3://bucket[/prefix]`.
    pub fn parse(s: &str) -> Result<TargetSpec, &'static str> {
        const EXPECTED: &str =
            "empty (keep recordings in the spool), /absolute/dir, file:///absolute/dir or s3://bucket[/prefix]";
        let s = s.trim();
        if s.is_empty() {
            return Ok(TargetSpec::Spool);
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                });
            if !valid_bucket || prefix.split('/').any(|p| p == ".." || p == ".") {
                return Err(EXPECTED);
            }
            return Ok(TargetSpec::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        let path = Path::new(path);
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(EXPECTED);
        }
        Ok(TargetSpec::Dir(path.to_path_buf()))
    }
}

/// Connection settings for an S3-compatible store (`[archive] s3_*`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000` for MinIO or moto; None: AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// None: taken from the environment (`AWS_ACCESS_KEY_ID`, ...) like the AWS tools do.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
}

/// Without the secret: configurations get logged.
impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// An S3 client with short timeouts and one retry: the archiver has its own backoff and a
/// persistent queue, so a request that hangs on a dead endpoint should fail fast, not retry for
/// the library's default three minutes.
pub fn s3_store(bucket: &str, o: &S3Options) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&o.region)
        .with_allow_http(o.allow_http)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 1,
            retry_timeout: Duration::from_secs(10),
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(o.allow_http)
                .with_timeout(Duration::from_secs(10))
                .with_connect_timeout(Duration::from_secs(3)),
        );
    if let Some(e) = &o.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(k) = &o.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &o.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    let store = b
        .build()
        .map_err(|e| ArchiveError::Unavailable(format!("S3 client for bucket {bucket}: {e}")))?;
    Ok(Arc::new(store))
}

/// The object key of `rel` under `prefix`.
pub fn object_key(prefix: &str, rel: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(rel)
    } else {
        ObjectPath::from(format!("{prefix}/{rel}"))
    }
}

/// True for a relative path that stays inside its root (no `..`, not absolute, not empty).
pub fn is_safe_rel(rel: &str) -> bool {
    !rel.contains('\0')
        && rel
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// A connected archive.
#[derive(Clone)]
pub enum Target {
    Spool,
    Dir(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        bucket: String,
        prefix: String,
    },
}

/// What is known about a file before it is archived: its size and sha256, from the CDR (the
/// WAV) or read from the finished spool file (the raw RTP pcap, which the CDR does not hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub bytes: u64,
    pub sha256: String,
}

impl Target {
    pub fn connect(spec: &TargetSpec, s3: &S3Options) -> Result<Target, ArchiveError> {
        Ok(match spec {
            TargetSpec::Spool => Target::Spool,
            TargetSpec::Dir(root) => Target::Dir(root.clone()),
            TargetSpec::S3 { bucket, prefix } => Target::S3 {
                store: s3_store(bucket, s3)?,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            },
        })
    }

    /// Where `rel` lives once archived: an absolute path, or `s3://bucket/key`.
    pub fn location(&self, spool: &Path, rel: &str) -> String {
        match self {
            Target::Spool => spool.display().to_string(),
            Target::Dir(root) => root.join(rel).display().to_string(),
            Target::S3 { bucket, prefix, .. } => {
                format!("s3://{bucket}/{}", object_key(prefix, rel))
            }
        }
    }

    /// Copies `spool` to the archive as `rel` and verifies the copy against `want`. A copy that
    /// is already there and identical is left alone (archiving twice is a no-op).
    pub async fn archive(
        &self,
        spool: &Path,
        rel: &str,
        want: &Expected,
    ) -> Result<(), ArchiveError> {
        match self {
            Target::Spool => Ok(()),
            Target::Dir(root) => {
                let (spool, dest, want, rel) = (
                    spool.to_path_buf(),
                    root.join(rel),
                    want.clone(),
                    rel.to_string(),
                );
                // A hung NAS (hard NFS mount) blocks the copy's system calls: give up waiting
                // after a generous bound (a minute plus one second per MiB) so the archiver
                // goes on retrying and reporting instead of hanging with it.
                let limit = Duration::from_secs(60 + want.bytes / (1 << 20));
                let copy =
                    tokio::task::spawn_blocking(move || copy_to_dir(&spool, &dest, &want, &rel));
                match tokio::time::timeout(limit, copy).await {
                    Ok(done) => {
                        done.map_err(|e| ArchiveError::Unavailable(format!("copy task: {e}")))?
                    }
                    Err(_) => Err(ArchiveError::Unavailable(format!(
                        "copying to {} took longer than {limit:?}",
                        root.display()
                    ))),
                }
            }
            Target::S3 { store, prefix, .. } => {
                let key = object_key(prefix, rel);
                if verify_object(store.as_ref(), &key, want).await.is_ok() {
                    return Ok(());
                }
                upload(store.as_ref(), spool, &key).await?;
                verify_object(store.as_ref(), &key, want)
                    .await
                    .map_err(|reason| match reason {
                        ObjectCheck::Unavailable(e) => ArchiveError::Unavailable(e),
                        ObjectCheck::Differs(reason) => ArchiveError::Verify {
                            rel: rel.to_string(),
                            reason,
                        },
                    })
            }
        }
    }

    /// True when the archive holds `rel` with exactly `want`'s contents (a job whose spool
    /// copy is gone was archived by an earlier run that stopped before recording it).
    pub async fn holds(&self, rel: &str, want: &Expected) -> bool {
        match self {
            Target::Spool => false,
            Target::Dir(root) => file_matches(&root.join(rel), want).unwrap_or(false),
            Target::S3 { store, prefix, .. } => {
                verify_object(store.as_ref(), &object_key(prefix, rel), want)
                    .await
                    .is_ok()
            }
        }
    }
}

fn file_matches(path: &Path, want: &Expected) -> std::io::Result<bool> {
    let len = std::fs::metadata(path)?.len();
    Ok(len == want.bytes && sha256_file(path)? == want.sha256)
}

/// Copy to a hidden `.partial` name, fsync, rename into place, fsync the directory, then read
/// the copy back: a crash at any point leaves either no file or a complete one under the
/// final name (a stale `.partial` is overwritten by the next attempt).
fn copy_to_dir(spool: &Path, dest: &Path, want: &Expected, rel: &str) -> Result<(), ArchiveError> {
    let unavailable = |what: &str, e: std::io::Error| {
        ArchiveError::Unavailable(format!("{what} {}: {e}", dest.display()))
    };
    if file_matches(dest, want).unwrap_or(false) {
        return Ok(());
    }
    let dir = dest
        .parent()
        .ok_or_else(|| ArchiveError::Unavailable(format!("{} has no parent", dest.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| unavailable("creating the directory of", e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = dir.join(format!(".{name}.partial"));
    let result = (|| {
        let mut src = std::fs::File::open(spool).map_err(|source| ArchiveError::Spool {
            path: spool.display().to_string(),
            source,
        })?;
        let mut out =
            std::fs::File::create(&partial).map_err(|e| unavailable("creating a copy of", e))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = src.read(&mut buf).map_err(|source| ArchiveError::Spool {
                path: spool.display().to_string(),
                source,
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| unavailable("writing", e))?;
        }
        out.sync_all().map_err(|e| unavailable("syncing", e))?;
        std::fs::rename(&partial, dest).map_err(|e| unavailable("renaming into", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all()
                .map_err(|e| unavailable("syncing the directory of", e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    match file_matches(dest, want) {
        Ok(true) => Ok(()),
        Ok(false) => {
            // Ours and wrong: take it away so nothing mistakes it for the recording.
            let _ = std::fs::remove_file(dest);
            Err(ArchiveError::Verify {
                rel: rel.to_string(),
                reason: "size or sha256 differs after copying".into(),
            })
        }
        Err(e) => Err(unavailable("reading back", e)),
    }
}

enum ObjectCheck {
    Unavailable(String),
    Differs(String),
}

/// Reads the object back whole and compares size and sha256.
async fn verify_object(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    want: &Expected,
) -> Result<(), ObjectCheck> {
    let got = store
        .get(key)
        .await
        .map_err(|e| ObjectCheck::Unavailable(format!("reading back {key}: {e}")))?;
    if got.meta.size != want.bytes {
        return Err(ObjectCheck::Differs(format!(
            "{} bytes, expected {}",
            got.meta.size, want.bytes
        )));
    }
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ObjectCheck::Unavailable(format!("reading back {key}: {e}")))?;
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let sha = hex::encode(hasher.finalize());
    if len != want.bytes || sha != want.sha256 {
        return Err(ObjectCheck::Differs(format!(
            "read back {len} bytes with sha256 {sha}"
        )));
    }
    Ok(())
}

async fn upload(
    store: &dyn ObjectStore,
    spool: &Path,
    key: &ObjectPath,
) -> Result<(), ArchiveError> {
    let spool_err = |source| ArchiveError::Spool {
        path: spool.display().to_string(),
        source,
    };
    let unavailable =
        |e: object_store::Error| ArchiveError::Unavailable(format!("writing {key}: {e}"));
    let len = std::fs::metadata(spool).map_err(spool_err)?.len();
    if len <= PART as u64 {
        let bytes = std::fs::read(spool).map_err(spool_err)?;
        store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(unavailable)?;
        return Ok(());
    }
    let upload = store.put_multipart(key).await.map_err(unavailable)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut file = std::fs::File::open(spool).map_err(spool_err)?;
    let mut buf = vec![0u8; PART];
    loop {
        let n = file.read(&mut buf).map_err(spool_err)?;
        if n == 0 {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(2).await {
            return Err(unavailable(e));
        }
        writer.write(&buf[..n]);
    }
    writer.finish().await.map_err(unavailable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs_parse_and_reject_relative_or_bad_buckets() {
        assert_eq!(TargetSpec::parse(" "), Ok(TargetSpec::Spool));
        assert_eq!(
            TargetSpec::parse("/mnt/nas/calls"),
            Ok(TargetSpec::Dir("/mnt/nas/calls".into()))
        );
        assert_eq!(
            TargetSpec::parse("file:///mnt/nas"),
            Ok(TargetSpec::Dir("/mnt/nas".into()))
        );
        assert_eq!(
            TargetSpec::parse("s3://calls-archive/site-1/"),
            Ok(TargetSpec::S3 {
                bucket: "calls-archive".into(),
                prefix: "site-1".into()
            })
        );
        assert_eq!(
            TargetSpec::parse("s3://calls"),
            Ok(TargetSpec::S3 {
                bucket: "calls".into(),
                prefix: String::new()
            })
        );
        for bad in [
            "nas/calls",
            "file://nas",
            "/a/../b",
            "s3://UPPER",
            "s3://x",
            "s3://b-b/../x",
        ] {
            assert!(TargetSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths_must_stay_inside() {
        assert!(is_safe_rel("2026/01/02/a.wav"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b"] {
            assert!(!is_safe_rel(bad), "{bad}");
        }
        assert_eq!(object_key("p/q", "a/b.wav").as_ref(), "p/q/a/b.wav");
        assert_eq!(object_key("", "a/b.wav").as_ref(), "a/b.wav");
    }
}
