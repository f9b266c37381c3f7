//! Running one SQL text on either backend: both dialects take the same `$N` placeholders, so
//! only the pool type differs.

/// A bound query argument.
pub enum Arg {
    I(i64),
    S(String),
    /// A nullable integer: typed, since PostgreSQL refuses a NULL bound as the wrong type.
    OI(Option<i64>),
    /// A nullable text.
    OS(Option<String>),
}

/// Runs `$sql` with `$args` (an iterator of `&Arg`) on whichever pool `$db` holds, maps rows to
/// `$t` and finishes with `$how` (`fetch_all`, `fetch_optional`, `fetch_one`); errors become
/// [`DbError::Query`](crate::store::db::DbError::Query).
macro_rules! fetch {
    ($db:expr, $t:ty, $sql:expr, $args:expr, $how:ident) => {{
        let db: &$crate::store::db::Db = $db;
        macro_rules! run {
            ($pool:expr) => {{
                let mut q = sqlx::query_as::<_, $t>($sql);
                for a in $args {
                    q = match a {
                        $crate::publish::api::sql::Arg::I(v) => q.bind(*v),
                        $crate::publish::api::sql::Arg::S(v) => q.bind(v.clone()),
                        $crate::publish::api::sql::Arg::OI(v) => q.bind(*v),
                        $crate::publish::api::sql::Arg::OS(v) => q.bind(v.clone()),
                    };
                }
                q.$how($pool).await
            }};
        }
        let r = match db {
            $crate::store::db::Db::Sqlite(p) => run!(p),
            $crate::store::db::Db::Postgres(p) => run!(p),
        };
        r.map_err(|source| $crate::store::db::DbError::Query {
            backend: db.backend(),
            source,
        })
    }};
}
