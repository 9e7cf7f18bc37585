//! `recreate-downstream-subscriptions`: the downstream databases subscribe again, to
//! whatever cluster now carries the cell's identifier (green after the rename, blue after
//! an abort), through the same NLB address they used before.
//!
//! For each subscription `drop-downstream-subscriptions` journaled: its publications
//! must exist on the current primary (copy-schema creates them, not this step); then it
//! is created on the downstream from the journaled definition, with the password read
//! from `publisher_credentials_parameter` now, and `copy_data = false` — the downstream
//! already holds everything up to the freeze. Finally the apply worker must be running.
//! An existing subscription is left as it is.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_cell::{CellDocument, Downstream};
use switchyard_errors::ErrorName;
use switchyard_operation::downstream::{self, Journaled};
use switchyard_operation::{Deps, Error, OperationInput, Side};
use switchyard_postgres::quote::{conninfo_value, ident, literal};
use switchyard_telemetry::Secret;
use tokio_postgres::Client;

/// How long the new subscription's apply worker may take to start.
const STREAMING_WAIT: Duration = Duration::from_secs(30);

/// ```json
/// {"cell": { …the cell document… }}
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub cell: CellDocument,
}

impl OperationInput for Input {
    fn cell(&self) -> &CellDocument {
        &self.cell
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Output {
    pub subscriptions: Vec<RecreatedSubscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct RecreatedSubscription {
    /// The downstream's name in the cell document.
    pub downstream: String,
    pub name: String,
    /// `false`: it already existed and was left alone.
    pub created: bool,
    /// Whether its apply worker is running (always `false` for a disabled subscription).
    pub streaming: bool,
}

#[tracing::instrument(skip_all, fields(cell = %input.cell.cell_id))]
pub async fn run(input: Input, deps: &Deps) -> Result<Output, Error> {
    let cell = &input.cell;
    let journal = deps.journal(cell);
    let mut subscriptions = Vec::new();
    for downstream in &cell.downstream {
        let client = Box::pin(downstream::connect(cell, downstream, deps)).await?;
        for name in &downstream.subscriptions {
            let entry = journal
                .read::<Journaled>(&downstream::journal_key(downstream, name))
                .await?;
            let created = if downstream::exists(&client, name).await? {
                tracing::info!(downstream = %downstream.name, subscription = %name, "already exists");
                false
            } else {
                let Some(entry) = &entry else {
                    return Err(Error::stop(
                        ErrorName::PreconditionFailed,
                        format!("subscription {name} of downstream {} neither exists nor is journaled: run drop-downstream-subscriptions first, or recreate it by hand", downstream.name),
                    ));
                };
                Box::pin(create(cell, deps, downstream, &client, name, entry)).await?;
                true
            };
            let enabled = entry.as_ref().is_none_or(|e| e.enabled);
            let streaming = enabled && wait_streaming(&client, name).await?;
            if enabled && !streaming {
                return Err(Error::stop(
                    ErrorName::TargetNotHealthy,
                    format!("subscription {name} on downstream {} has no running apply worker after {}s: read the downstream's log (publication, slot, NLB target), then retry", downstream.name, STREAMING_WAIT.as_secs()),
                ));
            }
            subscriptions.push(RecreatedSubscription {
                downstream: downstream.name.clone(),
                name: name.clone(),
                created,
                streaming,
            });
        }
    }
    Ok(Output { subscriptions })
}

async fn create(
    cell: &CellDocument,
    deps: &Deps,
    downstream: &Downstream,
    client: &Client,
    name: &str,
    entry: &Journaled,
) -> Result<(), Error> {
    let target = &entry.connection;
    let primary = deps.connect(cell, Side::Blue, &target.dbname).await?;
    require_publications(&primary, &target.dbname, &entry.publications).await?;

    let login = switchyard_aws::read_credentials(
        &deps.aws.ssm,
        &downstream.publisher_credentials_parameter,
    )
    .await?;
    let mut parts = vec![
        format!("host={}", conninfo_value(&target.host)),
        format!("port={}", conninfo_value(&target.port.to_string())),
        format!("dbname={}", conninfo_value(&target.dbname)),
        format!("user={}", conninfo_value(&target.user)),
        format!("password={}", conninfo_value(login.password.expose())),
    ];
    if let Some(mode) = &target.sslmode {
        parts.push(format!("sslmode={}", conninfo_value(mode)));
    }
    if let Some(root) = &target.sslrootcert {
        parts.push(format!("sslrootcert={}", conninfo_value(root)));
    }
    let conninfo = Secret::new(parts.join(" "));
    let publications: Vec<String> = entry.publications.iter().map(|p| ident(p)).collect();
    let mut options = vec![
        "copy_data = false".to_owned(),
        format!("slot_name = {}", literal(&entry.slot_name)),
        format!("binary = {}", entry.binary),
        format!("streaming = {}", literal(&entry.streaming)),
        format!("enabled = {}", entry.enabled),
    ];
    if let Some(origin) = &entry.origin {
        options.push(format!("origin = {}", literal(origin)));
    }
    // Sent alone (simple protocol): CREATE SUBSCRIPTION cannot run in a transaction block.
    let sql = format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH ({})",
        ident(name),
        literal(conninfo.expose()),
        publications.join(", "),
        options.join(", "),
    );
    client.batch_execute(&sql).await.map_err(|e| {
        // The statement holds the password: only the SQLSTATE and the server's message
        // may surface, and not even that if the server quoted the password back.
        let leaks = e.as_db_error().is_some_and(|db| {
            !login.password.expose().is_empty() && db.message().contains(login.password.expose())
        });
        if leaks {
            Error::stop(
                ErrorName::DatabaseError,
                format!("creating subscription {name} on downstream {} failed; the server's message quoted the connection string and is withheld: see the downstream's log", downstream.name),
            )
        } else {
            Error::query(format!("CREATE SUBSCRIPTION {name} on downstream {}", downstream.name), e)
        }
    })?;
    tracing::info!(downstream = %downstream.name, subscription = %name, "downstream subscription created");
    Ok(())
}

/// Every publication must already exist on the current primary.
async fn require_publications(
    primary: &Client,
    dbname: &str,
    publications: &[String],
) -> Result<(), Error> {
    let rows = primary
        .query(
            "SELECT p FROM unnest($1::text[]) p WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = p)",
            &[&publications],
        )
        .await
        .map_err(|e| Error::query("looking up publications on the primary", e))?;
    let missing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::stop(
        ErrorName::PreconditionFailed,
        format!(
            "publication(s) {} missing in database {dbname} of the current primary: copy-schema should have created it; create it there, then retry",
            missing.join(", ")
        ),
    ))
}

/// Whether the subscription's apply worker runs within [`STREAMING_WAIT`].
async fn wait_streaming(client: &Client, name: &str) -> Result<bool, Error> {
    let deadline = tokio::time::Instant::now() + STREAMING_WAIT;
    loop {
        let running: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL AND pid IS NOT NULL)",
                &[&name],
            )
            .await
            .map_err(|e| Error::query(format!("reading pg_stat_subscription for {name}"), e))?
            .get(0);
        if running || tokio::time::Instant::now() >= deadline {
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_examples_round_trip() {
        switchyard_operation::assert_examples_round_trip::<super::Input, super::Output>(
            include_str!("../payloads/input.json"),
            include_str!("../payloads/output.json"),
        );
    }
}
