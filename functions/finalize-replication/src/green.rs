//! Green's side: its subscriptions, disabled, enabled or dropped.

use std::time::{Duration, Instant};

use switchyard_aws::ClusterEndpoint;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{green_fence, Deps, Error};
use switchyard_postgres::quote::{self, ident};
use tokio_postgres::Client;

use crate::SubscriptionOutput;

/// How long an apply worker may take to stop after DISABLE, or to start after ENABLE.
const WORKER_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// `lock_timeout` of our session on green: ALTER/DROP SUBSCRIPTION must not queue forever.
const LOCK_TIMEOUT: &str = "10s";

/// Green's cluster for `drop`: under its own identifier, or — after the forward rename —
/// under blue's.
pub async fn locate(cell: &CellDocument, deps: &Deps) -> Result<ClusterEndpoint, Error> {
    green_fence::endpoint(cell, deps).await
}

/// Connects to green at `endpoint`, checked as [`open`], with our session's settings.
pub async fn connect(
    cell: &CellDocument,
    deps: &Deps,
    endpoint: &ClusterEndpoint,
    database: &str,
) -> Result<Client, Error> {
    let client = open(cell, deps, endpoint, database).await?;
    prepare(&client).await?;
    Ok(client)
}

/// Connects to green at `endpoint` and checks it runs the target major: after a rename,
/// an identifier alone does not say which cluster it is.
pub async fn open(
    cell: &CellDocument,
    deps: &Deps,
    endpoint: &ClusterEndpoint,
    database: &str,
) -> Result<Client, Error> {
    let client = crate::connect_to(cell, deps, endpoint, database).await?;
    green_fence::check_is_green(cell, endpoint, &client).await?;
    Ok(client)
}

/// Our session's settings on green.
pub async fn prepare(green: &Client) -> Result<(), Error> {
    green
        .execute(
            "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
            &[&LOCK_TIMEOUT],
        )
        .await
        .map_err(|e| Error::query("setting lock_timeout on green", e))?;
    Ok(())
}

/// Whether subscription `name` of the connected database is enabled; `None` if absent.
async fn enabled(green: &Client, name: &str) -> Result<Option<bool>, Error> {
    let row = green
        .query_opt(
            "SELECT subenabled FROM pg_catalog.pg_subscription
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
    Ok(row.map(|r| r.get(0)))
}

/// Which subscriptions `set_enabled` would alter: `(name, changes)`, in `names` order.
/// `PreconditionFailed` when one is missing, before anything is altered.
pub(crate) async fn to_set(
    green: &Client,
    names: &[String],
    enable: bool,
) -> Result<Vec<(String, bool)>, Error> {
    let mut out = Vec::new();
    for name in names {
        let Some(is_enabled) = enabled(green, name).await? else {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "green has no subscription {}; run start-replication",
                    quote::name(name)
                ),
            ));
        };
        out.push((name.clone(), is_enabled != enable));
    }
    Ok(out)
}

/// The `ALTER SUBSCRIPTION` verb for `enable`.
pub(crate) fn verb(enable: bool) -> &'static str {
    if enable {
        "ENABLE"
    } else {
        "DISABLE"
    }
}

/// Disables or enables each subscription, then waits until its workers match.
pub(crate) async fn set_enabled(
    green: &Client,
    names: &[String],
    enable: bool,
) -> Result<Vec<SubscriptionOutput>, Error> {
    prepare(green).await?;
    let (verb, past) = (verb(enable), if enable { "enabled" } else { "disabled" });
    let mut out = Vec::new();
    for (name, changed) in to_set(green, names, enable).await? {
        if changed {
            green
                .batch_execute(&format!("ALTER SUBSCRIPTION {} {verb}", ident(&name)))
                .await
                .map_err(|e| {
                    Error::query(
                        format!("ALTER SUBSCRIPTION {} {verb} on green", quote::name(&name)),
                        e,
                    )
                })?;
            tracing::info!(subscription = %name, "subscription {past}");
        }
        out.push(SubscriptionOutput { name, changed });
    }
    // Also when nothing changed: a previous call may have stopped before its wait ended.
    wait_for_workers(green, names, enable).await?;
    Ok(out)
}

/// How long [`set_enabled`] waits for the workers, for the dry run's account.
pub(crate) const WORKER_WAIT_SECONDS: u64 = WORKER_WAIT.as_secs();

/// Waits until every subscription has its apply worker (`running`) or none of its workers.
async fn wait_for_workers(green: &Client, names: &[String], running: bool) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let pending: Vec<String> = green
            .query(
                "SELECT s.subname::text FROM pg_catalog.pg_subscription s
                  WHERE s.subname = ANY($1)
                    AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
                    AND EXISTS (SELECT FROM pg_catalog.pg_stat_subscription w
                                 WHERE w.subid = s.oid AND w.pid IS NOT NULL
                                   AND (w.relid IS NULL OR NOT $2)) <> $2
                  ORDER BY 1",
                &[&names, &running],
            )
            .await
            .map_err(|e| Error::query("reading green's subscription workers", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= WORKER_WAIT {
            let pending: Vec<String> = pending.iter().map(|name| quote::name(name)).collect();
            let message = if running {
                format!(
                    "no apply worker started within {} s for green's subscriptions {}; read green's log for why (blue unreachable, slot missing), fix it, then rerun finalize-replication (enable)",
                    WORKER_WAIT.as_secs(),
                    pending.join(", ")
                )
            } else {
                format!(
                    "workers of green's subscriptions {} still run {} s after DISABLE; rerun finalize-replication (disable), which only waits, before renaming",
                    pending.join(", "),
                    WORKER_WAIT.as_secs()
                )
            };
            return Err(Error::stop(ErrorName::PreconditionFailed, message));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Each subscription that `drop_all` would drop, with whether it is enabled now.
pub async fn to_drop(green: &Client, names: &[String]) -> Result<Vec<(String, bool)>, Error> {
    let mut out = Vec::new();
    for name in names {
        if let Some(is_enabled) = enabled(green, name).await? {
            out.push((name.clone(), is_enabled));
        }
    }
    Ok(out)
}

/// Drops subscription `name` of the connected database on `server` without contacting
/// its publisher: DISABLE (when `enabled`), `SET (slot_name = NONE)`, which needs a
/// disabled subscription and keeps DROP off the publisher, then DROP. The slot stays on
/// the publisher, for the caller to drop.
pub async fn detach_and_drop(
    client: &Client,
    name: &str,
    enabled: bool,
    server: &str,
) -> Result<(), Error> {
    let sub = ident(name);
    let mut statements = Vec::new();
    if enabled {
        statements.push(format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    }
    statements.push(format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"));
    statements.push(format!("DROP SUBSCRIPTION {sub}"));
    // Each alone: subscription DDL may not run inside a transaction block.
    for sql in statements {
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::query(format!("{sql} on {server}"), e))?;
    }
    tracing::info!(subscription = %name, %server, "subscription dropped");
    Ok(())
}

/// Drops each subscription without contacting its publisher; a missing one was dropped
/// already.
pub(crate) async fn drop_all(
    green: &Client,
    names: &[String],
) -> Result<Vec<SubscriptionOutput>, Error> {
    let present = to_drop(green, names).await?;
    let mut out = Vec::new();
    for name in names {
        let Some((_, is_enabled)) = present.iter().find(|(n, _)| n == name) else {
            out.push(SubscriptionOutput {
                name: name.clone(),
                changed: false,
            });
            continue;
        };
        // Without touching the publisher: after the rename its conninfo's host name points
        // at green itself.
        detach_and_drop(green, name, *is_enabled, "green").await?;
        out.push(SubscriptionOutput {
            name: name.clone(),
            changed: true,
        });
    }
    Ok(out)
}
