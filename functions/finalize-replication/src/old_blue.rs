//! The old blue in `drop` mode: which cluster it is, and removing our slots and the DDL
//! guard from it. It may be unreachable: then what is left is reported, not an error,
//! because the switchover is past its point of no return and green already serves.

use std::time::{Duration, Instant};

use switchyard_aws::ClusterEndpoint;
use switchyard_cell::CellDocument;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_operation::rename::{self, RenamePlan};
use switchyard_operation::{guard, teardown, Deps, Error};
use switchyard_postgres::quote::{self, ident};
use tokio_postgres::Client;

/// How long a slot may stay active (its walsender ending) before it is left to drop by hand.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// Where the old blue is, as far as can be told.
#[derive(Clone, Debug)]
pub enum OldBlue {
    /// Neither given nor found: every slot is left.
    Unknown,
    Unreachable {
        identifier: String,
    },
    Reachable {
        endpoint: ClusterEndpoint,
    },
}

impl OldBlue {
    pub fn identifier(&self) -> Option<String> {
        match self {
            Self::Unknown => None,
            Self::Unreachable { identifier } => Some(identifier.clone()),
            Self::Reachable { endpoint } => Some(endpoint.identifier.clone()),
        }
    }
}

/// What was done on the old blue in one database.
pub(crate) struct Cleanup {
    pub slots_dropped: Vec<String>,
    pub slots_left: Vec<String>,
    pub guard_removed: bool,
}

/// Finds the old blue (`given`, else as [`crate::Input::old_blue_identifier`] says);
/// `PreconditionFailed` when the identifier names green itself.
pub async fn locate(
    cell: &CellDocument,
    deps: &Deps,
    green: &ClusterEndpoint,
    given: Option<&str>,
) -> Result<OldBlue, Error> {
    let identifier = match given {
        Some(id) => Some(id.to_owned()),
        None => match journaled(cell, deps).await? {
            Some(id) => Some(id),
            // Green under its own name: no rename happened, blue still holds blue's.
            None if green.identifier == cell.green.cluster_identifier => {
                Some(cell.blue.cluster_identifier.clone())
            }
            None => parked(cell, deps).await?,
        },
    };
    let Some(identifier) = identifier else {
        tracing::warn!("old blue not found: its slots are left to drop by hand");
        return Ok(OldBlue::Unknown);
    };
    match deps.endpoints.resolve(&deps.aws.rds, &identifier).await {
        Ok(endpoint) if endpoint.resource_id == green.resource_id => Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("{identifier} is green's cluster, not the old blue; pass the old blue's identifier as old_blue_identifier"),
        )),
        Ok(endpoint) => Ok(OldBlue::Reachable { endpoint }),
        Err(e) if e.name() == ErrorName::ClusterNotAvailable => {
            tracing::warn!(cluster = %identifier, error = %e, "old blue unreachable: its slots are left to drop by hand");
            Ok(OldBlue::Unreachable { identifier })
        }
        Err(e) => Err(e.into()),
    }
}

/// The old blue's identifier in the journaled rename plan, if any.
async fn journaled(cell: &CellDocument, deps: &Deps) -> Result<Option<String>, Error> {
    Ok(deps
        .journal(cell)
        .get::<RenamePlan>()
        .await?
        .map(|plan| plan.parked_identifier))
}

/// The one existing `<blue>-blue-<major>` cluster, if exactly one exists.
async fn parked(cell: &CellDocument, deps: &Deps) -> Result<Option<String>, Error> {
    let mut found = Vec::new();
    let mut pages = deps.aws.rds.describe_db_clusters().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::aws("listing DB clusters", &e))?;
        found.extend(
            page.db_clusters()
                .iter()
                .filter_map(|c| c.db_cluster_identifier())
                .filter(|id| rename::is_parked(cell, id))
                .map(str::to_owned),
        );
    }
    if found.len() > 1 {
        tracing::warn!(clusters = ?found, "several parked blues: pass old_blue_identifier");
    }
    Ok(if found.len() == 1 { found.pop() } else { None })
}

/// A connection to `database` of the old blue; `None` when it is unknown or unreachable
/// (its slots are then left to drop by hand).
async fn reach(
    cell: &CellDocument,
    deps: &Deps,
    old_blue: &OldBlue,
    database: &str,
) -> Result<Option<Client>, Error> {
    let OldBlue::Reachable { endpoint } = old_blue else {
        return Ok(None);
    };
    match crate::connect_to(cell, deps, endpoint, database).await {
        Ok(client) => Ok(Some(client)),
        Err(e) if e.error_name() == ErrorName::DatabaseUnavailable => {
            tracing::warn!(cluster = %endpoint.identifier, %database, error = %e, "old blue unreachable: its slots are left to drop by hand");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A connection to `database` of the old blue, or `PreconditionFailed` naming why there is
/// none (`reverse` cannot do without it).
pub async fn require(
    cell: &CellDocument,
    deps: &Deps,
    old_blue: &OldBlue,
    database: &str,
) -> Result<Client, Error> {
    match (reach(cell, deps, old_blue, database).await?, old_blue) {
        (Some(client), _) => Ok(client),
        (None, OldBlue::Unknown) => Err(Error::stop(
            ErrorName::PreconditionFailed,
            "the old blue was not found (no rename journaled, no single parked cluster): pass its identifier as old_blue_identifier; nothing was changed",
        )),
        (None, _) => Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "the old blue {} is unreachable (database {}): it cannot follow green until it is; green's slot keeps every write meanwhile. Rerun finalize-replication (reverse) once it answers",
                old_blue.identifier().unwrap_or_default(),
                quote::name(database)
            ),
        )),
    }
}

/// Drops `names`' slots and the DDL guard in `database` of the old blue.
pub(crate) async fn clean(
    cell: &CellDocument,
    deps: &Deps,
    old_blue: &OldBlue,
    database: &str,
    names: &[String],
) -> Result<Cleanup, Error> {
    let Some(client) = reach(cell, deps, old_blue, database).await? else {
        return Ok(Cleanup {
            slots_dropped: Vec::new(),
            slots_left: names.to_vec(),
            guard_removed: false,
        });
    };
    let mut cleanup = Cleanup {
        slots_dropped: Vec::new(),
        slots_left: Vec::new(),
        guard_removed: false,
    };
    for name in names {
        match drop_slot(&client, name).await? {
            Some(true) => cleanup.slots_dropped.push(name.clone()),
            Some(false) => cleanup.slots_left.push(name.clone()),
            None => {}
        }
    }
    cleanup.guard_removed = guard::remove_triggers(&client, "the old blue").await?;
    Ok(cleanup)
}

/// Dry run of [`clean`]: the slots and the guard it would drop in `database`.
pub(crate) async fn plan(
    cell: &CellDocument,
    deps: &Deps,
    old_blue: &OldBlue,
    database: &str,
    names: &[String],
    plan: &mut switchyard_operation::Plan,
) -> Result<(), Error> {
    let Some(client) = reach(cell, deps, old_blue, database).await? else {
        return Ok(());
    };
    let identifier = old_blue.identifier().unwrap_or_default();
    let database = quote::name(database);
    for name in names {
        let shown = quote::name(name);
        match slot_active(&client, name).await? {
            None => {}
            Some(false) => {
                plan.would(format!(
                    "drop slot {shown} on the old blue {identifier} (database {database})"
                ));
            }
            Some(true) => {
                plan.would(format!(
                    "wait up to {} s for slot {shown} on the old blue {identifier} (database {database}) to be released by its walsender, then drop it (left to drop by hand if still in use)",
                    SLOT_RELEASE_WAIT.as_secs()
                ));
            }
        }
    }
    if guard::present(&client).await? {
        plan.would(format!(
            "drop the DDL guard's event triggers {} on the old blue {identifier} (database {database}); its journal table stays",
            guard::trigger_names()
                .iter()
                .map(|n| quote::name(n))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// Whether slot `name` of the connected database is active; `None` when absent.
pub async fn slot_active(blue: &Client, name: &str) -> Result<Option<bool>, Error> {
    Ok(blue
        .query_opt(
            "SELECT active FROM pg_catalog.pg_replication_slots
              WHERE slot_name = $1 AND database = pg_catalog.current_database()",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("reading slot {} on the old blue", quote::name(name)),
                e,
            )
        })?
        .map(|r| r.get(0)))
}

/// Drops slot `name` of the connected database once nothing uses it: `Some(true)` dropped,
/// `Some(false)` still in use, `None` absent.
pub async fn drop_slot(blue: &Client, name: &str) -> Result<Option<bool>, Error> {
    let started = Instant::now();
    loop {
        match slot_active(blue, name).await? {
            None => return Ok(None),
            Some(false) => break,
            // A walsender of the just-disabled subscription may take a moment to end.
            Some(true) if started.elapsed() < SLOT_RELEASE_WAIT => tokio::time::sleep(POLL).await,
            Some(true) => {
                tracing::warn!(slot = %name, "slot still in use on the old blue: left to drop by hand");
                return Ok(Some(false));
            }
        }
    }
    blue.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&name])
        .await
        .map_err(|e| {
            Error::query(
                format!("dropping slot {} on the old blue", quote::name(name)),
                e,
            )
        })?;
    tracing::info!(slot = %name, "slot dropped on the old blue");
    Ok(Some(true))
}

/// What [`drop_publishing`] did in one database.
#[derive(Debug, Default)]
pub struct Publishing {
    pub slots_dropped: Vec<String>,
    /// Still in use after the wait: left to drop by hand, or to a rerun.
    pub slots_left: Vec<String>,
    pub publications_dropped: Vec<String>,
}

/// Drops the slot (once its walsender ended) and the publication of each of `names` in
/// the connected database of blue, or of the old blue: what prepare made to publish.
pub async fn drop_publishing(blue: &Client, names: &[String]) -> Result<Publishing, Error> {
    let mut out = Publishing::default();
    for name in names {
        match drop_slot(blue, name).await? {
            Some(true) => out.slots_dropped.push(name.clone()),
            Some(false) => out.slots_left.push(name.clone()),
            None => {}
        }
        if teardown::publication_exists(blue, name).await? {
            let sql = format!("DROP PUBLICATION IF EXISTS {}", ident(name));
            blue.batch_execute(&sql)
                .await
                .map_err(|e| Error::query(&sql, e))?;
            tracing::info!(publication = %name, "publication dropped");
            out.publications_dropped.push(name.clone());
        }
    }
    Ok(out)
}
