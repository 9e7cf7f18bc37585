//! The rollback window after a switch (`check-drift` on a switched cell): green's slot
//! `switchyard_reverse` keeps every write for the old blue, and keeps the WAL too, until
//! the old blue confirms it. Watched per database:
//! - no slot: the way back is gone, or was closed (`finalize`) — a warning;
//! - a slot nothing streams from: the old blue does not follow (unreachable, its apply
//!   failing on DDL green took), and green's WAL grows — a blocker;
//! - a slot retaining more WAL than `budgets.rollback_wal_bytes` — a blocker;
//! - DDL on green that the guard journaled and switchyard did not vouch for — a blocker:
//!   reverse replication does not carry it, and a switch back needs it on the old blue
//!   first; no guard while the window is open — a warning.

use serde::{Deserialize, Serialize};
use switchyard_cell::{reverse_replication_name, CellDocument};
use switchyard_operation::guard::{journaled, Journaled, Watched};
use switchyard_operation::{green_fence, Deps, Error};
use switchyard_postgres::quote;

use crate::finding::{Code, Finding};
use crate::schema::in_database;

/// Green's reverse slot in one database, as read now.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Slot {
    pub database: String,
    /// A subscriber (the old blue) streams from it.
    pub active: bool,
    /// WAL the slot keeps on green, in bytes.
    pub retained_bytes: i64,
}

/// Reads green's reverse slot in each of the cell's databases: `(findings, slots found)`.
pub async fn check(cell: &CellDocument, deps: &Deps) -> Result<(Vec<Finding>, Vec<Slot>), Error> {
    let name = reverse_replication_name();
    let budget = cell.budgets.rollback_wal_bytes;
    let mut findings = Vec::new();
    let mut slots = Vec::new();
    for database in &cell.databases {
        let green = Box::pin(green_fence::connect(cell, deps, database)).await?;
        let row = green
            .query_opt(
                "SELECT active,
                        coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::bigint
                   FROM pg_catalog.pg_replication_slots
                  WHERE slot_name = $1 AND database = pg_catalog.current_database()",
                &[&name],
            )
            .await
            .map_err(|e| Error::query(format!("reading slot {} on green", quote::name(&name)), e))?;
        let object = vec![in_database(database, &quote::name(&name))];
        let Some(row) = row else {
            findings.push(Finding::new(
                Code::RollbackWindowClosed,
                object,
                "green has no slot switchyard_reverse: the old blue does not follow green, and the cell cannot switch back without losing writes",
                "nothing, if finalize closed the window; else the way back is gone: keep the old blue only as a snapshot",
            ));
            continue;
        };
        let slot = Slot {
            database: database.clone(),
            active: row.get(0),
            retained_bytes: row.get(1),
        };
        if !slot.active {
            findings.push(Finding::new(
                Code::RollbackNotStreaming,
                object.clone(),
                format!(
                    "nothing streams from green's slot switchyard_reverse: the old blue does not follow green, and green keeps {} bytes of WAL for it, growing",
                    slot.retained_bytes
                ),
                "read the old blue's log (green unreachable from it, its apply failing on DDL green took), fix it, then finalize-replication (reverse) again; or close the window with finalize",
            ));
        }
        if u64::try_from(slot.retained_bytes).is_ok_and(|b| b > budget) {
            findings.push(Finding::new(
                Code::RollbackSlotRetains,
                object,
                format!(
                    "green's slot switchyard_reverse retains {} bytes of WAL, over budgets.rollback_wal_bytes ({budget})",
                    slot.retained_bytes
                ),
                "see why the old blue lags (its log, pg_stat_subscription on it); close the window with finalize if the way back is no longer needed",
            ));
        }
        findings.extend(ddl(&green, database).await?);
        slots.push(slot);
    }
    Ok((findings, slots))
}

/// DDL on green since the switch that the guard journaled and switchyard did not vouch for.
async fn ddl(green: &tokio_postgres::Client, database: &str) -> Result<Vec<Finding>, Error> {
    let object = vec![in_database(database, "DDL journal on green")];
    Ok(match journaled(green, database, Watched::Green).await? {
        Journaled::Clean => Vec::new(),
        Journaled::Unguarded => vec![Finding::new(
            Code::RollbackUnguarded,
            object,
            format!("green has no DDL guard (database {}): DDL there since the switch could have gone unseen, and the old blue cannot follow it", quote::name(database)),
            "compare green's and the old blue's schemas before switching back",
        )],
        Journaled::Unvouched(message) => vec![Finding::new(
            Code::RollbackDdl,
            object,
            message,
            "apply the same DDL to the old blue, then acknowledge the journal rows on green as the detail says",
        )],
    })
}
