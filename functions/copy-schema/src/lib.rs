//! `copy-schema`: blue's schema on green, database by database, then proof that the two
//! catalogs agree.
//!
//! For each of the cell's databases: when green's is empty, blue's schema is dumped
//! (`pg_dump --schema-only --no-subscriptions --exclude-schema=switchyard`, owners,
//! privileges and publications kept: sync-roles has created the roles), switchyard's own
//! event triggers and publications left out, and applied on green in ONE transaction,
//! which commits only if green's catalog then equals blue's.
//! When green's already holds objects, nothing is applied: equal catalogs are a no-op
//! (a retry), different ones are `SchemaMismatch` listing what is in the way.
//!
//! Dry run ([`plan`]): per database whose schema would be applied, the dump's statement
//! count and the objects it would create by kind (pg_dump and catalog reads only).

mod catalog;
mod dump;

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::{Deps, Error, Plan, Side};
use switchyard_postgres::quote;
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::Client;

use crate::catalog::Catalog;

/// ```json
/// {"cell": { …the cell document… }}
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
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// One entry per database of the cell, in the cell document's order.
    pub databases: Vec<DatabaseSchema>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DatabaseSchema {
    pub name: String,
    /// False when green already held blue's schema (a retry): nothing was run.
    pub applied: bool,
    /// Statements of the dump run on green (0 when not applied).
    pub statements: usize,
    /// Catalog differences left: always empty, since any difference fails the step.
    pub differences: Vec<String>,
    /// Extensions whose versions differ between blue and green: a note, not a mismatch.
    pub extension_versions: Vec<String>,
}

/// The most differences a message lists; the rest are counted.
const MAX_LISTED: usize = 100;

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Either).await?;
    let mut databases = Vec::with_capacity(input.cell.databases.len());
    for database in &input.cell.databases {
        // Boxed: the AWS SDK futures inside are deep enough to overflow the layout query.
        databases.push(Box::pin(copy_database(&input.cell, deps, database)).await?);
    }
    Ok(Output { databases })
}

/// What [`run`] would do now: apply blue's schema to each database of green still empty.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Either).await?;
    let mut plan = Plan::new();
    for database in &input.cell.databases {
        if let Some(change) = Box::pin(plan_database(&input.cell, deps, database)).await? {
            plan.would(change);
        }
    }
    Ok(plan)
}

#[tracing::instrument(skip_all, fields(database = %database))]
async fn plan_database(
    cell: &CellDocument,
    deps: &Deps,
    database: &str,
) -> Result<Option<String>, Error> {
    let mut blue = deps.connect(cell, Side::Blue, database).await?;
    let mut green = deps.connect(cell, Side::Green, database).await?;
    let GreenState::Empty(existing) = green_state(&mut blue, &mut green, database).await? else {
        return Ok(None);
    };
    let script = Script::dump(cell, deps, database, &green).await?;
    let blue_catalog = read_catalog(&mut blue).await?;
    let objects: Vec<String> = catalog::to_create(&blue_catalog, &existing)
        .into_iter()
        .map(|(kind, count)| format!("{kind} ×{count}"))
        .collect();
    Ok(Some(format!(
        "on green's database {}: run blue's schema dump in one transaction, {} statements creating {}; commit only if green's catalog then equals blue's",
        quote::name(database),
        script.statements().len(),
        objects.join(", ")
    )))
}

/// Green's database against blue's, before anything is applied.
enum GreenState {
    /// It already holds blue's schema (a retry): nothing to apply.
    Copied { blue: Catalog, green: Catalog },
    /// It holds no user objects (this catalog): blue's schema is applied.
    Empty(Catalog),
}

/// `SchemaMismatch` when green's database holds objects that differ from blue's.
async fn green_state(
    blue: &mut Client,
    green: &mut Client,
    database: &str,
) -> Result<GreenState, Error> {
    let existing = read_catalog(green).await?;
    if !existing.holds_user_objects() {
        return Ok(GreenState::Empty(existing));
    }
    let blue_catalog = read_catalog(blue).await?;
    let differences = catalog::differences(&blue_catalog, &existing);
    if !differences.is_empty() {
        return Err(mismatch(
            database,
            "green's database already holds objects, and they differ from blue's; nothing was applied. \
             Make green match blue, or drop and recreate green's database empty, then rerun copy-schema",
            &differences,
        ));
    }
    Ok(GreenState::Copied {
        blue: blue_catalog,
        green: existing,
    })
}

/// Blue's schema dump, unwrapped, and the version of the green it is for.
struct Script {
    sql: String,
    green_version: i32,
}

impl Script {
    async fn dump(
        cell: &CellDocument,
        deps: &Deps,
        database: &str,
        green: &Client,
    ) -> Result<Self, Error> {
        let dump = dump::schema(deps, cell, database).await?;
        let green_version: i32 = green
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| Error::query("reading green's version", e))?
            .get(0);
        Ok(Self {
            sql: dump::unwrap_restrict(&dump),
            green_version,
        })
    }

    /// The statements run on green: switchyard's own objects and settings green lacks left out.
    fn statements(&self) -> Vec<&str> {
        dump::statements(&self.sql)
            .into_iter()
            .filter(|statement| !dump::is_switchyards_own(statement))
            .filter(|statement| dump::understood_by(statement, self.green_version))
            .collect()
    }
}

#[tracing::instrument(skip_all, fields(database = %database))]
async fn copy_database(
    cell: &CellDocument,
    deps: &Deps,
    database: &str,
) -> Result<DatabaseSchema, Error> {
    let mut blue = deps.connect(cell, Side::Blue, database).await?;
    let mut green = deps.connect(cell, Side::Green, database).await?;

    if let GreenState::Copied {
        blue: blue_catalog,
        green: existing,
    } = green_state(&mut blue, &mut green, database).await?
    {
        tracing::info!("green already holds blue's schema");
        return Ok(DatabaseSchema {
            name: database.to_owned(),
            applied: false,
            statements: 0,
            differences: Vec::new(),
            extension_versions: catalog::extension_versions(&blue_catalog, &existing),
        });
    }

    let script = Script::dump(cell, deps, database, &green).await?;
    let statements = script.statements();
    // One transaction: a failure or a difference leaves green's database as empty as it was.
    let tx = green
        .transaction()
        .await
        .map_err(|e| Error::query("BEGIN", e))?;
    for (index, statement) in statements.iter().enumerate() {
        tx.batch_execute(statement)
            .await
            .map_err(|e| failed_statement(database, index, statement, e))?;
    }
    let green_catalog = Catalog::read(&tx).await?;
    // Read after the dump: DDL on blue in between shows up as a difference, not as a
    // silently older schema on green.
    let blue_catalog = read_catalog(&mut blue).await?;
    let differences = catalog::differences(&blue_catalog, &green_catalog);
    if !differences.is_empty() {
        return Err(mismatch(
            database,
            "after applying blue's schema dump, green still differs from blue, so nothing was committed. \
             If DDL ran on blue meanwhile, rerun copy-schema; otherwise reconcile these by hand",
            &differences,
        ));
    }
    tx.commit().await.map_err(|e| Error::query("COMMIT", e))?;
    tracing::info!(
        statements = statements.len(),
        "blue's schema applied on green"
    );
    Ok(DatabaseSchema {
        name: database.to_owned(),
        applied: true,
        statements: statements.len(),
        differences,
        extension_versions: catalog::extension_versions(&blue_catalog, &green_catalog),
    })
}

/// The catalog in a read-only transaction of its own.
async fn read_catalog(client: &mut Client) -> Result<Catalog, Error> {
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| Error::query("BEGIN READ ONLY", e))?;
    let catalog = Catalog::read(&tx).await?;
    tx.commit().await.map_err(|e| Error::query("COMMIT", e))?;
    Ok(catalog)
}

/// Names the failing statement by its number and text (around the server's error
/// position when it gave one); classified by SQLSTATE like any database error.
fn failed_statement(
    database: &str,
    index: usize,
    statement: &str,
    error: tokio_postgres::Error,
) -> Error {
    let position = error.as_db_error().and_then(|db| match db.position() {
        Some(ErrorPosition::Original(p)) => usize::try_from(*p).ok(),
        _ => None,
    });
    Error::query(
        format!(
            "statement {} of blue's schema dump (`{}`) on green's database {}, so nothing was committed",
            index + 1,
            dump::excerpt(statement, position),
            quote::name(database)
        ),
        error,
    )
}

fn mismatch(database: &str, what: &str, differences: &[String]) -> Error {
    let mut lines: Vec<String> = differences
        .iter()
        .take(MAX_LISTED)
        .map(|d| format!("- {d}"))
        .collect();
    if differences.len() > MAX_LISTED {
        lines.push(format!("… and {} more", differences.len() - MAX_LISTED));
    }
    Error::stop(
        ErrorName::SchemaMismatch,
        format!(
            "database {}: {what} ({} difference{}):\n{}",
            quote::name(database),
            differences.len(),
            if differences.len() == 1 { "" } else { "s" },
            lines.join("\n")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_errors::Catalogued;

    #[test]
    fn mismatch_lists_at_most_a_hundred_differences() {
        let differences: Vec<String> = (0..130)
            .map(|i| format!("index public.i{i}: on blue, missing on green"))
            .collect();
        let err = mismatch("app", "green differs", &differences);
        assert_eq!(err.error_name(), ErrorName::SchemaMismatch);
        let message = err.to_failure().message().to_owned();
        assert!(
            message
                .starts_with("database app: green differs (130 differences):\n- index public.i0:"),
            "{message}"
        );
        assert!(message.contains("- index public.i99:"), "{message}");
        assert!(!message.contains("public.i100:"), "{message}");
        assert!(message.ends_with("… and 30 more"), "{message}");
    }

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
