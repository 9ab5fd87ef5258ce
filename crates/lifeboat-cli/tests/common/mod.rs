//! What the end-to-end tests share: a scratch environment that runs the real binary, and
//! helpers to make and compare file trees.
// Each test crate uses its own subset of these.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::cargo::CommandCargoExt;

pub struct Env {
    pub dir: tempfile::TempDir,
    /// A repository URL to use instead of the local `repo` directory (an S3 one).
    pub repository: Option<String>,
}

impl Env {
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            repository: None,
        };
        fs::write(env.password_file(), "a long test password\n").unwrap();
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn password_file(&self) -> PathBuf {
        self.path("password")
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("lifeboat").unwrap();
        cmd.env(
            "LIFEBOAT_REPOSITORY",
            self.repository
                .clone()
                .unwrap_or_else(|| text_of(&self.repo())),
        )
        .env("LIFEBOAT_PASSWORD_FILE", self.password_file())
        .env_remove("LIFEBOAT_PASSWORD_COMMAND")
        .env("XDG_CACHE_HOME", self.path("cache"))
        .env("XDG_CONFIG_HOME", self.path("config-home"))
        .env_remove("LIFEBOAT_CONFIG")
        .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        assert_cmd::assert::OutputAssertExt::assert(self.cmd().args(args))
    }

    pub fn init(&self) {
        self.run(&["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"])
            .success();
    }

    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.cmd().args(["snapshots", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }
}

/// The result of a `--json` command: its last line (status lines come before it).
pub fn summary_of(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("a JSON result line");
    let value: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(value["type"], "summary", "{last}");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let status: serde_json::Value = serde_json::from_str(line).expect("every line is JSON");
        assert!(
            status["type"] == "status" || status["type"] == "summary",
            "{line}"
        );
    }
    value
}

pub fn text_of(path: &Path) -> String {
    path.to_str()
        .expect("temporary paths are UTF-8")
        .to_string()
}

pub fn write_tree(root: &Path, files: usize, size: usize, seed: u8) {
    fs::create_dir_all(root.join("sub")).unwrap();
    for i in 0..files {
        // Mostly incompressible content, so packs fill at a predictable rate.
        let mut data = vec![0u8; size];
        let mut x = u64::from(seed) << 32 | (2 * i as u64 + 1);
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

pub fn same_files(a: &Path, b: &Path) {
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

/// A fresh S3 repository URL on the test server, or `None` (with a line saying so) when
/// `.ci/run` did not start one.
pub fn s3_repository(test: &str) -> Option<String> {
    object_store_repository(
        test,
        "s3",
        "LIFEBOAT_TEST_S3_ENDPOINT",
        "LIFEBOAT_TEST_S3_BUCKET",
    )
}

/// A fresh repository URL (`scheme:endpoint/bucket/cli-…`) on the object store `.ci/run`
/// started, whose endpoint and bucket (or container) are in the variables named; `None`, after a
/// SKIPPED line, when the endpoint variable is unset.
pub fn object_store_repository(
    test: &str,
    scheme: &str,
    endpoint_var: &str,
    bucket_var: &str,
) -> Option<String> {
    let Ok(endpoint) = std::env::var(endpoint_var) else {
        println!("SKIPPED {test}: {endpoint_var} is not set (.ci/run sets it)");
        return None;
    };
    let bucket = std::env::var(bucket_var).unwrap_or_else(|_| "lifeboat-test".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!(
        "{scheme}:{endpoint}/{bucket}/cli-{test}-{}-{nanos}",
        std::process::id()
    ))
}

/// The second-provider story against the repository at `url`: a local backup, a repository at
/// `url` sharing its content keys (a second init refused), a copy twice (the second moves
/// nothing), a restore from there equal to the source, `check --read-data`, and a backup
/// straight to it.
pub fn second_site_round_trip(url: &str) {
    use predicates::prelude::*;
    let local = Env::new();
    local.init();
    let source = local.path("source");
    write_tree(&source, 6, 400_000, 3);
    local.run(&["backup", &text_of(&source)]).success();

    let remote = Env {
        repository: Some(url.to_string()),
        ..Env::new()
    };
    fs::copy(local.password_file(), remote.password_file()).unwrap();
    let init = remote
        .cmd()
        .args([
            "init",
            "--insecure-kdf-for-tests",
            "--copy-content-keys-from",
        ])
        .arg(local.repo())
        .env("LIFEBOAT_FROM_PASSWORD_FILE", local.password_file())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    remote
        .run(&["init", "--insecure-kdf-for-tests"])
        .code(1)
        .stderr(predicate::str::contains("already holds a repository"));
    let copy = || {
        let out = local
            .cmd()
            .args(["copy", "--to", url])
            .env("LIFEBOAT_TO_PASSWORD_FILE", remote.password_file())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    copy();
    assert_eq!(remote.snapshots().len(), 1);
    // Copying again moves nothing: the snapshot is already there.
    let again = copy();
    assert!(
        again.contains("0 snapshots copied, 1 already there"),
        "{again}"
    );
    assert_eq!(remote.snapshots().len(), 1);

    let target = remote.path("restored");
    remote
        .run(&["restore", "latest", "--target", &text_of(&target)])
        .success();
    same_files(&source, &target.join(source.strip_prefix("/").unwrap()));
    remote
        .run(&["check", "--read-data"])
        .success()
        .stdout(predicate::str::contains("no errors found"));
    remote.run(&["backup", &text_of(&source)]).success();
    assert_eq!(remote.snapshots().len(), 2);
}
