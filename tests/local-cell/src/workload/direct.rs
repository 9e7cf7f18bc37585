//! Direct writers: an ECS service's tasks, run the way ECS would run them. They follow the
//! service's `desiredCount` in moto, connect straight to the cluster endpoint (no
//! PgBouncer), and drain gracefully — finish the job in hand — when scaled in. Each task
//! is registered in moto as the service's (RunTask, group `service:<name>`) before its
//! worker starts, and stopped there (StopTask) only once its worker has exited, so
//! ListTasks/DescribeTasks show what ECS would: a draining task is not STOPPED yet.

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

/// The `startedBy` of the tasks the emulated scheduler starts (ECS: `ecs-svc/<deployment>`).
const STARTED_BY: &str = "ecs-svc/local";

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
    /// The task in moto, until StopTask went through (`None` too if RunTask failed).
    arn: Option<String>,
}

async fn schedule(spec: DirectWriterSpec, running: Arc<AtomicUsize>, tally: SharedTally) {
    // Aborting the scheduler drops `tasks`, and dropping a Task aborts its worker.
    let mut tasks: Vec<Task> = Vec::new();
    loop {
        let service = match spec
            .ecs
            .describe_services()
            .cluster(&spec.ecs_cluster)
            .services(&spec.service)
            .send()
            .await
        {
            Ok(out) => out.services().first().map(|s| {
                let desired = s.desired_count().max(0) as usize;
                let definition = s.task_definition().unwrap_or(&spec.service).to_owned();
                (desired, definition)
            }),
            Err(e) => {
                tracing::debug!(error = %e, "describe_services failed; keeping current tasks");
                None
            }
        };
        // Only a worker that has exited (drained, or killed) is reported stopped, and only
        // once `running()` no longer counts it: one snapshot serves both.
        let exited: Vec<bool> = tasks.iter().map(|t| t.handle.is_finished()).collect();
        running.store(exited.iter().filter(|&&e| !e).count(), Ordering::SeqCst);
        for (t, _) in tasks.iter_mut().zip(&exited).filter(|(_, &e)| e) {
            if let Some(arn) = &t.arn {
                if stop_in_moto(&spec, arn).await {
                    t.arn = None;
                }
            }
        }
        tasks.retain(|t| !t.handle.is_finished() || t.arn.is_some());
        for t in tasks
            .iter_mut()
            .filter(|t| t.stopping_since.is_some_and(|s| s.elapsed() > DRAIN_GRACE))
        {
            t.handle.abort(); // SIGKILL after the grace period, as ECS does
        }
        let active: Vec<usize> = (0..tasks.len())
            .filter(|&i| tasks[i].stopping_since.is_none() && !tasks[i].handle.is_finished())
            .collect();
        if let Some((desired, definition)) = service {
            if desired > active.len() {
                for _ in active.len()..desired {
                    // Registered first, as ECS places a task before its process starts.
                    let arn = run_in_moto(&spec, &definition).await;
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
                        arn,
                    });
                }
            } else {
                for &i in active.iter().skip(desired) {
                    let _ = tasks[i].stop.send(true); // SIGTERM: finish the job in hand
                    tasks[i].stopping_since = Some(Instant::now());
                }
            }
        }
        running.store(
            tasks.iter().filter(|t| !t.handle.is_finished()).count(),
            Ordering::SeqCst,
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// RunTask for one of the service's tasks: its ARN, or `None` when moto refused.
async fn run_in_moto(spec: &DirectWriterSpec, definition: &str) -> Option<String> {
    let result = spec
        .ecs
        .run_task()
        .cluster(&spec.ecs_cluster)
        .task_definition(definition)
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .group(switchyard_aws::service_group(&spec.service))
        .started_by(STARTED_BY)
        .send()
        .await;
    match result {
        Ok(out) => {
            let arn = out
                .tasks()
                .first()
                .and_then(|t| t.task_arn())
                .map(str::to_owned);
            if arn.is_none() {
                tracing::debug!(service = %spec.service, "run_task started no task");
            }
            arn
        }
        Err(e) => {
            tracing::debug!(service = %spec.service, error = %e, "run_task failed; task runs unregistered");
            None
        }
    }
}

/// StopTask for a task whose worker has exited: whether moto took it (else retried).
async fn stop_in_moto(spec: &DirectWriterSpec, arn: &str) -> bool {
    let result = spec
        .ecs
        .stop_task()
        .cluster(&spec.ecs_cluster)
        .task(arn)
        .reason("Scaling activity initiated by (deployment ecs-svc/local)")
        .send()
        .await;
    if let Err(e) = &result {
        tracing::debug!(service = %spec.service, task = %arn, error = %e, "stop_task failed; retrying");
    }
    result.is_ok()
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
            return Outcome::Failed(format!("begin: {}", super::describe(&e)));
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
                return Outcome::Failed(format!("insert invoice: {}", super::describe(&e)));
            }
        };
        if let Err(e) = client
            .query_typed(INSERT_LINE, &[(&invoice, Type::INT8), (&key, Type::TEXT)])
            .await
        {
            let _ = client.batch_execute("ROLLBACK").await;
            return Outcome::Failed(format!("insert line: {}", super::describe(&e)));
        }
        Outcome::of_commit(client.batch_execute("COMMIT").await)
    })
}
