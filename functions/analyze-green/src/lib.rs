//! `analyze-green`: fresh planner statistics on green for every replicated table.
//!
//! Logical replication's initial copy and apply leave green's statistics stale or empty,
//! so the first queries after the switchover would be planned blind. For each database
//! this runs `ANALYZE` (or `VACUUM (ANALYZE)`) on every table green's subscriptions
//! replicate, found in green's own catalogs, and on their partitioned ancestors (whose
//! statistics sample all their partitions). Only green is touched; running it again just
//! refreshes the statistics.
//!
//! Resumable, like the full `verify-data`: after `budget_seconds` (the cell's
//! `budgets.analyze_seconds` when absent) an invocation starts no new table and hands the
//! next one over as its `cursor` (`done: false`); the prepare state machine passes it back
//! as `resume` until `done`. A statement still running at the budget's end is cancelled
//! (`statement_timeout`) and its table handed over whole: ANALYZE samples, so it starts
//! again cheaply, and a cancelled VACUUM has already marked the pages it finished
//! all-visible, which the next one skips. The first table of an invocation may run for
//! [`FIRST_STATEMENT`], whatever the budget, so every invocation gets somewhere; a plain
//! ANALYZE that does not finish in that time is a `DatabaseError`, not another hand-over.
//!
//! Dry run ([`plan`]): the ANALYZE (or VACUUM (ANALYZE)) statements the run would send, in
//! order. It is never empty while green has tables: a rerun refreshes them again.

mod tables;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::{Deps, Error, Listed, Plan, Side};
use switchyard_postgres::quote::{self, qualified};

/// ```json
/// {"cell": { …the cell document… }, "vacuum": false}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
    /// `VACUUM (ANALYZE)` instead of `ANALYZE`: also sets hint bits and the visibility
    /// map after the bulk copy, at the cost of reading every page.
    #[serde(default)]
    pub vacuum: bool,
    /// Work for this long, then hand the next table over as `cursor`; the cell's
    /// `budgets.analyze_seconds` when absent (0: one table per invocation).
    #[serde(default)]
    pub budget_seconds: Option<u64>,
    /// Where the previous invocation stopped (its output's `cursor`); from the first table
    /// when absent or null.
    #[serde(default)]
    pub resume: Option<Cursor>,
}

/// The table an invocation handed over: the next one to refresh (not yet, or not wholly,
/// done), as green's catalog names it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub database: String,
    pub schema: String,
    pub table: String,
}

/// How long the first statement of an invocation may run, whatever the budget: inside
/// Lambda's 900 s with room to answer.
pub const FIRST_STATEMENT: Duration = Duration::from_secs(720);

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// What this invocation refreshed, database by database.
    pub databases: Vec<DatabaseStatistics>,
    /// Every table is refreshed: false hands `cursor` to the next invocation.
    pub done: bool,
    pub cursor: Option<Cursor>,
}

/// One database of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseStatistics {
    pub name: String,
    /// Every table analyzed (the first of them; each is logged).
    pub tables: Listed<TableStatistics>,
    pub total_millis: u64,
}

/// One table, `schema.name` quoted where SQL needs it (as psql would take it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct TableStatistics {
    pub table: String,
    pub millis: u64,
}

/// This invocation's pace: where it started, when it stops starting tables, and what it
/// has done so far.
struct Pace {
    resume: Option<Cursor>,
    budget: Duration,
    deadline: Instant,
    /// A table finished in this invocation: the budget now applies.
    finished_one: bool,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier, vacuum = input.vacuum))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Either).await?;
    let budget = Duration::from_secs(
        input
            .budget_seconds
            .unwrap_or(input.cell.budgets.analyze_seconds),
    );
    let mut pace = Pace {
        resume: input.resume.clone(),
        budget,
        deadline: Instant::now() + budget,
        finished_one: false,
    };
    let mut databases = Vec::with_capacity(input.cell.databases.len());
    for db in databases_from(&input)? {
        // Boxed: the nested connection and query futures are otherwise too deep for the
        // compiler's layout computation of the Lambda's handler.
        let (statistics, handed_over) =
            Box::pin(analyze_database(&input, deps, db, &mut pace)).await?;
        databases.push(statistics);
        if let Some(cursor) = handed_over {
            tracing::info!(database = %cursor.database, schema = %cursor.schema, table = %cursor.table, "budget spent: handing over");
            return Ok(Output {
                databases,
                done: false,
                cursor: Some(cursor),
            });
        }
    }
    Ok(Output {
        databases,
        done: true,
        cursor: None,
    })
}

/// The cell's databases from the cursor's on; a cursor naming another database is refused.
fn databases_from(input: &Input) -> Result<&[String], Error> {
    let all = input.cell.databases.as_slice();
    match &input.resume {
        None => Ok(all),
        Some(cursor) => all
            .iter()
            .position(|db| *db == cursor.database)
            .map(|at| &all[at..])
            .ok_or_else(|| {
                Error::stop(
                    ErrorName::PreconditionFailed,
                    format!(
                        "resume: database {} is not one of the cell's databases; start again without resume",
                        quote::name(&cursor.database)
                    ),
                )
            }),
    }
}

/// The tables from the cursor's on, when it is in this database.
fn tables_from(
    mut tables: Vec<tables::Table>,
    db: &str,
    resume: Option<&Cursor>,
) -> Result<Vec<tables::Table>, Error> {
    if let Some(cursor) = resume.filter(|c| c.database == db) {
        let at = tables
            .iter()
            .position(|t| t.schema == cursor.schema && t.name == cursor.table)
            .ok_or_else(|| {
                Error::stop(
                    ErrorName::PreconditionFailed,
                    format!(
                        "resume: {} (database {}) is no longer replicated on green; start again without resume",
                        quote::qualified_name(&cursor.schema, &cursor.table),
                        quote::name(db)
                    ),
                )
            })?;
        tables.drain(..at);
    }
    Ok(tables)
}

/// Refreshes the database's tables until the budget is spent; `Some(cursor)` when it
/// handed a table over.
#[tracing::instrument(skip_all, fields(database = %db))]
async fn analyze_database(
    input: &Input,
    deps: &Deps,
    db: &str,
    pace: &mut Pace,
) -> Result<(DatabaseStatistics, Option<Cursor>), Error> {
    let green = deps.connect(&input.cell, Side::Green, db).await?;
    let started = Instant::now();
    let mut tables = Vec::new();
    let mut handed_over = None;
    // Partitioned tables come last: by then their leaves are done. (Before PG 18 there
    // is no ANALYZE ONLY, so a partitioned table's ANALYZE samples its leaves again.)
    let to_analyze = tables_from(
        tables::to_analyze(&green).await?,
        db,
        pace.resume.take().as_ref(),
    )?;
    for table in to_analyze {
        let name = quote::qualified_name(&table.schema, &table.name);
        let cursor = Cursor {
            database: db.to_owned(),
            schema: table.schema.clone(),
            table: table.name.clone(),
        };
        let now = Instant::now();
        if pace.finished_one && (pace.budget.is_zero() || now >= pace.deadline) {
            handed_over = Some(cursor);
            break;
        }
        // The first table may take FIRST_STATEMENT; the rest what is left of the budget.
        let first = !pace.finished_one;
        let limit = if first {
            FIRST_STATEMENT
        } else {
            pace.deadline
                .saturating_duration_since(now)
                .max(Duration::from_secs(1))
        };
        let limit_ms = limit.as_millis().to_string();
        green
            .execute(
                "SELECT pg_catalog.set_config('statement_timeout', $1, false)",
                &[&limit_ms],
            )
            .await
            .map_err(|e| Error::query("bounding the statement by the budget", e))?;
        let statement = statement(&table, input.vacuum);
        let began = Instant::now();
        // One statement per simple query: VACUUM cannot run inside a transaction block,
        // which a multi-statement query string would be.
        if let Err(e) = green.batch_execute(&statement).await {
            let cancelled = e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED);
            // A cancelled VACUUM kept its finished pages: the next invocation goes on. An
            // ANALYZE that ran out of a whole invocation would only run out again.
            if cancelled && (input.vacuum || !first) {
                tracing::warn!(table = %name, limit_ms = %limit_ms, "statement cancelled at the budget's end: handing the table over");
                handed_over = Some(cursor);
                break;
            }
            return Err(Error::query(&statement, e));
        }
        let millis = elapsed_millis(began);
        pace.finished_one = true;
        tracing::info!(table = %name, millis, partitioned = table.partitioned, "statistics refreshed");
        tables.push(TableStatistics {
            table: name,
            millis,
        });
    }
    Ok((
        DatabaseStatistics {
            name: db.to_owned(),
            tables: Listed::of(tables),
            total_millis: elapsed_millis(started),
        },
        handed_over,
    ))
}

/// What [`run`] would send to green now, database by database.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier, vacuum = input.vacuum))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Either).await?;
    let mut plan = Plan::new();
    for db in databases_from(&input)? {
        let green = Box::pin(deps.connect(&input.cell, Side::Green, db)).await?;
        let all = tables::to_analyze(&green).await?;
        for table in tables_from(all, db, input.resume.as_ref())? {
            plan.would(format!(
                "on green's database {}: {}",
                quote::name(db),
                statement(&table, input.vacuum)
            ));
        }
    }
    Ok(plan)
}

fn statement(table: &tables::Table, vacuum: bool) -> String {
    let name = qualified(&table.schema, &table.name);
    if vacuum {
        format!("VACUUM (ANALYZE) {name}")
    } else {
        format!("ANALYZE {name}")
    }
}

fn elapsed_millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }

    #[test]
    fn vacuum_defaults_to_false() {
        let mut payload: serde_json::Value =
            serde_json::from_str(include_str!("../payloads/input.json")).expect("input example");
        payload.as_object_mut().expect("object").remove("vacuum");
        let input: Input = serde_json::from_value(payload).expect("without vacuum");
        assert!(!input.vacuum);
    }
}
