//! The ledger writer: payments through PgBouncer, as the application writes them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use switchyard_postgres::ConnectOptions;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::types::Type;

use super::{client_loop, Outcome, SharedTally, Tally};

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
            workers.spawn(client_loop(
                spec.connect.clone(),
                "ledger",
                spec.accounts,
                spec.think_time,
                tally.clone(),
                stopped.clone(),
                pay,
            ));
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

    /// The keys of every commit acknowledged so far (the workload keeps running).
    pub fn keys(&self) -> Vec<String> {
        self.tally.lock().map(|t| t.keys()).unwrap_or_default()
    }

    /// Lets every in-flight transaction finish, then returns the tally.
    pub async fn stop(mut self) -> Tally {
        let _ = self.stop.send(true);
        while self.workers.join_next().await.is_some() {}
        std::mem::take(&mut *self.tally.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn pay<'a>(
    client: &'a tokio_postgres::Client,
    key: &'a str,
    account: i64,
) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
    Box::pin(async move {
        let cents = rand::random_range(1..100_000i64);
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        // Typed queries use the unnamed statement: named prepared statements do not
        // survive PgBouncer's transaction pooling (1.18 has no prepared-statement support).
        if let Err(e) = client.batch_execute("BEGIN").await {
            return Outcome::Failed(format!("begin: {}", super::describe(&e)));
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
            return Outcome::Failed(format!("insert: {}", super::describe(&e)));
        }
        Outcome::of_commit(client.batch_execute("COMMIT").await)
    })
}
