//! What `terraform plan` would make of `infra/`, without terraform: the module parsed with
//! hcl-rs and its expressions evaluated with hcl-rs's evaluator, in a context holding the
//! module's variables (defaults, plus a test's cells), fake data sources, fake resource
//! instances (one per `for_each` key, with dummy ARNs) and the Terraform functions the
//! module calls, implemented here as Terraform documents them.
//!
//! Checked: each state machine's definition renders to the checked-in ASL with every
//! `${placeholder}` filled by its function's ARN; one Lambda and one role per function in
//! `state-machine/functions.json`; every policy grants no wildcard action, `"*"` resources
//! only for actions AWS cannot scope, `rds:ModifyDBCluster` only to rename-clusters, and
//! `rds:CreateDBClusterSnapshot` only to snapshot-cluster (blue) and close-rollback-window
//! (the parked old blue), and `rds:DeleteDBCluster` / `rds:DeleteDBInstance` only to
//! delete-old-cluster, on the parked old blue alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Body, Expression, Map, Template, Value};

const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "123456789012";

/// The dummy ARN of the Lambda of `function` (default `name_prefix`).
fn function_arn(function: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:switchyard-{function}")
}

/// The dummy version an apply published of every function.
const PUBLISHED_VERSION: &str = "7";

/// The dummy ARN of the version of `function` an apply published.
fn function_version_arn(function: &str) -> String {
    format!("{}:{PUBLISHED_VERSION}", function_arn(function))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `state-machine/functions.json`'s function names.
fn functions() -> BTreeSet<String> {
    let json: serde_json::Value =
        serde_json::from_str(&read(&repo().join("state-machine/functions.json"))).expect("JSON");
    json.as_object()
        .expect("an object keyed by function")
        .keys()
        .cloned()
        .collect()
}

/// `state-machine/<name>.asl.json` by name.
fn asl_files() -> BTreeMap<String, String> {
    let dir = repo().join("state-machine");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("state-machine/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(stem) = name.strip_suffix(".asl.json") {
            files.insert(stem.to_owned(), read(&path));
        }
    }
    files
}

/// Every `${…}` placeholder in `text`, in order.
fn placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').expect("a closed placeholder");
        found.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    found
}

/// `${<name>_state_machine}`: the fleet's child state machines, by their ASL file's name.
fn child_state_machine(placeholder: &str) -> Option<&str> {
    placeholder.strip_suffix("_state_machine")
}

/// The dummy ARN of the version of state machine `name` an apply published.
fn state_machine_version_arn(name: &str) -> String {
    format!("arn:aws:fake:{REGION}:{ACCOUNT}:aws_sfn_state_machine/state_machine/{name}:{PUBLISHED_VERSION}")
}

/// The ASL with each placeholder filled by the dummy ARN of its function's (or child state
/// machine's) published version, by plain string replacement: independent of the renderer.
fn filled(asl: &str) -> String {
    let mut text = asl.to_owned();
    for name in placeholders(asl) {
        let arn = match child_state_machine(&name) {
            Some(machine) => state_machine_version_arn(machine),
            None => function_version_arn(&name.replace('_', "-")),
        };
        text = text.replace(&format!("${{{name}}}"), &arn);
    }
    text
}

// ---------------------------------------------------------------------------------------
// The module

/// One `resource` or `data` block.
#[derive(Debug)]
struct Block {
    kind: String,
    name: String,
    body: Body,
}

#[derive(Debug)]
struct Module {
    dir: PathBuf,
    variables: Vec<(String, Body)>,
    locals: Vec<(String, Expression)>,
    resources: Vec<Block>,
    data: Vec<Block>,
}

impl Module {
    fn load(dir: &Path) -> Self {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("infra/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "tf"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no *.tf in {}", dir.display());
        let mut module = Module {
            dir: dir.to_owned(),
            variables: Vec::new(),
            locals: Vec::new(),
            resources: Vec::new(),
            data: Vec::new(),
        };
        for file in files {
            let body = hcl::parse(&read(&file))
                .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
            for block in body.blocks() {
                let labels: Vec<String> = block
                    .labels()
                    .iter()
                    .map(|l| l.as_str().to_owned())
                    .collect();
                match (block.identifier(), labels.as_slice()) {
                    ("variable", [name]) => {
                        module.variables.push((name.clone(), block.body().clone()));
                    }
                    ("locals", []) => module.locals.extend(
                        block
                            .body()
                            .attributes()
                            .map(|a| (a.key().to_owned(), a.expr().clone())),
                    ),
                    ("resource", [kind, name]) => module.resources.push(Block {
                        kind: kind.clone(),
                        name: name.clone(),
                        body: block.body().clone(),
                    }),
                    ("data", [kind, name]) => module.data.push(Block {
                        kind: kind.clone(),
                        name: name.clone(),
                        body: block.body().clone(),
                    }),
                    _ => {}
                }
            }
        }
        module
    }

    fn resources_of(&self, kind: &str) -> Vec<&Block> {
        self.resources.iter().filter(|r| r.kind == kind).collect()
    }
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

/// A resource's `for_each` instances: `(each.key, each.value)`.
type Instances = Vec<(String, Value)>;

/// A module evaluated: every local, and every resource's `for_each` keys.
#[derive(Debug)]
struct Evaluated {
    /// `var`, `path`, `data`, `local` and one object per resource type.
    vars: Map<String, Value>,
    /// `(type, name)` → its `for_each` keys, or `None` for a single instance.
    instances: BTreeMap<(String, String), Option<Instances>>,
}

impl Evaluated {
    fn context(&self) -> Context<'static> {
        let mut ctx = terraform_functions();
        for (name, value) in &self.vars {
            ctx.declare_var(name.as_str(), value.clone());
        }
        ctx
    }

    /// `expr` evaluated for each instance of `block` (`each.key`, `each.value` set).
    fn per_instance(&self, block: &Block, expr: &Expression) -> BTreeMap<String, Value> {
        let key = (block.kind.clone(), block.name.clone());
        let instances = self.instances[&key]
            .clone()
            .unwrap_or_else(|| vec![(String::new(), Value::Null)]);
        let mut out = BTreeMap::new();
        for (each_key, each_value) in instances {
            let mut ctx = self.context();
            let mut each = Map::new();
            each.insert("key".to_owned(), Value::from(each_key.clone()));
            each.insert("value".to_owned(), each_value);
            ctx.declare_var("each", Value::Object(each));
            let value = expr.evaluate(&ctx).unwrap_or_else(|e| {
                panic!(
                    "{}.{}[{each_key:?}]: evaluating {expr}: {e}",
                    block.kind, block.name
                )
            });
            out.insert(each_key, value);
        }
        out
    }
}

/// Cell a's document: the example document as cell `cell-a`, naming what `inputs()`'s
/// `cells` map names for it.
fn cell_a_document() -> String {
    read(&repo().join("cells/local.json")).replace("local-a", "cell-a")
}

/// The inputs a test gives the module: its required variables.
fn inputs() -> Map<String, Value> {
    let cells: serde_json::Value = serde_json::json!({
        "cell-a": {
            "blue_cluster_identifier": "cell-a",
            "green_cluster_identifier": "cell-a-green",
            "orchestrator_parameter": "/switchyard/cell-a/orchestrator",
            "application_roles_path": "/switchyard/cell-a/roles/",
            "pgbouncer_admin_parameter": "/switchyard/cell-a/pgbouncer-admin",
            "pgbouncer_ecs_service": { "ecs_cluster": "cell-a", "service": "pgbouncer" },
            "direct_writers": [{ "ecs_cluster": "cell-a", "service": "jobs" }],
            "downstream": [{
                "credentials_parameter": "/switchyard/cell-a/downstream/search/admin",
                "publisher_credentials_parameter": "/switchyard/cell-a/downstream/search/replicator",
                "nlb_target_group_arn": format!("arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/cell-a-search/0123456789abcdef")
            }],
            "journal_path": null,
            "replication_parameter": null,
            "document": cell_a_document()
        },
        "cell-b": {
            "blue_cluster_identifier": "cell-b",
            "green_cluster_identifier": "cell-b-green",
            "orchestrator_parameter": "/switchyard/cell-b/orchestrator",
            "application_roles_path": "/switchyard/cell-b/roles/",
            "pgbouncer_admin_parameter": "/switchyard/cell-b/pgbouncer-admin",
            "pgbouncer_ecs_service": null,
            "direct_writers": [],
            "downstream": [],
            "journal_path": "/ops/cell-b/journal/",
            "replication_parameter": "/ops/cell-b/replication",
            "document": null
        }
    });
    let mut inputs = Map::new();
    inputs.insert("cells".to_owned(), json_to_value(cells));
    inputs.insert("subnet_ids".to_owned(), Value::from(vec!["subnet-0a"]));
    inputs.insert("security_group_ids".to_owned(), Value::from(vec!["sg-0a"]));
    inputs.insert(
        "kms_key_arn".to_owned(),
        Value::from(format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/test")),
    );
    inputs
}

fn field(object: &Value, name: &str) -> Value {
    match object {
        Value::Object(map) => map.get(name).cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn json_to_value(json: serde_json::Value) -> Value {
    serde_json::from_value(json).expect("JSON is an HCL value")
}

/// What a data source of `kind` reads, faked.
fn fake_data(kind: &str) -> Value {
    let attributes: serde_json::Value = match kind {
        "aws_partition" => serde_json::json!({ "partition": "aws", "dns_suffix": "amazonaws.com" }),
        "aws_region" => serde_json::json!({ "name": REGION, "region": REGION, "id": REGION }),
        "aws_caller_identity" => serde_json::json!({ "account_id": ACCOUNT }),
        "aws_iam_policy_document" => serde_json::json!({ "json": "{}" }),
        other => panic!("the renderer has no fake for data source {other}: add one"),
    };
    json_to_value(attributes)
}

/// A resource instance's attributes: dummy, but each distinct and naming its key. Lambda
/// ARNs are what a deployment with the default prefix would have.
fn fake_instance(kind: &str, name: &str, key: &str) -> Value {
    let arn = match kind {
        "aws_lambda_function" => function_arn(key),
        _ => format!("arn:aws:fake:{REGION}:{ACCOUNT}:{kind}/{name}/{key}"),
    };
    let id = format!("{kind}.{name}[{key}]");
    let mut object = Map::new();
    object.insert("arn".to_owned(), Value::from(arn.clone()));
    object.insert("id".to_owned(), Value::from(id));
    object.insert("name".to_owned(), Value::from(format!("{name}-{key}")));
    if kind == "aws_lambda_function" {
        object.insert(
            "function_name".to_owned(),
            Value::from(format!("switchyard-{key}")),
        );
        object.insert(
            "qualified_arn".to_owned(),
            Value::from(format!("{arn}:{PUBLISHED_VERSION}")),
        );
        object.insert("version".to_owned(), Value::from(PUBLISHED_VERSION));
    }
    if kind == "aws_sfn_state_machine" {
        object.insert(
            "state_machine_version_arn".to_owned(),
            Value::from(format!("{arn}:{PUBLISHED_VERSION}")),
        );
    }
    Value::Object(object)
}

/// Evaluates the module: variables, data, then locals and resources' `for_each` until
/// nothing more can be evaluated. Fails if any local or `for_each` cannot.
fn evaluate(module: &Module) -> Evaluated {
    let mut vars = Map::new();

    let mut path = Map::new();
    path.insert(
        "module".to_owned(),
        Value::from(module.dir.to_string_lossy().into_owned()),
    );
    vars.insert("path".to_owned(), Value::Object(path));

    let mut inputs = inputs();
    let mut var = Map::new();
    for (name, body) in &module.variables {
        let value = match (inputs.shift_remove(name), attribute(body, "default")) {
            (Some(value), _) => value,
            (None, Some(default)) => default
                .evaluate(&Context::new())
                .unwrap_or_else(|e| panic!("variable {name}: default: {e}")),
            (None, None) => panic!("variable {name} is required: give the test a value for it"),
        };
        var.insert(name.clone(), value);
    }
    assert!(
        inputs.is_empty(),
        "the test gives values for variables the module does not declare: {:?}",
        inputs.keys().collect::<Vec<_>>()
    );
    vars.insert("var".to_owned(), Value::Object(var));

    let mut data: Map<String, Value> = Map::new();
    for block in &module.data {
        let by_kind = data
            .entry(block.kind.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(by_name) = by_kind {
            by_name.insert(block.name.clone(), fake_data(&block.kind));
        }
    }
    vars.insert("data".to_owned(), Value::Object(data));
    vars.insert("local".to_owned(), Value::Object(Map::new()));

    let mut evaluated = Evaluated {
        vars,
        instances: BTreeMap::new(),
    };
    let mut locals_left: Vec<&(String, Expression)> = module.locals.iter().collect();
    let mut resources_left: Vec<&Block> = module.resources.iter().collect();
    loop {
        let before = locals_left.len() + resources_left.len();
        let mut errors = Vec::new();

        let mut still = Vec::new();
        for local in locals_left {
            let (name, expr) = local;
            match expr.evaluate(&evaluated.context()) {
                Ok(value) => {
                    if let Some(Value::Object(locals)) = evaluated.vars.get_mut("local") {
                        locals.insert(name.clone(), value);
                    }
                }
                Err(e) => {
                    errors.push(format!("local.{name}: {e}"));
                    still.push(local);
                }
            }
        }
        locals_left = still;

        let mut still = Vec::new();
        for block in resources_left {
            let instances = match attribute(&block.body, "for_each") {
                None => Ok(None),
                Some(expr) => match expr.evaluate(&evaluated.context()) {
                    Ok(Value::Object(map)) => Ok(Some(map.into_iter().collect::<Vec<_>>())),
                    Ok(Value::Array(items)) => items
                        .into_iter()
                        .map(|item| match item {
                            Value::String(s) => Ok((s.clone(), Value::from(s))),
                            other => Err(format!("for_each over a set of non-strings: {other}")),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some),
                    Ok(other) => Err(format!("for_each is neither a map nor a set: {other}")),
                    Err(e) => Err(e.to_string()),
                },
            };
            match instances {
                Ok(instances) => {
                    let value = match &instances {
                        None => fake_instance(&block.kind, &block.name, ""),
                        Some(list) => Value::Object(
                            list.iter()
                                .map(|(k, _)| {
                                    (k.clone(), fake_instance(&block.kind, &block.name, k))
                                })
                                .collect(),
                        ),
                    };
                    let by_kind = evaluated
                        .vars
                        .entry(block.kind.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(by_name) = by_kind {
                        by_name.insert(block.name.clone(), value);
                    }
                    evaluated
                        .instances
                        .insert((block.kind.clone(), block.name.clone()), instances);
                }
                Err(e) => {
                    errors.push(format!("{}.{}: for_each: {e}", block.kind, block.name));
                    still.push(block);
                }
            }
        }
        resources_left = still;

        let after = locals_left.len() + resources_left.len();
        if after == 0 {
            return evaluated;
        }
        assert!(
            after < before,
            "cannot evaluate the module:\n{}",
            errors.join("\n")
        );
    }
}

fn module() -> (Module, Evaluated) {
    let module = Module::load(&repo().join("infra"));
    let evaluated = evaluate(&module);
    (module, evaluated)
}

// ---------------------------------------------------------------------------------------
// Terraform's functions, as the module uses them (developer.hashicorp.com/terraform/language/functions)

fn terraform_functions() -> Context<'static> {
    let mut ctx = Context::new();
    let string = || ParamType::String;
    let any = || ParamType::Any;
    ctx.declare_func("file", FuncDef::builder().param(string()).build(tf_file));
    ctx.declare_func(
        "jsondecode",
        FuncDef::builder().param(string()).build(tf_jsondecode),
    );
    ctx.declare_func(
        "jsonencode",
        FuncDef::builder().param(any()).build(tf_jsonencode),
    );
    ctx.declare_func(
        "templatefile",
        FuncDef::builder()
            .param(string())
            .param(ParamType::object_of(any()))
            .build(tf_templatefile),
    );
    ctx.declare_func(
        "replace",
        FuncDef::builder()
            .params([string(), string(), string()])
            .build(tf_replace),
    );
    ctx.declare_func(
        "trimprefix",
        FuncDef::builder()
            .params([string(), string()])
            .build(tf_trimprefix),
    );
    ctx.declare_func(
        "trimsuffix",
        FuncDef::builder()
            .params([string(), string()])
            .build(tf_trimsuffix),
    );
    ctx.declare_func(
        "merge",
        FuncDef::builder().variadic_param(any()).build(tf_merge),
    );
    ctx.declare_func(
        "concat",
        FuncDef::builder().variadic_param(any()).build(tf_concat),
    );
    ctx.declare_func("flatten", FuncDef::builder().param(any()).build(tf_flatten));
    ctx.declare_func("alltrue", FuncDef::builder().param(any()).build(tf_alltrue));
    ctx.declare_func(
        "lookup",
        FuncDef::builder()
            .params([any(), string(), any()])
            .build(tf_lookup),
    );
    ctx.declare_func(
        "distinct",
        FuncDef::builder().param(any()).build(tf_distinct),
    );
    ctx.declare_func("length", FuncDef::builder().param(any()).build(tf_length));
    ctx.declare_func("keys", FuncDef::builder().param(any()).build(tf_keys));
    ctx
}

fn arg_str(args: &FuncArgs, i: usize) -> Result<&str, String> {
    args[i]
        .as_str()
        .ok_or_else(|| format!("argument {} must be a string", i + 1))
}

fn tf_file(args: FuncArgs) -> Result<Value, String> {
    let path = arg_str(&args, 0)?;
    std::fs::read_to_string(path)
        .map(Value::from)
        .map_err(|e| format!("no file {path}: {e}"))
}

fn tf_jsondecode(args: FuncArgs) -> Result<Value, String> {
    serde_json::from_str(arg_str(&args, 0)?).map_err(|e| format!("invalid JSON: {e}"))
}

fn tf_jsonencode(args: FuncArgs) -> Result<Value, String> {
    serde_json::to_string(&args[0])
        .map(Value::from)
        .map_err(|e| e.to_string())
}

/// The file is an HCL template; only `vars` are in scope, and an undefined one is an error
/// ("vars map does not contain key …"), as in Terraform.
fn tf_templatefile(args: FuncArgs) -> Result<Value, String> {
    let path = arg_str(&args, 0)?;
    let source = std::fs::read_to_string(path).map_err(|e| format!("no file {path}: {e}"))?;
    let template =
        Template::from_str(&source).map_err(|e| format!("{path} is not a template: {e}"))?;
    let mut ctx = Context::new();
    if let Value::Object(vars) = &args[1] {
        for (name, value) in vars {
            ctx.declare_var(name.as_str(), value.clone());
        }
    }
    template
        .evaluate(&ctx)
        .map(Value::from)
        .map_err(|e| format!("rendering {path}: {e}"))
}

fn tf_replace(args: FuncArgs) -> Result<Value, String> {
    let (s, from, to) = (arg_str(&args, 0)?, arg_str(&args, 1)?, arg_str(&args, 2)?);
    if from.len() > 1 && from.starts_with('/') && from.ends_with('/') {
        return Err("regular expression replace is not implemented by this renderer".to_owned());
    }
    Ok(Value::from(s.replace(from, to)))
}

fn tf_trimprefix(args: FuncArgs) -> Result<Value, String> {
    let (s, prefix) = (arg_str(&args, 0)?, arg_str(&args, 1)?);
    Ok(Value::from(s.strip_prefix(prefix).unwrap_or(s)))
}

fn tf_trimsuffix(args: FuncArgs) -> Result<Value, String> {
    let (s, suffix) = (arg_str(&args, 0)?, arg_str(&args, 1)?);
    Ok(Value::from(s.strip_suffix(suffix).unwrap_or(s)))
}

fn tf_merge(args: FuncArgs) -> Result<Value, String> {
    let mut merged = Map::new();
    for arg in args.iter() {
        match arg {
            Value::Null => {}
            Value::Object(map) => merged.extend(map.clone()),
            other => return Err(format!("merge takes maps or objects, not {other}")),
        }
    }
    Ok(Value::Object(merged))
}

fn tf_concat(args: FuncArgs) -> Result<Value, String> {
    let mut all = Vec::new();
    for arg in args.iter() {
        match arg {
            Value::Array(items) => all.extend(items.iter().cloned()),
            other => return Err(format!("concat takes lists, not {other}")),
        }
    }
    Ok(Value::Array(all))
}

fn tf_flatten(args: FuncArgs) -> Result<Value, String> {
    fn flatten_into(value: &Value, out: &mut Vec<Value>) {
        match value {
            Value::Array(items) => items.iter().for_each(|i| flatten_into(i, out)),
            other => out.push(other.clone()),
        }
    }
    let Value::Array(_) = &args[0] else {
        return Err("flatten takes a list".to_owned());
    };
    let mut out = Vec::new();
    flatten_into(&args[0], &mut out);
    Ok(Value::Array(out))
}

fn tf_distinct(args: FuncArgs) -> Result<Value, String> {
    let Value::Array(items) = &args[0] else {
        return Err("distinct takes a list".to_owned());
    };
    let mut out: Vec<Value> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    Ok(Value::Array(out))
}

fn tf_alltrue(args: FuncArgs) -> Result<Value, String> {
    match &args[0] {
        Value::Array(items) => Ok(Value::Bool(items.iter().all(|v| *v == Value::Bool(true)))),
        other => Err(format!("alltrue of {other}")),
    }
}

fn tf_lookup(args: FuncArgs) -> Result<Value, String> {
    let key = arg_str(&args, 1)?;
    match &args[0] {
        Value::Object(map) => Ok(map.get(key).cloned().unwrap_or_else(|| args[2].clone())),
        other => Err(format!("lookup in {other}")),
    }
}

fn tf_length(args: FuncArgs) -> Result<Value, String> {
    let n = match &args[0] {
        Value::Array(items) => items.len(),
        Value::Object(map) => map.len(),
        Value::String(s) => s.chars().count(),
        other => return Err(format!("length of {other}")),
    };
    Ok(Value::from(n as u64))
}

/// Terraform returns the keys in lexicographical order.
fn tf_keys(args: FuncArgs) -> Result<Value, String> {
    let Value::Object(map) = &args[0] else {
        return Err("keys takes a map or object".to_owned());
    };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Ok(Value::from(
        keys.into_iter()
            .cloned()
            .map(Value::from)
            .collect::<Vec<_>>(),
    ))
}

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn every_asl_placeholder_names_a_function() {
    let functions = functions();
    let files = asl_files();
    for (name, asl) in &files {
        for placeholder in placeholders(asl) {
            if let Some(machine) = child_state_machine(&placeholder) {
                assert!(
                    files.contains_key(machine) && machine != name,
                    "state-machine/{name}.asl.json: ${{{placeholder}}} names no other checked-in state machine"
                );
                continue;
            }
            let function = placeholder.replace('_', "-");
            assert!(
                functions.contains(&function),
                "state-machine/{name}.asl.json: placeholder ${{{placeholder}}} names no function in functions.json \
                 (templatefile would fail: the vars map has no key {placeholder:?}); \
                 a literal `${{` in the definition must be written `$${{`"
            );
        }
    }
}

#[test]
fn state_machines_render_to_the_checked_in_asl_with_function_arns() {
    let (module, evaluated) = module();
    let machines = module.resources_of("aws_sfn_state_machine");
    assert!(!machines.is_empty(), "no aws_sfn_state_machine in infra/");
    let files = asl_files();
    let mut rendered_names = BTreeSet::new();
    for machine in machines {
        let definition = attribute(&machine.body, "definition")
            .unwrap_or_else(|| panic!("{} has no definition", machine.name));
        for (key, rendered) in evaluated.per_instance(machine, definition) {
            // A state machine without for_each (the fleet) is named by its block.
            let key = if key.is_empty() {
                machine.name.clone()
            } else {
                key
            };
            let text = rendered
                .as_str()
                .unwrap_or_else(|| panic!("definition of {key} is not a string: {rendered}"));
            assert!(
                !text.contains("${"),
                "definition of {key} still holds a placeholder"
            );
            let asl = files.get(&key).unwrap_or_else(|| {
                panic!("no state-machine/{key}.asl.json for state machine {key}")
            });
            let got: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("definition of {key} is not JSON: {e}"));
            let want: serde_json::Value =
                serde_json::from_str(&filled(asl)).expect("the filled ASL is JSON");
            assert_eq!(got, want, "definition of {key} differs from its filled ASL");
            // Every definition gives the run lock back at its end (the abort machine acts
            // as a run that took it): the ARN of its published version is filled in, so a
            // run keeps the code it started with across an apply.
            // The fleet takes no lock: it calls preflight and starts the cells' own runs,
            // each the version this apply published.
            let (function, machines) = if key == "fleet" {
                ("preflight", vec!["prepare", "switchover"])
            } else {
                ("release-lock", vec![])
            };
            assert!(
                text.contains(&format!("\"{}\"", function_version_arn(function))),
                "definition of {key} invokes no published function version"
            );
            for machine in machines {
                assert!(
                    text.contains(&format!("\"{}\"", state_machine_version_arn(machine))),
                    "definition of {key} does not start the published version of {machine}"
                );
            }
            rendered_names.insert(key);
        }
    }
    let asl_names: BTreeSet<String> = files.keys().cloned().collect();
    assert_eq!(
        rendered_names, asl_names,
        "one state machine per state-machine/*.asl.json"
    );
}

/// `true` when `body` sets `key` to the literal `true`.
fn is_true(body: &Body, key: &str) -> bool {
    matches!(attribute(body, key), Some(Expression::Bool(true)))
}

/// The nested block `name` of `body`, if any.
fn nested<'a>(body: &'a Body, name: &str) -> Option<&'a Body> {
    body.blocks()
        .find(|b| b.identifier() == name)
        .map(|b| b.body())
}

#[test]
fn deploys_publish_versions_log_json_and_bound_every_role() {
    let (module, evaluated) = module();
    for lambda in module.resources_of("aws_lambda_function") {
        assert!(
            is_true(&lambda.body, "publish"),
            "{}: publish = true, so the state machines can name a version",
            lambda.name
        );
        let logging = nested(&lambda.body, "logging_config")
            .unwrap_or_else(|| panic!("{}: no logging_config", lambda.name));
        assert!(
            matches!(attribute(logging, "log_format"), Some(Expression::String(f)) if f == "JSON"),
            "{}: JSON logs",
            lambda.name
        );
        assert!(
            attribute(logging, "application_log_level").is_some(),
            "{}: the log level is the deployment's",
            lambda.name
        );
    }
    for machine in module.resources_of("aws_sfn_state_machine") {
        assert!(is_true(&machine.body, "publish"), "{}", machine.name);
    }
    // The live alias: one per function, for invokes by hand.
    let want: BTreeMap<String, usize> = functions().into_iter().map(|f| (f, 1)).collect();
    assert_eq!(instance_keys(&module, &evaluated, "aws_lambda_alias"), want);
    // Every role takes the permissions boundary, and everything that takes tags the tags.
    let roles = module.resources_of("aws_iam_role");
    assert!(!roles.is_empty());
    for role in roles {
        assert!(
            attribute(&role.body, "permissions_boundary").is_some(),
            "role {}: permissions_boundary",
            role.name
        );
    }
    for kind in [
        "aws_lambda_function",
        "aws_iam_role",
        "aws_cloudwatch_log_group",
        "aws_sfn_state_machine",
        "aws_cloudwatch_metric_alarm",
    ] {
        for r in module.resources_of(kind) {
            assert!(
                attribute(&r.body, "tags").is_some(),
                "{kind}.{}: tags",
                r.name
            );
        }
    }
}

/// Between prepare and switchover nothing else watches replication: each cell's writer
/// (the cluster holding the cell's name) alarms on slot lag and WAL kept.
#[test]
fn every_cells_writer_alarms_on_slot_lag_and_wal_kept() {
    let (module, evaluated) = module();
    let alarms: Vec<&Block> = module
        .resources_of("aws_cloudwatch_metric_alarm")
        .into_iter()
        .filter(|a| {
            attribute(&a.body, "namespace")
                .is_some_and(|n| matches!(n, Expression::String(s) if s == "AWS/RDS"))
        })
        .collect();
    assert_eq!(
        alarms.len(),
        1,
        "one AWS/RDS alarm resource, for_each cell × metric"
    );
    let alarm = alarms[0];
    let dimensions = attribute(&alarm.body, "dimensions").expect("dimensions");
    let metric = attribute(&alarm.body, "metric_name").expect("metric_name");
    let metrics = evaluated.per_instance(alarm, metric);
    let mut got = BTreeMap::new();
    for (key, dims) in evaluated.per_instance(alarm, dimensions) {
        let dims: serde_json::Value =
            serde_json::to_value(&dims).expect("dimensions are an object");
        got.insert(
            key.clone(),
            (
                metrics[&key].as_str().expect("metric name").to_owned(),
                dims["DBClusterIdentifier"]
                    .as_str()
                    .expect("cluster")
                    .to_owned(),
                dims["Role"].as_str().expect("role").to_owned(),
            ),
        );
    }
    let mut want = BTreeMap::new();
    for cell in ["cell-a", "cell-b"] {
        for m in ["OldestReplicationSlotLag", "TransactionLogsDiskUsage"] {
            want.insert(
                format!("{cell}-{m}"),
                (m.to_owned(), cell.to_owned(), "WRITER".to_owned()),
            );
        }
    }
    assert_eq!(got, want);
    assert_eq!(
        module.resources_of("aws_cloudwatch_dashboard").len(),
        1,
        "one dashboard for the deployment"
    );
}

/// Every instance key of resources of `kind`, with how many times each occurs.
fn instance_keys(module: &Module, evaluated: &Evaluated, kind: &str) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    for block in module.resources_of(kind) {
        let instances = evaluated.instances[&(block.kind.clone(), block.name.clone())]
            .clone()
            .unwrap_or_default();
        for (key, _) in instances {
            *keys.entry(key).or_insert(0) += 1;
        }
    }
    keys
}

#[test]
fn one_lambda_and_one_role_per_function() {
    let (module, evaluated) = module();
    let want: BTreeMap<String, usize> = functions().into_iter().map(|f| (f, 1)).collect();

    let lambdas = module.resources_of("aws_lambda_function");
    assert!(
        lambdas
            .iter()
            .all(|l| attribute(&l.body, "for_each").is_some()),
        "every aws_lambda_function is one per function (for_each)"
    );
    assert_eq!(
        instance_keys(&module, &evaluated, "aws_lambda_function"),
        want,
        "aws_lambda_function instances vs state-machine/functions.json"
    );

    // The function roles: every for_each role; the state machines' single role is not one.
    let function_roles: Vec<&Block> = module
        .resources_of("aws_iam_role")
        .into_iter()
        .filter(|r| attribute(&r.body, "for_each").is_some())
        .collect();
    let mut role_keys = BTreeMap::new();
    let mut role_arns = BTreeMap::new();
    for role in &function_roles {
        for (key, _) in evaluated.instances[&(role.kind.clone(), role.name.clone())]
            .clone()
            .unwrap_or_default()
        {
            *role_keys.entry(key.clone()).or_insert(0) += 1;
            role_arns.insert(
                field(&fake_instance(&role.kind, &role.name, &key), "arn").to_string(),
                key,
            );
        }
    }
    assert_eq!(
        role_keys, want,
        "function aws_iam_role instances vs functions.json"
    );

    // Each Lambda runs as the role of its own function.
    for lambda in lambdas {
        let role = attribute(&lambda.body, "role").expect("a Lambda has a role");
        for (function, arn) in evaluated.per_instance(lambda, role) {
            assert_eq!(
                role_arns.get(&arn.to_string()),
                Some(&function),
                "Lambda {function} runs as {arn}, not its own role"
            );
        }
    }
}

/// `(function, statements)` of every function's role policy.
fn function_policies(
    module: &Module,
    evaluated: &Evaluated,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut policies: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for block in module.resources_of("aws_iam_role_policy") {
        let role = attribute(&block.body, "role").expect("a role policy names its role");
        let policy = attribute(&block.body, "policy").expect("a role policy has a policy");
        let roles = evaluated.per_instance(block, role);
        for (key, document) in evaluated.per_instance(block, policy) {
            let text = document.as_str().expect("the policy is a JSON string");
            let json: serde_json::Value = serde_json::from_str(text).expect("the policy is JSON");
            let statements = json["Statement"]
                .as_array()
                .unwrap_or_else(|| panic!("policy {}.{key} has no Statement list", block.name))
                .clone();
            // The role it attaches to says whose it is: a function's role or the states role.
            let owner = match roles[&key].as_str() {
                Some(id)
                    if id.starts_with("aws_iam_role.")
                        && id.ends_with(&format!("[{key}]"))
                        && !key.is_empty() =>
                {
                    key.clone()
                }
                Some(id) => id.to_owned(),
                None => panic!("policy {}.{key} names no role", block.name),
            };
            policies.entry(owner).or_default().extend(statements);
        }
    }
    policies
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().expect("a string").to_owned())
            .collect(),
        other => panic!("not a string or list of strings: {other}"),
    }
}

/// Actions AWS cannot scope to a resource (or scopes only by condition): the only ones a
/// statement may grant on `"*"`.
const UNSCOPABLE: [&str; 17] = [
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
];

#[test]
fn policies_grant_only_named_actions_and_only_rename_clusters_renames() {
    let (module, evaluated) = module();
    let policies = function_policies(&module, &evaluated);
    let functions = functions();
    for function in &functions {
        assert!(
            policies.contains_key(function),
            "no policy on the role of {function}"
        );
    }
    let also_unscopable = [
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
        "ecs:ListTasks",
    ];
    let mut renamers = BTreeSet::new();
    for (owner, statements) in &policies {
        for statement in statements {
            assert_eq!(
                statement["Effect"], "Allow",
                "{owner}: only Allow statements"
            );
            let actions = strings(&statement["Action"]);
            let resources = strings(&statement["Resource"]);
            assert!(
                !resources.is_empty(),
                "{owner}: a statement with no resource"
            );
            for action in &actions {
                assert!(!action.contains('*'), "{owner}: wildcard action {action:?}");
                if action == "rds:ModifyDBCluster" {
                    renamers.insert(owner.clone());
                }
            }
            if resources.iter().any(|r| r == "*") {
                for action in &actions {
                    assert!(
                        UNSCOPABLE.contains(&action.as_str())
                            || also_unscopable.contains(&action.as_str()),
                        "{owner}: {action} on Resource \"*\", but AWS can scope it"
                    );
                }
                if actions.iter().any(|a| a == "ecs:ListTasks") {
                    assert!(
                        statement["Condition"]["ArnEquals"]["ecs:cluster"].is_array(),
                        "{owner}: ecs:ListTasks on \"*\" without an ecs:cluster condition"
                    );
                }
            }
            // Logs: a function writes only to its own log group.
            if functions.contains(owner) && actions.iter().any(|a| a == "logs:PutLogEvents") {
                let own = format!("aws_cloudwatch_log_group/function/{owner}:*");
                assert!(
                    resources.iter().all(|r| r.ends_with(&own)),
                    "{owner}: writes logs to {resources:?}, not only its own log group"
                );
            }
        }
    }
    assert_eq!(
        renamers,
        BTreeSet::from(["rename-clusters".to_owned()]),
        "rds:ModifyDBCluster is rename-clusters' alone"
    );

    // rename-clusters renames the cells' clusters only: blue, green and blue's parked name.
    let rename_resources: BTreeSet<String> = policies["rename-clusters"]
        .iter()
        .filter(|s| {
            strings(&s["Action"])
                .iter()
                .any(|a| a == "rds:ModifyDBCluster")
        })
        .flat_map(|s| strings(&s["Resource"]))
        .collect();
    let rds = format!("arn:aws:rds:{REGION}:{ACCOUNT}:cluster:");
    let want: BTreeSet<String> = [
        "cell-a",
        "cell-a-green",
        "cell-a-blue-*",
        "cell-b",
        "cell-b-green",
        "cell-b-blue-*",
    ]
    .iter()
    .map(|c| format!("{rds}{c}"))
    .collect();
    assert_eq!(rename_resources, want);

    // Snapshots: snapshot-cluster takes blue's before the upgrade; close-rollback-window
    // the parked old blue's last one, never a cluster under blue's own name (green's,
    // after the switch).
    let resources_of = |function: &str, action: &str| -> BTreeSet<String> {
        policies[function]
            .iter()
            .filter(|s| strings(&s["Action"]).iter().any(|a| a == action))
            .flat_map(|s| strings(&s["Resource"]))
            .collect()
    };
    let snapshotters: BTreeSet<String> = policies
        .iter()
        .filter(|(_, statements)| {
            statements.iter().any(|s| {
                strings(&s["Action"])
                    .iter()
                    .any(|a| a == "rds:CreateDBClusterSnapshot")
            })
        })
        .map(|(owner, _)| owner.clone())
        .collect();
    assert_eq!(
        snapshotters,
        BTreeSet::from([
            "close-rollback-window".to_owned(),
            "snapshot-cluster".to_owned()
        ]),
        "functions that may snapshot a cluster"
    );
    let snapshot = format!("arn:aws:rds:{REGION}:{ACCOUNT}:cluster-snapshot:");
    let cells = ["cell-a", "cell-b"];
    let pre_upgrade: BTreeSet<String> = cells
        .iter()
        .map(|c| format!("{snapshot}{c}-pre-upgrade-*"))
        .collect();
    let want: BTreeSet<String> = cells
        .iter()
        .map(|c| format!("{rds}{c}"))
        .chain(pre_upgrade.iter().cloned())
        .collect();
    assert_eq!(
        resources_of("snapshot-cluster", "rds:CreateDBClusterSnapshot"),
        want,
        "snapshot-cluster snapshots blue"
    );
    let finals: BTreeSet<String> = cells
        .iter()
        .map(|c| format!("{snapshot}{c}-blue-*-final"))
        .collect();
    let want: BTreeSet<String> = cells
        .iter()
        .map(|c| format!("{rds}{c}-blue-*"))
        .chain(finals.iter().cloned())
        .collect();
    assert_eq!(
        resources_of("close-rollback-window", "rds:CreateDBClusterSnapshot"),
        want,
        "close-rollback-window snapshots the parked old blue only"
    );
    for action in ["rds:AddTagsToResource", "rds:DescribeDBClusterSnapshots"] {
        assert_eq!(
            resources_of("snapshot-cluster", action),
            pre_upgrade,
            "snapshot-cluster: {action}"
        );
        assert_eq!(
            resources_of("close-rollback-window", action),
            finals,
            "close-rollback-window: {action}"
        );
    }

    // Deletions: delete-old-cluster alone, and only the parked old blue `<blue>-blue-*` and
    // instances so named: never blue's own identifier (green's, after the switch), never
    // green's, never the account's `db:*`.
    for action in ["rds:DeleteDBCluster", "rds:DeleteDBInstance"] {
        let deleters: BTreeSet<String> = policies
            .iter()
            .filter(|(_, statements)| {
                statements
                    .iter()
                    .any(|s| strings(&s["Action"]).iter().any(|a| a == action))
            })
            .map(|(owner, _)| owner.clone())
            .collect();
        assert_eq!(
            deleters,
            BTreeSet::from(["delete-old-cluster".to_owned()]),
            "functions that may {action}"
        );
    }
    let want: BTreeSet<String> = cells.iter().map(|c| format!("{rds}{c}-blue-*")).collect();
    assert_eq!(
        resources_of("delete-old-cluster", "rds:DeleteDBCluster"),
        want,
        "delete-old-cluster deletes the parked old blue only"
    );
    let db = format!("arn:aws:rds:{REGION}:{ACCOUNT}:db:");
    let want: BTreeSet<String> = cells.iter().map(|c| format!("{db}{c}-blue-*")).collect();
    assert_eq!(
        resources_of("delete-old-cluster", "rds:DeleteDBInstance"),
        want,
        "delete-old-cluster deletes the parked old blue's instances only"
    );
    // It reads the final snapshot (never takes one) and takes no login: it never connects.
    assert_eq!(
        resources_of("delete-old-cluster", "rds:DescribeDBClusterSnapshots"),
        finals,
        "delete-old-cluster: rds:DescribeDBClusterSnapshots"
    );
    let journals: BTreeSet<String> = [
        format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/switchyard/cell-a/journal/*"),
        format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/ops/cell-b/journal/*"),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        resources_of("delete-old-cluster", "ssm:GetParameter"),
        journals,
        "delete-old-cluster reads the journal and no other parameter"
    );

    // Journal writes: only the functions whose code writes the journal.
    let writers: BTreeSet<String> = policies
        .iter()
        .filter(|(_, statements)| {
            statements.iter().any(|s| {
                strings(&s["Action"])
                    .iter()
                    .any(|a| a == "ssm:PutParameter" || a == "ssm:DeleteParameter")
            })
        })
        .map(|(owner, _)| owner.clone())
        .collect();
    let want: BTreeSet<String> = [
        "acquire-lock",
        "release-lock",
        "scale-services",
        "pause-pgbouncer",
        // The abort direction marks the run aborting; resume-pgbouncer marks it switched.
        "restore-writes",
        "abandon-prepare",
        "finalize-replication",
        "rename-clusters",
        "refresh-nlb-target",
        "drop-downstream-subscriptions",
        "recreate-downstream-subscriptions",
        "resume-pgbouncer",
        // Not the journal: the replication role's password, rotated once per run.
        "start-replication",
        // Not close-rollback-window nor delete-old-cluster: they read the switched
        // decision and keep it.
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(writers, want, "functions that may write SSM");
    // start-replication writes the cells' replication passwords and nothing else.
    let rotated: BTreeSet<String> = policies["start-replication"]
        .iter()
        .filter(|s| {
            strings(&s["Action"])
                .iter()
                .any(|a| a == "ssm:PutParameter")
        })
        .flat_map(|s| strings(&s["Resource"]))
        .collect();
    let ssm = format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/");
    let want: BTreeSet<String> = [
        format!("{ssm}switchyard/cell-a/replication"),
        format!("{ssm}ops/cell-b/replication"),
    ]
    .into_iter()
    .collect();
    assert_eq!(rotated, want, "start-replication's SSM writes");

    // Journal reads: every function that changes the cell checks the lock (the fencing
    // token) and the run's decision; of the read-only ones, preflight reads the
    // downstream subscriptions' entries.
    let readers: BTreeSet<String> = policies
        .iter()
        .filter(|(_, statements)| {
            statements.iter().any(|s| {
                strings(&s["Action"])
                    .iter()
                    .any(|a| a == "ssm:GetParameters")
                    && strings(&s["Resource"])
                        .iter()
                        .any(|r| r.contains("/journal/"))
            })
        })
        .map(|(owner, _)| owner.clone())
        .collect();
    let read_only = ["check-replication", "verify-data"];
    let want: BTreeSet<String> = functions
        .iter()
        .filter(|f| !read_only.contains(&f.as_str()))
        .cloned()
        .collect();
    assert_eq!(readers, want, "functions that read the journal");
}

#[test]
fn state_machines_invoke_exactly_the_functions() {
    let (module, evaluated) = module();
    let policies = function_policies(&module, &evaluated);
    let functions = functions();
    let invoked: BTreeSet<String> = policies
        .iter()
        .filter(|(owner, _)| !functions.contains(*owner))
        .flat_map(|(_, statements)| statements.iter())
        .filter(|s| {
            strings(&s["Action"])
                .iter()
                .any(|a| a == "lambda:InvokeFunction")
        })
        .flat_map(|s| strings(&s["Resource"]))
        .collect();
    let want: BTreeSet<String> = functions
        .iter()
        .flat_map(|f| [function_arn(f), format!("{}:*", function_arn(f))])
        .collect();
    assert_eq!(
        invoked, want,
        "lambda:InvokeFunction resources of the state machines' role"
    );
}

#[test]
fn templatefile_refuses_an_undefined_variable() {
    let dir = std::env::temp_dir().join(format!("switchyard-infra-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("t.tpl");
    std::fs::write(
        &path,
        "{\"a\": \"${known}\", \"b\": \"${unknown}\", \"c\": \"$${escaped}\"}",
    )
    .expect("write");
    let ctx = terraform_functions();
    let call = |vars: &str| {
        let expr: Expression = format!("templatefile({:?}, {vars})", path.to_string_lossy())
            .parse()
            .expect("an expression");
        expr.evaluate(&ctx)
    };
    let err = call("{ known = \"x\" }").expect_err("unknown is not a var");
    assert!(err.to_string().contains("unknown"), "{err}");
    let ok = call("{ known = \"x\", unknown = \"y\" }").expect("all vars given");
    assert_eq!(
        ok,
        Value::from("{\"a\": \"x\", \"b\": \"y\", \"c\": \"${escaped}\"}")
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Each cell's document lands in SSM at `/<prefix>/cells/<cell_id>`, as given; and the
/// plan refuses a document that names other clusters or parameters than the `cells` map
/// the policies are scoped to: there is one description of a cell, not two that drift.
#[test]
fn cell_documents_are_kept_in_ssm_and_must_name_what_the_policies_are_scoped_to() {
    let (module, evaluated) = module();
    let parameter = module
        .resources_of("aws_ssm_parameter")
        .into_iter()
        .find(|r| r.name == "cell_document")
        .expect("aws_ssm_parameter.cell_document");
    let names =
        evaluated.per_instance(parameter, attribute(&parameter.body, "name").expect("name"));
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![("cell-a".to_owned(), Value::from("/switchyard/cells/cell-a"))],
        "one parameter per cell that has a document"
    );
    let values = evaluated.per_instance(
        parameter,
        attribute(&parameter.body, "value").expect("value"),
    );
    assert_eq!(values["cell-a"], Value::from(cell_a_document()));

    let condition = nested(&parameter.body, "lifecycle")
        .and_then(|l| nested(l, "precondition"))
        .and_then(|p| attribute(p, "condition"))
        .expect("a precondition");
    let holds = |document: serde_json::Value| {
        let mut ctx = evaluated.context();
        let mut each = Map::new();
        each.insert("key".to_owned(), Value::from("cell-a"));
        each.insert("value".to_owned(), json_to_value(document));
        ctx.declare_var("each", Value::Object(each));
        condition.evaluate(&ctx).expect("the condition evaluates")
    };
    let good: serde_json::Value = serde_json::from_str(&cell_a_document()).expect("JSON");
    assert_eq!(holds(good.clone()), Value::Bool(true));
    for (field, pointer, other) in [
        ("green", "/green/cluster_identifier", "cell-a-green-2"),
        (
            "orchestrator",
            "/credentials/orchestrator_parameter",
            "/other/orchestrator",
        ),
        (
            "pgbouncer",
            "/pgbouncer/admin_credentials_parameter",
            "/other/admin",
        ),
        (
            "downstream",
            "/downstream/0/credentials_parameter",
            "/other/search",
        ),
        ("cell_id", "/cell_id", "cell-z"),
    ] {
        let mut drifted = good.clone();
        *drifted.pointer_mut(pointer).expect(field) = serde_json::Value::from(other);
        assert_eq!(
            holds(drifted),
            Value::Bool(false),
            "{field} differs from the map"
        );
    }
}

/// Every execution that ends, of every state machine of the deployment (the fleet and
/// published versions included), reaches the executions topic with its ARN.
#[test]
fn every_ended_execution_reaches_the_executions_topic_with_its_arn() {
    let (module, evaluated) = module();
    let one = |kind: &str, name: &str| {
        module
            .resources_of(kind)
            .into_iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{kind}.{name}"))
    };
    let rule = one("aws_cloudwatch_event_rule", "execution_ended");
    let pattern = evaluated.per_instance(
        rule,
        attribute(&rule.body, "event_pattern").expect("pattern"),
    );
    let pattern: serde_json::Value =
        serde_json::from_str(pattern[""].as_str().expect("JSON text")).expect("JSON");
    assert_eq!(pattern["source"], serde_json::json!(["aws.states"]));
    let statuses = pattern["detail"]["status"].as_array().expect("statuses");
    for status in ["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"] {
        assert!(statuses.contains(&serde_json::json!(status)), "{status}");
    }
    let prefix = pattern["detail"]["stateMachineArn"][0]["prefix"]
        .as_str()
        .expect("a prefix");
    // Each state machine's ARN (and so each version's) starts with the prefix.
    for machine in module.resources_of("aws_sfn_state_machine") {
        for (key, name) in
            evaluated.per_instance(machine, attribute(&machine.body, "name").expect("name"))
        {
            let arn = format!(
                "arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{}",
                name.as_str().expect("name")
            );
            assert!(
                arn.starts_with(prefix),
                "{}[{key}]: {arn} does not match {prefix}",
                machine.name
            );
            assert!(format!("{arn}:3").starts_with(prefix));
        }
    }
    let target = one("aws_cloudwatch_event_target", "execution_ended");
    let arn = evaluated.per_instance(target, attribute(&target.body, "arn").expect("arn"));
    assert_eq!(
        arn[""],
        Value::from("arn:aws:fake:eu-west-1:123456789012:aws_sns_topic/executions/")
    );
    let transformer = nested(&target.body, "input_transformer").expect("input_transformer");
    let paths = evaluated.per_instance(
        target,
        attribute(transformer, "input_paths").expect("paths"),
    );
    let Value::Object(paths) = &paths[""] else {
        panic!("input_paths is an object")
    };
    assert_eq!(paths["execution"], Value::from("$.detail.executionArn"));
    let template = evaluated.per_instance(
        target,
        attribute(transformer, "input_template").expect("template"),
    );
    let template = template[""].as_str().expect("text");
    assert!(
        template.contains("\"execution\": <execution>")
            && template.contains("report --execution-arn <execution>"),
        "{template}"
    );
}
