//! What to compare, read from the catalogs: the replicated tables and the slots from
//! green, each table's columns and key from blue.

use switchyard_operation::Error;
use switchyard_postgres::quote::{self, ident, qualified};

/// The schema that belongs to switchyard itself: never compared.
const OWN_SCHEMA: &str = "switchyard";

/// A table by name, the same on both sides. `Display` names it as psql would take it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TableName {
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&quote::qualified_name(&self.schema, &self.name))
    }
}

/// The leaf tables green's subscriptions in the connected database replicate (a
/// replicated partitioned table stands for its leaves), or every table of the database
/// when it has no subscription.
const REPLICATED_LEAVES: &str = "
WITH here AS (
    SELECT s.oid FROM pg_catalog.pg_subscription s
    JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
    WHERE d.datname = pg_catalog.current_database()
), chosen AS (
    SELECT sr.srrelid AS relid FROM pg_catalog.pg_subscription_rel sr WHERE sr.srsubid IN (SELECT oid FROM here)
    UNION
    SELECT c.oid FROM pg_catalog.pg_class c
    WHERE NOT EXISTS (SELECT FROM here) AND c.relkind = 'r' AND c.relpersistence <> 't'
), leaves AS (
    SELECT relid FROM chosen
    UNION
    -- a partitioned table's whole tree; no rows for a table that is not partitioned
    SELECT t.relid FROM chosen, LATERAL pg_catalog.pg_partition_tree(chosen.relid) AS t WHERE t.isleaf
)
SELECT n.nspname::text, c.relname::text
FROM leaves l
JOIN pg_catalog.pg_class c ON c.oid = l.relid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname <> $1 AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2";

pub(crate) async fn replicated_tables(
    green: &tokio_postgres::Client,
) -> Result<Vec<TableName>, Error> {
    let rows = green
        .query(REPLICATED_LEAVES, &[&OWN_SCHEMA])
        .await
        .map_err(|e| Error::query("listing green's replicated tables", e))?;
    Ok(rows
        .iter()
        .map(|row| TableName {
            schema: row.get(0),
            name: row.get(1),
        })
        .collect())
}

/// The slots on blue that green's enabled subscriptions in the connected database stream
/// from. A disabled subscription follows nothing, so there is nothing to wait for.
pub(crate) async fn green_slots(green: &tokio_postgres::Client) -> Result<Vec<String>, Error> {
    let rows = green
        .query(
            "SELECT s.subslotname::text FROM pg_catalog.pg_subscription s
             JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
             WHERE d.datname = pg_catalog.current_database() AND s.subenabled AND s.subslotname IS NOT NULL
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| Error::query("listing green's subscriptions", e))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A column of the key that orders and chunks a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyColumn {
    pub name: String,
    /// The column's type, quoted and schema-qualified, to cast boundary values back.
    pub type_name: String,
    /// Compared in the "C" collation: the same order on both sides whatever collation
    /// library each major links.
    pub collatable: bool,
}

/// A table as blue's catalog describes it: the columns that are compared and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub table: TableName,
    pub columns: Vec<String>,
    /// The primary key, else the replica identity index; empty when there is neither.
    pub key: Vec<KeyColumn>,
}

/// Blue's live columns in order, each with its position in the primary key (else the
/// replica identity index) if it is part of it.
const SHAPE: &str = "
SELECT a.attname::text, tn.nspname::text, t.typname::text, a.attcollation <> 0, k.position
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
LEFT JOIN LATERAL (
    SELECT k.position FROM (
        SELECT i.indkey FROM pg_catalog.pg_index i
        WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)
        ORDER BY i.indisprimary DESC LIMIT 1
    ) i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
    WHERE k.attnum = a.attnum
) k ON true
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'
ORDER BY a.attnum";

/// `None` when blue has no such table.
pub(crate) async fn shape(
    blue: &tokio_postgres::Client,
    table: &TableName,
) -> Result<Option<Shape>, Error> {
    let rows = blue
        .query(SHAPE, &[&table.schema, &table.name])
        .await
        .map_err(|e| Error::query(format!("reading the columns of {table} on blue"), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut key: Vec<(i64, KeyColumn)> = Vec::new();
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.get(0);
        if let Some(position) = row.get::<_, Option<i64>>(4) {
            key.push((
                position,
                KeyColumn {
                    name: name.clone(),
                    type_name: qualified(row.get(1), row.get(2)),
                    collatable: row.get(3),
                },
            ));
        }
        columns.push(name);
    }
    key.sort_by_key(|(position, _)| *position);
    Ok(Some(Shape {
        table: table.clone(),
        columns,
        key: key.into_iter().map(|(_, k)| k).collect(),
    }))
}

/// Boundary values of a key, as text in the session settings both sides share.
pub(crate) type KeyValues = Vec<String>;

impl Shape {
    fn relation(&self) -> String {
        qualified(&self.table.schema, &self.table.name)
    }

    fn key_terms(&self, direction: &str) -> String {
        self.key
            .iter()
            .map(|k| {
                let collate = if k.collatable {
                    format!(" COLLATE {}", ident("C"))
                } else {
                    String::new()
                };
                format!("{}{collate}{direction}", ident(&k.name))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_as_text(&self) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("{}::text", ident(&k.name)))
            .collect();
        format!("ARRAY[{}]", parts.join(", "))
    }

    /// `ROW($n::text::type, …)` for the key, parameters from `$first` on.
    fn key_parameters(&self, first: usize) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("${}::text::{}", first + i, k.type_name))
            .collect();
        format!("ROW({})", parts.join(", "))
    }

    /// The key of every `$1`-th row in key order: the upper bounds of full chunks. With
    /// `after`, counted from the first row whose key is above `$2…` (a resumed run).
    pub(crate) fn boundaries_sql(&self, after: bool) -> String {
        let filter = if after {
            format!(
                " WHERE ROW({}) > {}",
                self.key_terms(""),
                self.key_parameters(2)
            )
        } else {
            String::new()
        };
        format!(
            "SELECT k FROM (SELECT pg_catalog.row_number() OVER (ORDER BY {}) AS n, {} AS k FROM {}{filter}) s \
             WHERE n % $1 = 0 ORDER BY n",
            self.key_terms(""),
            self.key_as_text(),
            self.relation()
        )
    }

    /// The largest key: the last chunk's upper bound.
    pub(crate) fn max_key_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} ORDER BY {} LIMIT 1",
            self.key_as_text(),
            self.relation(),
            self.key_terms(" DESC")
        )
    }

    /// The key of the row `$1` rows below the largest in key order (`$1` = 0: the
    /// largest): the lower bound of the quick check's newest rows.
    pub(crate) fn key_from_top_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} ORDER BY {} OFFSET $1 LIMIT 1",
            self.key_as_text(),
            self.relation(),
            self.key_terms(" DESC")
        )
    }

    /// The planner's estimate of the table's rows (`reltuples`; -1 or 0 when never
    /// analyzed), which costs nothing to read.
    pub(crate) fn estimated_rows_sql(&self) -> String {
        format!(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_catalog.pg_class WHERE oid = {}::regclass",
            switchyard_postgres::quote::literal(&self.relation())
        )
    }

    /// Row count and (in full mode) checksum of the rows whose key is above a lower bound
    /// and at most an upper bound, each present or not; lower bound parameters first.
    pub(crate) fn figures_sql(&self, lower: bool, upper: bool, checksum: bool) -> String {
        let key = format!("ROW({})", self.key_terms(""));
        let mut conditions = Vec::new();
        if lower {
            conditions.push(format!("{key} > {}", self.key_parameters(1)));
        }
        if upper {
            let first = if lower { 1 + self.key.len() } else { 1 };
            conditions.push(format!("{key} <= {}", self.key_parameters(first)));
        }
        let checksum = if checksum {
            let columns: Vec<String> = self.columns.iter().map(|c| ident(c)).collect();
            format!(
                "coalesce(sum(('x' || substr(md5(ROW({})::text), 1, 16))::bit(64)::bigint::numeric), 0)::text",
                columns.join(", ")
            )
        } else {
            "NULL::text".to_owned()
        };
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        format!(
            "SELECT count(*), {checksum} FROM {}{filter}",
            self.relation()
        )
    }

    /// `(a, b)`: the key's columns, for messages.
    pub(crate) fn key_names(&self) -> String {
        let names: Vec<String> = self.key.iter().map(|k| quote::name(&k.name)).collect();
        format!("({})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Shape {
        Shape {
            table: TableName {
                schema: "public".to_owned(),
                name: "account_links".to_owned(),
            },
            columns: vec![
                "parent_id".to_owned(),
                "child_id".to_owned(),
                "kind".to_owned(),
            ],
            key: vec![
                KeyColumn {
                    name: "parent_id".to_owned(),
                    type_name: qualified("pg_catalog", "int8"),
                    collatable: false,
                },
                KeyColumn {
                    name: "kind".to_owned(),
                    type_name: qualified("pg_catalog", "text"),
                    collatable: true,
                },
            ],
        }
    }

    #[test]
    fn chunk_queries_bound_the_key_on_both_ends() {
        assert_eq!(
            links().figures_sql(true, true, false),
            r#"SELECT count(*), NULL::text FROM "public"."account_links" WHERE ROW("parent_id", "kind" COLLATE "C") > ROW($1::text::"pg_catalog"."int8", $2::text::"pg_catalog"."text") AND ROW("parent_id", "kind" COLLATE "C") <= ROW($3::text::"pg_catalog"."int8", $4::text::"pg_catalog"."text")"#
        );
        assert_eq!(
            links().figures_sql(false, true, true),
            r#"SELECT count(*), coalesce(sum(('x' || substr(md5(ROW("parent_id", "child_id", "kind")::text), 1, 16))::bit(64)::bigint::numeric), 0)::text FROM "public"."account_links" WHERE ROW("parent_id", "kind" COLLATE "C") <= ROW($1::text::"pg_catalog"."int8", $2::text::"pg_catalog"."text")"#
        );
        let mut keyless = links();
        keyless.key.clear();
        assert_eq!(
            keyless.figures_sql(false, false, false),
            r#"SELECT count(*), NULL::text FROM "public"."account_links""#
        );
    }

    #[test]
    fn boundaries_follow_the_same_order() {
        assert_eq!(
            links().boundaries_sql(false),
            r#"SELECT k FROM (SELECT pg_catalog.row_number() OVER (ORDER BY "parent_id", "kind" COLLATE "C") AS n, ARRAY["parent_id"::text, "kind"::text] AS k FROM "public"."account_links") s WHERE n % $1 = 0 ORDER BY n"#
        );
        let resumed = links().boundaries_sql(true);
        assert!(
            resumed.contains(r#" FROM "public"."account_links" WHERE ROW("parent_id", "kind" COLLATE "C") > ROW($2::text::"#),
            "{resumed}"
        );
        assert_eq!(
            links().key_from_top_sql(),
            r#"SELECT ARRAY["parent_id"::text, "kind"::text] FROM "public"."account_links" ORDER BY "parent_id" DESC, "kind" COLLATE "C" DESC OFFSET $1 LIMIT 1"#
        );
        assert_eq!(
            links().max_key_sql(),
            r#"SELECT ARRAY["parent_id"::text, "kind"::text] FROM "public"."account_links" ORDER BY "parent_id" DESC, "kind" COLLATE "C" DESC LIMIT 1"#
        );
    }

    /// Messages name a table and its key as psql would take them.
    #[test]
    fn names_are_quoted_where_needed() {
        let weird = TableName {
            schema: "Weird \"Schema\"".to_owned(),
            name: "plain heap".to_owned(),
        };
        assert_eq!(weird.to_string(), r#""Weird ""Schema"""."plain heap""#);
        assert_eq!(links().table.to_string(), "public.account_links");
        let dotted = |schema: &str, name: &str| {
            TableName {
                schema: schema.to_owned(),
                name: name.to_owned(),
            }
            .to_string()
        };
        assert_ne!(dotted("a.b", "c"), dotted("a", "b.c"));
        let mut shape = links();
        shape.key[1].name = "Kind".to_owned();
        assert_eq!(shape.key_names(), r#"(parent_id, "Kind")"#);
    }
}
