//! `analyze-green`: fresh planner statistics on green for every replicated table.
//!
//! Logical replication's initial copy and apply leave green's statistics stale or empty,
//! so the first queries after the switchover would be planned blind. For each database
//! this runs `ANALYZE` (or `VACUUM (ANALYZE)`) on every table green's subscriptions
//! replicate, found in green's own catalogs, and on their partitioned ancestors (whose
//! statistics sample all their partitions). Only green is touched; running it again just
//! refreshes the statistics.
//!
//! Dry run ([`plan`]): the ANALYZE (or VACUUM (ANALYZE)) statements the run would send, in
//! order. It is never empty while green has tables: a rerun refreshes them again.

mod tables;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_operation::fence::{self, Caller, Direction};
use switchyard_operation::{Deps, Error, Listed, OperationInput, Plan, Side};
use switchyard_postgres::quote::qualified;

/// ```json
/// {"cell": { …the cell document… }, "vacuum": false}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

impl Input {
    fn caller(&self) -> Caller<'_> {
        Caller {
            run_id: &self.run_id,
            force: self.force,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub databases: Vec<DatabaseStatistics>,
}

/// One database of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseStatistics {
    pub name: String,
    /// Every table analyzed (the first of them; each is logged).
    pub tables: Listed<TableStatistics>,
    pub total_millis: u64,
}

/// One table, `schema.name` as green's catalog spells it (unquoted).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct TableStatistics {
    pub table: String,
    pub millis: u64,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier, vacuum = input.vacuum))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Either).await?;
    let mut databases = Vec::with_capacity(input.cell.databases.len());
    for db in &input.cell.databases {
        // Boxed: the nested connection and query futures are otherwise too deep for the
        // compiler's layout computation of the Lambda's handler.
        databases.push(Box::pin(analyze_database(&input, deps, db)).await?);
    }
    Ok(Output { databases })
}

#[tracing::instrument(skip_all, fields(database = %db))]
async fn analyze_database(
    input: &Input,
    deps: &Deps,
    db: &str,
) -> Result<DatabaseStatistics, Error> {
    let green = deps.connect(&input.cell, Side::Green, db).await?;
    let started = Instant::now();
    let mut tables = Vec::new();
    // Partitioned tables come last: by then their leaves are done. (Before PG 18 there
    // is no ANALYZE ONLY, so a partitioned table's ANALYZE samples its leaves again.)
    for table in tables::to_analyze(&green).await? {
        let name = qualified(&table.schema, &table.name);
        let statement = statement(&table, input.vacuum);
        let began = Instant::now();
        // One statement per simple query: VACUUM cannot run inside a transaction block,
        // which a multi-statement query string would be.
        green
            .batch_execute(&statement)
            .await
            .map_err(|e| Error::query(&statement, e))?;
        let millis = elapsed_millis(began);
        tracing::info!(table = %name, millis, partitioned = table.partitioned, "statistics refreshed");
        tables.push(TableStatistics {
            table: format!("{}.{}", table.schema, table.name),
            millis,
        });
    }
    Ok(DatabaseStatistics {
        name: db.to_owned(),
        tables: Listed::of(tables),
        total_millis: elapsed_millis(started),
    })
}

/// What [`run`] would send to green now, database by database.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier, vacuum = input.vacuum))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Either).await?;
    let mut plan = Plan::new();
    for db in &input.cell.databases {
        let green = Box::pin(deps.connect(&input.cell, Side::Green, db)).await?;
        for table in tables::to_analyze(&green).await? {
            plan.would(format!(
                "on green's database {db}: {}",
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
