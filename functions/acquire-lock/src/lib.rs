//! `acquire-lock`: one switchover per cell at a time.
//!
//! The lock is a journal entry in SSM (`<journal path>lock`), created atomically: SSM
//! refuses to overwrite it, so two runs cannot both win. It outlives any crash and is
//! visible to operators; only `release-lock` (or an operator deleting the parameter
//! deliberately) removes it. A second attempt by the same run — a retried invocation —
//! finds its own lock and succeeds without changing anything.
//!
//! Dry run ([`plan`]): reads the lock and says whether this run would take it; a lock held
//! by another run is `LockHeld`, as for the real call.

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{now_rfc3339, Deps, Error, OperationInput, Plan, RunLock, LOCK_KEY};

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z"}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run taking the lock: the Step Functions execution name.
    pub run_id: String,
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub lock: RunLock,
    /// The SSM parameter holding the lock, for an operator who must inspect it.
    pub parameter: String,
    /// False when this run already held it (a retry).
    pub acquired: bool,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, run = %input.run_id))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    check_run_id(&input)?;
    let journal = deps.journal(&input.cell);
    let parameter = journal.parameter(LOCK_KEY);
    let wanted = RunLock {
        run_id: input.run_id.clone(),
        acquired_at: now_rfc3339(),
    };
    if journal.create(LOCK_KEY, &wanted).await? {
        tracing::info!(%parameter, "run lock acquired");
        return Ok(Output {
            lock: wanted,
            parameter,
            acquired: true,
        });
    }
    match journal.read(LOCK_KEY).await? {
        Some(lock) => Ok(Output {
            lock: ours(lock, &input, &parameter)?,
            parameter,
            acquired: false,
        }),
        // Released between our create and read: a race with release-lock; the state
        // machine's retry takes it cleanly.
        None => Err(Error::stop(
            ErrorName::LockHeld,
            format!("the lock at {parameter} changed hands while being taken: retry"),
        )),
    }
}

/// What [`run`] would do now: take a free lock, nothing when this run holds it already.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, run = %input.run_id))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    check_run_id(&input)?;
    let journal = deps.journal(&input.cell);
    let parameter = journal.parameter(LOCK_KEY);
    let mut plan = Plan::new();
    match journal.read(LOCK_KEY).await? {
        Some(lock) => {
            ours(lock, &input, &parameter)?;
        }
        None => {
            plan.would(format!(
                "create SSM parameter {parameter}: the run lock of cell {} for run {} (atomically: LockHeld if another run takes it first)",
                input.cell.cell_id, input.run_id
            ));
        }
    }
    Ok(plan)
}

fn check_run_id(input: &Input) -> Result<(), Error> {
    if input.run_id.trim().is_empty() {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "run_id: must name the run taking the lock",
        ));
    }
    Ok(())
}

/// The held lock if it is this run's (a retry), else `LockHeld`.
fn ours(lock: RunLock, input: &Input, parameter: &str) -> Result<RunLock, Error> {
    if lock.run_id == input.run_id {
        return Ok(lock);
    }
    Err(Error::stop(
        ErrorName::LockHeld,
        format!(
            "cell {} is locked by run {} since {}: wait for it to finish; if that run is dead, release the lock \
             deliberately with release-lock (run_id {}, or force) — SSM parameter {parameter}",
            input.cell.cell_id, lock.run_id, lock.acquired_at, lock.run_id
        ),
    ))
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
