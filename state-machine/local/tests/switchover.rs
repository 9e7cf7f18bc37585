//! The checked-in switchover definition, run unchanged by the local executor on local cells
//! that the checked-in prepare definition made replicas of blue, under the ledger's load
//! through PgBouncer and with the direct writers running — and hit where production hits:
//!
//! - a crash *after* the side effect of every Task (the function does its work, its answer
//!   is lost): before the switch the run aborts and the cell is blue again, writable, the
//!   downstream streaming, green replicating, nothing lost; after it the run goes forward;
//!   a table of every injection point and its outcome is printed;
//! - a RESUME that reaches one PgBouncer instance and not the other; an abort with one
//!   instance unreachable;
//! - a second switchover on a switched cell, and the abort-direction functions invoked on
//!   it; a function invoked by hand with another run's id during a live run;
//! - a retried pause and a rename that outlasts the pause budget;
//! - a step of the freeze checks still running when its sibling fails (Step Functions lets
//!   it finish, and so does the local executor);
//! - replication stalled past the cell's lag gate.
//!
//! Cells are shared: each test drives one cell through several runs, in an order that
//! leaves it on blue until the run meant to switch it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_local_cell::{wait_keys_once, CellOptions, Install, Ledger, LocalCell};
use switchyard_local_run::{
    load, LocalFunctions, ABANDON_PREPARE, ABORT, FINALIZE, PREPARE, SWITCHOVER,
};
use switchyard_operation::Deps;
use switchyard_state_machine::{
    BoxFuture, EventType, Execution, Executor, Fault, Status, TaskFailure, TaskHandler,
};

const PAYMENTS: (&str, &str) = ("public", "payments");
const WAIT: Duration = Duration::from_secs(60);
/// What a Lambda that crashed after its side effect reports (its answer never arrives).
const CRASH: &str = "Runtime.ExitError";

async fn prepared_cell_with(adjust: impl FnOnce(&mut CellOptions)) -> (LocalCell, Deps) {
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 300;
    adjust(&mut options);
    let cell = LocalCell::start(&options).await.expect("cell");
    let deps = cell.deps().expect("deps");
    let prepare = Run::new(&cell, &deps, PREPARE, "prepare").go().await;
    assert_eq!(
        prepare.execution.status,
        Status::Succeeded,
        "prepare: {:?} {:?}",
        prepare.execution.error,
        prepare.execution.cause
    );
    (cell, deps)
}

fn cell_input(cell: &LocalCell) -> Value {
    json!({ "cell": cell.document })
}

/// A test's view of one function call: before it starts (it may hold it there) and after
/// it ends (with what it returned, even when the executor then discards that).
#[derive(Clone, Debug)]
struct Call {
    function: String,
    payload: Value,
    /// `None` before the call; its result after.
    result: Option<Result<Value, String>>,
}

impl Call {
    fn is(&self, function: &str) -> bool {
        self.function == function
    }

    /// `direction` / `mode` of the payload, when it has one.
    fn way(&self) -> Option<&str> {
        self.payload
            .get("direction")
            .or_else(|| self.payload.get("mode"))
            .and_then(Value::as_str)
    }
}

type Hook = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The functions in-process, as the executor calls them, with every call recorded and a
/// test's hook around each.
struct Observed<'a> {
    inner: LocalFunctions<'a>,
    hook: Option<Hook>,
    calls: Mutex<Vec<Call>>,
}

impl TaskHandler for Observed<'_> {
    fn invoke(
        &self,
        resource: &str,
        parameters: Value,
    ) -> BoxFuture<'_, Result<Value, TaskFailure>> {
        let resource = resource.to_owned();
        Box::pin(async move {
            let function = switchyard_local_run::function_name(
                parameters["FunctionName"].as_str().unwrap_or_default(),
            )
            .unwrap_or_default();
            let payload = parameters.get("Payload").cloned().unwrap_or(Value::Null);
            let mut call = Call {
                function,
                payload,
                result: None,
            };
            if let Some(hook) = &self.hook {
                hook(call.clone()).await;
            }
            let result = self.inner.invoke(&resource, parameters).await;
            call.result = Some(
                result
                    .clone()
                    .map_err(|f| format!("{}: {}", f.error, f.cause)),
            );
            self.calls.lock().expect("calls").push(call.clone());
            if let Some(hook) = &self.hook {
                hook(call).await;
            }
            result
        })
    }
}

/// One execution of a definition on a cell: faults, a hook, and what came of it.
struct Run<'a> {
    cell: &'a LocalCell,
    deps: &'a Deps,
    definition: &'static str,
    name: String,
    input: Value,
    faults: Vec<Fault>,
    hook: Option<Hook>,
}

struct Ran {
    execution: Execution,
    calls: Vec<Call>,
}

impl<'a> Run<'a> {
    fn new(cell: &'a LocalCell, deps: &'a Deps, definition: &'static str, name: &str) -> Self {
        Self {
            cell,
            deps,
            definition,
            name: name.to_owned(),
            input: cell_input(cell),
            faults: Vec::new(),
            hook: None,
        }
    }

    fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    fn hook<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |call| Box::pin(hook(call))));
        self
    }

    async fn go(self) -> Ran {
        let definition = load(self.definition).expect("definition");
        let handler = Observed {
            inner: LocalFunctions { deps: self.deps },
            hook: self.hook,
            calls: Mutex::new(Vec::new()),
        };
        let mut executor = Executor::new(&definition, &handler).name(&self.name);
        for fault in self.faults {
            executor = executor.fault(fault).expect("fault names a Task state");
        }
        let execution = executor.run(self.input).await;
        let dir = self.cell.run_dir.join("executions");
        std::fs::create_dir_all(&dir).expect("dir");
        execution
            .write_history(&dir.join(format!("{}.json", self.name)))
            .expect("history");
        Ran {
            execution,
            calls: handler.calls.into_inner().expect("calls"),
        }
    }
}

impl Ran {
    /// The Fail (or Succeed) state the execution ended in.
    fn end(&self) -> String {
        switchyard_local_run::report::end_state(&self.execution)
            .unwrap_or_default()
            .to_owned()
    }

    fn entered(&self, state: &str) -> bool {
        self.execution.events_of(state).next().is_some()
    }

    fn abort_path_ran(&self) -> bool {
        self.execution
            .history
            .iter()
            .any(|e| e.state.as_deref().is_some_and(|s| s.starts_with("abort: ")))
    }

    fn scheduled(&self, state: &str) -> usize {
        self.execution
            .events_of(state)
            .filter(|e| e.kind == EventType::TaskScheduled)
            .count()
    }

    fn describe(&self) -> String {
        format!(
            "{} ({:?}: {:?})",
            self.end(),
            self.execution.error,
            self.execution.cause
        )
    }
}

/// The direct writers' service is back at its count and its tasks write again.
async fn direct_writers_back(cell: &LocalCell, before: usize) {
    let started = Instant::now();
    while cell.direct_writers()[0].acknowledged() <= before {
        assert!(
            started.elapsed() < WAIT,
            "the direct writers did not write again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let service = &cell.document.direct_writers[0];
    let described = cell
        .moto
        .clients
        .ecs
        .describe_services()
        .cluster(&service.ecs_cluster)
        .services(&service.service)
        .send()
        .await
        .expect("describe");
    assert_eq!(
        described.services()[0].desired_count(),
        2,
        "the recorded count"
    );
}

/// The cell's run lock is free (every run released it, or never took it).
async fn lock_free(deps: &Deps, cell: &LocalCell) -> bool {
    deps.journal(&cell.document)
        .get::<switchyard_operation::fence::RunLock>()
        .await
        .expect("journal")
        .is_none()
}

/// After a run that did not switch: blue serves writes through PgBouncer, the lock is free,
/// the services are back, and every write acknowledged so far is on blue, on the
/// downstream and on green exactly once (so both still follow blue).
async fn assert_on_blue(cell: &LocalCell, deps: &Deps, ledger: &Ledger) {
    assert_still_serving(cell, deps, ledger, &cell.blue, ("green", &cell.green)).await;
    // Green follows blue again, so no way back may remain on it: with both directions
    // live, blue's changes would come back to blue.
    let green = cell.green.superuser_client("app").await.expect("green");
    assert_eq!(
        way_back_on_green(&green).await,
        (false, false),
        "the abort path dropped green's reverse publication and slot"
    );
}

/// After a run that did not switch: `serving` serves writes through PgBouncer, the lock is
/// free, the direct writers write again, and every write acknowledged so far is on
/// `serving`, on the downstream and on the follower exactly once.
async fn assert_still_serving(
    cell: &LocalCell,
    deps: &Deps,
    ledger: &Ledger,
    serving: &switchyard_local_cell::PgServer,
    (follower_name, follower): (&str, &switchyard_local_cell::PgServer),
) {
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        serving.version_num,
        "PgBouncer resumed, on {}",
        serving.name
    );
    more_writes(ledger, 10, &format!("on {} again", serving.name)).await;
    assert!(lock_free(deps, cell).await, "the run released the lock");
    let direct_before = cell.direct_writers()[0].acknowledged();
    direct_writers_back(cell, direct_before).await;
    let keys = ledger.keys();
    for (what, opts) in [
        (serving.name.as_str(), serving.superuser_options("app")),
        ("downstream", cell.search.superuser_options("search")),
        (follower_name, follower.superuser_options("app")),
    ] {
        wait_keys_once(&opts, PAYMENTS, "memo", &keys, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Whether green has the reverse publication, and the reverse slot.
async fn way_back_on_green(green: &tokio_postgres::Client) -> (bool, bool) {
    let row = green
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = 'switchyard_reverse'),
                    EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'switchyard_reverse')",
            &[],
        )
        .await
        .expect("reading the way back on green");
    (row.get(0), row.get(1))
}

/// A switched cell: on green, every acknowledged write there once, no client transaction
/// failed across every run on this cell, the downstream equal to green.
async fn assert_switched(cell: &LocalCell, ledger: Ledger, ran: &Ran) {
    assert_eq!(
        ran.execution.status,
        Status::Succeeded,
        "{}",
        ran.describe()
    );
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.green.version_num
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = ledger.stop().await;
    assert_eq!(
        (tally.failed, tally.in_doubt.len()),
        (0, 0),
        "no client transaction failed: {:?}\n{}",
        tally.errors,
        cell.pgbouncer_troubles(30)
    );
    wait_keys_once(
        &cell.green.superuser_options("app"),
        PAYMENTS,
        "memo",
        &tally.keys(),
        WAIT,
    )
    .await
    .expect("every acknowledged write on green once");
    let jobs = cell.direct_writers()[0].tally();
    wait_keys_once(
        &cell.green.superuser_options("app"),
        ("billing", "invoice lines"),
        "description",
        &jobs.keys(),
        WAIT,
    )
    .await
    .expect("every direct-writer job on green once");
    cell.downstream_converges(&cell.green, WAIT)
        .await
        .expect("downstream equals green");
    // The way back: the old blue follows green, so every write acknowledged on either side
    // of the switch is on it once too.
    wait_keys_once(
        &cell.blue.superuser_options("app"),
        PAYMENTS,
        "memo",
        &tally.keys(),
        WAIT,
    )
    .await
    .expect("every acknowledged write on the old blue once");
    wait_keys_once(
        &cell.blue.superuser_options("app"),
        ("billing", "invoice lines"),
        "description",
        &jobs.keys(),
        WAIT,
    )
    .await
    .expect("every direct-writer job on the old blue once");
    // The old blue stays fenced: an application role that reaches it directly (a stale
    // DNS answer, a hard-coded address) can log in and read, never write.
    let (user, password) = cell.secrets.role("app_writer").expect("app_writer");
    let old_blue = switchyard_postgres::connect(&cell.blue.options("app", user, password))
        .await
        .expect("app_writer logs in to the old blue");
    let refused = old_blue
        .batch_execute("DELETE FROM public.payments WHERE false")
        .await
        .expect_err("no write on the old blue after the switch");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused}"
    );
}

/// One function invoked by hand as run `run_id` (a read-only one takes no run), retried while it answers a not-yet error
/// (as the state machine's Retry would), failing the test on anything else.
async fn by_hand(
    deps: &Deps,
    cell: &LocalCell,
    function: &str,
    run_id: &str,
    extra: Value,
) -> Value {
    let started = Instant::now();
    loop {
        let mut payload = switchyard_local_run::payload(&cell.document, extra.clone());
        if !switchyard_local_run::is_read_only(function) {
            payload["run_id"] = json!(run_id);
        }
        match switchyard_local_run::invoke(function, payload, deps).await {
            Ok(out) => return out,
            Err(e)
                if switchyard_errors::Catalogued::error_name(&e).retry()
                    == switchyard_errors::Retry::NotYet
                    && started.elapsed() < WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{function} as {run_id}: {e}"),
        }
    }
}

/// Each injection point and what came of it, printed as a table at the end of a test.
#[derive(Default)]
struct Outcomes(Vec<(String, String, String)>);

impl Outcomes {
    fn record(&mut self, point: &str, fault: &str, outcome: &str) {
        self.0
            .push((point.to_owned(), fault.to_owned(), outcome.to_owned()));
    }

    fn print(&self, title: &str) {
        let width = self.0.iter().map(|(p, _, _)| p.len()).max().unwrap_or(0);
        let fault_width = self.0.iter().map(|(_, f, _)| f.len()).max().unwrap_or(0);
        println!("\n{title}");
        println!(
            "  {:width$}  {:fault_width$}  outcome",
            "injection point", "fault"
        );
        for (point, fault, outcome) in &self.0 {
            println!("  {point:width$}  {fault:fault_width$}  {outcome}");
        }
    }
}

/// Every Task of the forward path up to the switch, crashed after its side effect: each
/// run ends `not started` or `aborted` with the cell on blue and nothing lost; then a clean
/// run switches, and the switched cell refuses a second switchover and every
/// abort-direction function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_each_forward_step_converges_and_a_switched_cell_stays_switched() {
    let (cell, deps) = prepared_cell_with(|_| {}).await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut outcomes = Outcomes::default();
    let points = [
        ("acquire-lock", "not started"),
        ("preflight", "not started"),
        ("scale-services down", "aborted"),
        ("pause-pgbouncer", "aborted"),
        ("revoke-writes", "aborted"),
        ("drop-downstream-subscriptions", "aborted"),
        ("check-slot-lag", "aborted"),
        ("verify-data", "aborted"),
        ("sync-sequences", "aborted"),
        ("finalize-replication disable", "aborted"),
        ("rename-clusters forward", "aborted"),
        ("refresh-nlb-target", "aborted"),
        ("recreate-downstream-subscriptions", "aborted"),
    ];
    for (i, (state, expected)) in points.into_iter().enumerate() {
        let ran = Run::new(&cell, &deps, SWITCHOVER, &format!("crash-{i}"))
            .fault(Fault::crash_after(
                state,
                1,
                CRASH,
                "crashed after its side effect",
            ))
            .go()
            .await;
        assert_eq!(ran.end(), expected, "{state}: {}", ran.describe());
        assert_eq!(ran.execution.error.as_deref(), Some(CRASH), "{state}");
        assert_on_blue(&cell, &deps, &ledger).await;
        outcomes.record(
            state,
            "crash after side effect",
            &format!("{expected}; on blue, writable, nothing lost"),
        );
    }

    // A run stopped by hand in its window, after its rename (its execution gone, its
    // lock held): the abort machine, acting as that run, returns the cell to blue.
    let stopped = "stopped-run";
    for (function, extra) in [
        ("acquire-lock", json!({})),
        ("scale-services", json!({ "direction": "down" })),
        ("pause-pgbouncer", json!({})),
        ("revoke-writes", json!({})),
        ("drop-downstream-subscriptions", json!({})),
        ("check-slot-lag", json!({})),
        ("sync-sequences", json!({})),
        ("verify-data", json!({ "mode": "quick" })),
        ("finalize-replication", json!({ "mode": "disable" })),
        ("rename-clusters", json!({ "mode": "forward" })),
    ] {
        by_hand(&deps, &cell, function, stopped, extra).await;
    }
    let aborted = Run::new(&cell, &deps, ABORT, "abort-by-hand")
        .input(json!({ "cell": cell.document, "run_id": stopped }))
        .go()
        .await;
    assert_eq!(aborted.end(), "aborted", "{}", aborted.describe());
    assert_on_blue(&cell, &deps, &ledger).await;
    outcomes.record(
        "run stopped after rename-clusters forward",
        "switchyard abort",
        "aborted; on blue, writable, nothing lost",
    );

    let switched = Run::new(&cell, &deps, SWITCHOVER, "switch").go().await;
    assert_eq!(switched.end(), "switched", "{}", switched.describe());
    outcomes.record("(none)", "-", "switched");
    let identifiers = cell.cluster_identifiers().await.expect("clusters");

    // A second switchover on the switched cell changes nothing.
    let again = Run::new(&cell, &deps, SWITCHOVER, "switch-again")
        .go()
        .await;
    assert_eq!(again.end(), "not started", "{}", again.describe());
    assert_eq!(again.execution.error.as_deref(), Some("AlreadySwitched"));
    assert!(!again.abort_path_ran());
    assert_eq!(
        again.calls.len(),
        2,
        "acquire-lock, then its release (if ours)"
    );
    outcomes.record("second switchover", "-", "not started (AlreadySwitched)");

    // The abort-direction functions, by hand, with the lock: refused, nothing changed.
    cell.lock("by-hand").await.expect("lock");
    let green = cell.green.superuser_client("app").await.expect("green");
    let subscriptions = || async {
        green
            .query_one("SELECT count(*) FROM pg_subscription", &[])
            .await
            .expect("count")
            .get::<_, i64>(0)
    };
    let before = subscriptions().await;
    for (function, extra) in [
        ("rename-clusters", json!({ "mode": "back" })),
        ("restore-writes", json!({})),
        ("finalize-replication", json!({ "mode": "enable" })),
        ("refresh-nlb-target", json!({ "direction": "abort" })),
        ("resume-pgbouncer", json!({ "direction": "abort" })),
        // Past the switch blue's slots and guard belong to the rollback, not to a prepare.
        ("abandon-prepare", json!({})),
    ] {
        let mut payload = switchyard_local_run::payload(&cell.document, extra);
        payload["run_id"] = json!("by-hand");
        let error = switchyard_local_run::invoke(function, payload, &deps)
            .await
            .expect_err("switched");
        assert_eq!(
            switchyard_errors::Catalogued::error_name(&error),
            switchyard_errors::ErrorName::AlreadySwitched,
            "{function}: {error}"
        );
        outcomes.record(
            &format!("{function} (abort direction) by hand"),
            "-",
            "AlreadySwitched, nothing changed",
        );
    }
    // The abort machine on the switched cell: refused at its first step, nothing changed.
    let refused = Run::new(&cell, &deps, ABORT, "abort-switched")
        .input(json!({ "cell": cell.document, "run_id": "by-hand" }))
        .go()
        .await;
    assert_eq!(refused.end(), "refused: switched", "{}", refused.describe());
    assert_eq!(refused.execution.error.as_deref(), Some("AlreadySwitched"));
    assert_eq!(
        refused.calls.len(),
        1,
        "only its first step ran, and refused"
    );
    outcomes.record(
        "switchyard abort",
        "-",
        "refused: switched (AlreadySwitched), nothing changed",
    );
    assert_eq!(
        cell.cluster_identifiers().await.expect("clusters"),
        identifiers
    );
    assert_eq!(subscriptions().await, before);
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.green.version_num,
        "still on green"
    );
    outcomes.print("crash after the side effect of each forward step (14 → green)");
    assert_switched(&cell, ledger, &switched).await;
    cell.shutdown();
}

/// Every Task of the abort path crashed after its side effect (the run failing first at
/// recreate-downstream-subscriptions, so every abort step has work to do): each is retried
/// and the run ends `aborted`. Then a crash after resume-pgbouncer — the switched marker
/// and the RESUMEs done — and after every step past it: the abort path refuses
/// (AlreadySwitched), the run goes forward and ends switched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_each_abort_step_or_after_the_switch_converges() {
    let (cell, deps) = prepared_cell_with(|_| {}).await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut outcomes = Outcomes::default();
    let steps = [
        "abort: rename-clusters back",
        "abort: finalize-replication enable",
        "abort: restore-writes",
        "abort: refresh-nlb-target",
        "abort: recreate-downstream-subscriptions",
        "abort: resume-pgbouncer",
        "abort: scale-services up",
        "abort: release-lock",
    ];
    for (i, state) in steps.into_iter().enumerate() {
        let ran = Run::new(&cell, &deps, SWITCHOVER, &format!("abort-crash-{i}"))
            .fault(Fault::error(
                "recreate-downstream-subscriptions",
                1,
                "PreconditionFailed",
                "injected by the test",
            ))
            .fault(Fault::crash_after(
                state,
                1,
                CRASH,
                "crashed after its side effect",
            ))
            .go()
            .await;
        assert_eq!(ran.end(), "aborted", "{state}: {}", ran.describe());
        assert_eq!(ran.scheduled(state), 2, "{state}: retried once");
        assert_on_blue(&cell, &deps, &ledger).await;
        outcomes.record(
            state,
            "crash after side effect",
            "retried; aborted, on blue, nothing lost",
        );
    }

    let after_switch = [
        "resume-pgbouncer",
        "scale-services up",
        "finalize-replication drop",
        "finalize-replication reverse",
        "release-lock",
    ];
    let mut run = Run::new(&cell, &deps, SWITCHOVER, "switch-crashes");
    for state in after_switch {
        run = run.fault(Fault::crash_after(
            state,
            1,
            CRASH,
            "crashed after its side effect",
        ));
    }
    let ran = run.go().await;
    assert_eq!(ran.end(), "switched", "{}", ran.describe());
    assert!(
        ran.entered("switched: resume-pgbouncer"),
        "resume-pgbouncer's lost answer went forward"
    );
    // The abort path was entered once, and its first step refused: nothing routed back.
    let abort_states: Vec<&str> = ran
        .execution
        .history
        .iter()
        .filter(|e| e.kind == EventType::TaskScheduled)
        .filter_map(|e| e.state.as_deref())
        .filter(|s| s.starts_with("abort: "))
        .collect();
    assert_eq!(abort_states, ["abort: rename-clusters back"]);
    let refused = ran
        .calls
        .iter()
        .find(|c| c.is("rename-clusters") && c.way() == Some("back"))
        .and_then(|c| c.result.clone())
        .expect("rename back was called");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("AlreadySwitched")),
        "{refused:?}"
    );
    for state in &after_switch[1..] {
        assert_eq!(ran.scheduled(state), 2, "{state}: retried once");
    }
    outcomes.record(
        "resume-pgbouncer",
        "crash after side effect",
        "abort refused (AlreadySwitched) → forward → switched",
    );
    for state in &after_switch[1..] {
        outcomes.record(state, "crash after side effect", "retried → switched");
    }
    outcomes.print("crash after the side effect of each abort step, and past the switch");
    assert!(lock_free(&deps, &cell).await);
    assert_switched(&cell, ledger, &ran).await;
    cell.shutdown();
}

/// Two PgBouncer instances. First the abort path with the second unreachable: the first
/// goes back to blue at once, the second when it returns. Then a RESUME toward green that
/// reaches the first and not the second: the writes already on green are kept, the run
/// never aborts, and it ends switched once the second comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_resume_never_aborts_and_an_unreachable_instance_holds_only_itself() {
    let (cell, deps) = prepared_cell_with(|o| o.pgbouncer_instances = 2).await;
    let cell = Arc::new(cell);
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The abort path with instance 2 unreachable.
    let seen: Arc<Mutex<Option<(bool, bool)>>> = Arc::default();
    let hook_cell = cell.clone();
    let hook_seen = seen.clone();
    let ran = Run::new(&cell, &deps, SWITCHOVER, "abort-one-down")
        .fault(Fault::error(
            "recreate-downstream-subscriptions",
            1,
            "PreconditionFailed",
            "injected by the test",
        ))
        .hook(move |call| {
            let cell = hook_cell.clone();
            let seen = hook_seen.clone();
            async move {
                if !(call.is("resume-pgbouncer") && call.way() == Some("abort")) {
                    return;
                }
                let link = cell.pgbouncer_link(2).expect("link");
                match &call.result {
                    None if seen.lock().expect("seen").is_none() => link.set_down(true),
                    Some(Err(_)) if seen.lock().expect("seen").is_none() => {
                        let one = paused_of(&cell, 1).await;
                        let two = paused_of(&cell, 2).await;
                        *seen.lock().expect("seen") = Some((one, two));
                        link.set_down(false);
                    }
                    _ => {}
                }
            }
        })
        .go()
        .await;
    assert_eq!(ran.end(), "aborted", "{}", ran.describe());
    assert_eq!(
        *seen.lock().expect("seen"),
        Some((false, true)),
        "while instance 2 was unreachable, instance 1 was already resumed and 2 stayed paused"
    );
    assert!(
        !paused_of(&cell, 1).await && !paused_of(&cell, 2).await,
        "both resumed in the end"
    );
    assert_on_blue(&cell, &deps, &ledger).await;

    // RESUME toward green reaches instance 1, not instance 2.
    let during: Arc<Mutex<Option<(bool, bool, i32)>>> = Arc::default();
    let hook_cell = cell.clone();
    let hook_during = during.clone();
    let ran = Run::new(&cell, &deps, SWITCHOVER, "partial-resume")
        .hook(move |call| {
            let cell = hook_cell.clone();
            let during = hook_during.clone();
            async move {
                if !(call.is("resume-pgbouncer") && call.way() == Some("forward")) {
                    return;
                }
                let link = cell.pgbouncer_link(2).expect("link");
                match &call.result {
                    None if during.lock().expect("during").is_none() => link.drop_resume(true),
                    Some(Err(_)) if during.lock().expect("during").is_none() => {
                        let one = paused_of(&cell, 1).await;
                        let two = paused_of(&cell, 2).await;
                        let version = cell.version_through_pgbouncer().await.expect("version");
                        *during.lock().expect("during") = Some((one, two, version));
                        // Instance 2 comes back only after 35 s: longer than a transient
                        // error's retries last, so a run that could still abort would.
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(35)).await;
                            if let Ok(link) = cell.pgbouncer_link(2) {
                                link.drop_resume(false);
                            }
                        });
                    }
                    _ => {}
                }
            }
        })
        .go()
        .await;
    assert_eq!(
        *during.lock().expect("during"),
        Some((false, true, cell.green.version_num)),
        "instance 1 resumed and wrote to green while instance 2 stayed paused"
    );
    assert!(
        !ran.abort_path_ran(),
        "never the abort path: {}",
        ran.describe()
    );
    assert!(ran.entered("switched: resume-pgbouncer"));
    assert!(
        !paused_of(&cell, 1).await && !paused_of(&cell, 2).await,
        "both resumed in the end"
    );
    let cell = Arc::into_inner(cell).expect("the only owner");
    assert_switched(&cell, ledger, &ran).await;
    cell.shutdown();
}

async fn paused_of(cell: &LocalCell, n: usize) -> bool {
    cell.pgbouncer_admin_of(n)
        .await
        .expect("admin")
        .show_databases()
        .await
        .expect("show databases")
        .into_iter()
        .find(|r| r.name == "app")
        .expect("app")
        .paused
}

/// A pause retried after its answer was lost keeps the first deadline; a function invoked
/// by hand with another run's id during the run is refused; the rename cannot finish (the
/// cell's name does not lead to green) and is stopped at the deadline; the abort path then
/// runs within its own budget, and no client waited long enough to fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pause_budget_is_a_deadline_and_one_run_owns_the_cell() {
    let (cell, deps) = prepared_cell_with(|_| {}).await;
    let cell = Arc::new(cell);
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut input = cell_input(&cell);
    // Short enough that the stuck rename meets it; the steps before it take ~2 s.
    input["cell"]["budgets"]["pause_seconds"] = json!(12);
    input["cell"]["budgets"]["lag_gate_seconds"] = json!(6);

    let intruder: Arc<Mutex<Option<String>>> = Arc::default();
    let hook_cell = cell.clone();
    let hook_deps = deps.clone();
    let hook_intruder = intruder.clone();
    let ran = Run::new(&cell, &deps, SWITCHOVER, "deadline")
        .input(input)
        // The first pause's answer is lost after it paused and journaled its window.
        .fault(Fault::crash_after(
            "pause-pgbouncer",
            1,
            "Lambda.ServiceException",
            "the answer was lost",
        ))
        .hook(move |call| {
            let cell = hook_cell.clone();
            let deps = hook_deps.clone();
            let intruder = hook_intruder.clone();
            async move {
                let names = cell.names();
                let name = &cell.document.blue.cluster_identifier;
                match (call.function.as_str(), call.way(), &call.result) {
                    // Someone runs restore-writes by hand, as another run, mid-window.
                    ("revoke-writes", _, Some(Ok(_))) => {
                        let mut payload = switchyard_local_run::payload(&cell.document, json!({}));
                        payload["run_id"] = json!("someone-else");
                        let refused =
                            switchyard_local_run::invoke("restore-writes", payload, &deps)
                                .await
                                .map(|_| "restored".to_owned())
                                .unwrap_or_else(|e| {
                                    switchyard_errors::Catalogued::error_name(&e).to_string()
                                });
                        let still_fenced = !can_write_on_blue(&cell).await;
                        *intruder.lock().expect("intruder") =
                            Some(format!("{refused}, fenced: {still_fenced}"));
                    }
                    // The rename never reaches DNS in time; on the way back it does.
                    ("rename-clusters", Some("forward"), None) => names.hold(name),
                    ("rename-clusters", Some("back"), None) => names.release(name),
                    _ => {}
                }
            }
        })
        .go()
        .await;
    assert_eq!(
        intruder.lock().expect("intruder").as_deref(),
        Some("LockHeld, fenced: true"),
        "the hand-run restore-writes was refused and changed nothing"
    );
    assert_eq!(ran.end(), "aborted", "{}", ran.describe());
    assert_eq!(ran.execution.error.as_deref(), Some("PauseBudgetExceeded"));
    let deadlines: Vec<Value> = ran
        .calls
        .iter()
        .filter(|c| c.is("pause-pgbouncer"))
        .filter_map(|c| {
            c.result
                .as_ref()?
                .as_ref()
                .ok()?
                .get("pause_deadline")
                .cloned()
        })
        .collect();
    assert_eq!(
        deadlines.len(),
        2,
        "both pauses answered (the first answer lost)"
    );
    assert_eq!(
        deadlines[0], deadlines[1],
        "the retry kept the first deadline"
    );
    let renames = ran.scheduled("rename-clusters forward");
    assert_eq!(renames, 1, "stopped at the deadline, not retried past it");

    // From the rename's failure to the end of the run: within the abort budget.
    let failed_at = event_time(
        &ran.execution,
        "rename-clusters forward",
        EventType::TaskFailed,
    );
    let ended_at = ran
        .execution
        .history
        .last()
        .map(|e| stamp(&e.timestamp))
        .expect("end");
    let abort = ended_at - failed_at;
    let budget = switchyard_cell::Budgets::default().abort_seconds;
    assert!(
        abort < time::Duration::seconds(i64::try_from(budget).expect("budget")),
        "the abort path took {abort}, over its {budget} s budget"
    );
    assert_on_blue(&cell, &deps, &ledger).await;
    let cell = Arc::into_inner(cell).expect("the only owner");
    let tally = ledger.stop().await;
    assert_eq!(
        tally.failed,
        0,
        "no client waited past query_wait_timeout: {:?}\n{}",
        tally.errors,
        cell.pgbouncer_troubles(30)
    );
    cell.shutdown();
}

/// Whether `app_writer` may insert into payments on blue (the fence revokes it).
async fn can_write_on_blue(cell: &LocalCell) -> bool {
    let admin = cell.blue.superuser_client("app").await.expect("blue");
    admin
        .query_one(
            "SELECT has_table_privilege('app_writer', 'public.payments', 'INSERT')",
            &[],
        )
        .await
        .expect("privilege")
        .get(0)
}

fn stamp(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("timestamp")
}

fn event_time(execution: &Execution, state: &str, kind: EventType) -> time::OffsetDateTime {
    execution
        .events_of(state)
        .filter(|e| e.kind == kind)
        .map(|e| stamp(&e.timestamp))
        .last()
        .unwrap_or_else(|| panic!("{state}: no {kind}"))
}

/// Replication stalled: the lag gate stops at the cell's own budget (`LagGateExceeded`) and
/// the run aborts cleanly. Then the freeze checks' race: verify-data fails while
/// drop-downstream-subscriptions is still running (held until the abort path's recreate
/// would have run): the Parallel waits for it, the abort path recreates the subscription
/// on blue, and nothing drops it after. The downstream keeps every row, and the next run
/// switches with the downstream equal to green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gate_and_a_drop_racing_the_abort_path_lose_nothing() {
    let (cell, deps) = prepared_cell_with(|_| {}).await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");

    // Stalled after preflight (which refuses a disabled subscription): only the lag gate
    // can see it.
    let green_options = cell.green.superuser_options("app");
    let mut input = cell_input(&cell);
    input["cell"]["budgets"]["lag_gate_seconds"] = json!(5);
    let stalled = Run::new(&cell, &deps, SWITCHOVER, "stalled")
        .input(input)
        .hook(move |call| {
            let green_options = green_options.clone();
            async move {
                if call.is("preflight") && matches!(call.result, Some(Ok(_))) {
                    let green = switchyard_postgres::connect(&green_options)
                        .await
                        .expect("green");
                    green
                        .batch_execute("ALTER SUBSCRIPTION switchyard_payments DISABLE")
                        .await
                        .expect("disable");
                }
            }
        })
        .go()
        .await;
    assert_eq!(stalled.end(), "aborted", "{}", stalled.describe());
    assert_eq!(stalled.execution.error.as_deref(), Some("LagGateExceeded"));
    // The abort path re-enabled green's subscriptions: green catches up and follows blue.
    assert_on_blue(&cell, &deps, &ledger).await;

    // The race, widened: the drop waits until the abort path's recreate has run (or 5 s).
    let recreated = Arc::new(tokio::sync::Notify::new());
    let hook_recreated = recreated.clone();
    let raced = Run::new(&cell, &deps, SWITCHOVER, "race")
        .fault(Fault::error(
            "verify-data",
            1,
            "DataMismatch",
            "injected by the test",
        ))
        .hook(move |call| {
            let recreated = hook_recreated.clone();
            async move {
                match (call.function.as_str(), call.way(), &call.result) {
                    ("drop-downstream-subscriptions", _, None) => {
                        let _ = tokio::time::timeout(Duration::from_secs(5), recreated.notified())
                            .await;
                    }
                    ("recreate-downstream-subscriptions", Some("abort"), Some(_)) => {
                        recreated.notify_one();
                    }
                    _ => {}
                }
            }
        })
        .go()
        .await;
    assert_eq!(raced.end(), "aborted", "{}", raced.describe());
    assert_eq!(raced.execution.error.as_deref(), Some("DataMismatch"));
    let search = cell
        .search
        .superuser_client("search")
        .await
        .expect("search");
    let subscribed: i64 = search
        .query_one(
            "SELECT count(*) FROM pg_subscription WHERE subname = 'search_sub' AND subenabled",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(subscribed, 1, "the downstream is subscribed (to blue)");
    assert_on_blue(&cell, &deps, &ledger).await;

    // Before the switch there is no rollback window: finalize changes nothing.
    let early = Run::new(&cell, &deps, FINALIZE, "finalize-early")
        .go()
        .await;
    assert_eq!(early.end(), "not started", "{}", early.describe());
    assert_eq!(early.execution.error.as_deref(), Some("PreconditionFailed"));
    assert_eq!(
        early.calls.len(),
        2,
        "acquire-lock, then its release (if ours)"
    );

    // An aborted run reports no way back: its abort path removed what disable made.
    let report = |ran: &Ran| {
        switchyard_local_run::report::Report::of_executions(None, Some((&ran.execution, "h.json")))
    };
    assert_eq!(report(&raced).way_back, None);

    let ran = Run::new(&cell, &deps, SWITCHOVER, "switch").go().await;
    assert_switched(&cell, ledger, &ran).await;
    // The report says what the way back cost the window and what green keeps for it.
    let switched = report(&ran);
    let way_back = switched
        .way_back
        .clone()
        .expect("the switch made a way back");
    assert!(way_back.following, "{way_back:?}");
    assert!(way_back.made_in_window_ms.is_some(), "{way_back:?}");
    assert_eq!(
        way_back
            .databases
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        ["app"]
    );
    assert!(
        way_back.databases[0].retained_bytes.is_some(),
        "{way_back:?}"
    );
    assert!(
        switched
            .summary()
            .contains("way back    the old blue follows green (WAL green kept for it: app "),
        "{}",
        switched.summary()
    );
    finalize_closes_the_rollback_window(&cell, &deps).await;
    cell.shutdown();
}

/// The rollback window watched by `check-drift` on a switched cell: clean while the old
/// blue follows; `ROLLBACK_NOT_STREAMING` once its subscription stops;
/// `ROLLBACK_SLOT_RETAINS` past a 1-byte budget; clean again once finalize-replication
/// (reverse) is run again by hand; `ROLLBACK_DDL` for a comment made on green, until its
/// journal row is acknowledged. Then `finalize` crashed after close-rollback-window's
/// side effect, then run again: the old blue follows green no more, neither cluster keeps a
/// slot, publication, subscription, event trigger or role of ours (the old blue keeps its
/// `switchyard` tables as evidence), the old blue has a final snapshot, green still serves
/// writes, and `check-drift` says the window is closed (a warning).
async fn finalize_closes_the_rollback_window(cell: &LocalCell, deps: &Deps) {
    let watch = |budget: Option<u64>| async move {
        let mut input = cell_input(cell);
        if let Some(budget) = budget {
            input["cell"]["budgets"]["rollback_wal_bytes"] = json!(budget);
        }
        let out = switchyard_local_run::invoke("check-drift", input, deps)
            .await
            .expect("check-drift runs");
        let codes = |kind: &str| -> Vec<String> {
            out[kind]
                .as_array()
                .expect("findings")
                .iter()
                .map(|b| b["code"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        (
            codes("blockers"),
            codes("warnings"),
            out["rollback_slots"].clone(),
        )
    };
    let (blockers, warnings, slots) = watch(None).await;
    assert_eq!((blockers, warnings), (Vec::new(), Vec::new()), "{slots}");
    assert_eq!(slots[0]["database"], "app");
    assert_eq!(slots[0]["active"], true, "{slots}");
    assert!(slots[0]["retained_bytes"].as_i64().is_some(), "{slots}");

    let old_blue = cell.blue.superuser_client("app").await.expect("old blue");
    old_blue
        .batch_execute("ALTER SUBSCRIPTION switchyard_reverse DISABLE")
        .await
        .expect("the old blue stops following");
    let started = Instant::now();
    loop {
        let (blockers, _, slots) = watch(Some(1)).await;
        if blockers == ["ROLLBACK_NOT_STREAMING", "ROLLBACK_SLOT_RETAINS"] {
            break;
        }
        assert!(started.elapsed() < WAIT, "{blockers:?} {slots}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut payload = switchyard_local_run::payload(&cell.document, json!({ "mode": "reverse" }));
    payload["run_id"] = json!("by-hand");
    payload["force"] = json!(true);
    let again = switchyard_local_run::invoke("finalize-replication", payload, deps)
        .await
        .expect("finalize-replication reverse again");
    assert_eq!(
        again["databases"][0]["reverse"]["subscription_changed"], true,
        "{again}"
    );
    let (blockers, _, _) = watch(None).await;
    assert_eq!(blockers, Vec::<String>::new(), "following again");

    // DDL on green in the window is named (the switch's own, the subscriptions dropped and
    // the way back made, was not), and acknowledged by deleting its journal rows.
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .batch_execute("COMMENT ON TABLE public.payments IS 'changed on green'")
        .await
        .expect("DDL on green");
    let (blockers, _, _) = watch(None).await;
    assert_eq!(blockers, ["ROLLBACK_DDL"], "DDL on green is named");
    green
        .batch_execute("DELETE FROM switchyard.ddl_journal")
        .await
        .expect("acknowledged");
    let (blockers, _, _) = watch(None).await;
    assert_eq!(blockers, Vec::<String>::new(), "acknowledged");

    let role = cell.document.replication.role.clone();
    let old_blue = cell.blue.superuser_client("app").await.expect("old blue");
    let ours = |objects: Vec<String>| -> Vec<String> {
        objects
            .into_iter()
            .filter(|o| o.contains("switchyard") || *o == format!("role {role}"))
            .collect()
    };
    // What the switch left: the way back, and the replication role on both.
    assert!(
        ours(replication_objects(&green, &role).await)
            .contains(&"slot switchyard_reverse".to_owned()),
        "{:?}",
        replication_objects(&green, &role).await
    );
    assert!(ours(replication_objects(&old_blue, &role).await)
        .contains(&"subscription switchyard_reverse".to_owned()));

    // The old cluster cannot be deleted while the window is open: no final snapshot yet.
    let old_identifier = format!(
        "{}-blue-{}",
        cell.document.blue.cluster_identifier, cell.blue.major
    );
    let delete = |identifier: &str, dry_run: bool| {
        let mut payload = switchyard_local_run::payload(
            &cell.document,
            json!({ "old_blue_identifier": identifier, "dry_run": dry_run }),
        );
        payload["run_id"] = json!("by-hand");
        payload["force"] = json!(true);
        switchyard_local_run::invoke("delete-old-cluster", payload, deps)
    };
    let refused = delete(&old_identifier, false)
        .await
        .expect_err("no final snapshot yet");
    assert_eq!(
        switchyard_errors::Catalogued::error_name(&refused),
        switchyard_errors::ErrorName::PreconditionFailed,
        "{refused}"
    );
    assert!(
        refused.to_string().contains("-final is missing"),
        "{refused}"
    );

    let crashed = Run::new(cell, deps, FINALIZE, "finalize-crash")
        .fault(Fault::crash_after(
            "close-rollback-window",
            1,
            CRASH,
            "crashed after its side effect",
        ))
        .go()
        .await;
    assert_eq!(crashed.end(), "finalize failed", "{}", crashed.describe());
    assert!(
        lock_free(deps, cell).await,
        "the failed run gave the lock back"
    );
    let done = Run::new(cell, deps, FINALIZE, "finalize").go().await;
    assert_eq!(done.end(), "finalized", "{}", done.describe());
    assert!(lock_free(deps, cell).await);

    assert_eq!(
        ours(replication_objects(&green, &role).await),
        Vec::<String>::new()
    );
    let evidence = |o: &String| {
        o.starts_with("schema switchyard")
            || o.starts_with("relation switchyard.")
            || o.starts_with("function switchyard.")
    };
    assert_eq!(
        ours(replication_objects(&old_blue, &role).await)
            .into_iter()
            .filter(|o| !evidence(o))
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "no replication object of ours on the old blue"
    );
    let snapshots = cell
        .moto
        .clients
        .rds
        .describe_db_cluster_snapshots()
        .db_cluster_identifier(format!(
            "{}-blue-{}",
            cell.document.blue.cluster_identifier, cell.blue.major
        ))
        .snapshot_type("manual")
        .send()
        .await
        .expect("snapshots");
    let names: Vec<String> = snapshots
        .db_cluster_snapshots()
        .iter()
        .filter_map(|s| s.db_cluster_snapshot_identifier())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        names,
        [format!(
            "{}-blue-{}-final",
            cell.document.blue.cluster_identifier, cell.blue.major
        )],
        "one final snapshot of the old blue, the crashed run's found again by the next"
    );
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.green.version_num,
        "still on green"
    );
    let writes_on_green = green
        .execute(
            "INSERT INTO public.payments (account_id, amount, memo) SELECT min(id), 1, 'after finalize' FROM public.accounts",
            &[],
        )
        .await
        .expect("green takes writes");
    assert_eq!(writes_on_green, 1);
    let (blockers, warnings, slots) = watch(None).await;
    assert_eq!(
        (blockers, warnings),
        (Vec::new(), vec!["ROLLBACK_WINDOW_CLOSED".to_owned()]),
        "{slots}"
    );
    deletes_only_the_old_cluster(cell, &old_identifier, delete).await;
}

/// `delete-old-cluster` after finalize: refuses, with nothing changed, any cluster but the
/// parked old blue, the old blue while its instance keeps blue's name, and while deletion
/// protection is on; then deletes its instance and itself, and a second call (an answer
/// lost) finds it gone.
async fn deletes_only_the_old_cluster<F, Fut>(cell: &LocalCell, old_identifier: &str, delete: F)
where
    F: Fn(&str, bool) -> Fut,
    Fut: Future<Output = Result<Value, switchyard_operation::Error>>,
{
    let rds = &cell.moto.clients.rds;
    let clusters = || async {
        let mut ids: Vec<String> = rds
            .describe_db_clusters()
            .send()
            .await
            .expect("clusters")
            .db_clusters()
            .iter()
            .filter_map(|c| c.db_cluster_identifier())
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    };
    let before = clusters().await;
    assert!(before.contains(&old_identifier.to_owned()), "{before:?}");
    let name = |e: &switchyard_operation::Error| switchyard_errors::Catalogued::error_name(e);
    for other in [
        cell.document.blue.cluster_identifier.clone(),
        cell.document.green.cluster_identifier.clone(),
        format!(
            "{}-blue-{}",
            cell.document.blue.cluster_identifier, cell.green.major
        ),
    ] {
        let refused = delete(&other, false).await.expect_err("not the old blue");
        assert_eq!(
            name(&refused),
            switchyard_errors::ErrorName::InvalidInput,
            "{other}: {refused}"
        );
    }
    // moto matches a cluster's members by its current name, so the renamed old blue has
    // none there; AWS keeps them, under the names they had: the old blue gets one so.
    let instance = format!("{}-2", cell.document.blue.cluster_identifier);
    rds.create_db_instance()
        .db_instance_identifier(&instance)
        .db_cluster_identifier(old_identifier)
        .engine("aurora-postgresql")
        .db_instance_class("db.r6g.large")
        .send()
        .await
        .expect("the old blue's instance, named before the rename");
    // The role may delete only instances named after the parked blue: nothing is deleted
    // until the operator renames it.
    let refused = delete(old_identifier, false)
        .await
        .expect_err("instance named after blue");
    assert_eq!(
        name(&refused),
        switchyard_errors::ErrorName::PreconditionFailed,
        "{refused}"
    );
    assert!(
        refused.to_string().contains(&format!(
            "instances {instance} are not named {old_identifier}-<n>"
        )),
        "{refused}"
    );
    assert_eq!(clusters().await, before, "nothing was deleted");
    rds.modify_db_instance()
        .db_instance_identifier(&instance)
        .new_db_instance_identifier(format!("{old_identifier}-2"))
        .apply_immediately(true)
        .send()
        .await
        .expect("the operator renames the instance");
    rds.modify_db_cluster()
        .db_cluster_identifier(old_identifier)
        .deletion_protection(true)
        .apply_immediately(true)
        .send()
        .await
        .expect("protect the old blue");
    let refused = delete(old_identifier, false).await.expect_err("protected");
    assert_eq!(
        name(&refused),
        switchyard_errors::ErrorName::PreconditionFailed,
        "{refused}"
    );
    assert!(
        refused.to_string().contains("deletion protection"),
        "{refused}"
    );
    assert_eq!(clusters().await, before, "nothing was deleted");
    rds.modify_db_cluster()
        .db_cluster_identifier(old_identifier)
        .deletion_protection(false)
        .apply_immediately(true)
        .send()
        .await
        .expect("the operator turns protection off");

    let plan = delete(old_identifier, true).await.expect("dry run");
    assert_eq!(
        plan["would"],
        json!([
            format!("delete instance {old_identifier}-2 of {old_identifier}"),
            format!("delete cluster {old_identifier} without another snapshot: {old_identifier}-final keeps its data"),
        ]),
        "{plan}"
    );
    assert_eq!(clusters().await, before, "the dry run deleted nothing");
    let deleted = delete(old_identifier, false).await.expect("delete");
    assert_eq!(
        deleted["instances_deleted"],
        json!([format!("{old_identifier}-2")]),
        "{deleted}"
    );
    assert_eq!(deleted["cluster_deleted"], true, "{deleted}");
    assert_eq!(
        clusters().await,
        before
            .iter()
            .filter(|c| *c != old_identifier)
            .cloned()
            .collect::<Vec<_>>(),
        "only the old blue went"
    );
    let again = delete(old_identifier, false).await.expect("again");
    assert_eq!(
        (
            &again["instances_deleted"],
            &again["cluster_deleted"],
            &again["status"]
        ),
        (&json!([]), &json!(false), &json!("gone")),
        "{again}"
    );
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.green.version_num,
        "green still serves"
    );
}

/// Step Functions fails a run whose state passes 256 KB, and no Catch sees it: the run
/// would die where it stands, inside the pause window perhaps. With 2,000 more tables and
/// 5,000 more sequences on blue, every state of the prepare and switchover executions —
/// each one's input and output, every Task's result — stays under 64 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_schema_keeps_every_execution_state_small() {
    const LIMIT: usize = 64 * 1024;
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 100;
    options.run_direct_writers = false;
    // This test is about the size of what states carry, not about time: 7,000 relations
    // make the window's steps slow on two busy cores, so the budget is generous (and
    // PgBouncer's query_wait_timeout above it, as preflight requires).
    options.query_wait_timeout_secs = 600;
    let mut cell = LocalCell::start(&options).await.expect("cell");
    cell.document.budgets.pause_seconds = 300;
    let deps = cell.deps().expect("deps");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    blue.batch_execute(
        "CREATE SCHEMA bulk;
         DO $$ BEGIN
           FOR i IN 1..2000 LOOP
             EXECUTE format('CREATE TABLE bulk.%I (id bigint PRIMARY KEY, v text)', 'table_' || i);
           END LOOP;
           FOR i IN 1..5000 LOOP
             EXECUTE format('CREATE SEQUENCE bulk.%I', 'sequence_' || i);
             EXECUTE format('SELECT nextval(%L)', 'bulk.sequence_' || i);
           END LOOP;
         END $$;",
    )
    .await
    .expect("a large schema");

    let mut largest = Vec::new();
    for (definition, name) in [(PREPARE, "prepare"), (SWITCHOVER, "switchover")] {
        let ran = Run::new(&cell, &deps, definition, name).go().await;
        assert_eq!(
            ran.execution.status,
            Status::Succeeded,
            "{name}: {}",
            ran.describe()
        );
        let (size, event) = ran
            .execution
            .history
            .iter()
            .flat_map(|e| {
                [&e.input, &e.output].into_iter().flatten().map(move |v| {
                    let size = serde_json::to_string(v).map_or(0, |s| s.len());
                    (
                        size,
                        format!("{} {}", e.kind, e.state.as_deref().unwrap_or("")),
                    )
                })
            })
            .max()
            .expect("events");
        println!("{name}: the largest state is {size} bytes ({event})");
        largest.push((name, size, event));
    }
    for (name, size, event) in largest {
        assert!(size < LIMIT, "{name}: {event} holds {size} bytes");
    }
    cell.shutdown();
}

/// Prepare with a full check larger than one invocation's budget (0 s: one batch of
/// chunks per invocation): the prepare definition loops verify-data on its cursor until
/// every table is compared, and the invocations together compared every row once.
///
/// Then what can change between prepare and switchover, days apart, each made on the
/// prepared cell in turn: the switchover's preflight refuses before pausing (PgBouncer
/// never paused, `not started`), naming the drift by code, and `check-drift` (read-only,
/// run by a person) reports the same. Each drift is undone before the next; the cell is
/// clean before the first and after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_full_check_then_drift_since_prepare_stops_the_switchover_before_pausing() {
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 300;
    options.run_direct_writers = false;
    let mut cell = LocalCell::start(&options).await.expect("cell");
    let deps = cell.deps().expect("deps");
    cell.document.budgets.verify_seconds = 0;
    cell.document.budgets.verify_chunk_rows = 50;
    let prepare = Run::new(&cell, &deps, PREPARE, "prepare").go().await;
    assert_eq!(
        prepare.execution.status,
        Status::Succeeded,
        "{}",
        prepare.describe()
    );
    let verified: Vec<&Value> = prepare
        .calls
        .iter()
        .filter(|c| c.is("verify-data"))
        .filter_map(|c| c.result.as_ref().and_then(|r| r.as_ref().ok()))
        .collect();
    assert!(
        verified.len() > 2,
        "verify-data handed over: {} invocations",
        verified.len()
    );
    assert!(verified[..verified.len() - 1]
        .iter()
        .all(|o| o["done"] == json!(false) && o["cursor"].is_object()));
    assert_eq!(verified[verified.len() - 1]["done"], json!(true));
    let mut rows = std::collections::BTreeMap::<String, u64>::new();
    for output in &verified {
        for table in output["databases"][0]["tables"]["first"]
            .as_array()
            .expect("tables")
        {
            *rows
                .entry(table["table"].as_str().expect("name").to_owned())
                .or_default() += table["rows"].as_u64().expect("rows");
        }
    }
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let lines: i64 = blue
        .query_one(r#"SELECT count(*) FROM billing."invoice lines""#, &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        rows.get("billing.\"invoice lines\"").copied(),
        u64::try_from(lines).ok(),
        "every row compared once across the invocations: {rows:?}"
    );
    // The same as one pass over the same cell.
    let mut single = cell_input(&cell);
    single["mode"] = json!("full");
    single["chunk_rows"] = json!(50);
    single["budget_seconds"] = json!(720);
    let one_pass = switchyard_local_run::invoke("verify-data", single, &deps)
        .await
        .expect("one pass");
    assert_eq!(one_pass["done"], json!(true));
    let one_pass_rows: std::collections::BTreeMap<String, u64> = one_pass["databases"][0]["tables"]
        ["first"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["table"].as_str().expect("name").to_owned(),
                t["rows"].as_u64().expect("rows"),
            )
        })
        .collect();
    assert_eq!(
        rows, one_pass_rows,
        "resumed through the state machine = one pass"
    );

    let green = cell.green.superuser_client("app").await.expect("green");
    let ssm = &cell.moto.clients.ssm;
    let parameter = format!(
        "{}app_writer",
        cell.document.credentials.application_roles_path
    );
    // What the DDL guard's message says to run once green has the change too.
    const ACKNOWLEDGE: &str = "DELETE FROM switchyard.ddl_journal";

    let check_drift = || async {
        let out = switchyard_local_run::invoke("check-drift", cell_input(&cell), &deps)
            .await
            .expect("check-drift runs");
        let codes: Vec<String> = out["blockers"]
            .as_array()
            .expect("blockers")
            .iter()
            .map(|b| b["code"].as_str().unwrap_or_default().to_owned())
            .collect();
        (out["clean"].as_bool().expect("clean"), codes)
    };
    assert_eq!(
        check_drift().await,
        (true, Vec::new()),
        "a fresh prepare has no drift"
    );

    let rotate = |password: Option<String>| {
        let parameter = parameter.clone();
        async move {
            let current = ssm
                .get_parameter()
                .name(&parameter)
                .with_decryption(true)
                .send()
                .await
                .expect("get")
                .parameter
                .expect("parameter");
            let mut value: Value =
                serde_json::from_str(current.value().expect("value")).expect("json");
            let before = value["password"].as_str().expect("password").to_owned();
            value["password"] = json!(password.unwrap_or_else(|| format!("{before}-rotated")));
            ssm.put_parameter()
                .name(&parameter)
                .value(value.to_string())
                .set_type(current.r#type().cloned())
                .overwrite(true)
                .send()
                .await
                .expect("put");
            before
        }
    };

    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "a table created on both sides that no publication carries",
            "TABLE_NOT_PUBLISHED",
            &["CREATE TABLE public.refunds (id bigint PRIMARY KEY, amount bigint)"],
        ),
        (
            "a sequence on blue that green lacks",
            "MISSING_ON_GREEN",
            &["CREATE SEQUENCE public.refund_ids"],
        ),
        (
            "DDL nobody vouched for",
            "UNVOUCHED_DDL",
            &["COMMENT ON TABLE public.payments IS 'changed after prepare'"],
        ),
        ("a disabled subscription", "SUBSCRIPTION_NOT_STREAMING", &[]),
        ("a password rotated in SSM", "ROLE_DRIFT", &[]),
        (
            "an extension installed on blue only",
            "EXTENSION_MISSING_ON_GREEN",
            &["CREATE EXTENSION tablefunc"],
        ),
    ];
    for (n, (what, code, on_blue)) in cases.iter().enumerate() {
        let mut old_password = None;
        match *code {
            "TABLE_NOT_PUBLISHED" => {
                for client in [&blue, &green] {
                    client.batch_execute(on_blue[0]).await.expect("table");
                }
            }
            "SUBSCRIPTION_NOT_STREAMING" => green
                .batch_execute("ALTER SUBSCRIPTION switchyard_payments DISABLE")
                .await
                .expect("disable"),
            "ROLE_DRIFT" => old_password = Some(rotate(None).await),
            _ => {
                for sql in *on_blue {
                    blue.batch_execute(sql).await.expect(sql);
                }
            }
        }

        let ran = Run::new(&cell, &deps, SWITCHOVER, &format!("drift-{n}"))
            .go()
            .await;
        assert_eq!(ran.end(), "not started", "{what}: {}", ran.describe());
        assert_eq!(
            ran.execution.error.as_deref(),
            Some("PreflightFailed"),
            "{what}"
        );
        let cause = ran.execution.cause.clone().unwrap_or_default();
        assert!(cause.contains(code), "{what}: {code} not in {cause}");
        assert!(!ran.entered("pause-pgbouncer"), "{what}: PgBouncer paused");
        let app = cell
            .pgbouncer_admin()
            .await
            .expect("admin")
            .show_databases()
            .await
            .expect("show databases")
            .into_iter()
            .find(|r| r.name == "app")
            .expect("app");
        assert!(!app.paused, "{what}: PgBouncer paused");
        let (clean, codes) = check_drift().await;
        assert!(
            !clean && codes.iter().any(|c| c == code),
            "{what}: {codes:?}"
        );
        println!("{what}: refused with {codes:?}");

        // Undone, as the finding's fix says.
        match *code {
            "TABLE_NOT_PUBLISHED" => {
                for client in [&blue, &green] {
                    client
                        .batch_execute("DROP TABLE public.refunds")
                        .await
                        .expect("drop");
                }
            }
            "MISSING_ON_GREEN" => blue
                .batch_execute("DROP SEQUENCE public.refund_ids")
                .await
                .expect("drop"),
            "SUBSCRIPTION_NOT_STREAMING" => green
                .batch_execute("ALTER SUBSCRIPTION switchyard_payments ENABLE")
                .await
                .expect("enable"),
            "ROLE_DRIFT" => {
                rotate(old_password.take()).await;
            }
            "EXTENSION_MISSING_ON_GREEN" => blue
                .batch_execute("DROP EXTENSION tablefunc")
                .await
                .expect("drop"),
            _ => {}
        }
        blue.batch_execute(ACKNOWLEDGE).await.expect("acknowledge");
    }
    assert_eq!(
        check_drift().await,
        (true, Vec::new()),
        "every drift undone"
    );
    assert!(lock_free(&deps, &cell).await, "no run holds the cell");
    cell.shutdown();
}

/// What of a prepare can be on a server: slots, publications, subscriptions (every
/// database's), event triggers, the replication role, and the `switchyard` schema and its
/// relations, in the connected database.
async fn replication_objects(client: &tokio_postgres::Client, role: &str) -> Vec<String> {
    client
        .query(
            "SELECT 'slot ' || slot_name FROM pg_replication_slots
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication
             UNION ALL SELECT 'subscription ' || subname FROM pg_subscription
             UNION ALL SELECT 'event trigger ' || evtname FROM pg_event_trigger
             UNION ALL SELECT 'role ' || rolname FROM pg_roles WHERE rolname = $1
             UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'switchyard'
             UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname
                         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = 'switchyard'
             UNION ALL SELECT 'function ' || n.nspname || '.' || p.proname
                         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                        WHERE n.nspname = 'switchyard'
             ORDER BY 1",
            &[&role],
        )
        .await
        .expect("replication objects")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A prepare that will not be switched, undone: `abandon-prepare` (crashed once after its
/// side effect, then run again) leaves on blue exactly the replication objects it had
/// before prepare — the downstream's own slot and publication stay, ours are gone — and on
/// green no subscription, slot, guard, schema or role of ours (the application's schema,
/// its publication for the downstream included, stays). Blue's application writes as
/// before; the dry run lists the drops before and nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_prepare_leaves_blue_as_before_prepare() {
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 300;
    options.run_direct_writers = false;
    let cell = LocalCell::start(&options).await.expect("cell");
    let deps = cell.deps().expect("deps");
    let role = cell.document.replication.role.clone();
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");
    let blue_before = replication_objects(&blue, &role).await;
    let green_before = replication_objects(&green, &role).await;

    let prepare = Run::new(&cell, &deps, PREPARE, "prepare").go().await;
    assert_eq!(
        prepare.execution.status,
        Status::Succeeded,
        "{}",
        prepare.describe()
    );
    let blue_prepared = replication_objects(&blue, &role).await;
    for expected in [
        "slot switchyard_rest",
        "publication switchyard_rest",
        "event trigger switchyard_ddl_guard",
        "relation switchyard.ddl_journal",
    ] {
        assert!(
            blue_prepared.iter().any(|o| o == expected),
            "{expected} after prepare: {blue_prepared:?}"
        );
    }
    assert!(
        blue_prepared.contains(&format!("role {role}")),
        "{blue_prepared:?}"
    );
    assert!(
        replication_objects(&green, &role)
            .await
            .contains(&"subscription switchyard_rest".to_owned()),
        "green subscribes"
    );

    // Preflight before a prepare warns of slots an earlier prepare left on blue.
    let preflight_text = || async {
        match switchyard_local_run::invoke("preflight", cell_input(&cell), &deps).await {
            Ok(output) => output.to_string(),
            Err(error) => error.to_string(),
        }
    };
    let text = preflight_text().await;
    assert!(
        text.contains("LEFTOVER_SLOT") && text.contains("app: switchyard_rest"),
        "{text}"
    );

    // A way back left on green by an abort that stopped before its enable step: the DDL
    // guard disable installs there, then the publication and slot.
    let mut guarded = cell.green.superuser_client("app").await.expect("green");
    assert!(switchyard_operation::guard::install(&mut guarded)
        .await
        .expect("a guard left on green"));
    for sql in [
        "CREATE PUBLICATION switchyard_reverse FOR TABLE public.accounts",
        "SELECT pg_create_logical_replication_slot('switchyard_reverse', 'pgoutput')",
    ] {
        green
            .batch_execute(sql)
            .await
            .expect("a way back left on green");
    }

    let dry_input = |run_id: &str| abandon_prepare::Input {
        cell: cell.document.clone(),
        run_id: run_id.to_owned(),
        force: true,
    };
    let dry = abandon_prepare::plan(dry_input("by-hand"), &deps)
        .await
        .expect("dry run");
    for expected in [
        "drop subscription switchyard_rest on green (database app), and with it its slots on blue",
        "drop slot switchyard_rest on blue (database app)",
        "drop publication switchyard_rest on blue (database app)",
        "drop the DDL guard on green (database app): an unfinished abort left it",
        "drop slot and publication switchyard_reverse on green (database app): a way back an unfinished abort left",
    ] {
        assert!(
            dry.would.iter().any(|w| w == expected),
            "{expected}: {:#?}",
            dry.would
        );
    }
    assert_eq!(
        replication_objects(&blue, &role).await,
        blue_prepared,
        "a dry run drops nothing"
    );

    let crashed = Run::new(&cell, &deps, ABANDON_PREPARE, "abandon-crash")
        .fault(Fault::crash_after(
            "abandon-prepare",
            1,
            CRASH,
            "crashed after its side effect",
        ))
        .go()
        .await;
    assert_eq!(crashed.end(), "abandon failed", "{}", crashed.describe());
    assert_eq!(crashed.execution.error.as_deref(), Some(CRASH));
    let abandoned = Run::new(&cell, &deps, ABANDON_PREPARE, "abandon")
        .go()
        .await;
    assert_eq!(abandoned.end(), "abandoned", "{}", abandoned.describe());

    assert_eq!(
        replication_objects(&blue, &role).await,
        blue_before,
        "blue as before prepare"
    );
    // Green keeps the application's schema, its publication for the downstream included
    // (copy-schema copied it); nothing named ours is left.
    let green_after = replication_objects(&green, &role).await;
    let added: Vec<&String> = green_after
        .iter()
        .filter(|o| !green_before.contains(o))
        .collect();
    assert_eq!(
        added,
        ["publication search_pub"],
        "nothing of ours on green"
    );
    assert!(
        green_after
            .iter()
            .all(|o| !o.contains("switchyard") && !o.contains(role.as_str())),
        "{green_after:?}"
    );
    assert!(
        abandon_prepare::plan(dry_input("by-hand"), &deps)
            .await
            .expect("dry run")
            .would
            .is_empty(),
        "nothing left to drop"
    );
    let text = preflight_text().await;
    assert!(!text.contains("LEFTOVER_SLOT"), "{text}");
    // The application still writes on blue, and no slot holds its WAL for green.
    let ledger = cell
        .start_ledger(2, Duration::from_millis(5))
        .expect("ledger");
    let started = Instant::now();
    while ledger.acknowledged() < 20 {
        assert!(started.elapsed() < WAIT, "the ledger writes on blue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = ledger.stop().await;
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    cell.shutdown();
}

/// The switch-back's document for `cell` once it has switched: the cell's name on green,
/// the old blue parked under its major.
fn back_document(cell: &LocalCell) -> switchyard_cell::CellDocument {
    let parked = switchyard_operation::rename::parked_identifier(&cell.document, cell.blue.major);
    cell.document
        .back(&parked, cell.blue.major)
        .expect("the switch-back's document")
}

/// Waits for `n` more writes acknowledged by the ledger, at most [`WAIT`].
async fn more_writes(ledger: &Ledger, n: usize, what: &str) {
    let before = ledger.acknowledged();
    let started = Instant::now();
    while ledger.acknowledged() < before + n {
        assert!(
            started.elapsed() < WAIT,
            "{} of {n} writes acknowledged {what} in {WAIT:?}",
            ledger.acknowledged() - before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the old blue's subscription to green's way back exists and is enabled.
async fn old_blue_follows(cell: &LocalCell) -> bool {
    let old_blue = cell.blue.superuser_client("app").await.expect("old blue");
    old_blue
        .query_opt(
            "SELECT subenabled FROM pg_subscription WHERE subname = 'switchyard_reverse'",
            &[],
        )
        .await
        .expect("reading the old blue's subscription")
        .is_some_and(|r| r.get::<_, bool>(0))
}

/// After a switch-back that did not switch: green still serves writes through PgBouncer,
/// the lock is free, the services are back, every write acknowledged so far is on green,
/// on the downstream and on the old blue exactly once, and the way back is intact.
async fn assert_still_on_green(cell: &LocalCell, deps: &Deps, ledger: &Ledger) {
    assert_still_serving(cell, deps, ledger, &cell.green, ("old blue", &cell.blue)).await;
    let green = cell.green.superuser_client("app").await.expect("green");
    assert_eq!(
        way_back_on_green(&green).await,
        (true, true),
        "green keeps the way back's publication and slot"
    );
    assert!(old_blue_follows(cell).await, "the old blue follows green");
}

/// Switch 14 → green under the ledger's load, write, then switch back through the same
/// switchover definition with the reversed document: a crash after the side effect of
/// every Task before the switch-back's point of no return ends `not started` or `aborted`
/// with the cell on green, writable, the way back intact and nothing lost; then a clean
/// switch-back returns the cell to the old blue with every acknowledged write on it once,
/// PgBouncer serving it, the downstream equal to it, no sequence collision (a client would
/// have failed), and the upgrade's own steps refused from then on — until the next attempt:
/// green, renamed back and emptied, is prepared and switched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_back_returns_every_write_to_the_old_blue_and_a_crash_before_it_stays_on_green() {
    let (cell, deps) = prepared_cell_with(|_| {}).await;
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut outcomes = Outcomes::default();

    // Before the upgrade switched there is nothing to switch back.
    let back = back_document(&cell);
    let early = Run::new(&cell, &deps, SWITCHOVER, "back-early")
        .input(json!({ "cell": back }))
        .go()
        .await;
    assert_eq!(early.end(), "not started", "{}", early.describe());
    assert_eq!(early.execution.error.as_deref(), Some("PreconditionFailed"));
    outcomes.record(
        "switch-back before the switch",
        "-",
        "not started (PreconditionFailed)",
    );

    let switched = Run::new(&cell, &deps, SWITCHOVER, "switch").go().await;
    assert_eq!(switched.end(), "switched", "{}", switched.describe());
    outcomes.record("(upgrade)", "-", "switched");
    // Writes land on green and reach the old blue through the way back.
    more_writes(&ledger, 200, "on green after the switch").await;

    // The switch-back's own drift check, as the runbook has it run first: clean.
    let drift = switchyard_local_run::invoke("check-drift", json!({ "cell": back }), &deps)
        .await
        .expect("check-drift of the switch-back");
    assert_eq!(drift["clean"], true, "{drift}");

    let points = [
        ("acquire-lock", "not started"),
        ("preflight", "not started"),
        ("scale-services down", "aborted"),
        ("pause-pgbouncer", "aborted"),
        ("revoke-writes", "aborted"),
        ("drop-downstream-subscriptions", "aborted"),
        ("check-slot-lag", "aborted"),
        ("verify-data", "aborted"),
        ("sync-sequences", "aborted"),
        ("finalize-replication disable", "aborted"),
        ("rename-clusters forward", "aborted"),
        ("refresh-nlb-target", "aborted"),
        ("recreate-downstream-subscriptions", "aborted"),
    ];
    for (i, (state, expected)) in points.into_iter().enumerate() {
        let ran = Run::new(&cell, &deps, SWITCHOVER, &format!("back-crash-{i}"))
            .input(json!({ "cell": back }))
            .fault(Fault::crash_after(
                state,
                1,
                CRASH,
                "crashed after its side effect",
            ))
            .go()
            .await;
        assert_eq!(ran.end(), expected, "{state}: {}", ran.describe());
        assert_eq!(ran.execution.error.as_deref(), Some(CRASH), "{state}");
        assert_still_on_green(&cell, &deps, &ledger).await;
        outcomes.record(
            state,
            "crash after side effect",
            &format!("{expected}; on green, writable, way back intact, nothing lost"),
        );
    }

    let back_run = Run::new(&cell, &deps, SWITCHOVER, "switch-back")
        .input(json!({ "cell": back }))
        .go()
        .await;
    assert_eq!(back_run.end(), "switched", "{}", back_run.describe());
    outcomes.record("(switch-back)", "-", "switched back");
    assert_eq!(
        cell.version_through_pgbouncer().await.expect("version"),
        cell.blue.version_num,
        "PgBouncer serves the old blue"
    );
    // The old blue takes writes again, from the ledger's roles through PgBouncer.
    more_writes(&ledger, 200, "on the old blue after the switch-back").await;

    // Nothing of the undone upgrade is left to check, by either document.
    for document in [json!(cell.document), json!(back)] {
        let error = switchyard_local_run::invoke("check-drift", json!({ "cell": document }), &deps)
            .await
            .expect_err("switched back");
        assert_eq!(
            switchyard_errors::Catalogued::error_name(&error),
            switchyard_errors::ErrorName::PreconditionFailed,
            "{error}"
        );
        assert!(error.to_string().contains("was switched back"), "{error}");
    }

    // The undone upgrade's steps are refused; a second switch-back changes nothing.
    let finalize = Run::new(&cell, &deps, FINALIZE, "finalize-undone")
        .go()
        .await;
    assert_eq!(finalize.end(), "not started", "{}", finalize.describe());
    assert_eq!(
        finalize.execution.error.as_deref(),
        Some("PreconditionFailed")
    );
    outcomes.record(
        "finalize of the undone upgrade",
        "-",
        "not started (PreconditionFailed)",
    );
    let again = Run::new(&cell, &deps, SWITCHOVER, "switch-back-again")
        .input(json!({ "cell": back }))
        .go()
        .await;
    assert_eq!(again.end(), "not started", "{}", again.describe());
    assert_eq!(again.execution.error.as_deref(), Some("AlreadySwitched"));
    outcomes.record("second switch-back", "-", "not started (AlreadySwitched)");
    outcomes.print("switch 14 → green, then back, with a crash after each step of the way back");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = ledger.stop().await;
    assert_eq!(
        (tally.failed, tally.in_doubt.len()),
        (0, 0),
        "no client transaction failed across both switches: {:?}\n{}",
        tally.errors,
        cell.pgbouncer_troubles(30)
    );
    wait_keys_once(
        &cell.blue.superuser_options("app"),
        PAYMENTS,
        "memo",
        &tally.keys(),
        WAIT,
    )
    .await
    .expect(
        "every acknowledged write, before, between and after the switches, on the old blue once",
    );
    let jobs = cell.direct_writers()[0].tally();
    wait_keys_once(
        &cell.blue.superuser_options("app"),
        ("billing", "invoice lines"),
        "description",
        &jobs.keys(),
        WAIT,
    )
    .await
    .expect("every direct-writer job on the old blue once");
    cell.downstream_converges(&cell.blue, WAIT)
        .await
        .expect("downstream equals the old blue");
    assert!(
        !old_blue_follows(&cell).await,
        "the old blue follows nothing once it serves"
    );

    // Another attempt: the parked green, given its own name again and emptied as a new
    // cluster is (no slot of ours may hold its database), is prepared and switched anew.
    let parked_green = cell.document.blue_renamed_identifier(cell.green.major);
    cell.moto
        .clients
        .rds
        .modify_db_cluster()
        .db_cluster_identifier(&parked_green)
        .new_db_cluster_identifier(&cell.document.green.cluster_identifier)
        .apply_immediately(true)
        .send()
        .await
        .expect("green gets its own name back");
    let admin = cell
        .green
        .superuser_client("postgres")
        .await
        .expect("green");
    for database in &cell.document.databases {
        let db = switchyard_postgres::quote::ident(database);
        for sql in [
            format!("DROP DATABASE {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("green's database emptied: {sql}: {e}"));
        }
    }
    let prepared = Run::new(&cell, &deps, PREPARE, "prepare-again").go().await;
    assert_eq!(
        prepared.execution.status,
        Status::Succeeded,
        "prepare after a switch-back: {}",
        prepared.describe()
    );
    let ledger = cell
        .start_ledger(4, Duration::from_millis(2))
        .expect("ledger");
    more_writes(&ledger, 100, "on the old blue before the second attempt").await;
    let again = Run::new(&cell, &deps, SWITCHOVER, "switch-again")
        .go()
        .await;
    assert_eq!(again.end(), "switched", "{}", again.describe());
    more_writes(&ledger, 100, "on green after the second attempt").await;
    assert_switched(&cell, ledger, &again).await;
    cell.shutdown();
}
