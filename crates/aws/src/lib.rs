//! AWS access: clients built once from the standard config chain (so `AWS_ENDPOINT_URL`
//! points them at moto locally), SSM SecureString reads, and cluster endpoint resolution.

mod clients;
mod ecs;
mod endpoints;
mod error;
mod secrets;

pub use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
pub use clients::{retry_config, AwsClients, INITIAL_BACKOFF, MAX_ATTEMPTS, MAX_BACKOFF};
pub use ecs::{live_tasks, running_tasks, service_group, LiveTask, ServiceTask};
pub use endpoints::{
    ClusterEndpoint, EndpointResolver, LocalEndpoints, WriterEndpoint, LOCAL_ENDPOINTS_ENV,
};
pub use error::AwsError;
pub use secrets::{
    read_credentials, read_credentials_batch, read_secure_string, DbCredentials, GET_PARAMETERS_MAX,
};
