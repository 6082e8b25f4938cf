//! The operator's Prometheus metrics: its own health (reconciles, errors, durations) and the
//! figures a platform team alerts on per PresenceCluster — notably `migrating`, which says a
//! disconnect is planned so offline alerts can wait. The migration signal's series carry the
//! names alert rules use across products (`ballast_migration_active`,
//! `ballast_planned_closes_total`, `ballast_unplanned_closes_total`,
//! `ballast_reconnect_budget_per_second`); the rest are prefixed `ballast_operator_`.

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
struct WaitLabels {
    namespace: String,
    name: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
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
    reports: Family<ResultLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    pub report_seconds: Histogram,
    migration_active: Family<ClusterLabels, Gauge>,
    planned_closes: Family<ClusterLabels, Counter>,
    unplanned_closes: Family<ClusterLabels, Counter>,
    budget: Family<ClusterLabels, Gauge>,
    plan_waits: Family<WaitLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ballast_operator");
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
            reports: Family::default(),
            refusals: Family::default(),
            report_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            migration_active: Family::default(),
            planned_closes: Family::default(),
            unplanned_closes: Family::default(),
            budget: Family::default(),
            plan_waits: Family::default(),
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
        registry.register(
            "reports",
            "Sidecar reports, by result (answered, not_leader, refused, unavailable, tls_failed)",
            m.reports.clone(),
        );
        registry.register(
            "report_refusals",
            "Reports refused, by reason (no_token, invalid_token, not_pod_bound, unknown_pod, wrong_source, not_a_gateway, bad_report)",
            m.refusals.clone(),
        );
        registry.register(
            "report_answer_seconds",
            "Time from a report's arrival to its answer",
            m.report_seconds.clone(),
        );
        registry.register(
            "plan_waits",
            "Plans (one per report interval) that held something back, by reason (noReport, steeringPending, noHeadroom, waitingForSuccessor, atMaxUnavailable, budgetTooLow, paused): how long a rotation or rebalance waited, and on what",
            m.plan_waits.clone(),
        );
        root.register(
            "ballast_migration_active",
            "1 from a migration's first planned close until its last moved agent is back: hold offline alerts",
            m.migration_active.clone(),
        );
        root.register(
            "ballast_planned_closes",
            "Connections closed on purpose (paced drains), as the sidecars report",
            m.planned_closes.clone(),
        );
        root.register(
            "ballast_unplanned_closes",
            "Connections lost without a plan (the gateway closed or failed), as the sidecars report",
            m.unplanned_closes.clone(),
        );
        root.register(
            "ballast_reconnect_budget_per_second",
            "Reconnects per second planned closes may cause now, fleet-wide",
            m.budget.clone(),
        );
        for r in crate::auth::Refusal::ALL {
            let _ = m
                .refusals
                .get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        Self {
            registry: root,
            ..m
        }
    }

    pub fn report_result(&self, result: &'static str) {
        self.reports.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn report_refused(&self, refusal: crate::auth::Refusal) {
        self.report_result("refused");
        self.refusals
            .get_or_create(&ReasonLabel {
                reason: refusal.as_str(),
            })
            .inc();
    }

    /// Counts a cluster's closes as the latest reports carry them (deltas).
    pub fn closes(&self, namespace: &str, name: &str, planned: u64, unplanned: u64) {
        let labels = ClusterLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.planned_closes.get_or_create(&labels).inc_by(planned);
        self.unplanned_closes
            .get_or_create(&labels)
            .inc_by(unplanned);
    }

    /// Counts one plan's waits (each reason once).
    pub fn plan_waited(&self, namespace: &str, name: &str, reasons: &[&'static str]) {
        for &reason in reasons {
            self.plan_waits
                .get_or_create(&WaitLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    reason,
                })
                .inc();
        }
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
        self.migration_active
            .get_or_create(&labels)
            .set(i64::from(condition_true("Migrating")));
        self.budget.get_or_create(&labels).set(
            status
                .migration
                .as_ref()
                .map(|m| m.budget_per_second)
                .unwrap_or(0),
        );
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
        self.migration_active.remove(&labels);
        self.planned_closes.remove(&labels);
        self.unplanned_closes.remove(&labels);
        self.budget.remove(&labels);
        for reason in ballast_planner::Why::WAIT_KINDS {
            self.plan_waits.remove(&WaitLabels {
                namespace: namespace.into(),
                name: name.into(),
                reason,
            });
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_waits_are_counted_by_reason_and_forgotten_with_their_cluster() {
        let m = Metrics::new();
        m.plan_waited("presence", "edge", &["noReport", "steeringPending"]);
        m.plan_waited("presence", "edge", &["noReport"]);
        let text = m.encode();
        assert!(
            text.contains(
                "ballast_operator_plan_waits_total{namespace=\"presence\",name=\"edge\",reason=\"noReport\"} 2"
            ),
            "{text}"
        );
        m.forget("presence", "edge");
        assert!(!m.encode().contains("reason=\"noReport\""));
    }
}
