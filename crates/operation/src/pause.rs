//! The pause window: from the moment PgBouncer holds every client until the resume.
//!
//! `pause-pgbouncer` journals the window once per run ([`PauseWindow`]); a retried pause
//! keeps the first deadline. The state machine passes the deadline to every step of the
//! window as `pause_deadline`, and each step stops *at* it — not only when it starts: a
//! wait inside a step (a rename settling, the lag gate, an NLB target turning healthy) is
//! cut to what is left and fails `PauseBudgetExceeded` there, so the abort path can still
//! restore writes before PgBouncer's `query_wait_timeout` drops the waiting clients.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_errors::ErrorName;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::journal::Entry;
use crate::Error;

/// The end of a run's pause budget (RFC 3339 in payloads and the journal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PauseDeadline(OffsetDateTime);

impl PauseDeadline {
    pub fn at(at: OffsetDateTime) -> Self {
        Self(at)
    }

    pub fn time(self) -> OffsetDateTime {
        self.0
    }

    /// What is left of the budget now (zero once it has passed).
    pub fn remaining(self) -> Duration {
        Duration::try_from(self.0 - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    }

    pub fn passed(self) -> bool {
        OffsetDateTime::now_utc() > self.0
    }

    /// `wait`, cut to what is left of the budget.
    pub fn bound(self, wait: Duration) -> Duration {
        wait.min(self.remaining())
    }

    /// The error of a step that reached the deadline while `doing`.
    pub fn exceeded(self, doing: &str) -> Error {
        Error::stop(
            ErrorName::PauseBudgetExceeded,
            format!(
                "PgBouncer has been paused for the whole pause budget (deadline {}) while {doing}: the step stops here and the abort path restores writes and resumes PgBouncer",
                self.rfc3339()
            ),
        )
    }

    /// `PauseBudgetExceeded` once the deadline has passed.
    pub fn check(self, doing: &str) -> Result<(), Error> {
        if self.passed() {
            return Err(self.exceeded(doing));
        }
        Ok(())
    }

    pub fn rfc3339(self) -> String {
        self.0
            .format(&Rfc3339)
            .unwrap_or_else(|_| self.0.to_string())
    }
}

/// The earlier of a step's own wait and what is left of an optional pause budget.
pub fn bounded(deadline: Option<PauseDeadline>, wait: Duration) -> Duration {
    deadline.map_or(wait, |d| d.bound(wait))
}

impl Serialize for PauseDeadline {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for PauseDeadline {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(Self)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time")))
    }
}

/// An RFC 3339 time in the payload listings.
fn time_schema(description: &str) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time", "description": description})
}

impl schemars::JsonSchema for PauseDeadline {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PauseDeadline".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        time_schema("The end of the run's pause budget, set by pause-pgbouncer (RFC 3339).")
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        time_schema("A point in time (RFC 3339).")
    }
}

/// A point in time given in a payload (RFC 3339), e.g. when a state was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub OffsetDateTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PauseDeadline(self.0).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PauseDeadline::deserialize(deserializer).map(|d| Self(d.0))
    }
}

/// A run's pause window, journaled by `pause-pgbouncer` once per run.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct PauseWindow {
    pub run_id: String,
    /// When the first PAUSE of the run had drained everything (RFC 3339, UTC).
    pub paused_at: String,
    pub deadline: PauseDeadline,
}

impl Entry for PauseWindow {
    const KEY: &'static str = "pause-window";
    const WHAT: &'static str = "the pause window";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_reads_and_writes_rfc3339_and_bounds_waits() {
        let past: PauseDeadline = serde_json::from_str("\"2020-01-01T00:00:00Z\"").expect("parses");
        assert!(past.passed());
        assert_eq!(past.remaining(), Duration::ZERO);
        assert_eq!(past.bound(Duration::from_secs(5)), Duration::ZERO);
        let err = past.check("waiting").expect_err("passed");
        assert!(err.to_string().contains("waiting"), "{err}");
        let future = PauseDeadline::at(OffsetDateTime::now_utc() + time::Duration::hours(1));
        assert!(future.check("waiting").is_ok());
        assert_eq!(future.bound(Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(
            bounded(None, Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        let json = serde_json::to_string(&past).expect("json");
        assert_eq!(json, "\"2020-01-01T00:00:00Z\"");
        assert!(serde_json::from_str::<PauseDeadline>("\"soon\"").is_err());
    }
}
