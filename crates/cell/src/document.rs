//! The cell document's shape: what a run is told about one cell.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::CellError;

/// The checked-in example (`cells/local.json`), which the local rehearsal runs.
pub const EXAMPLE: &str = include_str!("../../../cells/local.json");

/// A payload's `cell`, for the payload listings (`switchyard invoke FUNCTION --help`):
/// described, not spelled out — its fields are the cell document's own (README, and
/// `cells/local.json` for a whole one).
impl schemars::JsonSchema for CellDocument {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CellDocument".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "The cell document (--cell FILE): clusters, PgBouncer, budgets and SSM parameter names, never secrets; cells/local.json is a whole one."
        })
    }
}

/// Everything a run needs to know about one cell. It travels as execution input, so it
/// holds SSM parameter names only, never secrets.
///
/// Deserializing alone does not validate: use [`CellDocument::from_json`] or
/// [`CellDocument::from_value`], or call [`CellDocument::validate`] on an embedded copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellDocument {
    /// The cell's name; lowercase letters, digits and hyphens.
    pub cell_id: String,
    /// The AWS region the cell lives in, e.g. `us-east-1`.
    pub region: String,
    /// Where the cell runs (a local cell or an AWS account); both are reached over TLS only.
    pub environment: Environment,
    /// Every database on blue that is replicated to green.
    pub databases: Vec<String>,
    /// The cluster serving today.
    pub blue: ClusterRef,
    /// The cluster on the new major version that takes over.
    pub green: ClusterRef,
    /// The PostgreSQL major version green runs.
    pub target_major_version: u32,
    /// Where the orchestrator's and applications' credentials live in SSM.
    pub credentials: Credentials,
    /// The PgBouncer fleet that fronts blue.
    pub pgbouncer: PgBouncer,
    /// ECS services that write to blue without PgBouncer; scaled to zero for the switchover.
    #[serde(default)]
    pub direct_writers: Vec<DirectWriter>,
    /// Databases that subscribe to blue's publications.
    #[serde(default)]
    pub downstream: Vec<Downstream>,
    /// Tables replicated through their own publication.
    #[serde(default)]
    pub table_groups: Vec<TableGroup>,
    /// How green's subscriptions reach blue: a server-to-server connection, secured by the
    /// database server's own TLS settings, not the Lambda's.
    #[serde(default)]
    pub replication: Replication,
    /// Time and size limits of the run.
    #[serde(default)]
    pub budgets: Budgets,
    /// The SSM path, ending in `/`, where runs journal what manual repair needs (the run
    /// lock, saved counts, …). Default: `/switchyard/<cell_id>/journal/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_path: Option<String>,
    /// Set on a switch-back's document only ([`CellDocument::back`]): the upgrade this leg
    /// undoes. Its blue is the cell's name (held by that upgrade's green), its green the
    /// parked old blue, and its target the old blue's major.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoes: Option<Upgrade>,
}

/// One upgrade of a cell: the green it switches to and that green's major.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// The forward leg's `green.cluster_identifier`.
    pub green_identifier: String,
    /// The forward leg's `target_major_version`.
    pub target_major_version: u32,
}

/// Where a cell runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// The local cell: every server on one machine, AWS emulated by moto.
    Local,
    /// A real cell in an AWS account.
    Aws,
}

/// An Aurora cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRef {
    /// The DB cluster identifier, lowercase as RDS reports it.
    pub cluster_identifier: String,
}

/// SSM parameter names of the credentials a run uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The orchestrator's own role (a SecureString holding its password).
    pub orchestrator_parameter: String,
    /// The SSM path, ending in `/`, under which each application role's password lives.
    pub application_roles_path: String,
}

/// The PgBouncer fleet in front of blue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBouncer {
    /// How to find every instance.
    pub discovery: Discovery,
    /// SSM parameter name of the admin console credentials.
    pub admin_credentials_parameter: String,
    /// The PgBouncer databases to PAUSE and RESUME; each is one of the cell's databases.
    pub databases: Vec<String>,
    /// The fleet serves TLS to its clients (`client_tls_sslmode` at least `require`): the
    /// admin console is then reached over TLS, verify-full against the deployment's CA
    /// bundle, as every database is. Without it the console is plain TCP inside the VPC.
    #[serde(default)]
    pub tls: bool,
}

/// How to find every PgBouncer instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Discovery {
    /// A fixed list of admin endpoints.
    Static {
        /// `host:port` of each instance's admin console.
        hosts: Vec<String>,
    },
    /// The running tasks of an ECS service.
    EcsService {
        /// The ECS cluster name.
        ecs_cluster: String,
        /// The ECS service name.
        service: String,
        /// The admin console port on each task.
        admin_port: u16,
    },
}

/// An ECS service that writes to blue directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectWriter {
    /// The ECS cluster name.
    pub ecs_cluster: String,
    /// The ECS service name.
    pub service: String,
}

/// A database outside the cell that subscribes to blue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downstream {
    /// A short name, unique in the cell.
    pub name: String,
    /// `host:port` of the subscriber.
    pub endpoint: String,
    /// The subscriber's database holding the subscriptions.
    pub database: String,
    /// SSM parameter name of an admin login on the subscriber.
    pub credentials_parameter: String,
    /// SSM parameter name of the replication login the subscriptions use on the publisher.
    pub publisher_credentials_parameter: String,
    /// The subscriptions to drop and recreate around the switchover.
    pub subscriptions: Vec<String>,
    /// The NLB target group (ARN or name) through which the subscriber reaches the writer.
    pub nlb_target_group: String,
}

/// How green's subscriptions reach blue. The connection is made by green's server, so a
/// CA path here is a path on the database server (on Aurora none can be placed: keep
/// `require`), never the Lambda's bundle. They log in as a role of their own, never as
/// the orchestrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// libpq `sslmode` of the subscription's connection.
    pub sslmode: SubscriptionSslMode,
    /// libpq `sslrootcert`: a CA file on the subscribing server; required by, and only
    /// allowed with, the `verify-*` modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
    /// The login the subscriptions use on blue: created by `start-replication` with
    /// `REPLICATION` (on Aurora: `rds_replication`) and SELECT on the published tables
    /// only, its password rotated per run.
    pub role: String,
    /// SSM parameter (a SecureString `start-replication` writes) holding that role's
    /// password. Default: `/switchyard/<cell_id>/replication`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_parameter: Option<String>,
}

/// The replication role's name when the document names none.
pub const DEFAULT_REPLICATION_ROLE: &str = "switchyard_replication";

impl Default for Replication {
    fn default() -> Self {
        Self {
            sslmode: SubscriptionSslMode::default(),
            sslrootcert: None,
            role: DEFAULT_REPLICATION_ROLE.to_owned(),
            credentials_parameter: None,
        }
    }
}

/// The TLS modes a subscription may use: every one encrypts; none falls back to plain TCP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriptionSslMode {
    /// Encrypted; the certificate is not checked (Aurora's default for server-to-server).
    #[default]
    Require,
    /// Encrypted; the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// Encrypted; the certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

impl SubscriptionSslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the mode checks the certificate, and so needs `sslrootcert`.
    pub fn verifies(self) -> bool {
        !matches!(self, Self::Require)
    }
}

/// Tables replicated through a publication of their own, e.g. the hottest ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableGroup {
    /// The group's name, unique in the cell.
    pub name: String,
    /// Its tables; a table belongs to at most one group.
    pub tables: Vec<TableRef>,
}

/// A table, unquoted. No `Display`: `schema.table` unquoted is ambiguous (`a.b` + `c` vs
/// `a` + `b.c`); messages render it with `switchyard_postgres::quote::qualified_name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRef {
    /// The schema name.
    pub schema: String,
    /// The table name.
    pub table: String,
}

/// Time and size limits of a run. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budgets {
    /// How long PgBouncer may take to drain on PAUSE.
    pub drain_seconds: u64,
    /// How long writes may stay paused before the forward path gives up: every step of the
    /// window stops at `pause_seconds` after the pause.
    pub pause_seconds: u64,
    /// What the abort path may add to a pause that ran its whole budget (rename back,
    /// writes restored, resume). `pause_seconds + abort_seconds` must stay below
    /// PgBouncer's `query_wait_timeout` (preflight checks), or queued clients get errors.
    pub abort_seconds: u64,
    /// How long the slot-lag gate waits for green to catch up; inside the pause budget.
    pub lag_gate_seconds: u64,
    /// Replication lag under which green counts as caught up before the switchover.
    pub max_replication_lag_bytes: u64,
    /// How far past blue's value each sequence is set on green.
    pub sequence_gap: u64,
    /// How long one invocation of `verify-data` (full) compares before it hands a cursor
    /// to the next, well inside Lambda's 15 minutes: a table of any size is verified
    /// through the prepare state machine's continuation. 0: one batch of chunks per
    /// invocation.
    pub verify_seconds: u64,
    /// Rows per checksummed chunk of the full check.
    pub verify_chunk_rows: u64,
    /// How long one invocation of `analyze-green` works before it hands the next table to
    /// the next invocation (the same continuation as `verify_seconds`). A statement still
    /// running at the end is cancelled and its table is started again by the next one; a
    /// cancelled VACUUM keeps the pages it finished. 0: one table per invocation.
    pub analyze_seconds: u64,
    /// After the switch: how much WAL green's slot `switchyard_reverse` may keep for the
    /// old blue before `check-drift` calls it a blocker (the old blue not keeping up, or
    /// not following at all: green's storage grows until the window is closed).
    pub rollback_wal_bytes: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            drain_seconds: 30,
            pause_seconds: 60,
            abort_seconds: 45,
            // Writes are frozen when the gate starts: green drains what is in flight in
            // seconds, or is stuck. Well inside the pause budget, with room for the rename.
            lag_gate_seconds: 30,
            max_replication_lag_bytes: 1024 * 1024,
            sequence_gap: 1000,
            verify_seconds: 600,
            verify_chunk_rows: 10_000,
            analyze_seconds: 600,
            rollback_wal_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

impl CellDocument {
    /// Parses and validates a document; errors name the offending field.
    pub fn from_json(json: &str) -> Result<Self, CellError> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let document: Self = parse(&mut deserializer)?;
        deserializer.end().map_err(|e| CellError::Malformed {
            path: ".".to_owned(),
            message: e.to_string(),
        })?;
        document.validate()?;
        Ok(document)
    }

    /// Parses and validates a document received as a Lambda payload.
    pub fn from_value(value: serde_json::Value) -> Result<Self, CellError> {
        let document: Self = parse(value)?;
        document.validate()?;
        Ok(document)
    }

    /// The identifier blue gets when green takes its name: `<id>-blue-<major>`.
    pub fn blue_renamed_identifier(&self, blue_major: u32) -> String {
        format!("{}-blue-{blue_major}", self.blue.cluster_identifier)
    }

    /// The SSM parameter holding the replication role's password.
    pub fn replication_credentials_parameter(&self) -> String {
        self.replication
            .credentials_parameter
            .clone()
            .unwrap_or_else(|| format!("/switchyard/{}/replication", self.cell_id))
    }

    /// Every SSM parameter that holds one of the cell's logins: the orchestrator's,
    /// PgBouncer's admin, the replication role's, each downstream's two. (Application
    /// roles are read by path.)
    pub fn secret_parameters(&self) -> Vec<String> {
        let mut names = vec![
            self.credentials.orchestrator_parameter.clone(),
            self.pgbouncer.admin_credentials_parameter.clone(),
            self.replication_credentials_parameter(),
        ];
        for downstream in &self.downstream {
            names.push(downstream.credentials_parameter.clone());
            names.push(downstream.publisher_credentials_parameter.clone());
        }
        names
    }

    /// Where this cell's run journal lives in SSM.
    pub fn journal_path(&self) -> String {
        self.journal_path
            .clone()
            .unwrap_or_else(|| format!("/switchyard/{}/journal/", self.cell_id))
    }

    /// The replication pairs, in order: one per table group, then the rest. A
    /// publication, its slot and its subscription share the name. A switch-back's green
    /// (the old blue) follows through one: `switchyard_reverse`.
    pub fn replication_names(&self) -> Vec<String> {
        if self.is_back() {
            return vec![reverse_replication_name()];
        }
        self.table_groups
            .iter()
            .map(|g| g.name.as_str())
            .chain([REST_GROUP])
            .map(replication_name)
            .collect()
    }

    /// The publication that carries `switchyard.switchover_marker` to green: the rest
    /// group's, or on a switch-back the reverse one (it publishes every table green
    /// subscribed to, the marker among them).
    pub fn marker_replication_name(&self) -> String {
        if self.is_back() {
            reverse_replication_name()
        } else {
            replication_name(REST_GROUP)
        }
    }

    /// The way back this leg makes inside its window (`switchyard_reverse`), or `None` on
    /// a switch-back: it ends the rollback window rather than opening another.
    pub fn way_back_name(&self) -> Option<String> {
        (!self.is_back()).then(reverse_replication_name)
    }

    /// Whether this document is a switch-back's ([`CellDocument::back`]).
    pub fn is_back(&self) -> bool {
        self.undoes.is_some()
    }

    /// Where this leg's own journal entries live: the cell's journal path, or under
    /// `back/` in it for a switch-back, so the two legs' decisions, saved grants and rename
    /// plans never overwrite each other. The run lock stays cell-wide.
    pub fn leg_journal_path(&self) -> String {
        if self.is_back() {
            format!("{}{BACK_JOURNAL}", self.journal_path())
        } else {
            self.journal_path()
        }
    }

    /// The forward leg's document as this switch-back's was derived from it: the upgrade
    /// it undoes, for reading that leg's journal. `None` for a forward document.
    pub fn forward(&self) -> Option<CellDocument> {
        let undoes = self.undoes.as_ref()?;
        let mut forward = self.clone();
        forward.green.cluster_identifier = undoes.green_identifier.clone();
        forward.target_major_version = undoes.target_major_version;
        forward.undoes = None;
        Some(forward)
    }

    /// The switch-back's document for this (forward) upgrade, once it has switched: the
    /// cell's name is held by green (blue here), and the old blue, of `blue_major`, is
    /// parked as `parked_identifier` (the rename plan's). Everything else — credentials,
    /// PgBouncer, downstream, budgets, the journal — is the cell's and stays.
    pub fn back(&self, parked_identifier: &str, blue_major: u32) -> Result<Self, CellError> {
        if self.is_back() {
            return Err(CellError::Malformed {
                path: "undoes".to_owned(),
                message: "this document is a switch-back's already".to_owned(),
            });
        }
        let mut back = self.clone();
        back.green.cluster_identifier = parked_identifier.to_owned();
        back.target_major_version = blue_major;
        back.undoes = Some(Upgrade {
            green_identifier: self.green.cluster_identifier.clone(),
            target_major_version: self.target_major_version,
        });
        back.validate()?;
        Ok(back)
    }
}

/// Under the cell's journal path, where a switch-back's own entries live.
pub const BACK_JOURNAL: &str = "back/";

/// The pseudo-group of every table no table group names.
pub const REST_GROUP: &str = "rest";

/// The name no table group may take: `switchyard_reverse` is the way back after a switch —
/// green's publication and slot, and the old blue's subscription to them.
pub const REVERSE_GROUP: &str = "reverse";

/// `switchyard_reverse`: the publication and slot on green, and the subscription on the old
/// blue, through which the old blue follows green after the switch (the rollback window).
pub fn reverse_replication_name() -> String {
    replication_name(REVERSE_GROUP)
}

/// `switchyard_<group>`: the publication, slot and subscription of one table group.
pub fn replication_name(group: &str) -> String {
    format!("switchyard_{group}")
}

fn parse<'de, T, D>(deserializer: D) -> Result<T, CellError>
where
    T: DeserializeOwned,
    D: serde::Deserializer<'de>,
{
    serde_path_to_error::deserialize(deserializer).map_err(|e| CellError::Malformed {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn example_value() -> Value {
        serde_json::from_str(EXAMPLE).expect("the example is JSON")
    }

    /// The error for `value` as JSON text and as a Lambda payload; both must name the field.
    fn parse_errors(value: Value) -> [String; 2] {
        let from_json = CellDocument::from_json(&value.to_string());
        let from_value = CellDocument::from_value(value.clone());
        match (from_json, from_value) {
            (Err(a), Err(b)) => [a.to_string(), b.to_string()],
            _ => panic!("accepted {value}"),
        }
    }

    #[test]
    fn example_parses_and_validates() {
        let document = CellDocument::from_json(EXAMPLE).expect("example is valid");
        assert_eq!(document.cell_id, "local-a");
        assert_eq!(document.environment, Environment::Local);
        assert_eq!(
            document.pgbouncer.discovery,
            Discovery::Static {
                hosts: vec!["127.0.0.1:6432".to_owned()]
            }
        );
        assert_eq!(document.downstream[0].subscriptions, ["search_sub"]);
        assert_eq!(document.budgets, Budgets::default());
        assert_eq!(
            CellDocument::from_value(example_value()).expect("example is valid"),
            document
        );
    }

    #[test]
    fn example_round_trips_through_json() {
        let document = CellDocument::from_json(EXAMPLE).expect("example is valid");
        let json = serde_json::to_string(&document).expect("serialize");
        assert_eq!(CellDocument::from_json(&json).expect("reparse"), document);
        assert_eq!(
            serde_json::to_value(&document).expect("serialize"),
            example_value()
        );
    }

    #[test]
    fn missing_field_is_named() {
        let mut value = example_value();
        value.as_object_mut().expect("object").remove("region");
        for error in parse_errors(value) {
            assert!(error.contains("`region`"), "{error}");
        }
    }

    #[test]
    fn missing_nested_field_is_named_with_its_path() {
        let mut value = example_value();
        value["downstream"][0]
            .as_object_mut()
            .expect("object")
            .remove("endpoint");
        for error in parse_errors(value) {
            assert!(
                error.contains("downstream[0]: missing field `endpoint`"),
                "{error}"
            );
        }
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let mut value = example_value();
        value["budgets"] = json!({ "pause_seconds": "sixty" });
        for error in parse_errors(value) {
            assert!(
                error.contains("budgets.pause_seconds: invalid type"),
                "{error}"
            );
        }
    }

    #[test]
    fn unknown_field_is_rejected_and_named() {
        let mut value = example_value();
        value["blue"]["password"] = json!("hunter2");
        for error in parse_errors(value) {
            assert!(
                error.contains("blue.password: unknown field `password`"),
                "{error}"
            );
            assert!(!error.contains("hunter2"), "{error}");
        }

        let mut value = example_value();
        value["pgbouncer"]["discovery"] = json!({ "dns": { "name": "pgbouncer.local" } });
        for error in parse_errors(value) {
            assert!(
                error.contains("pgbouncer.discovery: unknown variant `dns`"),
                "{error}"
            );
        }
    }

    #[test]
    fn trailing_data_is_rejected() {
        assert!(CellDocument::from_json(&format!("{EXAMPLE} {{}}")).is_err());
    }

    #[test]
    fn optional_sections_default() {
        let mut value = example_value();
        let object = value.as_object_mut().expect("object");
        for key in ["direct_writers", "downstream", "table_groups", "budgets"] {
            object.remove(key);
        }
        let document = CellDocument::from_value(value).expect("valid without optional sections");
        assert!(document.direct_writers.is_empty());
        assert!(document.downstream.is_empty());
        assert!(document.table_groups.is_empty());
        assert_eq!(document.budgets, Budgets::default());

        let mut value = example_value();
        value["budgets"] = json!({ "pause_seconds": 45 });
        let document = CellDocument::from_value(value).expect("valid with partial budgets");
        assert_eq!(document.budgets.pause_seconds, 45);
        assert_eq!(document.budgets.drain_seconds, 30);
        assert_eq!(document.budgets.lag_gate_seconds, 30);
        assert_eq!(document.budgets.abort_seconds, 45);
        assert_eq!(document.budgets.max_replication_lag_bytes, 1_048_576);
        assert_eq!(document.budgets.sequence_gap, 1000);
        assert_eq!(document.budgets.verify_seconds, 600);
        assert_eq!(document.budgets.verify_chunk_rows, 10_000);
        assert_eq!(document.budgets.analyze_seconds, 600);
        assert_eq!(document.budgets.rollback_wal_bytes, 10 * 1024 * 1024 * 1024);
    }

    #[test]
    fn ecs_service_discovery_parses() {
        let mut value = example_value();
        value["pgbouncer"]["discovery"] = json!({
            "ecs_service": { "ecs_cluster": "cell-a", "service": "pgbouncer", "admin_port": 6432 }
        });
        let document = CellDocument::from_value(value).expect("valid");
        assert_eq!(
            document.pgbouncer.discovery,
            Discovery::EcsService {
                ecs_cluster: "cell-a".to_owned(),
                service: "pgbouncer".to_owned(),
                admin_port: 6432,
            }
        );
    }

    #[test]
    fn environments_parse_in_snake_case() {
        let aws: Environment = serde_json::from_value(json!("aws")).expect("aws");
        assert_eq!(aws, Environment::Aws);
        assert!(serde_json::from_value::<Environment>(json!("Aws")).is_err());
    }

    #[test]
    fn blue_is_renamed_with_its_major() {
        let document = CellDocument::from_json(EXAMPLE).expect("example is valid");
        assert_eq!(document.blue_renamed_identifier(16), "local-a-blue-16");
    }

    #[test]
    fn a_switch_back_reverses_the_upgrade_and_keeps_the_cell() {
        let forward = CellDocument::from_json(EXAMPLE).expect("example is valid");
        let back = forward.back("local-a-blue-14", 14).expect("valid back");
        assert_eq!(
            back.blue, forward.blue,
            "the cell's name, held by green now"
        );
        assert_eq!(back.green.cluster_identifier, "local-a-blue-14");
        assert_eq!(back.target_major_version, 14);
        assert_eq!(
            back.undoes,
            Some(Upgrade {
                green_identifier: "local-a-green".to_owned(),
                target_major_version: 17
            })
        );
        assert_eq!(back.credentials, forward.credentials);
        assert_eq!(back.replication_names(), ["switchyard_reverse"]);
        assert_eq!(back.marker_replication_name(), "switchyard_reverse");
        assert_eq!(back.way_back_name(), None);
        assert_eq!(
            forward.way_back_name().as_deref(),
            Some("switchyard_reverse")
        );
        assert_eq!(forward.marker_replication_name(), "switchyard_rest");
        assert_eq!(back.journal_path(), forward.journal_path());
        assert_eq!(back.leg_journal_path(), "/switchyard/local-a/journal/back/");
        assert_eq!(forward.leg_journal_path(), "/switchyard/local-a/journal/");
        assert_eq!(back.forward().as_ref(), Some(&forward));
        assert_eq!(forward.forward(), None);
        let json = serde_json::to_string(&back).expect("serialize");
        assert_eq!(CellDocument::from_json(&json).expect("reparse"), back);
        assert!(
            back.back("local-a-blue-17", 17).is_err(),
            "no back of a back"
        );
    }

    #[test]
    fn a_switch_back_goes_only_to_the_parked_old_blue_of_an_older_major() {
        let forward = CellDocument::from_json(EXAMPLE).expect("example is valid");
        let error = forward
            .back("some-other-cluster", 14)
            .expect_err("not the parked old blue")
            .to_string();
        assert!(error.contains("green.cluster_identifier"), "{error}");
        assert!(error.contains("local-a-blue-14"), "{error}");
        let error = forward
            .back("local-a-blue-17", 17)
            .expect_err("not an older major")
            .to_string();
        assert!(error.contains("undoes.target_major_version"), "{error}");
    }
}
