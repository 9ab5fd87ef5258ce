//! A real server on loopback ports in a temporary state directory, and a real HTTPS client
//! that trusts exactly its self-signed certificate.

use std::time::{Duration, Instant};

use lifeboat_server::{RunningServer, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "a long admin passphrase for tests";

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    pub base: String,
    pub config: ServerConfig,
}

#[derive(Clone, Debug)]
pub enum Auth {
    Session { cookie: String, csrf: String },
    Token(String),
    None,
}

pub fn test_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen.https = "127.0.0.1:0".parse().unwrap();
    config.listen.http = Some("127.0.0.1:0".parse().unwrap());
    config
}

pub fn client_for(cert_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

impl TestServer {
    /// Starts a server with `config` in a fresh state directory, sets the admin's password.
    pub async fn start(config: ServerConfig) -> (TestServer, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let server = lifeboat_server::start(config.clone(), &dir.path().join("state"))
            .await
            .unwrap();
        let setup = server
            .setup_password
            .clone()
            .expect("first start prints a one-time password");
        let client = client_for(&server.cert_pem);
        let base = format!("https://127.0.0.1:{}", server.https_addr.port());
        let test = TestServer {
            server: Some(server),
            dir,
            client,
            base,
            config,
        };
        let first = test.login("admin", &setup).await;
        let (status, body) = test
            .call(
                &first,
                Method::POST,
                "/api/v1/me/password",
                Some(json!({ "current_password": setup, "new_password": ADMIN_PASSWORD })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let admin = test.login("admin", ADMIN_PASSWORD).await;
        (test, admin)
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Starts again on the same state directory (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let server = lifeboat_server::start(self.config.clone(), &self.state_dir())
            .await
            .unwrap();
        assert!(server.setup_password.is_none(), "no second setup password");
        self.client = client_for(&server.cert_pem);
        self.base = format!("https://127.0.0.1:{}", server.https_addr.port());
        self.server = Some(server);
    }

    pub async fn try_login(
        &self,
        username: &str,
        password: &str,
        extra: Value,
    ) -> reqwest::Response {
        let mut body = json!({ "username": username, "password": password });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.client
            .post(format!("{}/api/v1/login", self.base))
            .json_body(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> Auth {
        let response = self.try_login(username, password, json!({})).await;
        session_from(response).await
    }

    pub async fn call(
        &self,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let response = self.request(auth, method, path, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn request(
        &self,
        auth: &Auth,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        match auth {
            Auth::Session { cookie, csrf } => {
                request = request
                    .header("cookie", format!("lifeboat_session={cookie}"))
                    .header("x-csrf-token", csrf);
            }
            Auth::Token(token) => {
                request = request.header("authorization", format!("Bearer {token}"))
            }
            Auth::None => {}
        }
        if let Some(body) = body {
            request = request.json_body(&body);
        }
        request.send().await.unwrap()
    }

    /// Creates a user (by the admin) and signs it in.
    pub async fn user(
        &self,
        admin: &Auth,
        username: &str,
        role: &str,
        tenant: Option<&str>,
    ) -> Auth {
        let password = format!("{username} has a long password");
        let (status, body) = self
            .call(admin, Method::POST, "/api/v1/users", Some(json!({ "username": username, "password": password, "role": role, "tenant_id": tenant })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login(username, &password).await
    }

    pub async fn tenant(&self, admin: &Auth, name: &str) -> String {
        let (status, body) = self
            .call(
                admin,
                Method::POST,
                "/api/v1/tenants",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Initialises a repository in the test directory and registers it for `tenant`.
    pub async fn repository(&self, auth: &Auth, tenant: &str, name: &str) -> String {
        let location = self.dir.path().join(format!("repo-{name}"));
        let (status, body) = self
            .call(
                auth,
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/repositories"),
                Some(json!({ "name": name, "location": location, "password": "repository password", "init": true, "insecure_kdf_for_tests": true })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn job(
        &self,
        auth: &Auth,
        tenant: &str,
        repository: &str,
        name: &str,
        schedule: &str,
        options: Value,
    ) -> String {
        let (status, body) = self
            .call(
                auth,
                Method::POST,
                &format!("/api/v1/tenants/{tenant}/jobs"),
                Some(json!({ "name": name, "kind": "backup", "repository_id": repository, "schedule": schedule, "options": options, "max_retries": 0 })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

pub async fn session_from(response: reqwest::Response) -> Auth {
    let status = response.status();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("lifeboat_session="))
        .map(|v| v.split(';').next().unwrap().to_owned());
    let body: Value = response.json_value().await;
    assert_eq!(status, StatusCode::OK, "login failed: {body}");
    Auth::Session {
        cookie: cookie.expect("login sets the session cookie"),
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// Polls `check` until it returns Some or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// JSON without reqwest's `json` feature.
pub trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}

pub trait JsonValue {
    fn json_value(self) -> impl std::future::Future<Output = Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        let text = self.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}
