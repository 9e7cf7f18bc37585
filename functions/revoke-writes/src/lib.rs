//! `revoke-writes`: the fence that guarantees no write lands on blue during the switchover.
//!
//! For each database: every table-like relation's and sequence's `relacl` in the user
//! schemas is saved on blue in `switchyard.saved_acls` (the first save wins, so a retry
//! never overwrites the original ACLs with already-revoked ones; a save that restore-writes
//! has put back is replaced). Then every write privilege (tables, views, matviews, foreign
//! tables: INSERT, UPDATE, DELETE, TRUNCATE; sequences: USAGE, UPDATE) held by an
//! application role, by any role an application role is a member of, or by PUBLIC is
//! revoked — owners included — each ACL entry from its own grantor. Saving and revoking
//! are one transaction, which also records its id in `switchyard.replication_state` so
//! check-replication does not take these REVOKEs for user DDL. Finally every backend of
//! those roles (walsenders excepted) is terminated.
//!
//! Application roles: the `username` of every parameter under
//! `credentials.application_roles_path`. Only the privileges that grant writes are touched,
//! so a relation nobody could write through keeps its ACL (even a NULL one) untouched.
//!
//! Dry run ([`plan`]): the same role and catalog reads in a read-only transaction, then
//! per database the ACLs it would save, each REVOKE, and the backends it would terminate.
//! A database with nothing to save or revoke gets no transaction at all (no DDL to vouch for).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::saved_acls::{self, TABLE, UNRESTORED};
use switchyard_operation::PauseDeadline;
use switchyard_operation::{guard, Deps, Error, Plan, Side};
use switchyard_postgres::quote::{self, ident, qualified};
use tokio_postgres::{Client, GenericClient, Transaction};

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
    /// Act without holding the lock: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
    /// The end of the pause budget (`pause-pgbouncer`'s): every wait stops at it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub databases: Vec<DatabaseFence>,
}

/// One database of the cell.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseFence {
    pub name: String,
    /// Relations whose ACL this run saved (0 on a retry: the first save is kept).
    pub saved: usize,
    /// Roles that hold no write privilege any more, in name order: the application roles
    /// that exist on blue and every role they are members of.
    pub revoked_roles: Vec<String>,
    /// Backends of those roles this run terminated.
    pub terminated: usize,
}

/// Relation kinds `ON ALL TABLES` / `ON ALL SEQUENCES` cover.
const RELATIONS: &str = "c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    AND n.nspname NOT IN ('switchyard', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'";

/// The relations [`RELATIONS`] filters.
const RELATIONS_FROM: &str =
    "pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

/// `FROM … WHERE …` of the relations whose ACL `save` writes: not saved yet, or saved and
/// since put back by restore-writes (the ACL in force is the original again).
fn unsaved() -> String {
    format!(
        "FROM {RELATIONS_FROM}
         WHERE {RELATIONS}
           AND NOT EXISTS (SELECT FROM {TABLE} s
                            WHERE s.schema = n.nspname AND s.name = c.relname
                              AND s.{UNRESTORED})"
    )
}

/// `FROM … WHERE …` of the backends `terminate` ends: `$1` the database, `$2` the roles.
const BACKENDS: &str = "FROM pg_catalog.pg_stat_activity
              WHERE datname = $1 AND usename = ANY($2) AND backend_type <> 'walsender'
                AND pid <> pg_catalog.pg_backend_pid()";

/// How long `pg_terminate_backend` waits for each backend to exit.
const TERMINATE_WAIT_MS: i64 = 5000;

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Forward).await?;
    let roles = application_roles(&input.cell, deps).await?;
    let mut databases = Vec::with_capacity(input.cell.databases.len());
    for db in &input.cell.databases {
        // Boxed: keeps the handler's future small (nested connection and query futures).
        databases.push(Box::pin(fence_database(&input.cell, deps, db, &roles)).await?);
    }
    Ok(Output { databases })
}

/// What [`run`] would do now in each database; empty once every write is revoked, every
/// ACL saved and no application backend is left.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Forward).await?;
    let roles = application_roles(&input.cell, deps).await?;
    let mut plan = Plan::new();
    for db in &input.cell.databases {
        Box::pin(plan_database(&input.cell, deps, db, &roles, &mut plan)).await?;
    }
    Ok(plan)
}

#[tracing::instrument(skip_all, fields(database = %db))]
async fn plan_database(
    cell: &CellDocument,
    deps: &Deps,
    db: &str,
    roles: &[String],
    plan: &mut Plan,
) -> Result<(), Error> {
    let mut blue = deps.connect(cell, Side::Blue, db).await?;
    let fenced = fenced_roles(&blue, db, roles).await?;
    let shown_db = quote::name(db);
    // Read-only: a dry run cannot write even by mistake.
    let tx = blue
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| Error::query("BEGIN READ ONLY (revoke writes, dry run)", e))?;
    let pending = pending(&tx, &fenced).await?;
    if !pending.is_empty() {
        if pending.to_save > 0 {
            let created = if pending.table_exists {
                ""
            } else {
                " (schema switchyard and that table created first)"
            };
            plan.would(format!(
                "in database {shown_db}: save the ACLs of {} relations into {TABLE}{created}",
                pending.to_save
            ));
        }
        for h in &pending.holders {
            let grantor = if h.by_owner {
                String::new()
            } else {
                format!(" (as its grantor {})", quote::name(&h.grantor))
            };
            plan.would(format!(
                "in database {shown_db}: {}{grantor}",
                revoke_statement(h)?
            ));
        }
        if pending.guarded {
            plan.would(format!(
                "in database {shown_db}: in the same transaction, record its id in {} (switchyard's own DDL)",
                guard::OWN_TRANSACTIONS
            ));
        }
    }
    let backends: i64 = tx
        .query_one(
            &format!("SELECT pg_catalog.count(*) {BACKENDS}"),
            &[&db, &fenced],
        )
        .await
        .map_err(|e| Error::query("counting the application's backends", e))?
        .get(0);
    if !pending.is_empty() || backends > 0 {
        plan.would(format!(
            "in database {shown_db}: then terminate every backend of {} (walsenders excepted; {backends} now)",
            names(&fenced)
        ));
    }
    Ok(())
}

/// What is left to do in one database, as the fence's transaction would find it.
struct Pending {
    /// `switchyard.saved_acls` exists.
    table_exists: bool,
    /// `switchyard.replication_state` exists: the transaction vouches for itself there.
    guarded: bool,
    /// Relations whose ACL would be saved.
    to_save: i64,
    /// Entries that grant writes.
    holders: Vec<Holder>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.to_save == 0 && self.holders.is_empty()
    }
}

async fn pending(client: &impl GenericClient, fenced: &[String]) -> Result<Pending, Error> {
    let table_exists = saved_acls::exists(client).await?;
    let guarded = guard::is_installed(client).await?;
    let unsaved = if table_exists {
        unsaved()
    } else {
        format!("FROM {RELATIONS_FROM} WHERE {RELATIONS}")
    };
    let to_save: i64 = client
        .query_one(&format!("SELECT pg_catalog.count(*) {unsaved}"), &[])
        .await
        .map_err(|e| Error::query("counting the ACLs to save", e))?
        .get(0);
    Ok(Pending {
        table_exists,
        guarded,
        to_save,
        holders: write_holders(client, fenced).await?,
    })
}

/// The usernames under `application_roles_path`. A parameter that cannot be read stops the
/// run: a role left out would be a hole in the fence. Values hold passwords: never logged.
async fn application_roles(cell: &CellDocument, deps: &Deps) -> Result<Vec<String>, Error> {
    #[derive(Deserialize)]
    struct RoleDocument {
        username: String,
    }
    let path = &cell.credentials.application_roles_path;
    let mut pages = deps
        .aws
        .ssm
        .get_parameters_by_path()
        .path(path)
        .recursive(true)
        .with_decryption(true)
        .into_paginator()
        .send();
    let mut names = BTreeSet::new();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| Error::aws(&format!("reading SSM parameters under {path}"), &e))?;
        for p in page.parameters() {
            let parameter = p.name().unwrap_or_default();
            let doc: RoleDocument = serde_json::from_str(p.value().unwrap_or_default())
                .map_err(|_| {
                    Error::stop(
                        ErrorName::SecretUnavailable,
                        format!("{parameter} is not a role document with a \"username\"; fix it and rerun revoke-writes"),
                    )
                })?;
            names.insert(doc.username);
        }
    }
    if names.is_empty() {
        return Err(Error::stop(
            ErrorName::SecretUnavailable,
            format!("no role parameters under {path}: without application roles there is nothing to fence; fix credentials.application_roles_path"),
        ));
    }
    Ok(names.into_iter().collect())
}

#[tracing::instrument(skip_all, fields(database = %db))]
async fn fence_database(
    cell: &CellDocument,
    deps: &Deps,
    db: &str,
    roles: &[String],
) -> Result<DatabaseFence, Error> {
    let mut blue = deps.connect(cell, Side::Blue, db).await?;
    let fenced = fenced_roles(&blue, db, roles).await?;
    if pending(&blue, &fenced).await?.is_empty() {
        // A retry after the commit: nothing to save or revoke, so no DDL to vouch for.
        let terminated = terminate(&blue, db, &fenced).await?;
        return Ok(DatabaseFence {
            name: db.to_owned(),
            saved: 0,
            revoked_roles: fenced,
            terminated,
        });
    }

    let tx = blue
        .transaction()
        .await
        .map_err(|e| Error::query("BEGIN (revoke writes)", e))?;
    let saved = save(&tx).await?;
    let revoked = revoke(&tx, &fenced).await?;
    let left = write_holders(&tx, &fenced).await?;
    if !left.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "write privileges in database {} could not be revoked (nothing was changed): {}; revoke them by hand or fix their grantors, then rerun",
                quote::name(db),
                left.iter().map(Holder::describe).collect::<Vec<_>>().join("; ")
            ),
        ));
    }
    guard::vouch(&tx, "revoke-writes").await?;
    tx.commit()
        .await
        .map_err(|e| Error::query("COMMIT (revoke writes)", e))?;
    tracing::info!(saved, revoked, "write privileges revoked");

    // Only after the commit: a session ended earlier could reconnect and write before it.
    let terminated = terminate(&blue, db, &fenced).await?;
    Ok(DatabaseFence {
        name: db.to_owned(),
        saved,
        revoked_roles: fenced,
        terminated,
    })
}

/// The application roles that exist on blue plus every role they are members of (their
/// privileges are the application's too). Stops when a role cannot be fenced by ACLs.
async fn fenced_roles(blue: &Client, db: &str, roles: &[String]) -> Result<Vec<String>, Error> {
    let rows = blue
        .query(
            "SELECT r.rolname::text, r.rolsuper OR r.rolname = 'pg_write_all_data'
               FROM pg_catalog.pg_roles r
              WHERE EXISTS (SELECT FROM pg_catalog.pg_roles a
                             WHERE a.rolname = ANY($1)
                               AND pg_catalog.pg_has_role(a.oid, r.oid, 'MEMBER'))
              ORDER BY 1",
            &[&roles],
        )
        .await
        .map_err(|e| Error::query("reading the application roles' memberships", e))?;
    let unfenceable: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    if !unfenceable.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "application roles in database {} reach {} (superuser or pg_write_all_data), which no REVOKE can fence; remove those memberships, then rerun",
                quote::name(db),
                names(&unfenceable)
            ),
        ));
    }
    let fenced: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&String> = roles.iter().filter(|r| !fenced.contains(r)).collect();
    if !missing.is_empty() {
        let missing: Vec<String> = missing.into_iter().cloned().collect();
        tracing::warn!(roles = %names(&missing), "application roles absent on blue: nothing to revoke");
    }
    Ok(fenced)
}

async fn save(tx: &Transaction<'_>) -> Result<usize, Error> {
    tx.batch_execute(&saved_acls::create_sql())
        .await
        .map_err(|e| Error::query(format!("creating {TABLE}"), e))?;
    // A row restore-writes has put back is replaced: the ACL now in force is the original.
    let saved = tx
        .execute(
            &format!(
                "INSERT INTO {TABLE} AS s (database, relid, schema, name, relacl, saved_at)
                 SELECT pg_catalog.current_database(), c.oid, n.nspname, c.relname, c.relacl::text,
                        pg_catalog.now()
                 {}
                 ON CONFLICT (schema, name) DO UPDATE
                    SET relid = excluded.relid, relacl = excluded.relacl,
                        saved_at = excluded.saved_at, restored_at = NULL",
                unsaved()
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("saving ACLs into {TABLE}"), e))?;
    Ok(usize::try_from(saved).unwrap_or(usize::MAX))
}

/// One ACL entry that grants writes: `privileges` on `relation` to `grantee` (None:
/// PUBLIC) from `grantor`.
struct Holder {
    /// Quoted for SQL.
    relation: String,
    /// As messages name it.
    shown: String,
    sequence: bool,
    grantor: String,
    by_owner: bool,
    grantee: Option<String>,
    privileges: Vec<String>,
}

impl Holder {
    fn grantee_sql(&self) -> String {
        self.grantee.as_deref().map_or("PUBLIC".to_owned(), ident)
    }

    fn describe(&self) -> String {
        format!(
            "{} on {} to {} granted by {}",
            self.privileges.join(", "),
            self.shown,
            self.grantee
                .as_deref()
                .map_or("PUBLIC".to_owned(), quote::name),
            quote::name(&self.grantor)
        )
    }
}

/// Every ACL entry (the default one for a NULL ACL) giving a fenced role or PUBLIC a write
/// privilege; per relation, entries latest first, so an entry is revoked before the one
/// its grantor's grant option came from.
async fn write_holders(
    client: &impl GenericClient,
    fenced: &[String],
) -> Result<Vec<Holder>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, c.relkind = 'S', g.rolname::text,
                        a.grantor = c.relowner, e.rolname::text,
                        pg_catalog.array_agg(a.privilege_type ORDER BY a.ord)
                   FROM {RELATIONS_FROM}
                  CROSS JOIN LATERAL pg_catalog.aclexplode(COALESCE(c.relacl,
                        pg_catalog.acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner)))
                        WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, ord)
                   JOIN pg_catalog.pg_roles g ON g.oid = a.grantor
                   LEFT JOIN pg_catalog.pg_roles e ON e.oid = a.grantee
                  WHERE {RELATIONS}
                    AND (a.grantee = 0 OR e.rolname = ANY($1))
                    AND a.privilege_type = ANY(CASE WHEN c.relkind = 'S'
                            THEN ARRAY['USAGE', 'UPDATE']
                            ELSE ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] END)
                  GROUP BY n.nspname, c.relname, c.relkind, c.relowner, a.grantor, g.rolname,
                           a.grantee, e.rolname
                  ORDER BY n.nspname, c.relname, pg_catalog.min(a.ord) DESC"
            ),
            &[&fenced],
        )
        .await
        .map_err(|e| Error::query("reading write privileges", e))?;
    Ok(rows
        .iter()
        .map(|r| Holder {
            relation: qualified(r.get(0), r.get(1)),
            shown: quote::qualified_name(r.get(0), r.get(1)),
            sequence: r.get(2),
            grantor: r.get(3),
            by_owner: r.get(4),
            grantee: r.get(5),
            privileges: r.get(6),
        })
        .collect())
}

/// Revokes each write-granting entry from its own grantor (a superuser's REVOKE acts as the
/// owner and would miss entries another role granted); returns how many entries.
async fn revoke(tx: &Transaction<'_>, fenced: &[String]) -> Result<usize, Error> {
    let holders = write_holders(tx, fenced).await?;
    for h in &holders {
        let mut sql = format!("{};", revoke_statement(h)?);
        if !h.by_owner {
            sql = format!("SET LOCAL ROLE {}; {sql} RESET ROLE;", ident(&h.grantor));
        }
        tx.batch_execute(&sql)
            .await
            .map_err(|e| Error::query(format!("revoking {}", h.describe()), e))?;
    }
    Ok(holders.len())
}

/// Role names as messages show them, joined.
fn names(roles: &[String]) -> String {
    let shown: Vec<String> = roles.iter().map(|r| quote::name(r)).collect();
    shown.join(", ")
}

/// `REVOKE … FROM … CASCADE` of one write-granting entry, run as its grantor.
fn revoke_statement(h: &Holder) -> Result<String, Error> {
    let privileges = h
        .privileges
        .iter()
        .map(|p| privilege_keyword(p))
        .collect::<Result<Vec<_>, _>>()?
        .join(", ");
    let kind = if h.sequence { "SEQUENCE" } else { "TABLE" };
    Ok(format!(
        "REVOKE {privileges} ON {kind} {} FROM {} CASCADE",
        h.relation,
        h.grantee_sql()
    ))
}

/// `aclexplode` names privileges with SQL keywords; only the write ones reach here.
fn privilege_keyword(name: &str) -> Result<&'static str, Error> {
    ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "USAGE"]
        .into_iter()
        .find(|k| *k == name)
        .ok_or_else(|| {
            Error::stop(
                ErrorName::DatabaseError,
                format!("unexpected privilege {name:?} from aclexplode; report this"),
            )
        })
}

async fn terminate(blue: &Client, db: &str, fenced: &[String]) -> Result<usize, Error> {
    let row = blue
        .query_one(
            &format!(
                "SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid, $3)),
                        pg_catalog.count(*)
                 {BACKENDS}"
            ),
            &[&db, &fenced, &TERMINATE_WAIT_MS],
        )
        .await
        .map_err(|e| Error::query("terminating the application's backends", e))?;
    let (ended, found): (i64, i64) = (row.get(0), row.get(1));
    if ended < found {
        return Err(Error::stop(
            ErrorName::DrainTimeout,
            format!(
                "{} application backends in database {} did not exit within {TERMINATE_WAIT_MS} ms of pg_terminate_backend; writes are already revoked — rerun revoke-writes",
                found - ended,
                quote::name(db)
            ),
        ));
    }
    tracing::info!(terminated = ended, "application backends terminated");
    Ok(usize::try_from(ended).unwrap_or_default())
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
    fn only_write_privileges_are_spelled() {
        assert_eq!(privilege_keyword("TRUNCATE").ok(), Some("TRUNCATE"));
        assert!(privilege_keyword("INSERT; DROP TABLE x").is_err());
        assert!(privilege_keyword("SELECT").is_err());
    }
}
