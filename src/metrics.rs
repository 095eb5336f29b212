//! Counters and histograms, rendered in the Prometheus text format.
//!
//! Everything on the request path is a relaxed atomic add on a counter that
//! was allocated when the route table was compiled: no locks, no maps, no
//! allocation per request. Per-route counters are looked up by route label
//! when a new table is installed, so a reload keeps the counts of routes
//! that did not change.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

/// What the gateway decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Token checked and scopes present: forwarded.
    Allow,
    /// Public route: forwarded without a token check.
    Public,
    /// 400 (path, target or Authorization header).
    InvalidRequest,
    /// 401 without a token.
    Unauthorized,
    /// 401 with a bad token.
    InvalidToken,
    /// 403.
    InsufficientScope,
    /// 403 for a forward-auth peer outside `trusted_peers`.
    UntrustedPeer,
    /// 404.
    NotFound,
    /// 503.
    Unavailable,
}

impl Decision {
    const ALL: [Decision; 9] = [
        Decision::Allow,
        Decision::Public,
        Decision::InvalidRequest,
        Decision::Unauthorized,
        Decision::InvalidToken,
        Decision::InsufficientScope,
        Decision::UntrustedPeer,
        Decision::NotFound,
        Decision::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Public => "public",
            Decision::InvalidRequest => "invalid_request",
            Decision::Unauthorized => "unauthorized",
            Decision::InvalidToken => "invalid_token",
            Decision::InsufficientScope => "insufficient_scope",
            Decision::UntrustedPeer => "untrusted_peer",
            Decision::NotFound => "not_found",
            Decision::Unavailable => "unavailable",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Request counts of one route (or of "no route", with an empty label), by decision.
#[derive(Debug, Default)]
pub struct RouteCounters {
    label: Box<str>,
    by_decision: [AtomicU64; Decision::ALL.len()],
}

impl RouteCounters {
    fn new(label: &str) -> Self {
        RouteCounters {
            label: label.into(),
            by_decision: Default::default(),
        }
    }

    pub fn record(&self, decision: Decision) {
        self.by_decision[decision.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, decision: Decision) -> u64 {
        self.by_decision[decision.index()].load(Ordering::Relaxed)
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Why forwarding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Protocol,
}

const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_SECONDS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_SECONDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Extra lines contributed by another module (the verifier's cache and fetch counters).
pub trait MetricsSource: Send + Sync {
    fn render(&self, out: &mut String);
}

/// Process-wide metrics. One instance lives as long as the process; route
/// tables come and go.
#[derive(Default)]
pub struct Metrics {
    routes: ArcSwap<Vec<Arc<RouteCounters>>>,
    /// Requests no route took (or that never got that far).
    unmatched: Arc<RouteCounters>,
    latency: Histogram,
    upstream_connect_errors: AtomicU64,
    upstream_timeouts: AtomicU64,
    upstream_protocol_errors: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    heap_trims: AtomicU64,
    heap_trims_released: AtomicU64,
    upstream_connections: AtomicU64,
    upstream_requests_queued: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    /// The counters for a newly compiled table, one per label, reusing the
    /// counters of labels the previous table already had.
    pub fn counters_for(&self, labels: &[String]) -> Vec<Arc<RouteCounters>> {
        let old = self.routes.load();
        let fresh: Vec<Arc<RouteCounters>> = labels
            .iter()
            .map(|label| {
                old.iter()
                    .find(|c| &*c.label == label.as_str())
                    .cloned()
                    .unwrap_or_else(|| Arc::new(RouteCounters::new(label)))
            })
            .collect();
        // Keep old labels too: their counts must not vanish from /metrics.
        let mut all = fresh.clone();
        for c in old.iter() {
            if !all.iter().any(|n| Arc::ptr_eq(n, c)) {
                all.push(c.clone());
            }
        }
        self.routes.store(Arc::new(all));
        fresh
    }

    /// Counters for requests no route took.
    pub fn unmatched(&self) -> &Arc<RouteCounters> {
        &self.unmatched
    }

    pub fn observe_latency(&self, elapsed: Duration) {
        self.latency.observe(elapsed);
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        let counter = match kind {
            UpstreamError::Connect => &self.upstream_connect_errors,
            UpstreamError::Timeout => &self.upstream_timeouts,
            UpstreamError::Protocol => &self.upstream_protocol_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_connection_opened(&self) {
        self.upstream_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_connection_closed(&self) {
        self.upstream_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request found no free slot (`limits.max_upstream_requests`) and waited.
    pub fn upstream_request_queued(&self) {
        self.upstream_requests_queued
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Pooled upstream connections open now, idle or in use.
    pub fn upstream_connections(&self) -> u64 {
        self.upstream_connections.load(Ordering::Relaxed)
    }

    /// A heap trim ran (see [`crate::memory`]); `released`: pages went back.
    pub fn heap_released(&self, released: bool) {
        self.heap_trims.fetch_add(1, Ordering::Relaxed);
        if released {
            self.heap_trims_released.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Renders every metric; `extra` adds lines from other modules.
    pub fn render(&self, extra: &[&dyn MetricsSource]) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP scopegate_requests_total Requests by route and decision.\n");
        out.push_str("# TYPE scopegate_requests_total counter\n");
        let routes = self.routes.load();
        for counters in routes.iter().chain(std::iter::once(&self.unmatched)) {
            for decision in Decision::ALL {
                let n = counters.get(decision);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "scopegate_requests_total{{route=\"{}\",decision=\"{}\"}} {n}",
                        escape_label(counters.label()),
                        decision.as_str()
                    );
                }
            }
        }
        out.push_str(
            "# HELP scopegate_request_duration_seconds Time from request head to response head.\n",
        );
        out.push_str("# TYPE scopegate_request_duration_seconds histogram\n");
        self.latency
            .render(&mut out, "scopegate_request_duration_seconds");
        out.push_str("# HELP scopegate_upstream_errors_total Failed forwards by kind.\n");
        out.push_str("# TYPE scopegate_upstream_errors_total counter\n");
        for (kind, counter) in [
            ("connect", &self.upstream_connect_errors),
            ("timeout", &self.upstream_timeouts),
            ("protocol", &self.upstream_protocol_errors),
        ] {
            let _ = writeln!(
                out,
                "scopegate_upstream_errors_total{{kind=\"{kind}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP scopegate_upstream_connections Pooled upstream connections open, idle or in use.\n",
        );
        out.push_str("# TYPE scopegate_upstream_connections gauge\n");
        let _ = writeln!(
            out,
            "scopegate_upstream_connections {}",
            self.upstream_connections()
        );
        out.push_str(
            "# HELP scopegate_upstream_requests_queued_total Requests that waited for a slot (limits.max_upstream_requests).\n",
        );
        out.push_str("# TYPE scopegate_upstream_requests_queued_total counter\n");
        let _ = writeln!(
            out,
            "scopegate_upstream_requests_queued_total {}",
            self.upstream_requests_queued.load(Ordering::Relaxed)
        );
        out.push_str("# HELP scopegate_config_reloads_total Config reloads by result.\n");
        out.push_str("# TYPE scopegate_config_reloads_total counter\n");
        for (result, counter) in [("ok", &self.reloads_ok), ("error", &self.reloads_failed)] {
            let _ = writeln!(
                out,
                "scopegate_config_reloads_total{{result=\"{result}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP scopegate_heap_trims_total Free heap pages handed back to the OS after load, by result.\n",
        );
        out.push_str("# TYPE scopegate_heap_trims_total counter\n");
        let trims = self.heap_trims.load(Ordering::Relaxed);
        let released = self.heap_trims_released.load(Ordering::Relaxed);
        for (result, n) in [("released", released), ("nothing", trims - released)] {
            let _ = writeln!(out, "scopegate_heap_trims_total{{result=\"{result}\"}} {n}");
        }
        for source in extra {
            source.render(&mut out);
        }
        out
    }
}

/// Escapes a Prometheus label value.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_a_reload_for_unchanged_routes() {
        let metrics = Metrics::new();
        let first = metrics.counters_for(&["GET /a".into(), "* /b".into()]);
        first[0].record(Decision::Allow);
        first[0].record(Decision::Allow);
        first[1].record(Decision::InsufficientScope);
        let second = metrics.counters_for(&["GET /a".into(), "* /c".into()]);
        assert_eq!(second[0].get(Decision::Allow), 2);
        assert_eq!(second[1].get(Decision::Allow), 0);
        let text = metrics.render(&[]);
        assert!(text.contains("scopegate_requests_total{route=\"GET /a\",decision=\"allow\"} 2"));
        assert!(text.contains(
            "scopegate_requests_total{route=\"* /b\",decision=\"insufficient_scope\"} 1"
        ));
    }

    #[test]
    fn histogram_is_cumulative() {
        let metrics = Metrics::new();
        metrics.observe_latency(Duration::from_micros(300));
        metrics.observe_latency(Duration::from_millis(3));
        let text = metrics.render(&[]);
        assert!(text.contains("scopegate_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("scopegate_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("scopegate_request_duration_seconds_count 2"));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
