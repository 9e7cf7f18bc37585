use serde::Deserialize;
use switchyard_errors::ErrorName;
use switchyard_telemetry::Secret;

use crate::AwsError;

/// Reads one SecureString parameter, decrypted. The value only ever lives in a [`Secret`].
pub async fn read_secure_string(ssm: &aws_sdk_ssm::Client, name: &str) -> Result<Secret, AwsError> {
    let context = format!("reading SSM parameter {name}");
    let out = ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found())
            {
                AwsError::new(
                    ErrorName::SecretUnavailable,
                    &context,
                    "parameter not found: create it or fix the cell document",
                )
            } else {
                AwsError::from_sdk(&context, &e)
            }
        })?;
    let value = out.parameter().and_then(|p| p.value()).ok_or_else(|| {
        AwsError::new(
            ErrorName::SecretUnavailable,
            &context,
            "parameter has no value",
        )
    })?;
    Ok(Secret::new(value.to_owned()))
}

/// A database login kept in one SSM SecureString as `{"username": "...", "password": "..."}`.
#[derive(Clone, Debug, Deserialize)]
pub struct DbCredentials {
    pub username: String,
    pub password: Secret,
}

impl DbCredentials {
    /// Parses the parameter's JSON. The serde message is dropped on purpose: it can quote
    /// the input, and the input holds the password.
    pub fn parse(parameter: &str, value: &Secret) -> Result<Self, AwsError> {
        serde_json::from_str(value.expose()).map_err(|e| {
            AwsError::new(
                ErrorName::SecretUnavailable,
                format!("reading SSM parameter {parameter}"),
                format!(
                    "value is not a JSON object with string fields username and password (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}

/// Reads and parses a [`DbCredentials`] parameter.
pub async fn read_credentials(
    ssm: &aws_sdk_ssm::Client,
    name: &str,
) -> Result<DbCredentials, AwsError> {
    let mut read = read_credentials_batch(ssm, &[name]).await?;
    Ok(read.remove(0).1)
}

/// The most names one `GetParameters` call takes.
pub const GET_PARAMETERS_MAX: usize = 10;

/// Reads and parses several [`DbCredentials`] parameters, [`GET_PARAMETERS_MAX`] names a
/// call: SSM's rate is per account, and a fleet switching many cells at once shares it.
/// The answers keep the order of `names`; a name SSM does not have is `SecretUnavailable`.
pub async fn read_credentials_batch(
    ssm: &aws_sdk_ssm::Client,
    names: &[&str],
) -> Result<Vec<(String, DbCredentials)>, AwsError> {
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(GET_PARAMETERS_MAX) {
        let context = format!("reading SSM parameters {}", chunk.join(", "));
        let answer = ssm
            .get_parameters()
            .set_names(Some(chunk.iter().map(|n| (*n).to_owned()).collect()))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(&context, &e))?;
        if !answer.invalid_parameters().is_empty() {
            return Err(AwsError::new(
                ErrorName::SecretUnavailable,
                format!(
                    "reading SSM parameter {}",
                    answer.invalid_parameters().join(", ")
                ),
                "parameter not found: create it or fix the cell document",
            ));
        }
        for name in chunk {
            let value = answer
                .parameters()
                .iter()
                .find(|p| p.name() == Some(*name))
                .and_then(|p| p.value())
                .ok_or_else(|| {
                    AwsError::new(
                        ErrorName::SecretUnavailable,
                        format!("reading SSM parameter {name}"),
                        "parameter has no value",
                    )
                })?;
            let credentials = DbCredentials::parse(name, &Secret::new(value.to_owned()))?;
            out.push(((*name).to_owned(), credentials));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_and_keep_the_password_secret() {
        let raw = Secret::new(r#"{"username":"app_writer","password":"p@ss!'w:/rd"}"#.to_owned());
        let creds = DbCredentials::parse("/x/app", &raw).expect("valid");
        assert_eq!(creds.username, "app_writer");
        assert_eq!(creds.password.expose(), "p@ss!'w:/rd");
        assert!(!format!("{creds:?}").contains("p@ss"));
    }

    #[test]
    fn malformed_credentials_do_not_echo_the_value() {
        let raw = Secret::new(r#"{"username":"app","password":12345678}"#.to_owned());
        let err = DbCredentials::parse("/x/app", &raw).expect_err("password is not a string");
        let text = err.to_string();
        assert!(text.contains("/x/app"), "{text}");
        assert!(!text.contains("12345678"), "{text}");
        assert_eq!(err.name(), ErrorName::SecretUnavailable);
    }
}
