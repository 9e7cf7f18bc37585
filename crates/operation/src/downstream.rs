//! What both downstream operations share: the login to a downstream database, the
//! journaled definition of one of its subscriptions, and the conninfo parsing that keeps
//! the password out of that definition.

use std::time::Duration;

use crate::{Deps, Error};
use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, Downstream};
use switchyard_errors::ErrorName;
use switchyard_postgres::ConnectOptions;
use tokio_postgres::Client;

/// How long a connection attempt to the downstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The journal key of `subscription` of `downstream`.
pub fn journal_key(downstream: &Downstream, subscription: &str) -> String {
    format!("downstream/{}/{subscription}", downstream.name)
}

/// A dropped subscription, as `recreate-downstream-subscriptions` needs it back. Never
/// holds the password: that stays in `publisher_credentials_parameter`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Journaled {
    pub publications: Vec<String>,
    pub slot_name: String,
    pub binary: bool,
    /// `off`, `on` or `parallel` (PG16+).
    pub streaming: String,
    pub enabled: bool,
    /// `any` or `none`; `None` before PG16, which has no such option.
    pub origin: Option<String>,
    pub connection: Target,
    /// The slot's `confirmed_flush_lsn` on blue when it was checked.
    pub confirmed_lsn: String,
    /// RFC 3339, UTC: when the definition was recorded.
    pub recorded_at: String,
}

/// Where the subscription logs in to the publisher: the conninfo without its password.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
}

impl Target {
    /// Reads the parts of a `key=value` conninfo that say where to connect; every other
    /// key, the password first of all, is dropped.
    pub fn from_conninfo(conninfo: &str) -> Result<Self, String> {
        let pairs = parse_conninfo(conninfo)?;
        let get = |key: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let port = get("port").unwrap_or_else(|| "5432".to_owned());
        Ok(Self {
            host: get("host").ok_or("it names no host")?,
            port: port.parse().map_err(|_| "its port is not a number")?,
            dbname: get("dbname").ok_or("it names no dbname")?,
            user: get("user").ok_or("it names no user")?,
            sslmode: get("sslmode"),
            sslrootcert: get("sslrootcert"),
        })
    }
}

/// Splits a libpq `key = value` string; values may be single-quoted, `\` escapes.
fn parse_conninfo(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let mut chars = conninfo.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "key {key:?} has no '=' (URI connection strings are not supported)"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of {key:?} is not closed")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// Logs in to `downstream`'s database as its admin (read from SSM now).
pub async fn connect(
    cell: &CellDocument,
    downstream: &Downstream,
    deps: &Deps,
) -> Result<Client, Error> {
    let (host, port) = downstream
        .endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            Error::stop(
                ErrorName::ConfigurationError,
                format!(
                    "downstream {}: endpoint is not host:port; fix the cell document",
                    downstream.name
                ),
            )
        })?;
    let login =
        switchyard_aws::read_credentials(&deps.aws.ssm, &downstream.credentials_parameter).await?;
    let options = ConnectOptions {
        host: host.to_owned(),
        port,
        dbname: downstream.database.clone(),
        user: login.username,
        password: login.password,
        tls: deps.tls(cell)?,
        application_name: "switchyard".to_owned(),
        connect_timeout: CONNECT_TIMEOUT,
    };
    Ok(switchyard_postgres::connect(&options).await?)
}

/// Whether `name` exists in the downstream's database.
pub async fn exists(client: &Client, name: &str) -> Result<bool, Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
             WHERE d.datname = current_database() AND s.subname = $1)",
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("looking up subscription {name}"), e))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parsing_keeps_the_target_and_drops_the_password() {
        let target = Target::from_conninfo(
            r"host=nlb.internal port = 5433 dbname='app db' user=search_replicator password='p@ss!\'w:/rd' sslmode=verify-full",
        )
        .expect("parses");
        assert_eq!(
            target,
            Target {
                host: "nlb.internal".to_owned(),
                port: 5433,
                dbname: "app db".to_owned(),
                user: "search_replicator".to_owned(),
                sslmode: Some("verify-full".to_owned()),
                sslrootcert: None,
            }
        );
        assert!(!serde_json::to_string(&target)
            .expect("json")
            .contains("p@ss"));
    }

    #[test]
    fn conninfo_parsing_refuses_what_it_cannot_read() {
        assert!(Target::from_conninfo("postgresql://u@h/db").is_err());
        assert!(Target::from_conninfo("host=h dbname='open user=u").is_err());
        assert!(Target::from_conninfo("host=h dbname=d").is_err());
    }
}
