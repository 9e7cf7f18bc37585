//! The run journal: what manual repair needs, kept durably in SSM under the cell's
//! journal path — not only in the execution's payload, which an operator invoking one
//! function by hand does not have. Values are JSON, never secrets (plain `String`
//! parameters), and at most 8 KB each (SSM's advanced tier; chosen per value by
//! intelligent tiering).

use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;

use crate::Error;

/// SSM's limit for one (advanced-tier) parameter value.
const MAX_VALUE_BYTES: usize = 8192;

/// The journal key of the run lock: one switchover per cell at a time.
pub const LOCK_KEY: &str = "lock";

/// Who holds the cell's run lock, and since when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct RunLock {
    pub run_id: String,
    /// RFC 3339, UTC.
    pub acquired_at: String,
}

/// Now, as RFC 3339 UTC: how journal entries and outputs state times.
pub fn now_rfc3339() -> String {
    aws_sdk_ssm::primitives::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_sdk_ssm::primitives::DateTimeFormat::DateTime)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// One cell's journal.
#[derive(Debug)]
pub struct Journal<'a> {
    ssm: &'a aws_sdk_ssm::Client,
    path: String,
}

impl<'a> Journal<'a> {
    pub fn new(ssm: &'a aws_sdk_ssm::Client, cell: &CellDocument) -> Self {
        Self {
            ssm,
            path: cell.journal_path(),
        }
    }

    /// The SSM parameter name of `key`.
    pub fn parameter(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    /// The entry under `key`, if any.
    pub async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let name = self.parameter(key);
        let out = match self.ssm.get_parameter().name(&name).send().await {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::aws(&format!("reading journal entry {name}"), &e)),
        };
        let value = out.parameter().and_then(|p| p.value()).unwrap_or_default();
        serde_json::from_str(value).map(Some).map_err(|e| {
            Error::stop(
                ErrorName::PreconditionFailed,
                format!("journal entry {name} is not what switchyard wrote ({e}); inspect it, then fix or delete it"),
            )
        })
    }

    /// Writes `key`, replacing what was there.
    pub async fn write<T: Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.put(key, value, true).await.map(|_| ())
    }

    /// Writes `key` only if it does not exist yet, atomically (SSM refuses to overwrite):
    /// `false` when it already existed. The building block of the run lock.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<bool, Error> {
        self.put(key, value, false).await
    }

    /// Removes `key`: `false` when there was nothing to remove.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        let name = self.parameter(key);
        match self.ssm.delete_parameter().name(&name).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(&format!("deleting journal entry {name}"), &e)),
        }
    }

    async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        overwrite: bool,
    ) -> Result<bool, Error> {
        let name = self.parameter(key);
        let json = serde_json::to_string(value).map_err(|e| {
            Error::stop(
                ErrorName::InvalidInput,
                format!("journal entry {name} cannot be encoded: {e}"),
            )
        })?;
        if json.len() > MAX_VALUE_BYTES {
            return Err(Error::stop(
                ErrorName::ConfigurationError,
                format!(
                    "journal entry {name} is {} bytes, above SSM's {MAX_VALUE_BYTES}",
                    json.len()
                ),
            ));
        }
        let result = self
            .ssm
            .put_parameter()
            .name(&name)
            .value(json)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .tier(aws_sdk_ssm::types::ParameterTier::IntelligentTiering)
            .overwrite(overwrite)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if !overwrite
                    && e.as_service_error()
                        .is_some_and(|s| s.is_parameter_already_exists()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws(&format!("writing journal entry {name}"), &e)),
        }
    }
}
