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
    let (client, _task) = match &opts.tls {
        Tls::VerifyFull { ca_bundle } => {
            let connector = tls::verify_full(ca_bundle).await?;
            // `Require` only makes the driver insist on TLS; the verify-full part —
            // chain to our CA and the host name — is done by rustls' verifier, which
            // fails the handshake otherwise. Never `Prefer`: it would fall back to
            // plain TCP when the server declines TLS.
            config.ssl_mode(SslMode::Require);
            establish(&config, connector, opts.connect_timeout, &target).await?
        }
        Tls::Disabled => {
            config.ssl_mode(SslMode::Disable);
            establish(&config, NoTls, opts.connect_timeout, &target).await?
        }
    };
    Ok(client)
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
    //! The handshake tests stand up a TLS endpoint that speaks just enough of the
    //! protocol to prove what the client did: negotiate TLS, send the startup message
    //! and the password. Postgres' own behaviour is left to the integration tests.

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::thread;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use switchyard_errors::{Catalogued, ErrorName};

    use super::*;

    const PASSWORD: &str = "p@ss!w'o:r/d\"\\ é";

    struct Pki {
        ca_bundle: PathBuf,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    }

    /// A CA, written to a bundle, and a server certificate it signed for `names`.
    fn pki(label: &str, names: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Distinct names, so a foreign CA is unknown rather than a look-alike.
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("switchyard test CA {label}"),
        );
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");

        let dir = std::env::temp_dir().join(format!(
            "switchyard-postgres-connect-{}-{label}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca_bundle = dir.join("ca.pem");
        std::fs::write(&ca_bundle, ca_cert.pem()).expect("write bundle");
        Pki {
            ca_bundle,
            chain: vec![server_cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        }
    }

    fn read_message(stream: &mut impl Read, tagged: bool) -> std::io::Result<(u8, Vec<u8>)> {
        let mut tag = [0u8; 1];
        if tagged {
            stream.read_exact(&mut tag)?;
        }
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        stream.read_exact(&mut body)?;
        Ok((tag[0], body))
    }

    fn error_response(code: &str, message: &str) -> Vec<u8> {
        let mut fields = Vec::new();
        for (field, value) in [(b'S', "FATAL"), (b'C', code), (b'M', message)] {
            fields.push(field);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let mut message = vec![b'E'];
        message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(&fields);
        message
    }

    /// Serves one connection: accepts TLS, asks for a cleartext password, sends it back
    /// through the channel, then refuses the login with 28P01.
    fn serve_once(pki: &Pki) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .expect("server config");
        let (sender, receiver) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let (mut tcp, _) = listener.accept().expect("accept");
            let (_, ssl_request) = read_message(&mut tcp, false).expect("SSLRequest");
            assert_eq!(ssl_request, [0x04, 0xd2, 0x16, 0x2f], "SSLRequest");
            tcp.write_all(b"S").expect("accept TLS");
            let connection = rustls::ServerConnection::new(Arc::new(config)).expect("conn");
            let mut tls = rustls::StreamOwned::new(connection, tcp);
            // The first read drives the handshake; it fails when the client refuses us.
            if read_message(&mut tls, false).is_err() {
                return;
            }
            tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
                .expect("ask password");
            tls.flush().expect("flush");
            let (tag, password) = read_message(&mut tls, true).expect("password message");
            assert_eq!(tag, b'p');
            sender.send(password).expect("send password");
            tls.write_all(&error_response(
                "28P01",
                "password authentication failed for user \"switchyard\"",
            ))
            .expect("refuse");
            tls.flush().expect("flush");
        });
        (port, receiver)
    }

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
    async fn verify_full_handshake_sends_the_password_verbatim() {
        let pki = pki("trusted", &["localhost"]);
        let (port, passwords) = serve_once(&pki);
        let tls = Tls::VerifyFull {
            ca_bundle: pki.ca_bundle.clone(),
        };
        let error = connect(&options("localhost", port, tls))
            .await
            .expect_err("the server refuses the login");

        // Reaching 28P01 means the handshake verified; the password went over it intact.
        assert_eq!(error.sqlstate(), Some("28P01"), "{error}");
        assert!(matches!(error.error_name(), ErrorName::DatabaseError));
        let mut expected = PASSWORD.as_bytes().to_vec();
        expected.push(0);
        assert_eq!(passwords.recv().expect("password"), expected);
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "connecting to localhost:{port}/app as switchyard: "
            )),
            "{message}"
        );
        assert!(!message.contains(PASSWORD), "{message}");
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_database_error() {
        let server = pki("server", &["localhost"]);
        let other = pki("other", &["localhost"]);
        let (port, _) = serve_once(&server);
        let tls = Tls::VerifyFull {
            ca_bundle: other.ca_bundle.clone(),
        };
        let error = connect(&options("localhost", port, tls))
            .await
            .expect_err("refused");
        assert!(
            matches!(error.error_name(), ErrorName::DatabaseError),
            "{error}"
        );
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    }

    #[tokio::test]
    async fn a_certificate_for_another_name_is_a_database_error() {
        let pki = pki("wrong-name", &["db.example.internal"]);
        let (port, _) = serve_once(&pki);
        let tls = Tls::VerifyFull {
            ca_bundle: pki.ca_bundle.clone(),
        };
        let error = connect(&options("localhost", port, tls))
            .await
            .expect_err("refused");
        assert!(
            matches!(error.error_name(), ErrorName::DatabaseError),
            "{error}"
        );
        assert!(error.to_string().contains("not valid for name"), "{error}");
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
