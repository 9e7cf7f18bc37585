//! Who is who across the renames: the plan `rename-clusters` journals before its first
//! rename, and the one rule for the name blue is parked under. `finalize-replication`
//! finds the old blue through both; nothing else spells them.

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;

use crate::journal::Entry;

/// The journaled rename plan: both clusters by `DbClusterResourceId` (which survives
/// renames) and the three identifiers involved.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct RenamePlan {
    /// The run that journaled it; `None` for a plan written before plans named their run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The cell's (blue's original) identifier: the name the endpoint is known by.
    pub cell_identifier: String,
    pub green_identifier: String,
    /// `<id>-blue-<blue major>` ([`parked_identifier`]).
    pub parked_identifier: String,
    pub blue_resource_id: String,
    pub green_resource_id: String,
    /// Ties the plan to this upgrade: a plan left by an earlier one must not steer this one.
    pub target_major_version: u32,
    /// RFC 3339, UTC.
    pub recorded_at: String,
}

impl Entry for RenamePlan {
    const KEY: &'static str = "rename";
    const WHAT: &'static str = "the rename plan";
}

/// The identifier blue is parked under while green holds the cell's: `<id>-blue-<major>`.
pub fn parked_identifier(cell: &CellDocument, blue_major: u32) -> String {
    cell.blue_renamed_identifier(blue_major)
}

/// Whether `identifier` is a parked blue of this cell: `<id>-blue-<major>` with a major
/// below the target (an older upgrade's parked cluster has a lower one, never the target).
/// A switch-back parks the upgrade's green, of the undone upgrade's major: its own green,
/// `<id>-blue-<target>`, is the old blue coming back, not a parked one.
pub fn is_parked(cell: &CellDocument, identifier: &str) -> bool {
    parked_major(cell, identifier).is_some()
}

/// The major in a parked blue's identifier, when `identifier` is one.
pub fn parked_major(cell: &CellDocument, identifier: &str) -> Option<u32> {
    identifier
        .strip_prefix(&format!("{}-blue-", cell.blue.cluster_identifier))
        .and_then(|major| major.parse::<u32>().ok())
        .filter(|major| {
            let parks = match &cell.undoes {
                None => *major < cell.target_major_version,
                Some(undoes) => *major == undoes.target_major_version,
            };
            parks && parked_identifier(cell, *major) == identifier
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_names_follow_the_cell_document() {
        let cell = CellDocument::from_json(switchyard_cell::EXAMPLE).expect("example");
        let below = cell.target_major_version - 1;
        let parked = parked_identifier(&cell, below);
        assert!(is_parked(&cell, &parked));
        assert_eq!(parked_major(&cell, &parked), Some(below));
        assert!(!is_parked(
            &cell,
            &parked_identifier(&cell, cell.target_major_version)
        ));
        let blue = &cell.blue.cluster_identifier;
        assert!(!is_parked(&cell, blue));
        assert!(!is_parked(&cell, &format!("{parked}x")));
        assert!(!is_parked(&cell, &format!("{blue}-blue-0{below}")));
        assert!(!is_parked(&cell, &format!("{blue}-blue-x")));
        assert!(!is_parked(&cell, &format!("other-blue-{below}")));
    }

    #[test]
    fn a_switch_back_parks_the_upgrades_green_under_its_major() {
        let forward = CellDocument::from_json(switchyard_cell::EXAMPLE).expect("example");
        let back = forward.back("local-a-blue-14", 14).expect("back");
        assert_eq!(parked_identifier(&back, 17), "local-a-blue-17");
        assert_eq!(parked_major(&back, "local-a-blue-17"), Some(17));
        assert!(
            !is_parked(&back, "local-a-blue-14"),
            "the old blue coming back"
        );
        assert!(
            !is_parked(&back, "local-a-blue-16"),
            "not the undone upgrade's major"
        );
    }
}
