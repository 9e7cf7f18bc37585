use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use switchyard_errors::{is_aws_throttling, Catalogued, ErrorName};

/// An AWS call that failed, classified once: throttling is retried by the state machine,
/// everything else stops the run. Messages name the call and the resource, never a value
/// read from SSM.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {detail}")]
pub struct AwsError {
    name: ErrorName,
    context: String,
    detail: String,
}

impl AwsError {
    pub(crate) fn new(
        name: ErrorName,
        context: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            name,
            context: context.into(),
            detail: detail.into(),
        }
    }

    /// Classifies an SDK error: throttling codes and transport failures are not-yet;
    /// service errors are stops unless the caller maps a specific code first.
    pub fn from_sdk<E, R>(context: impl Into<String>, err: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().unwrap_or_default();
        let name = match err {
            _ if is_aws_throttling(code) => ErrorName::AwsThrottled,
            // The request never got an answer: the next attempt may well succeed.
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorName::AwsUnavailable,
            _ => ErrorName::AwsError,
        };
        let detail = match (err.code(), err.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => describe_transport(err),
        };
        Self::new(name, context, detail)
    }

    /// The AWS error code, when the service returned one.
    pub fn name(&self) -> ErrorName {
        self.name
    }
}

fn describe_transport<E, R>(err: &SdkError<E, R>) -> String {
    match err {
        SdkError::TimeoutError(_) => "request timed out".to_owned(),
        SdkError::DispatchFailure(_) => {
            "request could not be sent (endpoint unreachable?)".to_owned()
        }
        SdkError::ConstructionFailure(_) => "request could not be built".to_owned(),
        SdkError::ResponseError(_) => "response could not be read".to_owned(),
        _ => "service error without code".to_owned(),
    }
}

impl Catalogued for AwsError {
    fn error_name(&self) -> ErrorName {
        self.name
    }
}
