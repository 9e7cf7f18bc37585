//! A database's schema as comparable text: one entry per object, keyed by kind and
//! qualified name, valued by what defines it. Read the same way on blue and green, so
//! that two equal schemas give equal catalogs whatever their server versions.
//!
//! Left out: pg_catalog, information_schema, TOAST and temporary schemas, the `switchyard`
//! schema, objects owned by extensions, publications named `switchyard_*` (replication's
//! own), and what a server version adds by itself (PG 18's NOT NULL constraint rows,
//! trigger clones on partitions).

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Transaction;

use switchyard_operation::Error;
use switchyard_postgres::quote;

/// Session settings under which every name prints schema-qualified and every value
/// prints the same on both servers (partition bounds are timestamps, for one).
const SETTINGS: &str = "SET LOCAL search_path = ''; SET LOCAL TimeZone = 'UTC'; \
    SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
    SET LOCAL extra_float_digits = 3";

/// Namespaces that hold user objects (alias `n`).
const USER_NAMESPACE: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'switchyard') \
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// `NOT EXISTS` an extension membership of `objid` in catalog `class`.
fn not_extension_member(class: &str, objid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.{class}'::pg_catalog.regclass \
         AND d.objid = {objid} AND d.deptype = 'e')"
    )
}

fn queries(server_version_num: i32) -> Vec<String> {
    let user = USER_NAMESPACE;
    let rel_not_ext = not_extension_member("pg_class", "c.oid");
    let relation_kind =
        "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view' \
         WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' END";
    // Row filters, column lists and schemas in publications exist from PG 15; an older blue
    // has none, and its entries read the same as a newer green's without them.
    let (publication_table, publication_schemas) = if server_version_num >= 150000 {
        (
            "pr.prrelid::pg_catalog.regclass::text \
             || coalesce(' (' || (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) \
                FROM pg_catalog.pg_attribute a WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs)) || ')', '') \
             || coalesce(' WHERE ' || pg_catalog.pg_get_expr(pr.prqual, pr.prrelid), '')",
            ", (SELECT 'schemas ' || pg_catalog.string_agg(pg_catalog.quote_ident(ns.nspname), ', ' ORDER BY ns.nspname) \
               FROM pg_catalog.pg_publication_namespace pn JOIN pg_catalog.pg_namespace ns ON ns.oid = pn.pnnspid \
               WHERE pn.pnpubid = p.oid)",
        )
    } else {
        ("pr.prrelid::pg_catalog.regclass::text", "")
    };
    vec![
        format!(
            "SELECT 'schema ' || pg_catalog.quote_ident(n.nspname), '' FROM pg_catalog.pg_namespace n \
             WHERE {user} AND {}",
            not_extension_member("pg_namespace", "n.oid")
        ),
        format!(
            "SELECT {relation_kind} || ' ' || c.oid::pg_catalog.regclass::text, pg_catalog.concat_ws(', ', \
                CASE WHEN c.relkind = 'p' THEN 'partitioned by ' || pg_catalog.pg_get_partkeydef(c.oid) END, \
                CASE WHEN c.relpersistence = 'u' THEN 'unlogged' END, \
                CASE WHEN c.relispartition THEN 'partition of ' || \
                    (SELECT i.inhparent::pg_catalog.regclass::text FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) \
                    || ' ' || pg_catalog.pg_get_expr(c.relpartbound, c.oid) \
                ELSE (SELECT 'inherits ' || pg_catalog.string_agg(i.inhparent::pg_catalog.regclass::text, ', ' ORDER BY i.inhseqno) \
                    FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid) END, \
                CASE WHEN c.relkind IN ('r', 'p', 'm') THEN 'replica identity ' || CASE c.relreplident \
                    WHEN 'd' THEN 'default' WHEN 'n' THEN 'nothing' WHEN 'f' THEN 'full' \
                    ELSE 'index ' || coalesce((SELECT pg_catalog.quote_ident(ic.relname) FROM pg_catalog.pg_index x \
                        JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid \
                        WHERE x.indrelid = c.oid AND x.indisreplident), '(none)') END END) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {user} AND {rel_not_ext}"
        ),
        format!(
            "SELECT 'column ' || c.oid::pg_catalog.regclass::text || '.' || pg_catalog.quote_ident(a.attname), \
                pg_catalog.concat_ws(' ', pg_catalog.format_type(a.atttypid, a.atttypmod), \
                CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN 'collate ' || \
                    (SELECT pg_catalog.quote_ident(co.collname) FROM pg_catalog.pg_collation co WHERE co.oid = a.attcollation) END, \
                CASE WHEN a.attnotnull THEN 'not null' END, \
                CASE a.attidentity WHEN 'a' THEN 'generated always as identity' \
                    WHEN 'd' THEN 'generated by default as identity' END, \
                CASE WHEN a.attgenerated <> '' THEN 'generated always as (' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) || ') ' \
                    || CASE a.attgenerated WHEN 's' THEN 'stored' ELSE 'virtual' END \
                    WHEN ad.adbin IS NOT NULL THEN 'default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND {user} AND {rel_not_ext}"
        ),
        // contype 'n': PG 18 records NOT NULL as constraints; columns already say it.
        format!(
            "SELECT 'constraint ' || pg_catalog.quote_ident(co.conname) || ' on ' || c.oid::pg_catalog.regclass::text, \
                pg_catalog.pg_get_constraintdef(co.oid) \
             FROM pg_catalog.pg_constraint co \
             JOIN pg_catalog.pg_class c ON c.oid = co.conrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE co.contype <> 'n' AND {user} AND {rel_not_ext}"
        ),
        format!(
            "SELECT 'index ' || x.indexrelid::pg_catalog.regclass::text, pg_catalog.pg_get_indexdef(x.indexrelid) \
             FROM pg_catalog.pg_index x \
             JOIN pg_catalog.pg_class c ON c.oid = x.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE {user} AND {rel_not_ext}"
        ),
        format!(
            "SELECT 'sequence ' || c.oid::pg_catalog.regclass::text, pg_catalog.concat_ws(' ', \
                pg_catalog.format_type(s.seqtypid, NULL), 'start ' || s.seqstart, 'increment ' || s.seqincrement, \
                'min ' || s.seqmin, 'max ' || s.seqmax, CASE WHEN s.seqcycle THEN 'cycle' ELSE 'no cycle' END, \
                (SELECT 'owned by ' || d.refobjid::pg_catalog.regclass::text || '.' || pg_catalog.quote_ident(a.attname) \
                 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid \
                   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i') \
                   AND d.refobjsubid > 0 LIMIT 1)) \
             FROM pg_catalog.pg_sequence s \
             JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE {user} AND {rel_not_ext}"
        ),
        format!(
            "SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' WHEN 'w' THEN 'window function ' \
                ELSE 'function ' END || pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname) \
                || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', \
                pg_catalog.concat_ws(', ', 'returns ' || pg_catalog.pg_get_function_result(p.oid), 'language ' || l.lanname, \
                CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END, \
                CASE WHEN p.prosecdef THEN 'security definer' END, \
                'set ' || pg_catalog.array_to_string(p.proconfig, ', '), \
                'body md5 ' || pg_catalog.md5(p.prosrc)) \
             FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
             WHERE {user} AND {}",
            not_extension_member("pg_proc", "p.oid")
        ),
        // Clones on partitions (tgparentid) are internal before PG 15 and not after: the
        // parent's trigger stands for them.
        format!(
            "SELECT 'trigger ' || pg_catalog.quote_ident(t.tgname) || ' on ' || c.oid::pg_catalog.regclass::text, \
                pg_catalog.concat_ws(', ', pg_catalog.pg_get_triggerdef(t.oid), \
                CASE t.tgenabled WHEN 'O' THEN NULL WHEN 'D' THEN 'disabled' WHEN 'R' THEN 'enabled replica' \
                    ELSE 'enabled always' END) \
             FROM pg_catalog.pg_trigger t \
             JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND {user} AND {rel_not_ext}"
        ),
        format!(
            "SELECT 'type ' || pg_catalog.format_type(t.oid, NULL), CASE t.typtype \
                WHEN 'e' THEN 'enum (' || coalesce((SELECT pg_catalog.string_agg(pg_catalog.quote_literal(e.enumlabel), ', ' \
                    ORDER BY e.enumsortorder) FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), '') || ')' \
                WHEN 'c' THEN 'composite (' || coalesce((SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname) || ' ' \
                    || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
                    WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '') || ')' \
                WHEN 'd' THEN pg_catalog.concat_ws(' ', 'domain over ' || pg_catalog.format_type(t.typbasetype, t.typtypmod), \
                    CASE WHEN t.typnotnull THEN 'not null' END, 'default ' || t.typdefault, \
                    (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(co.conname) || ' ' || pg_catalog.pg_get_constraintdef(co.oid), \
                        ', ' ORDER BY co.conname) FROM pg_catalog.pg_constraint co WHERE co.contypid = t.oid AND co.contype <> 'n')) \
                ELSE 'range of ' || (SELECT pg_catalog.format_type(r.rngsubtype, NULL) FROM pg_catalog.pg_range r \
                    WHERE r.rngtypid = t.oid) END \
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND \
                    (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')) \
               AND {user} AND {}",
            not_extension_member("pg_type", "t.oid")
        ),
        format!(
            "SELECT 'publication ' || pg_catalog.quote_ident(p.pubname), pg_catalog.concat_ws(', ', \
                CASE WHEN p.puballtables THEN 'all tables' END, \
                'publish ' || pg_catalog.concat_ws(',', CASE WHEN p.pubinsert THEN 'insert' END, \
                    CASE WHEN p.pubupdate THEN 'update' END, CASE WHEN p.pubdelete THEN 'delete' END, \
                    CASE WHEN p.pubtruncate THEN 'truncate' END), \
                CASE WHEN p.pubviaroot THEN 'via partition root' END, \
                (SELECT 'tables ' || pg_catalog.string_agg(entry, ', ' ORDER BY entry) FROM \
                    (SELECT {publication_table} AS entry FROM pg_catalog.pg_publication_rel pr WHERE pr.prpubid = p.oid) e) \
                {publication_schemas}) \
             FROM pg_catalog.pg_publication p WHERE p.pubname NOT LIKE 'switchyard\\_%'"
        ),
        "SELECT 'extension ' || pg_catalog.quote_ident(e.extname), 'schema ' || pg_catalog.quote_ident(n.nspname) \
         FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
            .to_owned(),
    ]
}

/// One database's schema, as comparable entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Catalog {
    objects: BTreeMap<String, String>,
    extension_versions: BTreeMap<String, String>,
}

impl Catalog {
    /// Reads the catalog inside `tx` (its settings are local to it).
    pub(crate) async fn read(tx: &Transaction<'_>) -> Result<Self, Error> {
        tx.batch_execute(SETTINGS)
            .await
            .map_err(|e| Error::query("setting up the catalog comparison", e))?;
        let version: i32 = tx
            .query_one(
                "SELECT pg_catalog.current_setting('server_version_num')::integer",
                &[],
            )
            .await
            .map_err(|e| Error::query("reading server_version_num", e))?
            .get(0);
        let mut objects = BTreeMap::new();
        for sql in queries(version) {
            for row in tx
                .query(sql.as_str(), &[])
                .await
                .map_err(|e| Error::query("reading the schema catalog", e))?
            {
                let key: String = row.get(0);
                let value: Option<String> = row.get(1);
                objects.insert(key, value.unwrap_or_default());
            }
        }
        let extension_versions = tx
            .query(
                "SELECT extname::text, extversion FROM pg_catalog.pg_extension",
                &[],
            )
            .await
            .map_err(|e| Error::query("reading extension versions", e))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        Ok(Self {
            objects,
            extension_versions,
        })
    }

    /// Whether the database holds anything copy-schema would create: more than the
    /// `public` schema and extensions (`CREATE EXTENSION IF NOT EXISTS` tolerates those).
    pub(crate) fn holds_user_objects(&self) -> bool {
        self.objects
            .keys()
            .any(|key| key != "schema public" && !key.starts_with("extension "))
    }
}

/// What differs, one line per object, in key order.
pub(crate) fn differences(blue: &Catalog, green: &Catalog) -> Vec<String> {
    let keys: BTreeSet<&String> = blue.objects.keys().chain(green.objects.keys()).collect();
    keys.into_iter()
        .filter_map(
            |key| match (blue.objects.get(key), green.objects.get(key)) {
                (Some(b), None) => Some(format!("{key}: on blue, missing on green{}", detail(b))),
                (None, Some(g)) => Some(format!("{key}: on green only, not on blue{}", detail(g))),
                (Some(b), Some(g)) if b != g => {
                    Some(format!("{key}: blue has {b:?}, green has {g:?}"))
                }
                _ => None,
            },
        )
        .collect()
}

/// The objects on blue missing on green, counted by kind (`table`, `index`, `column`, …).
pub(crate) fn to_create<'a>(blue: &'a Catalog, green: &Catalog) -> BTreeMap<&'a str, usize> {
    const KINDS: [&str; 3] = ["materialized view ", "foreign table ", "window function "];
    let mut counts = BTreeMap::new();
    for key in blue
        .objects
        .keys()
        .filter(|k| !green.objects.contains_key(*k))
    {
        let kind = KINDS
            .iter()
            .find(|kind| key.starts_with(**kind))
            .map_or_else(
                || key.split(' ').next().unwrap_or(key),
                |kind| kind.trim_end(),
            );
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

/// Extensions whose versions differ: a note, not a mismatch (green's major may ship a
/// newer default version).
pub(crate) fn extension_versions(blue: &Catalog, green: &Catalog) -> Vec<String> {
    blue.extension_versions
        .iter()
        .filter_map(|(name, b)| {
            let g = green.extension_versions.get(name)?;
            (b != g).then(|| format!("extension {}: blue {b}, green {g}", quote::name(name)))
        })
        .collect()
}

fn detail(value: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!(" ({value})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(objects: &[(&str, &str)], extensions: &[(&str, &str)]) -> Catalog {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        Catalog {
            objects: map(objects),
            extension_versions: map(extensions),
        }
    }

    #[test]
    fn counts_what_green_lacks_by_kind() {
        let blue = catalog(
            &[
                ("schema public", ""),
                ("schema billing", ""),
                ("table public.a", ""),
                ("table public.b", ""),
                ("materialized view billing.totals", ""),
                ("window function public.w(integer)", ""),
                ("index public.a_idx", ""),
            ],
            &[],
        );
        let green = catalog(&[("schema public", ""), ("table public.b", "")], &[]);
        let counts: Vec<(&str, usize)> = to_create(&blue, &green).into_iter().collect();
        assert_eq!(
            counts,
            [
                ("index", 1),
                ("materialized view", 1),
                ("schema", 1),
                ("table", 1),
                ("window function", 1)
            ]
        );
    }

    #[test]
    fn lists_missing_extra_and_changed_objects() {
        let blue = catalog(
            &[
                ("schema public", ""),
                (
                    "index public.a_idx",
                    "CREATE INDEX a_idx ON public.a USING btree (x)",
                ),
                ("column public.a.x", "integer"),
            ],
            &[("pgcrypto", "1.3")],
        );
        let green = catalog(
            &[
                ("schema public", ""),
                ("column public.a.x", "bigint"),
                ("table public.b", "replica identity default"),
            ],
            &[("pgcrypto", "1.4")],
        );
        assert_eq!(
            differences(&blue, &green),
            [
                "column public.a.x: blue has \"integer\", green has \"bigint\"",
                "index public.a_idx: on blue, missing on green (CREATE INDEX a_idx ON public.a USING btree (x))",
                "table public.b: on green only, not on blue (replica identity default)",
            ]
        );
        assert!(differences(&blue, &blue).is_empty());
        assert_eq!(
            extension_versions(&blue, &green),
            ["extension pgcrypto: blue 1.3, green 1.4"]
        );
    }

    #[test]
    fn only_public_and_extensions_count_as_empty() {
        let empty = catalog(
            &[
                ("schema public", ""),
                ("extension plpgsql", "schema pg_catalog"),
            ],
            &[],
        );
        assert!(!empty.holds_user_objects());
        let used = catalog(&[("schema public", ""), ("table public.a", "")], &[]);
        assert!(used.holds_user_objects());
    }
}
