//! Intrinsic functions (`States.Format(...)` and friends) in `.$` fields.
//!
//! Parsed once at load, so an unknown name or a wrong argument count is a load error.

use serde_json::{Map, Value};

use crate::error::{StateError, INTRINSIC_FAILURE, PARAMETER_PATH_FAILURE};
use crate::path::{type_name, PathExpr};

/// The intrinsic functions this executor implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Format,
    StringToJson,
    JsonToString,
    JsonMerge,
    Array,
    ArrayLength,
    ArrayGetItem,
    ArrayContains,
    ArrayRange,
    ArrayPartition,
    MathAdd,
    StringSplit,
    Uuid,
}

impl Func {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "States.Format" => Self::Format,
            "States.StringToJson" => Self::StringToJson,
            "States.JsonToString" => Self::JsonToString,
            "States.JsonMerge" => Self::JsonMerge,
            "States.Array" => Self::Array,
            "States.ArrayLength" => Self::ArrayLength,
            "States.ArrayGetItem" => Self::ArrayGetItem,
            "States.ArrayContains" => Self::ArrayContains,
            "States.ArrayRange" => Self::ArrayRange,
            "States.ArrayPartition" => Self::ArrayPartition,
            "States.MathAdd" => Self::MathAdd,
            "States.StringSplit" => Self::StringSplit,
            "States.UUID" => Self::Uuid,
            _ => return None,
        })
    }

    /// Allowed argument counts (min, max).
    fn arity(self) -> (usize, usize) {
        match self {
            Self::Format => (1, usize::MAX),
            Self::Array => (0, usize::MAX),
            Self::Uuid => (0, 0),
            Self::StringToJson | Self::JsonToString | Self::ArrayLength => (1, 1),
            Self::ArrayGetItem
            | Self::ArrayContains
            | Self::ArrayPartition
            | Self::MathAdd
            | Self::StringSplit => (2, 2),
            Self::ArrayRange | Self::JsonMerge => (3, 3),
        }
    }
}

#[derive(Debug, Clone)]
enum Arg {
    /// A quoted literal: its value and its source with escapes kept (for Format).
    Str {
        value: String,
        raw: String,
    },
    Literal(Value),
    Path(PathExpr),
    Call(Box<Call>),
}

/// A parsed intrinsic function call.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    func: Func,
    args: Vec<Arg>,
    text: String,
}

impl Call {
    /// Parses a whole `States.Name(args)` expression.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut parser = Parser { text, pos: 0 };
        let call = parser.call()?;
        parser.skip_ws();
        if parser.pos != text.len() {
            return Err(format!(
                "unexpected `{}` after the intrinsic function call",
                &text[parser.pos..]
            ));
        }
        Ok(call)
    }

    pub(crate) fn eval(&self, input: &Value, context: &Value) -> Result<Value, StateError> {
        let fail = |message: String| {
            StateError::new(INTRINSIC_FAILURE, format!("{}: {message}", self.text))
        };
        let mut values = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            values.push(match arg {
                Arg::Str { value, .. } => Value::String(value.clone()),
                Arg::Literal(value) => value.clone(),
                Arg::Path(path) => path.select(input, context).ok_or_else(|| {
                    StateError::new(
                        PARAMETER_PATH_FAILURE,
                        format!(
                            "the path `{}` in `{}` matched nothing in the input",
                            path.text, self.text
                        ),
                    )
                })?,
                Arg::Call(call) => call.eval(input, context)?,
            });
        }
        match self.func {
            Func::Format => {
                let Some(Arg::Str { raw, .. }) = self.args.first() else {
                    return Err(fail("the template must be a quoted string".into()));
                };
                format(raw, &values[1..]).map_err(fail)
            }
            Func::StringToJson => {
                let text = as_str(&values[0]).map_err(fail)?;
                serde_json::from_str(text).map_err(|e| fail(format!("not JSON: {e}")))
            }
            Func::JsonToString => Ok(Value::String(values[0].to_string())),
            Func::JsonMerge => {
                if values[2] != Value::Bool(false) {
                    return Err(fail(
                        "only shallow merges (third argument false) exist".into(),
                    ));
                }
                let (Value::Object(left), Value::Object(right)) = (&values[0], &values[1]) else {
                    return Err(fail("both arguments must be objects".into()));
                };
                let mut merged: Map<String, Value> = left.clone();
                merged.extend(right.clone());
                Ok(Value::Object(merged))
            }
            Func::Array => Ok(Value::Array(values)),
            Func::ArrayLength => Ok(Value::from(as_array(&values[0]).map_err(fail)?.len())),
            Func::ArrayGetItem => {
                let items = as_array(&values[0]).map_err(fail)?;
                let index = as_int(&values[1]).map_err(fail)?;
                usize::try_from(index)
                    .ok()
                    .and_then(|i| items.get(i))
                    .cloned()
                    .ok_or_else(|| fail(format!("index {index} is out of bounds")))
            }
            Func::ArrayContains => {
                let items = as_array(&values[0]).map_err(fail)?;
                Ok(Value::Bool(items.contains(&values[1])))
            }
            Func::ArrayRange => {
                let (start, end, step) = (
                    as_int(&values[0]).map_err(fail)?,
                    as_int(&values[1]).map_err(fail)?,
                    as_int(&values[2]).map_err(fail)?,
                );
                if step == 0 {
                    return Err(fail("the step must not be 0".into()));
                }
                let mut items = Vec::new();
                let mut next = start;
                while (step > 0 && next <= end) || (step < 0 && next >= end) {
                    if items.len() == 1000 {
                        return Err(fail("a range holds at most 1000 items".into()));
                    }
                    items.push(Value::from(next));
                    next += step;
                }
                Ok(Value::Array(items))
            }
            Func::ArrayPartition => {
                let items = as_array(&values[0]).map_err(fail)?;
                let size = as_int(&values[1]).map_err(fail)?;
                let size = usize::try_from(size)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| fail(format!("the chunk size must be positive, got {size}")))?;
                Ok(Value::Array(
                    items
                        .chunks(size)
                        .map(|chunk| Value::Array(chunk.to_vec()))
                        .collect(),
                ))
            }
            Func::MathAdd => {
                let (a, b) = (
                    as_int(&values[0]).map_err(fail)?,
                    as_int(&values[1]).map_err(fail)?,
                );
                Ok(Value::from(a + b))
            }
            Func::StringSplit => {
                let text = as_str(&values[0]).map_err(fail)?;
                let delimiters: Vec<char> = as_str(&values[1]).map_err(fail)?.chars().collect();
                Ok(Value::Array(
                    text.split(delimiters.as_slice())
                        .map(|part| Value::String(part.to_owned()))
                        .collect(),
                ))
            }
            Func::Uuid => Ok(Value::String(uuid::Uuid::new_v4().to_string())),
        }
    }
}

fn as_str(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("expected a string, got a {}", type_name(value)))
}

fn as_array(value: &Value) -> Result<&Vec<Value>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("expected an array, got a {}", type_name(value)))
}

/// Integers only, as Step Functions' math and array intrinsics require.
fn as_int(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| format!("expected an integer, got {n}")),
        other => Err(format!("expected an integer, got a {}", type_name(other))),
    }
}

/// Splits a Format template (escapes kept) into literal pieces around `{}`.
fn template_pieces(raw: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            '{' if chars.peek() == Some(&'}') => {
                chars.next();
                pieces.push(std::mem::take(&mut current));
            }
            c => current.push(c),
        }
    }
    pieces.push(current);
    pieces
}

fn format(raw: &str, args: &[Value]) -> Result<Value, String> {
    let pieces = template_pieces(raw);
    if pieces.len() - 1 != args.len() {
        return Err(format!(
            "the template has {} placeholders but {} arguments follow it",
            pieces.len() - 1,
            args.len()
        ));
    }
    let mut out = pieces[0].clone();
    for (arg, piece) in args.iter().zip(&pieces[1..]) {
        match arg {
            Value::String(s) => out.push_str(s),
            Value::Array(_) | Value::Object(_) => {
                return Err(format!(
                    "Format takes strings, numbers, booleans or null, got a {}",
                    type_name(arg)
                ))
            }
            other => out.push_str(&other.to_string()),
        }
        out.push_str(piece);
    }
    Ok(Value::String(out))
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn call(&mut self) -> Result<Call, String> {
        self.skip_ws();
        let start = self.pos;
        let name_len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(self.rest().len());
        let name = &self.rest()[..name_len];
        let func = Func::from_name(name).ok_or_else(|| {
            format!("`{name}` is not an intrinsic function this executor implements")
        })?;
        self.pos += name_len;
        self.skip_ws();
        if !self.rest().starts_with('(') {
            return Err(format!("expected `(` after `{name}`"));
        }
        self.pos += 1;
        let mut args = Vec::new();
        self.skip_ws();
        if self.rest().starts_with(')') {
            self.pos += 1;
        } else {
            loop {
                args.push(self.arg()?);
                self.skip_ws();
                match self.rest().chars().next() {
                    Some(',') => self.pos += 1,
                    Some(')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(format!("expected `,` or `)` in the call to `{name}`")),
                }
            }
        }
        let (min, max) = func.arity();
        if args.len() < min || args.len() > max {
            return Err(format!(
                "`{name}` takes {} arguments, got {}",
                if min == max {
                    min.to_string()
                } else if max == usize::MAX {
                    format!("at least {min}")
                } else {
                    format!("{min} to {max}")
                },
                args.len()
            ));
        }
        if func == Func::Format {
            let Some(Arg::Str { raw, .. }) = args.first() else {
                return Err("the first argument of `States.Format` must be a quoted string".into());
            };
            let placeholders = template_pieces(raw).len() - 1;
            if placeholders != args.len() - 1 {
                return Err(format!(
                    "`States.Format` template has {placeholders} placeholders but {} arguments",
                    args.len() - 1
                ));
            }
        }
        Ok(Call {
            func,
            args,
            text: self.text[start..self.pos].to_owned(),
        })
    }

    fn arg(&mut self) -> Result<Arg, String> {
        self.skip_ws();
        let rest = self.rest();
        let first = rest.chars().next().ok_or("unexpected end of the call")?;
        match first {
            '\'' => self.string(),
            '$' => {
                // A path ends at the first `,` or `)` outside brackets and quotes.
                let (mut depth, mut quote) = (0usize, None);
                let mut end = rest.len();
                for (i, c) in rest.char_indices() {
                    match (quote, c) {
                        (Some(q), c) if c == q => quote = None,
                        (Some(_), _) => {}
                        (None, '\'' | '"') => quote = Some(c),
                        (None, '[' | '(') => depth += 1,
                        (None, ']') => depth = depth.saturating_sub(1),
                        (None, ')') if depth > 0 => depth -= 1,
                        (None, ',' | ')') if depth == 0 => {
                            end = i;
                            break;
                        }
                        _ => {}
                    }
                }
                let text = rest[..end].trim_end();
                self.pos += end;
                Ok(Arg::Path(PathExpr::parse(text)?))
            }
            'S' => Ok(Arg::Call(Box::new(self.call()?))),
            _ => {
                let end = rest.find([',', ')']).unwrap_or(rest.len());
                let token = rest[..end].trim();
                self.pos += end;
                match serde_json::from_str::<Value>(token) {
                    Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => {
                        Ok(Arg::Literal(value))
                    }
                    _ => Err(format!(
                        "`{token}` is not an argument: use a quoted string, a number, \
                         true/false/null, a path or an intrinsic call"
                    )),
                }
            }
        }
    }

    fn string(&mut self) -> Result<Arg, String> {
        let body_start = self.pos + 1;
        let mut value = String::new();
        let mut chars = self.text[body_start..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, escaped) = chars.next().ok_or("unterminated string literal")?;
                    value.push(escaped);
                }
                '\'' => {
                    let raw = self.text[body_start..body_start + i].to_owned();
                    self.pos = body_start + i + 1;
                    return Ok(Arg::Str { value, raw });
                }
                c => value.push(c),
            }
        }
        Err("unterminated string literal".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(text: &str, input: Value) -> Result<Value, StateError> {
        Call::parse(text)
            .expect("parses")
            .eval(&input, &json!({"Execution": {"Name": "run-1"}}))
    }

    #[test]
    fn format_fills_placeholders_and_keeps_escaped_braces() {
        assert_eq!(
            eval(
                r"States.Format('cell {} at \{{}\} in {}', $.cell, $.n, $$.Execution.Name)",
                json!({"cell": "c1", "n": 3})
            ),
            Ok(json!("cell c1 at {3} in run-1"))
        );
        assert_eq!(
            eval(r"States.Format('it\'s {}', 'ok')", json!({})),
            Ok(json!("it's ok"))
        );
    }

    #[test]
    fn json_conversions_arrays_and_math() {
        assert_eq!(
            eval("States.StringToJson($.s)", json!({"s": "{\"a\":[1,2]}"})),
            Ok(json!({"a": [1, 2]}))
        );
        assert_eq!(
            eval("States.JsonToString($.o)", json!({"o": {"a": 1}})),
            Ok(json!("{\"a\":1}"))
        );
        assert_eq!(
            eval(
                "States.Array(1, 'two', $.x, States.MathAdd($.x, -1))",
                json!({"x": 5})
            ),
            Ok(json!([1, "two", 5, 4]))
        );
        assert_eq!(eval("States.MathAdd(2, 40)", json!({})), Ok(json!(42)));
        assert_eq!(
            eval("States.ArrayRange(1, 9, 4)", json!({})),
            Ok(json!([1, 5, 9]))
        );
        assert_eq!(
            eval(
                "States.ArrayPartition($.a, 2)",
                json!({"a": [1, 2, 3, 4, 5]})
            ),
            Ok(json!([[1, 2], [3, 4], [5]]))
        );
        assert_eq!(
            eval("States.ArrayPartition($.a, 3)", json!({"a": []})),
            Ok(json!([]))
        );
        assert!(eval("States.ArrayPartition($.a, 0)", json!({"a": [1]})).is_err());
        assert_eq!(
            eval("States.ArrayGetItem($.a, 1)", json!({"a": ["x", "y"]})),
            Ok(json!("y"))
        );
        assert_eq!(
            eval("States.ArrayLength($.a)", json!({"a": [1, 2, 3]})),
            Ok(json!(3))
        );
        assert_eq!(
            eval("States.ArrayContains($.a, 2)", json!({"a": [1, 2, 3]})),
            Ok(json!(true))
        );
        assert_eq!(
            eval("States.StringSplit('a,b+c', ',+')", json!({})),
            Ok(json!(["a", "b", "c"]))
        );
        assert_eq!(
            eval(
                "States.JsonMerge($.a, $.b, false)",
                json!({"a": {"x": 1, "y": 1}, "b": {"y": 2}})
            ),
            Ok(json!({"x": 1, "y": 2}))
        );
        let uuid = eval("States.UUID()", json!({})).expect("uuid");
        assert_eq!(uuid.as_str().map(str::len), Some(36));
    }

    #[test]
    fn runtime_failures_name_the_call() {
        let err = eval("States.MathAdd($.s, 1)", json!({"s": "x"})).expect_err("not an int");
        assert_eq!(err.error, INTRINSIC_FAILURE);
        assert!(err.cause.contains("States.MathAdd"), "{}", err.cause);
        let err = eval("States.JsonToString($.missing)", json!({})).expect_err("missing");
        assert_eq!(err.error, PARAMETER_PATH_FAILURE);
    }

    #[test]
    fn load_rejects_unknown_names_and_bad_arity() {
        assert!(Call::parse("States.Hash($.a, 'SHA-1')").is_err());
        assert!(Call::parse("States.Nope()").is_err());
        assert!(Call::parse("States.UUID(1)").is_err());
        assert!(Call::parse("States.Format('{} {}', 1)").is_err());
        assert!(Call::parse("States.Format($.t, 1)").is_err());
        assert!(Call::parse("States.Array(1,)").is_err());
        assert!(Call::parse("States.Array(1) trailing").is_err());
    }
}
