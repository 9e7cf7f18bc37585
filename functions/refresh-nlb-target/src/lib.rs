//! `refresh-nlb-target`: point every downstream's NLB target group at the cell's current
//! writer, so the downstream subscriptions recreated next reach green, not the old blue.
//!
//! The writer is the writer instance of whoever holds the cell's identifier in the RDS API
//! (blue's, which green takes over in `rename-clusters`), reached by the instance's own
//! endpoint — never by resolving the cell's name, whose DNS follows a rename only after a
//! delay and may still lead to the old blue. Its address is registered, every other target
//! deregistered, and the operation waits until the new target is healthy. A group already holding exactly the
//! writer is left alone, so a retry (or the abort path pointing back at blue) is safe.
//! `direction` says which path calls it: forward waits stop at the pause deadline; the
//! abort direction is refused once the cell has switched.
//!
//! A dry run ([`plan`]) reads the same endpoint and target health and lists the targets it
//! would register and deregister in each group; empty when every group holds the writer.

use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthDescription};
use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Way};
use switchyard_operation::{Deps, Error, PauseDeadline, Plan, Side};
use tokio::time::Instant;

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z", "direction": "forward", "wait_seconds": 300}
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
    /// The forward path (toward green) or the abort path (back to blue).
    pub direction: Way,
    /// How long to wait for the new target to turn healthy before `TargetNotHealthy`.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: u64,
}

fn default_wait_seconds() -> u64 {
    300
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// One entry per downstream, in the cell document's order.
    pub target_groups: Vec<TargetGroupOutcome>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct TargetGroupOutcome {
    pub arn: String,
    /// The writer's `ip:port`, now the group's only target.
    pub target: String,
    /// False when the writer was already registered.
    pub registered: bool,
    /// The `ip:port` of every target this run deregistered.
    pub deregistered: Vec<String>,
}

/// Where the health wait ends: `wait_seconds`, cut to the pause budget.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    /// Reaching this one is `PauseBudgetExceeded`, not a retryable `TargetNotHealthy`.
    pause: Option<PauseDeadline>,
}

/// How often target health is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A target that is leaving the group: deregistering it again would change nothing.
const DRAINING: &str = "draining";

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(
        deps,
        &input.cell,
        input.caller(),
        input.direction.direction(),
    )
    .await?;
    let wait = Duration::from_secs(input.wait_seconds);
    let deadline = Deadline {
        at: Instant::now() + switchyard_operation::bounded(input.pause_deadline, wait),
        pause: input.pause_deadline,
    };
    let writer = current_writer(&input.cell, deps).await?;
    let mut target_groups = Vec::with_capacity(input.cell.downstream.len());
    for downstream in &input.cell.downstream {
        let arn = target_group_arn(deps, &downstream.nlb_target_group).await?;
        let outcome = refresh(deps, &arn, &writer, deadline).await?;
        target_groups.push(outcome);
    }
    Ok(Output { target_groups })
}

/// Dry run: the registrations and deregistrations [`run`] would make now, per group.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(
        deps,
        &input.cell,
        input.caller(),
        input.direction.direction(),
    )
    .await?;
    let writer = current_writer(&input.cell, deps).await?;
    let mut plan = Plan::new();
    for downstream in &input.cell.downstream {
        let arn = target_group_arn(deps, &downstream.nlb_target_group).await?;
        let changes = changes(&targets(deps, &arn).await?, &writer);
        if changes.register {
            plan.would(format!("register {writer} in target group {arn}"));
        }
        if !changes.deregister.is_empty() {
            let old: Vec<String> = changes.deregister.iter().map(Target::to_string).collect();
            plan.would(format!(
                "deregister {} from target group {arn}",
                old.join(", ")
            ));
        }
        if changes.register {
            plan.would(format!(
                "then wait up to {} s for {writer} to turn healthy in {arn}",
                input.wait_seconds
            ));
        }
    }
    Ok(plan)
}

/// The address of the writer instance of whoever holds the cell's identifier now, from
/// the RDS API (see the module doc: not from the cell's name).
async fn current_writer(cell: &CellDocument, deps: &Deps) -> Result<Target, Error> {
    let endpoint = deps
        .endpoints
        .writer(&deps.aws.rds, Side::Blue.identifier(cell))
        .await?;
    let ip = writer_ip(&endpoint.host, endpoint.port).await?;
    let writer = Target {
        id: ip.to_string(),
        port: i32::from(endpoint.port),
    };
    tracing::info!(writer = %writer, instance = %endpoint.instance, "writer address resolved");
    Ok(writer)
}

/// An IP target of a target group.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    id: String,
    port: i32,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.id, self.port)
    }
}

impl Target {
    fn description(&self) -> TargetDescription {
        TargetDescription::builder()
            .id(&self.id)
            .port(self.port)
            .build()
    }
}

/// A registered target and its health state (`healthy`, `initial`, `draining`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Registered {
    target: Target,
    state: String,
}

/// What to change so that `writer` is the group's only live target.
#[derive(Debug, PartialEq, Eq)]
struct Changes {
    register: bool,
    deregister: Vec<Target>,
}

fn changes(registered: &[Registered], writer: &Target) -> Changes {
    let live = || registered.iter().filter(|r| r.state != DRAINING);
    Changes {
        // A draining writer (deregistered by an earlier run) must be registered again.
        register: !live().any(|r| r.target == *writer),
        deregister: live()
            .filter(|r| r.target != *writer)
            .map(|r| r.target.clone())
            .collect(),
    }
}

/// The writer instance endpoint's IPv4 address: a DNS name on AWS (an instance's, which no
/// cluster rename moves), already an IP locally. NLB IP targets must be addresses.
async fn writer_ip(host: &str, port: u16) -> Result<IpAddr, Error> {
    let not_yet = |why: String| {
        Error::stop(
            ErrorName::ClusterNotAvailable,
            format!("writer endpoint {host} {why}; retry once its DNS name resolves"),
        )
    };
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| not_yet(format!("does not resolve ({e})")))?;
    addrs
        .map(|a| a.ip())
        .find(IpAddr::is_ipv4)
        .ok_or_else(|| not_yet("has no IPv4 address".to_owned()))
}

/// The ARN of a target group named in the cell document by ARN or by name.
async fn target_group_arn(deps: &Deps, name_or_arn: &str) -> Result<String, Error> {
    if name_or_arn.starts_with("arn:") {
        return Ok(name_or_arn.to_owned());
    }
    let missing = || {
        Error::stop(
            ErrorName::InvalidInput,
            format!("downstream nlb_target_group {name_or_arn:?} names no target group in this account and region; fix the cell document"),
        )
    };
    let out = deps
        .aws
        .elbv2
        .describe_target_groups()
        .names(name_or_arn)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_target_group_not_found_exception())
            {
                missing()
            } else {
                Error::aws(&format!("describing target group {name_or_arn}"), &e)
            }
        })?;
    out.target_groups()
        .iter()
        .find_map(|t| t.target_group_arn())
        .map(str::to_owned)
        .ok_or_else(missing)
}

#[tracing::instrument(skip_all, fields(target_group = %arn))]
async fn refresh(
    deps: &Deps,
    arn: &str,
    writer: &Target,
    deadline: Deadline,
) -> Result<TargetGroupOutcome, Error> {
    let elbv2 = &deps.aws.elbv2;
    let todo = changes(&targets(deps, arn).await?, writer);

    if todo.register {
        elbv2
            .register_targets()
            .target_group_arn(arn)
            .targets(writer.description())
            .send()
            .await
            .map_err(|e| Error::aws(&format!("registering {writer} in {arn}"), &e))?;
        tracing::info!(target = %writer, "writer registered");
    }
    // Deregister before waiting: a new downstream connection must never reach the old
    // writer, even while the new target is still turning healthy.
    if !todo.deregister.is_empty() {
        let mut request = elbv2.deregister_targets().target_group_arn(arn);
        for target in &todo.deregister {
            request = request.targets(target.description());
        }
        request
            .send()
            .await
            .map_err(|e| Error::aws(&format!("deregistering old targets from {arn}"), &e))?;
        tracing::info!(count = todo.deregister.len(), "old targets deregistered");
    }

    wait_healthy(deps, arn, writer, deadline).await?;
    Ok(TargetGroupOutcome {
        arn: arn.to_owned(),
        target: writer.to_string(),
        registered: todo.register,
        deregistered: todo.deregister.iter().map(Target::to_string).collect(),
    })
}

async fn wait_healthy(
    deps: &Deps,
    arn: &str,
    writer: &Target,
    deadline: Deadline,
) -> Result<(), Error> {
    loop {
        let state = targets(deps, arn)
            .await?
            .into_iter()
            .find(|r| r.target == *writer)
            .map_or_else(|| "not registered".to_owned(), |r| r.state);
        if state == "healthy" {
            return Ok(());
        }
        if Instant::now() + POLL_INTERVAL > deadline.at {
            if let Some(pause) = deadline.pause.filter(|d| d.remaining() < POLL_INTERVAL) {
                return Err(pause.exceeded(&format!(
                    "waiting for target {writer} in {arn} ({state}) to turn healthy"
                )));
            }
            return Err(Error::stop(
                ErrorName::TargetNotHealthy,
                format!("target {writer} in {arn} is {state}, not healthy; check the NLB health check reaches the writer, then retry"),
            ));
        }
        tracing::debug!(target = %writer, state = %state, "waiting for the target to turn healthy");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn targets(deps: &Deps, arn: &str) -> Result<Vec<Registered>, Error> {
    let out = deps
        .aws
        .elbv2
        .describe_target_health()
        .target_group_arn(arn)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_target_group_not_found_exception())
            {
                Error::stop(
                    ErrorName::InvalidInput,
                    format!("target group {arn} does not exist; fix the downstream's nlb_target_group in the cell document"),
                )
            } else {
                Error::aws(&format!("describing target health of {arn}"), &e)
            }
        })?;
    Ok(out
        .target_health_descriptions()
        .iter()
        .filter_map(registered)
        .collect())
}

fn registered(description: &TargetHealthDescription) -> Option<Registered> {
    let target = description.target()?;
    Some(Registered {
        target: Target {
            id: target.id()?.to_owned(),
            port: target.port()?,
        },
        state: description
            .target_health()
            .and_then(|h| h.state())
            .map_or("unknown", |s| s.as_str())
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, port: i32) -> Target {
        Target {
            id: id.to_owned(),
            port,
        }
    }

    fn reg(id: &str, port: i32, state: &str) -> Registered {
        Registered {
            target: target(id, port),
            state: state.to_owned(),
        }
    }

    #[test]
    fn plan_keeps_an_exact_target_set() {
        let writer = target("10.0.0.5", 5432);
        let plan = changes(&[reg("10.0.0.5", 5432, "healthy")], &writer);
        assert_eq!(
            plan,
            Changes {
                register: false,
                deregister: vec![]
            }
        );
    }

    #[test]
    fn plan_replaces_every_other_target() {
        let writer = target("10.0.0.5", 5432);
        let registered = [
            reg("10.0.0.9", 5432, "healthy"),
            reg("10.0.0.5", 6543, "unhealthy"),
            reg("10.0.0.7", 5432, DRAINING),
        ];
        let plan = changes(&registered, &writer);
        assert!(plan.register);
        assert_eq!(
            plan.deregister,
            [target("10.0.0.9", 5432), target("10.0.0.5", 6543)],
            "a draining target is already leaving"
        );
    }

    #[test]
    fn plan_registers_a_draining_writer_again() {
        let writer = target("10.0.0.5", 5432);
        assert!(changes(&[reg("10.0.0.5", 5432, DRAINING)], &writer).register);
    }

    #[tokio::test]
    async fn an_ip_host_resolves_to_itself() {
        let ip = writer_ip("127.0.0.3", 5432).await.expect("resolves");
        assert_eq!(ip.to_string(), "127.0.0.3");
    }

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
