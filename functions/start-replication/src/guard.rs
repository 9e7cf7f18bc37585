//! The DDL guard on blue (`switchyard_operation::guard`), installed with the switchover
//! marker table (see `marker`), so the marker's DDL is ours too.

use switchyard_operation::guard;
use switchyard_operation::Error;
use tokio_postgres::Client;

pub(crate) use switchyard_operation::guard::own_ddl;

/// Installs or repairs the guard, then the marker table; false when both were already in
/// place (then nothing is written).
pub(crate) async fn install(blue: &mut Client) -> Result<bool, Error> {
    // The guard first: the marker's DDL then vouches to it.
    let guard = guard::install(blue).await?;
    if marker_present(blue).await? {
        return Ok(guard);
    }
    own_ddl(
        blue,
        "create the switchover marker table",
        crate::marker::CREATE_TABLE,
    )
    .await?;
    Ok(true)
}

pub(crate) async fn in_place(blue: &Client) -> Result<bool, Error> {
    Ok(guard::in_place(blue).await? && marker_present(blue).await?)
}

async fn marker_present(blue: &Client) -> Result<bool, Error> {
    Ok(blue
        .query_one(
            "SELECT pg_catalog.to_regclass('switchyard.switchover_marker') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| Error::query("looking for switchyard.switchover_marker", e))?
        .get(0))
}
