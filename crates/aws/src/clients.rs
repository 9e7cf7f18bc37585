use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};

/// Attempts per AWS call, the first included. Throttling (SSM's per-account rate, RDS's
/// describe limits) is answered with exponential backoff and full jitter from
/// [`INITIAL_BACKOFF`] up to [`MAX_BACKOFF`]: about 30 s in all before `AwsThrottled`
/// reaches the state machine, whose Retry backs off further.
pub const MAX_ATTEMPTS: u32 = 6;
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// The retry policy of every client: the SDK's standard mode (throttling and transient
/// errors retried, with a client-side retry budget) with more attempts than its default 3.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// Every AWS client an operation may need, built once per process from one `SdkConfig`.
///
/// The standard chain reads credentials, region and `AWS_ENDPOINT_URL`, so the same code
/// talks to AWS in Lambda and to moto in the local cell.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub rds: aws_sdk_rds::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub elbv2: aws_sdk_elasticloadbalancingv2::Client,
}

impl AwsClients {
    /// Loads the standard config chain; `region` (from the cell document) wins over the
    /// environment's because a run must never act on another region's cell.
    pub async fn load(region: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        Self::from_config(&loader.load().await)
    }

    /// Clients from an explicit config (the local cell points one at its own moto), each
    /// with [`retry_config`] whatever the config says.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let config = config.to_builder().retry_config(retry_config()).build();
        Self {
            rds: aws_sdk_rds::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            ecs: aws_sdk_ecs::Client::new(&config),
            elbv2: aws_sdk_elasticloadbalancingv2::Client::new(&config),
        }
    }
}
