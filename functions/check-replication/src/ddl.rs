//! What the DDL guard `start-replication` installed on blue has journaled.

use switchyard_errors::ErrorName;
use switchyard_operation::guard::{JOURNAL, OWN_TRANSACTIONS, TRIGGERS};
use switchyard_operation::Error;
use tokio_postgres::Client;

/// How many statements a message quotes, and how much of each.
const LISTED: i64 = 20;
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

/// The DDL journaled on blue's `database` that was not switchyard's own, as one message
/// (empty when there is none). `PreconditionFailed` when the guard is not in place.
pub(crate) async fn recorded(blue: &Client, database: &str) -> Result<String, Error> {
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
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("the DDL guard is missing or disabled on blue (database {database}), so DDL could go unseen; run start-replication"),
        ));
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
            &[&LISTED],
        )
        .await
        .map_err(|e| Error::query("reading the DDL journal on blue", e))?;
    let Some(first) = rows.first() else {
        return Ok(String::new());
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
    let more = if total > LISTED {
        format!(" (first {LISTED} of {total})")
    } else {
        String::new()
    };
    Ok(format!(
        "DDL ran on blue (database {database}) after replication started, and logical replication does not carry it{more}: {}. Apply the same changes to green (or redo copy-schema and replication), then acknowledge them with DELETE FROM {JOURNAL} WHERE id <= {last_id} on blue and check again.",
        listed.join(" | ")
    ))
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
