//! The way back: after the switch the old blue follows green, so the cell can switch back
//! without losing a write (the rollback window). Named `switchyard_reverse` throughout:
//! green's publication and slot, the old blue's subscription.
//!
//! - `disable` (inside the window, before the rename), once green's subscriptions are
//!   disabled and their workers gone: green gets the DDL guard, then the publication (the tables its
//!   subscriptions replicate) and then a `pgoutput` slot. The slot starts after the last
//!   change green applied from blue and before the first client write green takes, so it
//!   streams exactly what clients write to green. A slot found while a subscription of
//!   green's is still enabled predates this disable and may hold changes green applied from
//!   blue: it is dropped and made again.
//! - `reverse` (after the switch, outside the window): the old blue subscribes to that slot
//!   (`copy_data = false`) as the replication role, whose login is created on green. The
//!   slot has kept every change since the window, so starting here loses nothing and costs
//!   the pause nothing. Application roles stay fenced on the old blue; the apply worker,
//!   running as the subscription's owner (the orchestrator), is its only writer.
//! - `enable` (the abort path): the slot and publication go before green's subscriptions
//!   are enabled: with both, blue's changes would come back to blue.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use start_replication::replicator::{self, Login};
use start_replication::subscriptions::{conninfo_to, create_slot, run_holding};
use switchyard_aws::ClusterEndpoint;
use switchyard_cell::{reverse_replication_name, CellDocument};
use switchyard_errors::ErrorName;
use switchyard_operation::{guard, Error};
use switchyard_postgres::quote::{self, ident, literal, qualified};
use tokio_postgres::Client;

/// How long green's slot may stay in use once its subscriber was detached.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How long the old blue's apply worker may take to connect to green's slot.
const STREAM_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// `lock_timeout` of every session the old blue's subscription opens on green.
const SUBSCRIPTION_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// What one call did to the way back in one database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReverseOutput {
    /// `disable`: green's publication created (or its tables set) by this call; `enable`:
    /// dropped by this call.
    pub publication_changed: bool,
    /// `disable`: green's slot created by this call; `enable`: dropped by this call.
    pub slot_changed: bool,
    /// `disable`: where green's slot starts streaming (its consistent point), when this call
    /// created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_lsn: Option<String>,
    /// `reverse`: the old blue's subscription created, re-pointed or enabled by this call.
    #[serde(default)]
    pub subscription_changed: bool,
    /// `reverse`: the replication role's login created or updated on green by this call.
    #[serde(default)]
    pub role_changed: bool,
    /// `reverse`: the WAL green's slot retains for the old blue, in bytes, once it streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_bytes: Option<i64>,
    /// `disable`: the DDL guard installed (or repaired) on green by this call.
    #[serde(default)]
    pub guard_installed: bool,
    /// `enable`: the DDL guard dropped from green by this call.
    #[serde(default)]
    pub guard_removed: bool,
    /// `disable`: what the way back added to the pause window on green (a stale one
    /// dropped, the guard, the publication and slot made), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
}

/// Green's side of the way back in the connected database.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OnGreen {
    pub publication: bool,
    /// `Some(active)` when the slot exists.
    pub slot: Option<bool>,
}

/// Reads green's publication and slot.
pub async fn on_green(green: &Client) -> Result<OnGreen, Error> {
    let name = reverse_replication_name();
    let row = green
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = $1),
                    (SELECT active FROM pg_catalog.pg_replication_slots
                      WHERE slot_name = $1 AND database = pg_catalog.current_database())",
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("reading {} on green", quote::name(&name)), e))?;
    Ok(OnGreen {
        publication: row.get(0),
        slot: row.get(1),
    })
}

/// The tables green's subscriptions `names` replicate in the connected database, in name
/// order (partitioned tables by their root, as blue publishes them).
async fn replicated_tables(green: &Client, names: &[String]) -> Result<Vec<String>, Error> {
    let rows = green
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text
               FROM pg_catalog.pg_subscription s
               JOIN pg_catalog.pg_subscription_rel sr ON sr.srsubid = s.oid
               JOIN pg_catalog.pg_class c ON c.oid = sr.srrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE s.subname = ANY($1)
                AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
              ORDER BY 1, 2",
            &[&names],
        )
        .await
        .map_err(|e| Error::query("reading the tables green's subscriptions replicate", e))?;
    Ok(rows
        .iter()
        .map(|r| qualified(r.get::<_, &str>(0), r.get::<_, &str>(1)))
        .collect())
}

/// `disable`'s part, after green's subscriptions stopped: the publication, then the slot.
pub async fn open_on_green(green: &mut Client, names: &[String]) -> Result<ReverseOutput, Error> {
    let name = reverse_replication_name();
    let found = on_green(green).await?;
    let mut out = ReverseOutput::default();
    if found.slot.is_some() {
        // Made by an earlier call of this disable (one found while a subscription still
        // ran was dropped first, in `run`): kept, with the publication it was made after.
        return Ok(out);
    }
    let tables = replicated_tables(green, names).await?;
    if tables.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "green's subscriptions {} replicate no table: nothing to publish back to blue; rerun start-replication",
                names
                    .iter()
                    .map(|n| quote::name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    // Before the slot: pgoutput reads publications as of each change it decodes, and a
    // publication made after the slot's start would not exist for the first changes.
    // Dropped and made again while no slot exists, so its tables are exactly today's.
    // Our own DDL: vouched to green's guard, so check-drift does not name it.
    let n = ident(&name);
    guard::own_ddl(
        green,
        &format!("create publication {} on green", quote::name(&name)),
        &format!(
            "DROP PUBLICATION IF EXISTS {n}; CREATE PUBLICATION {n} FOR TABLE {} WITH (publish_via_partition_root = true)",
            tables.join(", ")
        ),
    )
    .await?;
    out.publication_changed = true;
    let lsn = create_slot(green, &name, "green").await?;
    tracing::info!(slot = %name, %lsn, tables = tables.len(), "the way back: slot and publication ready on green");
    out.slot_changed = true;
    out.slot_lsn = Some(lsn);
    Ok(out)
}

/// Drops green's slot and publication (`enable`, `disable` finding them older than itself,
/// and close-rollback-window). `PreconditionFailed` when the slot is still in use after
/// [`SLOT_RELEASE_WAIT`]: something streams from green, and it must stop first.
pub async fn close_on_green(green: &Client) -> Result<ReverseOutput, Error> {
    let name = reverse_replication_name();
    let mut found = on_green(green).await?;
    let started = Instant::now();
    // A walsender of a subscription just detached may take a moment to end.
    while found.slot == Some(true) && started.elapsed() < SLOT_RELEASE_WAIT {
        tokio::time::sleep(POLL).await;
        found = on_green(green).await?;
    }
    let mut out = ReverseOutput::default();
    match found.slot {
        Some(true) => {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "slot {n} on green is streaming to a subscriber (the old blue's subscription {n}?): drop that subscription first; nothing was changed",
                    n = quote::name(&name)
                ),
            ))
        }
        Some(false) => {
            green
                .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&name])
                .await
                .map_err(|e| {
                    Error::query(format!("dropping slot {} on green", quote::name(&name)), e)
                })?;
            out.slot_changed = true;
        }
        None => {}
    }
    if found.publication {
        green
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&name)))
            .await
            .map_err(|e| {
                Error::query(
                    format!("dropping publication {} on green", quote::name(&name)),
                    e,
                )
            })?;
        out.publication_changed = true;
    }
    if out.slot_changed || out.publication_changed {
        tracing::info!(slot = %name, "the way back closed on green");
    }
    Ok(out)
}

/// The old blue's subscription `switchyard_reverse` in the connected database:
/// `Some(enabled)` when it exists.
pub async fn subscription(old_blue: &Client) -> Result<Option<bool>, Error> {
    let name = reverse_replication_name();
    Ok(old_blue
        .query_opt(
            "SELECT subenabled FROM pg_catalog.pg_subscription
              WHERE subname = $1
                AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("reading subscription {} on the old blue", quote::name(&name)),
                e,
            )
        })?
        .map(|r| r.get(0)))
}

/// Detaches the old blue's subscription from green's slot and drops it, without dialling
/// green (DISABLE, `slot_name = NONE`, DROP): true when this call dropped it. The slot on
/// green is then [`close_on_green`]'s.
pub async fn detach_old_blue(old_blue: &Client) -> Result<bool, Error> {
    let name = reverse_replication_name();
    let Some(enabled) = subscription(old_blue).await? else {
        return Ok(false);
    };
    crate::green::detach_and_drop(old_blue, &name, enabled, "the old blue").await?;
    tracing::info!(subscription = %name, "the old blue no longer follows green");
    Ok(true)
}

/// `reverse`, in one database: the role on green, the old blue's subscription to green's
/// slot, then a wait until it streams. `green_at` is where green takes connections (the
/// cluster holding the cell's name).
pub async fn follow_green(
    cell: &CellDocument,
    green: &Client,
    green_at: &ClusterEndpoint,
    old_blue: &Client,
    database: &str,
    login: &Login,
) -> Result<ReverseOutput, Error> {
    let name = reverse_replication_name();
    let found = on_green(green).await?;
    if !found.publication || found.slot.is_none() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "green has no {} {} (database {}): the switchover makes both inside the pause, before the first write on green, and nothing made later holds every write since. The old blue cannot follow green; nothing was changed",
                if found.publication { "slot" } else { "publication" },
                quote::name(&name),
                quote::name(database)
            ),
        ));
    }
    let mut out = ReverseOutput {
        role_changed: replicator::ensure_role(green, login).await?,
        ..ReverseOutput::default()
    };
    let conninfo = conninfo_to(
        &green_at.host,
        green_at.port,
        database,
        login,
        &cell.replication,
        SUBSCRIPTION_LOCK_TIMEOUT,
    );
    let n = ident(&name);
    match subscription(old_blue).await? {
        None => {
            // From PostgreSQL 16 the apply worker writes as each table's owner unless
            // run_as_owner: revoke-writes took the application roles' writes on the old
            // blue, the owner's among them, and the orchestrator kept its own.
            let version: i32 = old_blue
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .map_err(|e| Error::query("reading the old blue's version", e))?
                .get(0);
            let as_owner = if version >= 160_000 {
                ", run_as_owner = true"
            } else {
                ""
            };
            let sql = format!(
                "CREATE SUBSCRIPTION {n} CONNECTION {} PUBLICATION {n} WITH (copy_data = false, create_slot = false, slot_name = {}{as_owner})",
                literal(conninfo.expose()),
                literal(&name),
            );
            run_holding(
                old_blue,
                &sql,
                &login.password,
                &format!("CREATE SUBSCRIPTION {} on the old blue", quote::name(&name)),
                "the old blue",
            )
            .await?;
            tracing::info!(subscription = %name, %database, "the old blue follows green");
            out.subscription_changed = true;
        }
        Some(enabled) => {
            let sql = format!(
                "ALTER SUBSCRIPTION {n} CONNECTION {}",
                literal(conninfo.expose())
            );
            // The password may have been rotated since: the connection is always rewritten
            // (the orchestrator may not read subconninfo to compare).
            run_holding(
                old_blue,
                &sql,
                &login.password,
                &format!(
                    "ALTER SUBSCRIPTION {} CONNECTION on the old blue",
                    quote::name(&name)
                ),
                "the old blue",
            )
            .await?;
            if !enabled {
                old_blue
                    .batch_execute(&format!("ALTER SUBSCRIPTION {n} ENABLE"))
                    .await
                    .map_err(|e| {
                        Error::query(
                            format!(
                                "ALTER SUBSCRIPTION {} ENABLE on the old blue",
                                quote::name(&name)
                            ),
                            e,
                        )
                    })?;
                out.subscription_changed = true;
            }
        }
    }
    out.retained_bytes = Some(wait_streaming(green, database).await?);
    Ok(out)
}

/// Waits until green's slot is streaming to a subscriber; returns the WAL it retains.
async fn wait_streaming(green: &Client, database: &str) -> Result<i64, Error> {
    let name = reverse_replication_name();
    let (shown, database) = (quote::name(&name), quote::name(database));
    let started = Instant::now();
    loop {
        let row = green
            .query_opt(
                "SELECT active,
                        pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint
                   FROM pg_catalog.pg_replication_slots
                  WHERE slot_name = $1 AND database = pg_catalog.current_database()",
                &[&name],
            )
            .await
            .map_err(|e| Error::query(format!("reading slot {shown} on green"), e))?;
        match row {
            Some(row) if row.get::<_, bool>(0) => return Ok(row.get::<_, Option<i64>>(1).unwrap_or(0)),
            Some(_) if started.elapsed() < STREAM_WAIT => tokio::time::sleep(POLL).await,
            Some(_) => {
                return Err(Error::stop(
                    ErrorName::PreconditionFailed,
                    format!(
                        "the old blue's subscription {shown} (database {database}) did not start streaming from green within {} s; read the old blue's log for why (green unreachable from it, the replication role refused), fix it, then rerun finalize-replication (reverse). Green's slot keeps every write meanwhile",
                        STREAM_WAIT.as_secs()
                    ),
                ))
            }
            None => {
                return Err(Error::stop(
                    ErrorName::PreconditionFailed,
                    format!("slot {shown} vanished from green (database {database}) while the old blue's subscription started"),
                ))
            }
        }
    }
}
