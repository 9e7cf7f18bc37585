//! Choice rules: comparisons on a `Variable`, combined with `And`, `Or` and `Not`.

use std::cmp::Ordering;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{StateError, RUNTIME};
use crate::path::PathExpr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    String,
    Numeric,
    Boolean,
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relation {
    Equals,
    LessThan,
    GreaterThan,
    LessThanEquals,
    GreaterThanEquals,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeTest {
    Present,
    Null,
    String,
    Numeric,
    Boolean,
    Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Value(Value),
    Path(PathExpr),
}

#[derive(Debug, Clone)]
pub(crate) enum Test {
    Compare(Family, Relation, Operand),
    Matches(String),
    Is(TypeTest, bool),
}

/// One boolean expression of a Choice state.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Test { variable: PathExpr, test: Test },
}

/// A top-level rule and the state it leads to.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub(crate) rule: Rule,
    pub(crate) next: String,
}

const RELATIONS: &[(&str, Relation)] = &[
    ("Equals", Relation::Equals),
    ("LessThan", Relation::LessThan),
    ("GreaterThan", Relation::GreaterThan),
    ("LessThanEquals", Relation::LessThanEquals),
    ("GreaterThanEquals", Relation::GreaterThanEquals),
];

const FAMILIES: &[(&str, Family)] = &[
    ("String", Family::String),
    ("Numeric", Family::Numeric),
    ("Boolean", Family::Boolean),
    ("Timestamp", Family::Timestamp),
];

const TYPE_TESTS: &[(&str, TypeTest)] = &[
    ("IsPresent", TypeTest::Present),
    ("IsNull", TypeTest::Null),
    ("IsString", TypeTest::String),
    ("IsNumeric", TypeTest::Numeric),
    ("IsBoolean", TypeTest::Boolean),
    ("IsTimestamp", TypeTest::Timestamp),
];

/// Parses `Choices[i]` (with its `Next`).
pub(crate) fn parse_branch(value: &Value, at: &str) -> Result<Branch, String> {
    let map = value
        .as_object()
        .ok_or_else(|| format!("`{at}` must be an object"))?;
    let next = match map.get("Next") {
        Some(Value::String(next)) => next.clone(),
        Some(_) => return Err(format!("`{at}.Next` must be a state name")),
        None => return Err(format!("`{at}` needs `Next`")),
    };
    Ok(Branch {
        rule: parse_rule(map, at, true)?,
        next,
    })
}

fn parse_rule(map: &Map<String, Value>, at: &str, top: bool) -> Result<Rule, String> {
    let mut variable = None;
    let mut operators = Vec::new();
    let mut combined = None;
    let mut test = None;
    for (key, value) in map {
        let field = format!("{at}.{key}");
        match key.as_str() {
            "Comment" => continue,
            "Next" if top => continue,
            "Next" => {
                return Err(format!(
                    "`{field}`: only top-level rules of Choices have `Next`"
                ))
            }
            "Variable" => {
                let text = value
                    .as_str()
                    .ok_or_else(|| format!("`{field}` must be a path string"))?;
                variable = Some(PathExpr::parse(text).map_err(|e| format!("`{field}`: {e}"))?);
                continue;
            }
            "And" | "Or" => {
                let items = value
                    .as_array()
                    .filter(|items| !items.is_empty())
                    .ok_or_else(|| format!("`{field}` must be a non-empty array of rules"))?;
                let rules = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| nested(item, &format!("{field}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                combined = Some(if key == "And" {
                    Rule::And(rules)
                } else {
                    Rule::Or(rules)
                });
            }
            "Not" => combined = Some(Rule::Not(Box::new(nested(value, &field)?))),
            operator => {
                test = Some(
                    parse_test(operator, value)
                        .ok_or_else(|| {
                            format!(
                                "`{field}` is not a comparison operator this executor implements"
                            )
                        })?
                        .map_err(|e| format!("`{field}`: {e}"))?,
                );
            }
        }
        operators.push(key.as_str());
    }
    if operators.len() > 1 {
        return Err(format!(
            "`{at}` has more than one operator ({}); use And/Or to combine them",
            operators.join(", ")
        ));
    }
    match (combined, test, variable) {
        (None, Some(test), Some(variable)) => Ok(Rule::Test { variable, test }),
        (None, Some(_), None) => Err(format!("`{at}` needs `Variable`")),
        (Some(_), _, Some(_)) => Err(format!(
            "`{at}`: `Variable` goes on the comparisons inside And/Or/Not, not beside them"
        )),
        (Some(rule), _, None) => Ok(rule),
        (None, None, _) => Err(format!("`{at}` has no comparison operator, And, Or or Not")),
    }
}

fn nested(value: &Value, at: &str) -> Result<Rule, String> {
    let map = value
        .as_object()
        .ok_or_else(|| format!("`{at}` must be an object"))?;
    parse_rule(map, at, false)
}

/// `None` if `operator` is not an operator; `Some(Err)` if its operand is wrong.
fn parse_test(operator: &str, operand: &Value) -> Option<Result<Test, String>> {
    if operator == "StringMatches" {
        return Some(
            operand
                .as_str()
                .map(|pattern| Test::Matches(pattern.to_owned()))
                .ok_or_else(|| "needs a string pattern".to_owned()),
        );
    }
    if let Some((_, test)) = TYPE_TESTS.iter().find(|(name, _)| *name == operator) {
        return Some(
            operand
                .as_bool()
                .map(|expected| Test::Is(*test, expected))
                .ok_or_else(|| "needs true or false".to_owned()),
        );
    }
    let (operator, by_path) = match operator.strip_suffix("Path") {
        Some(base) => (base, true),
        None => (operator, false),
    };
    let (family, rest) = FAMILIES
        .iter()
        .find_map(|(name, family)| operator.strip_prefix(name).map(|rest| (*family, rest)))?;
    let relation = RELATIONS
        .iter()
        .find(|(name, _)| *name == rest)
        .map(|(_, relation)| *relation)?;
    if family == Family::Boolean && relation != Relation::Equals {
        return None;
    }
    Some(if by_path {
        match operand.as_str().map(PathExpr::parse) {
            Some(Ok(path)) => Ok(Test::Compare(family, relation, Operand::Path(path))),
            Some(Err(e)) => Err(e),
            None => Err("needs a path string".to_owned()),
        }
    } else {
        let fits = match family {
            Family::String => operand.is_string(),
            Family::Numeric => operand.is_number(),
            Family::Boolean => operand.is_boolean(),
            Family::Timestamp => operand.as_str().and_then(timestamp).is_some(),
        };
        if fits {
            Ok(Test::Compare(
                family,
                relation,
                Operand::Value(operand.clone()),
            ))
        } else {
            Err(format!(
                "needs a {} value",
                match family {
                    Family::String => "string",
                    Family::Numeric => "number",
                    Family::Boolean => "boolean",
                    Family::Timestamp => "RFC 3339 timestamp",
                }
            ))
        }
    })
}

fn timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

impl Rule {
    pub(crate) fn eval(&self, input: &Value, context: &Value) -> Result<bool, StateError> {
        match self {
            Self::And(rules) => {
                for rule in rules {
                    if !rule.eval(input, context)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Self::Or(rules) => {
                for rule in rules {
                    if rule.eval(input, context)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Self::Not(rule) => Ok(!rule.eval(input, context)?),
            Self::Test { variable, test } => {
                let value = variable.select(input, context);
                if let Test::Is(TypeTest::Present, expected) = test {
                    return Ok(value.is_some() == *expected);
                }
                let value = value.ok_or_else(|| {
                    StateError::new(
                        RUNTIME,
                        format!(
                            "Invalid path '{}': the Choice state's condition path references \
                             an invalid value",
                            variable.text
                        ),
                    )
                })?;
                test.eval(&value, input, context)
            }
        }
    }
}

impl Test {
    fn eval(&self, value: &Value, input: &Value, context: &Value) -> Result<bool, StateError> {
        Ok(match self {
            Self::Is(kind, expected) => {
                let is = match kind {
                    TypeTest::Present => true,
                    TypeTest::Null => value.is_null(),
                    TypeTest::String => value.is_string(),
                    TypeTest::Numeric => value.is_number(),
                    TypeTest::Boolean => value.is_boolean(),
                    TypeTest::Timestamp => value.as_str().and_then(timestamp).is_some(),
                };
                is == *expected
            }
            Self::Matches(pattern) => value.as_str().is_some_and(|s| glob(pattern, s)),
            Self::Compare(family, relation, operand) => {
                let operand = match operand {
                    Operand::Value(v) => v.clone(),
                    Operand::Path(path) => path.select(input, context).ok_or_else(|| {
                        StateError::new(
                            RUNTIME,
                            format!(
                                "Invalid path '{}': the Choice state's comparison path \
                                 references an invalid value",
                                path.text
                            ),
                        )
                    })?,
                };
                let ordering = match family {
                    Family::String => match (value.as_str(), operand.as_str()) {
                        (Some(a), Some(b)) => Some(a.cmp(b)),
                        _ => None,
                    },
                    Family::Numeric => match (value.as_f64(), operand.as_f64()) {
                        (Some(a), Some(b)) => a.partial_cmp(&b),
                        _ => None,
                    },
                    Family::Boolean => match (value.as_bool(), operand.as_bool()) {
                        (Some(a), Some(b)) => Some(a.cmp(&b)),
                        _ => None,
                    },
                    Family::Timestamp => {
                        match (
                            value.as_str().and_then(timestamp),
                            operand.as_str().and_then(timestamp),
                        ) {
                            (Some(a), Some(b)) => Some(a.cmp(&b)),
                            _ => None,
                        }
                    }
                };
                // A value of the wrong type compares false, as in Step Functions.
                ordering.is_some_and(|o| match relation {
                    Relation::Equals => o == Ordering::Equal,
                    Relation::LessThan => o == Ordering::Less,
                    Relation::GreaterThan => o == Ordering::Greater,
                    Relation::LessThanEquals => o != Ordering::Greater,
                    Relation::GreaterThanEquals => o != Ordering::Less,
                })
            }
        })
    }
}

/// `*` matches any run of characters; `\*` and `\\` are literal.
fn glob(pattern: &str, text: &str) -> bool {
    #[derive(PartialEq)]
    enum Token {
        Any,
        Char(char),
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => tokens.extend(chars.next().map(Token::Char)),
            '*' => tokens.push(Token::Any),
            c => tokens.push(Token::Char(c)),
        }
    }
    let text: Vec<char> = text.chars().collect();
    // Classic wildcard matching with backtracking to the last `*`.
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Token::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            Some(Token::Any) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|token| *token == Token::Any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(value: Value) -> Rule {
        let mut value = value;
        value["Next"] = json!("X");
        parse_branch(&value, "Choices[0]").expect("parses").rule
    }

    fn eval(r: Value, input: Value) -> Result<bool, StateError> {
        rule(r).eval(&input, &json!({"State": {"RetryCount": 2}}))
    }

    #[test]
    fn comparisons() {
        let input = json!({"s": "b", "n": 5, "t": true, "z": null, "other": "b",
                           "ts": "2026-01-01T00:00:00Z"});
        for (r, expected) in [
            (json!({"Variable": "$.s", "StringEquals": "b"}), true),
            (json!({"Variable": "$.s", "StringLessThan": "c"}), true),
            (
                json!({"Variable": "$.s", "StringGreaterThanEquals": "c"}),
                false,
            ),
            (
                json!({"Variable": "$.s", "StringEqualsPath": "$.other"}),
                true,
            ),
            (json!({"Variable": "$.n", "NumericEquals": 5}), true),
            (json!({"Variable": "$.n", "NumericLessThan": 5}), false),
            (json!({"Variable": "$.n", "NumericLessThanEquals": 5}), true),
            (json!({"Variable": "$.n", "NumericGreaterThan": 4.5}), true),
            (
                json!({"Variable": "$.n", "NumericGreaterThanPath": "$$.State.RetryCount"}),
                true,
            ),
            (json!({"Variable": "$.s", "NumericEquals": 5}), false),
            (json!({"Variable": "$.t", "BooleanEquals": true}), true),
            (json!({"Variable": "$.z", "IsNull": true}), true),
            (json!({"Variable": "$.missing", "IsPresent": false}), true),
            (json!({"Variable": "$.s", "IsPresent": true}), true),
            (json!({"Variable": "$.s", "IsString": true}), true),
            (json!({"Variable": "$.n", "IsNumeric": false}), false),
            (
                json!({"Variable": "$.ts", "TimestampLessThan": "2026-06-01T00:00:00Z"}),
                true,
            ),
            (json!({"Variable": "$.ts", "IsTimestamp": true}), true),
            (json!({"Variable": "$.s", "StringMatches": "*"}), true),
            (
                json!({"And": [{"Variable": "$.n", "NumericEquals": 5},
                            {"Not": {"Variable": "$.s", "StringEquals": "a"}}]}),
                true,
            ),
            (
                json!({"Or": [{"Variable": "$.n", "NumericEquals": 1},
                           {"Variable": "$.t", "BooleanEquals": false}]}),
                false,
            ),
        ] {
            assert_eq!(eval(r.clone(), input.clone()), Ok(expected), "{r}");
        }
    }

    #[test]
    fn a_missing_variable_is_a_runtime_error() {
        let err = eval(
            json!({"Variable": "$.missing", "StringEquals": "x"}),
            json!({}),
        )
        .expect_err("missing");
        assert_eq!(err.error, RUNTIME);
    }

    #[test]
    fn string_matches_wildcards() {
        assert!(glob("log-*.txt", "log-2026.txt"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b", "axxc"));
        assert!(glob(r"a\*", "a*"));
        assert!(!glob(r"a\*", "ab"));
    }

    #[test]
    fn parse_rejects_bad_rules() {
        let bad = |v: Value| parse_branch(&v, "Choices[0]").expect_err("rejected");
        assert!(bad(json!({"Variable": "$.a", "StringEquals": "x"})).contains("Next"));
        assert!(bad(json!({"Variable": "$.a", "StringEquals": 1, "Next": "X"})).contains("string"));
        assert!(
            bad(json!({"Variable": "$.a", "StringContains": "x", "Next": "X"}))
                .contains("StringContains")
        );
        assert!(bad(json!({"StringEquals": "x", "Next": "X"})).contains("Variable"));
        assert!(bad(
            json!({"Variable": "$.a", "StringEquals": "x", "NumericEquals": 1,
                           "Next": "X"})
        )
        .contains("more than one"));
        assert!(bad(
            json!({"And": [{"Variable": "$.a", "IsNull": true, "Next": "Y"}],
                           "Next": "X"})
        )
        .contains("Next"));
        assert!(
            bad(json!({"Variable": "$.a", "BooleanLessThan": true, "Next": "X"}))
                .contains("BooleanLessThan")
        );
    }
}
