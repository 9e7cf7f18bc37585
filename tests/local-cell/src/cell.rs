//! Building, describing and tearing down one local cell.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use switchyard_aws::{EndpointResolver, LocalEndpoints, LOCAL_ENDPOINTS_ENV};
use switchyard_cell::CellDocument;
use switchyard_postgres::quote::{self, conninfo_value, ident, literal, qualified};
use switchyard_postgres::{scram_verifier, ConnectOptions};
use switchyard_telemetry::Secret;

use crate::ca::CellCa;
use crate::forwarder::{Forwarder, Route};
use crate::install::Install;
use crate::link::Link;
use crate::moto::Moto;
use crate::names::{AwsTimings, Names};
use crate::pg::{client_options, PgServer, PgServerSpec};
use crate::pgbouncer::{PgBouncer, PgBouncerSpec, PooledDatabase};
use crate::process::{run_to_end, server_dir, RunAs};
use crate::workload::{DirectWriterSpec, DirectWriters, Ledger, LedgerSpec};
use crate::CellError;

/// Loopback addresses of the three clusters: distinct, like real writers' IPs.
const BLUE_IP: &str = "127.0.0.2";
const GREEN_IP: &str = "127.0.0.3";
const SEARCH_IP: &str = "127.0.0.4";
/// Where the emulated endpoints (forwarders, links) listen. Every cluster's certificate
/// names it, as every Aurora cluster's names the region's whole endpoint domain: TLS says
/// "some cluster of this account", never which one — that takes the server's identity.
const ENDPOINTS_IP: &str = "127.0.0.1";
/// Aurora PostgreSQL refuses plain TCP from this major on (`rds.force_ssl` = 1).
const FORCE_SSL_FROM_MAJOR: u32 = 15;

/// The publication on blue that the downstream search database subscribes to.
pub const SEARCH_PUBLICATION: &str = "search_pub";
/// Tables the downstream consumes (a search index needs only some of them).
const SEARCH_TABLES: [(&str, &str); 2] = [("public", "accounts"), ("public", "payments")];

/// How to build the cell: server majors, data size, and the document it follows.
#[derive(Debug, Clone)]
pub struct CellOptions {
    pub blue_major: u32,
    pub green_major: u32,
    pub search_major: u32,
    /// The fixture's `rows` variable: accounts; the other tables hold 1–2× as many rows.
    pub rows: u32,
    /// Tasks each direct-writer service starts with.
    pub direct_writer_tasks: i32,
    /// Start the direct writers' tasks (the ECS services exist either way).
    pub run_direct_writers: bool,
    /// PgBouncer's `query_wait_timeout`: how long a client waits on a paused pool before
    /// it gets an error. Above the cell's pause budget, as preflight requires.
    pub query_wait_timeout_secs: u32,
    /// PgBouncer instances (the fleet): the first takes the workloads; each other one is
    /// reached through a [`Link`] a test can break.
    pub pgbouncer_instances: usize,
    pub document: PathBuf,
    /// How slow the emulated AWS is (`AWS_TIMINGS`; `fast` when unset).
    pub aws_timings: AwsTimings,
}

impl CellOptions {
    /// Defaults (14 → 17, search 17, 1000 rows, `fast` AWS timings), overridden by
    /// `BLUE_PG`, `GREEN_PG`, `SEARCH_PG`, `CELL_ROWS`, `CELL_DOCUMENT` and `AWS_TIMINGS`.
    pub fn from_env(install: &Install) -> Result<Self, CellError> {
        let num = |name: &str, default: u32| -> Result<u32, CellError> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| CellError::Setup(format!("{name}={v} is not a number"))),
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            blue_major: num("BLUE_PG", 14)?,
            green_major: num("GREEN_PG", 17)?,
            search_major: num("SEARCH_PG", 17)?,
            rows: num("CELL_ROWS", 1000)?,
            direct_writer_tasks: 2,
            run_direct_writers: true,
            query_wait_timeout_secs: 120,
            pgbouncer_instances: 1,
            document: std::env::var_os("CELL_DOCUMENT")
                .map(PathBuf::from)
                .unwrap_or_else(|| install.example_cell_document()),
            aws_timings: AwsTimings::from_env()?,
        })
    }
}

/// One application role as kept in SSM under the cell's roles path.
#[derive(Debug, Clone)]
pub struct RoleSecret {
    pub name: String,
    pub password: Option<Secret>,
    pub attributes: Vec<&'static str>,
    pub member_of: Vec<String>,
}

/// Every credential the cell generated for this run (random each time; nothing committed).
#[derive(Debug, Clone)]
pub struct CellSecrets {
    pub orchestrator_user: String,
    pub orchestrator: Secret,
    pub roles: Vec<RoleSecret>,
    pub pgbouncer_admin_user: String,
    pub pgbouncer_admin: Secret,
    pub search_admin_user: String,
    pub search_admin: Secret,
}

impl CellSecrets {
    fn generate() -> Self {
        let random = || Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 24));
        // The application writer's password carries every character that breaks naive
        // DSN building or SQL pasting: @ ! ' : /
        let special = Secret::new(format!(
            "{}@!':/{}",
            Alphanumeric.sample_string(&mut rand::rng(), 10),
            Alphanumeric.sample_string(&mut rand::rng(), 10)
        ));
        let role = |name: &str,
                    password: Option<Secret>,
                    attributes: Vec<&'static str>,
                    member_of: &[&str]| RoleSecret {
            name: name.to_owned(),
            password,
            attributes,
            member_of: member_of.iter().map(|s| (*s).to_owned()).collect(),
        };
        Self {
            orchestrator_user: "switchyard".to_owned(),
            orchestrator: random(),
            roles: vec![
                role("app_owner", Some(random()), vec!["LOGIN"], &[]),
                role("app_rw", None, vec!["NOLOGIN"], &[]),
                role("app_writer", Some(special), vec!["LOGIN"], &["app_rw"]),
                role("app_reader", Some(random()), vec!["LOGIN"], &[]),
                role("jobs_writer", Some(random()), vec!["LOGIN"], &["app_rw"]),
                role(
                    "search_replicator",
                    Some(random()),
                    vec!["LOGIN", "REPLICATION"],
                    &[],
                ),
            ],
            pgbouncer_admin_user: "pgbouncer_admin".to_owned(),
            pgbouncer_admin: random(),
            search_admin_user: "search_admin".to_owned(),
            search_admin: random(),
        }
    }

    pub fn role(&self, name: &str) -> Result<(&str, &Secret), CellError> {
        self.roles
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.password.as_ref().map(|p| (r.name.as_str(), p)))
            .ok_or_else(|| {
                CellError::Setup(format!("no login role {} in the cell", quote::name(name)))
            })
    }

    /// Every password of the cell: what a leak check greps for.
    pub fn all_passwords(&self) -> Vec<&Secret> {
        let mut all = vec![
            &self.orchestrator,
            &self.pgbouncer_admin,
            &self.search_admin,
        ];
        all.extend(self.roles.iter().filter_map(|r| r.password.as_ref()));
        all
    }
}

/// A running local cell. Dropping it stops everything it started.
#[derive(Debug)]
pub struct LocalCell {
    /// The cell document for this cell, with the runtime addresses filled in.
    pub document: CellDocument,
    pub secrets: CellSecrets,
    pub run_dir: PathBuf,
    pub fixture_rows: u32,
    // Field order is teardown order: clients first, servers after, moto last.
    direct_writers: Vec<DirectWriters>,
    forwarders: HashMap<String, Forwarder>,
    names: Names,
    nlb: Forwarder,
    pub pgbouncer: PgBouncer,
    /// The fleet's other instances, each behind its link.
    more_pgbouncers: Vec<(Link, PgBouncer)>,
    pub blue: PgServer,
    pub green: PgServer,
    pub search: PgServer,
    pub moto: Moto,
    pub target_group_arn: String,
    pub endpoints_file: PathBuf,
    /// The cell's own CA: every server's certificate chains to it.
    pub ca: CellCa,
}

impl LocalCell {
    pub async fn start(options: &CellOptions) -> Result<Self, CellError> {
        let install = Install::from_env();
        let run_as = RunAs::detect()?;
        let template = std::fs::read_to_string(&options.document).map_err(|e| {
            CellError::Setup(format!("reading {}: {e}", options.document.display()))
        })?;
        let doc = CellDocument::from_json(&template)
            .map_err(|e| CellError::Setup(format!("{}: {e}", options.document.display())))?;

        let run_dir = new_run_dir(&install, &doc.cell_id)?;
        server_dir(run_as, &run_dir, 0o755)?;
        server_dir(run_as, &run_dir.join("logs"), 0o777)?;
        let secrets = CellSecrets::generate();
        tracing::info!(run_dir = %run_dir.display(), "starting local cell");

        let ca = CellCa::generate(&doc.cell_id, &run_dir.join("ca.pem"))?;
        let moto = Moto::start(&install, &run_dir, &doc.region).await?;
        let orchestrator = (secrets.orchestrator_user.as_str(), &secrets.orchestrator);
        let search_admin = (secrets.search_admin_user.as_str(), &secrets.search_admin);
        let mut servers = Vec::new();
        for (name, major, ip, (superuser, superuser_password)) in [
            ("blue", options.blue_major, BLUE_IP, orchestrator),
            ("green", options.green_major, GREEN_IP, orchestrator),
            ("search", options.search_major, SEARCH_IP, search_admin),
        ] {
            // A cluster is reached at its own address and through the endpoints'; the
            // downstream only at its own.
            let names = if name == "search" {
                vec![ip]
            } else {
                vec![ip, ENDPOINTS_IP]
            };
            let spec = PgServerSpec {
                name,
                major,
                ip,
                superuser,
                superuser_password,
                tls: Some(ca.issue(&names)?),
                plain_tcp_too: major < FORCE_SSL_FROM_MAJOR,
            };
            servers.push(PgServer::start(&spec, &install, &run_dir, run_as).await?);
        }
        let [blue, green, search]: [PgServer; 3] = servers
            .try_into()
            .map_err(|_| CellError::Setup("three servers expected".to_owned()))?;

        // AWS side: clusters carrying the real servers' versions, SSM parameters, ECS
        // services and the downstream's target group; names that follow renames late.
        let clients = &moto.clients;
        let mut instances = HashMap::new();
        for (identifier, server) in [
            (&doc.blue.cluster_identifier, &blue),
            (&doc.green.cluster_identifier, &green),
        ] {
            let resource_id = create_cluster(clients, identifier, server).await?;
            instances.insert(resource_id, server.address());
        }
        put_parameters(&moto, &doc, &secrets).await?;
        // Every identifier a switchover gives a cluster has a name: the cell's, green's own
        // and blue's parked one, and green's parked one after a switch-back.
        let identifiers = vec![
            doc.blue.cluster_identifier.clone(),
            doc.green.cluster_identifier.clone(),
            switchyard_operation::rename::parked_identifier(&doc, blue.major),
            doc.blue_renamed_identifier(green.major),
        ];
        let names = Names::start(
            clients.rds.clone(),
            options.aws_timings,
            &identifiers,
            instances.clone(),
        )
        .await?;
        let mut forwarders = HashMap::new();
        for identifier in &identifiers {
            let route = Route::Cluster {
                names: names.clone(),
                identifier: identifier.clone(),
            };
            forwarders.insert(identifier.clone(), Forwarder::start(route).await?);
        }
        let endpoints_file = run_dir.join("endpoints.json");
        let endpoints = LocalEndpoints {
            names: forwarders
                .iter()
                .map(|(identifier, f)| (identifier.clone(), f.addr().to_string()))
                .collect(),
            instances,
        };
        write_json(&endpoints_file, &endpoints)?;
        let blue_endpoint = forwarders[&doc.blue.cluster_identifier].addr();

        let vpc = moto.create_vpc().await?;
        let downstream = doc
            .downstream
            .first()
            .ok_or_else(|| CellError::Setup("the cell document has no downstream".to_owned()))?;
        let target_group_arn =
            create_target_group(clients, &downstream.nlb_target_group, &vpc, &blue).await?;
        let nlb = Forwarder::start(Route::TargetGroup {
            elbv2: clients.elbv2.clone(),
            arn: target_group_arn.clone(),
        })
        .await?;

        let app_db = doc
            .databases
            .first()
            .ok_or_else(|| CellError::Setup("the cell document lists no database".to_owned()))?
            .clone();
        prepare_blue(&install, &blue, &app_db, &secrets, options.rows, &run_dir).await?;
        prepare_green(&green, &doc.databases).await?;
        prepare_search(
            &search,
            &downstream.database,
            &downstream.subscriptions[0],
            nlb.addr(),
            &app_db,
            &secrets,
            ca.bundle(),
        )
        .await?;

        let mut users = vec![(
            secrets.pgbouncer_admin_user.as_str(),
            &secrets.pgbouncer_admin,
        )];
        for role in &secrets.roles {
            if let Some(password) = &role.password {
                users.push((role.name.as_str(), password));
            }
        }
        let pgbouncer_tls = ca.issue(&[ENDPOINTS_IP])?;
        let mut fleet = Vec::new();
        for i in 1..=options.pgbouncer_instances.max(1) {
            let name = if i == 1 {
                "pgbouncer".to_owned()
            } else {
                format!("pgbouncer-{i}")
            };
            let spec = PgBouncerSpec {
                name: &name,
                databases: doc
                    .pgbouncer
                    .databases
                    .iter()
                    .map(|name| PooledDatabase {
                        name: name.clone(),
                        host: blue_endpoint.ip().to_string(),
                        port: blue_endpoint.port(),
                    })
                    .collect(),
                users: users.clone(),
                admin_user: &secrets.pgbouncer_admin_user,
                query_wait_timeout_secs: options.query_wait_timeout_secs,
                tls: Some(pgbouncer_tls.clone()),
            };
            fleet.push(PgBouncer::start(&spec, &install, &run_dir, run_as).await?);
        }
        let pgbouncer = fleet.remove(0);
        let mut more_pgbouncers = Vec::new();
        for instance in fleet {
            let link = Link::start(
                SocketAddr::from(([127, 0, 0, 1], instance.port)),
                Some(&pgbouncer_tls),
            )
            .await?;
            more_pgbouncers.push((link, instance));
        }

        moto.hold_ecs_task_states().await?;
        create_ecs_services(clients, &doc, options.direct_writer_tasks).await?;
        let mut cell = Self {
            document: doc,
            secrets,
            run_dir,
            fixture_rows: options.rows,
            direct_writers: Vec::new(),
            forwarders,
            names,
            nlb,
            pgbouncer,
            more_pgbouncers,
            blue,
            green,
            search,
            moto,
            target_group_arn,
            endpoints_file,
            ca,
        };
        cell.fill_runtime_addresses()?;
        if options.run_direct_writers {
            cell.start_direct_writers()?;
        }
        write_json(&cell.run_dir.join("cell.json"), &cell.document)?;
        write_env(&cell.run_dir.join("env"), &cell.env())?;
        Ok(cell)
    }

    /// What most operation tests start: the environment's majors (`BLUE_PG`, …), `rows`
    /// fixture rows, and no direct writers running.
    pub async fn start_quiet(rows: u32) -> Result<Self, CellError> {
        let mut options = CellOptions::from_env(&Install::from_env())?;
        options.rows = rows;
        options.run_direct_writers = false;
        Self::start(&options).await
    }

    /// The effective cell document names this cell's PgBouncer and downstream addresses,
    /// which are free ports chosen at start, and green's real major as the target;
    /// everything else is the template's.
    fn fill_runtime_addresses(&mut self) -> Result<(), CellError> {
        let mut value =
            serde_json::to_value(&self.document).map_err(|e| CellError::Setup(e.to_string()))?;
        // Green runs whatever GREEN_PG asked for: the document names that as the target.
        value["target_major_version"] = json!(self.green.major);
        let mut hosts = vec![format!("127.0.0.1:{}", self.pgbouncer.port)];
        hosts.extend(
            self.more_pgbouncers
                .iter()
                .map(|(link, _)| link.addr().to_string()),
        );
        value["pgbouncer"]["discovery"] = json!({ "static": { "hosts": hosts } });
        // The fleet serves TLS; green's server dials blue with verify-full against the
        // cell's CA, a file that exists on the database server's host (here: this one).
        value["pgbouncer"]["tls"] = json!(true);
        value["replication"] = json!({
            "sslmode": "verify-full",
            "sslrootcert": self.ca.bundle().display().to_string(),
        });
        if let Some(downstream) = value["downstream"].as_array_mut() {
            for d in downstream {
                d["endpoint"] = json!(self.search.address());
            }
        }
        self.document = CellDocument::from_value(value)
            .map_err(|e| CellError::Setup(format!("effective cell document: {e}")))?;
        Ok(())
    }

    fn start_direct_writers(&mut self) -> Result<(), CellError> {
        let (user, password) = self.secrets.role("jobs_writer")?;
        let endpoint = self.endpoint(&self.document.blue.cluster_identifier)?;
        let connect = self.client(endpoint, user, password);
        for service in &self.document.direct_writers {
            self.direct_writers
                .push(DirectWriters::start(DirectWriterSpec {
                    ecs: self.moto.clients.ecs.clone(),
                    ecs_cluster: service.ecs_cluster.clone(),
                    service: service.service.clone(),
                    connect: connect.clone(),
                    accounts: i64::from(self.fixture_rows),
                    job_interval: Duration::from_millis(20),
                }));
        }
        Ok(())
    }

    /// The emulated cluster endpoint for `identifier` (what its DNS name would reach).
    pub fn endpoint(&self, identifier: &str) -> Result<SocketAddr, CellError> {
        self.forwarders
            .get(identifier)
            .map(Forwarder::addr)
            .ok_or_else(|| CellError::Setup(format!("no emulated endpoint for {identifier}")))
    }

    /// The emulated DNS of the cell's cluster names: to hold a name where it leads, or to
    /// read the delays it emulated.
    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn nlb_endpoint(&self) -> SocketAddr {
        self.nlb.addr()
    }

    pub fn pgbouncer_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.pgbouncer.port))
    }

    /// What every PgBouncer instance logged going wrong lately (the last `n` lines of
    /// each): a test names these next to a failed client transaction.
    pub fn pgbouncer_troubles(&self, n: usize) -> String {
        std::iter::once(&self.pgbouncer)
            .chain(self.more_pgbouncers.iter().map(|(_, p)| p))
            .enumerate()
            .map(|(i, p)| format!("PgBouncer {}:\n{}", i + 1, p.troubles(n).join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The link to fleet instance `n` (2 or above; the first has none), to break it.
    pub fn pgbouncer_link(&self, n: usize) -> Result<&Link, CellError> {
        n.checked_sub(2)
            .and_then(|i| self.more_pgbouncers.get(i))
            .map(|(link, _)| link)
            .ok_or_else(|| CellError::Setup(format!("no PgBouncer instance {n} behind a link")))
    }

    /// The admin console of fleet instance `n` (1-based), reached directly, not through
    /// its link.
    pub async fn pgbouncer_admin_of(
        &self,
        n: usize,
    ) -> Result<switchyard_postgres::PgBouncerAdmin, CellError> {
        let port = match n {
            1 => self.pgbouncer.port,
            n => {
                self.more_pgbouncers
                    .get(n.wrapping_sub(2))
                    .ok_or_else(|| CellError::Setup(format!("no PgBouncer instance {n}")))?
                    .1
                    .port
            }
        };
        switchyard_postgres::PgBouncerAdmin::connect(
            ENDPOINTS_IP,
            port,
            &self.secrets.pgbouncer_admin_user,
            &self.secrets.pgbouncer_admin,
            &self.tls(),
            std::time::Duration::from_secs(5),
        )
        .await
        .map_err(|e| CellError::Setup(format!("PgBouncer {n} admin console: {e}")))
    }

    pub fn direct_writers(&self) -> &[DirectWriters] {
        &self.direct_writers
    }

    /// The TLS every client of the cell uses: verify-full against the cell's CA.
    pub fn tls(&self) -> switchyard_postgres::Tls {
        switchyard_postgres::Tls::VerifyFull {
            ca_bundle: self.ca.bundle().to_owned(),
        }
    }

    /// Options for `user` on the cell's first database at `addr`, verify-full.
    pub fn client(&self, addr: SocketAddr, user: &str, password: &Secret) -> ConnectOptions {
        client_options(
            &addr.ip().to_string(),
            addr.port(),
            &self.document.databases[0],
            user,
            password,
            Some(self.ca.bundle()),
        )
    }

    /// Connection options through PgBouncer for a login role of the cell.
    pub fn via_pgbouncer(&self, role: &str) -> Result<ConnectOptions, CellError> {
        let (user, password) = self.secrets.role(role)?;
        Ok(self.client(self.pgbouncer_addr(), user, password))
    }

    /// Connection options through the emulated cluster endpoint `identifier`.
    pub fn via_endpoint(&self, identifier: &str, role: &str) -> Result<ConnectOptions, CellError> {
        let (user, password) = self.secrets.role(role)?;
        Ok(self.client(self.endpoint(identifier)?, user, password))
    }

    /// Starts the ledger writer through PgBouncer as `app_writer`.
    pub fn start_ledger(&self, workers: usize, think_time: Duration) -> Result<Ledger, CellError> {
        Ok(Ledger::start(LedgerSpec {
            connect: self.via_pgbouncer("app_writer")?,
            workers,
            accounts: i64::from(self.fixture_rows),
            think_time,
        }))
    }

    /// PgBouncer's admin console, logged in as the cell's admin user.
    pub async fn pgbouncer_admin(&self) -> Result<switchyard_postgres::PgBouncerAdmin, CellError> {
        self.pgbouncer_admin_of(1).await
    }

    /// The cluster identifiers moto holds now, sorted: what a rename changes.
    pub async fn cluster_identifiers(&self) -> Result<Vec<String>, CellError> {
        let out = self
            .moto
            .clients
            .rds
            .describe_db_clusters()
            .send()
            .await
            .map_err(|e| CellError::Setup(format!("DescribeDBClusters: {e}")))?;
        let mut ids: Vec<String> = out
            .db_clusters()
            .iter()
            .filter_map(|c| c.db_cluster_identifier().map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Environment for an operation run against this cell: moto through the standard
    /// chain, endpoints through the local map, the cell's CA bundle and pg_dump.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.moto.env();
        env.push((
            LOCAL_ENDPOINTS_ENV.to_owned(),
            self.endpoints_file.display().to_string(),
        ));
        env.push((
            switchyard_operation::CA_BUNDLE_ENV.to_owned(),
            self.ca.bundle().display().to_string(),
        ));
        if let Ok(pg_dump) = Install::from_env().pg_dump() {
            env.push((
                switchyard_operation::PG_DUMP_ENV.to_owned(),
                pg_dump.display().to_string(),
            ));
        }
        env
    }

    /// The operations' dependencies for this cell, as a Lambda in the cell's account would
    /// build them: clients at moto, endpoints through the local map, pg_dump 18.
    pub fn deps(&self) -> Result<switchyard_operation::Deps, CellError> {
        let pg_dump = Install::from_env().pg_dump()?;
        let endpoints = EndpointResolver::Local(
            LocalEndpoints::load(&self.endpoints_file)
                .map_err(|e| CellError::Setup(e.to_string()))?,
        );
        Ok(switchyard_operation::Deps::new(
            self.moto.clients.clone(),
            endpoints,
            switchyard_operation::Deployment {
                ca_bundle: Some(self.ca.bundle().to_owned()),
                pg_dump,
            },
        ))
    }

    /// Takes the cell's run lock for `run_id`, as acquire-lock would: what a test does
    /// before calling an operation that changes the cell (each checks its caller holds it).
    pub async fn lock(&self, run_id: &str) -> Result<(), CellError> {
        let deps = self.deps()?;
        let lock = switchyard_operation::fence::RunLock {
            run_id: run_id.to_owned(),
            execution: None,
            acquired_at: switchyard_operation::now_rfc3339(),
        };
        deps.journal(&self.document)
            .put(&lock)
            .await
            .map_err(|e| CellError::Setup(format!("taking the run lock: {e}")))
    }

    /// Test shortcut standing in for copy-schema: blue's schema on green by pg_dump 18,
    /// without owners, grants, publications or subscriptions (roles are not on green).
    pub async fn copy_schema_directly(&self) -> Result<(), CellError> {
        let install = Install::from_env();
        let db = &self.document.databases[0];
        let pg_dump = install.pg_dump()?;
        // Debian's psql: it speaks TLS (the wheel's does not) and knows \restrict (≥ 15.14).
        let psql = install.psql()?;
        let dump = Command::new(&pg_dump)
            .args([
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                "--no-publications",
                "--no-subscriptions",
            ])
            .args(["-U", &self.secrets.orchestrator_user, "-d", db])
            .envs(self.blue.libpq_env())
            .env("PGPASSWORD", self.secrets.orchestrator.expose())
            .output()
            .map_err(|e| CellError::Setup(format!("pg_dump: {e}")))?;
        if !dump.status.success() {
            return Err(CellError::Setup(format!(
                "pg_dump: {}",
                String::from_utf8_lossy(&dump.stderr)
            )));
        }
        // pg_dump ≥ 15.14 wraps its output in psql's \restrict meta-commands: apply with psql.
        let mut apply = Command::new(&psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .args(["-U", &self.secrets.orchestrator_user, "-d", db])
            .envs(self.green.libpq_env())
            .env("PGPASSWORD", self.secrets.orchestrator.expose())
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| CellError::Setup(format!("psql: {e}")))?;
        if let Some(mut stdin) = apply.stdin.take() {
            std::io::Write::write_all(&mut stdin, &dump.stdout)
                .map_err(|e| CellError::Setup(format!("psql: {e}")))?;
        }
        let applied = apply
            .wait_with_output()
            .map_err(|e| CellError::Setup(format!("psql: {e}")))?;
        if !applied.status.success() {
            return Err(CellError::Setup(format!(
                "schema on green: {}",
                String::from_utf8_lossy(&applied.stderr)
            )));
        }
        Ok(())
    }

    /// Test shortcut standing in for sync-roles/copy-schema/start-replication: the schema
    /// as [`Self::copy_schema_directly`] puts it, and one FOR ALL TABLES publication and
    /// subscription, initial copy done. Returns the subscription's name.
    pub async fn replicate_directly(&self) -> Result<&'static str, CellError> {
        const NAME: &str = "test_all";
        self.copy_schema_directly().await?;
        let db = &self.document.databases[0];
        let blue = self.blue.superuser_client(db).await?;
        blue.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            ident(NAME)
        ))
        .await
        .map_err(|e| CellError::Setup(format!("publication: {e}")))?;
        let conninfo = format!(
            "host={} port={} dbname={} user={} password={} sslmode=verify-full sslrootcert={}",
            conninfo_value(&self.blue.ip),
            self.blue.port,
            conninfo_value(db),
            conninfo_value(&self.secrets.orchestrator_user),
            conninfo_value(self.secrets.orchestrator.expose()),
            conninfo_value(&self.ca.bundle().display().to_string()),
        );
        let green = self.green.superuser_client(db).await?;
        green
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}",
                ident(NAME),
                literal(&conninfo),
                ident(NAME)
            ))
            .await
            .map_err(|e| CellError::Setup(format!("subscription: {}", db_message(&e))))?;
        wait_subscription_ready(&green, NAME, Duration::from_secs(120)).await?;
        Ok(NAME)
    }

    /// Pids of every server process of the cell.
    pub fn pids(&self) -> Vec<u32> {
        [
            self.blue.pid(),
            self.green.pid(),
            self.search.pid(),
            self.pgbouncer.pid(),
            self.moto.pid(),
        ]
        .into_iter()
        .chain(self.more_pgbouncers.iter().map(|(_, p)| p.pid()))
        .flatten()
        .collect()
    }

    /// Stops everything now (dropping does the same).
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.direct_writers.clear();
        self.forwarders.clear();
        self.pgbouncer.stop();
        for (_, instance) in &mut self.more_pgbouncers {
            instance.stop();
        }
        // Subscribers before publishers: a walsender waits for its subscriber to go.
        self.search.stop();
        self.green.stop();
        self.blue.stop();
        self.moto.stop();
    }
}

impl Drop for LocalCell {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn new_run_dir(install: &Install, cell_id: &str) -> Result<PathBuf, CellError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = install
        .work_dir()
        .join(format!("{cell_id}-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(install.work_dir())
        .map_err(|e| CellError::Setup(format!("{}: {e}", install.work_dir().display())))?;
    Ok(dir)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), CellError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CellError::Setup(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| CellError::Setup(format!("{}: {e}", path.display())))
}

fn write_env(path: &Path, env: &[(String, String)]) -> Result<(), CellError> {
    let text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={v}\n"))
        .collect();
    std::fs::write(path, text).map_err(|e| CellError::Setup(format!("{}: {e}", path.display())))
}

async fn create_cluster(
    clients: &switchyard_aws::AwsClients,
    identifier: &str,
    server: &PgServer,
) -> Result<String, CellError> {
    let err = |what: &str, e: String| CellError::Setup(format!("moto {what} {identifier}: {e}"));
    let out = clients
        .rds
        .create_db_cluster()
        .db_cluster_identifier(identifier)
        .engine("aurora-postgresql")
        .engine_version(&server.version)
        .master_username("switchyard")
        // moto insists on a master password; the real one lives in SSM only.
        .master_user_password(Alphanumeric.sample_string(&mut rand::rng(), 20))
        .send()
        .await
        .map_err(|e| err("CreateDBCluster", format!("{e:?}")))?;
    clients
        .rds
        .create_db_instance()
        .db_instance_identifier(format!("{identifier}-1"))
        .db_cluster_identifier(identifier)
        .engine("aurora-postgresql")
        .db_instance_class("db.r6g.large")
        .send()
        .await
        .map_err(|e| err("CreateDBInstance", format!("{e:?}")))?;
    out.db_cluster()
        .and_then(|c| c.db_cluster_resource_id())
        .map(str::to_owned)
        .ok_or_else(|| err("CreateDBCluster", "no DbClusterResourceId".to_owned()))
}

async fn put_parameters(
    moto: &Moto,
    doc: &CellDocument,
    secrets: &CellSecrets,
) -> Result<(), CellError> {
    let login = |user: &str, password: &Secret| {
        json!({ "username": user, "password": password.expose() }).to_string()
    };
    let mut params = vec![
        (
            doc.credentials.orchestrator_parameter.clone(),
            login(&secrets.orchestrator_user, &secrets.orchestrator),
        ),
        (
            doc.pgbouncer.admin_credentials_parameter.clone(),
            login(&secrets.pgbouncer_admin_user, &secrets.pgbouncer_admin),
        ),
    ];
    for role in &secrets.roles {
        let mut value = json!({ "username": role.name, "attributes": role.attributes, "member_of": role.member_of });
        if let Some(password) = &role.password {
            value["password"] = json!(password.expose());
        }
        params.push((
            format!("{}{}", doc.credentials.application_roles_path, role.name),
            value.to_string(),
        ));
    }
    let (replicator, replicator_password) = secrets.role("search_replicator")?;
    for d in &doc.downstream {
        params.push((
            d.credentials_parameter.clone(),
            login(&secrets.search_admin_user, &secrets.search_admin),
        ));
        params.push((
            d.publisher_credentials_parameter.clone(),
            login(replicator, replicator_password),
        ));
    }
    for (name, value) in params {
        moto.clients
            .ssm
            .put_parameter()
            .name(&name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .map_err(|e| CellError::Setup(format!("moto PutParameter {name}: {e}")))?;
    }
    Ok(())
}

async fn create_target_group(
    clients: &switchyard_aws::AwsClients,
    name_or_arn: &str,
    vpc: &str,
    blue: &PgServer,
) -> Result<String, CellError> {
    // The template names the target group; an ARN there would belong to a real account.
    let name = name_or_arn
        .rsplit('/')
        .nth(1)
        .filter(|_| name_or_arn.starts_with("arn:"))
        .unwrap_or(name_or_arn);
    let out = clients
        .elbv2
        .create_target_group()
        .name(name)
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Tcp)
        .port(5432)
        .vpc_id(vpc)
        .target_type(aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum::Ip)
        .send()
        .await
        .map_err(|e| CellError::Setup(format!("moto CreateTargetGroup: {e:?}")))?;
    let arn = out
        .target_groups()
        .first()
        .and_then(|t| t.target_group_arn())
        .ok_or_else(|| CellError::Setup("CreateTargetGroup returned no ARN".to_owned()))?
        .to_owned();
    let target = aws_sdk_elasticloadbalancingv2::types::TargetDescription::builder()
        .id(&blue.ip)
        .port(i32::from(blue.port))
        .build();
    clients
        .elbv2
        .register_targets()
        .target_group_arn(&arn)
        .targets(target)
        .send()
        .await
        .map_err(|e| CellError::Setup(format!("moto RegisterTargets: {e:?}")))?;
    Ok(arn)
}

async fn create_ecs_services(
    clients: &switchyard_aws::AwsClients,
    doc: &CellDocument,
    tasks: i32,
) -> Result<(), CellError> {
    let err = |what: &str, e: String| CellError::Setup(format!("moto {what}: {e}"));
    let mut clusters: Vec<&str> = doc
        .direct_writers
        .iter()
        .map(|w| w.ecs_cluster.as_str())
        .collect();
    clusters.push(&doc.cell_id);
    clusters.sort_unstable();
    clusters.dedup();
    for cluster in &clusters {
        clients
            .ecs
            .create_cluster()
            .cluster_name(*cluster)
            .send()
            .await
            .map_err(|e| err("CreateCluster", format!("{e:?}")))?;
    }
    let mut services: Vec<(&str, &str, i32)> = vec![(&doc.cell_id, "pgbouncer", 1)];
    services.extend(
        doc.direct_writers
            .iter()
            .map(|w| (w.ecs_cluster.as_str(), w.service.as_str(), tasks)),
    );
    for (cluster, service, desired) in services {
        let container = aws_sdk_ecs::types::ContainerDefinition::builder()
            .name(service)
            .image(format!("local/{service}"))
            .memory(128)
            .build();
        clients
            .ecs
            .register_task_definition()
            .family(service)
            .container_definitions(container)
            .send()
            .await
            .map_err(|e| err("RegisterTaskDefinition", format!("{e:?}")))?;
        clients
            .ecs
            .create_service()
            .cluster(cluster)
            .service_name(service)
            .task_definition(service)
            .desired_count(desired)
            .send()
            .await
            .map_err(|e| err("CreateService", format!("{e:?}")))?;
    }
    Ok(())
}

/// Sets a role's password as a SCRAM verifier, so no plain password is ever in SQL text
/// (a failing statement is written to the server log whole).
fn password_clause(password: &Secret) -> String {
    format!("PASSWORD {}", literal(&scram_verifier(password)))
}

async fn prepare_blue(
    install: &Install,
    blue: &PgServer,
    app_db: &str,
    secrets: &CellSecrets,
    rows: u32,
    run_dir: &Path,
) -> Result<(), CellError> {
    let admin = blue.superuser_client("postgres").await?;
    let sql_err =
        |what: &str, e: tokio_postgres::Error| CellError::Setup(format!("blue: {what}: {e}"));
    // Roles first, memberships after: a role must exist before another can join it.
    for role in &secrets.roles {
        let mut stmt = format!(
            "CREATE ROLE {} {}",
            ident(&role.name),
            role.attributes.join(" ")
        );
        if let Some(password) = &role.password {
            stmt.push(' ');
            stmt.push_str(&password_clause(password));
        }
        admin
            .batch_execute(&stmt)
            .await
            .map_err(|e| sql_err(&format!("creating role {}", role.name), e))?;
    }
    for role in &secrets.roles {
        for group in &role.member_of {
            admin
                .batch_execute(&format!("GRANT {} TO {}", ident(group), ident(&role.name)))
                .await
                .map_err(|e| sql_err("granting membership", e))?;
        }
    }
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} OWNER {}",
            ident(app_db),
            ident("app_owner")
        ))
        .await
        .map_err(|e| sql_err("creating database", e))?;

    // The fixture is loaded by the application's owner role, as a migration tool would.
    let (owner, owner_password) = secrets.role("app_owner")?;
    let mut psql = Command::new(install.psql()?);
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("rows={rows}"))
        .arg("-f")
        .arg(install.fixture())
        .args(["-U", owner, "-d", app_db])
        .envs(blue.libpq_env())
        // psql reads the password from the environment: never on a command line.
        .env("PGPASSWORD", owner_password.expose())
        .env("PGCONNECT_TIMEOUT", "10");
    run_to_end(
        "loading the fixture",
        psql,
        None,
        &run_dir.join("logs").join("fixture.log"),
    )
    .await?;

    let app = blue.superuser_client(app_db).await?;
    let grants = [
        "GRANT USAGE ON SCHEMA public, billing TO app_rw, app_reader, search_replicator".to_owned(),
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, billing TO app_rw"
            .to_owned(),
        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, billing TO app_rw"
            .to_owned(),
        "GRANT SELECT ON ALL TABLES IN SCHEMA public, billing TO app_reader".to_owned(),
        format!(
            "GRANT SELECT ON {} TO search_replicator",
            SEARCH_TABLES
                .iter()
                .map(|(s, t)| qualified(s, t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            ident(SEARCH_PUBLICATION),
            SEARCH_TABLES
                .iter()
                .map(|(s, t)| qualified(s, t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    for stmt in grants {
        app.batch_execute(&stmt)
            .await
            .map_err(|e| sql_err("granting", e))?;
    }
    Ok(())
}

/// Green starts as a new Aurora cluster does: its databases exist, empty; roles and schema
/// are the prepare phase's job.
async fn prepare_green(green: &PgServer, databases: &[String]) -> Result<(), CellError> {
    let admin = green.superuser_client("postgres").await?;
    for db in databases {
        admin
            .batch_execute(&format!("CREATE DATABASE {}", ident(db)))
            .await
            .map_err(|e| {
                CellError::Setup(format!("green: creating database {}: {e}", quote::name(db)))
            })?;
    }
    Ok(())
}

/// The downstream search database: its own schema for the tables it indexes, and a
/// subscription to blue through the NLB, as ParadeDB's is.
async fn prepare_search(
    search: &PgServer,
    database: &str,
    subscription: &str,
    nlb: SocketAddr,
    app_db: &str,
    secrets: &CellSecrets,
    ca_bundle: &Path,
) -> Result<(), CellError> {
    let admin = search.superuser_client("postgres").await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", ident(database)))
        .await
        .map_err(|e| CellError::Setup(format!("search: creating database: {e}")))?;
    let client = search.superuser_client(database).await?;
    client
        .batch_execute(
            "CREATE TABLE public.accounts (id bigint PRIMARY KEY, external_id uuid NOT NULL, email text NOT NULL, \
               state text NOT NULL, tags text[] NOT NULL, profile jsonb NOT NULL, \
               created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
             CREATE TABLE public.payments (id bigint PRIMARY KEY, account_id bigint NOT NULL, \
               amount numeric(14, 2) NOT NULL, currency char(3) NOT NULL, memo text, created_at timestamptz NOT NULL);",
        )
        .await
        .map_err(|e| CellError::Setup(format!("search: schema: {e}")))?;
    let (user, password) = secrets.role("search_replicator")?;
    // The subscriber's server dials the NLB: verify-full against the CA file on its host.
    let conninfo = format!(
        "host={} port={} dbname={} user={} password={} sslmode=verify-full sslrootcert={}",
        conninfo_value(&nlb.ip().to_string()),
        nlb.port(),
        conninfo_value(app_db),
        conninfo_value(user),
        conninfo_value(password.expose()),
        conninfo_value(&ca_bundle.display().to_string()),
    );
    client
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}",
            ident(subscription),
            literal(&conninfo),
            ident(SEARCH_PUBLICATION)
        ))
        .await
        // The statement holds the password: report the SQLSTATE and message only.
        .map_err(|e| {
            CellError::Setup(format!(
                "search: creating subscription {subscription}: {}",
                db_message(&e)
            ))
        })?;
    wait_subscription_ready(&client, subscription, Duration::from_secs(120)).await
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{}: {}", d.code().code(), d.message()))
        .unwrap_or_else(|| "connection error".to_owned())
}

/// Waits until every table of `subscription` has finished its initial copy (state `r`).
pub async fn wait_subscription_ready(
    client: &tokio_postgres::Client,
    subscription: &str,
    budget: Duration,
) -> Result<(), CellError> {
    let started = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE r.srsubstate <> 'r'), count(*) \
                 FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid \
                 WHERE s.subname = $1",
                &[&subscription],
            )
            .await
            .map_err(|e| {
                CellError::Setup(format!(
                    "subscription {} state: {e}",
                    quote::name(subscription)
                ))
            })?;
        let (not_ready, total): (i64, i64) = (row.get(0), row.get(1));
        if total > 0 && not_ready == 0 {
            return Ok(());
        }
        if started.elapsed() > budget {
            return Err(CellError::Setup(format!(
                "subscription {}: {not_ready} of {total} tables not ready after {budget:?}",
                quote::name(subscription)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
