//! pause-pgbouncer against the local cell's real PgBouncer.

use std::time::Duration;

use pause_pgbouncer::{plan, run, Input};
use switchyard_cell::Discovery;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_postgres::PgBouncerAdmin;

async fn start() -> LocalCell {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell
}

async fn admin(cell: &LocalCell) -> PgBouncerAdmin {
    cell.pgbouncer_admin().await.expect("admin")
}

/// PgBouncer's `dns_max_ttl` as `SHOW CONFIG` reports it now.
async fn dns_max_ttl(console: &PgBouncerAdmin) -> Option<String> {
    console.config_value("dns_max_ttl").await.expect("config")
}

async fn app_paused(cell: &LocalCell) -> bool {
    admin(cell)
        .await
        .show_databases()
        .await
        .expect("show databases")
        .into_iter()
        .find(|r| r.name == "app")
        .expect("app row")
        .paused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_past_the_budget_is_a_drain_timeout_and_everything_resumes() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let holder = switchyard_postgres::connect(&cell.via_pgbouncer("app_writer").expect("opts"))
        .await
        .expect("holder");
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");

    let mut document = cell.document.clone();
    document.budgets.drain_seconds = 2;

    // The dry run names each change on the one instance and makes none of them.
    let console = format!("127.0.0.1:{}", cell.pgbouncer.port);
    let dry = plan(
        Input {
            cell: document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
    .expect("plan");
    assert_eq!(dry.would.len(), 4, "{dry:?}");
    assert_eq!(
        dry.would[0],
        format!("on PgBouncer {console}: SET dns_max_ttl = 1 (now 15)")
    );
    assert!(
        dry.would[1].starts_with(&format!(
            "on PgBouncer {console}: SET dns_nxdomain_ttl = 1 (now "
        )),
        "{dry:?}"
    );
    assert!(
        dry.would[2].starts_with(&format!("on PgBouncer {console}: PAUSE app (")),
        "{dry:?}"
    );
    assert!(
        dry.would[3].starts_with("then wait up to 2s (budgets.drain_seconds) for all 1 PAUSEs"),
        "{dry:?}"
    );
    assert!(!app_paused(&cell).await, "the dry run paused nothing");
    assert_eq!(
        dns_max_ttl(&admin(&cell).await).await.as_deref(),
        Some("15"),
        "the dry run lowered no TTL"
    );
    holder
        .batch_execute("SELECT 2")
        .await
        .expect("the holder's transaction is untouched");

    let started = std::time::Instant::now();
    let error = run(
        Input {
            cell: document,
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
    .expect_err("the open transaction holds PAUSE");
    assert_eq!(error.error_name(), ErrorName::DrainTimeout, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the budget"
    );
    let message = error.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{}/app", cell.pgbouncer.port)),
        "{message}"
    );
    assert!(message.contains("Every instance was resumed"), "{message}");

    assert!(!app_paused(&cell).await, "the rollback resumed app");
    assert_eq!(
        dns_max_ttl(&admin(&cell).await).await.as_deref(),
        Some("15"),
        "RELOAD restored the file's TTL"
    );
    let other = switchyard_postgres::connect(&cell.via_pgbouncer("app_reader").expect("opts"))
        .await
        .expect("other client");
    let ran = tokio::time::timeout(Duration::from_secs(5), other.simple_query("SELECT 1")).await;
    assert!(
        matches!(ran, Ok(Ok(_))),
        "a query through PgBouncer runs: {ran:?}"
    );
    holder
        .batch_execute("COMMIT")
        .await
        .expect("the holder can still commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreachable_instance_pauses_nothing() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let mut document = cell.document.clone();
    document.pgbouncer.discovery = Discovery::Static {
        hosts: vec![
            format!("127.0.0.1:{}", cell.pgbouncer.port),
            "127.0.0.1:1".to_owned(),
        ],
    };
    let dry = plan(
        Input {
            cell: document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
    .expect_err("a dry run needs every instance too");
    assert_eq!(dry.error_name(), ErrorName::PauseFailed, "{dry}");
    assert!(dry.to_string().contains("127.0.0.1:1"), "{dry}");
    let error = run(
        Input {
            cell: document,
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
    .expect_err("one instance is unreachable");
    assert_eq!(error.error_name(), ErrorName::PauseFailed, "{error}");
    let message = error.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !message.contains(&format!("127.0.0.1:{}", cell.pgbouncer.port)),
        "only the unreachable one is named: {message}"
    );
    assert!(
        !app_paused(&cell).await,
        "the reachable instance was not paused"
    );
    assert_eq!(
        dns_max_ttl(&admin(&cell).await).await.as_deref(),
        Some("15"),
        "nothing was changed"
    );
}
