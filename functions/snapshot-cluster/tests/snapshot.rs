//! snapshot-cluster against the local cell's moto.

use snapshot_cluster::{plan, run, Input, RUN_TAG};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::LocalCell;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_blue_once_per_run_and_reuses_it() {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock("prepare-test-1").await.expect("lock");
    let deps = cell.deps().expect("deps");
    let input = Input {
        cell: cell.document.clone(),
        force: false,
        run_id: "prepare-test-1".to_owned(),
    };
    let rds = &cell.moto.clients.rds;

    // A dry run names the snapshot and creates nothing.
    let before = all_snapshots(&cell).await;
    assert!(before.is_empty(), "{before:?}");
    let dry = plan(input.clone(), &deps).await.expect("plan");
    assert!(dry.dry_run);
    assert_eq!(
        dry.would,
        ["create cluster snapshot local-a-pre-upgrade-prepare-test-1 of cluster local-a, tagged switchyard:run=prepare-test-1 and switchyard:cell=local-a; then the state machine polls until it is available"]
    );
    assert_eq!(
        all_snapshots(&cell).await,
        before,
        "a dry run creates nothing"
    );

    let first = run(input.clone(), &deps).await.expect("first run");
    assert!(first.created);
    assert_eq!(
        first.snapshot_identifier,
        "local-a-pre-upgrade-prepare-test-1"
    );
    let second = run(input.clone(), &deps).await.expect("second run");
    assert!(!second.created, "a retry reuses the run's snapshot");
    assert_eq!(second.snapshot_identifier, first.snapshot_identifier);
    assert!(
        plan(input.clone(), &deps).await.expect("plan").is_empty(),
        "nothing left to do once the run's snapshot exists"
    );

    let snapshots = rds
        .describe_db_cluster_snapshots()
        .db_cluster_identifier(&cell.document.blue.cluster_identifier)
        .snapshot_type("manual")
        .send()
        .await
        .expect("describe");
    assert_eq!(
        snapshots.db_cluster_snapshots().len(),
        1,
        "exactly one manual snapshot of blue"
    );
    let arn = snapshots.db_cluster_snapshots()[0]
        .db_cluster_snapshot_arn()
        .expect("arn");
    let tags = rds
        .list_tags_for_resource()
        .resource_name(arn)
        .send()
        .await
        .expect("tags");
    assert!(tags
        .tag_list()
        .iter()
        .any(|t| t.key() == Some(RUN_TAG) && t.value() == Some("prepare-test-1")));

    let other = Input {
        run_id: "prepare-test-2".to_owned(),
        ..input.clone()
    };
    cell.lock("prepare-test-2").await.expect("lock");
    assert!(
        run(other, &deps).await.expect("another run").created,
        "another run gets its own"
    );

    // The name taken by another cluster's snapshot: the dry run stops as the run does.
    rds.create_db_cluster_snapshot()
        .db_cluster_snapshot_identifier("local-a-pre-upgrade-taken")
        .db_cluster_identifier(&cell.document.green.cluster_identifier)
        .send()
        .await
        .expect("green's snapshot under blue's name");
    let taken = Input {
        run_id: "taken".to_owned(),
        ..input
    };
    cell.lock("taken").await.expect("lock");
    let before = all_snapshots(&cell).await;
    let err = plan(taken.clone(), &deps).await.expect_err("name taken");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    let err = run(taken, &deps).await.expect_err("name taken");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert_eq!(all_snapshots(&cell).await, before);
}

/// Every manual snapshot moto holds, as (identifier, cluster, status).
async fn all_snapshots(cell: &LocalCell) -> Vec<(String, String, String)> {
    let out = cell
        .moto
        .clients
        .rds
        .describe_db_cluster_snapshots()
        .snapshot_type("manual")
        .send()
        .await
        .expect("describe");
    let mut all: Vec<_> = out
        .db_cluster_snapshots()
        .iter()
        .map(|s| {
            (
                s.db_cluster_snapshot_identifier()
                    .unwrap_or_default()
                    .to_owned(),
                s.db_cluster_identifier().unwrap_or_default().to_owned(),
                s.status().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}
