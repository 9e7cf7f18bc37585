//! One run owns the cell, and once a write may have landed on green nothing routes the
//! cell back.
//!
//! - The **run lock** ([`RunLock`]) names the run (the Step Functions execution name) that
//!   owns the cell. Every operation that changes the cell takes the caller's `run_id` and
//!   refuses unless that run holds the lock — a fencing token: a function invoked by hand,
//!   or a Lambda still running for a run that has ended, cannot change a cell another run
//!   owns. `force` overrides it, for an operator who has made sure no run is live.
//! - The run's **decision** ([`Decision`]) is one journal entry created atomically:
//!   `switched` by `resume-pgbouncer` before its first RESUME toward green (the point of no
//!   return), or `aborting` by the first abort-direction step. Whichever is created first
//!   wins, so a run can never be both: an abort-direction operation refuses a switched cell
//!   (`AlreadySwitched`), and a forward one refuses a run that is aborting
//!   (`AbortInProgress`) — a late forward step cannot undo what the abort path restored.

use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, Upgrade};
use switchyard_errors::ErrorName;

use crate::journal::{decode_entry, now_rfc3339, Entry};
use crate::{Deps, Error};

/// Who holds the cell's run lock, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct RunLock {
    pub run_id: String,
    /// The Step Functions execution (its ARN) of the run, when it is one; `None` for a
    /// lock taken by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    /// RFC 3339, UTC.
    pub acquired_at: String,
}

impl Entry for RunLock {
    const KEY: &'static str = "lock";
    const WHAT: &'static str = "the run lock";
    // One run owns the cell, whichever way it moves it.
    const CELL_WIDE: bool = true;
}

impl RunLock {
    /// `run … (execution …) since …`, for messages.
    pub fn describe(&self) -> String {
        match &self.execution {
            Some(execution) => format!(
                "run {} (execution {execution}) since {}",
                self.run_id, self.acquired_at
            ),
            None => format!("run {} since {}", self.run_id, self.acquired_at),
        }
    }
}

/// Which way a run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Writes may be on green: only forward from here.
    Switched,
    /// The abort path has begun: the cell goes back to blue.
    Aborting,
}

/// A run's decision, the switched marker among them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Decision {
    pub run_id: String,
    pub verdict: Verdict,
    /// The upgrade it belongs to: a decision left by an earlier upgrade of the cell (to
    /// another green, another target) does not bind this one.
    pub green_identifier: String,
    pub target_major_version: u32,
    /// A switch-back's decision: the upgrade it undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<Upgrade>,
    /// RFC 3339, UTC.
    pub decided_at: String,
}

impl Entry for Decision {
    const KEY: &'static str = "decision";
    const WHAT: &'static str = "the run's decision (switched or aborting)";
}

impl Decision {
    fn new(cell: &CellDocument, run_id: &str, verdict: Verdict) -> Self {
        Self {
            run_id: run_id.to_owned(),
            verdict,
            green_identifier: cell.green.cluster_identifier.clone(),
            target_major_version: cell.target_major_version,
            undoes: cell.undoes.clone(),
            decided_at: now_rfc3339(),
        }
    }

    /// A switch-back's switched decision that undid the upgrade `cell` describes.
    pub fn switched_back(&self, cell: &CellDocument) -> bool {
        self.verdict == Verdict::Switched
            && self.undoes.as_ref().is_some_and(|u| {
                u.green_identifier == cell.green.cluster_identifier
                    && u.target_major_version == cell.target_major_version
            })
    }

    /// Whether it belongs to the upgrade `cell` describes.
    pub fn binds(&self, cell: &CellDocument) -> bool {
        self.green_identifier == cell.green.cluster_identifier
            && self.target_major_version == cell.target_major_version
    }

    /// The cell `cell` describes has switched to green (by any run).
    pub fn switched(&self, cell: &CellDocument) -> bool {
        self.verdict == Verdict::Switched && self.binds(cell)
    }

    /// Run `run_id` is on its abort path.
    pub fn aborting(&self, cell: &CellDocument, run_id: &str) -> bool {
        self.verdict == Verdict::Aborting && self.run_id == run_id && self.binds(cell)
    }
}

/// How an operation moves the cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Toward green, before the switch: refused once the run is aborting.
    Forward,
    /// Back toward blue (the abort path): refused once the cell has switched; marks the
    /// run aborting before anything is changed.
    Abort,
    /// Neither (the prepare phase, services up, cleanup after the switch): the lock only.
    Either,
}

/// The `direction` payload field of the steps both paths run (`refresh-nlb-target`,
/// `recreate-downstream-subscriptions`, `resume-pgbouncer`): the forward path toward
/// green, or the abort path back to blue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Way {
    /// The forward path, toward green.
    Forward,
    /// The abort path, back to blue.
    Abort,
}

impl Way {
    pub fn direction(self) -> Direction {
        match self {
            Self::Forward => Direction::Forward,
            Self::Abort => Direction::Abort,
        }
    }
}

impl std::fmt::Display for Way {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Forward => "forward",
            Self::Abort => "abort",
        })
    }
}

/// The caller of an operation that changes the cell, from its payload.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub run_id: &'a str,
    pub force: bool,
}

/// What [`check`] and [`admit`] found: the caller may go on.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub run_id: String,
    /// The lock was not the caller's (or the cell had switched) and `force` overrode it.
    pub forced: bool,
    pub lock: Option<RunLock>,
    pub decision: Option<Decision>,
}

/// Whether `caller` may act on `cell` in `direction` now. Changes nothing: dry runs use it
/// as it is; [`admit`] starts with it.
pub async fn check(
    deps: &Deps,
    cell: &CellDocument,
    caller: Caller<'_>,
    direction: Direction,
) -> Result<Admitted, Error> {
    if caller.run_id.trim().is_empty() {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "run_id: must name the run acting on the cell (the lock holder)",
        ));
    }
    let journal = deps.journal(cell);
    let other_leg = journal.other_leg();
    let names = [
        journal.parameter_of::<RunLock>(),
        journal.parameter_of::<Decision>(),
        other_leg.parameter_of::<Decision>(),
    ];
    let [lock, decision, other] = <[Option<String>; 3]>::try_from(journal.get_many(&names).await?)
        .map_err(|_| Error::stop(ErrorName::AwsError, "SSM returned other than three entries"))?;
    let lock = decode_entry::<RunLock>(&names[0], lock)?;
    let decision = decode_entry::<Decision>(&names[1], decision)?;
    let other = decode_entry::<Decision>(&names[2], other)?;
    legs_allow(cell, other.as_ref(), caller.force)?;
    let mut forced = false;
    match &lock {
        Some(lock) if lock.run_id == caller.run_id => {}
        _ if caller.force => forced = true,
        Some(lock) => {
            return Err(Error::stop(
                ErrorName::LockHeld,
                format!(
                    "cell {} is owned by {}, not run {}: nothing was changed. Act as that run (run_id {}) only if it is dead, or pass force (docs/runbook.md)",
                    cell.cell_id,
                    lock.describe(),
                    caller.run_id,
                    lock.run_id
                ),
            ))
        }
        None => {
            return Err(Error::stop(
                ErrorName::LockNotHeld,
                format!(
                    "no run holds cell {}'s lock ({}): nothing was changed. Take it first (acquire-lock with run_id {}) or pass force",
                    cell.cell_id,
                    journal.parameter_of::<RunLock>(),
                    caller.run_id
                ),
            ))
        }
    }
    if let Some(decision) = &decision {
        match direction {
            Direction::Abort if decision.switched(cell) => {
                if !caller.force {
                    return Err(already_switched(cell, decision));
                }
                forced = true;
            }
            Direction::Forward if decision.aborting(cell, caller.run_id) && !caller.force => {
                return Err(Error::stop(
                    ErrorName::AbortInProgress,
                    format!(
                        "run {} is on its abort path since {}: no forward step may change cell {} now (nothing was changed)",
                        caller.run_id, decision.decided_at, cell.cell_id
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(Admitted {
        run_id: caller.run_id.to_owned(),
        forced,
        lock,
        decision,
    })
}

/// Whether the two legs of an upgrade let `cell`'s leg act, given the other leg's decision:
/// a switch-back only once its upgrade has switched (its green follows through the way
/// back only then), whatever `force` says; an upgrade's steps not once it was switched
/// back, unless forced (they would move the cell toward a green it left).
pub fn legs_allow(cell: &CellDocument, other: Option<&Decision>, force: bool) -> Result<(), Error> {
    match &cell.undoes {
        Some(undoes) => {
            let forward_switched = other.is_some_and(|d| {
                d.verdict == Verdict::Switched
                    && d.green_identifier == undoes.green_identifier
                    && d.target_major_version == undoes.target_major_version
            });
            if forward_switched {
                Ok(())
            } else {
                Err(not_switched_to_undo(cell, undoes))
            }
        }
        None => match other.filter(|d| d.switched_back(cell)) {
            Some(back) if !force => Err(switched_back(cell, back)),
            _ => Ok(()),
        },
    }
}

/// A switch-back whose upgrade has not switched: there is no way back to take.
fn not_switched_to_undo(cell: &CellDocument, undoes: &Upgrade) -> Error {
    Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "cell {} has not switched to {} (PostgreSQL {}): there is nothing to switch back (no way back exists) and nothing was changed",
            cell.cell_id, undoes.green_identifier, undoes.target_major_version
        ),
    )
}

/// The error an upgrade's step gives once the cell was switched back from it.
pub fn switched_back(cell: &CellDocument, back: &Decision) -> Error {
    Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "cell {} was switched back to {} (PostgreSQL {}) in run {} at {}: the upgrade to {} (PostgreSQL {}) is undone, its steps would move the cell toward a green it left, and nothing was changed. Start another attempt with prepare (docs/runbook.md)",
            cell.cell_id,
            back.green_identifier,
            back.target_major_version,
            back.run_id,
            back.decided_at,
            cell.green.cluster_identifier,
            cell.target_major_version
        ),
    )
}

/// [`check`], then for an abort-direction caller the run is marked aborting — atomically,
/// so a concurrent switch is seen — before the operation changes anything.
pub async fn admit(
    deps: &Deps,
    cell: &CellDocument,
    caller: Caller<'_>,
    direction: Direction,
) -> Result<Admitted, Error> {
    let mut admitted = check(deps, cell, caller, direction).await?;
    if direction != Direction::Abort {
        return Ok(admitted);
    }
    match &admitted.decision {
        // Forced past a switch: a person's decision; the marker stays.
        Some(d) if d.switched(cell) => return Ok(admitted),
        Some(d) if d.aborting(cell, caller.run_id) => return Ok(admitted),
        _ => {}
    }
    let journal = deps.journal(cell);
    let aborting = Decision::new(cell, caller.run_id, Verdict::Aborting);
    if admitted.decision.is_none() {
        if !journal.create(&aborting).await? {
            // Someone decided between our read and our write: look again.
            return Box::pin(admit(deps, cell, caller, direction)).await;
        }
    } else {
        // Left by an earlier run or upgrade (acquire-lock clears those; a run taken over by
        // hand may still find one): it does not bind this run.
        journal.put(&aborting).await?;
    }
    tracing::warn!(run = %caller.run_id, "run marked aborting");
    admitted.decision = Some(aborting);
    Ok(admitted)
}

/// The point of no return: journals that `run_id` has switched the cell, before the first
/// RESUME toward green. Idempotent; `AbortInProgress` when the run is aborting.
pub async fn mark_switched(
    deps: &Deps,
    cell: &CellDocument,
    run_id: &str,
) -> Result<Decision, Error> {
    let journal = deps.journal(cell);
    let switched = Decision::new(cell, run_id, Verdict::Switched);
    loop {
        match journal.get::<Decision>().await? {
            Some(d) if d.switched(cell) => return Ok(d),
            Some(d) if d.aborting(cell, run_id) => {
                return Err(Error::stop(
                    ErrorName::AbortInProgress,
                    format!(
                        "run {run_id} is on its abort path since {}: PgBouncer is not resumed toward green",
                        d.decided_at
                    ),
                ))
            }
            Some(_) => {
                journal.put(&switched).await?;
                return Ok(switched);
            }
            None => {
                if journal.create(&switched).await? {
                    tracing::warn!(run = %run_id, "cell marked switched: the point of no return");
                    return Ok(switched);
                }
            }
        }
    }
}

/// The error every abort-direction operation gives on a switched cell.
pub fn already_switched(cell: &CellDocument, decision: &Decision) -> Error {
    Error::stop(
        ErrorName::AlreadySwitched,
        format!(
            "cell {} switched to {} (PostgreSQL {}) in run {} at {}: writes may be on it, so nothing routes the cell back to blue and nothing was changed. Finish forward instead (resume-pgbouncer forward, scale-services up, finalize-replication drop); pass force only to accept losing every write since",
            cell.cell_id,
            decision.green_identifier,
            decision.target_major_version,
            decision.run_id,
            decision.decided_at
        ),
    )
}

#[cfg(test)]
mod tests {
    use switchyard_errors::Catalogued;

    use super::*;

    fn cell() -> CellDocument {
        CellDocument::from_json(switchyard_cell::EXAMPLE).expect("example")
    }

    #[test]
    fn a_decision_binds_only_its_own_upgrade() {
        let cell = cell();
        let switched = Decision::new(&cell, "run-a", Verdict::Switched);
        assert!(switched.switched(&cell));
        assert!(!switched.aborting(&cell, "run-a"));
        let mut next_upgrade = cell.clone();
        next_upgrade.target_major_version += 1;
        assert!(!switched.switched(&next_upgrade), "another target: stale");
        let aborting = Decision::new(&cell, "run-a", Verdict::Aborting);
        assert!(aborting.aborting(&cell, "run-a"));
        assert!(!aborting.aborting(&cell, "run-b"), "another run's abort");
        assert!(!aborting.switched(&cell));
    }

    #[test]
    fn a_switch_back_acts_only_after_its_upgrade_switched_and_then_fences_the_upgrade() {
        let forward = cell();
        let back = forward.back("local-a-blue-14", 14).expect("back");
        let forward_switched = Decision::new(&forward, "up", Verdict::Switched);
        let forward_aborting = Decision::new(&forward, "up", Verdict::Aborting);
        assert!(legs_allow(&back, Some(&forward_switched), false).is_ok());
        for other in [None, Some(&forward_aborting)] {
            let error = legs_allow(&back, other, true).expect_err("nothing to undo, even forced");
            assert_eq!(error.error_name(), ErrorName::PreconditionFailed);
            assert!(
                error.to_string().contains("nothing to switch back"),
                "{error}"
            );
        }
        let mut other_upgrade = forward.clone();
        other_upgrade.green.cluster_identifier = "local-a-green-2".to_owned();
        let other_switched = Decision::new(&other_upgrade, "up", Verdict::Switched);
        assert!(
            legs_allow(&back, Some(&other_switched), false).is_err(),
            "another upgrade's switch is not the one this undoes"
        );

        let back_switched = Decision::new(&back, "down", Verdict::Switched);
        assert!(back_switched.switched_back(&forward));
        assert!(!back_switched.switched_back(&other_upgrade));
        assert!(!Decision::new(&back, "down", Verdict::Aborting).switched_back(&forward));
        let error = legs_allow(&forward, Some(&back_switched), false).expect_err("undone");
        assert_eq!(error.error_name(), ErrorName::PreconditionFailed);
        assert!(
            error
                .to_string()
                .contains("switched back to local-a-blue-14"),
            "{error}"
        );
        assert!(
            legs_allow(&forward, Some(&back_switched), true).is_ok(),
            "forced"
        );
        assert!(legs_allow(&forward, None, false).is_ok());
    }

    #[test]
    fn entries_round_trip_and_keep_their_keys() {
        let lock = RunLock {
            run_id: "r".to_owned(),
            execution: None,
            acquired_at: "2026-12-02T00:00:00Z".to_owned(),
        };
        let json = serde_json::to_value(&lock).expect("json");
        assert_eq!(json.get("execution"), None, "absent when taken by hand");
        assert_eq!(serde_json::from_value::<RunLock>(json).expect("back"), lock);
        assert_eq!((RunLock::KEY, Decision::KEY), ("lock", "decision"));
    }
}
