//! Token verification: (token) -> Principal | AuthError, and the scope check.
//! No inbound HTTP types here; the proxy hands over the bare token string.
//!
//! (skeleton: the real implementation replaces this file)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::route::Requirement;

pub use jsonwebtoken::Algorithm;

/// One trusted issuer, validated by the config layer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSettings {
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// The token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    /// `None`: found by OIDC discovery at `{issuer}/.well-known/openid-configuration`.
    pub jwks_uri: Option<http::Uri>,
    /// Allow-list; never empty, never HMAC.
    pub algorithms: Vec<Algorithm>,
    pub require_at_jwt: bool,
    pub jwks_refresh: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

/// RFC 7662 introspection, validated by the config layer.
#[derive(Clone, PartialEq)]
pub struct IntrospectionSettings {
    pub endpoint: http::Uri,
    pub client_id: String,
    pub client_secret: String,
    pub auth_method: ClientAuthMethod,
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for IntrospectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionSettings")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("auth_method", &self.auth_method)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

/// Everything the verifier needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    pub issuers: Vec<IssuerSettings>,
    pub introspection: Option<IntrospectionSettings>,
    /// Clock skew allowed on exp/nbf/iat.
    pub leeway: Duration,
    /// One discovery / JWKS / introspection request.
    pub idp_timeout: Duration,
    /// Extra roots for https:// issuers and introspection.
    pub ca_file: Option<PathBuf>,
}

/// Who the token says the caller is; cached per token, never a decision.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Option<Box<str>>,
    pub scopes: Box<[Box<str>]>,
    /// All claims, for identity headers.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Unix seconds.
    pub expires_at: u64,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// -> 401 invalid_token; the description is safe to show a client.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// -> 503 temporarily_unavailable with Retry-After.
    #[error("token verification temporarily unavailable: {reason}")]
    Unavailable {
        reason: &'static str,
        retry_after: Duration,
    },
}

/// Verifies tokens against the configured issuers and introspection endpoint.
pub struct Verifier {
    _settings: AuthSettings,
}

impl Verifier {
    pub fn new(settings: AuthSettings) -> Result<Arc<Self>, anyhow::Error> {
        Ok(Arc::new(Verifier {
            _settings: settings,
        }))
    }

    pub async fn verify(&self, _token: &str) -> Result<Arc<Principal>, AuthError> {
        Err(AuthError::InvalidToken("not implemented"))
    }

    pub fn is_ready(&self) -> bool {
        true
    }
}

/// The scope check, run on every request against the route's requirement.
pub fn authorize(requirement: &Requirement, principal: &Principal) -> bool {
    match requirement {
        Requirement::Public | Requirement::AnyToken => true,
        Requirement::AllScopes(s) => s.iter().all(|s| principal.has_scope(s)),
        Requirement::AnyScopes(s) => s.iter().any(|s| principal.has_scope(s)),
    }
}
