//! `start-replication`: prepare step 5. For each of the cell's databases, as the
//! orchestrator:
//!
//! 1. a DDL guard on blue (event triggers journaling DDL into `switchyard.ddl_journal`),
//!    installed with the switchover marker table `switchyard.switchover_marker`, which is
//!    also created on green (before any subscription) for `check-slot-lag`;
//! 2. publications on blue: `switchyard_<group>` per table group, `switchyard_rest` for
//!    every other table and the marker table, partitioned tables through their root;
//! 3. a `pgoutput` slot on blue per publication, same name;
//! 4. a subscription on green per publication, same name, on that slot, copying every
//!    table first (`copy_data = true`), then streaming.
//!
//! The subscriptions log in to blue as the cell's replication role (`replication.role`),
//! created here on blue with replication rights and SELECT on the published tables only;
//! its password is rotated once per run through SSM ([`replicator`]). Their TLS is the
//! cell's `replication` setting: green's server dials blue, not the Lambda.
//!
//! Each step finds what an earlier call made and keeps it, so a retry changes nothing.
//! `check-replication` then waits for the copy to finish and for DDL to be absent.
//!
//! Dry run ([`plan`]): the guard, marker, publication, slot and subscription changes the
//! run would make now, found by the same reads and stopped by the same preconditions.

mod guard;
mod marker;
mod names;
mod publications;
pub mod replicator;
pub mod subscriptions;
mod tables;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, TableRef};
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::{Deps, Error, Listed, Plan, Side};
use switchyard_postgres::quote;

/// ```json
/// {"cell": { …the cell document… }, "idle_transaction_seconds": 5, "lock_timeout_seconds": 30}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
    /// A client session on blue idle in a transaction for longer than this stops the run
    /// before any slot is created (it would hang slot creation). Default 5.
    #[serde(default = "default_idle_transaction_seconds")]
    pub idle_transaction_seconds: u64,
    /// `lock_timeout` of our session on blue (bounds slot creation and publication DDL)
    /// and of every session green's subscriptions open on blue. 1 to 3600; default 30.
    #[serde(default = "default_lock_timeout_seconds")]
    pub lock_timeout_seconds: u64,
}

fn default_idle_transaction_seconds() -> u64 {
    5
}

fn default_lock_timeout_seconds() -> u64 {
    30
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub replication_role: ReplicationRoleOutput,
    pub databases: Vec<DatabaseOutput>,
}

/// The login the subscriptions use on blue.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReplicationRoleOutput {
    pub name: String,
    /// The SSM parameter holding its password.
    pub credentials_parameter: String,
    /// True when this call gave the run a new password (false on a retry of the run).
    pub password_rotated: bool,
    /// True when this call created the role on blue or set its password or attributes.
    pub role_changed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseOutput {
    pub name: String,
    pub publications: Vec<PublicationOutput>,
    pub subscriptions: Vec<SubscriptionOutput>,
    /// True when this call installed (or repaired) the DDL guard or blue's marker table;
    /// false when both were already in place.
    pub guard_installed: bool,
    /// Published tables the replication role was granted SELECT on by this call.
    pub tables_granted: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct PublicationOutput {
    pub name: String,
    /// What it publishes: plain tables and partitioned roots, never partitions.
    /// The tables it publishes (the first of them).
    pub tables: Listed<TableRef>,
    /// True when this call created it or corrected its tables or options.
    pub changed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct SubscriptionOutput {
    /// The subscription on green; its publication on blue has the same name.
    pub name: String,
    /// Its slot on blue.
    pub slot: String,
    /// True when this call created the slot.
    pub slot_created: bool,
    /// True when this call created the subscription.
    pub created: bool,
    /// True when this call pointed an existing subscription at this run's login.
    pub connection_updated: bool,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Either).await?;
    check_input(&input)?;
    let cell = &input.cell;
    let orchestrator = deps.orchestrator(cell).await?;
    replicator::check_role(cell, &orchestrator.username)?;
    let mut role = None;
    let mut databases = Vec::new();
    for database in &cell.databases {
        // Boxed: the whole chain of awaits inlined into one future is too deep to lay out.
        databases.push(Box::pin(start_database(&input, deps, database, &mut role)).await?);
    }
    let (_, replication_role) = role.ok_or_else(|| {
        Error::stop(
            ErrorName::InvalidInput,
            "the cell document lists no database",
        )
    })?;
    Ok(Output {
        replication_role,
        databases,
    })
}

/// The run's replication login, made ready once (cluster-wide) after the first database's
/// checks passed, so a stop on bad input leaves it untouched: the password in SSM first
/// (a retry of the run reads it back from there), then the role on blue.
async fn ready_login(
    input: &Input,
    deps: &Deps,
    blue: &tokio_postgres::Client,
) -> Result<(replicator::Login, ReplicationRoleOutput), Error> {
    let cell = &input.cell;
    let (login, password_rotated) = match replicator::current(cell, deps, &input.run_id).await? {
        Some(login) => (login, false),
        None => (replicator::rotate(cell, deps, &input.run_id).await?, true),
    };
    let role_changed = replicator::ensure_role(blue, &login).await?;
    let output = ReplicationRoleOutput {
        name: login.user.clone(),
        credentials_parameter: cell.replication_credentials_parameter(),
        password_rotated,
        role_changed,
    };
    Ok((login, output))
}

/// What [`run`] would change now, database by database, in its order; it fails where the
/// run would fail before changing anything past the DDL guard.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.blue.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Either).await?;
    check_input(&input)?;
    let cell = &input.cell;
    let orchestrator = deps.orchestrator(cell).await?;
    replicator::check_role(cell, &orchestrator.username)?;
    let mut plan = Plan::new();
    let login = replicator::current(cell, deps, &input.run_id).await?;
    for (i, database) in cell.databases.iter().enumerate() {
        let first = i == 0;
        Box::pin(plan_database(
            &input,
            deps,
            database,
            login.as_ref(),
            first,
            &mut plan,
        ))
        .await?;
    }
    Ok(plan)
}

/// What [`ready_login`] would change.
async fn plan_login(
    input: &Input,
    blue: &tokio_postgres::Client,
    login: Option<&replicator::Login>,
    plan: &mut Plan,
) -> Result<(), Error> {
    let cell = &input.cell;
    let parameter = cell.replication_credentials_parameter();
    if login.is_none() {
        plan.would(format!(
            "in SSM: a new password for the replication role {} for this run, in {parameter}",
            quote::name(&cell.replication.role)
        ));
    }
    let role =
        replicator::role_state(blue, &cell.replication.role, login.map(|l| &l.password)).await?;
    if !role.is_done() {
        let verb = if role.exists { "alter" } else { "create" };
        plan.would(format!(
            "on blue: {verb} role {} (LOGIN, {}, the password from {parameter})",
            quote::name(&cell.replication.role),
            if role.rds {
                "member of rds_replication"
            } else {
                "REPLICATION"
            }
        ));
    }
    Ok(())
}

fn check_input(input: &Input) -> Result<(), Error> {
    if !(1..=3600).contains(&input.lock_timeout_seconds) {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            "lock_timeout_seconds must be 1 to 3600 (0 would let slot creation wait forever)",
        ));
    }
    names::check(&input.cell)
}

/// Our sessions on blue and green for one database, `lock_timeout` set on both.
struct Sessions {
    blue_options: switchyard_postgres::ConnectOptions,
    blue: tokio_postgres::Client,
    green: tokio_postgres::Client,
}

async fn connect(input: &Input, deps: &Deps, database: &str) -> Result<Sessions, Error> {
    let cell = &input.cell;
    let lock_timeout = Duration::from_secs(input.lock_timeout_seconds);
    let blue_options = deps
        .orchestrator_options(cell, Side::Blue, database)
        .await?;
    let blue = switchyard_postgres::connect(&blue_options).await?;
    set_lock_timeout(&blue, lock_timeout).await?;
    let green = deps.connect(cell, Side::Green, database).await?;
    set_lock_timeout(&green, lock_timeout).await?;
    Ok(Sessions {
        blue_options,
        blue,
        green,
    })
}

/// What one database needs, read from blue and green with every precondition checked and
/// nothing written: what [`run`] acts on and [`plan`] describes.
struct Survey {
    /// The publications, in creation order; the other lists follow it.
    planned: Vec<tables::Publication>,
    /// Green has the subscription of that name.
    subscribed: Vec<bool>,
    publications: Vec<publications::Change>,
    /// Blue has the slot of that name.
    slots: Vec<bool>,
    /// `switchyard_rest` is about to be subscribed: green's marker table is emptied first.
    fresh_marker: bool,
}

async fn survey(input: &Input, database: &str, sessions: &Sessions) -> Result<Survey, Error> {
    let (blue, green) = (&sessions.blue, &sessions.green);
    let catalog = tables::read(blue).await?;
    let planned = tables::plan(&input.cell.table_groups, &catalog, database)?;

    let mut subscribed = Vec::new();
    for publication in &planned {
        let found = subscriptions::find(green, &publication.name).await?;
        if let Some(sub) = &found {
            if sub.slot.as_deref() != Some(publication.name.as_str())
                || sub.publications != [publication.name.clone()]
            {
                return Err(Error::stop(
                    ErrorName::PreconditionFailed,
                    format!(
                        "green's subscription {n} does not read publication and slot {n} of blue (slot {}, publications {}); drop it on green, empty its tables, then rerun start-replication",
                        sub.slot.as_deref().map_or_else(|| "none".to_owned(), quote::name),
                        sub.publications.iter().map(|p| quote::name(p)).collect::<Vec<_>>().join(", "),
                        n = quote::name(&publication.name)
                    ),
                ));
            }
        }
        // Checked for every new subscription before anything is created on blue. The marker
        // table is ours: marker::prepare_green creates and empties it.
        if found.is_none() {
            let tables: Vec<TableRef> = publication
                .tables
                .iter()
                .filter(|t| **t != marker::table())
                .cloned()
                .collect();
            subscriptions::require_empty(green, &tables).await?;
        }
        subscribed.push(found.is_some());
    }
    let rest_subscribed = planned
        .iter()
        .zip(&subscribed)
        .any(|(p, &subscribed)| subscribed && p.tables.contains(&marker::table()));

    let version_num = server_version_num(blue).await?;
    let mut changes = Vec::new();
    for (publication, &subscribed) in planned.iter().zip(&subscribed) {
        changes.push(publications::decide(blue, publication, subscribed, version_num).await?);
    }

    let mut slots = Vec::new();
    for (publication, &subscribed) in planned.iter().zip(&subscribed) {
        let slot = subscriptions::slot_exists(blue, &publication.name).await?;
        // A new slot would start after changes the subscription has not applied yet.
        if subscribed && !slot {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "green's subscription {n} exists but its slot {n} is gone from blue, so green has missed changes; drop the subscription on green, empty its tables, then rerun start-replication",
                    n = quote::name(&publication.name)
                ),
            ));
        }
        slots.push(slot);
    }
    // Before any slot: creating one, ours or a table-sync worker's, waits for them.
    if slots.iter().chain(&subscribed).any(|present| !present) {
        subscriptions::refuse_idle_transactions(
            blue,
            Duration::from_secs(input.idle_transaction_seconds),
        )
        .await?;
    }
    Ok(Survey {
        planned,
        subscribed,
        publications: changes,
        slots,
        fresh_marker: !rest_subscribed,
    })
}

#[tracing::instrument(skip_all, fields(database = %database))]
async fn start_database(
    input: &Input,
    deps: &Deps,
    database: &str,
    role: &mut Option<(replicator::Login, ReplicationRoleOutput)>,
) -> Result<DatabaseOutput, Error> {
    let mut sessions = connect(input, deps, database).await?;
    // First, so that any DDL after the catalog read below is journaled.
    let guard_installed = guard::install(&mut sessions.blue).await?;
    let survey = survey(input, database, &sessions).await?;
    // Before any subscription: switchyard_rest's copy and apply fail without the table.
    marker::prepare_green(&sessions.green, survey.fresh_marker).await?;
    let ready = match role.take() {
        Some(ready) => ready,
        None => ready_login(input, deps, &sessions.blue).await?,
    };
    let login = &role.insert(ready).0;

    let mut publications = Vec::new();
    for (publication, change) in survey.planned.iter().zip(&survey.publications) {
        publications::apply(&mut sessions.blue, publication, change).await?;
        publications.push(PublicationOutput {
            name: publication.name.clone(),
            tables: Listed::of(publication.tables.clone()),
            changed: *change != publications::Change::Keep,
        });
    }

    // Before any subscription copies: the role reads what it copies, nothing else.
    let published = published_tables(&survey);
    let ungranted = replicator::unreadable(&sessions.blue, &login.user, &published).await?;
    if !ungranted.is_empty() {
        guard::own_ddl(
            &mut sessions.blue,
            "start-replication (replication role grants)",
            &replicator::grant_sql(&login.user, &ungranted),
        )
        .await?;
    }

    let conninfo = subscriptions::conninfo(
        &sessions.blue_options,
        login,
        &input.cell.replication,
        Duration::from_secs(input.lock_timeout_seconds),
    );
    let mut subscriptions_out = Vec::new();
    for ((publication, &subscribed), &slot) in survey
        .planned
        .iter()
        .zip(&survey.subscribed)
        .zip(&survey.slots)
    {
        let name = &publication.name;
        // The slot before its subscription, which only attaches to it (create_slot = false).
        if !slot {
            subscriptions::create_slot(&sessions.blue, name, "blue").await?;
        }
        let mut connection_updated = false;
        if !subscribed {
            subscriptions::create(&sessions.green, name, &conninfo, &login.password).await?;
        } else if subscriptions::stored_conninfo(&sessions.green, name)
            .await?
            .is_none_or(|stored| stored.expose() != conninfo.expose())
        {
            // Another run's password, or the orchestrator's login from before the role.
            subscriptions::alter_connection(&sessions.green, name, &conninfo, &login.password)
                .await?;
            connection_updated = true;
        }
        subscriptions_out.push(SubscriptionOutput {
            name: name.clone(),
            slot: name.clone(),
            slot_created: !slot,
            created: !subscribed,
            connection_updated,
        });
    }

    Ok(DatabaseOutput {
        name: database.to_owned(),
        publications,
        subscriptions: subscriptions_out,
        guard_installed,
        tables_granted: ungranted.len(),
    })
}

/// Every table the database's publications carry, once.
fn published_tables(survey: &Survey) -> Vec<TableRef> {
    let mut tables: Vec<TableRef> = survey
        .planned
        .iter()
        .flat_map(|p| p.tables.iter().cloned())
        .collect();
    tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
    tables.dedup();
    tables
}

#[tracing::instrument(skip_all, fields(database = %database))]
async fn plan_database(
    input: &Input,
    deps: &Deps,
    database: &str,
    login: Option<&replicator::Login>,
    first: bool,
    plan: &mut Plan,
) -> Result<(), Error> {
    let sessions = connect(input, deps, database).await?;
    let db = quote::name(database);
    if !guard::in_place(&sessions.blue).await? {
        plan.would(format!(
            "on blue's database {db}: install the DDL guard (schema switchyard; tables ddl_journal, replication_state, switchover_marker; event triggers switchyard_ddl_guard, switchyard_ddl_guard_drop)"
        ));
    }
    let survey = survey(input, database, &sessions).await?;
    match marker::green_rows(&sessions.green).await? {
        None => {
            plan.would("on green: create schema switchyard and table switchyard.switchover_marker");
        }
        Some(rows) if rows > 0 && survey.fresh_marker => {
            plan.would(format!(
                "on green: delete {rows} leftover row(s) from switchyard.switchover_marker"
            ));
        }
        Some(_) => {}
    }
    if first {
        plan_login(input, &sessions.blue, login, plan).await?;
    }
    for (publication, change) in survey.planned.iter().zip(&survey.publications) {
        if let Some(line) = change.would(publication) {
            plan.would(line);
        }
    }
    let role = &input.cell.replication.role;
    let ungranted =
        replicator::unreadable(&sessions.blue, role, &published_tables(&survey)).await?;
    let role = quote::name(role);
    if !ungranted.is_empty() {
        plan.would(format!(
            "on blue's database {db}: grant {role} SELECT on {} published table(s) (and USAGE on their schemas)",
            ungranted.len()
        ));
    }
    let conninfo = login.map(|login| {
        subscriptions::conninfo(
            &sessions.blue_options,
            login,
            &input.cell.replication,
            Duration::from_secs(input.lock_timeout_seconds),
        )
    });
    let lock_timeout = input.lock_timeout_seconds;
    for ((publication, &subscribed), &slot) in survey
        .planned
        .iter()
        .zip(&survey.subscribed)
        .zip(&survey.slots)
    {
        let name = quote::name(&publication.name);
        if !slot {
            plan.would(format!(
                "on blue: create logical slot {name} (pgoutput), waiting for every older transaction up to lock_timeout {lock_timeout} s"
            ));
        }
        if !subscribed {
            plan.would(format!(
                "on green: create subscription {name} on blue's publication and slot {name} (copy_data = true, create_slot = false); then green copies its {} table(s) and streams",
                publication.tables.len()
            ));
        } else {
            let stored = subscriptions::stored_conninfo(&sessions.green, &publication.name).await?;
            let current = match (&stored, &conninfo) {
                (Some(stored), Some(conninfo)) => stored.expose() == conninfo.expose(),
                _ => false,
            };
            if !current {
                plan.would(format!(
                    "on green: alter subscription {name}'s connection to log in to blue as {role} with this run's password"
                ));
            }
        }
    }
    Ok(())
}

async fn set_lock_timeout(client: &tokio_postgres::Client, timeout: Duration) -> Result<(), Error> {
    client
        .execute(
            "SELECT pg_catalog.set_config('lock_timeout', $1, false)",
            &[&format!("{}ms", timeout.as_millis())],
        )
        .await
        .map_err(|e| Error::query("setting lock_timeout", e))?;
    Ok(())
}

async fn server_version_num(client: &tokio_postgres::Client) -> Result<i32, Error> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| Error::query("reading the server version", e))?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }

    #[test]
    fn timeouts_default_when_absent() {
        let mut value: serde_json::Value =
            serde_json::from_str(include_str!("../payloads/input.json")).expect("input example");
        let object = value.as_object_mut().expect("object");
        object.remove("idle_transaction_seconds");
        object.remove("lock_timeout_seconds");
        let input: Input = serde_json::from_value(value).expect("defaults");
        assert_eq!(
            (input.idle_transaction_seconds, input.lock_timeout_seconds),
            (5, 30)
        );
    }
}
