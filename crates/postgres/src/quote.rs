//! The one quoting helper for SQL text: every identifier and literal that switchyard
//! writes into a statement goes through here, exactly as PostgreSQL's own
//! `quote_ident(…)` / `quote_literal(…)` would render it.
//!
//! These functions are total: any `&str` yields a well-formed token, so the call sites
//! have no error path to forget. A NUL byte is passed through unchanged: no PostgreSQL
//! name or text value can hold one, and the driver refuses to send any statement that
//! contains one (`string contains embedded null`), so it surfaces as an error when the
//! statement runs — it can never end a string early. Likewise a name longer than 63
//! bytes is quoted as given; names come from the catalogue, which has already truncated
//! them, so rejecting here would only duplicate the server's rule.

/// Quotes an SQL identifier: always double-quoted, embedded `"` doubled.
///
/// Unlike `quote_ident`, this quotes even names that would be safe bare: a name is
/// then always taken verbatim (case kept, keywords harmless).
///
/// ```
/// assert_eq!(switchyard_postgres::quote::ident("invoice lines"), r#""invoice lines""#);
/// assert_eq!(switchyard_postgres::quote::ident(r#"a"b"#), r#""a""b""#);
/// ```
pub fn ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Quotes a value for a libpq connection string (`key='value'`), as a subscription's
/// `CONNECTION` needs: single quotes around it, `\\` and `'` escaped with a backslash.
/// The whole connection string then goes through [`literal`] like any other text.
///
/// ```
/// assert_eq!(switchyard_postgres::quote::conninfo_value("p@ss'w:/d"), r"'p@ss\'w:/d'");
/// ```
pub fn conninfo_value(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// Quotes a schema-qualified name: `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Renders a name for a message, quoted only where needed, so it pastes into psql.
///
/// PostgreSQL's `quote_ident` rule: bare only when it is `[a-z_][a-z0-9_]*` and not in
/// [`QUOTED_KEYWORDS`]; otherwise double-quoted with embedded `"` doubled. For SQL text,
/// use [`ident`].
///
/// ```
/// assert_eq!(switchyard_postgres::quote::name("orders"), "orders");
/// assert_eq!(switchyard_postgres::quote::name("plain heap"), r#""plain heap""#);
/// assert_eq!(switchyard_postgres::quote::name("user"), r#""user""#);
/// ```
pub fn name(name: &str) -> String {
    let mut chars = name.chars();
    let bare = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && QUOTED_KEYWORDS.binary_search(&name).is_err();
    if bare {
        name.to_owned()
    } else {
        ident(name)
    }
}

/// Renders a schema-qualified name for a message: [`name`] of each part, joined by `.`.
///
/// ```
/// assert_eq!(
///     switchyard_postgres::quote::qualified_name("Weird \"Schema\"", "plain heap"),
///     r#""Weird ""Schema"""."plain heap""#
/// );
/// ```
pub fn qualified_name(schema: &str, object: &str) -> String {
    format!("{}.{}", name(schema), name(object))
}

/// The keywords `quote_ident` quotes (every category but unreserved), sorted.
///
/// The union over the majors switchyard supports (14 to 18): quoting a word one major
/// would leave bare is harmless, leaving bare a word another major reserves is not.
#[rustfmt::skip]
pub const QUOTED_KEYWORDS: &[&str] = &[
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric",
    "authorization", "between", "bigint", "binary", "bit", "boolean", "both", "case", "cast",
    "char", "character", "check", "coalesce", "collate", "collation", "column", "concurrently",
    "constraint", "create", "cross", "current_catalog", "current_date", "current_role",
    "current_schema", "current_time", "current_timestamp", "current_user", "dec", "decimal",
    "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "exists",
    "extract", "false", "fetch", "float", "for", "foreign", "freeze", "from", "full", "grant",
    "greatest", "group", "grouping", "having", "ilike", "in", "initially", "inner", "inout",
    "int", "integer", "intersect", "interval", "into", "is", "isnull", "join", "json",
    "json_array", "json_arrayagg", "json_exists", "json_object", "json_objectagg", "json_query",
    "json_scalar", "json_serialize", "json_table", "json_value", "lateral", "leading", "least",
    "left", "like", "limit", "localtime", "localtimestamp", "merge_action", "national",
    "natural", "nchar", "none", "normalize", "not", "notnull", "null", "nullif", "numeric",
    "offset", "on", "only", "or", "order", "out", "outer", "overlaps", "overlay", "placing",
    "position", "precision", "primary", "real", "references", "returning", "right", "row",
    "select", "session_user", "setof", "similar", "smallint", "some", "substring", "symmetric",
    "system_user", "table", "tablesample", "then", "time", "timestamp", "to", "trailing",
    "treat", "trim", "true", "union", "unique", "user", "using", "values", "varchar",
    "variadic", "verbose", "when", "where", "window", "with", "xmlattributes", "xmlconcat",
    "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces", "xmlparse", "xmlpi", "xmlroot",
    "xmlserialize", "xmltable",
];

/// Quotes a text literal the way PostgreSQL's `quote_literal` does: single quotes
/// doubled and, when the value holds a backslash, the `E'…'` form with backslashes
/// doubled — so the result means the same whatever `standard_conforming_strings` is.
///
/// ```
/// assert_eq!(switchyard_postgres::quote::literal("it's"), "'it''s'");
/// assert_eq!(switchyard_postgres::quote::literal(r"a\b"), r"E'a\\b'");
/// ```
pub fn literal(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        quoted.push('E');
    }
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push(c);
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::{ident, literal, name, qualified, qualified_name, QUOTED_KEYWORDS};

    #[test]
    fn ident_cases() {
        let cases: &[(&str, &str)] = &[
            ("orders", r#""orders""#),
            ("Orders", r#""Orders""#),
            ("invoice lines", r#""invoice lines""#),
            ("", r#""""#),
            (r#"a"b"#, r#""a""b""#),
            (r#"""#, r#""""""#),
            (r#""""#, r#""""""""#),
            ("it's", r#""it's""#),
            (r"back\slash", r#""back\slash""#),
            ("select", r#""select""#),
            ("Ünïcødé 表", r#""Ünïcødé 表""#),
            ("🦀", r#""🦀""#),
            ("x\"; DROP TABLE t; --", r#""x""; DROP TABLE t; --""#),
        ];
        for (input, expected) in cases {
            assert_eq!(ident(input), *expected, "ident({input:?})");
        }
    }

    #[test]
    fn qualified_cases() {
        let cases: &[(&str, &str, &str)] = &[
            ("public", "orders", r#""public"."orders""#),
            ("billing", "invoice lines", r#""billing"."invoice lines""#),
            ("a.b", "c", r#""a.b"."c""#),
            (r#"s"x"#, r#"n"y"#, r#""s""x"."n""y""#),
        ];
        for (schema, name, expected) in cases {
            assert_eq!(
                qualified(schema, name),
                *expected,
                "qualified({schema:?}, {name:?})"
            );
        }
    }

    #[test]
    fn name_cases() {
        // Expected values are what PostgreSQL's quote_ident returns (on 18 for keywords).
        let cases: &[(&str, &str)] = &[
            ("orders", "orders"),
            ("_x1", "_x1"),
            ("invoice_lines_2", "invoice_lines_2"),
            ("Orders", r#""Orders""#),
            ("UPPER", r#""UPPER""#),
            ("plain heap", r#""plain heap""#),
            ("a.b", r#""a.b""#),
            ("_x1$", r#""_x1$""#),
            ("1abc", r#""1abc""#),
            ("café", r#""café""#),
            ("ÄÖ", r#""ÄÖ""#),
            ("", r#""""#),
            (r#"""#, r#""""""#),
            (r#"Weird "Schema""#, r#""Weird ""Schema""""#),
            ("user", r#""user""#),
            ("select", r#""select""#),
            ("json_table", r#""json_table""#),
            // Unreserved keywords stay bare.
            ("name", "name"),
            ("schema", "schema"),
            ("sequence", "sequence"),
        ];
        for (input, expected) in cases {
            assert_eq!(name(input), *expected, "name({input:?})");
        }
    }

    /// The issue's examples: a name pastes into psql, and `a.b` + `c` is never `a` + `b.c`.
    #[test]
    fn qualified_name_cases() {
        assert_eq!(
            qualified_name(r#"Weird "Schema""#, "plain heap"),
            r#""Weird ""Schema"""."plain heap""#
        );
        assert_eq!(qualified_name("public", "orders"), "public.orders");
        assert_eq!(qualified_name("a.b", "c"), r#""a.b".c"#);
        assert_eq!(qualified_name("a", "b.c"), r#"a."b.c""#);
        assert_ne!(qualified_name("a.b", "c"), qualified_name("a", "b.c"));
    }

    /// `name` finds keywords by binary search.
    #[test]
    fn keywords_are_sorted_lowercase_and_unique() {
        assert!(QUOTED_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(QUOTED_KEYWORDS
            .iter()
            .all(|w| w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn literal_cases() {
        // Expected values are what PostgreSQL's quote_literal returns.
        let cases: &[(&str, &str)] = &[
            ("", "''"),
            ("plain", "'plain'"),
            ("it's", "'it''s'"),
            ("''", "''''''"),
            (r#"say "hi""#, r#"'say "hi"'"#),
            (r"C:\temp", r"E'C:\\temp'"),
            (r"\", r"E'\\'"),
            (r"\'", r"E'\\'''"),
            (r"it's a\b", r"E'it''s a\\b'"),
            ("Ünïcødé 表 🦀", "'Ünïcødé 表 🦀'"),
            ("line\nbreak", "'line\nbreak'"),
            ("$$dollar$$", "'$$dollar$$'"),
            ("x'; DROP TABLE t; --", "'x''; DROP TABLE t; --'"),
        ];
        for (input, expected) in cases {
            assert_eq!(literal(input), *expected, "literal({input:?})");
        }
    }

    /// Reads a quoted identifier back the way PostgreSQL's lexer does; `None` if the
    /// text is not exactly one well-formed quoted identifier.
    fn lex_ident(text: &str) -> Option<String> {
        let mut chars = text.strip_prefix('"')?.chars().peekable();
        let mut name = String::new();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    return chars.next().is_none().then_some(name);
                }
            }
            name.push(c);
        }
        None
    }

    /// Reads a literal back the way PostgreSQL's lexer does with
    /// `standard_conforming_strings` either on or off; `None` if the two readings
    /// disagree or the text is not exactly one literal.
    fn lex_literal(text: &str, standard_conforming_strings: bool) -> Option<String> {
        let (escapes, body) = match text.strip_prefix('E') {
            Some(rest) => (true, rest),
            None => (!standard_conforming_strings, text),
        };
        let mut chars = body.strip_prefix('\'')?.chars().peekable();
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                }
                '\'' => return chars.next().is_none().then_some(value),
                // Only `\\` is ever produced; any other escape would be a bug here.
                '\\' if escapes => match chars.next()? {
                    '\\' => {}
                    _ => return None,
                },
                _ => {}
            }
            value.push(c);
        }
        None
    }

    /// Every string of up to three tricky pieces survives a round trip through the
    /// lexer, under both settings of `standard_conforming_strings`.
    #[test]
    fn round_trips_through_the_lexer() {
        let pieces = [
            "", "'", "\"", "\\", "''", "\"\"", "\\'", "\\\\", "E'", "a", " ", ";", "--", "/*",
            "$$", "\n", "\t", "é", "表", "🦀", "\0",
        ];
        let mut checked = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let input = format!("{a}{b}{c}");
                    let quoted_ident = ident(&input);
                    assert_eq!(lex_ident(&quoted_ident).as_deref(), Some(input.as_str()));
                    let quoted_literal = literal(&input);
                    for scs in [true, false] {
                        assert_eq!(
                            lex_literal(&quoted_literal, scs).as_deref(),
                            Some(input.as_str()),
                            "literal({input:?}) = {quoted_literal}, standard_conforming_strings={scs}"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, pieces.len().pow(3));
    }

    /// The test lexers must themselves reject what is not one token.
    #[test]
    fn lexers_reject_broken_tokens() {
        assert_eq!(lex_ident(r#""a"b""#), None);
        assert_eq!(lex_ident(r#""a"#), None);
        assert_eq!(lex_ident("a"), None);
        assert_eq!(lex_literal("'a'b'", true), None);
        assert_eq!(lex_literal(r"'a\'", false), None);
        assert_eq!(lex_literal(r"E'a\n'", true), None);
    }
}
