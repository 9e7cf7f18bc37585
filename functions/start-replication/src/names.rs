//! The replication objects' names come from the cell document
//! (`CellDocument::replication_names`); what is left here is the one rule the document
//! cannot check alone.

use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::Error;

/// `InvalidInput` unless the cell has exactly one database.
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_database_is_invalid_input() {
        let mut two = CellDocument::from_json(switchyard_cell::EXAMPLE).expect("example");
        check(&two).expect("one database");
        two.databases.push("other".into());
        let err = check(&two).expect_err("two databases");
        assert!(err.to_string().contains("databases"), "{err}");
    }
}
