//! `switchyard-local`: the operator's commands with every function in this process —
//! `invoke` runs one in-process (as its Lambda would, against the cell the environment
//! names, e.g. a local cell's `SWITCHYARD_LOCAL_ENDPOINTS`) unless `--remote` is given.
//! The installable `switchyard` (cli/) is the same commands without the functions linked.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;
use switchyard_operation::{Deps, Error};

fn in_process<'a>(
    function: &'a str,
    payload: Value,
    deps: &'a Deps,
) -> Pin<Box<dyn Future<Output = Result<Value, Error>> + Send + 'a>> {
    Box::pin(switchyard_local_run::invoke(function, payload, deps))
}

fn main() -> std::process::ExitCode {
    switchyard_cli::main(switchyard_cli::Tool {
        name: "switchyard-local",
        in_process: Some(in_process),
    })
}
