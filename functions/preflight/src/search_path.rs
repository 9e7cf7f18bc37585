//! Functions that depend on `search_path`.
//!
//! The apply worker on green runs with an empty `search_path` (only `pg_catalog`), so a
//! function it evaluates — in a column default, a generated column, a CHECK or domain
//! constraint, an index expression or predicate, or a trigger enabled `REPLICA`/`ALWAYS`
//! — fails if its body names a user table, function or type without a schema and the
//! function pins no `search_path` of its own. Such a function is a blocker; one nothing
//! on that path uses is a warning (ordinary triggers do not fire on the subscriber).
//!
//! Heuristic, by design: the body (`prosrc`) is tokenized and every bare word that is the
//! name of a user relation, function or type — not one `pg_catalog` also has, which
//! resolves anyway — and is neither qualified (`x.name`) nor a qualifier (`name.x`)
//! counts. Comments, string literals and dollar-quoted strings are skipped, so dynamic
//! SQL in `EXECUTE '…'` is not seen. SQL-standard bodies (`BEGIN ATOMIC`, `prosqlbody`)
//! were resolved at creation and are skipped. A function called from an apply-evaluated
//! function without a pinned `search_path` inherits the empty one, so "evaluated by the
//! apply worker" follows calls by name.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use switchyard_operation::Error;
use switchyard_postgres::quote;
use tokio_postgres::Transaction;

use crate::finding::{list, Code, Finding};
use crate::schema::{in_database, user_schemas};

/// User functions without a pinned `search_path`, in languages with a body to read.
macro_rules! candidates {
    ($atomic:literal) => {
        concat!(
            "SELECT p.oid, n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid),
                    p.prokind::text, p.prosrc, ",
            $atomic,
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                          JOIN pg_language l ON l.oid = p.prolang
              WHERE l.lanname NOT IN ('c', 'internal') AND ",
            user_schemas!(),
            " AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c WHERE starts_with(c, 'search_path='))
                AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                   AND d.objid = p.oid AND d.deptype = 'e')
              ORDER BY 2, 3, 4"
        )
    };
}

/// Names of user relations, functions and types that `pg_catalog` does not also have,
/// with their schemas.
const NAMES: &str = concat!(
    "SELECT c.relname::text, n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND ",
    user_schemas!(),
    " AND c.relname NOT IN (SELECT relname FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace)
     UNION
     SELECT p.proname::text, n.nspname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE ",
    user_schemas!(),
    " AND p.proname NOT IN (SELECT proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace)
     UNION
     SELECT t.typname::text, n.nspname::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE t.typcategory <> 'A' AND ",
    user_schemas!(),
    " AND t.typname NOT IN (SELECT typname FROM pg_type WHERE typnamespace = 'pg_catalog'::regnamespace)"
);

/// Where each function is used, and whether the apply worker evaluates that place (named
/// as psql would take it).
const USES: &str = "
    SELECT d.refobjid, true,
           CASE WHEN a.attgenerated <> '' THEN 'generated column ' ELSE 'default of ' END
             || quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(a.attname)
      FROM pg_depend d
      JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid
      JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
      JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = ANY($1)
    UNION ALL
    SELECT d.refobjid, true,
           'constraint ' || quote_ident(con.conname) || ' on '
             || coalesce(quote_ident(cn.nspname) || '.' || quote_ident(cc.relname),
                         'domain ' || quote_ident(tn.nspname) || '.' || quote_ident(t.typname))
      FROM pg_depend d
      JOIN pg_constraint con ON d.classid = 'pg_constraint'::regclass AND con.oid = d.objid
      LEFT JOIN pg_class cc ON cc.oid = con.conrelid LEFT JOIN pg_namespace cn ON cn.oid = cc.relnamespace
      LEFT JOIN pg_type t ON t.oid = con.contypid LEFT JOIN pg_namespace tn ON tn.oid = t.typnamespace
     WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = ANY($1)
    UNION ALL
    SELECT d.refobjid, true, 'index ' || quote_ident(n.nspname) || '.' || quote_ident(i.relname)
      FROM pg_depend d
      JOIN pg_class i ON d.classid = 'pg_class'::regclass AND i.oid = d.objid AND i.relkind IN ('i', 'I')
      JOIN pg_namespace n ON n.oid = i.relnamespace
     WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = ANY($1)
    UNION ALL
    SELECT d.refobjid, tg.tgenabled IN ('A', 'R'),
           'trigger ' || quote_ident(tg.tgname) || ' on ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             || CASE WHEN tg.tgenabled IN ('A', 'R') THEN ' (fires on the subscriber)' ELSE '' END
      FROM pg_depend d
      JOIN pg_trigger tg ON d.classid = 'pg_trigger'::regclass AND tg.oid = d.objid
      JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = ANY($1)
     ORDER BY 1, 3";

/// A user function that pins no `search_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Function {
    oid: u32,
    schema: String,
    name: String,
    /// `pg_get_function_identity_arguments`.
    args: String,
    /// `f`, `p`, `w`, `a` (`prokind`).
    kind: String,
    /// `None` for SQL-standard bodies, which were resolved when created.
    body: Option<String>,
}

impl Function {
    /// `schema.name(args)` as psql would take it (the arguments come so from the server).
    fn display(&self) -> String {
        format!(
            "{}({})",
            quote::qualified_name(&self.schema, &self.name),
            self.args
        )
    }
}

/// How a body refers to names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct References {
    /// User object names written without a schema: what breaks.
    unqualified: BTreeSet<String>,
    /// Every name written, qualified or not: who it calls.
    mentioned: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Dot,
    Other,
}

/// Splits a function body into words (identifiers, case-folded unless quoted), dots, and
/// everything else; comments and string literals vanish.
fn tokenize(src: &str) -> Vec<Token> {
    let chars: Vec<char> = src.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        match c {
            _ if c.is_whitespace() => i += 1,
            '-' if at(i + 1) == Some('-') => {
                while at(i).is_some_and(|c| c != '\n') {
                    i += 1;
                }
            }
            '/' if at(i + 1) == Some('*') => {
                let mut depth = 0;
                while let Some(c) = at(i) {
                    if c == '/' && at(i + 1) == Some('*') {
                        depth += 1;
                        i += 2;
                    } else if c == '*' && at(i + 1) == Some('/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            '\'' => i = skip_string(&chars, i, false),
            '"' => {
                let mut name = String::new();
                i += 1;
                while let Some(c) = at(i) {
                    i += 1;
                    if c == '"' {
                        if at(i) == Some('"') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    name.push(c);
                }
                tokens.push(Token::Word(name));
            }
            '$' => {
                i = skip_dollar(&chars, i);
                tokens.push(Token::Other);
            }
            '.' => {
                tokens.push(Token::Dot);
                i += 1;
            }
            _ if c.is_ascii_digit() => {
                // A number, with its decimal point and exponent.
                while at(i).is_some_and(|c| c.is_ascii_alphanumeric() || c == '.') {
                    i += 1;
                }
                tokens.push(Token::Other);
            }
            _ if c.is_alphabetic() || c == '_' => {
                let start = i;
                while at(i).is_some_and(word_char) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                // E'…', B'…', X'…', N'…' are literals, not words.
                if at(i) == Some('\'')
                    && matches!(word.as_str(), "e" | "E" | "b" | "B" | "x" | "X" | "n" | "N")
                {
                    i = skip_string(&chars, i, word.eq_ignore_ascii_case("e"));
                } else {
                    tokens.push(Token::Word(word.to_ascii_lowercase()));
                }
            }
            _ => {
                tokens.push(Token::Other);
                i += 1;
            }
        }
    }
    tokens
}

/// Past a `'…'` literal starting at `start` (`''` is a quote; with `escapes`, so is `\'`).
fn skip_string(chars: &[char], start: usize, escapes: bool) -> usize {
    let mut i = start + 1;
    while let Some(&c) = chars.get(i) {
        i += 1;
        if escapes && c == '\\' {
            i += 1;
        } else if c == '\'' {
            if chars.get(i) == Some(&'\'') {
                i += 1;
            } else {
                break;
            }
        }
    }
    i
}

/// Past a `$n` parameter or a `$tag$…$tag$` string starting at `start`.
fn skip_dollar(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    if chars.get(i).is_some_and(char::is_ascii_digit) {
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
        return i;
    }
    while chars
        .get(i)
        .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        i += 1;
    }
    if chars.get(i) != Some(&'$') {
        return start + 1;
    }
    let tag = &chars[start..=i];
    let mut j = i + 1;
    while j + tag.len() <= chars.len() {
        if chars[j..j + tag.len()] == *tag {
            return j + tag.len();
        }
        j += 1;
    }
    chars.len()
}

/// The user object names `body` refers to, given the names that exist.
fn references(body: &str, names: &BTreeMap<String, BTreeSet<String>>) -> References {
    let tokens = tokenize(body);
    let mut refs = References::default();
    for (i, token) in tokens.iter().enumerate() {
        let Token::Word(word) = token else { continue };
        if !names.contains_key(word) {
            continue;
        }
        let qualified = i > 0 && tokens[i - 1] == Token::Dot;
        let qualifier = tokens.get(i + 1) == Some(&Token::Dot);
        if qualifier {
            continue;
        }
        refs.mentioned.insert(word.clone());
        if !qualified {
            refs.unqualified.insert(word.clone());
        }
    }
    refs
}

/// The functions the apply worker ends up running, with why: those used where it
/// evaluates expressions, then whatever they call by name — the callee inherits the
/// caller's (empty) `search_path`.
fn apply_evaluated(
    functions: &[Function],
    refs: &HashMap<u32, References>,
    apply_uses: &HashMap<u32, Vec<String>>,
) -> HashMap<u32, String> {
    let mut reasons: HashMap<u32, String> = HashMap::new();
    let mut queue = VecDeque::new();
    for f in functions {
        if let Some(places) = apply_uses.get(&f.oid) {
            reasons.insert(f.oid, format!("used in {}", list(places)));
            queue.push_back(f.oid);
        }
    }
    while let Some(caller) = queue.pop_front() {
        let Some(caller_fn) = functions.iter().find(|f| f.oid == caller) else {
            continue;
        };
        let Some(called) = refs.get(&caller) else {
            continue;
        };
        for callee in functions {
            if called.mentioned.contains(&callee.name) && !reasons.contains_key(&callee.oid) {
                reasons.insert(
                    callee.oid,
                    format!(
                        "called from {}, which the apply worker evaluates",
                        caller_fn.display()
                    ),
                );
                queue.push_back(callee.oid);
            }
        }
    }
    reasons
}

/// The `search_path` findings for one database of blue.
pub async fn functions(
    tx: &Transaction<'_>,
    db: &str,
    version_num: i32,
) -> Result<Vec<Finding>, Error> {
    let query = if version_num >= 140_000 {
        candidates!("p.prosqlbody IS NOT NULL")
    } else {
        candidates!("false")
    };
    let functions: Vec<Function> = tx
        .query(query, &[])
        .await
        .map_err(|e| {
            Error::query(
                format!("listing functions of {} on blue", quote::name(db)),
                e,
            )
        })?
        .iter()
        .map(|r| Function {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            args: r.get(3),
            kind: r.get(4),
            body: (!r.get::<_, bool>(6)).then(|| r.get(5)),
        })
        .collect();
    if functions.is_empty() {
        return Ok(Vec::new());
    }
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in tx.query(NAMES, &[]).await.map_err(|e| {
        Error::query(
            format!("listing object names of {} on blue", quote::name(db)),
            e,
        )
    })? {
        names.entry(row.get(0)).or_default().insert(row.get(1));
    }
    let oids: Vec<u32> = functions.iter().map(|f| f.oid).collect();
    let mut apply_uses: HashMap<u32, Vec<String>> = HashMap::new();
    let mut other_uses: HashMap<u32, Vec<String>> = HashMap::new();
    for row in tx.query(USES, &[&oids]).await.map_err(|e| {
        Error::query(
            format!(
                "listing where functions of {} are used on blue",
                quote::name(db)
            ),
            e,
        )
    })? {
        let uses = if row.get(1) {
            &mut apply_uses
        } else {
            &mut other_uses
        };
        uses.entry(row.get(0)).or_default().push(row.get(2));
    }
    let refs: HashMap<u32, References> = functions
        .iter()
        .filter_map(|f| f.body.as_deref().map(|b| (f.oid, references(b, &names))))
        .collect();
    let evaluated = apply_evaluated(&functions, &refs, &apply_uses);
    Ok(functions
        .iter()
        .filter_map(|f| {
            let unqualified = &refs.get(&f.oid)?.unqualified;
            (!unqualified.is_empty()).then(|| {
                finding(
                    db,
                    f,
                    unqualified,
                    &names,
                    evaluated.get(&f.oid),
                    other_uses.get(&f.oid),
                )
            })
        })
        .collect())
}

fn finding(
    db: &str,
    f: &Function,
    unqualified: &BTreeSet<String>,
    names: &BTreeMap<String, BTreeSet<String>>,
    evaluated: Option<&String>,
    other_uses: Option<&Vec<String>>,
) -> Finding {
    let words: Vec<String> = unqualified.iter().map(|w| quote::name(w)).collect();
    let schemas: BTreeSet<&String> = unqualified
        .iter()
        .filter_map(|w| names.get(w))
        .flatten()
        .collect();
    let search_path: Vec<String> = schemas.into_iter().map(|s| quote::name(s)).collect();
    let routine = if f.kind == "p" {
        "PROCEDURE"
    } else {
        "FUNCTION"
    };
    let fix = format!(
        "ALTER {routine} {} SET search_path = {}, or qualify every name in its body with its schema.",
        f.display(),
        search_path.join(", ")
    );
    let names_unqualified = format!(
        "Its body names {} without a schema and it pins no search_path",
        list(&words)
    );
    match evaluated {
        Some(reason) => Finding::new(
            Code::FunctionSearchPathApply,
            vec![in_database(db, &f.display())],
            format!("{names_unqualified}; it is {reason}, and green's apply worker runs with an empty search_path, so replication would stop with an error."),
            fix,
        ),
        None => Finding::new(
            Code::FunctionSearchPath,
            vec![in_database(db, &f.display())],
            format!(
                "{names_unqualified}. Nothing the apply worker evaluates uses it{}, but it fails wherever it runs with an empty search_path.",
                other_uses.map(|u| format!(" (used by {}, which does not fire on the subscriber)", list(u))).unwrap_or_default()
            ),
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, schema) in list {
            names
                .entry((*name).to_owned())
                .or_default()
                .insert((*schema).to_owned());
        }
        names
    }

    fn fixture_names() -> BTreeMap<String, BTreeSet<String>> {
        names(&[
            ("accounts", "public"),
            ("payments", "public"),
            ("currencies", "public"),
            ("touch_updated_at", "public"),
            ("default_currency", "public"),
            ("account_state", "public"),
            ("invoice lines", "billing"),
            ("Mixed", "public"),
        ])
    }

    fn unqualified(body: &str) -> Vec<String> {
        references(body, &fixture_names())
            .unqualified
            .into_iter()
            .collect()
    }

    #[test]
    fn qualified_names_are_fine() {
        // The fixture's trigger function.
        assert!(unqualified(
            "\nBEGIN\n    NEW.updated_at := pg_catalog.now();\n    RETURN NEW;\nEND "
        )
        .is_empty());
        assert!(unqualified(
            "SELECT a.id FROM public.accounts a JOIN \"public\".\"payments\" p ON true"
        )
        .is_empty());
        assert!(unqualified("SELECT * FROM billing.\"invoice lines\"").is_empty());
        // A column or alias named like a table, used as a qualifier.
        assert!(unqualified("SELECT accounts.id FROM public.accounts").is_empty());
    }

    #[test]
    fn bare_names_are_found() {
        assert_eq!(
            unqualified("BEGIN RETURN (SELECT code FROM currencies LIMIT 1); END"),
            ["currencies"]
        );
        assert_eq!(unqualified("SELECT 'x'::account_state"), ["account_state"]);
        assert_eq!(
            unqualified("DECLARE r ACCOUNTS%ROWTYPE; BEGIN END"),
            ["accounts"]
        );
        assert_eq!(
            unqualified("SELECT * FROM \"invoice lines\""),
            ["invoice lines"]
        );
        assert_eq!(unqualified("SELECT * FROM \"Mixed\", mixed"), ["Mixed"]);
        assert_eq!(
            unqualified("PERFORM default_currency()"),
            ["default_currency"]
        );
    }

    #[test]
    fn comments_and_literals_are_skipped() {
        let body = "-- reads accounts\n/* payments /* nested accounts */ currencies */\n\
                    SELECT 'accounts', E'it\\'s payments', $q$ currencies $q$, $1, 1.5e3";
        assert!(unqualified(body).is_empty(), "{:?}", tokenize(body));
        // After the literals, words count again.
        assert_eq!(
            unqualified("SELECT 'it''s' FROM payments WHERE x = $$a$$"),
            ["payments"]
        );
        // An unterminated dollar quote swallows the rest rather than panicking.
        assert!(unqualified("SELECT $tag$ accounts").is_empty());
    }

    fn function(oid: u32, name: &str) -> Function {
        Function {
            oid,
            schema: "public".to_owned(),
            name: name.to_owned(),
            args: String::new(),
            kind: "f".to_owned(),
            body: Some(String::new()),
        }
    }

    #[test]
    fn apply_evaluation_follows_calls_by_name() {
        let functions = [
            function(1, "outer_default"),
            function(2, "helper"),
            function(3, "unused"),
        ];
        let names = names(&[("helper", "public"), ("accounts", "public")]);
        let refs: HashMap<u32, References> = [
            (1, references("SELECT public.helper()", &names)),
            (2, references("SELECT count(*) FROM accounts", &names)),
            (3, references("SELECT 1", &names)),
        ]
        .into_iter()
        .collect();
        let uses: HashMap<u32, Vec<String>> = [(1, vec!["default of public.t.c".to_owned()])]
            .into_iter()
            .collect();
        let evaluated = apply_evaluated(&functions, &refs, &uses);
        assert_eq!(evaluated[&1], "used in default of public.t.c");
        assert_eq!(
            evaluated[&2],
            "called from public.outer_default(), which the apply worker evaluates"
        );
        assert!(!evaluated.contains_key(&3));
    }

    #[test]
    fn findings_name_the_function_and_suggest_its_schemas() {
        let f = function(7, "default_currency");
        let unqualified: BTreeSet<String> = ["currencies".to_owned()].into();
        let names = fixture_names();
        let reason = "used in default of public.payments.currency".to_owned();
        let blocker = finding("app", &f, &unqualified, &names, Some(&reason), None);
        assert_eq!(blocker.code, Code::FunctionSearchPathApply);
        assert_eq!(blocker.objects, ["app: public.default_currency()"]);
        assert!(blocker
            .detail
            .contains("default of public.payments.currency"));
        assert!(
            blocker
                .fix
                .starts_with("ALTER FUNCTION public.default_currency() SET search_path = public,"),
            "{}",
            blocker.fix
        );
        let warning = finding("app", &f, &unqualified, &names, None, None);
        assert_eq!(warning.code, Code::FunctionSearchPath);
    }

    /// Names in the finding paste into psql: `a.b` + `c` is never `a` + `b.c`.
    #[test]
    fn findings_quote_names_where_psql_needs_it() {
        let f = Function {
            schema: "Weird \"Schema\"".to_owned(),
            name: "plain heap".to_owned(),
            args: "a integer".to_owned(),
            kind: "p".to_owned(),
            ..function(8, "")
        };
        let unqualified: BTreeSet<String> = ["invoice lines".to_owned(), "user".to_owned()].into();
        let names = names(&[("invoice lines", "billing"), ("user", "a.b")]);
        let found = finding("my db", &f, &unqualified, &names, None, None);
        assert_eq!(
            found.objects,
            [r#""my db": "Weird ""Schema"""."plain heap"(a integer)"#]
        );
        assert!(
            found
                .detail
                .starts_with(r#"Its body names "invoice lines", "user" without a schema"#),
            "{}",
            found.detail
        );
        assert!(
            found.fix.starts_with(
                r#"ALTER PROCEDURE "Weird ""Schema"""."plain heap"(a integer) SET search_path = "a.b", billing,"#
            ),
            "{}",
            found.fix
        );
    }
}
