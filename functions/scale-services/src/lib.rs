//! `scale-services`: the direct writers — ECS services that write to blue without
//! PgBouncer — scaled to zero before writes freeze, and back to what they were after.
//!
//! `down` journals every service's desired count ([`Recorded`]) before changing
//! anything, sets each to 0 and waits, within the cell's drain budget, until no task of
//! any service is left that has not stopped: a task told to stop keeps writing until its
//! process exits, so a service's `runningCount` alone is not enough. `up` sets exactly the
//! recorded counts back, then removes the record; with nothing recorded it changes
//! nothing. The counts live in the journal, not in the execution's payload, so `up`
//! invoked by hand with only the cell document restores them too. The record names the run
//! that made it: another run's record is never extended, overwritten or restored (an
//! earlier run's counts, never restored, stop `down` rather than be replaced by zeros).
//!
//! Dry run ([`plan`]): the same descriptions and journal read as the real call, then the
//! counts it would record and set, and whether it would still wait for tasks to stop.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ecs::types::Service;
use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, DirectWriter};
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Caller};
use switchyard_operation::{now_rfc3339, Deps, Entry, Error, Journal, OperationInput, Plan};
use tokio::time::Instant;

/// DescribeServices takes at most this many services per call.
const DESCRIBE_BATCH: usize = 10;

/// How often the services' tasks are polled while draining.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z", "direction": "down"}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock, or on another run's record: for an operator who has
    /// made sure no run is live.
    #[serde(default)]
    pub force: bool,
    /// Down before the pause (and its record kept), up after the resume or the abort.
    pub direction: Direction,
}

impl Input {
    fn caller(&self) -> Caller<'_> {
        Caller {
            run_id: &self.run_id,
            force: self.force,
        }
    }

    /// Down stops writers before the freeze; up brings them back either way.
    fn fence(&self) -> fence::Direction {
        match self.direction {
            Direction::Down => fence::Direction::Forward,
            Direction::Up => fence::Direction::Either,
        }
    }
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Record the desired counts, scale every direct writer to 0, wait until drained.
    Down,
    /// Restore the recorded counts and remove the record.
    Up,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Down => "down",
            Self::Up => "up",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub direction: Direction,
    /// The SSM parameter holding the recorded counts, for an operator who must inspect it.
    pub parameter: String,
    /// When the counts were recorded (RFC 3339, UTC). `None` when `up` found nothing
    /// recorded — no run scaled the services down, or one already restored them — and
    /// so changed nothing.
    pub recorded_at: Option<String>,
    /// Every service this invocation scaled or found already scaled.
    pub services: Vec<ServiceOutcome>,
    /// Services of the cell document that `up` left alone: no count was recorded for them.
    pub not_recorded: Vec<DirectWriter>,
}

/// One service's counts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceOutcome {
    pub ecs_cluster: String,
    pub service: String,
    /// Its desired count before the switchover, as recorded.
    pub recorded_count: i32,
    /// Its desired count now: 0 after `down`, the recorded count after `up`.
    pub desired_count: i32,
    /// False when it already had that desired count.
    pub updated: bool,
}

/// The journal entry: every direct writer's desired count before `down` set it to 0.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Recorded {
    /// The run that recorded them.
    pub run_id: String,
    /// RFC 3339, UTC.
    pub recorded_at: String,
    pub services: Vec<RecordedService>,
}

impl Entry for Recorded {
    const KEY: &'static str = "desired-counts";
    const WHAT: &'static str = "the direct writers' recorded desired counts";
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct RecordedService {
    pub ecs_cluster: String,
    pub service: String,
    pub desired_count: i32,
}

impl Recorded {
    fn count_of(&self, writer: &DirectWriter) -> Option<i32> {
        self.services
            .iter()
            .find(|r| r.ecs_cluster == writer.ecs_cluster && r.service == writer.service)
            .map(|r| r.desired_count)
    }
}

/// A service as DescribeServices shows it now.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Current {
    writer: DirectWriter,
    desired_count: i32,
    running_count: i32,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, direction = %input.direction))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), input.fence()).await?;
    match input.direction {
        Direction::Down => down(&input, deps).await,
        Direction::Up => up(&input, deps).await,
    }
}

/// What [`run`] would do now, from the same descriptions and journal: empty once `down`
/// has drained every service, or once `up` has restored the counts and removed the record.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, direction = %input.direction))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), input.fence()).await?;
    match input.direction {
        Direction::Down => plan_down(&input, deps).await,
        Direction::Up => plan_up(&input, deps).await,
    }
}

async fn plan_down(input: &Input, deps: &Deps) -> Result<Plan, Error> {
    let cell = &input.cell;
    let journal = deps.journal(cell);
    let parameter = journal.parameter_of::<Recorded>();
    let mut plan = Plan::new();
    let current = describe(deps, &cell.direct_writers).await?;
    let existing = this_runs(journal.get::<Recorded>().await?, input)?;
    let unrecorded = not_yet_recorded(existing.as_ref(), &current);
    if !unrecorded.is_empty() {
        let counts = unrecorded
            .iter()
            .map(|r| format!("{}/{} {}", r.ecs_cluster, r.service, r.desired_count))
            .collect::<Vec<_>>()
            .join(", ");
        plan.would(match existing {
            None => format!("record the desired counts in SSM parameter {parameter}: {counts}"),
            Some(_) => format!("add to the counts recorded in SSM parameter {parameter}: {counts}"),
        });
    }
    for (service, to) in changes(&current, |_| 0) {
        plan.would(format!(
            "set ECS service {} desired count {} → {to}",
            name(&service.writer),
            service.desired_count
        ));
    }
    let busy = busy(deps, &cell.direct_writers).await?;
    if !plan.is_empty() || !busy.is_empty() {
        let now = if busy.is_empty() {
            "none now".to_owned()
        } else {
            format!("now {}", busy.join("; "))
        };
        plan.would(format!(
            "then wait up to {}s (budgets.drain_seconds) until no task of {} is left unstopped ({now}); DrainTimeout after that",
            cell.budgets.drain_seconds,
            cell.direct_writers.iter().map(name).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(plan)
}

async fn plan_up(input: &Input, deps: &Deps) -> Result<Plan, Error> {
    let journal = deps.journal(&input.cell);
    let mut plan = Plan::new();
    let Some(recorded) = this_runs(journal.get::<Recorded>().await?, input)? else {
        return Ok(plan);
    };
    let current = describe(deps, &recorded_writers(&recorded)).await?;
    for (service, to) in changes(&current, |c| recorded_count(&recorded, c)) {
        plan.would(format!(
            "set ECS service {} desired count {} → {to}",
            name(&service.writer),
            service.desired_count
        ));
    }
    plan.would(format!(
        "delete SSM parameter {}: the counts recorded at {}",
        journal.parameter_of::<Recorded>(),
        recorded.recorded_at
    ));
    Ok(plan)
}

/// The services whose desired count is not `wanted` yet, with the count to set.
fn changes(current: &[Current], wanted: impl Fn(&Current) -> i32) -> Vec<(&Current, i32)> {
    current
        .iter()
        .map(|c| (c, wanted(c)))
        .filter(|(c, to)| c.desired_count != *to)
        .collect()
}

/// A described service's recorded count (its count now if the record lacks it).
fn recorded_count(recorded: &Recorded, current: &Current) -> i32 {
    recorded
        .count_of(&current.writer)
        .unwrap_or(current.desired_count)
}

/// The services the record holds, in its order.
fn recorded_writers(recorded: &Recorded) -> Vec<DirectWriter> {
    recorded
        .services
        .iter()
        .map(|r| DirectWriter {
            ecs_cluster: r.ecs_cluster.clone(),
            service: r.service.clone(),
        })
        .collect()
}

async fn down(input: &Input, deps: &Deps) -> Result<Output, Error> {
    let cell = &input.cell;
    let journal = deps.journal(cell);
    let parameter = journal.parameter_of::<Recorded>();
    // Every service is described before anything changes: a wrong name stops here.
    let current = describe(deps, &cell.direct_writers).await?;
    // Journaled before the first UpdateService: after a crash at 0 the counts survive.
    let recorded = record(&journal, input, &current).await?;

    let to_update = changes(&current, |_| 0);
    let mut services = Vec::with_capacity(current.len());
    for service in &current {
        // `record` holds every described service.
        let recorded_count = recorded_count(&recorded, service);
        let updated = to_update.iter().any(|(c, _)| c.writer == service.writer);
        if updated {
            set_desired_count(deps, &service.writer, 0).await?;
            tracing::info!(service = %name(&service.writer), recorded_count, "scaled to 0");
        }
        services.push(ServiceOutcome {
            ecs_cluster: service.writer.ecs_cluster.clone(),
            service: service.writer.service.clone(),
            recorded_count,
            desired_count: 0,
            updated,
        });
    }

    let budget = Duration::from_secs(cell.budgets.drain_seconds);
    wait_drained(deps, &cell.direct_writers, budget, &parameter).await?;
    Ok(Output {
        direction: Direction::Down,
        parameter,
        recorded_at: Some(recorded.recorded_at),
        services,
        not_recorded: Vec::new(),
    })
}

/// The journaled counts: an existing record is kept (a re-run must not record the 0s it
/// set), extended only by services it does not hold yet, at their current counts.
async fn record(
    journal: &Journal<'_>,
    input: &Input,
    current: &[Current],
) -> Result<Recorded, Error> {
    let parameter = journal.parameter_of::<Recorded>();
    let existing = this_runs(journal.get::<Recorded>().await?, input)?;
    let mut recorded = match existing {
        Some(recorded) => recorded,
        None => {
            let fresh = Recorded {
                run_id: input.run_id.clone(),
                recorded_at: now_rfc3339(),
                services: not_yet_recorded(None, current),
            };
            if journal.create(&fresh).await? {
                tracing::info!(%parameter, "desired counts recorded");
                return Ok(fresh);
            }
            // Another invocation recorded first: its counts are the ones to keep.
            this_runs(journal.get::<Recorded>().await?, input)?.ok_or_else(|| {
                Error::stop(
                    ErrorName::PreconditionFailed,
                    format!("journal entry {parameter} changed while being written: retry"),
                )
            })?
        }
    };
    let missing = not_yet_recorded(Some(&recorded), current);
    if !missing.is_empty() {
        recorded.services.extend(missing);
        journal.put(&recorded).await?;
        tracing::info!(%parameter, "services added to the recorded counts");
    }
    Ok(recorded)
}

/// The described services `existing` does not hold yet (all of them without a record), at
/// their current counts: what `down` adds to the journal.
fn not_yet_recorded(existing: Option<&Recorded>, current: &[Current]) -> Vec<RecordedService> {
    current
        .iter()
        .filter(|c| existing.is_none_or(|r| r.count_of(&c.writer).is_none()))
        .map(|c| RecordedService {
            ecs_cluster: c.writer.ecs_cluster.clone(),
            service: c.writer.service.clone(),
            desired_count: c.desired_count,
        })
        .collect()
}

async fn up(input: &Input, deps: &Deps) -> Result<Output, Error> {
    let cell = &input.cell;
    let journal = deps.journal(cell);
    let parameter = journal.parameter_of::<Recorded>();
    let Some(recorded) = this_runs(journal.get::<Recorded>().await?, input)? else {
        tracing::info!(%parameter, "no desired counts recorded; nothing to restore");
        return Ok(Output {
            direction: Direction::Up,
            parameter,
            recorded_at: None,
            services: Vec::new(),
            not_recorded: cell.direct_writers.clone(),
        });
    };
    // The record is the truth: a service it holds is restored even if the document no
    // longer names it. All are described first, so a vanished one changes nothing.
    let current = describe(deps, &recorded_writers(&recorded)).await?;

    let to_update = changes(&current, |c| recorded_count(&recorded, c));
    let mut services = Vec::with_capacity(current.len());
    for (service, wanted) in current.iter().zip(&recorded.services) {
        let updated = to_update.iter().any(|(c, _)| c.writer == service.writer);
        if updated {
            set_desired_count(deps, &service.writer, wanted.desired_count).await?;
            tracing::info!(service = %name(&service.writer), desired_count = wanted.desired_count, "restored");
        }
        services.push(ServiceOutcome {
            ecs_cluster: wanted.ecs_cluster.clone(),
            service: wanted.service.clone(),
            recorded_count: wanted.desired_count,
            desired_count: wanted.desired_count,
            updated,
        });
    }
    // Removed only once every count is back: a crash before this restores again on retry.
    journal.remove::<Recorded>().await?;
    let not_recorded = cell
        .direct_writers
        .iter()
        .filter(|w| recorded.count_of(w).is_none())
        .cloned()
        .collect();
    Ok(Output {
        direction: Direction::Up,
        parameter,
        recorded_at: Some(recorded.recorded_at),
        services,
        not_recorded,
    })
}

/// The record if this run made it; another run's (never restored) is `PreconditionFailed`
/// unless forced: its counts are the true ones, and this run must neither replace them with
/// the zeros it may find nor restore them behind that run's back.
fn this_runs(recorded: Option<Recorded>, input: &Input) -> Result<Option<Recorded>, Error> {
    match recorded {
        Some(r) if r.run_id != input.run_id && !input.force => Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "the direct writers' desired counts recorded by run {} at {} were never restored; nothing was changed. Restore them as that run (scale-services up, run_id {}), or pass force to act on them",
                r.run_id, r.recorded_at, r.run_id
            ),
        )),
        other => Ok(other),
    }
}

/// Waits until every service runs no task and has no task that has not stopped.
async fn wait_drained(
    deps: &Deps,
    writers: &[DirectWriter],
    budget: Duration,
    parameter: &str,
) -> Result<(), Error> {
    let deadline = Instant::now() + budget;
    loop {
        let busy = busy(deps, writers).await?;
        if busy.is_empty() {
            tracing::info!("direct writers drained");
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::stop(
                ErrorName::DrainTimeout,
                format!(
                    "direct writers still running after the drain budget of {}s (budgets.drain_seconds): {}; \
                     they stay at desired count 0 — the abort path (scale-services up) restores the counts \
                     recorded in {parameter}; find why their tasks do not stop before retrying",
                    budget.as_secs(),
                    busy.join("; ")
                ),
            ));
        }
        tracing::debug!(busy = %busy.join("; "), "waiting for the direct writers to drain");
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// The services of `writers` that still run a task or have one not stopped, described for
/// messages; empty once drained.
async fn busy(deps: &Deps, writers: &[DirectWriter]) -> Result<Vec<String>, Error> {
    let mut busy = Vec::new();
    for service in describe(deps, writers).await? {
        let live = switchyard_aws::live_tasks(
            &deps.aws.ecs,
            &service.writer.ecs_cluster,
            &service.writer.service,
        )
        .await?;
        if service.running_count != 0 || !live.is_empty() {
            let statuses: Vec<&str> = live.iter().map(|t| t.last_status.as_str()).collect();
            busy.push(format!(
                "{} (runningCount {}, tasks not stopped: {} [{}])",
                name(&service.writer),
                service.running_count,
                live.len(),
                statuses.join(", ")
            ));
        }
    }
    Ok(busy)
}

/// Each of `writers` as ECS shows it now, in the same order; every one must exist and be
/// active, else nothing is changed.
async fn describe(deps: &Deps, writers: &[DirectWriter]) -> Result<Vec<Current>, Error> {
    let mut by_cluster: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for writer in writers {
        by_cluster
            .entry(&writer.ecs_cluster)
            .or_default()
            .push(&writer.service);
    }
    let mut found: Vec<(String, Service)> = Vec::new();
    let mut problems = Vec::new();
    for (cluster, names) in by_cluster {
        for batch in names.chunks(DESCRIBE_BATCH) {
            let out = deps
                .aws
                .ecs
                .describe_services()
                .cluster(cluster)
                .set_services(Some(batch.iter().map(|s| (*s).to_owned()).collect()))
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_cluster_not_found_exception()) =>
                {
                    problems.push(format!("ECS cluster {cluster} does not exist"));
                    continue;
                }
                Err(e) => {
                    return Err(Error::aws(
                        &format!("describing ECS services {} in {cluster}", batch.join(", ")),
                        &e,
                    ))
                }
            };
            for failure in out.failures() {
                problems.push(format!(
                    "ECS service {} in {cluster}: {}",
                    failure.arn().unwrap_or("unknown"),
                    failure.reason().unwrap_or("not found")
                ));
            }
            found.extend(
                out.services()
                    .iter()
                    .map(|s| (cluster.to_owned(), s.clone())),
            );
        }
    }
    let mut current = Vec::with_capacity(writers.len());
    for writer in writers {
        let service = found.iter().find(|(cluster, s)| {
            *cluster == writer.ecs_cluster && s.service_name() == Some(writer.service.as_str())
        });
        match service {
            Some((_, s)) if s.status() == Some("ACTIVE") => current.push(Current {
                writer: writer.clone(),
                desired_count: s.desired_count(),
                running_count: s.running_count(),
            }),
            Some((_, s)) => problems.push(format!(
                "ECS service {} is {}, not ACTIVE",
                name(writer),
                s.status().unwrap_or("of unknown status")
            )),
            // Missing from both lists only if its cluster is; that problem is listed.
            None => {}
        }
    }
    if problems.is_empty() {
        Ok(current)
    } else {
        Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "direct writers not found as active ECS services: {}; nothing was changed — fix direct_writers \
                 in the cell document (or the journaled counts) and retry",
                problems.join("; ")
            ),
        ))
    }
}

async fn set_desired_count(deps: &Deps, writer: &DirectWriter, count: i32) -> Result<(), Error> {
    deps.aws
        .ecs
        .update_service()
        .cluster(&writer.ecs_cluster)
        .service(&writer.service)
        .desired_count(count)
        .send()
        .await
        .map_err(|e| {
            Error::aws(
                &format!(
                    "setting the desired count of ECS service {} to {count}",
                    name(writer)
                ),
                &e,
            )
        })?;
    Ok(())
}

/// `cluster/service`, how messages name a service.
fn name(writer: &DirectWriter) -> String {
    format!("{}/{}", writer.ecs_cluster, writer.service)
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

    #[test]
    fn directions_are_lowercase() {
        assert_eq!(
            serde_json::to_value(Direction::Down).expect("serializes"),
            "down"
        );
        assert_eq!(
            serde_json::from_value::<Direction>(serde_json::json!("up")).expect("parses"),
            Direction::Up
        );
    }
}
