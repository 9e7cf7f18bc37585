//! The one list of error names the state machines may match on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ASL error name: what `ErrorEquals` in `state-machine/` matches on.
///
/// The serde form and [`ErrorName::as_str`] are the variant name; renaming a variant
/// breaks every state machine that retries or catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorName {
    /// Replication lag is still above the gate; ASL retries until the gate budget runs out.
    LagNotZero,
    /// A green slot has not confirmed the captured LSN yet; ASL retries the slot-lag gate.
    NotCaughtUp,
    /// A downstream subscriber has not confirmed the current LSN; ASL retries before dropping it.
    DownstreamBehind,
    /// An Aurora cluster is modifying or renaming; ASL retries until it is `available`.
    ClusterNotAvailable,
    /// The NLB target is not healthy yet; ASL retries, then the run aborts if it never is.
    TargetNotHealthy,
    /// A cluster's endpoint name led to another server than the one the RDS API says holds
    /// it (its DNS has not caught up with a rename yet); nothing was changed. ASL retries.
    WrongServer,
    /// A transient SQLSTATE or a dropped/refused connection; ASL retries the step.
    DatabaseUnavailable,
    /// An AWS API throttled the call; ASL retries with backoff.
    AwsThrottled,
    /// An AWS API could not be reached or timed out; ASL retries with backoff.
    AwsUnavailable,
    /// The payload or cell document is malformed; fix the named fields and start a new run.
    InvalidInput,
    /// Preflight found blockers; fix each listed blocker on blue or green, then rerun.
    PreflightFailed,
    /// Green's schema differs from blue's; reconcile the listed differences, rerun `copy-schema`.
    SchemaMismatch,
    /// Row counts or checksums differ between blue and green; investigate the listed tables.
    DataMismatch,
    /// DDL ran on blue during replication; re-copy the schema to green before switching over.
    DdlDetected,
    /// PgBouncer did not drain within the drain budget; find the long transactions, retry later.
    DrainTimeout,
    /// PAUSE failed on a PgBouncer instance; all were resumed, check that instance and retry.
    PauseFailed,
    /// The paused window would exceed the pause budget; the run aborted before clients timed out.
    PauseBudgetExceeded,
    /// Another run holds the cell's lock; wait for it to finish or clear a stale lock by hand.
    LockHeld,
    /// No run holds the cell's lock: a changing operation needs its caller to hold it.
    LockNotHeld,
    /// The cell has switched to green (writes may be on it): nothing may route it back.
    AlreadySwitched,
    /// The run is on its abort path: no forward step may change the cell.
    AbortInProgress,
    /// The lag gate's budget ran out with green behind; the run aborts.
    LagGateExceeded,
    /// Some PgBouncer instances were resumed toward green, others not yet: retry forward.
    ResumeIncomplete,
    /// PgBouncer was resumed but reaches the wrong server: writes may be on green; page.
    ProbeMismatch,
    /// The cell is not in the state this step needs; inspect it and rerun from the right step.
    PreconditionFailed,
    /// TLS refused the server: its certificate does not chain to the cell's CA bundle, does
    /// not name the host dialled, or it offers no TLS at all. Retrying meets the same server:
    /// check the endpoint and the deployment's CA bundle.
    TlsRefused,
    /// A non-transient database error; read the SQLSTATE in the message and fix its cause.
    DatabaseError,
    /// A non-throttling AWS API error; read the AWS error code in the message and fix its cause.
    AwsError,
    /// An SSM parameter could not be read; check it exists and the Lambda role may decrypt it.
    SecretUnavailable,
    /// The Lambda's deployment settings (env vars) are wrong; fix the deployment, not the cell.
    ConfigurationError,
}

/// What the state machine does with an error: retry the step, or go to the abort path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retry {
    /// The world has not caught up yet; the same call can succeed later.
    NotYet,
    /// Retrying cannot help; the run stops and goes to the abort path.
    Stop,
}

impl ErrorName {
    /// Every catalogued name, for checks against the state machine definitions.
    pub const ALL: &'static [ErrorName] = &[
        Self::LagNotZero,
        Self::NotCaughtUp,
        Self::DownstreamBehind,
        Self::ClusterNotAvailable,
        Self::TargetNotHealthy,
        Self::WrongServer,
        Self::DatabaseUnavailable,
        Self::AwsThrottled,
        Self::AwsUnavailable,
        Self::InvalidInput,
        Self::PreflightFailed,
        Self::SchemaMismatch,
        Self::DataMismatch,
        Self::DdlDetected,
        Self::DrainTimeout,
        Self::PauseFailed,
        Self::PauseBudgetExceeded,
        Self::LockHeld,
        Self::LockNotHeld,
        Self::AlreadySwitched,
        Self::AbortInProgress,
        Self::LagGateExceeded,
        Self::ResumeIncomplete,
        Self::ProbeMismatch,
        Self::PreconditionFailed,
        Self::TlsRefused,
        Self::DatabaseError,
        Self::AwsError,
        Self::SecretUnavailable,
        Self::ConfigurationError,
    ];

    /// The name as ASL sees it in `Diagnostic::error_type` and `ErrorEquals`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LagNotZero => "LagNotZero",
            Self::NotCaughtUp => "NotCaughtUp",
            Self::DownstreamBehind => "DownstreamBehind",
            Self::ClusterNotAvailable => "ClusterNotAvailable",
            Self::TargetNotHealthy => "TargetNotHealthy",
            Self::WrongServer => "WrongServer",
            Self::DatabaseUnavailable => "DatabaseUnavailable",
            Self::AwsThrottled => "AwsThrottled",
            Self::AwsUnavailable => "AwsUnavailable",
            Self::InvalidInput => "InvalidInput",
            Self::PreflightFailed => "PreflightFailed",
            Self::SchemaMismatch => "SchemaMismatch",
            Self::DataMismatch => "DataMismatch",
            Self::DdlDetected => "DdlDetected",
            Self::DrainTimeout => "DrainTimeout",
            Self::PauseFailed => "PauseFailed",
            Self::PauseBudgetExceeded => "PauseBudgetExceeded",
            Self::LockHeld => "LockHeld",
            Self::LockNotHeld => "LockNotHeld",
            Self::AlreadySwitched => "AlreadySwitched",
            Self::AbortInProgress => "AbortInProgress",
            Self::LagGateExceeded => "LagGateExceeded",
            Self::ResumeIncomplete => "ResumeIncomplete",
            Self::ProbeMismatch => "ProbeMismatch",
            Self::PreconditionFailed => "PreconditionFailed",
            Self::TlsRefused => "TlsRefused",
            Self::DatabaseError => "DatabaseError",
            Self::AwsError => "AwsError",
            Self::SecretUnavailable => "SecretUnavailable",
            Self::ConfigurationError => "ConfigurationError",
        }
    }

    /// Whether the state machine retries this error or aborts on it.
    pub fn retry(self) -> Retry {
        match self {
            Self::LagNotZero
            | Self::NotCaughtUp
            | Self::DownstreamBehind
            | Self::ClusterNotAvailable
            | Self::TargetNotHealthy
            | Self::WrongServer
            | Self::DatabaseUnavailable
            | Self::AwsThrottled
            | Self::AwsUnavailable
            | Self::ResumeIncomplete => Retry::NotYet,
            Self::InvalidInput
            | Self::PreflightFailed
            | Self::SchemaMismatch
            | Self::DataMismatch
            | Self::DdlDetected
            | Self::DrainTimeout
            | Self::PauseFailed
            | Self::PauseBudgetExceeded
            | Self::LockHeld
            | Self::LockNotHeld
            | Self::AlreadySwitched
            | Self::AbortInProgress
            | Self::LagGateExceeded
            | Self::ProbeMismatch
            | Self::PreconditionFailed
            | Self::TlsRefused
            | Self::DatabaseError
            | Self::AwsError
            | Self::SecretUnavailable
            | Self::ConfigurationError => Retry::Stop,
        }
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a catalogued [`ErrorName`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownErrorName(String);

impl fmt::Display for UnknownErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown error name {:?}", self.0)
    }
}

impl std::error::Error for UnknownErrorName {}

impl FromStr for ErrorName {
    type Err = UnknownErrorName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|name| name.as_str() == s)
            .ok_or_else(|| UnknownErrorName(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Lists the variants twice: as match arms (so a new variant fails to compile until it
    /// is listed here) and as a value (so the test fails until it is also in `ALL`).
    macro_rules! every_variant {
        ($($variant:ident),* $(,)?) => {{
            fn exhaustive(name: ErrorName) {
                match name {
                    $(ErrorName::$variant => {})*
                }
            }
            let _ = exhaustive;
            vec![$(ErrorName::$variant),*]
        }};
    }

    #[test]
    fn all_lists_every_variant_once() {
        let every = every_variant!(
            LagNotZero,
            NotCaughtUp,
            DownstreamBehind,
            ClusterNotAvailable,
            TargetNotHealthy,
            WrongServer,
            DatabaseUnavailable,
            AwsThrottled,
            AwsUnavailable,
            InvalidInput,
            PreflightFailed,
            SchemaMismatch,
            DataMismatch,
            DdlDetected,
            DrainTimeout,
            PauseFailed,
            PauseBudgetExceeded,
            LockHeld,
            LockNotHeld,
            AlreadySwitched,
            AbortInProgress,
            LagGateExceeded,
            ResumeIncomplete,
            ProbeMismatch,
            PreconditionFailed,
            TlsRefused,
            DatabaseError,
            AwsError,
            SecretUnavailable,
            ConfigurationError,
        );
        let listed: HashSet<ErrorName> = ErrorName::ALL.iter().copied().collect();
        assert_eq!(listed.len(), ErrorName::ALL.len(), "ALL has duplicates");
        assert_eq!(listed, every.into_iter().collect::<HashSet<_>>());
    }

    #[test]
    fn names_are_unique_pascal_case_and_not_reserved() {
        let mut seen = HashSet::new();
        for name in ErrorName::ALL {
            let s = name.as_str();
            assert!(seen.insert(s), "{s} is listed twice");
            let mut chars = s.chars();
            assert!(
                chars.next().is_some_and(|c| c.is_ascii_uppercase()),
                "{s} must start with an uppercase letter"
            );
            assert!(
                chars.all(|c| c.is_ascii_alphanumeric()),
                "{s} is not PascalCase"
            );
            // These prefixes belong to Step Functions and Lambda; a clash would be matched
            // by their retry blocks instead of ours.
            assert!(!s.contains("::"), "{s} looks like a Rust path");
            assert!(
                !s.starts_with("States."),
                "{s} is reserved by Step Functions"
            );
            assert!(!s.starts_with("Lambda."), "{s} is reserved by Lambda");
        }
    }

    #[test]
    fn names_parse_back_and_serialize_as_their_name() {
        for &name in ErrorName::ALL {
            assert_eq!(name.as_str().parse::<ErrorName>(), Ok(name));
            assert_eq!(name.to_string(), name.as_str());
            let json = serde_json::to_string(&name).expect("serialize");
            assert_eq!(json, format!("\"{}\"", name.as_str()));
            let back: ErrorName = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, name);
        }
    }

    #[test]
    fn unknown_names_are_rejected() {
        for s in ["", "lagNotZero", "States.ALL", "LagNotZero ", "Nope"] {
            assert_eq!(
                s.parse::<ErrorName>(),
                Err(UnknownErrorName(s.to_owned())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn only_not_yet_names_are_retried() {
        let retried: HashSet<&str> = ErrorName::ALL
            .iter()
            .filter(|n| n.retry() == Retry::NotYet)
            .map(|n| n.as_str())
            .collect();
        let expected: HashSet<&str> = [
            "LagNotZero",
            "NotCaughtUp",
            "DownstreamBehind",
            "ClusterNotAvailable",
            "TargetNotHealthy",
            "WrongServer",
            "DatabaseUnavailable",
            "AwsThrottled",
            "AwsUnavailable",
            // After the switch only: the instances left are resumed by the retry.
            "ResumeIncomplete",
        ]
        .into_iter()
        .collect();
        assert_eq!(retried, expected);
    }
}
