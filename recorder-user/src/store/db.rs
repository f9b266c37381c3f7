//! The CDR database: SQLite (a file in the data dir, the default: one command runs CallTap) or
//! PostgreSQL (a URL: larger sites, several appliances writing to one central database).
//!
//! Both dialects get the same schema from embedded migrations (`migrations/sqlite`,
//! `migrations/postgres`) and the same SQL text: `$N` placeholders and `ON CONFLICT` work in
//! both. Inserts are idempotent by call uuid, so a CDR may be written more than once (a write
//! that timed out after the server committed it, a CSV journal imported twice) and still gives
//! exactly one row.

use std::{path::Path, str::FromStr as _, time::Duration};

use serde::Serialize;
use serde_json::Value;
use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use super::cdr::Cdr;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("connecting to {backend}: {source}")]
    Connect {
        backend: Backend,
        source: sqlx::Error,
    },
    #[error("migrating the {backend} schema: {source}")]
    Migrate {
        backend: Backend,
        source: sqlx::migrate::MigrateError,
    },
    /// Connected, but [`prepare`] has not (yet) migrated this database.
    #[error("{backend} schema not migrated yet (version {found:?}, this build needs {expected})")]
    Schema {
        backend: Backend,
        found: Option<i64>,
        expected: i64,
    },
    #[error("{backend}: {source}")]
    Query {
        backend: Backend,
        source: sqlx::Error,
    },
    #[error("{backend}: no answer within {timeout:?}")]
    Timeout { backend: Backend, timeout: Duration },
}

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

impl Backend {
    /// The backend of `url` by its scheme: `sqlite:`, `postgres:` or `postgresql:`.
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }
}

/// How a row reached the database (column `calls.stored_via`): lets an operator (and the fault
/// tests) see which calls went through the CSV journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredVia {
    /// Written live by the CDR writer.
    Direct,
    /// Imported from the CSV journal automatically when the database came back.
    Journal,
    /// Imported by `calltap import-csv`.
    Import,
}

impl StoredVia {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredVia::Direct => "direct",
            StoredVia::Journal => "journal",
            StoredVia::Import => "import",
        }
    }
}

/// Why a CDR's JSON cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a CDR: {0}")]
    Json(#[from] serde_json::Error),
    #[error("CDR without a uuid")]
    NoUuid,
}

/// The CDR as stored: NUL removed from every string (PostgreSQL text cannot hold it, and SIP
/// display names come off the wire), a uuid required.
pub fn stored_cdr(cdr: &Cdr) -> Result<Cdr, RecordError> {
    stored_value(serde_json::to_value(cdr)?)
}

/// A CDR read back from the CSV journal's JSON column, checked as [`stored_cdr`] does.
pub fn cdr_from_json(json: &str) -> Result<Cdr, RecordError> {
    stored_value(serde_json::from_str(json)?)
}

fn stored_value(mut v: Value) -> Result<Cdr, RecordError> {
    strip_nul(&mut v);
    let cdr: Cdr = serde_json::from_value(v)?;
    if cdr.uuid.trim().is_empty() {
        return Err(RecordError::NoUuid);
    }
    Ok(cdr)
}

fn strip_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', ""),
        Value::Array(a) => a.iter_mut().for_each(strip_nul),
        Value::Object(o) => o.values_mut().for_each(strip_nul),
        _ => {}
    }
}

/// Unsigned counters into BIGINT; nothing CallTap counts comes near 2^63, saturate if it does.
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The inserts, written once and instantiated per backend: sqlx's generic executor bounds are
/// heavier than the text they would save.
macro_rules! backend_sql {
    ($module:ident, $db:ty) => {
        mod $module {
            use super::{i, Cdr};

            /// Inserts one call and its children; false (and nothing written) when the uuid is
            /// already stored.
            pub(super) async fn insert_call(
                tx: &mut sqlx::Transaction<'_, $db>,
                c: &Cdr,
                via: &str,
                now: i64,
            ) -> Result<bool, sqlx::Error> {
                let rec = c.recording.as_ref();
                let done = sqlx::query(
                    "INSERT INTO calls (uuid, call_id, interaction_id, \
                     from_user, from_display, from_host, from_uri, \
                     to_user, to_display, to_host, to_uri, src_ip, dst_ip, \
                     start_at, answer_at, end_at, start_ns, answer_ns, end_ns, \
                     duration_ms, talk_ms, end_reason, codecs, unsupported_codecs, \
                     missing_directions, packets_caller, packets_callee, packets_rtcp, worker, \
                     recording_path, recording_sha256, recording_bytes, stored_via, stored_at_ns) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, \
                     $31, $32, $33, $34) ON CONFLICT (uuid) DO NOTHING",
                )
                .bind(&c.uuid)
                .bind(&c.call_id)
                .bind(&c.interaction_id)
                .bind(&c.from.user)
                .bind(&c.from.display)
                .bind(&c.from.host)
                .bind(&c.from.uri)
                .bind(&c.to.user)
                .bind(&c.to.display)
                .bind(&c.to.host)
                .bind(&c.to.uri)
                .bind(&c.src_ip)
                .bind(&c.dst_ip)
                .bind(&c.start)
                .bind(&c.answer)
                .bind(&c.end)
                .bind(i(c.start_ns))
                .bind(c.answer_ns.map(i))
                .bind(i(c.end_ns))
                .bind(i(c.duration_ms))
                .bind(i(c.talk_ms))
                .bind(&c.end_reason)
                .bind(c.codecs.join(","))
                .bind(c.unsupported_codecs.join(","))
                .bind(c.missing_directions.join(","))
                .bind(i(c.packets.caller))
                .bind(i(c.packets.callee))
                .bind(i(c.packets.rtcp))
                .bind(i64::from(c.worker))
                .bind(rec.map(|r| r.path.to_string_lossy().into_owned()))
                .bind(rec.map(|r| r.sha256.clone()))
                .bind(rec.map(|r| i(r.bytes)))
                .bind(via)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                for s in &c.streams {
                    sqlx::query(
                        "INSERT INTO streams (call_uuid, direction, ssrc, codec, packets, bytes, \
                         lost, duplicates, late, jitter_ms, mos, rtcp_packets, \
                         rtcp_fraction_lost, rtcp_jitter_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    )
                    .bind(&c.uuid)
                    .bind(&s.direction)
                    .bind(&s.ssrc)
                    .bind(&s.codec)
                    .bind(i(s.packets))
                    .bind(i(s.bytes))
                    .bind(i(s.lost))
                    .bind(i(s.duplicates))
                    .bind(i(s.late))
                    .bind(s.jitter_ms)
                    .bind(s.mos)
                    .bind(i(s.rtcp_packets))
                    .bind(s.rtcp_fraction_lost)
                    .bind(s.rtcp_jitter_ms)
                    .execute(&mut **tx)
                    .await?;
                }
                for d in &c.dtmf {
                    sqlx::query(
                        "INSERT INTO dtmf_events (call_uuid, side, digit, at_ms, duration_ms, \
                         source) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&c.uuid)
                    .bind(&d.side)
                    .bind(d.digit.to_string())
                    .bind(i(d.at_ms))
                    .bind(d.duration_ms.map(i64::from))
                    .bind(&d.source)
                    .execute(&mut **tx)
                    .await?;
                }
                for (n, g) in c.restart_gaps.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO restart_gaps (call_uuid, n, from_at, to_at, from_ns, to_ns, \
                         ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&c.uuid)
                    .bind(n as i64)
                    .bind(&g.from)
                    .bind(&g.to)
                    .bind(i(g.from_ns))
                    .bind(i(g.to_ns))
                    .bind(i(g.ms))
                    .execute(&mut **tx)
                    .await?;
                }
                for (n, e) in c.recording_events.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO recording_events (call_uuid, n, action, at, at_ms) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&c.uuid)
                    .bind(n as i64)
                    .bind(&e.action)
                    .bind(&e.ts)
                    .bind(i(e.at_ms))
                    .execute(&mut **tx)
                    .await?;
                }
                for (n, r) in c.rejected_requests.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO rejected_requests (call_uuid, n, method, src, dst, at_ms, \
                         reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(&c.uuid)
                    .bind(n as i64)
                    .bind(&r.method)
                    .bind(&r.src)
                    .bind(&r.dst)
                    .bind(i(r.at_ms))
                    .bind(&r.reason)
                    .execute(&mut **tx)
                    .await?;
                }
                // Columns of migration 0008, likewise.
                if c.dtmf_omitted > 0 || c.rejected_requests_omitted > 0 {
                    sqlx::query(
                        "UPDATE calls SET dtmf_omitted = $2, rejected_requests_omitted = $3 \
                         WHERE uuid = $1",
                    )
                    .bind(&c.uuid)
                    .bind(i(c.dtmf_omitted))
                    .bind(i(c.rejected_requests_omitted))
                    .execute(&mut **tx)
                    .await?;
                }
                // Columns of migration 0005, set apart so the long insert above stays as it is.
                if c.recording_mode.is_some() {
                    sqlx::query("UPDATE calls SET recording_mode = $2, rule_id = $3 WHERE uuid = $1")
                        .bind(&c.uuid)
                        .bind(&c.recording_mode)
                        .bind(c.rule_id)
                        .execute(&mut **tx)
                        .await?;
                }
                if let Some(r) = rec {
                    sqlx::query(
                        "INSERT INTO recordings (call_uuid, path, bytes, sha256, sample_rate, \
                         channels, duration_ms, raw_rtp_pcap) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (call_uuid, path) DO NOTHING",
                    )
                    .bind(&c.uuid)
                    .bind(r.path.to_string_lossy().into_owned())
                    .bind(i(r.bytes))
                    .bind(&r.sha256)
                    .bind(i64::from(r.sample_rate))
                    .bind(i64::from(r.channels))
                    .bind(i(r.duration_ms))
                    .bind(
                        r.raw_rtp_pcap
                            .as_ref()
                            .map(|p| p.to_string_lossy().into_owned()),
                    )
                    .execute(&mut **tx)
                    .await?;
                }
                // Portable MIN/MAX (SQLite has no LEAST/GREATEST, PostgreSQL no scalar MIN).
                sqlx::query(
                    "INSERT INTO interactions (interaction_id, first_start_ns, last_end_ns, calls) \
                     VALUES ($1, $2, $3, 1) ON CONFLICT (interaction_id) DO UPDATE SET \
                     first_start_ns = CASE WHEN excluded.first_start_ns < \
                     interactions.first_start_ns THEN excluded.first_start_ns \
                     ELSE interactions.first_start_ns END, \
                     last_end_ns = CASE WHEN excluded.last_end_ns > interactions.last_end_ns \
                     THEN excluded.last_end_ns ELSE interactions.last_end_ns END, \
                     calls = interactions.calls + 1",
                )
                .bind(&c.interaction_id)
                .bind(i(c.start_ns))
                .bind(i(c.end_ns))
                .execute(&mut **tx)
                .await?;
                Ok(true)
            }
        }
    };
}

backend_sql!(sqlite_sql, sqlx::Sqlite);
backend_sql!(postgres_sql, sqlx::Postgres);

/// An open, migrated CDR database.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same expression against whichever pool `db` holds.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

impl Db {
    /// Connects to the database at `url`, whose schema [`prepare`] has migrated: the daemon's
    /// parts and the API only connect, so that one migrator runs per process (two of them on a
    /// fresh SQLite file collide: "table calls already exists"). A database missing its
    /// schema, or part of it, is [`DbError::Schema`]: the caller retries as if it were away.
    /// `timeout` bounds connecting and, later, each wait for a pooled connection.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Db, DbError> {
        let db = open_pool(url, timeout, false).await?;
        let expected = migrator(db.backend()).iter().map(|m| m.version).max();
        let found = db.schema_version(timeout).await;
        match (found, expected) {
            (Ok(Some(found)), Some(expected)) if found >= expected => Ok(db),
            (Ok(_), None) => Ok(db),
            (found, expected) => {
                db.close().await;
                Err(DbError::Schema {
                    backend: db.backend(),
                    found: found.ok().flatten(),
                    expected: expected.unwrap_or(0),
                })
            }
        }
    }

    /// The newest migration applied; `None` (or an error: no `_sqlx_migrations`) before any.
    async fn schema_version(&self, timeout: Duration) -> Result<Option<i64>, DbError> {
        let sql = "SELECT MAX(version) FROM _sqlx_migrations WHERE success";
        let found = on_pool!(self, pool => bounded(self.backend(), timeout,
            sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(pool)).await?);
        found.map_err(self.query_err())
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    fn query_err(&self) -> impl Fn(sqlx::Error) -> DbError {
        let backend = self.backend();
        move |source| DbError::Query { backend, source }
    }

    /// True when the database answers a trivial query within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), DbError> {
        let done = on_pool!(self, pool => bounded(self.backend(), timeout,
            sqlx::query("SELECT 1").execute(pool)).await?.map(drop));
        done.map_err(self.query_err())
    }

    /// Stores `cdrs` in one transaction, each call with its streams, DTMF events and recording.
    /// Returns, per CDR, whether it was new (false: its uuid was already stored, nothing written).
    /// Either every CDR of the batch is stored or none is.
    pub async fn insert_batch(
        &self,
        cdrs: &[Cdr],
        via: StoredVia,
        timeout: Duration,
    ) -> Result<Vec<bool>, DbError> {
        let now = crate::clock::unix_ns_i64();
        let via = via.as_str();
        let work = async {
            match self {
                Db::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    let mut fresh = Vec::with_capacity(cdrs.len());
                    for c in cdrs {
                        fresh.push(sqlite_sql::insert_call(&mut tx, c, via, now).await?);
                    }
                    tx.commit().await?;
                    Ok(fresh)
                }
                Db::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    let mut fresh = Vec::with_capacity(cdrs.len());
                    for c in cdrs {
                        fresh.push(postgres_sql::insert_call(&mut tx, c, via, now).await?);
                    }
                    tx.commit().await?;
                    Ok(fresh)
                }
            }
        };
        // Dropping the transaction on timeout rolls it back; if the server had committed it
        // anyway, the journal copy is skipped as "already present" on import.
        bounded(self.backend(), timeout, work)
            .await?
            .map_err(self.query_err())
    }

    /// Rows in `calls`, and how many of them arrived by each path.
    pub async fn call_counts(&self) -> Result<CallCounts, DbError> {
        let rows: Vec<(String, i64)> = on_pool!(self, pool =>
            sqlx::query_as("SELECT stored_via, COUNT(*) FROM calls GROUP BY stored_via")
                .fetch_all(pool)
                .await)
        .map_err(self.query_err())?;
        let mut counts = CallCounts::default();
        for (via, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            counts.total += n;
            match via.as_str() {
                "direct" => counts.direct += n,
                "journal" => counts.journal += n,
                _ => counts.import += n,
            }
        }
        Ok(counts)
    }

    /// The uuids of every stored call, for reconciliation checks.
    pub async fn call_uuids(&self) -> Result<Vec<String>, DbError> {
        on_pool!(self, pool =>
            sqlx::query_scalar("SELECT uuid FROM calls ORDER BY uuid").fetch_all(pool).await)
        .map_err(self.query_err())
    }

    /// Points a call's recording (or, with `raw`, its raw RTP pcap) at its archived copy:
    /// `recordings.location = 'archive'` and the path columns (`recordings.path` and
    /// `calls.recording_path`, or `recordings.raw_rtp_pcap`) set to `archived` where they
    /// still hold `spool`. Returns the `recordings` rows that now point at `archived` (also
    /// those an earlier update already changed, so retrying is harmless); 0 when the call is
    /// not stored yet (its CDR may still be in the CSV journal).
    pub async fn set_recording_location(
        &self,
        uuid: &str,
        spool: &str,
        archived: &str,
        raw: bool,
        timeout: Duration,
    ) -> Result<u64, DbError> {
        let (recordings, calls) = if raw {
            (
                "UPDATE recordings SET raw_rtp_pcap = $3 \
                 WHERE call_uuid = $1 AND (raw_rtp_pcap = $2 OR raw_rtp_pcap = $3)",
                None,
            )
        } else {
            (
                "UPDATE recordings SET path = $3, location = 'archive' \
                 WHERE call_uuid = $1 AND (path = $2 OR path = $3)",
                Some(
                    "UPDATE calls SET recording_path = $3 \
                     WHERE uuid = $1 AND recording_path = $2",
                ),
            )
        };
        let work = async {
            on_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                let n = sqlx::query(recordings)
                    .bind(uuid)
                    .bind(spool)
                    .bind(archived)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if let Some(sql) = calls {
                    sqlx::query(sql)
                        .bind(uuid)
                        .bind(spool)
                        .bind(archived)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok::<u64, sqlx::Error>(n)
            })
        };
        bounded(self.backend(), timeout, work)
            .await?
            .map_err(self.query_err())
    }

    /// Marks the recording whose `recordings.path` is one of `stored` (its archive location and
    /// the spool path the row may still hold) as deleted at `at_ns` for `reason` (`retention`):
    /// `recordings.deleted_ns` and `deleted_reason`, migration 0007. An earlier mark is kept, so
    /// retrying is harmless. Returns the rows that now carry a mark for the file (also those
    /// marked before); 0 when no row names it (its CDR may still be in the CSV journal).
    pub async fn mark_recording_deleted(
        &self,
        stored: &[String],
        at_ns: u64,
        reason: &str,
        timeout: Duration,
    ) -> Result<u64, DbError> {
        if stored.is_empty() {
            return Ok(0);
        }
        let places: Vec<String> = (0..stored.len()).map(|k| format!("${}", k + 3)).collect();
        let sql = format!(
            "UPDATE recordings SET deleted_ns = COALESCE(deleted_ns, $1), \
             deleted_reason = COALESCE(deleted_reason, $2) WHERE path IN ({})",
            places.join(", ")
        );
        let work = async {
            on_pool!(self, pool => {
                let mut q = sqlx::query(&sql).bind(i(at_ns)).bind(reason);
                for p in stored {
                    q = q.bind(p);
                }
                q.execute(pool).await.map(|r| r.rows_affected())
            })
        };
        bounded(self.backend(), timeout, work)
            .await?
            .map_err(self.query_err())
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

/// Rows in `calls` by arrival path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    pub total: u64,
    pub direct: u64,
    pub journal: u64,
    pub import: u64,
}

async fn bounded<T>(
    backend: Backend,
    timeout: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, DbError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| DbError::Timeout { backend, timeout })
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The store suite, run against SQLite (a temp dir) and a real PostgreSQL cluster.
/// Opens (creating a SQLite file and its directory if missing) and migrates the database at
/// `url`: the one place the schema is created. The daemon calls it before any of its parts
/// connect, the one-shot commands before they read or write. Safe against other processes
/// doing the same at once (several recorders on one PostgreSQL server, `calltap token create`
/// beside a starting daemon): PostgreSQL through sqlx's advisory lock; SQLite, which sqlx
/// does not lock, by running the whole migration inside one `BEGIN IMMEDIATE` transaction, so
/// a second migrator waits (busy timeout) for the first to commit and then finds nothing to do.
pub async fn prepare(url: &str, timeout: Duration) -> Result<Db, DbError> {
    let db = open_creating(url, timeout).await?;
    let backend = db.backend();
    let migrated = match &db {
        Db::Sqlite(pool) => bounded(backend, timeout * 5, migrate_sqlite(pool)).await,
        Db::Postgres(pool) => bounded(backend, timeout * 5, migrator(backend).run(pool)).await,
    };
    if let Err(e) = migrated.and_then(|r| r.map_err(|source| DbError::Migrate { backend, source }))
    {
        db.close().await;
        return Err(e);
    }
    Ok(db)
}

/// [`open_pool`] creating what is missing. Another process creating or migrating the same
/// fresh SQLite file at that moment holds locks that switching it to WAL does not wait for
/// (SQLite answers "database is locked" at once there): tried again until `timeout`.
async fn open_creating(url: &str, timeout: Duration) -> Result<Db, DbError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match open_pool(url, timeout, true).await {
            Err(DbError::Connect {
                backend: Backend::Sqlite,
                source: sqlx::Error::Database(e),
            }) if matches!(e.code().as_deref(), Some("5" | "6"))
                && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// The SQLite migration under one write lock: sqlx's check of what is applied and its
/// `CREATE TABLE`s would otherwise interleave with another process's (its SQLite `lock()` is a
/// no-op). Each migration becomes a savepoint of the outer transaction.
async fn migrate_sqlite(pool: &SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::Connection as _;
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    SQLITE_MIGRATIONS.run(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

fn migrator(backend: Backend) -> &'static Migrator {
    match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    }
}

/// A pool on `url`; `create` makes a missing SQLite file (and its directory), which only
/// [`prepare`] asks for: a part that merely connects must not make an empty database.
async fn open_pool(url: &str, timeout: Duration, create: bool) -> Result<Db, DbError> {
    let bad = |reason: String| DbError::Url {
        url: redact(url),
        reason,
    };
    let backend = Backend::of_url(url)
        .ok_or_else(|| bad("expected sqlite://PATH or postgres://...".into()))?;
    let connect_err = |source| DbError::Connect { backend, source };
    Ok(match backend {
        Backend::Sqlite => {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| bad(e.to_string()))?
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                // A CDR that was acknowledged is on disk: compliance over speed; the writer
                // batches rows per transaction to keep the fsync count low.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(timeout);
            if let Some(dir) = opts.get_filename().parent().filter(|_| create) {
                if dir != Path::new("") {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .acquire_timeout(timeout)
                .connect_with(opts);
            Db::Sqlite(
                bounded(backend, timeout, pool)
                    .await?
                    .map_err(connect_err)?,
            )
        }
        Backend::Postgres => {
            let opts = PgConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(timeout)
                .connect_with(opts);
            Db::Postgres(
                bounded(backend, timeout, pool)
                    .await?
                    .map_err(connect_err)?,
            )
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        path::{Path, PathBuf},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::store::{
        cdr::{Dtmf, PacketCounts, Party, Recording, StreamQuality},
        csv_journal::{self, CsvJournal},
        writer::{CdrWriter, Mode, WriterConfig},
    };

    const T: Duration = Duration::from_secs(5);

    /// A complete CDR; calls `n` and `n ^ 1` share an interaction.
    pub(crate) fn sample_cdr(n: u32) -> Cdr {
        let start_ns = 1_700_000_000_000_000_000 + u64::from(n) * 1_000_000_000;
        let party = |user: &str| Party {
            user: Some(user.to_string()),
            display: Some(format!("Agent \"{user}\", desk")),
            host: "198.18.0.2".into(),
            uri: format!("sip:{user}@198.18.0.2"),
        };
        let stream = |direction: &str| StreamQuality {
            direction: direction.into(),
            ssrc: Some(format!("0x{n:08x}")),
            codec: Some("PCMU".into()),
            packets: 100,
            bytes: 17_200,
            lost: 1,
            jitter_ms: 0.5,
            mos: Some(4.3),
            ..StreamQuality::default()
        };
        Cdr {
            uuid: format!("00000000-0000-4000-8000-{n:012}"),
            call_id: format!("call-{n}@uac"),
            interaction_id: format!("ix-{}", n / 2),
            from: party(&format!("10{n}")),
            to: party("2000"),
            src_ip: "198.18.0.1".into(),
            dst_ip: "198.18.0.2".into(),
            start: super::super::cdr::rfc3339(start_ns),
            answer: Some(super::super::cdr::rfc3339(start_ns + 1_000_000_000)),
            end: super::super::cdr::rfc3339(start_ns + 3_000_000_000),
            start_ns,
            answer_ns: Some(start_ns + 1_000_000_000),
            end_ns: start_ns + 3_000_000_000,
            duration_ms: 3000,
            talk_ms: 2000,
            end_reason: "bye_caller".into(),
            codecs: vec!["PCMU".into()],
            unsupported_codecs: vec![],
            missing_directions: vec![],
            packets: PacketCounts {
                caller: 100,
                callee: 100,
                rtcp: 2,
            },
            streams: vec![stream("caller"), stream("callee")],
            dtmf: vec![Dtmf {
                side: "caller".into(),
                digit: '5',
                at_ms: 1500,
                duration_ms: Some(160),
                source: "rfc4733".into(),
            }],
            dtmf_omitted: 0,
            rejected_requests: vec![crate::store::cdr::RejectedRequest {
                method: "BYE".into(),
                src: "198.18.0.66:5060".into(),
                dst: "198.18.0.2:5060".into(),
                at_ms: 1700,
                reason: "unknown_source".into(),
            }],
            rejected_requests_omitted: 3,
            recording: Some(Recording {
                path: PathBuf::from(format!("/var/lib/calltap/recordings/{n}.wav")),
                bytes: 64_044,
                sha256: "ab".repeat(32),
                sample_rate: 8000,
                channels: 2,
                duration_ms: 2000,
                raw_rtp_pcap: None,
                error: None,
                closing: Default::default(),
            }),
            worker: n % 2,
            recording_events: vec![crate::store::cdr::RecordingEvent {
                action: "pause".into(),
                ts: super::super::cdr::rfc3339(start_ns + 1_500_000_000),
                at_ms: 1500,
            }],
            restart_gaps: vec![crate::store::cdr::RestartGap::new(
                1_700_000_002_000_000_000 + u64::from(n),
                1_700_000_004_500_000_000 + u64::from(n),
            )],
            recording_mode: Some("record".into()),
            rule_id: None,
            recording_failed: None,
        }
    }

    fn rows(cdrs: &[Cdr]) -> Vec<Cdr> {
        cdrs.iter()
            .map(|c| stored_cdr(c).expect("stored form"))
            .collect()
    }

    pub(crate) async fn count(db: &Db, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        on_pool!(db, pool => sqlx::query_scalar(&sql).fetch_one(pool).await).expect("count")
    }

    fn write_journal(dir: &Path, cdrs: &[Cdr]) -> PathBuf {
        let mut journal = CsvJournal::new(dir);
        for c in cdrs {
            journal.append(c).expect("append");
        }
        journal.path().to_path_buf()
    }

    async fn case_insert_is_idempotent_with_children(url: &str) {
        let db = prepare(url, T).await.expect("connect");
        let cdrs: Vec<Cdr> = (0..4).map(sample_cdr).collect();
        let fresh = db
            .insert_batch(&rows(&cdrs), StoredVia::Direct, T)
            .await
            .expect("insert");
        assert_eq!(fresh, vec![true; 4]);
        let again = db
            .insert_batch(&rows(&cdrs[1..3]), StoredVia::Journal, T)
            .await
            .expect("insert again");
        assert_eq!(again, vec![false; 2]);
        assert_eq!(count(&db, "calls").await, 4);
        assert_eq!(count(&db, "streams").await, 8);
        assert_eq!(count(&db, "dtmf_events").await, 4);
        assert_eq!(count(&db, "recordings").await, 4);
        assert_eq!(count(&db, "interactions").await, 2);
        assert_eq!(count(&db, "restart_gaps").await, 4);
        assert_eq!(count(&db, "recording_events").await, 4);
        assert_eq!(count(&db, "rejected_requests").await, 4);
        let gap: (i64, i64) = on_pool!(&db, pool => sqlx::query_as(
            "SELECT ms, to_ns - from_ns FROM restart_gaps WHERE call_uuid = $1")
            .bind(&cdrs[2].uuid)
            .fetch_one(pool).await)
        .expect("restart gap");
        assert_eq!(gap, (2500, 2_500_000_000));
        let ix: (i64, i64, i64) = on_pool!(&db, pool => sqlx::query_as(
            "SELECT calls, first_start_ns, last_end_ns FROM interactions WHERE interaction_id = 'ix-0'")
            .fetch_one(pool).await)
        .expect("interaction");
        assert_eq!(
            ix,
            (
                2,
                i(cdrs[0].start_ns),
                i(cdrs[1].end_ns) // call 1 ends last
            )
        );
        let counts = db.call_counts().await.expect("counts");
        assert_eq!((counts.total, counts.direct, counts.journal), (4, 4, 0));
        // Reopening runs the migrations again: a no-op.
        db.close().await;
        let db = prepare(url, T).await.expect("reconnect");
        assert_eq!(count(&db, "calls").await, 4);
        db.close().await;
    }

    async fn case_retention_marks_a_recording_deleted(url: &str) {
        let db = prepare(url, T).await.expect("connect");
        let cdrs: Vec<Cdr> = (0..2).map(sample_cdr).collect();
        db.insert_batch(&rows(&cdrs), StoredVia::Direct, T)
            .await
            .expect("insert");
        let spool = "/var/lib/calltap/recordings/1.wav";
        let archived = "/nas/calls/1.wav";
        // The row still names the spool copy (its archive update is not applied yet): retention
        // finds it by either path.
        let stored = vec![archived.to_string(), spool.to_string()];
        let at = 1_800_000_000_123_456_789u64;
        let mark = |stored: Vec<String>, at: u64, reason: &'static str| {
            let db = db.clone();
            async move {
                db.mark_recording_deleted(&stored, at, reason, T)
                    .await
                    .expect("mark")
            }
        };
        assert_eq!(mark(stored.clone(), at, "retention").await, 1);
        // A retry (or a second note) finds the row and keeps the first mark.
        assert_eq!(mark(stored, at + 1, "other").await, 1);
        // The archive update moves the row afterwards; the mark stays with it.
        let moved = db
            .set_recording_location(&cdrs[1].uuid, spool, archived, false, T)
            .await
            .expect("move");
        assert_eq!(moved, 1);
        // A file no row names: nothing marked.
        assert_eq!(
            mark(vec!["/nas/calls/other.wav".into()], at, "retention").await,
            0
        );
        let marks: Vec<(String, String, Option<i64>, Option<String>)> = on_pool!(&db, pool =>
            sqlx::query_as("SELECT call_uuid, path, deleted_ns, deleted_reason FROM recordings \
                            ORDER BY call_uuid")
                .fetch_all(pool).await)
        .expect("marks");
        assert_eq!(
            marks,
            vec![
                (
                    cdrs[0].uuid.clone(),
                    "/var/lib/calltap/recordings/0.wav".to_string(),
                    None,
                    None
                ),
                (
                    cdrs[1].uuid.clone(),
                    archived.to_string(),
                    Some(i(at)),
                    Some("retention".to_string())
                ),
            ]
        );
        db.close().await;
    }

    async fn case_journal_import_twice_creates_no_duplicates(url: &str, dir: &Path) {
        let db = prepare(url, T).await.expect("connect");
        let cdrs: Vec<Cdr> = (10..60).map(sample_cdr).collect();
        let path = write_journal(dir, &cdrs);
        let first = csv_journal::import_file(&db, &path, StoredVia::Import, T)
            .await
            .expect("import");
        assert_eq!(
            (first.rows, first.imported, first.already_present),
            (50, 50, 0)
        );
        assert!(first.bad.is_empty(), "{:?}", first.bad);
        let second = csv_journal::import_file(&db, &path, StoredVia::Import, T)
            .await
            .expect("import again");
        assert_eq!(
            (second.rows, second.imported, second.already_present),
            (50, 0, 50)
        );
        assert_eq!(count(&db, "calls").await, 50);
        assert_eq!(count(&db, "streams").await, 100);
        // Every stored uuid is one of the journal's.
        let mut want: Vec<String> = cdrs.iter().map(|c| c.uuid.clone()).collect();
        want.sort();
        assert_eq!(db.call_uuids().await.expect("uuids"), want);
        db.close().await;
    }

    async fn case_partial_import_resumes(url: &str, dir: &Path) {
        let db = prepare(url, T).await.expect("connect");
        let cdrs: Vec<Cdr> = (100..1300).map(sample_cdr).collect();
        let path = write_journal(dir, &cdrs);
        // An import that stopped after the first two batches (and one stray row) had committed.
        let mut done = rows(&cdrs[..2 * csv_journal::IMPORT_BATCH]);
        done.extend(rows(&cdrs[1100..1101]));
        db.insert_batch(&done, StoredVia::Journal, T)
            .await
            .expect("partial");
        let report = csv_journal::import_file(&db, &path, StoredVia::Import, T)
            .await
            .expect("resume");
        assert_eq!(report.rows, 1200);
        assert_eq!(report.already_present, 1001);
        assert_eq!(report.imported, 199);
        assert_eq!(count(&db, "calls").await, 1200);
        let counts = db.call_counts().await.expect("counts");
        assert_eq!((counts.journal, counts.import), (1001, 199));
        db.close().await;
    }

    async fn case_bad_rows_are_reported_by_line(url: &str, dir: &Path) {
        let db = prepare(url, T).await.expect("connect");
        let path = write_journal(dir, &[sample_cdr(1), sample_cdr(2)]);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("x,y,z,w,,,1,bye,\"{\"\"not\"\": \"\"a cdr\"\"}\"\n");
        text.push_str("only,three,columns\n");
        std::fs::write(&path, text).expect("write");
        let mut journal = CsvJournal::new(dir);
        journal.append(&sample_cdr(3)).expect("append after junk");
        let report = csv_journal::import_file(&db, &path, StoredVia::Import, T)
            .await
            .expect("import");
        assert_eq!((report.rows, report.imported), (5, 3));
        let lines: Vec<u64> = report.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 5], "{:?}", report.bad);
        db.close().await;
    }

    /// Four migrators (each its own pool, as separate processes have) on one fresh SQLite file,
    /// 20 rounds: every one succeeds, none sees "already exists", the schema is whole.
    #[test]
    fn concurrent_prepares_on_a_fresh_sqlite_file_all_succeed() {
        for round in 0..20 {
            let tmp = tempfile::tempdir().expect("tmp");
            let url = format!("sqlite://{}", tmp.path().join("db/calltap.db").display());
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let (url, barrier) = (url.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let rt = crate::runtime::current_thread().expect("rt");
                        barrier.wait();
                        rt.block_on(async {
                            let db = prepare(&url, T).await?;
                            db.close().await;
                            Ok::<_, DbError>(())
                        })
                    })
                })
                .collect();
            for r in racers {
                let done = r.join().expect("racer");
                assert!(done.is_ok(), "round {round}: {done:?}");
            }
            let rt = crate::runtime::current_thread().expect("rt");
            rt.block_on(async {
                let db = Db::connect(&url, T).await.expect("connect after prepare");
                assert_eq!(count(&db, "calls").await, 0);
                db.close().await;
            });
        }
    }

    /// Connecting never makes a database: before `prepare`, a missing file or an empty schema
    /// is an error the caller retries.
    #[test]
    fn connect_does_not_create_or_migrate() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("calltap.db");
        let url = format!("sqlite://{}", path.display());
        let rt = crate::runtime::current_thread().expect("rt");
        rt.block_on(async {
            assert!(Db::connect(&url, T).await.is_err());
            assert!(!path.exists(), "connect created the file");
            std::fs::File::create(&path).expect("empty file");
            match Db::connect(&url, T).await {
                Err(DbError::Schema { found: None, .. }) => {}
                other => panic!("expected a schema error, got {other:?}"),
            }
            prepare(&url, T).await.expect("prepare").close().await;
            Db::connect(&url, T).await.expect("connect").close().await;
        });
    }

    /// The writer falls back to the journal while `outage` holds and imports it afterwards.
    fn case_writer_outage(url: &str, dir: &Path, outage: impl FnOnce(), restore: impl FnOnce()) {
        // As the daemon does: the schema first, then the writer, which only connects.
        let rt = crate::runtime::current_thread().expect("rt");
        rt.block_on(async { prepare(url, T).await.expect("prepare").close().await });
        let writer = CdrWriter::start(WriterConfig {
            url: url.to_string(),
            data_dir: dir.to_path_buf(),
            retry_interval: Duration::from_millis(200),
            write_timeout: Duration::from_secs(2),
        })
        .expect("writer");
        let counters = writer.counters();
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !f() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        for n in 0..5 {
            writer.send(sample_cdr(n));
        }
        wait_for("5 direct rows", &|| {
            counters
                .rows_written
                .load(std::sync::atomic::Ordering::Acquire)
                == 5
        });
        outage();
        for n in 5..15 {
            writer.send(sample_cdr(n));
        }
        wait_for("journal mode", &|| {
            counters
                .rows_journaled
                .load(std::sync::atomic::Ordering::Acquire)
                == 10
        });
        assert!(counters.snapshot().db_failures > 0);
        restore();
        wait_for("import", &|| counters.snapshot().imports >= 1);
        for n in 15..20 {
            writer.send(sample_cdr(n));
        }
        let snap = writer.finish();
        assert_eq!(snap.mode, Mode::Database, "{snap:?}");
        assert_eq!(snap.rows_written + snap.rows_imported, 20, "{snap:?}");
        assert_eq!(snap.rows_rejected + snap.journal_errors, 0, "{snap:?}");
        let imported: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".imported"))
            .collect();
        assert!(
            !imported.is_empty(),
            "no rotated journal in {}",
            dir.display()
        );
        let rt = crate::runtime::current_thread().expect("rt");
        rt.block_on(async {
            let db = prepare(url, T).await.expect("connect");
            let counts = db.call_counts().await.expect("counts");
            assert_eq!(counts.total, 20, "{counts:?}");
            assert_eq!(counts.journal, 10, "{counts:?}");
            db.close().await;
        });
    }

    fn run_suite(mut fresh: impl FnMut(&str) -> String, tmp: &Path) {
        let rt = crate::runtime::current_thread().expect("rt");
        let case_dir = |name: &str| {
            let d = tmp.join(name);
            std::fs::create_dir_all(&d).expect("case dir");
            d
        };
        rt.block_on(case_insert_is_idempotent_with_children(&fresh("insert")));
        rt.block_on(case_retention_marks_a_recording_deleted(&fresh("deleted")));
        let d = case_dir("twice");
        rt.block_on(case_journal_import_twice_creates_no_duplicates(
            &fresh("twice"),
            &d,
        ));
        let d = case_dir("partial");
        let started = Instant::now();
        rt.block_on(case_partial_import_resumes(&fresh("partial"), &d));
        eprintln!(
            "partial import case (1200 journal rows, 1001 present): {:?}",
            started.elapsed()
        );
        let d = case_dir("bad");
        rt.block_on(case_bad_rows_are_reported_by_line(&fresh("bad"), &d));
    }

    #[test]
    fn store_suite_sqlite() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().to_path_buf();
        run_suite(
            |case| format!("sqlite://{}", root.join(case).join("calltap.db").display()),
            tmp.path(),
        );
    }

    #[test]
    fn store_suite_postgres() {
        if !calltap_lab::postgres::require_postgres("store_suite_postgres") {
            return;
        }
        let pg = calltap_lab::postgres::Postgres::start().expect("postgres");
        let tmp = tempfile::tempdir().expect("tmp");
        run_suite(
            |case| {
                pg.create_database(case).expect("createdb");
                pg.url(case)
            },
            tmp.path(),
        );
    }

    /// SQLite "outage": another process holds the write lock, so every write times out (a slow
    /// database is handled like a dead one).
    #[test]
    fn writer_journals_while_sqlite_is_locked_and_imports_after() {
        let tmp = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", tmp.path().join("db/calltap.db").display());
        let data = tmp.path().join("data");
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
        let locker_url = url.clone();
        let locker = std::sync::Mutex::new(None);
        case_writer_outage(
            &url,
            &data,
            || {
                *locker.lock().expect("locker") = Some(std::thread::spawn(move || {
                    let rt = crate::runtime::current_thread().expect("rt");
                    rt.block_on(async {
                        use sqlx::Connection as _;
                        let mut conn = sqlx::SqliteConnection::connect(&locker_url)
                            .await
                            .expect("lock connection");
                        sqlx::query("BEGIN EXCLUSIVE")
                            .execute(&mut conn)
                            .await
                            .expect("lock");
                        locked_tx.send(()).expect("locked");
                        let _ = release_rx.recv();
                        sqlx::query("COMMIT")
                            .execute(&mut conn)
                            .await
                            .expect("unlock");
                    });
                }));
                locked_rx.recv().expect("lock taken");
            },
            || {
                release_tx.send(()).expect("release");
                if let Some(h) = locker.lock().expect("locker").take() {
                    h.join().expect("locker");
                }
            },
        );
    }

    #[test]
    fn writer_journals_while_postgres_is_down_and_imports_after() {
        if !calltap_lab::postgres::require_postgres("writer_postgres_outage") {
            return;
        }
        let pg = std::sync::Mutex::new(calltap_lab::postgres::Postgres::start().expect("pg"));
        let url = {
            let pg = pg.lock().expect("pg");
            pg.create_database("writer").expect("createdb");
            pg.url("writer")
        };
        let tmp = tempfile::tempdir().expect("tmp");
        case_writer_outage(
            &url,
            tmp.path(),
            || pg.lock().expect("pg").stop().expect("stop postgres"),
            || {
                pg.lock()
                    .expect("pg")
                    .start_again()
                    .expect("start postgres")
            },
        );
    }

    #[test]
    fn stored_form_round_trips_through_the_csv_journal() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut cdr = sample_cdr(7);
        cdr.from.display = Some("Null\0byte, \"quoted\"\nnewline".into());
        let path = write_journal(tmp.path(), &[cdr.clone()]);
        let mut reader = csv::Reader::from_path(&path).expect("reader");
        let headers = reader.headers().expect("headers").clone();
        assert_eq!(headers.iter().collect::<Vec<_>>(), csv_journal::COLUMNS);
        let record = reader.records().next().expect("row").expect("valid row");
        assert_eq!(&record[0], cdr.uuid);
        assert_eq!(&record[4], "107");
        let back = cdr_from_json(&record[8]).expect("cdr_json");
        assert_eq!(back, stored_cdr(&cdr).expect("stored"));
        assert_eq!(
            back.restart_gaps, cdr.restart_gaps,
            "restart gaps survive the journal"
        );
        assert_eq!(back.restart_gaps[0].ms, 2500);
        // A row of a version without restart gaps still imports.
        let mut old_row: serde_json::Value = serde_json::from_str(&record[8]).expect("json");
        old_row
            .as_object_mut()
            .expect("object")
            .remove("restart_gaps");
        let old = cdr_from_json(&old_row.to_string()).expect("older row");
        assert!(old.restart_gaps.is_empty());
        assert_eq!(
            back.from.display.as_deref(),
            Some("Nullbyte, \"quoted\"\nnewline")
        );
    }

    #[test]
    fn a_torn_last_row_is_set_aside_not_merged_with_the_next() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = write_journal(tmp.path(), &[sample_cdr(1)]);
        let mut bytes = std::fs::read(&path).expect("read");
        let full = bytes.len();
        bytes.extend_from_slice(b"00000000-0000-4000-8000-000000000002,call-2,\"{\"\"uu");
        std::fs::write(&path, &bytes).expect("torn write");
        let mut journal = CsvJournal::new(tmp.path());
        journal.append(&sample_cdr(3)).expect("append");
        let torn: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".torn"))
            .collect();
        assert_eq!(torn.len(), 1);
        let mut reader = csv::Reader::from_path(&path).expect("reader");
        let uuids: Vec<String> = reader
            .records()
            .map(|r| r.expect("row")[0].to_string())
            .collect();
        assert_eq!(uuids, vec![sample_cdr(1).uuid, sample_cdr(3).uuid]);
        assert!(std::fs::metadata(&path).expect("meta").len() > full as u64);
    }

    #[test]
    fn rotation_moves_rows_to_pending_and_new_rows_start_a_fresh_journal() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut journal = CsvJournal::new(tmp.path());
        assert_eq!(journal.rotate_for_import().expect("empty"), None);
        journal.append(&sample_cdr(1)).expect("append");
        let pending = journal.rotate_for_import().expect("rotate").expect("rows");
        assert_eq!(
            csv_journal::pending_files(tmp.path()),
            vec![pending.clone()]
        );
        journal.append(&sample_cdr(2)).expect("append after rotate");
        assert!(journal.has_rows());
        let done = csv_journal::mark_imported(&pending).expect("mark");
        assert!(done.to_string_lossy().ends_with(".imported"));
        assert!(csv_journal::pending_files(tmp.path()).is_empty());
    }

    #[test]
    fn url_scheme_and_redaction() {
        assert_eq!(Backend::of_url("sqlite:///x.db"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
    }
}
