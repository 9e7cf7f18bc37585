//! Client workloads: the ledger writer (through PgBouncer) and the direct writers (ECS
//! services). Both record every acknowledged commit under a client-generated key, so that
//! loss and duplication can be counted exactly on whichever server ends up primary.

mod direct;
mod ledger;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_postgres::{connect, ConnectOptions};
use tokio::sync::watch;

pub use direct::{DirectWriterSpec, DirectWriters};
pub use ledger::{Ledger, LedgerSpec};

/// One acknowledged commit: the client saw COMMIT succeed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ack {
    pub key: String,
    pub latency_us: u64,
    /// When the client saw the commit acknowledged, in milliseconds since the Unix epoch:
    /// lets a report pick the commits acknowledged during a given window.
    pub at_unix_ms: u64,
}

/// What a workload saw, shared between its workers.
#[derive(Debug, Default)]
pub struct Tally {
    pub acks: Vec<Ack>,
    /// Transactions that failed before COMMIT was acknowledged (rolled back: no row).
    pub failed: u64,
    /// Keys whose COMMIT got no answer: the row may or may not exist. Counted apart, never
    /// as acknowledged.
    pub in_doubt: Vec<String>,
    /// The first few distinct error messages, for the report.
    pub errors: Vec<String>,
}

impl Tally {
    /// The keys of every acknowledged commit, for an audit.
    pub fn keys(&self) -> Vec<String> {
        self.acks.iter().map(|a| a.key.clone()).collect()
    }

    /// Keeps the first occurrence of each distinct message, stamped with when it was seen
    /// (Unix ms), so a failure can be matched to the run's history and PgBouncer's log.
    fn error(&mut self, message: String) {
        let seen = self
            .errors
            .iter()
            .any(|e| e.split_once(" @ ").is_some_and(|(m, _)| m == message));
        if self.errors.len() < 20 && !seen {
            self.errors.push(format!("{message} @ {}", unix_ms_now()));
        }
    }
}

/// An error as a client would log it: a server's (or PgBouncer's) SQLSTATE and message,
/// not tokio-postgres' bare "db error".
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

pub type SharedTally = Arc<Mutex<Tally>>;

/// How many of `keys` are present once, missing, or present more than once in `table`'s
/// `column` on the server `opts` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KeyAudit {
    pub present_once: usize,
    pub missing: usize,
    pub duplicated: usize,
}

pub async fn audit_keys(
    opts: &ConnectOptions,
    (schema, table): (&str, &str),
    column: &str,
    keys: &[String],
) -> Result<KeyAudit, crate::CellError> {
    let client = switchyard_postgres::connect(opts)
        .await
        .map_err(|e| crate::CellError::Workload(e.to_string()))?;
    // One join, not a subquery per key: the key column has no index, and a full-speed run
    // acknowledges tens of thousands of keys (a scan per key takes minutes).
    let sql = format!(
        "SELECT u.k, count(t.{col}) FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) \
         LEFT JOIN {rel} t ON t.{col} = u.k GROUP BY u.i, u.k",
        rel = switchyard_postgres::quote::qualified(schema, table),
        col = switchyard_postgres::quote::ident(column),
    );
    let rows = client.query(&sql, &[&keys]).await.map_err(|e| {
        crate::CellError::Workload(format!(
            "auditing keys in {}: {e}",
            switchyard_postgres::quote::qualified_name(schema, table)
        ))
    })?;
    let mut audit = KeyAudit {
        present_once: 0,
        missing: 0,
        duplicated: 0,
    };
    for row in rows {
        match row.get::<_, i64>(1) {
            0 => audit.missing += 1,
            1 => audit.present_once += 1,
            _ => audit.duplicated += 1,
        }
    }
    Ok(audit)
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reconnect pause after a failed connection: short, so a resumed PgBouncer is used at once.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// How one client transaction ended, as the client saw it.
enum Outcome {
    Committed,
    /// Failed before COMMIT was acknowledged and rolled back: no row.
    Failed(String),
    /// COMMIT was sent and no answer came back.
    InDoubt(String),
}

impl Outcome {
    /// Classifies COMMIT's result: a server error means rolled back, a lost connection
    /// means nobody knows.
    fn of_commit(result: Result<(), tokio_postgres::Error>) -> Self {
        match result {
            Ok(()) => Self::Committed,
            Err(e) if e.as_db_error().is_some() => {
                Self::Failed(format!("commit: {}", describe(&e)))
            }
            Err(e) => Self::InDoubt(format!("commit: {}", describe(&e))),
        }
    }
}

type Transaction = for<'a> fn(
    &'a tokio_postgres::Client,
    &'a str,
    i64,
) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One client: keeps a connection (reconnecting after failures), runs `transaction` under
/// a fresh `<prefix>:<uuid>` key for a random account, records what happened, pauses,
/// and repeats until `stopped` — finishing the transaction in hand first.
async fn client_loop(
    opts: ConnectOptions,
    prefix: &'static str,
    accounts: i64,
    pause: Duration,
    tally: SharedTally,
    stopped: watch::Receiver<bool>,
    transaction: Transaction,
) {
    let mut client = None;
    while !*stopped.borrow() {
        let c = match client.take() {
            Some(c) => c,
            None => match connect(&opts).await {
                Ok(c) => c,
                Err(e) => {
                    if let Ok(mut t) = tally.lock() {
                        t.error(format!("connect: {e}"));
                    }
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            },
        };
        let key = format!("{prefix}:{}", uuid::Uuid::new_v4());
        let account = rand::random_range(1..=accounts.max(1));
        let started = Instant::now();
        let outcome = transaction(&c, &key, account).await;
        let latency_us = started.elapsed().as_micros() as u64;
        let at_unix_ms = unix_ms_now();
        if let Ok(mut t) = tally.lock() {
            match outcome {
                Outcome::Committed => t.acks.push(Ack {
                    key,
                    latency_us,
                    at_unix_ms,
                }),
                Outcome::Failed(e) => {
                    t.failed += 1;
                    t.error(e);
                }
                Outcome::InDoubt(e) => {
                    t.failed += 1;
                    t.in_doubt.push(key);
                    t.error(e);
                }
            }
        }
        if !c.is_closed() {
            client = Some(c);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}
