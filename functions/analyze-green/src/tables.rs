//! Which tables green replicates, read from green's own catalogs so that the names the
//! subscriptions were created with do not matter.

use switchyard_operation::Error;

/// The schema that belongs to switchyard itself: never analyzed.
const OWN_SCHEMA: &str = "switchyard";

/// A table on green, as its catalog names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Table {
    pub schema: String,
    pub name: String,
    pub partitioned: bool,
}

/// The tables green's subscriptions in the connected database replicate (every table of
/// the database when it has no subscription), with every partitioned ancestor of them;
/// plain tables and leaves first, partitioned tables last.
const TO_ANALYZE: &str = "
WITH here AS (
    SELECT s.oid FROM pg_catalog.pg_subscription s
    JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
    WHERE d.datname = pg_catalog.current_database()
), chosen AS (
    SELECT sr.srrelid AS relid FROM pg_catalog.pg_subscription_rel sr WHERE sr.srsubid IN (SELECT oid FROM here)
    UNION
    SELECT c.oid FROM pg_catalog.pg_class c
    WHERE NOT EXISTS (SELECT FROM here) AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
), related AS (
    SELECT relid FROM chosen
    UNION
    -- a partition's ancestors; no rows for a table that is not a partition
    SELECT a.relid FROM chosen, LATERAL pg_catalog.pg_partition_ancestors(chosen.relid) AS a
)
SELECT n.nspname::text, c.relname::text, c.relkind = 'p'
FROM related r
JOIN pg_catalog.pg_class c ON c.oid = r.relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname <> $1 AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 3, 1, 2";

pub(crate) async fn to_analyze(green: &tokio_postgres::Client) -> Result<Vec<Table>, Error> {
    let rows = green
        .query(TO_ANALYZE, &[&OWN_SCHEMA])
        .await
        .map_err(|e| Error::query("listing green's replicated tables", e))?;
    Ok(rows
        .iter()
        .map(|row| Table {
            schema: row.get(0),
            name: row.get(1),
            partitioned: row.get(2),
        })
        .collect())
}
