//! `close-rollback-window`: after the soak, once the cell stays on green, ends the way back.
//! Until then green's slot `switchyard_reverse` keeps WAL for the old blue, however long
//! the old blue is gone, until green's disk fills.
//!
//! Refused, with nothing changed, unless this upgrade's switch has happened (before it
//! there is no window: `abandon-prepare` undoes a prepare), or when the replication role
//! is the orchestrator's own login or owns objects on either cluster. Then, per database:
//!
//! 1. the old blue: its subscription `switchyard_reverse` detached from green's slot
//!    (DISABLE, `slot_name = NONE`) and dropped, without dialling green;
//! 2. green: the DDL guard (triggers, function, journal), then the slot, once its
//!    walsender has ended, then the publication;
//! 3. the old blue: any slot or publication of the cell's replication names still there,
//!    the DDL guard's event triggers; the replication role's privileges revoked on both;
//! 4. green: the marker table, and the `switchyard` schema if nothing else is in it.
//!
//! Then the replication role is dropped on green and on the old blue, and a final snapshot
//! of the old blue is requested (`<old blue>-final`, one per old blue: a rerun by another
//! run finds it); the output gives its status
//! and the state machine calls again until it is available (every step above is then
//! found done). The old blue's own tables (the DDL journal, the saved ACLs) stay in it and
//! in the snapshot, as evidence. Deleting the old cluster is not this step's.
//!
//! Dry run ([`plan`]): the same refusals, then every drop the run would make now.

use serde::{Deserialize, Serialize};
use switchyard_cell::{reverse_replication_name, CellDocument};
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::guard;
use switchyard_operation::teardown::{
    drop_role, drop_schema_if_empty, exists, granted, publication_exists, refuse_to_drop,
    revoke_all, role_exists, MARKER, SCHEMA,
};
use switchyard_operation::{Deps, Error, Plan};
use switchyard_postgres::quote;

use finalize_replication::old_blue::{self, OldBlue};
use finalize_replication::{green, reverse};

/// ```json
/// {"cell": { …the cell document… }, "run_id": "finalize-local-a-20261210T090000Z"}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock (acquire-lock with `after_switch`).
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run is live.
    /// It does not override the refusals.
    #[serde(default)]
    pub force: bool,
    /// The cluster that was blue. Default: the `rename` journal entry's parked identifier;
    /// else the one existing `<blue>-blue-<major>` cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_blue_identifier: Option<String>,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub old_blue_identifier: String,
    pub databases: Vec<DatabaseOutput>,
    /// The replication role, and whether this call dropped it on each cluster.
    pub role: String,
    pub role_dropped_on_green: bool,
    pub role_dropped_on_old_blue: bool,
    /// The old blue's final snapshot: requested by this call or an earlier one of this run.
    pub snapshot: snapshot_cluster::Output,
}

/// What this call did in one database (false, empty: nothing was left to do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseOutput {
    pub name: String,
    /// The old blue's subscription `switchyard_reverse`.
    pub subscription_dropped: bool,
    /// Green's slot and publication `switchyard_reverse`.
    pub green_slot_dropped: bool,
    pub green_publication_dropped: bool,
    /// Slots and publications of the cell's replication names left on the old blue.
    pub old_blue_slots_dropped: Vec<String>,
    /// Still in use after the wait: run this step again once their walsenders ended.
    pub old_blue_slots_left: Vec<String>,
    pub old_blue_publications_dropped: Vec<String>,
    pub guard_removed: bool,
    /// `<cluster>: <kind> <object>` on which the replication role's privileges went.
    pub privileges_revoked: Vec<String>,
    /// Our guard, table and schema dropped on green, as SQL names them.
    pub green_objects_dropped: Vec<String>,
}

/// The two clusters, found and checked before anything changes.
struct Clusters {
    green: switchyard_aws::ClusterEndpoint,
    old_blue: OldBlue,
    identifier: String,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let clusters = refusals(&input, deps).await?;
    let cell = &input.cell;
    let role = cell.replication.role.clone();
    let mut databases = Vec::with_capacity(cell.databases.len());
    for database in &cell.databases {
        databases.push(Box::pin(close_database(cell, deps, &clusters, database, &role)).await?);
    }
    let first = cell.databases.first().map_or("postgres", String::as_str);
    let green_client = green::connect(cell, deps, &clusters.green, first).await?;
    let old_client = old_blue::require(cell, deps, &clusters.old_blue, first).await?;
    let role_dropped_on_green = drop_role(&green_client, &role, "close-rollback-window").await?;
    let role_dropped_on_old_blue = drop_role(&old_client, &role, "close-rollback-window").await?;
    // Last: the old blue as it stays, the way back closed.
    let id = snapshot_cluster::final_snapshot_identifier(&clusters.identifier);
    let snapshot =
        snapshot_cluster::take(deps, cell, &clusters.identifier, &id, &input.run_id).await?;
    Ok(Output {
        old_blue_identifier: clusters.identifier,
        databases,
        role,
        role_dropped_on_green,
        role_dropped_on_old_blue,
        snapshot,
    })
}

/// Dry run: the same refusals, then what [`run`] would drop and snapshot now.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    let clusters = refusals(&input, deps).await?;
    let cell = &input.cell;
    let role = &cell.replication.role;
    let role_name = quote::name(role);
    let name = quote::name(&reverse_replication_name());
    let names = cell.replication_names();
    let old = &clusters.identifier;
    let mut plan = Plan::new();
    for database in &cell.databases {
        let db = quote::name(database);
        let green_client = green::open(cell, deps, &clusters.green, database).await?;
        let old_client = old_blue::require(cell, deps, &clusters.old_blue, database).await?;
        if reverse::subscription(&old_client).await?.is_some() {
            plan.would(format!(
                "detach subscription {name} on the old blue {old} (database {db}) from green's slot and drop it"
            ));
        }
        if guard::present(&green_client).await? {
            plan.would(format!(
                "drop the DDL guard on green (database {db}): its event triggers, function and journal"
            ));
        }
        let found = reverse::on_green(&green_client).await?;
        if found.slot.is_some() {
            plan.would(format!("drop slot {name} on green (database {db})"));
        }
        if found.publication {
            plan.would(format!("drop publication {name} on green (database {db})"));
        }
        for slot in &names {
            if old_blue::slot_active(&old_client, slot).await?.is_some() {
                plan.would(format!(
                    "drop slot {} on the old blue (database {db})",
                    quote::name(slot)
                ));
            }
            if publication_exists(&old_client, slot).await? {
                plan.would(format!(
                    "drop publication {} on the old blue (database {db})",
                    quote::name(slot)
                ));
            }
        }
        if guard::present(&old_client).await? {
            plan.would(format!(
                "drop the DDL guard's event triggers on the old blue (database {db})"
            ));
        }
        for (cluster, client) in [("old blue", &old_client), ("green", &green_client)] {
            for (kind, object) in granted(client, role).await? {
                plan.would(format!(
                    "revoke {role_name}'s privileges on {kind} {object} on the {cluster} (database {db})"
                ));
            }
        }
        if exists(&green_client, MARKER).await? {
            plan.would(format!(
                "drop table {MARKER} on green (database {db}), and schema {SCHEMA} if then empty"
            ));
        }
    }
    let first = cell.databases.first().map_or("postgres", String::as_str);
    let green_client = green::open(cell, deps, &clusters.green, first).await?;
    let old_client = old_blue::require(cell, deps, &clusters.old_blue, first).await?;
    for (cluster, client) in [("green", &green_client), ("old blue", &old_client)] {
        if role_exists(client, role).await? {
            plan.would(format!("drop role {role_name} on the {cluster}"));
        }
    }
    let id = snapshot_cluster::final_snapshot_identifier(old);
    if snapshot_cluster::this_runs_snapshot(&deps.aws.rds, old, &id)
        .await?
        .is_none()
    {
        plan.would(format!(
            "create cluster snapshot {id} of the old blue {old}: its final snapshot"
        ));
    }
    Ok(plan)
}

/// Every reason not to touch the cell, read-only; then the clusters, found.
async fn refusals(input: &Input, deps: &Deps) -> Result<Clusters, Error> {
    let cell = &input.cell;
    let admitted = fence::check(deps, cell, input.caller(), Direction::Either).await?;
    if !admitted.decision.as_ref().is_some_and(|d| d.switched(cell)) {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "cell {} has not switched to {}: there is no rollback window to close (abandon-prepare undoes a prepare); nothing was changed",
                cell.cell_id, cell.green.cluster_identifier
            ),
        ));
    }
    let green_at = green::locate(cell, deps).await?;
    let old_blue =
        old_blue::locate(cell, deps, &green_at, input.old_blue_identifier.as_deref()).await?;
    let first = cell.databases.first().map_or("postgres", String::as_str);
    let green_client = green::open(cell, deps, &green_at, first).await?;
    let old_client = old_blue::require(cell, deps, &old_blue, first).await?;
    let identifier = old_blue.identifier().unwrap_or_default();
    let role = &cell.replication.role;
    for (cluster, client) in [("green", &green_client), ("the old blue", &old_client)] {
        refuse_to_drop(client, role, cluster).await?;
    }
    Ok(Clusters {
        green: green_at,
        old_blue,
        identifier,
    })
}

#[tracing::instrument(skip_all, fields(database = %database))]
async fn close_database(
    cell: &CellDocument,
    deps: &Deps,
    clusters: &Clusters,
    database: &str,
    role: &str,
) -> Result<DatabaseOutput, Error> {
    let green_client = green::connect(cell, deps, &clusters.green, database).await?;
    let old_client = old_blue::require(cell, deps, &clusters.old_blue, database).await?;
    let mut out = DatabaseOutput {
        name: database.to_owned(),
        // The subscriber first: green's slot cannot go while something streams from it.
        subscription_dropped: reverse::detach_old_blue(&old_client).await?,
        ..DatabaseOutput::default()
    };
    // Green's guard before its publication goes: that drop is then not journaled as DDL
    // in the window, and no step after this one reads green's journal.
    out.green_objects_dropped = guard::remove(&green_client, "green").await?;
    let closed = reverse::close_on_green(&green_client).await?;
    out.green_slot_dropped = closed.slot_changed;
    out.green_publication_dropped = closed.publication_changed;

    let publishing = old_blue::drop_publishing(&old_client, &cell.replication_names()).await?;
    out.old_blue_slots_dropped = publishing.slots_dropped;
    out.old_blue_slots_left = publishing.slots_left;
    out.old_blue_publications_dropped = publishing.publications_dropped;
    out.guard_removed = guard::remove_triggers(&old_client, "the old blue").await?;
    for (cluster, client) in [("old blue", &old_client), ("green", &green_client)] {
        let revoked = revoke_all(client, role).await?;
        out.privileges_revoked
            .extend(revoked.into_iter().map(|r| format!("{cluster}: {r}")));
    }
    if exists(&green_client, MARKER).await? {
        let sql = format!("DROP TABLE IF EXISTS {MARKER}");
        green_client
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::query(format!("{sql} on green"), e))?;
        out.green_objects_dropped.push(MARKER.to_owned());
    }
    if drop_schema_if_empty(&green_client).await? {
        out.green_objects_dropped.push(quote::name(SCHEMA));
    }
    tracing::info!(
        subscription_dropped = out.subscription_dropped,
        green_slot_dropped = out.green_slot_dropped,
        "rollback window closed in this database"
    );
    Ok(out)
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
}
