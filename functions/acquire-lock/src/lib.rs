//! `acquire-lock`: one run per cell at a time.
//!
//! The lock is a journal entry in SSM (`<journal path>lock`), created atomically: SSM
//! refuses to overwrite it, so two runs cannot both win. It outlives any crash and is
//! visible to operators; only `release-lock` (or an operator deleting the parameter
//! deliberately) removes it. A second attempt by the same run — a retried invocation —
//! finds its own lock and succeeds without changing anything. Every operation that
//! changes the cell checks its caller holds it (`switchyard_operation::fence`).
//!
//! A cell that has switched to this upgrade's green is refused (`AlreadySwitched`) before
//! the lock is taken: a second switchover must change nothing. Once the lock is taken, a
//! decision an earlier run left (its `aborting`, or an earlier upgrade's `switched`) is
//! cleared, so it cannot bind this run.
//!
//! The two legs of an upgrade: a switch-back's document takes the lock only once its
//! upgrade has switched, and a switch-back's switch is kept like the upgrade's. An
//! upgrade's run that is not after the switch finds a switch-back of it a finished attempt:
//! both legs' decisions and rename plans are cleared, so the cell can be prepared for the
//! next one; an after-switch run of the undone upgrade is refused (there is no window left
//! to close).
//!
//! Dry run ([`plan`]): reads the lock and says whether this run would take it; a lock held
//! by another run is `LockHeld`, as for the real call.

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::decode_entry;
use switchyard_operation::fence::{already_switched, legs_allow, switched_back, Decision, RunLock};
use switchyard_operation::rename::RenamePlan;
use switchyard_operation::{now_rfc3339, Deps, Error, OperationInput, Plan};

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z",
///  "execution": "arn:aws:states:…:execution:switchyard-switchover:switchover-local-a-20261122T050000Z"}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run taking the lock: the Step Functions execution name.
    pub run_id: String,
    /// The execution's ARN (`$$.Execution.Id`), kept in the lock for whoever finds it held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    /// The run acts on a switched cell (closing the rollback window): the lock is taken only
    /// once this upgrade's switch has happened, and the switched decision is kept.
    #[serde(default)]
    pub after_switch: bool,
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
    /// A decision left by an earlier run that this run cleared (`None`: there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<Decision>,
    /// The switch-back that undid this upgrade, cleared with the upgrade's own switch so
    /// that another attempt can run (`None`: there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_switch_back: Option<Decision>,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, run = %input.run_id))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    check_run_id(&input)?;
    let journal = deps.journal(&input.cell);
    let parameter = journal.parameter_of::<RunLock>();
    check_switch(&input, deps).await?;
    let wanted = RunLock {
        run_id: input.run_id.clone(),
        execution: input.execution.clone(),
        acquired_at: now_rfc3339(),
    };
    let (lock, acquired) = if journal.create(&wanted).await? {
        tracing::info!(%parameter, "run lock acquired");
        (wanted, true)
    } else {
        match journal.get::<RunLock>().await? {
            Some(lock) => (ours(lock, &input, &parameter)?, false),
            // Released between our create and read: a race with release-lock; the state
            // machine's retry takes it cleanly.
            None => {
                return Err(Error::stop(
                    ErrorName::LockHeld,
                    format!("the lock at {parameter} changed hands while being taken: retry"),
                ))
            }
        }
    };
    // Ours now: a switch that landed between the check and the create is seen here.
    let (decision, other) = decisions(&input, deps).await?;
    if let Err(e) = switch_allows(&input, decision.as_ref(), other.as_ref()) {
        journal.remove::<RunLock>().await?;
        return Err(e);
    }
    let switched_back = other.filter(|d| d.switched_back(&input.cell));
    let cleared_switch_back = match switched_back {
        Some(back) => {
            // Both legs' rename plans are history: the switch-back renamed everything back,
            // and a plan of another run would stop the next attempt's renames.
            journal.remove::<RenamePlan>().await?;
            journal.other_leg().remove::<RenamePlan>().await?;
            // The upgrade's switch before the switch-back's: were we to crash between the
            // two, the next try finds the switch-back and clears again, whereas a switch
            // left without its switch-back would refuse every run of this upgrade.
            journal.remove::<Decision>().await?;
            journal.other_leg().remove::<Decision>().await?;
            tracing::info!(back_run = %back.run_id, "cleared a switched-back upgrade's decisions");
            Some(back)
        }
        None => None,
    };
    let cleared = match decision {
        Some(d) if cleared_switch_back.is_some() => Some(d),
        // What an after-switch run acts on: kept.
        Some(d) if d.switched(&input.cell) => None,
        Some(d) if d.run_id != input.run_id => {
            journal.remove::<Decision>().await?;
            tracing::info!(earlier_run = %d.run_id, verdict = ?d.verdict, "cleared an earlier run's decision");
            Some(d)
        }
        _ => None,
    };
    Ok(Output {
        lock,
        parameter,
        acquired,
        cleared,
        cleared_switch_back,
    })
}

/// What [`run`] would do now: take a free lock, nothing when this run holds it already.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, run = %input.run_id))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    check_run_id(&input)?;
    check_switch(&input, deps).await?;
    let journal = deps.journal(&input.cell);
    let parameter = journal.parameter_of::<RunLock>();
    let mut plan = Plan::new();
    match journal.get::<RunLock>().await? {
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
    let (decision, other) = decisions(&input, deps).await?;
    if let Some(back) = other.filter(|d| d.switched_back(&input.cell)) {
        plan.would(format!(
            "delete SSM parameters {}, {}, {} and {}: both legs' rename plans, the upgrade's switch and run {}'s switch-back of it ({}), a finished attempt",
            journal.parameter_of::<RenamePlan>(),
            journal.other_leg().parameter_of::<RenamePlan>(),
            journal.parameter_of::<Decision>(),
            journal.other_leg().parameter_of::<Decision>(),
            back.run_id,
            back.decided_at
        ));
    } else if let Some(d) = decision {
        if d.run_id != input.run_id && !d.switched(&input.cell) {
            plan.would(format!(
                "delete SSM parameter {}: run {}'s decision ({:?} at {}), which does not bind this run",
                journal.parameter_of::<Decision>(),
                d.run_id,
                d.verdict,
                d.decided_at
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

/// This leg's decision and the other leg's, in one call.
async fn decisions(
    input: &Input,
    deps: &Deps,
) -> Result<(Option<Decision>, Option<Decision>), Error> {
    let journal = deps.journal(&input.cell);
    let names = [
        journal.parameter_of::<Decision>(),
        journal.other_leg().parameter_of::<Decision>(),
    ];
    let mut values = journal.get_many(&names).await?.into_iter();
    Ok((
        decode_entry(&names[0], values.next().flatten())?,
        decode_entry(&names[1], values.next().flatten())?,
    ))
}

/// [`switch_allows`] with the decisions the journal holds now.
async fn check_switch(input: &Input, deps: &Deps) -> Result<(), Error> {
    let (decision, other) = decisions(input, deps).await?;
    switch_allows(input, decision.as_ref(), other.as_ref())
}

/// `AlreadySwitched` when this leg's switch has happened (nothing to take the lock for);
/// for an after-switch run, `PreconditionFailed` until it has. A switch-back needs its
/// upgrade switched; an upgrade switched back is a finished attempt, except to an
/// after-switch run, which is refused.
fn switch_allows(
    input: &Input,
    decision: Option<&Decision>,
    other: Option<&Decision>,
) -> Result<(), Error> {
    if input.cell.is_back() {
        legs_allow(&input.cell, other, false)?;
    } else if let Some(back) = other.filter(|d| d.switched_back(&input.cell)) {
        return if input.after_switch {
            Err(switched_back(&input.cell, back))
        } else {
            Ok(())
        };
    }
    let switched = decision.filter(|d| d.switched(&input.cell));
    match (switched, input.after_switch) {
        (Some(d), false) => Err(already_switched(&input.cell, d)),
        (None, true) => Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "cell {} has not switched to {} (PostgreSQL {}): there is no rollback window to close; nothing was changed",
                input.cell.cell_id, input.cell.green.cluster_identifier, input.cell.target_major_version
            ),
        )),
        _ => Ok(()),
    }
}

/// The held lock if it is this run's (a retry), else `LockHeld`.
fn ours(lock: RunLock, input: &Input, parameter: &str) -> Result<RunLock, Error> {
    if lock.run_id == input.run_id {
        return Ok(lock);
    }
    Err(Error::stop(
        ErrorName::LockHeld,
        format!(
            "cell {} is locked by {}: wait for it to finish; if that run is dead, release the lock \
             deliberately with release-lock (run_id {}, or force) — SSM parameter {parameter}",
            input.cell.cell_id,
            lock.describe(),
            lock.run_id
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
