//! `verify-data`: blue and green hold the same rows, table by table, compared at a
//! consistent point while replication (and the application) keeps running.
//!
//! For every table green's subscriptions replicate (leaves of partitioned tables; never
//! switchyard's own schema), found in green's catalogs:
//! - `full` (prepare, while blue takes writes): row counts and an order-independent
//!   checksum per chunk of `chunk_rows` rows in key order (primary key, else replica
//!   identity index, else the whole table), the row's text built from blue's column list
//!   under fixed session settings so that it is the same on every major;
//! - `quick` (inside the pause, after the slot-lag gate): the same figures over each
//!   table's newest [`compare::NEWEST_ROWS`] rows by key only — two index probes and a
//!   bounded read per table, whatever its size; a table without a key is compared whole
//!   only when small (see [`compare::KEYLESS_ROWS`]), else reported `not compared`. It
//!   proves each table's latest writes reached green intact; that older rows match is
//!   the full check's and replication's part.
//!
//! Blue's figures come from one REPEATABLE READ snapshot per table; green's once green's
//! slots confirmed an LSN read after that snapshot (within the cell's lag gate budget),
//! over key ranges that end at the snapshot's largest key. A chunk that still differs is
//! re-checked with a fresh snapshot `attempts` times (rows changed on blue after a snapshot differ only until a
//! later one); only a chunk that differs every time fails the run with `DataMismatch`.
//! Nothing is written on either side.

mod catalog;
mod compare;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::PauseDeadline;
use switchyard_operation::{Deps, Error, Listed, OperationInput, Side};
use switchyard_postgres::quote;
use tokio_postgres::types::PgLsn;

use crate::catalog::TableName;
use crate::compare::{Chunk, Difference, Method};

/// ```json
/// {"cell": { …the cell document… }, "mode": "full", "chunk_rows": 10000, "attempts": 3}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The end of the pause budget (`pause-pgbouncer`'s): every wait stops at it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
    /// How much to compare: row counts, or checksums too.
    pub mode: Mode,
    /// Rows per checksummed chunk in full mode (at least 1); the cell's
    /// `budgets.verify_chunk_rows` when absent.
    #[serde(default)]
    pub chunk_rows: Option<u64>,
    /// Full mode: compare for this long, then hand over with a `cursor`; the cell's
    /// `budgets.verify_seconds` when absent (0: one batch of chunks).
    #[serde(default)]
    pub budget_seconds: Option<u64>,
    /// Full mode: where the previous invocation stopped (its output's `cursor`); from the
    /// start when absent or null.
    #[serde(default)]
    pub resume: Option<Cursor>,
    /// How many times a differing chunk is re-checked with a fresh snapshot before it
    /// counts as a mismatch.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_attempts() -> u32 {
    3
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Row counts.
    Quick,
    /// Row counts and checksums per key range.
    Full,
}

/// Where a full check stopped: every database before `database` (in the cell's order),
/// every table before `table` in it (in name order), and `table`'s rows up to key `after`
/// (none: nothing of it yet) are compared.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub database: String,
    pub schema: String,
    pub table: String,
    /// The key values, as text, of the last row compared.
    pub after: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// Every table was compared to its end. False: invoke again with `resume` = `cursor`
    /// (the prepare state machine loops until done).
    #[serde(default = "done_by_default")]
    pub done: bool,
    /// Where the next invocation resumes; null when done.
    #[serde(default)]
    pub cursor: Option<Cursor>,
    pub mode: Mode,
    pub databases: Vec<DatabaseVerification>,
    /// The latest blue LSN a comparison was made at, which green had confirmed
    /// (`null` when there was no table to compare).
    pub compared_at_lsn: Option<String>,
}

/// One database of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseVerification {
    pub name: String,
    /// Every table compared (the first of them; each is logged).
    pub tables: Listed<TableVerification>,
}

/// One table, `schema.name` quoted where SQL needs it (as psql would take it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct TableVerification {
    pub table: String,
    /// What was compared: `every row`, `the newest 1000 rows by key` (quick), or why
    /// the table was `not compared`.
    #[serde(default)]
    pub evidence: String,
    /// Blue's rows in the compared key ranges.
    pub rows: u64,
    pub chunks: u64,
    pub equal: bool,
}

fn done_by_default() -> bool {
    true
}

/// How many differences the failure message lists; the rest are counted.
const LISTED: usize = 10;
/// How much of a key value the failure message shows.
const VALUE_CHARS: usize = 40;

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, mode = ?input.mode))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let pause = input.pause_deadline;
    match Box::pin(verify(input, deps)).await {
        // Every query was cut at the deadline (statement_timeout): say why, not which query.
        Err(e) if pause.is_some_and(PauseDeadline::passed) => {
            Err(pause.map_or(e, |p| p.exceeded("verifying data")))
        }
        other => other,
    }
}

async fn verify(input: Input, deps: &Deps) -> Result<Output, Error> {
    let requested = input
        .chunk_rows
        .unwrap_or(input.cell.budgets.verify_chunk_rows);
    let chunk_rows = i64::try_from(requested)
        .ok()
        .filter(|&rows| rows > 0)
        .ok_or_else(|| {
            Error::stop(
                ErrorName::InvalidInput,
                format!("chunk_rows {requested} must be between 1 and 2^63 - 1"),
            )
        })?;
    if input.mode == Mode::Quick && input.resume.is_some() {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "resume: only a full check hands over between invocations; quick mode is bounded",
        ));
    }
    if let Some(cursor) = &input.resume {
        if !input.cell.databases.contains(&cursor.database) {
            return Err(Error::stop(
                ErrorName::InvalidInput,
                format!(
                    "resume.database {:?} is not one of the cell's databases",
                    cursor.database
                ),
            ));
        }
    }
    // Full mode hands over before Lambda's limit; quick mode is bounded by the pause.
    let deadline = (input.mode == Mode::Full).then(|| {
        std::time::Instant::now()
            + Duration::from_secs(
                input
                    .budget_seconds
                    .unwrap_or(input.cell.budgets.verify_seconds),
            )
    });
    let mut mismatches = Vec::new();
    let mut databases = Vec::with_capacity(input.cell.databases.len());
    let mut compared_at: Option<PgLsn> = None;
    let mut cursor = None;
    let mut progressed = false;
    // A resumed run skips the databases its cursor is past.
    let skip = input.resume.as_ref().map_or(0, |c| {
        input
            .cell
            .databases
            .iter()
            .position(|d| *d == c.database)
            .unwrap_or(0)
    });
    for db in input.cell.databases.iter().skip(skip) {
        let resume = input.resume.as_ref().filter(|c| c.database == *db);
        // Boxed: the nested connection and query futures are otherwise too deep for the
        // compiler's layout computation of the Lambda's handler.
        let checked = Box::pin(verify_database(
            &input,
            deps,
            db,
            Pace {
                chunk_rows,
                resume,
                deadline,
                progressed: &mut progressed,
            },
            &mut mismatches,
        ))
        .await?;
        compared_at = compared_at.max(checked.compared_at);
        databases.push(checked.verification);
        if checked.stopped.is_some() {
            cursor = checked.stopped;
            break;
        }
    }
    if !mismatches.is_empty() {
        return Err(Error::stop(
            ErrorName::DataMismatch,
            mismatch_message(&mismatches, input.mode, input.attempts),
        ));
    }
    if let Some(c) = &cursor {
        tracing::info!(database = %c.database, schema = %c.schema, table = %c.table, "handing over to the next invocation");
    }
    Ok(Output {
        done: cursor.is_none(),
        cursor,
        mode: input.mode,
        databases,
        compared_at_lsn: compared_at.map(|lsn| lsn.to_string()),
    })
}

/// A table that differs, with what differs about it.
#[derive(Clone, Debug)]
struct Mismatch {
    database: String,
    table: TableName,
    found: Found,
}

#[derive(Clone, Debug)]
enum Found {
    /// Replicated on green, but blue has no such table.
    NotOnBlue,
    /// `key` names the key columns the chunk's bounds are values of.
    Chunk { key: String, difference: Difference },
}

/// How far and how long one invocation goes.
struct Pace<'a> {
    chunk_rows: i64,
    /// The cursor, when it points into this database.
    resume: Option<&'a Cursor>,
    /// Full mode: hand over once past it (after at least one batch of this invocation).
    deadline: Option<std::time::Instant>,
    /// Whether this invocation compared anything yet.
    progressed: &'a mut bool,
}

/// One database's comparisons, and where they stopped if the budget ran out.
struct Checked {
    verification: DatabaseVerification,
    compared_at: Option<PgLsn>,
    stopped: Option<Cursor>,
}

#[tracing::instrument(skip_all, fields(database = %db))]
async fn verify_database(
    input: &Input,
    deps: &Deps,
    db: &str,
    pace: Pace<'_>,
    mismatches: &mut Vec<Mismatch>,
) -> Result<Checked, Error> {
    let chunk_rows = pace.chunk_rows;
    let blue = deps.connect(&input.cell, Side::Blue, db).await?;
    let green = deps.connect(&input.cell, Side::Green, db).await?;
    for (side, client) in [(Side::Blue, &blue), (Side::Green, &green)] {
        client
            .batch_execute(compare::TEXT_SETTINGS)
            .await
            .map_err(|e| Error::query(format!("setting text output on {side}"), e))?;
        if let Some(pause) = input.pause_deadline {
            // Inside the pause window no query may outlast the budget.
            let ms = pause.remaining().as_millis().max(1).to_string();
            client
                .execute(
                    "SELECT pg_catalog.set_config('statement_timeout', $1, false)",
                    &[&ms],
                )
                .await
                .map_err(|e| {
                    Error::query(format!("bounding queries on {side} by the pause budget"), e)
                })?;
        }
    }
    let slots = catalog::green_slots(&green).await?;
    let method = Method {
        full: input.mode == Mode::Full,
        chunk_rows,
        attempts: input.attempts,
        slots: &slots,
        // Waiting for green to confirm an LSN is what the slot-lag gate budgets for.
        catch_up: switchyard_operation::bounded(
            input.pause_deadline,
            Duration::from_secs(input.cell.budgets.lag_gate_seconds),
        ),
    };
    let mut tables = Vec::new();
    let mut compared_at: Option<PgLsn> = None;
    let mut stopped = None;
    let mut replicated = catalog::replicated_tables(&green).await?;
    let mut from = None;
    if let Some(cursor) = pace.resume {
        let at = replicated
            .iter()
            .position(|t| t.schema == cursor.schema && t.name == cursor.table)
            .ok_or_else(|| {
                Error::stop(
                    ErrorName::PreconditionFailed,
                    format!(
                        "resume: {} (database {}) is no longer replicated on green; start the full check again without resume",
                        quote::qualified_name(&cursor.schema, &cursor.table),
                        quote::name(db)
                    ),
                )
            })?;
        replicated.drain(..at);
        from = cursor.after.clone();
    }
    for table in replicated {
        if *pace.progressed
            && pace
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
        {
            stopped = Some(Cursor {
                database: db.to_owned(),
                schema: table.schema.clone(),
                table: table.name.clone(),
                after: None,
            });
            break;
        }
        let from = from.take();
        let Some(shape) = catalog::shape(&blue, &table).await? else {
            mismatches.push(Mismatch {
                database: db.to_owned(),
                table,
                found: Found::NotOnBlue,
            });
            continue;
        };
        let outcome = compare::compare(&blue, &green, &shape, method, from, pace.deadline).await?;
        *pace.progressed = true;
        compared_at = compared_at.max(Some(outcome.lsn));
        tracing::info!(table = %table, rows = outcome.rows, chunks = outcome.chunks, differing = outcome.differences.len(), "compared");
        let equal = outcome.differences.is_empty();
        if outcome.chunks == 0 {
            tracing::warn!(table = %table, evidence = %outcome.evidence, "not compared");
        }
        mismatches.extend(outcome.differences.into_iter().map(|difference| Mismatch {
            database: db.to_owned(),
            table: table.clone(),
            found: Found::Chunk {
                key: shape.key_names(),
                difference,
            },
        }));
        tables.push(TableVerification {
            table: table.to_string(),
            evidence: outcome.evidence,
            rows: outcome.rows,
            chunks: u64::try_from(outcome.chunks).unwrap_or(u64::MAX),
            equal,
        });
        if let Some(after) = outcome.stopped_after {
            stopped = Some(Cursor {
                database: db.to_owned(),
                schema: table.schema.clone(),
                table: table.name.clone(),
                after: Some(after),
            });
            break;
        }
    }
    Ok(Checked {
        verification: DatabaseVerification {
            name: db.to_owned(),
            tables: Listed::of(tables),
        },
        compared_at,
        stopped,
    })
}

/// The operator's message: the first few differences, each naming its table and (in
/// full mode) its key range, with both sides' counts; bounded whatever the number.
fn mismatch_message(mismatches: &[Mismatch], mode: Mode, attempts: u32) -> String {
    let listed: Vec<String> = mismatches.iter().take(LISTED).map(describe).collect();
    let more = match mismatches.len().saturating_sub(LISTED) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    format!(
        "blue and green differ ({} after {attempts} re-check(s) each): {}{more}. \
         Find how green diverged (writes made on green, an UPDATE or DELETE the apply worker skipped) \
         and re-copy those tables before switching over",
        mode_name(mode),
        listed.join("; ")
    )
}

fn describe(mismatch: &Mismatch) -> String {
    let Mismatch {
        database,
        table,
        found,
    } = mismatch;
    match found {
        Found::NotOnBlue => format!(
            "{table} (database {}) is replicated on green but is not a table on blue",
            quote::name(database)
        ),
        Found::Chunk { key, difference } => {
            let range = format!(" rows with {}", range(key, &difference.chunk));
            let checksums = if difference.blue.rows == difference.green.rows {
                ", checksums differ"
            } else {
                ""
            };
            format!(
                "{table} (database {}){range}: blue {} rows, green {} rows{checksums}",
                quote::name(database),
                difference.blue.rows,
                difference.green.rows
            )
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Quick => "row counts and checksums of each table's newest rows by key",
        Mode::Full => "row counts and checksums",
    }
}

fn range(key: &str, chunk: &Chunk) -> String {
    let values = |v: &[String]| {
        let shown: Vec<String> = v.iter().map(|value| shorten(value)).collect();
        format!("({})", shown.join(", "))
    };
    match (&chunk.lower, &chunk.upper) {
        (None, None) => "in the whole table".to_owned(),
        (Some(lower), None) => format!("{key} > {}", values(lower)),
        (None, Some(upper)) => format!("{key} <= {}", values(upper)),
        (Some(lower), Some(upper)) => {
            format!("{key} > {} and <= {}", values(lower), values(upper))
        }
    }
}

fn shorten(value: &str) -> String {
    match value.char_indices().nth(VALUE_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Figures;

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }

    #[test]
    fn chunk_rows_and_attempts_have_defaults() {
        let mut payload: serde_json::Value =
            serde_json::from_str(include_str!("../payloads/input.json")).expect("input example");
        let fields = payload.as_object_mut().expect("object");
        fields.remove("chunk_rows");
        fields.remove("attempts");
        fields.insert("mode".to_owned(), serde_json::json!("quick"));
        let input: Input = serde_json::from_value(payload).expect("defaults");
        assert_eq!(
            (input.mode, input.chunk_rows, input.attempts, input.resume),
            (Mode::Quick, None, 3, None)
        );
    }

    fn chunk_mismatch(i: i64, lower: &str) -> Mismatch {
        Mismatch {
            database: "app".to_owned(),
            table: TableName {
                schema: "billing".to_owned(),
                name: "invoice lines".to_owned(),
            },
            found: Found::Chunk {
                key: "(id)".to_owned(),
                difference: Difference {
                    chunk: Chunk {
                        lower: Some(vec![lower.to_owned()]),
                        upper: Some(vec![(i * 100).to_string()]),
                    },
                    blue: Figures {
                        rows: 100,
                        checksum: Some("1".to_owned()),
                    },
                    green: Figures {
                        rows: 100 - i % 2,
                        checksum: Some("2".to_owned()),
                    },
                },
            },
        }
    }

    #[test]
    fn the_message_names_tables_and_ranges_and_stays_bounded() {
        let one = mismatch_message(&[chunk_mismatch(2, "100")], Mode::Full, 3);
        assert!(
            one.contains("billing.\"invoice lines\" (database app) rows with (id) > (100) and <= (200): blue 100 rows, green 100 rows, checksums differ"),
            "{one}"
        );
        let quick = mismatch_message(&[chunk_mismatch(1, "0")], Mode::Quick, 3);
        assert!(
            quick.contains("billing.\"invoice lines\" (database app) rows with (id) > (0) and <= (100): blue 100 rows, green 99 rows."),
            "{quick}"
        );
        let huge = "x".repeat(10_000);
        let many: Vec<Mismatch> = (1..=5_000).map(|i| chunk_mismatch(i, &huge)).collect();
        let message = mismatch_message(&many, Mode::Full, 3);
        assert!(message.len() < 4_000, "{} bytes", message.len());
        assert!(message.contains("and 4990 more"), "{message}");
    }
}
