//! `release-lock`: ends a run's hold on the cell. A run releases only its own lock; an
//! operator releasing a dead run's lock says so with `force`, deliberately. With
//! `if_ours`, another run's lock is left alone without an error: what a run that may or
//! may not have taken the lock (a crash right after acquire-lock) does on its way out.
//!
//! Dry run ([`plan`]): reads the lock and names the one that would be deleted; another
//! run's lock without `force` is `PreconditionFailed`, as for the real call.

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::RunLock;
use switchyard_operation::{Deps, Error, OperationInput, Plan};

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z", "force": false}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run whose lock this is.
    pub run_id: String,
    /// Release even when another run holds it: only for an operator who has made sure
    /// that run is dead.
    #[serde(default)]
    pub force: bool,
    /// Release only this run's lock; another run's is left as it is, and that is no error.
    #[serde(default)]
    pub if_ours: bool,
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// The lock that was removed; `None` when there was none (already released).
    pub released: Option<RunLock>,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, run = %input.run_id, force = input.force))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let journal = deps.journal(&input.cell);
    let Some(held) = journal.get::<RunLock>().await? else {
        return Ok(Output { released: None });
    };
    if !may_release(&held, &input)? {
        return Ok(Output { released: None });
    }
    let removed = journal.remove::<RunLock>().await?;
    if held.run_id != input.run_id {
        tracing::warn!(holder = %held.run_id, "forced release of another run's lock");
    }
    Ok(Output {
        released: removed.then_some(held),
    })
}

/// What [`run`] would do now: delete the lock it may release; nothing when there is none.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, run = %input.run_id, force = input.force))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    let journal = deps.journal(&input.cell);
    let mut plan = Plan::new();
    if let Some(held) = journal.get::<RunLock>().await? {
        if !may_release(&held, &input)? {
            return Ok(plan);
        }
        let forced = if held.run_id == input.run_id {
            ""
        } else {
            " — forced: not this run's lock"
        };
        plan.would(format!(
            "delete SSM parameter {}: the run lock of run {} held since {}{forced}",
            journal.parameter_of::<RunLock>(),
            held.run_id,
            held.acquired_at
        ));
    }
    Ok(plan)
}

/// A run releases only its own lock, unless forced; `false`: leave another run's (if_ours).
fn may_release(held: &RunLock, input: &Input) -> Result<bool, Error> {
    if held.run_id != input.run_id && input.if_ours && !input.force {
        tracing::info!(holder = %held.run_id, "the lock is another run's: left as it is");
        return Ok(false);
    }
    if held.run_id != input.run_id && !input.force {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "the lock is held by run {} since {}, not {}: nothing released. If that run is dead, release it with force",
                held.run_id, held.acquired_at, input.run_id
            ),
        ));
    }
    Ok(true)
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
