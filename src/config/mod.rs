//! routes.yaml -> validated, compiled [`Config`]. Every error carries `FILE:LINE:COL`.
//!
//! # Pipeline
//!
//! text -> serde_yaml `Value` -> `${NAME}` substituted in string values ->
//! raw serde structs (`raw.rs`, `deny_unknown_fields`, mirroring the contract's
//! keys) -> checked and converted (`compile.rs`) -> `RouteTable::build`.
//! A second parse with yaml-rust2 (`positions.rs`) maps key paths such as
//! `routes[3].path` to 1-based lines and columns for every semantic error.
//! [`describe()`] renders a compiled config for `scopegate check`;
//! [`json_schema`] is generated from the raw structs (schemars), so the schema
//! and the loader cannot disagree about which keys exist.
//!
//! # Design decisions
//!
//! - **Every error, in file order.** The raw structs are deserialized
//!   piecewise (the top-level map, each issuer, each route), and after each
//!   serde error the offending key is dropped and deserialization retried, so
//!   every unknown key and every badly typed value is reported, not only
//!   serde's first; the semantic checks then run on what was read. A route
//!   that had such an error is checked on its own but left out of cross-route
//!   checks (conflicts, "needs an issuer"), which a dropped key could fake.
//!   A YAML syntax error stops the load (one error, at serde_yaml's location).
//!   Errors are sorted by position; an error at a value whose `${NAME}`
//!   failed is not repeated.
//! - **Positions.** serde errors come with a key path (serde_path_to_error);
//!   unknown keys point at the key, other problems at the value, route-level
//!   problems (conflicts, missing upstream) at the route's first key. A path
//!   with no recorded position falls back to its parent, then to 1:1.
//! - **`${NAME}`** is replaced in parsed string values only (never in raw
//!   text, never in keys); `$${` is a literal `${`. A missing variable is an
//!   error at that string. Substituted text is not YAML-parsed again, so
//!   `max_header_bytes: ${N}` is a type error (a string, not a number).
//! - **Durations**: `500ms`, `30s`, `5m`, `1h` and sums like `1m30s`; a bare
//!   number is an error with a hint. Timeouts and `jwks_refresh` must be more
//!   than zero; `leeway`, `shutdown_grace` and `cache_ttl` may be `0s`.
//! - **Issuers.** An empty (or absent) `issuers` list is fine when every route
//!   is public, or when `introspection` is configured; otherwise it is an error
//!   at `issuers` (or, when the key is absent, at the first protected route).
//!   A duplicate `issuer` string is an error at the later one.
//! - **URLs** must be absolute `http://`/`https://` with a host and no
//!   userinfo or fragment. Issuers have no query. Plain `http://` to a
//!   non-loopback host (loopback = 127.0.0.0/8, ::1, `localhost`) is accepted
//!   with a warning in [`Config::warnings`] for issuer, `jwks_uri` and the
//!   introspection endpoint (where keys and tokens are fetched); upstreams
//!   get no such warning, as in-cluster plain-http upstreams are the norm.
//!   Upstreams are origins: no path other than `/`, no query.
//! - **Upstreams** are deduplicated by origin (scheme and host compared
//!   lower-case). `upstreams[0]` is the top-level `upstream` when there is
//!   one; without it, every route must name its own (else an error at the
//!   route), and `upstreams[0]` is the first route's.
//! - **Listeners** are `IP:PORT` (no name resolution); two listeners on the
//!   same port (same IP, or either unspecified) are an error.
//! - **`forward_auth.trusted_peers`** defaults to loopback (`127.0.0.1/32`,
//!   `::1/128`) when omitted; an empty list is an error (every request would
//!   get 403). A CIDR with host bits set (`10.0.0.1/8`) is an error with the
//!   corrected network as a hint.
//! - **identity_headers**: names are stored lower-case as `http::HeaderName`;
//!   hop-by-hop names and `host`, `authorization`, `content-length` are
//!   refused, as are two names that fold to the same one (case, `_`/`-`).
//! - **Routes**: `methods` are upper-cased, deduplicated and must be HTTP
//!   tokens; `methods: []`, `scopes: []` and `any_scopes: []` are errors
//!   (omit them instead); scopes must be RFC 6749 scope tokens. Path
//!   patterns are checked by `RouteTable::build`, whose errors are placed at
//!   the offending (for conflicts: the later) route.
//! - **Files** (`tls.cert`, `tls.key`, `ca_file`) are not opened here: the
//!   loader is pure so it is testable without files; the server reports
//!   unreadable files at startup.
//! - **Warnings** (in [`Config::warnings`], the load still succeeds): plain
//!   http:// to a non-loopback IdP, a method outside RFC 9110 + PATCH (a
//!   typo?), and no routes at all (every request gets 404 — fail-closed, so
//!   not an error; debouncing half-written files is the watcher's job).

mod compile;
mod describe;
mod positions;
mod raw;
#[cfg(test)]
mod tests;
mod values;

pub use describe::describe;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::AuthSettings;
use crate::route::RouteTable;

/// The compiled configuration: everything the runtime needs, nothing left to parse.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for reload and messages).
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// `upstreams[0]` is the top-level `upstream` (when there is one); routes
    /// index into this list; equal origins appear once.
    pub upstreams: Vec<Upstream>,
    pub auth: AuthSettings,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub forward: ForwardSettings,
    pub forward_auth: Option<ForwardAuthSettings>,
    pub shutdown_grace: Duration,
    pub routes: RouteTable,
    /// Things worth a log line at load (e.g. `http://` issuer on a non-loopback host).
    pub warnings: Vec<ConfigError>,
    /// SHA-256 of the file's bytes as loaded by [`load`] (`None` from
    /// [`from_yaml`]): the watcher's baseline, so an edit made right after
    /// the load is seen as a change.
    pub source_digest: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An upstream origin: scheme and authority, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// e.g. `http://127.0.0.1:3000`
    pub origin: http::Uri,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    pub client_header: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Per worker thread (the configured total divided among them, rounded up).
    pub max_upstream_requests_per_worker: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSettings {
    pub strip_authorization: bool,
    /// Header name (lower-case, valid) -> claim name.
    pub identity_headers: Vec<(http::HeaderName, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthSettings {
    pub listen: SocketAddr,
    /// (network address, prefix length)
    pub trusted_peers: Vec<(std::net::IpAddr, u8)>,
}

/// One problem in the config file, at a position (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads and compiles a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: format!("cannot read file: {e}"),
        }])
    })?;
    let mut config = from_yaml(&text, path)?;
    config.source_digest = Some(file_digest(text.as_bytes()));
    Ok(config)
}

/// SHA-256 of a config file's bytes.
pub fn file_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Compiles config text; `path` names the file in errors. Testable without files.
/// `${NAME}` is looked up in the process environment.
pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    from_yaml_with_env(text, path, &|name| std::env::var(name).ok())
}

/// [`from_yaml`] with `${NAME}` looked up by `env` instead of the process environment.
pub fn from_yaml_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    compile::compile(text, path, env)
}

/// The JSON Schema of routes.yaml (for `scopegate schema`), generated from the raw types.
pub fn json_schema() -> String {
    raw::json_schema()
}
