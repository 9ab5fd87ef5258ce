//! End-to-end test of damage: a flipped bit and a lost pack are named by `check`, `repair
//! snapshots` keeps everything intact and names what is lost, and the next backup heals.

use std::fs;
use std::path::{Path, PathBuf};

use predicates::prelude::*;

mod common;
use common::*;

/// Pack files under `data/`, with the type of the blobs each holds.
fn packs(env: &Env) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for dir in fs::read_dir(env.repo().join("data")).unwrap() {
        for file in fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let id = path.file_name().unwrap().to_str().unwrap().to_string();
            let out = env.cmd().args(["cat", "pack", &id]).output().unwrap();
            assert!(out.status.success());
            let header: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let kind = header["blobs"][0]["type"].as_str().unwrap().to_string();
            found.push((path, kind));
        }
    }
    found.sort();
    found
}

fn key_of(env: &Env, pack: &Path) -> String {
    pack.strip_prefix(env.repo())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_flipped_bit_and_a_lost_pack_are_named_and_repair_keeps_the_rest() {
    let env = Env::new();
    env.init();
    let source = env.path("source");
    write_tree(&source, 12, 300_000, 9);
    env.run(&["backup", &text_of(&source)]).success();

    let data_packs: Vec<PathBuf> = packs(&env)
        .into_iter()
        .filter(|(_, kind)| kind == "data")
        .map(|(path, _)| path)
        .collect();
    assert!(data_packs.len() >= 3, "{data_packs:?}");
    let flipped = &data_packs[0];
    let deleted = &data_packs[1];
    let mut bytes = fs::read(flipped).unwrap();
    bytes[50] ^= 0x01;
    fs::write(flipped, bytes).unwrap();
    fs::remove_file(deleted).unwrap();

    env.run(&["check", "--read-data"]).code(1).stderr(
        predicate::str::contains(key_of(&env, flipped))
            .and(predicate::str::contains(key_of(&env, deleted))),
    );

    let dry = env
        .run(&["repair", "snapshots", "--read-data", "--dry-run"])
        .code(3);
    let dry_text = String::from_utf8_lossy(&dry.get_output().stdout).to_string();
    assert!(dry_text.contains("would be lost"), "{dry_text}");
    assert_eq!(env.snapshots().len(), 1, "a dry run writes nothing");

    let out = env
        .cmd()
        .args(["--json", "repair", "snapshots", "--read-data", "--forget"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    let lost: Vec<String> = damaged[0]["lost_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(!lost.is_empty() && lost.len() < 12, "{lost:?}");
    assert!(report["index_entries_removed"].as_u64().unwrap() > 0);

    let snapshots = env.snapshots();
    assert_eq!(snapshots.len(), 1, "the damaged original was removed");
    assert_eq!(snapshots[0]["tags"][0], "repaired");
    env.run(&["check", "--read-data"])
        .success()
        .stdout(predicate::str::contains("no errors found"));

    // The repaired snapshot restores everything that was intact, and nothing else.
    let target = env.path("restored");
    env.run(&["restore", "latest", "--target", &text_of(&target)])
        .success();
    let restored = target.join(source.strip_prefix("/").unwrap());
    let mut intact = 0;
    for file in walk_files(&source) {
        let relative = file.strip_prefix(&source).unwrap();
        let shown = format!("{}/{}", text_of(&source), relative.display());
        if lost.contains(&shown) {
            assert!(!restored.join(relative).exists(), "{shown} was lost");
        } else {
            assert_eq!(
                fs::read(restored.join(relative)).unwrap(),
                fs::read(&file).unwrap()
            );
            intact += 1;
        }
    }
    assert_eq!(intact + lost.len(), 12);

    // Backing up the same data again stores the lost blobs anew.
    env.run(&["backup", &text_of(&source)]).success();
    env.run(&["check", "--read-data"]).success();
    let healed = env.path("healed");
    env.run(&["restore", "latest", "--target", &text_of(&healed)])
        .success();
    same_files(&source, &healed.join(source.strip_prefix("/").unwrap()));
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}
