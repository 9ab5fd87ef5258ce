//! `lifeboat --server URL …` against a real `lifeboat serve` started by the test: the read
//! paths answer what the token may see, and refusals come back as clear errors.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "a long admin passphrase for tests";

/// A `lifeboat serve` child process on a loopback port, and an HTTPS client trusting exactly
/// its generated certificate.
struct Server {
    child: Child,
    base: String,
    cert: std::path::PathBuf,
    client: Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start(dir: &Path) -> (Server, String) {
        let port = free_port();
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!("[listen]\nhttps = \"127.0.0.1:{port}\"\nhttp_redirect = false\n"),
        )
        .unwrap();
        let state = dir.join("state");
        let mut child = Command::cargo_bin("lifeboat")
            .unwrap()
            .args(["serve", "--state-dir"])
            .arg(&state)
            .arg("--server-config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The one-time admin password is the line after the one that announces it.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut setup = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while setup.is_none() && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if line.contains("one-time password") {
                setup = lines
                    .by_ref()
                    .map_while(Result::ok)
                    .map(|l| l.trim().to_owned())
                    .find(|l| !l.is_empty());
            }
        }
        let setup = setup.expect("the first start prints a one-time admin password");
        // Keep draining the server's log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let cert = state.join("tls-cert.pem");
        let client = Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
            ])
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let server = Server {
            child,
            base: format!("https://127.0.0.1:{port}"),
            cert,
            client,
        };
        (server, setup)
    }

    /// Signs in; returns the session cookie and CSRF token.
    fn login(&self, user: &str, password: &str) -> (String, String) {
        let response = self
            .client
            .post(format!("{}/api/v1/login", self.base))
            .json(&json!({ "username": user, "password": password }))
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "login of {user}: {}",
            response.status()
        );
        let cookie = response
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let body: Value = response.json().unwrap();
        (cookie, body["csrf_token"].as_str().unwrap().to_owned())
    }

    fn post(&self, session: &(String, String), path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &session.0)
            .header("x-csrf-token", &session.1)
            .json(&body)
            .send()
            .unwrap();
        let status = response.status();
        let body: Value = response.json().unwrap();
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    fn get(&self, session: &(String, String), path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .header("cookie", &session.0)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// The CLI pointed at this server with a token file.
    fn cli(&self, token_file: &Path) -> Command {
        let mut cmd = Command::cargo_bin("lifeboat").unwrap();
        cmd.arg("--server")
            .arg(&self.base)
            .arg("--server-ca")
            .arg(&self.cert)
            .arg("--server-token-file")
            .arg(token_file)
            .env_remove("LIFEBOAT_REPOSITORY")
            .env_remove("LIFEBOAT_TENANT")
            .env_remove("LIFEBOAT_SERVER_TOKEN")
            .env_remove("LIFEBOAT_CONFIG")
            .stdin(Stdio::null());
        cmd
    }
}

fn output(mut cmd: Command, args: &[&str]) -> (bool, String, String) {
    let out = cmd.args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_reads_snapshots_jobs_and_runs_from_a_server_within_its_tokens_tenant() {
    let env = common::Env::new();
    let (server, setup) = Server::start(env.dir.path());
    let first = server.login("admin", &setup);
    server.post(
        &first,
        "/api/v1/me/password",
        json!({ "current_password": setup, "new_password": ADMIN_PASSWORD }),
    );
    let admin = server.login("admin", ADMIN_PASSWORD);
    let tenant = |name: &str| {
        server.post(&admin, "/api/v1/tenants", json!({ "name": name }))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (acme, other) = (tenant("acme"), tenant("other"));
    let repository = |tenant: &str, name: &str| {
        server.post(
            &admin,
            &format!("/api/v1/tenants/{tenant}/repositories"),
            json!({ "name": name, "location": env.path(&format!("repo-{name}")).to_str().unwrap(),
                    "password": "a long repository password", "init": true, "insecure_kdf_for_tests": true }),
        )["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let files = repository(&acme, "files");
    repository(&other, "secret");
    let source = env.path("source");
    common::write_tree(&source, 5, 2000, 1);
    let job = server.post(
        &admin,
        &format!("/api/v1/tenants/{acme}/jobs"),
        json!({ "name": "nightly", "kind": "backup", "repository_id": files, "schedule": "0 3 1 1 *",
                "options": { "paths": [source.to_str().unwrap()], "tags": ["web"] } }),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.post(
        &admin,
        &format!("/api/v1/tenants/{acme}/jobs/{job}/run"),
        json!({}),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = server.get(&admin, &format!("/api/v1/tenants/{acme}/jobs/{job}/runs"));
        let status = runs[0]["status"].as_str().unwrap_or("none").to_owned();
        if status == "succeeded" {
            break;
        }
        assert!(
            status != "failed" && Instant::now() < deadline,
            "run: {runs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Tokens of a tenant-bound operator of acme, and a member of acme.
    let user = |name: &str, role: &str| {
        server.post(
            &admin,
            "/api/v1/users",
            json!({ "username": name, "password": "a long password for this user", "role": role, "tenant_id": acme }),
        );
        let session = server.login(name, "a long password for this user");
        let token = server.post(&session, "/api/v1/me/tokens", json!({ "name": "cli" }))["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let file = env.path(&format!("{name}.token"));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        file
    };
    let operator = user("olga", "operator");
    let member = user("mia", "member");

    let (ok, stdout, stderr) = output(
        server.cli(&operator),
        &["--json", "-r", "files", "snapshots"],
    );
    assert!(ok, "{stderr}");
    let snapshots: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{stdout}");
    assert_eq!(snapshots[0]["tags"], json!(["web"]));
    assert_eq!(snapshots[0]["paths"], json!([source.to_str().unwrap()]));
    // The text listing and the filters.
    let (ok, stdout, _) = output(
        server.cli(&operator),
        &["-r", "files", "snapshots", "--tag", "web"],
    );
    assert!(ok && stdout.contains(source.to_str().unwrap()), "{stdout}");
    let (ok, stdout, _) = output(
        server.cli(&operator),
        &["-r", "files", "snapshots", "--tag", "db"],
    );
    assert!(ok && !stdout.contains(source.to_str().unwrap()), "{stdout}");

    // Browse and download without the repository password.
    let (ok, stdout, stderr) = output(
        server.cli(&member),
        &["-r", "files", "ls", "latest", source.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    let listed: Vec<&str> = stdout.lines().collect();
    // Three files, sub/ and its two files.
    assert_eq!(listed.len(), 6, "{stdout}");
    let wanted = source.join("f000");
    assert!(listed.contains(&wanted.to_str().unwrap()), "{stdout}");
    let out = server
        .cli(&member)
        .args(["-r", "files", "dump", "latest"])
        .arg(&wanted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == std::fs::read(&wanted).unwrap(),
        "dump gives the file byte for byte"
    );
    let (ok, _, stderr) = output(
        server.cli(&member),
        &["-r", "files", "dump", "latest", source.to_str().unwrap()],
    );
    assert!(!ok && stderr.contains("not a file"), "{stderr}");

    let (ok, stdout, stderr) = output(server.cli(&operator), &["jobs"]);
    assert!(
        ok && stdout.contains("nightly") && stdout.contains("backup"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = output(server.cli(&operator), &["--json", "runs", "nightly"]);
    assert!(ok, "{stderr}");
    let runs: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["trigger"], "manual");
    let (ok, stdout, _) = output(server.cli(&operator), &["repositories"]);
    assert!(
        ok && stdout.contains("files") && !stdout.contains("secret"),
        "{stdout}"
    );

    // Another tenant is out of reach, by name or by id.
    let (ok, _, stderr) = output(
        server.cli(&operator),
        &["--tenant", "other", "repositories"],
    );
    assert!(
        !ok && stderr.contains("cannot see tenant other"),
        "{stderr}"
    );
    let (ok, _, stderr) = output(server.cli(&operator), &["--tenant", &other, "jobs"]);
    assert!(!ok, "{stderr}");
    let (ok, stdout, stderr) = output(server.cli(&operator), &["-r", "secret", "snapshots"]);
    assert!(
        !ok && stderr.contains("no repository secret"),
        "{stdout}{stderr}"
    );
    // A server-wide admin names the tenant, by name or id.
    let admin_token = server.post(&admin, "/api/v1/me/tokens", json!({ "name": "cli" }))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_file = env.path("admin.token");
    std::fs::write(&admin_file, &admin_token).unwrap();
    let (ok, stdout, stderr) = output(
        server.cli(&admin_file),
        &["--tenant", "other", "repositories"],
    );
    assert!(
        ok && stdout.contains("secret") && !stdout.contains("files"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, _) = output(
        server.cli(&admin_file),
        &["--tenant", &acme, "-r", &files, "snapshots"],
    );
    assert!(ok && stdout.contains(source.to_str().unwrap()), "{stdout}");
    let (ok, _, stderr) = output(server.cli(&admin_file), &["jobs"]);
    assert!(!ok && stderr.contains("name one with --tenant"), "{stderr}");

    // A member may list snapshots but not jobs: the server's refusal is shown.
    let (ok, _, stderr) = output(server.cli(&member), &["-r", "files", "snapshots"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = output(server.cli(&member), &["jobs"]);
    assert!(
        !ok && stderr.contains("403") && stderr.contains("your role does not allow this"),
        "{stderr}"
    );

    // Refusals and mistakes come back as errors that say what to do.
    let bad = env.path("bad.token");
    std::fs::write(&bad, "lbt_not-a-real-token\n").unwrap();
    let (ok, _, stderr) = output(server.cli(&bad), &["jobs"]);
    assert!(!ok && stderr.contains("token was refused"), "{stderr}");
    let mut untrusted = Command::cargo_bin("lifeboat").unwrap();
    untrusted
        .args(["--server", &server.base, "--server-token-file"])
        .arg(&operator)
        .env_remove("LIFEBOAT_SERVER_CA");
    let (ok, _, stderr) = output(untrusted, &["jobs"]);
    assert!(!ok && stderr.contains("--server-ca"), "{stderr}");
    let (ok, _, stderr) = output(server.cli(&operator), &["check"]);
    assert!(!ok && stderr.contains("with --server only"), "{stderr}");
    let (ok, _, stderr) = output(Command::cargo_bin("lifeboat").unwrap(), &["jobs"]);
    assert!(!ok && stderr.contains("give --server"), "{stderr}");

    // Every listing was audited on the server, with the token's user as actor.
    let audit = server
        .client
        .get(format!("{}/api/v1/audit", server.base))
        .header("cookie", &admin.0)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("snapshots.list") && l.contains("olga")),
        "{audit}"
    );
}
