//! The `lifeboat` binary against Google Cloud Storage (fake-gcs-server on loopback): the second-provider
//! story of a backup to a local repository copied to GCS, restored from there, and checked.
//!
//! `.ci/run` starts fake-gcs-server and sets `LIFEBOAT_TEST_GCS_ENDPOINT`,
//! `LIFEBOAT_TEST_GCS_BUCKET` and `GOOGLE_OAUTH_ACCESS_TOKEN`; without them the test is skipped.

use predicates::prelude::*;

mod common;
use common::*;

fn gcs_repository(test: &str) -> Option<String> {
    let Ok(endpoint) = std::env::var("LIFEBOAT_TEST_GCS_ENDPOINT") else {
        println!("SKIPPED {test}: LIFEBOAT_TEST_GCS_ENDPOINT is not set (.ci/run sets it)");
        return None;
    };
    let container =
        std::env::var("LIFEBOAT_TEST_GCS_BUCKET").unwrap_or_else(|_| "lifeboat-test".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!(
        "gs:{endpoint}/{container}/cli-{test}-{}-{nanos}",
        std::process::id()
    ))
}

#[test]
fn backup_copy_to_gcs_restore_and_check() {
    let Some(url) = gcs_repository("copy") else {
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
