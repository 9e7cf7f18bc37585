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
