//! `pause-pgbouncer`: PAUSE every cell database on every PgBouncer instance, so that no
//! query reaches blue while the switchover runs; clients queue inside PgBouncer.
//!
//! Order: discover and log in to every instance first (one unreachable → fail, nothing
//! paused); lower `dns_max_ttl`/`dns_nxdomain_ttl` to 1 s (after the rename PgBouncer
//! must re-resolve blue's endpoint name quickly; `resume-pgbouncer`'s RELOAD restores
//! the file's values); then PAUSE everything concurrently, bounded by the drain budget.
//! PAUSE returns only once every server connection is released, so one client holding a
//! transaction open holds it. On any failure every session is dropped — never cancelled:
//! a cancel request makes PgBouncer resume *everything* — and every database is resumed
//! from new sessions, TTLs restored by RELOAD, before the error is returned.
//!
//! The pause window is journaled once per run ([`PauseWindow`]): a retried pause (its
//! first answer lost) keeps the first `pause_deadline`, so retries cannot stretch the
//! budget.
//!
//! Dry run ([`plan`]): the same logins, then only SHOW CONFIG and SHOW DATABASES: the TTLs
//! it would lower and the databases it would (resume and) pause, each instance's own.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_aws::DbCredentials;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Caller, Direction};
use switchyard_operation::{Deps, Error, OperationInput, PauseDeadline, PauseWindow, Plan};
use switchyard_postgres::pgbouncer::DatabaseRow;
use switchyard_postgres::{PgBouncerAdmin, PgError};
use tokio::task::JoinSet;

use switchyard_operation::fleet::{self as instances, Endpoint};

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z"}
/// ```
/// The drain budget is `cell.budgets.drain_seconds`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run is live.
    #[serde(default)]
    pub force: bool,
}

impl Input {
    fn caller(&self) -> Caller<'_> {
        Caller {
            run_id: &self.run_id,
            force: self.force,
        }
    }
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// When the last PAUSE returned (RFC 3339, UTC): the pause budget counts from here.
    pub paused_at: String,
    /// `paused_at` plus the cell's `budgets.pause_seconds`: the state machine passes it as
    /// `pause_deadline` to every step until the resume; none starts after it, and every
    /// wait inside one stops at it. The run's first pause set it; a retry keeps it.
    pub pause_deadline: PauseDeadline,
    pub instances: Vec<PausedInstance>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct PausedInstance {
    /// `host:port` of the admin console.
    pub endpoint: String,
    /// The databases now paused there.
    pub databases: Vec<String>,
    /// True when every one of them was already paused and drained (a retried run).
    pub already_paused: bool,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The TTLs lowered for the window, in seconds.
const DNS_TTL_SETTINGS: [&str; 2] = ["dns_max_ttl", "dns_nxdomain_ttl"];
const LOWERED_TTL: &str = "1";

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, drain_seconds = input.cell.budgets.drain_seconds))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Forward).await?;
    let cell = &input.cell;
    let databases = &cell.pgbouncer.databases;
    let (endpoints, login, sessions) = Box::pin(connect_everywhere(cell, deps)).await?;

    let budget = Duration::from_secs(cell.budgets.drain_seconds);
    match Box::pin(pause_all(&endpoints, sessions, &login, databases, budget)).await {
        Ok(instances) => {
            let window = Box::pin(journal_window(&input, deps)).await?;
            tracing::info!(paused_at = %window.paused_at, pause_deadline = %window.deadline.rfc3339(), instances = instances.len(), "pgbouncer paused");
            Ok(Output {
                paused_at: window.paused_at,
                pause_deadline: window.deadline,
                instances,
            })
        }
        Err(failure) => {
            let undone = Box::pin(roll_back(&endpoints, &login, databases)).await;
            let (name, message) = match failure {
                PauseError::Draining(pending) => (
                    ErrorName::DrainTimeout,
                    format!(
                        "PgBouncer did not drain within {}s; still waiting on {}: a client holds a transaction open (see SHOW CLIENTS, or pg_stat_activity 'idle in transaction' on blue); end it or raise budgets.drain_seconds, then rerun",
                        budget.as_secs(),
                        pending.join(", ")
                    ),
                ),
                PauseError::Failed(what) => (
                    ErrorName::PauseFailed,
                    format!("pausing PgBouncer failed: {what}; fix it and rerun"),
                ),
            };
            tracing::warn!(error = %message, "pause rolled back");
            Err(Error::stop(name, format!("{message}. {undone}")))
        }
    }
}

/// What [`run`] would do now on each instance; empty once every database is paused and
/// drained everywhere with the TTLs lowered.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, drain_seconds = input.cell.budgets.drain_seconds))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Forward).await?;
    let cell = &input.cell;
    let databases = &cell.pgbouncer.databases;
    let (endpoints, _login, sessions) = Box::pin(connect_everywhere(cell, deps)).await?;
    let failed = |what: String| {
        Error::stop(
            ErrorName::PauseFailed,
            format!("pausing PgBouncer would fail: {what}; fix it and rerun (dry run: nothing was changed)"),
        )
    };
    let mut plan = Plan::new();
    let mut pauses = 0;
    for (endpoint, admin) in endpoints.iter().zip(&sessions) {
        let config = admin
            .show_config()
            .await
            .map_err(|e| failed(format!("{endpoint}: {e}")))?;
        for setting in DNS_TTL_SETTINGS {
            let now = config
                .iter()
                .find(|r| r.key == setting)
                .map(|r| r.value.as_str());
            if now != Some(LOWERED_TTL) {
                plan.would(format!(
                    "on PgBouncer {endpoint}: SET {setting} = {LOWERED_TTL} (now {})",
                    now.unwrap_or("unset")
                ));
            }
        }
        let rows = admin
            .show_databases()
            .await
            .map_err(|e| failed(format!("{endpoint}: {e}")))?;
        for db in databases {
            let row = rows.iter().find(|r| &r.name == db);
            match step(endpoint, row, db).map_err(failed)? {
                Step::AlreadyPaused => {}
                Step::Pause => {
                    pauses += 1;
                    plan.would(format!(
                        "on PgBouncer {endpoint}: PAUSE {db} ({} server connections open now)",
                        row.map_or(0, |r| r.current_connections)
                    ));
                }
                Step::ResumeThenPause => {
                    pauses += 1;
                    plan.would(format!(
                        "on PgBouncer {endpoint}: RESUME {db} (paused by an interrupted attempt, {} server connections still open), then PAUSE {db}",
                        row.map_or(0, |r| r.current_connections)
                    ));
                }
            }
        }
    }
    if pauses > 0 {
        plan.would(format!(
            "then wait up to {}s (budgets.drain_seconds) for all {pauses} PAUSEs to return, each once its server connections are released; DrainTimeout after that, with every database resumed and the TTLs restored by RELOAD",
            cell.budgets.drain_seconds
        ));
    }
    Ok(plan)
}

/// The run's pause window: the one journaled by its first successful pause, else a new one
/// from now. Journaled before the deadline is returned, so every later step and every retry
/// reads the same deadline.
async fn journal_window(input: &Input, deps: &Deps) -> Result<PauseWindow, Error> {
    let journal = deps.journal(&input.cell);
    if let Some(window) = journal.get::<PauseWindow>().await? {
        if window.run_id == input.run_id {
            return Ok(window);
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let budget = time::Duration::seconds(
        i64::try_from(input.cell.budgets.pause_seconds).unwrap_or(i64::MAX),
    );
    let window = PauseWindow {
        run_id: input.run_id.clone(),
        paused_at: rfc3339(now),
        deadline: PauseDeadline::at(now.saturating_add(budget)),
    };
    // Another run's window is history: this run's replaces it.
    journal.put(&window).await?;
    Ok(window)
}

/// Discovers and logs in to every instance. Every instance reachable before anything is
/// paused: a partial pause is the one state this step must never leave behind.
async fn connect_everywhere(
    cell: &CellDocument,
    deps: &Deps,
) -> Result<(Vec<Endpoint>, DbCredentials, Vec<PgBouncerAdmin>), Error> {
    let endpoints = Box::pin(instances::discover(cell, deps)).await?;
    let login = Box::pin(instances::admin_login(cell, deps)).await?;
    let sessions = instances::connect_all(&endpoints, &login)
        .await
        .map_err(|failures| {
            let list: Vec<String> = failures
                .iter()
                .map(|(endpoint, e)| format!("{endpoint}: {e}"))
                .collect();
            Error::stop(
                ErrorName::PauseFailed,
                format!(
                    "PgBouncer unreachable, nothing was paused; fix or remove the instance and rerun: {}",
                    list.join("; ")
                ),
            )
        })?;
    Ok((endpoints, login, sessions))
}

/// What one database on one instance needs, from its SHOW DATABASES row.
enum Step {
    /// Paused with no server connection left: done (a retried run).
    AlreadyPaused,
    Pause,
    /// A pause left by an interrupted attempt still holds server connections: PAUSE would
    /// be refused, so resume and pause again to wait for the drain.
    ResumeThenPause,
}

fn step(endpoint: &Endpoint, row: Option<&DatabaseRow>, db: &str) -> Result<Step, String> {
    match row {
        None => Err(format!(
            "{endpoint}: PgBouncer has no database {db:?} (check pgbouncer.databases)"
        )),
        Some(row) if row.paused && row.current_connections == 0 => Ok(Step::AlreadyPaused),
        Some(row) if row.paused => Ok(Step::ResumeThenPause),
        Some(_) => Ok(Step::Pause),
    }
}

enum PauseError {
    /// The budget passed; `instance/db` pairs still draining.
    Draining(Vec<String>),
    Failed(String),
}

/// Lowers the TTLs and PAUSEs every database on every instance, one session per
/// (instance, database) so all drain at once; the budget bounds the PAUSEs. Each PAUSE
/// session lives in its own task, so ending the tasks closes a pending PAUSE without a cancel.
async fn pause_all(
    endpoints: &[Endpoint],
    sessions: Vec<PgBouncerAdmin>,
    login: &DbCredentials,
    databases: &[String],
    budget: Duration,
) -> Result<Vec<PausedInstance>, PauseError> {
    let failed = |endpoint: &Endpoint, e: PgError| PauseError::Failed(format!("{endpoint}: {e}"));
    let mut instances = Vec::new();
    let mut to_pause = Vec::new();
    for (endpoint, admin) in endpoints.iter().zip(&sessions) {
        for setting in DNS_TTL_SETTINGS {
            admin
                .set(setting, LOWERED_TTL)
                .await
                .map_err(|e| failed(endpoint, e))?;
        }
        let rows = admin
            .show_databases()
            .await
            .map_err(|e| failed(endpoint, e))?;
        let mut already = 0;
        for db in databases {
            match step(endpoint, rows.iter().find(|r| &r.name == db), db)
                .map_err(PauseError::Failed)?
            {
                Step::AlreadyPaused => {
                    already += 1;
                    continue;
                }
                Step::ResumeThenPause => {
                    admin.resume(db).await.map_err(|e| failed(endpoint, e))?;
                }
                Step::Pause => {}
            }
            to_pause.push((endpoint.clone(), db.clone()));
        }
        instances.push(PausedInstance {
            endpoint: endpoint.to_string(),
            databases: databases.to_vec(),
            already_paused: already == databases.len(),
        });
    }
    drop(sessions);

    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut set = JoinSet::new();
    for (endpoint, db) in to_pause {
        pending.insert(format!("{endpoint}/{db}"));
        let login = login.clone();
        set.spawn(async move {
            let paused = async {
                let admin = endpoint.connect(&login).await?;
                admin.pause(&db).await
            }
            .await;
            (format!("{endpoint}/{db}"), paused)
        });
    }
    let drained = tokio::time::timeout(budget, async {
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((target, Ok(()))) => {
                    tracing::info!(%target, "paused");
                    pending.remove(&target);
                }
                Ok((target, Err(e))) => return Err(PauseError::Failed(format!("{target}: {e}"))),
                // A pause task panics only on a bug: propagate it.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Ok(())
    })
    .await;
    // Aborting the tasks drops their sessions: a pending PAUSE ends with a closed socket,
    // never a cancel request (which would resume every database).
    set.shutdown().await;
    match drained {
        Ok(Ok(())) => Ok(instances),
        Ok(Err(failure)) => Err(failure),
        Err(_elapsed) => Err(PauseError::Draining(pending.into_iter().collect())),
    }
}

/// From new sessions (the old ones are gone): RESUMEs every database everywhere ("not paused"
/// is fine) and RELOADs to restore the TTLs. Returns a sentence for the error message.
async fn roll_back(endpoints: &[Endpoint], login: &DbCredentials, databases: &[String]) -> String {
    let mut problems = Vec::new();
    for endpoint in endpoints {
        let undo = async {
            let admin = endpoint.connect(login).await?;
            for db in databases {
                admin.resume(db).await?;
            }
            admin.reload().await
        };
        if let Err(e) = undo.await {
            problems.push(format!("{endpoint}: {e}"));
        }
    }
    if problems.is_empty() {
        "Every instance was resumed and its DNS settings restored".to_owned()
    } else {
        format!(
            "RESUME or RELOAD FAILED on {}: run RESUME and RELOAD on those consoles by hand now",
            problems.join("; ")
        )
    }
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
