//! `resume-pgbouncer`: **the point of no return** — once RESUMEd, the first queued write
//! lands wherever PgBouncer now connects (green, after the rename).
//!
//! Order: log in to every instance; check each would reach the right address (its
//! server connections and cached DNS answers agree with what the database's host
//! resolves to now) — any instance wrong or unreachable fails before anything is
//! resumed; then RESUME every database ("not paused" is fine: idempotent) and RELOAD,
//! which restores the file's `dns_max_ttl`/`dns_nxdomain_ttl` lowered by
//! `pause-pgbouncer`. Only then, with `expected_server_version_num`, a query *through*
//! each instance confirms the server version: it cannot run earlier (queries wait while
//! paused), so a mismatch fails after the resume and the state machine decides.
//!
//! Dry run ([`plan`]): the same logins and checks of where each instance would connect,
//! then the databases it would RESUME and the RELOADs that would restore lowered TTLs.

mod probe;
mod target;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fleet as instances;
use switchyard_operation::fleet::Endpoint;
use switchyard_operation::{Deps, Error, OperationInput, Plan};
use switchyard_postgres::{PgBouncerAdmin, Resumed};

/// ```json
/// {"cell": { …the cell document… }, "expected_server_version_num": 170007}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// When set, each instance must reach a server whose `server_version_num` is this
    /// (green's); probed through PgBouncer as an application role after the resume.
    #[serde(default)]
    pub expected_server_version_num: Option<i32>,
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// When the last RESUME returned (RFC 3339, UTC): the end of the paused window.
    pub resumed_at: String,
    pub instances: Vec<ResumedInstance>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ResumedInstance {
    /// `host:port` of the admin console.
    pub endpoint: String,
    /// Databases this run resumed.
    pub resumed: Vec<String>,
    /// Databases that were not paused (a retried run, or never paused).
    pub were_not_paused: Vec<String>,
    /// What the probe through this instance saw; `None` when no probe was asked for.
    pub server_version_num: Option<i32>,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, expected = ?input.expected_server_version_num))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let cell = &input.cell;
    let databases = &cell.pgbouncer.databases;
    let (endpoints, sessions) = Box::pin(checked_sessions(cell, deps)).await?;

    let mut resumed_instances = Vec::new();
    for (endpoint, admin) in endpoints.iter().zip(&sessions) {
        let mut resumed = Vec::new();
        let mut were_not_paused = Vec::new();
        for db in databases {
            match admin.resume(db).await? {
                Resumed::Resumed => resumed.push(db.clone()),
                Resumed::WasNotPaused => were_not_paused.push(db.clone()),
            }
        }
        admin.reload().await?;
        tracing::info!(%endpoint, ?resumed, ?were_not_paused, "pgbouncer resumed");
        resumed_instances.push(ResumedInstance {
            endpoint: endpoint.to_string(),
            resumed,
            were_not_paused,
            server_version_num: None,
        });
    }
    let resumed_at = switchyard_operation::now_rfc3339();
    tracing::info!(%resumed_at, instances = resumed_instances.len(), "pgbouncer resumed everywhere");
    drop(sessions);

    let Some(expected) = input.expected_server_version_num else {
        return Ok(Output {
            resumed_at,
            instances: resumed_instances,
        });
    };
    let role = Box::pin(probe::login(cell, deps)).await?;
    let mut wrong = Vec::new();
    for (endpoint, instance) in endpoints.iter().zip(&mut resumed_instances) {
        let seen = Box::pin(probe::server_version_num(endpoint, &databases[0], &role)).await?;
        instance.server_version_num = Some(seen);
        if seen != expected {
            wrong.push(format!("{endpoint} reaches version {seen}"));
        }
    }
    if !wrong.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "PgBouncer is resumed but {}, expected {expected}: pause again and investigate where it connects (SHOW SERVERS, SHOW DNS_HOSTS)",
                wrong.join(", ")
            ),
        ));
    }
    Ok(Output {
        resumed_at,
        instances: resumed_instances,
    })
}

/// The settings `pause-pgbouncer` lowers, and the value it lowers them to: while one reads
/// so, the RELOAD after RESUME changes something.
const LOWERED_BY_PAUSE: [(&str, &str); 2] = [("dns_max_ttl", "1"), ("dns_nxdomain_ttl", "1")];

/// What [`run`] would do now, after the same checks; empty when nothing is paused and no
/// TTL is lowered anywhere. The probe (`expected_server_version_num`) changes nothing and
/// is not listed.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, expected = ?input.expected_server_version_num))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    let cell = &input.cell;
    let (endpoints, sessions) = Box::pin(checked_sessions(cell, deps)).await?;
    let mut plan = Plan::new();
    for (endpoint, admin) in endpoints.iter().zip(&sessions) {
        let rows = admin.show_databases().await?;
        let paused: Vec<&String> = cell
            .pgbouncer
            .databases
            .iter()
            .filter(|db| rows.iter().any(|r| &r.name == *db && r.paused))
            .collect();
        for db in &paused {
            plan.would(format!("on PgBouncer {endpoint}: RESUME {db}"));
        }
        let config = admin.show_config().await?;
        let lowered: Vec<String> = LOWERED_BY_PAUSE
            .iter()
            .filter(|(key, value)| config.iter().any(|r| r.key == *key && r.value == *value))
            .map(|(key, value)| format!("{key} {value}"))
            .collect();
        if !lowered.is_empty() {
            plan.would(format!(
                "on PgBouncer {endpoint}: RELOAD, restoring the configuration file's values of {}",
                lowered.join(", ")
            ));
        } else if !paused.is_empty() {
            plan.would(format!("on PgBouncer {endpoint}: RELOAD"));
        }
    }
    Ok(plan)
}

/// Discovers, logs in to and checks every instance. Every instance reachable and checked
/// before any is resumed: after the first RESUME there is no going back.
async fn checked_sessions(
    cell: &CellDocument,
    deps: &Deps,
) -> Result<(Vec<Endpoint>, Vec<PgBouncerAdmin>), Error> {
    let endpoints = Box::pin(instances::discover(cell, deps)).await?;
    let login = Box::pin(instances::admin_login(cell, deps)).await?;
    let sessions = instances::connect_all(&endpoints, &login)
        .await
        .map_err(|mut failures| Error::Database(failures.swap_remove(0).1))?;
    for (endpoint, admin) in endpoints.iter().zip(&sessions) {
        Box::pin(target::check(endpoint, admin, &cell.pgbouncer.databases)).await?;
    }
    Ok((endpoints, sessions))
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<super::Input, super::Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
