//! End-to-end tests of prune: the two phases as a user sees them, backups from several hosts
//! running while prune runs again and again, and `kill -9` at every step of a prune.

use std::fs;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The shortest grace period prune accepts; the tests wait this long (plus a margin) for sweeps.
const GRACE: &str = "10s";
const GRACE_WAIT: Duration = Duration::from_secs(11);
/// The signal of `std::process::abort`, which the crash points use to die on the spot.
const SIGABRT: i32 = 6;

/// Incompressible bytes determined by `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What host `host` holds at its `round`-th backup: a part that never changes, a part new in
/// every round, a part that comes back every fourth round (so a backup meets data that prune
/// has just doomed) and a part all hosts share.
fn fill(dir: &Path, host: u64, round: u64) {
    if dir.exists() {
        fs::remove_dir_all(dir).unwrap();
    }
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("static"), noise(1000 + host, 300_000)).unwrap();
    fs::write(dir.join("sub/changing"), noise(host << 32 | round, 200_000)).unwrap();
    fs::write(
        dir.join("sub/returning"),
        noise(2000 + (host << 32) + round % 4, 300_000),
    )
    .unwrap();
    fs::write(dir.join("shared"), noise(3000 + round / 2, 250_000)).unwrap();
}

fn json_of(env: &Env, args: &[&str]) -> serde_json::Value {
    let out = env.cmd().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "lifeboat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lifeboat {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn backup(env: &Env, source: &Path, host: &str, tag: &str) -> std::process::Output {
    env.cmd()
        .args(["backup", "--host", host, "--tag", tag])
        .arg(source)
        .output()
        .unwrap()
}

fn packs_in_storage(env: &Env) -> usize {
    fn count(dir: &Path) -> usize {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .map(|p| if p.is_dir() { count(&p) } else { 1 })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(&env.repo().join("data"))
}

/// Restores every snapshot and compares it with the data its host held in that round.
fn every_snapshot_restores_exactly(env: &Env, sources: &Path) {
    let snapshots = env.snapshots();
    assert!(!snapshots.is_empty());
    for snapshot in snapshots {
        let id = snapshot["id"].as_str().unwrap();
        let host: u64 = snapshot["hostname"].as_str().unwrap()[1..].parse().unwrap();
        let round: u64 = snapshot["tags"][0].as_str().unwrap()[1..].parse().unwrap();
        let expected = env.path(&format!("expected-{id}"));
        fill(&expected, host, round);
        let target = env.path(&format!("restored-{id}"));
        env.run(&["restore", id, "--target", &text_of(&target)])
            .success();
        let source = sources.join(format!("h{host}"));
        same_files(&expected, &target.join(source.strip_prefix("/").unwrap()));
        fs::remove_dir_all(&expected).unwrap();
        fs::remove_dir_all(&target).unwrap();
    }
}

#[test]
fn prune_marks_first_and_deletes_one_grace_period_later() {
    let env = Env::new();
    env.init();
    let source = env.path("h1");
    fill(&source, 1, 0);
    assert!(backup(&env, &source, "h1", "r0").status.success());
    fill(&source, 1, 1);
    assert!(backup(&env, &source, "h1", "r1").status.success());
    env.run(&["forget", "--keep-last", "1"]).success();
    let before = packs_in_storage(&env);

    env.run(&["prune", "--grace", "1s"])
        .failure()
        .stderr(predicates::str::contains("at least 10 s"));
    // Settings the flags leave unset come from the config file's [prune] section.
    let config = env.path("config-home/lifeboat/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, "[prune]\ngrace = \"2s\"\n").unwrap();
    env.run(&["prune", "--dry-run"])
        .failure()
        .stderr(predicates::str::contains("[prune] grace"));
    fs::write(&config, "[prune]\ngrace = \"10s\"\nmax_unused = \"0%\"\n").unwrap();
    let dry = json_of(&env, &["prune", "--dry-run", "--grace", GRACE]);
    assert_eq!(dry["dry_run"], true);
    assert!(dry["mark"]["bytes_to_free"].as_u64().unwrap() > 0, "{dry}");
    assert!(dry["mark"]["plan"].is_null());

    let marked = json_of(&env, &["prune", "--grace", GRACE]);
    let to_free = marked["mark"]["bytes_to_free"].as_u64().unwrap();
    assert_eq!(to_free, dry["mark"]["bytes_to_free"].as_u64().unwrap());
    assert!(marked["mark"]["plan"].is_string());
    assert!(
        packs_in_storage(&env) >= before,
        "nothing is deleted at the mark"
    );
    env.run(&["check"])
        .success()
        .stdout(predicates::str::contains("marked by prune"));

    let waiting = env.run(&["prune", "--grace", GRACE]).success();
    let text = String::from_utf8_lossy(&waiting.get_output().stdout).to_string();
    assert!(text.contains("deleted by a prune run after"), "{text}");

    std::thread::sleep(GRACE_WAIT);
    let swept = json_of(&env, &["prune"]);
    assert_eq!(swept["swept"].as_array().unwrap().len(), 1, "{swept}");
    assert_eq!(swept["swept"][0]["bytes_freed"].as_u64().unwrap(), to_free);
    assert!(packs_in_storage(&env) < before);
    env.run(&["check", "--read-data"])
        .success()
        .stdout(predicates::str::contains("no errors found"));
    every_snapshot_restores_exactly(&env, &env.path(""));
}

/// Three hosts back up in a loop, changing their data, while forget and prune run again and
/// again; afterwards every byte checks out and every snapshot left restores exactly.
#[test]
fn backups_from_several_hosts_run_safely_while_prune_runs_repeatedly() {
    concurrent_backups_and_prunes(Env::new(), Duration::from_secs(35));
}

/// The same against the S3 server: a repository is usable from several hosts at once.
#[test]
fn backups_from_several_hosts_run_safely_while_prune_runs_on_s3() {
    let Some(url) = s3_repository("prune-concurrency") else {
        return;
    };
    let env = Env {
        repository: Some(url),
        ..Env::new()
    };
    concurrent_backups_and_prunes(env, Duration::from_secs(30));
}

fn concurrent_backups_and_prunes(env: Env, run_for: Duration) {
    const HOSTS: u64 = 3;
    let env = Arc::new(env);
    env.init();
    let sources = env.path("sources");
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let backups_done = Arc::new(AtomicUsize::new(0));
    // A backup that outlives the grace period (only on a badly overloaded machine, with the
    // 10 s minimum) may fail cleanly, by design: it is refused or cannot read a pack that was
    // swept, and writes no snapshot. That is no loss of data; count it, allow a few.
    let backups_refused = Arc::new(AtomicUsize::new(0));

    let mut hosts = Vec::new();
    for host in 0..HOSTS {
        let env = Arc::clone(&env);
        let source = sources.join(format!("h{host}"));
        let stop = Arc::clone(&stop);
        let done = Arc::clone(&backups_done);
        let refused = Arc::clone(&backups_refused);
        hosts.push(std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                fill(&source, host, round);
                let out = backup(&env, &source, &format!("h{host}"), &format!("r{round}"));
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() {
                    assert!(
                        stderr.contains("run the backup again")
                            || stderr.contains("does not exist"),
                        "backup of host {host}, round {round}: {stderr}"
                    );
                    eprintln!("backup of host {host}, round {round} refused: {stderr}");
                    refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                round += 1;
            }
        }));
    }

    let mut prunes = 0;
    let mut packs_deleted = 0;
    let mut rescued = 0;
    while started.elapsed() < run_for {
        env.run(&["forget", "--keep-last", "2", "--group-by", "host"])
            .success();
        let report = json_of(&env, &["prune", "--grace", GRACE, "--max-unused", "0%"]);
        for sweep in report["swept"].as_array().unwrap() {
            packs_deleted += sweep["packs_deleted"].as_u64().unwrap();
            rescued += sweep["packs_rescued"].as_u64().unwrap();
        }
        prunes += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for host in hosts {
        host.join().unwrap();
    }
    let refused = backups_refused.load(Ordering::Relaxed);
    eprintln!(
        "{} backups, {refused} refused, {prunes} prunes, {packs_deleted} packs deleted, \
         {rescued} rescued",
        backups_done.load(Ordering::Relaxed)
    );
    assert!(
        refused * 10 <= backups_done.load(Ordering::Relaxed),
        "too many backups refused: {refused}"
    );
    assert!(packs_deleted > 0, "the test must exercise sweeps");
    assert!(backups_done.load(Ordering::Relaxed) >= 3 * HOSTS as usize);

    env.run(&["check", "--read-data"])
        .success()
        .stdout(predicates::str::contains("no errors found"));
    every_snapshot_restores_exactly(&env, &sources);
}

/// `kill -9` at each step of the mark and of the sweep: the repository stays valid and the
/// next prune completes.
#[test]
fn sigkill_at_every_step_of_prune_leaves_a_valid_repository() {
    let mark_steps = ["mark-repacked", "mark-planned"];
    let sweep_steps = [
        "sweep-indexed",
        "sweep-packs-deleted",
        "sweep-index-deleted",
    ];

    // One repository per step, with data to free and packs to repack.
    let setup = || -> Env {
        let env = Env::new();
        env.init();
        let source = env.path("h7");
        for round in 0..3 {
            fill(&source, 7, round);
            assert!(
                backup(&env, &source, "h7", &format!("r{round}"))
                    .status
                    .success()
            );
        }
        env.run(&["forget", "--keep-last", "1"]).success();
        env
    };
    let prune_killed_at = |env: &Env, step: &str| {
        let status = env
            .cmd()
            .args(["prune", "--grace", GRACE, "--max-unused", "0%"])
            .env("LIFEBOAT_TEST_KILL_AT", step)
            .output()
            .unwrap()
            .status;
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "prune should have died at {step}: {status:?}"
        );
    };
    let still_valid = |env: &Env, step: &str| {
        let out = env.cmd().args(["check", "--read-data"]).output().unwrap();
        assert!(
            out.status.success(),
            "check after a kill at {step}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        every_snapshot_restores_exactly(env, &env.path(""));
    };

    for step in mark_steps {
        let env = setup();
        prune_killed_at(&env, step);
        still_valid(&env, step);
        let next = json_of(&env, &["prune", "--grace", GRACE, "--max-unused", "0%"]);
        // Killed before its plan was written, the mark is done again; after, the plan waits.
        let plans = usize::from(next["mark"]["plan"].is_string())
            + next["waiting"].as_array().unwrap().len();
        assert_eq!(plans, 1, "{step}: {next}");
        still_valid(&env, step);
    }

    let marked: Vec<(Env, &str)> = sweep_steps
        .iter()
        .map(|step| {
            let env = setup();
            json_of(&env, &["prune", "--grace", GRACE, "--max-unused", "0%"]);
            (env, *step)
        })
        .collect();
    std::thread::sleep(GRACE_WAIT);
    for (env, step) in &marked {
        let before = packs_in_storage(env);
        prune_killed_at(env, step);
        still_valid(env, step);
        let next = json_of(env, &["prune", "--grace", GRACE, "--max-unused", "0%"]);
        assert_eq!(next["swept"].as_array().unwrap().len(), 1, "{step}: {next}");
        assert!(packs_in_storage(env) < before, "{step}: the sweep finished");
        still_valid(env, step);
    }
}
