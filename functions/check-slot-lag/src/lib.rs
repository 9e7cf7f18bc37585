//! `check-slot-lag`: switchover step 6, the hard gate. It runs after the freeze
//! (PgBouncer paused, writes revoked on blue: only the orchestrator still writes), and
//! passes only when green provably holds everything blue committed.
//!
//! For each of the cell's databases, as the orchestrator:
//! 1. blue must have the slot of every name in `cell.replication_names()`, green the
//!    subscription, and both sides the marker table `switchyard.switchover_marker`, which
//!    blue's `switchyard_rest` publishes (start-replication makes all of it); else
//!    `PreconditionFailed`, with nothing written;
//! 2. a marker row with a fresh id is written on blue and committed, then blue's
//!    `pg_current_wal_lsn()` is captured;
//! 3. for up to `wait_seconds`, every slot's `confirmed_flush_lsn` must reach that LSN and
//!    the marker row must be visible on green. Once green shows the marker and a slot has
//!    not confirmed yet, green's feedback is asked for every 100 ms
//!    ([`switchyard_operation::feedback::nudge`]) rather than waited for on its own cycle:
//!    the condition is the same, it is met sooner.
//!
//! Not there in time: `LagNotZero` (not yet: the state machine retries it), naming the
//! bytes each slot is behind, the subscriptions disabled on green (which never catch up)
//! and whether the marker arrived. The gate's budget is the cell's own
//! `budgets.lag_gate_seconds`, counted from `gate_started_at` (when the state machine
//! entered the gate): a call never waits past it, nor past the pause deadline, and once
//! either has passed the answer is a stop — `LagGateExceeded` or `PauseBudgetExceeded` —
//! not another retry.
//!
//! Every call writes its own marker, so a retry or a second call after a pass checks afresh
//! and passes the same way; one more marker row (which green receives too) is all it
//! leaves behind.
//!
//! A dry run ([`plan`]) checks step 1 the same way and lists the marker it would write and
//! the wait, with each slot's lag behind blue's position now. It is never empty: every
//! call writes a marker.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::feedback;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::{Deps, Error, Plan, Side};
use switchyard_operation::{PauseDeadline, Timestamp};
use switchyard_postgres::quote;
use tokio_postgres::Client;

/// ```json
/// {"cell": { …the cell document… }, "wait_seconds": 10}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
    /// The end of the pause budget (`pause-pgbouncer`'s): every wait stops at it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
    /// When the lag gate began (the state machine's `$$.State.EnteredTime`, which its
    /// retries keep): the gate ends `budgets.lag_gate_seconds` after it. Without it, each
    /// call is its own gate.
    #[serde(default)]
    pub gate_started_at: Option<Timestamp>,
    /// How long this call waits for green before answering `LagNotZero`: 0 (look once) to
    /// 60; default 10, cut to what is left of the gate and of the pause budget.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: u64,
}

fn default_wait_seconds() -> u64 {
    10
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub databases: Vec<DatabaseOutput>,
    /// From the start of the call until green held everything.
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseOutput {
    pub name: String,
    /// The id of the marker row this call wrote on blue and saw on green.
    pub marker_id: String,
    /// Blue's `pg_current_wal_lsn()`, read right after the marker committed.
    pub lsn: String,
    /// Green's slots on blue, in `replication_names()` order.
    pub slots: Vec<SlotOutput>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SlotOutput {
    pub name: String,
    /// At or after `lsn`.
    pub confirmed_flush_lsn: String,
    /// How far `confirmed_flush_lsn` is behind `lsn`: 0 once the gate passes.
    pub bytes_behind: u64,
}

/// The most one call may wait: the Lambda's timeout must cover it with room to spare.
const MAX_WAIT_SECONDS: u64 = 60;

/// How often slots and green are looked at again.
const POLL: Duration = Duration::from_millis(50);

const MARKER_EXISTS: &str = "pg_catalog.to_regclass('switchyard.switchover_marker') IS NOT NULL";

fn check_wait(input: &Input) -> Result<(), Error> {
    if input.wait_seconds > MAX_WAIT_SECONDS {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!("wait_seconds must be 0 to {MAX_WAIT_SECONDS} (the state machine retries for the rest of the lag gate budget)"),
        ));
    }
    Ok(())
}

/// Dry run: per database, the marker [`run`] would write on blue and the wait after it,
/// with how far each slot is behind blue's WAL position now.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Forward).await?;
    check_wait(&input)?;
    let names = input.cell.replication_names();
    let mut plan = Plan::new();
    for database in &input.cell.databases {
        let (blue, _green) = Box::pin(connect_checked(&input.cell, deps, database, &names)).await?;
        let lsn = current_lsn(&blue).await?;
        let lag: Vec<String> = slots(&blue, database, &names, &lsn)
            .await?
            .iter()
            .map(|s| match s.bytes_behind {
                Some(bytes) => format!("{} {bytes} bytes behind now", quote::name(&s.name)),
                None => format!("{} nothing confirmed yet", quote::name(&s.name)),
            })
            .collect();
        let db = quote::name(database);
        plan.would(format!(
            "insert a marker row with a fresh id into switchyard.switchover_marker on blue (database {db}) and read blue's WAL position after its commit (now {lsn})"
        ));
        plan.would(format!(
            "then wait up to {} s for slots {} to confirm that position and the marker to arrive on green (database {db}), else LagNotZero",
            input.wait_seconds,
            lag.join(", ")
        ));
    }
    Ok(plan)
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Forward).await?;
    check_wait(&input)?;
    let started = Instant::now();
    let (deadline, gate_end) = deadlines(&input);
    let deadline = started + deadline;
    let names = input.cell.replication_names();
    let mut gates = Vec::with_capacity(input.cell.databases.len());
    for database in &input.cell.databases {
        // Boxed: keeps the handler's future small (nested connection and query futures).
        gates.push(Box::pin(Gate::open(&input.cell, deps, database, &names)).await?);
    }
    let mut nudged: Vec<Option<Instant>> = vec![None; gates.len()];
    loop {
        let mut states = Vec::with_capacity(gates.len());
        for gate in &gates {
            states.push(gate.observe().await?);
        }
        if states.iter().all(State::passed) {
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            tracing::info!(elapsed_ms, "green holds everything blue committed");
            return Ok(Output {
                databases: gates
                    .into_iter()
                    .zip(states)
                    .map(|(gate, state)| gate.passed(state))
                    .collect(),
                elapsed_ms,
            });
        }
        if Instant::now() >= deadline {
            let mut reports = Vec::new();
            for (gate, state) in gates.iter().zip(&states) {
                if !state.passed() {
                    reports.push(gate.report(state).await?);
                }
            }
            let behind = format!(
                "green has not yet applied everything blue committed: {}",
                reports.join("; ")
            );
            if let Some(pause) = input.pause_deadline.filter(|d| d.passed()) {
                return Err(pause.exceeded(&behind));
            }
            if gate_end.is_some_and(|end| time::OffsetDateTime::now_utc() >= end) {
                return Err(Error::stop(
                    ErrorName::LagGateExceeded,
                    format!(
                        "{behind}; the lag gate's budget of {} s (budgets.lag_gate_seconds) has run out: the run aborts — check green's subscription workers and log before the next attempt",
                        input.cell.budgets.lag_gate_seconds
                    ),
                ));
            }
            return Err(Error::stop(
                ErrorName::LagNotZero,
                format!(
                    "{behind} (waited {} ms); the state machine retries within the lag gate budget — if nothing moves, check green's subscription workers and log",
                    started.elapsed().as_millis()
                ),
            ));
        }
        // Green has the marker but a slot has not said so yet: ask for the feedback now.
        for ((gate, state), at) in gates.iter().zip(&states).zip(nudged.iter_mut()) {
            if state.marker_on_green
                && !state.passed()
                && at.is_none_or(|at| at.elapsed() >= feedback::NUDGE_EVERY)
            {
                feedback::nudge(&gate.green, &gate.blue).await;
                *at = Some(Instant::now());
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long this call may wait — its own `wait_seconds` cut to what is left of the gate and
/// of the pause budget — and when the gate ends, if it has a start.
fn deadlines(input: &Input) -> (Duration, Option<time::OffsetDateTime>) {
    let gate_end = input.gate_started_at.map(|start| {
        start.0
            + time::Duration::seconds(
                i64::try_from(input.cell.budgets.lag_gate_seconds).unwrap_or(i64::MAX),
            )
    });
    let mut wait = switchyard_operation::bounded(
        input.pause_deadline,
        Duration::from_secs(input.wait_seconds),
    );
    if let Some(end) = gate_end {
        let left =
            Duration::try_from(end - time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
        wait = wait.min(left);
    }
    (wait, gate_end)
}

/// One database's gate: its marker is written, its LSN captured.
struct Gate {
    database: String,
    blue: Client,
    green: Client,
    names: Vec<String>,
    marker_id: String,
    lsn: String,
}

/// A slot as last seen on blue.
#[derive(Debug)]
struct Slot {
    name: String,
    confirmed: Option<String>,
    reached: bool,
    /// `None` when the slot has confirmed nothing.
    bytes_behind: Option<i64>,
    /// A walsender is streaming from it.
    active: bool,
}

/// One look at a database's slots and green's marker.
#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    marker_on_green: bool,
}

impl State {
    fn passed(&self) -> bool {
        self.marker_on_green && self.slots.iter().all(|s| s.reached)
    }
}

impl Gate {
    async fn open(
        cell: &CellDocument,
        deps: &Deps,
        database: &str,
        names: &[String],
    ) -> Result<Self, Error> {
        let (blue, green) = connect_checked(cell, deps, database, names).await?;
        let marker_id = uuid::Uuid::new_v4().to_string();
        // Synchronous commit: the WAL position read below is then past the marker's commit.
        blue.execute(
            "SELECT pg_catalog.set_config('synchronous_commit', 'on', false)",
            &[],
        )
        .await
        .map_err(|e| Error::query("setting synchronous_commit on blue", e))?;
        blue.execute(
            "INSERT INTO switchyard.switchover_marker (id) VALUES ($1)",
            &[&marker_id],
        )
        .await
        .map_err(|e| Error::query("writing the switchover marker on blue", e))?;
        // After the marker's commit, not before: a slot that reaches this LSN has sent it.
        let lsn = current_lsn(&blue).await?;
        tracing::info!(%database, marker = %marker_id, %lsn, "marker written on blue");
        Ok(Self {
            database: database.to_owned(),
            blue,
            green,
            names: names.to_vec(),
            marker_id,
            lsn,
        })
    }

    async fn observe(&self) -> Result<State, Error> {
        let slots = slots(&self.blue, &self.database, &self.names, &self.lsn).await?;
        let marker_on_green = self
            .green
            .query_one(
                "SELECT EXISTS (SELECT FROM switchyard.switchover_marker WHERE id = $1)",
                &[&self.marker_id],
            )
            .await
            .map_err(|e| Error::query("looking for the switchover marker on green", e))?
            .get(0);
        Ok(State {
            slots,
            marker_on_green,
        })
    }

    fn passed(self, state: State) -> DatabaseOutput {
        DatabaseOutput {
            name: self.database,
            marker_id: self.marker_id,
            lsn: self.lsn,
            slots: state
                .slots
                .into_iter()
                .map(|s| SlotOutput {
                    name: s.name,
                    confirmed_flush_lsn: s.confirmed.unwrap_or_default(),
                    bytes_behind: 0,
                })
                .collect(),
        }
    }

    /// What holds this database's gate, for the `LagNotZero` message.
    async fn report(&self, state: &State) -> Result<String, Error> {
        let disabled: Vec<String> = self
            .green
            .query(
                "SELECT subname::text FROM pg_catalog.pg_subscription
                  WHERE subname::text = ANY($1) AND NOT subenabled
                    AND subdbid = (SELECT oid FROM pg_catalog.pg_database
                                    WHERE datname = pg_catalog.current_database())
                  ORDER BY 1",
                &[&self.names],
            )
            .await
            .map_err(|e| Error::query("reading green's subscriptions", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(describe(
            &self.database,
            &self.lsn,
            &self.marker_id,
            state,
            &disabled,
        ))
    }
}

/// Blue and green for `database`, once [`require_replication`] passed.
async fn connect_checked(
    cell: &CellDocument,
    deps: &Deps,
    database: &str,
    names: &[String],
) -> Result<(Client, Client), Error> {
    let blue = deps.connect(cell, Side::Blue, database).await?;
    let green = deps.connect(cell, Side::Green, database).await?;
    require_replication(
        &blue,
        &green,
        database,
        names,
        &cell.marker_replication_name(),
    )
    .await?;
    Ok((blue, green))
}

async fn current_lsn(blue: &Client) -> Result<String, Error> {
    Ok(blue
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| Error::query("reading blue's WAL position", e))?
        .get(0))
}

/// Each of `names`' slots on blue, measured against `lsn`; `PreconditionFailed` for one
/// gone.
async fn slots(
    blue: &Client,
    database: &str,
    names: &[String],
    lsn: &str,
) -> Result<Vec<Slot>, Error> {
    let rows = blue
        .query(
            "SELECT u.name, s.confirmed_flush_lsn::text,
                    coalesce(s.confirmed_flush_lsn >= $2::text::pg_lsn, false),
                    CASE WHEN s.confirmed_flush_lsn IS NOT NULL THEN greatest(
                        pg_catalog.pg_wal_lsn_diff($2::text::pg_lsn, s.confirmed_flush_lsn), 0)::bigint END,
                    coalesce(s.active, false), s.slot_name IS NOT NULL
               FROM unnest($1::text[]) WITH ORDINALITY AS u(name, i)
               LEFT JOIN pg_catalog.pg_replication_slots s
                      ON s.slot_name::text = u.name AND s.database = pg_catalog.current_database()
              ORDER BY u.i",
            &[&names, &lsn],
        )
        .await
        .map_err(|e| Error::query("reading green's slots on blue", e))?;
    let mut slots = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get(0);
        if !row.get::<_, bool>(5) {
            return Err(missing_slots(database, &[name]));
        }
        slots.push(Slot {
            name,
            confirmed: row.get(1),
            reached: row.get(2),
            bytes_behind: row.get(3),
            active: row.get(4),
        });
    }
    Ok(slots)
}

/// `PreconditionFailed` unless blue has every slot and the published marker table, and
/// green every subscription and the marker table. Nothing is written before this passes.
async fn require_replication(
    blue: &Client,
    green: &Client,
    database: &str,
    names: &[String],
    marker_publication: &str,
) -> Result<(), Error> {
    let row = blue
        .query_one(
            &format!(
                "SELECT {MARKER_EXISTS},
                        EXISTS (SELECT FROM pg_catalog.pg_publication_tables
                                 WHERE pubname = $2 AND schemaname = 'switchyard'
                                   AND tablename = 'switchover_marker'),
                        ARRAY(SELECT u.name FROM unnest($1::text[]) WITH ORDINALITY AS u(name, i)
                               WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
                                                  WHERE s.slot_name::text = u.name
                                                    AND s.database = pg_catalog.current_database())
                               ORDER BY u.i)"
            ),
            &[&names, &marker_publication],
        )
        .await
        .map_err(|e| Error::query("reading green's slots on blue", e))?;
    let missing: Vec<String> = row.get(2);
    if !missing.is_empty() {
        return Err(missing_slots(database, &missing));
    }
    let mut problems = Vec::new();
    if !row.get::<_, bool>(0) {
        problems.push("blue has no table switchyard.switchover_marker".to_owned());
    } else if !row.get::<_, bool>(1) {
        problems.push(format!(
            "blue's publication {} does not carry switchyard.switchover_marker",
            quote::name(marker_publication)
        ));
    }
    let row = green
        .query_one(
            &format!(
                "SELECT {MARKER_EXISTS},
                        ARRAY(SELECT u.name FROM unnest($1::text[]) WITH ORDINALITY AS u(name, i)
                               WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_subscription s
                                                  WHERE s.subname::text = u.name
                                                    AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database
                                                                      WHERE datname = pg_catalog.current_database()))
                               ORDER BY u.i)"
            ),
            &[&names],
        )
        .await
        .map_err(|e| Error::query("reading green's subscriptions", e))?;
    if !row.get::<_, bool>(0) {
        problems.push("green has no table switchyard.switchover_marker".to_owned());
    }
    let unsubscribed: Vec<String> = row.get(1);
    if !unsubscribed.is_empty() {
        problems.push(format!(
            "green has no subscription {}",
            names_of(&unsubscribed)
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "database {}: {}, so green can never be shown caught up; let the switchover abort, then rerun start-replication (and check-replication) before the next attempt",
            quote::name(database),
            problems.join("; ")
        ),
    ))
}

fn missing_slots(database: &str, missing: &[String]) -> Error {
    Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "database {}: blue has no replication slot {} for green's subscription of that name, so green may have missed changes; let the switchover abort, then rebuild replication (drop green's subscription, empty its tables, rerun start-replication)",
            quote::name(database),
            names_of(missing)
        ),
    )
}

/// One database's part of the `LagNotZero` message.
fn describe(
    database: &str,
    lsn: &str,
    marker_id: &str,
    state: &State,
    disabled: &[String],
) -> String {
    let mut parts: Vec<String> = state
        .slots
        .iter()
        .filter(|s| !s.reached)
        .map(|s| {
            let mut line = match (&s.confirmed, s.bytes_behind) {
                (Some(confirmed), Some(bytes)) => {
                    format!(
                        "slot {} {bytes} bytes behind {lsn} (confirmed {confirmed})",
                        quote::name(&s.name)
                    )
                }
                _ => format!(
                    "slot {} has confirmed nothing yet (target {lsn})",
                    quote::name(&s.name)
                ),
            };
            if !s.active {
                line.push_str(", no walsender streaming from it");
            }
            line
        })
        .collect();
    for name in disabled {
        parts.push(format!(
            "subscription {} is disabled on green and never catches up until enabled (finalize-replication mode enable)",
            quote::name(name)
        ));
    }
    parts.push(if state.marker_on_green {
        format!("marker {marker_id} arrived on green")
    } else {
        format!("marker {marker_id} not on green yet")
    });
    format!("database {}: {}", quote::name(database), parts.join(", "))
}

/// Names as messages show them, joined.
fn names_of(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().map(|n| quote::name(n)).collect();
    shown.join(", ")
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
    fn wait_defaults_when_absent() {
        let mut value: serde_json::Value =
            serde_json::from_str(include_str!("../payloads/input.json")).expect("input example");
        value
            .as_object_mut()
            .expect("object")
            .remove("wait_seconds");
        let input: Input = serde_json::from_value(value).expect("default");
        assert_eq!(input.wait_seconds, 10);
    }

    fn slot(name: &str, confirmed: Option<&str>, behind: Option<i64>, active: bool) -> Slot {
        Slot {
            name: name.into(),
            confirmed: confirmed.map(Into::into),
            reached: behind == Some(0),
            bytes_behind: behind,
            active,
        }
    }

    #[test]
    fn the_report_names_what_holds_the_gate() {
        let state = State {
            slots: vec![
                slot("switchyard_payments", Some("0/3000100"), Some(0), true),
                slot("switchyard_rest", Some("0/2FFF000"), Some(4352), false),
                slot("switchyard_new", None, None, true),
            ],
            marker_on_green: false,
        };
        assert!(!state.passed());
        assert_eq!(
            describe("app", "0/3000100", "m-1", &state, &["switchyard_rest".into()]),
            "database app: slot switchyard_rest 4352 bytes behind 0/3000100 (confirmed 0/2FFF000), no walsender streaming from it, \
             slot switchyard_new has confirmed nothing yet (target 0/3000100), \
             subscription switchyard_rest is disabled on green and never catches up until enabled (finalize-replication mode enable), \
             marker m-1 not on green yet"
        );
        let weird = State {
            slots: vec![slot("Weird slot", None, None, true)],
            marker_on_green: true,
        };
        assert_eq!(
            describe("my db", "0/1", "m-2", &weird, &["user".into()]),
            "database \"my db\": slot \"Weird slot\" has confirmed nothing yet (target 0/1), \
             subscription \"user\" is disabled on green and never catches up until enabled (finalize-replication mode enable), \
             marker m-2 arrived on green"
        );
    }

    #[test]
    fn slots_at_the_lsn_without_the_marker_do_not_pass() {
        let mut state = State {
            slots: vec![slot("switchyard_rest", Some("0/3000100"), Some(0), true)],
            marker_on_green: false,
        };
        assert!(!state.passed());
        state.marker_on_green = true;
        assert!(state.passed());
    }
}
