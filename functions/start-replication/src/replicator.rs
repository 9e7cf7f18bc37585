//! The login green's subscriptions use on blue: a role of its own (`replication.role`),
//! never the orchestrator. It can stream (`REPLICATION`, or `rds_replication` on Aurora)
//! and read the published tables for the initial copy, nothing else.
//!
//! Its password is rotated once per run and kept in SSM (`replication.credentials_parameter`)
//! with the run's id, so a retry of the same run finds and reuses it: the order below makes
//! every crash point safe to run again.
//! 1. SSM: a new password for a new run (written before it is used anywhere);
//! 2. blue: the role created, or its password and attributes set;
//! 3. blue: SELECT on the published tables (in a vouched transaction: GRANT is DDL to the
//!    guard);
//! 4. green: each subscription created with, or altered to, the role's conninfo.

use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use switchyard_cell::{CellDocument, TableRef};
use switchyard_errors::ErrorName;
use switchyard_operation::{Deps, Error};
use switchyard_postgres::quote::{self, ident, literal, qualified};
use switchyard_telemetry::Secret;
use tokio_postgres::Client;

/// Predefined on Aurora and RDS: membership lets a role stream and manage slots.
const RDS_REPLICATION: &str = "rds_replication";
const PASSWORD_LENGTH: usize = 40;

/// The replication login for one run (its password shows redacted).
#[derive(Debug)]
pub struct Login {
    pub user: String,
    pub password: Secret,
}

/// What SSM holds for the run that last rotated the password.
#[derive(Deserialize)]
struct Stored {
    username: String,
    password: String,
    run_id: String,
}

/// This run's login as SSM holds it, or `None` when it must be rotated first (no
/// parameter yet, another run's, or another role's).
pub(crate) async fn current(
    cell: &CellDocument,
    deps: &Deps,
    run_id: &str,
) -> Result<Option<Login>, Error> {
    Ok(read(cell, deps)
        .await?
        .filter(|s| s.run_id == run_id)
        .map(Stored::login))
}

/// The login SSM holds, whichever run rotated it: the password the role has on blue (and,
/// after the switch, on green for the old blue's subscription). `None` when SSM holds none
/// for `replication.role`.
pub async fn stored(cell: &CellDocument, deps: &Deps) -> Result<Option<Login>, Error> {
    Ok(read(cell, deps).await?.map(Stored::login))
}

impl Stored {
    fn login(self) -> Login {
        Login {
            user: self.username,
            password: Secret::new(self.password),
        }
    }
}

/// What SSM holds for `replication.role`; `None` for no parameter, another role's, or an
/// unreadable value (replaced by the next rotation: it is ours, written by an earlier run).
async fn read(cell: &CellDocument, deps: &Deps) -> Result<Option<Stored>, Error> {
    let name = cell.replication_credentials_parameter();
    let out = deps
        .aws
        .ssm
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await;
    let value = match out {
        Ok(out) => out
            .parameter()
            .and_then(|p| p.value())
            .map(|v| Secret::new(v.to_owned())),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(Error::aws(&format!("reading SSM parameter {name}"), &e)),
    };
    Ok(value
        .and_then(|v| serde_json::from_str::<Stored>(v.expose()).ok())
        .filter(|s| s.username == cell.replication.role))
}

/// Step 1: a fresh password for `run_id`, written to SSM before anything uses it.
pub(crate) async fn rotate(cell: &CellDocument, deps: &Deps, run_id: &str) -> Result<Login, Error> {
    let name = cell.replication_credentials_parameter();
    let password = Secret::new(Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LENGTH));
    let value = Secret::new(
        serde_json::json!({
            "username": cell.replication.role,
            "password": password.expose(),
            "run_id": run_id,
        })
        .to_string(),
    );
    deps.aws
        .ssm
        .put_parameter()
        .name(&name)
        .value(value.expose())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| Error::aws(&format!("writing SSM parameter {name}"), &e))?;
    tracing::info!(parameter = %name, "replication password rotated for this run");
    Ok(Login {
        user: cell.replication.role.clone(),
        password,
    })
}

/// What blue's role lacks, read without changing anything.
pub(crate) struct RoleState {
    pub exists: bool,
    /// `Some(true)` when its stored verifier matches the login; `None` when the
    /// orchestrator cannot read `pg_authid` (Aurora): then the password is always set.
    pub password_matches: Option<bool>,
    pub can_login: bool,
    pub can_replicate: bool,
    /// Aurora/RDS: replication is granted through `rds_replication`.
    pub rds: bool,
}

impl RoleState {
    pub fn is_done(&self) -> bool {
        self.exists && self.password_matches == Some(true) && self.can_login && self.can_replicate
    }
}

pub(crate) async fn role_state(
    blue: &Client,
    role: &str,
    password: Option<&Secret>,
) -> Result<RoleState, Error> {
    let row = blue
        .query_one(
            "SELECT r.oid IS NOT NULL, coalesce(r.rolcanlogin, false),
                    coalesce(r.rolreplication, false)
                      OR (rds.oid IS NOT NULL AND r.oid IS NOT NULL
                          AND pg_catalog.pg_has_role(r.oid, rds.oid, 'MEMBER')),
                    rds.oid IS NOT NULL,
                    pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')
               FROM (SELECT 1) one
               LEFT JOIN pg_catalog.pg_roles r ON r.rolname = $1
               LEFT JOIN pg_catalog.pg_roles rds ON rds.rolname = $2",
            &[&role, &RDS_REPLICATION],
        )
        .await
        .map_err(|e| Error::query("reading the replication role on blue", e))?;
    let (exists, can_login, can_replicate, rds, readable): (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let password_matches = match (exists, readable, password) {
        (false, _, _) => Some(false),
        (true, false, _) => None,
        (true, true, None) => Some(false),
        (true, true, Some(password)) => {
            let stored: Option<String> = blue
                .query_one(
                    "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1",
                    &[&role],
                )
                .await
                .map_err(|e| Error::query("reading the replication role's verifier", e))?
                .get(0);
            Some(stored.is_some_and(|s| switchyard_postgres::scram_verifies(&s, password)))
        }
    };
    Ok(RoleState {
        exists,
        password_matches,
        can_login,
        can_replicate,
        rds,
    })
}

/// Step 2: the role as the login needs it. The password goes in as a SCRAM verifier, so
/// no plain password is ever in SQL text (a failing statement is logged whole). Also on
/// green after the switch, for the old blue's subscription (`blue` is then green).
pub async fn ensure_role(blue: &Client, login: &Login) -> Result<bool, Error> {
    let state = role_state(blue, &login.user, Some(&login.password)).await?;
    if state.is_done() {
        return Ok(false);
    }
    let verifier = literal(&switchyard_postgres::scram_verifier(&login.password));
    let replication = if state.rds { "" } else { " REPLICATION" };
    let verb = if state.exists { "ALTER" } else { "CREATE" };
    // Roles are shared objects: no event trigger fires, nothing for the guard to vouch.
    blue.batch_execute(&format!(
        "{verb} ROLE {} WITH LOGIN{replication} PASSWORD {verifier}",
        ident(&login.user)
    ))
    .await
    .map_err(|e| {
        Error::query(
            format!("{verb} ROLE {} on blue", quote::name(&login.user)),
            e,
        )
    })?;
    if state.rds && !state.can_replicate {
        blue.batch_execute(&format!(
            "GRANT {} TO {}",
            ident(RDS_REPLICATION),
            ident(&login.user)
        ))
        .await
        .map_err(|e| {
            Error::query(
                format!("granting {RDS_REPLICATION} to {}", quote::name(&login.user)),
                e,
            )
        })?;
    }
    tracing::info!(role = %login.user, created = !state.exists, "replication role ready on blue");
    Ok(true)
}

/// The published tables `role` cannot read yet (the initial copy reads each one).
pub(crate) async fn unreadable(
    blue: &Client,
    role: &str,
    tables: &[TableRef],
) -> Result<Vec<TableRef>, Error> {
    let exists: bool = blue
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await
        .map_err(|e| Error::query("looking for the replication role", e))?
        .get(0);
    if !exists {
        return Ok(tables.to_vec());
    }
    let mut missing = Vec::new();
    for table in tables {
        let readable: bool = blue
            .query_one(
                "SELECT pg_catalog.has_table_privilege($1, $2::text::regclass, 'SELECT')
                    AND pg_catalog.has_schema_privilege($1, $3, 'USAGE')",
                &[
                    &role,
                    &qualified(&table.schema, &table.table),
                    &table.schema,
                ],
            )
            .await
            .map_err(|e| {
                Error::query(
                    format!(
                        "checking {}'s SELECT on {}",
                        quote::name(role),
                        crate::tables::shown(table)
                    ),
                    e,
                )
            })?
            .get(0);
        if !readable {
            missing.push(table.clone());
        }
    }
    Ok(missing)
}

/// Step 3's statements: USAGE on each schema and SELECT on each table.
pub(crate) fn grant_sql(role: &str, tables: &[TableRef]) -> String {
    let mut schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    let mut sql = String::new();
    for schema in schemas {
        sql.push_str(&format!(
            "GRANT USAGE ON SCHEMA {} TO {};\n",
            ident(schema),
            ident(role)
        ));
    }
    for table in tables {
        sql.push_str(&format!(
            "GRANT SELECT ON TABLE {} TO {};\n",
            qualified(&table.schema, &table.table),
            ident(role)
        ));
    }
    sql
}

/// Stops when the replication role would be the orchestrator or an application role:
/// rotating its password would lock that login out.
pub(crate) fn check_role(cell: &CellDocument, orchestrator: &str) -> Result<(), Error> {
    if cell.replication.role == orchestrator {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!(
                "replication.role is the orchestrator's login ({}); name a role of its own (default switchyard_replication)",
                quote::name(orchestrator)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_quote_every_name_and_each_schema_once() {
        let tables = [
            TableRef {
                schema: "public".into(),
                table: "accounts".into(),
            },
            TableRef {
                schema: "public".into(),
                table: "invoice lines".into(),
            },
            TableRef {
                schema: "Billing".into(),
                table: "x".into(),
            },
        ];
        assert_eq!(
            grant_sql("repl\"role", &tables),
            "GRANT USAGE ON SCHEMA \"Billing\" TO \"repl\"\"role\";\n\
             GRANT USAGE ON SCHEMA \"public\" TO \"repl\"\"role\";\n\
             GRANT SELECT ON TABLE \"public\".\"accounts\" TO \"repl\"\"role\";\n\
             GRANT SELECT ON TABLE \"public\".\"invoice lines\" TO \"repl\"\"role\";\n\
             GRANT SELECT ON TABLE \"Billing\".\"x\" TO \"repl\"\"role\";\n"
        );
    }
}
