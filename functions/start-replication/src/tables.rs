//! Which tables each publication carries, decided from blue's catalog.
//!
//! Every user table is published exactly once: a table group's tables in its own
//! publication, every other one in `switchyard_rest`. Partitioned tables are published by
//! their root (with `publish_via_partition_root`), so their partitions are not listed:
//! listing both would send a partition's rows twice. `switchyard_rest` also carries our
//! switchover marker table, the one table of the `switchyard` schema that replicates.

use std::collections::{HashMap, HashSet};

use switchyard_cell::{TableGroup, TableRef};
use switchyard_errors::ErrorName;
use switchyard_operation::Error;
use switchyard_postgres::quote;
use tokio_postgres::Client;

use switchyard_cell::{replication_name as publication_name, REST_GROUP as REST};

/// `schema.table` as messages name it: quoted where psql needs it.
pub(crate) fn shown(table: &TableRef) -> String {
    quote::qualified_name(&table.schema, &table.table)
}

/// A table or partitioned table on blue, as far as publishing it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Relation {
    pub table: TableRef,
    /// The topmost partitioned table, for a partition.
    pub root: Option<TableRef>,
    pub unlogged: bool,
    /// Created by an extension: CREATE EXTENSION on green makes it (and its rows).
    pub extension_member: bool,
    /// UPDATE/DELETE can be published: a primary key, a replica identity index, or FULL.
    /// Partitioned tables hold no rows, so only their partitions are judged.
    pub has_identity: bool,
}

/// One publication and the tables it must carry, in catalog order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Publication {
    pub name: String,
    pub tables: Vec<TableRef>,
}

/// Every table and partitioned table outside the system schemas and `switchyard`.
/// Temporary tables are left out: they belong to one session and hold nothing to move.
pub(crate) async fn read(blue: &Client) -> Result<Vec<Relation>, Error> {
    let rows = blue
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relpersistence = 'u',
                    rn.nspname::text, rc.relname::text,
                    EXISTS (SELECT FROM pg_catalog.pg_depend d
                             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                               AND d.objid = c.oid AND d.deptype = 'e'),
                    c.relkind = 'p' OR CASE c.relreplident
                        WHEN 'f' THEN true
                        WHEN 'i' THEN EXISTS (SELECT FROM pg_catalog.pg_index i
                                               WHERE i.indrelid = c.oid AND i.indisreplident)
                        WHEN 'd' THEN EXISTS (SELECT FROM pg_catalog.pg_index i
                                               WHERE i.indrelid = c.oid AND i.indisprimary)
                        ELSE false END
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_catalog.pg_class rc
                      ON c.relispartition AND rc.oid = pg_catalog.pg_partition_root(c.oid)
               LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
              WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
                AND n.nspname NOT IN ('information_schema', 'switchyard')
                AND n.nspname NOT LIKE 'pg\\_%'
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| Error::query("listing blue's tables", e))?;
    Ok(rows
        .iter()
        .map(|row| {
            let root = match (row.get::<_, Option<String>>(3), row.get(4)) {
                (Some(schema), Some(table)) => Some(TableRef { schema, table }),
                _ => None,
            };
            Relation {
                table: TableRef {
                    schema: row.get(0),
                    table: row.get(1),
                },
                unlogged: row.get(2),
                root,
                extension_member: row.get(5),
                has_identity: row.get(6),
            }
        })
        .collect())
}

/// The publications for `database`: one per table group, in the document's order, then
/// `switchyard_rest` (ending with the switchover marker table). Fails `InvalidInput` for a group table blue cannot publish as named,
/// `PreconditionFailed` for tables that cannot be published safely at all.
pub(crate) fn plan(
    groups: &[TableGroup],
    catalog: &[Relation],
    database: &str,
) -> Result<Vec<Publication>, Error> {
    let by_name: HashMap<&TableRef, &Relation> = catalog.iter().map(|r| (&r.table, r)).collect();
    let mut wrong = Vec::new();
    let mut grouped = HashSet::new();
    let mut publications = Vec::new();
    let db = quote::name(database);
    for group in groups {
        for table in &group.tables {
            match by_name.get(table) {
                None => wrong.push(format!(
                    "{} (group {}) is not a table in database {db} on blue",
                    shown(table),
                    group.name
                )),
                Some(Relation { root: Some(root), .. }) => wrong.push(format!(
                    "{} (group {}) is a partition of {root}: name {root} instead, which publishes all its partitions",
                    shown(table),
                    group.name,
                    root = shown(root)
                )),
                Some(r) if r.extension_member => wrong.push(format!(
                    "{} (group {}) belongs to an extension, which creates it on green",
                    shown(table),
                    group.name
                )),
                Some(_) => {
                    grouped.insert(table);
                }
            }
        }
        publications.push(Publication {
            name: publication_name(&group.name),
            tables: group.tables.clone(),
        });
    }
    if !wrong.is_empty() {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!("table_groups: {}; fix the cell document", wrong.join("; ")),
        ));
    }

    let unlogged: Vec<String> = catalog
        .iter()
        .filter(|r| r.unlogged && !r.extension_member)
        .map(|r| shown(&r.table))
        .collect();
    if !unlogged.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "unlogged tables cannot be replicated (database {db}): {}; make them logged (ALTER TABLE … SET LOGGED) or drop them, then rerun (preflight reports these)",
                unlogged.join(", ")
            ),
        ));
    }
    // Once published, UPDATE and DELETE on a table without a replica identity fail on blue:
    // the application would break, not just replication.
    let no_identity: Vec<String> = catalog
        .iter()
        .filter(|r| !r.has_identity && !r.extension_member)
        .map(|r| shown(&r.table))
        .collect();
    if !no_identity.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "tables without a replica identity (database {db}), whose UPDATE/DELETE would fail on blue once published: {}; add a primary key or REPLICA IDENTITY FULL, then rerun",
                no_identity.join(", ")
            ),
        ));
    }

    let rest = catalog
        .iter()
        .filter(|r| r.root.is_none() && !r.extension_member && !grouped.contains(&r.table))
        .map(|r| r.table.clone())
        // Not in `catalog` (the schema is ours), created on both sides by start-replication.
        .chain([crate::marker::table()])
        .collect();
    publications.push(Publication {
        name: publication_name(REST),
        tables: rest,
    });
    Ok(publications)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: &str, table: &str) -> TableRef {
        TableRef {
            schema: schema.into(),
            table: table.into(),
        }
    }

    fn rel(schema: &str, table: &str) -> Relation {
        Relation {
            table: t(schema, table),
            root: None,
            unlogged: false,
            extension_member: false,
            has_identity: true,
        }
    }

    fn catalog() -> Vec<Relation> {
        let events = rel("public", "events");
        let mut leaf = rel("public", "events_2026_h1");
        leaf.root = Some(t("public", "events"));
        let mut ext = rel("public", "spatial_ref_sys");
        ext.extension_member = true;
        ext.has_identity = false;
        vec![
            rel("billing", "invoice lines"),
            rel("public", "accounts"),
            events,
            leaf,
            rel("public", "payments"),
            ext,
        ]
    }

    fn group(tables: &[TableRef]) -> TableGroup {
        TableGroup {
            name: "payments".into(),
            tables: tables.to_vec(),
        }
    }

    #[test]
    fn every_table_once_roots_not_leaves_extensions_left_out() {
        let plan = plan(&[group(&[t("public", "payments")])], &catalog(), "app").expect("plan");
        assert_eq!(
            plan,
            vec![
                Publication {
                    name: "switchyard_payments".into(),
                    tables: vec![t("public", "payments")]
                },
                Publication {
                    name: "switchyard_rest".into(),
                    tables: vec![
                        t("billing", "invoice lines"),
                        t("public", "accounts"),
                        t("public", "events"),
                        t("switchyard", "switchover_marker")
                    ]
                },
            ]
        );
    }

    #[test]
    fn the_rest_carries_the_marker_even_when_every_table_is_grouped() {
        let tables: Vec<TableRef> = catalog()
            .iter()
            .filter(|r| r.root.is_none() && !r.extension_member)
            .map(|r| r.table.clone())
            .collect();
        let plan = plan(&[group(&tables)], &catalog(), "app").expect("plan");
        assert_eq!(plan[0].tables, tables);
        assert_eq!(
            plan[1],
            Publication {
                name: "switchyard_rest".into(),
                tables: vec![t("switchyard", "switchover_marker")]
            }
        );
    }

    #[test]
    fn group_tables_must_be_publishable_as_named() {
        let groups = [group(&[
            t("public", "events_2026_h1"),
            t("public", "nope"),
            t("public", "spatial_ref_sys"),
        ])];
        let err = plan(&groups, &catalog(), "app").expect_err("rejected");
        let text = err.to_string();
        assert!(
            text.contains("public.events_2026_h1 (group payments) is a partition of public.events"),
            "{text}"
        );
        assert!(
            text.contains("public.nope (group payments) is not a table in database app"),
            "{text}"
        );
        assert!(
            text.contains("public.spatial_ref_sys (group payments) belongs to an extension"),
            "{text}"
        );
        assert!(matches!(err, Error::Failed(ref f) if f.name() == ErrorName::InvalidInput));
    }

    /// A group table is named as psql would take it: `a.b` + `c` is not `a` + `b.c`.
    #[test]
    fn messages_quote_table_names_where_needed() {
        let groups = [group(&[t("Weird \"Schema\"", "plain heap"), t("a.b", "c")])];
        let text = plan(&groups, &catalog(), "my db")
            .expect_err("rejected")
            .to_string();
        assert!(
            text.contains(r#""Weird ""Schema"""."plain heap" (group payments) is not a table in database "my db" on blue"#),
            "{text}"
        );
        assert!(text.contains(r#""a.b".c (group payments)"#), "{text}");
    }

    #[test]
    fn unlogged_and_identityless_tables_stop_the_run() {
        let mut with_unlogged = catalog();
        with_unlogged[1].unlogged = true;
        let err = plan(&[], &with_unlogged, "app").expect_err("unlogged");
        assert!(matches!(err, Error::Failed(ref f) if f.name() == ErrorName::PreconditionFailed));
        assert!(err.to_string().contains("public.accounts"), "{err}");

        let mut without_identity = catalog();
        without_identity[3].has_identity = false;
        let err = plan(&[], &without_identity, "app").expect_err("no identity");
        assert!(matches!(err, Error::Failed(ref f) if f.name() == ErrorName::PreconditionFailed));
        assert!(err.to_string().contains("public.events_2026_h1"), "{err}");
    }
}
