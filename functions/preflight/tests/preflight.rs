//! preflight against local cells: the fixture passes, and each blocker is found on a cell
//! made to have it.

use std::time::Duration;

use preflight::{run, Code, Input, Output};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::LocalCell;
use switchyard_operation::Deps;

async fn start() -> (LocalCell, Deps) {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    let deps = cell.deps().expect("deps");
    (cell, deps)
}

/// The cell's document, targeting the green this cell really runs (`GREEN_PG`), which the
/// checked-in template (14 → 17) does not know.
fn input(cell: &LocalCell) -> Input {
    let mut document = cell.document.clone();
    document.target_major_version = cell.green.major;
    Input {
        cell: document,
        idle_transaction_seconds: 60,
        phase: preflight::Phase::Prepare,
    }
}

async fn blue_sql(cell: &LocalCell, sql: &str) {
    cell.blue
        .superuser_client("app")
        .await
        .expect("blue")
        .batch_execute(sql)
        .await
        .expect(sql);
}

/// Runs preflight expecting `PreflightFailed` whose report names `code` and every one of
/// `objects`; returns the report.
async fn blocked(
    cell: &LocalCell,
    deps: &Deps,
    input: Input,
    code: &str,
    objects: &[&str],
) -> String {
    let err = run(input, deps).await.expect_err("preflight must fail");
    assert_eq!(err.error_name(), ErrorName::PreflightFailed, "{err}");
    let report = err.to_failure().message().to_owned();
    assert!(report.contains(code), "{code} not in: {report}");
    for object in objects {
        assert!(report.contains(object), "{object} not in: {report}");
    }
    for password in cell.secrets.all_passwords() {
        assert!(
            !report.contains(password.expose()),
            "a password leaked into the report"
        );
    }
    report
}

async fn relation_counts(cell: &LocalCell) -> (i64, i64) {
    let count = |client: tokio_postgres::Client| async move {
        client
            .query_one("SELECT count(*) FROM pg_class", &[])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    (
        count(cell.blue.superuser_client("app").await.expect("blue")).await,
        count(cell.green.superuser_client("app").await.expect("green")).await,
    )
}

/// `app: extension <name> <version>` for each extension on blue whose version is not
/// green's default, asked of the servers directly.
async fn differing_extensions(cell: &LocalCell) -> Vec<String> {
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");
    let mut differing = Vec::new();
    for row in blue
        .query(
            "SELECT extname::text, extversion FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .expect("extensions")
    {
        let (name, version): (String, String) = (row.get(0), row.get(1));
        let default: String = green
            .query_one(
                "SELECT default_version FROM pg_available_extensions WHERE name = $1",
                &[&name],
            )
            .await
            .expect("default version")
            .get(0);
        if default != version {
            differing.push(format!("app: extension {name} {version}"));
        }
    }
    differing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_passes_with_only_warnings_and_preflight_changes_nothing() {
    let (cell, deps) = start().await;
    let before = relation_counts(&cell).await;

    let first: Output = run(input(&cell), &deps).await.expect("clean preflight");
    assert!(first.blockers.is_empty(), "{:#?}", first.blockers);
    // The materialized view, and extensions only where green's default version really
    // differs (pgcrypto 1.3 → 1.4 on 18); touch_updated_at qualifies pg_catalog.now().
    let matviews: Vec<_> = first
        .warnings
        .iter()
        .filter(|w| w.code == Code::MaterializedView)
        .collect();
    assert_eq!(matviews.len(), 1, "{:#?}", first.warnings);
    assert_eq!(matviews[0].objects, ["app: billing.account_totals"]);
    let differing = differing_extensions(&cell).await;
    let warned: Vec<String> = first
        .warnings
        .iter()
        .filter(|w| w.code == Code::ExtensionVersionDiffers)
        .flat_map(|w| w.objects.clone())
        .collect();
    assert_eq!(warned, differing, "{:#?}", first.warnings);
    assert_eq!(
        first.warnings.len(),
        1 + differing.len(),
        "{:#?}",
        first.warnings
    );
    assert_eq!(first.checked.databases, ["app"]);
    assert_eq!(first.checked.planned_subscriptions, 2);
    assert!(first
        .checked
        .blue_version
        .starts_with(&cell.blue.major.to_string()));
    assert!(first
        .checked
        .green_version
        .starts_with(&cell.green.major.to_string()));

    let second = run(input(&cell), &deps).await.expect("second preflight");
    assert_eq!(second, first, "a second run answers the same");
    assert_eq!(
        relation_counts(&cell).await,
        before,
        "preflight created or dropped relations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_replica_identity_is_a_blocker() {
    let (cell, deps) = start().await;
    blue_sql(&cell, "CREATE TABLE public.audit_log (msg text)").await;
    let report = blocked(
        &cell,
        &deps,
        input(&cell),
        "NO_REPLICA_IDENTITY",
        &["app: public.audit_log"],
    )
    .await;
    // A unique-index identity and partition leaves with the parent's key are fine.
    assert!(!report.contains("account_links"), "{report}");
    assert!(!report.contains("events"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlogged_table_is_a_blocker() {
    let (cell, deps) = start().await;
    blue_sql(
        &cell,
        "CREATE UNLOGGED TABLE public.scratch (id bigint PRIMARY KEY)",
    )
    .await;
    blocked(
        &cell,
        &deps,
        input(&cell),
        "UNLOGGED_TABLE",
        &["app: public.scratch"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_a_blocker() {
    let (cell, deps) = start().await;
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let oid: u32 = blue
        .query_one("SELECT lo_from_bytea(0, 'scan')", &[])
        .await
        .expect("lo")
        .get(0);
    blocked(
        &cell,
        &deps,
        input(&cell),
        "LARGE_OBJECTS",
        &[&format!("app: large object {oid}")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_green_does_not_ship_is_a_blocker() {
    let (cell, deps) = start().await;
    // PostgreSQL 17 removed adminpack; 14–16 ship it.
    assert!(
        cell.blue.major < 17,
        "this test needs a blue that ships adminpack"
    );
    assert!(
        cell.green.major >= 17,
        "this test needs a green without adminpack"
    );
    blue_sql(&cell, "CREATE EXTENSION adminpack").await;
    blocked(
        &cell,
        &deps,
        input(&cell),
        "EXTENSION_UNAVAILABLE",
        &["app: extension adminpack"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_free_replication_slots_is_a_blocker() {
    let (cell, deps) = start().await;
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let row = blue
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, (SELECT count(*)::int FROM pg_replication_slots)",
            &[],
        )
        .await
        .expect("slots");
    let (max, used): (i32, i32) = (row.get(0), row.get(1));
    // Leave one fewer free slot than the two planned subscriptions need.
    for i in 0..(max - used - 1) {
        blue.query_one(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("occupied_{i}")],
        )
        .await
        .expect("slot");
    }
    let report = blocked(
        &cell,
        &deps,
        input(&cell),
        "REPLICATION_SLOTS_SHORT",
        &["blue: max_replication_slots"],
    )
    .await;
    assert!(report.contains("1 free"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_the_apply_worker_evaluates_without_search_path_is_a_blocker() {
    let (cell, deps) = start().await;
    blue_sql(
        &cell,
        "CREATE TABLE public.currencies (code char(3) PRIMARY KEY);
         CREATE FUNCTION public.default_currency() RETURNS char(3) LANGUAGE plpgsql
             AS $$BEGIN RETURN (SELECT code FROM currencies LIMIT 1); END$$;
         ALTER TABLE public.payments ALTER COLUMN currency SET DEFAULT public.default_currency();
         CREATE FUNCTION public.count_currencies() RETURNS bigint LANGUAGE sql
             AS 'SELECT count(*) FROM currencies';
         CREATE FUNCTION public.pinned_currency() RETURNS char(3) LANGUAGE sql
             SET search_path = public AS 'SELECT code FROM currencies LIMIT 1';
         ALTER TABLE public.accounts ADD CONSTRAINT pinned CHECK (public.pinned_currency() IS DISTINCT FROM 'XXX') NOT VALID;",
    )
    .await;
    let report = blocked(
        &cell,
        &deps,
        input(&cell),
        "FUNCTION_SEARCH_PATH_APPLY",
        &[
            "app: public.default_currency()",
            "default of public.payments.currency",
        ],
    )
    .await;
    assert_eq!(
        report.matches("FUNCTION_SEARCH_PATH_APPLY").count(),
        1,
        "{report}"
    );
    // The unused one is a warning; the pinned one and the fixture's trigger are fine.
    assert!(
        report.contains("warning(s): FUNCTION_SEARCH_PATH, MATERIALIZED_VIEW"),
        "{report}"
    );
    assert!(!report.contains("pinned_currency"), "{report}");
    assert!(!report.contains("touch_updated_at"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_idle_in_transaction_is_a_blocker() {
    let (cell, deps) = start().await;
    let holder = cell.blue.superuser_client("app").await.expect("blue");
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("begin");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut input = input(&cell);
    input.idle_transaction_seconds = 1;
    blocked(
        &cell,
        &deps,
        input.clone(),
        "IDLE_IN_TRANSACTION",
        &[&format!("pid {pid} ")],
    )
    .await;

    // Once it ends, the same preflight passes.
    holder.batch_execute("COMMIT").await.expect("commit");
    run(input, &deps).await.expect("no idle transaction left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_green_that_is_not_newer_is_a_blocker() {
    let (cell, deps) = start().await;
    let mut input = input(&cell);
    let document = &mut input.cell;
    std::mem::swap(
        &mut document.blue.cluster_identifier,
        &mut document.green.cluster_identifier,
    );
    blocked(
        &cell,
        &deps,
        input,
        "GREEN_NOT_NEWER",
        &[
            "GREEN_MAJOR_MISMATCH",
            &format!("green: {}.", cell.blue.major),
            &format!("blue: {}.", cell.green.major),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_green_database_is_a_blocker() {
    let (cell, deps) = start().await;
    cell.green
        .superuser_client("postgres")
        .await
        .expect("green")
        .batch_execute("DROP DATABASE app")
        .await
        .expect("drop");
    blocked(
        &cell,
        &deps,
        input(&cell),
        "GREEN_DATABASE_MISSING",
        &["green: database app", "CREATE DATABASE"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_that_would_drop_paused_clients_is_a_blocker() {
    let (cell, deps) = start().await;
    let admin = cell.pgbouncer_admin().await.expect("admin");
    admin.set("query_wait_timeout", "30").await.expect("set");
    assert_eq!(cell.document.budgets.pause_seconds, 60);
    let endpoint = format!("pgbouncer 127.0.0.1:{}", cell.pgbouncer.port);
    blocked(
        &cell,
        &deps,
        input(&cell),
        "PGBOUNCER_QUERY_WAIT_TIMEOUT",
        &[&endpoint, "30 s"],
    )
    .await;

    // 0 waits forever: fine.
    admin.set("query_wait_timeout", "0").await.expect("set");
    run(input(&cell), &deps)
        .await
        .expect("query_wait_timeout 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncers_that_cannot_be_found_or_reached_are_blockers() {
    let (cell, deps) = start().await;
    // Nothing listens on port 1.
    let mut unreachable = input(&cell);
    unreachable.cell.pgbouncer.discovery = switchyard_cell::Discovery::Static {
        hosts: vec!["127.0.0.1:1".to_owned()],
    };
    blocked(
        &cell,
        &deps,
        unreachable,
        "PGBOUNCER_UNREACHABLE",
        &["pgbouncer 127.0.0.1:1"],
    )
    .await;

    // The local cell's PgBouncer ECS service (moto) has no task with an address.
    let mut ecs = input(&cell);
    ecs.cell.pgbouncer.discovery = switchyard_cell::Discovery::EcsService {
        ecs_cluster: cell.document.cell_id.clone(),
        service: "pgbouncer".to_owned(),
        admin_port: cell.pgbouncer.port,
    };
    blocked(
        &cell,
        &deps,
        ecs,
        "PGBOUNCER_UNREACHABLE",
        &[&format!(
            "pgbouncer ECS service {}/pgbouncer",
            cell.document.cell_id
        )],
    )
    .await;
}
