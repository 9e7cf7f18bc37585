//! verify-data against a local cell replicating blue → green, with the ledger writing
//! through PgBouncer where the test says so.

use std::time::{Duration, Instant};

use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::LocalCell;
use verify_data::{run, Input, Mode, Output};

async fn replicating_cell() -> LocalCell {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    // switchyard's own schema on blue is replicated by the FOR ALL TABLES stand-in, but
    // must never be compared.
    cell.blue
        .superuser_client("app")
        .await
        .expect("blue")
        .batch_execute(
            "CREATE SCHEMA switchyard; CREATE TABLE switchyard.journal (id bigint PRIMARY KEY); \
             INSERT INTO switchyard.journal VALUES (1)",
        )
        .await
        .expect("switchyard schema");
    cell.replicate_directly().await.expect("replicating");
    cell
}

fn input(cell: &LocalCell, mode: Mode, chunk_rows: u64) -> Input {
    Input {
        cell: cell.document.clone(),
        pause_deadline: None,
        mode,
        chunk_rows: Some(chunk_rows),
        budget_seconds: None,
        resume: None,
        attempts: 3,
    }
}

/// `table → (rows, chunks)`, every table equal.
fn tables(output: &Output) -> Vec<(String, u64, u64)> {
    assert_eq!(output.databases.len(), 1);
    assert_eq!(output.databases[0].name, "app");
    output.databases[0]
        .tables
        .iter()
        .map(|t| {
            assert!(t.equal, "{t:?}");
            (t.table.clone(), t.rows, t.chunks)
        })
        .collect()
}

fn find<'a>(tables: &'a [(String, u64, u64)], name: &str) -> &'a (String, u64, u64) {
    tables
        .iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("{name} compared: {tables:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_and_full_agree_while_the_ledger_writes() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");
    let green = cell.green.superuser_client("app").await.expect("green");
    // A difference in switchyard's own schema is none of verify-data's business.
    green
        .batch_execute("INSERT INTO switchyard.journal VALUES (2)")
        .await
        .expect("green-only journal row");

    let ledger = cell
        .start_ledger(2, Duration::from_millis(5))
        .expect("ledger");
    let started = Instant::now();
    while ledger.acknowledged() < 50 {
        assert!(started.elapsed() < Duration::from_secs(30), "ledger writes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let quick = run(input(&cell, Mode::Quick, 10_000), &deps)
        .await
        .expect("quick mode agrees under load");
    let quick_tables = tables(&quick);
    assert_eq!(quick.mode, Mode::Quick);
    assert!(quick.compared_at_lsn.is_some());
    assert!(
        quick_tables.iter().all(|t| t.2 == 1),
        "quick mode: one range per table"
    );
    let payments_before = find(&quick_tables, "public.payments").1;
    assert!(
        payments_before > 600,
        "the ledger's rows are compared: {payments_before}"
    );

    let full = run(input(&cell, Mode::Full, 100), &deps)
        .await
        .expect("full mode agrees under load");
    let full_tables = tables(&full);
    let names: Vec<&str> = full_tables.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "billing.\"invoice lines\"",
            "billing.invoices",
            "public.account_links",
            "public.accounts",
            "public.events_2026_h1",
            "public.events_2026_h2",
            "public.events_default",
            "public.payments",
        ],
        "leaves, not the partitioned root; not switchyard's schema; not the matview"
    );
    assert_eq!(
        find(&full_tables, "billing.\"invoice lines\""),
        &("billing.\"invoice lines\"".to_owned(), 600, 6)
    );
    assert_eq!(
        find(&full_tables, "public.account_links"),
        &("public.account_links".to_owned(), 150, 2),
        "chunked by its replica identity index"
    );
    let payments = find(&full_tables, "public.payments");
    assert!(payments.1 >= payments_before, "{payments:?}");
    assert!(payments.2 >= payments.1 / 100, "{payments:?}");
    assert!(
        full.compared_at_lsn.as_deref().map(lsn) >= quick.compared_at_lsn.as_deref().map(lsn),
        "{:?} then {:?}",
        quick.compared_at_lsn,
        full.compared_at_lsn
    );

    // A second run reads the same tables again and agrees again.
    let again = run(input(&cell, Mode::Full, 100), &deps)
        .await
        .expect("second full run");
    let again_names: Vec<String> = tables(&again).into_iter().map(|t| t.0).collect();
    assert_eq!(again_names, names);

    // One row changed behind replication's back in the table the ledger is writing to,
    // while it writes: found and named, with its key range, and nothing else is blamed.
    green
        .batch_execute(
            "UPDATE public.payments SET memo = 'tampered' \
              WHERE id = (SELECT min(id) FROM public.payments)",
        )
        .await
        .expect("tamper a payment on green");
    let oldest: i64 = green
        .query_one("SELECT min(id) FROM public.payments", &[])
        .await
        .expect("oldest payment")
        .get(0);
    let writes_before = ledger.acknowledged();
    let err = run(input(&cell, Mode::Full, 100), &deps)
        .await
        .expect_err("full mode finds the changed payment under load");
    assert_eq!(err.error_name(), ErrorName::DataMismatch, "{err}");
    let message = err.to_failure().message().to_owned();
    assert!(
        message.contains("public.payments (database app) rows with (id) <= (")
            && message.contains("checksums differ"),
        "{message}"
    );
    // The range named holds the changed row: the first chunk, from the oldest key.
    let upper: i64 = message
        .split("public.payments (database app) rows with (id) <= (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a key range: {message}"));
    assert!(upper >= oldest, "{oldest} is in the range named: {message}");
    for other in [
        "billing.",
        "public.accounts",
        "public.account_links",
        "public.events",
    ] {
        assert!(!message.contains(other), "only payments: {message}");
    }
    assert!(
        ledger.acknowledged() > writes_before,
        "the ledger wrote during the check"
    );

    let tally = ledger.stop().await;
    assert!(
        tally.acks.len() >= 50,
        "the ledger kept writing: {}",
        tally.acks.len()
    );
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
}

fn lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').expect("X/Y");
    (u64::from_str_radix(high, 16).expect("hex") << 32) | u64::from_str_radix(low, 16).expect("hex")
}

/// Full mode reads every row; quick mode (inside the pause) only each table's newest
/// 1,000 by key, whatever the table's size: a row changed behind replication's back is
/// found by full mode wherever it is, and by quick mode only among the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_row_fails_full_mode_anywhere_and_quick_mode_among_the_newest() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");
    let green = cell.green.superuser_client("app").await.expect("green");
    // 600 fixture rows, 1,000 more: the oldest are outside quick mode's reach.
    cell.blue
        .superuser_client("app")
        .await
        .expect("blue")
        .batch_execute(
            r#"INSERT INTO billing."invoice lines" (invoice_id, description, unit_price)
               SELECT 1, 'more ' || g, 1 FROM generate_series(1, 1000) g"#,
        )
        .await
        .expect("more rows");
    let quick = run(input(&cell, Mode::Quick, 100), &deps)
        .await
        .expect("equal before the change");
    let lines = quick.databases[0]
        .tables
        .iter()
        .find(|t| t.table == "billing.\"invoice lines\"")
        .expect("compared");
    assert_eq!(
        (lines.rows, lines.chunks, lines.evidence.as_str()),
        (1000, 1, "the newest 1000 rows by key"),
        "{lines:?}"
    );
    run(input(&cell, Mode::Full, 100), &deps)
        .await
        .expect("equal before the change");

    // Behind replication's back: the apply worker never hears of it.
    green
        .batch_execute(
            r#"UPDATE billing."invoice lines" SET description = 'tampered' WHERE id = 1"#,
        )
        .await
        .expect("tamper an old row");
    for _ in 0..2 {
        let err = run(input(&cell, Mode::Full, 100), &deps)
            .await
            .expect_err("full mode sees the changed row");
        assert_eq!(err.error_name(), ErrorName::DataMismatch, "{err}");
        let message = err.to_failure().message().to_owned();
        assert!(
            message.contains("billing.\"invoice lines\" (database app) rows with (id) <= (100): blue 100 rows, green 100 rows, checksums differ"),
            "{message}"
        );
        assert!(
            !message.contains("public."),
            "only the changed table: {message}"
        );
    }
    run(input(&cell, Mode::Quick, 100), &deps)
        .await
        .expect("an old row is outside quick mode's reach");

    green
        .batch_execute(
            r#"UPDATE billing."invoice lines" SET description = 'tampered'
                WHERE id = (SELECT max(id) FROM billing."invoice lines")"#,
        )
        .await
        .expect("tamper the newest row");
    let err = run(input(&cell, Mode::Quick, 100), &deps)
        .await
        .expect_err("quick mode sees a changed row among the newest");
    assert_eq!(err.error_name(), ErrorName::DataMismatch, "{err}");
    let message = err.to_failure().message().to_owned();
    assert!(
        message.contains("billing.\"invoice lines\" (database app) rows with (id) > (600) and <= (1600): blue 1000 rows, green 1000 rows, checksums differ"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_deleted_on_green_fails_quick_mode() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");
    let green = cell.green.superuser_client("app").await.expect("green");
    run(input(&cell, Mode::Quick, 10_000), &deps)
        .await
        .expect("equal before the delete");
    green
        .batch_execute("DELETE FROM public.account_links WHERE parent_id = 1")
        .await
        .expect("delete");

    let err = run(input(&cell, Mode::Quick, 10_000), &deps)
        .await
        .expect_err("quick mode sees the missing row");
    assert_eq!(err.error_name(), ErrorName::DataMismatch, "{err}");
    let message = err.to_failure().message().to_owned();
    assert!(
        message.contains(
            "public.account_links (database app) rows with (parent_id, child_id, kind) <= ("
        ) && message.contains("): blue 150 rows, green 149 rows"),
        "a small table is compared whole: {message}"
    );
    let full = run(input(&cell, Mode::Full, 100), &deps)
        .await
        .expect_err("full mode too");
    let message = full.to_failure().message().to_owned();
    assert!(
        message.contains("public.account_links (database app) rows with (parent_id, child_id, kind) <= (199, 200, family): blue 100 rows, green 99 rows"),
        "{message}"
    );
}

/// Holds green's apply worker back on `billing."invoice lines"` (SHARE blocks its INSERT,
/// not our reads) while blue takes a row there: green has not caught up.
async fn hold_back_apply(cell: &LocalCell) -> tokio_postgres::Client {
    let holder = cell.green.superuser_client("app").await.expect("green");
    holder
        .batch_execute(r#"BEGIN; LOCK TABLE billing."invoice lines" IN SHARE MODE"#)
        .await
        .expect("lock");
    cell.blue
        .superuser_client("app")
        .await
        .expect("blue")
        .batch_execute(
            r#"INSERT INTO billing."invoice lines" (invoice_id, description, unit_price) VALUES (1, 'late', 1)"#,
        )
        .await
        .expect("row on blue");
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_green_to_confirm_the_snapshot_lsn() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");

    let holder = hold_back_apply(&cell).await;
    let mut impatient = input(&cell, Mode::Quick, 10_000);
    impatient.cell.budgets.lag_gate_seconds = 1;
    let err = run(impatient, &deps)
        .await
        .expect_err("green cannot confirm while apply is held");
    assert_eq!(err.error_name(), ErrorName::NotCaughtUp, "{err}");
    assert!(
        err.to_string().contains("test_all at "),
        "names the slot: {err}"
    );

    let released = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        holder.batch_execute("COMMIT").await.expect("release");
    });
    let started = Instant::now();
    let output = run(input(&cell, Mode::Quick, 10_000), &deps)
        .await
        .expect("equal once green caught up");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for green"
    );
    assert_eq!(find(&tables(&output), "billing.\"invoice lines\"").1, 601);
    released.await.expect("released");
}

/// A full check handed over between invocations (`budget_seconds` 0: one batch of 16
/// chunks each) covers exactly what one pass covers, and still finds a row changed
/// behind replication's back in the middle of a table it resumed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_check_resumed_across_invocations_equals_one_pass() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");
    let single = run(input(&cell, Mode::Full, 10), &deps)
        .await
        .expect("one pass");
    assert!(single.done && single.cursor.is_none());
    let totals = |outputs: &[Output]| {
        let mut totals = std::collections::BTreeMap::<String, (u64, u64)>::new();
        for output in outputs {
            for t in output.databases.iter().flat_map(|d| d.tables.iter()) {
                assert!(t.equal, "{t:?}");
                let entry = totals.entry(t.table.clone()).or_default();
                entry.0 += t.rows;
                entry.1 += t.chunks;
            }
        }
        totals
    };
    let one_pass = totals(std::slice::from_ref(&single));

    let resumed_run = |cell: &LocalCell| {
        let mut next = input(cell, Mode::Full, 10);
        next.budget_seconds = Some(0);
        next
    };
    let mut outputs = Vec::new();
    let mut next = resumed_run(&cell);
    loop {
        let output = run(next.clone(), &deps).await.expect("an invocation");
        let cursor = output.cursor.clone();
        outputs.push(output);
        match cursor {
            Some(cursor) => next.resume = Some(cursor),
            None => break,
        }
        assert!(outputs.len() < 200, "the cursor moves forward");
    }
    assert!(
        outputs.len() > 3,
        "handed over several times: {}",
        outputs.len()
    );
    assert!(outputs.last().is_some_and(|o| o.done));
    assert!(
        outputs.iter().any(|o| o
            .cursor
            .as_ref()
            .is_some_and(|c| c.table == "invoice lines" && c.after.is_some())),
        "a cursor inside a table"
    );
    assert_eq!(totals(&outputs), one_pass, "the same rows and chunks");

    // Row 400 of 600 is outside the first invocation's batch of 160 rows: found after a
    // hand-over inside the table.
    cell.green
        .superuser_client("app")
        .await
        .expect("green")
        .batch_execute(
            r#"UPDATE billing."invoice lines" SET description = 'tampered' WHERE id = 400"#,
        )
        .await
        .expect("tamper");
    let mut next = resumed_run(&cell);
    let err = loop {
        match run(next.clone(), &deps).await {
            Ok(output) => match output.cursor {
                Some(cursor) => next.resume = Some(cursor),
                None => panic!("the changed row went unseen"),
            },
            Err(err) => break err,
        }
    };
    assert_eq!(err.error_name(), ErrorName::DataMismatch, "{err}");
    let message = err.to_failure().message().to_owned();
    assert!(
        message.contains("billing.\"invoice lines\" (database app) rows with (id) > (390) and <= (400): blue 10 rows, green 10 rows, checksums differ"),
        "{message}"
    );

    let mut wrong = resumed_run(&cell);
    wrong.resume = Some(verify_data::Cursor {
        database: "app".to_owned(),
        schema: "public".to_owned(),
        table: "no such table".to_owned(),
        after: None,
    });
    let err = run(wrong, &deps).await.expect_err("an unknown table");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
}
