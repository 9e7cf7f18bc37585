//! Runtime errors of a state, with the predefined `States.*` names.

/// Matches every error but [`RUNTIME`] and [`DATA_LIMIT_EXCEEDED`].
pub(crate) const ALL: &str = "States.ALL";
/// Matches every error but [`TIMEOUT`] (and the two [`ALL`] misses).
pub(crate) const TASK_FAILED: &str = "States.TaskFailed";
pub(crate) const TIMEOUT: &str = "States.Timeout";
/// Never retried or caught: the execution fails.
pub(crate) const RUNTIME: &str = "States.Runtime";
/// Caught only when named explicitly.
pub(crate) const DATA_LIMIT_EXCEEDED: &str = "States.DataLimitExceeded";
pub(crate) const PARAMETER_PATH_FAILURE: &str = "States.ParameterPathFailure";
pub(crate) const RESULT_PATH_MATCH_FAILURE: &str = "States.ResultPathMatchFailure";
pub(crate) const INTRINSIC_FAILURE: &str = "States.IntrinsicFailure";
pub(crate) const NO_CHOICE_MATCHED: &str = "States.NoChoiceMatched";

/// Every `States.*` name an `ErrorEquals` may use (Step Functions' list).
pub(crate) const KNOWN: &[&str] = &[
    ALL,
    TASK_FAILED,
    TIMEOUT,
    RUNTIME,
    DATA_LIMIT_EXCEEDED,
    PARAMETER_PATH_FAILURE,
    RESULT_PATH_MATCH_FAILURE,
    INTRINSIC_FAILURE,
    NO_CHOICE_MATCHED,
    "States.BranchFailed",
    "States.HeartbeatTimeout",
    "States.Permissions",
    "States.ExceedToleratedFailureThreshold",
    "States.ItemReaderFailed",
    "States.ResultWriterFailed",
    "States.QueryEvaluationError",
];

/// An error raised while running a state: its ASL name and cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateError {
    pub(crate) error: String,
    pub(crate) cause: String,
}

impl StateError {
    pub(crate) fn new(error: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            cause: cause.into(),
        }
    }

    /// Whether an `ErrorEquals` entry matches this error.
    pub(crate) fn matches(&self, pattern: &str) -> bool {
        match self.error.as_str() {
            RUNTIME => false,
            DATA_LIMIT_EXCEEDED => pattern == DATA_LIMIT_EXCEEDED,
            error => match pattern {
                ALL => true,
                TASK_FAILED => error != TIMEOUT,
                pattern => pattern == error,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_follow_step_functions() {
        let custom = StateError::new("LagNotZero", "");
        assert!(custom.matches(ALL));
        assert!(custom.matches(TASK_FAILED));
        assert!(custom.matches("LagNotZero"));
        assert!(!custom.matches("NotCaughtUp"));

        let timeout = StateError::new(TIMEOUT, "");
        assert!(timeout.matches(ALL));
        assert!(!timeout.matches(TASK_FAILED));
        assert!(timeout.matches(TIMEOUT));

        let runtime = StateError::new(RUNTIME, "");
        assert!(!runtime.matches(ALL));
        assert!(!runtime.matches(RUNTIME));

        let limit = StateError::new(DATA_LIMIT_EXCEEDED, "");
        assert!(!limit.matches(ALL));
        assert!(!limit.matches(TASK_FAILED));
        assert!(limit.matches(DATA_LIMIT_EXCEEDED));
    }
}
