//! Loading: everything implemented loads; everything else is refused by state and field.

use serde_json::{json, Value};
use switchyard_state_machine::{Definition, ErrorHandler, LoadError, LoadErrorKind, StateType};

fn load(definition: Value) -> Result<Definition, LoadError> {
    Definition::from_json(&definition.to_string())
}

fn refused(definition: Value) -> LoadError {
    match load(definition) {
        Ok(_) => panic!("the definition should have been refused"),
        Err(e) => e,
    }
}

fn assert_refused(
    definition: Value,
    kind: LoadErrorKind,
    state: Option<&str>,
    field: Option<&str>,
) {
    let err = refused(definition);
    assert_eq!(
        (err.kind, err.state.as_deref(), err.field.as_deref()),
        (kind, state, field),
        "{err}"
    );
}

/// One state called `S` (plus an `End` Pass to jump to).
fn with_state(state: Value) -> Value {
    json!({"StartAt": "S", "States": {"S": state, "Done": {"Type": "Pass", "End": true}}})
}

/// Every implemented field at least once.
fn kitchen_sink() -> Value {
    json!({
        "Comment": "all fields",
        "Version": "1.0",
        "TimeoutSeconds": 3600,
        "QueryLanguage": "JSONPath",
        "StartAt": "Prepare",
        "States": {
            "Prepare": {
                "Type": "Pass", "Comment": "c", "InputPath": "$", "Parameters": {"x.$": "$.x",
                "id.$": "States.UUID()"}, "Result": {"r": 1}, "ResultPath": "$.prepared",
                "OutputPath": "$", "Next": "Call"
            },
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": "preflight", "Payload.$": "$"},
                "ResultSelector": {"out.$": "$.Payload"},
                "ResultPath": "$.call",
                "OutputPath": "$",
                "TimeoutSeconds": 60,
                "Retry": [
                    {"ErrorEquals": ["Lambda.ServiceException", "Lambda.TooManyRequestsException"],
                     "IntervalSeconds": 2, "MaxAttempts": 6, "BackoffRate": 2.0,
                     "MaxDelaySeconds": 30, "JitterStrategy": "NONE", "Comment": "aws"},
                    {"ErrorEquals": ["States.ALL"], "MaxAttempts": 0}
                ],
                "Catch": [
                    {"ErrorEquals": ["States.Timeout"], "Next": "Abort", "ResultPath": "$.error"},
                    {"ErrorEquals": ["States.ALL"], "Next": "Abort", "ResultPath": null}
                ],
                "Next": "Route"
            },
            "Route": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.call.out.ok", "BooleanEquals": true, "Next": "Fan"},
                    {"And": [{"Variable": "$.n", "NumericGreaterThanEquals": 1},
                             {"Not": {"Variable": "$.s", "StringMatches": "x*"}}],
                     "Next": "Pause", "Comment": "c"}
                ],
                "Default": "Abort"
            },
            "Pause": {"Type": "Wait", "SecondsPath": "$.n", "Next": "Fan"},
            "Fan": {
                "Type": "Parallel",
                "Branches": [
                    {"StartAt": "B1", "States": {"B1": {"Type": "Succeed"}}},
                    {"Comment": "b", "StartAt": "B2", "States": {"B2": {
                        "Type": "Task", "Resource": "local:thing", "End": true,
                        "Retry": [{"ErrorEquals": ["NotCaughtUp"]}]}}}
                ],
                "ResultSelector": {"first.$": "$[0]"},
                "ResultPath": "$.fan",
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Abort"}],
                "Next": "Done"
            },
            "Done": {"Type": "Succeed", "OutputPath": "$.fan"},
            "Abort": {"Type": "Fail", "Error": "Aborted", "CausePath": "$.error.Cause"}
        }
    })
}

#[test]
fn a_definition_using_every_implemented_field_loads() {
    let definition = load(kitchen_sink()).expect("loads");
    assert_eq!(definition.start_at(), "Prepare");
    assert_eq!(definition.comment(), Some("all fields"));
    assert_eq!(definition.version(), Some("1.0"));
    assert_eq!(
        definition.timeout(),
        Some(std::time::Duration::from_secs(3600))
    );
    let states: Vec<_> = definition.states().collect();
    assert!(states.contains(&("B2", StateType::Task)));
    assert_eq!(states.len(), 9);
}

#[test]
fn task_states_and_error_names_are_listed_with_parallel_branches() {
    let definition = load(kitchen_sink()).expect("loads");
    let tasks: Vec<_> = definition.task_states().collect();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].name, "Call");
    assert_eq!(tasks[0].resource, "arn:aws:states:::lambda:invoke");
    assert_eq!(
        tasks[0].parameters,
        Some(&json!({"FunctionName": "preflight", "Payload.$": "$"}))
    );
    assert_eq!(tasks[0].timeout, Some(std::time::Duration::from_secs(60)));
    assert_eq!((tasks[1].name, tasks[1].resource), ("B2", "local:thing"));

    let names: Vec<_> = definition
        .error_equals()
        .map(|e| (e.state, e.handler, e.error))
        .collect();
    assert_eq!(
        names,
        vec![
            ("Call", ErrorHandler::Retry, "Lambda.ServiceException"),
            (
                "Call",
                ErrorHandler::Retry,
                "Lambda.TooManyRequestsException"
            ),
            ("Call", ErrorHandler::Retry, "States.ALL"),
            ("Call", ErrorHandler::Catch, "States.Timeout"),
            ("Call", ErrorHandler::Catch, "States.ALL"),
            ("Fan", ErrorHandler::Catch, "States.ALL"),
            ("B2", ErrorHandler::Retry, "NotCaughtUp"),
        ]
    );
}

#[test]
fn unknown_fields_are_refused_by_state_and_field() {
    assert_refused(
        with_state(json!({"Type": "Pass", "Next": "Done", "Reslt": 1})),
        LoadErrorKind::UnknownField,
        Some("S"),
        Some("Reslt"),
    );
    // A real ASL field in the wrong kind of state is just as unknown.
    assert_refused(
        with_state(json!({"Type": "Pass", "Next": "Done", "Retry": []})),
        LoadErrorKind::UnknownField,
        Some("S"),
        Some("Retry"),
    );
    assert_refused(
        with_state(json!({"Type": "Choice", "Choices": [
            {"Variable": "$.a", "IsNull": true, "Next": "Done"}], "Next": "Done"})),
        LoadErrorKind::UnknownField,
        Some("S"),
        Some("Next"),
    );
    assert_refused(
        json!({"StartAt": "S", "Sates": {}, "States": {"S": {"Type": "Succeed"}}}),
        LoadErrorKind::UnknownField,
        None,
        Some("Sates"),
    );
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done",
                          "Retry": [{"ErrorEquals": ["X"], "MaxAttempt": 2}]})),
        LoadErrorKind::UnknownField,
        Some("S"),
        Some("Retry[0].MaxAttempt"),
    );
    let err = refused(with_state(
        json!({"Type": "Pass", "Next": "Done", "Reslt": 1}),
    ));
    assert_eq!(
        err.to_string(),
        "state `S`, field `Reslt`: is not a field of a Pass state"
    );
}

#[test]
fn unimplemented_fields_and_types_are_refused() {
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "HeartbeatSeconds": 5, "Next": "Done"})),
        LoadErrorKind::UnsupportedField,
        Some("S"),
        Some("HeartbeatSeconds"),
    );
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done",
                          "Retry": [{"ErrorEquals": ["X"], "JitterStrategy": "FULL"}]})),
        LoadErrorKind::UnsupportedField,
        Some("S"),
        Some("Retry[0].JitterStrategy"),
    );
    assert_refused(
        with_state(
            json!({"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                          "Next": "Done"}),
        ),
        LoadErrorKind::UnsupportedField,
        Some("S"),
        Some("Resource"),
    );
    assert_refused(
        json!({"QueryLanguage": "JSONata", "StartAt": "S", "States": {"S": {"Type": "Succeed"}}}),
        LoadErrorKind::UnsupportedField,
        None,
        Some("QueryLanguage"),
    );
    assert_refused(
        with_state(
            json!({"Type": "Map", "ItemsPath": "$.items", "Next": "Done",
                          "ItemReader": {"Resource": "arn:aws:states:::s3:getObject"},
                          "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}}),
        ),
        LoadErrorKind::UnsupportedField,
        Some("S"),
        Some("ItemReader"),
    );
    assert_refused(
        with_state(json!({"Type": "Map", "ItemsPath": "$.items", "Next": "Done"})),
        LoadErrorKind::MissingField,
        Some("S"),
        Some("ItemProcessor"),
    );
    assert_refused(
        with_state(json!({"Type": "Sleep", "Next": "Done"})),
        LoadErrorKind::UnknownStateType,
        Some("S"),
        Some("Type"),
    );
}

#[test]
fn transitions_must_land_on_states_of_the_same_scope() {
    assert_refused(
        with_state(json!({"Type": "Pass", "Next": "Nowhere"})),
        LoadErrorKind::UnknownTarget,
        Some("S"),
        Some("Next"),
    );
    assert_refused(
        json!({"StartAt": "Missing", "States": {"S": {"Type": "Succeed"}}}),
        LoadErrorKind::UnknownTarget,
        None,
        Some("StartAt"),
    );
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done",
                          "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Nowhere"}]})),
        LoadErrorKind::UnknownTarget,
        Some("S"),
        Some("Catch[0].Next"),
    );
    assert_refused(
        with_state(json!({"Type": "Choice", "Default": "Nowhere", "Choices": [
            {"Variable": "$.a", "IsNull": true, "Next": "Done"}]})),
        LoadErrorKind::UnknownTarget,
        Some("S"),
        Some("Default"),
    );
    assert_refused(
        with_state(json!({"Type": "Parallel", "Next": "Done", "Branches": [
            {"StartAt": "B", "States": {"B": {"Type": "Pass", "Next": "Done"}}}]})),
        LoadErrorKind::UnknownTarget,
        Some("B"),
        Some("Next"),
    );
    assert_refused(
        json!({"StartAt": "S", "States": {"S": {"Type": "Succeed"}, "Orphan": {"Type": "Succeed"}}}),
        LoadErrorKind::UnreachableState,
        Some("Orphan"),
        None,
    );
    assert_refused(
        with_state(json!({"Type": "Parallel", "Next": "Done", "Branches": [
            {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}]})),
        LoadErrorKind::DuplicateState,
        Some("Done"),
        None,
    );
}

#[test]
fn exactly_one_of_next_and_end() {
    assert_refused(
        with_state(json!({"Type": "Pass", "Next": "Done", "End": true})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("End"),
    );
    assert_refused(
        with_state(json!({"Type": "Pass"})),
        LoadErrorKind::MissingField,
        Some("S"),
        Some("Next"),
    );
}

#[test]
fn states_all_must_be_alone_and_last() {
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done",
                          "Retry": [{"ErrorEquals": ["States.ALL", "X"]}]})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("Retry[0].ErrorEquals"),
    );
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done",
                          "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Done"},
                                    {"ErrorEquals": ["X"], "Next": "Done"}]})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("Catch[0].ErrorEquals"),
    );
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done",
                          "Retry": [{"ErrorEquals": ["States.Timout"]}]})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("Retry[0].ErrorEquals"),
    );
}

#[test]
fn paths_templates_and_intrinsics_are_checked_at_load() {
    let err = refused(with_state(json!({"Type": "Pass", "Next": "Done",
        "Parameters": {"h.$": "States.Hash($.a, 'SHA-256')"}})));
    assert_eq!(
        (err.kind, err.state.as_deref(), err.field.as_deref()),
        (LoadErrorKind::InvalidValue, Some("S"), Some("Parameters"))
    );
    assert!(err.message.contains("States.Hash"), "{err}");
    assert_refused(
        with_state(json!({"Type": "Pass", "Next": "Done", "ResultPath": "$.items[*]"})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("ResultPath"),
    );
    assert_refused(
        with_state(json!({"Type": "Pass", "Next": "Done", "OutputPath": "$$.Execution"})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("OutputPath"),
    );
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done",
                          "ResultSelector": {"a.$": "nope"}})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("ResultSelector"),
    );
    assert_refused(
        with_state(json!({"Type": "Wait", "Next": "Done", "Seconds": 1, "SecondsPath": "$.s"})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("Seconds"),
    );
    assert_refused(
        with_state(json!({"Type": "Wait", "Next": "Done", "Timestamp": "tomorrow"})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("Timestamp"),
    );
    assert_refused(
        with_state(json!({"Type": "Choice", "Choices": [
            {"Variable": "$.a", "StringEquals": 3, "Next": "Done"}]})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("Choices"),
    );
    assert_refused(
        with_state(json!({"Type": "Task", "Resource": "r", "Next": "Done", "TimeoutSeconds": 0})),
        LoadErrorKind::InvalidValue,
        Some("S"),
        Some("TimeoutSeconds"),
    );
}

#[test]
fn not_json_is_refused() {
    assert_eq!(
        Definition::from_json("{").map(|_| ()).map_err(|e| e.kind),
        Err(LoadErrorKind::InvalidJson)
    );
}
