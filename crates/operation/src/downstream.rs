//! What both downstream operations share: the login to a downstream database, the
//! journaled definition of one of its subscriptions, and the conninfo parsing that keeps
//! the password out of that definition.

use std::time::Duration;

use crate::{Deps, Error};
use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, Downstream};
use switchyard_errors::ErrorName;
use switchyard_postgres::{quote, ConnectOptions};
use tokio_postgres::Client;

/// How long a connection attempt to the downstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The journal key of `subscription` of `downstream`.
fn journal_key(downstream: &Downstream, subscription: &str) -> String {
    format!("downstream/{}/{subscription}", downstream.name)
}

/// A dropped subscription, as `recreate-downstream-subscriptions` needs it back, and the
/// evidence that the downstream misses nothing: its slot on blue had confirmed the
/// frozen position before the drop, and (once recreated) its new slot is on the new
/// primary. Never holds the password: that stays in `publisher_credentials_parameter`.
///
/// Written by `drop-downstream-subscriptions` (before it drops), completed by
/// `recreate-downstream-subscriptions`, read by `resume-pgbouncer` before the switch and by
/// `preflight`; only through [`Journaled::read`] and [`Journaled::write`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Journaled {
    /// The run that dropped it: no other run acts on this entry.
    pub run_id: String,
    pub publications: Vec<String>,
    pub slot_name: String,
    pub binary: bool,
    /// `off`, `on` or `parallel` (PG16+).
    pub streaming: String,
    pub enabled: bool,
    /// `any` or `none`; `None` before PG16, which has no such option.
    pub origin: Option<String>,
    pub connection: Target,
    /// Blue's WAL position after the freeze: everything the downstream must hold.
    pub freeze_lsn: String,
    /// The slot's `confirmed_flush_lsn` on blue when it was checked (≥ `freeze_lsn`).
    pub confirmed_lsn: String,
    /// RFC 3339, UTC: when the definition was recorded.
    pub recorded_at: String,
    /// Set by `recreate-downstream-subscriptions` once the subscription exists again,
    /// reading a slot of that name on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreated: Option<Recreated>,
}

/// Where a journaled subscription was created again.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recreated {
    /// `DbClusterResourceId` of the cluster holding the cell's identifier then (green's
    /// after the switch, blue's after an abort).
    pub primary_resource_id: String,
    /// RFC 3339, UTC.
    pub at: String,
}

impl Journaled {
    /// The entry of `subscription` of `downstream`, whichever run wrote it.
    pub async fn read(
        deps: &Deps,
        cell: &CellDocument,
        downstream: &Downstream,
        subscription: &str,
    ) -> Result<Option<Self>, Error> {
        deps.journal(cell)
            .read(&journal_key(downstream, subscription))
            .await
    }

    /// Writes (replaces) the entry of `subscription` of `downstream`.
    pub async fn write(
        &self,
        deps: &Deps,
        cell: &CellDocument,
        downstream: &Downstream,
        subscription: &str,
    ) -> Result<(), Error> {
        deps.journal(cell)
            .write(&journal_key(downstream, subscription), self)
            .await
    }

    /// The SSM parameter of `subscription` of `downstream`, for messages and plans.
    pub fn parameter(
        deps: &Deps,
        cell: &CellDocument,
        downstream: &Downstream,
        subscription: &str,
    ) -> String {
        deps.journal(cell)
            .parameter(&journal_key(downstream, subscription))
    }

    /// Its slot on blue had confirmed the frozen position when it was dropped: the
    /// downstream holds everything written before the freeze.
    pub fn held_everything(&self) -> bool {
        match (lsn(&self.confirmed_lsn), lsn(&self.freeze_lsn)) {
            (Some(confirmed), Some(freeze)) => confirmed >= freeze,
            _ => false,
        }
    }

    /// `PreconditionFailed` unless run `run_id` wrote it: a function never acts on another
    /// run's entry (an earlier run's "already dropped" must not steer this one).
    pub fn of_run(self, run_id: &str, force: bool, what: &str) -> Result<Self, Error> {
        if self.run_id == run_id || force {
            return Ok(self);
        }
        Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "{what} was journaled by run {} at {}, not by this run {run_id}: find out what became of it (is it subscribed anywhere? does the downstream hold every row?) and recreate it by hand, or act as that run",
                self.run_id, self.recorded_at
            ),
        ))
    }
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

/// An LSN as PostgreSQL prints it (`3/4A0012F8`), as a number.
fn lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
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
    let login = deps.login(&downstream.credentials_parameter).await?;
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

/// How long [`hold`] waits for another step holding the same subscription.
const HOLD_WAIT: Duration = Duration::from_secs(60);

/// Holds subscription `name` on the downstream for this session, so that a drop (forward)
/// and a recreate (abort) of it never interleave: a session-level advisory lock, released
/// by [`release`] or when the session ends (a crash included). Each side re-reads the run's
/// decision *after* taking it, and the abort side marks the run aborting *before* — so a
/// drop still in flight when the abort path starts either finishes before the recreate
/// looks, or sees the abort and drops nothing.
pub async fn hold(client: &Client, name: &str) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    loop {
        let taken: bool = client
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('switchyard.downstream'), pg_catalog.hashtext($1))",
                &[&name],
            )
            .await
            .map_err(|e| Error::query(format!("locking subscription {}", quote::name(name)), e))?
            .get(0);
        if taken {
            return Ok(());
        }
        if started.elapsed() >= HOLD_WAIT {
            return Err(Error::stop(
                ErrorName::DatabaseUnavailable,
                format!(
                    "another switchyard step has held subscription {} for {}s; retry",
                    quote::name(name),
                    HOLD_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Releases what [`hold`] took.
pub async fn release(client: &Client, name: &str) -> Result<(), Error> {
    client
        .query_one(
            "SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('switchyard.downstream'), pg_catalog.hashtext($1))",
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("unlocking subscription {}", quote::name(name)), e))?;
    Ok(())
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
        .map_err(|e| Error::query(format!("looking up subscription {}", quote::name(name)), e))?;
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
    fn lsns_compare_as_numbers() {
        assert_eq!(lsn("0/0"), Some(0));
        assert_eq!(lsn("3/4A0012F8"), Some((3 << 32) | 0x4A00_12F8));
        assert!(lsn("A/0") > lsn("9/FFFFFFFF"), "not as text");
        assert_eq!(lsn("nope"), None);
    }

    #[test]
    fn conninfo_parsing_refuses_what_it_cannot_read() {
        assert!(Target::from_conninfo("postgresql://u@h/db").is_err());
        assert!(Target::from_conninfo("host=h dbname='open user=u").is_err());
        assert!(Target::from_conninfo("host=h dbname=d").is_err());
    }
}
