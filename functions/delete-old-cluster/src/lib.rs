//! `delete-old-cluster`: the last step of an upgrade, explicit and separate from the rest:
//! deletes the cluster that was blue. Nothing runs it on its own; an operator names the
//! cluster (`old_blue_identifier`) once the soak is over and `finalize` has closed the
//! rollback window.
//!
//! Refused, with nothing changed, unless every one of these holds:
//! - this upgrade has switched to green (before that the old blue is blue, and serves);
//! - the identifier is a parked blue of this cell (`<id>-blue-<major>`, below the target),
//!   and the cluster holding the cell's identifier is another one;
//! - its final snapshot `<old blue>-final` (close-rollback-window's) exists, is of this
//!   cluster and is available: the old blue's data outlives it;
//! - deletion protection is off. This step never turns it off: the operator does, on
//!   purpose (`aws rds modify-db-cluster --no-deletion-protection`);
//! - every instance of it is named `<old blue>-<n>`: its IAM role may delete no other
//!   instance (a cluster's rename keeps its instances' names; the runbook says how to
//!   rename them).
//!
//! Then each instance of the cluster is deleted, then, once none is left, the cluster (no
//! second snapshot: the final one is it). Instances still being deleted are waited for up
//! to `wait_seconds`, then `ClusterNotAvailable` (call again). A call after the cluster is
//! gone, with its final snapshot there, changes nothing and says so.
//!
//! Dry run ([`plan`]): the same refusals, then the deletions left.

use std::time::{Duration, Instant};

use aws_sdk_rds::types::DbCluster;
use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::rename;
use switchyard_operation::{Deps, Error, Plan};

/// The longest wait one invocation may take: Lambda's own limit is 900 s.
const MAX_WAIT_SECONDS: u64 = 840;
const POLL: Duration = Duration::from_secs(1);

/// ```json
/// {"cell": { …the cell document… }, "run_id": "delete-local-a", "old_blue_identifier": "local-a-blue-14"}
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
    /// The cluster to delete, named by the operator: never inferred.
    pub old_blue_identifier: String,
    /// How long this invocation may wait for the cluster's instances to be deleted before
    /// failing `ClusterNotAvailable` (call again); at most 840.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: u64,
}

fn default_wait_seconds() -> u64 {
    600
}

switchyard_operation::operation_input!(Input);

/// Where the old blue stands after the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its deletion was accepted; RDS removes it shortly.
    Deleting,
    /// No cluster holds the identifier any more.
    Gone,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub old_blue_identifier: String,
    /// The snapshot that keeps its data.
    pub final_snapshot: String,
    /// Instances whose deletion this call requested.
    pub instances_deleted: Vec<String>,
    /// This call requested the cluster's deletion.
    pub cluster_deleted: bool,
    pub status: Status,
}

/// What the refusals found: the old blue (`None` when already gone) and its snapshot.
struct Checked {
    cluster: Option<DbCluster>,
    final_snapshot: String,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.old_blue_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let checked = refusals(&input, deps).await?;
    let id = &input.old_blue_identifier;
    let mut out = Output {
        old_blue_identifier: id.clone(),
        final_snapshot: checked.final_snapshot,
        instances_deleted: Vec::new(),
        cluster_deleted: false,
        status: Status::Gone,
    };
    let Some(cluster) = checked.cluster else {
        tracing::info!("the old blue is gone already");
        return Ok(out);
    };
    if cluster.status() == Some("deleting") {
        out.status = Status::Deleting;
        return Ok(out);
    }
    let rds = &deps.aws.rds;
    for instance in members(&cluster) {
        match rds
            .delete_db_instance()
            .db_instance_identifier(&instance)
            .send()
            .await
        {
            Ok(_) => {
                tracing::warn!(%instance, "old blue's instance deletion requested");
                out.instances_deleted.push(instance);
            }
            // Deleted or deleting already (an earlier call's request).
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_db_instance_not_found_fault() || s.is_invalid_db_instance_state_fault()
                }) => {}
            Err(e) => return Err(Error::aws(&format!("deleting instance {instance}"), &e)),
        }
    }
    // The cluster cannot go while it has members: RDS refuses until they are deleted.
    let deadline = Instant::now() + Duration::from_secs(input.wait_seconds);
    loop {
        match describe(deps, id).await? {
            None => return Ok(out),
            Some(c) if members(&c).is_empty() => break,
            Some(c) if Instant::now() >= deadline => {
                return Err(Error::stop(
                    ErrorName::ClusterNotAvailable,
                    format!(
                        "instances {} of {id} are still being deleted after {} s; call again (nothing else was changed)",
                        members(&c).join(", "),
                        input.wait_seconds
                    ),
                ))
            }
            Some(_) => tokio::time::sleep(POLL).await,
        }
    }
    match rds
        .delete_db_cluster()
        .db_cluster_identifier(id)
        .skip_final_snapshot(true)
        .send()
        .await
    {
        Ok(_) => {
            tracing::warn!(final_snapshot = %out.final_snapshot, "old blue's deletion requested");
            out.cluster_deleted = true;
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_db_cluster_not_found_fault()) => {}
        Err(e) => return Err(Error::aws(&format!("deleting cluster {id}"), &e)),
    }
    out.status = match describe(deps, id).await? {
        None => Status::Gone,
        Some(_) => Status::Deleting,
    };
    Ok(out)
}

/// Dry run: the same refusals, then the deletions left.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.old_blue_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    let checked = refusals(&input, deps).await?;
    let id = &input.old_blue_identifier;
    let mut plan = Plan::new();
    let Some(cluster) = checked.cluster else {
        return Ok(plan);
    };
    if cluster.status() == Some("deleting") {
        return Ok(plan);
    }
    for instance in members(&cluster) {
        plan.would(format!("delete instance {instance} of {id}"));
    }
    plan.would(format!(
        "delete cluster {id} without another snapshot: {} keeps its data",
        checked.final_snapshot
    ));
    Ok(plan)
}

/// Every reason not to delete, read-only.
async fn refusals(input: &Input, deps: &Deps) -> Result<Checked, Error> {
    if input.wait_seconds > MAX_WAIT_SECONDS {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!(
                "wait_seconds {} is above {MAX_WAIT_SECONDS}; a Lambda cannot wait that long: call again instead",
                input.wait_seconds
            ),
        ));
    }
    let cell = &input.cell;
    let id = &input.old_blue_identifier;
    if !rename::is_parked(cell, id) {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!(
                "old_blue_identifier {id} is not a parked blue of cell {} (<{}>-blue-<major below {}>): only the cluster an upgrade parked can be deleted here; nothing was changed",
                cell.cell_id, cell.blue.cluster_identifier, cell.target_major_version
            ),
        ));
    }
    let admitted = fence::check(deps, cell, input.caller(), Direction::Either).await?;
    if !admitted.decision.as_ref().is_some_and(|d| d.switched(cell)) {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "cell {} has not switched to {}: the old blue is not old yet; nothing was changed",
                cell.cell_id, cell.green.cluster_identifier
            ),
        ));
    }
    let cluster = describe(deps, id).await?;
    if let Some(old) = &cluster {
        let serving = describe(deps, &cell.blue.cluster_identifier).await?;
        if serving.as_ref().and_then(DbCluster::db_cluster_resource_id)
            == old.db_cluster_resource_id()
        {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "{id} holds cell {}'s identifier: it serves the cell; nothing was changed",
                    cell.cell_id
                ),
            ));
        }
    }
    let final_snapshot = snapshot_cluster::final_snapshot_identifier(id);
    let snapshot = snapshot_cluster::this_runs_snapshot(&deps.aws.rds, id, &final_snapshot).await?;
    match snapshot.as_ref().and_then(|s| s.status()) {
        Some("available") => {}
        status => {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "the old blue's final snapshot {final_snapshot} is {}: run finalize (it closes the rollback window, then takes it) and wait until it is available; nothing was changed",
                    status.map_or_else(|| "missing".to_owned(), |s| format!("{s}, not available"))
                ),
            ))
        }
    }
    if let Some(old) = &cluster {
        // The role may delete only instances named after a parked blue (IAM cannot scope a
        // delete to a cluster's members): refused before any is deleted, not half way.
        let prefix = format!("{id}-");
        let unnamed: Vec<String> = members(old)
            .into_iter()
            .filter(|m| !m.starts_with(&prefix))
            .collect();
        if !unnamed.is_empty() {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "{id}'s instances {} are not named {prefix}<n>, the only instances this function may delete (renaming a cluster keeps its instances' names): rename each with aws rds modify-db-instance --db-instance-identifier <instance> --new-db-instance-identifier {prefix}<n> --apply-immediately, then call again; nothing was changed",
                    unnamed.join(", ")
                ),
            ));
        }
    }
    if cluster.as_ref().and_then(DbCluster::deletion_protection) == Some(true) {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "{id} has deletion protection on, and this step never turns it off: if it is to go, run aws rds modify-db-cluster --db-cluster-identifier {id} --no-deletion-protection --apply-immediately, then call again; nothing was changed"
            ),
        ));
    }
    Ok(Checked {
        cluster,
        final_snapshot,
    })
}

/// The cluster named `id` now, or `None` when no cluster holds it.
async fn describe(deps: &Deps, id: &str) -> Result<Option<DbCluster>, Error> {
    match deps
        .aws
        .rds
        .describe_db_clusters()
        .db_cluster_identifier(id)
        .send()
        .await
    {
        Ok(out) => Ok(out.db_clusters().first().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_db_cluster_not_found_fault()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(&format!("describing cluster {id}"), &e)),
    }
}

/// The instances of `cluster`, by identifier.
fn members(cluster: &DbCluster) -> Vec<String> {
    cluster
        .db_cluster_members()
        .iter()
        .filter_map(|m| m.db_instance_identifier())
        .map(str::to_owned)
        .collect()
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
