//! `check-replication`: prepare step 6. Green counts as caught up when, for each of
//! `start-replication`'s subscriptions, every table has finished its initial copy (state
//! `r`), the apply worker runs, and its slot on blue lags by at most
//! `budgets.max_replication_lag_bytes` — and no DDL reached blue since replication started.
//!
//! Not caught up yet is `NotCaughtUp` (the state machine retries); DDL is `DdlDetected`
//! (a stop: green's schema no longer matches). Read-only on both clusters.

mod ddl;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, TableRef};
use switchyard_errors::ErrorName;
use switchyard_operation::{Deps, Error, Listed, OperationInput, Side};
use switchyard_postgres::quote;
use tokio_postgres::Client;

/// ```json
/// {"cell": { …the cell document… }}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

/// Returned only once every subscription is caught up.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub subscriptions: Vec<SubscriptionStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SubscriptionStatus {
    pub database: String,
    /// The subscription on green (and its publication on blue).
    pub name: String,
    /// Its slot on blue.
    pub slot: String,
    pub tables_ready: u64,
    pub tables_total: u64,
    /// Tables whose initial copy has not finished.
    pub not_ready: Listed<TableRef>,
    /// Whether the apply worker is running on green.
    pub worker_running: bool,
    /// Cumulative apply errors (`pg_stat_subscription_stats`, PostgreSQL 15+; null before).
    pub apply_errors: Option<i64>,
    /// Cumulative table-sync errors (PostgreSQL 15+; null before).
    pub sync_errors: Option<i64>,
    /// WAL between blue's current position and what the slot has confirmed; null when the
    /// slot has confirmed nothing yet.
    pub lag_bytes: Option<u64>,
}

/// Internal: the status plus what the message needs.
struct Observed {
    status: SubscriptionStatus,
    /// Table count per `srsubstate` (`i`, `d`, `f`, `s`, `r`).
    states: BTreeMap<String, u64>,
    /// `(table, state)` of up to [`LISTED`] tables not ready.
    waiting: Vec<(TableRef, String)>,
}

/// How many not-ready tables a message and an output name, to bound the payload.
const LISTED: usize = 20;

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let cell = &input.cell;
    let mut observed = Vec::new();
    let mut ddl_seen = Vec::new();
    for database in &cell.databases {
        // Boxed: the whole chain of awaits inlined into one future is too deep to lay out.
        let (statuses, recorded) = Box::pin(check_database(cell, deps, database)).await?;
        observed.extend(statuses);
        if !recorded.is_empty() {
            ddl_seen.push(recorded);
        }
    }
    if !ddl_seen.is_empty() {
        return Err(Error::stop(ErrorName::DdlDetected, ddl_seen.join(" ")));
    }
    let budget = cell.budgets.max_replication_lag_bytes;
    let behind: Vec<String> = observed.iter().filter_map(|o| behind(o, budget)).collect();
    if !behind.is_empty() {
        return Err(Error::stop(
            ErrorName::NotCaughtUp,
            format!("green is not caught up: {}", behind.join("; ")),
        ));
    }
    Ok(Output {
        subscriptions: observed.into_iter().map(|o| o.status).collect(),
    })
}

/// Every subscription's state in `database`, and the DDL message ("" when none).
async fn check_database(
    cell: &CellDocument,
    deps: &Deps,
    database: &str,
) -> Result<(Vec<Observed>, String), Error> {
    let blue = deps.connect(cell, Side::Blue, database).await?;
    let green = deps.connect(cell, Side::Green, database).await?;
    let version_num = server_version_num(&green).await?;
    let mut observed = Vec::new();
    for name in cell.replication_names() {
        observed.push(observe(&blue, &green, database, &name, version_num).await?);
    }
    let recorded = ddl::recorded(&blue, database).await?;
    Ok((observed, recorded))
}

/// What keeps `o` from counting as caught up, if anything.
fn behind(o: &Observed, budget: u64) -> Option<String> {
    let s = &o.status;
    let mut reasons = Vec::new();
    if s.tables_ready < s.tables_total {
        let states: Vec<String> = o
            .states
            .iter()
            .filter(|(state, _)| state.as_str() != "r")
            .map(|(state, n)| format!("{n} {}", state_name(state)))
            .collect();
        let listed: Vec<String> = o
            .waiting
            .iter()
            .map(|(t, state)| {
                format!(
                    "{} ({})",
                    quote::qualified_name(&t.schema, &t.table),
                    state_name(state)
                )
            })
            .collect();
        let more = s.tables_total - s.tables_ready - listed.len() as u64;
        reasons.push(format!(
            "{} of {} tables not ready ({}): {}{}",
            s.tables_total - s.tables_ready,
            s.tables_total,
            states.join(", "),
            listed.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    match s.lag_bytes {
        None => reasons.push(format!(
            "slot {} has confirmed nothing yet",
            quote::name(&s.slot)
        )),
        Some(lag) if lag > budget => reasons.push(format!(
            "slot {} lags {lag} bytes (budget {budget})",
            quote::name(&s.slot)
        )),
        Some(_) => {}
    }
    if !s.worker_running {
        reasons.push("its apply worker is not running (see green's log)".to_owned());
    }
    if reasons.is_empty() {
        return None;
    }
    let errors = match (s.apply_errors, s.sync_errors) {
        (Some(a), Some(y)) if a + y > 0 => format!(" [{a} apply and {y} sync errors so far]"),
        _ => String::new(),
    };
    Some(format!(
        "{} in {}: {}{errors}",
        quote::name(&s.name),
        quote::name(&s.database),
        reasons.join(", ")
    ))
}

fn state_name(state: &str) -> &str {
    match state {
        "i" => "waiting to copy",
        "d" => "copying",
        "f" => "copied",
        "s" => "synchronized",
        "r" => "ready",
        other => other,
    }
}

async fn observe(
    blue: &Client,
    green: &Client,
    database: &str,
    name: &str,
    version_num: i32,
) -> Result<Observed, Error> {
    let shown = quote::name(name);
    let not_started = |what: String| {
        Error::stop(
            ErrorName::PreconditionFailed,
            format!("{what}; run start-replication first"),
        )
    };
    let Some(row) = green
        .query_opt(
            "SELECT oid, subenabled, subslotname::text FROM pg_catalog.pg_subscription
              WHERE subname = $1
                AND subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())",
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("reading subscription {shown} on green"), e))?
    else {
        return Err(not_started(format!(
            "green has no subscription {shown} in database {}",
            quote::name(database)
        )));
    };
    let oid: u32 = row.get(0);
    let enabled: bool = row.get(1);
    let Some(slot) = row.get::<_, Option<String>>(2) else {
        return Err(not_started(format!(
            "green's subscription {shown} has no slot"
        )));
    };
    if !enabled {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("green's subscription {shown} is disabled, so it cannot catch up; enable it (ALTER SUBSCRIPTION … ENABLE) if that is safe, then check again"),
        ));
    }

    let tables = green
        .query(
            "SELECT n.nspname::text, c.relname::text, r.srsubstate::text
               FROM pg_catalog.pg_subscription_rel r
               JOIN pg_catalog.pg_class c ON c.oid = r.srrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE r.srsubid = $1 ORDER BY 1, 2",
            &[&oid],
        )
        .await
        .map_err(|e| Error::query(format!("reading subscription {shown}'s tables on green"), e))?;
    let mut states = BTreeMap::new();
    let mut waiting = Vec::new();
    for row in &tables {
        let state: String = row.get(2);
        *states.entry(state.clone()).or_insert(0) += 1;
        if state != "r" && waiting.len() < LISTED {
            let table = TableRef {
                schema: row.get(0),
                table: row.get(1),
            };
            waiting.push((table, state));
        }
    }

    let worker_running: bool = green
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_subscription
                             WHERE subid = $1 AND relid IS NULL AND pid IS NOT NULL)",
            &[&oid],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("reading subscription {shown}'s workers on green"),
                e,
            )
        })?
        .get(0);
    // pg_stat_subscription_stats exists from PostgreSQL 15.
    let (apply_errors, sync_errors) = if version_num >= 150_000 {
        let row = green
            .query_opt(
                "SELECT apply_error_count, sync_error_count
                   FROM pg_catalog.pg_stat_subscription_stats WHERE subid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| {
                Error::query(
                    format!("reading subscription {shown}'s error counts on green"),
                    e,
                )
            })?;
        (
            Some(row.as_ref().map_or(0, |r| r.get(0))),
            Some(row.as_ref().map_or(0, |r| r.get(1))),
        )
    } else {
        (None, None)
    };

    let Some(lag) = blue
        .query_opt(
            "SELECT GREATEST(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::query(format!("reading slot {} on blue", quote::name(&slot)), e))?
    else {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("green's subscription {shown} reads slot {}, which is missing on blue, so green has missed changes; drop the subscription on green, empty its tables, then rerun start-replication", quote::name(&slot)),
        ));
    };
    let lag_bytes = lag
        .get::<_, Option<i64>>(0)
        .map(|bytes| u64::try_from(bytes).unwrap_or(0));

    let tables_total = tables.len() as u64;
    let tables_ready = states.get("r").copied().unwrap_or(0);
    Ok(Observed {
        status: SubscriptionStatus {
            database: database.to_owned(),
            name: name.to_owned(),
            slot,
            tables_ready,
            tables_total,
            not_ready: waiting.iter().map(|(t, _)| t.clone()).collect(),
            worker_running,
            apply_errors,
            sync_errors,
            lag_bytes,
        },
        states,
        waiting,
    })
}

async fn server_version_num(client: &Client) -> Result<i32, Error> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| Error::query("reading the server version", e))?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(ready: u64, total: u64, lag: Option<u64>, running: bool) -> Observed {
        let mut states = BTreeMap::new();
        states.insert("r".to_owned(), ready);
        let mut waiting = Vec::new();
        if total > ready {
            states.insert("d".to_owned(), total - ready);
            waiting.push((
                TableRef {
                    schema: "public".into(),
                    table: "events".into(),
                },
                "d".to_owned(),
            ));
        }
        Observed {
            status: SubscriptionStatus {
                database: "app".into(),
                name: "switchyard_rest".into(),
                slot: "switchyard_rest".into(),
                tables_ready: ready,
                tables_total: total,
                not_ready: waiting.iter().map(|(t, _)| t.clone()).collect(),
                worker_running: running,
                apply_errors: Some(0),
                sync_errors: Some(2),
                lag_bytes: lag,
            },
            states,
            waiting,
        }
    }

    #[test]
    fn caught_up_only_when_ready_running_and_within_budget() {
        assert_eq!(behind(&observed(5, 5, Some(100), true), 1024), None);
        assert_eq!(behind(&observed(0, 0, Some(0), true), 1024), None);

        let copying = behind(&observed(3, 5, Some(100), true), 1024).expect("behind");
        assert!(copying.starts_with("switchyard_rest in app: 2 of 5 tables not ready (2 copying): public.events (copying) and 1 more"), "{copying}");
        assert!(
            copying.ends_with("[0 apply and 2 sync errors so far]"),
            "{copying}"
        );

        let lagging = behind(&observed(5, 5, Some(4096), true), 1024).expect("behind");
        assert!(
            lagging.contains("slot switchyard_rest lags 4096 bytes (budget 1024)"),
            "{lagging}"
        );
        assert!(
            behind(&observed(5, 5, Some(1024), true), 1024).is_none(),
            "at the budget is within it"
        );

        let unconfirmed = behind(&observed(5, 5, None, true), 1024).expect("behind");
        assert!(unconfirmed.contains("confirmed nothing"), "{unconfirmed}");
        let stopped = behind(&observed(5, 5, Some(0), false), 1024).expect("behind");
        assert!(stopped.contains("apply worker is not running"), "{stopped}");
    }

    #[test]
    fn names_follow_start_replication() {
        let cell = CellDocument::from_json(switchyard_cell::EXAMPLE).expect("example");
        assert_eq!(
            cell.replication_names(),
            ["switchyard_payments", "switchyard_rest"]
        );
    }

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
