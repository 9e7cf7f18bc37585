//! The checked-in definitions against what they call: every Task invokes a function crate
//! that exists, with a timeout above that function's Lambda timeout; every error name is
//! catalogued; the switchover's shape (abort path, pause deadline, lag gate) is what
//! DESIGN §3 and §4 say.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use switchyard_cell::Budgets;
use switchyard_errors::{ErrorName, Retry};
use switchyard_local_run::fleet::{PREPARE_STATE_MACHINE, SWITCHOVER_STATE_MACHINE};
use switchyard_local_run::{
    function_name, is_read_only, load, DEFINITIONS, FLEET, FUNCTIONS, PREPARE, SWITCHOVER,
};
use switchyard_state_machine::{LAMBDA_INVOKE, START_EXECUTION_SYNC_2};

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
fn every_definition_loads_in_the_local_executor() {
    for name in DEFINITIONS {
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
    for name in DEFINITIONS {
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
            // The fencing token: every function that changes the cell acts as this run
            // (the abort machine: as the stopped run its input names).
            let run = if name == switchyard_local_run::ABORT {
                "$.run_id"
            } else {
                "$$.Execution.Name"
            };
            assert_eq!(
                parameters["Payload"].get("run_id.$").and_then(Value::as_str),
                (!is_read_only(&function)).then_some(run),
                "{name}: {}: run_id is the execution's name exactly when {function} changes the cell",
                task.name
            );
            used.insert(function);
        }
    }
    // Run by a person (or a script), never by a state machine: the drift check at any
    // time; the old cluster's deletion, an explicit step after finalize.
    const ON_DEMAND: [&str; 2] = ["check-drift", "delete-old-cluster"];
    let unused: Vec<&&str> = FUNCTIONS
        .iter()
        .filter(|f| !used.contains(**f) && !ON_DEMAND.contains(f))
        .collect();
    assert!(
        unused.is_empty(),
        "functions no state machine calls: {unused:?}"
    );
}

#[test]
fn every_error_name_is_catalogued_or_a_service_error() {
    let catalogued: BTreeSet<&str> = ErrorName::ALL.iter().map(|n| n.as_str()).collect();
    for name in DEFINITIONS {
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
    for name in DEFINITIONS {
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

/// The forward steps after resume-pgbouncer, and the lock's release on the way out of a
/// run (one that changed nothing, a prepare's, an abandon's).
fn after_point_of_no_return(state: &str) -> bool {
    [
        "scale-services up",
        "finalize-replication drop",
        "finalize-replication reverse",
        "release-lock",
        "prepare failed: release-lock",
        "abandon failed: release-lock",
        "finalize failed: release-lock",
        "not started: release-lock",
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
        // A Choice's forward way is its Default (its rules send failures elsewhere).
        at = state["Next"]
            .as_str()
            .or_else(|| state["Default"].as_str())
            .map(str::to_owned);
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
            // The old blue follows green: the way back.
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
fn before_the_switch_every_error_aborts_and_every_window_step_carries_the_pause_deadline() {
    let definition = raw(SWITCHOVER);
    let states = states(&definition);
    let path = forward_path(&definition);
    let at = |name: &str| path.iter().position(|s| s == name).expect(name);
    let (pause, resume) = (at("pause-pgbouncer"), at("resume-pgbouncer"));
    for (i, name) in path.iter().enumerate().take(resume) {
        let state = &states[name];
        if state["Type"] == "Choice" {
            continue;
        }
        let catch = state["Catch"].as_array().expect("Catch");
        assert_eq!(catch.len(), 1, "{name}");
        assert_eq!(catch[0]["ErrorEquals"], json!(["States.ALL"]), "{name}");
        let expected = if i < at("scale-services down") {
            // Nothing changed yet: give the lock back if ours, never run the abort path.
            "not started: release-lock"
        } else {
            "abort: rename-clusters back"
        };
        assert_eq!(catch[0]["Next"], expected, "{name}");
        if state["Type"] == "Task" {
            assert_eq!(
                state["Parameters"]["Payload"]
                    .get("pause_deadline.$")
                    .is_some(),
                i > pause,
                "{name}: pause_deadline on every step after the pause, until the resume"
            );
        }
    }
    // The freeze checks: each branch catches its own failure, so the Parallel waits for
    // every branch; the choice after it sends a failure down the abort path.
    let freeze = &states["freeze checks"];
    for branch in freeze["Branches"].as_array().expect("Branches") {
        for (task, state) in all_states(branch) {
            if state["Type"] != "Task" {
                continue;
            }
            let catch = state["Catch"].as_array().expect("a branch Task catches");
            assert_eq!(catch.len(), 1, "{task}");
            assert_eq!(catch[0]["ErrorEquals"], json!(["States.ALL"]), "{task}");
            let failed = &branch["States"][catch[0]["Next"].as_str().expect("Next")];
            assert_eq!(failed["Type"], "Pass", "{task}");
            assert_eq!(failed["End"], true, "{task}");
            assert!(
                state["Parameters"]["Payload"]
                    .get("pause_deadline.$")
                    .is_some(),
                "{task}"
            );
        }
    }
    let choice = &states[freeze["Next"].as_str().expect("Next")];
    assert_eq!(choice["Type"], "Choice");
    for rule in choice["Choices"].as_array().expect("Choices") {
        let failed = &states[rule["Next"].as_str().expect("Next")];
        assert_eq!(failed["ResultPath"], "$.error");
        assert_eq!(failed["Next"], "abort: rename-clusters back");
    }
    assert_eq!(
        choice["Choices"].as_array().map(Vec::len),
        freeze["Branches"].as_array().map(Vec::len),
        "one rule per branch"
    );
}

#[test]
fn the_point_of_no_return_goes_forward_on_any_error_after_the_switch() {
    let definition = raw(SWITCHOVER);
    let states = states(&definition);
    let resume = &states["resume-pgbouncer"];
    let next = |errors: Value| {
        resume["Catch"]
            .as_array()
            .expect("Catch")
            .iter()
            .find(|c| c["ErrorEquals"] == errors)
            .map(|c| c["Next"].clone())
    };
    // Some instances resumed: writes are on green; finish forward.
    assert_eq!(
        next(json!(["ResumeIncomplete"])),
        Some(json!("switched: resume-pgbouncer"))
    );
    // Resumed to the wrong server: writes may be on green; page, never roll back.
    assert_eq!(
        next(json!(["ProbeMismatch"])),
        Some(json!("switched, probe mismatch"))
    );
    // Anything else happened before the switched marker: the abort path, whose steps
    // themselves refuse a switched cell.
    assert_eq!(
        next(json!(["States.ALL"])),
        Some(json!("abort: rename-clusters back"))
    );
    assert_eq!(states["switched, probe mismatch"]["Type"], "Fail");

    let switched = &states["switched: resume-pgbouncer"];
    let payload = &switched["Parameters"]["Payload"];
    assert_eq!(payload["direction"], "forward");
    assert!(
        payload.get("pause_deadline.$").is_none(),
        "after the switch, finishing is never cut short by the pause budget"
    );
    assert_eq!(switched["Next"], "scale-services up");
    assert_eq!(
        switched["Catch"][switched["Catch"].as_array().map_or(0, Vec::len) - 1]["Next"],
        "switched, resume incomplete"
    );
    assert!(states["switched, resume incomplete"]["Type"] == "Fail");

    // Every abort step: AlreadySwitched (the cell has switched) goes forward; anything
    // else stops at abort incomplete with PgBouncer paused.
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
        let catch = state["Catch"].as_array().expect("Catch");
        assert_eq!(
            state["Retry"][1],
            json!({"ErrorEquals": ["AlreadySwitched"], "MaxAttempts": 0}),
            "{name}: a switched cell is not retried toward blue, it goes forward at once"
        );
        assert_eq!(
            catch[0]["ErrorEquals"],
            json!(["AlreadySwitched"]),
            "{name}"
        );
        assert_eq!(catch[0]["Next"], "switched: resume-pgbouncer", "{name}");
        assert_eq!(catch[1]["ErrorEquals"], json!(["States.ALL"]), "{name}");
        assert_eq!(catch[1]["Next"], "abort incomplete", "{name}");
        let payload = &state["Parameters"]["Payload"];
        assert!(payload.get("pause_deadline.$").is_none(), "{name}");
        // The functions both paths share say which way they go (scale-services' up is
        // its own direction: services come back either way).
        if [
            "refresh-nlb-target",
            "recreate-downstream-subscriptions",
            "resume-pgbouncer",
        ]
        .contains(&function_of(state).as_str())
        {
            assert_eq!(payload["direction"], "abort", "{name}");
        }
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
    // The forward steps that share a function with the abort path say which way they go.
    for name in [
        "refresh-nlb-target",
        "recreate-downstream-subscriptions",
        "resume-pgbouncer",
    ] {
        assert_eq!(
            states[name]["Parameters"]["Payload"]["direction"], "forward",
            "{name}"
        );
    }
}

#[test]
fn a_run_that_changed_nothing_gives_back_only_its_own_lock() {
    // The abort machine takes no lock: it acts as the stopped run that holds it (its first
    // step refuses any other, LockHeld), and gives it back at its end.
    for name in DEFINITIONS
        .into_iter()
        .filter(|n| *n != switchyard_local_run::ABORT)
    {
        let definition = raw(name);
        let states = states(&definition);
        assert_eq!(
            definition["StartAt"], "acquire-lock",
            "{name}: the lock first"
        );
        assert_eq!(
            states["acquire-lock"]["Catch"][0]["Next"], "not started: release-lock",
            "{name}: a crash after taking the lock must not keep it"
        );
        let release = &states["not started: release-lock"];
        assert_eq!(release["Parameters"]["Payload"]["if_ours"], true, "{name}");
        assert_eq!(release["Next"], "not started", "{name}");
        assert_eq!(release["Catch"][0]["Next"], "not started", "{name}");
        assert_eq!(
            states["acquire-lock"]["Parameters"]["Payload"]["execution.$"], "$$.Execution.Id",
            "{name}: the lock names its execution"
        );
    }
    // Prepare gives its lock back whether it succeeds or fails.
    let prepare = raw(PREPARE);
    let states = states(&prepare);
    for (state_name, state) in states {
        if state["Type"] != "Task" || state_name.contains("release-lock") {
            continue;
        }
        for catch in state["Catch"].as_array().expect("Catch") {
            assert!(
                catch["Next"] == "prepare failed: release-lock"
                    || catch["Next"] == "not started: release-lock",
                "{state_name}: {}",
                catch["Next"]
            );
        }
    }
    // Statistics loop on their cursor, then the full check starts.
    assert_eq!(
        states["check-replication"]["Next"],
        "analyze-green: from the start"
    );
    assert_eq!(states["analyze-green"]["Next"], "analyze-green done?");
    assert_eq!(
        states["analyze-green"]["Parameters"]["Payload"]["resume.$"],
        "$.steps.analyze_green.output.cursor"
    );
    assert_eq!(
        states["analyze-green done?"]["Choices"][0]["Next"],
        "analyze-green"
    );
    assert_eq!(
        states["analyze-green done?"]["Default"],
        "verify-data: from the start"
    );
    // The full check loops on its cursor, then gives the lock back.
    assert_eq!(states["verify-data"]["Next"], "verify-data done?");
    assert_eq!(
        states["verify-data done?"]["Choices"][0]["Next"],
        "verify-data"
    );
    assert_eq!(states["verify-data done?"]["Default"], "release-lock");
    assert_eq!(states["release-lock"]["Next"], "prepared");
}

#[test]
fn the_lag_gate_is_the_cells_budget_and_its_retries_outlast_the_longest_one() {
    let definition = raw(SWITCHOVER);
    let (_, state) = all_states(&definition)
        .into_iter()
        .find(|(name, _)| *name == "check-slot-lag")
        .expect("check-slot-lag");
    let payload = &state["Parameters"]["Payload"];
    assert_eq!(
        payload["gate_started_at.$"], "$$.State.EnteredTime",
        "the gate counts from the state's entry, which its retries keep"
    );
    let wait = payload["wait_seconds"].as_u64().expect("wait_seconds");
    let retrier = state["Retry"]
        .as_array()
        .expect("Retry")
        .iter()
        .find(|r| r["ErrorEquals"] == json!(["LagNotZero"]))
        .expect("LagNotZero retried");
    let attempts = retrier["MaxAttempts"].as_u64().expect("MaxAttempts");
    let interval = retrier["IntervalSeconds"]
        .as_u64()
        .expect("IntervalSeconds");
    assert_eq!(retrier["BackoffRate"].as_f64(), Some(1.0));
    // The function answers LagGateExceeded once the cell's budget is spent; the retries
    // must not run out first, for any budget below the longest pause the cell allows.
    let spent = (attempts + 1) * wait + attempts * interval;
    assert!(
        spent >= switchyard_cell::MAX_PAUSE_SECONDS,
        "the retries cover {spent} s, less than the longest lag gate a cell may ask for"
    );
    assert!(Budgets::default().lag_gate_seconds < Budgets::default().pause_seconds);
}

/// The abort machine is the switchover's abort path, state for state: the same Tasks with
/// the same retries, catches, timeouts and order; only where run_id comes from differs (the
/// stopped run's, from the input, not this execution's name) and where a refusal on a
/// switched cell goes (no forward path here: it ends, nothing changed).
#[test]
fn the_abort_machine_is_the_switchovers_abort_path() {
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(switchyard_local_run::definition_path(name)).expect("read"),
        )
        .expect("json")
    };
    let switchover = read(SWITCHOVER);
    let abort = read(switchyard_local_run::ABORT);
    let start = abort["StartAt"].as_str().expect("StartAt");
    assert_eq!(start, "abort: rename-clusters back");
    let mut state = start.to_owned();
    let mut tasks = 0;
    while state.starts_with("abort: ") {
        let mut ours = abort["States"][&state].clone();
        let theirs = &switchover["States"][&state];
        assert!(theirs.is_object(), "{state} is no switchover state");
        assert_eq!(
            ours["Parameters"]["Payload"]["run_id.$"], "$.run_id",
            "{state}: acts as the stopped run"
        );
        ours["Parameters"]["Payload"]["run_id.$"] =
            theirs["Parameters"]["Payload"]["run_id.$"].clone();
        for catch in ours["Catch"].as_array_mut().expect("Catch") {
            if catch["Next"] == "refused: switched" {
                catch["Next"] = "switched: resume-pgbouncer".into();
            }
        }
        let object = ours.as_object_mut().expect("state");
        match theirs.get("Comment") {
            Some(comment) => object.insert("Comment".to_owned(), comment.clone()),
            None => object.remove("Comment"),
        };
        assert_eq!(&ours, theirs, "{state} differs from the switchover's");
        state = ours["Next"].as_str().expect("Next").to_owned();
        tasks += 1;
    }
    assert_eq!(state, "aborted");
    assert_eq!(tasks, 8, "every step of the abort path");
    assert_eq!(abort["States"]["aborted"]["Type"], "Fail");
    assert_eq!(abort["States"]["refused: switched"]["Type"], "Fail");
    assert_eq!(
        abort["States"]["abort incomplete"],
        switchover["States"]["abort incomplete"]
    );
}

/// The fleet: its Lambda Tasks call existing read-only functions with the standard Retry
/// and a timeout above the Lambda's; its child Tasks start the checked-in prepare and
/// switchover; and no iteration of its Map can fail. An inline Map that fails stops its
/// running iterations, and a switchover stopped halfway skips its abort path with
/// PgBouncer paused: so every Task of a cell catches every error into an outcome state
/// that ends the iteration, and those end states read only paths that exist.
#[test]
fn the_fleet_starts_checked_in_runs_and_no_cell_can_fail_its_wave() {
    let timeouts = lambda_timeouts();
    let definition = load(FLEET).expect("fleet loads");
    for task in definition.task_states() {
        let parameters = task.parameters.expect("Parameters");
        if task.resource == START_EXECUTION_SYNC_2 {
            let machine = parameters["StateMachineArn"].as_str().expect("an ARN");
            assert!(
                [PREPARE_STATE_MACHINE, SWITCHOVER_STATE_MACHINE].contains(&machine),
                "{}: starts {machine}",
                task.name
            );
            assert_eq!(parameters["Input"]["cell.$"], "$.cell", "{}", task.name);
            assert!(
                parameters["Name.$"].as_str().is_some_and(
                    |n| n.contains("$$.Execution.Name") && n.contains("$.cell.cell_id")
                ),
                "{}: a name per fleet and cell makes a retried start the same execution",
                task.name
            );
            continue;
        }
        assert_eq!(task.resource, LAMBDA_INVOKE, "{}", task.name);
        let function = function_name(parameters["FunctionName"].as_str().expect("name"))
            .unwrap_or_else(|| panic!("{}: names no function", task.name));
        assert!(
            is_read_only(&function),
            "{}: the fleet itself changes nothing",
            task.name
        );
        let lambda = timeouts[&function]["timeout_seconds"]
            .as_u64()
            .expect("timeout");
        assert!(
            task.timeout.expect("TimeoutSeconds").as_secs() > lambda,
            "{}",
            task.name
        );
    }

    let raw = raw(FLEET);
    let wave = &raw["States"]["run wave"];
    assert_eq!(wave["Type"], "Map");
    assert_eq!(wave["ItemProcessor"]["ProcessorConfig"]["Mode"], "INLINE");
    let cell_states = wave["ItemProcessor"]["States"].as_object().expect("States");
    for (name, state) in cell_states {
        match state["Type"].as_str() {
            Some("Task") => {
                let catch = state["Catch"].as_array().expect("Catch");
                let last = catch.last().expect("a Catch");
                assert_eq!(last["ErrorEquals"], json!(["States.ALL"]), "{name}");
                let target = &cell_states[last["Next"].as_str().expect("Next")];
                assert_eq!(target["Type"], "Pass", "{name}: caught into an outcome");
                assert_eq!(
                    target["End"], true,
                    "{name}: the outcome ends the iteration"
                );
                assert_eq!(last["ResultPath"], "$.error", "{name}");
                if name != "cell preflight" {
                    assert!(
                        state["TimeoutSeconds"].is_null(),
                        "{name}: a run is never cut short"
                    );
                }
            }
            Some("Pass") => {
                let paths: Vec<&str> = state["Parameters"]
                    .as_object()
                    .expect("Parameters")
                    .iter()
                    .filter(|(k, _)| k.ends_with(".$"))
                    .filter_map(|(_, v)| v.as_str())
                    .collect();
                for path in paths {
                    assert!(
                        [
                            "$.cell.cell_id",
                            "$.wave",
                            "$.error",
                            "$.child.execution_arn"
                        ]
                        .contains(&path),
                        "{name}: {path} is not sure to exist"
                    );
                }
                assert_eq!(state["End"], true, "{name}");
            }
            Some("Choice") => assert!(state["Default"].is_string(), "{name}: a default"),
            other => panic!("{name}: a {other:?} state in a cell's iteration"),
        }
    }
    assert_eq!(cell_states["cell failed"]["Parameters"]["ok"], false);
    assert_eq!(cell_states["cell not started"]["Parameters"]["ok"], false);
    assert_eq!(cell_states["cell done"]["Parameters"]["ok"], true);
}
