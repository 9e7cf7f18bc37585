use std::collections::HashMap;
use std::path::Path;

use switchyard_errors::ErrorName;

use crate::AwsError;

/// Environment variable naming the local endpoint map (a JSON file). Set only in the local
/// cell; absent in AWS, where the cluster's DNS endpoint is used.
pub const LOCAL_ENDPOINTS_ENV: &str = "SWITCHYARD_LOCAL_ENDPOINTS";

/// Where a cluster identifier can be reached right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEndpoint {
    pub identifier: String,
    /// `DbClusterResourceId`: stable across renames, unlike the identifier.
    pub resource_id: String,
    pub status: String,
    pub engine_version: String,
    pub host: String,
    pub port: u16,
}

/// The writer instance of a cluster, reached through its own endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterEndpoint {
    /// The cluster's `DbClusterResourceId`.
    pub cluster_resource_id: String,
    /// The writer's `DBInstanceIdentifier` (locally: the server behind the cluster).
    pub instance: String,
    pub host: String,
    pub port: u16,
}

impl ClusterEndpoint {
    pub fn is_available(&self) -> bool {
        self.status == "available"
    }
}

/// Local stand-in for DNS: `DbClusterResourceId` → `host:port` of the server behind it.
///
/// Like Aurora's DNS after a rename, a name can lag: while an identifier is held
/// ([`LocalEndpoints::hold`]) it leads nowhere (`ClusterNotAvailable`), whoever holds it in
/// moto. Clones share the held names, so a test holding one through its own copy is seen
/// by every operation using the resolver.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LocalEndpoints {
    map: HashMap<String, String>,
    #[serde(skip)]
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl PartialEq for LocalEndpoints {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for LocalEndpoints {}

impl LocalEndpoints {
    pub fn new(map: HashMap<String, String>) -> Self {
        Self {
            map,
            held: std::sync::Arc::default(),
        }
    }

    /// From now on `identifier` leads nowhere, until [`LocalEndpoints::release`]: a name
    /// that has not caught up with a rename yet.
    pub fn hold(&self, identifier: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(identifier.to_owned());
    }

    pub fn release(&self, identifier: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(identifier);
    }

    fn is_held(&self, identifier: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(identifier)
    }

    pub fn load(path: &Path) -> Result<Self, AwsError> {
        let context = format!("loading local endpoint map {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| AwsError::new(ErrorName::ConfigurationError, &context, e.to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| AwsError::new(ErrorName::ConfigurationError, &context, e.to_string()))
    }

    fn address(&self, resource_id: &str) -> Option<(String, u16)> {
        let addr = self.map.get(resource_id)?;
        let (host, port) = addr.rsplit_once(':')?;
        Some((host.to_owned(), port.parse().ok()?))
    }
}

/// How a cluster identifier becomes an address: AWS uses the cluster endpoint from
/// `DescribeDBClusters`; the local cell maps the cluster's resource id to a local server.
/// Both look the identifier up at call time, so a rename is followed exactly as DNS would.
#[derive(Clone, Debug)]
pub enum EndpointResolver {
    Aws,
    Local(LocalEndpoints),
}

impl EndpointResolver {
    /// Local when [`LOCAL_ENDPOINTS_ENV`] is set, AWS otherwise.
    pub fn from_env() -> Result<Self, AwsError> {
        match std::env::var_os(LOCAL_ENDPOINTS_ENV) {
            Some(path) => Ok(Self::Local(LocalEndpoints::load(Path::new(&path))?)),
            None => Ok(Self::Aws),
        }
    }

    /// Resolves whichever cluster holds `identifier` now. A missing cluster is
    /// `ClusterNotAvailable` (during a rename the name is briefly unheld).
    pub async fn resolve(
        &self,
        rds: &aws_sdk_rds::Client,
        identifier: &str,
    ) -> Result<ClusterEndpoint, AwsError> {
        let context = format!("describing DB cluster {identifier}");
        if let Self::Local(local) = self {
            if local.is_held(identifier) {
                return Err(AwsError::new(
                    ErrorName::ClusterNotAvailable,
                    &context,
                    "its name does not lead to any cluster yet (held, as a rename that has not reached DNS)",
                ));
            }
        }
        let cluster = describe_cluster(rds, identifier, &context).await?;
        let missing = |field: &str| {
            AwsError::new(
                ErrorName::AwsError,
                &context,
                format!("response has no {field}"),
            )
        };
        let resource_id = cluster
            .db_cluster_resource_id()
            .ok_or_else(|| missing("DbClusterResourceId"))?;
        let (host, port) = match self {
            Self::Aws => {
                let host = cluster.endpoint().ok_or_else(|| missing("Endpoint"))?;
                let port = cluster.port().ok_or_else(|| missing("Port"))?;
                let port = u16::try_from(port).map_err(|_| missing("valid Port"))?;
                (host.to_owned(), port)
            }
            Self::Local(map) => map.address(resource_id).ok_or_else(|| {
                AwsError::new(
                    ErrorName::ConfigurationError,
                    &context,
                    format!("resource id {resource_id} is not in the local endpoint map"),
                )
            })?,
        };
        Ok(ClusterEndpoint {
            identifier: cluster
                .db_cluster_identifier()
                .unwrap_or(identifier)
                .to_owned(),
            resource_id: resource_id.to_owned(),
            status: cluster.status().unwrap_or_default().to_owned(),
            engine_version: cluster.engine_version().unwrap_or_default().to_owned(),
            host,
            port,
        })
    }

    /// The writer instance of whichever cluster holds `identifier` in the RDS API now, and
    /// the address of the instance's own endpoint. Unlike the cluster endpoint — a DNS
    /// name that follows a rename only after a delay, and may lead to the old cluster or
    /// nowhere meanwhile — an instance endpoint is not renamed with its cluster, so it
    /// reaches this writer at once. What an NLB target must be built from.
    pub async fn writer(
        &self,
        rds: &aws_sdk_rds::Client,
        identifier: &str,
    ) -> Result<WriterEndpoint, AwsError> {
        let context = format!("finding the writer instance of DB cluster {identifier}");
        let cluster = describe_cluster(rds, identifier, &context).await?;
        let resource_id = cluster
            .db_cluster_resource_id()
            .ok_or_else(|| {
                AwsError::new(
                    ErrorName::AwsError,
                    &context,
                    "response has no DbClusterResourceId",
                )
            })?
            .to_owned();
        match self {
            Self::Aws => {
                let instance = cluster
                    .db_cluster_members()
                    .iter()
                    .find(|m| m.is_cluster_writer() == Some(true))
                    .and_then(|m| m.db_instance_identifier())
                    .ok_or_else(|| {
                        AwsError::new(
                            ErrorName::ClusterNotAvailable,
                            &context,
                            "the cluster has no writer instance yet",
                        )
                    })?
                    .to_owned();
                let out = rds
                    .describe_db_instances()
                    .db_instance_identifier(&instance)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(&context, &e))?;
                let endpoint = out
                    .db_instances()
                    .first()
                    .and_then(|i| i.endpoint())
                    .ok_or_else(|| {
                        AwsError::new(
                            ErrorName::ClusterNotAvailable,
                            &context,
                            format!("writer instance {instance} has no endpoint yet"),
                        )
                    })?;
                let host = endpoint.address().unwrap_or_default().to_owned();
                let port = endpoint
                    .port()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| {
                        AwsError::new(
                            ErrorName::AwsError,
                            &context,
                            "the writer's endpoint has no valid port",
                        )
                    })?;
                Ok(WriterEndpoint {
                    cluster_resource_id: resource_id,
                    instance,
                    host,
                    port,
                })
            }
            // One server per local cluster, found by the cluster's resource id: what moto
            // keeps right across renames (its instance membership does not follow them).
            // A held name is not consulted: it is the cluster endpoint's DNS that lags.
            Self::Local(map) => {
                let (host, port) = map.address(&resource_id).ok_or_else(|| {
                    AwsError::new(
                        ErrorName::ConfigurationError,
                        &context,
                        format!("resource id {resource_id} is not in the local endpoint map"),
                    )
                })?;
                Ok(WriterEndpoint {
                    instance: format!("the server of {resource_id}"),
                    cluster_resource_id: resource_id,
                    host,
                    port,
                })
            }
        }
    }
}

/// `DescribeDBClusters` for one identifier; no cluster holding it is `ClusterNotAvailable`
/// (during a rename the name is briefly unheld).
async fn describe_cluster(
    rds: &aws_sdk_rds::Client,
    identifier: &str,
    context: &str,
) -> Result<aws_sdk_rds::types::DbCluster, AwsError> {
    let out = rds
        .describe_db_clusters()
        .db_cluster_identifier(identifier)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_db_cluster_not_found_fault())
            {
                AwsError::new(
                    ErrorName::ClusterNotAvailable,
                    context,
                    "no cluster holds this identifier",
                )
            } else {
                AwsError::from_sdk(context, &e)
            }
        })?;
    out.db_clusters().first().cloned().ok_or_else(|| {
        AwsError::new(
            ErrorName::ClusterNotAvailable,
            context,
            "no cluster holds this identifier",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_map_parses_host_and_port() {
        let map = LocalEndpoints::new(HashMap::from([
            ("cluster-ABC".to_owned(), "127.0.0.11:5432".to_owned()),
            ("cluster-BAD".to_owned(), "nowhere".to_owned()),
        ]));
        assert_eq!(
            map.address("cluster-ABC"),
            Some(("127.0.0.11".to_owned(), 5432))
        );
        assert_eq!(map.address("cluster-BAD"), None);
        assert_eq!(map.address("cluster-XYZ"), None);
    }

    #[test]
    fn a_held_name_is_held_for_every_copy_until_released() {
        let map = LocalEndpoints::new(HashMap::new());
        let copy = map.clone();
        map.hold("cell-a");
        assert!(copy.is_held("cell-a"), "clones share what is held");
        assert!(!copy.is_held("cell-b"));
        copy.release("cell-a");
        assert!(!map.is_held("cell-a"));
        assert_eq!(
            serde_json::to_string(&map).expect("json"),
            "{}",
            "what is held is not part of the map's file"
        );
    }

    #[test]
    fn local_map_is_plain_json_object() {
        let map: LocalEndpoints =
            serde_json::from_str(r#"{"cluster-A":"127.0.0.2:1"}"#).expect("json");
        assert_eq!(map.address("cluster-A"), Some(("127.0.0.2".to_owned(), 1)));
    }
}
