//! No secret anywhere a rehearsal leaves text: every log line the functions write (at
//! TRACE, through the functions' own subscriber), every execution payload (both histories:
//! each state's input and output, each task's parameters and result), the report, its
//! summary and the timeline, and the cell's server logs — grepped for every password of
//! the cell.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use switchyard_local_cell::{CellOptions, Install, LocalCell};
use switchyard_local_run::rehearsal::{rehearse_on, RunOptions};
use switchyard_local_run::report::Outcome;
use switchyard_telemetry::{init_tracing_to, LogSettings};

/// Every log line, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Captured;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_leaves_no_password_in_logs_payloads_or_reports() {
    let logs = Captured::default();
    // JSON lines at TRACE: the most the functions can be made to say.
    let settings = LogSettings::from_env_values(Some("JSON"), Some("TRACE"), None);
    init_tracing_to(&settings, logs.clone());

    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 500;
    options.run_direct_writers = true;
    let cell = LocalCell::start(&options).await.expect("cell");
    let passwords: Vec<String> = cell
        .secrets
        .all_passwords()
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert!(
        passwords.len() >= 4 && passwords.iter().all(|p| p.len() >= 12),
        "the cell's passwords are long enough that a hit is a leak, not chance"
    );

    let out_dir = cell.run_dir.join("rehearsal-out");
    let run = RunOptions {
        workers: 2,
        load_during_prepare: true,
        out_dir: out_dir.clone(),
        name_prefix: "secrets".to_owned(),
        bulk_bytes: 0,
        compare_pgcopydb: false,
        // The switch-back too: its payloads and outputs are checked like the rest.
        roundtrip: true,
    };
    let report = rehearse_on(&cell, &run).await.expect("the rehearsal ran");
    assert_eq!(
        report.outcome,
        Outcome::Switched,
        "a whole run, every function called: {:?}",
        report.failures
    );
    assert_eq!(
        report.switchback.as_ref().map(|b| b.outcome),
        Some(Outcome::Switched),
        "and back: {:?}",
        report.failures
    );

    let mut sources: Vec<(String, String)> = Vec::new();
    let log_text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    let log_lines = log_text.lines().count();
    assert!(
        log_lines > 100 && log_text.contains("rename_clusters"),
        "the functions' logs were captured ({log_lines} lines)"
    );
    sources.push(("the functions' log".to_owned(), log_text));
    sources.push(("the summary".to_owned(), report.summary()));
    let written = files_under(&out_dir);
    for expected in [
        "prepare-history.json",
        "switchover-history.json",
        "switchback-history.json",
        "report.json",
        "timeline.svg",
    ] {
        assert!(
            written.iter().any(|f| f.ends_with(expected)),
            "{expected} written"
        );
    }
    // Every file the run wrote (histories, report, timeline) and every server log of the
    // cell (PostgreSQL ×3, PgBouncer, moto, the fixture load).
    let server_logs = files_under(&cell.run_dir.join("logs"));
    assert!(server_logs.len() >= 5, "server logs found: {server_logs:?}");
    for file in written.iter().chain(&server_logs) {
        let text = std::fs::read(file).expect("readable");
        sources.push((
            file.display().to_string(),
            String::from_utf8_lossy(&text).into_owned(),
        ));
    }
    let histories = sources
        .iter()
        .filter(|(name, _)| name.ends_with("history.json"))
        .map(|(_, text)| text)
        .collect::<Vec<_>>();
    assert_eq!(histories.len(), 3, "the three histories read");
    assert!(
        histories
            .iter()
            .all(|h| h.contains("\"TaskScheduled\"") && h.contains("\"Payload\"")),
        "the histories carry every task's payload"
    );

    // The replication role's password exists only once start-replication made it.
    let replication = switchyard_aws::read_credentials(
        &cell.moto.clients.ssm,
        &cell.document.replication_credentials_parameter(),
    )
    .await
    .expect("the run's replication password");
    assert!(replication.password.expose().len() >= 12);
    let mut passwords = passwords;
    passwords.push(replication.password.expose().to_owned());

    let hits: Vec<String> = sources
        .iter()
        .flat_map(|(name, text)| {
            passwords
                .iter()
                .enumerate()
                .filter(|(_, p)| text.contains(p.as_str()))
                .map(move |(i, _)| format!("password #{i} in {name}"))
        })
        .collect();
    assert!(hits.is_empty(), "secrets leaked: {hits:?}");
    assert!(report.passed, "{:?}", report.failures);
    cell.shutdown();
}
