//! The whole prepare phase, in the state machine's order, from an empty green to a
//! verified, continuously replicating copy of blue — under ledger load through PgBouncer.
//! Then every operation again: a second run changes nothing and succeeds.
//!
//! Majors follow BLUE_PG / GREEN_PG (default 14 → 17); `make test` also runs 15 → 17 and
//! 16 → 18.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{audit_keys, LocalCell, TEST_RUN};
use switchyard_operation::{parse_input, Deps, Error};

fn payload(cell: &LocalCell, extra: Value) -> Value {
    switchyard_local_run::payload(&cell.document, extra)
}

fn output<T: serde::Serialize>(out: T) -> Value {
    serde_json::to_value(out).expect("outputs serialize")
}

/// Runs every prepare operation once, in order, returning each one's output.
async fn prepare_once(cell: &LocalCell, deps: &Deps, run_id: &str) -> Vec<(&'static str, Value)> {
    cell.lock(run_id).await.expect("the run lock");
    let run = json!({ "run_id": run_id });
    let mut outputs = Vec::new();
    let preflight = preflight::run(parse_input(payload(cell, json!({}))).expect("input"), deps)
        .await
        .expect("preflight is clean");
    outputs.push(("preflight", output(preflight)));
    let snapshot = snapshot_cluster::run(
        parse_input(payload(cell, json!({ "run_id": run_id }))).expect("input"),
        deps,
    )
    .await
    .expect("snapshot-cluster");
    outputs.push(("snapshot-cluster", output(snapshot)));
    let roles = sync_roles::run(
        parse_input(payload(cell, run.clone())).expect("input"),
        deps,
    )
    .await
    .expect("sync-roles");
    outputs.push(("sync-roles", output(roles)));
    let schema = copy_schema::run(
        parse_input(payload(cell, run.clone())).expect("input"),
        deps,
    )
    .await
    .expect("copy-schema");
    outputs.push(("copy-schema", output(schema)));
    let started = start_replication::run(
        parse_input(payload(cell, run.clone())).expect("input"),
        deps,
    )
    .await
    .expect("start-replication");
    outputs.push(("start-replication", output(started)));
    outputs.push(("check-replication", check_until_caught_up(cell, deps).await));
    let analyzed = analyze_green::run(
        parse_input(payload(cell, run.clone())).expect("input"),
        deps,
    )
    .await
    .expect("analyze-green");
    outputs.push(("analyze-green", output(analyzed)));
    for mode in ["quick", "full"] {
        let verified = verify_data::run(
            parse_input(payload(cell, json!({ "mode": mode }))).expect("input"),
            deps,
        )
        .await
        .unwrap_or_else(|e| panic!("verify-data {mode}: {e}"));
        outputs.push(("verify-data", output(verified)));
    }
    outputs
}

/// What the state machine does with check-replication: retry `NotCaughtUp`, stop on
/// anything else.
async fn check_until_caught_up(cell: &LocalCell, deps: &Deps) -> Value {
    let started = Instant::now();
    loop {
        let input = parse_input(payload(cell, json!({}))).expect("input");
        match check_replication::run(input, deps).await {
            Ok(out) => return output(out),
            Err(e)
                if e.error_name() == ErrorName::NotCaughtUp
                    && started.elapsed() < Duration::from_secs(180) =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("check-replication: {}: {e}", e.error_name()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_brings_an_empty_green_to_a_verified_replica_under_load() {
    let cell = LocalCell::start_quiet(1000).await.expect("cell");
    let deps = cell.deps().expect("deps");
    let ledger = cell
        .start_ledger(2, Duration::from_millis(5))
        .expect("ledger");

    let first = prepare_once(&cell, &deps, "prepare-flow-1").await;
    let preflight = &first[0].1;
    assert_eq!(preflight["blockers"], json!([]), "{preflight}");
    let copy = &first[3].1;
    assert!(
        copy.to_string().contains("\"applied\":true"),
        "green was empty, so the schema is applied: {copy}"
    );

    // The load kept running through the whole phase; everything acknowledged is on green
    // exactly once once replication has caught up again.
    let tally = ledger.stop().await;
    assert!(
        tally.acks.len() > 20,
        "the ledger wrote: {:?}",
        tally.errors
    );
    assert_eq!(
        tally.failed,
        0,
        "prepare must not disturb clients: {:?}\n{}",
        tally.errors,
        cell.pgbouncer_troubles(30)
    );
    check_until_caught_up(&cell, &deps).await;
    let keys = tally.keys();
    let audit = audit_keys(
        &cell.green.superuser_options("app"),
        ("public", "payments"),
        "memo",
        &keys,
    )
    .await
    .expect("audit");
    assert_eq!(
        (audit.present_once, audit.missing, audit.duplicated),
        (keys.len(), 0, 0)
    );

    // Nothing but replication writes to green before the switch: an application role with
    // its SSM password is refused there (its login opens at the switch).
    let parameter = format!(
        "{}app_writer",
        cell.document.credentials.application_roles_path
    );
    let creds = switchyard_aws::read_credentials(&cell.moto.clients.ssm, &parameter)
        .await
        .expect("ssm");
    let on_green = cell.green.options("app", &creds.username, &creds.password);
    let refused = switchyard_postgres::connect(&on_green)
        .await
        .expect_err("app_writer is refused on green during prepare")
        .to_string();
    assert!(refused.contains("not permitted to log in"), "{refused}");

    // Everything again: same results, nothing created twice.
    let second = prepare_once(&cell, &deps, "prepare-flow-1").await;
    assert_eq!(
        second[1].1["created"],
        json!(false),
        "snapshot reused: {}",
        second[1].1
    );
    let copy_again = &second[3].1;
    assert!(
        !copy_again.to_string().contains("\"applied\":true"),
        "schema not applied twice: {copy_again}"
    );
    let roles_again = &second[2].1;
    for changed in ["created", "altered", "memberships_granted"] {
        assert_eq!(
            roles_again[changed]["total"],
            json!(0),
            "sync-roles changed {changed} on a second run: {roles_again}"
        );
    }
    let subscriptions = |v: &Value| v.to_string().matches("\"created\":true").count();
    assert_eq!(
        subscriptions(&second[4].1),
        0,
        "start-replication created nothing again: {}",
        second[4].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_on_blue_after_replication_started_stops_the_phase() {
    let cell = LocalCell::start_quiet(200).await.expect("cell");
    let deps = cell.deps().expect("deps");
    cell.lock(TEST_RUN).await.expect("lock");
    for step in ["sync-roles", "copy-schema", "start-replication"] {
        let input = payload(&cell, json!({ "run_id": TEST_RUN }));
        let result: Result<(), Error> = match step {
            "sync-roles" => sync_roles::run(parse_input(input).expect("input"), &deps)
                .await
                .map(|_| ()),
            "copy-schema" => copy_schema::run(parse_input(input).expect("input"), &deps)
                .await
                .map(|_| ()),
            _ => start_replication::run(parse_input(input).expect("input"), &deps)
                .await
                .map(|_| ()),
        };
        result.unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    // An ORM's habit (seed 003): DDL on every connect.
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    blue.batch_execute("CREATE INDEX payments_memo ON public.payments (memo)")
        .await
        .expect("ddl");
    let err = check_replication::run(
        parse_input(payload(&cell, json!({}))).expect("input"),
        &deps,
    )
    .await
    .expect_err("DDL must stop the phase");
    assert_eq!(err.error_name(), ErrorName::DdlDetected, "{err}");
    assert!(
        err.to_string().contains("payments_memo"),
        "the statement is named: {err}"
    );
}
