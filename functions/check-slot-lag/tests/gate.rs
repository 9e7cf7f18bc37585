//! check-slot-lag on a local cell with real replication (start-replication, caught up per
//! check-replication): it passes once green has applied blue's marker and every slot has
//! confirmed blue's LSN, holds with `LagNotZero` while a subscription is disabled, and
//! stops with `PreconditionFailed` when a slot is gone.

use std::time::{Duration, Instant};

use check_slot_lag::{plan, run, Input};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_operation::Deps;

const NAMES: [&str; 2] = ["switchyard_payments", "switchyard_rest"];

async fn cell() -> LocalCell {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell.copy_schema_directly().await.expect("schema on green");
    cell
}

/// start-replication, then check-replication until it stops answering `NotCaughtUp`.
async fn replicate(cell: &LocalCell, deps: &Deps) {
    start_replication::run(
        start_replication::Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
            idle_transaction_seconds: 5,
            lock_timeout_seconds: 30,
        },
        deps,
    )
    .await
    .expect("start-replication");
    let started = Instant::now();
    loop {
        let input = check_replication::Input {
            cell: cell.document.clone(),
        };
        match check_replication::run(input, deps).await {
            Err(e) if e.error_name() == ErrorName::NotCaughtUp => {
                assert!(started.elapsed() < Duration::from_secs(60), "{e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => {
                other.expect("caught up");
                return;
            }
        }
    }
}

fn input(cell: &LocalCell, wait_seconds: u64) -> Input {
    Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        gate_started_at: None,
        wait_seconds,
    }
}

async fn markers(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT id FROM switchyard.switchover_marker ORDER BY written_at, id",
            &[],
        )
        .await
        .expect("markers")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Green's apply workers that have a process.
async fn apply_workers(green: &tokio_postgres::Client) -> Vec<String> {
    green
        .query(
            "SELECT subname::text FROM pg_stat_subscription
              WHERE pid IS NOT NULL AND relid IS NULL ORDER BY 1",
            &[],
        )
        .await
        .expect("workers")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The bytes the message says `slot` is behind.
fn bytes_behind(message: &str, slot: &str) -> Option<u64> {
    let rest = message.split(&format!("slot {slot} ")).nth(1)?;
    rest.split(" bytes behind").next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_once_green_has_the_marker_and_every_slot_reached_the_lsn() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    replicate(&cell, &deps).await;
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");

    let dry = plan(input(&cell, 10), &deps).await.expect("plan");
    assert_eq!(dry.would.len(), 2, "{dry:?}");
    assert!(
        dry.would[0].starts_with("insert a marker row with a fresh id into switchyard.switchover_marker on blue (database app)"),
        "{dry:?}"
    );
    assert!(
        dry.would[1].starts_with("then wait up to 10 s for slots switchyard_payments ")
            && dry.would[1].contains(", switchyard_rest ")
            && dry.would[1].ends_with("(database app), else LagNotZero"),
        "{dry:?}"
    );
    assert!(markers(&blue).await.is_empty(), "the plan wrote no marker");
    assert!(markers(&green).await.is_empty());

    let first = run(input(&cell, 10), &deps).await.expect("the gate passes");
    assert_eq!(first.databases.len(), 1);
    let database = &first.databases[0];
    assert_eq!(database.name, "app");
    assert_eq!(
        database
            .slots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        NAMES
    );
    for slot in &database.slots {
        assert_eq!(slot.bytes_behind, 0);
        let reached: bool = blue
            .query_one(
                "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
                &[&slot.confirmed_flush_lsn, &database.lsn],
            )
            .await
            .expect("compare")
            .get(0);
        assert!(
            reached,
            "{} confirmed {} < {}",
            slot.name, slot.confirmed_flush_lsn, database.lsn
        );
    }
    // Blue's slots really are there now, not only in the output.
    let behind: i64 = blue
        .query_one(
            "SELECT count(*) FROM pg_replication_slots
              WHERE slot_name::text = ANY($1) AND NOT confirmed_flush_lsn >= $2::text::pg_lsn",
            &[&NAMES.to_vec(), &database.lsn],
        )
        .await
        .expect("slots")
        .get(0);
    assert_eq!(behind, 0);
    let first_marker = vec![database.marker_id.clone()];
    assert_eq!(markers(&blue).await, first_marker);
    assert_eq!(markers(&green).await, first_marker);

    // Again: a new marker, checked afresh, passes the same way.
    let second = run(input(&cell, 10), &deps).await.expect("passes again");
    let again = &second.databases[0];
    assert_ne!(again.marker_id, database.marker_id);
    let both = vec![database.marker_id.clone(), again.marker_id.clone()];
    assert_eq!(markers(&blue).await, both);
    assert_eq!(markers(&green).await, both);
    let reached_again: bool = blue
        .query_one(
            "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
            &[&again.lsn, &database.lsn],
        )
        .await
        .expect("compare")
        .get(0);
    assert!(reached_again, "{} then {}", database.lsn, again.lsn);

    // Never empty (every call writes its own marker), and still writes nothing itself.
    let dry = plan(input(&cell, 10), &deps).await.expect("plan after");
    assert_eq!(dry.would.len(), 2, "{dry:?}");
    assert_eq!(markers(&blue).await, both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_subscription_holds_the_gate_until_it_is_enabled() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    replicate(&cell, &deps).await;
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");

    green
        .batch_execute("ALTER SUBSCRIPTION switchyard_rest DISABLE")
        .await
        .expect("disable");
    let started = Instant::now();
    while apply_workers(&green)
        .await
        .contains(&"switchyard_rest".to_owned())
    {
        assert!(started.elapsed() < Duration::from_secs(30), "worker stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    blue.batch_execute("INSERT INTO public.accounts (email) VALUES ('late@example.com')")
        .await
        .expect("a write on blue");

    let started = Instant::now();
    let err = run(input(&cell, 2), &deps)
        .await
        .expect_err("green's rest subscription is disabled");
    assert_eq!(err.error_name(), ErrorName::LagNotZero, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "waits briefly");
    let message = err.to_string();
    let behind = bytes_behind(&message, "switchyard_rest").expect(&message);
    assert!(behind > 0, "{message}");
    assert!(
        !message.contains("slot switchyard_payments"),
        "the payments slot keeps up: {message}"
    );
    assert!(
        message.contains("subscription switchyard_rest is disabled on green"),
        "{message}"
    );
    assert!(message.contains("not on green yet"), "{message}");
    let held = markers(&blue).await;
    assert_eq!(held.len(), 1);
    assert!(message.contains(&held[0]), "{message}");
    let late: i64 = green
        .query_one(
            "SELECT count(*) FROM public.accounts WHERE email = 'late@example.com'",
            &[],
        )
        .await
        .expect("green")
        .get(0);
    assert_eq!(late, 0);

    // Enabled again, green catches up with every marker and the write, and the gate passes.
    green
        .batch_execute("ALTER SUBSCRIPTION switchyard_rest ENABLE")
        .await
        .expect("enable");
    let output = run(input(&cell, 30), &deps).await.expect("the gate passes");
    let database = &output.databases[0];
    assert!(database.slots.iter().all(|s| s.bytes_behind == 0));
    assert_eq!(
        markers(&green).await,
        [held[0].clone(), database.marker_id.clone()]
    );
    let late: i64 = green
        .query_one(
            "SELECT count(*) FROM public.accounts WHERE email = 'late@example.com'",
            &[],
        )
        .await
        .expect("green")
        .get(0);
    assert_eq!(late, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_slot_stops_the_gate_before_any_marker() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    replicate(&cell, &deps).await;
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");

    // Detached on green, the slot can go on blue (once its walsender has exited).
    green
        .batch_execute(
            "ALTER SUBSCRIPTION switchyard_payments DISABLE;
             ALTER SUBSCRIPTION switchyard_payments SET (slot_name = NONE)",
        )
        .await
        .expect("detach");
    let started = Instant::now();
    while let Err(e) = blue
        .batch_execute("SELECT pg_drop_replication_slot('switchyard_payments')")
        .await
    {
        assert!(started.elapsed() < Duration::from_secs(30), "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let err = plan(input(&cell, 2), &deps).await.expect_err("no slot");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    let err = run(input(&cell, 2), &deps).await.expect_err("no slot");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(
        err.to_string()
            .contains("blue has no replication slot switchyard_payments"),
        "{err}"
    );
    assert!(markers(&blue).await.is_empty(), "nothing written");
    let err = run(input(&cell, 2), &deps).await.expect_err("again");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(markers(&blue).await.is_empty(), "nothing written");

    let err = run(input(&cell, 61), &deps).await.expect_err("too long");
    assert_eq!(err.error_name(), ErrorName::InvalidInput, "{err}");
}
