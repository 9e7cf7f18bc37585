//! Running definitions: data flow, states, errors, retries, timeouts, faults, history.
//!
//! Tests run on paused tokio time, so waits and backoffs take no real time and the
//! virtual instants they land on are exact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use switchyard_state_machine::{
    BoxFuture, Definition, EventType, Execution, Executor, Fault, StateType, Status, TaskFailure,
    TaskHandler, LAMBDA_INVOKE,
};
use tokio::time::Instant;

type Behaviour = Box<dyn Fn(usize, Value) -> Result<Value, TaskFailure> + Send + Sync>;

/// Functions by name (`FunctionName` for lambda:invoke, else the Resource), with a log of
/// every call and the virtual instant it started.
#[derive(Default)]
struct Functions {
    behaviours: HashMap<String, Behaviour>,
    sleeps: HashMap<String, Duration>,
    calls: Mutex<Vec<(String, Value, Instant)>>,
    /// Every call that ran to its end, whether or not the executor used its result.
    finished: Mutex<Vec<(String, Instant)>>,
}

impl Functions {
    /// `f(n, payload)` answers the n-th call (1-based) of `name`.
    fn on(
        mut self,
        name: &str,
        f: impl Fn(usize, Value) -> Result<Value, TaskFailure> + Send + Sync + 'static,
    ) -> Self {
        self.behaviours.insert(name.to_owned(), Box::new(f));
        self
    }

    fn sleeping(mut self, name: &str, duration: Duration) -> Self {
        self.sleeps.insert(name.to_owned(), duration);
        self
    }

    fn calls(&self, name: &str) -> Vec<(Value, Instant)> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, payload, at)| (payload.clone(), *at))
            .collect()
    }

    /// When each call of `name` ran to its end.
    fn finished(&self, name: &str) -> Vec<Instant> {
        self.finished
            .lock()
            .expect("lock")
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, at)| *at)
            .collect()
    }

    /// Seconds between consecutive calls of `name`.
    fn gaps(&self, name: &str) -> Vec<f64> {
        self.calls(name)
            .windows(2)
            .map(|w| (w[1].1 - w[0].1).as_secs_f64())
            .collect()
    }
}

impl TaskHandler for Functions {
    fn invoke(
        &self,
        resource: &str,
        parameters: Value,
    ) -> BoxFuture<'_, Result<Value, TaskFailure>> {
        let (name, payload) = if resource == LAMBDA_INVOKE {
            (
                parameters["FunctionName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                parameters.get("Payload").cloned().unwrap_or(Value::Null),
            )
        } else {
            (resource.to_owned(), parameters)
        };
        Box::pin(async move {
            let n = {
                let mut calls = self.calls.lock().expect("lock");
                calls.push((name.clone(), payload.clone(), Instant::now()));
                calls.iter().filter(|(n, _, _)| *n == name).count()
            };
            if let Some(duration) = self.sleeps.get(&name) {
                tokio::time::sleep(*duration).await;
            }
            let result = match self.behaviours.get(&name) {
                Some(behaviour) => behaviour(n, payload),
                None => Err(TaskFailure::new("UnknownFunction", name.clone())),
            };
            self.finished
                .lock()
                .expect("lock")
                .push((name, Instant::now()));
            result
        })
    }
}

fn echo(_: usize, payload: Value) -> Result<Value, TaskFailure> {
    Ok(payload)
}

/// Fails with `error` on the first `times` calls, then echoes.
fn fails(times: usize, error: &'static str) -> impl Fn(usize, Value) -> Result<Value, TaskFailure> {
    move |n, payload| {
        if n <= times {
            Err(TaskFailure::new(error, format!("call {n} failed")))
        } else {
            Ok(payload)
        }
    }
}

async fn run(definition: Value, functions: &Functions, input: Value) -> Execution {
    let definition = Definition::from_json(&definition.to_string()).expect("definition loads");
    Executor::new(&definition, functions)
        .name("test-run")
        .state_machine_name("switchover")
        .run(input)
        .await
}

/// A lambda:invoke Task calling `function` with the whole input as payload.
fn lambda(function: &str, extra: Value) -> Value {
    let mut state = json!({
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": function, "Payload.$": "$"},
        "ResultSelector": {"out.$": "$.Payload"},
        "ResultPath": "$.result",
    });
    for (key, value) in extra.as_object().expect("extra is an object") {
        state[key] = value.clone();
    }
    if state.get("Next").is_none() {
        state["End"] = json!(true);
    }
    state
}

fn one_task(state: Value) -> Value {
    json!({"StartAt": "Work", "States": {"Work": state}})
}

fn types(execution: &Execution) -> Vec<String> {
    execution
        .history
        .iter()
        .map(|e| e.kind.to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn input_and_output_processing_with_context_and_intrinsics() {
    let definition = one_task(json!({
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "InputPath": "$.cell",
        "Parameters": {
            "FunctionName": "echo",
            "Payload": {
                "id.$": "$.id",
                "label.$": "States.Format('cell {} try {}', $.id, $$.State.RetryCount)",
                "parsed.$": "States.StringToJson($.doc)",
                "text.$": "States.JsonToString($.budgets)",
                "pair.$": "States.Array($.id, States.MathAdd($.budgets.drain, 5))",
                "uuid.$": "States.UUID()",
                "execution.$": "$$.Execution.Name",
                "executionId.$": "$$.Execution.Id",
                "originalInput.$": "$$.Execution.Input.flag",
                "startTime.$": "$$.Execution.StartTime",
                "state.$": "$$.State.Name",
                "enteredTime.$": "$$.State.EnteredTime",
                "machine.$": "$$.StateMachine.Id",
                "static": [1, {"nested.$": "$.budgets.drain"}]
            }
        },
        "ResultSelector": {"payload.$": "$.Payload", "status.$": "$.StatusCode",
                           "version.$": "$.ExecutedVersion"},
        "ResultPath": "$.call",
        "OutputPath": "$.call",
        "End": true
    }));
    let functions = Functions::default().on("echo", echo);
    let input = json!({"flag": true, "cell": {"id": "c1", "doc": "{\"k\": [1]}", "budgets": {"drain": 30}}});
    let execution = run(definition, &functions, input).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    let output = execution.output.expect("output");
    let payload = &output["payload"];
    assert_eq!(output["status"], json!(200));
    assert_eq!(output["version"], json!("$LATEST"));
    assert_eq!(payload["id"], json!("c1"));
    assert_eq!(payload["label"], json!("cell c1 try 0"));
    assert_eq!(payload["parsed"], json!({"k": [1]}));
    assert_eq!(payload["text"], json!("{\"drain\":30}"));
    assert_eq!(payload["pair"], json!(["c1", 35]));
    assert_eq!(payload["uuid"].as_str().map(str::len), Some(36));
    assert_eq!(payload["execution"], json!("test-run"));
    assert_eq!(
        payload["executionId"],
        json!("arn:aws:states:local:000000000000:execution:switchover:test-run")
    );
    assert_eq!(payload["originalInput"], json!(true));
    assert_eq!(payload["state"], json!("Work"));
    assert_eq!(
        payload["machine"],
        json!("arn:aws:states:local:000000000000:stateMachine:switchover")
    );
    assert_eq!(payload["static"], json!([1, {"nested": 30}]));
    for stamp in [&payload["startTime"], &payload["enteredTime"]] {
        let stamp = stamp.as_str().expect("a timestamp string");
        assert!(is_rfc3339_millis(stamp), "{stamp}");
    }
    // The handler saw the evaluated payload, not the template.
    assert_eq!(functions.calls("echo")[0].0["id"], json!("c1"));
}

fn is_rfc3339_millis(stamp: &str) -> bool {
    stamp.len() == 24
        && stamp.ends_with('Z')
        && stamp.as_bytes()[10] == b'T'
        && stamp.as_bytes()[19] == b'.'
        && time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
            .is_ok()
}

#[tokio::test(start_paused = true)]
async fn result_path_merges_discards_or_replaces_and_null_paths_give_empty_objects() {
    let functions = Functions::default().on("f", |_, _| Ok(json!({"v": 1})));
    let input = json!({"keep": "me", "nested": {"x": 1}});

    let merged = run(
        one_task(lambda("f", json!({"ResultPath": "$.nested.result"}))),
        &functions,
        input.clone(),
    )
    .await;
    assert_eq!(
        merged.output,
        Some(json!({"keep": "me", "nested": {"x": 1, "result": {"out": {"v": 1}}}}))
    );

    let discarded = run(
        one_task(lambda("f", json!({"ResultPath": null}))),
        &functions,
        input.clone(),
    )
    .await;
    assert_eq!(discarded.output, Some(input.clone()));

    let replaced = run(
        one_task(lambda("f", json!({"ResultPath": "$"}))),
        &functions,
        input.clone(),
    )
    .await;
    assert_eq!(replaced.output, Some(json!({"out": {"v": 1}})));

    let nulls = run(
        one_task(lambda("f", json!({"InputPath": null, "OutputPath": null}))),
        &functions,
        input.clone(),
    )
    .await;
    assert_eq!(nulls.output, Some(json!({})));
    assert_eq!(
        functions.calls("f").last().map(|c| c.0.clone()),
        Some(json!({}))
    );
}

#[tokio::test(start_paused = true)]
async fn pass_states_result_parameters_and_plain_input() {
    let definition = json!({
        "StartAt": "Fixed",
        "States": {
            "Fixed": {"Type": "Pass", "Result": {"a": 1}, "ResultPath": "$.fixed", "Next": "Shaped"},
            "Shaped": {"Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($.fixed.a, 41)"},
                       "ResultPath": "$.shaped", "Next": "Plain"},
            "Plain": {"Type": "Pass", "InputPath": "$.shaped", "End": true}
        }
    });
    let execution = run(definition, &Functions::default(), json!({"x": 0})).await;
    assert_eq!(execution.output, Some(json!({"sum": 42})));
}

#[tokio::test(start_paused = true)]
async fn choice_routes_by_rule_then_default_and_fails_without_match() {
    let definition = json!({
        "StartAt": "Route",
        "States": {
            "Route": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.lag", "NumericGreaterThan": 100, "Next": "Behind"},
                    {"And": [{"Variable": "$.mode", "StringEquals": "full"},
                             {"Variable": "$.quick", "IsPresent": false}], "Next": "Full"}
                ],
                "Default": "Quick"
            },
            "Behind": {"Type": "Pass", "Result": "behind", "End": true},
            "Full": {"Type": "Pass", "Result": "full", "End": true},
            "Quick": {"Type": "Pass", "Result": "quick", "End": true}
        }
    });
    let functions = Functions::default();
    for (input, expected) in [
        (json!({"lag": 500, "mode": "full"}), "behind"),
        (json!({"lag": 0, "mode": "full"}), "full"),
        (json!({"lag": 0, "mode": "full", "quick": true}), "quick"),
    ] {
        let execution = run(definition.clone(), &functions, input).await;
        assert_eq!(execution.output, Some(json!(expected)));
    }

    let no_default = json!({"StartAt": "Route", "States": {
        "Route": {"Type": "Choice", "Choices": [
            {"Variable": "$.lag", "NumericEquals": 1, "Next": "End"}]},
        "End": {"Type": "Succeed"}}});
    let execution = run(no_default.clone(), &functions, json!({"lag": 2})).await;
    assert_eq!(execution.status, Status::Failed);
    assert_eq!(execution.error.as_deref(), Some("States.NoChoiceMatched"));

    // A missing Variable is a runtime error, not a false comparison.
    let execution = run(no_default, &functions, json!({})).await;
    assert_eq!(execution.error.as_deref(), Some("States.Runtime"));
}

#[tokio::test(start_paused = true)]
async fn wait_states_sleep_in_tokio_time() {
    let functions = Functions::default();
    let definition = json!({
        "StartAt": "Fixed",
        "States": {
            "Fixed": {"Type": "Wait", "Seconds": 30, "Next": "FromInput"},
            "FromInput": {"Type": "Wait", "SecondsPath": "$.pause", "Next": "Until"},
            "Until": {"Type": "Wait", "TimestampPath": "$.until", "Next": "Past"},
            "Past": {"Type": "Wait", "Timestamp": "2001-01-01T00:00:00Z", "End": true}
        }
    });
    let until = time::OffsetDateTime::now_utc() + Duration::from_secs(600);
    let until = until
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats");
    let start = Instant::now();
    let execution = run(definition, &functions, json!({"pause": 15, "until": until})).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    // 30 s, then 15 s, then until the timestamp 600 s after the start; the past one is 0.
    let elapsed = start.elapsed().as_secs_f64();
    assert!((599.0..=601.0).contains(&elapsed), "{elapsed}");

    let bad = json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "SecondsPath": "$.pause", "End": true}}});
    let execution = run(bad, &functions, json!({"pause": "soon"})).await;
    assert_eq!(execution.error.as_deref(), Some("States.Runtime"));
}

#[tokio::test(start_paused = true)]
async fn succeed_and_fail_end_the_execution() {
    let definition = json!({
        "StartAt": "Check",
        "States": {
            "Check": {"Type": "Choice", "Choices": [
                {"Variable": "$.ok", "BooleanEquals": true, "Next": "Yes"}], "Default": "No"},
            "Yes": {"Type": "Succeed", "OutputPath": "$.ok"},
            "No": {"Type": "Fail", "ErrorPath": "$.why.error", "Cause": "the check said no"}
        }
    });
    let functions = Functions::default();
    let ok = run(definition.clone(), &functions, json!({"ok": true})).await;
    assert_eq!(
        (ok.status, ok.output),
        (Status::Succeeded, Some(json!(true)))
    );
    let no = run(
        definition,
        &functions,
        json!({"ok": false, "why": {"error": "PreflightFailed"}}),
    )
    .await;
    assert_eq!(no.status, Status::Failed);
    assert_eq!(no.error.as_deref(), Some("PreflightFailed"));
    assert_eq!(no.cause.as_deref(), Some("the check said no"));
    assert_eq!(no.output, None);
    assert_eq!(
        types(&no),
        [
            "ExecutionStarted",
            "ChoiceStateEntered",
            "ChoiceStateExited",
            "FailStateEntered",
            "ExecutionFailed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn parallel_runs_branches_concurrently_and_collects_outputs() {
    let definition = json!({
        "StartAt": "Both",
        "States": {
            "Both": {
                "Type": "Parallel",
                "Parameters": {"n.$": "$.n"},
                "Branches": [
                    {"StartAt": "Slow", "States": {"Slow": lambda("slow", json!({"ResultPath": "$.slow"}))}},
                    {"StartAt": "Fast", "States": {"Fast": {"Type": "Pass", "Parameters": {"doubled.$": "States.MathAdd($.n, $.n)"}, "End": true}}}
                ],
                "ResultSelector": {"slow.$": "$[0].slow.out.n", "fast.$": "$[1].doubled"},
                "ResultPath": "$.both",
                "End": true
            }
        }
    });
    let functions = Functions::default()
        .on("slow", echo)
        .sleeping("slow", Duration::from_secs(10));
    let start = Instant::now();
    let execution = run(definition, &functions, json!({"n": 4})).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    assert_eq!(
        execution.output,
        Some(json!({"n": 4, "both": {"slow": 4, "fast": 8}}))
    );
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let both: Vec<_> = execution
        .events_of("Both")
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(
        both,
        [
            "ParallelStateEntered",
            "ParallelStateStarted",
            "ParallelStateSucceeded",
            "ParallelStateExited"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_branch_stops_the_others_and_the_parallel_catches_its_error() {
    // As in Step Functions: the Parallel fails as soon as one branch does and its Catch
    // runs at once; the other branches start no new state, but a Task already running in
    // one is not stopped — it runs to its end and its result is thrown away.
    let definition = json!({
        "StartAt": "Both",
        "States": {
            "Both": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": "Slow", "States": {
                        "Slow": lambda("slow", json!({"Next": "After slow"})),
                        "After slow": lambda("after", json!({}))
                    }},
                    {"StartAt": "Waits", "States": {
                        "Waits": {"Type": "Wait", "Seconds": 50, "Next": "After wait"},
                        "After wait": lambda("after", json!({}))
                    }},
                    {"StartAt": "Broken", "States": {"Broken": lambda("broken", json!({}))}}
                ],
                "Catch": [{"ErrorEquals": ["DataMismatch"], "ResultPath": "$.error", "Next": "Abort"}],
                "Next": "Done"
            },
            "Done": {"Type": "Succeed"},
            "Abort": lambda("abort", json!({}))
        }
    });
    let functions = Functions::default()
        .on("slow", echo)
        .sleeping("slow", Duration::from_secs(100))
        .on("after", echo)
        .on("abort", echo)
        .on("broken", fails(1, "DataMismatch"))
        .sleeping("broken", Duration::from_secs(1));
    let start = Instant::now();
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    let output = execution.output.clone().expect("output");
    assert_eq!(output["error"]["Error"], json!("DataMismatch"));
    let abort = functions.calls("abort");
    assert_eq!(abort.len(), 1);
    assert_eq!(
        abort[0].1 - start,
        Duration::from_secs(1),
        "the Catch ran as the branch failed, without waiting for the others"
    );
    assert_eq!(
        functions.finished("slow"),
        [start + Duration::from_secs(100)],
        "the running Task was not cancelled: it ran to its end"
    );
    assert!(
        functions.calls("after").is_empty(),
        "stopped branches start no new state (neither after a Task nor after a Wait)"
    );
    assert!(
        execution
            .events_of("Slow")
            .all(|e| e.kind != EventType::TaskSucceeded),
        "its result is not used"
    );
    assert!(execution
        .events_of("Both")
        .any(|e| e.kind == EventType::ParallelStateFailed));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(100),
        "run() returns once the work it started has ended"
    );
}

#[tokio::test(start_paused = true)]
async fn branches_that_catch_their_own_errors_make_the_parallel_wait_for_all() {
    // The shape the switchover's freeze checks use: no branch fails, so the Parallel waits
    // for every branch before anything after it (the abort path) can run.
    let definition = json!({
        "StartAt": "Both",
        "States": {
            "Both": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": "Slow", "States": {"Slow": lambda("slow", json!({}))}},
                    {"StartAt": "Broken", "States": {
                        "Broken": lambda("broken", json!({"Catch": [
                            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.failed", "Next": "Broken failed"}]})),
                        "Broken failed": {"Type": "Pass", "End": true}
                    }}
                ],
                "ResultPath": "$.branches",
                "Next": "Abort"
            },
            "Abort": lambda("abort", json!({}))
        }
    });
    let functions = Functions::default()
        .on("slow", echo)
        .sleeping("slow", Duration::from_secs(100))
        .on("abort", echo)
        .on("broken", fails(1, "DataMismatch"))
        .sleeping("broken", Duration::from_secs(1));
    let start = Instant::now();
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    assert_eq!(
        functions.calls("abort")[0].1 - start,
        Duration::from_secs(100)
    );
    let output = execution.output.expect("output");
    assert_eq!(
        output["branches"][1]["failed"]["Error"],
        json!("DataMismatch")
    );
}

#[tokio::test(start_paused = true)]
async fn a_fault_after_the_side_effect_runs_the_call_and_loses_its_answer() {
    let definition = one_task(lambda(
        "work",
        json!({"Retry": [{"ErrorEquals": ["Lambda.ServiceException"], "IntervalSeconds": 1}]}),
    ));
    let functions = Functions::default().on("work", |n, _| Ok(json!({ "call": n })));
    let definition = Definition::from_json(&definition.to_string()).expect("loads");
    let execution = Executor::new(&definition, &functions)
        .fault(Fault::crash_after(
            "Work",
            1,
            "Lambda.ServiceException",
            "the answer was lost",
        ))
        .expect("fault")
        .run(json!({}))
        .await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    assert_eq!(
        functions.finished("work").len(),
        2,
        "the first call ran to its end before the fault"
    );
    assert_eq!(
        execution.output.clone().expect("output")["result"]["out"],
        json!({ "call": 2 }),
        "the first answer was discarded; the retry's is used"
    );
    let failed: Vec<_> = execution
        .events_of("Work")
        .filter(|e| e.kind == EventType::TaskFailed)
        .filter_map(|e| e.error.clone())
        .collect();
    assert_eq!(failed, ["Lambda.ServiceException"]);
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_exponentially() {
    let definition = one_task(lambda(
        "check",
        json!({
            "Retry": [{"ErrorEquals": ["LagNotZero"], "IntervalSeconds": 2, "BackoffRate": 3.0, "MaxAttempts": 3}]
        }),
    ));
    let functions = Functions::default().on("check", fails(3, "LagNotZero"));
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    assert_eq!(functions.gaps("check"), [2.0, 6.0, 18.0]);
    let attempts: Vec<_> = execution
        .events_of("Work")
        .filter(|e| e.kind == EventType::TaskScheduled)
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, [Some(1), Some(2), Some(3), Some(4)]);

    // One more failure than MaxAttempts: the error ends the execution.
    let functions = Functions::default().on("check", fails(4, "LagNotZero"));
    let definition = one_task(lambda(
        "check",
        json!({
            "Retry": [{"ErrorEquals": ["LagNotZero"], "IntervalSeconds": 2, "BackoffRate": 3.0, "MaxAttempts": 3}]
        }),
    ));
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Failed);
    assert_eq!(execution.error.as_deref(), Some("LagNotZero"));
    assert_eq!(functions.calls("check").len(), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_defaults_and_max_delay() {
    // Defaults: 1 s interval, rate 2.0, 3 attempts.
    let functions = Functions::default().on("check", fails(3, "NotCaughtUp"));
    let definition = one_task(lambda(
        "check",
        json!({"Retry": [{"ErrorEquals": ["NotCaughtUp"]}]}),
    ));
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    assert_eq!(functions.gaps("check"), [1.0, 2.0, 4.0]);

    let functions = Functions::default().on("check", fails(4, "NotCaughtUp"));
    let definition = one_task(lambda(
        "check",
        json!({"Retry": [{
        "ErrorEquals": ["NotCaughtUp"], "IntervalSeconds": 3, "MaxAttempts": 4, "MaxDelaySeconds": 10}]}),
    ));
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    assert_eq!(functions.gaps("check"), [3.0, 6.0, 10.0, 10.0]);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_zero_never_retries_and_the_first_matching_retrier_decides() {
    let functions = Functions::default().on("check", fails(1, "DdlDetected"));
    let definition = one_task(lambda(
        "check",
        json!({"Retry": [
            {"ErrorEquals": ["DdlDetected"], "MaxAttempts": 0},
            {"ErrorEquals": ["States.ALL"], "MaxAttempts": 5}
        ]}),
    ));
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Failed);
    assert_eq!(execution.error.as_deref(), Some("DdlDetected"));
    assert_eq!(functions.calls("check").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn states_all_task_failed_and_timeout_match_as_step_functions_does() {
    // TaskFailed matches a custom error; a timeout goes past it to its own retrier.
    let definition = one_task(lambda(
        "check",
        json!({
            "TimeoutSeconds": 5,
            "Retry": [
                {"ErrorEquals": ["States.TaskFailed"], "MaxAttempts": 1, "IntervalSeconds": 1},
                {"ErrorEquals": ["States.Timeout"], "MaxAttempts": 1, "IntervalSeconds": 7}
            ]
        }),
    ));
    let definition_value = definition.clone();
    let loaded = Definition::from_json(&definition_value.to_string()).expect("loads");
    let functions = Functions::default().on("check", fails(1, "Boom"));
    let execution = Executor::new(&loaded, &functions)
        .fault(Fault::delay("Work", 2, Duration::from_secs(60)))
        .expect("Work is a Task")
        .run(json!({}))
        .await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    // Call 1 fails (Boom, retried after 1 s); attempt 2 is delayed past the 5 s timeout
    // (retried after 7 s); attempt 3 succeeds. The timed-out attempt is not cancelled: it
    // reaches the handler once its delay is over, after the state has moved on.
    let calls = functions.calls("check");
    assert_eq!(calls.len(), 3);
    assert_eq!((calls[1].1 - calls[0].1).as_secs(), 1 + 5 + 7);
    assert_eq!((calls[2].1 - calls[0].1).as_secs(), 1 + 60);
    let kinds: Vec<_> = execution
        .events_of("Work")
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "TaskStateEntered",
            "TaskScheduled",
            "TaskFailed",
            "TaskScheduled",
            "TaskTimedOut",
            "TaskScheduled",
            "TaskSucceeded",
            "TaskStateExited"
        ]
    );

    // A Catch on States.TaskFailed does not catch a timeout; States.ALL does.
    for (catch, caught) in [("States.TaskFailed", false), ("States.ALL", true)] {
        let definition = json!({"StartAt": "Work", "States": {
            "Work": lambda("stuck", json!({"TimeoutSeconds": 5, "Next": "Done",
                "Catch": [{"ErrorEquals": [catch], "Next": "Caught"}]})),
            "Done": {"Type": "Succeed"},
            "Caught": {"Type": "Succeed"}}});
        let functions = Functions::default()
            .on("stuck", echo)
            .sleeping("stuck", Duration::from_secs(3600));
        let execution = run(definition, &functions, json!({})).await;
        if caught {
            assert_eq!(execution.status, Status::Succeeded);
            assert_eq!(
                execution.output.expect("output")["Error"],
                json!("States.Timeout")
            );
        } else {
            assert_eq!(execution.status, Status::Failed);
            assert_eq!(execution.error.as_deref(), Some("States.Timeout"));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_timeout_fails_the_state_but_the_call_runs_to_its_end() {
    let definition = one_task(lambda("stuck", json!({"TimeoutSeconds": 3})));
    let functions = Functions::default()
        .on("stuck", echo)
        .sleeping("stuck", Duration::from_secs(10));
    let start = Instant::now();
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.status, Status::Failed);
    assert_eq!(execution.error.as_deref(), Some("States.Timeout"));
    let timed_out = execution
        .events_of("Work")
        .find(|e| e.kind == EventType::TaskTimedOut)
        .expect("TaskTimedOut");
    let failed = execution.history.last().expect("last event");
    assert_eq!(failed.kind, EventType::ExecutionFailed);
    assert_eq!(
        failed.timestamp, timed_out.timestamp,
        "the execution failed at the timeout"
    );
    assert_eq!(
        functions.finished("stuck"),
        [start + Duration::from_secs(10)],
        "like a Lambda, the call was not stopped by the state's timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn execution_timeout_stops_the_run() {
    let definition = json!({"TimeoutSeconds": 10, "StartAt": "W", "States": {
        "W": {"Type": "Wait", "Seconds": 3600, "End": true}}});
    let start = Instant::now();
    let execution = run(definition, &Functions::default(), json!({})).await;
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(execution.status, Status::TimedOut);
    assert_eq!(execution.error.as_deref(), Some("States.Timeout"));
    assert_eq!(
        execution.history.last().map(|e| e.kind),
        Some(EventType::ExecutionTimedOut)
    );
}

#[tokio::test(start_paused = true)]
async fn catch_puts_the_error_object_at_its_result_path() {
    let definition = json!({"StartAt": "Work", "States": {
        "Work": lambda("check", json!({"Next": "Done", "Catch": [
            {"ErrorEquals": ["NotCaughtUp"], "Next": "Other"},
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Abort"}]})),
        "Done": {"Type": "Succeed"},
        "Other": {"Type": "Succeed"},
        "Abort": {"Type": "Pass", "End": true}}});
    let functions = Functions::default().on("check", |_, _| {
        Err(TaskFailure::new(
            "LagNotZero",
            "lag is 5 bytes; wait and retry",
        ))
    });
    let execution = run(definition, &functions, json!({"cell": "c1"})).await;
    assert_eq!(execution.status, Status::Succeeded);
    let output = execution.output.clone().expect("output");
    assert_eq!(output["cell"], json!("c1"));
    assert_eq!(output["error"]["Error"], json!("LagNotZero"));
    // lambda:invoke reports a function error's message inside a JSON Cause.
    assert_eq!(
        output["error"]["Cause"],
        json!("{\"errorMessage\":\"lag is 5 bytes; wait and retry\",\"errorType\":\"LagNotZero\"}")
    );
    assert!(execution
        .events_of("Abort")
        .any(|e| e.kind == EventType::StateExited(StateType::Pass)));
}

#[tokio::test(start_paused = true)]
async fn runtime_errors_escape_catch_and_path_failures_do_not() {
    let catch_all = json!([{"ErrorEquals": ["States.ALL"], "Next": "Caught"}]);
    let functions = Functions::default().on("f", |_, _| Ok(json!("text")));
    let with = |state: Value| json!({"StartAt": "Work", "States": {"Work": state, "Caught": {"Type": "Succeed"}}});
    // InputPath selecting nothing: States.Runtime, not caught by States.ALL.
    let execution = run(
        with(lambda(
            "f",
            json!({"InputPath": "$.missing", "Catch": catch_all}),
        )),
        &functions,
        json!({}),
    )
    .await;
    assert_eq!(execution.error.as_deref(), Some("States.Runtime"));

    // A Parameters path selecting nothing is caught.
    let state = json!({"Type": "Task", "Resource": LAMBDA_INVOKE, "End": true, "Catch": catch_all,
                       "Parameters": {"FunctionName": "f", "Payload": {"x.$": "$.missing"}}});
    let execution = run(with(state), &functions, json!({})).await;
    assert_eq!(execution.status, Status::Succeeded);
    assert_eq!(
        execution.output.expect("output")["Error"],
        json!("States.ParameterPathFailure")
    );

    // ResultPath through a string: States.ResultPathMatchFailure, caught.
    let execution = run(
        with(lambda(
            "f",
            json!({"ResultPath": "$.s.inner", "Catch": catch_all}),
        )),
        &functions,
        json!({"s": "scalar"}),
    )
    .await;
    assert_eq!(
        execution.output.expect("output")["Error"],
        json!("States.ResultPathMatchFailure")
    );
}

#[tokio::test(start_paused = true)]
async fn outputs_over_256_kib_fail_with_data_limit_exceeded() {
    let big = "x".repeat(300 * 1024);
    let functions = Functions::default().on("big", move |_, _| Ok(json!(big.clone())));
    let with_catch = |errors: Value| {
        json!({"StartAt": "Work", "States": {
            "Work": lambda("big", json!({"Catch": [{"ErrorEquals": errors, "ResultPath": "$.error", "Next": "Caught"}]})),
            "Caught": {"Type": "Succeed"}}})
    };
    let execution = run(with_catch(json!(["States.ALL"])), &functions, json!({})).await;
    assert_eq!(execution.status, Status::Failed);
    assert_eq!(execution.error.as_deref(), Some("States.DataLimitExceeded"));

    let execution = run(
        with_catch(json!(["States.DataLimitExceeded"])),
        &functions,
        json!({}),
    )
    .await;
    assert_eq!(execution.status, Status::Succeeded);
    assert_eq!(
        execution.output.expect("output")["error"]["Error"],
        json!("States.DataLimitExceeded")
    );
}

#[tokio::test(start_paused = true)]
async fn faults_replace_the_call_at_the_given_attempt() {
    let definition = Definition::from_json(
        &json!({"StartAt": "Work", "States": {"Work": lambda("check", json!({"Retry": [
            {"ErrorEquals": ["Lambda.ServiceException"], "IntervalSeconds": 1, "MaxAttempts": 2}]}))}})
        .to_string(),
    )
    .expect("loads");
    let functions = Functions::default().on("check", echo);
    let execution = Executor::new(&definition, &functions)
        .fault(Fault::error(
            "Work",
            1,
            "Lambda.ServiceException",
            "injected",
        ))
        .and_then(|e| {
            e.fault(Fault::error(
                "Work",
                2,
                "Lambda.ServiceException",
                "injected",
            ))
        })
        .expect("faults name a Task")
        .run(json!({"a": 1}))
        .await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    assert_eq!(
        functions.calls("check").len(),
        1,
        "only attempt 3 reached the function"
    );
    let failures: Vec<_> = execution
        .events_of("Work")
        .filter(|e| e.kind == EventType::TaskFailed)
        .map(|e| (e.error.clone(), e.cause.clone()))
        .collect();
    // A service error's cause is passed through unchanged.
    assert_eq!(
        failures,
        vec![
            (
                Some("Lambda.ServiceException".to_owned()),
                Some("injected".to_owned())
            );
            2
        ]
    );

    // A function error injected at attempt 1 looks like the function raised it.
    let execution = Executor::new(&definition, &functions)
        .fault(Fault::error(
            "Work",
            1,
            "PauseFailed",
            "pgbouncer-2 refused",
        ))
        .expect("Work is a Task")
        .run(json!({}))
        .await;
    assert_eq!(execution.error.as_deref(), Some("PauseFailed"));
    assert_eq!(
        execution.cause.as_deref(),
        Some("{\"errorMessage\":\"pgbouncer-2 refused\",\"errorType\":\"PauseFailed\"}")
    );

    assert!(Executor::new(&definition, &functions)
        .fault(Fault::error("Nope", 1, "X", ""))
        .is_err());
    assert!(Executor::new(&definition, &functions)
        .fault(Fault::error("Work", 0, "X", ""))
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn fault_attempts_count_invocations_across_visits_of_a_state() {
    // Work runs, loops back once through Again, and runs a second time.
    let definition = Definition::from_json(
        &json!({"StartAt": "Work", "States": {
            "Work": lambda("count", json!({"ResultPath": null, "Next": "Again"})),
            "Again": {"Type": "Choice", "Choices": [
                {"Variable": "$.loops", "IsPresent": false, "Next": "Mark"}], "Default": "Done"},
            "Mark": {"Type": "Pass", "Result": 1, "ResultPath": "$.loops", "Next": "Work"},
            "Done": {"Type": "Succeed"}}})
        .to_string(),
    )
    .expect("loads");
    let functions = Functions::default().on("count", echo);
    let execution = Executor::new(&definition, &functions)
        .fault(Fault::error("Work", 2, "DrainTimeout", "second visit"))
        .expect("Work is a Task")
        .run(json!({}))
        .await;
    assert_eq!(execution.status, Status::Failed);
    assert_eq!(execution.error.as_deref(), Some("DrainTimeout"));
    assert_eq!(functions.calls("count").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn other_resources_pass_through_unwrapped() {
    let definition = one_task(json!({"Type": "Task", "Resource": "local:sum",
        "Parameters": {"a": 1, "b": 2}, "End": true}));
    let functions = Functions::default().on("local:sum", |_, p| {
        Ok(json!(
            p["a"].as_i64().unwrap_or(0) + p["b"].as_i64().unwrap_or(0)
        ))
    });
    let execution = run(definition, &functions, json!({})).await;
    assert_eq!(execution.output, Some(json!(3)));

    let failing = one_task(json!({"Type": "Task", "Resource": "local:fail", "End": true}));
    let functions = Functions::default().on("local:fail", |_, _| {
        Err(TaskFailure::new("Broken", "raw cause"))
    });
    let execution = run(failing, &functions, json!({})).await;
    assert_eq!(execution.cause.as_deref(), Some("raw cause"));
}

#[tokio::test(start_paused = true)]
async fn history_is_ordered_timestamped_and_serializes_with_step_functions_names() {
    let definition = json!({"StartAt": "Wait", "States": {
        "Wait": {"Type": "Wait", "Seconds": 2, "Next": "Work"},
        "Work": lambda("f", json!({}))}});
    let functions = Functions::default().on("f", echo);
    let execution = run(definition, &functions, json!({"k": 1})).await;
    assert_eq!(
        types(&execution),
        [
            "ExecutionStarted",
            "WaitStateEntered",
            "WaitStateExited",
            "TaskStateEntered",
            "TaskScheduled",
            "TaskSucceeded",
            "TaskStateExited",
            "ExecutionSucceeded"
        ]
    );
    let ids: Vec<_> = execution.history.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<u64>>());
    assert!(execution
        .history
        .iter()
        .all(|e| is_rfc3339_millis(&e.timestamp)));
    // The Wait advanced the recorded (virtual) clock by 2 s.
    let at = |i: usize| {
        time::OffsetDateTime::parse(
            &execution.history[i].timestamp,
            &time::format_description::well_known::Rfc3339,
        )
        .expect("parses")
    };
    assert_eq!((at(2) - at(1)).whole_seconds(), 2);

    let json = serde_json::to_value(&execution).expect("serializes");
    assert_eq!(json["status"], json!("SUCCEEDED"));
    assert_eq!(json["history"][3]["type"], json!("TaskStateEntered"));
    assert_eq!(json["history"][3]["state"], json!("Work"));
    assert_eq!(json["history"][4]["resource"], json!(LAMBDA_INVOKE));
    assert_eq!(
        json["history"][4]["input"],
        json!({"FunctionName": "f", "Payload": {"k": 1}})
    );
    assert_eq!(json["history"][5]["output"]["Payload"], json!({"k": 1}));

    let dir = std::env::temp_dir().join(format!("sm-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("history.json");
    execution.write_history(&path).expect("writes");
    let read: Value = serde_json::from_slice(&std::fs::read(&path).expect("reads")).expect("json");
    assert_eq!(read, json);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn an_execution_future_can_move_between_threads() {
    fn assert_send<T: Send>(value: T) -> T {
        value
    }
    let definition = Definition::from_json(
        &json!({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}).to_string(),
    )
    .expect("loads");
    let functions = Functions::default();
    let executor = Executor::new(&definition, &functions);
    let execution = assert_send(executor.run(json!({"a": 1}))).await;
    assert_eq!(execution.output, Some(json!({"a": 1})));
}

// Map and child executions, checked against the Step Functions Developer Guide's own
// examples ("Map state in inline mode", "Tolerated failure threshold for Distributed Map
// state", "Start a new AWS Step Functions state machine from a running execution").

/// The guide's inline Map example: InputPath narrows to `detail`, each item of `shipped`
/// reaches the processor through ItemSelector with the partner beside it, and the results
/// replace `detail.shipped` in the whole input.
#[tokio::test(start_paused = true)]
async fn map_item_selector_builds_each_iteration_input_as_the_guide_shows() {
    let functions = Functions::default().on("ship-val", |_, payload| {
        Ok(json!({"validated": payload["parcel"]["prod"], "by": payload["courier"]}))
    });
    let definition = json!({
        "StartAt": "Validate-All",
        "States": {"Validate-All": {
            "Type": "Map",
            "InputPath": "$.detail",
            "ItemsPath": "$.shipped",
            "MaxConcurrency": 0,
            "ItemSelector": {"parcel.$": "$$.Map.Item.Value", "courier.$": "$.delivery-partner"},
            "ItemProcessor": {"StartAt": "Validate", "States": {"Validate": {
                "Type": "Task", "Resource": "ship-val", "End": true
            }}},
            "ResultPath": "$.detail.shipped",
            "End": true
        }}
    });
    let input = json!({
        "ship-date": "2016-03-14T01:59:00Z",
        "detail": {
            "delivery-partner": "UQS",
            "shipped": [
                {"prod": "R31", "dest-code": 9511, "quantity": 1344},
                {"prod": "S39", "dest-code": 9511, "quantity": 40},
                {"prod": "R31", "dest-code": 9833, "quantity": 12}
            ]
        }
    });
    let execution = run(definition, &functions, input).await;
    assert_eq!(execution.status, Status::Succeeded, "{execution:?}");
    let payloads: Vec<Value> = functions
        .calls("ship-val")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(payloads.len(), 3);
    assert!(payloads.contains(
        &json!({"parcel": {"prod": "S39", "dest-code": 9511, "quantity": 40}, "courier": "UQS"})
    ));
    assert_eq!(
        execution.output.clone().expect("output"),
        json!({
            "ship-date": "2016-03-14T01:59:00Z",
            "detail": {
                "delivery-partner": "UQS",
                "shipped": [
                    {"validated": "R31", "by": "UQS"},
                    {"validated": "S39", "by": "UQS"},
                    {"validated": "R31", "by": "UQS"}
                ]
            }
        })
    );
    let kinds = types(&execution);
    assert_eq!(
        kinds.iter().filter(|k| *k == "MapIterationStarted").count(),
        3
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "MapIterationSucceeded")
            .count(),
        3
    );
    assert!(
        kinds.contains(&"MapStateStarted".to_owned())
            && kinds.contains(&"MapStateSucceeded".to_owned())
    );
}

/// The guide's context-object example: `$$.Map.Item.Index` and `$$.Map.Item.Value`; with
/// no ItemSelector an iteration gets the item itself.
#[tokio::test(start_paused = true)]
async fn map_context_gives_each_items_index_and_value() {
    let functions = Functions::default();
    let pass_map = |selector: Option<Value>| {
        let mut map = json!({
            "Type": "Map",
            "ItemProcessor": {"StartAt": "Same", "States": {"Same": {"Type": "Pass", "End": true}}},
            "End": true
        });
        if let Some(selector) = selector {
            map["ItemSelector"] = selector;
        }
        json!({"StartAt": "Each", "States": {"Each": map}})
    };
    let selected = run(
        pass_map(Some(
            json!({"ContextIndex.$": "$$.Map.Item.Index", "ContextValue.$": "$$.Map.Item.Value"}),
        )),
        &functions,
        json!([{"who": "bob"}, {"who": "meg"}, {"who": "joe"}]),
    )
    .await;
    assert_eq!(
        selected.output.expect("output"),
        json!([
            {"ContextIndex": 0, "ContextValue": {"who": "bob"}},
            {"ContextIndex": 1, "ContextValue": {"who": "meg"}},
            {"ContextIndex": 2, "ContextValue": {"who": "joe"}}
        ])
    );
    let plain = run(pass_map(None), &functions, json!([1, "two", {"three": 3}])).await;
    assert_eq!(
        plain.output.expect("output"),
        json!([1, "two", {"three": 3}])
    );
    let empty = run(pass_map(None), &functions, json!([])).await;
    assert_eq!(empty.output.expect("output"), json!([]));
    let not_array = run(pass_map(None), &functions, json!({"a": 1})).await;
    assert_eq!(not_array.error.as_deref(), Some("States.Runtime"));
}

/// MaxConcurrency bounds the iterations in flight (0 is no bound, and MaxConcurrencyPath
/// reads it from the input); outputs keep the items' order whatever order they end in.
#[tokio::test(start_paused = true)]
async fn map_max_concurrency_bounds_iterations_in_flight() {
    let definition = |concurrency: Value| {
        let mut map = json!({
            "Type": "Map",
            "ItemsPath": "$.items",
            "ItemProcessor": {"StartAt": "Slow", "States": {"Slow": {
                "Type": "Task", "Resource": "slow", "End": true
            }}},
            "End": true
        });
        for (k, v) in concurrency.as_object().expect("object") {
            map[k] = v.clone();
        }
        json!({"StartAt": "Each", "States": {"Each": map}})
    };
    let input = json!({"items": [1, 2, 3, 4, 5], "limit": 2});
    for (concurrency, starts) in [
        (json!({"MaxConcurrency": 2}), vec![0, 0, 10, 10, 20]),
        (
            json!({"MaxConcurrencyPath": "$.limit"}),
            vec![0, 0, 10, 10, 20],
        ),
        (json!({"MaxConcurrency": 1}), vec![0, 10, 20, 30, 40]),
        (json!({"MaxConcurrency": 0}), vec![0, 0, 0, 0, 0]),
    ] {
        let functions = Functions::default()
            .on("slow", echo)
            .sleeping("slow", Duration::from_secs(10));
        let begin = Instant::now();
        let execution = run(definition(concurrency.clone()), &functions, input.clone()).await;
        assert_eq!(execution.status, Status::Succeeded, "{concurrency}");
        assert_eq!(
            execution.output,
            Some(json!([1, 2, 3, 4, 5])),
            "{concurrency}"
        );
        let mut at: Vec<u64> = functions
            .calls("slow")
            .iter()
            .map(|(_, t)| (*t - begin).as_secs())
            .collect();
        at.sort_unstable();
        assert_eq!(at, starts, "{concurrency}");
    }
}

/// An inline Map fails with its first failed iteration's error: no other iteration starts
/// a new state (a Task already running goes on to its end, unused), Retry and Catch on the
/// Map see that error, and ToleratedFailureCount is refused on an inline Map.
#[tokio::test(start_paused = true)]
async fn an_inline_map_fails_with_its_first_failed_iteration() {
    let functions = Functions::default()
        .on("work", echo)
        .on("fail-fast", |_, payload| {
            Err(TaskFailure::new("Broken", format!("item {payload}")))
        })
        .on("after", echo)
        .sleeping("work", Duration::from_secs(10));
    let definition = json!({
        "StartAt": "Each",
        "States": {
            "Each": {
                "Type": "Map",
                "MaxConcurrency": 2,
                "ItemProcessor": {"StartAt": "Which", "States": {
                    "Which": {"Type": "Choice", "Choices": [
                        {"Variable": "$", "NumericEquals": 2, "Next": "Fail fast"}
                    ], "Default": "Work"},
                    "Fail fast": {"Type": "Task", "Resource": "fail-fast", "End": true},
                    "Work": {"Type": "Task", "Resource": "work", "Next": "After"},
                    "After": {"Type": "Task", "Resource": "after", "End": true}
                }},
                "Catch": [{"ErrorEquals": ["Broken"], "ResultPath": "$", "Next": "Caught"}],
                "Next": "Caught"
            },
            "Caught": {"Type": "Pass", "End": true}
        }
    });
    let execution = run(definition, &functions, json!([1, 2, 3, 4])).await;
    assert_eq!(execution.status, Status::Succeeded);
    assert_eq!(
        execution.output,
        Some(json!({"Error": "Broken", "Cause": "item 2"}))
    );
    // Items 1 and 2 started together; 2 failed at once, so 3 and 4 never started and 1's
    // next state never ran, though its Task ran to its end.
    let started: Vec<Value> = functions.calls("work").into_iter().map(|c| c.0).collect();
    assert_eq!(started, vec![json!(1)]);
    assert_eq!(functions.finished("work").len(), 1);
    assert!(functions.calls("after").is_empty());
    let kinds = types(&execution);
    assert!(kinds.contains(&"MapIterationFailed".to_owned()));
    assert!(kinds.contains(&"MapIterationAborted".to_owned()));
    assert!(kinds.contains(&"MapStateFailed".to_owned()));

    let refused = Definition::from_json(
        &json!({"StartAt": "Each", "States": {"Each": {
            "Type": "Map", "ToleratedFailureCount": 1,
            "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}},
            "End": true
        }}})
        .to_string(),
    )
    .expect_err("inline Maps have no failure threshold");
    assert_eq!(refused.field.as_deref(), Some("ToleratedFailureCount"));
    let refused = Definition::from_json(
        &json!({"StartAt": "Each", "States": {"Each": {
            "Type": "Map", "ItemReader": {},
            "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}},
            "End": true
        }}})
        .to_string(),
    )
    .expect_err("ItemReader is not implemented");
    assert_eq!(refused.field.as_deref(), Some("ItemReader"));
}

/// The guide's thresholds for a Distributed Map: the Map Run fails with
/// `States.ExceedToleratedFailureThreshold` once failures exceed the count, or the
/// percentage of all items; at or under it the Map succeeds. Both absent: 0 %.
#[tokio::test(start_paused = true)]
async fn a_distributed_map_tolerates_failures_up_to_its_threshold() {
    let definition = |threshold: Value| {
        let mut map = json!({
            "Type": "Map",
            "ItemsPath": "$.items",
            "MaxConcurrency": 1,
            "ItemProcessor": {
                "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                "StartAt": "Work",
                "States": {"Work": {"Type": "Task", "Resource": "work", "End": true}}
            },
            "Label": "cells",
            "End": true
        });
        for (k, v) in threshold.as_object().expect("object") {
            map[k] = v.clone();
        }
        json!({"StartAt": "Each", "States": {"Each": map}})
    };
    let failing = |bad: &'static [i64]| {
        Functions::default().on("work", move |_, payload| {
            if bad.contains(&payload.as_i64().unwrap_or_default()) {
                Err(TaskFailure::new("Broken", format!("item {payload}")))
            } else {
                Ok(payload)
            }
        })
    };
    let input = json!({"items": [1, 2, 3, 4], "tolerate": 1});
    for (threshold, bad, ok, calls) in [
        (json!({"ToleratedFailureCount": 1}), &[2][..], true, 4),
        (
            json!({"ToleratedFailureCountPath": "$.tolerate"}),
            &[2][..],
            true,
            4,
        ),
        (json!({"ToleratedFailureCount": 1}), &[2, 3][..], false, 3),
        (
            json!({"ToleratedFailurePercentage": 50}),
            &[1, 2][..],
            true,
            4,
        ),
        (
            json!({"ToleratedFailurePercentage": 50}),
            &[1, 2, 3][..],
            false,
            3,
        ),
        (json!({"ToleratedFailureCount": 0}), &[4][..], false, 4),
        (json!({}), &[1][..], false, 1),
    ] {
        let functions = failing(bad);
        let execution = run(definition(threshold.clone()), &functions, input.clone()).await;
        assert_eq!(functions.calls("work").len(), calls, "{threshold} {bad:?}");
        if ok {
            assert_eq!(execution.status, Status::Succeeded, "{threshold} {bad:?}");
            let output = execution.output.expect("output");
            let failed = output
                .as_array()
                .expect("array")
                .iter()
                .filter(|o| o.get("Error") == Some(&json!("Broken")))
                .count();
            assert_eq!(failed, bad.len(), "{output}");
        } else {
            assert_eq!(
                execution.error.as_deref(),
                Some("States.ExceedToleratedFailureThreshold"),
                "{threshold} {bad:?}"
            );
        }
    }
}

/// `startExecution.sync:2` runs the named state machine to its end: its output comes back
/// as JSON in the DescribeExecution shape; a failed child fails the Task with
/// `States.TaskFailed` whose cause carries the child's own error and cause (what a Catch
/// sees); `.sync` gives the output as a string; an unknown ARN is the service's error.
#[tokio::test(start_paused = true)]
async fn child_executions_run_to_their_end_and_their_failure_reaches_the_parent() {
    let functions = Functions::default().on("child-work", |_, payload| {
        if payload["fail"] == json!(true) {
            Err(TaskFailure::new("ChildBroke", "the child's reason"))
        } else {
            Ok(json!({"done": payload["cell"]}))
        }
    });
    let child = Definition::from_json(
        &json!({"StartAt": "Work", "States": {
            "Work": {"Type": "Task", "Resource": "child-work", "Catch": [
                {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}
            ], "End": true},
            "Failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"}
        }})
        .to_string(),
    )
    .expect("child loads");
    let parent = |resource: &str, arn: &str| {
        Definition::from_json(
            &json!({"StartAt": "Start child", "States": {
                "Start child": {
                    "Type": "Task",
                    "Resource": resource,
                    "Parameters": {
                        "StateMachineArn": arn,
                        "Input": {"cell.$": "$.cell", "fail.$": "$.fail"},
                        "Name.$": "States.Format('child-{}', $.cell)"
                    },
                    "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.error", "Next": "Caught"}],
                    "End": true
                },
                "Caught": {"Type": "Pass", "End": true}
            }})
            .to_string(),
        )
        .expect("parent loads")
    };
    let arn = "arn:aws:states:us-east-1:111122223333:stateMachine:child";
    let run_parent = |definition: &Definition, input: Value| {
        let definition = definition.clone();
        let child = child.clone();
        let functions = &functions;
        async move {
            Executor::new(&definition, functions)
                .name("parent")
                .state_machine(arn, "child", &child)
                .run(input)
                .await
        }
    };

    let sync2 = parent("arn:aws:states:::states:startExecution.sync:2", arn);
    let ok = run_parent(&sync2, json!({"cell": "c1", "fail": false})).await;
    assert_eq!(ok.status, Status::Succeeded);
    let described = ok.output.expect("output");
    assert_eq!(described["Status"], json!("SUCCEEDED"));
    assert_eq!(described["Output"], json!({"done": "c1"}));
    assert_eq!(described["Input"], json!({"cell": "c1", "fail": false}));
    assert_eq!(described["Name"], json!("child-c1"));
    assert_eq!(described["StateMachineArn"], json!(arn));
    assert!(described["StopDate"].as_i64() >= described["StartDate"].as_i64());
    assert_eq!(ok.children.len(), 1);
    assert_eq!(ok.children[0].name, "child-c1");

    let failed = run_parent(&sync2, json!({"cell": "c2", "fail": true})).await;
    let error = &failed.output.expect("caught")["error"];
    assert_eq!(error["Error"], json!("States.TaskFailed"));
    let cause: Value =
        serde_json::from_str(error["Cause"].as_str().expect("cause")).expect("cause is JSON");
    assert_eq!(cause["Status"], json!("FAILED"));
    assert_eq!(cause["Error"], json!("ChildBroke"));
    assert_eq!(cause["Cause"], json!("the child's reason"));
    assert_eq!(failed.children[0].status, Status::Failed);

    let sync1 = parent("arn:aws:states:::states:startExecution.sync", arn);
    let text = run_parent(&sync1, json!({"cell": "c3", "fail": false})).await;
    assert_eq!(
        text.output.expect("output")["Output"],
        json!("{\"done\":\"c3\"}")
    );

    let unknown = parent(
        "arn:aws:states:::states:startExecution.sync:2",
        "arn:aws:states:us-east-1:111122223333:stateMachine:nope",
    );
    let missing = run_parent(&unknown, json!({"cell": "c4", "fail": false})).await;
    assert_eq!(
        missing.output.expect("caught")["error"]["Error"],
        json!("StepFunctions.StateMachineDoesNotExistException")
    );
    assert!(missing.children.is_empty());
    assert!(functions.calls("child-work").len() == 3);

    let waiting = Definition::from_json(
        &json!({"StartAt": "T", "States": {"T": {
            "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken", "End": true
        }}})
        .to_string(),
    );
    assert!(waiting.is_err(), "callbacks stay refused");
}
