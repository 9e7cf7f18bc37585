//! analyze-green against a local cell replicating blue → green.

use std::time::{Duration, Instant};

use analyze_green::{plan, run, Cursor, Input, Output};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};

async fn replicating_cell() -> LocalCell {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    // switchyard's own schema on blue is replicated by the FOR ALL TABLES stand-in, but
    // must never be analyzed.
    cell.blue
        .superuser_client("app")
        .await
        .expect("blue")
        .batch_execute(
            "CREATE SCHEMA switchyard; CREATE TABLE switchyard.journal (id bigint PRIMARY KEY)",
        )
        .await
        .expect("switchyard schema");
    cell.replicate_directly().await.expect("replicating");
    // Only our statements may write statistics: the dry-run checks compare pg_statistic.
    let green = cell.green.superuser_client("app").await.expect("green");
    for sql in [
        "ALTER SYSTEM SET autovacuum = off",
        "SELECT pg_reload_conf()",
    ] {
        green
            .batch_execute(sql)
            .await
            .expect("autovacuum off on green");
    }
    cell
}

fn tables(output: &Output) -> Vec<&str> {
    assert_eq!(output.databases.len(), 1);
    assert_eq!(output.databases[0].name, "app");
    output.databases[0]
        .tables
        .iter()
        .map(|t| t.table.as_str())
        .collect()
}

/// Waits (bounded) until `column` of pg_stat_user_tables is set for public.payments on
/// green: statistics reach the shared view asynchronously.
async fn stamped(cell: &LocalCell, column: &str) -> bool {
    let green = cell.green.superuser_client("app").await.expect("green");
    let sql = format!(
        "SELECT {column} IS NOT NULL FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = 'payments'"
    );
    let started = Instant::now();
    loop {
        green
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .expect("clear");
        if green
            .query_one(&sql, &[])
            .await
            .expect("stat")
            .get::<_, bool>(0)
        {
            return true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyzes_every_replicated_table_and_partitioned_root_twice() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");
    assert!(
        !stamped_now(&cell, "last_analyze").await,
        "green starts without a manual ANALYZE"
    );
    let input = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        vacuum: false,
        budget_seconds: None,
        resume: None,
    };

    // A dry run lists the statements, leaves last, and computes no statistics.
    let before = statistics_rows(&cell).await;
    let dry = plan(input.clone(), &deps).await.expect("plan");
    assert!(dry.dry_run);
    for expected in [
        "on green's database app: ANALYZE \"public\".\"payments\"",
        "on green's database app: ANALYZE \"billing\".\"invoice lines\"",
    ] {
        assert!(
            dry.would.iter().any(|l| l == expected),
            "{expected}: {:#?}",
            dry.would
        );
    }
    assert_eq!(
        dry.would.last().map(String::as_str),
        Some("on green's database app: ANALYZE \"public\".\"events\"")
    );
    assert!(
        !dry.would.iter().any(|l| l.contains("switchyard")),
        "{:#?}",
        dry.would
    );
    assert_eq!(
        statistics_rows(&cell).await,
        before,
        "a dry run analyzes nothing"
    );
    assert!(!stamped_now(&cell, "last_analyze").await);

    let first = run(input.clone(), &deps).await.expect("first run");
    let names = tables(&first);
    assert_eq!(
        dry.would.len(),
        names.len(),
        "one statement per table analyzed"
    );
    for expected in [
        "public.accounts",
        "public.payments",
        "public.account_links",
        "public.events_2026_h1",
        "public.events_2026_h2",
        "public.events_default",
        "billing.invoices",
        "billing.\"invoice lines\"",
    ] {
        assert!(names.contains(&expected), "{expected} analyzed: {names:?}");
    }
    assert_eq!(
        names.last(),
        Some(&"public.events"),
        "the partitioned root is analyzed, after its leaves: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("switchyard.")),
        "{names:?}"
    );
    assert!(
        !names.contains(&"billing.account_totals"),
        "a matview is not replicated"
    );
    assert!(
        stamped(&cell, "last_analyze").await,
        "last_analyze set for public.payments"
    );

    assert!(statistics_rows(&cell).await > before);
    // Not idempotent by design: a rerun refreshes the same tables again, and says so.
    assert_eq!(
        plan(input.clone(), &deps).await.expect("plan").would,
        dry.would
    );
    let second = run(input, &deps).await.expect("second run");
    assert_eq!(
        tables(&second),
        names,
        "a second run analyzes the same tables"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_mode_vacuums_as_well() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");
    assert!(
        !stamped_now(&cell, "last_vacuum").await,
        "green starts without a manual VACUUM"
    );
    let input = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        vacuum: true,
        budget_seconds: None,
        resume: None,
    };
    let dry = plan(input.clone(), &deps).await.expect("plan");
    assert!(
        dry.would.contains(
            &"on green's database app: VACUUM (ANALYZE) \"public\".\"payments\"".to_owned()
        ),
        "{:#?}",
        dry.would
    );
    assert!(dry.would.iter().all(|l| l.contains(": VACUUM (ANALYZE) ")));
    assert!(
        !stamped_now(&cell, "last_vacuum").await,
        "a dry run vacuums nothing"
    );
    let first = run(input.clone(), &deps).await.expect("first run");
    assert!(tables(&first).contains(&"public.payments"));
    assert!(
        stamped(&cell, "last_vacuum").await,
        "last_vacuum set for public.payments"
    );
    assert!(
        stamped(&cell, "last_analyze").await,
        "VACUUM (ANALYZE) analyzes too"
    );
    let second = run(input, &deps).await.expect("second run");
    assert_eq!(tables(&second), tables(&first));
}

/// The column's state right now, without waiting.
async fn stamped_now(cell: &LocalCell, column: &str) -> bool {
    let green = cell.green.superuser_client("app").await.expect("green");
    let sql = format!(
        "SELECT {column} IS NOT NULL FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = 'payments'"
    );
    green.query_one(&sql, &[]).await.expect("stat").get(0)
}

/// Rows of pg_statistic for green's application tables: ANALYZE writes them in its own
/// transaction, so unlike the statistics views they change at once.
async fn statistics_rows(cell: &LocalCell) -> i64 {
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .query_one(
            "SELECT count(*) FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'billing')",
            &[],
        )
        .await
        .expect("pg_statistic")
        .get(0)
}

/// With no budget (`budget_seconds` 0) every invocation refreshes one table and hands the
/// next over; followed to the end, the invocations refresh exactly what one pass does, in
/// the same order. A statement still running when the budget ends (here: waiting on a
/// lock another session holds) is cancelled and its table handed over whole, then done by
/// the next invocation. A cursor naming a table green does not replicate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_over_between_invocations_and_covers_what_one_pass_does() {
    let cell = replicating_cell().await;
    let deps = cell.deps().expect("deps");
    let input = |budget: Option<u64>, resume: Option<Cursor>| Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        vacuum: false,
        budget_seconds: budget,
        resume,
    };
    let one_pass = run(input(Some(600), None), &deps).await.expect("one pass");
    assert!(one_pass.done && one_pass.cursor.is_none());
    let names: Vec<String> = tables(&one_pass).iter().map(|t| (*t).to_owned()).collect();

    let mut resumed = Vec::new();
    let mut invocations = 0;
    let mut resume = None;
    loop {
        let output = run(input(Some(0), resume.clone()), &deps)
            .await
            .expect("an invocation");
        invocations += 1;
        let these = tables(&output);
        assert_eq!(these.len(), 1, "one table per invocation: {these:?}");
        resumed.extend(these.iter().map(|t| (*t).to_owned()));
        assert_eq!(output.done, output.cursor.is_none(), "{output:?}");
        match output.cursor {
            Some(cursor) => resume = Some(cursor),
            None => break,
        }
        assert!(invocations <= names.len(), "the cursor moves forward");
    }
    assert_eq!(resumed, names, "the same tables, in the same order");

    // billing.invoices comes second: a lock held elsewhere keeps its ANALYZE waiting
    // past the 2 s budget.
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .batch_execute("BEGIN; LOCK TABLE billing.invoices IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let started = Instant::now();
    let cut = run(input(Some(2), None), &deps)
        .await
        .expect("handed over, not failed");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cancelled at the budget, not left waiting"
    );
    assert_eq!(tables(&cut), ["billing.\"invoice lines\""]);
    assert!(!cut.done);
    assert_eq!(
        cut.cursor,
        Some(Cursor {
            database: "app".to_owned(),
            schema: "billing".to_owned(),
            table: "invoices".to_owned(),
        })
    );
    green.batch_execute("COMMIT").await.expect("unlock");
    let rest = run(input(Some(600), cut.cursor.clone()), &deps)
        .await
        .expect("the rest");
    assert!(rest.done);
    let rest_names: Vec<String> = tables(&rest).iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(rest_names, names[1..], "from the handed-over table on");

    let err = run(
        input(
            None,
            Some(Cursor {
                database: "app".to_owned(),
                schema: "public".to_owned(),
                table: "no such table".to_owned(),
            }),
        ),
        &deps,
    )
    .await
    .expect_err("an unknown table");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(
        err.to_string()
            .contains(r#"public."no such table" (database app)"#),
        "{err}"
    );
}
