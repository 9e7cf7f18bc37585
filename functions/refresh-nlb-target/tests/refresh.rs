//! refresh-nlb-target against the local cell's moto target group and NLB forwarder.

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use refresh_nlb_target::{plan, run, Input, Output};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};

async fn start() -> LocalCell {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell
}

fn input(cell: &LocalCell) -> Input {
    Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        direction: switchyard_operation::fence::Way::Forward,
        wait_seconds: 10,
    }
}

/// Every target the group lists that is not leaving it, as `ip:port`, sorted.
async fn live_targets(cell: &LocalCell) -> Vec<String> {
    let out = cell
        .moto
        .clients
        .elbv2
        .describe_target_health()
        .target_group_arn(&cell.target_group_arn)
        .send()
        .await
        .expect("describe target health");
    let mut targets: Vec<String> = out
        .target_health_descriptions()
        .iter()
        .filter(|d| {
            d.target_health()
                .and_then(|h| h.state())
                .map(|s| s.as_str())
                != Some("draining")
        })
        .map(|d| {
            let t = d.target().expect("target");
            format!("{}:{}", t.id().expect("id"), t.port().expect("port"))
        })
        .collect();
    targets.sort();
    targets
}

fn unchanged(output: &Output, arn: &str, target: &str) {
    assert_eq!(output.target_groups.len(), 1);
    let group = &output.target_groups[0];
    assert_eq!(group.arn, arn);
    assert_eq!(group.target, target);
    assert!(!group.registered, "nothing registered: {output:?}");
    assert!(
        group.deregistered.is_empty(),
        "nothing deregistered: {output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_blue_stays_and_strays_are_deregistered() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let blue = format!("{}:{}", cell.blue.ip, cell.blue.port);
    assert_eq!(
        cell.document.downstream[0].nlb_target_group,
        "local-a-search"
    );

    // Nothing renamed: the group already holds exactly blue (found by its bare name).
    let dry = plan(input(&cell), &deps).await.expect("plan by name");
    assert!(dry.dry_run && dry.is_empty(), "{dry:?}");
    let output = run(input(&cell), &deps).await.expect("run by name");
    unchanged(&output, &cell.target_group_arn, &blue);
    assert_eq!(live_targets(&cell).await, [blue.as_str()]);

    // A stray target goes; the document may name the group by ARN as well.
    cell.moto
        .clients
        .elbv2
        .register_targets()
        .target_group_arn(&cell.target_group_arn)
        .targets(
            TargetDescription::builder()
                .id("127.0.0.99")
                .port(5432)
                .build(),
        )
        .send()
        .await
        .expect("register stray");
    let mut by_arn = input(&cell);
    by_arn.cell.downstream[0].nlb_target_group = cell.target_group_arn.clone();
    let output = run(by_arn.clone(), &deps).await.expect("run by arn");
    let group = &output.target_groups[0];
    assert!(!group.registered);
    assert_eq!(group.deregistered, ["127.0.0.99:5432"]);
    assert_eq!(live_targets(&cell).await, [blue.as_str()]);
    unchanged(
        &run(by_arn, &deps).await.expect("again"),
        &cell.target_group_arn,
        &blue,
    );

    let mut missing = input(&cell);
    missing.cell.downstream[0].nlb_target_group = "no-such-group".to_owned();
    let err = run(missing, &deps).await.expect_err("unknown group");
    assert_eq!(err.error_name(), ErrorName::InvalidInput, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_rename_the_nlb_reaches_green() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let id = cell.document.blue.cluster_identifier.clone();
    let rds = &cell.moto.clients.rds;
    // The cell's name will not catch up with the renames (its DNS still leads to blue):
    // the target must come from the RDS API's writer instance, not from the name.
    cell.names().hold(&id);
    for (from, to) in [
        (id.clone(), format!("{id}-blue-{}", cell.blue.major)),
        (cell.document.green.cluster_identifier.clone(), id.clone()),
    ] {
        rds.modify_db_cluster()
            .db_cluster_identifier(&from)
            .new_db_cluster_identifier(&to)
            .apply_immediately(true)
            .send()
            .await
            .expect("rename");
    }

    let green = format!("{}:{}", cell.green.ip, cell.green.port);
    let blue = format!("{}:{}", cell.blue.ip, cell.blue.port);
    let arn = &cell.target_group_arn;
    let dry = plan(input(&cell), &deps).await.expect("plan");
    assert_eq!(
        dry.would,
        [
            format!("register {green} in target group {arn}"),
            format!("deregister {blue} from target group {arn}"),
            format!("then wait up to 10 s for {green} to turn healthy in {arn}"),
        ]
    );
    assert_eq!(
        live_targets(&cell).await,
        [blue.as_str()],
        "the plan changed nothing"
    );

    let output = run(input(&cell), &deps).await.expect("run");
    let group = &output.target_groups[0];
    assert_eq!(group.arn, cell.target_group_arn);
    assert_eq!(group.target, green);
    assert!(group.registered);
    assert_eq!(group.deregistered, [blue]);
    assert_eq!(live_targets(&cell).await, [green.as_str()]);

    let nlb = cell.nlb_endpoint();
    let mut options = cell.blue.superuser_options("app");
    options.host = nlb.ip().to_string();
    options.port = nlb.port();
    let client = switchyard_postgres::connect(&options)
        .await
        .expect("connect through the nlb");
    let version: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(
        version.parse::<i32>().expect("number"),
        cell.green.version_num
    );

    assert!(
        plan(input(&cell), &deps)
            .await
            .expect("plan after")
            .is_empty(),
        "nothing left to do"
    );
    unchanged(
        &run(input(&cell), &deps).await.expect("second run"),
        &cell.target_group_arn,
        &green,
    );
    assert_eq!(live_targets(&cell).await, [green]);
}
