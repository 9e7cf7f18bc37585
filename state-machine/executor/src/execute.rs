//! Running a definition: states, paths, Retry/Catch, timeouts, faults and history.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;

use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::definition::{
    Concurrency, Definition, Kind, Machine, MapState, Source, State, Task, Threshold, Transition,
    WaitFor, Work,
};
use crate::error::{
    StateError, DATA_LIMIT_EXCEEDED, NO_CHOICE_MATCHED, RESULT_PATH_MATCH_FAILURE, RUNTIME,
    TASK_FAILED, TIMEOUT,
};
use crate::history::{EventType, HistoryEvent};
use crate::path::{self, type_name, PathExpr};

/// The optimized Lambda integration: results are wrapped, function errors reshaped.
pub const LAMBDA_INVOKE: &str = "arn:aws:states:::lambda:invoke";

/// Starts a child execution and waits for its end; its output is a JSON string.
pub const START_EXECUTION_SYNC: &str = "arn:aws:states:::states:startExecution.sync";
/// As [`START_EXECUTION_SYNC`], the child's output parsed as JSON.
pub const START_EXECUTION_SYNC_2: &str = "arn:aws:states:::states:startExecution.sync:2";

/// A Distributed Map's failures went over its tolerated count or percentage.
const EXCEED_TOLERATED_FAILURE_THRESHOLD: &str = "States.ExceedToleratedFailureThreshold";

/// Step Functions' payload limit for a state's input or output, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// A boxed future, as [`TaskHandler::invoke`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An error a task reports: its ASL error name and cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub error: String,
    pub cause: String,
}

impl TaskFailure {
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            cause: cause.into(),
        }
    }
}

/// Runs the work of Task states in-process.
///
/// For `Resource: "arn:aws:states:::lambda:invoke"` the handler gets the evaluated
/// `Parameters` (`FunctionName`, `Payload`, …) and returns the function's output; the
/// executor wraps it as `{"ExecutedVersion": "$LATEST", "Payload": …, "StatusCode": 200}`.
/// A failure whose error is the function's error type surfaces with that name as `Error`
/// and `{"errorMessage": cause, "errorType": error}` (a JSON string) as `Cause`, as the
/// integration reports a function error; names starting `Lambda.` or `States.` are service
/// errors and pass through unchanged. Any other `Resource` is passed as is, its result and
/// errors unchanged.
pub trait TaskHandler: Send + Sync {
    fn invoke(
        &self,
        resource: &str,
        parameters: Value,
    ) -> BoxFuture<'_, Result<Value, TaskFailure>>;
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Fail the invocation with this error instead of calling the handler.
    Error { error: String, cause: String },
    /// Call the handler to its end — its side effects happen — then discard what it
    /// returned and fail with this error: a Lambda that crashed (or whose answer was lost)
    /// after doing its work.
    CrashAfter { error: String, cause: String },
    /// Sleep (tokio time) before calling the handler, so `TimeoutSeconds` can fire.
    Delay(Duration),
}

/// A fault injected at a Task state's `attempt`-th invocation in the execution (1-based,
/// counting retries and re-entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub state: String,
    pub attempt: u32,
    pub kind: FaultKind,
}

impl Fault {
    pub fn error(state: &str, attempt: u32, error: &str, cause: &str) -> Self {
        Self {
            state: state.to_owned(),
            attempt,
            kind: FaultKind::Error {
                error: error.to_owned(),
                cause: cause.to_owned(),
            },
        }
    }

    pub fn crash_after(state: &str, attempt: u32, error: &str, cause: &str) -> Self {
        Self {
            state: state.to_owned(),
            attempt,
            kind: FaultKind::CrashAfter {
                error: error.to_owned(),
                cause: cause.to_owned(),
            },
        }
    }

    pub fn delay(state: &str, attempt: u32, delay: Duration) -> Self {
        Self {
            state: state.to_owned(),
            attempt,
            kind: FaultKind::Delay(delay),
        }
    }
}

/// A fault that names no Task state, or attempt 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault at `{state}` attempt {attempt}: {message}")]
pub struct FaultError {
    pub state: String,
    pub attempt: u32,
    pub message: String,
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Succeeded,
    Failed,
    TimedOut,
}

/// A finished execution (as `write_history` writes it, and reads back).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    pub name: String,
    pub status: Status,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub history: Vec<HistoryEvent>,
    /// The executions its `startExecution.sync` Tasks ran, in the order they ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Execution>,
}

impl Execution {
    /// The history events of one state, in order.
    pub fn events_of<'a>(&'a self, state: &'a str) -> impl Iterator<Item = &'a HistoryEvent> {
        self.history
            .iter()
            .filter(move |event| event.state.as_deref() == Some(state))
    }

    /// Writes the whole execution (status, output, history) as pretty JSON.
    pub fn write_history(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json)
    }
}

/// Runs a [`Definition`] with a [`TaskHandler`].
///
/// Waits, retry intervals and timeouts use tokio time: under `tokio::time::pause()` a
/// test runs them instantly and deterministically.
pub struct Executor<'a> {
    definition: &'a Definition,
    handler: &'a dyn TaskHandler,
    name: Option<String>,
    state_machine_name: String,
    faults: Vec<Fault>,
    state_machines: Vec<StateMachine<'a>>,
}

/// A definition a `startExecution.sync` Task may start, by the ARN it names.
#[derive(Clone, Copy)]
struct StateMachine<'a> {
    arn: &'a str,
    name: &'a str,
    definition: &'a Definition,
}

impl std::fmt::Debug for Executor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("name", &self.name)
            .field("state_machine_name", &self.state_machine_name)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl<'a> Executor<'a> {
    pub fn new(definition: &'a Definition, handler: &'a dyn TaskHandler) -> Self {
        Self {
            definition,
            handler,
            name: None,
            state_machine_name: "local".to_owned(),
            faults: Vec::new(),
            state_machines: Vec::new(),
        }
    }

    /// A state machine that `startExecution.sync` / `.sync:2` Tasks can start by
    /// `StateMachineArn` `arn`: run here as a child execution (with the same handler and
    /// state machines, no faults), whose [`Execution`] lands in the parent's `children`.
    pub fn state_machine(
        mut self,
        arn: &'a str,
        name: &'a str,
        definition: &'a Definition,
    ) -> Self {
        self.state_machines.push(StateMachine {
            arn,
            name,
            definition,
        });
        self
    }

    /// The execution name (`$$.Execution.Name`); a UUID if not set.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The state machine name used in `$$.StateMachine.Id` and `$$.Execution.Id`.
    pub fn state_machine_name(mut self, name: impl Into<String>) -> Self {
        self.state_machine_name = name.into();
        self
    }

    /// Adds a fault; it must name a Task state and an attempt ≥ 1.
    pub fn fault(mut self, fault: Fault) -> Result<Self, FaultError> {
        let is_task = self
            .definition
            .all_states()
            .iter()
            .any(|state| state.name == fault.state && matches!(state.kind, Kind::Task(_)));
        let problem = if !is_task {
            Some("it names no Task state of the definition")
        } else if fault.attempt == 0 {
            Some("attempts count from 1")
        } else {
            None
        };
        if let Some(message) = problem {
            return Err(FaultError {
                state: fault.state,
                attempt: fault.attempt,
                message: message.to_owned(),
            });
        }
        self.faults.push(fault);
        Ok(self)
    }

    /// Runs one execution to its end.
    pub async fn run(&self, input: Value) -> Execution {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let clock = Clock::start();
        let machine_id = format!(
            "arn:aws:states:local:000000000000:stateMachine:{}",
            self.state_machine_name
        );
        // Work a state stopped waiting for (a Task past its TimeoutSeconds, a Task in a
        // Parallel branch stopped by a failing sibling) is not cancelled: like a Lambda,
        // it runs to its end, its result discarded. It is driven beside the execution and
        // awaited before `run` returns, so nothing the handler started outlives the call.
        let (orphans, mut orphaned) = tokio::sync::mpsc::unbounded_channel();
        let run = Run {
            handler: self.handler,
            faults: &self.faults,
            state_machines: &self.state_machines,
            children: std::sync::Arc::new(Mutex::new(Vec::new())),
            orphans,
            invocations: Mutex::new(HashMap::new()),
            history: Mutex::new(Vec::new()),
            context: json!({
                "Execution": {
                    "Id": format!(
                        "arn:aws:states:local:000000000000:execution:{}:{name}",
                        self.state_machine_name
                    ),
                    "Name": name,
                    "StartTime": clock.stamp(),
                    "Input": input,
                },
                "StateMachine": {"Id": machine_id, "Name": self.state_machine_name},
            }),
            clock,
        };
        run.record(EventType::ExecutionStarted, None, |e| {
            e.input = Some(input.clone())
        });
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let outcome = match check_size(&input, "the execution input") {
            Err(e) => Some(Err(e)),
            Ok(()) => {
                let stop = Stop::default();
                let machine = run.run_machine(&self.definition.machine, input, &stop);
                let machine = async {
                    match self.definition.timeout {
                        Some(limit) => tokio::time::timeout(limit, machine).await.ok(),
                        None => Some(machine.await),
                    }
                };
                tokio::pin!(machine);
                loop {
                    tokio::select! {
                        outcome = &mut machine => break outcome,
                        Some(work) = orphaned.recv() => in_flight.push(work),
                        Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                    }
                }
            }
        };
        let (status, output, error, cause) = match outcome {
            Some(Ok(output)) => {
                run.record(EventType::ExecutionSucceeded, None, |e| {
                    e.output = Some(output.clone())
                });
                (Status::Succeeded, Some(output), None, None)
            }
            Some(Err(e)) => {
                let error = Some(e.error).filter(|s| !s.is_empty());
                let cause = Some(e.cause).filter(|s| !s.is_empty());
                run.record(EventType::ExecutionFailed, None, |ev| {
                    ev.error.clone_from(&error);
                    ev.cause.clone_from(&cause);
                });
                (Status::Failed, None, error, cause)
            }
            None => {
                let cause = format!(
                    "the execution ran longer than its TimeoutSeconds ({} s)",
                    self.definition.timeout.map_or(0, |t| t.as_secs())
                );
                run.record(EventType::ExecutionTimedOut, None, |e| {
                    e.error = Some(TIMEOUT.to_owned());
                    e.cause = Some(cause.clone());
                });
                (
                    Status::TimedOut,
                    None,
                    Some(TIMEOUT.to_owned()),
                    Some(cause),
                )
            }
        };
        drop(run.orphans);
        while let Some(work) = orphaned.recv().await {
            in_flight.push(work);
        }
        while in_flight.next().await.is_some() {}
        let history = run
            .history
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let children = std::mem::take(&mut *run.children.lock().unwrap_or_else(|p| p.into_inner()));
        Execution {
            name,
            status,
            output,
            error,
            cause,
            history,
            children,
        }
    }
}

/// Wall-clock time that advances with tokio time (virtual under `pause()`).
struct Clock {
    wall: OffsetDateTime,
    start: tokio::time::Instant,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: OffsetDateTime::now_utc(),
            start: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> OffsetDateTime {
        self.wall + self.start.elapsed()
    }

    fn stamp(&self) -> String {
        const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        self.now()
            .format(FORMAT)
            .unwrap_or_else(|_| self.now().to_string())
    }
}

fn check_size(value: &Value, what: &str) -> Result<(), StateError> {
    let size = serde_json::to_string(value).map_or(0, |s| s.len());
    if size > MAX_PAYLOAD_BYTES {
        return Err(StateError::new(
            DATA_LIMIT_EXCEEDED,
            format!("{what} is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit"),
        ));
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionError<'a> {
    error_message: &'a str,
    error_type: &'a str,
}

/// Stops the states of a Parallel's branches once one of them has failed: no new state
/// starts and waits end, as in Step Functions. A child is stopped with its parent.
#[derive(Clone, Default)]
struct Stop(std::sync::Arc<StopInner>);

#[derive(Default)]
struct StopInner {
    stopped: tokio::sync::watch::Sender<bool>,
    children: Mutex<Vec<Stop>>,
}

impl Stop {
    fn child(&self) -> Self {
        let child = Self::default();
        let mut children = self.0.children.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_stopped() {
            child.stop();
        } else {
            children.push(child.clone());
        }
        child
    }

    fn stop(&self) {
        self.0.stopped.send_replace(true);
        let children =
            std::mem::take(&mut *self.0.children.lock().unwrap_or_else(|p| p.into_inner()));
        for child in children {
            child.stop();
        }
    }

    fn is_stopped(&self) -> bool {
        *self.0.stopped.borrow()
    }

    async fn stopped(&self) {
        let mut watch = self.0.stopped.subscribe();
        // The sender lives as long as `self`, so this only returns once stopped.
        let _ = watch.wait_for(|stopped| *stopped).await;
    }

    /// The error a stopped branch ends with; the Parallel reports its sibling's instead.
    fn error() -> StateError {
        StateError::new(STOPPED, "stopped: another branch of the Parallel failed")
    }
}

/// Internal: never matched by a Retrier or Catcher, never reported.
const STOPPED: &str = "States.BranchFailed";

struct Run<'a> {
    handler: &'a dyn TaskHandler,
    faults: &'a [Fault],
    state_machines: &'a [StateMachine<'a>],
    /// Child executions that ended (shared with calls that outlive their state).
    children: std::sync::Arc<Mutex<Vec<Execution>>>,
    /// Calls no state waits for any more, handed to `Executor::run` to finish.
    orphans: tokio::sync::mpsc::UnboundedSender<BoxFuture<'a, ()>>,
    invocations: Mutex<HashMap<String, u32>>,
    history: Mutex<Vec<HistoryEvent>>,
    /// `Execution` and `StateMachine` of the context object.
    context: Value,
    clock: Clock,
}

impl<'a> Run<'a> {
    fn record(&self, kind: EventType, state: Option<&str>, fill: impl FnOnce(&mut HistoryEvent)) {
        let mut event = HistoryEvent::new(kind, state);
        fill(&mut event);
        event.timestamp = self.clock.stamp();
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        event.id = history.len() as u64 + 1;
        history.push(event);
    }

    fn context(&self, state: &State, entered: &str, retry_count: u32) -> Value {
        let mut context = self.context.clone();
        context["State"] = json!({
            "Name": state.name,
            "EnteredTime": entered,
            "RetryCount": retry_count,
        });
        context
    }

    fn run_machine<'s>(
        &'s self,
        machine: &'s Machine,
        input: Value,
        stop: &'s Stop,
    ) -> BoxFuture<'s, Result<Value, StateError>> {
        Box::pin(async move {
            let mut state = machine.state(&machine.start_at);
            let mut input = input;
            loop {
                if stop.is_stopped() {
                    return Err(Stop::error());
                }
                let (next, output) = self.run_state(state, input, stop).await?;
                match next {
                    Some(next) => {
                        state = machine.state(next);
                        input = output;
                    }
                    None => return Ok(output),
                }
            }
        })
    }

    /// Runs one state; returns the next state's name (`None` at the end) and the output.
    async fn run_state<'s>(
        &'s self,
        state: &'s State,
        input: Value,
        stop: &'s Stop,
    ) -> Result<(Option<&'s str>, Value), StateError> {
        let state_type = state.kind.state_type();
        let entered = self.clock.stamp();
        self.record(
            EventType::StateEntered(state_type),
            Some(&state.name),
            |e| e.input = Some(input.clone()),
        );
        let next = match &state.transition {
            Transition::Next(next) => Some(next.as_str()),
            Transition::End | Transition::Decided => None,
        };
        let (next, output) = match &state.kind {
            Kind::Pass {
                parameters,
                result,
                result_path,
            } => {
                let effective = effective_input(state, &input)?;
                let result = match (result, parameters) {
                    (Some(result), _) => result.clone(),
                    (None, Some(parameters)) => {
                        parameters.eval(&effective, &self.context(state, &entered, 0))?
                    }
                    (None, None) => effective,
                };
                let output = apply_result_path(input, result_path.as_ref(), result)?;
                (next, apply_output_path(state, output)?)
            }
            Kind::Task(_) | Kind::Parallel(_) | Kind::Map(_) => {
                self.run_work(state, input, &entered, stop).await?
            }
            Kind::Choice { choices, default } => {
                let effective = effective_input(state, &input)?;
                let context = self.context(state, &entered, 0);
                let mut chosen = None;
                for branch in choices {
                    if branch.rule.eval(&effective, &context)? {
                        chosen = Some(branch.next.as_str());
                        break;
                    }
                }
                let chosen = chosen.or(default.as_deref()).ok_or_else(|| {
                    StateError::new(
                        NO_CHOICE_MATCHED,
                        format!(
                            "no Choices rule of `{}` matched and it has no Default",
                            state.name
                        ),
                    )
                })?;
                (Some(chosen), apply_output_path(state, effective)?)
            }
            Kind::Wait(wait) => {
                let effective = effective_input(state, &input)?;
                let duration = self.wait_duration(state, wait, &effective)?;
                sleep(duration, stop).await?;
                (next, apply_output_path(state, effective)?)
            }
            Kind::Succeed => {
                let effective = effective_input(state, &input)?;
                (None, apply_output_path(state, effective)?)
            }
            Kind::Fail { error, cause } => {
                let text = |source: &Option<Source>| -> Result<String, StateError> {
                    match source {
                        None => Ok(String::new()),
                        Some(Source::Literal(text)) => Ok(text.clone()),
                        Some(Source::Path(path)) => {
                            match path.select(&input, &self.context(state, &entered, 0)) {
                                Some(Value::String(text)) => Ok(text),
                                other => Err(StateError::new(
                                    RUNTIME,
                                    format!(
                                        "`{}` must select a string, got {}",
                                        path.text,
                                        other.as_ref().map_or("nothing", type_name)
                                    ),
                                )),
                            }
                        }
                    }
                };
                return Err(StateError::new(text(error)?, text(cause)?));
            }
        };
        check_size(&output, &format!("the output of `{}`", state.name))?;
        self.record(EventType::StateExited(state_type), Some(&state.name), |e| {
            e.output = Some(output.clone())
        });
        Ok((next, output))
    }

    fn wait_duration(
        &self,
        state: &State,
        wait: &WaitFor,
        effective: &Value,
    ) -> Result<Duration, StateError> {
        let until = |at: OffsetDateTime| {
            Duration::try_from(at - self.clock.now()).unwrap_or(Duration::ZERO)
        };
        let select = |path: &PathExpr| {
            path.select(effective, &Value::Null).ok_or_else(|| {
                StateError::new(
                    RUNTIME,
                    format!(
                        "`{}` of Wait `{}` matched nothing in the input",
                        path.text, state.name
                    ),
                )
            })
        };
        Ok(match wait {
            WaitFor::Seconds(seconds) => Duration::from_secs(*seconds),
            WaitFor::Timestamp(at) => until(*at),
            WaitFor::SecondsPath(path) => {
                let value = select(path)?;
                Duration::from_secs(value.as_u64().ok_or_else(|| {
                    StateError::new(
                        RUNTIME,
                        format!(
                            "SecondsPath `{}` must select a non-negative integer, got {value}",
                            path.text
                        ),
                    )
                })?)
            }
            WaitFor::TimestampPath(path) => {
                let value = select(path)?;
                let at = value
                    .as_str()
                    .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
                    .ok_or_else(|| {
                        StateError::new(
                            RUNTIME,
                            format!(
                                "TimestampPath `{}` must select an RFC 3339 timestamp, got {value}",
                                path.text
                            ),
                        )
                    })?;
                until(at)
            }
        })
    }

    /// Task, Parallel and Map: attempts with Retry, then Catch.
    async fn run_work<'s>(
        &'s self,
        state: &'s State,
        input: Value,
        entered: &str,
        stop: &'s Stop,
    ) -> Result<(Option<&'s str>, Value), StateError> {
        let Some(work) = state.kind.work() else {
            unreachable!("run_work is called for Task, Parallel and Map only")
        };
        let next = match &state.transition {
            Transition::Next(next) => Some(next.as_str()),
            Transition::End | Transition::Decided => None,
        };
        let mut retries_by_retrier = vec![0u32; work.retry.len()];
        let mut retry_count = 0;
        loop {
            let err = match self
                .attempt(state, work, &input, entered, retry_count, stop)
                .await
            {
                Ok(output) => return Ok((next, output)),
                Err(err) => err,
            };
            if err.error == STOPPED {
                return Err(err);
            }
            // The first retrier that names the error decides; exhausted, it goes to Catch.
            if let Some(i) = work
                .retry
                .iter()
                .position(|r| r.errors.iter().any(|e| err.matches(e)))
            {
                let retrier = &work.retry[i];
                if retries_by_retrier[i] < retrier.max_attempts {
                    let exponent = i32::try_from(retries_by_retrier[i]).unwrap_or(i32::MAX);
                    let mut seconds =
                        retrier.interval.as_secs_f64() * retrier.backoff_rate.powi(exponent);
                    if let Some(max) = retrier.max_delay {
                        seconds = seconds.min(max.as_secs_f64());
                    }
                    // Bounded so an absurd backoff cannot overflow a Duration.
                    let delay = Duration::from_secs_f64(seconds.min(1e9));
                    retries_by_retrier[i] += 1;
                    retry_count += 1;
                    sleep(delay, stop).await?;
                    continue;
                }
            }
            let Some(catcher) = work
                .catch
                .iter()
                .find(|c| c.errors.iter().any(|e| err.matches(e)))
            else {
                return Err(err);
            };
            let error_output = json!({"Error": err.error, "Cause": err.cause});
            let output = apply_result_path(input, catcher.result_path.as_ref(), error_output)
                .map_err(|e| StateError::new(RUNTIME, e.cause))?;
            return Ok((Some(catcher.next.as_str()), output));
        }
    }

    async fn attempt(
        &self,
        state: &State,
        work: &Work,
        input: &Value,
        entered: &str,
        retry_count: u32,
        stop: &Stop,
    ) -> Result<Value, StateError> {
        let context = self.context(state, entered, retry_count);
        let effective = effective_input(state, input)?;
        let parameters = match &work.parameters {
            Some(template) => template.eval(&effective, &context)?,
            None => effective,
        };
        check_size(
            &parameters,
            &format!("the input of `{}` after Parameters", state.name),
        )?;
        let raw = match &state.kind {
            Kind::Task(task) => self.invoke(state, task, parameters, stop).await?,
            Kind::Parallel(parallel) => {
                self.record(EventType::ParallelStateStarted, Some(&state.name), |_| {});
                let branches_stop = stop.child();
                let first_failure: Mutex<Option<StateError>> = Mutex::new(None);
                let branches = parallel.branches.iter().map(|branch| {
                    let parameters = parameters.clone();
                    let branches_stop = &branches_stop;
                    let first_failure = &first_failure;
                    async move {
                        let result = self.run_machine(branch, parameters, branches_stop).await;
                        if let Err(err) = &result {
                            if err.error != STOPPED {
                                first_failure
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| err.clone());
                            }
                            // The other branches start no new state; a Task running in one
                            // goes on to its end, its result unused (as in Step Functions).
                            branches_stop.stop();
                        }
                        result
                    }
                });
                let results = futures_util::future::join_all(branches).await;
                let failure = first_failure
                    .into_inner()
                    .unwrap_or_else(|p| p.into_inner());
                let outputs = match failure {
                    Some(err) => Err(err),
                    None => results.into_iter().collect::<Result<Vec<_>, _>>(),
                };
                match outputs {
                    Ok(outputs) => {
                        self.record(EventType::ParallelStateSucceeded, Some(&state.name), |_| {});
                        Value::Array(outputs)
                    }
                    Err(err) => {
                        if err.error != STOPPED {
                            self.record(EventType::ParallelStateFailed, Some(&state.name), |e| {
                                e.error = Some(err.error.clone());
                                e.cause = Some(err.cause.clone());
                            });
                        }
                        return Err(err);
                    }
                }
            }
            Kind::Map(map) => {
                self.run_map(state, map, &parameters, &context, stop)
                    .await?
            }
            _ => unreachable!("attempt is called for Task, Parallel and Map only"),
        };
        let result = match &work.result_selector {
            Some(template) => template.eval(&raw, &context)?,
            None => raw,
        };
        let output = apply_result_path(input.clone(), work.result_path.as_ref(), result)?;
        let output = apply_output_path(state, output)?;
        check_size(&output, &format!("the output of `{}`", state.name))?;
        Ok(output)
    }

    /// A Map: every item through the processor, at most `MaxConcurrency` at once, outputs
    /// in item order. Inline, the first failed iteration fails the Map; distributed, the
    /// Map fails once its failures exceed the tolerated count or percentage
    /// (`States.ExceedToleratedFailureThreshold`), and until then a failed item's output
    /// is its error object. Either way the other iterations start no new state, and a Task
    /// running in one goes on to its end, its result unused (as for Parallel branches).
    async fn run_map(
        &self,
        state: &State,
        map: &MapState,
        effective: &Value,
        context: &Value,
        stop: &Stop,
    ) -> Result<Value, StateError> {
        let number = |what: &str, path: &PathExpr| -> Result<u64, StateError> {
            path.select(effective, &Value::Null)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| {
                    StateError::new(
                        RUNTIME,
                        format!(
                            "{what} `{}` of `{}` must select a non-negative integer",
                            path.text, state.name
                        ),
                    )
                })
        };
        let items = match map.items_path.select(effective, &Value::Null) {
            Some(Value::Array(items)) => items,
            other => {
                return Err(StateError::new(
                    RUNTIME,
                    format!(
                        "ItemsPath `{}` of `{}` must select an array, got {}",
                        map.items_path.text,
                        state.name,
                        other.as_ref().map_or("nothing", type_name)
                    ),
                ))
            }
        };
        let limit = match &map.max_concurrency {
            Concurrency::Fixed(n) => *n,
            Concurrency::Path(path) => number("MaxConcurrencyPath", path)?,
        };
        let threshold = |t: &Option<Threshold>, what: &str| -> Result<Option<u64>, StateError> {
            match t {
                None => Ok(None),
                Some(Threshold::Fixed(n)) => Ok(Some(*n)),
                Some(Threshold::Path(path)) => number(what, path).map(Some),
            }
        };
        let tolerance = match &map.distributed {
            None => None,
            Some(t) => Some((
                threshold(&t.count, "ToleratedFailureCountPath")?,
                threshold(&t.percentage, "ToleratedFailurePercentagePath")?,
            )),
        };
        let total = items.len() as u64;
        // Whether `failed` failures fail the Map: inline, any; distributed, over a given
        // threshold (both absent: the default 0 %).
        let exceeded = |failed: u64| match tolerance {
            None => failed > 0,
            Some((None, None)) => failed > 0,
            Some((count, percentage)) => {
                count.is_some_and(|c| failed > c)
                    || percentage.is_some_and(|p| failed * 100 > p * total)
            }
        };
        self.record(EventType::MapStateStarted, Some(&state.name), |_| {});
        let map_stop = stop.child();
        let permits = tokio::sync::Semaphore::new(if limit == 0 {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            usize::try_from(limit).unwrap_or(tokio::sync::Semaphore::MAX_PERMITS)
        });
        // (failures so far, the error that fails the Map)
        let failures: Mutex<(u64, Option<StateError>)> = Mutex::new((0, None));
        let iterations = items.into_iter().enumerate().map(|(index, item)| {
            let (map_stop, permits, failures, exceeded) = (&map_stop, &permits, &failures, &exceeded);
            async move {
                let permit = tokio::select! {
                    permit = permits.acquire() => permit.ok(),
                    () = map_stop.stopped() => None,
                };
                if permit.is_none() || map_stop.is_stopped() {
                    return None;
                }
                self.record(EventType::MapIterationStarted, Some(&state.name), |e| {
                    e.index = Some(index as u64)
                });
                let input = match &map.item_selector {
                    None => Ok(item),
                    Some(selector) => {
                        let mut context = context.clone();
                        context["Map"] = json!({"Item": {"Index": index, "Value": item}});
                        selector.eval(effective, &context)
                    }
                };
                let result = match input {
                    Ok(input) => self.run_machine(&map.processor, input, map_stop).await,
                    Err(err) => Err(err),
                };
                match &result {
                    Ok(_) => self.record(EventType::MapIterationSucceeded, Some(&state.name), |e| {
                        e.index = Some(index as u64)
                    }),
                    Err(err) if err.error == STOPPED => {
                        self.record(EventType::MapIterationAborted, Some(&state.name), |e| {
                            e.index = Some(index as u64)
                        });
                        return None;
                    }
                    Err(err) => {
                        self.record(EventType::MapIterationFailed, Some(&state.name), |e| {
                            e.index = Some(index as u64);
                            e.error = Some(err.error.clone());
                            e.cause = Some(err.cause.clone());
                        });
                        let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                        failures.0 += 1;
                        if failures.1.is_none() && exceeded(failures.0) {
                            failures.1 = Some(if map.distributed.is_some() {
                                StateError::new(
                                    EXCEED_TOLERATED_FAILURE_THRESHOLD,
                                    format!(
                                        "{} of the {total} items of `{}` failed, over the tolerated threshold; the last: {}",
                                        failures.0, state.name, err.error
                                    ),
                                )
                            } else {
                                err.clone()
                            });
                            map_stop.stop();
                        }
                    }
                }
                drop(permit);
                Some(result)
            }
        });
        let results = futures_util::future::join_all(iterations).await;
        let (_, failure) = failures.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(err) = failure {
            self.record(EventType::MapStateFailed, Some(&state.name), |e| {
                e.error = Some(err.error.clone());
                e.cause = Some(err.cause.clone());
            });
            return Err(err);
        }
        let mut outputs = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Some(Ok(output)) => outputs.push(output),
                Some(Err(err)) => outputs.push(json!({"Error": err.error, "Cause": err.cause})),
                // Stopped from outside: the enclosing Parallel or Map failed.
                None => return Err(Stop::error()),
            }
        }
        self.record(EventType::MapStateSucceeded, Some(&state.name), |_| {});
        Ok(Value::Array(outputs))
    }

    async fn invoke(
        &self,
        state: &State,
        task: &Task,
        parameters: Value,
        stop: &Stop,
    ) -> Result<Value, StateError> {
        let attempt = {
            let mut invocations = self.invocations.lock().unwrap_or_else(|p| p.into_inner());
            let count = invocations.entry(state.name.clone()).or_insert(0);
            *count += 1;
            *count
        };
        let resource = task.resource.as_str();
        self.record(EventType::TaskScheduled, Some(&state.name), |e| {
            e.resource = Some(resource.to_owned());
            e.attempt = Some(attempt);
            e.input = Some(parameters.clone());
        });
        let faults: &'a [Fault] = self.faults;
        let fault = faults
            .iter()
            .find(|f| f.state == state.name && f.attempt == attempt);
        let handler: &'a dyn TaskHandler = self.handler;
        let state_machines: &'a [StateMachine<'a>] = self.state_machines;
        let children = std::sync::Arc::clone(&self.children);
        let owned_resource = resource.to_owned();
        let mut call: BoxFuture<'a, Result<Value, TaskFailure>> = Box::pin(async move {
            let resource = owned_resource.as_str();
            let work = |parameters: Value| -> BoxFuture<'a, Result<Value, TaskFailure>> {
                if resource == START_EXECUTION_SYNC || resource == START_EXECUTION_SYNC_2 {
                    child_execution(
                        handler,
                        state_machines,
                        resource == START_EXECUTION_SYNC_2,
                        parameters,
                        children,
                    )
                } else {
                    handler.invoke(resource, parameters)
                }
            };
            match fault.map(|f| &f.kind) {
                Some(FaultKind::Error { error, cause }) => Err(TaskFailure::new(error, cause)),
                Some(FaultKind::CrashAfter { error, cause }) => {
                    // The work is done; only the answer is lost.
                    let _discarded = work(parameters).await;
                    Err(TaskFailure::new(error, cause))
                }
                Some(FaultKind::Delay(delay)) => {
                    tokio::time::sleep(*delay).await;
                    work(parameters).await
                }
                None => work(parameters).await,
            }
        });
        let timeout = async {
            match task.timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            outcome = &mut call => Some(outcome),
            () = timeout => None,
            () = stop.stopped() => {
                let _ = self.orphans.send(Box::pin(async move {
                    let _ = call.await;
                }));
                return Err(Stop::error());
            }
        };
        let lambda = resource == LAMBDA_INVOKE;
        match outcome {
            None => {
                // Not cancelled: the function runs to its end, nobody reading its result.
                let _ = self.orphans.send(Box::pin(async move {
                    let _ = call.await;
                }));
                let err = StateError::new(
                    TIMEOUT,
                    format!(
                        "`{}` ran longer than its TimeoutSeconds ({} s)",
                        state.name,
                        task.timeout.map_or(0, |t| t.as_secs())
                    ),
                );
                self.record(EventType::TaskTimedOut, Some(&state.name), |e| {
                    e.resource = Some(resource.to_owned());
                    e.error = Some(err.error.clone());
                    e.cause = Some(err.cause.clone());
                });
                Err(err)
            }
            Some(Ok(value)) => {
                let value = if lambda {
                    json!({"ExecutedVersion": "$LATEST", "Payload": value, "StatusCode": 200})
                } else {
                    value
                };
                self.record(EventType::TaskSucceeded, Some(&state.name), |e| {
                    e.resource = Some(resource.to_owned());
                    e.output = Some(value.clone());
                });
                check_size(&value, &format!("the result of `{}`", state.name))?;
                Ok(value)
            }
            Some(Err(failure)) => {
                let service_error =
                    failure.error.starts_with("Lambda.") || failure.error.starts_with("States.");
                let cause = if lambda && !service_error {
                    serde_json::to_string(&FunctionError {
                        error_message: &failure.cause,
                        error_type: &failure.error,
                    })
                    .unwrap_or(failure.cause)
                } else {
                    failure.cause
                };
                let err = StateError::new(failure.error, cause);
                self.record(EventType::TaskFailed, Some(&state.name), |e| {
                    e.resource = Some(resource.to_owned());
                    e.error = Some(err.error.clone());
                    e.cause = Some(err.cause.clone());
                });
                Err(err)
            }
        }
    }
}

/// A `startExecution.sync` Task: runs the state machine its `StateMachineArn` names to its
/// end, as Step Functions does for a nested workflow. Succeeded: the result is the
/// `DescribeExecution` answer (`Output` parsed as JSON for `.sync:2`, a string for
/// `.sync`). Anything else: `States.TaskFailed`, whose cause is that answer as a JSON
/// string, the child's `Error` and `Cause` included.
fn child_execution<'a>(
    handler: &'a dyn TaskHandler,
    state_machines: &'a [StateMachine<'a>],
    json_output: bool,
    parameters: Value,
    children: std::sync::Arc<Mutex<Vec<Execution>>>,
) -> BoxFuture<'a, Result<Value, TaskFailure>> {
    Box::pin(async move {
        let arn = parameters
            .get("StateMachineArn")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(machine) = state_machines.iter().find(|m| m.arn == arn) else {
            return Err(TaskFailure::new(
                "StepFunctions.StateMachineDoesNotExistException",
                format!("State Machine Does Not Exist: '{arn}'"),
            ));
        };
        let input = match parameters.get("Input") {
            None => json!({}),
            Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
                TaskFailure::new(
                    "StepFunctions.InvalidExecutionInputException",
                    format!("Input is not JSON: {e}"),
                )
            })?,
            Some(value) => value.clone(),
        };
        let name = parameters
            .get("Name")
            .and_then(Value::as_str)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let mut executor = Executor::new(machine.definition, handler)
            .name(&name)
            .state_machine_name(machine.name);
        executor.state_machines = state_machines.to_vec();
        let execution = executor.run(input.clone()).await;
        let epoch_ms = |event: Option<&HistoryEvent>| {
            event
                .and_then(|e| OffsetDateTime::parse(&e.timestamp, &Rfc3339).ok())
                .map_or(0, |at| at.unix_timestamp_nanos() / 1_000_000)
        };
        let text = |value: &Value| serde_json::to_string(value).unwrap_or_default();
        let mut described = json!({
            "ExecutionArn": format!(
                "arn:aws:states:local:000000000000:execution:{}:{name}",
                machine.name
            ),
            "Input": if json_output { input.clone() } else { Value::String(text(&input)) },
            "InputDetails": {"Included": true},
            "Name": name,
            "StartDate": epoch_ms(execution.history.first()),
            "StateMachineArn": arn,
            "Status": execution.status,
            "StopDate": epoch_ms(execution.history.last()),
        });
        let outcome = match execution.status {
            Status::Succeeded => {
                let output = execution.output.clone().unwrap_or(Value::Null);
                described["Output"] = if json_output {
                    output
                } else {
                    Value::String(text(&output))
                };
                described["OutputDetails"] = json!({"Included": true});
                Ok(described)
            }
            Status::Failed | Status::TimedOut => {
                if let Some(error) = &execution.error {
                    described["Error"] = json!(error);
                }
                if let Some(cause) = &execution.cause {
                    described["Cause"] = json!(cause);
                }
                Err(TaskFailure::new(TASK_FAILED, text(&described)))
            }
        };
        children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(execution);
        outcome
    })
}

/// Sleeps in tokio time, unless the branch is stopped first.
async fn sleep(duration: Duration, stop: &Stop) -> Result<(), StateError> {
    tokio::select! {
        () = tokio::time::sleep(duration) => Ok(()),
        () = stop.stopped() => Err(Stop::error()),
    }
}

/// InputPath: `null` gives `{}`; a path that selects nothing is a runtime error.
fn effective_input(state: &State, input: &Value) -> Result<Value, StateError> {
    select_io(state, "InputPath", state.input_path.as_ref(), input)
}

fn apply_output_path(state: &State, output: Value) -> Result<Value, StateError> {
    select_io(state, "OutputPath", state.output_path.as_ref(), &output)
}

fn select_io(
    state: &State,
    field: &str,
    path: Option<&PathExpr>,
    value: &Value,
) -> Result<Value, StateError> {
    match path {
        None => Ok(json!({})),
        Some(path) => path.select(value, &Value::Null).ok_or_else(|| {
            StateError::new(
                RUNTIME,
                format!(
                    "Invalid path '{}' in the {field} of `{}`: it selects nothing",
                    path.text, state.name
                ),
            )
        }),
    }
}

/// ResultPath: `null` keeps the input, `$` replaces it, anything else merges into it.
fn apply_result_path(
    input: Value,
    result_path: Option<&PathExpr>,
    result: Value,
) -> Result<Value, StateError> {
    let Some(result_path) = result_path else {
        return Ok(input);
    };
    let segments = result_path.segments().unwrap_or(&[]);
    path::set(input, segments, result).map_err(|e| {
        StateError::new(
            RESULT_PATH_MATCH_FAILURE,
            format!("unable to apply ResultPath '{}': {e}", result_path.text),
        )
    })
}
