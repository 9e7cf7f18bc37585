//! Aurora's endpoint names, as slow as AWS documents them to be.
//!
//! A cluster rename is instant in the RDS API (moto), but the DNS name of an identifier
//! follows it only later: the new holder is reached after `rename_propagation`, and a name
//! whose cluster was renamed away keeps leading to that old cluster for `dns_linger`
//! (cached answers), then leads nowhere until the next holder's change has propagated —
//! between the two renames of a switchover the cell's name leads nowhere. [`Names`] watches
//! moto, keeps each name's history of holders with the time each change was seen, and
//! answers "where does this name lead now" from it. Every connection to a cluster by name —
//! the functions', PgBouncer's, the workloads' — goes through a forwarder asking it.
//!
//! The delays are [`AwsTimings`], chosen with `AWS_TIMINGS`: `instant` (the API's word
//! is the DNS's), `fast` (AWS's shape scaled down, for tests) or `documented` (AWS's
//! documented delays, for the rehearsal). `docs/aws-facts.md` gives the sources.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::CellError;

/// The variable choosing the emulated AWS delays.
pub const AWS_TIMINGS_ENV: &str = "AWS_TIMINGS";

/// How slow the emulated AWS is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwsTimings {
    pub name: &'static str,
    /// After a rename, until the new name leads to its cluster.
    pub rename_propagation: Duration,
    /// After a rename, how long the old name still leads to the cluster that left it.
    pub dns_linger: Duration,
}

impl AwsTimings {
    pub const INSTANT: Self = Self {
        name: "instant",
        rename_propagation: Duration::ZERO,
        dns_linger: Duration::ZERO,
    };
    /// AWS's shape at a fraction of its size: long enough that a step reading the API's
    /// word as the name's is caught, short enough for hundreds of tests.
    pub const FAST: Self = Self {
        name: "fast",
        rename_propagation: Duration::from_millis(1500),
        dns_linger: Duration::from_millis(2000),
    };
    /// What AWS documents: a renamed cluster's new name takes effect in about two minutes,
    /// and the old one is still answered from caches meanwhile (endpoint TTL 5 s on top).
    pub const DOCUMENTED: Self = Self {
        name: "documented",
        rename_propagation: Duration::from_secs(120),
        dns_linger: Duration::from_secs(125),
    };

    /// `AWS_TIMINGS`, `fast` when unset; any other value is refused by name.
    pub fn from_env() -> Result<Self, CellError> {
        match std::env::var(AWS_TIMINGS_ENV) {
            Err(_) => Ok(Self::FAST),
            Ok(value) => Self::parse(&value),
        }
    }

    pub fn parse(value: &str) -> Result<Self, CellError> {
        match value {
            "" | "fast" => Ok(Self::FAST),
            "instant" => Ok(Self::INSTANT),
            "documented" => Ok(Self::DOCUMENTED),
            other => Err(CellError::Setup(format!(
                "{AWS_TIMINGS_ENV}={other:?} is not one of instant, fast, documented"
            ))),
        }
    }
}

/// One change of a name's holder, as seen in the API.
#[derive(Clone, Debug)]
struct Change {
    seen: Instant,
    holder: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Identifier → every holder change seen, oldest first (the first is the start).
    history: HashMap<String, Vec<Change>>,
    /// Identifier → where it leads while a test holds it there, whatever the API says.
    frozen: HashMap<String, Option<String>>,
    /// Resource id → the address of the server behind it.
    servers: HashMap<String, String>,
}

/// The emulated DNS of the cell's cluster identifiers. Clones share one state.
#[derive(Clone, Debug)]
pub struct Names {
    timings: AwsTimings,
    state: Arc<Mutex<State>>,
    watcher: Arc<JoinHandle<()>>,
}

/// How often moto is asked who holds each name.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

impl Names {
    /// Starts watching `identifiers` in moto; `servers` maps each cluster's resource id to
    /// its server. The first answer is where each name leads from the start.
    pub async fn start(
        rds: aws_sdk_rds::Client,
        timings: AwsTimings,
        identifiers: &[String],
        servers: HashMap<String, String>,
    ) -> Result<Self, CellError> {
        let state = Arc::new(Mutex::new(State {
            servers,
            ..State::default()
        }));
        let first = holders(&rds)
            .await
            .map_err(|e| CellError::Setup(format!("watching names: {e}")))?;
        {
            let mut s = lock(&state);
            for identifier in identifiers {
                s.history.insert(
                    identifier.clone(),
                    vec![Change {
                        seen: Instant::now(),
                        holder: first.get(identifier).cloned(),
                    }],
                );
            }
        }
        let watched = state.clone();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                // moto answering nothing (it is stopped last at teardown) changes nothing.
                if let Ok(now) = holders(&rds).await {
                    record(&watched, &now, Instant::now());
                }
            }
        });
        Ok(Self {
            timings,
            state,
            watcher: Arc::new(watcher),
        })
    }

    pub fn timings(&self) -> AwsTimings {
        self.timings
    }

    /// The server `identifier`'s name leads to now (`None`: nowhere).
    pub fn route(&self, identifier: &str) -> Option<String> {
        let holder = self.leads_to(identifier)?;
        lock(&self.state).servers.get(&holder).cloned()
    }

    /// The resource id `identifier`'s name leads to now, whatever the API says.
    pub fn leads_to(&self, identifier: &str) -> Option<String> {
        let s = lock(&self.state);
        match s.frozen.get(identifier) {
            Some(frozen) => frozen.clone(),
            None => effective(s.history.get(identifier)?, self.timings, Instant::now()),
        }
    }

    /// From now on `identifier` keeps leading where it leads now, whatever the API says,
    /// until [`Names::release`]: a DNS answer cached for longer than AWS promises.
    pub fn hold(&self, identifier: &str) {
        let now = self.leads_to(identifier);
        lock(&self.state).frozen.insert(identifier.to_owned(), now);
    }

    /// From now on `identifier` leads nowhere until [`Names::release`].
    pub fn hold_nowhere(&self, identifier: &str) {
        lock(&self.state).frozen.insert(identifier.to_owned(), None);
    }

    /// `identifier` follows its history again.
    pub fn release(&self, identifier: &str) {
        lock(&self.state).frozen.remove(identifier);
    }

    /// Every name lag this cell emulated so far, summed: from each change the API made to
    /// the moment the name followed it. What a run spent waiting on AWS at most.
    pub fn emulated_delays(&self) -> Vec<NameDelay> {
        let s = lock(&self.state);
        let mut delays = Vec::new();
        for (identifier, history) in &s.history {
            for (i, change) in history.iter().enumerate().skip(1) {
                delays.push(NameDelay {
                    identifier: identifier.clone(),
                    changed_at: change.seen,
                    follows_at: change.seen + delay_of(change, self.timings),
                    holder: change.holder.clone(),
                    superseded: superseded(history, i, self.timings),
                });
            }
        }
        delays.sort_by_key(|d| d.changed_at);
        delays
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        if Arc::strong_count(&self.watcher) == 1 {
            self.watcher.abort();
        }
    }
}

/// One rename as DNS saw it: when the API changed and when the name followed.
#[derive(Clone, Debug)]
pub struct NameDelay {
    pub identifier: String,
    pub changed_at: Instant,
    pub follows_at: Instant,
    /// The resource id the name leads to from `follows_at` (`None`: nowhere).
    pub holder: Option<String>,
    /// A later change took effect first: the name never led to `holder` for this change.
    pub superseded: bool,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn delay_of(change: &Change, timings: AwsTimings) -> Duration {
    match change.holder {
        // A name that lost its cluster keeps answering with it from caches.
        None => timings.dns_linger,
        Some(_) => timings.rename_propagation,
    }
}

/// Where a name with `history` leads at `now`: the holder of the latest change (in the
/// API's order) that has taken effect. A later change in effect hides every earlier one,
/// so an old answer expiring late never comes back. The first entry is the start.
fn effective(history: &[Change], timings: AwsTimings, now: Instant) -> Option<String> {
    history
        .iter()
        .enumerate()
        .rev()
        .find(|(i, change)| {
            let delay = if *i == 0 {
                Duration::ZERO
            } else {
                delay_of(change, timings)
            };
            change.seen + delay <= now
        })
        .and_then(|(_, change)| change.holder.clone())
}

/// Whether change `i` of `history` never takes effect: a later change took effect no later
/// than it would have, and the latest change in effect wins (see [`effective`]).
fn superseded(history: &[Change], i: usize, timings: AwsTimings) -> bool {
    let follows_at = history[i].seen + delay_of(&history[i], timings);
    history[i + 1..]
        .iter()
        .any(|later| later.seen + delay_of(later, timings) <= follows_at)
}

fn record(state: &Mutex<State>, holders: &HashMap<String, String>, seen: Instant) {
    let mut s = lock(state);
    for (identifier, history) in &mut s.history {
        let now = holders.get(identifier).cloned();
        if history.last().map(|c| &c.holder) != Some(&now) {
            tracing::debug!(identifier, holder = ?now, "the API renamed; the name follows later");
            history.push(Change { seen, holder: now });
        }
    }
}

/// Identifier → resource id of every cluster in moto now.
async fn holders(rds: &aws_sdk_rds::Client) -> Result<HashMap<String, String>, String> {
    let mut holders = HashMap::new();
    let mut marker = None;
    loop {
        let out = rds
            .describe_db_clusters()
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| format!("describing DB clusters: {e}"))?;
        for c in out.db_clusters() {
            if let (Some(id), Some(resource)) =
                (c.db_cluster_identifier(), c.db_cluster_resource_id())
            {
                holders.insert(id.to_owned(), resource.to_owned());
            }
        }
        match out.marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
            _ => return Ok(holders),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: Instant, holder: Option<&str>) -> Change {
        Change {
            seen: at,
            holder: holder.map(str::to_owned),
        }
    }

    #[test]
    fn a_rename_back_before_the_first_follows_still_lets_the_first_take_effect() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let timings = AwsTimings {
            name: "test",
            rename_propagation: s(120),
            dns_linger: s(125),
        };
        // The switchover gives the name to green at t+1, the abort path back at t+60.
        let history = [
            change(t, Some("blue")),
            change(t + s(1), Some("green")),
            change(t + s(60), Some("blue")),
        ];
        assert!(
            !superseded(&history, 1, timings),
            "green's change takes effect at t+121"
        );
        assert!(!superseded(&history, 2, timings));
        let at = |secs| effective(&history, timings, t + s(secs));
        assert_eq!(at(100).as_deref(), Some("blue"));
        assert_eq!(
            at(150).as_deref(),
            Some("green"),
            "the wrong cluster, for a while"
        );
        assert_eq!(at(180).as_deref(), Some("blue"));
        // Losing the name lingers longer than gaining one propagates: a loss followed by
        // a gain soon after never shows.
        let history = [
            change(t, Some("blue")),
            change(t + s(1), None),
            change(t + s(2), Some("green")),
        ];
        assert!(superseded(&history, 1, timings));
        assert!(!superseded(&history, 2, timings));
    }

    #[test]
    fn a_switchover_reaches_dns_late_and_leads_nowhere_between() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let timings = AwsTimings {
            name: "test",
            rename_propagation: s(10),
            dns_linger: s(12),
        };
        // Blue leaves the name at t+1, green takes it at t+2.
        let history = [
            change(t, Some("blue")),
            change(t + s(1), None),
            change(t + s(2), Some("green")),
        ];
        let at = |secs| effective(&history, timings, t + s(secs));
        assert_eq!(at(0).as_deref(), Some("blue"));
        assert_eq!(
            at(5).as_deref(),
            Some("blue"),
            "cached: still the old cluster"
        );
        assert_eq!(
            at(12).as_deref(),
            Some("green"),
            "green's change took effect first"
        );
        let linger_longer = AwsTimings {
            dns_linger: s(30),
            ..timings
        };
        assert_eq!(
            effective(&history, linger_longer, t + s(20)).as_deref(),
            Some("green")
        );
        assert_eq!(
            effective(&history, linger_longer, t + s(31)).as_deref(),
            Some("green"),
            "an old answer expiring late never brings 'nowhere' back over a newer one"
        );
        let slow_new = AwsTimings {
            rename_propagation: s(30),
            ..timings
        };
        assert_eq!(
            effective(&history, slow_new, t + s(20)),
            None,
            "between the renames the name leads nowhere"
        );
        assert_eq!(
            effective(&history, slow_new, t + s(32)).as_deref(),
            Some("green")
        );
        assert_eq!(
            effective(&history, AwsTimings::INSTANT, t + s(2)).as_deref(),
            Some("green")
        );
    }

    #[test]
    fn timings_are_named() {
        assert_eq!(AwsTimings::parse("fast").expect("fast"), AwsTimings::FAST);
        assert_eq!(
            AwsTimings::parse("documented").expect("documented").name,
            "documented"
        );
        assert!(AwsTimings::parse("slow").is_err());
    }
}
