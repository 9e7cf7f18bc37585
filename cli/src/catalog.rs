//! The functions `invoke` knows, each with its payload's fields and an example, read from
//! `cli/functions.json`. That file is generated from every function's own `Input` type
//! (its JSON Schema) by the local harness's test `the_cli_catalogue_is_current`
//! (state-machine/local), which fails when a field changes and the file does not — so
//! `switchyard` lists the payloads without linking any function.

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One function: what it does, whether it changes the cell, its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    /// Its name in the definitions and its Lambda's suffix (`<prefix>-<name>`).
    pub name: String,
    /// What it does (its crate's description).
    pub summary: String,
    /// Whether it changes anything: then it acts as a run (`run_id`) and serves dry runs.
    pub changes_cell: bool,
    /// Its payload's fields: the cell document, the run, what the payload must hold, the
    /// rest.
    pub fields: Vec<Field>,
    /// A payload it accepts (its crate's `payloads/input.json`), the cell document left out.
    pub example: Value,
}

/// One payload field, from the function's `Input` type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    /// Its JSON type: `string`, `integer`, `boolean`, `object`, `string (date-time)`, …
    pub kind: String,
    /// Whether the payload must hold it.
    pub required: bool,
    /// The value taken when it is absent, where the type says one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The values it takes, when they are a closed set, each with what it means.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Choice>,
    /// Its documentation.
    pub description: String,
}

/// One value of a closed set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub value: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

const CATALOGUE: &str = include_str!("../functions.json");

/// Every function, in the order of `cli/functions.json`.
pub fn all() -> &'static [Function] {
    static FUNCTIONS: OnceLock<Vec<Function>> = OnceLock::new();
    // The file is generated and parsed by this crate's tests: an empty list here would
    // fail every one of them.
    FUNCTIONS.get_or_init(|| serde_json::from_str(CATALOGUE).unwrap_or_default())
}

/// The function called `name`.
pub fn get(name: &str) -> Option<&'static Function> {
    all().iter().find(|f| f.name == name)
}

/// Every function's name.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|f| f.name.as_str()).collect()
}

/// `invoke --help`'s list of functions.
pub fn list() -> String {
    let mut text = String::from("Functions (`invoke FUNCTION --help` lists its payload):\n");
    for f in all() {
        let marker = if f.changes_cell {
            ""
        } else {
            " (changes nothing)"
        };
        let _ = writeln!(
            text,
            "  {:<34} {}{marker}",
            f.name,
            first_sentence(&f.summary)
        );
    }
    text
}

impl Function {
    /// `invoke FUNCTION --help`: what it does, its fields, an example.
    pub fn help(&self, tool: &str) -> String {
        let mut text = format!("{}: {}\n", self.name, self.summary);
        if !self.changes_cell {
            text.push_str("It changes nothing: a dry run simply runs it.\n");
        }
        text.push_str(
            "\nPayload fields (`--set NAME=VALUE`; cell, run_id and force come from --cell, \
             --run-id and --force; `--payload FILE` takes a whole payload):\n",
        );
        for field in &self.fields {
            let mut head = field.kind.clone();
            if field.required {
                head.push_str(", required");
            }
            if let Some(default) = &field.default {
                let _ = write!(head, ", default {default}");
            }
            let _ = writeln!(text, "  {:<28} {head}", field.name);
            for line in wrap(&field.description, 82) {
                let _ = writeln!(text, "      {line}");
            }
            for choice in &field.values {
                let line = format!("      {:<10} {}", choice.value, choice.description);
                let _ = writeln!(text, "{}", line.trim_end());
            }
        }
        // The cell document in full goes under "cell": shown as `{…}`.
        const CELL: &str = "<the cell document>";
        let mut example = serde_json::Map::new();
        example.insert("cell".to_owned(), Value::String(CELL.to_owned()));
        if let Value::Object(fields) = &self.example {
            example.extend(fields.clone());
        }
        let json = serde_json::to_string_pretty(&Value::Object(example)).unwrap_or_default();
        let _ = writeln!(
            text,
            "\nExample payload (`{tool} invoke {} --payload FILE`, the whole cell document under \"cell\"):\n{}",
            self.name,
            json.replace(&format!("\"{CELL}\""), "{…}")
        );
        let mut flags = format!("{tool} invoke {} --cell cell.json", self.name);
        if self.example.get("run_id").is_some() {
            flags.push_str(" --run-id <run>");
        }
        if let Value::Object(fields) = &self.example {
            for (name, value) in fields.iter().filter(|(n, _)| *n != "run_id") {
                match value {
                    Value::String(s) => {
                        let _ = write!(flags, " --set {name}={s}");
                    }
                    _ => {
                        let _ = write!(flags, " --set {name}={value}");
                    }
                }
            }
        }
        let _ = writeln!(text, "As flags:\n  {flags} --dry-run");
        text
    }

    /// The function described by `schema`, its `Input` type's JSON Schema (as `schemars`
    /// writes it), with `example` (a payload it takes) minus its cell document.
    pub fn from_schema(
        name: &str,
        summary: &str,
        changes_cell: bool,
        schema: &Value,
        example: &Value,
    ) -> Self {
        let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields: Vec<Field> = schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(field_name, property)| {
                Field::of(
                    field_name,
                    property,
                    &defs,
                    required.contains(&field_name.as_str()),
                )
            })
            .collect();
        let mut example = example.clone();
        if let Value::Object(fields) = &mut example {
            fields.remove("cell");
        }
        // The cell, the run, then what the payload must hold, then the rest (a schema's
        // properties carry no order once they are a JSON object).
        fields.sort_by_key(|f| {
            let common = ["cell", "run_id", "force"]
                .iter()
                .position(|n| *n == f.name);
            (common.unwrap_or(3), !f.required, f.name.clone())
        });
        Self {
            name: name.to_owned(),
            summary: summary.trim().to_owned(),
            changes_cell,
            fields,
            example,
        }
    }
}

impl Field {
    fn of(name: &str, property: &Value, defs: &Value, required: bool) -> Self {
        let resolved = resolve(property, defs);
        let mut description = text_of(property);
        if description.is_empty() {
            description = text_of(&resolved);
        }
        let values = choices(&resolved, defs);
        Self {
            name: name.to_owned(),
            kind: kind(&resolved, defs),
            required,
            default: property
                .get("default")
                .or_else(|| resolved.get("default"))
                .cloned(),
            values,
            description,
        }
    }
}

/// `schema` with a `$ref` (or a one-element `allOf` around one) replaced by its definition.
fn resolve(schema: &Value, defs: &Value) -> Value {
    let reference = schema.get("$ref").or_else(|| {
        schema
            .get("allOf")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 1)
            .and_then(|a| a[0].get("$ref"))
    });
    match reference
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs.get(name))
    {
        Some(definition) => resolve(definition, defs),
        None => schema.clone(),
    }
}

/// The branches of a `oneOf`/`anyOf`, null left out (an optional field's).
fn branches(schema: &Value, defs: &Value) -> Option<Vec<Value>> {
    let list = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)?;
    Some(
        list.iter()
            .map(|b| resolve(b, defs))
            .filter(|b| b.get("type") != Some(&Value::String("null".to_owned())))
            .collect(),
    )
}

fn kind(schema: &Value, defs: &Value) -> String {
    if let Some(branches) = branches(schema, defs) {
        let kinds: Vec<String> = branches.iter().map(|b| kind(b, defs)).collect();
        let mut unique = kinds.clone();
        unique.dedup();
        return unique.join(" or ");
    }
    let base = match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ if schema.get("const").is_some() || schema.get("enum").is_some() => "string".to_owned(),
        _ => "any".to_owned(),
    };
    match schema.get("format").and_then(Value::as_str) {
        Some(format) if !format.starts_with("uint") && !format.starts_with("int") => {
            format!("{base} ({format})")
        }
        _ => base,
    }
}

/// The closed set of values a field takes (an enum), each with its documentation.
fn choices(schema: &Value, defs: &Value) -> Vec<Choice> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(|v| Choice {
                value: v.to_owned(),
                description: String::new(),
            })
            .collect();
    }
    let Some(branches) = branches(schema, defs) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for branch in &branches {
        let nested = choices(branch, defs);
        if !nested.is_empty() {
            out.extend(nested);
        } else if let Some(value) = branch.get("const").and_then(Value::as_str) {
            out.push(Choice {
                value: value.to_owned(),
                description: text_of(branch),
            });
        } else {
            // Not a closed set: a free value is one of the branches.
            return Vec::new();
        }
    }
    out
}

/// A schema's description (a doc comment) as one paragraph per line, rustdoc's link
/// brackets dropped: `[`x`]` reads `x`.
fn text_of(schema: &Value) -> String {
    let doc = schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    doc.split("\n\n")
        .map(|paragraph| {
            paragraph
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace("[`", "`")
                .replace("`]", "`")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn first_sentence(text: &str) -> &str {
    match text.find(": ").into_iter().chain(text.find(". ")).min() {
        Some(end) => &text[..end],
        None => text.trim_end_matches('.'),
    }
}

/// `text` in lines of at most `width` characters (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_catalogue_parses_and_names_each_function_once() {
        let names = names();
        assert!(
            names.len() > 20,
            "cli/functions.json: {} functions",
            names.len()
        );
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a function listed twice");
        for f in all() {
            assert_eq!(
                f.fields.first().map(|c| c.name.as_str()),
                Some("cell"),
                "{}",
                f.name
            );
            assert_eq!(
                f.changes_cell,
                f.fields.iter().any(|c| c.name == "run_id" && c.required),
                "{}: a function that changes the cell acts as a run",
                f.name
            );
        }
    }

    #[test]
    fn a_schema_becomes_fields_with_kinds_defaults_choices_and_an_example() {
        let schema = json!({
            "type": "object",
            "properties": {
                "run_id": {"type": "string", "description": "The run acting."},
                "cell": {"$ref": "#/$defs/CellDocument"},
                "wait_seconds": {"type": "integer", "format": "uint64", "default": 840,
                                 "description": "How long to wait."},
                "pause_deadline": {"anyOf": [{"$ref": "#/$defs/PauseDeadline"}, {"type": "null"}]},
                "mode": {"$ref": "#/$defs/Mode", "description": "What to do."}
            },
            "required": ["cell", "run_id", "mode"],
            "$defs": {
                "CellDocument": {"type": "object", "description": "The cell document."},
                "PauseDeadline": {"type": "string", "format": "date-time",
                                  "description": "The end of the pause budget."},
                "Mode": {"oneOf": [
                    {"type": "string", "const": "forward", "description": "Toward green."},
                    {"type": "string", "const": "back", "description": "Back to blue."}
                ]}
            }
        });
        let example = json!({"cell": {"cell_id": "a"}, "run_id": "r-1", "mode": "forward", "wait_seconds": 30});
        let f = Function::from_schema("rename-clusters", "Renames.", true, &schema, &example);
        let names: Vec<&str> = f.fields.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["cell", "run_id", "mode", "pause_deadline", "wait_seconds"]
        );
        let by = |n: &str| f.fields.iter().find(|c| c.name == n).cloned().expect(n);
        assert_eq!(by("cell").description, "The cell document.");
        assert_eq!(by("wait_seconds").default, Some(json!(840)));
        assert_eq!(by("wait_seconds").kind, "integer");
        assert_eq!(by("pause_deadline").kind, "string (date-time)");
        assert!(!by("pause_deadline").required);
        assert_eq!(by("mode").description, "What to do.");
        assert_eq!(
            by("mode").values,
            [
                Choice {
                    value: "forward".into(),
                    description: "Toward green.".into()
                },
                Choice {
                    value: "back".into(),
                    description: "Back to blue.".into()
                },
            ]
        );
        assert_eq!(
            f.example,
            json!({"run_id": "r-1", "mode": "forward", "wait_seconds": 30})
        );
        let help = f.help("switchyard");
        for expected in [
            "wait_seconds                 integer, default 840",
            "      forward    Toward green.",
            "\"mode\": \"forward\"",
            "switchyard invoke rename-clusters --cell cell.json --run-id <run> --set mode=forward --set wait_seconds=30 --dry-run",
        ] {
            assert!(help.contains(expected), "{expected:?} not in:\n{help}");
        }
    }

    #[test]
    fn long_descriptions_wrap_on_words() {
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("one\ntwo three", 20), ["one", "two three"]);
        assert_eq!(
            first_sentence("Renames the clusters: blue out."),
            "Renames the clusters"
        );
        let doc =
            json!({"description": "Refuse on what changed\nsince ([`drift::check`]).\n\nSecond."});
        assert_eq!(
            text_of(&doc),
            "Refuse on what changed since (`drift::check`).\nSecond."
        );
    }
}
