//! The catalog on PostgreSQL, and upgrades of existing SQLite catalogs.
//!
//! A part of the suite (first start, login backoff, tokens, the audit chain and `audit verify`,
//! a scheduled run after a restart) runs again on a PostgreSQL catalog in a cluster of the
//! test's own, reached over TCP with a password from a file. Then two servers share one
//! catalog, as in a highly available setup: neither starts a job the other is running, and
//! concurrent audit appends from both keep one valid chain. Without PostgreSQL binaries these
//! tests print `SKIPPED: no PostgreSQL` and pass.

use std::sync::Arc;
use std::time::Duration;

use lifeboat_server::audit::Event;
use lifeboat_server::{RunningServer, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Row;

use crate::common::{self, TestServer, eventually, test_config};
use crate::pg::{PgCatalog, SKIPPED};

macro_rules! on_postgres {
    ($name:ident, $body:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(pg) = PgCatalog::start() else {
                println!("{SKIPPED}");
                return;
            };
            $body(pg.server_config()).await;
        }
    };
}

on_postgres!(
    postgres_catalog_first_start_has_a_one_time_password,
    crate::first_start_on
);
on_postgres!(
    postgres_catalog_failed_logins_back_off,
    crate::login_backoff_on
);
on_postgres!(postgres_catalog_api_tokens, crate::api_tokens_on);
on_postgres!(
    postgres_catalog_audit_verify_detects_tampering,
    crate::audit_verify_on
);
on_postgres!(
    postgres_catalog_restart_resumes_the_schedule,
    crate::restart_resumes_on
);

/// A second server on the same catalog: its own state directory holding the first one's keys
/// (repository passwords are sealed, and audit rows MACed, under them).
async fn second_server(first: &TestServer, config: &ServerConfig) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    lifeboat_server::StateDir::open(&state).unwrap();
    for key in ["server.key", "audit.key"] {
        std::fs::copy(first.state_dir().join(key), state.join(key)).unwrap();
    }
    let server: RunningServer = lifeboat_server::start(config.clone(), &state)
        .await
        .unwrap();
    assert!(
        server.setup_password.is_none(),
        "the catalog has its admin already"
    );
    assert!(
        !server.catalog.contains(crate::pg::PG_PASSWORD),
        "{}",
        server.catalog
    );
    TestServer {
        client: common::client_for(&server.cert_pem),
        base: format!("https://127.0.0.1:{}", server.https_addr.port()),
        server: Some(server),
        dir,
        config: config.clone(),
    }
}

/// (started_at, finished_at, status, attempt) of every run of `job`, oldest first.
async fn run_spans(test: &TestServer, job: &str) -> Vec<(i64, Option<i64>, String, i64)> {
    sqlx::query(
        "SELECT started_at, finished_at, status, attempt FROM runs WHERE job_id = $1 ORDER BY started_at",
    )
    .bind(job)
    .fetch_all(&test.server().app.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<i64, _>("started_at"),
            r.get::<Option<i64>, _>("finished_at"),
            r.get::<String, _>("status"),
            r.get::<i64, _>("attempt"),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_postgres_catalog_never_run_one_job_at_once_and_keep_one_audit_chain() {
    let Some(pg) = PgCatalog::start() else {
        println!("{SKIPPED}");
        return;
    };
    let config = pg.server_config();
    let (mut a, admin_a) = TestServer::start(config.clone()).await;
    let mut b = second_server(&a, &config).await;
    let admin_b = b.login("admin", common::ADMIN_PASSWORD).await;

    let tenant = a.tenant(&admin_a, "acme").await;
    let repository = a.repository(&admin_a, &tenant, "main").await;
    // A job that fails and is retried 2 s later: each start holds the job for about 2 s.
    // Scheduled once a year until the end of the test, which starts it by hand first.
    let missing = a.dir.path().join("missing");
    // Server b created nothing, yet sees what a created.
    let (status, body) = b
        .call(
            &admin_b,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(
                json!({ "name": "every-second", "kind": "backup", "repository_id": repository,
                         "schedule": "0 0 1 1 *", "options": { "paths": [missing] },
                         "max_retries": 1, "retry_base_secs": 2 }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = body["id"].as_str().unwrap().to_owned();

    // Another server holds the job's lease: neither of these starts it, by schedule or by hand.
    let pool = a.server().app.pool.clone();
    assert_eq!(
        lifeboat_server::catalog::backend(&pool),
        lifeboat_server::catalog::Backend::Postgres
    );
    assert!(
        lifeboat_server::scheduler::acquire_lease(&pool, &job, "a third server")
            .await
            .unwrap()
    );
    for (test, admin) in [(&a, &admin_a), (&b, &admin_b)] {
        let (status, body) = test
            .call(
                admin,
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/jobs/{job}/run"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        run_spans(&a, &job).await.is_empty(),
        "no run under another's lease"
    );
    lifeboat_server::scheduler::release_lease(&pool, &job, "a third server")
        .await
        .unwrap();

    // Started by hand on a: while it runs (and waits to retry), b cannot start it.
    let run_path = format!("/api/v1/tenants/{tenant}/jobs/{job}/run");
    let (status, body) = a.call(&admin_a, Method::POST, &run_path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = b.call(&admin_b, Method::POST, &run_path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a runs it: {body}");
    let (_, detail) = b
        .call(
            &admin_b,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}"),
            None,
        )
        .await;
    assert_eq!(detail["running"], true, "b sees a's run: {detail}");
    // Once a's start has ended (its lease released), b can.
    eventually(Duration::from_secs(60), "b to start the job", || async {
        let (status, _) = b.call(&admin_b, Method::POST, &run_path, None).await;
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    let by_hand = run_spans(&a, &job).await;
    assert_eq!(
        by_hand.iter().map(|s| s.3).collect::<Vec<_>>(),
        [1, 2, 1],
        "a's attempt and retry, then b's first attempt: {by_hand:?}"
    );

    // Both schedulers now compete for a start every second.
    sqlx::query("UPDATE jobs SET schedule = '* * * * * *', next_run_at = $2 WHERE id = $1")
        .bind(&job)
        .bind(lifeboat_server::catalog::now_millis())
        .execute(&pool)
        .await
        .unwrap();
    let spans = eventually(
        Duration::from_secs(120),
        "two more starts with their retries",
        || async {
            let spans = run_spans(&a, &job).await;
            (spans.iter().filter(|s| s.1.is_some()).count() >= 8).then_some(spans)
        },
    )
    .await;
    assert!(!spans.is_empty());
    sqlx::query("UPDATE jobs SET enabled = 0 WHERE id = $1")
        .bind(&job)
        .execute(&pool)
        .await
        .unwrap();
    let spans = eventually(Duration::from_secs(120), "the last run to end", || async {
        let spans = run_spans(&a, &job).await;
        spans.iter().all(|s| s.1.is_some()).then_some(spans)
    })
    .await;
    // Each start's attempts (1, then its retry 2) end before the next start's begin.
    let attempts: Vec<i64> = spans.iter().map(|s| s.3).collect();
    assert!(spans.len() >= 4, "{spans:?}");
    for pair in spans.windows(2) {
        assert!(
            pair[0].1.unwrap() <= pair[1].0,
            "runs overlap: {:?} then {:?} (all: {spans:?})",
            pair[0],
            pair[1]
        );
    }
    for chunk in attempts.chunks(2) {
        assert_eq!(chunk[0], 1, "a start's first attempt: {attempts:?}");
        if chunk.len() == 2 {
            assert_eq!(
                chunk[1], 2,
                "then its retry, before another start: {attempts:?}"
            );
        }
    }
    assert!(spans.iter().all(|s| s.2 == "failed"), "{spans:?}");

    // Concurrent appends from both servers: one chain, no append lost or refused.
    let before = lifeboat_server::audit::records(&pool, None)
        .await
        .unwrap()
        .len();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = Arc::clone(&if i % 2 == 0 { &a } else { &b }.server().app);
        tasks.push(tokio::spawn(async move {
            app.audit
                .append(
                    &app.pool,
                    Event::new("system:test", "test.append", "local").detail(json!({ "i": i })),
                )
                .await
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().expect("every append succeeds"));
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 40, "distinct sequence numbers");
    let records = lifeboat_server::audit::records(&pool, None).await.unwrap();
    assert_eq!(
        records.iter().filter(|r| r.action == "test.append").count(),
        40
    );
    a.stop().await;
    b.stop().await;
    // `lifeboat audit verify` with either server's state directory (key and head file).
    for test in [&a, &b] {
        let (config, state) = (test.config.clone(), test.state_dir());
        let verification =
            std::thread::spawn(move || lifeboat_server::offline::verify_audit(&config, &state))
                .join()
                .unwrap()
                .unwrap();
        assert!(
            verification.problems.is_empty(),
            "{:?}",
            verification.problems
        );
        assert!(verification.rows >= before + 40);
    }
    // Breach response from the command line works on the shared catalog too.
    let (config, state) = (a.config.clone(), a.state_dir());
    let (_, tokens) =
        std::thread::spawn(move || lifeboat_server::offline::revoke_all(&config, &state))
            .join()
            .unwrap()
            .unwrap();
    assert_eq!(tokens, 0);
}

/// A catalog written by a server of before the PostgreSQL catalog (migrations 0001–0003 only,
/// applied through the SQLite driver) opens, keeping the migrations it has and gaining the
/// new ones: the migration files it checksummed must never change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqlite_catalog_of_an_earlier_version_opens_and_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let state = lifeboat_server::StateDir::open(&dir.path().join("state")).unwrap();
    let old_migrations = dir.path().join("old-migrations");
    std::fs::create_dir_all(&old_migrations).unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for name in [
        "0001_catalog.sql",
        "0002_stale_alerts.sql",
        "0003_replication.sql",
    ] {
        std::fs::copy(migrations.join(name), old_migrations.join(name)).unwrap();
    }
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(state.catalog_path())
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(old_migrations.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'old', 1)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let pool = lifeboat_server::catalog::open(&Default::default(), &state)
        .await
        .unwrap();
    assert_eq!(
        lifeboat_server::catalog::backend(&pool),
        lifeboat_server::catalog::Backend::Sqlite
    );
    // The pragmas the Any driver's URL cannot carry are set on every connection.
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let (synchronous,): (i64,) = sqlx::query_as("PRAGMA synchronous")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(synchronous, 2, "FULL");
    let (foreign_keys,): (i64,) = sqlx::query_as("PRAGMA foreign_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
    let versions: Vec<i64> =
        sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<i64, _>("version"))
            .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    let (name,): (String,) = sqlx::query_as("SELECT name FROM tenants WHERE id = 't1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "old");
    pool.close().await;
    // And a server starts on it.
    let server = lifeboat_server::start(test_config(), state.root())
        .await
        .unwrap();
    assert!(server.setup_password.is_some(), "no user yet: first admin");
    server.shutdown().await;
}
