//! The checked-in state machines, run on this machine exactly as Step Functions runs them
//! in AWS: the definitions under `state-machine/` loaded unchanged by the local executor
//! (`switchyard-state-machine`), each Task's Lambda replaced by the function's `run`
//! called in-process through [`LocalFunctions`].

pub mod fleet;
pub mod functions;
pub mod rehearsal;

pub use switchyard_history::{
    definition_path, fleet as fleet_report, follow, history, report, timeline, ABANDON_PREPARE,
    ABORT, DEFINITIONS, FINALIZE, FLEET, PREPARE, SWITCHOVER,
};

use serde_json::Value;
use switchyard_errors::Catalogued;
use switchyard_operation::Deps;
use switchyard_state_machine::{
    BoxFuture, Definition, LoadError, TaskFailure, TaskHandler, LAMBDA_INVOKE,
};

pub use functions::{invoke, is_read_only, payload, FUNCTIONS};

/// Loads `state-machine/<name>.asl.json` as checked in.
pub fn load(name: &str) -> Result<Definition, String> {
    let path = definition_path(name);
    let json =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Definition::from_json(&json).map_err(|e: LoadError| format!("{}: {e}", path.display()))
}

/// The function a Task's `FunctionName` names: the definitions carry `${check_slot_lag}`,
/// which Terraform fills with that function's ARN; locally it names the function
/// `check-slot-lag`.
pub fn function_name(function_name: &str) -> Option<String> {
    let inner = function_name.strip_prefix("${")?.strip_suffix('}')?;
    let name = inner.replace('_', "-");
    FUNCTIONS.contains(&name.as_str()).then_some(name)
}

/// The task handler of a local run: `lambda:invoke` of a function by its placeholder,
/// served by calling that function's `run` with these dependencies. A function's error
/// reaches the state machine under its catalogued name, as the Lambda runtime reports it.
#[derive(Debug)]
pub struct LocalFunctions<'a> {
    pub deps: &'a Deps,
}

impl TaskHandler for LocalFunctions<'_> {
    fn invoke(
        &self,
        resource: &str,
        parameters: Value,
    ) -> BoxFuture<'_, Result<Value, TaskFailure>> {
        let resource = resource.to_owned();
        Box::pin(async move {
            if resource != LAMBDA_INVOKE {
                return Err(TaskFailure::new(
                    "States.Runtime",
                    format!("resource {resource} is not run locally (only {LAMBDA_INVOKE})"),
                ));
            }
            let requested = parameters
                .get("FunctionName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let Some(name) = function_name(&requested) else {
                // What Lambda answers for a function that does not exist.
                return Err(TaskFailure::new(
                    "Lambda.ResourceNotFoundException",
                    format!("no function {requested}"),
                ));
            };
            let payload = parameters.get("Payload").cloned().unwrap_or(Value::Null);
            // As the Lambda runtime reports it: the name, and the message without it.
            invoke(&name, payload, self.deps).await.map_err(|e| {
                let failure = e.to_failure();
                TaskFailure::new(failure.name().as_str(), failure.message())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_name_functions() {
        assert_eq!(
            function_name("${check_slot_lag}").as_deref(),
            Some("check-slot-lag")
        );
        assert_eq!(function_name("${preflight}").as_deref(), Some("preflight"));
        assert_eq!(function_name("${no_such_function}"), None);
        assert_eq!(function_name("check_slot_lag"), None);
    }
}
