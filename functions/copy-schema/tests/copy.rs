//! copy-schema against a local cell: pg_dump of the real blue, applied on the real green.
//! Roles come first, by sync-roles, exactly as the state machine runs them.

use copy_schema::{plan, run, Input, Output};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_operation::Plan;

/// A cell whose green has the application roles (sync-roles has run) and nothing else.
async fn cell_with_roles() -> LocalCell {
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    sync_roles(&cell).await;
    cell
}

async fn sync_roles(cell: &LocalCell) {
    let deps = cell.deps().expect("deps");
    let input = sync_roles::Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
    };
    sync_roles::run(input, &deps).await.expect("sync-roles");
}

async fn copy(cell: &LocalCell) -> Result<Output, switchyard_operation::Error> {
    let deps = cell.deps().expect("deps");
    run(
        Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
}

async fn dry_run(cell: &LocalCell) -> Result<Plan, switchyard_operation::Error> {
    let deps = cell.deps().expect("deps");
    plan(
        Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
        },
        &deps,
    )
    .await
}

/// Every schema and relation green's database holds: what a dry run must not move.
const EVERYTHING: &str =
    "SELECT (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace) || ' / ' || \
     (SELECT count(*) FROM pg_class)::text || ' / ' || (SELECT count(*) FROM pg_publication)::text";

async fn green(cell: &LocalCell) -> tokio_postgres::Client {
    cell.green.superuser_client("app").await.expect("green")
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &tokio_postgres::Client,
    sql: &str,
) -> T {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Every relation in the application's schemas with its file: what must not move when
/// copy-schema has nothing to do.
const FINGERPRINT: &str = "SELECT coalesce(string_agg(c.oid::text || ':' || c.relname || ':' || c.relfilenode, ',' ORDER BY c.oid), '') \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'billing')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_blue_schema_once_and_reports_a_later_difference() {
    let cell = cell_with_roles().await;
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    // switchyard's own objects on blue must not reach green.
    blue.batch_execute(
        "CREATE SCHEMA switchyard; CREATE TABLE switchyard.ddl_journal (id bigint PRIMARY KEY); \
         CREATE FUNCTION switchyard.record_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$; \
         CREATE EVENT TRIGGER switchyard_ddl_guard ON ddl_command_end EXECUTE FUNCTION switchyard.record_ddl(); \
         CREATE PUBLICATION switchyard_payments FOR TABLE public.payments",
    )
    .await
    .expect("switchyard objects on blue");

    let green = green(&cell).await;
    let before: String = one(&green, EVERYTHING).await;
    let dry = dry_run(&cell).await.expect("plan");
    assert_eq!(dry.would.len(), 1, "{:?}", dry.would);
    let line = &dry.would[0];
    assert!(
        line.starts_with("on green's database app: run blue's schema dump in one transaction, "),
        "{line}"
    );
    for kind in [
        "schema ×1",
        "table ×",
        "index ×",
        "column ×",
        "publication ×1",
    ] {
        assert!(line.contains(kind), "{kind}: {line}");
    }
    assert!(
        line.ends_with("; commit only if green's catalog then equals blue's"),
        "{line}"
    );
    assert_eq!(
        one::<String>(&green, EVERYTHING).await,
        before,
        "a dry run changes nothing"
    );

    let first = copy(&cell).await.expect("first run");
    assert_eq!(first.databases.len(), 1);
    let app = &first.databases[0];
    assert_eq!(app.name, "app");
    assert!(app.applied);
    assert!(app.statements > 50, "{app:?}");
    assert!(app.differences.is_empty());
    assert!(
        line.contains(&format!(" {} statements creating ", app.statements)),
        "the dry run counted what the run ran ({}): {line}",
        app.statements
    );
    let text = serde_json::to_string(&first).expect("json");
    for password in cell.secrets.all_passwords() {
        assert!(!text.contains(password.expose()));
    }

    let owner: String = one(
        &green,
        "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'public.accounts'::regclass",
    )
    .await;
    assert_eq!(owner, "app_owner", "owners are kept");
    assert!(
        one::<bool>(
            &green,
            "SELECT has_table_privilege('app_writer', 'public.payments', 'INSERT')"
        )
        .await,
        "privileges are kept (through app_rw)"
    );
    let publications: Vec<String> = green
        .query("SELECT pubname::text FROM pg_publication ORDER BY 1", &[])
        .await
        .expect("publications")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        publications,
        ["search_pub"],
        "the downstream's publication, not switchyard's"
    );
    assert!(
        !one::<bool>(
            &green,
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'switchyard')"
        )
        .await
    );
    assert!(
        !one::<bool>(&green, "SELECT EXISTS (SELECT FROM pg_event_trigger)").await,
        "the DDL guard stays on blue"
    );
    assert!(
        one::<bool>(
            &green,
            "SELECT to_regclass('billing.\"invoice lines\"') IS NOT NULL"
        )
        .await
    );

    let before: String = one(&green, FINGERPRINT).await;
    let second = copy(&cell).await.expect("second run");
    assert!(!second.databases[0].applied, "{second:?}");
    assert_eq!(second.databases[0].statements, 0);
    assert_eq!(
        one::<String>(&green, FINGERPRINT).await,
        before,
        "a retry changes nothing"
    );
    assert!(dry_run(&cell).await.expect("plan").is_empty());

    green
        .batch_execute("DROP INDEX public.payments_account_created")
        .await
        .expect("drop index");
    let err = copy(&cell).await.expect_err("a missing index");
    assert_eq!(err.error_name(), ErrorName::SchemaMismatch);
    let message = err.to_failure().message().to_owned();
    assert!(
        message.contains("- index public.payments_account_created: on blue, missing on green"),
        "{message}"
    );
    assert!(message.contains("(1 difference)"), "{message}");
    let err = dry_run(&cell)
        .await
        .expect_err("the dry run stops the same way");
    assert_eq!(err.error_name(), ErrorName::SchemaMismatch);
    assert_eq!(err.to_failure().message(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_green_is_reported_not_clobbered() {
    let cell = cell_with_roles().await;
    let green = green(&cell).await;
    green
        .batch_execute("CREATE TABLE public.accounts (id integer)")
        .await
        .expect("a table in the way");

    let err = copy(&cell).await.expect_err("green is in the way");
    assert_eq!(err.error_name(), ErrorName::SchemaMismatch);
    let message = err.to_failure().message().to_owned();
    assert!(message.contains("nothing was applied"), "{message}");
    assert!(
        message
            .contains("- column public.accounts.id: blue has \"bigint not null default nextval("),
        "{message}"
    );
    assert!(
        message.contains("- table public.payments: on blue, missing on green"),
        "{message}"
    );

    let columns: String = one(
        &green,
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ') \
         FROM pg_attribute WHERE attrelid = 'public.accounts'::regclass AND attnum > 0",
    )
    .await;
    assert_eq!(columns, "id integer", "the existing table is untouched");
    assert!(one::<bool>(&green, "SELECT to_regclass('public.payments') IS NULL").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_is_named_and_leaves_green_empty() {
    let cell = cell_with_roles().await;
    let green = green(&cell).await;
    green
        .batch_execute("DROP ROLE app_reader")
        .await
        .expect("a role the grants need");

    let err = copy(&cell).await.expect_err("a grant to a missing role");
    assert_eq!(err.error_name(), ErrorName::DatabaseError);
    let message = err.to_failure().message().to_owned();
    assert!(message.contains("nothing was committed"), "{message}");
    assert!(message.contains("TO app_reader"), "{message}");
    assert!(
        message.contains("role \"app_reader\" does not exist"),
        "{message}"
    );
    for password in cell.secrets.all_passwords() {
        assert!(!message.contains(password.expose()));
    }
    assert!(
        one::<bool>(&green, "SELECT to_regclass('public.accounts') IS NULL").await,
        "the whole dump was rolled back"
    );
    assert!(
        !one::<bool>(
            &green,
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'billing')"
        )
        .await
    );

    sync_roles(&cell).await;
    let output = copy(&cell).await.expect("applies once the role exists");
    assert!(output.databases[0].applied);
}
