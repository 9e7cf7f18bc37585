//! The function as Lambda runs it: its binary (the one `cargo lambda build` ships as
//! `bootstrap`) polling cargo-lambda's runtime emulator (`cargo lambda watch
//! --only-lambda-apis`), invoked with `cargo lambda invoke`. A payload that is not this
//! function's input comes back as a typed error — `InvalidInput`, the name the state
//! machine's Catch and an operator's runbook match — not a Rust type's name.
//!
//! The binary is the one cargo built for this test (`CARGO_BIN_EXE_acquire-lock`), not a
//! build by `cargo lambda watch`: that compiles the package alone, with other features
//! than the workspace's, and rebuilt the AWS SDK crates for ten minutes of `make test`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo lambda …` through the pinned install (scripts/cargo-lambda.sh).
fn cargo_lambda(args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(root().join("scripts/cargo-lambda.sh"))
        .args(args)
        .current_dir(root())
        // The function builds its AWS clients at start: a region and placeholder keys;
        // nothing here calls AWS.
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "placeholder")
        .env("AWS_SECRET_ACCESS_KEY", "placeholder")
        .env_remove("AWS_ENDPOINT_URL");
    command
}

/// A child in its own process group (`cargo lambda watch`: cargo and the emulator; or the
/// function), the whole group stopped when dropped, pass or fail.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn invoke(port: u16, payload: &str) -> Output {
    let port = port.to_string();
    cargo_lambda(&[
        "lambda",
        "invoke",
        // The emulator's name for a function it does not start itself.
        "_",
        "--invoke-address",
        "127.0.0.1",
        "--invoke-port",
        &port,
        "--data-ascii",
        payload,
    ])
    .output()
    .expect("cargo lambda invoke runs")
}

#[test]
fn a_bad_payload_comes_back_as_a_typed_error_from_the_lambda_runtime() {
    let port = switchyard_local_cell::free_port("127.0.0.1").expect("a free port");
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("watch-{port}.log"))).expect("log");
    let emulator = cargo_lambda(&[
        "lambda",
        "watch",
        "--only-lambda-apis",
        "--invoke-address",
        "127.0.0.1",
        "--invoke-port",
        &port.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone().expect("log"))
    .stderr(log.try_clone().expect("log"))
    .process_group(0)
    .spawn()
    .expect("cargo lambda watch starts");
    let _emulator = Group(emulator);

    // The function's first poll must find the emulator listening (cargo-lambda may be
    // installing itself on first use).
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "cargo lambda watch did not listen within 300 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // What the emulator tells a function it does not start to set; the function's own
    // AWS clients get a region and placeholder keys (nothing here calls AWS).
    let function = Command::new(env!("CARGO_BIN_EXE_acquire-lock"))
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "placeholder")
        .env("AWS_SECRET_ACCESS_KEY", "placeholder")
        .env_remove("AWS_ENDPOINT_URL")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("the function starts");
    let _function = Group(function);

    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let out = invoke(port, r#"{"cell": 1, "run_id": "r-1"}"#);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("InvalidInput") || out.status.success() {
            break (out.status.success(), stderr);
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the function within 60 s: {stderr}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(!answer.0, "a bad payload must fail");
    assert!(
        answer.1.contains("Error: InvalidInput") && answer.1.contains("payload field cell"),
        "the catalogued name and the field: {}",
        answer.1
    );

    // Same process, next invocation: an unknown field is named too, and the function
    // kept serving (a bad payload does not kill the runtime loop).
    let out = invoke(port, r#"{"cell": {}, "run_id": "r-1", "colour": "blue"}"#);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Error: InvalidInput"), "{stderr}");
}
