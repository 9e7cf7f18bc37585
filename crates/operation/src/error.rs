use switchyard_aws::AwsError;
use switchyard_cell::CellError;
use switchyard_errors::{Catalogued, ErrorName, Failure};
use switchyard_postgres::PgError;

/// The failures every operation shares; an operation adds its own stops as [`Failure`]s
/// named from the catalogue (`Error::stop`). Messages hold no secrets: none of the
/// wrapped errors carries one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] PgError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Input(#[from] CellError),
    #[error(transparent)]
    Failed(#[from] Failure),
}

impl Error {
    /// An operation's own catalogued failure, e.g. `Error::stop(ErrorName::PreflightFailed, report)`.
    pub fn stop(name: ErrorName, message: impl Into<String>) -> Self {
        Self::Failed(Failure::new(name, message))
    }

    /// An AWS call failed: classified once (throttling and transport are not-yet).
    pub fn aws<E, R>(context: &str, error: &switchyard_aws::SdkError<E, R>) -> Self
    where
        E: switchyard_aws::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        Self::Aws(AwsError::from_sdk(context, error))
    }

    /// A query failed: classified by SQLSTATE like every database error.
    pub fn query(what: impl std::fmt::Display, error: tokio_postgres::Error) -> Self {
        Self::Database(PgError::query(what, error))
    }
}

impl Catalogued for Error {
    fn error_name(&self) -> ErrorName {
        match self {
            Self::Database(e) => e.error_name(),
            Self::Aws(e) => e.error_name(),
            Self::Input(e) => e.error_name(),
            Self::Failed(f) => f.name(),
        }
    }

    /// A stop keeps its own message; wrapped errors use their Display.
    fn to_failure(&self) -> Failure {
        match self {
            Self::Failed(f) => Failure::new(f.name(), f.message()),
            other => Failure::new(other.error_name(), other.to_string()),
        }
    }
}

switchyard_errors::impl_diagnostic!(Error);
