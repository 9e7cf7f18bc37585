//! The switchover, operation by operation in seed 000's order (DESIGN §3), on a local cell
//! that prepare has made a streaming replica of blue — under the ledger's load through
//! PgBouncer and with the direct writers' ECS service running.
//!
//! - forward: the cell ends on green; every acknowledged write is there exactly once, new
//!   rows do not collide with sequences, the downstream holds what green holds, PgBouncer
//!   reaches green's major, and the direct writers write again;
//! - and back: the same steps with the switch-back's document move the cell to the old
//!   blue (green the publisher, an older major the subscriber), nothing lost, sequences
//!   ahead, the downstream holding what the old blue holds;
//! - abort: stopped after `finalize-replication disable` and sent down the abort path, the
//!   cell is blue again — writable, nothing lost, green still replicating — and a second
//!   attempt then switches it.
//!
//! Not-yet errors are retried as the state machine would, within the cell's budgets; any
//! other error fails the test with the step's name.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_cell::CellDocument;
use switchyard_errors::{Catalogued, Retry};
use switchyard_local_cell::{
    audit_keys, wait_keys_once, CellOptions, Install, KeyAudit, Ledger, LocalCell, Tally,
};
use switchyard_local_run::{invoke, is_read_only, payload};
use switchyard_operation::Deps;

struct Run<'a> {
    cell: &'a LocalCell,
    deps: &'a Deps,
    /// The upgrade's document, or its switch-back's.
    document: CellDocument,
    run_id: String,
    /// Every step's name and output, in order, for failure messages.
    log: Vec<(String, Value)>,
}

impl<'a> Run<'a> {
    fn new(cell: &'a LocalCell, deps: &'a Deps, run_id: &str) -> Self {
        Self {
            cell,
            deps,
            document: cell.document.clone(),
            run_id: run_id.to_owned(),
            log: Vec::new(),
        }
    }

    /// The switch-back of `cell`'s switched upgrade: the same steps, the document reversed.
    fn back(cell: &'a LocalCell, deps: &'a Deps, run_id: &str) -> Self {
        let parked =
            switchyard_operation::rename::parked_identifier(&cell.document, cell.blue.major);
        let document = cell
            .document
            .back(&parked, cell.blue.major)
            .expect("the switch-back's document");
        Self {
            document,
            ..Self::new(cell, deps, run_id)
        }
    }

    /// One state: retried while it answers a not-yet error (as the ASL Retry does, up to
    /// `budget`), failing the test on anything else.
    async fn step(&mut self, name: &str, extra: Value) -> Value {
        let budget = Duration::from_secs(120);
        let started = Instant::now();
        loop {
            let mut input = payload(&self.document, extra.clone());
            if !is_read_only(name) {
                // The fencing token: every changing step acts as the lock's run.
                input["run_id"] = json!(self.run_id);
            }
            match invoke(name, input, self.deps).await {
                Ok(out) => {
                    self.log.push((name.to_owned(), out.clone()));
                    return out;
                }
                Err(e) if e.error_name().retry() == Retry::NotYet && started.elapsed() < budget => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!(
                    "{name} ({}) failed {}: {e}\nafter {:?}",
                    self.run_id,
                    e.error_name(),
                    self.log.iter().map(|(n, _)| n).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Steps 1–9: everything before the rename, ending with green's subscriptions disabled.
    async fn freeze_and_disable(&mut self) {
        let run_id = self.run_id.clone();
        self.step("acquire-lock", json!({ "run_id": run_id })).await;
        self.step("scale-services", json!({ "direction": "down" }))
            .await;
        self.step("pause-pgbouncer", json!({})).await;
        self.step("revoke-writes", json!({})).await;
        self.step("drop-downstream-subscriptions", json!({})).await;
        self.step("check-slot-lag", json!({})).await;
        self.step("sync-sequences", json!({})).await;
        self.step("verify-data", json!({ "mode": "quick" })).await;
        self.step("finalize-replication", json!({ "mode": "disable" }))
            .await;
    }

    /// Steps 10–16: the rename, the downstream and PgBouncer on green, services back,
    /// replication cleaned up, the lock released.
    async fn switch(&mut self) {
        let green_version = if self.document.is_back() {
            self.cell.blue.version_num
        } else {
            self.cell.green.version_num
        };
        self.step("rename-clusters", json!({ "mode": "forward" }))
            .await;
        self.step("refresh-nlb-target", json!({ "direction": "forward" }))
            .await;
        self.step(
            "recreate-downstream-subscriptions",
            json!({ "direction": "forward" }),
        )
        .await;
        self.step(
            "resume-pgbouncer",
            json!({ "direction": "forward", "expected_server_version_num": green_version }),
        )
        .await;
        self.step("scale-services", json!({ "direction": "up" }))
            .await;
        self.step("finalize-replication", json!({ "mode": "drop" }))
            .await;
        // The way back: the old blue follows green.
        self.step("finalize-replication", json!({ "mode": "reverse" }))
            .await;
        let run_id = self.run_id.clone();
        self.step("release-lock", json!({ "run_id": run_id })).await;
    }

    /// The abort path from after `finalize-replication disable` (nothing renamed).
    async fn abort(&mut self) {
        let blue_version = self.cell.blue.version_num;
        self.step("finalize-replication", json!({ "mode": "enable" }))
            .await;
        self.step("restore-writes", json!({})).await;
        self.step("refresh-nlb-target", json!({ "direction": "abort" }))
            .await;
        self.step(
            "recreate-downstream-subscriptions",
            json!({ "direction": "abort" }),
        )
        .await;
        self.step(
            "resume-pgbouncer",
            json!({ "direction": "abort", "expected_server_version_num": blue_version }),
        )
        .await;
        self.step("scale-services", json!({ "direction": "up" }))
            .await;
        let run_id = self.run_id.clone();
        self.step("release-lock", json!({ "run_id": run_id })).await;
    }
}

/// A cell with the direct writers running, prepared: green a caught-up replica of blue.
async fn prepared_cell() -> (LocalCell, Deps) {
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 500;
    let cell = LocalCell::start(&options).await.expect("cell");
    let deps = cell.deps().expect("deps");
    let mut run = Run::new(&cell, &deps, "prepare");
    run.step("acquire-lock", json!({ "run_id": "prepare" }))
        .await;
    for step in ["sync-roles", "copy-schema", "start-replication"] {
        run.step(step, json!({})).await;
    }
    run.step("check-replication", json!({})).await;
    run.step("release-lock", json!({ "run_id": "prepare" }))
        .await;
    (cell, deps)
}

/// Every acknowledged key of `tally` present exactly once in `table`.`column` on `server`.
async fn assert_all_once(
    what: &str,
    server: &switchyard_local_cell::PgServer,
    table: (&str, &str),
    column: &str,
    tally: &Tally,
) {
    let keys = tally.keys();
    assert!(!keys.is_empty(), "{what}: the workload wrote nothing");
    let audit = audit_keys(&server.superuser_options("app"), table, column, &keys)
        .await
        .expect("audit");
    assert_eq!(
        audit,
        KeyAudit {
            present_once: keys.len(),
            missing: 0,
            duplicated: 0
        },
        "{what}: every acknowledged write exactly once"
    );
}

/// Waits until the direct writers have acknowledged more jobs than `before`.
async fn direct_writers_write_again(cell: &LocalCell, before: usize) {
    let started = Instant::now();
    while cell.direct_writers()[0].acknowledged() <= before {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the direct writers did not write again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every sequence-backed column (serial, identity) on `server`: the next value is above
/// every existing key, so inserts cannot collide.
async fn assert_sequences_ahead(server: &switchyard_local_cell::PgServer) {
    let client = server.superuser_client("app").await.expect("connect");
    let columns = client
        .query(
            "SELECT n.nspname, c.relname, a.attname, pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
               AND n.nspname NOT IN ('switchyard', 'information_schema') AND n.nspname !~ '^pg_'
               AND pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname) IS NOT NULL",
            &[],
        )
        .await
        .expect("sequence columns");
    assert!(columns.len() >= 5, "the fixture's serial/identity columns");
    for row in columns {
        let (schema, table, column, sequence): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let sql = format!(
            "SELECT nextval($1::text::regclass), (SELECT coalesce(max({col}), 0) FROM {rel})",
            col = switchyard_postgres::quote::ident(&column),
            rel = switchyard_postgres::quote::qualified(&schema, &table),
        );
        let r = client.query_one(&sql, &[&sequence]).await.expect("nextval");
        let (next, max): (i64, i64) = (r.get(0), r.get(1));
        assert!(
            next > max,
            "{schema}.{table}.{column}: next {next} would collide with max {max}"
        );
    }
}

/// The cell switched: no client transaction failed, every acknowledged ledger and
/// direct-writer write is on green exactly once, PgBouncer reaches green, new rows cannot
/// collide with sequences, and the downstream holds green's rows. Then the way back: every
/// one of those writes is on the old blue exactly once too (it follows green, across
/// majors: green the publisher, the old blue the subscriber).
async fn assert_switched_to_green(cell: &LocalCell, ledger: Ledger) {
    let tally = ledger.stop().await;
    assert_eq!(
        (tally.failed, tally.in_doubt.len()),
        (0, 0),
        "no client transaction failed: {:?}\n{}",
        tally.errors,
        cell.pgbouncer_troubles(30)
    );
    assert_all_once(
        "ledger",
        &cell.green,
        ("public", "payments"),
        "memo",
        &tally,
    )
    .await;
    let jobs = cell.direct_writers()[0].tally();
    assert_all_once(
        "direct writers",
        &cell.green,
        ("billing", "invoice lines"),
        "description",
        &jobs,
    )
    .await;
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.green.version_num
    );
    assert_sequences_ahead(&cell.green).await;
    cell.downstream_converges(&cell.green, Duration::from_secs(60))
        .await
        .expect("downstream equals green");
    let wait = Duration::from_secs(60);
    for (what, table, column, keys) in [
        ("ledger", ("public", "payments"), "memo", tally.keys()),
        (
            "direct writers",
            ("billing", "invoice lines"),
            "description",
            jobs.keys(),
        ),
    ] {
        wait_keys_once(
            &cell.blue.superuser_options("app"),
            table,
            column,
            &keys,
            wait,
        )
        .await
        .unwrap_or_else(|e| panic!("{what} on the old blue: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_moves_the_cell_to_green_and_the_switch_back_returns_it_under_load() {
    let (cell, deps) = prepared_cell().await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut run = Run::new(&cell, &deps, "switchover-flow-forward");
    run.freeze_and_disable().await;
    let direct_before = cell.direct_writers()[0].acknowledged();
    run.switch().await;

    // Writes continue on green: through PgBouncer and from the restored ECS service.
    direct_writers_write_again(&cell, direct_before).await;
    let during = ledger.acknowledged();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ledger.acknowledged() > during,
        "the ledger writes after resume"
    );
    assert_switched_to_green(&cell, ledger).await;

    // The old blue is the fence: no application role writes there any more.
    let (user, password) = cell.secrets.role("app_writer").expect("role");
    let old_blue = switchyard_postgres::connect(&cell.blue.options("app", user, password))
        .await
        .expect("old blue");
    let err = old_blue
        .execute(
            "INSERT INTO public.payments (account_id, amount, memo) VALUES (1, 1, 'late')",
            &[],
        )
        .await
        .expect_err("old blue refuses writes");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    drop(old_blue);

    // And back: the same steps with the document reversed, under a fresh load. Green
    // publishes, the old blue (an older major) subscribes and then serves again.
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut back = Run::back(&cell, &deps, "switchback-flow");
    back.freeze_and_disable().await;
    let direct_before = cell.direct_writers()[0].acknowledged();
    back.switch().await;
    direct_writers_write_again(&cell, direct_before).await;
    let tally = ledger.stop().await;
    assert_eq!(
        (tally.failed, tally.in_doubt.len()),
        (0, 0),
        "no client transaction failed across the switch-back: {:?}\n{}",
        tally.errors,
        cell.pgbouncer_troubles(30)
    );
    assert!(
        !tally.keys().is_empty(),
        "the ledger wrote across the switch-back"
    );
    assert_all_once("ledger", &cell.blue, ("public", "payments"), "memo", &tally).await;
    let jobs = cell.direct_writers()[0].tally();
    assert_all_once(
        "direct writers",
        &cell.blue,
        ("billing", "invoice lines"),
        "description",
        &jobs,
    )
    .await;
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.blue.version_num,
        "PgBouncer serves the old blue"
    );
    assert_sequences_ahead(&cell.blue).await;
    cell.downstream_converges(&cell.blue, Duration::from_secs(60))
        .await
        .expect("downstream equals the old blue");
    cell.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_switchover_leaves_blue_serving_and_the_next_attempt_switches() {
    let (cell, deps) = prepared_cell().await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut first = Run::new(&cell, &deps, "switchover-flow-aborted");
    first.freeze_and_disable().await;
    let direct_before = cell.direct_writers()[0].acknowledged();
    first.abort().await;

    // Blue serves again: the ledger through PgBouncer, the direct writers on its endpoint.
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.blue.version_num
    );
    direct_writers_write_again(&cell, direct_before).await;
    let during = ledger.acknowledged();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ledger.acknowledged() > during,
        "the ledger writes on blue again"
    );

    // Every write acknowledged so far is on blue, streams to the downstream again, and
    // reaches green, which still follows blue.
    let keys = ledger.keys();
    let payments = ("public", "payments");
    let wait = Duration::from_secs(60);
    for (what, opts) in [
        ("blue", cell.blue.superuser_options("app")),
        ("downstream", cell.search.superuser_options("search")),
        ("green", cell.green.superuser_options("app")),
    ] {
        wait_keys_once(&opts, payments, "memo", &keys, wait)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let mut check = Run::new(&cell, &deps, "after-abort");
    check.step("check-replication", json!({})).await;
    // No way back is left on green: it follows blue again.
    let green = cell.green.superuser_client("app").await.expect("green");
    let way_back: i64 = green
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication WHERE pubname = 'switchyard_reverse')
                  + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'switchyard_reverse')",
            &[],
        )
        .await
        .expect("way back")
        .get(0);
    assert_eq!(way_back, 0, "the abort dropped green's switchyard_reverse");

    // Green stays fenced after the abort: a client a lagging name sends there is refused.
    let (user, password) = cell.secrets.role("app_writer").expect("role");
    let refused = switchyard_postgres::connect(&cell.green.options("app", user, password))
        .await
        .expect_err("app_writer is refused on green after an abort")
        .to_string();
    assert!(refused.contains("not permitted to log in"), "{refused}");

    // The next attempt switches the cell, and nothing written across both is lost.
    let mut second = Run::new(&cell, &deps, "switchover-flow-second");
    second.freeze_and_disable().await;
    let direct_before = cell.direct_writers()[0].acknowledged();
    second.switch().await;
    direct_writers_write_again(&cell, direct_before).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_switched_to_green(&cell, ledger).await;
    cell.shutdown();
}
