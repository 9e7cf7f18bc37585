//! A local executor for Amazon States Language definitions (JSONPath query language).
//!
//! It runs the checked-in state machines unchanged, with Task states calling Rust code
//! in-process through a [`TaskHandler`]. It knows nothing of what the tasks do.
//!
//! ```no_run
//! # async fn demo(json: &str, handler: &dyn switchyard_state_machine::TaskHandler)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use switchyard_state_machine::{Definition, Executor, Fault, Status};
//!
//! let definition = Definition::from_json(json)?;
//! let execution = Executor::new(&definition, handler)
//!     .name("rehearsal-1")
//!     .fault(Fault::error("Snapshot", 1, "Lambda.ServiceException", "injected"))?
//!     .run(serde_json::json!({"cell_id": "c1"}))
//!     .await;
//! assert_eq!(execution.status, Status::Succeeded);
//! # Ok(()) }
//! ```
//!
//! Implemented: Task, Pass, Choice, Wait, Succeed, Fail, Parallel and Map; InputPath,
//! Parameters (paths, `$$` context paths, intrinsic functions), ResultSelector, ResultPath,
//! OutputPath; Retry (with BackoffRate, MaxDelaySeconds, `JitterStrategy: NONE`) and
//! Catch; Task and execution `TimeoutSeconds`; the 256 KiB payload limit. Map: ItemsPath,
//! ItemSelector (`$$.Map.Item`), ItemProcessor, MaxConcurrency[Path]; an inline Map fails
//! with its first failed iteration, a distributed one (run here in-process) once its
//! failures exceed `ToleratedFailureCount`/`ToleratedFailurePercentage` (or their paths).
//! `states:startExecution.sync` and `.sync:2` run a state machine registered with
//! [`Executor::state_machine`] as a child execution. As in Step Functions, a Task that
//! times out, or runs in a Parallel branch or Map iteration whose sibling failed, is not
//! cancelled: the call runs to its end and its result is discarded (the branch starts no
//! new state); [`Executor::run`] returns once every call it started has ended. Faults
//! replace a call with an error, delay it, or let it run and then lose its answer
//! ([`FaultKind::CrashAfter`]: a crash after the side effect). Anything else in a
//! definition (ItemReader, ItemBatcher, ResultWriter, heartbeats, JSONata, jitter, callback
//! integrations, an unknown field) is refused by [`Definition::from_json`] with a
//! [`LoadError`] naming the state and field.

mod choice;
mod definition;
mod error;
mod execute;
mod history;
mod intrinsic;
mod load;
mod path;
mod template;

pub use definition::{Definition, ErrorEquals, ErrorHandler, StateType, TaskState};
pub use execute::{
    BoxFuture, Execution, Executor, Fault, FaultError, FaultKind, Status, TaskFailure, TaskHandler,
    LAMBDA_INVOKE, MAX_PAYLOAD_BYTES, START_EXECUTION_SYNC, START_EXECUTION_SYNC_2,
};
pub use history::{EventType, HistoryEvent};
pub use load::{LoadError, LoadErrorKind};
