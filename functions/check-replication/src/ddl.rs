//! What the DDL guard `start-replication` installed on blue has journaled.

use switchyard_errors::ErrorName;
use switchyard_operation::guard::{journaled, Journaled, Watched};
use switchyard_operation::Error;
use tokio_postgres::Client;

/// The DDL journaled on blue's `database` that was not switchyard's own, as one message
/// (empty when there is none). `PreconditionFailed` when the guard is not in place.
pub(crate) async fn recorded(blue: &Client, database: &str) -> Result<String, Error> {
    match journaled(blue, database, Watched::Blue).await? {
        Journaled::Clean => Ok(String::new()),
        Journaled::Unvouched(message) => Ok(message),
        Journaled::Unguarded => Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("the DDL guard is missing or disabled on blue (database {}), so DDL could go unseen; run start-replication", switchyard_postgres::quote::name(database)),
        )),
    }
}
