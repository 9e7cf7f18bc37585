//! The rules a cell document must follow before any operation touches the cell.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::{Budgets, CellDocument, CellError, Discovery, Problem};

/// Aurora's limit on a cluster identifier.
const MAX_CLUSTER_IDENTIFIER: usize = 63;
/// Blue is renamed to `<id>-blue-<major>`: eight more characters with a two-digit major.
const MAX_BLUE_IDENTIFIER: usize = MAX_CLUSTER_IDENTIFIER - "-blue-99".len();
const MAX_CELL_ID: usize = 40;
/// PostgreSQL truncates longer names (NAMEDATALEN - 1), so two long names could collide.
const MAX_PG_NAME_BYTES: usize = 63;
const MAX_SSM_NAME: usize = 1011;
const MAX_ECS_NAME: usize = 255;
const MAX_TARGET_GROUP_NAME: usize = 32;
const MIN_MAJOR_VERSION: u32 = 14;
const MAX_MAJOR_VERSION: u32 = 99;
const MAX_DRAIN_SECONDS: u64 = 900;
/// The longest a `verify-data` or `analyze-green` invocation may work before handing over:
/// room for its last batch of chunks (or its last statement) inside Lambda's 900 s.
pub const MAX_VERIFY_SECONDS: u64 = 720;

/// The longest pause budget a cell may ask for (and so the longest lag gate).
pub const MAX_PAUSE_SECONDS: u64 = 3600;
const MAX_LAG_GATE_SECONDS: u64 = 3600;

type Rule = Result<(), String>;

impl CellDocument {
    /// Checks every rule and reports every broken one, each with its field path.
    ///
    /// Not checked here: PgBouncer's `query_wait_timeout` against the pause budget, which
    /// needs the live configuration (preflight does it).
    pub fn validate(&self) -> Result<(), CellError> {
        let mut problems = Problems::default();

        problems.check("cell_id", cell_id(&self.cell_id));
        problems.check("region", region(&self.region));
        problems.check(
            "blue.cluster_identifier",
            blue_identifier(&self.blue.cluster_identifier),
        );
        problems.check(
            "green.cluster_identifier",
            cluster_identifier(&self.green.cluster_identifier),
        );
        if self.blue.cluster_identifier == self.green.cluster_identifier {
            problems.push(
                "green.cluster_identifier",
                "must differ from blue.cluster_identifier",
            );
        }
        problems.check(
            "target_major_version",
            major_version(self.target_major_version),
        );
        problems.names("databases", &self.databases);

        problems.check(
            "credentials.orchestrator_parameter",
            ssm_parameter(&self.credentials.orchestrator_parameter),
        );
        problems.check(
            "credentials.application_roles_path",
            ssm_path(&self.credentials.application_roles_path),
        );
        if let Some(path) = &self.journal_path {
            problems.check("journal_path", ssm_path(path));
        }

        self.check_undoes(&mut problems);
        self.check_pgbouncer(&mut problems);
        self.check_direct_writers(&mut problems);
        self.check_downstream(&mut problems);
        self.check_table_groups(&mut problems);
        self.check_replication(&mut problems);
        check_budgets(&self.budgets, &mut problems);

        problems.finish()
    }

    /// A switch-back goes to the old blue parked by the upgrade it undoes, of an older
    /// major: any other green is not where the cell came from.
    fn check_undoes(&self, problems: &mut Problems) {
        let Some(undoes) = &self.undoes else {
            return;
        };
        problems.check(
            "undoes.green_identifier",
            cluster_identifier(&undoes.green_identifier),
        );
        problems.check(
            "undoes.target_major_version",
            major_version(undoes.target_major_version),
        );
        if undoes.target_major_version <= self.target_major_version {
            problems.push(
                "undoes.target_major_version",
                "must be above target_major_version: a switch-back returns to the older major",
            );
        }
        let parked = self.blue_renamed_identifier(self.target_major_version);
        if self.green.cluster_identifier != parked {
            problems.push(
                "green.cluster_identifier",
                format!("a switch-back's green is the parked old blue, {parked}"),
            );
        }
    }

    fn check_pgbouncer(&self, problems: &mut Problems) {
        let pgbouncer = &self.pgbouncer;
        match &pgbouncer.discovery {
            Discovery::Static { hosts } => {
                let field = "pgbouncer.discovery.static.hosts";
                if hosts.is_empty() {
                    problems.push(field, "must list at least one host:port");
                }
                for (i, host) in hosts.iter().enumerate() {
                    problems.check(format!("{field}[{i}]"), host_port(host));
                }
                problems.unique(field, hosts, "is listed twice");
            }
            Discovery::EcsService {
                ecs_cluster,
                service,
                admin_port,
            } => {
                let field = "pgbouncer.discovery.ecs_service";
                problems.check(format!("{field}.ecs_cluster"), ecs_name(ecs_cluster));
                problems.check(format!("{field}.service"), ecs_name(service));
                if *admin_port == 0 {
                    problems.push(format!("{field}.admin_port"), "must be 1 to 65535");
                }
            }
        }
        problems.check(
            "pgbouncer.admin_credentials_parameter",
            ssm_parameter(&pgbouncer.admin_credentials_parameter),
        );
        problems.names("pgbouncer.databases", &pgbouncer.databases);
        for (i, database) in pgbouncer.databases.iter().enumerate() {
            if !self.databases.contains(database) {
                problems.push(
                    format!("pgbouncer.databases[{i}]"),
                    format!("{database:?} is not one of the cell's databases"),
                );
            }
        }
    }

    fn check_direct_writers(&self, problems: &mut Problems) {
        for (i, writer) in self.direct_writers.iter().enumerate() {
            problems.check(
                format!("direct_writers[{i}].ecs_cluster"),
                ecs_name(&writer.ecs_cluster),
            );
            problems.check(
                format!("direct_writers[{i}].service"),
                ecs_name(&writer.service),
            );
        }
        let services: Vec<_> = self
            .direct_writers
            .iter()
            .map(|w| (&w.ecs_cluster, &w.service))
            .collect();
        problems.unique("direct_writers", &services, "is listed twice");
    }

    fn check_downstream(&self, problems: &mut Problems) {
        for (i, downstream) in self.downstream.iter().enumerate() {
            let field = format!("downstream[{i}]");
            problems.check(format!("{field}.name"), downstream_name(&downstream.name));
            problems.check(format!("{field}.endpoint"), host_port(&downstream.endpoint));
            problems.check(format!("{field}.database"), pg_name(&downstream.database));
            problems.check(
                format!("{field}.credentials_parameter"),
                ssm_parameter(&downstream.credentials_parameter),
            );
            problems.check(
                format!("{field}.publisher_credentials_parameter"),
                ssm_parameter(&downstream.publisher_credentials_parameter),
            );
            problems.names(&format!("{field}.subscriptions"), &downstream.subscriptions);
            problems.check(
                format!("{field}.nlb_target_group"),
                target_group(&downstream.nlb_target_group),
            );
        }
        let names: Vec<_> = self.downstream.iter().map(|d| &d.name).collect();
        problems.unique("downstream", &names, "reuses the name of an earlier entry");
    }

    fn check_replication(&self, problems: &mut Problems) {
        let replication = &self.replication;
        match (&replication.sslrootcert, replication.sslmode.verifies()) {
            (None, true) => problems.push(
                "replication.sslrootcert",
                format!(
                    "is required with sslmode {}: a CA file on green's server (not the Lambda's bundle)",
                    replication.sslmode.as_str()
                ),
            ),
            (Some(_), false) => problems.push(
                "replication.sslrootcert",
                "is only used with sslmode verify-ca or verify-full; with require the certificate is not checked",
            ),
            (Some(path), true) if !path.starts_with('/') => problems.push(
                "replication.sslrootcert",
                "must be an absolute path on the database server",
            ),
            _ => {}
        }
        problems.check("replication.role", pg_name(&replication.role));
        if let Some(parameter) = &replication.credentials_parameter {
            problems.check(
                "replication.credentials_parameter",
                ssm_parameter(parameter),
            );
        }
    }

    fn check_table_groups(&self, problems: &mut Problems) {
        // A table in two groups would be in two publications and be applied twice on green.
        let mut owner: HashMap<_, usize> = HashMap::new();
        for (i, group) in self.table_groups.iter().enumerate() {
            let field = format!("table_groups[{i}]");
            problems.check(format!("{field}.name"), pg_name(&group.name));
            if group.name == crate::REST_GROUP {
                problems.push(
                    format!("{field}.name"),
                    "\"rest\" is reserved for the tables no group names",
                );
            } else if group.name == crate::REVERSE_GROUP {
                problems.push(
                    format!("{field}.name"),
                    "\"reverse\" is reserved for the replication from green back to the old blue",
                );
            } else if crate::replication_name(&group.name).len() > MAX_PG_NAME_BYTES {
                problems.push(
                    format!("{field}.name"),
                    format!(
                        "switchyard_{} would exceed {MAX_PG_NAME_BYTES} bytes as a slot name",
                        group.name
                    ),
                );
            }
            if group.tables.is_empty() {
                problems.push(format!("{field}.tables"), "must list at least one table");
            }
            for (j, table) in group.tables.iter().enumerate() {
                let field = format!("{field}.tables[{j}]");
                problems.check(format!("{field}.schema"), pg_name(&table.schema));
                problems.check(format!("{field}.table"), pg_name(&table.table));
                match owner.get(table) {
                    Some(&first) => problems.push(
                        field,
                        // As the document spells it: `schema.table` unquoted is ambiguous.
                        format!(
                            "{} is already in table_groups[{first}]; a table belongs to one group",
                            serde_json::to_string(table).unwrap_or_default()
                        ),
                    ),
                    None => {
                        owner.insert(table, i);
                    }
                }
            }
        }
        let names: Vec<_> = self.table_groups.iter().map(|g| &g.name).collect();
        problems.unique(
            "table_groups",
            &names,
            "reuses the name of an earlier group",
        );
    }
}

fn check_budgets(budgets: &Budgets, problems: &mut Problems) {
    let limits = [
        (
            "drain_seconds",
            budgets.drain_seconds,
            Some(MAX_DRAIN_SECONDS),
        ),
        (
            "pause_seconds",
            budgets.pause_seconds,
            Some(MAX_PAUSE_SECONDS),
        ),
        (
            "abort_seconds",
            budgets.abort_seconds,
            Some(MAX_PAUSE_SECONDS),
        ),
        (
            "lag_gate_seconds",
            budgets.lag_gate_seconds,
            Some(MAX_LAG_GATE_SECONDS),
        ),
        (
            "max_replication_lag_bytes",
            budgets.max_replication_lag_bytes,
            None,
        ),
        ("sequence_gap", budgets.sequence_gap, None),
        ("verify_chunk_rows", budgets.verify_chunk_rows, None),
        ("rollback_wal_bytes", budgets.rollback_wal_bytes, None),
    ];
    for (name, value, max) in limits {
        let field = format!("budgets.{name}");
        if value == 0 {
            problems.push(field, "must be greater than 0");
        } else if let Some(max) = max.filter(|&max| value > max) {
            problems.push(field, format!("must be at most {max}"));
        }
    }
    // One invocation must hand over before Lambda's 15-minute limit stops it mid-chunk.
    for (name, value) in [
        ("verify_seconds", budgets.verify_seconds),
        ("analyze_seconds", budgets.analyze_seconds),
    ] {
        if value > MAX_VERIFY_SECONDS {
            problems.push(
                format!("budgets.{name}"),
                format!("must be at most {MAX_VERIFY_SECONDS}: a Lambda invocation ends at 900"),
            );
        }
    }
    // The gate runs inside the pause window: a longer gate would never get to decide.
    if budgets.pause_seconds > 0 && budgets.lag_gate_seconds >= budgets.pause_seconds {
        problems.push(
            "budgets.lag_gate_seconds",
            format!(
                "must be below budgets.pause_seconds ({}): the lag gate runs inside the pause window",
                budgets.pause_seconds
            ),
        );
    }
}

/// Every problem found so far, in document order.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn check(&mut self, field: impl Into<String>, rule: Rule) {
        if let Err(reason) = rule {
            self.push(field, reason);
        }
    }

    /// A non-empty list of unique PostgreSQL names.
    fn names(&mut self, field: &str, names: &[String]) {
        if names.is_empty() {
            self.push(field, "must list at least one name");
        }
        for (i, name) in names.iter().enumerate() {
            self.check(format!("{field}[{i}]"), pg_name(name));
        }
        self.unique(field, names, "is listed twice");
    }

    /// Flags each repeat of an earlier item, at the repeat's index.
    fn unique<T: Eq + Hash>(&mut self, field: &str, items: &[T], reason: &str) {
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item) {
                self.push(format!("{field}[{i}]"), reason);
            }
        }
    }

    fn finish(self) -> Result<(), CellError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CellError::Invalid { problems: self.0 })
        }
    }
}

fn lowercase_identifier_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Aurora's identifier rules. Lowercase only: RDS stores identifiers lowercased, so a mixed
/// case one would never compare equal to what `DescribeDBClusters` returns.
fn cluster_identifier(id: &str) -> Rule {
    if id.is_empty() || id.len() > MAX_CLUSTER_IDENTIFIER {
        return Err(format!("must be 1 to {MAX_CLUSTER_IDENTIFIER} characters"));
    }
    if !lowercase_identifier_chars(id) {
        return Err("must contain only lowercase letters, digits and hyphens".into());
    }
    if !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a letter".into());
    }
    if id.ends_with('-') {
        return Err("must not end with a hyphen".into());
    }
    if id.contains("--") {
        return Err("must not contain two consecutive hyphens".into());
    }
    Ok(())
}

fn blue_identifier(id: &str) -> Rule {
    cluster_identifier(id)?;
    if id.len() > MAX_BLUE_IDENTIFIER {
        return Err(format!(
            "must be at most {MAX_BLUE_IDENTIFIER} characters, so that `<id>-blue-<major>` fits in {MAX_CLUSTER_IDENTIFIER}"
        ));
    }
    Ok(())
}

fn cell_id(id: &str) -> Rule {
    if id.is_empty() || id.len() > MAX_CELL_ID {
        return Err(format!("must be 1 to {MAX_CELL_ID} characters"));
    }
    if !lowercase_identifier_chars(id) {
        return Err("must contain only lowercase letters, digits and hyphens".into());
    }
    Ok(())
}

/// `^[a-z]{2}(-[a-z]+)+-\d+$`, e.g. `us-east-1` or `us-gov-west-1`.
fn region(region: &str) -> Rule {
    let parts: Vec<&str> = region.split('-').collect();
    let well_formed = match parts.as_slice() {
        [country, words @ .., number] if !words.is_empty() => {
            country.len() == 2
                && country.bytes().all(|b| b.is_ascii_lowercase())
                && words
                    .iter()
                    .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    };
    if well_formed {
        Ok(())
    } else {
        Err("must be an AWS region such as us-east-1".into())
    }
}

fn major_version(major: u32) -> Rule {
    if (MIN_MAJOR_VERSION..=MAX_MAJOR_VERSION).contains(&major) {
        Ok(())
    } else {
        Err(format!(
            "must be a PostgreSQL major version from {MIN_MAJOR_VERSION} to {MAX_MAJOR_VERSION}"
        ))
    }
}

/// A PostgreSQL identifier as stored in the catalog (unquoted here, quoted where SQL is built).
fn pg_name(name: &str) -> Rule {
    if name.is_empty() || name.len() > MAX_PG_NAME_BYTES {
        return Err(format!("must be 1 to {MAX_PG_NAME_BYTES} bytes"));
    }
    if name.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    Ok(())
}

fn ssm_name(name: &str) -> Rule {
    if !name.starts_with('/') {
        return Err("must be a fully qualified SSM name starting with '/'".into());
    }
    if name.len() > MAX_SSM_NAME {
        return Err(format!("must be at most {MAX_SSM_NAME} characters"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/');
    if !name.bytes().all(allowed) {
        return Err("must contain only letters, digits and _ . - /".into());
    }
    if name.contains("//") {
        return Err("must not contain '//'".into());
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("/aws") || lower.starts_with("/ssm") {
        return Err("must not start with /aws or /ssm, which AWS reserves".into());
    }
    Ok(())
}

fn ssm_parameter(name: &str) -> Rule {
    ssm_name(name)?;
    if name.ends_with('/') {
        return Err("is a path; name the parameter itself".into());
    }
    Ok(())
}

fn ssm_path(path: &str) -> Rule {
    ssm_name(path)?;
    if !path.ends_with('/') {
        return Err("must end with '/': it is the path the role parameters live under".into());
    }
    Ok(())
}

/// `host:port`; an IPv6 host is written in brackets, so the port follows the last colon.
fn host_port(endpoint: &str) -> Rule {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err("must be host:port".into());
    };
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err("must be host:port with a host name or address".into());
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err("must be host:port with a port from 1 to 65535".into()),
    }
}

fn ecs_name(name: &str) -> Rule {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if name.is_empty() || name.len() > MAX_ECS_NAME || !name.bytes().all(allowed) {
        return Err(format!(
            "must be an ECS name: 1 to {MAX_ECS_NAME} letters, digits, hyphens and underscores"
        ));
    }
    Ok(())
}

/// Downstream names end up in log fields and journal keys, so they stay plain.
fn downstream_name(name: &str) -> Rule {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    if name.is_empty() || name.len() > MAX_PG_NAME_BYTES || !name.bytes().all(allowed) {
        return Err(format!(
            "must be 1 to {MAX_PG_NAME_BYTES} lowercase letters, digits, hyphens and underscores"
        ));
    }
    Ok(())
}

/// A target group ARN or a bare target group name.
fn target_group(value: &str) -> Rule {
    let valid = match value.strip_prefix("arn:") {
        Some(arn) => target_group_arn(arn),
        None => target_group_name(value),
    };
    if valid {
        Ok(())
    } else {
        Err("must be a target group ARN or a target group name (1 to 32 letters, digits and hyphens, not starting or ending with a hyphen)".into())
    }
}

/// `aws[a-z-]*:elasticloadbalancing:<region>:<12 digits>:targetgroup/<name>/<hex>`, after `arn:`.
fn target_group_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    let [partition, service, arn_region, account, resource] = parts.as_slice() else {
        return false;
    };
    let Some(("aws", partition_suffix)) = partition.split_at_checked(3) else {
        return false;
    };
    let Some(("targetgroup", name, id)) = resource
        .split_once('/')
        .and_then(|(kind, rest)| rest.split_once('/').map(|(name, id)| (kind, name, id)))
    else {
        return false;
    };
    partition_suffix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'-')
        && *service == "elasticloadbalancing"
        && region(arn_region).is_ok()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && target_group_name(name)
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn target_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TARGET_GROUP_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::EXAMPLE;

    fn example() -> Value {
        serde_json::from_str(EXAMPLE).expect("the example is JSON")
    }

    /// The fields `validate` complains about, in report order.
    fn problem_fields(value: Value) -> Vec<String> {
        let document: CellDocument = serde_json::from_value(value).expect("parses");
        match document.validate() {
            Ok(()) => Vec::new(),
            Err(CellError::Invalid { problems }) => problems.into_iter().map(|p| p.field).collect(),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    fn edited(edit: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut value = example();
        edit(&mut value);
        problem_fields(value)
    }

    #[test]
    fn example_has_no_problems() {
        assert_eq!(problem_fields(example()), Vec::<String>::new());
    }

    #[test]
    fn a_subscription_ca_goes_with_a_verifying_mode_only() {
        let set = |mode: &str, root: Option<&str>| {
            edited(|v| {
                v["replication"] = json!({ "sslmode": mode });
                if let Some(root) = root {
                    v["replication"]["sslrootcert"] = json!(root);
                }
            })
        };
        assert_eq!(set("require", None), Vec::<String>::new());
        assert_eq!(
            set("verify-full", Some("/etc/ssl/rds.pem")),
            Vec::<String>::new()
        );
        assert_eq!(
            set("verify-ca", Some("/etc/ssl/rds.pem")),
            Vec::<String>::new()
        );
        assert_eq!(set("verify-full", None), ["replication.sslrootcert"]);
        assert_eq!(
            set("require", Some("/etc/ssl/rds.pem")),
            ["replication.sslrootcert"]
        );
        assert_eq!(
            set("verify-full", Some("rds.pem")),
            ["replication.sslrootcert"]
        );
        let bad_role = edited(|v| v["replication"] = json!({ "role": "" }));
        assert_eq!(bad_role, ["replication.role"]);
        let mut value = example();
        value["replication"] = json!({ "sslmode": "disable" });
        let error = CellDocument::from_value(value).expect_err("no plain mode");
        assert!(error.to_string().contains("replication.sslmode"), "{error}");
    }

    #[test]
    fn bad_blue_identifier_is_named() {
        let mut value = example();
        value["blue"] = json!({ "cluster_identifier": "1bad--id-" });
        let error = CellDocument::from_value(value).expect_err("invalid");
        let text = error.to_string();
        assert!(
            text.contains("blue.cluster_identifier: must start with a letter"),
            "{text}"
        );
    }

    #[test]
    fn every_problem_is_reported_together() {
        let fields = edited(|v| {
            v["region"] = json!("US-East-1");
            v["blue"]["cluster_identifier"] = json!("1bad--id-");
            v["green"]["cluster_identifier"] = json!("green-");
            v["budgets"]["pause_seconds"] = json!(0);
            v["pgbouncer"]["databases"] = json!(["app", "other"]);
            v["downstream"][0]["endpoint"] = json!("127.0.0.1");
        });
        assert_eq!(
            fields,
            [
                "region",
                "blue.cluster_identifier",
                "green.cluster_identifier",
                "pgbouncer.databases[1]",
                "downstream[0].endpoint",
                "budgets.pause_seconds",
            ]
        );
    }

    #[test]
    fn cluster_identifiers_follow_aurora_rules() {
        let long = format!("a{}", "b".repeat(62));
        let cases = [
            ("local-a", true),
            ("a", true),
            ("a1-b2-c3", true),
            (long.as_str(), true),
            ("", false),
            ("1abc", false),
            ("-abc", false),
            ("abc-", false),
            ("ab--c", false),
            ("ab_c", false),
            ("Abc", false),
            ("ab.c", false),
        ];
        for (id, ok) in cases {
            assert_eq!(cluster_identifier(id).is_ok(), ok, "{id:?}");
        }
        assert!(cluster_identifier(&format!("{long}b")).is_err());
    }

    #[test]
    fn blue_leaves_room_for_its_rename() {
        let at_limit = format!("a{}", "b".repeat(54));
        assert_eq!(at_limit.len(), 55);
        assert_eq!(
            edited(|v| v["blue"]["cluster_identifier"] = json!(at_limit)),
            Vec::<String>::new()
        );

        let over = format!("{at_limit}b");
        assert_eq!(
            edited(|v| v["blue"]["cluster_identifier"] = json!(over)),
            ["blue.cluster_identifier"]
        );
        // Green keeps the full Aurora limit: it only ever takes blue's shorter name.
        assert_eq!(
            edited(|v| v["green"]["cluster_identifier"] = json!(over)),
            Vec::<String>::new()
        );

        let document: CellDocument = serde_json::from_value(example()).expect("parses");
        let mut document = document;
        document.blue.cluster_identifier = at_limit;
        assert_eq!(
            document.blue_renamed_identifier(99).len(),
            MAX_CLUSTER_IDENTIFIER
        );
    }

    #[test]
    fn blue_and_green_must_differ() {
        assert_eq!(
            edited(|v| v["green"]["cluster_identifier"] = json!("local-a")),
            ["green.cluster_identifier"]
        );
    }

    #[test]
    fn cell_ids() {
        let cases = [
            ("local-a", true),
            ("0cell", true),
            ("", false),
            ("Local", false),
            ("cell_a", false),
            (&*"a".repeat(40), true),
            (&*"a".repeat(41), false),
        ];
        for (id, ok) in cases {
            assert_eq!(cell_id(id).is_ok(), ok, "{id:?}");
        }
    }

    #[test]
    fn regions() {
        let cases = [
            ("us-east-1", true),
            ("us-gov-west-1", true),
            ("ap-southeast-2", true),
            ("eu-central-12", true),
            ("us-east", false),
            ("useast-1", false),
            ("u-east-1", false),
            ("use-east-1", false),
            ("us--east-1", false),
            ("US-EAST-1", false),
            ("us-east-1a", false),
            ("us-east-", false),
            ("", false),
        ];
        for (r, ok) in cases {
            assert_eq!(region(r).is_ok(), ok, "{r:?}");
        }
    }

    #[test]
    fn major_versions() {
        for (major, ok) in [
            (13, false),
            (14, true),
            (17, true),
            (99, true),
            (100, false),
            (0, false),
        ] {
            assert_eq!(major_version(major).is_ok(), ok, "{major}");
        }
    }

    #[test]
    fn postgres_names() {
        let cases = [
            ("app", true),
            ("Mixed Case \"quoted\"", true),
            (&*"x".repeat(63), true),
            (&*"x".repeat(64), false),
            // 32 two-byte characters: 64 bytes, over PostgreSQL's limit.
            (&*"é".repeat(32), false),
            ("", false),
            ("a\0b", false),
        ];
        for (name, ok) in cases {
            assert_eq!(pg_name(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn database_lists() {
        assert_eq!(
            edited(|v| v["databases"] = json!([])),
            ["databases", "pgbouncer.databases[0]"]
        );
        assert_eq!(
            edited(|v| v["databases"] = json!(["app", "app"])),
            ["databases[1]"]
        );
        assert_eq!(
            edited(|v| v["databases"] = json!(["app", ""])),
            ["databases[1]"]
        );
        assert_eq!(
            edited(|v| v["pgbouncer"]["databases"] = json!([])),
            ["pgbouncer.databases"]
        );
        assert_eq!(
            edited(|v| v["pgbouncer"]["databases"] = json!(["ledger"])),
            ["pgbouncer.databases[0]"]
        );
    }

    #[test]
    fn ssm_names() {
        let long = format!("/{}", "a".repeat(1010));
        let cases = [
            ("/switchyard/local-a/orchestrator", true),
            ("/a/B_c.d-e", true),
            (long.as_str(), true),
            ("switchyard/x", false),
            ("/switchyard//x", false),
            ("/switchyard/x y", false),
            ("/switchyard/x$", false),
            ("/aws/reference/secretsmanager/x", false),
            ("/AWSx/y", false),
            ("/ssm/x", false),
            ("/Ssm-params/x", false),
            ("", false),
        ];
        for (name, ok) in cases {
            assert_eq!(ssm_parameter(name).is_ok(), ok, "{name:?}");
        }
        assert!(ssm_parameter(&format!("{long}a")).is_err());
        assert!(ssm_parameter("/switchyard/roles/").is_err());
        assert!(ssm_path("/switchyard/roles/").is_ok());
        assert!(ssm_path("/switchyard/roles").is_err());
        assert!(ssm_path("/aws/roles/").is_err());
    }

    #[test]
    fn every_ssm_field_is_checked() {
        let fields = edited(|v| {
            v["credentials"]["orchestrator_parameter"] = json!("orchestrator");
            v["credentials"]["application_roles_path"] = json!("/switchyard/roles");
            v["pgbouncer"]["admin_credentials_parameter"] = json!("/ssm/admin");
            v["downstream"][0]["credentials_parameter"] = json!("/a//b");
            v["downstream"][0]["publisher_credentials_parameter"] = json!("/a/b/");
        });
        assert_eq!(
            fields,
            [
                "credentials.orchestrator_parameter",
                "credentials.application_roles_path",
                "pgbouncer.admin_credentials_parameter",
                "downstream[0].credentials_parameter",
                "downstream[0].publisher_credentials_parameter",
            ]
        );
    }

    #[test]
    fn endpoints() {
        let cases = [
            ("127.0.0.1:6432", true),
            ("pgbouncer.internal:1", true),
            ("[::1]:65535", true),
            ("host:0", false),
            ("host:65536", false),
            ("host:", false),
            (":6432", false),
            ("host", false),
            ("host:port", false),
            ("ho st:6432", false),
            ("postgres://host:5432", false),
        ];
        for (endpoint, ok) in cases {
            assert_eq!(host_port(endpoint).is_ok(), ok, "{endpoint:?}");
        }
    }

    #[test]
    fn pgbouncer_discovery() {
        assert_eq!(
            edited(|v| v["pgbouncer"]["discovery"]["static"]["hosts"] = json!([])),
            ["pgbouncer.discovery.static.hosts"]
        );
        assert_eq!(
            edited(|v| v["pgbouncer"]["discovery"]["static"]["hosts"] = json!(["a:1", "b", "a:1"])),
            [
                "pgbouncer.discovery.static.hosts[1]",
                "pgbouncer.discovery.static.hosts[2]"
            ]
        );
        assert_eq!(
            edited(|v| v["pgbouncer"]["discovery"] = json!({
                "ecs_service": { "ecs_cluster": "a b", "service": "", "admin_port": 0 }
            })),
            [
                "pgbouncer.discovery.ecs_service.ecs_cluster",
                "pgbouncer.discovery.ecs_service.service",
                "pgbouncer.discovery.ecs_service.admin_port",
            ]
        );
    }

    #[test]
    fn direct_writers() {
        assert_eq!(
            edited(|v| v["direct_writers"] = json!([
                { "ecs_cluster": "c", "service": "s" },
                { "ecs_cluster": "c", "service": "s" },
                { "ecs_cluster": "c", "service": "t" },
                { "ecs_cluster": "arn:aws:ecs", "service": "t" },
            ])),
            ["direct_writers[3].ecs_cluster", "direct_writers[1]"]
        );
    }

    #[test]
    fn target_groups() {
        let cases = [
            ("local-a-search", true),
            ("a", true),
            (&*"a".repeat(32), true),
            (&*"a".repeat(33), false),
            ("-search", false),
            ("search-", false),
            ("search_tg", false),
            ("", false),
            (
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/cell-a-search/73e2d6bc24d8a067",
                true,
            ),
            (
                "arn:aws-us-gov:elasticloadbalancing:us-gov-west-1:123456789012:targetgroup/tg/abc123",
                true,
            ),
            (
                "arn:aws:elasticloadbalancing:us-east-1:12345678901:targetgroup/tg/abc123",
                false,
            ),
            (
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/lb/abc123",
                false,
            ),
            (
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/tg/xyz",
                false,
            ),
            (
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/tg/",
                false,
            ),
            (
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/-tg/abc",
                false,
            ),
            ("arn:aws:ec2:us-east-1:123456789012:targetgroup/tg/abc", false),
            ("arn:gcp:elasticloadbalancing:us-east-1:123456789012:targetgroup/tg/abc", false),
            ("arn:aws:elasticloadbalancing:nowhere:123456789012:targetgroup/tg/abc", false),
        ];
        for (value, ok) in cases {
            assert_eq!(target_group(value).is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn downstream_entries() {
        assert_eq!(
            edited(|v| {
                let mut second = v["downstream"][0].clone();
                second["subscriptions"] = json!([]);
                second["nlb_target_group"] = json!("bad_name");
                v["downstream"].as_array_mut().expect("array").push(second);
            }),
            [
                "downstream[1].subscriptions",
                "downstream[1].nlb_target_group",
                "downstream[1]"
            ]
        );
        assert_eq!(
            edited(|v| {
                v["downstream"][0]["name"] = json!("Search!");
                v["downstream"][0]["database"] = json!("");
                v["downstream"][0]["subscriptions"] = json!(["s", "s"]);
            }),
            [
                "downstream[0].name",
                "downstream[0].database",
                "downstream[0].subscriptions[1]"
            ]
        );
    }

    #[test]
    fn journal_path_defaults_per_cell_and_is_checked_when_given() {
        let cell = CellDocument::from_json(EXAMPLE).expect("example");
        assert_eq!(cell.journal_path(), "/switchyard/local-a/journal/");
        let fields = edited(|v| {
            v["journal_path"] = json!("/switchyard/local-a/journal");
        });
        assert_eq!(fields, ["journal_path"]);
    }

    #[test]
    fn group_names_must_make_usable_replication_names() {
        let fields = edited(|v| {
            v["table_groups"][0]["name"] = json!("rest");
        });
        assert_eq!(fields, ["table_groups[0].name"]);
        let fields = edited(|v| {
            v["table_groups"][0]["name"] = json!("reverse");
        });
        assert_eq!(fields, ["table_groups[0].name"]);
        let fields = edited(|v| {
            v["table_groups"][0]["name"] = json!("x".repeat(60));
        });
        assert_eq!(fields, ["table_groups[0].name"]);
    }

    #[test]
    fn a_table_belongs_to_one_group() {
        let fields = edited(|v| {
            v["table_groups"] = json!([
                { "name": "payments", "tables": [
                    { "schema": "public", "table": "payments" },
                    { "schema": "public", "table": "refunds" },
                ] },
                { "name": "hot", "tables": [
                    { "schema": "public", "table": "refunds" },
                    { "schema": "ledger", "table": "payments" },
                ] },
                { "name": "payments", "tables": [] },
                { "name": "odd", "tables": [ { "schema": "", "table": "t" } ] },
            ]);
        });
        assert_eq!(
            fields,
            [
                "table_groups[1].tables[0]",
                "table_groups[2].tables",
                "table_groups[3].tables[0].schema",
                "table_groups[2]",
            ]
        );
    }

    #[test]
    fn budgets_are_positive_and_bounded() {
        let fields = edited(|v| {
            v["budgets"] = json!({
                "drain_seconds": 901,
                "pause_seconds": 3601,
                "abort_seconds": 0,
                "lag_gate_seconds": 0,
                "max_replication_lag_bytes": 0,
                "sequence_gap": 0,
                "verify_chunk_rows": 0,
                "verify_seconds": 721,
                "analyze_seconds": 721,
            });
        });
        assert_eq!(
            fields,
            [
                "budgets.drain_seconds",
                "budgets.pause_seconds",
                "budgets.abort_seconds",
                "budgets.lag_gate_seconds",
                "budgets.max_replication_lag_bytes",
                "budgets.sequence_gap",
                "budgets.verify_chunk_rows",
                "budgets.verify_seconds",
                "budgets.analyze_seconds",
            ]
        );
        let at_limits = edited(|v| {
            v["budgets"] = json!({
                "drain_seconds": 900,
                "pause_seconds": 3600,
                "abort_seconds": 3600,
                "lag_gate_seconds": 3599,
                "max_replication_lag_bytes": 1,
                "sequence_gap": 1,
                "verify_seconds": 720,
                "analyze_seconds": 0,
            });
        });
        assert_eq!(at_limits, Vec::<String>::new());
    }

    #[test]
    fn the_lag_gate_fits_inside_the_pause_budget() {
        let fields = edited(|v| {
            v["budgets"] = json!({ "pause_seconds": 60, "lag_gate_seconds": 60 });
        });
        assert_eq!(fields, ["budgets.lag_gate_seconds"]);
        assert_eq!(
            edited(|v| v["budgets"] = json!({ "pause_seconds": 60, "lag_gate_seconds": 59 })),
            Vec::<String>::new()
        );
    }
}
