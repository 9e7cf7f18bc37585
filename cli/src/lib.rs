//! `switchyard`: the operator's commands, as a library shared by two binaries — the
//! installable `switchyard` (this crate: invokes go to the deployed Lambdas) and the
//! local harness's `switchyard-local` (state-machine/local: the same commands, and
//! `invoke` runs the function in-process by default).
//!
//! - `start`: a run of a state machine for a cell (execution `<cell>-<phase>-<utc>`),
//!   refused while the cell has one running (prepare, switchover, abandon-prepare or
//!   finalize);
//! - `follow`: an execution state by state as it happens — durations, retries, lag, the
//!   pause window — ending with the outcome (exit 0 only if it succeeded);
//! - `status`, `abort`, `back-document`: where a cell is; a run aborted by hand; the
//!   switch-back's document;
//! - `invoke`: one function by name with a cell document, through its Lambda, `--dry-run`
//!   to see what it would change; `invoke FUNCTION --help` lists its payload. It first
//!   says who holds the cell's run lock: a function that changes the cell acts as a run
//!   (`--run-id`, the lock holder's to repair that run) or overrides the lock deliberately
//!   (`--force`);
//! - `report`: `report.json`, a summary and `timeline.svg` from finished executions (Step
//!   Functions' history or the local executor's).
//!
//! Secrets never pass through here: the cell document names SSM parameters only.

mod aws;
pub mod catalog;
mod fleet;
mod status;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use switchyard_cell::CellDocument;
use switchyard_errors::Catalogued;
use switchyard_history::follow::Follower;
use switchyard_history::history::read_execution;
use switchyard_history::report::Report;
use switchyard_operation::Deps;

/// Runs function `name` on a payload in this process, as its Lambda would.
pub type InProcess = for<'a> fn(
    &'a str,
    Value,
    &'a Deps,
) -> Pin<
    Box<dyn Future<Output = Result<Value, switchyard_operation::Error>> + Send + 'a>,
>;

/// Which binary runs the commands.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Its name in help and messages.
    pub name: &'static str,
    /// The functions in-process (the local harness), or none: invokes go to the Lambdas.
    pub in_process: Option<InProcess>,
}

impl Tool {
    /// The installable CLI: every invoke goes to the deployed Lambda.
    pub const REMOTE: Self = Self {
        name: "switchyard",
        in_process: None,
    };
}

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Operate switchyard runs: start, follow, invoke one function, report."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Prepare,
    Switchover,
    /// Undoing a prepare that will not be switched.
    AbandonPrepare,
    /// Closing the rollback window after the soak, on a switched cell.
    Finalize,
    /// Back to the old blue after a switch, through the switchover state machine with the
    /// reversed document (derived from the upgrade's document and its journal).
    Switchback,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Switchover => "switchover",
            Self::AbandonPrepare => "abandon-prepare",
            Self::Finalize => "finalize",
            Self::Switchback => "switchback",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a run for a cell; refused while an execution of the cell runs on any of the
    /// deployment's state machines (`<prefix>-prepare`, `-switchover`, `-abandon-prepare`,
    /// `-finalize`).
    Start {
        #[command(flatten)]
        cell: CellArg,
        /// The state machine to run (Terraform output `state_machine_arns`).
        #[arg(long)]
        state_machine_arn: String,
        /// Which state machine this is: names the execution `<cell>-<phase>-<utc>`.
        #[arg(long, value_enum, default_value = "switchover")]
        phase: Phase,
        /// Follow the execution once started.
        #[arg(long)]
        follow: bool,
    },
    /// Follow an execution until it ends: states, durations, retries, lag, pause window.
    /// Exits with the outcome's code: 0 switched / prepared / finalized / abandoned;
    /// 10 switched_cleanup_incomplete, 11 switched_resume_incomplete, 12
    /// switched_probe_mismatch, 20 aborted, 21 abort_incomplete, 22 not_started, 30
    /// prepare_failed, 31 finalize_failed, 32 abandon_failed, 40 interrupted; 2 is the
    /// command's own error.
    Follow {
        /// The execution's ARN (Step Functions).
        execution_arn: Option<String>,
        /// Replay a finished history file instead (local executor's or Step Functions').
        #[arg(long, conflicts_with = "execution_arn")]
        history: Option<PathBuf>,
        /// How often to poll the history, in ms.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Invoke one function by name with a cell document, for manual repair;
    /// `invoke FUNCTION --help` lists that function's payload fields.
    Invoke {
        /// The function's name, as in state-machine/ (e.g. `resume-pgbouncer`).
        function: String,
        /// The cell document (JSON).
        #[arg(long, required_unless_present = "payload")]
        cell: Option<PathBuf>,
        /// A whole payload as Step Functions sends it (`-`: standard input), e.g. a failed
        /// state's input copied from the execution history — `run_id`, `pause_deadline` and
        /// `force` included — to replay it exactly. The Task's parameters
        /// (`{"FunctionName": …, "Payload": {…}}`) are taken too.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["cell", "fields", "run_id", "force"])]
        payload: Option<PathBuf>,
        /// One of the function's own payload fields, `name=<JSON value>` (a bare word is a
        /// string): e.g. `--set mode=forward --set wait_seconds=30`.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        fields: Vec<String>,
        /// The run to act as: it must hold the cell's run lock (a function that changes the
        /// cell refuses otherwise). To repair a dead run, its id; for your own repair, take
        /// the lock first (`invoke acquire-lock --run-id <yours>`).
        #[arg(long)]
        run_id: Option<String>,
        /// Act although the run does not hold the lock, or (abort direction) although the
        /// cell has switched: only once no run is live, knowing what it overrides.
        #[arg(long)]
        force: bool,
        /// Print what the function would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Invoke the deployed Lambda (`<prefix>-<function>`). `switchyard` always does;
        /// `switchyard-local` runs the function in-process unless this is given.
        #[arg(long)]
        remote: bool,
        /// The Lambda names' prefix (`<prefix>-<function>`, Terraform's `name_prefix`).
        #[arg(long, default_value = "switchyard")]
        function_prefix: String,
    },
    /// Where a cell is, read-only, in seconds: the run that owns it, both legs' decisions,
    /// which cluster holds the cell's name, each PgBouncer instance (paused or not, where it
    /// points), the write fence, subscriptions and slots with their lag, and the next safe
    /// command. Exits 0 when healthy, 1 when something needs a person.
    Status {
        #[command(flatten)]
        cell: CellArg,
        /// `text` for people, `json` for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// The Lambda names' prefix, for `check-drift` (`<prefix>-check-drift`).
        #[arg(long, default_value = "switchyard")]
        function_prefix: String,
    },
    /// Abort the cell's run by hand: stop its execution, wait until its last step's Lambda
    /// can no longer be running, then run the switchover's abort path as its own execution
    /// (`<prefix>-abort`), acting as that run. Refused on a switched cell, and when no run
    /// holds the cell, with nothing changed.
    Abort {
        #[command(flatten)]
        cell: CellArg,
        /// The abort state machine (Terraform output `state_machine_arns`, `abort`).
        #[arg(long)]
        state_machine_arn: String,
        /// The longest wait for the stopped run's last step (default: its function's Lambda
        /// timeout); 0 once you have seen it end in its logs.
        #[arg(long, default_value_t = 960)]
        wait_seconds: u64,
        /// Follow the abort execution once started.
        #[arg(long)]
        follow: bool,
    },
    /// Print the switch-back's cell document for a switched upgrade (the upgrade's document
    /// reversed: the old blue, read from the journal's rename plan, becomes green), e.g. to
    /// repair a switch-back by hand with `invoke --cell`.
    BackDocument {
        /// The upgrade's cell document.
        #[command(flatten)]
        cell: CellArg,
    },
    /// Many cells through the fleet state machine, canary first: start, follow, report.
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Report finished executions: report.json, a summary and timeline.svg; exits with the
    /// outcome's code, as follow does.
    Report {
        /// The switchover's history file (local executor's or Step Functions').
        #[arg(long)]
        history: Option<PathBuf>,
        /// The prepare run's history file.
        #[arg(long)]
        prepare_history: Option<PathBuf>,
        /// The switchover execution's ARN (its history is fetched and kept beside the report).
        #[arg(long, conflicts_with = "history")]
        execution_arn: Option<String>,
        /// The prepare execution's ARN.
        #[arg(long, conflicts_with = "prepare_history")]
        prepare_execution_arn: Option<String>,
        /// Where report.json and timeline.svg go.
        #[arg(long, default_value = "target/report")]
        out: PathBuf,
    },
}

/// Parses the command line and runs the command: the exit code is the outcome's (`follow`,
/// `report`), healthy or not (`status`), 2 for the command's own error.
pub fn main(tool: Tool) -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = command(tool, &args).get_matches_from(&args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if std::env::var_os("RUST_LOG").is_some() {
        switchyard_telemetry::init_tracing();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&format!("starting the runtime: {e}")),
    };
    match runtime.block_on(run(tool, cli.command)) {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

/// The clap command for `tool`: `invoke`'s help lists the functions, and, when the command
/// line names one (`invoke FUNCTION --help`), that function's payload fields and example.
fn command(tool: Tool, args: &[std::ffi::OsString]) -> clap::Command {
    let named = args
        .iter()
        .skip_while(|a| a.to_str() != Some("invoke"))
        .skip(1)
        .filter_map(|a| a.to_str())
        .find_map(catalog::get);
    let after = match named {
        Some(function) => function.help(tool.name),
        None => catalog::list(),
    };
    let local = tool.in_process.is_some();
    Cli::command()
        .name(tool.name)
        .bin_name(tool.name)
        .mut_subcommand("invoke", |invoke| {
            invoke
                .after_help(after.clone())
                .after_long_help(after)
                .mut_arg("remote", |remote| remote.hide(!local))
        })
}

fn fail(message: &str) -> ExitCode {
    eprintln!("switchyard: {message}");
    ExitCode::from(2)
}

async fn run(tool: Tool, command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Start {
            cell,
            state_machine_arn,
            phase,
            follow,
        } => {
            let mut cell = cell.read().await?;
            if phase == Phase::Switchback {
                cell = back_document(&cell).await?;
            }
            let client = aws::sfn(&cell.region).await;
            let started = aws::start(&client, &state_machine_arn, &cell, phase.as_str()).await?;
            println!("started {}", started.name);
            println!("execution {}", started.arn);
            if follow {
                return aws::follow(&client, &started.arn, 1000).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Follow {
            execution_arn,
            history,
            poll_ms,
        } => match (execution_arn, history) {
            (_, Some(path)) => replay(&path),
            (Some(arn), None) => {
                let client = aws::sfn(&aws::region_of_arn(&arn)?).await;
                aws::follow(&client, &arn, poll_ms.max(200)).await
            }
            (None, None) => Err("follow needs an execution ARN or --history FILE".to_owned()),
        },
        Command::Invoke {
            function,
            cell,
            payload: payload_file,
            fields,
            run_id,
            force,
            dry_run,
            remote,
            function_prefix,
        } => {
            let Some(entry) = catalog::get(&function) else {
                return Err(format!(
                    "InvalidInput: no function named {function:?}; the functions are: {}",
                    catalog::names().join(", ")
                ));
            };
            let changes_cell = entry.changes_cell;
            let (cell, mut payload) = match (&cell, &payload_file) {
                (_, Some(file)) => {
                    let payload = read_payload(file)?;
                    let cell = CellDocument::from_value(payload["cell"].clone())
                        .map_err(|e| format!("InvalidInput: the payload's cell document: {e}"))?;
                    (cell, payload)
                }
                (Some(path), None) => {
                    let cell = read_cell(path)?;
                    let payload = payload_of(&cell, fields_of(&fields)?);
                    (cell, payload)
                }
                (None, None) => return Err("invoke needs --cell or --payload".to_owned()),
            };
            let holder = lock_holder(&cell).await?;
            eprintln!("switchyard: {holder}");
            if payload_file.is_some() {
                // Replayed as sent: its own run_id, force and deadline.
                if changes_cell && !payload.get("run_id").is_some_and(Value::is_string) {
                    return Err(format!(
                        "{function} changes the cell: the payload must name its run_id ({holder})"
                    ));
                }
            } else if changes_cell {
                let Some(run_id) = run_id else {
                    return Err(format!(
                        "{function} changes the cell: pass --run-id (the run to act as, which must hold the lock — {holder}), or --force"
                    ));
                };
                payload["run_id"] = Value::String(run_id);
                if force {
                    payload["force"] = Value::Bool(true);
                }
            } else if run_id.is_some() || force {
                return Err(format!(
                    "{function} changes nothing: it takes no --run-id or --force"
                ));
            }
            if dry_run {
                if !changes_cell {
                    eprintln!("switchyard: {function} changes nothing; running it");
                }
                payload[switchyard_operation::DRY_RUN_FIELD] = Value::Bool(true);
            }
            match tool.in_process.filter(|_| !remote) {
                Some(in_process) => invoke_in_process(in_process, &function, payload).await,
                None => {
                    let name = format!("{function_prefix}-{function}");
                    let client = aws::lambda(&cell.region).await;
                    aws::invoke(&client, &name, &payload).await
                }
            }
        }
        Command::Status {
            cell,
            output,
            function_prefix,
        } => {
            let cell = cell.read().await?;
            let deps = switchyard_operation::Deps::from_env()
                .await
                .map_err(|e| e.to_failure().to_string())?;
            let mut status = status::read(&cell, &deps).await?;
            if status.wants_drift() {
                // Read-only: the same check-drift the runbook runs, where invoke runs it.
                let payload = payload_of(&cell, Value::Null);
                let answer = match tool.in_process {
                    Some(in_process) => in_process("check-drift", payload, &deps)
                        .await
                        .map_err(|e| e.to_failure().to_string()),
                    None => {
                        let client = aws::lambda(&cell.region).await;
                        let name = format!("{function_prefix}-check-drift");
                        match aws::call(&client, &name, &payload).await {
                            Ok((output, false)) => Ok(output),
                            Ok((error, true)) => Err(format!(
                                "{}: {}",
                                error["errorType"].as_str().unwrap_or("error"),
                                error["errorMessage"].as_str().unwrap_or_default()
                            )),
                            Err(e) => Err(e),
                        }
                    }
                };
                status.set_drift(answer);
            }
            match output {
                Output::Text => print!("{}", status.text()),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
                ),
            }
            Ok(if status.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Abort {
            cell,
            state_machine_arn,
            wait_seconds,
            follow,
        } => {
            let cell = cell.read().await?;
            let aws_clients = switchyard_aws::AwsClients::load(Some(&cell.region)).await;
            let journal = switchyard_operation::Journal::new(&aws_clients.ssm, &cell);
            let (lock, decision) = journal
                .get_pair::<switchyard_operation::fence::RunLock, switchyard_operation::fence::Decision>()
                .await
                .map_err(|e| format!("reading the journal: {}", e.to_failure()))?;
            if let Some(d) = decision.as_ref().filter(|d| d.switched(&cell)) {
                return Err(switchyard_operation::fence::already_switched(&cell, d)
                    .to_failure()
                    .to_string());
            }
            let Some(lock) = lock else {
                return Err(format!(
                    "PreconditionFailed: no run holds cell {}: there is no run to abort and nothing was changed (switchyard status shows where the cell is)",
                    cell.cell_id
                ));
            };
            let client = aws::sfn(&cell.region).await;
            if let Some(execution) = &lock.execution {
                aws::stop_and_wait(
                    &client,
                    execution,
                    std::time::Duration::from_secs(wait_seconds),
                )
                .await?;
            }
            let input = serde_json::json!({ "cell": cell, "run_id": lock.run_id });
            let started =
                aws::start_with(&client, &state_machine_arn, &cell, "abort", input).await?;
            println!("aborting run {} as {}", lock.run_id, started.name);
            println!("execution {}", started.arn);
            if follow {
                return aws::follow(&client, &started.arn, 1000).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet { command } => fleet::run(command).await,
        Command::BackDocument { cell } => {
            let back = back_document(&cell.read().await?).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&back).map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            history,
            prepare_history,
            execution_arn,
            prepare_execution_arn,
            out,
        } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("creating {}: {e}", out.display()))?;
            let prepare = match (prepare_history, prepare_execution_arn) {
                (Some(path), _) => Some(read_history(&path)?),
                (None, Some(arn)) => {
                    Some(aws::fetch_execution(&arn, &out, "prepare-history.json").await?)
                }
                (None, None) => None,
            };
            let switchover = match (history, execution_arn) {
                (Some(path), _) => Some(read_history(&path)?),
                (None, Some(arn)) => {
                    Some(aws::fetch_execution(&arn, &out, "switchover-history.json").await?)
                }
                (None, None) => None,
            };
            if prepare.is_none() && switchover.is_none() {
                return Err(
                    "report needs a history: --history / --prepare-history FILE or --execution-arn / --prepare-execution-arn ARN"
                        .to_owned(),
                );
            }
            let report = Report::of_executions(
                prepare.as_ref().map(|(e, f)| (e, f.as_str())),
                switchover.as_ref().map(|(e, f)| (e, f.as_str())),
            );
            write_report(&report, &out)?;
            Ok(ExitCode::from(report.outcome.exit_code()))
        }
    }
}

/// Writes `report.json` and `timeline.svg` into `out` and prints the summary.
fn write_report(report: &Report, out: &Path) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    let report_path = out.join("report.json");
    std::fs::write(&report_path, json)
        .map_err(|e| format!("writing {}: {e}", report_path.display()))?;
    let svg_path = out.join("timeline.svg");
    std::fs::write(&svg_path, switchyard_history::timeline::svg(report))
        .map_err(|e| format!("writing {}: {e}", svg_path.display()))?;
    print!("{}", report.summary());
    println!("report:   {}", report_path.display());
    println!("timeline: {}", svg_path.display());
    Ok(())
}

/// Which cell: its document's file, or its id, whose document Terraform keeps in SSM.
#[derive(Debug, clap::Args)]
struct CellArg {
    /// The cell document (JSON).
    #[arg(long, required_unless_present = "cell_id", conflicts_with = "cell_id")]
    cell: Option<PathBuf>,
    /// The cell's id: its document is read from SSM, where Terraform keeps it
    /// (`<cells-path><id>`, Terraform output `cell_document_parameters`).
    #[arg(long)]
    cell_id: Option<String>,
    /// Where the cell documents are in SSM: `/<name_prefix>/cells/`.
    #[arg(long, default_value = "/switchyard/cells/")]
    cells_path: String,
}

impl CellArg {
    async fn read(&self) -> Result<CellDocument, String> {
        match (&self.cell, &self.cell_id) {
            (Some(path), _) => read_cell(path),
            (None, Some(id)) => read_cell_from_ssm(&self.cells_path, id).await,
            (None, None) => Err("InvalidInput: name the cell: --cell FILE or --cell-id ID".into()),
        }
    }
}

/// Cell `id`'s document from SSM parameter `<path><id>` (the default AWS region).
async fn read_cell_from_ssm(path: &str, id: &str) -> Result<CellDocument, String> {
    let name = format!("{}/{id}", path.trim_end_matches('/'));
    let clients = switchyard_aws::AwsClients::load(None).await;
    let answer = clients
        .ssm
        .get_parameter()
        .name(&name)
        .send()
        .await
        .map_err(|e| match e.as_service_error() {
            Some(s) if s.is_parameter_not_found() => format!(
                "InvalidInput: no cell document for cell {id} at SSM parameter {name} (Terraform writes one per cell that has a document in var.cells)"
            ),
            _ => format!("reading SSM parameter {name}: {}", switchyard_aws::AwsError::from_sdk(&name, &e)),
        })?;
    let text = answer
        .parameter()
        .and_then(|p| p.value())
        .ok_or_else(|| format!("SSM parameter {name} has no value"))?;
    let cell = CellDocument::from_json(text)
        .map_err(|e| format!("InvalidInput: the cell document at {name}: {e}"))?;
    cell.validate()
        .map_err(|e| format!("InvalidInput: the cell document at {name}: {e}"))?;
    if cell.cell_id != id {
        return Err(format!(
            "InvalidInput: SSM parameter {name} holds the document of cell {}, not {id}",
            cell.cell_id
        ));
    }
    Ok(cell)
}

fn read_cell(path: &Path) -> Result<CellDocument, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the cell document {}: {e}", path.display()))?;
    let cell = CellDocument::from_json(&text)
        .map_err(|e| format!("InvalidInput: the cell document {}: {e}", path.display()))?;
    cell.validate()
        .map_err(|e| format!("InvalidInput: the cell document {}: {e}", path.display()))?;
    Ok(cell)
}

/// A history file and the name its summary cites.
fn read_history(path: &Path) -> Result<(switchyard_state_machine::Execution, String), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let execution = read_execution(&text, &name).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((execution, path.display().to_string()))
}

/// `follow --history`: the lines a live follow would have printed.
fn replay(path: &Path) -> Result<ExitCode, String> {
    let (execution, _) = read_history(path)?;
    let mut follower = Follower::new();
    for event in &execution.history {
        for line in follower.feed(event) {
            println!("{line}");
        }
    }
    let outcome = follower
        .outcome()
        .unwrap_or_else(|| follower.ended_without_event());
    Ok(ExitCode::from(outcome.exit_code()))
}

/// A whole payload from `path` (`-`: standard input): an object with the cell document,
/// or a Task's parameters holding one under `Payload`.
fn read_payload(path: &Path) -> Result<Value, String> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("reading the payload from standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("reading the payload {}: {e}", path.display()))?
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "InvalidInput: the payload {} is not JSON: {e}",
            path.display()
        )
    })?;
    let payload = match value.get("Payload") {
        Some(inner) if value.get("FunctionName").is_some() => inner.clone(),
        _ => value,
    };
    if !payload.get("cell").is_some_and(Value::is_object) {
        return Err(format!(
            "InvalidInput: the payload {} holds no cell document (\"cell\": {{…}})",
            path.display()
        ));
    }
    Ok(payload)
}

/// `--set name=value` pairs as payload fields: the value as JSON, or as a string when it
/// is not JSON. The cell and the reserved fields cannot be set this way.
fn fields_of(pairs: &[String]) -> Result<Value, String> {
    let mut fields = serde_json::Map::new();
    for pair in pairs {
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| format!("--set {pair}: expected NAME=VALUE"))?;
        let reserved = [
            "cell",
            "run_id",
            "force",
            switchyard_operation::DRY_RUN_FIELD,
            switchyard_operation::PAUSE_DEADLINE_FIELD,
        ];
        if name.is_empty() || reserved.contains(&name) {
            return Err(format!(
                "--set {name}: not a field to set by hand (the cell comes from --cell, the run from --run-id, --force and a dry run from their flags; to replay a payload with its own run_id and pause_deadline, pass it whole with --payload)"
            ));
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        fields.insert(name.to_owned(), value);
    }
    Ok(Value::Object(fields))
}

/// The switch-back's document for `cell`'s upgrade, once it has switched: the old blue is
/// the one the rename plan parked (SSM journal, the standard AWS chain).
async fn back_document(cell: &CellDocument) -> Result<CellDocument, String> {
    use switchyard_operation::fence::Decision;
    use switchyard_operation::rename::{self, RenamePlan};
    if cell.is_back() {
        return Err(format!(
            "InvalidInput: the cell document is a switch-back's already (it undoes {:?}): pass the upgrade's",
            cell.undoes
        ));
    }
    let aws = switchyard_aws::AwsClients::load(Some(&cell.region)).await;
    let journal = switchyard_operation::Journal::new(&aws.ssm, cell);
    let (decision, plan) = journal
        .get_pair::<Decision, RenamePlan>()
        .await
        .map_err(|e| format!("reading the journal: {}", e.to_failure()))?;
    if !decision.as_ref().is_some_and(|d| d.switched(cell)) {
        return Err(format!(
            "PreconditionFailed: cell {} has not switched to {} (PostgreSQL {}): there is nothing to switch back",
            cell.cell_id, cell.green.cluster_identifier, cell.target_major_version
        ));
    }
    let parked = plan
        .filter(|p| p.target_major_version == cell.target_major_version)
        .map(|p| p.parked_identifier)
        .ok_or_else(|| {
            format!(
                "PreconditionFailed: no rename plan of this upgrade in {}: the old blue cannot be named",
                journal.parameter_of::<RenamePlan>()
            )
        })?;
    let major = rename::parked_major(cell, &parked).ok_or_else(|| {
        format!("PreconditionFailed: the rename plan's old blue {parked} is not a parked name of this cell")
    })?;
    cell.back(&parked, major)
        .map_err(|e| format!("InvalidInput: the switch-back's document: {e}"))
}

/// Who holds the cell's run lock, read from its journal (SSM, the standard AWS chain).
async fn lock_holder(cell: &CellDocument) -> Result<String, String> {
    let aws = switchyard_aws::AwsClients::load(Some(&cell.region)).await;
    let journal = switchyard_operation::Journal::new(&aws.ssm, cell);
    let lock = journal
        .get::<switchyard_operation::fence::RunLock>()
        .await
        .map_err(|e| format!("reading the run lock: {}", e.to_failure()))?;
    Ok(match lock {
        Some(lock) => format!(
            "cell {}'s lock is held by {}",
            cell.cell_id,
            lock.describe()
        ),
        None => format!("cell {}'s lock is free", cell.cell_id),
    })
}

/// `{"cell": cell, …fields}`: the payload a state machine Task would pass.
fn payload_of(cell: &CellDocument, fields: Value) -> Value {
    let mut payload = serde_json::json!({ "cell": cell });
    if let (Some(p), Value::Object(fields)) = (payload.as_object_mut(), fields) {
        p.extend(fields);
    }
    payload
}

/// Runs the function in this process, as its Lambda would, with the deployment
/// configuration from the environment (AWS credentials and region; for a local cell
/// `SWITCHYARD_LOCAL_ENDPOINTS`).
async fn invoke_in_process(
    in_process: InProcess,
    function: &str,
    payload: Value,
) -> Result<ExitCode, String> {
    let deps = Deps::from_env()
        .await
        .map_err(|e| e.to_failure().to_string())?;
    match in_process(function, payload, &deps).await {
        Ok(output) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&output).map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            // As the Lambda runtime answers, and Step Functions' Cause reads: the name
            // once, in errorType.
            let failure = e.to_failure();
            let error = serde_json::json!({
                "errorType": failure.name().as_str(),
                "errorMessage": failure.message(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&error).unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_fields_are_json_or_strings_and_reserved_ones_are_refused() {
        let fields = fields_of(&[
            "mode=forward".to_owned(),
            "wait_seconds=30".to_owned(),
            "old_blue_identifier=local-a-blue-14".to_owned(),
        ])
        .expect("fields");
        assert_eq!(
            fields,
            serde_json::json!({"mode": "forward", "wait_seconds": 30, "old_blue_identifier": "local-a-blue-14"})
        );
        for bad in [
            "cell={}",
            "run_id=x",
            "force=true",
            "dry_run=true",
            "pause_deadline=x",
            "novalue",
            "=1",
        ] {
            assert!(fields_of(&[bad.to_owned()]).is_err(), "{bad} accepted");
        }
    }
}
