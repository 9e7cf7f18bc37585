//! One table, blue vs green, at a consistent point: blue's figures come from one
//! REPEATABLE READ snapshot, green's only once green's slots have confirmed an LSN taken
//! after that snapshot, over the same key ranges.

use std::time::{Duration, Instant};

use switchyard_errors::ErrorName;
use switchyard_operation::{Error, Side};
use switchyard_postgres::quote;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, Statement};

use crate::catalog::{KeyValues, Shape};

const POLL: Duration = Duration::from_millis(100);

/// Session settings under which a value's text form is the same on every major, so a
/// row hashes the same on blue and green.
pub(crate) const TEXT_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'";

const SNAPSHOT: &str = "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// The rows whose key is above `lower` and at most `upper`; no bound means no limit on
/// that side (a table without a key is one chunk without bounds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub lower: Option<KeyValues>,
    pub upper: Option<KeyValues>,
}

/// What one side holds in one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Figures {
    pub rows: i64,
    pub checksum: Option<String>,
}

/// Quick mode: how many of a keyed table's newest rows (by key) are compared.
pub(crate) const NEWEST_ROWS: i64 = 1000;
/// Quick mode: a table without a key is compared whole only up to this many rows
/// (estimated); a larger one is left unchecked rather than read whole inside the pause.
pub(crate) const KEYLESS_ROWS: i64 = 10_000;

/// How to compare, the same for every table of a run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Method<'a> {
    /// Every row in chunks of `chunk_rows`; otherwise (quick) the newest [`NEWEST_ROWS`].
    pub full: bool,
    pub chunk_rows: i64,
    pub attempts: u32,
    /// Green's slots on blue for this database.
    pub slots: &'a [String],
    /// How long green may take to confirm the LSN captured with a snapshot of blue.
    pub catch_up: Duration,
}

#[derive(Clone, Debug)]
pub(crate) struct Difference {
    pub chunk: Chunk,
    pub blue: Figures,
    pub green: Figures,
}

#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// What the comparison covered, in words (`every row`, `the newest 1000 rows by key`,
    /// `not compared: …`).
    pub evidence: String,
    /// Blue's rows in the compared ranges.
    pub rows: u64,
    pub chunks: usize,
    /// Chunks that differed on every attempt.
    pub differences: Vec<Difference>,
    /// The latest LSN green confirmed for this table's comparisons.
    pub lsn: PgLsn,
    /// The invocation's budget ran out: the rows up to this key were compared, the rest
    /// are the next invocation's.
    pub stopped_after: Option<KeyValues>,
}

/// Compares `shape`'s table from above `from` (its whole key range when `None`). Past
/// `deadline` it stops after the batch in hand and says where (`stopped_after`): the next
/// invocation resumes there. At least one batch is compared, so every invocation makes
/// progress.
pub(crate) async fn compare(
    blue: &Client,
    green: &Client,
    shape: &Shape,
    method: Method<'_>,
    from: Option<KeyValues>,
    deadline: Option<Instant>,
) -> Result<Outcome, Error> {
    let planned_at = begin_snapshot(blue).await?;
    let planned = plan(blue, shape, method, from).await;
    end_snapshot(blue).await?;
    let Some((chunks, evidence)) = planned? else {
        return Ok(Outcome {
            evidence: format!(
                "not compared: no key, and more than {KEYLESS_ROWS} rows to read inside the pause (the full check in prepare compares it)"
            ),
            rows: 0,
            chunks: 0,
            differences: Vec::new(),
            lsn: planned_at,
            stopped_after: None,
        });
    };
    let mut outcome = Outcome {
        evidence,
        rows: 0,
        chunks: 0,
        differences: Vec::new(),
        lsn: planned_at,
        stopped_after: None,
    };
    let batches: Vec<&[Chunk]> = chunks.chunks(BATCH_CHUNKS).collect();
    for (n, batch) in batches.iter().enumerate() {
        compare_batch(blue, green, shape, method, batch, &mut outcome).await?;
        let more = n + 1 < batches.len();
        if more && deadline.is_some_and(|d| Instant::now() >= d) {
            outcome.stopped_after = batch.last().and_then(|c| c.upper.clone());
            tracing::info!(table = %shape.table, chunks = outcome.chunks, "invocation budget spent: handing over");
            break;
        }
    }
    Ok(outcome)
}

/// Chunks compared under one snapshot of blue.
const BATCH_CHUNKS: usize = 16;

/// One batch: blue's figures in one REPEATABLE READ snapshot, green's once green's slots
/// confirmed an LSN read inside it, each differing chunk re-checked; added to `outcome`.
async fn compare_batch(
    blue: &Client,
    green: &Client,
    shape: &Shape,
    method: Method<'_>,
    chunks: &[Chunk],
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let mut lsn = begin_snapshot(blue).await?;
    let all: Vec<&Chunk> = chunks.iter().collect();
    let mut blue_figures = figures(blue, Side::Blue, shape, &all).await?;
    end_snapshot(blue).await?;
    wait_confirmed(blue, method, lsn).await?;
    let mut green_figures = figures(green, Side::Green, shape, &all).await?;

    let mut differing: Vec<usize> = (0..chunks.len())
        .filter(|&i| blue_figures[i] != green_figures[i])
        .collect();
    // A row changed on blue after the snapshot differs only until a later snapshot sees
    // it too; a real divergence differs every time.
    for attempt in 1..=method.attempts {
        if differing.is_empty() {
            break;
        }
        tracing::info!(table = %shape.table, attempt, chunks = differing.len(), "re-checking differing chunks");
        let again: Vec<&Chunk> = differing.iter().map(|&i| &chunks[i]).collect();
        let at = begin_snapshot(blue).await?;
        let blue_again = figures(blue, Side::Blue, shape, &again).await?;
        end_snapshot(blue).await?;
        wait_confirmed(blue, method, at).await?;
        let green_again = figures(green, Side::Green, shape, &again).await?;
        for ((&i, b), g) in differing.iter().zip(blue_again).zip(green_again) {
            blue_figures[i] = b;
            green_figures[i] = g;
        }
        differing.retain(|&i| blue_figures[i] != green_figures[i]);
        lsn = lsn.max(at);
    }

    let rows = blue_figures.iter().map(|f| f.rows).sum::<i64>();
    outcome.rows += u64::try_from(rows).unwrap_or(0);
    outcome.chunks += chunks.len();
    outcome.lsn = outcome.lsn.max(lsn);
    outcome
        .differences
        .extend(differing.into_iter().map(|i| Difference {
            chunk: chunks[i].clone(),
            blue: blue_figures[i].clone(),
            green: green_figures[i].clone(),
        }));
    Ok(())
}

/// Opens a REPEATABLE READ snapshot on blue; returns blue's WAL position read inside it.
async fn begin_snapshot(blue: &Client) -> Result<PgLsn, Error> {
    blue.batch_execute(SNAPSHOT)
        .await
        .map_err(|e| Error::query("starting a snapshot on blue", e))?;
    // The first statement takes the snapshot: the LSN read after it covers every commit
    // the snapshot sees.
    Ok(blue
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()", &[])
        .await
        .map_err(|e| Error::query("reading blue's WAL position", e))?
        .get(0))
}

async fn end_snapshot(blue: &Client) -> Result<(), Error> {
    blue.batch_execute("COMMIT")
        .await
        .map_err(|e| Error::query("ending the snapshot on blue", e))
}

/// The chunks, inside blue's snapshot, and what they cover in words; `None` in quick mode
/// for a table without a key too large to read inside the pause. Every range ends at the
/// snapshot's largest key, so rows inserted after it are outside every chunk on both
/// sides. Quick mode reads no whole table: one range, a keyed table's newest
/// [`NEWEST_ROWS`] by key (two index probes bound it).
async fn plan(
    blue: &Client,
    shape: &Shape,
    method: Method<'_>,
    from: Option<KeyValues>,
) -> Result<Option<(Vec<Chunk>, String)>, Error> {
    let whole = |evidence: &str| {
        Some((
            vec![Chunk {
                lower: None,
                upper: None,
            }],
            evidence.to_owned(),
        ))
    };
    let what = || format!("chunking {} on blue", shape.table);
    if shape.key.is_empty() {
        if !method.full {
            let estimate: i64 = blue
                .query_one(&shape.estimated_rows_sql(), &[])
                .await
                .map_err(|e| Error::query(what(), e))?
                .get(0);
            if estimate > KEYLESS_ROWS {
                return Ok(None);
            }
        }
        return Ok(whole("every row (no key)"));
    }
    let Some(max) = blue
        .query_opt(&shape.max_key_sql(), &[])
        .await
        .map_err(|e| Error::query(what(), e))?
        .map(|row| row.get::<_, KeyValues>(0))
    else {
        return Ok(whole("every row (none)"));
    };
    if !method.full {
        let lower = blue
            .query_opt(&shape.key_from_top_sql(), &[&NEWEST_ROWS])
            .await
            .map_err(|e| Error::query(what(), e))?
            .map(|row| row.get::<_, KeyValues>(0));
        let evidence = match lower {
            Some(_) => format!("the newest {NEWEST_ROWS} rows by key"),
            None => "every row".to_owned(),
        };
        return Ok(Some((
            vec![Chunk {
                lower,
                upper: Some(max),
            }],
            evidence,
        )));
    }
    let evidence = match &from {
        Some(_) => "every row (resumed)".to_owned(),
        None => "every row".to_owned(),
    };
    let boundaries = match &from {
        None => {
            blue.query(&shape.boundaries_sql(false), &[&method.chunk_rows])
                .await
        }
        Some(after) => {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&method.chunk_rows];
            params.extend(after.iter().map(|v| v as &(dyn ToSql + Sync)));
            blue.query(&shape.boundaries_sql(true), &params).await
        }
    };
    let mut uppers: Vec<KeyValues> = boundaries
        .map_err(|e| Error::query(what(), e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if uppers.last() != Some(&max) {
        uppers.push(max);
    }
    let mut lower = from;
    Ok(Some((
        uppers
            .into_iter()
            .map(|upper| {
                let chunk = Chunk {
                    lower: lower.take(),
                    upper: Some(upper.clone()),
                };
                lower = Some(upper);
                chunk
            })
            .collect(),
        evidence,
    )))
}

/// Each chunk's figures on one side, one statement per kind of range.
async fn figures(
    client: &Client,
    side: Side,
    shape: &Shape,
    chunks: &[&Chunk],
) -> Result<Vec<Figures>, Error> {
    let what = || format!("checksums of {} on {side}", shape.table);
    // Indexed by (has lower bound, has upper bound).
    let mut statements: [[Option<Statement>; 2]; 2] = Default::default();
    let mut out = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let (lower, upper) = (chunk.lower.is_some(), chunk.upper.is_some());
        let statement = match &statements[usize::from(lower)][usize::from(upper)] {
            Some(statement) => statement.clone(),
            None => {
                let prepared = client
                    .prepare(&shape.figures_sql(lower, upper, true))
                    .await
                    .map_err(|e| Error::query(what(), e))?;
                statements[usize::from(lower)][usize::from(upper)] = Some(prepared.clone());
                prepared
            }
        };
        let params: Vec<&(dyn ToSql + Sync)> = chunk
            .lower
            .iter()
            .chain(chunk.upper.iter())
            .flatten()
            .map(|value| value as &(dyn ToSql + Sync))
            .collect();
        let row = client
            .query_one(&statement, &params)
            .await
            .map_err(|e| Error::query(what(), e))?;
        out.push(Figures {
            rows: row.get(0),
            checksum: row.get(1),
        });
    }
    Ok(out)
}

/// Waits until every one of green's slots on blue has confirmed `lsn`: from then on green
/// holds every change blue's snapshot saw.
async fn wait_confirmed(blue: &Client, method: Method<'_>, lsn: PgLsn) -> Result<(), Error> {
    let slots = method.slots;
    if slots.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let rows = blue
            .query(
                "SELECT slot_name::text, confirmed_flush_lsn FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name::text = ANY($1)",
                &[&slots],
            )
            .await
            .map_err(|e| Error::query("reading green's slots on blue", e))?;
        let confirmed: Vec<(String, Option<PgLsn>)> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let missing: Vec<String> = slots
            .iter()
            .filter(|slot| !confirmed.iter().any(|(name, _)| name == *slot))
            .map(|slot| quote::name(slot))
            .collect();
        if !missing.is_empty() {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "green's subscriptions stream from slots {} that blue does not have; repair replication (start-replication) before verifying data",
                    missing.join(", ")
                ),
            ));
        }
        let behind: Vec<String> = confirmed
            .iter()
            .filter(|(_, at)| at.is_none_or(|at| at < lsn))
            .map(|(name, at)| match at {
                Some(at) => format!("{} at {at}", quote::name(name)),
                None => format!("{} at none", quote::name(name)),
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= method.catch_up {
            return Err(Error::stop(
                ErrorName::NotCaughtUp,
                format!(
                    "green has not confirmed blue's LSN {lsn} within {} s ({}); check replication (check-replication) and retry",
                    method.catch_up.as_secs(),
                    behind.join(", ")
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
