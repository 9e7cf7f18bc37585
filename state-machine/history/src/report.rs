//! What a rehearsal measured and whether every guarantee held: `target/rehearsal/report.json`
//! and the short summary printed after a run.
//!
//! Everything here is computed from an execution's history and the workloads' tallies; it
//! reads no server. Times come from the history's RFC 3339 timestamps (wall clock, ms) and
//! each acknowledged commit's `at_unix_ms`.

use serde::Serialize;
use switchyard_state_machine::{EventType, Execution, HistoryEvent, StateType, Status};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The states that open and close the pause window: PgBouncer paused until it serves again.
pub const PAUSE_STATE: &str = "pause-pgbouncer";
pub const RESUME_STATES: [&str; 3] = [
    "resume-pgbouncer",
    "switched: resume-pgbouncer",
    "abort: resume-pgbouncer",
];
/// The Fail state the switchover ends in when its abort path went through.
pub const ABORTED_STATE: &str = "aborted";

/// How a run ended: one closed set for every state machine, named after the checked-in
/// definitions' end states, and used everywhere a run's end is told (report.json, the
/// summary, `follow`, exit codes). Each says what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The switchover (or switch-back) succeeded: the cell is on its new primary.
    Switched,
    /// Writes go to the new primary; a step after the point of no return kept failing.
    SwitchedCleanupIncomplete,
    /// Writes go to the new primary through the instances resumed; others stay paused.
    SwitchedResumeIncomplete,
    /// PgBouncer is resumed, but an instance reaches another server than the new primary.
    SwitchedProbeMismatch,
    /// The abort path put the cell back where it was, writable, nothing lost.
    Aborted,
    /// An abort step kept failing: PgBouncer may still be paused.
    AbortIncomplete,
    /// The run changed nothing (the lock was held, the cell had switched, preflight found
    /// blockers).
    NotStarted,
    /// Green is a verified, streaming replica of blue.
    Prepared,
    /// The prepare phase stopped; it never touches clients.
    PrepareFailed,
    /// The rollback window is closed.
    Finalized,
    /// Closing the rollback window stopped part way.
    FinalizeFailed,
    /// A prepare was undone: blue is as before it.
    Abandoned,
    /// Undoing a prepare stopped part way.
    AbandonFailed,
    /// The execution ended without reaching any of the above (stopped by hand, timed out,
    /// a States.Runtime error): where the cell is must be looked at.
    Interrupted,
    /// No execution at all.
    NotRun,
}

impl Outcome {
    /// Every outcome, for tables and tests.
    pub const ALL: [Outcome; 15] = [
        Self::Switched,
        Self::SwitchedCleanupIncomplete,
        Self::SwitchedResumeIncomplete,
        Self::SwitchedProbeMismatch,
        Self::Aborted,
        Self::AbortIncomplete,
        Self::NotStarted,
        Self::Prepared,
        Self::PrepareFailed,
        Self::Finalized,
        Self::FinalizeFailed,
        Self::Abandoned,
        Self::AbandonFailed,
        Self::Interrupted,
        Self::NotRun,
    ];

    /// The outcome of one execution, from the end state it entered (`None`: none ran).
    pub fn of(execution: Option<&Execution>) -> Self {
        let Some(execution) = execution else {
            return Self::NotRun;
        };
        match end_state(execution) {
            // Ended by a later event than its end state (stopped by hand): interrupted.
            Some(state) if ended_in(execution, state) => {
                Self::of_end_state(state).unwrap_or(Self::Interrupted)
            }
            _ => Self::Interrupted,
        }
    }

    /// The outcome an end state of a checked-in definition stands for.
    pub fn of_end_state(state: &str) -> Option<Self> {
        Some(match state {
            "switched" => Self::Switched,
            "switched, cleanup incomplete" => Self::SwitchedCleanupIncomplete,
            "switched, resume incomplete" => Self::SwitchedResumeIncomplete,
            "switched, probe mismatch" => Self::SwitchedProbeMismatch,
            ABORTED_STATE => Self::Aborted,
            "abort incomplete" => Self::AbortIncomplete,
            // The abort machine on a switched cell: nothing was changed.
            "not started" | "refused: switched" => Self::NotStarted,
            "prepared" => Self::Prepared,
            "prepare failed" => Self::PrepareFailed,
            "finalized" => Self::Finalized,
            "finalize failed" => Self::FinalizeFailed,
            "abandoned" => Self::Abandoned,
            "abandon failed" => Self::AbandonFailed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Switched => "switched",
            Self::SwitchedCleanupIncomplete => "switched_cleanup_incomplete",
            Self::SwitchedResumeIncomplete => "switched_resume_incomplete",
            Self::SwitchedProbeMismatch => "switched_probe_mismatch",
            Self::Aborted => "aborted",
            Self::AbortIncomplete => "abort_incomplete",
            Self::NotStarted => "not_started",
            Self::Prepared => "prepared",
            Self::PrepareFailed => "prepare_failed",
            Self::Finalized => "finalized",
            Self::FinalizeFailed => "finalize_failed",
            Self::Abandoned => "abandoned",
            Self::AbandonFailed => "abandon_failed",
            Self::Interrupted => "interrupted",
            Self::NotRun => "not_run",
        }
    }

    /// The process exit code that reports it: 0 only when the run did what it was for;
    /// each other outcome its own code (2 stays the CLI's own usage and access errors).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Switched | Self::Prepared | Self::Finalized | Self::Abandoned => 0,
            Self::SwitchedCleanupIncomplete => 10,
            Self::SwitchedResumeIncomplete => 11,
            Self::SwitchedProbeMismatch => 12,
            Self::Aborted => 20,
            Self::AbortIncomplete => 21,
            Self::NotStarted => 22,
            Self::PrepareFailed => 30,
            Self::FinalizeFailed => 31,
            Self::AbandonFailed => 32,
            Self::Interrupted => 40,
            Self::NotRun => 41,
        }
    }

    /// Writes may be on the new primary: nothing routes the cell back.
    pub fn writes_moved(self) -> bool {
        matches!(
            self,
            Self::Switched
                | Self::SwitchedCleanupIncomplete
                | Self::SwitchedResumeIncomplete
                | Self::SwitchedProbeMismatch
        )
    }

    /// What to do now, in one line (docs/runbook.md says more).
    pub fn next_step(self) -> &'static str {
        match self {
            Self::Switched => "nothing now: watch the rollback window with check-drift; after the soak, run finalize",
            Self::SwitchedCleanupIncomplete => "writes are on the new primary: finish forward by hand — invoke the failed step again (never the abort path), then release-lock",
            Self::SwitchedResumeIncomplete => "clients of the instances named in the error wait: invoke resume-pgbouncer forward again once they are reachable",
            Self::SwitchedProbeMismatch => "PAGE: an instance reaches another server than the new primary; fix its DNS or configuration, never roll back",
            Self::Aborted => "the cell is where it was, writable, nothing lost: fix the cause in the error, then start the run again",
            Self::AbortIncomplete => "PgBouncer may still be paused: repair by hand in the abort path's order (docs/runbook.md), resume-pgbouncer abort first",
            Self::NotStarted => "nothing was changed: act on the error (lock held, already switched, preflight findings), then start again",
            Self::Prepared => "green is ready: run the switchover when it suits",
            Self::PrepareFailed => "no client was touched: fix the cause in the error, then start prepare again",
            Self::Finalized => "the rollback window is closed: delete the old cluster by hand (delete-old-cluster) once its final snapshot is all you keep",
            Self::FinalizeFailed => "what is left is named in the error: fix it, then start finalize again",
            Self::Abandoned => "blue is as before prepare: green can be deleted or prepared again",
            Self::AbandonFailed => "what is left is named in the error: fix it, then start abandon-prepare again",
            Self::Interrupted => "the execution ended outside its definition (stopped, timed out): read the journal and the cell before anything else (docs/runbook.md)",
            Self::NotRun => "nothing ran",
        }
    }
}

/// The last Fail or Succeed state the execution entered, if any.
pub fn end_state(execution: &Execution) -> Option<&str> {
    execution
        .history
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.kind,
                EventType::StateEntered(StateType::Fail | StateType::Succeed)
            )
        })
        .and_then(|e| e.state.as_deref())
}

/// Whether `state` is the one the execution ended in (no state entered after it).
fn ended_in(execution: &Execution, state: &str) -> bool {
    last_state(execution) == Some(state)
}

/// The last state the execution entered, whatever its type.
fn last_state(execution: &Execution) -> Option<&str> {
    execution
        .history
        .iter()
        .rev()
        .find(|e| matches!(e.kind, EventType::StateEntered(_)))
        .and_then(|e| e.state.as_deref())
}

/// One state entered by an execution, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// `prepare` or `switchover`.
    pub execution: String,
    pub name: String,
    pub started_at: String,
    /// When the state exited, or when the execution ended for a state that ended it.
    pub ended_at: Option<String>,
    pub duration_ms: Option<u64>,
    /// Tasks: how many times the state was invoked (`TaskScheduled`); 1 otherwise.
    pub attempts: u32,
    /// `succeeded`; `caught <Error>` (a Task whose error a Catch took); `failed <Error>`
    /// (the state ended the execution with that error); `running` if the history stops.
    pub outcome: String,
}

/// One state's time inside the pause window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowPart {
    pub name: String,
    pub duration_ms: u64,
    pub attempts: u32,
}

/// One execution, in brief.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionSummary {
    pub name: String,
    /// `SUCCEEDED`, `FAILED` or `TIMED_OUT`.
    pub status: Status,
    pub error: Option<String>,
    pub cause: Option<String>,
    /// The state that ended a failed execution.
    pub failed_in: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<u64>,
    /// The history written beside the report.
    pub history_file: String,
}

impl ExecutionSummary {
    pub fn of(execution: &Execution, history_file: &str) -> Self {
        let started_at = execution.history.first().map(|e| e.timestamp.clone());
        let ended_at = execution.history.last().map(|e| e.timestamp.clone());
        Self {
            name: execution.name.clone(),
            status: execution.status,
            error: execution.error.clone(),
            cause: execution.cause.clone(),
            failed_in: failed_in(execution).map(str::to_owned),
            duration_ms: between(started_at.as_deref(), ended_at.as_deref()),
            started_at,
            ended_at,
            history_file: history_file.to_owned(),
        }
    }
}

/// A workload's count, as reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkloadSummary {
    pub acknowledged: usize,
    /// Failed transactions, in-doubt commits included.
    pub failed: u64,
    pub in_doubt: usize,
    /// The first distinct client errors seen.
    pub errors: Vec<String>,
}

/// Every key audit of one workload on the primary the cell ended on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuditSummary {
    pub present_once: usize,
    pub missing: usize,
    pub duplicated: usize,
}

/// One reading of replication lag, taken from an execution's history: a
/// `check-replication` result (each subscription's slot lag), a `check-slot-lag` result
/// (bytes behind blue's LSN at the freeze), or the message of a `NotCaughtUp` /
/// `LagNotZero` retry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LagSample {
    /// `prepare` or `switchover`.
    pub execution: String,
    /// The state that measured it.
    pub state: String,
    /// When the measurement came back (the task's end, RFC 3339).
    pub at: String,
    /// The largest lag of any slot in that reading, in bytes.
    pub bytes: u64,
}

/// What a rehearsal measured of its clients and data (absent from a report made from an
/// execution's history alone: only the rehearsal runs the load and the audits).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Over the ledger commits acknowledged while the switchover execution ran.
    pub client_max_latency_ms: Option<f64>,
    pub client_p99_latency_ms: Option<f64>,
    pub client_commits_during_switchover: usize,
    /// Failed client transactions over the whole run (ledger and direct writers), in-doubt
    /// commits included.
    pub failed_transactions: u64,
    pub in_doubt_transactions: usize,
    /// Ledger and direct-writer commits acknowledged over the whole run.
    pub acknowledged_writes: usize,
    pub lost_writes: usize,
    pub duplicated_writes: usize,
    /// `green` if switched, `blue` otherwise: where the keys were audited.
    pub audited_on: String,
    /// The downstream search database holds exactly the primary's accounts and payments.
    pub downstream_equal: bool,
    /// The direct writers acknowledged new jobs after the switchover (ECS service back).
    pub direct_writers_resumed: bool,
    /// Ledger clients through PgBouncer, each at full speed (no think time).
    pub workers: usize,
    /// Ledger commits per second over the time the ledger ran.
    pub throughput_tx_per_s: f64,
    pub ledger_seconds: f64,
    pub fixture_rows: u32,
    pub ledger: WorkloadSummary,
    pub direct_writers: WorkloadSummary,
    pub ledger_audit: AuditSummary,
    pub direct_writer_audit: AuditSummary,
    /// How slow the emulated AWS was (`AWS_TIMINGS`: instant, fast or documented).
    pub aws_timings: String,
    /// Of the pause window, the milliseconds in which a cluster name had not yet reached
    /// the cluster a rename gave it in the RDS API: time spent waiting on (emulated) AWS,
    /// not on our own work. Null when PgBouncer was never resumed.
    pub pause_window_emulated_aws_ms: Option<u64>,
    /// Every emulated name delay of the run: when the API renamed, when the name followed.
    pub emulated_aws_delays: Vec<EmulatedDelay>,
    /// Blue's user tables' data at the end of the run (heap and TOAST, no indexes).
    pub data_bytes: Option<u64>,
    /// Prepare's initial copy: from the first of green's subscription tables appearing to
    /// all of them ready (`r`), as a watcher polling green every 250 ms saw it.
    pub initial_copy_ms: Option<u64>,
    /// `pgcopydb clone` of the same data between the same servers, before prepare: the
    /// standard tool's time for what prepare's initial copy does (`bench-scale` only).
    pub baseline_clone: Option<BaselineClone>,
    /// Names that, after PgBouncer served again, still lead (or will lead, as a rename
    /// made earlier takes effect late) to a cluster other than the one the API gives them
    /// at the end: a new connection by that name then reaches the wrong cluster.
    pub stale_names_after_window: Vec<String>,
}

/// `pgcopydb clone` of blue's application database into a scratch database on green's
/// server (dropped again), timed end to end: schema, COPY, indexes and constraints, and
/// the VACUUM ANALYZE it always runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BaselineClone {
    /// The command line without its URIs, e.g. `pgcopydb clone --table-jobs 2 …`.
    pub command: String,
    pub version: String,
    pub elapsed_ms: Option<u64>,
    /// Why the clone did not finish; its log is beside the report.
    pub error: Option<String>,
}

/// One rename as the emulated DNS served it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmulatedDelay {
    /// The cluster identifier whose name lagged.
    pub name: String,
    /// When the RDS API changed who holds it (RFC 3339).
    pub api_changed_at: String,
    /// When the name followed (RFC 3339).
    pub name_followed_at: String,
    /// The resource id the name led to from then (null: nowhere).
    pub leads_to: Option<String>,
    /// A later rename took effect first, so the name never led there for this one (e.g.
    /// the switchover's rename when the abort path renamed back before it followed).
    pub superseded: bool,
}

/// The periods after `after` (Unix ms) in which a name of `delays` leads to a cluster other
/// than its last holder in the API — e.g. after an abort, the switchover's rename taking
/// effect before the rename back does. One sentence each.
pub fn stale_names(delays: &[EmulatedDelay], after: i64) -> Vec<String> {
    let mut names: Vec<&str> = delays.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut stale = Vec::new();
    for name in names {
        let mut changes: Vec<&EmulatedDelay> = delays.iter().filter(|d| d.name == name).collect();
        changes.sort_by_key(|d| unix_ms(&d.api_changed_at));
        let Some(last) = changes.last() else { continue };
        let in_effect: Vec<(i64, &EmulatedDelay)> = changes
            .iter()
            .filter(|d| !d.superseded)
            .filter_map(|d| unix_ms(&d.name_followed_at).map(|at| (at, *d)))
            .collect();
        for (i, (_, d)) in in_effect.iter().enumerate() {
            let next = in_effect.get(i + 1);
            let wrong = d.leads_to.is_some() && d.leads_to != last.leads_to;
            if wrong && next.is_none_or(|(until, _)| *until > after) {
                stale.push(format!(
                    "name {name} leads to {} from {} to {}, though {}: a new connection by that name reaches a cluster that does not hold it then",
                    d.leads_to.as_deref().unwrap_or("nowhere"),
                    d.name_followed_at,
                    next.map_or("the end", |(_, n)| n.name_followed_at.as_str()),
                    last.leads_to.as_deref().map_or_else(
                        || "no cluster holds it in the API".to_owned(),
                        |h| format!("the API gives it to {h}")
                    ),
                ));
            }
        }
    }
    stale
}

/// Milliseconds of `[from, to]` covered by any of `spans` (each `[start, end]` in Unix ms).
pub fn covered_ms(from: i64, to: i64, spans: &[(i64, i64)]) -> u64 {
    let mut clipped: Vec<(i64, i64)> = spans
        .iter()
        .map(|&(a, b)| (a.max(from), b.min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    clipped.sort_unstable();
    let mut total = 0i64;
    let mut end = i64::MIN;
    for (a, b) in clipped {
        let start = a.max(end);
        if b > start {
            total += b - start;
        }
        end = end.max(b);
    }
    u64::try_from(total).unwrap_or(0)
}

/// `report.json`: of a rehearsal (`target/rehearsal/`), or of executions read back from
/// their histories (`switchyard report`), which has the same fields but the load's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The shape of this file: raised when a field changes meaning or goes.
    pub schema_version: u32,
    /// The cell and region the executions ran for (from their input).
    pub cell_id: Option<String>,
    pub region: Option<String>,
    pub outcome: Outcome,
    /// Every guarantee held (the process exits 0 exactly then).
    pub passed: bool,
    /// The guarantees that did not hold, one sentence each.
    pub failures: Vec<String>,
    /// The server version PgBouncer served before the run (`SHOW server_version`; from a
    /// history: preflight's reading of blue).
    pub blue_version: Option<String>,
    /// The server version PgBouncer serves after the run (from a history: preflight's
    /// reading of green).
    pub green_version: Option<String>,
    pub blue_major: u32,
    /// The target major (green's).
    pub target_major: u32,
    /// `pause-pgbouncer`'s first TaskScheduled → the last TaskSucceeded of
    /// `resume-pgbouncer` (or `abort: resume-pgbouncer`); null if PgBouncer was never
    /// resumed.
    pub pause_window_ms: Option<u64>,
    /// When the pause window opened and closed (closed: null if never resumed).
    pub pause_window_started_at: Option<String>,
    pub pause_window_ended_at: Option<String>,
    /// Every state inside the pause window and its duration: what the window is made of.
    pub pause_window_steps: Vec<WindowPart>,
    /// Replication lag as the run measured it, in time order.
    pub lag: Vec<LagSample>,
    /// The rehearsal's clients, writes and audits.
    #[serde(flatten)]
    pub load: Option<LoadReport>,
    pub prepare: Option<ExecutionSummary>,
    pub switchover: Option<ExecutionSummary>,
    /// Every state entered by both executions, in order.
    pub steps: Vec<Step>,
    /// Whether the pause window fits the cell's budgets and PgBouncer's
    /// `query_wait_timeout`; null when PgBouncer was never paused.
    pub window_fit: Option<WindowFit>,
    /// The way back the switch left (the old blue following green); null when the
    /// switchover never made one.
    pub way_back: Option<WayBack>,
    /// The switch-back a round trip ran after the switch (`REHEARSAL=roundtrip`): the
    /// same definition with the reversed document, and its own pause window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switchback: Option<Switchback>,
    /// Set when the run could not be carried out at all (the cell did not start, …).
    pub error: Option<String>,
}

/// A switch-back's execution: how it ended and its pause window, part by part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Switchback {
    pub outcome: Outcome,
    pub execution: ExecutionSummary,
    pub pause_window_ms: Option<u64>,
    pub pause_window_steps: Vec<WindowPart>,
}

impl Switchback {
    pub fn of(execution: &Execution, history_file: &str) -> Self {
        let (pause_window_ms, pause_window_steps) =
            pause_window(execution, &steps(SWITCHBACK_LABEL, execution));
        Self {
            outcome: Outcome::of(Some(execution)),
            execution: ExecutionSummary::of(execution, history_file),
            pause_window_ms,
            pause_window_steps,
        }
    }
}

/// The way back after a switch, from finalize-replication's outputs in the switchover's
/// history: what making it cost inside the pause window (`disable`) and, once the old blue
/// follows green (`reverse`), the WAL green's slot kept for it then, per database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WayBack {
    /// The publication, slot (and guard) made on green inside the window, all databases.
    pub made_in_window_ms: Option<u64>,
    /// `finalize-replication reverse` succeeded: the old blue follows green.
    pub following: bool,
    pub databases: Vec<WayBackDatabase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WayBackDatabase {
    pub name: String,
    /// WAL green's slot `switchyard_reverse` retained for the old blue once it streamed.
    pub retained_bytes: Option<i64>,
}

/// The last successful output of `state` in `execution` (its Lambda payload).
fn task_output<'a>(execution: &'a Execution, state: &str) -> Option<&'a serde_json::Value> {
    task_event(execution, &[state], EventType::TaskSucceeded, false)
        .and_then(|e| e.output.as_ref())
        .map(|o| o.get("Payload").unwrap_or(o))
}

impl WayBack {
    /// The states whose outputs say it.
    const DISABLE: &'static str = "finalize-replication disable";
    const REVERSE: &'static str = "finalize-replication reverse";

    /// From a switchover execution; `None` unless it switched (PgBouncer resumed toward
    /// green) after its `disable` step made the way back.
    pub fn of(execution: &Execution) -> Option<Self> {
        fn databases(output: &serde_json::Value) -> Vec<serde_json::Value> {
            output
                .get("databases")
                .and_then(serde_json::Value::as_array)
                .cloned()
                .unwrap_or_default()
        }
        task_event(
            execution,
            &["resume-pgbouncer", "switched: resume-pgbouncer"],
            EventType::TaskSucceeded,
            false,
        )?;
        let disable = task_output(execution, Self::DISABLE)?;
        let made: Vec<u64> = databases(disable)
            .iter()
            .filter_map(|d| {
                d.pointer("/reverse/elapsed_ms")
                    .and_then(serde_json::Value::as_u64)
            })
            .collect();
        let reverse = task_output(execution, Self::REVERSE);
        Some(Self {
            made_in_window_ms: (!made.is_empty()).then(|| made.iter().sum()),
            following: reverse.is_some(),
            databases: reverse
                .map(databases)
                .unwrap_or_default()
                .iter()
                .map(|d| WayBackDatabase {
                    name: d
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    retained_bytes: d
                        .pointer("/reverse/retained_bytes")
                        .and_then(serde_json::Value::as_i64),
                })
                .collect(),
        })
    }

    /// One line for the summary.
    fn describe(&self) -> String {
        let made = opt(self.made_in_window_ms, " ms inside the pause window");
        if !self.following {
            return format!(
                "made ({made}), but the old blue does not follow green: finalize-replication reverse did not succeed"
            );
        }
        let kept: Vec<String> = self
            .databases
            .iter()
            .map(|d| format!("{} {}", d.name, opt(d.retained_bytes, " bytes")))
            .collect();
        format!(
            "the old blue follows green (WAL green kept for it: {}); made in {made}",
            kept.join(", ")
        )
    }
}

/// The pause window against what the cell allows it: the pause budget (every forward step
/// gives up there), the abort path's budget on top of it, and PgBouncer's
/// `query_wait_timeout` (a client queued longer than that gets an error instead of waiting).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowFit {
    /// `budgets.pause_seconds` of the cell document the run was given, in ms.
    pub pause_budget_ms: u64,
    /// `budgets.abort_seconds`, in ms.
    pub abort_budget_ms: u64,
    /// As PgBouncer reported it (`SHOW CONFIG`) after the run; null in a report made from
    /// histories alone.
    pub query_wait_timeout_ms: Option<u64>,
    /// Pause → the abort path's first state (or → resume when it switched): the part of
    /// the window the pause budget bounds.
    pub forward_ms: u64,
    /// Pause → PgBouncer serving again, whichever way; null if it was never resumed.
    pub window_ms: Option<u64>,
    /// The pause budget less the forward part (negative: over it).
    pub pause_budget_margin_ms: i64,
    /// `query_wait_timeout` less the whole window (negative: queued clients got errors).
    pub client_wait_margin_ms: Option<i64>,
    /// When the forward path gave up while a name was still following a rename: pause →
    /// the moment that name would have led where it was going. The window AWS's delays
    /// would have needed at least, had the budget allowed it.
    pub needed_at_least_ms: Option<u64>,
    /// It switched inside the pause budget and before `query_wait_timeout`.
    pub fits: bool,
    /// One sentence: the margin, or why it does not fit and what that cost.
    pub verdict: String,
}

/// `AWS_TIMINGS` naming AWS's documented delays.
pub const DOCUMENTED_TIMINGS: &str = "documented";

/// The states the abort path runs, by the switchover definition's naming.
pub const ABORT_PREFIX: &str = "abort: ";

impl WindowFit {
    /// The fit of a switchover's pause window (`None` if it never paused). `budgets` is the
    /// cell document's; `name_follows_ms` each emulated name's (Unix ms it was renamed,
    /// Unix ms it followed), for what the window would have needed.
    pub fn of(
        execution: &Execution,
        budgets: &switchyard_cell::Budgets,
        query_wait_timeout_ms: Option<u64>,
        name_follows_ms: &[(i64, i64)],
    ) -> Option<Self> {
        let paused = task_event(execution, &[PAUSE_STATE], EventType::TaskScheduled, true)?;
        let start = unix_ms(&paused.timestamp)?;
        let resumed = task_event(execution, &RESUME_STATES, EventType::TaskSucceeded, false)
            .and_then(|e| unix_ms(&e.timestamp));
        let abort_started = execution
            .history
            .iter()
            .filter(|e| matches!(e.kind, EventType::StateEntered(_)))
            .filter(|e| {
                e.state
                    .as_deref()
                    .is_some_and(|s| s.starts_with(ABORT_PREFIX))
            })
            .find_map(|e| unix_ms(&e.timestamp))
            .filter(|&at| at >= start);
        let last = execution
            .history
            .last()
            .and_then(|e| unix_ms(&e.timestamp))?;
        let forward_end = abort_started.or(resumed).unwrap_or(last);
        let forward_ms = u64::try_from(forward_end - start).unwrap_or(0);
        let window_ms = resumed.map(|r| u64::try_from(r - start).unwrap_or(0));
        let pause_budget_ms = budgets.pause_seconds * 1000;
        let abort_budget_ms = budgets.abort_seconds * 1000;
        let margin = |budget: u64, used: u64| {
            i64::try_from(budget).unwrap_or(i64::MAX) - i64::try_from(used).unwrap_or(i64::MAX)
        };
        let pause_budget_margin_ms = margin(pause_budget_ms, forward_ms);
        let client_wait_margin_ms = query_wait_timeout_ms
            .zip(window_ms.or(Some(u64::try_from(last - start).unwrap_or(0))))
            .map(|(q, w)| margin(q, w));
        // A name renamed inside the window that had not followed when the forward path
        // gave up: the forward path was waiting on it.
        let needed_at_least_ms = abort_started.and_then(|gave_up| {
            name_follows_ms
                .iter()
                .filter(|&&(renamed, followed)| {
                    renamed >= start && renamed < gave_up && followed > gave_up
                })
                .map(|&(_, followed)| u64::try_from(followed - start).unwrap_or(0))
                .max()
        });
        let switched = execution.status == Status::Succeeded;
        let over_queue_wait = client_wait_margin_ms.is_some_and(|m| m <= 0);
        let fits = switched && pause_budget_margin_ms >= 0 && !over_queue_wait;
        let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
        let mut verdict = if fits {
            format!(
                "fits: the forward path took {} of the {} pause budget ({} to spare)",
                secs(forward_ms),
                secs(pause_budget_ms),
                secs(pause_budget_margin_ms.unsigned_abs())
            )
        } else if abort_started.is_some() {
            let gave_up_in = failed_in(execution).filter(|s| *s != ABORTED_STATE);
            format!(
                "does not fit: the forward path gave up after {} ({}: {}){}",
                secs(forward_ms),
                execution.error.as_deref().unwrap_or("?"),
                gave_up_in.map_or_else(
                    || format!("the pause budget is {}", secs(pause_budget_ms)),
                    |s| format!("ended in `{s}`")
                ),
                needed_at_least_ms.map_or_else(String::new, |n| format!(
                    "; the name it waited for would have followed its rename {} after the pause: the window would need at least that",
                    secs(n)
                ))
            )
        } else if switched {
            format!(
                "does not fit: it switched, but the forward path took {} of a {} pause budget",
                secs(forward_ms),
                secs(pause_budget_ms)
            )
        } else {
            format!(
                "undecided: the switchover ended in `{}` without the abort path",
                failed_in(execution).unwrap_or("?")
            )
        };
        match (window_ms, query_wait_timeout_ms) {
            (Some(w), Some(q)) if w >= q => verdict.push_str(&format!(
                "; PgBouncer served again {} after the pause, past its query_wait_timeout of {}: clients queued that long got an error",
                secs(w),
                secs(q)
            )),
            (Some(w), Some(q)) => verdict.push_str(&format!(
                "; PgBouncer served again {} after the pause, {} inside its query_wait_timeout",
                secs(w),
                secs(q - w)
            )),
            (None, _) => verdict.push_str("; PgBouncer was not resumed"),
            (Some(_), None) => {}
        }
        Some(Self {
            pause_budget_ms,
            abort_budget_ms,
            query_wait_timeout_ms,
            forward_ms,
            window_ms,
            pause_budget_margin_ms,
            client_wait_margin_ms,
            needed_at_least_ms,
            fits,
            verdict,
        })
    }
}

/// The budgets of the cell document an execution was started with (the defaults where it
/// names none).
pub fn budgets_of(execution: &Execution) -> switchyard_cell::Budgets {
    cell_of(execution)
        .and_then(|c| c.get("budgets"))
        .and_then(|b| serde_json::from_value(b.clone()).ok())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp.
pub fn unix_ms(stamp: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(stamp, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Milliseconds from `from` to `to` (never negative).
pub fn between(from: Option<&str>, to: Option<&str>) -> Option<u64> {
    let (a, b) = (unix_ms(from?)?, unix_ms(to?)?);
    Some(u64::try_from(b - a).unwrap_or(0))
}

/// The state whose error ended a failed execution: the last state entered.
pub fn failed_in(execution: &Execution) -> Option<&str> {
    if execution.status == Status::Succeeded {
        return None;
    }
    last_state(execution)
}

/// The states an execution entered, in order, with their attempts and outcomes.
pub fn steps(label: &str, execution: &Execution) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Per open state, its last task error, for a caught error's name. Keyed by state:
    // a Parallel's branches run side by side and their events interleave.
    let mut last_error: std::collections::HashMap<String, String> = Default::default();
    let end = execution.history.last().map(|e| e.timestamp.clone());
    for event in &execution.history {
        let state = event.state.as_deref().unwrap_or_default();
        let open = steps
            .iter_mut()
            .rev()
            .find(|s| s.name == state && s.ended_at.is_none());
        match event.kind {
            EventType::StateEntered(_) => {
                last_error.remove(state);
                steps.push(Step {
                    execution: label.to_owned(),
                    name: state.to_owned(),
                    started_at: event.timestamp.clone(),
                    ended_at: None,
                    duration_ms: None,
                    attempts: 0,
                    outcome: "running".to_owned(),
                });
            }
            EventType::TaskScheduled => {
                if let Some(step) = open {
                    step.attempts += 1;
                }
            }
            EventType::TaskSucceeded => {
                last_error.remove(state);
            }
            EventType::TaskFailed | EventType::TaskTimedOut => {
                let error = event.error.clone();
                last_error.insert(
                    state.to_owned(),
                    error.unwrap_or_else(|| "States.TaskFailed".to_owned()),
                );
            }
            EventType::StateExited(_) => {
                if let Some(step) = open {
                    step.ended_at = Some(event.timestamp.clone());
                    step.outcome = match last_error.remove(state) {
                        Some(error) => format!("caught {error}"),
                        None => "succeeded".to_owned(),
                    };
                }
            }
            _ => {}
        }
    }
    let error = execution.error.clone().unwrap_or_else(|| "?".to_owned());
    for step in &mut steps {
        if step.ended_at.is_none() {
            // The state that ended the execution: it has no StateExited.
            step.ended_at = end.clone();
            if execution.status != Status::Succeeded {
                step.outcome = format!("failed {error}");
            } else {
                step.outcome = "succeeded".to_owned();
            }
        }
        step.attempts = step.attempts.max(1);
        step.duration_ms = between(Some(&step.started_at), step.ended_at.as_deref());
    }
    steps
}

fn task_event<'a>(
    execution: &'a Execution,
    states: &[&str],
    kind: EventType,
    first: bool,
) -> Option<&'a HistoryEvent> {
    let mut matching = execution
        .history
        .iter()
        .filter(|e| e.kind == kind && e.state.as_deref().is_some_and(|s| states.contains(&s)));
    if first {
        matching.next()
    } else {
        matching.next_back()
    }
}

/// The pause window of a switchover execution, in ms, and the states inside it.
pub fn pause_window(execution: &Execution, steps: &[Step]) -> (Option<u64>, Vec<WindowPart>) {
    let Some(paused) = task_event(execution, &[PAUSE_STATE], EventType::TaskScheduled, true) else {
        return (None, Vec::new());
    };
    let resumed = task_event(execution, &RESUME_STATES, EventType::TaskSucceeded, false);
    let window_end = resumed
        .or_else(|| execution.history.last())
        .map(|e| e.timestamp.as_str());
    let (start, end) = (unix_ms(&paused.timestamp), window_end.and_then(unix_ms));
    let parts = steps
        .iter()
        .filter(|s| {
            // pause-pgbouncer is entered a moment before its task is scheduled.
            let at = unix_ms(&s.started_at);
            s.name == PAUSE_STATE
                || matches!((at, start, end), (Some(at), Some(a), Some(b)) if at >= a && at < b)
        })
        .map(|s| WindowPart {
            name: s.name.clone(),
            duration_ms: s.duration_ms.unwrap_or(0),
            attempts: s.attempts,
        })
        .collect();
    let window = resumed.and_then(|r| between(Some(&paused.timestamp), Some(&r.timestamp)));
    (window, parts)
}

/// When the pause window opened (`pause-pgbouncer`'s first TaskScheduled) and closed (the
/// last successful resume; `None` if PgBouncer was never resumed).
pub fn pause_bounds(execution: &Execution) -> (Option<String>, Option<String>) {
    let opened = task_event(execution, &[PAUSE_STATE], EventType::TaskScheduled, true);
    let closed =
        opened.and_then(|_| task_event(execution, &RESUME_STATES, EventType::TaskSucceeded, false));
    (
        opened.map(|e| e.timestamp.clone()),
        closed.map(|e| e.timestamp.clone()),
    )
}

/// The states whose results and errors carry replication lag.
pub const LAG_STATES: [&str; 2] = ["check-replication", "check-slot-lag"];

/// Every lag reading in an execution's history, in order: each `check-replication` and
/// `check-slot-lag` result, and each of their failures whose message names bytes behind.
pub fn lag_samples(label: &str, execution: &Execution) -> Vec<LagSample> {
    execution
        .history
        .iter()
        .filter_map(|event| {
            Some(LagSample {
                execution: label.to_owned(),
                state: event.state.clone()?,
                at: event.timestamp.clone(),
                bytes: lag_of_event(event)?,
            })
        })
        .collect()
}

/// The lag one event reports, if it is a lag reading.
pub fn lag_of_event(event: &HistoryEvent) -> Option<u64> {
    event.state.as_deref().filter(|s| LAG_STATES.contains(s))?;
    match event.kind {
        EventType::TaskSucceeded => event.output.as_ref().and_then(lag_of_result),
        EventType::TaskFailed => event.cause.as_deref().and_then(lag_of_message),
        _ => None,
    }
}

/// The largest lag in a check's result (a Lambda invoke result: the function's output is
/// under `Payload`): `subscriptions[].lag_bytes` or `databases[].slots[].bytes_behind`.
fn lag_of_result(result: &serde_json::Value) -> Option<u64> {
    let output = result.get("Payload").unwrap_or(result);
    let replication = output
        .get("subscriptions")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("lag_bytes").and_then(serde_json::Value::as_u64));
    let slots = output
        .get("databases")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("slots").and_then(serde_json::Value::as_array))
        .flatten()
        .filter_map(|s| s.get("bytes_behind").and_then(serde_json::Value::as_u64));
    replication.chain(slots).max()
}

/// The largest byte count in a `NotCaughtUp` ("… lags 5120 bytes …") or `LagNotZero`
/// ("… 5120 bytes behind …") message.
fn lag_of_message(message: &str) -> Option<u64> {
    let words: Vec<&str> = message.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[1].trim_end_matches([',', ';', ')']) == "bytes")
        .filter_map(|w| w[0].parse::<u64>().ok())
        .max()
}

/// The cell document an execution was started with (its first state's input).
fn cell_of(execution: &Execution) -> Option<&serde_json::Value> {
    execution
        .history
        .iter()
        .find(|e| matches!(e.kind, EventType::StateEntered(_)))
        .and_then(|e| e.input.as_ref())
        .and_then(|input| input.get("cell"))
}

/// preflight's readings of blue's and green's versions (`checked.*_version`, and the
/// `*_version_num` majors), from the last successful preflight in these executions.
fn preflight_versions(executions: &[&Execution]) -> Option<serde_json::Value> {
    executions
        .iter()
        .flat_map(|e| e.history.iter())
        .filter(|e| e.kind == EventType::TaskSucceeded && e.state.as_deref() == Some("preflight"))
        .filter_map(|e| e.output.as_ref())
        .map(|o| o.get("Payload").unwrap_or(o))
        .filter_map(|o| o.get("checked").cloned())
        .next_back()
}

impl Report {
    /// The report of executions read back from their histories (`switchyard report`):
    /// steps, pause window, lag, outcome; no load (only a rehearsal measures clients).
    /// `files` name where each history was written, as the summaries cite them.
    pub fn of_executions(
        prepare: Option<(&Execution, &str)>,
        switchover: Option<(&Execution, &str)>,
    ) -> Self {
        let mut all_steps = Vec::new();
        let mut lag = Vec::new();
        if let Some((e, _)) = prepare {
            all_steps.extend(steps(PREPARE_LABEL, e));
            lag.extend(lag_samples(PREPARE_LABEL, e));
        }
        let (mut window, mut parts, mut bounds) = (None, Vec::new(), (None, None));
        if let Some((e, _)) = switchover {
            let s = steps(SWITCHOVER_LABEL, e);
            (window, parts) = pause_window(e, &s);
            bounds = pause_bounds(e);
            all_steps.extend(s);
            lag.extend(lag_samples(SWITCHOVER_LABEL, e));
        }
        let executions: Vec<&Execution> =
            prepare.iter().chain(&switchover).map(|(e, _)| *e).collect();
        let checked = preflight_versions(&executions);
        let version = |key: &str| {
            checked
                .as_ref()
                .and_then(|c| c.get(key))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let major_of = |key: &str| {
            checked
                .as_ref()
                .and_then(|c| c.get(key))
                .and_then(serde_json::Value::as_u64)
                .map(|n| u32::try_from(n / 10_000).unwrap_or(0))
        };
        let target_major = executions
            .iter()
            .find_map(|e| cell_of(e))
            .and_then(|c| c.get("target_major_version"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|m| u32::try_from(m).ok())
            .or_else(|| major_of("green_version_num"))
            .unwrap_or(0);
        let cell_field = |field: &str| {
            executions
                .iter()
                .find_map(|e| cell_of(e))
                .and_then(|c| c.get(field))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let mut report = Self {
            schema_version: REPORT_SCHEMA_VERSION,
            cell_id: cell_field("cell_id"),
            region: cell_field("region"),
            // The run's end: the switchover's when there is one, else the prepare's.
            outcome: match (switchover, prepare) {
                (Some((e, _)), _) | (None, Some((e, _))) => Outcome::of(Some(e)),
                (None, None) => Outcome::NotRun,
            },
            passed: false,
            failures: Vec::new(),
            blue_version: version("blue_version"),
            green_version: version("green_version"),
            blue_major: major_of("blue_version_num").unwrap_or(0),
            target_major,
            pause_window_ms: window,
            pause_window_started_at: bounds.0,
            pause_window_ended_at: bounds.1,
            pause_window_steps: parts,
            lag,
            load: None,
            prepare: prepare.map(|(e, file)| ExecutionSummary::of(e, file)),
            switchover: switchover.map(|(e, file)| ExecutionSummary::of(e, file)),
            steps: all_steps,
            window_fit: switchover.and_then(|(e, _)| WindowFit::of(e, &budgets_of(e), None, &[])),
            way_back: switchover.and_then(|(e, _)| WayBack::of(e)),
            switchback: None,
            error: None,
        };
        report.judge();
        report
    }

    /// A rehearsal under AWS's documented timings whose switchover ran out of pause budget
    /// and went back to blue through the abort path: the window does not fit, as
    /// `window_fit` explains, and the abort is what must happen then.
    pub fn aborted_for_want_of_budget(&self) -> bool {
        self.outcome == Outcome::Aborted
            && self
                .load
                .as_ref()
                .is_some_and(|l| l.aws_timings == DOCUMENTED_TIMINGS)
            && self.switchover.as_ref().and_then(|s| s.error.as_deref())
                == Some(switchyard_errors::ErrorName::PauseBudgetExceeded.as_str())
            && self.window_fit.as_ref().is_some_and(|w| !w.fits)
    }

    /// Fills `failures` and `passed`: the switchover switched (or, under AWS's documented
    /// timings, gave up at its pause budget and aborted cleanly), and, for a rehearsal,
    /// every client and data guarantee held on the side the cell ended on.
    pub fn judge(&mut self) {
        let mut failures = Vec::new();
        let cleanly_over_budget = self.aborted_for_want_of_budget();
        match (self.outcome, &self.switchover, &self.prepare) {
            (Outcome::Switched, _, _) => {}
            // AWS's documented delays are there to be measured, not to fit: a switchover
            // that gave up at its pause budget and aborted cleanly is that run's honest
            // result, and `window_fit` says why.
            (Outcome::Aborted, Some(_), _) if cleanly_over_budget => {}
            // Past the point of no return: the cell switched, and what did not finish is
            // the failure — never "did not switch".
            (outcome, Some(s), _) if outcome.writes_moved() => failures.push(format!(
                "the switchover switched (writes are on green) but did not finish: {} in `{}`: {} — {}",
                outcome.as_str(),
                s.failed_in.as_deref().unwrap_or("?"),
                s.error.as_deref().unwrap_or("?"),
                s.cause.as_deref().unwrap_or("")
            )),
            (_, Some(s), _) => failures.push(format!(
                "the switchover did not switch: {} in `{}`: {} — {}",
                self.outcome.as_str(),
                s.failed_in.as_deref().unwrap_or("?"),
                s.error.as_deref().unwrap_or("?"),
                s.cause.as_deref().unwrap_or("")
            )),
            // A prepare alone, reported from its history: it is what it says.
            (Outcome::Prepared, None, Some(_)) if self.load.is_none() => {}
            (Outcome::Prepared, None, Some(_)) => {
                failures.push("prepared, but no switchover ran".to_owned())
            }
            (_, None, Some(p)) => failures.push(format!(
                "{} in `{}`: {} — {}; no switchover ran",
                self.outcome.as_str(),
                p.failed_in.as_deref().unwrap_or("?"),
                p.error.as_deref().unwrap_or("?"),
                p.cause.as_deref().unwrap_or("")
            )),
            (_, None, _) => failures.push("nothing ran".to_owned()),
        }
        if let Some(back) = &self.switchback {
            if back.outcome != Outcome::Switched {
                failures.push(format!(
                    "the switch-back did not switch: {} in `{}`: {} — {}",
                    back.outcome.as_str(),
                    back.execution.failed_in.as_deref().unwrap_or("?"),
                    back.execution.error.as_deref().unwrap_or("?"),
                    back.execution.cause.as_deref().unwrap_or("")
                ));
            }
        }
        if let Some(load) = &self.load {
            if load.failed_transactions > 0 {
                failures.push(format!(
                    "{} client transactions failed ({} in doubt); first errors: {:?}",
                    load.failed_transactions,
                    load.in_doubt_transactions,
                    load.ledger
                        .errors
                        .iter()
                        .chain(&load.direct_writers.errors)
                        .take(3)
                        .collect::<Vec<_>>()
                ));
            }
            if load.ledger.acknowledged == 0 || load.direct_writers.acknowledged == 0 {
                failures.push(format!(
                    "a workload wrote nothing (ledger {}, direct writers {}): the audit proves nothing",
                    load.ledger.acknowledged, load.direct_writers.acknowledged
                ));
            }
            if load.lost_writes > 0 || load.duplicated_writes > 0 {
                failures.push(format!(
                    "{} acknowledged writes lost and {} duplicated on {}",
                    load.lost_writes, load.duplicated_writes, load.audited_on
                ));
            }
            if !load.downstream_equal {
                failures.push(format!(
                    "the downstream search database does not hold what {} holds",
                    load.audited_on
                ));
            }
            if !load.direct_writers_resumed {
                failures
                    .push("the direct writers did not write again after the switchover".to_owned());
            }
            let served_major = self
                .green_version
                .as_deref()
                .and_then(|v| v.split('.').next())
                .and_then(|m| m.parse::<u32>().ok());
            // An aborted run must serve blue again; a switched one the target.
            let (expected, which) = if load.audited_on == "green" {
                (self.target_major, "the target major")
            } else {
                (self.blue_major, "blue's major")
            };
            if served_major != Some(expected) {
                failures.push(format!(
                    "PgBouncer serves {} after the run, not {which} {expected}",
                    self.green_version.as_deref().unwrap_or("nothing"),
                ));
            }
        }
        self.passed = failures.is_empty();
        self.failures = failures;
    }
}

/// report.json's `schema_version`.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// The execution labels steps and lag samples carry.
pub const PREPARE_LABEL: &str = "prepare";
pub const SWITCHOVER_LABEL: &str = "switchover";
pub const SWITCHBACK_LABEL: &str = "switchback";

/// Max and p99 (nearest rank) of `latencies_us`, in ms rounded to 0.1.
pub fn latency_stats(mut latencies_us: Vec<u64>) -> (Option<f64>, Option<f64>) {
    if latencies_us.is_empty() {
        return (None, None);
    }
    latencies_us.sort_unstable();
    let n = latencies_us.len();
    let rank = (n * 99).div_ceil(100).clamp(1, n);
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    (
        Some(ms(latencies_us[n - 1])),
        Some(ms(latencies_us[rank - 1])),
    )
}

/// Min, median and max of `values`.
pub fn spread(values: &[u64]) -> Option<(u64, u64, u64)> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    Some((v[0], median, v[n - 1]))
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v}{unit}"))
}

impl Report {
    /// The short human summary printed after a run (and by `switchyard report`).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        // A round trip ends where it started: the served version after it is blue's.
        let there = if self.switchback.is_some() {
            format!("{} and back to", self.target_major)
        } else {
            String::new()
        };
        match &self.load {
            Some(load) => line(format!(
                "rehearsal: PostgreSQL {} → {there}{}{} (target {}), {} fixture rows; ledger {} clients through PgBouncer at full speed ({:.0} tx/s), direct writers running",
                opt(self.blue_version.as_deref(), ""),
                if there.is_empty() { "" } else { " " },
                opt(self.green_version.as_deref(), ""),
                self.target_major,
                load.fixture_rows,
                load.workers,
                load.throughput_tx_per_s,
            )),
            None => line(format!(
                "run: PostgreSQL {} → {} (target {}), from the executions' histories",
                opt(self.blue_version.as_deref(), ""),
                opt(self.green_version.as_deref(), ""),
                self.target_major,
            )),
        }
        for (label, e) in [("prepare", &self.prepare), ("switchover", &self.switchover)] {
            match e {
                Some(e) => line(format!(
                    "  {label:<11} {} {:?} in {}{}",
                    e.name,
                    e.status,
                    opt(
                        e.duration_ms.map(|ms| format!("{:.1}", ms as f64 / 1000.0)),
                        " s"
                    ),
                    match (&e.failed_in, &e.error) {
                        (Some(state), Some(error)) => format!(" (in `{state}`: {error})"),
                        _ => String::new(),
                    }
                )),
                None => line(format!("  {label:<11} not run")),
            }
        }
        line(format!(
            "  outcome     {} (exit {}): {}",
            self.outcome.as_str(),
            self.outcome.exit_code(),
            self.outcome.next_step()
        ));
        line(format!(
            "  pause       {} (pause-pgbouncer scheduled → resume-pgbouncer succeeded)",
            opt(self.pause_window_ms, " ms")
        ));
        if !self.pause_window_steps.is_empty() {
            let parts: Vec<String> = self
                .pause_window_steps
                .iter()
                .map(|p| {
                    let tries = if p.attempts > 1 {
                        format!(" ×{}", p.attempts)
                    } else {
                        String::new()
                    };
                    format!("{} {}{tries}", p.name, p.duration_ms)
                })
                .collect();
            line(format!("              ms: {}", parts.join(", ")));
        }
        if let Some(fit) = &self.window_fit {
            line(format!("  window      {}", fit.verdict));
        }
        if let Some(back) = &self.switchback {
            line(format!(
                "  switchback  {} {:?} in {}: {}; pause {}",
                back.execution.name,
                back.execution.status,
                opt(
                    back.execution
                        .duration_ms
                        .map(|ms| format!("{:.1}", ms as f64 / 1000.0)),
                    " s"
                ),
                back.outcome.as_str(),
                opt(back.pause_window_ms, " ms")
            ));
            let parts: Vec<String> = back
                .pause_window_steps
                .iter()
                .map(|p| format!("{} {}", p.name, p.duration_ms))
                .collect();
            if !parts.is_empty() {
                line(format!("              ms: {}", parts.join(", ")));
            }
        }
        if let Some(way_back) = &self.way_back {
            line(format!("  way back    {}", way_back.describe()));
        }
        for stale in self.load.iter().flat_map(|l| &l.stale_names_after_window) {
            line(format!("  names       {stale}"));
        }
        if let Some(load) = &self.load {
            line(format!(
                "  aws         {} timings; {} of the pause window waiting on emulated AWS (names following renames)",
                load.aws_timings,
                opt(load.pause_window_emulated_aws_ms, " ms")
            ));
        }
        if let (Some(first), Some(last)) = (self.lag.first(), self.lag.last()) {
            let max = self.lag.iter().map(|l| l.bytes).max().unwrap_or(0);
            line(format!(
                "  lag         {} readings: first {} bytes ({}), max {max} bytes, last {} bytes ({})",
                self.lag.len(),
                first.bytes,
                first.state,
                last.bytes,
                last.state
            ));
        }
        if let Some(load) = &self.load {
            line(format!(
                "  clients     max {} / p99 {} over {} commits acknowledged during the switchover",
                opt(load.client_max_latency_ms, " ms"),
                opt(load.client_p99_latency_ms, " ms"),
                load.client_commits_during_switchover
            ));
            line(format!(
                "  writes      {} acknowledged, {} lost, {} duplicated (audited on {}); {} failed transactions ({} in doubt)",
                load.acknowledged_writes,
                load.lost_writes,
                load.duplicated_writes,
                load.audited_on,
                load.failed_transactions,
                load.in_doubt_transactions
            ));
            line(format!(
                "  downstream  {}; direct writers {}",
                if load.downstream_equal {
                    "equal to the primary"
                } else {
                    "DIFFERS from the primary"
                },
                if load.direct_writers_resumed {
                    "writing again"
                } else {
                    "NOT writing again"
                }
            ));
        }
        if let Some(error) = &self.error {
            line(format!("  error       {error}"));
        }
        if self.passed {
            line(match self.load {
                Some(_) if self.aborted_for_want_of_budget() => {
                    "PASS: every guarantee held, and the abort path put the cell back on blue: at AWS's documented delays the pause window does not fit (see window above)".to_owned()
                }
                Some(_) => "PASS: every guarantee held".to_owned(),
                None => "SWITCHED".to_owned(),
            });
        } else {
            line("FAIL:".to_owned());
            for f in &self.failures {
                line(format!("  - {f}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_stats_take_the_nearest_rank() {
        let (max, p99) = latency_stats((1..=1000).map(|i| i * 1000).collect());
        assert_eq!((max, p99), (Some(1000.0), Some(990.0)));
        assert_eq!(latency_stats(vec![1_234]), (Some(1.2), Some(1.2)));
        assert_eq!(latency_stats(Vec::new()), (None, None));
    }

    #[test]
    fn emulated_delays_count_once_inside_the_window() {
        // Window 100..200; delays overlapping each other and both window edges.
        let spans = [(50, 120), (110, 150), (180, 400), (300, 350)];
        assert_eq!(covered_ms(100, 200, &spans), 20 + 30 + 20);
        assert_eq!(covered_ms(100, 200, &[]), 0);
        assert_eq!(covered_ms(100, 200, &[(0, 1000)]), 100);
    }

    #[test]
    fn a_rename_taking_effect_after_the_rename_back_is_a_stale_name() {
        let delay = |name: &str, changed: &str, followed: &str, to: Option<&str>, superseded| {
            EmulatedDelay {
                name: name.to_owned(),
                api_changed_at: format!("2026-12-03T08:{changed}Z"),
                name_followed_at: format!("2026-12-03T08:{followed}Z"),
                leads_to: to.map(str::to_owned),
                superseded,
            }
        };
        // The switchover gives the cell's name to green at 08:00; the abort path gives it
        // back to blue at 08:01. Each takes two minutes: green from 08:02 to 08:03.
        let delays = [
            delay("cell", "00:00", "02:00", Some("green"), false),
            delay("cell", "01:00", "03:00", Some("blue"), false),
        ];
        let window_end = unix_ms("2026-12-03T08:01:01Z").expect("time");
        let stale = stale_names(&delays, window_end);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert!(
            stale[0].starts_with("name cell leads to green from 2026-12-03T08:02:00Z to 2026-12-03T08:03:00Z, though the API gives it to blue"),
            "{}",
            stale[0]
        );
        // A rename that never takes effect (a later one did first) is not stale; nor is
        // a period over before the window closed.
        let delays = [
            delay("cell", "00:00", "02:00", Some("green"), true),
            delay("cell", "01:00", "01:30", Some("blue"), false),
        ];
        assert!(stale_names(&delays, window_end).is_empty());
        let late = unix_ms("2026-12-03T08:05:00Z").expect("time");
        assert!(stale_names(
            &[
                delay("cell", "00:00", "02:00", Some("green"), false),
                delay("cell", "01:00", "03:00", Some("blue"), false)
            ],
            late
        )
        .is_empty());
    }

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(&[5, 1, 3]), Some((1, 3, 5)));
        assert_eq!(spread(&[4, 1, 3, 2]), Some((1, 2, 4)));
        assert_eq!(spread(&[]), None);
    }

    /// Tasks that take `ms` each; `revoke-writes` fails once (retried), `check` fails
    /// (caught).
    struct Sleepy;

    impl switchyard_state_machine::TaskHandler for Sleepy {
        fn invoke(
            &self,
            _resource: &str,
            parameters: serde_json::Value,
        ) -> switchyard_state_machine::BoxFuture<
            '_,
            Result<serde_json::Value, switchyard_state_machine::TaskFailure>,
        > {
            Box::pin(async move {
                let ms = parameters["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                match parameters["fail"].as_str() {
                    Some(error) => Err(switchyard_state_machine::TaskFailure::new(error, "no")),
                    None => Ok(serde_json::json!({})),
                }
            })
        }
    }

    const DEFINITION: &str = r#"{
      "StartAt": "before",
      "States": {
        "before": {"Type": "Task", "Resource": "local", "Parameters": {"ms": 50}, "Next": "pause-pgbouncer"},
        "pause-pgbouncer": {"Type": "Task", "Resource": "local", "Parameters": {"ms": 100}, "Next": "check"},
        "check": {"Type": "Task", "Resource": "local", "Parameters": {"ms": 10, "fail": "LagNotZero"},
          "Retry": [{"ErrorEquals": ["LagNotZero"], "IntervalSeconds": 1, "MaxAttempts": 1}],
          "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "resume-pgbouncer"}],
          "Next": "resume-pgbouncer"},
        "resume-pgbouncer": {"Type": "Task", "Resource": "local", "Parameters": {"ms": 200}, "Next": "after"},
        "after": {"Type": "Task", "Resource": "local", "Parameters": {"ms": 300}, "Next": "done"},
        "done": {"Type": "Fail", "Error": "Boom", "Cause": "end"}
      }
    }"#;

    #[tokio::test(start_paused = true)]
    async fn steps_and_the_pause_window_come_from_the_history() {
        let definition =
            switchyard_state_machine::Definition::from_json(DEFINITION).expect("definition");
        let execution = switchyard_state_machine::Executor::new(&definition, &Sleepy)
            .run(serde_json::json!({}))
            .await;
        let s = steps("switchover", &execution);
        let view: Vec<(&str, u32, &str, Option<u64>)> = s
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.attempts,
                    s.outcome.as_str(),
                    s.duration_ms,
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("before", 1, "succeeded", Some(50)),
                ("pause-pgbouncer", 1, "succeeded", Some(100)),
                ("check", 2, "caught LagNotZero", Some(1020)),
                ("resume-pgbouncer", 1, "succeeded", Some(200)),
                ("after", 1, "succeeded", Some(300)),
                ("done", 1, "failed Boom", Some(0)),
            ]
        );
        let (window, parts) = pause_window(&execution, &s);
        assert_eq!(window, Some(100 + 1020 + 200));
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pause-pgbouncer", "check", "resume-pgbouncer"]);
        // "done" is no end state of a definition: the run cannot be said to have done
        // what it was for.
        assert_eq!(Outcome::of(Some(&execution)), Outcome::Interrupted);
        assert_eq!(failed_in(&execution), Some("done"));
    }

    /// A switchover whose window step runs `ms` and, with `fail`, gives up; its abort path
    /// resumes PgBouncer and ends in `aborted` with the step's error.
    fn window_run(ms: u64, fail: Option<&str>) -> String {
        let fail = fail.map_or_else(String::new, |f| format!(r#", "fail": "{f}""#));
        format!(
            r#"{{
          "StartAt": "pause-pgbouncer",
          "States": {{
            "pause-pgbouncer": {{"Type": "Task", "Resource": "local", "Parameters": {{"ms": 100}}, "Next": "rename-clusters forward"}},
            "rename-clusters forward": {{"Type": "Task", "Resource": "local", "Parameters": {{"ms": {ms}{fail}}},
              "Catch": [{{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "abort: resume-pgbouncer"}}],
              "Next": "resume-pgbouncer"}},
            "resume-pgbouncer": {{"Type": "Task", "Resource": "local", "Parameters": {{"ms": 200}}, "End": true}},
            "abort: resume-pgbouncer": {{"Type": "Task", "Resource": "local", "Parameters": {{"ms": 200}}, "ResultPath": null, "Next": "aborted"}},
            "aborted": {{"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"}}
          }}
        }}"#
        )
    }

    async fn run_window(ms: u64, fail: Option<&str>) -> Execution {
        let definition = switchyard_state_machine::Definition::from_json(&window_run(ms, fail))
            .expect("definition");
        switchyard_state_machine::Executor::new(&definition, &Sleepy)
            .run(serde_json::json!({"cell": {"budgets": {"pause_seconds": 1, "abort_seconds": 1}}}))
            .await
    }

    /// A definition that runs one Task then enters end state `end` (Succeed when `ok`).
    async fn ending_in(end: &str, ok: bool) -> Execution {
        let end_state = if ok {
            r#"{"Type": "Succeed"}"#.to_owned()
        } else {
            r#"{"Type": "Fail", "Error": "ResumeIncomplete", "Cause": "one instance paused"}"#
                .to_owned()
        };
        let json = format!(
            r#"{{"StartAt": "step", "States": {{
                "step": {{"Type": "Task", "Resource": "local", "Parameters": {{"ms": 10}}, "Next": "{end}"}},
                "{end}": {end_state}
            }}}}"#
        );
        let definition =
            switchyard_state_machine::Definition::from_json(&json).expect("definition");
        switchyard_state_machine::Executor::new(&definition, &Sleepy)
            .run(serde_json::json!({"cell": {"cell_id": "local-a", "region": "us-east-1"}}))
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_switch_whose_cleanup_failed_is_switched_and_a_prepare_alone_is_prepared() {
        let unclean = ending_in("switched, cleanup incomplete", false).await;
        let report = Report::of_executions(None, Some((&unclean, "s.json")));
        assert_eq!(report.outcome, Outcome::SwitchedCleanupIncomplete);
        assert!(report.outcome.writes_moved());
        assert_eq!(report.outcome.exit_code(), 10);
        assert!(!report.passed);
        assert!(
            report.failures[0].starts_with("the switchover switched (writes are on green)")
                && !report.failures[0].contains("did not switch"),
            "{:?}",
            report.failures
        );
        assert!(report.summary().contains(
            "outcome     switched_cleanup_incomplete (exit 10): writes are on the new primary"
        ));
        assert_eq!(report.schema_version, REPORT_SCHEMA_VERSION);
        assert_eq!(report.cell_id.as_deref(), Some("local-a"));
        assert_eq!(report.region.as_deref(), Some("us-east-1"));

        let prepared = ending_in("prepared", true).await;
        let report = Report::of_executions(Some((&prepared, "p.json")), None);
        assert_eq!(report.outcome, Outcome::Prepared);
        assert!(report.passed, "{:?}", report.failures);
        assert!(report.summary().contains("outcome     prepared (exit 0)"));
        let failed = ending_in("prepare failed", false).await;
        let report = Report::of_executions(Some((&failed, "p.json")), None);
        assert_eq!(report.outcome, Outcome::PrepareFailed);
        assert!(report.failures[0].starts_with("prepare_failed in `prepare failed`"));
    }

    #[test]
    fn every_outcome_has_its_own_name_and_code_and_the_definitions_name_them_all() {
        let names: std::collections::HashSet<&str> =
            Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::ALL.len());
        let failing: Vec<u8> = Outcome::ALL
            .iter()
            .map(|o| o.exit_code())
            .filter(|&c| c != 0)
            .collect();
        let distinct: std::collections::HashSet<u8> = failing.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            failing.len(),
            "one code per failing outcome"
        );
        assert!(!distinct.contains(&2), "2 is the command's own error");
        // Every end state of every checked-in definition is one of them.
        for name in crate::DEFINITIONS {
            let text = std::fs::read_to_string(crate::definition_path(name)).expect("definition");
            let definition: serde_json::Value = serde_json::from_str(&text).expect("json");
            for (state, body) in definition["States"].as_object().expect("states") {
                if matches!(body["Type"].as_str(), Some("Succeed" | "Fail")) {
                    assert!(
                        Outcome::of_end_state(state).is_some(),
                        "{name}: end state {state:?} has no outcome"
                    );
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_inside_its_budgets_fits_with_its_margin() {
        let execution = run_window(500, None).await;
        let budgets = budgets_of(&execution);
        assert_eq!((budgets.pause_seconds, budgets.abort_seconds), (1, 1));
        let fit = WindowFit::of(&execution, &budgets, Some(120_000), &[]).expect("paused");
        assert!(fit.fits, "{fit:?}");
        assert_eq!(fit.forward_ms, 100 + 500 + 200);
        assert_eq!(fit.window_ms, Some(800));
        assert_eq!(fit.pause_budget_margin_ms, 200);
        assert_eq!(fit.client_wait_margin_ms, Some(120_000 - 800));
        assert_eq!(fit.needed_at_least_ms, None);
        assert!(fit.verdict.starts_with("fits: "), "{}", fit.verdict);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_that_ran_out_of_budget_says_so_and_what_it_needed() {
        let execution = run_window(1500, Some("PauseBudgetExceeded")).await;
        let paused = task_event(&execution, &[PAUSE_STATE], EventType::TaskScheduled, true)
            .and_then(|e| unix_ms(&e.timestamp))
            .expect("paused");
        // A name renamed 300 ms into the window, following 5 s later: still lagging when
        // the forward path gave up at 1.6 s. One renamed after it gave up does not count.
        let names = [
            (paused + 300, paused + 5300),
            (paused + 1700, paused + 9000),
        ];
        let fit = WindowFit::of(&execution, &budgets_of(&execution), Some(1_700), &names)
            .expect("paused");
        assert!(!fit.fits);
        assert_eq!(fit.forward_ms, 1600);
        assert_eq!(fit.pause_budget_margin_ms, -600);
        assert_eq!(fit.window_ms, Some(1800));
        assert_eq!(fit.client_wait_margin_ms, Some(-100));
        assert_eq!(fit.needed_at_least_ms, Some(5300));
        for words in [
            "does not fit",
            "PauseBudgetExceeded",
            "at least that",
            "past its query_wait_timeout",
        ] {
            assert!(fit.verdict.contains(words), "{words}: {}", fit.verdict);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_documented_run_may_abort_for_its_budget_and_pass() {
        let execution = run_window(1500, Some("PauseBudgetExceeded")).await;
        let mut report = Report::of_executions(None, Some((&execution, "s.json")));
        assert_eq!(report.outcome, Outcome::Aborted);
        assert!(
            !report.passed,
            "a history alone proves nothing about clients"
        );
        let load = |timings: &str| LoadReport {
            aws_timings: timings.to_owned(),
            audited_on: "blue".to_owned(),
            downstream_equal: true,
            direct_writers_resumed: true,
            ledger: WorkloadSummary {
                acknowledged: 10,
                ..WorkloadSummary::default()
            },
            direct_writers: WorkloadSummary {
                acknowledged: 10,
                ..WorkloadSummary::default()
            },
            ..LoadReport::default()
        };
        report.blue_major = 14;
        report.target_major = 17;
        report.green_version = Some("14.23".to_owned());
        report.load = Some(load("fast"));
        report.judge();
        assert!(
            !report.passed,
            "under fast timings the rehearsal must switch"
        );
        assert!(
            report.failures[0].contains("did not switch"),
            "{:?}",
            report.failures
        );

        report.load = Some(load(DOCUMENTED_TIMINGS));
        report.judge();
        assert!(report.passed, "{:?}", report.failures);
        assert!(
            report.summary().contains("does not fit"),
            "{}",
            report.summary()
        );

        // Still serving green's major after an abort is a failure, whatever the timings.
        report.green_version = Some("17.9".to_owned());
        report.judge();
        assert!(!report.passed);
        assert!(
            report.failures[0].contains("not blue's major 14"),
            "{:?}",
            report.failures
        );

        // Aborted for any other reason: not excused.
        let other = run_window(100, Some("LagNotZero")).await;
        let mut report = Report::of_executions(None, Some((&other, "s.json")));
        report.blue_major = 14;
        report.green_version = Some("14.23".to_owned());
        report.load = Some(load(DOCUMENTED_TIMINGS));
        report.judge();
        assert!(!report.passed);
    }

    #[test]
    fn timestamps_are_milliseconds_apart() {
        assert_eq!(
            between(
                Some("2025-01-01T00:00:00.250Z"),
                Some("2025-01-01T00:00:01.000Z")
            ),
            Some(750)
        );
        assert_eq!(unix_ms("not a time"), None);
    }
}
