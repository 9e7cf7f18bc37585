//! Server processes the cell starts: run unprivileged, logged to a file, recorded by pid,
//! and stopped by that pid alone.
//!
//! Three layers keep anything from outliving its run: `Drop` stops each server (pass or
//! fail, including a panicking test), the kernel's parent-death signal stops it if this
//! process is killed outright, and every live pid is recorded under the run registry so
//! `scripts/check-leftovers.sh` can prove after `make test` that nothing was left.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::CellError;

/// The unprivileged account servers run as when the cell is started by root: initdb,
/// postgres and pgbouncer all refuse to run as root.
const SERVER_USER: &str = "postgres";

/// Who the servers run as: `None` means "as ourselves" (not root).
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    uid: Uid,
    gid: Gid,
}

impl RunAs {
    pub fn detect() -> Result<Option<Self>, CellError> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        let user = User::from_name(SERVER_USER)
            .map_err(|e| CellError::Setup(format!("looking up user {SERVER_USER}: {e}")))?
            .ok_or_else(|| {
                CellError::Setup(format!(
                    "running as root needs the unprivileged user {SERVER_USER}: run `make setup`"
                ))
            })?;
        Ok(Some(Self {
            uid: user.uid,
            gid: user.gid,
        }))
    }

    /// Hands a path the cell created to the server user.
    pub fn own(run_as: Option<Self>, path: &Path) -> Result<(), CellError> {
        if let Some(r) = run_as {
            nix::unistd::chown(path, Some(r.uid), Some(r.gid))
                .map_err(|e| CellError::Setup(format!("chown {}: {e}", path.display())))?;
        }
        Ok(())
    }

    pub fn apply(run_as: Option<Self>, cmd: &mut Command) {
        if let Some(r) = run_as {
            cmd.uid(r.uid.as_raw()).gid(r.gid.as_raw());
            // The server user's own HOME: libpq inside a server (a subscription's worker)
            // looks for client certificates under ~/.postgresql, and root's is unreadable.
            let home = User::from_uid(r.uid)
                .ok()
                .flatten()
                .map_or_else(|| PathBuf::from("/"), |u| u.dir);
            cmd.env("HOME", home);
        }
    }
}

/// Makes a directory the server user can write (and everyone can read, for debugging).
pub fn server_dir(run_as: Option<RunAs>, path: &Path, mode: u32) -> Result<(), CellError> {
    fs::create_dir_all(path)
        .map_err(|e| CellError::Setup(format!("creating {}: {e}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| CellError::Setup(format!("chmod {}: {e}", path.display())))?;
    RunAs::own(run_as, path)
}

/// Runs a short command to completion as the server user, its output appended to `log`.
pub async fn run_to_end(
    name: &str,
    mut cmd: Command,
    run_as: Option<RunAs>,
    log: &Path,
) -> Result<(), CellError> {
    prepare(&mut cmd, run_as, log)?;
    let status = tokio::process::Command::from(cmd)
        .status()
        .await
        .map_err(|e| CellError::Setup(format!("starting {name}: {e}")))?;
    if !status.success() {
        return Err(CellError::Setup(format!(
            "{name} failed ({status}); see {}",
            log.display()
        )));
    }
    Ok(())
}

/// Runs as the server user, no stdin, stdout and stderr appended to `log`.
fn prepare(cmd: &mut Command, run_as: Option<RunAs>, log: &Path) -> Result<(), CellError> {
    let out = log_file(log)?;
    let err = out
        .try_clone()
        .map_err(|e| CellError::Setup(format!("log {}: {e}", log.display())))?;
    RunAs::apply(run_as, cmd);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    Ok(())
}

fn log_file(path: &Path) -> Result<File, CellError> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| CellError::Setup(format!("opening log {}: {e}", path.display())))
}

/// A long-running server started by the cell.
#[derive(Debug)]
pub struct Server {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    record: PathBuf,
    stop_signal: Signal,
}

impl Server {
    /// Starts `cmd` as the server user with stdout/stderr appended to `log`, and records
    /// its pid in `registry` until it is stopped.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        run_as: Option<RunAs>,
        log: &Path,
        registry: &Path,
        stop_signal: Signal,
    ) -> Result<Self, CellError> {
        prepare(&mut cmd, run_as, log)?;
        set_parent_death_signal(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| CellError::Setup(format!("starting {name}: {e}")))?;
        fs::create_dir_all(registry)
            .map_err(|e| CellError::Setup(format!("creating {}: {e}", registry.display())))?;
        let record = registry.join(child.id().to_string());
        fs::write(
            &record,
            format!("{name}\n{}\n", start_time(child.id()).unwrap_or_default()),
        )
        .map_err(|e| CellError::Setup(format!("recording pid: {e}")))?;
        tracing::debug!(server = name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            record,
            stop_signal,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until the server accepts TCP connections on `addr`, failing with its log's
    /// path if it exits first or `budget` passes.
    pub async fn wait_listening(
        &mut self,
        addr: (&str, u16),
        budget: Duration,
    ) -> Result<(), CellError> {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            self.ensure_running()?;
            if started.elapsed() > budget {
                return Err(CellError::Setup(format!(
                    "{} did not listen on {}:{}; see {}",
                    self.name,
                    addr.0,
                    addr.1,
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Fails with the log's path if the server already exited (e.g. a bad config).
    pub fn ensure_running(&mut self) -> Result<(), CellError> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let _ = fs::remove_file(&self.record);
                return Err(CellError::Setup(format!(
                    "{} exited at start ({status}); see {}",
                    self.name,
                    self.log.display()
                )));
            }
        }
        Ok(())
    }

    /// Sends the server's own stop signal, waits up to `grace`, then kills it. Only ever
    /// signals the pid this handle started.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = kill(pid, self.stop_signal);
            let deadline = Instant::now() + grace;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(server = %self.name, "did not stop in time; killing");
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        let _ = fs::remove_file(&self.record);
        tracing::debug!(server = %self.name, "stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// The kernel signals the server if the thread that spawned it dies (e.g. a test process
/// killed by a timeout), so no server outlives its owner even when `Drop` never runs.
#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // syscalls (prctl, getppid). It runs after the uid switch, which would clear the flag.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() == Pid::from_raw(1) {
                return Err(std::io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
}

/// The process start time from /proc (field 22), so a recorded pid is only ever matched
/// to the process it was, not to a later process that reused the number.
pub fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(19).map(str::to_owned)
}

/// Free TCP port on `ip`, found by binding port 0. Another process could take it before the
/// server binds; the servers' own bind errors are then reported with their logs.
pub fn free_port(ip: &str) -> Result<u16, CellError> {
    let listener = std::net::TcpListener::bind((ip, 0))
        .map_err(|e| CellError::Setup(format!("binding {ip}:0: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| CellError::Setup(format!("local addr: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_reads_our_own_stat() {
        let t = start_time(std::process::id()).expect("own /proc entry");
        assert!(t.parse::<u64>().is_ok(), "{t}");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port("127.0.0.1").expect("port");
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
    }
}
