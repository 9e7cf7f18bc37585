//! `abandon-prepare`: undoes a prepare that will not be switched, and leaves blue as it
//! was before it. Until then blue's slots retain WAL for green, however long green is
//! gone, until blue's disk fills.
//!
//! Refused, with nothing changed, when: the cell has switched (`AlreadySwitched`: writes
//! may be on green); green's identifier is free (a rename happened and was not undone:
//! the abort path first); blue still has writes revoked (`restore-writes` first); a
//! downstream subscription a switchover dropped was not recreated
//! (`recreate-downstream-subscriptions` first); or the replication role owns objects (it
//! is then not only ours to drop). Then, marked as an abort-direction step, per database:
//!
//! 1. green: each subscription named `cell.replication_names()` is dropped, which drops
//!    its slot on blue and the table-sync slots of a copy still running; then a way back
//!    (the DDL guard on green, slot and publication `switchyard_reverse`) an abort left
//!    when it stopped before its enable step;
//! 2. blue: the DDL guard's event triggers (first, so nothing below is journaled), each
//!    slot still there (once its walsender ended), each publication of the same names, our tables
//!    (the marker, the vouched-transaction list, revoke-writes' saved ACLs once restored,
//!    the DDL journal), the guard's function and the `switchyard` schema if nothing else
//!    is in it, and every privilege held by the replication role;
//! 3. green: the marker table and the `switchyard` schema if nothing else is in it.
//!
//! Last, the replication role is dropped on blue. Every step looks first and skips what an
//! earlier call did, so a call interrupted anywhere is finished by the next. Green's
//! application roles, schema and data stay (green is deleted or prepared again).
//!
//! Dry run ([`plan`]): the same refusals, then every drop the run would make now.

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_operation::downstream::Journaled;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::teardown::{
    drop_role, drop_schema_if_empty, exists, function_exists, granted, publication_exists,
    refuse_to_drop, revoke_all, role_exists, MARKER, SCHEMA,
};
use switchyard_operation::{guard, saved_acls, Deps, Error, Plan, Side};
use switchyard_postgres::quote::{self, ident};

use finalize_replication::green as subscriptions;
use finalize_replication::old_blue as slots;
use finalize_replication::reverse;

/// ```json
/// {"cell": { …the cell document… }, "run_id": "abandon-prepare-local-a-20261203T120000Z"}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run is live.
    /// It does not override the refusals.
    #[serde(default)]
    pub force: bool,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub databases: Vec<DatabaseOutput>,
    /// The replication role, and whether this call dropped it on blue.
    pub role: String,
    pub role_dropped: bool,
}

/// What this call dropped in one database (empty lists: nothing was left to drop).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseOutput {
    pub name: String,
    pub subscriptions_dropped: Vec<String>,
    pub slots_dropped: Vec<String>,
    /// Slots still in use after the wait: drop each by hand with `pg_drop_replication_slot`
    /// once its walsender has ended, or run abandon-prepare again.
    pub slots_left: Vec<String>,
    pub publications_dropped: Vec<String>,
    pub guard_removed: bool,
    /// Our tables, function and schema dropped on blue, as SQL names them.
    pub blue_objects_dropped: Vec<String>,
    /// The same on green.
    pub green_objects_dropped: Vec<String>,
    /// Tables and schemas on which the replication role's privileges were revoked.
    pub privileges_revoked: Vec<String>,
}

/// Our tables on blue, dropped in this order: the journal last, with the guard gone.
fn blue_tables() -> [&'static str; 4] {
    [
        MARKER,
        guard::OWN_TRANSACTIONS,
        saved_acls::TABLE,
        guard::JOURNAL,
    ]
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    refusals(&input, deps).await?;
    // Only now, with every refusal passed, is the run marked as going back to blue.
    fence::admit(deps, &input.cell, input.caller(), Direction::Abort).await?;
    let cell = &input.cell;
    let names = cell.replication_names();
    let role = cell.replication.role.clone();
    let mut databases = Vec::with_capacity(cell.databases.len());
    for database in &cell.databases {
        databases.push(Box::pin(abandon_database(cell, deps, database, &names, &role)).await?);
    }
    let blue = deps
        .connect(
            cell,
            Side::Blue,
            cell.databases.first().map_or("postgres", String::as_str),
        )
        .await?;
    let role_dropped = drop_role(&blue, &role, "abandon-prepare").await?;
    Ok(Output {
        databases,
        role,
        role_dropped,
    })
}

/// Dry run: the same refusals, then what [`run`] would drop now.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    refusals(&input, deps).await?;
    let cell = &input.cell;
    let names = cell.replication_names();
    let role = &cell.replication.role;
    let mut plan = Plan::new();
    for database in &cell.databases {
        let db = quote::name(database);
        let green = Box::pin(deps.connect(cell, Side::Green, database)).await?;
        for (name, _) in subscriptions::to_drop(&green, &names).await? {
            plan.would(format!(
                "drop subscription {} on green (database {db}), and with it its slots on blue",
                quote::name(&name)
            ));
        }
        if guard::present(&green).await? {
            plan.would(format!(
                "drop the DDL guard on green (database {db}): an unfinished abort left it"
            ));
        }
        let found = reverse::on_green(&green).await?;
        if found.publication || found.slot.is_some() {
            plan.would(format!(
                "drop slot and publication {} on green (database {db}): a way back an unfinished abort left",
                quote::name(&switchyard_cell::reverse_replication_name())
            ));
        }
        let blue = Box::pin(deps.connect(cell, Side::Blue, database)).await?;
        if guard::present(&blue).await? {
            plan.would(format!(
                "drop the DDL guard's event triggers on blue (database {db})"
            ));
        }
        for name in &names {
            if slots::slot_active(&blue, name).await?.is_some() {
                plan.would(format!(
                    "drop slot {} on blue (database {db})",
                    quote::name(name)
                ));
            }
            if publication_exists(&blue, name).await? {
                plan.would(format!(
                    "drop publication {} on blue (database {db})",
                    quote::name(name)
                ));
            }
        }
        for table in blue_tables() {
            if exists(&blue, table).await? {
                plan.would(format!("drop table {table} on blue (database {db})"));
            }
        }
        for (kind, object) in granted(&blue, role).await? {
            plan.would(format!(
                "revoke {}'s privileges on {kind} {object} on blue (database {db})",
                quote::name(role)
            ));
        }
        if exists(&green, MARKER).await? {
            plan.would(format!("drop table {MARKER} on green (database {db})"));
        }
    }
    let blue = deps
        .connect(
            cell,
            Side::Blue,
            cell.databases.first().map_or("postgres", String::as_str),
        )
        .await?;
    if role_exists(&blue, role).await? {
        plan.would(format!("drop role {} on blue", quote::name(role)));
    }
    Ok(plan)
}

/// Every reason not to touch the cell, read-only: the first found stops the call.
async fn refusals(input: &Input, deps: &Deps) -> Result<(), Error> {
    let cell = &input.cell;
    // The lock, and AlreadySwitched: past the switch, blue's slots and guard are the
    // rollback's business, not a prepare's. `force` passes the lock, never the switch.
    let admitted = fence::check(deps, cell, input.caller(), Direction::Abort).await?;
    if let Some(decision) = admitted.decision.filter(|d| d.switched(cell)) {
        return Err(Error::stop(
            ErrorName::AlreadySwitched,
            format!(
                "cell {} switched to green (run {}, {}): writes may be there, and blue's slots and guard belong to the rollback window; nothing was changed",
                cell.cell_id, decision.run_id, decision.decided_at
            ),
        ));
    }
    match deps.endpoint(cell, Side::Green).await {
        Err(e) if e.error_name() == ErrorName::ClusterNotAvailable => {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "green's identifier {} is free: a rename moved it and was not undone. Run the switchover's abort path (rename-clusters back) first; nothing was changed",
                    cell.green.cluster_identifier
                ),
            ));
        }
        other => {
            other?;
        }
    }
    for downstream in &cell.downstream {
        for subscription in &downstream.subscriptions {
            if let Some(entry) = Journaled::read(deps, cell, downstream, subscription).await? {
                if entry.recreated.is_none() {
                    return Err(Error::stop(
                        ErrorName::PreconditionFailed,
                        format!(
                            "subscription {} of downstream {} was dropped by run {} at {} and not recreated: run recreate-downstream-subscriptions (abort) first; nothing was changed",
                            quote::name(subscription),
                            downstream.name,
                            entry.run_id,
                            entry.recorded_at
                        ),
                    ));
                }
            }
        }
    }
    for database in &cell.databases {
        let blue = Box::pin(deps.connect(cell, Side::Blue, database)).await?;
        let revoked = saved_acls::unrestored(&blue).await?;
        if revoked > 0 {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!(
                    "blue's writes are still revoked on {revoked} relations in database {} ({} rows with {}): run restore-writes first; nothing was changed",
                    quote::name(database),
                    saved_acls::TABLE,
                    saved_acls::UNRESTORED
                ),
            ));
        }
        refuse_to_drop(&blue, &cell.replication.role, "blue").await?;
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(database = %database))]
async fn abandon_database(
    cell: &CellDocument,
    deps: &Deps,
    database: &str,
    names: &[String],
    role: &str,
) -> Result<DatabaseOutput, Error> {
    // Green first: a plain DROP SUBSCRIPTION dials blue through the subscription's own
    // connection (no rename happened: the refusals made sure) and drops its slot there,
    // and the table-sync slots of a copy still running, which nothing else names.
    let green = deps.connect(cell, Side::Green, database).await?;
    subscriptions::prepare(&green).await?;
    let mut subscriptions_dropped = Vec::new();
    for (name, _) in subscriptions::to_drop(&green, names).await? {
        let sql = format!("DROP SUBSCRIPTION IF EXISTS {}", ident(&name));
        green
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::query(&sql, e))?;
        tracing::info!(subscription = %name, "subscription and its slots dropped");
        subscriptions_dropped.push(name);
    }

    // A way back an abort left behind when it stopped before its enable step: green's
    // slot would keep WAL for nobody.
    // Its guard first (installed with it), so the drops below are not journaled.
    let mut green_objects_dropped = guard::remove(&green, "green").await?;
    let way_back = reverse::close_on_green(&green).await?;
    let reverse_name = switchyard_cell::reverse_replication_name();
    if way_back.slot_changed {
        green_objects_dropped.push(format!("slot {}", quote::name(&reverse_name)));
    }
    if way_back.publication_changed {
        green_objects_dropped.push(format!("publication {}", quote::name(&reverse_name)));
    }

    let blue = deps.connect(cell, Side::Blue, database).await?;
    // The guard first: nothing dropped below is then journaled as DDL drift.
    let guard_removed = guard::remove_triggers(&blue, "blue").await?;
    let mut out = DatabaseOutput {
        name: database.to_owned(),
        subscriptions_dropped,
        slots_dropped: Vec::new(),
        slots_left: Vec::new(),
        publications_dropped: Vec::new(),
        guard_removed,
        blue_objects_dropped: Vec::new(),
        green_objects_dropped,
        privileges_revoked: Vec::new(),
    };
    let publishing = slots::drop_publishing(&blue, names).await?;
    out.slots_dropped = publishing.slots_dropped;
    out.slots_left = publishing.slots_left;
    out.publications_dropped = publishing.publications_dropped;
    for table in blue_tables() {
        if exists(&blue, table).await? {
            let sql = format!("DROP TABLE IF EXISTS {table}");
            blue.batch_execute(&sql)
                .await
                .map_err(|e| Error::query(&sql, e))?;
            out.blue_objects_dropped.push(table.to_owned());
        }
    }
    let function = format!("{}()", guard::FUNCTION);
    if function_exists(&blue, &function).await? {
        let sql = format!("DROP FUNCTION IF EXISTS {function}");
        blue.batch_execute(&sql)
            .await
            .map_err(|e| Error::query(&sql, e))?;
        out.blue_objects_dropped.push(function);
    }
    if drop_schema_if_empty(&blue).await? {
        out.blue_objects_dropped.push(quote::name(SCHEMA));
    }
    out.privileges_revoked = revoke_all(&blue, role).await?;

    if exists(&green, MARKER).await? {
        let sql = format!("DROP TABLE IF EXISTS {MARKER}");
        green
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::query(&sql, e))?;
        out.green_objects_dropped.push(MARKER.to_owned());
    }
    if drop_schema_if_empty(&green).await? {
        out.green_objects_dropped.push(quote::name(SCHEMA));
    }
    tracing::info!(
        slots = out.slots_dropped.len(),
        publications = out.publications_dropped.len(),
        "prepare undone in this database"
    );
    Ok(out)
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
}
