//! `restore-writes`: puts back, exactly, the ACLs revoke-writes saved on blue.
//!
//! The only input is `switchyard.saved_acls` on blue. For each saved relation whose ACL
//! differs from the saved text, every current entry is revoked (each from its own grantor,
//! latest first) and every saved entry is granted again in its saved order, by its own
//! grantor, with GRANT OPTION where the saved entry has `*`: the ACL array is rebuilt item
//! by item, so its text comes out byte-identical. A saved NULL (default privileges) cannot
//! be written back through GRANT: it comes back as the explicit default (`owner=…/owner`),
//! which grants exactly the same; that is accepted as restored.
//!
//! All of a database's grants are one transaction that ends with a check of every saved
//! relation and records its id in `switchyard.replication_state` (so check-replication
//! does not take them for user DDL). Saved rows are kept as evidence, marked `restored_at`.
//! Relations saved but since dropped are reported, not restored.
//!
//! Dry run ([`plan`]): the same reads in a read-only transaction: each ACL it would
//! rebuild (now → saved) and the saved rows it would mark restored.

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::saved_acls::{self, TABLE, UNRESTORED};
use switchyard_operation::{guard, Deps, Error, Plan, Side};
use switchyard_postgres::quote::{self, ident, qualified};
use tokio_postgres::Transaction;

/// ```json
/// {"cell": { …the cell document… }}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock, or past a switch: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub databases: Vec<DatabaseRestore>,
}

/// One database of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseRestore {
    pub name: String,
    /// Relations whose ACL this run rebuilt.
    pub restored: usize,
    /// Saved relations whose ACL already was the saved one.
    pub unchanged: usize,
    /// Saved relations (`schema.name`, quoted where SQL needs it) that no longer exist.
    pub missing: Vec<String>,
}

/// The ACL in force, with a NULL spelled as the default it stands for.
const EFFECTIVE: &str = "COALESCE(c.relacl, pg_catalog.acldefault(
    CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))";

/// The saved ACL of relation `c`, a saved NULL spelled as the default it stood for.
fn saved_acl() -> String {
    format!(
        "COALESCE((SELECT s.relacl::pg_catalog.aclitem[] FROM {TABLE} s
                       JOIN pg_catalog.pg_namespace n ON n.nspname = s.schema
                      WHERE n.oid = c.relnamespace AND s.name = c.relname),
                     pg_catalog.acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))"
    )
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Abort).await?;
    let mut databases = Vec::with_capacity(input.cell.databases.len());
    for db in &input.cell.databases {
        // Boxed: keeps the handler's future small (nested connection and query futures).
        databases.push(Box::pin(restore_database(&input.cell, deps, db)).await?);
    }
    Ok(Output { databases })
}

/// What [`run`] would do now in each database; empty once every saved ACL is back and
/// every saved row is marked restored.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Abort).await?;
    let mut plan = Plan::new();
    for db in &input.cell.databases {
        Box::pin(plan_database(&input.cell, deps, db, &mut plan)).await?;
    }
    Ok(plan)
}

#[tracing::instrument(skip_all, fields(database = %db))]
async fn plan_database(
    cell: &CellDocument,
    deps: &Deps,
    db: &str,
    plan: &mut Plan,
) -> Result<(), Error> {
    let mut blue = deps.connect(cell, Side::Blue, db).await?;
    if !saved_acls::exists(&blue).await? {
        return Ok(());
    }
    let db = quote::name(db);
    // Read-only: a dry run cannot write even by mistake.
    let tx = blue
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| Error::query("BEGIN READ ONLY (restore writes, dry run)", e))?;
    let mut rebuilt = 0;
    for s in saved(&tx).await?.into_iter().flatten() {
        if !s.matches {
            rebuilt += 1;
            plan.would(format!(
                "in database {db}: rebuild the ACL of {} {} → {} (every entry revoked, each saved one granted again in order by its grantor)",
                s.shown, s.current, s.wanted
            ));
        }
    }
    let unmarked = saved_acls::unrestored(&tx).await?;
    if unmarked > 0 {
        plan.would(format!(
            "in database {db}: mark {unmarked} rows of {TABLE} restored"
        ));
    }
    if rebuilt > 0 && guard::is_installed(&tx).await? {
        plan.would(format!(
            "in database {db}: in the same transaction, record its id in {} (switchyard's own DDL)",
            guard::OWN_TRANSACTIONS
        ));
    }
    Ok(())
}

/// One saved relation as it stands now.
struct Saved {
    oid: u32,
    /// Quoted for SQL.
    relation: String,
    /// As messages name it.
    shown: String,
    sequence: bool,
    matches: bool,
    /// The ACL in force, a NULL spelled as its default.
    current: String,
    /// The saved ACL, a saved NULL spelled as its default.
    wanted: String,
}

async fn restore_database(
    cell: &CellDocument,
    deps: &Deps,
    db: &str,
) -> Result<DatabaseRestore, Error> {
    let mut blue = deps.connect(cell, Side::Blue, db).await?;
    restore_on(&mut blue, db).await
}

/// Restores database `db`'s saved ACLs through `blue`, a connection to the cluster that
/// saved them: blue on the abort path, or the old blue a switch-back returns to
/// (`resume-pgbouncer`, after its point of no return).
#[tracing::instrument(skip_all, fields(database = %db))]
pub async fn restore_on(
    blue: &mut tokio_postgres::Client,
    db: &str,
) -> Result<DatabaseRestore, Error> {
    let mut result = DatabaseRestore {
        name: db.to_owned(),
        restored: 0,
        unchanged: 0,
        missing: Vec::new(),
    };
    if !saved_acls::exists(&*blue).await? {
        // revoke-writes never committed here, so no ACL was changed.
        tracing::warn!("no saved ACLs: revoke-writes did not run in this database");
        return Ok(result);
    }

    let tx = blue
        .transaction()
        .await
        .map_err(|e| Error::query("BEGIN (restore writes)", e))?;
    for saved in saved(&tx).await? {
        match saved {
            Err(relation) => result.missing.push(relation),
            Ok(s) if s.matches => result.unchanged += 1,
            Ok(s) => {
                rebuild(&tx, &s).await?;
                result.restored += 1;
            }
        }
    }
    let differences: Vec<String> = saved(&tx)
        .await?
        .into_iter()
        .flatten()
        .filter(|s| !s.matches)
        .map(|s| s.shown)
        .collect();
    if !differences.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "ACLs in database {} still differ from {TABLE} after regranting (nothing was changed): {}; compare relacl with the saved text and restore them by hand",
                quote::name(db),
                differences.join(", ")
            ),
        ));
    }
    let marked = tx
        .execute(
            &format!("UPDATE {TABLE} SET restored_at = pg_catalog.now() WHERE {UNRESTORED}"),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("marking {TABLE} restored"), e))?;
    if result.restored > 0 {
        guard::vouch(&tx, "restore-writes").await?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::query("COMMIT (restore writes)", e))?;
    if !result.missing.is_empty() {
        tracing::warn!(relations = %result.missing.join(", "), "saved relations no longer exist");
    }
    tracing::info!(
        restored = result.restored,
        unchanged = result.unchanged,
        marked,
        "acls restored"
    );
    Ok(result)
}

/// Every saved row: the relation now (Err: its name for messages, when it no longer exists).
async fn saved(tx: &Transaction<'_>) -> Result<Vec<Result<Saved, String>>, Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT s.schema, s.name, c.oid, c.relkind = 'S', {EFFECTIVE}::text,
                        COALESCE(s.relacl::pg_catalog.aclitem[],
                            pg_catalog.acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))::text
                   FROM {TABLE} s
                   LEFT JOIN (pg_catalog.pg_class c
                              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace)
                     ON n.nspname = s.schema AND c.relname = s.name
                  ORDER BY s.schema, s.name"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("reading {TABLE}"), e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let shown = quote::qualified_name(r.get(0), r.get(1));
            match r.get::<_, Option<u32>>(2) {
                None => Err(shown),
                Some(oid) => {
                    let (current, wanted): (String, String) = (r.get(4), r.get(5));
                    Ok(Saved {
                        oid,
                        relation: qualified(r.get(0), r.get(1)),
                        shown,
                        sequence: r.get(3),
                        matches: current == wanted,
                        current,
                        wanted,
                    })
                }
            }
        })
        .collect())
}

/// One ACL entry: what `grantor` granted `grantee` (None: PUBLIC).
struct Entry {
    grantor: String,
    by_owner: bool,
    grantee: Option<String>,
    privileges: Vec<String>,
    grantable: Vec<String>,
}

/// The entries of `acl` (an expression over `c`, the relation `$1`), in array order.
async fn entries(tx: &Transaction<'_>, oid: u32, acl: &str) -> Result<Vec<Entry>, Error> {
    let rows = tx
        .query(
            &format!(
                "SELECT g.rolname::text, a.grantor = c.relowner, e.rolname::text,
                        pg_catalog.array_agg(a.privilege_type ORDER BY a.ord)
                            FILTER (WHERE NOT a.is_grantable),
                        pg_catalog.array_agg(a.privilege_type ORDER BY a.ord)
                            FILTER (WHERE a.is_grantable)
                   FROM pg_catalog.pg_class c
                  CROSS JOIN LATERAL pg_catalog.aclexplode({acl})
                        WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, ord)
                   JOIN pg_catalog.pg_roles g ON g.oid = a.grantor
                   LEFT JOIN pg_catalog.pg_roles e ON e.oid = a.grantee
                  WHERE c.oid = $1
                  GROUP BY c.relowner, a.grantor, g.rolname, a.grantee, e.rolname
                  ORDER BY pg_catalog.min(a.ord)"
            ),
            &[&oid],
        )
        .await
        .map_err(|e| Error::query("reading ACL entries", e))?;
    Ok(rows
        .iter()
        .map(|r| Entry {
            grantor: r.get(0),
            by_owner: r.get(1),
            grantee: r.get(2),
            privileges: r.get::<_, Option<Vec<String>>>(3).unwrap_or_default(),
            grantable: r.get::<_, Option<Vec<String>>>(4).unwrap_or_default(),
        })
        .collect())
}

async fn rebuild(tx: &Transaction<'_>, saved: &Saved) -> Result<(), Error> {
    let kind = if saved.sequence { "SEQUENCE" } else { "TABLE" };
    // Latest first: an entry goes before the one its grantor's grant option came from, so
    // each grantor still holds that option when its own entry is revoked.
    let mut current = entries(tx, saved.oid, EFFECTIVE).await?;
    current.reverse();
    let mut sql = String::new();
    for e in &current {
        as_grantor(
            &mut sql,
            e,
            &format!(
                "REVOKE ALL ON {kind} {} FROM {} CASCADE;",
                saved.relation,
                grantee(e)
            ),
        );
    }
    // The ACL is now empty (not NULL), so each GRANT appends its entry: saved order is kept.
    for e in entries(tx, saved.oid, &saved_acl()).await? {
        if !e.privileges.is_empty() {
            let statement = format!(
                "GRANT {} ON {kind} {} TO {};",
                keywords(&e.privileges)?,
                saved.relation,
                grantee(&e)
            );
            as_grantor(&mut sql, &e, &statement);
        }
        if !e.grantable.is_empty() {
            let statement = format!(
                "GRANT {} ON {kind} {} TO {} WITH GRANT OPTION;",
                keywords(&e.grantable)?,
                saved.relation,
                grantee(&e)
            );
            as_grantor(&mut sql, &e, &statement);
        }
    }
    tx.batch_execute(&sql)
        .await
        .map_err(|e| Error::query(format!("regranting the saved ACL of {}", saved.shown), e))
}

fn grantee(e: &Entry) -> String {
    e.grantee.as_deref().map_or("PUBLIC".to_owned(), ident)
}

/// A superuser's GRANT/REVOKE acts as the owner; any other grantor is taken on explicitly.
fn as_grantor(sql: &mut String, e: &Entry, statement: &str) {
    if e.by_owner {
        sql.push_str(statement);
    } else {
        sql.push_str(&format!(
            "SET LOCAL ROLE {}; {statement} RESET ROLE;",
            ident(&e.grantor)
        ));
    }
}

/// `aclexplode` names privileges with SQL keywords; anything else is refused, not pasted.
fn keywords(privileges: &[String]) -> Result<String, Error> {
    const KNOWN: [&str; 9] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
        "MAINTAIN",
        "USAGE",
    ];
    privileges
        .iter()
        .map(|p| {
            KNOWN.into_iter().find(|k| k == p).ok_or_else(|| {
                Error::stop(
                    ErrorName::DatabaseError,
                    format!("unexpected privilege {p:?} from aclexplode; restore this ACL by hand"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|k| k.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }

    #[test]
    fn only_privilege_keywords_are_spelled() {
        let ok = keywords(&["SELECT".to_owned(), "MAINTAIN".to_owned()]).ok();
        assert_eq!(ok.as_deref(), Some("SELECT, MAINTAIN"));
        assert!(keywords(&["ALL; DROP TABLE x".to_owned()]).is_err());
    }
}
