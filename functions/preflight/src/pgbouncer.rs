//! PgBouncer: every instance must hold clients queued by the pause for longer than the
//! pause budget, or its janitor drops them (`query_wait_timeout`).

use std::time::Duration;

use switchyard_cell::{CellDocument, Discovery};
use switchyard_operation::{Deps, Error};
use switchyard_postgres::PgBouncerAdmin;

use crate::finding::{Code, Finding};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Findings for every PgBouncer instance of the cell.
pub async fn check(cell: &CellDocument, deps: &Deps) -> Result<Vec<Finding>, Error> {
    let hosts = match discover(cell, deps).await? {
        Ok(hosts) => hosts,
        Err(finding) => return Ok(vec![finding]),
    };
    let login = deps
        .login(&cell.pgbouncer.admin_credentials_parameter)
        .await?;
    // Clients queue for the whole pause, and for the abort path after a pause that ran
    // its budget out.
    let pause = cell.budgets.pause_seconds + cell.budgets.abort_seconds;
    let tls = deps.pgbouncer_tls(cell)?;
    let mut findings = Vec::new();
    for endpoint in hosts {
        let Some((host, port)) = split_host_port(&endpoint) else {
            findings.push(unreachable(&endpoint, "it is not host:port".to_owned()));
            continue;
        };
        let value = match PgBouncerAdmin::connect(
            host,
            port,
            &login.username,
            &login.password,
            &tls,
            CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(admin) => admin.config_value("query_wait_timeout").await,
            Err(e) => Err(e),
        };
        match value {
            Ok(value) => findings.extend(query_wait_timeout(&endpoint, value.as_deref(), pause)),
            Err(e) => findings.push(unreachable(&endpoint, e.to_string())),
        }
    }
    Ok(findings)
}

/// The admin endpoints (`host:port`): the static list, or each running ECS task's
/// private address with the admin port. No task found is a finding, not an error.
async fn discover(cell: &CellDocument, deps: &Deps) -> Result<Result<Vec<String>, Finding>, Error> {
    let (ecs_cluster, service, admin_port) = match &cell.pgbouncer.discovery {
        Discovery::Static { hosts } => return Ok(Ok(hosts.clone())),
        Discovery::EcsService {
            ecs_cluster,
            service,
            admin_port,
        } => (ecs_cluster, service, *admin_port),
    };
    let tasks = switchyard_aws::running_tasks(&deps.aws.ecs, ecs_cluster, service).await?;
    let mut hosts = Vec::new();
    let mut without_address = Vec::new();
    for task in tasks {
        match task.private_ip {
            Some(ip) => hosts.push(format!("{ip}:{admin_port}")),
            None => without_address.push(task.arn),
        }
    }
    let object = format!("pgbouncer ECS service {ecs_cluster}/{service}");
    if !without_address.is_empty() {
        return Ok(Err(Finding::new(
            Code::PgbouncerUnreachable,
            std::iter::once(object).chain(without_address).collect(),
            "These PgBouncer tasks report no private IPv4 address, so they cannot be paused.",
            "Run PgBouncer tasks in awsvpc network mode (or list the instances under pgbouncer.discovery.static).",
        )));
    }
    if hosts.is_empty() {
        return Ok(Err(Finding::new(
            Code::PgbouncerUnreachable,
            vec![object],
            "The PgBouncer service has no running task: the switchover would pause nothing.",
            "Start the service's tasks, or fix pgbouncer.discovery in the cell document.",
        )));
    }
    Ok(Ok(hosts))
}

/// `host:port`, with an IPv6 host in brackets.
fn split_host_port(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

fn unreachable(endpoint: &str, why: String) -> Finding {
    Finding::new(
        Code::PgbouncerUnreachable,
        vec![format!("pgbouncer {endpoint}")],
        format!("Could not read this PgBouncer's configuration ({why}); the switchover must pause every instance."),
        "Make the admin console reachable from switchyard with the admin credentials in the cell's SSM parameter, or remove the instance from discovery.",
    )
}

/// `query_wait_timeout` in seconds as `SHOW CONFIG` prints it (`120`; tolerating `120s`).
fn seconds(value: &str) -> Option<f64> {
    let value = value.trim();
    value.strip_suffix('s').unwrap_or(value).trim().parse().ok()
}

/// The pause holds clients for up to `pause_seconds` (the pause budget plus the abort
/// budget); PgBouncer drops those that wait longer than `query_wait_timeout` (0: never).
fn query_wait_timeout(endpoint: &str, value: Option<&str>, pause_seconds: u64) -> Option<Finding> {
    // Seconds budgets are small: f64 holds them exactly.
    let pause = pause_seconds as f64;
    let detail = match value.map(|v| (v, seconds(v))) {
        Some((_, Some(timeout))) if timeout == 0.0 || timeout > pause => return None,
        Some((v, Some(_))) => format!(
            "query_wait_timeout is {v} s, not above the pause and abort budgets together ({pause_seconds} s): clients queued by the pause would be dropped with an error."
        ),
        Some((v, None)) => format!("query_wait_timeout is {v:?}, which is not a number of seconds."),
        None => "This PgBouncer does not report query_wait_timeout.".to_owned(),
    };
    Some(Finding::new(
        Code::PgbouncerQueryWaitTimeout,
        vec![format!("pgbouncer {endpoint}: query_wait_timeout")],
        detail,
        format!(
            "Set query_wait_timeout above {pause_seconds} (e.g. {}) in pgbouncer.ini and RELOAD, or lower budgets.pause_seconds / budgets.abort_seconds.",
            pause_seconds * 2
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_wait_timeout_must_exceed_the_pause() {
        assert_eq!(query_wait_timeout("h:1", Some("120"), 60), None);
        assert_eq!(
            query_wait_timeout("h:1", Some("0"), 60),
            None,
            "0 waits forever"
        );
        assert_eq!(query_wait_timeout("h:1", Some("61s"), 60), None);
        for value in ["60", "30", "abc"] {
            let finding = query_wait_timeout("h:1", Some(value), 60).expect("blocker");
            assert_eq!(finding.code, Code::PgbouncerQueryWaitTimeout);
            assert_eq!(finding.objects, ["pgbouncer h:1: query_wait_timeout"]);
        }
        assert!(query_wait_timeout("h:1", None, 60).is_some());
    }

    #[test]
    fn host_ports_split_like_the_cell_document_writes_them() {
        assert_eq!(split_host_port("127.0.0.1:6432"), Some(("127.0.0.1", 6432)));
        assert_eq!(split_host_port("[::1]:6432"), Some(("::1", 6432)));
        assert_eq!(split_host_port("pgbouncer.internal:x"), None);
    }
}
