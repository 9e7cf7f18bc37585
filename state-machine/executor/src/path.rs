//! JSONPath in ASL: reference paths (one node, settable) and query paths (any JSONPath).
//!
//! A path that names exactly one node (`$`, `$.a.b`, `$['a b']`, `$.a[0]`) is parsed here,
//! with Step Functions' lenient member names (`$.foo-bar` is accepted, as the service does);
//! anything else (wildcards, filters, slices, descendants) goes to `serde_json_path` and
//! yields an array of every match.

use serde_json::Value;

/// What a path is evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    /// `$…`: the state's (effective) input, or the raw result for ResultSelector.
    Input,
    /// `$$…`: the context object.
    Context,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone)]
enum Kind {
    Reference(Vec<Segment>),
    Query(serde_json_path::JsonPath),
}

/// A parsed path with its root and source text.
#[derive(Debug, Clone)]
pub(crate) struct PathExpr {
    pub(crate) root: Root,
    kind: Kind,
    pub(crate) text: String,
}

impl PathExpr {
    /// Parses `$…` or `$$…`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (root, rest) = match text.strip_prefix("$$") {
            Some(rest) => (Root::Context, format!("${rest}")),
            None if text.starts_with('$') => (Root::Input, text.to_owned()),
            None => return Err(format!("`{text}` is not a path: it must start with `$`")),
        };
        let kind = match parse_reference(&rest) {
            Some(segments) => Kind::Reference(segments),
            None => Kind::Query(
                serde_json_path::JsonPath::parse(&rest)
                    .map_err(|e| format!("`{text}` is not a valid JSONPath: {e}"))?,
            ),
        };
        Ok(Self {
            root,
            kind,
            text: text.to_owned(),
        })
    }

    /// Parses a reference path over the state input (InputPath, ResultPath, OutputPath, …).
    pub(crate) fn parse_reference(text: &str) -> Result<Self, String> {
        let path = Self::parse(text)?;
        if path.root != Root::Input || path.segments().is_none() {
            return Err(format!(
                "`{text}` must be a reference path into the input: `$`, `$.field`, \
                 `$['field']` or `$.list[0]`, without `$$`, wildcards or filters"
            ));
        }
        Ok(path)
    }

    /// The segments of a reference path; `None` for a query.
    pub(crate) fn segments(&self) -> Option<&[Segment]> {
        match &self.kind {
            Kind::Reference(segments) => Some(segments),
            Kind::Query(_) => None,
        }
    }

    /// Evaluates against the input or the context: a reference path yields its node
    /// (`None` when absent); a query yields an array of all matches.
    pub(crate) fn select(&self, input: &Value, context: &Value) -> Option<Value> {
        let root = match self.root {
            Root::Input => input,
            Root::Context => context,
        };
        match &self.kind {
            Kind::Reference(segments) => get(root, segments).cloned(),
            Kind::Query(path) => Some(Value::Array(
                path.query(root).all().into_iter().cloned().collect(),
            )),
        }
    }
}

fn get<'a>(mut value: &'a Value, segments: &[Segment]) -> Option<&'a Value> {
    for segment in segments {
        value = match segment {
            Segment::Field(name) => value.as_object()?.get(name)?,
            Segment::Index(index) => value.as_array()?.get(*index)?,
        };
    }
    Some(value)
}

/// Writes `value` at a reference path inside `target` (ResultPath). Missing objects on the
/// way are created; a non-object on the way is an error, as in Step Functions.
pub(crate) fn set(target: Value, segments: &[Segment], value: Value) -> Result<Value, String> {
    let Some((first, rest)) = segments.split_first() else {
        return Ok(value);
    };
    match (target, first) {
        (Value::Object(mut map), Segment::Field(name)) => {
            let child = map
                .remove(name)
                .unwrap_or_else(|| Value::Object(Default::default()));
            let child = set(child, rest, value)?;
            map.insert(name.clone(), child);
            Ok(Value::Object(map))
        }
        (Value::Array(mut items), Segment::Index(index)) if *index < items.len() => {
            let child = std::mem::take(&mut items[*index]);
            items[*index] = set(child, rest, value)?;
            Ok(Value::Array(items))
        }
        (other, Segment::Field(name)) => Err(format!(
            "cannot set field `{name}` inside a {} value",
            type_name(&other)
        )),
        (other, Segment::Index(index)) => Err(format!(
            "cannot set index {index} inside a {} value",
            type_name(&other)
        )),
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `$` followed by `.name`, `['name']`, `["name"]` or `[n]`; `None` if anything else.
fn parse_reference(text: &str) -> Option<Vec<Segment>> {
    let mut rest = text.strip_prefix('$')?;
    let mut segments = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let name = &after[..end];
            let forbidden = |c: char| "*@,:?()'\" ".contains(c) || c.is_whitespace();
            if name.is_empty() || name.contains(forbidden) {
                return None;
            }
            segments.push(Segment::Field(name.to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let quote = after.chars().next()?;
            if quote == '\'' || quote == '"' {
                let body = &after[1..];
                let close = body.find(quote)?;
                let name = &body[..close];
                if name.contains('\\') {
                    return None;
                }
                segments.push(Segment::Field(name.to_owned()));
                rest = body[close + 1..].strip_prefix(']')?;
            } else {
                let close = after.find(']')?;
                let digits = &after[..close];
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                segments.push(Segment::Index(digits.parse().ok()?));
                rest = &after[close + 1..];
            }
        } else {
            return None;
        }
    }
    Some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str) -> Segment {
        Segment::Field(name.to_owned())
    }

    #[test]
    fn reference_paths_parse_lenient_member_names() {
        assert_eq!(parse_reference("$"), Some(vec![]));
        assert_eq!(
            parse_reference("$.a.foo-bar[2]['x y']"),
            Some(vec![
                field("a"),
                field("foo-bar"),
                Segment::Index(2),
                field("x y")
            ])
        );
        assert_eq!(parse_reference("$.a[*]"), None);
        assert_eq!(parse_reference("$..a"), None);
        assert_eq!(parse_reference("$.a[?(@.b)]"), None);
        assert_eq!(parse_reference("a.b"), None);
    }

    #[test]
    fn queries_return_every_match_and_references_one_node() {
        let input = json!({"items": [{"id": 1}, {"id": 2}], "one": {"two": 3}});
        let all = PathExpr::parse("$.items[*].id").expect("query parses");
        assert_eq!(all.select(&input, &Value::Null), Some(json!([1, 2])));
        let one = PathExpr::parse("$.one.two").expect("reference parses");
        assert_eq!(one.select(&input, &Value::Null), Some(json!(3)));
        assert_eq!(
            PathExpr::parse("$.missing")
                .expect("parses")
                .select(&input, &Value::Null),
            None
        );
        let context = PathExpr::parse("$$.State.Name").expect("context parses");
        assert_eq!(context.root, Root::Context);
        assert_eq!(
            context.select(&Value::Null, &json!({"State": {"Name": "S"}})),
            Some(json!("S"))
        );
    }

    #[test]
    fn reference_only_rejects_queries_and_context() {
        assert!(PathExpr::parse_reference("$.a[*]").is_err());
        assert!(PathExpr::parse_reference("$$.Execution.Id").is_err());
        assert!(PathExpr::parse_reference("$.a.b").is_ok());
    }

    #[test]
    fn set_creates_objects_and_refuses_to_overwrite_scalars_on_the_way() {
        let out = set(json!({"a": 1}), &[field("b"), field("c")], json!(2)).expect("set");
        assert_eq!(out, json!({"a": 1, "b": {"c": 2}}));
        assert!(set(json!({"a": 1}), &[field("a"), field("c")], json!(2)).is_err());
        assert!(set(json!("text"), &[field("a")], json!(2)).is_err());
        assert_eq!(
            set(json!({"a": 1}), &[], json!(5)).expect("set root"),
            json!(5)
        );
    }
}
