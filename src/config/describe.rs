//! A human-readable rendering of a compiled [`Config`], for `scopegate check`.

use std::fmt::Write as _;

use super::values::format_duration;
use super::Config;
use crate::auth::ClientAuthMethod;
use crate::route::Requirement;

/// Listeners, issuers and the route table, one route a line in file order:
///
/// ```text
///   GET,HEAD  /api/messages  scopes: message  -> http://127.0.0.1:3000
/// ```
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let tls = if config.tls.is_some() { " (TLS)" } else { "" };
    let _ = writeln!(out, "listen        {}{tls}", config.listen);
    let _ = writeln!(out, "admin_listen  {}", config.admin_listen);
    if let Some(fa) = &config.forward_auth {
        let peers: Vec<String> = fa
            .trusted_peers
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect();
        let _ = writeln!(
            out,
            "forward_auth  {} (trusted peers: {})",
            fa.listen,
            peers.join(", ")
        );
    }
    let auth = &config.auth;
    let _ = writeln!(out, "issuers ({}):", auth.issuers.len());
    for i in &auth.issuers {
        let algs: Vec<String> = i.algorithms.iter().map(|a| format!("{a:?}")).collect();
        let jwks = i
            .jwks_uri
            .as_ref()
            .map_or_else(|| "discovery".to_string(), ToString::to_string);
        let _ = writeln!(
            out,
            "  {}  aud: {}  alg: {}  jwks: {} every {}{}",
            i.issuer,
            i.audiences.join(","),
            algs.join(","),
            jwks,
            format_duration(i.jwks_refresh),
            if i.require_at_jwt {
                "  typ: at+jwt"
            } else {
                ""
            },
        );
    }
    if let Some(x) = &auth.introspection {
        let _ = writeln!(
            out,
            "introspection  {} as {} ({}), cache up to {}",
            x.endpoint,
            x.client_id,
            match x.auth_method {
                ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
                ClientAuthMethod::ClientSecretPost => "client_secret_post",
            },
            format_duration(x.cache_ttl)
        );
    }

    let mut routes: Vec<_> = config.routes.routes().iter().collect();
    routes.sort_by_key(|r| r.index);
    let rows: Vec<[String; 4]> = routes
        .iter()
        .map(|r| {
            let methods = match &r.methods {
                None => "*".to_string(),
                Some(ms) => {
                    let mut v: Vec<&str> = ms.iter().map(|m| &**m).collect();
                    if v.contains(&"GET") && !v.contains(&"HEAD") {
                        let at = v.iter().position(|m| *m == "GET").unwrap_or(0);
                        v.insert(at + 1, "HEAD");
                    }
                    v.join(",")
                }
            };
            let req = match &r.requirement {
                Requirement::Public => "public".to_string(),
                Requirement::AnyToken => "any valid token".to_string(),
                Requirement::AllScopes(s) => format!("scopes: {}", s.join(" ")),
                Requirement::AnyScopes(s) => format!("any of: {}", s.join(" | ")),
            };
            let upstream = config
                .upstreams
                .get(r.upstream)
                .map_or_else(|| "?".to_string(), |u| origin_text(&u.origin));
            [methods, r.pattern.to_string(), req, upstream]
        })
        .collect();
    let _ = writeln!(out, "routes ({}):", rows.len());
    let width = |k: usize| rows.iter().map(|r| r[k].len()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for [m, p, q, u] in &rows {
        let _ = writeln!(out, "  {m:<w0$}  {p:<w1$}  {q:<w2$}  -> {u}");
    }
    out
}

/// `http://127.0.0.1:3000` (an origin `Uri` displays with a trailing `/`).
fn origin_text(origin: &http::Uri) -> String {
    match (origin.scheme_str(), origin.authority()) {
        (Some(s), Some(a)) => format!("{s}://{a}"),
        _ => origin.to_string(),
    }
}
