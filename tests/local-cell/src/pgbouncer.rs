//! A real PgBouncer in transaction pooling mode, in front of the emulated cluster endpoint.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use switchyard_telemetry::Secret;

use crate::ca::ServerTls;
use crate::install::Install;
use crate::process::{free_port, RunAs, Server};
use crate::CellError;

/// One `[databases]` entry: a pooled database and the address PgBouncer connects to.
#[derive(Debug, Clone)]
pub struct PooledDatabase {
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug)]
pub struct PgBouncerSpec<'a> {
    /// Names its directory and log under the run directory (`pgbouncer`, `pgbouncer-2`).
    pub name: &'a str,
    pub databases: Vec<PooledDatabase>,
    /// (user, password) pairs PgBouncer authenticates clients with and logs into servers as.
    pub users: Vec<(&'a str, &'a Secret)>,
    pub admin_user: &'a str,
    pub query_wait_timeout_secs: u32,
    /// Serve TLS to clients (and refuse plain TCP) with this certificate, and dial the
    /// servers over TLS checked against its CA bundle.
    pub tls: Option<ServerTls>,
}

#[derive(Debug)]
pub struct PgBouncer {
    pub port: u16,
    /// Holds the auth file with plain passwords: removed when PgBouncer stops.
    dir: std::path::PathBuf,
    /// PgBouncer's log: every server and client disconnection is there with its reason.
    log: std::path::PathBuf,
    server: Server,
}

impl PgBouncer {
    pub async fn start(
        spec: &PgBouncerSpec<'_>,
        install: &Install,
        run_dir: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Self, CellError> {
        let dir = run_dir.join(spec.name);
        crate::process::server_dir(run_as, &dir, 0o700)?;
        let port = free_port("127.0.0.1")?;

        // The auth file holds plain passwords so PgBouncer can do SCRAM to the servers;
        // it lives in a 0700 directory of the server user, under the run's target dir.
        let mut userlist = String::new();
        for (user, password) in &spec.users {
            let _ = writeln!(
                userlist,
                "\"{}\" \"{}\"",
                user.replace('"', "\"\""),
                password.expose().replace('"', "\"\"")
            );
        }
        let userlist_path = dir.join("userlist.txt");
        write_private(&userlist_path, &userlist, run_as)?;

        let mut ini = String::from("[databases]\n");
        for db in &spec.databases {
            let _ = writeln!(
                ini,
                "{} = host={} port={} dbname={}",
                db.name, db.host, db.port, db.name
            );
        }
        let log = run_dir.join("logs").join(format!("{}.log", spec.name));
        let _ = write!(
            ini,
            "\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {userlist}\nadmin_users = {admin}\n\
             pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n\
             query_wait_timeout = {qwt}\nserver_connect_timeout = 5\nserver_login_retry = 1\n\
             dns_max_ttl = 15\ndns_nxdomain_ttl = 15\nlog_connections = 0\nlog_disconnections = 1\n\
             ignore_startup_parameters = extra_float_digits\n",
            userlist = userlist_path.display(),
            admin = spec.admin_user,
            qwt = spec.query_wait_timeout_secs,
        );
        if let Some(tls) = &spec.tls {
            let (cert, key) = (dir.join("client.crt"), dir.join("client.key"));
            write_private(&cert, &tls.cert_pem, run_as)?;
            write_private(&key, &tls.key_pem, run_as)?;
            // Clients: TLS or nothing. Servers: the chain is checked, not the name — the
            // servers are dialled through the emulated endpoint's shared address.
            let _ = write!(
                ini,
                "client_tls_sslmode = require\nclient_tls_cert_file = {cert}\nclient_tls_key_file = {key}\n\
                 server_tls_sslmode = verify-ca\nserver_tls_ca_file = {ca}\n",
                cert = cert.display(),
                key = key.display(),
                ca = tls.ca_bundle.display(),
            );
        }
        let ini_path = dir.join("pgbouncer.ini");
        write_private(&ini_path, &ini, run_as)?;

        let mut cmd = Command::new(install.pgbouncer()?);
        cmd.arg(&ini_path);
        // SIGTERM is PgBouncer's immediate shutdown (SIGINT would wait for clients).
        let mut server = Server::spawn(
            "pgbouncer",
            cmd,
            run_as,
            &log,
            &install.registry(),
            Signal::SIGTERM,
        )?;
        server
            .wait_listening(("127.0.0.1", port), Duration::from_secs(30))
            .await?;
        Ok(Self {
            port,
            dir,
            log,
            server,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The last `n` disconnections PgBouncer logged for a reason other than the client's
    /// own close, and its warnings and errors: what a failed client transaction is matched
    /// against when a test reports one.
    pub fn troubles(&self, n: usize) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| {
                (l.contains("closing because") && !l.contains("client close request"))
                    || l.contains(" WARNING ")
                    || l.contains(" ERROR ")
            })
            .map(str::to_owned)
            .collect();
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
        lines
    }

    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(10));
        if self.server.pid().is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_private(path: &Path, body: &str, run_as: Option<RunAs>) -> Result<(), CellError> {
    fs::write(path, body).map_err(|e| CellError::Setup(format!("{}: {e}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| CellError::Setup(format!("{}: {e}", path.display())))?;
    RunAs::own(run_as, path)
}
