//! The OpenAPI 3.1 description of the JSON API, generated from the route table.
//!
//! [`document`] walks [`routes::routes`](crate::routes::routes), the same table the router and
//! the authorisation middleware are built from, so a route cannot be served without being
//! described, and its documented permission is the one enforced. Bodies are described by the
//! Rust types that (de)serialise them ([`Shape`]), through `schemars`. The server answers the
//! document at `GET /api/v1/openapi.json`; `docs/openapi.json` is a copy that a test keeps
//! identical to what the code generates.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::authz::{Permission, Role};
use crate::identity::{LoginRequest, SESSION_COOKIE, TokenInfo};
use crate::jobs::{
    JobDetail, JobInfo, NewJob, NewRepository, RepositoryInfo, RunInfo, SnapshotInfo,
};
use crate::routes::{self, CodeBody, NewTenant, NewToken, NewUser, PasswordChange, RouteSpec};
use crate::snapshots::Listing;

/// A JSON body a route takes or gives, named by the type that (de)serialises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// [`LoginRequest`].
    Login,
    /// A password change.
    PasswordChange,
    /// A TOTP code.
    TotpCode,
    /// A new API token's name and role.
    NewToken,
    /// A new tenant's name.
    NewTenant,
    /// A new user.
    NewUser,
    /// [`NewRepository`].
    NewRepository,
    /// [`NewJob`].
    NewJob,
    /// One [`RepositoryInfo`].
    Repository,
    /// A list of [`RepositoryInfo`].
    Repositories,
    /// A list of [`SnapshotInfo`].
    Snapshots,
    /// One [`JobDetail`].
    Job,
    /// One [`JobInfo`], as created.
    NewJobCreated,
    /// A list of [`JobInfo`].
    Jobs,
    /// One [`RunInfo`].
    Run,
    /// A list of [`RunInfo`].
    Runs,
    /// A list of [`TokenInfo`].
    Tokens,
    /// A [`Listing`] of snapshot entries.
    Listing,
}

impl Shape {
    fn schema(self, generator: &mut SchemaGenerator) -> schemars::Schema {
        match self {
            Shape::Login => generator.subschema_for::<LoginRequest>(),
            Shape::PasswordChange => generator.subschema_for::<PasswordChange>(),
            Shape::TotpCode => generator.subschema_for::<CodeBody>(),
            Shape::NewToken => generator.subschema_for::<NewToken>(),
            Shape::NewTenant => generator.subschema_for::<NewTenant>(),
            Shape::NewUser => generator.subschema_for::<NewUser>(),
            Shape::NewRepository => generator.subschema_for::<NewRepository>(),
            Shape::NewJob => generator.subschema_for::<NewJob>(),
            Shape::Repository => generator.subschema_for::<RepositoryInfo>(),
            Shape::Repositories => generator.subschema_for::<Vec<RepositoryInfo>>(),
            Shape::Snapshots => generator.subschema_for::<Vec<SnapshotInfo>>(),
            Shape::Job => generator.subschema_for::<JobDetail>(),
            Shape::NewJobCreated => generator.subschema_for::<JobInfo>(),
            Shape::Jobs => generator.subschema_for::<Vec<JobInfo>>(),
            Shape::Run => generator.subschema_for::<RunInfo>(),
            Shape::Runs => generator.subschema_for::<Vec<RunInfo>>(),
            Shape::Tokens => generator.subschema_for::<Vec<TokenInfo>>(),
            Shape::Listing => generator.subschema_for::<Listing>(),
        }
    }
}

/// True for the routes the document describes: the JSON API, health and metrics, not the
/// dashboard's pages and assets.
pub fn documented(spec: &RouteSpec) -> bool {
    !spec.page && spec.path != "/" && !spec.path.starts_with("/ui/")
}

/// The OpenAPI document of this build's API.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();
    for (spec, _) in routes::routes() {
        if !documented(&spec) {
            continue;
        }
        let item = paths
            .entry(spec.path.to_owned())
            .or_insert_with(|| json!({}));
        item[spec.method.to_ascii_lowercase()] = operation(&spec, &mut generator);
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "Error".to_owned(),
        json!({
            "type": "object",
            "description": "Every refusal and failure: a message safe to show; details stay in the server log.",
            "properties": { "error": { "type": "string" } },
            "required": ["error"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Lifeboat server API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The JSON API of `lifeboat serve` (docs/server.md). HTTPS only. \
                Authenticate with an API token (`Authorization: Bearer lbt_...`) or the session \
                cookie from POST /api/v1/login; a cookie request that changes something also \
                sends the login's csrf_token in the X-CSRF-Token header. A principal bound to a \
                tenant gets 404 for another tenant's paths, as for ids that do not exist.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": { "type": "http", "scheme": "bearer", "description": "An API token (POST /api/v1/me/tokens)." },
                "session": { "type": "apiKey", "in": "cookie", "name": SESSION_COOKIE, "description": "The session cookie set by POST /api/v1/login." },
            },
        },
    })
}

fn operation(spec: &RouteSpec, generator: &mut SchemaGenerator) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(operation_id(spec)));
    op.insert("summary".into(), json!(spec.summary));
    op.insert(
        "description".into(),
        json!(who_may(spec.permission, spec.session_only)),
    );
    op.insert(
        "x-lifeboat-permission".into(),
        serde_json::to_value(spec.permission).unwrap_or_default(),
    );
    let parameters: Vec<Value> = path_parameters(spec.path)
        .map(|name| {
            json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
        })
        .chain(spec.query.iter().map(|(name, meaning)| {
            json!({ "name": name, "in": "query", "description": meaning, "schema": { "type": "string" } })
        }))
        .collect();
    if !parameters.is_empty() {
        op.insert("parameters".into(), json!(parameters));
    }
    if let Some(shape) = spec.body {
        op.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": { "schema": shape.schema(generator) } } }),
        );
    }
    let security = match (spec.permission, spec.session_only) {
        (Permission::Public, _) => json!([]),
        (_, true) => json!([{ "session": [] }]),
        (_, false) => json!([{ "token": [] }, { "session": [] }]),
    };
    op.insert("security".into(), security);
    let mut responses = Map::new();
    let mut success = json!({ "description": "Success." });
    match (spec.media, spec.reply) {
        (Some(kind), _) => {
            success["content"] = json!({ kind: { "schema": { "type": "string" } } });
        }
        (None, Some(shape)) => {
            success["content"] =
                json!({ "application/json": { "schema": shape.schema(generator) } });
        }
        (None, None) => {
            success["content"] = json!({ "application/json": { "schema": { "type": "object" } } });
        }
    }
    responses.insert(spec.status.to_string(), success);
    let error = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    if spec.body.is_some() {
        responses.insert("400".into(), error("The body is malformed or invalid."));
    }
    if spec.permission != Permission::Public {
        responses.insert("401".into(), error("Not signed in."));
        responses.insert(
            "403".into(),
            error("The role does not allow it, the CSRF token is missing, or the password must be changed first."),
        );
    }
    if path_parameters(spec.path).next().is_some() {
        responses.insert(
            "404".into(),
            error("No such object, or it belongs to another tenant."),
        );
    }
    if spec.path == "/api/v1/login" {
        responses.insert(
            "429".into(),
            error("Too many failed logins: wait for Retry-After seconds."),
        );
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

/// `GET /api/v1/tenants/{tenant}/jobs` → `get_tenants_tenant_jobs`.
fn operation_id(spec: &RouteSpec) -> String {
    let mut id = spec.method.to_ascii_lowercase();
    for segment in spec.path.split('/').filter(|s| !s.is_empty()) {
        if segment == "api" || segment == "v1" {
            continue;
        }
        id.push('_');
        id.extend(
            segment
                .chars()
                .filter(|c| !matches!(c, '{' | '}'))
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

fn who_may(permission: Permission, session_only: bool) -> String {
    let mut text = match permission {
        Permission::Public => "Open to anyone.".to_owned(),
        Permission::SignedIn => "Any signed-in principal, on its own account.".to_owned(),
        _ => {
            let names: Vec<String> = Role::ALL
                .into_iter()
                .filter_map(|role| {
                    match (
                        role.grants(permission, false),
                        role.grants(permission, true),
                    ) {
                        (true, _) => Some(role.as_str().to_owned()),
                        (false, true) => Some(format!("{} (server-wide only)", role.as_str())),
                        (false, false) => None,
                    }
                })
                .collect();
            format!("Roles: {}.", names.join(", "))
        }
    };
    if session_only {
        text.push_str(" A signed-in person only: API tokens are refused.");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    /// docs/openapi.json is what this code generates. After changing a route, regenerate it:
    /// `LIFEBOAT_UPDATE_OPENAPI=1 cargo test -p lifeboat-server openapi`.
    #[test]
    fn the_committed_document_matches_the_code() {
        let generated = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("LIFEBOAT_UPDATE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is out of date with the route table: run \
             LIFEBOAT_UPDATE_OPENAPI=1 cargo test -p lifeboat-server openapi and commit it"
        );
    }

    #[test]
    fn every_api_route_is_described_with_its_permission_and_parameters() {
        let doc = document();
        let mut described = 0;
        for (spec, _) in routes::routes() {
            if !documented(&spec) {
                assert!(
                    spec.page || spec.permission == Permission::Public,
                    "{} {}",
                    spec.method,
                    spec.path
                );
                continue;
            }
            described += 1;
            assert!(
                !spec.summary.is_empty(),
                "{} {} has no summary",
                spec.method,
                spec.path
            );
            let op = &doc["paths"][spec.path][spec.method.to_ascii_lowercase()];
            assert_eq!(op["summary"], spec.summary);
            assert_eq!(
                op["x-lifeboat-permission"],
                serde_json::to_value(spec.permission).unwrap()
            );
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            let declared: Vec<&str> = path_parameters(spec.path)
                .chain(spec.query.iter().map(|(name, _)| *name))
                .collect();
            assert_eq!(names, declared);
            let public = spec.permission == Permission::Public;
            assert_eq!(op["security"].as_array().unwrap().is_empty(), public);
        }
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, described);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for reference in refs {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{reference} points outside components/schemas"));
            assert!(schemas.contains_key(name), "{reference} is not defined");
        }
        // A request body carries the fields its type has.
        let login = &schemas["LoginRequest"]["properties"];
        assert!(login["username"].is_object() && login["password"].is_object());
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => collect_refs(inner, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn operation_ids_are_unique_and_readable() {
        let ids: Vec<String> = routes::routes()
            .iter()
            .filter(|(spec, _)| documented(spec))
            .map(|(spec, _)| operation_id(spec))
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.contains(&"get_tenants_tenant_jobs_job_runs".to_owned()));
    }
}
