//! A fleet run on this machine: `fleet.asl.json` as checked in, each cell's `prepare` or
//! `switchover` its child execution, every function called in-process with the
//! dependencies of the cell its payload names.

use serde_json::Value;
use switchyard_cell::CellDocument;
pub use switchyard_history::fleet::{fleet_input, FleetOptions};
use switchyard_operation::Deps;
use switchyard_state_machine::{BoxFuture, Execution, Executor, TaskFailure, TaskHandler};

use crate::{load, LocalFunctions, FLEET, PREPARE, SWITCHOVER};

/// What `${prepare_state_machine}` / `${switchover_state_machine}` name locally (Terraform
/// fills them with the published versions' ARNs).
pub const PREPARE_STATE_MACHINE: &str = "${prepare_state_machine}";
pub const SWITCHOVER_STATE_MACHINE: &str = "${switchover_state_machine}";

/// The task handler of a fleet: each call served with the dependencies of the cell its
/// payload's document names.
pub struct FleetFunctions<'a> {
    pub cells: Vec<(String, &'a Deps)>,
}

impl std::fmt::Debug for FleetFunctions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.cells.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("FleetFunctions")
            .field("cells", &ids)
            .finish()
    }
}

impl TaskHandler for FleetFunctions<'_> {
    fn invoke(
        &self,
        resource: &str,
        parameters: Value,
    ) -> BoxFuture<'_, Result<Value, TaskFailure>> {
        let cell_id = parameters
            .pointer("/Payload/cell/cell_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match self.cells.iter().find(|(id, _)| *id == cell_id) {
            Some((_, deps)) => {
                let resource = resource.to_owned();
                let deps: &Deps = deps;
                Box::pin(async move { LocalFunctions { deps }.invoke(&resource, parameters).await })
            }
            None => Box::pin(async move {
                Err(TaskFailure::new(
                    "States.Runtime",
                    format!("no local cell {cell_id:?} in this fleet"),
                ))
            }),
        }
    }
}

/// Runs `fleet.asl.json` over `cells` (each with its dependencies) as execution `name`.
pub async fn run_fleet(
    name: &str,
    cells: &[(&CellDocument, &Deps)],
    options: &FleetOptions,
) -> Result<Execution, String> {
    let fleet = load(FLEET)?;
    let prepare = load(PREPARE)?;
    let switchover = load(SWITCHOVER)?;
    let handler = FleetFunctions {
        cells: cells
            .iter()
            .map(|(doc, deps)| (doc.cell_id.clone(), *deps))
            .collect(),
    };
    let documents: Vec<&CellDocument> = cells.iter().map(|(doc, _)| *doc).collect();
    let input = fleet_input(name, &documents, options)?;
    Ok(Executor::new(&fleet, &handler)
        .name(name)
        .state_machine_name(FLEET)
        .state_machine(PREPARE_STATE_MACHINE, PREPARE, &prepare)
        .state_machine(SWITCHOVER_STATE_MACHINE, SWITCHOVER, &switchover)
        .run(input)
        .await)
}

/// A copy of the example cell document (`cells/local.json`) as cell `cell_id`: every name
/// derived from the example's id (clusters, SSM parameters) renamed with it, written under
/// `dir`. Each local cell runs its own moto, so its names need only differ from the
/// fleet's other cells where the fleet looks: the cell id.
pub fn cell_document(
    install: &switchyard_local_cell::Install,
    dir: &std::path::Path,
    cell_id: &str,
) -> Result<std::path::PathBuf, String> {
    let example = install.example_cell_document();
    let text = std::fs::read_to_string(&example)
        .map_err(|e| format!("reading {}: {e}", example.display()))?;
    let document: CellDocument = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a cell document: {e}", example.display()))?;
    let renamed = text.replace(&document.cell_id, cell_id);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("{cell_id}.json"));
    std::fs::write(&path, renamed).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Counts the requests an SSM client sends (every attempt, retries included), when: how
/// close a fleet comes to SSM's account-wide rate (40 calls a second by default).
#[derive(Debug, Clone, Default)]
pub struct SsmCalls(std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>);

impl SsmCalls {
    /// `deps` with its SSM client counting into this.
    pub fn count(&self, deps: &Deps) -> Deps {
        let mut deps = deps.clone();
        let config = deps
            .aws
            .ssm
            .config()
            .to_builder()
            .interceptor(self.clone())
            .build();
        deps.aws.ssm = aws_sdk_ssm::Client::from_conf(config);
        deps
    }

    /// Every request so far.
    pub fn total(&self) -> usize {
        self.0.lock().map_or(0, |calls| calls.len())
    }

    /// Requests so far per operation (`GetParameters`, `PutParameter`, …).
    pub fn by_operation(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(calls) = self.0.lock() {
            for (_, operation) in calls.iter() {
                *out.entry(operation.clone()).or_default() += 1;
            }
        }
        out
    }

    /// The most requests of the operations `counted` accepts in any one second.
    pub fn peak_per_second(&self, counted: impl Fn(&str) -> bool) -> usize {
        let Ok(calls) = self.0.lock().map(|c| c.clone()) else {
            return 0;
        };
        let mut calls: Vec<std::time::Instant> = calls
            .into_iter()
            .filter(|(_, operation)| counted(operation))
            .map(|(at, _)| at)
            .collect();
        calls.sort_unstable();
        let mut peak = 0;
        let mut start = 0;
        for end in 0..calls.len() {
            while calls[end] - calls[start] >= std::time::Duration::from_secs(1) {
                start += 1;
            }
            peak = peak.max(end - start + 1);
        }
        peak
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for SsmCalls {
    fn name(&self) -> &'static str {
        "SsmCalls"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        // SSM's JSON protocol names the operation: `X-Amz-Target: AmazonSSM.GetParameters`.
        let operation = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("unknown")
            .to_owned();
        if let Ok(mut calls) = self.0.lock() {
            calls.push((std::time::Instant::now(), operation));
        }
        Ok(())
    }
}
