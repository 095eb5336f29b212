//! End-to-end tests: the real gateway (config loader, verifier, proxy,
//! listeners) between a real IdP and a real recording upstream on loopback.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use scopegate::app::Running;
use support::{
    alg_none_token, build_request, get, hs256_confusion_token, raw_request, valid_claims, Alg, Idp,
    RawResponse, TestKey, TokenBuilder, Upstream,
};

const AUD: &str = "orders-api";

/// The gateway, its IdP and its upstream.
struct Harness {
    gw: Running,
    idp: Idp,
    upstream: Upstream,
    key: TestKey,
}

/// The standard route table used by most tests.
const ROUTES: &str = r#"
routes:
  - path: /healthz
    public: true
  - path: /public/**
    public: true
  - path: /api/messages
    methods: [GET]
    scopes: [message]
  - path: /api/messages/{id}
    methods: [PUT, DELETE]
    scopes: [message, admin]
  - path: /api/reports/**
    any_scopes: [reports:read, admin]
  - path: /api/**
"#;

fn config_text(idp: &Idp, upstream: &str, extra: &str, routes: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {upstream}
issuers:
  - issuer: {issuer}
    audiences: [{AUD}]
    algorithms: [RS256, ES256, EdDSA]
{extra}
{routes}
"#,
        issuer = idp.issuer(),
    )
}

async fn start_with(extra: &str, routes: &str) -> Harness {
    let key = TestKey::generate(Alg::RS256, "key-1");
    let idp = Idp::start_with_keys(&[&key]).await;
    let upstream = Upstream::start().await;
    let text = config_text(&idp, &upstream.url(), extra, routes);
    let gw = start_gateway(&text).await;
    wait_ready(&gw).await;
    Harness {
        gw,
        idp,
        upstream,
        key,
    }
}

async fn start() -> Harness {
    start_with("", ROUTES).await
}

async fn start_gateway(text: &str) -> Running {
    let config = scopegate::config::from_yaml(text, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("test config does not load:\n{e}\n{text}"));
    scopegate::app::start(config).await.expect("gateway starts")
}

/// Waits (bounded) until `/readyz` says ready.
async fn wait_ready(gw: &Running) {
    for _ in 0..500 {
        if gw.gateway.is_ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gateway did not become ready");
}

impl Harness {
    fn addr(&self) -> SocketAddr {
        self.gw.proxy_addr
    }

    fn token(&self, scope: &str) -> String {
        self.key.sign(&self.claims(scope))
    }

    fn claims(&self, scope: &str) -> Value {
        valid_claims(&self.idp.issuer(), AUD, scope, Duration::from_secs(600))
    }

    async fn get_with_token(&self, path: &str, token: &str) -> RawResponse {
        get(
            self.addr(),
            path,
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    async fn request(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        raw_request(
            self.addr(),
            build_request(method, self.addr(), target, headers, b""),
        )
        .await
        .expect("request")
    }
}

/// Asserts a gateway-made error response: status, JSON `error`, challenge.
fn assert_rejected(r: &RawResponse, status: u16, code: &str, challenge: Option<&str>) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].is_string());
    match challenge {
        None => assert_eq!(r.header("www-authenticate"), None),
        Some(prefix) => {
            let got = r.header("www-authenticate").expect("WWW-Authenticate");
            assert!(
                got.starts_with(prefix),
                "{got:?} does not start with {prefix:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- allowed

#[tokio::test]
async fn allowed_request_is_forwarded_with_identity_headers() {
    let h = start().await;
    let token = h.token("message email");
    let r = h
        .request(
            "GET",
            "/api/messages?limit=5&x=%2F",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("X-Auth-Subject", "forged-admin"),
                ("x_auth_subject", "forged-admin"),
                ("X-AUTH-SCOPES", "admin"),
                ("X-Forwarded-For", "10.9.8.7"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.upstream.last().expect("forwarded");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path_and_query, "/api/messages?limit=5&x=%2F");
    // Origin form on the wire, as the client sent it; never absolute form.
    assert_eq!(seen.uri, "/api/messages?limit=5&x=%2F");
    assert_eq!(seen.header_all("x-auth-subject"), ["user-123"]);
    assert_eq!(seen.header_all("x-auth-scopes"), ["message email"]);
    assert!(!seen.has_header("x_auth_subject"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.9.8.7, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(h.addr().to_string().as_str())
    );
    assert_eq!(seen.header("host"), Some(h.addr().to_string().as_str()));
    assert!(seen.header("authorization").is_some(), "kept by default");
}

#[tokio::test]
async fn normalized_path_is_what_goes_upstream() {
    let h = start().await;
    let token = h.token("message");
    let auth = format!("Bearer {token}");
    for (target, forwarded) in [
        ("//api///messages", "/api/messages"),
        ("/api/./x/../messages", "/api/messages"),
        ("/%61pi/messages", "/api/messages"),
        ("/api/messages/", "/api/messages/"),
        ("/public/a/%7euser/b?q=1", "/public/a/~user/b?q=1"),
    ] {
        h.upstream.clear();
        let r = h.request("GET", target, &[("Authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert_eq!(
            h.upstream.last().expect("forwarded").path_and_query,
            forwarded,
            "{target}"
        );
    }
}

#[tokio::test]
async fn absolute_form_target_is_treated_as_its_path() {
    let h = start().await;
    for (path, forwarded) in [
        ("/public/x", "/public/x"),
        ("/public/x?a=1&b=%2F", "/public/x?a=1&b=%2F"),
        ("/public//y/./z?q", "/public/y/z?q"),
    ] {
        let target = format!("http://{}{path}", h.addr());
        let r = h.request("GET", &target, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = h.upstream.last().unwrap();
        assert_eq!(seen.path_and_query, forwarded);
        // Origin form on the wire, whichever form the client used.
        assert_eq!(seen.uri, forwarded);
    }
}

#[tokio::test]
async fn a_request_must_name_its_host_once() {
    let h = start().await;
    let addr = h.addr();
    // Refused before the route table: nothing reaches the upstream, which
    // would have answered its own 400 (and closed the pooled connection).
    for (what, request) in [
        ("no Host", "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_string()),
        ("HTTP/1.0 without Host", "GET /public/x HTTP/1.0\r\n\r\n".to_string()),
        (
            "two Host headers",
            format!("GET /public/x HTTP/1.1\r\nHost: {addr}\r\nHost: other.example\r\nConnection: close\r\n\r\n"),
        ),
        (
            "a path in Host",
            "GET /public/x HTTP/1.1\r\nHost: a.example/b\r\nConnection: close\r\n\r\n".to_string(),
        ),
        (
            "userinfo in Host",
            "GET /public/x HTTP/1.1\r\nHost: user@a.example\r\nConnection: close\r\n\r\n".to_string(),
        ),
        (
            "a space in Host",
            "GET /public/x HTTP/1.1\r\nHost: a.example b.example\r\nConnection: close\r\n\r\n".to_string(),
        ),
    ] {
        let r = raw_request(addr, &request).await.unwrap();
        assert_eq!(r.status, 400, "{what}");
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.contains("invalid_request") && body.contains("Host"), "{what}: {body}");
    }
    assert_eq!(h.upstream.count(), 0);

    // One Host of any valid form passes as it came; so does an absolute-form
    // target without one, whose authority becomes the upstream's Host.
    for (request, host) in [
        (
            "GET /public/x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n".to_string(),
            "[::1]:8080".to_string(),
        ),
        (
            "GET /public/x HTTP/1.0\r\nHost: api.example\r\n\r\n".to_string(),
            "api.example".to_string(),
        ),
        (
            format!("GET http://{addr}/public/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
            addr.to_string(),
        ),
    ] {
        h.upstream.clear();
        let r = raw_request(addr, &request).await.unwrap();
        assert_eq!(r.status, 200, "{request}");
        let seen = h.upstream.last().expect("forwarded");
        assert_eq!(seen.header_all("host"), [host.as_str()], "{request}");
    }
}

#[tokio::test]
async fn head_is_covered_by_get() {
    let h = start().await;
    let token = h.token("message");
    let r = h
        .request(
            "HEAD",
            "/api/messages",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(h.upstream.last().unwrap().method, "HEAD");
}

#[tokio::test]
async fn public_route_passes_authorization_untouched_and_strips_identity() {
    let h = start().await;
    let r = h
        .request(
            "GET",
            "/public/page",
            &[
                ("Authorization", "Basic dXNlcjpwYXNz"),
                ("Authorization", "Bearer whatever"),
                ("X-Auth-Subject", "forged"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.upstream.last().unwrap();
    assert_eq!(
        seen.header_all("authorization"),
        ["Basic dXNlcjpwYXNz", "Bearer whatever"]
    );
    assert!(!seen.has_header("x-auth-subject"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let h = start().await;
    h.upstream.set_response_headers(vec![
        ("Connection".into(), "x-upstream-secret".into()),
        ("X-Upstream-Secret".into(), "1".into()),
        ("Proxy-Authenticate".into(), "Basic".into()),
        ("X-Kept".into(), "yes".into()),
    ]);
    let r = h
        .request(
            "GET",
            "/public/x",
            &[
                ("Connection", "close, x-client-secret"),
                ("X-Client-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic abc"),
                ("X-Other", "kept"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = h.upstream.last().unwrap();
    assert!(!seen.has_header("x-client-secret"));
    assert!(!seen.has_header("keep-alive"));
    assert!(!seen.has_header("proxy-authorization"));
    assert_eq!(seen.header("x-other"), Some("kept"));
    assert_eq!(r.header("x-upstream-secret"), None);
    assert_eq!(r.header("proxy-authenticate"), None);
    assert_eq!(r.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn strip_authorization_removes_the_token_upstream() {
    let h = start_with("forward:\n  strip_authorization: true\n", ROUTES).await;
    let r = h.get_with_token("/api/messages", &h.token("message")).await;
    assert_eq!(r.status, 200);
    let seen = h.upstream.last().unwrap();
    assert!(!seen.has_header("authorization"));
    assert_eq!(seen.header("x-auth-subject"), Some("user-123"));
}

#[tokio::test]
async fn custom_identity_headers_replace_the_defaults() {
    let extra = "forward:\n  identity_headers:\n    X-User: sub\n    X-Client: client_id\n";
    let h = start_with(extra, ROUTES).await;
    let claims = {
        let mut c = h.claims("message");
        c["client_id"] = json!("web-app");
        c
    };
    let r = get(
        h.addr(),
        "/api/messages",
        &[
            ("Authorization", &format!("Bearer {}", h.key.sign(&claims))),
            ("X-Auth-Subject", "not-an-identity-header-any-more"),
            ("X-User", "forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = h.upstream.last().unwrap();
    assert_eq!(seen.header_all("x-user"), ["user-123"]);
    assert_eq!(seen.header("x-client"), Some("web-app"));
    assert_eq!(
        seen.header("x-auth-subject"),
        Some("not-an-identity-header-any-more")
    );
}

#[tokio::test]
async fn request_and_response_bodies_stream() {
    let h = start().await;
    h.upstream
        .set_mode(support::upstream::Mode::StreamManual)
        .await;
    let mut conn = support::RawConn::connect(h.addr()).await.unwrap();
    conn.write(&build_request("GET", h.addr(), "/public/stream", &[], b""))
        .await
        .unwrap();
    let sender = tokio::time::timeout(Duration::from_secs(5), h.upstream.stream_sender())
        .await
        .expect("the upstream started its response");
    sender
        .send(bytes::Bytes::from_static(b"first piece"))
        .await
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), conn.read_head())
        .await
        .expect("head before the body ends")
        .unwrap();
    assert_eq!(head.status, 200);
    let chunk = tokio::time::timeout(Duration::from_secs(5), conn.read_chunk())
        .await
        .expect("first chunk before the body ends")
        .unwrap()
        .unwrap();
    assert_eq!(chunk, b"first piece");
    drop(sender);
}

#[tokio::test]
async fn post_body_reaches_the_upstream() {
    let h = start().await;
    let token = h.token("");
    let body = vec![b'x'; 200_000];
    let r = raw_request(
        h.addr(),
        build_request(
            "POST",
            h.addr(),
            "/api/upload",
            &[("Authorization", &format!("Bearer {token}"))],
            &body,
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.upstream.last().unwrap();
    assert_eq!(seen.body.len(), body.len());
}

#[tokio::test]
async fn websocket_upgrade_is_proxied_once_authorized() {
    let h = start().await;
    let token = h.token("");
    let mut conn = support::RawConn::connect(h.addr()).await.unwrap();
    let request = format!(
        "GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    conn.write(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), conn.read_head())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.status, 101);
    conn.write(b"ping over the tunnel").await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), conn.read_exact(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"ping over the tunnel");

    // Not authorized: no upgrade, nothing reaches the upstream.
    h.upstream.clear();
    let r = h
        .request(
            "GET",
            "/api/ws",
            &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(h.upstream.count(), 0);
}

// ---------------------------------------------------------------- rejections

#[tokio::test]
async fn missing_token_or_other_scheme_is_401_without_error_code() {
    let h = start().await;
    let r = h.request("GET", "/api/messages", &[]).await;
    assert_rejected(&r, 401, "unauthorized", Some("Bearer realm=\"scopegate\""));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\"")
    );
    let r = h
        .request(
            "GET",
            "/api/messages",
            &[("Authorization", "Basic dXNlcjpwYXNz")],
        )
        .await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\"")
    );
    assert_eq!(r.status, 401);
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn several_authorization_headers_or_malformed_bearer_is_400() {
    let h = start().await;
    let token = h.token("message");
    let bearer = format!("Bearer {token}");
    for headers in [
        vec![
            ("Authorization", bearer.as_str()),
            ("Authorization", bearer.as_str()),
        ],
        vec![("Authorization", "Bearer")],
        vec![("Authorization", "Bearer a b")],
    ] {
        let r = h.request("GET", "/api/messages", &headers).await;
        assert_rejected(
            &r,
            400,
            "invalid_request",
            Some("Bearer realm=\"scopegate\", error=\"invalid_request\""),
        );
    }
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn invalid_tokens_are_401_invalid_token() {
    let h = start().await;
    let iss = h.idp.issuer();
    let good = h.claims("message");
    let other_key = TestKey::generate(Alg::RS256, "key-1");
    let mut expired = good.clone();
    expired["exp"] = json!(support::keys::now_secs() - 3600);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!(format!("{iss}/other"));
    let mut exp_string = good.clone();
    exp_string["exp"] = json!((support::keys::now_secs() + 600).to_string());
    let cases: Vec<(&str, String)> = vec![
        ("expired", h.key.sign(&expired)),
        ("wrong audience", h.key.sign(&wrong_aud)),
        ("wrong issuer", h.key.sign(&wrong_iss)),
        ("exp as a string", h.key.sign(&exp_string)),
        ("signed by another key", other_key.sign(&good)),
        ("alg none", alg_none_token(&good)),
        (
            "HS256 with the public key",
            hs256_confusion_token(&h.key, &good),
        ),
        (
            "crit header",
            TokenBuilder::for_key(&h.key, good.clone())
                .header("crit", json!(["exp"]))
                .sign(&h.key),
        ),
        (
            "typ not a JWT",
            TokenBuilder::for_key(&h.key, good.clone())
                .header("typ", "JOSE+JSON")
                .sign(&h.key),
        ),
        (
            "opaque without introspection",
            "opaque-token-value".to_string(),
        ),
        ("garbage JWT", "aaa.bbb.ccc".to_string()),
    ];
    for (why, token) in cases {
        let r = h.get_with_token("/api/messages", &token).await;
        assert_rejected(
            &r,
            401,
            "invalid_token",
            Some("Bearer realm=\"scopegate\", error=\"invalid_token\", error_description=\""),
        );
        let challenge = r.header("www-authenticate").unwrap();
        assert!(!challenge.contains(&token), "{why}: token echoed");
        assert!(!r.text().contains(&token), "{why}: token echoed in body");
    }
    assert_eq!(h.upstream.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn jku_and_jwk_headers_never_pick_the_key() {
    let h = start().await;
    let attacker = TestKey::generate(Alg::RS256, "key-1");
    let token = TokenBuilder::for_key(&attacker, h.claims("message"))
        .header("jku", format!("{}/jwks", h.idp.issuer()))
        .header("jwk", attacker.public_jwk())
        .sign(&attacker);
    let r = h.get_with_token("/api/messages", &token).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn missing_scopes_are_403_with_the_required_scopes() {
    let h = start().await;
    let r = h
        .request(
            "DELETE",
            "/api/messages/7",
            &[("Authorization", &format!("Bearer {}", h.token("message")))],
        )
        .await;
    assert_rejected(&r, 403, "insufficient_scope", Some("Bearer realm"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"message admin\"")
    );
    let r = h
        .get_with_token("/api/reports/q4", &h.token("message"))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\", error=\"insufficient_scope\", scope=\"reports:read admin\"")
    );
    let r = h.get_with_token("/api/reports/q4", &h.token("admin")).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.upstream.count(), 1);
}

#[tokio::test]
async fn scp_array_is_read_when_scope_is_absent() {
    let h = start().await;
    let mut claims = h.claims("");
    claims.as_object_mut().unwrap().remove("scope");
    claims["scp"] = json!(["message", "admin"]);
    let r = h
        .request(
            "PUT",
            "/api/messages/3",
            &[("Authorization", &format!("Bearer {}", h.key.sign(&claims)))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn unmatched_is_404_and_not_forwarded() {
    let h = start().await;
    let r = h.get_with_token("/admin", &h.token("message admin")).await;
    assert_rejected(&r, 404, "not_found", None);
    let r = h.request("GET", "/", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn malformed_paths_and_targets_are_400_and_not_forwarded() {
    let h = start().await;
    let token = h.token("message admin");
    let auth = format!("Bearer {token}");
    for target in [
        "/public/..%2Fapi/messages",
        "/public/%2e%2e/%2e%2e/etc",
        "/api%2Fmessages",
        "/api%2fmessages",
        "/api%5Cmessages",
        "/public/a;b",
        "/public/%00",
        "/public/%zz",
        "/public/%",
        "/public/%C0%AE%C0%AE/",
        "/public/%u002e",
        "/..",
        "/public/../../x",
    ] {
        let r = h.request("GET", target, &[("Authorization", &auth)]).await;
        assert_rejected(&r, 400, "invalid_request", None);
    }
    let r = raw_request(
        h.addr(),
        "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    let r = raw_request(
        h.addr(),
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    // A raw backslash is refused by the HTTP parser itself or by us: never forwarded.
    let r = raw_request(
        h.addr(),
        "GET /public\\..\\x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn classic_bypass_attempts_cannot_reach_a_protected_route_as_public() {
    let h = start().await;
    // Each of these normalizes to a protected route or is refused; never public.
    for target in [
        "/public/../api/messages",
        "/public/%2e%2e/api/messages",
        "//api/messages",
    ] {
        let r = h.request("GET", target, &[]).await;
        assert!(
            r.status == 401 || r.status == 400,
            "{target}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let h = start_with("limits:\n  max_header_bytes: 8192\n", ROUTES).await;
    let big = "a".repeat(20_000);
    let r = h.request("GET", "/public/x", &[("X-Big", &big)]).await;
    assert_eq!(r.status, 431);
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn upstream_refused_is_502() {
    let (_reserved, closed) = support::refusing_addr();
    let port = closed.port();
    let routes = format!(
        "routes:\n  - path: /public/**\n    public: true\n    upstream: http://127.0.0.1:{port}\n"
    );
    let h = start_with("", &routes).await;
    let r = h.request("GET", "/public/x", &[]).await;
    assert_rejected(&r, 502, "bad_gateway", None);
}

#[tokio::test]
async fn upstream_reset_or_garbage_is_502() {
    let h = start().await;
    h.upstream.set_mode(support::upstream::Mode::Reset).await;
    let r = h.request("GET", "/public/x", &[]).await;
    assert_rejected(&r, 502, "bad_gateway", None);
    h.upstream.set_mode(support::upstream::Mode::Garbage).await;
    let r = h.request("GET", "/public/x", &[]).await;
    assert_rejected(&r, 502, "bad_gateway", None);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let h = start_with("timeouts:\n  upstream_response: 300ms\n", ROUTES).await;
    h.upstream
        .set_mode(support::upstream::Mode::Slow(Duration::from_secs(5)))
        .await;
    let started = std::time::Instant::now();
    let r = h.request("GET", "/public/x", &[]).await;
    assert_rejected(&r, 504, "gateway_timeout", None);
    assert!(started.elapsed() < Duration::from_secs(4));
}

// ---------------------------------------------------------------- keys

#[tokio::test]
async fn issuer_down_with_a_cold_cache_is_503_with_retry_after() {
    let key = TestKey::generate(Alg::RS256, "key-1");
    let idp = Idp::start_with_keys(&[&key]).await;
    idp.down().await;
    let upstream = Upstream::start().await;
    let gw = start_gateway(&config_text(
        &idp,
        &upstream.url(),
        "timeouts:\n  idp: 500ms\n",
        ROUTES,
    ))
    .await;
    let claims = valid_claims(&idp.issuer(), AUD, "message", Duration::from_secs(600));
    let r = get(
        gw.proxy_addr,
        "/api/messages",
        &[("Authorization", &format!("Bearer {}", key.sign(&claims)))],
    )
    .await;
    assert_rejected(&r, 503, "temporarily_unavailable", None);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(!gw.gateway.is_ready());
    let ready = get(gw.admin_addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 503);
    // Public routes do not need the issuer.
    assert_eq!(get(gw.proxy_addr, "/public/x", &[]).await.status, 200);
    assert_eq!(upstream.count(), 1);

    // The issuer comes back: the backoff (at most 5 s) fetches the keys.
    idp.up().await;
    for _ in 0..800 {
        if gw.gateway.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gw.gateway.is_ready(),
        "keys fetched after the issuer came back"
    );
    let r = get(
        gw.proxy_addr,
        "/api/messages",
        &[("Authorization", &format!("Bearer {}", key.sign(&claims)))],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn issuer_down_with_a_warm_cache_keeps_verifying() {
    let h = start().await;
    let token = h.token("message");
    assert_eq!(h.get_with_token("/api/messages", &token).await.status, 200);
    h.idp.down().await;
    // A token never seen before, signed by the cached key.
    let fresh = h.key.sign(&h.claims("message email"));
    assert_eq!(h.get_with_token("/api/messages", &fresh).await.status, 200);
    // An unknown kid within 10 s of the last (successful) fetch: no refetch,
    // and the last fetch succeeded, so the token is invalid.
    let before = h.idp.jwks_requests();
    let rotated = TestKey::generate(Alg::RS256, "key-2");
    let r = h
        .get_with_token("/api/messages", &rotated.sign(&h.claims("message")))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(h.idp.jwks_requests(), before);
}

#[tokio::test]
async fn key_rotation_is_picked_up_and_dropped_keys_stop_verifying() {
    let key = TestKey::generate(Alg::RS256, "key-1");
    let idp = Idp::start_with_keys(&[&key]).await;
    let upstream = Upstream::start().await;
    let text = config_text(&idp, &upstream.url(), "", ROUTES).replace(
        "algorithms: [RS256, ES256, EdDSA]",
        "algorithms: [RS256, ES256, EdDSA]\n    jwks_refresh: 1s",
    );
    let gw = start_gateway(&text).await;
    wait_ready(&gw).await;
    let addr = gw.proxy_addr;
    let claims = valid_claims(&idp.issuer(), AUD, "message", Duration::from_secs(600));
    let call = |token: String| async move {
        get(
            addr,
            "/api/messages",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await
        .status
    };
    let old_token = key.sign(&claims);
    assert_eq!(call(old_token.clone()).await, 200);

    // The issuer rotates: the new key set replaces the old one whole.
    let new_key = TestKey::generate(Alg::ES256, "key-2");
    idp.set_keys(vec![new_key.public_jwk()]);
    let seen = idp.jwks_requests();
    tokio::time::timeout(Duration::from_secs(10), idp.wait_jwks_requests(seen + 1))
        .await
        .expect("background refresh");
    // The refresh has been answered; the gateway installs it right after.
    let mut new_status = 0;
    for _ in 0..200 {
        new_status = call(new_key.sign(&claims)).await;
        if new_status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(new_status, 200, "the new key verifies after the refresh");
    assert_eq!(
        call(old_token).await,
        401,
        "a dropped key stops verifying, cached or not"
    );
    assert_eq!(call(key.sign(&claims)).await, 401);
}

#[tokio::test]
async fn unknown_kid_flood_is_rate_limited() {
    let h = start().await;
    let before = h.idp.jwks_requests();
    let mut handles = Vec::new();
    for i in 0..50 {
        let key = TestKey::generate(Alg::ES256, &format!("random-{i}"));
        let token = key.sign(&h.claims("message"));
        let addr = h.addr();
        handles.push(tokio::spawn(async move {
            get(
                addr,
                "/api/messages",
                &[("Authorization", &format!("Bearer {token}"))],
            )
            .await
            .status
        }));
    }
    for handle in handles {
        let status = handle.await.unwrap();
        assert_eq!(
            status, 401,
            "unknown kid after a good fetch is invalid_token"
        );
    }
    let fetches = h.idp.jwks_requests() - before;
    assert!(
        fetches <= 1,
        "{fetches} JWKS fetches for a flood of unknown kids"
    );
    assert_eq!(h.upstream.count(), 0);
}

// ---------------------------------------------------------------- admin

#[tokio::test]
async fn admin_endpoints() {
    let h = start().await;
    assert_eq!(get(h.gw.admin_addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get(h.gw.admin_addr, "/readyz", &[]).await.status, 200);
    h.get_with_token("/api/messages", &h.token("message")).await;
    h.get_with_token("/api/messages", &h.token("email")).await;
    let metrics = get(h.gw.admin_addr, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains(r#"scopegate_requests_total{route="GET /api/messages",decision="allow"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"scopegate_requests_total{route="GET /api/messages",decision="insufficient_scope"} 1"#
    ));
}

#[tokio::test]
async fn shutdown_turns_readyz_503_and_stops_accepting() {
    let h = start().await;
    let admin = h.gw.admin_addr;
    let proxy = h.addr();
    h.gw.begin_shutdown();
    assert!(!h.gw.gateway.is_ready());
    h.gw.shutdown().await;
    assert!(tokio::net::TcpStream::connect(proxy).await.is_err());
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

// ---------------------------------------------------------------- forward-auth

#[tokio::test]
async fn forward_auth_answers_for_trusted_peers_only() {
    let extra = "forward_auth:\n  listen: 127.0.0.1:0\n  trusted_peers: [127.0.0.1/32]\n";
    let h = start_with(extra, ROUTES).await;
    let fa = h.gw.forward_auth_addr.expect("forward-auth listener");
    let token = h.token("message");
    let auth = format!("Bearer {token}");
    let r = get(
        fa,
        "/verify",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/messages?x=1"),
            ("Authorization", &auth),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-subject"), Some("user-123"));
    let r = get(
        fa,
        "/verify",
        &[
            ("X-Original-Method", "DELETE"),
            ("X-Original-URI", "/api/messages/1"),
            ("Authorization", &auth),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    let r = get(fa, "/envoy/api/messages", &[]).await;
    assert_eq!(r.status, 401);
    let r = get(fa, "/envoy/public/../api/messages", &[]).await;
    assert_eq!(r.status, 401, "normalized before matching");
    assert_eq!(h.upstream.count(), 0, "forward-auth never proxies");

    // An untrusted peer is refused without evaluation.
    let extra = "forward_auth:\n  listen: 127.0.0.1:0\n  trusted_peers: [10.0.0.0/8]\n";
    let h = start_with(extra, ROUTES).await;
    let fa = h.gw.forward_auth_addr.unwrap();
    let r = get(fa, "/verify", &[("X-Forwarded-Uri", "/public/x")]).await;
    assert_eq!(r.status, 403);
}
