//! Asking a logical subscriber for its feedback now instead of on its own cycle.
//!
//! A subscriber's apply worker reports the position it has flushed to its slot on the
//! publisher only after its own WAL is flushed (by the WAL writer, every
//! `wal_writer_delay`, 200 ms by default) and when it next wakes — on new data, or after
//! that delay again. Idle, as after the freeze, a slot's `confirmed_flush_lsn` therefore
//! trails the apply by up to ~400 ms. [`nudge`] shortens that without changing what is
//! waited for: a synchronous commit on the subscriber flushes its WAL (every apply
//! before it included), then a commit on the publisher gives the walsender something to
//! stream — a transaction's (empty) BEGIN/COMMIT, or from PostgreSQL 15 the keepalive a
//! walsender sends once it has sent past what the subscriber confirmed — on whose arrival
//! the apply worker reports its now-flushed position. Each commit is a transaction that
//! only takes a transaction id: it writes no row and needs no privilege.

use tokio_postgres::Client;

/// How often a waiting step nudges while a slot is behind.
pub const NUDGE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A transaction that writes nothing but its commit record, committed synchronously: it
/// flushes the server's WAL up to it.
const FLUSHING_COMMIT: &str = "SELECT pg_catalog.set_config('synchronous_commit', 'on', true), \
                               pg_catalog.txid_current()";

/// Flushes the subscriber's WAL, then commits on the publisher; see the module. Best
/// effort: a failure is logged and the caller keeps waiting as it would have anyway.
pub async fn nudge(subscriber: &Client, publisher: &Client) {
    // Order: the subscriber's applies must be flushed before the publisher's commit
    // reaches it, or its report on that arrival still lags.
    for (side, client) in [("subscriber", subscriber), ("publisher", publisher)] {
        if let Err(e) = client.batch_execute(FLUSHING_COMMIT).await {
            tracing::warn!(side, error = %e, "nudging for replication feedback failed; waiting for the subscriber's own cycle");
            return;
        }
    }
}
