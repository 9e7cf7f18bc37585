//! Client workloads: the ledger writer (through PgBouncer) and the direct writers (ECS
//! services). Both record every acknowledged commit under a client-generated key, so that
//! loss and duplication can be counted exactly on whichever server ends up primary.

mod direct;
mod ledger;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_postgres::ConnectOptions;

pub use direct::{DirectWriterSpec, DirectWriters};
pub use ledger::{Ledger, LedgerSpec};

/// One acknowledged commit: the client saw COMMIT succeed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ack {
    pub key: String,
    pub latency_us: u64,
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
    fn error(&mut self, message: String) {
        if self.errors.len() < 20 && !self.errors.contains(&message) {
            self.errors.push(message);
        }
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
    let sql = format!(
        "SELECT k, (SELECT count(*) FROM {rel} t WHERE t.{col} = k) FROM unnest($1::text[]) AS k",
        rel = switchyard_postgres::quote::qualified(schema, table),
        col = switchyard_postgres::quote::ident(column),
    );
    let rows = client.query(&sql, &[&keys]).await.map_err(|e| {
        crate::CellError::Workload(format!("auditing keys in {schema}.{table}: {e}"))
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

/// Reconnect pause after a failed connection: short, so a resumed PgBouncer is used at once.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
