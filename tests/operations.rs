//! Day-two operations, end to end against real loopback servers: opaque
//! tokens by introspection, live reload (in place, rename, ConfigMap
//! symlink swap, broken files, SIGHUP, per-issuer key caches), TLS (ALPN,
//! certificate reload, https upstreams and issuers), HTTP/2, limits and
//! timeouts, graceful shutdown of the real binary, access log and metrics.

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use scopegate::app::Running;
use support::client::build_keep_alive_request;
use support::idp::{ClientAuth, Mode as IdpMode};
use support::keys::now_secs;
use support::upstream::Mode as UpMode;
use support::{
    build_request, get, raw_request, valid_claims, Alg, Idp, RawConn, TestKey, Upstream,
};

const AUD: &str = "orders-api";

/// For gateways without an issuer.
const PUBLIC_ROUTES: &str = "routes:\n  - path: /public/**\n    public: true\n";

const ROUTES: &str = r#"
routes:
  - path: /public/**
    public: true
  - path: /api/messages
    methods: [GET]
    scopes: [message]
  - path: /api/**
"#;

// ---------------------------------------------------------------- helpers

/// Polls `check` every 25 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn issuer_block(idp: &Idp) -> String {
    format!(
        "  - issuer: {}\n    audiences: [{AUD}]\n    algorithms: [ES256, RS256]\n",
        idp.issuer()
    )
}

/// A config for the library API: ephemeral ports.
fn config_text(issuers: &str, upstream: &str, extra: &str, routes: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: {upstream}\nissuers:\n{issuers}\n{extra}\n{routes}\n"
    )
}

async fn start_text(text: &str) -> Running {
    let config = scopegate::config::from_yaml(text, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("test config does not load:\n{e}\n{text}"));
    scopegate::app::start(config).await.expect("gateway starts")
}

/// Starts the gateway from a file and watches that file.
async fn start_file(path: &Path) -> Running {
    let config =
        scopegate::config::load(path).unwrap_or_else(|e| panic!("test config does not load:\n{e}"));
    let mut running = scopegate::app::start(config).await.expect("gateway starts");
    running.watch(path.to_path_buf());
    running
}

async fn wait_ready(gw: &Running) {
    assert!(
        eventually(Duration::from_secs(5), || async { gw.gateway.is_ready() }).await,
        "gateway did not become ready"
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn get_auth(addr: SocketAddr, path: &str, token: &str) -> support::RawResponse {
    get(addr, path, &[("Authorization", &bearer(token))]).await
}

async fn metrics(admin: SocketAddr) -> String {
    get(admin, "/metrics", &[]).await.text()
}

/// The value of one metric line (`name{labels}`), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `text` to `path` through a temporary file and `rename` (what
/// editors and config managers do).
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------- the real binary

/// `scopegate run` as a child process, its stderr collected line by line.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    proxy: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// `body` is the config without `listen`/`admin_listen` (free ports are
    /// picked and prepended).
    async fn start(body: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let config = dir.path().join("routes.yaml");
        std::fs::write(&config, Self::text(proxy, admin, body)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(args)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .env_remove("SCOPEGATE_LOG")
            .env_remove("SCOPEGATE_LOG_FORMAT")
            .env_remove("SCOPEGATE_ACCESS_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scopegate");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut p = Proc {
            child,
            stderr,
            proxy,
            admin,
            config,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(10), || async {
            raw_request(admin, build_request("GET", admin, "/healthz", &[], b""))
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        if !up {
            let _ = p.child.kill();
            panic!("scopegate did not come up:\n{}", p.log());
        }
        p
    }

    fn text(proxy: SocketAddr, admin: SocketAddr, body: &str) -> String {
        format!("listen: {proxy}\nadmin_listen: {admin}\n{body}")
    }

    /// Replaces the config (same listeners) atomically, so that the poll
    /// never reads a half-written file and the reload counts are exact.
    fn write_config(&self, body: &str) {
        replace_file(&self.config, &Self::text(self.proxy, self.admin, body));
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    async fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        eventually(limit, || async { self.log().contains(needle) }).await
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- introspection

fn introspection_block(idp: &Idp, method: &str, secret: &str) -> String {
    format!(
        "introspection:\n  endpoint: {}\n  client_id: {}\n  client_secret: {secret}\n  auth_method: {method}\n  cache_ttl: 60s\ntimeouts:\n  idp: 1s\n",
        idp.introspection_endpoint(),
        Idp::CLIENT_ID,
    )
}

fn active(scope: &str, exp_in: i64) -> Value {
    json!({"active": true, "scope": scope, "sub": "svc-7", "client_id": "batch", "exp": now_secs() + exp_in})
}

async fn introspection_gateway(method: &str) -> (Running, Idp, Upstream) {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let text = config_text(
        "  []",
        &upstream.url(),
        &introspection_block(&idp, method, Idp::CLIENT_SECRET),
        ROUTES,
    )
    .replace("issuers:\n  []", "issuers: []");
    let gw = start_text(&text).await;
    wait_ready(&gw).await;
    (gw, idp, upstream)
}

#[tokio::test]
async fn introspection_basic_forwards_identity_and_caches() {
    let (gw, idp, upstream) = introspection_gateway("client_secret_basic").await;
    idp.set_introspection("opaque-token-1", active("message email", 600));
    let r = get_auth(gw.proxy_addr, "/api/messages", "opaque-token-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.last().unwrap();
    assert_eq!(seen.header("x-auth-subject"), Some("svc-7"));
    assert_eq!(seen.header("x-auth-scopes"), Some("message email"));
    let calls = idp.introspection_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].auth,
        ClientAuth::Basic {
            client_id: Idp::CLIENT_ID.into(),
            secret: Idp::CLIENT_SECRET.into()
        }
    );
    assert_eq!(calls[0].token.as_deref(), Some("opaque-token-1"));
    assert!(calls[0].authorized);

    // Served from the cache: no second introspection; the scope check still runs.
    let r = get_auth(gw.proxy_addr, "/api/messages", "opaque-token-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(idp.introspection_requests(), 1);
    let r = get_auth(gw.proxy_addr, "/api/other", "opaque-token-1").await;
    assert_eq!(r.status, 200);
    idp.set_introspection("opaque-token-2", active("email", 600));
    let r = get_auth(gw.proxy_addr, "/api/messages", "opaque-token-2").await;
    assert_eq!(r.status, 403);
    assert_eq!(idp.introspection_requests(), 2);
    let m = metrics(gw.admin_addr).await;
    assert!(
        metric(&m, "scopegate_token_cache_requests_total{result=\"hit\"}") >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "scopegate_introspection_requests_total{result=\"ok\"}") >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn introspection_client_secret_post() {
    let (gw, idp, _upstream) = introspection_gateway("client_secret_post").await;
    idp.set_introspection("opaque-post", active("message", 600));
    let r = get_auth(gw.proxy_addr, "/api/messages", "opaque-post").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let calls = idp.introspection_calls();
    assert_eq!(
        calls[0].auth,
        ClientAuth::Post {
            client_id: Idp::CLIENT_ID.into(),
            secret: Idp::CLIENT_SECRET.into()
        }
    );
    assert_eq!(
        calls[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn introspection_inactive_or_expired_is_401() {
    let (gw, idp, upstream) = introspection_gateway("client_secret_basic").await;
    idp.set_introspection("inactive", json!({"active": false}));
    idp.set_introspection("expired", active("message", -60));
    for token in ["inactive", "expired", "never-issued"] {
        let r = get_auth(gw.proxy_addr, "/api/messages", token).await;
        assert_eq!(r.status, 401, "{token}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_token");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn introspection_failures_are_503_and_never_cached() {
    let (gw, idp, _upstream) = introspection_gateway("client_secret_basic").await;
    let addr = gw.proxy_addr;
    for (i, case) in [
        "refused",
        "dropped",
        "500",
        "wrong secret",
        "garbage",
        "slow",
    ]
    .into_iter()
    .enumerate()
    {
        let token = format!("opaque-case-{i}");
        idp.set_introspection(&token, active("message", 600));
        match case {
            "refused" => idp.down().await,
            "dropped" => idp.set_mode(IdpMode::Down),
            "500" => idp.set_mode(IdpMode::Status(500)),
            "wrong secret" => idp.set_client_credentials(Idp::CLIENT_ID, "rotated-secret"),
            "garbage" => idp.set_mode(IdpMode::Garbage),
            _ => idp.set_mode(IdpMode::Slow(Duration::from_secs(3))),
        }
        let r = get_auth(addr, "/api/messages", &token).await;
        assert_eq!(r.status, 503, "{case}: {}", r.text());
        assert_eq!(r.json()["error"], "temporarily_unavailable", "{case}");
        let retry: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(retry >= 1);
        assert!(!r.text().contains(Idp::CLIENT_SECRET), "{case}");
        assert!(!r.text().contains(&token), "{case}");
        // Recovery: the very next request asks again and succeeds.
        idp.up().await;
        idp.set_mode(IdpMode::Up);
        idp.set_client_credentials(Idp::CLIENT_ID, Idp::CLIENT_SECRET);
        let before = idp.introspection_requests();
        let r = get_auth(addr, "/api/messages", &token).await;
        assert_eq!(r.status, 200, "{case} after recovery: {}", r.text());
        assert_eq!(
            idp.introspection_requests(),
            before + 1,
            "{case}: the failure was not cached"
        );
    }
}

#[tokio::test]
async fn client_secret_and_tokens_never_reach_the_logs() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let secret = "s3cr3t-do-not-log-4711";
    idp.set_client_credentials(Idp::CLIENT_ID, secret);
    idp.set_introspection("opaque-logged-1", active("message", 600));
    let body = format!(
        "upstream: {}\nissuers: []\n{}{ROUTES}",
        upstream.url(),
        introspection_block(&idp, "client_secret_basic", "${INTRO_SECRET}")
    );
    let p = Proc::start(
        &body,
        &["--log", "debug", "--access-log"],
        &[("INTRO_SECRET", secret)],
    )
    .await;
    let r = get_auth(p.proxy, "/api/messages", "opaque-logged-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The IdP refuses our credentials, then answers garbage: 503s, logged.
    idp.set_client_credentials(Idp::CLIENT_ID, "rotated");
    let r = get_auth(p.proxy, "/api/messages", "opaque-logged-2").await;
    assert_eq!(r.status, 503);
    assert!(!r.text().contains(secret));
    idp.set_mode(IdpMode::Garbage);
    let r = get_auth(p.proxy, "/api/messages", "opaque-logged-3").await;
    assert_eq!(r.status, 503);
    assert!(!r.text().contains(secret));
    assert!(p.wait_log("introspection", Duration::from_secs(2)).await);
    let log = p.log();
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{secret}", Idp::CLIENT_ID));
    assert!(!log.contains(secret), "secret in the log:\n{log}");
    assert!(
        !log.contains(&basic),
        "Basic credentials in the log:\n{log}"
    );
    for token in ["opaque-logged-1", "opaque-logged-2", "opaque-logged-3"] {
        assert!(!log.contains(token), "token in the log:\n{log}");
    }
    assert!(log.contains("DEBUG"), "debug logging was on:\n{log}");
}

// ---------------------------------------------------------------- reload

fn reload_config(upstream: &Upstream, extra_routes: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: {}\nissuers: []\nroutes:\n  - path: /public/**\n    public: true\n{extra_routes}",
        upstream.url()
    )
}

const EXTRA: &str = "  - path: /extra/**\n    public: true\n";

async fn status(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path, &[]).await.status
}

async fn becomes(addr: SocketAddr, path: &str, want: u16) -> bool {
    eventually(Duration::from_millis(2500), || async {
        status(addr, path).await == want
    })
    .await
}

#[tokio::test]
async fn reload_sees_in_place_edits_and_renames() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, reload_config(&upstream, "")).unwrap();
    let gw = start_file(&path).await;
    let addr = gw.proxy_addr;
    assert_eq!(status(addr, "/extra/x").await, 404);

    // In place (truncate + write, same inode).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    std::fs::write(&path, reload_config(&upstream, EXTRA)).unwrap();
    assert!(becomes(addr, "/extra/x", 200).await, "in-place edit seen");
    assert!(started.elapsed() < Duration::from_millis(2500));

    // A new file renamed over the old one.
    replace_file(&path, &reload_config(&upstream, ""));
    assert!(becomes(addr, "/extra/x", 404).await, "rename seen");
    let m = metrics(gw.admin_addr).await;
    // At least the two edits (an in-place write read half-way is one more).
    assert!(
        metric(&m, "scopegate_config_reloads_total{result=\"ok\"}") >= 2.0,
        "{m}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn reload_sees_a_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let upstream = Upstream::start().await;
    // What the kubelet lays out: routes.yaml -> ..data/routes.yaml,
    // ..data -> ..2026_01_01_00_00_00.1, swapped by renaming a new symlink.
    std::fs::create_dir(d.join("..2026_01_01_00_00_00.1")).unwrap();
    std::fs::write(
        d.join("..2026_01_01_00_00_00.1/routes.yaml"),
        reload_config(&upstream, ""),
    )
    .unwrap();
    symlink("..2026_01_01_00_00_00.1", d.join("..data")).unwrap();
    symlink("..data/routes.yaml", d.join("routes.yaml")).unwrap();
    let gw = start_file(&d.join("routes.yaml")).await;
    assert_eq!(status(gw.proxy_addr, "/extra/x").await, 404);

    std::fs::create_dir(d.join("..2026_01_01_00_05_00.2")).unwrap();
    std::fs::write(
        d.join("..2026_01_01_00_05_00.2/routes.yaml"),
        reload_config(&upstream, EXTRA),
    )
    .unwrap();
    symlink("..2026_01_01_00_05_00.2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_01_01_00_00_00.1")).unwrap();
    assert!(
        becomes(gw.proxy_addr, "/extra/x", 200).await,
        "symlink swap seen"
    );
}

#[tokio::test]
async fn request_in_flight_finishes_on_the_old_table() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream
        .set_mode(UpMode::Slow(Duration::from_millis(1500)))
        .await;
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, reload_config(&upstream, EXTRA)).unwrap();
    let gw = start_file(&path).await;
    let addr = gw.proxy_addr;
    let in_flight = tokio::spawn(async move { status(addr, "/extra/slow").await });
    upstream.wait_for_requests(1).await;
    // The route disappears while the request is at the upstream.
    std::fs::write(&path, reload_config(&upstream, "")).unwrap();
    upstream.set_mode(UpMode::Echo).await;
    assert!(becomes(addr, "/extra/x", 404).await);
    assert_eq!(in_flight.await.unwrap(), 200, "finished on the old table");
}

#[tokio::test]
async fn reload_fetches_a_new_issuer_and_keeps_unchanged_issuers_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key1 = TestKey::generate(Alg::ES256, "one");
    let key2 = TestKey::generate(Alg::ES256, "two");
    let idp1 = Idp::start_with_keys(&[&key1]).await;
    let idp2 = Idp::start_with_keys(&[&key2]).await;
    let upstream = Upstream::start().await;
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        config_text(&issuer_block(&idp1), &upstream.url(), "", ROUTES),
    )
    .unwrap();
    let gw = start_file(&path).await;
    wait_ready(&gw).await;
    let claims1 = valid_claims(&idp1.issuer(), AUD, "message", Duration::from_secs(600));
    let token1 = key1.sign(&claims1);
    assert_eq!(
        get_auth(gw.proxy_addr, "/api/messages", &token1)
            .await
            .status,
        200
    );
    let token2 = key2.sign(&valid_claims(
        &idp2.issuer(),
        AUD,
        "message",
        Duration::from_secs(600),
    ));
    assert_eq!(
        get_auth(gw.proxy_addr, "/api/messages", &token2)
            .await
            .status,
        401
    );
    let jwks1 = idp1.jwks_requests();
    let hits = metric(
        &metrics(gw.admin_addr).await,
        "scopegate_token_cache_requests_total{result=\"hit\"}",
    );

    // Add an issuer and change an unrelated setting.
    let issuers = format!("{}{}", issuer_block(&idp1), issuer_block(&idp2));
    std::fs::write(
        &path,
        config_text(
            &issuers,
            &upstream.url(),
            "timeouts:\n  upstream_response: 20s\n",
            ROUTES,
        ),
    )
    .unwrap();
    let addr = gw.proxy_addr;
    assert!(
        eventually(Duration::from_secs(3), || async {
            get_auth(addr, "/api/messages", &token2).await.status == 200
        })
        .await,
        "the new issuer's keys were fetched"
    );
    assert!(idp2.jwks_requests() >= 1);
    assert!(gw.gateway.is_ready());
    // The unchanged issuer: no refetch, and its cached token is still a hit.
    assert_eq!(get_auth(addr, "/api/messages", &token1).await.status, 200);
    assert_eq!(
        idp1.jwks_requests(),
        jwks1,
        "unchanged issuer not refetched"
    );
    let m = metrics(gw.admin_addr).await;
    assert!(
        metric(&m, "scopegate_token_cache_requests_total{result=\"hit\"}") > hits,
        "{m}"
    );
    // A fresh token of the unchanged issuer verifies with the kept keys.
    let fresh = key1.sign(&valid_claims(
        &idp1.issuer(),
        AUD,
        "message email",
        Duration::from_secs(600),
    ));
    assert_eq!(get_auth(addr, "/api/messages", &fresh).await.status, 200);
    assert_eq!(idp1.jwks_requests(), jwks1);

    // Changing that issuer's own settings does refetch.
    let changed = issuer_block(&idp1).replace("[ES256, RS256]", "[ES256]");
    std::fs::write(
        &path,
        config_text(
            &format!("{changed}{}", issuer_block(&idp2)),
            &upstream.url(),
            "",
            ROUTES,
        ),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            idp1.jwks_requests() > jwks1
        })
        .await,
        "a changed issuer starts afresh"
    );
    assert_eq!(get_auth(addr, "/api/messages", &token1).await.status, 200);
}

#[tokio::test]
async fn binary_broken_reload_keeps_the_old_table_and_sighup_forces_one() {
    let upstream = Upstream::start().await;
    let good = |extra: &str| {
        format!(
            "upstream: {}\nissuers: []\nroutes:\n  - path: /public/**\n    public: true\n{extra}",
            upstream.url()
        )
    };
    let p = Proc::start(&good(EXTRA), &[], &[]).await;
    assert_eq!(status(p.proxy, "/extra/x").await, 200);

    // Line 6 (after listen, admin_listen, upstream, issuers, routes) col 5: a typo.
    p.write_config(&format!("{}  - pathh: /typo\n", good("")));
    let file = p.config.display().to_string();
    assert!(
        p.wait_log(&format!("reload rejected: {file}:"), Duration::from_secs(3))
            .await,
        "{}",
        p.log()
    );
    let line = p
        .log()
        .lines()
        .find(|l| l.contains("reload rejected"))
        .unwrap()
        .to_owned();
    let at = line.split(&format!("{file}:")).nth(1).unwrap();
    let mut pos = at.split(':');
    let (l, c): (u32, u32) = (
        pos.next().unwrap().parse().unwrap(),
        pos.next().unwrap().parse().unwrap(),
    );
    assert!(l >= 1 && c >= 1, "{line}");
    assert_eq!(l, 8, "{line}");
    // The old table keeps serving.
    assert_eq!(status(p.proxy, "/extra/x").await, 200);
    let m = metrics(p.admin).await;
    assert_eq!(
        metric(&m, "scopegate_config_reloads_total{result=\"error\"}"),
        1.0,
        "{m}"
    );

    // Fixed: picked up by the poll.
    p.write_config(&good(""));
    assert!(becomes(p.proxy, "/extra/x", 404).await);
    let ok = metric(
        &metrics(p.admin).await,
        "scopegate_config_reloads_total{result=\"ok\"}",
    );
    assert_eq!(ok, 1.0);

    // SIGHUP reloads although nothing changed.
    p.signal("HUP");
    assert!(
        p.wait_log("SIGHUP: reloading", Duration::from_secs(2))
            .await
    );
    let admin = p.admin;
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(
                &metrics(admin).await,
                "scopegate_config_reloads_total{result=\"ok\"}",
            ) == 2.0
        })
        .await
    );
    assert_eq!(status(p.proxy, "/public/x").await, 200, "still serving");
}

// ---------------------------------------------------------------- TLS

/// A test CA and leaf certificates for 127.0.0.1 and localhost.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "scopegate test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { ca, ca_key, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf (cert PEM, key PEM, cert DER) named `cn`.
    fn leaf(&self, cn: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Writes a leaf to `name.crt` / `name.key`; returns the paths and DER.
    fn write_leaf(&self, name: &str, cn: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let (cert, key, der) = self.leaf(cn);
        let (c, k) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&k, key).unwrap();
        std::fs::write(&c, cert).unwrap();
        (c, k, der)
    }

    fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        self.connector(alpn)
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }
}

fn peer_cert(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1_over<S>(io: S) -> H1Sender
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(sender: &mut H1Sender, path: &str) -> (u16, Vec<u8>) {
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

async fn tls_gateway(pki: &Pki, upstream: &Upstream) -> (Running, PathBuf, PathBuf, Vec<u8>) {
    let (cert, key, der) = pki.write_leaf("server", "first");
    let extra = format!(
        "tls:\n  cert: {}\n  key: {}\n",
        cert.display(),
        key.display()
    );
    let gw = start_text(
        &config_text("  []", &upstream.url(), &extra, PUBLIC_ROUTES)
            .replace("issuers:\n  []", "issuers: []"),
    )
    .await;
    (gw, cert, key, der)
}

#[tokio::test]
async fn tls_http1_and_h2_by_alpn() {
    let pki = Pki::new();
    let upstream = Upstream::start().await;
    let (gw, _, _, der) = tls_gateway(&pki, &upstream).await;

    let stream = pki.connect(gw.proxy_addr, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(&stream), der);
    let mut h1 = h1_over(stream).await;
    let (status, _) = send(&mut h1, "/public/one").await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.last().unwrap().header("x-forwarded-proto"),
        Some("https")
    );

    let stream = pki.connect(gw.proxy_addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(format!(
        "https://localhost:{}/public/two",
        gw.proxy_addr.port()
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let seen = upstream.last().unwrap();
    assert_eq!(seen.path_and_query, "/public/two");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // Plain HTTP on the TLS port does not get through.
    let r = raw_request(
        gw.proxy_addr,
        build_request("GET", gw.proxy_addr, "/public/x", &[], b""),
    )
    .await;
    assert!(r.is_err() || r.unwrap().status != 200);
}

#[tokio::test]
async fn tls_certificate_files_are_reloaded() {
    let pki = Pki::new();
    let upstream = Upstream::start().await;
    let (gw, cert, key, first) = tls_gateway(&pki, &upstream).await;
    let old = pki.connect(gw.proxy_addr, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&old), first);
    let mut old = h1_over(old).await;
    assert_eq!(send(&mut old, "/public/a").await.0, 200);

    // Renew: new key and certificate written over the old files.
    let (new_cert, new_key, second) = pki.leaf("second");
    std::fs::write(&key, new_key).unwrap();
    std::fs::write(&cert, new_cert).unwrap();
    let addr = gw.proxy_addr;
    let pki_ref = &pki;
    let second_ref = &second;
    assert!(
        eventually(Duration::from_secs(3), || async move {
            peer_cert(&pki_ref.connect(addr, &[b"http/1.1"]).await) == *second_ref
        })
        .await,
        "new handshakes present the new certificate"
    );
    // The connection made before the renewal keeps working.
    assert_eq!(send(&mut old, "/public/b").await.0, 200);

    // A broken pair is refused; the current certificate keeps serving.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(peer_cert(&pki.connect(addr, &[b"http/1.1"]).await), second);
}

/// A TLS terminator in front of a plain loopback server (the test IdP and
/// upstream speak plain HTTP).
async fn tls_front(pki: &Pki, target: SocketAddr) -> SocketAddr {
    let (_, key, der) = pki.leaf("front");
    let certs = vec![rustls_pki_types::CertificateDer::from(der)];
    let key: rustls_pki_types::PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_and_https_issuer_with_ca_file() {
    let pki = Pki::new();
    let key = TestKey::generate(Alg::ES256, "tls-key");
    let idp = Idp::start_with_keys(&[&key]).await;
    let upstream = Upstream::start().await;
    let idp_front = tls_front(&pki, idp.addr()).await;
    let up_front = tls_front(&pki, upstream.addr()).await;
    let issuer = format!("https://127.0.0.1:{}", idp_front.port());
    idp.set_discovery(Some(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
    })));
    let text = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: https://127.0.0.1:{}\nca_file: {}\nissuers:\n  - issuer: {issuer}\n    audiences: [{AUD}]\n    algorithms: [ES256]\n{ROUTES}",
        up_front.port(),
        pki.ca_file().display()
    );
    let gw = start_text(&text).await;
    wait_ready(&gw).await;
    assert!(idp.discovery_requests() >= 1 && idp.jwks_requests() >= 1);
    let token = key.sign(&valid_claims(
        &issuer,
        AUD,
        "message",
        Duration::from_secs(600),
    ));
    let r = get_auth(gw.proxy_addr, "/api/messages", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.last().unwrap().path_and_query, "/api/messages");

    // Without the CA the same issuer is not trusted.
    let untrusted = text.replace(&format!("ca_file: {}\n", pki.ca_file().display()), "");
    let gw2 = start_text(&untrusted).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!gw2.gateway.is_ready());
    let r = get(gw2.proxy_addr, "/public/x", &[]).await;
    assert_eq!(
        r.status,
        502,
        "upstream certificate not trusted: {}",
        r.text()
    );
}

// ---------------------------------------------------------------- HTTP/2

#[tokio::test]
async fn h2c_prior_knowledge_with_a_body_and_concurrent_streams() {
    let key = TestKey::generate(Alg::ES256, "k");
    let idp = Idp::start_with_keys(&[&key]).await;
    let upstream = Upstream::start().await;
    let gw = start_text(&config_text(
        &issuer_block(&idp),
        &upstream.url(),
        "",
        ROUTES,
    ))
    .await;
    wait_ready(&gw).await;
    let token = key.sign(&valid_claims(
        &idp.issuer(),
        AUD,
        "message",
        Duration::from_secs(600),
    ));
    let tcp = TcpStream::connect(gw.proxy_addr).await.unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let base = format!("http://{}", gw.proxy_addr);

    let mut sender = h2.clone();
    let request = http::Request::post(format!("{base}/api/upload?x=1"))
        .header("authorization", bearer(&token))
        .body(Full::new(Bytes::from_static(b"hello over h2c")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let seen = upstream.last().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/api/upload?x=1");
    assert_eq!(seen.body_text(), "hello over h2c");
    assert_eq!(seen.header("x-auth-subject"), Some("user-123"));

    let mut streams = Vec::new();
    for i in 0..20 {
        let mut sender = h2.clone();
        let uri = format!("{base}/api/messages?i={i}");
        let auth = bearer(&token);
        streams.push(tokio::spawn(async move {
            let request = http::Request::get(uri)
                .header("authorization", auth)
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender
                .send_request(request)
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for s in streams {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(upstream.count(), 21);
    // A denied stream does not hurt the connection.
    let mut sender = h2.clone();
    let r = sender
        .send_request(
            http::Request::get(format!("{base}/api/messages"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(gw_status_h2(&mut h2.clone(), &base).await, 200);

    // A Host header beside :authority must name the same host (RFC 9113
    // §8.3.1): upstream, over HTTP/1.1, only one of them would survive.
    let before = upstream.count();
    for (host, status) in [
        ("other.example", 400),
        (gw.proxy_addr.to_string().as_str(), 200),
    ] {
        let r = h2
            .clone()
            .send_request(
                http::Request::get(format!("{base}/api/messages"))
                    .header("authorization", bearer(&token))
                    .header("host", host)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), status, "Host: {host}");
    }
    assert_eq!(upstream.count(), before + 1);
    assert_eq!(
        upstream.last().unwrap().header_all("host"),
        [gw.proxy_addr.to_string().as_str()]
    );
}

async fn gw_status_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    base: &str,
) -> u16 {
    sender
        .send_request(
            http::Request::get(format!("{base}/public/again"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Writes the first `at` bytes of the connection, pauses, then the rest.
struct PausedAfter {
    inner: TcpStream,
    at: usize,
    written: usize,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for PausedAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PausedAfter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.written < this.at {
            let part = &buf[..buf.len().min(this.at - this.written)];
            let n = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_write(cx, part))?;
            this.written += n;
            if this.written == this.at {
                this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(150))));
            }
            return Poll::Ready(Ok(n));
        }
        if let Some(pause) = this.pause.as_mut() {
            std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
            this.pause = None;
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The protocol is read from the first bytes without consuming them: a
/// client whose opening is cut short after a prefix of the HTTP/2 preface
/// is still served, in HTTP/2 when the rest is the preface and in HTTP/1
/// when it is not ("P" then "OST").
#[tokio::test]
async fn protocol_is_chosen_when_the_opening_bytes_arrive_in_pieces() {
    let (gw, upstream) = limits_gateway("").await;
    let base = format!("http://{}", gw.proxy_addr);

    let tcp = TcpStream::connect(gw.proxy_addr).await.unwrap();
    let split = PausedAfter {
        inner: tcp,
        at: 10,
        written: 0,
        pause: None,
    };
    let started = Instant::now();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(split))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = h2
        .send_request(
            http::Request::get(format!("{base}/public/split-h2"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(upstream.last().unwrap().path_and_query, "/public/split-h2");

    let mut conn = RawConn::connect(gw.proxy_addr).await.unwrap();
    conn.write(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let rest = format!(
        "OST /public/split-h1 HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\n\r\nhi",
        gw.proxy_addr
    );
    let r = conn.request(rest.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = upstream.last().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path_and_query, "/public/split-h1");
    assert_eq!(seen.body_text(), "hi");
    assert_eq!(upstream.count(), 2);
}

// ---------------------------------------------------------------- limits

async fn limits_gateway(extra: &str) -> (Running, Upstream) {
    limits_gateway_with(extra, PUBLIC_ROUTES).await
}

async fn limits_gateway_with(extra: &str, routes: &str) -> (Running, Upstream) {
    let upstream = Upstream::start().await;
    let text = config_text("  []", &upstream.url(), extra, routes);
    (start_text(&text).await, upstream)
}

#[tokio::test]
async fn slowloris_is_cut_off_while_others_are_served() {
    let (gw, _upstream) = limits_gateway("timeouts:\n  client_header: 1s\n").await;
    let addr = gw.proxy_addr;
    let slow = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let head = b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in head.iter().cycle().take(100) {
            if tcp.write_all(&[*byte]).await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    });
    // Meanwhile others are served promptly.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(status(addr, "/public/y").await, 200);
        assert!(started.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut = slow.await.unwrap();
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(3000),
        "cut off after {cut:?}"
    );

    // A client that connects and sends nothing is closed as well.
    let mut silent = RawConn::connect(addr).await.unwrap();
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), silent.is_closed()).await;
    assert_eq!(closed, Ok(true));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_client_header() {
    let (gw, _upstream) = limits_gateway("timeouts:\n  client_header: 1s\n").await;
    let mut conn = RawConn::connect(gw.proxy_addr).await.unwrap();
    let request = format!("GET /public/a HTTP/1.1\r\nHost: {}\r\n\r\n", gw.proxy_addr);
    let r = conn.request(request.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200);
    // Still usable right after...
    let r = conn.request(request.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200);
    // ...then idle: closed once client_header passes without a new request head.
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), conn.is_closed()).await;
    assert_eq!(closed, Ok(true));
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

/// `client_header` bounds the wait for a request head and nothing else: a
/// slow response, a body that streams for longer, a slow upload and an idle
/// tunnel all outlast it, and the connection stays usable.
#[tokio::test]
async fn client_header_bounds_only_the_wait_for_a_request_head() {
    let (gw, upstream) = limits_gateway("timeouts:\n  client_header: 1s\n").await;
    let addr = gw.proxy_addr;
    let host = addr.to_string();
    let mut conn = RawConn::connect(addr).await.unwrap();
    upstream
        .set_mode(UpMode::Slow(Duration::from_millis(1500)))
        .await;
    let r = conn
        .request(&build_keep_alive_request("GET", &host, "/public/slow", b""))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "a response head after 1.5 s");
    upstream
        .set_mode(UpMode::StreamBody {
            chunks: 5,
            interval: Duration::from_millis(500),
        })
        .await;
    let r = conn
        .request(&build_keep_alive_request(
            "GET",
            &host,
            "/public/stream",
            b"",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("chunk 4"),
        "a body streaming for 2 s: {}",
        r.text()
    );
    upstream.set_mode(UpMode::Echo).await;
    let head = format!("POST /public/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\n");
    conn.write(head.as_bytes()).await.unwrap();
    for byte in b"abc" {
        tokio::time::sleep(Duration::from_millis(500)).await;
        conn.write(&[*byte]).await.unwrap();
    }
    let r = conn.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 3, "an upload taking 1.5 s");
    let r = conn
        .request(&build_keep_alive_request(
            "GET",
            &host,
            "/public/again",
            b"",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the same connection, still open");

    let mut tunnel = RawConn::connect(addr).await.unwrap();
    let upgrade = format!(
        "GET /public/ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tunnel.write(upgrade.as_bytes()).await.unwrap();
    assert_eq!(tunnel.read_head().await.unwrap().status, 101);
    tokio::time::sleep(Duration::from_secs(2)).await;
    tunnel.write(b"still here").await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(10))
        .await
        .expect("the tunnel is open after 2 s idle")
        .unwrap();
    assert_eq!(echoed, b"still here");
}

#[tokio::test]
async fn max_connections_queues_further_connections() {
    let (gw, _upstream) = limits_gateway("limits:\n  max_connections: 2\n").await;
    let addr = gw.proxy_addr;
    let request = format!("GET /public/a HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut a = RawConn::connect(addr).await.unwrap();
    let mut b = RawConn::connect(addr).await.unwrap();
    assert_eq!(a.request(request.as_bytes()).await.unwrap().status, 200);
    assert_eq!(b.request(request.as_bytes()).await.unwrap().status, 200);
    // The third connects (kernel backlog) but is not served...
    let mut c = RawConn::connect(addr).await.unwrap();
    c.write(request.as_bytes()).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(700), c.read_response(false)).await;
    assert!(early.is_err(), "served beyond max_connections");
    // ...until one closes.
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(3), c.read_response(false))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(b.request(request.as_bytes()).await.unwrap().status, 200);
    assert_eq!(get(gw.admin_addr, "/healthz", &[]).await.status, 200);
}

#[tokio::test]
async fn refused_upstream_is_502_quickly_and_oversized_heads_431() {
    let (_reserved, closed) = support::refusing_addr();
    let port = closed.port();
    let routes = format!("routes:\n  - path: /public/**\n    public: true\n    upstream: http://127.0.0.1:{port}\n  - path: /ok/**\n    public: true\n");
    let (gw, _upstream) = limits_gateway_with("limits:\n  max_header_bytes: 8192\n", &routes).await;
    let started = Instant::now();
    let r = get(gw.proxy_addr, "/public/x", &[]).await;
    assert_eq!(r.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let big = "a".repeat(20_000);
    let r = get(gw.proxy_addr, "/ok/x", &[("X-Big", &big)]).await;
    assert_eq!(r.status, 431);
    assert_eq!(
        get(gw.proxy_addr, "/ok/x", &[]).await.status,
        200,
        "still serving"
    );
    let m = metrics(gw.admin_addr).await;
    assert!(
        metric(&m, "scopegate_upstream_errors_total{kind=\"connect\"}") >= 1.0,
        "{m}"
    );
}

/// At most 100 header fields per request (hyper's and Envoy's default):
/// the 100th passes, the 101st is 431, and nothing reaches the upstream.
#[tokio::test]
async fn header_field_count_is_bounded_at_100() {
    let (gw, upstream) = limits_gateway("").await;
    let names: Vec<String> = (0..100).map(|i| format!("x-field-{i}")).collect();
    // `get` adds Host and Connection: with 98 more, the request has 100.
    let fields: Vec<(&str, &str)> = names[..98].iter().map(|n| (n.as_str(), "v")).collect();
    let r = get(gw.proxy_addr, "/public/many", &fields).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.last().unwrap().header("x-field-97"), Some("v"));
    // 101 fields.
    let fields: Vec<(&str, &str)> = names[..99].iter().map(|n| (n.as_str(), "v")).collect();
    let r = get(gw.proxy_addr, "/public/too-many", &fields).await;
    assert_eq!(r.status, 431);
    assert_eq!(upstream.count(), 1, "nothing more reached the upstream");
}

/// When a burst of connections ends, the gateway hands the free heap back
/// (`scopegate_heap_trims_total`); while they are open, it does not.
#[tokio::test]
async fn heap_is_trimmed_once_a_burst_of_connections_ends() {
    let (gw, upstream) = limits_gateway("").await;
    let trims = |m: &str| {
        metric(m, "scopegate_heap_trims_total{result=\"released\"}")
            + metric(m, "scopegate_heap_trims_total{result=\"nothing\"}")
    };
    let mut conns = Vec::new();
    for i in 0..100 {
        let mut conn = RawConn::connect(gw.proxy_addr).await.unwrap();
        // Keep-alive: the connection stays open after its answer.
        let request = format!("GET /public/burst-{i} HTTP/1.1\r\nHost: gw\r\n\r\n");
        let r = conn.request(request.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200);
        conns.push(conn);
    }
    assert_eq!(upstream.count(), 100);
    // Longer than a few looks at the connection count (every 250 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        trims(&metrics(gw.admin_addr).await),
        0.0,
        "trimmed under load"
    );
    drop(conns);
    assert!(
        eventually(Duration::from_secs(5), || async {
            trims(&metrics(gw.admin_addr).await) >= 1.0
        })
        .await,
        "no trim after 100 connections closed"
    );
}

// ---------------------------------------------------------------- shutdown (real binary)

fn public_config(upstream: &Upstream, extra: &str) -> String {
    format!(
        "upstream: {}\nissuers: []\n{extra}routes:\n  - path: /public/**\n    public: true\n",
        upstream.url()
    )
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let upstream = Upstream::start().await;
    upstream
        .set_mode(UpMode::Slow(Duration::from_secs(2)))
        .await;
    let mut p = Proc::start(&public_config(&upstream, "shutdown_grace: 10s\n"), &[], &[]).await;
    assert_eq!(get(p.admin, "/readyz", &[]).await.status, 200);
    let proxy = p.proxy;
    let in_flight = tokio::spawn(async move { get(proxy, "/public/slow", &[]).await });
    upstream.wait_for_requests(1).await;
    let signalled = Instant::now();
    p.signal("TERM");
    let admin = p.admin;
    assert!(
        eventually(Duration::from_millis(500), || async {
            raw_request(admin, build_request("GET", admin, "/readyz", &[], b""))
                .await
                .is_ok_and(|r| r.status == 503)
        })
        .await,
        "/readyz 503 while draining"
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            TcpStream::connect(proxy).await.is_err()
        })
        .await,
        "new proxy connections refused"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completed");
    let exit = p.wait_exit(Duration::from_secs(5)).await.expect("exited");
    assert!(exit.success(), "{exit:?}\n{}", p.log());
    assert!(signalled.elapsed() < Duration::from_secs(6));
}

/// A keep-alive connection waiting for its next request is not woken by
/// anything but the drain: it must be closed at once, not after
/// `client_header` or the grace period.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let upstream = Upstream::start().await;
    let mut p = Proc::start(
        &public_config(
            &upstream,
            "shutdown_grace: 20s\ntimeouts:\n  client_header: 20s\n",
        ),
        &[],
        &[],
    )
    .await;
    let proxy = p.proxy;
    let host = proxy.to_string();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut conn = RawConn::connect(proxy).await.unwrap();
        let r = conn
            .request(&build_keep_alive_request("GET", &host, "/public/a", b""))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        idle.push(conn);
    }
    let signalled = Instant::now();
    p.signal("TERM");
    for conn in &mut idle {
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.is_closed()).await;
        assert_eq!(closed, Ok(true), "idle connection closed by the drain");
    }
    let exit = p.wait_exit(Duration::from_secs(5)).await.expect("exited");
    assert!(exit.success(), "{exit:?}\n{}", p.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    assert!(p.log().contains("all connections drained"), "{}", p.log());
}

#[tokio::test]
async fn sigterm_lets_a_streaming_response_finish() {
    let upstream = Upstream::start().await;
    upstream
        .set_mode(UpMode::StreamBody {
            chunks: 6,
            interval: Duration::from_millis(300),
        })
        .await;
    let mut p = Proc::start(&public_config(&upstream, ""), &[], &[]).await;
    let proxy = p.proxy;
    let mut conn = RawConn::connect(proxy).await.unwrap();
    conn.write(&build_request("GET", proxy, "/public/stream", &[], b""))
        .await
        .unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    p.signal("TERM");
    let body = tokio::time::timeout(Duration::from_secs(5), conn.read_body(&head, false))
        .await
        .expect("body in time")
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    for i in 0..6 {
        assert!(text.contains(&format!("chunk {i}")), "{text}");
    }
    let exit = p.wait_exit(Duration::from_secs(5)).await.expect("exited");
    assert!(exit.success());
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let upstream = Upstream::start().await;
    upstream
        .set_mode(UpMode::Slow(Duration::from_secs(5)))
        .await;
    let mut p = Proc::start(&public_config(&upstream, "shutdown_grace: 1s\n"), &[], &[]).await;
    let proxy = p.proxy;
    let in_flight = tokio::spawn(async move {
        raw_request(proxy, build_request("GET", proxy, "/public/slow", &[], b"")).await
    });
    upstream.wait_for_requests(1).await;
    let signalled = Instant::now();
    p.signal("TERM");
    let exit = p.wait_exit(Duration::from_secs(4)).await.expect("exited");
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit:?}\n{}", p.log());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    assert!(p.log().contains("grace period over"), "{}", p.log());
    assert!(
        in_flight.await.unwrap().is_err(),
        "cut at the end of the grace period"
    );
}

// ---------------------------------------------------------------- observability

#[tokio::test]
async fn access_log_json_has_one_object_per_request_and_no_token() {
    let key = TestKey::generate(Alg::ES256, "k");
    let idp = Idp::start_with_keys(&[&key]).await;
    let upstream = Upstream::start().await;
    let body = format!(
        "upstream: {}\nissuers:\n{}{ROUTES}",
        upstream.url(),
        issuer_block(&idp)
    );
    let p = Proc::start(&body, &["--access-log", "--log-format", "json"], &[]).await;
    let admin = p.admin;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(admin, "/readyz", &[]).await.status == 200
        })
        .await
    );
    let claims = valid_claims(&idp.issuer(), AUD, "message", Duration::from_secs(600));
    let token = key.sign(&claims);
    let weak = key.sign(&valid_claims(
        &idp.issuer(),
        AUD,
        "email",
        Duration::from_secs(600),
    ));
    assert_eq!(
        get_auth(p.proxy, "/api//messages?q=1", &token).await.status,
        200
    );
    assert_eq!(get_auth(p.proxy, "/api/messages", &weak).await.status, 403);
    assert_eq!(get(p.proxy, "/nowhere", &[]).await.status, 404);
    let access = || {
        p.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "scopegate::access")
            .collect::<Vec<_>>()
    };
    assert!(eventually(Duration::from_secs(2), || async { access().len() >= 3 }).await);
    let lines = access();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let f = |i: usize, name: &str| lines[i]["fields"][name].clone();
    assert_eq!(f(0, "method"), "GET");
    assert_eq!(f(0, "path"), "/api/messages");
    assert_eq!(f(0, "route"), "GET /api/messages");
    assert_eq!(f(0, "decision"), "allow");
    assert_eq!(f(0, "status"), 200);
    assert_eq!(f(0, "subject"), "user-123");
    assert!(f(0, "latency_us").is_u64());
    assert!(f(0, "peer").as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(f(1, "decision"), "insufficient_scope");
    assert_eq!(f(1, "status"), 403);
    assert_eq!(f(2, "decision"), "not_found");
    assert_eq!(f(2, "status"), 404);
    assert_eq!(f(2, "route"), "-");
    let log = p.log();
    assert!(
        !log.contains(&token) && !log.contains(&weak),
        "a token in the log"
    );
    // Every stderr line is JSON.
    for line in log.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[tokio::test]
async fn metrics_cover_latency_upstream_errors_cache_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate(Alg::ES256, "k");
    let idp = Idp::start_with_keys(&[&key]).await;
    let upstream = Upstream::start().await;
    let path = dir.path().join("routes.yaml");
    let routes = format!(
        "{ROUTES}  - path: /dead/**\n    public: true\n    upstream: http://127.0.0.1:{}\n",
        free_port()
    );
    std::fs::write(
        &path,
        config_text(&issuer_block(&idp), &upstream.url(), "", &routes),
    )
    .unwrap();
    let gw = start_file(&path).await;
    wait_ready(&gw).await;
    let token = key.sign(&valid_claims(
        &idp.issuer(),
        AUD,
        "message",
        Duration::from_secs(600),
    ));
    for _ in 0..3 {
        assert_eq!(
            get_auth(gw.proxy_addr, "/api/messages", &token)
                .await
                .status,
            200
        );
    }
    assert_eq!(status(gw.proxy_addr, "/dead/x").await, 502);
    std::fs::write(&path, "routes: [").unwrap();
    let admin = gw.admin_addr;
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(
                &metrics(admin).await,
                "scopegate_config_reloads_total{result=\"error\"}",
            ) == 1.0
        })
        .await
    );
    let m = metrics(admin).await;
    assert!(
        m.contains("# TYPE scopegate_request_duration_seconds histogram"),
        "{m}"
    );
    assert!(
        metric(&m, "scopegate_request_duration_seconds_bucket{le=\"+Inf\"}") >= 4.0,
        "{m}"
    );
    assert!(
        metric(&m, "scopegate_request_duration_seconds_count") >= 4.0,
        "{m}"
    );
    assert!(
        metric(&m, "scopegate_upstream_errors_total{kind=\"connect\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "scopegate_token_cache_requests_total{result=\"hit\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "scopegate_token_cache_requests_total{result=\"miss\"}"),
        1.0,
        "{m}"
    );
    assert!(
        metric(&m, "scopegate_jwks_fetches_total{result=\"ok\"}") >= 1.0,
        "{m}"
    );
    // One token-cache miss, whose kid was in the cached key set.
    assert_eq!(
        metric(&m, "scopegate_key_cache_requests_total{result=\"hit\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "scopegate_key_cache_requests_total{result=\"miss\"}"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "scopegate_requests_total{route=\"GET /api/messages\",decision=\"allow\"}"
        ),
        3.0,
        "{m}"
    );
}
