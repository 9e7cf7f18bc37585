//! Payload templates: `Parameters` and `ResultSelector`, where a key ending in `.$` takes
//! its value from a path (`$…` into the input, `$$…` into the context object) or an
//! intrinsic function call.

use serde_json::{Map, Value};

use crate::error::{StateError, PARAMETER_PATH_FAILURE};
use crate::intrinsic::Call;
use crate::path::PathExpr;

#[derive(Debug, Clone)]
pub(crate) enum Template {
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
    Literal(Value),
    Path(PathExpr),
    Intrinsic(Call),
}

impl Template {
    /// Compiles a template; errors name the offending key (dotted from the top).
    pub(crate) fn compile(value: &Value) -> Result<Self, String> {
        Self::compile_at(value, "")
    }

    fn compile_at(value: &Value, at: &str) -> Result<Self, String> {
        Ok(match value {
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, child) in map {
                    let here = if at.is_empty() {
                        key.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    if let Some(name) = key.strip_suffix(".$") {
                        if map.contains_key(name) {
                            return Err(format!(
                                "`{here}`: both `{name}` and `{key}` are set; keep one"
                            ));
                        }
                        let Value::String(text) = child else {
                            return Err(format!(
                                "`{here}`: a key ending in `.$` needs a string (a path or an \
                                 intrinsic function call)"
                            ));
                        };
                        let compiled = if text.starts_with('$') {
                            Self::Path(PathExpr::parse(text).map_err(|e| format!("`{here}`: {e}"))?)
                        } else if text.starts_with("States.") {
                            Self::Intrinsic(
                                Call::parse(text).map_err(|e| format!("`{here}`: {e}"))?,
                            )
                        } else {
                            return Err(format!(
                                "`{here}`: `{text}` is neither a path (`$…`, `$$…`) nor an \
                                 intrinsic function call (`States.…(…)`)"
                            ));
                        };
                        fields.push((name.to_owned(), compiled));
                    } else {
                        fields.push((key.clone(), Self::compile_at(child, &here)?));
                    }
                }
                Self::Object(fields)
            }
            Value::Array(items) => Self::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Self::compile_at(item, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => Self::Literal(other.clone()),
        })
    }

    pub(crate) fn eval(&self, input: &Value, context: &Value) -> Result<Value, StateError> {
        Ok(match self {
            Self::Object(fields) => {
                let mut map = Map::with_capacity(fields.len());
                for (key, template) in fields {
                    map.insert(key.clone(), template.eval(input, context)?);
                }
                Value::Object(map)
            }
            Self::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| item.eval(input, context))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Literal(value) => value.clone(),
            Self::Path(path) => path.select(input, context).ok_or_else(|| {
                StateError::new(
                    PARAMETER_PATH_FAILURE,
                    format!(
                        "the JSONPath `{}` could not be found in the {}",
                        path.text,
                        match path.root {
                            crate::path::Root::Input => "input",
                            crate::path::Root::Context => "context object",
                        }
                    ),
                )
            })?,
            Self::Intrinsic(call) => call.eval(input, context)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dollar_keys_read_input_context_and_intrinsics() {
        let template = Template::compile(&json!({
            "FunctionName": "preflight",
            "Payload": {
                "cell.$": "$.cell",
                "run.$": "$$.Execution.Name",
                "label.$": "States.Format('{}-{}', $.cell.id, $$.State.RetryCount)",
                "nested": [{"x.$": "$.n"}, 7]
            }
        }))
        .expect("compiles");
        let out = template
            .eval(
                &json!({"cell": {"id": "c1"}, "n": 2}),
                &json!({"Execution": {"Name": "r"}, "State": {"RetryCount": 0}}),
            )
            .expect("evaluates");
        assert_eq!(
            out,
            json!({
                "FunctionName": "preflight",
                "Payload": {
                    "cell": {"id": "c1"},
                    "run": "r",
                    "label": "c1-0",
                    "nested": [{"x": 2}, 7]
                }
            })
        );
    }

    #[test]
    fn missing_path_is_a_parameter_path_failure() {
        let template = Template::compile(&json!({"a.$": "$.missing"})).expect("compiles");
        let err = template.eval(&json!({}), &json!({})).expect_err("missing");
        assert_eq!(err.error, PARAMETER_PATH_FAILURE);
    }

    #[test]
    fn compile_rejects_bad_dollar_values() {
        assert!(Template::compile(&json!({"a.$": 1})).is_err());
        assert!(Template::compile(&json!({"a.$": "plain"})).is_err());
        assert!(Template::compile(&json!({"a.$": "States.Nope()"})).is_err());
        assert!(Template::compile(&json!({"a": 1, "a.$": "$.a"})).is_err());
        let err = Template::compile(&json!({"p": {"q.$": "$[?"}})).expect_err("bad path");
        assert!(err.starts_with("`p.q.$`"), "{err}");
    }
}
