//! Taking switchyard's objects off a server: what abandon-prepare removes from blue and
//! green before a switch, and close-rollback-window from the old blue and green after one.
//! Each looks first, so a call interrupted anywhere is finished by the next.

use switchyard_errors::ErrorName;
use switchyard_postgres::quote::{self, ident};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::Error;

/// Our schema: dropped only when nothing else is left in it.
pub const SCHEMA: &str = "switchyard";

/// The marker table `check-slot-lag` writes (on blue and green).
pub const MARKER: &str = "switchyard.switchover_marker";

/// The one boolean a catalog query about `name` answers.
async fn answer(client: &Client, sql: &str, name: &str) -> Result<bool, Error> {
    Ok(client
        .query_one(sql, &[&name])
        .await
        .map_err(|e| Error::query(format!("looking for {name}"), e))?
        .get(0))
}

/// Whether a relation named `qualified` (schema.name, ours: no quoting needed) exists.
pub async fn exists(client: &Client, qualified: &str) -> Result<bool, Error> {
    answer(
        client,
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        qualified,
    )
    .await
}

pub async fn function_exists(client: &Client, signature: &str) -> Result<bool, Error> {
    answer(
        client,
        "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL",
        signature,
    )
    .await
}

pub async fn publication_exists(blue: &Client, name: &str) -> Result<bool, Error> {
    answer(
        blue,
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = $1)",
        name,
    )
    .await
}

/// Drops our schema when it is there and empty: true when this call dropped it. A schema
/// with anything else in it stays (it is then not only ours).
pub async fn drop_schema_if_empty(client: &Client) -> Result<bool, Error> {
    let row = client
        .query_one(
            "SELECT n.oid IS NOT NULL,
                    EXISTS (SELECT FROM pg_catalog.pg_depend d
                             WHERE d.refclassid = 'pg_catalog.pg_namespace'::regclass
                               AND d.refobjid = n.oid AND d.deptype = 'n')
               FROM (SELECT 1) one
               LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = $1",
            &[&SCHEMA],
        )
        .await
        .map_err(|e| Error::query("looking at schema switchyard", e))?;
    let (present, occupied): (bool, bool) = (row.get(0), row.get(1));
    if !present {
        return Ok(false);
    }
    if occupied {
        tracing::warn!("schema switchyard holds objects that are not ours: left in place");
        return Ok(false);
    }
    let sql = format!("DROP SCHEMA IF EXISTS {}", ident(SCHEMA));
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| Error::query(&sql, e))?;
    Ok(true)
}

/// `(kind, name)` of every table, sequence and schema of the connected database on which
/// `role` holds a privilege granted to it by name.
pub async fn granted(blue: &Client, role: &str) -> Result<Vec<(&'static str, String)>, Error> {
    let rows = blue
        .query(
            "WITH r AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)
             SELECT DISTINCT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                    c.oid::regclass::text
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a, r
              WHERE a.grantee = r.oid
             UNION ALL
             SELECT DISTINCT 'SCHEMA', pg_catalog.quote_ident(n.nspname)
               FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a, r
              WHERE a.grantee = r.oid
             ORDER BY 1, 2",
            &[&role],
        )
        .await
        .map_err(|e| Error::query(format!("reading {}'s privileges", quote::name(role)), e))?;
    Ok(rows
        .iter()
        .map(|row| {
            let kind = match row.get::<_, &str>(0) {
                "SCHEMA" => "SCHEMA",
                "SEQUENCE" => "SEQUENCE",
                _ => "TABLE",
            };
            (kind, row.get(1))
        })
        .collect())
}

pub async fn role_exists(blue: &Client, role: &str) -> Result<bool, Error> {
    answer(
        blue,
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = $1)",
        role,
    )
    .await
}

/// Objects `role` owns anywhere on the cluster (every database, and shared objects).
pub async fn owned_objects(blue: &Client, role: &str) -> Result<i64, Error> {
    Ok(blue
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_shdepend d
               JOIN pg_catalog.pg_roles r ON r.oid = d.refobjid
              WHERE r.rolname = $1 AND d.refclassid = 'pg_catalog.pg_authid'::regclass
                AND d.deptype = 'o'",
            &[&role],
        )
        .await
        .map_err(|e| Error::query(format!("reading what {} owns", quote::name(role)), e))?
        .get(0))
}

/// Drops the replication role: true when this call dropped it. A privilege left in
/// a database that is not the cell's stops it, named by the server.
pub async fn drop_role(blue: &Client, role: &str, rerun: &str) -> Result<bool, Error> {
    if !role_exists(blue, role).await? {
        return Ok(false);
    }
    let sql = format!("DROP ROLE IF EXISTS {}", ident(role));
    match blue.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(%role, "replication role dropped");
            Ok(true)
        }
        Err(e) if e.code() == Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
            let detail = e
                .as_db_error()
                .and_then(|d| d.detail())
                .unwrap_or("objects elsewhere depend on it")
                .to_owned();
            Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "the replication role {} keeps privileges outside the cell's databases ({detail}): revoke them by hand, then run {rerun} again (everything else is done)",
                    quote::name(role)
                ),
            ))
        }
        Err(e) => Err(Error::query(&sql, e)),
    }
}

/// `PreconditionFailed` unless `role` may be dropped from the `cluster` `client` is on: it
/// is not the orchestrator's own login, and owns nothing there (then it is not only ours).
pub async fn refuse_to_drop(client: &Client, role: &str, cluster: &str) -> Result<(), Error> {
    let orchestrator: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| Error::query(format!("reading the orchestrator's name on {cluster}"), e))?
        .get(0);
    if orchestrator == role {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "replication.role {} is the orchestrator's own login: it is not dropped; nothing was changed",
                quote::name(role)
            ),
        ));
    }
    let owned = owned_objects(client, role).await?;
    if owned > 0 {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "the replication role {} owns {owned} objects on {cluster}: it is not only switchyard's to drop. Reassign them (REASSIGN OWNED BY) or drop the role by hand; nothing was changed",
                quote::name(role)
            ),
        ));
    }
    Ok(())
}

/// Revokes every privilege `role` holds by name in the connected database: `kind object`
/// of each.
pub async fn revoke_all(client: &Client, role: &str) -> Result<Vec<String>, Error> {
    let mut revoked = Vec::new();
    for (kind, object) in granted(client, role).await? {
        let sql = format!("REVOKE ALL ON {kind} {object} FROM {}", ident(role));
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::query(&sql, e))?;
        revoked.push(format!("{kind} {object}"));
    }
    Ok(revoked)
}
