//! The cell's PgBouncer fleet: finding every instance (the static list, or the ECS
//! service's running tasks) and logging in to their admin consoles — what pause and
//! resume both start from.

use std::fmt;
use std::time::Duration;

use crate::{Deps, Error};
use switchyard_aws::DbCredentials;
use switchyard_cell::{CellDocument, Discovery};
use switchyard_errors::ErrorName;
use switchyard_postgres::{PgBouncerAdmin, PgError, Tls};
use tokio::task::JoinSet;

/// How long logging in to one admin console may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One instance's admin console (which is also its client listener).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// How the listener is reached: verify-full when the fleet serves TLS (its certificate
    /// must name the address discovery yields), plain TCP inside the VPC otherwise.
    pub tls: Tls,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// `host:port`, IPv6 hosts in brackets (the cell document's validation checked the shape).
    fn parse(text: &str, tls: &Tls) -> Result<Self, Error> {
        let parsed = text.rsplit_once(':').and_then(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(Self {
                host: host.to_owned(),
                port: port.parse().ok()?,
                tls: tls.clone(),
            })
        });
        parsed.ok_or_else(|| {
            Error::stop(
                ErrorName::InvalidInput,
                format!("pgbouncer.discovery.static.hosts: {text:?} is not host:port"),
            )
        })
    }

    pub async fn connect(&self, login: &DbCredentials) -> Result<PgBouncerAdmin, PgError> {
        PgBouncerAdmin::connect(
            &self.host,
            self.port,
            &login.username,
            &login.password,
            &self.tls,
            CONNECT_TIMEOUT,
        )
        .await
    }
}

/// Every instance the cell's discovery names, in a stable order.
pub async fn discover(cell: &CellDocument, deps: &Deps) -> Result<Vec<Endpoint>, Error> {
    let tls = deps.pgbouncer_tls(cell)?;
    let mut endpoints = match &cell.pgbouncer.discovery {
        Discovery::Static { hosts } => hosts
            .iter()
            .map(|h| Endpoint::parse(h, &tls))
            .collect::<Result<Vec<_>, _>>()?,
        Discovery::EcsService {
            ecs_cluster,
            service,
            admin_port,
        } => {
            let tasks = switchyard_aws::running_tasks(&deps.aws.ecs, ecs_cluster, service).await?;
            let mut endpoints = Vec::new();
            for task in tasks {
                let host = task.private_ip.ok_or_else(|| {
                    Error::stop(
                        ErrorName::ConfigurationError,
                        format!("PgBouncer task {} of {ecs_cluster}/{service} reports no private IP: use awsvpc networking or static discovery", task.arn),
                    )
                })?;
                endpoints.push(Endpoint {
                    host,
                    port: *admin_port,
                    tls: tls.clone(),
                });
            }
            endpoints
        }
    };
    if endpoints.is_empty() {
        // Pausing or resuming nothing would silently leave clients writing to blue.
        return Err(Error::stop(
            ErrorName::ConfigurationError,
            "no PgBouncer instance found: check pgbouncer.discovery (is the ECS service running?)",
        ));
    }
    endpoints.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    endpoints.dedup();
    Ok(endpoints)
}

/// The admin console login, read from SSM at call time (once per invocation).
pub async fn admin_login(cell: &CellDocument, deps: &Deps) -> Result<DbCredentials, Error> {
    deps.login(&cell.pgbouncer.admin_credentials_parameter)
        .await
}

/// Logs in to every endpoint at once; the result keeps the endpoints' order. The error
/// names every instance that could not be reached.
pub async fn connect_all(
    endpoints: &[Endpoint],
    login: &DbCredentials,
) -> Result<Vec<PgBouncerAdmin>, Vec<(Endpoint, PgError)>> {
    let mut set = JoinSet::new();
    for (i, endpoint) in endpoints.iter().cloned().enumerate() {
        let login = login.clone();
        set.spawn(async move { (i, endpoint.connect(&login).await.map_err(|e| (endpoint, e))) });
    }
    let mut sessions: Vec<Option<PgBouncerAdmin>> = endpoints.iter().map(|_| None).collect();
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(admin))) => sessions[i] = Some(admin),
            Ok((_, Err(failure))) => failures.push(failure),
            // A login task panics only on a bug: propagate it.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    if failures.is_empty() {
        Ok(sessions.into_iter().flatten().collect())
    } else {
        Err(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_hosts_parse() {
        let e = Endpoint::parse("10.0.0.5:6432", &Tls::Disabled).expect("v4");
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.5", 6432));
        let e = Endpoint::parse("[::1]:6432", &Tls::Disabled).expect("v6");
        assert_eq!((e.host.as_str(), e.port), ("::1", 6432));
        assert_eq!(e.to_string(), "[::1]:6432");
        assert!(Endpoint::parse("pgbouncer", &Tls::Disabled).is_err());
    }
}
