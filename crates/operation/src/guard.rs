//! The DDL guard on blue: what `start-replication` installs, `check-replication` reads,
//! `revoke-writes` / `restore-writes` vouch to and `finalize-replication` removes. Its
//! names live here only.
//!
//! Logical replication does not carry DDL, so every committed DDL statement on blue is
//! journaled (event triggers into [`JOURNAL`]); switchyard's own DDL (the guard, the
//! publications, the fence's REVOKEs and GRANTs) runs in transactions that also write
//! their id into [`OWN_TRANSACTIONS`], and check-replication ignores journal rows with
//! those ids; [`journaled`] reads what is left.

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

/// How many statements a message quotes, and how much of each.
const STATEMENTS_LISTED: i64 = 20;
const STATEMENT_CHARS: usize = 200;

/// Tags whose statements may hold a password (a user mapping's, a connection string).
const SECRET_BEARING: &[&str] = &[
    "CREATE USER MAPPING",
    "ALTER USER MAPPING",
    "CREATE SERVER",
    "ALTER SERVER",
    "CREATE SUBSCRIPTION",
    "ALTER SUBSCRIPTION",
];

/// What the guard has journaled on one of blue's databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Journaled {
    /// The guard is missing or disabled: DDL could go unseen.
    Unguarded,
    /// Nothing but switchyard's own DDL.
    Clean,
    /// DDL that was not switchyard's, as one message that quotes it (bounded, never a
    /// statement that can hold a password) and says how to acknowledge it.
    Unvouched(String),
}

/// The DDL journaled on blue's `database` that was not switchyard's own.
pub async fn journaled(
    blue: &impl tokio_postgres::GenericClient,
    database: &str,
) -> Result<Journaled, Error> {
    let guarded: bool = blue
        .query_one(
            &format!(
                "SELECT pg_catalog.to_regclass('{JOURNAL}') IS NOT NULL
                    AND pg_catalog.to_regclass('{OWN_TRANSACTIONS}') IS NOT NULL
                    AND EXISTS (SELECT FROM pg_catalog.pg_event_trigger
                                 WHERE evtname = $1 AND evtenabled <> 'D')"
            ),
            &[&TRIGGERS[0].0],
        )
        .await
        .map_err(|e| Error::query("reading the DDL guard's state on blue", e))?
        .get(0);
    if !guarded {
        return Ok(Journaled::Unguarded);
    }
    // Rows written by our own setup transactions (start-replication's) are not drift.
    let rows = blue
        .query(
            &format!(
                "SELECT j.id, pg_catalog.to_char(j.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        j.command_tag, j.username, coalesce(j.statement, ''), count(*) OVER ()
                   FROM {JOURNAL} j
                  WHERE NOT EXISTS (SELECT FROM {OWN_TRANSACTIONS} s WHERE s.txid = j.txid)
                  ORDER BY j.id LIMIT $1"
            ),
            &[&STATEMENTS_LISTED],
        )
        .await
        .map_err(|e| Error::query("reading the DDL journal on blue", e))?;
    let Some(first) = rows.first() else {
        return Ok(Journaled::Clean);
    };
    let total: i64 = first.get(5);
    let listed: Vec<String> = rows
        .iter()
        .map(|r| {
            let tag: String = r.get(2);
            format!(
                "{} {tag} by {}: {}",
                r.get::<_, String>(1),
                r.get::<_, String>(3),
                shown(&tag, &r.get::<_, String>(4))
            )
        })
        .collect();
    let last_id: i64 = rows.last().map_or(0, |r| r.get(0));
    let more = if total > STATEMENTS_LISTED {
        format!(" (first {STATEMENTS_LISTED} of {total})")
    } else {
        String::new()
    };
    Ok(Journaled::Unvouched(format!(
        "DDL ran on blue (database {database}) after replication started, and logical replication does not carry it{more}: {}. Apply the same changes to green (or redo copy-schema and replication), then acknowledge them with DELETE FROM {JOURNAL} WHERE id <= {last_id} on blue and check again.",
        listed.join(" | ")
    )))
}

/// A statement as a message may show it: on one line, at most [`STATEMENT_CHARS`]
/// characters, withheld entirely when its kind can carry a password.
fn shown(tag: &str, statement: &str) -> String {
    if SECRET_BEARING.contains(&tag) {
        return "(statement withheld: it may hold a password)".to_owned();
    }
    let one_line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(STATEMENT_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_one_line_bounded_and_never_secret() {
        assert_eq!(
            shown(
                "ALTER TABLE",
                "ALTER TABLE public.accounts\n    ADD COLUMN nickname text;"
            ),
            "ALTER TABLE public.accounts ADD COLUMN nickname text;"
        );
        let long = format!("COMMENT ON TABLE t IS '{}'", "é".repeat(300));
        let cut = shown("COMMENT", &long);
        assert_eq!(cut.chars().count(), STATEMENT_CHARS + 1);
        assert!(cut.ends_with('…'));
        let secret = shown(
            "CREATE USER MAPPING",
            "CREATE USER MAPPING FOR app SERVER s OPTIONS (password 'hunter2')",
        );
        assert!(!secret.contains("hunter2"), "{secret}");
    }
}
