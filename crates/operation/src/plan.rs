//! Dry runs: what an operation would change, read from the cell's real state, with
//! nothing changed. An operator repairing a half-done run asks for one before the real
//! call (`switchyard invoke <function> --dry-run`).

use serde::{Deserialize, Serialize};

/// The payload field, common to every operation, that asks for a dry run. Operations
/// that change nothing (`preflight`, `check-replication`, `verify-data`) run as usual.
pub const DRY_RUN_FIELD: &str = "dry_run";

/// A dry run's output: each change the operation would make now, in the order it would
/// make them. Empty `would` means there is nothing left to do (a rerun after success).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Plan {
    /// Always `true`: marks the output of a dry run, so it is never mistaken for a result.
    pub dry_run: bool,
    /// One line per change, e.g. `"rename cluster cell-a → cell-a-blue-14"`.
    pub would: Vec<String>,
}

impl Plan {
    /// An empty plan: nothing to do yet.
    pub fn new() -> Self {
        Self {
            dry_run: true,
            would: Vec::new(),
        }
    }

    /// Adds one change the operation would make.
    pub fn would(&mut self, change: impl Into<String>) -> &mut Self {
        self.would.push(change.into());
        self
    }

    /// True when the operation would change nothing.
    pub fn is_empty(&self) -> bool {
        self.would.is_empty()
    }
}

/// Removes [`DRY_RUN_FIELD`] from a payload and says whether it asked for a dry run.
/// A non-boolean value is `InvalidInput`: a typo must not turn a dry run into a real one.
pub fn take_dry_run(payload: &mut serde_json::Value) -> Result<bool, crate::Error> {
    match payload
        .as_object_mut()
        .and_then(|p| p.remove(DRY_RUN_FIELD))
    {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(dry)) => Ok(dry),
        Some(other) => Err(crate::Error::stop(
            switchyard_errors::ErrorName::InvalidInput,
            format!("payload field {DRY_RUN_FIELD}: {other} is not true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_errors::{Catalogued, ErrorName};

    #[test]
    fn the_field_is_taken_out_and_must_be_a_boolean() {
        let mut payload = serde_json::json!({ "cell": {}, "dry_run": true });
        assert!(take_dry_run(&mut payload).expect("bool"));
        assert_eq!(payload, serde_json::json!({ "cell": {} }), "removed");
        assert!(!take_dry_run(&mut payload).expect("absent"));
        let mut payload = serde_json::json!({ "dry_run": "yes" });
        let err = take_dry_run(&mut payload).expect_err("a string");
        assert_eq!(err.error_name(), ErrorName::InvalidInput);
    }

    #[test]
    fn a_plan_says_it_is_a_dry_run() {
        let mut plan = Plan::new();
        assert!(plan.is_empty());
        plan.would("rename cluster a → b");
        let json = serde_json::to_value(&plan).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({ "dry_run": true, "would": ["rename cluster a → b"] })
        );
    }
}
