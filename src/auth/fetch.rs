//! The small HTTP(S) client the verifier uses to talk to identity providers:
//! GET (discovery, JWKS) and form POST (introspection), each bounded by a
//! timeout and a body size cap. TLS: rustls with aws-lc-rs, verified against
//! the webpki roots, the system roots and the optional `ca_file`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest response body accepted from an identity provider.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Building the client failed (bad `ca_file`, TLS setup).
pub use crate::tls::TlsError as ClientSetupError;

/// One request to the identity provider failed. Never carries a token or secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("timed out")]
    Timeout,
    #[error("transport: {0}")]
    Transport(String),
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("response body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("response body: {0}")]
    Body(String),
}

/// A response that arrived whole.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

pub(crate) struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
}

impl IdpClient {
    pub(crate) fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, ClientSetupError> {
        let tls = crate::tls::client_config(ca_file)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(IdpClient {
            client,
            timeout,
            max_body: MAX_BODY_BYTES,
        })
    }

    /// GET `uri`; a status other than 200 is an error.
    pub(crate) async fn get(&self, uri: &Uri) -> Result<Bytes, FetchError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let fetched = self.send(req).await?;
        if fetched.status != StatusCode::OK {
            return Err(FetchError::Status(fetched.status));
        }
        Ok(fetched.body)
    }

    /// POST a form body; the caller judges the status.
    pub(crate) async fn post_form(
        &self,
        uri: &Uri,
        form: String,
        authorization: Option<String>,
    ) -> Result<Fetched, FetchError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(value) = authorization {
            let mut value = http::HeaderValue::try_from(value)
                .map_err(|_| FetchError::Transport("bad credentials header".into()))?;
            value.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, value);
        }
        let req = req
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Fetched, FetchError> {
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Transport(e.to_string()))?;
            let status = resp.status();
            let too_big = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > self.max_body as u64);
            if too_big {
                return Err(FetchError::TooLarge);
            }
            let body = Limited::new(resp.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Body(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Fetched { status, body })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}
