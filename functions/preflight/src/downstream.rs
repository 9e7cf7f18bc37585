//! The downstream subscribers: every subscription the cell document names must exist on
//! its subscriber. One that a run dropped (its journal entry says so) and that nobody
//! created again means the downstream stopped following at that run's freeze; switching
//! over would recreate it with `copy_data = false` from an old definition and hide every
//! row since.

use switchyard_cell::CellDocument;
use switchyard_operation::downstream::{self, Journaled};
use switchyard_operation::{Deps, Error};

use crate::finding::{Code, Finding};

pub async fn check(cell: &CellDocument, deps: &Deps) -> Result<Vec<Finding>, Error> {
    let mut findings = Vec::new();
    for subscriber in &cell.downstream {
        let client = Box::pin(downstream::connect(cell, subscriber, deps)).await?;
        for name in &subscriber.subscriptions {
            if downstream::exists(&client, name).await? {
                continue;
            }
            let object = format!(
                "downstream {}: subscription {}",
                subscriber.name,
                switchyard_postgres::quote::name(name)
            );
            let finding = match Journaled::read(deps, cell, subscriber, name).await? {
                Some(entry) => Finding::new(
                    Code::DownstreamSubscriptionMissing,
                    vec![object],
                    format!(
                        "Dropped by run {} at {} (its slot had confirmed {}) and never created again: the downstream has received nothing since.",
                        entry.run_id, entry.recorded_at, entry.confirmed_lsn
                    ),
                    format!(
                        "Bring the downstream back in step with blue (recreate the subscription with copy_data = true, or resync it), then delete journal entry {}.",
                        Journaled::parameter(deps, cell, subscriber, name)
                    ),
                ),
                None => Finding::new(
                    Code::DownstreamSubscriptionMissing,
                    vec![object],
                    "The cell document names this subscription but the subscriber does not have it, and no run journaled dropping it.",
                    "Create it on the subscriber (copy_data = true if it may have missed rows), or remove it from the cell document.",
                ),
            };
            findings.push(finding);
        }
    }
    Ok(findings)
}
