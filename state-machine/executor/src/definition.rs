//! A loaded, validated state machine and what callers may inspect of it.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::choice::Branch;
use crate::path::PathExpr;
use crate::template::Template;

/// A validated Amazon States Language definition (JSONPath query language).
///
/// Built by [`Definition::from_json`]; every field of the JSON is either implemented or
/// rejected there, so running it never meets a field it silently skips.
#[derive(Debug, Clone)]
pub struct Definition {
    pub(crate) comment: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) machine: Machine,
}

/// The top level, one Parallel branch or a Map's processor: states in definition order.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) start_at: String,
    pub(crate) states: Vec<State>,
    pub(crate) index: HashMap<String, usize>,
}

impl Machine {
    pub(crate) fn state(&self, name: &str) -> &State {
        // Load checked that every StartAt/Next names a state of this machine.
        &self.states[self.index[name]]
    }
}

#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) name: String,
    /// `None` is `"InputPath": null`: the state sees `{}`.
    pub(crate) input_path: Option<PathExpr>,
    /// `None` is `"OutputPath": null`: the state emits `{}`.
    pub(crate) output_path: Option<PathExpr>,
    pub(crate) kind: Kind,
    pub(crate) transition: Transition,
}

#[derive(Debug, Clone)]
pub(crate) enum Transition {
    Next(String),
    End,
    /// Choice, Succeed and Fail decide for themselves.
    Decided,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Pass {
        parameters: Option<Template>,
        result: Option<Value>,
        result_path: Option<PathExpr>,
    },
    Task(Box<Task>),
    Choice {
        choices: Vec<Branch>,
        default: Option<String>,
    },
    Wait(WaitFor),
    Succeed,
    Fail {
        error: Option<Source>,
        cause: Option<Source>,
    },
    Parallel(Box<Parallel>),
    Map(Box<MapState>),
}

impl Kind {
    pub(crate) fn state_type(&self) -> StateType {
        match self {
            Self::Pass { .. } => StateType::Pass,
            Self::Task(_) => StateType::Task,
            Self::Choice { .. } => StateType::Choice,
            Self::Wait(_) => StateType::Wait,
            Self::Succeed => StateType::Succeed,
            Self::Fail { .. } => StateType::Fail,
            Self::Parallel(_) => StateType::Parallel,
            Self::Map(_) => StateType::Map,
        }
    }

    /// Task, Parallel and Map: what they share.
    pub(crate) fn work(&self) -> Option<&Work> {
        match self {
            Self::Task(task) => Some(&task.work),
            Self::Parallel(parallel) => Some(&parallel.work),
            Self::Map(map) => Some(&map.work),
            _ => None,
        }
    }
}

/// The `Type` of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateType {
    Task,
    Pass,
    Choice,
    Wait,
    Succeed,
    Fail,
    Parallel,
    Map,
}

impl std::fmt::Display for StateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Task => "Task",
            Self::Pass => "Pass",
            Self::Choice => "Choice",
            Self::Wait => "Wait",
            Self::Succeed => "Succeed",
            Self::Fail => "Fail",
            Self::Parallel => "Parallel",
            Self::Map => "Map",
        })
    }
}

/// What Task, Parallel and Map share: templates, ResultPath and error handling.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    pub(crate) parameters: Option<Template>,
    pub(crate) parameters_json: Option<Value>,
    pub(crate) result_selector: Option<Template>,
    /// `None` is `"ResultPath": null`: the result is discarded.
    pub(crate) result_path: Option<PathExpr>,
    pub(crate) retry: Vec<Retrier>,
    pub(crate) catch: Vec<Catcher>,
}

#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) resource: String,
    pub(crate) timeout: Option<Duration>,
    pub(crate) work: Work,
}

#[derive(Debug, Clone)]
pub(crate) struct Parallel {
    pub(crate) branches: Vec<Machine>,
    pub(crate) work: Work,
}

/// A Map state: one run of `processor` per item of the array `items_path` selects.
#[derive(Debug, Clone)]
pub(crate) struct MapState {
    /// A reference path into the effective input; `$` when absent.
    pub(crate) items_path: PathExpr,
    /// `ItemSelector` (or the older `Parameters`): each iteration's input, evaluated with
    /// `$$.Map.Item.Index` and `$$.Map.Item.Value`; the item itself when absent.
    pub(crate) item_selector: Option<Template>,
    /// `ItemProcessor` (or the older `Iterator`).
    pub(crate) processor: Machine,
    pub(crate) max_concurrency: Concurrency,
    /// `Some` for `ProcessorConfig.Mode: DISTRIBUTED`: the failure thresholds of its Map
    /// Run. An inline Map fails on its first failed iteration.
    pub(crate) distributed: Option<Tolerance>,
    pub(crate) work: Work,
}

/// `MaxConcurrency` or `MaxConcurrencyPath`; 0 is no limit.
#[derive(Debug, Clone)]
pub(crate) enum Concurrency {
    Fixed(u64),
    Path(PathExpr),
}

/// A Distributed Map's `ToleratedFailureCount[Path]` and `ToleratedFailurePercentage[Path]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tolerance {
    pub(crate) count: Option<Threshold>,
    pub(crate) percentage: Option<Threshold>,
}

#[derive(Debug, Clone)]
pub(crate) enum Threshold {
    Fixed(u64),
    Path(PathExpr),
}

#[derive(Debug, Clone)]
pub(crate) struct Retrier {
    pub(crate) errors: Vec<String>,
    pub(crate) interval: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_rate: f64,
    pub(crate) max_delay: Option<Duration>,
}

#[derive(Debug, Clone)]
pub(crate) struct Catcher {
    pub(crate) errors: Vec<String>,
    pub(crate) next: String,
    pub(crate) result_path: Option<PathExpr>,
}

#[derive(Debug, Clone)]
pub(crate) enum WaitFor {
    Seconds(u64),
    SecondsPath(PathExpr),
    Timestamp(time::OffsetDateTime),
    TimestampPath(PathExpr),
}

/// Fail's `Error`/`Cause` or `ErrorPath`/`CausePath`.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Literal(String),
    Path(PathExpr),
}

/// A Task state as written: for checking definitions against the functions they call.
#[derive(Debug, Clone, Copy)]
pub struct TaskState<'a> {
    pub name: &'a str,
    pub resource: &'a str,
    /// `Parameters` exactly as in the JSON.
    pub parameters: Option<&'a Value>,
    pub timeout: Option<Duration>,
}

/// Where an `ErrorEquals` list sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorHandler {
    Retry,
    Catch,
}

/// One name in one `ErrorEquals` list.
#[derive(Debug, Clone, Copy)]
pub struct ErrorEquals<'a> {
    pub state: &'a str,
    pub handler: ErrorHandler,
    pub error: &'a str,
}

impl Definition {
    /// The top-level `Comment`.
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// The top-level `Version`.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The execution-level `TimeoutSeconds`.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// `StartAt` of the top level.
    pub fn start_at(&self) -> &str {
        &self.machine.start_at
    }

    /// Every state, Parallel branches and Map processors included, in definition order (depth first).
    pub fn states(&self) -> impl Iterator<Item = (&str, StateType)> {
        self.all_states()
            .into_iter()
            .map(|state| (state.name.as_str(), state.kind.state_type()))
    }

    /// Every Task state, Parallel branches and Map processors included.
    pub fn task_states(&self) -> impl Iterator<Item = TaskState<'_>> {
        self.all_states()
            .into_iter()
            .filter_map(|state| match &state.kind {
                Kind::Task(task) => Some(TaskState {
                    name: &state.name,
                    resource: &task.resource,
                    parameters: task.work.parameters_json.as_ref(),
                    timeout: task.timeout,
                }),
                _ => None,
            })
    }

    /// Every name in every `ErrorEquals` (Retry and Catch), Parallel branches and Map
    /// processors included.
    pub fn error_equals(&self) -> impl Iterator<Item = ErrorEquals<'_>> {
        self.all_states().into_iter().flat_map(|state| {
            state.kind.work().into_iter().flat_map(move |work| {
                let retry = work.retry.iter().flat_map(move |retrier| {
                    retrier.errors.iter().map(move |error| ErrorEquals {
                        state: &state.name,
                        handler: ErrorHandler::Retry,
                        error,
                    })
                });
                let catch = work.catch.iter().flat_map(move |catcher| {
                    catcher.errors.iter().map(move |error| ErrorEquals {
                        state: &state.name,
                        handler: ErrorHandler::Catch,
                        error,
                    })
                });
                retry.chain(catch)
            })
        })
    }

    pub(crate) fn all_states(&self) -> Vec<&State> {
        fn walk<'a>(machine: &'a Machine, out: &mut Vec<&'a State>) {
            for state in &machine.states {
                out.push(state);
                match &state.kind {
                    Kind::Parallel(parallel) => {
                        for branch in &parallel.branches {
                            walk(branch, out);
                        }
                    }
                    Kind::Map(map) => walk(&map.processor, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.machine, &mut out);
        out
    }
}
