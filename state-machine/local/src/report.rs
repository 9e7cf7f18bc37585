//! What a rehearsal measured and whether every guarantee held: `target/rehearsal/report.json`
//! and the short summary printed after a run.
//!
//! Everything here is computed from an execution's history and the workloads' tallies; it
//! reads no server. Times come from the history's RFC 3339 timestamps (wall clock, ms) and
//! each acknowledged commit's `at_unix_ms`.

use serde::Serialize;
use switchyard_state_machine::{EventType, Execution, HistoryEvent, Status};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The states that open and close the pause window: PgBouncer paused until it serves again.
pub const PAUSE_STATE: &str = "pause-pgbouncer";
pub const RESUME_STATES: [&str; 2] = ["resume-pgbouncer", "abort: resume-pgbouncer"];
/// The Fail state the switchover ends in when its abort path went through.
pub const ABORTED_STATE: &str = "aborted";

/// How the switchover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The switchover execution succeeded: the cell is on green.
    Switched,
    /// It failed in state `aborted`: the abort path put the cell back on blue.
    Aborted,
    /// Anything else: prepare failed, the switchover stopped elsewhere, or never ran.
    Failed,
}

impl Outcome {
    /// The outcome of a switchover execution (`None`: it never ran).
    pub fn of(switchover: Option<&Execution>) -> Self {
        match switchover {
            Some(e) if e.status == Status::Succeeded => Self::Switched,
            Some(e) if failed_in(e) == Some(ABORTED_STATE) => Self::Aborted,
            _ => Self::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Switched => "switched",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }
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

/// `target/rehearsal/report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub outcome: Outcome,
    /// Every guarantee held (the process exits 0 exactly then).
    pub passed: bool,
    /// The guarantees that did not hold, one sentence each.
    pub failures: Vec<String>,
    /// The server version PgBouncer served before the run (`SHOW server_version`).
    pub blue_version: Option<String>,
    /// The server version PgBouncer serves after the run.
    pub green_version: Option<String>,
    pub blue_major: u32,
    /// The target major (green's).
    pub target_major: u32,
    /// `pause-pgbouncer`'s first TaskScheduled → the last TaskSucceeded of
    /// `resume-pgbouncer` (or `abort: resume-pgbouncer`); null if PgBouncer was never
    /// resumed.
    pub pause_window_ms: Option<u64>,
    /// Every state inside the pause window and its duration: what the window is made of.
    pub pause_window_steps: Vec<WindowPart>,
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
    pub prepare: Option<ExecutionSummary>,
    pub switchover: Option<ExecutionSummary>,
    /// Every state entered by both executions, in order.
    pub steps: Vec<Step>,
    /// Set when the run could not be carried out at all (the cell did not start, …).
    pub error: Option<String>,
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
    execution
        .history
        .iter()
        .rev()
        .find(|e| matches!(e.kind, EventType::StateEntered(_)))
        .and_then(|e| e.state.as_deref())
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
    /// The short human summary printed after a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "rehearsal: PostgreSQL {} → {} (target {}), {} fixture rows; ledger {} clients through PgBouncer at full speed ({:.0} tx/s), direct writers running",
            opt(self.blue_version.as_deref(), ""),
            opt(self.green_version.as_deref(), ""),
            self.target_major,
            self.fixture_rows,
            self.workers,
            self.throughput_tx_per_s,
        ));
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
        line(format!("  outcome     {}", self.outcome.as_str()));
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
        line(format!(
            "  clients     max {} / p99 {} over {} commits acknowledged during the switchover",
            opt(self.client_max_latency_ms, " ms"),
            opt(self.client_p99_latency_ms, " ms"),
            self.client_commits_during_switchover
        ));
        line(format!(
            "  writes      {} acknowledged, {} lost, {} duplicated (audited on {}); {} failed transactions ({} in doubt)",
            self.acknowledged_writes,
            self.lost_writes,
            self.duplicated_writes,
            self.audited_on,
            self.failed_transactions,
            self.in_doubt_transactions
        ));
        line(format!(
            "  downstream  {}; direct writers {}",
            if self.downstream_equal {
                "equal to the primary"
            } else {
                "DIFFERS from the primary"
            },
            if self.direct_writers_resumed {
                "writing again"
            } else {
                "NOT writing again"
            }
        ));
        if let Some(error) = &self.error {
            line(format!("  error       {error}"));
        }
        if self.passed {
            line("PASS: every guarantee held".to_owned());
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
        assert_eq!(Outcome::of(Some(&execution)), Outcome::Failed);
        assert_eq!(failed_in(&execution), Some("done"));
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
