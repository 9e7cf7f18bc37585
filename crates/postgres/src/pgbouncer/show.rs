//! The rows of the admin console's SHOW commands, read by column name.
//!
//! Columns come and go between PgBouncer versions (1.24 added `load_balance_hosts`,
//! `server_lifetime`, client-connection limits; renamed `reserve_pool`), so nothing is
//! read by position. A column is required only if every version from 1.18 to 1.24 has
//! it (checked against their `admin.c`); anything else is optional and unknown columns
//! are ignored.

use std::str::FromStr;
use std::time::Duration;

/// One row as the console sent it: column names and text values (`None` for NULL).
pub(crate) type Record = Vec<(String, Option<String>)>;

/// A row of `SHOW DATABASES`: one entry of the `[databases]` section (the admin
/// console's own `pgbouncer` database included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRow {
    /// The name clients connect to, and the name PAUSE/RESUME take.
    pub name: String,
    /// The server host; `None` for a Unix socket default.
    pub host: Option<String>,
    pub port: u16,
    /// The database name on the server.
    pub database: Option<String>,
    /// `None` when the database inherits the global `pool_mode`.
    pub pool_mode: Option<String>,
    /// Server connections currently open for this database.
    pub current_connections: u32,
    pub paused: bool,
    pub disabled: bool,
}

/// A row of `SHOW CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRow {
    pub key: String,
    /// As PgBouncer prints it; an unset setting reads as empty.
    pub value: String,
}

/// A row of `SHOW SERVERS` or `SHOW CLIENTS` (PgBouncer prints both alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRow {
    pub user: String,
    pub database: String,
    /// e.g. `active`, `idle`, `used`, `waiting`, `login`.
    pub state: String,
    /// The peer's address: for a server, the address PgBouncer actually connected to —
    /// what tells whether it still talks to the old cluster after a rename.
    pub addr: String,
    pub port: u16,
    pub application_name: Option<String>,
    /// Set when the connection will be closed once released (after RECONNECT).
    pub close_needed: bool,
}

/// A row of `SHOW DNS_HOSTS`: PgBouncer's cached answer for one host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHostRow {
    pub hostname: String,
    /// Seconds until the cached answer expires (0 once expired).
    pub ttl: u64,
    /// The cached addresses as PgBouncer prints them; empty for a cached failure.
    pub addrs: Vec<String>,
}

/// A row of `SHOW POOLS`: one (database, user) pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub database: String,
    pub user: String,
    pub cl_active: u32,
    /// Clients queued for a server connection — they pile up here during a PAUSE.
    pub cl_waiting: u32,
    pub sv_active: u32,
    pub sv_idle: u32,
    pub sv_used: u32,
    pub sv_tested: u32,
    pub sv_login: u32,
    /// How long the oldest waiting client has waited.
    pub maxwait: Duration,
    pub pool_mode: Option<String>,
}

/// Reads each record as a `T`; the error says which column was wrong.
pub(crate) fn parse<T: FromFields>(records: &[Record]) -> Result<Vec<T>, String> {
    records
        .iter()
        .enumerate()
        .map(|(index, cells)| {
            T::from_fields(&Fields(cells)).map_err(|e| format!("row {}: {e}", index + 1))
        })
        .collect()
}

pub(crate) trait FromFields: Sized {
    fn from_fields(fields: &Fields<'_>) -> Result<Self, String>;
}

pub(crate) struct Fields<'a>(&'a [(String, Option<String>)]);

impl Fields<'_> {
    /// `None` if the column is absent; `Some(None)` if it is NULL.
    fn cell(&self, column: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, value)| value.as_deref())
    }

    fn text(&self, column: &str) -> Result<String, String> {
        match self.cell(column) {
            Some(Some(value)) => Ok(value.to_owned()),
            Some(None) => Err(format!("column `{column}` is NULL")),
            None => Err(format!("column `{column}` is missing")),
        }
    }

    /// Absent, NULL and empty all read as `None`.
    fn optional_text(&self, column: &str) -> Option<String> {
        self.cell(column)
            .flatten()
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    }

    fn number<T: FromStr>(&self, column: &str) -> Result<T, String> {
        let text = self.text(column)?;
        text.parse()
            .map_err(|_| format!("column `{column}` holds {text:?}, not a number in range"))
    }

    fn optional_number<T: FromStr>(&self, column: &str) -> Result<Option<T>, String> {
        match self.cell(column).flatten() {
            None => Ok(None),
            Some(_) => self.number(column).map(Some),
        }
    }

    fn flag(&self, column: &str) -> Result<bool, String> {
        match self.text(column)?.as_str() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(format!("column `{column}` holds {other:?}, not 0 or 1")),
        }
    }
}

impl FromFields for DatabaseRow {
    fn from_fields(f: &Fields<'_>) -> Result<Self, String> {
        Ok(Self {
            name: f.text("name")?,
            host: f.optional_text("host"),
            port: f.number("port")?,
            database: f.optional_text("database"),
            pool_mode: f.optional_text("pool_mode"),
            current_connections: f.number("current_connections")?,
            paused: f.flag("paused")?,
            disabled: f.flag("disabled")?,
        })
    }
}

impl FromFields for ConfigRow {
    fn from_fields(f: &Fields<'_>) -> Result<Self, String> {
        Ok(Self {
            key: f.text("key")?,
            value: f.optional_text("value").unwrap_or_default(),
        })
    }
}

impl FromFields for SocketRow {
    fn from_fields(f: &Fields<'_>) -> Result<Self, String> {
        Ok(Self {
            user: f.text("user")?,
            database: f.text("database")?,
            state: f.text("state")?,
            addr: f.text("addr")?,
            port: f.number("port")?,
            application_name: f.optional_text("application_name"),
            close_needed: f.flag("close_needed")?,
        })
    }
}

impl FromFields for DnsHostRow {
    fn from_fields(f: &Fields<'_>) -> Result<Self, String> {
        Ok(Self {
            hostname: f.text("hostname")?,
            ttl: f.number("ttl")?,
            addrs: f
                .optional_text("addrs")
                .map(|list| list.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }
}

impl FromFields for PoolRow {
    fn from_fields(f: &Fields<'_>) -> Result<Self, String> {
        let seconds: u64 = f.number("maxwait")?;
        let micros: u64 = f.optional_number("maxwait_us")?.unwrap_or(0);
        Ok(Self {
            database: f.text("database")?,
            user: f.text("user")?,
            cl_active: f.number("cl_active")?,
            cl_waiting: f.number("cl_waiting")?,
            sv_active: f.number("sv_active")?,
            sv_idle: f.number("sv_idle")?,
            sv_used: f.number("sv_used")?,
            sv_tested: f.number("sv_tested")?,
            sv_login: f.number("sv_login")?,
            maxwait: Duration::from_secs(seconds) + Duration::from_micros(micros),
            pool_mode: f.optional_text("pool_mode"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a record from parallel column and value lists; `"\0"` stands for NULL.
    fn record(columns: &str, values: &[&str]) -> Record {
        let columns: Vec<&str> = columns.split_whitespace().collect();
        assert_eq!(columns.len(), values.len(), "test row shape");
        columns
            .into_iter()
            .zip(values)
            .map(|(c, v)| (c.to_owned(), (*v != "\0").then(|| (*v).to_owned())))
            .collect()
    }

    const DATABASES_1_18: &str = "name host port database force_user pool_size min_pool_size \
        reserve_pool pool_mode max_connections current_connections paused disabled";
    const DATABASES_1_24: &str = "name host port database force_user pool_size min_pool_size \
        reserve_pool_size server_lifetime pool_mode load_balance_hosts max_connections \
        current_connections max_client_connections current_client_connections paused disabled";

    #[test]
    fn databases_in_1_18_and_1_24() {
        let old = record(
            DATABASES_1_18,
            &[
                "app",
                "blue.cluster.internal",
                "5432",
                "app",
                "\0",
                "20",
                "0",
                "0",
                "\0",
                "0",
                "3",
                "1",
                "0",
            ],
        );
        let admin = record(
            DATABASES_1_18,
            &[
                "pgbouncer",
                "\0",
                "6432",
                "pgbouncer",
                "pgbouncer",
                "2",
                "0",
                "0",
                "statement",
                "0",
                "0",
                "0",
                "0",
            ],
        );
        let new = record(
            DATABASES_1_24,
            &[
                "app",
                "blue.cluster.internal",
                "5432",
                "app",
                "\0",
                "20",
                "0",
                "0",
                "3600",
                "\0",
                "\0",
                "0",
                "3",
                "0",
                "7",
                "1",
                "0",
            ],
        );
        let expected_app = DatabaseRow {
            name: "app".into(),
            host: Some("blue.cluster.internal".into()),
            port: 5432,
            database: Some("app".into()),
            pool_mode: None,
            current_connections: 3,
            paused: true,
            disabled: false,
        };
        let rows: Vec<DatabaseRow> = parse(&[old, admin]).expect("1.18 rows");
        assert_eq!(rows[0], expected_app);
        assert_eq!(rows[1].name, "pgbouncer");
        assert_eq!(rows[1].host, None);
        assert_eq!(rows[1].pool_mode.as_deref(), Some("statement"));
        let rows: Vec<DatabaseRow> = parse(&[new]).expect("1.24 rows");
        assert_eq!(rows, vec![expected_app]);
    }

    #[test]
    fn rejects_a_missing_or_malformed_required_column() {
        let missing = record(
            "name host port current_connections disabled",
            &["app", "h", "5432", "0", "0"],
        );
        let error = parse::<DatabaseRow>(&[missing]).expect_err("no paused column");
        assert_eq!(error, "row 1: column `paused` is missing");

        let bad_flag = record(
            "name port current_connections paused disabled",
            &["app", "5432", "0", "yes", "0"],
        );
        let error = parse::<DatabaseRow>(&[bad_flag]).expect_err("bad flag");
        assert!(error.contains("`paused` holds \"yes\""), "{error}");

        let bad_port = record(
            "name port current_connections paused disabled",
            &["app", "70000", "0", "0", "0"],
        );
        let error = parse::<DatabaseRow>(&[bad_port]).expect_err("port out of range");
        assert!(error.contains("`port` holds \"70000\""), "{error}");

        let null_name = record(
            "name port current_connections paused disabled",
            &["\0", "5432", "0", "0", "0"],
        );
        let error = parse::<DatabaseRow>(&[null_name]).expect_err("null name");
        assert_eq!(error, "row 1: column `name` is NULL");
    }

    #[test]
    fn config_rows() {
        let rows: Vec<ConfigRow> = parse(&[
            record(
                "key value default changeable",
                &["dns_max_ttl", "15", "15", "yes"],
            ),
            record(
                "key value default changeable",
                &["unix_socket_dir", "", "/tmp", "no"],
            ),
            record("key value", &["query_wait_timeout", "\0"]),
        ])
        .expect("config rows");
        assert_eq!(
            rows,
            vec![
                ConfigRow {
                    key: "dns_max_ttl".into(),
                    value: "15".into()
                },
                ConfigRow {
                    key: "unix_socket_dir".into(),
                    value: String::new()
                },
                ConfigRow {
                    key: "query_wait_timeout".into(),
                    value: String::new()
                },
            ]
        );
    }

    const SOCKETS_1_18: &str = "type user database state addr port local_addr local_port \
        connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name";
    const SOCKETS_1_24: &str = "type user database replication state addr port local_addr \
        local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls \
        application_name prepared_statements id";

    #[test]
    fn socket_rows_in_1_18_and_1_24() {
        let old = record(
            SOCKETS_1_18,
            &[
                "S",
                "app",
                "app",
                "idle",
                "10.0.1.17",
                "5432",
                "10.0.2.5",
                "40112",
                "2024-05-01 10:00:00 UTC",
                "2024-05-01 10:00:01 UTC",
                "0",
                "0",
                "1",
                "0x1",
                "",
                "4242",
                "TLSv1.3/TLS_AES_256_GCM_SHA384",
                "",
            ],
        );
        let new = record(
            SOCKETS_1_24,
            &[
                "C",
                "app",
                "app",
                "none",
                "active",
                "10.0.3.9",
                "51000",
                "10.0.2.5",
                "6432",
                "2024-05-01 10:00:00 UTC",
                "2024-05-01 10:00:01 UTC",
                "0",
                "0",
                "0",
                "0x2",
                "0x1",
                "0",
                "",
                "orders-api",
                "0",
                "12",
            ],
        );
        let rows: Vec<SocketRow> = parse(&[old, new]).expect("socket rows");
        assert_eq!(
            rows,
            vec![
                SocketRow {
                    user: "app".into(),
                    database: "app".into(),
                    state: "idle".into(),
                    addr: "10.0.1.17".into(),
                    port: 5432,
                    application_name: None,
                    close_needed: true,
                },
                SocketRow {
                    user: "app".into(),
                    database: "app".into(),
                    state: "active".into(),
                    addr: "10.0.3.9".into(),
                    port: 51000,
                    application_name: Some("orders-api".into()),
                    close_needed: false,
                },
            ]
        );
    }

    #[test]
    fn dns_host_rows() {
        let rows: Vec<DnsHostRow> = parse(&[
            record(
                "hostname ttl addrs",
                &[
                    "blue.cluster.internal",
                    "12",
                    "10.0.1.17:5432,10.0.1.18:5432",
                ],
            ),
            record("hostname ttl addrs", &["gone.cluster.internal", "0", ""]),
        ])
        .expect("dns rows");
        assert_eq!(rows[0].addrs, vec!["10.0.1.17:5432", "10.0.1.18:5432"]);
        assert_eq!(rows[0].ttl, 12);
        assert_eq!(rows[1].addrs, Vec::<String>::new());
        assert_eq!(rows[1].hostname, "gone.cluster.internal");
    }

    const POOLS_1_18: &str = "database user cl_active cl_waiting cl_active_cancel_req \
        cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used \
        sv_tested sv_login maxwait maxwait_us pool_mode";

    #[test]
    fn pool_rows() {
        let mut columns = POOLS_1_18.to_owned();
        columns.push_str(" load_balance_hosts");
        let rows: Vec<PoolRow> = parse(&[record(
            &columns,
            &[
                "app",
                "app",
                "2",
                "5",
                "0",
                "0",
                "1",
                "0",
                "0",
                "3",
                "0",
                "0",
                "0",
                "2",
                "250000",
                "transaction",
                "\0",
            ],
        )])
        .expect("pool rows");
        assert_eq!(
            rows,
            vec![PoolRow {
                database: "app".into(),
                user: "app".into(),
                cl_active: 2,
                cl_waiting: 5,
                sv_active: 1,
                sv_idle: 3,
                sv_used: 0,
                sv_tested: 0,
                sv_login: 0,
                maxwait: Duration::from_millis(2250),
                pool_mode: Some("transaction".into()),
            }]
        );
        let negative = record(
            POOLS_1_18,
            &[
                "app", "app", "-1", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0",
                "session",
            ],
        );
        assert!(parse::<PoolRow>(&[negative]).is_err());
    }
}
