//! `switchyard-local` (the operator commands with the functions in-process) against a local cell: invoke (with and without dry runs, bad
//! input), start and follow against Step Functions (moto), and report over the histories
//! of a real run of both state machines.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use switchyard_local_cell::{CellOptions, Install, LocalCell};
use switchyard_local_run::rehearsal::{rehearse_on, RunOptions};

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The ARN `start` printed (`execution <arn>`).
    fn started_arn(&self) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("execution "))
            .expect("the execution ARN is printed")
            .to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the binary with the cell's environment (moto, local endpoints), as an operator
/// on the cell's network would.
fn switchyard(cell: &LocalCell, args: &[&str]) -> Ran {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard-local"))
        .args(args)
        .envs(cell.env())
        .env_remove("RUST_LOG")
        .output()
        .expect("switchyard runs");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A Step Functions client at the cell's moto.
async fn sfn_at(cell: &LocalCell) -> aws_sdk_sfn::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&cell.moto.endpoint)
        .region(aws_config::Region::new(cell.moto.region.clone()))
        .credentials_provider(aws_sdk_sfn::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await;
    aws_sdk_sfn::Client::new(&config)
}

fn cell_file(cell: &LocalCell) -> PathBuf {
    let path = cell.run_dir.join("cell.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&cell.document).expect("document"),
    )
    .expect("write cell.json");
    path
}

async fn cluster_ids(cell: &LocalCell) -> Vec<String> {
    cell.cluster_identifiers().await.expect("describe")
}

/// `switchyard invoke <function> --cell <doc> [--run-id …] [--set …]… [--dry-run]`.
fn invoke(
    cell: &LocalCell,
    doc: &str,
    function: &str,
    run_id: Option<&str>,
    sets: &[&str],
    dry_run: bool,
) -> Ran {
    let mut args = vec!["invoke", function, "--cell", doc];
    if let Some(run_id) = run_id {
        args.extend(["--run-id", run_id]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    if dry_run {
        args.push("--dry-run");
    }
    switchyard(cell, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_one_function_with_dry_runs_and_typed_errors() {
    let cell = LocalCell::start_quiet(50).await.expect("cell");
    let doc = cell_file(&cell);
    let doc = doc.to_str().expect("path");
    let blue = cell.document.blue.cluster_identifier.clone();
    let before = cluster_ids(&cell).await;
    let repair = Some("manual-repair-1");

    // A function that changes the cell acts as a run: without one, refused up front, with
    // who holds the lock.
    let ran = invoke(&cell, doc, "rename-clusters", None, &["mode=forward"], true);
    assert_eq!(ran.code, 2, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("lock is free") && ran.stderr.contains("--run-id"),
        "{}",
        ran.stderr
    );

    // status on an idle cell: healthy, blue holds the name, PgBouncer serving, prepare next.
    let ran = switchyard(&cell, &["status", "--cell", doc]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    for expected in [
        "cell local-a: idle",
        "lock        free",
        &format!(
            "cluster     {blue} (primary, PostgreSQL {}",
            cell.blue.version
        ),
        ": holds the cell's name",
        "serving →",
        "drift       nothing prepared to check",
        "next        switchyard start --cell cell.json --phase prepare",
    ] {
        assert!(
            ran.stdout.contains(expected),
            "{expected:?} in:\n{}",
            ran.stdout
        );
    }

    // The repair takes the lock, then acts as its own run.
    let ran = invoke(&cell, doc, "acquire-lock", repair, &[], false);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(ran.json()["acquired"], true);

    // A dry run of the switch itself: the renames it would make, none made.
    let ran = invoke(
        &cell,
        doc,
        "rename-clusters",
        repair,
        &["mode=forward"],
        true,
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("held by run manual-repair-1"),
        "the lock holder is shown: {}",
        ran.stderr
    );
    let plan = ran.json();
    assert_eq!(plan["dry_run"], true);
    let would = plan["would"].to_string();
    assert!(
        would.contains(&blue) && would.contains(&format!("{blue}-blue-")),
        "the plan names blue and its parked name: {would}"
    );
    assert_eq!(
        cluster_ids(&cell).await,
        before,
        "a dry run renamed nothing"
    );

    // Another run's id while the lock is held: LockHeld, exit 1, nothing changed.
    let ran = invoke(
        &cell,
        doc,
        "rename-clusters",
        Some("someone-else"),
        &["mode=forward"],
        false,
    );
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(ran.json()["errorType"], "LockHeld");
    assert!(
        !ran.json()["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("LockHeld"),
        "the name once, in errorType, as the Lambda runtime answers: {}",
        ran.stdout
    );
    assert!(
        ran.json()["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("manual-repair-1"),
        "names the owner: {}",
        ran.stdout
    );
    assert_eq!(cluster_ids(&cell).await, before);

    // A failed state's input replayed whole, as Step Functions sent it (the Task's
    // parameters, its run_id and pause deadline included): a deadline passed stops it
    // before anything, as in the window; the same payload with a live deadline acts.
    let replay = |deadline: &str| {
        let path = cell.run_dir.join("replay.json");
        let parameters = serde_json::json!({
            "FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:switchyard-rename-clusters",
            "Payload": {
                "cell": cell.document,
                "run_id": "manual-repair-1",
                "mode": "forward",
                "pause_deadline": deadline,
            }
        });
        std::fs::write(&path, parameters.to_string()).expect("write");
        path
    };
    let path = replay("2020-01-01T00:00:00Z");
    let ran = switchyard(
        &cell,
        &[
            "invoke",
            "rename-clusters",
            "--payload",
            path.to_str().expect("path"),
            "--dry-run",
        ],
    );
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(ran.json()["errorType"], "PauseBudgetExceeded");
    let path = replay("2999-01-01T00:00:00Z");
    let ran = switchyard(
        &cell,
        &[
            "invoke",
            "rename-clusters",
            "--payload",
            path.to_str().expect("path"),
            "--dry-run",
        ],
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(ran.json()["dry_run"], true);
    assert_eq!(cluster_ids(&cell).await, before);
    // A payload is whole: no --cell, --set, --run-id or --force beside it.
    let ran = switchyard(
        &cell,
        &[
            "invoke",
            "rename-clusters",
            "--payload",
            path.to_str().expect("path"),
            "--run-id",
            "x",
        ],
    );
    assert_eq!(ran.code, 2, "{}\n{}", ran.stdout, ran.stderr);

    // Bad input: the function's own typed error, exit 1, nothing changed.
    let ran = invoke(
        &cell,
        doc,
        "rename-clusters",
        repair,
        &["mode=sideways"],
        false,
    );
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    let error = ran.json();
    assert_eq!(error["errorType"], "InvalidInput");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("mode"),
        "{error}"
    );
    assert_eq!(cluster_ids(&cell).await, before);

    // Not a function, or not a cell: refused before anything runs (exit 2).
    let ran = switchyard(&cell, &["invoke", "rename-cluster", "--cell", doc]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("no function named") && ran.stderr.contains("rename-clusters"),
        "{}",
        ran.stderr
    );
    let bad_cell = cell.run_dir.join("bad-cell.json");
    std::fs::write(&bad_cell, r#"{"cell_id": "Not Valid"}"#).expect("write");
    let ran = switchyard(
        &cell,
        &[
            "invoke",
            "preflight",
            "--cell",
            bad_cell.to_str().expect("path"),
        ],
    );
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("InvalidInput"), "{}", ran.stderr);

    // Paused by the run (stopped there): status shows the pause, who owns the cell and
    // what to run; as JSON too. Then resumed toward blue (the run is aborting from here), it serves again.
    let ran = invoke(&cell, doc, "pause-pgbouncer", repair, &[], false);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let ran = switchyard(&cell, &["status", "--cell", doc]);
    assert_eq!(
        ran.code, 0,
        "a run owns the pause: {}\n{}",
        ran.stdout, ran.stderr
    );
    for expected in [
        "cell local-a: running",
        "lock        held by run manual-repair-1",
        "pause       run manual-repair-1 paused at",
        "PAUSED (app)",
        "next        run manual-repair-1 holds the lock by hand",
    ] {
        assert!(
            ran.stdout.contains(expected),
            "{expected:?} in:\n{}",
            ran.stdout
        );
    }
    let ran = switchyard(&cell, &["status", "--cell", doc, "--output", "json"]);
    let status = ran.json();
    assert_eq!(status["phase"], "running");
    assert_eq!(status["lock"]["run_id"], "manual-repair-1");
    assert_eq!(status["pgbouncer"][0]["paused"], serde_json::json!(["app"]));
    let ran = invoke(
        &cell,
        doc,
        "resume-pgbouncer",
        repair,
        &["direction=abort"],
        false,
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let ran = switchyard(&cell, &["status", "--cell", doc]);
    assert!(ran.stdout.contains("serving →"), "{}", ran.stdout);

    // A dry run of giving the lock back, then for real.
    let ran = invoke(&cell, doc, "release-lock", repair, &[], true);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.json()["would"].to_string().contains("manual-repair-1"),
        "{}",
        ran.stdout
    );
    let lock = cell
        .moto
        .clients
        .ssm
        .get_parameter()
        .name(format!(
            "/switchyard/{}/journal/lock",
            cell.document.cell_id
        ))
        .send()
        .await;
    assert!(lock.is_ok(), "the dry run left the lock in place");
    let ran = invoke(&cell, doc, "release-lock", repair, &[], false);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.json()["released"].is_object(), "{}", ran.stdout);
    let ran = invoke(&cell, doc, "release-lock", repair, &[], true);
    assert_eq!(
        ran.json()["would"],
        serde_json::json!([]),
        "nothing left to do"
    );
    cell.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_names_the_run_refuses_a_second_and_follow_ends_with_the_outcome() {
    let cell = LocalCell::start_quiet(50).await.expect("cell");
    let doc = cell_file(&cell);
    let doc = doc.to_str().expect("path");
    let sfn = sfn_at(&cell).await;
    let mut arns = Vec::new();
    for phase in ["prepare", "switchover", "abort"] {
        let definition = std::fs::read_to_string(switchyard_local_run::definition_path(phase))
            .expect("definition");
        let created = sfn
            .create_state_machine()
            .name(format!("switchyard-{phase}"))
            .definition(definition)
            .role_arn("arn:aws:iam::123456789012:role/switchyard-states")
            .send()
            .await
            .expect("state machine in moto");
        arns.push(created.state_machine_arn().to_owned());
    }
    let (prepare_arn, arn, abort_arn) = (arns[0].as_str(), arns[1].as_str(), arns[2].as_str());

    // While the cell's prepare runs, its switchover cannot start (and the reverse).
    let ran = switchyard(
        &cell,
        &[
            "start",
            "--cell",
            doc,
            "--state-machine-arn",
            prepare_arn,
            "--phase",
            "prepare",
        ],
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let prepare_execution = ran.started_arn();
    let refused = switchyard(&cell, &["start", "--cell", doc, "--state-machine-arn", arn]);
    assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("{}-prepare-", cell.document.cell_id)),
        "names the running prepare: {}",
        refused.stderr
    );
    sfn.stop_execution()
        .execution_arn(&prepare_execution)
        .send()
        .await
        .expect("stop the prepare");

    let ran = switchyard(&cell, &["start", "--cell", doc, "--state-machine-arn", arn]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let prefix = format!("started {}-switchover-20", cell.document.cell_id);
    assert!(ran.stdout.starts_with(&prefix), "{}", ran.stdout);
    let execution_arn = ran.started_arn();

    let again = switchyard(&cell, &["start", "--cell", doc, "--state-machine-arn", arn]);
    assert_eq!(again.code, 2, "{}\n{}", again.stdout, again.stderr);
    assert!(
        again.stderr.contains("already running") && again.stderr.contains("nothing started"),
        "{}",
        again.stderr
    );
    let executions = sfn
        .list_executions()
        .state_machine_arn(arn)
        .send()
        .await
        .expect("list");
    assert_eq!(
        executions.executions().len(),
        1,
        "the second start started nothing"
    );

    // moto records an execution's history without running it; follow reads it through
    // the same API calls it makes against Step Functions, and ends with the outcome.
    let ran = switchyard(&cell, &["follow", &execution_arn, "--poll-ms", "200"]);
    assert!(
        ran.stdout.contains(&format!(
            "console: https://{}.console.aws.amazon.com/states/",
            cell.moto.region
        )),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("execution started"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert!(
        ran.stdout.contains("outcome: "),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    // moto's made-up history ends in a Pass state no definition has: no outcome of ours.
    assert!(
        ran.stdout.contains("outcome: interrupted (exit 40)"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert_eq!(ran.code, 40, "the exit code follows the outcome");

    // abort with no run holding the cell: refused, nothing started.
    let abort = |cell: &LocalCell| {
        switchyard(
            cell,
            &[
                "abort",
                "--cell",
                doc,
                "--state-machine-arn",
                abort_arn,
                "--wait-seconds",
                "0",
            ],
        )
    };
    let ran = abort(&cell);
    assert_eq!(ran.code, 2, "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("no run holds cell"), "{}", ran.stderr);
    // The run holds the lock with its execution: abort stops that execution and starts the
    // abort path acting as the run.
    let run_id = execution_arn.rsplit(':').next().expect("name").to_owned();
    let set_execution = format!("execution={execution_arn}");
    let ran = invoke(
        &cell,
        doc,
        "acquire-lock",
        Some(&run_id),
        &[&set_execution],
        false,
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let ran = abort(&cell);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains(&format!(
            "aborting run {run_id} as {}-abort-",
            cell.document.cell_id
        )),
        "{}",
        ran.stdout
    );
    let stopped = sfn
        .describe_execution()
        .execution_arn(&execution_arn)
        .send()
        .await
        .expect("describe");
    assert_ne!(
        stopped.status(),
        &aws_sdk_sfn::types::ExecutionStatus::Running,
        "the run's execution was stopped"
    );
    let aborts = sfn
        .list_executions()
        .state_machine_arn(abort_arn)
        .send()
        .await
        .expect("list");
    assert_eq!(aborts.executions().len(), 1, "one abort started");
    let input = sfn
        .describe_execution()
        .execution_arn(aborts.executions()[0].execution_arn())
        .send()
        .await
        .expect("describe")
        .input()
        .unwrap_or_default()
        .to_owned();
    let input: Value = serde_json::from_str(&input).expect("json");
    assert_eq!(
        input["run_id"],
        run_id.as_str(),
        "the abort acts as the run"
    );
    assert_eq!(input["cell"]["cell_id"], cell.document.cell_id.as_str());
    cell.shutdown();
}

/// Every `"name": …` of the steps in a report.json.
fn step_names(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_of_a_rehearsal_history_matches_the_rehearsal_and_draws_every_step() {
    let mut options = CellOptions::from_env(&Install::from_env()).expect("options");
    options.rows = 300;
    options.run_direct_writers = true;
    let cell = LocalCell::start(&options).await.expect("cell");
    let out = cell.run_dir.join("rehearsal-out");
    let run = RunOptions {
        workers: 2,
        load_during_prepare: true,
        out_dir: out.clone(),
        name_prefix: "report".to_owned(),
        bulk_bytes: 0,
        compare_pgcopydb: false,
        roundtrip: false,
    };
    let doc = cell_file(&cell);
    let doc = doc.to_str().expect("path");
    // Nothing to switch back before the switch: refused, with the reason.
    let early = switchyard(&cell, &["back-document", "--cell", doc]);
    assert_eq!(early.code, 2, "{}\n{}", early.stdout, early.stderr);
    assert!(
        early.stderr.contains("PreconditionFailed") && early.stderr.contains("has not switched"),
        "{}",
        early.stderr
    );
    let rehearsal = rehearse_on(&cell, &run).await.expect("rehearsal ran");
    assert!(rehearsal.switchover.is_some(), "{:?}", rehearsal.failures);

    // status after the switch: green holds the cell's name, the old blue parked and
    // following it, and what to do next.
    let ran = switchyard(&cell, &["status", "--cell", doc]);
    assert_eq!(ran.code, 0, "healthy: {}\n{}", ran.stdout, ran.stderr);
    let parked = format!(
        "{}-blue-{}",
        cell.document.blue.cluster_identifier, cell.blue.major
    );
    for expected in [
        "cell local-a: switched".to_owned(),
        "decision    Switched by run".to_owned(),
        format!(
            "cluster     {} (primary, PostgreSQL {}",
            cell.document.blue.cluster_identifier, cell.green.version
        ),
        format!(
            "cluster     {parked} (parked, PostgreSQL {}",
            cell.blue.version
        ),
        "app: subscription switchyard_reverse enabled, streaming".to_owned(),
        "app: slot switchyard_reverse active".to_owned(),
        "drift       clean".to_owned(),
        "--phase finalize".to_owned(),
    ] {
        assert!(
            ran.stdout.contains(&expected),
            "{expected:?} in:\n{}",
            ran.stdout
        );
    }

    // The old blue stops following: status says so through check-drift's rollback
    // blockers too, and needs a person (exit 1). Then it follows again.
    let old_blue = cell.blue.superuser_client("app").await.expect("old blue");
    old_blue
        .batch_execute("ALTER SUBSCRIPTION switchyard_reverse DISABLE")
        .await
        .expect("the old blue stops following");
    let started = std::time::Instant::now();
    let ran = loop {
        let ran = switchyard(&cell, &["status", "--cell", doc]);
        if ran
            .stdout
            .contains("drift       BLOCKERS: ROLLBACK_NOT_STREAMING")
        {
            break ran;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{}\n{}",
            ran.stdout,
            ran.stderr
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    assert!(
        ran.stdout
            .contains("ATTENTION   check-drift finds blockers: ROLLBACK_NOT_STREAMING"),
        "{}",
        ran.stdout
    );
    let json = switchyard(&cell, &["status", "--cell", doc, "--output", "json"]).json();
    assert_eq!(json["drift"]["state"], "checked", "{json}");
    assert!(
        json["drift"]["blockers"]
            .to_string()
            .contains("ROLLBACK_NOT_STREAMING"),
        "{json}"
    );
    old_blue
        .batch_execute("ALTER SUBSCRIPTION switchyard_reverse ENABLE")
        .await
        .expect("the old blue follows again");

    // Switched: the switch-back's document names the parked old blue, from the journal.
    let back = switchyard(&cell, &["back-document", "--cell", doc]);
    assert_eq!(back.code, 0, "{}\n{}", back.stdout, back.stderr);
    let back = back.json();
    let parked = format!(
        "{}-blue-{}",
        cell.document.blue.cluster_identifier, cell.blue.major
    );
    assert_eq!(back["green"]["cluster_identifier"], parked.as_str());
    assert_eq!(back["target_major_version"], cell.blue.major);
    assert_eq!(
        back["undoes"],
        serde_json::json!({
            "green_identifier": cell.document.green.cluster_identifier,
            "target_major_version": cell.green.major,
        })
    );
    assert_eq!(back["blue"], serde_json::json!(cell.document.blue));

    let report_dir = cell.run_dir.join("report");
    let prepare = out.join("prepare-history.json");
    let switchover = out.join("switchover-history.json");
    let ran = switchyard(
        &cell,
        &[
            "report",
            "--prepare-history",
            prepare.to_str().expect("path"),
            "--history",
            switchover.to_str().expect("path"),
            "--out",
            report_dir.to_str().expect("path"),
        ],
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("outcome     switched (exit 0)"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("pause       "), "{}", ran.stdout);

    let theirs = read_json(&out.join("report.json"));
    let ours = read_json(&report_dir.join("report.json"));
    for field in [
        "outcome",
        "pause_window_ms",
        "pause_window_started_at",
        "pause_window_ended_at",
        "pause_window_steps",
        "lag",
        "steps",
        "target_major",
    ] {
        assert_eq!(
            ours[field], theirs[field],
            "{field}: same as the rehearsal's"
        );
    }
    assert!(ours["pause_window_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert!(
        ours.get("lost_writes").is_none(),
        "no load figures from a history alone"
    );
    assert!(
        theirs["lost_writes"].is_number(),
        "the rehearsal's has them"
    );
    assert!(
        !ours["lag"].as_array().expect("lag").is_empty(),
        "lag readings found"
    );

    let svg = std::fs::read_to_string(report_dir.join("timeline.svg")).expect("svg");
    assert!(svg.starts_with("<svg "), "an SVG document");
    let names = step_names(&ours);
    assert!(names.len() > 20, "both executions' states: {names:?}");
    for name in &names {
        assert!(svg.contains(&format!(">{name}</text>")), "{name} drawn");
    }
    assert!(
        svg.contains(r#"class="pause""#),
        "the pause window is drawn"
    );
    assert!(
        svg.contains("pause window ") && svg.contains(r#"class="lag""#),
        "and the lag line"
    );

    // The same history replayed as a live follow would have printed it.
    let ran = switchyard(
        &cell,
        &["follow", "--history", switchover.to_str().expect("path")],
    );
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    for expected in [
        "→ pause-pgbouncer",
        "⏸ pause window open",
        "▶ pause window closed after",
        "✓ rename-clusters forward",
        "outcome: switched (exit 0): nothing now",
    ] {
        assert!(
            ran.stdout.contains(expected),
            "{expected:?} in:\n{}",
            ran.stdout
        );
    }
    cell.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_start_sends_the_canary_apart_and_refuses_a_bad_fleet_starting_nothing() {
    let cell = LocalCell::start_quiet(50).await.expect("cell");
    let first = cell_file(&cell);
    let mut other = cell.document.clone();
    other.cell_id = format!("{}-2", cell.document.cell_id);
    let second = cell.run_dir.join("cell-2.json");
    std::fs::write(
        &second,
        serde_json::to_vec_pretty(&other).expect("document"),
    )
    .expect("write");
    let sfn = sfn_at(&cell).await;
    let definition =
        std::fs::read_to_string(switchyard_local_run::definition_path("fleet")).expect("fleet");
    let arn = sfn
        .create_state_machine()
        .name("switchyard-fleet")
        .definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/switchyard-fleet")
        .send()
        .await
        .expect("state machine in moto")
        .state_machine_arn()
        .to_owned();
    let (first, second) = (
        first.to_str().expect("path"),
        second.to_str().expect("path"),
    );
    let fleet = |phase: &str| {
        switchyard(
            &cell,
            &[
                "fleet",
                "start",
                "--cell",
                first,
                second,
                "--state-machine-arn",
                &arn,
                "--phase",
                phase,
                "--canary",
                "1",
                "--max-concurrency",
                "3",
            ],
        )
    };
    let refused = fleet("finalize");
    assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("InvalidInput"),
        "{}",
        refused.stderr
    );
    let executions = || async {
        sfn.list_executions()
            .state_machine_arn(&arn)
            .send()
            .await
            .expect("list")
            .executions()
            .len()
    };
    assert_eq!(executions().await, 0, "a refused fleet starts nothing");

    let ran = fleet("switchover");
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.starts_with("started fleet-switchover-20"),
        "{}",
        ran.stdout
    );
    let described = sfn
        .describe_execution()
        .execution_arn(ran.started_arn())
        .send()
        .await
        .expect("describe");
    let input: Value = serde_json::from_str(described.input().expect("input")).expect("JSON");
    assert_eq!(input["phase"], "switchover");
    assert_eq!(input["canary"][0]["cell_id"], json!(cell.document.cell_id));
    assert_eq!(input["rest"][0]["cell_id"], json!(other.cell_id));
    assert_eq!(input["max_concurrency"], 3);
    assert_eq!(input["tolerated_failures"], 0);
    assert_eq!(executions().await, 1);

    // By id: the documents Terraform keeps in SSM (`/<prefix>/cells/<id>`) give the same
    // input; an id with no document is refused, nothing started.
    for document in [&cell.document, &other] {
        cell.moto
            .clients
            .ssm
            .put_parameter()
            .name(format!("/switchyard/cells/{}", document.cell_id))
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .value(serde_json::to_string(document).expect("JSON"))
            .send()
            .await
            .expect("put the cell document");
    }
    let by_id = |ids: &[&str]| {
        let mut args = vec!["fleet", "start", "--cell-id"];
        args.extend_from_slice(ids);
        args.extend_from_slice(&["--state-machine-arn", &arn, "--phase", "prepare"]);
        switchyard(&cell, &args)
    };
    let missing = by_id(&[&cell.document.cell_id, "no-such-cell"]);
    assert_eq!(missing.code, 2, "{}\n{}", missing.stdout, missing.stderr);
    assert!(
        missing
            .stderr
            .contains("no cell document for cell no-such-cell"),
        "{}",
        missing.stderr
    );
    assert_eq!(executions().await, 1);
    let ran = by_id(&[&cell.document.cell_id, &other.cell_id]);
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let described = sfn
        .describe_execution()
        .execution_arn(ran.started_arn())
        .send()
        .await
        .expect("describe");
    let by_id_input: Value = serde_json::from_str(described.input().expect("input")).expect("JSON");
    assert_eq!(by_id_input["canary"], input["canary"]);
    assert_eq!(by_id_input["rest"], input["rest"]);
}
