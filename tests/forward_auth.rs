//! Forward-auth mode end to end: the real nginx and caddy (Debian's packages)
//! run from the shipped `deploy/nginx/auth_request.conf` and
//! `deploy/caddy/Caddyfile`, between a raw client and the recording upstream,
//! asking the in-process gateway. Traefik, ingress-nginx and Envoy are not
//! packaged by Debian: their auth requests are emulated byte for byte as
//! their documentation describes them.
//!
//! Without the binaries the proxy tests print `skipped: nginx not installed`
//! and pass, unless `SCOPEGATE_REQUIRE_PROXIES=1` (CI, `.ci/extra.sh`), which
//! makes them fail instead.

mod support;

use std::fs;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use scopegate::app::Running;
use support::idp::{Endpoint, Mode};
use support::{build_request, raw_request, valid_claims, Alg, Idp, RawResponse, TestKey, Upstream};

const AUD: &str = "orders-api";

/// No catch-all: `/nowhere` and `POST /api/messages` match no route.
const ROUTES: &str = r#"
routes:
  - path: /public/**
    public: true
  - path: /api/messages
    methods: [GET]
    scopes: [message]
  - path: /api/messages/{id}
    methods: [PUT, DELETE]
    scopes: [message, admin]
"#;

/// Peers that include the loopback proxies, and peers that do not.
const TRUSTED: &str = r#"[127.0.0.1/32, "::1/128"]"#;
const UNTRUSTED: &str = "[10.0.0.0/8]";

// ---------------------------------------------------------------- the gateway

struct Harness {
    gw: Running,
    idp: Idp,
    upstream: Upstream,
    key: TestKey,
}

impl Harness {
    async fn start(trusted_peers: &str) -> Harness {
        let key = TestKey::generate(Alg::RS256, "key-1");
        let idp = Idp::start_with_keys(&[&key]).await;
        let upstream = Upstream::start().await;
        let text = format!(
            r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {upstream}
issuers:
  - issuer: {issuer}
    audiences: [{AUD}]
introspection:
  endpoint: {introspection}
  client_id: {client_id}
  client_secret: {client_secret}
forward_auth:
  listen: 127.0.0.1:0
  trusted_peers: {trusted_peers}
{ROUTES}
"#,
            upstream = upstream.url(),
            issuer = idp.issuer(),
            introspection = idp.introspection_endpoint(),
            client_id = Idp::CLIENT_ID,
            client_secret = Idp::CLIENT_SECRET,
        );
        let config = scopegate::config::from_yaml(&text, Path::new("forward_auth.yaml"))
            .unwrap_or_else(|e| panic!("test config does not load:\n{e}\n{text}"));
        let gw = scopegate::app::start(config).await.expect("gateway starts");
        for _ in 0..500 {
            if gw.gateway.is_ready() {
                return Harness {
                    gw,
                    idp,
                    upstream,
                    key,
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gateway did not become ready");
    }

    /// The forward-auth listener.
    fn fa(&self) -> SocketAddr {
        self.gw.forward_auth_addr.expect("forward-auth listener")
    }

    fn bearer(&self, scope: &str) -> String {
        let claims = valid_claims(&self.idp.issuer(), AUD, scope, Duration::from_secs(600));
        format!("Bearer {}", self.key.sign(&claims))
    }
}

// ---------------------------------------------------------------- real proxies

/// A proxy running as a child process from a config in its own temp dir;
/// killed (and reaped) on drop.
struct Proxy {
    name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// What the proxy wrote to stderr, for failure messages.
    fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Polls the port (bounded) until the proxy accepts connections.
    async fn wait_listening(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.logs());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} did not listen on {}:\n{}",
            self.name,
            self.addr,
            self.logs()
        );
    }
}

/// The binary `name` on PATH or in the sbin directories (nginx lives in
/// /usr/sbin, which a normal user's PATH often lacks).
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The binary, or `None` after printing why the test is skipped. With
/// `SCOPEGATE_REQUIRE_PROXIES=1` a missing binary fails the test instead.
fn require(name: &str) -> Option<PathBuf> {
    if let Some(binary) = find_binary(name) {
        return Some(binary);
    }
    if std::env::var("SCOPEGATE_REQUIRE_PROXIES").as_deref() == Ok("1") {
        panic!("{name} not installed, and SCOPEGATE_REQUIRE_PROXIES=1 (.ci/extra.sh installs it)");
    }
    eprintln!("skipped: {name} not installed (apt-get install nginx-light caddy)");
    None
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `text` with `from` replaced by `to`; `from` must occur exactly once (so a
/// change to the shipped file that breaks the test's substitution is loud).
fn replace_once(text: &str, from: &str, to: &str, file: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{file} should contain {from:?} exactly once"
    );
    text.replacen(from, to, 1)
}

fn shipped(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// nginx with `deploy/nginx/auth_request.conf`, asking `fa`, forwarding to `upstream`.
async fn start_nginx(fa: SocketAddr, upstream: SocketAddr) -> Option<Proxy> {
    let binary = require("nginx")?;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let file = "deploy/nginx/auth_request.conf";
    let site = shipped(file);
    let site = replace_once(
        &site,
        "server 127.0.0.1:8081;",
        &format!("server {fa};"),
        file,
    );
    let site = replace_once(
        &site,
        "server 127.0.0.1:3000;",
        &format!("server {upstream};"),
        file,
    );
    let site = replace_once(
        &site,
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
        file,
    );
    fs::write(dir.path().join("site.conf"), site).unwrap();
    let d = dir.path().display();
    // As root, nginx would switch its workers to `nobody`, who cannot write
    // the temp dir.
    let user = if running_as_root() {
        "user root root;"
    } else {
        ""
    };
    let main = format!(
        "{user}
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"
    );
    let conf = dir.path().join("nginx.conf");
    fs::write(&conf, main).unwrap();
    let stderr = fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = Command::new(binary)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg("stderr")
        .arg("-g")
        .arg(format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log stderr notice;"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("nginx starts");
    let mut proxy = Proxy {
        name: "nginx",
        child,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    proxy.wait_listening().await;
    Some(proxy)
}

/// caddy with `deploy/caddy/Caddyfile`, asking `fa`, forwarding to `upstream`.
async fn start_caddy(fa: SocketAddr, upstream: SocketAddr) -> Option<Proxy> {
    let binary = require("caddy")?;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let file = "deploy/caddy/Caddyfile";
    let site = shipped(file);
    let site = replace_once(
        &site,
        "api.example.com {",
        &format!("http://127.0.0.1:{port} {{"),
        file,
    );
    let site = replace_once(
        &site,
        "forward_auth 127.0.0.1:8081 {",
        &format!("forward_auth {fa} {{"),
        file,
    );
    let site = replace_once(
        &site,
        "reverse_proxy 127.0.0.1:3000",
        &format!("reverse_proxy {upstream}"),
        file,
    );
    // No admin API, no certificates, nothing outside the temp dir.
    let caddyfile = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
    let config = dir.path().join("Caddyfile");
    fs::write(&config, caddyfile).unwrap();
    let stderr = fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = Command::new(binary)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("caddy starts");
    let mut proxy = Proxy {
        name: "caddy",
        child,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    proxy.wait_listening().await;
    Some(proxy)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Nginx,
    Caddy,
}

/// The gateway with a real proxy in front of it.
struct Setup {
    proxy: Proxy,
    h: Harness,
}

impl Setup {
    async fn new(kind: Kind, trusted_peers: &str) -> Option<Setup> {
        // Look for the binary before starting anything.
        require(match kind {
            Kind::Nginx => "nginx",
            Kind::Caddy => "caddy",
        })?;
        let h = Harness::start(trusted_peers).await;
        let proxy = match kind {
            Kind::Nginx => start_nginx(h.fa(), h.upstream.addr()).await?,
            Kind::Caddy => start_caddy(h.fa(), h.upstream.addr()).await?,
        };
        Some(Setup { proxy, h })
    }

    /// `method target` through the proxy with these headers.
    async fn send(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        let request = build_request(method, self.proxy.addr, target, headers, b"");
        raw_request(self.proxy.addr, request)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {target} via {}: {e}\n{}",
                    self.proxy.name,
                    self.proxy.logs()
                )
            })
    }

    /// Asserts the status, with the body and the proxy's log on failure.
    fn expect(&self, r: &RawResponse, status: u16, what: &str) {
        assert_eq!(
            r.status,
            status,
            "{} {what}: {}\nheaders: {:?}\nproxy log:\n{}",
            self.proxy.name,
            r.text(),
            r.headers,
            self.proxy.logs()
        );
    }
}

/// Asserts a denial: status, exactly one WWW-Authenticate (or none) and the JSON `error`.
fn assert_denied(s: &Setup, r: &RawResponse, status: u16, error: &str, challenge: Option<&str>) {
    s.expect(r, status, error);
    let challenges = r.header_all("www-authenticate");
    match challenge {
        Some(part) => {
            assert_eq!(
                challenges.len(),
                1,
                "{}: one challenge: {challenges:?}",
                s.proxy.name
            );
            assert!(
                challenges[0].starts_with("Bearer realm=\"scopegate\"")
                    && challenges[0].contains(part),
                "{}: challenge {:?} should contain {part:?}",
                s.proxy.name,
                challenges[0]
            );
        }
        None => assert!(
            challenges.is_empty(),
            "{}: no challenge: {challenges:?}",
            s.proxy.name
        ),
    }
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{}: JSON body, got {:?}",
        s.proxy.name,
        r.header("content-type")
    );
    let body: Value = r.json();
    assert_eq!(body["error"], error, "{}: {body}", s.proxy.name);
}

// ---------------------------------------------------------------- the checks, per proxy

async fn allowed_request_reaches_upstream_with_identity(kind: Kind) {
    let Some(s) = Setup::new(kind, TRUSTED).await else {
        return;
    };
    let auth = s.h.bearer("message");
    let r = s
        .send("GET", "/api/messages?x=1", &[("Authorization", &auth)])
        .await;
    s.expect(&r, 200, "allowed GET");
    let seen = s.h.upstream.last().expect("the upstream saw the request");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path_and_query, "/api/messages?x=1");
    assert_eq!(seen.header_all("x-auth-subject"), ["user-123"]);
    assert_eq!(seen.header_all("x-auth-scopes"), ["message"]);
    assert_eq!(seen.header("authorization"), Some(auth.as_str()));

    let auth = s.h.bearer("message admin");
    let r = s
        .send("DELETE", "/api/messages/7", &[("Authorization", &auth)])
        .await;
    s.expect(&r, 200, "allowed DELETE");
    let seen = s.h.upstream.last().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path_and_query.as_str()),
        ("DELETE", "/api/messages/7")
    );
    assert_eq!(seen.header_all("x-auth-scopes"), ["message admin"]);

    let r = s.send("GET", "/public/info", &[]).await;
    s.expect(&r, 200, "public route without a token");
    let seen = s.h.upstream.last().unwrap();
    assert_eq!(seen.path_and_query, "/public/info");
    no_identity(&s, &seen);
    assert_eq!(s.h.upstream.count(), 3);
}

async fn missing_or_invalid_token_is_401_with_challenge(kind: Kind) {
    let Some(s) = Setup::new(kind, TRUSTED).await else {
        return;
    };
    let r = s.send("GET", "/api/messages", &[]).await;
    assert_denied(&s, &r, 401, "unauthorized", Some(""));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\"")
    );

    let r = s
        .send(
            "GET",
            "/api/messages",
            &[("Authorization", "Bearer not.a.token")],
        )
        .await;
    assert_denied(
        &s,
        &r,
        401,
        "invalid_token",
        Some("error=\"invalid_token\""),
    );
    assert_eq!(
        s.h.upstream.count(),
        0,
        "nothing denied reaches the upstream"
    );
}

async fn wrong_scope_is_403(kind: Kind) {
    let Some(s) = Setup::new(kind, TRUSTED).await else {
        return;
    };
    let r = s
        .send(
            "GET",
            "/api/messages",
            &[("Authorization", &s.h.bearer("profile"))],
        )
        .await;
    assert_denied(&s, &r, 403, "insufficient_scope", Some("scope=\"message\""));
    let r = s
        .send(
            "DELETE",
            "/api/messages/1",
            &[("Authorization", &s.h.bearer("message"))],
        )
        .await;
    assert_denied(
        &s,
        &r,
        403,
        "insufficient_scope",
        Some("error=\"insufficient_scope\""),
    );
    assert_eq!(s.h.upstream.count(), 0);
}

/// 404 (no route), 400 (malformed path) and 503 (IdP failing) reach the
/// client as such; under nginx via the shipped @scopegate_denied mapping.
async fn other_denials_keep_their_status(kind: Kind) {
    let Some(s) = Setup::new(kind, TRUSTED).await else {
        return;
    };
    let auth = s.h.bearer("message admin");
    let r = s.send("GET", "/nowhere", &[("Authorization", &auth)]).await;
    assert_denied(&s, &r, 404, "not_found", None);
    let r = s
        .send("POST", "/api/messages", &[("Authorization", &auth)])
        .await;
    assert_denied(&s, &r, 404, "not_found", None);
    let r = s
        .send("GET", "/api/messages%2F1", &[("Authorization", &auth)])
        .await;
    assert_denied(&s, &r, 400, "invalid_request", None);

    s.h.idp
        .set_mode_for(Endpoint::Introspection, Some(Mode::Status(500)));
    let r = s
        .send(
            "GET",
            "/api/messages",
            &[("Authorization", "Bearer opaque-token-1")],
        )
        .await;
    assert_denied(&s, &r, 503, "temporarily_unavailable", None);
    assert!(
        r.header("retry-after").is_some(),
        "{}: Retry-After: {:?}",
        s.proxy.name,
        r.headers
    );
    assert_eq!(s.h.upstream.count(), 0);
}

/// `/public/../api/messages` is authorized as `/api/messages`: the gateway
/// normalizes the same raw target the proxy forwards.
async fn path_tricks_are_normalized(kind: Kind) {
    let Some(s) = Setup::new(kind, TRUSTED).await else {
        return;
    };
    for trick in [
        "/public/../api/messages",
        "/public/%2e%2e/api/messages",
        "/public/./../api/messages",
        "//api//messages",
        "/public/x/../../api/messages",
    ] {
        let r = s.send("GET", trick, &[]).await;
        s.expect(&r, 401, trick);
        assert_eq!(
            s.h.upstream.count(),
            0,
            "{trick} must not reach the upstream"
        );
    }
    let r = s
        .send(
            "GET",
            "/public/../api/messages",
            &[("Authorization", &s.h.bearer("message"))],
        )
        .await;
    s.expect(&r, 200, "the trick with a valid token");
    let seen = s.h.upstream.last().unwrap();
    assert_eq!(seen.header_all("x-auth-subject"), ["user-123"]);
    // Both proxies, as configured, forward the raw target: the very bytes
    // scopegate normalized and authorized.
    assert_eq!(
        seen.path_and_query, "/public/../api/messages",
        "{} forwarded another form than it had authorized",
        s.proxy.name
    );
    assert_eq!(
        scopegate::route::normalize(&seen.path_and_query)
            .as_deref()
            .ok(),
        Some("/api/messages"),
        "{} forwarded {:?}",
        s.proxy.name,
        seen.path_and_query
    );
}

/// No identity header, or only empty ones (Caddy forwards the empty values
/// scopegate answers with on public routes): never a value the client chose.
fn no_identity(s: &Setup, seen: &support::RecordedRequest) {
    for name in [
        "x-auth-subject",
        "x-auth-scopes",
        "x_auth_subject",
        "x_auth_scopes",
    ] {
        assert!(
            seen.header_all(name).iter().all(|v| v.is_empty()),
            "{}: forged identity reached the upstream: {:?}",
            s.proxy.name,
            seen.headers
        );
    }
}

async fn forged_identity_headers_never_reach_upstream(kind: Kind) {
    let Some(s) = Setup::new(kind, TRUSTED).await else {
        return;
    };
    let forged = [
        ("X-Auth-Subject", "admin"),
        ("X-Auth-Scopes", "admin message"),
    ];
    let r = s.send("GET", "/public/info", &forged).await;
    s.expect(&r, 200, "public route with forged identity");
    no_identity(&s, &s.h.upstream.last().unwrap());
    // The `_` spellings, which many app servers read as the `-` ones.
    let underscored = [("X_Auth_Subject", "admin"), ("x_auth_scopes", "admin")];
    let r = s.send("GET", "/public/info", &underscored).await;
    s.expect(&r, 200, "public route with `_` spellings");
    no_identity(&s, &s.h.upstream.last().unwrap());

    let auth = s.h.bearer("message");
    let r = s
        .send(
            "GET",
            "/api/messages",
            &[forged[0], forged[1], ("Authorization", &auth)],
        )
        .await;
    s.expect(&r, 200, "protected route with forged identity");
    let seen = s.h.upstream.last().unwrap();
    assert_eq!(seen.header_all("x-auth-subject"), ["user-123"]);
    assert_eq!(seen.header_all("x-auth-scopes"), ["message"]);
}

/// The client's own X-Original-* / X-Forwarded-* never choose what is authorized.
async fn client_cannot_name_the_authorized_request(kind: Kind) {
    let Some(s) = Setup::new(kind, TRUSTED).await else {
        return;
    };
    let forged = [
        ("X-Forwarded-Uri", "/public/x"),
        ("X-Forwarded-Method", "GET"),
        ("X-Original-URI", "/public/x"),
        ("X-Original-Method", "GET"),
        ("X-Original-URL", "http://127.0.0.1/public/x"),
    ];
    let r = s.send("GET", "/api/messages", &forged).await;
    assert_denied(&s, &r, 401, "unauthorized", Some(""));
    // A method-specific route: DELETE needs admin, whatever the client claims.
    let mut headers = forged.to_vec();
    let auth = s.h.bearer("message");
    headers.push(("Authorization", &auth));
    let r = s.send("DELETE", "/api/messages/1", &headers).await;
    assert_denied(
        &s,
        &r,
        403,
        "insufficient_scope",
        Some("insufficient_scope"),
    );
    assert_eq!(s.h.upstream.count(), 0);
}

async fn untrusted_peer_is_403_never_evaluated(kind: Kind) {
    let Some(s) = Setup::new(kind, UNTRUSTED).await else {
        return;
    };
    let r = s.send("GET", "/public/info", &[]).await;
    assert_denied(&s, &r, 403, "forbidden", None);
    let r = s
        .send(
            "GET",
            "/api/messages",
            &[("Authorization", &s.h.bearer("message"))],
        )
        .await;
    assert_denied(&s, &r, 403, "forbidden", None);
    assert_eq!(s.h.upstream.count(), 0);
    assert_eq!(s.h.idp.introspection_requests(), 0);
}

/// scopegate down: the proxy fails closed (nginx 500, Caddy 502), nothing is forwarded.
async fn gateway_unreachable_fails_closed(kind: Kind) {
    let Some(_) = require(match kind {
        Kind::Nginx => "nginx",
        Kind::Caddy => "caddy",
    }) else {
        return;
    };
    let upstream = Upstream::start().await;
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = match kind {
        Kind::Nginx => start_nginx(nobody, upstream.addr()).await,
        Kind::Caddy => start_caddy(nobody, upstream.addr()).await,
    }
    .expect("binary found above");
    let request = build_request("GET", proxy.addr, "/public/info", &[], b"");
    let r = raw_request(proxy.addr, request)
        .await
        .expect("the proxy answers");
    let expected = match kind {
        Kind::Nginx => 500,
        Kind::Caddy => 502,
    };
    assert_eq!(
        r.status,
        expected,
        "{}: {}\n{}",
        proxy.name,
        r.text(),
        proxy.logs()
    );
    if kind == Kind::Nginx {
        assert_eq!(r.json()["error"], "internal_error");
    }
    assert_eq!(upstream.count(), 0);
}

macro_rules! per_proxy {
    ($($check:ident),* $(,)?) => {
        mod nginx {
            $(#[tokio::test]
            async fn $check() {
                super::$check(super::Kind::Nginx).await;
            })*
        }
        mod caddy {
            $(#[tokio::test]
            async fn $check() {
                super::$check(super::Kind::Caddy).await;
            })*
        }
    };
}

per_proxy!(
    allowed_request_reaches_upstream_with_identity,
    missing_or_invalid_token_is_401_with_challenge,
    wrong_scope_is_403,
    other_denials_keep_their_status,
    path_tricks_are_normalized,
    forged_identity_headers_never_reach_upstream,
    client_cannot_name_the_authorized_request,
    untrusted_peer_is_403_never_evaluated,
    gateway_unreachable_fails_closed,
);

// ---------------------------------------------------------------- emulated proxies
//
// Not in Debian, so their auth requests are written out as their docs
// describe them and sent straight to the forward-auth listener.

/// Traefik ForwardAuth: `GET` on the configured address with the client's
/// headers (all of them, unless `authRequestHeaders` narrows them) plus
/// X-Forwarded-Method/-Proto/-Host/-Uri/-For, which Traefik sets itself
/// (`trustForwardHeader: false` replaces the client's copies).
fn traefik_request(h: &Harness, method: &str, uri: &str, client: &[(&str, &str)]) -> Vec<u8> {
    let mut headers = vec![
        ("User-Agent", "curl/8.5.0"),
        ("Accept", "*/*"),
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "orders.example.com"),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Accept-Encoding", "gzip"),
    ];
    headers.extend_from_slice(client);
    build_request("GET", h.fa(), "/verify", &headers, b"")
}

/// Envoy ext_authz (HTTP service, `path_prefix: /envoy`): the original
/// method, `path_prefix` + the original path and query, the original Host,
/// the headers `allowed_headers` admits (here `authorization`), an empty body
/// with `content-length: 0`, and Envoy's own `x-envoy-*` headers.
fn envoy_request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "{method} /envoy{path} HTTP/1.1\r\nhost: orders.example.com\r\ncontent-length: 0\r\n\
         x-envoy-expected-rq-timeout-ms: 1000\r\nx-forwarded-proto: https\r\n\
         x-request-id: 6e3f2a1c-0b7d-4f7e-9a51-2c1d0e9b8a77\r\n"
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

async fn send_fa(h: &Harness, request: Vec<u8>) -> RawResponse {
    raw_request(h.fa(), request)
        .await
        .expect("forward-auth answers")
}

fn assert_direct_denial(r: &RawResponse, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], error, "{}", r.text());
}

#[tokio::test]
async fn traefik_forward_auth_emulated() {
    let h = Harness::start(TRUSTED).await;
    let auth = h.bearer("message");
    let r = send_fa(
        &h,
        traefik_request(&h, "GET", "/api/messages?x=1", &[("Authorization", &auth)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-subject"), Some("user-123"));
    assert_eq!(r.header("x-auth-scopes"), Some("message"));
    assert!(r.body.is_empty());

    let r = send_fa(&h, traefik_request(&h, "GET", "/api/messages", &[])).await;
    assert_direct_denial(&r, 401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\"")
    );
    let r = send_fa(
        &h,
        traefik_request(&h, "DELETE", "/api/messages/1", &[("Authorization", &auth)]),
    )
    .await;
    assert_direct_denial(&r, 403, "insufficient_scope");
    let r = send_fa(
        &h,
        traefik_request(&h, "GET", "/public/../api/messages", &[]),
    )
    .await;
    assert_direct_denial(&r, 401, "unauthorized");

    // Public routes: 200 with every identity header present and empty, so
    // authResponseHeaders replaces a client's copy with nothing.
    let r = send_fa(
        &h,
        traefik_request(&h, "GET", "/public/x", &[("X-Auth-Subject", "admin")]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-auth-subject"), Some(""));

    // Traefik passes the client's X-Original-* on: they cannot pick the path
    // or the method.
    let forged = [
        ("X-Original-URI", "/public/x"),
        ("X-Original-Method", "GET"),
    ];
    let r = send_fa(&h, traefik_request(&h, "GET", "/api/messages", &forged)).await;
    assert_direct_denial(&r, 400, "invalid_request");
    let forged = [("X-Original-Method", "GET"), ("Authorization", &auth)];
    let r = send_fa(
        &h,
        traefik_request(&h, "DELETE", "/api/messages/1", &forged),
    )
    .await;
    assert_direct_denial(&r, 400, "invalid_request");
    assert_eq!(h.upstream.count(), 0, "forward-auth never proxies");
}

#[tokio::test]
async fn ingress_nginx_auth_url_emulated() {
    let h = Harness::start(TRUSTED).await;
    let auth = h.bearer("message");
    // ingress-nginx's auth location: X-Original-URL (a full URL) and
    // X-Original-Method, X-Sent-From, X-Real-IP, X-Forwarded-For, plus
    // X-Original-URI from the auth-proxy-set-headers ConfigMap, plus every
    // client header.
    let ingress = |uri: &str, method: &str, client: &[(&str, &str)]| {
        let url = format!("https://orders.example.com{uri}");
        let mut headers: Vec<(String, String)> = vec![
            ("X-Original-URL".into(), url),
            ("X-Original-Method".into(), method.into()),
            ("X-Original-URI".into(), uri.into()),
            ("X-Sent-From".into(), "nginx-ingress-controller".into()),
            ("X-Real-IP".into(), "203.0.113.7".into()),
            ("X-Forwarded-For".into(), "203.0.113.7".into()),
        ];
        headers.extend(client.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        build_request("GET", h.fa(), "/verify", &refs, b"")
    };
    let r = send_fa(
        &h,
        ingress("/api/messages?x=1", "GET", &[("Authorization", &auth)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-subject"), Some("user-123"));
    let r = send_fa(&h, ingress("/api/messages", "GET", &[])).await;
    assert_direct_denial(&r, 401, "unauthorized");
    // A client's X-Forwarded-Uri / -Method, passed on by ingress-nginx.
    let r = send_fa(
        &h,
        ingress("/api/messages", "GET", &[("X-Forwarded-Uri", "/public/x")]),
    )
    .await;
    assert_direct_denial(&r, 400, "invalid_request");
    let forged = [("X-Forwarded-Method", "GET"), ("Authorization", &auth)];
    let r = send_fa(&h, ingress("/api/messages/1", "DELETE", &forged)).await;
    assert_direct_denial(&r, 400, "invalid_request");
}

#[tokio::test]
async fn envoy_ext_authz_emulated() {
    let h = Harness::start(TRUSTED).await;
    let auth = h.bearer("message");
    let r = send_fa(
        &h,
        envoy_request("GET", "/api/messages?x=1", &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-subject"), Some("user-123"));
    assert_eq!(r.header("x-auth-scopes"), Some("message"));
    // HEAD is covered by GET.
    let r = send_fa(
        &h,
        envoy_request("HEAD", "/api/messages", &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(r.status, 200);

    let r = send_fa(&h, envoy_request("GET", "/api/messages", &[])).await;
    assert_direct_denial(&r, 401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\"")
    );
    let r = send_fa(
        &h,
        envoy_request("DELETE", "/api/messages/1", &[("authorization", &auth)]),
    )
    .await;
    assert_direct_denial(&r, 403, "insufficient_scope");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("scope=\"message admin\""));
    let r = send_fa(
        &h,
        envoy_request("POST", "/api/messages", &[("authorization", &auth)]),
    )
    .await;
    assert_direct_denial(&r, 404, "not_found");
    let r = send_fa(&h, envoy_request("GET", "/public/../api/messages", &[])).await;
    assert_direct_denial(&r, 401, "unauthorized");
    let r = send_fa(
        &h,
        envoy_request("GET", "/api/messages%2F1", &[("authorization", &auth)]),
    )
    .await;
    assert_direct_denial(&r, 400, "invalid_request");
    // With allowed_headers letting everything through, the client's
    // X-Forwarded-Uri / X-Original-URI still name nothing: /envoy reads the
    // path from the request line.
    let forged = [
        ("x-forwarded-uri", "/public/x"),
        ("x-original-uri", "/public/x"),
    ];
    let r = send_fa(&h, envoy_request("GET", "/api/messages", &forged)).await;
    assert_direct_denial(&r, 401, "unauthorized");
    let r = send_fa(&h, envoy_request("GET", "/public/x", &[])).await;
    assert_eq!(r.status, 200);

    h.idp
        .set_mode_for(Endpoint::Introspection, Some(Mode::Status(500)));
    let r = send_fa(
        &h,
        envoy_request(
            "GET",
            "/api/messages",
            &[("authorization", "Bearer opaque-1")],
        ),
    )
    .await;
    assert_direct_denial(&r, 503, "temporarily_unavailable");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn emulated_proxies_from_an_untrusted_peer_get_403() {
    let h = Harness::start(UNTRUSTED).await;
    let r = send_fa(&h, envoy_request("GET", "/public/x", &[])).await;
    assert_direct_denial(&r, 403, "forbidden");
    let r = send_fa(&h, traefik_request(&h, "GET", "/public/x", &[])).await;
    assert_direct_denial(&r, 403, "forbidden");
    assert!(r.header("x-auth-subject").is_none());
}
