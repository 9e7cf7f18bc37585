//! `switchyard fleet start|follow|report`: many cells through the deployed fleet state
//! machine (`<prefix>-fleet`), canary first, and one table of every cell's outcome.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use clap::Subcommand;
use switchyard_cell::CellDocument;
use switchyard_history::fleet::{child_arns, fleet_input, FleetOptions, FleetReport};
use switchyard_history::history::from_aws_events;
use switchyard_state_machine::{EventType, Execution, Status};

use crate::aws;

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Start a fleet run: the canary cells alone, then the others `--max-concurrency` at a
    /// time, each cell's prepare or switchover after its preflight. Once more cells have
    /// failed than `--tolerated-failures`, no later wave starts (a running cell always runs
    /// to its end).
    Start {
        /// The cells' documents (JSON), canary first.
        #[arg(long = "cell", num_args = 1.., required_unless_present = "cell_ids", conflicts_with = "cell_ids")]
        cells: Vec<PathBuf>,
        /// The cells by id, canary first: their documents are read from SSM, where
        /// Terraform keeps them (`<cells-path><id>`).
        #[arg(long = "cell-id", num_args = 1..)]
        cell_ids: Vec<String>,
        /// Where the cell documents are in SSM: `/<name_prefix>/cells/`.
        #[arg(long, default_value = "/switchyard/cells/")]
        cells_path: String,
        /// The fleet state machine (Terraform output `state_machine_arns`, `fleet`).
        #[arg(long)]
        state_machine_arn: String,
        /// `prepare` or `switchover`.
        #[arg(long)]
        phase: String,
        /// How many of the first cells form the canary wave.
        #[arg(long, default_value_t = 1)]
        canary: usize,
        /// Cells per wave after the canary.
        #[arg(long, default_value_t = 2)]
        max_concurrency: usize,
        /// Failed cells the fleet goes on past; one more halts it.
        #[arg(long, default_value_t = 0)]
        tolerated_failures: u64,
        /// Follow the fleet once started.
        #[arg(long)]
        follow: bool,
    },
    /// Follow a fleet run: each cell as it starts and ends, then the fleet's table. Exits
    /// 0 if every cell succeeded, 1 otherwise.
    Follow {
        /// The fleet execution's ARN.
        execution_arn: String,
        /// How often to poll, in ms.
        #[arg(long, default_value_t = 5000)]
        poll_ms: u64,
    },
    /// The fleet's table (every cell's wave, outcome, run, pause window, duration and why),
    /// fleet-report.json and fleet-timeline.svg (cells as rows), from a finished fleet run.
    /// Exits as follow does.
    Report {
        /// A local fleet history (`make rehearsal-fleet` writes them), children included.
        #[arg(long)]
        history: Option<PathBuf>,
        /// The fleet execution's ARN: its history and each cell run's are fetched.
        #[arg(long, conflicts_with = "history")]
        execution_arn: Option<String>,
        /// Where fleet-report.json goes.
        #[arg(long, default_value = "target/report")]
        out: PathBuf,
    },
}

pub async fn run(command: FleetCommand) -> Result<ExitCode, String> {
    match command {
        FleetCommand::Start {
            cells,
            cell_ids,
            cells_path,
            state_machine_arn,
            phase,
            canary,
            max_concurrency,
            tolerated_failures,
            follow,
        } => {
            let mut documents = cells
                .iter()
                .map(|path| crate::read_cell(path))
                .collect::<Result<Vec<CellDocument>, _>>()?;
            for id in &cell_ids {
                documents.push(crate::read_cell_from_ssm(&cells_path, id).await?);
            }
            let stamp = aws::utc_stamp(time::OffsetDateTime::now_utc());
            let name = format!("fleet-{phase}-{stamp}");
            let options = FleetOptions {
                phase,
                canary,
                max_concurrency,
                tolerated_failures,
            };
            let input = fleet_input(&name, &documents.iter().collect::<Vec<_>>(), &options)?;
            let client = aws::sfn(&aws::region_of_arn(&state_machine_arn)?).await;
            let arn = aws::start_named(&client, &state_machine_arn, &name, &input).await?;
            println!("started {name}");
            println!("execution {arn}");
            if follow {
                return follow_fleet(&client, &arn, 5000).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Follow {
            execution_arn,
            poll_ms,
        } => {
            let client = aws::sfn(&aws::region_of_arn(&execution_arn)?).await;
            follow_fleet(&client, &execution_arn, poll_ms.max(1000)).await
        }
        FleetCommand::Report {
            history,
            execution_arn,
            out,
        } => {
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("creating {}: {e}", out.display()))?;
            let (fleet, children) = match (history, execution_arn) {
                (Some(path), _) => {
                    let (fleet, _) = crate::read_history(&path)?;
                    let children = fleet.children.clone();
                    (fleet, children)
                }
                (None, Some(arn)) => {
                    let client = aws::sfn(&aws::region_of_arn(&arn)?).await;
                    fetch_fleet(&client, &arn).await?
                }
                (None, None) => {
                    return Err("fleet report needs --history FILE or --execution-arn ARN".into())
                }
            };
            print_report(&fleet, &children, Some(&out))
        }
    }
}

/// The fleet's history and every cell run it started, from Step Functions.
async fn fetch_fleet(
    client: &aws_sdk_sfn::Client,
    arn: &str,
) -> Result<(Execution, Vec<Execution>), String> {
    let name = arn.rsplit(':').next().unwrap_or(arn);
    let fleet = from_aws_events(&aws::history(client, arn).await?, name)?;
    let mut children = Vec::new();
    for child in child_arns(&fleet) {
        let events = aws::history(client, &child).await?;
        let child_name = child.rsplit(':').next().unwrap_or(&child);
        // A run that has not ended yet has no report of its own: left out.
        if let Ok(execution) = from_aws_events(&events, child_name) {
            children.push(execution);
        }
    }
    Ok((fleet, children))
}

fn print_report(
    fleet: &Execution,
    children: &[Execution],
    out: Option<&Path>,
) -> Result<ExitCode, String> {
    let report = FleetReport::of(fleet, children)?;
    print!("{}", report.table());
    if let Some(out) = out {
        let path = out.join("fleet-report.json");
        let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("report: {}", path.display());
        let svg = out.join("fleet-timeline.svg");
        std::fs::write(&svg, report.svg())
            .map_err(|e| format!("writing {}: {e}", svg.display()))?;
        println!("timeline: {}", svg.display());
    }
    let all_succeeded =
        report.status == Status::Succeeded && report.cells.iter().all(|c| c.outcome == "succeeded");
    Ok(if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Polls the fleet's history: a line as each cell starts and as it ends, then the table.
async fn follow_fleet(
    client: &aws_sdk_sfn::Client,
    arn: &str,
    poll_ms: u64,
) -> Result<ExitCode, String> {
    println!("console: {}", aws::console_url(arn));
    let mut printed = 0;
    // Each poll fetches only the newer events (a fleet's history is long).
    let mut events = Vec::new();
    loop {
        let after = events
            .last()
            .and_then(|e: &serde_json::Value| e["id"].as_i64())
            .unwrap_or(0);
        events.extend(aws::newer_events(client, arn, after).await?);
        let converted = switchyard_history::history::aws_events(&events)?;
        for event in converted.iter().skip(printed) {
            if let Some(line) = cell_line(event) {
                println!("{line}");
            }
        }
        printed = converted.len();
        let status = client
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .map_err(|e| format!("describing the fleet execution: {e}"))?;
        if status.status() != &ExecutionStatus::Running {
            let (fleet, children) = fetch_fleet(client, arn).await?;
            return print_report(&fleet, &children, None);
        }
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
}

/// A cell's start or end, from one fleet history event.
fn cell_line(event: &switchyard_state_machine::HistoryEvent) -> Option<String> {
    let state = event.state.as_deref()?;
    match (event.kind, state) {
        (EventType::TaskScheduled, "cell preflight") => {
            let cell = event
                .input
                .as_ref()?
                .pointer("/Payload/cell/cell_id")?
                .as_str()?;
            Some(format!("{} {cell}: preflight", event.timestamp))
        }
        (EventType::StateExited(_), "cell done" | "cell failed" | "cell not started") => {
            let output = event.output.as_ref()?;
            Some(format!(
                "{} {}: {}{}",
                event.timestamp,
                output.get("cell_id")?.as_str()?,
                output.get("outcome")?.as_str()?,
                output
                    .pointer("/error/Error")
                    .and_then(|e| e.as_str())
                    .map_or(String::new(), |e| format!(" ({e})"))
            ))
        }
        _ => None,
    }
}
