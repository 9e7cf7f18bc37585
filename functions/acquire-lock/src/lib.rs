//! `acquire-lock`: one switchover per cell at a time.
//!
//! The lock is a journal entry in SSM (`<journal path>lock`), created atomically: SSM
//! refuses to overwrite it, so two runs cannot both win. It outlives any crash and is
//! visible to operators; only `release-lock` (or an operator deleting the parameter
//! deliberately) removes it. A second attempt by the same run — a retried invocation —
//! finds its own lock and succeeds without changing anything.

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{now_rfc3339, Deps, Error, OperationInput, RunLock, LOCK_KEY};

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
    if input.run_id.trim().is_empty() {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "run_id: must name the run taking the lock",
        ));
    }
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
    let held: Option<RunLock> = journal.read(LOCK_KEY).await?;
    match held {
        Some(lock) if lock.run_id == input.run_id => Ok(Output { lock, parameter, acquired: false }),
        Some(lock) => Err(Error::stop(
            ErrorName::LockHeld,
            format!(
                "cell {} is locked by run {} since {}: wait for it to finish; if that run is dead, release the lock \
                 deliberately with release-lock (run_id {}, or force) — SSM parameter {parameter}",
                input.cell.cell_id, lock.run_id, lock.acquired_at, lock.run_id
            ),
        )),
        // Released between our create and read: a race with release-lock; the state
        // machine's retry takes it cleanly.
        None => Err(Error::stop(
            ErrorName::LockHeld,
            format!("the lock at {parameter} changed hands while being taken: retry"),
        )),
    }
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
