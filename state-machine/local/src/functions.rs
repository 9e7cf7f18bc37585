//! The functions by their ASL names, called in-process: what the local executor and the
//! flows drive, one call per state, exactly as a Lambda would run them (payload parsed and
//! validated by the same `parse_input`, output serialized to JSON).

use serde_json::Value;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{parse_input, Deps, Error};

/// Each arm parses the payload into that function's `Input`, runs it and serializes its
/// `Output`. Boxed: one future holding every function's state inline is too deep to lay out.
macro_rules! functions {
    ($($name:literal => $krate:ident),* $(,)?) => {
        /// Every function this crate can call, by its ASL state name.
        pub const FUNCTIONS: &[&str] = &[$($name),*];

        /// Runs function `name` on `payload` (`{"cell": …, …its own fields}`).
        pub async fn invoke(name: &str, payload: Value, deps: &Deps) -> Result<Value, Error> {
            match name {
                $($name => {
                    let input: $krate::Input = parse_input(payload)?;
                    let output = Box::pin($krate::run(input, deps)).await?;
                    Ok(serde_json::to_value(output).map_err(|e| {
                        Error::stop(ErrorName::InvalidInput, format!("{name}: output does not serialize: {e}"))
                    })?)
                })*
                other => Err(Error::stop(
                    ErrorName::InvalidInput,
                    format!("no function named {other:?}"),
                )),
            }
        }
    };
}

functions! {
    "preflight" => preflight,
    "snapshot-cluster" => snapshot_cluster,
    "sync-roles" => sync_roles,
    "copy-schema" => copy_schema,
    "start-replication" => start_replication,
    "check-replication" => check_replication,
    "analyze-green" => analyze_green,
    "verify-data" => verify_data,
    "acquire-lock" => acquire_lock,
    "release-lock" => release_lock,
    "scale-services" => scale_services,
    "pause-pgbouncer" => pause_pgbouncer,
    "revoke-writes" => revoke_writes,
    "restore-writes" => restore_writes,
    "drop-downstream-subscriptions" => drop_downstream_subscriptions,
    "check-slot-lag" => check_slot_lag,
    "sync-sequences" => sync_sequences,
    "finalize-replication" => finalize_replication,
    "rename-clusters" => rename_clusters,
    "refresh-nlb-target" => refresh_nlb_target,
    "recreate-downstream-subscriptions" => recreate_downstream_subscriptions,
    "resume-pgbouncer" => resume_pgbouncer,
}

/// `{"cell": cell, …extra}`: the payload a state machine Task would pass.
pub fn payload(cell: &CellDocument, extra: Value) -> Value {
    let mut payload = serde_json::json!({ "cell": cell });
    if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), extra) {
        p.extend(extra);
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_crate_is_callable_by_its_name() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../functions");
        let mut crates: Vec<String> = std::fs::read_dir(dir)
            .expect("functions/")
            .filter_map(Result::ok)
            .filter(|e| e.path().join("Cargo.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        crates.sort();
        let mut names: Vec<String> = FUNCTIONS.iter().map(|n| (*n).to_owned()).collect();
        names.sort();
        assert_eq!(names, crates);
    }
}
