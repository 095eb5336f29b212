//! Fault injection: the real gateway between a misbehaving IdP, a
//! misbehaving upstream and hostile clients, all on loopback.
//!
//! Every test checks the expected status, that the gateway still serves a
//! normal request afterwards (no panic killed a task it needs), and, where a
//! fault could make it buffer or hold resources, that memory stays bounded
//! (`VmRSS` of this process, which runs the gateway in-process).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use scopegate::app::Running;
use support::idp::Mode as IdpMode;
use support::upstream::Mode as UpstreamMode;
use support::{
    build_request, get, raw_request, raw_request_timeout, valid_claims, Alg, Idp, RawConn,
    RawResponse, TestKey, Upstream,
};

const AUD: &str = "orders-api";

const ROUTES: &str = r#"
routes:
  - path: /public/**
    public: true
  - path: /api/**
    scopes: [message]
  - path: /admin/**
    scopes: [admin]
"#;

struct Harness {
    gw: Running,
    idp: Idp,
    upstream: Upstream,
    key: TestKey,
}

/// Everything the gateway logs in this test binary (all tests share it),
/// at every level of scopegate's own targets.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("scopegate=trace,info"))
            .with_writer(move || LogSink(Arc::clone(&sink)))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn start_with(extra: &str) -> Harness {
    captured_logs();
    let key = TestKey::generate(Alg::ES256, "key-1");
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
    algorithms: [RS256, ES256]
{extra}
{ROUTES}
"#,
        upstream = upstream.url(),
        issuer = idp.issuer(),
    );
    let config = scopegate::config::from_yaml(&text, Path::new("faults.yaml"))
        .unwrap_or_else(|e| panic!("test config does not load:\n{e}\n{text}"));
    let gw = scopegate::app::start(config).await.expect("gateway starts");
    for _ in 0..500 {
        if gw.gateway.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gw.gateway.is_ready(), "gateway did not become ready");
    Harness {
        gw,
        idp,
        upstream,
        key,
    }
}

impl Harness {
    fn addr(&self) -> SocketAddr {
        self.gw.proxy_addr
    }

    fn token_for(&self, key: &TestKey) -> String {
        key.sign(&valid_claims(
            &self.idp.issuer(),
            AUD,
            "message",
            Duration::from_secs(600),
        ))
    }

    fn token(&self) -> String {
        self.token_for(&self.key)
    }

    async fn api(&self, token: &str) -> RawResponse {
        get(
            self.addr(),
            "/api/x",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    /// A normal authorized request is answered 200, promptly.
    async fn assert_serves(&self) {
        let started = Instant::now();
        let r = self.api(&self.token()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "slow: {:?}",
            started.elapsed()
        );
    }
}

/// Resident memory of this process (the gateway runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// How many file descriptors this process may open (soft limit).
fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

fn assert_status(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let body: Value = r.json();
    assert_eq!(body["error"], code, "{body}");
}

// ------------------------------------------------------------------ issuer

#[tokio::test]
async fn issuer_slow_known_keys_keep_serving_unknown_kid_is_503() {
    let h = start_with("    jwks_refresh: 200ms\ntimeouts:\n  idp: 300ms").await;
    h.idp.set_mode(IdpMode::Slow(Duration::from_secs(5)));
    h.assert_serves().await;
    let stranger = TestKey::generate(Alg::ES256, "key-unknown");
    let r = h.api(&h.token_for(&stranger)).await;
    // The keys were fetched moments ago: an unknown kid is not worth a
    // refetch (rate limit), and the last fetch succeeded, so 401.
    assert_status(&r, 401, "invalid_token");
    // Once a background refresh has timed out, an unknown kid is 503,
    // answered without waiting on the slow issuer.
    let r = until_unavailable(&h, &stranger).await;
    assert!(r.header("retry-after").is_some());
    h.assert_serves().await;
}

/// Polls (bounded) with a token of `stranger` until the gateway answers
/// 503 — i.e. until a background refresh has failed; known keys keep
/// serving all along.
async fn until_unavailable(h: &Harness, stranger: &TestKey) -> RawResponse {
    let token = h.token_for(stranger);
    for _ in 0..40 {
        let started = Instant::now();
        let r = h.api(&token).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited on the issuer: {:?}",
            started.elapsed()
        );
        if r.status == 503 {
            assert_status(&r, 503, "temporarily_unavailable");
            return r;
        }
        assert_status(&r, 401, "invalid_token");
        h.assert_serves().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the failed refresh never showed");
}

#[tokio::test]
async fn issuer_down_last_good_keys_serve() {
    let h = start_with("    jwks_refresh: 200ms").await;
    h.idp.down().await;
    h.assert_serves().await;
    let stranger = TestKey::generate(Alg::ES256, "key-unknown");
    until_unavailable(&h, &stranger).await;
    h.idp.up().await;
    h.assert_serves().await;
}

#[tokio::test]
async fn issuer_flapping_while_requests_flow() {
    let h = start_with("    jwks_refresh: 200ms").await;
    let token = h.token();
    let flapping = async {
        for _ in 0..10 {
            h.idp.down().await;
            tokio::time::sleep(Duration::from_millis(60)).await;
            h.idp.up().await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    };
    let traffic = async {
        let mut statuses = Vec::new();
        for _ in 0..60 {
            statuses.push(h.api(&token).await.status);
        }
        statuses
    };
    let ((), statuses) = tokio::join!(flapping, traffic);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    h.assert_serves().await;
}

#[tokio::test]
async fn issuer_garbage_and_huge_answers_are_503_and_bounded() {
    let h = start_with("    jwks_refresh: 200ms").await;
    let before = rss_kib();
    for (i, mode) in [IdpMode::Garbage, IdpMode::Huge, IdpMode::Status(500)]
        .into_iter()
        .enumerate()
    {
        h.idp.set_mode(mode);
        let stranger = TestKey::generate(Alg::ES256, &format!("unknown-{i}"));
        until_unavailable(&h, &stranger).await;
        h.assert_serves().await;
        // Back to good keys before the next kind of failure.
        h.idp.set_mode(IdpMode::Up);
        let fetched = h.idp.jwks_requests();
        h.idp.wait_jwks_requests(fetched + 2).await;
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}

#[tokio::test]
async fn keys_rotate_mid_load() {
    let h = start_with("    jwks_refresh: 300ms").await;
    let old = h.token();
    let new_key = TestKey::generate(Alg::ES256, "key-2");
    let new = h.token_for(&new_key);
    let traffic = async {
        let mut statuses = Vec::new();
        for i in 0..40 {
            let token = if i % 2 == 0 { &old } else { &new };
            statuses.push((i % 2, h.api(token).await.status));
        }
        statuses
    };
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.idp
            .set_keys(vec![h.key.public_jwk(), new_key.public_jwk()]);
    };
    let (statuses, ()) = tokio::join!(traffic, rotate);
    // Old-key tokens never fail while the old key is published; new-key
    // tokens are 401 (unknown kid, fetch ok) until the rotation is seen,
    // never 5xx.
    for &(which, status) in &statuses {
        match which {
            0 => assert_eq!(status, 200, "{statuses:?}"),
            _ => assert!(status == 200 || status == 401, "{statuses:?}"),
        }
    }
    // Eventually (refresh every 300ms) the new key verifies.
    let mut ok = false;
    for _ in 0..50 {
        if h.api(&new).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the rotated-in key never verified");
    // The old key is dropped: after the next refresh its tokens are 401.
    h.idp.set_keys(vec![new_key.public_jwk()]);
    let mut dropped = false;
    for _ in 0..50 {
        if h.api(&old).await.status == 401 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "a key the issuer dropped still verifies");
    assert_eq!(h.api(&new).await.status, 200);
}

// ---------------------------------------------------------------- upstream

#[tokio::test]
async fn upstream_refusing_is_502() {
    let h = start_with("").await;
    let (_reserved, closed) = support::refusing_addr();
    let text = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://{closed}\nroutes:\n  - path: /public/**\n    public: true\n"
    );
    let config = scopegate::config::from_yaml(&text, Path::new("refuse.yaml")).unwrap();
    let gw = scopegate::app::start(config).await.unwrap();
    let r = get(gw.proxy_addr, "/public/x", &[]).await;
    assert_status(&r, 502, "bad_gateway");
    let r = get(gw.proxy_addr, "/public/y", &[]).await;
    assert_status(&r, 502, "bad_gateway");
    h.assert_serves().await;
}

/// The client addresses the upstream saw: one per gateway connection to it.
fn upstream_peers(h: &Harness) -> std::collections::HashSet<SocketAddr> {
    h.upstream.requests().iter().map(|r| r.peer).collect()
}

/// Keep-alive connections to the upstream are pooled and reused; once the
/// upstream has closed them, requests go out on a new connection.
#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_once_closed() {
    let h = start_with("").await;
    for _ in 0..10 {
        h.assert_serves().await;
    }
    let first = upstream_peers(&h);
    // One pool per worker thread, and client connections go round robin.
    let workers = scopegate::workers::default_count();
    assert!(
        first.len() <= workers.min(9),
        "ten sequential requests should share one upstream connection per worker ({workers}): {first:?}"
    );
    // Garbage mode closes every open connection; then serve normally again.
    h.upstream.set_mode(UpstreamMode::Garbage).await;
    h.upstream.set_mode(UpstreamMode::Echo).await;
    h.upstream.clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        h.assert_serves().await;
    }
    let second = upstream_peers(&h);
    assert!(second.len() <= workers.min(4), "{second:?}");
    assert!(
        second.is_disjoint(&first),
        "a closed connection was reused: {first:?} then {second:?}"
    );
}

/// Pooled upstream connections idle longer than `timeouts.idle` are closed,
/// not reused.
#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let h = start_with("timeouts:\n  idle: 300ms").await;
    // Within the timeout, connections are reused (every worker's pool
    // gets one).
    for _ in 0..6 {
        h.assert_serves().await;
    }
    let before = upstream_peers(&h);
    assert!(before.len() < 6, "connections were not reused: {before:?}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    h.upstream.clear();
    for _ in 0..6 {
        h.assert_serves().await;
    }
    let after = upstream_peers(&h);
    assert!(
        after.is_disjoint(&before),
        "a connection idle past timeouts.idle was reused: {before:?} then {after:?}"
    );
}

/// The open upstream connections, as `/metrics` reports them.
async fn upstream_connections(h: &Harness) -> f64 {
    let text = get(h.gw.admin_addr, "/metrics", &[]).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("scopegate_upstream_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge is exported")
}

/// A burst's upstream connections do not stay for `timeouts.idle`: the
/// idle ones no request needed for a whole sweep interval (5 s here) are
/// closed, while those in use stay pooled.
#[tokio::test]
async fn a_bursts_surplus_upstream_connections_are_closed_before_the_idle_timeout() {
    let h = start_with("timeouts:\n  idle: 60s").await;
    h.upstream
        .set_mode(UpstreamMode::Slow(Duration::from_millis(300)))
        .await;
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let addr = h.addr();
            tokio::spawn(async move { get(addr, &format!("/public/burst-{i}"), &[]).await.status })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(upstream_peers(&h).len(), 20, "one connection per request");
    assert_eq!(upstream_connections(&h).await, 20.0);
    h.upstream.set_mode(UpstreamMode::Echo).await;
    // One request at a time for two sweep intervals.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(11) {
        h.assert_serves().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = upstream_connections(&h).await;
    let workers = scopegate::workers::default_count() as f64;
    assert!(
        left <= workers,
        "{left} upstream connections left after 11 s of one request at a time"
    );
    h.assert_serves().await;
}

/// Sends `n` requests to `/public/...` at once; their statuses.
async fn at_once(h: &Harness, n: usize) -> Vec<u16> {
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let addr = h.addr();
            tokio::spawn(async move { get(addr, &format!("/public/slot-{i}"), &[]).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    statuses
}

/// `limits.max_upstream_requests`: requests beyond it wait for a slot
/// instead of each taking an upstream connection, and are all served; the
/// wait counts toward `timeouts.upstream_response`.
#[tokio::test]
async fn requests_beyond_max_upstream_requests_wait_their_turn() {
    let workers = scopegate::workers::default_count();
    // One slot per worker thread; client connections go round robin, so
    // each worker gets four requests at once.
    let h = start_with(&format!("limits:\n  max_upstream_requests: {workers}")).await;
    h.upstream
        .set_mode(UpstreamMode::Slow(Duration::from_millis(200)))
        .await;
    let statuses = at_once(&h, 4 * workers).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let peers = upstream_peers(&h);
    assert!(
        peers.len() <= workers,
        "{} upstream connections for {workers} slots: {peers:?}",
        peers.len()
    );
    let text = get(h.gw.admin_addr, "/metrics", &[]).await.text();
    let queued: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("scopegate_upstream_requests_queued_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter is exported");
    assert!(queued >= (3 * workers) as f64, "{queued} requests queued");

    // 700 ms upstream, 1 s budget: the first on each worker is answered,
    // the second waits 700 ms for the slot and runs out of time: 504.
    let h = start_with(&format!(
        "limits:\n  max_upstream_requests: {workers}\ntimeouts:\n  upstream_response: 1s"
    ))
    .await;
    h.upstream
        .set_mode(UpstreamMode::Slow(Duration::from_millis(700)))
        .await;
    let mut statuses = at_once(&h, 2 * workers).await;
    statuses.sort_unstable();
    let mut want = vec![200; workers];
    want.extend(vec![504; workers]);
    assert_eq!(statuses, want);
}

#[tokio::test]
async fn upstream_reset_mid_body_ends_the_response_and_others_are_served() {
    let h = start_with("").await;
    h.upstream.set_mode(UpstreamMode::StreamManual).await;
    let mut conn = RawConn::connect(h.addr()).await.unwrap();
    conn.write(&build_request("GET", h.addr(), "/public/stream", &[], b""))
        .await
        .unwrap();
    let sender = h.upstream.stream_sender().await;
    sender
        .send(bytes::Bytes::from_static(b"first piece\n"))
        .await
        .unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    let first = tokio::time::timeout(Duration::from_secs(5), conn.read_chunk())
        .await
        .expect("first chunk in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some(&b"first piece\n"[..]));
    // The upstream dies mid-body: the client must see the body cut short
    // (no terminating chunk), never a "complete" response.
    h.upstream.set_mode(UpstreamMode::Reset).await;
    drop(sender);
    let rest = tokio::time::timeout(Duration::from_secs(5), conn.read_chunk())
        .await
        .expect("the gateway ends the response in time");
    assert!(
        rest.is_err(),
        "a reset upstream body must not look complete: {rest:?}"
    );
    h.upstream.set_mode(UpstreamMode::Echo).await;
    h.assert_serves().await;
}

#[tokio::test]
async fn upstream_slow_is_504_and_garbage_is_502() {
    let h = start_with("timeouts:\n  upstream_response: 300ms").await;
    h.upstream
        .set_mode(UpstreamMode::Slow(Duration::from_secs(3)))
        .await;
    let started = Instant::now();
    let r = get(h.addr(), "/public/slow", &[]).await;
    assert_status(&r, 504, "gateway_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    h.upstream.set_mode(UpstreamMode::Garbage).await;
    let r = get(h.addr(), "/public/garbage", &[]).await;
    assert_status(&r, 502, "bad_gateway");
    h.upstream.set_mode(UpstreamMode::Reset).await;
    let r = get(h.addr(), "/public/reset", &[]).await;
    assert_status(&r, 502, "bad_gateway");
    h.upstream.set_mode(UpstreamMode::Echo).await;
    h.assert_serves().await;
}

// ----------------------------------------------------------------- clients

#[tokio::test]
async fn slow_header_client_is_cut_off_and_others_served() {
    let h = start_with("timeouts:\n  client_header: 1s").await;
    let request = build_request("GET", h.addr(), "/public/slowloris", &[], b"");
    let mut conn = RawConn::connect(h.addr()).await.unwrap();
    let started = Instant::now();
    let mut cut_off = false;
    for byte in request.iter() {
        if conn.write(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    // Either writes failed (the gateway closed), or it answered 408/closed.
    if !cut_off {
        let answer = tokio::time::timeout(Duration::from_secs(2), conn.read_some())
            .await
            .expect("the gateway gave up on the slow client");
        match answer {
            Ok(bytes) if !bytes.is_empty() => {
                let text = String::from_utf8_lossy(&bytes);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            _ => {}
        }
    }
    assert_eq!(h.upstream.count(), 0, "a partial request was forwarded");
    h.assert_serves().await;
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_starve_a_normal_request() {
    let h = start_with("timeouts:\n  client_header: 10s").await;
    h.assert_serves().await;
    // Each idle connection costs two descriptors here (client + gateway side).
    let n = 2000.min((fd_limit().saturating_sub(200) / 2) as usize);
    let before = rss_kib();
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(tokio::net::TcpStream::connect(h.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.assert_serves().await;
    let grown = rss_kib().saturating_sub(before);
    // A few KiB per connection at most.
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB for {n} idle connections"
    );
    drop(idle);
    h.assert_serves().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = start_with("").await;
    let token = h.token();
    let auth = format!("Bearer {token}");
    let host = h.addr().to_string();
    let mut bytes = Vec::new();
    for (i, path) in ["/public/one", "/api/two", "/public/three", "/nowhere"]
        .iter()
        .enumerate()
    {
        bytes.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
        if path.starts_with("/api") {
            bytes.extend_from_slice(format!("Authorization: {auth}\r\n").as_bytes());
        }
        if i == 3 {
            bytes.extend_from_slice(b"Connection: close\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
    }
    let mut conn = RawConn::connect(h.addr()).await.unwrap();
    conn.write(&bytes).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = tokio::time::timeout(Duration::from_secs(5), conn.read_response(false))
            .await
            .expect("in time")
            .unwrap();
        let path = if r.status == 200 {
            r.json()["path"].as_str().unwrap_or("").to_owned()
        } else {
            String::new()
        };
        got.push((r.status, path));
    }
    assert_eq!(
        got,
        [
            (200, "/public/one".to_owned()),
            (200, "/api/two".to_owned()),
            (200, "/public/three".to_owned()),
            (404, String::new()),
        ]
    );
    let seen: Vec<String> = h
        .upstream
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(seen, ["/public/one", "/api/two", "/public/three"]);
}

/// Sends raw bytes and returns the status, or `None` if the gateway closed
/// without an answer.
async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    raw_request_timeout(addr, bytes, Duration::from_secs(5))
        .await
        .ok()
        .map(|r| r.status)
}

#[tokio::test]
async fn conflicting_lengths_and_bad_transfer_encodings_are_400_and_not_forwarded() {
    let h = start_with("").await;
    let host = h.addr();
    for request in [
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5, 6\r\nConnection: close\r\n\r\nhello!"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: +5\r\nConnection: close\r\n\r\nhello"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity\r\nConnection: close\r\n\r\n0\r\n\r\n"),
        format!("POST /public/x HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ] {
        let status = raw_status(host, request.as_bytes()).await;
        assert!(
            status == Some(400) || status.is_none(),
            "{status:?} for {request:?}"
        );
    }
    assert_eq!(h.upstream.count(), 0, "{:?}", h.upstream.requests());
    h.assert_serves().await;
}

/// RFC 9112 6.3: with both `Transfer-Encoding: chunked` and
/// `Content-Length`, chunked wins and an intermediary must drop the
/// Content-Length before forwarding. hyper does exactly that (it does not
/// answer 400): the upstream gets one request, chunked, without
/// Content-Length, with the chunked body — never a length it could read
/// differently.
#[tokio::test]
async fn content_length_with_chunked_is_forwarded_chunked_without_content_length() {
    let h = start_with("").await;
    let host = h.addr();
    for request in [
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        format!("POST /public/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ] {
        h.upstream.clear();
        let status = raw_status(host, request.as_bytes()).await;
        assert_eq!(status, Some(200), "{request:?}");
        let seen = h.upstream.requests();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(!seen[0].has_header("content-length"), "{:?}", seen[0].headers);
        assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"));
        assert_eq!(seen[0].body, b"abc");
    }
    h.assert_serves().await;
}

#[tokio::test]
async fn chunked_smuggling_attempt_reaches_upstream_as_one_request_at_most() {
    let h = start_with("").await;
    let host = h.addr();
    // A front end that trusted Content-Length would read "0\r\n\r\n" as the
    // body and the rest as a second request; one that trusted chunked reads
    // an empty body and then the smuggled request, which must then pass the
    // gateway's own checks (it has no token: 401, never forwarded).
    let smuggled = format!("GET /api/admin HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let request = format!(
        "POST /public/form HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let mut conn = RawConn::connect(host).await.unwrap();
    conn.write(request.as_bytes()).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(3), conn.read_response(false)).await {
            Ok(Ok(r)) => statuses.push(r.status),
            _ => break,
        }
    }
    let seen = h.upstream.requests();
    assert!(seen.len() <= 1, "{seen:?}");
    assert!(
        seen.iter().all(|r| !r.path_and_query.contains("admin")),
        "smuggled request reached the upstream: {seen:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 401 || *s == 200),
        "{statuses:?}"
    );
    // A chunked body with a smuggled request inside it is just a body.
    h.upstream.clear();
    let body = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let request = format!(
        "POST /public/form HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let r = raw_request(host, request.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path_and_query, "/public/form");
    assert_eq!(seen[0].body, smuggled.as_bytes());
    h.assert_serves().await;
}

// -------------------------------------------------------------------- logs

#[tokio::test]
async fn tokens_and_credentials_never_reach_the_logs() {
    let h = start_with("").await;
    let good = h.token();
    let stranger = TestKey::generate(Alg::ES256, "key-unknown");
    let unknown_kid = h.token_for(&stranger);
    let mut forged = good.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let opaque = "opaque-SECRET-9f8e7d6c5b4a";
    let basic = "Basic c2VjcmV0LXVzZXI6czNjcjN0LXBhc3N3b3Jk";
    for auth in [
        format!("Bearer {good}"),
        format!("Bearer {unknown_kid}"),
        format!("Bearer {forged}"),
        format!("Bearer {opaque}"),
        format!("Bearer {opaque} trailing"),
        basic.to_owned(),
    ] {
        let r = get(
            h.addr(),
            "/api/x?access_token=QUERY-SECRET",
            &[("Authorization", &auth)],
        )
        .await;
        assert!(r.status < 500, "{}", r.status);
    }
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(
        logs.contains("scopegate::access"),
        "access log was captured"
    );
    for secret in [&good, &unknown_kid, &forged] {
        for part in secret.split('.') {
            assert!(!logs.contains(part), "a token part reached the logs");
        }
    }
    for secret in [
        opaque,
        "c2VjcmV0LXVzZXI6czNjcjN0LXBhc3N3b3Jk",
        "QUERY-SECRET",
    ] {
        assert!(!logs.contains(secret), "{secret} reached the logs");
    }
}

// ------------------------------------------------------------ confusion

/// The verified-token cache holds claims, never a decision: a token cached
/// after a 200 on one route is still 403 on a route needing other scopes.
#[tokio::test]
async fn a_cached_token_is_rechecked_on_every_route() {
    let h = start_with("").await;
    let token = h.token();
    let auth = format!("Bearer {token}");
    for _ in 0..3 {
        assert_eq!(h.api(&token).await.status, 200);
        let r = get(h.addr(), "/admin/users", &[("Authorization", &auth)]).await;
        assert_status(&r, 403, "insufficient_scope");
    }
    assert!(h
        .upstream
        .requests()
        .iter()
        .all(|r| !r.path_and_query.starts_with("/admin")));
}

/// A `#` in the request line never reaches the gateway's matcher: the URI
/// parser (http crate) drops the fragment, and what is matched is exactly
/// what is forwarded, so gateway and upstream cannot disagree.
#[tokio::test]
async fn a_fragment_in_the_request_line_is_dropped_before_matching() {
    let h = start_with("").await;
    let host = h.addr();
    let request = format!(
        "GET /public/a#/../../admin/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let r = raw_request(host, request.as_bytes()).await.unwrap();
    match r.status {
        200 => {
            let seen = h.upstream.requests();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].path_and_query, "/public/a");
        }
        400 => assert_eq!(h.upstream.count(), 0),
        other => panic!("unexpected {other}"),
    }
}
