//! The DDL guard: what `start-replication` installs on blue and `finalize-replication`
//! (disable, inside the pause) on green, what `check-replication` and `check-drift` read,
//! what our own DDL vouches to, and what the abort path, `abandon-prepare` and
//! `close-rollback-window` remove. Its names live here only.
//!
//! Logical replication does not carry DDL, in either direction: every committed DDL
//! statement on a guarded cluster is journaled (event triggers into [`JOURNAL`]);
//! switchyard's own DDL (the guard, the publications, the fence's REVOKEs and GRANTs) runs
//! in transactions that also write their id into [`OWN_TRANSACTIONS`], and readers ignore
//! journal rows with those ids; [`journaled`] reads what is left.
//!
//! - On **blue**, from start-replication to the switch: DDL there does not reach green.
//! - On **green**, from the pause (before the first client write) until the rollback window
//!   closes: DDL there does not reach the old blue, whose subscription stops at the first
//!   change it cannot apply, and a switch back needs it applied to the old blue first.
//!
//! A transaction id (xid8, never reused) cannot be claimed by another session and commits
//! or rolls back together with the DDL it vouches for, unlike a timestamp cut-off (which
//! would hide a user's DDL that ran between our steps) or a session setting (which any
//! session could set).

use switchyard_postgres::quote::{self, ident, literal};
use tokio_postgres::{Client, Transaction};

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

/// The guard function's body, compared with the installed one so a changed body is replaced.
///
/// - `ddl_command_end` fires for every DDL command event triggers support, DROP included
///   (table_rewrite adds nothing: its ALTER TABLE also ends there). Commands on shared
///   objects (roles, databases, tablespaces) never fire event triggers.
/// - DROP commands are journaled at `sql_drop`, which lists what was dropped, so a drop of
///   temporary objects only, or a `DROP … IF EXISTS` that dropped nothing, is not DDL drift.
/// - Commands on temporary objects only, and REFRESH MATERIALIZED VIEW (data, not schema;
///   matviews are not replicated), are routine application work, not drift.
/// - `session_user`: the function runs as its owner (SECURITY DEFINER, so any role's DDL
///   can be journaled); the login that ran the DDL is the session user.
const BODY: &str = r"
BEGIN
    IF tg_event = 'sql_drop' THEN
        IF tg_tag NOT LIKE 'DROP %'
           OR NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary) THEN
            RETURN;
        END IF;
    ELSIF tg_tag LIKE 'DROP %' OR tg_tag = 'REFRESH MATERIALIZED VIEW' THEN
        RETURN;
    ELSIF EXISTS (SELECT FROM pg_event_trigger_ddl_commands())
          AND NOT EXISTS (SELECT FROM pg_event_trigger_ddl_commands() c
                          WHERE c.schema_name IS NULL OR c.schema_name NOT LIKE 'pg\_temp%') THEN
        RETURN;
    END IF;
    INSERT INTO switchyard.ddl_journal (txid, command_tag, statement, username)
    VALUES (pg_current_xact_id(), tg_tag, current_query(), session_user);
END
";

/// Installs or repairs the guard on the connected database; false when it was already in
/// place exactly as this would install it (then nothing is written).
pub async fn install(client: &mut Client) -> Result<bool, Error> {
    if in_place(client).await? {
        return Ok(false);
    }
    let mut sql = format!(
        "CREATE SCHEMA IF NOT EXISTS switchyard;
         CREATE TABLE IF NOT EXISTS {JOURNAL} (
             id          bigserial PRIMARY KEY,
             recorded_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
             txid        xid8 NOT NULL,
             command_tag text NOT NULL,
             statement   text,
             username    text NOT NULL
         );
         CREATE TABLE IF NOT EXISTS {OWN_TRANSACTIONS} (
             txid        xid8 PRIMARY KEY,
             recorded_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
             step        text NOT NULL
         );
         CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS event_trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
             AS {body};
         REVOKE ALL ON FUNCTION {FUNCTION}() FROM PUBLIC;",
        body = literal(BODY),
    );
    // Dropped and created in the same transaction as the rest: other sessions see the old
    // guard or the new one, never none. ENABLE ALWAYS: it fires in sessions running with
    // session_replication_role = replica too (restores, other replication tools).
    for (name, event) in TRIGGERS {
        let name = ident(name);
        sql.push_str(&format!(
            "DROP EVENT TRIGGER IF EXISTS {name};
             CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION {FUNCTION}();
             ALTER EVENT TRIGGER {name} ENABLE ALWAYS;"
        ));
    }
    own_ddl(client, "install the DDL guard", &sql).await?;
    tracing::info!("ddl guard installed");
    Ok(true)
}

/// Runs `sql` in one transaction that also records its transaction id as ours (when the
/// guard is there to vouch to).
pub async fn own_ddl(client: &mut Client, step: &str, sql: &str) -> Result<(), Error> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::query(format!("BEGIN ({step})"), e))?;
    tx.batch_execute(sql)
        .await
        .map_err(|e| Error::query(step, e))?;
    vouch(&tx, step).await?;
    tx.commit()
        .await
        .map_err(|e| Error::query(format!("COMMIT ({step})"), e))
}

/// Whether the guard is in place on the connected database exactly as [`install`] makes
/// it: both tables, the function with this body, both triggers enabled always.
pub async fn in_place(client: &Client) -> Result<bool, Error> {
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _)| *name).collect();
    let events: Vec<&str> = TRIGGERS.iter().map(|(_, event)| *event).collect();
    let row = client
        .query_one(
            &format!(
                "SELECT pg_catalog.to_regclass('{JOURNAL}') IS NOT NULL
                AND pg_catalog.to_regclass('{OWN_TRANSACTIONS}') IS NOT NULL
                AND (SELECT count(*) FROM pg_catalog.pg_event_trigger e
                       JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
                       JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                       JOIN unnest($1::text[], $2::text[]) AS t(name, event)
                         ON t.name = e.evtname AND t.event = e.evtevent
                      WHERE e.evtenabled = 'A' AND n.nspname = 'switchyard'
                        AND p.proname = 'record_ddl' AND p.prosrc = $3 AND p.prosecdef)
                    = cardinality($1::text[])"
            ),
            &[&names, &events, &BODY],
        )
        .await
        .map_err(|e| Error::query("reading the DDL guard's state", e))?;
    Ok(row.get(0))
}

/// Whether any of the guard's event triggers exists on the connected database.
pub async fn present(client: &Client) -> Result<bool, Error> {
    let present: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_event_trigger WHERE evtname = ANY($1)",
            &[&trigger_names().as_slice()],
        )
        .await
        .map_err(|e| Error::query("reading the DDL guard's event triggers", e))?
        .get(0);
    Ok(present > 0)
}

/// Drops the guard's event triggers on the connected database of `cluster` (for
/// messages); its journal stays, as evidence. False when none was there.
pub async fn remove_triggers(client: &Client, cluster: &str) -> Result<bool, Error> {
    if !present(client).await? {
        return Ok(false);
    }
    let sql: String = trigger_names()
        .iter()
        .map(|name| format!("DROP EVENT TRIGGER IF EXISTS {};", ident(name)))
        .collect();
    client
        .batch_execute(&format!("BEGIN; {sql} COMMIT;"))
        .await
        .map_err(|e| Error::query(format!("dropping the DDL guard on {cluster}"), e))?;
    tracing::info!(%cluster, "ddl guard's event triggers removed");
    Ok(true)
}

/// Drops the whole guard on the connected database of `cluster`: the event triggers
/// first (nothing after them is journaled), then the function and both tables. Returns
/// what was dropped, as SQL names it; empty when nothing was there.
pub async fn remove(client: &Client, cluster: &str) -> Result<Vec<String>, Error> {
    let mut dropped: Vec<String> = Vec::new();
    if remove_triggers(client, cluster).await? {
        dropped.extend(
            trigger_names()
                .iter()
                .map(|n| format!("event trigger {}", quote::name(n))),
        );
    }
    let row = client
        .query_one(
            &format!(
                "SELECT pg_catalog.to_regprocedure('{FUNCTION}()') IS NOT NULL,
                        pg_catalog.to_regclass('{JOURNAL}') IS NOT NULL,
                        pg_catalog.to_regclass('{OWN_TRANSACTIONS}') IS NOT NULL"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::query(format!("reading the DDL guard on {cluster}"), e))?;
    let mut sql = String::new();
    for (present, object, drop) in [
        (
            row.get::<_, bool>(0),
            format!("function {FUNCTION}()"),
            format!("DROP FUNCTION IF EXISTS {FUNCTION}();"),
        ),
        (
            row.get(1),
            format!("table {JOURNAL}"),
            format!("DROP TABLE IF EXISTS {JOURNAL};"),
        ),
        (
            row.get(2),
            format!("table {OWN_TRANSACTIONS}"),
            format!("DROP TABLE IF EXISTS {OWN_TRANSACTIONS};"),
        ),
    ] {
        if present {
            sql.push_str(&drop);
            dropped.push(object);
        }
    }
    if !sql.is_empty() {
        client
            .batch_execute(&format!("BEGIN; {sql} COMMIT;"))
            .await
            .map_err(|e| {
                Error::query(
                    format!("dropping the DDL guard's function and journal on {cluster}"),
                    e,
                )
            })?;
        tracing::info!(%cluster, "ddl guard removed");
    }
    Ok(dropped)
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

/// Which cluster a guard watches, for what its journal means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Blue, from start-replication to the switch: DDL there does not reach green.
    Blue,
    /// Green, in the rollback window: DDL there does not reach the old blue.
    Green,
}

impl Watched {
    fn name(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
        }
    }

    /// Command tags that cannot break this side's replication, left out of what
    /// [`journaled`] reports. On green: subscription commands (its forward subscriptions
    /// are dropped in the rollback window, one statement each, which no transaction can
    /// vouch for); a subscription changes no table the old blue applies.
    fn ignored(self) -> &'static [&'static str] {
        match self {
            Self::Blue => &[],
            Self::Green => &[
                "CREATE SUBSCRIPTION",
                "ALTER SUBSCRIPTION",
                "DROP SUBSCRIPTION",
            ],
        }
    }
}

/// What the guard has journaled on one of a cluster's databases.
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

/// The DDL journaled on `watched`'s `database` that was not switchyard's own.
pub async fn journaled(
    client: &impl tokio_postgres::GenericClient,
    database: &str,
    watched: Watched,
) -> Result<Journaled, Error> {
    let side = watched.name();
    let guarded: bool = client
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
        .map_err(|e| Error::query(format!("reading the DDL guard's state on {side}"), e))?
        .get(0);
    if !guarded {
        return Ok(Journaled::Unguarded);
    }
    let ignored = watched.ignored();
    // Rows written by our own transactions are not drift.
    let rows = client
        .query(
            &format!(
                "SELECT j.id, pg_catalog.to_char(j.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        j.command_tag, j.username, coalesce(j.statement, ''), count(*) OVER ()
                   FROM {JOURNAL} j
                  WHERE NOT EXISTS (SELECT FROM {OWN_TRANSACTIONS} s WHERE s.txid = j.txid)
                    AND j.command_tag <> ALL($2)
                  ORDER BY j.id LIMIT $1"
            ),
            &[&STATEMENTS_LISTED, &ignored],
        )
        .await
        .map_err(|e| Error::query(format!("reading the DDL journal on {side}"), e))?;
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
                quote::name(r.get(3)),
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
    let acknowledge = format!(
        "then acknowledge them with DELETE FROM {JOURNAL} WHERE id <= {last_id} on {side} and check again."
    );
    let database = quote::name(database);
    Ok(Journaled::Unvouched(match watched {
        Watched::Blue => format!(
            "DDL ran on blue (database {database}) after replication started, and logical replication does not carry it{more}: {}. Apply the same changes to green (or redo copy-schema and replication), {acknowledge}",
            listed.join(" | ")
        ),
        Watched::Green => format!(
            "DDL ran on green (database {database}) after the switch, and reverse replication does not carry it to the old blue{more}: {}. The old blue's subscription stops at the first change it cannot apply, and a switch back needs the old blue's schema equal to green's: apply the same changes to the old blue, {acknowledge}",
            listed.join(" | ")
        ),
    }))
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
