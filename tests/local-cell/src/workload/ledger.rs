//! The ledger writer: payments through PgBouncer, as the application writes them.

use std::time::{Duration, Instant};

use rand::Rng;
use switchyard_postgres::{connect, ConnectOptions};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::types::Type;

use super::{Ack, SharedTally, Tally, RECONNECT_DELAY};

/// The ledger's transaction: one payment row whose memo carries the client's key.
const INSERT_PAYMENT: &str = "INSERT INTO public.payments (account_id, amount, memo) VALUES ($1, $2::numeric, $3) RETURNING id";

#[derive(Debug, Clone)]
pub struct LedgerSpec {
    /// PgBouncer's address and the pooled database.
    pub connect: ConnectOptions,
    pub workers: usize,
    /// Accounts ids 1..=accounts exist in the fixture.
    pub accounts: i64,
    /// Pause between a worker's transactions; zero means full speed.
    pub think_time: Duration,
}

/// A running ledger workload. `stop` ends it and returns what it saw.
#[derive(Debug)]
pub struct Ledger {
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
    tally: SharedTally,
}

impl Ledger {
    pub fn start(spec: LedgerSpec) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tally = SharedTally::default();
        let mut workers = JoinSet::new();
        for _ in 0..spec.workers {
            workers.spawn(worker(spec.clone(), tally.clone(), stopped.clone()));
        }
        Self {
            stop,
            workers,
            tally,
        }
    }

    /// Acknowledged commits so far.
    pub fn acknowledged(&self) -> usize {
        self.tally.lock().map(|t| t.acks.len()).unwrap_or(0)
    }

    /// Lets every in-flight transaction finish, then returns the tally.
    pub async fn stop(mut self) -> Tally {
        let _ = self.stop.send(true);
        while self.workers.join_next().await.is_some() {}
        std::mem::take(&mut *self.tally.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn worker(spec: LedgerSpec, tally: SharedTally, stopped: watch::Receiver<bool>) {
    let mut client = None;
    while !*stopped.borrow() {
        let c = match client.take() {
            Some(c) => c,
            None => match connect(&spec.connect).await {
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
        let key = format!("ledger:{}", uuid::Uuid::new_v4());
        let (account, cents) = {
            let mut rng = rand::rng();
            (
                rng.random_range(1..=spec.accounts),
                rng.random_range(1..100_000i64),
            )
        };
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let started = Instant::now();
        let outcome = pay(&c, account, &amount, &key).await;
        let latency_us = started.elapsed().as_micros() as u64;
        if let Ok(mut t) = tally.lock() {
            record(&mut t, outcome, key, latency_us);
        }
        if !c.is_closed() {
            client = Some(c);
        }
        if !spec.think_time.is_zero() {
            tokio::time::sleep(spec.think_time).await;
        }
    }
}

pub(super) enum Outcome {
    Committed,
    /// Failed before COMMIT was sent: rolled back.
    Failed(String),
    /// COMMIT was sent and no answer came back.
    InDoubt(String),
}

pub(super) fn record(t: &mut Tally, outcome: Outcome, key: String, latency_us: u64) {
    match outcome {
        Outcome::Committed => t.acks.push(Ack { key, latency_us }),
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

async fn pay(client: &tokio_postgres::Client, account: i64, amount: &str, key: &str) -> Outcome {
    // Typed queries use the unnamed statement: named prepared statements do not survive
    // PgBouncer's transaction pooling (1.18 has no prepared-statement support).
    if let Err(e) = client.batch_execute("BEGIN").await {
        return Outcome::Failed(format!("begin: {e}"));
    }
    if let Err(e) = client
        .query_typed(
            INSERT_PAYMENT,
            &[
                (&account, Type::INT8),
                (&amount, Type::TEXT),
                (&key, Type::TEXT),
            ],
        )
        .await
    {
        let _ = client.batch_execute("ROLLBACK").await;
        return Outcome::Failed(format!("insert: {e}"));
    }
    match client.batch_execute("COMMIT").await {
        Ok(()) => Outcome::Committed,
        Err(e) if e.as_db_error().is_some() => Outcome::Failed(format!("commit: {e}")),
        Err(e) => Outcome::InDoubt(format!("commit: {e}")),
    }
}
