//! Cluster-wide checks: versions, logical replication, replication capacity, and sessions
//! idle in transaction on blue.

use std::collections::HashMap;

use switchyard_operation::{Error, Side};
use tokio_postgres::Transaction;

use crate::finding::{Code, Finding};

/// Names of switchyard's own publications, subscriptions and slots start with this; they
/// are the planned ones, not competition for capacity.
const RESERVED_PREFIX: &str = "switchyard_";

/// Settings read on both clusters; a name the server does not know is simply absent.
const SETTINGS: [&str; 8] = [
    "wal_level",
    "rds.logical_replication",
    "max_replication_slots",
    "max_wal_senders",
    "max_logical_replication_workers",
    "max_worker_processes",
    "max_sync_workers_per_subscription",
    "max_active_replication_origins",
];

/// What one cluster says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFacts {
    pub side: Side,
    /// `server_version`, e.g. `14.18`.
    pub version: String,
    pub version_num: i32,
    settings: HashMap<String, String>,
    /// Replication slots not named `switchyard_…`.
    other_slots: i64,
    /// WAL sender processes not serving a `switchyard_…` subscription.
    other_senders: i64,
    /// Enabled subscriptions not named `switchyard_…` (each holds an apply worker).
    other_subscriptions: i64,
}

impl ClusterFacts {
    pub async fn read(side: Side, tx: &Transaction<'_>) -> Result<Self, Error> {
        let row = tx
            .query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int,
                        (SELECT count(*) FROM pg_replication_slots WHERE NOT starts_with(slot_name, $1)),
                        (SELECT count(*) FROM pg_stat_activity
                          WHERE backend_type = 'walsender' AND NOT starts_with(coalesce(application_name, ''), $1)),
                        (SELECT count(*) FROM pg_subscription WHERE subenabled AND NOT starts_with(subname, $1))",
                &[&RESERVED_PREFIX],
            )
            .await
            .map_err(|e| Error::query(format!("reading {side}'s version and replication state"), e))?;
        let names: Vec<String> = SETTINGS.iter().map(|s| (*s).to_owned()).collect();
        let settings = tx
            .query(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1)",
                &[&names],
            )
            .await
            .map_err(|e| Error::query(format!("reading {side}'s settings"), e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(Self {
            side,
            version: row.get(0),
            version_num: row.get(1),
            settings,
            other_slots: row.get(2),
            other_senders: row.get(3),
            other_subscriptions: row.get(4),
        })
    }

    pub fn major(&self) -> u32 {
        u32::try_from(self.version_num / 10_000).unwrap_or(0)
    }

    fn setting(&self, name: &str) -> Option<&str> {
        self.settings.get(name).map(String::as_str)
    }

    /// An integer setting; an absent or odd one counts as 0, which reports it short.
    fn number(&self, name: &str) -> i64 {
        self.setting(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    fn object(&self, setting: &str) -> Vec<String> {
        vec![format!("{}: {setting}", self.side)]
    }
}

/// Green's major must be newer than blue's, and the one the cell targets. A switch-back's
/// green is the older major it returns to (`back`).
pub fn versions(
    blue: &ClusterFacts,
    green: &ClusterFacts,
    target: u32,
    back: bool,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    if green.major() <= blue.major() && !back {
        findings.push(Finding::new(
            Code::GreenNotNewer,
            vec![format!("blue: {}", blue.version), format!("green: {}", green.version)],
            format!(
                "green runs PostgreSQL {} and blue {}: an upgrade needs a newer green.",
                green.major(),
                blue.major()
            ),
            "Check that the cell document's blue and green cluster identifiers are not swapped, and that green was created on the new major.",
        ));
    }
    if green.major() != target {
        findings.push(Finding::new(
            Code::GreenMajorMismatch,
            vec![format!("green: {}", green.version)],
            format!(
                "green runs PostgreSQL {} but the cell's target_major_version is {target}.",
                green.major()
            ),
            "Point green.cluster_identifier at a cluster on the target major, or correct target_major_version.",
        ));
    }
    findings
}

/// Logical decoding must be on: on blue to publish, on green when downstream subscribers
/// move to it at the switchover. On Aurora `rds.logical_replication` is what sets
/// `wal_level = logical`, so the fix names whichever exists.
pub fn logical_replication(facts: &ClusterFacts, why: &str) -> Option<Finding> {
    let wal_level = facts.setting("wal_level").unwrap_or("unknown");
    if wal_level == "logical" {
        return None;
    }
    let (objects, fix) = match facts.setting("rds.logical_replication") {
        Some(_) => (
            facts.object("rds.logical_replication"),
            "Set rds.logical_replication = 1 in the cluster parameter group and reboot the writer.",
        ),
        None => (
            facts.object("wal_level"),
            "ALTER SYSTEM SET wal_level = logical and restart the server.",
        ),
    };
    Some(Finding::new(
        Code::LogicalReplicationDisabled,
        objects,
        format!(
            "{}'s wal_level is {wal_level}, not logical: {why}.",
            facts.side
        ),
        fix,
    ))
}

/// What the run will start: one subscription (and slot, and publication) per table group
/// plus one for the rest, in every database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub databases: u32,
    pub subscriptions: u32,
    /// Subscriptions downstream systems will hold on green after the switchover.
    pub downstream_subscriptions: u32,
}

/// Replication capacity for the planned subscriptions.
///
/// `planned` = (table groups + 1) × databases. `headroom` = green's
/// `max_sync_workers_per_subscription`: during the initial copy each table-sync worker
/// takes a temporary slot and a WAL sender on blue, and a worker and a replication origin
/// on green; with none to spare the copy cannot progress. Capacity already used by
/// anything not named `switchyard_…` (the downstream's slot, other subscriptions) is
/// subtracted.
/// - blue: `max_replication_slots − other slots ≥ planned + headroom`, and
///   `max_wal_senders − other walsenders ≥ planned + headroom`;
/// - green: `max_logical_replication_workers − other subscriptions ≥ workers`, where
///   `workers = max(planned + headroom, databases + 5)` (the second term is AWS's
///   guidance for Aurora); `max_worker_processes − other subscriptions ≥ workers + 1`
///   (the launcher); replication origins (`max_active_replication_origins` from PG 18,
///   `max_replication_slots` before) `− other subscriptions ≥ planned + headroom`;
/// - green, for the downstream subscribers that move to it: `max_replication_slots −
///   slots ≥ downstream subscriptions` and the same for `max_wal_senders`.
pub fn capacity(blue: &ClusterFacts, green: &ClusterFacts, plan: Plan) -> Vec<Finding> {
    let planned = i64::from(plan.subscriptions);
    let headroom = green.number("max_sync_workers_per_subscription");
    let with_sync = planned + headroom;
    let workers = with_sync.max(i64::from(plan.databases) + 5);
    let origins = if green.major() >= 18 {
        "max_active_replication_origins"
    } else {
        "max_replication_slots"
    };
    let downstream = i64::from(plan.downstream_subscriptions);
    let checks: [(Code, &ClusterFacts, &str, i64, i64, &str); 7] = [
        (
            Code::ReplicationSlotsShort,
            blue,
            "max_replication_slots",
            blue.other_slots,
            with_sync,
            "a slot per planned subscription and per table-sync worker",
        ),
        (
            Code::WalSendersShort,
            blue,
            "max_wal_senders",
            blue.other_senders,
            with_sync,
            "a WAL sender per planned subscription and per table-sync worker",
        ),
        (
            Code::ReplicationWorkersShort,
            green,
            "max_logical_replication_workers",
            green.other_subscriptions,
            workers,
            "an apply worker per planned subscription and the table-sync workers, at least databases + 5 on Aurora",
        ),
        (
            Code::WorkerProcessesShort,
            green,
            "max_worker_processes",
            green.other_subscriptions,
            workers + 1,
            "the replication workers and their launcher",
        ),
        (
            Code::ReplicationOriginsShort,
            green,
            origins,
            green.other_subscriptions,
            with_sync,
            "an origin per planned subscription and per table-sync worker",
        ),
        (
            Code::ReplicationSlotsShort,
            green,
            "max_replication_slots",
            green.other_slots,
            downstream,
            "a slot per downstream subscription recreated on green at the switchover",
        ),
        (
            Code::WalSendersShort,
            green,
            "max_wal_senders",
            green.other_senders,
            downstream,
            "a WAL sender per downstream subscription recreated on green at the switchover",
        ),
    ];
    let mut findings = Vec::new();
    for (code, facts, setting, used, needed, what) in checks {
        let configured = facts.number(setting);
        let free = configured - used;
        if free < needed {
            findings.push(Finding::new(
                code,
                facts.object(setting),
                format!(
                    "{side}'s {setting} is {configured} with {used} in use by others: {free} free, {needed} needed ({what}; {planned} planned subscription(s), {headroom} table-sync worker(s) per subscription).",
                    side = facts.side,
                ),
                format!(
                    "Raise {setting} on {side} to at least {} (a restart is needed; on Aurora in the cluster parameter group), or free some.",
                    used + needed,
                    side = facts.side,
                ),
            ));
        }
    }
    findings
}

/// Sessions on blue idle in a transaction for more than `seconds`: creating a slot waits
/// for every transaction older than its snapshot, so one of these hangs start-replication.
pub async fn idle_in_transaction(
    tx: &Transaction<'_>,
    seconds: u64,
) -> Result<Option<Finding>, Error> {
    // f64 is exact for any threshold a person would set.
    let threshold = seconds as f64;
    let rows = tx
        .query(
            "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(datname, ''),
                    floor(extract(epoch FROM clock_timestamp() - xact_start))::bigint
               FROM pg_stat_activity
              WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')
                AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                AND xact_start < clock_timestamp() - make_interval(secs => $1)
              ORDER BY xact_start, pid",
            &[&threshold],
        )
        .await
        .map_err(|e| Error::query("listing blue's sessions idle in transaction", e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let sessions: Vec<String> = rows
        .iter()
        .map(|r| {
            let (pid, user, app, db, age): (i32, String, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            format!(
                "pid {pid} (user {}, application {app:?}, database {}, transaction open {age} s)",
                switchyard_postgres::quote::name(&user),
                switchyard_postgres::quote::name(&db)
            )
        })
        .collect();
    let pids: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, i32>(0).to_string())
        .collect();
    Ok(Some(Finding::new(
        Code::IdleInTransaction,
        sessions,
        format!(
            "{} session(s) on blue have been idle in a transaction for more than {seconds} s; creating a replication slot waits for them to end.",
            rows.len()
        ),
        format!(
            "Have the applications finish those transactions (or set idle_in_transaction_session_timeout), or end them with pg_terminate_backend(pid) for pid {}.",
            pids.join(", ")
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(side: Side, version_num: i32, settings: &[(&str, &str)]) -> ClusterFacts {
        ClusterFacts {
            side,
            version: format!("{}.1", version_num / 10_000),
            version_num,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            other_slots: 1,
            other_senders: 1,
            other_subscriptions: 0,
        }
    }

    const LOCAL: [(&str, &str); 6] = [
        ("wal_level", "logical"),
        ("max_replication_slots", "20"),
        ("max_wal_senders", "20"),
        ("max_logical_replication_workers", "12"),
        ("max_worker_processes", "24"),
        ("max_sync_workers_per_subscription", "2"),
    ];

    fn plan(subscriptions: u32) -> Plan {
        Plan {
            databases: 1,
            subscriptions,
            downstream_subscriptions: 1,
        }
    }

    #[test]
    fn versions_need_a_newer_green_on_the_target() {
        let blue = facts(Side::Blue, 140_018, &[]);
        let green = facts(Side::Green, 170_005, &[]);
        assert!(versions(&blue, &green, 17, false).is_empty());
        let codes: Vec<Code> = versions(&green, &blue, 17, false)
            .iter()
            .map(|f| f.code)
            .collect();
        assert_eq!(codes, [Code::GreenNotNewer, Code::GreenMajorMismatch]);
        let codes: Vec<Code> = versions(&blue, &green, 18, false)
            .iter()
            .map(|f| f.code)
            .collect();
        assert_eq!(codes, [Code::GreenMajorMismatch]);
    }

    #[test]
    fn a_switch_back_goes_to_the_older_major_it_targets() {
        let green17 = facts(Side::Blue, 170_005, &[]);
        let old14 = facts(Side::Green, 140_018, &[]);
        assert!(versions(&green17, &old14, 14, true).is_empty());
        let codes: Vec<Code> = versions(&green17, &old14, 13, true)
            .iter()
            .map(|f| f.code)
            .collect();
        assert_eq!(codes, [Code::GreenMajorMismatch]);
    }

    #[test]
    fn logical_replication_names_the_setting_that_exists() {
        let on = facts(Side::Blue, 140_000, &[("wal_level", "logical")]);
        assert!(logical_replication(&on, "x").is_none());
        let plain = facts(Side::Blue, 140_000, &[("wal_level", "replica")]);
        let finding = logical_replication(&plain, "x").expect("blocker");
        assert_eq!(finding.objects, ["blue: wal_level"]);
        assert!(finding.fix.contains("ALTER SYSTEM"));
        let aurora = facts(
            Side::Blue,
            140_000,
            &[("wal_level", "replica"), ("rds.logical_replication", "off")],
        );
        let finding = logical_replication(&aurora, "x").expect("blocker");
        assert_eq!(finding.objects, ["blue: rds.logical_replication"]);
        assert!(finding.fix.contains("parameter group"));
    }

    #[test]
    fn capacity_counts_planned_subscriptions_and_sync_headroom() {
        let blue = facts(Side::Blue, 140_000, &LOCAL);
        let green = facts(Side::Green, 170_000, &LOCAL);
        assert!(capacity(&blue, &green, plan(2)).is_empty());

        // 19 free slots and senders on blue: 17 planned + 2 sync workers fit, 18 do not.
        assert!(capacity(&blue, &green, plan(17))
            .iter()
            .all(|f| f.code != Code::ReplicationSlotsShort));
        let short = capacity(&blue, &green, plan(18));
        let slots = short
            .iter()
            .find(|f| f.code == Code::ReplicationSlotsShort)
            .expect("slots short");
        assert_eq!(slots.objects, ["blue: max_replication_slots"]);
        assert!(
            slots.detail.contains("19 free, 20 needed"),
            "{}",
            slots.detail
        );
        assert!(slots.fix.contains("at least 21"), "{}", slots.fix);
        assert!(short.iter().any(|f| f.code == Code::WalSendersShort));
        // green needs 20 workers: 12 are too few; 24 processes and 20 origins suffice.
        assert!(short
            .iter()
            .any(|f| f.code == Code::ReplicationWorkersShort));
        assert!(short.iter().all(|f| f.code != Code::WorkerProcessesShort));
        assert!(short
            .iter()
            .all(|f| f.code != Code::ReplicationOriginsShort));
    }

    #[test]
    fn aurora_guidance_sets_a_floor_for_workers() {
        let blue = facts(Side::Blue, 140_000, &LOCAL);
        let mut tight = LOCAL;
        tight[3] = ("max_logical_replication_workers", "5");
        let green = facts(Side::Green, 170_000, &tight);
        // 2 planned + 2 sync = 4 ≤ 5, but 1 database + 5 = 6 > 5.
        let findings = capacity(&blue, &green, plan(2));
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].code, Code::ReplicationWorkersShort);
        assert_eq!(
            findings[0].objects,
            ["green: max_logical_replication_workers"]
        );
    }

    #[test]
    fn pg18_counts_origins_separately() {
        let blue = facts(Side::Blue, 160_000, &LOCAL);
        let mut settings = LOCAL.to_vec();
        settings.push(("max_active_replication_origins", "3"));
        let green = facts(Side::Green, 180_000, &settings);
        let findings = capacity(&blue, &green, plan(2));
        assert_eq!(findings.len(), 1);
        assert_eq!(
            findings[0].objects,
            ["green: max_active_replication_origins"]
        );
    }
}
