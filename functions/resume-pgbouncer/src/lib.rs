//! `resume-pgbouncer`: **the point of no return** in the forward direction — once
//! RESUMEd, the first queued write lands wherever PgBouncer now connects (green, after the
//! rename). The abort path resumes toward blue with the same function.
//!
//! Forward, in order:
//! 1. log in to every instance and check each would reach the right address (its server
//!    connections and cached DNS answers agree with what the database's host resolves to
//!    now): any instance wrong or unreachable fails here, with nothing resumed;
//! 2. check every downstream subscription is shown to hold everything up to the freeze
//!    (this run dropped it after its slot confirmed the frozen position, and recreated it
//!    on the cluster that now holds the cell's identifier);
//! 3. read the application roles (SSM) and connect to green, checked to be green;
//! 4. journal the run's decision **switched** (`fence::mark_switched`). From here on
//!    nothing routes the cell back: the abort path refuses (`AlreadySwitched`);
//! 5. give green's fenced application roles LOGIN back (`green_fence::open`; sync-roles
//!    kept them NOLOGIN so nothing could write to green before the switch). After the
//!    decision, so no abort can follow the opening; before any RESUME, so the first queued
//!    client finds its login open. A failure here is `ResumeIncomplete` (retried forward);
//! 6. RESUME every database of every instance it can reach and check ("not paused" is
//!    fine: idempotent), then RELOAD, which restores the file's `dns_max_ttl` /
//!    `dns_nxdomain_ttl` lowered by `pause-pgbouncer`. An instance that fails is left
//!    for the retry — the ones resumed stay resumed — and the call ends
//!    `ResumeIncomplete` (retried forward) naming them;
//! 7. with `expected_server_version_num`, a query *through* each instance confirms the
//!    server version: a mismatch is `ProbeMismatch` (writes may be on green: page; never
//!    roll back). It cannot run earlier: queries wait while paused.
//!
//! On a switch-back (`cell.undoes`), step 5 also restores the old blue's write privileges,
//! which the upgrade's `revoke-writes` saved and revoked there (`restore_writes::restore_on`):
//! after the decision, before any RESUME, for the same reasons.
//!
//! A retry after step 4 (the decision already journaled) skips the all-reachable check,
//! opens green's logins if they are not open yet, and goes on resuming what it can.
//!
//! Abort: refused once the cell has switched; each reachable instance whose target checks
//! out is resumed — all go to blue, so a partial resume is safe — and the others are named
//! in a `ResumeIncomplete` for the retry: one dead instance keeps only itself paused.
//!
//! Dry run ([`plan`]): the same logins and checks of where each instance would connect,
//! then the databases it would RESUME and the RELOADs that would restore lowered TTLs.

mod logins;
mod probe;
mod target;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::downstream::Journaled;
use switchyard_operation::fence::{self, Decision, Way};
use switchyard_operation::fleet as instances;
use switchyard_operation::fleet::Endpoint;
use switchyard_operation::{green_fence, Deps, Error, Login, PauseDeadline, Plan, Side};
use switchyard_postgres::{PgBouncerAdmin, Resumed};

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z",
///  "direction": "forward", "expected_server_version_num": 170007}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock, or past a switch: for an operator who has made sure
    /// no run is live.
    #[serde(default)]
    pub force: bool,
    /// The end of the pause budget: no resume toward green starts after it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
    /// Forward (toward green: the point of no return) or abort (back to blue).
    pub direction: Way,
    /// When set, each instance must reach a server whose `server_version_num` is this
    /// (green's); probed through PgBouncer as an application role after the resume.
    #[serde(default)]
    pub expected_server_version_num: Option<i32>,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub direction: Way,
    /// When the last RESUME returned (RFC 3339, UTC): the end of the paused window.
    pub resumed_at: String,
    pub instances: Vec<ResumedInstance>,
    /// Application roles this run gave LOGIN back on green (forward; empty on a retry
    /// that found them open, and on the abort path).
    #[serde(default)]
    pub logins_opened: Vec<String>,
    /// A switch-back's: the old blue's write privileges, revoked by the upgrade it undoes,
    /// restored before the first RESUME (per database; a retry finds them unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes_restored: Vec<restore_writes::DatabaseRestore>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ResumedInstance {
    /// `host:port` of the admin console.
    pub endpoint: String,
    /// Databases this run resumed.
    pub resumed: Vec<String>,
    /// Databases that were not paused (a retried run, or never paused).
    pub were_not_paused: Vec<String>,
    /// What the probe through this instance saw; `None` when no probe was asked for.
    pub server_version_num: Option<i32>,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, direction = %input.direction, expected = ?input.expected_server_version_num))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let admitted = fence::admit(
        deps,
        &input.cell,
        input.caller(),
        input.direction.direction(),
    )
    .await?;
    let cell = &input.cell;
    // Every login this run uses (green's fence needs the orchestrator), in one SSM call.
    deps.read_logins(cell, &[Login::PgBouncerAdmin, Login::Orchestrator])
        .await?;
    let endpoints = Box::pin(instances::discover(cell, deps)).await?;
    let login = Box::pin(instances::admin_login(cell, deps)).await?;
    let switched_already = admitted
        .decision
        .as_ref()
        .is_some_and(|d| d.switched(cell) && d.run_id == input.run_id);
    let reached = Box::pin(reach(cell, deps, &endpoints, &login)).await;
    let mut logins_opened = Vec::new();
    let mut writes_restored = Vec::new();
    if input.direction == Way::Forward {
        let green = if switched_already {
            Box::pin(logins::Green::reach(cell, deps))
                .await
                .map_err(|e| logins::after_switch(&e))?
        } else {
            // Before the point of no return: every instance reachable and right, or nothing.
            if let Some((endpoint, e)) = reached
                .iter()
                .find_map(|(ep, r)| r.as_ref().err().map(|e| (ep, e)))
            {
                return Err(before_switch(endpoint, e));
            }
            Box::pin(require_downstream_caught_up(&input, deps)).await?;
            let green = Box::pin(logins::Green::reach(cell, deps)).await?;
            let decision = fence::mark_switched(deps, cell, &input.run_id).await?;
            tracing::warn!(run = %decision.run_id, "switched: writes go to green from the first RESUME");
            green
        };
        let mut green = green;
        // After the decision (no abort can follow), before the first RESUME.
        logins_opened = green.open().await.map_err(|e| logins::after_switch(&e))?;
        if cell.is_back() {
            // The old blue's writes were revoked by the upgrade it undoes: back before the
            // first RESUME, after the decision (a switch-back's abort must find it fenced).
            writes_restored = Box::pin(restore_old_blue_writes(cell, deps)).await?;
        }
    }

    let mut resumed_instances = Vec::new();
    let mut failed = Vec::new();
    for (endpoint, session) in &reached {
        let outcome = match session {
            Ok(admin) => resume_one(admin, &cell.pgbouncer.databases).await,
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok((resumed, were_not_paused)) => {
                tracing::info!(%endpoint, ?resumed, ?were_not_paused, "pgbouncer resumed");
                resumed_instances.push(ResumedInstance {
                    endpoint: endpoint.to_string(),
                    resumed,
                    were_not_paused,
                    server_version_num: None,
                });
            }
            Err(why) => {
                tracing::warn!(%endpoint, error = %why, "pgbouncer not resumed");
                failed.push(format!("{endpoint} ({why})"));
            }
        }
    }
    drop(reached);
    let resumed_at = switchyard_operation::now_rfc3339();
    if !failed.is_empty() {
        let resumed: Vec<&str> = resumed_instances
            .iter()
            .map(|i| i.endpoint.as_str())
            .collect();
        return Err(Error::stop(
            ErrorName::ResumeIncomplete,
            format!(
                "{} resumed toward {}; not resumed yet: {} — they stay paused (their clients wait) and nothing resumed is undone; retry {} once they are reachable",
                if resumed.is_empty() { "no PgBouncer instance".to_owned() } else { format!("PgBouncer {}", resumed.join(", ")) },
                match input.direction { Way::Forward => "green", Way::Abort => "blue" },
                failed.join("; "),
                match input.direction { Way::Forward => "resume-pgbouncer forward", Way::Abort => "resume-pgbouncer abort" },
            ),
        ));
    }
    tracing::info!(%resumed_at, instances = resumed_instances.len(), "pgbouncer resumed everywhere");

    let Some(expected) = input.expected_server_version_num else {
        return Ok(Output {
            direction: input.direction,
            resumed_at,
            instances: resumed_instances,
            logins_opened,
            writes_restored,
        });
    };
    let databases = &cell.pgbouncer.databases;
    let role = Box::pin(probe::login(cell, deps)).await?;
    let mut wrong = Vec::new();
    for (endpoint, instance) in endpoints.iter().zip(&mut resumed_instances) {
        let seen = Box::pin(probe::server_version_num(endpoint, &databases[0], &role)).await?;
        instance.server_version_num = Some(seen);
        if seen != expected {
            wrong.push(format!("{endpoint} reaches version {seen}"));
        }
    }
    if !wrong.is_empty() {
        return Err(Error::stop(
            ErrorName::ProbeMismatch,
            format!(
                "PgBouncer is resumed but {}, expected {expected}: writes may already be on green, so nothing rolls back — page, pause that instance by hand and find where it connects (SHOW SERVERS, SHOW DNS_HOSTS)",
                wrong.join(", ")
            ),
        ));
    }
    Ok(Output {
        direction: input.direction,
        resumed_at,
        instances: resumed_instances,
        logins_opened,
        writes_restored,
    })
}

/// Restores the ACLs the upgrade's revoke-writes saved on the old blue, through a
/// connection checked to reach it (the switch-back's green); past the point of no return,
/// so a failure is `ResumeIncomplete`: retried forward, never aborted.
async fn restore_old_blue_writes(
    cell: &CellDocument,
    deps: &Deps,
) -> Result<Vec<restore_writes::DatabaseRestore>, Error> {
    let mut restored = Vec::new();
    for database in &cell.databases {
        let mut client = Box::pin(green_fence::connect(cell, deps, database))
            .await
            .map_err(|e| logins::after_switch(&e))?;
        let done = Box::pin(restore_writes::restore_on(&mut client, database))
            .await
            .map_err(|e| logins::after_switch(&e))?;
        tracing::info!(%database, restored = done.restored, "the old blue's writes restored");
        restored.push(done);
    }
    Ok(restored)
}

/// Each instance logged in to and checked, in discovery order; an instance that cannot be
/// reached or would connect to the wrong address is an error of its own.
async fn reach(
    cell: &CellDocument,
    deps: &Deps,
    endpoints: &[Endpoint],
    login: &switchyard_aws::DbCredentials,
) -> Vec<(Endpoint, Result<PgBouncerAdmin, Error>)> {
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let session = match endpoint.connect(login).await {
            Ok(admin) => match Box::pin(target::check(cell, deps, endpoint, &admin)).await {
                Ok(()) => Ok(admin),
                Err(e) => Err(e),
            },
            Err(e) => Err(Error::Database(e)),
        };
        out.push((endpoint.clone(), session));
    }
    out
}

/// RESUME every database, then RELOAD: (resumed, were not paused).
async fn resume_one(
    admin: &PgBouncerAdmin,
    databases: &[String],
) -> Result<(Vec<String>, Vec<String>), String> {
    let mut resumed = Vec::new();
    let mut were_not_paused = Vec::new();
    for db in databases {
        match admin.resume(db).await.map_err(|e| e.to_string())? {
            Resumed::Resumed => resumed.push(db.clone()),
            Resumed::WasNotPaused => were_not_paused.push(db.clone()),
        }
    }
    admin.reload().await.map_err(|e| e.to_string())?;
    Ok((resumed, were_not_paused))
}

/// An instance that stops the forward resume before the point of no return.
fn before_switch(endpoint: &Endpoint, e: &Error) -> Error {
    match e {
        Error::Failed(f) => Error::stop(f.name(), format!("{}; nothing was resumed", f.message())),
        other => Error::stop(
            switchyard_errors::Catalogued::error_name(other),
            format!("PgBouncer {endpoint}: {other}; nothing was resumed"),
        ),
    }
}

/// Every downstream subscription must have been dropped by this run once its slot held the
/// frozen position, and created again on the cluster now holding the cell's identifier:
/// otherwise the downstream could miss rows, and nothing would say so after the switch.
async fn require_downstream_caught_up(input: &Input, deps: &Deps) -> Result<(), Error> {
    let cell = &input.cell;
    if cell.downstream.is_empty() {
        return Ok(());
    }
    let primary = deps.endpoint(cell, Side::Blue).await?.resource_id;
    let mut missing = Vec::new();
    for downstream in &cell.downstream {
        for name in &downstream.subscriptions {
            let entry = Journaled::read(deps, cell, downstream, name).await?;
            let shown = entry.as_ref().is_some_and(|e| {
                e.run_id == input.run_id
                    && e.held_everything()
                    && e.recreated.as_ref().map(|r| &r.primary_resource_id) == Some(&primary)
            });
            if !shown {
                missing.push(format!(
                    "{}/{name} ({})",
                    downstream.name,
                    match &entry {
                        None => "no journal entry".to_owned(),
                        Some(e) if e.run_id != input.run_id =>
                            format!("journaled by run {}", e.run_id),
                        Some(e) if !e.held_everything() => format!(
                            "confirmed {} before the freeze {}",
                            e.confirmed_lsn, e.freeze_lsn
                        ),
                        Some(_) => "not recreated on the new primary".to_owned(),
                    }
                ));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "downstream subscriptions not shown to hold everything up to the freeze: {}; nothing was resumed (run drop- and recreate-downstream-subscriptions in this run first)",
            missing.join(", ")
        ),
    ))
}

/// The settings `pause-pgbouncer` lowers, and the value it lowers them to: while one reads
/// so, the RELOAD after RESUME changes something.
const LOWERED_BY_PAUSE: [(&str, &str); 2] = [("dns_max_ttl", "1"), ("dns_nxdomain_ttl", "1")];

/// What [`run`] would do now, after the same checks; empty when nothing is paused and no
/// TTL is lowered anywhere. The probe (`expected_server_version_num`) changes nothing and
/// is not listed.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, expected = ?input.expected_server_version_num))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    let admitted = fence::check(
        deps,
        &input.cell,
        input.caller(),
        input.direction.direction(),
    )
    .await?;
    let cell = &input.cell;
    let (endpoints, sessions) = Box::pin(checked_sessions(cell, deps)).await?;
    let mut plan = Plan::new();
    if input.direction == Way::Forward
        && !admitted
            .decision
            .as_ref()
            .is_some_and(|d: &Decision| d.switched(cell))
    {
        plan.would(format!(
            "check every downstream subscription was dropped at the frozen position and recreated on the new primary, then journal the switched decision under {} — the point of no return",
            deps.journal(cell).parameter_of::<Decision>()
        ));
    }
    if input.direction == Way::Forward {
        let closed = Box::pin(logins::Green::reach(cell, deps))
            .await?
            .closed()
            .await?;
        if !closed.is_empty() {
            plan.would(format!(
                "on green: ALTER ROLE … LOGIN for {} (closed until the switch)",
                closed.join(", ")
            ));
        }
    }
    for (endpoint, admin) in endpoints.iter().zip(&sessions) {
        let rows = admin.show_databases().await?;
        let paused: Vec<&String> = cell
            .pgbouncer
            .databases
            .iter()
            .filter(|db| rows.iter().any(|r| &r.name == *db && r.paused))
            .collect();
        for db in &paused {
            plan.would(format!("on PgBouncer {endpoint}: RESUME {db}"));
        }
        let config = admin.show_config().await?;
        let lowered: Vec<String> = LOWERED_BY_PAUSE
            .iter()
            .filter(|(key, value)| config.iter().any(|r| r.key == *key && r.value == *value))
            .map(|(key, value)| format!("{key} {value}"))
            .collect();
        if !lowered.is_empty() {
            plan.would(format!(
                "on PgBouncer {endpoint}: RELOAD, restoring the configuration file's values of {}",
                lowered.join(", ")
            ));
        } else if !paused.is_empty() {
            plan.would(format!("on PgBouncer {endpoint}: RELOAD"));
        }
    }
    Ok(plan)
}

/// Discovers, logs in to and checks every instance. Every instance reachable and checked
/// before any is resumed: after the first RESUME there is no going back.
async fn checked_sessions(
    cell: &CellDocument,
    deps: &Deps,
) -> Result<(Vec<Endpoint>, Vec<PgBouncerAdmin>), Error> {
    let endpoints = Box::pin(instances::discover(cell, deps)).await?;
    let login = Box::pin(instances::admin_login(cell, deps)).await?;
    let sessions = instances::connect_all(&endpoints, &login)
        .await
        .map_err(|mut failures| Error::Database(failures.swap_remove(0).1))?;
    for (endpoint, admin) in endpoints.iter().zip(&sessions) {
        Box::pin(target::check(cell, deps, endpoint, admin)).await?;
    }
    Ok((endpoints, sessions))
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<super::Input, super::Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
