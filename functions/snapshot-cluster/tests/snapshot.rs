//! snapshot-cluster against the local cell's moto.

use snapshot_cluster::{run, Input, RUN_TAG};
use switchyard_local_cell::LocalCell;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_blue_once_per_run_and_reuses_it() {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    let deps = cell.deps().expect("deps");
    let input = Input {
        cell: cell.document.clone(),
        run_id: "prepare-test-1".to_owned(),
    };

    let first = run(input.clone(), &deps).await.expect("first run");
    assert!(first.created);
    assert_eq!(
        first.snapshot_identifier,
        "local-a-pre-upgrade-prepare-test-1"
    );
    let second = run(input.clone(), &deps).await.expect("second run");
    assert!(!second.created, "a retry reuses the run's snapshot");
    assert_eq!(second.snapshot_identifier, first.snapshot_identifier);

    let rds = &cell.moto.clients.rds;
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
        ..input
    };
    assert!(
        run(other, &deps).await.expect("another run").created,
        "another run gets its own"
    );
}
