//! revoke-writes against the local cell's real blue.

use std::collections::BTreeMap;

use revoke_writes::{plan, run, Input};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// `schema.name` → `relacl::text` of every relation in public and billing.
async fn acls(client: &Client) -> BTreeMap<String, Option<String>> {
    client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.relacl::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('public', 'billing') AND c.relkind IN ('r','p','v','m','f','S')",
            &[],
        )
        .await
        .expect("acls")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn login(cell: &LocalCell, role: &str) -> Client {
    let (user, password) = cell.secrets.role(role).expect("role");
    switchyard_postgres::connect(&cell.blue.options("app", user, password))
        .await
        .expect("login")
}

async fn assert_denied(client: &Client, sql: &str) {
    let e = client.batch_execute(sql).await.expect_err(sql);
    assert_eq!(
        e.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{sql}: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_every_write_and_keeps_the_first_save() {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    let deps = cell.deps().expect("deps");
    let admin = cell.blue.superuser_client("app").await.expect("admin");
    let before = acls(&admin).await;

    let early = login(&cell, "app_writer").await;
    early
        .batch_execute("INSERT INTO public.payments (account_id, amount) VALUES (1, 1)")
        .await
        .expect("app_writer writes before the fence");

    let input = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
    };
    let dry = plan(input.clone(), &deps).await.expect("plan");
    let line = |text: &str| dry.would.iter().any(|l| l == text);
    assert!(
        dry.would[0].starts_with("in database app: save the ACLs of ")
            && dry.would[0].ends_with(
                " relations into switchyard.saved_acls (schema switchyard and that table created first)"
            ),
        "{dry:?}"
    );
    assert!(
        line(
            r#"in database app: REVOKE INSERT, UPDATE, DELETE ON TABLE "public"."payments" FROM "app_rw" CASCADE"#
        ),
        "{dry:?}"
    );
    assert!(
        line(
            r#"in database app: REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE "public"."payments" FROM "app_owner" CASCADE"#
        ),
        "the owner too: {dry:?}"
    );
    assert!(
        line(
            r#"in database app: REVOKE UPDATE, USAGE ON SEQUENCE "billing"."invoice_number_seq" FROM "app_rw" CASCADE"#
        ),
        "{dry:?}"
    );
    let last = dry.would.last().expect("lines");
    assert!(
        last.starts_with("in database app: then terminate every backend of app_owner, ")
            && last.ends_with(" (walsenders excepted; 1 now)"),
        "the early session: {dry:?}"
    );
    assert_eq!(acls(&admin).await, before, "the dry run revoked nothing");
    let saved_table: bool = admin
        .query_one(
            "SELECT to_regclass('switchyard.saved_acls') IS NOT NULL",
            &[],
        )
        .await
        .expect("regclass")
        .get(0);
    assert!(!saved_table, "the dry run saved nothing");
    early
        .batch_execute("INSERT INTO public.payments (account_id, amount) VALUES (1, 1)")
        .await
        .expect("the dry run ended no session and revoked no write");

    let first = run(input.clone(), &deps).await.expect("revoke");
    let db = &first.databases[0];
    assert_eq!(db.name, "app");
    assert!(db.saved >= before.len(), "every relation saved: {db:?}");
    for role in ["app_owner", "app_rw", "app_writer", "jobs_writer"] {
        assert!(db.revoked_roles.iter().any(|r| r == role), "{role}: {db:?}");
    }
    assert!(db.terminated >= 1, "the early session was ended: {db:?}");
    assert!(
        early.simple_query("SELECT 1").await.is_err(),
        "a session opened before the fence is gone"
    );
    let dry = plan(input.clone(), &deps)
        .await
        .expect("plan after the fence");
    assert!(dry.is_empty(), "nothing left: {dry:?}");

    let writer = login(&cell, "app_writer").await;
    for round in 0..2 {
        if round == 1 {
            writer
                .batch_execute("SET default_transaction_read_only = off")
                .await
                .expect("set");
        }
        assert_denied(
            &writer,
            "INSERT INTO public.payments (account_id, amount) VALUES (1, 1)",
        )
        .await;
        assert_denied(&writer, "UPDATE public.accounts SET email = email").await;
        assert_denied(&writer, "DELETE FROM public.account_links").await;
        assert_denied(&writer, "TRUNCATE billing.\"invoice lines\"").await;
        assert_denied(&writer, "SELECT nextval('billing.invoice_number_seq')").await;
    }
    writer
        .batch_execute("SELECT count(*) FROM public.payments")
        .await
        .expect("reads still work");
    let owner = login(&cell, "app_owner").await;
    assert_denied(
        &owner,
        "INSERT INTO public.payments (account_id, amount) VALUES (1, 1)",
    )
    .await;
    let fenced = acls(&admin).await;
    assert_ne!(fenced, before, "ACLs changed");
    let dry = plan(input.clone(), &deps)
        .await
        .expect("plan with sessions");
    assert_eq!(dry.would.len(), 1, "only sessions to end: {dry:?}");
    assert!(
        dry.would[0].ends_with("(walsenders excepted; 2 now)"),
        "{dry:?}"
    );

    let second = run(input, &deps).await.expect("second revoke");
    assert_eq!(second.databases[0].saved, 0, "the first save wins");
    assert_eq!(acls(&admin).await, fenced, "nothing more to revoke");
    let saved: BTreeMap<String, Option<String>> = admin
        .query(
            "SELECT schema || '.' || name, relacl FROM switchyard.saved_acls
              WHERE schema IN ('public', 'billing')",
            &[],
        )
        .await
        .expect("saved")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(saved, before, "saved ACLs are the ones before the fence");
}
