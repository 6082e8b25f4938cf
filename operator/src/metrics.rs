//! The operator's Prometheus metrics: its own health (reconciles, errors, durations) and the
//! figures a platform team alerts on per PresenceCluster — notably `migrating`, which says a
//! disconnect is planned so offline alerts can wait.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::crd::PresenceClusterStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    errors: Family<ErrorLabel, Counter>,
    pub reconcile_seconds: Histogram,
    connections: Family<ClusterLabels, Gauge>,
    ready_pods: Family<ClusterLabels, Gauge>,
    imbalance: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    certificate_served_pods: Family<ClusterLabels, Gauge>,
    migrating: Family<ClusterLabels, Gauge>,
    degraded: Family<ClusterLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ballast_operator");
        let m = Self {
            registry: Registry::default(),
            reconciles: Counter::default(),
            errors: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            connections: Family::default(),
            ready_pods: Family::default(),
            imbalance: Family::default(),
            certificate_served_pods: Family::default(),
            migrating: Family::default(),
            degraded: Family::default(),
        };
        registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error",
            m.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "presencecluster_connections",
            "Agent connections across a PresenceCluster's pods, as its sidecars report",
            m.connections.clone(),
        );
        registry.register(
            "presencecluster_ready_pods",
            "Gateway pods ready to take agents",
            m.ready_pods.clone(),
        );
        registry.register(
            "presencecluster_imbalance",
            "Busiest pod's connections divided by the mean",
            m.imbalance.clone(),
        );
        registry.register(
            "presencecluster_certificate_served_pods",
            "Ready pods whose sidecar serves the Secret's current certificate",
            m.certificate_served_pods.clone(),
        );
        registry.register(
            "presencecluster_migrating",
            "1 while disconnects are planned (drains in progress): hold offline alerts",
            m.migrating.clone(),
        );
        registry.register(
            "presencecluster_degraded",
            "1 while the PresenceCluster is not Ready because of a problem or missing pods",
            m.degraded.clone(),
        );
        Self { registry, ..m }
    }

    pub fn error(&self, label: &'static str) {
        self.errors
            .get_or_create(&ErrorLabel { error: label })
            .inc();
    }

    /// Publishes one PresenceCluster's figures.
    pub fn observe(&self, namespace: &str, name: &str, status: &PresenceClusterStatus) {
        let labels = ClusterLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        let condition_true = |t: &str| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True")
        };
        self.connections
            .get_or_create(&labels)
            .set(status.connections);
        self.ready_pods
            .get_or_create(&labels)
            .set(i64::from(status.ready_replicas));
        self.imbalance.get_or_create(&labels).set(status.imbalance);
        let served = status
            .certificate
            .as_ref()
            .and_then(|c| c.served.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.certificate_served_pods
            .get_or_create(&labels)
            .set(served);
        self.migrating
            .get_or_create(&labels)
            .set(i64::from(condition_true("Migrating")));
        self.degraded
            .get_or_create(&labels)
            .set(i64::from(!condition_true("Ready")));
    }

    /// Drops a deleted PresenceCluster's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = ClusterLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.connections.remove(&labels);
        self.ready_pods.remove(&labels);
        self.imbalance.remove(&labels);
        self.certificate_served_pods.remove(&labels);
        self.migrating.remove(&labels);
        self.degraded.remove(&labels);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
