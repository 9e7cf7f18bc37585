//! `recreate-downstream-subscriptions`: the downstream databases subscribe again, to
//! whatever cluster now carries the cell's identifier (green after the rename, blue after
//! an abort), through the same NLB address they used before.
//!
//! For each subscription `drop-downstream-subscriptions` journaled: its publications
//! must exist on the current primary (copy-schema creates them, not this step); then it
//! is created on the downstream from the journaled definition, with the password read
//! from `publisher_credentials_parameter` now, and `copy_data = false` — the downstream
//! already holds everything up to the freeze. Finally the apply worker must be running.
//!
//! Each subscription is held (`downstream::hold`) while it is looked at and created, so a
//! drop still in flight for it finishes first; the abort direction has marked the run
//! aborting before (the fence), so such a drop sees that and drops nothing after. Only this
//! run's journal entry is ever used to create one; once it exists, the entry records on
//! which primary (`recreated`), which `resume-pgbouncer` checks before the switch.
//!
//! An existing subscription is left as it is — unless the current primary lacks its slot:
//! then it was made for the other cluster (a forward run created it on green, and the
//! abort path has since pointed the NLB back at blue) and is only fed second-hand, through
//! green's own replication. It is dropped without touching any remote (`slot_name =
//! NONE`) and created again from the journal. An inactive slot of the journaled name left
//! on green's own identifier (which never names the primary) is dropped too: it would
//! hold green's WAL forever and block the next attempt's slot of that name.
//!
//! A dry run ([`plan`]) checks the same preconditions and lists the local drop, the orphan
//! slot drop and the CREATE (no password shown) it would make; empty when all exist.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, Downstream};
use switchyard_errors::ErrorName;
use switchyard_operation::downstream::{self, Journaled, Recreated};
use switchyard_operation::fence::{self, Way};
use switchyard_operation::{Deps, Error, Login, PauseDeadline, Plan, Side};
use switchyard_postgres::quote::{self, conninfo_value, ident, literal};
use switchyard_telemetry::Secret;
use tokio_postgres::Client;

/// How long the new subscription's apply worker may take to start.
const STREAMING_WAIT: Duration = Duration::from_secs(30);

/// ```json
/// {"cell": { …the cell document… }, "run_id": "switchover-local-a-20261122T050000Z", "direction": "forward"}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock, or past a switch: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
    /// The end of the pause budget (`pause-pgbouncer`'s): every wait stops at it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
    /// The forward path (subscribe to green) or the abort path (back to blue).
    pub direction: Way,
}

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub subscriptions: Vec<RecreatedSubscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct RecreatedSubscription {
    /// The downstream's name in the cell document.
    pub downstream: String,
    pub name: String,
    /// `false`: it already existed and was left alone.
    pub created: bool,
    /// It existed but read a slot the current primary does not have, so it was dropped
    /// (without contacting any remote) and created again.
    pub replaced: bool,
    /// The cluster (green's own identifier) an inactive slot of this subscription's name
    /// was dropped from, left behind by a subscription made for it.
    pub orphan_slot_dropped: Option<String>,
    /// Whether its apply worker is running (always `false` for a disabled subscription).
    pub streaming: bool,
}

/// Where one subscription stands, every precondition of [`run`]'s changes checked.
struct Standing {
    entry: Option<Journaled>,
    /// It exists and is left as it is.
    kept: bool,
    /// It exists but reads a slot the primary lacks: dropped locally, then created.
    replace: bool,
}

async fn assess(
    input: &Input,
    deps: &Deps,
    downstream: &Downstream,
    client: &Client,
    name: &str,
) -> Result<Standing, Error> {
    let cell = &input.cell;
    let what = format!(
        "subscription {} of downstream {}",
        quote::name(name),
        downstream.name
    );
    let entry = Journaled::read(deps, cell, downstream, name).await?;
    let exists = downstream::exists(client, name).await?;
    // Another run's entry is never used to create anything.
    let entry = match entry {
        Some(e) if !exists || input.direction == Way::Forward => {
            Some(e.of_run(&input.run_id, input.force, &what)?)
        }
        Some(e) if e.run_id == input.run_id || input.force => Some(e),
        _ => None,
    };
    if input.direction == Way::Forward {
        let Some(e) = &entry else {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!("{what} was not dropped by this run {} (no journal entry of it): run drop-downstream-subscriptions first", input.run_id),
            ));
        };
        if !e.held_everything() {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!("{what} confirmed {} on blue, before the freeze position {}: it may miss rows; find out why before subscribing it to green", e.confirmed_lsn, e.freeze_lsn),
            ));
        }
    }
    let replace = match (exists, &entry) {
        (true, Some(entry)) => {
            !Box::pin(reads_the_primary(cell, deps, client, name, entry)).await?
        }
        _ => false,
    };
    let kept = exists && !replace;
    if !kept {
        let Some(entry) = &entry else {
            return Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!("{what} neither exists nor is journaled: run drop-downstream-subscriptions first, or recreate it by hand"),
            ));
        };
        let primary = deps
            .connect(cell, Side::Blue, &entry.connection.dbname)
            .await?;
        require_publications(&primary, &entry.connection.dbname, &entry.publications).await?;
    }
    Ok(Standing {
        entry,
        kept,
        replace,
    })
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(
        deps,
        &input.cell,
        input.caller(),
        input.direction.direction(),
    )
    .await?;
    let cell = &input.cell;
    // Every login this run uses, in one SSM call.
    deps.read_logins(
        cell,
        &[
            Login::Orchestrator,
            Login::DownstreamAdmins,
            Login::DownstreamPublishers,
        ],
    )
    .await?;
    let streaming_wait = switchyard_operation::bounded(input.pause_deadline, STREAMING_WAIT);
    let mut subscriptions = Vec::new();
    for downstream in &cell.downstream {
        let client = Box::pin(downstream::connect(cell, downstream, deps)).await?;
        for name in &downstream.subscriptions {
            // Held while looked at and created: a drop still in flight finishes first.
            downstream::hold(&client, name).await?;
            let Standing {
                entry,
                kept,
                replace,
            } = Box::pin(assess(&input, deps, downstream, &client, name)).await?;
            if replace {
                drop_locally(&client, name, &downstream.name).await?;
            }
            let (orphan_slot_dropped, created) = match (&entry, kept) {
                (Some(entry), false) => {
                    let orphan = Box::pin(drop_orphan_slot(cell, deps, entry)).await?;
                    Box::pin(create(deps, downstream, &client, name, entry)).await?;
                    (orphan, true)
                }
                _ => {
                    tracing::info!(downstream = %downstream.name, subscription = %name, "already exists");
                    (None, false)
                }
            };
            let enabled = entry.as_ref().is_none_or(|e| e.enabled);
            let streaming = enabled && wait_streaming(&client, name, streaming_wait).await?;
            if enabled && !streaming {
                let waiting = format!(
                    "waiting for subscription {} on downstream {} to stream",
                    quote::name(name),
                    downstream.name
                );
                if let Some(pause) = input.pause_deadline.filter(|d| d.passed()) {
                    return Err(pause.exceeded(&waiting));
                }
                return Err(Error::stop(
                    ErrorName::TargetNotHealthy,
                    format!("subscription {} on downstream {} has no running apply worker after {}s: read the downstream's log (publication, slot, NLB target), then retry", quote::name(name), downstream.name, streaming_wait.as_secs()),
                ));
            }
            if let Some(mut entry) = entry.filter(|e| e.run_id == input.run_id) {
                let primary = deps.endpoint(cell, Side::Blue).await?.resource_id;
                if entry.recreated.as_ref().map(|r| &r.primary_resource_id) != Some(&primary) {
                    entry.recreated = Some(Recreated {
                        primary_resource_id: primary,
                        at: switchyard_operation::now_rfc3339(),
                    });
                    entry.write(deps, cell, downstream, name).await?;
                }
            }
            downstream::release(&client, name).await?;
            subscriptions.push(RecreatedSubscription {
                downstream: downstream.name.clone(),
                name: name.clone(),
                created,
                replaced: replace,
                orphan_slot_dropped,
                streaming,
            });
        }
    }
    Ok(Output { subscriptions })
}

/// Dry run: per subscription, the local drop, orphan slot drop and CREATE [`run`] would
/// make now.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(
        deps,
        &input.cell,
        input.caller(),
        input.direction.direction(),
    )
    .await?;
    let cell = &input.cell;
    let mut plan = Plan::new();
    for downstream in &cell.downstream {
        let client = Box::pin(downstream::connect(cell, downstream, deps)).await?;
        for name in &downstream.subscriptions {
            let standing = Box::pin(assess(&input, deps, downstream, &client, name)).await?;
            let (Some(entry), false) = (&standing.entry, standing.kept) else {
                continue;
            };
            let (shown, slot) = (quote::name(name), quote::name(&entry.slot_name));
            if standing.replace {
                plan.would(format!(
                    "drop subscription {shown} on downstream {} without contacting any publisher (DISABLE, SET (slot_name = NONE), DROP): the slot it reads is not on the current primary {}",
                    downstream.name, cell.blue.cluster_identifier
                ));
            }
            let green = &cell.green.cluster_identifier;
            if let Some((_, active)) = Box::pin(orphan_slot(cell, deps, entry)).await? {
                plan.would(if active {
                    format!("wait up to {} s for slot {slot} on {green} to be released, then drop it (left if still in use)", SLOT_RELEASE_WAIT.as_secs())
                } else {
                    format!("drop the inactive slot {slot} left on {green}")
                });
            }
            let target = &entry.connection;
            plan.would(format!(
                "CREATE SUBSCRIPTION {shown} on downstream {} for publications {} through {}@{}:{}/{} (password from {}), {}",
                downstream.name,
                entry
                    .publications
                    .iter()
                    .map(|p| quote::name(p))
                    .collect::<Vec<_>>()
                    .join(", "),
                target.user,
                target.host,
                target.port,
                target.dbname,
                downstream.publisher_credentials_parameter,
                options(entry).join(", "),
            ));
            if entry.enabled {
                plan.would(format!(
                    "then wait up to {} s for its apply worker to start",
                    STREAMING_WAIT.as_secs()
                ));
            }
        }
    }
    Ok(plan)
}

/// The `WITH (…)` options of the subscription recreated from `entry`.
fn options(entry: &Journaled) -> Vec<String> {
    let mut options = vec![
        "copy_data = false".to_owned(),
        format!("slot_name = {}", literal(&entry.slot_name)),
        format!("binary = {}", entry.binary),
        format!("streaming = {}", literal(&entry.streaming)),
        format!("enabled = {}", entry.enabled),
    ];
    if let Some(origin) = &entry.origin {
        options.push(format!("origin = {}", literal(origin)));
    }
    options
}

/// Creates the subscription from `entry` ([`assess`] has checked its publications).
async fn create(
    deps: &Deps,
    downstream: &Downstream,
    client: &Client,
    name: &str,
    entry: &Journaled,
) -> Result<(), Error> {
    let target = &entry.connection;
    let login = deps
        .login(&downstream.publisher_credentials_parameter)
        .await?;
    let mut parts = vec![
        format!("host={}", conninfo_value(&target.host)),
        format!("port={}", conninfo_value(&target.port.to_string())),
        format!("dbname={}", conninfo_value(&target.dbname)),
        format!("user={}", conninfo_value(&target.user)),
        format!("password={}", conninfo_value(login.password.expose())),
    ];
    if let Some(mode) = &target.sslmode {
        parts.push(format!("sslmode={}", conninfo_value(mode)));
    }
    if let Some(root) = &target.sslrootcert {
        parts.push(format!("sslrootcert={}", conninfo_value(root)));
    }
    let conninfo = Secret::new(parts.join(" "));
    let publications: Vec<String> = entry.publications.iter().map(|p| ident(p)).collect();
    // Sent alone (simple protocol): CREATE SUBSCRIPTION cannot run in a transaction block.
    let sql = format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH ({})",
        ident(name),
        literal(conninfo.expose()),
        publications.join(", "),
        options(entry).join(", "),
    );
    client.batch_execute(&sql).await.map_err(|e| {
        // The statement holds the password: only the SQLSTATE and the server's message
        // may surface, and not even that if the server quoted the password back.
        let leaks = e.as_db_error().is_some_and(|db| {
            !login.password.expose().is_empty() && db.message().contains(login.password.expose())
        });
        if leaks {
            Error::stop(
                ErrorName::DatabaseError,
                format!("creating subscription {} on downstream {} failed; the server's message quoted the connection string and is withheld: see the downstream's log", quote::name(name), downstream.name),
            )
        } else {
            Error::query(
                format!(
                    "CREATE SUBSCRIPTION {} on downstream {}",
                    quote::name(name),
                    downstream.name
                ),
                e,
            )
        }
    })?;
    tracing::info!(downstream = %downstream.name, subscription = %name, "downstream subscription created");
    Ok(())
}

/// Whether the existing subscription's slot is on the current primary (the cluster the
/// cell's identifier names, which the NLB points at).
async fn reads_the_primary(
    cell: &CellDocument,
    deps: &Deps,
    downstream: &Client,
    name: &str,
    entry: &Journaled,
) -> Result<bool, Error> {
    let slot: Option<String> = downstream
        .query_one(
            "SELECT s.subslotname::text FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
             WHERE d.datname = current_database() AND s.subname = $1",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("reading subscription {}'s slot", quote::name(name)),
                e,
            )
        })?
        .get(0);
    let Some(slot) = slot else {
        return Ok(false); // slot_name = NONE: it cannot stream from anywhere
    };
    let primary = deps
        .connect(cell, Side::Blue, &entry.connection.dbname)
        .await?;
    Ok(primary
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("looking up slot {} on the primary", quote::name(&slot)),
                e,
            )
        })?
        .get(0))
}

/// Drops subscription `name` on the downstream without contacting its publisher: its slot
/// is not on the primary the NLB now reaches.
async fn drop_locally(client: &Client, name: &str, downstream: &str) -> Result<(), Error> {
    let sub = ident(name);
    // Disabled first: a subscription's slot can only be detached while it is disabled.
    for sql in [
        format!("ALTER SUBSCRIPTION {sub} DISABLE"),
        format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"),
        format!("DROP SUBSCRIPTION {sub}"),
    ] {
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::query(format!("{sql} on downstream {downstream}"), e))?;
    }
    tracing::warn!(%downstream, subscription = %name, "subscription read a slot the primary does not have: dropped, to be created again");
    Ok(())
}

/// How long a dropped subscription's walsender may take to release its slot.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// A slot of the journaled name on green's own identifier, if that resolves (after a
/// forward rename it does not: green carries the cell's identifier), with a connection to
/// it and whether it is active.
async fn orphan_slot(
    cell: &CellDocument,
    deps: &Deps,
    entry: &Journaled,
) -> Result<Option<(Client, bool)>, Error> {
    let other = &cell.green.cluster_identifier;
    let client = match deps
        .connect(cell, Side::Green, &entry.connection.dbname)
        .await
    {
        Ok(client) => client,
        Err(e) => {
            tracing::info!(cluster = %other, error = %e, "no cluster under green's identifier to clean up");
            return Ok(None);
        }
    };
    let active = slot_active(&client, other, &entry.slot_name).await?;
    Ok(active.map(|active| (client, active)))
}

async fn slot_active(client: &Client, cluster: &str, slot: &str) -> Result<Option<bool>, Error> {
    Ok(client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| {
            Error::query(
                format!("looking up slot {} on {cluster}", quote::name(slot)),
                e,
            )
        })?
        .map(|r| r.get(0)))
}

/// Drops the [`orphan_slot`] once inactive. A slot still active after
/// [`SLOT_RELEASE_WAIT`] is left, and logged.
async fn drop_orphan_slot(
    cell: &CellDocument,
    deps: &Deps,
    entry: &Journaled,
) -> Result<Option<String>, Error> {
    let other = &cell.green.cluster_identifier;
    let Some((client, mut active)) = orphan_slot(cell, deps, entry).await? else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + SLOT_RELEASE_WAIT;
    while active {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(cluster = %other, slot = %entry.slot_name, "orphaned downstream slot still active: left");
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match slot_active(&client, other, &entry.slot_name).await? {
            None => return Ok(None),
            Some(now) => active = now,
        }
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&entry.slot_name])
        .await
        .map_err(|e| {
            Error::query(
                format!("dropping slot {} on {other}", quote::name(&entry.slot_name)),
                e,
            )
        })?;
    tracing::info!(cluster = %other, slot = %entry.slot_name, "orphaned downstream slot dropped");
    Ok(Some(other.clone()))
}

/// Every publication must already exist on the current primary.
async fn require_publications(
    primary: &Client,
    dbname: &str,
    publications: &[String],
) -> Result<(), Error> {
    let rows = primary
        .query(
            "SELECT p FROM unnest($1::text[]) p WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = p)",
            &[&publications],
        )
        .await
        .map_err(|e| Error::query("looking up publications on the primary", e))?;
    let missing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "publication(s) {} missing in database {} of the current primary: copy-schema should have created it; create it there, then retry",
            missing
                .iter()
                .map(|p| quote::name(p))
                .collect::<Vec<_>>()
                .join(", "),
            quote::name(dbname)
        ),
    ))
}

/// Whether the subscription's apply worker runs within `wait`.
async fn wait_streaming(client: &Client, name: &str, wait: Duration) -> Result<bool, Error> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let running: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL AND pid IS NOT NULL)",
                &[&name],
            )
            .await
            .map_err(|e| {
                Error::query(
                    format!("reading pg_stat_subscription for {}", quote::name(name)),
                    e,
                )
            })?
            .get(0);
        if running || tokio::time::Instant::now() >= deadline {
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<super::Input, super::Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
