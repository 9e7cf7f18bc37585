//! `sync-roles`: the cell's application roles on green, as SSM describes them, so that
//! PgBouncer and the applications log in to green unchanged after the switchover.
//!
//! Every parameter under `credentials.application_roles_path` is one role:
//! `{"username": "app_writer", "password": "…", "attributes": ["LOGIN"], "member_of": ["app_rw"]}`
//! (`password` absent for a group). All of them are read and checked before green is
//! touched; then, in one transaction as the orchestrator, missing roles are created,
//! existing ones altered where their attributes or password differ, and missing
//! memberships granted. Passwords reach green only as SCRAM verifiers computed here, and
//! never appear in a log, a message or the output.
//!
//! Nothing is dropped: a role on green that SSM does not describe is reported in
//! `extra_roles`, except the platform's own (see [`is_platform_role`]).
//!
//! Until the cell has switched to green, every login role that is not a replication role
//! is created — and kept, on every rerun — NOLOGIN on green, and the sessions such roles
//! hold there are ended after the commit: no application writes to green before the
//! switch (`switchyard_operation::green_fence`; resume-pgbouncer opens the logins at the
//! switch). Once the cell has switched, a rerun writes the roles exactly as SSM says.
//!
//! Dry run ([`plan`]): every CREATE ROLE, ALTER ROLE (attributes, and whether the password
//! would be set) and GRANT the run would make now, from the same comparison; no password.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_operation::app_roles::{self as parameters, Attributes, Role};
use switchyard_operation::fence::{self, Direction};
use switchyard_operation::{green_fence, Deps, Error, Listed, Plan, Side};
use switchyard_postgres::quote::{self, ident, literal};
use switchyard_postgres::scram_verifier;
use tokio_postgres::Client;

/// ```json
/// {"cell": { …the cell document… }}
/// ```
/// (`payloads/input.json` holds a whole one.)
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
    /// The run acting: it must hold the cell's lock.
    pub run_id: String,
    /// Act without holding the lock: for an operator who has made sure no run
    /// is live.
    #[serde(default)]
    pub force: bool,
}

switchyard_operation::operation_input!(Input);

/// What was done to each role named in SSM (each appears in exactly one of the first
/// four lists) and what green holds beyond them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    /// Roles that did not exist on green.
    pub created: Listed<String>,
    /// Roles whose attributes differed, or whose stored password did not verify.
    pub altered: Listed<String>,
    /// Roles already as SSM describes them.
    pub unchanged: Listed<String>,
    /// Roles whose attributes matched but whose password was set without comparing it,
    /// because the orchestrator cannot read `pg_authid` (Aurora).
    pub password_set: Listed<String>,
    /// `member→group` memberships granted.
    pub memberships_granted: Listed<String>,
    /// Roles on green that SSM does not describe: reported, never dropped.
    pub extra_roles: Listed<String>,
    /// Login roles kept NOLOGIN on green until the switch (empty once switched).
    #[serde(default)]
    pub fenced: Listed<String>,
    /// Sessions of those roles this run ended on green.
    #[serde(default)]
    pub sessions_ended: usize,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let admitted = fence::admit(deps, &input.cell, input.caller(), Direction::Either).await?;
    let fencing = !switched(&input.cell, &admitted);
    let Survey {
        roles,
        orchestrator,
        mut client,
        green,
    } = Box::pin(survey(&input.cell, deps)).await?;
    let changes = changes(&parameters::ordered(&roles)?, &green, fencing);
    let fenced = if fencing {
        green_fence::fenced(&roles)
    } else {
        Vec::new()
    };

    let mut output = Output {
        extra_roles: Listed::of(extra_roles(&roles, &green, &orchestrator)),
        fenced: Listed::of(fenced.iter().map(|r| (*r).to_owned()).collect()),
        ..Output::default()
    };
    // One transaction: a failure halfway leaves green's roles as they were.
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::query("BEGIN", e))?;
    for (role, change) in &changes.roles {
        let list = match change {
            RoleChange::Create => {
                create(&tx, role, wanted(role, fencing)).await?;
                &mut output.created
            }
            RoleChange::Alter {
                attributes,
                password,
            } => {
                alter(&tx, role, attributes, *password).await?;
                if attributes.is_empty() && *password == PasswordState::Unknown {
                    &mut output.password_set
                } else {
                    &mut output.altered
                }
            }
            RoleChange::None => &mut output.unchanged,
        };
        list.push(role.name.clone());
    }
    for (member, group) in &changes.grants {
        tx.batch_execute(&format!("GRANT {} TO {}", ident(group), ident(member)))
            .await
            .map_err(|e| {
                Error::query(
                    format!("GRANT {} TO {}", quote::name(group), quote::name(member)),
                    e,
                )
            })?;
        tracing::info!(member = %member, group = %group, "membership granted");
        output
            .memberships_granted
            .push(format!("{}→{}", quote::name(member), quote::name(group)));
    }
    tx.commit().await.map_err(|e| Error::query("COMMIT", e))?;
    // After the commit: a session opened before its role lost LOGIN outlives the change.
    output.sessions_ended = green_fence::end_sessions(&client, &fenced).await?;
    if !output.extra_roles.is_empty() {
        tracing::warn!(roles = %names(&output.extra_roles.first), total = output.extra_roles.total, "green has roles that ssm does not describe; left in place");
    }
    Ok(output)
}

/// What [`run`] would change on green now, in its order; passwords are only said to be set.
#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id, cluster = %input.cell.green.cluster_identifier))]
pub async fn plan(input: Input, deps: &Deps) -> Result<Plan, Error> {
    let admitted = fence::check(deps, &input.cell, input.caller(), Direction::Either).await?;
    let fencing = !switched(&input.cell, &admitted);
    let Survey {
        roles,
        client,
        green,
        ..
    } = Box::pin(survey(&input.cell, deps)).await?;
    let changes = changes(&parameters::ordered(&roles)?, &green, fencing);
    let mut plan = Plan::new();
    for (role, change) in &changes.roles {
        match change {
            RoleChange::None => {}
            RoleChange::Create => {
                let password = if role.password.is_some() {
                    " with its SSM password (as a SCRAM verifier)"
                } else {
                    ""
                };
                plan.would(format!(
                    "on green: CREATE ROLE {} {}{password}",
                    quote::name(&role.name),
                    wanted(role, fencing).keywords().join(" ")
                ));
            }
            RoleChange::Alter {
                attributes,
                password,
            } => {
                let password = match password {
                    PasswordState::Differs => {
                        Some("set its password from SSM (green's does not verify)")
                    }
                    PasswordState::Unknown => {
                        Some("set its password from SSM (green's cannot be read to compare)")
                    }
                    PasswordState::Absent | PasswordState::Verified => None,
                };
                let what: Vec<&str> = attributes.iter().copied().chain(password).collect();
                plan.would(format!(
                    "on green: ALTER ROLE {}: {}",
                    quote::name(&role.name),
                    what.join(", ")
                ));
            }
        }
    }
    for (member, group) in &changes.grants {
        plan.would(format!(
            "on green: GRANT {} TO {}",
            quote::name(group),
            quote::name(member)
        ));
    }
    if fencing {
        let fenced = green_fence::fenced(&roles);
        let sessions = green_fence::sessions(&client, &fenced).await?;
        if sessions > 0 {
            plan.would(format!(
                "on green: end every session of {} ({sessions} now; kept from logging in until the switch)",
                names(&fenced)
            ));
        }
    }
    Ok(plan)
}

/// How green's roles differ from what SSM describes now: what a run would change, read
/// only. For `check-drift` and the switchover's preflight: a password rotated or a
/// membership granted in SSM after prepare would otherwise break logins on green only
/// after the point of no return. Before the switch the fence's NOLOGIN is expected, not a
/// difference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// One line per difference, naming the role and what differs (never a password).
    pub differences: Vec<String>,
    /// Roles whose password cannot be compared here (Aurora: `pg_authid` is unreadable).
    pub unverifiable: Vec<String>,
}

pub async fn drift(cell: &CellDocument, deps: &Deps) -> Result<Drift, Error> {
    let (_, decision) = deps
        .journal(cell)
        .get_pair::<fence::RunLock, fence::Decision>()
        .await?;
    let fencing = !cell.is_back() && !decision.is_some_and(|d| d.switched(cell));
    let Survey { roles, green, .. } = Box::pin(survey(cell, deps)).await?;
    let changes = changes(&parameters::ordered(&roles)?, &green, fencing);
    let mut drift = Drift::default();
    for (role, change) in &changes.roles {
        let name = quote::name(&role.name);
        match change {
            RoleChange::None => {}
            RoleChange::Create => drift
                .differences
                .push(format!("role {name} does not exist on green")),
            RoleChange::Alter {
                attributes,
                password,
            } => {
                if !attributes.is_empty() {
                    drift.differences.push(format!(
                        "role {name} on green needs {}",
                        attributes.join(" ")
                    ));
                }
                match password {
                    PasswordState::Differs => drift.differences.push(format!(
                        "role {name}: the password in SSM does not verify against green's (rotated since sync-roles ran?)"
                    )),
                    PasswordState::Unknown => drift.unverifiable.push(role.name.clone()),
                    PasswordState::Absent | PasswordState::Verified => {}
                }
            }
        }
    }
    for (member, group) in &changes.grants {
        drift.differences.push(format!(
            "role {} is not a member of {} on green",
            quote::name(member),
            quote::name(group)
        ));
    }
    Ok(drift)
}

/// Role names as messages show them, joined.
fn names<S: AsRef<str>>(roles: &[S]) -> String {
    let shown: Vec<String> = roles.iter().map(|r| quote::name(r.as_ref())).collect();
    shown.join(", ")
}

/// Whether the cell has switched to this green: its logins are then open.
/// Green's logins are open: it has switched, or it is a switch-back's green — the old
/// blue, whose logins served until the switch and which its revoked writes fence instead.
fn switched(cell: &CellDocument, admitted: &fence::Admitted) -> bool {
    cell.is_back() || admitted.decision.as_ref().is_some_and(|d| d.switched(cell))
}

/// The attributes `role` gets on green now: SSM's, without LOGIN while `fencing` and the
/// role is one the fence keeps out.
fn wanted(role: &Role, fencing: bool) -> Attributes {
    if fencing && role.fenced_on_green() {
        role.attributes.without_login()
    } else {
        role.attributes
    }
}

/// Everything [`run`] and [`plan`] decide from, read and checked before green is touched.
struct Survey {
    roles: Vec<Role>,
    orchestrator: String,
    client: Client,
    green: Green,
}

async fn survey(cell: &CellDocument, deps: &Deps) -> Result<Survey, Error> {
    // The AWS SDK's futures are deeply nested: boxed, so the Lambda's future stays within
    // the compiler's layout depth limit.
    let orchestrator = Box::pin(deps.orchestrator(cell)).await?.username;
    let roles = Box::pin(parameters::read(
        &deps.aws.ssm,
        &cell.credentials.application_roles_path,
        &orchestrator,
    ))
    .await?;

    // Roles are cluster-wide: any of the cell's databases reaches them.
    let database = cell.databases.first().ok_or_else(|| {
        Error::stop(
            ErrorName::InvalidInput,
            "the cell document lists no database",
        )
    })?;
    let client = Box::pin(deps.connect(cell, Side::Green, database)).await?;
    let green = Green::read(&client).await?;
    check_groups_exist(&roles, &green)?;
    Ok(Survey {
        roles,
        orchestrator,
        client,
        green,
    })
}

/// What one role needs on green.
enum RoleChange {
    Create,
    /// `attributes` to set (`ALTER ROLE` keywords); the password is set unless `password`
    /// is `Absent` or `Verified`. Never both empty and unset.
    Alter {
        attributes: Vec<&'static str>,
        password: PasswordState,
    },
    None,
}

impl RoleChange {
    fn of(
        role: &Role,
        wanted: Attributes,
        existing: Option<&Existing>,
        passwords_readable: bool,
    ) -> Self {
        let Some(existing) = existing else {
            return Self::Create;
        };
        let attributes = wanted.changes_from(existing.attributes);
        let password = match &role.password {
            None => PasswordState::Absent,
            Some(_) if !passwords_readable => PasswordState::Unknown,
            Some(p) => match &existing.stored_password {
                Some(stored) if switchyard_postgres::scram_verifies(stored, p) => {
                    PasswordState::Verified
                }
                _ => PasswordState::Differs,
            },
        };
        if attributes.is_empty() && !password.is_set() {
            Self::None
        } else {
            Self::Alter {
                attributes,
                password,
            }
        }
    }
}

/// Every role's change in `order` (groups before members), then the memberships to grant:
/// after every CREATE, since a group must exist before a role joins it.
struct Changes<'a> {
    roles: Vec<(&'a Role, RoleChange)>,
    /// (member, group)
    grants: Vec<(&'a str, &'a str)>,
}

fn changes<'a>(order: &[&'a Role], green: &Green, fencing: bool) -> Changes<'a> {
    let roles = order
        .iter()
        .map(|role| {
            let change = RoleChange::of(
                role,
                wanted(role, fencing),
                green.roles.get(&role.name),
                green.passwords_readable,
            );
            (*role, change)
        })
        .collect();
    let grants = order
        .iter()
        .flat_map(|role| role.member_of.iter().map(move |group| (*role, group)))
        .filter(|(role, group)| {
            !green
                .memberships
                .contains(&(role.name.clone(), (*group).clone()))
        })
        .map(|(role, group)| (role.name.as_str(), group.as_str()))
        .collect();
    Changes { roles, grants }
}

/// A role as green has it.
struct Existing {
    oid: u32,
    attributes: Attributes,
    /// `pg_authid.rolpassword`, when the orchestrator may read it.
    stored_password: Option<String>,
}

struct Green {
    roles: BTreeMap<String, Existing>,
    /// (member, group)
    memberships: BTreeSet<(String, String)>,
    /// False on Aurora: rds_superuser cannot read `pg_authid`.
    passwords_readable: bool,
}

impl Green {
    async fn read(client: &Client) -> Result<Self, Error> {
        let readable: bool = client
            .query_one(
                "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
                &[],
            )
            .await
            .map_err(|e| Error::query("reading pg_authid privileges", e))?
            .get(0);
        let mut roles = BTreeMap::new();
        for row in client
            .query(
                "SELECT oid, rolname, rolcanlogin, rolreplication, rolcreatedb, rolcreaterole, \
                        rolinherit, rolbypassrls \
                 FROM pg_catalog.pg_roles",
                &[],
            )
            .await
            .map_err(|e| Error::query("reading green's roles", e))?
        {
            let attributes = Attributes::from_catalog([
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get(6),
                row.get(7),
            ]);
            roles.insert(
                row.get(1),
                Existing {
                    oid: row.get(0),
                    attributes,
                    stored_password: None,
                },
            );
        }
        if readable {
            for row in client
                .query(
                    "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolpassword IS NOT NULL",
                    &[],
                )
                .await
                .map_err(|e| Error::query("reading stored password verifiers", e))?
            {
                let name: String = row.get(0);
                if let Some(existing) = roles.get_mut(&name) {
                    existing.stored_password = row.get(1);
                }
            }
        }
        let memberships = client
            .query(
                "SELECT m.rolname, g.rolname FROM pg_catalog.pg_auth_members a \
                 JOIN pg_catalog.pg_roles m ON m.oid = a.member \
                 JOIN pg_catalog.pg_roles g ON g.oid = a.roleid",
                &[],
            )
            .await
            .map_err(|e| Error::query("reading green's role memberships", e))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        Ok(Self {
            roles,
            memberships,
            passwords_readable: readable,
        })
    }
}

/// Every group a role joins is one SSM describes or one green already has (e.g.
/// `rds_iam`, `pg_read_all_data`); checked before anything changes.
fn check_groups_exist(roles: &[Role], green: &Green) -> Result<(), Error> {
    let described: BTreeSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    let missing: Vec<String> = roles
        .iter()
        .flat_map(|r| r.member_of.iter().map(move |g| (r, g)))
        .filter(|(_, g)| !described.contains(g.as_str()) && !green.roles.contains_key(*g))
        .map(|(r, g)| {
            format!(
                "{}: member_of names {g:?}, which is neither in SSM nor on green",
                r.parameter
            )
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::InvalidInput,
        format!(
            "add the missing groups' parameters or fix member_of, then rerun (nothing was changed):\n{}",
            missing.join("\n")
        ),
    ))
}

/// A role the platform made, not the application: names starting with `pg_` (predefined)
/// or `rds` (Aurora's rdsadmin, rds_superuser, rds_iam, …), every role initdb created
/// (oid below 16384, FirstNormalObjectId: the bootstrap superuser and the predefined
/// roles, which cannot log in), and the orchestrator itself.
fn is_platform_role(name: &str, oid: u32, orchestrator: &str) -> bool {
    const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
    name.starts_with("pg_")
        || name.starts_with("rds")
        || oid < FIRST_NORMAL_OBJECT_ID
        || name == orchestrator
}

fn extra_roles(roles: &[Role], green: &Green, orchestrator: &str) -> Vec<String> {
    let described: BTreeSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    green
        .roles
        .iter()
        .filter(|(name, existing)| {
            !described.contains(name.as_str())
                && !is_platform_role(name, existing.oid, orchestrator)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// `PASSWORD '<SCRAM verifier>'`: the plain password never enters SQL text, which the
/// server may log whole when a statement fails.
fn password_clause(role: &Role) -> Option<String> {
    role.password
        .as_ref()
        .map(|p| format!("PASSWORD {}", literal(&scram_verifier(p))))
}

async fn create(
    tx: &tokio_postgres::Transaction<'_>,
    role: &Role,
    attributes: Attributes,
) -> Result<(), Error> {
    let mut clauses = attributes.keywords().join(" ");
    if let Some(password) = password_clause(role) {
        clauses.push(' ');
        clauses.push_str(&password);
    }
    tx.batch_execute(&format!("CREATE ROLE {} {clauses}", ident(&role.name)))
        .await
        .map_err(|e| Error::query(format!("CREATE ROLE {}", role.name), e))?;
    tracing::info!(role = %role.name, "role created");
    Ok(())
}

async fn alter(
    tx: &tokio_postgres::Transaction<'_>,
    role: &Role,
    attributes: &[&'static str],
    password: PasswordState,
) -> Result<(), Error> {
    let mut clauses: Vec<String> = attributes.iter().map(|a| (*a).to_owned()).collect();
    if password.is_set() {
        clauses.extend(password_clause(role));
    }
    tx.batch_execute(&format!(
        "ALTER ROLE {} {}",
        ident(&role.name),
        clauses.join(" ")
    ))
    .await
    .map_err(|e| Error::query(format!("ALTER ROLE {}", role.name), e))?;
    let password_changed = password == PasswordState::Differs;
    tracing::info!(role = %role.name, attributes = ?attributes, password_changed, "role altered");
    Ok(())
}

/// How the password SSM holds compares with green's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PasswordState {
    /// SSM holds none: green's is left alone.
    Absent,
    Verified,
    Differs,
    /// Green's cannot be read: it is set.
    Unknown,
}

impl PasswordState {
    /// Whether the run sets the password.
    fn is_set(self) -> bool {
        matches!(self, Self::Differs | Self::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_roles_are_not_extra() {
        assert!(is_platform_role("pg_read_all_data", 4569, "switchyard"));
        assert!(is_platform_role("rdsadmin", 16390, "switchyard"));
        assert!(is_platform_role("rds_superuser", 16391, "switchyard"));
        assert!(is_platform_role("postgres", 10, "switchyard"));
        assert!(is_platform_role("switchyard", 16400, "switchyard"));
        assert!(!is_platform_role("reporting", 16401, "switchyard"));
    }

    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<Input, Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
