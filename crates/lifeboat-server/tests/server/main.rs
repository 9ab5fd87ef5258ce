//! End-to-end tests of `lifeboat serve`: a real server on loopback, a real HTTPS client
//! trusting its self-signed certificate, real SQLite catalogs and real repositories.

mod catalogs;
mod common;
mod dashboard;
mod pg;
mod smtp;
mod sources;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Auth, JsonValue, TestServer, eventually, test_config};
use lifeboat_server::authz::Permission;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_has_a_one_time_password_that_must_be_changed() {
    first_start_on(test_config()).await;
}

/// The body of `first_start_has_a_one_time_password_that_must_be_changed`, on the catalog `base` names (also run on PostgreSQL: `catalog_pg`).
pub(crate) async fn first_start_on(base: lifeboat_server::ServerConfig) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let server = lifeboat_server::start(base.clone(), &state).await.unwrap();
    let setup = server.setup_password.clone().unwrap();
    assert!(setup.len() >= 32, "one-time password is long: {setup}");
    let test = TestServer {
        client: common::client_for(&server.cert_pem),
        base: format!("https://127.0.0.1:{}", server.https_addr.port()),
        server: Some(server),
        dir,
        config: base.clone(),
    };
    let first = test.login("admin", &setup).await;
    let (status, body) = test.call(&first, Method::GET, "/api/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["must_change_password"], true);
    let (status, _) = test
        .call(&first, Method::GET, "/api/v1/tenants", None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "nothing else before the password is changed"
    );
    let (status, body) = test
        .call(
            &first,
            Method::POST,
            "/api/v1/me/password",
            Some(json!({ "current_password": setup, "new_password": "password1234" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "common password refused: {body}"
    );
    let (status, _) = test
        .call(
            &first,
            Method::POST,
            "/api/v1/me/password",
            Some(json!({ "current_password": setup, "new_password": common::ADMIN_PASSWORD })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = test
        .call(&first, Method::GET, "/api/v1/tenants", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        test.try_login("admin", &setup, json!({})).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut test = test;
    test.restart().await;
    assert!(std::fs::metadata(state.join("server.key")).is_ok());
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_and_tls_below_1_2_is_refused() {
    let (mut test, _admin) = TestServer::start(test_config()).await;
    let http = test.server().http_addr.unwrap();
    let https_port = test.server().https_addr.port();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = plain
        .get(format!("http://127.0.0.1:{}/api/v1/me?x=1", http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        format!("https://127.0.0.1:{https_port}/api/v1/me?x=1")
    );
    let response = plain
        .post(format!("http://127.0.0.1:{}/api/v1/login", http.port()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::PERMANENT_REDIRECT,
        "nothing is served over plain HTTP"
    );

    // TLS 1.2 works; HSTS is sent.
    let tls12 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&test.server().cert_pem).unwrap()])
        .tls_version_max(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let response = tls12
        .get(format!("{}/healthz", test.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("strict-transport-security"));

    // A TLS 1.1 ClientHello (no supported_versions extension) gets an alert, never a ServerHello.
    let mut stream = tokio::net::TcpStream::connect(test.server().https_addr)
        .await
        .unwrap();
    stream.write_all(&client_hello(0x0302)).await.unwrap();
    let mut answer = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        read == 0 || answer[0] == 0x15,
        "expected an alert or a close, got {:?}",
        &answer[..read]
    );
    test.stop().await;
}

/// A minimal ClientHello offering `version` and two TLS 1.0-era cipher suites.
fn client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut handshake = vec![1u8];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_without_locking_the_owner_out_and_unknown_users_look_alike() {
    login_backoff_on(test_config()).await;
}

/// The body of `failed_logins_back_off_without_locking_the_owner_out_and_unknown_users_look_alike`, on the catalog `base` names (also run on PostgreSQL: `catalog_pg`).
pub(crate) async fn login_backoff_on(base: lifeboat_server::ServerConfig) {
    let mut config = base.clone();
    config.login.account_first_delay_secs = 4;
    config.login.account_max_delay_secs = 4;
    let (mut test, admin) = TestServer::start(config).await;
    let tenant = test.tenant(&admin, "acme").await;
    test.user(&admin, "carol", "member", Some(&tenant)).await;

    let unknown = test
        .try_login("nobody", "some long wrong password", json!({}))
        .await;
    let unknown_status = unknown.status();
    let unknown_body = unknown.json_value().await;
    let wrong = test
        .try_login("carol", "some long wrong password", json!({}))
        .await;
    assert_eq!(unknown_status, wrong.status());
    assert_eq!(
        unknown_body,
        wrong.json_value().await,
        "same answer for unknown user and wrong password"
    );

    for _ in 0..4 {
        assert_eq!(
            test.try_login("carol", "another wrong password", json!({}))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Five failures so far: the sixth attempt within the minute is refused, even with the
    // right password, and says when to come back.
    let refused = test
        .try_login("carol", "carol has a long password", json!({}))
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=4).contains(&retry_after),
        "bounded by account_max_delay_secs: {retry_after}"
    );
    tokio::time::sleep(Duration::from_secs(retry_after + 1)).await;
    let ok = test
        .try_login("carol", "carol has a long password", json!({}))
        .await;
    assert_eq!(
        ok.status(),
        StatusCode::OK,
        "the owner gets in once the short delay has passed"
    );

    let audit = test
        .request(&admin, Method::GET, "/api/v1/audit", None)
        .await
        .text()
        .await
        .unwrap();
    let logins: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["action"] == "login")
        .collect();
    assert!(
        logins
            .iter()
            .any(|r| r["outcome"] == "failed" && r["actor"] == "anonymous:nobody")
    );
    assert!(logins.iter().any(|r| r["outcome"] == "denied"));
    assert!(
        logins
            .iter()
            .any(|r| r["outcome"] == "ok" && r["actor"] == "user:carol")
    );
    assert!(
        !audit.contains("long password"),
        "no password in the audit log"
    );
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_login_replay_and_recovery_codes() {
    let (mut test, admin) = TestServer::start(test_config()).await;
    let (status, body) = test
        .call(&admin, Method::POST, "/api/v1/me/totp", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret = data_encoding_decode(body["secret"].as_str().unwrap());
    let now_step = lifeboat_server::totp::step_at(jiff_now());
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            "/api/v1/me/totp/confirm",
            Some(json!({ "code": lifeboat_server::totp::code_at(&secret, now_step) })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let recovery: Vec<String> = serde_json::from_value(body["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);

    let response = test
        .try_login("admin", common::ADMIN_PASSWORD, json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.json_value().await["second_factor_required"], true);

    // The enrolment used `now_step`; the next step's code (within the ±1 window) logs in once.
    let next = lifeboat_server::totp::code_at(&secret, now_step + 1);
    let response = test
        .try_login("admin", common::ADMIN_PASSWORD, json!({ "totp": next }))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let replay = test
        .try_login("admin", common::ADMIN_PASSWORD, json!({ "totp": next }))
        .await;
    assert_eq!(
        replay.status(),
        StatusCode::UNAUTHORIZED,
        "a code works once"
    );
    let old = lifeboat_server::totp::code_at(&secret, now_step);
    assert_eq!(
        test.try_login("admin", common::ADMIN_PASSWORD, json!({ "totp": old }))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let response = test
        .try_login(
            "admin",
            common::ADMIN_PASSWORD,
            json!({ "recovery_code": recovery[3].to_uppercase() }),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "recovery codes work, whatever the case"
    );
    let again = test
        .try_login(
            "admin",
            common::ADMIN_PASSWORD,
            json!({ "recovery_code": recovery[3] }),
        )
        .await;
    assert_eq!(
        again.status(),
        StatusCode::UNAUTHORIZED,
        "each recovery code works once"
    );
    test.stop().await;
}

fn data_encoding_decode(base32: &str) -> Vec<u8> {
    // RFC 4648 base32 without padding, decoded by hand so the test does not share the server's
    // encoder.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut count = 0;
    let mut out = Vec::new();
    for c in base32.bytes() {
        let value = alphabet.iter().position(|&a| a == c).unwrap() as u64;
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

fn jiff_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_scoped_revocable_and_never_worth_more_than_their_owner() {
    api_tokens_on(test_config()).await;
}

/// The body of `api_tokens_are_scoped_revocable_and_never_worth_more_than_their_owner`, on the catalog `base` names (also run on PostgreSQL: `catalog_pg`).
pub(crate) async fn api_tokens_on(base: lifeboat_server::ServerConfig) {
    let (mut test, admin) = TestServer::start(base.clone()).await;
    let tenant = test.tenant(&admin, "acme").await;
    let operator = test.user(&admin, "oscar", "operator", Some(&tenant)).await;
    let (status, _) = test
        .call(
            &operator,
            Method::POST,
            "/api/v1/me/tokens",
            Some(json!({ "name": "too much", "role": "admin" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = test
        .call(
            &operator,
            Method::POST,
            "/api/v1/me/tokens",
            Some(json!({ "name": "audit", "role": "auditor" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "operators cannot read the audit log, so neither can their tokens"
    );
    let (status, body) = test
        .call(
            &operator,
            Method::POST,
            "/api/v1/me/tokens",
            Some(json!({ "name": "browse", "role": "member" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let token_id = body["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("lbt_") && token.len() >= 4 + 43);
    let bearer = Auth::Token(token.clone());
    let (status, _) = test
        .call(
            &bearer,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/repositories"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = test
        .call(
            &bearer,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a member token cannot read jobs"
    );
    let (status, _) = test
        .call(
            &bearer,
            Method::POST,
            "/api/v1/me/tokens",
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "tokens cannot make tokens");
    let (status, listed) = test
        .call(&operator, Method::GET, "/api/v1/me/tokens", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !listed.to_string().contains(&token),
        "the secret is shown once only"
    );
    let (status, _) = test
        .call(
            &operator,
            Method::DELETE,
            &format!("/api/v1/me/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = test
        .call(
            &bearer,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/repositories"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "revoked");

    // Breach response: revoke-all ends every session and token.
    let (_, body) = test
        .call(
            &operator,
            Method::POST,
            "/api/v1/me/tokens",
            Some(json!({ "name": "second" })),
        )
        .await;
    let second = Auth::Token(body["token"].as_str().unwrap().to_owned());
    let (status, _) = test
        .call(&admin, Method::POST, "/api/v1/admin/revoke-all", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for auth in [&second, &operator, &admin] {
        let (status, _) = test.call(auth, Method::GET, "/api/v1/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_requests_need_the_csrf_token() {
    let (mut test, admin) = TestServer::start(test_config()).await;
    let Auth::Session { cookie, .. } = &admin else {
        unreachable!()
    };
    let forged = Auth::Session {
        cookie: cookie.clone(),
        csrf: "guess".into(),
    };
    let (status, _) = test
        .call(
            &forged,
            Method::POST,
            "/api/v1/tenants",
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = test
        .call(&forged, Method::GET, "/api/v1/tenants", None)
        .await;
    assert_eq!(status, StatusCode::OK, "safe methods need no CSRF token");
    let response = test
        .try_login("admin", common::ADMIN_PASSWORD, json!({}))
        .await;
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    test.stop().await;
}

/// Who calls, in the authorisation matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    Anonymous,
    Admin,
    Operator,
    Auditor,
    Member,
    GlobalAuditor,
}

/// The matrix's own statement of who may call what: written independently of the server's
/// `Role::grants`, so a change there that widens access fails here.
fn allowed(method: &str, path: &str, who: Who) -> bool {
    use Who::*;
    let public = matches!(
        (method, path),
        ("GET", "/healthz")
            | ("GET", "/api/v1/openapi.json")
            | ("POST", "/api/v1/login")
            | ("GET", "/")
            | ("GET", "/ui/login")
            | ("POST", "/ui/login")
            | ("GET", "/ui/assets/style.css")
            | ("GET", "/ui/assets/app.js")
    );
    if who == Anonymous || public {
        return public;
    }
    match (method, path) {
        // The dashboard: the same permissions as the API routes showing the same things.
        (_, "/ui") | (_, "/ui/password") | (_, "/ui/logout") => true,
        ("GET", "/ui/audit") => matches!(who, Admin | Auditor | GlobalAuditor),
        ("GET", "/ui/tenants/{tenant}") => true,
        ("GET", "/ui/tenants/{tenant}/repositories/{repository}") => {
            matches!(who, Admin | Operator | Member)
        }
        ("GET", "/ui/tenants/{tenant}/jobs/{job}") | ("GET", "/ui/tenants/{tenant}/runs/{run}") => {
            matches!(who, Admin | Operator | Auditor | GlobalAuditor)
        }
        ("POST", "/ui/tenants/{tenant}/jobs/{job}/run") => matches!(who, Admin | Operator),
        ("GET", "/metrics") => matches!(who, Admin | GlobalAuditor),
        (_, p) if p.starts_with("/api/v1/me") || p == "/api/v1/logout" => true,
        (_, "/api/v1/tenants")
        | (_, "/api/v1/users")
        | (_, "/api/v1/users/{user}")
        | (_, "/api/v1/admin/revoke-all") => who == Admin,
        ("GET", "/api/v1/audit") => matches!(who, Admin | Auditor | GlobalAuditor),
        ("GET", "/api/v1/tenants/{tenant}/repositories")
        | ("GET", "/api/v1/tenants/{tenant}/repositories/{repository}") => true,
        ("GET", p)
            if p.starts_with("/api/v1/tenants/{tenant}/repositories/{repository}/snapshots") =>
        {
            matches!(who, Admin | Operator | Member)
        }
        ("GET", p) if p.contains("/jobs") || p.contains("/runs/") => {
            matches!(who, Admin | Operator | Auditor | GlobalAuditor)
        }
        (_, p) if p.contains("/repositories") || p.contains("/jobs") => {
            matches!(who, Admin | Operator)
        }
        other => panic!("the matrix does not know route {other:?}: add it"),
    }
}

struct Fixture {
    tenant: String,
    /// The file the fixture's backup holds.
    file: std::path::PathBuf,
    repository: String,
    job: String,
    run: String,
}

async fn fixture(test: &TestServer, admin: &Auth, name: &str) -> Fixture {
    let tenant = test.tenant(admin, name).await;
    let repository = test.repository(admin, &tenant, name).await;
    let source = test.dir.path().join(format!("source-{name}"));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("file"), name).unwrap();
    let job = test
        .job(
            admin,
            &tenant,
            &repository,
            name,
            "0 0 1 1 *",
            json!({ "paths": [source] }),
        )
        .await;
    let (status, body) = test
        .call(
            admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}/run"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = eventually(Duration::from_secs(120), "the fixture's run", || async {
        let (_, runs) = test
            .call(
                admin,
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/jobs/{job}/runs"),
                None,
            )
            .await;
        runs.as_array()
            .and_then(|r| r.first())
            .filter(|r| r["status"] != "running")
            .map(|r| r["id"].as_str().unwrap().to_owned())
    })
    .await;
    Fixture {
        tenant,
        file: source.join("file"),
        repository,
        job,
        run,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorisation_matrix_every_route_every_role_own_and_other_tenant() {
    let (mut test, admin) = TestServer::start(test_config()).await;
    let own = fixture(&test, &admin, "own").await;
    let other = fixture(&test, &admin, "other").await;
    let mut callers: HashMap<Who, (Auth, Option<String>)> = HashMap::new();
    callers.insert(Who::Anonymous, (Auth::None, None));
    callers.insert(
        Who::Operator,
        (
            test.user(&admin, "operator", "operator", Some(&own.tenant))
                .await,
            Some("operator has a long password".into()),
        ),
    );
    callers.insert(
        Who::Auditor,
        (
            test.user(&admin, "auditor", "auditor", Some(&own.tenant))
                .await,
            Some("auditor has a long password".into()),
        ),
    );
    callers.insert(
        Who::Member,
        (
            test.user(&admin, "member", "member", Some(&own.tenant))
                .await,
            Some("member has a long password".into()),
        ),
    );
    callers.insert(
        Who::GlobalAuditor,
        (
            test.user(&admin, "global-auditor", "auditor", None).await,
            Some("global-auditor has a long password".into()),
        ),
    );
    callers.insert(
        Who::Admin,
        (admin.clone(), Some(common::ADMIN_PASSWORD.into())),
    );
    let usernames: HashMap<Who, &str> = [
        (Who::Admin, "admin"),
        (Who::Operator, "operator"),
        (Who::Auditor, "auditor"),
        (Who::Member, "member"),
        (Who::GlobalAuditor, "global-auditor"),
    ]
    .into();

    let routes = lifeboat_server::routes::routes();
    let mut checked = 0;
    for (spec, _) in &routes {
        for who in [
            Who::Anonymous,
            Who::Admin,
            Who::Operator,
            Who::Auditor,
            Who::Member,
            Who::GlobalAuditor,
        ] {
            for scope_own in [true, false] {
                if !spec.tenant_scoped() && !scope_own {
                    continue;
                }
                let target = if scope_own { &own } else { &other };
                let (mut auth, password) = callers[&who].clone();
                // Routes that end the caller's session get a fresh one; revoke-all is last.
                if spec.path == "/api/v1/admin/revoke-all" && who == Who::Admin {
                    continue;
                }
                if (spec.path == "/api/v1/logout" || spec.path == "/ui/logout")
                    && who != Who::Anonymous
                {
                    auth = test
                        .login(usernames[&who], password.as_deref().unwrap())
                        .await;
                }
                let mut path = spec
                    .path
                    .replace("{tenant}", &target.tenant)
                    .replace("{run}", &target.run);
                // Deletions get a fresh object each, so later requests still find theirs.
                if spec.method == "DELETE" {
                    if path.contains("{repository}") {
                        let fresh = test
                            .repository(&admin, &target.tenant, &format!("throwaway-{checked}"))
                            .await;
                        path = path.replace("{repository}", &fresh);
                    } else if path.contains("{job}") {
                        let fresh = test
                            .job(
                                &admin,
                                &target.tenant,
                                &target.repository,
                                &format!("throwaway-{checked}"),
                                "0 0 1 1 *",
                                json!({ "paths": ["/nonexistent"] }),
                            )
                            .await;
                        path = path.replace("{job}", &fresh);
                    } else if path.contains("{user}") {
                        let (_, body) = test
                            .call(&admin, Method::POST, "/api/v1/users", Some(json!({ "username": format!("throwaway-{checked}"), "password": "a throwaway password", "role": "member", "tenant_id": own.tenant })))
                            .await;
                        path = path.replace("{user}", body["id"].as_str().unwrap());
                    } else if path.contains("{token}") {
                        let id = match &auth {
                            Auth::None => "0".repeat(32),
                            _ => {
                                let (status, body) = test
                                    .call(
                                        &auth,
                                        Method::POST,
                                        "/api/v1/me/tokens",
                                        Some(json!({ "name": format!("t{checked}") })),
                                    )
                                    .await;
                                assert_eq!(status, StatusCode::CREATED, "{body}");
                                body["id"].as_str().unwrap().to_owned()
                            }
                        };
                        path = path.replace("{token}", &id);
                    }
                }
                path = path
                    .replace("{repository}", &target.repository)
                    .replace("{job}", &target.job)
                    .replace("{snapshot}", "latest");
                if path.ends_with("/file") {
                    path.push_str(&format!("?path={}", target.file.display()));
                }
                let method = Method::from_bytes(spec.method.as_bytes()).unwrap();
                let body = (spec.method == "POST").then(|| json!({}));
                let response = test.request(&auth, method, &path, body).await;
                let status = response.status();
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let answer = response.text().await.unwrap();
                checked += 1;
                let expect_allowed = allowed(spec.method, spec.path, who);
                let tenant_hidden = spec.tenant_scoped()
                    && !scope_own
                    && matches!(who, Who::Operator | Who::Auditor | Who::Member);
                let answer: String = answer.chars().take(300).collect();
                let context = format!(
                    "{who:?} {} {} ({}) → {status} {answer}",
                    spec.method,
                    spec.path,
                    if scope_own {
                        "own tenant"
                    } else {
                        "other tenant"
                    }
                );
                if who == Who::Anonymous && spec.permission != Permission::Public && spec.page {
                    // Pages send the signed-out to the login page instead.
                    assert_eq!(status, StatusCode::SEE_OTHER, "{context}");
                    assert!(location.starts_with("/ui/login"), "{context} → {location}");
                } else if who == Who::Anonymous && spec.permission != Permission::Public {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{context}");
                } else if tenant_hidden {
                    assert_eq!(
                        status,
                        StatusCode::NOT_FOUND,
                        "another tenant's objects are invisible: {context}"
                    );
                } else if expect_allowed {
                    assert!(
                        ![
                            StatusCode::UNAUTHORIZED,
                            StatusCode::FORBIDDEN,
                            StatusCode::NOT_FOUND
                        ]
                        .contains(&status),
                        "should be allowed: {context}"
                    );
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "should be denied: {context}");
                }
            }
        }
    }
    assert!(checked > 200, "the matrix ran {checked} requests");

    // Ids of the other tenant under one's own tenant path: 404, exactly like an unknown id.
    let (operator, _) = &callers[&Who::Operator];
    let unknown = "0".repeat(32);
    for (path_other, path_unknown) in [
        (
            format!("/api/v1/tenants/{}/jobs/{}", own.tenant, other.job),
            format!("/api/v1/tenants/{}/jobs/{unknown}", own.tenant),
        ),
        (
            format!(
                "/api/v1/tenants/{}/repositories/{}",
                own.tenant, other.repository
            ),
            format!("/api/v1/tenants/{}/repositories/{unknown}", own.tenant),
        ),
        (
            format!("/api/v1/tenants/{}/runs/{}", own.tenant, other.run),
            format!("/api/v1/tenants/{}/runs/{unknown}", own.tenant),
        ),
        (
            format!(
                "/api/v1/tenants/{}/repositories/{}/snapshots",
                own.tenant, other.repository
            ),
            format!("/api/v1/tenants/{unknown}/repositories/{unknown}/snapshots"),
        ),
        (
            format!(
                "/api/v1/tenants/{}/repositories/{}/snapshots/latest/file?path={}",
                own.tenant,
                other.repository,
                other.file.display()
            ),
            format!(
                "/api/v1/tenants/{}/repositories/{unknown}/snapshots/latest/file?path={}",
                own.tenant,
                other.file.display()
            ),
        ),
        // The dashboard's pages hide them the same way.
        (
            format!("/ui/tenants/{}/jobs/{}", own.tenant, other.job),
            format!("/ui/tenants/{}/jobs/{unknown}", own.tenant),
        ),
        (
            format!("/ui/tenants/{}/runs/{}", own.tenant, other.run),
            format!("/ui/tenants/{}/runs/{unknown}", own.tenant),
        ),
        (
            format!(
                "/ui/tenants/{}/repositories/{}",
                own.tenant, other.repository
            ),
            format!("/ui/tenants/{}/repositories/{unknown}", own.tenant),
        ),
        (
            format!("/ui/tenants/{}", other.tenant),
            format!("/ui/tenants/{unknown}"),
        ),
    ] {
        let a = test.call(operator, Method::GET, &path_other, None).await;
        let b = test.call(operator, Method::GET, &path_unknown, None).await;
        assert_eq!(a.0, StatusCode::NOT_FOUND, "{path_other}");
        assert_eq!(a, b, "{path_other} answers like {path_unknown}");
    }

    // revoke-all, last: the admin may, and afterwards no session works.
    let (status, _) = test
        .call(&admin, Method::POST, "/api/v1/admin/revoke-all", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = test.call(operator, Method::GET, "/api/v1/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    test.stop().await;
}

/// A member browses a snapshot and downloads a file through the API without the repository
/// password; every listing and download is audited; paths cannot climb out of the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_browses_and_downloads_snapshot_files_and_each_is_audited() {
    let (mut test, admin) = TestServer::start(test_config()).await;
    let own = fixture(&test, &admin, "own").await;
    // A file of several chunks, to stream more than one blob.
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let source = own.file.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(source.join("sub")).unwrap();
    std::fs::write(source.join("sub/big.bin"), &big).unwrap();
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{}/jobs/{}/run", own.tenant, own.job),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually(Duration::from_secs(120), "the second run", || async {
        let (_, runs) = test
            .call(
                &admin,
                Method::GET,
                &format!("/api/v1/tenants/{}/jobs/{}/runs", own.tenant, own.job),
                None,
            )
            .await;
        (runs.as_array().map_or(0, Vec::len) == 2 && runs[0]["status"] == "succeeded").then_some(())
    })
    .await;
    let member = test.user(&admin, "mia", "member", Some(&own.tenant)).await;
    let snapshots = format!(
        "/api/v1/tenants/{}/repositories/{}/snapshots",
        own.tenant, own.repository
    );

    let (status, listing) = test
        .call(
            &member,
            Method::GET,
            &format!("{snapshots}/latest/entries?path={}", source.display()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let paths: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let sub = source.join("sub");
    assert_eq!(
        paths,
        [own.file.to_str().unwrap(), sub.to_str().unwrap()],
        "one level: {listing}"
    );
    let (_, listing) = test
        .call(
            &member,
            Method::GET,
            &format!(
                "{snapshots}/latest/entries?path={}&recursive=true",
                source.display()
            ),
            None,
        )
        .await;
    let big_entry = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with("big.bin"))
        .unwrap();
    assert_eq!(big_entry["size"], big.len());
    assert_eq!(big_entry["kind"], "file");

    let response = test
        .request(
            &member,
            Method::GET,
            &format!(
                "{snapshots}/latest/file?path={}/sub/big.bin",
                source.display()
            ),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        big.len().to_string().as_str()
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("big.bin")
    );
    let body = response.bytes().await.unwrap();
    assert!(
        body[..] == big[..],
        "the download is the file, byte for byte"
    );
    // The first snapshot, by its id, did not have it yet.
    let (_, list) = test.call(&member, Method::GET, &snapshots, None).await;
    let oldest = list
        .as_array()
        .unwrap()
        .iter()
        .min_by_key(|s| s["time"].as_str().unwrap().to_owned())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = test
        .call(
            &member,
            Method::GET,
            &format!(
                "{snapshots}/{oldest}/file?path={}/sub/big.bin",
                source.display()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = test
        .call(
            &member,
            Method::GET,
            &format!(
                "{snapshots}/{}/file?path={}",
                &oldest[..8],
                own.file.display()
            ),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a unique prefix names a snapshot: {body}"
    );
    assert_eq!(body, Value::String("own".into()));

    // Refusals: a directory, a climbing path, an unknown snapshot.
    for (query, expected) in [
        (
            format!("latest/file?path={}", source.display()),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("latest/file?path={}/../../etc/passwd", source.display()),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("latest/entries?path={}/..", source.display()),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("{}/file?path={}", "f".repeat(64), own.file.display()),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = test
            .call(&member, Method::GET, &format!("{snapshots}/{query}"), None)
            .await;
        assert_eq!(status, expected, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }

    let (_, audit) = test.call(&admin, Method::GET, "/api/v1/audit", None).await;
    let audit = audit.as_str().unwrap().to_owned();
    let downloads: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "snapshot.download")
        .collect();
    assert_eq!(downloads.len(), 2, "{audit}");
    assert_eq!(downloads[0]["actor"], "user:mia");
    let detail: Value = serde_json::from_str(downloads[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["bytes"], big.len());
    assert!(detail["path"].as_str().unwrap().ends_with("sub/big.bin"));
    assert!(
        audit
            .lines()
            .filter(|l| l.contains("snapshot.browse"))
            .count()
            >= 2
    );
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_detects_a_flipped_byte_a_deleted_row_and_swapped_rows() {
    audit_verify_on(test_config()).await;
}

/// The body of `audit_verify_detects_a_flipped_byte_a_deleted_row_and_swapped_rows`, on the catalog `base` names (also run on PostgreSQL: `catalog_pg`).
pub(crate) async fn audit_verify_on(base: lifeboat_server::ServerConfig) {
    let (mut test, admin) = TestServer::start(base.clone()).await;
    for name in ["a", "b", "c", "d"] {
        test.tenant(&admin, name).await;
    }
    test.stop().await;
    let state = test.state_dir();
    let intact = verify_edited(&test.config, &state, None).await;
    assert!(intact.problems.is_empty(), "{:?}", intact.problems);
    assert!(
        intact.rows >= 8,
        "setup, logins, password change, tenants: {}",
        intact.rows
    );

    // Flip one byte of row 4's actor.
    let found = verify_edited(
        &test.config,
        &state,
        Some("UPDATE audit_log SET actor = 'user:admiN' WHERE seq = 4"),
    )
    .await;
    assert_eq!(found.problems[0].seq, 4, "{:?}", found.problems);
    // Delete row 3: row 4 no longer follows.
    let found = verify_edited(
        &test.config,
        &state,
        Some("DELETE FROM audit_log WHERE seq = 3"),
    )
    .await;
    assert_eq!(found.problems[0].seq, 4, "{:?}", found.problems);
    // Swap rows 5 and 6 (their sequence numbers).
    let found = verify_edited(
        &test.config,
        &state,
        Some("UPDATE audit_log SET seq = -5 WHERE seq = 5; UPDATE audit_log SET seq = 5 WHERE seq = 6; UPDATE audit_log SET seq = 6 WHERE seq = -5"),
    )
    .await;
    assert_eq!(found.problems[0].seq, 5, "{:?}", found.problems);
    // Delete the newest row: only the head file shows it.
    let found = verify_edited(
        &test.config,
        &state,
        Some("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"),
    )
    .await;
    assert!(!found.problems.is_empty());
    assert!(
        found.problems[0].message.contains("tail"),
        "{:?}",
        found.problems
    );
}

/// Applies `edit` to the catalog, runs `lifeboat audit verify` (the offline command, which
/// opens the catalog itself), then puts the log back as it was.
async fn verify_edited(
    config: &lifeboat_server::ServerConfig,
    state: &std::path::Path,
    edit: Option<&str>,
) -> lifeboat_server::audit::Verification {
    let dir = lifeboat_server::StateDir::open(state).unwrap();
    let pool = lifeboat_server::catalog::open(&config.catalog, &dir)
        .await
        .unwrap();
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS audit_saved; CREATE TABLE audit_saved AS SELECT * FROM audit_log",
    )
    .execute(&pool)
    .await
    .unwrap();
    if let Some(sql) = edit {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    }
    let (config_copy, state_copy) = (config.clone(), state.to_owned());
    // Its own thread: the command builds its own runtime.
    let verification = std::thread::spawn(move || {
        lifeboat_server::offline::verify_audit(&config_copy, &state_copy)
    })
    .join()
    .unwrap()
    .unwrap();
    sqlx::raw_sql(
        "DELETE FROM audit_log; INSERT INTO audit_log SELECT * FROM audit_saved; DROP TABLE audit_saved",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    verification
}

/// A webhook receiver: records every JSON body posted to it.
async fn webhook_receiver() -> (String, Arc<parking_lot::Mutex<Vec<Value>>>) {
    let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let store = Arc::clone(&store);
            async move {
                store
                    .lock()
                    .push(serde_json::from_str::<Value>(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_scheduled_every_minute_runs_and_a_failing_job_alerts_once_then_resolves() {
    let (url, received) = webhook_receiver().await;
    let mut config = test_config();
    config.alerts.webhook_url = Some(url);
    let (mut test, admin) = TestServer::start(config).await;
    let tenant = test.tenant(&admin, "acme").await;
    let repository = test.repository(&admin, &tenant, "main").await;
    let source = test.dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("data.txt"), "x".repeat(10_000)).unwrap();
    let good = test
        .job(
            &admin,
            &tenant,
            &repository,
            "nightly",
            "* * * * *",
            json!({ "paths": [source] }),
        )
        .await;
    let missing = test.dir.path().join("not-yet");
    let bad = test
        .job(
            &admin,
            &tenant,
            &repository,
            "broken",
            "* * * * *",
            json!({ "paths": [missing] }),
        )
        .await;

    let runs_of = |job: String| {
        let test = &test;
        let admin = &admin;
        let tenant = &tenant;
        async move {
            let (_, runs) = test
                .call(
                    admin,
                    Method::GET,
                    &format!("/api/v1/tenants/{tenant}/jobs/{job}/runs"),
                    None,
                )
                .await;
            runs.as_array().cloned().unwrap_or_default()
        }
    };
    let run = eventually(
        Duration::from_secs(150),
        "the every-minute job's first run",
        || async {
            runs_of(good.clone())
                .await
                .into_iter()
                .find(|r| r["status"] == "succeeded")
        },
    )
    .await;
    assert_eq!(run["trigger"], "schedule");
    assert!(run["bytes"].as_i64().unwrap() > 0, "{run}");
    assert!(run["finished_at"].as_i64().unwrap() >= run["started_at"].as_i64().unwrap());

    let failed = eventually(
        Duration::from_secs(150),
        "the failing job's run",
        || async {
            runs_of(bad.clone())
                .await
                .into_iter()
                .find(|r| r["status"] == "failed")
        },
    )
    .await;
    assert!(
        failed["log"].as_str().unwrap().contains("not-yet"),
        "{failed}"
    );
    let firing = eventually(Duration::from_secs(30), "the alert", || async {
        received
            .lock()
            .iter()
            .find(|m| m["text"].as_str().unwrap_or("").contains("[FIRING]"))
            .cloned()
    })
    .await;
    assert!(
        firing["text"].as_str().unwrap().contains("broken"),
        "{firing}"
    );

    // Failing again does not alert again.
    let before = runs_of(bad.clone()).await.len();
    wait_idle(&test, &admin, &tenant, &bad).await;
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs/{bad}/run"),
            None,
        )
        .await;
    // 409: the every-minute schedule started it just now, which serves as well.
    assert!(
        [StatusCode::ACCEPTED, StatusCode::CONFLICT].contains(&status),
        "{status}"
    );
    eventually(Duration::from_secs(60), "the second failure", || async {
        let runs = runs_of(bad.clone()).await;
        (runs.len() > before && runs.iter().all(|r| r["status"] != "running")).then_some(())
    })
    .await;
    let firing_count = received
        .lock()
        .iter()
        .filter(|m| m["text"].as_str().unwrap_or("").contains("[FIRING]"))
        .count();
    assert_eq!(firing_count, 1, "de-duplicated: {:?}", received.lock());

    // Fixed: the next run succeeds and the alert resolves.
    std::fs::create_dir_all(&missing).unwrap();
    wait_idle(&test, &admin, &tenant, &bad).await;
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs/{bad}/run"),
            None,
        )
        .await;
    // 409: the every-minute schedule started it just now, which serves as well.
    assert!(
        [StatusCode::ACCEPTED, StatusCode::CONFLICT].contains(&status),
        "{status}"
    );
    eventually(Duration::from_secs(60), "the resolved message", || async {
        received
            .lock()
            .iter()
            .any(|m| m["text"].as_str().unwrap_or("").contains("[RESOLVED]"))
            .then_some(())
    })
    .await;

    let metrics = test
        .request(&admin, Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "lifeboat_job_last_success_timestamp_seconds{{tenant=\"{tenant}\",job=\"nightly\""
        )),
        "{metrics}"
    );
    assert!(metrics.contains("lifeboat_job_last_success_age_seconds"));
    assert!(metrics.contains("lifeboat_job_failures_total{"));
    assert!(metrics.contains(
        "lifeboat_http_requests_total{method=\"POST\",route=\"/api/v1/login\",status=\"200\"}"
    ));
    let healthz = test.call(&Auth::None, Method::GET, "/healthz", None).await;
    assert_eq!(healthz.0, StatusCode::OK);
    test.stop().await;
}

async fn wait_idle(test: &TestServer, admin: &Auth, tenant: &str, job: &str) {
    eventually(Duration::from_secs(120), "the job to be idle", || async {
        let (_, body) = test
            .call(
                admin,
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/jobs/{job}"),
                None,
            )
            .await;
        (body["running"] == false).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resumes_the_schedule_and_marks_interrupted_runs() {
    restart_resumes_on(test_config()).await;
}

/// The body of `a_restarted_server_resumes_the_schedule_and_marks_interrupted_runs`, on the catalog `base` names (also run on PostgreSQL: `catalog_pg`).
pub(crate) async fn restart_resumes_on(base: lifeboat_server::ServerConfig) {
    let (mut test, admin) = TestServer::start(base.clone()).await;
    let tenant = test.tenant(&admin, "acme").await;
    let repository = test.repository(&admin, &tenant, "main").await;
    let source = test.dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("f"), "data").unwrap();
    let job = test
        .job(
            &admin,
            &tenant,
            &repository,
            "hourly",
            "0 * * * *",
            json!({ "paths": [source] }),
        )
        .await;
    test.stop().await;

    // While the server was down: the hourly start passed, and a run was left `running`.
    {
        let state = lifeboat_server::StateDir::open(&test.state_dir()).unwrap();
        let pool = lifeboat_server::catalog::open(&test.config.catalog, &state)
            .await
            .unwrap();
        let past = lifeboat_server::catalog::now_millis() - 10 * 60_000;
        sqlx::query("UPDATE jobs SET next_run_at = $1 WHERE id = $2")
            .bind(past)
            .bind(&job)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO runs (id, job_id, tenant_id, attempt, trigger, status, started_at) VALUES ('crashed', $1, $2, 1, 'schedule', 'running', $3)")
            .bind(&job)
            .bind(&tenant)
            .bind(past)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    test.restart().await;
    let admin = test.login("admin", common::ADMIN_PASSWORD).await;
    let (status, crashed) = test
        .call(
            &admin,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/runs/crashed"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(crashed["status"], "interrupted");
    let run = eventually(
        Duration::from_secs(120),
        "the missed start to run after the restart",
        || async {
            let (_, runs) = test
                .call(
                    &admin,
                    Method::GET,
                    &format!("/api/v1/tenants/{tenant}/jobs/{job}/runs"),
                    None,
                )
                .await;
            runs.as_array()?
                .iter()
                .find(|r| r["trigger"] == "catch-up" && r["status"] == "succeeded")
                .cloned()
        },
    )
    .await;
    assert_eq!(run["attempt"], 1);
    let (_, job_now) = test
        .call(
            &admin,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}"),
            None,
        )
        .await;
    assert!(
        job_now["next_run_at"].as_i64().unwrap() > lifeboat_server::catalog::now_millis(),
        "the schedule goes on"
    );
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_argon2_costs_rehash_at_the_next_login_and_idle_sessions_end() {
    let mut config = test_config();
    config.sessions.idle_timeout_secs = 2;
    config.sessions.absolute_timeout_secs = 3600;
    let (mut test, admin) = TestServer::start(config).await;
    let hash_of = |test: &TestServer| {
        let pool = test.server().app.pool.clone();
        async move {
            let (hash,): (String,) =
                sqlx::query_as("SELECT password_hash FROM users WHERE username = 'admin'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            hash
        }
    };
    assert!(hash_of(&test).await.contains("m=19456,t=2,p=1"));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = test.call(&admin, Method::GET, "/api/v1/me", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the session ended after 2 s unused"
    );

    test.config.passwords.argon2_iterations = 3;
    test.restart().await;
    assert!(
        hash_of(&test).await.contains("t=2"),
        "unchanged until the user logs in"
    );
    test.login("admin", common::ADMIN_PASSWORD).await;
    assert!(
        hash_of(&test).await.contains("m=19456,t=3,p=1"),
        "rehashed with the raised costs"
    );
    test.login("admin", common::ADMIN_PASSWORD).await;
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_job_copies_snapshots_to_a_second_repository_of_the_tenant_only() {
    let (mut test, admin) = TestServer::start(test_config()).await;
    let tenant = test.tenant(&admin, "acme").await;
    let other_tenant = test.tenant(&admin, "rival").await;
    let main = test.repository(&admin, &tenant, "main").await;
    let foreign = test.repository(&admin, &other_tenant, "foreign").await;
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/repositories"),
            Some(json!({
                "name": "second-site", "location": test.dir.path().join("second"), "password": "another password",
                "init": true, "copy_content_keys_from": main, "insecure_kdf_for_tests": true,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = body["id"].as_str().unwrap().to_owned();
    let source = test.dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("f"), "to be copied").unwrap();
    let backup = test
        .job(
            &admin,
            &tenant,
            &main,
            "backup",
            "0 0 1 1 *",
            json!({ "paths": [source] }),
        )
        .await;
    let copy_job = |to: &str| json!({ "name": format!("copy-{to}"), "kind": "copy", "repository_id": main, "schedule": "0 0 1 1 *", "options": { "to_repository_id": to } });
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(copy_job(&foreign)),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's repository is not a destination"
    );
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(copy_job(&second)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let copy = body["id"].as_str().unwrap().to_owned();

    for job in [&backup, &copy] {
        let (status, _) = test
            .call(
                &admin,
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/jobs/{job}/run"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let run = eventually(Duration::from_secs(120), "the run", || async {
            let (_, runs) = test
                .call(
                    &admin,
                    Method::GET,
                    &format!("/api/v1/tenants/{tenant}/jobs/{job}/runs"),
                    None,
                )
                .await;
            runs.as_array()?
                .first()
                .filter(|r| r["status"] != "running")
                .cloned()
        })
        .await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let (status, snapshots) = test
        .call(
            &admin,
            Method::GET,
            &format!("/api/v1/tenants/{tenant}/repositories/{second}/snapshots"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_recent_success_raises_a_stale_alert_that_resolves() {
    let (url, received) = webhook_receiver().await;
    let mut config = test_config();
    config.alerts.webhook_url = Some(url);
    let (mut test, admin) = TestServer::start(config).await;
    let tenant = test.tenant(&admin, "acme").await;
    let repository = test.repository(&admin, &tenant, "main").await;
    let source = test.dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(json!({ "name": "rarely", "kind": "backup", "repository_id": repository, "schedule": "0 0 1 1 *",
                         "options": { "paths": [source] }, "stale_after_secs": 10 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = body["id"].as_str().unwrap().to_owned();
    let texts = |received: &Arc<parking_lot::Mutex<Vec<Value>>>| -> Vec<String> {
        received
            .lock()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    eventually(Duration::from_secs(60), "the stale alert", || async {
        texts(&received)
            .iter()
            .any(|t| {
                t.contains("[FIRING]") && t.contains("rarely") && t.contains("never succeeded")
            })
            .then_some(())
    })
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
    eventually(
        Duration::from_secs(60),
        "the stale alert to resolve",
        || async {
            texts(&received)
                .iter()
                .any(|t| t.contains("[RESOLVED]") && t.contains("no longer stale"))
                .then_some(())
        },
    )
    .await;
    let firing = texts(&received)
        .iter()
        .filter(|t| t.contains("[FIRING]"))
        .count();
    assert_eq!(firing, 1, "{:?}", texts(&received));
    test.stop().await;
}

/// An unknown user costs an argon2id verification like a wrong password does, so response
/// time does not tell which user names exist. Compared on medians with a wide margin: without
/// the dummy hash the unknown user would answer a hundred times faster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_take_about_as_long_as_wrong_passwords() {
    let (mut test, admin) = TestServer::start(test_config()).await;
    let tenant = test.tenant(&admin, "acme").await;
    test.user(&admin, "dora", "member", Some(&tenant)).await;
    async fn timed(test: &TestServer, user: &str) -> Duration {
        let start = std::time::Instant::now();
        let response = test
            .try_login(user, "not the right password", json!({}))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        start.elapsed()
    }
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for i in 0..5 {
        unknown.push(timed(&test, &format!("ghost{i}")).await);
        wrong.push(timed(&test, "dora").await);
    }
    unknown.sort();
    wrong.sort();
    let (unknown, wrong) = (unknown[2], wrong[2]);
    assert!(
        unknown * 4 >= wrong,
        "unknown user {unknown:?} vs wrong password {wrong:?}"
    );
    assert!(
        wrong * 4 >= unknown,
        "unknown user {unknown:?} vs wrong password {wrong:?}"
    );
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_after_a_delay_and_alerts_only_after_the_last() {
    let (url, received) = webhook_receiver().await;
    let mut config = test_config();
    config.alerts.webhook_url = Some(url);
    let (mut test, admin) = TestServer::start(config).await;
    let tenant = test.tenant(&admin, "acme").await;
    let repository = test.repository(&admin, &tenant, "main").await;
    let missing = test.dir.path().join("missing");
    let (status, body) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs"),
            Some(json!({ "name": "flaky", "kind": "backup", "repository_id": repository, "schedule": "0 0 1 1 *",
                         "options": { "paths": [missing] }, "max_retries": 1, "retry_base_secs": 3 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = body["id"].as_str().unwrap().to_owned();
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}/run"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = test
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/jobs/{job}/run"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "runs of one job never overlap, retries included"
    );
    let runs = eventually(Duration::from_secs(120), "both attempts", || async {
        let (_, runs) = test
            .call(
                &admin,
                Method::GET,
                &format!("/api/v1/tenants/{tenant}/jobs/{job}/runs"),
                None,
            )
            .await;
        let runs = runs.as_array()?.clone();
        (runs.len() == 2 && runs.iter().all(|r| r["status"] == "failed")).then_some(runs)
    })
    .await;
    // Newest first.
    assert_eq!(
        (runs[0]["attempt"].as_i64(), runs[0]["trigger"].as_str()),
        (Some(2), Some("retry"))
    );
    assert_eq!(
        (runs[1]["attempt"].as_i64(), runs[1]["trigger"].as_str()),
        (Some(1), Some("manual"))
    );
    assert!(
        runs[0]["started_at"].as_i64().unwrap() >= runs[1]["finished_at"].as_i64().unwrap() + 3000,
        "retried after the delay"
    );
    eventually(
        Duration::from_secs(30),
        "one alert after the last attempt",
        || async {
            let texts: Vec<String> = received
                .lock()
                .iter()
                .map(|m| m["text"].to_string())
                .collect();
            (texts.len() == 1 && texts[0].contains("after 2 attempt(s)")).then_some(())
        },
    )
    .await;
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_reach_only_the_paths_and_locations_the_server_allows() {
    let mut config = test_config();
    let (mut test, _) = TestServer::start(config.clone()).await;
    let allowed = test.dir.path().join("tenant-area");
    std::fs::create_dir_all(allowed.join("data")).unwrap();
    config.jobs.backup_roots = vec![allowed.clone()];
    config.jobs.repository_roots = vec![allowed.display().to_string()];
    test.config = config;
    test.restart().await;
    let admin = test.login("admin", common::ADMIN_PASSWORD).await;
    let tenant = test.tenant(&admin, "acme").await;
    let operator = test.user(&admin, "olga", "operator", Some(&tenant)).await;
    let repository = |location: std::path::PathBuf| json!({ "name": location.file_name().unwrap().to_str().unwrap(), "location": location, "password": "repository password", "init": true, "insecure_kdf_for_tests": true });
    let path = format!("/api/v1/tenants/{tenant}/repositories");
    let (status, _) = test
        .call(
            &operator,
            Method::POST,
            &path,
            Some(repository(test.dir.path().join("elsewhere"))),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        !test.dir.path().join("elsewhere").exists(),
        "nothing was written outside the roots"
    );
    let (status, _) = test
        .call(
            &operator,
            Method::POST,
            &path,
            Some(repository(allowed.join("data/../../escape"))),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = test
        .call(
            &operator,
            Method::POST,
            &path,
            Some(repository(allowed.join("repo"))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let repository_id = body["id"].as_str().unwrap().to_owned();
    let job = |paths: Value| json!({ "name": "j", "kind": "backup", "repository_id": repository_id, "schedule": "0 0 1 1 *", "options": { "paths": paths } });
    let jobs_path = format!("/api/v1/tenants/{tenant}/jobs");
    let (status, _) = test
        .call(
            &operator,
            Method::POST,
            &jobs_path,
            Some(job(json!(["/etc"]))),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the server's own files are out of reach"
    );
    let (status, _) = test
        .call(
            &operator,
            Method::POST,
            &jobs_path,
            Some(job(json!([allowed.join("data"), "/etc"]))),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = test
        .call(
            &operator,
            Method::POST,
            &jobs_path,
            Some(job(json!([allowed.join("data")]))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    test.stop().await;
}
