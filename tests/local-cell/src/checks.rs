//! What a switchover's guarantees look like on the cell's servers: the checks the flows,
//! the state machine tests and the rehearsal share.

use std::time::{Duration, Instant};

use switchyard_postgres::ConnectOptions;

use crate::{audit_keys, CellError, KeyAudit, LocalCell, PgServer};

/// The downstream's tables (the search publication's), for [`fingerprint`].
const DOWNSTREAM_TABLES: [&str; 2] = ["accounts", "payments"];

impl LocalCell {
    /// `server_version_num` of the server PgBouncer's pool reaches now, as `app_writer`
    /// sees it.
    pub async fn version_through_pgbouncer(&self) -> Result<i32, CellError> {
        let options = self.via_pgbouncer("app_writer")?;
        let client = switchyard_postgres::connect(&options)
            .await
            .map_err(|e| CellError::Workload(format!("through PgBouncer: {e}")))?;
        // Simple protocol: named prepared statements do not survive transaction pooling.
        let rows = client
            .simple_query("SHOW server_version_num")
            .await
            .map_err(|e| CellError::Workload(format!("through PgBouncer: {e}")))?;
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
                _ => None,
            })
            .ok_or_else(|| CellError::Workload("SHOW server_version_num: no row".to_owned()))
    }

    /// With writes stopped: waits until the downstream search database holds exactly the
    /// `primary`'s rows of the tables it subscribes to; the last difference on timeout.
    pub async fn downstream_converges(
        &self,
        primary: &PgServer,
        timeout: Duration,
    ) -> Result<(), CellError> {
        let started = Instant::now();
        loop {
            let want = fingerprint(primary, &self.document.databases[0]).await?;
            let have = fingerprint(&self.search, "search").await?;
            if have == want {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(CellError::Workload(format!(
                    "downstream differs from the primary: {have:?} vs {want:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Row count and an order-independent digest of the primary keys of each downstream table.
pub async fn fingerprint(
    server: &PgServer,
    db: &str,
) -> Result<Vec<(String, i64, String)>, CellError> {
    let client = server
        .superuser_client(db)
        .await
        .map_err(|e| CellError::Workload(e.to_string()))?;
    let mut out = Vec::new();
    for table in DOWNSTREAM_TABLES {
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') FROM {}",
            switchyard_postgres::quote::qualified("public", table)
        );
        let row = client.query_one(&sql, &[]).await.map_err(|e| {
            CellError::Workload(format!(
                "fingerprint of {}: {e}",
                switchyard_postgres::quote::qualified_name("public", table)
            ))
        })?;
        out.push((table.to_owned(), row.get(0), row.get(1)));
    }
    Ok(out)
}

/// While writes go on: waits until every one of `keys` is in `table`.`column` on the server
/// `opts` reaches exactly once; the last audit on timeout, or at once on a duplicate.
pub async fn wait_keys_once(
    opts: &ConnectOptions,
    table: (&str, &str),
    column: &str,
    keys: &[String],
    timeout: Duration,
) -> Result<KeyAudit, CellError> {
    let started = Instant::now();
    loop {
        let audit = audit_keys(opts, table, column, keys).await?;
        if audit.present_once == keys.len() {
            return Ok(audit);
        }
        if audit.duplicated > 0 || started.elapsed() > timeout {
            return Err(CellError::Workload(format!(
                "{}.{}: {audit:?} of {} acknowledged keys",
                table.0,
                table.1,
                keys.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
