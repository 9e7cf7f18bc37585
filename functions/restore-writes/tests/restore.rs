//! restore-writes after revoke-writes, against the local cell's real blue.

use std::collections::BTreeMap;

use restore_writes::{plan, run, Input};
use switchyard_local_cell::{LocalCell, TEST_RUN};
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

async fn steps(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT step FROM switchyard.replication_state ORDER BY recorded_at",
            &[],
        )
        .await
        .expect("steps")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_every_acl_back_byte_identically_once() {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    let deps = cell.deps().expect("deps");
    let admin = cell.blue.superuser_client("app").await.expect("admin");
    // Nothing saved yet: restore has nothing to undo.
    let input = Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
    };
    assert!(plan(input.clone(), &deps)
        .await
        .expect("plan before revoke")
        .is_empty());
    // By an earlier run: restoring is the abort path's, and a run that has taken it never
    // goes forward (revoke-writes) again.
    cell.lock("an-earlier-run").await.expect("lock");
    let idle = run(
        Input {
            run_id: "an-earlier-run".to_owned(),
            ..input.clone()
        },
        &deps,
    )
    .await
    .expect("restore before revoke");
    assert_eq!(idle.databases[0].restored + idle.databases[0].unchanged, 0);
    cell.lock(TEST_RUN).await.expect("lock");

    // A grant by a grantor other than the owner, with grant option, and one to PUBLIC:
    // both must come back with their grantor and position.
    admin
        .batch_execute(
            "GRANT INSERT ON public.payments TO app_rw WITH GRANT OPTION;
             SET ROLE app_rw; GRANT INSERT ON public.payments TO jobs_writer; RESET ROLE;
             GRANT UPDATE ON public.accounts TO PUBLIC;
             CREATE TABLE public.scratch (id int);
             ALTER TABLE public.scratch OWNER TO app_owner;
             CREATE SCHEMA switchyard;
             CREATE TABLE switchyard.replication_state (
                 txid xid8 PRIMARY KEY,
                 recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                 step text NOT NULL);",
        )
        .await
        .expect("extra grants");
    let before = acls(&admin).await;
    assert_eq!(before["public.scratch"], None, "default privileges");
    // A NULL ACL can only come back as the explicit default, which grants the same.
    let mut expected = before.clone();
    expected.insert(
        "public.scratch".to_owned(),
        admin
            .query_one(
                "SELECT acldefault('r'::\"char\", relowner)::text FROM pg_class WHERE oid = 'public.scratch'::regclass",
                &[],
            )
            .await
            .expect("default")
            .get::<_, Option<String>>(0)
            .map(Some)
            .expect("a default ACL"),
    );

    revoke_writes::run(
        revoke_writes::Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
            pause_deadline: None,
        },
        &deps,
    )
    .await
    .expect("revoke");
    let fenced = acls(&admin).await;
    assert_ne!(fenced, before, "revoke-writes changed ACLs");

    // The dry run names each ACL it would rebuild, from what is in force to what was saved.
    let dry = plan(input.clone(), &deps).await.expect("plan");
    let payments = dry
        .would
        .iter()
        .find(|l| l.starts_with(r#"in database app: rebuild the ACL of public.payments "#))
        .unwrap_or_else(|| panic!("payments: {dry:?}"));
    let (now, saved) = (
        fenced["public.payments"].clone().expect("an ACL"),
        before["public.payments"].clone().expect("an ACL"),
    );
    assert!(
        payments.contains(&format!(" {now} → {saved} ")),
        "{payments}"
    );
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM switchyard.saved_acls", &[])
        .await
        .expect("saved rows")
        .get(0);
    let n = dry.would.len();
    assert_eq!(
        dry.would[n - 2..],
        [
            format!("in database app: mark {rows} rows of switchyard.saved_acls restored"),
            "in database app: in the same transaction, record its id in switchyard.replication_state (switchyard's own DDL)".to_owned(),
        ],
        "{dry:?}"
    );
    assert_eq!(acls(&admin).await, fenced, "the dry run granted nothing");
    assert_eq!(steps(&admin).await, ["revoke-writes"]);
    let unmarked: i64 = admin
        .query_one(
            "SELECT count(*) FROM switchyard.saved_acls WHERE restored_at IS NULL",
            &[],
        )
        .await
        .expect("marks")
        .get(0);
    assert_eq!(unmarked, rows, "the dry run marked nothing");

    let first = run(input.clone(), &deps).await.expect("restore");
    let db = &first.databases[0];
    assert!(db.restored > 0, "{db:?}");
    assert!(db.missing.is_empty(), "{db:?}");
    assert_eq!(
        acls(&admin).await,
        expected,
        "every relacl is back, byte for byte"
    );
    assert_eq!(steps(&admin).await, ["revoke-writes", "restore-writes"]);
    let unmarked: i64 = admin
        .query_one(
            "SELECT count(*) FROM switchyard.saved_acls WHERE restored_at IS NULL",
            &[],
        )
        .await
        .expect("marks")
        .get(0);
    assert_eq!(unmarked, 0, "saved rows kept and marked restored");

    let (user, password) = cell.secrets.role("app_writer").expect("role");
    let writer = switchyard_postgres::connect(&cell.blue.options("app", user, password))
        .await
        .expect("login");
    writer
        .batch_execute("INSERT INTO public.payments (account_id, amount) VALUES (1, 1)")
        .await
        .expect("app_writer writes again");

    assert!(
        plan(input.clone(), &deps)
            .await
            .expect("plan after restore")
            .is_empty(),
        "nothing left"
    );
    let second = run(input, &deps).await.expect("second restore");
    assert_eq!(second.databases[0].restored, 0, "{second:?}");
    assert_eq!(second.databases[0].unchanged, db.restored + db.unchanged);
    assert_eq!(acls(&admin).await, expected);
    assert_eq!(
        steps(&admin).await.len(),
        2,
        "a no-op restore grants nothing"
    );
}

/// The fencing token: without the lock, or with another run's, nothing is restored — the
/// ACLs stay fenced — and the error names the owner; `force` is the deliberate override.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lock_holder_restores_unless_forced() {
    use switchyard_errors::{Catalogued, ErrorName};
    let cell = LocalCell::start_quiet(100).await.expect("cell");
    let deps = cell.deps().expect("deps");
    let admin = cell.blue.superuser_client("app").await.expect("admin");
    cell.lock(TEST_RUN).await.expect("lock");
    revoke_writes::run(
        revoke_writes::Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
            pause_deadline: None,
        },
        &deps,
    )
    .await
    .expect("revoke");
    let fenced = acls(&admin).await;
    let as_run = |run_id: &str, force: bool| Input {
        cell: cell.document.clone(),
        run_id: run_id.to_owned(),
        force,
    };

    let error = run(as_run("someone-else", false), &deps)
        .await
        .expect_err("another run holds the lock");
    assert_eq!(error.error_name(), ErrorName::LockHeld, "{error}");
    assert!(
        error.to_string().contains(TEST_RUN),
        "names the owner: {error}"
    );
    let error = plan(as_run("someone-else", false), &deps)
        .await
        .expect_err("the dry run refuses alike");
    assert_eq!(error.error_name(), ErrorName::LockHeld, "{error}");

    cell.moto
        .clients
        .ssm
        .delete_parameter()
        .name(format!("{}lock", cell.document.journal_path()))
        .send()
        .await
        .expect("the lock released by hand");
    let error = run(as_run(TEST_RUN, false), &deps)
        .await
        .expect_err("nobody holds the lock");
    assert_eq!(error.error_name(), ErrorName::LockNotHeld, "{error}");
    assert_eq!(acls(&admin).await, fenced, "nothing was restored");

    let forced = run(as_run("an-operator", true), &deps)
        .await
        .expect("forced");
    assert!(forced.databases[0].restored > 0, "{forced:?}");
    assert_ne!(acls(&admin).await, fenced, "restored");
}
