//! `finalize-replication`: what becomes of green's subscriptions (the ones named
//! `cell.replication_names()`, in each of the cell's databases) around the rename.
//!
//! - `disable` (switchover step 9, before the rename): after the rename blue's endpoint
//!   name points at green, and nothing on green may follow it. Disabled, not dropped: the
//!   slots on blue stay, so the abort path can re-enable and green resumes where it was.
//! - `enable` (abort path): green resumes from its slots on blue; no row is missed.
//! - `drop` (step 15, after the point of no return): green's subscriptions go without
//!   contacting the old blue, then the old blue loses their slots and the DDL guard (its
//!   journal table stays, as evidence). An unreachable old blue is not an error: the
//!   output lists the slots left to drop by hand.
//!
//! Every mode finds what an earlier call did and keeps it: a second call changes nothing.
//!
//! A dry run ([`plan`]) reads the same catalogs (and, for `drop`, locates the old blue the
//! same way) and lists each ALTER/DROP and slot or guard removal left; empty once done.

// Public for abandon-prepare, which drops the same subscriptions, slots and guard before
// any switch.
pub mod green;
pub mod old_blue;

use serde::{Deserialize, Serialize};
use switchyard_aws::ClusterEndpoint;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Caller, Direction};
use switchyard_operation::{Deps, Error, OperationInput, PauseDeadline, Plan, Side};

/// ```json
/// {"cell": { …the cell document… }, "mode": "drop", "old_blue_identifier": "local-a-blue-14"}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock, or past a switch: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
    /// The end of the pause budget (`pause-pgbouncer`'s): every wait stops at it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
    pub mode: Mode,
    /// `drop` only: the cluster that was blue, holding the slots. Default: the `rename`
    /// journal entry's `parked_identifier` (written by rename-clusters); else, if
    /// green still has its own identifier (no rename), blue's identifier; else the one
    /// existing `<blue>-blue-<major>` cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_blue_identifier: Option<String>,
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

impl Input {
    fn caller(&self) -> Caller<'_> {
        Caller {
            run_id: &self.run_id,
            force: self.force,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Disable,
    Enable,
    Drop,
}

impl Mode {
    /// Disable is the forward path's, enable the abort path's; drop comes after the switch.
    fn direction(self) -> Direction {
        match self {
            Self::Disable => Direction::Forward,
            Self::Enable => Direction::Abort,
            Self::Drop => Direction::Either,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Drop => "drop",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub mode: Mode,
    /// `drop` only: the cluster whose slots and guard were (or are left to be) dropped;
    /// `None` when it could not be determined.
    pub old_blue_identifier: Option<String>,
    pub databases: Vec<DatabaseOutput>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseOutput {
    pub name: String,
    pub subscriptions: Vec<SubscriptionOutput>,
    /// `drop`: slots this call dropped on the old blue.
    pub slots_dropped: Vec<String>,
    /// `drop`: slots that may still exist on the old blue (unreachable, or a slot still in
    /// use): drop each by hand with `pg_drop_replication_slot`.
    pub slots_left: Vec<String>,
    /// `drop`: true when this call dropped the DDL guard's event triggers.
    pub guard_removed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SubscriptionOutput {
    pub name: String,
    /// True when this call disabled, enabled or dropped it.
    pub changed: bool,
}

fn check_input(input: &Input) -> Result<(), Error> {
    if input.old_blue_identifier.is_some() && input.mode != Mode::Drop {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "old_blue_identifier is for mode drop only; remove it",
        ));
    }
    if input.pause_deadline.is_some() && input.mode != Mode::Disable {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "pause_deadline is for mode disable only (the pause window's step); remove it",
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, mode = %input.mode))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    check_input(&input)?;
    fence::admit(deps, &input.cell, input.caller(), input.mode.direction()).await?;
    let cell = &input.cell;
    let names = cell.replication_names();
    let mut databases = Vec::new();
    match input.mode {
        Mode::Disable | Mode::Enable => {
            let enable = input.mode == Mode::Enable;
            for database in &cell.databases {
                let green = deps.connect(cell, Side::Green, database).await?;
                databases.push(DatabaseOutput {
                    name: database.clone(),
                    subscriptions: green::set_enabled(&green, &names, enable).await?,
                    slots_dropped: Vec::new(),
                    slots_left: Vec::new(),
                    guard_removed: false,
                });
            }
            Ok(Output {
                mode: input.mode,
                old_blue_identifier: None,
                databases,
            })
        }
        Mode::Drop => {
            let green = green::locate(cell, deps).await?;
            // Located before anything is dropped: a mistaken identifier stops with nothing done.
            let old_blue = old_blue::locate(&input, deps, &green).await?;
            for database in &cell.databases {
                let client = green::connect(cell, deps, &green, database).await?;
                let subscriptions = green::drop_all(&client, &names).await?;
                let cleanup = old_blue::clean(cell, deps, &old_blue, database, &names).await?;
                databases.push(DatabaseOutput {
                    name: database.clone(),
                    subscriptions,
                    slots_dropped: cleanup.slots_dropped,
                    slots_left: cleanup.slots_left,
                    guard_removed: cleanup.guard_removed,
                });
            }
            Ok(Output {
                mode: input.mode,
                old_blue_identifier: old_blue.identifier(),
                databases,
            })
        }
    }
}

/// Dry run: the subscriptions [`run`] would alter or drop on green and, for `drop`, the
/// slots and guard it would drop on the old blue, database by database.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, mode = %input.mode))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    check_input(&input)?;
    fence::check(deps, &input.cell, input.caller(), input.mode.direction()).await?;
    let cell = &input.cell;
    let names = cell.replication_names();
    let mut plan = Plan::new();
    match input.mode {
        Mode::Disable | Mode::Enable => {
            let enable = input.mode == Mode::Enable;
            let verb = green::verb(enable);
            for database in &cell.databases {
                let client = deps.connect(cell, Side::Green, database).await?;
                let changing: Vec<String> = green::to_set(&client, &names, enable)
                    .await?
                    .into_iter()
                    .filter_map(|(name, changes)| changes.then_some(name))
                    .collect();
                for name in &changing {
                    plan.would(format!(
                        "ALTER SUBSCRIPTION {name} {verb} on green (database {database})"
                    ));
                }
                if !changing.is_empty() {
                    plan.would(format!(
                        "then wait up to {} s for their apply workers to {} (database {database})",
                        green::WORKER_WAIT_SECONDS,
                        if enable { "start" } else { "stop" }
                    ));
                }
            }
        }
        Mode::Drop => {
            let green = green::locate(cell, deps).await?;
            let old_blue = old_blue::locate(&input, deps, &green).await?;
            for database in &cell.databases {
                let client = green::open(cell, deps, &green, database).await?;
                for (name, enabled) in green::to_drop(&client, &names).await? {
                    let disable = if enabled { "DISABLE, " } else { "" };
                    plan.would(format!(
                        "drop subscription {name} on green {} (database {database}) without touching its publisher: {disable}SET (slot_name = NONE), DROP",
                        green.identifier
                    ));
                }
                old_blue::plan(cell, deps, &old_blue, database, &names, &mut plan).await?;
            }
        }
    }
    Ok(plan)
}

/// A connection through `endpoint`'s name, checked to reach the cluster the API says holds
/// it (`WrongServer` while the name lags a rename).
async fn connect_to(
    cell: &CellDocument,
    deps: &Deps,
    endpoint: &ClusterEndpoint,
    dbname: &str,
) -> Result<tokio_postgres::Client, Error> {
    deps.connect_endpoint(cell, endpoint, dbname).await
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
