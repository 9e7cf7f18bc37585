//! A catalogued error as the state machine sees it, and the bridge to `lambda_runtime`.

use std::fmt;

use lambda_runtime::Diagnostic;

use crate::ErrorName;

/// A catalogued error: the ASL name plus the message an operator reads in the execution
/// history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    name: ErrorName,
    message: String,
}

impl Failure {
    /// A failure named `name`.
    ///
    /// The message lands in the Step Functions execution history, readable by anyone who
    /// can see the execution: it must say what to do next and must never contain a
    /// password, token or DSN.
    pub fn new(name: ErrorName, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }

    /// The ASL error name.
    pub fn name(&self) -> ErrorName {
        self.name
    }

    /// The operator-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Failure {}

impl From<Failure> for Diagnostic {
    fn from(failure: Failure) -> Self {
        Diagnostic {
            error_type: failure.name.as_str().to_owned(),
            error_message: failure.message,
        }
    }
}

/// An error type whose every value maps to one catalogued name.
///
/// Each function's error enum implements this, then calls [`impl_diagnostic!`](crate::impl_diagnostic)
/// so the Lambda runtime reports the catalogued name instead of the Rust type name.
pub trait Catalogued: std::error::Error {
    /// The ASL error name for this value.
    fn error_name(&self) -> ErrorName;

    /// This error as ASL will see it; the message is the `Display` text.
    fn to_failure(&self) -> Failure {
        Failure::new(self.error_name(), self.to_string())
    }
}

/// Implements `From<$ty> for lambda_runtime::Diagnostic` through [`Catalogued::to_failure`].
///
/// A blanket `impl<E: Catalogued> From<E> for Diagnostic` is what we want, but the orphan
/// rules forbid it here (both `From` and `Diagnostic` are foreign), so each error type
/// opts in from its own crate, where the type is local.
#[macro_export]
macro_rules! impl_diagnostic {
    ($ty:ty) => {
        impl ::core::convert::From<$ty> for $crate::__macro_support::Diagnostic {
            fn from(error: $ty) -> Self {
                $crate::Catalogued::to_failure(&error).into()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum ProbeError {
        #[error("slot lag is {0} bytes, above the gate")]
        Lag(u64),
        #[error("payload field {0} is missing")]
        Input(&'static str),
    }

    impl Catalogued for ProbeError {
        fn error_name(&self) -> ErrorName {
            match self {
                Self::Lag(_) => ErrorName::LagNotZero,
                Self::Input(_) => ErrorName::InvalidInput,
            }
        }
    }

    crate::impl_diagnostic!(ProbeError);

    #[test]
    fn every_name_round_trips_through_a_diagnostic() {
        for &name in ErrorName::ALL {
            let diagnostic = Diagnostic::from(Failure::new(name, "m"));
            assert_eq!(diagnostic.error_type, name.as_str());
            assert_eq!(diagnostic.error_message, "m");
            assert_eq!(diagnostic.error_type.parse::<ErrorName>(), Ok(name));
        }
    }

    #[test]
    fn macro_sets_the_catalogued_name_and_display_message() {
        let diagnostic = Diagnostic::from(ProbeError::Lag(42));
        assert_eq!(diagnostic.error_type, "LagNotZero");
        assert_eq!(
            diagnostic.error_message,
            "slot lag is 42 bytes, above the gate"
        );

        let diagnostic = Diagnostic::from(ProbeError::Input("cell_id"));
        assert_eq!(diagnostic.error_type, "InvalidInput");
        assert_eq!(diagnostic.error_message, "payload field cell_id is missing");
    }

    #[test]
    fn failure_displays_name_then_message() {
        let failure = Failure::new(ErrorName::LockHeld, "run abc holds the lock");
        assert_eq!(failure.to_string(), "LockHeld: run abc holds the lock");
        assert_eq!(failure.name(), ErrorName::LockHeld);
        assert_eq!(failure.message(), "run abc holds the lock");
    }
}
