//! `check-drift`: what changed on the cell since prepare that a switchover would carry
//! over wrongly — a table no publication carries, a table or sequence green lacks, DDL
//! nobody vouched for, a subscription not streaming, an application role or password in
//! SSM that green does not have, an extension green lacks ([`preflight::drift`]).
//!
//! Read-only, and safe at any time between prepare and the switchover (the switchover's
//! own preflight runs the same checks and stops before pausing). It reports, it does not
//! fail: `clean` is false when there is a blocker, and each finding names its objects and
//! the fix.
//!
//! On a cell switched back (the upgrade undone) it refuses, `PreconditionFailed`: there is
//! nothing of the upgrade left to check.
//!
//! On a switched cell it watches the rollback window instead ([`preflight::rollback`]):
//! green's slot `switchyard_reverse` streaming to the old blue, and the WAL it keeps
//! against `budgets.rollback_wal_bytes` (each database's in `rollback_slots`).

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::Decision;
use switchyard_operation::{decode_entry, Deps, Error, OperationInput};

pub use preflight::rollback::Slot as RollbackSlot;
pub use preflight::{Code, Finding};

/// ```json
/// {"cell": { …the cell document… }}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// No blocker: switched now, nothing found here would be lost or refused.
    pub clean: bool,
    pub blockers: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// On a switched cell: green's slot `switchyard_reverse` in each database that has it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_slots: Vec<RollbackSlot>,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let cell = &input.cell;
    let journal = deps.journal(cell);
    let other_leg = journal.other_leg();
    let names = [
        journal.parameter_of::<Decision>(),
        other_leg.parameter_of::<Decision>(),
    ];
    let mut values = journal.get_many(&names).await?.into_iter();
    let decision: Option<Decision> = decode_entry(&names[0], values.next().flatten())?;
    let other: Option<Decision> = decode_entry(&names[1], values.next().flatten())?;
    // A switched-back cell has neither a prepare nor a rollback window of this upgrade:
    // a report of either would mislead.
    let back = match (&cell.undoes, &decision, &other) {
        (None, _, Some(back)) if back.switched_back(cell) => Some(back),
        (Some(_), Some(back), _) if back.switched(cell) => Some(back),
        _ => None,
    };
    if let Some(back) = back {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "cell {} was switched back to {} (PostgreSQL {}) in run {} at {}: there is no prepare and no rollback window of this upgrade to check (nothing was read). For another attempt, prepare again (docs/runbook.md, Switching back)",
                cell.cell_id,
                back.green_identifier,
                back.target_major_version,
                back.run_id,
                back.decided_at
            ),
        ));
    }
    let switched = decision.is_some_and(|d| d.switched(cell));
    let (findings, rollback_slots) = if switched {
        Box::pin(preflight::rollback::check(cell, deps)).await?
    } else {
        (
            Box::pin(preflight::drift::check(cell, deps)).await?,
            Vec::new(),
        )
    };
    let (blockers, warnings): (Vec<Finding>, Vec<Finding>) =
        findings.into_iter().partition(|f| f.code.is_blocker());
    if blockers.is_empty() {
        tracing::info!(warnings = warnings.len(), "no drift since prepare");
    } else {
        tracing::warn!(blockers = blockers.len(), "drift since prepare");
    }
    Ok(Output {
        clean: blockers.is_empty(),
        blockers,
        warnings,
        rollback_slots,
    })
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
