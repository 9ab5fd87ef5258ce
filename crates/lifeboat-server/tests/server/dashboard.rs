//! The dashboard as a person uses it: a real server, and headless Chromium (Debian's
//! `chromium`) driven by playwright-core (npm) through `tests/ui/dashboard.cjs`.
//!
//! The server side is prepared here through the API (two tenants, jobs with runs, users);
//! the script signs in, reads jobs, runs and logs, starts a run, tries another tenant's ids,
//! changes a one-time password and signs out, and fails on the first thing that is not as a
//! person should see it. Afterwards this test checks that what the browser did reached the
//! catalog and the audit log. `.ci/run` installs both and sets `LIFEBOAT_TEST_CHROMIUM` and
//! `LIFEBOAT_TEST_PLAYWRIGHT`; without them the test prints SKIPPED and passes. Screenshots go
//! to `LIFEBOAT_TEST_SCREENSHOTS` (a directory outside the repository) when it is set.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::common::{ADMIN_PASSWORD, TestServer, eventually, test_config};

async fn finished_runs(
    test: &TestServer,
    admin: &super::common::Auth,
    tenant: &str,
    job: &str,
) -> Vec<serde_json::Value> {
    let (_, runs) = test
        .call(
            admin,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}/runs"),
            None,
        )
        .await;
    runs.as_array()
        .map(|r| {
            r.iter()
                .filter(|r| r["status"] != "running")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_reads_jobs_and_runs_starts_a_run_and_sees_no_other_tenant() {
    let (Ok(chromium), Ok(playwright)) = (
        std::env::var("LIFEBOAT_TEST_CHROMIUM"),
        std::env::var("LIFEBOAT_TEST_PLAYWRIGHT"),
    ) else {
        eprintln!(
            "SKIPPED: set LIFEBOAT_TEST_CHROMIUM (a chromium binary) and LIFEBOAT_TEST_PLAYWRIGHT (the playwright-core package directory)"
        );
        return;
    };
    let (mut test, admin) = TestServer::start(test_config()).await;
    let acme = super::fixture(&test, &admin, "acme").await;
    let globex = super::fixture(&test, &admin, "globex").await;
    let broken = test
        .job(
            &admin,
            &acme.tenant,
            &acme.repository,
            "broken",
            "0 0 1 1 *",
            json!({ "paths": ["/nonexistent/lifeboat-dashboard-test"] }),
        )
        .await;
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{}/jobs/{broken}/run", acme.tenant),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let failed = eventually(Duration::from_secs(120), "the broken job's run", || async {
        finished_runs(&test, &admin, &acme.tenant, &broken)
            .await
            .first()
            .cloned()
    })
    .await;
    assert_eq!(failed["status"], "failed", "{failed}");

    test.user(&admin, "olivia", "operator", Some(&acme.tenant))
        .await;
    test.user(&admin, "max", "member", Some(&globex.tenant))
        .await;
    test.user(&admin, "fiona", "auditor", Some(&acme.tenant))
        .await;
    let app = &test.server().app;
    let one_time = lifeboat_server::identity::force_reset(&app.pool, &app.hasher, "fiona")
        .await
        .unwrap();

    let screenshots = std::env::var("LIFEBOAT_TEST_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| test.dir.path().join("screenshots"));
    std::fs::create_dir_all(&screenshots).unwrap();
    let config = json!({
        "base": test.base,
        "chromium": chromium,
        "screenshots": screenshots,
        "admin": { "username": "admin", "password": ADMIN_PASSWORD },
        "operator": { "username": "olivia", "password": "olivia has a long password" },
        "member": { "username": "max", "password": "max has a long password" },
        "first_login": { "username": "fiona", "password": one_time, "new_password": "fiona chose a passphrase of her own" },
        "acme": { "tenant": acme.tenant, "job": acme.job, "broken": broken, "run": acme.run, "repository": acme.repository },
        "globex": { "tenant": globex.tenant, "job": globex.job, "run": globex.run, "repository": globex.repository },
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/dashboard.cjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .env("LIFEBOAT_TEST_PLAYWRIGHT", &playwright)
        .env("LIFEBOAT_UI_TEST", config.to_string())
        .output()
        .await
        .expect("node runs (Debian package nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "the browser script failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("all dashboard checks passed"),
        "the script ended early:\n{stdout}"
    );
    for shot in [
        "tenant.png",
        "job.png",
        "run.png",
        "member.png",
        "audit.png",
    ] {
        let size = std::fs::metadata(screenshots.join(shot)).map_or(0, |m| m.len());
        assert!(size > 10_000, "screenshot {shot} has {size} bytes");
    }

    // What the browser did is in the catalog and the audit log like any API call.
    let runs = eventually(
        Duration::from_secs(120),
        "the run started in the browser",
        || async {
            let runs = finished_runs(&test, &admin, &acme.tenant, &acme.job).await;
            (runs.len() >= 2).then_some(runs)
        },
    )
    .await;
    assert!(
        runs.iter()
            .any(|r| r["trigger"] == "manual" && r["status"] == "succeeded")
    );
    let (_, audit) = test.call(&admin, Method::GET, "/api/v1/audit", None).await;
    let audit = audit.as_str().unwrap_or_default().to_owned();
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |actor: &str, action: &str, outcome: &str| {
        rows.iter()
            .any(|r| r["actor"] == actor && r["action"] == action && r["outcome"] == outcome)
    };
    assert!(has("user:olivia", "job.start", "ok"), "{audit}");
    assert!(has("user:olivia", "logout", "ok"), "{audit}");
    assert!(has("anonymous:olivia", "login", "failed"), "{audit}");
    assert!(has("user:max", "snapshots.list", "ok"), "{audit}");
    assert!(has("user:fiona", "password.change", "ok"), "{audit}");
    test.stop().await;
}
