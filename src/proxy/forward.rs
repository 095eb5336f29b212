//! The pooled upstream client: one hyper-util client per process (rebuilt
//! only when its settings change), HTTP and HTTPS, with connect and
//! response-head timeouts.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::metrics::UpstreamError;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Settings the client is built from; a reload with equal settings keeps the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub ca_file: Option<std::path::PathBuf>,
}

/// Forwards requests upstream over pooled keep-alive connections.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Connector, Incoming>,
    settings: ClientSettings,
}

impl UpstreamClient {
    pub fn new(settings: ClientSettings) -> Result<Self, crate::tls::TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let tls = crate::tls::client_config(settings.ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(128)
            .set_host(false)
            .build(connector);
        Ok(UpstreamClient { client, settings })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Sends the request; waits at most `response_timeout` for the response head.
    pub async fn send(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.settings.response_timeout, self.client.request(request))
            .await
        {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) if e.is_connect() => {
                tracing::debug!(error = %e, "upstream connect failed");
                Err(UpstreamError::Connect)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream request failed");
                Err(UpstreamError::Protocol)
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
}
