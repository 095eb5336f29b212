//! The running state: the current [`Runtime`] (compiled config, verifier,
//! upstream client, counters) behind an `ArcSwap`, swapped whole on reload,
//! plus the readiness latch.
//!
//! A request loads the runtime once and keeps its `Arc` to the end, so a
//! reload never changes the rules under a request in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Verifier;
use crate::config::Config;
use crate::metrics::{Metrics, RouteCounters};
use crate::proxy::forward::{ClientSettings, Upstream, UpstreamClient};
use crate::proxy::headers::IdentityHeaders;
use crate::route::Route;

/// Why a compiled config could not be turned into a runtime.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the verifier: {0}")]
    Verifier(String),
    #[error("upstream {0}: not an absolute http:// or https:// URL")]
    Upstream(String),
}

/// Everything a request needs, compiled from one config load.
pub struct Runtime {
    pub config: Config,
    pub verifier: Arc<Verifier>,
    /// Dropped with the last runtime that uses `verifier`: releases its
    /// issuers' background refresh (issuers a newer verifier reused go on).
    verifier_task: Arc<crate::auth::Background>,
    pub identity: IdentityHeaders,
    /// Per `config.upstreams` entry: its pooled connections.
    pub upstreams: Vec<Upstream>,
    /// Per route, indexed by `Route::index`.
    pub counters: Vec<Arc<RouteCounters>>,
    pub client: UpstreamClient,
}

impl Runtime {
    /// Builds a runtime; reuses the verifier and the upstream pool of
    /// `previous` when their settings did not change, and otherwise each
    /// unchanged issuer's key set (see [`Verifier::new_reusing`]).
    pub fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, BuildError> {
        let (verifier, verifier_task) = match previous {
            Some(p) if p.config.auth == config.auth => {
                (p.verifier.clone(), p.verifier_task.clone())
            }
            _ => {
                // Per issuer: unchanged issuers keep their keys and schedule.
                let verifier =
                    Verifier::new_reusing(config.auth.clone(), previous.map(|p| &*p.verifier))
                        .map_err(|e| BuildError::Verifier(e.to_string()))?;
                // Taken before the previous runtime can be dropped, so a
                // reused issuer's refresh is never stopped and restarted.
                let background = verifier.start_background();
                (verifier, Arc::new(background))
            }
        };
        let client_settings = ClientSettings {
            connect_timeout: config.timeouts.upstream_connect,
            response_timeout: config.timeouts.upstream_response,
            idle_timeout: config.timeouts.idle,
            ca_file: config.auth.ca_file.clone(),
            max_requests_per_worker: config.limits.max_upstream_requests_per_worker,
        };
        let client = match previous {
            Some(p) if *p.client.settings() == client_settings => p.client.clone(),
            _ => UpstreamClient::new(client_settings, Arc::clone(metrics))?,
        };
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let parts = u.origin.clone().into_parts();
                match (parts.scheme, parts.authority) {
                    (Some(scheme), Some(authority)) => Ok(client.upstream(&scheme, &authority)),
                    _ => Err(BuildError::Upstream(u.origin.to_string())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let labels: Vec<String> = config.routes.routes().iter().map(route_label).collect();
        let counters = metrics.counters_for(&labels);
        let identity = IdentityHeaders::new(config.forward.identity_headers.clone());
        Ok(Runtime {
            config,
            verifier,
            verifier_task,
            identity,
            upstreams,
            counters,
            client,
        })
    }

    /// Counters of a route, or of "no route".
    pub fn counters<'a>(
        &'a self,
        route: Option<&Route>,
        metrics: &'a Metrics,
    ) -> &'a RouteCounters {
        route
            .and_then(|r| self.counters.get(r.index))
            .map(|c| &**c)
            .unwrap_or_else(|| metrics.unmatched())
    }
}

/// `GET,HEAD /api/messages`, `* /api/**`: how a route is named in metrics and logs.
pub fn route_label(route: &Route) -> String {
    let methods = match &route.methods {
        None => "*".to_string(),
        Some(m) => m.join(","),
    };
    format!("{methods} {}", route.pattern)
}

/// The process's gateway: current runtime, metrics, readiness.
pub struct Gateway {
    current: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(runtime: Runtime, metrics: Arc<Metrics>) -> Arc<Gateway> {
        Arc::new(Gateway {
            current: ArcSwap::from_pointee(runtime),
            metrics,
            draining: AtomicBool::new(false),
        })
    }

    /// The runtime to serve one request with (held to its end).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Installs a freshly built runtime; requests in flight finish on the old one.
    pub fn install(&self, runtime: Runtime) {
        self.current.store(Arc::new(runtime));
    }

    /// Builds a runtime from `config` on top of the current one and installs it.
    pub fn reload(&self, config: Config) -> Result<(), BuildError> {
        let current = self.runtime();
        let runtime = Runtime::build(config, &self.metrics, Some(&current))?;
        self.install(runtime);
        Ok(())
    }

    /// Ready: not draining, and every issuer's keys fetched at least once.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.current.load().verifier.is_ready()
    }

    /// Turns `/readyz` to 503 for good: the process is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

impl crate::metrics::MetricsSource for Verifier {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let m = self.metrics();
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        counter(
            "scopegate_jwks_fetches_total",
            "JWKS fetches by result.",
            &[
                ("result=\"ok\"", m.jwks_fetch_ok),
                ("result=\"error\"", m.jwks_fetch_error),
            ],
        );
        counter(
            "scopegate_key_cache_requests_total",
            "Key lookups in the cached JWKS by result (miss: unknown kid).",
            &[
                ("result=\"hit\"", m.key_hits),
                ("result=\"miss\"", m.key_misses),
            ],
        );
        counter(
            "scopegate_token_cache_requests_total",
            "Verified-token cache lookups (JWT and introspection) by result.",
            &[
                ("result=\"hit\"", m.token_cache_hits),
                ("result=\"miss\"", m.token_cache_misses),
            ],
        );
        counter(
            "scopegate_introspection_requests_total",
            "Introspection requests by result.",
            &[
                ("result=\"ok\"", m.introspection_ok),
                ("result=\"error\"", m.introspection_error),
            ],
        );
    }
}
