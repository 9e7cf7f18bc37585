//! The error catalogue: stable ASL error names, retry classification, Lambda diagnostics.
//!
//! Every Lambda returns an error whose `Diagnostic::error_type` is one of the names in
//! [`ErrorName`]; the state machines match on those names, so they are an API.

mod catalogue;
mod failure;
mod sqlstate;
mod throttling;

pub use catalogue::{ErrorName, Retry, UnknownErrorName};
pub use failure::{Catalogued, Failure};
pub use sqlstate::is_transient_sqlstate;
pub use throttling::is_aws_throttling;

/// Paths used by [`impl_diagnostic!`] so callers need no direct `lambda_runtime` import.
#[doc(hidden)]
pub mod __macro_support {
    pub use lambda_runtime::Diagnostic;
}
