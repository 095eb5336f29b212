//! Config loader tests: one `check()` helper, a table of YAML -> expected `LINE:COL: message`.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::auth::{Algorithm, ClientAuthMethod};
use crate::route::Requirement;

fn env(name: &str) -> Option<String> {
    match name {
        "SG_TEST_SECRET" => Some("s3cret".into()),
        "SG_TEST_HOST" => Some("127.0.0.1".into()),
        _ => None,
    }
}

/// Joins lines with `\n`, so line N of a test file is `lines[N - 1]`.
fn y(lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn load_test(text: &str) -> Result<Config, ConfigErrors> {
    from_yaml_with_env(text, Path::new("routes.yaml"), &env)
}

/// `expected`: one `"LINE:COL: part of the message"` per error, in file order.
/// Empty: the config must load.
fn check(text: &str, expected: &[&str]) {
    match load_test(text) {
        Ok(_) if expected.is_empty() => {}
        Ok(_) => panic!("expected errors {expected:#?}, but the config loaded\n{text}"),
        Err(errs) => {
            let got: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
            assert!(
                !expected.is_empty(),
                "expected the config to load, got {got:#?}"
            );
            assert_eq!(
                got.len(),
                expected.len(),
                "wrong number of errors: got {got:#?}, expected {expected:#?}"
            );
            for (g, e) in got.iter().zip(expected) {
                let (pos, part) = e.split_once(": ").expect("expected `L:C: text`");
                let prefix = format!("routes.yaml:{pos}: ");
                assert!(
                    g.starts_with(&prefix) && g[prefix.len()..].contains(part),
                    "got {g:?}, expected {prefix}...{part}...\nall: {got:#?}"
                );
            }
        }
    }
}

const CONTRACT_EXAMPLE: &str = r#"listen: 0.0.0.0:8080          # default 0.0.0.0:8080
admin_listen: 127.0.0.1:9901  # /healthz /readyz /metrics; default 127.0.0.1:9901
tls:                          # optional: terminate TLS here (HTTP/1.1 and HTTP/2 by ALPN)
  cert: /etc/scopegate/tls.crt
  key: /etc/scopegate/tls.key
upstream: http://127.0.0.1:3000   # where routes forward unless they name their own

issuers:                      # one or more trusted token issuers
  - issuer: https://steam-talk.genauth.ai/oidc   # must equal the token's iss exactly
    audiences: [60193c610f9117e7cb049159]        # aud must contain at least one
    jwks_uri: https://steam-talk.genauth.ai/oidc/.well-known/jwks.json  # optional; else OIDC discovery
    algorithms: [RS256, ES256]                   # optional allow-list; this is the default
                                                 # (also allowed: RS384 RS512 PS256 PS384 PS512 ES384 EdDSA)
    require_at_jwt: false                        # true: header typ must be at+jwt (RFC 9068)
    jwks_refresh: 5m                             # background refresh of the key set
ca_file: /etc/ssl/private-ca.pem                 # optional extra roots for https:// issuers and introspection

introspection:                # optional: accept opaque tokens (RFC 7662)
  endpoint: https://idp.example.com/oauth/introspect
  client_id: scopegate
  client_secret: ${SG_TEST_SECRET_FULL_EXAMPLE_7F3A}
  auth_method: client_secret_basic   # or client_secret_post
  issuer: https://idp.example.com    # optional: an answer's iss, when present, must equal it
  audiences: [orders-api]            # optional: an answer's aud, when present, must contain one
  cache_ttl: 60s              # upper bound; never cached past the token's exp

timeouts:                     # all optional; these are the defaults
  idp: 5s                     # one discovery / JWKS / introspection request
  upstream_connect: 5s
  upstream_response: 30s      # until the upstream's response headers arrive -> else 504
  client_header: 10s          # until the client's request headers are complete
limits:
  max_header_bytes: 65536     # larger request headers -> 431

leeway: 30s                   # clock skew allowed on exp/nbf/iat; default 30s

forward:
  strip_authorization: false  # drop the Authorization header before forwarding
  identity_headers:           # claim -> header sent upstream. Incoming copies of
    X-Auth-Subject: sub       # these headers are ALWAYS removed, on every route,
    X-Auth-Scopes: scope      # so a client can never forge them. These two are the default;
                              # a configured map replaces them (only its names are stripped).

forward_auth:
  listen: 127.0.0.1:8081            # its own listener; absent = mode off
  trusted_peers: [127.0.0.1/32]     # only these may name the original request

routes:
  - path: /healthz
    public: true              # no token needed
  - path: /api/messages
    methods: [GET]
    scopes: [message]         # the token must carry all of these
  - path: /api/messages/{id}
    methods: [PUT, DELETE]
    scopes: [message, admin]
  - path: /api/reports/**
    any_scopes: [reports:read, admin]   # at least one of these
    upstream: http://127.0.0.1:4000
  - path: /api/**             # no scopes named: any valid token will do
"#;

#[test]
fn contract_example_compiles_with_the_right_values() {
    // The one test that goes through the real process environment (a name no
    // other test uses; edition 2021, so set_var is safe).
    std::env::set_var("SG_TEST_SECRET_FULL_EXAMPLE_7F3A", "from-env");
    let c = from_yaml(CONTRACT_EXAMPLE, Path::new("routes.yaml")).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(c.source, Path::new("routes.yaml"));
    assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:9901".parse().unwrap());
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.cert, Path::new("/etc/scopegate/tls.crt"));
    assert_eq!(tls.key, Path::new("/etc/scopegate/tls.key"));
    let origins: Vec<String> = c.upstreams.iter().map(|u| u.origin.to_string()).collect();
    assert_eq!(origins.len(), 2);
    assert!(
        origins[0].starts_with("http://127.0.0.1:3000"),
        "{origins:?}"
    );
    assert!(
        origins[1].starts_with("http://127.0.0.1:4000"),
        "{origins:?}"
    );

    let iss = &c.auth.issuers;
    assert_eq!(iss.len(), 1);
    assert_eq!(iss[0].issuer, "https://steam-talk.genauth.ai/oidc");
    assert_eq!(iss[0].audiences, ["60193c610f9117e7cb049159"]);
    assert_eq!(
        iss[0].jwks_uri.as_ref().unwrap().to_string(),
        "https://steam-talk.genauth.ai/oidc/.well-known/jwks.json"
    );
    assert_eq!(iss[0].algorithms, [Algorithm::RS256, Algorithm::ES256]);
    assert!(!iss[0].require_at_jwt);
    assert_eq!(iss[0].jwks_refresh, Duration::from_secs(300));
    assert_eq!(
        c.auth.ca_file.as_deref(),
        Some(Path::new("/etc/ssl/private-ca.pem"))
    );
    assert_eq!(c.auth.leeway, Duration::from_secs(30));
    assert_eq!(c.auth.idp_timeout, Duration::from_secs(5));

    let x = c.auth.introspection.as_ref().unwrap();
    assert_eq!(
        x.endpoint.to_string(),
        "https://idp.example.com/oauth/introspect"
    );
    assert_eq!(x.client_id, "scopegate");
    assert_eq!(x.client_secret, "from-env");
    assert_eq!(x.auth_method, ClientAuthMethod::ClientSecretBasic);
    assert_eq!(x.issuer.as_deref(), Some("https://idp.example.com"));
    assert_eq!(
        x.audiences.as_deref(),
        Some(&["orders-api".to_string()][..])
    );
    assert_eq!(x.cache_ttl, Duration::from_secs(60));

    assert_eq!(
        c.timeouts,
        Timeouts {
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(30),
            client_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_header_bytes: 65536,
            max_connections: 10_000,
            max_upstream_requests_per_worker: 256,
        }
    );
    assert!(!c.forward.strip_authorization);
    let headers: Vec<(&str, &str)> = c
        .forward
        .identity_headers
        .iter()
        .map(|(h, v)| (h.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        headers,
        [("x-auth-subject", "sub"), ("x-auth-scopes", "scope")]
    );
    let fa = c.forward_auth.as_ref().unwrap();
    assert_eq!(fa.listen, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(
        fa.trusted_peers,
        [("127.0.0.1".parse::<IpAddr>().unwrap(), 32)]
    );
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));

    let routes = c.routes.routes();
    assert_eq!(routes.len(), 5);
    let r = |i: usize| routes.iter().find(|r| r.index == i).unwrap();
    assert_eq!(&*r(0).pattern, "/healthz");
    assert_eq!(r(0).requirement, Requirement::Public);
    assert!(r(0).methods.is_none());
    assert_eq!(r(1).methods.as_deref(), Some(&["GET".into()][..]));
    assert_eq!(
        r(1).requirement,
        Requirement::AllScopes(vec!["message".into()].into())
    );
    assert_eq!(
        r(2).requirement,
        Requirement::AllScopes(vec!["message".into(), "admin".into()].into())
    );
    assert_eq!(
        r(3).requirement,
        Requirement::AnyScopes(vec!["reports:read".into(), "admin".into()].into())
    );
    assert_eq!(r(3).upstream, 1);
    assert_eq!(r(4).upstream, 0);
    assert_eq!(r(4).requirement, Requirement::AnyToken);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn defaults_of_a_minimal_config() {
    let c = load_test(&y(&[
        "upstream: http://127.0.0.1:3000",
        "routes:",
        "  - path: /healthz",
        "    public: true",
    ]))
    .unwrap();
    assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:9901".parse().unwrap());
    assert!(c.tls.is_none() && c.forward_auth.is_none());
    assert!(c.auth.issuers.is_empty() && c.auth.introspection.is_none());
    assert_eq!(c.limits.max_header_bytes, 65536);
    assert_eq!(c.timeouts.upstream_response, Duration::from_secs(30));
    assert_eq!(c.timeouts.idle, Duration::from_secs(60));
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.forward.identity_headers.len(), 2);
}

#[test]
fn values_are_converted() {
    let c = load_test(&y(&[
        "listen: '[::1]:8443'",
        "upstream: http://${SG_TEST_HOST}:3000/",
        "issuers:",
        "  - issuer: https://a.example",
        "    audiences: [12345]",
        "    algorithms: [EdDSA, PS512, EdDSA]",
        "    jwks_refresh: 1m30s",
        "introspection:",
        "  endpoint: http://localhost:9000/introspect",
        "  client_id: 42",
        "  client_secret: $${literal}",
        "  auth_method: client_secret_post",
        "timeouts: {idle: 500ms}",
        "limits: {max_header_bytes: 8192, max_connections: 5, max_upstream_requests: 1}",
        "shutdown_grace: 0s",
        "forward:",
        "  strip_authorization: true",
        "  identity_headers: {X-User: sub, x_tenant: tid}",
        "forward_auth:",
        "  listen: 127.0.0.1:8081",
        "routes:",
        "  - path: /a",
        "    methods: [get, Post, GET]",
        "    upstream: HTTP://127.0.0.1:3000",
        "  - path: /b",
        "    upstream: http://127.0.0.1:3001",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, "[::1]:8443".parse().unwrap());
    assert_eq!(c.upstreams.len(), 2, "equal origins are deduplicated");
    let i = &c.auth.issuers[0];
    assert_eq!(i.audiences, ["12345"]);
    assert_eq!(i.algorithms, [Algorithm::EdDSA, Algorithm::PS512]);
    assert_eq!(i.jwks_refresh, Duration::from_secs(90));
    let x = c.auth.introspection.as_ref().unwrap();
    assert_eq!(x.client_id, "42");
    assert_eq!(x.client_secret, "${literal}");
    assert_eq!(x.auth_method, ClientAuthMethod::ClientSecretPost);
    assert_eq!(c.timeouts.idle, Duration::from_millis(500));
    assert_eq!(c.limits.max_header_bytes, 8192);
    assert_eq!(c.limits.max_connections, 5);
    // Divided among the worker threads, rounded up: at least one each.
    assert_eq!(c.limits.max_upstream_requests_per_worker, 1);
    assert_eq!(c.shutdown_grace, Duration::ZERO);
    assert!(c.forward.strip_authorization);
    let names: Vec<&str> = c
        .forward
        .identity_headers
        .iter()
        .map(|(h, _)| h.as_str())
        .collect();
    assert_eq!(names, ["x-user", "x_tenant"]);
    let peers = &c.forward_auth.as_ref().unwrap().trusted_peers;
    assert_eq!(peers.len(), 2, "loopback v4 and v6 by default");
    let routes = c.routes.routes();
    assert_eq!(
        routes[0].methods.as_deref(),
        Some(&["GET".into(), "POST".into()][..])
    );
    assert_eq!(routes[0].upstream, 0);
    assert_eq!(routes[1].upstream, 1);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn plain_http_to_a_remote_idp_is_a_warning() {
    let c = load_test(&y(&[
        "upstream: http://backend:3000",
        "issuers:",
        "  - issuer: http://idp.internal",
        "    audiences: [a]",
        "routes:",
        "  - path: /a",
    ]))
    .unwrap();
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("routes.yaml:3:13: ") && w[0].contains("plain http://"),
        "{w:?}"
    );
}

#[test]
fn errors_are_reported_at_their_position() {
    // (file, expected errors)
    let cases: Vec<(String, Vec<&str>)> = vec![
        // Unknown key at top level.
        (
            y(&["listn: 0.0.0.0:8080", "upstream: http://127.0.0.1:1"]),
            vec!["1:1: unknown key `listn` at the top level; did you mean `listen`?"],
        ),
        // A typo inside a route must fail, at the key.
        (
            y(&[
                "upstream: http://127.0.0.1:1",
                "routes:",
                "  - path: /a",
                "    public: true",
                "  - path: /b",
                "    scope: [x]",
            ]),
            vec!["6:5: unknown key `scope` in routes[1]; did you mean `scopes`?"],
        ),
        // Unknown key in a nested section.
        (
            y(&["timeouts:", "  upstream: 5s"]),
            vec!["2:3: unknown key `upstream` in timeouts"],
        ),
        // Bad durations.
        (
            y(&["leeway: 30"]),
            vec!["1:9: `30` is a bare number; durations need a unit, e.g. `30s`"],
        ),
        (
            y(&["timeouts:", "  idp: 5 seconds"]),
            vec!["2:8: timeouts.idp: bad duration `5 seconds`"],
        ),
        (y(&["timeouts:", "  idle: 0s"]), vec!["2:9: timeouts.idle: must be more than zero"]),
        // Bad URLs.
        (
            y(&["upstream: http://127.0.0.1:3000/api"]),
            vec!["1:11: upstream: `http://127.0.0.1:3000/api`: an upstream is an origin"],
        ),
        (
            y(&[
                "issuers:",
                "  - issuer: steam-talk.genauth.ai/oidc",
                "    audiences: [a]",
                "    jwks_uri: ftp://x/jwks",
            ]),
            vec![
                "2:13: issuers[0].issuer: `steam-talk.genauth.ai/oidc` must be an absolute http:// or https:// URL",
                "4:15: issuers[0].jwks_uri: `ftp://x/jwks` must be an absolute",
            ],
        ),
        // Missing environment variable: reported once, at the string.
        (
            y(&["upstream: http://${SG_TEST_NOPE}:3000"]),
            vec!["1:11: environment variable `SG_TEST_NOPE` is not set"],
        ),
        // public + scopes, scopes + any_scopes, empty lists.
        (
            y(&[
                "upstream: http://127.0.0.1:1",
                "routes:",
                "  - path: /a",
                "    public: true",
                "    scopes: [x]",
                "  - path: /b",
                "    scopes: [x]",
                "    any_scopes: [y]",
                "  - path: /c",
                "    scopes: []",
                "  - path: /d",
                "    methods: []",
                "    any_scopes: [\"two words\"]",
            ]),
            vec![
                "5:5: routes[0]: `public: true` together with `scopes`",
                "8:5: routes[1]: `scopes` (all of) and `any_scopes` (one of) together",
                "10:13: routes[2].scopes: empty list; omit `scopes` to accept any valid token",
                "12:14: routes[3].methods: empty list; omit `methods` to match every method",
                "13:18: routes[3].any_scopes[0]: `two words` is not a scope token",
            ],
        ),
        // Algorithms.
        (
            y(&[
                "issuers:",
                "  - issuer: https://a.example",
                "    audiences: [a]",
                "    algorithms: [RS256, HS256, none, rs384, XY1]",
            ]),
            vec![
                "4:25: issuers[0].algorithms[1]: `HS256`: HMAC and `none` are never accepted for a JWKS issuer",
                "4:32: issuers[0].algorithms[2]: `none`: HMAC and `none` are never accepted",
                "4:38: issuers[0].algorithms[3]: `rs384`: algorithm names are case-sensitive; write `RS384`",
                "4:45: issuers[0].algorithms[4]: `XY1` is not a supported algorithm",
            ],
        ),
        // Issuer lists.
        (
            y(&[
                "issuers:",
                "  - issuer: https://a.example",
                "    audiences: []",
                "  - issuer: https://a.example",
                "    audiences: [b]",
            ]),
            vec![
                "3:16: issuers[0].audiences: must not be empty",
                "4:13: issuers[1].issuer: issuer `https://a.example` is listed twice",
            ],
        ),
        (
            y(&["upstream: http://127.0.0.1:1", "issuers: []", "routes:", "  - path: /a"]),
            vec!["2:10: issuers: route `/a` needs a token, but no issuers"],
        ),
        (
            y(&["upstream: http://127.0.0.1:1", "routes:", "  - path: /h", "    public: true", "  - path: /a"]),
            vec!["5:5: routes[1]: route `/a` needs a token, but no issuers"],
        ),
        // Identity headers.
        (
            y(&[
                "forward:",
                "  identity_headers:",
                "    X-Auth Subject: sub",
                "    Authorization: sub",
                "    Connection: sub",
                "    X-Forwarded-For: sub",
                "    X-A: sub",
                "    x_a: sub",
            ]),
            vec![
                "3:5: forward.identity_headers: `X-Auth Subject` is not a valid HTTP header name",
                "4:5: `Authorization` cannot be an identity header",
                "5:5: `Connection` cannot be an identity header",
                "6:5: `X-Forwarded-For` cannot be an identity header",
                "8:5: `x_a` is listed twice",
            ],
        ),
        // CIDRs and listeners.
        (
            y(&[
                "listen: 0.0.0.0:9901",
                "forward_auth:",
                "  listen: localhost:8081",
                "  trusted_peers: [127.0.0.1/33, 10.0.0.1/8, '::1']",
            ]),
            vec![
                "1:9: listen: admin_listen 127.0.0.1:9901 clashes with listen 0.0.0.0:9901",
                "3:11: forward_auth.listen: `localhost:8081` is not an IP:PORT socket address",
                "4:19: forward_auth.trusted_peers[0]: `127.0.0.1/33`: the prefix length",
                "4:33: forward_auth.trusted_peers[1]: `10.0.0.1/8` has bits set past the /8 prefix; did you mean `10.0.0.0/8`?",
            ],
        ),
        // Limits.
        (
            y(&[
                "limits:",
                "  max_header_bytes: 4096",
                "  max_upstream_requests: 0",
                "  max_connections: 18446744073709551615",
            ]),
            vec![
                "2:21: limits.max_header_bytes: 4096 is below the minimum of 8192",
                "3:26: limits.max_upstream_requests: must be at least 1",
                "4:20: limits.max_connections: must be at most 2305843009213693951",
            ],
        ),
        // A route with no upstream anywhere.
        (
            y(&["routes:", "  - path: /h", "    public: true"]),
            vec!["2:5: routes[0]: route `/h` names no upstream and there is no top-level `upstream`"],
        ),
        // Types and missing keys.
        (
            y(&[
                "upstream: http://127.0.0.1:1",
                "routes:",
                "  - path: /h",
                "    public: yes",
                "  - methods: [GET]",
                "  - {path: /x, methods: GET}",
            ]),
            vec![
                "4:13: routes[0].public: invalid type: string \"yes\", expected a boolean; write `true` or `false`",
                "5:5: routes[1]: missing key `path`",
                "6:25: routes[2].methods: invalid type: string \"GET\", expected a sequence",
            ],
        ),
        (y(&["routes: {path: /a}"]), vec!["1:9: `routes` must be a list"]),
        (
            y(&["routes: [\"/a\"]", "tls: /etc/tls.pem"]),
            vec![
                "1:10: routes[0]: invalid type: string \"/a\", expected a mapping of keys",
                "2:6: tls: invalid type: string \"/etc/tls.pem\", expected a mapping of keys",
            ],
        ),
        (y(&["forward_auth: {}"]), vec!["1:15: forward_auth: missing key `listen`"]),
        // One section, one route: every problem in it, not only serde's first.
        (
            y(&["timeouts:", "  upstream: 5s", "  idp: 5", "  idle: [1]", "  client_headers: 1s"]),
            vec![
                "2:3: unknown key `upstream` in timeouts (known keys: idp,",
                "3:8: timeouts.idp: `5` is a bare number",
                "4:9: timeouts.idle: invalid type: sequence, expected a duration",
                "5:3: unknown key `client_headers` in timeouts; did you mean `client_header`?",
            ],
        ),
        (
            y(&[
                "upstream: 3000",
                "routes:",
                "  - path: /a",
                "    methods: [GET, [x]]",
                "    upstream: 5",
                "    scope: [a]",
            ]),
            vec![
                "1:11: upstream: invalid type: integer `3000`, expected a string",
                "4:20: routes[0].methods[1]: invalid type: sequence, expected a string",
                "5:15: routes[0].upstream: invalid type: integer `5`",
                "6:5: unknown key `scope` in routes[0]",
            ],
        ),
        (
            y(&["introspection:", "  endpoint: https://i.example/x", "  client_id: a", "  client_secret: b", "  auth_method: basic"]),
            vec!["5:16: introspection.auth_method: unknown variant `basic`"],
        ),
        // YAML syntax: one error, at serde_yaml's (1-based) location.
        (y(&["listen: [0.0.0.0:8080", "routes: []"]), vec!["2:7: YAML: "]),
        (y(&["- a", "- b"]), vec!["1:1: routes.yaml must be a mapping"]),
    ];
    for (text, expected) in &cases {
        check(text, expected);
    }
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    check(
        &y(&[
            "upstream: http://127.0.0.1:3000",
            "leeway: 30",
            "issuers:",
            "  - issuer: https://a.example",
            "    audiences: [a]",
            "    algorithms: [HS256]",
            "    jwks_refresh: soon",
            "forward:",
            "  identity_headers: {\"bad header\": sub}",
            "forward_auth:",
            "  listen: 127.0.0.1:8081",
            "  trusted_peers: [not-an-ip]",
            "routes:",
            "  - path: /a",
            "    scope: [x]",
            "  - path: /b",
            "    public: true",
            "    any_scopes: [x]",
            "  - path: /c",
            "    upstream: http://${SG_TEST_MISSING}:1",
            "shutdown_grace: 1x",
        ]),
        &[
            "2:9: `30` is a bare number",
            "6:18: HMAC and `none` are never accepted",
            "7:19: issuers[0].jwks_refresh: bad duration `soon`",
            "9:22: `bad header` is not a valid HTTP header name",
            "12:19: forward_auth.trusted_peers[0]: `not-an-ip` is not a CIDR",
            "15:5: unknown key `scope` in routes[0]",
            "18:5: routes[1]: `public: true` together with `any_scopes`",
            "20:15: environment variable `SG_TEST_MISSING` is not set",
            "21:17: shutdown_grace: bad duration `1x`",
        ],
    );
}

#[test]
fn a_valid_file_loads_through_check() {
    check(
        &y(&[
            "upstream: http://127.0.0.1:1",
            "routes:",
            "  - path: /h",
            "    public: true",
        ]),
        &[],
    );
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, "upstream: http://127.0.0.1:1\nleeway: 5\n").unwrap();
    let err = load(&file).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:2:9: leeway: `5` is a bare number; durations need a unit, e.g. `5s` or `5ms`",
            file.display()
        )
    );
    let missing = load(&dir.path().join("nope.yaml")).unwrap_err().to_string();
    assert!(
        missing.contains("nope.yaml:1:1: cannot read file"),
        "{missing}"
    );
}

#[test]
fn describe_lists_listeners_issuers_and_routes_in_file_order() {
    std::env::set_var("SG_TEST_SECRET_FULL_EXAMPLE_7F3A", "from-env");
    let c = from_yaml(CONTRACT_EXAMPLE, Path::new("routes.yaml")).unwrap();
    let text = describe(&c);
    assert!(!text.contains("from-env"), "never print a secret:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("listen        0.0.0.0:8080 (TLS)"),
        "{text}"
    );
    assert!(text.contains("admin_listen  127.0.0.1:9901"), "{text}");
    assert!(
        text.contains("forward_auth  127.0.0.1:8081 (trusted peers: 127.0.0.1/32)"),
        "{text}"
    );
    assert!(
        text.contains(
            "  https://steam-talk.genauth.ai/oidc  aud: 60193c610f9117e7cb049159  alg: RS256,ES256"
        ),
        "{text}"
    );
    let start = lines
        .iter()
        .position(|l| l.starts_with("routes (5):"))
        .unwrap();
    let routes = &lines[start + 1..];
    assert_eq!(routes.len(), 5, "{text}");
    let squash = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        squash(routes[0]),
        "* /healthz public -> http://127.0.0.1:3000"
    );
    assert_eq!(
        squash(routes[1]),
        "GET,HEAD /api/messages scopes: message -> http://127.0.0.1:3000"
    );
    assert_eq!(
        squash(routes[2]),
        "PUT,DELETE /api/messages/{id} scopes: message admin -> http://127.0.0.1:3000"
    );
    assert_eq!(
        squash(routes[3]),
        "* /api/reports/** any of: reports:read | admin -> http://127.0.0.1:4000"
    );
    assert_eq!(
        squash(routes[4]),
        "* /api/** any valid token -> http://127.0.0.1:3000"
    );
    // Columns line up: every route's `->` at the same offset.
    let arrows: Vec<usize> = routes.iter().map(|l| l.find("->").unwrap()).collect();
    assert!(arrows.windows(2).all(|w| w[0] == w[1]), "{text}");
}

#[test]
fn json_schema_names_every_top_level_key() {
    let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
    let props = schema["properties"].as_object().expect("properties");
    let keys = [
        "listen",
        "admin_listen",
        "tls",
        "upstream",
        "issuers",
        "ca_file",
        "introspection",
        "timeouts",
        "limits",
        "leeway",
        "forward",
        "forward_auth",
        "shutdown_grace",
        "routes",
    ];
    for k in keys {
        assert!(props.contains_key(k), "schema lacks `{k}`");
    }
    assert_eq!(
        props.len(),
        keys.len(),
        "{:?}",
        props.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        schema["additionalProperties"],
        serde_json::Value::Bool(false)
    );
}

#[test]
fn route_table_errors_land_on_the_route_in_the_file() {
    use super::compile::{place_route_errors, Ctx};
    use super::positions::Positions;
    use crate::route::RouteError;
    let text = y(&[
        "routes:",
        "  - path: /a",
        "    scope: [typo]", // not handed to RouteTable::build
        "  - path: /b",
        "  - path: /a",
    ]);
    let positions = Positions::index(&text);
    let mut ctx = Ctx::new("routes.yaml", &positions);
    // Specs 0 and 1 are the file's routes 1 and 2 (route 0 had an error).
    let errs = [
        RouteError {
            index: 1,
            message: "conflicts with routes[0] (same pattern, overlapping methods)".into(),
        },
        RouteError {
            index: 0,
            message: "bad pattern".into(),
        },
    ];
    place_route_errors(&mut ctx, &errs, &[1, 2]);
    let got: Vec<String> = ctx.errors().iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "routes.yaml:4:5: routes[1]: bad pattern",
            "routes.yaml:5:5: routes[2]: conflicts with routes[0] (same pattern, overlapping methods)",
        ]
    );
}

#[test]
fn odd_methods_are_accepted_with_a_warning() {
    let c = load_test(&y(&[
        "upstream: http://127.0.0.1:1",
        "routes:",
        "  - path: /h",
        "    public: true",
        "    methods: [GET, PROPFIND]",
    ]))
    .unwrap();
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        ["routes.yaml:5:20: routes[0].methods[1]: `PROPFIND` is not a standard HTTP method (a typo?)"]
    );
}

#[test]
fn a_missing_env_var_in_the_contract_example_is_one_error_at_the_string() {
    let errs =
        from_yaml_with_env(CONTRACT_EXAMPLE, Path::new("routes.yaml"), &|_| None).unwrap_err();
    let got: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        ["routes.yaml:21:18: environment variable `SG_TEST_SECRET_FULL_EXAMPLE_7F3A` is not set"]
    );
}

#[test]
fn shipped_schema_is_current() {
    let shipped = include_str!("../../routes.schema.json");
    assert_eq!(
        shipped.trim_end(),
        json_schema().trim_end(),
        "routes.schema.json is stale: run `scopegate schema > routes.schema.json`"
    );
}

#[test]
fn shipped_routes_yaml_loads() {
    let text = include_str!("../../routes.yaml");
    let config =
        from_yaml(text, std::path::Path::new("routes.yaml")).expect("shipped routes.yaml loads");
    assert_eq!(config.routes.routes().len(), 5);
}

#[test]
fn conflict_messages_name_routes_by_their_file_position() {
    let text = "upstream: http://127.0.0.1:3000\nroutes:\n  - path: /a\n    scope: [x]\n  - path: /c/{id}\n    public: true\n  - path: /c/{other}\n    public: true\n";
    let errors = from_yaml(text, Path::new("r.yaml")).unwrap_err();
    let conflict = errors
        .0
        .iter()
        .find(|e| e.message.contains("conflicts"))
        .expect("a conflict error");
    assert!(
        conflict.message.contains("route #2 (/c/{id})"),
        "{}",
        conflict.message
    );
    assert_eq!((conflict.line, conflict.col), (7, 5));
}
