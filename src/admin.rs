//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::gateway::Gateway;

/// Answers one admin request.
pub fn respond(gateway: &Gateway, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
            "text/plain",
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            if gateway.is_ready() {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready\n".into(),
                    "text/plain",
                )
            }
        }
        "/metrics" => {
            let runtime = gateway.runtime();
            let body = gateway.metrics.render(&[&*runtime.verifier]);
            text(StatusCode::OK, body, "text/plain; version=0.0.4")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = crate::server::ServerLimits::from_config(&gateway.runtime().config);
    let builders = Arc::new(crate::server::HttpBuilders::new(&limits));
    let drain = crate::server::Drain::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = crate::server::accept(&listener, "admin") => accepted,
        };
        let gateway = gateway.clone();
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(respond(&gateway, &request)) }
        });
        let builders = builders.clone();
        let signal = drain.signal();
        tokio::spawn(async move { builders.serve_cleartext(stream, service, signal).await });
    }
    drop(listener);
    drain.run(std::time::Duration::from_secs(1)).await;
}
