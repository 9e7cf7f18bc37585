use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard_aws::{AwsClients, ClusterEndpoint, DbCredentials, EndpointResolver};
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;
use switchyard_postgres::{connect, ConnectOptions, Tls};

use crate::{Deployment, Error};

/// Which of the cell's two clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Blue,
    Green,
}

impl Side {
    pub fn identifier(self, cell: &CellDocument) -> &str {
        match self {
            Self::Blue => &cell.blue.cluster_identifier,
            Self::Green => &cell.green.cluster_identifier,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Blue => "blue",
            Self::Green => "green",
        })
    }
}

/// Everything an operation needs from its host, built once per process (cold start in
/// Lambda, once per test or run locally) and shared by every invocation.
#[derive(Clone, Debug)]
pub struct Deps {
    pub aws: AwsClients,
    pub endpoints: EndpointResolver,
    pub deployment: Deployment,
    /// Server identities read through writer instance endpoints, by resource id and address:
    /// a cluster's identity never changes, so a warm Lambda reads each one once.
    identities: Arc<Mutex<HashMap<(String, String), String>>>,
    /// Logins read in this invocation, by SSM parameter name ([`Deps::for_invocation`]):
    /// each read once per invocation, none kept past it (the next invocation sees a
    /// rotated password). `None`: every read goes to SSM.
    logins: Option<Arc<tokio::sync::Mutex<HashMap<String, DbCredentials>>>>,
}

/// The kinds of login a cell document names, for [`Deps::read_logins`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Orchestrator,
    PgBouncerAdmin,
    /// Every downstream database's admin login.
    DownstreamAdmins,
    /// Every downstream's login on the publisher (the subscription's connection).
    DownstreamPublishers,
}

/// How long a connection attempt may take before it counts as unavailable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Deps {
    pub fn new(aws: AwsClients, endpoints: EndpointResolver, deployment: Deployment) -> Self {
        Self {
            aws,
            endpoints,
            deployment,
            identities: Arc::default(),
            logins: None,
        }
    }

    /// These dependencies for one invocation: the same clients and identities, and a
    /// fresh set of logins read once each ([`Deps::logins`]). What the Lambda runtime and
    /// the local task handler give each invocation.
    pub fn for_invocation(&self) -> Self {
        let mut deps = self.clone();
        deps.logins = Some(Arc::default());
        deps
    }

    /// The logins kept in SSM parameters `names`, in order: read in batches
    /// (`GetParameters`, ten names a call), each at most once per invocation. A function
    /// that needs several asks for them together.
    pub async fn logins(&self, names: &[&str]) -> Result<Vec<DbCredentials>, Error> {
        let Some(cache) = &self.logins else {
            let read = switchyard_aws::read_credentials_batch(&self.aws.ssm, names).await?;
            return Ok(read.into_iter().map(|(_, login)| login).collect());
        };
        // Held across the read: a second caller waits for it rather than reading again.
        let mut cache = cache.lock().await;
        let mut missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !cache.contains_key(*n))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            cache.extend(switchyard_aws::read_credentials_batch(&self.aws.ssm, &missing).await?);
        }
        Ok(names.iter().map(|n| cache[*n].clone()).collect())
    }

    /// Reads these kinds of the cell's logins together, in one batch, for a function that
    /// will need them in this invocation: each is then served from the invocation's set.
    /// Does nothing outside an invocation ([`Deps::for_invocation`]): there nothing is kept.
    pub async fn read_logins(&self, cell: &CellDocument, kinds: &[Login]) -> Result<(), Error> {
        if self.logins.is_none() {
            return Ok(());
        }
        let mut names: Vec<&str> = Vec::new();
        for kind in kinds {
            match kind {
                Login::Orchestrator => names.push(&cell.credentials.orchestrator_parameter),
                Login::PgBouncerAdmin => names.push(&cell.pgbouncer.admin_credentials_parameter),
                Login::DownstreamAdmins => names.extend(
                    cell.downstream
                        .iter()
                        .map(|d| d.credentials_parameter.as_str()),
                ),
                Login::DownstreamPublishers => names.extend(
                    cell.downstream
                        .iter()
                        .map(|d| d.publisher_credentials_parameter.as_str()),
                ),
            }
        }
        self.logins(&names).await.map(drop)
    }

    /// The login kept in SSM parameter `name` ([`Deps::logins`]).
    pub async fn login(&self, name: &str) -> Result<DbCredentials, Error> {
        let mut logins = self.logins(&[name]).await?;
        Ok(logins.remove(0))
    }

    /// From the environment: the standard AWS chain (honouring `AWS_ENDPOINT_URL`), the
    /// local endpoint map when `SWITCHYARD_LOCAL_ENDPOINTS` is set, and the deployment paths.
    pub async fn from_env() -> Result<Self, Error> {
        let deployment = Deployment::from_env()?;
        let endpoints = EndpointResolver::from_env()?;
        let aws = AwsClients::load(None).await;
        Ok(Self::new(aws, endpoints, deployment))
    }

    /// The cell's run journal (SSM, under `cell.journal_path()`).
    pub fn journal<'a>(&'a self, cell: &CellDocument) -> crate::Journal<'a> {
        crate::Journal::new(&self.aws.ssm, cell)
    }

    /// Where `side`'s cluster can be reached now.
    pub async fn endpoint(
        &self,
        cell: &CellDocument,
        side: Side,
    ) -> Result<ClusterEndpoint, Error> {
        Ok(self
            .endpoints
            .resolve(&self.aws.rds, side.identifier(cell))
            .await?)
    }

    /// The orchestrator's login, read from SSM at call time (once per invocation, never
    /// logged).
    pub async fn orchestrator(&self, cell: &CellDocument) -> Result<DbCredentials, Error> {
        self.login(&cell.credentials.orchestrator_parameter).await
    }

    /// TLS for every database connection: verify-full with the deployment's CA bundle
    /// (the RDS bundle on AWS, the local cell's own CA here); there is no plain TCP.
    pub fn tls(&self, _cell: &CellDocument) -> Result<Tls, Error> {
        Ok(Tls::for_databases(self.deployment.ca_bundle.clone())?)
    }

    /// TLS to the PgBouncer fleet (admin console and probe): the databases' verify-full
    /// when the cell document says the fleet serves TLS, plain TCP inside the VPC when not.
    pub fn pgbouncer_tls(&self, cell: &CellDocument) -> Result<Tls, Error> {
        if cell.pgbouncer.tls {
            self.tls(cell)
        } else {
            Ok(Tls::Disabled)
        }
    }

    /// Connection options for the orchestrator on `side`'s `dbname`, at the address of
    /// its identifier's endpoint name. Whoever connects with them must check which server
    /// the name led to ([`Deps::check_reached`]); [`Deps::connect`] does.
    pub async fn orchestrator_options(
        &self,
        cell: &CellDocument,
        side: Side,
        dbname: &str,
    ) -> Result<ConnectOptions, Error> {
        let endpoint = self.endpoint(cell, side).await?;
        self.options_at(cell, &endpoint.host, endpoint.port, dbname)
            .await
    }

    async fn options_at(
        &self,
        cell: &CellDocument,
        host: &str,
        port: u16,
        dbname: &str,
    ) -> Result<ConnectOptions, Error> {
        let login = self.orchestrator(cell).await?;
        Ok(ConnectOptions {
            host: host.to_owned(),
            port,
            dbname: dbname.to_owned(),
            user: login.username,
            password: login.password,
            tls: self.tls(cell)?,
            application_name: "switchyard".to_owned(),
            connect_timeout: CONNECT_TIMEOUT,
        })
    }

    /// A connection as the orchestrator to `side`'s `dbname`, checked to have reached the
    /// cluster that holds `side`'s identifier now (`WrongServer` otherwise).
    pub async fn connect(
        &self,
        cell: &CellDocument,
        side: Side,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, Error> {
        let (client, _) = self
            .connect_identifier(cell, side.identifier(cell), dbname)
            .await?;
        Ok(client)
    }

    /// A connection as the orchestrator through `identifier`'s endpoint name — what DNS
    /// gives after a rename may still be the old cluster, or nothing — checked against the
    /// cluster the RDS API says holds `identifier` now. Returns that cluster too. A name
    /// leading elsewhere is `WrongServer` (retryable: DNS catches up), and nothing has been
    /// done on the server it reached.
    pub async fn connect_identifier(
        &self,
        cell: &CellDocument,
        identifier: &str,
        dbname: &str,
    ) -> Result<(tokio_postgres::Client, ClusterEndpoint), Error> {
        let endpoint = self.endpoints.resolve(&self.aws.rds, identifier).await?;
        let client = self.connect_endpoint(cell, &endpoint, dbname).await?;
        Ok((client, endpoint))
    }

    /// A connection as the orchestrator through `endpoint` (resolved earlier by its
    /// identifier), checked like [`Deps::connect_identifier`].
    pub async fn connect_endpoint(
        &self,
        cell: &CellDocument,
        endpoint: &ClusterEndpoint,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, Error> {
        let opts = self
            .options_at(cell, &endpoint.host, endpoint.port, dbname)
            .await?;
        let client = connect(&opts).await?;
        self.check_reached(cell, endpoint, &client, dbname).await?;
        Ok(client)
    }

    /// A new connection to `host:port` — an address that stands for `identifier`'s name,
    /// such as the host a PgBouncer database names — reaches the cluster the RDS API says
    /// holds `identifier` now (`WrongServer` otherwise). Returns that cluster.
    pub async fn dial_checked(
        &self,
        cell: &CellDocument,
        identifier: &str,
        host: &str,
        port: u16,
        dbname: &str,
    ) -> Result<ClusterEndpoint, Error> {
        let endpoint = self.endpoints.resolve(&self.aws.rds, identifier).await?;
        let dialled = ClusterEndpoint {
            host: host.to_owned(),
            port,
            ..endpoint.clone()
        };
        self.connect_endpoint(cell, &dialled, dbname).await?;
        Ok(endpoint)
    }

    /// `client` (opened through `endpoint`'s name) is on the cluster the API named in
    /// `endpoint`: the server's identity equals the one read through that cluster's writer
    /// instance endpoint, which an instance's own address always reaches.
    pub async fn check_reached(
        &self,
        cell: &CellDocument,
        endpoint: &ClusterEndpoint,
        client: &tokio_postgres::Client,
        dbname: &str,
    ) -> Result<(), Error> {
        let identifier = &endpoint.identifier;
        let reached = server_identity(client).await?;
        let writer = self.endpoints.writer(&self.aws.rds, identifier).await?;
        if writer.cluster_resource_id != endpoint.resource_id {
            return Err(Error::stop(
                ErrorName::WrongServer,
                format!(
                    "identifier {identifier} moved from cluster resource {} to {} while connecting (a rename is under way); nothing was done, retry",
                    endpoint.resource_id, writer.cluster_resource_id
                ),
            ));
        }
        let key = (
            writer.cluster_resource_id.clone(),
            format!("{}:{}", writer.host, writer.port),
        );
        let cached = self
            .identities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let expected = match cached {
            Some(identity) => identity,
            None => {
                let opts = self
                    .options_at(cell, &writer.host, writer.port, dbname)
                    .await?;
                let identity = server_identity(&connect(&opts).await?).await?;
                self.identities
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, identity.clone());
                identity
            }
        };
        if reached == expected {
            return Ok(());
        }
        tracing::warn!(identifier, resource_id = %endpoint.resource_id, %reached, %expected, "an endpoint name led to another server");
        Err(Error::stop(
            ErrorName::WrongServer,
            format!(
                "endpoint name {identifier} led to server {reached}, not to cluster resource {} (server {expected}) that holds {identifier} now: its DNS has not caught up with a rename yet. Nothing was done there; retry",
                endpoint.resource_id
            ),
        ))
    }
}

/// What tells two servers apart whatever name led to them: the system identifier initdb
/// (or Aurora, at cluster creation) chose, and on Aurora the instance answering too —
/// a cluster restored from a snapshot keeps its source's system identifier.
async fn server_identity(client: &tokio_postgres::Client) -> Result<String, Error> {
    let row = client
        .query_one(
            "SELECT system_identifier::text, \
                    to_regprocedure('aurora_db_instance_identifier()') IS NOT NULL \
             FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(|e| Error::query("reading the server's system identifier", e))?;
    let system: String = row.get(0);
    if !row.get::<_, bool>(1) {
        return Ok(system);
    }
    let instance: String = client
        .query_one("SELECT aurora_db_instance_identifier()::text", &[])
        .await
        .map_err(|e| Error::query("reading the Aurora instance identifier", e))?
        .get(0);
    Ok(format!("{system}/{instance}"))
}
