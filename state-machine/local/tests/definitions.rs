//! The checked-in definitions against what they call: every Task invokes a function crate
//! that exists, with a timeout above that function's Lambda timeout; every error name is
//! catalogued; the switchover's shape (abort path, pause deadline, lag gate) is what
//! DESIGN §3 and §4 say.

use std::collections::BTreeSet;

use serde_json::Value;
use switchyard_cell::Budgets;
use switchyard_errors::{ErrorName, Retry};
use switchyard_local_run::{function_name, load, FUNCTIONS, PREPARE, SWITCHOVER};
use switchyard_state_machine::LAMBDA_INVOKE;

const LAMBDA_SERVICE_ERRORS: [&str; 5] = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "Lambda.ClientExecutionTimeoutException",
];

fn raw(name: &str) -> Value {
    let path = switchyard_local_run::definition_path(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("definition")).expect("json")
}

/// `state-machine/functions.json`: each function's Lambda settings, which Terraform uses.
fn lambda_timeouts() -> serde_json::Map<String, Value> {
    let path = switchyard_local_run::definition_path("functions").with_extension("");
    let path = path.with_file_name("functions.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("functions.json"))
        .expect("json");
    v.as_object().expect("object").clone()
}

fn states(definition: &Value) -> &serde_json::Map<String, Value> {
    definition["States"].as_object().expect("States")
}

/// Every state, those inside Parallel branches included, with its name.
fn all_states(definition: &Value) -> Vec<(&String, &Value)> {
    let mut out = Vec::new();
    for (name, state) in states(definition) {
        out.push((name, state));
        for branch in state["Branches"].as_array().into_iter().flatten() {
            out.extend(all_states(branch));
        }
    }
    out
}

fn function_of(state: &Value) -> String {
    let placeholder = state["Parameters"]["FunctionName"]
        .as_str()
        .unwrap_or_default();
    function_name(placeholder).unwrap_or_else(|| panic!("{placeholder} names no function crate"))
}

#[test]
fn both_definitions_load_in_the_local_executor() {
    for name in [PREPARE, SWITCHOVER] {
        load(name).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_task_invokes_an_existing_function_with_a_timeout_above_its_lambdas() {
    let timeouts = lambda_timeouts();
    let mut listed: Vec<&str> = timeouts.keys().map(String::as_str).collect();
    listed.sort_unstable();
    let mut crates = FUNCTIONS.to_vec();
    crates.sort_unstable();
    assert_eq!(
        listed, crates,
        "functions.json lists exactly the function crates"
    );

    let mut used = BTreeSet::new();
    for name in [PREPARE, SWITCHOVER] {
        let definition = load(name).expect("loads");
        for task in definition.task_states() {
            assert_eq!(task.resource, LAMBDA_INVOKE, "{name}: {}", task.name);
            let parameters = task.parameters.expect("Parameters");
            let placeholder = parameters["FunctionName"].as_str().expect("FunctionName");
            let function = function_name(placeholder).unwrap_or_else(|| {
                panic!("{name}: {}: {placeholder} names no function", task.name)
            });
            let lambda = timeouts[&function]["timeout_seconds"]
                .as_u64()
                .expect("timeout");
            let timeout = task
                .timeout
                .expect("every Task has TimeoutSeconds")
                .as_secs();
            assert!(
                timeout > lambda,
                "{name}: {}: TimeoutSeconds {timeout} must exceed {function}'s Lambda timeout {lambda}",
                task.name
            );
            assert!(
                parameters["Payload"]["cell.$"] == "$.cell",
                "{name}: {}: the payload carries the cell document",
                task.name
            );
            used.insert(function);
        }
    }
    let unused: Vec<&&str> = FUNCTIONS.iter().filter(|f| !used.contains(**f)).collect();
    assert!(
        unused.is_empty(),
        "functions no state machine calls: {unused:?}"
    );
}

#[test]
fn every_error_name_is_catalogued_or_a_service_error() {
    let catalogued: BTreeSet<&str> = ErrorName::ALL.iter().map(|n| n.as_str()).collect();
    for name in [PREPARE, SWITCHOVER] {
        let definition = load(name).expect("loads");
        for entry in definition.error_equals() {
            let known = catalogued.contains(entry.error)
                || entry.error.starts_with("States.")
                || LAMBDA_SERVICE_ERRORS.contains(&entry.error);
            assert!(
                known,
                "{name}: {}: {} is not in the error catalogue",
                entry.state, entry.error
            );
        }
    }
}

#[test]
fn every_task_retries_lambda_service_errors_and_only_not_yet_names_before_the_point_of_no_return() {
    for name in [PREPARE, SWITCHOVER] {
        let definition = raw(name);
        for (state_name, state) in all_states(&definition) {
            if state["Type"] != "Task" {
                continue;
            }
            let retry = state["Retry"].as_array().expect("Retry");
            let first: Vec<&str> = retry[0]["ErrorEquals"]
                .as_array()
                .expect("names")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                first, LAMBDA_SERVICE_ERRORS,
                "{name}: {state_name}: the standard Retry first"
            );
            let retries_everything = retry.iter().any(|r| {
                r["ErrorEquals"]
                    .as_array()
                    .is_some_and(|e| e.contains(&Value::from("States.ALL")))
            });
            // Forward steps before resume-pgbouncer retry only what can succeed later; a
            // stop error must reach the Catch at once.
            if !retries_everything {
                for r in &retry[1..] {
                    for error in r["ErrorEquals"].as_array().expect("names") {
                        let error = error.as_str().expect("name");
                        let catalogued = ErrorName::ALL
                            .iter()
                            .find(|n| n.as_str() == error)
                            .unwrap_or_else(|| panic!("{state_name}: {error}"));
                        assert_eq!(
                            catalogued.retry(),
                            Retry::NotYet,
                            "{name}: {state_name} retries the stop error {error}"
                        );
                    }
                }
            } else {
                assert!(
                    state_name.starts_with("abort: ") || after_point_of_no_return(state_name),
                    "{name}: {state_name} retries every error but is a forward step before resume"
                );
            }
        }
    }
}

/// The forward steps after resume-pgbouncer.
fn after_point_of_no_return(state: &str) -> bool {
    [
        "scale-services up",
        "finalize-replication drop",
        "release-lock",
    ]
    .contains(&state)
}

/// The switchover's forward states in order, from StartAt along `Next`.
fn forward_path(definition: &Value) -> Vec<String> {
    let states = states(definition);
    let mut path = Vec::new();
    let mut at = definition["StartAt"].as_str().map(str::to_owned);
    while let Some(name) = at {
        let state = &states[&name];
        path.push(name);
        at = state["Next"].as_str().map(str::to_owned);
    }
    path
}

/// The functions along the forward path, a Parallel's branches in their order.
fn forward_functions(definition: &Value) -> Vec<String> {
    let mut functions = Vec::new();
    for name in forward_path(definition) {
        let state = &states(definition)[&name];
        match state["Type"].as_str() {
            Some("Task") => functions.push(function_of(state)),
            Some("Parallel") => {
                for branch in state["Branches"].as_array().expect("Branches") {
                    functions.extend(forward_functions(branch));
                }
            }
            _ => {}
        }
    }
    functions
}

#[test]
fn the_switchover_runs_seed_000s_order() {
    let definition = raw(SWITCHOVER);
    assert_eq!(
        forward_functions(&definition),
        [
            "acquire-lock",
            "preflight",
            "scale-services",
            "pause-pgbouncer",
            "revoke-writes",
            // Side by side after the freeze (one Parallel): independent waits.
            "drop-downstream-subscriptions",
            "check-slot-lag",
            "verify-data",
            "sync-sequences",
            "finalize-replication",
            "rename-clusters",
            "refresh-nlb-target",
            "recreate-downstream-subscriptions",
            "resume-pgbouncer",
            "scale-services",
            "finalize-replication",
            "release-lock",
        ]
    );
    // The gate comes before the data check, in one branch.
    let freeze = &states(&definition)["freeze checks"];
    let gate = &freeze["Branches"][1]["States"]["check-slot-lag"];
    assert_eq!(gate["Next"], "verify-data");
}

#[test]
fn every_step_before_the_point_of_no_return_aborts_on_any_error_and_carries_the_pause_deadline() {
    let definition = raw(SWITCHOVER);
    let states = states(&definition);
    let path = forward_path(&definition);
    let resume = path
        .iter()
        .position(|s| s == "resume-pgbouncer")
        .expect("resume");
    let pause = path
        .iter()
        .position(|s| s == "pause-pgbouncer")
        .expect("pause");
    for (i, name) in path.iter().enumerate().take(resume + 1) {
        let state = &states[name];
        let catch = state["Catch"].as_array().expect("Catch");
        assert_eq!(catch.len(), 1, "{name}");
        assert_eq!(
            catch[0]["ErrorEquals"],
            serde_json::json!(["States.ALL"]),
            "{name}"
        );
        let expected = if name == "acquire-lock" {
            // The lock is not ours: nothing to undo, and the abort path must not release it.
            "not started"
        } else {
            "abort: rename-clusters back"
        };
        assert_eq!(catch[0]["Next"], expected, "{name}");
        // A Parallel's branch Tasks have no Catch of their own: their errors fail the
        // Parallel, whose Catch takes the abort path.
        let tasks: Vec<(String, &Value)> = if state["Type"] == "Parallel" {
            state["Branches"]
                .as_array()
                .expect("Branches")
                .iter()
                .flat_map(all_states)
                .filter(|(_, s)| s["Type"] == "Task")
                .map(|(n, s)| (n.clone(), s))
                .collect()
        } else {
            vec![(name.clone(), state)]
        };
        for (task, task_state) in tasks {
            if task != *name {
                assert!(
                    task_state.get("Catch").is_none(),
                    "{task}: caught in its branch"
                );
            }
            let deadline = task_state["Parameters"]["Payload"].get("pause_deadline.$");
            assert_eq!(
                deadline.is_some(),
                i > pause,
                "{task}: pause_deadline from pause-pgbouncer's output on every step after it"
            );
        }
    }
    // The abort path ends in Fail, carrying the cause; each of its steps leaves PgBouncer
    // paused rather than continue past a failed undo.
    let mut at = Some("abort: rename-clusters back".to_owned());
    let mut abort_steps = Vec::new();
    while let Some(name) = at {
        let state = &states[&name];
        if state["Type"] == "Fail" {
            assert_eq!(name, "aborted");
            assert_eq!(state["ErrorPath"], "$.error.Error");
            assert_eq!(state["CausePath"], "$.error.Cause");
            break;
        }
        assert_eq!(state["Catch"][0]["Next"], "abort incomplete", "{name}");
        assert!(
            state["Parameters"]["Payload"]
                .get("pause_deadline.$")
                .is_none(),
            "{name}"
        );
        abort_steps.push(function_of(state));
        at = state["Next"].as_str().map(str::to_owned);
    }
    assert_eq!(
        abort_steps,
        [
            "rename-clusters",
            "finalize-replication",
            "restore-writes",
            "refresh-nlb-target",
            "recreate-downstream-subscriptions",
            "resume-pgbouncer",
            "scale-services",
            "release-lock",
        ]
    );
}

#[test]
fn the_lag_gate_retry_spends_the_default_lag_gate_budget() {
    let definition = raw(SWITCHOVER);
    let (_, state) = all_states(&definition)
        .into_iter()
        .find(|(name, _)| *name == "check-slot-lag")
        .expect("check-slot-lag");
    let wait = state["Parameters"]["Payload"]["wait_seconds"]
        .as_u64()
        .expect("wait_seconds");
    let retrier = state["Retry"]
        .as_array()
        .expect("Retry")
        .iter()
        .find(|r| r["ErrorEquals"] == serde_json::json!(["LagNotZero"]))
        .expect("LagNotZero retried");
    let attempts = retrier["MaxAttempts"].as_u64().expect("MaxAttempts");
    let interval = retrier["IntervalSeconds"]
        .as_u64()
        .expect("IntervalSeconds");
    assert_eq!(retrier["BackoffRate"].as_f64(), Some(1.0));
    let spent = (attempts + 1) * wait + attempts * interval;
    let budget = Budgets::default().lag_gate_seconds;
    assert!(
        spent.abs_diff(budget) <= wait,
        "the lag gate spends {spent} s, the default budget is {budget} s"
    );
}
