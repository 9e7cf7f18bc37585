//! A real PostgreSQL server of a chosen major, as one cluster of the cell.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use switchyard_postgres::{connect, ConnectOptions, Tls};
use switchyard_telemetry::Secret;

use crate::ca::ServerTls;
use crate::install::Install;
use crate::process::{free_port, run_to_end, server_dir, RunAs, Server};
use crate::CellError;

#[derive(Debug)]
pub struct PgServerSpec<'a> {
    pub name: &'a str,
    pub major: u32,
    /// A loopback address of its own: moto's target groups key targets by IP, so each
    /// server needs a distinct one, as each Aurora writer has.
    pub ip: &'a str,
    pub superuser: &'a str,
    pub superuser_password: &'a Secret,
    /// The certificate it serves; `None` serves no TLS at all (plain TCP only).
    pub tls: Option<ServerTls>,
    /// With TLS, whether plain TCP is still accepted: Aurora PostgreSQL 14 accepts both by
    /// default (`rds.force_ssl` = 0), 15 and later only TLS (`rds.force_ssl` = 1).
    pub plain_tcp_too: bool,
}

/// A running server. Stopped (fast shutdown) when dropped.
#[derive(Debug)]
pub struct PgServer {
    pub name: String,
    pub major: u32,
    pub ip: String,
    pub port: u16,
    pub version_num: i32,
    pub version: String,
    superuser: String,
    superuser_password: Secret,
    /// The bundle its certificate verifies against, when it serves TLS.
    ca_bundle: Option<PathBuf>,
    data: PathBuf,
    server: Server,
}

impl PgServer {
    pub async fn start(
        spec: &PgServerSpec<'_>,
        install: &Install,
        run_dir: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Self, CellError> {
        let bin = install.pg_bin(spec.major)?;
        let data = run_dir.join(format!("{}-data", spec.name));
        let log = run_dir.join("logs").join(format!("{}.log", spec.name));
        server_dir(run_as, &data, 0o700)?;

        // initdb reads the password from a file that only the server user can read, and
        // that is removed as soon as initdb is done.
        let pwfile = run_dir.join(format!("{}-pwfile", spec.name));
        fs::write(&pwfile, spec.superuser_password.expose())
            .map_err(|e| CellError::Setup(format!("pwfile: {e}")))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))
            .map_err(|e| CellError::Setup(format!("pwfile: {e}")))?;
        RunAs::own(run_as, &pwfile)?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                spec.superuser,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = run_to_end(&format!("initdb ({})", spec.name), initdb, run_as, &log).await;
        let _ = fs::remove_file(&pwfile);
        result?;

        let port = free_port(spec.ip)?;
        // log_min_error_statement = panic: a failing statement is otherwise logged whole,
        // and some (CREATE SUBSCRIPTION … CONNECTION) carry a password.
        let mut conf = format!(
            "listen_addresses = '{ip}'\nport = {port}\nunix_socket_directories = ''\n\
             wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             max_logical_replication_workers = 12\nmax_worker_processes = 24\nmax_connections = 200\n\
             shared_buffers = 32MB\nfsync = off\nsynchronous_commit = on\npassword_encryption = 'scram-sha-256'\n\
             log_line_prefix = '%m [%p] %u@%d '\nlog_min_messages = warning\nlog_connections = off\n\
             log_min_error_statement = panic\n\
             lc_messages = 'C'\n",
            ip = spec.ip,
        );
        if let Some(tls) = &spec.tls {
            for (file, body) in [("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)] {
                let path = data.join(file);
                fs::write(&path, body).map_err(|e| CellError::Setup(format!("{file}: {e}")))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| CellError::Setup(format!("{file}: {e}")))?;
                RunAs::own(run_as, &path)?;
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        append(&data.join("postgresql.conf"), &conf)?;
        // `hostssl` refuses plain TCP outright, as force_ssl does; `host` takes both.
        let method = if spec.tls.is_some() && !spec.plain_tcp_too {
            "hostssl"
        } else {
            "host"
        };
        fs::write(
            data.join("pg_hba.conf"),
            format!("{method} all all 127.0.0.0/8 scram-sha-256\n{method} replication all 127.0.0.0/8 scram-sha-256\n"),
        )
        .map_err(|e| CellError::Setup(format!("pg_hba.conf: {e}")))?;

        let (version, version_num) = server_version(&bin)?;
        if version_num / 10000 != spec.major as i32 {
            return Err(CellError::Setup(format!(
                "{} binaries are {version}, not major {}",
                spec.name, spec.major
            )));
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&data);
        // SIGINT is PostgreSQL's fast shutdown: abort transactions, checkpoint, exit.
        let mut server = Server::spawn(
            spec.name,
            cmd,
            run_as,
            &log,
            &install.registry(),
            Signal::SIGINT,
        )?;
        let started = Instant::now();
        // The postmaster writes "ready" into postmaster.pid once it accepts connections
        // (what pg_ctl -w waits for); it works whatever pg_hba or TLS demand.
        while !is_ready(&data) {
            server.ensure_running()?;
            if started.elapsed() > Duration::from_secs(60) {
                return Err(CellError::Setup(format!(
                    "{} did not become ready; see {}",
                    spec.name,
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            name: spec.name.to_owned(),
            major: spec.major,
            ip: spec.ip.to_owned(),
            port,
            version_num,
            version,
            superuser: spec.superuser.to_owned(),
            superuser_password: spec.superuser_password.clone(),
            ca_bundle: spec.tls.as_ref().map(|t| t.ca_bundle.clone()),
            data,
            server,
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Connection options for `user` on `dbname`: verify-full against the cell's CA when
    /// the server serves TLS (every server of a cell does), plain TCP otherwise.
    pub fn options(&self, dbname: &str, user: &str, password: &Secret) -> ConnectOptions {
        client_options(
            &self.ip,
            self.port,
            dbname,
            user,
            password,
            self.ca_bundle.as_deref(),
        )
    }

    /// libpq's environment for psql/pg_dump run against this server: its address, and
    /// `verify-full` with the cell's CA when it serves TLS.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.ip.clone()),
            ("PGPORT", self.port.to_string()),
        ];
        match &self.ca_bundle {
            Some(bundle) => {
                env.push(("PGSSLMODE", "verify-full".to_owned()));
                env.push(("PGSSLROOTCERT", bundle.display().to_string()));
            }
            None => env.push(("PGSSLMODE", "disable".to_owned())),
        }
        env
    }

    pub fn superuser_options(&self, dbname: &str) -> ConnectOptions {
        self.options(dbname, &self.superuser, &self.superuser_password)
    }

    pub async fn superuser_client(
        &self,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, CellError> {
        connect(&self.superuser_options(dbname))
            .await
            .map_err(|e| CellError::Setup(format!("{}: {e}", self.name)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn log(&self) -> &Path {
        self.server.log()
    }

    /// Stops the server and removes its data directory (the log stays).
    pub fn stop(&mut self) {
        self.server.stop(Duration::from_secs(20));
        if self.server.pid().is_none() {
            let _ = fs::remove_dir_all(&self.data);
        }
    }
}

/// Connection options the local cell's own clients use (fixtures, workloads, tests):
/// verify-full against `ca_bundle` when given, plain TCP only for a server without TLS.
pub(crate) fn client_options(
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
    password: &Secret,
    ca_bundle: Option<&Path>,
) -> ConnectOptions {
    ConnectOptions {
        host: host.to_owned(),
        port,
        dbname: dbname.to_owned(),
        user: user.to_owned(),
        password: password.clone(),
        tls: match ca_bundle {
            Some(bundle) => Tls::VerifyFull {
                ca_bundle: bundle.to_owned(),
            },
            None => Tls::Disabled,
        },
        application_name: "switchyard-local-cell".to_owned(),
        connect_timeout: Duration::from_secs(5),
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(path: &PathBuf, text: &str) -> Result<(), CellError> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| CellError::Setup(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| CellError::Setup(format!("{}: {e}", path.display())))
}

fn is_ready(data: &Path) -> bool {
    fs::read_to_string(data.join("postmaster.pid"))
        .map(|pid| {
            pid.lines()
                .nth(7)
                .is_some_and(|status| status.trim() == "ready")
        })
        .unwrap_or(false)
}

/// `postgres -V` → ("14.23", 140023): the version moto's cluster is created with.
fn server_version(bin: &Path) -> Result<(String, i32), CellError> {
    let out = Command::new(bin.join("postgres"))
        .arg("-V")
        .output()
        .map_err(|e| CellError::Setup(format!("postgres -V: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text)
        .ok_or_else(|| CellError::Setup(format!("cannot parse postgres -V output: {text}")))
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the third word.
fn parse_version(text: &str) -> Option<(String, i32)> {
    let version = text.split_whitespace().nth(2)?;
    let mut parts = version.split('.').map(|p| p.parse::<i32>().ok());
    let (major, minor) = (parts.next()??, parts.next()??);
    Some((version.to_owned(), major * 10000 + minor))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn parses_npm_and_debian_version_lines() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 14.23\n"),
            Some(("14.23".to_owned(), 140023))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(("15.18".to_owned(), 150018))
        );
        assert_eq!(parse_version("postgres (PostgreSQL) 18devel"), None);
    }
}
