//! scale-services against the local cell: moto's ECS services, and the emulated direct
//! writers — tasks that follow the desired count, drain by finishing the job in hand, and
//! show in moto as not stopped until their worker has exited.

use std::time::{Duration, Instant};

use scale_services::{plan, run, Direction, Input, Output, Recorded};
use switchyard_cell::{CellDocument, DirectWriter};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{CellOptions, Install, LocalCell, TEST_RUN};
use switchyard_operation::Deps;

const ROWS: u32 = 300;

/// A cell whose direct writers run (two tasks of `ledger-jobs`).
async fn busy_cell() -> LocalCell {
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = ROWS;
    let cell = LocalCell::start(&options).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell
}

fn input(cell: &CellDocument, direction: Direction) -> Input {
    Input {
        cell: cell.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        direction,
    }
}

fn writer(ecs_cluster: &str, service: &str) -> DirectWriter {
    DirectWriter {
        ecs_cluster: ecs_cluster.to_owned(),
        service: service.to_owned(),
    }
}

async fn desired_count(cell: &LocalCell, writer: &DirectWriter) -> i32 {
    let out = cell
        .moto
        .clients
        .ecs
        .describe_services()
        .cluster(&writer.ecs_cluster)
        .services(&writer.service)
        .send()
        .await
        .expect("describe services");
    out.services()
        .first()
        .map(|s| s.desired_count())
        .expect("service exists")
}

async fn recorded(deps: &Deps, cell: &CellDocument) -> Option<Recorded> {
    deps.journal(cell).get::<Recorded>().await.expect("journal")
}

fn recorded_counts(recorded: &Recorded) -> Vec<(String, i32)> {
    recorded
        .services
        .iter()
        .map(|s| (format!("{}/{}", s.ecs_cluster, s.service), s.desired_count))
        .collect()
}

fn outcomes(output: &Output) -> Vec<(String, i32, i32, bool)> {
    output
        .services
        .iter()
        .map(|s| {
            (
                format!("{}/{}", s.ecs_cluster, s.service),
                s.recorded_count,
                s.desired_count,
                s.updated,
            )
        })
        .collect()
}

async fn wait_for(what: &str, budget: Duration, cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < budget, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a second ECS service in `cluster` with `desired` tasks (none run for it).
async fn create_service(cell: &LocalCell, cluster: &str, service: &str, desired: i32) {
    let ecs = &cell.moto.clients.ecs;
    ecs.register_task_definition()
        .family(service)
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name(service)
                .image(format!("local/{service}"))
                .memory(128)
                .build(),
        )
        .send()
        .await
        .expect("register task definition");
    ecs.create_service()
        .cluster(cluster)
        .service_name(service)
        .task_definition(service)
        .desired_count(desired)
        .send()
        .await
        .expect("create service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_drains_the_writers_and_up_restores_the_recorded_counts() {
    let cell = busy_cell().await;
    let deps = cell.deps().expect("deps");
    let doc = &cell.document;
    let jobs = doc.direct_writers[0].clone();
    let name = format!("{}/{}", jobs.ecs_cluster, jobs.service);
    let writers = &cell.direct_writers()[0];
    wait_for("jobs to be written", Duration::from_secs(30), || {
        writers.acknowledged() >= 10
    })
    .await;
    assert_eq!(writers.running(), 2);

    // Dry runs before anything changed: up has no record, down names every change.
    assert!(plan(input(doc, Direction::Up), &deps)
        .await
        .expect("plan up")
        .is_empty());
    let dry = plan(input(doc, Direction::Down), &deps)
        .await
        .expect("plan down");
    let parameter = deps.journal(doc).parameter_of::<Recorded>();
    assert_eq!(dry.would.len(), 3, "{dry:?}");
    assert_eq!(
        dry.would[0],
        format!("record the desired counts in SSM parameter {parameter}: {name} 2")
    );
    assert_eq!(
        dry.would[1],
        format!("set ECS service {name} desired count 2 → 0")
    );
    assert!(
        dry.would[2].starts_with(&format!(
            "then wait up to {}s (budgets.drain_seconds) until no task of {name} is left unstopped (now {name} (",
            doc.budgets.drain_seconds
        )) && dry.would[2].contains("tasks not stopped: 2 [RUNNING, RUNNING]"),
        "{dry:?}"
    );
    assert_eq!(
        desired_count(&cell, &jobs).await,
        2,
        "the dry run scaled nothing"
    );
    assert_eq!(
        recorded(&deps, doc).await,
        None,
        "the dry run recorded nothing"
    );
    assert_eq!(writers.running(), 2);

    let out = run(input(doc, Direction::Down), &deps).await.expect("down");
    // The operation saw the tasks stopped in moto: their workers had exited by then.
    assert_eq!(
        writers.running(),
        0,
        "a task still runs after down: {out:?}"
    );
    assert_eq!(outcomes(&out), [(name.clone(), 2, 0, true)]);
    assert!(out.recorded_at.is_some() && out.not_recorded.is_empty());
    assert_eq!(out.parameter, deps.journal(doc).parameter_of::<Recorded>());
    assert_eq!(desired_count(&cell, &jobs).await, 0);
    let record = recorded(&deps, doc).await.expect("counts recorded");
    assert_eq!(recorded_counts(&record), [(name.clone(), 2)]);
    let after_drain = writers.acknowledged();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(writers.acknowledged(), after_drain, "writes after down");

    // A re-run changes nothing and keeps the counts recorded before the first.
    let again = run(input(doc, Direction::Down), &deps)
        .await
        .expect("down again");
    assert_eq!(outcomes(&again), [(name.clone(), 2, 0, false)]);
    assert_eq!(again.recorded_at, out.recorded_at);
    assert_eq!(recorded(&deps, doc).await, Some(record.clone()));
    assert!(
        plan(input(doc, Direction::Down), &deps)
            .await
            .expect("plan down again")
            .is_empty(),
        "drained: nothing left for down"
    );

    let dry = plan(input(doc, Direction::Up), &deps)
        .await
        .expect("plan up");
    assert_eq!(
        dry.would,
        [
            format!("set ECS service {name} desired count 0 → 2"),
            format!(
                "delete SSM parameter {parameter}: the counts recorded at {}",
                record.recorded_at
            ),
        ]
    );
    assert_eq!(
        desired_count(&cell, &jobs).await,
        0,
        "the dry run restored nothing"
    );
    assert_eq!(recorded(&deps, doc).await, Some(record));

    // Up by hand: a payload holding only the cell document.
    let manual = switchyard_operation::parse_input::<Input>(serde_json::json!({
        "cell": doc,
        "run_id": TEST_RUN,
        "direction": "up",
    }))
    .expect("payload");
    let up = run(manual, &deps).await.expect("up");
    assert_eq!(outcomes(&up), [(name.clone(), 2, 2, true)]);
    assert_eq!(up.recorded_at, out.recorded_at);
    assert_eq!(desired_count(&cell, &jobs).await, 2);
    assert_eq!(
        recorded(&deps, doc).await,
        None,
        "record removed once restored"
    );
    wait_for("writes to restart", Duration::from_secs(30), || {
        writers.acknowledged() >= after_drain + 5
    })
    .await;
    assert_eq!(writers.running(), 2);

    // Nothing recorded any more: up changes nothing and says so.
    let again = run(input(doc, Direction::Up), &deps)
        .await
        .expect("up again");
    assert_eq!(again.recorded_at, None);
    assert!(again.services.is_empty());
    assert_eq!(again.not_recorded, doc.direct_writers);
    assert_eq!(desired_count(&cell, &jobs).await, 2);
    assert!(plan(input(doc, Direction::Up), &deps)
        .await
        .expect("plan up again")
        .is_empty());

    let tally = writers.tally();
    let keys = tally.keys();
    let audit = switchyard_local_cell::audit_keys(
        &cell.blue.superuser_options("app"),
        ("billing", "invoice lines"),
        "description",
        &keys,
    )
    .await
    .expect("audit");
    assert_eq!(audit.present_once, keys.len(), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_finish_is_a_drain_timeout() {
    let cell = busy_cell().await;
    let deps = cell.deps().expect("deps");
    let jobs = cell.document.direct_writers[0].clone();
    let writers = &cell.direct_writers()[0];
    wait_for("jobs to be written", Duration::from_secs(30), || {
        writers.acknowledged() >= 10
    })
    .await;

    // Every job inserts into billing.invoices: a lock held on it keeps both tasks' jobs
    // in hand, so neither can drain.
    let blocker = cell.blue.superuser_client("app").await.expect("superuser");
    blocker
        .batch_execute("BEGIN; LOCK TABLE billing.invoices IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    let started = Instant::now();
    loop {
        let waiting: i64 = blocker
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "jobs never blocked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut tight = cell.document.clone();
    tight.budgets.drain_seconds = 1;
    tight.validate().expect("1 s is a valid drain budget");
    let started = Instant::now();
    let err = run(input(&tight, Direction::Down), &deps)
        .await
        .expect_err("drain cannot finish");
    assert_eq!(err.error_name(), ErrorName::DrainTimeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "budget kept");
    let message = err.to_string();
    assert!(
        message.contains("scale-services up") && message.contains(&jobs.service),
        "{message}"
    );
    // Left at 0 for the abort path, the counts recorded, the tasks still draining.
    assert_eq!(desired_count(&cell, &jobs).await, 0);
    let record = recorded(&deps, &cell.document).await.expect("recorded");
    assert_eq!(record.services[0].desired_count, 2);
    assert_eq!(writers.running(), 2, "both tasks hold a job in hand");

    // Once the jobs can finish the tasks exit, and a retry sees them drained.
    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    let out = run(input(&cell.document, Direction::Down), &deps)
        .await
        .expect("drained once unblocked");
    assert_eq!(writers.running(), 0);
    assert_eq!(out.services[0].recorded_count, 2);
    assert!(!out.services[0].updated);
    let up = run(input(&cell.document, Direction::Up), &deps)
        .await
        .expect("up");
    assert_eq!(up.services[0].desired_count, 2);
    assert_eq!(desired_count(&cell, &jobs).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_decides_what_up_restores() {
    let cell = LocalCell::start_quiet(ROWS).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    let deps = cell.deps().expect("deps");
    let jobs = cell.document.direct_writers[0].clone();
    let reports = writer(&jobs.ecs_cluster, "reports");
    create_service(&cell, &jobs.ecs_cluster, &reports.service, 3).await;

    // A service ECS does not know stops down before anything changes.
    for unknown in [
        writer(&jobs.ecs_cluster, "no-such-service"),
        writer("no-such-cluster", "ledger-jobs"),
    ] {
        let mut doc = cell.document.clone();
        doc.direct_writers.push(unknown.clone());
        let err = plan(input(&doc, Direction::Down), &deps)
            .await
            .expect_err("a dry run stops as the real one");
        assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
        let err = run(input(&doc, Direction::Down), &deps)
            .await
            .expect_err("unknown service");
        assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
        assert!(err.to_string().contains("no-such-"), "{err}");
        assert_eq!(desired_count(&cell, &jobs).await, 2);
        assert_eq!(recorded(&deps, &doc).await, None);
    }

    let out = run(input(&cell.document, Direction::Down), &deps)
        .await
        .expect("down");
    assert_eq!(
        outcomes(&out),
        [("local-a/ledger-jobs".to_owned(), 2, 0, true)]
    );

    // A re-run naming one more service records that one too, keeping the first count.
    let mut both = cell.document.clone();
    both.direct_writers.push(reports.clone());
    let dry = plan(input(&both, Direction::Down), &deps)
        .await
        .expect("plan down with both");
    assert_eq!(
        dry.would[..2],
        [
            format!(
                "add to the counts recorded in SSM parameter {}: local-a/reports 3",
                deps.journal(&both).parameter_of::<Recorded>()
            ),
            "set ECS service local-a/reports desired count 3 → 0".to_owned(),
        ]
    );
    assert_eq!(desired_count(&cell, &reports).await, 3);
    assert_eq!(
        recorded(&deps, &both).await.map(|r| r.services.len()),
        Some(1),
        "the dry run recorded nothing"
    );
    let out = run(input(&both, Direction::Down), &deps)
        .await
        .expect("down with both");
    assert_eq!(
        outcomes(&out),
        [
            ("local-a/ledger-jobs".to_owned(), 2, 0, false),
            ("local-a/reports".to_owned(), 3, 0, true),
        ]
    );
    let record = recorded(&deps, &both).await.expect("recorded");
    assert_eq!(
        recorded_counts(&record),
        [
            ("local-a/ledger-jobs".to_owned(), 2),
            ("local-a/reports".to_owned(), 3)
        ]
    );

    // Up with a document naming neither recorded service but another: the record is the
    // truth, and the other is left alone.
    let billing = writer(&jobs.ecs_cluster, "billing-export");
    create_service(&cell, &jobs.ecs_cluster, &billing.service, 1).await;
    let mut other = cell.document.clone();
    other.direct_writers = vec![billing.clone()];
    let up = run(input(&other, Direction::Up), &deps).await.expect("up");
    assert_eq!(
        outcomes(&up),
        [
            ("local-a/ledger-jobs".to_owned(), 2, 2, true),
            ("local-a/reports".to_owned(), 3, 3, true),
        ]
    );
    assert_eq!(up.not_recorded, std::slice::from_ref(&billing));
    assert_eq!(desired_count(&cell, &jobs).await, 2);
    assert_eq!(desired_count(&cell, &reports).await, 3);
    assert_eq!(desired_count(&cell, &billing).await, 1);

    let again = run(input(&both, Direction::Up), &deps)
        .await
        .expect("up again");
    assert_eq!(again.recorded_at, None);
    assert!(again.services.is_empty());
    assert_eq!(desired_count(&cell, &jobs).await, 2);
    assert_eq!(desired_count(&cell, &reports).await, 3);
}
