//! What one switchover asks of AWS's account-wide APIs, counted by moto's recorder: a
//! fleet switching many cells at once meets SSM's default 40 calls per second (seed 000
//! hit it). Each invocation reads its logins once each, together in one `GetParameters`.
//!
//! The same record checks the Terraform: every SSM parameter a function reads is one its
//! role may read (moto enforces no IAM, so nothing else would notice before AWS did).
//!
//! Prepare's and the switchover's Tasks run one at a time here (the freeze checks'
//! Parallel included) so that each invocation's calls can be recorded apart.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use switchyard_local_cell::{LocalCell, RecordedCall};
use switchyard_local_run::{load, LocalFunctions, PREPARE, SWITCHOVER};
use switchyard_state_machine::{BoxFuture, Executor, Status, TaskFailure, TaskHandler};

/// The local handler, one invocation at a time, recording each one's AWS calls.
struct Recorded<'a> {
    inner: LocalFunctions<'a>,
    cell: &'a LocalCell,
    one_at_a_time: tokio::sync::Mutex<()>,
    invocations: Mutex<Vec<(String, Vec<RecordedCall>)>>,
}

impl TaskHandler for Recorded<'_> {
    fn invoke(
        &self,
        resource: &str,
        parameters: Value,
    ) -> BoxFuture<'_, Result<Value, TaskFailure>> {
        let resource = resource.to_owned();
        Box::pin(async move {
            let _turn = self.one_at_a_time.lock().await;
            let function = parameters["FunctionName"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            self.cell.moto.start_recording().await.expect("recording");
            let answer = self.inner.invoke(&resource, parameters).await;
            let calls = self
                .cell
                .moto
                .stop_recording()
                .await
                .expect("recorded calls");
            self.invocations
                .lock()
                .expect("lock")
                .push((function, calls));
            answer
        })
    }
}

/// The SSM parameters (or path prefixes) each function's role may read, with the actions
/// allowed on them, from `infra/policies.tf`'s `function_statement_names` and what each
/// statement names.
fn readable_by_role(
    cell: &switchyard_cell::CellDocument,
) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    let path =
        switchyard_local_run::definition_path("functions").with_file_name("../infra/policies.tf");
    let text = std::fs::read_to_string(&path).expect("infra/policies.tf");
    let block = text
        .split("function_statement_names = {")
        .nth(1)
        .and_then(|rest| rest.split("\n  }").next())
        .expect("function_statement_names");
    let actions = |statement: &str| -> Vec<String> {
        text.split(&format!("\n    {statement} = {{"))
            .nth(1)
            .and_then(|rest| rest.lines().find(|l| l.trim_start().starts_with("Action")))
            .map(|line| {
                line.split('"')
                    .filter(|part| part.starts_with("ssm:"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let grants = |statement: &str| -> Vec<(String, Vec<String>)> {
        let names = match statement {
            "orchestrator_login" => vec![cell.credentials.orchestrator_parameter.clone()],
            "pgbouncer_login" => vec![cell.pgbouncer.admin_credentials_parameter.clone()],
            "downstream_login" => cell
                .downstream
                .iter()
                .map(|d| d.credentials_parameter.clone())
                .collect(),
            "downstream_publisher_login" => cell
                .downstream
                .iter()
                .map(|d| d.publisher_credentials_parameter.clone())
                .collect(),
            "replication_login" | "replication_login_read" => {
                vec![cell.replication_credentials_parameter()]
            }
            "application_roles" => vec![cell.credentials.application_roles_path.clone()],
            "journal_read" => vec![cell.journal_path()],
            _ => Vec::new(),
        };
        let actions = actions(statement);
        names.into_iter().map(|n| (n, actions.clone())).collect()
    };
    let mut out = BTreeMap::new();
    for line in block.lines() {
        let Some((function, statements)) = line.trim().split_once('=') else {
            continue;
        };
        let function = function.trim().trim_matches('"').to_owned();
        let names: Vec<(String, Vec<String>)> = statements
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .flat_map(|s| grants(s.trim().trim_matches('"')))
            .collect();
        out.insert(function, names);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_switchover_reads_each_login_once_per_invocation_in_one_batch() {
    let cell = LocalCell::start_quiet(200).await.expect("local cell");
    let deps = cell.deps().expect("deps");
    let input = json!({ "cell": cell.document });
    let handler = Recorded {
        inner: LocalFunctions { deps: &deps },
        cell: &cell,
        one_at_a_time: tokio::sync::Mutex::new(()),
        invocations: Mutex::new(Vec::new()),
    };
    let prepare = load(PREPARE).expect("prepare");
    let prepared = Executor::new(&prepare, &handler)
        .name("calls-prepare")
        .run(input.clone())
        .await;
    assert_eq!(prepared.status, Status::Succeeded, "{:?}", prepared.cause);
    let prepare_invocations = std::mem::take(&mut *handler.invocations.lock().expect("lock"));
    let switchover = load(SWITCHOVER).expect("switchover");
    let switched = Executor::new(&switchover, &handler)
        .name("calls-switchover")
        .run(input)
        .await;
    assert_eq!(switched.status, Status::Succeeded, "{:?}", switched.cause);

    // The replication role's login is its own read: "none stored yet" is an answer there
    // (start-replication rotates one), not an error, so it is not batched.
    let replication = cell.document.replication_credentials_parameter();
    let secrets: Vec<String> = cell
        .document
        .secret_parameters()
        .into_iter()
        .filter(|p| *p != replication)
        .collect();
    let invocations = handler.invocations.into_inner().expect("lock");
    let mut by_call: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    eprintln!("one switchover, {} invocations:", invocations.len());
    for (function, calls) in &invocations {
        let reads: Vec<&RecordedCall> = calls
            .iter()
            .filter(|c| c.names.iter().any(|n| secrets.contains(n)))
            .collect();
        let ssm = calls.iter().filter(|c| c.call.starts_with("ssm:")).count();
        eprintln!(
            "  {function:<40} {:>3} AWS calls, {ssm:>2} SSM, logins read in {} call(s): {:?}",
            calls.len(),
            reads.len(),
            reads.iter().map(|c| &c.names).collect::<Vec<_>>()
        );
        for call in calls {
            *by_call.entry(call.call.clone()).or_default() += 1;
        }
        if reads.len() > 1 {
            problems.push(format!("{function}: its logins in {} calls", reads.len()));
        }
        if let Some(single) = reads.iter().find(|c| c.call != "ssm:GetParameters") {
            problems.push(format!("{function}: {} for a login", single.call));
        }
    }
    let total: usize = by_call.values().sum();
    let ssm: usize = by_call
        .iter()
        .filter(|(c, _)| c.starts_with("ssm:"))
        .map(|(_, n)| n)
        .sum();
    eprintln!("  total: {total} AWS calls, {ssm} to SSM");
    for (call, n) in &by_call {
        eprintln!("  {n:>4}  {call}");
    }

    // Every parameter read, by prepare or the switchover, is one the function's role may
    // read: a parameter named in a policy, or under a path one names.
    let readable = readable_by_role(&cell.document);
    let mut denied = Vec::new();
    for (placeholder, calls) in prepare_invocations.iter().chain(invocations.iter()) {
        let function = switchyard_local_run::function_name(placeholder).expect("a function");
        let allowed = readable.get(&function).cloned().unwrap_or_default();
        for call in calls.iter().filter(|c| c.call.starts_with("ssm:Get")) {
            for name in &call.names {
                let ok = allowed.iter().any(|(a, actions)| {
                    (a == name || (a.ends_with('/') && name.starts_with(a.as_str())))
                        && actions.contains(&call.call)
                });
                if !ok {
                    denied.push(format!("{function}: {} {name}", call.call));
                }
            }
        }
    }
    denied.sort();
    denied.dedup();
    assert!(
        denied.is_empty(),
        "reads infra/policies.tf does not allow (AccessDenied in AWS): {denied:#?}"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
