//! `sync-sequences`: every sequence on green moved to at least blue's value plus a gap.
//!
//! Logical replication carries rows but not sequence values, so green's sequences still
//! stand where copy-schema left them; the first insert on green after the switch would
//! reuse ids that blue already handed out. Writes on blue are frozen and caught up by the
//! time this runs. For each database, every sequence of every user schema (identity and
//! serial ones included; schema `switchyard` and extension members excluded) is read on
//! both sides and green's is raised, with `setval`, to blue's last value plus
//! `gap × increment`. A sequence is never moved backwards: one already at or past its
//! target is left alone, so running this again changes nothing. Descending sequences are
//! handled symmetrically ("backwards" is up for them).
//!
//! A dry run ([`plan`]) reads both sides the same way and lists each `setval` it would
//! make, green's value now → its target; empty when every sequence is already far enough.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::PauseDeadline;
use switchyard_operation::{Deps, Error, Listed, Plan, Side};
use switchyard_postgres::quote::{self, qualified};

/// ```json
/// {"cell": { …the cell document… }, "gap": 1000}
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
    /// The end of the pause budget (`pause-pgbouncer`'s): every wait stops at it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
    /// Increments to put between blue's last value and green's; absent: the cell's
    /// `budgets.sequence_gap`.
    #[serde(default)]
    pub gap: Option<u64>,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub gap: u64,
    pub databases: Vec<DatabaseSequences>,
}

/// One database of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseSequences {
    pub name: String,
    /// Every sequence of blue's, in name order (the first of them; each is logged).
    pub sequences: Listed<SequenceSync>,
    /// How many of them this call moved on green.
    pub changed: usize,
    /// Sequences on green that blue lacks (`schema.name`, quoted where SQL needs it):
    /// reported, never touched.
    pub green_only: Listed<String>,
}

/// One sequence, `schema.name` quoted where SQL needs it. Values are the last
/// value handed out; `None` when the sequence has not been used since it was created
/// (or last set with `setval(…, false)`), i.e. its next value is its start.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SequenceSync {
    pub sequence: String,
    pub blue: Option<i64>,
    pub green_before: Option<i64>,
    pub green_after: Option<i64>,
    pub changed: bool,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier, gap))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Forward).await?;
    let gap = input.gap.unwrap_or(input.cell.budgets.sequence_gap);
    tracing::Span::current().record("gap", gap);
    let mut databases = Vec::with_capacity(input.cell.databases.len());
    for db in &input.cell.databases {
        // Boxed: keeps the handler's future small (nested connection and query futures).
        databases.push(Box::pin(sync_database(&input.cell, deps, db, gap)).await?);
    }
    Ok(Output { gap, databases })
}

/// Dry run: each `setval` [`run`] would make on green now, database by database.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier, gap))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Forward).await?;
    let gap = input.gap.unwrap_or(input.cell.budgets.sequence_gap);
    tracing::Span::current().record("gap", gap);
    let mut plan = Plan::new();
    for db in &input.cell.databases {
        let assessed = Box::pin(assess_database(&input.cell, deps, db, gap)).await?;
        for seq in &assessed.sequences {
            if let Decision::Set(target) = seq.decision {
                plan.would(format!(
                    "setval {} in database {} on green: {} → {} (blue {}, gap {gap})",
                    seq.shown,
                    quote::name(db),
                    shown(seq.green),
                    shown(target),
                    shown(seq.blue),
                ));
            }
        }
    }
    Ok(plan)
}

/// A state as the plan shows it: the last value handed out, or the next one if unused.
fn shown(state: State) -> String {
    match state.used() {
        Some(value) => value.to_string(),
        None => format!("unused, next {}", state.last_value),
    }
}

/// One database's sequences, read on both sides, each with what to do to green's.
struct Assessed {
    green: tokio_postgres::Client,
    sequences: Vec<Assessment>,
    green_only: Vec<String>,
}

struct Assessment {
    /// Quoted `schema.name`, for SQL.
    regclass: String,
    /// `schema.name` for messages.
    shown: String,
    blue: State,
    green: State,
    decision: Decision,
}

#[tracing::instrument(skip_all, fields(database = %db))]
async fn sync_database(
    cell: &CellDocument,
    deps: &Deps,
    db: &str,
    gap: u64,
) -> Result<DatabaseSequences, Error> {
    let Assessed {
        green,
        sequences: assessed,
        green_only,
    } = assess_database(cell, deps, db, gap).await?;
    let mut sequences = Vec::with_capacity(assessed.len());
    for seq in assessed {
        let regclass = &seq.regclass;
        let after = match seq.decision {
            Decision::Keep => seq.green,
            Decision::Set(target) => {
                green
                    .execute(
                        "SELECT pg_catalog.setval($1::text::pg_catalog.regclass, $2, $3)",
                        &[regclass, &target.last_value, &target.is_called],
                    )
                    .await
                    .map_err(|e| Error::query(format_args!("setval on {}", seq.shown), e))?;
                tracing::info!(sequence = %seq.shown, value = target.last_value, is_called = target.is_called, "sequence advanced");
                target
            }
        };
        sequences.push(SequenceSync {
            sequence: seq.shown,
            blue: seq.blue.used(),
            green_before: seq.green.used(),
            green_after: after.used(),
            changed: seq.decision != Decision::Keep,
        });
    }
    Ok(DatabaseSequences {
        name: db.to_owned(),
        changed: sequences.iter().filter(|s| s.changed).count(),
        sequences: Listed::of(sequences),
        green_only: Listed::of(green_only),
    })
}

/// Reads every sequence on both sides and decides each; every mismatch stops here,
/// before the first setval, so a stop leaves the database as it was.
async fn assess_database(
    cell: &CellDocument,
    deps: &Deps,
    db: &str,
    gap: u64,
) -> Result<Assessed, Error> {
    let blue = deps.connect(cell, Side::Blue, db).await?;
    let green = deps.connect(cell, Side::Green, db).await?;
    let blue_defs = definitions(&blue).await?;
    let mut green_defs = definitions(&green).await?;

    let mut pairs = Vec::with_capacity(blue_defs.len());
    let mut missing = Vec::new();
    for (key, blue_def) in blue_defs {
        match green_defs.remove(&key) {
            Some(green_def) if green_def.increment.signum() != blue_def.increment.signum() => {
                return Err(Error::stop(
                    ErrorName::SchemaMismatch,
                    format!(
                        "sequence {} in database {} counts {} on blue but {} on green; make green's INCREMENT match blue's, then retry",
                        quote::qualified_name(&key.0, &key.1),
                        quote::name(db),
                        direction(blue_def.increment),
                        direction(green_def.increment),
                    ),
                ));
            }
            Some(green_def) => pairs.push((key, green_def)),
            None => missing.push(quote::qualified_name(&key.0, &key.1)),
        }
    }
    if !missing.is_empty() {
        return Err(Error::stop(
            ErrorName::SchemaMismatch,
            format!(
                "sequences on blue missing on green in database {}: {}; create them on green (copy-schema), then retry",
                quote::name(db),
                missing.join(", ")
            ),
        ));
    }
    let green_only: Vec<String> = green_defs
        .into_keys()
        .map(|(schema, name)| quote::qualified_name(&schema, &name))
        .collect();
    if !green_only.is_empty() {
        tracing::warn!(sequences = %green_only.join(", "), "sequences only on green left alone");
    }

    let mut sequences = Vec::with_capacity(pairs.len());
    for ((schema, name), green_def) in pairs {
        let regclass = qualified(&schema, &name);
        let shown = quote::qualified_name(&schema, &name);
        // Blue is read after the freeze (check-slot-lag ran): its values no longer move.
        let blue_state = state(&blue, &regclass, &shown).await?;
        let green_state = state(&green, &regclass, &shown).await?;
        let decision = decide(blue_state, green_state, &green_def, gap).map_err(|limit| {
            Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "sequence {shown} in database {} cannot be set {gap} increments past blue's value {}: it would pass its {limit}; widen the sequence (ALTER SEQUENCE … AS bigint, MAXVALUE/MINVALUE) on both sides or lower the gap, then retry",
                    quote::name(db),
                    blue_state.last_value
                ),
            )
        })?;
        sequences.push(Assessment {
            regclass,
            shown,
            blue: blue_state,
            green: green_state,
            decision,
        });
    }
    Ok(Assessed {
        green,
        sequences,
        green_only,
    })
}

/// A sequence's bounds and step, from `pg_sequences`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Definition {
    increment: i64,
    min: i64,
    max: i64,
}

/// What the sequence relation itself holds: `nextval` returns `last_value` when
/// `is_called` is false, `last_value + increment` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    last_value: i64,
    is_called: bool,
}

impl State {
    fn used(self) -> Option<i64> {
        self.is_called.then_some(self.last_value)
    }

    fn next(self, increment: i64) -> i128 {
        i128::from(self.last_value)
            + if self.is_called {
                i128::from(increment)
            } else {
                0
            }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Keep,
    Set(State),
}

/// Green's new state, or which bound (`maximum`/`minimum`) the target would pass.
///
/// A sequence blue has used goes to `blue + gap × increment` (`is_called`), so green's
/// next value is one step past that. One blue never used has handed out nothing: green
/// only has to reach blue's next value (its start), no gap. Green already at or beyond
/// the target, in the sequence's direction, is kept: sequences never move backwards.
fn decide(blue: State, green: State, def: &Definition, gap: u64) -> Result<Decision, &'static str> {
    let increment = i128::from(def.increment);
    let (target_last, target_next) = if blue.is_called {
        let last =
            i128::from(blue.last_value).saturating_add(i128::from(gap).saturating_mul(increment));
        (last, last.saturating_add(increment))
    } else {
        (i128::from(blue.last_value), i128::from(blue.last_value))
    };
    let green_next = green.next(def.increment);
    let ahead = if increment > 0 {
        green_next >= target_next
    } else {
        green_next <= target_next
    };
    if ahead {
        return Ok(Decision::Keep);
    }
    // The first nextval after the switch must stay inside the bounds, or inserts fail
    // (or wrap, for CYCLE) right after the switch.
    let (min, max) = (i128::from(def.min), i128::from(def.max));
    if target_last > max || target_next > max {
        return Err("maximum");
    }
    if target_last < min || target_next < min {
        return Err("minimum");
    }
    let last_value = i64::try_from(target_last).map_err(|_| "range of bigint")?;
    Ok(Decision::Set(State {
        last_value,
        is_called: blue.is_called,
    }))
}

fn direction(increment: i64) -> &'static str {
    if increment > 0 {
        "up"
    } else {
        "down"
    }
}

const RESERVED_SCHEMA: &str = "switchyard";

/// Every user sequence of the database, keyed by (schema, name).
async fn definitions(
    client: &tokio_postgres::Client,
) -> Result<BTreeMap<(String, String), Definition>, Error> {
    // Extension members (deptype 'e') belong to the extension's own scripts, and
    // pg_catalog/information_schema hold none of the application's.
    let sql =
        "SELECT s.schemaname::text, s.sequencename::text, s.increment_by, s.min_value, s.max_value
        FROM pg_catalog.pg_sequences s
        JOIN pg_catalog.pg_namespace n ON n.nspname = s.schemaname
        JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = s.sequencename
        WHERE s.schemaname <> $1
          AND s.schemaname <> 'information_schema' AND s.schemaname !~ '^pg_'
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                          WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                            AND d.objid = c.oid AND d.deptype = 'e')";
    let rows = client
        .query(sql, &[&RESERVED_SCHEMA])
        .await
        .map_err(|e| Error::query("listing sequences", e))?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                (row.get(0), row.get(1)),
                Definition {
                    increment: row.get(2),
                    min: row.get(3),
                    max: row.get(4),
                },
            )
        })
        .collect())
}

/// Reads the sequence relation itself: `pg_sequences.last_value` is NULL both for a
/// sequence never used and for one set with `setval(…, false)`, so it cannot tell
/// green's next value.
async fn state(
    client: &tokio_postgres::Client,
    regclass: &str,
    shown: &str,
) -> Result<State, Error> {
    let sql = format!("SELECT last_value, is_called FROM {regclass}");
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| Error::query(format_args!("reading sequence {shown}"), e))?;
    Ok(State {
        last_value: row.get(0),
        is_called: row.get(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Definition = Definition {
        increment: 1,
        min: 1,
        max: i64::MAX,
    };

    fn used(last_value: i64) -> State {
        State {
            last_value,
            is_called: true,
        }
    }

    fn fresh(start: i64) -> State {
        State {
            last_value: start,
            is_called: false,
        }
    }

    #[test]
    fn raises_green_to_blue_plus_gap() {
        assert_eq!(
            decide(used(600), fresh(1), &UP, 1000),
            Ok(Decision::Set(used(1600)))
        );
        let by_ten = Definition {
            increment: 10,
            ..UP
        };
        assert_eq!(
            decide(used(600), fresh(1), &by_ten, 5),
            Ok(Decision::Set(used(650)))
        );
    }

    #[test]
    fn never_moves_backwards_and_is_idempotent() {
        assert_eq!(decide(used(600), used(1600), &UP, 1000), Ok(Decision::Keep));
        assert_eq!(
            decide(used(600), used(1_000_000_000), &UP, 1000),
            Ok(Decision::Keep)
        );
        // setval(1601, false) has the same next value as setval(1600, true).
        assert_eq!(
            decide(used(600), fresh(1601), &UP, 1000),
            Ok(Decision::Keep)
        );
        assert_eq!(
            decide(used(600), fresh(1600), &UP, 1000),
            Ok(Decision::Set(used(1600)))
        );
    }

    #[test]
    fn unused_blue_needs_only_its_start() {
        assert_eq!(
            decide(fresh(100_000), fresh(100_000), &UP, 1000),
            Ok(Decision::Keep)
        );
        assert_eq!(
            decide(fresh(100_000), fresh(1), &UP, 1000),
            Ok(Decision::Set(fresh(100_000)))
        );
    }

    #[test]
    fn descending_sequences_move_down() {
        let down = Definition {
            increment: -1,
            min: i64::MIN,
            max: -1,
        };
        assert_eq!(
            decide(used(-600), fresh(-1), &down, 1000),
            Ok(Decision::Set(used(-1600)))
        );
        assert_eq!(
            decide(used(-600), used(-1600), &down, 1000),
            Ok(Decision::Keep)
        );
        assert_eq!(
            decide(used(-600), used(-5000), &down, 1000),
            Ok(Decision::Keep)
        );
        let floor = Definition { min: -1000, ..down };
        assert_eq!(decide(used(-600), fresh(-1), &floor, 1000), Err("minimum"));
    }

    #[test]
    fn refuses_to_pass_a_bound() {
        let int4 = Definition {
            max: i64::from(i32::MAX),
            ..UP
        };
        let near = i64::from(i32::MAX) - 1000;
        assert_eq!(decide(used(near), fresh(1), &int4, 1000), Err("maximum"));
        assert_eq!(
            decide(used(near - 1), fresh(1), &int4, 1000),
            Ok(Decision::Set(used(i64::from(i32::MAX) - 1)))
        );
        assert_eq!(
            decide(used(i64::MAX - 5), fresh(1), &UP, u64::MAX),
            Err("maximum")
        );
        // Green past the target is kept even when the target itself would not fit.
        assert_eq!(
            decide(used(near), used(i64::from(i32::MAX)), &int4, 1000),
            Ok(Decision::Keep)
        );
    }

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }

    #[test]
    fn gap_defaults_to_the_cells_budget() {
        let mut payload: serde_json::Value =
            serde_json::from_str(include_str!("../payloads/input.json")).expect("input example");
        payload.as_object_mut().expect("object").remove("gap");
        let input: Input = serde_json::from_value(payload).expect("without gap");
        assert_eq!(input.gap, None);
    }
}
