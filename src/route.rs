//! Route table and path normalization: pure functions over strings, no hyper, no serde.
//!
//! (skeleton: the real implementation replaces this file)

use std::borrow::Cow;
use std::fmt;

/// What a route demands of the request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `public: true`: no token is looked at.
    Public,
    /// No scopes named: any valid token will do.
    AnyToken,
    /// `scopes: [...]`: the token must carry all of these.
    AllScopes(Box<[Box<str>]>),
    /// `any_scopes: [...]`: the token must carry at least one of these.
    AnyScopes(Box<[Box<str>]>),
}

/// One route as the config layer hands it over, before compilation.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The path pattern, e.g. `/api/messages/{id}` or `/api/**`.
    pub path: String,
    /// Upper-case method names; `None` = every method.
    pub methods: Option<Vec<String>>,
    pub requirement: Requirement,
    /// Index into the config's upstream list.
    pub upstream: usize,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position of the route in the file (0-based), for errors and metrics.
    pub index: usize,
    /// The pattern as written, e.g. `/api/messages/{id}`.
    pub pattern: Box<str>,
    /// `None` = every method.
    pub methods: Option<Box<[Box<str>]>>,
    pub requirement: Requirement,
    pub upstream: usize,
}

/// A route that could not be compiled, or that conflicts with an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// The index of the offending route (the later one, for conflicts).
    pub index: usize,
    pub message: String,
}

/// Why a request path was rejected (-> 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormalizeError {
    Placeholder,
}

impl fmt::Display for NormalizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed path")
    }
}

impl std::error::Error for NormalizeError {}

/// Normalizes a request path (without the query string) per the contract.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, NormalizeError> {
    Ok(Cow::Borrowed(path))
}

/// The compiled, immutable route table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles route specs; reports every bad or conflicting route.
    pub fn build(specs: Vec<RouteSpec>) -> Result<Self, Vec<RouteError>> {
        let routes = specs
            .into_iter()
            .enumerate()
            .map(|(index, s)| Route {
                index,
                pattern: s.path.into(),
                methods: s.methods.map(|m| m.into_iter().map(Into::into).collect()),
                requirement: s.requirement,
                upstream: s.upstream,
            })
            .collect();
        Ok(RouteTable { routes })
    }

    /// The most specific route matching `method` and the normalized `path`.
    pub fn lookup(&self, _method: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.pattern == path)
    }

    /// All routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
