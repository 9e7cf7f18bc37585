//! Postgres access: TLS connections, SQL quoting, and the PgBouncer admin console.
//!
//! - [`connect`] opens a connection from typed [`ConnectOptions`] — verify-full TLS
//!   against one CA bundle, or none for a local cell.
//! - [`quote`] is the one place SQL identifiers and literals are written.
//! - [`pgbouncer::PgBouncerAdmin`] drives PAUSE/RESUME and reads the SHOW commands.
//! - [`PgError`] is every failure here, classified once: `DatabaseUnavailable` when
//!   trying again may help (transient SQLSTATE, broken connection), `DatabaseError`
//!   otherwise, `ConfigurationError` for our own bad settings.
//!
//! Nothing is cached between calls, and no password reaches a message or a log.

mod connect;
mod error;
mod password;
pub mod pgbouncer;
pub mod quote;
mod tls;

pub use crate::connect::{connect, ConnectOptions};
pub use crate::error::PgError;
pub use crate::password::{scram_verifier, scram_verifies};
pub use crate::pgbouncer::{PgBouncerAdmin, Resumed};
pub use crate::tls::Tls;
