//! rename-clusters against the local cell: moto holds the clusters, and the emulated
//! endpoint of the cell's identifier sends new connections to whichever server holds it.

use rename_clusters::{plan, run, Input, Mode, Output, Step};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_operation::rename::RenamePlan;
use switchyard_operation::Deps;

async fn cell() -> LocalCell {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell
}

fn input(cell: &LocalCell, mode: Mode) -> Input {
    Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        mode,
        wait_seconds: 60,
    }
}

fn parked(cell: &LocalCell) -> String {
    cell.document.blue_renamed_identifier(cell.blue.major)
}

/// `server_version_num` of the server a NEW connection through the cell's endpoint reaches.
async fn version_behind_cell_endpoint(cell: &LocalCell) -> i32 {
    let addr = cell
        .endpoint(&cell.document.blue.cluster_identifier)
        .expect("endpoint");
    let mut opts = cell.blue.superuser_options("app");
    opts.host = addr.ip().to_string();
    opts.port = addr.port();
    let client = switchyard_postgres::connect(&opts)
        .await
        .expect("connect through the cell endpoint");
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .expect("version");
    row.get(0)
}

/// The rename plan in the run journal, if any.
async fn journaled(
    deps: &switchyard_operation::Deps,
    cell: &switchyard_cell::CellDocument,
) -> Option<RenamePlan> {
    deps.journal(cell)
        .get::<RenamePlan>()
        .await
        .expect("journal")
}

/// Identifiers in moto, sorted.
async fn identifiers(cell: &LocalCell) -> Vec<String> {
    cell.cluster_identifiers().await.expect("describe")
}

async fn rename_by_hand(cell: &LocalCell, from: &str, to: &str) {
    cell.moto
        .clients
        .rds
        .modify_db_cluster()
        .db_cluster_identifier(from)
        .new_db_cluster_identifier(to)
        .apply_immediately(true)
        .send()
        .await
        .expect("rename by hand");
}

async fn resource_id(deps: &Deps, identifier: &str) -> String {
    deps.endpoints
        .resolve(&deps.aws.rds, identifier)
        .await
        .expect("resolve")
        .resource_id
}

fn assert_forward_done(cell: &LocalCell, out: &Output, green_resource: &str) {
    assert_eq!(out.blue_identifier_now, parked(cell));
    assert_eq!(
        out.green_identifier_now,
        cell.document.blue.cluster_identifier
    );
    assert_eq!(out.cell_identifier_resource_id, green_resource);
}

fn assert_back_done(cell: &LocalCell, out: &Output, blue_resource: &str) {
    assert_eq!(
        out.blue_identifier_now,
        cell.document.blue.cluster_identifier
    );
    assert_eq!(
        out.green_identifier_now,
        cell.document.green.cluster_identifier
    );
    assert_eq!(out.cell_identifier_resource_id, blue_resource);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_moves_the_endpoint_to_green_and_back_restores_blue() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let doc = &cell.document;
    let original = identifiers(&cell).await;
    let blue_resource = resource_id(&deps, &doc.blue.cluster_identifier).await;
    let green_resource = resource_id(&deps, &doc.green.cluster_identifier).await;
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.blue.version_num
    );
    let (id, green_id) = (&doc.blue.cluster_identifier, &doc.green.cluster_identifier);
    let parameter = deps.journal(doc).parameter_of::<RenamePlan>();

    let dry = plan(input(&cell, Mode::Forward), &deps)
        .await
        .expect("plan forward");
    assert_eq!(dry.would.len(), 4, "{dry:?}");
    assert!(
        dry.would[0].starts_with(&format!("journal the rename plan under {parameter}"))
            && dry.would[0].contains(&blue_resource)
            && dry.would[0].contains(&green_resource),
        "{dry:?}"
    );
    assert!(
        dry.would[1].starts_with(&format!("rename cluster {id} → {}", parked(&cell))),
        "{dry:?}"
    );
    assert!(
        dry.would[2].starts_with(&format!("rename cluster {green_id} → {id}")),
        "{dry:?}"
    );
    assert!(dry.would[3].starts_with("then wait up to 60 s"), "{dry:?}");
    assert_eq!(
        identifiers(&cell).await,
        original,
        "the plan renamed nothing"
    );
    assert!(
        journaled(&deps, doc).await.is_none(),
        "the plan journaled nothing"
    );

    let out = run(input(&cell, Mode::Forward), &deps)
        .await
        .expect("forward");
    assert_eq!(out.steps_done, [Step::ParkBlue, Step::PromoteGreen]);
    assert_forward_done(&cell, &out, &green_resource);
    let mut expected = vec![doc.blue.cluster_identifier.clone(), parked(&cell)];
    expected.sort();
    assert_eq!(identifiers(&cell).await, expected);
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.green.version_num,
        "new connections through the cell's endpoint reach green"
    );
    let journaled: RenamePlan = deps
        .journal(doc)
        .get::<RenamePlan>()
        .await
        .expect("journal")
        .expect("plan journaled");
    assert_eq!(journaled.blue_resource_id, blue_resource);
    assert_eq!(journaled.green_resource_id, green_resource);

    let dry = plan(input(&cell, Mode::Forward), &deps)
        .await
        .expect("plan forward again");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");
    let dry = plan(input(&cell, Mode::Back), &deps)
        .await
        .expect("plan back");
    assert_eq!(dry.would.len(), 4, "{dry:?}");
    assert!(
        dry.would[0].starts_with(&format!("rename cluster {id} → {green_id}")),
        "{dry:?}"
    );
    assert!(
        dry.would[1].starts_with(&format!("rename cluster {} → {id}", parked(&cell))),
        "{dry:?}"
    );
    assert_eq!(
        dry.would[3],
        format!("delete the rename plan journaled under {parameter}")
    );
    assert_eq!(
        identifiers(&cell).await,
        expected,
        "the plan renamed nothing"
    );

    let again = run(input(&cell, Mode::Forward), &deps)
        .await
        .expect("forward again");
    assert!(again.steps_done.is_empty(), "{again:?}");
    assert_forward_done(&cell, &again, &green_resource);
    assert_eq!(identifiers(&cell).await, expected);

    let back = run(input(&cell, Mode::Back), &deps).await.expect("back");
    assert_eq!(back.steps_done, [Step::DemoteGreen, Step::RestoreBlue]);
    assert_back_done(&cell, &back, &blue_resource);
    assert_eq!(identifiers(&cell).await, original);
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.blue.version_num
    );

    let dry = plan(input(&cell, Mode::Back), &deps)
        .await
        .expect("plan back again");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");
    let back_again = run(input(&cell, Mode::Back), &deps)
        .await
        .expect("back again");
    assert!(back_again.steps_done.is_empty(), "{back_again:?}");
    assert_back_done(&cell, &back_again, &blue_resource);
    assert_eq!(identifiers(&cell).await, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_and_back_resume_after_a_crash_between_renames() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let doc = &cell.document;
    let original = identifiers(&cell).await;
    let blue_resource = resource_id(&deps, &doc.blue.cluster_identifier).await;
    let green_resource = resource_id(&deps, &doc.green.cluster_identifier).await;

    // Crashed after parking blue, before journaling anything: back infers the plan.
    rename_by_hand(&cell, &doc.blue.cluster_identifier, &parked(&cell)).await;
    let back = run(input(&cell, Mode::Back), &deps).await.expect("back");
    assert_eq!(back.steps_done, [Step::RestoreBlue]);
    assert_back_done(&cell, &back, &blue_resource);
    assert_eq!(identifiers(&cell).await, original);

    // The same crash, then forward: it finishes the job. (A new run: the one above went
    // back, and a run that has taken the abort path never goes forward again.)
    rename_by_hand(&cell, &doc.blue.cluster_identifier, &parked(&cell)).await;
    cell.lock("local-test-run-2").await.expect("lock");
    let second_run = |mode| Input {
        run_id: "local-test-run-2".to_owned(),
        ..input(&cell, mode)
    };
    let forward = run(second_run(Mode::Forward), &deps)
        .await
        .expect("forward");
    assert_eq!(forward.steps_done, [Step::PromoteGreen]);
    assert_forward_done(&cell, &forward, &green_resource);
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.green.version_num
    );

    // Back crashed after demoting green: the journaled plan (by resource id) finishes it.
    rename_by_hand(
        &cell,
        &doc.blue.cluster_identifier,
        &doc.green.cluster_identifier,
    )
    .await;
    let back = run(second_run(Mode::Back), &deps)
        .await
        .expect("back from journal");
    assert_eq!(back.steps_done, [Step::RestoreBlue]);
    assert_back_done(&cell, &back, &blue_resource);
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.blue.version_num
    );
    assert!(
        journaled(&deps, doc).await.is_none(),
        "back leaves no plan to steer a later run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enabled_subscription_on_green_stops_forward_before_any_rename() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let name = cell.replicate_directly().await.expect("replicate");
    let original = identifiers(&cell).await;

    let err = plan(input(&cell, Mode::Forward), &deps)
        .await
        .expect_err("the plan stops the same way");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");

    let err = run(input(&cell, Mode::Forward), &deps)
        .await
        .expect_err("an enabled subscription must stop the rename");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(err.to_string().contains(name), "{err}");
    assert_eq!(identifiers(&cell).await, original, "nothing renamed");
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.blue.version_num
    );
    assert!(journaled(&deps, &cell.document).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stops_at_the_pause_deadline_and_back_refuses_a_switched_cell() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let doc = &cell.document;
    let original = identifiers(&cell).await;
    let blue_resource = resource_id(&deps, &doc.blue.cluster_identifier).await;
    let names = cell.names();

    // The cell's name does not lead to green yet (a rename DNS has not caught up with):
    // the wait must end at the pause deadline, not at wait_seconds.
    names.hold(&doc.blue.cluster_identifier);
    let deadline = switchyard_operation::PauseDeadline::at(
        time::OffsetDateTime::now_utc() + time::Duration::seconds(3),
    );
    let started = std::time::Instant::now();
    let error = run(
        Input {
            pause_deadline: Some(deadline),
            ..input(&cell, Mode::Forward)
        },
        &deps,
    )
    .await
    .expect_err("the name never led to green in time");
    assert_eq!(
        error.error_name(),
        ErrorName::PauseBudgetExceeded,
        "{error}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "stopped at the 3 s deadline, not after wait_seconds (60 s): {:?}",
        started.elapsed()
    );
    assert!(deadline.passed());

    // The abort path renames back (the name catches up meanwhile).
    names.release(&doc.blue.cluster_identifier);
    let back = run(input(&cell, Mode::Back), &deps).await.expect("back");
    assert_back_done(&cell, &back, &blue_resource);
    assert_eq!(identifiers(&cell).await, original);

    // Another run switches: from then on the way back is refused and changes nothing.
    cell.lock("local-test-run-2").await.expect("lock");
    let second_run = |mode| Input {
        run_id: "local-test-run-2".to_owned(),
        ..input(&cell, mode)
    };
    run(second_run(Mode::Forward), &deps)
        .await
        .expect("forward");
    switchyard_operation::fence::mark_switched(&deps, doc, "local-test-run-2")
        .await
        .expect("switched");
    let switched = identifiers(&cell).await;
    for mode_run in [second_run(Mode::Back), input(&cell, Mode::Back)] {
        cell.lock(&mode_run.run_id.clone()).await.expect("lock");
        let error = run(mode_run, &deps).await.expect_err("switched");
        assert_eq!(error.error_name(), ErrorName::AlreadySwitched, "{error}");
    }
    assert_eq!(identifiers(&cell).await, switched, "nothing renamed back");
    cell.lock("local-test-run-2").await.expect("lock");
    let error = plan(second_run(Mode::Back), &deps)
        .await
        .expect_err("the dry run refuses alike");
    assert_eq!(error.error_name(), ErrorName::AlreadySwitched, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_keeps_waiting_while_the_name_still_leads_to_blue() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let doc = cell.document.clone();
    let green_resource = resource_id(&deps, &doc.green.cluster_identifier).await;
    let timings = cell.names().timings();
    // The cell's name stays cached on blue for longer than the API's renames take and
    // longer than AWS promises: the API will say "green" long before the name does.
    cell.names().hold(&doc.blue.cluster_identifier);
    let task = tokio::spawn({
        let input = input(&cell, Mode::Forward);
        let deps = deps.clone();
        async move { run(input, &deps).await }
    });
    let parked = parked(&cell);
    let api_done = std::time::Instant::now();
    loop {
        let ids = identifiers(&cell).await;
        if ids.contains(&parked) && ids.contains(&doc.blue.cluster_identifier) {
            break;
        }
        assert!(
            api_done.elapsed() < std::time::Duration::from_secs(60),
            "the API never finished renaming: {ids:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        resource_id(&deps, &doc.blue.cluster_identifier).await,
        green_resource,
        "the API says green holds the cell's name"
    );
    // Well past the emulated DNS delays, the name still leads to blue: still waiting.
    tokio::time::sleep(
        timings.rename_propagation.max(timings.dns_linger) * 2 + std::time::Duration::from_secs(1),
    )
    .await;
    assert!(
        !task.is_finished(),
        "rename-clusters must not read the API's word as the name's: {:?}",
        task.is_finished()
    );
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.blue.version_num,
        "the name still leads to blue"
    );

    cell.names().release(&doc.blue.cluster_identifier);
    let out = task
        .await
        .expect("task")
        .expect("forward completes once the name follows");
    assert_forward_done(&cell, &out, &green_resource);
    assert_eq!(
        version_behind_cell_endpoint(&cell).await,
        cell.green.version_num,
        "when rename-clusters returns, a new connection by name reaches green"
    );
}
