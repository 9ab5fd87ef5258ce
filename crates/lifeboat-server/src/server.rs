//! Starting and stopping the server: state directory, catalog, keys, certificate, the HTTPS
//! and redirect listeners, and the scheduler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::alerts::Alerter;
use crate::audit::{AuditLog, Event};
use crate::catalog::{self, Pool};
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::identity;
use crate::metrics::Metrics;
use crate::password::PasswordHasher;
use crate::replication::Replication;
use crate::routes::{self, RouteSpec};
use crate::scheduler::{self, Running};
use crate::secrets::Sealer;
use crate::state::{SERVER_KEY, StateDir};
use crate::throttle::LoginThrottle;
use crate::tls;

/// Everything handlers share.
pub struct AppState {
    /// The catalog.
    pub pool: Pool,
    /// The configuration in force.
    pub config: ServerConfig,
    /// The state directory.
    pub state_dir: StateDir,
    /// Password hashing at the configured costs.
    pub hasher: PasswordHasher,
    /// Seals secrets under the server key.
    pub sealer: Sealer,
    /// Login backoff.
    pub throttle: LoginThrottle,
    /// The audit log.
    pub audit: AuditLog,
    /// Alert delivery.
    pub alerter: Alerter,
    /// Request counters.
    pub metrics: Metrics,
    /// Jobs running now.
    pub running: Running,
    /// The continuous jobs' replicators.
    pub replication: Replication,
    /// The route table, by (method, pattern).
    pub routes: HashMap<(String, String), RouteSpec>,
    /// This process's random id: the owner of the job leases it takes (see `scheduler`).
    pub instance: String,
}

/// A started server.
pub struct RunningServer {
    /// The HTTPS address actually bound (useful with port 0).
    pub https_addr: SocketAddr,
    /// The redirect listener's address.
    pub http_addr: Option<SocketAddr>,
    /// On first start: the one-time password of user `admin` (print it once).
    pub setup_password: Option<String>,
    /// The certificate served, PEM (clients of a self-signed server trust exactly this).
    pub cert_pem: Vec<u8>,
    /// Where the catalog is (a path, or a PostgreSQL URL without its password).
    pub catalog: String,
    /// Shared state (tests reach the catalog through it).
    pub app: Arc<AppState>,
    handle: axum_server::Handle<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets requests finish (up to five seconds) and stops the scheduler and
    /// the replicators (each stores what it captured, up to 30 seconds).
    pub async fn shutdown(self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.app.pool.close().await;
    }
}

/// Opens the state directory and catalog, creates the first admin if there is no user, and
/// starts the listeners and the scheduler.
pub async fn start(config: ServerConfig, state_dir: &Path) -> Result<RunningServer> {
    config.validate().map_err(|message| Error::Config {
        path: state_dir.join("(configuration)"),
        message,
    })?;
    let state = StateDir::open(state_dir)?;
    let pool = catalog::open(&config.catalog, &state).await?;
    let catalog_description = catalog::describe(&config.catalog, &state);
    tracing::info!("catalog: {catalog_description}");
    let sealer = Sealer::new(&*state.key(SERVER_KEY)?);
    let audit = AuditLog::open(&state)?;
    let hasher = tokio::task::block_in_place(|| PasswordHasher::new(&config.passwords))?;
    let setup_password = identity::create_first_admin(&pool, &hasher).await?;
    if setup_password.is_some() {
        audit
            .append(
                &pool,
                Event::new("system:setup", "user.create", "local")
                    .target("admin")
                    .detail(serde_json::json!({"role": "admin", "one_time_password": true})),
            )
            .await?;
    }
    let interrupted = scheduler::recover(&pool).await?;
    if interrupted > 0 {
        tracing::warn!("{interrupted} run(s) were interrupted by the last stop");
    }

    let files = tls::load_or_generate(&config.tls, &state, config.listen.https)?;
    let tls_config = tls::server_config(&files)?;

    let https_listener =
        std::net::TcpListener::bind(config.listen.https).map_err(|source| Error::Bind {
            addr: config.listen.https,
            source,
        })?;
    https_listener
        .set_nonblocking(true)
        .map_err(|source| Error::Bind {
            addr: config.listen.https,
            source,
        })?;
    let https_addr = https_listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen.https,
        source,
    })?;

    let http_listener = match config.listen.http.filter(|_| config.listen.http_redirect) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?,
        ),
        None => None,
    };
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr().map_err(|source| Error::Bind {
            addr: https_addr,
            source,
        })?),
        None => None,
    };

    let app = Arc::new(AppState {
        pool,
        throttle: LoginThrottle::new(&config.login),
        alerter: Alerter::from_config(&config.alerts)?,
        routes: routes::table(),
        config,
        state_dir: state,
        hasher,
        sealer,
        audit,
        metrics: Metrics::default(),
        running: Running::default(),
        replication: Replication::default(),
        instance: catalog::new_id(),
    });

    let handle = axum_server::Handle::new();
    let router = routes::router(Arc::clone(&app));
    let rustls = axum_server::tls_rustls::RustlsConfig::from_config(tls_config);
    let server = axum_server::from_tcp_rustls(https_listener, rustls)
        .map_err(|source| Error::Bind {
            addr: https_addr,
            source,
        })?
        .handle(handle.clone());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server
            .serve(router.into_make_service_with_connect_info::<SocketAddr>())
            .await
        {
            tracing::error!("HTTPS listener stopped: {e}");
        }
    }));

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listener) = http_listener {
        let redirect = redirect_router(https_addr.port(), app.config.listen.public_url.clone());
        let mut stop_http = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_http.changed().await;
            };
            if let Err(e) = axum::serve(listener, redirect)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!("HTTP redirect listener stopped: {e}");
            }
        }));
    }
    tasks.push(tokio::spawn(scheduler::run(Arc::clone(&app), stop_rx)));

    Ok(RunningServer {
        https_addr,
        http_addr,
        setup_password,
        cert_pem: files.cert_pem,
        catalog: catalog_description,
        app,
        handle,
        stop,
        tasks,
    })
}

/// The plain-HTTP listener: every request gets 308 to the same path on HTTPS.
fn redirect_router(https_port: u16, public_url: Option<String>) -> Router {
    Router::new().fallback(move |headers: HeaderMap, uri: Uri| {
        let public_url = public_url.clone();
        async move { redirect(&headers, &uri, https_port, public_url.as_deref()) }
    })
}

fn redirect(headers: &HeaderMap, uri: &Uri, https_port: u16, public_url: Option<&str>) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let base = match public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(host_without_port)
                .filter(|h| {
                    !h.is_empty()
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
                })
                .unwrap_or("localhost");
            if https_port == 443 {
                format!("https://{host}")
            } else {
                format!("https://{host}:{https_port}")
            }
        }
    };
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, format!("{base}{path}"))],
    )
        .into_response()
}

fn host_without_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_host_and_path_and_use_the_https_port() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "backup.example:8080".parse().unwrap());
        let uri: Uri = "/api/v1/me?x=1".parse().unwrap();
        let response = redirect(&headers, &uri, 8443, None);
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://backup.example:8443/api/v1/me?x=1"
        );
        headers.insert(header::HOST, "[::1]:80".parse().unwrap());
        assert_eq!(
            redirect(&headers, &uri, 443, None).headers()[header::LOCATION],
            "https://[::1]/api/v1/me?x=1"
        );
        headers.insert(header::HOST, "evil\"host".parse().unwrap());
        assert_eq!(
            redirect(&headers, &uri, 443, None).headers()[header::LOCATION],
            "https://localhost/api/v1/me?x=1"
        );
        assert_eq!(
            redirect(&headers, &uri, 443, Some("https://b.example:9443/")).headers()
                [header::LOCATION],
            "https://b.example:9443/api/v1/me?x=1"
        );
    }
}
