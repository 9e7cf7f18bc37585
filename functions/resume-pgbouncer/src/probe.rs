//! The probe through PgBouncer: which server version does an application login reach?

use serde::Deserialize;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::{Deps, Error};
use switchyard_postgres::{connect, ConnectOptions};
use switchyard_telemetry::Secret;
use tokio_postgres::SimpleQueryMessage;

use switchyard_operation::fleet::{Endpoint, CONNECT_TIMEOUT};

/// An application role's parameter; only what the probe needs is read.
#[derive(Deserialize)]
struct RoleDocument {
    username: String,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    attributes: Vec<String>,
}

/// A login PgBouncer knows: the orchestrator is not in its auth file, application roles
/// are. The first (by parameter name) with a password and LOGIN.
pub(crate) struct Login {
    user: String,
    password: Secret,
}

pub(crate) async fn login(cell: &CellDocument, deps: &Deps) -> Result<Login, Error> {
    let path = &cell.credentials.application_roles_path;
    let mut pages = deps
        .aws
        .ssm
        .get_parameters_by_path()
        .path(path)
        .recursive(true)
        .with_decryption(true)
        .into_paginator()
        .send();
    let mut candidates = Vec::new();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| Error::aws(&format!("reading SSM parameters under {path}"), &e))?;
        for p in page.parameters() {
            // A parameter that is not a role document is sync-roles' business, not ours.
            if let Ok(doc) = serde_json::from_str::<RoleDocument>(p.value().unwrap_or_default()) {
                candidates.push((p.name().unwrap_or_default().to_owned(), doc));
            }
        }
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    candidates
        .into_iter()
        .find_map(|(_, doc)| {
            let can_login = doc.attributes.iter().any(|a| a.eq_ignore_ascii_case("LOGIN"));
            match doc.password {
                Some(password) if can_login => Some(Login {
                    user: doc.username,
                    password,
                }),
                _ => None,
            }
        })
        .ok_or_else(|| {
            Error::stop(
                ErrorName::SecretUnavailable,
                format!("no application role with LOGIN and a password under {path} to probe PgBouncer with; PgBouncer is resumed — probe by hand"),
            )
        })
}

/// `server_version_num` of the server `endpoint` reaches for `database`.
pub(crate) async fn server_version_num(
    endpoint: &Endpoint,
    database: &str,
    login: &Login,
) -> Result<i32, Error> {
    let options = ConnectOptions {
        host: endpoint.host.clone(),
        port: endpoint.port,
        dbname: database.to_owned(),
        user: login.user.clone(),
        password: login.password.clone(),
        // The same transport as the admin console, which shares this listener.
        tls: endpoint.tls.clone(),
        application_name: "switchyard-probe".to_owned(),
        connect_timeout: CONNECT_TIMEOUT,
    };
    let client = connect(&options).await?;
    let what = format!("probing the server version through PgBouncer {endpoint}");
    // Simple protocol: a named prepared statement may not survive transaction pooling.
    let messages = client
        .simple_query("SELECT current_setting('server_version_num')")
        .await
        .map_err(|e| Error::query(&what, e))?;
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    value
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Error::stop(
                ErrorName::DatabaseError,
                format!("{what}: server_version_num reads {value:?}"),
            )
        })
}
