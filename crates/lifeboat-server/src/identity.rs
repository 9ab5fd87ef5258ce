//! Users, sessions, API tokens, TOTP enrolment and the login procedure.
//!
//! * Session ids and API tokens are 32 bytes from the operating system's CSPRNG (through
//!   `rand`'s thread generator, seeded from it), handed out once and stored as BLAKE3 hashes: a
//!   leaked catalog gives no usable credential. A fast hash is enough because the inputs carry
//!   256 bits of entropy; passwords, which do not, get argon2id.
//! * A session ends after `idle_timeout_secs` without use or `absolute_timeout_secs` after
//!   login. Each carries a CSRF token that cookie-authenticated state-changing requests must
//!   echo in the `X-CSRF-Token` header.
//! * An API token has a role within its owner's; its effective role is re-checked against the
//!   owner's current role on every request, so demoting or disabling a user demotes or disables
//!   their tokens at once.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Serialize;
use sqlx::Row;

use crate::authz::{AuthMethod, Principal, Role};
use crate::catalog::{Pool, new_id, now_millis};
use crate::config::SessionConfig;
use crate::error::{Error, Result};
use crate::password::{PasswordHasher, check_policy};
use crate::secrets::Sealer;
use crate::throttle::LoginThrottle;
use crate::totp;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "lifeboat_session";
/// Prefix of API tokens, so they are recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "lbt_";
/// Recovery codes made at TOTP enrolment.
pub const RECOVERY_CODES: usize = 10;

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// How a high-entropy secret is stored: BLAKE3, hex.
pub fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A user as stored.
#[derive(Debug, Clone)]
pub struct User {
    /// Id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Tenant; `None` for admins and global auditors.
    pub tenant_id: Option<String>,
    /// Set by the first start and by a forced reset.
    pub must_change_password: bool,
    /// Sealed TOTP secret when 2FA is on.
    pub totp_secret: Option<String>,
    /// Last accepted TOTP step.
    pub totp_last_step: i64,
    /// A disabled user cannot log in and its tokens do not work.
    pub disabled: bool,
}

const USER_COLUMNS: &str = "id, username, password_hash, role, tenant_id, must_change_password, totp_secret, totp_last_step, disabled";

fn user_from_row(row: &crate::catalog::Row) -> Result<User> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(&role)
            .ok_or_else(|| Error::Invalid(format!("unknown role {role:?} in the catalog")))?,
        tenant_id: row.try_get("tenant_id")?,
        must_change_password: row.try_get::<i64, _>("must_change_password")? != 0,
        totp_secret: row.try_get("totp_secret")?,
        totp_last_step: row.try_get("totp_last_step")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
    })
}

/// The user called `username`.
pub async fn user_by_name(pool: &Pool, username: &str) -> Result<Option<User>> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
    ))
    .bind(username)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(user_from_row).transpose()
}

/// The user with id `id`.
pub async fn user_by_id(pool: &Pool, id: &str) -> Result<Option<User>> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(user_from_row).transpose()
}

/// Checks that a role and tenant fit together: admins are global, operators and members
/// belong to a tenant, auditors either.
pub fn check_scope(role: Role, tenant_id: Option<&str>) -> Result<()> {
    match (role, tenant_id) {
        (Role::Admin, Some(_)) => Err(Error::Invalid(
            "an admin has no tenant: admins act on all tenants".into(),
        )),
        (Role::Operator | Role::Member, None) => Err(Error::Invalid(format!(
            "a{} {} must belong to a tenant: give tenant_id",
            if role == Role::Operator { "n" } else { "" },
            role.as_str()
        ))),
        _ => Ok(()),
    }
}

/// User names: 1–64 characters of letters, digits and `._@-`.
pub fn check_username(username: &str) -> Result<()> {
    let ok = !username.is_empty()
        && username.len() <= 64
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "a user name has 1 to 64 characters among letters, digits and . _ @ -".into(),
        ))
    }
}

/// Creates a user after checking the name, scope and password policy; returns its id.
pub async fn create_user(
    pool: &Pool,
    hasher: &PasswordHasher,
    min_length: usize,
    username: &str,
    password: &str,
    role: Role,
    tenant_id: Option<&str>,
) -> Result<String> {
    check_username(username)?;
    check_scope(role, tenant_id)?;
    check_policy(password, username, min_length)?;
    if let Some(tenant) = tenant_id {
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
        if exists.is_none() {
            return Err(Error::NotFound(format!("tenant {tenant}")));
        }
    }
    if user_by_name(pool, username).await?.is_some() {
        return Err(Error::Invalid(format!("user name {username:?} is taken")));
    }
    let hash = hash_blocking(hasher, password).await?;
    let id = new_id();
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, tenant_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(username)
    .bind(&hash)
    .bind(role.as_str())
    .bind(tenant_id)
    .bind(now_millis())
    .execute(pool)
    .await?;
    Ok(id)
}

async fn hash_blocking(hasher: &PasswordHasher, password: &str) -> Result<String> {
    // argon2id takes tens of milliseconds of CPU: keep it off the async workers.
    tokio::task::block_in_place(|| hasher.hash(password))
}

/// A one-time password for the first admin or a forced reset: 20 random bytes, base32
/// (32 characters), so it passes the policy and is easy to type.
pub fn one_time_password() -> String {
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase()
}

/// On a catalog without users, creates `admin` with a one-time password that must be changed
/// at first login, and returns that password (the caller prints it once). `None` when users
/// exist.
pub async fn create_first_admin(pool: &Pool, hasher: &PasswordHasher) -> Result<Option<String>> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(pool)
        .await?;
    if count > 0 {
        return Ok(None);
    }
    let password = one_time_password();
    let hash = hash_blocking(hasher, &password).await?;
    // Two servers starting on one new PostgreSQL catalog both see no user: the first insert
    // wins and the other server has no setup password to show.
    let created = sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, tenant_id, must_change_password, created_at) VALUES ($1, 'admin', $2, 'admin', NULL, 1, $3) \
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(new_id())
    .bind(&hash)
    .bind(now_millis())
    .execute(pool)
    .await?
    .rows_affected();
    Ok((created == 1).then_some(password))
}

/// Sets a new one-time password for `username`, forces a change at next login, ends its
/// sessions and revokes its tokens. Returns the password.
pub async fn force_reset(pool: &Pool, hasher: &PasswordHasher, username: &str) -> Result<String> {
    let user = user_by_name(pool, username)
        .await?
        .ok_or_else(|| Error::NotFound(format!("user {username:?}")))?;
    let password = one_time_password();
    let hash = hash_blocking(hasher, &password).await?;
    sqlx::query("UPDATE users SET password_hash = $1, must_change_password = 1 WHERE id = $2")
        .bind(&hash)
        .bind(&user.id)
        .execute(pool)
        .await?;
    revoke_user(pool, &user.id).await?;
    Ok(password)
}

/// Ends all sessions and revokes all tokens of one user.
pub async fn revoke_user(pool: &Pool, user_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(pool)
        .await?;
    sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(now_millis())
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends every session and revokes every token (breach response). Returns (sessions, tokens).
pub async fn revoke_all(pool: &Pool) -> Result<(u64, u64)> {
    let sessions = sqlx::query("DELETE FROM sessions")
        .execute(pool)
        .await?
        .rows_affected();
    let tokens = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE revoked_at IS NULL")
        .bind(now_millis())
        .execute(pool)
        .await?
        .rows_affected();
    Ok((sessions, tokens))
}

/// Changes a password after checking the policy; ends the user's other sessions.
pub async fn change_password(
    pool: &Pool,
    hasher: &PasswordHasher,
    min_length: usize,
    user: &User,
    new_password: &str,
    keep_session: Option<&str>,
) -> Result<()> {
    check_policy(new_password, &user.username, min_length)?;
    if hasher.verify(&user.password_hash, new_password) {
        return Err(Error::WeakPassword("it is the current password".into()));
    }
    let hash = hash_blocking(hasher, new_password).await?;
    sqlx::query("UPDATE users SET password_hash = $1, must_change_password = 0 WHERE id = $2")
        .bind(&hash)
        .bind(&user.id)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id_hash <> $2")
        .bind(&user.id)
        .bind(keep_session.unwrap_or(""))
        .execute(pool)
        .await?;
    Ok(())
}

/// A new session: the cookie value and its CSRF token.
#[derive(Debug, Clone, Serialize)]
pub struct NewSession {
    /// The session id (cookie value); shown once.
    #[serde(skip)]
    pub token: String,
    /// The CSRF token to echo in `X-CSRF-Token`.
    pub csrf_token: String,
}

async fn create_session(pool: &Pool, user_id: &str, source: &str) -> Result<NewSession> {
    let token = random_token(32);
    let csrf_token = random_token(32);
    let now = now_millis();
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, last_seen_at, source) VALUES ($1, $2, $3, $4, $4, $5)",
    )
    .bind(hash_secret(&token))
    .bind(user_id)
    .bind(&csrf_token)
    .bind(now)
    .bind(source)
    .execute(pool)
    .await?;
    Ok(NewSession { token, csrf_token })
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Signed in.
    Success {
        /// The user.
        user: User,
        /// The new session.
        session: NewSession,
        /// The second factor used, if any (`totp` or `recovery`).
        second_factor: Option<&'static str>,
    },
    /// Too many failures: try again after this long (nothing was checked).
    Throttled(Duration),
    /// Unknown user, wrong password, disabled user or wrong second factor: one answer for all.
    Invalid {
        /// What actually failed, for the audit log only.
        reason: &'static str,
    },
    /// Password right, a TOTP code or recovery code is needed.
    SecondFactorRequired,
}

/// What a login request carries.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct LoginRequest {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// TOTP code, when 2FA is on.
    #[serde(default)]
    pub totp: Option<String>,
    /// A recovery code instead of the TOTP code.
    #[serde(default)]
    pub recovery_code: Option<String>,
}

/// Everything the login procedure uses.
pub struct LoginContext<'a> {
    /// Catalog.
    pub pool: &'a Pool,
    /// Password hasher (current costs).
    pub hasher: &'a PasswordHasher,
    /// Opens TOTP secrets.
    pub sealer: &'a Sealer,
    /// Backoff.
    pub throttle: &'a LoginThrottle,
}

/// Runs a login: throttle check, password (or the dummy hash for an unknown user, so both
/// cost the same), second factor, rehash when costs were raised, new session.
pub async fn login(
    ctx: &LoginContext<'_>,
    request: &LoginRequest,
    address: IpAddr,
) -> Result<LoginOutcome> {
    if let Some(wait) = ctx.throttle.check(&request.username, address) {
        return Ok(LoginOutcome::Throttled(wait));
    }
    let user = user_by_name(ctx.pool, &request.username).await?;
    let password_ok = tokio::task::block_in_place(|| match &user {
        Some(user) => ctx.hasher.verify(&user.password_hash, &request.password),
        None => {
            ctx.hasher.verify_dummy(&request.password);
            false
        }
    });
    let user = match user {
        Some(user) if password_ok && !user.disabled => user,
        Some(user) => {
            ctx.throttle.failed(&request.username, address);
            let reason = if user.disabled {
                "disabled user"
            } else {
                "wrong password"
            };
            return Ok(LoginOutcome::Invalid { reason });
        }
        None => {
            ctx.throttle.failed(&request.username, address);
            return Ok(LoginOutcome::Invalid {
                reason: "unknown user",
            });
        }
    };
    let mut second_factor = None;
    if let Some(sealed) = &user.totp_secret {
        let accepted = if let Some(code) = &request.totp {
            let secret = ctx.sealer.open(&totp_context(&user.id), sealed)?;
            let now_step = totp::step_at(jiff::Timestamp::now().as_second().max(0) as u64);
            match totp::verify(&secret, code, now_step, user.totp_last_step.max(0) as u64) {
                // Store the step only if no concurrent login used it first.
                Some(step) => sqlx::query(
                    "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1",
                )
                .bind(step as i64)
                .bind(&user.id)
                .execute(ctx.pool)
                .await?
                .rows_affected()
                    == 1,
                None => false,
            }
        } else if let Some(code) = &request.recovery_code {
            sqlx::query("UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL")
                .bind(now_millis())
                .bind(&user.id)
                .bind(hash_secret(&normalise_recovery_code(code)))
                .execute(ctx.pool)
                .await?
                .rows_affected()
                == 1
        } else {
            return Ok(LoginOutcome::SecondFactorRequired);
        };
        if !accepted {
            ctx.throttle.failed(&request.username, address);
            return Ok(LoginOutcome::Invalid {
                reason: "wrong second factor",
            });
        }
        second_factor = Some(if request.totp.is_some() {
            "totp"
        } else {
            "recovery"
        });
    }
    ctx.throttle.succeeded(&request.username);
    if ctx.hasher.needs_rehash(&user.password_hash) {
        let hash = hash_blocking(ctx.hasher, &request.password).await?;
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(&hash)
            .bind(&user.id)
            .execute(ctx.pool)
            .await?;
    }
    let session = create_session(ctx.pool, &user.id, &address.to_string()).await?;
    Ok(LoginOutcome::Success {
        user,
        session,
        second_factor,
    })
}

/// The sealing context of a user's TOTP secret.
pub fn totp_context(user_id: &str) -> String {
    format!("totp secret of user {user_id}")
}

fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The principal behind a session cookie, if the session is live; also returns its CSRF token.
pub async fn authenticate_session(
    pool: &Pool,
    config: &SessionConfig,
    token: &str,
) -> Result<Option<(Principal, String)>> {
    let id_hash = hash_secret(token);
    let row = sqlx::query(
        "SELECT user_id, csrf_token, created_at, last_seen_at FROM sessions WHERE id_hash = $1",
    )
    .bind(&id_hash)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let now = now_millis();
    let created: i64 = row.try_get("created_at")?;
    let last_seen: i64 = row.try_get("last_seen_at")?;
    if now - created > config.absolute_timeout_secs as i64 * 1000
        || now - last_seen > config.idle_timeout_secs as i64 * 1000
    {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(&id_hash)
            .execute(pool)
            .await?;
        return Ok(None);
    }
    let user_id: String = row.try_get("user_id")?;
    let Some(user) = user_by_id(pool, &user_id).await? else {
        return Ok(None);
    };
    if user.disabled {
        return Ok(None);
    }
    sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
        .bind(now)
        .bind(&id_hash)
        .execute(pool)
        .await?;
    let csrf: String = row.try_get("csrf_token")?;
    Ok(Some((
        Principal {
            user_id: user.id,
            username: user.username,
            role: user.role,
            tenant_id: user.tenant_id,
            via: AuthMethod::Session { id_hash },
            must_change_password: user.must_change_password,
        },
        csrf,
    )))
}

/// The principal behind an API token, if it is valid and its owner still holds its role.
pub async fn authenticate_token(pool: &Pool, token: &str) -> Result<Option<Principal>> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT id, user_id, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash_secret(token))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let token_id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    let role: String = row.try_get("role")?;
    let Some(role) = Role::parse(&role) else {
        return Ok(None);
    };
    let Some(user) = user_by_id(pool, &user_id).await? else {
        return Ok(None);
    };
    if user.disabled
        || user.must_change_password
        || !role.is_within(user.role, user.tenant_id.is_none())
    {
        return Ok(None);
    }
    sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
        .bind(now_millis())
        .bind(&token_id)
        .execute(pool)
        .await?;
    Ok(Some(Principal {
        user_id: user.id,
        username: user.username,
        role,
        tenant_id: user.tenant_id,
        via: AuthMethod::Token { token_id },
        must_change_password: false,
    }))
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TokenInfo {
    /// Id (used to revoke it).
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// Role.
    pub role: String,
    /// Created, ms since the epoch.
    pub created_at: i64,
    /// Last used.
    pub last_used_at: Option<i64>,
    /// Revoked.
    pub revoked_at: Option<i64>,
}

/// Creates a token for `owner` with `role` (which must be within the owner's); returns its id
/// and the token, shown once.
pub async fn create_token(
    pool: &Pool,
    owner: &Principal,
    name: &str,
    role: Role,
) -> Result<(String, String)> {
    if name.is_empty() || name.len() > 100 {
        return Err(Error::Invalid(
            "a token name has 1 to 100 characters".into(),
        ));
    }
    if !role.is_within(owner.role, owner.tenant_id.is_none()) {
        return Err(Error::Invalid(format!(
            "a token cannot hold more than its owner: role {} is not within {}",
            role.as_str(),
            owner.role.as_str()
        )));
    }
    let id = new_id();
    let token = format!("{TOKEN_PREFIX}{}", random_token(32));
    sqlx::query("INSERT INTO api_tokens (id, token_hash, user_id, name, role, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&id)
        .bind(hash_secret(&token))
        .bind(&owner.user_id)
        .bind(name)
        .bind(role.as_str())
        .bind(now_millis())
        .execute(pool)
        .await?;
    Ok((id, token))
}

/// The tokens of one user.
pub async fn list_tokens(pool: &Pool, user_id: &str) -> Result<Vec<TokenInfo>> {
    let rows = sqlx::query("SELECT id, name, role, created_at, last_used_at, revoked_at FROM api_tokens WHERE user_id = $1 ORDER BY created_at")
        .bind(user_id)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(TokenInfo {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                role: row.try_get("role")?,
                created_at: row.try_get("created_at")?,
                last_used_at: row.try_get("last_used_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        })
        .collect()
}

/// Revokes one of `user_id`'s tokens; false if it has no such live token.
pub async fn revoke_token(pool: &Pool, user_id: &str, token_id: &str) -> Result<bool> {
    Ok(sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL")
        .bind(now_millis())
        .bind(token_id)
        .bind(user_id)
        .execute(pool)
        .await?
        .rows_affected()
        == 1)
}

/// Starts TOTP enrolment: a new secret, sealed as pending until confirmed. Returns the
/// provisioning URI and the base32 secret.
pub async fn begin_totp(pool: &Pool, sealer: &Sealer, user: &User) -> Result<(String, String)> {
    let mut secret = zeroize::Zeroizing::new([0u8; totp::SECRET_BYTES]);
    rand::rng().fill_bytes(secret.as_mut());
    sqlx::query("UPDATE users SET totp_pending = $1 WHERE id = $2")
        .bind(sealer.seal(&totp_context(&user.id), secret.as_ref()))
        .bind(&user.id)
        .execute(pool)
        .await?;
    Ok((
        totp::provisioning_uri(secret.as_ref(), "Lifeboat", &user.username),
        data_encoding::BASE32_NOPAD.encode(secret.as_ref()),
    ))
}

/// Confirms enrolment with a code from the pending secret; turns 2FA on and returns fresh
/// recovery codes (shown once; earlier ones stop working).
pub async fn confirm_totp(
    pool: &Pool,
    sealer: &Sealer,
    user_id: &str,
    code: &str,
) -> Result<Vec<String>> {
    let pending: Option<(Option<String>,)> =
        sqlx::query_as("SELECT totp_pending FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    let Some((Some(sealed),)) = pending else {
        return Err(Error::Invalid(
            "no TOTP enrolment in progress: start one first".into(),
        ));
    };
    let secret = sealer.open(&totp_context(user_id), &sealed)?;
    let now_step = totp::step_at(jiff::Timestamp::now().as_second().max(0) as u64);
    let Some(step) = totp::verify(&secret, code, now_step, 0) else {
        return Err(Error::Invalid(
            "the code does not match: check the device's clock and try the next code".into(),
        ));
    };
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_last_step = $1 WHERE id = $2")
        .bind(step as i64)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let mut codes = Vec::new();
    for _ in 0..RECOVERY_CODES {
        let mut bytes = [0u8; 10];
        rand::rng().fill_bytes(&mut bytes);
        let code = data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase();
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user_id)
            .bind(hash_secret(&code))
            .execute(&mut *tx)
            .await?;
        codes.push(format!(
            "{}-{}-{}-{}",
            &code[0..4],
            &code[4..8],
            &code[8..12],
            &code[12..16]
        ));
    }
    tx.commit().await?;
    Ok(codes)
}
