//! recreate-downstream-subscriptions against the local cell: drop, write, recreate, and
//! only what is written after the recreation reaches the search database.

use std::time::Duration;

use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_operation::downstream::Journaled;

async fn count(client: &tokio_postgres::Client, sql: &str, email: &str) -> i64 {
    client.query_one(sql, &[&email]).await.expect(sql).get(0)
}

async fn insert_account(blue: &tokio_postgres::Client, email: &str) {
    blue.execute("INSERT INTO public.accounts (email) VALUES ($1)", &[&email])
        .await
        .expect("insert on blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreates_the_dropped_subscription_once_without_copying() {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    let deps = cell.deps().expect("deps");
    let search = cell
        .search
        .superuser_client("search")
        .await
        .expect("search");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let by_email = "SELECT count(*) FROM public.accounts WHERE email = $1";

    let drop_input = drop_downstream_subscriptions::Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        target_lsn: None,
        wait_seconds: 5,
    };
    let mut dropped = None;
    for _ in 0..60 {
        match drop_downstream_subscriptions::run(drop_input.clone(), &deps).await {
            Err(e) if e.error_name() == ErrorName::DownstreamBehind => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => {
                dropped = Some(other.expect("drop"));
                break;
            }
        }
    }
    assert!(dropped.expect("the downstream caught up").subscriptions[0].dropped);
    insert_account(&blue, "while-dropped@example.com").await;

    let input = recreate_downstream_subscriptions::Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        direction: switchyard_operation::fence::Way::Forward,
    };
    let downstream = &cell.document.downstream[0];
    let journaled = || Journaled::read(&deps, &cell.document, downstream, "search_sub");
    let entry = journaled().await.expect("journal");
    let subscriptions = "SELECT count(*) FROM pg_subscription";
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'search_sub'";
    let dry = recreate_downstream_subscriptions::plan(input.clone(), &deps)
        .await
        .expect("plan");
    let nlb = cell.nlb_endpoint();
    assert_eq!(dry.would.len(), 2, "{dry:?}");
    assert!(
        dry.would[0].starts_with(&format!(
            "CREATE SUBSCRIPTION search_sub on downstream search for publications search_pub through search_replicator@{}:{}/app (password from ",
            nlb.ip(),
            nlb.port()
        )) && dry.would[0].contains(
            "), copy_data = false, slot_name = 'search_sub', binary = false, streaming = 'off', enabled = true"
        ),
        "{dry:?}"
    );
    assert_eq!(
        dry.would[1],
        "then wait up to 30 s for its apply worker to start"
    );
    for password in cell.secrets.all_passwords() {
        assert!(
            !dry.would.iter().any(|l| l.contains(password.expose())),
            "the plan shows a password"
        );
    }
    let one = |sql: &'static str| {
        let (search, blue) = (&search, &blue);
        async move {
            let client = if sql.contains("pg_subscription") {
                search
            } else {
                blue
            };
            client
                .query_one(sql, &[])
                .await
                .expect(sql)
                .get::<_, i64>(0)
        }
    };
    assert_eq!(one(subscriptions).await, 0, "the plan created nothing");
    assert_eq!(one(slots).await, 0, "no slot made on blue");
    assert_eq!(
        journaled().await.expect("journal"),
        entry,
        "the journal is untouched"
    );

    let first = recreate_downstream_subscriptions::run(input.clone(), &deps)
        .await
        .expect("recreate");
    assert_eq!(first.subscriptions.len(), 1);
    let sub = &first.subscriptions[0];
    assert_eq!(
        (sub.downstream.as_str(), sub.name.as_str()),
        ("search", "search_sub")
    );
    assert!(sub.created && sub.streaming, "{first:?}");
    let slot: i64 = blue
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'search_sub'",
            &[],
        )
        .await
        .expect("slot")
        .get(0);
    assert_eq!(slot, 1, "the slot is back on the primary");

    insert_account(&blue, "after-recreate@example.com").await;
    let mut arrived = false;
    for _ in 0..60 {
        if count(&search, by_email, "after-recreate@example.com").await == 1 {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        arrived,
        "a row written after the recreation reaches the search database"
    );
    assert_eq!(
        count(&search, by_email, "while-dropped@example.com").await,
        0,
        "copy_data = false: nothing from before the recreation is copied"
    );

    let oid_sql = "SELECT oid::bigint FROM pg_subscription WHERE subname = 'search_sub'";
    let oid: i64 = search.query_one(oid_sql, &[]).await.expect("oid").get(0);
    let dry = recreate_downstream_subscriptions::plan(input.clone(), &deps)
        .await
        .expect("plan after");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");
    let second = recreate_downstream_subscriptions::run(input, &deps)
        .await
        .expect("second recreate");
    assert!(
        !second.subscriptions[0].created && second.subscriptions[0].streaming,
        "{second:?}"
    );
    let again: i64 = search.query_one(oid_sql, &[]).await.expect("oid").get(0);
    assert_eq!(again, oid, "the existing subscription is left as it is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_without_a_journal_entry_or_a_publication() {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    let deps = cell.deps().expect("deps");
    let search = cell
        .search
        .superuser_client("search")
        .await
        .expect("search");
    let input = recreate_downstream_subscriptions::Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        direction: switchyard_operation::fence::Way::Forward,
    };
    let drop_input = drop_downstream_subscriptions::Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        target_lsn: None,
        wait_seconds: 5,
    };
    for _ in 0..60 {
        match drop_downstream_subscriptions::run(drop_input.clone(), &deps).await {
            Err(e) if e.error_name() == ErrorName::DownstreamBehind => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => {
                other.expect("drop");
                break;
            }
        }
    }
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    blue.batch_execute("DROP PUBLICATION search_pub")
        .await
        .expect("drop publication");
    let error = recreate_downstream_subscriptions::run(input.clone(), &deps)
        .await
        .expect_err("no publication");
    assert_eq!(error.error_name(), ErrorName::PreconditionFailed, "{error}");
    assert!(error.to_string().contains("copy-schema"), "{error}");
    let error = recreate_downstream_subscriptions::plan(input.clone(), &deps)
        .await
        .expect_err("the plan stops the same way");
    assert_eq!(error.error_name(), ErrorName::PreconditionFailed, "{error}");
    assert!(error.to_string().contains("copy-schema"), "{error}");
    let none: i64 = search
        .query_one("SELECT count(*) FROM pg_subscription", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(none, 0, "nothing created");

    cell.moto
        .clients
        .ssm
        .delete_parameter()
        .name(Journaled::parameter(
            &deps,
            &cell.document,
            &cell.document.downstream[0],
            "search_sub",
        ))
        .send()
        .await
        .expect("the journal entry deleted by hand");
    let error = recreate_downstream_subscriptions::plan(input.clone(), &deps)
        .await
        .expect_err("the plan stops without a journal entry");
    assert_eq!(error.error_name(), ErrorName::PreconditionFailed, "{error}");
    let error = recreate_downstream_subscriptions::run(input, &deps)
        .await
        .expect_err("no journal entry");
    assert_eq!(error.error_name(), ErrorName::PreconditionFailed, "{error}");
}
