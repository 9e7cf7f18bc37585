//! Direct writers: an ECS service's tasks, run the way ECS would run them. They follow the
//! service's `desiredCount` in moto, connect straight to the cluster endpoint (no
//! PgBouncer), and drain gracefully — finish the job in hand — when scaled in.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_postgres::ConnectOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;

use super::{client_loop, Outcome, SharedTally, Tally};

/// One job: an invoice and a line whose description carries the client's key.
const INSERT_INVOICE: &str =
    "INSERT INTO billing.invoices (account_id, total) VALUES ($1, 10) RETURNING id";
const INSERT_LINE: &str = "INSERT INTO billing.\"invoice lines\" (invoice_id, description, unit_price) VALUES ($1, $2, 10)";

/// ECS gives a task this long between SIGTERM and SIGKILL.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DirectWriterSpec {
    pub ecs: aws_sdk_ecs::Client,
    pub ecs_cluster: String,
    pub service: String,
    /// The emulated cluster endpoint: these tasks follow DNS like any direct client.
    pub connect: ConnectOptions,
    pub accounts: i64,
    pub job_interval: Duration,
}

/// The service's "scheduler": reconciles running tasks with `desiredCount`.
#[derive(Debug)]
pub struct DirectWriters {
    running: Arc<AtomicUsize>,
    tally: SharedTally,
    scheduler: JoinHandle<()>,
}

impl DirectWriters {
    pub fn start(spec: DirectWriterSpec) -> Self {
        let running = Arc::new(AtomicUsize::new(0));
        let tally = SharedTally::default();
        let scheduler = tokio::spawn(schedule(spec, running.clone(), tally.clone()));
        Self {
            running,
            tally,
            scheduler,
        }
    }

    /// Tasks running now (ECS's `runningCount`).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Acknowledged jobs so far.
    pub fn acknowledged(&self) -> usize {
        self.tally.lock().map(|t| t.acks.len()).unwrap_or(0)
    }

    pub fn tally(&self) -> Tally {
        let t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        Tally {
            acks: t.acks.clone(),
            failed: t.failed,
            in_doubt: t.in_doubt.clone(),
            errors: t.errors.clone(),
        }
    }
}

impl Drop for DirectWriters {
    fn drop(&mut self) {
        self.scheduler.abort();
    }
}

struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    stopping_since: Option<Instant>,
}

async fn schedule(spec: DirectWriterSpec, running: Arc<AtomicUsize>, tally: SharedTally) {
    // Aborting the scheduler drops `tasks`, and dropping a Task aborts its worker.
    let mut tasks: Vec<Task> = Vec::new();
    loop {
        let desired = match spec
            .ecs
            .describe_services()
            .cluster(&spec.ecs_cluster)
            .services(&spec.service)
            .send()
            .await
        {
            Ok(out) => out
                .services()
                .first()
                .map(|s| s.desired_count().max(0) as usize),
            Err(e) => {
                tracing::debug!(error = %e, "describe_services failed; keeping current tasks");
                None
            }
        };
        tasks.retain(|t| !t.handle.is_finished());
        for t in tasks
            .iter_mut()
            .filter(|t| t.stopping_since.is_some_and(|s| s.elapsed() > DRAIN_GRACE))
        {
            t.handle.abort(); // SIGKILL after the grace period, as ECS does
        }
        let active: Vec<usize> = (0..tasks.len())
            .filter(|&i| tasks[i].stopping_since.is_none())
            .collect();
        if let Some(desired) = desired {
            if desired > active.len() {
                for _ in active.len()..desired {
                    let (stop, stopped) = watch::channel(false);
                    let handle = tokio::spawn(client_loop(
                        spec.connect.clone(),
                        "job",
                        spec.accounts,
                        spec.job_interval,
                        tally.clone(),
                        stopped,
                        job,
                    ));
                    tasks.push(Task {
                        stop,
                        handle,
                        stopping_since: None,
                    });
                }
            } else {
                for &i in active.iter().skip(desired) {
                    let _ = tasks[i].stop.send(true); // SIGTERM: finish the job in hand
                    tasks[i].stopping_since = Some(Instant::now());
                }
            }
        }
        running.store(tasks.len(), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn job<'a>(
    client: &'a tokio_postgres::Client,
    key: &'a str,
    account: i64,
) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
    Box::pin(async move {
        if let Err(e) = client.batch_execute("BEGIN").await {
            return Outcome::Failed(format!("begin: {e}"));
        }
        let invoice: i64 = match client
            .query_typed(INSERT_INVOICE, &[(&account, Type::INT8)])
            .await
        {
            Ok(rows) => match rows.first() {
                Some(row) => row.get(0),
                None => return Outcome::Failed("insert returned no id".to_owned()),
            },
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Outcome::Failed(format!("insert invoice: {e}"));
            }
        };
        if let Err(e) = client
            .query_typed(INSERT_LINE, &[(&invoice, Type::INT8), (&key, Type::TEXT)])
            .await
        {
            let _ = client.batch_execute("ROLLBACK").await;
            return Outcome::Failed(format!("insert line: {e}"));
        }
        Outcome::of_commit(client.batch_execute("COMMIT").await)
    })
}
