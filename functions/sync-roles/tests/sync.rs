//! sync-roles against a local cell: roles from moto's SSM onto the real green server.

use aws_sdk_ssm::types::ParameterType;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use switchyard_operation::fence;
use switchyard_telemetry::Secret;
use sync_roles::{plan, run, Input};

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
    }
}

fn sorted(names: &[String]) -> Vec<&str> {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    names
}

const APP_ROLES: [&str; 6] = [
    "app_owner",
    "app_reader",
    "app_rw",
    "app_writer",
    "jobs_writer",
    "search_replicator",
];

/// The login roles that are not replication roles: NOLOGIN on green until the switch.
const FENCED: [&str; 4] = ["app_owner", "app_reader", "app_writer", "jobs_writer"];

/// Whether green's stored verifier for `role` verifies the password SSM holds.
async fn stored_password_verifies(
    green: &tokio_postgres::Client,
    cell: &LocalCell,
    role: &str,
) -> bool {
    let stored: String = green
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("pg_authid")
        .get(0);
    switchyard_postgres::scram_verifies(&stored, &ssm_password(cell, role).await)
}

/// Every application role on green with its stored verifier and attributes: what must not
/// move when nothing needs changing.
async fn green_roles(cell: &LocalCell) -> Vec<String> {
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .query(
            "SELECT concat_ws(' ', rolname, rolpassword, rolcanlogin, rolreplication, rolcreatedb, \
                    rolcreaterole, rolinherit, rolbypassrls) \
             FROM pg_authid WHERE rolname = ANY($1) ORDER BY rolname",
            &[&APP_ROLES.to_vec()],
        )
        .await
        .expect("pg_authid")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn ssm_password(cell: &LocalCell, role: &str) -> Secret {
    let name = format!("{}{role}", cell.document.credentials.application_roles_path);
    switchyard_aws::read_credentials(&cell.moto.clients.ssm, &name)
        .await
        .expect("role parameter")
        .password
}

/// Logs in to green directly as `role` with the password SSM holds.
async fn logs_in(cell: &LocalCell, role: &str) -> Result<(), String> {
    let password = ssm_password(cell, role).await;
    let client = switchyard_postgres::connect(&cell.green.options("app", role, &password))
        .await
        .map_err(|e| e.to_string())?;
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    assert_eq!(user, role);
    Ok(())
}

/// Every role on green (attributes, stored verifier) and every membership: what a dry run
/// must leave exactly as it was.
async fn green_state(green: &tokio_postgres::Client) -> Vec<String> {
    green
        .query(
            "SELECT concat_ws(' ', rolname, rolpassword, rolcanlogin, rolreplication, rolcreatedb, \
                    rolcreaterole, rolinherit, rolbypassrls) FROM pg_authid \
             UNION ALL \
             SELECT m.rolname || '→' || g.rolname FROM pg_auth_members a \
             JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.roleid \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("roles and memberships")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn assert_no_password(cell: &LocalCell, text: &str) {
    for password in cell.secrets.all_passwords() {
        assert!(
            !text.contains(password.expose()),
            "a password leaked: {text}"
        );
    }
}

async fn app_role_count(green: &tokio_postgres::Client) -> i64 {
    green
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)",
            &[&APP_ROLES.to_vec()],
        )
        .await
        .expect("count")
        .get(0)
}

async fn put_role(cell: &LocalCell, name: &str, value: &str) {
    cell.moto
        .clients
        .ssm
        .put_parameter()
        .name(format!(
            "{}{name}",
            cell.document.credentials.application_roles_path
        ))
        .value(value)
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("put parameter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_roles_fenced_until_the_switch_and_a_second_run_changes_nothing() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .batch_execute("CREATE ROLE reporting LOGIN")
        .await
        .expect("a hand-made role");
    assert!(
        logs_in(&cell, "app_writer").await.is_err(),
        "green has no app_writer before the sync"
    );

    // A dry run lists every role and membership, in the run's order, and changes nothing.
    let before = green_state(&green).await;
    let dry = plan(input(&cell), &deps).await.expect("plan");
    assert!(dry.dry_run);
    assert_eq!(dry.would.len(), APP_ROLES.len() + 2, "{:#?}", dry.would);
    assert!(dry.would.contains(
        &"on green: CREATE ROLE app_rw NOLOGIN NOREPLICATION NOCREATEDB NOCREATEROLE INHERIT NOBYPASSRLS"
            .to_owned()
    ), "{:#?}", dry.would);
    assert!(dry.would.contains(
        &"on green: CREATE ROLE app_writer NOLOGIN NOREPLICATION NOCREATEDB NOCREATEROLE INHERIT NOBYPASSRLS with its SSM password (as a SCRAM verifier)"
            .to_owned()
    ), "{:#?}", dry.would);
    assert_eq!(
        dry.would[APP_ROLES.len()..],
        [
            "on green: GRANT app_rw TO app_writer",
            "on green: GRANT app_rw TO jobs_writer"
        ]
    );
    let position = |name: &str| {
        dry.would
            .iter()
            .position(|l| l.contains(&format!("CREATE ROLE {name} ")))
    };
    assert!(
        position("app_rw") < position("app_writer"),
        "a group before its members"
    );
    assert_no_password(&cell, &serde_json::to_string(&dry).expect("json"));
    assert_eq!(
        green_state(&green).await,
        before,
        "a dry run changes nothing"
    );

    let first = run(input(&cell), &deps).await.expect("first run");
    assert_eq!(sorted(&first.created), APP_ROLES);
    assert!(
        first.altered.is_empty() && first.unchanged.is_empty() && first.password_set.is_empty()
    );
    assert_eq!(
        sorted(&first.memberships_granted),
        ["app_writer→app_rw", "jobs_writer→app_rw"]
    );
    assert_eq!(first.extra_roles.first, ["reporting"]);
    assert_no_password(&cell, &serde_json::to_string(&first).expect("json"));

    // Until the switch no application login reaches green (nothing but replication may
    // write there), except a replication role: the downstream's, needed inside the window.
    assert_eq!(sorted(&first.fenced), FENCED);
    for role in FENCED {
        let refused = logs_in(&cell, role).await.expect_err("fenced");
        assert!(
            refused.contains("not permitted to log in"),
            "{role}: {refused}"
        );
    }
    logs_in(&cell, "search_replicator")
        .await
        .expect("a replication role logs in to green");
    // The passwords are there for the switch: app_writer's holds @ ! ' : / intact.
    for role in ["app_writer", "app_owner"] {
        assert!(
            stored_password_verifies(&green, &cell, role).await,
            "{role}"
        );
    }
    let member: bool = green
        .query_one("SELECT pg_has_role('app_writer', 'app_rw', 'MEMBER')", &[])
        .await
        .expect("membership")
        .get(0);
    assert!(member, "app_writer is in app_rw on green");
    let (replication, rw_login): (bool, bool) = {
        let row = green
            .query_one(
                "SELECT (SELECT rolreplication FROM pg_roles WHERE rolname = 'search_replicator'), \
                        (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_rw')",
                &[],
            )
            .await
            .expect("attributes");
        (row.get(0), row.get(1))
    };
    assert!(replication && !rw_login);

    let before = green_roles(&cell).await;
    let second = run(input(&cell), &deps).await.expect("second run");
    assert_eq!(sorted(&second.unchanged), APP_ROLES);
    assert!(second.created.is_empty() && second.altered.is_empty());
    assert!(second.password_set.is_empty() && second.memberships_granted.is_empty());
    assert_eq!(second.extra_roles.first, ["reporting"]);
    assert_eq!(green_roles(&cell).await, before, "nothing moved on green");
    let reporting: i64 = green
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'reporting'",
            &[],
        )
        .await
        .expect("reporting")
        .get(0);
    assert_eq!(reporting, 1, "an extra role is reported, never dropped");

    // A login opened by hand before the switch is closed again and its session ended.
    green
        .batch_execute("ALTER ROLE app_writer LOGIN")
        .await
        .expect("opened by hand");
    let password = ssm_password(&cell, "app_writer").await;
    let early = switchyard_postgres::connect(&cell.green.options("app", "app_writer", &password))
        .await
        .expect("app_writer on green while its login is open");
    let before = green_state(&green).await;
    let dry = plan(input(&cell), &deps).await.expect("plan");
    assert_eq!(
        dry.would,
        [
            "on green: ALTER ROLE app_writer: NOLOGIN",
            "on green: end every session of app_owner, app_reader, app_writer, jobs_writer (1 now; kept from logging in until the switch)"
        ]
    );
    assert_eq!(
        green_state(&green).await,
        before,
        "a dry run changes nothing"
    );
    let closed = run(input(&cell), &deps).await.expect("closing run");
    assert_eq!(closed.altered.first, ["app_writer"]);
    assert_eq!(closed.sessions_ended, 1);
    assert!(
        early.simple_query("SELECT 1").await.is_err(),
        "its session is ended"
    );
    assert!(logs_in(&cell, "app_writer").await.is_err());

    // Once the cell has switched to green, a rerun writes the roles as SSM says: logins open.
    fence::mark_switched(&deps, &cell.document, TEST_RUN)
        .await
        .expect("switched");
    let after = run(input(&cell), &deps)
        .await
        .expect("run after the switch");
    assert_eq!(sorted(&after.altered), FENCED);
    assert!(after.fenced.is_empty() && after.sessions_ended == 0);
    for role in ["app_writer", "app_owner", "search_replicator"] {
        logs_in(&cell, role)
            .await
            .expect("logs in to green with its SSM password");
    }

    // Drift on green is put back: a changed password and an attribute SSM does not grant.
    green
        .batch_execute(
            "ALTER ROLE app_reader CREATEDB PASSWORD 'drifted'; REVOKE app_rw FROM jobs_writer",
        )
        .await
        .expect("drift");
    assert!(logs_in(&cell, "app_reader").await.is_err());
    let before = green_state(&green).await;
    let dry = plan(input(&cell), &deps).await.expect("plan");
    assert_eq!(
        dry.would,
        [
            "on green: ALTER ROLE app_reader: NOCREATEDB, set its password from SSM (green's does not verify)",
            "on green: GRANT app_rw TO jobs_writer"
        ]
    );
    assert_eq!(
        green_state(&green).await,
        before,
        "a dry run changes nothing"
    );
    let third = run(input(&cell), &deps).await.expect("third run");
    assert_eq!(third.altered.first, ["app_reader"]);
    assert_eq!(third.memberships_granted.first, ["jobs_writer→app_rw"]);
    logs_in(&cell, "app_reader")
        .await
        .expect("password restored");
    let createdb: bool = green
        .query_one(
            "SELECT rolcreatedb FROM pg_roles WHERE rolname = 'app_reader'",
            &[],
        )
        .await
        .expect("createdb")
        .get(0);
    assert!(!createdb);
    assert!(plan(input(&cell), &deps).await.expect("plan").is_empty());
}

/// As on Aurora: the orchestrator is not a superuser and cannot read `pg_authid`, so
/// existing passwords are set (and reported) rather than compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pg_authid_passwords_are_set_and_reported() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let green = cell.green.superuser_client("app").await.expect("green");
    let limited = Secret::new("limited-Pw-1");
    green
        .batch_execute(&format!(
            "CREATE ROLE limited LOGIN CREATEROLE REPLICATION PASSWORD {}",
            switchyard_postgres::quote::literal(&switchyard_postgres::scram_verifier(&limited))
        ))
        .await
        .expect("a non-superuser orchestrator");
    cell.moto
        .clients
        .ssm
        .put_parameter()
        .name(&cell.document.credentials.orchestrator_parameter)
        .value(serde_json::json!({"username": "limited", "password": limited.expose()}).to_string())
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("orchestrator parameter");

    let first = run(input(&cell), &deps).await.expect("first run");
    assert_eq!(sorted(&first.created), APP_ROLES);
    assert!(first.extra_roles.is_empty(), "{:?}", first.extra_roles);
    let second = run(input(&cell), &deps).await.expect("second run");
    assert_eq!(
        second.unchanged.first,
        ["app_rw"],
        "a group has no password to set"
    );
    assert_eq!(
        sorted(&second.password_set),
        [
            "app_owner",
            "app_reader",
            "app_writer",
            "jobs_writer",
            "search_replicator"
        ]
    );
    assert!(second.created.is_empty() && second.altered.is_empty());
    assert!(second.memberships_granted.is_empty());
    logs_in(&cell, "search_replicator")
        .await
        .expect("still logs in");
    assert!(
        logs_in(&cell, "app_writer").await.is_err(),
        "fenced until the switch, whoever the orchestrator is"
    );
    // Unreadable passwords are set on every run, and the dry run says so.
    let dry = plan(input(&cell), &deps).await.expect("plan");
    assert_eq!(dry.would.len(), 5, "{:#?}", dry.would);
    assert_eq!(
        dry.would[0],
        "on green: ALTER ROLE app_owner: set its password from SSM (green's cannot be read to compare)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_parameters_before_touching_green() {
    let cell = start().await;
    let deps = cell.deps().expect("deps");
    let green = cell.green.superuser_client("app").await.expect("green");
    put_role(
        &cell,
        "boss",
        r#"{"username": "boss", "password": "x1", "attributes": ["LOGIN", "SUPERUSER"]}"#,
    )
    .await;
    let err = plan(input(&cell), &deps)
        .await
        .expect_err("a dry run refuses it too");
    assert_eq!(err.error_name(), ErrorName::InvalidInput);
    let err = run(input(&cell), &deps)
        .await
        .expect_err("superuser refused");
    assert_eq!(err.error_name(), ErrorName::InvalidInput);
    let message = err.to_failure().message().to_owned();
    assert!(
        message.contains("/switchyard/local-a/roles/boss"),
        "{message}"
    );
    assert!(message.contains("SUPERUSER"), "{message}");
    assert_eq!(app_role_count(&green).await, 0, "no role was created");

    let leaked = "hunter2@!':/";
    put_role(
        &cell,
        "boss",
        &format!(r#"{{"username": "boss", "password": "{leaked}", "attributes": LOGIN}}"#),
    )
    .await;
    let err = run(input(&cell), &deps)
        .await
        .expect_err("malformed refused");
    assert_eq!(err.error_name(), ErrorName::SecretUnavailable);
    let message = err.to_failure().message().to_owned();
    assert!(
        message.contains("/switchyard/local-a/roles/boss"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert_no_password(&cell, &message);
    assert_eq!(app_role_count(&green).await, 0, "no role was created");

    put_role(
        &cell,
        "boss",
        r#"{"username": "boss", "attributes": ["NOLOGIN"], "member_of": ["no_such_group"]}"#,
    )
    .await;
    let err = run(input(&cell), &deps)
        .await
        .expect_err("unknown group refused");
    assert_eq!(err.error_name(), ErrorName::InvalidInput);
    assert!(err.to_failure().message().contains("no_such_group"));
    assert_eq!(app_role_count(&green).await, 0, "no role was created");
}
