//! Green's login fence: until the cell switches, no application role can log in to green,
//! so nothing but replication writes there — not a client sent to it by a name that lags
//! behind a rename (after an abort's rename back, the first rename's DNS change can still
//! take effect and lead the cell's name to green for minutes), nor one typed by hand.
//!
//! - sync-roles creates every fenced role ([`Role::fenced_on_green`]: a login role that is
//!   not a replication role) NOLOGIN on green while the cell has not switched to it, keeps
//!   it so on every rerun, and ends the sessions such roles hold there;
//! - resume-pgbouncer gives them LOGIN back ([`open`]) after journaling the switch and
//!   before its first RESUME toward green: the first queued client finds its login open,
//!   and no abort can follow the opening (the abort path refuses a switched cell).
//!
//! Why logins and not privileges (as revoke-writes fences blue): from PostgreSQL 16 green's
//! apply workers write each table as its owner, usually an application role; revoking the
//! owner's own privileges on green would stop replication. A NOLOGIN role can still be
//! switched to, so replication is untouched.

use switchyard_aws::ClusterEndpoint;
use switchyard_cell::CellDocument;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_postgres::quote::{self, ident};
use tokio_postgres::Client;

use crate::app_roles::Role;
use crate::{Deps, Error, Side};

/// The roles of `roles` the fence keeps from logging in to green, in name order.
pub fn fenced(roles: &[Role]) -> Vec<&str> {
    let mut names: Vec<&str> = roles
        .iter()
        .filter(|r| r.fenced_on_green())
        .map(|r| r.name.as_str())
        .collect();
    names.sort_unstable();
    names
}

/// Green's cluster: under its own identifier, or — after the forward rename, when that
/// identifier is free — under the cell's.
pub async fn endpoint(cell: &CellDocument, deps: &Deps) -> Result<ClusterEndpoint, Error> {
    match deps.endpoint(cell, Side::Green).await {
        Err(e) if e.error_name() == ErrorName::ClusterNotAvailable => {
            tracing::info!("green's identifier is free: green holds the cell's after the rename");
            Ok(deps
                .endpoints
                .resolve(&deps.aws.rds, &cell.blue.cluster_identifier)
                .await?)
        }
        other => other,
    }
}

/// A connection as the orchestrator to green's `dbname`, wherever green is ([`endpoint`]),
/// checked to be the cluster the API named and to run the target major.
pub async fn connect(cell: &CellDocument, deps: &Deps, dbname: &str) -> Result<Client, Error> {
    let endpoint = endpoint(cell, deps).await?;
    let client = deps.connect_endpoint(cell, &endpoint, dbname).await?;
    check_is_green(cell, &endpoint, &client).await?;
    Ok(client)
}

/// `client`, connected through `endpoint`, runs the cell's target major: after a rename an
/// identifier alone does not say which cluster it is (`PreconditionFailed` otherwise).
pub async fn check_is_green(
    cell: &CellDocument,
    endpoint: &ClusterEndpoint,
    client: &Client,
) -> Result<(), Error> {
    let major: i32 = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .map_err(|e| Error::query("reading green's server version", e))?
        .get(0);
    if u32::try_from(major).ok() == Some(cell.target_major_version) {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "cluster {} runs PostgreSQL {major}, not the target {}: it is not green; check which cluster holds which identifier, then rerun",
            endpoint.identifier, cell.target_major_version
        ),
    ))
}

/// Which of `names` exist on green and cannot log in there, in name order.
pub async fn closed(client: &Client, names: &[&str]) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles
              WHERE rolname = ANY($1) AND NOT rolcanlogin ORDER BY rolname",
            &[&names],
        )
        .await
        .map_err(|e| Error::query("reading green's login roles", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Gives LOGIN back on green to every fenced role of `roles` that lacks it, in one
/// transaction; returns their names. Idempotent: a second call opens nothing.
pub async fn open(client: &mut Client, roles: &[Role]) -> Result<Vec<String>, Error> {
    let closed = closed(client, &fenced(roles)).await?;
    if closed.is_empty() {
        return Ok(closed);
    }
    // One transaction: every application login opens at once, or none does.
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::query("BEGIN (opening green's logins)", e))?;
    for name in &closed {
        tx.batch_execute(&format!("ALTER ROLE {} LOGIN", ident(name)))
            .await
            .map_err(|e| {
                Error::query(
                    format!("ALTER ROLE {} LOGIN on green", quote::name(name)),
                    e,
                )
            })?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::query("COMMIT (opening green's logins)", e))?;
    let opened: Vec<String> = closed.iter().map(|name| quote::name(name)).collect();
    tracing::warn!(roles = %opened.join(", "), "green's application logins opened");
    Ok(closed)
}

/// `FROM … WHERE …` of the sessions of roles `$1` (walsenders excepted) other than ours.
const SESSIONS: &str = "FROM pg_catalog.pg_stat_activity
              WHERE usename = ANY($1) AND backend_type <> 'walsender'
                AND pid <> pg_catalog.pg_backend_pid()";

/// How many sessions roles `names` hold on green now (every database).
pub async fn sessions(client: &Client, names: &[&str]) -> Result<i64, Error> {
    Ok(client
        .query_one(&format!("SELECT pg_catalog.count(*) {SESSIONS}"), &[&names])
        .await
        .map_err(|e| Error::query("counting fenced roles' sessions on green", e))?
        .get(0))
}

/// Ends every session roles `names` hold on green (a fence keeps new ones out, not old
/// ones), waiting up to 5 s for each; returns how many were ended. `DrainTimeout` when one
/// outlives its wait (the logins are already closed: rerun).
pub async fn end_sessions(client: &Client, names: &[&str]) -> Result<usize, Error> {
    const WAIT_MS: i64 = 5000;
    let row = client
        .query_one(
            &format!(
                "SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid, $2)),
                        pg_catalog.count(*)
                 {SESSIONS}"
            ),
            &[&names, &WAIT_MS],
        )
        .await
        .map_err(|e| Error::query("ending fenced roles' sessions on green", e))?;
    let (ended, found): (i64, i64) = (row.get(0), row.get(1));
    if ended < found {
        return Err(Error::stop(
            ErrorName::DrainTimeout,
            format!(
                "{} sessions of fenced roles on green did not exit within {WAIT_MS} ms of pg_terminate_backend; their logins are closed already — rerun",
                found - ended
            ),
        ));
    }
    if ended > 0 {
        tracing::warn!(ended, "fenced roles' sessions on green ended");
    }
    Ok(usize::try_from(ended).unwrap_or_default())
}
