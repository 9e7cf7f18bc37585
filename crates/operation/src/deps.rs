use switchyard_aws::{AwsClients, ClusterEndpoint, DbCredentials, EndpointResolver};
use switchyard_cell::CellDocument;
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
}

/// How long a connection attempt may take before it counts as unavailable.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Deps {
    pub fn new(aws: AwsClients, endpoints: EndpointResolver, deployment: Deployment) -> Self {
        Self {
            aws,
            endpoints,
            deployment,
        }
    }

    /// From the environment: the standard AWS chain (honouring `AWS_ENDPOINT_URL`), the
    /// local endpoint map when `SWITCHYARD_LOCAL_ENDPOINTS` is set, and the deployment paths.
    pub async fn from_env() -> Result<Self, Error> {
        let deployment = Deployment::from_env()?;
        let endpoints = EndpointResolver::from_env()?;
        let aws = AwsClients::load(None).await;
        Ok(Self {
            aws,
            endpoints,
            deployment,
        })
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

    /// The orchestrator's login, read from SSM at call time (never cached, never logged).
    pub async fn orchestrator(&self, cell: &CellDocument) -> Result<DbCredentials, Error> {
        Ok(switchyard_aws::read_credentials(
            &self.aws.ssm,
            &cell.credentials.orchestrator_parameter,
        )
        .await?)
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

    /// Connection options for the orchestrator on `side`'s `dbname`.
    pub async fn orchestrator_options(
        &self,
        cell: &CellDocument,
        side: Side,
        dbname: &str,
    ) -> Result<ConnectOptions, Error> {
        let endpoint = self.endpoint(cell, side).await?;
        let login = self.orchestrator(cell).await?;
        Ok(ConnectOptions {
            host: endpoint.host,
            port: endpoint.port,
            dbname: dbname.to_owned(),
            user: login.username,
            password: login.password,
            tls: self.tls(cell)?,
            application_name: "switchyard".to_owned(),
            connect_timeout: CONNECT_TIMEOUT,
        })
    }

    /// A connection as the orchestrator to `side`'s `dbname`.
    pub async fn connect(
        &self,
        cell: &CellDocument,
        side: Side,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, Error> {
        let opts = self.orchestrator_options(cell, side, dbname).await?;
        Ok(connect(&opts).await?)
    }
}
