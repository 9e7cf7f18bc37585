//! A client for PgBouncer's admin console (the `pgbouncer` database).
//!
//! Only the simple query protocol is used: an extended-protocol query (anything with
//! parameters, or a prepared statement) makes the console close the connection. That
//! is why the driver's client is never handed out.
//!
//! How names are written (PgBouncer 1.18–1.24 `admin.c`): a command argument is a bare
//! word `[0-9a-z_]+` (case-insensitive, taken verbatim) or a double-quoted word with
//! `""` for a quote, read into a 64-byte buffer. So every name is sent quoted with
//! [`quote::ident`] and checked to fit; an empty name is refused,
//! because `PAUSE ""` would reach PgBouncer as a bare `PAUSE` — every database.
//! SET values are single-quoted with `''` for a quote and no backslash escapes, into a
//! 256-byte buffer — not PostgreSQL's `E''` form, which the console would not parse.
//! Every console error comes back as SQLSTATE 08P01, which is not transient.

mod show;

use std::fmt;
use std::time::Duration;

use switchyard_telemetry::Secret;
use tokio::task::AbortHandle;
use tokio_postgres::{Client, Config, SimpleQueryMessage};
use tracing::instrument;

use self::show::{parse, FromFields, Record};
pub use self::show::{ConfigRow, DatabaseRow, DnsHostRow, PoolRow, SocketRow};
use crate::connect::establish_over;
use crate::error::Kind;
use crate::{quote, PgError, Tls};

/// Longest argument the console reads, quotes included (`char arg[64]` with its NUL).
const MAX_ARG_BYTES: usize = 63;
/// Longest SET value the console reads, quotes included (`char val[256]`).
const MAX_VALUE_BYTES: usize = 255;

/// What RESUME found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    Resumed,
    /// The database was not paused: nothing to do (a retried RESUME lands here).
    WasNotPaused,
}

/// An open admin-console session. Dropping it closes the socket at once, even while a
/// command is still waiting for its answer (see [`PgBouncerAdmin::pause`]).
pub struct PgBouncerAdmin {
    client: Client,
    connection: AbortHandle,
    /// `host:port`, for messages.
    endpoint: String,
}

impl fmt::Debug for PgBouncerAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBouncerAdmin")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for PgBouncerAdmin {
    fn drop(&mut self) {
        // Dropping the driver's client alone leaves the socket open until a pending
        // command is answered — and a pending PAUSE may never be.
        self.connection.abort();
    }
}

impl PgBouncerAdmin {
    /// Logs in to the admin console (database `pgbouncer`, application `switchyard`),
    /// over `tls`: verify-full against the cell's CA bundle when the fleet serves TLS
    /// (the cell document says so), plain TCP inside the VPC when it does not.
    #[instrument(level = "debug", skip(password, tls))]
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        password: &Secret,
        tls: &Tls,
        connect_timeout: Duration,
    ) -> Result<Self, PgError> {
        let endpoint = format!("{host}:{port}");
        let mut config = Config::new();
        config
            .host(host)
            .port(port)
            .dbname("pgbouncer")
            .user(user)
            .password(password.expose())
            .application_name("switchyard")
            .connect_timeout(connect_timeout);
        let target = format!("the PgBouncer admin console at {endpoint} as {user}");
        let (client, connection) =
            establish_over(&mut config, tls, connect_timeout, &target).await?;
        Ok(Self {
            client,
            connection,
            endpoint,
        })
    }

    /// `PAUSE db`: waits until every server connection of `db` is released and closed,
    /// while new queries queue in PgBouncer.
    ///
    /// **This can wait indefinitely** — as long as any client holds a transaction open.
    /// Bound it with `tokio::time::timeout`, and on timeout **drop this
    /// `PgBouncerAdmin`** (that closes the socket) and send RESUME from a new session.
    /// Never cancel it with a cancel request: PgBouncer answers a cancel of a pending
    /// PAUSE by resuming *every* database. A dropped session leaves the pause in force,
    /// which is why the explicit RESUME is needed.
    ///
    /// A refusal by PgBouncer (already paused, no such database) is `PauseFailed`.
    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn pause(&self, db: &str) -> Result<(), PgError> {
        let command = db_command("PAUSE", db)?;
        self.run(&command, &command)
            .await
            .map_err(|e| match e.kind() {
                Kind::Database => e.with_kind(Kind::PauseFailed),
                _ => e,
            })?;
        Ok(())
    }

    /// `RESUME db`. "Not paused" is an answer, not an error: resuming is idempotent.
    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn resume(&self, db: &str) -> Result<Resumed, PgError> {
        let command = db_command("RESUME", db)?;
        match self.run(&command, &command).await {
            Ok(_) => Ok(Resumed::Resumed),
            Err(e) if e.server_message().is_some_and(means_not_paused) => Ok(Resumed::WasNotPaused),
            Err(e) => Err(e),
        }
    }

    /// `RECONNECT db`: closes each server connection of `db` once it is released, so
    /// the next ones resolve the host name again.
    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn reconnect(&self, db: &str) -> Result<(), PgError> {
        let command = db_command("RECONNECT", db)?;
        self.run(&command, &command).await.map(drop)
    }

    /// `WAIT_CLOSE db`: waits until the connections marked by RECONNECT are gone. Like
    /// PAUSE it can wait long; bound it the same way.
    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn wait_close(&self, db: &str) -> Result<(), PgError> {
        let command = db_command("WAIT_CLOSE", db)?;
        self.run(&command, &command).await.map(drop)
    }

    /// `RELOAD`: re-reads the configuration file.
    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn reload(&self) -> Result<(), PgError> {
        self.run("RELOAD", "RELOAD").await.map(drop)
    }

    /// `SET name = 'value'` for the running process (e.g. `dns_max_ttl`, `"1"`).
    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn set(&self, name: &str, value: &str) -> Result<(), PgError> {
        // The value stays out of messages: the name is enough to act on.
        self.run(&set_command(name, value)?, &format!("SET {name}"))
            .await
            .map(drop)
    }

    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn show_databases(&self) -> Result<Vec<DatabaseRow>, PgError> {
        self.show("DATABASES").await
    }

    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn show_config(&self) -> Result<Vec<ConfigRow>, PgError> {
        self.show("CONFIG").await
    }

    /// One setting from `SHOW CONFIG`; `None` if this PgBouncer has no such setting.
    pub async fn config_value(&self, key: &str) -> Result<Option<String>, PgError> {
        Ok(self
            .show_config()
            .await?
            .into_iter()
            .find(|row| row.key == key)
            .map(|row| row.value))
    }

    /// Server connections: where PgBouncer is actually connected.
    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn show_servers(&self) -> Result<Vec<SocketRow>, PgError> {
        self.show("SERVERS").await
    }

    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn show_clients(&self) -> Result<Vec<SocketRow>, PgError> {
        self.show("CLIENTS").await
    }

    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn show_dns_hosts(&self) -> Result<Vec<DnsHostRow>, PgError> {
        self.show("DNS_HOSTS").await
    }

    #[instrument(level = "debug", skip(self), fields(endpoint = %self.endpoint))]
    pub async fn show_pools(&self) -> Result<Vec<PoolRow>, PgError> {
        self.show("POOLS").await
    }

    async fn show<T: FromFields>(&self, what: &str) -> Result<Vec<T>, PgError> {
        let command = format!("SHOW {what}");
        let records = self.run(&command, &command).await?;
        parse(&records).map_err(|detail| {
            PgError::unexpected_output(
                format!("running {command} on PgBouncer {}", self.endpoint),
                detail,
            )
        })
    }

    /// Sends one command; `label` names it in messages (a SET without its value).
    async fn run(&self, command: &str, label: &str) -> Result<Vec<Record>, PgError> {
        let messages =
            self.client.simple_query(command).await.map_err(|e| {
                PgError::query(format!("{label} on PgBouncer {}", self.endpoint), e)
            })?;
        Ok(messages
            .into_iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, column)| {
                            (column.name().to_owned(), row.get(i).map(str::to_owned))
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }
}

/// `VERB "db"`, refusing names the console would misread.
fn db_command(verb: &str, db: &str) -> Result<String, PgError> {
    let refuse = |why: &str| {
        Err(PgError::configuration(
            format!("preparing {verb} for PgBouncer"),
            format!("database name {db:?} {why}; check the cell's database list"),
        ))
    };
    if db.is_empty() {
        return refuse("is empty (PgBouncer would apply it to every database)");
    }
    if db.contains('\0') {
        return refuse("contains a NUL byte");
    }
    let quoted = quote::ident(db);
    if quoted.len() > MAX_ARG_BYTES {
        return refuse("is too long for the admin console (61 bytes at most once quoted)");
    }
    Ok(format!("{verb} {quoted}"))
}

/// `SET name = 'value'`.
fn set_command(name: &str, value: &str) -> Result<String, PgError> {
    let refuse = |why: String| {
        Err(PgError::configuration(
            format!("preparing SET {name:?} for PgBouncer"),
            why,
        ))
    };
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if name.is_empty() || name.len() > MAX_ARG_BYTES || !name.chars().all(is_word) {
        return refuse("a setting name is letters, digits and underscores".into());
    }
    if value.contains('\0') {
        return refuse("the value contains a NUL byte".into());
    }
    let quoted = format!("'{}'", value.replace('\'', "''"));
    if quoted.len() > MAX_VALUE_BYTES {
        return refuse(format!(
            "the value is {} bytes once quoted; the admin console takes {MAX_VALUE_BYTES}",
            quoted.len()
        ));
    }
    Ok(format!("SET {name} = {quoted}"))
}

/// PgBouncer's answers to a RESUME with nothing paused (1.18–1.24): `database <name> is
/// not paused`, or for the whole pooler `pooler is not paused/suspended`.
fn means_not_paused(message: &str) -> bool {
    message == "pooler is not paused/suspended"
        || (message.starts_with("database ") && message.ends_with(" is not paused"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_errors::{Catalogued, ErrorName};

    #[test]
    fn quotes_database_names_for_the_console() {
        let cases: &[(&str, &str, &str)] = &[
            ("PAUSE", "app", r#"PAUSE "app""#),
            ("RESUME", "App", r#"RESUME "App""#),
            ("RECONNECT", "invoice lines", r#"RECONNECT "invoice lines""#),
            ("WAIT_CLOSE", r#"we"ird"#, r#"WAIT_CLOSE "we""ird""#),
            ("PAUSE", "it's", r#"PAUSE "it's""#),
            ("PAUSE", "ünï", r#"PAUSE "ünï""#),
        ];
        for (verb, db, expected) in cases {
            assert_eq!(db_command(verb, db).expect("accepted"), *expected);
        }
    }

    #[test]
    fn refuses_names_the_console_would_misread() {
        let longest = "d".repeat(61);
        assert!(db_command("PAUSE", &longest).is_ok());
        let cases = [
            String::new(),
            "a\0b".to_owned(),
            "d".repeat(62),
            "\"".repeat(31),
        ];
        for db in cases {
            let error = db_command("PAUSE", &db).expect_err("refused");
            assert!(matches!(error.error_name(), ErrorName::ConfigurationError));
            assert!(
                error
                    .to_string()
                    .starts_with("preparing PAUSE for PgBouncer: "),
                "{error}"
            );
        }
    }

    #[test]
    fn writes_set_commands() {
        let cases: &[(&str, &str, &str)] = &[
            ("dns_max_ttl", "1", "SET dns_max_ttl = '1'"),
            ("query_wait_timeout", "0", "SET query_wait_timeout = '0'"),
            (
                "application_name_add_host",
                "it's",
                "SET application_name_add_host = 'it''s'",
            ),
            // No backslash escapes on the console: one backslash stays one.
            (
                "server_reset_query",
                r"a\b",
                r"SET server_reset_query = 'a\b'",
            ),
            ("server_reset_query", "", "SET server_reset_query = ''"),
        ];
        for (name, value, expected) in cases {
            assert_eq!(set_command(name, value).expect("accepted"), *expected);
        }
    }

    #[test]
    fn refuses_bad_set_commands() {
        for (name, value) in [
            ("", "1"),
            ("dns max ttl", "1"),
            ("dns_max_ttl;", "1"),
            ("dns_max_ttl", "a\0"),
            ("dns_max_ttl", &"x".repeat(254)),
        ] {
            let error = set_command(name, value).expect_err("refused");
            assert!(matches!(error.error_name(), ErrorName::ConfigurationError));
        }
        assert!(set_command("dns_max_ttl", &"x".repeat(253)).is_ok());
    }

    #[test]
    fn recognises_not_paused_answers() {
        assert!(means_not_paused("database app is not paused"));
        assert!(means_not_paused("database invoice lines is not paused"));
        assert!(means_not_paused("pooler is not paused/suspended"));
        assert!(!means_not_paused("no such database: app"));
        assert!(!means_not_paused("admin access needed"));
        assert!(!means_not_paused("already suspended/paused"));
    }
}
