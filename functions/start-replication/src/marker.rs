//! The switchover marker: `check-slot-lag` writes a row into `switchyard.switchover_marker`
//! on blue after the write freeze and waits to see it on green, proof that green applies
//! what blue commits. The table exists on both sides and is the one `switchyard` table
//! published (in `switchyard_rest`); the schema stays out of every catalog comparison.

use switchyard_cell::TableRef;
use switchyard_operation::Error;
use tokio_postgres::Client;

/// The same definition on blue (created with the DDL guard) and on green.
pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS switchyard.switchover_marker (
    id         text PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
)";

/// The marker table, as a publication lists it.
pub(crate) fn table() -> TableRef {
    TableRef {
        schema: "switchyard".to_owned(),
        table: "switchover_marker".to_owned(),
    }
}

/// Creates the schema and table on green if missing (green has no DDL guard). `fresh`:
/// `switchyard_rest` is about to be created, so the table is emptied first — its initial
/// copy brings blue's rows, and leftovers of an earlier subscription would collide.
pub(crate) async fn prepare_green(green: &Client, fresh: bool) -> Result<(), Error> {
    green
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS switchyard; {CREATE_TABLE}"
        ))
        .await
        .map_err(|e| Error::query("creating switchyard.switchover_marker on green", e))?;
    if fresh {
        let removed = green
            .execute("DELETE FROM switchyard.switchover_marker", &[])
            .await
            .map_err(|e| Error::query("emptying switchyard.switchover_marker on green", e))?;
        if removed > 0 {
            tracing::info!(removed, "stale switchover markers removed from green");
        }
    }
    Ok(())
}

/// Green's marker table: `None` when it is missing, else how many rows it holds.
pub(crate) async fn green_rows(green: &Client) -> Result<Option<i64>, Error> {
    let exists: bool = green
        .query_one(
            "SELECT pg_catalog.to_regclass('switchyard.switchover_marker') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| Error::query("looking up switchyard.switchover_marker on green", e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows: i64 = green
        .query_one("SELECT count(*) FROM switchyard.switchover_marker", &[])
        .await
        .map_err(|e| Error::query("reading switchyard.switchover_marker on green", e))?
        .get(0);
    Ok(Some(rows))
}
