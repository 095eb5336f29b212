//! Offline decisions: what the gateway would do with a method, a path and a
//! set of scopes, without a network (`scopegate explain` and `scopegate test`).
//!
//! Uses the same normalizer, route table and scope check as the proxy; only
//! the token verification is replaced by "a valid token with these scopes".

use std::fmt::Write as _;

use crate::auth::{self, Principal};
use crate::config::Config;
use crate::gateway::route_label;
use crate::route::{self, Requirement, Route};

/// What the gateway would answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded upstream.
    Allow,
    /// 400: the path was refused by the normalizer.
    BadPath(String),
    /// 401: protected route, no token.
    Unauthorized,
    /// 403: the token lacks the scopes.
    Forbidden,
    /// 404: no route.
    NotFound,
}

impl Outcome {
    /// `allow`, `400`, `401`, `403`, `404`: how test cases spell outcomes.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::BadPath(_) => "400",
            Outcome::Unauthorized => "401",
            Outcome::Forbidden => "403",
            Outcome::NotFound => "404",
        }
    }
}

/// The offline decision, and the route that made it.
pub fn decide<'a>(
    config: &'a Config,
    method: &str,
    path: &str,
    scopes: Option<&[String]>,
) -> (Outcome, Option<&'a Route>) {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let normalized = match route::normalize(path) {
        Ok(p) => p,
        Err(e) => return (Outcome::BadPath(e.to_string()), None),
    };
    let method = method.to_ascii_uppercase();
    let Some(route) = config.routes.lookup(&method, &normalized) else {
        return (Outcome::NotFound, None);
    };
    let outcome = match (&route.requirement, scopes) {
        (Requirement::Public, _) => Outcome::Allow,
        (_, None) => Outcome::Unauthorized,
        (requirement, Some(scopes)) => {
            let principal = Principal {
                issuer: None,
                subject: None,
                scopes: scopes.iter().map(|s| s.as_str().into()).collect(),
                claims: Default::default(),
                expires_at: u64::MAX,
                identity_headers: Default::default(),
            };
            if auth::authorize(requirement, &principal) {
                Outcome::Allow
            } else {
                Outcome::Forbidden
            }
        }
    };
    (outcome, Some(route))
}

/// Describes what a route demands, for humans.
pub fn describe_requirement(requirement: &Requirement) -> String {
    match requirement {
        Requirement::Public => "public: no token needed".into(),
        Requirement::AnyToken => "any valid token".into(),
        Requirement::AllScopes(s) => format!("a valid token with all of: {}", s.join(" ")),
        Requirement::AnyScopes(s) => format!("a valid token with one of: {}", s.join(" ")),
    }
}

/// The text of `scopegate explain`.
pub fn explain(config: &Config, method: &str, path: &str, scopes: Option<&str>) -> String {
    let scopes: Option<Vec<String>> =
        scopes.map(|s| s.split_ascii_whitespace().map(str::to_owned).collect());
    let mut out = String::new();
    let raw = path.split_once('?').map_or(path, |(p, _)| p);
    let _ = writeln!(out, "request:   {} {path}", method.to_ascii_uppercase());
    match route::normalize(raw) {
        Ok(n) if n != raw => {
            let _ = writeln!(out, "path:      normalized to {n}");
        }
        _ => {}
    }
    let (outcome, route) = decide(config, method, path, scopes.as_deref());
    match route {
        Some(route) => {
            let _ = writeln!(
                out,
                "route:     #{} {}",
                route.index + 1,
                route_label(route)
            );
            let _ = writeln!(
                out,
                "requires:  {}",
                describe_requirement(&route.requirement)
            );
            if let Some(upstream) = config.upstreams.get(route.upstream) {
                let _ = writeln!(out, "upstream:  {}", upstream.origin);
            }
        }
        None => {
            let _ = writeln!(out, "route:     none");
        }
    }
    let token = match &scopes {
        None => "no token".to_string(),
        Some(s) if s.is_empty() => "a valid token with no scopes".to_string(),
        Some(s) => format!("a valid token with scopes: {}", s.join(" ")),
    };
    let decision = match &outcome {
        Outcome::Allow => "allow: forwarded upstream".to_string(),
        Outcome::BadPath(why) => format!("400 invalid_request: malformed path: {why}"),
        Outcome::Unauthorized => "401 unauthorized: a bearer token is required".to_string(),
        Outcome::Forbidden => {
            let missing = match (route.map(|r| &r.requirement), &scopes) {
                (Some(Requirement::AllScopes(req)), Some(have)) => {
                    let missing: Vec<&str> = req
                        .iter()
                        .filter(|r| !have.iter().any(|h| h == &***r))
                        .map(|r| &**r)
                        .collect();
                    format!(" (missing: {})", missing.join(" "))
                }
                (Some(Requirement::AnyScopes(req)), _) => {
                    format!(" (needs one of: {})", req.join(" "))
                }
                _ => String::new(),
            };
            format!("403 insufficient_scope{missing}")
        }
        Outcome::NotFound => "404 not_found: no route matches".to_string(),
    };
    let _ = writeln!(out, "decision:  {decision}  [{token}]");
    out
}
