//! `make rehearsal`: one local cell through the checked-in `prepare` and `switchover`
//! state machines under full client load, audited; prints a summary and writes
//! `target/rehearsal/report.json` with both histories and `timeline.svg` beside it. Exits non-zero if any
//! guarantee failed.
//!
//! `REHEARSAL=roundtrip` switches back after the switch (the switchover definition again,
//! with the reversed document, under the same load) and audits every write on the old
//! blue; the report gives both pause windows.
//!
//! `BLUE_PG` / `GREEN_PG` choose the majors (default 14 → 17), `CELL_ROWS` the fixture
//! size, `LEDGER_WORKERS` the ledger clients (default 8). `RUST_LOG=info` shows the
//! functions' logs.

use std::process::ExitCode;

use switchyard_local_run::rehearsal::{default_out_dir, not_run, rehearse, write_json, RunOptions};

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        switchyard_telemetry::init_tracing();
    }
    let out_dir = default_out_dir();
    let options = match RunOptions::from_env(out_dir.clone(), "rehearsal") {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rehearsal: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A previous run's files must not pass for this one's.
    for file in [
        "report.json",
        "timeline.svg",
        "prepare-history.json",
        "switchover-history.json",
        "switchback-history.json",
    ] {
        let _ = std::fs::remove_file(out_dir.join(file));
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rehearsal: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run, and with it the cell: every process it started stops.
    let result = runtime.block_on(async {
        tokio::select! {
            r = rehearse(&options) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    let report = result.unwrap_or_else(not_run);
    let path = out_dir.join("report.json");
    if let Err(e) = write_json(&path, &report) {
        eprintln!("rehearsal: {e}");
        return ExitCode::FAILURE;
    }
    print!("{}", report.summary());
    println!("report: {}", display(&path));
    let timeline = out_dir.join("timeline.svg");
    if timeline.is_file() {
        println!("timeline: {}", display(&timeline));
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The path relative to the working directory when it is under it.
fn display(path: &std::path::Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}
