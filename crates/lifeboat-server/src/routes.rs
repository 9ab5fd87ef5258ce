//! The HTTPS API: the route table, authentication and authorisation middleware, and handlers.
//!
//! [`routes`] lists every route with the permission it needs; [`router`] builds the axum
//! router from that list only, and [`authorize`] looks each request's matched route up in the
//! same table and refuses any route it does not find. Tenant-scoped routes have `{tenant}` in
//! their path: a principal bound to another tenant gets 404 there, as for an unknown id.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Json, MatchedPath, Path, Query, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Extension, Router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Event};
use crate::authz::{AuthMethod, Permission, Principal, Role};
use crate::catalog::{new_id, now_millis};
use crate::error::Error;
use crate::identity::{self, LoginContext, LoginOutcome, LoginRequest, SESSION_COOKIE};
use crate::jobs::{self, NewJob, NewRepository};
use crate::openapi::Shape;
use crate::server::AppState;
use crate::{metrics, openapi, scheduler, snapshots, ui};

type App = Arc<AppState>;

/// One route's declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path pattern (axum syntax, `{param}`).
    pub path: &'static str,
    /// What the caller needs.
    pub permission: Permission,
    /// Allowed before a forced password change.
    pub before_password_change: bool,
    /// Refused to API tokens (account management needs a signed-in person).
    pub session_only: bool,
    /// A dashboard page or form: answers in HTML, sends the signed-out to the login page,
    /// and takes the CSRF token from a form field as well as from the header.
    pub page: bool,
    /// One line for the API description (docs/openapi.json).
    pub summary: &'static str,
    /// The JSON body it takes, if any.
    pub body: Option<Shape>,
    /// The JSON body it answers with, if described by a type.
    pub reply: Option<Shape>,
    /// The status of a successful answer.
    pub status: u16,
    /// The media type of a successful answer that is not JSON.
    pub media: Option<&'static str>,
    /// Query parameters: name and meaning.
    pub query: &'static [(&'static str, &'static str)],
}

pub(crate) const fn spec(
    method: &'static str,
    path: &'static str,
    permission: Permission,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        permission,
        before_password_change: false,
        session_only: false,
        page: false,
        summary: "",
        body: None,
        reply: None,
        status: 200,
        media: None,
        query: &[],
    }
}

impl RouteSpec {
    pub(crate) const fn early(mut self) -> Self {
        self.before_password_change = true;
        self
    }
    const fn session(mut self) -> Self {
        self.session_only = true;
        self
    }
    /// A dashboard page: HTML answers, session only (browsers sign in; tokens use the API).
    pub(crate) const fn page(mut self) -> Self {
        self.page = true;
        self.session_only = true;
        self
    }
    /// The one-line description in the API document.
    const fn doc(mut self, summary: &'static str) -> Self {
        self.summary = summary;
        self
    }
    /// Takes this JSON body.
    const fn takes(mut self, body: Shape) -> Self {
        self.body = Some(body);
        self
    }
    /// Answers with this JSON body.
    const fn gives(mut self, reply: Shape) -> Self {
        self.reply = Some(reply);
        self
    }
    /// Answers with this media type instead of JSON.
    const fn media(mut self, media: &'static str) -> Self {
        self.media = Some(media);
        self
    }
    /// Takes these query parameters (name, meaning).
    const fn query(mut self, query: &'static [(&'static str, &'static str)]) -> Self {
        self.query = query;
        self
    }
    /// Answers 201 Created.
    const fn creates(self) -> Self {
        self.answers(201)
    }
    /// Answers this status on success.
    const fn answers(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    /// True if the route acts on one tenant (has `{tenant}` in its path).
    pub fn tenant_scoped(&self) -> bool {
        self.path.contains("{tenant}")
    }
}

/// Every route with its handler. The only place routes are declared.
pub fn routes() -> Vec<(RouteSpec, MethodRouter<App>)> {
    use Permission::*;
    const REPOS: &str = "/api/v1/tenants/{tenant}/repositories";
    const REPO: &str = "/api/v1/tenants/{tenant}/repositories/{repository}";
    const JOBS: &str = "/api/v1/tenants/{tenant}/jobs";
    const JOB: &str = "/api/v1/tenants/{tenant}/jobs/{job}";
    const SNAPSHOT_ENTRIES: &str =
        "/api/v1/tenants/{tenant}/repositories/{repository}/snapshots/{snapshot}/entries";
    const SNAPSHOT_FILE: &str =
        "/api/v1/tenants/{tenant}/repositories/{repository}/snapshots/{snapshot}/file";
    vec![
        (
            spec("GET", "/healthz", Public).doc("Liveness: the catalog answers."),
            get(healthz),
        ),
        (
            spec("GET", "/metrics", ReadMetrics)
                .doc("Prometheus metrics (text format).")
                .media("text/plain"),
            get(metrics_text),
        ),
        (
            spec("GET", "/api/v1/openapi.json", Public).doc("This API's OpenAPI document."),
            get(openapi_document),
        ),
        (
            spec("POST", "/api/v1/login", Public)
                .doc("Sign in: sets the session cookie and returns the CSRF token.")
                .takes(Shape::Login),
            post(login),
        ),
        (
            spec("POST", "/api/v1/logout", SignedIn)
                .early()
                .doc("End the session."),
            post(logout),
        ),
        (
            spec("GET", "/api/v1/me", SignedIn)
                .early()
                .doc("Who the caller is: user, role, tenant, 2FA."),
            get(me),
        ),
        (
            spec("POST", "/api/v1/me/password", SignedIn)
                .early()
                .session()
                .doc("Change the caller's password; ends its other sessions.")
                .takes(Shape::PasswordChange),
            post(change_password),
        ),
        (
            spec("POST", "/api/v1/me/totp", SignedIn)
                .session()
                .doc("Begin TOTP enrolment: returns the secret and otpauth URI."),
            post(totp_begin),
        ),
        (
            spec("POST", "/api/v1/me/totp/confirm", SignedIn)
                .session()
                .doc("Confirm TOTP with a first code: returns the recovery codes.")
                .takes(Shape::TotpCode),
            post(totp_confirm),
        ),
        (
            spec("GET", "/api/v1/me/tokens", SignedIn)
                .session()
                .doc("The caller's API tokens (never their secrets).")
                .gives(Shape::Tokens),
            get(tokens_list),
        ),
        (
            spec("POST", "/api/v1/me/tokens", SignedIn)
                .session()
                .doc("Create an API token, at most the caller's role; shown once.")
                .takes(Shape::NewToken)
                .creates(),
            post(tokens_create),
        ),
        (
            spec("DELETE", "/api/v1/me/tokens/{token}", SignedIn)
                .session()
                .doc("Revoke one of the caller's tokens."),
            delete(tokens_revoke),
        ),
        (
            spec("GET", "/api/v1/tenants", ManageServer).doc("All tenants."),
            get(tenants_list),
        ),
        (
            spec("POST", "/api/v1/tenants", ManageServer)
                .doc("Create a tenant.")
                .takes(Shape::NewTenant)
                .creates(),
            post(tenants_create),
        ),
        (
            spec("GET", "/api/v1/users", ManageServer).doc("All users."),
            get(users_list),
        ),
        (
            spec("POST", "/api/v1/users", ManageServer)
                .doc("Create a user (password policy applies).")
                .takes(Shape::NewUser)
                .creates(),
            post(users_create),
        ),
        (
            spec("DELETE", "/api/v1/users/{user}", ManageServer).doc("Delete a user."),
            delete(users_delete),
        ),
        (
            spec("POST", "/api/v1/admin/revoke-all", ManageServer)
                .session()
                .doc("Breach response: end every session and revoke every API token."),
            post(revoke_all),
        ),
        (
            spec("GET", "/api/v1/audit", ReadAudit)
                .doc("The audit log as JSON lines (a tenant's principal sees its tenant).")
                .media("application/x-ndjson"),
            get(audit_export),
        ),
        (
            spec("GET", REPOS, ReadRepositories)
                .doc("A tenant's repositories (never their passwords).")
                .gives(Shape::Repositories),
            get(repositories_list),
        ),
        (
            spec("POST", REPOS, ConfigureJobs)
                .doc("Register (or initialise) a repository; its password is sealed.")
                .takes(Shape::NewRepository)
                .gives(Shape::Repository)
                .creates(),
            post(repositories_create),
        ),
        (
            spec("GET", REPO, ReadRepositories)
                .doc("One repository.")
                .gives(Shape::Repository),
            get(repositories_get),
        ),
        (
            spec("DELETE", REPO, ConfigureJobs)
                .doc("Forget a repository (its data stays in storage)."),
            delete(repositories_delete),
        ),
        (
            spec(
                "GET",
                "/api/v1/tenants/{tenant}/repositories/{repository}/snapshots",
                ReadSnapshots,
            )
            .doc("The snapshots in a repository (audited).")
            .gives(Shape::Snapshots),
            get(snapshots_list),
        ),
        (
            spec("GET", SNAPSHOT_ENTRIES, ReadSnapshots)
                .doc("List a path of a snapshot: a directory's entries, or the entry itself (audited).")
                .query(&[
                    ("path", "Absolute path in the snapshot (default /)."),
                    ("recursive", "true: every level below the path, not just the first."),
                ])
                .gives(Shape::Listing),
            get(snapshot_entries),
        ),
        (
            spec("GET", SNAPSHOT_FILE, ReadSnapshots)
                .doc("Download one file of a snapshot, decrypted and verified (audited).")
                .query(&[("path", "Absolute path of the file in the snapshot.")])
                .media("application/octet-stream"),
            get(snapshot_file),
        ),
        (
            spec("GET", JOBS, ReadJobs)
                .doc("A tenant's jobs.")
                .gives(Shape::Jobs),
            get(jobs_list),
        ),
        (
            spec("POST", JOBS, ConfigureJobs)
                .doc("Create a scheduled job.")
                .takes(Shape::NewJob)
                .gives(Shape::NewJobCreated)
                .creates(),
            post(jobs_create),
        ),
        (
            spec("GET", JOB, ReadJobs)
                .doc("One job, and whether it is running.")
                .gives(Shape::Job),
            get(jobs_get),
        ),
        (
            spec("DELETE", JOB, ConfigureJobs).doc("Delete a job and its run history."),
            delete(jobs_delete),
        ),
        (
            spec("POST", "/api/v1/tenants/{tenant}/jobs/{job}/run", RunJobs)
                .doc("Start a run now (409 if one is running).")
                .answers(202),
            post(jobs_run),
        ),
        (
            spec("GET", "/api/v1/tenants/{tenant}/jobs/{job}/runs", ReadJobs)
                .doc("A job's latest runs, newest first (at most 100).")
                .gives(Shape::Runs),
            get(runs_list),
        ),
        (
            spec("GET", "/api/v1/tenants/{tenant}/runs/{run}", ReadJobs)
                .doc("One run with its log.")
                .gives(Shape::Run),
            get(runs_get),
        ),
        // The dashboard (crate::ui): HTML pages, signed in by session only.
        (spec("GET", "/", Public), get(ui::root)),
        (spec("GET", "/ui/assets/style.css", Public), get(ui::style)),
        (spec("GET", "/ui/assets/app.js", Public), get(ui::script)),
        (spec("GET", "/ui/login", Public).page(), get(ui::login_page)),
        (
            spec("POST", "/ui/login", Public).page(),
            post(ui::login_submit),
        ),
        (
            spec("POST", "/ui/logout", SignedIn).early().page(),
            post(ui::logout),
        ),
        (
            spec("GET", "/ui/password", SignedIn).early().page(),
            get(ui::password_page),
        ),
        (
            spec("POST", "/ui/password", SignedIn).early().page(),
            post(ui::password_submit),
        ),
        (spec("GET", "/ui", SignedIn).page(), get(ui::home)),
        (spec("GET", "/ui/audit", ReadAudit).page(), get(ui::audit)),
        (
            spec("GET", "/ui/tenants/{tenant}", ReadRepositories).page(),
            get(ui::tenant),
        ),
        (
            spec(
                "GET",
                "/ui/tenants/{tenant}/repositories/{repository}",
                ReadSnapshots,
            )
            .page(),
            get(ui::repository),
        ),
        (
            spec("GET", "/ui/tenants/{tenant}/jobs/{job}", ReadJobs).page(),
            get(ui::job),
        ),
        (
            spec("POST", "/ui/tenants/{tenant}/jobs/{job}/run", RunJobs).page(),
            post(ui::job_run),
        ),
        (
            spec("GET", "/ui/tenants/{tenant}/runs/{run}", ReadJobs).page(),
            get(ui::run),
        ),
    ]
}

/// The route table by (method, pattern).
pub fn table() -> HashMap<(String, String), RouteSpec> {
    routes()
        .into_iter()
        .map(|(spec, _)| ((spec.method.to_owned(), spec.path.to_owned()), spec))
        .collect()
}

/// The HTTPS router: the routes, the authorisation layer on each, and request counting.
pub fn router(app: App) -> Router {
    build_router(
        app,
        routes()
            .into_iter()
            .map(|(spec, handler)| (spec.path, handler)),
    )
}

fn build_router(
    app: App,
    routes: impl IntoIterator<Item = (&'static str, MethodRouter<App>)>,
) -> Router {
    let mut router = Router::new();
    for (path, handler) in routes {
        router = router.route(path, handler);
    }
    router
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), authorize))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            count_and_harden,
        ))
        .with_state(app)
}

/// An error answer: a status and a message safe to show (details go to the server log).
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not found")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            Error::WeakPassword(_) | Error::Schedule { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, error.to_string())
            }
            Error::NotFound(_) => ApiError::not_found(),
            other => {
                let id = new_id();
                tracing::error!(error_id = %id, "{other}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error {id}; the server log has the details"),
                )
            }
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// What the middleware learned about the caller, for handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal.
    pub principal: Principal,
    /// The source address.
    pub address: IpAddr,
    /// The session's CSRF token (signed in by cookie), for the forms of dashboard pages.
    pub csrf: Option<String>,
}

impl Caller {
    pub(crate) fn event(&self, action: &str) -> Event {
        Event::new(self.principal.actor(), action, self.address.to_string())
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The route pattern that answered, passed from the route layer to the outer layer (which
/// runs before routing and so cannot see `MatchedPath` itself).
#[derive(Debug, Clone)]
struct RouteLabel(String);

/// Authentication, CSRF, tenant scope and permission, from the route table.
async fn authorize(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let label = matched
        .as_ref()
        .map_or_else(|| "(unmatched)".to_owned(), |m| m.as_str().to_owned());
    let mut response = authorize_matched(app, peer, matched, params, request, next).await;
    response.extensions_mut().insert(RouteLabel(label));
    response
}

async fn authorize_matched(
    app: App,
    peer: SocketAddr,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let Some(spec) = matched.and_then(|m| {
        app.routes
            .get(&(method.clone(), m.as_str().to_owned()))
            .copied()
    }) else {
        // Fail closed: a route that is not in the table is never served.
        tracing::error!(%method, path = %request.uri().path(), "route without a declared permission refused");
        return ApiError::new(StatusCode::FORBIDDEN, "this route declares no permission")
            .into_response();
    };
    let refuse = Refusal {
        page: spec.page,
        path: request.uri().path().to_owned(),
        safe: matches!(request.method(), &Method::GET | &Method::HEAD),
    };
    // Forms are posted by browsers, which say where a request comes from: refuse one sent
    // from another site (this also covers the login form, where no session exists yet).
    if spec.page && !refuse.safe && !crate::ui::same_origin(request.headers()) {
        return refuse.answer(
            StatusCode::FORBIDDEN,
            "this form was sent from another site",
        );
    }
    if spec.permission == Permission::Public {
        return next.run(request).await;
    }
    let (request, principal, csrf) = match authenticate(&app, &spec, request).await {
        Ok(found) => found,
        Err((status, message)) => return refuse.answer(status, message),
    };
    let Some(principal) = principal else {
        return refuse.answer(
            StatusCode::UNAUTHORIZED,
            "sign in first (session cookie or Bearer token)",
        );
    };
    if spec.session_only && matches!(principal.via, AuthMethod::Token { .. }) {
        return refuse.answer(
            StatusCode::FORBIDDEN,
            "this route needs a signed-in person, not an API token: sign in",
        );
    }
    if principal.must_change_password && !spec.before_password_change {
        if spec.page {
            return crate::ui::see_other("/ui/password");
        }
        return refuse.answer(
            StatusCode::FORBIDDEN,
            "change your password first (POST /api/v1/me/password)",
        );
    }
    if spec.tenant_scoped() {
        let tenant = params
            .ok()
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| *k == "tenant")
                    .map(|(_, v)| v.to_owned())
            })
            .unwrap_or_default();
        if !principal.can_see_tenant(&tenant) {
            return refuse.answer(StatusCode::NOT_FOUND, "not found");
        }
        if principal.tenant_id.is_none() {
            let exists: Result<Option<(String,)>, _> =
                sqlx::query_as("SELECT id FROM tenants WHERE id = $1")
                    .bind(&tenant)
                    .fetch_optional(&app.pool)
                    .await;
            match exists {
                Ok(Some(_)) => {}
                Ok(None) => return refuse.answer(StatusCode::NOT_FOUND, "not found"),
                Err(e) => return refuse.error(Error::from(e)),
            }
        }
    }
    if !principal.has(spec.permission) {
        let event = Event::new(principal.actor(), "authz.denied", peer.ip().to_string())
            .outcome("denied")
            .tenant(principal.tenant_id.as_deref())
            .target(format!("{} {}", spec.method, spec.path));
        if let Err(e) = app.audit.append(&app.pool, event).await {
            return refuse.error(e);
        }
        return refuse.answer(StatusCode::FORBIDDEN, "your role does not allow this");
    }
    let mut request = request;
    request.extensions_mut().insert(Caller {
        principal,
        address: peer.ip(),
        csrf,
    });
    next.run(request).await
}

/// How a refusal is answered: JSON for the API; for dashboard pages, a redirect to the login
/// page (when signed out) or an HTML page with the same status.
struct Refusal {
    page: bool,
    path: String,
    safe: bool,
}

impl Refusal {
    fn answer(&self, status: StatusCode, message: &str) -> Response {
        if !self.page {
            return ApiError::new(status, message).into_response();
        }
        if status == StatusCode::UNAUTHORIZED {
            // Come back to the page after signing in; a form post goes back to the start.
            let next = if self.safe { self.path.as_str() } else { "/ui" };
            return crate::ui::see_other(&crate::ui::login_link(next));
        }
        crate::ui::error_page(status, message)
    }

    fn error(&self, error: Error) -> Response {
        let api = ApiError::from(error);
        if self.page {
            crate::ui::error_page(api.status, &api.message)
        } else {
            api.into_response()
        }
    }
}

/// The largest form a dashboard page accepts.
const FORM_LIMIT: usize = 64 * 1024;

type Authenticated = (Request, Option<Principal>, Option<String>);

/// Finds the principal from a Bearer token or the session cookie and checks CSRF for a
/// cookie request that changes something: the `X-CSRF-Token` header, or on dashboard forms
/// the `csrf_token` field (the body is read here and handed on unchanged).
async fn authenticate(
    app: &App,
    spec: &RouteSpec,
    request: Request,
) -> Result<Authenticated, (StatusCode, &'static str)> {
    let internal = |e: Error| {
        let _ = ApiError::from(e);
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the server log has the details",
        )
    };
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if let Some(token) = bearer {
        let principal = identity::authenticate_token(&app.pool, token.trim())
            .await
            .map_err(internal)?;
        return Ok((request, principal, None));
    }
    let Some(session) = cookie_value(headers, SESSION_COOKIE) else {
        return Ok((request, None, None));
    };
    let Some((principal, csrf)) =
        identity::authenticate_session(&app.pool, &app.config.sessions, &session)
            .await
            .map_err(internal)?
    else {
        return Ok((request, None, None));
    };
    const CSRF_MISSING: &str =
        "missing or wrong X-CSRF-Token header: send the csrf_token the login returned";
    if matches!(request.method(), &Method::GET | &Method::HEAD) {
        return Ok((request, Some(principal), Some(csrf)));
    }
    let echoed = request
        .headers()
        .get("x-csrf-token")
        .map(|v| v.as_bytes().to_vec());
    if let Some(echoed) = echoed {
        if !crate::totp::constant_time_eq(&echoed, csrf.as_bytes()) {
            return Err((StatusCode::FORBIDDEN, CSRF_MISSING));
        }
        return Ok((request, Some(principal), Some(csrf)));
    }
    if !spec.page {
        return Err((StatusCode::FORBIDDEN, CSRF_MISSING));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"))?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let field = fields
        .iter()
        .find(|(k, _)| k == "csrf_token")
        .map(|(_, v)| v.as_bytes())
        .unwrap_or_default();
    if !crate::totp::constant_time_eq(field, csrf.as_bytes()) {
        return Err((
            StatusCode::FORBIDDEN,
            "this form has expired or was not sent by the dashboard: reload the page and try again",
        ));
    }
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    Ok((request, Some(principal), Some(csrf)))
}

/// Counts requests by route pattern and status, and sets headers every answer carries.
async fn count_and_harden(State(app): State<App>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let mut response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or("(unmatched)", |l| l.0.as_str())
        .to_owned();
    app.metrics
        .count_request(&method, &route, response.status().as_u16());
    let headers = response.headers_mut();
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        // Dashboard pages load only the server's own script and style sheet, post forms only
        // to the server, and cannot be framed.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(crate::ui::CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

async fn healthz(State(app): State<App>) -> Response {
    match sqlx::query("SELECT 1").execute(&app.pool).await {
        Ok(_) => Json(json!({ "status": "ok" })).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "catalog unavailable" })),
        )
            .into_response(),
    }
}

async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn metrics_text(State(app): State<App>) -> ApiResult<Response> {
    let text = metrics::render(&app.metrics, &app.pool).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

fn session_cookie(token: &str, max_age: u64) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"
    )
}

/// What a login attempt came to, after it was audited.
pub(crate) enum LoginResult {
    /// Signed in: the cookie to set, the CSRF token, the user.
    Success {
        cookie: String,
        csrf_token: String,
        user: identity::User,
    },
    /// Too many failures: wait this many seconds.
    Throttled(u64),
    /// Wrong user name, password or code.
    Invalid,
    /// The password was right but a second factor is needed.
    SecondFactorRequired,
}

/// Runs a login and audits it; the API and the dashboard answer from the result.
pub(crate) async fn perform_login(
    app: &App,
    peer: IpAddr,
    request: &LoginRequest,
) -> Result<LoginResult, Error> {
    let ctx = LoginContext {
        pool: &app.pool,
        hasher: &app.hasher,
        sealer: &app.sealer,
        throttle: &app.throttle,
    };
    let outcome = identity::login(&ctx, request, peer).await?;
    // The name tried is recorded as typed (truncated), never the password.
    let tried: String = request.username.chars().take(64).collect();
    let source = peer.to_string();
    let failed = |outcome: &str, reason: &str| {
        Event::new(format!("anonymous:{tried}"), "login", source.clone())
            .outcome(outcome)
            .detail(json!({ "reason": reason }))
    };
    Ok(match outcome {
        LoginOutcome::Success {
            user,
            session,
            second_factor,
        } => {
            app.audit
                .append(
                    &app.pool,
                    Event::new(format!("user:{}", user.username), "login", source.clone())
                        .tenant(user.tenant_id.as_deref())
                        .detail(json!({ "second_factor": second_factor })),
                )
                .await?;
            LoginResult::Success {
                cookie: session_cookie(&session.token, app.config.sessions.absolute_timeout_secs),
                csrf_token: session.csrf_token,
                user,
            }
        }
        LoginOutcome::Throttled(wait) => {
            app.audit
                .append(&app.pool, failed("denied", "throttled"))
                .await?;
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            LoginResult::Throttled(seconds.max(1))
        }
        LoginOutcome::Invalid { reason } => {
            app.audit
                .append(&app.pool, failed("failed", reason))
                .await?;
            LoginResult::Invalid
        }
        LoginOutcome::SecondFactorRequired => {
            app.audit
                .append(&app.pool, failed("failed", "second factor missing"))
                .await?;
            LoginResult::SecondFactorRequired
        }
    })
}

async fn login(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(request): Json<LoginRequest>,
) -> ApiResult<Response> {
    Ok(match perform_login(&app, peer.ip(), &request).await? {
        LoginResult::Success {
            cookie,
            csrf_token,
            user,
        } => (
            [(header::SET_COOKIE, cookie)],
            Json(json!({
                "csrf_token": csrf_token,
                "user": { "id": user.id, "username": user.username, "role": user.role, "tenant_id": user.tenant_id },
                "must_change_password": user.must_change_password,
            })),
        )
            .into_response(),
        LoginResult::Throttled(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            Json(json!({ "error": "too many failed logins: wait before trying again" })),
        )
            .into_response(),
        LoginResult::Invalid => {
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name, password or code")
                .into_response()
        }
        LoginResult::SecondFactorRequired => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "a TOTP code or recovery code is needed", "second_factor_required": true })),
        )
            .into_response(),
    })
}

/// Ends the caller's session (if it is one) and audits it; returns the cookie that clears it.
pub(crate) async fn perform_logout(app: &App, caller: &Caller) -> Result<String, Error> {
    if let AuthMethod::Session { id_hash } = &caller.principal.via {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&app.pool)
            .await?;
    }
    app.audit
        .append(
            &app.pool,
            caller
                .event("logout")
                .tenant(caller.principal.tenant_id.as_deref()),
        )
        .await?;
    Ok(session_cookie("", 0))
}

async fn logout(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let cookie = perform_logout(&app, &caller).await?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "signed_out": true })),
    )
        .into_response())
}

async fn me(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let user = identity::user_by_id(&app.pool, &caller.principal.user_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!({
        "id": user.id, "username": user.username, "role": caller.principal.role, "tenant_id": user.tenant_id,
        "totp_enabled": user.totp_secret.is_some(), "must_change_password": user.must_change_password,
    })))
}

#[derive(Deserialize, JsonSchema)]
/// A password change.
pub(crate) struct PasswordChange {
    /// The password in use now.
    current_password: String,
    /// The new password (at least the server's minimum length; common passwords refused).
    new_password: String,
}

async fn change_password(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<PasswordChange>,
) -> ApiResult<Json<serde_json::Value>> {
    perform_password_change(&app, &caller, &body.current_password, &body.new_password).await?;
    Ok(Json(json!({ "changed": true })))
}

/// Checks the current password (with login backoff), applies the policy to the new one,
/// changes it, ends the user's other sessions and audits it.
pub(crate) async fn perform_password_change(
    app: &App,
    caller: &Caller,
    current_password: &str,
    new_password: &str,
) -> ApiResult<()> {
    let user = identity::user_by_id(&app.pool, &caller.principal.user_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let Some(wait) = app.throttle.check(&user.username, caller.address) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failures: wait {} s", wait.as_secs().max(1)),
        ));
    }
    let ok =
        tokio::task::block_in_place(|| app.hasher.verify(&user.password_hash, current_password));
    if !ok {
        app.throttle.failed(&user.username, caller.address);
        app.audit
            .append(
                &app.pool,
                caller
                    .event("password.change")
                    .outcome("failed")
                    .detail(json!({ "reason": "wrong current password" })),
            )
            .await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the current password is wrong",
        ));
    }
    let keep = match &caller.principal.via {
        AuthMethod::Session { id_hash } => Some(id_hash.as_str()),
        AuthMethod::Token { .. } => None,
    };
    identity::change_password(
        &app.pool,
        &app.hasher,
        app.config.passwords.min_length,
        &user,
        new_password,
        keep,
    )
    .await?;
    app.audit
        .append(
            &app.pool,
            caller
                .event("password.change")
                .tenant(user.tenant_id.as_deref()),
        )
        .await?;
    Ok(())
}

async fn totp_begin(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let user = identity::user_by_id(&app.pool, &caller.principal.user_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let (uri, secret) = identity::begin_totp(&app.pool, &app.sealer, &user).await?;
    app.audit
        .append(&app.pool, caller.event("totp.begin"))
        .await?;
    Ok(Json(json!({ "otpauth_uri": uri, "secret": secret })))
}

#[derive(Deserialize, JsonSchema)]
/// A code from the authenticator app.
pub(crate) struct CodeBody {
    /// Six digits.
    code: String,
}

async fn totp_confirm(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CodeBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let codes = identity::confirm_totp(
        &app.pool,
        &app.sealer,
        &caller.principal.user_id,
        &body.code,
    )
    .await?;
    app.audit
        .append(&app.pool, caller.event("totp.enable"))
        .await?;
    Ok(Json(json!({ "recovery_codes": codes })))
}

async fn tokens_list(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(
        identity::list_tokens(&app.pool, &caller.principal.user_id).await?
    )))
}

#[derive(Deserialize, JsonSchema)]
/// A new API token.
pub(crate) struct NewToken {
    /// A name to recognise it by.
    name: String,
    /// Its role, at most the caller's (default: the caller's).
    role: Option<Role>,
}

async fn tokens_create(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewToken>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let role = body.role.unwrap_or(caller.principal.role);
    let (id, token) =
        identity::create_token(&app.pool, &caller.principal, &body.name, role).await?;
    app.audit
        .append(
            &app.pool,
            caller
                .event("token.create")
                .tenant(caller.principal.tenant_id.as_deref())
                .target(id.clone())
                .detail(json!({ "name": body.name, "role": role })),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "token": token, "role": role })),
    ))
}

async fn tokens_revoke(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(token): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if !identity::revoke_token(&app.pool, &caller.principal.user_id, &token).await? {
        return Err(ApiError::not_found());
    }
    app.audit
        .append(&app.pool, caller.event("token.revoke").target(token))
        .await?;
    Ok(Json(json!({ "revoked": true })))
}

async fn tenants_list(State(app): State<App>) -> ApiResult<Json<serde_json::Value>> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, name, created_at FROM tenants ORDER BY name")
            .fetch_all(&app.pool)
            .await
            .map_err(Error::from)?;
    Ok(Json(json!(
        rows.into_iter()
            .map(
                |(id, name, created_at)| json!({ "id": id, "name": name, "created_at": created_at })
            )
            .collect::<Vec<_>>()
    )))
}

#[derive(Deserialize, JsonSchema)]
/// A new tenant.
pub(crate) struct NewTenant {
    /// Unique name, 1 to 100 characters.
    name: String,
}

async fn tenants_create(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewTenant>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if body.name.is_empty() || body.name.len() > 100 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a tenant name has 1 to 100 characters",
        ));
    }
    let id = new_id();
    sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(&body.name)
        .bind(now_millis())
        .execute(&app.pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                ApiError::new(StatusCode::CONFLICT, "a tenant of that name exists")
            }
            e => Error::from(e).into(),
        })?;
    app.audit
        .append(
            &app.pool,
            caller
                .event("tenant.create")
                .tenant(Some(&id))
                .target(id.clone())
                .detail(json!({ "name": body.name })),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": body.name })),
    ))
}

async fn users_list(State(app): State<App>) -> ApiResult<Json<serde_json::Value>> {
    let rows: Vec<(String, String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, username, role, tenant_id, disabled FROM users ORDER BY username",
    )
    .fetch_all(&app.pool)
    .await
    .map_err(Error::from)?;
    Ok(Json(json!(rows
        .into_iter()
        .map(|(id, username, role, tenant_id, disabled)| json!({ "id": id, "username": username, "role": role, "tenant_id": tenant_id, "disabled": disabled != 0 }))
        .collect::<Vec<_>>())))
}

#[derive(Deserialize, JsonSchema)]
/// A new user.
pub(crate) struct NewUser {
    /// Unique user name.
    username: String,
    /// Initial password (the password policy applies).
    password: String,
    /// Role.
    role: Role,
    /// The tenant the user is bound to; none for a server-wide user.
    tenant_id: Option<String>,
}

async fn users_create(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let id = identity::create_user(
        &app.pool,
        &app.hasher,
        app.config.passwords.min_length,
        &body.username,
        &body.password,
        body.role,
        body.tenant_id.as_deref(),
    )
    .await?;
    app.audit
        .append(
            &app.pool,
            caller
                .event("user.create")
                .tenant(body.tenant_id.as_deref())
                .target(id.clone())
                .detail(json!({ "username": body.username, "role": body.role })),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "username": body.username })),
    ))
}

async fn users_delete(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    if user == caller.principal.user_id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "you cannot delete your own account",
        ));
    }
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(&user)
        .execute(&app.pool)
        .await
        .map_err(Error::from)?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found());
    }
    app.audit
        .append(&app.pool, caller.event("user.delete").target(user))
        .await?;
    Ok(Json(json!({ "deleted": true })))
}

async fn revoke_all(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    let (sessions, tokens) = identity::revoke_all(&app.pool).await?;
    app.audit
        .append(
            &app.pool,
            caller
                .event("revoke-all")
                .detail(json!({ "sessions": sessions, "tokens": tokens })),
        )
        .await?;
    Ok(Json(
        json!({ "sessions_ended": sessions, "tokens_revoked": tokens }),
    ))
}

async fn audit_export(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let records = audit::records(&app.pool, caller.principal.tenant_id.as_deref()).await?;
    let mut body = Vec::new();
    audit::write_json_lines(&records, &mut body).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn repositories_list(
    State(app): State<App>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(
        jobs::list_repositories(&app.pool, &tenant).await?
    )))
}

async fn repositories_create(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    Json(body): Json<NewRepository>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let init = body.init;
    if caller.principal.role != Role::Admin
        && !jobs::location_within(&body.location, &app.config.jobs.repository_roots)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operators may register repositories only below the server's jobs.repository_roots; ask an admin",
        ));
    }
    let repository = jobs::create_repository(&app.pool, &app.sealer, &tenant, body).await?;
    app.audit
        .append(&app.pool, caller.event("repository.create").tenant(Some(&tenant)).target(repository.id.clone()).detail(json!({ "name": repository.name, "location": repository.location, "init": init })))
        .await?;
    Ok((StatusCode::CREATED, Json(json!(repository))))
}

async fn repositories_get(
    State(app): State<App>,
    Path((tenant, repository)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let found = jobs::get_repository(&app.pool, &tenant, &repository)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(found)))
}

async fn repositories_delete(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, repository)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    if jobs::get_repository(&app.pool, &tenant, &repository)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found());
    }
    jobs::delete_repository(&app.pool, &tenant, &repository).await?;
    app.audit
        .append(
            &app.pool,
            caller
                .event("repository.delete")
                .tenant(Some(&tenant))
                .target(repository),
        )
        .await?;
    Ok(Json(json!({ "deleted": true })))
}

async fn snapshots_list(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, repository)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(
        list_snapshots_audited(&app, &caller, &tenant, &repository).await?
    )))
}

/// Opens a tenant's repository with its sealed password, lists its snapshots, and audits
/// the listing.
pub(crate) async fn list_snapshots_audited(
    app: &App,
    caller: &Caller,
    tenant: &str,
    repository: &str,
) -> ApiResult<Vec<jobs::SnapshotInfo>> {
    let (location, password) = jobs::repository_secret(&app.pool, &app.sealer, tenant, repository)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let snapshots = tokio::task::spawn_blocking(move || jobs::list_snapshots(&location, &password))
        .await
        .map_err(|e| Error::Job(e.to_string()))??;
    app.audit
        .append(
            &app.pool,
            caller
                .event("snapshots.list")
                .tenant(Some(tenant))
                .target(repository.to_owned()),
        )
        .await?;
    Ok(snapshots)
}

#[derive(Deserialize)]
struct EntriesQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    recursive: bool,
}

async fn snapshot_entries(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, repository, snapshot)): Path<(String, String, String)>,
    Query(query): Query<EntriesQuery>,
) -> ApiResult<Json<snapshots::Listing>> {
    let (location, password) =
        jobs::repository_secret(&app.pool, &app.sealer, &tenant, &repository)
            .await?
            .ok_or_else(ApiError::not_found)?;
    let wanted = query.path.clone();
    let asked = snapshot.clone();
    let listing = tokio::task::spawn_blocking(move || {
        snapshots::list(&location, &password, &asked, &wanted, query.recursive)
    })
    .await
    .map_err(|e| Error::Job(e.to_string()))??;
    app.audit
        .append(
            &app.pool,
            caller
                .event("snapshot.browse")
                .tenant(Some(&tenant))
                .target(format!("{repository}/{}", listing.snapshot))
                .detail(json!({ "path": query.path, "entries": listing.entries.len() })),
        )
        .await?;
    Ok(Json(listing))
}

#[derive(Deserialize)]
struct FileQuery {
    path: String,
}

/// Streams one file of a snapshot. The download is audited before the first byte leaves;
/// `Content-Length` lets the client tell a cut-off transfer from a whole one.
async fn snapshot_file(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, repository, snapshot)): Path<(String, String, String)>,
    Query(query): Query<FileQuery>,
) -> ApiResult<Response> {
    let (location, password) =
        jobs::repository_secret(&app.pool, &app.sealer, &tenant, &repository)
            .await?
            .ok_or_else(ApiError::not_found)?;
    let wanted = query.path.clone();
    let download = tokio::task::spawn_blocking(move || {
        snapshots::open_file(&location, &password, &snapshot, &wanted)
    })
    .await
    .map_err(|e| Error::Job(e.to_string()))??;
    app.audit
        .append(
            &app.pool,
            caller
                .event("snapshot.download")
                .tenant(Some(&tenant))
                .target(format!("{repository}/{}", download.snapshot))
                .detail(json!({ "path": download.path.to_string_lossy(), "bytes": download.size })),
        )
        .await?;
    let size = download.size;
    let disposition = format!(
        "attachment; filename=\"{}\"",
        download
            .file_name()
            .chars()
            .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            })
            .collect::<String>()
    );
    // A few chunks in flight: the repository is read on the blocking pool while the client
    // receives, and a slow client holds back the reader instead of filling memory.
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || {
        for chunk in download.chunks() {
            let failed = chunk.is_err();
            let item = chunk.map_err(|e| {
                tracing::error!("download stopped: {e}");
                std::io::Error::other(e.to_string())
            });
            if sender.blocking_send(item).is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn jobs_list(
    State(app): State<App>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!(jobs::list_jobs(&app.pool, &tenant).await?)))
}

async fn jobs_create(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    Json(body): Json<NewJob>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if caller.principal.role != Role::Admin
        && let Err(message) =
            jobs::operator_limits(body.kind, &body.options, &app.config.jobs.backup_roots)
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, message));
    }
    let job = jobs::create_job(&app.pool, &tenant, body).await?;
    app.audit
        .append(&app.pool, caller.event("job.create").tenant(Some(&tenant)).target(job.id.clone()).detail(json!({ "name": job.name, "kind": job.kind, "schedule": job.schedule, "repository": job.repository_id })))
        .await?;
    Ok((StatusCode::CREATED, Json(json!(job))))
}

async fn jobs_get(
    State(app): State<App>,
    Path((tenant, job)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let found = jobs::get_job(&app.pool, &tenant, &job)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let running = scheduler::is_running(&app, &found).await?;
    Ok(Json(json!(jobs::JobDetail {
        job: found,
        running
    })))
}

async fn jobs_delete(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, job)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    if !jobs::delete_job(&app.pool, &tenant, &job).await? {
        return Err(ApiError::not_found());
    }
    app.audit
        .append(
            &app.pool,
            caller.event("job.delete").tenant(Some(&tenant)).target(job),
        )
        .await?;
    Ok(Json(json!({ "deleted": true })))
}

async fn jobs_run(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, job)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if start_job_audited(&app, &caller, &tenant, &job).await? {
        Ok((StatusCode::ACCEPTED, Json(json!({ "started": true }))))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "the job is running: runs of one job never overlap",
        ))
    }
}

/// Starts a run of a tenant's job now, unless one is running; audits the attempt.
pub(crate) async fn start_job_audited(
    app: &App,
    caller: &Caller,
    tenant: &str,
    job: &str,
) -> ApiResult<bool> {
    let found = jobs::get_job(&app.pool, tenant, job)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let started = scheduler::start(app, found, "manual").await?;
    app.audit
        .append(
            &app.pool,
            caller
                .event("job.start")
                .tenant(Some(tenant))
                .target(job.to_owned())
                .outcome(if started { "ok" } else { "denied" }),
        )
        .await?;
    Ok(started)
}

async fn runs_list(
    State(app): State<App>,
    Path((tenant, job)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    if jobs::get_job(&app.pool, &tenant, &job).await?.is_none() {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!(
        jobs::list_runs(&app.pool, &tenant, &job, 100).await?
    )))
}

async fn runs_get(
    State(app): State<App>,
    Path((tenant, run)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let found = jobs::get_run(&app.pool, &tenant, &run)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(found)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route added to the router without an entry in the table is refused, whoever calls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_missing_from_the_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::ServerConfig::default();
        config.listen.https = "127.0.0.1:0".parse().unwrap();
        config.listen.http = None;
        let server = crate::start(config, dir.path()).await.unwrap();
        let stray: MethodRouter<App> = get(|| async { "secret" });
        let mut all: Vec<(&'static str, MethodRouter<App>)> =
            routes().into_iter().map(|(s, h)| (s.path, h)).collect();
        all.push(("/stray", stray));
        let router = build_router(Arc::clone(&server.app), all);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        let response = reqwest::get(format!("http://{addr}/stray")).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(!response.text().await.unwrap().contains("secret"));
        let declared = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(
            declared.status(),
            StatusCode::OK,
            "declared routes still work"
        );
        server.shutdown().await;
    }

    #[test]
    fn every_route_is_declared_once_and_tenant_routes_need_more_than_sign_in() {
        let all = routes();
        let table = table();
        assert_eq!(all.len(), table.len(), "a (method, path) is declared twice");
        for (spec, _) in &all {
            if spec.tenant_scoped() {
                assert!(
                    !matches!(spec.permission, Permission::Public | Permission::SignedIn),
                    "{spec:?}"
                );
            }
            if spec.permission == Permission::Public {
                assert!(
                    [
                        "/healthz",
                        "/api/v1/login",
                        "/api/v1/openapi.json",
                        "/",
                        "/ui/login",
                        "/ui/assets/style.css",
                        "/ui/assets/app.js"
                    ]
                    .contains(&spec.path),
                    "unexpected public route {spec:?}"
                );
            }
        }
    }
}
