//! The `lifeboat` binary against Azure Blob Storage (Azurite on loopback): the second-provider
//! story of a backup to a local repository copied to Azure, restored from there, and checked.
//!
//! `.ci/run` starts Azurite and sets `LIFEBOAT_TEST_AZURE_ENDPOINT`,
//! `LIFEBOAT_TEST_AZURE_CONTAINER` and `AZURE_STORAGE_KEY`; without them the test is skipped.

use predicates::prelude::*;

mod common;
use common::*;

fn azure_repository(test: &str) -> Option<String> {
    let Ok(endpoint) = std::env::var("LIFEBOAT_TEST_AZURE_ENDPOINT") else {
        println!("SKIPPED {test}: LIFEBOAT_TEST_AZURE_ENDPOINT is not set (.ci/run sets it)");
        return None;
    };
    let container =
        std::env::var("LIFEBOAT_TEST_AZURE_CONTAINER").unwrap_or_else(|_| "lifeboat-test".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!(
        "azure:{endpoint}/{container}/cli-{test}-{}-{nanos}",
        std::process::id()
    ))
}

#[test]
fn backup_copy_to_azure_restore_and_check() {
    let Some(url) = azure_repository("copy") else {
        return;
    };
    let local = Env::new();
    local.init();
    let source = local.path("source");
    write_tree(&source, 6, 400_000, 3);
    local.run(&["backup", &text_of(&source)]).success();

    let remote = Env {
        repository: Some(url.clone()),
        ..Env::new()
    };
    std::fs::copy(local.password_file(), remote.password_file()).unwrap();
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
            .args(["copy", "--to", &url])
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
