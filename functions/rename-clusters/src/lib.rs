//! `rename-clusters`: the switch itself. Forward parks blue under `<id>-blue-<major>` and
//! gives green the cell's identifier, so the cell's endpoint name resolves to green; back
//! undoes it from wherever it stopped.
//!
//! Names cannot be swapped in one call, so each direction is two renames with a wait
//! after each. The plan (both clusters' `DbClusterResourceId`s, which survive renames, and
//! the three identifiers) is journaled ([`RenamePlan`]) before the first rename; every
//! invocation then works out where it stands by looking up which identifier each resource
//! holds now and does only what remains, so a retry after a crash at any point completes
//! the job and a run after completion changes nothing. Without a journal entry the plan is
//! inferred from the cell document and the clusters present (the blue-parked name).
//!
//! Forward is the pause window's: its waits stop at `pause_deadline` (`PauseBudgetExceeded`,
//! and the abort path renames back). It refuses a plan another run journaled. Back is the
//! abort path's: refused once the cell has switched (`AlreadySwitched`); it undoes renames
//! from any run's plan, since the way back is the same whoever renamed.
//!
//! A dry run ([`plan`]) works out where it stands the same way and lists the journal write,
//! the renames left (in order) and the waits after them; empty once the mode is complete.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::rename::{self, RenamePlan as Plan};
use switchyard_operation::{Deps, Error, PauseDeadline, Side};
use switchyard_postgres::quote;

/// The longest pause between two looks at a rename's progress.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait one invocation may take: Lambda's own limit is 900 s.
const MAX_WAIT_SECONDS: u64 = 840;

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z", "mode": "forward", "wait_seconds": 600}
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
    /// Which way the names move: toward green (the switch) or back to blue (the abort).
    pub mode: Mode,
    /// How long this invocation may wait for renames and the endpoint to settle before
    /// failing `ClusterNotAvailable` (retry resumes); at most 840.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: u64,
}

fn default_wait_seconds() -> u64 {
    600
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Blue → parked name, green → the cell's identifier.
    Forward,
    /// Green → its own identifier, blue → the cell's identifier.
    Back,
}

impl Mode {
    fn direction(self) -> Direction {
        match self {
            Self::Forward => Direction::Forward,
            Self::Back => Direction::Abort,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Forward => "forward",
            Self::Back => "back",
        })
    }
}

/// One rename this invocation issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Blue: the cell's identifier → its parked name.
    ParkBlue,
    /// Green: its own identifier → the cell's identifier.
    PromoteGreen,
    /// Green: the cell's identifier → its own identifier.
    DemoteGreen,
    /// Blue: its parked name → the cell's identifier.
    RestoreBlue,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub mode: Mode,
    /// Renames issued by this invocation (empty when there was nothing left to do).
    pub steps_done: Vec<Step>,
    /// The resource holding the cell's identifier now: green's after forward, blue's after back.
    pub cell_identifier_resource_id: String,
    pub blue_identifier_now: String,
    pub green_identifier_now: String,
}

/// One DB cluster as `DescribeDBClusters` shows it now.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cluster {
    identifier: String,
    resource_id: String,
    status: String,
    engine_version: String,
}

/// Where an invocation stands: the plan (recorded or inferred), both clusters now, and
/// the renames left for the mode, every precondition checked.
struct Position {
    recorded: Option<Plan>,
    plan: Plan,
    clusters: Vec<Cluster>,
    todo: Vec<Rename>,
}

/// One rename left to do.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rename {
    step: Step,
    from: String,
    to: String,
}

async fn position(input: &Input, deps: &Deps) -> Result<Position, Error> {
    if input.wait_seconds > MAX_WAIT_SECONDS {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!(
                "wait_seconds {} is above {MAX_WAIT_SECONDS}; a Lambda cannot wait that long: retry instead",
                input.wait_seconds
            ),
        ));
    }
    let cell = &input.cell;
    let journal = deps.journal(cell);
    let recorded: Option<Plan> = journal.get::<Plan>().await?;
    let clusters = describe_all(&deps.aws.rds).await?;
    let mut plan = match recorded.clone() {
        Some(plan) => check_recorded(input, plan, &journal.parameter_of::<Plan>())?,
        None => infer_plan(cell, &clusters, &now())?,
    };
    if recorded.is_none() {
        plan.run_id = Some(input.run_id.clone());
    }
    let (blue, green) = locate(&plan, &clusters)?;
    check_positions(&plan, &blue, &green)?;
    let todo = remaining(input.mode, &plan, &clusters, &blue, &green)?;
    if input.mode == Mode::Forward && green.identifier != plan.cell_identifier {
        // After the rename blue's endpoint name points at green: a subscription
        // following that name would subscribe green to itself.
        refuse_enabled_subscriptions(cell, deps).await?;
    }
    Ok(Position {
        recorded,
        plan,
        clusters,
        todo,
    })
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier, mode = %input.mode))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), input.mode.direction()).await?;
    let wait = Duration::from_secs(input.wait_seconds);
    let deadline = Deadline {
        at: Instant::now() + switchyard_operation::bounded(input.pause_deadline, wait),
        pause: input.pause_deadline,
    };
    let cell = &input.cell;
    let rds = &deps.aws.rds;
    let journal = deps.journal(cell);
    let Position {
        recorded,
        plan,
        clusters: _,
        todo,
    } = position(&input, deps).await?;

    let steps_done = match input.mode {
        Mode::Forward => {
            if recorded.is_none() {
                journal.put(&plan).await?;
            }
            forward(deps, cell, &plan, &todo, deadline).await?
        }
        Mode::Back => {
            let steps = back(deps, cell, &plan, &todo, deadline).await?;
            // The cell is as it began: a stale plan must not steer a later run.
            journal.remove::<Plan>().await?;
            steps
        }
    };

    let clusters = describe_all(rds).await?;
    let (blue, green) = locate(&plan, &clusters)?;
    let holder = holder(&clusters, &plan.cell_identifier)
        .map(|c| c.resource_id.clone())
        .unwrap_or_default();
    tracing::info!(steps = ?steps_done, blue = %blue.identifier, green = %green.identifier, "renames settled");
    Ok(Output {
        mode: input.mode,
        steps_done,
        cell_identifier_resource_id: holder,
        blue_identifier_now: blue.identifier,
        green_identifier_now: green.identifier,
    })
}

/// Dry run: the journal change and the renames [`run`] would make now, in order.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier, mode = %input.mode))]
pub async fn plan(input: Input, deps: &Deps) -> Result<switchyard_operation::Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), input.mode.direction()).await?;
    let parameter = deps.journal(&input.cell).parameter_of::<Plan>();
    let Position {
        recorded,
        plan,
        clusters,
        todo,
    } = position(&input, deps).await?;
    let mut dry = switchyard_operation::Plan::new();
    if input.mode == Mode::Forward && recorded.is_none() {
        dry.would(format!(
            "journal the rename plan under {parameter}: blue is resource {}, green resource {}, blue parks as {}",
            plan.blue_resource_id, plan.green_resource_id, plan.parked_identifier
        ));
    }
    for rename in &todo {
        let (side, resource) = match rename.step {
            Step::ParkBlue | Step::RestoreBlue => ("blue", &plan.blue_resource_id),
            Step::PromoteGreen | Step::DemoteGreen => ("green", &plan.green_resource_id),
        };
        let status = clusters
            .iter()
            .find(|c| &c.resource_id == resource)
            .map_or("unknown", |c| c.status.as_str());
        dry.would(format!(
            "rename cluster {} → {} ({side}, resource {resource}, {status} now)",
            rename.from, rename.to
        ));
    }
    if !todo.is_empty() {
        let resource = match input.mode {
            Mode::Forward => &plan.green_resource_id,
            Mode::Back => &plan.blue_resource_id,
        };
        dry.would(format!(
            "then wait up to {} s for each cluster to be available under its new name and for endpoint {}, dialled, to reach resource {resource}'s server",
            input.wait_seconds, plan.cell_identifier
        ));
    }
    if input.mode == Mode::Back && recorded.is_some() {
        dry.would(format!(
            "delete the rename plan journaled under {parameter}"
        ));
    }
    Ok(dry)
}

/// The renames `mode` still needs, in order; a name to rename onto must be free (or held
/// by the cluster itself already).
fn remaining(
    mode: Mode,
    plan: &Plan,
    clusters: &[Cluster],
    blue: &Cluster,
    green: &Cluster,
) -> Result<Vec<Rename>, Error> {
    let mut todo = Vec::new();
    match mode {
        Mode::Forward => {
            if blue.identifier == plan.cell_identifier {
                refuse_taken(clusters, &plan.parked_identifier, &plan.blue_resource_id)?;
                todo.push(Rename {
                    step: Step::ParkBlue,
                    from: plan.cell_identifier.clone(),
                    to: plan.parked_identifier.clone(),
                });
            }
            if green.identifier == plan.green_identifier {
                todo.push(Rename {
                    step: Step::PromoteGreen,
                    from: plan.green_identifier.clone(),
                    to: plan.cell_identifier.clone(),
                });
            }
        }
        Mode::Back => {
            if green.identifier == plan.cell_identifier {
                refuse_taken(clusters, &plan.green_identifier, &plan.green_resource_id)?;
                todo.push(Rename {
                    step: Step::DemoteGreen,
                    from: plan.cell_identifier.clone(),
                    to: plan.green_identifier.clone(),
                });
            }
            if blue.identifier != plan.cell_identifier {
                todo.push(Rename {
                    step: Step::RestoreBlue,
                    from: blue.identifier.clone(),
                    to: plan.cell_identifier.clone(),
                });
            }
        }
    }
    Ok(todo)
}

/// Issues `todo`'s rename for `step`, if it has one.
async fn rename_if(
    rds: &aws_sdk_rds::Client,
    todo: &[Rename],
    step: Step,
    steps: &mut Vec<Step>,
) -> Result<(), Error> {
    if let Some(r) = todo.iter().find(|r| r.step == step) {
        rename(rds, &r.from, &r.to).await?;
        steps.push(step);
    }
    Ok(())
}

async fn forward(
    deps: &Deps,
    cell: &CellDocument,
    plan: &Plan,
    todo: &[Rename],
    deadline: Deadline,
) -> Result<Vec<Step>, Error> {
    let rds = &deps.aws.rds;
    let mut steps = Vec::new();
    rename_if(rds, todo, Step::ParkBlue, &mut steps).await?;
    // Green may take the name only once blue has let go of it.
    wait_held(
        rds,
        &plan.parked_identifier,
        &plan.blue_resource_id,
        deadline,
        "blue",
    )
    .await?;
    rename_if(rds, todo, Step::PromoteGreen, &mut steps).await?;
    wait_held(
        rds,
        &plan.cell_identifier,
        &plan.green_resource_id,
        deadline,
        "green",
    )
    .await?;
    wait_resolves(
        deps,
        cell,
        &plan.cell_identifier,
        &plan.green_resource_id,
        deadline,
        "green",
    )
    .await?;
    Ok(steps)
}

async fn back(
    deps: &Deps,
    cell: &CellDocument,
    plan: &Plan,
    todo: &[Rename],
    deadline: Deadline,
) -> Result<Vec<Step>, Error> {
    let rds = &deps.aws.rds;
    let mut steps = Vec::new();
    rename_if(rds, todo, Step::DemoteGreen, &mut steps).await?;
    // Blue may take its name back only once green has let go of it.
    wait_held(
        rds,
        &plan.green_identifier,
        &plan.green_resource_id,
        deadline,
        "green",
    )
    .await?;
    rename_if(rds, todo, Step::RestoreBlue, &mut steps).await?;
    wait_held(
        rds,
        &plan.cell_identifier,
        &plan.blue_resource_id,
        deadline,
        "blue",
    )
    .await?;
    wait_resolves(
        deps,
        cell,
        &plan.cell_identifier,
        &plan.blue_resource_id,
        deadline,
        "blue",
    )
    .await?;
    Ok(steps)
}

/// A recorded plan is trusted only for this cell's names and this upgrade's target — and,
/// going forward, only if this run journaled it.
fn check_recorded(input: &Input, plan: Plan, parameter: &str) -> Result<Plan, Error> {
    let cell = &input.cell;
    if input.mode == Mode::Forward
        && !input.force
        && plan.run_id.as_deref() != Some(input.run_id.as_str())
    {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "journal entry {parameter} was written by run {}, not this run {}: that run's renames were never undone. Rename back as that run (rename-clusters back), then retry",
                plan.run_id.as_deref().unwrap_or("unknown"),
                input.run_id
            ),
        ));
    }
    if plan.cell_identifier != cell.blue.cluster_identifier
        || plan.green_identifier != cell.green.cluster_identifier
        || plan.target_major_version != cell.target_major_version
    {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "journal entry {parameter} plans {} / {} to PostgreSQL {}, not this cell document's {} / {} to {}; if it is left from an earlier upgrade, delete it and retry",
                plan.cell_identifier,
                plan.green_identifier,
                plan.target_major_version,
                cell.blue.cluster_identifier,
                cell.green.cluster_identifier,
                cell.target_major_version
            ),
        ));
    }
    Ok(plan)
}

/// The plan from the clusters present, when nothing was journaled: blue is whoever holds
/// the cell's identifier unless green does (forward completed) or nobody does (between
/// the renames); then blue is the one cluster under a parked name.
fn infer_plan(cell: &CellDocument, clusters: &[Cluster], now: &str) -> Result<Plan, Error> {
    let cell_id = &cell.blue.cluster_identifier;
    let green_id = &cell.green.cluster_identifier;
    let ambiguous = |why: String| {
        Error::stop(
            ErrorName::PreconditionFailed,
            format!("cannot tell which cluster is blue and which is green ({why}) and no rename plan is journaled; rename by hand, or journal the plan under {}", <Plan as switchyard_operation::Entry>::KEY),
        )
    };
    let parked = || -> Result<&Cluster, Error> {
        let candidates: Vec<&Cluster> = clusters
            .iter()
            .filter(|c| {
                // A switch-back's green is itself named `<id>-blue-<major>`: not parked.
                c.identifier != *green_id
                    && major(&c.engine_version)
                        .is_some_and(|m| c.identifier == rename::parked_identifier(cell, m))
            })
            .collect();
        match candidates[..] {
            [one] => Ok(one),
            [] => Err(ambiguous(format!(
                "no cluster is named {cell_id}-blue-<major>"
            ))),
            _ => Err(ambiguous(format!(
                "several clusters are named {cell_id}-blue-<major>: {}",
                candidates
                    .iter()
                    .map(|c| c.identifier.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    };
    let (blue, green) = match (holder(clusters, cell_id), holder(clusters, green_id)) {
        (Some(blue), Some(green)) => (blue, green),
        (None, Some(green)) => (parked()?, green),
        (Some(green), None) if major(&green.engine_version) == Some(cell.target_major_version) => {
            (parked()?, green)
        }
        (Some(holder), None) => {
            return Err(ambiguous(format!(
                "{green_id} does not exist and {cell_id} runs {}, not the target {}",
                holder.engine_version, cell.target_major_version
            )))
        }
        (None, None) => {
            return Err(ambiguous(format!(
                "neither {cell_id} nor {green_id} exists"
            )))
        }
    };
    let blue_major = major(&blue.engine_version).ok_or_else(|| {
        ambiguous(format!(
            "{} has engine version {:?}",
            blue.identifier, blue.engine_version
        ))
    })?;
    Ok(Plan {
        run_id: None,
        cell_identifier: cell_id.clone(),
        green_identifier: green_id.clone(),
        parked_identifier: rename::parked_identifier(cell, blue_major),
        blue_resource_id: blue.resource_id.clone(),
        green_resource_id: green.resource_id.clone(),
        target_major_version: cell.target_major_version,
        recorded_at: now.to_owned(),
    })
}

/// Both planned clusters as they are now.
fn locate(plan: &Plan, clusters: &[Cluster]) -> Result<(Cluster, Cluster), Error> {
    let find = |side: &str, resource_id: &str| {
        clusters
            .iter()
            .find(|c| c.resource_id == resource_id)
            .cloned()
            .ok_or_else(|| {
                Error::stop(
                    ErrorName::PreconditionFailed,
                    format!("{side} cluster (resource {resource_id}) of the rename plan no longer exists; inspect the clusters, then fix or delete the journal entry {}", <Plan as switchyard_operation::Entry>::KEY),
                )
            })
    };
    Ok((
        find("blue", &plan.blue_resource_id)?,
        find("green", &plan.green_resource_id)?,
    ))
}

/// Only names this operation gives: anything else means someone renamed by hand.
fn check_positions(plan: &Plan, blue: &Cluster, green: &Cluster) -> Result<(), Error> {
    let odd = |side: &str, cluster: &Cluster, expected: [&str; 2]| {
        Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "{side} cluster (resource {}) is named {}, neither {} nor {}; rename it by hand to one of those, then retry",
                cluster.resource_id, cluster.identifier, expected[0], expected[1]
            ),
        )
    };
    if ![&plan.cell_identifier, &plan.parked_identifier].contains(&&blue.identifier) {
        return Err(odd(
            "blue",
            blue,
            [&plan.cell_identifier, &plan.parked_identifier],
        ));
    }
    if ![&plan.cell_identifier, &plan.green_identifier].contains(&&green.identifier) {
        return Err(odd(
            "green",
            green,
            [&plan.green_identifier, &plan.cell_identifier],
        ));
    }
    Ok(())
}

/// `name` must be free (or already held by `resource_id`) before renaming onto it.
fn refuse_taken(clusters: &[Cluster], name: &str, resource_id: &str) -> Result<(), Error> {
    match holder(clusters, name) {
        Some(other) if other.resource_id != resource_id => Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "identifier {name} is held by another cluster (resource {}); rename or delete it, then retry",
                other.resource_id
            ),
        )),
        _ => Ok(()),
    }
}

async fn refuse_enabled_subscriptions(cell: &CellDocument, deps: &Deps) -> Result<(), Error> {
    let mut enabled = Vec::new();
    for db in &cell.databases {
        let client = deps.connect(cell, Side::Green, db).await?;
        let rows = client
            .query(
                "SELECT subname::text FROM pg_subscription WHERE subenabled \
                 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 ORDER BY subname",
                &[],
            )
            .await
            .map_err(|e| Error::query("listing green's enabled subscriptions", e))?;
        enabled.extend(rows.iter().map(|r| quote::qualified_name(db, r.get(0))));
    }
    if enabled.is_empty() {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "green still has enabled subscriptions ({}); run finalize-replication (disable) first: after the rename blue's endpoint name points at green, and these would subscribe green to itself. Nothing was renamed",
            enabled.join(", ")
        ),
    ))
}

async fn rename(rds: &aws_sdk_rds::Client, from: &str, to: &str) -> Result<(), Error> {
    tracing::info!(from, to, "renaming cluster");
    let result = rds
        .modify_db_cluster()
        .db_cluster_identifier(from)
        .new_db_cluster_identifier(to)
        .apply_immediately(true)
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_invalid_db_cluster_state_fault()) => {
            Err(Error::stop(
                ErrorName::ClusterNotAvailable,
                format!("cluster {from} cannot be renamed to {to} in its current state; retry when it is available"),
            ))
        }
        Err(e) if e.as_service_error().is_some_and(|s| s.is_db_cluster_already_exists_fault()) => {
            Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!("cannot rename {from} to {to}: another cluster holds {to}; rename or delete it, then retry"),
            ))
        }
        Err(e) => Err(Error::aws(&format!("renaming cluster {from} to {to}"), &e)),
    }
}

/// Waits until `identifier` is held by `resource_id` and available.
async fn wait_held(
    rds: &aws_sdk_rds::Client,
    identifier: &str,
    resource_id: &str,
    deadline: Deadline,
    side: &str,
) -> Result<(), Error> {
    let what = format!("{side} (resource {resource_id}) to be available as {identifier}");
    poll(deadline, &what, || async {
        match describe_one(rds, identifier).await? {
            Some(c) if c.resource_id == resource_id => Ok(c.status == "available"),
            Some(c) => Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!("identifier {identifier} is held by another cluster (resource {}), not {side}; inspect the clusters before retrying", c.resource_id),
            )),
            None => Ok(false),
        }
    })
    .await
}

/// Waits until the cell's endpoint name, dialled for real, leads to `resource_id`'s
/// server — not until the API says so: DNS follows a rename minutes later, and meanwhile
/// the name leads to the old cluster or nowhere.
async fn wait_resolves(
    deps: &Deps,
    cell: &CellDocument,
    identifier: &str,
    resource_id: &str,
    deadline: Deadline,
    side: &str,
) -> Result<(), Error> {
    let what = format!("endpoint {identifier}, dialled, to reach {side} (resource {resource_id})");
    let dbname = cell.databases.first().map_or("postgres", String::as_str);
    poll(deadline, &what, || async {
        match deps.connect_identifier(cell, identifier, dbname).await {
            // Reached the server the API names, and the API names `resource_id`.
            Ok((_, reached)) => Ok(reached.resource_id == resource_id),
            Err(e)
                if matches!(
                    e.error_name(),
                    ErrorName::WrongServer
                        | ErrorName::ClusterNotAvailable
                        | ErrorName::DatabaseUnavailable
                ) =>
            {
                tracing::debug!(error = %e, "the name has not followed the rename yet");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    })
    .await
}

/// Where an invocation's waits end: its own `wait_seconds`, cut to the pause budget.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    /// Reaching this one is `PauseBudgetExceeded`, not a retryable `ClusterNotAvailable`.
    pause: Option<PauseDeadline>,
}

/// Polls `done` with a growing interval until it holds or `deadline` passes. The interval
/// stays at or below a second: these waits are inside the pause window, where every second
/// overslept after the name followed is a second clients wait.
async fn poll<F, Fut>(deadline: Deadline, what: &str, mut done: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Error>>,
{
    let mut interval = Duration::from_millis(200);
    loop {
        if done().await? {
            return Ok(());
        }
        let left = deadline.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if let Some(pause) = deadline.pause.filter(|d| d.passed()) {
                return Err(pause.exceeded(&format!("waiting for {what}")));
            }
            return Err(Error::stop(
                ErrorName::ClusterNotAvailable,
                format!("still waiting for {what} when the wait ran out; retry rename-clusters with the same mode to resume"),
            ));
        }
        tokio::time::sleep(interval.min(left)).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
}

async fn describe_all(rds: &aws_sdk_rds::Client) -> Result<Vec<Cluster>, Error> {
    let mut clusters = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = rds
            .describe_db_clusters()
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| Error::aws("describing DB clusters", &e))?;
        clusters.extend(out.db_clusters().iter().filter_map(cluster));
        match out.marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
            _ => return Ok(clusters),
        }
    }
}

async fn describe_one(
    rds: &aws_sdk_rds::Client,
    identifier: &str,
) -> Result<Option<Cluster>, Error> {
    match rds
        .describe_db_clusters()
        .db_cluster_identifier(identifier)
        .send()
        .await
    {
        Ok(out) => Ok(out.db_clusters().first().and_then(cluster)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_db_cluster_not_found_fault()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(
            &format!("describing DB cluster {identifier}"),
            &e,
        )),
    }
}

fn cluster(c: &aws_sdk_rds::types::DbCluster) -> Option<Cluster> {
    Some(Cluster {
        identifier: c.db_cluster_identifier()?.to_owned(),
        resource_id: c.db_cluster_resource_id()?.to_owned(),
        status: c.status().unwrap_or_default().to_owned(),
        engine_version: c.engine_version().unwrap_or_default().to_owned(),
    })
}

fn holder<'a>(clusters: &'a [Cluster], identifier: &str) -> Option<&'a Cluster> {
    clusters.iter().find(|c| c.identifier == identifier)
}

/// The major of an Aurora engine version: "14.23" → 14.
fn major(engine_version: &str) -> Option<u32> {
    engine_version.split('.').next()?.parse().ok()
}

fn now() -> String {
    switchyard_operation::now_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> CellDocument {
        let input: Input =
            serde_json::from_str(include_str!("../payloads/input.json")).expect("input");
        input.cell
    }

    fn c(identifier: &str, resource_id: &str, engine_version: &str) -> Cluster {
        Cluster {
            identifier: identifier.to_owned(),
            resource_id: resource_id.to_owned(),
            status: "available".to_owned(),
            engine_version: engine_version.to_owned(),
        }
    }

    fn ids(plan: &Plan) -> (&str, &str, &str) {
        (
            &plan.blue_resource_id,
            &plan.green_resource_id,
            &plan.parked_identifier,
        )
    }

    #[test]
    fn majors_parse() {
        assert_eq!(major("14.23"), Some(14));
        assert_eq!(major("17"), Some(17));
        assert_eq!(major(""), None);
    }

    #[test]
    fn plan_is_inferred_from_every_forward_position() {
        let cell = document();
        let start = [c("local-a", "B", "14.23"), c("local-a-green", "G", "17.5")];
        let between = [
            c("local-a-blue-14", "B", "14.23"),
            c("local-a-green", "G", "17.5"),
        ];
        let done = [
            c("local-a-blue-14", "B", "14.23"),
            c("local-a", "G", "17.5"),
        ];
        for clusters in [&start[..], &between[..], &done[..]] {
            let plan = infer_plan(&cell, clusters, "t").expect("plan");
            assert_eq!(ids(&plan), ("B", "G", "local-a-blue-14"), "{clusters:?}");
        }
    }

    #[test]
    fn an_older_parked_cluster_does_not_confuse_the_start() {
        let cell = document();
        let clusters = [
            c("local-a-blue-13", "OLD", "13.9"),
            c("local-a", "B", "14.23"),
            c("local-a-green", "G", "17.5"),
        ];
        let plan = infer_plan(&cell, &clusters, "t").expect("plan");
        assert_eq!(ids(&plan), ("B", "G", "local-a-blue-14"));
    }

    #[test]
    fn ambiguous_positions_fail() {
        let cell = document();
        let two_parked = [
            c("local-a-blue-13", "OLD", "13.9"),
            c("local-a-blue-14", "B", "14.23"),
            c("local-a-green", "G", "17.5"),
        ];
        // Green not created yet, an old parked cluster present: the holder is not green.
        let no_green = [
            c("local-a-blue-13", "OLD", "13.9"),
            c("local-a", "B", "14.23"),
        ];
        for clusters in [&two_parked[..], &no_green[..], &[][..]] {
            let err = infer_plan(&cell, clusters, "t").expect_err("ambiguous");
            assert_eq!(
                err.error_name(),
                ErrorName::PreconditionFailed,
                "{clusters:?}"
            );
        }
    }

    #[test]
    fn hand_renamed_clusters_are_refused() {
        let cell = document();
        let plan = infer_plan(
            &cell,
            &[c("local-a", "B", "14.23"), c("local-a-green", "G", "17.5")],
            "t",
        )
        .expect("plan");
        let ok = check_positions(
            &plan,
            &c("local-a-blue-14", "B", "14.23"),
            &c("local-a", "G", "17.5"),
        );
        assert!(ok.is_ok());
        let err = check_positions(
            &plan,
            &c("elsewhere", "B", "14.23"),
            &c("local-a-green", "G", "17.5"),
        )
        .expect_err("odd name");
        assert!(err.to_string().contains("elsewhere"), "{err}");
    }

    #[test]
    fn renames_left_follow_the_positions() {
        let cell = document();
        let start = [c("local-a", "B", "14.23"), c("local-a-green", "G", "17.5")];
        let plan = infer_plan(&cell, &start, "t").expect("plan");
        let left = |mode, blue: &str, green: &str, clusters: &[Cluster]| {
            remaining(
                mode,
                &plan,
                clusters,
                &c(blue, "B", "14.23"),
                &c(green, "G", "17.5"),
            )
            .expect("remaining")
            .into_iter()
            .map(|r| (r.step, r.from, r.to))
            .collect::<Vec<_>>()
        };
        let s = |v: &str| v.to_owned();
        assert_eq!(
            left(Mode::Forward, "local-a", "local-a-green", &start),
            [
                (Step::ParkBlue, s("local-a"), s("local-a-blue-14")),
                (Step::PromoteGreen, s("local-a-green"), s("local-a"))
            ]
        );
        assert_eq!(left(Mode::Forward, "local-a-blue-14", "local-a", &[]), []);
        assert_eq!(
            left(Mode::Back, "local-a-blue-14", "local-a-green", &[]),
            [(Step::RestoreBlue, s("local-a-blue-14"), s("local-a"))]
        );
        let taken = [c("local-a-blue-14", "OTHER", "14.1")];
        let err = remaining(
            Mode::Forward,
            &plan,
            &taken,
            &c("local-a", "B", "14.23"),
            &c("local-a-green", "G", "17.5"),
        )
        .expect_err("parked name taken");
        assert_eq!(err.error_name(), ErrorName::PreconditionFailed);
    }

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
