//! The DDL guard on blue: what `start-replication` installs, `check-replication` reads,
//! `revoke-writes` / `restore-writes` vouch to and `finalize-replication` removes. Its
//! names live here only.
//!
//! Logical replication does not carry DDL, so every committed DDL statement on blue is
//! journaled (event triggers into [`JOURNAL`]); switchyard's own DDL (the guard, the
//! publications, the fence's REVOKEs and GRANTs) runs in transactions that also write
//! their id into [`OWN_TRANSACTIONS`], and check-replication ignores journal rows with
//! those ids.

use tokio_postgres::Transaction;

use crate::Error;

/// Where the DDL statements are journaled.
pub const JOURNAL: &str = "switchyard.ddl_journal";
/// The transaction ids of switchyard's own DDL.
pub const OWN_TRANSACTIONS: &str = "switchyard.replication_state";
/// The event trigger function that journals.
pub const FUNCTION: &str = "switchyard.record_ddl";
/// The event triggers: their names and events.
pub const TRIGGERS: [(&str, &str); 2] = [
    ("switchyard_ddl_guard", "ddl_command_end"),
    ("switchyard_ddl_guard_drop", "sql_drop"),
];

/// The event triggers' names.
pub fn trigger_names() -> [&'static str; 2] {
    TRIGGERS.map(|(name, _)| name)
}

/// `SELECT …` true when the guard's own-transactions table exists.
fn guarded_sql() -> String {
    format!("SELECT pg_catalog.to_regclass('{OWN_TRANSACTIONS}') IS NOT NULL")
}

/// Vouches for this transaction's DDL (`step` says whose) to check-replication: its id is
/// recorded as switchyard's own. Without the guard (no replication started) there is
/// nothing to vouch to, and nothing is written.
pub async fn vouch(tx: &Transaction<'_>, step: &str) -> Result<(), Error> {
    let guarded: bool = tx
        .query_one(&guarded_sql(), &[])
        .await
        .map_err(|e| Error::query(format!("looking for {OWN_TRANSACTIONS}"), e))?
        .get(0);
    if guarded {
        tx.execute(
            &format!(
                "INSERT INTO {OWN_TRANSACTIONS} (txid, step) VALUES (pg_catalog.pg_current_xact_id(), $1)"
            ),
            &[&step],
        )
        .await
        .map_err(|e| Error::query("recording our own DDL transaction", e))?;
    }
    Ok(())
}

/// Whether the guard's own-transactions table exists (a transaction would vouch).
pub async fn is_installed(client: &impl tokio_postgres::GenericClient) -> Result<bool, Error> {
    Ok(client
        .query_one(&guarded_sql(), &[])
        .await
        .map_err(|e| Error::query(format!("looking for {OWN_TRANSACTIONS}"), e))?
        .get(0))
}
