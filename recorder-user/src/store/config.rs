//! `[storage]`, `[database]`, `[archive]` and `[retention]`: where recordings and CDRs go.

use std::path::{Path, PathBuf};

use super::{
    archive::target::{S3Options, TargetSpec},
    db::Backend,
    paths::validate_template,
    retention::RetentionConfig,
};
use crate::settings::{ConfigError, Key, Kind, Section, Values};

/// `[storage]`.
pub const STORAGE: Section = Section {
    name: "storage",
    help: "",
    keys: &[
        Key {
            name: "data_dir",
            kind: Kind::Path,
            default: "/var/lib/calltap",
            live: false,
            help: "Everything CallTap writes: recordings/, calls.jsonl (CDR journal), run-summary.json.",
        },
        Key {
            name: "path_template",
            kind: Kind::Text,
            default: "{yyyy}/{mm}/{dd}/{hhmmss}_{from}_{to}_{uuid}.wav",
            live: true,
            help: "Recording path under <data_dir>/recordings. Placeholders: {yyyy} {mm} {dd} {hh} {hhmmss}\n\
                  {callid} {from} {to} {uuid}. Values from SIP are sanitised and capped at 40 bytes each;\n\
                  {uuid} and the .wav extension are never cut; the file name must contain {uuid} or {callid}.\n\
                  A name that is taken (a file already there) gets a -1, -2, ... suffix: nothing is overwritten.",
        },
        Key {
            name: "flush_interval_ms",
            kind: Kind::Number,
            default: "1000",
            live: true,
            help: "How often open recordings are flushed to disk (a crash loses at most this much audio).",
        },
        Key {
            name: "audio_buffer_mb",
            kind: Kind::Number,
            default: "2048",
            live: false,
            help: "Most memory (MiB, all media workers together) for the audio of recordings not yet on disk:\n\
                  about 16 KiB per active call, more while the disk lags. When it is used up (the disk cannot\n\
                  keep up) audio is dropped and counted (calltap_recordings_failed_total{reason=\"backlog\"}),\n\
                  the media workers never wait.",
        },
        Key {
            name: "raw_pcap_max_mb",
            kind: Kind::Number,
            default: "128",
            live: false,
            help: "Most raw RTP kept per call (MiB) for codecs CallTap does not decode (the pcap beside the WAV);\n\
                  later packets are counted (calltap_spool_events_total{event=\"raw_rtp_over_limit\"}), not kept.",
        },
    ],
};

/// `[database]`.
pub const DATABASE: Section = Section {
    name: "database",
    help: "",
    keys: &[
        Key {
            name: "url",
            kind: Kind::Url,
            default: "",
            live: false,
            help: "CDR database. Empty: SQLite file calltap.db in the data dir (created on first start).\n\
                  sqlite:///path/calltap.db, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB for a central database\n\
                  (add ?host=/run/postgresql for a Unix socket). While it is unreachable or slower than\n\
                  write_timeout_ms, CDRs go to <data_dir>/cdr-journal.csv (one fsync'd row per call; columns\n\
                  uuid,call_id,start,end,from_user,to_user,duration_ms,end_reason,cdr_json) and recording goes\n\
                  on; the journal is imported automatically when the database is back and kept as\n\
                  cdr-journal.csv.<time>.imported. `calltap import-csv FILE...` imports by hand (idempotent).",
        },
        Key {
            name: "retry_interval_ms",
            kind: Kind::Number,
            default: "2000",
            live: false,
            help: "First pause before reconnecting; doubles per failed attempt, up to 8 times this.",
        },
        Key {
            name: "write_timeout_ms",
            kind: Kind::Number,
            default: "2000",
            live: false,
            help: "Longest wait for one database write before the CDRs go to the CSV journal.",
        },
    ],
};

/// `[archive]`.
pub const ARCHIVE: Section = Section {
    name: "archive",
    help: "Two-phase files: calls record into <data_dir>/recordings (the spool); at call end each finished\n\
          file (WAV, raw RTP pcap) is copied to the archive under the same relative path, read back and\n\
          checked (size and sha256), and only then removed from the spool; the CDR database row is then\n\
          pointed at the archive copy (recordings.location = 'archive'). While the archive is away files\n\
          stay in the spool, listed in <data_dir>/archive-queue.jsonl (fsync'd), and are retried with\n\
          backoff, also after a restart. The API serves recordings from wherever they are.",
    keys: &[
        Key {
            name: "target",
            kind: Kind::Text,
            default: "",
            live: false,
            help: "Empty: keep recordings in the spool. /abs/dir or file:///abs/dir: a directory (a NAS mount)\n\
                  outside the data dir; retention deletes only .wav and .pcap files under it.\n\
                  s3://BUCKET[/PREFIX]: an S3-compatible object store (AWS, MinIO, Ceph, ...).",
        },
        Key {
            name: "s3_endpoint",
            kind: Kind::Url,
            default: "",
            live: false,
            help: "S3 endpoint URL, e.g. http://minio.example:9000; empty: AWS for s3_region.",
        },
        Key {
            name: "s3_region",
            kind: Kind::Text,
            default: "us-east-1",
            live: false,
            help: "",
        },
        Key {
            name: "s3_access_key_id",
            kind: Kind::Text,
            default: "",
            live: false,
            help: "Credentials; both empty: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.",
        },
        Key {
            name: "s3_secret_access_key",
            kind: Kind::Secret,
            default: "",
            live: false,
            help: "",
        },
        Key {
            name: "s3_allow_http",
            kind: Kind::Bool,
            default: "false",
            live: false,
            help: "Allow a plain http:// endpoint (required for one).",
        },
        Key {
            name: "retry_interval_ms",
            kind: Kind::Number,
            default: "5000",
            live: false,
            help: "First pause after the archive failed; doubles per failure, up to 32 times this.",
        },
    ],
};

/// `[retention]`.
pub const RETENTION: Section = Section {
    name: "retention",
    help: "Checked every minute. Only archived recordings are ever deleted (without an archive: spool\n\
          files of finished calls); recordings not archived yet are kept whatever their age.",
    keys: &[
        Key {
            name: "archive_days",
            kind: Kind::Number,
            default: "0",
            live: false,
            help: "Delete archived recordings older than this many days; 0 keeps them forever.",
        },
        Key {
            name: "max_used_percent",
            kind: Kind::Number,
            default: "0",
            live: false,
            help: "Keep the archive directory's filesystem (without an archive: the spool's) at most this full\n\
                  by deleting the oldest archived recordings first; 0 disables. Not applied to S3.",
        },
        Key {
            name: "spool_alarm_percent",
            kind: Kind::Number,
            default: "95",
            live: false,
            help: "Log an error and raise the disk-full alarm when the spool filesystem is this full (percent).",
        },
    ],
};

/// `[storage]`.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// See [`super::paths::expand`].
    pub path_template: String,
    pub flush_interval_ms: u64,
    /// Most memory for recordings' audio buffers, all media workers together.
    pub audio_buffer_mb: u64,
    /// Most raw RTP (codecs not decoded) kept per call, in MiB.
    pub raw_pcap_max_mb: u64,
}

impl StorageConfig {
    pub fn from_values(v: &Values) -> Result<StorageConfig, ConfigError> {
        const S: &str = "storage";
        let (tpl, _) = v.get(S, "path_template");
        if let Err(e) = validate_template(tpl.trim()) {
            return Err(v.unusable(S, "path_template", tpl, e.to_string()));
        }
        let flush_interval_ms: u64 = v.num(S, "flush_interval_ms", "milliseconds")?;
        if flush_interval_ms == 0 {
            return Err(v.bad(S, "flush_interval_ms", "0", "at least 1 ms"));
        }
        let audio_buffer_mb: u64 = v.num(S, "audio_buffer_mb", "MiB")?;
        if audio_buffer_mb < 16 {
            return Err(v.invalid(S, "audio_buffer_mb", "at least 16 (MiB)"));
        }
        Ok(StorageConfig {
            data_dir: PathBuf::from(v.get(S, "data_dir").0),
            path_template: tpl.trim().to_string(),
            flush_interval_ms,
            audio_buffer_mb,
            raw_pcap_max_mb: v.num(S, "raw_pcap_max_mb", "MiB")?,
        })
    }

    /// The spool: where calls record.
    pub fn recordings_dir(&self) -> PathBuf {
        self.data_dir.join("recordings")
    }
}

/// `[database]`.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// CDR database URL; None: SQLite `calltap.db` in the data dir.
    pub url: Option<String>,
    /// First pause before reconnecting to the database (doubled per failure, up to 8x).
    pub retry_interval_ms: u64,
    /// Bound on each database write; slower writes go to the CSV journal.
    pub write_timeout_ms: u64,
}

impl DatabaseConfig {
    pub fn from_values(v: &Values) -> Result<DatabaseConfig, ConfigError> {
        const S: &str = "database";
        let (url, _) = v.get(S, "url");
        let url = url.trim();
        if !url.is_empty() && Backend::of_url(url).is_none() {
            return Err(v.bad(
                S,
                "url",
                url,
                "sqlite://PATH or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DB (empty: SQLite in the data dir)",
            ));
        }
        let retry_interval_ms: u64 = v.num(S, "retry_interval_ms", "milliseconds")?;
        let write_timeout_ms: u64 = v.num(S, "write_timeout_ms", "milliseconds")?;
        for (key, n) in [
            ("retry_interval_ms", retry_interval_ms),
            ("write_timeout_ms", write_timeout_ms),
        ] {
            if n == 0 {
                return Err(v.invalid(S, key, "at least 1 ms"));
            }
        }
        Ok(DatabaseConfig {
            url: Some(url.to_string()).filter(|s| !s.is_empty()),
            retry_interval_ms,
            write_timeout_ms,
        })
    }

    /// The CDR database URL: the configured one, or SQLite `calltap.db` in `data_dir`
    /// (resolved late because `--data-dir` overrides the configured directory).
    pub fn url_in(&self, data_dir: &Path) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", data_dir.join("calltap.db").display()),
        }
    }
}

/// `[archive]`.
#[derive(Clone, Debug)]
pub struct ArchiveSettings {
    /// Where finished recordings go: stay in the spool, a directory or an S3-compatible bucket.
    pub target: TargetSpec,
    /// How to reach the S3-compatible store.
    pub s3: S3Options,
    /// First pause after the archive failed (doubled per failure, up to 32x).
    pub retry_interval_ms: u64,
}

impl ArchiveSettings {
    pub fn from_values(v: &Values) -> Result<ArchiveSettings, ConfigError> {
        const S: &str = "archive";
        let (t, _) = v.get(S, "target");
        let target = TargetSpec::parse(t).map_err(|expected| v.bad(S, "target", t, expected))?;
        if let TargetSpec::Dir(root) = &target {
            let data = Path::new(v.get("storage", "data_dir").0.trim());
            if root.starts_with(data) || data.starts_with(root) {
                return Err(v.bad(
                    S,
                    "target",
                    t,
                    "a directory outside [storage] data_dir (archiving into it would delete the only copy)",
                ));
            }
        }
        let endpoint = v.optional(S, "s3_endpoint");
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(v.invalid(
                    S,
                    "s3_endpoint",
                    "http://HOST[:PORT] or https://HOST[:PORT] (empty: AWS)",
                ));
            }
        }
        let allow_http = v.bool(S, "s3_allow_http")?;
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
            && !allow_http
        {
            return Err(v.invalid(
                S,
                "s3_endpoint",
                "an https:// endpoint, or s3_allow_http = true for plain HTTP",
            ));
        }
        let s3 = S3Options {
            endpoint,
            region: v
                .optional(S, "s3_region")
                .unwrap_or_else(|| "us-east-1".to_string()),
            access_key_id: v.optional(S, "s3_access_key_id"),
            secret_access_key: v.optional(S, "s3_secret_access_key"),
            allow_http,
        };
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            return Err(v.invalid(S, "s3_access_key_id", "both s3_access_key_id and s3_secret_access_key, or neither (then the AWS_* environment is used)"));
        }
        let retry_interval_ms: u64 = v.num(S, "retry_interval_ms", "milliseconds")?;
        if retry_interval_ms == 0 {
            return Err(v.invalid(S, "retry_interval_ms", "at least 1 ms"));
        }
        Ok(ArchiveSettings {
            target,
            s3,
            retry_interval_ms,
        })
    }
}

impl RetentionConfig {
    pub fn from_values(v: &Values) -> Result<RetentionConfig, ConfigError> {
        const S: &str = "retention";
        let archive_days: u32 = v.num(S, "archive_days", "days (0 = keep forever)")?;
        let percent = |key: &str, expected: &'static str| -> Result<u8, ConfigError> {
            let n: u8 = v.num(S, key, expected)?;
            if n > 100 {
                return Err(v.invalid(S, key, expected));
            }
            Ok(n)
        };
        let max_used_percent =
            percent("max_used_percent", "a percentage 0-100 (0 = no watermark)")?;
        let spool_alarm_percent = percent("spool_alarm_percent", "a percentage 1-100")?;
        if spool_alarm_percent == 0 {
            return Err(v.invalid(S, "spool_alarm_percent", "a percentage 1-100"));
        }
        Ok(RetentionConfig {
            archive_days,
            max_used_percent,
            spool_alarm_percent,
        })
    }
}
