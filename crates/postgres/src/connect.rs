//! Opening Postgres connections from typed options — never from a DSN string, so a
//! password with `@ ! ' : /` needs no escaping and cannot leak into a parse error.

use std::time::Duration;

use switchyard_telemetry::Secret;
use tokio::task::AbortHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};
use tracing::{debug, instrument};

use crate::tls::{self, Tls};
use crate::PgError;

/// Where and how to connect. `Debug` shows no password (`Secret` redacts it).
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    pub tls: Tls,
    /// Shown in `pg_stat_activity`, so our own sessions can be told apart.
    pub application_name: String,
    /// Bounds the whole connection set-up: TCP, TLS handshake and authentication.
    pub connect_timeout: Duration,
}

/// Opens a connection and drives it on a spawned task. The task ends when the returned
/// client is dropped and no request is still waiting for an answer.
#[instrument(level = "debug", skip_all, fields(host = %opts.host, port = opts.port, dbname = %opts.dbname, user = %opts.user))]
pub async fn connect(opts: &ConnectOptions) -> Result<Client, PgError> {
    let target = format!(
        "{}:{}/{} as {}",
        opts.host, opts.port, opts.dbname, opts.user
    );
    let mut config = Config::new();
    config
        .host(&opts.host)
        .port(opts.port)
        .dbname(&opts.dbname)
        .user(&opts.user)
        .password(opts.password.expose())
        .application_name(&opts.application_name)
        .connect_timeout(opts.connect_timeout);
    let (client, _task) =
        establish_over(&mut config, &opts.tls, opts.connect_timeout, &target).await?;
    Ok(client)
}

/// Sets the driver's TLS mode from `tls` and connects through [`establish`].
pub(crate) async fn establish_over(
    config: &mut Config,
    tls: &Tls,
    timeout: Duration,
    target: &str,
) -> Result<(Client, AbortHandle), PgError> {
    match tls {
        Tls::VerifyFull { ca_bundle } => {
            let connector = tls::verify_full(ca_bundle).await?;
            // `Require` only makes the driver insist on TLS; the verify-full part —
            // chain to our CA and the host name — is done by rustls' verifier, which
            // fails the handshake otherwise. Never `Prefer`: it would fall back to
            // plain TCP when the server declines TLS.
            config.ssl_mode(SslMode::Require);
            establish(config, connector, timeout, target).await
        }
        Tls::Disabled => {
            config.ssl_mode(SslMode::Disable);
            establish(config, NoTls, timeout, target).await
        }
    }
}

/// Connects under one deadline and spawns the connection task. The abort handle lets
/// an owner close the socket even while a request is pending — dropping the `Client`
/// alone does not (the driver keeps waiting for the answer).
pub(crate) async fn establish<T>(
    config: &Config,
    tls: T,
    timeout: Duration,
    target: &str,
) -> Result<(Client, AbortHandle), PgError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    // The driver's connect_timeout (set by the callers, so one dead address gives way
    // to the next) covers only TCP; a server that accepts and then stalls in the
    // handshake or authentication is caught by this outer deadline.
    let (client, connection) = match tokio::time::timeout(timeout, config.connect(tls)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => return Err(PgError::connecting(target, &error)),
        Err(_) => {
            return Err(PgError::timed_out(
                format!("connecting to {target}"),
                timeout,
            ))
        }
    };
    let target = target.to_owned();
    let task = tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, %target, "connection ended with an error");
        }
    });
    Ok((client, task.abort_handle()))
}

#[cfg(test)]
mod tests {
    //! Socket-level failures only; TLS handshakes, certificate checks and logins are
    //! tested against real servers in tests/local-cell (no Postgres stand-ins here).

    use std::net::{TcpListener, TcpStream};
    use std::thread;

    use switchyard_errors::{Catalogued, ErrorName};

    use super::*;

    const PASSWORD: &str = "p@ss!w'o:r/d\"\\ é";

    fn options(host: &str, port: u16, tls: Tls) -> ConnectOptions {
        ConnectOptions {
            host: host.into(),
            port,
            dbname: "app".into(),
            user: "switchyard".into(),
            password: Secret::new(PASSWORD.to_owned()),
            tls,
            application_name: "switchyard-test".into(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let error = connect(&options("127.0.0.1", port, Tls::Disabled))
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(error.error_name(), ErrorName::DatabaseUnavailable),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_server_that_stalls_after_accepting_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            let (stream, _): (TcpStream, _) = listener.accept().expect("accept");
            // Hold the socket open, silent, until the client has given up.
            let _ = finished.recv_timeout(Duration::from_secs(10));
            drop(stream);
        });
        let mut opts = options("127.0.0.1", port, Tls::Disabled);
        opts.connect_timeout = Duration::from_millis(300);
        let error = connect(&opts).await.expect_err("times out");
        assert!(
            matches!(error.error_name(), ErrorName::DatabaseUnavailable),
            "{error}"
        );
        assert!(
            error.to_string().contains("no answer within 300 ms"),
            "{error}"
        );
        done.send(()).expect("release the holder");
        holder.join().expect("holder");
    }

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let opts = options("localhost", 5432, Tls::Disabled);
        let debug = format!("{opts:?}");
        assert!(!debug.contains(PASSWORD), "{debug}");
        assert!(debug.contains("localhost"), "{debug}");
    }
}
