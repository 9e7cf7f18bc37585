//! A password or token that cannot end up in a log line or an execution payload.

use std::fmt;

use serde::Deserialize;

const REDACTED: &str = "[redacted]";

/// A password or token. `Debug` and `Display` print `[redacted]`, and there is no
/// `Serialize`, so it cannot reach a log line or a Step Functions payload by accident.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from SSM or the environment.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one call that needs it (a connection config, a PgBouncer
    /// auth line). Named so that every read is easy to find with grep.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Characters that would need escaping in a DSN, so a leak through any encoding shows.
    pub(crate) const VALUE: &str = "hunter2@!':/";

    /// Fails if `output` holds the alphanumeric run of [`VALUE`] or any adjacent pair of its
    /// punctuation, so a leak through any escaping or truncation shows.
    pub(crate) fn assert_no_part_of_value(output: &str) {
        for fragment in ["hunter", "2@", "@!", "!'", "':", ":/"] {
            assert!(
                !output.contains(fragment),
                "{output:?} contains {fragment:?}"
            );
        }
    }

    #[test]
    fn formatting_hides_the_value() {
        let secret = Secret::new(VALUE);
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_no_part_of_value(&format!("{secret:?}"));
        assert_no_part_of_value(&format!("{secret:#?}"));
        assert_no_part_of_value(&format!("{secret}"));
    }

    #[test]
    fn a_struct_deriving_debug_does_not_leak_it() {
        #[derive(Debug)]
        #[allow(dead_code)] // the fields are read only through Debug
        struct Login {
            user: &'static str,
            password: Secret,
        }
        let login = Login {
            user: "app",
            password: Secret::new(VALUE),
        };
        let printed = format!("{login:?}");
        assert!(printed.contains("app"), "{printed}");
        assert_no_part_of_value(&printed);
        assert_no_part_of_value(&format!("{login:#?}"));
    }

    #[test]
    fn deserializes_from_a_string_and_exposes_it() {
        let secret: Secret = serde_json::from_str(r#""hunter2@!':/""#).expect("a JSON string");
        assert_eq!(secret.expose(), VALUE);
        assert_eq!(secret.clone().expose(), VALUE);
        assert!(serde_json::from_str::<Secret>("42").is_err());
    }
}
