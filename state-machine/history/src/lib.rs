//! Executions as people read them, from a history alone: Step Functions' or the local
//! executor's events ([`history`]), the closed set of outcomes and `report.json`
//! ([`report`]), the lines `switchyard follow` prints ([`follow`]) and the timeline
//! picture ([`timeline`]). It links no function and no local cell: the operator CLI
//! depends on this, not on the harness that runs the definitions locally.

pub mod fleet;
pub mod follow;
pub mod history;
pub mod report;
pub mod timeline;

/// The checked-in definitions.
pub const PREPARE: &str = "prepare";
pub const SWITCHOVER: &str = "switchover";
/// Undoes a prepare that will not be switched.
pub const ABANDON_PREPARE: &str = "abandon-prepare";
/// Ends the rollback window after a switch.
pub const FINALIZE: &str = "finalize";
/// The switchover's abort path on its own, for a run stopped by hand.
pub const ABORT: &str = "abort";
/// A fleet of cells: each cell's prepare or switchover as a child execution, in waves.
pub const FLEET: &str = "fleet";
/// Every checked-in definition of one cell's run.
pub const DEFINITIONS: [&str; 5] = [PREPARE, SWITCHOVER, ABANDON_PREPARE, FINALIZE, ABORT];

/// `state-machine/<name>.asl.json`.
pub fn definition_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(format!("{name}.asl.json"))
}
