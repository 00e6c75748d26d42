//! The gateway's Prometheus metrics: one registry per process, its handles, and its text
//! encoding. Served as `GET /metrics` on the private listeners only (see
//! [`crate::http::metrics`]). Every metric is described in `docs/metrics.md`.
//!
//! Counters and histograms are updated where things happen (requests, connections,
//! deliveries, leadership changes). Gauges that need the database (outbox depth, oldest
//! pending reply, schema version) are read at scrape time with a short timeout, so they
//! cost nothing between scrapes and are never older than the scrape.
//!
//! The output is the Prometheus text format 0.0.4, which `promtool check metrics` parses
//! and which can be concatenated with the supervisor's (it has no `# EOF` line).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request latency buckets, in seconds: from a loopback ping to a slow turn.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Delivery lag buckets, in seconds: from an immediate delivery to hours of retries.
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// The routes requests are counted under; any other path counts as `other`, so a client
/// probing random paths cannot grow the label set.
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/v1/ping",
    "/v1/inbound/generic",
    "/v1/outbox/stats",
    "/metrics",
];

/// Every metric the gateway exposes.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `aihummer_gateway_http_requests_total{listener,route,status}`.
    pub requests: IntCounterVec,
    /// `aihummer_gateway_http_request_duration_seconds{listener,route}`.
    pub latency: HistogramVec,
    /// `aihummer_gateway_http_connections{listener}`: open connections.
    pub connections: IntGaugeVec,
    /// `aihummer_gateway_draining`: 1 once the drain started.
    pub draining: IntGauge,
    /// `aihummer_gateway_outbox_replies{state}`, read at scrape time.
    pub outbox: IntGaugeVec,
    /// `aihummer_gateway_outbox_oldest_pending_age_seconds`, read at scrape time.
    pub oldest_pending: prometheus::Gauge,
    /// `aihummer_gateway_outbox_read_ok`: whether the last scrape could read the database.
    pub outbox_read_ok: IntGauge,
    /// `aihummer_gateway_outbox_delivery_attempts_total{outcome}`.
    pub attempts: IntCounterVec,
    /// `aihummer_gateway_outbox_delivery_lag_seconds`: enqueue commit to delivered.
    pub lag: Histogram,
    /// `aihummer_gateway_leader`: 1 while this gateway leads.
    pub leader: IntGauge,
    /// `aihummer_gateway_leadership_changes_total`.
    pub leadership_changes: IntCounter,
    /// `aihummer_gateway_schema_version`: the latest migration applied, read at scrape time.
    pub schema_version: IntGauge,
}

impl Metrics {
    /// A fresh registry with every metric registered and the build info set.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let name = |n: &str, help: &str| Opts::new(format!("aihummer_gateway_{n}"), help);
        let requests = IntCounterVec::new(
            name(
                "http_requests_total",
                "HTTP requests answered, by listener, route and status.",
            ),
            &["listener", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::from(name(
                "http_request_duration_seconds",
                "Time from a request's arrival to its answer, by listener and route.",
            ))
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["listener", "route"],
        )?;
        let connections = IntGaugeVec::new(
            name("http_connections", "Connections open now, by listener."),
            &["listener"],
        )?;
        let draining = IntGauge::with_opts(name(
            "draining",
            "1 once this gateway drains (stopping or handed off), else 0.",
        ))?;
        let outbox = IntGaugeVec::new(
            name(
                "outbox_replies",
                "Replies in the outbox by state (pending includes leased), read at scrape time.",
            ),
            &["state"],
        )?;
        let oldest_pending = prometheus::Gauge::with_opts(name(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest reply not yet delivered (0: none), read at scrape time.",
        ))?;
        let outbox_read_ok = IntGauge::with_opts(name(
            "outbox_read_ok",
            "1 when this scrape read the outbox and schema gauges from the database, else 0.",
        ))?;
        let attempts = IntCounterVec::new(
            name(
                "outbox_delivery_attempts_total",
                "Reply delivery attempts by this gateway, by outcome (delivered, retry, dead).",
            ),
            &["outcome"],
        )?;
        let lag = Histogram::with_opts(
            HistogramOpts::from(name(
                "outbox_delivery_lag_seconds",
                "Time from a reply's enqueue commit to its successful delivery.",
            ))
            .buckets(LAG_BUCKETS.to_vec()),
        )?;
        let leader = IntGauge::with_opts(name(
            "leader",
            "1 while this gateway holds the scheduler's leadership.",
        ))?;
        let leadership_changes = IntCounter::with_opts(name(
            "leadership_changes_total",
            "Times this gateway gained or lost leadership.",
        ))?;
        let schema_version = IntGauge::with_opts(name(
            "schema_version",
            "The latest migration applied to the database, read at scrape time.",
        ))?;
        let build = IntGaugeVec::new(
            name("build_info", "Always 1; the gateway's version as a label."),
            &["version"],
        )?;
        build.with_label_values(&[crate::VERSION]).set(1);
        registry.register(Box::new(build))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        registry.register(Box::new(outbox.clone()))?;
        registry.register(Box::new(oldest_pending.clone()))?;
        registry.register(Box::new(outbox_read_ok.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(leadership_changes.clone()))?;
        registry.register(Box::new(schema_version.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            connections,
            draining,
            outbox,
            oldest_pending,
            outbox_read_ok,
            attempts,
            lag,
            leader,
            leadership_changes,
            schema_version,
        })
    }

    /// The route label for `path`: the path itself when it is one of [`ROUTES`].
    pub fn route(path: &str) -> &'static str {
        ROUTES
            .iter()
            .find(|route| **route == path)
            .copied()
            .unwrap_or("other")
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|err| prometheus::Error::Msg(err.to_string()))
    }
}

/// Decrements a connection gauge when the connection ends, however it ends.
pub struct OpenConnection(IntGauge);

impl OpenConnection {
    /// Counts one more open connection on `gauge` until dropped.
    pub fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_route_label() {
        assert_eq!(Metrics::route("/v1/ping"), "/v1/ping");
        assert_eq!(Metrics::route("/v1/ping/"), "other");
        assert_eq!(Metrics::route("/wp-admin"), "other");
    }

    #[test]
    fn the_encoding_carries_the_build_version_and_typed_counters() {
        let metrics = Metrics::new().unwrap();
        metrics
            .requests
            .with_label_values(&["public", "/v1/ping", "200"])
            .inc();
        let text = metrics.encode().unwrap();
        assert!(text.contains(&format!(
            "aihummer_gateway_build_info{{version=\"{}\"}} 1",
            crate::VERSION
        )));
        assert!(text.contains("# TYPE aihummer_gateway_http_requests_total counter"));
        assert!(!text.contains("# EOF"), "concatenable: no EOF marker");
    }
}
