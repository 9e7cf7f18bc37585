//! The functions by their ASL names, called in-process: what the local executor and the
//! flows drive, one call per state, exactly as a Lambda would run them (payload parsed and
//! validated by the same `parse_input`, output serialized to JSON).

use serde_json::Value;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{parse_input, take_dry_run, Deps, Error};

/// Each arm parses the payload into that function's `Input`, runs it (or, for a dry run,
/// its `plan`) and serializes the result. Boxed: one future holding every function's
/// state inline is too deep to lay out.
macro_rules! functions {
    ($($name:literal => $krate:ident $kind:ident),* $(,)?) => {
        /// Every function this crate can call, by its ASL state name.
        pub const FUNCTIONS: &[&str] = &[$($name),*];

        /// Whether function `name` changes nothing (a dry run of it simply runs it).
        pub fn is_read_only(name: &str) -> bool {
            match name {
                $($name => functions!(@read_only $kind),)*
                _ => false,
            }
        }

        /// Runs function `name` on `payload` (`{"cell": …, …its own fields}`), as its
        /// Lambda would: a payload with `"dry_run": true` returns what the function would
        /// change (its `Plan`) and changes nothing.
        pub async fn invoke(name: &str, mut payload: Value, deps: &Deps) -> Result<Value, Error> {
            // As the Lambda runtime does: each invocation reads its logins afresh, once each.
            let deps = &deps.for_invocation();
            let dry_run = take_dry_run(&mut payload)?;
            match name {
                $($name => functions!(@call $krate $kind, name, payload, deps, dry_run),)*
                other => Err(Error::stop(
                    ErrorName::InvalidInput,
                    format!("no function named {other:?}"),
                )),
            }
        }

        /// Function `name`'s payload as a JSON Schema, from its own `Input` type.
        pub fn payload_schema(name: &str) -> Option<Value> {
            match name {
                $($name => serde_json::to_value(schemars::schema_for!($krate::Input)).ok(),)*
                _ => None,
            }
        }

        /// Whether `payload` has the shape of function `name`'s `Input` (no deadline or
        /// cell rule is checked).
        pub fn check_payload(name: &str, payload: Value) -> Result<(), String> {
            match name {
                $($name => serde_json::from_value::<$krate::Input>(payload)
                    .map(drop)
                    .map_err(|e| e.to_string()),)*
                other => Err(format!("no function named {other:?}")),
            }
        }
    };
    (@read_only read_only) => { true };
    (@read_only planned) => { false };
    (@call $krate:ident read_only, $name:ident, $payload:ident, $deps:ident, $dry:ident) => {{
        let _ = $dry;
        let input: $krate::Input = parse_input($payload)?;
        to_json($name, Box::pin($krate::run(input, $deps)).await?)
    }};
    (@call $krate:ident planned, $name:ident, $payload:ident, $deps:ident, $dry:ident) => {{
        let input: $krate::Input = parse_input($payload)?;
        if $dry {
            to_json($name, Box::pin($krate::plan(input, $deps)).await?)
        } else {
            to_json($name, Box::pin($krate::run(input, $deps)).await?)
        }
    }};
}

fn to_json(name: &str, output: impl serde::Serialize) -> Result<Value, Error> {
    serde_json::to_value(output).map_err(|e| {
        Error::stop(
            ErrorName::InvalidInput,
            format!("{name}: output does not serialize: {e}"),
        )
    })
}

functions! {
    "preflight" => preflight read_only,
    "snapshot-cluster" => snapshot_cluster planned,
    "sync-roles" => sync_roles planned,
    "copy-schema" => copy_schema planned,
    "start-replication" => start_replication planned,
    "check-replication" => check_replication read_only,
    "check-drift" => check_drift read_only,
    "analyze-green" => analyze_green planned,
    "verify-data" => verify_data read_only,
    "abandon-prepare" => abandon_prepare planned,
    "acquire-lock" => acquire_lock planned,
    "release-lock" => release_lock planned,
    "scale-services" => scale_services planned,
    "pause-pgbouncer" => pause_pgbouncer planned,
    "revoke-writes" => revoke_writes planned,
    "restore-writes" => restore_writes planned,
    "drop-downstream-subscriptions" => drop_downstream_subscriptions planned,
    "check-slot-lag" => check_slot_lag planned,
    "sync-sequences" => sync_sequences planned,
    "finalize-replication" => finalize_replication planned,
    "rename-clusters" => rename_clusters planned,
    "refresh-nlb-target" => refresh_nlb_target planned,
    "recreate-downstream-subscriptions" => recreate_downstream_subscriptions planned,
    "resume-pgbouncer" => resume_pgbouncer planned,
    "close-rollback-window" => close_rollback_window planned,
    "delete-old-cluster" => delete_old_cluster planned,
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

    /// `cli/functions.json` — what `switchyard invoke FUNCTION --help` lists — as each
    /// function's own `Input` type describes it now; `SWITCHYARD_BLESS=1` rewrites it.
    #[test]
    fn the_cli_catalogue_is_current() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../functions");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cli/functions.json");
        let mut current = Vec::new();
        for name in FUNCTIONS {
            let manifest =
                std::fs::read_to_string(format!("{dir}/{name}/Cargo.toml")).expect("Cargo.toml");
            let summary = manifest
                .lines()
                .find_map(|l| l.strip_prefix("description = "))
                .and_then(|d| serde_json::from_str::<String>(d).ok())
                .unwrap_or_else(|| panic!("{name}: its Cargo.toml has no one-line description"));
            let schema = payload_schema(name).expect("schema");
            // The example is the crate's own, which it parses as its Input.
            let example: Value = serde_json::from_str(
                &std::fs::read_to_string(format!("{dir}/{name}/payloads/input.json"))
                    .expect("payloads/input.json"),
            )
            .expect("payloads/input.json is JSON");
            if let Err(e) = check_payload(name, example.clone()) {
                panic!("{name}: payloads/input.json is refused: {e}");
            }
            current.push(switchyard_cli::catalog::Function::from_schema(
                name,
                &summary,
                !is_read_only(name),
                &schema,
                &example,
            ));
        }
        let text = format!(
            "{}\n",
            serde_json::to_string_pretty(&current).expect("catalogue")
        );
        if std::env::var_os("SWITCHYARD_BLESS").is_some() {
            std::fs::write(path, &text).expect("write cli/functions.json");
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == text,
            "cli/functions.json is not what the functions' Input types say: run `SWITCHYARD_BLESS=1 cargo nextest run --workspace -E 'test(the_cli_catalogue_is_current)'` and commit it"
        );
    }

    #[test]
    fn a_lambda_serves_a_dry_run_exactly_when_its_function_changes_something() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../functions");
        for name in FUNCTIONS {
            let main =
                std::fs::read_to_string(format!("{dir}/{name}/src/main.rs")).expect("main.rs");
            assert_eq!(
                main.contains("serve_planned"),
                !is_read_only(name),
                "{name}: its Lambda's dry run must match this crate's (serve_planned ⇔ changes something)"
            );
        }
        assert!(is_read_only("preflight") && !is_read_only("rename-clusters"));
    }
}
