//! `drop-downstream-subscriptions`: after the freeze, the downstream databases that
//! subscribe to blue (through the NLB) stop subscribing, so blue can be renamed away.
//!
//! For each subscription of each downstream: blue's frozen WAL position (or
//! `target_lsn`) must already be confirmed by the subscription's slot on blue, else
//! `DownstreamBehind` (retried by the state machine) and nothing is dropped. Then its
//! definition — publications, options and the connection target *without* the password —
//! is journaled under `downstream/<downstream>/<subscription>` for
//! `recreate-downstream-subscriptions`, and only then is it dropped (which drops the slot
//! on blue). With blue unreachable, the subscription is detached from its slot first and
//! the slot is reported as left. A subscription already gone with this run's journal
//! entry in place is done; gone with another run's entry (or none) it is a stop: an earlier
//! run's "already dropped" says nothing about what the downstream holds now.
//!
//! The journal write and the drop happen while holding the subscription
//! (`downstream::hold`) and after re-reading the run's decision under it: if the abort path
//! has begun while this call waited for the slot, nothing is dropped (`AbortInProgress`),
//! and an abort that begins later waits for the drop to finish before it recreates.
//!
//! A dry run ([`plan`]) checks each subscription the same way and lists, per subscription
//! not yet dropped, the wait for its slot (if behind now), the journal write and the drop.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use switchyard_cell::{CellDocument, Downstream};
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_operation::feedback;
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::PauseDeadline;
use switchyard_operation::{Deps, Error, Login, Plan, Side};
use switchyard_postgres::quote::{self, ident};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use switchyard_operation::downstream::{self, Journaled, Target};

/// ```json
/// {"cell": { …the cell document… }, "target_lsn": "3/4A0012F8"}
/// ```
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
    /// The end of the pause budget (`pause-pgbouncer`'s): every wait stops at it.
    #[serde(default)]
    pub pause_deadline: Option<PauseDeadline>,
    /// The LSN every slot must have confirmed; default: blue's `pg_current_wal_lsn()` now
    /// (writes are already revoked, so nothing after it matters).
    #[serde(default)]
    pub target_lsn: Option<String>,
    /// How long this call waits for a slot to reach the target before answering
    /// `DownstreamBehind`: 0 (look once) to 60; default 5, cut to what is left of the pause
    /// budget. The state machine retries for longer; waiting here spares the window a
    /// whole retry interval.
    #[serde(default = "default_wait_seconds")]
    pub wait_seconds: u64,
}

fn default_wait_seconds() -> u64 {
    5
}

/// The most one call may wait: the Lambda's timeout must cover it with room to spare.
const MAX_WAIT_SECONDS: u64 = 60;

/// How often a slot is looked at again while waiting.
const POLL: Duration = Duration::from_millis(50);

switchyard_operation::operation_input!(Input);

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub subscriptions: Vec<DroppedSubscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct DroppedSubscription {
    /// The downstream's name in the cell document.
    pub downstream: String,
    pub name: String,
    /// The slot's `confirmed_flush_lsn` on blue when checked (from the journal if an
    /// earlier run dropped it).
    pub confirmed_lsn: String,
    /// `false`: already dropped by an earlier run.
    pub dropped: bool,
    /// `true` when blue was unreachable: its slot still exists and must be dropped there.
    pub slot_left: bool,
}

/// What `pg_subscription` says about one subscription (the conninfo holds the password).
struct Definition {
    publications: Vec<String>,
    slot_name: Option<String>,
    binary: bool,
    streaming: String,
    enabled: bool,
    origin: Option<String>,
    conninfo: String,
}

/// One subscription of the cell document, as found now.
enum Found {
    /// Dropped by an earlier run: its journal entry.
    Dropped(Journaled),
    /// Still there: to be journaled and dropped once its slot has confirmed `target_lsn`.
    Pending(Pending),
}

struct Pending {
    definition: Definition,
    target: Target,
    slot: String,
    blue: Client,
    target_lsn: String,
}

fn check_wait(input: &Input) -> Result<(), Error> {
    if input.wait_seconds > MAX_WAIT_SECONDS {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!("wait_seconds must be 0 to {MAX_WAIT_SECONDS} (the state machine retries for longer)"),
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, target_lsn = ?input.target_lsn))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    fence::admit(deps, &input.cell, input.caller(), Direction::Forward).await?;
    check_wait(&input)?;
    // Every login this run uses, in one SSM call.
    deps.read_logins(&input.cell, &[Login::Orchestrator, Login::DownstreamAdmins])
        .await?;
    let deadline = tokio::time::Instant::now()
        + switchyard_operation::bounded(
            input.pause_deadline,
            Duration::from_secs(input.wait_seconds),
        );
    let cell = &input.cell;
    let mut subscriptions = Vec::new();
    for downstream in &cell.downstream {
        let client = Box::pin(downstream::connect(cell, downstream, deps)).await?;
        for name in &downstream.subscriptions {
            match Box::pin(find(&input, deps, downstream, &client, name)).await? {
                Found::Dropped(entry) => {
                    tracing::info!(downstream = %downstream.name, subscription = %name, "already dropped");
                    subscriptions.push(DroppedSubscription {
                        downstream: downstream.name.clone(),
                        name: name.clone(),
                        confirmed_lsn: entry.confirmed_lsn,
                        dropped: false,
                        slot_left: false,
                    });
                }
                Found::Pending(pending) => {
                    let dropped = Box::pin(drop_one(
                        &input, deps, downstream, &client, name, pending, deadline,
                    ))
                    .await?;
                    subscriptions.push(dropped);
                }
            }
        }
    }
    Ok(Output { subscriptions })
}

/// Dry run: per subscription not dropped yet, the wait for its slot (when behind now),
/// the journal write and the drop [`run`] would make.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, target_lsn = ?input.target_lsn))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    fence::check(deps, &input.cell, input.caller(), Direction::Forward).await?;
    check_wait(&input)?;
    let cell = &input.cell;
    let mut plan = Plan::new();
    for downstream in &cell.downstream {
        let client = Box::pin(downstream::connect(cell, downstream, deps)).await?;
        for name in &downstream.subscriptions {
            let Found::Pending(p) = Box::pin(find(&input, deps, downstream, &client, name)).await?
            else {
                continue;
            };
            let position = slot_position(&p.blue, downstream, name, &p.slot, &p.target_lsn).await?;
            let (shown, slot) = (quote::name(name), quote::name(&p.slot));
            if !position.reached {
                plan.would(format!(
                    "wait up to {} s for slot {} on blue to confirm {} (confirmed {} now, {} bytes behind); if it does not, stop with DownstreamBehind and do nothing below",
                    input.wait_seconds,
                    slot,
                    position.target,
                    position.confirmed.as_deref().unwrap_or("nothing"),
                    position.behind,
                ));
            }
            plan.would(format!(
                "journal subscription {shown} of downstream {} under {} (publications {}, slot {slot}, connection {}@{}:{}/{}, no password)",
                downstream.name,
                Journaled::parameter(deps, cell, downstream, name),
                p.definition
                    .publications
                    .iter()
                    .map(|p| quote::name(p))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.target.user,
                p.target.host,
                p.target.port,
                p.target.dbname,
            ));
            plan.would(format!(
                "DROP SUBSCRIPTION {shown} on downstream {}, which drops slot {slot} on blue",
                downstream.name
            ));
        }
    }
    Ok(plan)
}

/// Where subscription `name` of `downstream` stands; every precondition of dropping it
/// checked, nothing changed.
async fn find(
    input: &Input,
    deps: &Deps,
    downstream: &Downstream,
    client: &Client,
    name: &str,
) -> Result<Found, Error> {
    let cell = &input.cell;
    let shown = quote::name(name);
    let Some(definition) = read(client, name).await? else {
        let what = format!(
            "subscription {shown} of downstream {}, which does not exist now,",
            downstream.name
        );
        return match Journaled::read(deps, cell, downstream, name).await? {
            Some(entry) => Ok(Found::Dropped(entry.of_run(&input.run_id, input.force, &what)?)),
            None => Err(Error::stop(
                ErrorName::PreconditionFailed,
                format!("subscription {shown} of downstream {} does not exist and no journal entry records it: recreate it by hand or remove it from the cell document", downstream.name),
            )),
        };
    };
    let target = Target::from_conninfo(&definition.conninfo).map_err(|why| {
        Error::stop(
            ErrorName::PreconditionFailed,
            format!("the connection string of subscription {shown} on downstream {} cannot be read ({why}); drop and journal it by hand", downstream.name),
        )
    })?;
    let Some(slot) = definition.slot_name.clone() else {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("subscription {shown} on downstream {} has no slot (slot_name = NONE): it cannot have caught up; fix it by hand", downstream.name),
        ));
    };
    let blue = deps.connect(cell, Side::Blue, &target.dbname).await?;
    // The target is fixed once: blue's position now, unless the input names one.
    let target_lsn = match &input.target_lsn {
        Some(lsn) => lsn.clone(),
        None => blue
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| Error::query("reading blue's WAL position", e))?
            .get(0),
    };
    Ok(Found::Pending(Pending {
        definition,
        target,
        slot,
        blue,
        target_lsn,
    }))
}

async fn drop_one(
    input: &Input,
    deps: &Deps,
    downstream: &Downstream,
    client: &Client,
    name: &str,
    pending: Pending,
    deadline: tokio::time::Instant,
) -> Result<DroppedSubscription, Error> {
    let Pending {
        definition,
        target,
        slot,
        blue,
        target_lsn,
    } = pending;
    let mut nudged: Option<tokio::time::Instant> = None;
    let confirmed_lsn = loop {
        match caught_up(&blue, downstream, name, &slot, &target_lsn).await {
            Err(e)
                if e.error_name() == ErrorName::DownstreamBehind
                    && tokio::time::Instant::now() < deadline =>
            {
                // Ask the downstream for its feedback now rather than on its own cycle.
                if nudged.is_none_or(|at| at.elapsed() >= feedback::NUDGE_EVERY) {
                    feedback::nudge(client, &blue).await;
                    nudged = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(POLL).await;
            }
            Err(e) if e.error_name() == ErrorName::DownstreamBehind => {
                if let Some(pause) = input.pause_deadline.filter(|d| d.passed()) {
                    return Err(pause.exceeded(&format!(
                        "waiting for downstream {}'s slot {}",
                        downstream.name,
                        quote::name(&slot)
                    )));
                }
                return Err(e);
            }
            other => break other?,
        }
    };

    let cell = &input.cell;
    let entry = Journaled {
        run_id: input.run_id.clone(),
        publications: definition.publications,
        slot_name: slot,
        binary: definition.binary,
        streaming: definition.streaming,
        enabled: definition.enabled,
        origin: definition.origin,
        connection: target,
        freeze_lsn: target_lsn,
        confirmed_lsn: confirmed_lsn.clone(),
        recorded_at: switchyard_operation::now_rfc3339(),
        recreated: None,
    };
    downstream::hold(client, name).await?;
    // The wait above may have outlasted the run's forward path: under the hold, the abort
    // path either has not begun (and will wait for this drop) or has, and nothing is dropped.
    fence::check(deps, cell, input.caller(), Direction::Forward).await?;
    if read(client, name).await?.is_none() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("subscription {} of downstream {} disappeared while its slot was checked: someone else dropped it; find out why", quote::name(name), downstream.name),
        ));
    }
    // Journaled before the drop: afterwards the definition exists nowhere else.
    entry.write(deps, cell, downstream, name).await?;

    let slot_left = drop_subscription(client, downstream, name).await?;
    downstream::release(client, name).await?;
    tracing::info!(downstream = %downstream.name, subscription = %name, %confirmed_lsn, slot_left, "downstream subscription dropped");
    Ok(DroppedSubscription {
        downstream: downstream.name.clone(),
        name: name.to_owned(),
        confirmed_lsn,
        dropped: true,
        slot_left,
    })
}

/// The subscription's definition, `None` when it does not exist.
async fn read(client: &Client, name: &str) -> Result<Option<Definition>, Error> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| Error::query("reading the downstream's version", e))?
        .get(0);
    // suborigin exists from PG16 on; substream is a bool before 16 and a char after.
    let origin = if version >= 160_000 {
        "s.suborigin::text"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT s.subpublications, s.subslotname::text, s.subbinary, s.substream::text, s.subenabled, {origin}, s.subconninfo \
         FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
         WHERE d.datname = current_database() AND s.subname = $1"
    );
    let row = client
        .query_opt(&sql, &[&name])
        .await
        .map_err(|e| Error::query(format!("reading subscription {}", quote::name(name)), e))?;
    Ok(row.map(|row| Definition {
        publications: row.get(0),
        slot_name: row.get(1),
        binary: row.get(2),
        streaming: match row.get::<_, String>(3).as_str() {
            "t" | "true" => "on".to_owned(),
            "p" => "parallel".to_owned(),
            _ => "off".to_owned(),
        },
        enabled: row.get(4),
        origin: row.get(5),
        conninfo: row.get(6),
    }))
}

/// A slot on blue measured against a target LSN.
struct SlotPosition {
    confirmed: Option<String>,
    reached: bool,
    /// Bytes behind the target, or `all` when nothing is confirmed.
    behind: String,
    target: String,
}

/// Where `slot` stands against `target_lsn`; `PreconditionFailed` when blue lacks it.
async fn slot_position(
    blue: &Client,
    downstream: &Downstream,
    name: &str,
    slot: &str,
    target_lsn: &str,
) -> Result<SlotPosition, Error> {
    let row = blue
        .query_opt(
            "SELECT s.confirmed_flush_lsn::text, coalesce(s.confirmed_flush_lsn >= t.lsn, false), \
                    coalesce(pg_wal_lsn_diff(t.lsn, s.confirmed_flush_lsn)::text, 'all'), t.lsn::text \
             FROM (SELECT $2::text::pg_lsn AS lsn) t \
             JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&slot, &target_lsn],
        )
        .await
        .map_err(|e| Error::query(format!("reading slot {} on blue", quote::name(slot)), e))?;
    let Some(row) = row else {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "subscription {} of downstream {} uses slot {}, which blue does not have; find out why before dropping it",
                quote::name(name),
                downstream.name,
                quote::name(slot)
            ),
        ));
    };
    Ok(SlotPosition {
        confirmed: row.get(0),
        reached: row.get(1),
        behind: row.get(2),
        target: row.get(3),
    })
}

/// The slot's `confirmed_flush_lsn` once it has reached the target; `DownstreamBehind`
/// until then.
async fn caught_up(
    blue: &Client,
    downstream: &Downstream,
    name: &str,
    slot: &str,
    target_lsn: &str,
) -> Result<String, Error> {
    let position = slot_position(blue, downstream, name, slot, target_lsn).await?;
    match position.confirmed {
        Some(confirmed) if position.reached => Ok(confirmed),
        confirmed => Err(Error::stop(
            ErrorName::DownstreamBehind,
            format!(
                "subscription {} of downstream {} has confirmed {} on blue, {} bytes behind {}; retry once it catches up",
                quote::name(name),
                downstream.name,
                confirmed.as_deref().unwrap_or("nothing"),
                position.behind,
                position.target,
            ),
        )),
    }
}

/// Drops the subscription: `true` when blue was unreachable and its slot was left behind.
async fn drop_subscription(
    client: &Client,
    downstream: &Downstream,
    name: &str,
) -> Result<bool, Error> {
    let sql = format!("DROP SUBSCRIPTION {}", ident(name));
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(false),
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("08")) => {
            tracing::warn!(downstream = %downstream.name, subscription = %name, "publisher unreachable: dropping without its slot");
            // Without a slot name, DROP no longer needs the publisher; a disabled
            // subscription is required for SET (slot_name = NONE).
            let detach = format!(
                "ALTER SUBSCRIPTION {n} DISABLE; ALTER SUBSCRIPTION {n} SET (slot_name = NONE); DROP SUBSCRIPTION {n}",
                n = ident(name)
            );
            client.batch_execute(&detach).await.map_err(|e| {
                Error::query(
                    format!(
                        "dropping subscription {} without its slot",
                        quote::name(name)
                    ),
                    e,
                )
            })?;
            Ok(true)
        }
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(false),
        Err(e) => Err(Error::query(
            format!("DROP SUBSCRIPTION {}", quote::name(name)),
            e,
        )),
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
