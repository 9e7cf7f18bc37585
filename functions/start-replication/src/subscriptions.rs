//! Slots on blue and subscriptions on green.
//!
//! We create each slot ourselves, before its subscription (`create_slot = false`): slot
//! creation waits for every transaction older than it, and over the replication protocol
//! (what CREATE SUBSCRIPTION would use) `statement_timeout` does not apply. From our own
//! session it is bounded by `lock_timeout`, and checked first for idle transactions.

use std::time::Duration;

use switchyard_cell::{Replication, TableRef};
use switchyard_errors::ErrorName;
use switchyard_operation::Error;
use switchyard_postgres::quote::{self, conninfo_value, ident, literal, qualified};
use switchyard_postgres::ConnectOptions;
use switchyard_telemetry::Secret;
use tokio_postgres::Client;

use crate::replicator::Login;

/// A subscription found on green.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub slot: Option<String>,
    pub publications: Vec<String>,
}

/// Green's subscription `name` in the connected database, if any.
pub(crate) async fn find(green: &Client, name: &str) -> Result<Option<Subscription>, Error> {
    let row = green
        .query_opt(
            "SELECT subslotname::text, subpublications FROM pg_catalog.pg_subscription
              WHERE subname = $1
                AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("reading subscription {} on green", quote::name(name)),
                e,
            )
        })?;
    Ok(row.map(|row| Subscription {
        slot: row.get(0),
        publications: row.get(1),
    }))
}

/// Fails `PreconditionFailed`, naming each one, when a client session on blue has sat idle
/// in a transaction for longer than `idle`: it would hold slot creation (ours and the
/// table-sync workers') until it ends.
pub(crate) async fn refuse_idle_transactions(blue: &Client, idle: Duration) -> Result<(), Error> {
    let rows = blue
        .query(
            "SELECT pid, coalesce(usename::text, '?'), coalesce(application_name, ''),
                    coalesce(datname::text, '?'),
                    extract(epoch FROM pg_catalog.now() - state_change)::bigint
               FROM pg_catalog.pg_stat_activity
              WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')
                AND backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid()
                AND state_change < pg_catalog.now() - pg_catalog.make_interval(secs => $1)
              ORDER BY state_change",
            &[&idle.as_secs_f64()],
        )
        .await
        .map_err(|e| Error::query("listing idle transactions on blue", e))?;
    if rows.is_empty() {
        return Ok(());
    }
    let sessions: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "pid {} (user {}, application {:?}, database {}, idle {} s)",
                r.get::<_, i32>(0),
                quote::name(r.get(1)),
                r.get::<_, String>(2),
                quote::name(r.get(3)),
                r.get::<_, i64>(4)
            )
        })
        .collect();
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "sessions idle in a transaction on blue would hang replication slot creation: {}; have them commit or end them (pg_terminate_backend), then rerun start-replication",
            sessions.join(", ")
        ),
    ))
}

/// Whether blue has the slot `name` for this database; `PreconditionFailed` when the name
/// is taken by a slot we cannot use.
pub(crate) async fn slot_exists(blue: &Client, name: &str) -> Result<bool, Error> {
    let row = blue
        .query_opt(
            "SELECT slot_type = 'logical' AND plugin::text = 'pgoutput'
                    AND database::text = pg_catalog.current_database()
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("reading slot {} on blue", quote::name(name)), e))?;
    match row.map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false)) {
        None => Ok(false),
        Some(true) => Ok(true),
        Some(false) => Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("blue has a slot named {} that is not a pgoutput slot of this database; drop it (pg_drop_replication_slot) and rerun start-replication", quote::name(name)),
        )),
    }
}

/// Creates the `pgoutput` slot `name` from our session on `cluster` (named for messages),
/// whose `lock_timeout` bounds the wait for older transactions; returns its consistent
/// point. Blue's for green here; green's for the old blue in finalize-replication.
pub async fn create_slot(client: &Client, name: &str, cluster: &str) -> Result<String, Error> {
    let lsn: String = client
        .query_one(
            "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("creating slot {} on {cluster} (it waits for every older transaction, up to lock_timeout)", quote::name(name)),
                e,
            )
        })?
        .get(0);
    tracing::info!(slot = %name, %cluster, %lsn, "slot created");
    Ok(lsn)
}

/// Fails `PreconditionFailed` unless each table exists on green and is empty: the initial
/// copy inserts every row, so rows already there would collide or, without a primary key,
/// be duplicated.
pub(crate) async fn require_empty(green: &Client, tables: &[TableRef]) -> Result<(), Error> {
    let mut missing = Vec::new();
    let mut filled = Vec::new();
    for table in tables {
        let name = qualified(&table.schema, &table.table);
        let shown = crate::tables::shown(table);
        let exists: bool = green
            .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(|e| Error::query(format!("looking up {shown} on green"), e))?
            .get(0);
        if !exists {
            missing.push(shown);
            continue;
        }
        let has_rows: bool = green
            .query_one(&format!("SELECT EXISTS (SELECT FROM {name})"), &[])
            .await
            .map_err(|e| Error::query(format!("reading {shown} on green"), e))?
            .get(0);
        if has_rows {
            filled.push(shown);
        }
    }
    if !missing.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "tables missing on green: {}; run copy-schema, then rerun start-replication",
                missing.join(", ")
            ),
        ));
    }
    if !filled.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("tables on green already hold rows, which the initial copy would duplicate: {}; empty them (TRUNCATE on green), then rerun start-replication", filled.join(", ")),
        ));
    }
    Ok(())
}

/// Creates green's subscription `name` on publication and slot `name` of blue;
/// `password` is the one inside `conninfo`.
pub(crate) async fn create(
    green: &Client,
    name: &str,
    conninfo: &Secret,
    password: &Secret,
) -> Result<(), Error> {
    // create_slot = false: the slot is ours (see the module doc). Sent alone, as the simple
    // query protocol does, so it runs outside any transaction block.
    let sql = format!(
        "CREATE SUBSCRIPTION {n} CONNECTION {} PUBLICATION {n} WITH (copy_data = true, create_slot = false, slot_name = {})",
        literal(conninfo.expose()),
        literal(name),
        n = ident(name),
    );
    run_holding(
        green,
        &sql,
        password,
        &format!("CREATE SUBSCRIPTION {} on green", quote::name(name)),
        "green",
    )
    .await?;
    tracing::info!(subscription = %name, "subscription created");
    Ok(())
}

/// Runs `sql`, whose connection string holds `password`, alone (the simple protocol:
/// outside any transaction block, as subscription DDL needs) on `server` (named for the
/// log to read). On failure only the SQLSTATE and the server's message may surface, and
/// not even that if the server quoted the password back.
pub async fn run_holding(
    client: &Client,
    sql: &str,
    password: &Secret,
    what: &str,
    server: &str,
) -> Result<(), Error> {
    client.batch_execute(sql).await.map_err(|e| {
        let leaks = e.as_db_error().is_some_and(|db| {
            !password.expose().is_empty() && db.message().contains(password.expose())
        });
        if leaks {
            Error::stop(
                ErrorName::DatabaseError,
                format!("{what} failed; the server's message quoted the connection string and is withheld: see {server}'s log"),
            )
        } else {
            Error::query(what, e)
        }
    })
}

/// The connection string green's subscription `name` holds now; `None` when the
/// orchestrator may not read `pg_subscription.subconninfo` (then it is always rewritten).
pub(crate) async fn stored_conninfo(green: &Client, name: &str) -> Result<Option<Secret>, Error> {
    let readable: bool = green
        .query_one(
            "SELECT pg_catalog.has_column_privilege('pg_catalog.pg_subscription', 'subconninfo', 'SELECT')",
            &[],
        )
        .await
        .map_err(|e| Error::query("checking access to pg_subscription.subconninfo", e))?
        .get(0);
    if !readable {
        return Ok(None);
    }
    let row = green
        .query_opt(
            "SELECT subconninfo FROM pg_catalog.pg_subscription
              WHERE subname = $1
                AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("reading subscription {}'s connection", quote::name(name)),
                e,
            )
        })?;
    Ok(row.map(|r| Secret::new(r.get::<_, String>(0))))
}

/// Points green's subscription `name` at `conninfo` (a rotated password, or a subscription
/// made before the replication role); its workers reconnect with it.
pub(crate) async fn alter_connection(
    green: &Client,
    name: &str,
    conninfo: &Secret,
    password: &Secret,
) -> Result<(), Error> {
    let sql = format!(
        "ALTER SUBSCRIPTION {} CONNECTION {}",
        ident(name),
        literal(conninfo.expose())
    );
    let what = format!(
        "ALTER SUBSCRIPTION {} CONNECTION on green",
        quote::name(name)
    );
    run_holding(green, &sql, password, &what, "green").await?;
    tracing::info!(subscription = %name, "subscription's connection updated");
    Ok(())
}

/// The connection string green's subscription uses to reach blue: blue's endpoint and the
/// replication role's login (never the orchestrator's), TLS as the cell's `replication` section says — green's *server*
/// dials blue, so the Lambda's CA bundle (a path on the Lambda) has no place here — and
/// `lock_timeout` for every session it opens, so a table-sync worker's slot cannot hang
/// behind an idle transaction either.
pub(crate) fn conninfo(
    blue: &ConnectOptions,
    login: &Login,
    replication: &Replication,
    lock_timeout: Duration,
) -> Secret {
    conninfo_to(
        &blue.host,
        blue.port,
        &blue.dbname,
        login,
        replication,
        lock_timeout,
    )
}

/// [`conninfo`] to any publisher at `host:port`, database `dbname` (the old blue's
/// subscription to green uses it too).
pub fn conninfo_to(
    host: &str,
    port: u16,
    dbname: &str,
    login: &Login,
    replication: &Replication,
    lock_timeout: Duration,
) -> Secret {
    let mut parts = vec![
        format!("host={}", conninfo_value(host)),
        format!("port={}", conninfo_value(&port.to_string())),
        format!("dbname={}", conninfo_value(dbname)),
        format!("user={}", conninfo_value(&login.user)),
        format!("password={}", conninfo_value(login.password.expose())),
        format!("sslmode={}", conninfo_value(replication.sslmode.as_str())),
    ];
    // Validation allows a root certificate only with a verifying mode.
    if let Some(root) = &replication.sslrootcert {
        parts.push(format!("sslrootcert={}", conninfo_value(root)));
    }
    parts.push(format!(
        "options={}",
        conninfo_value(&format!("-c lock_timeout={}", lock_timeout.as_millis()))
    ));
    Secret::new(parts.join(" "))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use switchyard_cell::SubscriptionSslMode;
    use switchyard_postgres::Tls;

    use super::*;

    fn blue() -> ConnectOptions {
        ConnectOptions {
            host: "blue.cluster.local".into(),
            port: 5432,
            dbname: "app".into(),
            user: "switchyard".into(),
            password: Secret::new("the-orchestrator's"),
            tls: Tls::VerifyFull {
                ca_bundle: PathBuf::from("/opt/lambda-bundle.pem"),
            },
            application_name: "switchyard".into(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn login() -> Login {
        Login {
            user: "switchyard_replication".into(),
            password: Secret::new(r"p@ss'w\o:r/d"),
        }
    }

    #[test]
    fn conninfo_quotes_every_value_and_bounds_locks() {
        let info = conninfo(
            &blue(),
            &login(),
            &Replication::default(),
            Duration::from_secs(30),
        );
        assert_eq!(
            info.expose(),
            r"host='blue.cluster.local' port='5432' dbname='app' user='switchyard_replication' password='p@ss\'w\\o:r/d' sslmode='require' options='-c lock_timeout=30000'"
        );
        assert!(!format!("{info:?}").contains("p@ss"));
        assert!(
            !info.expose().contains("orchestrator"),
            "never the orchestrator's login"
        );
    }

    #[test]
    fn conninfo_takes_the_servers_ca_not_the_lambdas() {
        let replication = Replication {
            sslmode: SubscriptionSslMode::VerifyFull,
            sslrootcert: Some("/rds ca/root.pem".to_owned()),
            ..Replication::default()
        };
        let info = conninfo(&blue(), &login(), &replication, Duration::from_secs(5));
        assert!(
            info.expose().contains(
                "sslmode='verify-full' sslrootcert='/rds ca/root.pem' options='-c lock_timeout=5000'"
            ),
            "{}",
            info.expose()
        );
        assert!(
            !info.expose().contains("/opt/lambda-bundle.pem"),
            "{}",
            info.expose()
        );
    }
}
