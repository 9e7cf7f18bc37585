//! The run journal: what manual repair needs, kept durably in SSM under the cell's
//! journal path — not only in the execution's payload, which an operator invoking one
//! function by hand does not have. Values are JSON, never secrets (plain `String`
//! parameters), and at most 8 KB each (SSM's advanced tier; chosen per value by
//! intelligent tiering).
//!
//! Every entry is one Rust type implementing [`Entry`], with its key a constant of the
//! type: no operation reads another's entry as loose JSON or spells its key again. The
//! entries are: the run lock and the run's decision ([`crate::fence`]), the pause window
//! ([`crate::PauseWindow`]), the rename plan ([`crate::rename`]), the recorded desired
//! counts ([`crate::DesiredCounts`]) and each dropped downstream subscription
//! ([`crate::downstream`]). Each names the run that wrote it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_cell::CellDocument;
use switchyard_errors::ErrorName;

use crate::Error;

/// SSM's limit for one (advanced-tier) parameter value.
const MAX_VALUE_BYTES: usize = 8192;

/// A journal entry type with one key per cell.
pub trait Entry: Serialize + DeserializeOwned {
    /// Its key under the cell's journal path.
    const KEY: &'static str;
    /// What it is, for messages ("the rename plan").
    const WHAT: &'static str;
    /// One per cell, whichever leg (upgrade or switch-back) writes it — the run lock — rather
    /// than one per leg (`CellDocument::leg_journal_path`).
    const CELL_WIDE: bool = false;
}

/// Now, as RFC 3339 UTC: how journal entries and outputs state times.
pub fn now_rfc3339() -> String {
    aws_sdk_ssm::primitives::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_sdk_ssm::primitives::DateTimeFormat::DateTime)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// One cell's journal, as one leg (the upgrade, or its switch-back) sees it.
#[derive(Debug)]
pub struct Journal<'a> {
    ssm: &'a aws_sdk_ssm::Client,
    /// The cell's journal path: cell-wide entries.
    root: String,
    /// This leg's: every other entry.
    path: String,
}

impl<'a> Journal<'a> {
    pub fn new(ssm: &'a aws_sdk_ssm::Client, cell: &CellDocument) -> Self {
        Self {
            ssm,
            root: cell.journal_path(),
            path: cell.leg_journal_path(),
        }
    }

    /// The SSM parameter name of `key` in this leg.
    pub fn parameter(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    /// The SSM parameter holding entry type `T`.
    pub fn parameter_of<T: Entry>(&self) -> String {
        if T::CELL_WIDE {
            format!("{}{}", self.root, T::KEY)
        } else {
            self.parameter(T::KEY)
        }
    }

    /// The entry of type `T`, if any.
    pub async fn get<T: Entry>(&self) -> Result<Option<T>, Error> {
        self.read_parameter(&self.parameter_of::<T>()).await
    }

    /// Writes `entry`, replacing what was there.
    pub async fn put<T: Entry>(&self, entry: &T) -> Result<(), Error> {
        self.put_raw(&self.parameter_of::<T>(), entry, true)
            .await
            .map(|_| ())
    }

    /// Writes `entry` only if none exists yet, atomically (SSM refuses to overwrite):
    /// `false` when one already existed. The building block of the lock and the decision.
    pub async fn create<T: Entry>(&self, entry: &T) -> Result<bool, Error> {
        self.put_raw(&self.parameter_of::<T>(), entry, false).await
    }

    /// Removes the entry of type `T`: `false` when there was none.
    pub async fn remove<T: Entry>(&self) -> Result<bool, Error> {
        self.delete_parameter(&self.parameter_of::<T>()).await
    }

    /// Two entries in one call (one GetParameters: SSM's API rate is shared account-wide).
    pub async fn get_pair<A: Entry, B: Entry>(&self) -> Result<(Option<A>, Option<B>), Error> {
        let names = [self.parameter_of::<A>(), self.parameter_of::<B>()];
        let mut values = self.get_values(&names).await?;
        let b = values.pop().flatten();
        let a = values.pop().flatten();
        Ok((
            a.map(|v| decode(&names[0], &v)).transpose()?,
            b.map(|v| decode(&names[1], &v)).transpose()?,
        ))
    }

    /// The other leg's journal: the switch-back's for an upgrade, the upgrade's for a
    /// switch-back. Cell-wide entries are the same in both.
    pub fn other_leg(&self) -> Journal<'a> {
        let path = if self.path == self.root {
            format!("{}{}", self.root, switchyard_cell::BACK_JOURNAL)
        } else {
            self.root.clone()
        };
        Journal {
            ssm: self.ssm,
            root: self.root.clone(),
            path,
        }
    }

    /// Several entries, of this journal or another leg's, in one call: `names` are their
    /// parameters ([`Journal::parameter_of`]), at most 10; decode each with [`decode_entry`].
    pub async fn get_many(&self, names: &[String]) -> Result<Vec<Option<String>>, Error> {
        self.get_values(names).await
    }

    /// The raw values of up to 10 parameters (GetParameters' limit), in `names`' order.
    async fn get_values(&self, names: &[String]) -> Result<Vec<Option<String>>, Error> {
        let out = self
            .ssm
            .get_parameters()
            .set_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| {
                Error::aws(&format!("reading journal entries {}", names.join(", ")), &e)
            })?;
        Ok(names
            .iter()
            .map(|name| {
                out.parameters()
                    .iter()
                    .find(|p| p.name() == Some(name.as_str()))
                    .and_then(|p| p.value())
                    .map(str::to_owned)
            })
            .collect())
    }

    /// The entry under `key`, for entry types with a key per object (downstream
    /// subscriptions); their owner module builds the key.
    pub(crate) async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.read_parameter(&self.parameter(key)).await
    }

    async fn read_parameter<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        let out = match self.ssm.get_parameter().name(name).send().await {
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
        decode(name, value).map(Some)
    }

    pub(crate) async fn write<T: Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.put_raw(&self.parameter(key), value, true)
            .await
            .map(|_| ())
    }

    async fn delete_parameter(&self, name: &str) -> Result<bool, Error> {
        match self.ssm.delete_parameter().name(name).send().await {
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

    async fn put_raw<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        overwrite: bool,
    ) -> Result<bool, Error> {
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
            .name(name)
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

/// One value [`Journal::get_many`] returned, as entry `T`.
pub fn decode_entry<T: Entry>(name: &str, value: Option<String>) -> Result<Option<T>, Error> {
    value.map(|v| decode(name, &v)).transpose()
}

fn decode<T: DeserializeOwned>(name: &str, value: &str) -> Result<T, Error> {
    serde_json::from_str(value).map_err(|e| {
        Error::stop(
            ErrorName::PreconditionFailed,
            format!("journal entry {name} is not what switchyard wrote ({e}); inspect it, then fix or delete it"),
        )
    })
}
