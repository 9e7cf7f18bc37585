//! `local-cell up [--detach] | down | status`: drive a local cell by hand.
//!
//! `up` runs the cell in the foreground until SIGINT/SIGTERM (`--detach` starts it in the
//! background and returns once it is ready); `down` stops the running one by the pid it
//! recorded. Passwords are never printed: they are in moto's SSM, as in AWS.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use switchyard_local_cell::{CellOptions, Install, LocalCell};

#[derive(serde::Serialize, serde::Deserialize)]
struct Current {
    pid: u32,
    start_time: String,
    run_dir: PathBuf,
}

fn current_file(install: &Install) -> PathBuf {
    install.work_dir().join("current.json")
}

fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let install = Install::from_env();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up"] => up(&install),
        ["up", "--detach"] => detach(&install),
        ["down"] => down(&install),
        ["status"] => status(&install),
        _ => Err("usage: local-cell up [--detach] | down | status".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-cell: {e}");
            ExitCode::FAILURE
        }
    }
}

fn running(install: &Install) -> Option<Current> {
    let text = std::fs::read_to_string(current_file(install)).ok()?;
    let current: Current = serde_json::from_str(&text).ok()?;
    // A recorded pid counts only if it is still the same process (pids get reused).
    let alive = switchyard_local_cell::process_start_time(current.pid).as_deref()
        == Some(current.start_time.as_str());
    alive.then_some(current)
}

fn up(install: &Install) -> Result<(), String> {
    if let Some(current) = running(install) {
        return Err(format!(
            "a cell is already running (pid {}, {}): `make cell-down` first",
            current.pid,
            current.run_dir.display()
        ));
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let options = CellOptions::from_env(install).map_err(|e| e.to_string())?;
        let cell = LocalCell::start(&options)
            .await
            .map_err(|e| e.to_string())?;
        let doc = &cell.document;
        println!(
            "local cell {} is up ({} → {})",
            doc.cell_id, cell.blue.version, cell.green.version
        );
        println!("  run dir        {}", cell.run_dir.display());
        println!(
            "  cell document  {}",
            cell.run_dir.join("cell.json").display()
        );
        println!(
            "  environment    source {}",
            cell.run_dir.join("env").display()
        );
        println!("  pgbouncer      {}", cell.pgbouncer_addr());
        for id in [&doc.blue.cluster_identifier, &doc.green.cluster_identifier] {
            println!(
                "  endpoint {id:<16} {}",
                cell.endpoint(id).map_err(|e| e.to_string())?
            );
        }
        println!("  nlb            {}", cell.nlb_endpoint());
        println!("  moto           {}", cell.moto.endpoint);
        println!(
            "  servers        blue {} green {} search {}",
            cell.blue.address(),
            cell.green.address(),
            cell.search.address()
        );
        println!("  logs           {}", cell.run_dir.join("logs").display());
        let me = std::process::id();
        let current = Current {
            pid: me,
            start_time: switchyard_local_cell::process_start_time(me).unwrap_or_default(),
            run_dir: cell.run_dir.clone(),
        };
        std::fs::write(
            current_file(install),
            serde_json::to_string(&current).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        println!("stopping local cell {}", doc.cell_id);
        cell.shutdown();
        let _ = std::fs::remove_file(current_file(install));
        Ok(())
    })
}

fn detach(install: &Install) -> Result<(), String> {
    if let Some(current) = running(install) {
        return Err(format!(
            "a cell is already running (pid {}): `make cell-down` first",
            current.pid
        ));
    }
    std::fs::create_dir_all(install.work_dir()).map_err(|e| e.to_string())?;
    let log_path = install.work_dir().join("local-cell.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .arg("up")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: the terminal's Ctrl-C on `make` must not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| e.to_string())?
    };
    let started = Instant::now();
    loop {
        if let Some(current) = running(install) {
            if current.pid == child.id() {
                print!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the cell failed to start ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            return Err(format!(
                "the cell did not come up in 5 minutes; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn down(install: &Install) -> Result<(), String> {
    let Some(current) = running(install) else {
        let _ = std::fs::remove_file(current_file(install));
        println!("no local cell is running");
        return Ok(());
    };
    kill(Pid::from_raw(current.pid as i32), Signal::SIGTERM)
        .map_err(|e| format!("signalling pid {}: {e}", current.pid))?;
    let started = Instant::now();
    while running(install).is_some() {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("pid {} did not stop in 2 minutes", current.pid));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "local cell stopped (logs kept in {})",
        current.run_dir.join("logs").display()
    );
    Ok(())
}

fn status(install: &Install) -> Result<(), String> {
    match running(install) {
        Some(current) => println!("running: pid {} {}", current.pid, current.run_dir.display()),
        None => println!("no local cell is running"),
    }
    Ok(())
}
