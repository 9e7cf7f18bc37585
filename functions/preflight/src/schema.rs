//! Per-database checks of blue's schema: replica identity, unlogged tables, large
//! objects, materialized views, and extensions against what green offers.

use std::collections::{BTreeSet, HashMap, HashSet};

use switchyard_operation::Error;
use switchyard_postgres::quote;
use tokio_postgres::Transaction;

use crate::finding::{Code, Finding};

/// The schemas whose objects the application owns: not the system's, not switchyard's.
/// Expects `pg_namespace` as `n`.
macro_rules! user_schemas {
    () => {
        "n.nspname NOT IN ('pg_catalog', 'information_schema', 'switchyard') AND n.nspname !~ '^pg_(toast|temp_)'"
    };
}
pub(crate) use user_schemas;

/// `db: schema.name`, as findings name objects (quoted where psql needs it).
pub fn object(db: &str, schema: &str, name: &str) -> String {
    in_database(db, &quote::qualified_name(schema, name))
}

/// `db: what`, as findings name what is in a database; `what` is already rendered.
pub fn in_database(db: &str, what: &str) -> String {
    format!("{}: {what}", quote::name(db))
}

/// What makes a table's UPDATEs and DELETEs publishable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    Usable,
    Full,
    Missing,
}

/// `relreplident`: `d` uses the primary key, `i` the index marked `indisreplident`
/// (PostgreSQL checked it is unique, not partial, on NOT NULL columns), `f` the whole row,
/// `n` nothing. A dropped identity index leaves `i` with no index: nothing.
fn identity(relreplident: &str, has_primary_key: bool, has_identity_index: bool) -> Identity {
    match relreplident {
        "d" if has_primary_key => Identity::Usable,
        "i" if has_identity_index => Identity::Usable,
        "f" => Identity::Full,
        _ => Identity::Missing,
    }
}

/// Tables (partition leaves included; a partitioned root has no storage) without a usable
/// replica identity, with `REPLICA IDENTITY FULL`, and unlogged ones.
pub async fn tables(tx: &Transaction<'_>, db: &str) -> Result<Vec<Finding>, Error> {
    let rows = tx
        .query(
            concat!(
                "SELECT n.nspname::text, c.relname::text, c.relpersistence::text, c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u') AND ",
                user_schemas!(),
                " ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("listing tables of {} on blue", quote::name(db)), e))?;
    let (mut missing, mut full, mut unlogged) = (Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let name = object(db, row.get(0), row.get(1));
        if row.get::<_, &str>(2) == "u" {
            unlogged.push(name);
            continue;
        }
        match identity(row.get(3), row.get(4), row.get(5)) {
            Identity::Usable => {}
            Identity::Full => full.push(name),
            Identity::Missing => missing.push(name),
        }
    }
    let mut findings = Vec::new();
    if !missing.is_empty() {
        findings.push(Finding::new(
            Code::NoReplicaIdentity,
            missing,
            "These tables have no primary key and no replica identity index: once published, every UPDATE and DELETE on them fails on blue.",
            "ALTER TABLE … ADD PRIMARY KEY (…), or ALTER TABLE … REPLICA IDENTITY USING INDEX <a unique, non-partial index on NOT NULL columns>; REPLICA IDENTITY FULL works too but is slow for large tables.",
        ));
    }
    if !full.is_empty() {
        findings.push(Finding::new(
            Code::ReplicaIdentityFull,
            full,
            "These tables use REPLICA IDENTITY FULL: every UPDATE and DELETE writes the whole old row to WAL and green must find it by comparing rows.",
            "Prefer a primary key or REPLICA IDENTITY USING INDEX on large or busy tables.",
        ));
    }
    if !unlogged.is_empty() {
        findings.push(Finding::new(
            Code::UnloggedTable,
            unlogged,
            "Unlogged tables cannot be published: their rows would never reach green.",
            "ALTER TABLE … SET LOGGED (rewrites the table), or drop them if their contents are disposable and recreate them on green.",
        ));
    }
    Ok(findings)
}

/// Large objects are not carried by logical replication.
pub async fn large_objects(tx: &Transaction<'_>, db: &str) -> Result<Option<Finding>, Error> {
    let row = tx
        .query_one(
            "SELECT count(*), coalesce(array_agg(oid ORDER BY oid) FILTER (WHERE rank <= 10), '{}')
               FROM (SELECT oid, row_number() OVER (ORDER BY oid) AS rank FROM pg_largeobject_metadata) lo",
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("counting large objects of {} on blue", quote::name(db)), e))?;
    let count: i64 = row.get(0);
    if count == 0 {
        return Ok(None);
    }
    let first: Vec<u32> = row.get(1);
    let mut objects: Vec<String> = first
        .iter()
        .map(|oid| in_database(db, &format!("large object {oid}")))
        .collect();
    if count > 10 {
        objects.push(in_database(
            db,
            &format!("… and {} more large objects", count - 10),
        ));
    }
    Ok(Some(Finding::new(
        Code::LargeObjects,
        objects,
        format!("{} holds {count} large object(s) (pg_largeobject_metadata): logical replication does not carry them, so green would lose them.", quote::name(db)),
        "Move them into bytea columns (or object storage) and lo_unlink them, or copy them to green yourself during the switchover window.",
    )))
}

/// Materialized views are not replicated; copy-schema creates them empty on green.
pub async fn materialized_views(tx: &Transaction<'_>, db: &str) -> Result<Option<Finding>, Error> {
    let rows = tx
        .query(
            concat!(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'm' AND ",
                user_schemas!(),
                " ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("listing materialized views of {} on blue", quote::name(db)), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(Finding::new(
        Code::MaterializedView,
        rows.iter().map(|r| object(db, r.get(0), r.get(1))).collect(),
        "Materialized views are not replicated: green's are created without data.",
        "REFRESH MATERIALIZED VIEW each of them on green right after the switchover (or just before it, if a slightly stale copy is acceptable).",
    )))
}

/// Slots on blue named like this cell's subscriptions before prepare made them: left by an
/// earlier prepare that was neither switched nor abandoned (or is being retried), each
/// retaining blue's WAL for a green that may be gone.
pub async fn leftover_slots(
    tx: &Transaction<'_>,
    db: &str,
    names: &[String],
) -> Result<Option<Finding>, Error> {
    let rows = tx
        .query(
            "SELECT slot_name::text,
                    coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::bigint
               FROM pg_catalog.pg_replication_slots
              WHERE slot_name::text = ANY($1) AND database = pg_catalog.current_database()
              ORDER BY 1",
            &[&names],
        )
        .await
        .map_err(|e| Error::query(format!("looking for earlier slots in {} on blue", quote::name(db)), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let retained: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} retains {} bytes of WAL",
                quote::name(r.get(0)),
                r.get::<_, i64>(1)
            )
        })
        .collect();
    Ok(Some(Finding::new(
        Code::LeftoverSlot,
        rows.iter().map(|r| in_database(db, &quote::name(r.get(0)))).collect(),
        format!(
            "Blue already has this cell's replication slots before prepare ({}): an earlier prepare left them, and they keep blue's WAL until they are dropped.",
            retained.join(", ")
        ),
        "If that earlier prepare is being retried, go on: start-replication reuses them. If it will not be switched, run the abandon-prepare state machine first.",
    )))
}

/// One extension installed on blue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub version: String,
}

pub async fn installed_extensions(tx: &Transaction<'_>, db: &str) -> Result<Vec<Installed>, Error> {
    let rows = tx
        .query(
            "SELECT extname::text, extversion FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("listing extensions of {} on blue", quote::name(db)),
                e,
            )
        })?;
    Ok(rows
        .iter()
        .map(|r| Installed {
            name: r.get(0),
            version: r.get(1),
        })
        .collect())
}

/// What green's installation offers (the same in every database of the cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offered {
    /// Extension → its default version.
    defaults: HashMap<String, String>,
    /// Extension → every version green has scripts for.
    versions: HashMap<String, BTreeSet<String>>,
    /// (extension, from version) pairs from which green can update to its default.
    updatable: HashSet<(String, String)>,
}

impl Offered {
    /// Reads green's offer for the extensions blue has installed; update paths are
    /// looked up only for versions that differ from green's default.
    pub async fn read(tx: &Transaction<'_>, installed: &[Installed]) -> Result<Self, Error> {
        let context = |e| Error::query("listing extensions available on green", e);
        let mut offered = Self::default();
        for row in tx
            .query(
                "SELECT name::text, default_version FROM pg_available_extensions",
                &[],
            )
            .await
            .map_err(context)?
        {
            offered.defaults.insert(row.get(0), row.get(1));
        }
        for row in tx
            .query(
                "SELECT name::text, version FROM pg_available_extension_versions",
                &[],
            )
            .await
            .map_err(context)?
        {
            offered
                .versions
                .entry(row.get(0))
                .or_default()
                .insert(row.get(1));
        }
        for ext in installed {
            let Some(default) = offered.defaults.get(&ext.name) else {
                continue;
            };
            let known = offered
                .versions
                .get(&ext.name)
                .is_some_and(|v| v.contains(&ext.version));
            if *default == ext.version || !known {
                continue;
            }
            let reachable: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension_update_paths($1)
                                     WHERE source = $2 AND target = $3 AND path IS NOT NULL)",
                    &[&ext.name, &ext.version, default],
                )
                .await
                .map_err(|e| {
                    Error::query(
                        format!(
                            "reading green's update paths of extension {}",
                            quote::name(&ext.name)
                        ),
                        e,
                    )
                })?
                .get(0);
            if reachable {
                offered
                    .updatable
                    .insert((ext.name.clone(), ext.version.clone()));
            }
        }
        Ok(offered)
    }
}

/// Decides what an extension installed on blue means for green.
///
/// pg_dump writes `CREATE EXTENSION … ` without a version, so copy-schema always creates
/// green's *default* version. Hence:
/// - not offered by green at all: blocker;
/// - blue's version is green's default: fine;
/// - green knows blue's version and can update from it to its default (green's is
///   newer): a warning — green runs the newer version; update blue first to compare
///   like with like;
/// - otherwise (green does not know blue's version, or its default is older): blocker —
///   green would run a version the data and schema were not made with.
pub fn extension(db: &str, ext: &Installed, offered: &Offered) -> Option<Finding> {
    let name = quote::name(&ext.name);
    let object = vec![in_database(
        db,
        &format!("extension {name} {}", ext.version),
    )];
    let Some(default) = offered.defaults.get(&ext.name) else {
        return Some(Finding::new(
            Code::ExtensionUnavailable,
            object,
            format!(
                "Extension {name} is installed on blue but green's installation does not offer it."
            ),
            format!(
                "DROP EXTENSION {name} on blue if nothing uses it, or make it available on green (a supported version of it for green's major)."
            ),
        ));
    };
    if *default == ext.version {
        return None;
    }
    if offered
        .updatable
        .contains(&(ext.name.clone(), ext.version.clone()))
    {
        return Some(Finding::new(
            Code::ExtensionVersionDiffers,
            object,
            format!(
                "Blue runs {name} {}; copy-schema will create green's default {default}.",
                ext.version
            ),
            format!(
                "ALTER EXTENSION {name} UPDATE on blue first if blue offers {default}, so both run the same version; otherwise expect its objects to differ in copy-schema's comparison."
            ),
        ));
    }
    let known: Vec<String> = offered
        .versions
        .get(&ext.name)
        .map(|v| v.iter().cloned().collect())
        .unwrap_or_default();
    Some(Finding::new(
        Code::ExtensionVersionUnavailable,
        object,
        format!(
            "Blue runs {name} {}, which green cannot provide or update from (green offers {}; default {default}).",
            ext.version,
            known.join(", ")
        ),
        format!(
            "ALTER EXTENSION {name} UPDATE TO a version green offers on blue first, or install version {} on green.",
            ext.version
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_rules() {
        assert_eq!(identity("d", true, false), Identity::Usable);
        assert_eq!(identity("d", false, false), Identity::Missing);
        assert_eq!(identity("i", false, true), Identity::Usable);
        assert_eq!(identity("i", true, false), Identity::Missing);
        assert_eq!(identity("f", false, false), Identity::Full);
        assert_eq!(identity("n", true, true), Identity::Missing);
    }

    fn offered() -> Offered {
        let mut offered = Offered::default();
        for (name, default, versions) in [
            ("pgcrypto", "1.3", &["1.2", "1.3"][..]),
            ("hstore", "1.8", &["1.7", "1.8"][..]),
            ("odd", "1.0", &["1.0", "2.0"][..]),
        ] {
            offered.defaults.insert(name.to_owned(), default.to_owned());
            offered.versions.insert(
                name.to_owned(),
                versions.iter().map(|v| (*v).to_owned()).collect(),
            );
        }
        offered
            .updatable
            .insert(("hstore".to_owned(), "1.7".to_owned()));
        offered
    }

    fn ext(name: &str, version: &str) -> Installed {
        Installed {
            name: name.to_owned(),
            version: version.to_owned(),
        }
    }

    #[test]
    fn extension_decisions() {
        let offered = offered();
        assert_eq!(extension("app", &ext("pgcrypto", "1.3"), &offered), None);
        let code = |e: Installed| extension("app", &e, &offered).map(|f| f.code);
        assert_eq!(
            code(ext("adminpack", "2.1")),
            Some(Code::ExtensionUnavailable)
        );
        assert_eq!(
            code(ext("hstore", "1.7")),
            Some(Code::ExtensionVersionDiffers)
        );
        // Known to green, but green's default is not reachable from it: older default.
        assert_eq!(
            code(ext("odd", "2.0")),
            Some(Code::ExtensionVersionUnavailable)
        );
        // Unknown to green.
        let finding = extension("app", &ext("pgcrypto", "1.4"), &offered).expect("blocker");
        assert_eq!(finding.code, Code::ExtensionVersionUnavailable);
        assert_eq!(finding.objects, ["app: extension pgcrypto 1.4"]);
        assert!(
            finding.detail.contains("green offers 1.2, 1.3"),
            "{}",
            finding.detail
        );
    }
}
