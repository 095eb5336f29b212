//! The upstream side of the wire: scopegate's own HTTP/1.1 client against
//! upstreams scripted byte by byte on loopback: every body framing, interim
//! responses, conflicting framings, answers that come before the request
//! body has been sent, and pooled connections that close under a request.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use scopegate::app::Running;
use support::{Idp, RawConn};

/// A hand-written upstream: every accepted connection runs `script` with
/// its number (from 0); the request targets it read are recorded.
struct ScriptedUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    targets: Arc<Mutex<Vec<(usize, String)>>>,
}

impl ScriptedUpstream {
    async fn start<F, Fut>(script: F) -> ScriptedUpstream
    where
        F: Fn(usize, Peer) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let targets = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), targets.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let peer = Peer {
                    n,
                    stream,
                    buf: Vec::new(),
                    targets: seen.clone(),
                };
                tokio::spawn(script(n, peer));
            }
        });
        ScriptedUpstream {
            addr,
            connections,
            targets,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn targets(&self) -> Vec<(usize, String)> {
        self.targets.lock().unwrap().clone()
    }
}

/// One upstream-side connection.
struct Peer {
    n: usize,
    stream: TcpStream,
    buf: Vec<u8>,
    targets: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Peer {
    /// Reads one request head; returns its target, `None` once the gateway
    /// closed the connection. The body, if any, is left unread.
    async fn read_head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                self.targets.lock().unwrap().push((self.n, target.clone()));
                return Some(target);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads and drops `n` body bytes.
    async fn skip_body(&mut self, n: usize) {
        let mut left = n;
        let buffered = left.min(self.buf.len());
        self.buf.drain(..buffered);
        left -= buffered;
        let mut chunk = vec![0u8; 8192];
        while left > 0 {
            match self.stream.read(&mut chunk[..left.min(8192)]).await {
                Ok(0) | Err(_) => return,
                Ok(k) => left -= k,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }
}

async fn gateway(upstream: &ScriptedUpstream, idp: &Idp) -> Running {
    gateway_with_response_timeout(upstream, idp, "3s").await
}

async fn gateway_with_response_timeout(
    upstream: &ScriptedUpstream,
    idp: &Idp,
    response_timeout: &str,
) -> Running {
    let text = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream: http://{}\n\
         timeouts:\n  upstream_response: {response_timeout}\n\
         issuers:\n  - issuer: {}\n    audiences: [api]\n    algorithms: [ES256]\n\
         routes:\n  - path: /**\n    public: true\n",
        upstream.addr,
        idp.issuer()
    );
    let config = scopegate::config::from_yaml(&text, Path::new("test.yaml")).unwrap();
    scopegate::app::start(config).await.expect("gateway starts")
}

/// A keep-alive request with an optional body.
fn request(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    support::client::build_keep_alive_request(method, "api.test", target, body)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than 10 s"))
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_whole_and_only_clean_connections_are_reused() {
    let upstream = ScriptedUpstream::start(|_, mut peer| async move {
        while let Some(target) = peer.read_head().await {
            let answer: &[u8] = match target.as_str() {
                "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
                "/interim" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nfinally",
                "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "/http10" => b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhttp10",
                "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n",
                "/close" => b"HTTP/1.1 200 OK\r\n\r\nuntil the upstream closes",
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            };
            peer.send(answer).await;
            if target == "/close" {
                return;
            }
        }
    })
    .await;
    let idp = Idp::start().await;
    let gw = gateway(&upstream, &idp).await;
    let mut client = RawConn::connect(gw.proxy_addr).await.unwrap();

    // (target, method, status, body, upstream connections after it)
    let steps: [(&str, &str, u16, &[u8], usize); 10] = [
        ("/chunked", "GET", 200, b"hello world", 1),
        ("/interim", "GET", 200, b"finally", 1),
        ("/head", "HEAD", 200, b"", 1),
        ("/no-content", "GET", 204, b"", 1),
        // Both framings: chunked wins, the length goes, the connection
        // is not trusted with another request.
        ("/both", "GET", 200, b"hello", 1),
        ("/chunked", "GET", 200, b"hello world", 2),
        // HTTP/1.0 without keep-alive: closed after the answer.
        ("/http10", "GET", 200, b"http10", 2),
        ("/chunked", "GET", 200, b"hello world", 3),
        // No length, no chunking: the body ends when the upstream closes.
        ("/close", "GET", 200, b"until the upstream closes", 3),
        ("/chunked", "GET", 200, b"hello world", 4),
    ];
    for (target, method, status, body, connections) in steps {
        client.write(&request(method, target, b"")).await.unwrap();
        let r = within(target, client.read_response(method == "HEAD"))
            .await
            .unwrap();
        assert_eq!(r.status, status, "{target}");
        assert_eq!(r.body, body, "{target}");
        assert_eq!(upstream.connections(), connections, "after {target}");
        match target {
            "/both" => assert_eq!(r.header("content-length"), None),
            "/interim" => assert_eq!(r.header("link"), None, "interim headers stay behind"),
            "/head" => assert_eq!(r.header("content-length"), Some("1234")),
            _ => {}
        }
    }
}

/// Connection 0 answers one request, then reads the next and closes without
/// a word: an upstream's idle timeout racing the request. Later connections
/// answer everything. Request bodies are `body` bytes long.
async fn closes_its_second_request(n: usize, mut peer: Peer, body: usize) {
    let mut answered = 0;
    while let Some(_target) = peer.read_head().await {
        if n == 0 && answered == 1 {
            return;
        }
        peer.skip_body(body).await;
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        answered += 1;
    }
}

#[tokio::test]
async fn a_pooled_connection_closed_under_a_get_is_retried_once_and_a_post_never() {
    let upstream = ScriptedUpstream::start(|n, peer| closes_its_second_request(n, peer, 0)).await;
    let idp = Idp::start().await;
    let gw = gateway(&upstream, &idp).await;
    let mut client = RawConn::connect(gw.proxy_addr).await.unwrap();

    for target in ["/first", "/second"] {
        client.write(&request("GET", target, b"")).await.unwrap();
        let r = within(target, client.read_response(false)).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{target}");
    }
    // The second GET reached connection 0, which closed; it was sent again
    // on a new connection, once.
    assert_eq!(
        upstream.targets(),
        [
            (0, "/first".to_string()),
            (0, "/second".to_string()),
            (1, "/second".to_string())
        ]
    );

    // A POST with a body is never sent twice: the same race is a 502.
    let upstream = ScriptedUpstream::start(|n, peer| closes_its_second_request(n, peer, 4)).await;
    let gw = gateway(&upstream, &idp).await;
    let mut client = RawConn::connect(gw.proxy_addr).await.unwrap();
    client
        .write(&request("POST", "/first", b"data"))
        .await
        .unwrap();
    let r = within("first POST", client.read_response(false))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    client
        .write(&request("POST", "/second", b"data"))
        .await
        .unwrap();
    let r = within("second POST", client.read_response(false))
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(upstream.connections(), 1, "the POST was not sent again");
}

#[tokio::test]
async fn an_answer_that_comes_before_the_whole_request_body_reaches_the_client() {
    // The upstream refuses the upload after its head, while the client has
    // sent only part of the body, and then reads the rest.
    let upstream = ScriptedUpstream::start(|_, mut peer| async move {
        while let Some(_target) = peer.read_head().await {
            peer.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo much")
                .await;
            peer.skip_body(200_000).await;
        }
    })
    .await;
    let idp = Idp::start().await;
    let gw = gateway(&upstream, &idp).await;
    let mut client = RawConn::connect(gw.proxy_addr).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 200000\r\n\r\n";
    client.write(head.as_bytes()).await.unwrap();
    client.write(&[b'x'; 1000]).await.unwrap();
    // Most of the body is still unsent: the answer must come anyway.
    let r = within("the early answer", client.read_response(false))
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.body, b"too much");
}

/// A pooled connection keeps one timer across requests (see
/// `proxy::deadline`), armed for an earlier request's deadline. The deadline
/// that counts is the current request's: after the connection sat idle past
/// the old one, a response slower than that old deadline but within the
/// new one passes, and one slower than the new deadline is a 504 on time.
#[tokio::test]
async fn a_pooled_connection_times_out_by_its_current_requests_deadline() {
    let idp = Idp::start().await;
    let upstream = ScriptedUpstream::start(|_, mut peer| async move {
        while let Some(target) = peer.read_head().await {
            let wait = match target.as_str() {
                "/in-time" => 400,
                "/too-slow" => 3_000,
                _ => 0,
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let gw = gateway_with_response_timeout(&upstream, &idp, "600ms").await;
    let mut client = RawConn::connect(gw.proxy_addr).await.unwrap();
    let r = within("first", client.request(&request("GET", "/first", b""))).await;
    assert_eq!(r.unwrap().status, 200);
    // Idle in the pool past the first request's deadline.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let started = std::time::Instant::now();
    let r = within("in time", client.request(&request("GET", "/in-time", b""))).await;
    assert_eq!(
        r.unwrap().status,
        200,
        "400 ms is within the 600 ms deadline"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        upstream.connections(),
        1,
        "the pooled connection carried it"
    );
    let started = std::time::Instant::now();
    let r = within(
        "too slow",
        client.request(&request("GET", "/too-slow", b"")),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.unwrap().status, 504);
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(1_500),
        "504 after {took:?}, want about 600 ms"
    );
    assert_eq!(upstream.connections(), 1);
    gw.shutdown().await;
}
