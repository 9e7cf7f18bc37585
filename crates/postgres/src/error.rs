//! One error type for Postgres and PgBouncer, classified once for retry.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use switchyard_errors::{is_transient_sqlstate, Catalogued, ErrorName};

/// A failure talking to Postgres or PgBouncer.
///
/// `Display` reads `<context>: <what went wrong>`, where the context says what was being
/// done ("connecting to db.internal:5432/app as switchyard", "running PAUSE") and a
/// server error carries its SQLSTATE. It never holds a password: the context is built
/// from the host, database and user only, and the driver's messages hold none.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {detail}")]
pub struct PgError {
    kind: Kind,
    context: String,
    detail: String,
    sqlstate: Option<String>,
    server_message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not yet: the server is down, restarting, overloaded, or the link broke.
    Unavailable,
    /// The server said no, or answered something we cannot use.
    Database,
    /// Our own settings are wrong (a CA bundle, a name PgBouncer cannot take).
    Configuration,
    /// TLS refused the server: a certificate that does not verify or name the host, or a
    /// server that offers no TLS.
    TlsRefused,
    /// PgBouncer refused a PAUSE.
    PauseFailed,
}

/// What a driver error says about the connection itself, apart from any SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// The socket failed or closed: connecting again may work.
    Broken,
    /// TLS refused the server (a certificate that does not verify, a name that does not
    /// match): retrying meets the same certificate.
    TlsRefused,
    /// The connection was fine; the error is about what was sent or received.
    Intact,
}

impl PgError {
    /// Wraps a driver error from running a statement; `what` names it for the message,
    /// e.g. `.map_err(|e| PgError::query("CREATE PUBLICATION", e))`.
    pub fn query(what: impl fmt::Display, error: tokio_postgres::Error) -> Self {
        Self::from_driver(format!("running {what}"), &error)
    }

    /// The SQLSTATE the server answered with, if the failure came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    pub(crate) fn connecting(target: &str, error: &tokio_postgres::Error) -> Self {
        Self::from_driver(format!("connecting to {target}"), error)
    }

    pub(crate) fn timed_out(context: String, after: Duration) -> Self {
        Self::new(
            Kind::Unavailable,
            context,
            format!("no answer within {} ms", after.as_millis()),
        )
    }

    pub(crate) fn configuration(context: String, detail: String) -> Self {
        Self::new(Kind::Configuration, context, detail)
    }

    pub(crate) fn unexpected_output(context: String, detail: String) -> Self {
        Self::new(Kind::Database, context, detail)
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's own message (without SQLSTATE or context), for matching the few
    /// answers that mean "nothing to do".
    pub(crate) fn server_message(&self) -> Option<&str> {
        self.server_message.as_deref()
    }

    pub(crate) fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    fn new(kind: Kind, context: String, detail: String) -> Self {
        Self {
            kind,
            context,
            detail,
            sqlstate: None,
            server_message: None,
        }
    }

    fn from_driver(context: String, error: &tokio_postgres::Error) -> Self {
        let mut channel = channel_of(error.is_closed(), error.source());
        // The driver's own refusal carries no typed cause, only its message: a server that
        // answers the TLS request with "no" (plain TCP only) is as wrong as a bad certificate.
        if error.to_string().contains(NO_TLS_OFFERED) {
            channel = Channel::TlsRefused;
        }
        match error.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                Self {
                    kind: classify(Some(code), channel),
                    context,
                    // DETAIL is left out on purpose: it can quote row values, and this
                    // message ends up in the execution history.
                    detail: format!("{} (SQLSTATE {code})", db.message()),
                    sqlstate: Some(code.to_owned()),
                    server_message: Some(db.message().to_owned()),
                }
            }
            None => Self::new(classify(None, channel), context, chain(error)),
        }
    }
}

impl Catalogued for PgError {
    fn error_name(&self) -> ErrorName {
        match self.kind {
            Kind::Unavailable => ErrorName::DatabaseUnavailable,
            Kind::Database => ErrorName::DatabaseError,
            Kind::Configuration => ErrorName::ConfigurationError,
            Kind::TlsRefused => ErrorName::TlsRefused,
            Kind::PauseFailed => ErrorName::PauseFailed,
        }
    }
}

/// The retry decision, over what a driver error reveals.
pub(crate) fn classify(sqlstate: Option<&str>, channel: Channel) -> Kind {
    match (sqlstate, channel) {
        (_, Channel::TlsRefused) => Kind::TlsRefused,
        (Some(code), _) if is_transient_sqlstate(code) => Kind::Unavailable,
        (Some(_), _) => Kind::Database,
        (None, Channel::Broken) => Kind::Unavailable,
        (None, Channel::Intact) => Kind::Database,
    }
}

/// What tokio-postgres says when `sslmode=require` meets a server that declines TLS.
const NO_TLS_OFFERED: &str = "server does not support TLS";

/// Walks a driver error's causes. tokio-rustls reports a refused certificate as an
/// `io::Error` wrapping the `rustls::Error`, and `io::Error::source` skips the wrapped
/// error itself, so each `io::Error` is opened with `get_ref`.
pub(crate) fn channel_of(is_closed: bool, source: Option<&(dyn StdError + 'static)>) -> Channel {
    let mut broken = is_closed;
    let mut next = source;
    while let Some(error) = next {
        if error.is::<rustls::Error>() {
            return Channel::TlsRefused;
        }
        if let Some(io_error) = error.downcast_ref::<io::Error>() {
            if io_error
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return Channel::TlsRefused;
            }
            // InvalidInput/InvalidData come from our side or a garbled message (a name
            // rustls cannot verify, a NUL in a query), not from a broken link.
            if !matches!(
                io_error.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
            ) {
                broken = true;
            }
        }
        next = error.source();
    }
    if broken {
        Channel::Broken
    } else {
        Channel::Intact
    }
}

/// The driver's `Display` names only its own layer ("error performing TLS handshake");
/// the causes say why.
fn chain(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    #[test]
    fn classifies_sqlstates() {
        let cases: &[(&SqlState, Kind)] = &[
            (&SqlState::CONNECTION_FAILURE, Kind::Unavailable),
            (&SqlState::CONNECTION_EXCEPTION, Kind::Unavailable),
            (
                &SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                Kind::Unavailable,
            ),
            (&SqlState::T_R_SERIALIZATION_FAILURE, Kind::Unavailable),
            (&SqlState::T_R_DEADLOCK_DETECTED, Kind::Unavailable),
            (&SqlState::ADMIN_SHUTDOWN, Kind::Unavailable),
            (&SqlState::CRASH_SHUTDOWN, Kind::Unavailable),
            (&SqlState::CANNOT_CONNECT_NOW, Kind::Unavailable),
            (&SqlState::TOO_MANY_CONNECTIONS, Kind::Unavailable),
            (&SqlState::LOCK_NOT_AVAILABLE, Kind::Unavailable),
            // PgBouncer answers every admin-console error with 08P01: not transient.
            (&SqlState::PROTOCOL_VIOLATION, Kind::Database),
            (&SqlState::INVALID_PASSWORD, Kind::Database),
            (&SqlState::INSUFFICIENT_PRIVILEGE, Kind::Database),
            (&SqlState::UNDEFINED_TABLE, Kind::Database),
            (&SqlState::DUPLICATE_OBJECT, Kind::Database),
            (&SqlState::QUERY_CANCELED, Kind::Database),
        ];
        for (state, expected) in cases {
            for channel in [Channel::Intact, Channel::Broken] {
                assert_eq!(
                    classify(Some(state.code()), channel),
                    *expected,
                    "{} over {channel:?}",
                    state.code()
                );
            }
        }
    }

    #[test]
    fn classifies_errors_without_sqlstate() {
        assert_eq!(classify(None, Channel::Broken), Kind::Unavailable);
        assert_eq!(classify(None, Channel::Intact), Kind::Database);
        assert_eq!(classify(None, Channel::TlsRefused), Kind::TlsRefused);
        assert_eq!(
            classify(Some(SqlState::ADMIN_SHUTDOWN.code()), Channel::TlsRefused),
            Kind::TlsRefused
        );
    }

    #[test]
    fn reads_the_channel_from_the_cause_chain() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(channel_of(false, Some(&refused)), Channel::Broken);

        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(channel_of(false, Some(&reset)), Channel::Broken);

        // As tokio-rustls reports a certificate it does not trust.
        let untrusted = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(channel_of(false, Some(&untrusted)), Channel::TlsRefused);

        let bad_name = io::Error::new(io::ErrorKind::InvalidInput, "invalid dns name");
        assert_eq!(channel_of(false, Some(&bad_name)), Channel::Intact);

        assert_eq!(channel_of(true, None), Channel::Broken);
        assert_eq!(channel_of(false, None), Channel::Intact);
    }

    #[test]
    fn names_follow_the_kind() {
        let unavailable =
            PgError::timed_out("connecting to h:1/d as u".into(), Duration::from_secs(5));
        assert!(matches!(
            unavailable.error_name(),
            ErrorName::DatabaseUnavailable
        ));
        assert_eq!(
            unavailable.to_string(),
            "connecting to h:1/d as u: no answer within 5000 ms"
        );
        let config = PgError::configuration("reading x".into(), "missing".into());
        assert!(matches!(config.error_name(), ErrorName::ConfigurationError));
        let odd = PgError::unexpected_output("running SHOW POOLS".into(), "no column".into());
        assert!(matches!(odd.error_name(), ErrorName::DatabaseError));
        assert!(matches!(
            odd.with_kind(Kind::PauseFailed).error_name(),
            ErrorName::PauseFailed
        ));
    }
}
