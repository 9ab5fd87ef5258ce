//! A real PostgreSQL cluster for tests: found in `PATH` or `/usr/lib/postgresql/*/bin`, run
//! as `nobody` through `setpriv` when the tests run as root (PostgreSQL refuses root), on a
//! loopback port. Used by the `pg-backup` job test and by the PostgreSQL-catalog tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lifeboat_server::ServerConfig;
use lifeboat_server::config::CatalogConfig;

const NOBODY: u32 = 65534;

/// Printed by tests that need PostgreSQL when there is none.
pub const SKIPPED: &str =
    "SKIPPED: no PostgreSQL (initdb not on PATH nor in /usr/lib/postgresql/*/bin)";

/// The directory holding initdb, pg_ctl and postgres: on `PATH`, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest version).
pub fn pg_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                let real = std::fs::canonicalize(dir.join("initdb")).ok()?;
                return real.parent().map(Path::to_path_buf);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command that runs as the unprivileged user when the test runs as root.
pub fn unprivileged(program: &Path) -> Command {
    if as_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_string(),
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

pub fn chown(path: &Path) {
    if as_root() {
        rustix::fs::chown(
            path,
            Some(rustix::fs::Uid::from_raw(NOBODY)),
            Some(rustix::fs::Gid::from_raw(NOBODY)),
        )
        .unwrap();
    }
}

pub fn chown_tree(path: &Path) {
    chown(path);
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path());
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn checked(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running cluster, stopped when dropped.
pub struct Cluster {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
}

impl Cluster {
    pub fn start(bin: &Path, data: &Path, socket_dir: &Path) -> Cluster {
        let port = free_port();
        let log = data.with_extension("log");
        let out = unprivileged(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                socket_dir.display()
            ))
            .args(["-w", "-t", "120", "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Cluster {
            bin: bin.to_owned(),
            data: data.to_owned(),
            port,
        }
    }

    pub fn psql_program(&self) -> PathBuf {
        if self.bin.join("psql").is_file() {
            self.bin.join("psql")
        } else {
            PathBuf::from("psql")
        }
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.psql_program())
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.conninfo())
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        checked(out, &format!("psql {sql}")).trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = unprivileged(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .output();
    }
}

/// A fresh cluster holding a catalog database, reached over TCP with a password (scram), as a
/// real deployment would. Stopped (and its directory removed) when dropped.
pub struct PgCatalog {
    pub cluster: Cluster,
    /// The superuser's password, in a file as `[catalog] password_file` reads it.
    pub password_file: PathBuf,
    socket_dir: PathBuf,
    _dir: tempfile::TempDir,
}

pub const PG_PASSWORD: &str = "catalog password: not in any URL";

impl PgCatalog {
    /// Starts a cluster with database `lifeboat`; None without PostgreSQL.
    pub fn start() -> Option<PgCatalog> {
        let bin = pg_bin()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let world = dir.path().join("pg");
        std::fs::create_dir_all(&world).unwrap();
        let password_file = world.join("password");
        std::fs::write(&password_file, format!("{PG_PASSWORD}\n")).unwrap();
        chown_tree(&world);
        let data = world.join("data");
        let out = unprivileged(&bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .arg(format!("--pwfile={}", password_file.display()))
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        checked(out, "initdb");
        let cluster = Cluster::start(&bin, &data, &world);
        let catalog = PgCatalog {
            cluster,
            password_file,
            socket_dir: world,
            _dir: dir,
        };
        catalog.psql("CREATE DATABASE lifeboat");
        Some(catalog)
    }

    /// Runs `sql` in database `lifeboat` (over the Unix socket, trusted); returns the output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.cluster.psql_program())
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "host={} port={} user=postgres dbname={}",
                self.socket_dir.display(),
                self.cluster.port,
                if sql.starts_with("CREATE DATABASE") {
                    "postgres"
                } else {
                    "lifeboat"
                }
            ))
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        checked(out, &format!("psql {sql}")).trim().to_owned()
    }

    /// The catalog settings: the URL names no password, the file holds it.
    pub fn catalog_config(&self) -> CatalogConfig {
        CatalogConfig {
            url: Some(format!(
                "postgres://postgres@127.0.0.1:{}/lifeboat",
                self.cluster.port
            )),
            password_file: Some(self.password_file.clone()),
        }
    }

    /// The test configuration with this catalog.
    pub fn server_config(&self) -> ServerConfig {
        let mut config = crate::common::test_config();
        config.catalog = self.catalog_config();
        config
    }
}
