//! pause-pgbouncer then resume-pgbouncer against the local cell's real PgBouncer.

use std::time::Duration;

use resume_pgbouncer::{plan, run, Input};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_operation::fence::{self, Decision, Verdict, Way};
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

async fn app_paused(admin: &PgBouncerAdmin) -> bool {
    admin
        .show_databases()
        .await
        .expect("show databases")
        .into_iter()
        .find(|r| r.name == "app")
        .expect("app row")
        .paused
}

async fn pause(cell: &LocalCell, deps: &switchyard_operation::Deps) -> pause_pgbouncer::Output {
    pause_pgbouncer::run(
        pause_pgbouncer::Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        deps,
    )
    .await
    .expect("pause")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_then_resume_under_load_loses_nothing_and_both_are_idempotent() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let ledger = cell
        .start_ledger(2, Duration::from_millis(5))
        .expect("ledger");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let input = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        // Nothing was renamed: this resumes toward blue, as the abort path does.
        direction: Way::Abort,
        expected_server_version_num: None,
    };
    assert!(
        plan(input.clone(), &deps)
            .await
            .expect("plan resume")
            .is_empty(),
        "nothing paused, no TTL lowered: nothing to resume"
    );

    let paused = pause(&cell, &deps).await;
    assert_eq!(paused.instances.len(), 1);
    assert!(!paused.instances[0].already_paused);
    assert_eq!(paused.instances[0].databases, ["app"]);
    let console = admin(&cell).await;
    assert!(app_paused(&console).await);
    assert_eq!(dns_max_ttl(&console).await.as_deref(), Some("1"));
    assert_eq!(
        console
            .config_value("dns_nxdomain_ttl")
            .await
            .expect("config")
            .as_deref(),
        Some("1")
    );
    let options = cell.via_pgbouncer("app_reader").expect("opts");
    let waiter = tokio::spawn(async move {
        let client = switchyard_postgres::connect(&options)
            .await
            .expect("client");
        client.simple_query("SELECT 1").await.map(drop)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "a query waits while paused");

    let again = pause(&cell, &deps).await;
    assert!(again.instances[0].already_paused, "a rerun finds it paused");
    let pause_input = pause_pgbouncer::Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
    };
    assert!(
        pause_pgbouncer::plan(pause_input, &deps)
            .await
            .expect("plan pause")
            .is_empty(),
        "paused and drained: nothing left for pause"
    );

    let endpoint = format!("127.0.0.1:{}", cell.pgbouncer.port);
    let dry = plan(input.clone(), &deps).await.expect("plan resume");
    assert_eq!(
        dry.would,
        [
            format!("on PgBouncer {endpoint}: RESUME app"),
            format!("on PgBouncer {endpoint}: RELOAD, restoring the configuration file's values of dns_max_ttl 1, dns_nxdomain_ttl 1"),
        ]
    );
    assert!(app_paused(&console).await, "the dry run resumed nothing");
    assert_eq!(
        dns_max_ttl(&console).await.as_deref(),
        Some("1"),
        "the dry run did not RELOAD"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "the query still waits after the dry run"
    );

    let resumed = run(input.clone(), &deps).await.expect("resume");
    assert_eq!(resumed.instances[0].resumed, ["app"]);
    assert!(resumed.instances[0].were_not_paused.is_empty());
    assert_eq!(resumed.instances[0].server_version_num, None);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter completes after RESUME")
        .expect("join")
        .expect("query");
    assert!(!app_paused(&console).await);
    assert_eq!(
        dns_max_ttl(&console).await.as_deref(),
        Some("15"),
        "RELOAD restored the file's TTL"
    );

    assert!(
        plan(input.clone(), &deps)
            .await
            .expect("plan after resume")
            .is_empty(),
        "resumed: nothing left"
    );
    let rerun = run(input, &deps).await.expect("second resume");
    assert!(rerun.instances[0].resumed.is_empty());
    assert_eq!(rerun.instances[0].were_not_paused, ["app"]);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = ledger.stop().await;
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(!tally.acks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_checks_the_server_version_after_resuming() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let console = admin(&cell).await;
    let expected = cell.blue.version_num;
    // Without a downstream: forward needs no downstream evidence here.
    let mut document = cell.document.clone();
    document.downstream.clear();
    let forward = |expected| Input {
        cell: document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        direction: Way::Forward,
        expected_server_version_num: Some(expected),
    };

    pause(&cell, &deps).await;
    let right = run(forward(expected), &deps)
        .await
        .expect("blue's version is reached");
    assert_eq!(right.instances[0].server_version_num, Some(expected));
    let decision = deps
        .journal(&cell.document)
        .get::<Decision>()
        .await
        .expect("journal")
        .expect("the switched marker");
    assert_eq!(
        (decision.run_id.as_str(), decision.verdict),
        (TEST_RUN, Verdict::Switched),
        "journaled before the first RESUME"
    );

    pause(&cell, &deps).await;
    let error = run(forward(expected + 1), &deps)
        .await
        .expect_err("wrong version");
    assert_eq!(error.error_name(), ErrorName::ProbeMismatch, "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("reaches version {expected}")),
        "{message}"
    );
    assert!(
        !app_paused(&console).await,
        "resumed anyway: the probe runs after RESUME, and nothing rolls back"
    );

    // Switched: the abort direction refuses and resumes nothing back.
    pause(&cell, &deps).await;
    let abort = Input {
        direction: Way::Abort,
        expected_server_version_num: None,
        ..forward(expected)
    };
    let error = run(abort, &deps).await.expect_err("switched");
    assert_eq!(error.error_name(), ErrorName::AlreadySwitched, "{error}");
    assert!(app_paused(&console).await, "nothing resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_refuses_before_the_switch_when_the_downstream_is_not_shown_caught_up() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let console = admin(&cell).await;
    pause(&cell, &deps).await;
    let forward = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        direction: Way::Forward,
        expected_server_version_num: None,
    };
    // This run never dropped (and so never recreated) the downstream's subscription.
    let error = run(forward.clone(), &deps)
        .await
        .expect_err("no evidence the downstream holds everything");
    assert_eq!(error.error_name(), ErrorName::PreconditionFailed, "{error}");
    assert!(error.to_string().contains("search/search_sub"), "{error}");
    assert!(app_paused(&console).await, "nothing resumed");
    assert!(
        deps.journal(&cell.document)
            .get::<Decision>()
            .await
            .expect("journal")
            .is_none(),
        "not switched"
    );

    // The abort path resumes toward blue, and from then on the run never goes forward.
    let abort = Input {
        direction: Way::Abort,
        ..forward.clone()
    };
    run(abort, &deps).await.expect("abort resumes");
    assert!(!app_paused(&console).await);
    let error = pause_pgbouncer::run(
        pause_pgbouncer::Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
    .expect_err("the run is aborting");
    assert_eq!(error.error_name(), ErrorName::AbortInProgress, "{error}");
    assert!(!app_paused(&console).await, "nothing paused again");
}

/// Whether `role` (its password from the cell's secrets) can log in to green directly.
async fn logs_in_to_green(cell: &LocalCell, role: &str) -> Result<(), String> {
    let (user, password) = cell.secrets.role(role).expect("role");
    switchyard_postgres::connect(&cell.green.options("app", user, password))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Green's application logins open at the switch — after the decision, before the first
/// RESUME — and a retry finishes a run that crashed after journaling the decision (logins
/// still closed) or after opening them (PgBouncer still paused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_opens_greens_logins_at_the_switch_and_a_retry_finishes_a_crashed_run() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let console = admin(&cell).await;
    sync_roles::run(
        sync_roles::Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
    .expect("sync-roles");
    let refused = logs_in_to_green(&cell, "app_writer")
        .await
        .expect_err("fenced before the switch");
    assert!(refused.contains("not permitted to log in"), "{refused}");

    // Without a downstream: forward needs no downstream evidence here.
    let mut document = cell.document.clone();
    document.downstream.clear();
    let forward = Input {
        cell: document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        direction: Way::Forward,
        expected_server_version_num: None,
    };
    pause(&cell, &deps).await;
    let dry = plan(forward.clone(), &deps).await.expect("plan");
    assert!(
        dry.would.contains(
            &"on green: ALTER ROLE … LOGIN for app_owner, app_reader, app_writer, jobs_writer (closed until the switch)"
                .to_owned()
        ),
        "{:#?}",
        dry.would
    );
    assert!(
        logs_in_to_green(&cell, "app_writer").await.is_err(),
        "the dry run opened nothing"
    );

    // Crashed after journaling the decision: the logins are still closed, PgBouncer paused.
    fence::mark_switched(&deps, &document, TEST_RUN)
        .await
        .expect("switched");
    assert!(logs_in_to_green(&cell, "app_writer").await.is_err());
    let retried = run(forward.clone(), &deps).await.expect("the retry");
    assert_eq!(
        retried.logins_opened,
        ["app_owner", "app_reader", "app_writer", "jobs_writer"]
    );
    assert_eq!(retried.instances[0].resumed, ["app"]);
    assert!(!app_paused(&console).await);
    for role in ["app_writer", "app_owner"] {
        logs_in_to_green(&cell, role)
            .await
            .unwrap_or_else(|e| panic!("{role} logs in to green after the switch: {e}"));
    }

    // Crashed after opening them, before RESUME: nothing left to open, the RESUME happens.
    pause(&cell, &deps).await;
    let again = run(forward, &deps).await.expect("the second retry");
    assert!(again.logins_opened.is_empty(), "{:?}", again.logins_opened);
    assert_eq!(again.instances[0].resumed, ["app"]);
    assert!(!app_paused(&console).await);
}
