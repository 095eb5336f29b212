//! `scopegate demo`: the shipped routes with a built-in issuer and upstream.
//!
//! The demo issuer's ES256 key is generated at start and never leaves the
//! process; its issuer URL names a random loopback port, so no other
//! scopegate (and never `run`) trusts a demo token.
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::auth::{Algorithm, IssuerSettings};
use crate::config::{self, Upstream};
use crate::route::Requirement;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Config(config::ConfigErrors),
    #[error("cannot generate the demo key")]
    Key,
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
    #[error("the demo gateway did not become ready (its issuer's keys were not fetched)")]
    NotReady,
}

const AUDIENCE: &str = "scopegate-demo";

/// The built-in issuer: a key pair and the discovery/JWKS documents.
struct DemoIssuer {
    key: EcdsaKeyPair,
    issuer: String,
    jwks: String,
}

impl DemoIssuer {
    fn new(addr: SocketAddr) -> Result<Self, DemoError> {
        let key =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| DemoError::Key)?;
        let point = key.public_key().as_ref();
        // Uncompressed point: 0x04 || X (32) || Y (32).
        if point.len() != 65 {
            return Err(DemoError::Key);
        }
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "demo-1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
        .to_string();
        Ok(DemoIssuer {
            key,
            issuer: format!("http://{addr}/demo"),
            jwks,
        })
    }

    fn discovery(&self) -> String {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks", self.issuer),
        })
        .to_string()
    }

    /// Mints an ES256 token with these scopes, valid for `ttl` seconds from
    /// `now + offset` (a negative offset makes an expired token).
    fn mint(&self, subject: &str, scope: &str, offset: i64, ttl: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": "demo-1"});
        let claims = serde_json::json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": subject,
            "iat": now + offset, "exp": now + offset + ttl, "scope": scope,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map(|s| URL_SAFE_NO_PAD.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{signing_input}.{signature}")
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves `answer` on `listener` forever (the demo ends with the process).
fn serve_forever<F>(listener: TcpListener, answer: F)
where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The upstream's answer: what it received, so the demo shows the identity headers.
fn echo(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-"))
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "upstream": "scopegate demo upstream",
            "method": request.method().as_str(),
            "path": request.uri().path_and_query().map(|p| p.as_str()),
            "headers": headers,
        })
        .to_string(),
    )
}

/// A concrete path for a pattern: `{id}` -> `42`, `**` -> `example`.
fn sample_path(pattern: &str) -> String {
    let path: Vec<&str> = pattern
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "42"
            } else if seg == "**" {
                "example"
            } else {
                seg
            }
        })
        .collect();
    path.join("/")
}

struct Example {
    title: String,
    method: String,
    path: String,
    token: Option<String>,
    expect: u16,
}

/// Runs the demo; with `self_test`, sends the example requests and returns
/// whether each got the expected status.
pub async fn run(routes_file: &Path, port: u16, self_test: bool) -> Result<bool, DemoError> {
    crate::tls::install_crypto_provider();
    let mut config = config::load(routes_file).map_err(DemoError::Config)?;

    let idp_listener = TcpListener::bind("127.0.0.1:0").await?;
    let issuer = Arc::new(DemoIssuer::new(idp_listener.local_addr()?)?);
    {
        let issuer = issuer.clone();
        serve_forever(idp_listener, move |req| match req.uri().path() {
            "/demo/.well-known/openid-configuration" => {
                json_response(StatusCode::OK, issuer.discovery())
            }
            "/demo/jwks" => json_response(StatusCode::OK, issuer.jwks.clone()),
            _ => json_response(StatusCode::NOT_FOUND, "{}".into()),
        });
    }
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream_listener.local_addr()?;
    serve_forever(upstream_listener, echo);

    // The shipped routes, with the demo's issuer and upstream in place of the real ones.
    config.auth.issuers = vec![IssuerSettings {
        issuer: issuer.issuer.clone(),
        audiences: vec![AUDIENCE.into()],
        jwks_uri: None,
        algorithms: vec![Algorithm::ES256],
        require_at_jwt: false,
        jwks_refresh: Duration::from_secs(300),
    }];
    config.auth.introspection = None;
    let origin: http::Uri = format!("http://{upstream_addr}")
        .parse()
        .map_err(|_| DemoError::Key)?;
    for upstream in &mut config.upstreams {
        *upstream = Upstream {
            origin: origin.clone(),
        };
    }
    config.listen = SocketAddr::from(([127, 0, 0, 1], port));
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.tls = None;
    config.forward_auth = None;
    config.warnings.clear();

    // Example requests from the shipped table.
    let routes = config.routes.routes().to_vec();
    let all_scopes: Vec<String> = {
        let mut s: Vec<String> = routes
            .iter()
            .flat_map(|r| match &r.requirement {
                Requirement::AllScopes(s) | Requirement::AnyScopes(s) => s.to_vec(),
                _ => Vec::new(),
            })
            .map(|s| s.to_string())
            .collect();
        s.sort();
        s.dedup();
        s
    };
    let scoped = routes
        .iter()
        .find(|r| matches!(r.requirement, Requirement::AllScopes(_)));
    let public = routes.iter().find(|r| r.requirement == Requirement::Public);

    let running = crate::app::start(config).await?;
    let addr = running.proxy_addr;
    // Wait for the gateway to fetch the demo issuer's keys.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !running.gateway.is_ready() {
        if tokio::time::Instant::now() > deadline {
            return Err(DemoError::NotReady);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let full = issuer.mint("demo-user", &all_scopes.join(" "), 0, 3600);
    let mut examples = Vec::new();
    if let Some(route) = public {
        examples.push(Example {
            title: "a public route: no token needed".into(),
            method: "GET".into(),
            path: sample_path(&route.pattern),
            token: None,
            expect: 200,
        });
    }
    if let Some(route) = scoped {
        let Requirement::AllScopes(required) = &route.requirement else {
            unreachable!("filtered above")
        };
        let method = route
            .methods
            .as_ref()
            .and_then(|m| m.first())
            .map_or("GET".to_string(), |m| m.to_string());
        let path = sample_path(&route.pattern);
        let lacking: Vec<&str> = all_scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !required.iter().any(|r| &**r == *s))
            .collect();
        examples.push(Example {
            title: format!("allowed: the token carries {}", required.join(" ")),
            method: method.clone(),
            path: path.clone(),
            token: Some(full.clone()),
            expect: 200,
        });
        examples.push(Example {
            title: format!("403: the token lacks {}", required.join(" ")),
            method: method.clone(),
            path: path.clone(),
            token: Some(issuer.mint("demo-user", &lacking.join(" "), 0, 3600)),
            expect: 403,
        });
        examples.push(Example {
            title: "401: the token expired an hour ago".into(),
            method: method.clone(),
            path: path.clone(),
            token: Some(issuer.mint("demo-user", &all_scopes.join(" "), -7200, 3600)),
            expect: 401,
        });
        examples.push(Example {
            title: "401: no token at all".into(),
            method,
            path,
            token: None,
            expect: 401,
        });
    }
    examples.push(Example {
        title: "404: no route matches".into(),
        method: "GET".into(),
        path: "/no/such/route".into(),
        token: Some(full.clone()),
        expect: 404,
    });

    println!(
        "scopegate demo: gateway on http://{addr}, routes from {}",
        routes_file.display()
    );
    println!(
        "  built-in issuer {} (ES256 key generated for this run)",
        issuer.issuer
    );
    println!("  built-in upstream http://{upstream_addr} (echoes what it receives)\n");
    for ex in &examples {
        println!("# {} -> expect {}", ex.title, ex.expect);
        let auth = ex
            .token
            .as_ref()
            .map(|t| format!(" -H 'Authorization: Bearer {t}'"))
            .unwrap_or_default();
        println!(
            "curl -i -X {} 'http://{addr}{}'{auth}\n",
            ex.method, ex.path
        );
    }

    if !self_test {
        println!("Press Ctrl-C to stop.");
        crate::app::terminate_signal().await;
        running.shutdown().await;
        return Ok(true);
    }

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut failed = 0;
    for ex in &examples {
        let mut builder = Request::builder()
            .method(ex.method.as_str())
            .uri(format!("http://{addr}{}", ex.path));
        if let Some(t) = &ex.token {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|_| DemoError::Key)?;
        let (status, body) = match client.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                (status, body)
            }
            Err(e) => (0, format!("request failed: {e}")),
        };
        let ok = status == ex.expect;
        failed += usize::from(!ok);
        println!(
            "{} {} {} -> {status} (expected {}): {}",
            if ok { "ok  " } else { "FAIL" },
            ex.method,
            ex.path,
            ex.expect,
            body.trim()
        );
    }
    running.shutdown().await;
    println!(
        "\ndemo: {} passed, {} failed",
        examples.len() - failed,
        failed
    );
    Ok(failed == 0)
}
