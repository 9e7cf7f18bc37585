//! The fence's saved ACLs on blue: `revoke-writes` saves each relation's ACL there before
//! revoking, `restore-writes` puts them back from it. The table is the contract between
//! the two; its name and shape live here.

use crate::Error;

/// Where the ACLs are saved, in each of the cell's databases on blue.
pub const TABLE: &str = "switchyard.saved_acls";

/// The rows whose ACL has not been put back yet.
pub const UNRESTORED: &str = "restored_at IS NULL";

/// Creates the table (and its schema) when missing: one row per relation, the first save
/// kept until restore-writes marks it restored.
pub fn create_sql() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS switchyard;
         CREATE TABLE IF NOT EXISTS {TABLE} (
             database    text NOT NULL,
             relid       oid NOT NULL,
             schema      text NOT NULL,
             name        text NOT NULL,
             relacl      text,
             saved_at    timestamptz NOT NULL,
             restored_at timestamptz,
             PRIMARY KEY (schema, name)
         );"
    )
}

/// Whether revoke-writes ever saved anything in the connected database.
pub async fn exists(client: &impl tokio_postgres::GenericClient) -> Result<bool, Error> {
    Ok(client
        .query_one(
            &format!("SELECT pg_catalog.to_regclass('{TABLE}') IS NOT NULL"),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("looking for {TABLE}"), e))?
        .get(0))
}

/// How many relations' ACLs revoke-writes saved and restore-writes has not put back in the
/// connected database: writes are still revoked on them (0 when nothing was ever saved).
pub async fn unrestored(client: &impl tokio_postgres::GenericClient) -> Result<i64, Error> {
    if !exists(client).await? {
        return Ok(0);
    }
    Ok(client
        .query_one(
            &format!("SELECT pg_catalog.count(*) FROM {TABLE} WHERE {UNRESTORED}"),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("counting unrestored rows of {TABLE}"), e))?
        .get(0))
}
