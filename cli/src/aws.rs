//! The commands' AWS side: Step Functions (start, history) and Lambda (invoke).
//! Clients come from the standard chain (credentials, `AWS_ENDPOINT_URL`), in the cell's
//! region.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sfn::error::ProvideErrorMetadata;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent};
use aws_smithy_types::date_time::Format;
use serde_json::{json, Value};
use switchyard_cell::CellDocument;
use switchyard_history::follow::Follower;
use switchyard_history::history::{aws_events, from_aws_events};

/// Step Functions caps execution names at 80 characters.
const MAX_EXECUTION_NAME: usize = 80;

async fn config(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .load()
        .await
}

pub async fn sfn(region: &str) -> aws_sdk_sfn::Client {
    aws_sdk_sfn::Client::new(&config(region).await)
}

/// Lambda's longest run (15 minutes) and a margin for the response to arrive.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(15 * 60 + 60);

/// A Lambda client for synchronous invokes of functions that may run 15 minutes: one
/// attempt (a retried invoke runs the function a second time) that waits as long as the
/// function may run, rather than the SDK's defaults.
pub async fn lambda(region: &str) -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::config::Builder::from(&config(region).await)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(INVOKE_TIMEOUT)
                .read_timeout(INVOKE_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

/// `arn:aws:states:<region>:…` → the region.
pub fn region_of_arn(arn: &str) -> Result<String, String> {
    arn.split(':')
        .nth(3)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("{arn} is not an ARN with a region"))
}

/// A started execution.
#[derive(Debug)]
pub struct Started {
    pub name: String,
    pub arn: String,
}

/// `<cell>-<phase>-<utc>`: which cell, which phase, when — two runs never share a name.
pub fn execution_name(cell_id: &str, phase: &str, at: time::OffsetDateTime) -> String {
    let stamp = utc_stamp(at);
    let suffix = format!("-{phase}-{stamp}");
    let room = MAX_EXECUTION_NAME - suffix.len();
    let cell: String = cell_id.chars().take(room).collect();
    format!("{cell}{suffix}")
}

/// `20250102T030405Z`: a time as execution names carry it.
pub fn utc_stamp(at: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

/// Starts `state_machine_arn` as execution `name` with `input`; returns its ARN.
pub async fn start_named(
    client: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    name: &str,
    input: &Value,
) -> Result<String, String> {
    let started = client
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(name)
        .input(input.to_string())
        .send()
        .await
        .map_err(|e| sdk_error("starting the execution", &e))?;
    Ok(started.execution_arn().to_owned())
}

/// The state machines of one deployment, as Terraform names them: `<prefix>-<kind>`.
/// `abandon-prepare` first: its name also ends in `-prepare`.
const KINDS: [&str; 5] = [
    "abandon-prepare",
    "prepare",
    "switchover",
    "finalize",
    "abort",
];

/// The other state machines of the same deployment: a run of any of them must not start
/// while the cell has a run on another.
pub fn sibling_arns(state_machine_arn: &str) -> Vec<String> {
    let Some((base, name)) = state_machine_arn.rsplit_once(':') else {
        return Vec::new();
    };
    let Some((prefix, kind)) = KINDS.iter().find_map(|kind| {
        name.strip_suffix(&format!("-{kind}"))
            .map(|prefix| (prefix, *kind))
    }) else {
        return Vec::new();
    };
    KINDS
        .iter()
        .filter(|other| **other != kind)
        .map(|other| format!("{base}:{prefix}-{other}"))
        .collect()
}

/// Starts `state_machine_arn` with `{"cell": …}`, unless an execution of this cell is
/// running on it or on another of the deployment's state machines (a switchover must not
/// start while the cell's prepare runs, nor an abandon-prepare or a finalize while any
/// other does). Two operators racing past this check still cannot both switch: the first
/// state, `acquire-lock`, lets only one hold the cell.
pub async fn start(
    client: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    cell: &CellDocument,
    phase: &str,
) -> Result<Started, String> {
    start_with(
        client,
        state_machine_arn,
        cell,
        phase,
        json!({ "cell": cell }),
    )
    .await
}

/// [`start`] with a whole input (the abort machine's names the run it acts as).
pub async fn start_with(
    client: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    cell: &CellDocument,
    phase: &str,
    input: Value,
) -> Result<Started, String> {
    let prefix = format!("{}-", cell.cell_id);
    let siblings = sibling_arns(state_machine_arn);
    for (arn, required) in std::iter::once((state_machine_arn.to_owned(), true))
        .chain(siblings.into_iter().map(|s| (s, false)))
    {
        let mut running = client
            .list_executions()
            .state_machine_arn(&arn)
            .status_filter(ExecutionStatus::Running)
            .into_paginator()
            .items()
            .send();
        while let Some(execution) = running.next().await {
            let execution = match execution {
                Ok(execution) => execution,
                // The sibling is only looked at when it exists.
                Err(e) if !required && e.code() == Some("StateMachineDoesNotExist") => break,
                Err(e) => return Err(sdk_error("listing running executions", &e)),
            };
            if execution.name().starts_with(&prefix) {
                return Err(format!(
                    "LockHeld: execution {} of cell {} is already running (started {}): follow it (switchyard follow {}) or wait for it to end; nothing started",
                    execution.name(),
                    cell.cell_id,
                    execution.start_date().fmt(Format::DateTime).unwrap_or_default(),
                    execution.execution_arn()
                ));
            }
        }
    }
    let name = execution_name(&cell.cell_id, phase, time::OffsetDateTime::now_utc());
    let input = input.to_string();
    let started = client
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(&name)
        .input(input)
        .send()
        .await
        .map_err(|e| sdk_error("starting the execution", &e))?;
    Ok(Started {
        name,
        arn: started.execution_arn().to_owned(),
    })
}

/// Stops `execution_arn` if it still runs, then waits until no Lambda it invoked can still
/// be running: Step Functions does not stop a Lambda with its execution, and a forward step
/// already past its fence check would race the abort path. Each task still open in the
/// history may run until its scheduled time plus the function's timeout (the Task's
/// `TimeoutSeconds` bounds it); `max_wait` caps the wait, for an operator who has seen the
/// function end in its logs.
pub async fn stop_and_wait(
    client: &aws_sdk_sfn::Client,
    execution_arn: &str,
    max_wait: Duration,
) -> Result<(), String> {
    let described = client
        .describe_execution()
        .execution_arn(execution_arn)
        .send()
        .await
        .map_err(|e| sdk_error("describing the run's execution", &e))?;
    if described.status() == &ExecutionStatus::Running {
        client
            .stop_execution()
            .execution_arn(execution_arn)
            .error("Aborted")
            .cause("stopped by switchyard abort: the abort path runs as its own execution")
            .send()
            .await
            .map_err(|e| sdk_error("stopping the run's execution", &e))?;
        println!("stopped {execution_arn}");
    }
    let events = history(client, execution_arn).await?;
    let now = time::OffsetDateTime::now_utc();
    let until = open_tasks_end(&events, &lambda_timeouts()).map(|end| end.min(now + max_wait));
    if let Some(until) = until.filter(|u| *u > now) {
        let wait = until - now;
        println!(
            "waiting {} s for the stopped run's last step to end (its Lambda may still run; --wait-seconds caps this)",
            wait.whole_seconds()
        );
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(wait.whole_milliseconds()).unwrap_or(0),
        ))
        .await;
    }
    Ok(())
}

/// Each function's Lambda timeout, from the checked-in `functions.json`.
fn lambda_timeouts() -> std::collections::HashMap<String, i64> {
    let text = include_str!("../../state-machine/functions.json");
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|functions| {
            functions
                .into_iter()
                .filter_map(|(name, f)| Some((name, f["timeout_seconds"].as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// When the last task still open in `events` (scheduled, never answered) can end at the
/// latest: its scheduling time plus its function's Lambda timeout (15 minutes when the
/// function is unknown). `None` when every task was answered.
fn open_tasks_end(
    events: &[Value],
    timeouts: &std::collections::HashMap<String, i64>,
) -> Option<time::OffsetDateTime> {
    let by_id: std::collections::HashMap<i64, &Value> = events
        .iter()
        .filter_map(|e| Some((e["id"].as_i64()?, e)))
        .collect();
    let mut answered = std::collections::HashSet::new();
    for e in events {
        let kind = e["type"].as_str().unwrap_or_default();
        if !matches!(
            kind,
            "TaskSucceeded"
                | "TaskFailed"
                | "TaskTimedOut"
                | "TaskStartFailed"
                | "TaskSubmitFailed"
        ) {
            continue;
        }
        // Answer → TaskStarted → TaskScheduled.
        let mut id = e["previousEventId"].as_i64();
        while let Some(current) = id {
            let Some(event) = by_id.get(&current) else {
                break;
            };
            if event["type"] == "TaskScheduled" {
                answered.insert(current);
                break;
            }
            id = event["previousEventId"].as_i64();
        }
    }
    events
        .iter()
        .filter(|e| e["type"] == "TaskScheduled")
        .filter(|e| e["id"].as_i64().is_some_and(|id| !answered.contains(&id)))
        .filter_map(|e| {
            let at = time::OffsetDateTime::parse(
                e["timestamp"].as_str()?,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            let parameters: Value = serde_json::from_str(
                e["taskScheduledEventDetails"]["parameters"]
                    .as_str()
                    .unwrap_or("{}"),
            )
            .unwrap_or_default();
            let timeout = parameters["FunctionName"]
                .as_str()
                .and_then(|f| {
                    timeouts
                        .iter()
                        .find(|(name, _)| {
                            f.ends_with(&format!("-{name}")) || f.ends_with(&format!(":{name}"))
                        })
                        .map(|(_, t)| *t)
                })
                .unwrap_or(900);
            Some(at + time::Duration::seconds(timeout))
        })
        .max()
}

/// Every history event so far, in the API's JSON shape (what `aws stepfunctions
/// get-execution-history` prints), which `switchyard_history::history` reads.
pub async fn history(
    client: &aws_sdk_sfn::Client,
    execution_arn: &str,
) -> Result<Vec<Value>, String> {
    let mut pages = client
        .get_execution_history()
        .execution_arn(execution_arn)
        .include_execution_data(true)
        .into_paginator()
        .items()
        .send();
    let mut events = Vec::new();
    while let Some(event) = pages.next().await {
        let event = event.map_err(|e| sdk_error("reading the execution history", &e))?;
        events.push(event_json(&event));
    }
    Ok(events)
}

/// The execution's page in the Step Functions console, to share with whoever helps.
pub fn console_url(execution_arn: &str) -> String {
    let region = region_of_arn(execution_arn).unwrap_or_else(|_| "us-east-1".to_owned());
    format!(
        "https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution_arn}"
    )
}

/// The history events after event `after`, oldest first: read newest first (`reverseOrder`)
/// and only as far back as `after`, so a poll costs one call however long the history is.
/// An API that ignores `reverseOrder` is read whole, as before.
pub async fn newer_events(
    client: &aws_sdk_sfn::Client,
    execution_arn: &str,
    after: i64,
) -> Result<Vec<Value>, String> {
    let mut pages = client
        .get_execution_history()
        .execution_arn(execution_arn)
        .include_execution_data(true)
        .reverse_order(true)
        .max_results(200)
        .into_paginator()
        .send();
    let mut newer = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk_error("reading the execution history", &e))?;
        let ids: Vec<i64> = page.events().iter().map(HistoryEvent::id).collect();
        let newest_first = ids.first() >= ids.last();
        newer.extend(
            page.events()
                .iter()
                .filter(|e| e.id() > after)
                .map(event_json),
        );
        if newest_first && ids.iter().any(|&id| id <= after) {
            break;
        }
    }
    newer.sort_by_key(|e| e["id"].as_i64());
    Ok(newer)
}

/// Polls the history every `poll_ms` and prints what happens until the execution ends.
pub async fn follow(
    client: &aws_sdk_sfn::Client,
    execution_arn: &str,
    poll_ms: u64,
) -> Result<ExitCode, String> {
    println!("console: {}", console_url(execution_arn));
    let mut follower = Follower::new();
    let mut seen = 0;
    // Every raw event so far: each poll fetches only the newer ones (a long prepare's
    // history has thousands; reading it whole every poll would be throttled), while the
    // conversion needs them all to tie a task's events to its state.
    let mut events: Vec<Value> = Vec::new();
    loop {
        let after = events.last().and_then(|e| e["id"].as_i64()).unwrap_or(0);
        events.extend(newer_events(client, execution_arn, after).await?);
        let converted = aws_events(&events)?;
        // Converted events keep their ids: print only the ones not seen yet.
        for event in converted.iter().filter(|e| e.id > seen) {
            for line in follower.feed(event) {
                println!("{line}");
            }
        }
        seen = converted.last().map_or(seen, |e| e.id.max(seen));
        if let Some(outcome) = follower.outcome() {
            return Ok(ExitCode::from(outcome.exit_code()));
        }
        let status = client
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .map_err(|e| sdk_error("describing the execution", &e))?;
        if status.status() != &ExecutionStatus::Running {
            // Ended without an end event this history shows (stopped from the console).
            let outcome = follower.ended_without_event();
            println!(
                "outcome: {} (exit {}; execution {}): {}",
                outcome.as_str(),
                outcome.exit_code(),
                status.status().as_str(),
                outcome.next_step()
            );
            return Ok(ExitCode::from(outcome.exit_code()));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        if let Some(line) = follower.tick(i64::try_from(now).unwrap_or(0)) {
            println!("{line}");
        }
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
}

/// Fetches a finished execution's history, keeps it as `out/<file>` and reads it.
pub async fn fetch_execution(
    execution_arn: &str,
    out: &Path,
    file: &str,
) -> Result<(switchyard_state_machine::Execution, String), String> {
    let client = sfn(&region_of_arn(execution_arn)?).await;
    let events = history(&client, execution_arn).await?;
    let name = execution_arn.rsplit(':').next().unwrap_or(execution_arn);
    let path = out.join(file);
    let text =
        serde_json::to_vec_pretty(&json!({ "events": events })).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let execution = from_aws_events(&events, name)?;
    Ok((execution, file.to_owned()))
}

/// Invokes a deployed function synchronously and prints its answer; a function error is
/// printed as Lambda reports it (`errorType` is the catalogued name) and exits 1.
pub async fn invoke(
    client: &aws_sdk_lambda::Client,
    function_name: &str,
    payload: &Value,
) -> Result<ExitCode, String> {
    let (answer, failed) = call(client, function_name, payload).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string())
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Invokes a deployed function synchronously: its answer (the output, or Lambda's
/// `{"errorType", "errorMessage"}`) and whether it is an error.
pub async fn call(
    client: &aws_sdk_lambda::Client,
    function_name: &str,
    payload: &Value,
) -> Result<(Value, bool), String> {
    let response = client
        .invoke()
        .function_name(function_name)
        .payload(aws_smithy_types::Blob::new(payload.to_string()))
        .send()
        .await
        .map_err(|e| sdk_error(&format!("invoking {function_name}"), &e))?;
    let body = response
        .payload()
        .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
        .unwrap_or_default();
    let answer = serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body));
    Ok((answer, response.function_error().is_some()))
}

fn sdk_error<E, R>(what: &str, err: &aws_sdk_sfn::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().unwrap_or("no error code");
    let message = err.message().unwrap_or("");
    format!("{what}: {code}: {message} ({err})")
}

/// One SDK history event in the API's JSON shape.
fn event_json(event: &HistoryEvent) -> Value {
    let mut v = json!({
        "id": event.id(),
        "type": event.r#type().as_str(),
        "timestamp": event.timestamp().fmt(Format::DateTime).unwrap_or_default(),
    });
    if event.previous_event_id() != 0 {
        v["previousEventId"] = json!(event.previous_event_id());
    }
    if let Some(d) = event.state_entered_event_details() {
        v["stateEnteredEventDetails"] = json!({"name": d.name(), "input": d.input()});
    }
    if let Some(d) = event.state_exited_event_details() {
        v["stateExitedEventDetails"] = json!({"name": d.name(), "output": d.output()});
    }
    if let Some(d) = event.task_scheduled_event_details() {
        v["taskScheduledEventDetails"] = json!({
            "resourceType": d.resource_type(), "resource": d.resource(),
            "region": d.region(), "parameters": d.parameters(),
        });
    }
    if let Some(d) = event.task_succeeded_event_details() {
        v["taskSucceededEventDetails"] = json!({"output": d.output()});
    }
    if let Some(d) = event.task_failed_event_details() {
        v["taskFailedEventDetails"] = json!({"error": d.error(), "cause": d.cause()});
    }
    if let Some(d) = event.task_timed_out_event_details() {
        v["taskTimedOutEventDetails"] = json!({"error": d.error(), "cause": d.cause()});
    }
    if let Some(d) = event.execution_started_event_details() {
        v["executionStartedEventDetails"] = json!({"input": d.input()});
    }
    if let Some(d) = event.execution_succeeded_event_details() {
        v["executionSucceededEventDetails"] = json!({"output": d.output()});
    }
    if let Some(d) = event.execution_failed_event_details() {
        v["executionFailedEventDetails"] = json!({"error": d.error(), "cause": d.cause()});
    }
    if let Some(d) = event.execution_aborted_event_details() {
        v["executionAbortedEventDetails"] = json!({"error": d.error(), "cause": d.cause()});
    }
    if let Some(d) = event.execution_timed_out_event_details() {
        v["executionTimedOutEventDetails"] = json!({"error": d.error(), "cause": d.cause()});
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_task_is_waited_for_until_its_function_may_have_ended() {
        let scheduled = |id: i64, at: &str, function: &str| {
            json!({"id": id, "type": "TaskScheduled", "timestamp": at,
                   "taskScheduledEventDetails": {"parameters":
                       json!({"FunctionName": format!("arn:aws:lambda:us-east-1:1:function:switchyard-{function}")}).to_string()}})
        };
        let events = vec![
            scheduled(2, "2026-12-07T10:00:00Z", "pause-pgbouncer"),
            json!({"id": 3, "previousEventId": 2, "type": "TaskStarted", "timestamp": "2026-12-07T10:00:00Z"}),
            json!({"id": 4, "previousEventId": 3, "type": "TaskSucceeded", "timestamp": "2026-12-07T10:00:01Z"}),
            scheduled(5, "2026-12-07T10:00:02Z", "rename-clusters"),
            json!({"id": 6, "previousEventId": 5, "type": "TaskStarted", "timestamp": "2026-12-07T10:00:02Z"}),
        ];
        let timeouts = lambda_timeouts();
        let rename = timeouts["rename-clusters"];
        assert_eq!(
            open_tasks_end(&events, &timeouts),
            Some(
                time::macros::datetime!(2026-12-07 10:00:02 UTC) + time::Duration::seconds(rename)
            ),
            "the rename may still run; the pause answered"
        );
        assert_eq!(
            open_tasks_end(&events[..2], &timeouts),
            Some(
                time::macros::datetime!(2026-12-07 10:00:00 UTC)
                    + time::Duration::seconds(timeouts["pause-pgbouncer"])
            ),
            "started, never answered"
        );
        assert_eq!(open_tasks_end(&events[..3], &timeouts), None, "answered");
        let mut answered = events.clone();
        answered.push(json!({"id": 7, "previousEventId": 6, "type": "TaskFailed", "timestamp": "2026-12-07T10:00:03Z"}));
        assert_eq!(open_tasks_end(&answered, &timeouts), None);
    }

    #[test]
    fn execution_names_say_cell_phase_and_time_within_80_characters() {
        let at = time::macros::datetime!(2026-11-22 10:05:09 UTC);
        assert_eq!(
            execution_name("local-a", "switchover", at),
            "local-a-switchover-20261122T100509Z"
        );
        let long = "c".repeat(100);
        let name = execution_name(&long, "prepare", at);
        assert_eq!(name.len(), 80);
        assert!(name.ends_with("-prepare-20261122T100509Z"), "{name}");
        assert_eq!(
            region_of_arn("arn:aws:states:eu-west-1:123456789012:execution:sm:x").as_deref(),
            Ok("eu-west-1")
        );
        assert!(region_of_arn("nope").is_err());
        assert_eq!(
            console_url("arn:aws:states:eu-west-1:1:execution:sm:x"),
            "https://eu-west-1.console.aws.amazon.com/states/home?region=eu-west-1#/v2/executions/details/arn:aws:states:eu-west-1:1:execution:sm:x"
        );
        let sm = "arn:aws:states:eu-west-1:123456789012:stateMachine:switchyard";
        assert_eq!(
            sibling_arns(&format!("{sm}-switchover")),
            [
                format!("{sm}-abandon-prepare"),
                format!("{sm}-prepare"),
                format!("{sm}-finalize"),
                format!("{sm}-abort")
            ]
        );
        assert_eq!(
            sibling_arns(&format!("{sm}-prepare")),
            [
                format!("{sm}-abandon-prepare"),
                format!("{sm}-switchover"),
                format!("{sm}-finalize"),
                format!("{sm}-abort")
            ]
        );
        assert_eq!(
            sibling_arns(&format!("{sm}-abandon-prepare")),
            [
                format!("{sm}-prepare"),
                format!("{sm}-switchover"),
                format!("{sm}-finalize"),
                format!("{sm}-abort")
            ]
        );
        assert_eq!(
            sibling_arns(&format!("{sm}-finalize")),
            [
                format!("{sm}-abandon-prepare"),
                format!("{sm}-prepare"),
                format!("{sm}-switchover"),
                format!("{sm}-abort")
            ]
        );
        assert!(sibling_arns(&format!("{sm}-other")).is_empty());
    }
}
