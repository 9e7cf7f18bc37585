//! `make bench-scale`: does the pause window grow with the data? (not a test)
//!
//! Two switchovers on the same machine in one run, as `make bench` runs one: a fresh cell
//! with the fixture alone (`CELL_ROWS`, default 1,000), then a fresh cell with the fixture
//! plus `SCALE_BYTES` (default 2 GiB) of table data in `public.archive`, loaded on blue
//! before prepare. Prepare is not timed; the switchover runs under the ledger at full
//! speed. Prints both pause windows, their ratio (goal ≤ 1.2×), the window at size (goal
//! ≤ 1 s), each side's data size and prepare's initial copy (green's subscription tables
//! from first seen to all ready, MB/s) next to `pgcopydb clone` of the same data between
//! the same servers (before prepare, its copy dropped again), and writes `target/rehearsal/bench-scale.json` beside
//! bench.json (each run's report under `target/rehearsal/bench-scale-runs/<size>/`; not
//! `bench-scale/`, the path of this binary in cargo's profile directory). Each cell
//! is torn down — its data directories removed — before the next starts.
//!
//! `make bench-scale` runs with `AWS_TIMINGS=instant` unless told otherwise: how long a
//! rename takes to reach DNS does not depend on the data, and under `fast` its random
//! delay would drown the difference this measures. Each run still reports the part of
//! its window spent waiting on emulated names, and the window less that part.

use std::process::ExitCode;

use serde_json::json;
use switchyard_local_run::rehearsal::{default_out_dir, not_run, rehearse, write_json, RunOptions};
use switchyard_local_run::report::Report;

/// The pause-window ratio (large ÷ small) the design aims for.
const TARGET_RATIO: f64 = 1.2;
/// The pause window at size the design aims for, locally.
const TARGET_PAUSE_MS: u64 = 1000;

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        switchyard_telemetry::init_tracing();
    }
    match bench() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench-scale: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<bool, String> {
    let scale_bytes: u64 = match std::env::var("SCALE_BYTES") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n: &u64| n > 0)
            .ok_or_else(|| format!("SCALE_BYTES={v} is not a positive number of bytes"))?,
        Err(_) => 2 << 30,
    };
    let out_dir = default_out_dir();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let mut reports: Vec<(&str, Report)> = Vec::new();
    for (label, bulk) in [("fixture", 0), ("at-size", scale_bytes)] {
        let run_dir = out_dir.join("bench-scale-runs").join(label);
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut options = RunOptions::from_env(run_dir.clone(), &format!("scale-{label}"))?;
        options.load_during_prepare = false;
        options.bulk_bytes = bulk;
        // The standard tool's copy of the same data, for the initial copy's baseline.
        options.compare_pgcopydb = bulk > 0;
        eprintln!("== {label}: fixture plus {bulk} bytes of archive");
        let result = runtime.block_on(async {
            tokio::select! {
                r = rehearse(&options) => r,
                _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
            }
        });
        let interrupted = matches!(&result, Err(e) if e == "interrupted");
        let report = result.unwrap_or_else(not_run);
        write_json(&run_dir.join("report.json"), &report)?;
        reports.push((label, report));
        if interrupted {
            break;
        }
    }

    let side = |report: &Report| {
        let load = report.load.as_ref();
        let bytes = load.and_then(|l| l.data_bytes);
        let copy_ms = load.and_then(|l| l.initial_copy_ms);
        let mb_per_s = match (bytes, copy_ms) {
            (Some(b), Some(ms)) if ms > 0 => Some((b as f64 / 1e6) / (ms as f64 / 1000.0)),
            _ => None,
        };
        json!({
            "passed": report.passed,
            "failures": report.failures,
            "outcome": report.outcome,
            "data_bytes": bytes,
            "fixture_rows": load.map(|l| l.fixture_rows),
            "pause_window_ms": report.pause_window_ms,
            "aws_timings": load.map(|l| l.aws_timings.clone()),
            // The window less the time a name had not yet followed an emulated rename:
            // the part our own steps spent, which is what could grow with the data.
            "pause_window_own_ms": report.pause_window_ms.map(|w| {
                w.saturating_sub(load.and_then(|l| l.pause_window_emulated_aws_ms).unwrap_or(0))
            }),
            "pause_window_steps": report.pause_window_steps,
            "client_max_latency_ms": load.and_then(|l| l.client_max_latency_ms),
            "initial_copy_ms": copy_ms,
            "initial_copy_mb_per_s": mb_per_s.map(|v| (v * 10.0).round() / 10.0),
            "pgcopydb_clone": load.and_then(|l| l.baseline_clone.as_ref()).map(|b| json!({
                "command": b.command,
                "version": b.version,
                "elapsed_ms": b.elapsed_ms,
                "mb_per_s": match (bytes, b.elapsed_ms) {
                    (Some(bytes), Some(ms)) if ms > 0 =>
                        Some(((bytes as f64 / 1e6) / (ms as f64 / 1000.0) * 10.0).round() / 10.0),
                    _ => None,
                },
                "error": b.error,
            })),
        })
    };
    let window = |label: &str| {
        reports
            .iter()
            .find(|(l, _)| *l == label)
            .and_then(|(_, r)| r.pause_window_ms)
    };
    let ratio = match (window("fixture"), window("at-size")) {
        (Some(small), Some(large)) if small > 0 => {
            Some((large as f64 / small as f64 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let all_passed = reports.len() == 2 && reports.iter().all(|(_, r)| r.passed);
    let bench = json!({
        "scale_bytes": scale_bytes,
        "all_guarantees_held": all_passed,
        "pause_window_ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_pause_window_ms_at_size": TARGET_PAUSE_MS,
        "runs": reports.iter().map(|(label, r)| (label.to_string(), side(r))).collect::<serde_json::Map<_, _>>(),
    });
    let path = out_dir.join("bench-scale.json");
    write_json(&path, &bench)?;

    println!("bench-scale: the switchover at two sizes, same machine, one run");
    for (label, report) in &reports {
        let s = side(report);
        println!(
            "  {label:<8} {} MB of table data: pause window {} ms ({} ms our own, AWS timings {}), initial copy {} ms ({} MB/s){}",
            s["data_bytes"]
                .as_u64()
                .map_or("n/a".to_owned(), |b| format!("{:.1}", b as f64 / 1e6)),
            s["pause_window_ms"]
                .as_u64()
                .map_or("n/a".to_owned(), |v| v.to_string()),
            s["pause_window_own_ms"]
                .as_u64()
                .map_or("n/a".to_owned(), |v| v.to_string()),
            s["aws_timings"].as_str().unwrap_or("n/a"),
            s["initial_copy_ms"]
                .as_u64()
                .map_or("n/a".to_owned(), |v| v.to_string()),
            s["initial_copy_mb_per_s"]
                .as_f64()
                .map_or("n/a".to_owned(), |v| v.to_string()),
            if report.passed {
                ""
            } else {
                " — FAILED (see its report.json)"
            }
        );
    }
    match ratio {
        Some(r) => println!(
            "  ratio {r}× (goal ≤ {TARGET_RATIO}×){}",
            if r <= TARGET_RATIO {
                ""
            } else {
                ": ABOVE the goal"
            }
        ),
        None => println!("  ratio n/a"),
    }
    if let Some(large) = window("at-size") {
        println!(
            "  at size {large} ms (goal ≤ {TARGET_PAUSE_MS} ms){}",
            if large <= TARGET_PAUSE_MS {
                ""
            } else {
                ": ABOVE the goal"
            }
        );
    }
    for (label, report) in &reports {
        let s = side(report);
        let clone = &s["pgcopydb_clone"];
        if clone.is_null() {
            continue;
        }
        match clone["elapsed_ms"].as_u64() {
            Some(ms) => println!(
                "  {label:<8} pgcopydb clone of the same data: {ms} ms ({} MB/s; schema, COPY, indexes, VACUUM ANALYZE)",
                clone["mb_per_s"]
                    .as_f64()
                    .map_or("n/a".to_owned(), |v| v.to_string())
            ),
            None => println!(
                "  {label:<8} pgcopydb clone: {}",
                clone["error"].as_str().unwrap_or("no result")
            ),
        }
    }
    println!("bench-scale: {}", path.display());
    Ok(all_passed)
}
