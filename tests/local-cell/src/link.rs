//! The network path to one PgBouncer instance, which a test can break the way production
//! breaks it: the instance (or its ECS task) becomes unreachable, or its admin console
//! drops the connection while a command is on the wire.
//!
//! Bytes pass through unchanged; the client-to-server direction is read as PostgreSQL
//! protocol messages only to recognise a `RESUME` sent with the simple query protocol
//! (what every admin console command is). When the instance serves TLS, the link
//! terminates it on both sides, as a TLS-inspecting middlebox would: it presents a
//! certificate from the cell's CA to the client and verifies the instance's against it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::ca::ServerTls;
use crate::CellError;

/// `SSLRequest`'s request code: after it, the bytes are TLS and are only piped.
const SSL_REQUEST: i32 = 80_877_103;

#[derive(Debug, Default)]
struct Faults {
    /// Close a connection instead of passing on a RESUME, leaving the instance paused.
    drop_resume: AtomicBool,
    /// Unreachable: new connections are closed at once (existing ones were cut).
    down: AtomicBool,
}

/// A listening link to one instance. Dropping it closes every connection through it.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    faults: Arc<Faults>,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

/// Both ends of a terminated TLS connection.
#[derive(Clone)]
struct TlsEnds {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl TlsEnds {
    fn new(tls: &ServerTls) -> Result<Self, CellError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            CellError::Setup(format!("link TLS {what}: {e}"))
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("certificate", &e))?;
        let key =
            PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| err("key", &e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("server versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| err("server config", &e))?;
        let bundle = std::fs::read(&tls.ca_bundle).map_err(|e| err("CA bundle", &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&bundle) {
            roots
                .add(cert.map_err(|e| err("CA certificate", &e))?)
                .map_err(|e| err("CA root", &e))?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("client versions", &e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

impl Link {
    /// A link to `target`; with `tls`, it terminates TLS on both sides (the instance must
    /// serve TLS with a certificate from the same CA).
    pub async fn start(target: SocketAddr, tls: Option<&ServerTls>) -> Result<Self, CellError> {
        let tls = tls.map(TlsEnds::new).transpose()?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| CellError::Setup(format!("link bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| CellError::Setup(format!("link addr: {e}")))?;
        let faults = Arc::new(Faults::default());
        let (cut, _) = watch::channel(0);
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            tls,
            faults.clone(),
            cut.clone(),
        ));
        Ok(Self {
            addr,
            faults,
            cut,
            task,
        })
    }

    /// The address clients (and the cell document's discovery) use for this instance.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// While set, a RESUME reaching this instance closes its connection unanswered: the
    /// instance stays paused and the caller sees the connection fail.
    pub fn drop_resume(&self, on: bool) {
        self.faults.drop_resume.store(on, Ordering::SeqCst);
    }

    /// Down: every open connection is cut and new ones are closed at once. Up again:
    /// connections pass as before (the instance itself kept running, and kept its state).
    pub fn set_down(&self, down: bool) {
        self.faults.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    tls: Option<TlsEnds>,
    faults: Arc<Faults>,
    cut: watch::Sender<u64>,
) {
    // Owning the connections here means aborting this task closes every one of them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if faults.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let faults = faults.clone();
                let tls = tls.clone();
                let mut cut = cut.subscribe();
                connections.spawn(async move {
                    tokio::select! {
                        () = relay(client, target, tls, &faults) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, tls: Option<TlsEnds>, faults: &Faults) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let Some(tls) = tls else {
        pipe(client, server, faults).await;
        return;
    };
    // The client asks for TLS first; anything else is passed on for the instance to refuse.
    let Ok(first) = read_untyped(&mut client).await else {
        return;
    };
    if !is_ssl_request(&first) {
        if server.write_all(&first).await.is_ok() {
            pipe(client, server, faults).await;
        }
        return;
    }
    if client.write_all(b"S").await.is_err() {
        return;
    }
    let Ok(client) = tls.acceptor.accept(client).await else {
        return;
    };
    let mut answer = [0u8; 1];
    if server.write_all(&first).await.is_err()
        || server.read_exact(&mut answer).await.is_err()
        || answer != *b"S"
    {
        return;
    }
    let name = ServerName::IpAddress(target.ip().into());
    let Ok(server) = tls.connector.connect(name, server).await else {
        tracing::warn!(%target, "link: the instance's certificate did not verify");
        return;
    };
    pipe(client, server, faults).await;
}

/// Relays both directions until either side closes; client-to-server message by message.
async fn pipe<C, S>(client: C, server: S, faults: &Faults)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, server_write) = tokio::io::split(server);
    tokio::select! {
        () = upstream(client_read, server_write, faults) => {}
        _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
    }
}

fn is_ssl_request(message: &[u8]) -> bool {
    message.len() >= 8
        && i32::from_be_bytes([message[4], message[5], message[6], message[7]]) == SSL_REQUEST
}

/// Client to server, one message at a time: the untyped startup message first, then
/// typed messages (a type byte and a length that counts itself).
async fn upstream<R, W>(mut from: R, mut to: W, faults: &Faults)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Ok(startup) = read_untyped(&mut from).await else {
        return;
    };
    if to.write_all(&startup).await.is_err() {
        return;
    }
    if is_ssl_request(&startup) {
        // TLS this link does not terminate: only bytes from here on.
        let _ = tokio::io::copy(&mut from, &mut to).await;
        return;
    }
    loop {
        let Ok(message) = read_typed(&mut from).await else {
            return;
        };
        if faults.drop_resume.load(Ordering::SeqCst) && is_resume(&message) {
            tracing::info!("link: dropping a RESUME on its way to PgBouncer");
            return;
        }
        if to.write_all(&message).await.is_err() {
            return;
        }
    }
}

async fn read_untyped<R: AsyncRead + Unpin>(from: &mut R) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await?;
    let len = usize::try_from(i32::from_be_bytes(length))
        .unwrap_or(0)
        .max(4);
    let mut message = length.to_vec();
    message.resize(len, 0);
    from.read_exact(&mut message[4..]).await?;
    Ok(message)
}

async fn read_typed<R: AsyncRead + Unpin>(from: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 5];
    from.read_exact(&mut head).await?;
    let len = usize::try_from(i32::from_be_bytes([head[1], head[2], head[3], head[4]]))
        .unwrap_or(0)
        .max(4);
    let mut message = head.to_vec();
    message.resize(1 + len, 0);
    from.read_exact(&mut message[5..]).await?;
    Ok(message)
}

/// A simple-protocol Query whose text starts with RESUME.
fn is_resume(message: &[u8]) -> bool {
    message.first() == Some(&b'Q')
        && message
            .get(5..)
            .map(|text| {
                String::from_utf8_lossy(text)
                    .trim_start()
                    .to_ascii_uppercase()
            })
            .is_some_and(|text| text.starts_with("RESUME"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_query_is_recognised() {
        let query = |text: &str| {
            let mut m = vec![b'Q'];
            m.extend_from_slice(
                &i32::try_from(4 + text.len() + 1)
                    .expect("len")
                    .to_be_bytes(),
            );
            m.extend_from_slice(text.as_bytes());
            m.push(0);
            m
        };
        assert!(is_resume(&query("RESUME \"app\"")));
        assert!(is_resume(&query("  resume")));
        assert!(!is_resume(&query("PAUSE \"app\"")));
        assert!(!is_resume(&query("SHOW DATABASES")));
    }
}
