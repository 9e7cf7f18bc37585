//! The replication objects' names: publication, slot and subscription share one name,
//! `switchyard_<table group>` per group and `switchyard_rest` for every other table.

use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::Error;

/// The pseudo-group holding every table no table group names.
pub(crate) const REST: &str = "rest";

/// PostgreSQL truncates longer names, so two long group names could meet in one object.
const MAX_NAME_BYTES: usize = 63;

pub(crate) fn publication_name(group: &str) -> String {
    format!("switchyard_{group}")
}

/// `InvalidInput` unless every replication object name of the cell can be used as given.
pub(crate) fn check(cell: &CellDocument) -> Result<(), Error> {
    // Slots are cluster-wide on blue while publications and subscriptions are per
    // database: a second database would need a second `switchyard_rest` slot.
    if cell.databases.len() != 1 {
        return Err(Error::stop(
            ErrorName::InvalidInput,
            format!(
                "databases: replication supports exactly one database per cell (got {}): slot names (switchyard_<group>) are cluster-wide on blue and would collide",
                cell.databases.len()
            ),
        ));
    }
    let mut problems = Vec::new();
    for (i, group) in cell.table_groups.iter().enumerate() {
        let name = publication_name(&group.name);
        if group.name == REST {
            problems.push(format!(
                "table_groups[{i}].name: {REST:?} is reserved for the tables no group names"
            ));
        } else if name.len() > MAX_NAME_BYTES {
            problems.push(format!(
                "table_groups[{i}].name: {name} is longer than {MAX_NAME_BYTES} bytes"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::stop(ErrorName::InvalidInput, problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use switchyard_cell::TableGroup;

    use super::*;

    fn cell(groups: &[&str]) -> CellDocument {
        let mut cell = CellDocument::from_json(switchyard_cell::EXAMPLE).expect("example");
        cell.table_groups = groups
            .iter()
            .map(|name| TableGroup {
                name: (*name).to_owned(),
                tables: Vec::new(),
            })
            .collect();
        cell
    }

    #[test]
    fn group_names_prefixed() {
        assert_eq!(publication_name("Hot Tables"), "switchyard_Hot Tables");
        check(&cell(&["payments", "Hot Tables"])).expect("usable names");
    }

    #[test]
    fn reserved_and_overlong_names_are_invalid_input() {
        let err = check(&cell(&["rest", &"x".repeat(60)])).expect_err("rejected");
        let text = err.to_string();
        assert!(text.contains("table_groups[0].name"), "{text}");
        assert!(text.contains("table_groups[1].name"), "{text}");

        let mut two = cell(&[]);
        two.databases.push("other".into());
        let err = check(&two).expect_err("two databases");
        assert!(err.to_string().contains("databases"), "{err}");
    }
}
