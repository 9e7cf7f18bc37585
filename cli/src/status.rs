//! `switchyard status`: where a cell is, in one read-only look — the run that owns it, both
//! legs' decisions, which cluster holds the cell's name, every PgBouncer instance (paused
//! or not, and where it points), the write fence on each cluster, the subscriptions and
//! slots of ours with their lag, the journal, what `check-drift` finds (once there is a
//! prepare or a rollback window to check), and the next safe command. Nothing is changed;
//! whatever cannot be read is said, not guessed.

use serde::Serialize;
use serde_json::Value;
use switchyard_cell::CellDocument;
use switchyard_errors::Catalogued;
use switchyard_operation::fence::{Decision, RunLock, Verdict};
use switchyard_operation::rename::{self, RenamePlan};
use switchyard_operation::{fleet, saved_acls, Deps, PauseWindow};
use switchyard_postgres::quote;

/// What `status` found.
#[derive(Debug, Serialize)]
pub struct Status {
    pub cell_id: String,
    /// `idle`, `running`, `switched`, `switched_back`, `aborting` — the phase the journal and
    /// the lock say the cell is in.
    pub phase: &'static str,
    pub lock: Option<RunLock>,
    /// The upgrade's decision (switched, or a run's abort), if any.
    pub decision: Option<Decision>,
    /// Its switch-back's, if any.
    pub switch_back: Option<Decision>,
    pub pause_window: Option<PauseWindow>,
    pub rename_plan: Option<RenamePlan>,
    pub clusters: Vec<Cluster>,
    pub pgbouncer: Vec<Instance>,
    /// What check-drift says (the prepare's drift, or on a switched cell the rollback
    /// window).
    pub drift: Drift,
    /// Everything that needs a person, one sentence each; empty when healthy.
    pub attention: Vec<String>,
    /// The next safe command.
    pub next: String,
}

/// One cluster of the cell, as RDS and the server say.
#[derive(Debug, Serialize)]
pub struct Cluster {
    pub identifier: String,
    pub engine_version: String,
    pub status: String,
    /// It holds the cell's name: clients reach it.
    pub serves: bool,
    /// `primary` (it holds the cell's name), `green` (the upgrade's, under its own name),
    /// `parked` (`<id>-blue-<major>`: an old blue, or a green a switch-back parked).
    pub role: &'static str,
    pub databases: Vec<Database>,
    /// Why it could not be read, when it could not.
    pub unreadable: Option<String>,
}

/// One of the cell's databases on a cluster.
#[derive(Debug, Serialize)]
pub struct Database {
    pub name: String,
    /// Relations whose write privileges revoke-writes took away and that are not restored:
    /// the write fence.
    pub writes_revoked: i64,
    pub subscriptions: Vec<Subscription>,
    pub slots: Vec<Slot>,
}

#[derive(Debug, Serialize)]
pub struct Subscription {
    pub name: String,
    pub enabled: bool,
    /// An apply worker runs.
    pub streaming: bool,
}

#[derive(Debug, Serialize)]
pub struct Slot {
    pub name: String,
    pub active: bool,
    /// WAL behind the current position that the subscriber has not confirmed.
    pub lag_bytes: Option<i64>,
}

/// check-drift's answer, as `status` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Drift {
    /// Nothing replicates to green and the cell has not switched: nothing to check.
    NothingPrepared,
    /// Blockers and warnings, each `CODE (objects)`.
    Checked {
        blockers: Vec<String>,
        warnings: Vec<String>,
    },
    /// check-drift could not answer: why (its typed error, or the invoke's).
    NotChecked { why: String },
}

/// One PgBouncer instance.
#[derive(Debug, Serialize)]
pub struct Instance {
    pub endpoint: String,
    /// The cell's PgBouncer databases that are paused.
    pub paused: Vec<String>,
    /// Where each of the cell's PgBouncer databases points (`host:port`).
    pub points_to: Vec<String>,
    pub unreachable: Option<String>,
}

impl Status {
    pub fn healthy(&self) -> bool {
        self.attention.is_empty()
    }

    /// Whether there is drift to check: a prepare replicating to green, or a switch's
    /// rollback window. (Before any prepare, check-drift would report every table as
    /// unpublished: true, and no news.)
    pub fn wants_drift(&self) -> bool {
        self.phase == "switched"
            || self.clusters.iter().any(|c| {
                c.role == "green" && c.databases.iter().any(|d| !d.subscriptions.is_empty())
            })
    }

    /// Takes check-drift's answer (its output, or its error as text): blockers need a
    /// person.
    pub fn set_drift(&mut self, answer: Result<Value, String>) {
        let findings = |output: &Value, which: &str| -> Vec<String> {
            output[which]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let objects: Vec<&str> = f["objects"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!(
                        "{} ({})",
                        f["code"].as_str().unwrap_or("?"),
                        objects.join("; ")
                    )
                })
                .collect()
        };
        self.drift = match answer {
            Ok(output) => {
                let blockers = findings(&output, "blockers");
                if !blockers.is_empty() {
                    self.attention.push(format!(
                        "check-drift finds blockers: {} (switchyard invoke check-drift --cell cell.json for each one's fix)",
                        blockers.join(", ")
                    ));
                }
                Drift::Checked {
                    blockers,
                    warnings: findings(&output, "warnings"),
                }
            }
            Err(why) => Drift::NotChecked { why },
        };
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        out.push(format!("cell {}: {}", self.cell_id, self.phase));
        out.push(match &self.lock {
            Some(lock) => format!("  lock        held by {}", lock.describe()),
            None => "  lock        free".to_owned(),
        });
        for (what, decision) in [
            ("decision", &self.decision),
            ("switch-back", &self.switch_back),
        ] {
            if let Some(d) = decision {
                out.push(format!(
                    "  {what:<11} {:?} by run {} at {} (green {}, PostgreSQL {})",
                    d.verdict, d.run_id, d.decided_at, d.green_identifier, d.target_major_version
                ));
            }
        }
        if let Some(window) = &self.pause_window {
            out.push(format!(
                "  pause       run {} paused at {}",
                window.run_id, window.paused_at
            ));
        }
        for c in &self.clusters {
            out.push(format!(
                "  cluster     {} ({}, PostgreSQL {}, {}){}",
                c.identifier,
                c.role,
                c.engine_version,
                c.status,
                if c.serves {
                    ": holds the cell's name"
                } else {
                    ""
                }
            ));
            if let Some(why) = &c.unreadable {
                out.push(format!("                unreadable: {why}"));
            }
            for d in &c.databases {
                if d.writes_revoked > 0 {
                    out.push(format!(
                        "                {}: writes revoked on {} relations",
                        quote::name(&d.name),
                        d.writes_revoked
                    ));
                }
                for s in &d.subscriptions {
                    out.push(format!(
                        "                {}: subscription {} {}{}",
                        quote::name(&d.name),
                        quote::name(&s.name),
                        if s.enabled { "enabled" } else { "disabled" },
                        if s.streaming { ", streaming" } else { "" }
                    ));
                }
                for s in &d.slots {
                    out.push(format!(
                        "                {}: slot {} {}, {} bytes behind",
                        quote::name(&d.name),
                        quote::name(&s.name),
                        if s.active { "active" } else { "inactive" },
                        s.lag_bytes.map_or("?".to_owned(), |b| b.to_string())
                    ));
                }
            }
        }
        for i in &self.pgbouncer {
            match &i.unreachable {
                Some(why) => out.push(format!("  pgbouncer   {}: unreachable ({why})", i.endpoint)),
                None => out.push(format!(
                    "  pgbouncer   {}: {} → {}",
                    i.endpoint,
                    if i.paused.is_empty() {
                        "serving".to_owned()
                    } else {
                        format!("PAUSED ({})", i.paused.join(", "))
                    },
                    i.points_to.join(", ")
                )),
            }
        }
        out.push(match &self.drift {
            Drift::NothingPrepared => "  drift       nothing prepared to check".to_owned(),
            Drift::Checked { blockers, warnings } if blockers.is_empty() => format!(
                "  drift       clean{}",
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!("; warnings: {}", warnings.join(", "))
                }
            ),
            Drift::Checked { blockers, .. } => {
                format!("  drift       BLOCKERS: {}", blockers.join(", "))
            }
            Drift::NotChecked { why } => format!("  drift       not checked: {why}"),
        });
        for a in &self.attention {
            out.push(format!("  ATTENTION   {a}"));
        }
        out.push(format!("  next        {}", self.next));
        out.join("\n") + "\n"
    }
}

/// Reads everything `status` shows. Errors only when the journal cannot be read; a
/// cluster or instance that cannot be reached is part of the answer.
pub async fn read(cell: &CellDocument, deps: &Deps) -> Result<Status, String> {
    let journal = deps.journal(cell);
    let read_err =
        |e: switchyard_operation::Error| format!("reading the journal: {}", e.to_failure());
    let (lock, decision) = journal
        .get_pair::<RunLock, Decision>()
        .await
        .map_err(read_err)?;
    let (pause_window, rename_plan) = journal
        .get_pair::<PauseWindow, RenamePlan>()
        .await
        .map_err(read_err)?;
    let switch_back = journal
        .other_leg()
        .get::<Decision>()
        .await
        .map_err(read_err)?
        .filter(|d| d.switched_back(cell));

    let clusters = clusters(cell, deps).await?;
    let pgbouncer = instances(cell, deps).await;

    let switched = decision.as_ref().is_some_and(|d| d.switched(cell));
    let aborting = decision
        .as_ref()
        .is_some_and(|d| d.verdict == Verdict::Aborting && d.binds(cell));
    let phase = match (&lock, switched, switch_back.is_some(), aborting) {
        (_, true, true, _) => "switched_back",
        (Some(_), _, _, _) => "running",
        (None, true, false, _) => "switched",
        (None, false, _, true) => "aborting",
        _ => "idle",
    };

    let mut attention = Vec::new();
    let paused: Vec<&Instance> = pgbouncer.iter().filter(|i| !i.paused.is_empty()).collect();
    for i in &pgbouncer {
        if let Some(why) = &i.unreachable {
            attention.push(format!("PgBouncer {} cannot be reached: {why}", i.endpoint));
        }
    }
    if !paused.is_empty() && lock.is_none() {
        attention.push(format!(
            "PgBouncer {} paused and no run holds the cell: its clients wait",
            paused
                .iter()
                .map(|i| i.endpoint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for c in clusters.iter().filter(|c| c.serves) {
        for d in c.databases.iter().filter(|d| d.writes_revoked > 0) {
            if lock.is_none() {
                attention.push(format!(
                    "{} serves the cell but {} relations of database {} have their writes revoked",
                    c.identifier,
                    d.writes_revoked,
                    quote::name(&d.name)
                ));
            }
        }
        if let Some(why) = &c.unreadable {
            attention.push(format!(
                "{} serves the cell but cannot be read: {why}",
                c.identifier
            ));
        }
    }
    for c in &clusters {
        for d in &c.databases {
            for s in d.slots.iter().filter(|s| !s.active) {
                attention.push(format!(
                    "slot {} on {} (database {}) is not streaming: it keeps WAL ({} bytes)",
                    quote::name(&s.name),
                    c.identifier,
                    quote::name(&d.name),
                    s.lag_bytes.map_or("?".to_owned(), |b| b.to_string())
                ));
            }
        }
    }
    if aborting && lock.is_none() {
        attention
            .push("an abort began and no run holds the cell: it may not have finished".to_owned());
    }

    let cell_json = "--cell cell.json";
    let next = match phase {
        "running" => match lock.as_ref().and_then(|l| l.execution.clone()) {
            Some(execution) => format!("a run owns the cell: switchyard follow {execution}"),
            None => format!(
                "run {} holds the lock by hand: let it finish; if it is dead, release-lock as it (docs/runbook.md)",
                lock.as_ref().map_or("?", |l| l.run_id.as_str())
            ),
        },
        _ if !paused.is_empty() && switched => format!(
            "writes are on green: switchyard invoke resume-pgbouncer {cell_json} --set direction=forward --run-id <yours> (take the lock first), never the abort path"
        ),
        _ if !paused.is_empty() => format!(
            "finish the abort by hand in its order (docs/runbook.md): switchyard invoke resume-pgbouncer {cell_json} --set direction=abort --run-id <yours> --dry-run first"
        ),
        "switched" => format!(
            "watch the rollback window (switchyard invoke check-drift {cell_json}); after the soak: switchyard start {cell_json} --phase finalize; to go back: --phase switchback"
        ),
        "switched_back" => "the cell is back on the old blue: for another attempt, empty green and run prepare (docs/runbook.md, Switching back)".to_owned(),
        "aborting" => "read the failed execution (switchyard follow --history) and finish the abort path by hand (docs/runbook.md)".to_owned(),
        _ => format!(
            "switchyard start {cell_json} --phase prepare, then --phase switchover (check-drift before it)"
        ),
    };
    Ok(Status {
        cell_id: cell.cell_id.clone(),
        phase,
        lock,
        decision,
        switch_back,
        pause_window,
        rename_plan,
        clusters,
        pgbouncer,
        drift: Drift::NothingPrepared,
        attention,
        next,
    })
}

/// The cell's clusters: blue's and green's identifiers and every parked one.
async fn clusters(cell: &CellDocument, deps: &Deps) -> Result<Vec<Cluster>, String> {
    let mut found = Vec::new();
    let mut pages = deps.aws.rds.describe_db_clusters().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("listing DB clusters: {e}"))?;
        for c in page.db_clusters() {
            let Some(id) = c.db_cluster_identifier() else {
                continue;
            };
            let parked = id
                .strip_prefix(&format!("{}-blue-", cell.blue.cluster_identifier))
                .is_some_and(|major| major.parse::<u32>().is_ok());
            let role = if id == cell.blue.cluster_identifier {
                "primary"
            } else if id == cell.green.cluster_identifier {
                "green"
            } else if parked || rename::is_parked(cell, id) {
                "parked"
            } else {
                continue;
            };
            found.push((
                id.to_owned(),
                c.engine_version().unwrap_or_default().to_owned(),
                c.status().unwrap_or_default().to_owned(),
                role,
            ));
        }
    }
    found.sort();
    let mut clusters = Vec::new();
    for (identifier, engine_version, status, role) in found {
        let serves = identifier == cell.blue.cluster_identifier;
        let mut cluster = Cluster {
            identifier,
            engine_version,
            status,
            serves,
            role,
            databases: Vec::new(),
            unreadable: None,
        };
        for database in &cell.databases {
            match read_database(cell, deps, &cluster.identifier, database).await {
                Ok(d) => cluster.databases.push(d),
                Err(why) => {
                    cluster.unreadable = Some(why);
                    break;
                }
            }
        }
        clusters.push(cluster);
    }
    Ok(clusters)
}

async fn read_database(
    cell: &CellDocument,
    deps: &Deps,
    identifier: &str,
    database: &str,
) -> Result<Database, String> {
    let (client, _) = deps
        .connect_identifier(cell, identifier, database)
        .await
        .map_err(|e| e.to_failure().to_string())?;
    let query = |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {e}");
    let writes_revoked = if saved_acls::exists(&client)
        .await
        .map_err(|e| e.to_failure().to_string())?
    {
        saved_acls::unrestored(&client)
            .await
            .map_err(|e| e.to_failure().to_string())?
    } else {
        0
    };
    let subscriptions = client
        .query(
            "SELECT s.subname::text, s.subenabled,
                    EXISTS (SELECT FROM pg_catalog.pg_stat_subscription st
                             WHERE st.subid = s.oid AND st.pid IS NOT NULL)
               FROM pg_catalog.pg_subscription s
              WHERE s.subdbid = (SELECT oid FROM pg_catalog.pg_database
                                  WHERE datname = pg_catalog.current_database())
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("reading subscriptions"))?
        .iter()
        .map(|r| Subscription {
            name: r.get(0),
            enabled: r.get(1),
            streaming: r.get(2),
        })
        .collect();
    let slots = client
        .query(
            "SELECT slot_name::text, active,
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
               FROM pg_catalog.pg_replication_slots
              WHERE database = pg_catalog.current_database() AND slot_type = 'logical'
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("reading replication slots"))?
        .iter()
        .map(|r| Slot {
            name: r.get(0),
            active: r.get(1),
            lag_bytes: r.get(2),
        })
        .collect();
    Ok(Database {
        name: database.to_owned(),
        writes_revoked,
        subscriptions,
        slots,
    })
}

/// Every PgBouncer instance: paused or not, and where the cell's databases point.
async fn instances(cell: &CellDocument, deps: &Deps) -> Vec<Instance> {
    let endpoints = match fleet::discover(cell, deps).await {
        Ok(e) => e,
        Err(e) => {
            return vec![Instance {
                endpoint: "(discovery)".to_owned(),
                paused: Vec::new(),
                points_to: Vec::new(),
                unreachable: Some(e.to_failure().to_string()),
            }]
        }
    };
    let login = match fleet::admin_login(cell, deps).await {
        Ok(l) => l,
        Err(e) => {
            return endpoints
                .iter()
                .map(|ep| Instance {
                    endpoint: ep.to_string(),
                    paused: Vec::new(),
                    points_to: Vec::new(),
                    unreachable: Some(format!("no admin login: {}", e.to_failure())),
                })
                .collect()
        }
    };
    let mut out = Vec::new();
    for endpoint in endpoints {
        let rows = match endpoint.connect(&login).await {
            Ok(admin) => admin.show_databases().await,
            Err(e) => Err(e),
        };
        out.push(match rows {
            Ok(rows) => {
                let ours: Vec<_> = rows
                    .iter()
                    .filter(|r| cell.pgbouncer.databases.contains(&r.name))
                    .collect();
                Instance {
                    endpoint: endpoint.to_string(),
                    paused: ours
                        .iter()
                        .filter(|r| r.paused)
                        .map(|r| r.name.clone())
                        .collect(),
                    points_to: ours
                        .iter()
                        .map(|r| {
                            format!(
                                "{}: {}:{}",
                                r.name,
                                r.host.as_deref().unwrap_or("(socket)"),
                                r.port
                            )
                        })
                        .collect(),
                    unreachable: None,
                }
            }
            Err(e) => Instance {
                endpoint: endpoint.to_string(),
                paused: Vec::new(),
                points_to: Vec::new(),
                unreachable: Some(e.to_string()),
            },
        });
    }
    out
}
