//! What every operation stands on.
//!
//! An operation is `async fn run(input, &Deps) -> Result<Output, Error>`; this crate gives
//! it the [`Deps`] (deployment config parsed once, AWS clients built once, endpoint
//! resolution), connections to the cell's clusters as the orchestrator, the shared
//! [`Error`], and [`serve`], the whole of a Lambda's `main`.

pub mod app_roles;
mod deploy;
mod deps;
pub mod downstream;
mod error;
pub mod feedback;
pub mod fence;
pub mod fleet;
pub mod green_fence;
pub mod guard;
mod journal;
mod lambda;
mod listed;
mod pause;
mod payloads;
mod plan;
pub mod rename;
pub mod saved_acls;
pub mod teardown;

pub use deploy::{Deployment, CA_BUNDLE_ENV, PG_DUMP_ENV};
pub use deps::{Deps, Login, Side};
pub use error::Error;
pub use fence::{Caller, Direction};
pub use journal::{decode_entry, now_rfc3339, Entry, Journal};
pub use lambda::{parse_input, serve, serve_planned, OperationInput, PAUSE_DEADLINE_FIELD};
pub use listed::{Listed, LISTED};
pub use pause::{bounded, PauseDeadline, PauseWindow, Timestamp};
pub use payloads::assert_examples_round_trip;
pub use plan::{take_dry_run, Plan, DRY_RUN_FIELD};
