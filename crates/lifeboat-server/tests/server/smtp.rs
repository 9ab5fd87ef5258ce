//! Alert e-mails through a real SMTP server on loopback: aiosmtpd (PyPI), started by this test
//! with its Debugging handler, which prints every message it receives. `.ci/run` installs it
//! and sets `LIFEBOAT_TEST_SMTP_PYTHON` (a Python that has aiosmtpd); without it the test
//! prints SKIPPED and passes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::common::{TestServer, eventually, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_sends_one_alert_mail_and_a_resolved_mail() {
    let Ok(python) = std::env::var("LIFEBOAT_TEST_SMTP_PYTHON") else {
        eprintln!("SKIPPED: set LIFEBOAT_TEST_SMTP_PYTHON to a Python with aiosmtpd");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("mails.txt");
    let mut smtp = std::process::Command::new(&python)
        .args([
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Debugging",
        ])
        .args(["-l", &format!("127.0.0.1:{port}")])
        .stdout(std::fs::File::create(&received).unwrap())
        .spawn()
        .expect("aiosmtpd starts");
    eventually(Duration::from_secs(30), "the SMTP server", || async {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .await;

    let mut config = test_config();
    config.alerts.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
    config.alerts.email_from = Some("Lifeboat <lifeboat@example.test>".into());
    config.alerts.email_to = vec!["oncall@example.test".into()];
    let (mut test, admin) = TestServer::start(config).await;
    let tenant = test.tenant(&admin, "mail").await;
    let repository = test.repository(&admin, &tenant, "mail").await;
    let source = test.dir.path().join("appears-later");
    let job = test
        .job(
            &admin,
            &tenant,
            &repository,
            "nightly",
            "0 0 1 1 *",
            json!({ "paths": [source] }),
        )
        .await;
    let mails = || std::fs::read_to_string(&received).unwrap_or_default();
    for _ in 0..2 {
        run(&test, &admin, &tenant, &job).await;
        super::wait_idle(&test, &admin, &tenant, &job).await;
    }
    eventually(Duration::from_secs(60), "the alert mail", || async {
        mails()
            .contains("Subject: [FIRING] Job nightly (backup) failed")
            .then_some(())
    })
    .await;
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("file"), "now it exists").unwrap();
    run(&test, &admin, &tenant, &job).await;
    eventually(Duration::from_secs(60), "the resolved mail", || async {
        mails()
            .contains("Subject: [RESOLVED] Job nightly (backup) succeeded again")
            .then_some(())
    })
    .await;
    let text = mails();
    assert_eq!(
        text.matches("Subject: [FIRING]").count(),
        1,
        "two failures, one alert mail:\n{text}"
    );
    assert!(text.contains("oncall@example.test"), "{text}");
    test.stop().await;
    smtp.kill().unwrap();
    smtp.wait().unwrap();
}

async fn run(test: &TestServer, admin: &super::common::Auth, tenant: &str, job: &str) {
    let path = format!("/api/v1/tenants/{tenant}/jobs/{job}/run");
    let (status, body) = test.call(admin, Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}
