//! Why a cell document was rejected, naming the fields an operator must fix.

use std::fmt;

use switchyard_errors::{Catalogued, ErrorName};

/// One invalid field of a cell document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field's path, e.g. `downstream[0].endpoint`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A cell document that cannot drive a run. Raised as `InvalidInput`: fix the document and
/// start a new run.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// The JSON does not fit the document's shape (missing field, wrong type, unknown field).
    #[error("cell document does not parse: {}{message}", at(.path))]
    Malformed {
        /// Where the parser stopped, e.g. `budgets.pause_seconds` (`.` for the top level).
        path: String,
        /// The parser's explanation.
        message: String,
    },
    /// The document parses but breaks rules; every broken rule is listed.
    #[error("cell document is invalid; fix these fields and start a new run:{}", lines(.problems))]
    Invalid {
        /// Every problem found, in document order.
        problems: Vec<Problem>,
    },
}

fn at(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

fn lines(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

impl Catalogued for CellError {
    fn error_name(&self) -> ErrorName {
        ErrorName::InvalidInput
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_one_problem_per_line() {
        let error = CellError::Invalid {
            problems: vec![
                Problem {
                    field: "region".into(),
                    reason: "not a region".into(),
                },
                Problem {
                    field: "budgets.drain_seconds".into(),
                    reason: "must be positive".into(),
                },
            ],
        };
        let text = error.to_string();
        let mut lines = text.lines().skip(1);
        assert_eq!(lines.next(), Some("  region: not a region"));
        assert_eq!(
            lines.next(),
            Some("  budgets.drain_seconds: must be positive")
        );
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn malformed_names_the_path_unless_top_level() {
        let nested = CellError::Malformed {
            path: "budgets.pause_seconds".into(),
            message: "invalid type".into(),
        };
        assert_eq!(
            nested.to_string(),
            "cell document does not parse: budgets.pause_seconds: invalid type"
        );
        let top = CellError::Malformed {
            path: ".".into(),
            message: "missing field `region`".into(),
        };
        assert_eq!(
            top.to_string(),
            "cell document does not parse: missing field `region`"
        );
    }

    #[test]
    fn is_invalid_input_for_the_state_machine() {
        let error = CellError::Invalid { problems: vec![] };
        assert_eq!(error.to_failure().name(), ErrorName::InvalidInput);
    }
}
