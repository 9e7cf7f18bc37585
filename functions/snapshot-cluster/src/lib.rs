//! `snapshot-cluster`: a manual cluster snapshot of blue before the prepare phase changes
//! anything, named and tagged after the run so a retry reuses it instead of taking another.
//!
//! Returns the snapshot's status; the state machine polls (Wait + Choice) until it is
//! `available`. Only blue is touched, and only by `CreateDBClusterSnapshot`.
//!
//! Dry run ([`plan`]): names the snapshot that would be created, or nothing when this
//! run's snapshot already exists.

use aws_sdk_rds::types::Tag;
use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Caller, Direction};
use switchyard_operation::{Deps, Error, OperationInput, Plan};

/// ```json
/// {"cell": { …the cell document… }, "run_id": "2026-11-22T05-00-00-local-a"}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run this snapshot belongs to: the Step Functions execution name. It must hold
    /// the cell's lock.
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run is live.
    #[serde(default)]
    pub force: bool,
}

impl Input {
    fn caller(&self) -> Caller<'_> {
        Caller {
            run_id: &self.run_id,
            force: self.force,
        }
    }
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub snapshot_identifier: String,
    /// RDS's status: `creating` until `available`.
    pub status: String,
    pub available: bool,
    /// False when a snapshot of this run already existed and was reused.
    pub created: bool,
}

/// The tag that marks a snapshot as this run's.
pub const RUN_TAG: &str = "switchyard:run";

/// `<blue identifier>-pre-upgrade-<run>`: letters, digits and single hyphens, as RDS
/// requires, at most 255 characters.
pub fn snapshot_identifier(blue: &str, run_id: &str) -> Result<String, Error> {
    named(blue, "pre-upgrade", run_id)
}

/// `<old blue identifier>-final`: the old blue's last snapshot, when the rollback window
/// closes. One per old blue, whichever run takes it: a rerun finds it.
pub fn final_snapshot_identifier(old_blue: &str) -> String {
    format!("{old_blue}-final")
}

fn named(cluster: &str, kind: &str, run_id: &str) -> Result<String, Error> {
    let mut run = String::new();
    for c in run_id.chars() {
        match c {
            'a'..='z' | '0'..='9' => run.push(c),
            'A'..='Z' => run.push(c.to_ascii_lowercase()),
            _ if !run.ends_with('-') => run.push('-'),
            _ => {}
        }
    }
    let run = run.trim_matches('-');
    let id = format!("{cluster}-{kind}-{run}");
    if run.is_empty() || id.len() > 255 {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!("run_id {run_id:?} cannot name a snapshot: use letters, digits and hyphens, at most 200 characters"),
        ));
    }
    Ok(id)
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Either).await?;
    let blue = &input.cell.blue.cluster_identifier;
    let id = snapshot_identifier(blue, &input.run_id)?;
    take(deps, &input.cell, blue, &id, &input.run_id).await
}

/// Snapshot `id` of `cluster`, tagged as run `run_id`'s: requested, or this run's found
/// (then not requested again). Its status says when it is available.
pub async fn take(
    deps: &Deps,
    cell: &CellDocument,
    cluster: &str,
    id: &str,
    run_id: &str,
) -> Result<Output, Error> {
    let (blue, id) = (cluster, id.to_owned());
    let rds = &deps.aws.rds;

    if let Some(existing) = this_runs_snapshot(rds, blue, &id).await? {
        tracing::info!(snapshot = %id, "reusing this run's snapshot");
        return Ok(output(id, existing.status(), false));
    }

    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let created = rds
        .create_db_cluster_snapshot()
        .db_cluster_snapshot_identifier(&id)
        .db_cluster_identifier(blue)
        .tags(tag(RUN_TAG, run_id))
        .tags(tag("switchyard:cell", &cell.cell_id))
        .send()
        .await;
    match created {
        Ok(out) => {
            let status = out.db_cluster_snapshot().and_then(|s| s.status());
            tracing::info!(snapshot = %id, status = status.unwrap_or("unknown"), "snapshot requested");
            Ok(output(id, status, true))
        }
        // A concurrent attempt (a retried invocation) created it between our describe and
        // create: that is this run's snapshot.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_db_cluster_snapshot_already_exists_fault()) => {
            let status = describe(rds, &id).await?.and_then(|s| s.status().map(str::to_owned));
            Ok(output(id, status.as_deref(), false))
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_invalid_db_cluster_state_fault()) => Err(Error::stop(
            ErrorName::ClusterNotAvailable,
            format!("cluster {blue} cannot be snapshotted in its current state; retry when it is available"),
        )),
        Err(e) => Err(Error::aws(&format!("creating snapshot {id}"), &e)),
    }
}

/// What [`run`] would do now: create this run's snapshot, unless it exists.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Either).await?;
    let blue = &input.cell.blue.cluster_identifier;
    let id = snapshot_identifier(blue, &input.run_id)?;
    let mut plan = Plan::new();
    if this_runs_snapshot(&deps.aws.rds, blue, &id)
        .await?
        .is_none()
    {
        plan.would(format!(
            "create cluster snapshot {id} of cluster {blue}, tagged {RUN_TAG}={} and switchyard:cell={}; then the state machine polls until it is available",
            input.run_id, input.cell.cell_id
        ));
    }
    Ok(plan)
}

/// The snapshot named `id`, if it exists and is of `blue`: `PreconditionFailed` when the
/// name is taken by another cluster's snapshot.
pub async fn this_runs_snapshot(
    rds: &aws_sdk_rds::Client,
    blue: &str,
    id: &str,
) -> Result<Option<aws_sdk_rds::types::DbClusterSnapshot>, Error> {
    let Some(existing) = describe(rds, id).await? else {
        return Ok(None);
    };
    // Reuse only a snapshot of this cluster: the same name on another cluster means
    // someone else's snapshot, and overwriting or trusting it would both be wrong.
    if existing.db_cluster_identifier() != Some(blue) {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "snapshot {id} exists but belongs to cluster {}; delete or rename it, or use another run id",
                existing.db_cluster_identifier().unwrap_or("unknown")
            ),
        ));
    }
    Ok(Some(existing))
}

async fn describe(
    rds: &aws_sdk_rds::Client,
    id: &str,
) -> Result<Option<aws_sdk_rds::types::DbClusterSnapshot>, Error> {
    match rds
        .describe_db_cluster_snapshots()
        .db_cluster_snapshot_identifier(id)
        .send()
        .await
    {
        Ok(out) => Ok(out.db_cluster_snapshots().first().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_db_cluster_snapshot_not_found_fault()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(&format!("describing snapshot {id}"), &e)),
    }
}

fn output(id: String, status: Option<&str>, created: bool) -> Output {
    let status = status.unwrap_or("unknown").to_owned();
    Output {
        available: status == "available",
        snapshot_identifier: id,
        status,
        created,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_rds_safe() {
        assert_eq!(
            snapshot_identifier("local-a", "Prepare_2026-11-22T05:00:00Z").expect("ok"),
            "local-a-pre-upgrade-prepare-2026-11-22t05-00-00z"
        );
        assert!(snapshot_identifier("local-a", "___").is_err());
        assert!(snapshot_identifier("local-a", &"x".repeat(250)).is_err());
    }

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
