//! `fleet.asl.json` run unchanged by the local executor over real local cells: each cell's
//! prepare and switchover as child executions of the checked-in definitions, canary first;
//! and a canary whose preflight finds a blocker halting the fleet before any other cell is
//! touched, with the fleet report saying which cell and why.

use std::path::PathBuf;

use serde_json::Value;
use switchyard_local_cell::{CellOptions, Install, LocalCell};
use switchyard_local_run::fleet::{cell_document, run_fleet, FleetOptions};
use switchyard_local_run::fleet_report::FleetReport;
use switchyard_local_run::rehearsal::version_through_pgbouncer;
use switchyard_local_run::report::Outcome;
use switchyard_operation::Deps;
use switchyard_state_machine::{EventType, Execution, Status};

async fn start(dir: &std::path::Path, cell_id: &str) -> (LocalCell, Deps) {
    let install = Install::from_env();
    let mut options = CellOptions::from_env(&install).expect("options");
    options.rows = 200;
    options.run_direct_writers = false;
    options.document = cell_document(&install, dir, cell_id).expect("document");
    let cell = LocalCell::start(&options).await.expect("local cell");
    let deps = cell.deps().expect("deps");
    (cell, deps)
}

fn docs_dir(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("switchyard-fleet-{test}-{}", std::process::id()))
}

fn phase(name: &str) -> FleetOptions {
    FleetOptions {
        phase: name.to_owned(),
        canary: 1,
        max_concurrency: 2,
        tolerated_failures: 0,
    }
}

/// Every cell id a Task of the fleet (or its children) was called for.
fn cells_touched(fleet: &Execution) -> Vec<String> {
    let mut ids: Vec<String> = std::iter::once(fleet)
        .chain(fleet.children.iter())
        .flat_map(|e| e.history.iter())
        .filter(|e| e.kind == EventType::TaskScheduled)
        .filter_map(|e| {
            let input = e.input.as_ref()?;
            input
                .pointer("/Payload/cell/cell_id")
                .or_else(|| input.pointer("/Input/cell/cell_id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_refused_by_preflight_halts_the_fleet_and_the_report_says_which_and_why() {
    let dir = docs_dir("halt");
    let ((canary, canary_deps), (rest, rest_deps)) =
        tokio::join!(start(&dir, "fleet-a"), start(&dir, "fleet-b"));
    // A real blocker on the canary: an unlogged table cannot be replicated.
    let blue = canary.blue.superuser_client("app").await.expect("blue");
    blue.batch_execute("CREATE UNLOGGED TABLE public.scratch (id bigint PRIMARY KEY)")
        .await
        .expect("unlogged table");

    let fleet = run_fleet(
        "fleet-halt",
        &[
            (&canary.document, &canary_deps),
            (&rest.document, &rest_deps),
        ],
        &phase("prepare"),
    )
    .await
    .expect("fleet runs");
    assert_eq!(fleet.status, Status::Failed, "{:?}", fleet.error);
    assert_eq!(fleet.error.as_deref(), Some("FleetHalted"));
    assert!(fleet.children.is_empty(), "no cell's prepare started");
    // The rest was never touched: not even its preflight ran.
    assert_eq!(cells_touched(&fleet), vec!["fleet-a".to_owned()]);

    let report = FleetReport::of(&fleet, &fleet.children).expect("report");
    let table = report.table();
    eprintln!("{table}");
    assert!(report.halted, "{table}");
    let row = |id: &str| {
        report
            .cells
            .iter()
            .find(|r| r.cell_id == id)
            .unwrap_or_else(|| panic!("{id} in {table}"))
    };
    assert_eq!(row("fleet-a").outcome, "not started", "{table}");
    assert_eq!(row("fleet-a").wave, 0);
    assert_eq!(
        row("fleet-a").error.as_deref(),
        Some("PreflightFailed"),
        "{table}"
    );
    let why = row("fleet-a").why.clone().unwrap_or_default();
    assert!(
        why.contains("UNLOGGED_TABLE") || why.contains("unlogged"),
        "{table}"
    );
    assert_eq!(
        row("fleet-b").outcome,
        "not started: fleet halted",
        "{table}"
    );
    assert_eq!(row("fleet-b").wave, 1);
    assert!(
        table.contains("HALTED: fleet-a (not started: PreflightFailed)"),
        "{table}"
    );
    // The operator's command reads the same history: the same table, exit 1.
    let history = dir.join("fleet-halt-history.json");
    fleet.write_history(&history).expect("history");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-local"))
        .args(["fleet", "report", "--history"])
        .arg(&history)
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("switchyard-local fleet report");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains(table.trim_end()), "{printed}");
    assert!(dir.join("fleet-report.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_prepares_then_switches_every_cell_canary_first() {
    let dir = docs_dir("switch");
    let ((first, first_deps), (second, second_deps)) =
        tokio::join!(start(&dir, "fleet-c"), start(&dir, "fleet-d"));
    let cells = [
        (&first.document, &first_deps),
        (&second.document, &second_deps),
    ];
    for (name, phase_name, want) in [
        ("fleet-prepare", "prepare", Outcome::Prepared),
        ("fleet-switchover", "switchover", Outcome::Switched),
    ] {
        let fleet = run_fleet(name, &cells, &phase(phase_name))
            .await
            .expect("fleet runs");
        let report = FleetReport::of(&fleet, &fleet.children).expect("report");
        let table = report.table();
        eprintln!("{table}");
        assert_eq!(fleet.status, Status::Succeeded, "{table}");
        assert_eq!(fleet.children.len(), 2, "{table}");
        for row in &report.cells {
            assert_eq!(row.outcome, "succeeded", "{table}");
            assert_eq!(row.run_outcome.as_deref(), Some(want.as_str()), "{table}");
            assert_eq!(
                row.pause_window_ms.is_some(),
                want == Outcome::Switched,
                "{table}"
            );
        }
        // Canary first: the other cell's run started only after the canary's ended.
        let child = |cell: &str| {
            fleet
                .children
                .iter()
                .find(|c| c.name == format!("{name}-{cell}"))
                .unwrap_or_else(|| panic!("{cell}'s run in {table}"))
        };
        // The picture: a row per cell, its run as a bar, the pause window inside it.
        let svg = report.svg();
        for cell in ["fleet-c · canary", "fleet-d · wave 1"] {
            assert!(svg.contains(cell), "{cell}: {svg}");
        }
        assert_eq!(
            svg.matches("fill=\"#1d3557\"").count(),
            if want == Outcome::Switched { 2 } else { 0 },
            "one pause band per switched cell: {svg}"
        );
        let ended = &child("fleet-c").history.last().expect("events").timestamp;
        let started = &child("fleet-d").history.first().expect("events").timestamp;
        assert!(started >= ended, "{started} < {ended}: {table}");
    }
    // Both cells now answer on green's major through their PgBouncer.
    for cell in [&first, &second] {
        let version = version_through_pgbouncer(cell).await.expect("an answer");
        assert!(
            version.starts_with(&format!("{}.", cell.green.major)),
            "{}: {version}",
            cell.document.cell_id
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
