//! Execution history, in Step Functions' event naming.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::definition::StateType;

/// What happened. Serialized as Step Functions names it, e.g. `TaskStateEntered`.
///
/// The subset recorded: `ExecutionStarted`, then per state `<Type>StateEntered`, for a
/// Task each attempt's `TaskScheduled` and one of `TaskSucceeded` / `TaskFailed` /
/// `TaskTimedOut`, for a Parallel `ParallelStateStarted` and `ParallelStateSucceeded` /
/// `ParallelStateFailed`, for a Map `MapStateStarted`, each iteration's
/// `MapIterationStarted` and `MapIterationSucceeded` / `MapIterationFailed` /
/// `MapIterationAborted` (with its `index`) and `MapStateSucceeded` / `MapStateFailed`,
/// then `<Type>StateExited` when the state produced an output (a caught error included); last `ExecutionSucceeded`, `ExecutionFailed` or
/// `ExecutionTimedOut`. A state that fails the execution has no `StateExited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    ExecutionStarted,
    ExecutionSucceeded,
    ExecutionFailed,
    ExecutionTimedOut,
    StateEntered(StateType),
    StateExited(StateType),
    TaskScheduled,
    TaskSucceeded,
    TaskFailed,
    TaskTimedOut,
    ParallelStateStarted,
    ParallelStateSucceeded,
    ParallelStateFailed,
    MapStateStarted,
    MapStateSucceeded,
    MapStateFailed,
    MapIterationStarted,
    MapIterationSucceeded,
    MapIterationFailed,
    /// An iteration stopped unfinished because the Map failed.
    MapIterationAborted,
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StateEntered(kind) => write!(f, "{kind}StateEntered"),
            Self::StateExited(kind) => write!(f, "{kind}StateExited"),
            other => f.write_str(match other {
                Self::ExecutionStarted => "ExecutionStarted",
                Self::ExecutionSucceeded => "ExecutionSucceeded",
                Self::ExecutionFailed => "ExecutionFailed",
                Self::ExecutionTimedOut => "ExecutionTimedOut",
                Self::TaskScheduled => "TaskScheduled",
                Self::TaskSucceeded => "TaskSucceeded",
                Self::TaskFailed => "TaskFailed",
                Self::TaskTimedOut => "TaskTimedOut",
                Self::ParallelStateStarted => "ParallelStateStarted",
                Self::ParallelStateSucceeded => "ParallelStateSucceeded",
                Self::ParallelStateFailed => "ParallelStateFailed",
                Self::MapStateStarted => "MapStateStarted",
                Self::MapStateSucceeded => "MapStateSucceeded",
                Self::MapStateFailed => "MapStateFailed",
                Self::MapIterationStarted => "MapIterationStarted",
                Self::MapIterationSucceeded => "MapIterationSucceeded",
                Self::MapIterationFailed => "MapIterationFailed",
                Self::MapIterationAborted => "MapIterationAborted",
                Self::StateEntered(_) | Self::StateExited(_) => unreachable!("handled above"),
            }),
        }
    }
}

impl std::str::FromStr for EventType {
    type Err = String;

    /// Step Functions' name of an event (`TaskStateEntered`, `TaskScheduled`, …); `Err`
    /// for one this history does not record (`TaskStarted`, `MapStateEntered`, …).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let simple = [
            Self::ExecutionStarted,
            Self::ExecutionSucceeded,
            Self::ExecutionFailed,
            Self::ExecutionTimedOut,
            Self::TaskScheduled,
            Self::TaskSucceeded,
            Self::TaskFailed,
            Self::TaskTimedOut,
            Self::ParallelStateStarted,
            Self::ParallelStateSucceeded,
            Self::ParallelStateFailed,
            Self::MapStateStarted,
            Self::MapStateSucceeded,
            Self::MapStateFailed,
            Self::MapIterationStarted,
            Self::MapIterationSucceeded,
            Self::MapIterationFailed,
            Self::MapIterationAborted,
        ];
        if let Some(kind) = simple.into_iter().find(|k| k.to_string() == name) {
            return Ok(kind);
        }
        let types = [
            StateType::Task,
            StateType::Pass,
            StateType::Choice,
            StateType::Wait,
            StateType::Succeed,
            StateType::Fail,
            StateType::Parallel,
            StateType::Map,
        ];
        for kind in types {
            let prefix = kind.to_string();
            match name.strip_prefix(prefix.as_str()) {
                Some("StateEntered") => return Ok(Self::StateEntered(kind)),
                Some("StateExited") => return Ok(Self::StateExited(kind)),
                _ => {}
            }
        }
        Err(format!("not a recorded history event type: {name}"))
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One entry of an execution's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEvent {
    /// 1, 2, … in the order recorded.
    pub id: u64,
    /// RFC 3339, UTC, milliseconds; follows tokio time, so paused tests see virtual time.
    pub timestamp: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Task events: the `Resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `TaskScheduled`: the 1-based invocation count of this state in the execution
    /// (what [`crate::Fault::attempt`] matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Entered events: the raw state input; `TaskScheduled`: the evaluated Parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Exited events: the state output; `TaskSucceeded`: the raw result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Map iteration events: the item's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl HistoryEvent {
    /// An event of `kind` in `state`, every other field empty: for building a history
    /// from another source (Step Functions' own, read back for a report).
    pub fn new(kind: EventType, state: Option<&str>) -> Self {
        Self {
            id: 0,
            timestamp: String::new(),
            kind,
            state: state.map(str::to_owned),
            resource: None,
            attempt: None,
            input: None,
            output: None,
            index: None,
            error: None,
            cause: None,
        }
    }
}
