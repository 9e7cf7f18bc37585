//! `make rehearsal-fleet CELLS=3`: several local cells through the checked-in
//! `fleet.asl.json`, first as a prepare fleet and then as a switchover fleet, each cell's
//! run a child execution of the checked-in definitions, canary first. Prints each fleet's
//! table (every cell's wave, outcome, pause window, duration and why) and wall time, and
//! writes `target/rehearsal/fleet/` (reports and histories). Exits non-zero unless both
//! fleets succeeded.
//!
//! `CELLS` (default 3) cells of `CELL_ROWS` (default 200) fixture rows each; `CANARY`
//! (default 1) cells in the canary wave, then waves of `MAX_CONCURRENCY` (default 2);
//! `TOLERATED_FAILURES` (default 0). `FLEET_FAIL=N` gives cell N (1-based; 1 is the
//! canary) a real preflight blocker (an unlogged table): the prepare fleet halts and says
//! which cell and why. Each cell has its own moto (its own account): the fleet addresses
//! cells by their documents, and names only need differ where the fleet looks.

use std::process::ExitCode;
use std::time::Instant;

use switchyard_local_cell::{CellOptions, Install, LocalCell};
use switchyard_local_run::fleet::{cell_document, run_fleet, FleetOptions, SsmCalls};
use switchyard_local_run::fleet_report::FleetReport;
use switchyard_local_run::rehearsal::{default_out_dir, write_json};
use switchyard_state_machine::Status;

/// SSM's default throughput for GetParameter and GetParameters, per account and region.
const SSM_DEFAULT_TPS: usize = 40;

fn number(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| format!("{name}={v} is not a number")),
        _ => Ok(default),
    }
}

struct Plan {
    cells: usize,
    canary: usize,
    max_concurrency: usize,
    tolerated_failures: u64,
    fail: Option<usize>,
}

impl Plan {
    fn from_env() -> Result<Self, String> {
        let plan = Self {
            cells: number("CELLS", 3)?,
            canary: number("CANARY", 1)?,
            max_concurrency: number("MAX_CONCURRENCY", 2)?,
            tolerated_failures: number("TOLERATED_FAILURES", 0)? as u64,
            fail: match number("FLEET_FAIL", 0)? {
                0 => None,
                n => Some(n),
            },
        };
        if plan.cells == 0 || plan.max_concurrency == 0 {
            return Err("CELLS and MAX_CONCURRENCY must be at least 1".into());
        }
        if plan.fail.is_some_and(|n| n > plan.cells) {
            return Err(format!("FLEET_FAIL names no cell of {}", plan.cells));
        }
        Ok(plan)
    }
}

async fn rehearse(plan: &Plan) -> Result<bool, String> {
    let out = default_out_dir().join("fleet");
    let _ = std::fs::remove_dir_all(&out);
    let install = Install::from_env();
    let mut options = CellOptions::from_env(&install).map_err(|e| e.to_string())?;
    if std::env::var_os("CELL_ROWS").is_none() {
        options.rows = 200;
    }
    options.run_direct_writers = false;
    let ids: Vec<String> = (0..plan.cells)
        .map(|i| format!("fleet-{}", (b'a' + (i % 26) as u8) as char))
        .map(|id| {
            if plan.cells > 26 {
                format!("{id}{}", plan.cells)
            } else {
                id
            }
        })
        .collect();
    eprintln!(
        "starting {} local cells ({}), PostgreSQL {} → {}, {} rows each …",
        plan.cells,
        ids.join(", "),
        options.blue_major,
        options.green_major,
        options.rows
    );
    let started = Instant::now();
    let starts = ids.iter().map(|id| {
        let mut options = options.clone();
        let out = out.clone();
        let install = &install;
        async move {
            options.document = cell_document(install, &out.join("cells"), id)?;
            LocalCell::start(&options)
                .await
                .map_err(|e| format!("local cell {id} did not start: {e}"))
        }
    });
    // Every cell that started is stopped when dropped, whichever failed.
    // Started together: each cell's start is mostly waiting on its servers.
    let cells: Vec<LocalCell> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    eprintln!("cells up in {:.1} s", started.elapsed().as_secs_f64());
    if let Some(n) = plan.fail {
        let cell = &cells[n - 1];
        let blue = cell
            .blue
            .superuser_client("app")
            .await
            .map_err(|e| e.to_string())?;
        blue.batch_execute(
            "CREATE UNLOGGED TABLE public.fleet_rehearsal_blocker (id bigint PRIMARY KEY)",
        )
        .await
        .map_err(|e| e.to_string())?;
        eprintln!(
            "{}: gave blue an unlogged table, a preflight blocker",
            cell.document.cell_id
        );
    }
    // Every cell's SSM calls, counted together: in AWS the fleet's cells share one
    // account's rate.
    let ssm = SsmCalls::default();
    let deps = cells
        .iter()
        .map(|c| c.deps().map(|d| ssm.count(&d)).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let members: Vec<_> = cells.iter().map(|c| &c.document).zip(deps.iter()).collect();
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut passed = true;
    for phase in ["prepare", "switchover"] {
        let name = format!("fleet-{phase}-{stamp}");
        let fleet_options = FleetOptions {
            phase: phase.to_owned(),
            canary: plan.canary,
            max_concurrency: plan.max_concurrency,
            tolerated_failures: plan.tolerated_failures,
        };
        eprintln!("running the {phase} fleet as {name} …");
        let fleet = run_fleet(&name, &members, &fleet_options).await?;
        let report = FleetReport::of(&fleet, &fleet.children)?;
        print!("{}", report.table());
        write_json(&out.join(format!("{phase}-report.json")), &report)?;
        let svg = out.join(format!("{phase}-timeline.svg"));
        std::fs::write(&svg, report.svg())
            .map_err(|e| format!("writing {}: {e}", svg.display()))?;
        fleet
            .write_history(&out.join(format!("{phase}-history.json")))
            .map_err(|e| e.to_string())?;
        if fleet.status != Status::Succeeded {
            passed = false;
            break;
        }
    }
    // SSM's default rate for GetParameter and GetParameters together, per account.
    let reads = ssm.peak_per_second(|op| op == "GetParameter" || op == "GetParameters");
    let all = ssm.peak_per_second(|_| true);
    println!(
        "SSM: {} calls ({:?}); at most {reads} GetParameter(s) in one second ({} the default {SSM_DEFAULT_TPS} a second), {all} calls of any kind",
        ssm.total(),
        ssm.by_operation(),
        if reads <= SSM_DEFAULT_TPS { "under" } else { "OVER" },
    );
    write_json(
        &out.join("ssm-calls.json"),
        &serde_json::json!({
            "calls": ssm.total(),
            "by_operation": ssm.by_operation(),
            "peak_reads_per_second": reads,
            "peak_calls_per_second": all,
            "default_read_rate_per_second": SSM_DEFAULT_TPS,
        }),
    )?;
    println!(
        "fleet rehearsal: {} cells, {} in {:.1} s; reports and histories in {}",
        plan.cells,
        if passed { "all switched" } else { "HALTED" },
        started.elapsed().as_secs_f64(),
        out.display()
    );
    let passwords: Vec<String> = cells
        .iter()
        .flat_map(|c| c.secrets.all_passwords())
        .map(|s| s.expose().to_owned())
        .collect();
    for entry in std::fs::read_dir(&out)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if passwords.iter().any(|p| text.contains(p.as_str())) {
            return Err(format!("{} holds a password", entry.path().display()));
        }
    }
    Ok(passed)
}

fn main() -> ExitCode {
    let plan = match Plan::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rehearsal-fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rehearsal-fleet: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run, and with it every cell: every process they started stops.
    let result = runtime.block_on(async {
        tokio::select! {
            r = rehearse(&plan) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rehearsal-fleet: {e}");
            ExitCode::FAILURE
        }
    }
}
