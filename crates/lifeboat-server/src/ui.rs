//! The web dashboard: HTML pages rendered by the server (maud templates, escaped by
//! construction), one style sheet and one small script embedded in the binary.
//!
//! Every page is a route of [`crate::routes::routes`] with its permission, marked as a page:
//! the same middleware authenticates it (session cookie only), checks tenant scope and role,
//! and for a form post checks the session's CSRF token, taken from the form's `csrf_token`
//! field. A signed-out visitor is sent to the login page; a refusal is an HTML page with the
//! status the API would give (404 for another tenant's ids, as for unknown ones). Handlers
//! here share the API's own functions for everything that changes state or is audited
//! (login, logout, password change, snapshot listing, starting a run), so the two cannot
//! drift apart. The pages work without the script; it only shows times in local time and
//! stops a form from being sent twice.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::alerts;
use crate::authz::Permission;
use crate::error::Error;
use crate::identity::LoginRequest;
use crate::jobs::{self, RunInfo};
use crate::routes::{self, ApiError, Caller, LoginResult};
use crate::scheduler;
use crate::server::AppState;

type App = Arc<AppState>;

/// The Content-Security-Policy of every HTML answer: nothing but the server's own assets.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");

/// Runs shown on a job's page.
const RUNS_SHOWN: i64 = 100;
/// Audit rows per page.
const AUDIT_PAGE: i64 = 200;

/// A 303 redirect.
pub fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// The login page, coming back to `next` afterwards.
pub fn login_link(next: &str) -> String {
    let query = serde_urlencoded::to_string([("next", safe_next(next))]).unwrap_or_default();
    format!("/ui/login?{query}")
}

/// Where to go after signing in: only a dashboard path of this server, so the login page
/// cannot be used to send people elsewhere.
fn safe_next(next: &str) -> &str {
    let local = (next == "/ui" || next.starts_with("/ui/"))
        && !next.contains("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if local { next } else { "/ui" }
}

/// False when a browser says the request comes from another site (`Sec-Fetch-Site`, or an
/// `Origin` that is not this server).
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Clients that send neither header are not browsers following a link elsewhere;
        // the session's CSRF token still applies to them.
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin == format!("https://{host}")
}

/// An HTML page for a refusal or error, with `status`.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests",
        s if s.is_server_error() => "Server error",
        _ => "Request refused",
    };
    let body = html! {
        h1 { (title) }
        p { (message) }
        p { a href="/ui" { "Back to the overview" } }
    };
    (status, layout(title, None, false, body)).into_response()
}

/// An error of a page handler, answered as an HTML page.
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        PageError(error)
    }
}

impl From<Error> for PageError {
    fn from(error: Error) -> Self {
        PageError(ApiError::from(error))
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        PageError(ApiError::from(Error::from(error)))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0.status, &self.0.message)
    }
}

type PageResult = Result<Response, PageError>;

/// The frame of every page: header with navigation and the signed-in user, then `body`.
fn layout(title: &str, caller: Option<&Caller>, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lifeboat" }
                link rel="stylesheet" href="/ui/assets/style.css";
                script src="/ui/assets/app.js" defer {}
                // A page showing a run in progress reloads itself until it ends.
                @if refresh { meta http-equiv="refresh" content="5"; }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        a.brand href="/ui" { "Lifeboat" }
                        @if let Some(caller) = caller {
                            a href="/ui" { "Overview" }
                            @if caller.principal.has(Permission::ReadAudit) {
                                a href="/ui/audit" { "Audit log" }
                            }
                            a href="/ui/password" { "Change password" }
                            span.who {
                                "Signed in as " strong { (caller.principal.username) }
                                " (" (caller.principal.role.as_str()) ")"
                            }
                            form.inline method="post" action="/ui/logout" {
                                (csrf_field(caller))
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

fn csrf_field(caller: &Caller) -> Markup {
    html! { input type="hidden" name="csrf_token" value=(caller.csrf.as_deref().unwrap_or_default()); }
}

fn page(title: &str, caller: &Caller, body: Markup) -> Response {
    layout(title, Some(caller), false, body).into_response()
}

fn refreshing_page(title: &str, caller: &Caller, refresh: bool, body: Markup) -> Response {
    layout(title, Some(caller), refresh, body).into_response()
}

fn time(ms: i64) -> Markup {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => {
            html! { time datetime=(ts.to_string()) { (ts.strftime("%Y-%m-%d %H:%M:%S UTC")) } }
        }
        Err(_) => html! { "?" },
    }
}

fn duration(ms: i64) -> String {
    let secs = ms as f64 / 1000.0;
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{} min {} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A run's status as a badge; the word is always there, the colour only repeats it.
fn status(status: &str) -> Markup {
    let class = match status {
        "succeeded" => "ok",
        "failed" | "interrupted" => "bad",
        "running" => "busy",
        _ => "",
    };
    html! { span class={"status " (class)} { (status) } }
}

/// An audit outcome (`ok`, `failed`, `denied`) as a badge.
fn outcome_badge(outcome: &str) -> Markup {
    let class = if outcome == "ok" { "ok" } else { "bad" };
    html! { span class={"status " (class)} { (outcome) } }
}

fn run_duration(run: &RunInfo) -> String {
    match run.finished_at {
        Some(end) => duration(end - run.started_at),
        None => "—".to_owned(),
    }
}

async fn tenant_name(app: &App, tenant: &str) -> Result<String, PageError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT name FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&app.pool)
        .await?;
    Ok(row.map(|(name,)| name).ok_or_else(ApiError::not_found)?)
}

/// `GET /`: the dashboard.
pub async fn root() -> Response {
    see_other("/ui")
}

/// The style sheet.
pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The script.
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

/// Where to return after signing in.
#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_form(next: &str, message: Option<&str>, ask_code: bool) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(message) = message {
            p.error role="alert" { (message) }
        }
        form.stack method="post" action="/ui/login" {
            input type="hidden" name="next" value=(safe_next(next));
            label for="username" { "User name" }
            input id="username" name="username" autocomplete="username" required autofocus[!ask_code];
            label for="password" { "Password" }
            input id="password" name="password" type="password" autocomplete="current-password" required;
            label for="code" { "Authentication code" }
            input id="code" name="code" autocomplete="one-time-code" inputmode="text" aria-describedby="code-help" autofocus[ask_code];
            p.help id="code-help" { "Only if two-factor sign-in is on: the six digits from your app, or a recovery code." }
            button type="submit" { "Sign in" }
        }
    };
    layout("Sign in", None, false, body)
}

/// `GET /ui/login`.
pub async fn login_page(Query(query): Query<NextQuery>) -> Response {
    login_form(query.next.as_deref().unwrap_or("/ui"), None, false).into_response()
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    next: String,
}

/// `POST /ui/login`: the API's login, answered with a redirect or the form again.
pub async fn login_submit(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let code = form.code.trim();
    let six_digits = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
    let request = LoginRequest {
        username: form.username,
        password: form.password,
        totp: (six_digits).then(|| code.to_owned()),
        recovery_code: (!code.is_empty() && !six_digits).then(|| code.to_owned()),
    };
    let next = safe_next(&form.next);
    Ok(
        match routes::perform_login(&app, peer.ip(), &request).await? {
            LoginResult::Success { cookie, user, .. } => {
                let to = if user.must_change_password {
                    "/ui/password"
                } else {
                    next
                };
                (
                    StatusCode::SEE_OTHER,
                    [(header::SET_COOKIE, cookie), (header::LOCATION, to.to_owned())],
                )
                    .into_response()
            }
            LoginResult::Throttled(seconds) => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, seconds.to_string())],
                login_form(
                    next,
                    Some(&format!(
                        "Too many failed sign-ins. Wait {seconds} seconds, then try again."
                    )),
                    false,
                ),
            )
                .into_response(),
            LoginResult::Invalid => (
                StatusCode::UNAUTHORIZED,
                login_form(next, Some("Wrong user name, password or code."), false),
            )
                .into_response(),
            LoginResult::SecondFactorRequired => (
                StatusCode::UNAUTHORIZED,
                login_form(
                    next,
                    Some("Enter the code from your authenticator app, or a recovery code, with your password."),
                    true,
                ),
            )
                .into_response(),
        },
    )
}

/// `POST /ui/logout`.
pub async fn logout(State(app): State<App>, Extension(caller): Extension<Caller>) -> PageResult {
    let cookie = routes::perform_logout(&app, &caller).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/ui/login".to_owned()),
        ],
    )
        .into_response())
}

fn password_form(caller: &Caller, message: Option<&str>) -> Markup {
    html! {
        h1 { "Change password" }
        @if caller.principal.must_change_password {
            p role="status" { "This is your first sign-in with a one-time password: choose your own before going on." }
        }
        @if let Some(message) = message {
            p.error role="alert" { (message) }
        }
        form.stack method="post" action="/ui/password" {
            (csrf_field(caller))
            input type="text" name="username" value=(caller.principal.username) autocomplete="username" hidden;
            label for="current" { "Current password" }
            input id="current" name="current_password" type="password" autocomplete="current-password" required autofocus;
            label for="new" { "New password" }
            input id="new" name="new_password" type="password" autocomplete="new-password" minlength="12" required aria-describedby="new-help";
            p.help id="new-help" { "At least 12 characters; a few unrelated words make a good one. Common passwords are refused." }
            label for="repeat" { "New password again" }
            input id="repeat" name="repeat_password" type="password" autocomplete="new-password" required;
            button type="submit" { "Change password" }
        }
    }
}

/// `GET /ui/password`.
pub async fn password_page(Extension(caller): Extension<Caller>) -> Response {
    let body = password_form(&caller, None);
    page("Change password", &caller, body)
}

/// The password form.
#[derive(Deserialize)]
pub struct PasswordForm {
    current_password: String,
    new_password: String,
    repeat_password: String,
}

/// `POST /ui/password`: the API's password change.
pub async fn password_submit(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let result = if form.new_password != form.repeat_password {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the two new passwords differ",
        ))
    } else {
        routes::perform_password_change(&app, &caller, &form.current_password, &form.new_password)
            .await
    };
    match result {
        Ok(()) => see_other("/ui?password=changed"),
        Err(error) => {
            let message = format!("The password was not changed: {}.", error.message);
            (
                error.status,
                layout(
                    "Change password",
                    Some(&caller),
                    false,
                    password_form(&caller, Some(&message)),
                ),
            )
                .into_response()
        }
    }
}

/// A notice carried in the query string after a redirect.
#[derive(Deserialize)]
pub struct Notice {
    password: Option<String>,
    started: Option<String>,
}

/// `GET /ui`: the tenants the caller may see.
pub async fn home(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let tenants: Vec<(String, String)> = match &caller.principal.tenant_id {
        None => {
            sqlx::query_as("SELECT id, name FROM tenants ORDER BY name")
                .fetch_all(&app.pool)
                .await?
        }
        Some(own) => {
            sqlx::query_as("SELECT id, name FROM tenants WHERE id = $1")
                .bind(own)
                .fetch_all(&app.pool)
                .await?
        }
    };
    let read_jobs = caller.principal.has(Permission::ReadJobs);
    let firing = alerts::firing(&app.pool).await?;
    let mut rows = Vec::new();
    for (id, name) in tenants {
        let repositories = jobs::list_repositories(&app.pool, &id).await?.len();
        let job_count = if read_jobs {
            Some(jobs::list_jobs(&app.pool, &id).await?.len())
        } else {
            None
        };
        let alert_count = firing
            .iter()
            .filter(|a| a.1.as_deref() == Some(id.as_str()))
            .count();
        rows.push((id, name, repositories, job_count, alert_count));
    }
    let body = html! {
        @if notice.password.is_some() {
            p.notice role="status" { "Your password was changed." }
        }
        h1 { "Overview" }
        @if rows.is_empty() {
            p { "There is no tenant yet. An admin creates tenants with " code { "POST /api/v1/tenants" } "." }
        } @else {
            table {
                caption { "Tenants" }
                thead { tr {
                    th scope="col" { "Tenant" }
                    th scope="col" { "Repositories" }
                    @if read_jobs { th scope="col" { "Jobs" } th scope="col" { "Alerts firing" } }
                } }
                tbody {
                    @for (id, name, repositories, job_count, alert_count) in &rows {
                        tr {
                            th scope="row" { a href={"/ui/tenants/" (id)} { (name) } }
                            td { (repositories) }
                            @if let Some(job_count) = job_count {
                                td { (job_count) }
                                td { @if *alert_count > 0 { span.status.bad { (alert_count) " firing" } } @else { "none" } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Overview", &caller, body))
}

/// `GET /ui/tenants/{tenant}`: alerts, jobs with their last run, repositories.
pub async fn tenant(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
) -> PageResult {
    let name = tenant_name(&app, &tenant).await?;
    let read_jobs = caller.principal.has(Permission::ReadJobs);
    let run_jobs = caller.principal.has(Permission::RunJobs);
    let read_snapshots = caller.principal.has(Permission::ReadSnapshots);
    let repositories = jobs::list_repositories(&app.pool, &tenant).await?;
    let mut job_rows = Vec::new();
    let mut firing = Vec::new();
    if read_jobs {
        for job in jobs::list_jobs(&app.pool, &tenant).await? {
            let last = jobs::list_runs(&app.pool, &tenant, &job.id, 1)
                .await?
                .into_iter()
                .next();
            job_rows.push((job, last));
        }
        firing = alerts::firing(&app.pool)
            .await?
            .into_iter()
            .filter(|a| a.1.as_deref() == Some(tenant.as_str()))
            .collect();
    }
    let repository_name = |id: &str| {
        repositories
            .iter()
            .find(|r| r.id == id)
            .map_or(id.to_owned(), |r| r.name.clone())
    };
    let body = html! {
        h1 { "Tenant " (name) }
        @if read_jobs {
            section aria-labelledby="alerts" {
                h2 id="alerts" { "Alerts" }
                @if firing.is_empty() {
                    p { "No alert is firing." }
                } @else {
                    ul.alerts {
                        @for (_, _, message, since) in &firing {
                            li { span.status.bad { "firing" } " " (message) " (since " (time(*since)) ")" }
                        }
                    }
                }
            }
            section aria-labelledby="jobs" {
                h2 id="jobs" { "Jobs" }
                @if job_rows.is_empty() {
                    p { "No job yet." }
                } @else {
                    table {
                        thead { tr {
                            th scope="col" { "Job" }
                            th scope="col" { "Kind" }
                            th scope="col" { "Repository" }
                            th scope="col" { "Schedule" }
                            th scope="col" { "Last run" }
                            th scope="col" { "Next run" }
                            @if run_jobs { th scope="col" { span.visually-hidden { "Actions" } } }
                        } }
                        tbody {
                            @for (job, last) in &job_rows {
                                tr {
                                    th scope="row" { a href={"/ui/tenants/" (tenant) "/jobs/" (job.id)} { (job.name) } }
                                    td { (job.kind.as_str()) }
                                    td { (repository_name(&job.repository_id)) }
                                    td { code { (job.schedule) } }
                                    td {
                                        @if let Some(run) = last {
                                            (status(&run.status)) " "
                                            a href={"/ui/tenants/" (tenant) "/runs/" (run.id)} { (time(run.started_at)) }
                                        } @else { "never" }
                                    }
                                    td { @if let Some(next) = job.next_run_at { (time(next)) } @else { "—" } }
                                    @if run_jobs {
                                        td { (run_button(&caller, &tenant, &job.id, &job.name)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="repositories" {
            h2 id="repositories" { "Repositories" }
            @if repositories.is_empty() {
                p { "No repository yet." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Repository" }
                        th scope="col" { "Location" }
                        th scope="col" { "Registered" }
                    } }
                    tbody {
                        @for repository in &repositories {
                            tr {
                                th scope="row" {
                                    @if read_snapshots {
                                        a href={"/ui/tenants/" (tenant) "/repositories/" (repository.id)} { (repository.name) }
                                    } @else { (repository.name) }
                                }
                                td { code { (repository.location) } }
                                td { (time(repository.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&format!("Tenant {name}"), &caller, body))
}

fn run_button(caller: &Caller, tenant: &str, job: &str, name: &str) -> Markup {
    html! {
        form.inline method="post" action={"/ui/tenants/" (tenant) "/jobs/" (job) "/run"} {
            (csrf_field(caller))
            button type="submit" aria-label={"Run " (name) " now"} { "Run now" }
        }
    }
}

/// `GET /ui/tenants/{tenant}/repositories/{repository}`: its snapshots (audited).
pub async fn repository(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, repository)): Path<(String, String)>,
) -> PageResult {
    let found = jobs::get_repository(&app.pool, &tenant, &repository)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let mut snapshots = routes::list_snapshots_audited(&app, &caller, &tenant, &repository).await?;
    snapshots.sort_by(|a, b| b.time.cmp(&a.time));
    let tenant_label = tenant_name(&app, &tenant).await?;
    let body = html! {
        p.crumbs { a href={"/ui/tenants/" (tenant)} { "Tenant " (tenant_label) } }
        h1 { "Repository " (found.name) }
        p { "Location: " code { (found.location) } }
        @if snapshots.is_empty() {
            p { "No snapshot yet." }
        } @else {
            table {
                caption { (snapshots.len()) " snapshots, newest first" }
                thead { tr {
                    th scope="col" { "Time" }
                    th scope="col" { "Host" }
                    th scope="col" { "Paths" }
                    th scope="col" { "Tags" }
                    th scope="col" { "Snapshot" }
                } }
                tbody {
                    @for snapshot in &snapshots {
                        tr {
                            td { (snapshot.time) }
                            td { (snapshot.hostname) }
                            td { @for path in &snapshot.paths { code { (path) } " " } }
                            td { (snapshot.tags.join(", ")) }
                            td { code title=(snapshot.id) { (snapshot.id.chars().take(12).collect::<String>()) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&format!("Repository {}", found.name), &caller, body))
}

/// `GET /ui/tenants/{tenant}/jobs/{job}`: the job and its runs.
pub async fn job(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, job)): Path<(String, String)>,
    Query(notice): Query<Notice>,
) -> PageResult {
    let found = jobs::get_job(&app.pool, &tenant, &job)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let runs = jobs::list_runs(&app.pool, &tenant, &job, RUNS_SHOWN).await?;
    let running = scheduler::is_running(&app, &found).await?;
    let repository = jobs::get_repository(&app.pool, &tenant, &found.repository_id)
        .await?
        .map_or(found.repository_id.clone(), |r| r.name);
    let tenant_label = tenant_name(&app, &tenant).await?;
    let options = serde_json::to_string_pretty(&found.options).unwrap_or_default();
    let body = html! {
        p.crumbs { a href={"/ui/tenants/" (tenant)} { "Tenant " (tenant_label) } }
        h1 { "Job " (found.name) }
        @match notice.started.as_deref() {
            Some("yes") => p.notice role="status" { "A run was started." },
            Some(_) => p.error role="alert" { "The job is running already: runs of one job never overlap." },
            None => {},
        }
        dl {
            dt { "Kind" } dd { (found.kind.as_str()) }
            dt { "Repository" } dd { (repository) }
            dt { "Schedule" } dd { code { (found.schedule) } @if !found.enabled { " (disabled)" } }
            dt { "Next run" } dd { @if let Some(next) = found.next_run_at { (time(next)) } @else { "—" } }
            dt { "Retries" } dd { (found.max_retries) ", first after " (found.retry_base_secs) " s" }
            @if let Some(stale) = found.stale_after_secs {
                dt { "Stale alert after" } dd { (duration(stale * 1000)) " without a success" }
            }
            dt { "Options" } dd { pre { (options) } }
            dt { "Now" } dd { @if running { (status("running")) } @else { "idle" } }
        }
        @if caller.principal.has(Permission::RunJobs) {
            (run_button(&caller, &tenant, &found.id, &found.name))
        }
        h2 { "Runs" }
        @if runs.is_empty() {
            p { "No run yet." }
        } @else {
            table {
                caption { "The last " (runs.len()) " runs, newest first" }
                thead { tr {
                    th scope="col" { "Started" }
                    th scope="col" { "Outcome" }
                    th scope="col" { "Trigger" }
                    th scope="col" { "Attempt" }
                    th scope="col" { "Duration" }
                    th scope="col" { "Bytes" }
                } }
                tbody {
                    @for run in &runs {
                        tr {
                            th scope="row" { a href={"/ui/tenants/" (tenant) "/runs/" (run.id)} { (time(run.started_at)) } }
                            td { (status(&run.status)) }
                            td { (run.trigger) }
                            td { (run.attempt) }
                            td { (run_duration(run)) }
                            td { @if let Some(b) = run.bytes { (bytes(b)) } @else { "—" } }
                        }
                    }
                }
            }
        }
    };
    Ok(refreshing_page(
        &format!("Job {}", found.name),
        &caller,
        running,
        body,
    ))
}

/// `POST /ui/tenants/{tenant}/jobs/{job}/run`: starts a run (audited), back to the job.
pub async fn job_run(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, job)): Path<(String, String)>,
) -> PageResult {
    let started = routes::start_job_audited(&app, &caller, &tenant, &job).await?;
    let answer = if started { "yes" } else { "no" };
    Ok(see_other(&format!(
        "/ui/tenants/{tenant}/jobs/{job}?started={answer}"
    )))
}

/// `GET /ui/tenants/{tenant}/runs/{run}`: one run with its log.
pub async fn run(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((tenant, run)): Path<(String, String)>,
) -> PageResult {
    let found = jobs::get_run(&app.pool, &tenant, &run)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let job = jobs::get_job(&app.pool, &tenant, &found.job_id).await?;
    let job_name = job.as_ref().map_or("(deleted job)", |j| j.name.as_str());
    let body = html! {
        p.crumbs {
            a href={"/ui/tenants/" (tenant) "/jobs/" (found.job_id)} { "Job " (job_name) }
        }
        h1 { "Run of " (job_name) }
        dl {
            dt { "Outcome" } dd { (status(&found.status)) }
            dt { "Started" } dd { (time(found.started_at)) }
            dt { "Finished" } dd { @if let Some(end) = found.finished_at { (time(end)) } @else { "—" } }
            dt { "Duration" } dd { (run_duration(&found)) }
            dt { "Trigger" } dd { (found.trigger) ", attempt " (found.attempt) }
            dt { "Bytes" } dd { @if let Some(b) = found.bytes { (bytes(b)) } @else { "—" } }
        }
        h2 { "Log" }
        @if found.log.is_empty() {
            p { "The run wrote no log." }
        } @else {
            pre.log tabindex="0" aria-label="Run log" { (found.log) }
        }
    };
    let running = found.status == "running";
    Ok(refreshing_page(
        &format!("Run of {job_name}"),
        &caller,
        running,
        body,
    ))
}

/// Paging of the audit log.
#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    String,
);

/// `GET /ui/audit`: the newest audit rows (the caller's tenant's, or all when global).
pub async fn audit(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<AuditQuery>,
) -> PageResult {
    let before = query.before.unwrap_or(i64::MAX);
    let columns = "seq, at, actor, action, outcome, tenant_id, source, target, detail";
    let rows: Vec<AuditRow> = match &caller.principal.tenant_id {
        None => {
            sqlx::query_as(&format!(
                "SELECT {columns} FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
            ))
            .bind(before)
            .bind(AUDIT_PAGE)
            .fetch_all(&app.pool)
            .await?
        }
        Some(tenant) => {
            sqlx::query_as(&format!("SELECT {columns} FROM audit_log WHERE tenant_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"))
                .bind(tenant)
                .bind(before)
                .bind(AUDIT_PAGE)
                .fetch_all(&app.pool)
                .await?
        }
    };
    let oldest = rows.last().map(|r| r.0);
    let body = html! {
        h1 { "Audit log" }
        p { "Newest first. Check the chain with " code { "lifeboat audit verify" } "; export it as JSON lines with " code { "GET /api/v1/audit" } "." }
        @if rows.is_empty() {
            p { "No entry." }
        } @else {
            table.audit {
                thead { tr {
                    th scope="col" { "#" }
                    th scope="col" { "Time" }
                    th scope="col" { "Who" }
                    th scope="col" { "Action" }
                    th scope="col" { "Outcome" }
                    th scope="col" { "Source" }
                    th scope="col" { "Object" }
                    th scope="col" { "Detail" }
                } }
                tbody {
                    @for (seq, at, actor, action, outcome, _tenant, source, target, detail) in &rows {
                        tr {
                            td { (seq) }
                            td { (time(*at)) }
                            td { (actor) }
                            td { code { (action) } }
                            td { (outcome_badge(outcome)) }
                            td { (source) }
                            td { (target.as_deref().unwrap_or("")) }
                            td { code { (detail) } }
                        }
                    }
                }
            }
            @if let Some(oldest) = oldest.filter(|_| rows.len() as i64 == AUDIT_PAGE) {
                p { a href={"/ui/audit?before=" (oldest)} { "Older entries" } }
            }
        }
    };
    Ok(page("Audit log", &caller, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_sign_in_only_dashboard_paths_of_this_server() {
        assert_eq!(safe_next("/ui/tenants/abc"), "/ui/tenants/abc");
        assert_eq!(safe_next("/ui"), "/ui");
        for evil in [
            "https://evil.example/ui",
            "//evil.example/ui",
            "/ui//evil.example",
            "/ui/\\evil",
            "/api/v1/me",
            "/uix",
            "/ui/\nx",
        ] {
            assert_eq!(safe_next(evil), "/ui", "{evil}");
        }
        assert_eq!(
            login_link("/ui/tenants/a b"),
            "/ui/login?next=%2Fui%2Ftenants%2Fa+b"
        );
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let mut headers = HeaderMap::new();
        assert!(same_origin(&headers), "no header: not a cross-site browser");
        headers.insert(header::HOST, "backup.example:8443".parse().unwrap());
        headers.insert(
            header::ORIGIN,
            "https://backup.example:8443".parse().unwrap(),
        );
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&headers), "Sec-Fetch-Site decides when sent");
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(
            !same_origin(&headers),
            "a sibling subdomain is another site"
        );
    }

    #[test]
    fn text_is_escaped_in_pages() {
        let markup = status("<script>alert(1)</script>");
        assert!(!markup.0.contains("<script>"), "{}", markup.0);
        assert!(markup.0.contains("&lt;script&gt;"));
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
        assert_eq!(duration(1500), "1.5 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        assert_eq!(duration(3_723_000), "1 h 2 min");
    }
}
