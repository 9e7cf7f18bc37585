//! The run lock against moto's SSM: one run per cell, crash-proof, released deliberately.

use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::LocalCell;

async fn cell() -> LocalCell {
    LocalCell::start_quiet(50).await.expect("cell")
}

fn acquire(cell: &LocalCell, run_id: &str) -> acquire_lock::Input {
    acquire_lock::Input {
        cell: cell.document.clone(),
        run_id: run_id.to_owned(),
    }
}

fn release(cell: &LocalCell, run_id: &str, force: bool) -> release_lock::Input {
    release_lock::Input {
        cell: cell.document.clone(),
        run_id: run_id.to_owned(),
        force,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_holds_the_cell_until_it_releases_it() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");

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

    let err = release_lock::run(release(&cell, "run-2", false), &deps)
        .await
        .expect_err("not run-2's lock");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed);
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
