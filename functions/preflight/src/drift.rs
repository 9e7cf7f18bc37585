//! What changed since prepare that the switchover would carry over wrongly: run by the
//! switchover's preflight (`phase: switchover`) and by `check-drift`, read-only.
//!
//! Prepare leaves blue publishing, green subscribed and its roles synced; days may pass
//! before the switchover. Each check names something that, switched as it is now, would
//! lose rows or break logins after the point of no return:
//! - a table or partitioned table on blue that none of the cell's publications carries
//!   (directly or through its partition root): its rows never reach green;
//! - a table or sequence on blue that green lacks;
//! - DDL the guard journaled that switchyard did not vouch for (green's schema is behind);
//! - a subscription missing, disabled, without its apply worker, or with a table whose
//!   initial copy has not finished;
//! - an application role, password or membership in SSM that green does not have;
//! - an extension installed on blue but not on green.

use std::collections::BTreeSet;

use switchyard_cell::CellDocument;
use switchyard_operation::guard::{journaled, Journaled, Watched};
use switchyard_operation::{Deps, Error, Side};
use switchyard_postgres::quote;
use tokio_postgres::Client;

use crate::finding::{Code, Finding};
use crate::schema::{in_database, object};

/// Every drift finding for the cell: blockers, and a warning where a password cannot be
/// compared. Connects to each of the cell's databases on both sides.
pub async fn check(cell: &CellDocument, deps: &Deps) -> Result<Vec<Finding>, Error> {
    let mut findings = Vec::new();
    let names = cell.replication_names();
    for database in &cell.databases {
        let blue = Box::pin(deps.connect(cell, Side::Blue, database)).await?;
        let green = Box::pin(deps.connect(cell, Side::Green, database)).await?;
        findings.extend(unpublished(&blue, database, &names).await?);
        findings.extend(missing_on_green(&blue, &green, database).await?);
        findings.extend(ddl(&blue, database, cell.is_back()).await?);
        findings.extend(subscriptions(&green, database, &names).await?);
        findings.extend(extensions(&blue, &green, database).await?);
    }
    findings.extend(roles(cell, deps).await?);
    Ok(findings)
}

/// The tables, partitioned tables and sequences that are the application's: permanent,
/// outside the system schemas and `switchyard`, not created by an extension — the ones
/// `start-replication` publishes (sequences aside) and `copy-schema` copies.
const USER_RELATIONS: &str = "FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'S') AND c.relpersistence = 'p'
                AND n.nspname NOT IN ('information_schema', 'switchyard')
                AND n.nspname NOT LIKE 'pg\\_%'
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                   AND d.objid = c.oid AND d.deptype = 'e')";

/// `schema.name` pairs as finding objects: `app: public.t`.
fn objects(database: &str, names: &[(String, String)]) -> Vec<String> {
    names
        .iter()
        .map(|(schema, name)| object(database, schema, name))
        .collect()
}

/// Tables (and partitioned tables) on blue that no publication of the cell carries. The
/// same relations `start-replication` publishes: permanent, outside the system schemas
/// and `switchyard`, not created by an extension (unlogged tables are preflight's own
/// blocker).
async fn unpublished(
    blue: &Client,
    database: &str,
    publications: &[String],
) -> Result<Vec<Finding>, Error> {
    let existing: i64 = blue
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_publication WHERE pubname = ANY($1)",
            &[&publications],
        )
        .await
        .map_err(|e| Error::query("reading blue's publications", e))?
        .get(0);
    if existing < i64::try_from(publications.len()).unwrap_or(i64::MAX) {
        let names: Vec<String> = publications.iter().map(|p| quote::name(p)).collect();
        return Ok(vec![Finding::new(
            Code::ReplicationMissing,
            vec![in_database(database, &format!("publications {}", names.join(", ")))],
            format!("Blue (database {}) lacks some of the cell's publications: replication was not set up, or was undone, since prepare.", quote::name(database)),
            "Run the prepare state machine (or start-replication) again, and wait for check-replication.",
        )]);
    }
    let rows = blue
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text {USER_RELATIONS} AND c.relkind <> 'S'
                AND NOT EXISTS (
                      SELECT FROM pg_catalog.pg_publication_rel pr
                        JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                       WHERE p.pubname = ANY($1)
                         -- the table itself, or (partitions) any ancestor: pg_partition_ancestors
                         -- returns nothing for a table that is not partitioned
                         AND (pr.prrelid = c.oid
                              OR pr.prrelid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors(c.oid))))
              ORDER BY 1, 2"
            ),
            &[&publications],
        )
        .await
        .map_err(|e| Error::query("listing blue's tables no publication carries", e))?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let tables: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(vec![Finding::new(
        Code::TableNotPublished,
        objects(database, &tables),
        format!("{} table(s) on blue (database {}) are in none of the cell's publications, so their rows do not reach green: switched now, they would be lost.", tables.len(), quote::name(database)),
        "Create them on green too, then redo replication for the cell (abandon the prepare and run it again) so they are published and copied; or drop them on blue if they are not needed.",
    )])
}

/// Tables, partitioned tables and sequences on blue that green does not have.
async fn missing_on_green(
    blue: &Client,
    green: &Client,
    database: &str,
) -> Result<Vec<Finding>, Error> {
    let sql = format!("SELECT n.nspname::text, c.relname::text, c.relkind = 'S' {USER_RELATIONS}");
    let on_blue = set_of(blue, &sql, "blue's tables and sequences", |r| {
        (r.get(0), r.get(1), r.get(2))
    })
    .await?;
    let on_green = set_of(green, &sql, "green's tables and sequences", |r| {
        (r.get(0), r.get(1), r.get(2))
    })
    .await?;
    let (sequences, tables): (Vec<_>, Vec<_>) = on_blue
        .difference(&on_green)
        .cloned()
        .partition(|(_, _, sequence)| *sequence);
    let mut findings = Vec::new();
    for (kind, missing) in [("table", tables), ("sequence", sequences)] {
        if missing.is_empty() {
            continue;
        }
        let names: Vec<(String, String)> = missing.into_iter().map(|(s, n, _)| (s, n)).collect();
        findings.push(Finding::new(
            Code::MissingOnGreen,
            objects(database, &names),
            format!("{} {kind}(s) on blue (database {}) do not exist on green: created since copy-schema ran.", names.len(), quote::name(database)),
            format!("Create each {kind} on green as it is on blue (pg_dump --schema-only -t), then run check-drift again; a table must also be published and copied (redo replication)."),
        ));
    }
    Ok(findings)
}

/// The rows of `sql` on `client`, each made into a `T`.
async fn set_of<T: Ord>(
    client: &Client,
    sql: &str,
    what: &str,
    row: impl Fn(&tokio_postgres::Row) -> T,
) -> Result<BTreeSet<T>, Error> {
    let rows = client
        .query(sql, &[])
        .await
        .map_err(|e| Error::query(format!("listing {what}"), e))?;
    Ok(rows.iter().map(row).collect())
}

/// DDL on blue the guard journaled and switchyard did not vouch for.
async fn ddl(blue: &Client, database: &str, back: bool) -> Result<Vec<Finding>, Error> {
    // A switch-back's blue is the upgrade's green: its guard is the rollback window's,
    // which journals DDL the way green's does (subscription commands are switchyard's).
    let watched = if back { Watched::Green } else { Watched::Blue };
    Ok(match journaled(blue, database, watched).await? {
        Journaled::Clean => Vec::new(),
        Journaled::Unguarded => vec![Finding::new(
            Code::DdlGuardMissing,
            vec![in_database(database, "DDL guard")],
            format!("The DDL guard is missing or disabled on blue (database {}): DDL since prepare could have gone unseen.", quote::name(database)),
            "Run start-replication again (it reinstalls the guard), compare blue's and green's schemas, then check-drift again.",
        )],
        Journaled::Unvouched(message) => vec![Finding::new(
            Code::UnvouchedDdl,
            vec![in_database(database, "DDL journal")],
            message,
            "Apply the same DDL to green, then acknowledge the journal rows as the message says.",
        )],
    })
}

/// How long an enabled subscription may be seen without its apply worker before that is
/// a finding.
const WORKER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(12);

/// Each of the cell's subscriptions on green: present, enabled, its apply worker running,
/// every table past its initial copy.
async fn subscriptions(
    green: &Client,
    database: &str,
    names: &[String],
) -> Result<Vec<Finding>, Error> {
    let mut problems = Vec::new();
    for name in names {
        let mut state = subscription_state(green, name).await?;
        // An apply worker restarts within seconds of an error or of ENABLE (the launcher
        // waits out wal_retrieve_retry_interval, 5 s by default): look again for a while
        // before calling it stopped.
        let patience = std::time::Instant::now();
        while matches!(state, Some((true, _, false))) && patience.elapsed() < WORKER_PATIENCE {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            state = subscription_state(green, name).await?;
        }
        let subscription = format!("subscription {}", quote::name(name));
        let problem = match state {
            None => format!("{subscription} does not exist on green"),
            Some((false, _, _)) => format!("{subscription} is disabled"),
            Some((true, _, false)) => {
                format!("{subscription} has no apply worker running (erroring? see green's log)")
            }
            Some((true, not_ready, true)) if not_ready > 0 => {
                format!("{subscription} has {not_ready} table(s) not yet past their initial copy")
            }
            Some(_) => continue,
        };
        problems.push(in_database(database, &problem));
    }
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Finding::new(
        Code::SubscriptionNotStreaming,
        problems,
        format!("Green (database {}) is not streaming everything blue publishes: switched now, changes not yet applied would be lost.", quote::name(database)),
        "Enable the subscription (ALTER SUBSCRIPTION … ENABLE), fix what stops its worker (green's log), or wait for check-replication to pass; then check-drift again.",
    )])
}

/// (enabled, tables not in state `r`, apply worker running) of subscription `name` in the
/// connected database; `None` when it does not exist.
async fn subscription_state(
    green: &Client,
    name: &str,
) -> Result<Option<(bool, i64, bool)>, Error> {
    let row = green
        .query_opt(
            "SELECT s.subenabled,
                    (SELECT count(*) FROM pg_catalog.pg_subscription_rel r
                      WHERE r.srsubid = s.oid AND r.srsubstate <> 'r'),
                    EXISTS (SELECT FROM pg_catalog.pg_stat_subscription w
                             WHERE w.subid = s.oid AND w.relid IS NULL AND w.pid IS NOT NULL)
               FROM pg_catalog.pg_subscription s
              WHERE s.subname = $1
                AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database
                                  WHERE datname = pg_catalog.current_database())",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("reading subscription {} on green", quote::name(name)),
                e,
            )
        })?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Extensions installed on blue that green does not have installed.
async fn extensions(blue: &Client, green: &Client, database: &str) -> Result<Vec<Finding>, Error> {
    const SQL: &str = "SELECT extname::text FROM pg_catalog.pg_extension";
    let on_blue: BTreeSet<String> = set_of(blue, SQL, "blue's extensions", |r| r.get(0)).await?;
    let on_green: BTreeSet<String> = set_of(green, SQL, "green's extensions", |r| r.get(0)).await?;
    let missing: Vec<String> = on_blue
        .difference(&on_green)
        .map(|e| in_database(database, &format!("extension {}", quote::name(e))))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Finding::new(
        Code::ExtensionMissingOnGreen,
        missing,
        format!("Extensions installed on blue (database {}) since copy-schema ran are not installed on green: objects using them cannot be served there.", quote::name(database)),
        "CREATE EXTENSION each of them on green (the version blue runs, where green offers it), then check-drift again.",
    )])
}

/// The application roles in SSM against green's, as `sync-roles` would change them.
async fn roles(cell: &CellDocument, deps: &Deps) -> Result<Vec<Finding>, Error> {
    let drift = Box::pin(sync_roles::drift(cell, deps)).await?;
    let mut findings = Vec::new();
    if !drift.differences.is_empty() {
        findings.push(Finding::new(
            Code::RoleDrift,
            drift.differences,
            "Green's application roles differ from SSM (changed since sync-roles ran): after the switch, logins as they are in SSM would fail on green.",
            "Run sync-roles again (it keeps green's logins closed until the switch), then check-drift again.",
        ));
    }
    if !drift.unverifiable.is_empty() {
        findings.push(Finding::new(
            Code::RolePasswordUnverifiable,
            drift.unverifiable,
            "Green's stored passwords cannot be read here (Aurora), so a password rotated in SSM since sync-roles ran would go unseen.",
            "Run sync-roles again shortly before the switchover: it sets every password from SSM.",
        ));
    }
    Ok(findings)
}
