//! Recording rules in the CDR database (`recording_rules`, migrations 0001 and 0005): create,
//! read, update, delete. Every write is validated with [`crate::rules::validate`]
//! first, so what is stored always compiles into the matcher.
//!
//! Column mapping (0001 named the first three): `match_from` = caller pattern, `match_to` =
//! callee pattern, `match_ip` = either party's address, then `match_party`, `match_caller_ip`,
//! `match_callee_ip`, `match_domain`.

use crate::{
    rules::{validate, Conditions, LiveRules, Rule, RuleAction, RuleError},
    store::{
        config::DatabaseConfig,
        db::{Db, DbError},
    },
};

/// What a client sends to create or replace a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInput {
    pub name: String,
    pub priority: i64,
    pub enabled: bool,
    pub action: RuleAction,
    pub conditions: Conditions,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleStoreError {
    #[error("{0}")]
    Invalid(#[from] RuleError),
    #[error("a rule named {0:?} already exists")]
    NameTaken(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

const COLUMNS: &str = "id, name, priority, enabled, action, match_from, match_to, match_party, \
                       match_caller_ip, match_callee_ip, match_ip, match_domain";

/// A `recording_rules` row, columns as named in [`COLUMNS`].
#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    name: String,
    priority: i64,
    enabled: bool,
    action: String,
    match_from: Option<String>,
    match_to: Option<String>,
    match_party: Option<String>,
    match_caller_ip: Option<String>,
    match_callee_ip: Option<String>,
    match_ip: Option<String>,
    match_domain: Option<String>,
}

/// A stored row as a rule; `None` (logged) for an action this version does not know (a row
/// written by hand or by a newer version), which is then left out rather than guessed at.
fn rule_of(r: Row) -> Option<Rule> {
    let Some(action) = RuleAction::parse(&r.action) else {
        log::error!(
            "recording rule {} ({:?}): unknown action {:?}; ignored",
            r.id,
            r.name,
            r.action
        );
        return None;
    };
    Some(Rule {
        id: r.id,
        name: r.name,
        priority: r.priority,
        enabled: r.enabled,
        action,
        conditions: Conditions {
            caller: r.match_from,
            callee: r.match_to,
            party: r.match_party,
            caller_ip: r.match_caller_ip,
            callee_ip: r.match_callee_ip,
            ip: r.match_ip,
            domain: r.match_domain,
        },
    })
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds; maps sqlx errors.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {{
        let db: &Db = $db;
        let r = match db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        };
        r.map_err(|source| DbError::Query {
            backend: db.backend(),
            source,
        })
    }};
}

fn check(input: &RuleInput) -> Result<(), RuleStoreError> {
    Ok(validate(&input.name, input.priority, &input.conditions)?)
}

/// A unique-name violation becomes [`RuleStoreError::NameTaken`].
fn name_taken(name: &str) -> impl Fn(DbError) -> RuleStoreError + '_ {
    move |e| match &e {
        DbError::Query {
            source: sqlx::Error::Database(d),
            ..
        } if d.is_unique_violation() => RuleStoreError::NameTaken(name.to_string()),
        _ => RuleStoreError::Db(e),
    }
}

/// Every rule, in evaluation order (priority, then id).
pub async fn list(db: &Db) -> Result<Vec<Rule>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM recording_rules ORDER BY priority, id");
    let rows: Vec<Row> = on_pool!(db, p => sqlx::query_as(&sql).fetch_all(p).await)?;
    Ok(rows.into_iter().filter_map(rule_of).collect())
}

pub async fn get(db: &Db, id: i64) -> Result<Option<Rule>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM recording_rules WHERE id = $1");
    let row: Option<Row> =
        on_pool!(db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await)?;
    Ok(row.and_then(rule_of))
}

/// Binds a rule's fields as `$1`..`$12` in the order of the INSERT and UPDATE below.
macro_rules! bind_input {
    ($q:expr, $i:expr, $now:expr) => {{
        let c = &$i.conditions;
        $q.bind(&$i.name)
            .bind($i.priority)
            .bind($i.enabled)
            .bind($i.action.as_str())
            .bind(&c.caller)
            .bind(&c.callee)
            .bind(&c.party)
            .bind(&c.caller_ip)
            .bind(&c.callee_ip)
            .bind(&c.ip)
            .bind(&c.domain)
            .bind($now)
    }};
}

/// Stores a new rule; the stored rule (with its id).
pub async fn create(db: &Db, input: &RuleInput) -> Result<Rule, RuleStoreError> {
    check(input)?;
    let sql = "INSERT INTO recording_rules (name, priority, enabled, action, match_from, \
               match_to, match_party, match_caller_ip, match_callee_ip, match_ip, match_domain, \
               created_ns, updated_ns) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) RETURNING id";
    let now = crate::clock::unix_ns_i64();
    let (id,): (i64,) = on_pool!(db, p =>
        bind_input!(sqlx::query_as(sql), input, now).fetch_one(p).await)
    .map_err(name_taken(&input.name))?;
    Ok(stored(id, input))
}

/// Replaces rule `id` whole; `None` when there is no such rule.
pub async fn update(db: &Db, id: i64, input: &RuleInput) -> Result<Option<Rule>, RuleStoreError> {
    check(input)?;
    let sql = "UPDATE recording_rules SET name = $1, priority = $2, enabled = $3, action = $4, \
               match_from = $5, match_to = $6, match_party = $7, match_caller_ip = $8, \
               match_callee_ip = $9, match_ip = $10, match_domain = $11, updated_ns = $12 \
               WHERE id = $13";
    let now = crate::clock::unix_ns_i64();
    let n = on_pool!(db, p =>
        bind_input!(sqlx::query(sql), input, now).bind(id).execute(p).await
            .map(|r| r.rows_affected()))
    .map_err(name_taken(&input.name))?;
    Ok((n > 0).then(|| stored(id, input)))
}

/// Deletes rule `id`; false when there was none.
pub async fn delete(db: &Db, id: i64) -> Result<bool, DbError> {
    let n = on_pool!(db, p =>
        sqlx::query("DELETE FROM recording_rules WHERE id = $1").bind(id).execute(p).await
            .map(|r| r.rows_affected()))?;
    Ok(n > 0)
}

/// Loads the rules into `live` on a thread of its own, retrying until the database answers:
/// `calltap run` records from its first second whatever the database does, under the default
/// mode until the rules are in (logged once when the first attempt fails). The thread ends once
/// they are loaded, or when `stop` is set.
pub fn spawn_loader(
    database: &DatabaseConfig,
    data_dir: &std::path::Path,
    live: std::sync::Arc<LiveRules>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<RulesLoader> {
    use std::{sync::atomic::Ordering, time::Duration};
    let url = database.url_in(data_dir);
    let timeout = Duration::from_millis(database.write_timeout_ms);
    let first = Duration::from_millis(database.retry_interval_ms.max(100));
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let failed_attempts = failed.clone();
    let thread = std::thread::Builder::new()
        .name("rules-load".into())
        .spawn(move || {
            let rt = match crate::runtime::current_thread() {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!(
                        "recording rules not loaded (no runtime: {e}); default mode applies"
                    );
                    return;
                }
            };
            let mut pause = first;
            let mut failures = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let ticket = live.ticket();
                let loaded = rt.block_on(async {
                    let db = Db::connect(&url, timeout).await?;
                    let rules = list(&db).await;
                    db.close().await;
                    rules
                });
                match loaded {
                    Ok(rules) => {
                        if !live.replace_from(ticket, &rules) {
                            log::info!(
                                "recording rules: in force already (changed through the API)"
                            );
                            return;
                        }
                        let set = live.get();
                        log::info!(
                            "recording rules: {} enabled of {}, default {}",
                            set.len(),
                            rules.len(),
                            set.default_action().as_str()
                        );
                        return;
                    }
                    Err(e) => {
                        if failures == 0 {
                            log::warn!(
                                "recording rules not loaded ({e}); default mode {} applies \
                                 until the database answers",
                                live.get().default_action().as_str()
                            );
                        }
                        failures += 1;
                        failed.store(failures, Ordering::Release);
                    }
                }
                // Sleep in small steps so a stop is noticed quickly.
                let until = std::time::Instant::now() + pause;
                while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                pause = (pause * 2).min(first * 8);
            }
        })?;
    Ok(RulesLoader {
        thread,
        failed_attempts,
    })
}

/// The rules loader's thread and how often it has failed so far: a test sees it retry
/// instead of guessing from the time that passed.
pub struct RulesLoader {
    pub thread: std::thread::JoinHandle<()>,
    pub failed_attempts: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

fn stored(id: i64, input: &RuleInput) -> Rule {
    Rule {
        id,
        name: input.name.clone(),
        priority: input.priority,
        enabled: input.enabled,
        action: input.action,
        conditions: input.conditions.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn input(name: &str, priority: i64, action: RuleAction) -> RuleInput {
        RuleInput {
            name: name.into(),
            priority,
            enabled: true,
            action,
            conditions: Conditions {
                caller: Some("100*".into()),
                ip: Some("198.18.0.0/15".into()),
                domain: Some("*.example.com".into()),
                ..Conditions::default()
            },
        }
    }

    async fn crud(url: &str) {
        let db = crate::store::db::prepare(url, Duration::from_secs(10))
            .await
            .expect("connect");
        assert!(list(&db).await.expect("list").is_empty());
        let a = create(&db, &input("a", 20, RuleAction::Skip))
            .await
            .expect("create a");
        let b = create(&db, &input("b", 10, RuleAction::OnDemand))
            .await
            .expect("create b");
        assert_ne!(a.id, b.id);
        assert_eq!(get(&db, a.id).await.expect("get"), Some(a.clone()));
        // Evaluation order: priority first.
        assert_eq!(list(&db).await.expect("list"), vec![b.clone(), a.clone()]);
        assert!(matches!(
            create(&db, &input("a", 1, RuleAction::Record)).await,
            Err(RuleStoreError::NameTaken(_))
        ));
        let mut bad = input("c", 1, RuleAction::Record);
        bad.conditions.callee_ip = Some("300.0.0.1".into());
        match create(&db, &bad).await {
            Err(RuleStoreError::Invalid(e)) => assert_eq!(e.field, "match.callee_ip"),
            other => panic!("bad CIDR stored: {other:?}"),
        }
        let mut changed = input("a2", 5, RuleAction::Record);
        changed.enabled = false;
        changed.conditions = Conditions {
            party: Some("2000".into()),
            caller_ip: Some("2001:db8::/32".into()),
            callee_ip: Some("10.0.0.1".into()),
            callee: Some("?".into()),
            ..Conditions::default()
        };
        let u = update(&db, a.id, &changed)
            .await
            .expect("update")
            .expect("exists");
        assert_eq!(get(&db, a.id).await.expect("get"), Some(u.clone()));
        assert!(!u.enabled);
        assert!(matches!(
            update(&db, a.id, &input("b", 5, RuleAction::Record)).await,
            Err(RuleStoreError::NameTaken(_))
        ));
        assert_eq!(
            update(&db, 999_999, &changed)
                .await
                .expect("update missing"),
            None
        );
        assert!(delete(&db, a.id).await.expect("delete"));
        assert!(!delete(&db, a.id).await.expect("delete again"));
        assert_eq!(get(&db, a.id).await.expect("get"), None);
        assert_eq!(list(&db).await.expect("list"), vec![b]);
        db.close().await;
    }

    fn rt() -> tokio::runtime::Runtime {
        crate::runtime::current_thread().expect("rt")
    }

    #[test]
    fn rules_crud_sqlite() {
        let tmp = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", tmp.path().join("calltap.db").display());
        rt().block_on(crud(&url));
    }

    /// `calltap run`'s loader: the default mode while the database cannot be reached (and the
    /// thread ends on stop), the stored rules once it can.
    #[test]
    fn loader_keeps_the_default_until_the_database_answers() {
        use std::sync::{atomic::AtomicBool, Arc};

        use crate::rules::RuleSet;
        let tmp = tempfile::tempdir().expect("tmp");
        let mut cfg = crate::config::Config::load_with_env(None, &[]).expect("defaults");
        cfg.storage.data_dir = tmp.path().to_path_buf();
        cfg.recording.default = RuleAction::OnDemand;
        cfg.database.retry_interval_ms = 100;
        let url = cfg.database_url();
        rt().block_on(async {
            let db = crate::store::db::prepare(&url, Duration::from_secs(5))
                .await
                .expect("db");
            create(&db, &input("a", 1, RuleAction::Skip))
                .await
                .expect("create");
            db.close().await;
        });
        let live = LiveRules::new(RuleSet::default_only(cfg.recording.default));
        let stop = Arc::new(AtomicBool::new(false));
        spawn_loader(
            &cfg.database,
            &cfg.storage.data_dir,
            live.clone(),
            stop.clone(),
        )
        .expect("spawn")
        .thread
        .join()
        .expect("loader");
        assert_eq!(live.get().len(), 1);
        assert_eq!(live.get().default_action(), RuleAction::OnDemand);

        // Nothing listens on port 1: the loader retries until stopped, the default stays.
        let mut down = cfg.clone();
        down.database.url = Some("postgres://calltap@127.0.0.1:1/none".into());
        down.database.write_timeout_ms = 1;
        let live = LiveRules::new(RuleSet::default_only(RuleAction::Skip));
        let loader = spawn_loader(
            &down.database,
            &down.storage.data_dir,
            live.clone(),
            stop.clone(),
        )
        .expect("spawn");
        // Retrying: a third attempt failed after the first two (and their back-off).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while loader
            .failed_attempts
            .load(std::sync::atomic::Ordering::Acquire)
            < 3
        {
            assert!(!loader.thread.is_finished(), "the loader gave up");
            assert!(
                std::time::Instant::now() < deadline,
                "the loader stopped retrying"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!loader.thread.is_finished(), "the loader gave up");
        assert!(live.get().is_empty());
        let handle = loader.thread;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !handle.is_finished() {
            assert!(std::time::Instant::now() < deadline, "loader ignored stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(live.get().default_action(), RuleAction::Skip);
    }

    #[test]
    fn rules_crud_postgres() {
        if !calltap_lab::postgres::require_postgres("rules_crud_postgres") {
            return;
        }
        let pg = calltap_lab::postgres::Postgres::start().expect("postgres");
        pg.create_database("rules").expect("createdb");
        rt().block_on(crud(&pg.url("rules")));
    }
}
