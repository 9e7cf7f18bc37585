//! finalize-replication on a local cell with real replication (start-replication, caught
//! up per check-replication): disable stops green following blue without losing its
//! place, enable resumes it, drop cleans both sides and spares the downstream slot.

use std::time::{Duration, Instant};

use finalize_replication::{plan, run, Input, Mode, Output};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{audit_keys, LocalCell, TEST_RUN};
use switchyard_operation::guard::{journaled, Journaled, Watched};
use switchyard_operation::Deps;

const NAMES: [&str; 2] = ["switchyard_payments", "switchyard_rest"];

async fn cell() -> LocalCell {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell.copy_schema_directly().await.expect("schema on green");
    cell
}

/// start-replication, then check-replication until it stops answering `NotCaughtUp`.
async fn replicate(cell: &LocalCell, deps: &Deps) {
    start_replication::run(
        start_replication::Input {
            cell: cell.document.clone(),
            run_id: TEST_RUN.to_owned(),
            force: false,
            idle_transaction_seconds: 5,
            lock_timeout_seconds: 30,
        },
        deps,
    )
    .await
    .expect("start-replication");
    let started = Instant::now();
    loop {
        let input = check_replication::Input {
            cell: cell.document.clone(),
        };
        match check_replication::run(input, deps).await {
            Err(e) if e.error_name() == ErrorName::NotCaughtUp => {
                assert!(started.elapsed() < Duration::from_secs(60), "{e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => {
                other.expect("caught up");
                return;
            }
        }
    }
}

fn input(cell: &LocalCell, mode: Mode) -> Input {
    Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        mode,
        old_blue_identifier: None,
    }
}

fn changed(output: &Output) -> Vec<(String, bool)> {
    output.databases[0]
        .subscriptions
        .iter()
        .map(|s| (s.name.clone(), s.changed))
        .collect()
}

fn all(changed: bool) -> Vec<(String, bool)> {
    NAMES.iter().map(|n| ((*n).to_owned(), changed)).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

async fn strings(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .expect(sql)
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Green's subscription workers that have a process, as `name:apply|sync`.
async fn workers(cell: &LocalCell) -> Vec<String> {
    let green = cell.green.superuser_client("app").await.expect("green");
    strings(
        &green,
        "SELECT subname::text || CASE WHEN relid IS NULL THEN ':apply' ELSE ':sync' END
           FROM pg_stat_subscription WHERE pid IS NOT NULL ORDER BY 1",
    )
    .await
}

/// Acknowledged ledger writes on blue (through PgBouncer), at least `count`.
async fn write(cell: &LocalCell, count: usize) -> Vec<String> {
    let ledger = cell
        .start_ledger(1, Duration::from_millis(5))
        .expect("ledger");
    let started = Instant::now();
    while ledger.acknowledged() < count && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = ledger.stop().await.keys();
    assert!(keys.len() >= count, "the ledger wrote {} rows", keys.len());
    keys
}

/// Where green's reverse slot starts (its confirmed position), if it exists.
async fn slot_lsn(green: &tokio_postgres::Client) -> Option<String> {
    green
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'switchyard_reverse'",
            &[],
        )
        .await
        .expect("reading the reverse slot")
        .map(|r| r.get(0))
}

/// An LSN as a number, to compare.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_stops_green_following_blue_and_enable_resumes_without_a_missed_row() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");

    let err = run(input(&cell, Mode::Disable), &deps)
        .await
        .expect_err("nothing to disable yet");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    assert!(err.to_string().contains("run start-replication"), "{err}");
    let err = plan(input(&cell, Mode::Disable), &deps)
        .await
        .expect_err("the plan stops the same way");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
    let err = run(
        Input {
            old_blue_identifier: Some("x".into()),
            ..input(&cell, Mode::Disable)
        },
        &deps,
    )
    .await
    .expect_err("old_blue_identifier outside drop");
    assert_eq!(err.error_name(), ErrorName::InvalidInput, "{err}");

    replicate(&cell, &deps).await;
    assert_eq!(
        workers(&cell).await,
        names(&["switchyard_payments:apply", "switchyard_rest:apply"])
    );

    let alter = |verb: &str| -> Vec<String> {
        NAMES
            .iter()
            .map(|n| format!("ALTER SUBSCRIPTION {n} {verb} on green (database app)"))
            .collect()
    };
    let dry = plan(input(&cell, Mode::Disable), &deps)
        .await
        .expect("plan disable");
    let mut expected = alter("DISABLE");
    expected.push("then wait up to 30 s for their apply workers to stop (database app)".into());
    expected.push("install the DDL guard on green (database app) once its subscriptions stopped: DDL on green in the rollback window is journaled".into());
    expected.push("then create publication switchyard_reverse (the tables green's subscriptions replicate) and slot switchyard_reverse on green (database app): the way back after the switch".into());
    assert_eq!(dry.would, expected);
    let green = cell.green.superuser_client("app").await.expect("green");
    let enabled_sql =
        "SELECT subname::text || ':' || subenabled::text FROM pg_subscription ORDER BY 1";
    assert_eq!(
        strings(&green, enabled_sql).await,
        names(&["switchyard_payments:true", "switchyard_rest:true"]),
        "the plan disabled nothing"
    );
    assert_eq!(
        workers(&cell).await,
        names(&["switchyard_payments:apply", "switchyard_rest:apply"])
    );

    // A way back left on green from before (an abort that never finished): its slot is
    // older than this disable and would send back changes green applied from blue.
    for sql in [
        "CREATE PUBLICATION switchyard_reverse FOR TABLE public.accounts",
        "SELECT pg_create_logical_replication_slot('switchyard_reverse', 'pgoutput')",
    ] {
        green.batch_execute(sql).await.expect("a stale way back");
    }
    let stale_lsn = slot_lsn(&green).await.expect("stale slot");

    let disabled = run(input(&cell, Mode::Disable), &deps)
        .await
        .expect("disable");
    assert_eq!(disabled.mode, Mode::Disable);
    assert_eq!(changed(&disabled), all(true));
    assert!(
        workers(&cell).await.is_empty(),
        "{:?}",
        workers(&cell).await
    );
    let way_back = disabled.databases[0].reverse.clone().expect("the way back");
    assert!(
        way_back.slot_changed && way_back.publication_changed,
        "{way_back:?}"
    );
    let fresh_lsn = slot_lsn(&green).await.expect("the way back's slot");
    assert_eq!(way_back.slot_lsn.as_deref(), Some(fresh_lsn.as_str()));
    assert!(
        lsn(&fresh_lsn) > lsn(&stale_lsn),
        "the stale slot was replaced by one made after the disable: {stale_lsn} → {fresh_lsn}"
    );
    // Exactly the tables green's subscriptions replicate, the marker among them.
    assert_eq!(
        strings(&green, "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'switchyard_reverse' ORDER BY 1").await,
        strings(
            &green,
            "SELECT DISTINCT n.nspname || '.' || c.relname FROM pg_subscription_rel sr
               JOIN pg_class c ON c.oid = sr.srrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              ORDER BY 1"
        )
        .await
    );
    // From the disable on, DDL on green is journaled: ours (the publication) is vouched
    // for, anyone else's is named.
    assert!(way_back.guard_installed, "{way_back:?}");
    assert!(switchyard_operation::guard::in_place(&green)
        .await
        .expect("guard"));
    assert_eq!(
        journaled(&green, "app", Watched::Green)
            .await
            .expect("journal"),
        Journaled::Clean
    );
    green
        .batch_execute("COMMENT ON TABLE public.accounts IS 'changed on green'")
        .await
        .expect("DDL on green");
    match journaled(&green, "app", Watched::Green)
        .await
        .expect("journal")
    {
        Journaled::Unvouched(message) => assert!(
            message.contains("COMMENT ON TABLE public.accounts IS 'changed on green'")
                && message.contains("apply the same changes to the old blue"),
            "{message}"
        ),
        other => panic!("the comment on green is named: {other:?}"),
    }
    let again = run(input(&cell, Mode::Disable), &deps)
        .await
        .expect("disable again");
    assert_eq!(changed(&again), all(false));
    let kept = again.databases[0].reverse.clone().expect("the way back");
    assert!(
        !kept.slot_changed && !kept.publication_changed && kept.slot_lsn.is_none(),
        "the way back made by the first call is kept: {kept:?}"
    );
    assert_eq!(slot_lsn(&green).await.as_deref(), Some(fresh_lsn.as_str()));
    let dry = plan(input(&cell, Mode::Disable), &deps)
        .await
        .expect("plan disable again");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");
    let dry = plan(input(&cell, Mode::Enable), &deps)
        .await
        .expect("plan enable");
    assert_eq!(
        &dry.would[..2],
        [
            "drop the DDL guard on green (database app) first: green is blue's replica again",
            "drop slot and publication switchyard_reverse on green (database app) first: blue's changes must not come back to blue"
        ]
    );
    assert_eq!(&dry.would[2..4], &alter("ENABLE")[..]);
    assert_eq!(
        strings(&green, enabled_sql).await,
        names(&["switchyard_payments:false", "switchyard_rest:false"]),
        "the plan enabled nothing"
    );

    let keys = write(&cell, 30).await;
    let on_blue = audit_keys(
        &cell.blue.superuser_options("app"),
        ("public", "payments"),
        "memo",
        &keys,
    )
    .await
    .expect("audit blue");
    assert_eq!(on_blue.present_once as usize, keys.len(), "{on_blue:?}");
    // Time enough for a running worker to have applied them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let green_options = cell.green.superuser_options("app");
    let on_green = audit_keys(&green_options, ("public", "payments"), "memo", &keys)
        .await
        .expect("audit green");
    assert_eq!(on_green.missing as usize, keys.len(), "{on_green:?}");
    // The slots stay on blue while disabled.
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    assert_eq!(
        strings(&blue, "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'switchyard%' ORDER BY 1").await,
        names(&NAMES)
    );

    let enabled = run(input(&cell, Mode::Enable), &deps)
        .await
        .expect("enable");
    assert_eq!(changed(&enabled), all(true));
    let closed = enabled.databases[0].reverse.clone().expect("the way back");
    assert!(
        closed.slot_changed && closed.publication_changed && closed.guard_removed,
        "{closed:?}"
    );
    assert!(
        !switchyard_operation::guard::present(&green)
            .await
            .expect("guard"),
        "green is blue's replica again: no guard"
    );
    assert_eq!(
        slot_lsn(&green).await,
        None,
        "no way back while green follows blue"
    );
    assert_eq!(
        strings(&green, "SELECT pubname::text FROM pg_publication").await,
        Vec::<String>::new()
    );
    assert_eq!(
        workers(&cell).await,
        names(&["switchyard_payments:apply", "switchyard_rest:apply"])
    );
    let again = run(input(&cell, Mode::Enable), &deps)
        .await
        .expect("enable again");
    assert_eq!(changed(&again), all(false));
    let dry = plan(input(&cell, Mode::Enable), &deps)
        .await
        .expect("plan enable again");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");

    let started = Instant::now();
    loop {
        let audit = audit_keys(&green_options, ("public", "payments"), "memo", &keys)
            .await
            .expect("audit green");
        assert_eq!(audit.duplicated, 0, "{audit:?}");
        if audit.present_once as usize == keys.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rows written while disabled never arrived: {audit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_clears_green_and_the_old_blue_and_spares_the_downstream_slot() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    replicate(&cell, &deps).await;
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");
    let slots = "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1";
    let guard =
        "SELECT evtname::text FROM pg_event_trigger WHERE evtname LIKE 'switchyard%' ORDER BY 1";
    let subscriptions = "SELECT subname::text FROM pg_subscription ORDER BY 1";
    assert_eq!(
        strings(&blue, guard).await.len(),
        2,
        "the guard is installed"
    );
    let drop_input = |old_blue: &str| Input {
        old_blue_identifier: Some(old_blue.to_owned()),
        ..input(&cell, Mode::Drop)
    };

    let blue_id = cell.document.blue.cluster_identifier.clone();
    let green_id = &cell.document.green.cluster_identifier;
    let state = || async {
        (
            strings(&blue, slots).await,
            strings(&blue, guard).await,
            strings(&green, subscriptions).await,
        )
    };
    let before = state().await;
    let dry = plan(drop_input(&blue_id), &deps).await.expect("plan drop");
    assert_eq!(dry.would.len(), 5, "{dry:?}");
    for (i, name) in NAMES.iter().enumerate() {
        assert_eq!(
            dry.would[i],
            format!("drop subscription {name} on green {green_id} (database app) without touching its publisher: DISABLE, SET (slot_name = NONE), DROP")
        );
        assert!(
            dry.would[2 + i].contains(&format!(
                "slot {name} on the old blue {blue_id} (database app)"
            )),
            "{dry:?}"
        );
    }
    assert!(
        dry.would[4].starts_with(
            "drop the DDL guard's event triggers switchyard_ddl_guard, switchyard_ddl_guard_drop"
        ),
        "{dry:?}"
    );
    assert_eq!(state().await, before, "the plan changed nothing");

    // An unreachable old blue: subscriptions still go, the slots are reported.
    let unreachable = run(drop_input("local-a-gone"), &deps)
        .await
        .expect("drop, old blue unreachable");
    assert_eq!(changed(&unreachable), all(true));
    let db = &unreachable.databases[0];
    assert_eq!(db.slots_left, names(&NAMES));
    assert!(db.slots_dropped.is_empty() && !db.guard_removed, "{db:?}");
    assert!(strings(&green, subscriptions).await.is_empty());
    assert_eq!(
        strings(&blue, slots).await,
        names(&["search_sub", "switchyard_payments", "switchyard_rest"])
    );

    // Green itself is refused as the old blue, before anything changes.
    let err = run(drop_input(&cell.document.green.cluster_identifier), &deps)
        .await
        .expect_err("green is not the old blue");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");

    // Without a rename the "old blue" is blue itself.
    let dropped = run(drop_input(&blue_id), &deps).await.expect("drop");
    assert_eq!(
        dropped.old_blue_identifier.as_deref(),
        Some(blue_id.as_str())
    );
    assert_eq!(changed(&dropped), all(false), "dropped already");
    let db = &dropped.databases[0];
    assert_eq!(db.slots_dropped, names(&NAMES));
    assert!(db.slots_left.is_empty() && db.guard_removed, "{db:?}");
    assert_eq!(strings(&blue, slots).await, names(&["search_sub"]));
    assert!(strings(&blue, guard).await.is_empty());
    let journal: bool = blue
        .query_one(
            "SELECT to_regclass('switchyard.ddl_journal') IS NOT NULL",
            &[],
        )
        .await
        .expect("journal")
        .get(0);
    assert!(journal, "the DDL journal stays as evidence");

    // The default old blue (no rename: blue's identifier) finds nothing left to do.
    let again = run(input(&cell, Mode::Drop), &deps)
        .await
        .expect("drop again");
    assert_eq!(again.old_blue_identifier.as_deref(), Some(blue_id.as_str()));
    assert_eq!(changed(&again), all(false));
    let db = &again.databases[0];
    assert!(
        db.slots_dropped.is_empty() && db.slots_left.is_empty() && !db.guard_removed,
        "{db:?}"
    );
    assert_eq!(strings(&blue, slots).await, names(&["search_sub"]));
    let dry = plan(input(&cell, Mode::Drop), &deps)
        .await
        .expect("plan drop again");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");

    let err = run(input(&cell, Mode::Enable), &deps)
        .await
        .expect_err("nothing to enable after drop");
    assert_eq!(err.error_name(), ErrorName::PreconditionFailed, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_of_enabled_subscriptions_disables_them_first() {
    let cell = cell().await;
    let deps = cell.deps().expect("deps");
    replicate(&cell, &deps).await;
    let dropped = run(input(&cell, Mode::Drop), &deps).await.expect("drop");
    assert_eq!(changed(&dropped), all(true));
    let db = &dropped.databases[0];
    assert_eq!(db.slots_dropped, names(&NAMES), "{db:?}");
    assert!(db.slots_left.is_empty() && db.guard_removed, "{db:?}");
}
