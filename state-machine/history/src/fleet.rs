//! A fleet run read back: one row per cell of its input — the wave it was in, its
//! outcome, its child execution, pause window and duration — from the fleet's history and
//! its children's ([`switchyard_state_machine::Execution::children`] locally; fetched by
//! ARN from Step Functions). A cell the fleet never reached (a halt before its wave) is a
//! row too: "not started: fleet halted".

use serde::Serialize;
use serde_json::{json, Value};
use switchyard_cell::CellDocument;
use switchyard_state_machine::{EventType, Execution, Status};

use crate::report::{between, pause_bounds, pause_window, steps, unix_ms, Outcome};

/// The longest execution name Step Functions takes.
pub const MAX_EXECUTION_NAME: usize = 80;

/// How to run a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// `prepare` or `switchover`.
    pub phase: String,
    /// The first this many cells form the canary wave.
    pub canary: usize,
    pub max_concurrency: usize,
    pub tolerated_failures: u64,
}

/// `fleet.asl.json`'s input for `cells` in order, checked: a named error and nothing
/// started for a phase other than prepare or switchover, no cells, a cell twice, a zero
/// `max_concurrency`, or a cell whose run name (`<fleet>-<cell_id>`) Step Functions would
/// refuse.
pub fn fleet_input(
    fleet_name: &str,
    cells: &[&CellDocument],
    options: &FleetOptions,
) -> Result<Value, String> {
    if !["prepare", "switchover"].contains(&options.phase.as_str()) {
        return Err(format!(
            "InvalidInput: phase {:?}: a fleet runs prepare or switchover",
            options.phase
        ));
    }
    if cells.is_empty() {
        return Err("InvalidInput: a fleet needs at least one cell".to_owned());
    }
    if options.max_concurrency == 0 {
        return Err("InvalidInput: max_concurrency must be at least 1".to_owned());
    }
    let mut seen = std::collections::BTreeSet::new();
    for cell in cells {
        if !seen.insert(cell.cell_id.as_str()) {
            return Err(format!(
                "InvalidInput: cell {} is listed twice",
                cell.cell_id
            ));
        }
        let run = format!("{fleet_name}-{}", cell.cell_id);
        if run.len() > MAX_EXECUTION_NAME {
            return Err(format!(
                "InvalidInput: cell {}'s run would be named {run} ({} characters, Step Functions takes {MAX_EXECUTION_NAME}): use a shorter fleet name",
                cell.cell_id,
                run.len()
            ));
        }
    }
    let split = options.canary.min(cells.len());
    Ok(json!({
        "phase": options.phase,
        "canary": cells[..split],
        "rest": cells[split..],
        "max_concurrency": options.max_concurrency,
        "tolerated_failures": options.tolerated_failures,
    }))
}

/// The ARNs of the cells' runs a fleet execution started, as its history records them:
/// each succeeded run's, and each failed run's from its description in the error.
pub fn child_arns(fleet: &Execution) -> Vec<String> {
    let mut arns = Vec::new();
    for event in &fleet.history {
        if !matches!(event.kind, EventType::StateExited(_))
            || !event
                .state
                .as_deref()
                .is_some_and(|s| OUTCOME_STATES.contains(&s))
        {
            continue;
        }
        let Some(output) = &event.output else {
            continue;
        };
        if let Some(arn) = output.get("execution_arn").and_then(Value::as_str) {
            arns.push(arn.to_owned());
        } else if let Some(arn) = output
            .pointer("/error/Cause")
            .and_then(Value::as_str)
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .and_then(|c| {
                c.get("ExecutionArn")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
        {
            arns.push(arn);
        }
    }
    arns
}

/// The states of `fleet.asl.json` whose output is a cell's outcome.
const OUTCOME_STATES: [&str; 3] = ["cell done", "cell failed", "cell not started"];

/// One cell of a fleet run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetRow {
    pub cell_id: String,
    /// 0 is the canary.
    pub wave: u64,
    /// `succeeded`, `failed`, `not started` (its preflight refused it) or
    /// `not started: fleet halted`.
    pub outcome: String,
    /// The child execution's own outcome (`switched`, `aborted`, `prepared`, …).
    pub run_outcome: Option<String>,
    pub execution: Option<String>,
    pub pause_window_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The error that stopped the cell and its message, shortened to one line.
    pub error: Option<String>,
    pub why: Option<String>,
    /// When its run started and ended, and its pause window opened and closed, in ms
    /// since the fleet started (the timeline's axis).
    pub run_span_ms: Option<(i64, i64)>,
    pub pause_span_ms: Option<(i64, i64)>,
}

/// A whole fleet run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub execution: String,
    pub phase: String,
    pub status: Status,
    pub halted: bool,
    pub tolerated_failures: u64,
    pub wall_ms: Option<u64>,
    pub cells: Vec<FleetRow>,
}

impl FleetReport {
    /// Reads a fleet execution; `children` are the child executions it started (by name).
    pub fn of(fleet: &Execution, children: &[Execution]) -> Result<Self, String> {
        let input = fleet
            .history
            .iter()
            .find(|e| e.kind == EventType::ExecutionStarted)
            .and_then(|e| e.input.clone())
            .ok_or("the fleet's history has no input")?;
        let cells = |key: &str| -> Vec<String> {
            input
                .get(key)
                .and_then(Value::as_array)
                .map(|cells| {
                    cells
                        .iter()
                        .filter_map(|c| c.get("cell_id").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let width = input
            .get("max_concurrency")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .ok_or("the fleet's input has no max_concurrency")?;
        // The same waves `plan waves` makes: the canary, then the rest by max_concurrency.
        let mut planned: Vec<(String, u64)> = cells("canary").into_iter().map(|c| (c, 0)).collect();
        for (i, cell) in cells("rest").into_iter().enumerate() {
            planned.push((cell, 1 + i as u64 / width));
        }
        let outcomes: Vec<&Value> = fleet
            .history
            .iter()
            .filter(|e| {
                matches!(e.kind, EventType::StateExited(_))
                    && e.state
                        .as_deref()
                        .is_some_and(|s| OUTCOME_STATES.contains(&s))
            })
            .filter_map(|e| e.output.as_ref())
            .collect();
        let fleet_start = fleet.history.first().and_then(|e| unix_ms(&e.timestamp));
        let since = |stamp: Option<&str>| -> Option<i64> { Some(unix_ms(stamp?)? - fleet_start?) };
        let mut rows = Vec::with_capacity(planned.len());
        for (cell_id, wave) in planned {
            let outcome = outcomes
                .iter()
                .find(|o| o.get("cell_id").and_then(Value::as_str) == Some(cell_id.as_str()));
            let child_name = format!("{}-{cell_id}", fleet.name);
            let child = children.iter().find(|c| c.name == child_name);
            let (error, why) = outcome
                .and_then(|o| o.get("error"))
                .map(describe_error)
                .unwrap_or_default();
            let (pause_window_ms, duration_ms) = child.map_or((None, None), |child| {
                let (window, _) = pause_window(child, &steps("run", child));
                let duration = between(
                    child.history.first().map(|e| e.timestamp.as_str()),
                    child.history.last().map(|e| e.timestamp.as_str()),
                );
                (window, duration)
            });
            let run_span_ms = child.and_then(|c| {
                Some((
                    since(c.history.first().map(|e| e.timestamp.as_str()))?,
                    since(c.history.last().map(|e| e.timestamp.as_str()))?,
                ))
            });
            let pause_span_ms = child.and_then(|c| {
                let (opened, closed) = pause_bounds(c);
                Some((since(opened.as_deref())?, since(closed.as_deref())?))
            });
            rows.push(FleetRow {
                run_span_ms,
                pause_span_ms,
                outcome: outcome
                    .and_then(|o| o.get("outcome").and_then(Value::as_str))
                    .unwrap_or("not started: fleet halted")
                    .to_owned(),
                run_outcome: child.map(|c| Outcome::of(Some(c)).as_str().to_owned()),
                execution: child.map(|c| c.name.clone()).or_else(|| {
                    outcome.and_then(|o| o.get("execution_arn")?.as_str().map(str::to_owned))
                }),
                pause_window_ms,
                duration_ms,
                error,
                why,
                cell_id,
                wave,
            });
        }
        Ok(Self {
            execution: fleet.name.clone(),
            phase: input
                .get("phase")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            status: fleet.status,
            halted: fleet.error.as_deref() == Some("FleetHalted"),
            tolerated_failures: input
                .get("tolerated_failures")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            wall_ms: between(
                fleet.history.first().map(|e| e.timestamp.as_str()),
                fleet.history.last().map(|e| e.timestamp.as_str()),
            ),
            cells: rows,
        })
    }

    /// The table a person reads: one line per cell, then the verdict.
    pub fn table(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        let mut out = format!(
            "fleet {} ({}): {}{}\n",
            self.execution,
            self.phase,
            match self.status {
                Status::Succeeded => "SUCCEEDED",
                Status::Failed => "FAILED",
                Status::TimedOut => "TIMED OUT",
            },
            self.wall_ms
                .map_or(String::new(), |w| format!(" in {:.1} s", w as f64 / 1000.0))
        );
        out.push_str(&format!(
            "{:<16} {:>4}  {:<26} {:<20} {:>12} {:>12}  {}\n",
            "cell", "wave", "outcome", "run", "pause", "duration", "why"
        ));
        for row in &self.cells {
            let why = match (&row.error, &row.why) {
                (Some(e), Some(w)) => format!("{e}: {w}"),
                (Some(e), None) => e.clone(),
                _ => String::new(),
            };
            out.push_str(&format!(
                "{:<16} {:>4}  {:<26} {:<20} {:>12} {:>12}  {}\n",
                row.cell_id,
                if row.wave == 0 {
                    "can".to_owned()
                } else {
                    row.wave.to_string()
                },
                row.outcome,
                row.run_outcome.as_deref().unwrap_or("-"),
                ms(row.pause_window_ms),
                ms(row.duration_ms),
                why
            ));
        }
        if self.halted {
            let failed: Vec<String> = self
                .cells
                .iter()
                .filter(|r| r.outcome == "failed" || r.outcome == "not started")
                .map(|r| {
                    format!(
                        "{} ({}{})",
                        r.cell_id,
                        r.outcome,
                        r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
                    )
                })
                .collect();
            let skipped = self
                .cells
                .iter()
                .filter(|r| r.outcome == "not started: fleet halted")
                .count();
            out.push_str(&format!(
                "HALTED: {} failed (more than the {} tolerated); {skipped} cell(s) not started\n",
                failed.join(", "),
                self.tolerated_failures
            ));
        }
        out
    }
}

impl FleetReport {
    /// The timeline picture: one row per cell, its run as a bar on the fleet's time axis
    /// (green succeeded, red failed, grey not started), its pause window as a dark band
    /// inside it, the waves as they came. Plain SVG 1.1 text.
    pub fn svg(&self) -> String {
        const WIDTH: f64 = 1100.0;
        const LABEL: f64 = 190.0;
        const RIGHT: f64 = 250.0;
        const ROW: f64 = 22.0;
        let span = self
            .cells
            .iter()
            .filter_map(|r| r.run_span_ms.map(|(_, end)| end))
            .chain(self.wall_ms.map(|w| i64::try_from(w).unwrap_or(i64::MAX)))
            .max()
            .unwrap_or(1)
            .max(1);
        let x = |ms: i64| LABEL + (WIDTH - LABEL - RIGHT) * (ms as f64 / span as f64);
        let height = 70.0 + ROW * self.cells.len() as f64 + 30.0;
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="24" font-size="15" font-weight="bold">fleet {} ({}): {}{}</text>
"#,
            escape(&self.execution),
            escape(&self.phase),
            match self.status {
                Status::Succeeded => "succeeded",
                Status::Failed if self.halted => "HALTED",
                Status::Failed => "failed",
                Status::TimedOut => "timed out",
            },
            self.wall_ms
                .map_or(String::new(), |w| format!(", {:.1} s", w as f64 / 1000.0))
        );
        for (i, row) in self.cells.iter().enumerate() {
            let y = 50.0 + ROW * i as f64;
            let wave = if row.wave == 0 {
                "canary".to_owned()
            } else {
                format!("wave {}", row.wave)
            };
            out.push_str(&format!(
                "<text x=\"20\" y=\"{:.1}\">{} · {wave}</text>\n",
                y + 14.0,
                escape(&row.cell_id)
            ));
            let colour = match row.outcome.as_str() {
                "succeeded" => "#3c9d5d",
                "failed" | "not started" => "#c8453c",
                _ => "#b8b8b8",
            };
            match row.run_span_ms {
                Some((start, end)) => out.push_str(&format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" fill=\"{colour}\"/>\n",
                    x(start),
                    y + 3.0,
                    (x(end) - x(start)).max(2.0)
                )),
                None => out.push_str(&format!(
                    "<rect x=\"{LABEL:.1}\" y=\"{:.1}\" width=\"6\" height=\"14\" fill=\"{colour}\"/>\n",
                    y + 3.0
                )),
            }
            if let Some((opened, closed)) = row.pause_span_ms {
                out.push_str(&format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" fill=\"#1d3557\"/>\n",
                    x(opened),
                    y + 3.0,
                    (x(closed) - x(opened)).max(2.0)
                ));
            }
            let note = match (row.pause_window_ms, &row.error) {
                (_, Some(error)) => format!("{}: {error}", row.outcome),
                (Some(pause), None) => format!("{}, pause {pause} ms", row.outcome),
                (None, None) => row.outcome.clone(),
            };
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}</text>\n",
                WIDTH - RIGHT + 10.0,
                y + 14.0,
                escape(&note)
            ));
        }
        out.push_str(&format!(
            "<text x=\"{LABEL:.1}\" y=\"{:.1}\" fill=\"#555\" font-size=\"10\">0 s</text>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\" font-size=\"10\" text-anchor=\"end\">{:.1} s</text>\n</svg>\n",
            height - 12.0,
            WIDTH - RIGHT,
            height - 12.0,
            span as f64 / 1000.0
        ));
        out
    }
}

/// A caught error object (`{"Error", "Cause"}`) as (name, one-line message). A child's
/// failure is `States.TaskFailed` whose cause is the child's description: its own error
/// and cause are what matters.
fn describe_error(error: &Value) -> (Option<String>, Option<String>) {
    let name = error
        .get("Error")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let cause = error
        .get("Cause")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let child: Option<Value> = serde_json::from_str(cause).ok();
    let (name, cause) = match child.as_ref().and_then(|c| c.get("Error")) {
        Some(inner) => (
            inner.as_str().map(str::to_owned),
            child
                .as_ref()
                .and_then(|c| c.get("Cause"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        None => (name, cause.to_owned()),
    };
    // A function's error reaches Step Functions as {"errorMessage", "errorType"}.
    let message = serde_json::from_str::<Value>(&cause)
        .ok()
        .and_then(|v| {
            v.get("errorMessage")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or(cause);
    let line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line
    };
    (name, (!line.is_empty()).then_some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(id: &str) -> CellDocument {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../cells/local.json"
        ))
        .expect("cells/local.json");
        let mut value: Value = serde_json::from_str(&text).expect("JSON");
        value["cell_id"] = json!(id);
        serde_json::from_value(value).expect("a cell document")
    }

    fn options(phase: &str, canary: usize, max_concurrency: usize) -> FleetOptions {
        FleetOptions {
            phase: phase.to_owned(),
            canary,
            max_concurrency,
            tolerated_failures: 0,
        }
    }

    #[test]
    fn the_input_splits_the_canary_from_the_rest() {
        let (a, b, c) = (cell("a"), cell("b"), cell("c"));
        let input =
            fleet_input("fleet-x", &[&a, &b, &c], &options("switchover", 1, 2)).expect("valid");
        let ids = |key: &str| -> Vec<String> {
            input[key]
                .as_array()
                .expect("array")
                .iter()
                .map(|c| c["cell_id"].as_str().expect("id").to_owned())
                .collect()
        };
        assert_eq!(ids("canary"), ["a"]);
        assert_eq!(ids("rest"), ["b", "c"]);
        assert_eq!(input["max_concurrency"], 2);
        assert_eq!(input["tolerated_failures"], 0);
        // A canary larger than the fleet is the whole fleet.
        let all = fleet_input("fleet-x", &[&a, &b], &options("prepare", 5, 1)).expect("valid");
        assert_eq!(all["rest"], json!([]));
    }

    #[test]
    fn bad_fleets_are_refused_by_name() {
        let (a, b) = (cell("a"), cell("b"));
        let refused = |cells: &[&CellDocument], options: FleetOptions, name: &str| {
            fleet_input(name, cells, &options).expect_err("refused")
        };
        assert!(refused(&[&a], options("finalize", 1, 1), "f").contains("phase"));
        assert!(refused(&[], options("prepare", 1, 1), "f").contains("at least one cell"));
        assert!(refused(&[&a, &a], options("prepare", 1, 1), "f").contains("listed twice"));
        assert!(refused(&[&a, &b], options("prepare", 1, 0), "f").contains("max_concurrency"));
        let long = "f".repeat(79);
        let err = refused(&[&a], options("prepare", 1, 1), &long);
        assert!(
            err.starts_with("InvalidInput") && err.contains("80"),
            "{err}"
        );
    }
}
