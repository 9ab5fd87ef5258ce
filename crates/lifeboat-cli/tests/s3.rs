//! The `lifeboat` binary against a real S3-protocol server on loopback: init, backup, restore
//! and copy between local and S3 repositories, and an unreachable endpoint.
//!
//! `.ci/run` starts the server and sets `LIFEBOAT_TEST_S3_ENDPOINT` (`http://127.0.0.1:PORT`),
//! `LIFEBOAT_TEST_S3_BUCKET` and the AWS credential variables. Without the endpoint these tests
//! print that they are skipped and pass.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::cargo::CommandCargoExt;

mod common;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::write(env.path("password"), "first password\n").unwrap();
        fs::write(env.path("password2"), "second password\n").unwrap();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `lifeboat` on `repo` with the first password.
    fn cmd(&self, repo: &str) -> Command {
        self.cmd_with(repo, "password")
    }

    fn cmd_with(&self, repo: &str, password: &str) -> Command {
        let mut cmd = Command::cargo_bin("lifeboat").unwrap();
        cmd.env("LIFEBOAT_REPOSITORY", repo)
            .env("LIFEBOAT_PASSWORD_FILE", self.path(password))
            .env_remove("LIFEBOAT_PASSWORD_COMMAND")
            .env_remove("LIFEBOAT_FROM_PASSWORD_FILE")
            .env_remove("LIFEBOAT_TO_PASSWORD_FILE")
            .env_remove("LIFEBOAT_TO_REPOSITORY")
            .stdin(Stdio::null());
        cmd
    }
}

fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The JSON a command prints; for commands that stream status lines first, the last line.
fn json(cmd: &mut Command) -> serde_json::Value {
    let (stdout, _) = run(cmd.arg("--json"));
    serde_json::from_str(&stdout)
        .or_else(|_| serde_json::from_str(stdout.lines().last().unwrap_or_default()))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn write_tree(root: &Path, files: usize, size: usize, seed: u64) {
    fs::create_dir_all(root.join("sub")).unwrap();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..files {
        let mut data = vec![0u8; size];
        for byte in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        let dir = if i % 2 == 0 {
            root.to_path_buf()
        } else {
            root.join("sub")
        };
        fs::write(dir.join(format!("f{i:03}")), data).unwrap();
    }
}

fn same_files(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn restore_and_compare(env: &Env, repo: &str, password: &str, snapshot: &str, source: &Path) {
    let target = env.path(&format!("restore-{}", rand_suffix()));
    run(env
        .cmd_with(repo, password)
        .args(["restore", snapshot, "--target"])
        .arg(&target));
    same_files(source, &target.join(source.strip_prefix("/").unwrap()));
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn init_backup_restore_on_s3_reports_requests() {
    let Some(repo) = common::s3_repository("basic") else {
        return;
    };
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 6, 700_000, 1);
    run(env
        .cmd(&repo)
        .args(["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"]));
    // A second init of the same prefix is refused (conditional create of the config).
    let out = env
        .cmd(&repo)
        .args(["init", "--insecure-kdf-for-tests"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a repository"));

    let outcome = json(env.cmd(&repo).arg("backup").arg(&source));
    let puts = outcome["requests"]["put"].as_u64().unwrap();
    assert_eq!(outcome["requests"]["retries"], 0, "{outcome}");
    assert_eq!(outcome["requests"]["delete"], 0, "{outcome}");
    let packs = outcome["summary"]["packs_written"].as_u64().unwrap();
    assert!(packs >= 4, "{outcome}");
    // Packs, at least one index object and the snapshot: nothing is written twice.
    assert!(puts > packs && puts <= packs + 4, "{outcome}");
    // The text summary counts requests too.
    let (stdout, _) = run(env.cmd(&repo).arg("backup").arg(&source));
    // Nothing changed but perhaps the times of the path's ancestors (other tests use /tmp):
    // the snapshot, and at most a tree pack and an index object.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("requests: "))
        .unwrap_or_else(|| panic!("no request line in {stdout}"));
    let puts: u64 = line["requests: ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((1..=3).contains(&puts), "{line}");
    assert!(line.ends_with("0 DELETE (0 retried)"), "{line}");
    restore_and_compare(&env, &repo, "password", "latest", &source);
    let (stdout, _) = run(env.cmd(&repo).args(["check", "--read-data"]));
    println!("{stdout}");
    let snapshots = json(env.cmd(&repo).arg("snapshots"));
    assert_eq!(snapshots.as_array().unwrap().len(), 2);
}

#[test]
fn copy_local_to_s3_and_back_is_idempotent_and_refuses_foreign_keys() {
    let Some(remote) = common::s3_repository("copy") else {
        return;
    };
    let env = Env::new();
    let local = env.path("local").to_str().unwrap().to_string();
    let source = env.path("source");
    write_tree(&source, 4, 500_000, 2);
    run(env
        .cmd(&local)
        .args(["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"]));
    run(env.cmd(&local).arg("backup").arg(&source));
    write_tree(&source.join("more"), 2, 300_000, 3);
    run(env.cmd(&local).arg("backup").arg(&source));

    // The S3 repository shares the local one's content keys, under its own password.
    run(env
        .cmd_with(&remote, "password2")
        .args([
            "init",
            "--insecure-kdf-for-tests",
            "--copy-content-keys-from",
            &local,
        ])
        .env("LIFEBOAT_FROM_PASSWORD_FILE", env.path("password")));

    // Latest only, then all: the first run's snapshot is skipped, its blobs are not sent again.
    let first = json(
        env.cmd(&local)
            .args(["copy", "--to", &remote, "latest"])
            .env("LIFEBOAT_TO_PASSWORD_FILE", env.path("password2")),
    );
    assert_eq!(first["copied"].as_array().unwrap().len(), 1, "{first}");
    let all = json(
        env.cmd(&local)
            .args(["copy", "--to", &remote])
            .arg("--to-password-file")
            .arg(env.path("password2")),
    );
    assert_eq!(all["copied"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all["skipped"].as_array().unwrap().len(), 1, "{all}");
    assert!(all["blobs_present"].as_u64().unwrap() > 0, "{all}");
    assert!(
        all["bytes_copied"].as_u64() < first["bytes_copied"].as_u64(),
        "{all}"
    );
    // Nothing left to do: no blob moves, nothing is written.
    let again = json(
        env.cmd(&local)
            .args(["copy", "--to", &remote])
            .env("LIFEBOAT_TO_PASSWORD_FILE", env.path("password2")),
    );
    assert!(again["copied"].as_array().unwrap().is_empty(), "{again}");
    assert_eq!(again["requests"]["destination"]["put"], 0, "{again}");

    restore_and_compare(&env, &remote, "password2", "latest", &source);
    run(env
        .cmd_with(&remote, "password2")
        .args(["check", "--read-data"]));

    // S3 → a second local repository, then restore from there.
    let back = env.path("back").to_str().unwrap().to_string();
    run(env
        .cmd(&back)
        .args([
            "init",
            "--insecure-kdf-for-tests",
            "--copy-content-keys-from",
            &remote,
        ])
        .arg("--from-password-file")
        .arg(env.path("password2")));
    let out = json(
        env.cmd_with(&remote, "password2")
            .args(["copy", "--to", &back])
            .env("LIFEBOAT_TO_PASSWORD_FILE", env.path("password")),
    );
    assert_eq!(out["copied"].as_array().unwrap().len(), 2, "{out}");
    restore_and_compare(&env, &back, "password", "latest", &source);

    // A repository with its own content keys: refused, with the way out in the message.
    let stranger = env.path("stranger").to_str().unwrap().to_string();
    run(env
        .cmd(&stranger)
        .args(["init", "--insecure-kdf-for-tests"]));
    let out = env
        .cmd(&local)
        .args(["copy", "--to", &stranger])
        .env("LIFEBOAT_TO_PASSWORD_FILE", env.path("password"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("init --copy-content-keys-from") && stderr.contains(&local),
        "{stderr}"
    );
}

#[test]
fn unreachable_endpoint_fails_with_its_name_and_exit_code_1() {
    if common::s3_repository("unreachable").is_none() {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = Env::new();
    let repo = format!("s3:http://127.0.0.1:{port}/lifeboat-test/nothing");
    let out = env
        .cmd(&repo)
        .arg("snapshots")
        .env("LIFEBOAT_RETRIES", "2")
        .env("LIFEBOAT_RETRY_MIN_SECS", "0.01")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    // Bad settings are refused with the variable's name.
    let out = env
        .cmd(&repo)
        .arg("snapshots")
        .env("LIFEBOAT_RETRIES", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LIFEBOAT_RETRIES"));
}

/// Objects under a prefix of an S3 repository, seen through the storage layer.
fn count_objects(repo: &str, prefix: &str) -> usize {
    lifeboat_storage::Storage::open(repo)
        .unwrap()
        .list(prefix)
        .unwrap()
        .len()
}

#[test]
fn sigkill_during_an_s3_backup_leaves_a_valid_repository() {
    let Some(base) = common::s3_repository("sigkill") else {
        return;
    };
    let env = Env::new();
    let source = env.path("source");
    // 64 MiB of incompressible data: with 1 MiB packs an index object is written every 32
    // packs, so the first one appears halfway through.
    write_tree(&source, 64, 1 << 20, 9);
    for point in ["first-pack", "first-index"] {
        let repo = format!("{base}-{point}");
        run(env
            .cmd(&repo)
            .args(["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"]));
        let mut child = env
            .cmd(&repo)
            .arg("backup")
            .arg(&source)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let prefix = if point == "first-pack" {
            "data/"
        } else {
            "index/"
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while count_objects(&repo, prefix) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        let indexed = count_objects(&repo, "index/");
        let packs = count_objects(&repo, "data/");
        assert!(packs > 0, "{point}: no pack was stored before the kill");

        // Valid after the kill: no snapshot from the killed run, and check --read-data is clean.
        let snapshots = json(env.cmd(&repo).arg("snapshots"));
        assert!(
            finished || snapshots.as_array().unwrap().is_empty(),
            "{point}: a killed backup left a snapshot"
        );
        run(env.cmd(&repo).args(["check", "--read-data"]));

        // The next backup completes, reusing what was indexed, and restores bit for bit.
        let out = json(env.cmd(&repo).arg("backup").arg(&source));
        let added = out["summary"]["bytes_added"].as_u64().unwrap();
        println!(
            "kill at {point}: finished={finished} packs={packs} index objects={indexed}, next backup added {added} bytes"
        );
        if point == "first-index" && !finished {
            assert!(indexed > 0);
            assert!(
                added < (64 << 20) - (30 << 20),
                "{point}: indexed data was not reused ({added} bytes added)"
            );
        }
        restore_and_compare(&env, &repo, "password", "latest", &source);
        run(env.cmd(&repo).args(["check", "--read-data"]));
    }
}
