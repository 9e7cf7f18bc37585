//! The local cell: one cell's whole environment on one machine, with real servers.
//!
//! Blue and green PostgreSQL of different majors, a downstream "search" database that
//! subscribes to blue through an emulated NLB, a real PgBouncer in front of blue's emulated
//! cluster endpoint, moto holding the AWS side (clusters, SSM, ECS, the target group), and
//! the workloads. It is built from a cell document, so the names the operations read
//! (identifiers, SSM parameters, services, target group) are the ones that exist here.
//!
//! Everything started is stopped when the [`LocalCell`] is dropped, pass or fail.

mod ca;
mod cell;
mod checks;
mod forwarder;
mod install;
mod link;
mod moto;
pub use moto::RecordedCall;
mod names;
mod pg;
mod pgbouncer;
mod process;
mod workload;

pub use ca::{CellCa, ServerTls};
pub use cell::{
    wait_subscription_ready, CellOptions, CellSecrets, LocalCell, RoleSecret, SEARCH_PUBLICATION,
};
pub use checks::{fingerprint, wait_keys_once};
pub use forwarder::{Forwarder, Route};
pub use install::Install;
pub use link::Link;
pub use names::{AwsTimings, NameDelay, Names, AWS_TIMINGS_ENV};
pub use pg::{PgServer, PgServerSpec};
pub use process::{free_port, start_time as process_start_time, RunAs};
pub use workload::{
    audit_keys, Ack, DirectWriterSpec, DirectWriters, KeyAudit, Ledger, LedgerSpec, Tally,
};

/// The run id function tests act as: each takes the cell's lock for it first
/// ([`LocalCell::lock`]), as every operation that changes the cell requires.
pub const TEST_RUN: &str = "local-test-run";

/// Why the cell could not be built or driven.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("local cell setup: {0}")]
    Setup(String),
    #[error("local cell workload: {0}")]
    Workload(String),
}
