use std::path::PathBuf;

use switchyard_errors::{ErrorName, Failure};

/// Path of the RDS CA bundle (PEM). Required for AWS cells; absent locally.
pub const CA_BUNDLE_ENV: &str = "SWITCHYARD_CA_BUNDLE";
/// Path of `pg_dump` (a Lambda layer puts it under /opt/bin).
pub const PG_DUMP_ENV: &str = "SWITCHYARD_PG_DUMP";

/// Deployment facts: where things are on this host, read from the environment once at
/// start. Run facts come from the cell document instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub ca_bundle: Option<PathBuf>,
    pub pg_dump: PathBuf,
}

impl Deployment {
    pub fn from_env() -> Result<Self, Failure> {
        Self::from_values(
            std::env::var_os(CA_BUNDLE_ENV).map(PathBuf::from),
            std::env::var_os(PG_DUMP_ENV).map(PathBuf::from),
        )
    }

    /// Fails fast on paths that are set but unusable, so a bad deployment is found at
    /// cold start, not halfway through a run.
    pub fn from_values(
        ca_bundle: Option<PathBuf>,
        pg_dump: Option<PathBuf>,
    ) -> Result<Self, Failure> {
        if let Some(path) = &ca_bundle {
            if !path.is_file() {
                return Err(Failure::new(
                    ErrorName::ConfigurationError,
                    format!(
                        "{CA_BUNDLE_ENV}={} is not a file: deploy the RDS CA bundle there",
                        path.display()
                    ),
                ));
            }
        }
        let pg_dump = pg_dump.unwrap_or_else(|| PathBuf::from("/opt/bin/pg_dump"));
        Ok(Self { ca_bundle, pg_dump })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_bundle_is_a_configuration_error() {
        let err = Deployment::from_values(Some(PathBuf::from("/nonexistent/rds.pem")), None)
            .expect_err("missing");
        assert_eq!(err.name(), ErrorName::ConfigurationError);
        assert!(err.message().contains("/nonexistent/rds.pem"));
    }

    #[test]
    fn pg_dump_defaults_to_the_layer_path() {
        let d = Deployment::from_values(None, None).expect("defaults");
        assert_eq!(d.pg_dump, PathBuf::from("/opt/bin/pg_dump"));
        assert_eq!(d.ca_bundle, None);
    }
}
