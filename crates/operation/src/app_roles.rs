//! The cell's application roles as SSM describes them (one SecureString parameter per role
//! under `credentials.application_roles_path`): read, parsed and checked in full before a
//! server is touched. sync-roles writes them onto green; resume-pgbouncer opens green's
//! logins at the switch ([`crate::green_fence`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::Error;
use aws_sdk_ssm::types::ParameterType;
use serde::Deserialize;
use switchyard_errors::ErrorName;
use switchyard_postgres::quote;
use switchyard_telemetry::Secret;

/// The attributes a role parameter may set, each with its negation, in the order of the
/// `pg_roles` columns `Attributes` is read from.
const FLAGS: [(&str, &str); 6] = [
    ("LOGIN", "NOLOGIN"),
    ("REPLICATION", "NOREPLICATION"),
    ("CREATEDB", "NOCREATEDB"),
    ("CREATEROLE", "NOCREATEROLE"),
    ("INHERIT", "NOINHERIT"),
    ("BYPASSRLS", "NOBYPASSRLS"),
];
/// What `CREATE ROLE` gives an attribute the parameter does not name.
const DEFAULTS: [bool; 6] = [false, false, false, false, true, false];

/// A role's settable attributes. A parameter is declarative: an attribute it does not
/// name takes `CREATE ROLE`'s default (so a hand-made `CREATEDB` on green is undone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes([bool; 6]);

impl Attributes {
    /// From `pg_roles`: rolcanlogin, rolreplication, rolcreatedb, rolcreaterole,
    /// rolinherit, rolbypassrls.
    pub fn from_catalog(values: [bool; 6]) -> Self {
        Self(values)
    }

    fn from_keywords(keywords: &[String]) -> Result<Self, String> {
        let mut values = DEFAULTS;
        let mut named: [Option<bool>; 6] = [None; 6];
        for keyword in keywords {
            let upper = keyword.trim().to_ascii_uppercase();
            let (i, value) = FLAGS
                .iter()
                .enumerate()
                .find_map(|(i, (on, off))| {
                    (upper == *on)
                        .then_some((i, true))
                        .or((upper == *off).then_some((i, false)))
                })
                .ok_or_else(|| {
                    format!(
                        "attribute {keyword:?} is not allowed (allowed: {})",
                        FLAGS
                            .iter()
                            .flat_map(|(on, off)| [*on, *off])
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            if named[i].is_some_and(|earlier| earlier != value) {
                return Err(format!(
                    "attributes {} and {} contradict each other",
                    FLAGS[i].0, FLAGS[i].1
                ));
            }
            named[i] = Some(value);
            values[i] = value;
        }
        Ok(Self(values))
    }

    /// Every attribute, for `CREATE ROLE`.
    pub fn keywords(self) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(FLAGS)
            .map(|(value, (on, off))| if *value { on } else { off })
            .collect()
    }

    /// Whether the role may log in.
    pub fn login(self) -> bool {
        self.0[0]
    }

    /// Whether the role may open replication connections.
    pub fn replication(self) -> bool {
        self.0[1]
    }

    /// The same, but NOLOGIN.
    pub fn without_login(self) -> Self {
        let mut values = self.0;
        values[0] = false;
        Self(values)
    }

    /// The attributes to change to turn `current` into `self`, for `ALTER ROLE`.
    pub fn changes_from(self, current: Self) -> Vec<&'static str> {
        self.keywords()
            .into_iter()
            .zip(self.0.iter().zip(current.0))
            .filter(|(_, (want, have))| **want != *have)
            .map(|(keyword, _)| keyword)
            .collect()
    }
}

/// One application role, from its parameter.
#[derive(Debug)]
pub struct Role {
    /// The SSM parameter it came from: what messages name.
    pub parameter: String,
    pub name: String,
    /// Absent for a group (NOLOGIN) role: its password on green is then left alone.
    pub password: Option<Secret>,
    pub attributes: Attributes,
    pub member_of: Vec<String>,
}

impl Role {
    /// Kept from logging in to green until the switch (see [`crate::green_fence`]): a
    /// login role that is not a replication role. A replication role is a downstream
    /// subscriber's, and its subscription is recreated on green inside the window, before
    /// the switch; it reads through a walsender and holds no write privilege in a sound
    /// cell.
    pub fn fenced_on_green(&self) -> bool {
        self.attributes.login() && !self.attributes.replication()
    }
}

/// The parameter's JSON, as `tests/local-cell` and operators write it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDocument {
    username: String,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    attributes: Vec<String>,
    #[serde(default)]
    member_of: Vec<String>,
}

/// Reads every parameter under `path` (recursively, decrypted, all pages) and checks them
/// all: a parameter that cannot be read as a role is `SecretUnavailable`, one that asks for
/// something not allowed is `InvalidInput`; either way every problem is listed at once.
pub async fn read(
    ssm: &aws_sdk_ssm::Client,
    path: &str,
    orchestrator: &str,
) -> Result<Vec<Role>, Error> {
    let mut pages = ssm
        .get_parameters_by_path()
        .path(path)
        .recursive(true)
        .with_decryption(true)
        .into_paginator()
        .send();
    let mut raw = Vec::new();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| Error::aws(&format!("reading SSM parameters under {path}"), &e))?;
        for p in page.parameters() {
            raw.push((
                p.name().unwrap_or_default().to_owned(),
                p.r#type().cloned(),
                Secret::new(p.value().unwrap_or_default()),
            ));
        }
    }
    if raw.is_empty() {
        return Err(Error::stop(
            ErrorName::SecretUnavailable,
            format!("no role parameters under {path}: create one SecureString per application role there, or fix credentials.application_roles_path"),
        ));
    }
    let mut unreadable = Vec::new();
    let mut documents = Vec::new();
    for (parameter, kind, value) in raw {
        match parse(&parameter, kind.as_ref(), &value) {
            Ok(document) => documents.push((parameter, document)),
            Err(problem) => unreadable.push(problem),
        }
    }
    if !unreadable.is_empty() {
        return Err(Error::stop(
            ErrorName::SecretUnavailable,
            format!(
                "role parameters under {path} cannot be read; fix them and rerun (nothing was changed):\n{}",
                unreadable.join("\n")
            ),
        ));
    }
    check(documents, orchestrator).map_err(|problems| {
        Error::stop(
            ErrorName::InvalidInput,
            format!(
                "role parameters under {path} ask for what switchyard will not do; fix them and rerun (nothing was changed):\n{}",
                problems.join("\n")
            ),
        )
    })
}

/// The message names the parameter and where the JSON broke, never the value: it holds
/// a password.
fn parse(
    parameter: &str,
    kind: Option<&ParameterType>,
    value: &Secret,
) -> Result<RoleDocument, String> {
    if kind != Some(&ParameterType::SecureString) {
        return Err(format!(
            "{parameter}: is {}, not a SecureString; store role credentials encrypted",
            kind.map_or("untyped", ParameterType::as_str)
        ));
    }
    serde_json::from_str(value.expose()).map_err(|e| {
        format!(
            "{parameter}: value is not a role document {{\"username\", \"password\" (optional), \"attributes\", \"member_of\"}} (line {}, column {})",
            e.line(),
            e.column()
        )
    })
}

fn check(
    documents: Vec<(String, RoleDocument)>,
    orchestrator: &str,
) -> Result<Vec<Role>, Vec<String>> {
    let mut problems = Vec::new();
    let mut roles = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (parameter, doc) in documents {
        let mut problem = |what: String| problems.push(format!("{parameter}: {what}"));
        let name = doc.username;
        if name.is_empty() || name.len() > 63 {
            problem(format!("username {name:?} must be 1 to 63 bytes"));
        } else if name.starts_with("pg_") {
            problem(format!(
                "username {name:?}: names starting with pg_ are reserved"
            ));
        } else if name == orchestrator {
            problem(format!(
                "username {name:?} is the orchestrator's own login, managed by its own parameter"
            ));
        }
        if let Some(first) = seen.insert(name.clone(), parameter.clone()) {
            problem(format!("username {name:?} is also defined by {first}"));
        }
        if doc.password.as_ref().is_some_and(|p| p.expose().is_empty()) {
            problem("password is empty: omit it for a role without one".to_owned());
        }
        if doc.member_of.iter().any(|g| g == &name || g.is_empty()) {
            problem("member_of names the role itself or an empty name".to_owned());
        }
        match Attributes::from_keywords(&doc.attributes) {
            Ok(attributes) => roles.push(Role {
                parameter: parameter.clone(),
                name,
                password: doc.password,
                attributes,
                member_of: doc.member_of,
            }),
            Err(what) => problem(what),
        }
    }
    if problems.is_empty() {
        Ok(roles)
    } else {
        Err(problems)
    }
}

/// The roles in an order where every group comes before its members (ties by name), so
/// a role exists before another joins it; a membership cycle is `InvalidInput`.
pub fn ordered(roles: &[Role]) -> Result<Vec<&Role>, Error> {
    let by_name: BTreeMap<&str, &Role> = roles.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut waiting: BTreeMap<&str, BTreeSet<&str>> = roles
        .iter()
        .map(|r| {
            let groups = r
                .member_of
                .iter()
                .map(String::as_str)
                .filter(|g| by_name.contains_key(g))
                .collect();
            (r.name.as_str(), groups)
        })
        .collect();
    let mut order = Vec::with_capacity(roles.len());
    while !waiting.is_empty() {
        let ready: Vec<&str> = waiting
            .iter()
            .filter(|(_, groups)| groups.is_empty())
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            let stuck: Vec<String> = waiting.keys().map(|name| quote::name(name)).collect();
            return Err(Error::stop(
                ErrorName::InvalidInput,
                format!(
                    "the member_of lists of {} form a cycle, which PostgreSQL refuses; break it in SSM and rerun (nothing was changed)",
                    stuck.join(", ")
                ),
            ));
        }
        for name in ready {
            waiting.remove(name);
            for groups in waiting.values_mut() {
                groups.remove(name);
            }
            order.extend(by_name.get(name));
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_errors::Catalogued;

    fn doc(name: &str, attributes: &[&str], member_of: &[&str]) -> (String, RoleDocument) {
        (
            format!("/x/roles/{name}"),
            RoleDocument {
                username: name.to_owned(),
                password: Some(Secret::new("pw")),
                attributes: attributes.iter().map(|s| (*s).to_owned()).collect(),
                member_of: member_of.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
    }

    #[test]
    fn attributes_default_like_create_role_and_diff_minimally() {
        let login = Attributes::from_keywords(&["login".to_owned()]).expect("valid");
        assert_eq!(
            login.keywords(),
            [
                "LOGIN",
                "NOREPLICATION",
                "NOCREATEDB",
                "NOCREATEROLE",
                "INHERIT",
                "NOBYPASSRLS"
            ]
        );
        let current = Attributes::from_catalog([true, true, false, false, true, false]);
        assert_eq!(login.changes_from(current), ["NOREPLICATION"]);
        assert!(login.changes_from(login).is_empty());
    }

    #[test]
    fn refuses_unknown_and_contradictory_attributes() {
        let err = Attributes::from_keywords(&["SUPERUSER".to_owned()]).expect_err("superuser");
        assert!(err.contains("\"SUPERUSER\" is not allowed"), "{err}");
        let err = Attributes::from_keywords(&["LOGIN".to_owned(), "NOLOGIN".to_owned()])
            .expect_err("both");
        assert!(err.contains("contradict"), "{err}");
    }

    #[test]
    fn check_lists_every_problem_with_its_parameter() {
        let problems = check(
            vec![
                doc("app", &["LOGIN"], &[]),
                doc("app", &["LOGIN"], &[]),
                doc("boss", &["SUPERUSER"], &[]),
                doc("switchyard", &[], &[]),
                doc("pg_mine", &[], &["pg_mine"]),
            ],
            "switchyard",
        )
        .expect_err("problems");
        let text = problems.join("\n");
        assert_eq!(problems.len(), 5, "{text}");
        assert!(
            text.contains("/x/roles/boss: attribute \"SUPERUSER\""),
            "{text}"
        );
        assert!(text.contains("also defined by /x/roles/app"), "{text}");
        assert!(text.contains("orchestrator's own login"), "{text}");
        assert!(text.contains("reserved"), "{text}");
    }

    #[test]
    fn malformed_json_names_the_parameter_but_not_the_value() {
        let value = Secret::new(
            r#"{"username": "app", "password": "hunter2@!':/", "attributes": "LOGIN"}"#,
        );
        let problem = parse("/x/roles/app", Some(&ParameterType::SecureString), &value)
            .err()
            .expect("attributes must be a list");
        assert!(
            problem.starts_with("/x/roles/app: value is not a role document"),
            "{problem}"
        );
        assert!(!problem.contains("hunter2"), "{problem}");
        let plain = parse("/x/roles/app", Some(&ParameterType::String), &value)
            .err()
            .expect("not encrypted");
        assert!(plain.contains("not a SecureString"), "{plain}");
    }

    #[test]
    fn groups_come_before_members_and_cycles_are_refused() {
        let roles = check(
            vec![
                doc("writer", &["LOGIN"], &["rw"]),
                doc("rw", &["NOLOGIN"], &["base"]),
                doc("base", &["NOLOGIN"], &["pg_read_all_data"]),
                doc("reader", &["LOGIN"], &[]),
            ],
            "switchyard",
        )
        .expect("valid");
        let names: Vec<&str> = ordered(&roles)
            .expect("acyclic")
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["base", "reader", "rw", "writer"]);

        let roles = check(
            vec![
                doc("a", &[], &["b"]),
                doc("b", &[], &["a"]),
                doc("c", &[], &[]),
            ],
            "switchyard",
        )
        .expect("valid");
        let err = ordered(&roles).expect_err("cycle");
        assert_eq!(err.error_name(), ErrorName::InvalidInput);
        assert!(err.to_string().contains("a, b form a cycle"), "{err}");
    }
}
