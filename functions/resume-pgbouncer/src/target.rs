//! Before RESUME: would this instance connect where the database's host points now, and
//! does that host lead to the cluster holding the cell's identifier?
//!
//! After the rename blue's endpoint name resolves to green — minutes after the API says so:
//! until then it leads to the old cluster, or nowhere. PgBouncer may also still hold a
//! server connection, or a cached DNS answer, for the old address. Any of these would send
//! the first writes to the old cluster (where revoked writes fail them loudly). So a new
//! connection is made to the host each database names, as PgBouncer's next server
//! connection would be, and the server it reaches must be the cluster the RDS API says
//! holds the cell's identifier (green forward, blue on the abort path).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fleet::Endpoint;
use switchyard_operation::{Deps, Error, Side};
use switchyard_postgres::PgBouncerAdmin;

pub(crate) async fn check(
    cell: &CellDocument,
    deps: &Deps,
    endpoint: &Endpoint,
    admin: &PgBouncerAdmin,
) -> Result<(), Error> {
    let databases = &cell.pgbouncer.databases;
    let rows = admin.show_databases().await?;
    let servers = admin.show_servers().await?;
    let dns = admin.show_dns_hosts().await?;
    for db in databases {
        let Some(row) = rows.iter().find(|r| &r.name == db) else {
            return Err(Error::stop(
                ErrorName::ConfigurationError,
                format!("PgBouncer {endpoint} has no database {db:?}: check pgbouncer.databases"),
            ));
        };
        let Some(host) = row.host.as_deref() else {
            // A Unix socket on the PgBouncer host: no address can be stale.
            continue;
        };
        let (expected, cached) = match host.parse::<IpAddr>() {
            // An address is used as written: nothing to resolve, nothing cached.
            Ok(ip) => (BTreeSet::from([ip]), Vec::new()),
            Err(_) => {
                let resolved = resolve(host, row.port).await?;
                let cached: Vec<&str> = dns
                    .iter()
                    .filter(|d| d.hostname.eq_ignore_ascii_case(host) && d.ttl > 0)
                    .flat_map(|d| d.addrs.iter().map(String::as_str))
                    .collect();
                (resolved, cached)
            }
        };
        let in_use = servers
            .iter()
            .filter(|s| &s.database == db)
            .map(|s| s.addr.as_str());
        let stale: BTreeSet<&str> = in_use
            .chain(cached)
            .filter(|addr| parse_ip(addr).is_none_or(|ip| !expected.contains(&ip)))
            .collect();
        if !stale.is_empty() {
            let expected: Vec<String> = expected.iter().map(ToString::to_string).collect();
            return Err(Error::stop(
                ErrorName::ClusterNotAvailable,
                format!(
                    "PgBouncer {endpoint} would reach {db} at {} but {host} resolves to {}; nothing was resumed: retry once its DNS cache expires (dns_max_ttl), or RECONNECT {db} there",
                    stale.into_iter().collect::<Vec<_>>().join(", "),
                    expected.join(", ")
                ),
            ));
        }
        let dbname = row.database.as_deref().unwrap_or(db);
        deps.dial_checked(cell, Side::Blue.identifier(cell), host, row.port, dbname)
            .await
            .map_err(|e| {
                Error::stop(
                    switchyard_errors::Catalogued::error_name(&e),
                    format!("PgBouncer {endpoint}'s next server connection for {db} (to {host}:{}) would not reach the cluster holding {}: {e}; nothing was resumed", row.port, Side::Blue.identifier(cell)),
                )
            })?;
    }
    Ok(())
}

/// What `host` resolves to from here (the orchestrator shares PgBouncer's VPC resolver).
async fn resolve(host: &str, port: u16) -> Result<BTreeSet<IpAddr>, Error> {
    let not_resolved = |why: String| {
        Error::stop(
            ErrorName::ClusterNotAvailable,
            format!("{host} does not resolve ({why}); nothing was resumed: retry once the renamed endpoint resolves"),
        )
    };
    let addrs: BTreeSet<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| not_resolved(e.to_string()))?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(not_resolved("no addresses".to_owned()));
    }
    Ok(addrs)
}

/// PgBouncer prints an address bare or with a port.
fn parse_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<IpAddr>()
        .ok()
        .or_else(|| addr.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_bare_or_with_a_port() {
        let local = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(parse_ip("127.0.0.1"), Some(local));
        assert_eq!(parse_ip("127.0.0.1:5432"), Some(local));
        assert!(parse_ip("[::1]:5432").is_some_and(|ip| ip.is_loopback()));
        assert_eq!(parse_ip("unix"), None);
    }
}
