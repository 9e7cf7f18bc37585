use aws_config::{BehaviorVersion, Region};

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

    /// Clients from an explicit config (the local cell points one at its own moto).
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            rds: aws_sdk_rds::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            ecs: aws_sdk_ecs::Client::new(config),
            elbv2: aws_sdk_elasticloadbalancingv2::Client::new(config),
        }
    }
}
