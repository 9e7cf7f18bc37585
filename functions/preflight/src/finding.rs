//! What preflight reports: findings with a stable code, and the report text a
//! `PreflightFailed` stop carries.

use serde::{Deserialize, Serialize};

/// A finding's stable code. Each code is either always a blocker or always a warning,
/// so a state machine or a dashboard can match on it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    /// A cell database does not exist on blue.
    BlueDatabaseMissing,
    /// A cell database does not exist on green.
    GreenDatabaseMissing,
    /// `wal_level` is not `logical` (on Aurora: `rds.logical_replication` is off).
    LogicalReplicationDisabled,
    /// Green's major version is not newer than blue's.
    GreenNotNewer,
    /// Green's major version is not the cell's `target_major_version`.
    GreenMajorMismatch,
    /// A table without a usable replica identity: UPDATE/DELETE on it fail on blue once
    /// it is published.
    NoReplicaIdentity,
    /// An unlogged table: it cannot be published, so its rows never reach green.
    UnloggedTable,
    /// Large objects exist: logical replication does not carry them.
    LargeObjects,
    /// An extension installed on blue that green does not offer.
    ExtensionUnavailable,
    /// An extension whose installed version green neither offers nor can update from.
    ExtensionVersionUnavailable,
    /// Not enough free replication slots for the planned subscriptions.
    ReplicationSlotsShort,
    /// Not enough free WAL senders for the planned subscriptions.
    WalSendersShort,
    /// Green's `max_logical_replication_workers` is too low.
    ReplicationWorkersShort,
    /// Green's `max_worker_processes` is too low for its replication workers.
    WorkerProcessesShort,
    /// Green cannot track as many replication origins as it will have subscriptions.
    ReplicationOriginsShort,
    /// A function without a pinned `search_path`, naming user objects unqualified, that
    /// the apply worker evaluates (defaults, constraints, indexes, replica triggers).
    FunctionSearchPathApply,
    /// A session idle in transaction on blue: it blocks slot creation.
    IdleInTransaction,
    /// A PgBouncer's `query_wait_timeout` would drop clients queued by the pause.
    PgbouncerQueryWaitTimeout,
    /// A PgBouncer instance could not be found or asked.
    PgbouncerUnreachable,
    /// `REPLICA IDENTITY FULL`: works, but every UPDATE/DELETE logs the whole row and the
    /// subscriber searches for it.
    ReplicaIdentityFull,
    /// Green creates a different version of an extension than blue runs.
    ExtensionVersionDiffers,
    /// A function like [`Code::FunctionSearchPathApply`], but nothing the apply worker
    /// evaluates calls it.
    FunctionSearchPath,
    /// A materialized view: not replicated; green's is created empty.
    MaterializedView,
    /// A downstream subscription of the cell document is missing on its subscriber.
    DownstreamSubscriptionMissing,
    /// Drift since prepare (`phase: switchover`, `check-drift`): a publication of the cell
    /// is missing on blue.
    ReplicationMissing,
    /// Drift: a table on blue that none of the cell's publications carries.
    TableNotPublished,
    /// Drift: a table or sequence on blue that green lacks.
    MissingOnGreen,
    /// Drift: DDL on blue since replication started that switchyard did not vouch for.
    UnvouchedDdl,
    /// Drift: the DDL guard is missing or disabled on blue.
    DdlGuardMissing,
    /// Drift: a subscription missing, disabled, without its worker, or not past its copy.
    SubscriptionNotStreaming,
    /// Drift: green's application roles differ from SSM.
    RoleDrift,
    /// Drift: green's stored passwords cannot be compared with SSM's (Aurora).
    RolePasswordUnverifiable,
    /// Drift: an extension installed on blue is not installed on green.
    ExtensionMissingOnGreen,
    /// Before prepare: blue already has this cell's slots, retaining WAL (an earlier
    /// prepare neither switched nor abandoned, or one being retried).
    LeftoverSlot,
    /// After the switch (`check-drift`): green has no slot `switchyard_reverse` — the
    /// window was closed by finalize, or the way back is gone.
    RollbackWindowClosed,
    /// After the switch: green's slot `switchyard_reverse` exists but nothing streams from
    /// it — the old blue does not follow, and green keeps WAL for it.
    RollbackNotStreaming,
    /// After the switch: green's slot keeps more WAL than `budgets.rollback_wal_bytes`.
    RollbackSlotRetains,
    /// After the switch: DDL on green that reverse replication does not carry to the old
    /// blue (a switch back needs it applied there first).
    RollbackDdl,
    /// After the switch, the window open: green has no DDL guard, so DDL there could go
    /// unseen (a cell switched before green was guarded).
    RollbackUnguarded,
}

impl Code {
    pub fn is_blocker(self) -> bool {
        !matches!(
            self,
            Self::ReplicaIdentityFull
                | Self::ExtensionVersionDiffers
                | Self::FunctionSearchPath
                | Self::MaterializedView
                | Self::RolePasswordUnverifiable
                | Self::LeftoverSlot
                | Self::RollbackWindowClosed
                | Self::RollbackUnguarded
        )
    }

    fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One thing found, with what it is about and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Finding {
    pub code: Code,
    /// What it is about, e.g. `app: public.audit_log` (database, then the object
    /// unquoted), `blue: max_replication_slots`, `pgbouncer 10.0.1.5:6432`.
    pub objects: Vec<String>,
    pub detail: String,
    pub fix: String,
}

impl Finding {
    pub fn new(
        code: Code,
        objects: Vec<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            code,
            objects,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// Findings sorted into blockers and warnings by their code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub blockers: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Findings {
    pub fn push(&mut self, finding: Finding) {
        if finding.code.is_blocker() {
            self.blockers.push(finding);
        } else {
            self.warnings.push(finding);
        }
    }
}

impl Extend<Finding> for Findings {
    fn extend<T: IntoIterator<Item = Finding>>(&mut self, iter: T) {
        for finding in iter {
            self.push(finding);
        }
    }
}

/// The report stays well under Step Functions' 32 KB error-message cut.
const REPORT_LIMIT: usize = 16 * 1024;
/// Objects listed per finding in the report; the rest are counted.
const OBJECTS_SHOWN: usize = 10;

/// The human report of a failed preflight: each blocker's code, objects and fix.
pub fn report(cell_id: &str, findings: &Findings) -> String {
    let mut text = format!(
        "preflight found {} blocker(s) in cell {cell_id}; fix them and run preflight again:",
        findings.blockers.len()
    );
    for (shown, finding) in findings.blockers.iter().enumerate() {
        let line = format!(
            "\n{}. {} [{}]: {} Fix: {}",
            shown + 1,
            finding.code.as_str(),
            list(&finding.objects),
            finding.detail,
            finding.fix
        );
        if text.len() + line.len() > REPORT_LIMIT {
            text.push_str(&format!("\n… and {} more", findings.blockers.len() - shown));
            break;
        }
        text.push_str(&line);
    }
    if !findings.warnings.is_empty() {
        let codes: Vec<String> = findings.warnings.iter().map(|w| w.code.as_str()).collect();
        text.push_str(&format!(
            "\nAlso {} warning(s): {}.",
            findings.warnings.len(),
            list(&codes)
        ));
    }
    text
}

/// `a, b, c` with at most [`OBJECTS_SHOWN`] items, then `… and N more`.
pub fn list(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(OBJECTS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > OBJECTS_SHOWN {
        text.push_str(&format!(" … and {} more", items.len() - OBJECTS_SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(n: usize) -> Finding {
        Finding::new(
            Code::NoReplicaIdentity,
            (0..20).map(|i| format!("app: public.t{n}_{i}")).collect(),
            "no primary key.",
            "add one.",
        )
    }

    #[test]
    fn codes_are_screaming_snake_and_sorted_by_severity() {
        assert_eq!(Code::NoReplicaIdentity.as_str(), "NO_REPLICA_IDENTITY");
        assert_eq!(
            Code::PgbouncerQueryWaitTimeout.as_str(),
            "PGBOUNCER_QUERY_WAIT_TIMEOUT"
        );
        let mut findings = Findings::default();
        findings.push(blocker(0));
        findings.push(Finding::new(Code::MaterializedView, vec![], "", ""));
        assert_eq!(findings.blockers.len(), 1);
        assert_eq!(findings.warnings.len(), 1);
    }

    #[test]
    fn the_report_names_codes_objects_and_fixes_and_stays_bounded() {
        let mut findings = Findings::default();
        findings.push(blocker(0));
        findings.push(Finding::new(Code::MaterializedView, vec![], "", ""));
        let text = report("local-a", &findings);
        assert!(text.contains("1 blocker(s) in cell local-a"), "{text}");
        assert!(
            text.contains("NO_REPLICA_IDENTITY [app: public.t0_0"),
            "{text}"
        );
        assert!(text.contains("… and 10 more]"), "{text}");
        assert!(text.contains("Fix: add one."), "{text}");
        assert!(text.contains("1 warning(s): MATERIALIZED_VIEW"), "{text}");

        let mut many = Findings::default();
        many.extend((0..2000).map(blocker));
        let text = report("local-a", &many);
        assert!(text.len() < REPORT_LIMIT + 100, "{}", text.len());
        assert!(text.contains(" more"), "{text}");
        assert!(text.ends_with("more"), "{}", &text[text.len() - 40..]);
    }
}
