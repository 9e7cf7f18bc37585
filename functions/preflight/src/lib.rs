//! `preflight`: everything that would make the upgrade fail or lose data, found before
//! anything changes.
//!
//! Inspects blue, green and every PgBouncer instance and returns *blockers* and
//! *warnings*, each with a stable [`Code`], the objects involved and the fix. Any blocker
//! stops the run with `PreflightFailed`, whose message is the report. Read-only: every
//! query runs in a `READ ONLY` transaction, PgBouncer is only asked `SHOW CONFIG`, so
//! running it again changes nothing and answers the same.
//!
//! Checked on blue: logical replication, replica identities, unlogged tables, large
//! objects, functions depending on `search_path`, materialized views, sessions idle in
//! transaction, slot and WAL sender capacity. On green: that every database exists, its
//! major version, the extensions blue uses, worker and origin capacity, and logical
//! replication when downstream subscribers will move to it. On PgBouncer:
//! `query_wait_timeout` against the pause budget. With `phase: switchover`, also what
//! changed since prepare ([`drift`]): the switchover stops before pausing.

mod cluster;
mod downstream;
pub mod drift;
mod finding;
mod pgbouncer;
pub mod rollback;
mod schema;
mod search_path;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{Deps, Error, Login, OperationInput, Side, LISTED};
use tokio_postgres::{Client, IsolationLevel, Transaction};

use crate::cluster::{ClusterFacts, Plan};
use crate::finding::{report, Findings};
pub use crate::finding::{Code, Finding};

/// SQLSTATE `invalid_catalog_name`: the database does not exist.
const NO_SUCH_DATABASE: &str = "3D000";
/// A database every PostgreSQL cluster (and Aurora) has, for cluster-wide questions when
/// none of the cell's databases exists on a side.
const MAINTENANCE_DATABASE: &str = "postgres";

/// ```json
/// {"cell": { …the cell document… }, "idle_transaction_seconds": 60}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// A session on blue idle in a transaction for longer than this is a blocker: it
    /// would hang slot creation.
    #[serde(default = "default_idle_transaction_seconds")]
    pub idle_transaction_seconds: u64,
    /// `switchover`: prepare has run, so also refuse on what changed since
    /// ([`drift::check`]). `prepare` (the default): nothing is replicating yet.
    #[serde(default)]
    pub phase: Phase,
}

/// Which state machine runs preflight.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before the prepare: nothing is replicating yet.
    #[default]
    Prepare,
    /// Before the switchover: also refuse on what changed since the prepare.
    Switchover,
}

fn default_idle_transaction_seconds() -> u64 {
    60
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

/// The report of a preflight without blockers (with blockers, the run fails with
/// `PreflightFailed` and the same findings as text).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub blockers: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub checked: Checked,
}

/// What was inspected.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Checked {
    /// Blue's `server_version`, e.g. `14.18`.
    pub blue_version: String,
    pub green_version: String,
    /// `server_version_num`, e.g. 140018: what a probe through PgBouncer must see (the
    /// state machine passes green's to resume-pgbouncer, blue's on the abort path).
    pub blue_version_num: i32,
    pub green_version_num: i32,
    pub databases: Vec<String>,
    /// (table groups + 1) × databases: the subscriptions start-replication will create.
    pub planned_subscriptions: u32,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, blue = %input.cell.blue.cluster_identifier, green = %input.cell.green.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let cell = &input.cell;
    let databases = u32::try_from(cell.databases.len()).unwrap_or(u32::MAX);
    let groups = u32::try_from(cell.table_groups.len()).unwrap_or(u32::MAX);
    let downstream: usize = cell.downstream.iter().map(|d| d.subscriptions.len()).sum();
    let plan = Plan {
        databases,
        subscriptions: groups.saturating_add(1).saturating_mul(databases),
        downstream_subscriptions: u32::try_from(downstream).unwrap_or(u32::MAX),
    };
    let mut findings = Findings::default();
    // Every login preflight uses, in one SSM call.
    deps.read_logins(
        cell,
        &[
            Login::Orchestrator,
            Login::PgBouncerAdmin,
            Login::DownstreamAdmins,
        ],
    )
    .await?;

    // The SDK-heavy steps are boxed: nested, their futures exceed the compiler's layout
    // depth.
    let (mut blue_dbs, missing) = Box::pin(open(cell, deps, Side::Blue)).await?;
    findings.extend(missing);
    let (mut green_dbs, missing) = Box::pin(open(cell, deps, Side::Green)).await?;
    findings.extend(missing);

    let blue = {
        let mut spare = None;
        let client = Box::pin(cluster_client(
            cell,
            deps,
            Side::Blue,
            &mut blue_dbs,
            &mut spare,
        ))
        .await?;
        let tx = read_only(client, Side::Blue).await?;
        let facts = ClusterFacts::read(Side::Blue, &tx).await?;
        findings.extend(cluster::logical_replication(
            &facts,
            "blue cannot publish to green",
        ));
        findings.extend(cluster::idle_in_transaction(&tx, input.idle_transaction_seconds).await?);
        finish(tx, Side::Blue).await?;
        facts
    };

    let mut installed = Vec::new();
    for (db, client) in &mut blue_dbs {
        let tx = read_only(client, Side::Blue).await?;
        findings.extend(schema::tables(&tx, db).await?);
        findings.extend(schema::large_objects(&tx, db).await?);
        findings.extend(search_path::functions(&tx, db, blue.version_num).await?);
        findings.extend(schema::materialized_views(&tx, db).await?);
        if input.phase == Phase::Prepare {
            findings.extend(schema::leftover_slots(&tx, db, &cell.replication_names()).await?);
        }
        installed.push((db.clone(), schema::installed_extensions(&tx, db).await?));
        finish(tx, Side::Blue).await?;
    }

    let green = {
        let mut spare = None;
        let client = Box::pin(cluster_client(
            cell,
            deps,
            Side::Green,
            &mut green_dbs,
            &mut spare,
        ))
        .await?;
        let tx = read_only(client, Side::Green).await?;
        let facts = ClusterFacts::read(Side::Green, &tx).await?;
        let all: Vec<schema::Installed> = installed.iter().flat_map(|(_, e)| e.clone()).collect();
        let offered = schema::Offered::read(&tx, &all).await?;
        finish(tx, Side::Green).await?;
        // What copy-schema would install on green; a switch-back's green has them already.
        for (db, extensions) in installed.iter().filter(|_| !cell.is_back()) {
            findings.extend(
                extensions
                    .iter()
                    .filter_map(|e| schema::extension(db, e, &offered)),
            );
        }
        facts
    };

    findings.extend(cluster::versions(
        &blue,
        &green,
        cell.target_major_version,
        cell.is_back(),
    ));
    if plan.downstream_subscriptions > 0 {
        findings.extend(cluster::logical_replication(
            &green,
            "the downstream subscribers cannot subscribe to green after the switchover",
        ));
    }
    findings.extend(cluster::capacity(&blue, &green, plan));
    findings.extend(Box::pin(pgbouncer::check(cell, deps)).await?);
    findings.extend(Box::pin(downstream::check(cell, deps)).await?);
    if input.phase == Phase::Switchover {
        findings.extend(Box::pin(drift::check(cell, deps)).await?);
    }

    if !findings.blockers.is_empty() {
        tracing::warn!(
            blockers = findings.blockers.len(),
            warnings = findings.warnings.len(),
            "preflight found blockers"
        );
        return Err(Error::stop(
            ErrorName::PreflightFailed,
            report(&cell.cell_id, &findings),
        ));
    }
    tracing::info!(warnings = findings.warnings.len(), "preflight passed");
    // The output goes into the execution state: each warning names its first objects; the
    // log has them all.
    for warning in &mut findings.warnings {
        if warning.objects.len() > LISTED {
            tracing::warn!(code = ?warning.code, objects = ?warning.objects, "warning");
            let more = warning.objects.len() - LISTED;
            warning.objects.truncate(LISTED);
            warning
                .objects
                .push(format!("… and {more} more (see the log)"));
        }
    }
    Ok(Output {
        blockers: findings.blockers,
        warnings: findings.warnings,
        checked: Checked {
            blue_version: blue.version,
            green_version: green.version,
            blue_version_num: blue.version_num,
            green_version_num: green.version_num,
            databases: cell.databases.clone(),
            planned_subscriptions: plan.subscriptions,
        },
    })
}

/// A connection to each of the cell's databases on `side`; a database that does not
/// exist is a blocker, not an error, so the report lists every problem at once.
async fn open(
    cell: &CellDocument,
    deps: &Deps,
    side: Side,
) -> Result<(Vec<(String, Client)>, Vec<Finding>), Error> {
    let mut clients = Vec::new();
    let mut missing = Vec::new();
    for db in &cell.databases {
        match deps.connect(cell, side, db).await {
            Ok(client) => clients.push((db.clone(), client)),
            Err(Error::Database(e)) if e.sqlstate() == Some(NO_SUCH_DATABASE) => {
                missing.push(missing_database(side, db));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((clients, missing))
}

fn missing_database(side: Side, db: &str) -> Finding {
    let db = switchyard_postgres::quote::name(db);
    let (code, fix) = match side {
        Side::Blue => (
            Code::BlueDatabaseMissing,
            format!(
                "Remove {db} from the cell document's databases, or check blue.cluster_identifier."
            ),
        ),
        Side::Green => (
            Code::GreenDatabaseMissing,
            format!("CREATE DATABASE {db} on green (owned as on blue), then run preflight again."),
        ),
    };
    Finding::new(
        code,
        vec![format!("{side}: database {db}")],
        format!("Database {db} of the cell does not exist on {side}."),
        fix,
    )
}

/// A connection for cluster-wide questions: the first of the cell's databases, or the
/// maintenance database when none of them exists on this side.
async fn cluster_client<'a>(
    cell: &CellDocument,
    deps: &Deps,
    side: Side,
    dbs: &'a mut [(String, Client)],
    spare: &'a mut Option<Client>,
) -> Result<&'a mut Client, Error> {
    if let Some((_, client)) = dbs.first_mut() {
        return Ok(client);
    }
    Ok(spare.insert(deps.connect(cell, side, MAINTENANCE_DATABASE).await?))
}

/// A read-only transaction with one snapshot for all its questions, bounded in time so a
/// stuck catalog query cannot outlive the Lambda.
async fn read_only(client: &mut Client, side: Side) -> Result<Transaction<'_>, Error> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(|e| Error::query(format!("BEGIN READ ONLY on {side}"), e))?;
    tx.batch_execute("SET LOCAL statement_timeout = '60s'")
        .await
        .map_err(|e| Error::query(format!("SET statement_timeout on {side}"), e))?;
    Ok(tx)
}

async fn finish(tx: Transaction<'_>, side: Side) -> Result<(), Error> {
    tx.commit()
        .await
        .map_err(|e| Error::query(format!("COMMIT on {side}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }

    #[test]
    fn idle_threshold_defaults_to_a_minute() {
        let mut value: serde_json::Value =
            serde_json::from_str(include_str!("../payloads/input.json")).expect("input example");
        value
            .as_object_mut()
            .expect("object")
            .remove("idle_transaction_seconds");
        let input: Input = serde_json::from_value(value).expect("valid without the field");
        assert_eq!(input.idle_transaction_seconds, 60);
    }

    #[test]
    fn a_missing_green_database_says_how_to_create_it() {
        let finding = missing_database(Side::Green, "app");
        assert_eq!(finding.code, Code::GreenDatabaseMissing);
        assert_eq!(finding.objects, ["green: database app"]);
        assert!(finding.fix.starts_with("CREATE DATABASE app "));
    }
}
