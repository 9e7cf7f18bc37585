//! drop-downstream-subscriptions against the local cell's search database.

use std::time::Duration;

use drop_downstream_subscriptions::{plan, run, Input, Output};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_operation::downstream::Journaled;
use switchyard_operation::fence::{self, Caller, Direction};

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Drops, retrying while the downstream has not yet confirmed blue's position, as the
/// state machine does.
async fn drop_when_caught_up(input: &Input, deps: &switchyard_operation::Deps) -> Output {
    for _ in 0..60 {
        match run(input.clone(), deps).await {
            Err(e) if e.error_name() == ErrorName::DownstreamBehind => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other.expect("drop"),
        }
    }
    panic!("the downstream never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_while_behind_then_journals_and_drops_once() {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    let deps = cell.deps().expect("deps");
    let search = cell
        .search
        .superuser_client("search")
        .await
        .expect("search");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let subscription_count = "SELECT count(*) FROM pg_subscription WHERE subname = 'search_sub'";
    let slot_count = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'search_sub'";
    let downstream = &cell.document.downstream[0];
    let journaled = || Journaled::read(&deps, &cell.document, downstream, "search_sub");

    let ahead = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        target_lsn: Some("FFFFFFFF/0".to_owned()),
        wait_seconds: 1,
    };
    let asked = std::time::Instant::now();
    let error = run(ahead, &deps)
        .await
        .expect_err("cannot have confirmed FFFFFFFF/0");
    assert_eq!(error.error_name(), ErrorName::DownstreamBehind, "{error}");
    assert!(
        asked.elapsed() >= std::time::Duration::from_secs(1),
        "it waited wait_seconds before answering"
    );
    assert_eq!(
        count(&search, subscription_count).await,
        1,
        "nothing dropped"
    );
    assert_eq!(count(&blue, slot_count).await, 1, "slot kept");
    assert!(journaled().await.expect("journal").is_none());

    let input = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        target_lsn: None,
        wait_seconds: 5,
    };
    let dry = plan(input.clone(), &deps).await.expect("plan");
    let n = dry.would.len();
    assert!(n == 2 || n == 3, "a wait only while behind: {dry:?}");
    let nlb = cell.nlb_endpoint();
    assert_eq!(
        dry.would[n - 2],
        format!(
            "journal subscription search_sub of downstream search under {} (publications search_pub, slot search_sub, connection search_replicator@{}:{}/app, no password)",
            Journaled::parameter(&deps, &cell.document, downstream, "search_sub"),
            nlb.ip(),
            nlb.port()
        )
    );
    assert_eq!(
        dry.would[n - 1],
        "DROP SUBSCRIPTION search_sub on downstream search, which drops slot search_sub on blue"
    );
    let dry = plan(
        Input {
            target_lsn: Some("FFFFFFFF/0".to_owned()),
            wait_seconds: 1,
            ..input.clone()
        },
        &deps,
    )
    .await
    .expect("plan while behind");
    assert_eq!(dry.would.len(), 3, "{dry:?}");
    assert!(
        dry.would[0]
            .starts_with("wait up to 1 s for slot search_sub on blue to confirm FFFFFFFF/0"),
        "{dry:?}"
    );
    for password in cell.secrets.all_passwords() {
        assert!(
            !dry.would.iter().any(|l| l.contains(password.expose())),
            "the plan shows a password"
        );
    }
    assert_eq!(
        count(&search, subscription_count).await,
        1,
        "the plan dropped nothing"
    );
    assert_eq!(count(&blue, slot_count).await, 1);
    assert!(
        journaled().await.expect("journal").is_none(),
        "the plan journaled nothing"
    );

    let first = drop_when_caught_up(&input, &deps).await;
    assert_eq!(first.subscriptions.len(), 1);
    let dropped = &first.subscriptions[0];
    assert_eq!(
        (dropped.downstream.as_str(), dropped.name.as_str()),
        ("search", "search_sub")
    );
    assert!(dropped.dropped && !dropped.slot_left, "{first:?}");
    assert_eq!(
        count(&search, subscription_count).await,
        0,
        "subscription dropped"
    );
    assert_eq!(
        count(&blue, slot_count).await,
        0,
        "its slot dropped on blue"
    );

    let raw = cell
        .moto
        .clients
        .ssm
        .get_parameter()
        .name(Journaled::parameter(
            &deps,
            &cell.document,
            downstream,
            "search_sub",
        ))
        .send()
        .await
        .expect("journal parameter");
    let text = raw
        .parameter()
        .and_then(|p| p.value())
        .expect("value")
        .to_owned();
    for password in cell.secrets.all_passwords() {
        assert!(
            !text.contains(password.expose()),
            "the journal holds a password"
        );
    }
    let entry: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(entry["publications"], serde_json::json!(["search_pub"]));
    assert_eq!(entry["slot_name"], "search_sub");
    assert_eq!(entry["connection"]["dbname"], "app");
    assert_eq!(entry["connection"]["user"], "search_replicator");
    assert_eq!(
        entry["connection"]["host"],
        cell.nlb_endpoint().ip().to_string()
    );
    assert_eq!(entry["connection"]["port"], cell.nlb_endpoint().port());
    assert_eq!(entry["confirmed_lsn"], dropped.confirmed_lsn.as_str());
    assert_eq!(
        entry["run_id"], TEST_RUN,
        "the entry names the run that dropped it"
    );
    let typed = journaled().await.expect("journal").expect("entry");
    assert!(
        typed.held_everything(),
        "confirmed {} ≥ the frozen position {}",
        typed.confirmed_lsn,
        typed.freeze_lsn
    );

    let dry = plan(input.clone(), &deps).await.expect("plan after");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");
    let second = run(input.clone(), &deps).await.expect("second drop");
    assert!(
        !second.subscriptions[0].dropped,
        "nothing left to drop: {second:?}"
    );
    assert_eq!(second.subscriptions[0].confirmed_lsn, dropped.confirmed_lsn);
    let again = journaled().await.expect("journal");
    assert_eq!(
        again.map(|e| serde_json::to_value(e).expect("json")),
        Some(entry),
        "the journal entry is unchanged"
    );

    // Another run finds it dropped by this one: that says nothing about the downstream
    // now, so it stops rather than carry on as if it had dropped it itself.
    cell.lock("a-later-run").await.expect("lock");
    let later = Input {
        run_id: "a-later-run".to_owned(),
        ..input.clone()
    };
    let error = run(later, &deps)
        .await
        .expect_err("another run's entry is not this run's drop");
    assert_eq!(error.error_name(), ErrorName::PreconditionFailed, "{error}");
    assert!(error.to_string().contains(TEST_RUN), "{error}");
}

/// The race the abort path must not lose: a drop still waiting when the run starts its
/// abort must drop nothing afterwards (the abort path would have "recreated" a subscription
/// that still existed, and the late drop would leave the downstream unsubscribed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_still_in_flight_when_the_abort_begins_drops_nothing() {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    let deps = cell.deps().expect("deps");
    let search = cell
        .search
        .superuser_client("search")
        .await
        .expect("search");
    let subscription_count = "SELECT count(*) FROM pg_subscription WHERE subname = 'search_sub'";
    // Another session holds the subscription, as recreate-downstream-subscriptions does
    // while it looks: the drop, caught up, must wait for it.
    let holder = cell
        .search
        .superuser_client("search")
        .await
        .expect("holder");
    switchyard_operation::downstream::hold(&holder, "search_sub")
        .await
        .expect("hold");
    let input = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        target_lsn: None,
        wait_seconds: 30,
    };
    let drop = {
        let deps = deps.clone();
        let input = input.clone();
        tokio::spawn(async move { run(input, &deps).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!drop.is_finished(), "the drop waits for the holder");
    // The abort path begins (its first step marks the run aborting), then lets go.
    fence::admit(
        &deps,
        &cell.document,
        Caller {
            run_id: TEST_RUN,
            force: false,
        },
        Direction::Abort,
    )
    .await
    .expect("the run is aborting");
    switchyard_operation::downstream::release(&holder, "search_sub")
        .await
        .expect("release");
    let error = drop
        .await
        .expect("joined")
        .expect_err("the abort began while it waited");
    assert_eq!(error.error_name(), ErrorName::AbortInProgress, "{error}");
    assert_eq!(
        count(&search, subscription_count).await,
        1,
        "the subscription is still there"
    );
    let downstream = &cell.document.downstream[0];
    assert!(
        Journaled::read(&deps, &cell.document, downstream, "search_sub")
            .await
            .expect("journal")
            .is_none(),
        "nothing journaled either"
    );
}
