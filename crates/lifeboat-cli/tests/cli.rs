//! End-to-end tests of the `lifeboat` binary: the commands a user types, their output and exit
//! codes, and what survives `kill -9` in the middle of a backup.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use predicates::prelude::*;

mod common;
use common::*;

#[test]
fn init_backup_snapshots_restore_cat() {
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 6, 10_000, 1);
    env.init();
    env.run(&["init", "--insecure-kdf-for-tests"])
        .failure()
        .stderr(predicate::str::contains("already holds a repository"));

    let out = env
        .cmd()
        .args(["backup", "--json", "--tag", "nightly", "--host", "web1"])
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = summary_of(&out.stdout);
    assert_eq!(summary["summary"]["files_new"], 6);
    assert!(summary["requests"]["put"].as_u64().unwrap() >= 3);

    let text = env
        .cmd()
        .arg("backup")
        .arg(&source)
        .arg("--host")
        .arg("web1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("6 unchanged"));

    let snapshots = env.snapshots();
    assert_eq!(snapshots.len(), 2);
    assert_eq!(snapshots[0]["hostname"], "web1");
    assert_eq!(snapshots[0]["tags"][0], "nightly");
    assert_eq!(snapshots[0]["source"], "files");
    env.run(&["snapshots"])
        .success()
        .stdout(predicate::str::contains("web1").and(predicate::str::contains("2 snapshots")));

    let first = snapshots[0]["id"].as_str().unwrap();
    env.run(&[
        "restore",
        &first[..8],
        "--target",
        &text_of(&env.path("out")),
    ])
    .success();
    same_files(
        &source,
        &env.path("out").join(source.strip_prefix("/").unwrap()),
    );

    env.run(&["restore", "latest", "--target", &text_of(&env.path("out"))])
        .failure()
        .stderr(predicate::str::contains("not empty"));
    // --delta restores over it, keeping what is unchanged and rewriting what is not.
    let out = env
        .cmd()
        .args(["--json", "restore", "latest", "--delta", "--target"])
        .arg(env.path("out"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = summary_of(&out.stdout);
    assert_eq!(restored["summary"]["reused_files"], 6, "{restored}");
    assert_eq!(restored["summary"]["written_files"], 0, "{restored}");
    let changed = env
        .path("out")
        .join(source.strip_prefix("/").unwrap())
        .join("f000");
    let mut bytes = fs::read(&changed).unwrap();
    bytes[0] ^= 1;
    fs::write(&changed, bytes).unwrap();
    env.run(&[
        "restore",
        "latest",
        "--delta",
        "--target",
        &text_of(&env.path("out")),
    ])
    .success()
    .stdout(predicate::str::contains("delta: 5 files").and(predicate::str::contains("1 files")));
    same_files(
        &source,
        &env.path("out").join(source.strip_prefix("/").unwrap()),
    );
    env.run(&[
        "restore",
        "latest",
        "--include",
        "**/f001",
        "--target",
        &text_of(&env.path("part")),
    ])
    .success();
    let part = env.path("part").join(source.strip_prefix("/").unwrap());
    assert!(part.join("sub/f001").exists() && !part.join("f000").exists());
    env.run(&[
        "restore",
        "latest",
        "--include",
        "/nothing/here",
        "--target",
        &text_of(&env.path("none")),
    ])
    .code(3)
    .stderr(predicate::str::contains("no entry of the snapshot matches"));
    env.run(&["restore", "ffffffff", "--target", &text_of(&env.path("x"))])
        .failure()
        .stderr(predicate::str::contains("no snapshot id starts with"));

    env.run(&["cat", "config"])
        .success()
        .stdout(predicate::str::contains("chunker"));
    env.run(&["cat", "snapshot", "latest"])
        .success()
        .stdout(predicate::str::contains("\"tree\""));
    let tree = snapshots[0]["tree"].as_str().unwrap().to_string();
    env.run(&["cat", "tree", &tree])
        .success()
        .stdout(predicate::str::contains("\"nodes\""));
    env.run(&["cat", "bogus"])
        .failure()
        .stderr(predicate::str::contains("unknown object kind"));
}

#[test]
fn password_sources_and_errors() {
    let env = Env::new();
    env.init();
    env.cmd()
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .args([
            "--password-command",
            "echo a long test password",
            "snapshots",
        ])
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("password command works");
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env("LIFEBOAT_PASSWORD_FILE", env.path("wrong"))
            .arg("snapshots"),
    )
    .failure()
    .stderr(predicate::str::contains("cannot read password file"));
    fs::write(env.path("wrong"), "not the password").unwrap();
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env("LIFEBOAT_PASSWORD_FILE", env.path("wrong"))
            .arg("snapshots"),
    )
    .code(1)
    .stderr(predicate::str::contains("wrong password"));
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env_remove("LIFEBOAT_PASSWORD_FILE")
            .arg("snapshots"),
    )
    .failure()
    .stderr(predicate::str::contains("no password given"));
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env("LIFEBOAT_REPOSITORY", env.path("missing"))
            .arg("snapshots"),
    )
    .failure()
    .stderr(predicate::str::contains("does not exist"));
    fs::create_dir(env.path("empty")).unwrap();
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env("LIFEBOAT_REPOSITORY", env.path("empty"))
            .arg("snapshots"),
    )
    .failure()
    .stderr(predicate::str::contains("is not a Lifeboat repository"));
}

/// An unreadable file is reported, counted, left out, and the exit code says "partial".
/// Permissions do not stop root, so as root the backup runs as `nobody`.
#[test]
fn unreadable_file_gives_partial_exit_code() {
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 3, 1000, 2);
    fs::write(source.join("secret"), "no access").unwrap();
    env.init();
    let as_root = rustix::process::geteuid().is_root();
    let mut cmd = if as_root {
        // `nobody` needs to reach everything but the secret file.
        for path in [env.dir.path(), &env.repo()] {
            Command::new("chmod")
                .arg("-R")
                .arg("a+rwX")
                .arg(path)
                .status()
                .unwrap();
        }
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(assert_cmd::cargo::cargo_bin("lifeboat"));
        cmd.env("LIFEBOAT_REPOSITORY", env.repo())
            .env("LIFEBOAT_PASSWORD_FILE", env.password_file());
        cmd
    } else {
        env.cmd()
    };
    fs::set_permissions(
        source.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let out = cmd
        .arg("backup")
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("secret") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    let snapshots = env.snapshots();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0]["summary"]["errors"], 1);
    assert_eq!(snapshots[0]["summary"]["files_new"], 3);
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// `kill -9` at several moments of a real backup (before anything is stored, once packs exist
/// but no index, once an index object exists, and at a fixed delay): the repository always
/// reads fine, the next backup completes and reuses what the killed one indexed, and the result
/// restores exactly.
#[test]
fn sigkill_during_backup_leaves_a_valid_repository() {
    let env = Env::new();
    let source = env.path("source");
    // 48 MiB of incompressible data: with 1 MiB packs an index object is written every 32 packs.
    write_tree(&source, 48, 1 << 20, 3);
    let total = 48u64 << 20;
    for point in ["start", "first-pack", "first-index", "delay"] {
        let repo = env.path(&format!("repo-{point}"));
        let cmd = |args: &[&str]| {
            let mut cmd = env.cmd();
            cmd.env("LIFEBOAT_REPOSITORY", &repo).args(args);
            cmd
        };
        assert!(
            cmd(&["init", "--insecure-kdf-for-tests", "--pack-size-mib", "1"])
                .status()
                .unwrap()
                .success()
        );
        let mut child = cmd(&["backup"])
            .arg(&source)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let watch = |dir: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while count_files(&repo.join(dir)) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(500));
            }
        };
        match point {
            "start" => {}
            "first-pack" => watch("data"),
            "first-index" => watch("index"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut indexed = count_files(&repo.join("index"));
        let packs = count_files(&repo.join("data"));
        if !finished && indexed == 0 && packs > 0 {
            // Packs no index names: `repair index` takes them in, so the next backup reuses them.
            assert!(
                cmd(&["repair", "index"]).status().unwrap().success(),
                "{point}: repair index"
            );
            indexed = count_files(&repo.join("index"));
            assert!(
                indexed > 0,
                "{point}: repair wrote no index for {packs} packs"
            );
        }

        let out = cmd(&["snapshots", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let snapshots: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            finished || snapshots.is_empty(),
            "{point}: a killed backup left a snapshot"
        );

        let out = cmd(&["backup", "--json"]).arg(&source).output().unwrap();
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = summary_of(&out.stdout);
        let added = summary["summary"]["bytes_added"].as_u64().unwrap();
        eprintln!(
            "kill at {point}: finished={finished} index objects left={indexed}, next backup added {added} bytes"
        );
        if point == "first-index" {
            assert!(
                added < total - (30 << 20),
                "{point}: indexed data was not reused ({added} bytes added)"
            );
        } else if indexed > 0 && !finished {
            assert!(
                added < total,
                "{point}: repaired index was not reused ({added} bytes added)"
            );
        }
        let target = env.path(&format!("restore-{point}"));
        assert!(
            cmd(&["restore", "latest", "--target"])
                .arg(&target)
                .status()
                .unwrap()
                .success()
        );
        same_files(&source, &target.join(source.strip_prefix("/").unwrap()));
    }
}

#[test]
fn forget_applies_a_policy_and_explains_it() {
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 2, 1000, 4);
    env.init();
    for tag in ["monthly", "other", "other"] {
        env.run(&["backup", "--tag", tag, &text_of(&source)])
            .success();
    }
    assert_eq!(env.snapshots().len(), 3);
    env.run(&["forget"])
        .failure()
        .stderr(predicate::str::contains(
            "refusing to forget every snapshot",
        ));
    env.run(&[
        "forget",
        "--keep-last",
        "1",
        "--keep-tag",
        "monthly",
        "--dry-run",
    ])
    .success()
    .stdout(
        predicate::str::contains("last 1")
            .and(predicate::str::contains("tag monthly"))
            .and(predicate::str::contains("1 would be removed (dry run)")),
    );
    assert_eq!(env.snapshots().len(), 3, "a dry run removes nothing");
    env.run(&["forget", "--keep-last", "1", "--keep-tag", "monthly"])
        .success()
        .stdout(predicate::str::contains("1 removed"));
    let left = env.snapshots();
    assert_eq!(left.len(), 2);
    assert!(left.iter().any(|s| s["tags"][0] == "monthly"));
    env.run(&["forget", "--keep-daily", "lots"]).code(2);
    env.run(&["forget", "--keep-within", "7x"]).code(2);
    env.run(&["check", "--read-data"]).success();
    env.run(&["restore", "latest", "--target", &text_of(&env.path("out"))])
        .success();
}

#[test]
fn keys_add_list_remove_and_passwd() {
    let env = Env::new();
    env.init();
    let second = env.path("second");
    fs::write(&second, "another long password\n").unwrap();
    let new = |args: &[&str]| {
        let mut cmd = env.cmd();
        cmd.args(args)
            .arg("--new-password-file")
            .arg(&second)
            .arg("--insecure-kdf-for-tests");
        assert_cmd::assert::OutputAssertExt::assert(&mut cmd)
    };
    new(&["key", "add"])
        .success()
        .stdout(predicate::str::contains("added key"));
    let list = env.cmd().args(["key", "list", "--json"]).output().unwrap();
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(keys.len(), 2);
    let other = keys.iter().find(|k| k["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The second password opens the repository too.
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env("LIFEBOAT_PASSWORD_FILE", &second)
            .arg("snapshots"),
    )
    .success();
    // Remove the second key; the last one cannot be removed.
    env.run(&["key", "remove", &other[..12]]).success();
    let current = env.cmd().args(["key", "list", "--json"]).output().unwrap();
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&current.stdout).unwrap();
    let only = keys[0]["id"].as_str().unwrap().to_string();
    env.run(&["key", "remove", &only])
        .failure()
        .stderr(predicate::str::contains("last key"));
    // passwd: afterwards only the new password opens the repository.
    new(&["key", "passwd"])
        .success()
        .stdout(predicate::str::contains("password changed"));
    env.run(&["snapshots"])
        .failure()
        .stderr(predicate::str::contains("wrong password"));
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env("LIFEBOAT_PASSWORD_FILE", &second)
            .arg("snapshots"),
    )
    .success();
}

#[test]
fn a_machine_key_opens_the_repository_from_its_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.init();
    let token = env.path("machine-token");
    env.run(&["key", "add", "--machine", "--output", &text_of(&token)])
        .success()
        .stdout(predicate::str::contains("added machine key"));
    let mode = fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is the owner's only");
    assert!(fs::read_to_string(&token).unwrap().starts_with("lbk1_"));
    // A token file is never replaced.
    env.run(&["key", "add", "--machine", "--output", &text_of(&token)])
        .failure()
        .stderr(predicate::str::contains("must not exist yet"));

    let list = env.cmd().args(["key", "list", "--json"]).output().unwrap();
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    let kinds: Vec<&str> = keys.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "machine").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "password").count(), 1);

    let by_token = env
        .cmd()
        .env("LIFEBOAT_PASSWORD_FILE", &token)
        .args(["key", "list", "--json"])
        .output()
        .unwrap();
    assert!(by_token.status.success());
    let keys: Vec<serde_json::Value> = serde_json::from_slice(&by_token.stdout).unwrap();
    let current = keys.iter().find(|k| k["current"] == true).unwrap();
    assert_eq!(current["kind"], "machine");
    // Without --output the token goes to standard output, for a secret manager to take.
    let printed = env
        .cmd()
        .args(["key", "add", "--machine"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&printed.stdout).starts_with("lbk1_"));
    // A made-up token opens nothing.
    let fake = env.path("fake-token");
    fs::write(&fake, format!("lbk1_{}\n", "A".repeat(43))).unwrap();
    assert_cmd::assert::OutputAssertExt::assert(
        env.cmd()
            .env("LIFEBOAT_PASSWORD_FILE", &fake)
            .arg("snapshots"),
    )
    .failure()
    .stderr(predicate::str::contains("wrong password"));
}

#[test]
fn ls_dump_diff_stats_browse_without_restoring() {
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 4, 5000, 5);
    env.init();
    env.run(&["backup", &text_of(&source)]).success();
    fs::write(source.join("f000"), "changed content").unwrap();
    fs::remove_file(source.join("sub/f001")).unwrap();
    fs::write(source.join("new"), "new file").unwrap();
    std::fs::set_permissions(
        source.join("f002"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    env.run(&["backup", &text_of(&source)]).success();
    let snapshots = env.snapshots();
    let (first, second) = (
        snapshots[0]["id"].as_str().unwrap(),
        snapshots[1]["id"].as_str().unwrap(),
    );

    let root = text_of(&source);
    env.run(&["ls", "latest", &root]).success().stdout(
        predicate::str::contains(format!("{root}/new"))
            .and(predicate::str::contains(format!("{root}/sub/f003"))),
    );
    env.run(&["ls", "--long", first, &format!("{root}/sub")])
        .success()
        .stdout(predicate::str::contains("-rw-").and(predicate::str::contains("5000")));
    env.run(&["ls", "latest", "/no/such/path"])
        .failure()
        .stderr(predicate::str::contains("is not in snapshot"));

    env.run(&["dump", first, &format!("{root}/f000")])
        .success()
        .stdout(predicate::function(|out: &[u8]| out.len() == 5000));
    env.run(&["dump", "latest", &format!("{root}/f000")])
        .success()
        .stdout("changed content");
    env.run(&["dump", "latest", &root])
        .failure()
        .stderr(predicate::str::contains("not a file"));

    env.run(&["diff", first, second]).success().stdout(
        predicate::str::contains(format!("+    {root}/new"))
            .and(predicate::str::contains(format!("-    {root}/sub/f001")))
            .and(predicate::str::contains(format!("M    {root}/f000")))
            .and(predicate::str::contains(format!("U    {root}/f002")))
            .and(predicate::str::contains("1 added, 1 removed")),
    );

    let out = env.cmd().args(["stats", "--json"]).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["snapshots"], 2);
    assert_eq!(stats["files"], 8, "4 files in each snapshot");
    // Restore size counts every snapshot in full: 4 × 5000 bytes, then 15 + 2 × 5000 + 8.
    assert_eq!(stats["restore_size"], 30_023);
    // Unique data is stored once: 4 × 5000 + 15 + 8 bytes, plus the trees.
    let unique = stats["unique_raw_size"].as_u64().unwrap();
    assert!((20_023..30_023).contains(&unique), "{stats}");
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.0, "{stats}");
    env.run(&["stats", "latest"])
        .success()
        .stdout(predicate::str::contains("deduplication"));
}

#[test]
fn backup_inputs_stdin_files_from_and_excludes() {
    let env = Env::new();
    env.init();
    let mut child = env
        .cmd()
        .args(["backup", "--stdin", "--stdin-filename", "db.sql", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"CREATE TABLE t (x int);\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    env.run(&["dump", "latest", "/db.sql"])
        .success()
        .stdout("CREATE TABLE t (x int);\n");
    env.run(&["backup", "--stdin", "--stdin-filename", "a/b"])
        .failure()
        .stderr(predicate::str::contains("plain name"));

    let source = env.path("source");
    write_tree(&source.join("dry"), 3, 20_000, 9);
    let packs_before = count_files(&env.repo().join("data"));
    let out = env
        .cmd()
        .args([
            "backup",
            "--dry-run",
            "--json",
            &text_of(&source.join("dry")),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = summary_of(&out.stdout);
    assert!(
        summary["summary"]["bytes_added"].as_u64().unwrap() >= 60_000,
        "{summary}"
    );
    assert_eq!(
        count_files(&env.repo().join("data")),
        packs_before,
        "a dry run stores nothing"
    );
    assert_eq!(env.snapshots().len(), 1, "and writes no snapshot");
    fs::remove_dir_all(source.join("dry")).unwrap();
    for dir in ["keep", "skip-marked", "cache", "fake-cache", "other"] {
        fs::create_dir_all(source.join(dir)).unwrap();
        fs::write(source.join(dir).join("data"), dir).unwrap();
    }
    fs::write(source.join("skip-marked/.nobackup"), "").unwrap();
    fs::write(
        source.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(source.join("fake-cache/CACHEDIR.TAG"), "not a real tag").unwrap();
    fs::write(source.join("keep/big.tmp"), "temporary").unwrap();
    let list = env.path("list");
    fs::write(
        &list,
        format!(
            "# what to back up\n{}/keep\n{}/skip-marked\n{}/cache\n{}/fake-cache\n",
            source.display(),
            source.display(),
            source.display(),
            source.display()
        ),
    )
    .unwrap();
    let excludes = env.path("excludes");
    fs::write(&excludes, "# temporary files\n*.tmp\n").unwrap();
    env.run(&[
        "backup",
        "--files-from",
        &text_of(&list),
        "--exclude-file",
        &text_of(&excludes),
        "--exclude-if-present",
        ".nobackup",
        "--exclude-caches",
    ])
    .success();
    let out = env.cmd().args(["ls", "latest"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let root = text_of(&source);
    assert!(listing.contains(&format!("{root}/keep/data")), "{listing}");
    assert!(
        listing.contains(&format!("{root}/fake-cache/data")),
        "{listing}"
    );
    assert!(
        !listing.contains("big.tmp") && !listing.contains("other"),
        "{listing}"
    );
    // Explicitly named directories are backed up whatever their markers say; markers apply to
    // what is found below them.
    assert!(
        listing.contains(&format!("{root}/skip-marked")),
        "{listing}"
    );
    env.run(&[
        "backup",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-caches",
        &root,
    ])
    .success();
    let out = env.cmd().args(["ls", "latest"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.contains("skip-marked") && !listing.contains(&format!("{root}/cache")),
        "{listing}"
    );
    assert!(listing.contains(&format!("{root}/other/data")), "{listing}");
}

#[test]
fn filters_tags_find_and_completions() {
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 3, 100, 6);
    fs::write(source.join("settings.toml"), "x = 1").unwrap();
    env.init();
    env.run(&[
        "backup",
        "--host",
        "web1",
        "--tag",
        "daily",
        &text_of(&source),
    ])
    .success();
    env.run(&["backup", "--host", "db1", &text_of(&source)])
        .success();
    let count = |args: &[&str]| {
        let out = env
            .cmd()
            .arg("snapshots")
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .len()
    };
    assert_eq!(count(&[]), 2);
    assert_eq!(count(&["--host", "web1"]), 1);
    assert_eq!(count(&["--tag", "daily"]), 1);
    assert_eq!(count(&["--path", &text_of(&source)]), 2);
    assert_eq!(count(&["--path", "/elsewhere"]), 0);

    env.run(&["tag", "--host", "db1", "--add", "weekly", "--add", "db"])
        .success()
        .stdout(predicate::str::contains("1 snapshots changed"));
    assert_eq!(count(&["--tag", "weekly"]), 1);
    env.run(&["tag", "latest", "--remove", "db"]).success();
    let db = env
        .cmd()
        .args(["snapshots", "--json", "--host", "db1"])
        .output()
        .unwrap();
    let db: Vec<serde_json::Value> = serde_json::from_slice(&db.stdout).unwrap();
    assert_eq!(db[0]["tags"], serde_json::json!(["weekly"]));
    env.run(&["tag", "--set", "", "--host", "db1"]).success();
    assert_eq!(count(&["--tag", "weekly"]), 0);
    env.run(&["tag", "latest"])
        .failure()
        .stderr(predicate::str::contains("nothing to change"));

    env.run(&["find", "*.toml"])
        .success()
        .stdout(predicate::str::contains("settings.toml"));
    env.run(&["find", "*.toml", "--host", "web1"])
        .success()
        .stdout(predicate::function(|out: &str| out.lines().count() == 1));
    env.run(&["find", "*.nothing"])
        .code(3)
        .stderr(predicate::str::contains("no entry matches"));

    // forget judges only the filtered snapshots.
    env.run(&["forget", "--host", "web1", "--keep-tag", "none"])
        .success();
    assert_eq!(count(&[]), 1);
    assert_eq!(count(&["--host", "db1"]), 1);

    env.run(&["completions", "bash"])
        .success()
        .stdout(predicate::str::contains("lifeboat"));
}

/// Ctrl-C (SIGINT) stops a backup cleanly: exit code 130, no snapshot, and what was stored is
/// indexed so the next backup reuses it.
#[test]
fn interrupt_stops_cleanly_and_keeps_what_was_stored() {
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 48, 1 << 20, 7);
    env.init();
    let child = env
        .cmd()
        .args(["backup", &text_of(&source)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_files(&env.repo().join("data")) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(0) {
        eprintln!("the backup finished before the signal arrived; nothing to check");
        return;
    }
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("backup cancelled"), "{stderr}");
    assert!(
        env.snapshots().is_empty(),
        "a cancelled backup writes no snapshot"
    );
    assert!(
        count_files(&env.repo().join("index")) > 0,
        "what was stored is indexed"
    );
    let out = env
        .cmd()
        .args(["backup", "--json", &text_of(&source)])
        .output()
        .unwrap();
    let summary: serde_json::Value = summary_of(&out.stdout);
    assert!(
        summary["summary"]["bytes_added"].as_u64().unwrap() < 48 << 20,
        "{summary}"
    );
    env.run(&["check", "--read-data"]).success();
}

#[test]
fn config_file_fills_what_flags_and_environment_leave_unset() {
    let env = Env::new();
    let source = env.path("source");
    write_tree(&source, 2, 100, 8);
    fs::write(source.join("skip.tmp"), "x").unwrap();
    env.init();
    let config = env.path("config.toml");
    fs::write(
        &config,
        format!(
            "repository = \"{}\"\npassword_file = \"{}\"\n[backup]\nexcludes = [\"*.tmp\"]\n[forget]\nkeep_last = 1\nkeep_weekly = \"forever\"\n",
            env.repo().display(),
            env.password_file().display()
        ),
    )
    .unwrap();
    // Neither repository nor password in the environment: both come from the file.
    let bare = |args: &[&str]| {
        let mut cmd = Command::cargo_bin("lifeboat").unwrap();
        cmd.env_remove("LIFEBOAT_REPOSITORY")
            .env_remove("LIFEBOAT_PASSWORD_FILE")
            .env_remove("LIFEBOAT_PASSWORD_COMMAND")
            .env("LIFEBOAT_CONFIG", &config)
            .env("XDG_CACHE_HOME", env.path("cache"))
            .stdin(Stdio::null())
            .args(args);
        assert_cmd::assert::OutputAssertExt::assert(&mut cmd)
    };
    bare(&["backup", &text_of(&source)]).success();
    bare(&["backup", &text_of(&source)]).success();
    bare(&["ls", "latest"])
        .success()
        .stdout(predicate::str::contains("skip.tmp").not());
    bare(&["config", "show"]).success().stdout(
        predicate::str::contains("\"source\": \"config file\"")
            .and(predicate::str::contains("*.tmp")),
    );
    // The environment wins over the file.
    env.run(&["--config", &text_of(&config), "config", "show"])
        .success()
        .stdout(predicate::str::contains("\"source\": \"environment\""));
    // forget without flags applies the file's policy: the newest snapshot (last 1, weekly).
    bare(&["forget"])
        .success()
        .stdout(predicate::str::contains("1 removed"));
    assert_eq!(env.snapshots().len(), 1);

    fs::write(&config, "repository = \"/x\"\nunknown_key = 1\n").unwrap();
    bare(&["snapshots"])
        .failure()
        .stderr(predicate::str::contains("not valid"));
    bare(&["--config", "/no/such/file", "snapshots"])
        .failure()
        .stderr(predicate::str::contains("cannot read config file"));
}

/// `man` prints a manual page, `man --dir` writes one per command, and `-v` explains decisions
/// on standard error without changing standard output.
#[test]
fn manual_pages_and_verbose_output() {
    let env = Env::new();
    env.run(&["man"])
        .success()
        .stdout(predicate::str::contains(".TH lifeboat 1").and(predicate::str::contains("prune")));
    let pages = env.path("man1");
    env.run(&["man", "--dir", &text_of(&pages)]).success();
    for page in [
        "lifeboat.1",
        "lifeboat-backup.1",
        "lifeboat-prune.1",
        "lifeboat-restore.1",
    ] {
        let text = fs::read_to_string(pages.join(page)).unwrap();
        assert!(text.contains(".SH OPTIONS"), "{page}");
    }

    env.init();
    let source = env.path("source");
    write_tree(&source, 2, 100, 4);
    env.run(&["backup", "-v", &text_of(&source)])
        .success()
        .stderr(predicate::str::contains("no parent snapshot"));
    env.run(&["backup", "-v", &text_of(&source)])
        .success()
        .stderr(predicate::str::contains("unchanged files are not read"));
    env.run(&["backup", &text_of(&source)])
        .success()
        .stderr(predicate::str::contains("parent snapshot").not());
    env.run(&["-v", "-q", "snapshots"]).code(2);

    // check reports its result as the last JSON line, like backup and restore.
    let out = env
        .cmd()
        .args(["--json", "check", "--read-data"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let result = summary_of(&out.stdout);
    assert_eq!(result["packs_read"], result["packs"]);
    assert!(result["blobs_verified"].as_u64().unwrap() > 0);
}

/// `lifeboat serve` on a fresh state directory prints the one-time admin password, stops on
/// SIGTERM, and the offline commands work on what it left: `audit verify`, `audit export`,
/// `admin reset-password`, `admin revoke-all`.
#[test]
fn serve_first_start_then_audit_and_admin_commands() {
    let env = Env::new();
    let state = env.path("state");
    let config = env.path("server.toml");
    fs::write(
        &config,
        "[listen]\nhttps = \"127.0.0.1:0\"\nhttp_redirect = false\n",
    )
    .unwrap();
    let mut child = Command::cargo_bin("lifeboat")
        .unwrap()
        .args(["serve", "--state-dir"])
        .arg(&state)
        .arg("--server-config")
        .arg(&config)
        .env("LIFEBOAT_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let done = line.contains("shown only now");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !reader.is_finished() {
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = reader.join().unwrap();
    let text = lines.join("\n");
    assert!(text.contains("listening on https://127.0.0.1:"), "{text}");
    assert!(text.contains("one-time password"), "{text}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "serve exits cleanly on SIGTERM"
    );
    for key in ["server.key", "audit.key", "catalog.db", "tls-cert.pem"] {
        assert!(state.join(key).exists(), "{key}");
    }

    let run = |args: &[&str]| {
        let mut cmd = Command::cargo_bin("lifeboat").unwrap();
        cmd.args(args).arg("--state-dir").arg(&state);
        assert_cmd::Command::from_std(cmd).assert()
    };
    run(&["audit", "verify"])
        .success()
        .stdout(predicate::str::contains("audit log intact"));
    run(&["admin", "reset-password", "admin"])
        .success()
        .stdout(predicate::str::contains("one-time password for admin"));
    run(&["admin", "revoke-all"])
        .success()
        .stdout(predicate::str::contains("revoked"));
    run(&["admin", "reset-password", "nobody"])
        .failure()
        .stderr(predicate::str::contains("nobody"));
    let export = run(&["audit", "export"]).success();
    let out = String::from_utf8(export.get_output().stdout.clone()).unwrap();
    let actions: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        actions,
        ["user.create", "password.reset", "revoke-all"],
        "{out}"
    );
    run(&["audit", "verify"])
        .success()
        .stdout(predicate::str::contains("3 rows"));
}

/// `copy` between two local repositories takes the snapshot filters every command shares.
#[test]
fn copy_takes_snapshot_filters() {
    let env = Env::new();
    env.init();
    let source = env.path("source");
    write_tree(&source, 3, 20_000, 5);
    env.run(&["backup", "--tag", "daily", &text_of(&source)])
        .success();
    write_tree(&source, 3, 20_000, 6);
    env.run(&["backup", "--tag", "monthly", &text_of(&source)])
        .success();
    let second = env.path("second");
    let init = env
        .cmd()
        .args([
            "--repo",
            &text_of(&second),
            "init",
            "--insecure-kdf-for-tests",
        ])
        .args(["--copy-content-keys-from", &text_of(&env.repo())])
        .env("LIFEBOAT_FROM_PASSWORD_FILE", env.password_file())
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let copy = |tag: &str| {
        let out = env
            .cmd()
            .args(["copy", "--to", &text_of(&second), "--tag", tag])
            .env("LIFEBOAT_TO_PASSWORD_FILE", env.password_file())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let monthly = copy("monthly");
    assert!(monthly.contains("1 snapshots copied"), "{monthly}");
    let listed = env
        .cmd()
        .args(["--repo", &text_of(&second), "--json", "snapshots"])
        .output()
        .unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["tags"][0], "monthly");
    let none = copy("yearly");
    assert!(none.contains("0 snapshots copied"), "{none}");
}
