//! The local cell behaves like the AWS cell it stands for. Every test starts its own cell
//! (real PostgreSQL, PgBouncer and moto) and tears it down, pass or fail.

use std::time::{Duration, Instant};

use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{audit_keys, CellCa, CellOptions, Install, LocalCell};
use switchyard_operation::Side;
use switchyard_postgres::{connect, ConnectOptions, Tls};

const SMALL_ROWS: u32 = 300;

async fn start_cell(run_direct_writers: bool) -> LocalCell {
    let install = Install::from_env();
    let mut options = CellOptions::from_env(&install).expect("options");
    options.rows = SMALL_ROWS;
    options.run_direct_writers = run_direct_writers;
    LocalCell::start(&options).await.expect("local cell starts")
}

async fn version_num(opts: &ConnectOptions) -> i32 {
    let client = connect(opts).await.expect("connects");
    server_version_num(&client).await
}

async fn server_version_num(client: &tokio_postgres::Client) -> i32 {
    let rows = client
        .simple_query("SELECT current_setting('server_version_num')")
        .await
        .expect("query");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get(0).map(|v| v.parse().expect("number"))
            }
            _ => None,
        })
        .expect("a row")
}

/// Orchestrator login (the bootstrap superuser, present on both clusters) through an
/// emulated cluster endpoint.
fn orchestrator_via(cell: &LocalCell, addr: std::net::SocketAddr) -> ConnectOptions {
    let mut opts = cell.blue.superuser_options(&cell.document.databases[0]);
    opts.host = addr.ip().to_string();
    opts.port = addr.port();
    opts
}

async fn wait_for(what: &str, budget: Duration, cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < budget, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rename(cell: &LocalCell, from: &str, to: &str) {
    cell.moto
        .clients
        .rds
        .modify_db_cluster()
        .db_cluster_identifier(from)
        .new_db_cluster_identifier(to)
        .apply_immediately(true)
        .send()
        .await
        .expect("rename in moto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_writes_through_pgbouncer_land_on_blue_exactly_once() {
    let cell = start_cell(false).await;
    let ledger = cell.start_ledger(2, Duration::ZERO).expect("ledger");
    let started = Instant::now();
    while ledger.acknowledged() < 50 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = ledger.stop().await;
    assert!(
        tally.acks.len() >= 50,
        "only {} acknowledged; errors: {:?}",
        tally.acks.len(),
        tally.errors
    );
    assert_eq!(tally.failed, 0, "errors: {:?}", tally.errors);

    let keys = tally.keys();
    let on_blue = audit_keys(
        &cell.blue.superuser_options("app"),
        ("public", "payments"),
        "memo",
        &keys,
    )
    .await
    .expect("audit");
    assert_eq!(on_blue.present_once, keys.len(), "{on_blue:?}");
    assert_eq!((on_blue.missing, on_blue.duplicated), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_in_moto_moves_new_connections_and_keeps_open_ones() {
    let cell = start_cell(false).await;
    let blue_id = cell.document.blue.cluster_identifier.clone();
    let green_id = cell.document.green.cluster_identifier.clone();
    let endpoint = cell.endpoint(&blue_id).expect("endpoint");

    let open = connect(&orchestrator_via(&cell, endpoint))
        .await
        .expect("connect before rename");
    assert_eq!(server_version_num(&open).await, cell.blue.version_num);

    let timings = cell.names().timings();
    let parked = format!("{blue_id}-blue-{}", cell.blue.major);
    let renamed = Instant::now();
    rename(&cell, &blue_id, &parked).await;
    // Like a cached DNS answer, the name still leads to the cluster that left it...
    let cached = version_num(&orchestrator_via(&cell, endpoint)).await;
    assert!(
        cached == cell.blue.version_num || renamed.elapsed() >= timings.dns_linger,
        "the old answer lingers for {:?}",
        timings.dns_linger
    );
    // ...then, between the two renames, nowhere: like NXDOMAIN, a connection fails.
    let until = |what: &'static str| {
        let cell = &cell;
        async move {
            let started = Instant::now();
            loop {
                let reached = match connect(&orchestrator_via(cell, endpoint)).await {
                    Ok(client) => Some(server_version_num(&client).await),
                    Err(_) => None,
                };
                let done = match what {
                    "nowhere" => reached.is_none(),
                    _ => reached == Some(cell.green.version_num),
                };
                if done {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the name never led {what}: {reached:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until("nowhere").await;
    rename(&cell, &green_id, &blue_id).await;
    until("to green").await;
    assert_eq!(
        server_version_num(&open).await,
        cell.blue.version_num,
        "open connection stayed"
    );
    assert_ne!(
        cell.blue.version_num / 10000,
        cell.green.version_num / 10000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_green_in_the_target_group_moves_new_nlb_connections() {
    use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
    let cell = start_cell(false).await;
    let nlb = cell.nlb_endpoint();
    assert_eq!(
        version_num(&orchestrator_via(&cell, nlb)).await,
        cell.blue.version_num
    );

    let target = |ip: &str, port: u16| {
        TargetDescription::builder()
            .id(ip)
            .port(i32::from(port))
            .build()
    };
    let elbv2 = &cell.moto.clients.elbv2;
    elbv2
        .register_targets()
        .target_group_arn(&cell.target_group_arn)
        .targets(target(&cell.green.ip, cell.green.port))
        .send()
        .await
        .expect("register green");
    elbv2
        .deregister_targets()
        .target_group_arn(&cell.target_group_arn)
        .targets(target(&cell.blue.ip, cell.blue.port))
        .send()
        .await
        .expect("deregister blue");
    assert_eq!(
        version_num(&orchestrator_via(&cell, nlb)).await,
        cell.green.version_num
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writers_follow_the_service_desired_count() {
    let cell = start_cell(true).await;
    let service = cell.document.direct_writers[0].clone();
    let writers = &cell.direct_writers()[0];
    wait_for("jobs to be written", Duration::from_secs(30), || {
        writers.acknowledged() >= 10
    })
    .await;
    assert_eq!(writers.running(), 2);

    let set_desired = |n: i32| {
        cell.moto
            .clients
            .ecs
            .update_service()
            .cluster(&service.ecs_cluster)
            .service(&service.service)
            .desired_count(n)
            .send()
    };
    set_desired(0).await.expect("scale to 0");
    wait_for("tasks to drain", Duration::from_secs(35), || {
        writers.running() == 0
    })
    .await;
    let after_drain = writers.acknowledged();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        writers.acknowledged(),
        after_drain,
        "writes continued at desired count 0"
    );

    set_desired(1).await.expect("scale to 1");
    wait_for("writes to restart", Duration::from_secs(30), || {
        writers.acknowledged() >= after_drain + 5
    })
    .await;
    assert_eq!(writers.running(), 1);

    let tally = writers.tally();
    let keys = tally.keys();
    let audit = audit_keys(
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
async fn tls_is_the_only_road_to_green_and_to_pgbouncer() {
    let cell = start_cell(false).await;
    let deps = cell.deps().expect("deps");
    let db = cell.document.databases[0].clone();
    // Every connection a function makes is verify-full against the cell's CA, either side.
    for side in [Side::Blue, Side::Green] {
        let client = deps
            .connect(&cell.document, side, &db)
            .await
            .unwrap_or_else(|e| panic!("{side:?}: {e}"));
        let row = client
            .query_one(
                "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl");
        assert!(
            row.get::<_, bool>(0),
            "{side:?}: the connection is not encrypted"
        );
    }
    let plain = |mut options: ConnectOptions| {
        options.tls = Tls::Disabled;
        options
    };
    // Green refuses plain TCP, as Aurora does from 15 (rds.force_ssl = 1); blue on 14
    // takes both, as Aurora 14 does by default.
    let refused = connect(&plain(cell.green.superuser_options(&db)))
        .await
        .expect_err("green refuses plain TCP");
    assert!(refused.to_string().contains("no encryption"), "{refused}");
    if cell.blue.major < 15 {
        connect(&plain(cell.blue.superuser_options(&db)))
            .await
            .expect("blue on 14 takes plain TCP");
    }
    // PgBouncer serves TLS to its clients and refuses plain TCP.
    connect(&plain(cell.via_pgbouncer("app_writer").expect("options")))
        .await
        .expect_err("PgBouncer refuses plain TCP");
    connect(&cell.via_pgbouncer("app_writer").expect("options"))
        .await
        .expect("PgBouncer over verify-full");
    // A CA the cell's servers do not chain to is refused by name, before any login.
    let other = CellCa::generate("other", &cell.run_dir.join("other-ca.pem")).expect("CA");
    let mut untrusted = cell.green.superuser_options(&db);
    untrusted.tls = Tls::VerifyFull {
        ca_bundle: other.bundle().to_owned(),
    };
    let refused = connect(&untrusted).await.expect_err("another CA");
    assert_eq!(refused.error_name(), ErrorName::TlsRefused, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_special_password_from_ssm_authenticates_through_pgbouncer_and_directly() {
    let cell = start_cell(false).await;
    let parameter = format!(
        "{}app_writer",
        cell.document.credentials.application_roles_path
    );
    let creds = switchyard_aws::read_credentials(&cell.moto.clients.ssm, &parameter)
        .await
        .expect("SSM read");
    for c in ['@', '!', '\'', ':', '/'] {
        assert!(creds.password.expose().contains(c), "password lacks {c}");
    }
    let mut via_pgbouncer = cell.via_pgbouncer("app_writer").expect("options");
    via_pgbouncer.password = creds.password.clone();
    let direct = cell.blue.options("app", &creds.username, &creds.password);
    for opts in [via_pgbouncer, direct] {
        let client = connect(&opts)
            .await
            .unwrap_or_else(|e| panic!("{}:{}: {e}", opts.host, opts.port));
        let rows = client
            .simple_query("SELECT current_user")
            .await
            .expect("query");
        let user = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(user.as_deref(), Some("app_writer"));
    }
    let mut wrong = cell.via_pgbouncer("app_writer").expect("options");
    wrong.password = switchyard_telemetry::Secret::new("not-the-password");
    assert!(
        connect(&wrong).await.is_err(),
        "a wrong password authenticated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_replication_from_blue_to_green_carries_the_fixture_and_new_writes() {
    let cell = start_cell(false).await;
    // Schema by pg_dump 18 without owners or grants, then one FOR ALL TABLES pair.
    cell.replicate_directly().await.expect("replication set up");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");

    let ledger = cell
        .start_ledger(2, Duration::from_millis(5))
        .expect("ledger");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = ledger.stop().await;
    assert!(!tally.acks.is_empty(), "{:?}", tally.errors);
    let keys = tally.keys();
    let started = Instant::now();
    loop {
        let audit = audit_keys(
            &cell.green.superuser_options("app"),
            ("public", "payments"),
            "memo",
            &keys,
        )
        .await
        .expect("audit");
        if audit.present_once == keys.len() {
            assert_eq!(audit.duplicated, 0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "green is missing writes: {audit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count_sql = "SELECT format('%I.%I', n.nspname, c.relname), \
        (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint \
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
        WHERE c.relkind = 'r' AND n.nspname IN ('public', 'billing') ORDER BY 1";
    let counts = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    };
    let on_blue = counts(blue.query(count_sql, &[]).await.expect("blue counts"));
    let on_green = counts(green.query(count_sql, &[]).await.expect("green counts"));
    assert!(
        on_blue
            .iter()
            .any(|(t, n)| t == "public.events_2026_h1" && *n > 0),
        "{on_blue:?}"
    );
    assert_eq!(on_blue, on_green);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_pause_waits_for_open_transactions_and_resume_releases_waiters() {
    let cell = start_cell(false).await;
    let admin = cell.pgbouncer_admin().await.expect("admin console");

    let holder = connect(&cell.via_pgbouncer("app_writer").expect("opts"))
        .await
        .expect("client");
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open transaction");
    let pause = tokio::time::timeout(Duration::from_millis(500), admin.pause("app")).await;
    assert!(
        pause.is_err(),
        "PAUSE returned while a transaction was open"
    );
    // Dropping the admin connection leaves the PAUSE in force (a cancel request would
    // have resumed everything): the new session must still see the database paused.
    drop(admin);
    let admin = cell.pgbouncer_admin().await.expect("admin console again");
    let paused = admin.show_databases().await.expect("show databases");
    assert!(
        paused.iter().any(|d| d.name == "app" && d.paused),
        "{paused:?}"
    );
    holder.batch_execute("COMMIT").await.expect("commit");

    // A new client's query waits while paused and runs after RESUME.
    let waiter_opts = cell.via_pgbouncer("app_writer").expect("opts");
    let waiter = tokio::spawn(async move {
        let c = connect(&waiter_opts).await.expect("connect while paused");
        c.simple_query("SELECT 1").await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "a query ran while paused");
    admin.resume("app").await.expect("resume");
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("released")
        .expect("join")
        .expect("query");
    assert_eq!(
        admin.resume("app").await.expect("second resume"),
        switchyard_postgres::Resumed::WasNotPaused
    );

    admin.set("dns_max_ttl", "1").await.expect("set");
    assert_eq!(
        admin
            .config_value("dns_max_ttl")
            .await
            .expect("show config")
            .as_deref(),
        Some("1")
    );
    // Pins FIELD-NOTES' open question: RELOAD re-reads the file and reverts a SET
    // (1.18), so a lowered TTL does not survive a reload during the window.
    admin.reload().await.expect("reload");
    let after_reload = admin
        .config_value("dns_max_ttl")
        .await
        .expect("show config");
    assert_eq!(
        after_reload.as_deref(),
        Some("15"),
        "the cell's file says 15"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_follow_a_rename_only_late_and_a_connection_checks_where_it_landed() {
    let cell = start_cell(false).await;
    let deps = cell.deps().expect("deps");
    let rds = &cell.moto.clients.rds;
    let doc = &cell.document;
    let blue_id = doc.blue.cluster_identifier.clone();
    let local = &deps.endpoints;
    let before = local.resolve(rds, &blue_id).await.expect("resolve");
    assert_eq!(
        format!("{}:{}", before.host, before.port),
        cell.endpoint(&blue_id).expect("name").to_string(),
        "a function dials the name, not the server"
    );
    assert_eq!(before.engine_version, cell.blue.version);
    let (client, reached) = deps
        .connect_identifier(doc, &blue_id, "app")
        .await
        .expect("the name leads to blue");
    assert_eq!(server_version_num(&client).await, cell.blue.version_num);
    assert_eq!(reached.resource_id, before.resource_id);
    // The writer's own endpoint, from the RDS API: on AWS the writer instance's (never the
    // cluster's DNS name), locally the server behind the cluster's resource id.
    let aws_writer = switchyard_aws::EndpointResolver::Aws
        .writer(rds, &blue_id)
        .await
        .expect("the writer in moto");
    assert_eq!(aws_writer.instance, format!("{blue_id}-1"));
    assert!(
        !aws_writer.host.contains(".cluster-"),
        "an instance endpoint, not the cluster's: {}",
        aws_writer.host
    );
    assert_eq!(aws_writer.cluster_resource_id, before.resource_id);
    let local_writer = local.writer(rds, &blue_id).await.expect("local writer");
    assert_eq!(
        (local_writer.host.as_str(), local_writer.port),
        (cell.blue.ip.as_str(), cell.blue.port)
    );

    // A switchover's renames, while the cell's name is cached on blue longer than usual.
    cell.names().hold(&blue_id);
    let parked = format!("{blue_id}-blue-{}", cell.blue.major);
    rename(&cell, &blue_id, &parked).await;
    let green_id = doc.green.cluster_identifier.clone();
    rename(&cell, &green_id, &blue_id).await;
    let green_resource = local
        .resolve(rds, &blue_id)
        .await
        .expect("the API says green")
        .resource_id;
    assert_ne!(green_resource, before.resource_id);
    let wrong = deps
        .connect_identifier(doc, &blue_id, "app")
        .await
        .expect_err("the name still leads to blue");
    assert_eq!(wrong.error_name(), ErrorName::WrongServer, "{wrong}");
    assert!(wrong.to_string().contains(&green_resource), "{wrong}");
    let direct = deps
        .connect(doc, Side::Blue, "app")
        .await
        .expect_err("Deps::connect checks too");
    assert_eq!(direct.error_name(), ErrorName::WrongServer, "{direct}");

    // Released, the name follows the API once the emulated DNS delay has passed.
    cell.names().release(&blue_id);
    let started = Instant::now();
    let client = loop {
        match deps.connect_identifier(doc, &blue_id, "app").await {
            Ok((client, reached)) => {
                assert_eq!(reached.resource_id, green_resource);
                break client;
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.error_name(),
                        ErrorName::WrongServer | ErrorName::DatabaseUnavailable
                    ),
                    "only a lagging name: {e}"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the name never followed the rename: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(server_version_num(&client).await, cell.green.version_num);
    let delays = cell.names().emulated_delays();
    assert!(
        delays.iter().any(
            |d| d.identifier == blue_id && d.holder.as_deref() == Some(green_resource.as_str())
        ),
        "the switch of the cell's name is among the emulated delays: {delays:?}"
    );
    let parked_endpoint = local.resolve(rds, &parked).await.expect("resolve parked");
    assert_eq!(
        parked_endpoint.resource_id, before.resource_id,
        "resource ids survive renames"
    );

    let aws = switchyard_aws::EndpointResolver::Aws;
    let dns = aws.resolve(rds, &parked).await.expect("aws mode");
    assert!(
        dns.host.starts_with(&format!("{parked}.cluster-")),
        "{}",
        dns.host
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_stops_every_process_the_cell_started() {
    let cell = start_cell(true).await;
    let pids = cell.pids();
    assert_eq!(pids.len(), 5, "blue, green, search, pgbouncer, moto");
    let registry = Install::from_env().registry();
    for pid in &pids {
        assert!(
            registry.join(pid.to_string()).exists(),
            "pid {pid} not recorded"
        );
    }
    let started: Vec<_> = pids
        .iter()
        .map(|&pid| (pid, switchyard_local_cell::process_start_time(pid)))
        .collect();
    assert!(
        started.iter().all(|(_, t)| t.is_some()),
        "every server is running: {started:?}"
    );
    cell.shutdown();
    for (pid, start_time) in started {
        // Same pid and same start time would be the same process still running.
        assert_ne!(
            switchyard_local_cell::process_start_time(pid),
            start_time,
            "pid {pid} still running"
        );
        assert!(
            !registry.join(pid.to_string()).exists(),
            "pid {pid} still recorded"
        );
    }
}
