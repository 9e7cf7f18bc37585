//! `finalize-replication`: what becomes of green's subscriptions (the ones named
//! `cell.replication_names()`, in each of the cell's databases) around the rename.
//!
//! - `disable` (switchover step 9, before the rename): after the rename blue's endpoint
//!   name points at green, and nothing on green may follow it. Disabled, not dropped: the
//!   slots on blue stay, so the abort path can re-enable and green resumes where it was.
//!   Then green gets the DDL guard (`switchyard_operation::guard`) and the way back.
//! - `enable` (abort path): green's guard and way back go, then green resumes from its
//!   slots on blue; no row is missed.
//! - `drop` (step 15, after the point of no return): green's subscriptions go without
//!   contacting the old blue, then the old blue loses their slots and the DDL guard (its
//!   journal table stays, as evidence). An unreachable old blue is not an error: the
//!   output lists the slots left to drop by hand.
//! - `reverse` (after `drop`): the old blue follows green through the slot `disable` made
//!   on green, so the cell can switch back without losing a write ([`reverse`]). `disable`
//!   makes that slot and `enable` removes it first.
//!
//! On a switch-back (`cell.undoes`) green is the old blue and its one subscription is
//! `switchyard_reverse`: `disable` and `enable` only pause and resume it (no guard, no way
//! back of the way back), `drop` removes it and its slot on the parked upgrade's green, and
//! `reverse` has nothing to do.
//!
//! Every mode finds what an earlier call did and keeps it: a second call changes nothing.
//!
//! A dry run ([`plan`]) reads the same catalogs (and, for `drop`, locates the old blue the
//! same way) and lists each ALTER/DROP and slot or guard removal left; empty once done.

// Public for abandon-prepare, which drops the same subscriptions, slots and guard before
// any switch.
pub mod green;
pub mod old_blue;
pub mod reverse;

use serde::{Deserialize, Serialize};
use switchyard_aws::ClusterEndpoint;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::{guard, Deps, Error, PauseDeadline, Plan, Side};
use switchyard_postgres::quote;

/// ```json
/// {"cell": { …the cell document… }, "mode": "drop", "old_blue_identifier": "local-a-blue-14"}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
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
    /// Which step around the rename this call is.
    pub mode: Mode,
    /// `drop` and `reverse` only: the cluster that was blue, holding the slots. Default: the `rename`
    /// journal entry's `parked_identifier` (written by rename-clusters); else, if
    /// green still has its own identifier (no rename), blue's identifier; else the one
    /// existing `<blue>-blue-<major>` cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_blue_identifier: Option<String>,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Step 9, before the rename: pause green's subscriptions (their slots on blue stay).
    Disable,
    /// The abort path: green resumes from its slots on blue.
    Enable,
    /// Step 15, after the point of no return: green's subscriptions and blue's slots go.
    Drop,
    /// After `drop`: the old blue follows green, so the cell can switch back.
    Reverse,
}

impl Mode {
    /// Disable is the forward path's, enable the abort path's; drop and reverse come after
    /// the switch.
    fn direction(self) -> Direction {
        match self {
            Self::Disable => Direction::Forward,
            Self::Enable => Direction::Abort,
            Self::Drop | Self::Reverse => Direction::Either,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Drop => "drop",
            Self::Reverse => "reverse",
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
    /// `disable`, `enable` and `reverse`: the way back after the switch ([`reverse`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse: Option<reverse::ReverseOutput>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SubscriptionOutput {
    pub name: String,
    /// True when this call disabled, enabled or dropped it.
    pub changed: bool,
}

fn check_input(input: &Input) -> Result<(), Error> {
    if input.old_blue_identifier.is_some() && !matches!(input.mode, Mode::Drop | Mode::Reverse) {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "old_blue_identifier is for modes drop and reverse only; remove it",
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
    let admitted = fence::admit(deps, &input.cell, input.caller(), input.mode.direction()).await?;
    let cell = &input.cell;
    let names = cell.replication_names();
    let mut databases = Vec::new();
    match input.mode {
        // A switch-back's green is the old blue: it opens no way back (the rollback window
        // ends with this leg) and carries no guard; its subscription is only paused.
        Mode::Disable | Mode::Enable if cell.is_back() => {
            let enabled = input.mode == Mode::Enable;
            for database in &cell.databases {
                let green = deps.connect(cell, Side::Green, database).await?;
                green::prepare(&green).await?;
                databases.push(DatabaseOutput {
                    name: database.clone(),
                    subscriptions: green::set_enabled(&green, &names, enabled).await?,
                    slots_dropped: Vec::new(),
                    slots_left: Vec::new(),
                    guard_removed: false,
                    reverse: None,
                });
            }
            Ok(Output {
                mode: input.mode,
                old_blue_identifier: None,
                databases,
            })
        }
        Mode::Disable => {
            for database in &cell.databases {
                let mut green = deps.connect(cell, Side::Green, database).await?;
                green::prepare(&green).await?;
                // A way back found while a subscription still runs predates this disable:
                // its slot may hold changes green applied from blue (and its guard, DDL
                // journaled before this window).
                let started = std::time::Instant::now();
                let stale = if green::to_set(&green, &names, false)
                    .await?
                    .iter()
                    .any(|(_, changes)| *changes)
                {
                    guard::remove(&green, "green").await?;
                    reverse::close_on_green(&green).await?
                } else {
                    reverse::ReverseOutput::default()
                };
                let mut spent = started.elapsed();
                let subscriptions = green::set_enabled(&green, &names, false).await?;
                let started = std::time::Instant::now();
                // Before the first client write on green, which follows the rename: DDL on
                // green from then on is journaled (the old blue cannot follow it).
                let guard_installed = guard::install(&mut green).await?;
                // After the workers are gone (set_enabled waits): the slot starts after
                // the last change applied from blue.
                let mut way_back = reverse::open_on_green(&mut green, &names).await?;
                way_back.guard_installed = guard_installed;
                spent += started.elapsed();
                way_back.publication_changed |= stale.publication_changed;
                way_back.slot_changed |= stale.slot_changed;
                way_back.elapsed_ms = Some(u64::try_from(spent.as_millis()).unwrap_or(u64::MAX));
                databases.push(DatabaseOutput {
                    name: database.clone(),
                    subscriptions,
                    slots_dropped: Vec::new(),
                    slots_left: Vec::new(),
                    guard_removed: false,
                    reverse: Some(way_back),
                });
            }
            Ok(Output {
                mode: input.mode,
                old_blue_identifier: None,
                databases,
            })
        }
        Mode::Enable => {
            for database in &cell.databases {
                let green = deps.connect(cell, Side::Green, database).await?;
                green::prepare(&green).await?;
                // Green is blue's replica again: its guard goes first, so the drops below
                // are not journaled.
                let guard_removed = !guard::remove(&green, "green").await?.is_empty();
                // Before any subscription runs again: with both directions live, blue's
                // changes would come back to blue.
                let mut way_back = reverse::close_on_green(&green).await?;
                way_back.guard_removed = guard_removed;
                databases.push(DatabaseOutput {
                    name: database.clone(),
                    subscriptions: green::set_enabled(&green, &names, true).await?,
                    slots_dropped: Vec::new(),
                    slots_left: Vec::new(),
                    guard_removed: false,
                    reverse: Some(way_back),
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
            let old_blue =
                old_blue::locate(cell, deps, &green, input.old_blue_identifier.as_deref()).await?;
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
                    reverse: None,
                });
            }
            Ok(Output {
                mode: input.mode,
                old_blue_identifier: old_blue.identifier(),
                databases,
            })
        }
        // The switch-back's cluster it left needs to follow nothing: the way back was this.
        Mode::Reverse if cell.is_back() => {
            require_switched(cell, &admitted)?;
            Ok(Output {
                mode: input.mode,
                old_blue_identifier: None,
                databases,
            })
        }
        Mode::Reverse => {
            require_switched(cell, &admitted)?;
            let green = green::locate(cell, deps).await?;
            let old_blue =
                old_blue::locate(cell, deps, &green, input.old_blue_identifier.as_deref()).await?;
            let login = replication_login(cell, deps).await?;
            for database in &cell.databases {
                let green_client = green::connect(cell, deps, &green, database).await?;
                let blue_client = old_blue::require(cell, deps, &old_blue, database).await?;
                let way_back = reverse::follow_green(
                    cell,
                    &green_client,
                    &green,
                    &blue_client,
                    database,
                    &login,
                )
                .await?;
                databases.push(DatabaseOutput {
                    name: database.clone(),
                    subscriptions: Vec::new(),
                    slots_dropped: Vec::new(),
                    slots_left: Vec::new(),
                    guard_removed: false,
                    reverse: Some(way_back),
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

/// `reverse` only after the switch: before it, blue serves writes and must follow nothing.
fn require_switched(cell: &CellDocument, admitted: &fence::Admitted) -> Result<(), Error> {
    if admitted.decision.as_ref().is_some_and(|d| d.switched(cell)) {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "cell {} has not switched to green: blue still serves, and only after the switch does the old blue follow green; nothing was changed",
            cell.cell_id
        ),
    ))
}

/// The replication role's login as SSM holds it (the password the role has on blue).
async fn replication_login(
    cell: &CellDocument,
    deps: &Deps,
) -> Result<start_replication::replicator::Login, Error> {
    start_replication::replicator::stored(cell, deps)
        .await?
        .ok_or_else(|| {
            Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "SSM parameter {} holds no login for the replication role {}: run start-replication (it rotates one); nothing was changed",
                    cell.replication_credentials_parameter(),
                    quote::name(&cell.replication.role)
                ),
            )
        })
}

/// Dry run: the subscriptions [`run`] would alter or drop on green and, for `drop`, the
/// slots and guard it would drop on the old blue, database by database.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, mode = %input.mode))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    check_input(&input)?;
    let admitted = fence::check(deps, &input.cell, input.caller(), input.mode.direction()).await?;
    let cell = &input.cell;
    let names = cell.replication_names();
    let mut plan = Plan::new();
    match input.mode {
        Mode::Disable | Mode::Enable if cell.is_back() => {
            let enable = input.mode == Mode::Enable;
            for database in &cell.databases {
                let db = quote::name(database);
                let client = deps.connect(cell, Side::Green, database).await?;
                for (name, changes) in green::to_set(&client, &names, enable).await? {
                    if changes {
                        plan.would(format!(
                            "ALTER SUBSCRIPTION {} {} on the old blue {} (database {db}), then wait up to {} s for its apply worker",
                            quote::name(&name),
                            green::verb(enable),
                            cell.green.cluster_identifier,
                            green::WORKER_WAIT_SECONDS
                        ));
                    }
                }
            }
        }
        Mode::Reverse if cell.is_back() => require_switched(cell, &admitted)?,
        Mode::Disable | Mode::Enable => {
            let enable = input.mode == Mode::Enable;
            let verb = green::verb(enable);
            let way_back = quote::name(&switchyard_cell::reverse_replication_name());
            for database in &cell.databases {
                let db = quote::name(database);
                let client = deps.connect(cell, Side::Green, database).await?;
                let states = green::to_set(&client, &names, enable).await?;
                let running = states.iter().any(|(_, changes)| *changes && !enable);
                let found = reverse::on_green(&client).await?;
                if (enable || running) && guard::present(&client).await? {
                    plan.would(format!(
                        "drop the DDL guard on green (database {db}) first: {}",
                        if enable {
                            "green is blue's replica again"
                        } else {
                            "installed before this disable"
                        }
                    ));
                }
                if (enable || running) && (found.publication || found.slot.is_some()) {
                    plan.would(format!(
                        "drop slot and publication {way_back} on green (database {db}) first{}",
                        if enable {
                            ": blue's changes must not come back to blue"
                        } else {
                            ": made before this disable"
                        }
                    ));
                }
                let changing: Vec<String> = states
                    .into_iter()
                    .filter_map(|(name, changes)| changes.then(|| quote::name(&name)))
                    .collect();
                for name in &changing {
                    plan.would(format!(
                        "ALTER SUBSCRIPTION {name} {verb} on green (database {db})"
                    ));
                }
                if !changing.is_empty() {
                    plan.would(format!(
                        "then wait up to {} s for their apply workers to {} (database {db})",
                        green::WORKER_WAIT_SECONDS,
                        if enable { "start" } else { "stop" }
                    ));
                }
                if !enable && (running || !guard::in_place(&client).await?) {
                    plan.would(format!(
                        "install the DDL guard on green (database {db}) once its subscriptions stopped: DDL on green in the rollback window is journaled"
                    ));
                }
                if !enable && (running || found.slot.is_none()) {
                    plan.would(format!(
                        "then create publication {way_back} (the tables green's subscriptions replicate) and slot {way_back} on green (database {db}): the way back after the switch"
                    ));
                }
            }
        }
        Mode::Drop => {
            let green = green::locate(cell, deps).await?;
            let old_blue =
                old_blue::locate(cell, deps, &green, input.old_blue_identifier.as_deref()).await?;
            for database in &cell.databases {
                let db = quote::name(database);
                let client = green::open(cell, deps, &green, database).await?;
                for (name, enabled) in green::to_drop(&client, &names).await? {
                    let disable = if enabled { "DISABLE, " } else { "" };
                    plan.would(format!(
                        "drop subscription {} on green {} (database {db}) without touching its publisher: {disable}SET (slot_name = NONE), DROP",
                        quote::name(&name),
                        green.identifier
                    ));
                }
                old_blue::plan(cell, deps, &old_blue, database, &names, &mut plan).await?;
            }
        }
        Mode::Reverse => {
            require_switched(cell, &admitted)?;
            let green = green::locate(cell, deps).await?;
            let old_blue =
                old_blue::locate(cell, deps, &green, input.old_blue_identifier.as_deref()).await?;
            replication_login(cell, deps).await?;
            let way_back = quote::name(&switchyard_cell::reverse_replication_name());
            for database in &cell.databases {
                let db = quote::name(database);
                let green_client = green::open(cell, deps, &green, database).await?;
                let blue_client = old_blue::require(cell, deps, &old_blue, database).await?;
                let found = reverse::on_green(&green_client).await?;
                if !found.publication || found.slot.is_none() {
                    plan.would(format!(
                        "stop: green has no publication and slot {way_back} (database {db}); the old blue cannot follow green"
                    ));
                    continue;
                }
                plan.would(format!(
                    "create or update the replication role {} on green (database {db})",
                    quote::name(&cell.replication.role)
                ));
                let change = match reverse::subscription(&blue_client).await? {
                    None => format!(
                        "CREATE SUBSCRIPTION {way_back} on the old blue {} (database {db}) on green's slot, copy_data = false, then wait for it to stream",
                        old_blue.identifier().unwrap_or_default()
                    ),
                    Some(enabled) => format!(
                        "rewrite subscription {way_back}'s connection on the old blue (database {db}){}",
                        if enabled { "" } else { ", then ENABLE it" }
                    ),
                };
                plan.would(change);
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
