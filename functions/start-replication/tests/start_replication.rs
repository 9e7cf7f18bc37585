//! start-replication's stops, against a local cell: nothing may hang, and a stop before
//! the slots leaves none behind.

use std::time::{Duration, Instant};

use start_replication::{plan, run, Input};
use switchyard_cell::TableRef;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};

async fn cell() -> LocalCell {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell.copy_schema_directly().await.expect("schema on green");
    cell
}

fn input(cell: &LocalCell) -> Input {
    Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        idle_transaction_seconds: 5,
        lock_timeout_seconds: 30,
    }
}

/// Our slots on blue and subscriptions on green.
async fn replication_objects(cell: &LocalCell) -> (Vec<String>, Vec<String>) {
    let names = |client: tokio_postgres::Client, sql: &'static str| async move {
        client
            .query(sql, &[])
            .await
            .expect("names")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    (
        names(
            cell.blue.superuser_client("app").await.expect("blue"),
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'switchyard%' ORDER BY 1",
        )
        .await,
        names(
            cell.green.superuser_client("app").await.expect("green"),
            "SELECT subname::text FROM pg_subscription ORDER BY 1",
        )
        .await,
    )
}

/// Everything start-replication may change, on both sides: blue's guard, switchyard tables,
/// publications (with their tables and options) and slots; green's switchyard tables,
/// markers and subscriptions. What a dry run must leave exactly as it was.
async fn replication_state(cell: &LocalCell) -> Vec<String> {
    const BLUE: &str = "SELECT 'trigger ' || evtname || ' ' || evtenabled FROM pg_event_trigger \
        UNION ALL SELECT 'relation ' || oid::regclass::text FROM pg_class \
            WHERE relnamespace = to_regnamespace('switchyard') \
        UNION ALL SELECT 'publication ' || pubname || ' ' || pubviaroot || pubinsert || pubtruncate \
            FROM pg_publication \
        UNION ALL SELECT 'published ' || pubname || ' ' || schemaname || '.' || tablename \
            FROM pg_publication_tables \
        UNION ALL SELECT 'slot ' || slot_name FROM pg_replication_slots \
        UNION ALL SELECT 'role ' || rolname || ' ' || rolcanlogin || rolreplication FROM pg_roles \
            WHERE rolname = 'switchyard_replication' \
        UNION ALL SELECT 'grant ' || table_name FROM information_schema.role_table_grants \
            WHERE grantee = 'switchyard_replication' \
        ORDER BY 1";
    const GREEN: &str = "SELECT 'relation ' || oid::regclass::text FROM pg_class \
            WHERE relnamespace = to_regnamespace('switchyard') \
        UNION ALL SELECT 'subscription ' || subname || ' ' || subenabled FROM pg_subscription \
        ORDER BY 1";
    let rows = |client: tokio_postgres::Client, sql: &'static str| async move {
        client
            .query(sql, &[])
            .await
            .expect(sql)
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let green = cell.green.superuser_client("app").await.expect("green");
    let markers = if marker_exists(&green).await {
        green
            .query(
                "SELECT coalesce(string_agg(id, ',' ORDER BY id), '') FROM switchyard.switchover_marker",
                &[],
            )
            .await
            .expect("markers")[0]
            .get::<_, String>(0)
    } else {
        "no marker table".to_owned()
    };
    let mut state = rows(cell.blue.superuser_client("app").await.expect("blue"), BLUE).await;
    state.extend(rows(green, GREEN).await);
    state.push(format!("green markers: {markers}"));
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_on_blue_stops_it_before_any_slot() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let (user, password) = cell.secrets.role("app_writer").expect("app_writer");
    let idle = switchyard_postgres::connect(&cell.blue.options("app", user, password))
        .await
        .expect("app_writer on blue");
    idle.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    let pid: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let before = replication_state(&cell).await;
    let err = plan(
        Input {
            idle_transaction_seconds: 1,
            ..input(&cell)
        },
        &deps,
    )
    .await
    .expect_err("the dry run stops on it too");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("pid {pid} (user app_writer")),
        "{err}"
    );
    assert_eq!(
        replication_state(&cell).await,
        before,
        "a dry run changes nothing"
    );

    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            Input {
                idle_transaction_seconds: 1,
                ..input(&cell)
            },
            &deps,
        ),
    )
    .await
    .expect("fails fast instead of waiting")
    .expect_err("idle transaction");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("pid {pid} (user app_writer")),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(replication_objects(&cell).await, (vec![], vec![]));

    // Once it ends, the same call goes through.
    idle.batch_execute("COMMIT").await.expect("commit");
    let output = run(input(&cell), &deps).await.expect("start-replication");
    assert!(output.databases[0].subscriptions.iter().all(|s| s.created));
    assert_eq!(
        replication_objects(&cell).await,
        (
            vec![
                "switchyard_payments".to_owned(),
                "switchyard_rest".to_owned()
            ],
            vec![
                "switchyard_payments".to_owned(),
                "switchyard_rest".to_owned()
            ]
        )
    );
}

/// A transaction holding a transaction id blocks slot creation until it ends, however
/// briefly it has been idle: lock_timeout is what bounds that wait (FIELD-NOTES).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_bounds_slot_creation_behind_a_writing_transaction() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let (user, password) = cell.secrets.role("app_writer").expect("app_writer");
    let writer = switchyard_postgres::connect(&cell.blue.options("app", user, password))
        .await
        .expect("app_writer on blue");
    writer
        .batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .expect("transaction with an xid");

    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            Input {
                idle_transaction_seconds: 3600,
                lock_timeout_seconds: 2,
                ..input(&cell)
            },
            &deps,
        ),
    )
    .await
    .expect("bounded by lock_timeout")
    .expect_err("slot creation times out");
    assert_eq!(err.error_name(), ErrorName::DatabaseUnavailable, "{err}");
    assert!(
        err.to_string()
            .contains("creating slot switchyard_payments"),
        "{err}"
    );
    assert!(err.to_string().contains("55P03"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(replication_objects(&cell).await, (vec![], vec![]));

    writer.batch_execute("COMMIT").await.expect("commit");
    run(input(&cell), &deps).await.expect("start-replication");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_groups_or_rows_on_green_stop_it_before_any_slot() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let mut bad = input(&cell);
    bad.cell.table_groups[0].tables = vec![
        TableRef {
            schema: "public".into(),
            table: "events_2026_h1".into(),
        },
        TableRef {
            schema: "public".into(),
            table: "no_such_table".into(),
        },
    ];
    let before = replication_state(&cell).await;
    let err = plan(bad.clone(), &deps).await.expect_err("invalid groups");
    assert_eq!(err.error_name(), ErrorName::InvalidInput, "{err}");
    assert_eq!(
        replication_state(&cell).await,
        before,
        "not even the guard: a dry run changes nothing"
    );
    let err = run(bad, &deps).await.expect_err("invalid groups");
    assert_eq!(err.error_name(), ErrorName::InvalidInput, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("public.events_2026_h1 (group payments) is a partition of public.events"),
        "{message}"
    );
    assert!(
        message.contains("public.no_such_table (group payments) is not a table"),
        "{message}"
    );
    assert_eq!(replication_objects(&cell).await, (vec![], vec![]));

    // The initial copy would duplicate rows green already holds.
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .batch_execute("INSERT INTO public.accounts (email) VALUES ('stray@example.com')")
        .await
        .expect("stray row on green");
    let err = plan(input(&cell), &deps).await.expect_err("rows on green");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(err.to_string().contains("already hold rows"), "{err}");
    let err = run(input(&cell), &deps).await.expect_err("rows on green");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(
        err.to_string().contains("already hold rows")
            && err.to_string().contains("public.accounts"),
        "{err}"
    );
    assert_eq!(replication_objects(&cell).await, (vec![], vec![]));

    green
        .batch_execute("TRUNCATE public.accounts CASCADE")
        .await
        .expect("empty green");
    run(input(&cell), &deps).await.expect("start-replication");
}

async fn marker_exists(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT to_regclass('switchyard.switchover_marker') IS NOT NULL",
            &[],
        )
        .await
        .expect("marker table")
        .get(0)
}

/// The switchover marker table: created on blue with the guard (repaired when missing),
/// on green before the subscriptions (emptied of leftovers), carried by switchyard_rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_table_exists_on_both_sides_and_replicates_in_the_rest() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");

    // A stop after the guard: blue has the table, green not yet.
    let mut bad = input(&cell);
    bad.cell.table_groups[0].tables[0].table = "no_such_table".into();
    let err = run(bad, &deps).await.expect_err("invalid groups");
    assert_eq!(err.error_name(), ErrorName::InvalidInput, "{err}");
    assert!(marker_exists(&blue).await);
    assert!(!marker_exists(&green).await);

    // An install from before the marker existed is repaired; a leftover row on green goes.
    blue.batch_execute("DROP TABLE switchyard.switchover_marker")
        .await
        .expect("drop the marker on blue");
    green
        .batch_execute(
            "CREATE SCHEMA switchyard;
             CREATE TABLE switchyard.switchover_marker (id text PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp());
             INSERT INTO switchyard.switchover_marker (id) VALUES ('leftover')",
        )
        .await
        .expect("a leftover marker on green");

    // The dry run lists every change in the run's order, and makes none.
    let before = replication_state(&cell).await;
    let dry = plan(input(&cell), &deps).await.expect("plan");
    assert!(dry.dry_run);
    let rest_tables = "billing.\"invoice lines\"";
    let expected_start = [
        "on blue's database app: install the DDL guard (schema switchyard; tables ddl_journal, replication_state, switchover_marker; event triggers switchyard_ddl_guard, switchyard_ddl_guard_drop)",
        "on green: delete 1 leftover row(s) from switchyard.switchover_marker",
        "in SSM: a new password for the replication role switchyard_replication for this run, in /switchyard/local-a/replication",
        "on blue: create role switchyard_replication (LOGIN, REPLICATION, the password from /switchyard/local-a/replication)",
        "on blue: create publication switchyard_payments for public.payments (publish insert, update, delete, truncate; via partition root)",
    ];
    assert_eq!(dry.would[..5], expected_start, "{:#?}", dry.would);
    assert!(
        dry.would[5].starts_with("on blue: create publication switchyard_rest for ")
            && dry.would[5].contains(rest_tables)
            && dry.would[5].contains("switchyard.switchover_marker")
            && !dry.would[5].contains("public.payments"),
        "{:#?}",
        dry.would
    );
    assert!(
        dry.would[6].starts_with("on blue's database app: grant switchyard_replication SELECT on ")
            && dry.would[6].ends_with(" published table(s) (and USAGE on their schemas)"),
        "{:#?}",
        dry.would
    );
    assert_eq!(dry.would.len(), 11, "{:#?}", dry.would);
    assert!(
        dry.would[10].starts_with("on green: create subscription switchyard_rest on blue's publication and slot switchyard_rest (copy_data = true, create_slot = false); then green copies its "),
        "{:#?}",
        dry.would
    );
    assert_eq!(
        dry.would[7..10],
        [
            "on blue: create logical slot switchyard_payments (pgoutput), waiting for every older transaction up to lock_timeout 30 s",
            "on green: create subscription switchyard_payments on blue's publication and slot switchyard_payments (copy_data = true, create_slot = false); then green copies its 1 table(s) and streams",
            "on blue: create logical slot switchyard_rest (pgoutput), waiting for every older transaction up to lock_timeout 30 s",
        ],
        "{:#?}",
        dry.would
    );
    assert_eq!(
        replication_state(&cell).await,
        before,
        "a dry run changes nothing"
    );

    let output = run(input(&cell), &deps).await.expect("start-replication");
    let database = &output.databases[0];
    assert!(database.guard_installed);
    let marker = TableRef {
        schema: "switchyard".into(),
        table: "switchover_marker".into(),
    };
    let rest = &database.publications[1];
    assert_eq!(rest.name, "switchyard_rest");
    assert_eq!(rest.tables.last(), Some(&marker));
    assert!(!database.publications[0].tables.contains(&marker));
    let published: Vec<String> = blue
        .query(
            "SELECT pubname::text FROM pg_publication_tables
              WHERE schemaname = 'switchyard' AND tablename = 'switchover_marker' ORDER BY 1",
            &[],
        )
        .await
        .expect("publications of the marker")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["switchyard_rest"]);

    // A row written on blue arrives on green, and only that row is there.
    blue.batch_execute("INSERT INTO switchyard.switchover_marker (id) VALUES ('from-blue')")
        .await
        .expect("marker on blue");
    let started = Instant::now();
    loop {
        let ids: Vec<String> = green
            .query(
                "SELECT id FROM switchyard.switchover_marker ORDER BY 1",
                &[],
            )
            .await
            .expect("markers on green")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids == ["from-blue"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "green's markers: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Twice: all in place, nothing changes.
    let again = run(input(&cell), &deps).await.expect("second call");
    let database = &again.databases[0];
    assert!(!database.guard_installed);
    assert!(database.publications.iter().all(|p| !p.changed));
    assert!(database
        .subscriptions
        .iter()
        .all(|s| !s.created && !s.slot_created));
    let count: i64 = green
        .query_one("SELECT count(*) FROM switchyard.switchover_marker", &[])
        .await
        .expect("markers on green")
        .get(0);
    assert_eq!(count, 1, "the second call keeps green's markers");
    assert!(
        plan(input(&cell), &deps).await.expect("plan").is_empty(),
        "nothing left to do"
    );
}

const ROLE: &str = "switchyard_replication";

/// What SSM holds for the replication login: (run id, password).
async fn stored_login(cell: &LocalCell) -> Option<(String, String)> {
    let name = cell.document.replication_credentials_parameter();
    let value = switchyard_aws::read_secure_string(&cell.moto.clients.ssm, &name)
        .await
        .ok()?;
    let doc: serde_json::Value = serde_json::from_str(value.expose()).expect("JSON");
    assert_eq!(doc["username"], ROLE);
    Some((
        doc["run_id"].as_str().expect("run_id").to_owned(),
        doc["password"].as_str().expect("password").to_owned(),
    ))
}

/// Waits until each subscription's apply worker streams from blue as `ROLE` over TLS
/// (what pg_stat_replication and pg_stat_ssl say on blue), and a marker row written on
/// blue now arrives on green.
async fn streams_as_the_role(cell: &LocalCell, marker: &str) {
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");
    blue.execute(
        "INSERT INTO switchyard.switchover_marker (id) VALUES ($1)",
        &[&marker],
    )
    .await
    .expect("marker on blue");
    let started = Instant::now();
    loop {
        let senders: Vec<(String, String, bool)> = blue
            .query(
                "SELECT r.application_name, r.usename::text, s.ssl
                   FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
                  WHERE r.application_name LIKE 'switchyard\\_%' ORDER BY 1",
                &[],
            )
            .await
            .expect("walsenders")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let arrived: bool = green
            .query_one(
                "SELECT EXISTS (SELECT FROM switchyard.switchover_marker WHERE id = $1)",
                &[&marker],
            )
            .await
            .expect("markers on green")
            .get(0);
        let names: Vec<&str> = senders.iter().map(|(n, _, _)| n.as_str()).collect();
        if arrived
            && names == ["switchyard_payments", "switchyard_rest"]
            && senders.iter().all(|(_, user, ssl)| user == ROLE && *ssl)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "walsenders {senders:?}, marker {marker} arrived: {arrived}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The subscriptions log in to blue as a role of their own, over verify-full TLS, never as
/// the orchestrator; its password is rotated per run through SSM, and a run that crashed
/// after writing the new password (before blue or the subscriptions had it) converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_log_in_as_the_replication_role_and_each_run_rotates_its_password() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");

    assert!(
        plan(input(&cell), &deps).await.expect("plan").would.len() > 2,
        "everything to do"
    );
    assert_eq!(
        stored_login(&cell).await,
        None,
        "a dry run writes no password"
    );

    let output = run(input(&cell), &deps).await.expect("start-replication");
    assert_eq!(output.replication_role.name, ROLE);
    assert!(output.replication_role.password_rotated);
    assert!(output.replication_role.role_changed);
    assert!(output.databases[0].tables_granted > 0);
    let (run_id, first_password) = stored_login(&cell).await.expect("password in SSM");
    assert_eq!(run_id, TEST_RUN);

    // Replication rights and SELECT on what it copies; nothing more.
    let row = blue
        .query_one(
            "SELECT rolcanlogin, rolreplication, rolsuper,
                    has_table_privilege($1, 'public.payments', 'SELECT'),
                    has_table_privilege($1, 'public.payments', 'INSERT'),
                    has_table_privilege($1, 'billing.\"invoice lines\"', 'SELECT')
               FROM pg_roles WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .expect("the role on blue");
    let rights: (bool, bool, bool, bool, bool, bool) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(rights, (true, true, false, true, false, true));

    // Green's server dials blue as the role, verify-full against the CA on its own host.
    let conninfos: Vec<String> = green
        .query(
            "SELECT subconninfo FROM pg_subscription ORDER BY subname",
            &[],
        )
        .await
        .expect("subscriptions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(conninfos.len(), 2);
    let ca = cell.ca.bundle().display().to_string();
    for conninfo in &conninfos {
        assert!(conninfo.contains(&format!("user='{ROLE}'")), "wrong login");
        assert!(
            !conninfo.contains(&format!("user='{}'", cell.secrets.orchestrator_user)),
            "the orchestrator's login"
        );
        assert!(
            conninfo.contains(&format!("sslmode='verify-full' sslrootcert='{ca}'")),
            "TLS as the cell says"
        );
    }
    streams_as_the_role(&cell, "first-run").await;

    // The same run again: nothing rotates, nothing is rewritten, nothing is left to do.
    let again = run(input(&cell), &deps).await.expect("retry");
    assert!(!again.replication_role.password_rotated);
    assert!(!again.replication_role.role_changed);
    assert_eq!(again.databases[0].tables_granted, 0);
    assert!(again.databases[0]
        .subscriptions
        .iter()
        .all(|s| !s.connection_updated));
    assert!(plan(input(&cell), &deps).await.expect("plan").is_empty());

    // The next run crashed right after writing its password to SSM: blue and the
    // subscriptions still hold the first run's. Its retry reuses the stored password
    // (rotating again would strand it) and brings both over.
    const NEXT_RUN: &str = "next-run";
    cell.lock(NEXT_RUN).await.expect("lock for the next run");
    let next_password = "a-password-the-crashed-call-wrote";
    cell.moto
        .clients
        .ssm
        .put_parameter()
        .name(cell.document.replication_credentials_parameter())
        .value(
            serde_json::json!({ "username": ROLE, "password": next_password, "run_id": NEXT_RUN })
                .to_string(),
        )
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("the crashed call's SSM write");
    let next = Input {
        run_id: NEXT_RUN.to_owned(),
        ..input(&cell)
    };
    let dry = plan(next.clone(), &deps).await.expect("plan");
    assert_eq!(
        dry.would,
        [
            format!("on blue: alter role {ROLE} (LOGIN, REPLICATION, the password from /switchyard/local-a/replication)"),
            format!("on green: alter subscription switchyard_payments's connection to log in to blue as {ROLE} with this run's password"),
            format!("on green: alter subscription switchyard_rest's connection to log in to blue as {ROLE} with this run's password"),
        ],
        "{:#?}",
        dry.would
    );
    let output = run(next.clone(), &deps)
        .await
        .expect("the next run's retry");
    assert!(!output.replication_role.password_rotated, "reused");
    assert!(output.replication_role.role_changed);
    assert!(output.databases[0]
        .subscriptions
        .iter()
        .all(|s| s.connection_updated));
    assert_eq!(
        stored_login(&cell).await,
        Some((NEXT_RUN.to_owned(), next_password.to_owned()))
    );
    streams_as_the_role(&cell, "next-run").await;
    assert!(plan(next, &deps).await.expect("plan").is_empty());

    // The first run's password no longer logs in.
    let mut stale = cell.blue.options(
        "app",
        ROLE,
        &switchyard_telemetry::Secret::new(first_password),
    );
    stale.application_name = "stale-password".to_owned();
    let refused = switchyard_postgres::connect(&stale)
        .await
        .expect_err("the rotated-away password");
    assert!(refused.to_string().contains("28P01"), "{refused}");
}
