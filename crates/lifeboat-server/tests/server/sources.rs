//! Jobs that protect databases: a `pg-backup` job against a real PostgreSQL cluster, and a
//! continuous `sqlite-replicate` job against a real SQLite file, with its lag metric and alert.
//!
//! PostgreSQL refuses to run as root, so as root (CI) the cluster runs as `nobody` through
//! `setpriv`, in a directory that user owns (as `crates/lifeboat-cli/tests/postgres.rs` does,
//! whose helper drives the `lifeboat` binary; this crate's tests have no such binary, so
//! `archive_command` hands each WAL file to the test, which archives it into the job's
//! repository through the library and lets the command return only once it is stored).
//! Without PostgreSQL binaries the PostgreSQL test prints `SKIPPED: no PostgreSQL` and passes;
//! `.ci/run` installs them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Auth, TestServer, eventually, test_config};
use crate::pg::{Cluster, checked, chown_tree, pg_bin, unprivileged};

const REPOSITORY_PASSWORD: &[u8] = b"repository password";

/// Creates a job from a full request body; returns its id.
async fn create_job(test: &TestServer, auth: &Auth, tenant: &str, body: Value) -> String {
    let (status, created) = test
        .call(
            auth,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn runs_of(test: &TestServer, auth: &Auth, tenant: &str, job: &str) -> Vec<Value> {
    let (_, runs) = test
        .call(
            auth,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}/runs"),
            None,
        )
        .await;
    runs.as_array().cloned().unwrap_or_default()
}

async fn metrics(test: &TestServer, auth: &Auth) -> String {
    test.request(auth, Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name{labels...}` whose labels start with `tenant` and `job`.
fn sample(metrics: &str, name: &str, tenant: &str, job: &str) -> Option<f64> {
    let prefix = format!("{name}{{tenant=\"{tenant}\",job=\"{job}\",");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn texts(received: &parking_lot::Mutex<Vec<Value>>) -> Vec<String> {
    received
        .lock()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn open_repository(location: &Path) -> lifeboat_repo::IndexedRepository {
    let storage = lifeboat_storage::Storage::open(location.to_str().unwrap()).unwrap();
    lifeboat_repo::Repository::open(storage, REPOSITORY_PASSWORD)
        .unwrap()
        .load_index()
        .unwrap()
}

/// Restores the replicated database as of now; the number of rows in `t`, if it restores.
fn restored_rows(repo_location: &Path, db: &Path, out: &Path) -> Option<i64> {
    let _ = std::fs::remove_file(out);
    let repo = open_repository(repo_location);
    lifeboat_sqlite::restore(
        &repo,
        &lifeboat_sqlite::Selector::path(db),
        out,
        lifeboat_sqlite::RestorePoint::Latest,
    )
    .ok()?;
    rusqlite::Connection::open(out)
        .ok()?
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .ok()
}

fn insert_rows(db: &Path, from: i64, to: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    for i in from..=to {
        conn.execute(
            "INSERT INTO t (id, body) VALUES (?1, ?2)",
            rusqlite::params![i, format!("row {i} {}", "x".repeat(200))],
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_replicate_job_ships_rows_reports_lag_and_alerts_while_its_repository_is_gone() {
    let (url, received) = super::webhook_receiver().await;
    let mut config = test_config();
    config.alerts.webhook_url = Some(url);
    let (mut test, admin) = TestServer::start(config).await;
    let tenant = test.tenant(&admin, "acme").await;
    let repository = test.repository(&admin, &tenant, "main").await;
    let repo_location = test.dir.path().join("repo-main");
    let db = test.dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
    }
    insert_rows(&db, 1, 10);

    // A schedule makes no sense for a continuous job.
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(json!({ "name": "scheduled", "kind": "sqlite-replicate", "repository_id": repository,
                         "schedule": "* * * * *", "options": { "database": db } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(
                json!({ "name": "relative", "kind": "sqlite-replicate", "repository_id": repository,
                         "options": { "database": "app.db" } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let job = create_job(
        &test,
        &admin,
        &tenant,
        json!({ "name": "replica", "kind": "sqlite-replicate", "repository_id": repository,
                "options": { "database": db, "interval_ms": 200 },
                "lag_alert_secs": 3, "max_retries": 0, "retry_base_secs": 1 }),
    )
    .await;
    // Started within a second or two of its creation, as one run.
    eventually(
        Duration::from_secs(30),
        "the replicator to start",
        || async {
            let (_, body) = test
                .call(
                    &admin,
                    Method::GET,
                    &format!("/api/v1/tenants/{tenant}/jobs/{job}"),
                    None,
                )
                .await;
            (body["running"] == true).then_some(())
        },
    )
    .await;
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}/run"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a continuous job is not run");

    insert_rows(&db, 11, 50);
    let restored = test.dir.path().join("restored.db");
    eventually(
        Duration::from_secs(60),
        "the rows to be shipped",
        || async {
            let (repo, db, out) = (repo_location.clone(), db.clone(), restored.clone());
            let rows = tokio::task::spawn_blocking(move || restored_rows(&repo, &db, &out))
                .await
                .unwrap();
            (rows == Some(50)).then_some(())
        },
    )
    .await;
    // The metrics are the status after the last round: the round that captured the last rows
    // reports them as waiting until the next one, a pause later.
    let text = eventually(Duration::from_secs(10), "the lag to reach 0", || async {
        let text = metrics(&test, &admin).await;
        (sample(&text, "lifeboat_replication_lag_bytes", &tenant, "replica") == Some(0.0))
            .then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "lifeboat_replication_up", &tenant, "replica"),
        Some(1.0),
        "{text}"
    );
    let lag = sample(
        &text,
        "lifeboat_replication_lag_seconds",
        &tenant,
        "replica",
    );
    assert!(lag.is_some_and(|l| l < 3.0), "caught up: {text}");

    // The repository goes away (its directory replaced by a file: even root cannot write
    // below it) while the application keeps writing: the lag grows and the alert fires.
    let away = test.dir.path().join("repo-main.away");
    std::fs::rename(&repo_location, &away).unwrap();
    std::fs::write(&repo_location, b"not a directory").unwrap();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (db, writing) = (db.clone(), Arc::clone(&writing));
        std::thread::spawn(move || {
            let mut next = 51;
            while writing.load(Ordering::SeqCst) {
                insert_rows(&db, next, next);
                next += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            next - 1
        })
    };
    let firing = eventually(Duration::from_secs(60), "the lag alert", || async {
        texts(&received)
            .into_iter()
            .find(|t| t.contains("[FIRING]") && t.contains("replica") && t.contains("behind"))
    })
    .await;
    assert!(firing.contains("limit 3 s"), "{firing}");
    let text = metrics(&test, &admin).await;
    let lag = sample(
        &text,
        "lifeboat_replication_lag_seconds",
        &tenant,
        "replica",
    )
    .unwrap();
    assert!(lag > 3.0, "{text}");
    assert!(
        sample(&text, "lifeboat_replication_lag_bytes", &tenant, "replica").unwrap() > 0.0,
        "{text}"
    );
    // Still behind a few seconds later: announced once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let fired = texts(&received)
        .iter()
        .filter(|t| t.contains("[FIRING]"))
        .count();
    assert_eq!(fired, 1, "{:?}", texts(&received));

    // Back: it catches up, the alert resolves, and every row written meanwhile is restorable.
    writing.store(false, Ordering::SeqCst);
    let last = writer.join().unwrap();
    std::fs::remove_file(&repo_location).unwrap();
    std::fs::rename(&away, &repo_location).unwrap();
    let resolved = eventually(
        Duration::from_secs(120),
        "the lag alert to resolve",
        || async {
            texts(&received)
                .into_iter()
                .find(|t| t.contains("[RESOLVED]") && t.contains("caught up"))
        },
    )
    .await;
    assert!(resolved.contains("replica"), "{resolved}");
    eventually(
        Duration::from_secs(60),
        "the rows written meanwhile",
        || async {
            let (repo, db, out) = (repo_location.clone(), db.clone(), restored.clone());
            let rows = tokio::task::spawn_blocking(move || restored_rows(&repo, &db, &out))
                .await
                .unwrap();
            (rows == Some(last)).then_some(())
        },
    )
    .await;

    // A restart stops the replicator cleanly (its run is `stopped`) and starts it again.
    test.restart().await;
    let admin = test.login("admin", crate::common::ADMIN_PASSWORD).await;
    let runs = eventually(Duration::from_secs(30), "the second start", || async {
        let runs = runs_of(&test, &admin, &tenant, &job).await;
        (runs.len() == 2 && runs[0]["status"] == "running").then_some(runs)
    })
    .await;
    let first = &runs[1];
    assert_eq!(first["trigger"], "start");
    assert_eq!(first["status"], "stopped", "{first}");
    assert!(first["bytes"].as_i64().unwrap() > 0, "{first}");
    assert!(
        first["log"].as_str().unwrap().contains("segments"),
        "{first}"
    );
    insert_rows(&db, last + 1, last + 5);
    eventually(
        Duration::from_secs(60),
        "rows after the restart",
        || async {
            let (repo, db, out) = (repo_location.clone(), db.clone(), restored.clone());
            let rows = tokio::task::spawn_blocking(move || restored_rows(&repo, &db, &out))
                .await
                .unwrap();
            (rows == Some(last + 5)).then_some(())
        },
    )
    .await;

    // Deleted: the replicator stops and its gauges go.
    let (status, _) = test
        .call(
            &admin,
            Method::DELETE,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(Duration::from_secs(60), "the gauges to go", || async {
        let text = metrics(&test, &admin).await;
        sample(&text, "lifeboat_replication_up", &tenant, "replica")
            .is_none()
            .then_some(())
    })
    .await;
    test.stop().await;
}

/// The value of a per-destination sample of job `job` for repository `repository`.
fn destination_sample(metrics: &str, name: &str, job: &str, repository: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains(&format!("job=\"{job}\""))
                && l.contains(&format!("repository_id=\"{repository}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One job, two repositories of its tenant (the second not there when the job starts): the
/// first replicates at once, the second joins once it is there; each has its own lag in
/// `/metrics`. Another tenant's repository cannot be named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_replicate_job_feeds_several_repositories_of_its_tenant() {
    let (mut test, admin) = TestServer::start(test_config()).await;
    let tenant = test.tenant(&admin, "acme").await;
    let other_tenant = test.tenant(&admin, "other").await;
    let main = test.repository(&admin, &tenant, "main").await;
    let second = test.repository(&admin, &tenant, "second").await;
    let foreign = test.repository(&admin, &other_tenant, "foreign").await;
    let db = test.dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
    }
    insert_rows(&db, 1, 10);

    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(
                json!({ "name": "sneaky", "kind": "sqlite-replicate", "repository_id": main,
                         "options": { "database": db, "also_to_repository_ids": [foreign] } }),
            ),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's repository: {body}"
    );
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(
                json!({ "name": "twice", "kind": "sqlite-replicate", "repository_id": main,
                         "options": { "database": db, "also_to_repository_ids": [main] } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The second repository is not there when the job starts (its disk not mounted).
    let second_location = test.dir.path().join("repo-second");
    let away = test.dir.path().join("repo-second.away");
    std::fs::rename(&second_location, &away).unwrap();
    std::fs::write(&second_location, b"not mounted").unwrap();
    create_job(
        &test,
        &admin,
        &tenant,
        json!({ "name": "both", "kind": "sqlite-replicate", "repository_id": main,
                "options": { "database": db, "interval_ms": 200, "also_to_repository_ids": [second] },
                "max_retries": 0, "retry_base_secs": 1 }),
    )
    .await;
    insert_rows(&db, 11, 30);
    let main_location = test.dir.path().join("repo-main");
    let restored = test.dir.path().join("restored-main.db");
    eventually(
        Duration::from_secs(60),
        "rows in the first repository",
        || async {
            let (repo, db, out) = (main_location.clone(), db.clone(), restored.clone());
            let rows = tokio::task::spawn_blocking(move || restored_rows(&repo, &db, &out))
                .await
                .unwrap();
            (rows == Some(30)).then_some(())
        },
    )
    .await;
    let text = metrics(&test, &admin).await;
    assert_eq!(
        destination_sample(
            &text,
            "lifeboat_replication_destination_live",
            "both",
            &main
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        destination_sample(
            &text,
            "lifeboat_replication_destination_live",
            "both",
            &second
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lifeboat_replication_released", &tenant, "both"),
        Some(1.0),
        "{text}"
    );

    // Mounted: the second joins and receives everything; both are live with their own lag.
    std::fs::remove_file(&second_location).unwrap();
    std::fs::rename(&away, &second_location).unwrap();
    insert_rows(&db, 31, 40);
    let restored = test.dir.path().join("restored-second.db");
    eventually(
        Duration::from_secs(90),
        "rows in the second repository",
        || async {
            let (repo, db, out) = (second_location.clone(), db.clone(), restored.clone());
            let rows = tokio::task::spawn_blocking(move || restored_rows(&repo, &db, &out))
                .await
                .unwrap();
            (rows == Some(40)).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "both live and caught up",
        || async {
            let text = metrics(&test, &admin).await;
            let ok = [&main, &second].iter().all(|id| {
                destination_sample(&text, "lifeboat_replication_destination_live", "both", id)
                    == Some(1.0)
                    && destination_sample(
                        &text,
                        "lifeboat_replication_destination_lag_bytes",
                        "both",
                        id,
                    ) == Some(0.0)
            });
            ok.then_some(())
        },
    )
    .await;
    test.stop().await;
}

/// A replicator that cannot start (no such database) fails, is restarted with backoff, and
/// raises the job-failed alert once; it starts when the database appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_replicate_job_that_cannot_start_is_restarted_with_backoff_and_alerts_once() {
    let (url, received) = super::webhook_receiver().await;
    let mut config = test_config();
    config.alerts.webhook_url = Some(url);
    let (mut test, admin) = TestServer::start(config).await;
    let tenant = test.tenant(&admin, "acme").await;
    let repository = test.repository(&admin, &tenant, "main").await;
    let db = test.dir.path().join("later.db");
    let job = create_job(
        &test,
        &admin,
        &tenant,
        json!({ "name": "later", "kind": "sqlite-replicate", "repository_id": repository,
                "options": { "database": db, "interval_ms": 200 },
                "max_retries": 1, "retry_base_secs": 1 }),
    )
    .await;
    let runs = eventually(Duration::from_secs(30), "three failed starts", || async {
        let runs = runs_of(&test, &admin, &tenant, &job).await;
        (runs.iter().filter(|r| r["status"] == "failed").count() >= 3).then_some(runs)
    })
    .await;
    let oldest = runs.last().unwrap();
    assert_eq!(oldest["trigger"], "start");
    assert!(
        oldest["log"].as_str().unwrap().contains("later.db"),
        "{oldest}"
    );
    assert_eq!(runs[runs.len() - 2]["trigger"], "restart");
    // Backoff: 1 s, then 2 s, then 4 s between starts.
    let starts: Vec<i64> = runs
        .iter()
        .rev()
        .map(|r| r["started_at"].as_i64().unwrap())
        .collect();
    assert!(starts[2] - starts[1] > starts[1] - starts[0], "{starts:?}");
    let firing = eventually(Duration::from_secs(30), "the job-failed alert", || async {
        texts(&received)
            .into_iter()
            .find(|t| t.contains("[FIRING]") && t.contains("later"))
    })
    .await;
    assert!(firing.contains("restarting in"), "{firing}");
    let text = metrics(&test, &admin).await;
    assert!(
        sample(&text, "lifeboat_replication_up", &tenant, "later").is_none_or(|v| v == 0.0),
        "{text}"
    );

    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
    }
    eventually(Duration::from_secs(60), "the replicator to run", || async {
        let text = metrics(&test, &admin).await;
        (sample(&text, "lifeboat_replication_up", &tenant, "later") == Some(1.0)).then_some(())
    })
    .await;
    let fired = texts(&received)
        .iter()
        .filter(|t| t.contains("[FIRING]"))
        .count();
    assert_eq!(fired, 1, "de-duplicated: {:?}", texts(&received));
    test.stop().await;
}

/// Archives what `archive_command` drops into `spool` into the repository, then marks it
/// `.done` so the command returns: PostgreSQL counts a WAL file archived only once it is
/// stored, as with `lifeboat pg archive-push`.
fn archiver(
    spool: PathBuf,
    repo_location: PathBuf,
    stream: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let storage = lifeboat_storage::Storage::open(repo_location.to_str().unwrap()).unwrap();
        let repo = lifeboat_repo::Repository::open(storage, REPOSITORY_PASSWORD).unwrap();
        while !stop.load(Ordering::SeqCst) {
            for entry in std::fs::read_dir(&spool).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.ends_with(".tmp") || name.ends_with(".done") {
                    continue;
                }
                let done = spool.join(format!("{name}.done"));
                if done.exists() {
                    continue;
                }
                match lifeboat_postgres::archive::push(&repo, &stream, &path) {
                    Ok(_) => std::fs::write(&done, b"").unwrap(),
                    Err(e) => eprintln!("archiving {name}: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_backup_job_takes_a_base_backup_that_restores_and_starts() {
    let Some(bin) = pg_bin() else {
        println!("SKIPPED: no PostgreSQL (initdb not on PATH nor in /usr/lib/postgresql/*/bin)");
        return;
    };
    let (mut test, admin) = TestServer::start(test_config()).await;
    let tenant = test.tenant(&admin, "acme").await;
    let repository = test.repository(&admin, &tenant, "pg").await;
    let repo_location = test.dir.path().join("repo-pg");

    // The cluster's own directory, owned by the user it runs as.
    let world = test.dir.path().join("pg");
    std::fs::create_dir_all(world.join("spool")).unwrap();
    std::fs::set_permissions(test.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&world);
    let data = world.join("data");
    let out = unprivileged(&bin.join("initdb"))
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
        .arg(&data)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    checked(out, "initdb");
    let spool = world.join("spool");
    let archive_command = format!(
        "cp %p {s}/%f.tmp && mv -f {s}/%f.tmp {s}/%f && i=0 && while [ ! -e {s}/%f.done ]; do i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.1; done",
        s = spool.display()
    );
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str(&format!(
        "archive_mode = on\narchive_command = '{archive_command}'\nwal_level = replica\n\
         max_wal_senders = 0\nfsync = off\nshared_buffers = 16MB\nmax_connections = 20\n"
    ));
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    let stream = lifeboat_postgres::archive::stream_for(
        lifeboat_postgres::archive::read_system_identifier(&data).unwrap(),
    );
    let stop_archiver = Arc::new(AtomicBool::new(false));
    let archiving = archiver(
        spool.clone(),
        repo_location.clone(),
        stream.clone(),
        Arc::clone(&stop_archiver),
    );
    let cluster = Cluster::start(&bin, &data, &world);
    cluster.psql("CREATE TABLE accounts (id int PRIMARY KEY, owner text)");
    cluster.psql("INSERT INTO accounts SELECT g, 'owner ' || g FROM generate_series(1, 1000) AS g");

    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(
                json!({ "name": "pg-relative", "kind": "pg-backup", "repository_id": repository,
                         "schedule": "* * * * *", "options": { "pgdata": "data" } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let job = create_job(
        &test,
        &admin,
        &tenant,
        json!({ "name": "pg-nightly", "kind": "pg-backup", "repository_id": repository,
                "schedule": "0 3 * * *", "max_retries": 0,
                "options": { "connect": cluster.conninfo(), "pgdata": data,
                             "psql": cluster.psql_program(), "tags": ["nightly"] } }),
    )
    .await;
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}/run"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run = eventually(Duration::from_secs(180), "the base backup", || async {
        runs_of(&test, &admin, &tenant, &job)
            .await
            .into_iter()
            .find(|r| r["status"] != "running")
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "manual");
    assert!(run["bytes"].as_i64().unwrap() > 0, "{run}");
    assert!(run["log"].as_str().unwrap().contains(&stream), "{run}");
    let text = metrics(&test, &admin).await;
    assert!(
        sample(&text, "lifeboat_job_last_run_bytes", &tenant, "pg-nightly")
            .is_some_and(|b| b > 0.0),
        "{text}"
    );
    // Changes after the backup are replayed from the archive on restore.
    cluster.psql("INSERT INTO accounts VALUES (1001, 'after the backup')");
    let segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())");
    eventually(
        Duration::from_secs(60),
        "the last segment archived",
        || async { spool.join(format!("{segment}.done")).exists().then_some(()) },
    )
    .await;
    drop(cluster);
    stop_archiver.store(true, Ordering::SeqCst);
    archiving.join().unwrap();

    // Restore from the repository alone: the archived WAL is fetched into a directory that
    // restore_command copies from, then PostgreSQL replays it and opens.
    let restored = world.join("restored");
    let wal = world.join("wal");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::create_dir_all(&wal).unwrap();
    let outcome = tokio::task::spawn_blocking({
        let (repo_location, restored, wal, stream) = (
            repo_location.clone(),
            restored.clone(),
            wal.clone(),
            stream.clone(),
        );
        move || {
            let repo = open_repository(&repo_location);
            for (name, _) in lifeboat_postgres::archive::list(&repo, &stream).unwrap() {
                lifeboat_postgres::archive::get(&repo, &stream, &name, &wal.join(&name)).unwrap();
            }
            lifeboat_postgres::restore::restore(
                &repo,
                &lifeboat_postgres::PgRestoreOptions {
                    target: lifeboat_postgres::RecoveryTarget::Latest,
                    to: restored,
                    delta: false,
                    standby: false,
                    restore_command: format!("cp {}/%f %p", wal.display()),
                    stream: None,
                    archive_off: true,
                    workers: 0,
                    timeline: None,
                    tablespace_map: vec![],
                },
                &lifeboat_files::RestoreProgress::default(),
            )
            .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(outcome.state.complete);
    chown_tree(&wal);
    chown_tree(&restored);
    let copy = Cluster::start(&bin, &restored, &world);
    let rows = eventually(Duration::from_secs(120), "the restored cluster", || async {
        let out = Command::new(copy.psql_program())
            .args(["-X", "-A", "-t", "-q", "-d"])
            .arg(copy.conninfo())
            .arg("-c")
            .arg("SELECT count(*) FROM accounts WHERE NOT pg_is_in_recovery()")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && text != "0").then_some(text)
    })
    .await;
    assert_eq!(rows, "1001");
    drop(copy);
    test.stop().await;
}
