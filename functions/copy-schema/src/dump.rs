//! Blue's schema as SQL: `pg_dump --schema-only`, unwrapped from psql's `\restrict`
//! meta-commands and cut into statements the way psql would run them.

use std::process::Stdio;

use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{Deps, Error, Side};
use switchyard_postgres::{quote, ConnectOptions, Tls};

/// How long pg_dump waits for a table's ACCESS SHARE lock before giving up: a pending
/// ACCESS EXCLUSIVE (a migration) would otherwise hold the dump, and the Lambda, forever.
const LOCK_WAIT_TIMEOUT: &str = "--lock-wait-timeout=30s";
/// The most of pg_dump's stderr a message carries.
const STDERR_LIMIT: usize = 1500;

/// Runs pg_dump against blue's `database` as the orchestrator. The connection goes in the
/// child's environment only (never its command line, never a DSN), and inherited `PG*`
/// variables are removed so nothing else steers it.
pub(crate) async fn schema(
    deps: &Deps,
    cell: &CellDocument,
    database: &str,
) -> Result<String, Error> {
    let opts = deps
        .orchestrator_options(cell, Side::Blue, database)
        .await?;
    let pg_dump = &deps.deployment.pg_dump;
    let mut command = tokio::process::Command::new(pg_dump);
    command
        .args([
            "--schema-only",
            "--no-subscriptions",
            "--exclude-schema=switchyard",
            "--encoding=UTF8",
            "--no-password",
            LOCK_WAIT_TIMEOUT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
    command.envs(connection_env(&opts));
    let out = command.output().await.map_err(|e| {
        Error::stop(
            ErrorName::ConfigurationError,
            format!(
                "cannot run pg_dump at {} ({e}): deploy it there or set SWITCHYARD_PG_DUMP",
                pg_dump.display()
            ),
        )
    })?;
    if !out.status.success() {
        let stderr =
            String::from_utf8_lossy(&out.stderr).replace(opts.password.expose(), "[redacted]");
        let stderr = tail(stderr.trim(), STDERR_LIMIT);
        // A lock wait or a connection that could not be made may pass; the rest will not.
        let name = if stderr.contains("could not obtain lock")
            || stderr.contains("Connection refused")
            || stderr.contains("timeout expired")
        {
            ErrorName::DatabaseUnavailable
        } else {
            ErrorName::DatabaseError
        };
        return Err(Error::stop(
            name,
            format!(
                "pg_dump of blue's database {} failed ({}): {stderr}",
                quote::name(database),
                out.status
            ),
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| {
        Error::stop(
            ErrorName::DatabaseError,
            format!(
                "pg_dump of blue's database {} is not UTF-8 although UTF8 was asked for",
                quote::name(database)
            ),
        )
    })
}

fn connection_env(opts: &ConnectOptions) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PGHOST", opts.host.clone()),
        ("PGPORT", opts.port.to_string()),
        ("PGUSER", opts.user.clone()),
        ("PGPASSWORD", opts.password.expose().to_owned()),
        ("PGDATABASE", opts.dbname.clone()),
        ("PGAPPNAME", "switchyard-copy-schema".to_owned()),
        (
            "PGCONNECT_TIMEOUT",
            opts.connect_timeout.as_secs().max(1).to_string(),
        ),
    ];
    match &opts.tls {
        Tls::VerifyFull { ca_bundle } => {
            env.push(("PGSSLMODE", "verify-full".to_owned()));
            env.push(("PGSSLROOTCERT", ca_bundle.display().to_string()));
        }
        Tls::Disabled => env.push(("PGSSLMODE", "disable".to_owned())),
    }
    env
}

fn tail(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// pg_dump ≥ 15.14 / 18.0 wraps its script in `\restrict <key>` … `\unrestrict <key>`,
/// psql meta-commands the server cannot run: exactly those two lines are dropped.
pub(crate) fn unwrap_restrict(dump: &str) -> String {
    let lines: Vec<&str> = dump.lines().collect();
    let first = lines.iter().position(|l| l.starts_with("\\restrict "));
    let last = lines.iter().rposition(|l| l.starts_with("\\unrestrict "));
    lines
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != first && Some(*i) != last)
        .map(|(_, l)| *l)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Cuts a script into statements as psql does: a `;` ends one unless it is inside quotes,
/// a dollar-quoted body, a comment, parentheses, or the `BEGIN … END` of a SQL-standard
/// function body. Comments and blank space before a statement are not part of it.
pub(crate) fn statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut parens = 0usize;
    let mut begin_depth = 0usize;
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        // Comments and blank space between statements belong to none.
        if c == b'-' && next == Some(b'-') {
            i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        if c == b'/' && next == Some(b'*') {
            i = skip_block_comment(bytes, i);
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let begun = *start.get_or_insert(i);
        match c {
            b'\'' => {
                let escapes = i > begun
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && !ident_byte(bytes.get(i.wrapping_sub(2)).copied(), i >= begun + 2);
                i = skip_quoted(bytes, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'$' if i == begun || !ident_byte(Some(bytes[i - 1]), true) => {
                i = skip_dollar_quoted(sql, i);
            }
            b'(' => {
                parens += 1;
                i += 1;
            }
            b')' => {
                parens = parens.saturating_sub(1);
                i += 1;
            }
            b';' if parens == 0 && begin_depth == 0 => {
                out.push(&sql[begun..=i]);
                start = None;
                words.clear();
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let end = (i..bytes.len())
                    .find(|&j| !ident_byte(Some(bytes[j]), true))
                    .unwrap_or(bytes.len());
                let word = sql[i..end].to_ascii_lowercase();
                if routine_definition(&words) && parens == 0 {
                    match word.as_str() {
                        "begin" => begin_depth += 1,
                        // CASE also ends with END; it matters only inside a BEGIN.
                        "case" if begin_depth > 0 => begin_depth += 1,
                        "end" => begin_depth = begin_depth.saturating_sub(1),
                        _ => {}
                    }
                }
                if words.len() < 4 {
                    words.push(word);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    if let Some(begun) = start {
        out.push(sql[begun..].trim_end());
    }
    out
}

/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`: where a `BEGIN ATOMIC` body may hold `;`.
fn routine_definition(words: &[String]) -> bool {
    let w = |i: usize| words.get(i).map(String::as_str);
    w(0) == Some("create")
        && (matches!(w(1), Some("function" | "procedure"))
            || (w(1) == Some("or")
                && w(2) == Some("replace")
                && matches!(w(3), Some("function" | "procedure"))))
}

fn ident_byte(b: Option<u8>, present: bool) -> bool {
    present && b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80)
}

/// Past a `'…'` or `"…"` token (doubled quotes inside; backslash escapes in `E'…'`).
fn skip_quoted(bytes: &[u8], open: usize, quote: u8, escapes: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Past a `$tag$…$tag$` body; a `$` that opens no valid tag is just a character.
fn skip_dollar_quoted(sql: &str, open: usize) -> usize {
    let rest = &sql[open + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b >= 0x80)
        .count();
    let starts_with_digit = rest.bytes().next().is_some_and(|b| b.is_ascii_digit());
    if starts_with_digit || rest.as_bytes().get(tag_len) != Some(&b'$') {
        return open + 1;
    }
    let delimiter = &sql[open..open + tag_len + 2];
    let body = open + delimiter.len();
    sql[body..]
        .find(delimiter)
        .map_or(sql.len(), |n| body + n + delimiter.len())
}

fn skip_block_comment(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// Whether a statement of the dump copies one of switchyard's own objects that live outside
/// its schema: the DDL guard's event triggers and replication's publications, all named
/// `switchyard_*`. On green the guard would call a function that is not there, and the
/// publications would publish to nobody.
pub(crate) fn is_switchyards_own(statement: &str) -> bool {
    let words: Vec<&str> = statement.split_whitespace().take(5).collect();
    let name = match words.as_slice() {
        ["CREATE" | "ALTER", "EVENT", "TRIGGER", name, ..]
        | ["CREATE" | "ALTER", "PUBLICATION", name, ..]
        | ["COMMENT", "ON", "EVENT", "TRIGGER", name]
        | ["COMMENT", "ON", "PUBLICATION", name, ..] => name,
        _ => return false,
    };
    name.trim_start_matches('"').starts_with("switchyard_")
}

/// Whether a server of `version_num` accepts a session setting the dump starts with.
/// pg_dump writes the settings of its own major (18 here): `transaction_timeout` exists
/// from 17 on, and is only reset to 0 by the dump, so an older green can skip it.
pub(crate) fn understood_by(statement: &str, version_num: i32) -> bool {
    let setting = statement
        .trim_start()
        .strip_prefix("SET ")
        .and_then(|rest| rest.split([' ', '=']).next());
    !(setting == Some("transaction_timeout") && version_num < 170_000)
}

/// A failing statement as a message may show it: its first line, and the text around the
/// server's error position (1-based, in characters) when that is elsewhere. A user
/// mapping's OPTIONS can hold a password, so they are never shown.
pub(crate) fn excerpt(statement: &str, position: Option<usize>) -> String {
    const WIDTH: usize = 120;
    let upper = statement.to_ascii_uppercase();
    if upper.starts_with("CREATE USER MAPPING") || upper.starts_with("ALTER USER MAPPING") {
        let cut = upper.find(" OPTIONS").unwrap_or(statement.len());
        return format!("{} …", &statement[..cut]);
    }
    let first_line = statement.lines().next().unwrap_or_default();
    let mut text = shorten(first_line, WIDTH);
    if let Some(position) = position {
        let chars: Vec<char> = statement.chars().collect();
        let at = position.saturating_sub(1).min(chars.len());
        if at >= first_line.chars().count() {
            let from = at.saturating_sub(WIDTH / 2);
            let to = (at + WIDTH / 2).min(chars.len());
            let around: String = chars[from..to].iter().collect();
            text.push_str(&format!(
                " … near \"{}\"",
                around.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    text
}

fn shorten(text: &str, width: usize) -> String {
    match text.char_indices().nth(width) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_exactly_the_restrict_lines() {
        let dump = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\nSET x = 1;\n\
                    CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$\n\\restrict not-this-one\n$$;\n\n\
                    \\unrestrict abc123\n";
        let sql = unwrap_restrict(dump);
        assert!(!sql.contains("abc123"), "{sql}");
        assert!(sql.contains("\\restrict not-this-one"), "{sql}");
        assert_eq!(statements(&sql).len(), 2);
        assert_eq!(unwrap_restrict("SET x = 1;\n"), "SET x = 1;");
    }

    #[test]
    fn splits_like_psql() {
        let sql = r#"
-- Name: a; Type: TABLE
SET standard_conforming_strings = on;
/* a /* nested */ comment; */
CREATE TABLE "semi;colon" (note text DEFAULT 'it''s; fine', b text DEFAULT E'back\'; slash');
CREATE FUNCTION public.f() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
BEGIN
    RETURN NEW; -- ; inside
END $_$;
CREATE FUNCTION public.g(a integer) RETURNS integer
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT CASE WHEN a > 0 THEN 1 ELSE 0 END;
 SELECT a$b FROM t;
END;
CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b);
SELECT 1"#;
        let parts = statements(sql);
        assert_eq!(parts.len(), 6, "{parts:#?}");
        assert!(parts[0].starts_with("SET standard"), "{}", parts[0]);
        assert!(
            parts[1].starts_with("CREATE TABLE \"semi;colon\"") && parts[1].ends_with("slash');")
        );
        assert!(parts[2].ends_with("END $_$;"), "{}", parts[2]);
        assert!(
            parts[3].starts_with("CREATE FUNCTION public.g") && parts[3].ends_with("END;"),
            "{}",
            parts[3]
        );
        assert!(parts[4].ends_with("NOTIFY b);"), "{}", parts[4]);
        assert_eq!(parts[5], "SELECT 1");
    }

    #[test]
    fn settings_an_older_green_lacks_are_skipped_only_there() {
        assert!(!understood_by("SET transaction_timeout = 0;", 160_004));
        assert!(understood_by("SET transaction_timeout = 0;", 170_000));
        assert!(understood_by("SET lock_timeout = 0;", 140_000));
        assert!(understood_by(
            "CREATE TABLE transaction_timeout (x int);",
            140_000
        ));
    }

    #[test]
    fn recognises_switchyards_own_objects() {
        for own in [
            "CREATE EVENT TRIGGER switchyard_ddl_guard ON ddl_command_end\n   EXECUTE FUNCTION switchyard.record_ddl();",
            "ALTER EVENT TRIGGER switchyard_ddl_guard ENABLE ALWAYS;",
            "ALTER EVENT TRIGGER switchyard_ddl_guard OWNER TO switchyard;",
            "COMMENT ON EVENT TRIGGER switchyard_ddl_guard IS 'x';",
            "CREATE PUBLICATION switchyard_payments WITH (publish = 'insert, update, delete, truncate');",
            "ALTER PUBLICATION switchyard_rest ADD TABLE ONLY public.accounts;",
            "ALTER PUBLICATION \"switchyard_hot-path\" OWNER TO switchyard;",
        ] {
            assert!(is_switchyards_own(own), "{own}");
        }
        for theirs in [
            "CREATE PUBLICATION search_pub WITH (publish = 'insert, update, delete, truncate');",
            "ALTER PUBLICATION search_pub ADD TABLE ONLY public.switchyard_like;",
            "CREATE EVENT TRIGGER audit ON ddl_command_end EXECUTE FUNCTION public.audit();",
            "CREATE TABLE public.switchyard_notes (id integer);",
        ] {
            assert!(!is_switchyards_own(theirs), "{theirs}");
        }
    }

    #[test]
    fn excerpts_point_at_the_error_and_hide_user_mapping_options() {
        let statement = "CREATE TABLE public.t (\n    a integer,\n    b no_such_type\n);";
        let position = statement.find("no_such_type").map(|p| p + 1);
        let text = excerpt(statement, position);
        assert!(text.starts_with("CREATE TABLE public.t ("), "{text}");
        assert!(text.contains("near \""), "{text}");
        assert!(text.contains("b no_such_type"), "{text}");
        let mapping = "CREATE USER MAPPING FOR app SERVER s OPTIONS (\n    password 'hunter2'\n);";
        let text = excerpt(mapping, Some(40));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.starts_with("CREATE USER MAPPING FOR app SERVER s"),
            "{text}"
        );
    }
}
