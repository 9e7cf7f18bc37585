//! Loading and validating a definition: every field is implemented or rejected by name.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;

use crate::choice::{self, Branch};
use crate::definition::{
    Catcher, Concurrency, Definition, Kind, Machine, MapState, Parallel, Retrier, Source, State,
    Task, Threshold, Tolerance, Transition, WaitFor, Work,
};
use crate::error::{ALL, KNOWN};
use crate::path::PathExpr;
use crate::template::Template;

/// Why a definition was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadErrorKind {
    /// Not JSON, or not an object where one is needed.
    InvalidJson,
    /// A field that ASL does not define for this place.
    UnknownField,
    /// An ASL field this executor does not implement.
    UnsupportedField,
    /// A `Type` that ASL does not define.
    UnknownStateType,
    /// An ASL state type this executor does not implement.
    UnsupportedStateType,
    MissingField,
    InvalidValue,
    /// `StartAt`, `Next` or `Default` names no state of its scope.
    UnknownTarget,
    DuplicateState,
    UnreachableState,
}

/// A definition refused at load, naming the state and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LoadError {
    pub kind: LoadErrorKind,
    /// `None` for top-level (or branch-level) fields.
    pub state: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl LoadError {
    fn describe(&self) -> String {
        let place = match (&self.state, &self.field) {
            (Some(state), Some(field)) => format!("state `{state}`, field `{field}`"),
            (Some(state), None) => format!("state `{state}`"),
            (None, Some(field)) => format!("top level, field `{field}`"),
            (None, None) => "definition".to_owned(),
        };
        format!("{place}: {}", self.message)
    }
}

/// ASL fields (JSONPath and JSONata) this executor knows but does not implement.
const UNSUPPORTED: &[&str] = &[
    "HeartbeatSeconds",
    "HeartbeatSecondsPath",
    "TimeoutSecondsPath",
    "Credentials",
    "Arguments",
    "Output",
    "Assign",
    "ItemReader",
    "ItemBatcher",
    "ResultWriter",
    "JitterStrategy",
    "QueryLanguage",
];

/// The largest `TimeoutSeconds` Step Functions accepts.
const MAX_TIMEOUT_SECONDS: u64 = 99_999_999;

/// The fields of one JSON object, consumed one by one; leftovers are errors.
struct Fields<'a> {
    state: Option<&'a str>,
    prefix: String,
    map: &'a Map<String, Value>,
    taken: HashSet<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(state: Option<&'a str>, prefix: &str, map: &'a Map<String, Value>) -> Self {
        Self {
            state,
            prefix: prefix.to_owned(),
            map,
            taken: HashSet::new(),
        }
    }

    fn err(&self, kind: LoadErrorKind, field: &str, message: impl Into<String>) -> LoadError {
        LoadError {
            kind,
            state: self.state.map(str::to_owned),
            field: Some(format!("{}{field}", self.prefix)),
            message: message.into(),
        }
    }

    fn take(&mut self, field: &'static str) -> Option<&'a Value> {
        let (key, value) = self.map.get_key_value(field)?;
        self.taken.insert(key.as_str());
        Some(value)
    }

    fn string(&mut self, field: &'static str) -> Result<Option<&'a str>, LoadError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(LoadErrorKind::InvalidValue, field, "must be a string")),
        }
    }

    fn required_string(&mut self, field: &'static str) -> Result<&'a str, LoadError> {
        self.string(field)?
            .ok_or_else(|| self.err(LoadErrorKind::MissingField, field, "is required"))
    }

    fn integer(
        &mut self,
        field: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, LoadError> {
        match self.take(field) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.err(
                    LoadErrorKind::InvalidValue,
                    field,
                    format!("must be an integer from {min} to {max}, got {value}"),
                )),
            },
        }
    }

    /// InputPath/OutputPath/ResultPath: absent is `$`, null is `None`.
    fn reference_path(&mut self, field: &'static str) -> Result<Option<PathExpr>, LoadError> {
        let text = match self.take(field) {
            None => "$",
            Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(self.err(
                    LoadErrorKind::InvalidValue,
                    field,
                    "must be a reference path string or null",
                ))
            }
        };
        PathExpr::parse_reference(text)
            .map(Some)
            .map_err(|e| self.err(LoadErrorKind::InvalidValue, field, e))
    }

    fn template(&mut self, field: &'static str) -> Result<Option<Template>, LoadError> {
        self.take(field)
            .map(|value| {
                if field == "ResultSelector" && !value.is_object() {
                    return Err(self.err(LoadErrorKind::InvalidValue, field, "must be an object"));
                }
                Template::compile(value)
                    .map_err(|e| self.err(LoadErrorKind::InvalidValue, field, e))
            })
            .transpose()
    }

    /// Errors on the first field not taken.
    fn finish(self, what: &str) -> Result<(), LoadError> {
        for key in self.map.keys() {
            if self.taken.contains(key.as_str()) {
                continue;
            }
            return Err(if UNSUPPORTED.contains(&key.as_str()) {
                self.err(
                    LoadErrorKind::UnsupportedField,
                    key,
                    format!("is not implemented by the local executor ({what})"),
                )
            } else {
                self.err(
                    LoadErrorKind::UnknownField,
                    key,
                    format!("is not a field of {what}"),
                )
            });
        }
        Ok(())
    }
}

impl Definition {
    /// Parses and validates a definition (JSONPath query language).
    pub fn from_json(json: &str) -> Result<Self, LoadError> {
        let value: Value = serde_json::from_str(json).map_err(|e| LoadError {
            kind: LoadErrorKind::InvalidJson,
            state: None,
            field: None,
            message: format!("not JSON: {e}"),
        })?;
        let map = value.as_object().ok_or_else(|| LoadError {
            kind: LoadErrorKind::InvalidJson,
            state: None,
            field: None,
            message: "a definition is a JSON object".into(),
        })?;
        let mut fields = Fields::new(None, "", map);
        let comment = fields.string("Comment")?.map(str::to_owned);
        let version = fields.string("Version")?.map(str::to_owned);
        let timeout = fields
            .integer("TimeoutSeconds", 1, MAX_TIMEOUT_SECONDS)?
            .map(Duration::from_secs);
        if let Some(language) = fields.string("QueryLanguage")? {
            if language != "JSONPath" {
                return Err(fields.err(
                    LoadErrorKind::UnsupportedField,
                    "QueryLanguage",
                    format!("only JSONPath is implemented, not {language}"),
                ));
            }
        }
        let mut names = HashSet::new();
        let machine = load_machine(&mut fields, &mut names)?;
        fields.finish("a state machine")?;
        Ok(Self {
            comment,
            version,
            timeout,
            machine,
        })
    }
}

/// `StartAt` and `States` of the top level or a branch (taken from `fields`).
fn load_machine(
    fields: &mut Fields<'_>,
    names: &mut HashSet<String>,
) -> Result<Machine, LoadError> {
    let start_at = fields.required_string("StartAt")?.to_owned();
    let states_map = match fields.take("States") {
        Some(Value::Object(map)) if !map.is_empty() => map,
        Some(_) => {
            return Err(fields.err(
                LoadErrorKind::InvalidValue,
                "States",
                "must be a non-empty object of states",
            ))
        }
        None => return Err(fields.err(LoadErrorKind::MissingField, "States", "is required")),
    };
    let mut states = Vec::with_capacity(states_map.len());
    let mut index = HashMap::new();
    for (name, value) in states_map {
        if !names.insert(name.clone()) {
            return Err(LoadError {
                kind: LoadErrorKind::DuplicateState,
                state: Some(name.clone()),
                field: None,
                message: "state names must be unique across the whole definition, \
                          Parallel branches included"
                    .into(),
            });
        }
        index.insert(name.clone(), states.len());
        states.push(load_state(name, value, names)?);
    }
    let machine = Machine {
        start_at,
        states,
        index,
    };
    check_targets(fields, &machine)?;
    Ok(machine)
}

/// Every transition lands on a state of the same scope, and every state is reachable.
fn check_targets(fields: &Fields<'_>, machine: &Machine) -> Result<(), LoadError> {
    if !machine.index.contains_key(&machine.start_at) {
        return Err(fields.err(
            LoadErrorKind::UnknownTarget,
            "StartAt",
            format!("names no state in its `States`: `{}`", machine.start_at),
        ));
    }
    let targets = |state: &State| -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Transition::Next(next) = &state.transition {
            out.push(("Next".to_owned(), next.clone()));
        }
        let work = match &state.kind {
            Kind::Task(_) | Kind::Parallel(_) | Kind::Map(_) => state.kind.work(),
            Kind::Choice { choices, default } => {
                for (i, branch) in choices.iter().enumerate() {
                    out.push((format!("Choices[{i}].Next"), branch.next.clone()));
                }
                if let Some(default) = default {
                    out.push(("Default".to_owned(), default.clone()));
                }
                None
            }
            _ => None,
        };
        for (i, catcher) in work
            .map(|w| w.catch.as_slice())
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            out.push((format!("Catch[{i}].Next"), catcher.next.clone()));
        }
        out
    };
    for state in &machine.states {
        for (field, target) in targets(state) {
            if !machine.index.contains_key(&target) {
                return Err(LoadError {
                    kind: LoadErrorKind::UnknownTarget,
                    state: Some(state.name.clone()),
                    field: Some(field),
                    message: format!(
                        "names `{target}`, which is not a state of the same scope \
                         (a branch cannot jump out of its Parallel or Map)"
                    ),
                });
            }
        }
    }
    let mut reached = HashSet::from([machine.start_at.as_str()]);
    let mut queue = vec![machine.state(&machine.start_at)];
    while let Some(state) = queue.pop() {
        for (_, target) in targets(state) {
            let target = machine.state(&target);
            if reached.insert(target.name.as_str()) {
                queue.push(target);
            }
        }
    }
    if let Some(state) = machine
        .states
        .iter()
        .find(|state| !reached.contains(state.name.as_str()))
    {
        return Err(LoadError {
            kind: LoadErrorKind::UnreachableState,
            state: Some(state.name.clone()),
            field: None,
            message: "no transition leads here from StartAt".into(),
        });
    }
    Ok(())
}

fn load_state(name: &str, value: &Value, names: &mut HashSet<String>) -> Result<State, LoadError> {
    let map = value.as_object().ok_or_else(|| LoadError {
        kind: LoadErrorKind::InvalidJson,
        state: Some(name.to_owned()),
        field: None,
        message: "a state is a JSON object".into(),
    })?;
    let mut f = Fields::new(Some(name), "", map);
    let type_name = f.required_string("Type")?;
    f.string("Comment")?;
    if let Some(language) = f.string("QueryLanguage")? {
        if language != "JSONPath" {
            return Err(f.err(
                LoadErrorKind::UnsupportedField,
                "QueryLanguage",
                format!("only JSONPath is implemented, not {language}"),
            ));
        }
    }
    let has_io = !matches!(type_name, "Fail");
    let (input_path, output_path) = if has_io {
        (
            f.reference_path("InputPath")?,
            f.reference_path("OutputPath")?,
        )
    } else {
        (
            PathExpr::parse_reference("$").ok(),
            PathExpr::parse_reference("$").ok(),
        )
    };
    let kind = match type_name {
        "Pass" => Kind::Pass {
            parameters: f.template("Parameters")?,
            result: f.take("Result").cloned(),
            result_path: f.reference_path("ResultPath")?,
        },
        "Task" => {
            let resource = f.required_string("Resource")?.to_owned();
            let child_execution = resource == crate::execute::START_EXECUTION_SYNC
                || resource == crate::execute::START_EXECUTION_SYNC_2;
            if resource.ends_with(".waitForTaskToken")
                || (resource.contains(".sync") && !child_execution)
            {
                return Err(f.err(
                    LoadErrorKind::UnsupportedField,
                    "Resource",
                    format!("the callback/sync integration `{resource}` is not implemented"),
                ));
            }
            let timeout = f
                .integer("TimeoutSeconds", 1, MAX_TIMEOUT_SECONDS)?
                .map(Duration::from_secs);
            Kind::Task(Box::new(Task {
                resource,
                timeout,
                work: load_work(&mut f)?,
            }))
        }
        "Parallel" => {
            let branches = match f.take("Branches") {
                Some(Value::Array(items)) if !items.is_empty() => items,
                Some(_) => {
                    return Err(f.err(
                        LoadErrorKind::InvalidValue,
                        "Branches",
                        "must be a non-empty array of {StartAt, States}",
                    ))
                }
                None => return Err(f.err(LoadErrorKind::MissingField, "Branches", "is required")),
            };
            let mut machines = Vec::with_capacity(branches.len());
            for (i, branch) in branches.iter().enumerate() {
                let prefix = format!("Branches[{i}].");
                let branch = branch.as_object().ok_or_else(|| {
                    f.err(
                        LoadErrorKind::InvalidValue,
                        &format!("Branches[{i}]"),
                        "must be an object",
                    )
                })?;
                let mut bf = Fields::new(Some(name), &prefix, branch);
                bf.string("Comment")?;
                machines.push(load_machine(&mut bf, names)?);
                bf.finish("a Parallel branch")?;
            }
            Kind::Parallel(Box::new(Parallel {
                branches: machines,
                work: load_work(&mut f)?,
            }))
        }
        "Choice" => {
            let choices = match f.take("Choices") {
                Some(Value::Array(items)) if !items.is_empty() => items,
                Some(_) => {
                    return Err(f.err(
                        LoadErrorKind::InvalidValue,
                        "Choices",
                        "must be a non-empty array of rules",
                    ))
                }
                None => return Err(f.err(LoadErrorKind::MissingField, "Choices", "is required")),
            };
            let choices = choices
                .iter()
                .enumerate()
                .map(|(i, rule)| choice::parse_branch(rule, &format!("Choices[{i}]")))
                .collect::<Result<Vec<Branch>, _>>()
                .map_err(|e| f.err(LoadErrorKind::InvalidValue, "Choices", e))?;
            Kind::Choice {
                choices,
                default: f.string("Default")?.map(str::to_owned),
            }
        }
        "Wait" => {
            let mut found = Vec::new();
            if let Some(seconds) = f.integer("Seconds", 0, MAX_TIMEOUT_SECONDS)? {
                found.push(("Seconds", WaitFor::Seconds(seconds)));
            }
            if let Some(text) = f.string("SecondsPath")? {
                let path = PathExpr::parse(text)
                    .map_err(|e| f.err(LoadErrorKind::InvalidValue, "SecondsPath", e))?;
                found.push(("SecondsPath", WaitFor::SecondsPath(path)));
            }
            if let Some(text) = f.string("Timestamp")? {
                let at = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
                    f.err(
                        LoadErrorKind::InvalidValue,
                        "Timestamp",
                        format!("`{text}` is not an RFC 3339 timestamp: {e}"),
                    )
                })?;
                found.push(("Timestamp", WaitFor::Timestamp(at)));
            }
            if let Some(text) = f.string("TimestampPath")? {
                let path = PathExpr::parse(text)
                    .map_err(|e| f.err(LoadErrorKind::InvalidValue, "TimestampPath", e))?;
                found.push(("TimestampPath", WaitFor::TimestampPath(path)));
            }
            if found.len() != 1 {
                let names: Vec<_> = found.iter().map(|(n, _)| *n).collect();
                return Err(f.err(
                    if found.is_empty() {
                        LoadErrorKind::MissingField
                    } else {
                        LoadErrorKind::InvalidValue
                    },
                    "Seconds",
                    format!(
                        "a Wait needs exactly one of Seconds, SecondsPath, Timestamp, \
                         TimestampPath; found {names:?}"
                    ),
                ));
            }
            Kind::Wait(found.remove(0).1)
        }
        "Succeed" => Kind::Succeed,
        "Fail" => {
            let mut source = |literal: &'static str, path: &'static str| {
                let literal_value = f.string(literal)?;
                let path_value = f.string(path)?;
                match (literal_value, path_value) {
                    (Some(_), Some(_)) => Err(f.err(
                        LoadErrorKind::InvalidValue,
                        path,
                        format!("`{literal}` and `{path}` exclude each other"),
                    )),
                    (Some(text), None) => Ok(Some(Source::Literal(text.to_owned()))),
                    (None, Some(text)) => PathExpr::parse(text)
                        .map(|p| Some(Source::Path(p)))
                        .map_err(|e| f.err(LoadErrorKind::InvalidValue, path, e)),
                    (None, None) => Ok(None),
                }
            };
            let error = source("Error", "ErrorPath")?;
            let cause = source("Cause", "CausePath")?;
            Kind::Fail { error, cause }
        }
        "Map" => Kind::Map(Box::new(load_map(name, &mut f, names)?)),
        other => {
            return Err(f.err(
                LoadErrorKind::UnknownStateType,
                "Type",
                format!(
                "`{other}` is not a state type (Task, Pass, Choice, Wait, Succeed, Fail, Parallel, Map)"
            ),
            ))
        }
    };
    let transition = match type_name {
        "Choice" | "Succeed" | "Fail" => Transition::Decided,
        _ => {
            let next = f.string("Next")?;
            let end = match f.take("End") {
                None => false,
                Some(Value::Bool(true)) => true,
                Some(_) => {
                    return Err(f.err(
                        LoadErrorKind::InvalidValue,
                        "End",
                        "must be true (leave it out otherwise)",
                    ))
                }
            };
            match (next, end) {
                (Some(next), false) => Transition::Next(next.to_owned()),
                (None, true) => Transition::End,
                (Some(_), true) => {
                    return Err(f.err(
                        LoadErrorKind::InvalidValue,
                        "End",
                        "`Next` and `End` exclude each other",
                    ))
                }
                (None, false) => {
                    return Err(f.err(
                        LoadErrorKind::MissingField,
                        "Next",
                        "a state needs exactly one of `Next` or `End: true`",
                    ))
                }
            }
        }
    };
    f.finish(&format!("a {type_name} state"))?;
    Ok(State {
        name: name.to_owned(),
        input_path,
        output_path,
        kind,
        transition,
    })
}

/// A Map's fields; its `Parameters` is the older name of `ItemSelector`.
fn load_map(
    name: &str,
    f: &mut Fields<'_>,
    names: &mut HashSet<String>,
) -> Result<MapState, LoadError> {
    let items_path = match f.take("ItemsPath") {
        None => PathExpr::parse_reference("$")
            .map_err(|e| f.err(LoadErrorKind::InvalidValue, "ItemsPath", e))?,
        Some(Value::String(text)) => PathExpr::parse_reference(text)
            .map_err(|e| f.err(LoadErrorKind::InvalidValue, "ItemsPath", e))?,
        Some(_) => {
            return Err(f.err(
                LoadErrorKind::InvalidValue,
                "ItemsPath",
                "must be a reference path string",
            ))
        }
    };
    let selector = f.template("ItemSelector")?;
    let legacy = f.template("Parameters")?;
    let item_selector =
        match (selector, legacy) {
            (Some(_), Some(_)) => return Err(f.err(
                LoadErrorKind::InvalidValue,
                "ItemSelector",
                "`ItemSelector` and `Parameters` exclude each other (Parameters is its older name)",
            )),
            (selector, legacy) => selector.or(legacy),
        };
    let processor_field =
        match (
            f.map.contains_key("ItemProcessor"),
            f.map.contains_key("Iterator"),
        ) {
            (true, true) => return Err(f.err(
                LoadErrorKind::InvalidValue,
                "ItemProcessor",
                "`ItemProcessor` and `Iterator` exclude each other (Iterator is its older name)",
            )),
            (true, false) => "ItemProcessor",
            (false, true) => "Iterator",
            (false, false) => {
                return Err(f.err(LoadErrorKind::MissingField, "ItemProcessor", "is required"))
            }
        };
    let processor = f
        .take(processor_field)
        .and_then(Value::as_object)
        .ok_or_else(|| {
            f.err(
                LoadErrorKind::InvalidValue,
                processor_field,
                "must be an object",
            )
        })?;
    let mut pf = Fields::new(Some(name), &format!("{processor_field}."), processor);
    pf.string("Comment")?;
    let mut distributed = false;
    if let Some(config) = pf.take("ProcessorConfig") {
        let config = config.as_object().ok_or_else(|| {
            pf.err(
                LoadErrorKind::InvalidValue,
                "ProcessorConfig",
                "must be an object",
            )
        })?;
        let mut cf = Fields::new(
            Some(name),
            &format!("{processor_field}.ProcessorConfig."),
            config,
        );
        distributed = match cf.string("Mode")? {
            None | Some("INLINE") => false,
            Some("DISTRIBUTED") => true,
            Some(other) => {
                return Err(cf.err(
                    LoadErrorKind::InvalidValue,
                    "Mode",
                    format!("must be INLINE or DISTRIBUTED, not {other}"),
                ))
            }
        };
        match cf.string("ExecutionType")? {
            None | Some("STANDARD") => {}
            Some(other) => {
                return Err(cf.err(
                    LoadErrorKind::UnsupportedField,
                    "ExecutionType",
                    format!("only STANDARD child executions are implemented, not {other}"),
                ))
            }
        }
        cf.finish("a ProcessorConfig")?;
    }
    let processor = load_machine(&mut pf, names)?;
    pf.finish(&format!("a Map's {processor_field}"))?;
    let max_concurrency = match (
        f.integer("MaxConcurrency", 0, u64::from(u32::MAX))?,
        f.string("MaxConcurrencyPath")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(f.err(
                LoadErrorKind::InvalidValue,
                "MaxConcurrencyPath",
                "`MaxConcurrency` and `MaxConcurrencyPath` exclude each other",
            ))
        }
        (Some(n), None) => Concurrency::Fixed(n),
        (None, Some(text)) => Concurrency::Path(
            PathExpr::parse_reference(text)
                .map_err(|e| f.err(LoadErrorKind::InvalidValue, "MaxConcurrencyPath", e))?,
        ),
        (None, None) => Concurrency::Fixed(0),
    };
    let threshold = |f: &mut Fields<'_>,
                     field: &'static str,
                     path_field: &'static str,
                     max: u64|
     -> Result<Option<Threshold>, LoadError> {
        match (f.integer(field, 0, max)?, f.string(path_field)?) {
            (Some(_), Some(_)) => Err(f.err(
                LoadErrorKind::InvalidValue,
                path_field,
                format!("`{field}` and `{path_field}` exclude each other"),
            )),
            (Some(n), None) => Ok(Some(Threshold::Fixed(n))),
            (None, Some(text)) => PathExpr::parse_reference(text)
                .map(|p| Some(Threshold::Path(p)))
                .map_err(|e| f.err(LoadErrorKind::InvalidValue, path_field, e)),
            (None, None) => Ok(None),
        }
    };
    let tolerance = Tolerance {
        count: threshold(
            f,
            "ToleratedFailureCount",
            "ToleratedFailureCountPath",
            u64::from(u32::MAX),
        )?,
        percentage: threshold(
            f,
            "ToleratedFailurePercentage",
            "ToleratedFailurePercentagePath",
            100,
        )?,
    };
    let label = f.string("Label")?;
    if !distributed {
        // Step Functions refuses these on an inline Map: a failed iteration fails it.
        let field = if tolerance.count.is_some() {
            Some("ToleratedFailureCount")
        } else if tolerance.percentage.is_some() {
            Some("ToleratedFailurePercentage")
        } else if label.is_some() {
            Some("Label")
        } else {
            None
        };
        if let Some(field) = field {
            return Err(f.err(
                LoadErrorKind::InvalidValue,
                field,
                "belongs to a Distributed Map (ProcessorConfig.Mode DISTRIBUTED) only",
            ));
        }
    }
    Ok(MapState {
        items_path,
        item_selector,
        processor,
        max_concurrency,
        distributed: distributed.then_some(tolerance),
        work: Work {
            parameters: None,
            parameters_json: None,
            result_selector: f.template("ResultSelector")?,
            result_path: f.reference_path("ResultPath")?,
            retry: load_list(f, "Retry", load_retrier)?,
            catch: load_list(f, "Catch", load_catcher)?,
        },
    })
}

fn load_work(f: &mut Fields<'_>) -> Result<Work, LoadError> {
    let parameters_json = f.map.get("Parameters").cloned();
    Ok(Work {
        parameters: f.template("Parameters")?,
        parameters_json,
        result_selector: f.template("ResultSelector")?,
        result_path: f.reference_path("ResultPath")?,
        retry: load_list(f, "Retry", load_retrier)?,
        catch: load_list(f, "Catch", load_catcher)?,
    })
}

fn load_list<T: WithErrors>(
    f: &mut Fields<'_>,
    field: &'static str,
    load: fn(&mut Fields<'_>) -> Result<T, LoadError>,
) -> Result<Vec<T>, LoadError> {
    let Some(value) = f.take(field) else {
        return Ok(Vec::new());
    };
    let items = value
        .as_array()
        .ok_or_else(|| f.err(LoadErrorKind::InvalidValue, field, "must be an array"))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("{field}[{i}].");
        let map = item.as_object().ok_or_else(|| {
            f.err(
                LoadErrorKind::InvalidValue,
                &format!("{field}[{i}]"),
                "must be an object",
            )
        })?;
        let mut inner = Fields::new(f.state, &prefix, map);
        inner.string("Comment")?;
        let errors = error_equals(&mut inner)?;
        if errors.iter().any(|e| e == ALL) && i + 1 != items.len() {
            return Err(inner.err(
                LoadErrorKind::InvalidValue,
                "ErrorEquals",
                format!("`{ALL}` must be in the last entry of `{field}`"),
            ));
        }
        out.push(load(&mut inner)?.with_errors(errors));
        inner.finish(&format!("a {field} entry"))?;
    }
    Ok(out)
}

fn error_equals(f: &mut Fields<'_>) -> Result<Vec<String>, LoadError> {
    let bad = |f: &Fields<'_>, message: String| {
        f.err(LoadErrorKind::InvalidValue, "ErrorEquals", message)
    };
    let items = match f.take("ErrorEquals") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => return Err(bad(f, "must be a non-empty array of error names".into())),
        None => return Err(f.err(LoadErrorKind::MissingField, "ErrorEquals", "is required")),
    };
    let mut errors = Vec::with_capacity(items.len());
    for item in items {
        let name = item
            .as_str()
            .ok_or_else(|| bad(f, "must hold strings".into()))?;
        if name.starts_with("States.") && !KNOWN.contains(&name) {
            return Err(bad(
                f,
                format!("`{name}` is not a predefined States.* error"),
            ));
        }
        errors.push(name.to_owned());
    }
    if errors.len() > 1 && errors.iter().any(|e| e == ALL) {
        return Err(bad(f, format!("`{ALL}` must appear alone")));
    }
    Ok(errors)
}

trait WithErrors {
    fn with_errors(self, errors: Vec<String>) -> Self;
}

impl WithErrors for Retrier {
    fn with_errors(self, errors: Vec<String>) -> Self {
        Self { errors, ..self }
    }
}

impl WithErrors for Catcher {
    fn with_errors(self, errors: Vec<String>) -> Self {
        Self { errors, ..self }
    }
}

fn load_retrier(f: &mut Fields<'_>) -> Result<Retrier, LoadError> {
    let interval = f
        .integer("IntervalSeconds", 1, MAX_TIMEOUT_SECONDS)?
        .unwrap_or(1);
    let max_attempts = f.integer("MaxAttempts", 0, 99_999_999)?.unwrap_or(3);
    let backoff_rate = match f.take("BackoffRate") {
        None => 2.0,
        Some(value) => match value.as_f64() {
            Some(rate) if rate >= 1.0 => rate,
            _ => {
                return Err(f.err(
                    LoadErrorKind::InvalidValue,
                    "BackoffRate",
                    format!("must be a number ≥ 1.0, got {value}"),
                ))
            }
        },
    };
    let max_delay = f
        .integer("MaxDelaySeconds", 1, 31_622_400)?
        .map(Duration::from_secs);
    if let Some(strategy) = f.string("JitterStrategy")? {
        if strategy != "NONE" {
            return Err(f.err(
                LoadErrorKind::UnsupportedField,
                "JitterStrategy",
                format!("`{strategy}` is not implemented by the local executor; only NONE"),
            ));
        }
    }
    Ok(Retrier {
        errors: Vec::new(),
        interval: Duration::from_secs(interval),
        max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
        backoff_rate,
        max_delay,
    })
}

fn load_catcher(f: &mut Fields<'_>) -> Result<Catcher, LoadError> {
    Ok(Catcher {
        errors: Vec::new(),
        next: f.required_string("Next")?.to_owned(),
        result_path: f.reference_path("ResultPath")?,
    })
}
