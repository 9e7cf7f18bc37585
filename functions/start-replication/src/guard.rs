//! The DDL guard on blue: event triggers that journal every committed DDL statement into
//! `switchyard.ddl_journal`, so `check-replication` can stop the run (logical replication
//! does not carry DDL, and green's schema would silently drift).
//!
//! Our own DDL on blue (the guard, the publications) runs in transactions that also write
//! their transaction id into `switchyard.replication_state`; `check-replication` ignores
//! journal rows with those ids. A transaction id (xid8, never reused) cannot be claimed by
//! another session and commits or rolls back together with the DDL it vouches for — unlike
//! a timestamp cut-off, which would hide a user's DDL that ran between our steps, or a
//! session setting, which any session could set.
//!
//! The installation also creates the switchover marker table (see `marker`), so its DDL is
//! ours too.

use switchyard_operation::guard::{self, FUNCTION, JOURNAL, OWN_TRANSACTIONS, TRIGGERS};
use switchyard_operation::Error;
use tokio_postgres::Client;

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

/// Installs or repairs the guard (and the marker table); false when both were already in
/// place exactly as we would install them (then nothing is written).
pub(crate) async fn install(blue: &mut Client) -> Result<bool, Error> {
    if in_place(blue).await? {
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
         {marker};
         CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS event_trigger
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
             AS {body};
         REVOKE ALL ON FUNCTION {FUNCTION}() FROM PUBLIC;",
        marker = crate::marker::CREATE_TABLE,
        body = switchyard_postgres::quote::literal(BODY),
    );
    // Dropped and created in the same transaction as the rest: other sessions see the old
    // guard or the new one, never none. ENABLE ALWAYS: it fires in sessions running with
    // session_replication_role = replica too (restores, other replication tools).
    for (name, event) in TRIGGERS {
        let name = switchyard_postgres::quote::ident(name);
        sql.push_str(&format!(
            "DROP EVENT TRIGGER IF EXISTS {name};
             CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION {FUNCTION}();
             ALTER EVENT TRIGGER {name} ENABLE ALWAYS;"
        ));
    }
    own_ddl(blue, "install the DDL guard", &sql).await?;
    tracing::info!("ddl guard installed");
    Ok(true)
}

/// Runs `sql` in one transaction that also records its transaction id as ours.
pub(crate) async fn own_ddl(client: &mut Client, step: &str, sql: &str) -> Result<(), Error> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::query(format!("BEGIN ({step})"), e))?;
    tx.batch_execute(sql)
        .await
        .map_err(|e| Error::query(step, e))?;
    guard::vouch(&tx, step).await?;
    tx.commit()
        .await
        .map_err(|e| Error::query(format!("COMMIT ({step})"), e))
}

pub(crate) async fn in_place(blue: &Client) -> Result<bool, Error> {
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _)| *name).collect();
    let events: Vec<&str> = TRIGGERS.iter().map(|(_, event)| *event).collect();
    let row = blue
        .query_one(
            &format!(
                "SELECT pg_catalog.to_regclass('{JOURNAL}') IS NOT NULL
                AND pg_catalog.to_regclass('{OWN_TRANSACTIONS}') IS NOT NULL
                AND pg_catalog.to_regclass('switchyard.switchover_marker') IS NOT NULL
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_journals_into_the_guards_table() {
        assert!(BODY.contains(&format!("INSERT INTO {JOURNAL} ")), "{BODY}");
        assert_eq!(
            FUNCTION, "switchyard.record_ddl",
            "in_place looks it up by that name"
        );
    }
}
