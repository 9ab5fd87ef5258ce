//! Roles, permissions and the principal a request acts as.
//!
//! | role | scope | may |
//! |---|---|---|
//! | admin | all tenants | everything |
//! | operator | one tenant | see and configure repositories and jobs, run jobs, browse snapshots |
//! | auditor | one tenant, or all when it has no tenant | read repositories, jobs, runs and the audit log; metrics when global |
//! | member | one tenant | list repositories, browse and restore snapshots |

use serde::{Deserialize, Serialize};

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, on every tenant.
    Admin,
    /// Runs and configures a tenant's jobs.
    Operator,
    /// Reads a tenant (or all tenants) and the audit log.
    Auditor,
    /// Browses and restores a tenant's snapshots.
    Member,
}

impl Role {
    /// Every role, for tests and listings.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Auditor, Role::Member];

    /// The name stored in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Member => "member",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether this role holds `permission` (scope is checked separately).
    pub fn grants(self, permission: Permission, global: bool) -> bool {
        use Permission::*;
        match permission {
            Public | SignedIn => true,
            ManageServer => self == Role::Admin,
            ReadMetrics => self == Role::Admin || (self == Role::Auditor && global),
            ReadRepositories => true,
            ReadJobs => matches!(self, Role::Admin | Role::Operator | Role::Auditor),
            ConfigureJobs | RunJobs => matches!(self, Role::Admin | Role::Operator),
            ReadSnapshots => matches!(self, Role::Admin | Role::Operator | Role::Member),
            ReadAudit => matches!(self, Role::Admin | Role::Auditor),
        }
    }

    /// True if every permission of `self` is also one of `other`'s: a token with role `self`
    /// may be made by a user with role `other`.
    pub fn is_within(self, other: Role, global: bool) -> bool {
        Permission::ALL
            .iter()
            .all(|&p| !self.grants(p, global) || other.grants(p, global))
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Nothing: anyone may call it.
    Public,
    /// Any signed-in principal, acting on its own account.
    SignedIn,
    /// Users, tenants, server-wide actions.
    ManageServer,
    /// Prometheus metrics of every tenant.
    ReadMetrics,
    /// A tenant's repositories (names and locations, never passwords).
    ReadRepositories,
    /// A tenant's jobs and runs.
    ReadJobs,
    /// Create, change and delete a tenant's repositories and jobs.
    ConfigureJobs,
    /// Start a tenant's jobs now.
    RunJobs,
    /// List and restore a tenant's snapshots.
    ReadSnapshots,
    /// The audit log of a tenant (or all, for a global principal).
    ReadAudit,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 10] = [
        Permission::Public,
        Permission::SignedIn,
        Permission::ManageServer,
        Permission::ReadMetrics,
        Permission::ReadRepositories,
        Permission::ReadJobs,
        Permission::ConfigureJobs,
        Permission::RunJobs,
        Permission::ReadSnapshots,
        Permission::ReadAudit,
    ];
}

/// Who a request acts as, after authentication.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's id.
    pub user_id: String,
    /// The user's name (for the audit log).
    pub username: String,
    /// The effective role: the user's, or the token's when authenticated by a token.
    pub role: Role,
    /// The tenant the principal is bound to; `None` for admins and global auditors.
    pub tenant_id: Option<String>,
    /// How it authenticated.
    pub via: AuthMethod,
    /// The user must change the password before doing anything else.
    pub must_change_password: bool,
}

/// How a principal authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// A session cookie; the id hash and its CSRF token.
    Session {
        /// BLAKE3 of the session id.
        id_hash: String,
    },
    /// An API token, by its id.
    Token {
        /// The token's id.
        token_id: String,
    },
}

impl Principal {
    /// True if the principal may act on `tenant_id` at all (its own, or any when global).
    pub fn can_see_tenant(&self, tenant_id: &str) -> bool {
        match &self.tenant_id {
            None => true,
            Some(own) => own == tenant_id,
        }
    }

    /// Whether the principal's role grants `permission`.
    pub fn has(&self, permission: Permission) -> bool {
        self.role.grants(permission, self.tenant_id.is_none())
    }

    /// An actor string for the audit log: `user:alice` or `token:alice/<id>`.
    pub fn actor(&self) -> String {
        match &self.via {
            AuthMethod::Session { .. } => format!("user:{}", self.username),
            AuthMethod::Token { token_id } => format!("token:{}/{}", self.username, token_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_everything_and_tokens_cannot_exceed_owner() {
        for p in Permission::ALL {
            assert!(Role::Admin.grants(p, true));
        }
        for role in Role::ALL {
            assert!(role.is_within(Role::Admin, true));
            assert!(role.is_within(role, false));
        }
        assert!(!Role::Admin.is_within(Role::Operator, false));
        assert!(
            !Role::Auditor.is_within(Role::Operator, false),
            "operators cannot read the audit log"
        );
        assert!(!Role::Operator.is_within(Role::Member, false));
        assert!(!Role::Member.grants(Permission::ReadJobs, false));
        assert!(!Role::Auditor.grants(Permission::ReadMetrics, false));
        assert!(Role::Auditor.grants(Permission::ReadMetrics, true));
    }
}
