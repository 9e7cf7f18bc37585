//! The checked-in switchover definition, run unchanged by the local executor on a local
//! cell that the checked-in prepare definition made a replica of blue, under the ledger's
//! load through PgBouncer and with the direct writers running.
//!
//! A fault injected at any Task state up to and including `resume-pgbouncer` (which it
//! replaces, so nothing is resumed) sends the run down the abort path: it ends in a Fail
//! state with the cell back on blue — writable through PgBouncer, services back, the
//! downstream streaming, green still replicating, no acknowledged write lost — and the
//! next run switches the cell. A fault after the point of no return is retried forward.

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_local_cell::{wait_keys_once, CellOptions, Install, LocalCell};
use switchyard_local_run::{load, LocalFunctions, PREPARE, SWITCHOVER};
use switchyard_operation::Deps;
use switchyard_state_machine::{EventType, Execution, Executor, Fault, StateType, Status};

const PAYMENTS: (&str, &str) = ("public", "payments");
const WAIT: Duration = Duration::from_secs(60);

async fn prepared_cell() -> (LocalCell, Deps) {
    prepared_cell_with(|_| {}).await
}

async fn prepared_cell_with(adjust: impl FnOnce(&mut CellOptions)) -> (LocalCell, Deps) {
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 300;
    adjust(&mut options);
    let cell = LocalCell::start(&options).await.expect("cell");
    let deps = cell.deps().expect("deps");
    let prepare = run(
        &cell,
        &deps,
        PREPARE,
        "prepare",
        cell_input(&cell),
        Vec::new(),
    )
    .await;
    assert_eq!(
        prepare.status,
        Status::Succeeded,
        "prepare: {:?} {:?}",
        prepare.error,
        prepare.cause
    );
    (cell, deps)
}

fn cell_input(cell: &LocalCell) -> Value {
    json!({ "cell": cell.document })
}

async fn run(
    cell: &LocalCell,
    deps: &Deps,
    definition: &str,
    name: &str,
    input: Value,
    faults: Vec<Fault>,
) -> Execution {
    let definition = load(definition).expect("definition");
    let handler = LocalFunctions { deps };
    let mut executor = Executor::new(&definition, &handler).name(name);
    for fault in faults {
        executor = executor.fault(fault).expect("fault names a Task state");
    }
    let execution = executor.run(input).await;
    let dir = cell.run_dir.join("executions");
    std::fs::create_dir_all(&dir).expect("dir");
    execution
        .write_history(&dir.join(format!("{name}.json")))
        .expect("history");
    execution
}

/// The Fail (or Succeed) state an execution ended in.
fn final_state(execution: &Execution) -> String {
    execution
        .history
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.kind,
                EventType::StateEntered(StateType::Fail | StateType::Succeed)
            )
        })
        .and_then(|e| e.state.clone())
        .unwrap_or_default()
}

/// The direct writers' service is back at its count and its tasks write again.
async fn direct_writers_back(cell: &LocalCell, before: usize) {
    let started = std::time::Instant::now();
    while cell.direct_writers()[0].acknowledged() <= before {
        assert!(
            started.elapsed() < WAIT,
            "the direct writers did not write again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let service = &cell.document.direct_writers[0];
    let described = cell
        .moto
        .clients
        .ecs
        .describe_services()
        .cluster(&service.ecs_cluster)
        .services(&service.service)
        .send()
        .await
        .expect("describe");
    assert_eq!(
        described.services()[0].desired_count(),
        2,
        "the recorded count"
    );
}

/// After an aborted run: blue serves writes through PgBouncer, and every write
/// acknowledged so far is on blue, on the downstream and on green exactly once.
async fn assert_back_on_blue(
    cell: &LocalCell,
    ledger: &switchyard_local_cell::Ledger,
    direct_before: usize,
) {
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.blue.version_num,
        "PgBouncer resumed, on blue"
    );
    let before = ledger.acknowledged();
    let started = std::time::Instant::now();
    while ledger.acknowledged() <= before + 10 {
        assert!(started.elapsed() < WAIT, "the ledger writes on blue again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    direct_writers_back(cell, direct_before).await;
    let keys = ledger.keys();
    for (what, opts) in [
        ("blue", cell.blue.superuser_options("app")),
        ("downstream", cell.search.superuser_options("search")),
        ("green", cell.green.superuser_options("app")),
    ] {
        wait_keys_once(&opts, PAYMENTS, "memo", &keys, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// A successful switchover: the cell on green, every acknowledged write there once.
async fn assert_switched(
    cell: &LocalCell,
    ledger: switchyard_local_cell::Ledger,
    execution: &Execution,
) {
    assert_eq!(
        execution.status,
        Status::Succeeded,
        "{:?}: {:?} {:?}",
        final_state(execution),
        execution.error,
        execution.cause
    );
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.green.version_num
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = ledger.stop().await;
    assert_eq!(
        (tally.failed, tally.in_doubt.len()),
        (0, 0),
        "no client transaction failed: {:?}",
        tally.errors
    );
    wait_keys_once(
        &cell.green.superuser_options("app"),
        PAYMENTS,
        "memo",
        &tally.keys(),
        WAIT,
    )
    .await
    .expect("every acknowledged write on green once");
    let jobs = cell.direct_writers()[0].tally();
    wait_keys_once(
        &cell.green.superuser_options("app"),
        ("billing", "invoice lines"),
        "description",
        &jobs.keys(),
        WAIT,
    )
    .await
    .expect("every direct-writer job on green once");
    cell.downstream_converges(&cell.green, WAIT)
        .await
        .expect("downstream equals green");
}

/// Fault at `state` → the abort path → back on blue; then a clean run switches.
async fn abort_then_switch(state: &str) {
    let (cell, deps) = prepared_cell().await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let direct_before = cell.direct_writers()[0].acknowledged();

    let fault = Fault::error(state, 1, "PreconditionFailed", "injected by the test");
    let first = run(
        &cell,
        &deps,
        SWITCHOVER,
        "aborted",
        cell_input(&cell),
        vec![fault],
    )
    .await;
    assert_eq!(first.status, Status::Failed);
    assert_eq!(first.error.as_deref(), Some("PreconditionFailed"));
    assert!(
        first
            .cause
            .as_deref()
            .unwrap_or_default()
            .contains("injected by the test"),
        "the Fail state carries the cause: {:?}",
        first.cause
    );
    let expected = if state == "acquire-lock" {
        "not started"
    } else {
        "aborted"
    };
    assert_eq!(final_state(&first), expected);
    assert_back_on_blue(&cell, &ledger, direct_before).await;

    let second = run(
        &cell,
        &deps,
        SWITCHOVER,
        "second",
        cell_input(&cell),
        Vec::new(),
    )
    .await;
    assert_switched(&cell, ledger, &second).await;
    cell.shutdown();
}

macro_rules! abort_tests {
    ($($test:ident => $state:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                abort_then_switch($state).await;
            }
        )*
    };
}

abort_tests! {
    fault_at_acquire_lock => "acquire-lock",
    fault_at_preflight => "preflight",
    fault_at_scale_services_down => "scale-services down",
    fault_at_pause_pgbouncer => "pause-pgbouncer",
    fault_at_revoke_writes => "revoke-writes",
    fault_at_drop_downstream_subscriptions => "drop-downstream-subscriptions",
    fault_at_check_slot_lag => "check-slot-lag",
    fault_at_sync_sequences => "sync-sequences",
    fault_at_verify_data => "verify-data",
    fault_at_finalize_replication_disable => "finalize-replication disable",
    fault_at_rename_clusters_forward => "rename-clusters forward",
    fault_at_refresh_nlb_target => "refresh-nlb-target",
    fault_at_recreate_downstream_subscriptions => "recreate-downstream-subscriptions",
    fault_at_resume_pgbouncer => "resume-pgbouncer",
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_after_the_point_of_no_return_is_retried_forward() {
    let (cell, deps) = prepared_cell().await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    let fault = Fault::error(
        "scale-services up",
        1,
        "AwsUnavailable",
        "injected by the test",
    );
    let execution = run(
        &cell,
        &deps,
        SWITCHOVER,
        "forward",
        cell_input(&cell),
        vec![fault],
    )
    .await;
    let attempts = execution
        .events_of("scale-services up")
        .filter(|e| e.kind == EventType::TaskScheduled)
        .count();
    assert_eq!(attempts, 2, "retried, not rolled back");
    assert!(execution
        .events_of("abort: rename-clusters back")
        .next()
        .is_none());
    assert_switched(&cell, ledger, &execution).await;
    cell.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_replication_fails_the_lag_gate_and_aborts_cleanly() {
    // The default pause budget (60 s) is shorter than the lag gate (120 s) and would end
    // the run first: this cell allows a pause long enough for the gate to decide.
    let (cell, deps) = prepared_cell_with(|o| o.query_wait_timeout_secs = 300).await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    let direct_before = cell.direct_writers()[0].acknowledged();
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .batch_execute("ALTER SUBSCRIPTION switchyard_payments DISABLE")
        .await
        .expect("disable");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut input = cell_input(&cell);
    input["cell"]["budgets"]["pause_seconds"] = json!(240);
    let execution = run(&cell, &deps, SWITCHOVER, "stalled", input, Vec::new()).await;
    assert_eq!(final_state(&execution), "aborted");
    assert_eq!(
        execution.error.as_deref(),
        Some("LagNotZero"),
        "{:?}",
        execution.cause
    );
    let gate_calls = execution
        .events_of("check-slot-lag")
        .filter(|e| e.kind == EventType::TaskScheduled)
        .count();
    assert_eq!(gate_calls, 11, "the whole lag gate budget was spent");
    // The abort path re-enabled green's subscriptions: green catches up and follows blue.
    assert_back_on_blue(&cell, &ledger, direct_before).await;
    ledger.stop().await;
    cell.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_longer_than_the_budget_aborts_before_the_resume() {
    let (cell, deps) = prepared_cell().await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    let direct_before = cell.direct_writers()[0].acknowledged();
    let mut input = cell_input(&cell);
    input["cell"]["budgets"]["pause_seconds"] = json!(1);
    // A step that takes longer than the whole budget: the next one must not start.
    let slow = Fault::delay("drop-downstream-subscriptions", 1, Duration::from_secs(2));
    let execution = run(&cell, &deps, SWITCHOVER, "slow", input, vec![slow]).await;
    assert_eq!(final_state(&execution), "aborted");
    assert_eq!(
        execution.error.as_deref(),
        Some("PauseBudgetExceeded"),
        "{:?}",
        execution.cause
    );
    assert!(execution.events_of("resume-pgbouncer").next().is_none());
    assert_back_on_blue(&cell, &ledger, direct_before).await;
    let tally = ledger.stop().await;
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    cell.shutdown();
}
