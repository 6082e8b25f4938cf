//! What the planner is told about the world: each pod as Kubernetes sees it, and the
//! sidecar's latest report, if any.

use serde::{Deserialize, Serialize};

/// Everything observed at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Seconds on the caller's clock (the operator's wall clock, the simulator's time). Only
    /// differences matter; reports' `at` must be on the same clock.
    pub now: f64,
    /// The pods of the cluster, in a stable order (StatefulSet ordinal).
    pub pods: Vec<PodObservation>,
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodObservation {
    /// Stable name (a StatefulSet's successor pod keeps it).
    pub name: String,
    /// Changes when the pod is replaced: how a restart's successor is recognised.
    pub uid: String,
    /// Serving: Kubernetes readiness, or not Ready only because the plan steers it away.
    pub ready: bool,
    /// Runs the current revision of the pod template (and so the current certificate setup).
    pub up_to_date: bool,
    /// Being deleted.
    pub terminating: bool,
    /// Whether the load balancer sends new connections to this pod now, as far as the caller
    /// can tell (the operator: the pod's Ready condition, which is what the endpoints
    /// controller publishes; the simulator: its load balancer's view). Steering reaches the
    /// load balancer seconds late (probe period, endpoint propagation), and a planned close
    /// lands where the load balancer routes, not where the plan steers. `None` when unknown:
    /// the plan then assumes its steering is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed: Option<bool>,
    /// The sidecar's latest report; `None` when it has not reported.
    pub report: Option<PodReport>,
}

/// A sidecar's account of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PodReport {
    /// When it was received, on [`Observation::now`]'s clock.
    pub at: f64,
    /// Established connections.
    pub connections: u64,
    /// Of those, accepted under an older certificate than the one served now.
    pub on_older_certificate: u64,
    /// Handshakes completed per second lately, planned arrivals included.
    pub handshakes_per_second: f64,
    /// 99th percentile handshake latency lately, seconds.
    pub handshake_p99_seconds: f64,
    /// Connections refused for the handshake rate or concurrency since the last report.
    pub rate_refusals: u64,
    /// Handshakes that failed since the last report.
    pub failed_handshakes: u64,
    /// This pod's own connection limit when it differs from the spec's.
    pub max_connections: Option<u64>,
}
