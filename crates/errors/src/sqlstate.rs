//! Which PostgreSQL errors are worth retrying: the one list every database error consults.

/// SQLSTATEs outside class 08 that a later attempt can get past.
const TRANSIENT_OUTSIDE_CLASS_08: &[&str] = &[
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "57P01", // admin_shutdown: failover or restart
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now: the server is starting up
    "53300", // too_many_connections
    "55P03", // lock_not_available: our lock_timeout fired
];

/// Whether a SQLSTATE is transient, i.e. maps to `DatabaseUnavailable` rather than
/// `DatabaseError`: class 08 (connection exceptions) except 08P01, plus the short list above.
pub fn is_transient_sqlstate(code: &str) -> bool {
    // 08P01 is a protocol violation: a bug on one side, and retrying repeats it.
    let connection_exception = code.len() == 5 && code.starts_with("08") && code != "08P01";
    connection_exception || TRANSIENT_OUTSIDE_CLASS_08.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlstates() {
        let cases = [
            ("08000", true),
            ("08003", true),
            ("08006", true),
            ("08001", true),
            ("08004", true),
            ("08P01", false),
            ("40001", true),
            ("40P01", true),
            ("57P01", true),
            ("57P02", true),
            ("57P03", true),
            ("53300", true),
            ("55P03", true),
            ("57P04", false),
            ("57014", false), // query_canceled: a statement_timeout we chose
            ("53100", false), // disk_full
            ("42P01", false),
            ("23505", false),
            ("40002", false),
            ("25006", false), // read_only_sql_transaction: revoked writes, not transient
            ("08", false),
            ("080000", false),
            ("", false),
        ];
        for (code, transient) in cases {
            assert_eq!(is_transient_sqlstate(code), transient, "{code}");
        }
    }
}
