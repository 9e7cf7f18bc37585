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

/// Local stand-in for Aurora's endpoints: what a name leads to and where each writer is.
///
/// `names` maps a cluster identifier to the address of its emulated endpoint DNS name (in
/// the local cell, a forwarder that follows a rename only as late as Aurora's DNS does, and
/// may lead to the old cluster or nowhere meanwhile); `instances` maps a cluster's
/// `DbClusterResourceId` to its writer instance's own address, which never lags. An
/// operation dialling `names` meets every stale name AWS would show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalEndpoints {
    /// Cluster identifier → `host:port` its endpoint name leads to.
    pub names: HashMap<String, String>,
    /// `DbClusterResourceId` → `host:port` of the cluster's writer instance.
    pub instances: HashMap<String, String>,
}

impl LocalEndpoints {
    pub fn load(path: &Path) -> Result<Self, AwsError> {
        let context = format!("loading local endpoint map {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| AwsError::new(ErrorName::ConfigurationError, &context, e.to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| AwsError::new(ErrorName::ConfigurationError, &context, e.to_string()))
    }

    fn name(&self, identifier: &str) -> Option<(String, u16)> {
        split_address(self.names.get(identifier)?)
    }

    fn instance(&self, resource_id: &str) -> Option<(String, u16)> {
        split_address(self.instances.get(resource_id)?)
    }
}

fn split_address(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
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

    /// Which cluster holds `identifier` in the RDS API now, and the address of the
    /// identifier's endpoint name. The two can disagree: after a rename the name may lead
    /// to the old cluster, or nowhere, for minutes — a connection made through it must
    /// check which server it reached (`Deps::connect_identifier`). A missing cluster is
    /// `ClusterNotAvailable` (during a rename the name is briefly unheld).
    pub async fn resolve(
        &self,
        rds: &aws_sdk_rds::Client,
        identifier: &str,
    ) -> Result<ClusterEndpoint, AwsError> {
        let context = format!("describing DB cluster {identifier}");
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
            // The name, not the server API says holds it: like DNS, it may lag a rename.
            Self::Local(map) => map.name(identifier).ok_or_else(|| {
                AwsError::new(
                    ErrorName::ConfigurationError,
                    &context,
                    format!("identifier {identifier} has no name in the local endpoint map"),
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
            // The emulated names are not consulted: it is the cluster endpoint's DNS that lags.
            Self::Local(map) => {
                let (host, port) = map.instance(&resource_id).ok_or_else(|| {
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
    fn local_map_parses_names_and_instances() {
        let map: LocalEndpoints = serde_json::from_str(
            r#"{"names":{"cell-a":"127.0.0.1:7001","odd":"nowhere"},"instances":{"cluster-ABC":"127.0.0.11:5432"}}"#,
        )
        .expect("json");
        assert_eq!(map.name("cell-a"), Some(("127.0.0.1".to_owned(), 7001)));
        assert_eq!(map.name("odd"), None);
        assert_eq!(map.name("cell-b"), None);
        assert_eq!(
            map.instance("cluster-ABC"),
            Some(("127.0.0.11".to_owned(), 5432))
        );
        assert_eq!(
            map.instance("cell-a"),
            None,
            "names and instances are apart"
        );
    }

    #[test]
    fn the_old_resource_keyed_map_is_refused() {
        let old = serde_json::from_str::<LocalEndpoints>(r#"{"cluster-A":"127.0.0.2:1"}"#);
        assert!(old.is_err(), "a map without names would skip the name lag");
    }
}
