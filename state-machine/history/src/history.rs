//! Execution histories read back for a report: the local executor's (`write_history`'s
//! file) or Step Functions' own (`GetExecutionHistory`, as `aws stepfunctions
//! get-execution-history` prints it or `switchyard report` fetches it), both turned into
//! the local executor's [`Execution`], so one report serves both.
//!
//! Step Functions' task events do not name their state; each event's state is found by
//! following `previousEventId` back to a `…StateEntered`, which also keeps a Parallel's
//! interleaved branches apart.

use std::collections::HashMap;

use serde_json::Value;
use switchyard_state_machine::{EventType, Execution, HistoryEvent, Status, LAMBDA_INVOKE};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Reads a history file of either kind. `name` names an AWS history's execution (its
/// events do not carry it); a local history carries its own.
pub fn read_execution(text: &str, name: &str) -> Result<Execution, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON history: {e}"))?;
    if value.get("history").is_some() {
        return serde_json::from_value(value)
            .map_err(|e| format!("not a local executor history: {e}"));
    }
    let events = value.get("events").and_then(Value::as_array).ok_or(
        "neither a local executor history (`history`) nor a Step Functions one (`events`)",
    )?;
    from_aws_events(events, name)
}

/// An execution from Step Functions' history events (the API's JSON shape, camelCase).
/// Fails for an execution that has not finished: a report describes a finished run.
pub fn from_aws_events(events: &[Value], name: &str) -> Result<Execution, String> {
    let history = aws_events(events)?;
    let last = events.last().ok_or("the history is empty")?;
    let kind = last.get("type").and_then(Value::as_str).unwrap_or_default();
    let details = |key: &str| last.get(key).cloned().unwrap_or(Value::Null);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let (status, error, cause, output) = match kind {
        "ExecutionSucceeded" => {
            let d = details("executionSucceededEventDetails");
            (Status::Succeeded, None, None, text(&d, "output").map(parse_json))
        }
        "ExecutionFailed" => {
            let d = details("executionFailedEventDetails");
            (Status::Failed, text(&d, "error"), text(&d, "cause"), None)
        }
        "ExecutionAborted" => {
            let d = details("executionAbortedEventDetails");
            let error = text(&d, "error").unwrap_or_else(|| "ExecutionAborted".to_owned());
            (Status::Failed, Some(error), text(&d, "cause"), None)
        }
        "ExecutionTimedOut" => {
            let d = details("executionTimedOutEventDetails");
            (Status::TimedOut, text(&d, "error"), text(&d, "cause"), None)
        }
        other => {
            return Err(format!(
                "execution {name} has not finished (last event {other}): follow it, report it once it ends"
            ))
        }
    };
    Ok(Execution {
        name: name.to_owned(),
        status,
        output,
        error,
        cause,
        history,
        // Step Functions keeps a child's history with the child: fetched by its own ARN.
        children: Vec::new(),
    })
}

/// Step Functions' events as the local executor records them, as far as they have come
/// (also what `switchyard follow` feeds on). Event types the local history does not
/// record (`TaskStarted`, `TaskSubmitted`, …) are left out; their states still resolve.
pub fn aws_events(events: &[Value]) -> Result<Vec<HistoryEvent>, String> {
    let mut state_of: HashMap<i64, Option<String>> = HashMap::new();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut out = Vec::new();
    for event in events {
        let id = event
            .get("id")
            .and_then(Value::as_i64)
            .ok_or("an event without an id")?;
        let kind_name = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let entered = event.get("stateEnteredEventDetails");
        let exited = event.get("stateExitedEventDetails");
        let named = entered
            .or(exited)
            .and_then(|d| d.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let previous = event
            .get("previousEventId")
            .and_then(Value::as_i64)
            .and_then(|p| state_of.get(&p).cloned())
            .flatten();
        // An event after a StateExited belongs to no state until the next one is entered.
        let state = named.clone().or(previous);
        let carried = if exited.is_some() {
            None
        } else {
            state.clone()
        };
        state_of.insert(id, carried);
        let Ok(kind) = kind_name.parse::<EventType>() else {
            continue;
        };
        let mut e = HistoryEvent::new(kind, state.as_deref());
        e.id = u64::try_from(id).unwrap_or(0);
        e.timestamp = timestamp(event.get("timestamp"))
            .ok_or_else(|| format!("event {id}: no readable timestamp"))?;
        let text = |details: &str, key: &str| {
            event
                .get(details)
                .and_then(|d| d.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match kind {
            EventType::StateEntered(_) => {
                e.input = text("stateEnteredEventDetails", "input").map(parse_json);
            }
            EventType::StateExited(_) => {
                e.output = text("stateExitedEventDetails", "output").map(parse_json);
            }
            EventType::ExecutionStarted => {
                e.input = text("executionStartedEventDetails", "input").map(parse_json);
            }
            EventType::TaskScheduled => {
                let d = "taskScheduledEventDetails";
                e.resource = match (text(d, "resourceType"), text(d, "resource")) {
                    (Some(t), Some(r)) if t == "lambda" && r == "invoke" => {
                        Some(LAMBDA_INVOKE.to_owned())
                    }
                    (Some(t), Some(r)) => Some(format!("arn:aws:states:::{t}:{r}")),
                    _ => None,
                };
                e.input = text(d, "parameters").map(parse_json);
                if let Some(state) = &state {
                    let n = attempts.entry(state.clone()).or_insert(0);
                    *n += 1;
                    e.attempt = Some(*n);
                }
            }
            EventType::TaskSucceeded => {
                e.output = text("taskSucceededEventDetails", "output").map(parse_json);
            }
            EventType::TaskFailed => {
                e.error = text("taskFailedEventDetails", "error");
                e.cause = text("taskFailedEventDetails", "cause");
            }
            EventType::TaskTimedOut => {
                e.error = text("taskTimedOutEventDetails", "error")
                    .or_else(|| Some("States.Timeout".to_owned()));
                e.cause = text("taskTimedOutEventDetails", "cause");
            }
            EventType::ExecutionFailed => {
                e.error = text("executionFailedEventDetails", "error");
                e.cause = text("executionFailedEventDetails", "cause");
            }
            _ => {}
        }
        out.push(e);
    }
    Ok(out)
}

/// A JSON document carried as a string; kept as a string when it is not JSON.
fn parse_json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// RFC 3339 UTC with milliseconds, as the local executor stamps events, from an RFC 3339
/// string or seconds since the epoch (the AWS CLI's two output styles).
fn timestamp(value: Option<&Value>) -> Option<String> {
    let at = match value? {
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339).ok()?,
        Value::Number(n) => {
            let nanos = (n.as_f64()? * 1e9).round() as i128;
            OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?
        }
        _ => return None,
    };
    Some(stamp(at))
}

/// `2026-11-22T10:00:00.123Z`.
pub fn stamp(at: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Step Functions history as `aws stepfunctions get-execution-history` prints it:
    /// a Parallel whose branches interleave, a retried task, a lag result.
    fn aws_history() -> Value {
        let lambda = |output: Value| {
            json!({"ExecutedVersion": "$LATEST", "Payload": output, "StatusCode": 200}).to_string()
        };
        json!({"events": [
            {"id": 1, "type": "ExecutionStarted", "timestamp": "2026-11-22T10:00:00.000000+00:00",
             "executionStartedEventDetails": {"input": "{\"cell\":{\"target_major_version\":17}}"}},
            {"id": 2, "previousEventId": 1, "type": "TaskStateEntered", "timestamp": "2026-11-22T10:00:00.010+00:00",
             "stateEnteredEventDetails": {"name": "check-replication", "input": "{\"cell\":{\"target_major_version\":17}}"}},
            {"id": 3, "previousEventId": 2, "type": "TaskScheduled", "timestamp": 1795341600.02,
             "taskScheduledEventDetails": {"resourceType": "lambda", "resource": "invoke", "region": "eu-west-1", "parameters": "{}"}},
            {"id": 4, "previousEventId": 3, "type": "TaskStarted", "timestamp": 1795341600.03},
            {"id": 5, "previousEventId": 4, "type": "TaskFailed", "timestamp": 1795341600.5,
             "taskFailedEventDetails": {"error": "NotCaughtUp", "cause": "green is not caught up: switchyard_rest in app: slot switchyard_rest lags 40960 bytes (budget 1024)"}},
            {"id": 6, "previousEventId": 5, "type": "TaskScheduled", "timestamp": 1795341601.5,
             "taskScheduledEventDetails": {"resourceType": "lambda", "resource": "invoke", "region": "eu-west-1", "parameters": "{}"}},
            {"id": 7, "previousEventId": 6, "type": "TaskStarted", "timestamp": 1795341601.51},
            {"id": 8, "previousEventId": 7, "type": "TaskSucceeded", "timestamp": 1795341601.9,
             "taskSucceededEventDetails": {"resourceType": "lambda", "resource": "invoke",
               "output": lambda(json!({"subscriptions": [{"lag_bytes": 512}, {"lag_bytes": 100}]}))}},
            {"id": 9, "previousEventId": 8, "type": "TaskStateExited", "timestamp": 1795341601.91,
             "stateExitedEventDetails": {"name": "check-replication", "output": "{}"}},
            {"id": 10, "previousEventId": 9, "type": "ParallelStateEntered", "timestamp": 1795341602.0,
             "stateEnteredEventDetails": {"name": "freeze checks", "input": "{}"}},
            {"id": 11, "previousEventId": 10, "type": "ParallelStateStarted", "timestamp": 1795341602.0},
            {"id": 12, "previousEventId": 11, "type": "TaskStateEntered", "timestamp": 1795341602.01,
             "stateEnteredEventDetails": {"name": "sync-sequences", "input": "{}"}},
            {"id": 13, "previousEventId": 11, "type": "TaskStateEntered", "timestamp": 1795341602.01,
             "stateEnteredEventDetails": {"name": "check-slot-lag", "input": "{}"}},
            {"id": 14, "previousEventId": 12, "type": "TaskScheduled", "timestamp": 1795341602.02,
             "taskScheduledEventDetails": {"resourceType": "lambda", "resource": "invoke", "parameters": "{}"}},
            {"id": 15, "previousEventId": 13, "type": "TaskScheduled", "timestamp": 1795341602.02,
             "taskScheduledEventDetails": {"resourceType": "lambda", "resource": "invoke", "parameters": "{}"}},
            {"id": 16, "previousEventId": 15, "type": "TaskSucceeded", "timestamp": 1795341602.3,
             "taskSucceededEventDetails": {"output": lambda(json!({"databases": [{"slots": [{"bytes_behind": 0}]}]}))}},
            {"id": 17, "previousEventId": 14, "type": "TaskSucceeded", "timestamp": 1795341602.4,
             "taskSucceededEventDetails": {"output": lambda(json!({}))}},
            {"id": 18, "previousEventId": 16, "type": "TaskStateExited", "timestamp": 1795341602.31,
             "stateExitedEventDetails": {"name": "check-slot-lag", "output": "{}"}},
            {"id": 19, "previousEventId": 17, "type": "TaskStateExited", "timestamp": 1795341602.41,
             "stateExitedEventDetails": {"name": "sync-sequences", "output": "{}"}},
            {"id": 20, "previousEventId": 19, "type": "ParallelStateSucceeded", "timestamp": 1795341602.42},
            {"id": 21, "previousEventId": 20, "type": "ParallelStateExited", "timestamp": 1795341602.43,
             "stateExitedEventDetails": {"name": "freeze checks", "output": "{}"}},
            {"id": 22, "previousEventId": 21, "type": "ExecutionSucceeded", "timestamp": 1795341602.5,
             "executionSucceededEventDetails": {"output": "{\"done\":true}"}}
        ]})
    }

    #[test]
    fn an_aws_history_reads_as_the_local_executor_records_one() {
        let text = aws_history().to_string();
        let execution =
            read_execution(&text, "local-a-switchover-20261122T100000Z").expect("reads");
        assert_eq!(execution.status, Status::Succeeded);
        assert_eq!(execution.output, Some(json!({"done": true})));
        let task_states: Vec<(String, String, Option<u32>)> = execution
            .history
            .iter()
            .filter(|e| e.kind == EventType::TaskScheduled)
            .map(|e| {
                (
                    e.state.clone().unwrap_or_default(),
                    e.resource.clone().unwrap_or_default(),
                    e.attempt,
                )
            })
            .collect();
        assert_eq!(
            task_states,
            [
                (
                    "check-replication".to_owned(),
                    LAMBDA_INVOKE.to_owned(),
                    Some(1)
                ),
                (
                    "check-replication".to_owned(),
                    LAMBDA_INVOKE.to_owned(),
                    Some(2)
                ),
                (
                    "sync-sequences".to_owned(),
                    LAMBDA_INVOKE.to_owned(),
                    Some(1)
                ),
                (
                    "check-slot-lag".to_owned(),
                    LAMBDA_INVOKE.to_owned(),
                    Some(1)
                ),
            ]
        );
        assert!(
            execution
                .history
                .iter()
                .all(|e| e.kind.to_string() != "TaskStarted"),
            "events the local history does not record are left out"
        );
        assert_eq!(
            execution.history[2].timestamp, "2026-11-22T10:00:00.020Z",
            "epoch seconds read"
        );

        let steps = crate::report::steps("prepare", &execution);
        let view: Vec<(&str, u32, &str)> = steps
            .iter()
            .map(|s| (s.name.as_str(), s.attempts, s.outcome.as_str()))
            .collect();
        assert_eq!(
            view,
            [
                ("check-replication", 2, "succeeded"),
                ("freeze checks", 1, "succeeded"),
                ("sync-sequences", 1, "succeeded"),
                ("check-slot-lag", 1, "succeeded"),
            ]
        );
        let samples = crate::report::lag_samples("prepare", &execution);
        let lag: Vec<(&str, u64)> = samples
            .iter()
            .map(|l| (l.state.as_str(), l.bytes))
            .collect();
        assert_eq!(
            lag,
            [
                ("check-replication", 40960),
                ("check-replication", 512),
                ("check-slot-lag", 0)
            ]
        );
    }

    #[test]
    fn an_unfinished_or_foreign_history_is_refused_by_name() {
        let mut history = aws_history();
        history["events"].as_array_mut().expect("events").pop();
        let err = read_execution(&history.to_string(), "x").expect_err("running");
        assert!(err.contains("has not finished"), "{err}");
        let err = read_execution("{\"rows\": []}", "x").expect_err("foreign");
        assert!(err.contains("neither"), "{err}");
        let err = read_execution("not json", "x").expect_err("garbage");
        assert!(err.contains("not a JSON history"), "{err}");
    }

    #[test]
    fn a_failed_aws_execution_keeps_its_error_and_cause() {
        let events = json!([
            {"id": 1, "type": "ExecutionStarted", "timestamp": "2026-11-22T10:00:00Z"},
            {"id": 2, "previousEventId": 1, "type": "FailStateEntered", "timestamp": "2026-11-22T10:00:01Z",
             "stateEnteredEventDetails": {"name": "aborted", "input": "{}"}},
            {"id": 3, "previousEventId": 2, "type": "ExecutionFailed", "timestamp": "2026-11-22T10:00:01Z",
             "executionFailedEventDetails": {"error": "LagNotZero", "cause": "slot s 10 bytes behind"}}
        ]);
        let execution = from_aws_events(events.as_array().expect("array"), "x").expect("reads");
        assert_eq!(execution.status, Status::Failed);
        assert_eq!(execution.error.as_deref(), Some("LagNotZero"));
        assert_eq!(
            crate::report::Outcome::of(Some(&execution)),
            crate::report::Outcome::Aborted
        );
    }
}
