//! The run lock against moto's SSM: one run per cell, crash-proof, released deliberately.

use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::LocalCell;

async fn cell() -> LocalCell {
    LocalCell::start_quiet(50).await.expect("cell")
}

fn acquire(cell: &LocalCell, run_id: &str) -> acquire_lock::Input {
    acquire_lock::Input {
        cell: cell.document.clone(),
        execution: None,
        run_id: run_id.to_owned(),
        after_switch: false,
    }
}

fn release(cell: &LocalCell, run_id: &str, force: bool) -> release_lock::Input {
    release_lock::Input {
        cell: cell.document.clone(),
        if_ours: false,
        run_id: run_id.to_owned(),
        force,
    }
}

/// The lock parameter's value in moto's SSM, `None` when absent.
async fn stored_lock(cell: &LocalCell) -> Option<String> {
    let out = cell
        .moto
        .clients
        .ssm
        .get_parameter()
        .name("/switchyard/local-a/journal/lock")
        .send()
        .await;
    match out {
        Ok(out) => out.parameter().and_then(|p| p.value()).map(str::to_owned),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            None
        }
        Err(e) => panic!("get_parameter: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_holds_the_cell_until_it_releases_it() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");

    // Dry runs on a free cell: acquire would create the parameter, release has nothing.
    let plan = acquire_lock::plan(acquire(&cell, "run-1"), &deps)
        .await
        .expect("plan acquire");
    assert!(plan.dry_run);
    assert_eq!(plan.would.len(), 1, "{plan:?}");
    assert!(
        plan.would[0].contains("/switchyard/local-a/journal/lock")
            && plan.would[0].contains("run-1"),
        "{plan:?}"
    );
    assert!(release_lock::plan(release(&cell, "run-1", false), &deps)
        .await
        .expect("plan release")
        .is_empty());
    assert_eq!(stored_lock(&cell).await, None, "the dry run took no lock");
    let err = acquire_lock::plan(acquire(&cell, " "), &deps)
        .await
        .expect_err("no run id");
    assert_eq!(err.error_name(), ErrorName::InvalidInput);

    let first = acquire_lock::run(acquire(&cell, "run-1"), &deps)
        .await
        .expect("free lock");
    assert!(first.acquired);
    assert_eq!(first.parameter, "/switchyard/local-a/journal/lock");
    let again = acquire_lock::run(acquire(&cell, "run-1"), &deps)
        .await
        .expect("a retry of the same run");
    assert!(!again.acquired);
    assert_eq!(again.lock, first.lock, "the retry changed nothing");
    let held = stored_lock(&cell).await;
    assert!(held.as_deref().is_some_and(|v| v.contains("run-1")));
    assert!(
        acquire_lock::plan(acquire(&cell, "run-1"), &deps)
            .await
            .expect("plan a retry")
            .is_empty(),
        "this run holds it: nothing to do"
    );
    let err = acquire_lock::plan(acquire(&cell, "run-2"), &deps)
        .await
        .expect_err("a dry run of another run fails as the real one");
    assert_eq!(err.error_name(), ErrorName::LockHeld);
    assert!(err.to_string().contains("run-1"), "{err}");

    let err = acquire_lock::run(acquire(&cell, "run-2"), &deps)
        .await
        .expect_err("held by run-1");
    assert_eq!(err.error_name(), ErrorName::LockHeld);
    assert!(err.to_string().contains("run-1"), "{err}");

    // The lock is durable and visible: an SSM parameter an operator can read.
    let stored = cell
        .moto
        .clients
        .ssm
        .get_parameter()
        .name(&first.parameter)
        .send()
        .await
        .expect("visible in SSM");
    assert!(stored
        .parameter()
        .and_then(|p| p.value())
        .is_some_and(|v| v.contains("run-1")));

    let err = release_lock::plan(release(&cell, "run-2", false), &deps)
        .await
        .expect_err("a dry run of another run's release fails as the real one");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed);
    let err = release_lock::run(release(&cell, "run-2", false), &deps)
        .await
        .expect_err("not run-2's lock");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed);
    let plan = release_lock::plan(release(&cell, "run-1", false), &deps)
        .await
        .expect("plan release");
    assert_eq!(plan.would.len(), 1, "{plan:?}");
    assert!(
        plan.would[0].contains("delete SSM parameter /switchyard/local-a/journal/lock")
            && plan.would[0].contains("run-1")
            && plan.would[0].contains(&first.lock.acquired_at),
        "{plan:?}"
    );
    assert_eq!(
        stored_lock(&cell).await,
        held,
        "the dry run released nothing"
    );
    assert!(
        acquire_lock::run(acquire(&cell, "run-2"), &deps)
            .await
            .is_err(),
        "still held after a refused release"
    );

    let released = release_lock::run(release(&cell, "run-1", false), &deps)
        .await
        .expect("own lock");
    assert_eq!(released.released, Some(first.lock));
    let twice = release_lock::run(release(&cell, "run-1", false), &deps)
        .await
        .expect("already released");
    assert_eq!(twice.released, None);
    assert!(release_lock::plan(release(&cell, "run-1", false), &deps)
        .await
        .expect("plan after release")
        .is_empty());

    assert!(
        acquire_lock::run(acquire(&cell, "run-2"), &deps)
            .await
            .expect("free again")
            .acquired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_release_a_dead_runs_lock_deliberately() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    acquire_lock::run(acquire(&cell, "crashed-run"), &deps)
        .await
        .expect("lock");
    let plan = release_lock::plan(release(&cell, "operator", true), &deps)
        .await
        .expect("plan a forced release");
    assert_eq!(plan.would.len(), 1, "{plan:?}");
    assert!(
        plan.would[0].contains("crashed-run") && plan.would[0].contains("forced"),
        "{plan:?}"
    );
    assert!(
        stored_lock(&cell).await.is_some(),
        "still held after the dry run"
    );
    let forced = release_lock::run(release(&cell, "operator", true), &deps)
        .await
        .expect("forced");
    assert_eq!(
        forced.released.map(|l| l.run_id).as_deref(),
        Some("crashed-run")
    );
    assert!(
        acquire_lock::run(acquire(&cell, "next-run"), &deps)
            .await
            .expect("free")
            .acquired
    );
}

/// A run after the switch (closing the rollback window) takes the lock only on a switched
/// cell, and keeps the switched decision; every other run is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_after_switch_run_takes_a_switched_cell_and_keeps_its_decision() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let after = |run_id: &str| acquire_lock::Input {
        after_switch: true,
        ..acquire(&cell, run_id)
    };
    let err = acquire_lock::run(after("finalize-1"), &deps)
        .await
        .expect_err("nothing switched yet");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert_eq!(stored_lock(&cell).await, None, "no lock taken");
    let err = acquire_lock::plan(after("finalize-1"), &deps)
        .await
        .expect_err("the dry run refuses the same way");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");

    // A switchover run switches the cell and gives the lock back.
    acquire_lock::run(acquire(&cell, "switch-1"), &deps)
        .await
        .expect("lock");
    switchyard_operation::fence::mark_switched(&deps, &cell.document, "switch-1")
        .await
        .expect("switched");
    release_lock::run(release(&cell, "switch-1", false), &deps)
        .await
        .expect("release");

    let err = acquire_lock::run(acquire(&cell, "switch-2"), &deps)
        .await
        .expect_err("a second switchover");
    assert_eq!(err.error_name(), ErrorName::AlreadySwitched, "{err}");
    assert_eq!(stored_lock(&cell).await, None);
    assert!(acquire_lock::plan(after("finalize-1"), &deps)
        .await
        .expect("plan")
        .would
        .iter()
        .all(|w| !w.contains("decision")));
    let taken = acquire_lock::run(after("finalize-1"), &deps)
        .await
        .expect("an after-switch run takes the switched cell");
    assert!(taken.acquired);
    assert_eq!(taken.cleared, None, "the switched decision is kept");
    let decision = deps
        .journal(&cell.document)
        .get::<switchyard_operation::fence::Decision>()
        .await
        .expect("journal")
        .expect("a decision");
    assert!(decision.switched(&cell.document), "{decision:?}");
    cell.shutdown();
}
