//! The rehearsal: a local cell taken through the checked-in `prepare` and `switchover`
//! state machines under client load, then audited.
//!
//! One run ([`rehearse`]): start a local cell (majors from `BLUE_PG`/`GREEN_PG`, default
//! 14 → 17; the fixture loaded; the direct writers' ECS service running), start the ledger
//! through PgBouncer at full speed, run `prepare` then `switchover` with the cell's
//! effective document as input, stop the load, and check every guarantee on the primary
//! the cell ended on. The cell is stopped whatever happens (it stops when dropped).
//! `make rehearsal` runs one and `make bench` several ([`crate::report`] has the numbers).
//!
//! No secret reaches the report, the histories or the summary: the cell document carries
//! only SSM parameter names, and every file written is checked for the cell's passwords.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_local_cell::{audit_keys, CellOptions, Install, LocalCell, PgServer, Tally};
use switchyard_state_machine::{Execution, Executor};
use time::OffsetDateTime;

use crate::report::{
    budgets_of, covered_ms, latency_stats, stale_names, unix_ms, AuditSummary, BaselineClone,
    EmulatedDelay, LoadReport, Outcome, Report, WindowFit, WorkloadSummary,
};
use crate::{load, LocalFunctions, PREPARE, SWITCHOVER};

/// Ledger clients by default: enough to keep PgBouncer's pool busy on a small machine.
pub const DEFAULT_WORKERS: usize = 8;

/// How to run one rehearsal.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Ledger clients through PgBouncer, each at full speed.
    pub workers: usize,
    /// Start the ledger before `prepare` (the rehearsal) or only after it (the benchmark,
    /// which measures the switchover alone).
    pub load_during_prepare: bool,
    /// Where the histories go (the report is written by the caller).
    pub out_dir: PathBuf,
    /// Execution names are `<prefix>-prepare-<utc>` and `<prefix>-switchover-<utc>`.
    pub name_prefix: String,
    /// Before prepare, fill `public.archive` on blue with this many bytes of table data
    /// (rows of ~1 KB that do not compress): a production-sized cell for `bench-scale`.
    pub bulk_bytes: u64,
    /// After a switch, switch back (`REHEARSAL=roundtrip`): the switchover definition again
    /// with the reversed document, under the same load; audited on the old blue.
    pub roundtrip: bool,
    /// Before prepare, time `pgcopydb clone` of blue's application database into a
    /// scratch database on green's server: the initial copy's baseline (`bench-scale`).
    pub compare_pgcopydb: bool,
}

impl RunOptions {
    /// `LEDGER_WORKERS` (default 8), histories under `out_dir`.
    pub fn from_env(out_dir: PathBuf, name_prefix: &str) -> Result<Self, String> {
        let workers = match std::env::var("LEDGER_WORKERS") {
            Ok(v) => v
                .parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .ok_or_else(|| format!("LEDGER_WORKERS={v} is not a positive number"))?,
            Err(_) => DEFAULT_WORKERS,
        };
        let roundtrip = match std::env::var("REHEARSAL").as_deref() {
            Ok("roundtrip") => true,
            Ok("" | "switchover") | Err(_) => false,
            Ok(other) => {
                return Err(format!(
                    "REHEARSAL={other}: expected switchover (the default) or roundtrip"
                ))
            }
        };
        Ok(Self {
            workers,
            roundtrip,
            load_during_prepare: true,
            out_dir,
            name_prefix: name_prefix.to_owned(),
            bulk_bytes: 0,
            compare_pgcopydb: false,
        })
    }
}

/// `target/rehearsal` at the repository root.
pub fn default_out_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::canonicalize(&root)
        .unwrap_or(root)
        .join("target")
        .join("rehearsal")
}

/// Writes `value` as pretty JSON to `path`, creating the directory.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let json = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, json).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A UTC stamp that is valid in an execution name: `20250102T030405Z`.
fn utc_stamp() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    OffsetDateTime::now_utc()
        .format(FORMAT)
        .unwrap_or_else(|_| "now".to_owned())
}

/// One rehearsal from a fresh cell to an audited end. Fails only when the run could not be
/// carried out (no cell); a failed guarantee is in the report.
pub async fn rehearse(options: &RunOptions) -> Result<Report, String> {
    let mut cell_options =
        CellOptions::from_env(&Install::from_env()).map_err(|e| e.to_string())?;
    cell_options.run_direct_writers = true;
    eprintln!(
        "starting a local cell: PostgreSQL {} → {}, {} fixture rows …",
        cell_options.blue_major, cell_options.green_major, cell_options.rows
    );
    let cell = LocalCell::start(&cell_options)
        .await
        .map_err(|e| format!("the local cell did not start: {e}"))?;
    if options.bulk_bytes > 0 {
        load_bulk(&cell, options.bulk_bytes).await?;
    }
    let baseline = if options.compare_pgcopydb {
        Some(pgcopydb_clone(&cell, &options.out_dir).await)
    } else {
        None
    };
    // The cell is dropped (every process stopped) when this returns, pass or fail.
    let mut report = rehearse_on(&cell, options).await;
    if let (Ok(report), Some(baseline)) = (&mut report, baseline) {
        if let Some(load) = report.load.as_mut() {
            load.baseline_clone = Some(baseline);
        }
        write_json(&options.out_dir.join("report.json"), report)?;
    }
    let passwords: Vec<String> = cell
        .secrets
        .all_passwords()
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    cell.shutdown();
    let mut report = report?;
    check_no_secret(&mut report, &passwords, &options.out_dir);
    Ok(report)
}

/// The rehearsal on a started cell: both state machines under load, the audits, and the
/// histories, `report.json` and `timeline.svg` in `options.out_dir`.
pub async fn rehearse_on(cell: &LocalCell, options: &RunOptions) -> Result<Report, String> {
    let report = measure(cell, options).await?;
    write_json(&options.out_dir.join("report.json"), &report)?;
    let svg = options.out_dir.join("timeline.svg");
    std::fs::write(&svg, crate::timeline::svg(&report))
        .map_err(|e| format!("writing {}: {e}", svg.display()))?;
    Ok(report)
}

async fn measure(cell: &LocalCell, options: &RunOptions) -> Result<Report, String> {
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|e| format!("creating {}: {e}", options.out_dir.display()))?;
    let deps = cell.deps().map_err(|e| e.to_string())?;
    let handler = LocalFunctions { deps: &deps };
    let prepare = load(PREPARE)?;
    let switchover = load(SWITCHOVER)?;
    let input = json!({ "cell": serde_json::to_value(&cell.document).map_err(|e| e.to_string())? });
    let stamp = utc_stamp();

    let blue_version = version_through_pgbouncer(cell).await;
    let mut ledger = None;
    let mut ledger_started = Instant::now();
    if options.load_during_prepare {
        ledger = Some(start_ledger(cell, options.workers)?);
    }

    let prepare_name = format!("{}-prepare-{stamp}", options.name_prefix);
    eprintln!("running prepare as {prepare_name} …");
    let database = cell
        .document
        .databases
        .first()
        .cloned()
        .unwrap_or_else(|| "app".to_owned());
    let (copy_done, copy_watch) = tokio::sync::oneshot::channel();
    let (prepared, initial_copy_ms) = tokio::join!(
        async {
            let prepared = Executor::new(&prepare, &handler)
                .state_machine_name(PREPARE)
                .name(&prepare_name)
                .run(input.clone())
                .await;
            let _ = copy_done.send(());
            prepared
        },
        watch_initial_copy(cell, &database, copy_watch)
    );
    let prepare_file = options.out_dir.join("prepare-history.json");
    prepared
        .write_history(&prepare_file)
        .map_err(|e| format!("writing {}: {e}", prepare_file.display()))?;
    eprintln!("prepare: {:?}", prepared.status);

    let mut switched: Option<Execution> = None;
    let mut direct_resumed = false;
    if prepared.status == switchyard_state_machine::Status::Succeeded {
        if ledger.is_none() {
            ledger = Some(start_ledger(cell, options.workers)?);
            ledger_started = Instant::now();
        }
        // Let the clients reach full speed before the switchover starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let name = format!("{}-switchover-{stamp}", options.name_prefix);
        let (execution, resumed) = switch(
            cell,
            &switchover,
            &handler,
            &name,
            input.clone(),
            &options.out_dir.join("switchover-history.json"),
        )
        .await?;
        direct_resumed = resumed;
        switched = Some(execution);
    }
    let mut switchback = None;
    if options.roundtrip && Outcome::of(switched.as_ref()) == Outcome::Switched {
        // Writes on green for a while, reaching the old blue through the way back.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let parked =
            switchyard_operation::rename::parked_identifier(&cell.document, cell.blue.major);
        let back = cell
            .document
            .back(&parked, cell.blue.major)
            .map_err(|e| format!("the switch-back's document: {e}"))?;
        let name = format!("{}-switchback-{stamp}", options.name_prefix);
        let input = json!({ "cell": serde_json::to_value(&back).map_err(|e| e.to_string())? });
        let (execution, resumed) = switch(
            cell,
            &switchover,
            &handler,
            &name,
            input,
            &options.out_dir.join("switchback-history.json"),
        )
        .await?;
        direct_resumed = resumed;
        switchback = Some(execution);
    }

    let ledger_seconds = ledger_started.elapsed().as_secs_f64();
    let tally = match ledger {
        // A PgBouncer left paused holds clients until its query_wait_timeout: bounded.
        Some(ledger) => tokio::time::timeout(Duration::from_secs(180), ledger.stop())
            .await
            .map_err(|_| "the ledger did not stop within 180 s (PgBouncer still paused?)")?,
        None => Tally::default(),
    };
    let direct: Vec<Tally> = cell.direct_writers().iter().map(|d| d.tally()).collect();

    let outcome = Outcome::of(switched.as_ref());
    // Past the point of no return a failed cleanup still leaves the cell on green.
    let on_green = outcome.writes_moved();
    // A round trip that switched back ends on the old blue: every write is audited there.
    let back_switched = switchback
        .as_ref()
        .is_some_and(|e| Outcome::of(Some(e)) == Outcome::Switched);
    let on_green = on_green && !back_switched;
    let primary = if on_green { &cell.green } else { &cell.blue };
    let ledger_audit = audit(
        primary,
        &database,
        ("public", "payments"),
        "memo",
        &tally.keys(),
    )
    .await;
    let direct_keys: Vec<String> = direct.iter().flat_map(Tally::keys).collect();
    let direct_audit = audit(
        primary,
        &database,
        ("billing", "invoice lines"),
        "description",
        &direct_keys,
    )
    .await;
    let downstream_equal = downstream_converges(cell, primary, &database).await;
    let green_version = version_through_pgbouncer(cell).await;

    // Client latency over the commits whose transaction overlapped the switchover: one
    // queued by the pause may be acknowledged after the execution ended, and is the one
    // that waited longest.
    let mut latencies = Vec::new();
    if let Some(e) = &switched {
        let start = e.history.first().and_then(|h| unix_ms(&h.timestamp));
        let end = e.history.last().and_then(|h| unix_ms(&h.timestamp));
        if let (Some(start), Some(end)) = (start, end) {
            latencies = tally
                .acks
                .iter()
                .filter(|a| {
                    let acked = a.at_unix_ms as i64;
                    let began = acked - (a.latency_us / 1000) as i64;
                    acked >= start && began <= end
                })
                .map(|a| a.latency_us)
                .collect();
        }
    }
    let commits_during = latencies.len();
    let (max_ms, p99_ms) = latency_stats(latencies);

    let direct_summary = WorkloadSummary {
        acknowledged: direct.iter().map(|t| t.acks.len()).sum(),
        failed: direct.iter().map(|t| t.failed).sum(),
        in_doubt: direct.iter().map(|t| t.in_doubt.len()).sum(),
        errors: direct
            .iter()
            .flat_map(|t| t.errors.clone())
            .take(20)
            .collect(),
    };
    let ledger_summary = WorkloadSummary {
        acknowledged: tally.acks.len(),
        failed: tally.failed,
        in_doubt: tally.in_doubt.len(),
        errors: tally.errors.clone(),
    };
    let mut report = Report::of_executions(
        Some((&prepared, "prepare-history.json")),
        switched.as_ref().map(|e| (e, "switchover-history.json")),
    );
    report.switchback = switchback
        .as_ref()
        .map(|e| crate::report::Switchback::of(e, "switchback-history.json"));
    let (emulated_aws_delays, spans) = emulated_delays(cell);
    let pause_window_emulated_aws_ms = match (
        report.pause_window_started_at.as_deref().and_then(unix_ms),
        report.pause_window_ended_at.as_deref().and_then(unix_ms),
    ) {
        (Some(from), Some(to)) => Some(covered_ms(from, to, &spans)),
        _ => None,
    };
    let query_wait_timeout = query_wait_timeout_ms(cell).await;
    let table_bytes = data_bytes(cell, &database).await;
    report.window_fit = switched
        .as_ref()
        .and_then(|e| WindowFit::of(e, &budgets_of(e), query_wait_timeout, &spans));
    // What PgBouncer served, measured, beats preflight's readings.
    report.blue_version = blue_version;
    report.green_version = green_version;
    report.blue_major = cell.blue.major;
    report.target_major = cell.green.major;
    report.load = Some(LoadReport {
        client_max_latency_ms: max_ms,
        client_p99_latency_ms: p99_ms,
        client_commits_during_switchover: commits_during,
        failed_transactions: ledger_summary.failed + direct_summary.failed,
        in_doubt_transactions: ledger_summary.in_doubt + direct_summary.in_doubt,
        acknowledged_writes: ledger_summary.acknowledged + direct_summary.acknowledged,
        lost_writes: ledger_audit.missing + direct_audit.missing,
        duplicated_writes: ledger_audit.duplicated + direct_audit.duplicated,
        audited_on: if on_green {
            "green".to_owned()
        } else {
            "blue".to_owned()
        },
        downstream_equal,
        direct_writers_resumed: direct_resumed,
        workers: options.workers,
        throughput_tx_per_s: if ledger_seconds > 0.0 {
            (tally.acks.len() as f64 / ledger_seconds * 10.0).round() / 10.0
        } else {
            0.0
        },
        ledger_seconds: (ledger_seconds * 10.0).round() / 10.0,
        fixture_rows: cell.fixture_rows,
        ledger: ledger_summary,
        direct_writers: direct_summary,
        ledger_audit,
        direct_writer_audit: direct_audit,
        aws_timings: cell.names().timings().name.to_owned(),
        pause_window_emulated_aws_ms,
        data_bytes: table_bytes,
        initial_copy_ms,
        baseline_clone: None,
        stale_names_after_window: report
            .pause_window_ended_at
            .as_deref()
            .and_then(unix_ms)
            .map(|end| stale_names(&emulated_aws_delays, end))
            .unwrap_or_default(),
        emulated_aws_delays,
    });
    report.judge();
    Ok(report)
}

/// One run of the switchover definition (a switchover, or a switch-back with the reversed
/// document) named `name`, its history written to `file`; then, if it switched or aborted,
/// a wait for the direct writers to write again (whether they did) and a moment of ledger
/// commits on whichever side serves.
async fn switch(
    cell: &LocalCell,
    definition: &switchyard_state_machine::Definition,
    handler: &LocalFunctions<'_>,
    name: &str,
    input: serde_json::Value,
    file: &Path,
) -> Result<(Execution, bool), String> {
    eprintln!("running {name} …");
    let execution = Executor::new(definition, handler)
        .state_machine_name(SWITCHOVER)
        .name(name)
        .run(input)
        .await;
    execution
        .write_history(file)
        .map_err(|e| format!("writing {}: {e}", file.display()))?;
    eprintln!("{name}: {:?}", execution.status);
    let before = direct_acknowledged(cell);
    let mut resumed = false;
    if matches!(
        Outcome::of(Some(&execution)),
        Outcome::Switched | Outcome::Aborted
    ) {
        resumed = wait_direct_writers(cell, before).await;
        // Some ledger commits after PgBouncer resumed, on whichever side serves.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok((execution, resumed))
}

/// The cell's emulated name delays, for the report and as Unix-ms spans.
fn emulated_delays(cell: &LocalCell) -> (Vec<EmulatedDelay>, Vec<(i64, i64)>) {
    // Instants have no calendar: anchor them to one reading of both clocks. A name that
    // had not followed yet when the run ended follows in the future.
    let (now, wall) = (Instant::now(), OffsetDateTime::now_utc());
    let at = |i: Instant| match i.checked_duration_since(now) {
        Some(ahead) => wall + ahead,
        None => wall - now.saturating_duration_since(i),
    };
    let stamp = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let ms = |t: OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut delays = Vec::new();
    let mut spans = Vec::new();
    for d in cell.names().emulated_delays() {
        let (changed, followed) = (at(d.changed_at), at(d.follows_at));
        // What a run waits on is a name reaching its new cluster; a name losing one (its
        // old answer lingering) runs alongside and is listed, not counted.
        if d.holder.is_some() {
            spans.push((ms(changed), ms(followed)));
        }
        delays.push(EmulatedDelay {
            name: d.identifier,
            api_changed_at: stamp(changed),
            name_followed_at: stamp(followed),
            leads_to: d.holder,
            superseded: d.superseded,
        });
    }
    (delays, spans)
}

/// Fails the report if any file written (histories, report, timeline), or the summary,
/// carries a cell password; such files are removed.
fn check_no_secret(report: &mut Report, passwords: &[String], out_dir: &Path) {
    let files: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    let mut texts = vec![
        serde_json::to_string(report).unwrap_or_default(),
        report.summary(),
    ];
    texts.extend(files.iter().filter_map(|f| std::fs::read_to_string(f).ok()));
    let leaked = passwords
        .iter()
        .filter(|p| p.len() >= 8)
        .any(|p| texts.iter().any(|t| t.contains(p.as_str())));
    if leaked {
        // Never keep a file that carries one.
        for file in &files {
            let _ = std::fs::remove_file(file);
        }
        report.failures.push(
            "a cell password appeared in the report, the timeline or a history (files removed)"
                .to_owned(),
        );
        report.passed = false;
    }
}

/// Rows of `public.archive` per INSERT while loading bulk data (~256 MB each).
const BULK_ROWS_PER_STATEMENT: u64 = 256 * 1024;
/// Bytes per archive row: a 1000-character body that is stored inline and does not
/// compress (values under ~2 KB are never compressed), plus the tuple header and key.
const BULK_ROW_BYTES: u64 = 1040;

/// Fills `public.archive` on blue (owned by the application's owner, as its tables are)
/// with about `bytes` of table data, in statements of ~256 MB.
async fn load_bulk(cell: &LocalCell, bytes: u64) -> Result<(), String> {
    let blue = cell
        .blue
        .superuser_client("app")
        .await
        .map_err(|e| e.to_string())?;
    blue.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.archive (id bigint PRIMARY KEY, body text NOT NULL);
         ALTER TABLE public.archive OWNER TO app_owner",
    )
    .await
    .map_err(|e| format!("creating public.archive: {e}"))?;
    let rows = bytes.div_ceil(BULK_ROW_BYTES);
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let next = (done + BULK_ROWS_PER_STATEMENT).min(rows);
        let (from, to) = (
            i64::try_from(done + 1).unwrap_or(i64::MAX),
            i64::try_from(next).unwrap_or(i64::MAX),
        );
        // md5 of distinct inputs, concatenated: text that does not compress.
        blue.execute(
            "INSERT INTO public.archive (id, body)
             SELECT g, (SELECT string_agg(md5(g::text || '/' || i::text), '')
                          FROM generate_series(1, 31) i)
               FROM generate_series($1::bigint, $2::bigint) g",
            &[&from, &to],
        )
        .await
        .map_err(|e| format!("loading public.archive: {e}"))?;
        done = next;
        eprintln!(
            "  bulk: {done} of {rows} archive rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    blue.batch_execute("ANALYZE public.archive")
        .await
        .map_err(|e| format!("analyzing public.archive: {e}"))?;
    Ok(())
}

/// The scratch database on green's server that `pgcopydb clone` fills, and drops after.
const BASELINE_DATABASE: &str = "pgcopydb_baseline";

/// `pgcopydb clone` of blue's application database into [`BASELINE_DATABASE`] on green's
/// server, timed end to end, then dropped (its disk is back before prepare starts). Its
/// output goes to `pgcopydb.log` in `out_dir`. pgcopydb 0.10 runs Debian's pg_dump and
/// pg_restore 15, which dump servers up to 15: a newer blue is reported, not cloned.
async fn pgcopydb_clone(cell: &LocalCell, out_dir: &Path) -> BaselineClone {
    const JOBS: &str = "2";
    let mut baseline = BaselineClone {
        command: format!(
            "pgcopydb clone --table-jobs {JOBS} --index-jobs {JOBS} --no-owner --no-acl"
        ),
        ..BaselineClone::default()
    };
    let install = Install::from_env();
    let pgcopydb = match install.pgcopydb() {
        Ok(path) => path,
        Err(e) => {
            baseline.error = Some(format!("{e} (make setup installs it)"));
            return baseline;
        }
    };
    if let Ok(out) = std::process::Command::new(&pgcopydb)
        .arg("--version")
        .output()
    {
        baseline.version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
    }
    if cell.blue.major > 15 {
        baseline.error = Some(format!(
            "not run: pgcopydb 0.10 runs pg_dump 15, which cannot dump PostgreSQL {}",
            cell.blue.major
        ));
        return baseline;
    }
    let database = cell
        .document
        .databases
        .first()
        .cloned()
        .unwrap_or_else(|| "app".to_owned());
    let green = match cell.green.superuser_client("postgres").await {
        Ok(client) => client,
        Err(e) => {
            baseline.error = Some(format!("green: {e}"));
            return baseline;
        }
    };
    let scratch = switchyard_postgres::quote::ident(BASELINE_DATABASE);
    let drop = format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)");
    // Two statements: CREATE DATABASE cannot run inside the implicit transaction of one.
    for sql in [drop.clone(), format!("CREATE DATABASE {scratch}")] {
        if let Err(e) = green.batch_execute(&sql).await {
            baseline.error = Some(format!(
                "creating {BASELINE_DATABASE} on green: {}",
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned())
            ));
            return baseline;
        }
    }
    // URIs without the password (libpq reads PGPASSWORD: the same orchestrator on both).
    let uri = |server: &PgServer, db: &str| {
        let mut query = Vec::new();
        for (key, value) in server.libpq_env() {
            match key {
                "PGSSLMODE" => query.push(format!("sslmode={value}")),
                "PGSSLROOTCERT" => query.push(format!("sslrootcert={value}")),
                _ => {}
            }
        }
        format!(
            "postgres://{}@{}:{}/{db}?{}",
            cell.secrets.orchestrator_user,
            server.ip,
            server.port,
            query.join("&")
        )
    };
    let work = out_dir.join("pgcopydb-work");
    let _ = std::fs::remove_dir_all(&work);
    let log = out_dir.join("pgcopydb.log");
    let path = format!(
        "/usr/lib/postgresql/15/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    eprintln!("baseline: {} …", baseline.command);
    let started = Instant::now();
    let ran = tokio::process::Command::new(&pgcopydb)
        .args(["clone", "--table-jobs", JOBS, "--index-jobs", JOBS])
        .args(["--no-owner", "--no-acl"])
        .arg("--source")
        .arg(uri(&cell.blue, &database))
        .arg("--target")
        .arg(uri(&cell.green, BASELINE_DATABASE))
        .arg("--dir")
        .arg(&work)
        .env("PATH", path)
        .env("PGPASSWORD", cell.secrets.orchestrator.expose())
        .output()
        .await;
    let elapsed = started.elapsed();
    match ran {
        Ok(out) => {
            let mut text = out.stdout;
            text.extend_from_slice(&out.stderr);
            let _ = std::fs::write(&log, &text);
            if out.status.success() {
                baseline.elapsed_ms = u64::try_from(elapsed.as_millis()).ok();
            } else {
                baseline.error = Some(format!(
                    "pgcopydb exited {} (see {})",
                    out.status,
                    log.display()
                ));
            }
        }
        Err(e) => baseline.error = Some(format!("running pgcopydb: {e}")),
    }
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = green.batch_execute(&drop).await {
        let e = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        eprintln!("baseline: dropping {BASELINE_DATABASE} on green: {e}");
    }
    eprintln!(
        "baseline: {}",
        baseline.elapsed_ms.map_or_else(
            || baseline.error.clone().unwrap_or_default(),
            |ms| format!("{ms} ms")
        )
    );
    baseline
}

/// Green's subscription tables over prepare, seen every 250 ms: from the first appearing
/// to all of them ready (`r`), the initial copy. Ends when `done` is sent.
async fn watch_initial_copy(
    cell: &LocalCell,
    database: &str,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Option<u64> {
    let mut client = None;
    let mut first_seen: Option<Instant> = None;
    loop {
        if client.is_none() {
            client = cell.green.superuser_client(database).await.ok();
        }
        if let Some(c) = &client {
            match c
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE srsubstate = 'r')
                       FROM pg_catalog.pg_subscription_rel",
                    &[],
                )
                .await
            {
                Ok(row) => {
                    let (all, ready): (i64, i64) = (row.get(0), row.get(1));
                    if all > 0 {
                        let from = *first_seen.get_or_insert_with(Instant::now);
                        if ready == all {
                            return u64::try_from(from.elapsed().as_millis()).ok();
                        }
                    }
                }
                Err(_) => client = None,
            }
        }
        tokio::select! {
            _ = &mut done => return None,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Blue's user tables' data in bytes (`pg_table_size`: heap and TOAST, no indexes).
async fn data_bytes(cell: &LocalCell, database: &str) -> Option<u64> {
    let blue = cell.blue.superuser_client(database).await.ok()?;
    let row = blue
        .query_one(
            "SELECT coalesce(sum(pg_catalog.pg_table_size(c.oid)), 0)::bigint
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'switchyard')",
            &[],
        )
        .await
        .ok()?;
    u64::try_from(row.get::<_, i64>(0)).ok()
}

/// PgBouncer's `query_wait_timeout` as it reports it, in ms (`None`: not read).
async fn query_wait_timeout_ms(cell: &LocalCell) -> Option<u64> {
    let admin = cell.pgbouncer_admin().await.ok()?;
    let value = admin.config_value("query_wait_timeout").await.ok()??;
    value
        .trim_end_matches('s')
        .parse::<u64>()
        .ok()
        .map(|s| s * 1000)
}

fn start_ledger(cell: &LocalCell, workers: usize) -> Result<switchyard_local_cell::Ledger, String> {
    cell.start_ledger(workers, Duration::ZERO)
        .map_err(|e| format!("starting the ledger: {e}"))
}

fn direct_acknowledged(cell: &LocalCell) -> usize {
    cell.direct_writers().iter().map(|d| d.acknowledged()).sum()
}

/// Whether the direct writers acknowledge new jobs within 30 s.
async fn wait_direct_writers(cell: &LocalCell, before: usize) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if direct_acknowledged(cell) > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn audit(
    server: &PgServer,
    database: &str,
    table: (&str, &str),
    column: &str,
    keys: &[String],
) -> AuditSummary {
    match audit_keys(&server.superuser_options(database), table, column, keys).await {
        Ok(a) => AuditSummary {
            present_once: a.present_once,
            missing: a.missing,
            duplicated: a.duplicated,
        },
        Err(e) => {
            eprintln!("audit of {}.{} on {}: {e}", table.0, table.1, server.name);
            // Unverifiable counts as lost.
            AuditSummary {
                present_once: 0,
                missing: keys.len(),
                duplicated: 0,
            }
        }
    }
}

/// Row count and an order-independent digest of the ids, per downstream table.
async fn fingerprint(server: &PgServer, db: &str) -> Option<Vec<(i64, String)>> {
    let client = server.superuser_client(db).await.ok()?;
    let mut out = Vec::new();
    for table in ["accounts", "payments"] {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') FROM {}",
            switchyard_postgres::quote::qualified("public", table)
        );
        let row = client.query_one(&sql, &[]).await.ok()?;
        out.push((row.get(0), row.get(1)));
    }
    Some(out)
}

/// With the ledger stopped, whether the downstream reaches exactly the primary's rows
/// within 60 s.
async fn downstream_converges(cell: &LocalCell, primary: &PgServer, database: &str) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let want = fingerprint(primary, database).await;
        let have = fingerprint(&cell.search, "search").await;
        if want.is_some() && have == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// `SHOW server_version` as an application role sees it through PgBouncer (first word:
/// `14.18`), or `None` if PgBouncer does not answer within 10 s.
pub async fn version_through_pgbouncer(cell: &LocalCell) -> Option<String> {
    let options = cell.via_pgbouncer("app_writer").ok()?;
    let ask = async {
        let client = switchyard_postgres::connect(&options).await.ok()?;
        // Simple protocol: named prepared statements do not survive transaction pooling.
        let rows = client.simple_query("SHOW server_version").await.ok()?;
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row
                .get(0)
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_owned),
            _ => None,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .ok()
        .flatten()
}

/// The report of a run that could not be carried out at all: no execution, no load.
pub fn not_run(error: String) -> Report {
    let cell = CellOptions::from_env(&Install::from_env()).ok();
    let mut report = Report::of_executions(None, None);
    report.blue_major = cell.as_ref().map_or(0, |c| c.blue_major);
    report.target_major = cell.as_ref().map_or(0, |c| c.green_major);
    report.error = Some(error.clone());
    report.judge();
    report
        .failures
        .insert(0, format!("the rehearsal could not run: {error}"));
    report
}
