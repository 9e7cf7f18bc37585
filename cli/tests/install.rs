//! The installable `switchyard` on its own: what it links, and what it knows about the
//! functions without linking them (`invoke FUNCTION --help`).

use std::process::Command;

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("switchyard runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `cargo install --path cli` must not compile the workspace: no function crate and no
/// local cell among the CLI's dependencies, dev-dependencies included.
#[test]
fn the_cli_links_no_function_and_no_local_cell() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "switchyard-cli",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(root)
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let functions = std::path::Path::new(root).join("functions");
    let function_crates: Vec<String> = std::fs::read_dir(&functions)
        .expect("functions/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(function_crates.len() > 20, "{function_crates:?}");
    let linked: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(linked.contains(&"switchyard-history"), "{stdout}");
    for name in function_crates
        .iter()
        .map(String::as_str)
        .chain(["switchyard-local-cell", "switchyard-local-run"])
    {
        assert!(
            !linked.contains(&name),
            "switchyard-cli depends on {name}:\n{stdout}"
        );
    }
}

#[test]
fn invoke_help_lists_each_functions_payload_from_its_input_type() {
    let (code, stdout, stderr) = switchyard(&["invoke", "finalize-replication", "--help"]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        "finalize-replication: ",
        "  cell                         object, required",
        "  run_id                       string, required",
        "  force                        boolean, default false",
        "  mode                         string, required",
        "  old_blue_identifier ",
        "  pause_deadline               string (date-time)",
        "\"mode\": \"",
        "switchyard invoke finalize-replication --cell cell.json --run-id <run> --set mode=",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    // The installable CLI always goes through the Lambda: no --remote to choose.
    assert!(!stdout.contains("--remote"), "{stdout}");

    let (code, stdout, _) = switchyard(&["invoke", "check-drift", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("It changes nothing"), "{stdout}");
    let fields = stdout
        .split("Payload fields")
        .nth(1)
        .expect("a payload section");
    assert!(
        fields.contains("\n  cell ") && !fields.contains("\n  run_id "),
        "check-drift takes the cell and no run: {stdout}"
    );

    let (code, stdout, _) = switchyard(&["invoke", "--help"]);
    assert_eq!(code, 0);
    for name in [
        "preflight",
        "rename-clusters",
        "resume-pgbouncer",
        "delete-old-cluster",
    ] {
        assert!(
            stdout.contains(&format!("  {name} ")),
            "{name} not listed:\n{stdout}"
        );
    }
}

#[test]
fn an_unknown_function_is_refused_by_name_before_anything_is_read() {
    let (code, _, stderr) = switchyard(&[
        "invoke",
        "rename-cluster",
        "--cell",
        "/nonexistent/cell.json",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("InvalidInput: no function named \"rename-cluster\"")
            && stderr.contains("rename-clusters"),
        "{stderr}"
    );
}
