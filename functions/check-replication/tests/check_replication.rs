//! start-replication then check-replication on a local cell, blue and green real servers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use check_replication::{run, Input, Output};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{audit_keys, LocalCell, TEST_RUN};
use switchyard_operation::{Deps, Error};

async fn cell() -> LocalCell {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell
}

fn start_input(cell: &LocalCell) -> start_replication::Input {
    start_replication::Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        idle_transaction_seconds: 5,
        lock_timeout_seconds: 30,
    }
}

fn input(cell: &LocalCell) -> Input {
    Input {
        cell: cell.document.clone(),
    }
}

/// Calls check-replication until it stops answering `NotCaughtUp`, for at most 60 s.
async fn poll(cell: &LocalCell, deps: &Deps) -> Result<Output, Error> {
    let started = Instant::now();
    loop {
        match run(input(cell), deps).await {
            Err(e) if e.error_name() == ErrorName::NotCaughtUp => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "not caught up after 60 s: {e}"
                );
                eprintln!("{:>5} ms {e}", started.elapsed().as_millis());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_catches_up_under_load_with_every_table_published_once() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    cell.copy_schema_directly().await.expect("schema on green");
    let ledger = cell
        .start_ledger(2, Duration::from_millis(5))
        .expect("ledger");

    let first = start_replication::run(start_input(&cell), &deps)
        .await
        .expect("start-replication");
    let caught_up = poll(&cell, &deps).await.expect("caught up");
    let by_name: Vec<(&str, u64, u64, bool)> = caught_up
        .subscriptions
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.tables_ready,
                s.tables_total,
                s.worker_running,
            )
        })
        .collect();
    assert_eq!(
        by_name,
        [
            ("switchyard_payments", 1, 1, true),
            ("switchyard_rest", 6, 6, true)
        ]
    );
    for s in &caught_up.subscriptions {
        assert!(s.not_ready.is_empty());
        assert!(s.lag_bytes.expect("confirmed") <= cell.document.budgets.max_replication_lag_bytes);
        assert_eq!(s.slot, s.name);
    }

    // A row written into the partitioned table after the start travels through its root
    // and lands in the right partition on green.
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let id: i64 = blue
        .query_one(
            "INSERT INTO public.events (account_id, kind, payload, occurred_at)
             VALUES (1, 'after-start', '{}', '2026-03-01') RETURNING id",
            &[],
        )
        .await
        .expect("insert event")
        .get(0);
    let tally = ledger.stop().await;
    let keys = tally.keys();
    assert!(
        keys.len() > 20,
        "the ledger wrote during the run: {}",
        keys.len()
    );

    let green = cell.green.superuser_client("app").await.expect("green");
    let started = Instant::now();
    loop {
        let audit = audit_keys(
            &cell.green.superuser_options("app"),
            ("public", "payments"),
            "memo",
            &keys,
        )
        .await
        .expect("audit");
        assert_eq!(
            audit.duplicated, 0,
            "no acknowledged payment twice on green"
        );
        let event: i64 = green
            .query_one(
                "SELECT count(*) FROM public.events_2026_h1 WHERE id = $1 AND kind = 'after-start'",
                &[&id],
            )
            .await
            .expect("event on green")
            .get(0);
        if audit.missing == 0 && event == 1 {
            assert_eq!(audit.present_once, keys.len());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "green still misses {} acknowledged payments (event row: {event})",
            audit.missing
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Every user table is published exactly once; the table group has its own publication.
    let published: Vec<(String, String)> = blue
        .query(
            "SELECT pubname::text, format('%s.%s', schemaname, tablename)
               FROM pg_publication_tables WHERE pubname LIKE 'switchyard\\_%' ORDER BY 2",
            &[],
        )
        .await
        .expect("published tables")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let rest = |t: &str| ("switchyard_rest".to_owned(), t.to_owned());
    assert_eq!(
        published,
        [
            rest("billing.invoice lines"),
            rest("billing.invoices"),
            rest("public.account_links"),
            rest("public.accounts"),
            rest("public.events"),
            (
                "switchyard_payments".to_owned(),
                "public.payments".to_owned()
            ),
            rest("switchyard.switchover_marker"),
        ]
    );

    // Twice: the second call finds everything in place and changes nothing.
    let slots = |client: tokio_postgres::Client| async move {
        client
            .query(
                "SELECT slot_name::text, plugin::text FROM pg_replication_slots ORDER BY 1",
                &[],
            )
            .await
            .expect("slots")
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let subscriptions = |client: tokio_postgres::Client| async move {
        client
            .query(
                "SELECT oid, subname::text FROM pg_subscription ORDER BY 2",
                &[],
            )
            .await
            .expect("subscriptions")
            .iter()
            .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let slots_before = slots(cell.blue.superuser_client("app").await.expect("blue")).await;
    let subs_before = subscriptions(cell.green.superuser_client("app").await.expect("green")).await;
    let second = start_replication::run(start_input(&cell), &deps)
        .await
        .expect("second start-replication");
    assert_eq!(
        slots(cell.blue.superuser_client("app").await.expect("blue")).await,
        slots_before
    );
    assert_eq!(
        subscriptions(cell.green.superuser_client("app").await.expect("green")).await,
        subs_before
    );
    let database = &second.databases[0];
    assert!(!database.guard_installed);
    assert!(database.publications.iter().all(|p| !p.changed));
    assert!(database
        .subscriptions
        .iter()
        .all(|s| !s.created && !s.slot_created));
    assert_eq!(
        database.publications,
        first.databases[0]
            .publications
            .iter()
            .map(|p| start_replication::PublicationOutput {
                changed: false,
                ..p.clone()
            })
            .collect::<Vec<_>>()
    );
    assert!(first.databases[0].guard_installed);
    assert!(first.databases[0]
        .subscriptions
        .iter()
        .all(|s| s.created && s.slot_created));

    // The downstream's publication and slot on blue are untouched.
    let slot_names: BTreeSet<String> = slots_before.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        slot_names,
        BTreeSet::from(["search_sub", "switchyard_payments", "switchyard_rest"].map(String::from))
    );
    let search_tables: Vec<String> = blue
        .query(
            "SELECT format('%s.%s', schemaname, tablename) FROM pg_publication_tables
              WHERE pubname = 'search_pub' ORDER BY 1",
            &[],
        )
        .await
        .expect("search_pub")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(search_tables, ["public.accounts", "public.payments"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_on_blue_after_the_start_is_detected_but_ours_is_not() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    cell.copy_schema_directly().await.expect("schema on green");

    let err = run(input(&cell), &deps).await.expect_err("nothing started");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(err.to_string().contains("run start-replication"), "{err}");

    start_replication::run(start_input(&cell), &deps)
        .await
        .expect("start-replication");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let ours: i64 = blue
        .query_one("SELECT count(*) FROM switchyard.ddl_journal", &[])
        .await
        .expect("journal")
        .get(0);
    assert!(
        ours >= 2,
        "our own publication DDL is journaled ({ours} rows) and must be ignored"
    );
    // Routine work that is not schema drift: temporary tables and matview refreshes.
    blue.batch_execute(
        "CREATE TEMP TABLE scratch (id int); ALTER TABLE scratch ADD COLUMN x int; DROP TABLE scratch;
         REFRESH MATERIALIZED VIEW billing.account_totals;",
    )
    .await
    .expect("routine work");
    poll(&cell, &deps).await.expect("caught up, no DDL seen");

    let (user, password) = cell.secrets.role("app_owner").expect("app_owner");
    let owner = switchyard_postgres::connect(&cell.blue.options("app", user, password))
        .await
        .expect("app_owner on blue");
    owner
        .batch_execute("ALTER TABLE public.accounts ADD COLUMN nickname text")
        .await
        .expect("DDL on blue");
    let err = run(input(&cell), &deps).await.expect_err("DDL detected");
    assert_eq!(err.error_name(), ErrorName::DdlDetected, "{err}");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(
        message.contains(
            "ALTER TABLE by app_owner: ALTER TABLE public.accounts ADD COLUMN nickname text"
        ),
        "{message}"
    );
    assert!(!message.contains("CREATE PUBLICATION"), "{message}");

    // The message's acknowledgement clears it once green has the change.
    let acknowledge = message
        .split("acknowledge them with ")
        .nth(1)
        .and_then(|rest| rest.split(" on blue").next())
        .expect("acknowledgement statement");
    cell.green
        .superuser_client("app")
        .await
        .expect("green")
        .batch_execute("ALTER TABLE public.accounts ADD COLUMN nickname text")
        .await
        .expect("same change on green");
    blue.batch_execute(acknowledge).await.expect("acknowledge");
    poll(&cell, &deps)
        .await
        .expect("no DDL left unacknowledged");
}
