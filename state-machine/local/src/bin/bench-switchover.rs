//! `make bench`: the switchover timed over several fresh local cells (not a test).
//!
//! Each run: a fresh cell, `prepare` (not measured, no ledger), then the ledger at full
//! speed through PgBouncer and the `switchover` state machine, audited as in the
//! rehearsal. Prints min / median / max of the pause window and of the clients' worst
//! latency, and writes `target/rehearsal/bench.json` (each run's report under
//! `target/rehearsal/bench/run-<n>/`). `RUNS` (default 5), `LEDGER_WORKERS` (default 8),
//! `BLUE_PG` / `GREEN_PG`, `CELL_ROWS` as for the rehearsal. Exits non-zero if a run broke
//! a guarantee.

use std::process::ExitCode;

use serde_json::json;
use switchyard_local_run::rehearsal::{default_out_dir, not_run, rehearse, write_json, RunOptions};
use switchyard_local_run::report::{spread, Report};

/// The pause window the design aims for, per run (median).
const TARGET_PAUSE_MS: u64 = 1000;

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        switchyard_telemetry::init_tracing();
    }
    match bench() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench-switchover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<bool, String> {
    let runs: usize = match std::env::var("RUNS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .ok_or_else(|| format!("RUNS={v} is not a positive number"))?,
        Err(_) => 5,
    };
    let out_dir = default_out_dir();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let mut reports: Vec<Report> = Vec::new();
    for n in 1..=runs {
        let run_dir = out_dir.join("bench").join(format!("run-{n}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut options = RunOptions::from_env(run_dir.clone(), &format!("bench-{n}"))?;
        options.load_during_prepare = false;
        eprintln!("== run {n} of {runs}");
        let result = runtime.block_on(async {
            tokio::select! {
                r = rehearse(&options) => r,
                _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
            }
        });
        let interrupted = matches!(&result, Err(e) if e == "interrupted");
        let report = result.unwrap_or_else(not_run);
        write_json(&run_dir.join("report.json"), &report)?;
        eprintln!(
            "run {n}: {}, pause {} ms, client max {} ms, {:.0} tx/s{}",
            report.outcome.as_str(),
            report
                .pause_window_ms
                .map_or("n/a".to_owned(), |v| v.to_string()),
            report
                .load
                .as_ref()
                .and_then(|l| l.client_max_latency_ms)
                .map_or("n/a".to_owned(), |v| v.to_string()),
            report.load.as_ref().map_or(0.0, |l| l.throughput_tx_per_s),
            if report.passed {
                ""
            } else {
                " — FAILED (see its report.json)"
            }
        );
        reports.push(report);
        if interrupted {
            break;
        }
    }

    let pauses: Vec<u64> = reports.iter().filter_map(|r| r.pause_window_ms).collect();
    // Latencies in µs-precise ms; spread() works on integers, so in tenths of a ms.
    let latencies: Vec<u64> = reports
        .iter()
        .filter_map(|r| r.load.as_ref().and_then(|l| l.client_max_latency_ms))
        .map(|ms| (ms * 10.0).round() as u64)
        .collect();
    let throughputs: Vec<u64> = reports
        .iter()
        .filter_map(|r| r.load.as_ref())
        .map(|l| l.throughput_tx_per_s.round() as u64)
        .collect();
    let stats = |v: &[u64], scale: f64| {
        spread(v).map(|(min, median, max)| {
            json!({
                "min": min as f64 / scale,
                "median": median as f64 / scale,
                "max": max as f64 / scale,
            })
        })
    };
    let all_passed = reports.iter().all(|r| r.passed) && reports.len() == runs;
    let median_pause = spread(&pauses).map(|(_, m, _)| m);
    let first = reports.first();
    let bench = json!({
        "runs": reports.len(),
        "requested_runs": runs,
        "workers": first.and_then(|r| r.load.as_ref()).map(|l| l.workers),
        "blue_major": first.map(|r| r.blue_major),
        "target_major": first.map(|r| r.target_major),
        "fixture_rows": first.and_then(|r| r.load.as_ref()).map(|l| l.fixture_rows),
        "data_bytes": first.and_then(|r| r.load.as_ref()).and_then(|l| l.data_bytes),
        "all_guarantees_held": all_passed,
        "target_median_pause_window_ms": TARGET_PAUSE_MS,
        "pause_window_ms": stats(&pauses, 1.0),
        "client_max_latency_ms": stats(&latencies, 10.0),
        "throughput_tx_per_s": stats(&throughputs, 1.0),
        "per_run": reports.iter().enumerate().map(|(i, r)| json!({
            "run": i + 1,
            "outcome": r.outcome,
            "passed": r.passed,
            "failures": r.failures,
            "pause_window_ms": r.pause_window_ms,
            "pause_window_steps": r.pause_window_steps,
            "client_max_latency_ms": r.load.as_ref().and_then(|l| l.client_max_latency_ms),
            "client_p99_latency_ms": r.load.as_ref().and_then(|l| l.client_p99_latency_ms),
            "throughput_tx_per_s": r.load.as_ref().map(|l| l.throughput_tx_per_s),
            "data_bytes": r.load.as_ref().and_then(|l| l.data_bytes),
            "report": format!("bench/run-{}/report.json", i + 1),
        })).collect::<Vec<_>>(),
    });
    let path = out_dir.join("bench.json");
    write_json(&path, &bench)?;

    let show = |name: &str, v: &[u64], scale: f64| match spread(v) {
        Some((min, median, max)) => println!(
            "  {name:<22} min {} / median {} / max {} ms",
            min as f64 / scale,
            median as f64 / scale,
            max as f64 / scale
        ),
        None => println!("  {name:<22} n/a"),
    };
    println!(
        "bench-switchover: {} runs, PostgreSQL {} → {}, ledger {} clients at full speed",
        reports.len(),
        first.map_or(0, |r| r.blue_major),
        first.map_or(0, |r| r.target_major),
        first.and_then(|r| r.load.as_ref()).map_or(0, |l| l.workers),
    );
    show("pause window", &pauses, 1.0);
    show("client max latency", &latencies, 10.0);
    if let Some((min, median, max)) = spread(&throughputs) {
        println!(
            "  {:<22} min {min} / median {median} / max {max} tx/s",
            "ledger throughput"
        );
    }
    match median_pause {
        Some(m) if m <= TARGET_PAUSE_MS => {
            println!("  median pause window {m} ms ≤ {TARGET_PAUSE_MS} ms target")
        }
        Some(m) => println!(
            "  median pause window {m} ms is ABOVE the {TARGET_PAUSE_MS} ms target (per-step times in bench.json)"
        ),
        None => println!("  no pause window measured"),
    }
    if !all_passed {
        println!("  a run broke a guarantee: see its report.json");
    }
    println!("bench: {}", path.display());
    Ok(all_passed)
}
